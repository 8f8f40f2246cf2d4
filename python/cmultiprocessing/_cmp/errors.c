/* The exceptions and warnings of the package, in multiprocessing's
 * hierarchy (ProcessError and its subclasses). */
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

int cmp_py_errors_init(PyObject *module, cmp_py_state *st)
{
    st->ProcessError = cmp_py_add_exception(module, "ProcessError", PyExc_Exception,
                                            "Base class of cmultiprocessing's errors.");
    if (!st->ProcessError)
        return -1;
    st->BufferTooShort =
        cmp_py_add_exception(module, "BufferTooShort", st->ProcessError,
                             "The buffer given to recv_bytes_into() is too small.");
    st->TimeoutError = cmp_py_add_exception(module, "TimeoutError", st->ProcessError,
                                            "An operation with a timeout ran out of time.");
    st->AuthenticationError = cmp_py_add_exception(module, "AuthenticationError", st->ProcessError,
                                                   "Connection authentication failed.");
    st->AbandonedLockWarning = cmp_py_add_exception(
        module, "AbandonedLockWarning", PyExc_RuntimeWarning,
        "A lock was acquired by taking it over from a holder process that died "
        "while holding it. The acquire succeeded; the data the lock protects may "
        "be half-updated.");
    if (!st->BufferTooShort || !st->TimeoutError || !st->AuthenticationError ||
        !st->AbandonedLockWarning)
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
