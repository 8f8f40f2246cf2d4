/*
 * Connections: Pipe(), Connection, connection.wait(), Listener, Client and
 * the challenge handshake, on libcmp's cmp_conn_* (the stdlib's framing, so
 * a stdlib Client talks to our Listener and the reverse).
 *
 * Every call that can block releases the GIL around the libcmp call only,
 * and on -EINTR runs the signal handlers and resumes the same message (the
 * libcmp calls keep their progress), so Ctrl-C interrupts recv, send, poll,
 * wait and accept promptly.
 */
#include "_cmp.h"

#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    cmp_conn_t conn; /* conn.fd == -1 once closed */
    PyObject *weakreflist;
} ConnObject;

typedef struct {
    PyObject_HEAD
    cmp_listener_t l;  /* l.fd == -1 once closed */
    PyObject *authkey; /* bytes or NULL */
    PyObject *last_accepted;
    PyObject *weakreflist;
} ListenerObject;

/* ---- argument parsing for the METH_FASTCALL methods ---------------------- */

/* Fills out[0..n) from positional and keyword arguments named names[];
 * missing ones stay as they were (the caller's defaults). */
static int parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *const *names, int n, int required, PyObject **out)
{
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fname, n,
                     nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int j;
        for (j = 0; j < n; j++)
            if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0)
                break;
        if (j == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                         key);
            return -1;
        }
        if (j < nargs) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[j]);
            return -1;
        }
        out[j] = args[nargs + k];
    }
    for (int j = 0; j < required; j++)
        if (!out[j]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, names[j]);
            return -1;
        }
    return 0;
}

/* ---- Connection ------------------------------------------------------------ */

static cmp_py_state *state_of(PyObject *self)
{
    return cmp_py_state_of_type(Py_TYPE(self));
}

static int check_open(ConnObject *self)
{
    if (self->conn.fd < 0) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return -1;
    }
    return 0;
}

static int check_readable(ConnObject *self)
{
    if (check_open(self) < 0)
        return -1;
    if (!(self->conn.flags & CMP_CONN_READABLE)) {
        PyErr_SetString(PyExc_OSError, "connection is write-only");
        return -1;
    }
    return 0;
}

static int check_writable(ConnObject *self)
{
    if (check_open(self) < 0)
        return -1;
    if (!(self->conn.flags & CMP_CONN_WRITABLE)) {
        PyErr_SetString(PyExc_OSError, "connection is read-only");
        return -1;
    }
    return 0;
}

static PyObject *raise_conn_error(int r)
{
    if (r == CMP_CONN_EOF) {
        PyErr_SetNone(PyExc_EOFError);
        return NULL;
    }
    if (r == -EPROTO) {
        PyErr_SetString(PyExc_OSError, "got end of file during message");
        return NULL;
    }
    return cmp_py_raise(r);
}

/* Sends len bytes with the GIL released; resumes after signal handlers. */
static int conn_send(ConnObject *self, const void *buf, size_t len)
{
    uint64_t progress = 0;
    for (;;) {
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = cmp_conn_send(&self->conn, buf, len, &progress, NULL);
        Py_END_ALLOW_THREADS
        if (r == 0)
            return 0;
        if (r == -EINTR) {
            if (PyErr_CheckSignals() < 0)
                return -1;
            if (self->conn.fd < 0) /* closed by a handler */
                return check_open(self);
            continue;
        }
        raise_conn_error(r);
        return -1;
    }
}

/* Receiving: small messages land in a stack buffer (no GIL needed); a
 * larger one goes straight into a bytes object, allocated by taking the GIL
 * back for the moment of the allocation, so it is copied once. libcmp asks
 * for room as the payload arrives (a header's length is only the peer's
 * claim), so the bytes object grows with it. */
#define SMALL_MSG 4096

typedef struct {
    PyThreadState *ts;       /* saved thread state while the GIL is released */
    const cmp_conn_rx_t *rx; /* the message's length, for rx_alloc */
    PyObject *bytes;         /* the large message, when one was allocated */
    char *into;              /* recv_bytes_into: the caller's buffer ... */
    size_t into_cap;         /* ... and its room after the offset */
    int too_short;           /* the message did not fit: it went to bytes */
    char small[SMALL_MSG];
} rx_ctx;

static void *rx_alloc(void *arg, size_t len)
{
    rx_ctx *ctx = arg;
    /* Chosen by the whole length, so a message never moves between these:
     * one that fits goes to the caller's buffer (whose size the caller
     * chose), and one that does not leaves that buffer untouched, as the
     * stdlib's BufferTooShort does. */
    if (ctx->into && ctx->rx->len <= ctx->into_cap)
        return ctx->into;
    if (!ctx->into && ctx->rx->len <= SMALL_MSG)
        return ctx->small;
    if (len > PY_SSIZE_T_MAX)
        return NULL;
    PyEval_RestoreThread(ctx->ts);
    if (!ctx->bytes)
        ctx->bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    else
        /* Documented C API (Python.h); realloc, so mremap for big blocks.
         * On failure it frees the object and sets ctx->bytes to NULL. */
        _PyBytes_Resize(&ctx->bytes, (Py_ssize_t)len);
    ctx->ts = PyEval_SaveThread();
    ctx->too_short = ctx->into != NULL;
    return ctx->bytes ? PyBytes_AS_STRING(ctx->bytes) : NULL;
}

/* EOF where the stdlib starts one of its reads (after the 4-byte header,
 * after the 8-byte length, before the payload) is EOFError there, as
 * between messages; only EOF inside one of them is "end of file during
 * message". Programs catch EOFError for a peer that died. */
static int eof_at_boundary(const cmp_conn_rx_t *rx)
{
    return rx->done == 4 || (rx->done == 12 && memcmp(rx->hdr, "\xff\xff\xff\xff", 4) == 0);
}

/* Receives one message into ctx (maxlen: UINT64_MAX for none). Returns 0,
 * or -1 with an exception. */
static int conn_recv(ConnObject *self, rx_ctx *ctx, cmp_conn_rx_t *rx, uint64_t maxlen)
{
    ctx->rx = rx;
    /* A bytes object holds at most PY_SSIZE_T_MAX. */
    uint64_t limit = maxlen < PY_SSIZE_T_MAX ? maxlen : PY_SSIZE_T_MAX;
    for (;;) {
        ctx->ts = PyEval_SaveThread();
        int r = cmp_conn_recv(&self->conn, rx, limit, rx_alloc, ctx, NULL);
        PyEval_RestoreThread(ctx->ts);
        if (r == 0)
            return 0;
        if (r == -EINTR) {
            if (PyErr_CheckSignals() < 0 || (self->conn.fd < 0 && check_open(self) < 0))
                goto fail;
            continue;
        }
        if (r == -EMSGSIZE && rx->len <= maxlen) {
            /* As the stdlib (which fails to read that many): the header is
             * consumed, the connection stays as it is. */
            PyErr_Format(PyExc_OverflowError, "message length %llu does not fit in memory",
                         (unsigned long long)rx->len);
            goto fail;
        }
        if (r == -EPROTO && eof_at_boundary(rx)) {
            PyErr_SetNone(PyExc_EOFError);
            goto fail;
        }
        if (r == -EMSGSIZE) {
            /* As the stdlib: the rest of the stream is unusable for reading. */
            if (self->conn.flags & CMP_CONN_WRITABLE)
                self->conn.flags &= ~CMP_CONN_READABLE;
            else
                cmp_conn_close(&self->conn);
            PyErr_SetString(PyExc_OSError, "bad message length");
            goto fail;
        }
        if (r == -ENOMEM && PyErr_Occurred())
            goto fail;
        raise_conn_error(r);
        goto fail;
    }
fail:
    Py_CLEAR(ctx->bytes);
    return -1;
}

/* The received message as bytes (new reference). */
static PyObject *rx_bytes(rx_ctx *ctx, cmp_conn_rx_t *rx)
{
    if (ctx->bytes)
        return ctx->bytes;
    return PyBytes_FromStringAndSize(ctx->small, (Py_ssize_t)rx->len);
}

/* The arguments are read in __init__, not here, so that a subclass with an
 * __init__ of its own (other parameters, a super().__init__(handle) call)
 * works as with the stdlib's class; until then the connection is closed. */
static PyObject *Conn_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    ConnObject *self = (ConnObject *)type->tp_alloc(type, 0);
    if (self)
        self->conn.fd = -1;
    return (PyObject *)self;
}

static int Conn_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"handle", "readable", "writable", NULL};
    PyObject *handle;
    int readable = 1, writable = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pp:Connection", kwlist, &handle, &readable,
                                     &writable))
        return -1;
    /* The stdlib calls handle.__index__(): AttributeError for a str. */
    if (!PyIndex_Check(handle)) {
        PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '__index__'",
                     Py_TYPE(handle)->tp_name);
        return -1;
    }
    PyObject *index = PyNumber_Index(handle);
    if (!index)
        return -1;
    long fd = PyLong_AsLong(index);
    Py_DECREF(index);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "invalid handle");
        return -1;
    }
    if (!readable && !writable) {
        PyErr_SetString(PyExc_ValueError, "at least one of `readable` and `writable` must be True");
        return -1;
    }
    ConnObject *self = (ConnObject *)op;
    cmp_conn_close(&self->conn); /* __init__ called again: the new fd replaces the old */
    cmp_conn_open(&self->conn, (int)fd,
                  (readable ? CMP_CONN_READABLE : 0) | (writable ? CMP_CONN_WRITABLE : 0));
    return 0;
}

static ConnObject *conn_wrap(PyTypeObject *type, cmp_conn_t *conn)
{
    ConnObject *self = (ConnObject *)type->tp_alloc(type, 0);
    if (!self) {
        cmp_conn_close(conn);
        return NULL;
    }
    self->conn = *conn;
    return self;
}

static void Conn_dealloc(PyObject *op)
{
    ConnObject *self = (ConnObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    if (self->weakreflist)
        PyObject_ClearWeakRefs(op);
    cmp_conn_close(&self->conn);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *Conn_send(PyObject *op, PyObject *obj)
{
    ConnObject *self = (ConnObject *)op;
    if (check_writable(self) < 0)
        return NULL;
    /* pickled as the stdlib's ForkingPickler would (Connections and
     * sockets in obj travel as fd sharer tokens) */
    cmp_py_pickling pk;
    if (cmp_py_pickle_begin(state_of(op), 0, obj, &pk) < 0)
        return NULL;
    PyObject *data;
    if (PyList_GET_SIZE(pk.chunks) == 1 && PyBytes_CheckExact(PyList_GET_ITEM(pk.chunks, 0))) {
        data = Py_NewRef(PyList_GET_ITEM(pk.chunks, 0));
    } else {
        /* a large pickle comes in frames: one message needs them joined */
        PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
        data = empty ? PyObject_CallMethod(empty, "join", "O", pk.chunks) : NULL;
        Py_XDECREF(empty);
    }
    /* before blocking in send: another thread may pickle meanwhile */
    cmp_py_pickle_end(&pk);
    if (!data)
        return NULL;
    int r = conn_send(self, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data));
    Py_DECREF(data);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* An offset or size: an integer, clamped to the Py_ssize_t range, so that
 * 2**70 is "too large" (ValueError, as the stdlib compares it) rather than
 * an OverflowError. */
static int index_arg(PyObject *o, Py_ssize_t *out)
{
    PyObject *i = PyNumber_Index(o);
    if (!i)
        return -1;
    *out = PyNumber_AsSsize_t(i, NULL);
    Py_DECREF(i);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* The stdlib sends a buffer it can concatenate to the header; one that is
 * not contiguous fails there with TypeError, not BufferError. */
static int get_buffer(PyObject *o, Py_buffer *view, int flags, const char *what)
{
    if (PyObject_GetBuffer(o, view, flags | PyBUF_C_CONTIGUOUS) == 0)
        return 0;
    if (PyErr_ExceptionMatches(PyExc_BufferError) && PyObject_CheckBuffer(o)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s() argument must be a %scontiguous bytes-like object",
                     what, flags & PyBUF_WRITABLE ? "writable, " : "");
    }
    return -1;
}

static PyObject *Conn_send_bytes(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    static const char *const names[] = {"buf", "offset", "size"};
    PyObject *a[3] = {NULL, NULL, NULL};
    ConnObject *self = (ConnObject *)op;
    if (parse_args("send_bytes", args, nargs, kwnames, names, 3, 1, a) < 0 ||
        check_writable(self) < 0)
        return NULL;
    Py_buffer view;
    if (get_buffer(a[0], &view, PyBUF_SIMPLE, "send_bytes") < 0)
        return NULL;
    Py_ssize_t n = view.len, offset = 0, size;
    if (a[1] && index_arg(a[1], &offset) < 0)
        goto fail;
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "offset is negative");
        goto fail;
    }
    if (n < offset) {
        PyErr_SetString(PyExc_ValueError, "buffer length < offset");
        goto fail;
    }
    if (!a[2] || a[2] == Py_None) {
        size = n - offset;
    } else {
        if (index_arg(a[2], &size) < 0)
            goto fail;
        if (size < 0) {
            PyErr_SetString(PyExc_ValueError, "size is negative");
            goto fail;
        }
        if (size > n - offset) {
            PyErr_SetString(PyExc_ValueError, "buffer length < offset + size");
            goto fail;
        }
    }
    int r = conn_send(self, (char *)view.buf + offset, (size_t)size);
    PyBuffer_Release(&view);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&view);
    return NULL;
}

/* maxlength as the stdlib compares it with the length: any real number
 * (recv_bytes(1e6) works there), a huge one or NaN is no limit. */
static int maxlength_arg(PyObject *o, uint64_t *out)
{
    if (PyFloat_Check(o)) {
        double d = PyFloat_AS_DOUBLE(o);
        if (d < 0) {
            PyErr_SetString(PyExc_ValueError, "negative maxlength");
            return -1;
        }
        /* length > d for an integer length is length > floor(d) */
        *out = d != d || d >= 18446744073709551616.0 ? UINT64_MAX : (uint64_t)d;
        return 0;
    }
    PyObject *i = PyNumber_Index(o);
    if (!i) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "'<' not supported between instances of '%.100s' and 'int'",
                         Py_TYPE(o)->tp_name);
        }
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    Py_DECREF(i);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0) {
        *out = UINT64_MAX;
        return 0;
    }
    if (v < 0 || overflow < 0) {
        PyErr_SetString(PyExc_ValueError, "negative maxlength");
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static PyObject *Conn_recv_bytes(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    static const char *const names[] = {"maxlength"};
    PyObject *a[1] = {NULL};
    ConnObject *self = (ConnObject *)op;
    if (parse_args("recv_bytes", args, nargs, kwnames, names, 1, 0, a) < 0 ||
        check_readable(self) < 0)
        return NULL;
    uint64_t maxlen = UINT64_MAX;
    if (a[0] && a[0] != Py_None && maxlength_arg(a[0], &maxlen) < 0)
        return NULL;
    rx_ctx ctx;
    ctx.bytes = NULL;
    ctx.into = NULL;
    ctx.too_short = 0;
    cmp_conn_rx_t rx = {0};
    if (conn_recv(self, &ctx, &rx, maxlen) < 0)
        return NULL;
    return rx_bytes(&ctx, &rx);
}

static PyObject *Conn_recv_bytes_into(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                      PyObject *kwnames)
{
    static const char *const names[] = {"buf", "offset"};
    PyObject *a[2] = {NULL, NULL};
    ConnObject *self = (ConnObject *)op;
    if (parse_args("recv_bytes_into", args, nargs, kwnames, names, 2, 1, a) < 0 ||
        check_readable(self) < 0)
        return NULL;
    Py_buffer view;
    /* A read-only buffer is a wrong type of argument, TypeError as in the
     * stdlib (which raises it only after consuming the message: here the
     * message stays to be read). */
    if (get_buffer(a[0], &view, PyBUF_WRITABLE, "recv_bytes_into") < 0)
        return NULL;
    Py_ssize_t offset = 0;
    PyObject *result = NULL;
    if (a[1] && index_arg(a[1], &offset) < 0)
        goto done;
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "negative offset");
        goto done;
    }
    if (offset > view.len) {
        PyErr_SetString(PyExc_ValueError, "offset too large");
        goto done;
    }
    rx_ctx ctx;
    ctx.bytes = NULL;
    ctx.into = (char *)view.buf + offset;
    ctx.into_cap = (size_t)(view.len - offset);
    ctx.too_short = 0;
    cmp_conn_rx_t rx = {0};
    if (conn_recv(self, &ctx, &rx, UINT64_MAX) < 0)
        goto done;
    if (ctx.too_short) {
        /* The whole message travels with the exception, as the stdlib's. */
        PyErr_SetObject(state_of(op)->BufferTooShort, ctx.bytes);
        Py_DECREF(ctx.bytes);
        goto done;
    }
    result = PyLong_FromUnsignedLongLong(rx.len);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyObject *Conn_recv(PyObject *op, PyObject *unused)
{
    (void)unused;
    ConnObject *self = (ConnObject *)op;
    if (check_readable(self) < 0)
        return NULL;
    rx_ctx ctx;
    ctx.bytes = NULL;
    ctx.into = NULL;
    ctx.too_short = 0;
    cmp_conn_rx_t rx = {0};
    if (conn_recv(self, &ctx, &rx, UINT64_MAX) < 0)
        return NULL;
    cmp_py_state *st = state_of(op);
    if (ctx.bytes) {
        PyObject *obj = PyObject_CallOneArg(st->pickle_loads, ctx.bytes);
        Py_DECREF(ctx.bytes);
        return obj;
    }
    /* Unpickle straight from the stack buffer. */
    PyObject *mv = PyMemoryView_FromMemory(ctx.small, (Py_ssize_t)rx.len, PyBUF_READ);
    if (!mv)
        return NULL;
    PyObject *obj = PyObject_CallOneArg(st->pickle_loads, mv);
    Py_DECREF(mv);
    return obj;
}

/* ppoll()'s relative timeout: what is left until deadline (in rel), or NULL
 * for no deadline. */
static struct timespec *time_left(const struct timespec *deadline, struct timespec *rel)
{
    if (!deadline)
        return NULL;
    double left = cmp_deadline_remaining(deadline);
    rel->tv_sec = (time_t)left;
    rel->tv_nsec = (long)((left - (double)rel->tv_sec) * 1e9);
    return rel;
}

/* Waits for input on fd until deadline with the GIL released, running
 * signal handlers on EINTR. Returns 1 ready, 0 timed out, -1 exception. */
static int wait_fd(int fd, const struct timespec *deadline)
{
    for (;;) {
        int r;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (deadline && cmp_deadline_remaining(deadline) == 0) {
            r = poll(&p, 1, 0); /* no sleep: keep the GIL */
            r = r < 0 ? -errno : r == 0 ? -ETIMEDOUT : 0;
        } else {
            Py_BEGIN_ALLOW_THREADS
            struct timespec rel;
            r = ppoll(&p, 1, time_left(deadline, &rel), NULL);
            r = r < 0 ? -errno : r == 0 ? -ETIMEDOUT : 0;
            Py_END_ALLOW_THREADS
        }
        if (r == 0)
            return 1;
        if (r == -ETIMEDOUT)
            return 0;
        if (r == -EINTR) {
            if (PyErr_CheckSignals() < 0)
                return -1;
            continue;
        }
        cmp_py_raise(r);
        return -1;
    }
}

static PyObject *Conn_poll(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    PyObject *a[1] = {NULL};
    ConnObject *self = (ConnObject *)op;
    if (parse_args("poll", args, nargs, kwnames, names, 1, 0, a) < 0 || check_readable(self) < 0)
        return NULL;
    struct timespec storage;
    const struct timespec *deadline = &storage;
    if (!a[0])
        cmp_deadline_after(0, &storage);
    else if (cmp_py_deadline(a[0], &storage, &deadline) < 0)
        return NULL;
    int r = wait_fd(self->conn.fd, deadline);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *Conn_fileno(PyObject *op, PyObject *unused)
{
    (void)unused;
    ConnObject *self = (ConnObject *)op;
    if (check_open(self) < 0)
        return NULL;
    return PyLong_FromLong(self->conn.fd);
}

static PyObject *Conn_close(PyObject *op, PyObject *unused)
{
    (void)unused;
    cmp_conn_close(&((ConnObject *)op)->conn);
    Py_RETURN_NONE;
}

static PyObject *Conn_enter(PyObject *op, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(op);
}

static PyObject *Conn_exit(PyObject *op, PyObject *args)
{
    (void)args;
    return Conn_close(op, NULL);
}

static PyObject *Conn_reduce(PyObject *op, PyObject *unused)
{
    (void)unused;
    ConnObject *self = (ConnObject *)op;
    if (!cmp_py_spawning() || self->conn.fd < 0)
        return cmp_py_refuse_pickle(op, "Connection");
    /* for a spawned child: the fd itself crosses, at its number */
    if (cmp_py_spawn_pass_fd(self->conn.fd, 0) < 0)
        return NULL;
    cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(op));
    PyObject *module = st ? PyType_GetModule(st->Connection_type) : NULL;
    PyObject *rebuild =
        module ? PyObject_GetAttrString(module, "_rebuild_spawned_connection") : NULL;
    if (!rebuild)
        return NULL;
    return Py_BuildValue("(N(iOO))", rebuild, self->conn.fd,
                         (self->conn.flags & CMP_CONN_READABLE) ? Py_True : Py_False,
                         (self->conn.flags & CMP_CONN_WRITABLE) ? Py_True : Py_False);
}

/* _rebuild_spawned_connection(fd, readable, writable): the Connection a
 * spawned child gets over the fd its parent passed (the child owns it). */
static PyObject *cmp_rebuild_spawned_connection(PyObject *module, PyObject *const *args,
                                                Py_ssize_t nargs)
{
    int fd = nargs == 3 ? PyLong_AsLong(args[0]) : -1;
    if (fd < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "_rebuild_spawned_connection(fd, readable, writable)");
        return NULL;
    }
    int readable = PyObject_IsTrue(args[1]), writable = PyObject_IsTrue(args[2]);
    if (readable < 0 || writable < 0)
        return NULL;
    cmp_conn_t conn;
    cmp_conn_open(&conn, fd,
                  (readable ? CMP_CONN_READABLE : 0) | (writable ? CMP_CONN_WRITABLE : 0));
    return (PyObject *)conn_wrap(cmp_py_state_of_module(module)->Connection_type, &conn);
}

/* How our transports pickle a Connection (see reduction.c): a token for a
 * dup of its fd and its directions. Plain pickling still refuses
 * (__reduce__ above): outside our transports nobody redeems the token. */
static PyObject *cmp_reduce_connection(PyObject *module, PyObject *op)
{
    cmp_py_state *st = cmp_py_state_of_module(module);
    if (!PyObject_TypeCheck(op, st->Connection_type)) {
        PyErr_SetString(PyExc_TypeError, "_reduce_connection() needs a Connection");
        return NULL;
    }
    ConnObject *self = (ConnObject *)op;
    if (check_open(self) < 0)
        return NULL;
    PyObject *token = cmp_py_share_fd(self->conn.fd);
    if (!token)
        return NULL;
    PyObject *r = Py_BuildValue("(O(OOOO))", st->rebuild_connection, PyTuple_GET_ITEM(token, 0),
                                PyTuple_GET_ITEM(token, 1),
                                (self->conn.flags & CMP_CONN_READABLE) ? Py_True : Py_False,
                                (self->conn.flags & CMP_CONN_WRITABLE) ? Py_True : Py_False);
    Py_DECREF(token);
    return r;
}

static PyObject *cmp_rebuild_connection(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_rebuild_connection() takes 4 arguments");
        return NULL;
    }
    int readable = PyObject_IsTrue(args[2]), writable = PyObject_IsTrue(args[3]);
    if (readable < 0 || writable < 0)
        return NULL;
    if (!readable && !writable) {
        PyErr_SetString(PyExc_ValueError, "at least one of `readable` and `writable` must be True");
        return NULL;
    }
    int fd = cmp_py_redeem_fd(args[0], args[1], "Connection");
    if (fd < 0)
        return NULL;
    cmp_conn_t conn;
    cmp_conn_open(&conn, fd,
                  (readable ? CMP_CONN_READABLE : 0) | (writable ? CMP_CONN_WRITABLE : 0));
    return (PyObject *)conn_wrap(cmp_py_state_of_module(module)->Connection_type, &conn);
}

static PyObject *Conn_get_closed(PyObject *op, void *c)
{
    (void)c;
    return PyBool_FromLong(((ConnObject *)op)->conn.fd < 0);
}

static PyObject *Conn_get_readable(PyObject *op, void *c)
{
    (void)c;
    return PyBool_FromLong((((ConnObject *)op)->conn.flags & CMP_CONN_READABLE) != 0);
}

static PyObject *Conn_get_writable(PyObject *op, void *c)
{
    (void)c;
    return PyBool_FromLong((((ConnObject *)op)->conn.flags & CMP_CONN_WRITABLE) != 0);
}

#define FASTCALL_KW METH_FASTCALL | METH_KEYWORDS

static PyMethodDef Conn_methods[] = {
    {"send", Conn_send, METH_O, "Send a (picklable) object."},
    {"recv", Conn_recv, METH_NOARGS, "Receive a (picklable) object."},
    {"send_bytes", (PyCFunction)(void (*)(void))Conn_send_bytes, FASTCALL_KW,
     "send_bytes(buf, offset=0, size=None)\n--\n\nSend the bytes of a bytes-like object."},
    {"recv_bytes", (PyCFunction)(void (*)(void))Conn_recv_bytes, FASTCALL_KW,
     "recv_bytes(maxlength=None)\n--\n\nReceive one message as bytes."},
    {"recv_bytes_into", (PyCFunction)(void (*)(void))Conn_recv_bytes_into, FASTCALL_KW,
     "recv_bytes_into(buf, offset=0)\n--\n\nReceive one message into a writable buffer; "
     "returns its length."},
    {"poll", (PyCFunction)(void (*)(void))Conn_poll, FASTCALL_KW,
     "poll(timeout=0.0)\n--\n\nWhether there is input to read (waits up to timeout; None: "
     "forever)."},
    {"fileno", Conn_fileno, METH_NOARGS, "File descriptor of the connection."},
    {"close", Conn_close, METH_NOARGS, "Close the connection."},
    {"__enter__", Conn_enter, METH_NOARGS, NULL},
    {"__exit__", Conn_exit, METH_VARARGS, NULL},
    {"__reduce__", Conn_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* The stdlib's Connection keeps its fd in _handle, and code reads it there
 * or sets it to None to forget the fd without closing it (it belongs to
 * someone else); None once closed. */
static PyObject *Conn_get_handle(PyObject *op, void *c)
{
    (void)c;
    int fd = ((ConnObject *)op)->conn.fd;
    return fd < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(fd);
}

static int Conn_set_handle(PyObject *op, PyObject *value, void *c)
{
    (void)c;
    if (value != Py_None) {
        PyErr_SetString(PyExc_TypeError, "_handle can only be set to None (forget the fd)");
        return -1;
    }
    (void)cmp_conn_detach(&((ConnObject *)op)->conn);
    return 0;
}

static PyGetSetDef Conn_getset[] = {
    {"closed", Conn_get_closed, NULL, "True if the connection is closed", NULL},
    {"_handle", Conn_get_handle, Conn_set_handle,
     "The fd, None once closed; set to None, the fd is forgotten, not closed", NULL},
    {"readable", Conn_get_readable, NULL, "True if the connection is readable", NULL},
    {"writable", Conn_get_writable, NULL, "True if the connection is writable", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* Weak references to connections and listeners work, as to the stdlib's
 * (util.Finalize and weakref.finalize take one). */
static PyMemberDef Conn_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ConnObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Conn_slots[] = {
    {Py_tp_members, Conn_members},
    {Py_tp_new, Conn_new},
    {Py_tp_init, Conn_init},
    {Py_tp_dealloc, Conn_dealloc},
    {Py_tp_methods, Conn_methods},
    {Py_tp_getset, Conn_getset},
    {Py_tp_doc, "Connection(handle, readable=True, writable=True)\n--\n\n"
                "One end of a connection (multiprocessing.connection.Connection): whole\n"
                "messages over a socket or pipe, framed as the standard library frames them."},
    {0, NULL},
};

static PyType_Spec Conn_spec = {
    .name = "cmultiprocessing.connection.Connection",
    .basicsize = sizeof(ConnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Conn_slots,
};

/* ---- Pipe ---------------------------------------------------------------- */

static PyObject *cmp_Pipe(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    static const char *const names[] = {"duplex"};
    PyObject *a[1] = {NULL};
    if (parse_args("Pipe", args, nargs, kwnames, names, 1, 0, a) < 0)
        return NULL;
    int duplex = 1;
    if (a[0] && (duplex = PyObject_IsTrue(a[0])) < 0)
        return NULL;
    cmp_conn_t r, w;
    int rc = cmp_conn_pair(&r, &w, duplex);
    if (rc < 0)
        return cmp_py_raise(rc);
    PyTypeObject *tp = cmp_py_state_of_module(module)->Connection_type;
    ConnObject *c2 = NULL, *c1 = conn_wrap(tp, &r);
    if (!c1) {
        cmp_conn_close(&w);
        return NULL;
    }
    if (!(c2 = conn_wrap(tp, &w))) {
        Py_DECREF(c1);
        return NULL;
    }
    PyObject *pair = PyTuple_Pack(2, (PyObject *)c1, (PyObject *)c2);
    Py_DECREF(c1);
    Py_DECREF(c2);
    return pair;
}

/* ---- wait ---------------------------------------------------------------- */

static int object_fd(cmp_py_state *st, PyObject *o)
{
    if (Py_IS_TYPE(o, st->Connection_type) || PyObject_TypeCheck(o, st->Connection_type)) {
        ConnObject *c = (ConnObject *)o;
        if (check_open(c) < 0)
            return -1;
        return c->conn.fd;
    }
    PyObject *fdobj;
    if (PyLong_Check(o)) {
        fdobj = Py_NewRef(o);
    } else {
        fdobj = PyObject_CallMethod(o, "fileno", NULL);
        if (!fdobj) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError) ||
                PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "Invalid file object: %R", o);
            }
            return -1;
        }
    }
    long fd = PyLong_AsLong(fdobj);
    Py_DECREF(fdobj);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0) {
        PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %ld", fd);
        return -1;
    }
    if (fd > INT_MAX) { /* as the stdlib's selector: no C int */
        PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to C int");
        return -1;
    }
    return (int)fd;
}

static PyObject *cmp_wait(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    static const char *const names[] = {"object_list", "timeout"};
    PyObject *a[2] = {NULL, NULL};
    if (parse_args("wait", args, nargs, kwnames, names, 2, 1, a) < 0)
        return NULL;
    cmp_py_state *st = cmp_py_state_of_module(module);
    PyObject *seq = PySequence_Fast(a[0], "wait() expects an iterable of objects");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    struct pollfd stackfds[16], *fds = stackfds;
    PyObject *result = NULL;
    if (n > 16 && !(fds = PyMem_New(struct pollfd, (size_t)n))) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
        int fd = object_fd(st, o);
        if (fd < 0)
            goto done;
        /* an fd listed twice is an error, as for the stdlib's selector */
        for (Py_ssize_t j = 0; j < i; j++)
            if (fds[j].fd == fd) {
                PyObject *msg = PyUnicode_FromFormat("%R (FD %d) is already registered", o, fd);
                if (msg) {
                    PyErr_SetObject(PyExc_KeyError, msg);
                    Py_DECREF(msg);
                }
                goto done;
            }
        fds[i] = (struct pollfd){.fd = fd, .events = POLLIN};
    }
    struct timespec storage;
    const struct timespec *deadline;
    if (cmp_py_deadline(a[1], &storage, &deadline) < 0)
        goto done;
    int r;
    for (;;) {
        struct timespec rel, *relp = time_left(deadline, &rel);
        Py_BEGIN_ALLOW_THREADS
        r = ppoll(fds, (nfds_t)n, relp, NULL);
        if (r < 0)
            r = -errno;
        Py_END_ALLOW_THREADS
        if (r != -EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            goto done;
    }
    if (r < 0) {
        cmp_py_raise(r);
        goto done;
    }
    if (!(result = PyList_New(0)))
        goto done;
    for (Py_ssize_t i = 0; i < n && r > 0; i++)
        if (fds[i].revents && PyList_Append(result, PySequence_Fast_GET_ITEM(seq, i)) < 0) {
            Py_CLEAR(result);
            goto done;
        }
done:
    if (fds != stackfds)
        PyMem_Free(fds);
    Py_DECREF(seq);
    return result;
}

/* ---- addresses --------------------------------------------------------- */

/* 'AF_INET', 'AF_UNIX' or 'AF_PIPE' for an address (new reference). */
static PyObject *address_type(PyObject *address)
{
    if (PyTuple_CheckExact(address))
        return PyUnicode_FromString("AF_INET");
    if (PyUnicode_CheckExact(address)) {
        if (PyUnicode_GET_LENGTH(address) >= 2 && PyUnicode_READ_CHAR(address, 0) == '\\' &&
            PyUnicode_READ_CHAR(address, 1) == '\\')
            return PyUnicode_FromString("AF_PIPE");
        return PyUnicode_FromString("AF_UNIX");
    }
    if (PyBytes_Check(address) && PyBytes_GET_SIZE(address) > 0 &&
        PyBytes_AS_STRING(address)[0] == '\0')
        return PyUnicode_FromString("AF_UNIX");
    /* As the stdlib: a truthy object of another type is a TypeError. */
    int truthy = PyBytes_Check(address) ? 0 : PyObject_IsTrue(address);
    if (truthy < 0)
        return NULL;
    return PyErr_Format(truthy ? PyExc_TypeError : PyExc_ValueError,
                        "address type of %R unrecognized", address);
}

static PyObject *cmp_address_type(PyObject *module, PyObject *address)
{
    (void)module;
    return address_type(address);
}

/* The stdlib's _validate_family: only Windows' AF_PIPE is refused, with
 * ValueError. Returns 0, or -1 with the exception set. */
static int validate_family(PyObject *family)
{
    if (PyUnicode_Check(family) && PyUnicode_CompareWithASCIIString(family, "AF_PIPE") == 0) {
        PyErr_Format(PyExc_ValueError, "Family %S is not recognized.", family);
        return -1;
    }
    return 0;
}

/* 'AF_INET' or 'AF_UNIX' as a code, else 0. */
static int known_family(PyObject *family)
{
    if (PyUnicode_Check(family)) {
        if (PyUnicode_CompareWithASCIIString(family, "AF_INET") == 0)
            return AF_INET;
        if (PyUnicode_CompareWithASCIIString(family, "AF_UNIX") == 0)
            return AF_UNIX;
    }
    return 0;
}

/* The family of a listener that must make its own address, as a code:
 * AF_PIPE is refused as the stdlib's validation does, any other family it
 * cannot make an address for with its ValueError. -1 with the exception. */
static int family_code(PyObject *family)
{
    int f = known_family(family);
    if (f || validate_family(family) < 0)
        return f ? f : -1;
    PyErr_SetString(PyExc_ValueError, "unrecognized family");
    return -1;
}

/* The family of a listener bound to an address given: the stdlib
 * validates it, then asks the socket module for it (getattr(socket,
 * family)), whose errors are TypeError and AttributeError. */
static int socket_family(PyObject *family)
{
    int f = known_family(family);
    if (f || validate_family(family) < 0)
        return f ? f : -1;
    if (!PyUnicode_Check(family))
        PyErr_Format(PyExc_TypeError, "attribute name must be string, not '%.100s'",
                     Py_TYPE(family)->tp_name);
    else
        PyErr_Format(PyExc_AttributeError, "module 'socket' has no attribute '%U'", family);
    return -1;
}

/* sockaddr -> Python, as the socket module reports it. */
static PyObject *from_sockaddr(const struct sockaddr_storage *a, socklen_t len)
{
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)a;
        char host[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        return Py_BuildValue("(si)", host, ntohs(in->sin_port));
    }
    const struct sockaddr_un *un = (const struct sockaddr_un *)a;
    size_t off = offsetof(struct sockaddr_un, sun_path);
    if (len <= off)
        return PyUnicode_FromString("");
    size_t n = len - off;
    if (un->sun_path[0] == '\0')
        return PyBytes_FromStringAndSize(un->sun_path, (Py_ssize_t)n);
    return PyUnicode_DecodeFSDefaultAndSize(un->sun_path, (Py_ssize_t)strnlen(un->sun_path, n));
}

static PyObject *arbitrary_address(PyObject *family)
{
    int f = family_code(family);
    if (f < 0)
        return NULL;
    if (f == AF_INET)
        return Py_BuildValue("(si)", "localhost", 0);
    /* In the private 0700 directory of the process tree, as the stdlib's
     * util.get_temp_dir(): other users cannot connect at any umask. */
    struct sockaddr_storage sa;
    socklen_t salen;
    int r = cmp_listener_default_addr(&sa, &salen);
    if (r < 0)
        return cmp_py_raise(r);
    return from_sockaddr(&sa, salen);
}

static PyObject *cmp_arbitrary_address(PyObject *module, PyObject *family)
{
    (void)module;
    return arbitrary_address(family);
}

/* Python address -> sockaddr. Returns 0 or -1 with an exception. */
static int to_sockaddr(int family, PyObject *address, struct sockaddr_storage *out,
                       socklen_t *outlen)
{
    int r;
    if (family == AF_INET) {
        const char *host;
        int port;
        if (!PyTuple_Check(address) ||
            !PyArg_ParseTuple(address, "si:AF_INET address", &host, &port)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "AF_INET address must be a tuple (host, port)");
            return -1;
        }
        if (port < 0 || port > 65535) {
            PyErr_SetString(PyExc_OverflowError, "port must be 0-65535.");
            return -1;
        }
        Py_BEGIN_ALLOW_THREADS
        r = cmp_sockaddr_inet(out, outlen, host, (uint16_t)port);
        Py_END_ALLOW_THREADS
        if (r == -ENOENT) {
            PyErr_Format(PyExc_OSError, "cannot resolve host %s", host);
            return -1;
        }
    } else {
        PyObject *b;
        if (PyUnicode_Check(address)) {
            b = PyUnicode_EncodeFSDefault(address);
        } else if (PyBytes_Check(address)) {
            b = Py_NewRef(address);
        } else {
            PyErr_Format(PyExc_TypeError, "AF_UNIX address must be str or bytes, not %s",
                         Py_TYPE(address)->tp_name);
            return -1;
        }
        if (!b)
            return -1;
        r = cmp_sockaddr_unix(out, outlen, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
        Py_DECREF(b);
        if (r == -ENAMETOOLONG) {
            PyErr_SetString(PyExc_OSError, "AF_UNIX path too long");
            return -1;
        }
    }
    if (r < 0) {
        cmp_py_raise(r);
        return -1;
    }
    return 0;
}

int cmp_py_to_sockaddr(int family, PyObject *address, struct sockaddr_storage *out,
                       socklen_t *outlen)
{
    return to_sockaddr(family, address, out, outlen);
}

PyObject *cmp_py_from_sockaddr(const struct sockaddr_storage *a, socklen_t len)
{
    return from_sockaddr(a, len);
}

/* ---- the challenge handshake, on any connection object ---------------- */

static int check_authkey(PyObject *authkey)
{
    if (!PyBytes_Check(authkey)) {
        PyObject *tp = PyObject_Str((PyObject *)Py_TYPE(authkey));
        if (tp) {
            PyErr_Format(PyExc_ValueError, "Authkey must be bytes, not %U", tp);
            Py_DECREF(tp);
        }
        return -1;
    }
    return 0;
}

static int send_bytes_to(PyObject *conn, const void *buf, size_t len)
{
    PyObject *b = PyBytes_FromStringAndSize(buf, (Py_ssize_t)len);
    if (!b)
        return -1;
    PyObject *r = PyObject_CallMethod(conn, "send_bytes", "O", b);
    Py_DECREF(b);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *recv_small_from(PyObject *conn)
{
    PyObject *r = PyObject_CallMethod(conn, "recv_bytes", "i", CMP_AUTH_MSG_MAX);
    if (r && !PyBytes_Check(r)) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_TypeError, "recv_bytes() did not return bytes");
        return NULL;
    }
    return r;
}

/* AuthenticationError for a wrong (err -EACCES) or malformed answer. */
static void raise_bad_answer(cmp_py_state *st, int err, PyObject *answer)
{
    if (err == -EACCES)
        PyErr_SetString(st->AuthenticationError, "digest received was wrong");
    else
        PyErr_Format(st->AuthenticationError,
                     "unsupported message length, missing digest prefix, or unsupported "
                     "digest: message=%R",
                     answer);
}

/* AuthenticationError for a challenge message we cannot answer (bytes). */
static void raise_bad_challenge(cmp_py_state *st, PyObject *msg)
{
    const char *m = PyBytes_AS_STRING(msg);
    Py_ssize_t mlen = PyBytes_GET_SIZE(msg);
    if (mlen < 11 || memcmp(m, "#CHALLENGE#", 11) != 0)
        PyErr_Format(st->AuthenticationError, "Protocol error, expected challenge: message=%R",
                     msg);
    else if (mlen - 11 < 20)
        PyErr_Format(st->AuthenticationError, "challenge too short: %zd bytes", mlen - 11);
    else
        raise_bad_answer(st, -EPROTO, msg);
}

static int deliver_challenge(cmp_py_state *st, PyObject *conn, PyObject *authkey)
{
    if (check_authkey(authkey) < 0)
        return -1;
    unsigned char challenge[CMP_AUTH_MSG_MAX];
    int n = cmp_auth_challenge(challenge);
    if (n < 0) {
        cmp_py_raise(n);
        return -1;
    }
    if (send_bytes_to(conn, challenge, (size_t)n) < 0)
        return -1;
    PyObject *answer = recv_small_from(conn);
    if (!answer)
        return -1;
    int v = cmp_auth_verify(PyBytes_AS_STRING(authkey), (size_t)PyBytes_GET_SIZE(authkey),
                            challenge, (size_t)n, (unsigned char *)PyBytes_AS_STRING(answer),
                            (size_t)PyBytes_GET_SIZE(answer));
    if (v < 0) {
        if (send_bytes_to(conn, CMP_AUTH_FAILURE, strlen(CMP_AUTH_FAILURE)) == 0)
            raise_bad_answer(st, v, answer);
        Py_DECREF(answer);
        return -1;
    }
    Py_DECREF(answer);
    return send_bytes_to(conn, CMP_AUTH_WELCOME, strlen(CMP_AUTH_WELCOME));
}

static int answer_challenge(cmp_py_state *st, PyObject *conn, PyObject *authkey)
{
    if (check_authkey(authkey) < 0)
        return -1;
    PyObject *msg = recv_small_from(conn);
    if (!msg)
        return -1;
    unsigned char answer[CMP_AUTH_MSG_MAX];
    const char *m = PyBytes_AS_STRING(msg);
    Py_ssize_t mlen = PyBytes_GET_SIZE(msg);
    int n = cmp_auth_answer(PyBytes_AS_STRING(authkey), (size_t)PyBytes_GET_SIZE(authkey),
                            (const unsigned char *)m, (size_t)mlen, answer);
    if (n < 0) {
        raise_bad_challenge(st, msg);
        Py_DECREF(msg);
        return -1;
    }
    Py_DECREF(msg);
    if (send_bytes_to(conn, answer, (size_t)n) < 0)
        return -1;
    PyObject *reply = recv_small_from(conn);
    if (!reply)
        return -1;
    int ok = PyBytes_GET_SIZE(reply) == (Py_ssize_t)strlen(CMP_AUTH_WELCOME) &&
             memcmp(PyBytes_AS_STRING(reply), CMP_AUTH_WELCOME, strlen(CMP_AUTH_WELCOME)) == 0;
    Py_DECREF(reply);
    if (!ok) {
        PyErr_SetString(st->AuthenticationError, "digest sent was rejected");
        return -1;
    }
    return 0;
}

static PyObject *cmp_deliver_challenge(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                       PyObject *kwnames)
{
    static const char *const names[] = {"connection", "authkey", "digest_name"};
    PyObject *a[3] = {NULL, NULL, NULL};
    if (parse_args("deliver_challenge", args, nargs, kwnames, names, 3, 2, a) < 0)
        return NULL;
    if (a[2] && !(PyUnicode_Check(a[2]) && PyUnicode_CompareWithASCIIString(a[2], "sha256") == 0))
        return PyErr_Format(PyExc_ValueError, "unsupported digest_name %R (only 'sha256')", a[2]);
    if (deliver_challenge(cmp_py_state_of_module(module), a[0], a[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *cmp_answer_challenge(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                      PyObject *kwnames)
{
    static const char *const names[] = {"connection", "authkey"};
    PyObject *a[2] = {NULL, NULL};
    if (parse_args("answer_challenge", args, nargs, kwnames, names, 2, 2, a) < 0)
        return NULL;
    if (answer_challenge(cmp_py_state_of_module(module), a[0], a[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- Listener and Client --------------------------------------------------- */

/* family or address_type(address) or the default, as a code. */
static int resolve_family(PyObject *family, PyObject *address)
{
    int given = address && address != Py_None ? PyObject_IsTrue(address) : 0;
    if (given < 0)
        return -1;
    if (family && family != Py_None)
        return given ? socket_family(family) : family_code(family);
    if (given) {
        PyObject *t = address_type(address);
        if (!t)
            return -1;
        int f = family_code(t);
        Py_DECREF(t);
        return f;
    }
    return AF_UNIX;
}

static PyObject *Listener_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"address", "family", "backlog", "authkey", NULL};
    PyObject *address = Py_None, *family = Py_None, *authkey = Py_None;
    int backlog = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OOiO:Listener", kwlist, &address, &family,
                                     &backlog, &authkey))
        return NULL;
    int f = resolve_family(family, address);
    if (f < 0)
        return NULL;
    if (authkey != Py_None && !PyBytes_Check(authkey)) {
        PyErr_SetString(PyExc_TypeError, "authkey should be a byte string");
        return NULL;
    }
    PyObject *addr;
    if (address == Py_None || PyObject_IsTrue(address) != 1) {
        PyObject *name = PyUnicode_FromString(f == AF_INET ? "AF_INET" : "AF_UNIX");
        addr = name ? arbitrary_address(name) : NULL;
        Py_XDECREF(name);
    } else
        addr = Py_NewRef(address);
    if (!addr)
        return NULL;
    struct sockaddr_storage sa;
    socklen_t salen;
    int r = to_sockaddr(f, addr, &sa, &salen);
    Py_DECREF(addr);
    if (r < 0)
        return NULL;
    ListenerObject *self = (ListenerObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->l.fd = -1;
    r = cmp_listener_open(&self->l, (struct sockaddr *)&sa, salen, backlog);
    if (r < 0) {
        Py_DECREF(self);
        return cmp_py_raise(r);
    }
    if (authkey != Py_None)
        self->authkey = Py_NewRef(authkey);
    self->last_accepted = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static void Listener_dealloc(PyObject *op)
{
    ListenerObject *self = (ListenerObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    if (self->weakreflist)
        PyObject_ClearWeakRefs(op);
    cmp_listener_close(&self->l);
    Py_CLEAR(self->authkey);
    Py_CLEAR(self->last_accepted);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* connection.CONNECTION_TIMEOUT as it is now (a program or a test may set
 * it), or the default when the module does not define it. New reference. */
static PyObject *connection_timeout(void)
{
    PyObject *mod = PyImport_ImportModule("cmultiprocessing.connection");
    if (!mod)
        return NULL;
    PyObject *t = PyObject_GetAttrString(mod, "CONNECTION_TIMEOUT");
    if (!t && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        t = PyFloat_FromDouble(CMP_AUTH_TIMEOUT);
    }
    Py_DECREF(mod);
    return t;
}

/* The Listener's side of the handshake (deliver, then answer) on c, with
 * the GIL released and a deadline of connection.CONNECTION_TIMEOUT: a peer
 * that stays silent or trickles bytes costs accept() that long at most,
 * then it is closed (by the caller, dropping c) and accept() raises
 * AuthenticationError, as for a wrong key. The stdlib has no deadline. */
static int accept_handshake(cmp_py_state *st, ConnObject *c, PyObject *authkey)
{
    PyObject *timeout = connection_timeout();
    if (!timeout)
        return -1;
    struct timespec storage;
    const struct timespec *deadline;
    int r = cmp_py_deadline(timeout, &storage, &deadline);
    if (r < 0) {
        Py_DECREF(timeout);
        return -1;
    }
    cmp_auth_t a;
    cmp_auth_start(&a, CMP_AUTH_SERVER);
    const char *key = PyBytes_AS_STRING(authkey);
    size_t keylen = (size_t)PyBytes_GET_SIZE(authkey);
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        r = cmp_auth_step(&a, &c->conn, key, keylen, deadline);
        Py_END_ALLOW_THREADS
        if (r != -EINTR)
            break;
        if (PyErr_CheckSignals() < 0) {
            Py_DECREF(timeout);
            return -1;
        }
    }
    if (r == -ETIMEDOUT)
        PyErr_Format(st->AuthenticationError,
                     "the peer did not complete the authentication handshake within %R s "
                     "(connection.CONNECTION_TIMEOUT); its connection was closed",
                     timeout);
    Py_DECREF(timeout);
    if (r == 0 || r == -ETIMEDOUT)
        return r;
    if (a.io_error) {
        if (r == -EMSGSIZE)
            PyErr_SetString(PyExc_OSError, "bad message length");
        else
            raise_conn_error(r);
    } else if (r == -EACCES && a.phase == CMP_AUTH_ANSWERING) {
        PyErr_SetString(st->AuthenticationError, "digest sent was rejected");
    } else if (r == -EACCES || r == -EPROTO) {
        PyObject *msg = PyBytes_FromStringAndSize((const char *)a.in, (Py_ssize_t)a.in_len);
        if (!msg)
            return -1;
        if (a.phase == CMP_AUTH_DELIVERING)
            raise_bad_answer(st, r, msg);
        else
            raise_bad_challenge(st, msg);
        Py_DECREF(msg);
    } else {
        cmp_py_raise(r);
    }
    return -1;
}

static PyObject *Listener_accept(PyObject *op, PyObject *unused)
{
    (void)unused;
    ListenerObject *self = (ListenerObject *)op;
    cmp_py_state *st = state_of(op);
    cmp_conn_t conn;
    struct sockaddr_storage peer;
    socklen_t peerlen;
    int r;
    for (;;) {
        if (self->l.fd < 0) {
            PyErr_SetString(PyExc_OSError, "listener is closed");
            return NULL;
        }
        Py_BEGIN_ALLOW_THREADS
        r = cmp_listener_accept(&self->l, &conn, &peer, &peerlen, NULL);
        Py_END_ALLOW_THREADS
        if (r != -EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
    if (r < 0)
        return cmp_py_raise(r);
    PyObject *c = (PyObject *)conn_wrap(st->Connection_type, &conn);
    if (!c)
        return NULL;
    PyObject *last = from_sockaddr(&peer, peerlen);
    if (!last) {
        Py_DECREF(c);
        return NULL;
    }
    Py_SETREF(self->last_accepted, last);
    if (self->authkey && PyBytes_GET_SIZE(self->authkey) > 0 &&
        accept_handshake(st, (ConnObject *)c, self->authkey) < 0) {
        Py_DECREF(c);
        return NULL;
    }
    return c;
}

static PyObject *Listener_close(PyObject *op, PyObject *unused)
{
    (void)unused;
    cmp_listener_close(&((ListenerObject *)op)->l);
    Py_RETURN_NONE;
}

static PyObject *Listener_exit(PyObject *op, PyObject *args)
{
    (void)args;
    return Listener_close(op, NULL);
}

/* A listening socket means nothing in another process: TypeError, as the
 * stdlib's Listener raises for its socket. */
static PyObject *Listener_reduce(PyObject *op, PyObject *unused)
{
    (void)unused;
    return PyErr_Format(PyExc_TypeError, "cannot pickle '%.100s' object", Py_TYPE(op)->tp_name);
}

/* A closed Listener has no address and no last_accepted: AttributeError, as
 * the stdlib's (whose closed Listener drops the object holding both). */
static int Listener_check_open(ListenerObject *self, const char *attr)
{
    if (self->l.fd >= 0)
        return 0;
    PyErr_Format(PyExc_AttributeError, "closed Listener has no attribute '%s'", attr);
    return -1;
}

static PyObject *Listener_get_address(PyObject *op, void *c)
{
    (void)c;
    ListenerObject *self = (ListenerObject *)op;
    if (Listener_check_open(self, "address") < 0)
        return NULL;
    return from_sockaddr(&self->l.addr, self->l.addrlen);
}

static PyObject *Listener_get_last_accepted(PyObject *op, void *c)
{
    (void)c;
    ListenerObject *self = (ListenerObject *)op;
    if (Listener_check_open(self, "last_accepted") < 0)
        return NULL;
    return Py_NewRef(self->last_accepted);
}

static PyMethodDef Listener_methods[] = {
    {"accept", Listener_accept, METH_NOARGS,
     "Accept a connection (authenticating it when the listener has an authkey)."},
    {"close", Listener_close, METH_NOARGS, "Close the listening socket."},
    {"__enter__", Conn_enter, METH_NOARGS, NULL},
    {"__exit__", Listener_exit, METH_VARARGS, NULL},
    {"__reduce__", Listener_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Listener_getset[] = {
    {"address", Listener_get_address, NULL, "The address the listener is bound to", NULL},
    {"last_accepted", Listener_get_last_accepted, NULL,
     "Address of the last accepted connection, or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Listener_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ListenerObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Listener_slots[] = {
    {Py_tp_members, Listener_members},
    {Py_tp_new, Listener_new},
    {Py_tp_dealloc, Listener_dealloc},
    {Py_tp_methods, Listener_methods},
    {Py_tp_getset, Listener_getset},
    {Py_tp_doc, "Listener(address=None, family=None, backlog=1, authkey=None)\n--\n\n"
                "A bound, listening socket (multiprocessing.connection.Listener)."},
    {0, NULL},
};

static PyType_Spec Listener_spec = {
    .name = "cmultiprocessing.connection.Listener",
    .basicsize = sizeof(ListenerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Listener_slots,
};

static PyObject *cmp_Client(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    static const char *const names[] = {"address", "family", "authkey"};
    PyObject *a[3] = {NULL, NULL, NULL};
    if (parse_args("Client", args, nargs, kwnames, names, 3, 1, a) < 0)
        return NULL;
    cmp_py_state *st = cmp_py_state_of_module(module);
    /* As the stdlib: a family argument is only refused when it is
     * 'AF_PIPE' (Windows'); the socket's family is the address's, so
     * family='AF_FOO' connects (or fails to) like family=None. */
    int truthy = a[1] ? PyObject_IsTrue(a[1]) : 0;
    if (truthy < 0 || (truthy && validate_family(a[1]) < 0))
        return NULL;
    PyObject *t = address_type(a[0]);
    if (!t)
        return NULL;
    int f = family_code(t);
    Py_DECREF(t);
    if (f < 0)
        return NULL;
    PyObject *authkey = a[2] && a[2] != Py_None ? a[2] : NULL;
    if (authkey && !PyBytes_Check(authkey)) {
        PyErr_SetString(PyExc_TypeError, "authkey should be a byte string");
        return NULL;
    }
    struct sockaddr_storage sa;
    socklen_t salen;
    if (to_sockaddr(f, a[0], &sa, &salen) < 0)
        return NULL;
    cmp_conn_t conn;
    int r;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        r = cmp_client_connect(&conn, (struct sockaddr *)&sa, salen, NULL);
        Py_END_ALLOW_THREADS
        if (r != -EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
    if (r < 0)
        return cmp_py_raise(r);
    PyObject *c = (PyObject *)conn_wrap(st->Connection_type, &conn);
    if (c && authkey &&
        (answer_challenge(st, c, authkey) < 0 || deliver_challenge(st, c, authkey) < 0))
        Py_CLEAR(c);
    return c;
}

/* ---- module ---------------------------------------------------------------- */

/* multiprocessing.allow_connection_pickling(): in the stdlib its only effect
 * is importing the connection module (which registers the reducers spawn
 * needs); the same here, so a program calling it finds the same state. */
static PyObject *fn_allow_connection_pickling(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    PyObject *connection = PyImport_ImportModule("cmultiprocessing.connection");
    if (!connection)
        return NULL;
    Py_DECREF(connection);
    Py_RETURN_NONE;
}

static PyMethodDef connection_functions[] = {
    {"allow_connection_pickling", fn_allow_connection_pickling, METH_NOARGS,
     "allow_connection_pickling()\n--\n\nLoad cmultiprocessing.connection (as the stdlib "
     "does)."},
    {"Pipe", (PyCFunction)(void (*)(void))cmp_Pipe, FASTCALL_KW,
     "Pipe(duplex=True)\n--\n\nReturns two Connection objects joined by a pipe (a socketpair "
     "when duplex; otherwise the first end only reads and the second only writes)."},
    {"_wait", (PyCFunction)(void (*)(void))cmp_wait, FASTCALL_KW,
     "wait(object_list, timeout=None)\n--\n\nWait until objects of object_list are ready; "
     "returns those that are."},
    {"_Client", (PyCFunction)(void (*)(void))cmp_Client, FASTCALL_KW,
     "Client(address, family=None, authkey=None)\n--\n\nConnect to a Listener."},
    {"_deliver_challenge", (PyCFunction)(void (*)(void))cmp_deliver_challenge, FASTCALL_KW,
     "deliver_challenge(connection, authkey, digest_name='sha256')\n--\n\n"},
    {"_answer_challenge", (PyCFunction)(void (*)(void))cmp_answer_challenge, FASTCALL_KW,
     "answer_challenge(connection, authkey)\n--\n\n"},
    {"_reduce_connection", cmp_reduce_connection, METH_O,
     "_reduce_connection(conn)\n--\n\nHow queues and Connection.send pickle a Connection: a "
     "token for a dup of its fd, redeemed by _rebuild_connection in the receiver."},
    {"_rebuild_connection", (PyCFunction)(void (*)(void))cmp_rebuild_connection, METH_FASTCALL,
     "_rebuild_connection(addr, key, readable, writable)\n--\n\nThe Connection of a token."},
    {"_rebuild_spawned_connection", (PyCFunction)(void (*)(void))cmp_rebuild_spawned_connection,
     METH_FASTCALL,
     "_rebuild_spawned_connection(fd, readable, writable)\n--\n\nA spawned child's Connection."},
    {"_arbitrary_address", cmp_arbitrary_address, METH_O,
     "arbitrary_address(family)\n--\n\nAn unused address for the family."},
    {"_address_type", cmp_address_type, METH_O,
     "address_type(address)\n--\n\n'AF_INET', 'AF_UNIX' or 'AF_PIPE'."},
    {NULL, NULL, 0, NULL},
};

int cmp_py_connection_init(PyObject *module, cmp_py_state *st)
{
    /* send() pickles with reduction.c's encoder, recv() unpickles with
     * serialize.c's st->pickle_loads (the C pickle module, default
     * protocol, as the stdlib's ForkingPickler). */
    st->Connection_type = (PyTypeObject *)cmp_py_type_from_spec(module, &Conn_spec, NULL);
    if (!st->Connection_type ||
        PyModule_AddObjectRef(module, "_Connection", (PyObject *)st->Connection_type) < 0)
        return -1;
    st->Listener_type = (PyTypeObject *)cmp_py_type_from_spec(module, &Listener_spec, NULL);
    if (!st->Listener_type ||
        PyModule_AddObjectRef(module, "_Listener", (PyObject *)st->Listener_type) < 0)
        return -1;
    return PyModule_AddFunctions(module, connection_functions);
}
