/* Barrier: threading.Barrier semantics across processes — indices,
 * action, rounds, timeouts breaking it, abort/reset while waiting, EINTR,
 * a dead party. */
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

/* Polls until n_waiting reaches n (children asleep in the barrier). */
static void wait_for_waiting(cmp_barrier_t *b, uint32_t n)
{
    struct timespec limit = test_deadline(5);
    while (cmp_barrier_n_waiting(b) < n && cmp_deadline_remaining(&limit) > 0)
        usleep(1000);
    cr_assert_eq(cmp_barrier_n_waiting(b), n);
    usleep(20000); /* let the last one reach the futex */
}

struct shared {
    cmp_barrier_t barrier;
    uint32_t actions; /* action runs */
    uint32_t counter; /* arrivals in the current round */
    uint32_t bad;     /* rounds where the action saw a partial round */
    uint32_t index_mask[64];
};

Test(barrier, init_rejects_zero_parties, .timeout = 5)
{
    cmp_barrier_t b;
    cr_assert_eq(cmp_barrier_init(&b, 0), -EINVAL);
    cr_assert_eq(cmp_barrier_init(&b, 3), 0);
    cr_assert_eq(cmp_barrier_parties(&b), 3);
    cr_assert_eq(cmp_barrier_n_waiting(&b), 0);
    cr_assert_eq(cmp_barrier_broken(&b), 0);
}

static int count_action(void *arg)
{
    (*(int *)arg)++;
    return 0;
}

Test(barrier, single_party_runs_action_and_passes, .timeout = 5)
{
    cmp_barrier_t b;
    cmp_barrier_init(&b, 1);
    int runs = 0;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(cmp_barrier_wait(&b, NULL, count_action, &runs), 0);
    cr_assert_eq(runs, 3);
    cr_assert_eq(cmp_barrier_n_waiting(&b), 0);
}

static int failing_action(void *arg)
{
    (void)arg;
    return 1;
}

Test(barrier, failing_action_breaks, .timeout = 5)
{
    cmp_barrier_t b;
    cmp_barrier_init(&b, 1);
    cr_assert_eq(cmp_barrier_wait(&b, NULL, failing_action, NULL), -EPIPE);
    cr_assert_eq(cmp_barrier_broken(&b), 1);
    cr_assert_eq(cmp_barrier_wait(&b, NULL, NULL, NULL), -EPIPE);
    cmp_barrier_reset(&b);
    cr_assert_eq(cmp_barrier_broken(&b), 0);
    cr_assert_eq(cmp_barrier_wait(&b, NULL, NULL, NULL), 0);
}

Test(barrier, timeout_breaks_it, .timeout = 5)
{
    cmp_barrier_t b;
    cmp_barrier_init(&b, 2);
    struct timespec deadline = test_deadline(0.1);
    cr_assert_eq(cmp_barrier_wait(&b, &deadline, NULL, NULL), -ETIMEDOUT);
    cr_assert_eq(cmp_deadline_remaining(&deadline), 0);
    cr_assert_eq(cmp_barrier_broken(&b), 1);
    cr_assert_eq(cmp_barrier_n_waiting(&b), 0);
    cr_assert_eq(cmp_barrier_wait(&b, NULL, NULL, NULL), -EPIPE);
    cmp_barrier_abort(&b);
    cr_assert_eq(cmp_barrier_broken(&b), 1);
    cmp_barrier_reset(&b);
    cr_assert_eq(cmp_barrier_broken(&b), 0);
}

/* The action runs in the last arrival, once per round, and sees the whole
 * round arrived; nobody leaves before it finishes. */
static int round_action(void *arg)
{
    struct shared *sh = arg;
    if (__atomic_load_n(&sh->counter, __ATOMIC_SEQ_CST) != sh->barrier.parties)
        __atomic_fetch_add(&sh->bad, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&sh->counter, 0, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&sh->actions, 1, __ATOMIC_SEQ_CST);
    return 0;
}

Test(barrier, many_rounds_four_processes, .timeout = 30)
{
    enum { P = 4, ROUNDS = 2000 };
    struct shared *sh = test_shared_map(4096);
    cmp_barrier_init(&sh->barrier, P);
    pid_t pids[P];
    for (int i = 0; i < P; i++) {
        pids[i] = fork();
        cr_assert(pids[i] >= 0);
        if (pids[i] == 0) {
            for (uint32_t r = 0; r < ROUNDS; r++) {
                __atomic_fetch_add(&sh->counter, 1, __ATOMIC_SEQ_CST);
                struct timespec deadline = test_deadline(10);
                int rc = cmp_barrier_wait(&sh->barrier, &deadline, round_action, sh);
                if (rc < 0 || rc >= P)
                    _exit(2);
                /* the action of this round has run before anyone is out */
                if (__atomic_load_n(&sh->actions, __ATOMIC_SEQ_CST) < r + 1)
                    _exit(3);
                __atomic_fetch_or(&sh->index_mask[r % 64], 1u << rc, __ATOMIC_SEQ_CST);
                /* a second wait keeps rounds apart so the counter check
                 * above stays exact */
                rc = cmp_barrier_wait(&sh->barrier, &deadline, NULL, NULL);
                if (rc < 0)
                    _exit(4);
            }
            _exit(0);
        }
    }
    for (int i = 0; i < P; i++)
        cr_assert_eq(test_join(pids[i], 25), 0, "child %d", i);
    cr_assert_eq(sh->actions, ROUNDS);
    cr_assert_eq(sh->bad, 0);
    for (int i = 0; i < 64; i++)
        cr_assert_eq(sh->index_mask[i], (1u << P) - 1, "each index given once per round");
    cr_assert_eq(cmp_barrier_n_waiting(&sh->barrier), 0);
    cr_assert_eq(cmp_barrier_broken(&sh->barrier), 0);
}

static pid_t spawn_waiter(struct shared *sh, int expect, double timeout)
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        struct timespec deadline = test_deadline(timeout);
        int rc = cmp_barrier_wait(&sh->barrier, &deadline, NULL, NULL);
        _exit(rc == expect ? 0 : 10);
    }
    return pid;
}

Test(barrier, abort_releases_waiters, .timeout = 10)
{
    struct shared *sh = test_shared_map(4096);
    cmp_barrier_init(&sh->barrier, 3);
    pid_t a = spawn_waiter(sh, -EPIPE, 5), b = spawn_waiter(sh, -EPIPE, 5);
    wait_for_waiting(&sh->barrier, 2);
    cmp_barrier_abort(&sh->barrier);
    cr_assert_eq(test_join(a, 5), 0);
    cr_assert_eq(test_join(b, 5), 0);
    cr_assert_eq(cmp_barrier_broken(&sh->barrier), 1);
    cr_assert_eq(cmp_barrier_wait(&sh->barrier, NULL, NULL, NULL), -EPIPE);
    cmp_barrier_reset(&sh->barrier);
    cr_assert_eq(cmp_barrier_broken(&sh->barrier), 0);
    /* usable again */
    a = spawn_waiter(sh, 0, 5);
    wait_for_waiting(&sh->barrier, 1);
    b = spawn_waiter(sh, 1, 5);
    wait_for_waiting(&sh->barrier, 2);
    struct timespec deadline = test_deadline(5);
    cr_assert_eq(cmp_barrier_wait(&sh->barrier, &deadline, NULL, NULL), 2);
    cr_assert_eq(test_join(a, 5), 0);
    cr_assert_eq(test_join(b, 5), 0);
}

Test(barrier, reset_while_waiting_then_reuse, .timeout = 10)
{
    struct shared *sh = test_shared_map(4096);
    cmp_barrier_init(&sh->barrier, 3);
    pid_t a = spawn_waiter(sh, -EPIPE, 5), b = spawn_waiter(sh, -EPIPE, 5);
    wait_for_waiting(&sh->barrier, 2);
    cmp_barrier_reset(&sh->barrier);
    cr_assert_eq(test_join(a, 5), 0);
    cr_assert_eq(test_join(b, 5), 0);
    cr_assert_eq(cmp_barrier_broken(&sh->barrier), 0);
    cr_assert_eq(cmp_barrier_n_waiting(&sh->barrier), 0);
    /* a full round works after the reset */
    pid_t pids[2];
    for (int i = 0; i < 2; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            struct timespec deadline = test_deadline(5);
            int rc = cmp_barrier_wait(&sh->barrier, &deadline, NULL, NULL);
            _exit(rc >= 0 && rc < 3 ? 0 : 10);
        }
    }
    struct timespec deadline = test_deadline(5);
    int rc = cmp_barrier_wait(&sh->barrier, &deadline, NULL, NULL);
    cr_assert(rc >= 0 && rc < 3, "rc %d", rc);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(test_join(pids[i], 5), 0);
}

Test(barrier, waiter_timeout_breaks_for_others, .timeout = 10)
{
    struct shared *sh = test_shared_map(4096);
    cmp_barrier_init(&sh->barrier, 3);
    pid_t a = spawn_waiter(sh, -EPIPE, 5);
    wait_for_waiting(&sh->barrier, 1);
    struct timespec deadline = test_deadline(0.1);
    cr_assert_eq(cmp_barrier_wait(&sh->barrier, &deadline, NULL, NULL), -ETIMEDOUT);
    cr_assert_eq(test_join(a, 5), 0);
    cr_assert_eq(cmp_barrier_broken(&sh->barrier), 1);
}

/* A party killed while waiting: the survivors' timeouts break the barrier
 * instead of hanging, and reset makes it usable again. */
Test(barrier, dead_party_does_not_hang_others, .timeout = 10)
{
    struct shared *sh = test_shared_map(4096);
    cmp_barrier_init(&sh->barrier, 4);
    pid_t victim = spawn_waiter(sh, 0, 30);
    wait_for_waiting(&sh->barrier, 1);
    kill(victim, SIGKILL);
    test_join(victim, 5);
    pid_t other = spawn_waiter(sh, -EPIPE, 5);
    wait_for_waiting(&sh->barrier, 2);
    struct timespec deadline = test_deadline(0.2);
    cr_assert_eq(cmp_barrier_wait(&sh->barrier, &deadline, NULL, NULL), -ETIMEDOUT);
    cr_assert_eq(test_join(other, 5), 0);
    cr_assert_eq(cmp_barrier_broken(&sh->barrier), 1);
}

/* The action runs while the others wait; an abort from a third process
 * during it breaks the round for everyone. */
static int slow_action(void *arg)
{
    struct shared *sh = arg;
    __atomic_store_n(&sh->actions, 1, __ATOMIC_SEQ_CST);
    usleep(300000);
    return 0;
}

Test(barrier, abort_during_action, .timeout = 10)
{
    struct shared *sh = test_shared_map(4096);
    cmp_barrier_init(&sh->barrier, 2);
    pid_t a = spawn_waiter(sh, -EPIPE, 5);
    wait_for_waiting(&sh->barrier, 1);
    pid_t runner = fork();
    if (runner == 0) {
        struct timespec deadline = test_deadline(5);
        _exit(cmp_barrier_wait(&sh->barrier, &deadline, slow_action, sh) == -EPIPE ? 0 : 10);
    }
    struct timespec limit = test_deadline(5);
    while (!__atomic_load_n(&sh->actions, __ATOMIC_SEQ_CST) && cmp_deadline_remaining(&limit) > 0)
        usleep(1000);
    cmp_barrier_abort(&sh->barrier); /* must not wait for the action */
    cr_assert_eq(cmp_barrier_broken(&sh->barrier), 1);
    cr_assert_eq(test_join(a, 5), 0);
    cr_assert_eq(test_join(runner, 5), 0);
}

static void barrier_on_usr1(int sig)
{
    (void)sig;
}

/* EINTR while the round fills: the caller withdraws and the barrier is
 * intact (the others still complete it later). */
Test(barrier, signal_withdraws_waiter, .timeout = 10)
{
    struct shared *sh = test_shared_map(4096);
    cmp_barrier_init(&sh->barrier, 2);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        struct sigaction sa = {.sa_handler = barrier_on_usr1};
        sigaction(SIGUSR1, &sa, NULL);
        struct timespec deadline = test_deadline(5);
        int rc = cmp_barrier_wait(&sh->barrier, &deadline, NULL, NULL);
        if (rc != -EINTR || cmp_deadline_remaining(&deadline) < 1)
            _exit(10);
        if (cmp_barrier_n_waiting(&sh->barrier) != 0 || cmp_barrier_broken(&sh->barrier))
            _exit(11);
        __atomic_store_n(&sh->actions, 1, __ATOMIC_SEQ_CST); /* withdrew */
        /* retry with the same deadline: completes with the parent */
        rc = cmp_barrier_wait(&sh->barrier, &deadline, NULL, NULL);
        _exit(rc == 0 || rc == 1 ? 0 : 12);
    }
    wait_for_waiting(&sh->barrier, 1);
    kill(pid, SIGUSR1);
    struct timespec limit = test_deadline(5);
    while (!__atomic_load_n(&sh->actions, __ATOMIC_SEQ_CST) && cmp_deadline_remaining(&limit) > 0)
        usleep(1000);
    struct timespec deadline = test_deadline(5);
    int rc = cmp_barrier_wait(&sh->barrier, &deadline, NULL, NULL);
    cr_assert(rc == 0 || rc == 1, "rc %d", rc);
    cr_assert_eq(test_join(pid, 5), 0);
}
