/*
 * Adaptive spinning before a futex sleep (sem.c, event.c).
 *
 * A hand-off between two busy processes on different CPUs (a ping-pong)
 * completes within a few microseconds, while a sleep and a wake-up cost
 * system calls on both sides and, when the sleeper's CPU went idle on a
 * virtual machine, up to hundreds of microseconds. But when the scheduler
 * has put the other party on *our* CPU (it likes to, for processes that
 * wake each other) or the cores are oversubscribed, every spin only delays
 * the party we wait for. Yielding instead is worse still: it can hand the
 * CPU to an unrelated CPU hog for a whole time slice.
 *
 * So each object keeps a spin budget (a hint in shared memory, written
 * only when it changes): a spin that succeeded doubles it, one that ran out
 * halves it. With cores to spare it settles at the maximum; where spinning
 * cannot help it sinks to the minimum and waits become plain futex sleeps.
 * Bounded in time, not iterations: PAUSE lasts 10 to 140 cycles depending
 * on the CPU.
 */
#ifndef CMP_SPIN_H
#define CMP_SPIN_H

#include "atomic.h"
#include "internal.h"

#define CMP__SPIN_MIN_NS 1000u
#define CMP__SPIN_MAX_NS 32000u

struct cmp__spin {
    struct timespec end;
    const struct timespec *stop; /* earlier of end and the caller's deadline */
    uint32_t budget;
};

static inline void cmp__spin_begin(struct cmp__spin *s, const uint32_t *hint,
                                   const struct timespec *deadline)
{
    uint32_t budget = cmp__load_relaxed(hint);
    if (budget < CMP__SPIN_MIN_NS || budget > CMP__SPIN_MAX_NS)
        budget = CMP__SPIN_MIN_NS; /* zeroed memory, or a torn guess */
    s->budget = budget;
    cmp__deadline_in_ns(&s->end, (long)budget);
    s->stop = cmp__deadline_min(deadline, &s->end);
}

/* Spins while *word == start: 1 once it changed, 0 when the time is up. */
static inline int cmp__spin_until_change(struct cmp__spin *s, const uint32_t *word, uint32_t start)
{
    for (unsigned i = 1;; i++) {
        cmp__cpu_relax();
        if (cmp__load_acquire(word) != start)
            return 1;
        if ((i & 15) == 0 && cmp__deadline_passed(s->stop))
            return 0;
    }
}

/* Records how the spin went (benign races: it is only a hint). A spin cut
 * short by the caller's deadline says nothing about the budget. */
static inline void cmp__spin_end(struct cmp__spin *s, uint32_t *hint, int succeeded)
{
    if (!succeeded && s->stop != &s->end)
        return;
    uint32_t next = succeeded ? s->budget * 2 : s->budget / 2;
    if (next < CMP__SPIN_MIN_NS)
        next = CMP__SPIN_MIN_NS;
    if (next > CMP__SPIN_MAX_NS)
        next = CMP__SPIN_MAX_NS;
    if (next != cmp__load_relaxed(hint))
        cmp__store_relaxed(hint, next);
}

#endif /* CMP_SPIN_H */
