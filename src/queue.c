/*
 * Queue: a ring with max_count = maxsize, plus the joinable counters.
 *
 * Unfinished tasks are not a counter of their own: they are the ring's
 * count of messages ever published (the high bits of its tail plus those of
 * its spill tail, modulo 2^28) minus `done`, the count of task_done() calls. A put is counted in
 * the same store that publishes it and task_done is one compare-and-swap,
 * so a process killed anywhere leaves the count exact. join sleeps on
 * `done`; task_done wakes it when the count reaches zero.
 */
#include "atomic.h"
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#define CNT_SHIFT 36
#define CNT_MASK ((UINT64_C(1) << (64 - CNT_SHIFT)) - 1)

size_t cmp_queue_footprint(size_t capacity)
{
    return offsetof(cmp_queue_t, ring) + cmp_ring_footprint(capacity);
}

int cmp_queue_init(cmp_queue_t *q, size_t capacity, uint32_t maxsize)
{
    if (maxsize > CMP_QUEUE_MAXSIZE_MAX)
        return -EINVAL;
    int rc = cmp_ring_init(&q->ring, capacity, maxsize);
    if (rc < 0)
        return rc;
    int fd = cmp_spill_create();
    if (fd < 0)
        return fd;
    cmp_ring_set_spill(&q->ring, fd);
    q->done = 0;
    q->join_waiters = 0;
    return 0;
}

void cmp_queue_detach(cmp_queue_t *q)
{
    if (q->ring.spill_fd >= 0)
        close(q->ring.spill_fd);
}

cmp_ring_t *cmp_queue_ring(cmp_queue_t *q)
{
    return &q->ring;
}

uint32_t cmp_queue_maxsize(const cmp_queue_t *q)
{
    return (uint32_t)q->ring.max_count;
}

int cmp_queue_put(cmp_queue_t *q, const void *data, size_t len, const struct timespec *deadline)
{
    return cmp_ring_put(&q->ring, data, len, deadline);
}

int cmp_queue_putv(cmp_queue_t *q, const struct iovec *iov, int iovcnt,
                   const struct timespec *deadline)
{
    return cmp_ring_putv(&q->ring, iov, iovcnt, deadline);
}

long cmp_queue_put_many(cmp_queue_t *q, const struct iovec *iov, const unsigned *counts,
                        size_t nmsg, const struct timespec *deadline)
{
    return cmp_ring_put_many(&q->ring, iov, counts, nmsg, deadline);
}

int cmp_queue_get(cmp_queue_t *q, cmp_ring_alloc_fn alloc, void *arg,
                  const struct timespec *deadline)
{
    return cmp_ring_get(&q->ring, alloc, arg, deadline);
}

long cmp_queue_get_many(cmp_queue_t *q, cmp_ring_alloc_fn alloc, void *arg, size_t max,
                        const struct timespec *deadline)
{
    return cmp_ring_get_many(&q->ring, alloc, arg, max, deadline);
}

uint64_t cmp_queue_qsize(const cmp_queue_t *q)
{
    return cmp_ring_count(&q->ring);
}

int cmp_queue_empty(const cmp_queue_t *q)
{
    return cmp_ring_count(&q->ring) == 0;
}

int cmp_queue_full(const cmp_queue_t *q)
{
    return q->ring.max_count != 0 && cmp_ring_count(&q->ring) >= q->ring.max_count;
}

static uint64_t unfinished(const cmp_queue_t *q, uint32_t done)
{
    uint64_t puts = (cmp__load64_acquire(&q->ring.tail) >> CNT_SHIFT) +
                    (cmp__load64_acquire(&q->ring.spill_tail) >> CNT_SHIFT);
    return (puts - done) & CNT_MASK;
}

uint64_t cmp_queue_unfinished(const cmp_queue_t *q)
{
    /* done first: a tail read after it is newer, never below it */
    uint32_t d = cmp__load_acquire(&q->done);
    return unfinished(q, d);
}

int cmp_queue_task_done(cmp_queue_t *q)
{
    uint32_t d = cmp__load_acquire(&q->done);
    uint64_t left;
    do {
        left = unfinished(q, d);
        if (left == 0)
            return -EOVERFLOW;
        /* release: join() returning sees what the task's worker wrote */
    } while (
        !__atomic_compare_exchange_n(&q->done, &d, d + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    if (left == 1) {
        cmp__fence_seq_cst(); /* pairs with the fence in join */
        if (cmp__load_relaxed(&q->join_waiters))
            cmp__futex_wake(&q->done, INT_MAX);
    }
    return 0;
}

int cmp_queue_join(cmp_queue_t *q, const struct timespec *deadline)
{
    uint32_t d = cmp__load_acquire(&q->done);
    if (unfinished(q, d) == 0)
        return 0;
    if (deadline && deadline->tv_sec == 0 && deadline->tv_nsec == 0)
        return -EAGAIN;
    int rc;
    cmp__fetch_add(&q->join_waiters, 1);
    for (;;) {
        cmp__fence_seq_cst(); /* pairs with the fence in task_done */
        d = cmp__load_acquire(&q->done);
        if (unfinished(q, d) == 0) {
            rc = 0;
            break;
        }
        /* A put after the last task_done changes the tail, not `done`: it
         * needs no wake, join simply keeps waiting. */
        rc = cmp__futex_wait(&q->done, d, deadline);
        if (rc == -EINTR)
            break;
        if (rc == -ETIMEDOUT) {
            d = cmp__load_acquire(&q->done);
            rc = unfinished(q, d) == 0 ? 0 : -ETIMEDOUT;
            break;
        }
    }
    cmp__fetch_sub(&q->join_waiters, 1);
    return rc;
}

void cmp_queue_close(cmp_queue_t *q)
{
    cmp_ring_close(&q->ring);
}
