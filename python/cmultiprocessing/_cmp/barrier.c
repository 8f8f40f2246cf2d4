/*
 * Barrier: multiprocessing.Barrier (threading.Barrier's semantics across
 * processes) on a cmp_barrier_t in the shared heap.
 *
 * The action is a Python callable of this process (inherited by forked
 * children); libcmp calls it back in the last process to arrive, with the
 * GIL released, so the callback takes the GIL back around the call. An
 * exception in it breaks the barrier and propagates in that process; the
 * others get BrokenBarrierError.
 */
#include "shared_object.h"

#include <errno.h>

typedef struct {
    CMP_PY_SHARED_HEAD
    cmp_barrier_t *barrier; /* inside block */
    PyObject *parties;      /* as given: what the parties attribute returns */
    PyObject *action;       /* callable or None */
    PyObject *timeout;      /* default timeout for wait(): None or a number */
} BarrierObject;

static const char BARRIER_DOC[] =
    "Barrier(parties, action=None, timeout=None)\n--\n\n"
    "A barrier for a fixed number of processes (multiprocessing.Barrier):\n"
    "wait() blocks until `parties` processes have called it, then releases\n"
    "them all and returns each a distinct index in range(parties). `action`,\n"
    "if given, is called by the last process to arrive before the others are\n"
    "released. `timeout` is the default for wait().";

struct action_call {
    PyObject *action;
    PyThreadState *tstate;                   /* saved while libcmp runs without the GIL */
    PyObject *exc_type, *exc_value, *exc_tb; /* what the action raised */
};

static int run_action(void *arg)
{
    struct action_call *call = arg;
    PyEval_RestoreThread(call->tstate);
    PyObject *r = PyObject_CallNoArgs(call->action);
    int failed = r == NULL;
    if (failed)
        PyErr_Fetch(&call->exc_type, &call->exc_value, &call->exc_tb);
    Py_XDECREF(r);
    call->tstate = PyEval_SaveThread();
    return failed;
}

static PyObject *Barrier_wait(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    BarrierObject *self = (BarrierObject *)op;
    static const char *const names[] = {"timeout"};
    PyObject *timeout;
    if (cmp_py_parse_args("wait", args, nargs, kwnames, names, 1, &timeout) < 0)
        return NULL;
    if (timeout == NULL || timeout == Py_None)
        timeout = self->timeout;
    struct timespec storage;
    const struct timespec *deadline;
    if (cmp_py_deadline(timeout, &storage, &deadline) < 0)
        return NULL;

    struct action_call call = {.action = self->action};
    cmp_barrier_action_fn fn = self->action != Py_None ? run_action : NULL;
    int rc;
    /* the action may drop the last reference to this barrier */
    Py_INCREF(op);
    for (;;) {
        call.tstate = PyEval_SaveThread();
        rc = cmp_barrier_wait(self->barrier, deadline, fn, &call);
        PyEval_RestoreThread(call.tstate);
        if (rc != -EINTR)
            break;
        /* we withdrew (or broke the barrier if we could not): handlers
         * may raise, else arrive again with the same deadline */
        if (PyErr_CheckSignals() < 0) {
            Py_DECREF(op);
            return NULL;
        }
    }
    Py_DECREF(op);
    if (call.exc_type) {
        PyErr_Restore(call.exc_type, call.exc_value, call.exc_tb);
        return NULL;
    }
    if (rc >= 0)
        return PyLong_FromLong(rc);
    if (rc == -EPIPE || rc == -ETIMEDOUT) {
        cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(op));
        PyErr_SetNone(st ? st->BrokenBarrierError : PyExc_RuntimeError);
        return NULL;
    }
    return cmp_py_raise(rc);
}

static PyObject *Barrier_abort(PyObject *op, PyObject *unused)
{
    (void)unused;
    cmp_barrier_t *b = ((BarrierObject *)op)->barrier;
    /* the guard is held only briefly, but may need recovering from a dead
     * holder: let other threads run meanwhile */
    Py_BEGIN_ALLOW_THREADS
    cmp_barrier_abort(b);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Barrier_reset(PyObject *op, PyObject *unused)
{
    (void)unused;
    cmp_barrier_t *b = ((BarrierObject *)op)->barrier;
    Py_BEGIN_ALLOW_THREADS
    cmp_barrier_reset(b);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Barrier_get_parties(PyObject *op, void *closure)
{
    (void)closure;
    return Py_NewRef(((BarrierObject *)op)->parties);
}

static PyObject *Barrier_get_n_waiting(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(cmp_barrier_n_waiting(((BarrierObject *)op)->barrier));
}

static PyObject *Barrier_get_broken(PyObject *op, void *closure)
{
    (void)closure;
    return PyBool_FromLong(cmp_barrier_broken(((BarrierObject *)op)->barrier));
}

static PyObject *Barrier_reduce(PyObject *op, PyObject *unused)
{
    (void)unused;
    /* the stdlib's Barrier pickles its Condition first, which refuses */
    BarrierObject *self = (BarrierObject *)op;
    if (!cmp_py_spawning())
        return cmp_py_refuse_pickle(op, "Condition");
    PyObject *extra = PyTuple_Pack(3, self->parties, self->action, self->timeout);
    PyObject *r = extra ? cmp_py_shared_reduce(op, "Condition", extra) : NULL;
    Py_XDECREF(extra);
    return r;
}

int cmp_py_barrier_adopt(PyObject *op, void *mem, PyObject *extra)
{
    BarrierObject *self = (BarrierObject *)op;
    PyObject *parties, *action, *timeout;
    if (!PyArg_ParseTuple(extra, "OOO:_rebuild_shared", &parties, &action, &timeout))
        return -1;
    self->barrier = mem;
    self->parties = Py_NewRef(parties);
    self->action = Py_NewRef(action);
    self->timeout = Py_NewRef(timeout);
    return 0;
}

static PyObject *Barrier_repr(PyObject *op)
{
    BarrierObject *self = (BarrierObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject *module = PyObject_GetAttrString((PyObject *)tp, "__module__");
    PyObject *qualname = module ? PyObject_GetAttrString((PyObject *)tp, "__qualname__") : NULL;
    PyObject *r = NULL;
    if (qualname) {
        if (cmp_barrier_broken(self->barrier))
            r = PyUnicode_FromFormat("<%S.%S at %p: broken>", module, qualname, (void *)op);
        else
            r = PyUnicode_FromFormat("<%S.%S at %p: waiters=%u/%R>", module, qualname, (void *)op,
                                     (unsigned)cmp_barrier_n_waiting(self->barrier), self->parties);
    }
    Py_XDECREF(module);
    Py_XDECREF(qualname);
    return r;
}

/* A count of waiters no set of processes reaches (pids and threads run
 * out long before), yet small enough for libcmp's int arrival index. */
#define NEVER_TRIPS ((uint32_t)INT32_MAX)

/* The stdlib's Barrier keeps `parties` as given and trips when an
 * arrival's index + 1 compares equal to it, so it accepts any object:
 * True and 2.0 trip like 1 and 2, while 0, -1, 1.5, 'x' or 2**64 never
 * trip and every wait() ends by its timeout (BrokenBarrierError) or an
 * abort(). Refusing those would break drop-in use, so they become a
 * barrier that never trips. Sets *trip; -1 only for errors that must
 * propagate (MemoryError, KeyboardInterrupt). */
static int trip_count(PyObject *parties, uint32_t *trip)
{
    *trip = NEVER_TRIPS;
    PyObject *n = PyNumber_Long(parties);
    int equal = n ? PyObject_RichCompareBool(n, parties, Py_EQ) : -1;
    long long v = -1;
    if (equal > 0) {
        int overflow;
        v = PyLong_AsLongLongAndOverflow(n, &overflow);
        if (overflow)
            v = -1;
    }
    Py_XDECREF(n);
    if (PyErr_Occurred()) {
        /* int('x'), int(nan), a failing __eq__: the stdlib's comparison
         * would not match either */
        if (!PyErr_ExceptionMatches(PyExc_Exception) || PyErr_ExceptionMatches(PyExc_MemoryError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    if (v >= 1 && v < (long long)NEVER_TRIPS)
        *trip = (uint32_t)v;
    return 0;
}

/* Barrier(parties, action=None, timeout=None, *, ctx=None): borrowed
 * references to the three, and the trip count. */
static int barrier_args(PyObject *args, PyObject *kwds, PyObject **parties, PyObject **action,
                        PyObject **timeout, uint32_t *trip)
{
    static char *kwlist[] = {"parties", "action", "timeout", "ctx", NULL};
    PyObject *ctx = NULL;
    *action = *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO$O:Barrier", kwlist, parties, action, timeout,
                                     &ctx))
        return -1;
    return trip_count(*parties, trip);
}

static int Barrier_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    if (!CMP_PY_FOREIGN_INIT(Py_TYPE(op), Barrier_init))
        return 0;
    BarrierObject *self = (BarrierObject *)op;
    PyObject *parties_obj, *action, *timeout;
    uint32_t trip;
    if (barrier_args(args, kwds, &parties_obj, &action, &timeout, &trip) < 0)
        return -1;
    /* __init__ runs before any other process has the barrier */
    cmp_barrier_init(self->barrier, trip);
    Py_XSETREF(self->parties, Py_NewRef(parties_obj));
    Py_XSETREF(self->action, Py_NewRef(action));
    Py_XSETREF(self->timeout, Py_NewRef(timeout));
    return 0;
}

static PyObject *Barrier_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *parties_obj, *action, *timeout;
    uint32_t trip;
    PyObject *one = NULL;
    if (CMP_PY_FOREIGN_INIT(type, Barrier_init)) {
        /* a placeholder until __init__ says how many */
        if (!(one = Py_BuildValue("(i)", 1)))
            return NULL;
        args = one, kwds = NULL;
    }
    int rc = barrier_args(args, kwds, &parties_obj, &action, &timeout, &trip);
    if (rc < 0) {
        Py_XDECREF(one);
        return NULL;
    }
    void *mem;
    BarrierObject *self = (BarrierObject *)cmp_py_shared_new(type, sizeof(cmp_barrier_t), &mem);
    if (!self) {
        Py_XDECREF(one);
        return NULL;
    }
    self->barrier = mem;
    cmp_barrier_init(self->barrier, trip);
    self->parties = Py_NewRef(parties_obj);
    self->action = Py_NewRef(action);
    self->timeout = Py_NewRef(timeout);
    Py_XDECREF(one);
    return (PyObject *)self;
}

static int Barrier_traverse(PyObject *op, visitproc visit, void *arg)
{
    BarrierObject *self = (BarrierObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->parties);
    Py_VISIT(self->action);
    Py_VISIT(self->timeout);
    return 0;
}

static int Barrier_clear(PyObject *op)
{
    BarrierObject *self = (BarrierObject *)op;
    Py_CLEAR(self->parties);
    Py_CLEAR(self->action);
    Py_CLEAR(self->timeout);
    return 0;
}

static void Barrier_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    Barrier_clear(op);
    cmp_py_shared_dealloc(op, NULL);
}

static PyMethodDef Barrier_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))Barrier_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait(timeout=None)\n--\n\n"
     "Wait until all parties have arrived; return this party's index.\n"
     "Raises threading.BrokenBarrierError if the barrier is or becomes broken\n"
     "(abort, reset while waiting, a timeout, a failing action)."},
    {"abort", Barrier_abort, METH_NOARGS, "abort()\n--\n\nPut the barrier into the broken state."},
    {"reset", Barrier_reset, METH_NOARGS,
     "reset()\n--\n\n"
     "Return the barrier to its initial state; current waiters get\n"
     "BrokenBarrierError."},
    {"__reduce__", Barrier_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Barrier_getset[] = {
    {"parties", Barrier_get_parties, NULL, "The number of parties needed to pass.", NULL},
    {"n_waiting", Barrier_get_n_waiting, NULL, "The number of parties waiting now.", NULL},
    {"broken", Barrier_get_broken, NULL, "True if the barrier is broken.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Barrier_slots[] = {
    {Py_tp_doc, (void *)BARRIER_DOC},
    {Py_tp_new, Barrier_new},
    {Py_tp_init, Barrier_init},
    {Py_tp_dealloc, Barrier_dealloc},
    {Py_tp_traverse, Barrier_traverse},
    {Py_tp_clear, Barrier_clear},
    {Py_tp_repr, Barrier_repr},
    {Py_tp_methods, Barrier_methods},
    {Py_tp_getset, Barrier_getset},
    {Py_tp_members, cmp_py_shared_members},
    {0, NULL},
};

static PyType_Spec Barrier_spec = {
    .name = "cmultiprocessing.synchronize.Barrier",
    .basicsize = sizeof(BarrierObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Barrier_slots,
};

int cmp_py_barrier_init(PyObject *module, cmp_py_state *st)
{
    st->Barrier_type = cmp_py_add_type(module, &Barrier_spec, NULL);
    return st->Barrier_type ? 0 : -1;
}
