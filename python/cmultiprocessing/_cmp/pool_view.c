/*
 * pool._pool: the stdlib's Pool lists its worker Process objects there, and
 * programs read them: [w.pid for w in pool._pool], or any(not w.is_alive()
 * for w in pool._pool) to notice a worker that died. Ours lists one view
 * per running worker: its pid, and is_alive(), which asks the pool whether
 * that worker still runs (a worker that exits, or dies, is replaced by a
 * new one with another pid, which the next pool._pool lists).
 */
#include "pool.h"

#include <structmember.h>

typedef struct {
    PyObject_HEAD
    long pid;
    PyObject *pool;
} ViewObject;

static PyTypeObject *View_type;

static PyObject *View_is_alive(PyObject *op, PyObject *unused)
{
    (void)unused;
    ViewObject *self = (ViewObject *)op;
    if (!self->pool)
        Py_RETURN_FALSE;
    PyObject *pids = cmp_py_pool_pids(self->pool);
    if (!pids)
        return NULL;
    PyObject *pid = PyLong_FromLong(self->pid);
    int found = pid ? PySequence_Contains(pids, pid) : -1;
    Py_XDECREF(pid);
    Py_DECREF(pids);
    return found < 0 ? NULL : PyBool_FromLong(found);
}

static PyObject *View_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<pool worker pid=%ld>", ((ViewObject *)op)->pid);
}

static int View_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((ViewObject *)op)->pool);
    return 0;
}

static int View_clear(PyObject *op)
{
    Py_CLEAR(((ViewObject *)op)->pool);
    return 0;
}

static void View_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    View_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyMethodDef View_methods[] = {
    {"is_alive", View_is_alive, METH_NOARGS, "Whether the worker still runs in its pool."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef View_members[] = {
    {"pid", T_LONG, offsetof(ViewObject, pid), READONLY, "The worker's process id."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot View_slots[] = {
    {Py_tp_methods, View_methods},
    {Py_tp_members, View_members},
    {Py_tp_repr, View_repr},
    {Py_tp_traverse, View_traverse},
    {Py_tp_clear, View_clear},
    {Py_tp_dealloc, View_dealloc},
    {0, NULL},
};

#if PY_VERSION_HEX >= 0x030A0000
#define NOT_INSTANTIABLE Py_TPFLAGS_DISALLOW_INSTANTIATION
#else
#define NOT_INSTANTIABLE 0 /* 3.9: instantiable, and then harmless (pid 0, no pool) */
#endif

static PyType_Spec View_spec = {
    .name = "cmultiprocessing.pool._PoolWorker",
    .basicsize = sizeof(ViewObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | NOT_INSTANTIABLE,
    .slots = View_slots,
};

PyObject *cmp_py_pool_views(PyObject *pool)
{
    PyObject *list = cmp_py_pool_pids(pool);
    Py_ssize_t n = list ? PyList_GET_SIZE(list) : 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        long pid = PyLong_AsLong(PyList_GET_ITEM(list, i));
        ViewObject *v = PyObject_GC_New(ViewObject, View_type);
        if (!v) {
            Py_CLEAR(list);
            break;
        }
        v->pid = pid;
        v->pool = Py_NewRef(pool);
        PyObject_GC_Track(v);
        PyList_SetItem(list, i, (PyObject *)v); /* drops the pid */
    }
    return list;
}

int cmp_py_pool_view_init(PyObject *module)
{
    View_type = (PyTypeObject *)cmp_py_type_from_spec(module, &View_spec, NULL);
    return View_type ? 0 : -1;
}
