/*
 * The wake-up policy: how every libcmp wait spins before it sleeps (ring,
 * connection, lock, semaphore, event, condition; barrier and queue join
 * sleep at once). A lock spins a fixed count of rounds, gated by
 * cmp__spin_enabled and cmp__spin_held (lock.c). The public
 * summary is in cmp.h ("Waiting"); the measurements behind it are in
 * bench/wake_bench.c.
 *
 * A hand-off between two processes that each own a CPU completes in a few
 * hundred nanoseconds when the waiter spins, while a futex sleep and wake-up
 * cost system calls on both sides and, when the sleeper's CPU went idle on
 * a virtual machine, tens of microseconds. But a spin only pays while the
 * party we wait for runs on *another* CPU. Three cases make it a loss, and
 * each has its own guard here:
 *
 *  1. The party we wait for is on our CPU (the scheduler likes to put
 *     processes that wake each other together): every spin delays it by
 *     the whole spin. Whoever changes a word a waiter spins on publishes
 *     its CPU next to it (cmp__spin_publish_cpu); a waiter whose CPU is
 *     that one sleeps at once (sched_getcpu() is a vDSO/rseq read, ~1 ns).
 *  2. Our CPU is shared with another runnable process (a CPU hog, another
 *     worker): the spinner is preempted, and a preempted spinner is not a
 *     sleeper, so the wake-up that comes meanwhile does not preempt the hog
 *     for it — it waits out the hog's time slice, milliseconds. Where the
 *     peer's CPU is unknown (a socket, a lock's holder, a condition used
 *     both ways) a thread that has lately waited for its own CPU does not
 *     spin (cmp__spin_held: its run-queue wait, from the kernel); where it
 *     is known, case 1 already tells, and a stream keeps its spins (a
 *     consumer of a busy producer finds the next message within one). A
 *     spin that sees the clock jump between two checks (it was
 *     descheduled) stops at once and counts as failed.
 *  3. The other party needs longer than a spin (it computes, or sleeps
 *     itself): the spin is wasted CPU. Each object keeps a spin budget (a
 *     hint in shared memory, written only when it changes): a spin that
 *     succeeded doubles it, one that ran out or was preempted takes a
 *     quarter off it, between SPIN_MIN_NS and SPIN_MAX_NS, and below the
 *     minimum the hint says "off": waits sleep at once, with one probing
 *     spin in CMP__SPIN_PROBE_EVERY so that spinning comes back when it
 *     pays. The decay is slow (eight failures in a row from the maximum)
 *     because failures come in bursts: one party's sleep makes the
 *     other's next spins fail while it wakes, and halving went "off" in
 *     such a burst — on an idle machine, 1 % of a Pipe's waits then slept
 *     (each sleep tens of us on a virtual machine), +12 % per round trip.
 *
 * CMP_SPIN=0 in the environment turns spinning off (spin.c).
 *
 * Measured and not used (figures in the closing note of the under-load
 * issue, bench/wake_bench.c reproduces the floors):
 *  - sched_yield(): on a busy CPU it hands the CPU to a hog for a whole
 *    slice, and the yielder then waits like a preempted spinner;
 *  - /proc/loadavg's running count as "is a CPU idle": 400 ns a read, it
 *    cannot tell whether the busy CPU is ours, and under EEVDF's delayed
 *    dequeue it counts sleeping tasks (11 seen with 3 runnable);
 *  - holding off after a preempted spin, with backoff: too late (the
 *    preemption already cost a slice) and Pipe under load kept its 13 us;
 *  - the run-queue test for every wait: it costs a stream's consumer its
 *    spins and the producer a wake-up per message (Queue 1->1 0.05 -> 0.14
 *    of the stdlib at load 1).
 *
 * Bounded in time, not iterations: PAUSE lasts 10 to 140 cycles depending
 * on the CPU.
 */
#ifndef CMP_SPIN_H
#define CMP_SPIN_H

#include "atomic.h"
#include "internal.h"

#include <sched.h>

#define CMP__SPIN_MIN_NS 4000u
#define CMP__SPIN_MAX_NS 32000u
/* A budget hint that says "don't spin": a spin at the minimum failed. One
 * wait in CMP__SPIN_PROBE_EVERY then spins with half the maximum (long
 * enough for a slow answer: a Python peer's takes microseconds), so that
 * spinning comes back when it would succeed; probes cost at most 1 us a
 * wait on average. */
#define CMP__SPIN_OFF 1u
#define CMP__SPIN_PROBE_EVERY 16u
/* A gap this long between two clock checks of a spin means it was
 * descheduled: a spin that another process preempted (often the very peer
 * it waits for, woken onto our CPU) and that then finds its answer did not
 * succeed by spinning. */
#define CMP__SPIN_PREEMPTED_NS 20000L

/* 0 when the environment variable CMP_SPIN was 0 at the first wait of the
 * process: every wait then sleeps at once (spin.c). */
extern int cmp__spin_setting __attribute__((visibility("hidden")));
int cmp__spin_enabled_slow(void);
static inline int cmp__spin_enabled(void)
{
    int v = __atomic_load_n(&cmp__spin_setting, __ATOMIC_RELAXED);
    return __builtin_expect(v >= 0, 1) ? v : cmp__spin_enabled_slow();
}

/* Case 2 (spin.c): 1 while the calling thread holds off spinning, since
 * it has lately had to wait for its CPU. */
int cmp__spin_held(void);

/* The caller's CPU, +1 (0: unknown). */
static inline uint32_t cmp__spin_cpu(void)
{
    int cpu = sched_getcpu();
    return cpu < 0 ? 0 : (uint32_t)cpu + 1;
}

/* Called by whoever changes a word that waiters spin on, just before (or
 * after) the change: records its CPU in *cpu for them (see case 1). */
static inline void cmp__spin_publish_cpu(uint32_t *cpu)
{
    uint32_t me = cmp__spin_cpu();
    if (cmp__load_relaxed(cpu) != me)
        cmp__store_relaxed(cpu, me);
}

enum { CMP__SPIN_RUNNING, CMP__SPIN_DONE, CMP__SPIN_TIMED_OUT, CMP__SPIN_PREEMPTED };

struct cmp__spin {
    struct timespec end;
    struct timespec last;            /* time of the last poll */
    const struct timespec *stop;     /* earlier of end and the caller's deadline */
    const struct timespec *deadline; /* the caller's */
    uint32_t budget;
    unsigned polls;
    int state;
    long preempted_ns; /* a gap between clock checks that means preempted */
};

/* The cheap part of cmp__spin_begin: 0 when spinning cannot pay now for
 * a party last seen on peer_cpu (or when spinning is off). */
static inline int cmp__spin_may_pay(const uint32_t *peer_cpu)
{
    if (!cmp__spin_enabled())
        return 0;
    uint32_t peer = cmp__load_relaxed(peer_cpu);
    return !(peer != 0 && peer == cmp__spin_cpu());
}

/* Starts a spin before a sleep. hint: the object's budget word;
 * peer_cpu: where the party that will wake us published its
 * CPU (NULL: unknown). Returns 0 when spinning cannot pay now (then don't
 * spin, and don't call cmp__spin_end). */
static inline int cmp__spin_begin(struct cmp__spin *s, const uint32_t *hint,
                                  const uint32_t *peer_cpu, const struct timespec *deadline)
{
    if (peer_cpu ? !cmp__spin_may_pay(peer_cpu) : !cmp__spin_enabled() || cmp__spin_held())
        return 0;
    uint32_t budget = cmp__load_relaxed(hint);
    if (budget == CMP__SPIN_OFF) {
        /* spins kept failing: sleep at once, but probe now and then */
        static __thread unsigned skipped;
        if (++skipped % CMP__SPIN_PROBE_EVERY != 0)
            return 0;
        budget = CMP__SPIN_MAX_NS / 2;
    } else if (budget < CMP__SPIN_MIN_NS || budget > CMP__SPIN_MAX_NS) {
        budget = CMP__SPIN_MIN_NS; /* zeroed memory, or a torn guess */
    }
    /* The clock starts at the first check (cmp__spin_check), not here: a
     * hand-off between two spinning processes completes within those first
     * rounds, and a clock read on each side costs it a tenth. */
    s->budget = budget;
    s->deadline = deadline;
    s->stop = NULL;
    s->polls = 0;
    s->state = CMP__SPIN_RUNNING;
    s->preempted_ns = CMP__SPIN_PREEMPTED_NS;
    return 1;
}

/* Checks the clock: 1 while the spin may go on; 0 once it ran out of time
 * or was descheduled since the last check (s->state says which). For a
 * spin whose every round is a system call, call it every round. */
static inline int cmp__spin_check(struct cmp__spin *s)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!s->stop) {
        s->last = s->end = now;
        s->end.tv_nsec += (long)s->budget;
        if (s->end.tv_nsec >= 1000000000L) {
            s->end.tv_sec++;
            s->end.tv_nsec -= 1000000000L;
        }
        s->stop = cmp__deadline_min(s->deadline, &s->end);
    }
    long gap = (now.tv_sec - s->last.tv_sec) * 1000000000L + (now.tv_nsec - s->last.tv_nsec);
    s->last = now;
    if (gap > s->preempted_ns) {
        s->state = CMP__SPIN_PREEMPTED;
        return 0;
    }
    if (now.tv_sec > s->stop->tv_sec ||
        (now.tv_sec == s->stop->tv_sec && now.tv_nsec >= s->stop->tv_nsec)) {
        s->state = CMP__SPIN_TIMED_OUT;
        return 0;
    }
    return 1;
}

/* One round of a spin on a word in memory: pauses, and every 16 rounds
 * (well under a microsecond apart) checks the clock. */
static inline int cmp__spin_more(struct cmp__spin *s)
{
    cmp__cpu_relax();
    if ((++s->polls & 15) != 0)
        return 1;
    return cmp__spin_check(s);
}

/* Spins while *word == start: 1 once it changed, 0 when the spin is over. */
static inline int cmp__spin_until_change(struct cmp__spin *s, const uint32_t *word, uint32_t start)
{
    do {
        if (cmp__load_acquire(word) != start)
            return 1;
    } while (cmp__spin_more(s));
    return 0;
}

/* Records how the spin went in the object's hint (benign races: it is only
 * a hint). A spin cut short by the caller's deadline says nothing about
 * the budget. */
static inline void cmp__spin_end(struct cmp__spin *s, uint32_t *hint, int succeeded)
{
    if (!succeeded && s->state == CMP__SPIN_TIMED_OUT && s->stop && s->stop != &s->end)
        return;
    uint32_t next = succeeded ? s->budget * 2 : s->budget - s->budget / 4;
    if (next < CMP__SPIN_MIN_NS)
        next = succeeded ? CMP__SPIN_MIN_NS : CMP__SPIN_OFF;
    if (next > CMP__SPIN_MAX_NS)
        next = CMP__SPIN_MAX_NS;
    if (next != cmp__load_relaxed(hint))
        cmp__store_relaxed(hint, next);
}

#endif /* CMP_SPIN_H */
