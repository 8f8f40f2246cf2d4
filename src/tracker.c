/*
 * Resource tracker: the named resources a program registered (segments,
 * semaphores) are removed once the program is dead, also when every one of
 * its processes, its watcher included, was killed with SIGKILL.
 *
 * A program's registry is a directory D/p<pid>-<hex>/ in D =
 * /dev/shm/.cmp-tracker-<euid> (0700): in /dev/shm so that it is scoped
 * exactly like the names it lists (a container with its own /dev/shm has
 * its own registries). It holds a file `lock`, flock()ed through one open
 * file description that the program's first process opens and every fork
 * inherits (a spawned child is handed the fd: cmp_tracker_adopt). The
 * kernel drops an flock only when the last descriptor of its description
 * closes, that is when the last process of the program is gone, however it
 * died: no message, no pipe, nothing a SIGKILL can interrupt halfway. Each
 * registered name is an entry, kind letter + name, written before the
 * registering call returns; it holds the resource's inode number, so that
 * a later resource under the same name is not taken for it.
 *
 * Sweeping: whoever takes a registry's lock (LOCK_NB) knows its program is
 * dead. It removes each listed resource that no living process maps or
 * holds open (/proc/PID/maps and /proc/PID/fd), keeps the others listed for
 * a later sweep, and removes the registry once it lists nothing. A watcher
 * process (cmp_tracker_start) waits for the lock and sweeps the moment the
 * program ends, as the standard library's resource tracker does at its
 * pipe's EOF; each program's first registration sweeps what killed
 * programs left.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SHM_DIR "/dev/shm"
/* A registry still being set up (mkdir to rename) is this old at most,
 * unless its creator died in between. */
#define NEW_MAX_AGE_S 60

static pthread_mutex_t tracker_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t tracker_once = PTHREAD_ONCE_INIT;
static int prog_fd = -1;        /* the program's lock (shared description) */
static char prog_dir[PATH_MAX]; /* its registry */
static pid_t watcher_pid;       /* in the process that started it */

static void atfork_child(void)
{
    /* a thread of the parent may have held it across fork */
    pthread_mutex_init(&tracker_mutex, NULL);
}

static void tracker_init(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
}

static int base_dir(char *out, size_t len)
{
    snprintf(out, len, SHM_DIR "/.cmp-tracker-%u", (unsigned)geteuid());
    if (mkdir(out, 0700) < 0 && errno != EEXIST)
        return -errno;
    /* another user may have made it first: only our own private one */
    struct stat st;
    if (lstat(out, &st) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
        return -EPERM;
    return 0;
}

/* Where a resource of kind lives in /dev/shm (sem_open's "sem." files). */
static int resource_path(int kind, const char *name, char *out, size_t len)
{
    while (*name == '/')
        name++;
    if (!*name || strchr(name, '/'))
        return -EINVAL;
    const char *prefix = kind == CMP_TRACK_SEM ? "sem." : "";
    int n = snprintf(out, len, SHM_DIR "/%s%s", prefix, name);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* ------------------------------------------------------------------------
 * Who uses a file
 * ------------------------------------------------------------------------ */

/* Marks used[k] for each files[k] that matches (dev, ino); returns how
 * many were newly marked. */
static size_t mark(const struct cmp__file_id *files, int *used, size_t n, dev_t dev, ino_t ino)
{
    size_t marked = 0;
    for (size_t k = 0; k < n; k++)
        if (!used[k] && files[k].ino == ino && files[k].dev == dev) {
            used[k] = 1;
            marked++;
        }
    return marked;
}

static size_t maps_hold(int procfd, const char *pid, const struct cmp__file_id *files, int *used,
                        size_t n)
{
    char path[300];
    snprintf(path, sizeof path, "%s/maps", pid);
    int fd = openat(procfd, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0; /* gone, or not ours to read: it cannot map our 0600 file */
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return 0;
    }
    char line[512];
    size_t marked = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned maj, min;
        unsigned long long inode;
        if (sscanf(line, "%*s %*s %*s %x:%x %llu", &maj, &min, &inode) == 3 && inode)
            marked += mark(files, used, n, makedev(maj, min), (ino_t)inode);
        /* a line longer than the buffer: skip its tail */
        while (!strchr(line, '\n') && fgets(line, sizeof line, f))
            ;
    }
    fclose(f);
    return marked;
}

static size_t fds_hold(int procfd, const char *pid, const struct cmp__file_id *files, int *used,
                       size_t n)
{
    char path[300];
    snprintf(path, sizeof path, "%s/fd", pid);
    int fd = openat(procfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return 0;
    }
    size_t marked = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        struct stat st;
        if (e->d_name[0] != '.' && fstatat(fd, e->d_name, &st, 0) == 0)
            marked += mark(files, used, n, st.st_dev, st.st_ino);
    }
    closedir(d);
    return marked;
}

void cmp__files_in_use(const struct cmp__file_id *files, int *used, size_t n)
{
    memset(used, 0, n * sizeof *used);
    DIR *d = opendir("/proc");
    if (!d) {
        for (size_t k = 0; k < n; k++)
            used[k] = 1; /* cannot tell: never remove what may be in use */
        return;
    }
    int procfd = dirfd(d);
    size_t left = n;
    struct dirent *e;
    /* one pass over the processes for all of them */
    while (left && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        left -= maps_hold(procfd, e->d_name, files, used, n);
        if (left)
            left -= fds_hold(procfd, e->d_name, files, used, n);
    }
    closedir(d);
}

/* ------------------------------------------------------------------------
 * Sweeping one dead program's registry
 * ------------------------------------------------------------------------ */

/* A listed resource that still exists under its registered inode. */
struct candidate {
    char entry[NAME_MAX + 1];
    char path[PATH_MAX];
    int kind;
    int gone; /* unlinked by someone who did not unregister it */
};

/* Reads the registry at dfd: the entries whose resource still exists as
 * registered, or is gone, go to *cands and *ids (malloc'ed, *n of them);
 * one whose name some other resource has now is dropped at once. Returns 0, or -ENOMEM (then the
 * registry stays as it was past the entries already read). */
static int read_registry(int dfd, struct candidate **cands, struct cmp__file_id **ids, size_t *n)
{
    int own = fcntl(dfd, F_DUPFD_CLOEXEC, 0); /* closedir() closes it */
    DIR *d = own < 0 ? NULL : fdopendir(own);
    if (!d) {
        if (own >= 0)
            close(own);
        return -ENOMEM;
    }
    size_t ccap = 0, icap = 0;
    *cands = NULL;
    *ids = NULL;
    *n = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *entry = e->d_name;
        int kind = entry[0];
        if (kind != CMP_TRACK_SHM && kind != CMP_TRACK_SEM)
            continue; /* ".", "..", "lock" */
        struct candidate c = {.kind = kind};
        snprintf(c.entry, sizeof c.entry, "%s", entry);
        struct stat st;
        unsigned long long ino = 0;
        int fd = openat(dfd, entry, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            char buf[32];
            ssize_t r = read(fd, buf, sizeof buf - 1);
            buf[r > 0 ? r : 0] = '\0';
            close(fd);
            ino = strtoull(buf, NULL, 10);
        }
        memset(&st, 0, sizeof st); /* a gone one: inode 0 matches nothing */
        if (resource_path(kind, entry + 1, c.path, sizeof c.path) < 0) {
            unlinkat(dfd, entry, 0);
            continue;
        }
        if (stat(c.path, &st) < 0) {
            memset(&st, 0, sizeof st);
            c.gone = 1;
        } else if (ino != 0 && ino != (unsigned long long)st.st_ino) {
            /* a resource of the same name made since: someone else's */
            unlinkat(dfd, entry, 0);
            continue;
        }
        size_t need = *n + 1;
        struct candidate *gc = cmp__grow(*cands, &ccap, need * sizeof **cands);
        if (gc)
            *cands = gc;
        struct cmp__file_id *gi = gc ? cmp__grow(*ids, &icap, need * sizeof **ids) : NULL;
        if (!gi) {
            rc = -ENOMEM;
            break;
        }
        *ids = gi;
        (*cands)[*n] = c;
        (*ids)[*n] = (struct cmp__file_id){st.st_dev, st.st_ino};
        (*n)++;
    }
    closedir(d);
    return rc;
}

static const char *const kind_names[2] = {"shared_memory", "semaphore"};

/* The watcher's report, in the standard library's words: how many leaked.
 * One that is gone (someone unlinked it, and it was an attached one we
 * listed, or its unregistering was skipped) leaked nothing; one in use is
 * no leak: its user still has it. */
static void report(const struct candidate *cands, const int *used, size_t n)
{
    int leaked[2] = {0, 0};
    for (size_t k = 0; k < n; k++)
        if (!used[k] && !cands[k].gone)
            leaked[cands[k].kind == CMP_TRACK_SEM]++;
    for (int t = 0; t < 2; t++)
        if (leaked[t])
            fprintf(stderr,
                    "cmultiprocessing.resource_tracker: UserWarning: resource_tracker: There "
                    "appear to be %d leaked %s objects to clean up at shutdown\n",
                    leaked[t], kind_names[t]);
}

/* Sweeps the registry at dir (its lock held by the caller), reporting
 * what leaked when verbose; adds how many it removed to *removed. Returns
 * how many entries it kept (resources still in use). */
static int sweep_registry(const char *dir, int verbose, int *removed)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return 0; /* removed meanwhile by another sweeper */
    struct candidate *cands;
    struct cmp__file_id *ids;
    size_t n;
    int rc = read_registry(dfd, &cands, &ids, &n);
    int *used = n ? malloc(n * sizeof *used) : NULL;
    int kept = 0;
    if (rc < 0 || (n && !used)) {
        kept = 1; /* out of memory: a later sweep does it */
    } else {
        if (n)
            cmp__files_in_use(ids, used, n);
        if (verbose)
            report(cands, used, n);
        for (size_t k = 0; k < n; k++) {
            if (used[k]) {
                kept++;
                continue;
            }
            /* both kinds are plain files in /dev/shm: shm_unlink and
             * sem_unlink would only add what path has already */
            if (!cands[k].gone && unlink(cands[k].path) == 0)
                (*removed)++;
            unlinkat(dfd, cands[k].entry, 0);
        }
    }
    free(used);
    free(cands);
    free(ids);
    if (!kept) {
        unlinkat(dfd, "lock", 0);
        rmdir(dir);
    }
    close(dfd);
    return kept;
}

/* Sweeps dir if its program is dead (its lock free). */
static void sweep_if_dead(const char *dir, int *removed, int min_age)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/lock", dir) >= (int)sizeof path)
        return;
    if (min_age) {
        struct stat st;
        if (stat(dir, &st) < 0 || time(NULL) - st.st_mtime < min_age)
            return;
    }
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT && min_age)
            rmdir(dir); /* set up no further than mkdir */
        return;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) == 0)
        sweep_registry(dir, 0, removed);
    close(fd);
}

int cmp_tracker_sweep(void)
{
    char base[128];
    int rc = base_dir(base, sizeof base);
    if (rc < 0)
        return rc;
    DIR *d = opendir(base);
    if (!d)
        return -errno;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int fresh = e->d_name[0] == '.' && strncmp(e->d_name, ".new-", 5) == 0;
        if (e->d_name[0] != 'p' && !fresh)
            continue;
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s/%s", base, e->d_name);
        if (strcmp(dir, prog_dir) != 0)
            sweep_if_dead(dir, &removed, fresh ? NEW_MAX_AGE_S : 0);
    }
    closedir(d);
    return removed;
}

/* ------------------------------------------------------------------------
 * The program's registry and its watcher
 * ------------------------------------------------------------------------ */

/* Unmaps every shared mapping the fork handed the watcher: it needs none,
 * and one would keep a segment's memory (a memfd block, a segment the
 * program unlinks long before it ends) allocated and make it look in use. */
static void unmap_shared(void)
{
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    size_t cap = 0, len = 0;
    char *buf = NULL;
    for (;;) {
        char *grown = cmp__grow(buf, &cap, len + 4096);
        if (!grown)
            break;
        buf = grown;
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    if (!buf)
        return;
    buf[len] = '\0';
    /* the whole list first: unmapping changes what a further read shows */
    for (char *line = buf; line && *line;) {
        char *next = strchr(line, '\n');
        unsigned long start, end;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) == 3 && perms[3] == 's')
            munmap((void *)start, end - start);
        line = next ? next + 1 : NULL;
    }
    free(buf);
}

/* The watcher: waits for the program's end and sweeps its registry, then
 * says what it removed as the standard library's tracker does. Runs in a
 * forked copy of the process: no Python here, only libc. */
static void watch(const char *dir)
{
    /* the fork gave it a reference to each heap block, and it ends with
     * _exit: drop them, or they would never be freed */
    cmp_shared_release_all();
    unmap_shared();
    signal(SIGINT, SIG_IGN);  /* Ctrl-C and `kill` of the program are */
    signal(SIGTERM, SIG_IGN); /* what it is there to outlive */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, NULL);
    /* hold nothing of the program: a pipe's reader waiting for EOF, or the
     * lock itself, would wait for the watcher */
    if (close_range(3, ~0u, 0) < 0)
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        if (null > 2)
            close(null);
    }
    prctl(PR_SET_NAME, "cmp-tracker");
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/lock", dir) >= (int)sizeof path)
        _exit(1);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        _exit(1);
    while (flock(fd, LOCK_EX) < 0)
        if (errno != EINTR)
            _exit(1);
    int removed = 0;
    sweep_registry(dir, 1, &removed);
    _exit(0);
}

/* Starts the watcher as a child, as the standard library starts its
 * tracker (programs and CPython's tests wait for it by pid); it stays in
 * the program's process group, so that killing the group kills it too
 * (the sweep covers that). SIGINT and SIGTERM are blocked across the fork
 * so that one sent the moment this returns finds them ignored already. */
static int start_watcher(const char *dir)
{
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    pid_t w = fork();
    if (w == 0)
        watch(dir);
    int err = w < 0 ? -errno : 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err < 0)
        return err;
    if (watcher_pid > 0) /* the one it replaces, if it was ours */
        waitpid(watcher_pid, NULL, WNOHANG);
    watcher_pid = w;
    return 0;
}

static int create_registry(void)
{
    char base[128], tmp[256], dir[256], lock[300];
    int rc = base_dir(base, sizeof base);
    if (rc < 0)
        return rc;
    unsigned char r[4];
    if ((rc = cmp__random_bytes(r, sizeof r)) < 0)
        return rc;
    unsigned tag = (unsigned)r[0] << 24 | (unsigned)r[1] << 16 | (unsigned)r[2] << 8 | r[3];
    snprintf(tmp, sizeof tmp, "%s/.new-%d-%08x", base, (int)getpid(), tag);
    snprintf(dir, sizeof dir, "%s/p%d-%08x", base, (int)getpid(), tag);
    if (mkdir(tmp, 0700) < 0)
        return -errno;
    snprintf(lock, sizeof lock, "%s/lock", tmp);
    int fd = open(lock, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        rmdir(tmp);
        return rc;
    }
    /* locked before it gets the name sweepers look at */
    if (flock(fd, LOCK_EX) < 0 || rename(tmp, dir) < 0) {
        rc = -errno;
        close(fd);
        unlink(lock);
        rmdir(tmp);
        return rc;
    }
    prog_fd = fd;
    snprintf(prog_dir, sizeof prog_dir, "%s", dir);
    return 0;
}

/* check: also replace a watcher that died (it costs a read of /proc, so
 * registrations skip it). */
static int start(int check)
{
    pthread_once(&tracker_once, tracker_init);
    pthread_mutex_lock(&tracker_mutex);
    int rc = 0;
    if (prog_fd < 0) {
        rc = create_registry();
        if (rc == 0) {
            cmp_tracker_sweep(); /* what killed programs left */
            rc = start_watcher(prog_dir);
            /* without a watcher the next program's sweep still removes
             * what this one leaves: keep the registry */
        }
    } else if (check && watcher_pid > 0 && !cmp_pid_alive(watcher_pid)) {
        rc = start_watcher(prog_dir);
        rc = rc == 0 ? 1 : rc;
    }
    pthread_mutex_unlock(&tracker_mutex);
    return rc;
}

int cmp_tracker_start(void)
{
    return start(1);
}

int cmp_tracker_fd(void)
{
    return prog_fd;
}

pid_t cmp_tracker_watcher_pid(void)
{
    return watcher_pid;
}

int cmp_tracker_adopt(int fd)
{
    char link[64], path[PATH_MAX], base[128];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0)
        return -errno;
    path[n] = '\0';
    int rc = base_dir(base, sizeof base);
    if (rc < 0)
        return rc;
    size_t blen = strlen(base);
    char *slash = strrchr(path, '/');
    if (strncmp(path, base, blen) != 0 || path[blen] != '/' || !slash || strcmp(slash, "/lock"))
        return -EINVAL;
    *slash = '\0';
    int flags = fcntl(fd, F_GETFD);
    if (flags >= 0)
        fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    pthread_once(&tracker_once, tracker_init);
    pthread_mutex_lock(&tracker_mutex);
    if (prog_fd >= 0 && prog_fd != fd)
        close(prog_fd);
    prog_fd = fd;
    snprintf(prog_dir, sizeof prog_dir, "%s", path);
    pthread_mutex_unlock(&tracker_mutex);
    return 0;
}

static int entry_path(int kind, const char *name, char *out, size_t len)
{
    if (kind != CMP_TRACK_SHM && kind != CMP_TRACK_SEM)
        return -EINVAL;
    while (*name == '/')
        name++;
    if (!*name || strchr(name, '/'))
        return -EINVAL;
    int n = snprintf(out, len, "%s/%c%s", prog_dir, kind, name);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int cmp_tracker_register(int kind, const char *name)
{
    char res[PATH_MAX], entry[PATH_MAX];
    int rc = resource_path(kind, name, res, sizeof res);
    if (rc < 0 || (rc = start(0)) < 0)
        return rc;
    if ((rc = entry_path(kind, name, entry, sizeof entry)) < 0)
        return rc;
    /* a name listed before its resource exists (a caller of the stdlib's
     * API may do that) matches whatever later has it: inode 0 */
    struct stat st = {0};
    if (stat(res, &st) < 0 && errno != ENOENT)
        return -errno;
    int fd = open(entry, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%llu\n", (unsigned long long)st.st_ino);
    rc = write(fd, buf, (size_t)n) == n ? 0 : -EIO;
    close(fd);
    return rc;
}

int cmp_tracker_unregister(int kind, const char *name)
{
    char entry[PATH_MAX];
    if (prog_fd < 0)
        return -ENOENT;
    int rc = entry_path(kind, name, entry, sizeof entry);
    if (rc < 0)
        return rc;
    return unlink(entry) < 0 ? -errno : 0;
}
