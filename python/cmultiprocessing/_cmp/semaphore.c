/*
 * Semaphore and BoundedSemaphore: multiprocessing's, on a cmp_sem_t in the
 * shared heap. An uncontended acquire or release is one compare-and-swap
 * with the GIL held; only a contended acquire releases the GIL and sleeps.
 * BoundedSemaphore is a subclass whose bound is its initial value.
 */
#include "shared_object.h"

#include <errno.h>
#include <limits.h>

typedef struct {
    CMP_PY_SHARED_HEAD
    cmp_sem_t *sem; /* inside block */
    cmp_py_fast_cache with_cache;
} SemObject;

static const char SEMAPHORE_DOC[] =
    "Semaphore(value=1)\n--\n\n"
    "A counting semaphore shared between processes (multiprocessing.Semaphore).";

static const char BOUNDED_DOC[] =
    "BoundedSemaphore(value=1)\n--\n\n"
    "A semaphore that cannot be released above its initial value\n"
    "(multiprocessing.BoundedSemaphore): releasing it too often raises\n"
    "ValueError.";

static int sem_wait(void *sem, const struct timespec *deadline)
{
    return cmp_sem_acquire(sem, deadline);
}

/* Slow path: sleep with the GIL released, running signal handlers between
 * tries. Returns 1 acquired, 0 timed out, -1 with an exception. */
static int sem_acquire_blocking(SemObject *self, const struct timespec *deadline)
{
    int rc = cmp_py_wait(sem_wait, self->sem, deadline, 0);
    if (rc == -EINTR)
        return -1;
    if (rc == -ETIMEDOUT)
        return 0;
    if (rc < 0) {
        cmp_py_raise(rc);
        return -1;
    }
    return 1;
}

static PyObject *Sem_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    SemObject *self = (SemObject *)op;
    int block = 1;
    PyObject *timeout = NULL;
    if ((nargs || kwnames) &&
        cmp_py_parse_acquire_args("acquire", args, nargs, kwnames, &block, &timeout) < 0)
        return NULL;
    if (cmp_sem_tryacquire(self->sem) == 0)
        Py_RETURN_TRUE;
    if (!block)
        Py_RETURN_FALSE;
    struct timespec storage;
    const struct timespec *deadline;
    if (cmp_py_deadline(timeout, &storage, &deadline) < 0)
        return NULL;
    int r = sem_acquire_blocking(self, deadline);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *Sem_release(PyObject *op, PyObject *unused)
{
    (void)unused;
    if (cmp_sem_release(((SemObject *)op)->sem) < 0) {
        /* the stdlib says the same for both kinds */
        PyErr_SetString(PyExc_ValueError, "semaphore or lock released too many times");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Sem_enter(PyObject *op, PyObject *unused)
{
    (void)unused;
    SemObject *self = (SemObject *)op;
    if (cmp_sem_tryacquire(self->sem) != 0 && sem_acquire_blocking(self, NULL) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *Sem_exit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    if (cmp_py_check_exit_args(nargs) < 0)
        return NULL;
    return Sem_release(op, NULL);
}

static PyObject *Sem_is_zero(PyObject *op, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(cmp_sem_value(((SemObject *)op)->sem) == 0);
}

static PyObject *Sem_get_value(PyObject *op, PyObject *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLong(cmp_sem_value(((SemObject *)op)->sem));
}

static PyObject *Sem_reduce(PyObject *op, PyObject *unused)
{
    (void)unused;
    return cmp_py_shared_reduce(op, NULL, NULL);
}

int cmp_py_semaphore_adopt(PyObject *op, void *mem, PyObject *extra)
{
    (void)extra;
    ((SemObject *)op)->sem = mem;
    return 0;
}

static int is_bounded(PyObject *op)
{
    cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(op));
    return st && PyObject_TypeCheck(op, st->BoundedSemaphore_type);
}

static PyObject *Sem_repr(PyObject *op)
{
    SemObject *self = (SemObject *)op;
    PyObject *name = PyObject_GetAttrString((PyObject *)Py_TYPE(op), "__name__");
    if (!name)
        return NULL;
    PyObject *r;
    unsigned long value = cmp_sem_value(self->sem);
    if (is_bounded(op))
        r = PyUnicode_FromFormat("<%U(value=%lu, maxvalue=%lu)>", name, value,
                                 (unsigned long)self->sem->max);
    else
        r = PyUnicode_FromFormat("<%U(value=%lu)>", name, value);
    Py_DECREF(name);
    return r;
}

/* value as the stdlib takes it: a C int, negative rejected by the OS. */
static int parse_value(PyObject *obj, uint32_t *out)
{
    if (!obj) {
        *out = 1;
        return 0;
    }
    PyObject *index = PyNumber_Index(obj);
    if (!index)
        return -1;
    int overflow;
    long v = PyLong_AsLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v > INT_MAX || v < INT_MIN) {
        PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to C int");
        return -1;
    }
    if (v < 0) {
        /* multiprocessing raises the OSError of sem_open() here */
        cmp_py_raise(-EINVAL);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* Semaphore(value=1, *, ctx=None), as multiprocessing.synchronize's:
 * the initial value and the bound (BoundedSemaphore: the initial value). */
static int sem_args(PyTypeObject *type, PyObject *args, PyObject *kwds, uint32_t *value,
                    uint32_t *max)
{
    static char *kwlist[] = {"value", "ctx", NULL};
    PyObject *value_obj = NULL, *ctx = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$O", kwlist, &value_obj, &ctx))
        return -1;
    if (parse_value(value_obj, value) < 0)
        return -1;
    cmp_py_state *st = cmp_py_state_of_type(type);
    *max = st && PyType_IsSubtype(type, st->BoundedSemaphore_type) ? *value : CMP_SEM_VALUE_MAX;
    return 0;
}

static int Sem_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    uint32_t value, max;
    if (!CMP_PY_FOREIGN_INIT(Py_TYPE(op), Sem_init))
        return 0;
    if (sem_args(Py_TYPE(op), args, kwds, &value, &max) < 0)
        return -1;
    /* __init__ runs before any other process has the semaphore */
    cmp_sem_init(((SemObject *)op)->sem, value, max);
    return 0;
}

static PyObject *Sem_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    uint32_t value, max;
    if (CMP_PY_FOREIGN_INIT(type, Sem_init))
        args = cmp_py_empty_tuple, kwds = NULL;
    if (sem_args(type, args, kwds, &value, &max) < 0)
        return NULL;
    void *mem;
    SemObject *self = (SemObject *)cmp_py_shared_new(type, sizeof(cmp_sem_t), &mem);
    if (!self)
        return NULL;
    self->sem = mem;
    cmp_sem_init(self->sem, value, max);
    return (PyObject *)self;
}

static void Sem_finalize(PyObject *op)
{
    cmp_py_fast_cache_finalize(op, &((SemObject *)op)->with_cache);
}

static void Sem_dealloc(PyObject *op)
{
    cmp_py_shared_dealloc(op, &((SemObject *)op)->with_cache);
}

static PyMethodDef Sem_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Sem_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(block=True, timeout=None)\n--\n\n"
     "Decrement the counter, waiting while it is zero. Return True, or False\n"
     "when block is false and the counter is zero, or when timeout seconds\n"
     "passed."},
    {"release", Sem_release, METH_NOARGS,
     "release()\n--\n\nIncrement the counter, waking one waiter."},
    {"get_value", Sem_get_value, METH_NOARGS, "get_value()\n--\n\nThe current counter."},
    {"_get_value", Sem_get_value, METH_NOARGS, "_get_value()\n--\n\nget_value()."},
    {"_is_zero", Sem_is_zero, METH_NOARGS, "_is_zero()\n--\n\nWhether the counter is 0."},
    {"__reduce__", Sem_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* The stdlib's Queue, built on a context's primitives (concurrent.futures'
 * _SafeQueue subclasses it, and gets ours with mp_context=), reads
 * _sem._semlock._is_zero() and _get_value(): the semaphore is its own
 * _semlock. */
static PyObject *Sem_semlock(PyObject *op, void *closure)
{
    (void)closure;
    return Py_NewRef(op);
}

static PyGetSetDef Sem_getset[] = {
    {"_semlock", Sem_semlock, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* Installed by cmp_py_add_fast_methods() on Semaphore and again on
 * BoundedSemaphore (the per-instance cache serves exact types only):
 * `with` binds them on every use. */
static PyMethodDef Sem_with_methods[] = {
    {"__enter__", Sem_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nDecrement the counter, waiting while it is zero; return True."},
    {"__exit__", (PyCFunction)(void (*)(void))Sem_exit, METH_FASTCALL,
     "__exit__($self, /, *args)\n--\n\nIncrement the counter, as release()."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Sem_slots[] = {
    {Py_tp_doc, (void *)SEMAPHORE_DOC},
    {Py_tp_new, Sem_new},
    {Py_tp_init, Sem_init},
    {Py_tp_dealloc, Sem_dealloc},
    {Py_tp_finalize, Sem_finalize},
    {Py_tp_repr, Sem_repr},
    {Py_tp_methods, Sem_methods},
    {Py_tp_getset, Sem_getset},
    {Py_tp_members, cmp_py_shared_members},
    {0, NULL},
};

static PyType_Spec Sem_spec = {
    .name = "cmultiprocessing.synchronize.Semaphore",
    .basicsize = sizeof(SemObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Sem_slots,
};

static PyType_Slot Bounded_slots[] = {
    {Py_tp_doc, (void *)BOUNDED_DOC},
    {0, NULL},
};

static PyType_Spec Bounded_spec = {
    .name = "cmultiprocessing.synchronize.BoundedSemaphore",
    .basicsize = sizeof(SemObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Bounded_slots,
};

int cmp_py_semaphore_init(PyObject *module, cmp_py_state *st)
{
    st->Semaphore_type = cmp_py_add_type(module, &Sem_spec, NULL);
    if (!st->Semaphore_type || cmp_py_add_fast_methods(st, st->Semaphore_type, Sem_with_methods,
                                                       offsetof(SemObject, with_cache)) < 0)
        return -1;
    st->BoundedSemaphore_type =
        cmp_py_add_type(module, &Bounded_spec, (PyObject *)st->Semaphore_type);
    if (!st->BoundedSemaphore_type)
        return -1;
    return cmp_py_add_fast_methods(st, st->BoundedSemaphore_type, Sem_with_methods,
                                   offsetof(SemObject, with_cache));
}
