/* Placeholder: filled in by the process work. */
#include "_cmp.h"

int cmp_py_process_init(PyObject *module, cmp_py_state *st)
{
    (void)module;
    (void)st;
    return 0;
}
