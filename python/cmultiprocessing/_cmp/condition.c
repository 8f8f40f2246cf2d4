/* Placeholder: filled in by the condition work. */
#include "_cmp.h"

int cmp_py_condition_init(PyObject *module, cmp_py_state *st)
{
    (void)module;
    (void)st;
    return 0;
}
