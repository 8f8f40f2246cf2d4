/*
 * Connections: whole messages over a stream fd with the framing of Python's
 * multiprocessing.connection (4-byte big-endian length, or -1 then an 8-byte
 * length above 0x7fffffff), so bytes interoperate with the stdlib.
 *
 * The transport sits behind cmp__conn_ops so that a faster one (the
 * shared-memory ring) can replace the fd for Pipe() without touching the
 * callers; today there is one, the fd transport below.
 */
#include "conn_internal.h"
#include "spin.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define CMP__CONN_DIRS (CMP_CONN_READABLE | CMP_CONN_WRITABLE)
#define SMALL_HDR 4
#define LARGE_HDR 12
/* First room given to a message's payload, and the step it doubles from. */
#define RX_STEP ((size_t)1 << 20)

int cmp__fd_wait(int fd, short events, const struct timespec *deadline)
{
    struct timespec rel, *relp = NULL;
    if (deadline) {
        cmp__deadline_left(deadline, &rel);
        relp = &rel;
    }
    struct pollfd p = {.fd = fd, .events = events};
    int r = ppoll(&p, 1, relp, NULL);
    if (r < 0)
        return -errno;
    if (r == 0)
        return -ETIMEDOUT;
    return 0;
}

/* ---- fd transport ---------------------------------------------------- */

/* Polls a socket for events without blocking, for as long as the spin
 * policy (spin.h) lets it: 1 once they came (or an error the real call will
 * see), 0 when the spin gave up or may not run (a non-blocking attempt).
 * The peer's CPU is unknown on a socket, so the budget (the calling
 * thread's, per kind of wait: it follows how this thread's exchanges go)
 * and the preemption check decide alone. */
static int sock_spin(int fd, short events, const struct timespec *deadline, uint32_t *budget)
{
    struct cmp__spin spin;
    if (cmp__is_nowait(deadline) || !cmp__spin_begin(&spin, budget, NULL, deadline))
        return 0;
    int got = 0;
    do {
        struct pollfd p = {.fd = fd, .events = events};
        if (poll(&p, 1, 0) != 0) {
            got = 1;
            break;
        }
    } while (cmp__spin_check(&spin));
    cmp__spin_end(&spin, budget, got);
    return got;
}

/* Waits for events on a socket as cmp__fd_wait does, spinning first. A
 * message larger than the socket's buffer moves in steps, each a wait for
 * the peer to make room or send more: the peer usually does within
 * microseconds, and a sleep there costs a wake-up each step (on an idle
 * machine the CPU's way back from idle, tens of microseconds). */
static int sock_wait(int fd, short events, const struct timespec *deadline, uint32_t *budget)
{
    return sock_spin(fd, events, deadline, budget) ? 0 : cmp__fd_wait(fd, events, deadline);
}

static int fd_send(cmp_conn_t *c, const void *buf, size_t len, uint64_t *progress,
                   const struct timespec *deadline)
{
    unsigned char hdr[LARGE_HDR];
    size_t hlen;
    if (len > 0x7fffffffu) {
        memset(hdr, 0xff, 4);
        for (int i = 0; i < 8; i++)
            hdr[4 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
        hlen = LARGE_HDR;
    } else {
        for (int i = 0; i < 4; i++)
            hdr[i] = (unsigned char)(len >> (24 - 8 * i));
        hlen = SMALL_HDR;
    }
    uint64_t total = hlen + (uint64_t)len, done = progress ? *progress : 0;
    int sock = (c->flags & CMP__CONN_SOCKET) != 0, err = 0;
    while (done < total) {
        struct iovec iov[2];
        int n = 0;
        if (done < hlen) {
            iov[n++] = (struct iovec){hdr + done, hlen - done};
            if (len)
                iov[n++] = (struct iovec){(void *)buf, len};
        } else {
            iov[n++] = (struct iovec){(char *)buf + (done - hlen), len - (done - hlen)};
        }
        ssize_t w;
        if (sock) {
            /* MSG_NOSIGNAL: a gone reader is -EPIPE, not a process-killing
             * SIGPIPE in a C program that did not ignore it. */
            struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
            w = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        } else {
            if (deadline && (err = cmp__fd_wait(c->fd, POLLOUT, deadline)) < 0)
                break;
            w = writev(c->fd, iov, n);
        }
        if (w < 0) {
            err = -errno;
            if (err == -EAGAIN || err == -EWOULDBLOCK) {
                static __thread uint32_t room_budget = CMP__SPIN_MAX_NS;
                err = sock ? sock_wait(c->fd, POLLOUT, deadline, &room_budget)
                           : cmp__fd_wait(c->fd, POLLOUT, deadline);
                if (err == -EINTR && !deadline && !progress && done > 0)
                    continue; /* as a blocking send would: finish the message */
                if (err < 0)
                    break;
                continue;
            }
            if (err == -EINTR && !progress && done > 0)
                continue; /* nowhere to keep the progress: finish the message */
            break;
        }
        err = 0;
        done += (uint64_t)w;
        /* A blocking fd writes everything unless a signal cuts the write
         * short: report it, so that a caller waiting on a stuck reader gets
         * to run its handlers (Ctrl-C) instead of blocking again. (A socket
         * is written without blocking: a short write is a full buffer, and
         * a signal interrupts the wait for room above.) */
        if (!sock && progress && !deadline && done < total &&
            (size_t)w < iov[0].iov_len + (n > 1 ? iov[1].iov_len : 0)) {
            err = -EINTR;
            break;
        }
    }
    if (progress)
        *progress = done;
    return err;
}

/* Reads up to n bytes: > 0, 0 at EOF, or a negative errno. A socket is read
 * with MSG_DONTWAIT first (no poll when data is there), and waited for in
 * poll(), never in a blocking recv(): a reader asleep in recv() on a Unix
 * socket shares the socket's wait queue with its writers, so each time the
 * peer consumes what this side sent (unix_write_space) the reader is woken
 * for nothing, a context switch per message in a request/reply exchange;
 * poll() waiters are woken only for the events they asked for. */
static ssize_t fd_read(cmp_conn_t *c, void *p, size_t n, int mid, const struct timespec *deadline)
{
    static __thread uint32_t rest_budget = CMP__SPIN_MAX_NS;
    int sock = (c->flags & CMP__CONN_SOCKET) != 0;
    for (;;) {
        ssize_t k;
        if (deadline && !sock) {
            int r = cmp__fd_wait(c->fd, POLLIN, deadline);
            if (r < 0)
                return r;
        }
        if (n > SSIZE_MAX)
            n = SSIZE_MAX;
        k = sock ? recv(c->fd, p, n, MSG_DONTWAIT) : read(c->fd, p, n);
        if (k >= 0)
            return k;
        int err = -errno;
        if (err != -EAGAIN && err != -EWOULDBLOCK)
            return err;
        /* mid-message, the rest is usually on its way (see sock_wait); at
         * a message's start fd_recv has spun already */
        int r = sock && mid ? sock_wait(c->fd, POLLIN, deadline, &rest_budget)
                            : cmp__fd_wait(c->fd, POLLIN, deadline);
        if (r < 0)
            return r;
    }
}

/* Before sleeping in read() for the start of a message, spin on the socket
 * (sock_spin): in a request/reply exchange the answer usually arrives
 * within microseconds, and a blocking read would pay a sleep and a wake-up
 * on top. */
static void spin_for_data(cmp_conn_t *c)
{
    static __thread uint32_t budget = CMP__SPIN_MAX_NS;
    (void)sock_spin(c->fd, POLLIN, NULL, &budget);
}

static int fd_recv(cmp_conn_t *c, cmp_conn_rx_t *rx, uint64_t maxlen, cmp_conn_alloc_fn alloc,
                   void *arg, const struct timespec *deadline)
{
    if (rx->done == 0 && !deadline && (c->flags & CMP__CONN_SOCKET))
        spin_for_data(c);
    /* Header: 4 bytes, 8 more when the first 4 are the -1 marker. */
    for (;;) {
        size_t hlen = SMALL_HDR;
        if (rx->done >= SMALL_HDR && memcmp(rx->hdr, "\xff\xff\xff\xff", 4) == 0)
            hlen = LARGE_HDR;
        if (rx->done >= hlen)
            break;
        ssize_t k = fd_read(c, rx->hdr + rx->done, hlen - rx->done, rx->done > 0, deadline);
        if (k < 0)
            return (int)k;
        if (k == 0)
            return rx->done == 0 ? CMP_CONN_EOF : -EPROTO;
        rx->done += (uint64_t)k;
    }
    size_t hlen = SMALL_HDR;
    uint64_t len = 0;
    if (memcmp(rx->hdr, "\xff\xff\xff\xff", 4) == 0) {
        hlen = LARGE_HDR;
        for (int i = 0; i < 8; i++)
            len = len << 8 | rx->hdr[4 + i];
    } else {
        for (int i = 0; i < 4; i++)
            len = len << 8 | rx->hdr[i];
        /* A negative length other than the marker: the stdlib reads it as
         * an empty message and goes on with the next header, so both ends
         * must agree on where that header starts. */
        if (len > 0x7fffffffu)
            len = 0;
    }
    rx->len = len;
    if (len > maxlen)
        return -EMSGSIZE;
    /* No buffer holds more than this, and below it hlen + len (the end of
     * the message) cannot wrap around: a wrapped end made a header of
     * -1 and 2^64-5 a complete message with nothing read. */
    if (len > SIZE_MAX - LARGE_HDR)
        return -ENOMEM;
    if (!rx->allocated) {
        size_t first = len < RX_STEP ? (size_t)len : RX_STEP;
        void *p = alloc(arg, first);
        if (!p && first)
            return -ENOMEM;
        rx->buf = p;
        rx->room = first;
        rx->allocated = 1;
    }
    while (rx->done < hlen + len) {
        uint64_t got = rx->done - hlen;
        if (got == rx->room) {
            /* The length is the peer's claim: room grows with what has
             * arrived (doubling, so an honest big message is grown
             * log2(len / 1 MiB) times, by realloc, i.e. mremap, not a
             * copy), and a header announcing gigabytes costs what the peer
             * actually sent. */
            uint64_t want = rx->room < len / 2 ? rx->room * 2 : len;
            void *p = alloc(arg, (size_t)want);
            if (!p)
                return -ENOMEM; /* rx->buf stays the caller's to free */
            rx->buf = p;
            rx->room = want;
        }
        ssize_t k = fd_read(c, (char *)rx->buf + got, (size_t)(rx->room - got), 1, deadline);
        if (k < 0)
            return (int)k;
        if (k == 0)
            return -EPROTO;
        rx->done += (uint64_t)k;
    }
    return 0;
}

static int fd_poll(cmp_conn_t *c, const struct timespec *deadline)
{
    return cmp__fd_wait(c->fd, POLLIN, deadline);
}

static void fd_close(cmp_conn_t *c)
{
    close(c->fd);
}

static const struct cmp__conn_ops fd_ops = {fd_send, fd_recv, fd_poll, fd_close};

/* ---- public API -------------------------------------------------------- */

int cmp_conn_open(cmp_conn_t *conn, int fd, unsigned flags)
{
    if (fd < 0 || !(flags & CMP__CONN_DIRS) || (flags & ~CMP__CONN_DIRS))
        return -EINVAL;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode))
        flags |= CMP__CONN_SOCKET;
    conn->fd = fd;
    conn->flags = flags;
    conn->ops = &fd_ops;
    return 0;
}

int cmp_conn_pair(cmp_conn_t *r, cmp_conn_t *w, int duplex)
{
    int fds[2];
    if (duplex) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
            return -errno;
        unsigned both = CMP_CONN_READABLE | CMP_CONN_WRITABLE | CMP__CONN_SOCKET;
        *r = (cmp_conn_t){fds[0], both, &fd_ops};
        *w = (cmp_conn_t){fds[1], both, &fd_ops};
    } else {
        if (pipe2(fds, O_CLOEXEC) < 0)
            return -errno;
        *r = (cmp_conn_t){fds[0], CMP_CONN_READABLE, &fd_ops};
        *w = (cmp_conn_t){fds[1], CMP_CONN_WRITABLE, &fd_ops};
    }
    return 0;
}

void cmp_conn_close(cmp_conn_t *conn)
{
    if (conn->fd >= 0) {
        conn->ops->close(conn);
        conn->fd = -1;
    }
}

int cmp_conn_detach(cmp_conn_t *conn)
{
    int fd = conn->fd;
    conn->fd = -1;
    return fd >= 0 ? fd : -EBADF;
}

int cmp_conn_send(cmp_conn_t *conn, const void *buf, size_t len, uint64_t *progress,
                  const struct timespec *deadline)
{
    if (conn->fd < 0 || !(conn->flags & CMP_CONN_WRITABLE))
        return -EBADF;
    return conn->ops->send(conn, buf, len, progress, deadline);
}

int cmp_conn_recv(cmp_conn_t *conn, cmp_conn_rx_t *rx, uint64_t maxlen, cmp_conn_alloc_fn alloc,
                  void *arg, const struct timespec *deadline)
{
    if (conn->fd < 0 || !(conn->flags & CMP_CONN_READABLE))
        return -EBADF;
    return conn->ops->recv(conn, rx, maxlen, alloc, arg, deadline);
}

int cmp_conn_poll(cmp_conn_t *conn, const struct timespec *deadline)
{
    if (conn->fd < 0 || !(conn->flags & CMP_CONN_READABLE))
        return -EBADF;
    return conn->ops->poll(conn, deadline);
}
