/* Connections: framing (the stdlib's exact bytes), pairs, large messages
 * across fork, EOF, truncated messages, maxlen, poll deadlines, EINTR and
 * resumption. */
#include "helpers.h"
#include "sync_helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* The alloc callback of most tests: arg is the rx, so a larger len
 * reallocs what has arrived so far. */
static void *grow(void *arg, size_t len)
{
    cmp_conn_rx_t *rx = arg;
    return realloc(rx->buf, len ? len : 1);
}

static void *into(void *arg, size_t len)
{
    (void)len;
    return arg;
}

static int recv_alloc(cmp_conn_t *c, cmp_conn_rx_t *rx)
{
    *rx = (cmp_conn_rx_t){0};
    return cmp_conn_recv(c, rx, UINT64_MAX, grow, rx, NULL);
}

Test(conn, duplex_round_trip, .timeout = 5)
{
    cmp_conn_t a, b;
    cr_assert_eq(cmp_conn_pair(&a, &b, 1), 0);
    cr_assert_eq(cmp_conn_send(&a, "hello", 5, NULL, NULL), 0);
    cr_assert_eq(cmp_conn_send(&b, "", 0, NULL, NULL), 0);
    cmp_conn_rx_t rx;
    cr_assert_eq(recv_alloc(&b, &rx), 0);
    cr_assert_eq(rx.len, 5);
    cr_assert_eq(memcmp(rx.buf, "hello", 5), 0);
    free(rx.buf);
    cr_assert_eq(recv_alloc(&a, &rx), 0);
    cr_assert_eq(rx.len, 0);
    free(rx.buf);
    cmp_conn_close(&a);
    cmp_conn_close(&a); /* idempotent */
    cmp_conn_close(&b);
}

Test(conn, one_way_directions, .timeout = 5)
{
    cmp_conn_t r, w;
    cr_assert_eq(cmp_conn_pair(&r, &w, 0), 0);
    cr_assert_eq(cmp_conn_send(&r, "x", 1, NULL, NULL), -EBADF);
    cmp_conn_rx_t rx = {0};
    cr_assert_eq(cmp_conn_recv(&w, &rx, UINT64_MAX, grow, &rx, NULL), -EBADF);
    cr_assert_eq(cmp_conn_poll(&w, NULL), -EBADF);
    cr_assert_eq(cmp_conn_send(&w, "xyz", 3, NULL, NULL), 0);
    cr_assert_eq(recv_alloc(&r, &rx), 0);
    cr_assert_eq(rx.len, 3);
    free(rx.buf);
    cmp_conn_close(&r);
    cmp_conn_close(&w);
    cr_assert_eq(cmp_conn_send(&w, "x", 1, NULL, NULL), -EBADF);
}

Test(conn, detach_keeps_the_fd, .timeout = 5)
{
    cmp_conn_t a, b;
    cr_assert_eq(cmp_conn_pair(&a, &b, 1), 0);
    int fd = a.fd;
    cr_assert_eq(cmp_conn_detach(&a), fd);
    cr_assert_eq(cmp_conn_detach(&a), -EBADF);
    cr_assert_eq(cmp_conn_send(&a, "x", 1, NULL, NULL), -EBADF);
    cmp_conn_close(&a); /* closed already: the fd stays open */
    cr_assert_eq(write(fd, "\0\0\0\1y", 5), 5);
    cmp_conn_rx_t rx = {0};
    cr_assert_eq(recv_alloc(&b, &rx), 0);
    cr_assert_eq(rx.len, 1);
    free(rx.buf);
    close(fd);
    cmp_conn_close(&b);
}

Test(conn, open_validates, .timeout = 5)
{
    cmp_conn_t c;
    cr_assert_eq(cmp_conn_open(&c, -1, CMP_CONN_READABLE), -EINVAL);
    cr_assert_eq(cmp_conn_open(&c, 0, 0), -EINVAL);
    cr_assert_eq(cmp_conn_open(&c, 0, 0x80), -EINVAL);
}

/* The bytes on the wire are the stdlib's: 4-byte big-endian length. */
Test(conn, wire_format_small, .timeout = 5)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    cmp_conn_t w;
    cr_assert_eq(cmp_conn_open(&w, fds[1], CMP_CONN_WRITABLE), 0);
    cr_assert_eq(cmp_conn_send(&w, "abc", 3, NULL, NULL), 0);
    unsigned char raw[7];
    cr_assert_eq(read(fds[0], raw, sizeof raw), 7);
    cr_assert_eq(memcmp(raw, "\0\0\0\3abc", 7), 0);
    cmp_conn_close(&w);
    close(fds[0]);
}

/* The large form: -1 then an 8-byte length (only used above 2 GiB, so
 * written by hand here). */
Test(conn, wire_format_large_header_parsed, .timeout = 5)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    cr_assert_eq(write(fds[1], "\xff\xff\xff\xff\0\0\0\0\0\0\0\5hello", 17), 17);
    cmp_conn_t r;
    cr_assert_eq(cmp_conn_open(&r, fds[0], CMP_CONN_READABLE), 0);
    cmp_conn_rx_t rx;
    cr_assert_eq(recv_alloc(&r, &rx), 0);
    cr_assert_eq(rx.len, 5);
    cr_assert_eq(memcmp(rx.buf, "hello", 5), 0);
    free(rx.buf);
    /* A negative length other than -1 is an empty message, as the stdlib
     * reads it, and the next header follows it. */
    cr_assert_eq(write(fds[1], "\xff\xff\xff\xfe\x80\0\0\0\0\0\0\x02ok", 14), 14);
    cr_assert_eq(recv_alloc(&r, &rx), 0);
    cr_assert_eq(rx.len, 0);
    free(rx.buf);
    cr_assert_eq(recv_alloc(&r, &rx), 0);
    cr_assert_eq(rx.len, 0);
    free(rx.buf);
    cr_assert_eq(recv_alloc(&r, &rx), 0);
    cr_assert_eq(rx.len, 2);
    cr_assert_eq(memcmp(rx.buf, "ok", 2), 0);
    free(rx.buf);
    cmp_conn_close(&r);
    close(fds[1]);
}

Test(conn, eof_and_truncated, .timeout = 5)
{
    cmp_conn_t a, b;
    cr_assert_eq(cmp_conn_pair(&a, &b, 1), 0);
    cr_assert_eq(cmp_conn_send(&a, "m", 1, NULL, NULL), 0);
    cmp_conn_close(&a);
    cmp_conn_rx_t rx;
    cr_assert_eq(recv_alloc(&b, &rx), 0); /* what was sent before close arrives */
    free(rx.buf);
    cr_assert_eq(recv_alloc(&b, &rx), CMP_CONN_EOF);
    cr_assert_eq(cmp_conn_poll(&b, NULL), 0); /* EOF polls readable */
    cmp_conn_close(&b);

    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    cr_assert_eq(write(fds[1],
                       "\0\0\0\x0a"
                       "abc",
                       7),
                 7);
    close(fds[1]);
    cmp_conn_t r;
    cr_assert_eq(cmp_conn_open(&r, fds[0], CMP_CONN_READABLE), 0);
    cr_assert_eq(recv_alloc(&r, &rx), -EPROTO);
    free(rx.buf);
    cmp_conn_close(&r);

    cr_assert_eq(pipe(fds), 0);
    cr_assert_eq(write(fds[1], "\0\0", 2), 2); /* half a header */
    close(fds[1]);
    cr_assert_eq(cmp_conn_open(&r, fds[0], CMP_CONN_READABLE), 0);
    cr_assert_eq(recv_alloc(&r, &rx), -EPROTO);
    cmp_conn_close(&r);
}

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 131 + (i >> 12));
}

/* grow, recording the largest room asked for and how many times. */
typedef struct {
    cmp_conn_rx_t rx;
    size_t most;
    int calls;
} counted_rx;

static void *grow_counted(void *arg, size_t len)
{
    counted_rx *c = arg;
    c->calls++;
    if (len > c->most)
        c->most = len;
    return grow(&c->rx, len);
}

/* A header is a claim: 2^31-1 or 2^40 announced, a few bytes sent, then
 * close costs the first step of room (1 MiB), not the claim. */
static void hostile_header(const char *bytes, size_t n, uint64_t claim)
{
    int fds[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    cr_assert_eq(write(fds[1], bytes, n), (ssize_t)n);
    close(fds[1]);
    cmp_conn_t r;
    cr_assert_eq(cmp_conn_open(&r, fds[0], CMP_CONN_READABLE), 0);
    counted_rx c = {.rx = {0}};
    cr_assert_eq(cmp_conn_recv(&r, &c.rx, UINT64_MAX, grow_counted, &c, NULL), -EPROTO);
    cr_assert_eq(c.rx.len, claim);
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(c.most, 1u << 20);
    free(c.rx.buf);
    cmp_conn_close(&r);
}

Test(conn, hostile_header_costs_what_arrives, .timeout = 5)
{
    hostile_header("\x7f\xff\xff\xff"
                   "abc",
                   7, 0x7fffffffu);
    hostile_header("\xff\xff\xff\xff\0\0\x01\0\0\0\0\0"
                   "abc",
                   15, (uint64_t)1 << 40);
}

/* An honest message over the first step: room doubles (1, 2, then the
 * exact length) and every byte lands where it belongs. */
Test(conn, room_grows_with_the_message, .timeout = 10)
{
    size_t n = (3u << 20) + 5;
    unsigned char *big = malloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = pattern(i);
    cmp_conn_t a, b;
    cr_assert_eq(cmp_conn_pair(&a, &b, 1), 0);
    pid_t pid = fork();
    if (pid == 0) {
        struct timespec cdl = test_deadline(8);
        _exit(cmp_conn_send(&a, big, n, NULL, &cdl) == 0 ? 0 : 1);
    }
    counted_rx c = {.rx = {0}};
    struct timespec dl = test_deadline(8);
    cr_assert_eq(cmp_conn_recv(&b, &c.rx, UINT64_MAX, grow_counted, &c, &dl), 0);
    cr_assert_eq(c.rx.len, n);
    cr_assert_eq(c.calls, 3);
    cr_assert_eq(c.most, n);
    cr_assert_eq(memcmp(c.rx.buf, big, n), 0);
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    free(c.rx.buf);
    free(big);
    cmp_conn_close(&a);
    cmp_conn_close(&b);
}

Test(conn, maxlen_and_alloc_failure, .timeout = 5)
{
    cmp_conn_t a, b;
    cr_assert_eq(cmp_conn_pair(&a, &b, 1), 0);
    cr_assert_eq(cmp_conn_send(&a, "0123456789", 10, NULL, NULL), 0);
    cmp_conn_rx_t rx = {0};
    cr_assert_eq(cmp_conn_recv(&b, &rx, 9, grow, &rx, NULL), -EMSGSIZE);
    cr_assert_eq(rx.len, 10);
    cr_assert_eq(cmp_conn_send(&a, "xy", 2, NULL, NULL), 0);
    cmp_conn_t c, d;
    cr_assert_eq(cmp_conn_pair(&c, &d, 1), 0);
    cr_assert_eq(cmp_conn_send(&c, "xy", 2, NULL, NULL), 0);
    rx = (cmp_conn_rx_t){0};
    char buf[4];
    cr_assert_eq(cmp_conn_recv(&d, &rx, 2, into, buf, NULL), 0);
    cr_assert_eq(memcmp(buf, "xy", 2), 0);
    cmp_conn_close(&a);
    cmp_conn_close(&b);
    cmp_conn_close(&c);
    cmp_conn_close(&d);
}

Test(conn, poll_deadline, .timeout = 5)
{
    cmp_conn_t a, b;
    cr_assert_eq(cmp_conn_pair(&a, &b, 1), 0);
    struct timespec dl = test_deadline(0.05);
    cr_assert_eq(cmp_conn_poll(&b, &dl), -ETIMEDOUT);
    cr_assert_lt(cmp_deadline_remaining(&dl), 0.001);
    cmp_conn_rx_t rx = {0};
    dl = test_deadline(0.02);
    cr_assert_eq(cmp_conn_recv(&b, &rx, UINT64_MAX, grow, &rx, &dl), -ETIMEDOUT);
    cr_assert_eq(cmp_conn_send(&a, "z", 1, NULL, NULL), 0);
    dl = test_deadline(1);
    cr_assert_eq(cmp_conn_poll(&b, &dl), 0);
    cr_assert_eq(cmp_conn_recv(&b, &rx, UINT64_MAX, grow, &rx, &dl), 0);
    cr_assert_eq(rx.len, 1);
    free(rx.buf);
    cmp_conn_close(&a);
    cmp_conn_close(&b);
}

/* 64 MiB through a one-way pipe and a socketpair, each to a forked child
 * that checks every byte and sends its verdict back. No deadline: however
 * slow either side is (valgrind), each holds only its own ends, so the
 * other's death is an EOF, and Criterion's timeout guards a hang. */
static void large_across_fork(int duplex)
{
    size_t n = 64u << 20;
    unsigned char *big = malloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = pattern(i);
    cmp_conn_t r, w, back_r, back_w;
    cr_assert_eq(cmp_conn_pair(&r, &w, duplex), 0);
    cr_assert_eq(cmp_conn_pair(&back_r, &back_w, 0), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        cmp_conn_close(&w);
        cmp_conn_close(&back_r);
        cmp_conn_rx_t rx = {0};
        int ok = cmp_conn_recv(&r, &rx, UINT64_MAX, grow, &rx, NULL) == 0 && rx.len == n;
        for (size_t i = 0; ok && i < n; i++)
            ok = ((unsigned char *)rx.buf)[i] == pattern(i);
        char verdict = ok ? 'y' : 'n';
        _exit(cmp_conn_send(&back_w, &verdict, 1, NULL, NULL) == 0 ? 0 : 1);
    }
    cmp_conn_close(&r);
    cmp_conn_close(&back_w);
    cr_assert_eq(cmp_conn_send(&w, big, n, NULL, NULL), 0);
    char verdict = 0;
    cmp_conn_rx_t rx = {0};
    cr_assert_eq(cmp_conn_recv(&back_r, &rx, 1, into, &verdict, NULL), 0);
    cr_assert_eq(verdict, 'y');
    cr_assert_eq(test_join(pid, 60), 0);
    free(big);
    cmp_conn_close(&w);
    cmp_conn_close(&back_r);
}

Test(conn, large_message_pipe, .timeout = 30)
{
    large_across_fork(0);
}
Test(conn, large_message_socketpair, .timeout = 30)
{
    large_across_fork(1);
}

/* A signal interrupts a blocking recv with -EINTR (handler without
 * SA_RESTART, as Python installs them); a send interrupted half way
 * resumes from its progress and the reader gets one intact message. The
 * signal repeats until the call returns: a single one could land before
 * the call blocks (a slow run: valgrind), and be lost. */
Test(conn, eintr_and_resume, .timeout = 10)
{
    cmp_conn_t a, b;
    cr_assert_eq(cmp_conn_pair(&a, &b, 1), 0);
    cmp_conn_rx_t rx = {0};
    struct sync_interrupter it;
    sync_interrupt_me_after(&it, 0.02);
    cr_assert_eq(cmp_conn_recv(&b, &rx, UINT64_MAX, grow, &rx, NULL), -EINTR);
    sync_interrupter_join(&it);

    size_t n = 8u << 20;
    unsigned char *big = malloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = pattern(i);
    uint64_t progress = 0;
    sync_interrupt_me_after(&it, 0.02);
    int r = cmp_conn_send(&a, big, n, &progress, NULL); /* nobody reads yet */
    sync_interrupter_join(&it);
    cr_assert_eq(r, -EINTR);
    cr_assert_gt(progress, 0);
    cr_assert_lt(progress, n + 4);
    pid_t pid = fork();
    if (pid == 0) {
        cmp_conn_close(&a); /* the parent's death is then an EOF: no deadline */
        cmp_conn_rx_t crx = {0};
        int ok = cmp_conn_recv(&b, &crx, UINT64_MAX, grow, &crx, NULL) == 0 && crx.len == n;
        for (size_t i = 0; ok && i < n; i++)
            ok = ((unsigned char *)crx.buf)[i] == pattern(i);
        _exit(ok ? 0 : 1);
    }
    while ((r = cmp_conn_send(&a, big, n, &progress, NULL)) == -EINTR)
        ;
    cr_assert_eq(r, 0);
    cr_assert_eq(progress, n + 4);
    cr_assert_eq(test_join(pid, 60), 0);
    free(big);
    cmp_conn_close(&a);
    cmp_conn_close(&b);
}

Test(conn, epipe_when_reader_gone, .timeout = 5)
{
    cmp_conn_t a, b;
    cr_assert_eq(cmp_conn_pair(&a, &b, 1), 0);
    cmp_conn_close(&b);
    cr_assert_eq(cmp_conn_send(&a, "x", 1, NULL, NULL), -EPIPE); /* no SIGPIPE */
    cmp_conn_close(&a);
}

/* An allocator that never fails (an arena, a caller's fixed buffer). */
static void *never_fails(void *arg, size_t len)
{
    (void)len;
    return arg;
}

/* Found by tests/fuzz/fuzz_conn: an 8-byte length so close to 2^64 that
 * the end of the message (header + length) wrapped around made the header
 * alone a complete message of that length. */
Test(conn, length_near_2_64_is_refused, .timeout = 5)
{
    static const uint64_t lens[] = {UINT64_MAX - 12, UINT64_MAX - 11, UINT64_MAX - 4, UINT64_MAX};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        cmp_conn_t a, b;
        cr_assert_eq(cmp_conn_pair(&a, &b, 1), 0);
        unsigned char hdr[12] = {0xff, 0xff, 0xff, 0xff};
        for (int j = 0; j < 8; j++)
            hdr[4 + j] = (unsigned char)(lens[i] >> (56 - 8 * j));
        cr_assert_eq(write(a.fd, hdr, sizeof hdr), (ssize_t)sizeof hdr);
        cmp_conn_close(&a);
        static unsigned char room[64];
        cmp_conn_rx_t rx = {0};
        int r = cmp_conn_recv(&b, &rx, UINT64_MAX, never_fails, room, NULL);
        cr_assert(r == -ENOMEM || r == -EPROTO, "length %llu: %d", (unsigned long long)lens[i], r);
        cmp_conn_close(&b);
    }
}
