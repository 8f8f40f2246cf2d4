/* Helpers for the pid-reuse tests: a holder that dies holding a lock, and a
 * process given exactly the dead holder's pid (clone3 with set_tid, or a
 * fork after setting ns_last_pid), so that a liveness check by pid alone
 * would find the holder "alive". */
#ifndef CMP_TEST_PID_HELPERS_H
#define CMP_TEST_PID_HELPERS_H

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cmp.h"

/* Forks a child that takes lock and is SIGKILLed holding it; returns its
 * pid once reaped (the pid is free again). */
static inline pid_t pid_die_holding(cmp_lock_t *lock)
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        if (cmp_lock_acquire(lock, NULL) < 0)
            _exit(1);
        kill(getpid(), SIGKILL);
        _exit(2);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "holder status %#x", status);
    return pid;
}

/* Starts a process with exactly `pid` that sleeps until killed (at most
 * 60 s), or skips the test when the kernel refuses: set_tid needs clone3
 * (Linux 5.5) and CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE. Sleeps 20 ms
 * first, more than a clock tick, so that its start time differs from the
 * dead holder's. End it with pid_squatter_end(). */
static inline pid_t pid_squatter(pid_t pid)
{
    struct timespec tick = {0, 20 * 1000 * 1000};
    nanosleep(&tick, NULL);
    pid_t want = pid;
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    args.set_tid = (uint64_t)(uintptr_t)&want;
    args.set_tid_size = 1;
    long r = syscall(SYS_clone3, &args, sizeof args);
    if (r == 0) {
        /* a raw clone runs no atfork handlers: touch nothing of libcmp */
        alarm(60);
        for (;;)
            pause();
    }
    if (r < 0) {
        int e = errno;
        cr_skip_test("clone3 with set_tid refused (%s): cannot reuse a pid", strerror(e));
    }
    cr_assert_eq((pid_t)r, pid);
    cr_assert_eq(cmp_pid_alive(pid), 1, "the reused pid must look alive by pid alone");
    return (pid_t)r;
}

/* fork(), but the child gets exactly `pid` (free: a reaped holder's), so
 * that it can use libcmp itself: a raw clone3 runs no atfork handlers,
 * this does. Sets ns_last_pid (root), so it may race with other processes
 * forking: retried. Returns 0 in the child, `pid` in the parent, or skips
 * the test. Sleeps 20 ms first, as pid_squatter(). */
static inline pid_t pid_fork_as(pid_t pid)
{
    struct timespec tick = {0, 20 * 1000 * 1000};
    nanosleep(&tick, NULL);
    for (int attempt = 0; attempt < 20; attempt++) {
        int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            cr_skip_test("ns_last_pid not writable (%s): cannot reuse a pid", strerror(e));
        }
        char buf[16];
        int n = snprintf(buf, sizeof buf, "%d", (int)pid - 1);
        ssize_t w = write(fd, buf, (size_t)n);
        int e = errno;
        close(fd);
        if (w != n)
            cr_skip_test("ns_last_pid refused (%s): cannot reuse a pid", strerror(e));
        pid_t child = fork();
        cr_assert(child >= 0);
        if (child == 0) {
            if (getpid() == pid)
                return 0;
            _exit(0);
        }
        if (child == pid)
            return child;
        waitpid(child, NULL, 0); /* another process took the pid first */
    }
    cr_skip_test("other processes kept taking pid %d", (int)pid);
    return -1;
}

static inline void pid_squatter_end(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

#endif
