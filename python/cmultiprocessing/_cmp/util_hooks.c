/*
 * The child side of multiprocessing.util for our forks: the callbacks of
 * util.register_after_fork() run in every child we fork (Process.start and
 * pool workers), and util.Finalize objects with an exitpriority run when
 * a Process child ends, as the stdlib's BaseProcess._bootstrap does.
 *
 * The registries are the standard library's (cmultiprocessing.util
 * re-exports them), so a library that registers through the stdlib's util
 * (joblib, the stdlib's own managers) is served by our forks too. Nothing
 * is imported here: a program that never loaded a util module has nothing
 * registered, and its children only look it up in sys.modules.
 */
#include "_cmp.h"

/* sys.modules["multiprocessing.util"].<name>, or NULL (no error set). */
static PyObject *util_function(const char *name)
{
    PyObject *modules = PySys_GetObject("modules"); /* borrowed */
    PyObject *util = modules && PyDict_Check(modules)
                         ? PyDict_GetItemString(modules, "multiprocessing.util")
                         : NULL;
    if (!util)
        return NULL;
    PyObject *fn = PyObject_GetAttrString(util, name);
    if (!fn)
        PyErr_Clear();
    return fn;
}

static void call_printing(PyObject *fn, PyObject *arg)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *r = arg ? PyObject_CallOneArg(fn, arg) : PyObject_CallNoArgs(fn);
    if (!r)
        PyErr_Print();
    Py_XDECREF(r);
    Py_DECREF(fn);
    PyErr_Restore(et, ev, tb);
}

/* 1 unless util.<name> is a dict (or a WeakValueDictionary, whose dict
 * is .data) known to be empty. A forked child calls into util only when
 * there is something to run: running its Python code there writes to
 * pages shared with the parent, and the copies cost a Process start+join
 * about a third of its time. */
static int may_hold_entries(const char *name)
{
    PyObject *registry = util_function(name);
    if (!registry)
        return 0;
    PyObject *data =
        PyDict_Check(registry) ? Py_NewRef(registry) : PyObject_GetAttrString(registry, "data");
    Py_DECREF(registry);
    if (!data) {
        PyErr_Clear();
        return 1;
    }
    int may = !PyDict_Check(data) || PyDict_GET_SIZE(data) > 0;
    Py_DECREF(data);
    return may;
}

void cmp_py_util_after_fork(void)
{
    /* The parent's finalizers are the parent's (each would ignore a call
     * from another process anyway): the child forgets them first thing,
     * as the stdlib's does, so that its exit does not look at them. */
    PyObject *finalizers = util_function("_finalizer_registry");
    if (finalizers && PyDict_Check(finalizers) && PyDict_GET_SIZE(finalizers) > 0)
        PyDict_Clear(finalizers);
    Py_XDECREF(finalizers);
    if (!may_hold_entries("_afterfork_registry"))
        return;
    PyObject *fn = util_function("_run_after_forkers");
    if (fn)
        call_printing(fn, NULL);
}

void cmp_py_util_run_finalizers(int minpriority)
{
    if (!may_hold_entries("_finalizer_registry"))
        return;
    PyObject *fn = util_function("_run_finalizers");
    if (!fn)
        return;
    PyObject *arg = minpriority >= 0 ? PyLong_FromLong(minpriority) : NULL;
    if (minpriority >= 0 && !arg) {
        PyErr_Clear();
        Py_DECREF(fn);
        return;
    }
    call_printing(fn, arg);
    Py_XDECREF(arg);
}
