/*
 * Semaphore: the futex word is the count itself, plus a count of sleepers.
 *
 * acquire decrements with a compare-and-swap while the count is positive,
 * spins briefly while it is zero, then registers in `waiters` and sleeps on
 * the word while it reads 0. release increments (refusing to pass `max`)
 * and wakes one sleeper only when `waiters` says someone sleeps, so an
 * uncontended acquire/release pair makes no system call.
 *
 * The sleeper's "waiters++ then read value" and the releaser's "value++
 * then read waiters" are all sequentially consistent (a Dekker pair): at
 * least one of them sees the other's write, so either the sleeper sees the
 * new count (or the kernel's recheck of the word does) or the releaser sees
 * the sleeper and wakes it. SC read-modify-writes and loads rather than
 * explicit fences: on x86 that costs no MFENCE on the uncontended release,
 * the locked instruction is the barrier.
 */
#include "atomic.h"
#include "internal.h"
#include "spin.h"

#include <errno.h>

int cmp_sem_init(cmp_sem_t *sem, uint32_t value, uint32_t max)
{
    if (max > CMP_SEM_VALUE_MAX || value > max)
        return -EINVAL;
    sem->value = value;
    sem->waiters = 0;
    sem->max = max;
    sem->spin_ns = CMP__SPIN_MAX_NS;
    sem->cpu = 0;
    return 0;
}

/* One decrement attempt; v holds the last value seen. */
static inline int try_take(cmp_sem_t *sem, uint32_t *v)
{
    while (*v > 0) {
        if (cmp__cas_acquire(&sem->value, v, *v - 1))
            return 1;
    }
    return 0;
}

int cmp_sem_tryacquire(cmp_sem_t *sem)
{
    uint32_t v = cmp__load_relaxed(&sem->value);
    return try_take(sem, &v) ? 0 : -EAGAIN;
}

int cmp_sem_acquire(cmp_sem_t *sem, const struct timespec *deadline)
{
    uint32_t v = cmp__load_relaxed(&sem->value);
    if (try_take(sem, &v))
        return 0;

    /* Spin only while nobody sleeps: with sleepers queued, a release goes
     * to them first and spinning only burns the releaser's CPU. */
    struct cmp__spin spin;
    if (!cmp__load_relaxed(&sem->waiters) &&
        cmp__spin_begin(&spin, &sem->spin_ns, &sem->cpu, deadline)) {
        int got = 0;
        while (!got && cmp__spin_until_change(&spin, &sem->value, 0)) {
            v = cmp__load_relaxed(&sem->value);
            got = try_take(sem, &v);
        }
        cmp__spin_end(&spin, &sem->spin_ns, got);
        if (got)
            return 0;
    }

    int rc;
    __atomic_fetch_add(&sem->waiters, 1, __ATOMIC_SEQ_CST); /* Dekker with release */
    for (;;) {
        v = __atomic_load_n(&sem->value, __ATOMIC_SEQ_CST);
        if (try_take(sem, &v)) {
            rc = 0;
            break;
        }
        rc = cmp__futex_wait(&sem->value, 0, deadline);
        if (rc == -ETIMEDOUT) {
            /* A release may have come with the timeout: take it if so. */
            v = cmp__load_relaxed(&sem->value);
            rc = try_take(sem, &v) ? 0 : -ETIMEDOUT;
            break;
        }
        if (rc == -EINTR)
            break;
    }
    cmp__fetch_sub(&sem->waiters, 1);
    /* A wake-up meant for us that we did not use (interrupted, or a count
     * left over) must reach another sleeper. */
    if (rc != 0 && cmp__load_relaxed(&sem->value) > 0 && cmp__load_relaxed(&sem->waiters))
        cmp__futex_wake(&sem->value, 1);
    return rc;
}

int cmp_sem_release(cmp_sem_t *sem)
{
    uint32_t v = cmp__load_relaxed(&sem->value);
    const uint32_t max = sem->max;
    cmp__spin_publish_cpu(&sem->cpu);
    do {
        if (v >= max)
            return -EOVERFLOW;
        /* release (SC includes it): the acquirer must see every write made
         * before release; SC for the Dekker pair with a sleeper */
    } while (!__atomic_compare_exchange_n(&sem->value, &v, v + 1, 0, __ATOMIC_SEQ_CST,
                                          __ATOMIC_RELAXED));
    if (__atomic_load_n(&sem->waiters, __ATOMIC_SEQ_CST))
        cmp__futex_wake(&sem->value, 1);
    return 0;
}

uint32_t cmp_sem_value(const cmp_sem_t *sem)
{
    return cmp__load_relaxed(&sem->value);
}
