/* cmp_ring_t: records, wrap-around, streaming, batches, many producers and
 * consumers in separate processes, crashes of both sides, timeouts, EINTR,
 * close. */
#include "pid_helpers.h"
#include "ring_helpers.h"

#include <signal.h>
#include <stdio.h>

Test(ring, footprint_and_init, .timeout = 10)
{
    cr_assert_eq(cmp_ring_footprint(0), sizeof(cmp_ring_t) + CMP_RING_DEFAULT_CAPACITY);
    cr_assert_eq(cmp_ring_footprint(1), sizeof(cmp_ring_t) + CMP_RING_MIN_CAPACITY);
    cr_assert_eq(cmp_ring_footprint(1000), sizeof(cmp_ring_t) + 1024);
    cr_assert_eq(cmp_ring_footprint(4096), sizeof(cmp_ring_t) + 4096);
    cmp_ring_t *r = test_ring(1000, 0);
    cr_assert_eq(cmp_ring_capacity(r), 1024);
    cr_assert_eq(cmp_ring_count(r), 0);
    cr_assert_eq(cmp_ring_used(r), 0);
    cr_assert_eq(cmp_ring_init(r, (size_t)CMP_RING_MAX_CAPACITY * 2, 0), -EINVAL);
    cr_assert_eq(cmp_ring_init(r, 1024, (uint64_t)CMP_QUEUE_MAXSIZE_MAX + 1), -EINVAL);
}

Test(ring, put_get_every_small_size, .timeout = 10)
{
    cmp_ring_t *r = test_ring(1024, 0);
    struct sink s = {0};
    uint8_t buf[600];
    /* 0..500 bytes, one at a time: covers every alignment and wraps the
     * 1 KiB area many times */
    for (uint32_t len = 0; len <= 500; len++) {
        fill_pattern(buf, len, len);
        cr_assert_eq(cmp_ring_put(r, buf, len, CMP_NOWAIT), 0, "len %u", len);
        cr_assert_eq(cmp_ring_count(r), 1);
        cr_assert_eq(cmp_ring_used(r), 8 + ((len + 7) & ~7u));
        cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, CMP_NOWAIT), 0);
        cr_assert_eq(s.len, len);
        cr_assert(check_pattern(s.buf ? s.buf : buf, len, len) || len == 0);
        cr_assert_eq(cmp_ring_count(r), 0);
    }
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, CMP_NOWAIT), -EAGAIN);
    sink_free(&s);
}

Test(ring, fifo_when_several_are_queued, .timeout = 10)
{
    cmp_ring_t *r = test_ring(4096, 0);
    struct sink s = {0};
    for (int round = 0; round < 50; round++) {
        uint8_t m[200];
        int n = 0;
        for (;; n++) {
            size_t len = 8 + (size_t)(round * 7 + n * 13) % 150;
            make_msg(m, len, 1, (uint32_t)n);
            int rc = cmp_ring_put(r, m, len, CMP_NOWAIT);
            if (rc == -EAGAIN)
                break;
            cr_assert_eq(rc, 0);
        }
        cr_assert(n > 10);
        cr_assert_eq(cmp_ring_count(r), (uint64_t)n);
        for (int i = 0; i < n; i++) {
            uint32_t p, q;
            cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, CMP_NOWAIT), 0);
            cr_assert(parse_msg(s.buf, s.len, &p, &q));
            cr_assert_eq(q, (uint32_t)i);
        }
        cr_assert_eq(cmp_ring_count(r), 0);
    }
    sink_free(&s);
}

Test(ring, gather_put_and_refused_alloc, .timeout = 10)
{
    cmp_ring_t *r = test_ring(4096, 0);
    const char *a = "head:", *b = "", *c = "payload-bytes";
    struct iovec iov[3] = {{(void *)a, 5}, {(void *)b, 0}, {(void *)c, 13}};
    cr_assert_eq(cmp_ring_putv(r, iov, 3, NULL), 0);
    cr_assert_eq(cmp_ring_putv(r, iov, -1, NULL), -EINVAL);
    /* a refused message stays */
    struct batch_sink full = {NULL, {0}, 64};
    cr_assert_eq(cmp_ring_get(r, batch_alloc, &full, CMP_NOWAIT), -ENOBUFS);
    cr_assert_eq(cmp_ring_count(r), 1);
    struct sink s = {0};
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, NULL), 0);
    cr_assert_eq(s.len, 18);
    cr_assert_eq(memcmp(s.buf, "head:payload-bytes", 18), 0);
    sink_free(&s);
}

Test(ring, batches, .timeout = 10)
{
    cmp_ring_t *r = test_ring(8192, 0);
    /* 20 messages, each of two pieces */
    char bufs[20][16];
    struct iovec iov[40];
    unsigned counts[20];
    for (int i = 0; i < 20; i++) {
        snprintf(bufs[i], sizeof bufs[i], "msg-%02d", i);
        iov[2 * i] = (struct iovec){bufs[i], 4};
        iov[2 * i + 1] = (struct iovec){bufs[i] + 4, strlen(bufs[i]) - 4};
        counts[i] = 2;
    }
    cr_assert_eq(cmp_ring_put_many(r, iov, counts, 20, CMP_NOWAIT), 20);
    cr_assert_eq(cmp_ring_put_many(r, iov, counts, 0, CMP_NOWAIT), 0);
    cr_assert_eq(cmp_ring_count(r), 20);
    uint8_t slots[64][256];
    struct batch_sink b = {slots, {0}, 0};
    cr_assert_eq(cmp_ring_get_many(r, batch_alloc, &b, 7, NULL), 7);
    cr_assert_eq(cmp_ring_get_many(r, batch_alloc, &b, 100, NULL), 13);
    cr_assert_eq(b.n, 20);
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(b.lens[i], 6);
        cr_assert_eq(memcmp(slots[i], bufs[i], 6), 0);
    }
    cr_assert_eq(cmp_ring_get_many(r, batch_alloc, &b, 5, CMP_NOWAIT), -EAGAIN);
    /* one-buffer-per-message form, and a partial batch when the ring fills */
    struct iovec big[100];
    static char blob[200];
    for (int i = 0; i < 100; i++)
        big[i] = (struct iovec){blob, sizeof blob};
    long n = cmp_ring_put_many(r, big, NULL, 100, CMP_NOWAIT);
    cr_assert(n > 10 && n < 100, "put %ld", n);
    cr_assert_eq(cmp_ring_count(r), (uint64_t)n);
    struct timespec d = test_deadline(0.05);
    cr_assert_eq(cmp_ring_put_many(r, big, NULL, 100, &d), -ETIMEDOUT);
}

Test(ring, max_count, .timeout = 10)
{
    cmp_ring_t *r = test_ring(4096, 3);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(cmp_ring_put(r, "x", 1, CMP_NOWAIT), 0);
    cr_assert_eq(cmp_ring_put(r, "x", 1, CMP_NOWAIT), -EAGAIN);
    struct timespec d = test_deadline(0.05);
    cr_assert_eq(cmp_ring_put(r, "x", 1, &d), -ETIMEDOUT);
    cr_assert_eq(cmp_ring_count(r), 3);
    struct sink s = {0};
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, NULL), 0);
    cr_assert_eq(cmp_ring_put(r, "x", 1, CMP_NOWAIT), 0);
    cr_assert_eq(cmp_ring_count(r), 3);
    sink_free(&s);
}

Test(ring, timeouts, .timeout = 10)
{
    cmp_ring_t *r = test_ring(1024, 0);
    struct sink s = {0};
    struct timespec d = test_deadline(0.1);
    double t0 = sync_now();
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, &d), -ETIMEDOUT);
    double took = sync_now() - t0;
    cr_assert(took >= 0.095 && took < 2.0, "took %f", took);
    d = test_deadline(0.1);
    cr_assert_eq(cmp_ring_wait(r, &d), -ETIMEDOUT);
    cr_assert_eq(cmp_ring_wait(r, CMP_NOWAIT), -EAGAIN);
    /* fill, then a put times out */
    static uint8_t blob[400];
    while (cmp_ring_put(r, blob, sizeof blob, CMP_NOWAIT) == 0)
        ;
    d = test_deadline(0.1);
    t0 = sync_now();
    cr_assert_eq(cmp_ring_put(r, blob, sizeof blob, &d), -ETIMEDOUT);
    took = sync_now() - t0;
    cr_assert(took >= 0.095 && took < 2.0, "took %f", took);
    cr_assert_eq(cmp_ring_wait(r, NULL), 1);
    /* a put larger than the ring times out too (it would stream) and
     * leaves nothing behind */
    uint64_t before = cmp_ring_count(r);
    static uint8_t huge[5000];
    d = test_deadline(0.05);
    cr_assert_eq(cmp_ring_put(r, huge, sizeof huge, &d), -ETIMEDOUT);
    cr_assert_eq(cmp_ring_count(r), before);
    for (uint64_t i = 0; i < before; i++) {
        cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, CMP_NOWAIT), 0);
        cr_assert_eq(s.len, sizeof blob);
    }
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, CMP_NOWAIT), -EAGAIN);
    sink_free(&s);
}

Test(ring, eintr_on_blocked_get_and_put, .timeout = 10)
{
    cmp_ring_t *r = test_ring(1024, 0);
    struct sink s = {0};
    struct sync_interrupter it;
    sync_interrupt_me_after(&it, 0.05);
    struct timespec d = test_deadline(5);
    double t0 = sync_now();
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, &d), -EINTR);
    cr_assert(sync_now() - t0 < 1.0);
    static uint8_t blob[400];
    while (cmp_ring_put(r, blob, sizeof blob, CMP_NOWAIT) == 0)
        ;
    cr_assert_eq(cmp_ring_put(r, blob, sizeof blob, &d), -EINTR);
    sync_interrupter_join(&it);
    sink_free(&s);
}

Test(ring, close_wakes_and_drains, .timeout = 10)
{
    cmp_ring_t *r = test_ring(1024, 0);
    uint32_t *flag = test_shared_map(4096);
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        struct sink s = {0};
        __atomic_store_n(flag, 1, __ATOMIC_RELEASE);
        struct timespec d = test_deadline(5);
        int a = cmp_ring_get(r, sink_alloc, &s, &d); /* gets "one" */
        int b = cmp_ring_get(r, sink_alloc, &s, &d); /* woken by close */
        _exit(a == 0 && b == -EPIPE ? 0 : 1);
    }
    sync_wait_flag(flag, 1, 5);
    cr_assert_eq(cmp_ring_put(r, "one", 3, NULL), 0);
    sync_sleep(0.05);
    cmp_ring_close(r);
    sync_reap_ok(pid);
    cr_assert(cmp_ring_is_closed(r));
    cr_assert_eq(cmp_ring_put(r, "two", 3, NULL), -EPIPE);
}

Test(ring, close_lets_consumers_drain_first, .timeout = 10)
{
    cmp_ring_t *r = test_ring(1024, 0);
    cr_assert_eq(cmp_ring_put(r, "a", 1, NULL), 0);
    cmp_ring_close(r);
    struct sink s = {0};
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, NULL), 0);
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, NULL), -EPIPE);
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, CMP_NOWAIT), -EPIPE);
    sink_free(&s);
}

/* --- many producers, many consumers ------------------------------------- */

#define MP_PRODUCERS 3
#define MP_CONSUMERS 3
#define MP_PER_PRODUCER 4000

struct mp_shared {
    uint32_t seen[MP_PRODUCERS][MP_PER_PRODUCER];
    uint32_t bad;
    uint32_t total;
};

static int mp_consumer(cmp_ring_t *r, struct mp_shared *sh)
{
    struct sink s = {0};
    uint32_t last[MP_PRODUCERS];
    memset(last, 0xff, sizeof last);
    for (;;) {
        struct timespec d = test_deadline(10);
        int rc = cmp_ring_get(r, sink_alloc, &s, &d);
        if (rc == -EPIPE)
            break;
        if (rc != 0)
            return 2;
        uint32_t p, q;
        if (!parse_msg(s.buf, s.len, &p, &q) || p >= MP_PRODUCERS || q >= MP_PER_PRODUCER) {
            __atomic_fetch_add(&sh->bad, 1, __ATOMIC_RELAXED);
            continue;
        }
        /* per producer, what one consumer sees is increasing */
        if (last[p] != UINT32_MAX && q <= last[p])
            __atomic_fetch_add(&sh->bad, 1, __ATOMIC_RELAXED);
        last[p] = q;
        __atomic_fetch_add(&sh->seen[p][q], 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&sh->total, 1, __ATOMIC_RELAXED);
    }
    sink_free(&s);
    return 0;
}

static int mp_producer(cmp_ring_t *r, uint32_t id, size_t max_len)
{
    uint64_t rng = id * 7919 + 1;
    uint8_t *buf = malloc(max_len);
    for (uint32_t q = 0; q < MP_PER_PRODUCER; q++) {
        size_t len = MSG_HDR + rng_next(&rng) % (max_len - MSG_HDR + 1);
        /* now and then one larger than the ring: streamed */
        make_msg(buf, len, id, q);
        struct timespec d = test_deadline(10);
        if (cmp_ring_put(r, buf, len, &d) != 0)
            return 1;
    }
    free(buf);
    return 0;
}

static void run_mpmc(size_t capacity, size_t max_len)
{
    cmp_ring_t *r = test_ring(capacity, 0);
    struct mp_shared *sh = test_shared_map(sizeof *sh);
    pid_t cons[MP_CONSUMERS], prods[MP_PRODUCERS];
    for (int i = 0; i < MP_CONSUMERS; i++)
        if ((cons[i] = fork_or_fail()) == 0)
            _exit(mp_consumer(r, sh));
    for (int i = 0; i < MP_PRODUCERS; i++)
        if ((prods[i] = fork_or_fail()) == 0)
            _exit(mp_producer(r, (uint32_t)i, max_len));
    for (int i = 0; i < MP_PRODUCERS; i++)
        sync_reap_ok(prods[i]);
    cmp_ring_close(r);
    for (int i = 0; i < MP_CONSUMERS; i++)
        sync_reap_ok(cons[i]);
    cr_assert_eq(sh->bad, 0);
    cr_assert_eq(sh->total, MP_PRODUCERS * MP_PER_PRODUCER);
    for (int p = 0; p < MP_PRODUCERS; p++)
        for (int q = 0; q < MP_PER_PRODUCER; q++)
            cr_assert_eq(sh->seen[p][q], 1, "producer %d message %d seen %u times", p, q,
                         sh->seen[p][q]);
    cr_assert_eq(cmp_ring_count(r), 0);
    cr_assert_eq(cmp_ring_used(r), 0);
}

Test(ring, mpmc_small_messages_exactly_once_in_order, .timeout = 30)
{
    run_mpmc(64 * 1024, 200);
}

Test(ring, mpmc_with_streamed_messages, .timeout = 30)
{
    /* up to 3 KiB through a 1 KiB ring: most messages stream */
    run_mpmc(1024, 3000);
}

/* --- sizes up to 64 MiB ------------------------------------------------- */

Test(ring, random_sizes_up_to_64_mib_through_a_small_ring, .timeout = 60)
{
    cmp_ring_t *r = test_ring(256 * 1024, 0);
    enum { N = 24 };
    size_t *sizes = test_shared_map(N * sizeof(size_t));
    uint64_t rng = 12345;
    for (int i = 0; i < N; i++) {
        /* log-uniform in [0, 64 MiB] */
        unsigned bits = (unsigned)(rng_next(&rng) % 27);
        sizes[i] = (size_t)(rng_next(&rng) % ((UINT64_C(1) << bits) + 1));
    }
    sizes[3] = 64u << 20;
    sizes[4] = 0;
    sizes[5] = 128 * 1024 - 8; /* the largest unstreamed message */
    sizes[6] = 128 * 1024 - 7; /* the smallest streamed one */
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        uint8_t *buf = malloc(64u << 20);
        for (int i = 0; i < N; i++) {
            fill_pattern(buf, sizes[i], (uint64_t)i);
            struct timespec d = test_deadline(30);
            if (cmp_ring_put(r, buf, sizes[i], &d) != 0)
                _exit(1);
        }
        _exit(0);
    }
    struct sink s = {0};
    for (int i = 0; i < N; i++) {
        struct timespec d = test_deadline(30);
        cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, &d), 0, "message %d", i);
        cr_assert_eq(s.len, sizes[i]);
        cr_assert(check_pattern(s.buf, s.len, (uint64_t)i), "message %d corrupt", i);
    }
    sync_reap_ok(pid);
    cr_assert_eq(cmp_ring_count(r), 0);
    sink_free(&s);
}

/* --- crashes -------------------------------------------------------------- */

enum { KILLS = 16, BIG = 2u << 20 };

struct crash_shared {
    uint32_t bad;
    uint32_t small_seen;
    /* per victim, counted by the consumer: streams whose first chunk it
     * began to copy, and how each ended */
    uint32_t begun[KILLS];
    uint32_t delivered[KILLS];
    uint32_t aborted[KILLS];
    uint32_t hold[KILLS];   /* the consumer stops in the victim's first chunk */
    uint32_t killed[KILLS]; /* ... until the victim is dead */
};

/* The consumer's alloc: victim k's messages are BIG + 8k bytes, so a call
 * for one says whose stream has begun: its first chunk is published and
 * the consumer is copying it. */
struct crash_sink {
    struct sink s;
    struct crash_shared *sh;
    uint32_t cur;
};

static void *crash_alloc(void *arg, size_t len)
{
    struct crash_sink *c = arg;
    if (len >= BIG && len < BIG + 8 * KILLS) {
        c->cur = (uint32_t)(len - BIG) / 8;
        __atomic_fetch_add(&c->sh->begun[c->cur], 1, __ATOMIC_RELEASE);
        if (__atomic_load_n(&c->sh->hold[c->cur], __ATOMIC_ACQUIRE)) {
            /* the victim cannot finish its stream while we hold it here: the
             * kill lands mid-stream however slow anyone is (a hang guard) */
            double end = sync_now() + 60;
            while (!__atomic_load_n(&c->sh->killed[c->cur], __ATOMIC_ACQUIRE)) {
                if (sync_now() > end)
                    _exit(4);
                sync_sleep(0.001);
            }
        }
    }
    return sink_alloc(&c->s, len);
}

/* 1 once every stream of victim k that the consumer began has ended,
 * delivered whole or cut. */
static int crash_settled(struct crash_shared *sh, int k)
{
    uint32_t b = __atomic_load_n(&sh->begun[k], __ATOMIC_ACQUIRE);
    return b == __atomic_load_n(&sh->delivered[k], __ATOMIC_ACQUIRE) +
                    __atomic_load_n(&sh->aborted[k], __ATOMIC_ACQUIRE);
}

/* A producer SIGKILLed in the middle of a stream, again and again, while a
 * well-behaved producer and a consumer keep going: nothing corrupt is ever
 * delivered, every small message arrives once and in order, every stream
 * the consumer began is delivered whole or cut (a stream whose victim was
 * killed mid-way is cut, promptly), and the ring ends empty with both locks
 * free. Each kill waits for state, not time: for the victim's stream to
 * reach the consumer; every other victim is killed while the consumer holds
 * its stream (so surely mid-stream), the rest up to 3 ms later, wherever
 * that lands (mid-stream, between puts, in the next put's first chunk). */
Test(ring, producer_killed_mid_stream_repeatedly, .timeout = 60)
{
    cmp_ring_t *r = test_ring(16 * 1024, 0);
    struct crash_shared *sh = test_shared_map(sizeof *sh);
    enum { SMALL = 3000 };

    pid_t consumer = fork_or_fail();
    if (consumer == 0) {
        struct crash_sink c = {.sh = sh};
        uint32_t next_small = 0;
        for (;;) {
            struct timespec d = test_deadline(20);
            int rc = cmp_ring_get(r, crash_alloc, &c, &d);
            if (rc == -EPIPE)
                break;
            if (rc == -ECONNABORTED) {
                __atomic_fetch_add(&sh->aborted[c.cur], 1, __ATOMIC_RELEASE);
                continue;
            }
            if (rc != 0)
                _exit(2);
            uint32_t p, q;
            if (!parse_msg(c.s.buf, c.s.len, &p, &q)) {
                __atomic_fetch_add(&sh->bad, 1, __ATOMIC_RELAXED);
            } else if (p == 0) {
                if (q != next_small)
                    __atomic_fetch_add(&sh->bad, 1, __ATOMIC_RELAXED);
                next_small = q + 1;
            } else if (p > KILLS || c.s.len != BIG + 8 * (p - 1)) {
                __atomic_fetch_add(&sh->bad, 1, __ATOMIC_RELAXED);
            } else {
                __atomic_fetch_add(&sh->delivered[p - 1], 1, __ATOMIC_RELEASE);
            }
        }
        sh->small_seen = next_small;
        sink_free(&c.s);
        _exit(0);
    }
    pid_t good = fork_or_fail();
    if (good == 0) {
        uint8_t m[300];
        for (uint32_t q = 0; q < SMALL; q++) {
            size_t len = MSG_HDR + q % 290;
            make_msg(m, len, 0, q);
            struct timespec d = test_deadline(20);
            if (cmp_ring_put(r, m, len, &d) != 0)
                _exit(1);
            if (q % 64 == 0)
                sync_sleep(0.001);
        }
        _exit(0);
    }
    uint64_t rng = 99;
    for (int k = 0; k < KILLS; k++) {
        int hold = k % 2 == 0;
        sh->hold[k] = (uint32_t)hold;
        pid_t victim = fork_or_fail();
        if (victim == 0) {
            size_t len = BIG + 8 * (size_t)k; /* through 16 KiB: ~500 chunks */
            uint8_t *buf = malloc(len);
            make_msg(buf, len, 1 + (uint32_t)k, 0);
            for (;;)
                cmp_ring_put(r, buf, len, NULL);
        }
        sync_wait_flag(&sh->begun[k], 1, 30); /* a hang guard */
        if (!hold)
            sync_sleep((double)(rng_next(&rng) % 3000) / 1e6);
        kill(victim, SIGKILL);
        waitpid(victim, NULL, 0);
        __atomic_store_n(&sh->killed[k], 1, __ATOMIC_RELEASE);
        if (hold) /* the consumer notices the dead producer */
            sync_wait_flag(&sh->aborted[k], 1, 30);
        double end = sync_now() + 30;
        while (!crash_settled(sh, k)) {
            cr_assert(sync_now() < end, "victim %d: a stream neither delivered nor cut", k);
            sync_sleep(0.001);
        }
    }
    sync_reap_ok(good);
    double end = sync_now() + 30;
    while (cmp_ring_count(r) != 0) {
        cr_assert(sync_now() < end, "the consumer does not drain the ring");
        sync_sleep(0.001);
    }
    cmp_ring_close(r);
    sync_reap_ok(consumer);
    cr_assert_eq(sh->bad, 0);
    cr_assert_eq(sh->small_seen, SMALL);
    for (int k = 0; k < KILLS; k++) {
        /* a victim is killed once: at most its last stream is cut */
        cr_assert(sh->begun[k] >= 1 && crash_settled(sh, k) && sh->aborted[k] <= 1,
                  "victim %d: begun %u delivered %u aborted %u", k, sh->begun[k], sh->delivered[k],
                  sh->aborted[k]);
        if (sh->hold[k])
            cr_assert_eq(sh->aborted[k], 1, "victim %d was killed mid-stream", k);
    }
    cr_assert_eq(cmp_ring_count(r), 0);
    cr_assert_eq(cmp_lock_is_locked(&r->clock), 0);
}

/* The only producer dies mid-stream: the consumer waiting for the rest
 * notices, drops the message, and the ring works on. */
/* The only producer starts a 100 kB stream through a 4 KiB ring and is
 * SIGKILLed mid-stream; returns its pid, reaped. */
static pid_t kill_producer_mid_stream(cmp_ring_t *r)
{
    uint32_t *flag = test_shared_map(4096);
    pid_t victim = fork_or_fail();
    if (victim == 0) {
        static uint8_t big[100000];
        __atomic_store_n(flag, 1, __ATOMIC_RELEASE);
        cmp_ring_put(r, big, sizeof big, NULL);
        _exit(0);
    }
    sync_wait_flag(flag, 1, 5);
    sync_sleep(0.05); /* the ring is full of the stream's first chunks */
    kill(victim, SIGKILL);
    waitpid(victim, NULL, 0);
    return victim;
}

static void consumer_drops_dead_stream(int reuse_pid)
{
    cmp_ring_t *r = test_ring(4096, 0);
    pid_t victim = kill_producer_mid_stream(r);
    pid_t squatter = reuse_pid ? pid_squatter(victim) : 0;
    struct sink s = {0};
    struct timespec d = test_deadline(5);
    double t0 = sync_now();
    int rc = cmp_ring_get(r, sink_alloc, &s, &d);
    double took = sync_now() - t0;
    if (squatter)
        pid_squatter_end(squatter);
    cr_assert_eq(rc, -ECONNABORTED);
    cr_assert(took < 2.0, "took %f s", took);
    cr_assert_eq(cmp_lock_is_locked(&r->plock), 0);
    cr_assert_eq(cmp_ring_count(r), 0);
    cr_assert_eq(cmp_ring_put(r, "after", 5, NULL), 0);
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, &d), 0);
    cr_assert_eq(s.len, 5);
    cr_assert_eq(memcmp(s.buf, "after", 5), 0);
    cr_assert_eq(cmp_ring_used(r), 0);
    sink_free(&s);
}

Test(ring, consumer_notices_dead_producer_mid_stream, .timeout = 20)
{
    consumer_drops_dead_stream(0);
}

/* The same, the dead producer's pid given to a live process meanwhile. */
Test(ring, consumer_notices_dead_producer_mid_stream_pid_reused, .timeout = 20)
{
    consumer_drops_dead_stream(1);
}

/* The next producer takes over from one that died mid-stream, marks the
 * stream aborted and puts its own message after it. */
Test(ring, next_producer_aborts_dead_stream, .timeout = 20)
{
    cmp_ring_t *r = test_ring(4096, 0);
    pid_t victim = kill_producer_mid_stream(r);
    cr_assert_eq(cmp_lock_holder(&r->plock), victim);
    pid_t prod = fork_or_fail();
    if (prod == 0) {
        struct timespec d = test_deadline(5);
        _exit(cmp_ring_put(r, "next", 4, &d) == 0 ? 0 : 1);
    }
    sync_sleep(0.3); /* the producer has taken over and waits for room */
    struct sink s = {0};
    struct timespec d = test_deadline(5);
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, &d), -ECONNABORTED);
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, &d), 0);
    cr_assert_eq(s.len, 4);
    cr_assert_eq(memcmp(s.buf, "next", 4), 0);
    sync_reap_ok(prod);
    cr_assert_eq(cmp_ring_count(r), 0);
    sink_free(&s);
}

struct victim_arg {
    uint32_t *flag;
    double sleep;
};

static void *sleepy_alloc(void *arg, size_t len)
{
    static uint8_t buf[1 << 20];
    struct victim_arg *v = arg;
    (void)len;
    __atomic_store_n(v->flag, 1, __ATOMIC_RELEASE);
    sync_sleep(v->sleep);
    return buf;
}

/* A consumer killed while it copies an unstreamed message: the message is
 * delivered whole to the next consumer. */
Test(ring, consumer_killed_mid_get_redelivers_whole_message, .timeout = 20)
{
    cmp_ring_t *r = test_ring(4096, 0);
    uint32_t *flag = test_shared_map(4096);
    uint8_t m[1000];
    make_msg(m, sizeof m, 7, 1);
    cr_assert_eq(cmp_ring_put(r, m, sizeof m, NULL), 0);
    pid_t victim = fork_or_fail();
    if (victim == 0) {
        struct victim_arg v = {flag, 100};
        cmp_ring_get(r, sleepy_alloc, &v, NULL);
        _exit(0);
    }
    sync_wait_flag(flag, 1, 5);
    kill(victim, SIGKILL);
    waitpid(victim, NULL, 0);
    struct sink s = {0};
    struct timespec d = test_deadline(5);
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, &d), 0);
    uint32_t p, q;
    cr_assert(parse_msg(s.buf, s.len, &p, &q));
    cr_assert_eq(p, 7);
    cr_assert_eq(q, 1);
    cr_assert_eq(cmp_ring_count(r), 0);
    sink_free(&s);
}

/* A consumer killed midway through a stream: the rest of that stream is
 * skipped by the next consumer, which gets the following message intact. */
Test(ring, consumer_killed_mid_stream_rest_is_skipped, .timeout = 20)
{
    cmp_ring_t *r = test_ring(4096, 0);
    uint32_t *flag = test_shared_map(4096);
    pid_t prod = fork_or_fail();
    if (prod == 0) {
        static uint8_t big[200000];
        uint8_t m[100];
        make_msg(big, sizeof big, 1, 0);
        make_msg(m, sizeof m, 2, 0);
        if (cmp_ring_put(r, big, sizeof big, NULL) != 0 || cmp_ring_put(r, m, sizeof m, NULL) != 0)
            _exit(1);
        _exit(0);
    }
    pid_t victim = fork_or_fail();
    if (victim == 0) {
        struct victim_arg v = {flag, 0.1};
        cmp_ring_get(r, sleepy_alloc, &v, NULL);
        _exit(0);
    }
    sync_wait_flag(flag, 1, 5);
    /* freeze the producer while the victim is inside the stream */
    kill(prod, SIGSTOP);
    sync_sleep(0.3);
    kill(victim, SIGKILL);
    waitpid(victim, NULL, 0);
    kill(prod, SIGCONT);
    struct sink s = {0};
    struct timespec d = test_deadline(10);
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, &d), 0);
    uint32_t p, q;
    cr_assert(parse_msg(s.buf, s.len, &p, &q));
    cr_assert_eq(p, 2, "got message of producer %u (%zu bytes)", p, s.len);
    sync_reap_ok(prod);
    cr_assert_eq(cmp_ring_count(r), 0);
    cr_assert_eq(cmp_ring_used(r), 0);
    sink_free(&s);
}

/* A blocked consumer killed while it holds the consumer lock: the next one
 * takes over and gets the message. */
Test(ring, consumer_killed_while_waiting, .timeout = 20)
{
    cmp_ring_t *r = test_ring(4096, 0);
    uint32_t *flag = test_shared_map(4096);
    pid_t victim = fork_or_fail();
    if (victim == 0) {
        struct sink s = {0};
        __atomic_store_n(flag, 1, __ATOMIC_RELEASE);
        cmp_ring_get(r, sink_alloc, &s, NULL);
        _exit(0);
    }
    sync_wait_flag(flag, 1, 5);
    sync_sleep(0.05);
    kill(victim, SIGKILL);
    waitpid(victim, NULL, 0);
    cr_assert_eq(cmp_ring_put(r, "hello", 5, NULL), 0);
    struct sink s = {0};
    struct timespec d = test_deadline(5);
    cr_assert_eq(cmp_ring_get(r, sink_alloc, &s, &d), 0);
    cr_assert_eq(s.len, 5);
    sink_free(&s);
}

/* Waits until the consumer has announced itself asleep on the ring. */
static void wait_sleeper(cmp_ring_t *r)
{
    double end = sync_now() + 10;
    while (!__atomic_load_n(&r->data_waiters, __ATOMIC_ACQUIRE))
        cr_assert(sync_now() < end, "the consumer never went to sleep");
    sync_sleep(0.01); /* into futex_wait, most likely; either way is correct */
}

/* A waker killed between its bump of the sequence and its wake leaves the
 * sleeper's flag set, so the next put wakes it; and a sleeper whose flag
 * was lost altogether (no put ever wakes it) finds the data by its own
 * periodic recheck. Both gets have no deadline: without either, this hangs
 * until Criterion's timeout. */
Test(ring, sleeper_survives_a_waker_killed_mid_wake, .timeout = 20)
{
    cmp_ring_t *r = test_ring(4096, 0);
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        struct sink s = {0};
        int ok = cmp_ring_get(r, sink_alloc, &s, NULL) == 0 && s.len == 3 &&
                 memcmp(s.buf, "one", 3) == 0;
        ok = ok && cmp_ring_get(r, sink_alloc, &s, NULL) == 0 && s.len == 3 &&
             memcmp(s.buf, "two", 3) == 0;
        _exit(ok ? 0 : 1);
    }
    wait_sleeper(r);
    /* what a waker killed after its bump leaves behind: the sequence moved,
     * nobody woken, the flag still set */
    __atomic_fetch_add(&r->data_seq, 1, __ATOMIC_ACQ_REL);
    cr_assert_neq(__atomic_load_n(&r->data_waiters, __ATOMIC_ACQUIRE), 0);
    cr_assert_eq(cmp_ring_put(r, "one", 3, NULL), 0);
    wait_sleeper(r);
    /* the worst case: the flag gone, so this put wakes nobody */
    __atomic_store_n(&r->data_waiters, 0, __ATOMIC_RELEASE);
    cr_assert_eq(cmp_ring_put(r, "two", 3, NULL), 0);
    cr_assert_eq(test_join(pid, 10), 0);
}
