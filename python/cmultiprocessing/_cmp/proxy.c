/*
 * Proxies of a manager's shared objects: the base of BaseProxy (its state,
 * _callmethod, the reference it holds on the server's object) and the
 * method descriptor MakeProxyType puts in a proxy class, so that
 * `proxy.append(x)` goes from the call straight to the server in C.
 *
 * References as the stdlib counts them: a proxy increfs its object when
 * made and decrefs it when freed. A proxy inherited by a forked child
 * increfs on the child's first call (the parent may drop its own
 * reference meanwhile), and only the process that holds a reference gives
 * it back.
 */
#include "_cmp.h"

#include <structmember.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    PyObject *token, *id, *manager, *authkey, *serializer, *channel;
    PyObject *dict, *weakreflist;
    long ref_pid; /* the process that holds a reference, 0: none */
    int owned_by_manager;
} ProxyObject;

static PyObject *s_address, *s_id, *s_authkey, *s__authkey, *s_rebuild, *s_incref, *s_decref;

static PyObject *k_return, *k_error, *k_traceback, *k_unserializable, *k_proxy;
static PyObject *empty_tuple, *empty_dict;
static PyObject *RemoteError;     /* multiprocessing.managers.RemoteError (the stdlib's) */
static PyObject *current_process; /* cmultiprocessing.current_process */

/* The stdlib's RemoteError (borrowed), imported when first raised: the
 * stdlib's managers module costs every process that imports us ~3 ms
 * (spawned children included) and most never use a manager. */
static PyObject *remote_error(void)
{
    if (!RemoteError) {
        PyObject *m = PyImport_ImportModule("multiprocessing.managers");
        RemoteError = m ? PyObject_GetAttrString(m, "RemoteError") : NULL;
        Py_XDECREF(m);
    }
    return RemoteError;
}

/* A call of one of the server's own functions (id None). */
static PyObject *call_server(ProxyObject *self, PyObject *name, PyObject *args);
static void give_ref(ProxyObject *self);

/* A child process leaves through _exit() without freeing its objects, so
 * the references its proxies took are given back at its exit instead:
 * id(proxy) -> weakref, of the proxies that hold one in this (forked)
 * process; given back by cmp_py_proxy_child_exit, which our children call
 * on their way out and a util.Finalize runs in the stdlib's. */
static pid_t main_pid; /* the process the module was loaded in */
static PyObject *held; /* this child's proxies that hold a reference */
static pid_t held_pid; /* the process held belongs to */

static void record_ref(ProxyObject *self)
{
    pid_t pid = cmp_self_pid();
    if (pid == main_pid)
        return; /* the main process frees its proxies as it finalizes */
    if (held_pid != pid) {
        held = NULL; /* the parent's: its entries are the parent's references */
        held_pid = pid;
        if (!(held = PyDict_New()))
            goto fail;
        cmp_py_child_exit_hook = cmp_py_proxy_child_exit;
        /* the stdlib's children run util's finalizers on their way out */
        PyObject *util = PyImport_ImportModule("multiprocessing.util");
        PyObject *mod = util ? PyImport_ImportModule("cmultiprocessing._cmp") : NULL;
        PyObject *fn = mod ? PyObject_GetAttrString(mod, "_release_child_refs") : NULL;
        PyObject *fin = NULL;
        if (fn) {
            PyObject *kw = Py_BuildValue("{s:i}", "exitpriority", 10);
            PyObject *a = Py_BuildValue("(OO)", Py_None, fn);
            PyObject *F = PyObject_GetAttrString(util, "Finalize");
            fin = kw && a && F ? PyObject_Call(F, a, kw) : NULL;
            Py_XDECREF(kw);
            Py_XDECREF(a);
            Py_XDECREF(F);
        }
        Py_XDECREF(fin);
        Py_XDECREF(fn);
        Py_XDECREF(mod);
        Py_XDECREF(util);
        if (!fin)
            goto fail;
    }
    PyObject *key = PyLong_FromVoidPtr(self);
    PyObject *ref = key ? PyWeakref_NewRef((PyObject *)self, NULL) : NULL;
    if (!ref || PyDict_SetItem(held, key, ref) < 0) {
        Py_XDECREF(key);
        Py_XDECREF(ref);
        goto fail;
    }
    Py_DECREF(key);
    Py_DECREF(ref);
    return;
fail:
    PyErr_Clear(); /* the reference then stays with the server until it stops */
}

static void forget_ref(ProxyObject *self)
{
    if (!held || held_pid != cmp_self_pid())
        return;
    PyObject *key = PyLong_FromVoidPtr(self);
    if (!key || PyDict_DelItem(held, key) < 0)
        PyErr_Clear();
    Py_XDECREF(key);
}

void cmp_py_proxy_child_exit(void)
{
    if (!held || held_pid != cmp_self_pid())
        return;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *refs = PyDict_Values(held);
    for (Py_ssize_t i = 0; refs && i < PyList_GET_SIZE(refs); i++) {
        PyObject *p;
#if PY_VERSION_HEX >= 0x030D0000
        if (PyWeakref_GetRef(PyList_GET_ITEM(refs, i), &p) < 0)
            p = NULL;
#else
        p = PyWeakref_GetObject(PyList_GET_ITEM(refs, i));
        p = p && p != Py_None ? Py_NewRef(p) : NULL;
#endif
        if (p) {
            give_ref((ProxyObject *)p);
            Py_DECREF(p);
        }
    }
    Py_XDECREF(refs);
    PyErr_Clear();
    PyErr_Restore(et, ev, tb);
}

static PyObject *release_child_refs(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    cmp_py_proxy_child_exit();
    Py_RETURN_NONE;
}

/* The result of a (kind, result) reply, or NULL with the exception it
 * stands for, as the stdlib's convert_to_error maps them. */
static PyObject *convert_reply(ProxyObject *self, PyObject *reply)
{
    if (!reply)
        return NULL;
    if (!PyTuple_Check(reply) || PyTuple_GET_SIZE(reply) != 2) {
        Py_DECREF(reply);
        PyErr_SetString(PyExc_ValueError, "malformed reply from the manager");
        return NULL;
    }
    PyObject *kind = PyTuple_GET_ITEM(reply, 0), *result = PyTuple_GET_ITEM(reply, 1);
    PyObject *r = NULL;
    if (kind == k_return || PyUnicode_Compare(kind, k_return) == 0) {
        r = Py_NewRef(result);
    } else if (PyUnicode_Compare(kind, k_error) == 0) {
        if (PyExceptionInstance_Check(result))
            PyErr_SetObject((PyObject *)Py_TYPE(result), result);
        else
            PyErr_SetObject(PyExc_TypeError, result);
    } else if (PyUnicode_Compare(kind, k_proxy) == 0) {
        r = PyObject_CallMethodOneArg((PyObject *)self, s_rebuild, result);
    } else if (PyUnicode_Compare(kind, k_traceback) == 0 ||
               PyUnicode_Compare(kind, k_unserializable) == 0) {
        if (!PyUnicode_Check(result)) {
            PyErr_Format(PyExc_TypeError, "Result %R (kind '%U') type is %s, not str", result, kind,
                         Py_TYPE(result)->tp_name);
        } else {
            PyObject *text = PyUnicode_Compare(kind, k_traceback) == 0
                                 ? Py_NewRef(result)
                                 : PyUnicode_FromFormat("Unserializable message: %U\n", result);
            PyObject *cls = text ? remote_error() : NULL;
            if (cls)
                PyErr_SetObject(cls, text);
            Py_XDECREF(text);
        }
    } else if (!PyErr_Occurred()) {
        PyErr_Format(PyExc_ValueError, "Unrecognized message type %R", kind);
    }
    Py_DECREF(reply);
    return r;
}

static PyObject *call_server(ProxyObject *self, PyObject *name, PyObject *args)
{
    return convert_reply(self,
                         cmp_py_channel_request(self->channel, Py_None, name, args, empty_dict));
}

/* Takes this process's reference on the object (incref on the server). */
static int take_ref(ProxyObject *self)
{
    PyObject *args = PyTuple_Pack(1, self->id);
    if (!args)
        return -1;
    PyObject *r = call_server(self, s_incref, args);
    Py_DECREF(args);
    if (!r)
        return -1;
    Py_DECREF(r);
    self->ref_pid = (long)cmp_self_pid();
    record_ref(self);
    return 0;
}

PyObject *cmp_py_proxy_call(PyObject *op, PyObject *name, PyObject *args, PyObject *kwds)
{
    ProxyObject *self = (ProxyObject *)op;
    if (!self->channel) {
        PyErr_SetString(PyExc_ValueError, "the proxy is not initialized");
        return NULL;
    }
    /* a forked child's first call: its own reference first */
    if (self->ref_pid && self->ref_pid != (long)cmp_self_pid() && !self->owned_by_manager &&
        take_ref(self) < 0)
        return NULL;
    return convert_reply(self, cmp_py_channel_request(self->channel, self->id, name, args, kwds));
}

static int Proxy_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    ProxyObject *self = (ProxyObject *)op;
    static char *kwlist[] = {"token",   "serializer", "manager",       "authkey",
                             "exposed", "incref",     "manager_owned", NULL};
    PyObject *token, *serializer = Py_None, *manager = Py_None, *authkey = Py_None;
    PyObject *exposed = Py_None;
    int incref = 1, manager_owned = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OOOOpp:BaseProxy", kwlist, &token, &serializer,
                                     &manager, &authkey, &exposed, &incref, &manager_owned))
        return -1;
    PyObject *address = PyObject_GetAttr(token, s_address);
    PyObject *id = address ? PyObject_GetAttr(token, s_id) : NULL;
    if (!id) {
        Py_XDECREF(address);
        return -1;
    }
    Py_XSETREF(self->token, Py_NewRef(token));
    Py_XSETREF(self->id, id);
    Py_XSETREF(self->serializer, Py_NewRef(serializer));
    Py_XSETREF(self->manager, Py_NewRef(manager));
    Py_INCREF(authkey);
    if (authkey == Py_None && manager != Py_None) {
        Py_DECREF(authkey);
        if (!(authkey = PyObject_GetAttr(manager, s__authkey)))
            goto fail;
    }
    if (authkey == Py_None) {
        Py_DECREF(authkey);
        PyObject *cur = PyObject_CallNoArgs(current_process);
        authkey = cur ? PyObject_GetAttr(cur, s_authkey) : NULL;
        Py_XDECREF(cur);
        if (!authkey)
            goto fail;
    }
    if (!PyBytes_Check(authkey)) { /* AuthenticationString and the like */
        PyObject *b = PyBytes_FromObject(authkey);
        Py_DECREF(authkey);
        if (!(authkey = b))
            goto fail;
    }
    Py_XSETREF(self->authkey, authkey);
    cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(op));
    PyObject *ch = cmp_py_channel_get(st, address, authkey, serializer);
    if (!ch)
        goto fail;
    Py_XSETREF(self->channel, ch);
    Py_DECREF(address);
    self->owned_by_manager = manager_owned;
    self->ref_pid = 0;
    if (!manager_owned && incref && take_ref(self) < 0)
        return -1;
    return 0;
fail:
    Py_DECREF(address);
    return -1;
}

/* Gives the reference back (decref on the server), once, from the process
 * that took it; errors are dropped: a gone server holds nothing. */
static void give_ref(ProxyObject *self)
{
    if (!self->ref_pid || self->ref_pid != (long)cmp_self_pid() || !self->channel)
        return;
    self->ref_pid = 0;
    forget_ref(self);
    PyObject *args = PyTuple_Pack(1, self->id);
    PyObject *r = args ? call_server(self, s_decref, args) : NULL;
    Py_XDECREF(args);
    Py_XDECREF(r);
    PyErr_Clear();
}

static void Proxy_finalize(PyObject *op)
{
    ProxyObject *self = (ProxyObject *)op;
    if (!self->ref_pid)
        return;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    give_ref(self);
    PyErr_Restore(et, ev, tb);
}

static int Proxy_traverse(PyObject *op, visitproc visit, void *arg)
{
    ProxyObject *self = (ProxyObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->token);
    Py_VISIT(self->id);
    Py_VISIT(self->manager);
    Py_VISIT(self->authkey);
    Py_VISIT(self->serializer);
    Py_VISIT(self->channel);
    Py_VISIT(self->dict);
    return 0;
}

static int Proxy_clear(PyObject *op)
{
    ProxyObject *self = (ProxyObject *)op;
    Py_CLEAR(self->token);
    Py_CLEAR(self->id);
    Py_CLEAR(self->manager);
    Py_CLEAR(self->authkey);
    Py_CLEAR(self->serializer);
    Py_CLEAR(self->channel);
    Py_CLEAR(self->dict);
    return 0;
}

static void Proxy_dealloc(PyObject *op)
{
    ProxyObject *self = (ProxyObject *)op;
    PyObject_GC_UnTrack(op);
    if (PyObject_CallFinalizerFromDealloc(op) < 0)
        return; /* resurrected */
    if (self->weakreflist)
        PyObject_ClearWeakRefs(op);
    Proxy_clear(op);
    PyTypeObject *tp = Py_TYPE(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *Proxy_callmethod(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    static const char *const names[] = {"methodname", "args", "kwds"};
    PyObject *a[3];
    if (cmp_py_parse_args("_callmethod", args, nargs, kwnames, names, 3, a) < 0)
        return NULL;
    if (!a[0]) {
        PyErr_SetString(PyExc_TypeError, "_callmethod() missing required argument 'methodname'");
        return NULL;
    }
    PyObject *targs = a[1] ? PySequence_Tuple(a[1]) : Py_NewRef(empty_tuple);
    if (!targs)
        return NULL;
    PyObject *dkwds;
    if (!a[2] || PyDict_CheckExact(a[2])) {
        dkwds = Py_NewRef(a[2] ? a[2] : empty_dict);
    } else {
        dkwds = PyDict_New();
        if (dkwds && PyDict_Merge(dkwds, a[2], 1) < 0)
            Py_CLEAR(dkwds);
    }
    PyObject *r = dkwds ? cmp_py_proxy_call(op, a[0], targs, dkwds) : NULL;
    Py_DECREF(targs);
    Py_XDECREF(dkwds);
    return r;
}

static PyObject *Proxy_incref(PyObject *op, PyObject *unused)
{
    (void)unused;
    if (take_ref((ProxyObject *)op) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Proxy_decref(PyObject *op, PyObject *unused)
{
    (void)unused;
    give_ref((ProxyObject *)op);
    Py_RETURN_NONE;
}

/* The proxy owns the reference its creator took (create counts one). */
static PyObject *Proxy_adopt(PyObject *op, PyObject *unused)
{
    (void)unused;
    ((ProxyObject *)op)->ref_pid = (long)cmp_self_pid();
    record_ref((ProxyObject *)op);
    Py_RETURN_NONE;
}

static PyObject *Proxy_get_owned(PyObject *op, void *c)
{
    (void)c;
    return PyBool_FromLong(((ProxyObject *)op)->owned_by_manager);
}

static PyObject *Proxy_get_channel(PyObject *op, void *c)
{
    (void)c;
    ProxyObject *self = (ProxyObject *)op;
    return Py_NewRef(self->channel ? self->channel : Py_None);
}

static PyMethodDef Proxy_methods[] = {
    {"_callmethod", (PyCFunction)(void (*)(void))Proxy_callmethod, METH_FASTCALL | METH_KEYWORDS,
     "_callmethod(methodname, args=(), kwds={}): calls the method of the referent."},
    {"_incref", Proxy_incref, METH_NOARGS, NULL},
    {"_decref", Proxy_decref, METH_NOARGS, NULL},
    {"_adopt_ref", Proxy_adopt, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Proxy_members[] = {
    {"_token", T_OBJECT, offsetof(ProxyObject, token), 0, NULL},
    {"_id", T_OBJECT, offsetof(ProxyObject, id), READONLY, NULL},
    {"_manager", T_OBJECT, offsetof(ProxyObject, manager), 0, NULL},
    {"_authkey", T_OBJECT, offsetof(ProxyObject, authkey), READONLY, NULL},
    {"_serializer", T_OBJECT, offsetof(ProxyObject, serializer), 0, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(ProxyObject, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ProxyObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Proxy_getset[] = {
    {"_owned_by_manager", Proxy_get_owned, NULL, NULL, NULL},
    {"_channel", Proxy_get_channel, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Proxy_slots[] = {
    {Py_tp_init, Proxy_init},         {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Proxy_dealloc},   {Py_tp_finalize, Proxy_finalize},
    {Py_tp_traverse, Proxy_traverse}, {Py_tp_clear, Proxy_clear},
    {Py_tp_methods, Proxy_methods},   {Py_tp_members, Proxy_members},
    {Py_tp_getset, Proxy_getset},     {0, NULL},
};

static PyType_Spec Proxy_spec = {
    .name = "cmultiprocessing._cmp.ProxyBase",
    .basicsize = sizeof(ProxyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Proxy_slots,
};

/* ---- the method descriptor ---------------------------------------------- */

/* ProxyMethod(name): in a proxy class, `proxy.name(*args, **kwds)` is
 * proxy._callmethod(name, args, kwds), without a Python frame. A method
 * descriptor: `proxy.name(...)` calls it with the proxy first, no bound
 * object made. */
typedef struct {
    PyObject_HEAD
    PyObject *name;
    vectorcallfunc vectorcall;
    int ignore_args; /* the call's arguments are not sent (an __exit__'s) */
} PmethObject;

static PyObject *Pmeth_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    PmethObject *m = (PmethObject *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(op));
    if (nargs < 1 || !PyObject_TypeCheck(args[0], st->ProxyBase_type)) {
        PyErr_Format(PyExc_TypeError, "proxy method %U needs a proxy as its first argument",
                     m->name);
        return NULL;
    }
    if (m->ignore_args)
        return cmp_py_proxy_call(args[0], m->name, empty_tuple, empty_dict);
    PyObject *targs = PyTuple_New(nargs - 1);
    if (!targs)
        return NULL;
    for (Py_ssize_t i = 1; i < nargs; i++)
        PyTuple_SET_ITEM(targs, i - 1, Py_NewRef(args[i]));
    PyObject *kwds = empty_dict;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nkw) {
        if (!(kwds = PyDict_New())) {
            Py_DECREF(targs);
            return NULL;
        }
        for (Py_ssize_t k = 0; k < nkw; k++) {
            if (PyDict_SetItem(kwds, PyTuple_GET_ITEM(kwnames, k), args[nargs + k]) < 0) {
                Py_DECREF(kwds);
                Py_DECREF(targs);
                return NULL;
            }
        }
    }
    PyObject *r = cmp_py_proxy_call(args[0], m->name, targs, kwds);
    Py_DECREF(targs);
    if (nkw)
        Py_DECREF(kwds);
    return r;
}

static PyObject *Pmeth_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "ignore_args", NULL};
    PyObject *name;
    int ignore_args = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "U|$p:ProxyMethod", kwlist, &name, &ignore_args))
        return NULL;
    PmethObject *m = (PmethObject *)type->tp_alloc(type, 0);
    if (!m)
        return NULL;
    m->name = Py_NewRef(name);
    m->ignore_args = ignore_args;
    m->vectorcall = Pmeth_vectorcall;
    return (PyObject *)m;
}

static PyObject *Pmeth_get(PyObject *op, PyObject *obj, PyObject *type)
{
    (void)type;
    if (!obj || obj == Py_None)
        return Py_NewRef(op);
    return PyMethod_New(op, obj);
}

static void Pmeth_dealloc(PyObject *op)
{
    Py_XDECREF(((PmethObject *)op)->name);
    PyTypeObject *tp = Py_TYPE(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *Pmeth_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<proxy method %R>", ((PmethObject *)op)->name);
}

static PyMemberDef Pmeth_members[] = {
    {"__name__", T_OBJECT, offsetof(PmethObject, name), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(PmethObject, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Pmeth_slots[] = {
    {Py_tp_new, Pmeth_new},
    {Py_tp_dealloc, Pmeth_dealloc},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, Pmeth_get},
    {Py_tp_repr, Pmeth_repr},
    {Py_tp_members, Pmeth_members},
    {0, NULL},
};

static PyType_Spec Pmeth_spec = {
    .name = "cmultiprocessing._cmp.ProxyMethod",
    .basicsize = sizeof(PmethObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = Pmeth_slots,
};

int cmp_py_proxy_init(PyObject *module, cmp_py_state *st)
{
    static const struct {
        PyObject **dst;
        const char *s;
    } strs[] = {
        {&s_address, "address"},
        {&s_id, "id"},
        {&s_authkey, "authkey"},
        {&s__authkey, "_authkey"},
        {&s_rebuild, "_rebuild_returned"},
        {&s_incref, "incref"},
        {&s_decref, "decref"},
        {&k_return, "#RETURN"},
        {&k_error, "#ERROR"},
        {&k_traceback, "#TRACEBACK"},
        {&k_unserializable, "#UNSERIALIZABLE"},
        {&k_proxy, "#PROXY"},
    };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        if (!*strs[i].dst && !(*strs[i].dst = PyUnicode_InternFromString(strs[i].s)))
            return -1;
    if (!empty_tuple && !(empty_tuple = PyTuple_New(0)))
        return -1;
    if (!empty_dict && !(empty_dict = PyDict_New()))
        return -1;
    if (!current_process && !(current_process = PyObject_GetAttrString(module, "current_process")))
        return -1;
    static PyMethodDef functions[] = {
        {"_release_child_refs", release_child_refs, METH_NOARGS,
         "Gives back the references this child's proxies hold (run at its exit)."},
        {NULL, NULL, 0, NULL},
    };
    if (PyModule_AddFunctions(module, functions) < 0)
        return -1;
    if (!main_pid)
        main_pid = cmp_self_pid();
    st->ProxyBase_type = cmp_py_add_type(module, &Proxy_spec, NULL);
    st->ProxyMethod_type = cmp_py_add_type(module, &Pmeth_spec, NULL);
    return st->ProxyBase_type && st->ProxyMethod_type ? 0 : -1;
}
