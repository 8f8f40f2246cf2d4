/*
 * A manager's server on libcmp's manager server: the handler that holds
 * the shared objects and runs their methods (in the per-client threads
 * cmp_manager_serve gives it), in a process of its own (ManagerProcess,
 * BaseManager.start) or in the caller's (ManagerListener,
 * get_server().serve_forever()). It answers each request in the encoding
 * it came in (manager_wire.c); the clients' side is manager_channel.c.
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

static PyObject *s_shutdown, *s_call, *s_slow, *s_make_proxy;
static PyObject *k_return, *k_error, *k_traceback;

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
    if (enc != CMP_PY_MGR_COMPACT) {
        PyObject *b = cmp_py_mgr_encode_bytes(srv.st, reply, enc);
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
    int enc = cmp_py_mgr_encoding_of(req, len);
    int flags = 0;
    PyObject *msg = cmp_py_mgr_decode(srv.st, req, len);
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
    if (address != Py_None && cmp_py_mgr_addr(address, &sa, &salen) < 0) {
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
    if (address != Py_None && cmp_py_mgr_addr(address, &sa, &salen) < 0)
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

/* Manager(ctx=None): a started SyncManager (ctx: the context whose way
 * its server process is started; a spawn or forkserver context's Manager
 * passes itself). Its classes live in managers.py, imported on first use
 * (a program without managers does not pay it). */
static PyObject *manager_new(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs > 1)
        return PyErr_Format(PyExc_TypeError, "Manager() takes at most 1 argument (%zd given)",
                            nargs);
    PyObject *m = PyImport_ImportModule("cmultiprocessing.managers");
    if (!m)
        return NULL;
    PyObject *fn = PyObject_GetAttrString(m, "Manager");
    Py_DECREF(m);
    if (!fn)
        return NULL;
    PyObject *r = PyObject_Vectorcall(fn, args, (size_t)nargs, NULL);
    Py_DECREF(fn);
    return r;
}

static PyMethodDef manager_functions[] = {
    {"_manager_listen", manager_listen, METH_VARARGS,
     "_manager_listen(server, address, authkey): a ManagerListener bound here."},
    {"Manager", (PyCFunction)(void (*)(void))manager_new, METH_FASTCALL,
     "Manager(ctx=None)\n--\n\nReturn a started SyncManager: shared objects served by a "
     "process of their own."},
    {"_start_manager", start_manager, METH_VARARGS,
     "_start_manager(server, address, authkey, initializer, initargs): a ManagerProcess."},
    {NULL, NULL, 0, NULL},
};

int cmp_py_manager_init(PyObject *module, cmp_py_state *st)
{
    if (!(s_shutdown = PyUnicode_InternFromString("shutdown")) ||
        !(s_call = PyUnicode_InternFromString("_call")) ||
        !(s_slow = PyUnicode_InternFromString("_slow")) ||
        !(s_make_proxy = PyUnicode_InternFromString("_make_proxy")) ||
        !(k_return = PyUnicode_InternFromString("#RETURN")) ||
        !(k_error = PyUnicode_InternFromString("#ERROR")) ||
        !(k_traceback = PyUnicode_InternFromString("#TRACEBACK")))
        return -1;
    if (cmp_py_manager_channel_init(module, st) < 0 ||
        PyModule_AddFunctions(module, manager_functions) < 0)
        return -1;
    st->ManagerProcess_type = cmp_py_add_type(module, &Mproc_spec, NULL);
    st->ManagerListener_type = cmp_py_add_type(module, &Listener_spec, NULL);
    return st->ManagerProcess_type && st->ManagerListener_type ? 0 : -1;
}
