/* Processes: exit codes, signals, deadlines, sentinels, parent death. */
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static int return_arg(void *arg)
{
    return (int)(intptr_t)arg;
}

static int sleep_forever(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return 0;
}

static int sleep_ms(void *arg)
{
    usleep((useconds_t)(intptr_t)arg * 1000);
    return 0;
}

/* A core-dumping signal (not SIGSEGV, which sanitizers intercept); no core
 * file is written. */
static int crash(void *arg)
{
    (void)arg;
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    raise(SIGQUIT);
    return 0;
}

Test(process, exit_codes, .timeout = 10)
{
    int codes[] = {0, 1, 7, 255, 256 + 3};
    for (size_t i = 0; i < sizeof codes / sizeof *codes; i++) {
        cmp_process_t p;
        cr_assert_eq(cmp_process_start(&p, return_arg, (void *)(intptr_t)codes[i], 0), 0);
        cr_assert_gt(p.pid, 0);
        cr_assert_eq(cmp_process_join(&p, NULL), 0);
        int code = -1;
        cr_assert_eq(cmp_process_exitcode(&p, &code), 0);
        cr_assert_eq(code, codes[i] & 0xff);
        cr_assert_eq(cmp_process_is_alive(&p), 0);
        cr_assert_eq(cmp_process_join(&p, NULL), 0, "joining twice is fine");
        cmp_process_close(&p);
        cr_assert_eq(p.pidfd, -1);
    }
}

static int print_child(void *arg)
{
    (void)arg;
    fputs("child\n", stdout);
    return 0;
}

/* Output the parent had buffered when it started a child is written once,
 * not once more by the child when it flushes at exit. */
Test(process, buffered_output_not_written_twice, .timeout = 10)
{
    char path[] = "/tmp/cmp_test_stdout_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    cr_assert_geq(dup2(fd, STDOUT_FILENO), 0);
    fputs("parent-before ", stdout); /* buffered: stdout is a file now */
    cmp_process_t proc;
    cr_assert_eq(cmp_process_start(&proc, print_child, NULL, 0), 0);
    cr_assert_eq(cmp_process_join(&proc, NULL), 0);
    cmp_process_close(&proc);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    char buf[128] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    unlink(path);
    cr_assert_gt(n, 0);
    cr_assert_str_eq(buf, "parent-before child\n");
}

Test(process, bad_flags, .timeout = 5)
{
    cmp_process_t p;
    cr_assert_eq(cmp_process_start(&p, return_arg, NULL, 0x80), -EINVAL);
}

Test(process, signals_give_negative_codes, .timeout = 10)
{
    cmp_process_t p;
    int code = 0;
    cr_assert_eq(cmp_process_start(&p, sleep_forever, NULL, 0), 0);
    cr_assert_eq(cmp_process_is_alive(&p), 1);
    cr_assert_eq(cmp_process_exitcode(&p, &code), -EAGAIN);
    cr_assert_eq(cmp_process_terminate(&p), 0);
    cr_assert_eq(cmp_process_join(&p, NULL), 0);
    cr_assert_eq(cmp_process_exitcode(&p, &code), 0);
    cr_assert_eq(code, -SIGTERM);
    cr_assert_eq(cmp_process_terminate(&p), -ESRCH, "reaped: no signal");
    cmp_process_close(&p);

    cr_assert_eq(cmp_process_start(&p, sleep_forever, NULL, 0), 0);
    cr_assert_eq(cmp_process_kill(&p), 0);
    cr_assert_eq(cmp_process_join(&p, NULL), 0);
    cr_assert_eq(cmp_process_exitcode(&p, &code), 0);
    cr_assert_eq(code, -SIGKILL);
    cmp_process_close(&p);

    cr_assert_eq(cmp_process_start(&p, sleep_forever, NULL, 0), 0);
    cr_assert_eq(cmp_process_signal(&p, SIGUSR1), 0);
    cr_assert_eq(cmp_process_join(&p, NULL), 0);
    cr_assert_eq(cmp_process_exitcode(&p, &code), 0);
    cr_assert_eq(code, -SIGUSR1);
    cmp_process_close(&p);

    cr_assert_eq(cmp_process_start(&p, crash, NULL, 0), 0);
    cr_assert_eq(cmp_process_join(&p, NULL), 0);
    cr_assert_eq(cmp_process_exitcode(&p, &code), 0);
    cr_assert_eq(code, -SIGQUIT, "a core-dumping signal reports the signal");
    cmp_process_close(&p);
}

Test(process, join_timeout, .timeout = 10)
{
    cmp_process_t p;
    cr_assert_eq(cmp_process_start(&p, sleep_forever, NULL, 0), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct timespec d = test_deadline(0.2);
    cr_assert_eq(cmp_process_join(&p, &d), -ETIMEDOUT);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    cr_assert(waited >= 0.19 && waited < 2.0, "waited %f", waited);
    d = test_deadline(0);
    cr_assert_eq(cmp_process_join(&p, &d), -ETIMEDOUT, "a past deadline only checks");
    cr_assert_eq(cmp_process_is_alive(&p), 1);
    cmp_process_kill(&p);
    d = test_deadline(5);
    cr_assert_eq(cmp_process_join(&p, &d), 0);
    cr_assert_eq(cmp_process_is_alive(&p), 0);
    cmp_process_close(&p);

    cr_assert_eq(cmp_process_start(&p, sleep_ms, (void *)50, 0), 0);
    d = test_deadline(5);
    cr_assert_eq(cmp_process_join(&p, &d), 0, "exits well before the deadline");
    int code = -1;
    cr_assert_eq(cmp_process_exitcode(&p, &code), 0);
    cr_assert_eq(code, 0);
    cmp_process_close(&p);
}

Test(process, poll_and_is_alive, .timeout = 10)
{
    cmp_process_t p;
    cr_assert_eq(cmp_process_start(&p, sleep_ms, (void *)100, 0), 0);
    cr_assert_eq(cmp_process_poll(&p), 0);
    cr_assert_eq(cmp_process_is_alive(&p), 1);
    while (cmp_process_poll(&p) == 0)
        usleep(1000);
    cr_assert_eq(cmp_process_poll(&p), 1);
    cr_assert_eq(p.reaped, 1, "poll reaps");
    cr_assert_eq(cmp_process_is_alive(&p), 0);
    cmp_process_close(&p);
}

Test(process, sentinel_polls_readable_on_exit, .timeout = 10)
{
    cmp_process_t p;
    cr_assert_eq(cmp_process_start(&p, sleep_ms, (void *)100, 0), 0);
    int fd = cmp_process_sentinel(&p);
    cr_assert_geq(fd, 0);
    cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&pfd, 1, 0), 0, "not readable while running");
    cr_assert_eq(poll(&pfd, 1, 5000), 1);
    cr_assert(pfd.revents & POLLIN);
    cr_assert_eq(cmp_process_join(&p, NULL), 0);
    cmp_process_close(&p);
    cr_assert_eq(cmp_process_sentinel(&p), -1);
}

/* The middle process starts a grandchild that should die with it, reports
 * the grandchild's pid through a pipe, then exits. */
static int grandchild_fd;

static int middle(void *arg)
{
    unsigned flags = (unsigned)(uintptr_t)arg;
    cmp_process_t g;
    if (cmp_process_start(&g, sleep_forever, NULL, flags) != 0)
        return 1;
    pid_t pid = g.pid;
    if (write(grandchild_fd, &pid, sizeof pid) != sizeof pid)
        return 2;
    return 0;
}

static int wait_gone(pid_t pid, double seconds)
{
    struct timespec d = test_deadline(seconds);
    while (cmp_pid_alive(pid)) {
        if (cmp_deadline_remaining(&d) <= 0)
            return 0;
        usleep(2000);
    }
    return 1;
}

Test(process, die_with_parent, .timeout = 10)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    grandchild_fd = fds[1];
    cmp_process_t p;
    cr_assert_eq(cmp_process_start(&p, middle, (void *)(uintptr_t)CMP_PROCESS_DIE_WITH_PARENT, 0),
                 0);
    pid_t g = 0;
    cr_assert_eq(read(fds[0], &g, sizeof g), (ssize_t)sizeof g);
    cr_assert_eq(cmp_process_join(&p, NULL), 0);
    cr_assert(wait_gone(g, 5), "the grandchild died with its parent");

    /* Without the flag the orphan lives on. */
    cr_assert_eq(cmp_process_start(&p, middle, (void *)0, 0), 0);
    cr_assert_eq(read(fds[0], &g, sizeof g), (ssize_t)sizeof g);
    cr_assert_eq(cmp_process_join(&p, NULL), 0);
    usleep(50000);
    cr_assert_eq(cmp_pid_alive(g), 1);
    kill(g, SIGKILL);
    close(fds[0]);
    close(fds[1]);
}

static volatile sig_atomic_t got_alarm;

static void on_alarm(int sig)
{
    (void)sig;
    got_alarm = 1;
}

Test(process, join_returns_eintr, .timeout = 10)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; /* no SA_RESTART: the wait must come back */
    sigaction(SIGALRM, &sa, NULL);
    cmp_process_t p;
    cr_assert_eq(cmp_process_start(&p, sleep_forever, NULL, 0), 0);

    struct itimerval it = {.it_value = {0, 50000}};
    setitimer(ITIMER_REAL, &it, NULL);
    cr_assert_eq(cmp_process_join(&p, NULL), -EINTR);
    cr_assert(got_alarm);

    got_alarm = 0;
    setitimer(ITIMER_REAL, &it, NULL);
    struct timespec d = test_deadline(5);
    cr_assert_eq(cmp_process_join(&p, &d), -EINTR, "deadline waits too");
    cr_assert(got_alarm);
    cr_assert_eq(cmp_process_is_alive(&p), 1);

    cmp_process_kill(&p);
    cr_assert_eq(cmp_process_join(&p, NULL), 0);
    cmp_process_close(&p);
    signal(SIGALRM, SIG_DFL);
}

Test(process, closed_handle_still_joins, .timeout = 10)
{
    cmp_process_t p;
    cr_assert_eq(cmp_process_start(&p, sleep_ms, (void *)20, 0), 0);
    cmp_process_close(&p);
    struct timespec d = test_deadline(5);
    cr_assert_eq(cmp_process_join(&p, &d), 0);
    int code = -1;
    cr_assert_eq(cmp_process_exitcode(&p, &code), 0);
    cr_assert_eq(code, 0);
}

Test(process, spawn_keeps_only_the_fds_asked_for, .timeout = 10)
{
    int keep[2], other[2];
    cr_assert_eq(pipe2(keep, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(other, O_CLOEXEC), 0);
    char script[128];
    /* exit 0 only when the kept fd is open and the other is not */
    snprintf(script, sizeof script, "test -e /proc/self/fd/%d && ! test -e /proc/self/fd/%d",
             keep[1], other[1]);
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    cmp_process_t p;
    cr_assert_eq(cmp_process_spawn(&p, "/bin/sh", argv, &keep[1], 1), 0);
    cr_assert_eq(cmp_process_join(&p, NULL), 0);
    int code = -1;
    cr_assert_eq(cmp_process_exitcode(&p, &code), 0);
    cr_assert_eq(code, 0);
    /* still close-on-exec here: only the child's copy was changed */
    cr_assert(fcntl(keep[1], F_GETFD) & FD_CLOEXEC);
    cmp_process_close(&p);
    close(keep[0]);
    close(keep[1]);
    close(other[0]);
    close(other[1]);
}

Test(process, spawn_reports_exec_failure, .timeout = 10)
{
    char *argv[] = {"/nonexistent/program", NULL};
    cmp_process_t p;
    cr_assert_eq(cmp_process_spawn(&p, argv[0], argv, NULL, 0), -ENOENT);
}

Test(process, adopted_child_status_from_its_fd, .timeout = 10)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    cmp_process_t p;
    cmp_process_adopt(&p, getpid(), -1, sv[0]);
    cr_assert_eq(cmp_process_sentinel(&p), sv[0]);
    cr_assert_eq(cmp_process_poll(&p), 0);
    int32_t status = 3 << 8; /* exited with 3 */
    cr_assert_eq(write(sv[1], &status, sizeof status), (ssize_t)sizeof status);
    struct timespec deadline;
    cmp_deadline_after(5.0, &deadline);
    cr_assert_eq(cmp_process_join(&p, &deadline), 0);
    int code = -1;
    cr_assert_eq(cmp_process_exitcode(&p, &code), 0);
    cr_assert_eq(code, 3);
    cmp_process_close(&p);
    close(sv[1]);
}

/* ---- a child with much memory exits before its address space goes ---- */

#define BIG_CHILD_BYTES (64u << 20) /* above the size at which it lends */

static char *volatile big_memory; /* volatile: the writes are not elided */

static int touch_much_memory(void *arg)
{
    big_memory = malloc(BIG_CHILD_BYTES);
    if (!big_memory)
        return 100;
    memset(big_memory, 1, BIG_CHILD_BYTES);
    return (int)(intptr_t)arg;
}

/* What the parent sees is a plain exit: the code, and every descriptor the
 * child held already closed when the join returns. */
Test(process, big_child_exits_with_its_descriptors_closed, .timeout = 20)
{
    for (int round = 0; round < 3; round++) {
        int fds[2];
        cr_assert_eq(pipe(fds), 0);
        cmp_process_t p;
        cr_assert_eq(cmp_process_start(&p, touch_much_memory, (void *)9, 0), 0);
        close(fds[1]);
        struct timespec d = test_deadline(10);
        cr_assert_eq(cmp_process_join(&p, &d), 0);
        int code = -1;
        cr_assert_eq(cmp_process_exitcode(&p, &code), 0);
        cr_assert_eq(code, 9);
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        cr_assert_eq(poll(&pfd, 1, 0), 1, "the child's end of the pipe is closed at join");
        char c;
        cr_assert_eq(read(fds[0], &c, 1), 0);
        cmp_process_close(&p);
        close(fds[0]);
    }
}

static int start_big_grandchild(void *arg)
{
    (void)arg;
    cmp_process_t g;
    if (cmp_process_start(&g, touch_much_memory, (void *)5, 0) != 0 ||
        cmp_process_join(&g, NULL) != 0)
        return 1;
    int code = -1;
    cmp_process_exitcode(&g, &code);
    return code;
}

/* The helper that holds an exited child's address space ends by itself:
 * this test adopts orphans (a subreaper), so the helper of its grandchild
 * comes to it, and must be reaped here, alone (its own child, whose exit
 * would leave a helper to this process, exits plainly). */
Test(process, address_space_helper_ends_by_itself, .timeout = 20)
{
    cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0);
    cmp_process_t p;
    cr_assert_eq(cmp_process_start(&p, start_big_grandchild, NULL, 0), 0);
    cr_assert_eq(cmp_process_join(&p, NULL), 0);
    int code = -1;
    cr_assert_eq(cmp_process_exitcode(&p, &code), 0);
    cr_assert_eq(code, 5);
    cmp_process_close(&p);
    int reaped = 0;
    struct timespec d = test_deadline(10);
    for (;;) {
        pid_t pid = waitpid(-1, NULL, WNOHANG);
        if (pid > 0) {
            reaped++;
            continue;
        }
        cr_assert(pid == 0 || errno == ECHILD);
        if (pid < 0 || cmp_deadline_remaining(&d) <= 0)
            break;
        usleep(2000);
    }
    cr_assert_eq(reaped, 1, "one helper came here and ended (%d)", reaped);
}
