/*
 * Lock: one 32-bit futex word = holder pid | CMP__LOCK_WAITERS.
 *
 * Uncontended acquire and release are one compare-and-swap each. A waiter
 * spins briefly, then sets the WAITERS bit and sleeps; release wakes one
 * sleeper only when that bit is set. Whoever takes the lock after sleeping
 * sets WAITERS again, since other sleepers may remain (Drepper, "Futexes
 * Are Tricky", mutex 3).
 *
 * The holder's pid in the word is what makes the lock robust: a sleeper
 * wakes every CMP__OWNER_CHECK_NS to check that the holder still lives, and
 * takes the lock over from a dead one (CMP_OWNER_DIED).
 */
#include "atomic.h"
#include "internal.h"

#include <errno.h>

#define WAITERS CMP__LOCK_WAITERS
#define HOLDER(v) ((v) & ~WAITERS)

void cmp_lock_init(cmp_lock_t *lock)
{
    lock->state = 0;
}

int cmp_lock_tryacquire(cmp_lock_t *lock)
{
    uint32_t expected = 0;
    if (cmp__cas_acquire(&lock->state, &expected, (uint32_t)cmp_self_pid()))
        return 0;
    return -EAGAIN;
}

/* If the holder recorded in v is dead, take the lock from it. */
static int take_from_dead_holder(cmp_lock_t *lock, uint32_t v, uint32_t me)
{
    if (HOLDER(v) == 0 || HOLDER(v) == me || cmp_pid_alive((pid_t)HOLDER(v)))
        return 0;
    /* Keep WAITERS: others may sleep on the word. Losing the race to another
     * rescuer is fine: the lock then has a live holder again. */
    return cmp__cas_acquire(&lock->state, &v, me | WAITERS);
}

int cmp_lock_acquire(cmp_lock_t *lock, const struct timespec *deadline)
{
    const uint32_t me = (uint32_t)cmp_self_pid();
    uint32_t v = 0;
    if (cmp__cas_acquire(&lock->state, &v, me))
        return 0;

    for (int spin = 0; spin < CMP__SPIN_LIMIT && HOLDER(v) != 0 && !(v & WAITERS); spin++) {
        cmp__cpu_relax();
        v = cmp__load_relaxed(&lock->state);
        if (v == 0 && cmp__cas_acquire(&lock->state, &v, me))
            return 0;
    }

    for (;;) {
        if (HOLDER(v) == 0) {
            if (cmp__cas_acquire(&lock->state, &v, me | WAITERS))
                return 0;
            continue;
        }
        if (!(v & WAITERS)) {
            /* A zero timeout (a poll) sets no WAITERS bit: that would cost
             * the holder a needless wake syscall on release. */
            if (deadline && cmp__deadline_passed(deadline)) {
                if (take_from_dead_holder(lock, v, me))
                    return CMP_OWNER_DIED;
                return -ETIMEDOUT;
            }
            if (!cmp__cas_acquire(&lock->state, &v, v | WAITERS))
                continue;
            v |= WAITERS;
        }
        struct timespec check;
        cmp__deadline_in_ns(&check, CMP__OWNER_CHECK_NS);
        int rc = cmp__futex_wait(&lock->state, v, cmp__deadline_min(deadline, &check));
        if (rc == -EINTR)
            return -EINTR;
        v = cmp__load_relaxed(&lock->state);
        if (rc == -ETIMEDOUT) {
            if (take_from_dead_holder(lock, v, me))
                return CMP_OWNER_DIED;
            v = cmp__load_relaxed(&lock->state);
            /* A lock freed just as the deadline passed is still taken: the
             * loop head tries it once more before giving up. */
            if (HOLDER(v) != 0 && cmp__deadline_passed(deadline))
                return -ETIMEDOUT;
        }
    }
}

int cmp_lock_release(cmp_lock_t *lock)
{
    uint32_t v = cmp__load_relaxed(&lock->state);
    do {
        if (HOLDER(v) == 0)
            return -EPERM;
        /* release: the next holder must see every write made under the lock */
    } while (
        !__atomic_compare_exchange_n(&lock->state, &v, 0, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED));
    if (v & WAITERS)
        cmp__futex_wake(&lock->state, 1);
    return 0;
}

int cmp_lock_is_locked(const cmp_lock_t *lock)
{
    return HOLDER(cmp__load_relaxed(&lock->state)) != 0;
}

pid_t cmp_lock_holder(const cmp_lock_t *lock)
{
    return (pid_t)HOLDER(cmp__load_relaxed(&lock->state));
}
