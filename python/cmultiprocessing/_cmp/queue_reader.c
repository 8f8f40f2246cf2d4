/*
 * A queue's _reader: the stdlib's queues read from a pipe, and
 * concurrent.futures waits on SimpleQueue()._reader with
 * connection.wait() next to its workers' sentinels, then calls recv().
 * Ours read from a ring in shared memory, which no poll() can watch, so a
 * SimpleQueue carries an eventfd that is kept readable while items wait,
 * from the moment a reader's fileno() is first taken in any process (the
 * flag sits in the queue's shared block). Before that, and for the other
 * queues, a put costs no syscall; after it, a put costs one write() and a
 * get one read() (two if items are left).
 *
 * Ordering, so that the fd is never quiet while items wait: a producer
 * publishes its item, then reads the flag; a reader sets the flag (or
 * drains the fd), then looks at the queue and signals if it is not empty.
 * Full fences on both sides make one of them see the other's write. The
 * fd may be readable with the queue empty only when another consumer took
 * the item in between: recv() then waits for the next one, as a pipe's
 * reader racing another reader would.
 *
 * Queue's _reader (concurrent.futures closes its call queue's in
 * terminate_broken) has no fd: close() and closed only.
 *
 * The _writer end is there for code that checks the stdlib's pipe ends
 * (`_writer.closed` after close()) or sends on one: send() is put().
 */
#include "queue.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    QueueObject *queue;
    int closed;
} ReaderObject;

static void signal_fd(int fd)
{
    uint64_t one = 1;
    ssize_t r = write(fd, &one, sizeof one);
    (void)r; /* the counter cannot overflow in practice; EAGAIN is readable */
}

void cmp_py_queue_notify_put(QueueObject *self)
{
    if (!self->notify_armed)
        return;
    /* pairs with the reader's fence: see the top of the file */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(self->notify_armed, __ATOMIC_RELAXED))
        signal_fd(self->notify_fd);
}

void cmp_py_queue_notify_get(QueueObject *self)
{
    if (!self->notify_armed || !__atomic_load_n(self->notify_armed, __ATOMIC_RELAXED))
        return;
    uint64_t count;
    while (read(self->notify_fd, &count, sizeof count) > 0)
        ;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!cmp_queue_empty(self->q))
        signal_fd(self->notify_fd);
}

static int arm(QueueObject *q)
{
    if (!q->notify_armed) {
        PyErr_SetString(PyExc_OSError, "this queue's reader has no file descriptor");
        return -1;
    }
    if (!__atomic_load_n(q->notify_armed, __ATOMIC_RELAXED)) {
        __atomic_store_n(q->notify_armed, 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (!cmp_queue_empty(q->q))
            signal_fd(q->notify_fd);
    }
    return 0;
}

static int check_end(ReaderObject *self)
{
    if (self->closed || self->queue->closed) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return -1;
    }
    return 0;
}

static PyObject *Reader_fileno(PyObject *op, PyObject *unused)
{
    (void)unused;
    ReaderObject *self = (ReaderObject *)op;
    if (check_end(self) < 0 || arm(self->queue) < 0)
        return NULL;
    return PyLong_FromLong(self->queue->notify_fd);
}

static PyObject *Reader_recv(PyObject *op, PyObject *unused)
{
    (void)unused;
    ReaderObject *self = (ReaderObject *)op;
    if (check_end(self) < 0)
        return NULL;
    return cmp_py_queue_get(self->queue, NULL, NULL);
}

/* poll(timeout=0.0): whether an item waits, after waiting up to timeout
 * seconds (None: without limit) for one. */
static PyObject *Reader_poll(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    ReaderObject *self = (ReaderObject *)op;
    if (nargs > 1)
        return PyErr_Format(PyExc_TypeError, "poll() takes at most 1 argument (%zd given)", nargs);
    if (check_end(self) < 0)
        return NULL;
    QueueObject *q = self->queue;
    if (!cmp_queue_empty(q->q))
        Py_RETURN_TRUE;
    PyObject *timeout = nargs ? args[0] : NULL;
    if (!timeout || (PyFloat_Check(timeout) && PyFloat_AS_DOUBLE(timeout) <= 0) ||
        (PyLong_Check(timeout) && PyObject_IsTrue(timeout) == 0))
        Py_RETURN_FALSE;
    if (arm(q) < 0)
        return NULL;
    struct timespec storage;
    const struct timespec *deadline;
    if (cmp_py_deadline(timeout, &storage, &deadline) < 0)
        return NULL;
    while (cmp_queue_empty(q->q)) {
        double left = deadline ? cmp_deadline_remaining(deadline) : -1;
        if (deadline && left <= 0)
            Py_RETURN_FALSE;
        struct pollfd pfd = {.fd = q->notify_fd, .events = POLLIN};
        int ms = !deadline ? -1 : left > 3600 ? 3600000 : (int)(left * 1000) + 1;
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = poll(&pfd, 1, ms);
        Py_END_ALLOW_THREADS
        if (r < 0 && errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals() < 0)
            return NULL;
        if (r > 0 && cmp_queue_empty(q->q)) {
            /* another consumer's leftover signal: drain it and wait on */
            cmp_py_queue_notify_get(q);
            if (cmp_queue_empty(q->q) && !deadline)
                continue;
        }
    }
    Py_RETURN_TRUE;
}

static PyObject *Reader_close(PyObject *op, PyObject *unused)
{
    (void)unused;
    ((ReaderObject *)op)->closed = 1;
    Py_RETURN_NONE;
}

static PyObject *Reader_get_closed(PyObject *op, void *closure)
{
    (void)closure;
    ReaderObject *self = (ReaderObject *)op;
    return PyBool_FromLong(self->closed || self->queue->closed);
}

static void Reader_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    Py_CLEAR(((ReaderObject *)op)->queue);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyMethodDef Reader_methods[] = {
    {"fileno", Reader_fileno, METH_NOARGS,
     "fileno()\n--\n\nAn fd that is readable while items wait (SimpleQueue only)."},
    {"recv", Reader_recv, METH_NOARGS, "recv()\n--\n\nThe queue's get()."},
    {"poll", (PyCFunction)(void (*)(void))Reader_poll, METH_FASTCALL,
     "poll(timeout=0.0)\n--\n\nWhether an item waits, after waiting up to timeout."},
    {"close", Reader_close, METH_NOARGS, "close()\n--\n\nClose this reader."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Reader_getset[] = {
    {"closed", Reader_get_closed, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Reader_slots[] = {
    {Py_tp_dealloc, Reader_dealloc},
    {Py_tp_methods, Reader_methods},
    {Py_tp_getset, Reader_getset},
    {0, NULL},
};

static PyType_Spec Reader_spec = {
    .name = "cmultiprocessing._cmp._QueueReader",
    .basicsize = sizeof(ReaderObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Reader_slots,
};

/* ---- the writer end ------------------------------------------------------ */

static PyObject *Writer_send(PyObject *op, PyObject *obj)
{
    ReaderObject *self = (ReaderObject *)op;
    if (check_end(self) < 0)
        return NULL;
    return cmp_py_queue_put(self->queue, obj);
}

static PyMethodDef Writer_methods[] = {
    {"send", Writer_send, METH_O, "send(obj)\n--\n\nThe queue's put(obj)."},
    {"close", Reader_close, METH_NOARGS, "close()\n--\n\nClose this writer."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Writer_slots[] = {
    {Py_tp_dealloc, Reader_dealloc},
    {Py_tp_methods, Writer_methods},
    {Py_tp_getset, Reader_getset},
    {0, NULL},
};

static PyType_Spec Writer_spec = {
    .name = "cmultiprocessing._cmp._QueueWriter",
    .basicsize = sizeof(ReaderObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Writer_slots,
};

static PyObject *queue_end(PyTypeObject *tp, QueueObject *q)
{
    ReaderObject *self = (ReaderObject *)tp->tp_alloc(tp, 0);
    if (!self)
        return NULL;
    self->queue = (QueueObject *)Py_NewRef((PyObject *)q);
    return (PyObject *)self;
}

PyObject *cmp_py_queue_reader(QueueObject *q)
{
    return queue_end(q->st->QueueReader_type, q);
}

PyObject *cmp_py_queue_writer(QueueObject *q)
{
    return queue_end(q->st->QueueWriter_type, q);
}

int cmp_py_queue_reader_init(PyObject *module, cmp_py_state *st)
{
    st->QueueReader_type = (PyTypeObject *)cmp_py_type_from_spec(module, &Reader_spec, NULL);
    st->QueueWriter_type = (PyTypeObject *)cmp_py_type_from_spec(module, &Writer_spec, NULL);
    return st->QueueReader_type && st->QueueWriter_type ? 0 : -1;
}
