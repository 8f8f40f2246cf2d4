/*
 * Lock: one 64-bit word = the holder's identity | CMP__LOCK_WAITERS.
 *
 * Uncontended acquire and release are one compare-and-swap each. A waiter
 * spins briefly, then sets the WAITERS bit and sleeps; release wakes one
 * sleeper only when that bit is set. Whoever takes the lock after sleeping
 * sets WAITERS again, since other sleepers may remain (Drepper, "Futexes
 * Are Tricky", mutex 3).
 *
 * The holder's identity in the word is what makes the lock robust: a
 * sleeper wakes every CMP__OWNER_CHECK_NS to check that the holder still
 * lives, and takes the lock over from a dead one (CMP_OWNER_DIED).
 *
 * Why 64 bits: a pid alone is reused (pid_max may be 32768), and a waiter
 * that sees a dead holder's pid given to a live process would wait for it
 * forever. The identity is the pid (low half) plus a tag of the holder's
 * start time (high half, cmp__self_id), written by the same compare-and-swap
 * that takes the lock, so no waiter can ever see a new holder's pid next to
 * an old holder's tag and steal the lock from a live process (which a tag
 * stored beside a 32-bit word, after the CAS, would allow). The fast path
 * stays one CAS: a 64-bit CAS costs what a 32-bit one does on the 64-bit
 * machines we target, and the identity is cached per process. The futex
 * sleeps on the low half, which holds pid | WAITERS: what a sleeper must
 * notice changing (release, or a new WAITERS bit).
 */
#include "atomic.h"
#include "internal.h"
#include "spin.h"

#include <errno.h>

#define WAITERS ((uint64_t)CMP__LOCK_WAITERS)
#define HOLDER(v) ((v) & ~WAITERS)
#define PID_MASK ((uint64_t)(CMP__LOCK_WAITERS - 1))

/* The low half, where the pid and WAITERS live, is the futex word; which
 * 4 bytes of the word that is depends on the byte order. Only the kernel
 * reads through this pointer. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define LOW_HALF 0
#elif defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define LOW_HALF 1
#else
#error "unknown byte order: the lock's futex word is the low half of a 64-bit word"
#endif

static inline uint32_t *futex_word(cmp_lock_t *lock)
{
    return (uint32_t *)(void *)&lock->state + LOW_HALF;
}

uint32_t *cmp__lock_futex_word(cmp_lock_t *lock)
{
    return futex_word(lock);
}

void cmp__lock_mark_waiters(cmp_lock_t *lock)
{
    /* the holder's identity bits are ours and stay; only WAITERS is added */
    __atomic_fetch_or(&lock->state, WAITERS, __ATOMIC_RELAXED);
}

void cmp_lock_init(cmp_lock_t *lock)
{
    lock->state = 0;
}

int cmp_lock_tryacquire(cmp_lock_t *lock)
{
    uint64_t expected = 0;
    if (cmp__cas64_acquire(&lock->state, &expected, cmp__self_id()))
        return 0;
    return -EAGAIN;
}

/* If the holder recorded in v is dead, take the lock from it. A process
 * with our pid but another start time is a dead holder too: our own pid
 * was once a dead process's. */
static int take_from_dead_holder(cmp_lock_t *lock, uint64_t v, uint64_t me)
{
    if (HOLDER(v) == 0 || HOLDER(v) == me || cmp__id_alive(HOLDER(v)))
        return 0;
    /* Keep WAITERS: others may sleep on the word. Losing the race to another
     * rescuer is fine: the lock then has a live holder again. The CAS
     * compares the whole identity, so a lock that changed hands meanwhile
     * (even to a process with the same pid) is left alone. */
    return cmp__cas64_acquire(&lock->state, &v, me | WAITERS);
}

/* A deadline already passed (CMP_NOWAIT): one attempt, no spin. */
static int is_poll(const struct timespec *deadline)
{
    return deadline && cmp__deadline_passed(deadline);
}

int cmp_lock_acquire(cmp_lock_t *lock, const struct timespec *deadline)
{
    const uint64_t me = cmp__self_id();
    uint64_t v = 0;
    if (cmp__cas64_acquire(&lock->state, &v, me))
        return 0;

    /* Spin while the holder runs and nobody sleeps (with sleepers queued
     * the release goes to them first), where the policy lets us (spin.h:
     * a lock's holder is unknown, so not while this thread competes for
     * its CPU). Counted in rounds, with no clock: critical sections are
     * short, a contended hand-off here takes ~0.2 us, and clock reads
     * would add a third to it. */
    if (HOLDER(v) != 0 && !(v & WAITERS) && !is_poll(deadline) && cmp__spin_enabled() &&
        !cmp__spin_held()) {
        for (int i = 0; i < CMP__SPIN_LIMIT && HOLDER(v) != 0 && !(v & WAITERS); i++) {
            cmp__cpu_relax();
            v = cmp__load64_relaxed(&lock->state);
            if (v == 0 && cmp__cas64_acquire(&lock->state, &v, me))
                return 0;
        }
    }

    for (;;) {
        if (HOLDER(v) == 0) {
            if (cmp__cas64_acquire(&lock->state, &v, me | WAITERS))
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
            if (!cmp__cas64_acquire(&lock->state, &v, v | WAITERS))
                continue;
            v |= WAITERS;
        }
        struct timespec check;
        cmp__deadline_in_ns(&check, CMP__OWNER_CHECK_NS);
        int rc =
            cmp__futex_wait(futex_word(lock), (uint32_t)v, cmp__deadline_min(deadline, &check));
        if (rc == -EINTR)
            return -EINTR;
        v = cmp__load64_relaxed(&lock->state);
        if (rc == -ETIMEDOUT) {
            if (take_from_dead_holder(lock, v, me))
                return CMP_OWNER_DIED;
            v = cmp__load64_relaxed(&lock->state);
            /* A lock freed just as the deadline passed is still taken: the
             * loop head tries it once more before giving up. */
            if (HOLDER(v) != 0 && cmp__deadline_passed(deadline))
                return -ETIMEDOUT;
        }
    }
}

int cmp_lock_release(cmp_lock_t *lock)
{
    uint64_t v = cmp__load64_relaxed(&lock->state);
    do {
        if (HOLDER(v) == 0)
            return -EPERM;
        /* release: the next holder must see every write made under the lock */
    } while (
        !__atomic_compare_exchange_n(&lock->state, &v, 0, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED));
    if (v & WAITERS)
        cmp__futex_wake(futex_word(lock), 1);
    return 0;
}

int cmp_lock_is_locked(const cmp_lock_t *lock)
{
    return HOLDER(cmp__load64_relaxed(&lock->state)) != 0;
}

pid_t cmp_lock_holder(const cmp_lock_t *lock)
{
    return (pid_t)(cmp__load64_relaxed(&lock->state) & PID_MASK);
}

int cmp_lock_is_mine(const cmp_lock_t *lock)
{
    return HOLDER(cmp__load64_relaxed(&lock->state)) == cmp__self_id();
}

int cmp_lock_abandoned(const cmp_lock_t *lock)
{
    uint64_t holder = HOLDER(cmp__load64_relaxed(&lock->state));
    return holder != 0 && !cmp__id_alive(holder);
}
