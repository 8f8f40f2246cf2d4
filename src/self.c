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
/* Bumped in every child so that cached thread ids are refreshed: a forked
 * child's only thread carries the parent thread's TLS. */
static uint32_t fork_generation;
/* One TLS block, so that the hot path pays for one TLS address lookup. The
 * initial-exec model makes that lookup a plain %fs-relative load instead of
 * a __tls_get_addr call (libcmp is linked into a dlopen()ed extension; these
 * 8 bytes fit in the static TLS surplus glibc reserves for that). */
static _Thread_local struct {
    uint32_t tid;
    uint32_t generation;
} self_thread __attribute__((tls_model("initial-exec")));

static void after_fork_child(void)
{
    self_pid = (pid_t)syscall(SYS_getpid);
    fork_generation++;
}

static void self_init(void)
{
    /* register first: a fork right after self_pid is published must
     * already refresh it */
    pthread_atfork(NULL, NULL, after_fork_child);
    __atomic_store_n(&self_pid, (pid_t)syscall(SYS_getpid), __ATOMIC_RELEASE);
}

pid_t cmp_self_pid(void)
{
    /* every lock operation asks: skip pthread_once once the pid is known */
    pid_t pid = __atomic_load_n(&self_pid, __ATOMIC_ACQUIRE);
    if (__builtin_expect(pid != 0, 1))
        return pid;
    pthread_once(&self_once, self_init);
    return self_pid;
}

uint32_t cmp__self_tid(void)
{
    uint32_t gen = __atomic_load_n(&fork_generation, __ATOMIC_RELAXED);
    if (__builtin_expect(self_thread.tid != 0 && self_thread.generation == gen, 1))
        return self_thread.tid;
    pthread_once(&self_once, self_init);
    self_thread.tid = (uint32_t)syscall(SYS_gettid);
    self_thread.generation = __atomic_load_n(&fork_generation, __ATOMIC_RELAXED);
    return self_thread.tid;
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
