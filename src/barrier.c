/*
 * Barrier with the semantics of Python's threading.Barrier, for processes.
 *
 * The counters live under `guard`, a robust cmp_lock_t: a process that dies
 * while holding it is recovered by the next acquirer, so the guard never
 * wedges the barrier. Every sleep is on `seq`: a sleeper sets SLEEPERS in
 * it under the guard, drops the guard and sleeps while the word is
 * unchanged; whoever changes the state under the guard bumps the counter
 * part, clears SLEEPERS and wakes everyone only if the bit was set.
 *
 * A round: arrivals count up while FILLING; the last one takes index
 * parties-1 and, if there is an action, runs it in state ACTION *without*
 * the guard (so abort(), reset() and the others stay responsive during a
 * long action); then `generation` is bumped and the state becomes
 * DRAINING. A waiter knows its round tripped when the generation changed.
 * New arrivals wait while the barrier is busy (ACTION, DRAINING,
 * RESETTING); the last process to leave a DRAINING or RESETTING barrier
 * makes it FILLING again. BROKEN stays until reset().
 *
 * A process that dies while waiting stays counted, so the round can never
 * complete: the survivors' deadlines break the barrier (timeouts are the
 * defence, as with threads that never arrive).
 */
#include "atomic.h"
#include "internal.h"

#include <errno.h>
#include <limits.h>

enum { FILLING, ACTION, DRAINING, RESETTING, BROKEN };

#define SLEEPERS 0x80000000u

int cmp_barrier_init(cmp_barrier_t *barrier, uint32_t parties)
{
    if (parties == 0)
        return -EINVAL;
    cmp_lock_init(&barrier->guard);
    barrier->seq = 0;
    barrier->parties = parties;
    barrier->count = 0;
    barrier->state = FILLING;
    barrier->generation = 0;
    return 0;
}

/* Takes the guard; a signal does not stop it (the guard is held only for
 * a few instructions, or recovered from a dead holder within 100 ms), but
 * is remembered in *interrupted when that pointer is given. */
static void lock_guard(cmp_barrier_t *b, int *interrupted)
{
    for (;;) {
        int rc = cmp_lock_acquire(&b->guard, NULL);
        if (rc >= 0)
            return; /* CMP_OWNER_DIED: the counters are single words; go on */
        if (rc == -EINTR && interrupted)
            *interrupted = 1;
    }
}

/* Under the guard: records a state change. Returns whether sleepers must
 * be woken (after the guard is dropped, see unlock_guard). */
static int bump(cmp_barrier_t *b)
{
    uint32_t v = cmp__load_relaxed(&b->seq);
    /* the guard's release publishes this with the state it announces */
    cmp__store_relaxed(&b->seq, (v + 1) & ~SLEEPERS);
    return (v & SLEEPERS) != 0;
}

static void unlock_guard(cmp_barrier_t *b, int wake)
{
    cmp_lock_release(&b->guard);
    if (wake)
        cmp__futex_wake(&b->seq, INT_MAX);
}

/* Under the guard: drops it, sleeps until the state changes or the
 * deadline, and takes it back. Returns 0, -ETIMEDOUT or -EINTR (the guard
 * is held again in every case). */
static int sleep_on(cmp_barrier_t *b, const struct timespec *deadline)
{
    uint32_t v = cmp__load_relaxed(&b->seq) | SLEEPERS;
    cmp__store_relaxed(&b->seq, v);
    cmp_lock_release(&b->guard);
    int rc = cmp__futex_wait(&b->seq, v, deadline);
    int interrupted = 0;
    lock_guard(b, &interrupted);
    if (rc == 0 && interrupted)
        rc = -EINTR;
    return rc;
}

static int set_state(cmp_barrier_t *b, uint32_t state)
{
    cmp__store_relaxed(&b->state, state);
    return bump(b);
}

/* Under the guard: the caller leaves the barrier. */
static int leave(cmp_barrier_t *b)
{
    uint32_t count = b->count - 1;
    cmp__store_relaxed(&b->count, count);
    uint32_t state = b->state;
    if (count == 0 && (state == DRAINING || state == RESETTING))
        return set_state(b, FILLING);
    return 0;
}

int cmp_barrier_wait(cmp_barrier_t *b, const struct timespec *deadline,
                     cmp_barrier_action_fn action, void *arg)
{
    int wake = 0, rc;
    lock_guard(b, NULL);

    /* Wait until the previous round has drained or a reset has finished. */
    while (b->state == ACTION || b->state == DRAINING || b->state == RESETTING) {
        rc = sleep_on(b, deadline);
        if (rc == -EINTR) {
            unlock_guard(b, 0);
            return -EINTR;
        }
        if (rc == -ETIMEDOUT &&
            (b->state == ACTION || b->state == DRAINING || b->state == RESETTING)) {
            /* Stuck (perhaps a dead process never left): break it, as
             * a waiter's timeout does. */
            unlock_guard(b, set_state(b, BROKEN));
            return -ETIMEDOUT;
        }
    }
    if (b->state == BROKEN) {
        unlock_guard(b, 0);
        return -EPIPE;
    }

    const uint32_t index = b->count;
    const uint32_t generation = b->generation;
    cmp__store_relaxed(&b->count, index + 1);

    if (index + 1 == b->parties) {
        if (action) {
            wake = set_state(b, ACTION);
            unlock_guard(b, wake);
            int failed = action(arg);
            lock_guard(b, NULL);
            wake = 0;
            if (b->state != ACTION) { /* aborted, reset or timed out meanwhile */
                rc = -EPIPE;
                goto out;
            }
            if (failed) {
                wake = set_state(b, BROKEN);
                rc = -EPIPE;
                goto out;
            }
        }
        b->generation = generation + 1;
        wake = set_state(b, DRAINING);
        rc = (int)index;
        goto out;
    }

    for (;;) {
        if (b->generation != generation) {
            rc = (int)index;
            break;
        }
        if (b->state == BROKEN || b->state == RESETTING) {
            rc = -EPIPE;
            break;
        }
        /* FILLING or ACTION, still our round */
        rc = sleep_on(b, deadline);
        if (rc == 0)
            continue;
        if (b->generation != generation) {
            rc = (int)index;
            break;
        }
        if (b->state == BROKEN || b->state == RESETTING) {
            rc = -EPIPE;
            break;
        }
        if (rc == -EINTR && b->state == FILLING) {
            /* Withdraw: the round goes on without us. */
            cmp__store_relaxed(&b->count, b->count - 1);
            unlock_guard(b, 0);
            return -EINTR;
        }
        /* Timed out, or interrupted while the action runs (we are already
         * counted in this round and cannot withdraw): break the barrier. */
        wake = set_state(b, BROKEN);
        break;
    }

out:
    wake |= leave(b);
    unlock_guard(b, wake);
    return rc;
}

void cmp_barrier_abort(cmp_barrier_t *b)
{
    lock_guard(b, NULL);
    unlock_guard(b, set_state(b, BROKEN));
}

void cmp_barrier_reset(cmp_barrier_t *b)
{
    lock_guard(b, NULL);
    int wake = 0;
    if (b->count > 0) {
        /* Waiters are released with -EPIPE; the last to leave refills it.
         * A draining barrier is already refilling on its own. */
        if (b->state != DRAINING)
            wake = set_state(b, RESETTING);
    } else {
        wake = set_state(b, FILLING);
    }
    unlock_guard(b, wake);
}

uint32_t cmp_barrier_parties(const cmp_barrier_t *b)
{
    return b->parties;
}

uint32_t cmp_barrier_n_waiting(const cmp_barrier_t *b)
{
    uint32_t state = cmp__load_relaxed(&b->state);
    return state == FILLING || state == ACTION ? cmp__load_relaxed(&b->count) : 0;
}

int cmp_barrier_broken(const cmp_barrier_t *b)
{
    return cmp__load_relaxed(&b->state) == BROKEN;
}
