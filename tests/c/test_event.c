/* Event: set/clear/wait, timeouts, many waiters across processes, pulses,
 * ping-pong, EINTR. */
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

Test(event, set_clear_is_set, .timeout = 5)
{
    cmp_event_t ev;
    cmp_event_init(&ev);
    cr_assert_eq(cmp_event_is_set(&ev), 0);
    cmp_event_set(&ev);
    cr_assert_eq(cmp_event_is_set(&ev), 1);
    cmp_event_set(&ev);
    cr_assert_eq(cmp_event_is_set(&ev), 1);
    cr_assert_eq(cmp_event_wait(&ev, NULL), 0);
    cmp_event_clear(&ev);
    cr_assert_eq(cmp_event_is_set(&ev), 0);
    cmp_event_clear(&ev);
    cr_assert_eq(cmp_event_is_set(&ev), 0);
}

Test(event, wait_times_out_when_clear, .timeout = 5)
{
    cmp_event_t ev;
    cmp_event_init(&ev);
    struct timespec deadline = test_deadline(0.1);
    cr_assert_eq(cmp_event_wait(&ev, &deadline), -ETIMEDOUT);
    cr_assert_eq(cmp_deadline_remaining(&deadline), 0);
    struct timespec past = test_deadline(0);
    cr_assert_eq(cmp_event_wait(&ev, &past), -ETIMEDOUT);
    cmp_event_set(&ev);
    cr_assert_eq(cmp_event_wait(&ev, &past), 0);
    cr_assert_eq(ev.waiters, 0);
}

Test(event, set_wakes_all_waiting_processes, .timeout = 10)
{
    struct shared {
        cmp_event_t ev;
        uint32_t ready;
    } *sh = test_shared_map(4096);
    cmp_event_init(&sh->ev);
    enum { N = 4 };
    pid_t pids[N];
    for (int i = 0; i < N; i++) {
        pids[i] = fork();
        cr_assert(pids[i] >= 0);
        if (pids[i] == 0) {
            __atomic_fetch_add(&sh->ready, 1, __ATOMIC_SEQ_CST);
            struct timespec deadline = test_deadline(5);
            _exit(cmp_event_wait(&sh->ev, &deadline) == 0 ? 0 : 1);
        }
    }
    struct timespec limit = test_deadline(5);
    while (__atomic_load_n(&sh->ev.waiters, __ATOMIC_SEQ_CST) < N &&
           cmp_deadline_remaining(&limit) > 0)
        usleep(1000);
    cr_assert_eq(sh->ev.waiters, N, "all children should be asleep");
    cmp_event_set(&sh->ev);
    for (int i = 0; i < N; i++)
        cr_assert_eq(test_join(pids[i], 5), 0);
    cr_assert_eq(sh->ev.waiters, 0);
}

/* A set immediately followed by a clear still releases the sleepers. */
Test(event, pulse_is_not_lost, .timeout = 10)
{
    cmp_event_t *ev = test_shared_map(4096);
    cmp_event_init(ev);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        struct timespec deadline = test_deadline(5);
        _exit(cmp_event_wait(ev, &deadline) == 0 ? 0 : 1);
    }
    struct timespec limit = test_deadline(5);
    while (__atomic_load_n(&ev->waiters, __ATOMIC_SEQ_CST) == 0 &&
           cmp_deadline_remaining(&limit) > 0)
        usleep(1000);
    cmp_event_set(ev);
    cmp_event_clear(ev);
    cr_assert_eq(test_join(pid, 5), 0);
    cr_assert_eq(cmp_event_is_set(ev), 0);
}

/* Two events bounced between two processes many times: every hand-off
 * must arrive (a lost wake-up would stall until the deadline). */
Test(event, ping_pong_across_processes, .timeout = 20)
{
    struct shared {
        cmp_event_t ping, pong;
    } *sh = test_shared_map(4096);
    cmp_event_init(&sh->ping);
    cmp_event_init(&sh->pong);
    enum { ROUNDS = 5000 };
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        for (int i = 0; i < ROUNDS; i++) {
            struct timespec deadline = test_deadline(5);
            if (cmp_event_wait(&sh->ping, &deadline) != 0)
                _exit(1);
            cmp_event_clear(&sh->ping);
            cmp_event_set(&sh->pong);
        }
        _exit(0);
    }
    for (int i = 0; i < ROUNDS; i++) {
        cmp_event_set(&sh->ping);
        struct timespec deadline = test_deadline(5);
        cr_assert_eq(cmp_event_wait(&sh->pong, &deadline), 0, "round %d", i);
        cmp_event_clear(&sh->pong);
    }
    cr_assert_eq(test_join(pid, 5), 0);
}

static void event_on_usr1(int sig)
{
    (void)sig;
}

Test(event, signal_interrupts_wait, .timeout = 10)
{
    cmp_event_t *ev = test_shared_map(4096);
    cmp_event_init(ev);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        struct sigaction sa = {.sa_handler = event_on_usr1};
        sigaction(SIGUSR1, &sa, NULL);
        struct timespec deadline = test_deadline(5);
        int rc = cmp_event_wait(ev, &deadline);
        _exit(rc == -EINTR && cmp_deadline_remaining(&deadline) > 1 && ev->waiters == 0 ? 0 : 1);
    }
    struct timespec limit = test_deadline(5);
    while (__atomic_load_n(&ev->waiters, __ATOMIC_SEQ_CST) == 0 &&
           cmp_deadline_remaining(&limit) > 0)
        usleep(1000);
    usleep(20000);
    kill(pid, SIGUSR1);
    cr_assert_eq(test_join(pid, 5), 0);
}

/* The spin budget (a private hint) loses a quarter when a spin runs out,
 * is left alone when the caller's deadline cut the spin short, and has a
 * floor. */
Test(event, spin_budget_adapts, .timeout = 5)
{
    cmp_event_t ev;
    cmp_event_init(&ev);
    const uint32_t start = ev.spin_ns;
    cr_assert(start > 0);
    struct timespec deadline = test_deadline(0.02);
    cr_assert_eq(cmp_event_wait(&ev, &deadline), -ETIMEDOUT);
    const uint32_t after_one = start - start / 4;
    cr_assert_eq(ev.spin_ns, after_one);
    struct timespec past = test_deadline(0);
    cr_assert_eq(cmp_event_wait(&ev, &past), -ETIMEDOUT);
    cr_assert_eq(ev.spin_ns, after_one);
    for (int i = 0; i < 8; i++) {
        deadline = test_deadline(0.002);
        cr_assert_eq(cmp_event_wait(&ev, &deadline), -ETIMEDOUT);
    }
    cr_assert(ev.spin_ns > 0 && ev.spin_ns < after_one, "budget %u", ev.spin_ns);
}
