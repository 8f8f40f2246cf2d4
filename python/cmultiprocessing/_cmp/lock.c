/*
 * Lock: multiprocessing.Lock on a cmp_lock_t in the shared heap.
 *
 * Hot paths (acquire/release/__enter__/__exit__) are one compare-and-swap
 * with the GIL held and no syscall; only a contended acquire releases the
 * GIL and sleeps. The shared word records the holder's identity (pid and
 * start time, see cmp_lock_abandoned); the thread of this process that last
 * acquired it is kept locally, for is-mine checks (Condition) and the repr.
 */
#include "shared_object.h"

#include <errno.h>
#include <pythread.h>

static const char LOCK_DOC[] =
    "Lock()\n--\n\n"
    "A non-recursive lock shared between processes (multiprocessing.Lock).\n\n"
    "Any process or thread may release it. If the process holding it dies,\n"
    "the next blocking acquire() (or one with a timeout) takes it over, returns\n"
    "True and emits cmultiprocessing.AbandonedLockWarning: the data the lock\n"
    "protects may be half-updated. A non-blocking acquire(False) looks for a\n"
    "dead holder too, at most every 0.1 s, so a polling loop also recovers.\n"
    "With the warning turned into an error, acquire() raises it while holding\n"
    "the lock.";

int cmp_py_parse_acquire_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames, int *block, PyObject **timeout)
{
    static const char *const names[] = {"block", "timeout"};
    PyObject *given[2];
    if (cmp_py_parse_args(fname, args, nargs, kwnames, names, 2, given) < 0)
        return -1;
    *timeout = given[1];
    if ((*block = cmp_py_block_arg(given[0], 1)) < 0)
        return -1;
    /* a bad timeout is an error even when the lock is free, as in the stdlib */
    return cmp_py_check_timeout(*timeout);
}

PyObject *cmp_py_owner_name(void)
{
    PyObject *name = NULL, *tname = NULL, *proc = NULL, *thread = NULL;
    /* Our own current_process() once the process work provides it; the
     * stdlib's names the same main process otherwise. */
    PyObject *mod = PyImport_ImportModule("cmultiprocessing");
    PyObject *cp = mod ? PyObject_GetAttrString(mod, "current_process") : NULL;
    Py_XDECREF(mod);
    if (!cp) {
        PyErr_Clear();
        mod = PyImport_ImportModule("multiprocessing");
        cp = mod ? PyObject_GetAttrString(mod, "current_process") : NULL;
        Py_XDECREF(mod);
        if (!cp)
            return NULL;
    }
    proc = PyObject_CallNoArgs(cp);
    Py_DECREF(cp);
    if (!proc)
        goto done;
    name = PyObject_GetAttrString(proc, "name");
    if (!name)
        goto done;
    mod = PyImport_ImportModule("threading");
    if (!mod)
        goto fail;
    thread = PyObject_CallMethod(mod, "current_thread", NULL);
    Py_DECREF(mod);
    if (!thread)
        goto fail;
    tname = PyObject_GetAttrString(thread, "name");
    if (!tname)
        goto fail;
    if (PyUnicode_Check(tname) && PyUnicode_CompareWithASCIIString(tname, "MainThread") != 0) {
        PyObject *joined = PyUnicode_FromFormat("%S|%S", name, tname);
        Py_SETREF(name, joined);
    }
    goto done;
fail:
    Py_CLEAR(name);
done:
    Py_XDECREF(proc);
    Py_XDECREF(thread);
    Py_XDECREF(tname);
    return name;
}

int cmp_py_Lock_is_mine(cmp_py_lock *self)
{
    return cmp_lock_is_mine(self->lock) && self->owner == PyThread_get_thread_ident();
}

int cmp_py_holder_died(int64_t *next_check_ns, const cmp_lock_t *lock)
{
    if (!cmp_lock_is_locked(lock))
        return 0;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t now_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    if (now_ns < *next_check_ns)
        return 0;
    *next_check_ns = now_ns + CMP_OWNER_CHECK_NS;
    return cmp_lock_abandoned(lock);
}

/* An acquire that gives up at once unless it can take the lock over. */
const struct timespec cmp_py_expired_deadline = {0, 1};

static int lock_wait(void *lock, const struct timespec *deadline)
{
    return cmp_lock_acquire(lock, deadline);
}

int cmp_py_Lock_acquire_deadline(cmp_py_lock *self, const struct timespec *deadline)
{
    /* sliced: the periodic dead-holder check sleeps more than once */
    int rc = cmp_py_wait(lock_wait, self->lock, deadline, 1);
    if (rc == -EINTR)
        return -1;
    if (rc == -ETIMEDOUT)
        return 0;
    if (rc < 0) {
        cmp_py_raise(rc);
        return -1;
    }
    self->owner = PyThread_get_thread_ident();
    if (rc == CMP_OWNER_DIED && cmp_py_warn_abandoned(Py_TYPE(self), "Lock") < 0)
        return -1;
    return 1;
}

PyObject *cmp_py_Lock_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    cmp_py_lock *self = (cmp_py_lock *)op;
    int block = 1;
    PyObject *timeout = NULL;
    if ((nargs || kwnames) &&
        cmp_py_parse_acquire_args("acquire", args, nargs, kwnames, &block, &timeout) < 0)
        return NULL;
    if (cmp_lock_tryacquire(self->lock) == 0) {
        self->owner = PyThread_get_thread_ident();
        Py_RETURN_TRUE;
    }
    struct timespec storage;
    const struct timespec *deadline = &cmp_py_expired_deadline;
    if (!block) {
        if (!cmp_py_holder_died(&self->next_holder_check, self->lock))
            Py_RETURN_FALSE;
    } else if (cmp_py_deadline(timeout, &storage, &deadline) < 0) {
        return NULL;
    }
    int r = cmp_py_Lock_acquire_deadline(self, deadline);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

PyObject *cmp_py_Lock_release(PyObject *op, PyObject *unused)
{
    (void)unused;
    if (cmp_lock_release(((cmp_py_lock *)op)->lock) < 0) {
        PyErr_SetString(PyExc_ValueError, "semaphore or lock released too many times");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Lock_enter(PyObject *op, PyObject *unused)
{
    (void)unused;
    cmp_py_lock *self = (cmp_py_lock *)op;
    if (cmp_lock_tryacquire(self->lock) == 0) {
        self->owner = PyThread_get_thread_ident();
        Py_RETURN_TRUE;
    }
    if (cmp_py_Lock_acquire_deadline(self, NULL) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *Lock_exit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    if (cmp_py_check_exit_args(nargs) < 0)
        return NULL;
    return cmp_py_Lock_release(op, NULL);
}

static PyObject *Lock_reduce(PyObject *op, PyObject *unused)
{
    (void)unused;
    return cmp_py_shared_reduce(op, "Lock", NULL);
}

int cmp_py_lock_adopt(PyObject *op, void *mem, PyObject *extra)
{
    (void)extra;
    ((cmp_py_lock *)op)->lock = mem;
    return 0;
}

static PyObject *type_name(PyObject *op)
{
    return PyObject_GetAttrString((PyObject *)Py_TYPE(op), "__name__");
}

static PyObject *Lock_repr(PyObject *op)
{
    cmp_py_lock *self = (cmp_py_lock *)op;
    PyObject *cls = type_name(op);
    if (!cls)
        return NULL;
    PyObject *owner;
    pid_t holder = cmp_lock_holder(self->lock);
    if (holder == 0)
        owner = PyUnicode_FromString("None");
    else if (cmp_py_Lock_is_mine(self))
        owner = cmp_py_owner_name();
    else if (cmp_lock_is_mine(self->lock))
        owner = PyUnicode_FromString("SomeOtherThread");
    else
        owner = PyUnicode_FromString("SomeOtherProcess");
    PyObject *r = owner ? PyUnicode_FromFormat("<%U(owner=%U)>", cls, owner) : NULL;
    Py_DECREF(cls);
    Py_XDECREF(owner);
    return r;
}

static int Lock_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    if (!CMP_PY_FOREIGN_INIT(Py_TYPE(op), Lock_init))
        return 0;
    return cmp_py_parse_ctx_only(args, kwds, "|$O:Lock");
}

static PyObject *Lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* Lock(*, ctx=None), as multiprocessing.synchronize.Lock(ctx=...) */
    if (!CMP_PY_FOREIGN_INIT(type, Lock_init) && cmp_py_parse_ctx_only(args, kwds, "|$O:Lock") < 0)
        return NULL;
    void *mem;
    cmp_py_lock *self = (cmp_py_lock *)cmp_py_shared_new(type, sizeof(cmp_lock_t), &mem);
    if (!self)
        return NULL;
    self->lock = mem;
    self->owner = 0;
    cmp_lock_init(self->lock);
    return (PyObject *)self;
}

static void Lock_finalize(PyObject *op)
{
    cmp_py_fast_cache_finalize(op, &((cmp_py_lock *)op)->with_cache);
}

static void Lock_dealloc(PyObject *op)
{
    cmp_py_shared_dealloc(op, &((cmp_py_lock *)op)->with_cache);
}

static PyMethodDef Lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))cmp_py_Lock_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(block=True, timeout=None)\n--\n\n"
     "Acquire the lock; return True, or False if it could not be acquired\n"
     "without blocking (block=False) or within timeout seconds."},
    {"release", cmp_py_Lock_release, METH_NOARGS,
     "release()\n--\n\nRelease the lock (ValueError if it is not held)."},
    {"__reduce__", Lock_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* Installed by cmp_py_add_fast_methods(): `with` binds them on every use,
 * and they are cached per instance (with_cache). */
static PyMethodDef Lock_with_methods[] = {
    {"__enter__", Lock_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nAcquire the lock (waiting as long as needed); return True."},
    {"__exit__", (PyCFunction)(void (*)(void))Lock_exit, METH_FASTCALL,
     "__exit__($self, /, *args)\n--\n\nRelease the lock."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Lock_slots[] = {
    {Py_tp_doc, (void *)LOCK_DOC},
    {Py_tp_new, Lock_new},
    {Py_tp_init, Lock_init},
    {Py_tp_dealloc, Lock_dealloc},
    {Py_tp_finalize, Lock_finalize},
    {Py_tp_repr, Lock_repr},
    {Py_tp_methods, Lock_methods},
    {Py_tp_members, cmp_py_shared_members},
    {0, NULL},
};

static PyType_Spec Lock_spec = {
    .name = "cmultiprocessing.synchronize.Lock",
    .basicsize = sizeof(cmp_py_lock),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Lock_slots,
};

/* --- any lock object (sharedctypes' synchronized wrappers) --- */

int cmp_py_lock_acquire_any(PyObject *lock)
{
    cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(lock));
    if (st && PyObject_TypeCheck(lock, st->Lock_type)) {
        cmp_py_lock *l = (cmp_py_lock *)lock;
        if (cmp_lock_tryacquire(l->lock) == 0) {
            l->owner = PyThread_get_thread_ident();
            return 0;
        }
        return cmp_py_Lock_acquire_deadline(l, NULL) < 0 ? -1 : 0;
    }
    if (st && PyObject_TypeCheck(lock, st->RLock_type))
        return cmp_py_RLock_acquire_count((cmp_py_rlock *)lock, 1, NULL) < 0 ? -1 : 0;
    PyObject *r = PyObject_CallMethod(lock, "acquire", NULL);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

int cmp_py_lock_release_any(PyObject *lock)
{
    cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(lock));
    PyObject *r;
    if (st && PyObject_TypeCheck(lock, st->Lock_type))
        r = cmp_py_Lock_release(lock, NULL);
    else if (st && PyObject_TypeCheck(lock, st->RLock_type))
        r = cmp_py_RLock_release(lock, NULL);
    else
        r = PyObject_CallMethod(lock, "release", NULL);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

int cmp_py_lock_init(PyObject *module, cmp_py_state *st)
{
    st->Lock_type = cmp_py_add_type(module, &Lock_spec, NULL);
    if (!st->Lock_type)
        return -1;
    return cmp_py_add_fast_methods(st, st->Lock_type, Lock_with_methods,
                                   offsetof(cmp_py_lock, with_cache));
}
