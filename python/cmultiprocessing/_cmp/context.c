/* Placeholder: filled in by the context work. */
#include "_cmp.h"

int cmp_py_context_init(PyObject *module, cmp_py_state *st)
{
    (void)module;
    (void)st;
    return 0;
}
