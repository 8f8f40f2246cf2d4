/* The exceptions and warnings of the package: multiprocessing's own
 * ProcessError and its subclasses, and ours (AbandonedLockWarning, and
 * the pool's errors, which derive from ProcessError). */
#include "_cmp.h"

PyObject *cmp_py_add_exception(PyObject *module, const char *name, PyObject *base, const char *doc)
{
    char qualified[128];
    PyOS_snprintf(qualified, sizeof qualified, "cmultiprocessing.%s", name);
    PyObject *exc = PyErr_NewExceptionWithDoc(qualified, doc, base, NULL);
    if (!exc)
        return NULL;
    if (PyModule_AddObjectRef(module, name, exc) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    return exc;
}

/* name from the stdlib's multiprocessing, into st and module. */
static PyObject *stdlib_exception(PyObject *module, PyObject *stdlib, const char *name)
{
    PyObject *exc = PyObject_GetAttrString(stdlib, name);
    if (exc && PyModule_AddObjectRef(module, name, exc) < 0)
        Py_CLEAR(exc);
    return exc;
}

int cmp_py_errors_init(PyObject *module, cmp_py_state *st)
{
    /* The stdlib's own classes, so that an except clause written against
     * either module catches both (the package is imported before
     * `python3 -m cmultiprocessing` makes `multiprocessing` name ours). */
    PyObject *stdlib = PyImport_ImportModule("multiprocessing.context");
    if (!stdlib)
        return -1;
    st->ProcessError = stdlib_exception(module, stdlib, "ProcessError");
    st->BufferTooShort = stdlib_exception(module, stdlib, "BufferTooShort");
    st->TimeoutError = stdlib_exception(module, stdlib, "TimeoutError");
    st->AuthenticationError = stdlib_exception(module, stdlib, "AuthenticationError");
    /* kept for context.py: the stdlib's objects ask that module whether a
     * child is being spawned (its get_spawning_popen), also under -m */
    int kept = PyModule_AddObjectRef(module, "_stdlib_context", stdlib);
    Py_DECREF(stdlib);
    if (kept < 0)
        return -1;
    if (!st->ProcessError || !st->BufferTooShort || !st->TimeoutError || !st->AuthenticationError)
        return -1;
    st->AbandonedLockWarning = cmp_py_add_exception(
        module, "AbandonedLockWarning", PyExc_RuntimeWarning,
        "A lock was acquired by taking it over from a holder process that died "
        "while holding it. The acquire succeeded; the data the lock protects may "
        "be half-updated.");
    if (!st->AbandonedLockWarning)
        return -1;

    PyObject *threading = PyImport_ImportModule("threading");
    if (!threading)
        return -1;
    st->BrokenBarrierError = PyObject_GetAttrString(threading, "BrokenBarrierError");
    Py_DECREF(threading);
    if (!st->BrokenBarrierError)
        return -1;
    return PyModule_AddObjectRef(module, "BrokenBarrierError", st->BrokenBarrierError);
}
