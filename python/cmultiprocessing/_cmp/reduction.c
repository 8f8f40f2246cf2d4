/*
 * Pickling for our transports (Queue, SimpleQueue, JoinableQueue and
 * Connection.send), as the stdlib's ForkingPickler does it: a private
 * dispatch table that adds reducers for Connection and socket.socket to
 * copyreg's. Those two travel as a token of the fd sharer (libcmp's
 * cmp_fdshare_*), which the receiver redeems for a dup of the fd while
 * unpickling; so the sender must be alive until then, as with the stdlib.
 * A plain pickle.dumps(connection) still raises (Connection.__reduce__):
 * only our transports know how to deliver the fd (and ForkingPickler, with
 * which the package registers the same reducer). Reducers registered with
 * ForkingPickler.register() come next, then copyreg's.
 *
 * Speed: creating a Pickler per message costs more than pickle.dumps, but
 * one Pickler reused (memo cleared after each dump) costs less. Each
 * transport kind has one, writing into a list of chunks through list.append
 * (no BytesIO: the chunks are the pickler's own bytes objects, which the
 * queue's frame points into, so nothing is copied before the ring). A
 * dump that starts while the shared one is in use (a __reduce__ that puts
 * to a queue, or another thread switching in during a dump) gets a fresh
 * Pickler.
 */
#include "_cmp.h"

#include <errno.h>
#include <limits.h>
#include <unistd.h>

/* ---- the dispatch table ------------------------------------------------- */

/* A mapping for Pickler.dispatch_table: our two reducers, then whatever
 * copyreg.dispatch_table holds at the time of the lookup (the stdlib copies
 * it per Pickler; a reused Pickler must look at the live one to see later
 * copyreg.pickle() registrations). */
typedef struct {
    PyObject_HEAD
    cmp_py_state *st;        /* the module outlives every table */
    PyObject *copyreg_table; /* copyreg.dispatch_table (a dict) */
    PyObject *extra;         /* ForkingPickler._extra_reducers (a dict), or NULL */
} DispatchObject;

/* socket.socket, once the socket module is loaded: before that no object
 * can be a socket, so there is nothing to import. Borrowed, or NULL. */
static PyObject *socket_type(cmp_py_state *st, PyObject *key)
{
    if (st->socket_type)
        return st->socket_type;
    if (!PyType_Check(key) || strcmp(((PyTypeObject *)key)->tp_name, "socket") != 0)
        return NULL;
    PyObject *mod = PyImport_GetModule(st->str_socket);
    if (!mod) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *t = PyObject_GetAttrString(mod, "socket");
    Py_DECREF(mod);
    if (!t || !PyType_Check(t)) {
        PyErr_Clear();
        Py_XDECREF(t);
        return NULL;
    }
    st->socket_type = t;
    return t;
}

static PyObject *Dispatch_getitem(PyObject *op, PyObject *key)
{
    DispatchObject *self = (DispatchObject *)op;
    cmp_py_state *st = self->st;
    if (key == (PyObject *)st->Connection_type)
        return Py_NewRef(st->reduce_connection);
    if (key == socket_type(st, key))
        return Py_NewRef(st->reduce_socket);
    PyObject *r = self->extra ? PyDict_GetItemWithError(self->extra, key) : NULL;
    if (r)
        return Py_NewRef(r);
    if (PyErr_Occurred())
        return NULL;
    r = PyDict_GetItemWithError(self->copyreg_table, key);
    if (r)
        return Py_NewRef(r);
    /* The pickler only tests for KeyError: no need to build one with the
     * key (every instance of a class without a reducer gets here). */
    if (!PyErr_Occurred())
        PyErr_SetNone(PyExc_KeyError);
    return NULL;
}

static void Dispatch_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    Py_CLEAR(((DispatchObject *)op)->copyreg_table);
    Py_CLEAR(((DispatchObject *)op)->extra);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyType_Slot Dispatch_slots[] = {
    {Py_mp_subscript, Dispatch_getitem},
    {Py_tp_dealloc, Dispatch_dealloc},
    {0, NULL},
};

static PyType_Spec Dispatch_spec = {
    .name = "cmultiprocessing._cmp._DispatchTable",
    .basicsize = sizeof(DispatchObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Dispatch_slots,
};

/* ---- encoders: a reusable Pickler with its output lists ----------------- */

typedef struct {
    PyObject_HEAD
    PyObject *chunks;     /* list: the pickle stream, in order */
    PyObject *buffers;    /* list: out-of-band buffers, or NULL */
    PyObject *dump;       /* the Pickler's bound dump */
    PyObject *clear_memo; /* ... and clear_memo */
    int busy;
} EncoderObject;

static void Encoder_dealloc(PyObject *op)
{
    EncoderObject *self = (EncoderObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    Py_CLEAR(self->chunks);
    Py_CLEAR(self->buffers);
    Py_CLEAR(self->dump);
    Py_CLEAR(self->clear_memo);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyType_Slot Encoder_slots[] = {
    {Py_tp_dealloc, Encoder_dealloc},
    {0, NULL},
};

static PyType_Spec Encoder_spec = {
    .name = "cmultiprocessing._cmp._Encoder",
    .basicsize = sizeof(EncoderObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Encoder_slots,
};

/* oob: protocol 5 with out-of-band buffers (queues); else the default
 * protocol, everything in band (Connection.send, as the stdlib's, so that
 * a stdlib peer can read it). */
static PyObject *encoder_new(cmp_py_state *st, int oob)
{
    EncoderObject *self = (EncoderObject *)st->Encoder_type->tp_alloc(st->Encoder_type, 0);
    if (!self)
        return NULL;
    PyObject *append = NULL, *kw = NULL, *writer = NULL, *pickler = NULL, *empty = NULL;
    self->chunks = PyList_New(0);
    if (!self->chunks || !(append = PyObject_GetAttrString(self->chunks, "append")) ||
        !(kw = Py_BuildValue("{sO}", "write", append)) || !(empty = PyTuple_New(0)) ||
        !(writer = PyObject_Call(st->SimpleNamespace, empty, kw)))
        goto fail;
    Py_CLEAR(append);
    Py_CLEAR(kw);
    if (oob) {
        self->buffers = PyList_New(0);
        if (!self->buffers || !(append = PyObject_GetAttrString(self->buffers, "append")) ||
            !(kw = Py_BuildValue("{sO}", "buffer_callback", append)))
            goto fail;
        PyObject *args = Py_BuildValue("(OO)", writer, st->pickle_protocol);
        pickler = args ? PyObject_Call(st->Pickler, args, kw) : NULL;
        Py_XDECREF(args);
    } else {
        pickler = PyObject_CallOneArg(st->Pickler, writer);
    }
    if (!pickler || PyObject_SetAttrString(pickler, "dispatch_table", st->dispatch_table) < 0 ||
        !(self->dump = PyObject_GetAttrString(pickler, "dump")) ||
        !(self->clear_memo = PyObject_GetAttrString(pickler, "clear_memo")))
        goto fail;
    Py_DECREF(pickler);
    Py_DECREF(writer);
    Py_XDECREF(append);
    Py_XDECREF(kw);
    Py_DECREF(empty);
    return (PyObject *)self;
fail:
    Py_XDECREF(pickler);
    Py_XDECREF(writer);
    Py_XDECREF(append);
    Py_XDECREF(kw);
    Py_XDECREF(empty);
    Py_DECREF(self);
    return NULL;
}

static void clear_list(PyObject *list)
{
    if (list && PyList_GET_SIZE(list))
        PyList_SetSlice(list, 0, PyList_GET_SIZE(list), NULL);
}

int cmp_py_pickle_begin(cmp_py_state *st, int oob, PyObject *obj, cmp_py_pickling *out)
{
    PyObject *shared = oob ? st->queue_encoder : st->conn_encoder;
    EncoderObject *enc;
    if (!((EncoderObject *)shared)->busy) {
        enc = (EncoderObject *)Py_NewRef(shared);
    } else {
        enc = (EncoderObject *)encoder_new(st, oob);
        if (!enc)
            return -1;
    }
    enc->busy = 1;
    PyObject *r = PyObject_CallOneArg(enc->dump, obj);
    /* the memo holds every object pickled: do not keep them alive (with
     * dump's exception, if any, set aside meanwhile) */
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *c = PyObject_CallNoArgs(enc->clear_memo);
    if (!c && r)
        Py_CLEAR(r);
    else if (!c)
        PyErr_Clear();
    Py_XDECREF(c);
    if (et)
        PyErr_Restore(et, ev, tb);
    if (!r) {
        out->encoder = (PyObject *)enc;
        cmp_py_pickle_end(out);
        return -1;
    }
    Py_DECREF(r);
    out->encoder = (PyObject *)enc;
    out->chunks = enc->chunks;
    out->buffers = enc->buffers;
    return 0;
}

void cmp_py_pickle_end(cmp_py_pickling *p)
{
    EncoderObject *enc = (EncoderObject *)p->encoder;
    clear_list(enc->chunks);
    clear_list(enc->buffers);
    enc->busy = 0;
    Py_DECREF(enc);
    p->encoder = p->chunks = p->buffers = NULL;
}

/* ---- socket.socket ------------------------------------------------------ */

/* Raises the error of a failed redeem, saying what to do about it. */
static PyObject *redeem_error(int err, const char *what)
{
    const char *why;
    switch (err) {
    case -ECONNREFUSED:
        why = "the process that sent it has exited (the sender must stay alive until the "
              "receiver has unpickled it)";
        break;
    case -ECONNRESET:
        why = "the process that sent it exited while handing it over";
        break;
    case -ENOENT:
        why = "it was already received once (each pickled %s can be unpickled only once), or "
              "its sender forked away";
        break;
    case -ETIMEDOUT:
        why = "the process that sent it did not answer in time";
        break;
    case -EACCES:
        why = "the process that sent it belongs to another user";
        break;
    default:
        return cmp_py_raise(err);
    }
    PyObject *msg = PyUnicode_FromFormat(why, what);
    PyObject *full = msg ? PyUnicode_FromFormat("cannot receive the %s: %U", what, msg) : NULL;
    Py_XDECREF(msg);
    if (!full)
        return NULL;
    /* OSError(errno, text) picks the subclass (ConnectionRefusedError...) */
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iO", -err, full);
    Py_DECREF(full);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

PyObject *cmp_py_share_fd(int fd)
{
    cmp_fd_token_t token;
    int rc = cmp_fdshare_register(fd, &token);
    if (rc < 0)
        return cmp_py_raise(rc);
    return Py_BuildValue("(yK)", token.addr, (unsigned long long)token.key);
}

int cmp_py_redeem_fd(PyObject *addr, PyObject *key, const char *what)
{
    cmp_fd_token_t token;
    char *a;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(addr, &a, &n) < 0)
        return -1;
    if (n <= 0 || n >= CMP_FDSHARE_ADDR_MAX || memchr(a, 0, (size_t)n)) {
        PyErr_SetString(PyExc_ValueError, "invalid fd sharer address");
        return -1;
    }
    memcpy(token.addr, a, (size_t)n);
    token.addr[n] = '\0';
    token.key = PyLong_AsUnsignedLongLongMask(key);
    if (token.key == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    struct timespec deadline;
    cmp_deadline_after(CMP_PY_REDEEM_TIMEOUT, &deadline);
    int fd;
    Py_BEGIN_ALLOW_THREADS
    fd = cmp_fdshare_redeem(&token, &deadline);
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        redeem_error(fd, what);
        return -1;
    }
    return fd;
}

static PyObject *reduce_socket(PyObject *module, PyObject *sock)
{
    (void)module;
    PyObject *fileno = PyObject_CallMethod(sock, "fileno", NULL);
    if (!fileno)
        return NULL;
    long lfd = PyLong_AsLong(fileno);
    Py_DECREF(fileno);
    if (lfd == -1 && PyErr_Occurred())
        return NULL;
    int fd = lfd > INT_MAX ? -1 : (int)lfd;
    if (fd < 0) {
        errno = EBADF; /* a closed socket's fileno() is -1 */
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *family = PyObject_GetAttrString(sock, "family");
    PyObject *type = family ? PyObject_GetAttrString(sock, "type") : NULL;
    PyObject *proto = type ? PyObject_GetAttrString(sock, "proto") : NULL;
    PyObject *token = proto ? cmp_py_share_fd(fd) : NULL;
    PyObject *r = NULL;
    if (token) {
        cmp_py_state *st = cmp_py_state_of_module(module);
        /* plain ints: the enums pickle by name through the socket module */
        r = Py_BuildValue("(O(OOlll))", st->rebuild_socket, PyTuple_GET_ITEM(token, 0),
                          PyTuple_GET_ITEM(token, 1), PyLong_AsLong(family), PyLong_AsLong(type),
                          PyLong_AsLong(proto));
        if (r && PyErr_Occurred())
            Py_CLEAR(r);
    }
    Py_XDECREF(token);
    Py_XDECREF(proto);
    Py_XDECREF(type);
    Py_XDECREF(family);
    return r;
}

static PyObject *rebuild_socket(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_rebuild_socket() takes 5 arguments");
        return NULL;
    }
    PyObject *socket = PyImport_ImportModule("socket");
    if (!socket)
        return NULL;
    int fd = cmp_py_redeem_fd(args[0], args[1], "socket");
    if (fd < 0) {
        Py_DECREF(socket);
        return NULL;
    }
    PyObject *r = PyObject_CallMethod(socket, "socket", "OOOi", args[2], args[3], args[4], fd);
    Py_DECREF(socket);
    if (!r)
        close(fd);
    return r;
}

/* The registry of ForkingPickler.register(): the stdlib's own dict, so
 * that what a library registers there (or through our reduction module,
 * which re-exports that class) reaches our transports too. */
static PyObject *set_extra_reducers(PyObject *module, PyObject *dict)
{
    if (!PyDict_Check(dict))
        return PyErr_Format(PyExc_TypeError, "_set_extra_reducers() takes a dict");
    DispatchObject *d = (DispatchObject *)cmp_py_state_of_module(module)->dispatch_table;
    Py_XSETREF(d->extra, Py_NewRef(dict));
    Py_RETURN_NONE;
}

static PyMethodDef reduction_functions[] = {
    {"_set_extra_reducers", set_extra_reducers, METH_O,
     "_set_extra_reducers(dict)\n--\n\nThe reducers our transports consult after their own "
     "and before copyreg's (ForkingPickler._extra_reducers)."},
    {"_reduce_socket", reduce_socket, METH_O,
     "_reduce_socket(sock)\n--\n\nHow our transports pickle a socket.socket: a token for a "
     "dup of its fd, redeemed by _rebuild_socket in the receiver."},
    {"_rebuild_socket", (PyCFunction)(void (*)(void))rebuild_socket, METH_FASTCALL,
     "_rebuild_socket(addr, key, family, type, proto)\n--\n\nThe socket of a token."},
    {NULL, NULL, 0, NULL},
};

static int get_function(PyObject *module, const char *name, PyObject **out)
{
    *out = PyObject_GetAttrString(module, name);
    return *out ? 0 : -1;
}

int cmp_py_reduction_init(PyObject *module, cmp_py_state *st)
{
    if (PyModule_AddFunctions(module, reduction_functions) < 0 ||
        get_function(module, "_reduce_socket", &st->reduce_socket) < 0 ||
        get_function(module, "_rebuild_socket", &st->rebuild_socket) < 0 ||
        get_function(module, "_reduce_connection", &st->reduce_connection) < 0 ||
        get_function(module, "_rebuild_connection", &st->rebuild_connection) < 0)
        return -1;
    st->str_socket = PyUnicode_InternFromString("socket");
    if (!st->str_socket)
        return -1;
    PyObject *pickle = PyImport_ImportModule("_pickle");
    if (!pickle)
        return -1;
    st->Pickler = PyObject_GetAttrString(pickle, "Pickler");
    Py_DECREF(pickle);
    PyObject *types = PyImport_ImportModule("types");
    if (!types)
        return -1;
    st->SimpleNamespace = PyObject_GetAttrString(types, "SimpleNamespace");
    Py_DECREF(types);
    PyObject *copyreg = PyImport_ImportModule("copyreg");
    if (!copyreg)
        return -1;
    PyObject *table = PyObject_GetAttrString(copyreg, "dispatch_table");
    Py_DECREF(copyreg);
    if (!st->Pickler || !st->SimpleNamespace || !table)
        goto fail;
    if (!PyDict_Check(table)) {
        PyErr_SetString(PyExc_TypeError, "copyreg.dispatch_table is not a dict");
        goto fail;
    }
    PyTypeObject *dtype = (PyTypeObject *)cmp_py_type_from_spec(module, &Dispatch_spec, NULL);
    if (!dtype)
        goto fail;
    DispatchObject *d = (DispatchObject *)dtype->tp_alloc(dtype, 0);
    Py_DECREF(dtype); /* the instance holds it */
    if (!d)
        goto fail;
    d->st = st;
    d->copyreg_table = table;
    st->dispatch_table = (PyObject *)d;
    st->Encoder_type = (PyTypeObject *)cmp_py_type_from_spec(module, &Encoder_spec, NULL);
    if (!st->Encoder_type || !(st->queue_encoder = encoder_new(st, 1)) ||
        !(st->conn_encoder = encoder_new(st, 0)))
        return -1;
    return 0;
fail:
    Py_XDECREF(table);
    return -1;
}
