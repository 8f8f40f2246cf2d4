/*
 * Processes: fork a child that runs a C callback, and follow it through a
 * pidfd.
 *
 * The pidfd is what makes the handle safe: it names this very child even
 * if its pid is reused after reaping, it polls readable when the child
 * exits (a sentinel for select/poll), and signals sent through it can never
 * hit a stranger. Reaping goes through waitid() on the pidfd too.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

#define KNOWN_FLAGS CMP_PROCESS_DIE_WITH_PARENT

/* ---- exiting without waiting for the address space to go -----------------
 *
 * A forked child's exit tears down its page tables, copies of its parent's
 * made by the fork: for a parent of 100 MB that takes about a millisecond,
 * and the exit is reported (waitpid, the pidfd) only after it. So a child
 * with much memory first lends its address space to a helper (clone with
 * CLONE_VM, which copies no page table) and then exits at once: the
 * helper, killed by its parent's death, does the teardown afterwards and
 * is reaped by whoever adopts it. The child closes every descriptor
 * before, as its exit would, so the helper holds none and every peer sees
 * the end of its pipes before it sees the exit. A process that adopts
 * orphans itself (init of its namespace, a subreaper) would be left the
 * helpers to reap, so its children exit plainly. */

/* Anonymous memory (pages) below which the teardown is cheaper than the
 * helper: measured break-even about 24 MiB on 2 cores. */
#define LEND_MIN_PAGES ((32u << 20) / 4096u)

static int adopts_orphans; /* of the parent, set before each fork */
static char holder_stack[16384] __attribute__((aligned(16)));

/* Raw system calls only: the helper runs on the child's thread state. */
static int hold_address_space(void *arg)
{
    long child = (long)(intptr_t)arg;
    /* the table is shared: what another thread of the child opened after
     * the child's own close_range goes too */
    syscall(SYS_close_range, 0u, ~0u, 0u);
    /* armed after the child died, it never fires: getppid() says so */
    if (syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) == 0 &&
        syscall(SYS_getppid) == child)
        for (;;)
            syscall(SYS_pause);
    return 0;
}

/* Resident anonymous pages of this process (resident less file-backed). */
static unsigned long anon_pages(void)
{
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    unsigned long size, resident, shared;
    if (sscanf(buf, "%lu %lu %lu", &size, &resident, &shared) != 3 || shared > resident)
        return 0;
    return resident - shared;
}

static _Noreturn void child_exit(int status)
{
    if (!adopts_orphans && anon_pages() >= LEND_MIN_PAGES) {
        sigset_t all;
        sigfillset(&all);
        /* the helper starts with this mask: no inherited handler runs */
        pthread_sigmask(SIG_SETMASK, &all, NULL);
        /* no helper where the descriptors cannot all be closed first
         * (a kernel before 5.9, a filter): it would hold them open */
        if (syscall(SYS_close_range, 0u, ~0u, 0u) == 0)
            clone(hold_address_space, holder_stack + sizeof holder_stack,
                  CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | SIGCHLD,
                  (void *)(intptr_t)getpid());
    }
    _exit(status);
}

static _Noreturn void child_run(cmp_process_fn fn, void *arg, unsigned flags, pid_t parent)
{
    if (flags & CMP_PROCESS_DIE_WITH_PARENT) {
        /* The parent may have died between fork() and prctl(): then the
         * death signal was never armed and we have been reparented. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            raise(SIGKILL);
    }
    int ret = fn(arg);
    /* Blocks only this child held become reusable by the others. */
    cmp_shared_release_all();
    /* A private directory this child made goes with it (one its parent
     * made stays: the child is not its creator). */
    cmp_tempdir_remove();
    fflush(NULL);
    child_exit(ret & 0xff);
}

/* Fills proc for our new child pid; if no pidfd can be had, the child is
 * killed and reaped and the error returned. */
static int follow(cmp_process_t *proc, pid_t pid)
{
    /* An unreaped child's pid cannot be reused, so opening it now is safe.
     * pidfds are always close-on-exec. */
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0) {
        int err = -errno;
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        return err;
    }
    proc->pid = pid;
    proc->pidfd = fd;
    proc->status = 0;
    proc->reaped = 0;
    proc->remote = 0;
    proc->status_fd = -1;
    return 0;
}

int cmp_process_start(cmp_process_t *proc, cmp_process_fn fn, void *arg, unsigned flags)
{
    if (flags & ~KNOWN_FLAGS)
        return -EINVAL;
    pid_t parent = (flags & CMP_PROCESS_DIE_WITH_PARENT) ? getpid() : 0;
    /* The child flushes stdio when it ends; output still buffered here
     * would then be written twice, once by each process. */
    fflush(NULL);
    int subreaper = 0;
    adopts_orphans =
        getpid() == 1 || (prctl(PR_GET_CHILD_SUBREAPER, &subreaper, 0, 0, 0) == 0 && subreaper);
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0)
        child_run(fn, arg, flags, parent);
    return follow(proc, pid);
}

int cmp_process_spawn(cmp_process_t *proc, const char *path, char *const argv[], const int *keep,
                      int nkeep)
{
    /* posix_spawn, not fork: a Python parent can be large, and fork would
     * run the pthread_atfork handlers (the shared heap's would give the new
     * program references it never drops). A dup2 of an fd onto itself
     * clears its close-on-exec flag (glibc >= 2.29), which is how the kept
     * fds cross the exec at their own numbers. */
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc)
        return -rc;
    if ((rc = posix_spawnattr_init(&attr))) {
        posix_spawn_file_actions_destroy(&fa);
        return -rc;
    }
    for (int i = 0; i < nkeep && !rc; i++)
        rc = posix_spawn_file_actions_adddup2(&fa, keep[i], keep[i]);
    sigset_t none;
    sigemptyset(&none);
    if (!rc)
        rc = posix_spawnattr_setsigmask(&attr, &none);
    if (!rc)
        rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    pid_t pid = 0;
    extern char **environ;
    if (!rc)
        rc = posix_spawn(&pid, path, &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc)
        return -rc;
    return follow(proc, pid);
}

void cmp_process_adopt(cmp_process_t *proc, pid_t pid, int pidfd, int status_fd)
{
    proc->pid = pid;
    proc->pidfd = pidfd;
    proc->status = 0;
    proc->reaped = 0;
    proc->remote = 1;
    proc->status_fd = status_fd;
}

/* The fd that polls readable once the exit status can be had. */
static int wait_fd(const cmp_process_t *proc)
{
    return proc->remote ? proc->status_fd : proc->pidfd;
}

/* An adopted child's status from its fork server: 1 read (or the server
 * is gone: 255), 0 not there yet (only with WNOHANG), or a negative errno. */
static int reap_remote(cmp_process_t *proc, int options)
{
    if (proc->status_fd < 0)
        return -ECHILD;
    struct pollfd pfd = {.fd = proc->status_fd, .events = POLLIN};
    int n = poll(&pfd, 1, (options & WNOHANG) ? 0 : -1);
    if (n < 0)
        return -errno;
    if (n == 0)
        return 0;
    int32_t st = 0;
    size_t got = 0;
    while (got < sizeof st) {
        ssize_t r = read(proc->status_fd, (char *)&st + got, sizeof st - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            st = 0xff00; /* the server went away: exit status unknown */
            break;
        }
        got += (size_t)r;
    }
    proc->status = st;
    __atomic_store_n(&proc->reaped, 1, __ATOMIC_RELEASE);
    return 1;
}

/* Turns waitid's report into a wait status (as waitpid would give). */
static int status_of(const siginfo_t *info)
{
    switch (info->si_code) {
    case CLD_EXITED:
        return (info->si_status & 0xff) << 8;
    case CLD_DUMPED:
        return (info->si_status & 0x7f) | 0x80;
    default: /* CLD_KILLED */
        return info->si_status & 0x7f;
    }
}

/* One waitid on the child: 1 reaped, 0 still running (only with WNOHANG),
 * or a negative errno. */
static int reap(cmp_process_t *proc, int options)
{
    if (proc->remote)
        return reap_remote(proc, options);
    siginfo_t info;
    info.si_pid = 0;
    int rc;
    if (proc->pidfd >= 0) {
        rc = waitid((idtype_t)P_PIDFD, (id_t)proc->pidfd, &info, WEXITED | options);
        if (rc < 0 && errno == EINVAL) /* kernel before 5.4 */
            rc = waitid(P_PID, (id_t)proc->pid, &info, WEXITED | options);
    } else {
        rc = waitid(P_PID, (id_t)proc->pid, &info, WEXITED | options);
    }
    if (rc < 0)
        return -errno;
    if (info.si_pid == 0)
        return 0;
    proc->status = status_of(&info);
    /* release: a thread that lost the race to reap (and got ECHILD) reads
     * status after seeing reaped set. */
    __atomic_store_n(&proc->reaped, 1, __ATOMIC_RELEASE);
    return 1;
}

static int is_reaped(const cmp_process_t *proc)
{
    return __atomic_load_n(&proc->reaped, __ATOMIC_ACQUIRE);
}

int cmp_process_join(cmp_process_t *proc, const struct timespec *deadline)
{
    if (is_reaped(proc))
        return 0;
    if (deadline && wait_fd(proc) >= 0) {
        /* Wait for readability with the time left, then reap (no block). */
        for (;;) {
            struct timespec left;
            cmp__deadline_left(deadline, &left);
            struct pollfd pfd = {.fd = wait_fd(proc), .events = POLLIN};
            int n = ppoll(&pfd, 1, &left, NULL);
            if (n < 0)
                return -errno;
            if (n > 0)
                break;
            if (cmp__deadline_passed(deadline))
                return -ETIMEDOUT;
        }
        int rc = reap(proc, WNOHANG);
        if (rc < 0)
            return rc == -ECHILD && is_reaped(proc) ? 0 : rc;
        if (rc == 0) /* readable but not yet reapable: cannot happen */
            rc = reap(proc, 0);
        return rc < 0 ? rc : 0;
    }
    if (deadline) { /* handle without fd: poll for the exit */
        for (;;) {
            int rc = reap(proc, WNOHANG);
            if (rc != 0)
                return rc < 0 ? rc : 0;
            if (cmp__deadline_passed(deadline))
                return -ETIMEDOUT;
            struct timespec nap = {0, 1000000L};
            if (nanosleep(&nap, NULL) < 0 && errno == EINTR)
                return -EINTR;
        }
    }
    int rc = reap(proc, 0);
    if (rc == -ECHILD && is_reaped(proc))
        return 0;
    return rc < 0 ? rc : 0;
}

int cmp_process_poll(cmp_process_t *proc)
{
    if (is_reaped(proc))
        return 1;
    int rc = reap(proc, WNOHANG);
    if (rc == -ECHILD && is_reaped(proc))
        return 1;
    return rc;
}

int cmp_process_is_alive(cmp_process_t *proc)
{
    return cmp_process_poll(proc) == 0;
}

int cmp_process_signal(cmp_process_t *proc, int sig)
{
    if (is_reaped(proc))
        return -ESRCH;
    if (proc->pidfd >= 0) {
        if (syscall(SYS_pidfd_send_signal, proc->pidfd, sig, NULL, 0) == 0)
            return 0;
        if (errno != ENOSYS)
            return -errno;
    }
    /* Not reaped by us, so the pid is still this child's. */
    return kill(proc->pid, sig) == 0 ? 0 : -errno;
}

int cmp_process_terminate(cmp_process_t *proc)
{
    return cmp_process_signal(proc, SIGTERM);
}

int cmp_process_kill(cmp_process_t *proc)
{
    return cmp_process_signal(proc, SIGKILL);
}

int cmp_process_exitcode(cmp_process_t *proc, int *code)
{
    int rc = cmp_process_poll(proc);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return -EAGAIN;
    int st = proc->status;
    *code = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
    return 0;
}

int cmp_process_sentinel(const cmp_process_t *proc)
{
    return wait_fd(proc);
}

void cmp_process_close(cmp_process_t *proc)
{
    if (proc->pidfd >= 0) {
        close(proc->pidfd);
        proc->pidfd = -1;
    }
    if (proc->remote && proc->status_fd >= 0) {
        close(proc->status_fd);
        proc->status_fd = -1;
    }
}
