/*
 * The private temporary directory of a process tree: where default
 * AF_UNIX addresses are bound, so that other users cannot reach them
 * whatever the umask (a socket's own mode follows the umask and cannot be
 * set before bind; changing the umask around bind would race with every
 * other thread). Created 0700 on first use, inherited by children forked
 * afterwards, removed at exit by the process that created it.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char dir_path[PATH_MAX]; /* "" until created */
static pid_t creator;           /* the process that removes it */

/* A fork while another thread creates the directory must not leave the
 * child a lock that nobody will release. */
static void lock_dir(void)
{
    pthread_mutex_lock(&lock);
}

static void unlock_dir(void)
{
    pthread_mutex_unlock(&lock);
}

static void remove_at_exit(void)
{
    cmp_tempdir_remove();
}

static void init_once(void)
{
    pthread_atfork(lock_dir, unlock_dir, unlock_dir);
    atexit(remove_at_exit);
}

/* 0 if fd is a directory of ours with mode 0700 exactly, fixing a mode the
 * umask narrowed (mkdtemp asks for 0700 & ~umask); -EPERM otherwise. */
static int check_private(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid())
        return -EPERM;
    if ((st.st_mode & 07777) != 0700) {
        if (fchmod(fd, 0700) < 0 || fstat(fd, &st) < 0)
            return -errno;
        if ((st.st_mode & 07777) != 0700)
            return -EPERM;
    }
    return 0;
}

/* mkdtemp in base; 0 with the name in dir_path, or a negative errno. */
static int make_in(const char *base)
{
    int n = snprintf(dir_path, sizeof dir_path, "%s/cmp-XXXXXX", base);
    if (n < 0 || (size_t)n >= sizeof dir_path)
        return -ENAMETOOLONG;
    if (!mkdtemp(dir_path))
        return -errno;
    int fd = open(dir_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int r = fd < 0 ? -errno : check_private(fd);
    if (fd >= 0)
        close(fd);
    if (r < 0)
        rmdir(dir_path);
    return r;
}

/* As Python's tempfile.gettempdir: the environment first, then the usual
 * places; the first where a private directory can be made wins. */
static int create(void)
{
    const char *env[] = {"TMPDIR", "TEMP", "TMP"};
    const char *fixed[] = {"/tmp", "/var/tmp", "/usr/tmp"};
    int r = -ENOENT;
    for (size_t i = 0; i < sizeof env / sizeof *env; i++) {
        const char *base = getenv(env[i]);
        if (base && *base && (r = make_in(base)) == 0)
            return 0;
    }
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        if ((r = make_in(fixed[i])) == 0)
            return 0;
    dir_path[0] = '\0';
    return r;
}

int cmp_tempdir(char *out, size_t size)
{
    pthread_once(&once, init_once);
    int r = 0;
    pthread_mutex_lock(&lock);
    if (!dir_path[0]) {
        r = create();
        if (r == 0)
            creator = getpid();
    }
    size_t len = strlen(dir_path);
    if (r == 0 && len >= size)
        r = -ERANGE;
    if (r == 0) {
        memcpy(out, dir_path, len + 1);
        r = (int)len;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

/* Removes what dirfd holds (sockets left by listeners that were never
 * closed, directories of later users), then closes dirfd. Symlinks are
 * removed, never followed. */
static void empty_dir(int dirfd)
{
    DIR *d = fdopendir(dirfd);
    if (!d) {
        close(dirfd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (unlinkat(dirfd, e->d_name, 0) == 0 || errno != EISDIR)
            continue;
        int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub >= 0)
            empty_dir(sub);
        unlinkat(dirfd, e->d_name, AT_REMOVEDIR);
    }
    closedir(d);
}

void cmp_tempdir_remove(void)
{
    pthread_mutex_lock(&lock);
    /* getpid, not a cached pid: this also runs in children at exit(). */
    if (dir_path[0] && creator == getpid()) {
        int fd = open(dir_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0)
            empty_dir(fd);
        rmdir(dir_path);
        dir_path[0] = '\0';
        creator = 0;
    }
    pthread_mutex_unlock(&lock);
}
