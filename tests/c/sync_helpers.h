/* Helpers for the lock, rlock and condition tests: forked workers, a
 * self-killing holder, and a thread that interrupts the main thread. */
#ifndef CMP_TEST_SYNC_HELPERS_H
#define CMP_TEST_SYNC_HELPERS_H

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

static inline double sync_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void sync_sleep(double seconds)
{
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Waits for pid and asserts it exited with status 0. */
static inline void sync_reap_ok(pid_t pid)
{
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "child did not exit normally (status %#x)", status);
    cr_assert_eq(WEXITSTATUS(status), 0, "child exit status %d", WEXITSTATUS(status));
}

/* Polls *flag (shared) until it is nonzero; fails the test after seconds. */
static inline void sync_wait_flag(const volatile uint32_t *flag, uint32_t value, double seconds)
{
    double end = sync_now() + seconds;
    while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) < value) {
        cr_assert(sync_now() < end, "timed out waiting for a flag");
        sync_sleep(0.001);
    }
}

/* SIGUSR1 with a handler installed without SA_RESTART, so that a blocking
 * futex wait returns EINTR. */
static void sync_on_usr1(int sig)
{
    (void)sig;
}

struct sync_interrupter {
    pthread_t target;
    double delay;
    pthread_t thread;
    int stop;
};

static void *sync_interrupter_main(void *arg)
{
    struct sync_interrupter *it = arg;
    sync_sleep(it->delay);
    /* Repeat until joined: on a loaded machine the target may not have gone
     * to sleep yet when the first signal lands. */
    while (!__atomic_load_n(&it->stop, __ATOMIC_ACQUIRE)) {
        pthread_kill(it->target, SIGUSR1);
        sync_sleep(0.05);
    }
    return NULL;
}

/* Sends SIGUSR1 to the calling thread after delay seconds, then every 50 ms
 * until sync_interrupter_join(). */
static inline void sync_interrupt_me_after(struct sync_interrupter *it, double delay)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = sync_on_usr1;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    cr_assert_eq(sigaction(SIGUSR1, &sa, NULL), 0);
    it->target = pthread_self();
    it->delay = delay;
    it->stop = 0;
    cr_assert_eq(pthread_create(&it->thread, NULL, sync_interrupter_main, it), 0);
}

static inline void sync_interrupter_join(struct sync_interrupter *it)
{
    __atomic_store_n(&it->stop, 1, __ATOMIC_RELEASE);
    pthread_join(it->thread, NULL);
}

/* Polls until n waiters are registered on cond; fails after seconds. */
static inline void sync_wait_registered(const cmp_cond_t *cond, uint32_t n, double seconds)
{
    double end = sync_now() + seconds;
    while (cmp_cond_n_waiting(cond) < n) {
        cr_assert(sync_now() < end, "waiters did not register");
        sync_sleep(0.001);
    }
}

/* What a condition test's waiter child uses, all in shared memory. */
struct sync_cond_objects {
    cmp_cond_t *cond;
    cmp_lock_t *lock;
    cmp_rlock_t *rlock;
    uint32_t *ready; /* bumped once the child holds the lock */
    uint32_t *woken; /* bumped when its wait was notified */
};

/* Child: waits once on the condition with the lock, or with the rlock
 * held twice. Exit 0 notified, 3 timed out, 4 the lock not held as before
 * the wait, 5 another error. */
static inline pid_t sync_spawn_cond_waiter(const struct sync_cond_objects *o, int use_rlock,
                                           double timeout)
{
    pid_t pid = test_fork();
    cr_assert(pid >= 0);
    if (pid != 0)
        return pid;
    struct timespec d = test_deadline(timeout);
    int rc;
    if (use_rlock) {
        cmp_rlock_acquire(o->rlock, NULL);
        cmp_rlock_acquire(o->rlock, NULL);
        __atomic_fetch_add(o->ready, 1, __ATOMIC_ACQ_REL);
        rc = cmp_cond_wait_rlock(o->cond, o->rlock, &d);
        if (rc == 0)
            __atomic_fetch_add(o->woken, 1, __ATOMIC_ACQ_REL);
        if (cmp_rlock_count(o->rlock) != 2)
            _exit(4);
        cmp_rlock_release_all(o->rlock);
    } else {
        cmp_lock_acquire(o->lock, NULL);
        __atomic_fetch_add(o->ready, 1, __ATOMIC_ACQ_REL);
        rc = cmp_cond_wait_lock(o->cond, o->lock, &d);
        if (rc == 0)
            __atomic_fetch_add(o->woken, 1, __ATOMIC_ACQ_REL);
        if (cmp_lock_release(o->lock) != 0)
            _exit(4);
    }
    _exit(rc == 0 ? 0 : rc == -ETIMEDOUT ? 3 : 5);
}

/* A waiter with no deadline, and a notifier that grants it its wake-up
 * holding the lock (notify_lock) or the rlock (notify_rlock) and is then
 * SIGKILLed holding it: the waiter must still return, taking the lock over
 * (it rechecks every CMP__OWNER_CHECK_NS while moved or owed a deferred
 * wake-up). */
static inline void sync_check_dead_notifier(const struct sync_cond_objects *o, int use_rlock)
{
    pid_t waiter = test_fork();
    cr_assert(waiter >= 0);
    if (waiter == 0) {
        int rc;
        if (use_rlock) {
            cmp_rlock_acquire(o->rlock, NULL);
            __atomic_fetch_add(o->ready, 1, __ATOMIC_ACQ_REL);
            rc = cmp_cond_wait_rlock(o->cond, o->rlock, NULL);
        } else {
            cmp_lock_acquire(o->lock, NULL);
            __atomic_fetch_add(o->ready, 1, __ATOMIC_ACQ_REL);
            rc = cmp_cond_wait_lock(o->cond, o->lock, NULL);
        }
        _exit(rc == CMP_OWNER_DIED ? 0 : 10 + (rc < 0 ? -rc : rc));
    }
    sync_wait_registered(o->cond, 1, 10);
    sync_sleep(0.1); /* into its futex sleep */
    pid_t notifier = test_fork();
    cr_assert(notifier >= 0);
    if (notifier == 0) {
        int n =
            use_rlock
                ? (cmp_rlock_acquire(o->rlock, NULL), cmp_cond_notify_rlock(o->cond, o->rlock, 1))
                : (cmp_lock_acquire(o->lock, NULL), cmp_cond_notify_lock(o->cond, o->lock, 1));
        if (n != 1)
            _exit(2);
        kill(getpid(), SIGKILL);
        _exit(3);
    }
    int status;
    cr_assert_eq(waitpid(notifier, &status, 0), notifier);
    cr_assert(WIFSIGNALED(status));
    double t0 = sync_now();
    sync_reap_ok(waiter);
    cr_assert(sync_now() - t0 < 5.0);
}

#endif
