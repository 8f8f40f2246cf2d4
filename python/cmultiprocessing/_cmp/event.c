/*
 * Event: multiprocessing.Event on a cmp_event_t in the shared heap.
 * is_set/set/clear never sleep and make no system call unless set() has
 * sleepers to wake; wait() on a set event returns with the GIL held, and
 * otherwise spins briefly and sleeps with the GIL released.
 */
#include "shared_object.h"

#include <errno.h>

typedef struct {
    CMP_PY_SHARED_HEAD
    cmp_event_t *event; /* inside block */
} EventObject;

static const char EVENT_DOC[] =
    "Event()\n--\n\n"
    "A flag shared between processes (multiprocessing.Event): set() wakes\n"
    "every process waiting in wait().";

static PyObject *Event_is_set(PyObject *op, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(cmp_event_is_set(((EventObject *)op)->event));
}

static PyObject *Event_set(PyObject *op, PyObject *unused)
{
    (void)unused;
    cmp_event_set(((EventObject *)op)->event);
    Py_RETURN_NONE;
}

static PyObject *Event_clear(PyObject *op, PyObject *unused)
{
    (void)unused;
    cmp_event_clear(((EventObject *)op)->event);
    Py_RETURN_NONE;
}

static int event_wait(void *event, const struct timespec *deadline)
{
    return cmp_event_wait(event, deadline);
}

static PyObject *Event_wait(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    EventObject *self = (EventObject *)op;
    static const char *const names[] = {"timeout"};
    PyObject *timeout;
    if (cmp_py_parse_args("wait", args, nargs, kwnames, names, 1, &timeout) < 0)
        return NULL;
    if (cmp_event_is_set(self->event))
        Py_RETURN_TRUE;
    struct timespec storage;
    const struct timespec *deadline;
    if (cmp_py_deadline(timeout, &storage, &deadline) < 0)
        return NULL;
    int rc = cmp_py_wait(event_wait, self->event, deadline, 0);
    if (rc == -EINTR)
        return NULL;
    if (rc == 0)
        Py_RETURN_TRUE; /* a set() happened while we waited */
    if (rc == -ETIMEDOUT)
        return PyBool_FromLong(cmp_event_is_set(self->event));
    return cmp_py_raise(rc);
}

static PyObject *Event_reduce(PyObject *op, PyObject *unused)
{
    (void)unused;
    /* the stdlib's Event pickles its Condition first, which refuses */
    return cmp_py_shared_reduce(op, "Condition", NULL);
}

int cmp_py_event_adopt(PyObject *op, void *mem, PyObject *extra)
{
    (void)extra;
    ((EventObject *)op)->event = mem;
    return 0;
}

static PyObject *Event_repr(PyObject *op)
{
    PyObject *name = PyObject_GetAttrString((PyObject *)Py_TYPE(op), "__name__");
    if (!name)
        return NULL;
    PyObject *r =
        PyUnicode_FromFormat("<%U at %p %s>", name, (void *)op,
                             cmp_event_is_set(((EventObject *)op)->event) ? "set" : "unset");
    Py_DECREF(name);
    return r;
}

static int Event_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    if (!CMP_PY_FOREIGN_INIT(Py_TYPE(op), Event_init))
        return 0;
    return cmp_py_parse_ctx_only(args, kwds, "|$O:Event");
}

static PyObject *Event_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* Event(*, ctx=None), as multiprocessing.synchronize.Event */
    if (!CMP_PY_FOREIGN_INIT(type, Event_init) &&
        cmp_py_parse_ctx_only(args, kwds, "|$O:Event") < 0)
        return NULL;
    void *mem;
    EventObject *self = (EventObject *)cmp_py_shared_new(type, sizeof(cmp_event_t), &mem);
    if (!self)
        return NULL;
    self->event = mem;
    cmp_event_init(self->event);
    return (PyObject *)self;
}

static void Event_dealloc(PyObject *op)
{
    cmp_py_shared_dealloc(op, NULL);
}

static PyMethodDef Event_methods[] = {
    {"is_set", Event_is_set, METH_NOARGS, "is_set()\n--\n\nTrue if the flag is set."},
    {"set", Event_set, METH_NOARGS, "set()\n--\n\nSet the flag and wake every waiter."},
    {"clear", Event_clear, METH_NOARGS, "clear()\n--\n\nReset the flag."},
    {"wait", (PyCFunction)(void (*)(void))Event_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait(timeout=None)\n--\n\n"
     "Block until the flag is set or timeout seconds pass; return True if it\n"
     "was set, False on timeout."},
    {"__reduce__", Event_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Event_slots[] = {
    {Py_tp_doc, (void *)EVENT_DOC},
    {Py_tp_new, Event_new},
    {Py_tp_init, Event_init},
    {Py_tp_dealloc, Event_dealloc},
    {Py_tp_repr, Event_repr},
    {Py_tp_methods, Event_methods},
    {Py_tp_members, cmp_py_shared_members},
    {0, NULL},
};

static PyType_Spec Event_spec = {
    .name = "cmultiprocessing.synchronize.Event",
    .basicsize = sizeof(EventObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Event_slots,
};

int cmp_py_event_init(PyObject *module, cmp_py_state *st)
{
    st->Event_type = cmp_py_add_type(module, &Event_spec, NULL);
    return st->Event_type ? 0 : -1;
}
