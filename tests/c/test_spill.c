/* The spill file behind a queue's ring: puts never wait for bytes (only for
 * maxsize), order per producer holds across ring and spill phases, a
 * producer killed mid-write and a consumer killed mid-read lose nothing
 * delivered, and consumed spill pages are given back. */
#include "ring_helpers.h"

#include <sys/stat.h>

static cmp_queue_t *spill_queue(size_t capacity, uint32_t maxsize)
{
    cmp_queue_t *q = test_shared_map(cmp_queue_footprint(capacity));
    cr_assert_eq(cmp_queue_init(q, capacity, maxsize), 0);
    cr_assert(cmp_ring_spill_fd(cmp_queue_ring(q)) >= 3);
    return q;
}

static long spill_blocks(cmp_queue_t *q)
{
    struct stat st;
    cr_assert_eq(fstat(cmp_ring_spill_fd(cmp_queue_ring(q)), &st), 0);
    return (long)st.st_blocks;
}

Test(spill, set_spill_arguments, .timeout = 10)
{
    cmp_ring_t *r = test_ring(4096, 0);
    cr_assert_eq(cmp_ring_spill_fd(r), -1);
    cr_assert_eq(cmp_ring_set_spill(r, -1), -EINVAL);
    int fd = cmp_spill_create();
    cr_assert(fd >= 3);
    cr_assert_eq(cmp_ring_set_spill(r, fd), 0);
    cr_assert_eq(cmp_ring_set_spill(r, fd), -EBUSY);
    cr_assert_eq(cmp_ring_spill_fd(r), fd);
    /* a plain ring that already holds messages cannot take a spill */
    cmp_ring_t *r2 = test_ring(4096, 0);
    cr_assert_eq(cmp_ring_put(r2, "x", 1, CMP_NOWAIT), 0);
    cr_assert_eq(cmp_ring_set_spill(r2, fd), -EBUSY);
    close(fd);
}

/* The spill keeps the fd out of 0..2 even when those are closed: a child
 * reopening stdin must not replace it. */
Test(spill, fd_is_never_stdin, .timeout = 10)
{
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        close(0);
        int fd = cmp_spill_create();
        _exit(fd >= 3 ? 0 : 1);
    }
    sync_reap_ok(pid);
}

#define SMALL 256u
#define BIG (32u << 20)

/* 64 MiB of small messages and 3 of 32 MiB, with no consumer: every put
 * succeeds without waiting; then a consumer in another process gets all in
 * order, and the spill's pages are given back. */
Test(spill, unbounded_queue_takes_everything_before_any_consumer, .timeout = 60)
{
    cmp_queue_t *q = spill_queue(0, 0);
    const uint32_t nsmall = (64u << 20) / SMALL;
    uint8_t buf[SMALL];
    for (uint32_t i = 0; i < nsmall; i++) {
        make_msg(buf, SMALL, 1, i);
        cr_assert_eq(cmp_queue_put(q, buf, SMALL, CMP_NOWAIT), 0, "small %u", i);
    }
    uint8_t *big = malloc(BIG);
    cr_assert(big);
    for (uint32_t i = 0; i < 3; i++) {
        make_msg(big, BIG, 2, i);
        /* gathered from two buffers, to exercise pwritev */
        struct iovec iov[2] = {{big, 1000}, {big + 1000, BIG - 1000}};
        cr_assert_eq(cmp_queue_putv(q, iov, 2, CMP_NOWAIT), 0, "big %u", i);
    }
    free(big);
    cr_assert_eq(cmp_queue_qsize(q), nsmall + 3);
    cr_assert_eq(cmp_queue_unfinished(q), nsmall + 3);
    cr_assert(cmp_ring_spilled(cmp_queue_ring(q)) > (uint64_t)3 * BIG);
    long before = spill_blocks(q);
    cr_assert(before * 512 > 3l * BIG, "blocks %ld", before);

    pid_t pid = fork_or_fail();
    if (pid == 0) {
        struct sink s = {0};
        for (uint32_t i = 0; i < nsmall + 3; i++) {
            struct timespec d = test_deadline(10);
            if (cmp_queue_get(q, sink_alloc, &s, &d) != 0)
                _exit(1);
            uint32_t p, n;
            if (!parse_msg(s.buf, s.len, &p, &n))
                _exit(2);
            int ok = i < nsmall ? (p == 1 && n == i && s.len == SMALL)
                                : (p == 2 && n == i - nsmall && s.len == BIG);
            if (!ok)
                _exit(3);
        }
        _exit(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT) == -EAGAIN ? 0 : 4);
    }
    sync_reap_ok(pid);
    cr_assert_eq(cmp_queue_qsize(q), 0);
    cr_assert_eq(cmp_ring_spilled(cmp_queue_ring(q)), 0);
    long after = spill_blocks(q);
    cr_assert(after * 512 <= 64 * 1024, "blocks before %ld after %ld", before, after);
    cmp_queue_detach(q);
}

/* maxsize still makes a put wait, also for messages that go to the spill. */
Test(spill, maxsize_still_limits, .timeout = 10)
{
    cmp_queue_t *q = spill_queue(4096, 3);
    static uint8_t buf[10000];
    for (uint32_t i = 0; i < 3; i++) {
        make_msg(buf, sizeof buf, 0, i);
        cr_assert_eq(cmp_queue_put(q, buf, sizeof buf, CMP_NOWAIT), 0);
    }
    cr_assert(cmp_queue_full(q));
    cr_assert_eq(cmp_queue_put(q, "x", 1, CMP_NOWAIT), -EAGAIN);
    struct timespec d = test_deadline(0.05);
    cr_assert_eq(cmp_queue_put(q, "x", 1, &d), -ETIMEDOUT);
    struct sink s = {0};
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT), 0);
    uint32_t p, n;
    cr_assert(parse_msg(s.buf, s.len, &p, &n) && n == 0);
    /* a batch stops at maxsize too */
    struct iovec iov[2] = {{buf, sizeof buf}, {buf, sizeof buf}};
    cr_assert_eq(cmp_queue_put_many(q, iov, NULL, 2, CMP_NOWAIT), 1);
    uint8_t slots[64][256];
    struct batch_sink b = {slots, {0}, 0};
    cr_assert_eq(cmp_queue_get_many(q, batch_alloc, &b, 10, CMP_NOWAIT), -ENOBUFS);
    cr_assert_eq(cmp_queue_qsize(q), 3); /* refused: still there */
    sink_free(&s);
    cmp_queue_detach(q);
}

/* Several producers, random sizes around the ring's size, a consumer that
 * pauses now and then: messages go to the ring, then the spill, then the
 * ring again. Each producer's messages arrive once, whole, in order. */
#define NPROD 3
#define PER_PROD 4000

Test(spill, ring_and_spill_phases_keep_order_per_producer, .timeout = 60)
{
    cmp_queue_t *q = spill_queue(16384, 0);
    pid_t pids[NPROD];
    for (int k = 0; k < NPROD; k++) {
        pids[k] = fork_or_fail();
        if (pids[k] == 0) {
            static uint8_t buf[20000];
            uint64_t rng = (uint64_t)k + 1;
            for (uint32_t i = 0; i < PER_PROD; i++) {
                size_t len = MSG_HDR + rng_next(&rng) % (i % 50 == 0 ? 12000 : 600);
                make_msg(buf, len, (uint32_t)k, i);
                unsigned n = (unsigned)(rng_next(&rng) % 3) + 1;
                /* a deadline only for the lock, which other producers
                 * hold briefly: room is never waited for */
                struct timespec d = test_deadline(10);
                if (n == 1 || i + n > PER_PROD) {
                    if (cmp_queue_put(q, buf, len, &d) != 0)
                        _exit(1);
                } else {
                    /* a batch of n: the same message renumbered */
                    static uint8_t more[3][20000];
                    struct iovec iov[3];
                    for (unsigned j = 0; j < n; j++) {
                        make_msg(more[j], len, (uint32_t)k, i + j);
                        iov[j].iov_base = more[j];
                        iov[j].iov_len = len;
                    }
                    if (cmp_queue_put_many(q, iov, NULL, n, &d) != (long)n)
                        _exit(1);
                    i += n - 1;
                }
                if (rng_next(&rng) % 500 == 0)
                    sync_sleep(0.002);
            }
            _exit(0);
        }
    }
    uint32_t next[NPROD] = {0};
    struct sink s = {0};
    uint64_t rng = 99, got = 0, spilled_seen = 0;
    while (got < (uint64_t)NPROD * PER_PROD) {
        if (rng_next(&rng) % 300 == 0)
            sync_sleep(0.003); /* let the ring fill up */
        if (cmp_ring_spilled(cmp_queue_ring(q)) > 0)
            spilled_seen++;
        struct timespec d = test_deadline(10);
        cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, &d), 0);
        uint32_t p = 0, n = 0;
        cr_assert(parse_msg(s.buf, s.len, &p, &n));
        cr_assert(p < NPROD);
        cr_assert_eq(n, next[p], "producer %u: got %u, expected %u", p, n, next[p]);
        next[p]++;
        got++;
    }
    for (int k = 0; k < NPROD; k++)
        sync_reap_ok(pids[k]);
    cr_assert(spilled_seen > 0, "the spill was never used");
    cr_assert_eq(cmp_queue_qsize(q), 0);
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT), -EAGAIN);
    sink_free(&s);
    cmp_queue_detach(q);
}

/* Producers killed at random points of 4 MiB spill writes: whatever they
 * published arrives whole and in order, nothing torn, and the queue goes on. */
Test(spill, producer_killed_mid_spill, .timeout = 60)
{
    cmp_queue_t *q = spill_queue(4096, 0);
    uint32_t *started = test_shared_map(4096);
    uint64_t rng = 7;
    const size_t len = 4u << 20;
    for (int k = 0; k < 8; k++) {
        __atomic_store_n(started, 0, __ATOMIC_RELEASE);
        pid_t victim = fork_or_fail();
        if (victim == 0) {
            uint8_t *buf = malloc(len);
            for (uint32_t i = 0;; i++) {
                make_msg(buf, len - i % 100, (uint32_t)k, i);
                struct timespec d = test_deadline(10); /* for a dead holder's lock */
                if (cmp_queue_put(q, buf, len - i % 100, &d) != 0)
                    _exit(1);
                __atomic_fetch_add(started, 1, __ATOMIC_RELEASE);
            }
        }
        sync_wait_flag(started, 1, 5);
        sync_sleep((double)(rng_next(&rng) % 4000) / 1e6);
        kill(victim, SIGKILL);
        int status;
        waitpid(victim, &status, 0);
        cr_assert(WIFSIGNALED(status), "victim exited by itself: %d", status);
    }
    uint64_t qs = cmp_queue_qsize(q);
    cr_assert(qs >= 8);
    cr_assert_eq(cmp_queue_unfinished(q), qs);
    struct sink s = {0};
    int last_p = -1;
    uint32_t expect = 0;
    for (uint64_t got = 0; got < qs; got++) {
        cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT), 0);
        uint32_t p = 0, n = 0;
        cr_assert(parse_msg(s.buf, s.len, &p, &n), "torn message");
        if ((int)p != last_p) {
            cr_assert((int)p > last_p);
            last_p = (int)p;
            expect = 0;
        }
        cr_assert_eq(n, expect);
        expect++;
    }
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT), -EAGAIN);
    cr_assert_eq(cmp_queue_put(q, "after", 5, CMP_NOWAIT), 0);
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT), 0);
    cr_assert(s.len == 5 && memcmp(s.buf, "after", 5) == 0);
    sink_free(&s);
    cmp_queue_detach(q);
}

/* A consumer killed while it copies a spill record out (here: inside
 * alloc) has not consumed it: the next consumer gets it whole. */
static void *die_in_alloc(void *arg, size_t len)
{
    (void)arg;
    (void)len;
    raise(SIGKILL);
    return NULL;
}

Test(spill, consumer_killed_mid_read_redelivers, .timeout = 20)
{
    cmp_queue_t *q = spill_queue(4096, 0);
    static uint8_t buf[100000];
    for (uint32_t i = 0; i < 3; i++) {
        make_msg(buf, sizeof buf, 0, i);
        cr_assert_eq(cmp_queue_put(q, buf, sizeof buf, CMP_NOWAIT), 0);
    }
    cr_assert(cmp_ring_spilled(cmp_queue_ring(q)) > 0);
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        cmp_queue_get(q, die_in_alloc, NULL, NULL);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    cr_assert_eq(cmp_queue_qsize(q), 3);
    struct sink s = {0};
    for (uint32_t i = 0; i < 3; i++) {
        struct timespec d = test_deadline(5); /* takes the dead consumer's lock over */
        cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, &d), 0);
        uint32_t p = 0, n = 0;
        cr_assert(parse_msg(s.buf, s.len, &p, &n));
        cr_assert_eq(n, i);
    }
    sink_free(&s);
    cmp_queue_detach(q);
}

/* --- a big message streamed to a waiting consumer ------------------------ */

#define STREAM_CAP (1u << 20) /* messages above 512 KiB are streams */
#define STREAM_LEN (8u << 20)

/* Waits until the consumer has taken every message put so far and waits
 * for the next one (a put then streams). data_wanted alone may still be
 * the consumer's previous wait, about to be cleared now that it woke for
 * the message put last; it clears it before taking that message, so a 1
 * seen after qsize reached 0 is a new wait. */
static void wait_consumer(cmp_queue_t *q)
{
    double end = sync_now() + 60; /* a hang guard only */
    while (cmp_queue_qsize(q) != 0 ||
           !__atomic_load_n(&cmp_queue_ring(q)->data_wanted, __ATOMIC_ACQUIRE)) {
        cr_assert(sync_now() < end, "the consumer never came to wait");
        sync_sleep(0.001);
    }
}

/* Gets count messages in order (0..count-1 of producer 0) in a child,
 * expecting `aborts` -ECONNABORTED (streams the producer took back: 0 or
 * 1; -1 for any number, each stored in *seen). first_alloc is used for
 * the first get. Exits 0 when all came whole, exactly once. */
static void consume_in_order(cmp_queue_t *q, uint32_t count, int aborts,
                             cmp_ring_alloc_fn first_alloc, struct sink *s, uint32_t *seen)
{
    uint32_t expect = 0;
    int aborted = 0;
    for (int k = 0; expect < count; k++) {
        struct timespec d = test_deadline(60); /* a hang guard only */
        int rc = cmp_queue_get(q, k == 0 ? first_alloc : sink_alloc, s, &d);
        if (rc == -ECONNABORTED && aborted < (aborts < 0 ? (int)count : aborts)) {
            aborted++;
            if (seen)
                __atomic_store_n(seen, (uint32_t)aborted, __ATOMIC_RELEASE);
            continue;
        }
        if (rc != 0)
            _exit(10 + (rc < 0 ? -rc % 100 : 99));
        uint32_t p = 0, n = 0;
        if (!parse_msg(s->buf, s->len, &p, &n) || p != 0 || n != expect)
            _exit(2);
        expect++;
    }
    if (aborts >= 0 && aborted != aborts)
        _exit(5);
    _exit(cmp_queue_get(q, sink_alloc, s, CMP_NOWAIT) == -EAGAIN ? 0 : 4);
}

/* With a consumer waiting, a message larger than capacity/2 goes through
 * the ring, not the spill, and arrives whole and in order. Whether the
 * consumer keeps pace is up to the scheduler (under valgrind it never
 * does): the producer then gives the stream up and spills the message,
 * which the consumer sees aborted and gets from the spill. So: nothing
 * spilled when no stream was given up, and otherwise only the messages
 * given up (and the small one put while each was still in the spill). */
Test(spill, big_message_streams_to_a_waiting_consumer, .timeout = 30)
{
    cmp_queue_t *q = spill_queue(STREAM_CAP, 0);
    uint32_t *given_up = test_shared_map(4096);
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        struct sink s = {0};
        consume_in_order(q, 6, -1, sink_alloc, &s, given_up);
    }
    uint8_t *buf = malloc(STREAM_LEN);
    cr_assert(buf);
    for (uint32_t i = 0; i < 6; i++) {
        size_t len = i % 2 ? 1000 : STREAM_LEN - i;
        make_msg(buf, len, 0, i);
        if (i % 2 == 0)
            wait_consumer(q);
        cr_assert_eq(cmp_queue_put(q, buf, len, NULL), 0);
    }
    sync_reap_ok(pid);
    uint64_t aborted = __atomic_load_n(given_up, __ATOMIC_ACQUIRE);
    /* the low 36 bits of spill_tail: bytes ever written to the spill */
    uint64_t spilled = cmp_queue_ring(q)->spill_tail & ((UINT64_C(1) << 36) - 1);
    cr_assert_leq(aborted, 3, "%lu streams given up, of 3", (unsigned long)aborted);
    cr_assert_leq(spilled, aborted * (STREAM_LEN + 4096),
                  "spilled %lu bytes with %lu streams given up", (unsigned long)spilled,
                  (unsigned long)aborted);
    cr_assert_eq(cmp_queue_qsize(q), 0);
    cr_assert_eq(cmp_queue_unfinished(q), 6);
    free(buf);
    cmp_queue_detach(q);
}

/* A consumer that stalls inside alloc, after the stream has begun: the put
 * still returns within the stall bound, the message goes to the spill, and
 * the consumer drops the stream and gets the message once, in order. */
static void *slow_alloc(void *arg, size_t len)
{
    sync_sleep(0.3);
    return sink_alloc(arg, len);
}

Test(spill, stalled_consumer_gets_the_spilled_message_once, .timeout = 30)
{
    cmp_queue_t *q = spill_queue(STREAM_CAP, 0);
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        struct sink s = {0};
        consume_in_order(q, 3, 1, slow_alloc, &s, NULL);
    }
    uint8_t *buf = malloc(STREAM_LEN);
    cr_assert(buf);
    make_msg(buf, STREAM_LEN, 0, 0);
    wait_consumer(q);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cr_assert_eq(cmp_queue_put(q, buf, STREAM_LEN, NULL), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    cr_assert(took < 0.2, "put waited %.3f s for a stalled consumer", took);
    cr_assert_neq(cmp_queue_ring(q)->spill_tail, 0, "not spilled");
    make_msg(buf, 100, 0, 1);
    cr_assert_eq(cmp_queue_put(q, buf, 100, NULL), 0);
    make_msg(buf, STREAM_LEN - 8, 0, 2);
    cr_assert_eq(cmp_queue_put(q, buf, STREAM_LEN - 8, NULL), 0);
    sync_reap_ok(pid);
    cr_assert_eq(cmp_queue_qsize(q), 0);
    cr_assert_eq(cmp_queue_unfinished(q), 3);
    free(buf);
    cmp_queue_detach(q);
}

/* A consumer killed mid-stream (in alloc): the producer takes the message
 * back to the spill, and the next consumer gets it once, then the next. */
Test(spill, consumer_killed_mid_stream_redelivers, .timeout = 30)
{
    cmp_queue_t *q = spill_queue(STREAM_CAP, 0);
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        cmp_queue_get(q, die_in_alloc, NULL, NULL);
        _exit(0);
    }
    uint8_t *buf = malloc(STREAM_LEN);
    cr_assert(buf);
    make_msg(buf, STREAM_LEN, 0, 0);
    wait_consumer(q);
    cr_assert_eq(cmp_queue_put(q, buf, STREAM_LEN, NULL), 0);
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    make_msg(buf, 5000, 0, 1);
    cr_assert_eq(cmp_queue_put(q, buf, 5000, NULL), 0);
    cr_assert_eq(cmp_queue_qsize(q), 2);
    cr_assert_eq(cmp_queue_unfinished(q), 2);
    struct sink s = {0};
    int aborted = 0;
    for (uint32_t i = 0; i < 2; i++) {
        struct timespec d = test_deadline(5); /* takes the dead consumer's lock over */
        int rc = cmp_queue_get(q, sink_alloc, &s, &d);
        if (rc == -ECONNABORTED && !aborted++) /* the stream taken back */
            rc = cmp_queue_get(q, sink_alloc, &s, &d);
        cr_assert_eq(rc, 0, "message %u: %d", i, rc);
        uint32_t p = 0, n = 0;
        cr_assert(parse_msg(s.buf, s.len, &p, &n), "torn message");
        cr_assert_eq(n, i);
    }
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT), -EAGAIN);
    sink_free(&s);
    free(buf);
    cmp_queue_detach(q);
}

/* A producer killed mid-stream: its message is dropped whole (never
 * delivered partially, never counted), and the queue goes on. */
static pid_t stream_victim;

static void *kill_producer_alloc(void *arg, size_t len)
{
    kill(stream_victim, SIGKILL);
    return sink_alloc(arg, len);
}

Test(spill, producer_killed_mid_stream_drops_the_message, .timeout = 30)
{
    cmp_queue_t *q = spill_queue(STREAM_CAP, 0);
    stream_victim = fork_or_fail();
    if (stream_victim == 0) {
        uint8_t *buf = malloc(64u << 20);
        if (!buf)
            _exit(1);
        make_msg(buf, 64u << 20, 0, 0);
        sync_wait_flag(&cmp_queue_ring(q)->data_wanted, 1, 5);
        cmp_queue_put(q, buf, 64u << 20, NULL);
        _exit(0);
    }
    struct sink s = {0};
    struct timespec d = test_deadline(10);
    cr_assert_eq(cmp_queue_get(q, kill_producer_alloc, &s, &d), -ECONNABORTED);
    int status;
    waitpid(stream_victim, &status, 0);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT), -EAGAIN);
    cr_assert_eq(cmp_queue_qsize(q), 0);
    cr_assert_eq(cmp_queue_unfinished(q), 0);
    d = test_deadline(5); /* takes the dead producer's lock over */
    cr_assert_eq(cmp_queue_put(q, "after", 5, &d), 0);
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT), 0);
    cr_assert(s.len == 5 && memcmp(s.buf, "after", 5) == 0);
    sink_free(&s);
    cmp_queue_detach(q);
}

/* Takes n messages, expecting numbers *next on: 0 when all came whole and
 * in order. */
static int take_in_order(cmp_queue_t *q, struct sink *s, uint32_t *next, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        struct timespec d = test_deadline(10);
        uint32_t p, seq;
        if (cmp_queue_get(q, sink_alloc, s, &d) != 0 || !parse_msg(s->buf, s->len, &p, &seq) ||
            seq != *next)
            return -1;
        (*next)++;
    }
    return 0;
}

struct take_args {
    cmp_queue_t *q;
    uint32_t next, n;
    int rc;
};

static void *take_thread(void *arg)
{
    struct take_args *a = arg;
    struct sink s = {0};
    a->rc = take_in_order(a->q, &s, &a->next, a->n);
    sink_free(&s);
    return NULL;
}

/* A consumer reads small spilled messages ahead, into a buffer of its own.
 * Other consumers taking messages in between (a fork child, which starts
 * with a copy of that buffer, and another thread) must make it read again:
 * every message arrives once, in order, whole, big ones among the small
 * included. */
Test(spill, read_ahead_follows_other_consumers, .timeout = 60)
{
    cmp_queue_t *q = spill_queue(4096, 0);
    const uint32_t total = 20000;
    static uint8_t buf[100000];
    for (uint32_t i = 0; i < total; i++) {
        size_t len = i % 997 == 500 ? sizeof buf : MSG_HDR + i % 300;
        make_msg(buf, len, 0, i);
        cr_assert_eq(cmp_queue_put(q, buf, len, CMP_NOWAIT), 0);
    }
    cr_assert(cmp_ring_spilled(cmp_queue_ring(q)) > (uint64_t)total / 2);
    struct sink s = {0};
    uint64_t rng = 7;
    uint32_t next = 0;
    for (int round = 0; next < total; round++) {
        uint32_t left = total - next;
        uint32_t mine = (uint32_t)(rng_next(&rng) % 40) + 1;
        mine = mine < left ? mine : left;
        cr_assert_eq(take_in_order(q, &s, &next, mine), 0, "round %d at %u", round, next);
        left -= mine;
        uint32_t theirs = (uint32_t)(rng_next(&rng) % 40) + 1;
        theirs = theirs < left ? theirs : left;
        if (theirs == 0)
            break;
        if (round % 2 == 0) {
            pid_t pid = fork_or_fail();
            if (pid == 0)
                _exit(take_in_order(q, &s, &next, theirs) == 0 ? 0 : 1);
            sync_reap_ok(pid);
            next += theirs;
        } else {
            struct take_args a = {q, next, theirs, -1};
            pthread_t t;
            cr_assert_eq(pthread_create(&t, NULL, take_thread, &a), 0);
            cr_assert_eq(pthread_join(t, NULL), 0);
            cr_assert_eq(a.rc, 0, "thread at %u", next);
            next = a.next;
        }
    }
    cr_assert_eq(next, total);
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT), -EAGAIN);
    cr_assert_eq(cmp_ring_spilled(cmp_queue_ring(q)), 0);
    cr_assert(spill_blocks(q) * 512 <= 64 * 1024, "spill pages kept: %ld", spill_blocks(q));
    sink_free(&s);
    cmp_queue_detach(q);
}

/* Two spills with the same sizes at the same positions, taken from in
 * turn by one thread: each message comes from its own queue. */
Test(spill, read_ahead_is_per_spill, .timeout = 30)
{
    cmp_queue_t *q[2] = {spill_queue(4096, 0), spill_queue(4096, 0)};
    const uint32_t total = 3000;
    uint8_t buf[MSG_HDR + 64];
    for (uint32_t k = 0; k < 2; k++)
        for (uint32_t i = 0; i < total; i++) {
            make_msg(buf, sizeof buf, k, i);
            cr_assert_eq(cmp_queue_put(q[k], buf, sizeof buf, CMP_NOWAIT), 0);
        }
    struct sink s = {0};
    for (uint32_t i = 0; i < total; i++)
        for (uint32_t k = 0; k < 2; k++) {
            uint32_t p, n;
            cr_assert_eq(cmp_queue_get(q[k], sink_alloc, &s, CMP_NOWAIT), 0);
            cr_assert(parse_msg(s.buf, s.len, &p, &n));
            cr_assert(p == k && n == i, "queue %u message %u: got %u/%u", k, i, p, n);
        }
    sink_free(&s);
    cmp_queue_detach(q[0]);
    cmp_queue_detach(q[1]);
}
