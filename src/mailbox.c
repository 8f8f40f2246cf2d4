/*
 * Mailbox: one manager client's request/response channel in shared memory
 * (see mailbox.h for the protocol). The hand-off is the whole fast path: a
 * copy into the data area, one atomic add, and a wake-up only when the
 * peer sleeps.
 */
#include "mailbox.h"
#include "spin.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#define CLOSED 1u

void cmp__mbox_init(struct cmp__mbox *m, size_t size, uint32_t watch)
{
    size_t data = size - sizeof *m;
    m->data_size = (uint32_t)(data > UINT32_MAX ? UINT32_MAX & ~63u : data);
    m->alive = watch & FUTEX_TID_MASK;
    /* release: an attacher that sees the magic sees the size too */
    cmp__store_release(&m->magic, CMP__MBOX_MAGIC);
}

int cmp__mbox_end_init(struct cmp__mbox_end *e, struct cmp__mbox *m, size_t size, int side)
{
    if (size < sizeof *m || cmp__load_acquire(&m->magic) != CMP__MBOX_MAGIC)
        return -EPROTO;
    size_t data = cmp__load_relaxed(&m->data_size);
    if (data == 0 || data > size - sizeof *m)
        return -EPROTO;
    e->m = m;
    e->data_size = data;
    e->me = side;
    e->seen = cmp__load_acquire(&m->side[!side].seq) & ~CLOSED;
    e->check = NULL;
    e->check_arg = NULL;
    return 0;
}

/* Hands the data area to the peer. */
static void post(struct cmp__mbox_end *e)
{
    struct cmp__mbox_side *s = &e->m->side[e->me];
    cmp__spin_publish_cpu(&s->cpu);
    /* release: the peer that sees the new seq sees the chunk and header */
    __atomic_fetch_add(&s->seq, 2u, __ATOMIC_RELEASE);
    cmp__fence_seq_cst(); /* pairs with the waiter's fence: seq before waiters */
    if (cmp__load_relaxed(&s->waiters))
        cmp__futex_wake(&s->seq, 1);
    if (e->me == CMP__MBOX_SERVER) {
        /* a client asleep on the liveness word */
        uint32_t a = cmp__load_relaxed(&e->m->alive);
        while ((a & FUTEX_WAITERS) && !(a & FUTEX_OWNER_DIED)) {
            if (cmp__cas_acq_rel(&e->m->alive, &a, a & ~FUTEX_WAITERS)) {
                cmp__futex_wake(&e->m->alive, 1);
                break;
            }
        }
    }
}

void cmp__mbox_close(struct cmp__mbox *m)
{
    for (int i = 0; i < 2; i++) {
        __atomic_fetch_or(&m->side[i].seq, CLOSED, __ATOMIC_ACQ_REL);
        cmp__futex_wake(&m->side[i].seq, INT_MAX);
    }
    /* after the seq bits: a client woken here finds the mailbox closed */
    __atomic_fetch_or(&m->alive, CMP__MBOX_ALIVE_CLOSED, __ATOMIC_ACQ_REL);
    cmp__futex_wake(&m->alive, INT_MAX);
}

int cmp__mbox_is_closed(const struct cmp__mbox *m)
{
    return (cmp__load_acquire(&m->side[0].seq) & CLOSED) != 0;
}

/* What a value of the peer's word means to a waiter that saw `seen`:
 * 1 a hand-off (consumed), -ESHUTDOWN closed, 0 nothing yet. A hand-off
 * made before the close is still delivered. */
static int seen_change(struct cmp__mbox_end *e, uint32_t v)
{
    if ((v & ~CLOSED) != e->seen) {
        e->seen += 2;
        return 1;
    }
    return (v & CLOSED) ? -ESHUTDOWN : 0;
}

/* A client's sleep until the server's next hand-off, on the liveness
 * word, which the kernel marks when the server dies: 0, -ESHUTDOWN,
 * -ECONNRESET (the server died), -ETIMEDOUT, -EINTR (only when intr). */
static int sleep_on_alive(struct cmp__mbox_end *e, int intr, const struct timespec *deadline)
{
    struct cmp__mbox_side *p = &e->m->side[CMP__MBOX_SERVER];
    uint32_t *alive = &e->m->alive;
    for (;;) {
        uint32_t a = cmp__load_acquire(alive);
        if (!(a & (FUTEX_WAITERS | FUTEX_OWNER_DIED)) &&
            !cmp__cas_acq_rel(alive, &a, a | FUTEX_WAITERS))
            continue;
        a |= FUTEX_WAITERS;
        cmp__fence_seq_cst(); /* pairs with post(): the bit before seq */
        int rc = seen_change(e, cmp__load_acquire(&p->seq));
        if (rc)
            return rc < 0 ? rc : 0;
        if (a & FUTEX_OWNER_DIED)
            return -ECONNRESET; /* after the last hand-off: nothing more comes */
        rc = cmp__futex_wait(alive, a, deadline);
        if ((rc == -EINTR && intr) || (rc == -ETIMEDOUT && cmp__deadline_passed(deadline))) {
            int got = seen_change(e, cmp__load_acquire(&p->seq));
            return got ? (got < 0 ? got : 0) : rc;
        }
    }
}

/* Waits for the peer's next hand-off. 0, -ESHUTDOWN, -ETIMEDOUT, -EINTR
 * (only when intr), -ECONNRESET, or the check's error. */
static int wait_peer(struct cmp__mbox_end *e, int intr, const struct timespec *deadline)
{
    struct cmp__mbox_side *p = &e->m->side[!e->me];
    int rc = seen_change(e, cmp__load_acquire(&p->seq));
    if (rc)
        return rc < 0 ? rc : 0;
    struct cmp__spin spin;
    if (cmp__spin_begin(&spin, &p->spin_ns, &p->cpu, deadline)) {
        while (!(rc = seen_change(e, cmp__load_acquire(&p->seq))) && cmp__spin_more(&spin)) {
        }
        cmp__spin_end(&spin, &p->spin_ns, rc > 0);
        if (rc)
            return rc < 0 ? rc : 0;
    }
    if (e->me == CMP__MBOX_CLIENT && (cmp__load_relaxed(&e->m->alive) & ~FUTEX_WAITERS) != 0)
        return sleep_on_alive(e, intr, deadline);
    for (;;) {
        cmp__store_relaxed(&p->waiters, 1);
        cmp__fence_seq_cst(); /* pairs with post(): waiters before seq */
        uint32_t v = cmp__load_acquire(&p->seq);
        if ((rc = seen_change(e, v)) == 0 && e->check)
            rc = e->check(e->check_arg);
        if (rc) {
            cmp__store_relaxed(&p->waiters, 0);
            return rc < 0 ? rc : 0;
        }
        struct timespec next;
        const struct timespec *until = deadline;
        if (e->check) {
            cmp__deadline_in_ns(&next, CMP__OWNER_CHECK_NS);
            until = cmp__deadline_min(deadline, &next);
        }
        rc = cmp__futex_wait(&p->seq, v, until);
        if ((rc == -EINTR && intr) || (rc == -ETIMEDOUT && cmp__deadline_passed(deadline))) {
            cmp__store_relaxed(&p->waiters, 0);
            int got = seen_change(e, cmp__load_acquire(&p->seq));
            return got ? (got < 0 ? got : 0) : rc;
        }
    }
}

int cmp__mbox_sendv(struct cmp__mbox_end *e, const struct iovec *iov, int iovcnt,
                    const struct timespec *deadline)
{
    struct cmp__mbox *m = e->m;
    uint64_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (cmp__mbox_is_closed(m))
        return -ESHUTDOWN;
    uint64_t off = 0;
    int i = 0;
    size_t in = 0; /* bytes of iov[i] already sent */
    for (;;) {
        size_t n = 0;
        while (n < e->data_size && i < iovcnt) {
            size_t take = iov[i].iov_len - in;
            if (take > e->data_size - n)
                take = e->data_size - n;
            if (take) /* an empty piece may have no buffer at all */
                memcpy(m->data + n, (const char *)iov[i].iov_base + in, take);
            n += take;
            in += take;
            if (in == iov[i].iov_len) {
                i++;
                in = 0;
            }
        }
        m->msg_len = total;
        m->chunk_off = off;
        m->chunk_len = n;
        off += n;
        post(e);
        if (off >= total)
            return 0;
        int rc = wait_peer(e, 0, deadline); /* the peer's ack */
        if (rc < 0)
            return rc;
    }
}

void *cmp__mbox_buf_room(void *arg, size_t len)
{
    struct cmp__mbox_buf *b = arg;
    void *p = cmp__grow(b->data, &b->cap, len);
    if (p)
        b->data = p;
    return p;
}

int cmp__mbox_recv(struct cmp__mbox_end *e, struct cmp__mbox_buf *buf, size_t *len, int intr,
                   const struct timespec *deadline)
{
    struct cmp__mbox *m = e->m;
    int rc = wait_peer(e, intr, deadline);
    if (rc < 0)
        return rc;
    uint64_t total = __atomic_load_n(&m->msg_len, __ATOMIC_RELAXED), got = 0;
    for (;;) {
        uint64_t off = __atomic_load_n(&m->chunk_off, __ATOMIC_RELAXED);
        uint64_t n = __atomic_load_n(&m->chunk_len, __ATOMIC_RELAXED);
        if (off != got || n > e->data_size || n > total - got ||
            __atomic_load_n(&m->msg_len, __ATOMIC_RELAXED) != total || (n == 0 && got < total))
            return -EPROTO;
        /* The claimed total is not allocated up front: the buffer grows
         * with the bytes that really arrive. */
        if (!cmp__mbox_buf_room(buf, got + n))
            return -ENOMEM;
        memcpy(buf->data + got, m->data, n);
        got += n;
        if (got == total)
            break;
        post(e); /* ack: the next chunk may come */
        if ((rc = wait_peer(e, 0, deadline)) < 0)
            return rc == -ETIMEDOUT ? -ECONNABORTED : rc;
    }
    *len = (size_t)total;
    return 0;
}
