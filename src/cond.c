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
 * Wait morphing. A notifier usually holds the lock its waiters re-acquire,
 * so a waiter it wakes would run only to find that lock held and sleep
 * again on it: two sleeps and two wake-ups per hand-off. notify_lock
 * instead moves the granted sleepers from seq to the lock's futex word
 * (FUTEX_CMP_REQUEUE, only if seq is still the value it published) and sets
 * the lock's WAITERS bit, so the notifier's release wakes one of them, and
 * that one wakes the next when it releases. The lock's protocol needs
 * whoever a release woke to set WAITERS again while others may sleep on the
 * word; a moved waiter cannot tell it was moved, so once a condition has
 * morphed (`morphs`) every waiter marks the lock after re-acquiring it
 * (cmp_cond_relocked): at worst one wake-up call too many at a release.
 * A moved waiter is no longer on seq, so neither a later notify nor its own
 * ticket logic reaches it until that lock is released: if the lock's
 * holder died, or a waiter re-acquired the lock without marking it (a
 * split-form caller that skips cmp_cond_relocked), a moved sleeper would
 * wait for a release that never comes. So every sleep is capped at
 * CMP__OWNER_CHECK_NS and rechecks its grant, like a lock's sleepers check
 * their holder (whether a condition will morph is not known when its
 * waiters go to sleep; ten wake-ups a second cost an idle waiter ~0.01 %
 * of a core).
 *
 * Deferred wake. Morphing still costs the notifier a system call (the
 * requeue) on top of the release's wake. When the lock is an RLock, which
 * only its owner releases, a notify granting one wake-up to a sleeping
 * waiter makes no system call at all: the grant and seq are published as
 * always (a waiter still spinning sees them), and the notifying thread
 * notes (thread-locally) that the RLock's next full release is to wake the
 * waiter on seq. The waiter could not have run before that release anyway:
 * it must take the lock back. One hand-off is then one wake and one sleep,
 * as through a semaphore. If the owner dies holding the RLock, the waiter's
 * own recheck (CMP__OWNER_CHECK_NS) finds its grant, as for a moved one.
 * One note per thread; a notify that finds it taken for another condition
 * or lock morphs as before.
 *
 * `sleepers` counts the waiters inside the futex wait, so that a notify
 * whose waiters are all still spinning makes no system call (Dekker pair
 * with seq: the sleeper counts itself, fences, and the kernel rechecks seq;
 * the notifier publishes seq, fences, and reads the count).
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
    cond->sleepers = 0;
    cond->morphs = 0;
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
        struct timespec check;
        cmp__deadline_in_ns(&check, CMP__OWNER_CHECK_NS);
        const struct timespec *until = cmp__deadline_min(deadline, &check);
        cmp__fetch_add(&cond->sleepers, 1);
        cmp__fence_seq_cst();
        int rc = cmp__futex_wait(&cond->seq, seq, until);
        cmp__fetch_sub(&cond->sleepers, 1);
        if (rc == -ETIMEDOUT && until != deadline && !cmp__deadline_passed(deadline))
            continue; /* the morphing cap, not the caller's deadline */
        if (rc == -ETIMEDOUT)
            return cmp_cond_cancel_wait(cond, ticket) ? 0 : -ETIMEDOUT;
        if (rc == -EINTR)
            return -EINTR;
        /* 0: woken or seq moved; anything else: recheck as well */
    }
}

/* The deferred wake-up this thread owes (see "Deferred wake"). */
__thread const cmp_rlock_t *cmp__cond_deferred_rlock;
static __thread cmp_cond_t *deferred_cond;
static __thread int deferred_n;

/* At most this many wake-ups wait for one release: more waiters are moved
 * to the lock, which wakes them one by one, not all at once. */
#define DEFERRED_MAX 4

void cmp__cond_flush_deferred(void)
{
    cmp_cond_t *cond = deferred_cond;
    int n = deferred_n;
    cmp__cond_deferred_rlock = NULL;
    deferred_cond = NULL;
    deferred_n = 0;
    /* seq moved at the notify: a waiter not yet asleep sees it in its futex
     * wait and does not sleep, so only counted sleepers need the call */
    cmp__fence_seq_cst();
    if (cmp__load_relaxed(&cond->sleepers))
        cmp__futex_wake(&cond->seq, n);
}

/* Notes a wake-up of cond for rlock's release; 0 when the note is taken. */
static int defer(cmp_cond_t *cond, const cmp_rlock_t *rlock, int granted)
{
    if (cmp__cond_deferred_rlock == NULL && granted <= DEFERRED_MAX) {
        deferred_cond = cond;
        deferred_n = granted;
        cmp__cond_deferred_rlock = rlock;
        return 1;
    }
    if (cmp__cond_deferred_rlock == rlock && deferred_cond == cond &&
        deferred_n + granted <= DEFERRED_MAX) {
        deferred_n += granted;
        return 1;
    }
    return 0;
}

/* Grants up to n wake-ups; lock (may be NULL) is one the caller holds,
 * to move the sleepers to; rlock (may be NULL) the RLock it is the base of,
 * whose release may then wake them. */
static int notify(cmp_cond_t *cond, uint32_t n, cmp_lock_t *lock, const cmp_rlock_t *rlock)
{
    if (n == 0)
        return 0;
    guard_lock(cond);
    uint32_t pending = cond->nwaiters - cond->nsignals;
    uint32_t k = n < pending ? n : pending;
    uint32_t seq = cmp__load_relaxed(&cond->seq);
    if (k) {
        cond->nsignals += k;
        /* release: a waiter that sees the new seq (in its futex wait or
         * under the guard) must also see the grants */
        cmp__store_release(&cond->seq, ++seq);
    }
    guard_unlock(cond);
    int granted = k > INT_MAX ? INT_MAX : (int)k;
    if (!k)
        return 0;
    cmp__fence_seq_cst();
    if (cmp__load_relaxed(&cond->sleepers) == 0)
        return granted; /* every waiter is still spinning or on its way */
    if (rlock && defer(cond, rlock, granted))
        return granted;
    if (lock) {
        /* published before any sleeper can be moved, so the one that wakes
         * on the lock marks it for the others */
        if (!cmp__load_relaxed(&cond->morphs))
            cmp__store_release(&cond->morphs, 1);
        cmp__lock_mark_waiters(lock);
        if (cmp__futex_requeue(&cond->seq, seq, cmp__lock_futex_word(lock), granted) >= 0)
            return granted;
        /* -EAGAIN: another notify moved seq on; the plain wake is right */
    }
    cmp__futex_wake(&cond->seq, granted);
    return granted;
}

int cmp_cond_notify(cmp_cond_t *cond, uint32_t n)
{
    return notify(cond, n, NULL, NULL);
}

int cmp_cond_notify_all(cmp_cond_t *cond)
{
    return notify(cond, UINT32_MAX, NULL, NULL);
}

int cmp_cond_notify_lock(cmp_cond_t *cond, cmp_lock_t *lock, uint32_t n)
{
    if (!cmp_lock_is_mine(lock))
        return -EPERM;
    return notify(cond, n, lock, NULL);
}

int cmp_cond_notify_rlock(cmp_cond_t *cond, cmp_rlock_t *rlock, uint32_t n)
{
    if (!cmp_rlock_is_mine(rlock))
        return -EPERM;
    return notify(cond, n, &rlock->lock, rlock);
}

void cmp_cond_relocked(cmp_cond_t *cond, cmp_lock_t *lock)
{
    if (cmp__load_acquire(&cond->morphs))
        cmp__lock_mark_waiters(lock);
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
    int relocked = relock(lock);
    cmp_cond_relocked(cond, lock);
    return finish(rc, relocked);
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
    cmp_cond_relocked(cond, &rlock->lock);
    return finish(rc, relocked);
}
