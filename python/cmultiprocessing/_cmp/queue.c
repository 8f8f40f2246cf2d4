/*
 * Queue, JoinableQueue and SimpleQueue: multiprocessing's, on a cmp_queue_t
 * (a message ring in shared memory) allocated when the queue is made and
 * inherited by forked children.
 *
 * put() serializes in the caller's thread (serialize.c) and copies the
 * message into shared memory before it returns: there is no feeder thread,
 * so an unpicklable object raises from put(), and a producer that exits
 * right after put() loses nothing and never waits at exit. get() copies a
 * message out (a large one straight into its final object) and decodes it
 * after the ring is released. A put or get that finds room or data takes
 * no syscall and keeps the GIL; only waiting releases it.
 *
 * Subclasses (concurrent.futures' _SafeQueue) have __init__ signatures of
 * their own: for them __new__ ignores its arguments and makes a default
 * queue, which __init__(maxsize, *, ctx) remakes if maxsize differs. An
 * object that cannot be encoded goes to _on_queue_feeder_error(e, obj) when
 * a subclass overrides it (the stdlib's feeder thread calls it there), and
 * put() then returns; ours re-raises, so put() raises as before.
 */
#include "queue.h"
#include "structmember.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

/* Ring size: small enough to stay in cache while 1 MiB messages go
 * through it (8 MiB and more made them 2x slower here); a backlog beyond it
 * goes to the queue's spill file. Pages of the memfd are committed only as
 * the ring reaches them. */
#define QUEUE_RING_BYTES ((size_t)4 << 20)
/* Messages from this size are copied in with the GIL released. */
#define PUT_RELEASE_GIL ((size_t)256 << 10)
/* Stdlib's SEM_VALUE_MAX: the maxsize of an "unbounded" queue. */
#define STDLIB_SEM_VALUE_MAX 2147483647LL

/* ---- arguments -------------------------------------------------------- */

/* Parses positional-or-keyword arguments named names[0..n) into out[]
 * (NULL when absent). Returns 0, or -1 with TypeError. */
static int parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *const *names, int n, PyObject **out)
{
    for (int i = 0; i < n; i++)
        out[i] = NULL;
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fname, n,
                     nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    if (!kwnames)
        return 0;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int i;
        for (i = 0; i < n; i++)
            if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0)
                break;
        if (i == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                         key);
            return -1;
        }
        if (out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    return 0;
}

/* put()'s (block, timeout): the stdlib hands both to a semaphore's
 * acquire(), which checks their types even when the queue has room. */
static int put_block_arg(PyObject *block, PyObject *timeout)
{
    int b = cmp_py_block_arg(block, 1);
    if (b < 0 || cmp_py_check_timeout(timeout) < 0)
        return -1;
    return b;
}

/* get()'s: the stdlib's get(True, None) takes a lock without looking at
 * them; any other call hands both to an acquire() as put() does. */
static int get_block_arg(PyObject *block, PyObject *timeout)
{
    if (timeout == NULL || timeout == Py_None) {
        int truth = block ? PyObject_IsTrue(block) : 1;
        if (truth != 0)
            return truth;
    }
    return put_block_arg(block, timeout);
}

static PyObject *closed_error(QueueObject *self)
{
    if (self->simple) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return NULL;
    }
    PyErr_Format(PyExc_ValueError, "Queue %R is closed", (PyObject *)self);
    return NULL;
}

/* ---- put ---------------------------------------------------------------- */

/* iovecs for the pieces of n frames, in storage when it is large enough. */
static struct iovec *frames_iov(cmp_py_frame *frames, size_t n, struct iovec *storage, size_t cap,
                                unsigned *counts)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += (size_t)frames[i].npieces;
    struct iovec *iov = total <= cap ? storage : PyMem_Malloc(total * sizeof *iov);
    if (!iov) {
        PyErr_NoMemory();
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (counts)
            counts[i] = (unsigned)frames[i].npieces;
        for (int j = 0; j < frames[i].npieces; j++) {
            iov[k].iov_base = frames[i].pieces[j].ptr;
            iov[k].iov_len = frames[i].pieces[j].len;
            k++;
        }
    }
    return iov;
}

/* Puts nmsg encoded messages. Returns how many were put (nmsg unless the
 * deadline passed: fewer, maybe 0), or -1 with an exception. */
static long put_frames(QueueObject *self, cmp_py_frame *frames, size_t nmsg, int block,
                       const struct timespec *deadline)
{
    struct iovec storage[16];
    unsigned counts_storage[16];
    unsigned *counts = nmsg <= 16 ? counts_storage : PyMem_Malloc(nmsg * sizeof *counts);
    if (!counts) {
        PyErr_NoMemory();
        return -1;
    }
    struct iovec *iov = frames_iov(frames, nmsg, storage, 16, counts);
    long done = -1;
    if (!iov)
        goto out;
    size_t bytes = 0;
    for (size_t i = 0; i < nmsg; i++)
        bytes += frames[i].size;
    size_t put = 0, piece = 0;
    long rc = -EAGAIN;
    /* fast path: room now, GIL held, no syscall */
    if (bytes < PUT_RELEASE_GIL || !block) {
        rc = cmp_queue_put_many(self->q, iov, counts, nmsg, CMP_NOWAIT);
        if (rc > 0) {
            for (size_t i = 0; i < (size_t)rc; i++)
                piece += counts[i];
            put = (size_t)rc;
        }
    }
    while (put < nmsg && block) {
        /* only maxsize makes a put wait (the spill takes what the ring
         * cannot), and a wait leaves nothing half put: wait in slices so
         * that signals are handled */
        struct timespec storage_slice;
        const struct timespec *until = cmp_py_slice(deadline, &storage_slice);
        Py_BEGIN_ALLOW_THREADS
        rc = cmp_queue_put_many(self->q, iov + piece, counts + put, nmsg - put, until);
        Py_END_ALLOW_THREADS
        if (rc > 0) {
            for (size_t i = put; i < put + (size_t)rc; i++)
                piece += counts[i];
            put += (size_t)rc;
            continue;
        }
        if (rc == -EINTR || (rc == -ETIMEDOUT && until != deadline)) {
            if (PyErr_CheckSignals() < 0)
                goto out;
            continue;
        }
        break;
    }
    if (put < nmsg && rc != -ETIMEDOUT && rc != -EAGAIN && rc < 0) {
        cmp_py_raise((int)rc);
        goto out;
    }
    done = (long)put;
    if (put)
        cmp_py_queue_notify_put(self);
out:
    if (iov && iov != storage)
        PyMem_Free(iov);
    if (counts != counts_storage)
        PyMem_Free(counts);
    return done;
}

static PyObject *raise_full(QueueObject *self)
{
    PyErr_SetNone(self->st->Full);
    return NULL;
}

/* An object put() could not encode (the exception is set): a subclass that
 * overrides _on_queue_feeder_error(e, obj) gets it there, as from the
 * stdlib's feeder thread, and put() returns None; otherwise put() raises. */
static PyObject *feeder_error(QueueObject *self, PyObject *obj)
{
    if (Py_IS_TYPE(self, self->st->Queue_type) || Py_IS_TYPE(self, self->st->JoinableQueue_type) ||
        self->simple)
        return NULL;
    PyObject *et, *exc, *tb;
    PyErr_Fetch(&et, &exc, &tb);
    PyErr_NormalizeException(&et, &exc, &tb);
    if (tb && exc)
        PyException_SetTraceback(exc, tb);
    PyObject *hook = PyObject_GetAttrString((PyObject *)Py_TYPE(self), "_on_queue_feeder_error");
    PyObject *ours =
        hook ? PyObject_GetAttrString((PyObject *)self->st->Queue_type, "_on_queue_feeder_error")
             : NULL;
    if (!ours || hook == ours || !exc) {
        Py_XDECREF(hook);
        Py_XDECREF(ours);
        if (PyErr_Occurred()) { /* the lookup's error */
            Py_XDECREF(et);
            Py_XDECREF(exc);
            Py_XDECREF(tb);
        } else {
            PyErr_Restore(et, exc, tb);
        }
        return NULL;
    }
    Py_DECREF(ours);
    Py_DECREF(hook);
    Py_XDECREF(et);
    Py_XDECREF(tb);
    PyObject *r = PyObject_CallMethod((PyObject *)self, "_on_queue_feeder_error", "OO", exc, obj);
    Py_DECREF(exc);
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* The stdlib's default hook prints the traceback, as its feeder thread has
 * nobody to raise to; ours is called from put() only through a subclass's
 * super(): it raises e there. */
static PyObject *Queue_on_feeder_error(PyObject *unused, PyObject *const *args, Py_ssize_t nargs)
{
    (void)unused;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "_on_queue_feeder_error() takes 2 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    if (!PyExceptionInstance_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "_on_queue_feeder_error(): e must be an exception");
        return NULL;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(args[0]), args[0]);
    return NULL;
}

static PyObject *do_put(QueueObject *self, PyObject *obj, PyObject *block_o, PyObject *timeout)
{
    if (self->closed)
        return closed_error(self);
    int block = put_block_arg(block_o, timeout);
    if (block < 0)
        return NULL;
    /* the stdlib's put() only fails on a NaN timeout when it has to wait
     * for room: try without waiting, and refuse NaN only if full */
    int nan_timeout =
        block && timeout && PyFloat_Check(timeout) && isnan(PyFloat_AS_DOUBLE(timeout));
    if (nan_timeout)
        block = 0;
    struct timespec storage;
    const struct timespec *deadline = NULL;
    if (block && cmp_py_deadline(timeout, &storage, &deadline) < 0)
        return NULL;
    cmp_py_frame f;
    cmp_py_frame_init(&f);
    if (cmp_py_encode(self->st, obj, &f) < 0)
        return feeder_error(self, obj);
    long n = put_frames(self, &f, 1, block, deadline);
    cmp_py_frame_clear(&f);
    if (n < 0)
        return NULL;
    if (n == 0 && nan_timeout)
        return cmp_py_deadline(timeout, &storage, &deadline) < 0 ? NULL : raise_full(self);
    if (n == 0)
        return raise_full(self);
    Py_RETURN_NONE;
}

static PyObject *Queue_put(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"obj", "block", "timeout"};
    PyObject *a[3];
    if (nargs == 1 && !kwnames)
        return do_put((QueueObject *)op, args[0], NULL, NULL);
    if (parse_args("put", args, nargs, kwnames, names, 3, a) < 0)
        return NULL;
    if (!a[0]) {
        PyErr_SetString(PyExc_TypeError, "put() missing required argument 'obj'");
        return NULL;
    }
    return do_put((QueueObject *)op, a[0], a[1], a[2]);
}

static PyObject *Queue_put_nowait(PyObject *op, PyObject *obj)
{
    return do_put((QueueObject *)op, obj, Py_False, NULL);
}

static PyObject *Queue_put_many(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    static const char *const names[] = {"items", "block", "timeout"};
    QueueObject *self = (QueueObject *)op;
    PyObject *a[3];
    if (parse_args("put_many", args, nargs, kwnames, names, 3, a) < 0)
        return NULL;
    if (!a[0]) {
        PyErr_SetString(PyExc_TypeError, "put_many() missing required argument 'items'");
        return NULL;
    }
    if (self->closed)
        return closed_error(self);
    int block = put_block_arg(a[1], a[2]);
    if (block < 0)
        return NULL;
    struct timespec storage;
    const struct timespec *deadline = NULL;
    if (block && cmp_py_deadline(a[2], &storage, &deadline) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(a[0], "put_many() argument must be iterable");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *result = NULL;
    cmp_py_frame *frames = PyMem_Malloc((n ? n : 1) * sizeof *frames);
    Py_ssize_t encoded = 0;
    if (!frames) {
        PyErr_NoMemory();
        goto out;
    }
    /* everything is serialized before anything is put: an unpicklable item
     * raises with nothing put */
    for (; encoded < n; encoded++) {
        cmp_py_frame_init(&frames[encoded]);
        if (cmp_py_encode(self->st, PySequence_Fast_GET_ITEM(seq, encoded), &frames[encoded]) < 0)
            goto out;
    }
    long put = n ? put_frames(self, frames, (size_t)n, block, deadline) : 0;
    if (put < 0)
        goto out;
    if (put < n) {
        PyErr_Format(self->st->Full, "put_many(): %ld of %zd items put before the queue was full",
                     put, n);
        goto out;
    }
    result = Py_NewRef(Py_None);
out:
    for (Py_ssize_t i = 0; i < encoded; i++)
        cmp_py_frame_clear(&frames[i]);
    PyMem_Free(frames);
    Py_DECREF(seq);
    return result;
}

/* ---- get ---------------------------------------------------------------- */

/* Where the ring copies each message: small ones into a local arena (no
 * GIL needed), large ones into their final object. */
typedef struct {
    size_t len;
    size_t off;      /* in the arena, when owner is NULL */
    PyObject *owner; /* from cmp_py_msg_new */
} slot;

typedef struct {
    PyThreadState *tstate; /* set while the GIL is released */
    slot *slots;
    size_t nslots, cap_slots;
    char *arena;
    size_t arena_len, arena_cap;
    slot inline_slots[1];
    char inline_arena[1024];
} getctx;

static void getctx_init(getctx *c)
{
    c->tstate = NULL;
    c->slots = c->inline_slots;
    c->nslots = 0;
    c->cap_slots = 1;
    c->arena = c->inline_arena;
    c->arena_len = 0;
    c->arena_cap = sizeof c->inline_arena;
}

/* Drops the slots from keep on (messages not delivered). */
static void getctx_truncate(getctx *c, size_t keep)
{
    for (size_t i = keep; i < c->nslots; i++)
        Py_CLEAR(c->slots[i].owner);
    c->nslots = keep;
    if (keep == 0)
        c->arena_len = 0;
}

static void getctx_free(getctx *c)
{
    getctx_truncate(c, 0);
    if (c->slots != c->inline_slots)
        PyMem_RawFree(c->slots);
    if (c->arena != c->inline_arena)
        PyMem_RawFree(c->arena);
}

/* Called by the ring under its consumer lock, with or without the GIL. */
static void *get_alloc(void *arg, size_t len)
{
    getctx *c = arg;
    if (c->nslots == c->cap_slots) {
        size_t cap = c->cap_slots * 4;
        slot *s = c->slots == c->inline_slots ? PyMem_RawMalloc(cap * sizeof *s)
                                              : PyMem_RawRealloc(c->slots, cap * sizeof *s);
        if (!s)
            return NULL;
        if (c->slots == c->inline_slots)
            memcpy(s, c->slots, c->nslots * sizeof *s);
        c->slots = s;
        c->cap_slots = cap;
    }
    slot *s = &c->slots[c->nslots];
    s->len = len;
    s->owner = NULL;
    if (len >= CMP_PY_BIG) {
        char *data = NULL;
        if (c->tstate)
            PyEval_RestoreThread(c->tstate);
        s->owner = cmp_py_msg_new(len, &data);
        if (c->tstate)
            c->tstate = PyEval_SaveThread();
        if (!s->owner)
            return NULL; /* MemoryError stays set for the caller */
        c->nslots++;
        return data;
    }
    size_t off = (c->arena_len + 7) & ~(size_t)7;
    if (off + len > c->arena_cap) {
        size_t cap = c->arena_cap * 2;
        while (cap < off + len)
            cap *= 2;
        char *a =
            c->arena == c->inline_arena ? PyMem_RawMalloc(cap) : PyMem_RawRealloc(c->arena, cap);
        if (!a)
            return NULL;
        if (c->arena == c->inline_arena)
            memcpy(a, c->arena, c->arena_len);
        c->arena = a;
        c->arena_cap = cap;
    }
    s->off = off;
    c->arena_len = off + len;
    c->nslots++;
    return c->arena + off;
}

/* Gets up to max messages into c. Returns the count (>= 1), 0 when none
 * came before the deadline (or at once, without block), -1 with an
 * exception. */
static long get_messages(QueueObject *self, getctx *c, size_t max, int block,
                         const struct timespec *deadline)
{
    long rc = cmp_queue_get_many(self->q, get_alloc, c, max, CMP_NOWAIT);
    for (;;) {
        if (rc > 0) {
            getctx_truncate(c, (size_t)rc);
            cmp_py_queue_notify_get(self);
            return rc;
        }
        getctx_truncate(c, 0);
        if (rc == -ENOBUFS) {
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            return -1;
        }
        if (rc == -ECONNABORTED) { /* a dead producer's partial message: dropped */
            rc = -EAGAIN;
            if (!block) {
                rc = cmp_queue_get_many(self->q, get_alloc, c, max, CMP_NOWAIT);
                continue;
            }
        }
        if (rc == -EINTR) {
            if (PyErr_CheckSignals() < 0)
                return -1;
        } else if (rc == -ETIMEDOUT || rc == -EAGAIN) {
            if (!block || (rc == -ETIMEDOUT && cmp_deadline_remaining(deadline) <= 0))
                return 0;
            if (PyErr_CheckSignals() < 0)
                return -1;
        } else if (rc < 0) {
            cmp_py_raise((int)rc);
            return -1;
        }
        struct timespec storage;
        const struct timespec *until = cmp_py_slice(deadline, &storage);
        c->tstate = PyEval_SaveThread();
        rc = cmp_queue_get_many(self->q, get_alloc, c, max, until);
        PyEval_RestoreThread(c->tstate);
        c->tstate = NULL;
    }
}

static PyObject *decode_slot(QueueObject *self, getctx *c, size_t i)
{
    slot *s = &c->slots[i];
    if (s->owner) {
        PyObject *owner = s->owner;
        s->owner = NULL;
        return cmp_py_decode_owned(self->st, owner, s->len);
    }
    return cmp_py_decode(self->st, c->arena + s->off, s->len);
}

PyObject *cmp_py_queue_get(QueueObject *self, PyObject *block_o, PyObject *timeout)
{
    if (self->closed)
        return closed_error(self);
    int block = get_block_arg(block_o, timeout);
    if (block < 0)
        return NULL;
    struct timespec storage;
    const struct timespec *deadline = NULL;
    if (block && cmp_py_deadline(timeout, &storage, &deadline) < 0)
        return NULL;
    getctx c;
    getctx_init(&c);
    PyObject *r = NULL;
    long n = get_messages(self, &c, 1, block, deadline);
    if (n == 0)
        PyErr_SetNone(self->st->Empty);
    else if (n > 0)
        r = decode_slot(self, &c, 0);
    getctx_free(&c);
    return r;
}

static PyObject *Queue_get(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"block", "timeout"};
    PyObject *a[2];
    if (nargs == 0 && !kwnames)
        return cmp_py_queue_get((QueueObject *)op, NULL, NULL);
    if (parse_args("get", args, nargs, kwnames, names, 2, a) < 0)
        return NULL;
    return cmp_py_queue_get((QueueObject *)op, a[0], a[1]);
}

static PyObject *Queue_get_nowait(PyObject *op, PyObject *unused)
{
    (void)unused;
    return cmp_py_queue_get((QueueObject *)op, Py_False, NULL);
}

static PyObject *Queue_get_many(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    static const char *const names[] = {"max_items", "block", "timeout"};
    QueueObject *self = (QueueObject *)op;
    PyObject *a[3];
    if (parse_args("get_many", args, nargs, kwnames, names, 3, a) < 0)
        return NULL;
    if (self->closed)
        return closed_error(self);
    Py_ssize_t max = 1000;
    if (a[0] && a[0] != Py_None) {
        max = PyNumber_AsSsize_t(a[0], PyExc_OverflowError);
        if (max == -1 && PyErr_Occurred())
            return NULL;
        if (max < 1) {
            PyErr_SetString(PyExc_ValueError, "max_items must be at least 1");
            return NULL;
        }
    }
    int block = get_block_arg(a[1], a[2]);
    if (block < 0)
        return NULL;
    struct timespec storage;
    const struct timespec *deadline = NULL;
    if (block && cmp_py_deadline(a[2], &storage, &deadline) < 0)
        return NULL;
    getctx c;
    getctx_init(&c);
    PyObject *list = NULL;
    long n = get_messages(self, &c, (size_t)max, block, deadline);
    if (n == 0)
        PyErr_SetNone(self->st->Empty);
    if (n <= 0)
        goto out;
    /* the messages are out of the queue: decode them all; the first error
     * is raised and the rest are dropped, as a failing get() drops its own */
    list = PyList_New(n);
    for (long i = 0; list && i < n; i++) {
        PyObject *v = decode_slot(self, &c, (size_t)i);
        if (!v)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, v);
    }
out:
    getctx_free(&c);
    return list;
}

/* ---- the rest of the Queue API ------------------------------------------ */

static PyObject *Queue_qsize(PyObject *op, PyObject *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLongLong(cmp_queue_qsize(((QueueObject *)op)->q));
}

static PyObject *Queue_empty(PyObject *op, PyObject *unused)
{
    (void)unused;
    QueueObject *self = (QueueObject *)op;
    if (self->closed) {
        /* the stdlib polls its closed reader */
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return NULL;
    }
    return PyBool_FromLong(cmp_queue_empty(self->q));
}

static PyObject *Queue_full(PyObject *op, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(cmp_queue_full(((QueueObject *)op)->q));
}

static PyObject *Queue_close(PyObject *op, PyObject *unused)
{
    (void)unused;
    /* this process's handle only, as in the stdlib: the others go on */
    ((QueueObject *)op)->closed = 1;
    Py_RETURN_NONE;
}

static PyObject *Queue_join_thread(PyObject *op, PyObject *unused)
{
    (void)unused;
    QueueObject *self = (QueueObject *)op;
    if (!self->closed) {
        PyErr_Format(PyExc_AssertionError, "Queue %R not closed", op);
        return NULL;
    }
    /* no feeder thread: everything put is already in shared memory */
    Py_RETURN_NONE;
}

static PyObject *Queue_cancel_join_thread(PyObject *op, PyObject *unused)
{
    (void)unused;
    ((QueueObject *)op)->joincancelled = 1;
    Py_RETURN_NONE;
}

static PyObject *Queue_task_done(PyObject *op, PyObject *unused)
{
    (void)unused;
    if (cmp_queue_task_done(((QueueObject *)op)->q) < 0) {
        PyErr_SetString(PyExc_ValueError, "task_done() called too many times");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Queue_join(PyObject *op, PyObject *unused)
{
    (void)unused;
    QueueObject *self = (QueueObject *)op;
    int rc = cmp_queue_join(self->q, CMP_NOWAIT);
    while (rc == -EAGAIN || rc == -EINTR || rc == -ETIMEDOUT) {
        if (PyErr_CheckSignals() < 0)
            return NULL;
        struct timespec storage;
        const struct timespec *until = cmp_py_slice(NULL, &storage);
        Py_BEGIN_ALLOW_THREADS
        rc = cmp_queue_join(self->q, until);
        Py_END_ALLOW_THREADS
    }
    if (rc < 0)
        return cmp_py_raise(rc);
    Py_RETURN_NONE;
}

static PyObject *Queue_maxsize(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong(((QueueObject *)op)->maxsize);
}

static PyObject *Queue_reader(PyObject *op, void *closure)
{
    (void)closure;
    return cmp_py_queue_reader((QueueObject *)op);
}

static PyObject *Queue_writer(PyObject *op, void *closure)
{
    (void)closure;
    return cmp_py_queue_writer((QueueObject *)op);
}

static PyObject *Queue_reduce(PyObject *op, PyObject *unused)
{
    (void)unused;
    QueueObject *self = (QueueObject *)op;
    if (cmp_py_spawning()) {
        /* the spill file is named by its number in the ring's header: the
         * child must have it at the same one, and owns that copy */
        if (self->spill_fd >= 0 && cmp_py_spawn_pass_fd(self->spill_fd, 0) < 0)
            return NULL;
        /* a SimpleQueue's eventfd too, at its number, so that the child's
         * puts keep it readable for the parent's connection.wait() */
        if (self->notify_fd >= 0 && cmp_py_spawn_pass_fd(self->notify_fd, 0) < 0)
            return NULL;
        long long notify_off =
            self->notify_armed ? (long long)((char *)self->notify_armed - (char *)self->q) : -1;
        PyObject *extra = Py_BuildValue("(iLiiL)", self->spill_fd, self->maxsize, (int)self->simple,
                                        self->notify_fd, notify_off);
        PyObject *r = extra ? cmp_py_shared_reduce(op, NULL, extra) : NULL;
        Py_XDECREF(extra);
        return r;
    }
    PyObject *name = PyObject_GetAttrString((PyObject *)Py_TYPE(op), "__name__");
    if (!name)
        return NULL;
    PyErr_Format(PyExc_RuntimeError,
                 "%U objects should only be shared between processes through inheritance", name);
    Py_DECREF(name);
    return NULL;
}

int cmp_py_queue_adopt(PyObject *op, void *mem, PyObject *extra)
{
    QueueObject *self = (QueueObject *)op;
    int spill_fd, simple, notify_fd;
    long long maxsize, notify_off;
    self->spill_fd = self->notify_fd = -1;
    self->notify_armed = NULL;
    if (!PyArg_ParseTuple(extra, "iLiiL:_rebuild_shared", &spill_fd, &maxsize, &simple, &notify_fd,
                          &notify_off))
        return -1;
    self->q = mem;
    self->st = cmp_py_state_of_type(Py_TYPE(op));
    self->maxsize = maxsize;
    self->simple = (char)simple;
    if (spill_fd != cmp_ring_spill_fd(cmp_queue_ring(self->q))) {
        PyErr_SetString(PyExc_ValueError, "queue's spill file did not arrive at its number");
        return -1;
    }
    self->spill_fd = spill_fd;
    if (notify_fd >= 0 && notify_off > 0) {
        self->notify_fd = notify_fd;
        self->notify_armed = (uint32_t *)((char *)self->q + notify_off);
    }
    return 0;
}

/* ---- construction --------------------------------------------------------- */

/* Where the SimpleQueue's notify flag sits in the shared block: after
 * the queue, on a cache line of its own. */
static size_t notify_offset(size_t capacity)
{
    return (cmp_queue_footprint(capacity) + 63) & ~(size_t)63;
}

/* Makes the shared queue of self (maxsize items at most, 0: no bound). */
static int queue_setup(QueueObject *self, long long maxsize)
{
    uint32_t count = maxsize > 0 && maxsize <= CMP_QUEUE_MAXSIZE_MAX ? (uint32_t)maxsize : 0;
    size_t capacity = QUEUE_RING_BYTES;
    while (capacity < (size_t)count * 8 && capacity < CMP_RING_MAX_CAPACITY)
        capacity *= 2;
    cmp_shared_t *block;
    int rc = cmp_shared_alloc(notify_offset(capacity) + 64, &block);
    if (rc < 0) {
        cmp_py_raise(rc);
        return -1;
    }
    cmp_queue_t *q = cmp_shared_ptr(block);
    rc = cmp_queue_init(q, capacity, count);
    if (rc < 0) {
        cmp_shared_release(block);
        cmp_py_raise(rc);
        return -1;
    }
    int efd = -1;
    if (self->simple && (efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        rc = -errno;
        cmp_queue_detach(q);
        cmp_shared_release(block);
        cmp_py_raise(rc);
        return -1;
    }
    self->block = block;
    self->q = q;
    /* forked children inherit the fds with this object; each closes its
     * own copies when its object goes */
    self->spill_fd = cmp_ring_spill_fd(cmp_queue_ring(q));
    self->notify_fd = efd;
    self->notify_armed = efd >= 0 ? (uint32_t *)((char *)q + notify_offset(capacity)) : NULL;
    self->maxsize = maxsize > 0 ? maxsize : STDLIB_SEM_VALUE_MAX;
    return 0;
}

static void queue_teardown(QueueObject *self)
{
    if (self->spill_fd >= 0)
        cmp_queue_detach(self->q);
    if (self->notify_fd >= 0)
        close(self->notify_fd);
    if (self->block)
        cmp_shared_release(self->block);
    self->block = NULL;
    self->q = NULL;
    self->spill_fd = self->notify_fd = -1;
    self->notify_armed = NULL;
}

static PyObject *queue_new(PyTypeObject *type, long long maxsize, int simple)
{
    cmp_py_state *st = cmp_py_state_of_type(type);
    if (!st) {
        PyErr_SetString(PyExc_RuntimeError, "cmultiprocessing._cmp is not initialized");
        return NULL;
    }
    QueueObject *self = (QueueObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->spill_fd = self->notify_fd = -1;
    self->st = st;
    self->simple = (char)simple;
    if (queue_setup(self, maxsize) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* Queue(maxsize=0, *, ctx=None)'s arguments, as multiprocessing.queues.Queue */
static int parse_queue_args(PyObject *args, PyObject *kwds, long long *maxsize)
{
    static char *kwlist[] = {"maxsize", "ctx", NULL};
    PyObject *maxsize_obj = NULL, *ctx = NULL;
    *maxsize = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$O:Queue", kwlist, &maxsize_obj, &ctx))
        return -1;
    if (!maxsize_obj)
        return 0;
    PyObject *index = PyNumber_Index(maxsize_obj);
    if (!index)
        return -1;
    int overflow;
    *maxsize = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (*maxsize == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0 || *maxsize > STDLIB_SEM_VALUE_MAX) {
        PyErr_SetString(PyExc_OverflowError, "maxsize is too large");
        return -1;
    }
    if (overflow < 0)
        *maxsize = 0;
    return 0;
}

/* Our own types take their arguments in __new__; a subclass's __new__
 * gets the arguments of its own __init__, which may not be ours. */
static int is_subclass_call(PyTypeObject *type, cmp_py_state *st)
{
    return st && type != st->Queue_type && type != st->JoinableQueue_type &&
           type != st->SimpleQueue_type;
}

static PyObject *Queue_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    long long maxsize = 0;
    if (!is_subclass_call(type, cmp_py_state_of_type(type)) &&
        parse_queue_args(args, kwds, &maxsize) < 0)
        return NULL;
    return queue_new(type, maxsize, 0);
}

static int Queue_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    QueueObject *self = (QueueObject *)op;
    if (!is_subclass_call(Py_TYPE(op), self->st))
        return 0; /* __new__ took the arguments */
    long long maxsize;
    if (parse_queue_args(args, kwds, &maxsize) < 0)
        return -1;
    if ((maxsize > 0 ? maxsize : STDLIB_SEM_VALUE_MAX) == self->maxsize)
        return 0;
    /* __init__ runs before anyone else has the queue: remake it */
    queue_teardown(self);
    return queue_setup(self, maxsize);
}

static PyObject *SimpleQueue_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctx", NULL};
    PyObject *ctx = NULL;
    if (!is_subclass_call(type, cmp_py_state_of_type(type)) &&
        !PyArg_ParseTupleAndKeywords(args, kwds, "|$O:SimpleQueue", kwlist, &ctx))
        return NULL;
    return queue_new(type, 0, 1);
}

static int SimpleQueue_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctx", NULL};
    PyObject *ctx = NULL;
    if (!is_subclass_call(Py_TYPE(op), ((QueueObject *)op)->st))
        return 0;
    return PyArg_ParseTupleAndKeywords(args, kwds, "|$O:SimpleQueue", kwlist, &ctx) ? 0 : -1;
}

static void Queue_dealloc(PyObject *op)
{
    QueueObject *self = (QueueObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    if (self->weakreflist)
        PyObject_ClearWeakRefs(op);
    queue_teardown(self);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* ---- SimpleQueue ---------------------------------------------------------- */

static PyObject *SimpleQueue_get(PyObject *op, PyObject *unused)
{
    (void)unused;
    return cmp_py_queue_get((QueueObject *)op, NULL, NULL);
}

PyObject *cmp_py_queue_put(QueueObject *self, PyObject *obj)
{
    return do_put(self, obj, NULL, NULL);
}

static PyObject *SimpleQueue_put(PyObject *op, PyObject *obj)
{
    return do_put((QueueObject *)op, obj, NULL, NULL);
}

static PyObject *SimpleQueue_close(PyObject *op, PyObject *unused)
{
    (void)unused;
    ((QueueObject *)op)->closed = 1;
    Py_RETURN_NONE;
}

/* ---- types ------------------------------------------------------------------ */

#define FASTCALL_KW METH_FASTCALL | METH_KEYWORDS
#define CAST(f) (PyCFunction)(void (*)(void))(f)

static const char QUEUE_DOC[] =
    "Queue(maxsize=0, *, ctx=None)\n--\n\n"
    "A FIFO queue shared between processes (multiprocessing.Queue), on a\n"
    "message ring in shared memory.\n\n"
    "Beyond the standard library: put() serializes the object in the\n"
    "calling thread (small built-in values without pickle; everything else\n"
    "with pickle protocol 5, large buffers such as numpy arrays out of band)\n"
    "and has copied it into shared memory when it returns. So an object that\n"
    "cannot be pickled raises from put() instead of being lost in a feeder\n"
    "thread, a producer that exits right after put() loses nothing and never\n"
    "waits at exit, and a producer killed at any point leaves the queue\n"
    "consistent for the others. put_many() and get_many() move batches under\n"
    "one lock acquisition. qsize(), empty() and full() are exact.\n\n"
    "Messages go to a 4 MiB ring in shared memory; when it is full, or for a\n"
    "message larger than 2 MiB, they go to the queue's spill file (a memfd,\n"
    "shared memory too, given back as it is consumed), so put() waits only\n"
    "for maxsize, as in the standard library: any number of items of any\n"
    "size can be put before a consumer starts. A top-level memoryview\n"
    "arrives as bytes.";

static PyMethodDef Queue_methods[] = {
    {"put", CAST(Queue_put), FASTCALL_KW,
     "put(obj, block=True, timeout=None)\n--\n\n"
     "Put obj into the queue, waiting up to timeout seconds for room if block\n"
     "is true; raise queue.Full if there is none. obj is serialized here (an\n"
     "unpicklable object raises here) and is in shared memory on return."},
    {"get", CAST(Queue_get), FASTCALL_KW,
     "get(block=True, timeout=None)\n--\n\n"
     "Remove and return an item, waiting up to timeout seconds if block is\n"
     "true; raise queue.Empty if none came."},
    {"put_nowait", Queue_put_nowait, METH_O, "put_nowait(obj)\n--\n\nput(obj, False)."},
    {"get_nowait", Queue_get_nowait, METH_NOARGS, "get_nowait()\n--\n\nget(False)."},
    {"put_many", CAST(Queue_put_many), FASTCALL_KW,
     "put_many(items, block=True, timeout=None)\n--\n\n"
     "Put every item of the iterable, in order, with as few lock acquisitions\n"
     "as room allows. All items are serialized first: if one cannot be, the\n"
     "error is raised and none is put. Raises queue.Full if the deadline\n"
     "passes before all are put (the message says how many were)."},
    {"get_many", CAST(Queue_get_many), FASTCALL_KW,
     "get_many(max_items=1000, block=True, timeout=None)\n--\n\n"
     "Return a list of 1 to max_items items: waits (as get() does) for the\n"
     "first, then takes those already queued without waiting. Raises\n"
     "queue.Empty if none came."},
    {"qsize", Queue_qsize, METH_NOARGS, "qsize()\n--\n\nThe number of items in the queue (exact)."},
    {"empty", Queue_empty, METH_NOARGS, "empty()\n--\n\nTrue if the queue is empty (exact)."},
    {"full", Queue_full, METH_NOARGS,
     "full()\n--\n\nTrue if the queue holds maxsize items (exact)."},
    {"close", Queue_close, METH_NOARGS,
     "close()\n--\n\n"
     "Indicate that this process will not use the queue any more: put() and\n"
     "get() then raise ValueError here. Other processes are not affected."},
    {"join_thread", Queue_join_thread, METH_NOARGS,
     "join_thread()\n--\n\n"
     "After close(): wait for the feeder thread. There is none: put() has\n"
     "already written everything to shared memory, so this returns at once."},
    {"cancel_join_thread", Queue_cancel_join_thread, METH_NOARGS,
     "cancel_join_thread()\n--\n\n"
     "Accepted for compatibility; exiting never waits for queued data here."},
    {"__reduce__", Queue_reduce, METH_NOARGS, NULL},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, NULL},
    {"_on_queue_feeder_error", CAST(Queue_on_feeder_error), METH_FASTCALL | METH_STATIC,
     "_on_queue_feeder_error(e, obj)\n--\n\n"
     "Called by put() with an object it could not pickle when a subclass\n"
     "overrides it (then put() returns); this one raises e."},
    {"_terminate_broken", Queue_close, METH_NOARGS,
     "_terminate_broken()\n--\n\nClose after an error (concurrent.futures): close()."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Queue_getset[] = {
    {"_maxsize", Queue_maxsize, NULL, NULL, NULL},
    {"_reader", Queue_reader, NULL, NULL, NULL},
    {"_writer", Queue_writer, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Queue_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(QueueObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Queue_slots[] = {
    {Py_tp_doc, (void *)QUEUE_DOC}, {Py_tp_new, Queue_new},
    {Py_tp_init, Queue_init},       {Py_tp_dealloc, Queue_dealloc},
    {Py_tp_methods, Queue_methods}, {Py_tp_getset, Queue_getset},
    {Py_tp_members, Queue_members}, {0, NULL},
};

static PyType_Spec Queue_spec = {
    .name = "cmultiprocessing.queues.Queue",
    .basicsize = sizeof(QueueObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Queue_slots,
};

static PyMethodDef Joinable_methods[] = {
    {"task_done", Queue_task_done, METH_NOARGS,
     "task_done()\n--\n\n"
     "Mark one item got from the queue as processed. ValueError if called\n"
     "more times than items were put."},
    {"join", Queue_join, METH_NOARGS,
     "join()\n--\n\nWait until every item put has been marked with task_done()."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Joinable_slots[] = {
    {Py_tp_doc, (void *)"JoinableQueue(maxsize=0, *, ctx=None)\n--\n\n"
                        "A Queue with task_done() and join() (multiprocessing.JoinableQueue).\n"
                        "The count of unfinished tasks is exact also when processes die."},
    {Py_tp_methods, Joinable_methods},
    {0, NULL},
};

static PyType_Spec Joinable_spec = {
    .name = "cmultiprocessing.queues.JoinableQueue",
    .basicsize = sizeof(QueueObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Joinable_slots,
};

static PyMethodDef Simple_methods[] = {
    {"get", SimpleQueue_get, METH_NOARGS,
     "get()\n--\n\nRemove and return an item, waiting for one."},
    {"put", SimpleQueue_put, METH_O,
     "put(obj)\n--\n\nPut obj into the queue (serialized here, in shared memory on return)."},
    {"empty", Queue_empty, METH_NOARGS, "empty()\n--\n\nTrue if the queue is empty."},
    {"close", SimpleQueue_close, METH_NOARGS,
     "close()\n--\n\nClose this process's handle: get() and put() then raise OSError."},
    {"__reduce__", Queue_reduce, METH_NOARGS, NULL},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Simple_getset[] = {
    {"_reader", Queue_reader, NULL, NULL, NULL},
    {"_writer", Queue_writer, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Simple_slots[] = {
    {Py_tp_doc, (void *)"SimpleQueue(*, ctx=None)\n--\n\n"
                        "A simplified queue (multiprocessing.SimpleQueue): get, put, empty,\n"
                        "close. Like Queue, put() serializes in the caller's thread and\n"
                        "the item is in shared memory when it returns."},
    {Py_tp_new, SimpleQueue_new},
    {Py_tp_init, SimpleQueue_init},
    {Py_tp_dealloc, Queue_dealloc},
    {Py_tp_methods, Simple_methods},
    {Py_tp_getset, Simple_getset},
    {Py_tp_members, Queue_members},
    {0, NULL},
};

static PyType_Spec Simple_spec = {
    .name = "cmultiprocessing.queues.SimpleQueue",
    .basicsize = sizeof(QueueObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Simple_slots,
};

int cmp_py_queue_init(PyObject *module, cmp_py_state *st)
{
    PyObject *queue = PyImport_ImportModule("queue");
    if (!queue)
        return -1;
    st->Empty = PyObject_GetAttrString(queue, "Empty");
    st->Full = PyObject_GetAttrString(queue, "Full");
    Py_DECREF(queue);
    if (!st->Empty || !st->Full)
        return -1;
    st->Queue_type = cmp_py_add_type(module, &Queue_spec, NULL);
    if (!st->Queue_type)
        return -1;
    st->JoinableQueue_type = cmp_py_add_type(module, &Joinable_spec, (PyObject *)st->Queue_type);
    st->SimpleQueue_type = cmp_py_add_type(module, &Simple_spec, NULL);
    if (!st->JoinableQueue_type || !st->SimpleQueue_type)
        return -1;
    return cmp_py_queue_reader_init(module, st);
}
