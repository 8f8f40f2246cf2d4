/*
 * Contexts: get_context(), set_start_method(), get_start_method(),
 * get_all_start_methods(), and the context objects that carry the same
 * API as the module.
 *
 * A context resolves its public factories (Process, Lock, Queue, ...) from
 * the module when they are looked up, so whatever the module offers, every
 * context offers too. Start methods are a table (the order is the stdlib's
 * and CMP_PY_FORK... in _cmp.h); the default is the interpreter's own:
 * fork up to 3.13, forkserver from 3.14 on.
 */
#include "_cmp.h"

typedef struct {
    PyObject_HEAD
    PyObject *module; /* the _cmp module: where factories are found */
    PyObject *actual; /* DefaultContext only: the chosen context or NULL */
    int method;       /* index into methods[], -1 for the default context */
} CtxObject;

struct start_method {
    const char *name;
    const char *process; /* module attribute of the context's Process class */
    int supported;
    PyObject *context; /* the concrete context, once created */
};

/* Order as the stdlib lists them; the first supported one is the default. */
static struct start_method methods[] = {
    {"fork", "_ForkProcess", 1, NULL},
    {"spawn", "_SpawnProcess", 1, NULL},
    {"forkserver", "_ForkServerProcess", 1, NULL},
};
#define N_METHODS ((int)(sizeof methods / sizeof *methods))
#if PY_VERSION_HEX >= 0x030E0000
#define DEFAULT_METHOD CMP_PY_FORKSERVER
#else
#define DEFAULT_METHOD CMP_PY_FORK
#endif

static PyObject *g_default; /* the default context (module-level functions) */

static int method_index(PyObject *name)
{
    if (!PyUnicode_Check(name))
        return -1;
    for (int i = 0; i < N_METHODS; i++)
        if (PyUnicode_CompareWithASCIIString(name, methods[i].name) == 0)
            return i;
    return -1;
}

/* A context a library registered under name in context.py's
 * _concrete_contexts, as the stdlib's module lets it (loky adds 'loky'),
 * or NULL with ValueError. */
static PyObject *registered(PyObject *name)
{
    PyObject *mod = PyImport_ImportModule("cmultiprocessing.context");
    PyObject *table = mod ? PyObject_GetAttrString(mod, "_concrete_contexts") : NULL;
    Py_XDECREF(mod);
    PyObject *ctx = table && PyDict_Check(table) ? PyDict_GetItemWithError(table, name) : NULL;
    Py_XINCREF(ctx);
    Py_XDECREF(table);
    if (!ctx && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "cannot find context for %R", name);
    return ctx;
}

/* The concrete context for a method name, or NULL with ValueError. */
static PyObject *concrete(PyObject *name)
{
    int i = method_index(name);
    if (i < 0)
        return registered(name);
    if (!methods[i].supported || !methods[i].context)
        return PyErr_Format(PyExc_ValueError,
                            "start method %R is not supported by cmultiprocessing yet; "
                            "use 'fork'",
                            name);
    return Py_NewRef(methods[i].context);
}

static PyObject *actual_of(CtxObject *self)
{
    if (!self->actual)
        self->actual = Py_NewRef(methods[DEFAULT_METHOD].context);
    return self->actual;
}

void cmp_py_context_pin_default(void)
{
    if (g_default)
        actual_of((CtxObject *)g_default);
}

void cmp_py_context_force(int method)
{
    if (!g_default || method < 0 || method >= N_METHODS)
        return;
    CtxObject *d = (CtxObject *)g_default;
    if (d->actual != methods[method].context)
        Py_XSETREF(d->actual, Py_NewRef(methods[method].context));
}

int cmp_py_context_method(void)
{
    if (!g_default)
        return DEFAULT_METHOD;
    return ((CtxObject *)actual_of((CtxObject *)g_default))->method;
}

/* Parses (first=None, second=False)-style arguments by name. */
static int parse_two(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                     const char *n1, PyObject **v1, const char *n2, PyObject **v2)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 2 || (nargs > 1 && !n2))
        goto too_many;
    if (nargs >= 1)
        *v1 = args[0];
    if (nargs >= 2)
        *v2 = args[1];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(k, n1) == 0 && nargs < 1) {
            *v1 = args[nargs + i];
        } else if (n2 && PyUnicode_CompareWithASCIIString(k, n2) == 0 && nargs < 2) {
            *v2 = args[nargs + i];
        } else {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fname, k);
            return -1;
        }
    }
    return 0;
too_many:
    PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fname, n2 ? 2 : 1,
                 nargs);
    return -1;
}

static PyObject *ctx_get_context(CtxObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    PyObject *method = Py_None;
    if (parse_two("get_context", args, nargs, kwnames, "method", &method, NULL, NULL) < 0)
        return NULL;
    if (method == Py_None)
        return Py_NewRef(self->method < 0 ? actual_of(self) : (PyObject *)self);
    return concrete(method);
}

static PyObject *ctx_get_start_method(CtxObject *self, PyObject *const *args, Py_ssize_t nargs,
                                      PyObject *kwnames)
{
    PyObject *allow_none = Py_False;
    if (parse_two("get_start_method", args, nargs, kwnames, "allow_none", &allow_none, NULL, NULL) <
        0)
        return NULL;
    if (self->method >= 0)
        return PyUnicode_FromString(methods[self->method].name);
    if (!self->actual) {
        int allow = PyObject_IsTrue(allow_none);
        if (allow < 0)
            return NULL;
        if (allow)
            Py_RETURN_NONE;
    }
    return PyUnicode_FromString(methods[((CtxObject *)actual_of(self))->method].name);
}

static PyObject *ctx_set_start_method(CtxObject *self, PyObject *const *args, Py_ssize_t nargs,
                                      PyObject *kwnames)
{
    PyObject *method = NULL, *force = Py_False;
    if (parse_two("set_start_method", args, nargs, kwnames, "method", &method, "force", &force) < 0)
        return NULL;
    if (!method) {
        PyErr_SetString(PyExc_TypeError,
                        "set_start_method() missing 1 required positional argument: 'method'");
        return NULL;
    }
    if (self->method >= 0) {
        PyErr_SetString(PyExc_ValueError, "cannot set start method of concrete context");
        return NULL;
    }
    int forced = PyObject_IsTrue(force);
    if (forced < 0)
        return NULL;
    if (self->actual && !forced) {
        PyErr_SetString(PyExc_RuntimeError, "context has already been set");
        return NULL;
    }
    if (method == Py_None && forced) {
        Py_CLEAR(self->actual);
        Py_RETURN_NONE;
    }
    int i = method_index(method);
    PyObject *ctx = concrete(method);
    if (!ctx)
        return NULL;
    if (i < 0) {
        /* the default context is one of ours, whose method the rest of
         * the package reads */
        Py_DECREF(ctx);
        return PyErr_Format(PyExc_ValueError,
                            "cmultiprocessing's default start method can only be one of its "
                            "own; use get_context(%R) where the library needs that one",
                            method);
    }
    Py_XSETREF(self->actual, ctx);
    Py_RETURN_NONE;
}

static PyObject *ctx_get_all_start_methods(CtxObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyObject *list = PyList_New(0);
    for (int i = 0; list && i < N_METHODS; i++) {
        if (!methods[i].supported)
            continue;
        PyObject *s = PyUnicode_FromString(methods[i].name);
        if (!s || PyList_Append(list, s) < 0)
            Py_CLEAR(list);
        Py_XDECREF(s);
    }
    return list;
}

static PyObject *ctx_reduce(CtxObject *self, PyObject *unused)
{
    (void)unused;
    const char *tp = strrchr(Py_TYPE(self)->tp_name, '.');
    return PyErr_Format(PyExc_RuntimeError,
                        "%s objects should only be shared between processes through "
                        "inheritance",
                        tp ? tp + 1 : Py_TYPE(self)->tp_name);
}

static PyObject *ctx_get_name(CtxObject *self, void *c)
{
    (void)c;
    if (self->method < 0)
        Py_RETURN_NONE;
    return PyUnicode_FromString(methods[self->method].name);
}

/* 1 if the type (or a base) defines name, 0 if not, -1 with an exception.
 * Borrowed lookups only: nothing is allocated or raised. */
static int type_defines(PyTypeObject *tp, PyObject *name)
{
    PyObject *mro = tp->tp_mro;
    if (!mro || !PyTuple_Check(mro))
        return 1; /* not ready: let the generic lookup decide */
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *dict = ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_dict;
        if (dict && PyDict_GetItemWithError(dict, name))
            return 1;
        if (PyErr_Occurred())
            return -1;
    }
    return 0;
}

/* A public factory of the module (Process, Lock, Queue, ...), or NULL
 * with an exception. */
static PyObject *ctx_factory(CtxObject *ctx, PyObject *name)
{
    static PyObject *process_attr[N_METHODS];
    if (ctx->method >= 0 && PyUnicode_CompareWithASCIIString(name, "Process") == 0) {
        PyObject **attr = &process_attr[ctx->method];
        if (!*attr && !(*attr = PyUnicode_InternFromString(methods[ctx->method].process)))
            return NULL;
        return PyObject_GetAttr(ctx->module, *attr);
    }
    const char *bound = NULL; /* a factory given this context first */
    if (ctx->method > CMP_PY_FORK && PyUnicode_CompareWithASCIIString(name, "Pool") == 0)
        bound = "_context_pool"; /* its workers are started with this context's method */
    else if (ctx->method > CMP_PY_FORK && PyUnicode_CompareWithASCIIString(name, "Manager") == 0)
        bound = "Manager"; /* and so is its server process */
    if (bound) {
        PyObject *fn = PyObject_GetAttrString(ctx->module, bound);
        PyObject *functools = fn ? PyImport_ImportModule("functools") : NULL;
        PyObject *r =
            functools ? PyObject_CallMethod(functools, "partial", "OO", fn, (PyObject *)ctx) : NULL;
        Py_XDECREF(fn);
        Py_XDECREF(functools);
        return r;
    }
    return PyObject_GetAttr(ctx->module, name);
}

static PyObject *ctx_getattro(PyObject *self, PyObject *name)
{
    int public = PyUnicode_Check(name) && PyUnicode_GET_LENGTH(name) > 0 &&
                 PyUnicode_READ_CHAR(name, 0) != '_';
    if (public && Py_TYPE(self)->tp_dictoffset == 0) {
        /* Without an instance dict, a name the type does not define can
         * only be a factory: skip the generic lookup's AttributeError
         * (building it costs more than the rest of ctx.Process()). */
        int has = type_defines(Py_TYPE(self), name);
        if (has < 0)
            return NULL;
        if (!has) {
            PyObject *r = ctx_factory((CtxObject *)self, name);
            if (r || !PyErr_ExceptionMatches(PyExc_AttributeError))
                return r;
            PyErr_Clear();
            return PyObject_GenericGetAttr(self, name); /* its usual error */
        }
    }
    PyObject *r = PyObject_GenericGetAttr(self, name);
    if (r || !public || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return r;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    r = ctx_factory((CtxObject *)self, name);
    if (r) {
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
        return r;
    }
    PyErr_Clear();
    PyErr_Restore(et, ev, tb);
    return NULL;
}

static PyObject *ctx_dir(PyObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *names = PyObject_Dir((PyObject *)Py_TYPE(self));
    PyObject *mod = names ? PyObject_Dir(((CtxObject *)self)->module) : NULL;
    for (Py_ssize_t i = 0; mod && i < PyList_GET_SIZE(mod); i++) {
        PyObject *n = PyList_GET_ITEM(mod, i);
        if (PyUnicode_Check(n) && PyUnicode_READ_CHAR(n, 0) != '_' && PyList_Append(names, n) < 0)
            Py_CLEAR(mod);
    }
    if (!mod) {
        Py_XDECREF(names);
        return NULL;
    }
    Py_DECREF(mod);
    if (PyList_Sort(names) < 0) {
        Py_DECREF(names);
        return NULL;
    }
    return names;
}

static PyObject *ctx_repr(CtxObject *self)
{
    const char *tp = strrchr(Py_TYPE(self)->tp_name, '.');
    return PyUnicode_FromFormat("<%s object at %p>", tp ? tp + 1 : Py_TYPE(self)->tp_name, self);
}

static int ctx_traverse(CtxObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->module);
    Py_VISIT(self->actual);
    return 0;
}

static int ctx_clear(CtxObject *self)
{
    Py_CLEAR(self->module);
    Py_CLEAR(self->actual);
    return 0;
}

static void ctx_dealloc(CtxObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    ctx_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

#define FASTCALL_KW METH_FASTCALL | METH_KEYWORDS
static PyMethodDef ctx_methods[] = {
    {"get_context", (PyCFunction)(void (*)(void))ctx_get_context, FASTCALL_KW,
     "get_context(method=None)\n--\n\nReturn the context of a start method."},
    {"get_start_method", (PyCFunction)(void (*)(void))ctx_get_start_method, FASTCALL_KW,
     "get_start_method(allow_none=False)\n--\n\nReturn the name of the start method."},
    {"set_start_method", (PyCFunction)(void (*)(void))ctx_set_start_method, FASTCALL_KW,
     "set_start_method(method, force=False)\n--\n\nSet the default start method (once)."},
    {"get_all_start_methods", (PyCFunction)ctx_get_all_start_methods, METH_NOARGS,
     "Return the start methods this platform supports."},
    {"__reduce__", (PyCFunction)ctx_reduce, METH_NOARGS, NULL},
    {"__dir__", ctx_dir, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ctx_getset[] = {
    {"_name", (getter)ctx_get_name, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot base_slots[] = {
    {Py_tp_getattro, ctx_getattro},
    {Py_tp_methods, ctx_methods},
    {Py_tp_getset, ctx_getset},
    {Py_tp_repr, ctx_repr},
    {Py_tp_traverse, ctx_traverse},
    {Py_tp_clear, ctx_clear},
    {Py_tp_dealloc, ctx_dealloc},
    {Py_tp_doc, "A start method and the multiprocessing API bound to it."},
    {0, NULL},
};

static PyType_Spec base_spec = {
    .name = "cmultiprocessing.context.BaseContext",
    .basicsize = sizeof(CtxObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = base_slots,
};

static PyType_Slot sub_slots[] = {
    {Py_tp_traverse, ctx_traverse},
    {Py_tp_clear, ctx_clear},
    {0, NULL},
};

static PyType_Spec fork_spec = {
    .name = "cmultiprocessing.context.ForkContext",
    .basicsize = sizeof(CtxObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = sub_slots,
};

static PyType_Spec spawn_spec = {
    .name = "cmultiprocessing.context.SpawnContext",
    .basicsize = sizeof(CtxObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = sub_slots,
};

static PyType_Spec forkserver_spec = {
    .name = "cmultiprocessing.context.ForkServerContext",
    .basicsize = sizeof(CtxObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = sub_slots,
};

static PyType_Spec default_spec = {
    .name = "cmultiprocessing.context.DefaultContext",
    .basicsize = sizeof(CtxObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = sub_slots,
};

static PyObject *new_ctx(PyTypeObject *tp, PyObject *module, int method)
{
    CtxObject *c = PyObject_GC_New(CtxObject, tp);
    if (!c)
        return NULL;
    c->module = Py_NewRef(module);
    c->actual = NULL;
    c->method = method;
    PyObject_GC_Track(c);
    return (PyObject *)c;
}

int cmp_py_context_init(PyObject *module, cmp_py_state *st)
{
    st->Context_type = cmp_py_add_type(module, &base_spec, NULL);
    if (!st->Context_type)
        return -1;
    PyTypeObject *fork_type = cmp_py_add_type(module, &fork_spec, (PyObject *)st->Context_type);
    if (!fork_type)
        return -1;
    PyType_Spec *others[] = {NULL, &spawn_spec, &forkserver_spec};
    for (int i = 1; i < N_METHODS; i++) {
        PyTypeObject *t = cmp_py_add_type(module, others[i], (PyObject *)st->Context_type);
        if (!t) {
            Py_DECREF(fork_type);
            return -1;
        }
        if (!methods[i].context)
            methods[i].context = new_ctx(t, module, i);
        Py_DECREF(t);
        if (!methods[i].context) {
            Py_DECREF(fork_type);
            return -1;
        }
    }
    PyTypeObject *default_type =
        cmp_py_add_type(module, &default_spec, (PyObject *)st->Context_type);
    if (!default_type) {
        Py_DECREF(fork_type);
        return -1;
    }
    /* A second initialization of the module keeps the first contexts:
     * the chosen start method is process-wide. */
    if (!methods[0].context)
        methods[0].context = new_ctx(fork_type, module, 0);
    if (!g_default)
        g_default = new_ctx(default_type, module, -1);
    Py_DECREF(fork_type);
    Py_DECREF(default_type);
    if (!methods[0].context || !g_default)
        return -1;
    static const char *bound[] = {"get_context", "get_start_method", "set_start_method",
                                  "get_all_start_methods"};
    for (size_t i = 0; i < sizeof bound / sizeof *bound; i++) {
        PyObject *m = PyObject_GetAttrString(g_default, bound[i]);
        if (!m || PyModule_AddObjectRef(module, bound[i], m) < 0) {
            Py_XDECREF(m);
            return -1;
        }
        Py_DECREF(m);
    }
    return 0;
}
