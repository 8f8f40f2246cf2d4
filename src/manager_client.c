/*
 * Manager client: connects to a server, takes a mailbox when the server is
 * on this machine (AF_UNIX) or talks on the socket, and makes calls. A
 * call interrupted while waiting for its reply stays pending and can be
 * resumed; a fork gives the child a connection of its own on its first
 * call, since the parent's channel must never carry two processes' calls.
 */
#include "conn_internal.h"
#include "mailbox.h"
#include "manager_internal.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define KNOWN_FLAGS CMP_MANAGER_SOCKET

struct cmp_manager_client {
    pid_t pid; /* the process whose connection this is */
    unsigned flags;
    int mailbox; /* 1: calls go through end, else on conn */
    int connected;
    int pending; /* a call waits for its reply */
    int error;   /* sticky: the server is gone (-ECONNRESET, -ESHUTDOWN) */
    cmp_conn_t conn;
    int server_pidfd; /* mailbox: the server's process, -1: by pid */
    pid_t server_pid;
    cmp_shm_t shm;
    struct cmp__mbox_end end;
    cmp_conn_rx_t rx;         /* socket: progress of the pending reply */
    struct cmp__mbox_buf buf; /* the last reply */
    socklen_t addrlen;
    struct sockaddr_storage addr;
    unsigned char *key;
    size_t keylen;
};

/* The mailbox's check: is the server still there? */
static int server_alive(void *arg)
{
    cmp_manager_client_t *c = arg;
    if (c->server_pidfd >= 0) {
        struct pollfd p = {c->server_pidfd, POLLIN, 0};
        return poll(&p, 1, 0) > 0 ? -ECONNRESET : 0;
    }
    return cmp_pid_alive(c->server_pid) ? 0 : -ECONNRESET;
}

/* Reads exactly len bytes of the hello reply, keeping the fd that comes
 * with them. */
static int recv_exact(int fd, unsigned char *p, size_t len, int *memfd,
                      const struct timespec *deadline)
{
    size_t got = 0;
    while (got < len) {
        int rc = cmp__fd_wait(fd, POLLIN, deadline);
        if (rc == -EINTR)
            continue; /* the hello is spent: finish, bounded by the deadline */
        if (rc < 0)
            return rc;
        struct iovec iov = {p + got, len - got};
        long n = cmp__recv_fd(fd, &iov, MSG_DONTWAIT, memfd);
        if (n == -EINTR || n == -EAGAIN)
            continue;
        if (n < 0)
            return (int)n;
        if (n == 0)
            return -ECONNRESET;
        got += (size_t)n;
    }
    return 0;
}

/* Reads the framed hello reply and the memfd attached to it. The header
 * first: a peer that is not one of our servers (the stdlib's answers a
 * message it cannot unpickle with one of its own) is told apart by its
 * length without waiting for bytes that never come. */
static int recv_hello_reply(int fd, struct cmp__manager_hello_reply *r, int *memfd,
                            const struct timespec *deadline)
{
    unsigned char hdr[4];
    *memfd = -1;
    int rc = recv_exact(fd, hdr, sizeof hdr, memfd, deadline);
    if (rc < 0)
        return rc;
    if (memcmp(hdr, "\0\0\0", 3) != 0 || hdr[3] != sizeof *r)
        return -EPROTO;
    if ((rc = recv_exact(fd, (unsigned char *)r, sizeof *r, memfd, deadline)) < 0)
        return rc;
    if (memcmp(r->magic, CMP__MANAGER_HELLO_REPLY, sizeof r->magic) != 0)
        return -EPROTO;
    return 0;
}

static int take_mailbox(cmp_manager_client_t *c, const struct timespec *deadline)
{
    int rc =
        cmp_conn_send(&c->conn, CMP__MANAGER_HELLO, sizeof CMP__MANAGER_HELLO - 1, NULL, deadline);
    if (rc < 0)
        return rc;
    struct cmp__manager_hello_reply r;
    int memfd;
    if ((rc = recv_hello_reply(c->conn.fd, &r, &memfd, deadline)) < 0)
        goto fail;
    if (r.status != 0 || memfd < 0) {
        rc = r.status > 0 ? -r.status : -EPROTO;
        goto fail;
    }
    if (r.size < sizeof(struct cmp__mbox) || r.size > ((uint64_t)1 << 32)) {
        rc = -EPROTO;
        goto fail;
    }
    if ((rc = cmp_shm_attach(&c->shm, memfd, (size_t)r.size)) < 0)
        goto fail;
    memfd = -1;
    if ((rc = cmp__mbox_end_init(&c->end, c->shm.addr, c->shm.size, CMP__MBOX_CLIENT)) < 0) {
        cmp_shm_detach(&c->shm);
        return rc;
    }
    /* the serving process, which may not be the one that listened (the
     * socket's credentials name that one) */
    c->server_pid = (pid_t)r.pid;
    c->server_pidfd = (int)syscall(SYS_pidfd_open, c->server_pid, 0);
    c->end.check = server_alive;
    c->end.check_arg = c;
    c->mailbox = 1;
    return 0;
fail:
    if (memfd >= 0)
        close(memfd);
    return rc;
}

/* Lets go of this process's copies of the connection (a child's copies of
 * its parent's too: closing them does not touch the parent's). */
static void drop_transport(cmp_manager_client_t *c)
{
    if (c->mailbox) {
        /* ours: its server thread ends now (a child leaves its parent's) */
        if (c->pid == cmp_self_pid())
            cmp__mbox_close(c->end.m);
        cmp_shm_detach(&c->shm);
        if (c->server_pidfd >= 0)
            close(c->server_pidfd);
        c->server_pidfd = -1;
        c->mailbox = 0;
    }
    cmp_conn_close(&c->conn);
    c->connected = 0;
    c->pending = 0;
    memset(&c->rx, 0, sizeof c->rx);
}

static int open_transport(cmp_manager_client_t *c, const struct timespec *deadline)
{
    int rc = cmp_client_connect(&c->conn, (const struct sockaddr *)&c->addr, c->addrlen, deadline);
    if (rc < 0)
        return rc;
    if (c->key && ((rc = cmp_conn_answer_challenge(&c->conn, c->key, c->keylen, deadline)) < 0 ||
                   (rc = cmp_conn_deliver_challenge(&c->conn, c->key, c->keylen, deadline)) < 0))
        goto fail;
    if (c->addr.ss_family == AF_UNIX && !(c->flags & CMP_MANAGER_SOCKET) &&
        (rc = take_mailbox(c, deadline)) < 0)
        goto fail;
    c->pid = cmp_self_pid();
    c->connected = 1;
    return 0;
fail:
    cmp_conn_close(&c->conn);
    /* the server dropped the connection midway (another user's, a full
     * server): one error, whichever side noticed first */
    if (rc == CMP_CONN_EOF || rc == -EPIPE)
        rc = -ECONNRESET;
    return rc;
}

int cmp_manager_connect(cmp_manager_client_t **out, const struct sockaddr *addr, socklen_t addrlen,
                        const void *authkey, size_t authkey_len, unsigned flags,
                        const struct timespec *deadline)
{
    if ((flags & ~KNOWN_FLAGS) || addrlen > sizeof(struct sockaddr_storage))
        return -EINVAL;
    cmp_manager_client_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->flags = flags;
    c->conn.fd = -1;
    c->server_pidfd = -1;
    memcpy(&c->addr, addr, addrlen);
    c->addrlen = addrlen;
    if (authkey) {
        if (!(c->key = malloc(authkey_len ? authkey_len : 1))) {
            free(c);
            return -ENOMEM;
        }
        memcpy(c->key, authkey, authkey_len);
        c->keylen = authkey_len;
    }
    int rc = open_transport(c, deadline);
    if (rc < 0) {
        free(c->key);
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int cmp_manager_client_is_mailbox(const cmp_manager_client_t *c)
{
    return c->mailbox;
}

/* The server is gone for this client: every later call fails at once. */
static int gone(cmp_manager_client_t *c, int err)
{
    c->error = err;
    c->pending = 0;
    return err;
}

/* Waits for the reply of the pending call. */
static int wait_reply(cmp_manager_client_t *c, const void **reply, size_t *reply_len,
                      const struct timespec *deadline)
{
    int rc;
    size_t len = 0;
    if (c->mailbox) {
        rc = cmp__mbox_recv(&c->end, &c->buf, &len, 1, deadline);
        if (rc == -ECONNABORTED) { /* cut midway by the deadline */
            drop_transport(c);
            return -ETIMEDOUT;
        }
    } else {
        rc = cmp_conn_recv(&c->conn, &c->rx, UINT64_MAX, cmp__mbox_buf_room, &c->buf, deadline);
        len = (size_t)c->rx.len;
        if (rc == CMP_CONN_EOF || rc == -EPROTO || rc == -ECONNRESET || rc == -EPIPE)
            rc = -ECONNRESET;
    }
    if (rc == -EINTR || rc == -ETIMEDOUT)
        return rc; /* still pending */
    c->pending = 0;
    if (rc == -ECONNRESET || rc == -ESHUTDOWN)
        return gone(c, rc);
    if (rc < 0) {
        drop_transport(c); /* -ENOMEM or garbage: the reply is lost */
        return rc;
    }
    *reply = c->buf.data ? (const void *)c->buf.data : (const void *)&c->buf;
    *reply_len = len;
    return 0;
}

int cmp_manager_callv(cmp_manager_client_t *c, const struct iovec *iov, int iovcnt,
                      const void **reply, size_t *reply_len, const struct timespec *deadline)
{
    if (iovcnt < 0)
        return -EINVAL;
    if (c->connected && c->pid != cmp_self_pid())
        drop_transport(c); /* a forked child: its own connection below */
    if (c->error)
        return c->error;
    if (c->pending)
        drop_transport(c); /* abandoned: its reply must not be taken for ours */
    if (!c->connected) {
        int rc = open_transport(c, deadline);
        if (rc < 0)
            return rc == -ECONNREFUSED || rc == -ENOENT ? gone(c, -ECONNRESET) : rc;
    }
    int rc;
    if (c->mailbox) {
        rc = cmp__mbox_sendv(&c->end, iov, iovcnt, deadline);
    } else {
        /* One framed message: gather the pieces when there are several. */
        const void *data = iovcnt ? iov[0].iov_base : NULL;
        size_t len = iovcnt ? iov[0].iov_len : 0;
        unsigned char *joined = NULL;
        if (iovcnt > 1) {
            len = 0;
            for (int i = 0; i < iovcnt; i++)
                len += iov[i].iov_len;
            if (!(joined = malloc(len ? len : 1)))
                return -ENOMEM;
            size_t at = 0;
            for (int i = 0; i < iovcnt; i++) {
                if (iov[i].iov_len)
                    memcpy(joined + at, iov[i].iov_base, iov[i].iov_len);
                at += iov[i].iov_len;
            }
            data = joined;
        }
        uint64_t progress = 0;
        do
            rc = cmp_conn_send(&c->conn, data, len, &progress, deadline);
        while (rc == -EINTR); /* a request is sent whole: bounded by the deadline */
        free(joined);
        if (rc == -ETIMEDOUT && progress == 0)
            return rc; /* nothing sent: the connection is fine */
        if (rc == -EPIPE || rc == -ECONNRESET)
            rc = -ECONNRESET;
    }
    if (rc < 0) {
        if (rc == -ECONNRESET || rc == -ESHUTDOWN)
            return gone(c, rc);
        drop_transport(c); /* cut midway */
        return rc;
    }
    c->pending = 1;
    memset(&c->rx, 0, sizeof c->rx);
    return wait_reply(c, reply, reply_len, deadline);
}

int cmp_manager_call(cmp_manager_client_t *c, const void *req, size_t len, const void **reply,
                     size_t *reply_len, const struct timespec *deadline)
{
    struct iovec iov = {(void *)req, len};
    return cmp_manager_callv(c, &iov, 1, reply, reply_len, deadline);
}

int cmp_manager_call_resume(cmp_manager_client_t *c, const void **reply, size_t *reply_len,
                            const struct timespec *deadline)
{
    if (c->connected && c->pid != cmp_self_pid())
        return -EINVAL; /* the parent's call, not ours */
    if (c->error)
        return c->error;
    if (!c->pending)
        return -EINVAL;
    return wait_reply(c, reply, reply_len, deadline);
}

void cmp_manager_disconnect(cmp_manager_client_t *c)
{
    if (!c)
        return;
    drop_transport(c);
    free(c->buf.data);
    free(c->key);
    free(c);
}
