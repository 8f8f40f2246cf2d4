/* Helpers for the ring and queue tests: checksummed messages, a growable
 * sink for cmp_ring_alloc_fn, rings in shared memory. */
#ifndef CMP_TEST_RING_HELPERS_H
#define CMP_TEST_RING_HELPERS_H

#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/uio.h>

#include "sync_helpers.h"

/* Message layout for the tests: [u32 producer][u32 seq][payload...], the
 * payload a pure function of (producer, seq, length). */
#define MSG_HDR 8u

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static inline void fill_pattern(uint8_t *p, size_t n, uint64_t seed)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = mix64(seed + i);
        memcpy(p + i, &w, 8);
    }
    if (i < n) {
        uint64_t w = mix64(seed + i);
        memcpy(p + i, &w, n - i);
    }
}

static inline int check_pattern(const uint8_t *p, size_t n, uint64_t seed)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = mix64(seed + i);
        if (memcmp(p + i, &w, 8) != 0)
            return 0;
    }
    if (i < n) {
        uint64_t w = mix64(seed + i);
        if (memcmp(p + i, &w, n - i) != 0)
            return 0;
    }
    return 1;
}

static inline uint64_t msg_seed(uint32_t producer, uint32_t seq, size_t len)
{
    return mix64(((uint64_t)producer << 32 | seq) ^ ((uint64_t)len * 0x9e3779b97f4a7c15ULL));
}

/* Builds a test message of len >= MSG_HDR bytes into buf. */
static inline void make_msg(uint8_t *buf, size_t len, uint32_t producer, uint32_t seq)
{
    memcpy(buf, &producer, 4);
    memcpy(buf + 4, &seq, 4);
    fill_pattern(buf + MSG_HDR, len - MSG_HDR, msg_seed(producer, seq, len));
}

/* 1 if buf holds an intact test message; sets *producer, *seq. */
static inline int parse_msg(const uint8_t *buf, size_t len, uint32_t *producer, uint32_t *seq)
{
    if (len < MSG_HDR)
        return 0;
    memcpy(producer, buf, 4);
    memcpy(seq, buf + 4, 4);
    return check_pattern(buf + MSG_HDR, len - MSG_HDR, msg_seed(*producer, *seq, len));
}

/* A growable buffer that cmp_ring_get copies into. */
struct sink {
    uint8_t *buf;
    size_t cap;
    size_t len;
    unsigned calls;
};

static void *sink_alloc(void *arg, size_t len)
{
    struct sink *s = arg;
    s->calls++;
    s->len = len;
    if (len > s->cap) {
        free(s->buf);
        s->buf = malloc(len);
        s->cap = s->buf ? len : 0;
        if (!s->buf)
            return NULL;
    }
    return s->buf ? (void *)s->buf : (void *)s;
}

static inline void sink_free(struct sink *s)
{
    free(s->buf);
    s->buf = NULL;
    s->cap = 0;
}

/* A batch sink: messages land in slots of a fixed size. */
struct batch_sink {
    uint8_t (*slots)[256];
    size_t lens[64];
    unsigned n;
};

static void *batch_alloc(void *arg, size_t len)
{
    struct batch_sink *b = arg;
    if (len > 256 || b->n >= 64)
        return NULL;
    b->lens[b->n] = len;
    return b->slots[b->n++];
}

static inline cmp_ring_t *test_ring(size_t capacity, uint64_t max_count)
{
    cmp_ring_t *r = test_shared_map(cmp_ring_footprint(capacity));
    cr_assert_eq(cmp_ring_init(r, capacity, max_count), 0);
    return r;
}

/* Forks a child that dies with the test process, so that a failing or
 * timed-out test leaves no process blocked on the ring behind. */
static inline pid_t fork_or_fail(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(3);
    }
    return pid;
}

/* Random generator for children (each seeds its own). */
static inline uint64_t rng_next(uint64_t *s)
{
    *s += 0x9e3779b97f4a7c15ULL;
    return mix64(*s);
}

#endif
