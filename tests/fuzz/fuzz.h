/*
 * Helpers shared by the libFuzzer targets: the stdlib's framing read
 * independently of src/conn.c (the oracle the targets check libcmp
 * against), and a peer that feeds bytes into an fd.
 *
 * Everything here uses the public cmp.h API or plain syscalls, so the
 * targets keep building while conn.c's internals change.
 */
#ifndef CMP_FUZZ_H
#define CMP_FUZZ_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cmp.h"

/* A failed invariant: report it where libFuzzer shows it, then abort so
 * the input is saved as a crash artifact. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* What the next frame of a byte stream is, by the stdlib's rules. */
typedef enum {
    SPEC_MSG,        /* a whole message: len bytes after hlen header bytes */
    SPEC_EOF,        /* the stream ends between two messages */
    SPEC_TRUNC_HDR,  /* it ends inside a header */
    SPEC_NEGATIVE,   /* a negative 4-byte length other than the -1 marker */
    SPEC_TRUNC_BODY, /* it ends before the announced len bytes */
} spec_kind;

typedef struct {
    spec_kind kind;
    size_t hlen;  /* 4, or 12 for the -1 marker + 8-byte length */
    uint64_t len; /* the announced payload length */
} spec_frame;

static inline uint64_t fuzz_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* The frame starting at d[off] of a stream of n bytes. */
static inline spec_frame spec_next(const uint8_t *d, size_t n, size_t off)
{
    spec_frame f = {SPEC_EOF, 0, 0};
    size_t left = n - off;
    if (left == 0)
        return f;
    f.kind = SPEC_TRUNC_HDR;
    if (left < 4)
        return f;
    int32_t small = (int32_t)(uint32_t)fuzz_be(d + off, 4);
    if (small == -1) {
        if (left < 12)
            return f;
        f.hlen = 12;
        f.len = fuzz_be(d + off + 4, 8);
    } else if (small < 0) {
        f.kind = SPEC_NEGATIVE;
        f.hlen = 4;
        return f;
    } else {
        f.hlen = 4;
        f.len = (uint64_t)small;
    }
    f.kind = f.len <= left - f.hlen ? SPEC_MSG : SPEC_TRUNC_BODY;
    return f;
}

/* A peer writing n bytes into fd, then closing (or, with shut, shutting
 * down the writing side of a socket whose replies are read back later).
 * What fits in the kernel buffer is written at once; the rest, if any, by
 * a thread, so inputs of any size work. */
typedef struct {
    int fd, shut, threaded;
    const uint8_t *d;
    size_t n;
    pthread_t thread;
} fuzz_feeder;

static inline void fuzz_feed_end(fuzz_feeder *f)
{
    if (f->shut)
        shutdown(f->fd, SHUT_WR);
    else
        close(f->fd);
}

static void *fuzz_feed_rest(void *arg)
{
    fuzz_feeder *f = arg;
    while (f->n > 0) {
        ssize_t w = write(f->fd, f->d, f->n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            break; /* the reader gave up (closed): nothing left to feed */
        f->d += w;
        f->n -= (size_t)w;
    }
    fuzz_feed_end(f);
    return NULL;
}

static inline void fuzz_feed_start(fuzz_feeder *f, int fd, const uint8_t *d, size_t n, int shut)
{
    *f = (fuzz_feeder){.fd = fd, .shut = shut, .d = d, .n = n};
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    while (f->n > 0) {
        ssize_t w = write(fd, f->d, f->n);
        if (w <= 0)
            break;
        f->d += w;
        f->n -= (size_t)w;
    }
    fcntl(fd, F_SETFL, fl);
    if (f->n == 0) {
        fuzz_feed_end(f);
        return;
    }
    FUZZ_CHECK(pthread_create(&f->thread, NULL, fuzz_feed_rest, f) == 0);
    f->threaded = 1;
}

static inline void fuzz_feed_join(fuzz_feeder *f)
{
    if (f->threaded)
        pthread_join(f->thread, NULL);
}

/* Everything already written to fd by the other end (which has stopped
 * writing), up to cap bytes: how much was read. */
static inline size_t fuzz_drain(int fd, uint8_t *out, size_t cap)
{
    size_t got = 0;
    while (got < cap) {
        ssize_t k = recv(fd, out + got, cap - got, MSG_DONTWAIT);
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    return got;
}

/* Splits a stream read back from libcmp into its messages: the i-th
 * message's payload at out[i], its length at lens[i]; returns how many
 * whole messages there were (at most max). */
static inline int fuzz_frames(const uint8_t *d, size_t n, const uint8_t **out, size_t *lens,
                              int max)
{
    size_t off = 0;
    int count = 0;
    while (count < max) {
        spec_frame f = spec_next(d, n, off);
        if (f.kind != SPEC_MSG)
            break;
        out[count] = d + off + f.hlen;
        lens[count++] = (size_t)f.len;
        off += f.hlen + (size_t)f.len;
    }
    return count;
}

#endif /* CMP_FUZZ_H */
