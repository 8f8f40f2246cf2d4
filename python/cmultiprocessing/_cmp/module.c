/*
 * The _cmp extension module: multi-phase init, module state, and the
 * helpers every concept file uses (deadlines, error mapping).
 */
#include "_cmp.h"

#include <errno.h>
#include <math.h>

cmp_py_state *cmp_py_state_of_type(PyTypeObject *tp)
{
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *module = PyType_GetModuleByDef(tp, &cmp_py_module_def);
    if (module)
        return cmp_py_state_of_module(module);
    PyErr_Clear();
    return NULL;
#else
    /* 3.9/3.10: walk the MRO to the first heap type this module defined. */
    PyObject *mro = tp->tp_mro;
    for (Py_ssize_t i = 0; mro && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (!(base->tp_flags & Py_TPFLAGS_HEAPTYPE))
            continue;
        PyObject *module = PyType_GetModule(base);
        if (module && PyModule_GetDef(module) == &cmp_py_module_def)
            return cmp_py_state_of_module(module);
        PyErr_Clear();
    }
    return NULL;
#endif
}

PyObject *cmp_py_type_from_spec(PyObject *module, PyType_Spec *spec, PyObject *base)
{
    /* 3.9 takes the bases only as a tuple; later versions take either. */
    PyObject *bases = base ? PyTuple_Pack(1, base) : NULL;
    if (base && !bases)
        return NULL;
    PyObject *type = PyType_FromModuleAndSpec(module, spec, bases);
    Py_XDECREF(bases);
    return type;
}

PyTypeObject *cmp_py_add_type(PyObject *module, PyType_Spec *spec, PyObject *base)
{
    PyObject *type = cmp_py_type_from_spec(module, spec, base);
    if (!type)
        return NULL;
    if (PyModule_AddType(module, (PyTypeObject *)type) < 0) {
        Py_DECREF(type);
        return NULL;
    }
    return (PyTypeObject *)type;
}

int cmp_py_deadline(PyObject *timeout, struct timespec *storage, const struct timespec **out)
{
    if (timeout == NULL || timeout == Py_None) {
        *out = NULL;
        return 0;
    }
    double seconds = PyFloat_AsDouble(timeout);
    if (seconds == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(seconds)) {
        PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
        return -1;
    }
    cmp_deadline_after(seconds, storage);
    *out = storage;
    return 0;
}

int cmp_py_block_arg(PyObject *block, int dflt)
{
    if (!block)
        return dflt;
    PyObject *index = PyNumber_Index(block);
    if (!index)
        return -1;
    int truth = PyObject_IsTrue(index);
    Py_DECREF(index);
    return truth;
}

int cmp_py_check_timeout(PyObject *timeout)
{
    if (timeout == NULL || timeout == Py_None)
        return 0;
    if (PyFloat_AsDouble(timeout) == -1.0 && PyErr_Occurred())
        return -1;
    return 0;
}

int cmp_py_check_exit_args(Py_ssize_t nargs)
{
    if (nargs <= 3)
        return 0;
    PyErr_Format(PyExc_TypeError, "__exit__ expected at most 3 arguments, got %zd", nargs);
    return -1;
}

int cmp_py_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *const *names, Py_ssize_t n, PyObject **out)
{
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd argument%s (%zd given)", fname, n,
                     n == 1 ? "" : "s", nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i = 0;
        while (i < n && PyUnicode_CompareWithASCIIString(key, names[i]) != 0)
            i++;
        if (i == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                         key);
            return -1;
        }
        if (out[i]) {
            PyErr_Format(PyExc_TypeError, "argument for %s() given by name ('%U') and position",
                         fname, key);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    return 0;
}

PyObject *cmp_py_raise(int err)
{
    if (err == -ENOMEM)
        return PyErr_NoMemory();
    errno = -err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

int cmp_py_warn_abandoned(PyTypeObject *tp, const char *what)
{
    cmp_py_state *st = cmp_py_state_of_type(tp);
    PyObject *category = st ? st->AbandonedLockWarning : PyExc_RuntimeWarning;
    return PyErr_WarnFormat(category, 1,
                            "%s: its previous holder process died while holding it; "
                            "the data it protects may be inconsistent",
                            what);
}

int cmp_py_state_traverse(cmp_py_state *st, visitproc visit, void *arg)
{
    PyObject **fields = (PyObject **)st;
    for (size_t i = 0; i < sizeof *st / sizeof(PyObject *); i++)
        Py_VISIT(fields[i]);
    return 0;
}

void cmp_py_state_clear(cmp_py_state *st)
{
    /* Every field of the state is an owned PyObject pointer. */
    PyObject **fields = (PyObject **)st;
    for (size_t i = 0; i < sizeof *st / sizeof(PyObject *); i++)
        Py_CLEAR(fields[i]);
}

PyObject *cmp_py_empty_tuple;

static int module_exec(PyObject *module)
{
    cmp_py_state *st = cmp_py_state_of_module(module);
    if (!cmp_py_empty_tuple && !(cmp_py_empty_tuple = PyTuple_New(0)))
        return -1;
    if (cmp_py_fastmethod_init(module, st) < 0 || cmp_py_errors_init(module, st) < 0 ||
        cmp_py_lock_init(module, st) < 0 || cmp_py_rlock_init(module, st) < 0 ||
        cmp_py_semaphore_init(module, st) < 0 || cmp_py_event_init(module, st) < 0 ||
        cmp_py_condition_init(module, st) < 0 || cmp_py_barrier_init(module, st) < 0 ||
        cmp_py_sharedctypes_init(module, st) < 0 || cmp_py_shared_memory_init(module, st) < 0 ||
        cmp_py_shareable_list_init(module, st) < 0 || cmp_py_serialize_init(module, st) < 0 ||
        cmp_py_queue_init(module, st) < 0 || cmp_py_process_init(module, st) < 0 ||
        cmp_py_context_init(module, st) < 0 || cmp_py_connection_init(module, st) < 0 ||
        cmp_py_reduction_init(module, st) < 0 || cmp_py_pool_init(module, st) < 0 ||
        cmp_py_manager_init(module, st) < 0 || cmp_py_proxy_init(module, st) < 0 ||
        cmp_py_spawn_init(module, st) < 0 || cmp_py_main_thread_init() < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
    return cmp_py_state_traverse(cmp_py_state_of_module(module), visit, arg);
}

static int module_clear(PyObject *module)
{
    cmp_py_state_clear(cmp_py_state_of_module(module));
    return 0;
}

static void module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

PyModuleDef cmp_py_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cmultiprocessing._cmp",
    .m_doc = "C core of cmultiprocessing (built on libcmp).",
    .m_size = sizeof(cmp_py_state),
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__cmp(void)
{
    return PyModuleDef_Init(&cmp_py_module_def);
}
