/*
 * Fork server: a process that forks children on request, so that starting
 * one costs a fork of a small, ready process instead of a new program.
 *
 * The server listens on an abstract-namespace AF_UNIX socket (no file to
 * clean up; peers must be of our uid, checked with SO_PEERCRED on both
 * sides). A request is one connection: a header, the fd numbers the child
 * must see its fds at, and an opaque payload, with the fds themselves
 * attached by SCM_RIGHTS. The server forks; the child finds its fds at the
 * numbers the requester had them at (a ring's spill file is named by its
 * number in shared memory, so numbers matter), runs the payload and exits.
 * The server answers with the child's pid and a pidfd of it (SCM_RIGHTS),
 * reaps the child when it exits, and writes its raw wait status on the
 * same connection: the requester adopts the child (cmp_process_adopt) and
 * the connection is its sentinel.
 *
 * The server runs until alive_fd (the read end of a pipe its starter keeps
 * open) reaches end of file.
 */
#include "conn_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define REQ_MAGIC 0x636d7066u /* "cmpf" */
/* The server gives a requester this long to send its whole request. */
#define REQ_IO_TIMEOUT_S 5

struct req_hdr {
    uint32_t magic;
    uint32_t nfds;
    uint64_t len;
};

static int fill_addr(const char *name, struct sockaddr_un *sa, socklen_t *len)
{
    return cmp__abstract_addr(name, CMP_FORKSERVER_ADDR_MAX, sa, len);
}

int cmp_forkserver_listen(char addr[CMP_FORKSERVER_ADDR_MAX], int *listen_fd)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = 0;
    for (int attempt = 0;; attempt++) {
        uint64_t nonce;
        if ((rc = cmp__random_bytes(&nonce, sizeof nonce)) < 0)
            break;
        char name[CMP_FORKSERVER_ADDR_MAX] = {0};
        snprintf(name, sizeof name, "cmp-fs-%d-%016llx", (int)getpid(), (unsigned long long)nonce);
        struct sockaddr_un sa;
        socklen_t salen = 0;
        fill_addr(name, &sa, &salen);
        if (bind(fd, (struct sockaddr *)&sa, salen) == 0) {
            memcpy(addr, name, sizeof name);
            break;
        }
        rc = -errno;
        if (rc != -EADDRINUSE || attempt == 3)
            break;
    }
    if (rc == 0 && listen(fd, 128) < 0)
        rc = -errno;
    if (rc < 0) {
        close(fd);
        return rc;
    }
    *listen_fd = fd;
    return 0;
}

/* Reads exactly n bytes; the fds that come along go to fds[*got_fds...]
 * (at most max). 0, or a negative errno (-ECONNRESET at an early EOF). */
static int read_full(int sock, void *buf, size_t n, int *fds, int max, int *got_fds)
{
    size_t got = 0;
    while (got < n) {
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int) * 253)];
        } ctl;
        struct iovec iov = {(char *)buf + got, n - got};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        if (fds) {
            msg.msg_control = ctl.buf;
            msg.msg_controllen = sizeof ctl.buf;
        }
        ssize_t r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (fds) {
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                    continue;
                size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < k; i++) {
                    int f;
                    memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
                    if (*got_fds < max)
                        fds[(*got_fds)++] = f;
                    else
                        close(f);
                }
            }
        }
        if (r == 0)
            return -ECONNRESET;
        got += (size_t)r;
    }
    return 0;
}

static int write_full(int sock, const void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = send(sock, (const char *)buf + done, n - done, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        done += (size_t)w;
    }
    return 0;
}

/* ---- the requester ------------------------------------------------------ */

int cmp_forkserver_request(const char *addr, const void *payload, size_t len, const int *fds,
                           int nfds, cmp_process_t *proc)
{
    if (nfds < 0 || nfds > CMP_FORKSERVER_MAX_FDS)
        return -E2BIG;
    struct sockaddr_un sa;
    socklen_t salen = 0;
    int rc = fill_addr(addr, &sa, &salen);
    if (rc < 0)
        return rc;
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return -errno;
    while (connect(sock, (struct sockaddr *)&sa, salen) < 0) {
        if (errno == EINTR)
            continue;
        rc = -errno;
        goto fail;
    }
    if ((rc = cmp__peer_is_us(sock)) < 0)
        goto fail;
    struct req_hdr h = {REQ_MAGIC, (uint32_t)nfds, len};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * CMP_FORKSERVER_MAX_FDS)];
    } ctl;
    struct iovec iov[2] = {{&h, sizeof h}, {(void *)fds, sizeof(int) * (size_t)nfds}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = nfds ? 2 : 1};
    if (nfds) {
        memset(&ctl, 0, sizeof ctl);
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t n;
    while ((n = sendmsg(sock, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    if (n < 0) {
        rc = -errno;
        goto fail;
    }
    /* the header and the numbers are small: a fresh socket takes them */
    if ((size_t)n != sizeof h + sizeof(int) * (size_t)nfds) {
        rc = -EPROTO;
        goto fail;
    }
    if ((rc = write_full(sock, payload, len)) < 0)
        goto fail;
    int32_t pid = 0;
    int pidfd[1], got = 0;
    if ((rc = read_full(sock, &pid, sizeof pid, pidfd, 1, &got)) < 0)
        goto fail;
    if (pid <= 0 || got != 1) {
        if (got)
            close(pidfd[0]);
        rc = pid < 0 ? (int)pid : -EPROTO;
        goto fail;
    }
    cmp_process_adopt(proc, (pid_t)pid, pidfd[0], sock);
    return 0;
fail:
    close(sock);
    return rc;
}

/* ---- the server --------------------------------------------------------- */

struct child {
    int pidfd, conn;
};

/* In the new child: the server's fds go, and the request's fds move to the
 * numbers the requester had them at (via numbers above all of both sets,
 * so that no move overwrites an fd still to be moved). */
static void child_fds(int listen_fd, int alive_fd, int sock, struct child *kids, int nkids,
                      int *fds, const int *targets, int nfds)
{
    /* first: a target may well be the number one of these has here */
    close(listen_fd);
    close(alive_fd);
    close(sock);
    for (int i = 0; i < nkids; i++) {
        close(kids[i].pidfd);
        close(kids[i].conn);
    }
    int base = 3;
    for (int i = 0; i < nfds; i++) {
        if (fds[i] >= base)
            base = fds[i] + 1;
        if (targets[i] >= base)
            base = targets[i] + 1;
    }
    for (int i = 0; i < nfds; i++) {
        int hi = fcntl(fds[i], F_DUPFD_CLOEXEC, base);
        close(fds[i]);
        fds[i] = hi;
    }
    for (int i = 0; i < nfds; i++) {
        if (fds[i] >= 0 && targets[i] >= 0)
            dup3(fds[i], targets[i], O_CLOEXEC);
        if (fds[i] >= 0)
            close(fds[i]);
    }
}

/* Takes one request from sock and forks its child. 0, or a negative errno
 * (the request is then dropped). */
static int serve_request(int sock, int listen_fd, int alive_fd, struct child **kids, int *nkids,
                         int *cap, const cmp_forkserver_ops *ops)
{
    struct timeval tv = {REQ_IO_TIMEOUT_S, 0};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc = cmp__peer_is_us(sock);
    if (rc < 0)
        return rc;
    struct req_hdr h;
    int fds[CMP_FORKSERVER_MAX_FDS], targets[CMP_FORKSERVER_MAX_FDS], nfds = 0;
    char *payload = NULL;
    if ((rc = read_full(sock, &h, sizeof h, fds, CMP_FORKSERVER_MAX_FDS, &nfds)) < 0)
        goto out;
    if (h.magic != REQ_MAGIC || h.nfds > CMP_FORKSERVER_MAX_FDS || h.len > ((uint64_t)1 << 34)) {
        rc = -EPROTO;
        goto out;
    }
    if ((rc = read_full(sock, targets, sizeof(int) * h.nfds, fds, CMP_FORKSERVER_MAX_FDS, &nfds)) <
        0)
        goto out;
    if ((uint32_t)nfds != h.nfds) {
        rc = -EPROTO;
        goto out;
    }
    /* a length is a claim: grow as the bytes arrive */
    size_t cap_bytes = 0, have = 0;
    while (have < h.len) {
        size_t chunk = h.len - have < 65536 ? (size_t)(h.len - have) : 65536;
        char *p = cmp__grow(payload, &cap_bytes, have + chunk);
        if (!p) {
            rc = -ENOMEM;
            goto out;
        }
        payload = p;
        if ((rc = read_full(sock, payload + have, chunk, NULL, 0, NULL)) < 0)
            goto out;
        have += chunk;
    }
    if (*nkids == *cap) {
        int ncap = *cap ? 2 * *cap : 16;
        struct child *k = realloc(*kids, sizeof *k * (size_t)ncap);
        if (!k) {
            rc = -ENOMEM;
            goto out;
        }
        *kids = k;
        *cap = ncap;
    }
    if (ops->before_fork)
        ops->before_fork(ops->arg);
    pid_t pid = fork();
    if (pid == 0) {
        child_fds(listen_fd, alive_fd, sock, *kids, *nkids, fds, targets, nfds);
        int code = ops->child(ops->arg, payload, (size_t)h.len);
        fflush(NULL);
        _exit(code & 0xff);
    }
    int err = pid < 0 ? -errno : 0;
    if (ops->after_fork_parent)
        ops->after_fork_parent(ops->arg);
    int32_t answer = pid < 0 ? err : (int32_t)pid;
    int pidfd = pid > 0 ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
    struct iovec iov = {&answer, sizeof answer};
    if (pid > 0 && pidfd < 0)
        answer = -errno; /* cannot happen for our own unreaped child */
    cmp__send_fd(sock, &iov, 1, pidfd);
    if (pidfd >= 0) {
        (*kids)[(*nkids)++] = (struct child){pidfd, sock};
        sock = -1; /* kept: the status goes there */
    }
    rc = err;
out:
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    free(payload);
    if (sock >= 0)
        close(sock);
    return rc;
}

int cmp_forkserver_serve(int listen_fd, int alive_fd, const cmp_forkserver_ops *ops)
{
    struct child *kids = NULL;
    int nkids = 0, cap = 0, rc = 0;
    struct pollfd *pfds = NULL;
    int pcap = 0;
    for (;;) {
        if (nkids + 2 > pcap) {
            int ncap = nkids + 18;
            struct pollfd *p = realloc(pfds, sizeof *p * (size_t)ncap);
            if (!p) {
                rc = -ENOMEM;
                break;
            }
            pfds = p;
            pcap = ncap;
        }
        pfds[0] = (struct pollfd){listen_fd, POLLIN, 0};
        pfds[1] = (struct pollfd){alive_fd, POLLIN, 0};
        for (int i = 0; i < nkids; i++)
            pfds[2 + i] = (struct pollfd){kids[i].pidfd, POLLIN, 0};
        if (poll(pfds, (nfds_t)(nkids + 2), -1) < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        if (pfds[1].revents)
            break; /* the starter is gone: so are we (children run on) */
        /* children first: their slots move as they go */
        for (int i = nkids - 1; i >= 0; i--) {
            if (!pfds[2 + i].revents)
                continue;
            siginfo_t info;
            info.si_pid = 0;
            if (waitid((idtype_t)P_PIDFD, (id_t)kids[i].pidfd, &info, WEXITED | WNOHANG) < 0 ||
                info.si_pid == 0)
                continue;
            int32_t st = info.si_code == CLD_EXITED   ? (info.si_status & 0xff) << 8
                         : info.si_code == CLD_DUMPED ? (info.si_status & 0x7f) | 0x80
                                                      : info.si_status & 0x7f;
            write_full(kids[i].conn, &st, sizeof st);
            close(kids[i].conn);
            close(kids[i].pidfd);
            kids[i] = kids[--nkids];
        }
        if (pfds[0].revents) {
            int sock = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (sock >= 0)
                serve_request(sock, listen_fd, alive_fd, &kids, &nkids, &cap, ops);
        }
    }
    for (int i = 0; i < nkids; i++) {
        close(kids[i].conn);
        close(kids[i].pidfd);
    }
    free(kids);
    free(pfds);
    return rc;
}
