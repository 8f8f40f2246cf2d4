/* Who am I, cheaply, and is that process still the one: pid and tid are on
 * every lock's fast path, and glibc no longer caches getpid(), so cache both
 * and refresh the pid after fork. A lock records its holder as an identity
 * (pid plus a tag of the start time, cmp__self_id) so that a process given a
 * dead holder's pid is not taken for it (cmp__id_alive). */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static pid_t self_pid;
/* cmp__self_id(), computed on first use (reading /proc costs three
 * syscalls, which a forked child that never locks should not pay), 0 until
 * then and again in every child. */
__attribute__((visibility("hidden"))) uint64_t cmp__self_id_cache;
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
    __atomic_store_n(&cmp__self_id_cache, 0, __ATOMIC_RELAXED);
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

/* What /proc/PID/stat says of pid: -1 when there is no such entry, else 0
 * and the state letter and the start time (field 22, clock ticks since
 * boot), *starttime 0 when the line could not be parsed. */
static int read_stat(pid_t pid, char *state, unsigned long long *starttime)
{
    char path[32], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n;
    do
        n = read(fd, buf, sizeof buf - 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    *state = '?';
    *starttime = 0;
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* state follows the last ')' (the command name may contain one); the
     * start time is the 20th field from the state on */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return 0;
    *state = p[2];
    p += 2;
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    if (p)
        *starttime = strtoull(p, NULL, 10);
    return 0;
}

/* The high half of an identity. 0 means "unknown" (an unreadable /proc):
 * such an identity is checked by its pid alone. 2^32 ticks are 497 days at
 * 100 Hz, so truncating loses nothing that matters. */
static uint32_t start_tag(unsigned long long starttime)
{
    uint32_t tag = (uint32_t)starttime;
    return tag ? tag : 1;
}

uint64_t cmp__self_id_slow(void)
{
    pid_t pid = cmp_self_pid();
    char state;
    unsigned long long start;
    uint32_t tag = read_stat(pid, &state, &start) == 0 && start ? start_tag(start) : 0;
    uint64_t id = (uint64_t)tag << 32 | (uint32_t)pid;
    /* threads racing here compute the same value */
    __atomic_store_n(&cmp__self_id_cache, id, __ATOMIC_RELAXED);
    return id;
}

int cmp__id_alive(uint64_t id)
{
    pid_t pid = (pid_t)(id & 0x7fffffffu);
    uint32_t tag = (uint32_t)(id >> 32);
    if (pid <= 0)
        return 0;
    char state;
    unsigned long long start;
    if (read_stat(pid, &state, &start) < 0) {
        /* no entry: gone, unless /proc is missing or hides the process
         * (hidepid); then only kill() can tell, by pid alone */
        if (kill(pid, 0) != 0)
            return errno == ESRCH ? 0 : 1; /* EPERM: exists */
        return 1;
    }
    /* A killed child stays a zombie until reaped, and its reaper may be the
     * very process waiting on the lock: a zombie holds nothing. */
    if (state == 'Z' || state == 'X')
        return 0;
    /* Another process now has the pid. An unparsable line (start 0) or an
     * unknown tag proves nothing: alive, never steal from a live holder. */
    if (tag != 0 && start != 0 && start_tag(start) != tag)
        return 0;
    return 1;
}

int cmp_pid_alive(pid_t pid)
{
    return cmp__id_alive((uint64_t)(uint32_t)pid);
}
