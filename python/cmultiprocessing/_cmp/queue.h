/*
 * What queue.c shares with queue_reader.c: the queue object, and the
 * hooks through which a SimpleQueue keeps its reader's eventfd in step.
 */
#ifndef CMP_PY_QUEUE_H
#define CMP_PY_QUEUE_H

#include "_cmp.h"

typedef struct {
    PyObject_HEAD
    cmp_shared_t *block; /* keeps the shared memory alive */
    cmp_queue_t *q;      /* inside block */
    cmp_py_state *st;
    long long maxsize; /* as the stdlib reports it (_maxsize) */
    int spill_fd;      /* this process's fd of the queue's spill file */
    /* SimpleQueue only (else -1 / NULL): an eventfd that is readable while
     * items wait, kept so once *notify_armed (in the queue's shared block)
     * says that some process polls it (queue_reader.c) */
    int notify_fd;
    uint32_t *notify_armed;
    char closed;
    char joincancelled;
    char simple; /* SimpleQueue: closed means "handle is closed" */
    PyObject *weakreflist;
} QueueObject;

/* get(block, timeout) as Queue.get (NULL arguments: the defaults). */
PyObject *cmp_py_queue_get(QueueObject *self, PyObject *block, PyObject *timeout);

/* After items went in / came out: keeps the eventfd in step once armed. */
void cmp_py_queue_notify_put(QueueObject *self);
void cmp_py_queue_notify_get(QueueObject *self);

/* put(obj) as Queue.put with the defaults. */
PyObject *cmp_py_queue_put(QueueObject *self, PyObject *obj);

/* The _reader attribute: what concurrent.futures waits on (fileno) and
 * reads from (recv). The _writer attribute: the other end, which code
 * written against the stdlib's pipe-backed queues sends on or checks
 * (closed); both are views of the queue, made at each access. */
PyObject *cmp_py_queue_reader(QueueObject *self);
PyObject *cmp_py_queue_writer(QueueObject *self);
int cmp_py_queue_reader_init(PyObject *module, cmp_py_state *st);

#endif
