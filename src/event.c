/*
 * Event: the futex word holds the flag in bit 0 and, above it, a count of
 * set() calls that found the flag clear (a generation).
 *
 * A waiter that finds the flag clear remembers the word and sleeps while
 * it is unchanged. clear() only ever turns bit 0 off, and a clear word can
 * change only through set(), so any change seen by a waiter means a set()
 * happened after it started waiting: it returns success even if another
 * process cleared the flag again before it woke (threading.Event's
 * behaviour; a short set/clear pulse is never lost).
 *
 * set() on a set flag and clear() on a clear one write nothing, and set()
 * wakes only when `waiters` counts a sleeper (a Dekker pair of
 * sequentially consistent operations with the waiter, as in sem.c), so the
 * uncontended paths make no system call.
 */
#include "atomic.h"
#include "internal.h"
#include "spin.h"

#include <errno.h>
#include <limits.h>

#define FLAG 1u

void cmp_event_init(cmp_event_t *event)
{
    event->flag = 0;
    event->waiters = 0;
    event->spin_ns = CMP__SPIN_MAX_NS;
    event->cpu = 0;
}

void cmp_event_set(cmp_event_t *event)
{
    uint32_t v = cmp__load_relaxed(&event->flag);
    if (v & FLAG)
        return;
    cmp__spin_publish_cpu(&event->cpu);
    do {
        if (v & FLAG)
            return;
        /* release (SC includes it): a waiter that sees the flag sees what
         * was written before set(); SC for the Dekker pair with a sleeper */
    } while (!__atomic_compare_exchange_n(&event->flag, &v, (v + 2) | FLAG, 0, __ATOMIC_SEQ_CST,
                                          __ATOMIC_RELAXED));
    if (__atomic_load_n(&event->waiters, __ATOMIC_SEQ_CST))
        cmp__futex_wake(&event->flag, INT_MAX);
}

void cmp_event_clear(cmp_event_t *event)
{
    uint32_t v = cmp__load_relaxed(&event->flag);
    while ((v & FLAG) && !cmp__cas_acquire(&event->flag, &v, v & ~FLAG)) {
    }
}

int cmp_event_is_set(const cmp_event_t *event)
{
    return (int)(cmp__load_acquire(&event->flag) & FLAG);
}

int cmp_event_wait(cmp_event_t *event, const struct timespec *deadline)
{
    const uint32_t start = cmp__load_acquire(&event->flag);
    if (start & FLAG)
        return 0;

    struct cmp__spin spin;
    if (cmp__spin_begin(&spin, &event->spin_ns, &event->cpu, deadline)) {
        int changed = cmp__spin_until_change(&spin, &event->flag, start);
        cmp__spin_end(&spin, &event->spin_ns, changed);
        if (changed)
            return 0;
    }

    int rc;
    __atomic_fetch_add(&event->waiters, 1, __ATOMIC_SEQ_CST); /* Dekker with set */
    for (;;) {
        if (__atomic_load_n(&event->flag, __ATOMIC_SEQ_CST) != start) {
            rc = 0;
            break;
        }
        rc = cmp__futex_wait(&event->flag, start, deadline);
        if (rc == -ETIMEDOUT) {
            rc = cmp__load_acquire(&event->flag) != start ? 0 : -ETIMEDOUT;
            break;
        }
        if (rc == -EINTR)
            break;
    }
    cmp__fetch_sub(&event->waiters, 1);
    return rc;
}
