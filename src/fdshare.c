/*
 * Fd sharer: hands a duplicate of a file descriptor to another process of
 * the same user that holds a token for it (what the standard library's
 * resource_sharer does for pickled Connections and sockets).
 *
 * cmp_fdshare_register() dups the fd and files the dup under a random
 * 64-bit key. The first registration starts a thread that serves an
 * abstract-namespace AF_UNIX socket (no file to clean up, gone with the
 * process). A redeemer connects, sends the key and gets one 4-byte status
 * back, with the fd attached by SCM_RIGHTS when the status is 0. A
 * registration is redeemed at most once: the sharer closes its dup as soon
 * as it has been sent.
 *
 * The thread never touches Python; it blocks every signal, so signals keep
 * going to the threads that expect them (a Python main thread blocked in a
 * wait must get its EINTR).
 *
 * Fork: the child has no server thread, and its copies of the pending dups
 * would keep pipes and sockets open behind the receivers' backs (no EOF
 * when the parent's end closes). The atfork child handler closes them and
 * forgets the parent's socket; the child starts its own server lazily.
 */
#include "conn_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* The server gives a connected redeemer this long to send its key and take
 * the reply: a stuck or hostile peer cannot hold the thread for longer. */
#define SERVE_IO_TIMEOUT_S 2

struct entry {
    struct entry *next;
    uint64_t key;
    int fd; /* our dup, O_CLOEXEC */
};

/* All of it under mu. listen_fd/wake_fd are only closed by the thread's
 * owner (shutdown, or the child handler where no thread exists). */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static struct entry *pending;
static int inflight_fd = -1; /* a dup being sent right now */
static int listen_fd = -1, wake_fd = -1;
static int running;
static pthread_t server;
static char server_addr[CMP_FDSHARE_ADDR_MAX];

static void close_pending(void)
{
    while (pending) {
        struct entry *e = pending;
        pending = e->next;
        close(e->fd);
        free(e);
    }
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&mu);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&mu);
}

static void atfork_child(void)
{
    /* Only the forking thread exists; it holds mu from prepare. */
    close_pending();
    if (inflight_fd >= 0)
        close(inflight_fd);
    inflight_fd = -1;
    if (listen_fd >= 0)
        close(listen_fd);
    if (wake_fd >= 0)
        close(wake_fd);
    listen_fd = wake_fd = -1;
    running = 0;
    server_addr[0] = '\0';
    pthread_mutex_init(&mu, NULL);
}

static void install_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

int cmp__abstract_addr(const char *name, size_t max, struct sockaddr_un *sa, socklen_t *len)
{
    size_t n = strnlen(name, max);
    if (n == 0 || n == max || n >= sizeof sa->sun_path)
        return -EINVAL;
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path + 1, name, n); /* sun_path[0] == 0: abstract */
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    return 0;
}

static int fill_addr(const char *name, struct sockaddr_un *sa, socklen_t *len)
{
    return cmp__abstract_addr(name, CMP_FDSHARE_ADDR_MAX, sa, len);
}

int cmp__peer_is_us(int sock)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return -errno;
    return cred.uid == geteuid() ? 0 : -EACCES;
}

long cmp__send_fd(int sock, struct iovec *iov, int iovcnt, int fd)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)iovcnt};
    if (fd >= 0) {
        memset(&ctl, 0, sizeof ctl);
        msg.msg_control = ctl.buf;
        msg.msg_controllen = sizeof ctl.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    ssize_t n;
    while ((n = sendmsg(sock, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    return n < 0 ? -errno : (long)n;
}

long cmp__recv_fd(int sock, struct iovec *iov, int flags, int *fd)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct msghdr msg = {
        .msg_iov = iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl};
    ssize_t n = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
    if (n < 0)
        return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < nfds; i++) {
            int f;
            memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
            if (*fd < 0)
                *fd = f;
            else
                close(f); /* never more than one from a peer of ours */
        }
    }
    return (msg.msg_flags & MSG_CTRUNC) ? -EPROTO : (long)n;
}

static void reply(int sock, int32_t status, int fd)
{
    struct iovec iov = {&status, sizeof status};
    cmp__send_fd(sock, &iov, 1, fd);
}

static void serve_one(int sock)
{
    struct timeval tv = {SERVE_IO_TIMEOUT_S, 0};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (cmp__peer_is_us(sock) < 0) {
        reply(sock, EACCES, -1);
        return;
    }
    uint64_t key;
    size_t got = 0;
    while (got < sizeof key) {
        ssize_t r = recv(sock, (char *)&key + got, sizeof key - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return; /* gone or too slow: its registration stays pending */
        got += (size_t)r;
    }
    pthread_mutex_lock(&mu);
    struct entry **pp = &pending, *e;
    while ((e = *pp) && e->key != key)
        pp = &e->next;
    if (e) {
        *pp = e->next;
        inflight_fd = e->fd;
    }
    pthread_mutex_unlock(&mu);
    if (!e) {
        reply(sock, ENOENT, -1);
        return;
    }
    /* Once, whatever happens to the reply: a token is single-use. */
    reply(sock, 0, e->fd);
    pthread_mutex_lock(&mu);
    close(e->fd);
    inflight_fd = -1;
    pthread_mutex_unlock(&mu);
    free(e);
}

/* The fds the thread serves, handed over in static storage, not on the
 * heap: a fork before the new thread had freed a malloc'ed copy would leak
 * it in the child, which has no thread to free it. Written under mu before
 * the thread starts (pthread_create orders it); the next start only comes
 * after shutdown has joined this thread. */
static struct server_fds {
    int listen_fd, wake_fd;
} serve_fds;

static void *serve(void *arg)
{
    const struct server_fds fds = *(const struct server_fds *)arg;
    for (;;) {
        struct pollfd p[2] = {{fds.listen_fd, POLLIN, 0}, {fds.wake_fd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0)
            continue; /* EINTR (signals are blocked, but be safe) */
        if (p[1].revents)
            return NULL;
        int sock = accept4(fds.listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (sock < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS) {
                /* out of resources: do not spin on a listen queue we
                 * cannot drain */
                struct timespec ts = {0, 10 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            continue;
        }
        serve_one(sock);
        close(sock);
    }
}

/* Binds, listens and starts the thread. mu held. */
static int start_server(void)
{
    int lfd = -1, wfd = -1, rc;
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        return -errno;
    struct sockaddr_un sa;
    socklen_t salen = 0;
    /* zeroed: tokens carry the whole array, and callers send them as
     * plain bytes (no uninitialised tail after the NUL) */
    char name[CMP_FDSHARE_ADDR_MAX] = {0};
    for (int attempt = 0;; attempt++) {
        uint64_t nonce;
        if ((rc = cmp__random_bytes(&nonce, sizeof nonce)) < 0)
            goto fail;
        snprintf(name, sizeof name, "cmp-fd-%d-%016llx", (int)getpid(), (unsigned long long)nonce);
        fill_addr(name, &sa, &salen);
        if (bind(lfd, (struct sockaddr *)&sa, salen) == 0)
            break;
        rc = -errno;
        if (rc != -EADDRINUSE || attempt == 3)
            goto fail;
    }
    if (listen(lfd, 64) < 0) {
        rc = -errno;
        goto fail;
    }
    wfd = eventfd(0, EFD_CLOEXEC);
    if (wfd < 0) {
        rc = -errno;
        goto fail;
    }
    serve_fds = (struct server_fds){lfd, wfd};
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread inherits it */
    rc = -pthread_create(&server, NULL, serve, &serve_fds);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc < 0)
        goto fail;
    listen_fd = lfd;
    wake_fd = wfd;
    memcpy(server_addr, name, sizeof name);
    running = 1;
    return 0;
fail:
    if (wfd >= 0)
        close(wfd);
    close(lfd);
    return rc;
}

int cmp_fdshare_register(int fd, cmp_fd_token_t *token)
{
    pthread_once(&atfork_once, install_atfork);
    struct entry *e = malloc(sizeof *e);
    if (!e)
        return -ENOMEM;
    int rc = cmp__random_bytes(&e->key, sizeof e->key);
    if (rc < 0) {
        free(e);
        return rc;
    }
    e->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (e->fd < 0) {
        rc = -errno;
        free(e);
        return rc;
    }
    pthread_mutex_lock(&mu);
    if (!running && (rc = start_server()) < 0) {
        pthread_mutex_unlock(&mu);
        close(e->fd);
        free(e);
        return rc;
    }
    e->next = pending;
    pending = e;
    memcpy(token->addr, server_addr, sizeof token->addr);
    token->key = e->key;
    pthread_mutex_unlock(&mu);
    return 0;
}

int cmp_fdshare_cancel(const cmp_fd_token_t *token)
{
    pthread_mutex_lock(&mu);
    struct entry **pp = &pending, *e;
    if (strncmp(token->addr, server_addr, sizeof server_addr) != 0)
        e = NULL; /* another process's, or a previous server's */
    else
        while ((e = *pp) && e->key != token->key)
            pp = &e->next;
    if (e)
        *pp = e->next;
    pthread_mutex_unlock(&mu);
    if (!e)
        return -ENOENT;
    close(e->fd);
    free(e);
    return 0;
}

void cmp_fdshare_shutdown(void)
{
    pthread_mutex_lock(&mu);
    int was_running = running;
    pthread_t t = server;
    if (was_running) {
        uint64_t one = 1;
        while (write(wake_fd, &one, sizeof one) < 0 && errno == EINTR)
            ;
    }
    pthread_mutex_unlock(&mu);
    if (was_running)
        pthread_join(t, NULL); /* it takes mu to finish a reply */
    pthread_mutex_lock(&mu);
    close_pending();
    if (was_running) {
        close(listen_fd);
        close(wake_fd);
        listen_fd = wake_fd = -1;
        running = 0;
        server_addr[0] = '\0';
    }
    pthread_mutex_unlock(&mu);
}

int cmp_fdshare_redeem(const cmp_fd_token_t *token, const struct timespec *deadline)
{
    struct sockaddr_un sa;
    socklen_t salen = 0;
    int rc = fill_addr(token->addr, &sa, &salen);
    if (rc < 0)
        return rc;
    /* Non-blocking: connecting to a name nobody listens on fails at once
     * (the sharer's process exited), and a full backlog is retried below
     * until the deadline instead of blocking without one. */
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (sock < 0)
        return -errno;
    while (connect(sock, (struct sockaddr *)&sa, salen) < 0) {
        rc = -errno;
        if (rc == -EINTR)
            continue;
        if (rc != -EAGAIN)
            goto out;
        if (cmp__deadline_passed(deadline)) {
            rc = -ETIMEDOUT;
            goto out;
        }
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    /* Whoever listens there must be us too: the fd is not handed to, nor
     * the key to, another user's socket that took the name. */
    if ((rc = cmp__peer_is_us(sock)) < 0)
        goto out;
    uint64_t key = token->key;
    if (send(sock, &key, sizeof key, MSG_NOSIGNAL) != (ssize_t)sizeof key) {
        rc = -errno; /* a fresh socket has room for 8 bytes */
        goto out;
    }
    /* The key is spent from here on: finish (signals do not interrupt; the
     * deadline bounds a stopped sharer). */
    int32_t status = 0;
    size_t got = 0;
    int fd = -1;
    while (got < sizeof status) {
        rc = cmp__fd_wait(sock, POLLIN, deadline);
        if (rc == -EINTR)
            continue;
        if (rc < 0)
            goto out_fd;
        struct iovec iov = {(char *)&status + got, sizeof status - got};
        long n = cmp__recv_fd(sock, &iov, 0, &fd);
        if (n < 0) {
            rc = (int)n;
            if (rc == -EINTR || rc == -EAGAIN)
                continue;
            goto out_fd;
        }
        if (n == 0) {
            rc = -ECONNRESET; /* the sharer went away mid-way */
            goto out_fd;
        }
        got += (size_t)n;
    }
    if (status != 0) {
        rc = status > 0 ? -status : -EPROTO;
        goto out_fd;
    }
    if (fd < 0) {
        rc = -EPROTO;
        goto out_fd;
    }
    close(sock);
    return fd;
out_fd:
    if (fd >= 0)
        close(fd);
out:
    close(sock);
    return rc;
}
