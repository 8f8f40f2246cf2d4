/* The deferred wake-up (cond.c, "Deferred wake"): a notify made holding an
 * RLock wakes its sleeping waiter from that RLock's full release, not
 * before it (a nested release keeps it waiting), and from nothing else; a
 * second condition notified in the same hold is not lost; a notifier that
 * dies holding the RLock still lets its waiter return. */
#include "sync_helpers.h"


struct deferred_shared {
    cmp_lock_t lock; /* unused: sync_cond_objects wants one */
    cmp_rlock_t rlock;
    cmp_cond_t cond, other;
    uint32_t ready, woken;
};

static struct deferred_shared *new_shared(void)
{
    struct deferred_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    cmp_rlock_init(&s->rlock);
    cmp_cond_init(&s->cond);
    cmp_cond_init(&s->other);
    return s;
}

static pid_t spawn_waiter(struct deferred_shared *s, cmp_cond_t *cond)
{
    struct sync_cond_objects o = {cond, &s->lock, &s->rlock, &s->ready, &s->woken};
    return sync_spawn_cond_waiter(&o, 1, 20);
}

/* Registered waiters go from their spin into the futex sleep, where a
 * notify defers their wake-up. */
static void let_them_sleep(void)
{
    sync_sleep(0.1);
}

static uint32_t woken(struct deferred_shared *s)
{
    return __atomic_load_n(&s->woken, __ATOMIC_ACQUIRE);
}

Test(cond_deferred, woken_by_the_full_release_only, .timeout = 30)
{
    struct deferred_shared *s = new_shared();
    pid_t pid = spawn_waiter(s, &s->cond);
    sync_wait_registered(&s->cond, 1, 10);
    let_them_sleep();
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    cr_assert_eq(cmp_cond_notify_rlock(&s->cond, &s->rlock, 1), 1);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0); /* still held once */
    sync_sleep(0.2);
    cr_assert_eq(woken(s), 0, "the waiter returned while the RLock was held");
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
    sync_wait_flag(&s->woken, 1, 5);
    sync_reap_ok(pid);
    cr_assert(!cmp_lock_is_locked(&s->rlock.lock));
}

Test(cond_deferred, two_conditions_in_one_hold, .timeout = 30)
{
    struct deferred_shared *s = new_shared();
    pid_t a = spawn_waiter(s, &s->cond);
    pid_t b = spawn_waiter(s, &s->other);
    sync_wait_registered(&s->cond, 1, 10);
    sync_wait_registered(&s->other, 1, 10);
    let_them_sleep();
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    cr_assert_eq(cmp_cond_notify_rlock(&s->cond, &s->rlock, 1), 1);
    cr_assert_eq(cmp_cond_notify_rlock(&s->other, &s->rlock, 1), 1);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
    double t0 = sync_now();
    sync_reap_ok(a);
    sync_reap_ok(b);
    cr_assert_eq(woken(s), 2);
    cr_assert(sync_now() - t0 < 5.0);
}

/* A wait releases every level of the RLock: that is a full release too,
 * so a notify-then-wait hands off to the waiter (the ping-pong case). */
Test(cond_deferred, notify_then_wait_hands_off, .timeout = 30)
{
    struct deferred_shared *s = new_shared();
    pid_t pid = spawn_waiter(s, &s->cond);
    sync_wait_registered(&s->cond, 1, 10);
    let_them_sleep();
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    cr_assert_eq(cmp_cond_notify_rlock(&s->cond, &s->rlock, 1), 1);
    struct timespec d = test_deadline(0.3);
    cr_assert_eq(cmp_cond_wait_rlock(&s->other, &s->rlock, &d), -ETIMEDOUT);
    sync_wait_flag(&s->woken, 1, 5);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
    sync_reap_ok(pid);
}

/* The notifier dies holding the RLock, its deferred wake-up never made:
 * the waiter rechecks (CMP__OWNER_CHECK_NS), finds its grant and takes the
 * RLock over. */
Test(cond_deferred, waiter_survives_a_dead_notifier, .timeout = 20)
{
    struct deferred_shared *s = new_shared();
    struct sync_cond_objects o = {&s->cond, &s->lock, &s->rlock, &s->ready, &s->woken};
    sync_check_dead_notifier(&o, 1);
}
