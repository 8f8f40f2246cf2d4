/*
 * Message ring: a power-of-two byte area after a header, in shared memory.
 *
 * Positions. `tail` and `head` are 64-bit words: the low 36 bits are a byte
 * position (modulo 2^36, far more than the largest capacity, so used bytes
 * are (tail - head) mod 2^36), the high 28 bits count whole messages. One
 * release store of `tail` therefore publishes a message's bytes and its
 * count together: a producer that dies at any point before it leaves
 * nothing visible and the message count stays exact with no repair. The
 * same holds for `head` on the consumer side. At most capacity/8 messages
 * fit in the ring, so 28 bits of count never alias.
 *
 * Records, 8-byte aligned, may wrap around the end of the area:
 *     [u32 len | u32 flags][payload, len bytes, padded to 8]
 * A message of up to capacity/2 bytes is one record FIRST|LAST. A larger
 * one is a stream: a FIRST record whose payload starts with the u64 total
 * length, continuation records, and a LAST one; the producer holds the
 * producer lock throughout and publishes each chunk as it is written, the
 * consumer holds the consumer lock and copies each chunk as it arrives.
 *
 * Crashes. The producer sets `pstream` before publishing a stream's first
 * chunk. Whoever takes the producer lock over from a dead holder (the next
 * producer, or the consumer waiting for the rest of the stream, which
 * checks the holder's liveness every CMP__OWNER_CHECK_NS) finds `pstream`
 * and publishes an ABORT record after the chunks already there. Producers
 * keep 8 bytes of the area free at all times so that this record always
 * fits at once. A consumer drops a stream when it meets ABORT, and skips
 * continuation records at a message boundary: they are what a consumer that
 * died midway through a stream left behind. No consumer-side state is
 * needed to recover.
 *
 * Waiting. Only the holder of the consumer lock ever waits for data and
 * only the holder of the producer lock for space, so each side has one
 * sleeper at most: a futex sequence word and a waiter flag (Dekker pair:
 * the waiter sets the flag, fences and rechecks; the other side publishes,
 * fences and wakes only when the flag is set). A short spin comes first,
 * since the other side usually runs on another core.
 */
#include "atomic.h"
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <sched.h>
#include <string.h>
#include <sys/uio.h>

const struct timespec cmp_nowait = {0, 0};

/* The data area follows the header; producer and consumer fields sit on
 * cache lines of their own. */
_Static_assert(sizeof(cmp_ring_t) == 192, "cmp_ring_t layout");
_Static_assert(offsetof(cmp_ring_t, tail) == 64, "cmp_ring_t layout");
_Static_assert(offsetof(cmp_ring_t, head) == 128, "cmp_ring_t layout");
_Static_assert(offsetof(cmp_queue_t, ring) == 64, "cmp_queue_t layout");

#define POS_BITS 36
#define POS_MASK ((UINT64_C(1) << POS_BITS) - 1)
#define CNT_MASK ((UINT64_C(1) << (64 - POS_BITS)) - 1)
#define POS(w) ((w)&POS_MASK)
#define CNT(w) ((w) >> POS_BITS)
#define MAKE(pos, cnt) (((pos)&POS_MASK) | (((uint64_t)(cnt)&CNT_MASK) << POS_BITS))

#define F_FIRST 1u
#define F_LAST 2u
#define F_ABORT 4u

#define HDR 8u
#define RESERVE 8u /* always free: room for an ABORT record */
#define CHUNK_MAX (1u << 20)

/* Spins on the other side's position before sleeping. Each round is a
 * pause plus a load: a few tens of microseconds in all, below the cost of a
 * futex wake-up round trip. */
#define RING_SPIN 2000

#define ROUND8(n) (((n) + 7) & ~(uint64_t)7)

struct rec_hdr {
    uint32_t len;
    uint32_t flags;
};

static inline int is_nowait(const struct timespec *d)
{
    return d && d->tv_sec == 0 && d->tv_nsec == 0;
}

static inline uint8_t *ring_data(cmp_ring_t *r)
{
    return (uint8_t *)(r + 1);
}

static size_t round_capacity(size_t capacity)
{
    if (capacity == 0)
        capacity = CMP_RING_DEFAULT_CAPACITY;
    size_t c = CMP_RING_MIN_CAPACITY;
    while (c < capacity && c < CMP_RING_MAX_CAPACITY)
        c <<= 1;
    return c;
}

size_t cmp_ring_footprint(size_t capacity)
{
    return sizeof(cmp_ring_t) + round_capacity(capacity);
}

int cmp_ring_init(cmp_ring_t *ring, size_t capacity, uint64_t max_count)
{
    if (capacity > CMP_RING_MAX_CAPACITY || max_count > CMP_QUEUE_MAXSIZE_MAX)
        return -EINVAL;
    memset(ring, 0, sizeof *ring);
    ring->capacity = round_capacity(capacity);
    ring->max_count = max_count;
    cmp_lock_init(&ring->plock);
    cmp_lock_init(&ring->clock);
    return 0;
}

size_t cmp_ring_capacity(const cmp_ring_t *ring)
{
    return (size_t)ring->capacity;
}

/* --- copies in and out of the area, wrapping ---------------------------- */

static void copy_in(cmp_ring_t *r, uint64_t pos, const void *src, size_t n)
{
    const uint64_t mask = r->capacity - 1;
    size_t off = (size_t)(pos & mask);
    size_t first = (size_t)r->capacity - off;
    if (first >= n) {
        memcpy(ring_data(r) + off, src, n);
    } else {
        memcpy(ring_data(r) + off, src, first);
        memcpy(ring_data(r), (const uint8_t *)src + first, n - first);
    }
}

static void copy_out(cmp_ring_t *r, uint64_t pos, void *dst, size_t n)
{
    const uint64_t mask = r->capacity - 1;
    size_t off = (size_t)(pos & mask);
    size_t first = (size_t)r->capacity - off;
    if (first >= n) {
        memcpy(dst, ring_data(r) + off, n);
    } else {
        memcpy(dst, ring_data(r) + off, first);
        memcpy((uint8_t *)dst + first, ring_data(r), n - first);
    }
}

static inline struct rec_hdr read_hdr(cmp_ring_t *r, uint64_t pos)
{
    /* 8-byte aligned and the area is a multiple of 8: never split */
    struct rec_hdr h;
    memcpy(&h, ring_data(r) + (pos & (r->capacity - 1)), sizeof h);
    return h;
}

static inline void write_hdr(cmp_ring_t *r, uint64_t pos, uint32_t len, uint32_t flags)
{
    struct rec_hdr h = {len, flags};
    memcpy(ring_data(r) + (pos & (r->capacity - 1)), &h, sizeof h);
}

/* A read position over an array of iovecs. */
struct cursor {
    const struct iovec *iov;
    int cnt;
    int i;
    size_t off;
};

static void cursor_copy_in(cmp_ring_t *r, uint64_t pos, struct cursor *c, size_t n)
{
    while (n > 0) {
        while (c->off == c->iov[c->i].iov_len) {
            c->i++;
            c->off = 0;
        }
        size_t k = c->iov[c->i].iov_len - c->off;
        if (k > n)
            k = n;
        copy_in(r, pos, (const uint8_t *)c->iov[c->i].iov_base + c->off, k);
        pos += k;
        c->off += k;
        n -= k;
    }
}

/* --- waking -------------------------------------------------------------- */

static void notify_data(cmp_ring_t *r)
{
    cmp__fence_seq_cst(); /* pairs with the fence in wait_data */
    if (cmp__load_relaxed(&r->data_waiters) && cmp__swap_acq_rel(&r->data_waiters, 0)) {
        cmp__fetch_add(&r->data_seq, 1);
        cmp__futex_wake(&r->data_seq, 1);
    }
}

static void notify_space(cmp_ring_t *r)
{
    cmp__fence_seq_cst(); /* pairs with the fence in wait_space */
    if (cmp__load_relaxed(&r->space_waiters) && cmp__swap_acq_rel(&r->space_waiters, 0)) {
        cmp__fetch_add(&r->space_seq, 1);
        cmp__futex_wake(&r->space_seq, 1);
    }
}

void cmp_ring_close(cmp_ring_t *ring)
{
    __atomic_store_n(&ring->closed, 1, __ATOMIC_SEQ_CST);
    cmp__fetch_add(&ring->data_seq, 1);
    cmp__fetch_add(&ring->space_seq, 1);
    cmp__futex_wake(&ring->data_seq, INT_MAX);
    cmp__futex_wake(&ring->space_seq, INT_MAX);
}

int cmp_ring_is_closed(const cmp_ring_t *ring)
{
    return (int)__atomic_load_n(&ring->closed, __ATOMIC_ACQUIRE);
}

/* --- locks --------------------------------------------------------------- */

/* Non-blocking take of a side lock. A holder that sleeps on `sleeping`
 * (waiting for data or space) means the attempt fails; a holder that is
 * only copying is waited for, briefly, since "the queue was busy" is not a
 * reason for put_nowait/get_nowait to fail. */
static int lock_nowait(cmp_lock_t *lock, const uint32_t *sleeping)
{
    struct timespec give_up;
    cmp__deadline_in_ns(&give_up, 5 * 1000 * 1000);
    for (unsigned i = 0;; i++) {
        if (cmp_lock_tryacquire(lock) == 0)
            return 0;
        if (cmp__load_relaxed(sleeping))
            return -EAGAIN;
        if ((i & 63) == 63) {
            pid_t holder = cmp_lock_holder(lock);
            if (holder != 0 && !cmp_pid_alive(holder)) {
                struct timespec past = {0, 1};
                int rc = cmp_lock_acquire(lock, &past);
                if (rc >= 0)
                    return rc;
            }
            if (cmp__deadline_passed(&give_up))
                return -EAGAIN;
            sched_yield();
        }
        cmp__cpu_relax();
    }
}

static int write_abort(cmp_ring_t *r)
{
    /* the RESERVE bytes guarantee room */
    uint64_t t = cmp__load64_relaxed(&r->tail);
    write_hdr(r, POS(t), 0, F_ABORT);
    /* release: consumers must see the ABORT header */
    cmp__store64_release(&r->tail, MAKE(POS(t) + HDR, CNT(t)));
    cmp__store_relaxed(&r->pstream, 0);
    notify_data(r);
    return 0;
}

/* Repairs the producer side after taking the lock over from a dead holder. */
static void producer_recover(cmp_ring_t *r)
{
    cmp__store_relaxed(&r->space_waiters, 0);
    if (cmp__load_relaxed(&r->pstream))
        write_abort(r);
}

static int plock_acquire(cmp_ring_t *r, const struct timespec *deadline)
{
    int rc = is_nowait(deadline) ? lock_nowait(&r->plock, &r->space_waiters)
                                 : cmp_lock_acquire(&r->plock, deadline);
    if (rc == CMP_OWNER_DIED) {
        producer_recover(r);
        rc = 0;
    }
    return rc;
}

static int clock_acquire(cmp_ring_t *r, const struct timespec *deadline)
{
    int rc = is_nowait(deadline) ? lock_nowait(&r->clock, &r->data_waiters)
                                 : cmp_lock_acquire(&r->clock, deadline);
    if (rc == CMP_OWNER_DIED) {
        cmp__store_relaxed(&r->data_waiters, 0);
        rc = 0;
    }
    return rc;
}

/* --- producer side --------------------------------------------------------- */

static inline int has_room(cmp_ring_t *r, uint64_t t, uint64_t h, uint64_t need, int slot)
{
    uint64_t used = (POS(t) - POS(h)) & POS_MASK;
    if (used + need + RESERVE > r->capacity)
        return 0;
    if (slot && r->max_count && ((CNT(t) - CNT(h)) & CNT_MASK) >= r->max_count)
        return 0;
    return 1;
}

/* Holding the producer lock, waits until `need` bytes (and, if slot, one
 * message slot) are free past the local tail t. */
static int wait_space(cmp_ring_t *r, uint64_t t, uint64_t need, int slot,
                      const struct timespec *deadline)
{
    for (int spin = 0; spin < RING_SPIN; spin++) {
        if (has_room(r, t, cmp__load64_acquire(&r->head), need, slot))
            return 0;
        if (cmp_ring_is_closed(r))
            return -EPIPE;
        if (is_nowait(deadline))
            return -EAGAIN;
        cmp__cpu_relax();
    }
    for (;;) {
        uint32_t seq = cmp__load_acquire(&r->space_seq);
        cmp__store_relaxed(&r->space_waiters, 1);
        cmp__fence_seq_cst(); /* pairs with the fence in notify_space */
        if (has_room(r, t, cmp__load64_acquire(&r->head), need, slot)) {
            cmp__store_relaxed(&r->space_waiters, 0);
            return 0;
        }
        if (cmp_ring_is_closed(r)) {
            cmp__store_relaxed(&r->space_waiters, 0);
            return -EPIPE;
        }
        int rc = cmp__futex_wait(&r->space_seq, seq, deadline);
        if (rc == -EINTR || (rc == -ETIMEDOUT && cmp__deadline_passed(deadline))) {
            cmp__store_relaxed(&r->space_waiters, 0);
            if (has_room(r, t, cmp__load64_acquire(&r->head), need, slot))
                return 0;
            return rc;
        }
    }
}

/* Producer state while it holds the lock: the local tail, and how much of
 * it is published. */
struct prod {
    cmp_ring_t *r;
    uint64_t t;
    uint64_t published;
};

static void publish(struct prod *p)
{
    if (p->t == p->published)
        return;
    /* release: a consumer that sees this tail sees every byte before it */
    cmp__store64_release(&p->r->tail, p->t);
    p->published = p->t;
    notify_data(p->r);
}

static int prod_wait(struct prod *p, uint64_t need, int slot, const struct timespec *deadline)
{
    if (has_room(p->r, p->t, cmp__load64_acquire(&p->r->head), need, slot))
        return 0;
    publish(p); /* consumers can free space only of what they see */
    return wait_space(p->r, p->t, need, slot, deadline);
}

static size_t iov_total(const struct iovec *iov, int cnt)
{
    size_t n = 0;
    for (int i = 0; i < cnt; i++)
        n += iov[i].iov_len;
    return n;
}

static size_t whole_max(const cmp_ring_t *r)
{
    return (size_t)(r->capacity / 2 - HDR);
}

static size_t chunk_max(const cmp_ring_t *r)
{
    uint64_t c = r->capacity / 4;
    if (c > CHUNK_MAX)
        c = CHUNK_MAX;
    return (size_t)(c - HDR);
}

/* Writes one message at the local tail, publishing as it must. */
static int prod_message(struct prod *p, const struct iovec *iov, int cnt,
                        const struct timespec *deadline)
{
    cmp_ring_t *r = p->r;
    size_t len = iov_total(iov, cnt);
    struct cursor c = {iov, cnt, 0, 0};

    if (len <= whole_max(r)) {
        uint64_t rec = HDR + ROUND8(len);
        int rc = prod_wait(p, rec, 1, deadline);
        if (rc < 0)
            return rc;
        write_hdr(r, POS(p->t), (uint32_t)len, F_FIRST | F_LAST);
        cursor_copy_in(r, POS(p->t) + HDR, &c, len);
        p->t = MAKE(POS(p->t) + rec, CNT(p->t) + 1);
        return 0;
    }

    /* Stream. The first record carries the total length. */
    const size_t cmax = chunk_max(r);
    size_t left = len;
    int first = 1;
    while (left > 0 || first) {
        size_t extra = first ? 8 : 0;
        size_t n = cmax - extra;
        if (n > left)
            n = left;
        int last = n == left;
        uint64_t rec = HDR + ROUND8(extra + n);
        int rc = prod_wait(p, rec, first, deadline);
        if (rc < 0) {
            if (!first) {
                publish(p);
                write_abort(r);
                p->published = p->t = cmp__load64_relaxed(&r->tail);
            }
            return rc;
        }
        uint64_t pos = POS(p->t);
        write_hdr(r, pos, (uint32_t)(extra + n),
                  (first ? F_FIRST : 0) | (last ? F_LAST : 0));
        if (first) {
            uint64_t total = len;
            copy_in(r, pos + HDR, &total, 8);
        }
        cursor_copy_in(r, pos + HDR + extra, &c, n);
        p->t = MAKE(pos + rec, CNT(p->t) + (last ? 1 : 0));
        if (first && !last)
            cmp__store_relaxed(&r->pstream, 1); /* before the chunk is seen */
        if (last) {
            publish(p);
            cmp__store_relaxed(&r->pstream, 0);
        } else {
            publish(p);
        }
        left -= n;
        first = 0;
    }
    return 0;
}

long cmp_ring_put_many(cmp_ring_t *ring, const struct iovec *iov, const unsigned *counts,
                       size_t nmsg, const struct timespec *deadline)
{
    if (nmsg == 0)
        return 0;
    if (cmp_ring_is_closed(ring))
        return -EPIPE;
    int rc = plock_acquire(ring, deadline);
    if (rc < 0)
        return rc == -ETIMEDOUT && is_nowait(deadline) ? -EAGAIN : rc;
    struct prod p = {ring, cmp__load64_relaxed(&ring->tail), 0};
    p.published = p.t;
    size_t done = 0;
    for (; done < nmsg; done++) {
        int cnt = counts ? (int)counts[done] : 1;
        rc = prod_message(&p, iov, cnt, deadline);
        if (rc < 0)
            break;
        iov += cnt;
    }
    publish(&p);
    cmp_lock_release(&ring->plock);
    return done > 0 ? (long)done : rc;
}

int cmp_ring_putv(cmp_ring_t *ring, const struct iovec *iov, int iovcnt,
                  const struct timespec *deadline)
{
    if (iovcnt < 0)
        return -EINVAL;
    unsigned cnt = (unsigned)iovcnt;
    long rc = cmp_ring_put_many(ring, iov, &cnt, 1, deadline);
    return rc == 1 ? 0 : (int)rc;
}

int cmp_ring_put(cmp_ring_t *ring, const void *data, size_t len,
                 const struct timespec *deadline)
{
    struct iovec iov = {(void *)data, len};
    return cmp_ring_putv(ring, &iov, 1, deadline);
}

/* --- consumer side --------------------------------------------------------- */

/* Mid-stream, the producer's lock holder is dead: take the lock over, which
 * publishes the ABORT record, and let go again. */
static void rescue_producer(cmp_ring_t *r)
{
    pid_t holder = cmp_lock_holder(&r->plock);
    if (holder == 0 || cmp_pid_alive(holder))
        return;
    struct timespec past = {0, 1};
    if (plock_acquire(r, &past) == 0)
        cmp_lock_release(&r->plock);
}

/* Holding the consumer lock, waits until the tail moves past position h.
 * In a stream the caller's deadline and signals are ignored (the message
 * must be finished), but the producer's liveness is checked. */
static int wait_data(cmp_ring_t *r, uint64_t h, int in_stream, const struct timespec *deadline)
{
    for (int spin = 0; spin < RING_SPIN; spin++) {
        if (POS(cmp__load64_acquire(&r->tail)) != POS(h))
            return 0;
        if (!in_stream) {
            if (cmp_ring_is_closed(r))
                return -EPIPE;
            if (is_nowait(deadline))
                return -EAGAIN;
        }
        cmp__cpu_relax();
    }
    for (;;) {
        uint32_t seq = cmp__load_acquire(&r->data_seq);
        cmp__store_relaxed(&r->data_waiters, 1);
        cmp__fence_seq_cst(); /* pairs with the fence in notify_data */
        if (POS(cmp__load64_acquire(&r->tail)) != POS(h)) {
            cmp__store_relaxed(&r->data_waiters, 0);
            return 0;
        }
        if (!in_stream && cmp_ring_is_closed(r)) {
            cmp__store_relaxed(&r->data_waiters, 0);
            return -EPIPE;
        }
        const struct timespec *until = in_stream ? NULL : deadline;
        struct timespec check;
        if (in_stream) {
            cmp__deadline_in_ns(&check, CMP__OWNER_CHECK_NS);
            until = &check;
        }
        int rc = cmp__futex_wait(&r->data_seq, seq, until);
        if (in_stream) {
            if (rc == -ETIMEDOUT)
                rescue_producer(r);
            continue;
        }
        if (rc == -EINTR || (rc == -ETIMEDOUT && cmp__deadline_passed(deadline))) {
            cmp__store_relaxed(&r->data_waiters, 0);
            if (POS(cmp__load64_acquire(&r->tail)) != POS(h))
                return 0;
            return rc;
        }
    }
}

struct cons {
    cmp_ring_t *r;
    uint64_t h;
    uint64_t stored;
};

static void cons_store(struct cons *c)
{
    if (c->h == c->stored)
        return;
    /* release: the producer that sees this head may overwrite what was
     * read before it */
    cmp__store64_release(&c->r->head, c->h);
    c->stored = c->h;
    notify_space(c->r);
}

/* Takes one message at the local head. wait: block for the first record
 * (otherwise -EAGAIN when there is none). Returns 0, or a negative errno. */
static int cons_message(struct cons *c, cmp_ring_alloc_fn alloc, void *arg, int wait,
                        const struct timespec *deadline)
{
    cmp_ring_t *r = c->r;
    for (;;) {
        if (POS(cmp__load64_acquire(&r->tail)) == POS(c->h)) {
            if (!wait)
                return -EAGAIN;
            cons_store(c); /* the producer may be waiting for space */
            int rc = wait_data(r, c->h, 0, deadline);
            if (rc < 0)
                return rc;
        }
        struct rec_hdr hd = read_hdr(r, POS(c->h));
        uint64_t rec = HDR + ROUND8(hd.len);
        if ((hd.flags & F_ABORT) || !(hd.flags & F_FIRST)) {
            /* an aborted stream's marker, or what a dead consumer left of a
             * stream: drop it (a LAST chunk ends a message that counted) */
            c->h = MAKE(POS(c->h) + rec, CNT(c->h) + ((hd.flags & F_LAST) ? 1 : 0));
            continue;
        }
        if (hd.flags & F_LAST) {
            void *dst = alloc(arg, hd.len);
            if (!dst)
                return -ENOBUFS;
            copy_out(r, POS(c->h) + HDR, dst, hd.len);
            c->h = MAKE(POS(c->h) + rec, CNT(c->h) + 1);
            return 0;
        }
        /* a stream */
        uint64_t total;
        copy_out(r, POS(c->h) + HDR, &total, 8);
        uint8_t *dst = alloc(arg, (size_t)total);
        if (!dst)
            return -ENOBUFS;
        size_t off = hd.len - 8;
        copy_out(r, POS(c->h) + HDR + 8, dst, off);
        c->h = MAKE(POS(c->h) + rec, CNT(c->h));
        for (;;) {
            cons_store(c);
            if (POS(cmp__load64_acquire(&r->tail)) == POS(c->h))
                wait_data(r, c->h, 1, NULL);
            hd = read_hdr(r, POS(c->h));
            rec = HDR + ROUND8(hd.len);
            if (hd.flags & (F_ABORT | F_FIRST)) {
                /* the producer died or gave up; FIRST cannot follow a live
                 * stream, but a corrupt sequence must not be delivered */
                if (hd.flags & F_ABORT)
                    c->h = MAKE(POS(c->h) + rec, CNT(c->h));
                return -ECONNABORTED;
            }
            if (off + hd.len > total) /* impossible: never deliver it */
                return -ECONNABORTED;
            copy_out(r, POS(c->h) + HDR, dst + off, hd.len);
            off += hd.len;
            c->h = MAKE(POS(c->h) + rec, CNT(c->h) + ((hd.flags & F_LAST) ? 1 : 0));
            if (hd.flags & F_LAST) {
                if (off != total)
                    return -ECONNABORTED;
                return 0;
            }
        }
    }
}

long cmp_ring_get_many(cmp_ring_t *ring, cmp_ring_alloc_fn alloc, void *arg, size_t max,
                       const struct timespec *deadline)
{
    if (max == 0)
        return 0;
    int rc = clock_acquire(ring, deadline);
    if (rc < 0) {
        if (rc == -ETIMEDOUT && is_nowait(deadline))
            rc = -EAGAIN;
        if (rc == -EAGAIN && cmp_ring_is_closed(ring) && cmp_ring_count(ring) == 0)
            rc = -EPIPE;
        return rc;
    }
    struct cons c = {ring, cmp__load64_relaxed(&ring->head), 0};
    c.stored = c.h;
    size_t got = 0;
    for (; got < max; got++) {
        rc = cons_message(&c, alloc, arg, got == 0, deadline);
        if (rc < 0)
            break;
    }
    cons_store(&c);
    cmp_lock_release(&ring->clock);
    if (got > 0)
        return (long)got;
    return rc;
}

int cmp_ring_get(cmp_ring_t *ring, cmp_ring_alloc_fn alloc, void *arg,
                 const struct timespec *deadline)
{
    long rc = cmp_ring_get_many(ring, alloc, arg, 1, deadline);
    return rc == 1 ? 0 : (int)rc;
}

int cmp_ring_wait(cmp_ring_t *ring, const struct timespec *deadline)
{
    int rc = clock_acquire(ring, deadline);
    if (rc < 0)
        return rc == -ETIMEDOUT && is_nowait(deadline) ? -EAGAIN : rc;
    struct cons c = {ring, cmp__load64_relaxed(&ring->head), 0};
    c.stored = c.h;
    for (;;) {
        if (POS(cmp__load64_acquire(&ring->tail)) == POS(c.h)) {
            cons_store(&c);
            rc = wait_data(ring, c.h, 0, deadline);
            if (rc < 0)
                break;
        }
        struct rec_hdr hd = read_hdr(ring, POS(c.h));
        if ((hd.flags & F_ABORT) || !(hd.flags & F_FIRST)) {
            c.h = MAKE(POS(c.h) + HDR + ROUND8(hd.len),
                       CNT(c.h) + ((hd.flags & F_LAST) ? 1 : 0));
            continue;
        }
        rc = 1;
        break;
    }
    cons_store(&c);
    cmp_lock_release(&ring->clock);
    return rc;
}

uint64_t cmp_ring_count(const cmp_ring_t *ring)
{
    /* head first: the tail read after it is newer, so the difference never
     * goes below zero */
    uint64_t h = cmp__load64_acquire(&ring->head);
    uint64_t t = cmp__load64_acquire(&ring->tail);
    return (CNT(t) - CNT(h)) & CNT_MASK;
}

size_t cmp_ring_used(const cmp_ring_t *ring)
{
    uint64_t h = cmp__load64_acquire(&ring->head);
    uint64_t t = cmp__load64_acquire(&ring->tail);
    return (size_t)((POS(t) - POS(h)) & POS_MASK);
}
