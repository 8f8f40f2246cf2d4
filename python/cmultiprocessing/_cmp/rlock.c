/* Placeholder: filled in by the rlock work. */
#include "_cmp.h"

int cmp_py_rlock_init(PyObject *module, cmp_py_state *st)
{
    (void)module;
    (void)st;
    return 0;
}
