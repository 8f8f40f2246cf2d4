/*
 * Condition: multiprocessing.Condition on a cmp_cond_t in the shared heap,
 * over one of our Lock or RLock objects (an RLock by default).
 *
 * wait() uses libcmp's split form: register while still holding the lock,
 * release the lock (every level of an RLock), sleep with the GIL released,
 * then re-acquire. A signal during the sleep runs the Python handlers; if
 * one raises (KeyboardInterrupt), the waiter withdraws, takes the lock back
 * and the exception propagates.
 */
#include "shared_object.h"

#include <errno.h>
#include <math.h>

typedef struct {
    CMP_PY_SHARED_HEAD
    cmp_cond_t *cond; /* inside block */
    PyObject *lock;   /* our Lock or RLock */
    int is_rlock;
} cmp_py_condition;

static const char CONDITION_DOC[] =
    "Condition(lock=None)\n--\n\n"
    "A condition variable shared between processes (multiprocessing.Condition)\n"
    "over a cmultiprocessing Lock or RLock (a new RLock by default).\n\n"
    "If a process dies while holding the lock, the next process to acquire it\n"
    "(also when wait() takes it back) takes it over and emits\n"
    "cmultiprocessing.AbandonedLockWarning.";

static int is_mine(cmp_py_condition *self)
{
    if (self->is_rlock)
        return cmp_rlock_is_mine(((cmp_py_rlock *)self->lock)->rlock);
    return cmp_py_Lock_is_mine((cmp_py_lock *)self->lock);
}

/* The libcmp lock under the Condition's Lock or RLock. */
static cmp_lock_t *base_lock(cmp_py_condition *self)
{
    if (self->is_rlock)
        return &((cmp_py_rlock *)self->lock)->rlock->lock;
    return ((cmp_py_lock *)self->lock)->lock;
}

/* Notifies as the lock's holder (checked by the caller), so the waiters
 * granted a wake-up run once it is released (cmp_cond_notify_lock). */
static void notify_held(cmp_py_condition *self, uint32_t n)
{
    int rc = self->is_rlock
                 ? cmp_cond_notify_rlock(self->cond, ((cmp_py_rlock *)self->lock)->rlock, n)
                 : cmp_cond_notify_lock(self->cond, base_lock(self), n);
    if (rc < 0)
        cmp_cond_notify(self->cond, n); /* another thread of ours holds it */
}

static int reacquire_lock(cmp_py_condition *self, uint32_t depth)
{
    if (self->is_rlock)
        return cmp_py_RLock_acquire_count((cmp_py_rlock *)self->lock, depth, NULL);
    return cmp_py_Lock_acquire_deadline((cmp_py_lock *)self->lock, NULL);
}

/* Takes the lock back after a wait (depth levels of an RLock). */
static int reacquire(cmp_py_condition *self, uint32_t depth)
{
    int rc = reacquire_lock(self, depth);
    if (rc > 0)
        cmp_cond_relocked(self->cond, base_lock(self));
    return rc;
}

struct cond_wait_args {
    cmp_cond_t *cond;
    uint32_t ticket;
};

static int cond_wait(void *arg, const struct timespec *deadline)
{
    struct cond_wait_args *a = arg;
    return cmp_cond_sleep(a->cond, a->ticket, deadline);
}

/* 1 notified, 0 timed out, -1 exception (lock held again unless taking it
 * back was itself interrupted). */
static int wait_impl(cmp_py_condition *self, const struct timespec *deadline)
{
    if (!is_mine(self)) {
        PyErr_SetString(PyExc_AssertionError, "must acquire() condition before using wait()");
        return -1;
    }
    uint32_t ticket, depth = 1;
    cmp_cond_prepare_wait(self->cond, &ticket);
    if (self->is_rlock) {
        int d = cmp_rlock_release_all(((cmp_py_rlock *)self->lock)->rlock);
        depth = d > 0 ? (uint32_t)d : 1;
    } else {
        cmp_lock_release(((cmp_py_lock *)self->lock)->lock);
    }
    struct cond_wait_args a = {self->cond, ticket};
    int rc = cmp_py_wait(cond_wait, &a, deadline, 0);
    if (rc == -EINTR) {
        /* a signal handler raised: a grant already made to us is
         * consumed, never lost */
        cmp_cond_cancel_wait(self->cond, ticket);
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        int r = reacquire(self, depth);
        if (r < 0)
            PyErr_Clear(); /* the first exception is the one to report */
        PyErr_Restore(type, value, tb);
        return -1;
    }
    if (reacquire(self, depth) < 0)
        return -1;
    return rc == 0;
}

static PyObject *Condition_wait(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    PyObject *timeout;
    if (cmp_py_parse_args("wait", args, nargs, kwnames, names, 1, &timeout) < 0)
        return NULL;
    struct timespec storage;
    const struct timespec *deadline;
    if (cmp_py_deadline(timeout, &storage, &deadline) < 0)
        return NULL;
    int r = wait_impl((cmp_py_condition *)op, deadline);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *Condition_wait_for(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"predicate", "timeout", NULL};
    PyObject *predicate, *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:wait_for", kwlist, &predicate, &timeout))
        return NULL;
    PyObject *result = PyObject_CallNoArgs(predicate);
    if (!result)
        return NULL;
    struct timespec storage;
    const struct timespec *deadline = NULL;
    int first = 1;
    for (;;) {
        int truth = PyObject_IsTrue(result);
        if (truth < 0)
            goto fail;
        if (truth)
            return result;
        /* converted only once a wait is needed: a predicate already true
         * returns it whatever the timeout, as in the stdlib */
        if (first && cmp_py_deadline(timeout, &storage, &deadline) < 0)
            goto fail;
        first = 0;
        if (deadline && cmp_deadline_remaining(deadline) <= 0)
            return result;
        if (wait_impl((cmp_py_condition *)op, deadline) < 0)
            goto fail;
        Py_SETREF(result, PyObject_CallNoArgs(predicate));
        if (!result)
            return NULL;
    }
fail:
    Py_DECREF(result);
    return NULL;
}

/* The stdlib wakes sleepers while their count is below n, so any real
 * number works: 1.5 wakes up to 2, NaN or n <= 0 none, inf all; a
 * non-number is a TypeError. */
static int notify_count(PyObject *n_obj, uint32_t *n)
{
    if (PyIndex_Check(n_obj)) {
        PyObject *index = PyNumber_Index(n_obj);
        if (!index)
            return -1;
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(index, &overflow);
        Py_DECREF(index);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (overflow > 0 || v > (long long)UINT32_MAX)
            *n = UINT32_MAX;
        else if (overflow < 0 || v <= 0)
            *n = 0;
        else
            *n = (uint32_t)v;
        return 0;
    }
    double v = PyFloat_AsDouble(n_obj);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    if (!(v > 0)) /* NaN too */
        *n = 0;
    else if (v >= (double)UINT32_MAX)
        *n = UINT32_MAX;
    else
        *n = (uint32_t)ceil(v);
    return 0;
}

static PyObject *Condition_notify(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    cmp_py_condition *self = (cmp_py_condition *)op;
    static const char *const names[] = {"n"};
    PyObject *n_obj;
    if (cmp_py_parse_args("notify", args, nargs, kwnames, names, 1, &n_obj) < 0)
        return NULL;
    /* ownership first: the stdlib asserts it before looking at n */
    if (!is_mine(self)) {
        PyErr_SetString(PyExc_AssertionError, "lock is not owned");
        return NULL;
    }
    uint32_t n = 1;
    if (n_obj && notify_count(n_obj, &n) < 0)
        return NULL;
    notify_held(self, n);
    Py_RETURN_NONE;
}

static PyObject *Condition_notify_all(PyObject *op, PyObject *unused)
{
    (void)unused;
    cmp_py_condition *self = (cmp_py_condition *)op;
    if (!is_mine(self)) {
        PyErr_SetString(PyExc_AssertionError, "lock is not owned");
        return NULL;
    }
    notify_held(self, UINT32_MAX);
    Py_RETURN_NONE;
}

static PyObject *Condition_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames)
{
    cmp_py_condition *self = (cmp_py_condition *)op;
    return self->is_rlock ? cmp_py_RLock_acquire(self->lock, args, nargs, kwnames)
                          : cmp_py_Lock_acquire(self->lock, args, nargs, kwnames);
}

static PyObject *Condition_release(PyObject *op, PyObject *unused)
{
    cmp_py_condition *self = (cmp_py_condition *)op;
    return self->is_rlock ? cmp_py_RLock_release(self->lock, unused)
                          : cmp_py_Lock_release(self->lock, unused);
}

static PyObject *Condition_enter(PyObject *op, PyObject *unused)
{
    (void)unused;
    cmp_py_condition *self = (cmp_py_condition *)op;
    PyObject *r = self->is_rlock ? cmp_py_RLock_acquire(self->lock, NULL, 0, NULL)
                                 : cmp_py_Lock_acquire(self->lock, NULL, 0, NULL);
    return r;
}

static PyObject *Condition_exit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    if (cmp_py_check_exit_args(nargs) < 0)
        return NULL;
    return Condition_release(op, NULL);
}

static PyObject *Condition_reduce(PyObject *op, PyObject *unused)
{
    (void)unused;
    cmp_py_condition *self = (cmp_py_condition *)op;
    if (!cmp_py_spawning())
        return cmp_py_refuse_pickle(op, "Condition");
    PyObject *extra = Py_BuildValue("(Oi)", self->lock, self->is_rlock);
    PyObject *r = extra ? cmp_py_shared_reduce(op, "Condition", extra) : NULL;
    Py_XDECREF(extra);
    return r;
}

int cmp_py_condition_adopt(PyObject *op, void *mem, PyObject *extra)
{
    cmp_py_condition *self = (cmp_py_condition *)op;
    PyObject *lock;
    int is_rlock;
    if (!PyArg_ParseTuple(extra, "Oi:_rebuild_shared", &lock, &is_rlock))
        return -1;
    self->cond = mem;
    self->lock = Py_NewRef(lock);
    self->is_rlock = is_rlock;
    return 0;
}

static PyObject *Condition_repr(PyObject *op)
{
    cmp_py_condition *self = (cmp_py_condition *)op;
    PyObject *cls = PyObject_GetAttrString((PyObject *)Py_TYPE(op), "__name__");
    if (!cls)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("<%U(%R, %lu)>", cls, self->lock,
                                       (unsigned long)cmp_cond_n_waiting(self->cond));
    Py_DECREF(cls);
    return r;
}

/* Condition(lock=None, *, ctx=None): a new reference to the lock (a new
 * RLock for None) and whether it is an RLock, or NULL. */
static PyObject *condition_lock(PyTypeObject *type, PyObject *args, PyObject *kwds, int *rlock)
{
    static char *kwlist[] = {"lock", "ctx", NULL};
    PyObject *lock = Py_None, *ctx = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$O:Condition", kwlist, &lock, &ctx))
        return NULL;
    cmp_py_state *st = cmp_py_state_of_type(type);
    if (!st) {
        PyErr_SetString(PyExc_SystemError, "cmultiprocessing._cmp is not initialized");
        return NULL;
    }
    int is_rlock;
    if (lock == Py_None) {
        lock = PyObject_CallNoArgs((PyObject *)st->RLock_type);
        if (!lock)
            return NULL;
        is_rlock = 1;
    } else if (PyObject_TypeCheck(lock, st->RLock_type)) {
        Py_INCREF(lock);
        is_rlock = 1;
    } else if (PyObject_TypeCheck(lock, st->Lock_type)) {
        Py_INCREF(lock);
        is_rlock = 0;
    } else {
        /* AttributeError, as the stdlib's Condition raises when it looks
         * for lock.acquire; a lock of another kind (threading's, the
         * stdlib's) is refused here too, where the stdlib fails only at
         * wait() or notify(): ours waits on the lock's shared word */
        PyErr_Format(PyExc_AttributeError,
                     "Condition() needs a cmultiprocessing Lock or RLock, not %.200s",
                     Py_TYPE(lock)->tp_name);
        return NULL;
    }
    *rlock = is_rlock;
    return lock;
}

static int Condition_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    if (!CMP_PY_FOREIGN_INIT(Py_TYPE(op), Condition_init))
        return 0;
    cmp_py_condition *self = (cmp_py_condition *)op;
    int is_rlock;
    PyObject *lock = condition_lock(Py_TYPE(op), args, kwds, &is_rlock);
    if (!lock)
        return -1;
    Py_XSETREF(self->lock, lock);
    self->is_rlock = is_rlock;
    return 0;
}

static PyObject *Condition_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    int is_rlock;
    if (CMP_PY_FOREIGN_INIT(type, Condition_init))
        args = cmp_py_empty_tuple, kwds = NULL;
    PyObject *lock = condition_lock(type, args, kwds, &is_rlock);
    if (!lock)
        return NULL;
    void *mem;
    cmp_py_condition *self = (cmp_py_condition *)cmp_py_shared_new(type, sizeof(cmp_cond_t), &mem);
    if (!self) {
        Py_DECREF(lock);
        return NULL;
    }
    self->cond = mem;
    cmp_cond_init(self->cond);
    self->lock = lock;
    self->is_rlock = is_rlock;
    return (PyObject *)self;
}

static int Condition_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((cmp_py_condition *)op)->lock);
    return 0;
}

static int Condition_clear(PyObject *op)
{
    Py_CLEAR(((cmp_py_condition *)op)->lock);
    return 0;
}

static void Condition_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    Condition_clear(op);
    cmp_py_shared_dealloc(op, NULL);
}

/* ---- the stdlib's counters, as views ------------------------------------ */

/* The stdlib's Condition is three semaphores, whose values CPython's suite
 * reads to check that nobody is left waiting (cond._sleeping_count,
 * _woken_count, _wait_semaphore; each .get_value()). Ours has the numbers
 * they stand for: the waiters registered in wait() (sleeping, from the
 * stdlib's side: entered and not yet left) and the wake-ups granted but
 * not yet taken (woken and not yet returned, the wait semaphore's value),
 * so that sleeping - woken is the waiters nobody notified, as there. */
typedef struct {
    PyObject_HEAD
    PyObject *owner; /* the Condition */
    const uint32_t *count;
} CountObject;

static PyTypeObject *Count_type;

static PyObject *Count_get_value(PyObject *op, PyObject *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLong(__atomic_load_n(((CountObject *)op)->count, __ATOMIC_RELAXED));
}

static void Count_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    Py_CLEAR(((CountObject *)op)->owner);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyMethodDef Count_methods[] = {
    {"get_value", Count_get_value, METH_NOARGS, "get_value()\n--\n\nThe count, now."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Count_slots[] = {
    {Py_tp_dealloc, Count_dealloc},
    {Py_tp_methods, Count_methods},
    {0, NULL},
};

static PyType_Spec Count_spec = {
    .name = "cmultiprocessing._cmp._ConditionCount",
    .basicsize = sizeof(CountObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Count_slots,
};

static PyObject *Condition_count(PyObject *op, void *which)
{
    cmp_py_condition *self = (cmp_py_condition *)op;
    CountObject *c = (CountObject *)Count_type->tp_alloc(Count_type, 0);
    if (!c)
        return NULL;
    c->owner = Py_NewRef(op);
    c->count = which ? &self->cond->nsignals : &self->cond->nwaiters;
    return (PyObject *)c;
}

static PyGetSetDef Condition_getset[] = {
    {"_sleeping_count", Condition_count, NULL, "Waiters in wait() (a view, get_value()).", NULL},
    {"_woken_count", Condition_count, NULL, "Wake-ups granted, not yet taken.", (void *)1},
    {"_wait_semaphore", Condition_count, NULL, "Wake-ups granted, not yet taken.", (void *)1},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Condition_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Condition_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(block=True, timeout=None)\n--\n\nAcquire the underlying lock."},
    {"release", Condition_release, METH_NOARGS, "release()\n--\n\nRelease the underlying lock."},
    {"wait", (PyCFunction)(void (*)(void))Condition_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait(timeout=None)\n--\n\n"
     "Release the lock, sleep until notified or timeout seconds pass, take the\n"
     "lock back. Return False if the timeout expired, True otherwise."},
    {"wait_for", (PyCFunction)(void (*)(void))Condition_wait_for, METH_VARARGS | METH_KEYWORDS,
     "wait_for(predicate, timeout=None)\n--\n\n"
     "Wait until predicate() is true or the timeout expires; return the last\n"
     "value of predicate()."},
    {"notify", (PyCFunction)(void (*)(void))Condition_notify, METH_FASTCALL | METH_KEYWORDS,
     "notify(n=1)\n--\n\nWake up to n of the processes or threads waiting."},
    {"notify_all", Condition_notify_all, METH_NOARGS,
     "notify_all()\n--\n\nWake every process or thread waiting."},
    {"__reduce__", Condition_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* Installed by cmp_py_add_fast_methods(): `with` binds them on every use. */
static PyMethodDef Condition_with_methods[] = {
    {"__enter__", Condition_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nAcquire the underlying lock; return its result."},
    {"__exit__", (PyCFunction)(void (*)(void))Condition_exit, METH_FASTCALL,
     "__exit__($self, /, *args)\n--\n\nRelease the underlying lock."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Condition_slots[] = {
    {Py_tp_doc, (void *)CONDITION_DOC},
    {Py_tp_new, Condition_new},
    {Py_tp_init, Condition_init},
    {Py_tp_dealloc, Condition_dealloc},
    {Py_tp_traverse, Condition_traverse},
    {Py_tp_clear, Condition_clear},
    {Py_tp_repr, Condition_repr},
    {Py_tp_methods, Condition_methods},
    {Py_tp_members, cmp_py_shared_members},
    {Py_tp_getset, Condition_getset},
    {0, NULL},
};

static PyType_Spec Condition_spec = {
    .name = "cmultiprocessing.synchronize.Condition",
    .basicsize = sizeof(cmp_py_condition),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Condition_slots,
};

int cmp_py_condition_init(PyObject *module, cmp_py_state *st)
{
    st->Condition_type = cmp_py_add_type(module, &Condition_spec, NULL);
    if (!st->Condition_type)
        return -1;
    Count_type = (PyTypeObject *)cmp_py_type_from_spec(module, &Count_spec, NULL);
    if (!Count_type)
        return -1;
    return cmp_py_add_fast_methods(st, st->Condition_type, Condition_with_methods, 0);
}
