/* Placeholder: filled in by the semaphore work. */
#include "_cmp.h"

int cmp_py_semaphore_init(PyObject *module, cmp_py_state *st)
{
    (void)module;
    (void)st;
    return 0;
}
