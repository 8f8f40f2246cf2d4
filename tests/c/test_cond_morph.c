/* Wait morphing (cmp_cond_notify_lock / notify_rlock): the notifier must
 * hold the lock; exactly n waiters return, and only once the lock is free;
 * a herd of waiters moved to one lock all wake while other processes
 * contend for it; a waiter moved to a lock whose holder then dies, and one
 * that re-acquires without cmp_cond_relocked, still return. */
#include "sync_helpers.h"

#include <stdlib.h>

struct morph_shared {
    cmp_lock_t lock;
    cmp_rlock_t rlock;
    cmp_cond_t cond;
    uint32_t ready;
    uint32_t woken;
    uint32_t round; /* the herd test's generation, under lock */
    uint32_t stop;
};

static struct morph_shared *new_shared(void)
{
    struct morph_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    cmp_rlock_init(&s->rlock);
    cmp_cond_init(&s->cond);
    return s;
}

/* Gives registered waiters time to get from their spin into the futex
 * sleep, where a notify moves them. */
static void let_them_sleep(void)
{
    sync_sleep(0.1);
}

Test(cond_morph, notify_lock_needs_the_lock, .timeout = 10)
{
    struct morph_shared *s = new_shared();
    cr_assert_eq(cmp_cond_notify_lock(&s->cond, &s->lock, 1), -EPERM);
    cr_assert_eq(cmp_cond_notify_rlock(&s->cond, &s->rlock, 1), -EPERM);
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    cr_assert_eq(cmp_cond_notify_lock(&s->cond, &s->lock, 1), 0, "nobody waits");
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    cr_assert_eq(cmp_cond_notify_rlock(&s->cond, &s->rlock, 1), 0);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
}

static pid_t spawn_waiter(struct morph_shared *s, int use_rlock, double timeout)
{
    struct sync_cond_objects o = {&s->cond, &s->lock, &s->rlock, &s->ready, &s->woken};
    return sync_spawn_cond_waiter(&o, use_rlock, timeout);
}

static void hold(struct morph_shared *s, int use_rlock)
{
    if (use_rlock)
        cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    else
        cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
}

static void unhold(struct morph_shared *s, int use_rlock)
{
    if (use_rlock)
        cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
    else
        cr_assert_eq(cmp_lock_release(&s->lock), 0);
}

static int notify_held(struct morph_shared *s, int use_rlock, uint32_t n)
{
    return use_rlock ? cmp_cond_notify_rlock(&s->cond, &s->rlock, n)
                     : cmp_cond_notify_lock(&s->cond, &s->lock, n);
}

static void counts_and_waits_for_release(int use_rlock)
{
    struct morph_shared *s = new_shared();
    enum { N = 5 };
    pid_t pids[N];
    for (int i = 0; i < N; i++)
        pids[i] = spawn_waiter(s, use_rlock, 20);
    sync_wait_registered(&s->cond, N, 10);
    let_them_sleep();

    hold(s, use_rlock);
    cr_assert_eq(notify_held(s, use_rlock, 2), 2);
    cr_assert_eq(cmp_cond_n_waiting(&s->cond), 3);
    sync_sleep(0.2);
    cr_assert_eq(__atomic_load_n(&s->woken, __ATOMIC_ACQUIRE), 0,
                 "a waiter returned while the lock was held");
    unhold(s, use_rlock);
    sync_wait_flag(&s->woken, 2, 5);
    sync_sleep(0.2);
    cr_assert_eq(__atomic_load_n(&s->woken, __ATOMIC_ACQUIRE), 2, "notify(2) woke more than 2");

    hold(s, use_rlock);
    cr_assert_eq(notify_held(s, use_rlock, UINT32_MAX), 3);
    cr_assert_eq(notify_held(s, use_rlock, UINT32_MAX), 0);
    unhold(s, use_rlock);
    for (int i = 0; i < N; i++)
        sync_reap_ok(pids[i]);
    cr_assert_eq(s->woken, N);
    cr_assert_eq(cmp_cond_n_waiting(&s->cond), 0);
    cr_assert(!cmp_lock_is_locked(&s->lock));
    cr_assert(!cmp_lock_is_locked(&s->rlock.lock));
}

Test(cond_morph, counts_and_waits_for_release_lock, .timeout = 30)
{
    counts_and_waits_for_release(0);
}

Test(cond_morph, counts_and_waits_for_release_rlock, .timeout = 30)
{
    counts_and_waits_for_release(1);
}

/* A herd: HERD waiters, each round the parent bumps the generation and
 * notifies all of them as the holder, and each waits for the next one;
 * meanwhile CONTENDERS processes take and release the same lock, so moved
 * waiters queue behind (and between) plain lock sleepers. Every waiter must
 * see every round: a lost hand-off would stall a round past its deadline. */
enum { HERD = 6, CONTENDERS = 2, ROUNDS = 300 };

static void herd_waiter(struct morph_shared *s)
{
    struct timespec d = test_deadline(60);
    cmp_lock_acquire(&s->lock, NULL);
    __atomic_fetch_add(&s->ready, 1, __ATOMIC_ACQ_REL);
    for (uint32_t seen = 0; seen < ROUNDS;) {
        while (s->round == seen)
            if (cmp_cond_wait_lock(&s->cond, &s->lock, &d) == -ETIMEDOUT)
                _exit(3);
        seen = s->round;
        __atomic_fetch_add(&s->woken, 1, __ATOMIC_ACQ_REL);
    }
    cmp_lock_release(&s->lock);
    _exit(0);
}

static void contender(struct morph_shared *s)
{
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
        cmp_lock_acquire(&s->lock, NULL);
        for (volatile int i = 0; i < 200; i++) {
        }
        cmp_lock_release(&s->lock);
    }
    _exit(0);
}

Test(cond_morph, herd_with_lock_contenders, .timeout = 90)
{
    struct morph_shared *s = new_shared();
    pid_t pids[HERD + CONTENDERS];
    for (int i = 0; i < HERD + CONTENDERS; i++) {
        pids[i] = test_fork();
        cr_assert(pids[i] >= 0);
        if (pids[i] == 0) {
            if (i < HERD)
                herd_waiter(s);
            contender(s);
        }
    }
    sync_wait_flag(&s->ready, HERD, 10);
    for (uint32_t r = 1; r <= ROUNDS; r++) {
        /* each round waits until every waiter saw the previous one, so a
         * round's notify finds all of them waiting or about to */
        double end = sync_now() + 20;
        while (__atomic_load_n(&s->woken, __ATOMIC_ACQUIRE) < (r - 1) * HERD) {
            cr_assert(sync_now() < end, "round %u: %u of %u hand-offs", r - 1,
                      __atomic_load_n(&s->woken, __ATOMIC_ACQUIRE), (r - 1) * HERD);
            sched_yield();
        }
        cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
        s->round = r;
        cmp_cond_notify_lock(&s->cond, &s->lock, UINT32_MAX);
        cr_assert_eq(cmp_lock_release(&s->lock), 0);
    }
    for (int i = 0; i < HERD; i++)
        sync_reap_ok(pids[i]);
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    for (int i = HERD; i < HERD + CONTENDERS; i++)
        sync_reap_ok(pids[i]);
    cr_assert_eq(s->woken, HERD * ROUNDS);
}

/* The notifier moves a sleeper to the lock and dies holding it: the
 * waiter, which has no deadline, must still return (it rechecks while
 * moved, CMP__OWNER_CHECK_NS) and take the lock over. */
Test(cond_morph, moved_waiter_survives_a_dead_notifier, .timeout = 20)
{
    struct morph_shared *s = new_shared();
    struct sync_cond_objects o = {&s->cond, &s->lock, &s->rlock, &s->ready, &s->woken};
    sync_check_dead_notifier(&o, 0);
}

/* A split-form waiter that re-acquires the lock itself and never calls
 * cmp_cond_relocked: the other moved waiters then sleep on a lock word
 * whose WAITERS bit is gone, and must still return (the same recheck). */
Test(cond_morph, split_form_without_relocked_still_wakes_all, .timeout = 30)
{
    struct morph_shared *s = new_shared();
    enum { N = 4 };
    pid_t pids[N];
    for (int i = 0; i < N; i++) {
        pids[i] = test_fork();
        cr_assert(pids[i] >= 0);
        if (pids[i] == 0) {
            struct timespec d = test_deadline(15);
            uint32_t ticket;
            cmp_lock_acquire(&s->lock, NULL);
            cmp_cond_prepare_wait(&s->cond, &ticket);
            cmp_lock_release(&s->lock);
            int rc = cmp_cond_sleep(&s->cond, ticket, &d);
            cmp_lock_acquire(&s->lock, NULL); /* no cmp_cond_relocked */
            if (rc == 0)
                __atomic_fetch_add(&s->woken, 1, __ATOMIC_ACQ_REL);
            sync_sleep(0.01);
            cmp_lock_release(&s->lock);
            _exit(rc == 0 ? 0 : 3);
        }
    }
    sync_wait_registered(&s->cond, N, 10);
    let_them_sleep();
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    cr_assert_eq(cmp_cond_notify_lock(&s->cond, &s->lock, UINT32_MAX), N);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
    double t0 = sync_now();
    for (int i = 0; i < N; i++)
        sync_reap_ok(pids[i]);
    cr_assert_eq(s->woken, N);
    cr_assert(sync_now() - t0 < 10.0);
}
