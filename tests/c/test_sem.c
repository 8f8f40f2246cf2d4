/* Semaphore: counting, bounds, timeouts, cross-process hand-off, EINTR. */
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

Test(sem, counts_down_and_up, .timeout = 5)
{
    cmp_sem_t sem;
    cr_assert_eq(cmp_sem_init(&sem, 2, CMP_SEM_VALUE_MAX), 0);
    cr_assert_eq(cmp_sem_value(&sem), 2);
    cr_assert_eq(cmp_sem_acquire(&sem, NULL), 0);
    cr_assert_eq(cmp_sem_tryacquire(&sem), 0);
    cr_assert_eq(cmp_sem_value(&sem), 0);
    cr_assert_eq(cmp_sem_tryacquire(&sem), -EAGAIN);
    cr_assert_eq(cmp_sem_release(&sem), 0);
    cr_assert_eq(cmp_sem_value(&sem), 1);
    cr_assert_eq(cmp_sem_tryacquire(&sem), 0);
}

Test(sem, init_rejects_value_above_max, .timeout = 5)
{
    cmp_sem_t sem;
    cr_assert_eq(cmp_sem_init(&sem, 3, 2), -EINVAL);
    cr_assert_eq(cmp_sem_init(&sem, 0, CMP_SEM_VALUE_MAX + 1u), -EINVAL);
    cr_assert_eq(cmp_sem_init(&sem, 0, 0), 0);
    cr_assert_eq(cmp_sem_release(&sem), -EOVERFLOW);
}

Test(sem, bounded_release_overflows, .timeout = 5)
{
    cmp_sem_t sem;
    cr_assert_eq(cmp_sem_init(&sem, 1, 2), 0);
    cr_assert_eq(cmp_sem_release(&sem), 0);
    cr_assert_eq(cmp_sem_release(&sem), -EOVERFLOW);
    cr_assert_eq(cmp_sem_value(&sem), 2);
}

Test(sem, unbounded_release_overflows_at_value_max, .timeout = 5)
{
    cmp_sem_t sem;
    cr_assert_eq(cmp_sem_init(&sem, CMP_SEM_VALUE_MAX, CMP_SEM_VALUE_MAX), 0);
    cr_assert_eq(cmp_sem_release(&sem), -EOVERFLOW);
    cr_assert_eq(cmp_sem_value(&sem), CMP_SEM_VALUE_MAX);
}

Test(sem, acquire_times_out, .timeout = 5)
{
    cmp_sem_t sem;
    cmp_sem_init(&sem, 0, CMP_SEM_VALUE_MAX);
    struct timespec deadline = test_deadline(0.1);
    cr_assert_eq(cmp_sem_acquire(&sem, &deadline), -ETIMEDOUT);
    cr_assert_eq(cmp_deadline_remaining(&deadline), 0);
    struct timespec past = test_deadline(0);
    cr_assert_eq(cmp_sem_acquire(&sem, &past), -ETIMEDOUT);
    cr_assert_eq(sem.waiters, 0);
}

Test(sem, release_from_other_process_wakes_sleeper, .timeout = 10)
{
    cmp_sem_t *sem = test_shared_map(4096);
    cmp_sem_init(sem, 0, CMP_SEM_VALUE_MAX);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        usleep(100000); /* let the parent fall asleep */
        _exit(cmp_sem_release(sem) == 0 ? 0 : 1);
    }
    struct timespec deadline = test_deadline(5);
    cr_assert_eq(cmp_sem_acquire(sem, &deadline), 0);
    cr_assert_eq(test_join(pid, 5), 0);
    cr_assert_eq(cmp_sem_value(sem), 0);
}

/* Processes hammer a semaphore used as a mutex around a plain counter:
 * no increment may be lost and no acquire may block forever. */
Test(sem, mutual_exclusion_across_processes, .timeout = 20)
{
    struct shared {
        cmp_sem_t sem;
        long counter;
    } *sh = test_shared_map(4096);
    cmp_sem_init(&sh->sem, 1, 1);
    enum { PROCS = 4, ITERS = 20000 };
    pid_t pids[PROCS];
    for (int i = 0; i < PROCS; i++) {
        pids[i] = fork();
        cr_assert(pids[i] >= 0);
        if (pids[i] == 0) {
            for (int n = 0; n < ITERS; n++) {
                struct timespec deadline = test_deadline(10);
                if (cmp_sem_acquire(&sh->sem, &deadline) != 0)
                    _exit(2);
                long c = sh->counter;
                sh->counter = c + 1;
                if (cmp_sem_release(&sh->sem) != 0)
                    _exit(3);
            }
            _exit(0);
        }
    }
    for (int i = 0; i < PROCS; i++)
        cr_assert_eq(test_join(pids[i], 15), 0);
    cr_assert_eq(sh->counter, (long)PROCS * ITERS);
    cr_assert_eq(cmp_sem_value(&sh->sem), 1);
    cr_assert_eq(sh->sem.waiters, 0);
}

/* Producer/consumer: every release is consumed exactly once. */
Test(sem, counting_handoff_across_processes, .timeout = 20)
{
    cmp_sem_t *sem = test_shared_map(4096);
    cmp_sem_init(sem, 0, CMP_SEM_VALUE_MAX);
    enum { CONSUMERS = 3, EACH = 3000 };
    pid_t pids[CONSUMERS];
    for (int i = 0; i < CONSUMERS; i++) {
        pids[i] = fork();
        cr_assert(pids[i] >= 0);
        if (pids[i] == 0) {
            for (int n = 0; n < EACH; n++) {
                struct timespec deadline = test_deadline(10);
                if (cmp_sem_acquire(sem, &deadline) != 0)
                    _exit(2);
            }
            _exit(0);
        }
    }
    for (int n = 0; n < CONSUMERS * EACH; n++)
        cr_assert_eq(cmp_sem_release(sem), 0);
    for (int i = 0; i < CONSUMERS; i++)
        cr_assert_eq(test_join(pids[i], 15), 0);
    cr_assert_eq(cmp_sem_value(sem), 0);
}

static void sem_on_usr1(int sig)
{
    (void)sig;
}

Test(sem, signal_interrupts_acquire, .timeout = 10)
{
    cmp_sem_t *sem = test_shared_map(4096);
    cmp_sem_init(sem, 0, CMP_SEM_VALUE_MAX);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        struct sigaction sa = {.sa_handler = sem_on_usr1}; /* no SA_RESTART */
        sigaction(SIGUSR1, &sa, NULL);
        struct timespec deadline = test_deadline(5);
        int rc = cmp_sem_acquire(sem, &deadline);
        /* the semaphore must be left usable: waiters back to 0 */
        _exit(rc == -EINTR && cmp_deadline_remaining(&deadline) > 1 && sem->waiters == 0 ? 0 : 1);
    }
    /* wait until the child sleeps in the kernel */
    struct timespec limit = test_deadline(5);
    while (__atomic_load_n(&sem->waiters, __ATOMIC_RELAXED) == 0 &&
           cmp_deadline_remaining(&limit) > 0)
        usleep(1000);
    usleep(20000);
    kill(pid, SIGUSR1);
    cr_assert_eq(test_join(pid, 5), 0);
}
