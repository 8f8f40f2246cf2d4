/*
 * Listener and client over AF_UNIX (paths and Linux abstract names) and
 * AF_INET: the sockets under Python's connection.Listener and Client.
 */
#include "conn_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/un.h>
#include <unistd.h>

int cmp_sockaddr_unix(struct sockaddr_storage *out, socklen_t *outlen, const char *path, size_t len)
{
    struct sockaddr_un *un = (struct sockaddr_un *)out;
    /* A path needs room for its NUL; an abstract name is counted exactly. */
    if (len == 0 || len > sizeof un->sun_path - (path[0] != '\0'))
        return -ENAMETOOLONG;
    memset(out, 0, sizeof *out);
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, len);
    *outlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] != '\0'));
    return 0;
}

int cmp_sockaddr_inet(struct sockaddr_storage *out, socklen_t *outlen, const char *host,
                      uint16_t port)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
    int r = getaddrinfo(host && *host ? host : NULL, NULL, &hints, &res);
    if (r != 0)
        return r == EAI_SYSTEM ? -errno : r == EAI_MEMORY ? -ENOMEM : -ENOENT;
    memset(out, 0, sizeof *out);
    memcpy(out, res->ai_addr, res->ai_addrlen);
    ((struct sockaddr_in *)out)->sin_port = htons(port);
    *outlen = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int cmp_listener_default_addr(struct sockaddr_storage *out, socklen_t *outlen)
{
    struct sockaddr_un *un = (struct sockaddr_un *)out;
    char path[sizeof un->sun_path];
    int n = cmp_tempdir(path, sizeof path);
    if (n < 0)
        return n == -ERANGE ? -ENAMETOOLONG : n;
    unsigned char rnd[8];
    int r = cmp__random_bytes(rnd, sizeof rnd);
    if (r < 0)
        return r;
    static const char hex[] = "0123456789abcdef";
    static const char stem[] = "/listener-";
    size_t len = (size_t)n;
    if (len + sizeof stem - 1 + 2 * sizeof rnd >= sizeof path)
        return -ENAMETOOLONG;
    memcpy(path + len, stem, sizeof stem - 1);
    len += sizeof stem - 1;
    for (size_t i = 0; i < sizeof rnd; i++) {
        path[len++] = hex[rnd[i] >> 4];
        path[len++] = hex[rnd[i] & 15];
    }
    return cmp_sockaddr_unix(out, outlen, path, len);
}

static int is_unix_path(const struct sockaddr *addr, socklen_t len)
{
    const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
    return addr->sa_family == AF_UNIX && len > offsetof(struct sockaddr_un, sun_path) &&
           un->sun_path[0] != '\0';
}

int cmp_listener_open(cmp_listener_t *l, const struct sockaddr *addr, socklen_t addrlen,
                      int backlog)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1, err;
    /* As the stdlib does on POSIX: a restarted server can rebind at once. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, addr, addrlen) < 0)
        goto fail;
    if (listen(fd, backlog) < 0)
        goto fail_unlink;
    l->addrlen = sizeof l->addr;
    if (getsockname(fd, (struct sockaddr *)&l->addr, &l->addrlen) < 0)
        goto fail_unlink;
    l->fd = fd;
    l->owner = is_unix_path(addr, addrlen) ? cmp_self_pid() : 0;
    return 0;
fail_unlink:
    err = -errno;
    if (is_unix_path(addr, addrlen))
        unlink(((const struct sockaddr_un *)addr)->sun_path);
    close(fd);
    return err;
fail:
    err = -errno;
    close(fd);
    return err;
}

int cmp_listener_accept(cmp_listener_t *l, cmp_conn_t *conn, struct sockaddr_storage *peer,
                        socklen_t *peerlen, const struct timespec *deadline)
{
    if (l->fd < 0)
        return -EBADF;
    struct sockaddr_storage ignored;
    socklen_t ignored_len = sizeof ignored;
    if (!peer) {
        peer = &ignored;
        peerlen = &ignored_len;
    } else {
        *peerlen = sizeof *peer;
    }
    for (;;) {
        if (deadline) {
            int r = cmp__fd_wait(l->fd, POLLIN, deadline);
            if (r < 0)
                return r;
        }
        int fd = accept4(l->fd, (struct sockaddr *)peer, peerlen,
                         SOCK_CLOEXEC | (deadline ? SOCK_NONBLOCK : 0));
        if (fd < 0) {
            int err = -errno;
            if (err == -EAGAIN || err == -EWOULDBLOCK)
                continue; /* another process took it; wait again */
            return err;
        }
        if (deadline && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
            int err = -errno;
            close(fd);
            return err;
        }
        return cmp_conn_open(conn, fd, CMP_CONN_READABLE | CMP_CONN_WRITABLE);
    }
}

void cmp_listener_close(cmp_listener_t *l)
{
    if (l->fd < 0)
        return;
    close(l->fd);
    l->fd = -1;
    /* Only the binder removes the path: a forked child closing its copy must
     * not pull the name out from under the parent. */
    if (l->owner && l->owner == cmp_self_pid())
        unlink(((struct sockaddr_un *)&l->addr)->sun_path);
    l->owner = 0;
}

int cmp_client_connect(cmp_conn_t *conn, const struct sockaddr *addr, socklen_t addrlen,
                       const struct timespec *deadline)
{
    int unix_family = addr->sa_family == AF_UNIX;
    /* AF_UNIX connects at once or blocks only while the backlog is full (a
     * non-blocking one would fail with EAGAIN instead of queueing), so it
     * stays blocking; AF_INET connects in the background under a deadline. */
    int fd =
        socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC | (unix_family ? 0 : SOCK_NONBLOCK), 0);
    if (fd < 0)
        return -errno;
    int err = 0;
    if (unix_family && deadline) {
        double left = cmp_deadline_remaining(deadline);
        struct timeval tv = {(time_t)left, (long)((left - (double)(time_t)left) * 1e6)};
        if (tv.tv_sec == 0 && tv.tv_usec == 0)
            tv.tv_usec = 1;
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (connect(fd, addr, addrlen) < 0) {
        err = -errno;
        if (unix_family) {
            if (err == -EAGAIN || err == -EINPROGRESS)
                err = -ETIMEDOUT;
            goto fail;
        }
        if (err != -EINPROGRESS)
            goto fail;
        if ((err = cmp__fd_wait(fd, POLLOUT, deadline)) < 0)
            goto fail;
        int soerr = 0;
        socklen_t len = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
            soerr = errno;
        if (soerr) {
            err = -soerr;
            goto fail;
        }
    }
    if (unix_family && deadline) {
        struct timeval zero = {0, 0};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof zero);
    }
    if (!unix_family && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
        err = -errno;
        goto fail;
    }
    return cmp_conn_open(conn, fd, CMP_CONN_READABLE | CMP_CONN_WRITABLE);
fail:
    close(fd);
    return err;
}
