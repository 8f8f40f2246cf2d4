/* cmp_lock_t: semantics, timeouts, misuse, cross-process exclusion, dead
 * holder recovery, EINTR. */
#include "sync_helpers.h"

struct lock_shared {
    cmp_lock_t lock;
    volatile uint64_t counter;
    uint32_t ready;
};

Test(lock, acquire_release_and_state, .timeout = 10)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    cr_assert_eq(cmp_lock_is_locked(&s->lock), 0);
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    cr_assert_eq(cmp_lock_is_locked(&s->lock), 1);
    cr_assert_eq(cmp_lock_tryacquire(&s->lock), -EAGAIN);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
    cr_assert_eq(cmp_lock_is_locked(&s->lock), 0);
    cr_assert_eq(cmp_lock_tryacquire(&s->lock), 0);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
}

Test(lock, release_unlocked_is_eperm, .timeout = 10)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    cr_assert_eq(cmp_lock_release(&s->lock), -EPERM);
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
    cr_assert_eq(cmp_lock_release(&s->lock), -EPERM);
}

Test(lock, timeout_on_held_lock, .timeout = 10)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    struct timespec d = test_deadline(0.1);
    double t0 = sync_now();
    cr_assert_eq(cmp_lock_acquire(&s->lock, &d), -ETIMEDOUT);
    double took = sync_now() - t0;
    cr_assert(took >= 0.095 && took < 2.0, "took %f s", took);
    /* a zero timeout polls once */
    d = test_deadline(0);
    cr_assert_eq(cmp_lock_acquire(&s->lock, &d), -ETIMEDOUT);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
    d = test_deadline(0);
    cr_assert_eq(cmp_lock_acquire(&s->lock, &d), 0);
}

Test(lock, released_by_another_process, .timeout = 10)
{
    /* like a binary semaphore: any process may release it */
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0)
        _exit(cmp_lock_release(&s->lock) == 0 ? 0 : 1);
    sync_reap_ok(pid);
    cr_assert_eq(cmp_lock_is_locked(&s->lock), 0);
}

Test(lock, waiter_wakes_on_release, .timeout = 10)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
        struct timespec d = test_deadline(5);
        int rc = cmp_lock_acquire(&s->lock, &d);
        s->counter = 42;
        _exit(rc == 0 && cmp_lock_release(&s->lock) == 0 ? 0 : 1);
    }
    sync_wait_flag(&s->ready, 1, 5);
    sync_sleep(0.05); /* let it go to sleep on the futex */
    cr_assert_eq(s->counter, 0);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
    sync_reap_ok(pid);
    cr_assert_eq(s->counter, 42);
}

#define NPROC 8
#define NITER 10000

Test(lock, eight_processes_count_exactly, .timeout = 60)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    pid_t pids[NPROC];
    for (int i = 0; i < NPROC; i++) {
        pids[i] = fork();
        cr_assert(pids[i] >= 0);
        if (pids[i] == 0) {
            for (int j = 0; j < NITER; j++) {
                if (cmp_lock_acquire(&s->lock, NULL) != 0)
                    _exit(1);
                s->counter = s->counter + 1;
                if (cmp_lock_release(&s->lock) != 0)
                    _exit(2);
            }
            _exit(0);
        }
    }
    for (int i = 0; i < NPROC; i++)
        sync_reap_ok(pids[i]);
    cr_assert_eq(s->counter, (uint64_t)NPROC * NITER);
    cr_assert_eq(cmp_lock_is_locked(&s->lock), 0);
}

/* A child takes the lock and dies holding it. */
static pid_t spawn_dying_holder(struct lock_shared *s)
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        if (cmp_lock_acquire(&s->lock, NULL) != 0)
            _exit(1);
        s->counter = 7;
        kill(getpid(), SIGKILL);
        _exit(2);
    }
    return pid;
}

Test(lock, dead_holder_zombie_is_taken_over, .timeout = 10)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    pid_t pid = spawn_dying_holder(s);
    /* wait for it to die without reaping it: a zombie holds nothing */
    siginfo_t info;
    cr_assert_eq(waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT), 0);
    cr_assert_eq(info.si_status, SIGKILL);
    cr_assert_eq(cmp_lock_is_locked(&s->lock), 1);
    struct timespec d = test_deadline(5);
    double t0 = sync_now();
    cr_assert_eq(cmp_lock_acquire(&s->lock, &d), CMP_OWNER_DIED);
    cr_assert(sync_now() - t0 < 2.0);
    cr_assert_eq(s->counter, 7);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
    waitpid(pid, NULL, 0);
    /* recovered: an ordinary lock again */
    cr_assert_eq(cmp_lock_acquire(&s->lock, &d), 0);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
}

Test(lock, dead_holder_taken_over_by_sleeping_waiter, .timeout = 10)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        if (cmp_lock_acquire(&s->lock, NULL) != 0)
            _exit(1);
        __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
        sync_sleep(0.2); /* the parent is asleep on the lock by now */
        kill(getpid(), SIGKILL);
        _exit(2);
    }
    sync_wait_flag(&s->ready, 1, 5);
    struct timespec d = test_deadline(5);
    double t0 = sync_now();
    cr_assert_eq(cmp_lock_acquire(&s->lock, &d), CMP_OWNER_DIED);
    double took = sync_now() - t0;
    cr_assert(took > 0.1 && took < 2.0, "took %f s", took);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

Test(lock, zero_timeout_takes_over_dead_holder, .timeout = 10)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    pid_t pid = spawn_dying_holder(s);
    waitpid(pid, NULL, 0);
    struct timespec d = test_deadline(0);
    cr_assert_eq(cmp_lock_acquire(&s->lock, &d), CMP_OWNER_DIED);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
}

Test(lock, eintr_from_signal, .timeout = 10)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    struct sync_interrupter it;
    sync_interrupt_me_after(&it, 0.1);
    struct timespec d = test_deadline(5);
    double t0 = sync_now();
    /* held by this very process: no dead-holder takeover, so only the
     * signal can end the wait */
    int rc = cmp_lock_acquire(&s->lock, &d);
    cr_assert_eq(rc, -EINTR, "rc %d after %f s", rc, sync_now() - t0);
    sync_interrupter_join(&it);
    cr_assert_eq(cmp_lock_is_locked(&s->lock), 1);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
}

Test(lock, strerror_names_results, .timeout = 5)
{
    cr_assert_str_eq(cmp_strerror(-ETIMEDOUT), "timed out");
    cr_assert(strstr(cmp_strerror(CMP_OWNER_DIED), "died") != NULL);
}

#include "pid_helpers.h"

/* The dead holder's pid now belongs to a live process: the start time in
 * the lock word tells them apart. */
Test(lock, dead_holder_pid_reused_is_taken_over, .timeout = 20)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    pid_t dead = pid_die_holding(&s->lock);
    pid_t squatter = pid_squatter(dead);
    cr_assert_eq(cmp_lock_holder(&s->lock), dead);
    cr_assert_eq(cmp_lock_abandoned(&s->lock), 1);
    struct timespec d = test_deadline(1);
    int rc = cmp_lock_acquire(&s->lock, &d);
    pid_squatter_end(squatter);
    cr_assert_eq(rc, CMP_OWNER_DIED);
    cr_assert_eq(cmp_lock_is_mine(&s->lock), 1);
    cr_assert_eq(cmp_lock_abandoned(&s->lock), 0);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
}

Test(lock, zero_timeout_takes_over_when_pid_reused, .timeout = 20)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    pid_t squatter = pid_squatter(pid_die_holding(&s->lock));
    struct timespec d = test_deadline(0);
    int rc = cmp_lock_acquire(&s->lock, &d);
    pid_squatter_end(squatter);
    cr_assert_eq(rc, CMP_OWNER_DIED);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
}

/* The process given the dead holder's pid asks for the lock itself: the pid
 * in the word is its own, but the holder is not. */
Test(lock, process_given_dead_holders_pid_takes_it_over, .timeout = 20)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    pid_t dead = pid_die_holding(&s->lock);
    pid_t pid = pid_fork_as(dead);
    if (pid == 0) {
        struct timespec d = test_deadline(1);
        int ok = cmp_lock_is_mine(&s->lock) == 0 && cmp_lock_abandoned(&s->lock) == 1 &&
                 cmp_lock_acquire(&s->lock, &d) == CMP_OWNER_DIED &&
                 cmp_lock_is_mine(&s->lock) == 1 && cmp_lock_release(&s->lock) == 0;
        _exit(ok ? 0 : 1);
    }
    sync_reap_ok(pid);
    cr_assert_eq(cmp_lock_is_locked(&s->lock), 0);
}

/* The other side of the identity: a live holder is never taken for dead,
 * whoever looks (here a forked child, whose own identity differs). */
Test(lock, live_holder_is_not_abandoned, .timeout = 10)
{
    struct lock_shared *s = test_shared_map(sizeof *s);
    cmp_lock_init(&s->lock);
    cr_assert_eq(cmp_lock_acquire(&s->lock, NULL), 0);
    cr_assert_eq(cmp_lock_abandoned(&s->lock), 0);
    cr_assert_eq(cmp_lock_is_mine(&s->lock), 1);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        struct timespec d = test_deadline(0.3);
        int ok = cmp_lock_abandoned(&s->lock) == 0 && cmp_lock_is_mine(&s->lock) == 0 &&
                 cmp_lock_acquire(&s->lock, &d) == -ETIMEDOUT;
        _exit(ok ? 0 : 1);
    }
    sync_reap_ok(pid);
    cr_assert_eq(cmp_lock_release(&s->lock), 0);
}
