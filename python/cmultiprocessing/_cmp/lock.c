/* Placeholder: filled in by the lock work. */
#include "_cmp.h"

int cmp_py_lock_init(PyObject *module, cmp_py_state *st)
{
    (void)module;
    (void)st;
    return 0;
}
