/*
 * RLock: multiprocessing.RLock on a cmp_rlock_t in the shared heap, owned by
 * one thread of one process. Re-entry and the uncontended acquire are a few
 * loads and one compare-and-swap with the GIL held.
 */
#include "shared_object.h"

#include <errno.h>

static const char RLOCK_DOC[] =
    "RLock()\n--\n\n"
    "A recursive lock shared between processes (multiprocessing.RLock): the\n"
    "thread that acquired it may acquire it again and must release it as many\n"
    "times.\n\n"
    "If the process owning it dies, the next blocking acquire() (or one with a\n"
    "timeout) takes it over, returns True and emits\n"
    "cmultiprocessing.AbandonedLockWarning: the data the lock protects may be\n"
    "half-updated. A non-blocking acquire(False) looks for a dead owner too,\n"
    "at most every 0.1 s.";

struct rlock_wait_args {
    cmp_rlock_t *rlock;
    uint32_t count;
};

static int rlock_wait(void *arg, const struct timespec *deadline)
{
    struct rlock_wait_args *a = arg;
    return cmp_rlock_acquire_count(a->rlock, a->count, deadline);
}

int cmp_py_RLock_acquire_count(cmp_py_rlock *self, uint32_t count, const struct timespec *deadline)
{
    /* try with the GIL held first: no thread switch when it is free */
    int rc = count == 1 ? cmp_rlock_tryacquire(self->rlock) : -EAGAIN;
    if (rc == -EAGAIN) {
        /* sliced: the periodic dead-holder check sleeps more than once */
        struct rlock_wait_args a = {self->rlock, count};
        rc = cmp_py_wait(rlock_wait, &a, deadline, 1);
        if (rc == -EINTR)
            return -1;
    }
    if (rc == -ETIMEDOUT)
        return 0;
    if (rc == -EOVERFLOW) {
        PyErr_SetString(PyExc_OverflowError, "maximum recursion depth of RLock exceeded");
        return -1;
    }
    if (rc < 0) {
        cmp_py_raise(rc);
        return -1;
    }
    if (rc == CMP_OWNER_DIED && cmp_py_warn_abandoned(Py_TYPE(self), "RLock") < 0)
        return -1;
    return 1;
}

PyObject *cmp_py_RLock_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    cmp_py_rlock *self = (cmp_py_rlock *)op;
    int block = 1;
    PyObject *timeout = NULL;
    if ((nargs || kwnames) &&
        cmp_py_parse_acquire_args("acquire", args, nargs, kwnames, &block, &timeout) < 0)
        return NULL;
    int rc = cmp_rlock_tryacquire(self->rlock);
    if (rc == 0)
        Py_RETURN_TRUE;
    if (rc == -EOVERFLOW) {
        PyErr_SetString(PyExc_OverflowError, "maximum recursion depth of RLock exceeded");
        return NULL;
    }
    struct timespec storage;
    const struct timespec *deadline = &cmp_py_expired_deadline;
    if (!block) {
        if (!cmp_py_holder_died(&self->next_holder_check, &self->rlock->lock))
            Py_RETURN_FALSE;
    } else if (cmp_py_deadline(timeout, &storage, &deadline) < 0) {
        return NULL;
    }
    int r = cmp_py_RLock_acquire_count(self, 1, deadline);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

PyObject *cmp_py_RLock_release(PyObject *op, PyObject *unused)
{
    (void)unused;
    if (cmp_rlock_release(((cmp_py_rlock *)op)->rlock) < 0) {
        PyErr_SetString(PyExc_AssertionError,
                        "attempt to release recursive lock not owned by thread");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *RLock_enter(PyObject *op, PyObject *unused)
{
    (void)unused;
    cmp_py_rlock *self = (cmp_py_rlock *)op;
    if (cmp_rlock_tryacquire(self->rlock) == 0)
        Py_RETURN_TRUE;
    if (cmp_py_RLock_acquire_count(self, 1, NULL) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *RLock_exit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    if (cmp_py_check_exit_args(nargs) < 0)
        return NULL;
    return cmp_py_RLock_release(op, NULL);
}

static PyObject *RLock_reduce(PyObject *op, PyObject *unused)
{
    (void)unused;
    return cmp_py_shared_reduce(op, "RLock", NULL);
}

int cmp_py_rlock_adopt(PyObject *op, void *mem, PyObject *extra)
{
    (void)extra;
    ((cmp_py_rlock *)op)->rlock = mem;
    return 0;
}

static PyObject *RLock_repr(PyObject *op)
{
    cmp_py_rlock *self = (cmp_py_rlock *)op;
    PyObject *cls = PyObject_GetAttrString((PyObject *)Py_TYPE(op), "__name__");
    if (!cls)
        return NULL;
    PyObject *r = NULL;
    pid_t holder = cmp_lock_holder(&self->rlock->lock);
    if (cmp_rlock_is_mine(self->rlock)) {
        unsigned long count = cmp_rlock_count(self->rlock);
        PyObject *name = cmp_py_owner_name();
        if (name) {
            r = PyUnicode_FromFormat("<%U(%U, %lu)>", cls, name, count);
            Py_DECREF(name);
        }
    } else if (holder == 0) {
        r = PyUnicode_FromFormat("<%U(None, 0)>", cls);
    } else if (cmp_lock_is_mine(&self->rlock->lock)) {
        r = PyUnicode_FromFormat("<%U(SomeOtherThread, nonzero)>", cls);
    } else {
        r = PyUnicode_FromFormat("<%U(SomeOtherProcess, nonzero)>", cls);
    }
    Py_DECREF(cls);
    return r;
}

static int RLock_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    if (!CMP_PY_FOREIGN_INIT(Py_TYPE(op), RLock_init))
        return 0;
    return cmp_py_parse_ctx_only(args, kwds, "|$O:RLock");
}

static PyObject *RLock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (!CMP_PY_FOREIGN_INIT(type, RLock_init) &&
        cmp_py_parse_ctx_only(args, kwds, "|$O:RLock") < 0)
        return NULL;
    void *mem;
    cmp_py_rlock *self = (cmp_py_rlock *)cmp_py_shared_new(type, sizeof(cmp_rlock_t), &mem);
    if (!self)
        return NULL;
    self->rlock = mem;
    cmp_rlock_init(self->rlock);
    return (PyObject *)self;
}

static void RLock_finalize(PyObject *op)
{
    cmp_py_fast_cache_finalize(op, &((cmp_py_rlock *)op)->with_cache);
}

static void RLock_dealloc(PyObject *op)
{
    cmp_py_shared_dealloc(op, &((cmp_py_rlock *)op)->with_cache);
}

static PyMethodDef RLock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))cmp_py_RLock_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(block=True, timeout=None)\n--\n\n"
     "Acquire the lock (again, if this thread owns it); return True, or False\n"
     "if it could not be acquired without blocking or within timeout seconds."},
    {"release", cmp_py_RLock_release, METH_NOARGS,
     "release()\n--\n\n"
     "Release one level (AssertionError if this thread does not own it)."},
    {"__reduce__", RLock_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* Installed by cmp_py_add_fast_methods(): `with` binds them on every use,
 * and they are cached per instance (with_cache). */
static PyMethodDef RLock_with_methods[] = {
    {"__enter__", RLock_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nAcquire the lock (again, if this thread owns it), waiting as long "
     "as\nneeded; return True."},
    {"__exit__", (PyCFunction)(void (*)(void))RLock_exit, METH_FASTCALL,
     "__exit__($self, /, *args)\n--\n\nRelease the lock."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot RLock_slots[] = {
    {Py_tp_doc, (void *)RLOCK_DOC},
    {Py_tp_new, RLock_new},
    {Py_tp_init, RLock_init},
    {Py_tp_dealloc, RLock_dealloc},
    {Py_tp_finalize, RLock_finalize},
    {Py_tp_repr, RLock_repr},
    {Py_tp_methods, RLock_methods},
    {Py_tp_members, cmp_py_shared_members},
    {0, NULL},
};

static PyType_Spec RLock_spec = {
    .name = "cmultiprocessing.synchronize.RLock",
    .basicsize = sizeof(cmp_py_rlock),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = RLock_slots,
};

int cmp_py_rlock_init(PyObject *module, cmp_py_state *st)
{
    st->RLock_type = cmp_py_add_type(module, &RLock_spec, NULL);
    if (!st->RLock_type)
        return -1;
    return cmp_py_add_fast_methods(st, st->RLock_type, RLock_with_methods,
                                   offsetof(cmp_py_rlock, with_cache));
}
