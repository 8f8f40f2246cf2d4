/*
 * libFuzzer target: the receive side of the connection framing (conn.c).
 *
 * The input is the byte stream a peer sends. It goes into a socketpair or
 * a pipe whose writing end is then closed, and cmp_conn_recv is called
 * until it fails. spec_next (fuzz.h), an independent reading of the
 * stdlib's framing, says what each call must return: the same messages,
 * byte for byte, none longer than what was sent, and the right error where
 * the stream stops being valid. The same input runs through each way a
 * caller drives a connection (socket or pipe, no deadline or a deadline,
 * a small maxlen, and bytes trickling in under an expired deadline so that
 * every call resumes a partial header or payload), because each takes a
 * different path through conn.c.
 *
 * Memory: the alloc callback allocates what libcmp asks for, so libFuzzer's
 * -malloc_limit_mb (make fuzz sets it) reports an allocation sized by a
 * header's claim instead of by the bytes that arrived.
 */
#include "fuzz.h"

#include <signal.h>
#include <time.h>

typedef struct {
    cmp_conn_rx_t *rx; /* the receive the callback serves */
    int failed;        /* the last allocation returned NULL */
} alloc_state;

/* FUZZ_ALLOC_CAP=N (bytes) refuses larger allocations, as a full memory
 * would: a way to fuzz the rest of the framing while a claim-sized
 * allocation is a known, unfixed bug. Unset, nothing is refused and the
 * malloc limit decides. */
static size_t alloc_cap = SIZE_MAX;

/* realloc of the message's room: libcmp may ask again for more room as the
 * payload arrives, and the new room starts with what the old one held. */
static void *track_alloc(void *arg, size_t len)
{
    alloc_state *st = arg;
    void *p = len > alloc_cap ? NULL : realloc(st->rx->buf, len ? len : 1);
    st->failed = p == NULL;
    return p;
}

/* One way of driving a connection. */
typedef struct {
    const char *name;
    int duplex;      /* socketpair, else pipe */
    int deadline;    /* 0 none, 1 ten seconds away, 2 already expired (trickle) */
    uint64_t maxlen; /* for cmp_conn_recv */
    int poll_first;  /* cmp_conn_poll before each receive */
} mode;

static const mode modes[] = {
    {"socket", 1, 0, UINT64_MAX, 0},       {"pipe+deadline+poll", 0, 1, UINT64_MAX, 1},
    {"socket+maxlen", 1, 1, 16, 0},        {"socket+trickle", 1, 2, UINT64_MAX, 0},
    {"pipe+trickle", 0, 2, UINT64_MAX, 0},
};

/* Chunk sizes for a trickling peer: mixed small and large so header and
 * payload boundaries fall at every offset over the corpus. */
static const size_t chunks[] = {1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987};

typedef struct {
    int fd;
    const uint8_t *d;
    size_t n, sent;
    unsigned step;
} trickle;

/* Writes the next chunk; 0 once everything is written and the end closed. */
static int trickle_more(trickle *t)
{
    if (t->fd < 0)
        return 0;
    if (t->sent == t->n) {
        close(t->fd);
        t->fd = -1;
        return 1; /* the EOF is news to the reader too */
    }
    size_t k = chunks[t->step++ % (sizeof chunks / sizeof chunks[0])];
    if (k > t->n - t->sent)
        k = t->n - t->sent;
    /* The reader timed out, so the buffer is empty: a chunk this small
     * never blocks. */
    FUZZ_CHECK(write(t->fd, t->d + t->sent, k) == (ssize_t)k);
    t->sent += k;
    return 1;
}

static void run(const mode *m, const uint8_t *d, size_t n)
{
    cmp_conn_t rd, wr;
    FUZZ_CHECK(cmp_conn_pair(&rd, &wr, m->duplex) == 0);
    fuzz_feeder feeder = {.fd = -1};
    trickle tr = {.fd = -1};
    if (m->deadline == 2)
        tr = (trickle){.fd = wr.fd, .d = d, .n = n};
    else
        fuzz_feed_start(&feeder, wr.fd, d, n, 0);
    wr.fd = -1; /* the feeder owns it now */

    struct timespec far, expired = {0, 0}, *deadline = NULL;
    if (m->deadline == 1) {
        cmp_deadline_after(10.0, &far);
        deadline = &far;
    } else if (m->deadline == 2) {
        deadline = &expired;
    }

    size_t off = 0;
    for (;;) {
        spec_frame f = spec_next(d, n, off);
        if (m->poll_first)
            FUZZ_CHECK(cmp_conn_poll(&rd, deadline) == 0); /* data or EOF are there */
        cmp_conn_rx_t rx = {0};
        alloc_state st = {&rx, 0};
        int r;
        do
            r = cmp_conn_recv(&rd, &rx, m->maxlen, track_alloc, &st, deadline);
        while (r == -ETIMEDOUT && trickle_more(&tr));
        FUZZ_CHECK(r != -ETIMEDOUT && r != -EINTR);

        int more = 0;
        switch (f.kind) {
        case SPEC_MSG:
            if (f.len > m->maxlen) {
                FUZZ_CHECK(r == -EMSGSIZE && rx.len == f.len);
                break;
            }
            FUZZ_CHECK(r == 0);
            FUZZ_CHECK(rx.len == f.len);
            FUZZ_CHECK(f.len == 0 || memcmp(rx.buf, d + off + f.hlen, (size_t)f.len) == 0);
            off += f.hlen + (size_t)f.len;
            more = 1;
            break;
        case SPEC_EOF:
            FUZZ_CHECK(r == CMP_CONN_EOF);
            break;
        case SPEC_TRUNC_HDR:
            FUZZ_CHECK(r == -EPROTO);
            break;
        case SPEC_NEGATIVE:
            /* The stdlib reads it as an empty message; refusing the stream
             * is the stricter choice. Either, but nothing else. */
            FUZZ_CHECK(r == -EPROTO || (r == 0 && rx.len == 0));
            off += f.hlen;
            more = r == 0;
            break;
        case SPEC_TRUNC_BODY:
            if (f.len > m->maxlen)
                FUZZ_CHECK(r == -EMSGSIZE && rx.len == f.len);
            else
                /* -ENOMEM: the allocation failed, or no buffer could
                 * hold the length (more than half the address space). */
                FUZZ_CHECK(r == -EPROTO || (r == -ENOMEM && (st.failed || f.len > SIZE_MAX / 2)));
            break;
        }
        free(rx.buf);
        if (!more)
            break;
    }
    cmp_conn_close(&rd); /* before the join: a blocked feeder then fails fast */
    fuzz_feed_join(&feeder);
    if (tr.fd >= 0)
        close(tr.fd);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* A feeder writing after the reader stopped gets EPIPE, not a signal. */
    signal(SIGPIPE, SIG_IGN);
    const char *cap = getenv("FUZZ_ALLOC_CAP");
    if (cap && *cap)
        alloc_cap = (size_t)strtoull(cap, NULL, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        run(&modes[i], d, n);
    return 0;
}
