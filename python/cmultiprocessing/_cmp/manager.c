/*
 * Managers on libcmp's manager server: the server process that holds the
 * shared objects and runs their methods (the handler, in the per-client
 * threads cmp_manager_serve gives it), the handle of that process, and a
 * client's channel to a server (one libcmp client per thread).
 *
 * A request is the stdlib's (id, methodname, args, kwds) and a reply its
 * (kind, result), so that the stdlib's clients and servers understand
 * ours. On a mailbox (same machine, both ours) they take the compact
 * encoding of serialize.c; on a socket, pickles, as the stdlib sends them.
 * The server tells the two apart by the first byte (a pickle's is 0x80)
 * and answers in kind.
 *
 * The method call on a held object runs here, in C; the server's own
 * functions (create, incref, decref, ...) and every unusual case (an
 * unknown id, a name not exposed, a fallback such as #GETVALUE) go to the
 * Python server object of managers.py, which follows the stdlib there.
 */
#include "_cmp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <structmember.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static PyObject *ManagerGoneError; /* cmultiprocessing.managers.ManagerGoneError */
static PyObject *channels;         /* (address, authkey) -> Channel, this process's */
static PyObject *s_shutdown, *s_call, *s_slow, *s_make_proxy, *s_join;
static PyObject *k_return, *k_error, *k_traceback;

/* ---- encoding, both ways ------------------------------------------------ */

/* A message as a pickle (socket peers, which may be the stdlib): new bytes,
 * or NULL with the pickling exception. */
static PyObject *pickle_bytes(cmp_py_state *st, PyObject *obj)
{
    cmp_py_pickling p;
    if (cmp_py_pickle_begin(st, 0, obj, &p) < 0)
        return NULL;
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    PyObject *r = empty ? PyObject_CallMethodOneArg(empty, s_join, p.chunks) : NULL;
    Py_XDECREF(empty);
    cmp_py_pickle_end(&p);
    return r;
}

/* The stdlib's serializer='xmlrpclib': a message is the UTF-8 XML of
 * xmlrpc.client.dumps((obj,)). Tuples come back as lists. */
static PyObject *xml_dumps, *xml_loads;

static int xml_init(void)
{
    if (xml_dumps)
        return 0;
    PyObject *m = PyImport_ImportModule("xmlrpc.client");
    xml_dumps = m ? PyObject_GetAttrString(m, "dumps") : NULL;
    xml_loads = xml_dumps ? PyObject_GetAttrString(m, "loads") : NULL;
    Py_XDECREF(m);
    if (!xml_loads)
        Py_CLEAR(xml_dumps);
    return xml_loads ? 0 : -1;
}

static PyObject *xml_bytes(PyObject *obj)
{
    if (xml_init() < 0)
        return NULL;
    PyObject *s = PyObject_CallFunction(xml_dumps, "(O)OOOi", obj, Py_None, Py_None, Py_None, 1);
    PyObject *b = s ? PyUnicode_AsUTF8String(s) : NULL;
    Py_XDECREF(s);
    return b;
}

static PyObject *xml_decode(const char *data, size_t len)
{
    if (xml_init() < 0)
        return NULL;
    PyObject *s = PyUnicode_DecodeUTF8(data, (Py_ssize_t)len, NULL);
    PyObject *r = s ? PyObject_CallOneArg(xml_loads, s) : NULL;
    Py_XDECREF(s);
    PyObject *params =
        r && PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2 ? PyTuple_GET_ITEM(r, 0) : NULL;
    PyObject *obj = NULL;
    if (params && PyTuple_Check(params) && PyTuple_GET_SIZE(params) == 1) {
        obj = PyTuple_GET_ITEM(params, 0);
        /* a request or a reply: the tuple it was */
        obj = PyList_Check(obj) ? PyList_AsTuple(obj) : Py_NewRef(obj);
    } else if (r) {
        PyErr_SetString(PyExc_ValueError, "an XML-RPC message of one value was expected");
    }
    Py_XDECREF(r);
    return obj;
}

enum { ENC_COMPACT, ENC_PICKLE, ENC_XML };

static int encoding_of(const void *data, size_t len)
{
    unsigned char b = len ? ((const unsigned char *)data)[0] : 0;
    return b == 0x80 ? ENC_PICKLE : b == '<' ? ENC_XML : ENC_COMPACT;
}

/* A message for a socket (pickle) or of the xmlrpclib serializer. */
static PyObject *encode_bytes(cmp_py_state *st, PyObject *obj, int enc)
{
    return enc == ENC_XML ? xml_bytes(obj) : pickle_bytes(st, obj);
}

static PyObject *decode_any(cmp_py_state *st, const void *data, size_t len)
{
    if (encoding_of(data, len) == ENC_XML)
        return xml_decode(data, len);
    if (len && ((const unsigned char *)data)[0] == 0x80) {
        PyObject *mv = PyMemoryView_FromMemory((char *)data, (Py_ssize_t)len, PyBUF_READ);
        if (!mv)
            return NULL;
        PyObject *r = PyObject_CallOneArg(st->pickle_loads, mv);
        Py_DECREF(mv);
        return r;
    }
    return cmp_py_decode(st, data, len);
}

/* ---- the server (in its own process) ------------------------------------- */

static struct {
    cmp_py_state *st;
    PyObject *server;    /* managers._Server */
    PyObject *id_to_obj; /* its dict: id -> (obj, exposed frozenset, method_to_typeid) */
    PyObject *initializer, *initargs;
} srv;

/* ('#TRACEBACK', the current exception formatted), the exception cleared. */
static PyObject *traceback_reply(void)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    PyObject *text = NULL;
    PyObject *tbmod = PyImport_ImportModule("traceback");
    if (tbmod && et) {
        PyObject *lines = PyObject_CallMethod(tbmod, "format_exception", "OOO", et,
                                              ev ? ev : Py_None, tb ? tb : Py_None);
        if (lines) {
            PyObject *empty = PyUnicode_FromString("");
            text = empty ? PyUnicode_Join(empty, lines) : NULL;
            Py_XDECREF(empty);
            Py_DECREF(lines);
        }
    }
    Py_XDECREF(tbmod);
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(tb);
    if (!text) {
        PyErr_Clear();
        text = PyUnicode_FromString("(the server could not format its traceback)");
    }
    PyObject *r = text ? PyTuple_Pack(2, k_traceback, text) : NULL;
    Py_XDECREF(text);
    return r;
}

/* The reply to a method call on a held object, or NULL with no exception
 * set when the Python server must take the request (the unusual cases). */
static PyObject *call_held(uint64_t client, PyObject *oid, PyObject *name, PyObject *args,
                           PyObject *kwds)
{
    if (!PyUnicode_Check(name) || !PyTuple_Check(args) || !PyDict_Check(kwds))
        return NULL;
    PyObject *entry = PyDict_GetItemWithError(srv.id_to_obj, oid);
    if (!entry || !PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *obj = PyTuple_GET_ITEM(entry, 0), *exposed = PyTuple_GET_ITEM(entry, 1);
    PyObject *typeids = PyTuple_GET_ITEM(entry, 2);
    if (!PyFrozenSet_Check(exposed) || PySet_Contains(exposed, name) != 1) {
        PyErr_Clear();
        return NULL;
    }
    Py_INCREF(entry); /* a decref of another client may drop it meanwhile */
    PyObject *fn = PyObject_GetAttr(obj, name);
    if (!fn) {
        Py_DECREF(entry);
        PyErr_Clear();
        return NULL;
    }
    PyObject *res = PyObject_Call(fn, args, PyDict_GET_SIZE(kwds) ? kwds : NULL);
    Py_DECREF(fn);
    PyObject *reply;
    if (!res) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            Py_DECREF(entry);
            return traceback_reply();
        }
        /* the exception itself: the client raises it (#ERROR) */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyErr_NormalizeException(&et, &ev, &tb);
        reply = PyTuple_Pack(2, k_error, ev ? ev : Py_None);
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
    } else {
        PyObject *typeid = PyDict_Check(typeids) ? PyDict_GetItemWithError(typeids, name) : NULL;
        if (typeid && typeid != Py_None) {
            PyObject *c = PyLong_FromUnsignedLongLong(client);
            reply = c ? PyObject_CallMethodObjArgs(srv.server, s_make_proxy, c, typeid, res, NULL)
                      : NULL;
            Py_XDECREF(c);
        } else if (!PyErr_Occurred()) {
            /* dict views travel as lists, as the stdlib's managers send them */
            if (PyDictKeys_Check(res) || PyDictValues_Check(res) || PyDictItems_Check(res))
                Py_SETREF(res, PySequence_List(res));
            reply = res ? PyTuple_Pack(2, k_return, res) : NULL;
        } else {
            reply = NULL;
        }
        Py_XDECREF(res);
    }
    Py_DECREF(entry);
    return reply ? reply : traceback_reply();
}

/* The reply to one request, and *flags for the handler's return. */
static PyObject *dispatch(uint64_t client, PyObject *req, int *flags)
{
    if (!PyTuple_Check(req) || PyTuple_GET_SIZE(req) != 4) {
        PyErr_SetString(PyExc_ValueError, "a request is (id, methodname, args, kwds)");
        return traceback_reply();
    }
    PyObject *oid = PyTuple_GET_ITEM(req, 0), *name = PyTuple_GET_ITEM(req, 1);
    PyObject *args = PyTuple_GET_ITEM(req, 2), *kwds = PyTuple_GET_ITEM(req, 3);
    PyObject *reply = NULL;
    if (oid != Py_None && (reply = call_held(client, oid, name, args, kwds)))
        return reply;
    PyObject *c = PyLong_FromUnsignedLongLong(client);
    if (!c)
        return traceback_reply();
    if (oid == Py_None)
        reply = PyObject_CallMethodObjArgs(srv.server, s_call, c, name, args, kwds, NULL);
    else
        reply = PyObject_CallMethodObjArgs(srv.server, s_slow, c, oid, name, args, kwds, NULL);
    Py_DECREF(c);
    if (!reply)
        return traceback_reply();
    if (oid == Py_None && PyUnicode_Check(name) && PyUnicode_Compare(name, s_shutdown) == 0 &&
        PyTuple_Check(reply) && PyTuple_GET_SIZE(reply) == 2 &&
        PyUnicode_Check(PyTuple_GET_ITEM(reply, 0)) &&
        PyUnicode_Compare(PyTuple_GET_ITEM(reply, 0), k_return) == 0)
        *flags |= CMP_MANAGER_STOP;
    return reply;
}

/* Writes the reply's message in the request's encoding (compact, pickle
 * or XML). Returns 0, or -1 with the encoding's exception. */
static int write_reply(PyObject *reply, int enc, cmp_manager_reply_t *out)
{
    cmp_manager_reply_clear(out);
    if (enc != ENC_COMPACT) {
        PyObject *b = encode_bytes(srv.st, reply, enc);
        if (!b)
            return -1;
        void *p = cmp_manager_reply_extend(out, (size_t)PyBytes_GET_SIZE(b));
        if (p)
            memcpy(p, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
        Py_DECREF(b);
        if (!p) {
            PyErr_NoMemory();
            return -1;
        }
        return 0;
    }
    cmp_py_frame f;
    cmp_py_frame_init(&f);
    if (cmp_py_encode(srv.st, reply, &f) < 0)
        return -1;
    char *p = cmp_manager_reply_extend(out, f.size);
    if (p)
        cmp_py_frame_copy(&f, p);
    cmp_py_frame_clear(&f);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int server_handler(void *arg, uint64_t client, const void *req, size_t len,
                          cmp_manager_reply_t *out)
{
    (void)arg;
    PyGILState_STATE g = PyGILState_Ensure();
    int enc = encoding_of(req, len);
    int flags = 0;
    PyObject *msg = decode_any(srv.st, req, len);
    PyObject *reply = msg ? dispatch(client, msg, &flags) : traceback_reply();
    Py_XDECREF(msg);
    if (!reply || write_reply(reply, enc, out) < 0) {
        /* the result could not be sent: say why instead (#UNSERIALIZABLE) */
        PyObject *tr = traceback_reply();
        PyObject *u = tr ? Py_BuildValue("(sO)", "#UNSERIALIZABLE", PyTuple_GET_ITEM(tr, 1)) : NULL;
        if (!u || write_reply(u, enc, out) < 0) {
            PyErr_Clear();
            flags |= CMP_MANAGER_DISCONNECT;
        }
        Py_XDECREF(u);
        Py_XDECREF(tr);
    }
    Py_XDECREF(reply);
    PyGILState_Release(g);
    return flags;
}

/* Each client thread keeps one thread state for its whole life, instead of
 * making one per request (PyGILState_Ensure alone would). */
static _Thread_local PyGILState_STATE client_gil;
static _Thread_local PyThreadState *client_ts;

static void server_on_client(void *arg, uint64_t client, int event)
{
    (void)arg;
    (void)client;
    if (event == CMP_MANAGER_CLIENT_START) {
        client_gil = PyGILState_Ensure();
        client_ts = PyEval_SaveThread();
    } else {
        PyEval_RestoreThread(client_ts);
        PyGILState_Release(client_gil);
    }
}

/* In the forked server process, before it listens. */
static int server_init(void *arg)
{
    (void)arg;
    cmp_py_fork_threading_arm();
    PyOS_AfterFork_Child();
    cmp_py_fork_threading_disarm();
    /* Ctrl-C goes to the whole process group: the starter handles it and
     * shuts the server down (as the stdlib's server ignores SIGINT). */
    PyOS_setsig(SIGINT, SIG_IGN);
    PyObject *r = PyObject_CallMethod(srv.server, "_in_server_process", NULL);
    if (r && srv.initializer && srv.initializer != Py_None) {
        Py_DECREF(r);
        r = PyObject_Call(srv.initializer, srv.initargs, NULL);
    }
    if (!r) {
        PyErr_Print();
        return 1;
    }
    Py_DECREF(r);
    /* the serving thread runs C only; the client threads take the GIL */
    PyEval_SaveThread();
    return 0;
}

/* ---- the server process's handle (ManagerProcess) ------------------------ */

typedef struct {
    PyObject_HEAD
    cmp_manager_process_t p;
    PyObject *address;
    int open;
} MprocObject;

static PyObject *addr_to_sockaddr(PyObject *address, struct sockaddr_storage *sa, socklen_t *len)
{
    if (cmp_py_to_sockaddr(PyTuple_Check(address) ? AF_INET : AF_UNIX, address, sa, len) < 0)
        return NULL;
    return Py_None;
}

/* _start_manager(server, address, authkey, initializer, initargs) */
static PyObject *start_manager(PyObject *module, PyObject *args)
{
    PyObject *server, *address, *authkey, *initializer, *initargs;
    if (!PyArg_ParseTuple(args, "OOOOO!", &server, &address, &authkey, &initializer, &PyTuple_Type,
                          &initargs))
        return NULL;
    cmp_py_state *st = cmp_py_state_of_module(module);
    PyObject *id_to_obj = PyObject_GetAttrString(server, "id_to_obj");
    if (!id_to_obj)
        return NULL;
    if (!PyDict_Check(id_to_obj)) {
        Py_DECREF(id_to_obj);
        PyErr_SetString(PyExc_TypeError, "server.id_to_obj must be a dict");
        return NULL;
    }
    struct sockaddr_storage sa;
    socklen_t salen = 0;
    if (address != Py_None && !addr_to_sockaddr(address, &sa, &salen)) {
        Py_DECREF(id_to_obj);
        return NULL;
    }
    Py_buffer key = {0};
    if (authkey != Py_None && PyObject_GetBuffer(authkey, &key, PyBUF_SIMPLE) < 0) {
        Py_DECREF(id_to_obj);
        return NULL;
    }
    MprocObject *self = PyObject_New(MprocObject, st->ManagerProcess_type);
    if (!self) {
        Py_DECREF(id_to_obj);
        PyBuffer_Release(&key);
        return NULL;
    }
    self->open = 0;
    self->address = NULL;
    cmp_manager_options_t opt = {
        .handler = server_handler,
        .on_client = server_on_client,
        .init = server_init,
        .addr = address == Py_None ? NULL : (struct sockaddr *)&sa,
        .addrlen = salen,
        .authkey = authkey == Py_None ? NULL : key.buf,
        .authkey_len = authkey == Py_None ? 0 : (size_t)key.len,
    };
    /* what the child needs; the parent lets go of it after the fork */
    srv.st = st;
    srv.server = server;
    srv.id_to_obj = id_to_obj;
    srv.initializer = initializer;
    srv.initargs = initargs;
    cmp_py_fork_threading_prepare();
    PyOS_BeforeFork();
    int rc = cmp_manager_start(&self->p, &opt, 0);
    PyOS_AfterFork_Parent();
    memset(&srv, 0, sizeof srv);
    Py_DECREF(id_to_obj);
    PyBuffer_Release(&key);
    if (rc < 0) {
        Py_DECREF(self);
        if (rc == -ECANCELED)
            return PyErr_Format(PyExc_RuntimeError,
                                "the manager's server process failed to start (its "
                                "initializer raised: see its traceback above)");
        return cmp_py_raise(rc);
    }
    self->open = 1;
    self->address = cmp_py_from_sockaddr(&self->p.addr, self->p.addrlen);
    if (!self->address) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Mproc_dealloc(PyObject *op)
{
    MprocObject *self = (MprocObject *)op;
    if (self->open)
        cmp_manager_close(&self->p);
    Py_XDECREF(self->address);
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_Free(op);
    Py_DECREF(tp);
}

/* Runs fn (shutdown or join) with the GIL released, resuming after signal
 * handlers. Returns its result, or -EINTR with an exception set. */
static int mproc_wait(MprocObject *self,
                      int (*fn)(cmp_manager_process_t *, const struct timespec *),
                      PyObject *timeout)
{
    struct timespec storage;
    const struct timespec *dl;
    if (cmp_py_deadline(timeout, &storage, &dl) < 0)
        return -EINTR;
    for (;;) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = fn(&self->p, dl);
        Py_END_ALLOW_THREADS
        if (rc != -EINTR)
            return rc;
        if (PyErr_CheckSignals() < 0)
            return -EINTR;
    }
}

static PyObject *Mproc_shutdown(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    MprocObject *self = (MprocObject *)op;
    if (!self->open)
        Py_RETURN_NONE;
    int rc = mproc_wait(self, cmp_manager_shutdown, nargs ? args[0] : Py_None);
    if (rc == -EINTR)
        return NULL;
    return PyBool_FromLong(rc == 0); /* False: it had to be killed */
}

static PyObject *Mproc_join(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    MprocObject *self = (MprocObject *)op;
    if (!self->open)
        Py_RETURN_TRUE;
    int rc = mproc_wait(self, cmp_manager_join, nargs ? args[0] : Py_None);
    if (rc == -EINTR)
        return NULL;
    if (rc < 0 && rc != -ETIMEDOUT && rc != -ECHILD)
        return cmp_py_raise(rc);
    return PyBool_FromLong(rc != -ETIMEDOUT);
}

static PyObject *Mproc_get_pid(PyObject *op, void *c)
{
    (void)c;
    return PyLong_FromLong((long)((MprocObject *)op)->p.proc.pid);
}

static PyObject *Mproc_get_exitcode(PyObject *op, void *c)
{
    (void)c;
    MprocObject *self = (MprocObject *)op;
    int code;
    if (!self->open || cmp_process_exitcode(&self->p.proc, &code) != 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(code);
}

static PyMethodDef Mproc_methods[] = {
    {"shutdown", (PyCFunction)(void (*)(void))Mproc_shutdown, METH_FASTCALL,
     "shutdown(timeout): stops the server, killing it after timeout; False if it was killed."},
    {"join", (PyCFunction)(void (*)(void))Mproc_join, METH_FASTCALL,
     "join(timeout=None): waits for the server to exit; False on timeout."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Mproc_getset[] = {
    {"pid", Mproc_get_pid, NULL, NULL, NULL},
    {"exitcode", Mproc_get_exitcode, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Mproc_members[] = {
    {"address", T_OBJECT, offsetof(MprocObject, address), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Mproc_slots[] = {
    {Py_tp_dealloc, Mproc_dealloc},
    {Py_tp_methods, Mproc_methods},
    {Py_tp_getset, Mproc_getset},
    {Py_tp_members, Mproc_members},
    {0, NULL},
};

static PyType_Spec Mproc_spec = {
    .name = "cmultiprocessing._cmp.ManagerProcess",
    .basicsize = sizeof(MprocObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Mproc_slots,
};

/* ---- a server in this process (get_server().serve_forever()) -------------- */

typedef struct {
    PyObject_HEAD
    cmp_manager_t *m;
    PyObject *server, *id_to_obj, *address;
    int done_fd[2]; /* the serving thread's end of serving */
    int rc;
} ListenerObject;

/* _manager_listen(server, address, authkey): binds the server's socket
 * here, for serve() to serve in this process. */
static PyObject *manager_listen(PyObject *module, PyObject *args)
{
    PyObject *server, *address, *authkey;
    if (!PyArg_ParseTuple(args, "OOO", &server, &address, &authkey))
        return NULL;
    cmp_py_state *st = cmp_py_state_of_module(module);
    struct sockaddr_storage sa;
    socklen_t salen = 0;
    if (address != Py_None && !addr_to_sockaddr(address, &sa, &salen))
        return NULL;
    Py_buffer key = {0};
    if (authkey != Py_None && PyObject_GetBuffer(authkey, &key, PyBUF_SIMPLE) < 0)
        return NULL;
    ListenerObject *self = PyObject_New(ListenerObject, st->ManagerListener_type);
    if (!self) {
        PyBuffer_Release(&key);
        return NULL;
    }
    self->m = NULL;
    self->server = Py_NewRef(server);
    self->address = NULL;
    self->done_fd[0] = self->done_fd[1] = -1;
    self->id_to_obj = PyObject_GetAttrString(server, "id_to_obj");
    if (!self->id_to_obj || !PyDict_Check(self->id_to_obj)) {
        PyBuffer_Release(&key);
        Py_DECREF(self);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "server.id_to_obj must be a dict");
        return NULL;
    }
    cmp_manager_options_t opt = {
        .handler = server_handler,
        .on_client = server_on_client,
        .addr = address == Py_None ? NULL : (struct sockaddr *)&sa,
        .addrlen = salen,
        .authkey = authkey == Py_None ? NULL : key.buf,
        .authkey_len = authkey == Py_None ? 0 : (size_t)key.len,
    };
    int rc = cmp_manager_create(&self->m, &opt);
    PyBuffer_Release(&key);
    if (rc < 0) {
        self->m = NULL;
        Py_DECREF(self);
        return cmp_py_raise(rc);
    }
    struct sockaddr_storage bound;
    socklen_t blen = cmp_manager_address(self->m, &bound);
    if (!(self->address = cmp_py_from_sockaddr(&bound, blen))) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void *listener_thread(void *arg)
{
    ListenerObject *self = arg;
    self->rc = cmp_manager_serve(self->m);
    char b = 1;
    ssize_t w = write(self->done_fd[1], &b, 1);
    (void)w;
    return NULL;
}

/* Serves in a thread of its own while this one waits with the GIL
 * released and runs signal handlers: Ctrl-C stops the server (after its
 * handlers return) and raises here. */
static PyObject *Listener_serve(PyObject *op, PyObject *unused)
{
    (void)unused;
    ListenerObject *self = (ListenerObject *)op;
    if (!self->m || srv.server) {
        PyErr_SetString(PyExc_RuntimeError, self->m ? "this process serves a manager already"
                                                    : "the server's listener is closed");
        return NULL;
    }
    if (pipe2(self->done_fd, O_CLOEXEC) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    srv.st = cmp_py_state_of_type(Py_TYPE(op));
    srv.server = self->server;
    srv.id_to_obj = self->id_to_obj;
    pthread_t th;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&th, NULL, listener_thread, self);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        memset(&srv, 0, sizeof srv);
        return cmp_py_raise(-err);
    }
    int failed = 0;
    for (;;) {
        struct pollfd p = {self->done_fd[0], POLLIN, 0};
        int n;
        Py_BEGIN_ALLOW_THREADS
        n = poll(&p, 1, 100); /* slices: a signal between two polls is not lost for long */
        Py_END_ALLOW_THREADS
        if (n > 0)
            break;
        if (!failed && PyErr_CheckSignals() < 0) {
            failed = 1;
            cmp_manager_stop(self->m);
        }
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(th, NULL);
    Py_END_ALLOW_THREADS
    memset(&srv, 0, sizeof srv);
    close(self->done_fd[0]);
    close(self->done_fd[1]);
    self->done_fd[0] = self->done_fd[1] = -1;
    cmp_manager_destroy(self->m);
    self->m = NULL;
    if (failed)
        return NULL;
    if (self->rc < 0)
        return cmp_py_raise(self->rc);
    Py_RETURN_NONE;
}

static void Listener_dealloc(PyObject *op)
{
    ListenerObject *self = (ListenerObject *)op;
    if (self->m)
        cmp_manager_destroy(self->m);
    Py_XDECREF(self->server);
    Py_XDECREF(self->id_to_obj);
    Py_XDECREF(self->address);
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_Free(op);
    Py_DECREF(tp);
}

static PyObject *Listener_close(PyObject *op, PyObject *unused)
{
    (void)unused;
    ListenerObject *self = (ListenerObject *)op;
    if (self->done_fd[0] >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "the server is serving");
        return NULL;
    }
    if (self->m)
        cmp_manager_destroy(self->m);
    self->m = NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Listener_methods[] = {
    {"serve", Listener_serve, METH_NOARGS, "Serves until a client's shutdown (or Ctrl-C)."},
    {"close", Listener_close, METH_NOARGS, "Closes the socket (the server cannot serve then)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Listener_members[] = {
    {"address", T_OBJECT, offsetof(ListenerObject, address), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Listener_slots[] = {
    {Py_tp_dealloc, Listener_dealloc},
    {Py_tp_methods, Listener_methods},
    {Py_tp_members, Listener_members},
    {0, NULL},
};

static PyType_Spec Listener_spec = {
    .name = "cmultiprocessing._cmp.ManagerListener",
    .basicsize = sizeof(ListenerObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Listener_slots,
};

/* ---- a client's channel to a server --------------------------------------- */

/* One libcmp client per thread of this process that calls (a client is
 * used by one thread at a time), kept in the thread's state dict (keyed by
 * the channel): it is disconnected when the thread ends, so the server's
 * thread for it ends too. */
typedef struct ChanObject ChanObject;
typedef struct {
    PyObject_HEAD
    ChanObject *chan;
    cmp_manager_client_t *c;
    pid_t pid; /* the process that connected it */
    int stale; /* a call was abandoned on it: connect again */
    int busy;  /* a call is in progress on it (a finalizer's call must not use it) */
} TclientObject;

/* Socket channels (remote, or a stdlib server) speak as the stdlib's
 * clients do, so that a stdlib server understands them: a thread's
 * connection starts with accept_connection and then carries calls on
 * objects; each call of the server's own functions (create, incref, ...)
 * takes a connection of its own, which the stdlib's server closes after
 * the reply. */
struct ChanObject {
    PyObject_HEAD
    PyObject *address, *authkey;
    struct sockaddr_storage sa;
    socklen_t salen;
    unsigned flags; /* CMP_MANAGER_SOCKET: AF_INET, or a peer that refused a mailbox */
    int xml;        /* serializer='xmlrpclib' */
    int reached;    /* a connection succeeded once: failures now mean it is gone */
    /* the last thread's client (borrowed: its dealloc clears it) */
    PyThreadState *last_ts;
    TclientObject *last;
};

static void Tclient_dealloc(PyObject *op)
{
    TclientObject *t = (TclientObject *)op;
    if (t->chan && t->chan->last == t)
        t->chan->last = NULL;
    if (t->c)
        cmp_manager_disconnect(t->c);
    Py_XDECREF(t->chan);
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_Free(op);
    Py_DECREF(tp);
}

static PyType_Slot Tclient_slots[] = {
    {Py_tp_dealloc, Tclient_dealloc},
    {0, NULL},
};

static PyType_Spec Tclient_spec = {
    .name = "cmultiprocessing._cmp._ManagerThreadClient",
    .basicsize = sizeof(TclientObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Tclient_slots,
};

static void Chan_dealloc(PyObject *op)
{
    ChanObject *self = (ChanObject *)op;
    Py_XDECREF(self->address);
    Py_XDECREF(self->authkey);
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_Free(op);
    Py_DECREF(tp);
}

static PyObject *raise_gone(ChanObject *self, int err)
{
    PyObject *msg = PyUnicode_FromFormat(
        "the manager at %R is gone (%s): its server process died or was shut down, "
        "so none of its shared objects can be reached",
        self->address, cmp_strerror(err));
    if (msg) {
        PyObject *args = Py_BuildValue("(iO)", -err, msg);
        if (args) {
            PyErr_SetObject(ManagerGoneError, args);
            Py_DECREF(args);
        }
        Py_DECREF(msg);
    }
    return NULL;
}

/* A new connection; 0, or -1 with an exception. */
static int chan_connect(ChanObject *self, cmp_manager_client_t **out)
{
    const void *key = NULL;
    Py_ssize_t keylen = 0;
    if (self->authkey != Py_None) {
        key = PyBytes_AS_STRING(self->authkey);
        keylen = PyBytes_GET_SIZE(self->authkey);
    }
    int rc;
    for (;;) {
        struct timespec dl;
        cmp_deadline_after(30.0, &dl);
        Py_BEGIN_ALLOW_THREADS
        rc = cmp_manager_connect(out, (struct sockaddr *)&self->sa, self->salen, key,
                                 (size_t)keylen, self->flags, &dl);
        Py_END_ALLOW_THREADS
        if (rc == -EPROTO && !(self->flags & CMP_MANAGER_SOCKET)) {
            self->flags |= CMP_MANAGER_SOCKET; /* not ours (the stdlib's): pickles on the socket */
            continue;
        }
        if (rc != -EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
    if (rc == 0) {
        self->reached = 1;
        return 0;
    }
    if (rc == -EACCES)
        PyErr_SetString(cmp_py_state_of_type(Py_TYPE(self))->AuthenticationError,
                        "the manager refused the authentication key (digest mismatch)");
    else if (self->reached && (rc == -ECONNREFUSED || rc == -ENOENT || rc == -ECONNRESET))
        raise_gone(self, rc);
    else
        cmp_py_raise(rc);
    return -1;
}

/* Sends req on c and returns the decoded reply; NULL with an exception
 * (*abandoned set when a signal handler raised with the call pending). */
static PyObject *roundtrip(ChanObject *self, cmp_manager_client_t *c, PyObject *req, int *abandoned)
{
    cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(self));
    const void *rep = NULL;
    size_t replen = 0;
    int rc;
    if (cmp_manager_client_is_mailbox(c) && !self->xml) {
        cmp_py_frame f;
        cmp_py_frame_init(&f);
        if (cmp_py_encode(st, req, &f) < 0)
            return NULL;
        struct iovec small[8], *iov = small;
        if (f.npieces > 8 && !(iov = PyMem_Malloc(sizeof *iov * (size_t)f.npieces))) {
            cmp_py_frame_clear(&f);
            return PyErr_NoMemory();
        }
        for (int i = 0; i < f.npieces; i++)
            iov[i] = (struct iovec){f.pieces[i].ptr, f.pieces[i].len};
        Py_BEGIN_ALLOW_THREADS
        rc = cmp_manager_callv(c, iov, f.npieces, &rep, &replen, NULL);
        Py_END_ALLOW_THREADS
        if (iov != small)
            PyMem_Free(iov);
        cmp_py_frame_clear(&f);
    } else {
        PyObject *b = encode_bytes(st, req, self->xml ? ENC_XML : ENC_PICKLE);
        if (!b)
            return NULL;
        Py_BEGIN_ALLOW_THREADS
        rc = cmp_manager_call(c, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b), &rep, &replen,
                              NULL);
        Py_END_ALLOW_THREADS
        Py_DECREF(b);
    }
    /* Interrupted while the server works: run the handlers (Ctrl-C raises
     * and abandons the call), else wait on, in slices so that a signal
     * landing between two sleeps is not missed for long. */
    while (rc == -EINTR || rc == -ETIMEDOUT) {
        if (PyErr_CheckSignals() < 0) {
            *abandoned = 1;
            return NULL;
        }
        struct timespec storage;
        const struct timespec *dl = cmp_py_slice(NULL, &storage);
        Py_BEGIN_ALLOW_THREADS
        rc = cmp_manager_call_resume(c, &rep, &replen, dl);
        Py_END_ALLOW_THREADS
    }
    if (rc == -ECONNRESET || rc == -ESHUTDOWN)
        return raise_gone(self, rc);
    if (rc < 0)
        return cmp_py_raise(rc);
    return decode_any(st, rep, replen);
}

/* The stdlib's first request of a connection that calls objects. */
static int accept_connection(ChanObject *self, cmp_manager_client_t *c)
{
    PyObject *req = Py_BuildValue("(Os(s){})", Py_None, "accept_connection", "cmultiprocessing");
    if (!req)
        return -1;
    int abandoned = 0;
    PyObject *reply = roundtrip(self, c, req, &abandoned);
    Py_DECREF(req);
    if (!reply)
        return -1;
    int ok = PyTuple_Check(reply) && PyTuple_GET_SIZE(reply) == 2 &&
             PyUnicode_Check(PyTuple_GET_ITEM(reply, 0)) &&
             PyUnicode_Compare(PyTuple_GET_ITEM(reply, 0), k_return) == 0;
    Py_DECREF(reply);
    if (!ok) {
        PyErr_Format(PyExc_ConnectionError, "the manager at %R refused the connection",
                     self->address);
        return -1;
    }
    return 0;
}

/* This thread's client, connected on first use; NULL with an exception. */
static TclientObject *chan_client(ChanObject *self)
{
    PyThreadState *ts = PyThreadState_Get();
    TclientObject *t = self->last;
    if (!t || self->last_ts != ts) {
        PyObject *tsd = PyThreadState_GetDict();
        if (!tsd) {
            PyErr_SetString(PyExc_RuntimeError, "no thread state dict");
            return NULL;
        }
        t = (TclientObject *)PyDict_GetItemWithError(tsd, (PyObject *)self);
        if (!t && PyErr_Occurred())
            return NULL;
        if (!t) {
            cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(self));
            if (!(t = PyObject_New(TclientObject, st->ManagerThreadClient_type)))
                return NULL;
            t->chan = (ChanObject *)Py_NewRef(self);
            t->c = NULL;
            t->pid = 0;
            t->stale = t->busy = 0;
            int rc = PyDict_SetItem(tsd, (PyObject *)self, (PyObject *)t);
            Py_DECREF(t); /* the dict's now */
            if (rc < 0)
                return NULL;
        }
        self->last = t;
        self->last_ts = ts;
    }
    /* libcmp reconnects a forked child's mailbox by itself; a socket
     * connection must start with the handshake below */
    if (t->c && !t->stale && (t->pid == cmp_self_pid() || cmp_manager_client_is_mailbox(t->c)))
        return t;
    cmp_manager_client_t *c;
    if (chan_connect(self, &c) < 0)
        return NULL;
    if (t->c)
        cmp_manager_disconnect(t->c);
    t->c = c;
    t->stale = 0;
    t->pid = cmp_self_pid();
    if (!cmp_manager_client_is_mailbox(c) && accept_connection(self, c) < 0) {
        t->stale = 1;
        return NULL;
    }
    return t;
}

PyObject *cmp_py_channel_get(cmp_py_state *st, PyObject *address, PyObject *authkey,
                             PyObject *serializer)
{
    if (!channels && !(channels = PyDict_New()))
        return NULL;
    int xml = serializer && PyUnicode_Check(serializer) &&
              PyUnicode_CompareWithASCIIString(serializer, "xmlrpclib") == 0;
    PyObject *k = Py_BuildValue("(OOi)", address, authkey, xml);
    if (!k)
        return NULL;
    PyObject *ch = PyDict_GetItemWithError(channels, k);
    if (ch || PyErr_Occurred()) {
        Py_DECREF(k);
        return ch ? Py_NewRef(ch) : NULL;
    }
    ChanObject *self = PyObject_New(ChanObject, st->ManagerChannel_type);
    if (!self) {
        Py_DECREF(k);
        return NULL;
    }
    self->address = Py_NewRef(address);
    self->authkey = Py_NewRef(authkey);
    self->last = NULL;
    self->last_ts = NULL;
    self->flags = PyTuple_Check(address) ? CMP_MANAGER_SOCKET : 0;
    self->xml = xml;
    self->reached = 0;
    if (authkey != Py_None && !PyBytes_Check(authkey)) {
        PyErr_SetString(PyExc_TypeError, "authkey should be a byte string");
        goto fail;
    }
    if (!addr_to_sockaddr(address, &self->sa, &self->salen))
        goto fail;
    if (PyDict_SetItem(channels, k, (PyObject *)self) < 0)
        goto fail;
    Py_DECREF(k);
    return (PyObject *)self;
fail:
    Py_DECREF(k);
    Py_DECREF(self);
    return NULL;
}

PyObject *cmp_py_channel_request(PyObject *op, PyObject *oid, PyObject *name, PyObject *args,
                                 PyObject *kwds)
{
    ChanObject *self = (ChanObject *)op;
    TclientObject *t = chan_client(self);
    if (!t)
        return NULL;
    PyObject *req = PyTuple_Pack(4, oid, name, args, kwds);
    if (!req)
        return NULL;
    int abandoned = 0;
    PyObject *reply;
    /* A call made while this thread's client is in the middle of one (a
     * proxy's finalizer run by a collection during its encoding or
     * decoding) takes a connection of its own: the reply in the client's
     * buffer must stay whole. */
    if (t->busy || (oid == Py_None && !cmp_manager_client_is_mailbox(t->c))) {
        cmp_manager_client_t *once;
        if (chan_connect(self, &once) < 0) {
            Py_DECREF(req);
            return NULL;
        }
        reply = roundtrip(self, once, req, &abandoned);
        cmp_manager_disconnect(once);
    } else {
        Py_INCREF(t); /* a thread dict cleared meanwhile must not free it */
        t->busy = 1;
        reply = roundtrip(self, t->c, req, &abandoned);
        t->busy = 0;
        /* the next call must not read this one's reply */
        t->stale |= abandoned;
        Py_DECREF(t);
    }
    Py_DECREF(req);
    return reply;
}

static PyObject *Chan_is_mailbox(PyObject *op, PyObject *unused)
{
    (void)unused;
    TclientObject *t = chan_client((ChanObject *)op);
    if (!t)
        return NULL;
    return PyBool_FromLong(cmp_manager_client_is_mailbox(t->c));
}

static PyObject *Chan_request(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "request(id, methodname, args, kwds)");
        return NULL;
    }
    return cmp_py_channel_request(op, args[0], args[1], args[2], args[3]);
}

static PyMethodDef Chan_methods[] = {
    {"request", (PyCFunction)(void (*)(void))Chan_request, METH_FASTCALL,
     "request(id, methodname, args, kwds): the server's reply (kind, result)."},
    {"is_mailbox", Chan_is_mailbox, METH_NOARGS,
     "True when this thread's calls go through shared memory."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Chan_members[] = {
    {"address", T_OBJECT, offsetof(ChanObject, address), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Chan_slots[] = {
    {Py_tp_dealloc, Chan_dealloc},
    {Py_tp_methods, Chan_methods},
    {Py_tp_members, Chan_members},
    {0, NULL},
};

static PyType_Spec Chan_spec = {
    .name = "cmultiprocessing._cmp.ManagerChannel",
    .basicsize = sizeof(ChanObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Chan_slots,
};

/* _manager_channel(address, authkey, serializer='pickle'): this process's
 * channel (cached). */
static PyObject *manager_channel(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_manager_channel(address, authkey, serializer)");
        return NULL;
    }
    return cmp_py_channel_get(cmp_py_state_of_module(module), args[0], args[1],
                              nargs == 3 ? args[2] : NULL);
}

/* After a fork the children's channels are their own (libcmp reconnects
 * by pid); but a dead manager's channels must not be found again by a new
 * manager at the same address. */
static PyObject *manager_forget(PyObject *module, PyObject *address)
{
    (void)module;
    if (!channels)
        Py_RETURN_NONE;
    PyObject *keys = PyDict_Keys(channels);
    if (!keys)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        PyObject *k = PyList_GET_ITEM(keys, i);
        int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(k, 0), address, Py_EQ);
        if (eq < 0 || (eq && PyDict_DelItem(channels, k) < 0)) {
            Py_DECREF(keys);
            return NULL;
        }
    }
    Py_DECREF(keys);
    Py_RETURN_NONE;
}

/* Manager(): a started SyncManager. Its classes live in managers.py,
 * imported on first use (a program without managers does not pay it). */
static PyObject *manager_new(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    PyObject *m = PyImport_ImportModule("cmultiprocessing.managers");
    if (!m)
        return NULL;
    PyObject *r = PyObject_CallMethod(m, "Manager", NULL);
    Py_DECREF(m);
    return r;
}

static PyMethodDef manager_functions[] = {
    {"_manager_listen", manager_listen, METH_VARARGS,
     "_manager_listen(server, address, authkey): a ManagerListener bound here."},
    {"Manager", manager_new, METH_NOARGS,
     "Manager()\n--\n\nReturn a started SyncManager: shared objects served by a process "
     "of their own."},
    {"_start_manager", start_manager, METH_VARARGS,
     "_start_manager(server, address, authkey, initializer, initargs): a ManagerProcess."},
    {"_manager_channel", (PyCFunction)(void (*)(void))manager_channel, METH_FASTCALL, NULL},
    {"_manager_forget", manager_forget, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

int cmp_py_manager_init(PyObject *module, cmp_py_state *st)
{
    if (!(s_shutdown = PyUnicode_InternFromString("shutdown")) ||
        !(s_call = PyUnicode_InternFromString("_call")) ||
        !(s_slow = PyUnicode_InternFromString("_slow")) ||
        !(s_make_proxy = PyUnicode_InternFromString("_make_proxy")) ||
        !(s_join = PyUnicode_InternFromString("join")) ||
        !(k_return = PyUnicode_InternFromString("#RETURN")) ||
        !(k_error = PyUnicode_InternFromString("#ERROR")) ||
        !(k_traceback = PyUnicode_InternFromString("#TRACEBACK")))
        return -1;
    if (!ManagerGoneError) {
        PyObject *bases = PyTuple_Pack(2, PyExc_ConnectionResetError, PyExc_EOFError);
        if (!bases)
            return -1;
        ManagerGoneError = PyErr_NewExceptionWithDoc(
            "cmultiprocessing.managers.ManagerGoneError",
            "The manager's server process is gone (it died or was shut down): raised at "
            "once by every call on its proxies instead of a hang.",
            bases, NULL);
        Py_DECREF(bases);
        if (!ManagerGoneError)
            return -1;
    }
    if (PyModule_AddObjectRef(module, "ManagerGoneError", ManagerGoneError) < 0 ||
        PyModule_AddFunctions(module, manager_functions) < 0)
        return -1;
    st->ManagerProcess_type = cmp_py_add_type(module, &Mproc_spec, NULL);
    st->ManagerChannel_type = cmp_py_add_type(module, &Chan_spec, NULL);
    st->ManagerListener_type = cmp_py_add_type(module, &Listener_spec, NULL);
    st->ManagerThreadClient_type =
        (PyTypeObject *)cmp_py_type_from_spec(module, &Tclient_spec, NULL);
    if (!st->ManagerThreadClient_type)
        return -1;
    return st->ManagerProcess_type && st->ManagerChannel_type && st->ManagerListener_type ? 0 : -1;
}
