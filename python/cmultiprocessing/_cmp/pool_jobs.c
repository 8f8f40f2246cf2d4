/*
 * The pool's table of tasks in flight: task id -> (job, chunk index).
 *
 * An open-addressing hash table keyed by the 64-bit task id, with linear
 * probing and backward-shift deletion (no tombstones, so a long run of
 * inserts and deletes never degrades it). It replaces a dict of
 * int -> tuple, which cost eight allocations per task: the parent's share
 * of a chunksize=1 map is mostly such bookkeeping. Ids are never 0 (libcmp
 * numbers tasks from 1), so 0 marks a free slot.
 *
 * The GIL protects it; the table holds a strong reference to each job.
 */
#include "_cmp.h"

#include <stdlib.h>

#define JOBS_MIN_CAP 64u

static size_t slot_of(const cmp_py_jobs *t, uint64_t id)
{
    /* Fibonacci hashing: consecutive ids spread over the table */
    return (size_t)((id * UINT64_C(0x9E3779B97F4A7C15)) >> (64 - t->bits));
}

int cmp_py_jobs_init(cmp_py_jobs *t)
{
    t->cap = JOBS_MIN_CAP;
    t->bits = 6;
    t->len = 0;
    t->slots = calloc(t->cap, sizeof *t->slots);
    return t->slots ? 0 : -1;
}

static int grow(cmp_py_jobs *t)
{
    if (!t->slots) /* cleared */
        return cmp_py_jobs_init(t);
    cmp_py_jobs bigger = {NULL, t->cap * 2, t->bits + 1, 0};
    bigger.slots = calloc(bigger.cap, sizeof *bigger.slots);
    if (!bigger.slots)
        return -1;
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->slots[i].id)
            continue;
        size_t k = slot_of(&bigger, t->slots[i].id);
        while (bigger.slots[k].id)
            k = (k + 1) & (bigger.cap - 1);
        bigger.slots[k] = t->slots[i];
        bigger.len++;
    }
    free(t->slots);
    *t = bigger;
    return 0;
}

int cmp_py_jobs_add(cmp_py_jobs *t, uint64_t id, PyObject *job, Py_ssize_t index)
{
    if (2 * (t->len + 1) > t->cap && grow(t) < 0) { /* at most half full */
        PyErr_NoMemory();
        return -1;
    }
    size_t k = slot_of(t, id);
    while (t->slots[k].id)
        k = (k + 1) & (t->cap - 1);
    t->slots[k] = (cmp_py_job_ref){id, Py_NewRef(job), index};
    t->len++;
    return 0;
}

int cmp_py_jobs_take(cmp_py_jobs *t, uint64_t id, cmp_py_job_ref *out)
{
    if (!t->slots)
        return 0;
    size_t mask = t->cap - 1;
    size_t k = slot_of(t, id);
    while (t->slots[k].id != id) {
        if (!t->slots[k].id)
            return 0;
        k = (k + 1) & mask;
    }
    *out = t->slots[k];
    /* Backward shift: move up each later entry of the run that may sit
     * in the hole (its home slot is not between the hole and it). */
    size_t hole = k;
    for (size_t j = (k + 1) & mask; t->slots[j].id; j = (j + 1) & mask) {
        size_t home = slot_of(t, t->slots[j].id);
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            t->slots[hole] = t->slots[j];
            hole = j;
        }
    }
    t->slots[hole] = (cmp_py_job_ref){0, NULL, 0};
    t->len--;
    return 1;
}

PyObject *cmp_py_jobs_peek(const cmp_py_jobs *t, uint64_t id)
{
    if (!t->slots)
        return NULL;
    size_t k = slot_of(t, id);
    while (t->slots[k].id) {
        if (t->slots[k].id == id)
            return t->slots[k].job;
        k = (k + 1) & (t->cap - 1);
    }
    return NULL;
}

int cmp_py_jobs_traverse(const cmp_py_jobs *t, visitproc visit, void *arg)
{
    for (size_t i = 0; t->slots && i < t->cap; i++)
        Py_VISIT(t->slots[i].job);
    return 0;
}

void cmp_py_jobs_clear(cmp_py_jobs *t)
{
    /* the decrefs may run code that looks at the table: empty it first */
    cmp_py_jobs old = *t;
    t->slots = NULL;
    t->cap = t->len = 0;
    for (size_t i = 0; old.slots && i < old.cap; i++)
        Py_XDECREF(old.slots[i].job);
    free(old.slots);
}
