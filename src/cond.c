/*
 * Condition variable on four words, so that it can live in shared memory and
 * work with any lock:
 *
 *   guard     a cmp_lock_t protecting the three counters (held for a few
 *             instructions only; robust like every cmp_lock_t)
 *   seq       the futex word: bumped by every notify that grants a wake-up
 *   nwaiters  registered waiters that have not yet left
 *   nsignals  wake-ups granted by notify and not yet consumed
 *
 * A waiter registers while it still holds the user's lock (nwaiters++ and
 * ticket = seq), then releases that lock and sleeps on seq. A notify grants
 * k = min(n, waiters not yet granted) wake-ups (nsignals += k), bumps seq
 * and wakes k sleepers. A waiter may consume a grant only if seq moved since
 * its ticket: a waiter that registered after a notify cannot take the
 * wake-up that notify meant for those already waiting, and one that
 * registered before it cannot sleep through it (its futex wait fails on the
 * changed seq). Exactly k waiters return "notified" per notify; whoever is
 * woken by the kernel but finds the grants already consumed (by an eligible
 * waiter that was still running) sleeps again.
 *
 * Limitation: a waiter process killed while registered stays counted in
 * nwaiters, so a later notify_all() may grant a wake-up nobody consumes;
 * such a leftover grant can later let one extra eligible waiter return.
 */
#include "atomic.h"
#include "internal.h"
#include "spin.h"

#include <errno.h>
#include <limits.h>

static void guard_lock(cmp_cond_t *cond)
{
    /* The critical section is a few instructions long; nobody needs to see
     * EINTR from it. CMP_OWNER_DIED: a process died inside it, and its
     * update is either complete or not started (single stores). */
    while (cmp_lock_acquire(&cond->guard, NULL) == -EINTR)
        ;
}

static void guard_unlock(cmp_cond_t *cond)
{
    cmp_lock_release(&cond->guard);
}

void cmp_cond_init(cmp_cond_t *cond)
{
    cmp_lock_init(&cond->guard);
    cond->seq = 0;
    cond->nwaiters = 0;
    cond->nsignals = 0;
    cond->spin_ns = CMP__SPIN_MAX_NS;
}

uint32_t cmp_cond_n_waiting(const cmp_cond_t *cond)
{
    uint32_t w = cmp__load_relaxed(&cond->nwaiters);
    uint32_t s = cmp__load_relaxed(&cond->nsignals);
    return w > s ? w - s : 0;
}

int cmp_cond_prepare_wait(cmp_cond_t *cond, uint32_t *ticket)
{
    guard_lock(cond);
    cond->nwaiters++;
    *ticket = cmp__load_relaxed(&cond->seq);
    guard_unlock(cond);
    return 0;
}

/* With the guard held: consume a grant if one is available to this ticket. */
static int try_consume(cmp_cond_t *cond, uint32_t ticket)
{
    if (cmp__load_relaxed(&cond->seq) != ticket && cond->nsignals > 0) {
        cond->nsignals--;
        cond->nwaiters--;
        return 1;
    }
    return 0;
}

int cmp_cond_cancel_wait(cmp_cond_t *cond, uint32_t ticket)
{
    guard_lock(cond);
    int notified = try_consume(cond, ticket);
    if (!notified)
        cond->nwaiters--;
    guard_unlock(cond);
    return notified;
}

int cmp_cond_sleep(cmp_cond_t *cond, uint32_t ticket, const struct timespec *deadline)
{
    for (;;) {
        guard_lock(cond);
        uint32_t seq = cmp__load_relaxed(&cond->seq);
        int notified = try_consume(cond, ticket);
        guard_unlock(cond);
        if (notified)
            return 0;
        /* no peer CPU: one condition carries notifies both ways, so its
         * last notifier is as often the waiter itself */
        struct cmp__spin spin;
        if (cmp__spin_begin(&spin, &cond->spin_ns, NULL, deadline)) {
            int moved = cmp__spin_until_change(&spin, &cond->seq, seq);
            cmp__spin_end(&spin, &cond->spin_ns, moved);
            if (moved)
                continue;
        }
        int rc = cmp__futex_wait(&cond->seq, seq, deadline);
        if (rc == -ETIMEDOUT)
            return cmp_cond_cancel_wait(cond, ticket) ? 0 : -ETIMEDOUT;
        if (rc == -EINTR)
            return -EINTR;
        /* 0: woken or seq moved; anything else: recheck as well */
    }
}

int cmp_cond_notify(cmp_cond_t *cond, uint32_t n)
{
    if (n == 0)
        return 0;
    guard_lock(cond);
    uint32_t pending = cond->nwaiters - cond->nsignals;
    uint32_t k = n < pending ? n : pending;
    if (k) {
        cond->nsignals += k;
        /* release: a waiter that sees the new seq (in its futex wait or
         * under the guard) must also see the grants */
        cmp__store_release(&cond->seq, cmp__load_relaxed(&cond->seq) + 1);
    }
    guard_unlock(cond);
    if (k)
        cmp__futex_wake(&cond->seq, k > INT_MAX ? INT_MAX : (int)k);
    return k > INT_MAX ? INT_MAX : (int)k;
}

int cmp_cond_notify_all(cmp_cond_t *cond)
{
    return cmp_cond_notify(cond, UINT32_MAX);
}

/* Re-acquire after the sleep: the caller must get its lock back, so EINTR
 * is retried here. */
static int relock(cmp_lock_t *lock)
{
    int rc;
    while ((rc = cmp_lock_acquire(lock, NULL)) == -EINTR)
        ;
    return rc;
}

static int finish(int rc, int relocked)
{
    if (relocked == CMP_OWNER_DIED && rc != -EINTR)
        return CMP_OWNER_DIED;
    return rc;
}

static int sleep_once(cmp_cond_t *cond, uint32_t ticket, const struct timespec *deadline)
{
    int rc = cmp_cond_sleep(cond, ticket, deadline);
    if (rc == -EINTR && cmp_cond_cancel_wait(cond, ticket))
        rc = 0; /* never lose a notify we were granted */
    return rc;
}

int cmp_cond_wait_lock(cmp_cond_t *cond, cmp_lock_t *lock, const struct timespec *deadline)
{
    if (!cmp_lock_is_mine(lock))
        return -EPERM;
    uint32_t ticket;
    cmp_cond_prepare_wait(cond, &ticket);
    cmp_lock_release(lock);
    int rc = sleep_once(cond, ticket, deadline);
    return finish(rc, relock(lock));
}

int cmp_cond_wait_rlock(cmp_cond_t *cond, cmp_rlock_t *rlock, const struct timespec *deadline)
{
    if (!cmp_rlock_is_mine(rlock))
        return -EPERM;
    uint32_t ticket;
    cmp_cond_prepare_wait(cond, &ticket);
    int depth = cmp_rlock_release_all(rlock);
    int rc = sleep_once(cond, ticket, deadline);
    int relocked;
    while ((relocked = cmp_rlock_acquire_count(rlock, (uint32_t)depth, NULL)) == -EINTR)
        ;
    return finish(rc, relocked);
}
