/*
 * The pool's table of tasks in flight: task id -> (job, chunk index).
 *
 * It replaces a dict of int -> tuple, which cost eight allocations per
 * task: the parent's share of a chunksize=1 map is mostly bookkeeping.
 *
 * A Robin Hood hash table (linear probing; an entry never sits further
 * from its home slot than the one it displaced; backward-shift deletion)
 * whose hash is the id itself, modulo the capacity. Ids are consecutive
 * (libcmp numbers tasks from 1, and the binding adds each as it submits)
 * and most tasks end soon after the ones before them, so the ids in flight
 * span less than the capacity: each then sits in its own home slot, the
 * slots of a map's tasks are adjacent (a lookup touches the cache line the
 * previous one did), and insert, lookup and delete stop at once. A
 * straggler whose id aliases a newer one costs a probe, never a hang,
 * and the table is at most half full, so memory stays proportional to the
 * tasks in flight. Id 0 marks a free slot.
 *
 * The GIL protects it; the table holds a strong reference to each job.
 */
#include "pool.h"

#include <stdlib.h>

#define JOBS_MIN_CAP 64u

static size_t mask_of(const cmp_py_jobs *t)
{
    return t->cap - 1;
}

/* How far the entry in slot k sits from its home slot. */
static size_t distance(const cmp_py_jobs *t, size_t k)
{
    return (k - (size_t)t->slots[k].id) & mask_of(t);
}

int cmp_py_jobs_init(cmp_py_jobs *t)
{
    t->cap = JOBS_MIN_CAP;
    t->len = 0;
    t->slots = calloc(t->cap, sizeof *t->slots);
    return t->slots ? 0 : -1;
}

static void place(cmp_py_jobs *t, cmp_py_job_ref e)
{
    size_t mask = mask_of(t);
    size_t k = (size_t)e.id & mask;
    for (size_t d = 0;; d++, k = (k + 1) & mask) {
        if (!t->slots[k].id) {
            t->slots[k] = e;
            t->len++;
            return;
        }
        size_t dk = distance(t, k);
        if (dk < d) { /* the entry nearer its home moves on */
            cmp_py_job_ref carried = t->slots[k];
            t->slots[k] = e;
            e = carried;
            d = dk;
        }
    }
}

static int grow(cmp_py_jobs *t)
{
    if (!t->slots) /* cleared */
        return cmp_py_jobs_init(t);
    cmp_py_jobs bigger = {NULL, t->cap * 2, 0};
    bigger.slots = calloc(bigger.cap, sizeof *bigger.slots);
    if (!bigger.slots)
        return -1;
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].id)
            place(&bigger, t->slots[i]);
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
    place(t, (cmp_py_job_ref){id, Py_NewRef(job), index});
    return 0;
}

/* The slot holding id, or SIZE_MAX. */
static size_t find(const cmp_py_jobs *t, uint64_t id)
{
    if (!t->slots)
        return SIZE_MAX;
    size_t mask = mask_of(t);
    size_t k = (size_t)id & mask;
    for (size_t d = 0;; d++, k = (k + 1) & mask) {
        if (t->slots[k].id == id)
            return k;
        if (!t->slots[k].id || distance(t, k) < d)
            return SIZE_MAX; /* id would have displaced this entry */
    }
}

int cmp_py_jobs_take(cmp_py_jobs *t, uint64_t id, cmp_py_job_ref *out)
{
    size_t k = find(t, id);
    if (k == SIZE_MAX)
        return 0;
    *out = t->slots[k];
    size_t mask = mask_of(t);
    /* backward shift: the entries after it that are not home move back */
    size_t next = (k + 1) & mask;
    while (t->slots[next].id && distance(t, next) > 0) {
        t->slots[k] = t->slots[next];
        k = next;
        next = (next + 1) & mask;
    }
    t->slots[k] = (cmp_py_job_ref){0, NULL, 0};
    t->len--;
    return 1;
}

PyObject *cmp_py_jobs_peek(const cmp_py_jobs *t, uint64_t id)
{
    size_t k = find(t, id);
    return k == SIZE_MAX ? NULL : t->slots[k].job;
}

uint64_t *cmp_py_jobs_ids_of(const cmp_py_jobs *t, PyObject *job, size_t *n)
{
    *n = 0;
    uint64_t *ids = PyMem_Malloc((t->len ? t->len : 1) * sizeof *ids);
    if (!ids)
        return NULL;
    for (size_t i = 0; t->slots && i < t->cap; i++)
        if (t->slots[i].id && t->slots[i].job == job)
            ids[(*n)++] = t->slots[i].id;
    return ids;
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
