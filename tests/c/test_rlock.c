/* cmp_rlock_t: recursion, ownership by (process, thread), release_all /
 * acquire_count, timeouts, cross-process exclusion, dead owner, EINTR. */
#include "sync_helpers.h"

struct rlock_shared {
    cmp_rlock_t rlock;
    volatile uint64_t counter;
    uint32_t ready;
};

Test(rlock, recursion_and_count, .timeout = 10)
{
    struct rlock_shared *s = test_shared_map(sizeof *s);
    cmp_rlock_init(&s->rlock);
    cr_assert_eq(cmp_rlock_is_mine(&s->rlock), 0);
    cr_assert_eq(cmp_rlock_count(&s->rlock), 0);
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    cr_assert_eq(cmp_rlock_tryacquire(&s->rlock), 0);
    cr_assert_eq(cmp_rlock_is_mine(&s->rlock), 1);
    cr_assert_eq(cmp_rlock_count(&s->rlock), 3);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
    cr_assert_eq(cmp_rlock_count(&s->rlock), 1);
    cr_assert_eq(cmp_lock_is_locked(&s->rlock.lock), 1);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
    cr_assert_eq(cmp_lock_is_locked(&s->rlock.lock), 0);
    cr_assert_eq(cmp_rlock_is_mine(&s->rlock), 0);
    cr_assert_eq(cmp_rlock_release(&s->rlock), -EPERM);
}

Test(rlock, release_all_and_acquire_count, .timeout = 10)
{
    struct rlock_shared *s = test_shared_map(sizeof *s);
    cmp_rlock_init(&s->rlock);
    cr_assert_eq(cmp_rlock_release_all(&s->rlock), -EPERM);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    cr_assert_eq(cmp_rlock_release_all(&s->rlock), 4);
    cr_assert_eq(cmp_lock_is_locked(&s->rlock.lock), 0);
    cr_assert_eq(cmp_rlock_acquire_count(&s->rlock, 4, NULL), 0);
    cr_assert_eq(cmp_rlock_count(&s->rlock), 4);
    cr_assert_eq(cmp_rlock_release_all(&s->rlock), 4);
}

static void *other_thread_try(void *arg)
{
    struct rlock_shared *s = arg;
    intptr_t r = 0;
    if (cmp_rlock_is_mine(&s->rlock))
        r |= 1;
    if (cmp_rlock_release(&s->rlock) != -EPERM)
        r |= 2;
    if (cmp_rlock_tryacquire(&s->rlock) != -EAGAIN)
        r |= 4;
    struct timespec d = test_deadline(0.05);
    if (cmp_rlock_acquire(&s->rlock, &d) != -ETIMEDOUT)
        r |= 8;
    return (void *)r;
}

Test(rlock, owned_by_thread_not_process, .timeout = 10)
{
    struct rlock_shared *s = test_shared_map(sizeof *s);
    cmp_rlock_init(&s->rlock);
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    pthread_t t;
    void *r;
    cr_assert_eq(pthread_create(&t, NULL, other_thread_try, s), 0);
    pthread_join(t, &r);
    cr_assert_eq((intptr_t)r, 0, "other thread saw ownership (%ld)", (long)(intptr_t)r);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
}

Test(rlock, forked_child_does_not_own, .timeout = 10)
{
    struct rlock_shared *s = test_shared_map(sizeof *s);
    cmp_rlock_init(&s->rlock);
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, NULL), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        struct timespec d = test_deadline(0.05);
        int bad = cmp_rlock_is_mine(&s->rlock) || cmp_rlock_release(&s->rlock) != -EPERM ||
                  cmp_rlock_acquire(&s->rlock, &d) != -ETIMEDOUT;
        _exit(bad);
    }
    sync_reap_ok(pid);
    cr_assert_eq(cmp_rlock_count(&s->rlock), 1);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
}

Test(rlock, timeout_on_held_rlock, .timeout = 10)
{
    struct rlock_shared *s = test_shared_map(sizeof *s);
    cmp_rlock_init(&s->rlock);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        cmp_rlock_acquire(&s->rlock, NULL);
        __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
        sync_wait_flag(&s->ready, 2, 5);
        _exit(cmp_rlock_release(&s->rlock) == 0 ? 0 : 1);
    }
    sync_wait_flag(&s->ready, 1, 5);
    struct timespec d = test_deadline(0.1);
    double t0 = sync_now();
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, &d), -ETIMEDOUT);
    cr_assert(sync_now() - t0 >= 0.095);
    cr_assert_eq(cmp_rlock_tryacquire(&s->rlock), -EAGAIN);
    __atomic_store_n(&s->ready, 2, __ATOMIC_RELEASE);
    d = test_deadline(5);
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, &d), 0);
    sync_reap_ok(pid);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
}

#define NPROC 8
#define NITER 10000

Test(rlock, eight_processes_count_exactly, .timeout = 60)
{
    struct rlock_shared *s = test_shared_map(sizeof *s);
    cmp_rlock_init(&s->rlock);
    pid_t pids[NPROC];
    for (int i = 0; i < NPROC; i++) {
        pids[i] = fork();
        cr_assert(pids[i] >= 0);
        if (pids[i] == 0) {
            for (int j = 0; j < NITER; j++) {
                if (cmp_rlock_acquire(&s->rlock, NULL) != 0 ||
                    cmp_rlock_acquire(&s->rlock, NULL) != 0)
                    _exit(1);
                s->counter = s->counter + 1;
                if (cmp_rlock_release(&s->rlock) != 0 || cmp_rlock_release(&s->rlock) != 0)
                    _exit(2);
            }
            _exit(0);
        }
    }
    for (int i = 0; i < NPROC; i++)
        sync_reap_ok(pids[i]);
    cr_assert_eq(s->counter, (uint64_t)NPROC * NITER);
}

Test(rlock, dead_owner_is_taken_over, .timeout = 10)
{
    struct rlock_shared *s = test_shared_map(sizeof *s);
    cmp_rlock_init(&s->rlock);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        cmp_rlock_acquire(&s->rlock, NULL);
        cmp_rlock_acquire(&s->rlock, NULL);
        __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
        sync_sleep(0.2);
        kill(getpid(), SIGKILL);
        _exit(2);
    }
    sync_wait_flag(&s->ready, 1, 5);
    struct timespec d = test_deadline(5);
    cr_assert_eq(cmp_rlock_acquire(&s->rlock, &d), CMP_OWNER_DIED);
    /* the dead owner's depth is not inherited */
    cr_assert_eq(cmp_rlock_count(&s->rlock), 1);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
    cr_assert_eq(cmp_lock_is_locked(&s->rlock.lock), 0);
    waitpid(pid, NULL, 0);
}

Test(rlock, eintr_from_signal, .timeout = 10)
{
    struct rlock_shared *s = test_shared_map(sizeof *s);
    cmp_rlock_init(&s->rlock);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        cmp_rlock_acquire(&s->rlock, NULL);
        __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
        sync_wait_flag(&s->ready, 2, 10);
        _exit(cmp_rlock_release(&s->rlock) == 0 ? 0 : 1);
    }
    sync_wait_flag(&s->ready, 1, 5);
    struct sync_interrupter it;
    sync_interrupt_me_after(&it, 0.1);
    struct timespec d = test_deadline(5);
    int rc = cmp_rlock_acquire(&s->rlock, &d);
    sync_interrupter_join(&it);
    cr_assert_eq(rc, -EINTR);
    cr_assert_eq(cmp_rlock_is_mine(&s->rlock), 0);
    __atomic_store_n(&s->ready, 2, __ATOMIC_RELEASE);
    sync_reap_ok(pid);
}

#include "pid_helpers.h"

/* A child takes the rlock twice and is SIGKILLed; returns its pid, reaped. */
static pid_t die_owning_twice(struct rlock_shared *s)
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        cmp_rlock_acquire(&s->rlock, NULL);
        cmp_rlock_acquire(&s->rlock, NULL);
        kill(getpid(), SIGKILL);
        _exit(2);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    return pid;
}

/* The dead owner's pid (and so its main thread's tid) now belongs to a live
 * process: the rlock is recovered, and its depth is not inherited. */
Test(rlock, dead_owner_pid_reused_is_taken_over, .timeout = 20)
{
    struct rlock_shared *s = test_shared_map(sizeof *s);
    cmp_rlock_init(&s->rlock);
    pid_t squatter = pid_squatter(die_owning_twice(s));
    cr_assert_eq(cmp_rlock_is_mine(&s->rlock), 0);
    struct timespec d = test_deadline(1);
    int rc = cmp_rlock_acquire(&s->rlock, &d);
    pid_squatter_end(squatter);
    cr_assert_eq(rc, CMP_OWNER_DIED);
    cr_assert_eq(cmp_rlock_count(&s->rlock), 1);
    cr_assert_eq(cmp_rlock_release(&s->rlock), 0);
    cr_assert_eq(cmp_lock_is_locked(&s->rlock.lock), 0);
}

/* The process given the dead owner's pid: its main thread also has the dead
 * main thread's tid, the whole (pid, tid) pair of the owner. It must not
 * re-enter the dead owner's rlock but take it over, at depth 1. */
Test(rlock, process_given_dead_owners_pid_does_not_own_it, .timeout = 20)
{
    struct rlock_shared *s = test_shared_map(sizeof *s);
    cmp_rlock_init(&s->rlock);
    pid_t again = pid_fork_as(die_owning_twice(s));
    if (again == 0) {
        struct timespec d = test_deadline(1);
        int ok = cmp_rlock_is_mine(&s->rlock) == 0 &&
                 cmp_rlock_acquire(&s->rlock, &d) == CMP_OWNER_DIED &&
                 cmp_rlock_count(&s->rlock) == 1 && cmp_rlock_release(&s->rlock) == 0;
        _exit(ok ? 0 : 1);
    }
    sync_reap_ok(again);
    cr_assert_eq(cmp_lock_is_locked(&s->rlock.lock), 0);
}
