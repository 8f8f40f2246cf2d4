/* Helpers shared by the Criterion tests. */
#ifndef CMP_TEST_HELPERS_H
#define CMP_TEST_HELPERS_H

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cmp.h"

/* Anonymous shared mapping for one test's objects (inherited by fork). */
static inline void *test_shared_map(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert(p != MAP_FAILED);
    return p;
}

/* Deadline `seconds` from now. */
static inline struct timespec test_deadline(double seconds)
{
    struct timespec ts;
    cmp_deadline_after(seconds, &ts);
    return ts;
}

/* fork() for a test's child that must not outlive the test: a child stuck
 * in a wait would otherwise keep the runner waiting after the test's
 * timeout fired (Criterion waits for every process holding its pipe). */
static inline pid_t test_fork(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) /* the parent died before the prctl */
            _exit(99);
    }
    return pid;
}

/* Waits for a forked child for at most `seconds`; returns its exit status
 * or -1 (after killing it) if it did not finish, or did not exit normally. */
static inline int test_join(pid_t pid, double seconds)
{
    struct timespec deadline = test_deadline(seconds);
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (cmp_deadline_remaining(&deadline) <= 0) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        usleep(1000);
    }
}

/* Whether /dev/shm has a segment of that name. */
static inline int test_shm_exists(const char *name)
{
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    return access(path, F_OK) == 0;
}

#endif
