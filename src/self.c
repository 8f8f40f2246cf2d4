/* Who am I, cheaply: pid and tid are on every lock's fast path, and glibc
 * no longer caches getpid(), so cache both and refresh the pid after fork. */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static pid_t self_pid;
static pthread_once_t self_once = PTHREAD_ONCE_INIT;
static _Thread_local uint32_t self_tid;
/* Bumped in every child so that cached thread ids are refreshed: a forked
 * child's only thread carries the parent thread's TLS. */
static uint32_t fork_generation;
static _Thread_local uint32_t self_tid_generation;

static void after_fork_child(void)
{
    self_pid = (pid_t)syscall(SYS_getpid);
    fork_generation++;
}

static void self_init(void)
{
    self_pid = (pid_t)syscall(SYS_getpid);
    pthread_atfork(NULL, NULL, after_fork_child);
}

pid_t cmp_self_pid(void)
{
    pthread_once(&self_once, self_init);
    return self_pid;
}

uint32_t cmp__self_tid(void)
{
    pthread_once(&self_once, self_init);
    if (self_tid == 0 || self_tid_generation != fork_generation) {
        self_tid = (uint32_t)syscall(SYS_gettid);
        self_tid_generation = fork_generation;
    }
    return self_tid;
}

int cmp_pid_alive(pid_t pid)
{
    if (pid <= 0)
        return 0;
    if (kill(pid, 0) != 0)
        return errno == ESRCH ? 0 : 1; /* EPERM: exists */
    /* A killed child stays a zombie until reaped, and its reaper may be the
     * very process waiting on the lock: a zombie holds nothing. */
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* state follows the last ')' (the command name may contain one) */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return 1;
    return !(p[2] == 'Z' || p[2] == 'X');
}
