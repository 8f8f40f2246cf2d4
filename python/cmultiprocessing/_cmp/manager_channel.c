/*
 * A client's channel to a manager's server: one per (address, authkey,
 * serializer) in a process, with one libcmp client per calling thread,
 * kept in the thread's state dict. Calls go through a shared-memory
 * mailbox when the server is ours on this machine, else on a socket,
 * spoken as the stdlib's clients speak (so a stdlib server understands
 * them). A server that is gone raises ManagerGoneError at once.
 */
#include "_cmp.h"

#include <errno.h>
#include <string.h>
#include <structmember.h>
#include <sys/socket.h>
#include <sys/uio.h>

static PyObject *ManagerGoneError; /* cmultiprocessing.managers.ManagerGoneError */
static PyObject *channels;         /* (address, authkey, xml) -> Channel, this process's */
static PyObject *k_return;

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
        PyObject *b =
            cmp_py_mgr_encode_bytes(st, req, self->xml ? CMP_PY_MGR_XML : CMP_PY_MGR_PICKLE);
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
    return cmp_py_mgr_decode(st, rep, replen);
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
    if (cmp_py_mgr_addr(address, &self->sa, &self->salen) < 0)
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

static PyMethodDef channel_functions[] = {
    {"_manager_channel", (PyCFunction)(void (*)(void))manager_channel, METH_FASTCALL, NULL},
    {"_manager_forget", manager_forget, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

int cmp_py_manager_channel_init(PyObject *module, cmp_py_state *st)
{
    if (!k_return && !(k_return = PyUnicode_InternFromString("#RETURN")))
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
        PyModule_AddFunctions(module, channel_functions) < 0)
        return -1;
    st->ManagerChannel_type = cmp_py_add_type(module, &Chan_spec, NULL);
    st->ManagerThreadClient_type =
        (PyTypeObject *)cmp_py_type_from_spec(module, &Tclient_spec, NULL);
    return st->ManagerChannel_type && st->ManagerThreadClient_type ? 0 : -1;
}
