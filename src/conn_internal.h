/* The transport seam of connections (conn.c), shared with listener.c and
 * auth.c. Internal to libcmp. */
#ifndef CMP_CONN_INTERNAL_H
#define CMP_CONN_INTERNAL_H

#include "internal.h"

#include <string.h>

/* Private bit of cmp_conn_t.flags: the fd is a socket (sendmsg with
 * MSG_NOSIGNAL, recv with MSG_DONTWAIT under a deadline). */
#define CMP__CONN_SOCKET 0x100u

/* One transport: whole messages in and out, with the contract of the
 * public cmp_conn_* functions (which check direction and closed state). */
struct cmp__conn_ops {
    int (*send)(cmp_conn_t *c, const void *buf, size_t len, uint64_t *progress,
                const struct timespec *deadline);
    int (*recv)(cmp_conn_t *c, cmp_conn_rx_t *rx, uint64_t maxlen, cmp_conn_alloc_fn alloc,
                void *arg, const struct timespec *deadline);
    int (*poll)(cmp_conn_t *c, const struct timespec *deadline);
    void (*close)(cmp_conn_t *c);
};

/* ppoll one fd until one of events or the deadline (NULL = none).
 * 0 ready, -ETIMEDOUT, -EINTR. */
int cmp__fd_wait(int fd, short events, const struct timespec *deadline);

/* The abstract AF_UNIX address of name (at most max bytes with its NUL):
 * 0, or -EINVAL for an empty or too long name (fdshare.c). */
struct sockaddr_un;
int cmp__abstract_addr(const char *name, size_t max, struct sockaddr_un *sa, socklen_t *len);
/* 0 when the peer of a connected AF_UNIX socket runs as our uid, -EACCES
 * when not, or a negative errno (fdshare.c). */
int cmp__peer_is_us(int sock);

#endif /* CMP_CONN_INTERNAL_H */
