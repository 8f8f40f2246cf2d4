/*
 * progress= of the pool's map, starmap, imap and imap_unordered (beyond
 * the stdlib): True shows a tqdm bar when tqdm is installed, else a line
 * on stderr; a callable is called with (done, total), total None when
 * unknown.
 */
#include "pool.h"

int cmp_py_progress_start(cmp_py_progress *pr, PyObject *progress, Py_ssize_t total)
{
    pr->fn = pr->bar = NULL;
    pr->line = 0;
    pr->total = total;
    pr->last = 0;
    if (!progress || progress == Py_None || progress == Py_False)
        return 0;
    if (progress != Py_True) {
        if (!PyCallable_Check(progress)) {
            PyErr_SetString(PyExc_TypeError, "progress must be True, False, None or a callable");
            return -1;
        }
        pr->fn = Py_NewRef(progress);
        return 0;
    }
    PyObject *tqdm = PyImport_ImportModule("tqdm");
    if (tqdm) {
        PyObject *cls = PyObject_GetAttrString(tqdm, "tqdm");
        PyObject *kw = cls ? PyDict_New() : NULL;
        PyObject *tot = kw ? (total >= 0 ? PyLong_FromSsize_t(total) : Py_NewRef(Py_None)) : NULL;
        if (tot && PyDict_SetItemString(kw, "total", tot) == 0) {
            PyObject *empty = PyTuple_New(0);
            pr->bar = empty ? PyObject_Call(cls, empty, kw) : NULL;
            Py_XDECREF(empty);
        }
        Py_XDECREF(tot);
        Py_XDECREF(kw);
        Py_XDECREF(cls);
        Py_DECREF(tqdm);
        if (pr->bar)
            return 0;
    }
    PyErr_Clear();
    pr->line = 1;
    return 0;
}

int cmp_py_progress_update(cmp_py_progress *pr, Py_ssize_t done)
{
    if (done == pr->last || (!pr->fn && !pr->bar && !pr->line))
        return 0;
    Py_ssize_t step = done - pr->last;
    pr->last = done;
    if (pr->fn) {
        PyObject *r = PyObject_CallFunction(pr->fn, "nN", done,
                                            pr->total >= 0 ? PyLong_FromSsize_t(pr->total)
                                                           : Py_NewRef(Py_None));
        Py_XDECREF(r);
        return r ? 0 : -1;
    }
    if (pr->bar) {
        PyObject *r = PyObject_CallMethod(pr->bar, "update", "n", step);
        Py_XDECREF(r);
        return r ? 0 : -1;
    }
    if (pr->total >= 0)
        PySys_FormatStderr("\r%zd/%zd", done, pr->total);
    else
        PySys_FormatStderr("\r%zd", done);
    return 0;
}

void cmp_py_progress_end(cmp_py_progress *pr)
{
    if (pr->bar) {
        PyObject *r = PyObject_CallMethod(pr->bar, "close", NULL);
        if (!r)
            PyErr_WriteUnraisable(pr->bar);
        Py_XDECREF(r);
    } else if (pr->line && pr->last) {
        PySys_WriteStderr("\n");
    }
    Py_CLEAR(pr->bar);
    Py_CLEAR(pr->fn);
    pr->line = 0;
}
