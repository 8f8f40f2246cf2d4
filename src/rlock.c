/*
 * Recursive lock: a cmp_lock_t (whose word records the holder's identity,
 * and so gives dead-holder recovery for free) plus the owning thread and the
 * depth.
 *
 * The owner is the pair (identity in the lock word, kernel tid in `owner`):
 * a tid alone could be reused by a thread of another process after the
 * owner died, and a forked child's thread must not inherit its parent's
 * ownership. The identity is pid and start time, not the pid alone: a
 * process given a dead owner's pid has, in its main thread, the dead main
 * thread's tid too, and must not find itself owning the lock.
 *
 * `owner` and `count` are written only by the owner while it holds the
 * lock; other threads read `owner` only to learn that they are not the
 * owner, so relaxed accesses suffice (the lock word orders the rest).
 */
#include "atomic.h"
#include "internal.h"

#include <errno.h>

void cmp_rlock_init(cmp_rlock_t *rlock)
{
    cmp_lock_init(&rlock->lock);
    rlock->count = 0;
    rlock->owner = 0;
}

/* The hot paths ask "who am I" once per call. */
static inline int owned_by(const cmp_rlock_t *rlock, uint32_t tid, uint64_t id)
{
    if (cmp__load_relaxed(&rlock->owner) != tid)
        return 0;
    return (cmp__load64_relaxed(&rlock->lock.state) & ~(uint64_t)CMP__LOCK_WAITERS) == id;
}

int cmp_rlock_is_mine(const cmp_rlock_t *rlock)
{
    return owned_by(rlock, cmp__self_tid(), cmp__self_id());
}

uint32_t cmp_rlock_count(const cmp_rlock_t *rlock)
{
    return cmp_rlock_is_mine(rlock) ? cmp__load_relaxed(&rlock->count) : 0;
}

static void take_ownership(cmp_rlock_t *rlock, uint32_t count)
{
    cmp__store_relaxed(&rlock->owner, cmp__self_tid());
    cmp__store_relaxed(&rlock->count, count);
}

int cmp_rlock_acquire_count(cmp_rlock_t *rlock, uint32_t count, const struct timespec *deadline)
{
    if (count == 0)
        return -EINVAL;
    if (cmp_rlock_is_mine(rlock)) {
        uint32_t c = cmp__load_relaxed(&rlock->count);
        if (c > UINT32_MAX - count)
            return -EOVERFLOW;
        cmp__store_relaxed(&rlock->count, c + count);
        return 0;
    }
    int rc = cmp_lock_acquire(&rlock->lock, deadline);
    if (rc < 0)
        return rc;
    /* rc may be CMP_OWNER_DIED: the dead owner's tid and depth are simply
     * overwritten. */
    take_ownership(rlock, count);
    return rc;
}

int cmp_rlock_acquire(cmp_rlock_t *rlock, const struct timespec *deadline)
{
    return cmp_rlock_acquire_count(rlock, 1, deadline);
}

int cmp_rlock_tryacquire(cmp_rlock_t *rlock)
{
    const uint32_t tid = cmp__self_tid();
    const uint64_t id = cmp__self_id();
    if (owned_by(rlock, tid, id)) {
        uint32_t c = cmp__load_relaxed(&rlock->count);
        if (c == UINT32_MAX)
            return -EOVERFLOW;
        cmp__store_relaxed(&rlock->count, c + 1);
        return 0;
    }
    uint64_t expected = 0;
    if (!cmp__cas64_acquire(&rlock->lock.state, &expected, id))
        return -EAGAIN;
    cmp__store_relaxed(&rlock->owner, tid);
    cmp__store_relaxed(&rlock->count, 1);
    return 0;
}

int cmp_rlock_release(cmp_rlock_t *rlock)
{
    if (!owned_by(rlock, cmp__self_tid(), cmp__self_id()))
        return -EPERM;
    uint32_t c = cmp__load_relaxed(&rlock->count);
    if (c > 1) {
        cmp__store_relaxed(&rlock->count, c - 1);
        return 0;
    }
    cmp__store_relaxed(&rlock->count, 0);
    cmp__store_relaxed(&rlock->owner, 0);
    /* the release in cmp_lock_release publishes the two stores above (and
     * everything done under the lock) to the next owner */
    int rc = cmp_lock_release(&rlock->lock);
    cmp__cond_released(rlock);
    return rc;
}

int cmp_rlock_release_all(cmp_rlock_t *rlock)
{
    if (!cmp_rlock_is_mine(rlock))
        return -EPERM;
    uint32_t c = cmp__load_relaxed(&rlock->count);
    cmp__store_relaxed(&rlock->count, 0);
    cmp__store_relaxed(&rlock->owner, 0);
    int rc = cmp_lock_release(&rlock->lock);
    cmp__cond_released(rlock);
    if (rc < 0)
        return rc;
    return c > INT32_MAX ? INT32_MAX : (int)c;
}
