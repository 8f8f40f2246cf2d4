/*
 * What the synchronization objects (lock.c, rlock.c, semaphore.c, event.c,
 * condition.c, barrier.c) share: their state in one block of the shared
 * heap, their refusal to be pickled, and the blocking-wait loop.
 */
#include "shared_object.h"

#include <errno.h>
#include <pthread.h>

/* --- objects on a block of the shared heap --- */

typedef struct {
    CMP_PY_SHARED_HEAD
} cmp_py_shared_object;

/* At the same offset in every type that starts with CMP_PY_SHARED_HEAD. */
PyMemberDef cmp_py_shared_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(cmp_py_shared_object, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

int cmp_py_parse_ctx_only(PyObject *args, PyObject *kwds, const char *fmt)
{
    static char *kwlist[] = {"ctx", NULL};
    PyObject *ctx = NULL;
    return PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &ctx) ? 0 : -1;
}

PyObject *cmp_py_shared_new(PyTypeObject *type, size_t size, void **mem)
{
    cmp_shared_t *block;
    int rc = cmp_shared_alloc(size, &block);
    if (rc < 0)
        return cmp_py_raise(rc);
    cmp_py_shared_object *self = (cmp_py_shared_object *)type->tp_alloc(type, 0);
    if (!self) {
        cmp_shared_release(block);
        return NULL;
    }
    self->block = block;
    *mem = cmp_shared_ptr(block);
    return (PyObject *)self;
}

void cmp_py_shared_dealloc(PyObject *op, cmp_py_fast_cache *cache)
{
    cmp_py_shared_object *self = (cmp_py_shared_object *)op;
    PyTypeObject *tp = Py_TYPE(op);
    if (cache) {
        /* a bound __enter__/__exit__ still in use elsewhere keeps it alive */
        if (cmp_py_fast_cache_used(cache) && PyObject_CallFinalizerFromDealloc(op) < 0)
            return;
        cmp_py_fast_cache_clear(cache);
    }
    if (self->weakreflist)
        PyObject_ClearWeakRefs(op);
    if (self->block)
        cmp_shared_release(self->block);
    tp->tp_free(op);
    Py_DECREF(tp);
}

PyObject *cmp_py_refuse_pickle(PyObject *op, const char *what)
{
    if (what) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s objects should only be shared between processes through inheritance",
                     what);
        return NULL;
    }
    PyObject *name = PyObject_GetAttrString((PyObject *)Py_TYPE(op), "__name__");
    if (!name)
        return NULL;
    PyErr_Format(PyExc_RuntimeError,
                 "%U objects should only be shared between processes through inheritance", name);
    Py_DECREF(name);
    return NULL;
}

/* --- blocking waits --- */

/* The thread that runs Python's signal handlers: the main thread as the
 * threading module knows it, and in a fork child the thread that forked
 * (CPython makes it the child's main thread). Only it needs sliced waits. */
static unsigned long main_thread_ident;

static void main_thread_after_fork(void)
{
    main_thread_ident = PyThread_get_thread_ident();
}

int cmp_py_main_thread_init(void)
{
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *main = threading ? PyObject_CallMethod(threading, "main_thread", NULL) : NULL;
    PyObject *ident = main ? PyObject_GetAttrString(main, "ident") : NULL;
    Py_XDECREF(threading);
    Py_XDECREF(main);
    if (!ident)
        return -1;
    main_thread_ident = PyLong_AsUnsignedLong(ident);
    Py_DECREF(ident);
    if (PyErr_Occurred())
        return -1;
    static int registered;
    if (!registered && pthread_atfork(NULL, NULL, main_thread_after_fork) == 0)
        registered = 1;
    return 0;
}

const struct timespec *cmp_py_slice(const struct timespec *deadline, struct timespec *storage)
{
    /* A signal that lands between two sleeps of a lock's periodic
     * dead-holder check runs the C handler without interrupting a futex
     * wait; sleeping in slices bounds how late its Python handler runs.
     * Other threads never run the handlers: they sleep in one piece, and
     * an idle waiter among them costs no wake-ups. */
    if (PyThread_get_thread_ident() != main_thread_ident)
        return deadline;
    cmp_deadline_after(0.05, storage);
    if (deadline && (deadline->tv_sec < storage->tv_sec || (deadline->tv_sec == storage->tv_sec &&
                                                            deadline->tv_nsec <= storage->tv_nsec)))
        return deadline;
    return storage;
}

int cmp_py_wait(cmp_py_wait_fn wait, void *obj, const struct timespec *deadline, int sliced)
{
    for (;;) {
        struct timespec storage;
        const struct timespec *until = sliced ? cmp_py_slice(deadline, &storage) : deadline;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = wait(obj, until);
        Py_END_ALLOW_THREADS
        /* a slice that ran out is not the caller's timeout */
        if (rc != -EINTR && !(rc == -ETIMEDOUT && until != deadline))
            return rc;
        if (PyErr_CheckSignals() < 0)
            return -EINTR;
    }
}
