/* Placeholder: filled in by the sharedctypes work. */
#include "_cmp.h"

int cmp_py_sharedctypes_init(PyObject *module, cmp_py_state *st)
{
    (void)module;
    (void)st;
    return 0;
}
