/*
 * Manager server: a socket listener, one thread per client connection that
 * reads the client's requests and calls the handler, and a serving thread
 * that accepts connections and watches the clients (cmp.h, "Manager
 * server"). A same-machine client asks for a mailbox on its connection
 * (mailbox.h): requests then go through shared memory, and the connection
 * and the client's pidfd only tell when the client goes; any other client
 * sends its requests as framed messages on the connection.
 *
 * A thread per client, as the stdlib's server runs: a handler may block
 * for as long as it likes (a managed lock's acquire), and only its own
 * client waits.
 */
#include "atomic.h"
#include "conn_internal.h"
#include "mailbox.h"
#include "manager_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_BACKLOG 64

struct cmp_manager_reply {
    unsigned char *data;
    size_t len, cap;
};

void *cmp_manager_reply_extend(cmp_manager_reply_t *r, size_t len)
{
    if (len > SIZE_MAX - r->len)
        return NULL;
    void *p = cmp__grow(r->data, &r->cap, r->len + len);
    if (!p)
        return NULL;
    r->data = p;
    r->len += len;
    return r->data + r->len - len;
}

void cmp_manager_reply_clear(cmp_manager_reply_t *r)
{
    r->len = 0;
}

/* One client connection, owned by the serving thread (which frees it once
 * its thread has ended); the client's thread uses conn and mailbox. */
struct client {
    struct client *next;
    cmp_manager_t *m;
    uint64_t id;
    cmp_conn_t conn;
    pthread_t thread;
    int pidfd; /* the client process (mailbox clients), -1: none */
    cmp_shm_t shm;
    /* under m->mu: */
    int has_mbox; /* shm maps its mailbox */
    int watched;  /* the serving thread watches conn and pidfd */
    int done;     /* the thread has ended (join it) */
};

struct cmp_manager {
    /* The watch thread's robust list (mailbox.h): the kernel walks it when
     * the thread dies, with the server, and marks each mailbox's liveness
     * word. Entries are linked and unlinked under mu. */
    struct robust_list_head robust;
    pthread_t watch;
    int watch_started;   /* the thread was started (join it); under mu */
    uint32_t watch_tid;  /* 0: no watch (mailbox clients then poll) */
    unsigned watched;    /* mailboxes on the list (under mu) */
    uint32_t watch_stop; /* futex word: the watch thread returns */
    cmp_manager_options_t opt;
    unsigned char *key;
    cmp_listener_t listener;
    int wake_fd; /* eventfd: the serving thread's doorbell */
    int ctl_fd;  /* a starter's stop socket (cmp_manager_start), -1: none */
    pthread_mutex_t mu;
    struct client *clients;
    uint64_t next_id;
    int stopping; /* atomic */
    int serving;
};

static void ring_doorbell(cmp_manager_t *m)
{
    uint64_t one = 1;
    /* a full counter already rings; nothing to do on failure */
    ssize_t r = write(m->wake_fd, &one, sizeof one);
    (void)r;
}

void cmp_manager_stop(cmp_manager_t *m)
{
    __atomic_store_n(&m->stopping, 1, __ATOMIC_RELEASE);
    ring_doorbell(m);
}

int cmp_manager_stopping(const cmp_manager_t *m)
{
    return __atomic_load_n(&m->stopping, __ATOMIC_ACQUIRE);
}

/* Set in each client thread for its whole life. */
static _Thread_local cmp_manager_t *current;

cmp_manager_t *cmp_manager_current(void)
{
    return current;
}

int cmp_manager_create(cmp_manager_t **out, const cmp_manager_options_t *opt)
{
    if (!opt || !opt->handler)
        return -EINVAL;
    cmp_manager_t *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->opt = *opt;
    m->ctl_fd = -1;
    m->listener.fd = -1;
    m->next_id = 1;
    int rc = -ENOMEM;
    if (opt->authkey) {
        if (!(m->key = malloc(opt->authkey_len ? opt->authkey_len : 1)))
            goto fail;
        memcpy(m->key, opt->authkey, opt->authkey_len);
        m->opt.authkey = m->key;
    }
    /* the caller's memory: only the bound address is kept */
    m->opt.addr = NULL;
    /* empty until the watch starts */
    m->robust.list.next = &m->robust.list;
    if ((rc = pthread_mutex_init(&m->mu, NULL)) != 0) {
        rc = -rc;
        goto fail;
    }
    m->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (m->wake_fd < 0) {
        rc = -errno;
        goto fail_mu;
    }
    struct sockaddr_storage def;
    const struct sockaddr *addr = opt->addr;
    socklen_t addrlen = opt->addrlen;
    if (!addr) {
        if ((rc = cmp_listener_default_addr(&def, &addrlen)) < 0)
            goto fail_wake;
        addr = (const struct sockaddr *)&def;
    }
    rc = cmp_listener_open(&m->listener, addr, addrlen,
                           opt->backlog > 0 ? opt->backlog : DEFAULT_BACKLOG);
    if (rc < 0)
        goto fail_wake;
    /* accept() after poll() must not block on a connection reset meanwhile */
    if (fcntl(m->listener.fd, F_SETFL, fcntl(m->listener.fd, F_GETFL) | O_NONBLOCK) < 0) {
        rc = -errno;
        cmp_listener_close(&m->listener);
        goto fail_wake;
    }
    *out = m;
    return 0;
fail_wake:
    close(m->wake_fd);
fail_mu:
    pthread_mutex_destroy(&m->mu);
fail:
    free(m->key);
    free(m);
    return rc;
}

socklen_t cmp_manager_address(const cmp_manager_t *m, struct sockaddr_storage *addr)
{
    *addr = m->listener.addr;
    return m->listener.addrlen;
}

void cmp__manager_set_ctl(cmp_manager_t *m, int fd)
{
    m->ctl_fd = fd;
}

void cmp_manager_destroy(cmp_manager_t *m)
{
    if (!m)
        return;
    if (m->serving)
        abort(); /* destroy while cmp_manager_serve runs: misuse */
    cmp_listener_close(&m->listener);
    close(m->wake_fd);
    if (m->ctl_fd >= 0)
        close(m->ctl_fd);
    pthread_mutex_destroy(&m->mu);
    free(m->key);
    free(m);
}

/* ---- the watch thread -------------------------------------------------- */

/* Waits, with the mailboxes' liveness words on its robust list, until the
 * server stops: its death is the server's, which the kernel then tells
 * every sleeping client. Its own thread, so that the list of no thread
 * that runs other code (glibc's robust mutexes) is replaced. */
static void *watch_main(void *arg)
{
    cmp_manager_t *m = arg;
    m->robust.list.next = &m->robust.list;
    m->robust.futex_offset = CMP__MBOX_ROBUST_OFFSET;
    m->robust.list_op_pending = NULL;
    uint32_t tid = 0;
    if (syscall(SYS_set_robust_list, &m->robust, sizeof m->robust) == 0)
        tid = cmp__self_tid();
    /* published without mu: its starter holds it (watch_link) */
    cmp__store_release(&m->watch_tid, tid ? tid : UINT32_MAX); /* MAX: no watch */
    cmp__futex_wake(&m->watch_tid, 1);
    if (!tid)
        return NULL;
    while (cmp__load_acquire(&m->watch_stop) == 0)
        cmp__futex_wait(&m->watch_stop, 0, NULL);
    /* A normal exit must not mark anything: the mailboxes were closed. */
    pthread_mutex_lock(&m->mu);
    m->robust.list.next = &m->robust.list;
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

/* Started with the first mailbox, under mu, not with the server: a new
 * thread can wait a whole time slice for a CPU when none is idle, and a
 * manager that only ever has socket clients needs none. Without a thread
 * (it could not start) the mailboxes go unwatched. */
static void watch_start(cmp_manager_t *m)
{
    m->watch_tid = 0;
    m->watch_stop = 0;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&m->watch, NULL, watch_main, m);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    m->watch_started = rc == 0;
    if (rc != 0)
        return;
    uint32_t tid;
    while ((tid = cmp__load_acquire(&m->watch_tid)) == 0)
        cmp__futex_wait(&m->watch_tid, 0, NULL);
    if (tid == UINT32_MAX)
        m->watch_tid = 0;
}

static void watch_stop(cmp_manager_t *m)
{
    pthread_mutex_lock(&m->mu);
    int started = m->watch_started;
    m->watch_started = 0;
    pthread_mutex_unlock(&m->mu);
    if (!started)
        return;
    cmp__store_release(&m->watch_stop, 1);
    cmp__futex_wake(&m->watch_stop, 1);
    pthread_join(m->watch, NULL);
    m->watch_tid = 0;
}

/* The kernel walks at most ROBUST_LIST_LIMIT (2048) entries of a list:
 * mailboxes beyond these go without (their clients poll the pidfd). */
#define WATCH_MAX 2000u

/* Formats mb with the watch's id and puts it on the list, or without one
 * when the list is full. Under mu, before any client waits on mb. */
static void watch_link(cmp_manager_t *m, struct cmp__mbox *mb, size_t size)
{
    if (!m->watch_started)
        watch_start(m);
    int on = m->watch_tid && m->watched < WATCH_MAX;
    cmp__mbox_init(mb, size, on ? m->watch_tid : 0);
    if (!on)
        return;
    m->watched++;
    mb->robust.next = m->robust.list.next;
    /* one store publishes it: a death at any point finds a whole list */
    __atomic_store_n(&m->robust.list.next, &mb->robust, __ATOMIC_RELEASE);
}

/* Under mu; before the mailbox is unmapped (the kernel would stop at an
 * entry it cannot read). */
static void watch_unlink(cmp_manager_t *m, struct cmp__mbox *mb)
{
    for (struct robust_list *p = &m->robust.list; p->next != &m->robust.list; p = p->next) {
        if (p->next == &mb->robust) {
            __atomic_store_n(&p->next, mb->robust.next, __ATOMIC_RELEASE);
            m->watched--;
            return;
        }
    }
}

/* ---- a client's thread ------------------------------------------------ */

/* The peer's credentials on an AF_UNIX connection: 1 and *cred, or 0
 * when the connection is not AF_UNIX. */
static int unix_peer(int fd, struct ucred *cred)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0 || ss.ss_family != AF_UNIX)
        return 0;
    len = sizeof *cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, &len) < 0)
        return 0;
    return 1;
}

/* The reply to a mailbox hello: the header of a framed message, the
 * payload, and the memfd attached. */
static int send_hello_reply(int fd, int status, int memfd, size_t size)
{
    struct cmp__manager_hello_reply r;
    memset(&r, 0, sizeof r);
    memcpy(r.magic, CMP__MANAGER_HELLO_REPLY, sizeof r.magic);
    r.status = status;
    r.pid = (int32_t)cmp_self_pid();
    r.size = size;
    unsigned char hdr[4] = {0, 0, 0, (unsigned char)sizeof r};
    struct iovec iov[2] = {{hdr, sizeof hdr}, {&r, sizeof r}};
    /* 40 bytes on a fresh connection: the socket buffer takes them whole */
    long n = cmp__send_fd(fd, iov, 2, memfd);
    if (n < 0)
        return (int)n;
    return n == (long)(sizeof hdr + sizeof r) ? 0 : -EPROTO;
}

/* Gives the client its mailbox. 0, or a negative errno (the client goes). */
static int setup_mailbox(struct client *c, struct cmp__mbox_end *end)
{
    cmp_manager_t *m = c->m;
    struct ucred cred;
    if (!unix_peer(c->conn.fd, &cred) || cred.uid != geteuid()) {
        send_hello_reply(c->conn.fd, EACCES, -1, 0);
        return -EACCES;
    }
    int rc = cmp_shm_create(&c->shm, CMP__MBOX_SIZE, "cmp-manager-mailbox");
    if (rc < 0) {
        send_hello_reply(c->conn.fd, -rc, -1, 0);
        return rc;
    }
    struct cmp__mbox *mb = c->shm.addr;
    /* The client's process, to notice its death even when a child it
     * forked still holds the connection. */
    int pidfd = (int)syscall(SYS_pidfd_open, cred.pid, 0);
    pthread_mutex_lock(&m->mu);
    watch_link(m, mb, c->shm.size);
    if ((rc = cmp__mbox_end_init(end, mb, c->shm.size, CMP__MBOX_SERVER)) < 0)
        abort(); /* we formatted it just now */
    c->pidfd = pidfd;
    c->has_mbox = 1;
    c->watched = 1;
    if (cmp_manager_stopping(m))
        cmp__mbox_close(mb);
    pthread_mutex_unlock(&m->mu);
    ring_doorbell(m); /* watch this one too */
    return send_hello_reply(c->conn.fd, 0, c->shm.fd, c->shm.size);
}

/* Calls the handler; returns what it returned. */
static int handle(struct client *c, const void *req, size_t len, cmp_manager_reply_t *reply)
{
    cmp_manager_t *m = c->m;
    reply->len = 0;
    int st = m->opt.handler(m->opt.arg, c->id, req, len, reply);
    return st < 0 ? CMP_MANAGER_DISCONNECT : st;
}

/* After the reply went out (a stop before it would close the mailbox
 * under it): 1 when the client's session ends here. */
static int after_reply(struct client *c, int st)
{
    if (st & CMP_MANAGER_STOP)
        cmp_manager_stop(c->m);
    return (st & (CMP_MANAGER_DISCONNECT | CMP_MANAGER_STOP)) != 0;
}

static void serve_mailbox(struct client *c, struct cmp__mbox_end *end, struct cmp__mbox_buf *buf,
                          cmp_manager_reply_t *reply)
{
    for (;;) {
        size_t len;
        if (cmp__mbox_recv(end, buf, &len, 0, NULL) < 0)
            break;
        int st = handle(c, buf->data, len, reply);
        struct iovec iov = {reply->data, reply->len};
        if (cmp__mbox_sendv(end, &iov, 1, NULL) < 0 || after_reply(c, st))
            break;
    }
    /* The client may still wait (a session the handler ended): it sees the
     * mailbox closed after the reply. */
    cmp__mbox_close(end->m);
}

/* first: the first request, already received. */
static void serve_socket(struct client *c, cmp_conn_rx_t *rx, struct cmp__mbox_buf *buf,
                         cmp_manager_reply_t *reply)
{
    for (;;) {
        int st = handle(c, rx->buf, (size_t)rx->len, reply);
        if (cmp_conn_send(&c->conn, reply->data, reply->len, NULL, NULL) < 0 || after_reply(c, st))
            return;
        memset(rx, 0, sizeof *rx);
        if (cmp_conn_recv(&c->conn, rx, UINT64_MAX, cmp__mbox_buf_room, buf, NULL) < 0)
            return;
    }
}

static void *client_main(void *arg)
{
    struct client *c = arg;
    cmp_manager_t *m = c->m;
    current = m;
    struct cmp__mbox_buf buf = {0};
    cmp_manager_reply_t reply = {0};
    int started = 0;
    struct ucred cred;
    if (!m->key && unix_peer(c->conn.fd, &cred) && cred.uid != geteuid())
        goto end; /* another user on a socket path we were given: no key, no entry */
    if (m->key) {
        struct timespec dl;
        cmp_deadline_after(CMP_AUTH_TIMEOUT, &dl);
        if (cmp_conn_deliver_challenge(&c->conn, m->key, m->opt.authkey_len, &dl) < 0 ||
            cmp_conn_answer_challenge(&c->conn, m->key, m->opt.authkey_len, &dl) < 0)
            goto end;
    }
    if (m->opt.on_client)
        m->opt.on_client(m->opt.arg, c->id, CMP_MANAGER_CLIENT_START);
    started = 1;
    cmp_conn_rx_t rx;
    memset(&rx, 0, sizeof rx);
    if (cmp_conn_recv(&c->conn, &rx, UINT64_MAX, cmp__mbox_buf_room, &buf, NULL) < 0)
        goto end;
    if (rx.len == sizeof CMP__MANAGER_HELLO - 1 &&
        memcmp(rx.buf, CMP__MANAGER_HELLO, sizeof CMP__MANAGER_HELLO - 1) == 0) {
        struct cmp__mbox_end end;
        if (setup_mailbox(c, &end) == 0)
            serve_mailbox(c, &end, &buf, &reply);
    } else {
        serve_socket(c, &rx, &buf, &reply);
    }
end:
    if (started && m->opt.on_client)
        m->opt.on_client(m->opt.arg, c->id, CMP_MANAGER_CLIENT_END);
    free(buf.data);
    free(reply.data);
    pthread_mutex_lock(&m->mu);
    c->done = 1;
    pthread_mutex_unlock(&m->mu);
    ring_doorbell(m);
    return NULL;
}

/* ---- the serving thread ----------------------------------------------- */

static void free_client(struct client *c)
{
    pthread_join(c->thread, NULL);
    cmp_conn_close(&c->conn);
    if (c->pidfd >= 0)
        close(c->pidfd);
    if (c->has_mbox) {
        pthread_mutex_lock(&c->m->mu);
        watch_unlink(c->m, c->shm.addr);
        pthread_mutex_unlock(&c->m->mu);
        cmp_shm_detach(&c->shm);
    }
    free(c);
}

static void accept_clients(cmp_manager_t *m)
{
    for (;;) {
        int fd = accept4(m->listener.fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* the connection stays queued and the listener readable:
                 * back off instead of spinning on it */
                struct timespec nap = {0, 10 * 1000 * 1000};
                nanosleep(&nap, NULL);
            }
            return; /* EAGAIN: no more now */
        }
        struct client *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->m = m;
        c->pidfd = -1;
        c->shm.fd = -1;
        cmp_conn_open(&c->conn, fd, CMP_CONN_READABLE | CMP_CONN_WRITABLE);
        pthread_mutex_lock(&m->mu);
        c->id = m->next_id++;
        /* The client's thread must not take the signals the program
         * expects in its own threads (Ctrl-C goes elsewhere). */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int rc = pthread_create(&c->thread, NULL, client_main, c);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc != 0) {
            pthread_mutex_unlock(&m->mu);
            cmp_conn_close(&c->conn);
            free(c);
            continue;
        }
        c->next = m->clients;
        m->clients = c;
        pthread_mutex_unlock(&m->mu);
    }
}

/* Joins and frees the clients whose thread has ended. */
static void reap_clients(cmp_manager_t *m)
{
    pthread_mutex_lock(&m->mu);
    struct client **pp = &m->clients, *done = NULL;
    while (*pp) {
        struct client *c = *pp;
        if (c->done) {
            *pp = c->next;
            c->next = done;
            done = c;
        } else {
            pp = &c->next;
        }
    }
    pthread_mutex_unlock(&m->mu);
    while (done) {
        struct client *c = done;
        done = c->next;
        free_client(c);
    }
}

int cmp_manager_serve(cmp_manager_t *m)
{
    int rc = 0;
    m->serving = 1;
    struct pollfd *pfd = NULL;
    struct client **who = NULL;
    size_t room = 0;
    while (!cmp_manager_stopping(m)) {
        reap_clients(m);
        pthread_mutex_lock(&m->mu);
        size_t want = 3;
        for (struct client *c = m->clients; c; c = c->next)
            want += 2;
        if (want > room) {
            struct pollfd *p = realloc(pfd, want * sizeof *p);
            struct client **w = p ? realloc(who, want * sizeof *w) : NULL;
            if (p)
                pfd = p;
            if (w)
                who = w;
            if (!p || !w) {
                pthread_mutex_unlock(&m->mu);
                rc = -ENOMEM;
                break;
            }
            room = want;
        }
        size_t n = 0;
        pfd[n++] = (struct pollfd){m->listener.fd, POLLIN, 0};
        pfd[n++] = (struct pollfd){m->wake_fd, POLLIN, 0};
        if (m->ctl_fd >= 0)
            pfd[n++] = (struct pollfd){m->ctl_fd, POLLIN, 0};
        size_t first = n;
        for (struct client *c = m->clients; c; c = c->next) {
            if (!c->watched || c->done)
                continue;
            who[n] = c;
            /* the client sends nothing after its hello: readable is EOF */
            pfd[n++] = (struct pollfd){c->conn.fd, POLLIN, 0};
            if (c->pidfd >= 0) {
                who[n] = c;
                pfd[n++] = (struct pollfd){c->pidfd, POLLIN, 0};
            }
        }
        pthread_mutex_unlock(&m->mu);
        if (poll(pfd, n, -1) < 0)
            continue; /* EINTR */
        if (pfd[1].revents) {
            uint64_t v;
            ssize_t r = read(m->wake_fd, &v, sizeof v);
            (void)r;
        }
        if (m->ctl_fd >= 0 && pfd[2].revents) {
            char b;
            if (pfd[2].revents & POLLIN && read(m->ctl_fd, &b, 1) == 1) {
                cmp_manager_stop(m);
            } else { /* the starter let go of its handle: serve on */
                close(m->ctl_fd);
                m->ctl_fd = -1;
            }
        }
        pthread_mutex_lock(&m->mu);
        for (size_t i = first; i < n; i++) {
            struct client *c = who[i];
            if (pfd[i].revents && c->watched) {
                /* gone: its thread wakes and ends */
                c->watched = 0;
                cmp__mbox_close(c->shm.addr);
            }
        }
        pthread_mutex_unlock(&m->mu);
        if (pfd[0].revents)
            accept_clients(m);
    }
    free(pfd);
    free(who);
    /* Stopping: no new clients; every mailbox closed and every connection
     * shut down, so that each thread ends once its handler returns. */
    cmp_listener_close(&m->listener);
    pthread_mutex_lock(&m->mu);
    __atomic_store_n(&m->stopping, 1, __ATOMIC_RELEASE);
    for (struct client *c = m->clients; c; c = c->next) {
        if (c->has_mbox)
            cmp__mbox_close(c->shm.addr);
        shutdown(c->conn.fd, SHUT_RDWR);
    }
    struct client *all = m->clients;
    m->clients = NULL;
    pthread_mutex_unlock(&m->mu);
    while (all) {
        struct client *c = all;
        all = c->next;
        free_client(c);
    }
    watch_stop(m);
    m->serving = 0;
    return rc;
}
