/*
 * The members every type that starts with CMP_PY_SHARED_HEAD lists (its
 * __weaklistoffset__). Apart from _cmp.h: PyMemberDef needs structmember.h
 * on 3.11, whose T_* names clash with serialize.c's own.
 */
#ifndef CMP_PY_SHARED_OBJECT_H
#define CMP_PY_SHARED_OBJECT_H

#include "_cmp.h"

#include <structmember.h>

extern PyMemberDef cmp_py_shared_members[];

#endif
