/*
 * A manager server in a process of its own: forked, it reports through a
 * pipe that it listens (or why it could not), and it stops when its
 * starter writes a byte to the stop socket. It dies with the starting
 * thread (PR_SET_PDEATHSIG) unless standalone, so no manager outlives the
 * program that made it.
 */
#include "manager_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* What the server process writes to its starter: one write, well under
 * PIPE_BUF, so it arrives whole or not at all. */
struct ready {
    int32_t status;
    uint32_t addrlen;
    struct sockaddr_storage addr;
};

struct start_args {
    const cmp_manager_options_t *opt;
    int ready_fd, ctl_fd, other_fd;
};

static int server_main(void *arg)
{
    struct start_args *a = arg;
    close(a->other_fd); /* the starter's end of the stop socket */
    struct ready r;
    memset(&r, 0, sizeof r);
    cmp_manager_t *m = NULL;
    if (a->opt->init && a->opt->init(a->opt->arg) != 0)
        r.status = -ECANCELED;
    else
        r.status = cmp_manager_create(&m, a->opt);
    if (r.status == 0) {
        r.addrlen = cmp_manager_address(m, &r.addr);
        cmp__manager_set_ctl(m, a->ctl_fd);
    } else {
        close(a->ctl_fd);
    }
    ssize_t w;
    while ((w = write(a->ready_fd, &r, sizeof r)) < 0 && errno == EINTR)
        ;
    close(a->ready_fd);
    if (r.status < 0)
        return 1;
    int rc = cmp_manager_serve(m);
    cmp_manager_destroy(m);
    return rc < 0 ? 1 : 0;
}

int cmp_manager_start(cmp_manager_process_t *p, const cmp_manager_options_t *opt, unsigned flags)
{
    if (!opt || !opt->handler || (flags & ~CMP_MANAGER_STANDALONE))
        return -EINVAL;
    /* The default address is chosen here: the private directory is then
     * this process's, removed when it exits, even if the server is killed
     * and leaves its socket behind. */
    cmp_manager_options_t o = *opt;
    struct sockaddr_storage def;
    int rc;
    if (!o.addr) {
        if ((rc = cmp_listener_default_addr(&def, &o.addrlen)) < 0)
            return rc;
        o.addr = (const struct sockaddr *)&def;
    }
    int ready[2], ctl[2];
    if (pipe2(ready, O_CLOEXEC) < 0)
        return -errno;
    /* a socket, not a pipe: a stop sent to a dead server is -EPIPE, not a
     * SIGPIPE (MSG_NOSIGNAL) */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) < 0) {
        int err = -errno;
        close(ready[0]);
        close(ready[1]);
        return err;
    }
    /* The server leaves through exit paths that flush stdio: what this
     * process has buffered must not come out a second time from there. */
    fflush(NULL);
    struct start_args a = {&o, ready[1], ctl[1], ctl[0]};
    rc = cmp_process_start(&p->proc, server_main, &a,
                               (flags & CMP_MANAGER_STANDALONE) ? 0 : CMP_PROCESS_DIE_WITH_PARENT);
    close(ready[1]);
    close(ctl[1]);
    if (rc < 0) {
        close(ready[0]);
        close(ctl[0]);
        return rc;
    }
    struct ready r;
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = read(ready[0], (char *)&r + got, sizeof r - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(ready[0]);
    if (got != sizeof r || r.status < 0) {
        rc = got != sizeof r ? -ECHILD : r.status; /* it died before a word */
        close(ctl[0]);
        cmp_process_kill(&p->proc);
        cmp_process_join(&p->proc, NULL);
        cmp_process_close(&p->proc);
        return rc;
    }
    p->ctl = ctl[0];
    p->addrlen = r.addrlen;
    p->addr = r.addr;
    return 0;
}

int cmp_manager_join(cmp_manager_process_t *p, const struct timespec *deadline)
{
    return cmp_process_join(&p->proc, deadline);
}

int cmp_manager_shutdown(cmp_manager_process_t *p, const struct timespec *deadline)
{
    if (p->ctl >= 0 && !p->proc.reaped) {
        char b = 's';
        /* a dead server (EPIPE) or a full socket (an earlier stop not yet
         * read) needs no second byte */
        ssize_t w = send(p->ctl, &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    int rc = cmp_process_join(&p->proc, deadline);
    if (rc == -ETIMEDOUT) {
        cmp_process_kill(&p->proc);
        rc = cmp_process_join(&p->proc, NULL);
        return rc < 0 ? rc : -ETIMEDOUT;
    }
    return rc;
}

void cmp_manager_close(cmp_manager_process_t *p)
{
    if (p->ctl >= 0) {
        close(p->ctl);
        p->ctl = -1;
    }
    cmp_process_close(&p->proc);
}
