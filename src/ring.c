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
 * Spill. A ring may have a spill file (a memfd): a second FIFO of records
 *     [u64 len][payload, len bytes]
 * at stream positions that only grow (the file offset is the position
 * modulo 2^36: the file is a sparse circle of 64 GiB). `spill_tail` and
 * `spill_head` pack position and message count as `tail` and `head` do, so
 * one release store publishes a record and counts it. A producer appends a
 * message to the spill (one pwritev from its buffers) when the ring has no
 * room for it now, when it is larger than capacity/2, or when the spill is
 * not empty; so a put waits only for max_count. A consumer takes from the
 * ring when it has a message, else from the spill (one preadv into the
 * buffer alloc returned), and gives whole consumed pages back with
 * FALLOC_FL_PUNCH_HOLE (`spill_freed` records how far, so a consumer killed
 * before punching leaves nothing behind for good; pages go back SPILL_FREE_BATCH
 * bytes at a time, or all once the spill is drained). A consumer reads
 * small records ahead (see "Read-ahead" at cons_spill). Crashes: a producer
 * killed mid-write has published nothing and the next one writes over its
 * bytes; a consumer killed mid-read has not moved `spill_head`, so the
 * record is delivered to the next.
 *
 * Order. Invariant: while the spill holds a record, every record in the
 * ring is older than every record in the spill. A producer writes to the
 * ring only when it sees the spill empty (spill_head == its spill_tail,
 * under the producer lock), that is once every spill record has been
 * consumed; a consumer takes from the spill only when it sees the ring
 * empty. The consumer must never see a spill record S without the ring
 * records published before S: S's producer published them (ring `tail`,
 * release) before it published S (`spill_tail`, release), in program order
 * or, for another producer, before releasing the producer lock that S's
 * producer then acquired. The consumer loads `spill_tail` (acquire) first
 * and `tail` after it, so a `spill_tail` that shows S synchronizes with
 * S's store and the later load of `tail` shows every ring record published
 * before S: if one is left, the ring is not empty and is served first. In a
 * batch the producer keeps the same order: the ring's tail is published
 * before the spill's.
 *
 * Streaming to a waiting consumer. Spilling a big message costs several
 * times what streaming it costs (the file's pages are allocated, written,
 * read and freed), so a producer whose message is larger than capacity/2
 * streams it through the ring instead when the spill is empty and a
 * consumer waits for data (`data_wanted`, set around the consumer's wait;
 * the producer also looks for one arriving for a bound proportional to the
 * message, at most a few ms, since a consumer between two gets is the
 * common case). The put still never waits for a consumer beyond a bound:
 * the stream's FIRST record is marked GATED; chunks carry no LAST and no
 * count; `sgate` is set OPEN before the first chunk is published. The
 * consumer, once it has copied every byte, stores its head and takes the
 * message with a CAS OPEN -> TAKEN; the producer then publishes an empty
 * LAST record, which is what counts the message (tail's count, so qsize
 * and unfinished tasks never count it twice). If the consumer makes no
 * progress for STREAM_STALL_NS (stalled, or dead: its head stops), or the
 * stream takes longer than spilling would have, the producer CASes OPEN ->
 * ABORTED (it cannot fail before every byte is out; after, one CAS wins:
 * exactly one of "the consumer has it" and "the producer takes it back"),
 * publishes ABORT after its chunks and appends the whole message to the
 * spill. The consumer that loses the CAS, or meets ABORT, returns
 * -ECONNABORTED having delivered nothing; a consumer that took over from a
 * dead one skips the chunks and ABORT at a message boundary as it does for
 * any stream. `sgate` always refers to the last stream begun: a new one
 * needs the plock (released only after TAKEN or ABORTED) and an empty
 * spill (so a respilled message is consumed, past its ABORT, first).
 * Order: when the message is respilled the spill was empty since the
 * stream began (the producer held the lock), and the ring holds only
 * older records and the aborted stream, which is no message; so "every
 * ring record is older than every spill record" holds. A producer killed
 * mid-stream is handled as for any stream (pstream -> ABORT); one killed
 * after TAKEN and before the LAST record loses the message, as a put that
 * did not return may. A consumer killed after its CAS and before storing
 * the final head had the message: the CAS is its commit point, as the
 * store of `spill_head` is for a spill record.
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
#include "spin.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

const struct timespec cmp_nowait = {0, 0};

/* The data area follows the header; producer and consumer fields sit on
 * cache lines of their own. */
_Static_assert(sizeof(cmp_ring_t) == 256, "cmp_ring_t layout");
_Static_assert(offsetof(cmp_ring_t, tail) == 64, "cmp_ring_t layout");
_Static_assert(offsetof(cmp_ring_t, head) == 128, "cmp_ring_t layout");
_Static_assert(offsetof(cmp_ring_t, data_seq) == 192, "cmp_ring_t layout");
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
#define F_GATED 8u /* a queue's stream: see "Streaming to a waiting consumer" */

#define HDR 8u
#define RESERVE 8u /* always free: room for an ABORT record */
#define CHUNK_MAX (1u << 20)

/* Spins on the other side's position before sleeping. Each round is a
 * pause plus a load: a few tens of microseconds in all, below the cost of a
 * futex wake-up round trip. */
#define RING_SPIN 2000

/* Bare rounds of a wait for data before the policy's spin (wait_data). */
#define RING_QUICK_SPINS 32

#define ROUND8(n) (((n) + 7) & ~(uint64_t)7)

/* Spill: the file is a circle of SPILL_SPAN bytes of offsets; records are
 * [u64 len][payload]. Pending bytes and messages stay well below what the
 * packed positions can tell apart. */
#define SPILL_SPAN (UINT64_C(1) << POS_BITS)
#define SPILL_HDR 8u
#define SPILL_MAX_BYTES (SPILL_SPAN - (UINT64_C(1) << 30))
#define SPILL_MAX_COUNT ((UINT64_C(1) << 27) - 1)
#define SPILL_PAGE UINT64_C(4096)
/* A consumer reads this much of the spill at once into its read-ahead
 * (SPILL_PEEK where that buffer could not be allocated). */
#define SPILL_AHEAD (64u << 10)
#define SPILL_PEEK 512u
/* Read ahead only where the pending records average at most this size. */
#define SPILL_AHEAD_RECORD 4096u
/* Consumed pages go back to the system this many bytes at a time (one
 * fallocate each), and all at once when the spill runs empty. */
#define SPILL_FREE_BATCH (UINT64_C(64) << 10)

struct rec_hdr {
    uint32_t len;
    uint32_t flags;
};

/* A read position over an array of iovecs. */
struct cursor {
    const struct iovec *iov;
    int cnt;
    int i;
    size_t off;
};

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
    ring->spill_fd = -1;
    ring->capacity = round_capacity(capacity);
    ring->max_count = max_count;
    ring->space_spin_ns = ring->data_spin_ns = CMP__SPIN_MAX_NS;
    cmp_lock_init(&ring->plock);
    cmp_lock_init(&ring->clock);
    return 0;
}

size_t cmp_ring_capacity(const cmp_ring_t *ring)
{
    return (size_t)ring->capacity;
}

int cmp_ring_set_spill(cmp_ring_t *ring, int fd)
{
    if (fd < 0)
        return -EINVAL;
    if (ring->spill_fd >= 0 || cmp__load64_acquire(&ring->tail) != 0)
        return -EBUSY;
    uint64_t id = 0;
    while (id == 0) /* 0 is a read-ahead's "holds nothing" */
        if (cmp__random_bytes(&id, sizeof id) < 0)
            return -EIO;
    ring->spill_id = id;
    ring->spill_fd = fd;
    return 0;
}

int cmp_ring_spill_fd(const cmp_ring_t *ring)
{
    return ring->spill_fd;
}

int cmp_spill_create(void)
{
    int fd = memfd_create("cmp-spill", MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fd < 3) {
        /* a child that reopens stdin (fd 0) must not lose the spill */
        int hi = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        int err = errno;
        close(fd);
        if (hi < 0)
            return -err;
        fd = hi;
    }
    return fd;
}

/* --- spill file I/O -------------------------------------------------------- */

/* Moves n bytes between the buffers under cursor c and the spill file at
 * stream position pos (file offset pos mod SPILL_SPAN, split where it wraps).
 * Returns 0 or a negative errno; the cursor has moved past what was done. */
static int spill_xfer(int fd, struct cursor *c, uint64_t pos, size_t n, int write)
{
    struct iovec v[64];
    while (n > 0) {
        uint64_t off = pos & POS_MASK;
        size_t seg = n;
        if (seg > SPILL_SPAN - off)
            seg = (size_t)(SPILL_SPAN - off);
        int k = 0, i = c->i;
        size_t o = c->off, got = 0;
        while (got < seg && k < 64) {
            if (o == c->iov[i].iov_len) {
                i++;
                o = 0;
                continue;
            }
            size_t len = c->iov[i].iov_len - o;
            if (len > seg - got)
                len = seg - got;
            v[k].iov_base = (uint8_t *)c->iov[i].iov_base + o;
            v[k].iov_len = len;
            k++;
            o += len;
            got += len;
        }
        ssize_t rc = write ? pwritev(fd, v, k, (off_t)off) : preadv(fd, v, k, (off_t)off);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (rc == 0)
            return -EIO; /* a read past the end: never written */
        size_t done = (size_t)rc;
        pos += done;
        n -= done;
        while (done > 0) {
            if (c->off == c->iov[c->i].iov_len) {
                c->i++;
                c->off = 0;
                continue;
            }
            size_t len = c->iov[c->i].iov_len - c->off;
            if (len > done)
                len = done;
            c->off += len;
            done -= len;
        }
    }
    return 0;
}

static int spill_read(int fd, void *dst, size_t n, uint64_t pos)
{
    struct iovec iov = {dst, n};
    struct cursor c = {&iov, 1, 0, 0};
    return spill_xfer(fd, &c, pos, n, 0);
}

/* Gives back the file's pages wholly below position `to`, from where the
 * last consumer stopped. Best effort: a failure only keeps memory. */
static void spill_free(cmp_ring_t *r, uint64_t to)
{
    uint64_t from = cmp__load64_relaxed(&r->spill_freed) & ~(SPILL_PAGE - 1);
    uint64_t end = POS(to) & ~(SPILL_PAGE - 1);
    uint64_t n = (end - from) & POS_MASK;
    if (n == 0 || (n < SPILL_FREE_BATCH && POS(cmp__load64_relaxed(&r->spill_tail)) != POS(to)))
        return;
    if (n > SPILL_SPAN - SPILL_MAX_BYTES) {
        /* further back, producers may be writing again (the file is a
         * circle): those pages are reused, and freed on the next round */
        n = SPILL_SPAN - SPILL_MAX_BYTES;
        from = end - n;
    }
    while (n > 0) {
        uint64_t off = from & POS_MASK;
        uint64_t seg = n;
        if (seg > SPILL_SPAN - off)
            seg = SPILL_SPAN - off;
        fallocate(r->spill_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)seg);
        from += seg;
        n -= seg;
    }
    cmp__store64_release(&r->spill_freed, end);
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

/*
 * One sleeper per side at most (it holds that side's lock). It announces
 * itself by storing sleeper_tag(seq) in the side's waiters word, where seq
 * is the futex word's value it is about to sleep on; never 0.
 *
 * The waker bumps the sequence, wakes, and only then clears the word, by a
 * compare-and-swap from the tag it saw. A waker killed anywhere in between
 * leaves the word set, so the next put or get wakes the sleeper (clearing
 * first, as a swap would, lost that sleeper for good: later wakers saw 0).
 * A sleeper that armed again meanwhile did so with the newer sequence, so
 * its tag differs and survives the swap; one that armed with the old tag
 * finds the sequence moved and does not sleep. If no later put or get ever
 * comes, the sleeper's periodic recheck (WAIT_RECHECK_NS) finds the data.
 */
static uint32_t sleeper_tag(uint32_t seq)
{
    return (seq << 1) | 1u;
}

static void notify(uint32_t *waiters, uint32_t *seq)
{
    cmp__fence_seq_cst(); /* pairs with the fence after the sleeper's tag */
    uint32_t tag = cmp__load_relaxed(waiters);
    if (tag) {
        cmp__fetch_add(seq, 1);
        cmp__futex_wake(seq, 1);
        cmp__cas_acq_rel(waiters, &tag, 0);
    }
}

static void notify_data(cmp_ring_t *r)
{
    cmp__spin_publish_cpu(&r->prod_cpu);
    notify(&r->data_waiters, &r->data_seq);
}

static void notify_space(cmp_ring_t *r)
{
    cmp__spin_publish_cpu(&r->cons_cpu);
    notify(&r->space_waiters, &r->space_seq);
}

/* A sleeper with no deadline rechecks this often, so that a waker killed
 * between its bump and its wake (with no put or get after it) costs a
 * second, not forever; an idle waiter wakes once a second. */
#define WAIT_RECHECK_NS (1000 * 1000 * 1000)

static const struct timespec *recheck_deadline(const struct timespec *deadline,
                                               struct timespec *check)
{
    cmp__deadline_in_ns(check, WAIT_RECHECK_NS);
    return cmp__deadline_min(deadline, check);
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
            if (cmp_lock_abandoned(lock)) {
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
    int rc = cmp__is_nowait(deadline) ? lock_nowait(&r->plock, &r->space_waiters)
                                      : cmp_lock_acquire(&r->plock, deadline);
    if (rc == CMP_OWNER_DIED) {
        producer_recover(r);
        rc = 0;
    }
    return rc;
}

static int clock_acquire(cmp_ring_t *r, const struct timespec *deadline)
{
    int rc = cmp__is_nowait(deadline) ? lock_nowait(&r->clock, &r->data_waiters)
                                      : cmp_lock_acquire(&r->clock, deadline);
    if (rc == CMP_OWNER_DIED) {
        cmp__store_relaxed(&r->data_waiters, 0);
        cmp__store_relaxed(&r->data_wanted, 0);
        rc = 0;
    }
    return rc;
}

/* --- producer side --------------------------------------------------------- */

/* Producer state while it holds the lock: the local tails of the ring and
 * of the spill, and how much of them is published. */
struct prod {
    cmp_ring_t *r;
    uint64_t t;
    uint64_t published;
    uint64_t st;
    uint64_t spublished;
};

/* RING_FULL: the spill can take it, but the ring would if a consumer made
 * room (the spill is empty). */
enum { NOWHERE = 0, TO_RING = 1, TO_SPILL = 2, RING_FULL = 3 };

/* How long a producer waits for a consumer that is draining the ring before
 * it spills instead: the ring is an order of magnitude faster than the
 * spill (whose pages are allocated, written, read and freed), so entering
 * the spill while a consumer keeps up would only slow both sides down. */
#define RING_FULL_WAIT_NS (10 * 1000 * 1000)
/* A consumer that is between two gets (no lock held, the head still) is
 * draining all the same if it comes back within this time: a Python
 * consumer takes tens of microseconds to build and free a 1 MiB object.
 * One that stays away longer (gone, dead, or busy elsewhere) is not. */
#define RING_FULL_IDLE_NS (2 * 1000 * 1000)

/* Where a record can go now. need: its bytes in the ring, 0 when it may not
 * go there; slot: it starts a message (counts against max_count); sneed: its
 * bytes in the spill, 0 when it may not go there. */
static int place_at(struct prod *p, uint64_t h, uint64_t sh, uint64_t need, int slot,
                    uint64_t sneed)
{
    cmp_ring_t *r = p->r;
    uint64_t scount = (CNT(p->st) - CNT(sh)) & CNT_MASK;
    if (slot && r->max_count && ((CNT(p->t) - CNT(h)) & CNT_MASK) + scount >= r->max_count)
        return NOWHERE;
    /* the ring only while the spill is empty: see "Order" */
    int ring_ok = need && POS(sh) == POS(p->st);
    if (ring_ok) {
        uint64_t used = (POS(p->t) - POS(h)) & POS_MASK;
        if (used + need + RESERVE <= r->capacity)
            return TO_RING;
    }
    if (sneed) {
        uint64_t sused = (POS(p->st) - POS(sh)) & POS_MASK;
        if (sused + sneed <= SPILL_MAX_BYTES && scount < SPILL_MAX_COUNT)
            return ring_ok ? RING_FULL : TO_SPILL;
    }
    return NOWHERE;
}

/* place_at() with the consumer's positions as a producer last loaded them
 * (head_seen, spill_head_seen: in the producer's own cache line), and only
 * if they do not show room in the ring, with the positions themselves: a
 * put into a ring with room then reads no line the consumer writes. The
 * hints are older than the positions, which only grow, so they
 * underestimate the room and overestimate the count: never a wrong
 * TO_RING. A stale spill_head_seen equal to our spill tail means empty:
 * only producers (under the lock we hold) add to the spill. They are
 * written under the producer lock, and were loaded with acquire by the
 * producer that wrote them, which released that lock after: a consumer's
 * reads before the head it published happen before our writes. */
static int place(struct prod *p, uint64_t need, int slot, uint64_t sneed)
{
    cmp_ring_t *r = p->r;
    uint64_t h = cmp__load64_relaxed(&r->head_seen);
    uint64_t sh = cmp__load64_relaxed(&r->spill_head_seen);
    int w = place_at(p, h, sh, need, slot, sneed);
    if (w == TO_RING)
        return w;
    h = cmp__load64_acquire(&r->head);
    sh = cmp__load64_acquire(&r->spill_head);
    cmp__store64_relaxed(&r->head_seen, h);
    cmp__store64_relaxed(&r->spill_head_seen, sh);
    return place_at(p, h, sh, need, slot, sneed);
}

/* Holding the producer lock, waits until place() finds room; returns where,
 * or a negative errno. */
static int wait_space(struct prod *p, uint64_t need, int slot, uint64_t sneed,
                      const struct timespec *deadline)
{
    cmp_ring_t *r = p->r;
    int w;
    if ((w = place(p, need, slot, sneed)))
        return w;
    if (cmp_ring_is_closed(r))
        return -EPIPE;
    if (cmp__is_nowait(deadline))
        return -EAGAIN;
    struct cmp__spin spin;
    if (cmp__spin_begin(&spin, &r->space_spin_ns, &r->cons_cpu, deadline)) {
        while (!(w = place(p, need, slot, sneed)) && !cmp_ring_is_closed(r) &&
               cmp__spin_more(&spin)) {
        }
        cmp__spin_end(&spin, &r->space_spin_ns, w != 0);
        if (w)
            return w;
    }
    for (;;) {
        uint32_t seq = cmp__load_acquire(&r->space_seq);
        cmp__store_relaxed(&r->space_waiters, sleeper_tag(seq));
        cmp__fence_seq_cst(); /* pairs with the fence in notify_space */
        if ((w = place(p, need, slot, sneed))) {
            cmp__store_relaxed(&r->space_waiters, 0);
            return w;
        }
        if (cmp_ring_is_closed(r)) {
            cmp__store_relaxed(&r->space_waiters, 0);
            return -EPIPE;
        }
        struct timespec check;
        int rc = cmp__futex_wait(&r->space_seq, seq, recheck_deadline(deadline, &check));
        if (rc == -EINTR || (rc == -ETIMEDOUT && cmp__deadline_passed(deadline))) {
            cmp__store_relaxed(&r->space_waiters, 0);
            if ((w = place(p, need, slot, sneed)))
                return w;
            return rc;
        }
    }
}

static void publish(struct prod *p)
{
    int moved = 0;
    if (p->t != p->published) {
        /* release: a consumer that sees this tail sees every byte before it */
        cmp__store64_release(&p->r->tail, p->t);
        p->published = p->t;
        moved = 1;
    }
    if (p->st != p->spublished) {
        /* release, after the ring's tail: a consumer that sees this spill
         * record sees the ring records put before it (see "Order") */
        cmp__store64_release(&p->r->spill_tail, p->st);
        p->spublished = p->st;
        moved = 1;
    }
    if (moved)
        notify_data(p->r);
}

/* The ring is full and the spill empty: waits (a bounded time) while a
 * consumer is draining the ring; spills when none is. The wait spins where
 * the policy lets it (spin.h: never while this thread competes for its
 * CPU, whatever the consumer's CPU, since the consumer needs one), then
 * sleeps in naps that the consumer's next get cuts short. */
#define RING_FULL_NAP_NS (200 * 1000)

static int wait_ring(struct prod *p, uint64_t need, int slot, uint64_t sneed,
                     const struct timespec *deadline)
{
    cmp_ring_t *r = p->r;
    uint64_t h0 = cmp__load64_relaxed(&r->head);
    struct timespec limit, idle;
    cmp__deadline_in_ns(&limit, RING_FULL_WAIT_NS);
    cmp__deadline_in_ns(&idle, RING_FULL_IDLE_NS);
    struct cmp__spin spin;
    int spinning =
        !cmp__spin_held() && cmp__spin_begin(&spin, &r->space_spin_ns, &r->cons_cpu, &limit);
    for (unsigned i = 1;; i++) {
        int w = place(p, need, slot, sneed);
        if (w != RING_FULL) {
            if (spinning)
                cmp__spin_end(&spin, &r->space_spin_ns, 1);
            return w ? w : wait_space(p, need, slot, sneed, deadline);
        }
        if (spinning) {
            if (cmp__spin_more(&spin)) {
                if ((i & 255) != 0)
                    continue;
            } else {
                cmp__spin_end(&spin, &r->space_spin_ns, 0);
                spinning = 0;
            }
        } else {
            uint32_t seq = cmp__load_acquire(&r->space_seq);
            cmp__store_relaxed(&r->space_waiters, sleeper_tag(seq));
            cmp__fence_seq_cst(); /* pairs with the fence in notify_space */
            if (place(p, need, slot, sneed) == RING_FULL && !cmp__deadline_passed(&limit)) {
                struct timespec nap;
                cmp__deadline_in_ns(&nap, RING_FULL_NAP_NS);
                cmp__futex_wait(&r->space_seq, seq, cmp__deadline_min(&limit, &nap));
            }
            cmp__store_relaxed(&r->space_waiters, 0);
        }
        uint64_t h = cmp__load64_relaxed(&r->head);
        if (h != h0 || cmp_lock_is_locked(&r->clock))
            cmp__deadline_in_ns(&idle, RING_FULL_IDLE_NS);
        else if (cmp__deadline_passed(&idle))
            return TO_SPILL;
        if (cmp__deadline_passed(&limit))
            return TO_SPILL;
        h0 = h;
    }
}

static int prod_wait(struct prod *p, uint64_t need, int slot, uint64_t sneed,
                     const struct timespec *deadline)
{
    int w = place(p, need, slot, sneed);
    if (w && w != RING_FULL)
        return w;
    publish(p); /* consumers can free space only of what they see */
    if (w == RING_FULL)
        return wait_ring(p, need, slot, sneed, deadline);
    return wait_space(p, need, slot, sneed, deadline);
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

/* Appends one message to the spill file after the local spill tail: the
 * header and the caller's buffers in one pwritev when they fit in it. */
static int prod_spill(struct prod *p, const struct iovec *iov, int cnt, size_t len)
{
    int fd = p->r->spill_fd;
    uint64_t pos = POS(p->st);
    uint64_t hdr = len;
    struct iovec all[32];
    int rc;
    if (cnt < 32) {
        all[0].iov_base = &hdr;
        all[0].iov_len = SPILL_HDR;
        memcpy(all + 1, iov, (size_t)cnt * sizeof *iov);
        struct cursor c = {all, cnt + 1, 0, 0};
        rc = spill_xfer(fd, &c, pos, SPILL_HDR + len, 1);
    } else {
        struct iovec h = {&hdr, SPILL_HDR};
        struct cursor ch = {&h, 1, 0, 0};
        struct cursor c = {iov, cnt, 0, 0};
        rc = spill_xfer(fd, &ch, pos, SPILL_HDR, 1);
        if (rc == 0)
            rc = spill_xfer(fd, &c, pos + SPILL_HDR, len, 1);
    }
    if (rc < 0)
        return rc; /* nothing published: the next put writes over it */
    p->st = MAKE(pos + SPILL_HDR + len, CNT(p->st) + 1);
    return 0;
}

/* --- a queue's stream to a waiting consumer ----------------------------- */

enum { GATE_OPEN = 1, GATE_TAKEN = 2, GATE_ABORTED = 3 };

/* How long a streaming producer lets a consumer make no progress before it
 * gives the stream up and spills the message: a bound on how long such a
 * put waits for a consumer. */
#define STREAM_STALL_NS (5 * 1000 * 1000)
/* A stream's whole time bound per byte: about the spill's own cost. */
#define STREAM_NS_PER_BYTE 1u

/* How long a producer about to spill a message of len bytes into an empty
 * spill looks for a consumer that comes to wait for it (one that is between
 * two gets: a Python consumer takes ~2 ms to free and decode a 64 MiB
 * array before its next get): about a tenth of what spilling the message
 * costs the producer, and at most a few ms. */
#define STREAM_ARRIVE_NS_PER_MIB (64 * 1000)
#define STREAM_ARRIVE_MAX_NS (8 * 1000 * 1000)

/* Streams only through an empty spill, when the first chunk fits at once,
 * to a consumer that waits for a message now or comes to within the
 * arrival bound. */
static int stream_wanted(struct prod *p, uint64_t first_rec, size_t len)
{
    cmp_ring_t *r = p->r;
    if (place(p, first_rec, 1, SPILL_HDR + len) != TO_RING)
        return 0;
    if (cmp__load_relaxed(&r->data_wanted))
        return 1;
    if (cmp__spin_held()) /* no CPU to spin on while a consumer comes */
        return 0;
    uint64_t ns = (uint64_t)(len >> 20) * STREAM_ARRIVE_NS_PER_MIB;
    struct timespec limit;
    cmp__deadline_in_ns(&limit, ns < STREAM_ARRIVE_MAX_NS ? (long)ns : STREAM_ARRIVE_MAX_NS);
    for (unsigned i = 1;; i++) {
        if (cmp__load_relaxed(&r->data_wanted))
            return place(p, first_rec, 1, SPILL_HDR + len) == TO_RING;
        if ((i & 255) == 0) {
            if (cmp__deadline_passed(&limit))
                return 0;
            if (i > RING_SPIN)
                sched_yield();
        }
        cmp__cpu_relax();
    }
}

/* Mid-stream, waits until the ring has room for need bytes (or, need 0,
 * until the consumer has settled the gate). Returns 1, or 0 once the
 * consumer made no progress for STREAM_STALL_NS or the stream has taken
 * longer than `end` (a consumer too slow to be worth waiting for). */
static int stream_wait(struct prod *p, uint64_t need, const struct timespec *end)
{
    cmp_ring_t *r = p->r;
    if (cmp__deadline_passed(end))
        return 0;
    uint64_t h0 = cmp__load64_acquire(&r->head);
    struct timespec limit;
    cmp__deadline_in_ns(&limit, STREAM_STALL_NS);
    for (unsigned i = 0;; i++) {
        uint64_t h = cmp__load64_acquire(&r->head);
        if (need ? ((POS(p->t) - POS(h)) & POS_MASK) + need + RESERVE <= r->capacity
                 : cmp__load_acquire(&r->sgate) != GATE_OPEN)
            return 1;
        if (h != h0) {
            h0 = h;
            cmp__deadline_in_ns(&limit, STREAM_STALL_NS);
            i = 0;
        }
        if (i < RING_SPIN) {
            cmp__cpu_relax();
            continue;
        }
        if (cmp__deadline_passed(&limit) || cmp__deadline_passed(end))
            return 0;
        uint32_t seq = cmp__load_acquire(&r->space_seq);
        cmp__store_relaxed(&r->space_waiters, sleeper_tag(seq));
        cmp__fence_seq_cst(); /* pairs with the fence in notify_space */
        if (cmp__load64_acquire(&r->head) == h0 &&
            (need || cmp__load_acquire(&r->sgate) == GATE_OPEN))
            cmp__futex_wait(&r->space_seq, seq, &limit);
        cmp__store_relaxed(&r->space_waiters, 0);
    }
}

/* Streams a message larger than whole_max through the ring to the waiting
 * consumer (see "Streaming to a waiting consumer"). Returns 0 once the
 * consumer has taken it, 1 when the stream was given up (the message is to
 * go to the spill). */
static int prod_stream(struct prod *p, const struct iovec *iov, int cnt, size_t len)
{
    cmp_ring_t *r = p->r;
    const size_t cmax = chunk_max(r);
    struct cursor c = {iov, cnt, 0, 0};
    size_t left = len;
    int first = 1;
    /* at most about what spilling the message would have cost, plus one
     * stall: past it the consumer is not keeping pace */
    struct timespec end;
    uint64_t ns = STREAM_STALL_NS + (uint64_t)len * STREAM_NS_PER_BYTE;
    cmp__deadline_in_ns(&end, ns < LONG_MAX ? (long)ns : LONG_MAX);
    cmp__store_relaxed(&r->sgate, GATE_OPEN);
    cmp__store_relaxed(&r->pstream, 1); /* both before the first chunk is seen */
    while (left > 0) {
        size_t extra = first ? 8 : 0;
        size_t n = cmax - extra;
        if (n > left)
            n = left;
        uint64_t rec = HDR + ROUND8(extra + n);
        if (!first && !stream_wait(p, rec, &end))
            goto give_up;
        uint64_t pos = POS(p->t);
        write_hdr(r, pos, (uint32_t)(extra + n), first ? F_FIRST | F_GATED : 0);
        if (first) {
            uint64_t total = len;
            copy_in(r, pos + HDR, &total, 8);
        }
        cursor_copy_in(r, pos + HDR + extra, &c, n);
        p->t = MAKE(pos + rec, CNT(p->t)); /* counted by the final record */
        publish(p);
        left -= n;
        first = 0;
    }
    /* every byte is out: the consumer takes the message (sgate TAKEN) once
     * it has copied them all, or the producer takes it back */
    uint32_t open = GATE_OPEN;
    if (!stream_wait(p, 0, &end) && cmp__cas_acq_rel(&r->sgate, &open, GATE_ABORTED))
        goto abandoned;
    if (cmp__load_acquire(&r->sgate) != GATE_TAKEN)
        goto abandoned;
    /* The consumer stored its head at our tail before taking: the ring is
     * empty, so the final record fits. It counts the message. */
    write_hdr(r, POS(p->t), 0, F_LAST);
    p->t = MAKE(POS(p->t) + HDR, CNT(p->t) + 1);
    publish(p);
    cmp__store_relaxed(&r->pstream, 0);
    return 0;

give_up:
    /* the consumer cannot have taken a message not wholly written */
    cmp__store_release(&r->sgate, GATE_ABORTED);
abandoned:
    publish(p);
    write_abort(r);
    p->published = p->t = cmp__load64_relaxed(&r->tail);
    return 1;
}

/* Writes one message at the local tail, publishing as it must. */
static int prod_message(struct prod *p, const struct iovec *iov, int cnt,
                        const struct timespec *deadline)
{
    cmp_ring_t *r = p->r;
    size_t len = iov_total(iov, cnt);
    struct cursor c = {iov, cnt, 0, 0};

    if (r->spill_fd >= 0) {
        if (len > SPILL_MAX_BYTES)
            return -EMSGSIZE;
        uint64_t rec = HDR + ROUND8(len);
        if (len > whole_max(r) && stream_wanted(p, HDR + chunk_max(r), len) &&
            prod_stream(p, iov, cnt, len) == 0)
            return 0;
        int w = prod_wait(p, len <= whole_max(r) ? rec : 0, 1, SPILL_HDR + len, deadline);
        if (w < 0)
            return w;
        if (w != TO_RING)
            return prod_spill(p, iov, cnt, len);
        write_hdr(r, POS(p->t), (uint32_t)len, F_FIRST | F_LAST);
        cursor_copy_in(r, POS(p->t) + HDR, &c, len);
        p->t = MAKE(POS(p->t) + rec, CNT(p->t) + 1);
        return 0;
    }

    if (len <= whole_max(r)) {
        uint64_t rec = HDR + ROUND8(len);
        int rc = prod_wait(p, rec, 1, 0, deadline);
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
        int rc = prod_wait(p, rec, first, 0, deadline);
        if (rc < 0) {
            if (!first) {
                publish(p);
                write_abort(r);
                p->published = p->t = cmp__load64_relaxed(&r->tail);
            }
            return rc;
        }
        uint64_t pos = POS(p->t);
        write_hdr(r, pos, (uint32_t)(extra + n), (first ? F_FIRST : 0) | (last ? F_LAST : 0));
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
        return rc == -ETIMEDOUT && cmp__is_nowait(deadline) ? -EAGAIN : rc;
    struct prod p = {ring, cmp__load64_relaxed(&ring->tail), 0,
                     cmp__load64_relaxed(&ring->spill_tail), 0};
    p.published = p.t;
    p.spublished = p.st;
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

int cmp_ring_put(cmp_ring_t *ring, const void *data, size_t len, const struct timespec *deadline)
{
    struct iovec iov = {(void *)data, len};
    return cmp_ring_putv(ring, &iov, 1, deadline);
}

/* --- consumer side --------------------------------------------------------- */

/* Mid-stream, the producer's lock holder is dead: take the lock over, which
 * publishes the ABORT record, and let go again. */
static void rescue_producer(cmp_ring_t *r)
{
    if (!cmp_lock_abandoned(&r->plock))
        return;
    struct timespec past = {0, 1};
    if (plock_acquire(r, &past) == 0)
        cmp_lock_release(&r->plock);
}

struct cons {
    cmp_ring_t *r;
    uint64_t h;
    uint64_t stored;
    uint64_t sh;
    uint64_t sstored;
};

/* What the consumer can take next: 1 a ring record at c->h, 2 a spill
 * record at c->sh, 0 nothing. The spill's tail is loaded first (acquire),
 * then the ring's: see "Order". */
static int avail(const struct cons *c)
{
    cmp_ring_t *r = c->r;
    /* The tail as a consumer last loaded it (in the consumer's own cache
     * line): while it is ahead of us there is a ring record to take (ring
     * records come before spill records), and the producer's line is not
     * read. Only a position at most a ring's capacity ahead counts: one a
     * consumer that did not store the hint has passed is behind us. */
    uint64_t ahead = (POS(cmp__load64_relaxed(&r->tail_seen)) - POS(c->h)) & POS_MASK;
    if (ahead != 0 && ahead <= r->capacity)
        return 1;
    uint64_t st = cmp__load64_acquire(&r->spill_tail);
    uint64_t t = cmp__load64_acquire(&r->tail);
    cmp__store64_relaxed(&r->tail_seen, t);
    if (POS(t) != POS(c->h))
        return 1;
    return POS(st) != POS(c->sh) ? 2 : 0;
}

static int ready(const struct cons *c, int in_stream)
{
    if (in_stream)
        return POS(cmp__load64_acquire(&c->r->tail)) != POS(c->h);
    return avail(c);
}

/* Holding the consumer lock, waits until there is something to take (in a
 * stream: until the ring's tail moves past c->h). In a stream the caller's
 * deadline and signals are ignored (the message must be finished), but the
 * producer's liveness is checked. */
static int wait_data(const struct cons *c, int in_stream, const struct timespec *deadline)
{
    cmp_ring_t *r = c->r;
    if (ready(c, in_stream))
        return 0;
    if (!in_stream) {
        if (cmp_ring_is_closed(r))
            return -EPIPE;
        if (cmp__is_nowait(deadline))
            return -EAGAIN;
    }
    /* A few bare rounds first, where spinning may pay at all: most
     * hand-offs between two spinning processes complete within them, and
     * the policy's bookkeeping would cost them a sixth. */
    if (cmp__spin_may_pay(&r->prod_cpu)) {
        for (int i = 0; i < RING_QUICK_SPINS; i++) {
            cmp__cpu_relax();
            if (ready(c, in_stream))
                return 0;
        }
    }
    struct cmp__spin spin;
    if (cmp__spin_begin(&spin, &r->data_spin_ns, &r->prod_cpu, in_stream ? NULL : deadline)) {
        int got;
        while (!(got = ready(c, in_stream)) && (in_stream || !cmp_ring_is_closed(r)) &&
               cmp__spin_more(&spin)) {
        }
        cmp__spin_end(&spin, &r->data_spin_ns, got);
        if (got)
            return 0;
    }
    for (;;) {
        uint32_t seq = cmp__load_acquire(&r->data_seq);
        cmp__store_relaxed(&r->data_waiters, sleeper_tag(seq));
        cmp__fence_seq_cst(); /* pairs with the fence in notify_data */
        if (ready(c, in_stream)) {
            cmp__store_relaxed(&r->data_waiters, 0);
            return 0;
        }
        if (!in_stream && cmp_ring_is_closed(r)) {
            cmp__store_relaxed(&r->data_waiters, 0);
            return -EPIPE;
        }
        struct timespec check;
        const struct timespec *until;
        if (in_stream) {
            cmp__deadline_in_ns(&check, CMP__OWNER_CHECK_NS);
            until = &check;
        } else
            until = recheck_deadline(deadline, &check);
        int rc = cmp__futex_wait(&r->data_seq, seq, until);
        if (in_stream) {
            if (rc == -ETIMEDOUT)
                rescue_producer(r);
            continue;
        }
        if (rc == -EINTR || (rc == -ETIMEDOUT && cmp__deadline_passed(deadline))) {
            cmp__store_relaxed(&r->data_waiters, 0);
            if (ready(c, 0))
                return 0;
            return rc;
        }
    }
}

static void cons_store(struct cons *c)
{
    int moved = 0, spilled = 0;
    if (c->h != c->stored) {
        /* release: the producer that sees this head may overwrite what was
         * read before it */
        cmp__store64_release(&c->r->head, c->h);
        c->stored = c->h;
        moved = 1;
    }
    if (c->sh != c->sstored) {
        /* release: as for head, in the spill file */
        cmp__store64_release(&c->r->spill_head, c->sh);
        c->sstored = c->sh;
        moved = spilled = 1;
    }
    if (moved)
        notify_space(c->r);
    if (spilled) /* only below the stored head: a record read again after a
                    crash must still be there */
        spill_free(c->r, c->sh);
}

/* Read-ahead. Spilled records are small when the consumer fell behind a
 * busy producer (spilling starts when the ring is full), and a pread each
 * would make it fall further behind: a thread taking from a spill reads up
 * to SPILL_AHEAD bytes of published records at once into a buffer of its
 * own and takes the next records from there. Published records do not
 * change until consumed (producers write only past spill_tail, and reuse
 * an offset only a whole circle later), so the copy is right for as long
 * as the offset is not reused, that is within a circle of the file (64 GiB)
 * of consumption. It is used only for the spill it was read from (the
 * ring's random spill_id: rings come and go at the same addresses) and only
 * while the spill's head word (position and count) is the one this thread
 * left: after other consumers' takes (another thread, a fork child that
 * started with a copy of it) it is read again. */
struct spill_ahead {
    uint64_t spill_id; /* the spill the bytes are from; 0: none */
    uint64_t next;     /* that spill's head word just past what was taken */
    uint64_t pos;      /* stream position of buf[0] */
    size_t len;        /* bytes in buf */
    size_t cap;        /* buf's size, 0 until allocated */
    uint8_t *buf;
};

static __thread struct spill_ahead ahead;
static __thread uint8_t ahead_small[SPILL_PEEK];
static pthread_key_t ahead_key;
static pthread_once_t ahead_once = PTHREAD_ONCE_INIT;
static int ahead_key_made;

static void ahead_free(void *buf)
{
    free(buf);
}

static void ahead_make_key(void)
{
    ahead_key_made = pthread_key_create(&ahead_key, ahead_free) == 0;
}

/* The calling thread's read-ahead, its buffer allocated at first use (freed
 * when the thread exits); the small one if that fails. */
static struct spill_ahead *ahead_get(void)
{
    if (ahead.cap == 0) {
        pthread_once(&ahead_once, ahead_make_key);
        uint8_t *buf = ahead_key_made ? malloc(SPILL_AHEAD) : NULL;
        if (buf && pthread_setspecific(ahead_key, buf) == 0) {
            ahead.buf = buf;
            ahead.cap = SPILL_AHEAD;
        } else {
            free(buf);
            ahead.buf = ahead_small;
            ahead.cap = sizeof ahead_small;
        }
    }
    return &ahead;
}

/* Bytes published in the spill from stream position pos on. */
static uint64_t spill_published(cmp_ring_t *r, uint64_t pos)
{
    return (POS(cmp__load64_acquire(&r->spill_tail)) - pos) & POS_MASK;
}

/* Fills the read-ahead with the published bytes from the spill record at
 * c->sh on. */
static int ahead_fill(struct spill_ahead *a, const struct cons *c)
{
    cmp_ring_t *r = c->r;
    uint64_t pos = POS(c->sh);
    uint64_t st = cmp__load64_acquire(&r->spill_tail);
    uint64_t there = (POS(st) - pos) & POS_MASK;
    uint64_t count = (CNT(st) - CNT(c->sh)) & CNT_MASK;
    /* ahead only over small records: a big one's payload is read straight
     * into its buffer, not copied twice */
    size_t n = count > 1 && there / count <= SPILL_AHEAD_RECORD ? a->cap : SPILL_PEEK;
    if (n > a->cap)
        n = a->cap;
    if (n > there)
        n = (size_t)there;
    a->spill_id = 0;
    int rc = spill_read(r->spill_fd, a->buf, n, pos);
    if (rc < 0)
        return rc;
    a->spill_id = r->spill_id;
    a->next = c->sh;
    a->pos = pos;
    a->len = n;
    return 0;
}

/* Takes the spill record at c->sh: from the read-ahead, refilled where it
 * does not hold the record's header; a payload longer than what it holds
 * gets the rest straight into the buffer alloc returns. */
static int cons_spill(struct cons *c, cmp_ring_alloc_fn alloc, void *arg)
{
    cmp_ring_t *r = c->r;
    uint64_t pos = POS(c->sh);
    struct spill_ahead *a = ahead_get();
    size_t off = (size_t)((pos - a->pos) & POS_MASK);
    int rc;
    if (a->spill_id != r->spill_id || a->next != c->sh || a->len < SPILL_HDR ||
        off > a->len - SPILL_HDR) {
        if ((rc = ahead_fill(a, c)) < 0)
            return rc;
        off = 0;
    }
    if (a->len - off < SPILL_HDR) /* impossible: avail() saw a record */
        return -EIO;
    uint64_t len;
    memcpy(&len, a->buf + off, sizeof len);
    size_t have = a->len - off - SPILL_HDR;
    if (len > have) {
        if (off > 0 && SPILL_HDR + len <= a->cap) {
            /* cut at the end of the read-ahead: read again from it on */
            if ((rc = ahead_fill(a, c)) < 0)
                return rc;
            off = 0;
            have = a->len - SPILL_HDR;
        }
        /* what the read-ahead holds was published; the rest must be too */
        uint64_t there = spill_published(r, pos);
        if (there < SPILL_HDR || len > there - SPILL_HDR) /* impossible: never deliver it */
            return -EIO;
    }
    uint8_t *dst = alloc(arg, (size_t)len);
    if (!dst)
        return -ENOBUFS;
    if (have > len)
        have = (size_t)len;
    memcpy(dst, a->buf + off + SPILL_HDR, have);
    if (have < len) {
        rc = spill_read(r->spill_fd, dst + have, (size_t)len - have, pos + SPILL_HDR + have);
        if (rc < 0)
            return rc;
    }
    c->sh = MAKE(pos + SPILL_HDR + len, CNT(c->sh) + 1);
    a->next = c->sh;
    return 0;
}

/* Takes one message at the local head. wait: block for the first record
 * (otherwise -EAGAIN when there is none). Returns 0, or a negative errno. */
static int cons_message(struct cons *c, cmp_ring_alloc_fn alloc, void *arg, int wait,
                        const struct timespec *deadline)
{
    cmp_ring_t *r = c->r;
    for (;;) {
        int a = avail(c);
        if (a == 0) {
            if (!wait)
                return -EAGAIN;
            cons_store(c); /* the producer may be waiting for space */
            cmp__store_relaxed(&r->data_wanted, 1);
            int rc = wait_data(c, 0, deadline);
            cmp__store_relaxed(&r->data_wanted, 0);
            if (rc < 0)
                return rc;
            continue;
        }
        if (a == 2)
            return cons_spill(c, alloc, arg);
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
        const int gated = (hd.flags & F_GATED) != 0;
        int gated_taken = 0;
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
            if (gated && off == total) {
                /* every byte is here: take the message unless its producer
                 * took it back (it then writes ABORT and spills it) */
                uint32_t open = GATE_OPEN;
                if (!cmp__cas_acq_rel(&r->sgate, &open, GATE_TAKEN))
                    return -ECONNABORTED;
                notify_space(r); /* the producer may sleep on the gate */
                gated_taken = 1;
            }
            if (!ready(c, 1))
                wait_data(c, 1, NULL);
            hd = read_hdr(r, POS(c->h));
            rec = HDR + ROUND8(hd.len);
            if (gated_taken) {
                /* the final record counts the message; ABORT means the
                 * producer died before writing it, and did not spill it */
                if (hd.flags == F_LAST && hd.len == 0) {
                    c->h = MAKE(POS(c->h) + HDR, CNT(c->h) + 1);
                    return 0;
                }
                if (hd.flags & F_ABORT)
                    c->h = MAKE(POS(c->h) + rec, CNT(c->h));
                return -ECONNABORTED;
            }
            if (hd.flags & (F_ABORT | F_FIRST)) {
                /* the producer died or gave up; FIRST cannot follow a live
                 * stream, but a corrupt sequence must not be delivered */
                if (hd.flags & F_ABORT)
                    c->h = MAKE(POS(c->h) + rec, CNT(c->h));
                return -ECONNABORTED;
            }
            if (off + hd.len > total || (gated && (hd.flags & F_LAST)))
                return -ECONNABORTED; /* impossible: never deliver it */
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
        if (rc == -ETIMEDOUT && cmp__is_nowait(deadline))
            rc = -EAGAIN;
        if (rc == -EAGAIN && cmp_ring_is_closed(ring) && cmp_ring_count(ring) == 0)
            rc = -EPIPE;
        return rc;
    }
    struct cons c = {ring, cmp__load64_relaxed(&ring->head), 0,
                     cmp__load64_relaxed(&ring->spill_head), 0};
    c.stored = c.h;
    c.sstored = c.sh;
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
        return rc == -ETIMEDOUT && cmp__is_nowait(deadline) ? -EAGAIN : rc;
    struct cons c = {ring, cmp__load64_relaxed(&ring->head), 0,
                     cmp__load64_relaxed(&ring->spill_head), 0};
    c.stored = c.h;
    c.sstored = c.sh;
    for (;;) {
        int a = avail(&c);
        if (a == 0) {
            cons_store(&c);
            rc = wait_data(&c, 0, deadline);
            if (rc < 0)
                break;
            continue;
        }
        if (a == 2) {
            rc = 1;
            break;
        }
        struct rec_hdr hd = read_hdr(ring, POS(c.h));
        if ((hd.flags & F_ABORT) || !(hd.flags & F_FIRST)) {
            c.h = MAKE(POS(c.h) + HDR + ROUND8(hd.len), CNT(c.h) + ((hd.flags & F_LAST) ? 1 : 0));
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
    /* heads first: the tails read after them are newer, so no difference
     * goes below zero */
    uint64_t h = cmp__load64_acquire(&ring->head);
    uint64_t sh = cmp__load64_acquire(&ring->spill_head);
    uint64_t st = cmp__load64_acquire(&ring->spill_tail);
    uint64_t t = cmp__load64_acquire(&ring->tail);
    return ((CNT(t) - CNT(h)) & CNT_MASK) + ((CNT(st) - CNT(sh)) & CNT_MASK);
}

size_t cmp_ring_used(const cmp_ring_t *ring)
{
    uint64_t h = cmp__load64_acquire(&ring->head);
    uint64_t t = cmp__load64_acquire(&ring->tail);
    return (size_t)((POS(t) - POS(h)) & POS_MASK);
}

uint64_t cmp_ring_spilled(const cmp_ring_t *ring)
{
    uint64_t sh = cmp__load64_acquire(&ring->spill_head);
    uint64_t st = cmp__load64_acquire(&ring->spill_tail);
    return (POS(st) - POS(sh)) & POS_MASK;
}
