/* Placeholder: filled in by the event work. */
#include "_cmp.h"

int cmp_py_event_init(PyObject *module, cmp_py_state *st)
{
    (void)module;
    (void)st;
    return 0;
}
