/* Raw throughput and latency of the libcmp message ring, between
 * processes: `make bench-c` (build/bench/ring_bench). The Python-level,
 * side-by-side-with-the-stdlib benchmarks live in bench/bench.py. */
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cmp.h"
#include "hogs.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *shared(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

struct sink {
    uint8_t *buf;
    size_t cap;
};

static void *sink_alloc(void *arg, size_t len)
{
    struct sink *s = arg;
    if (len > s->cap) {
        free(s->buf);
        s->buf = malloc(len);
        s->cap = len;
    }
    return s->buf ? (void *)s->buf : (void *)s;
}

static void producer(cmp_ring_t *r, size_t len, long n)
{
    uint8_t *buf = calloc(1, len ? len : 1);
    for (long i = 0; i < n; i++)
        if (cmp_ring_put(r, buf, len, NULL) != 0)
            _exit(1);
    _exit(0);
}

/* nprod producers each put n messages of len bytes; the parent gets them
 * (batch: get_many of up to 64). Returns seconds. */
static double run(size_t capacity, int nprod, size_t len, long n, int batch, int spill)
{
    cmp_ring_t *r = shared(cmp_ring_footprint(capacity));
    cmp_ring_init(r, capacity, 0);
    int fd = spill ? cmp_spill_create() : -1;
    if (spill && (fd < 0 || cmp_ring_set_spill(r, fd) < 0)) {
        fprintf(stderr, "spill: %d\n", fd);
        exit(1);
    }
    struct sink s = {0};
    /* warm the ring's pages and the sink */
    for (int i = 0; i < 2; i++) {
        void *tmp = calloc(1, len ? len : 1);
        pid_t pid = fork();
        if (pid == 0)
            producer(r, len, 1);
        cmp_ring_get(r, sink_alloc, &s, NULL);
        waitpid(pid, NULL, 0);
        free(tmp);
    }
    pid_t pids[16];
    double t0 = now();
    for (int i = 0; i < nprod; i++)
        if ((pids[i] = fork()) == 0)
            producer(r, len, n);
    long total = n * nprod;
    for (long got = 0; got < total;) {
        long k = batch ? cmp_ring_get_many(r, sink_alloc, &s, 64, NULL)
                       : cmp_ring_get(r, sink_alloc, &s, NULL);
        if (!batch && k == 0)
            k = 1;
        if (k < 0) {
            fprintf(stderr, "get failed: %ld\n", k);
            exit(1);
        }
        got += k;
    }
    double t = now() - t0;
    for (int i = 0; i < nprod; i++)
        waitpid(pids[i], NULL, 0);
    munmap(r, cmp_ring_footprint(capacity));
    if (fd >= 0)
        close(fd);
    free(s.buf);
    return t;
}

/* A reference for a 1 MiB message: no ring protocol, only the two copies
 * every transport between processes needs (the producer's in, the
 * consumer's out) through FLOOR_SLOTS shared slots, and a hand-off per
 * slot that either sleeps on a futex at once or busy-waits. Under load it
 * shows what the copies cost once a hog shares the CPUs (the ring itself
 * may do better: it spins and streams). */
#define FLOOR_SLOTS 4

struct floor_counter {
    _Atomic uint32_t n;
    _Atomic uint32_t sleeping;
    char pad[56];
};

struct floor {
    struct floor_counter filled, freed;
    uint8_t slot[FLOOR_SLOTS][1u << 20];
};

static void floor_bump(struct floor_counter *c)
{
    atomic_fetch_add(&c->n, 1);
    if (atomic_load(&c->sleeping))
        syscall(SYS_futex, &c->n, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Waits until c->n reaches until (a wrapping distance). */
static void floor_wait(struct floor_counter *c, uint32_t until, int spin)
{
    uint32_t v;
    while ((int32_t)((v = atomic_load(&c->n)) - until) < 0) {
        if (spin) {
            __builtin_ia32_pause();
            continue;
        }
        atomic_store(&c->sleeping, 1);
        if (atomic_load(&c->n) == v)
            syscall(SYS_futex, &c->n, FUTEX_WAIT, v, NULL, NULL, 0);
        atomic_store(&c->sleeping, 0);
    }
}

static double copy_floor(long n, int spin)
{
    const size_t len = 1u << 20;
    struct floor *f = shared(sizeof *f);
    memset(f, 0, sizeof *f);
    double t0 = now();
    pid_t pid = fork();
    if (pid == 0) {
        uint8_t *src = malloc(len);
        memset(src, 1, len);
        for (uint32_t i = 0; i < (uint32_t)n; i++) {
            if (i >= FLOOR_SLOTS)
                floor_wait(&f->freed, i - FLOOR_SLOTS + 1, spin);
            memcpy(f->slot[i % FLOOR_SLOTS], src, len);
            floor_bump(&f->filled);
        }
        _exit(0);
    }
    uint8_t *dst = malloc(len);
    for (uint32_t i = 0; i < (uint32_t)n; i++) {
        floor_wait(&f->filled, i + 1, spin);
        memcpy(dst, f->slot[i % FLOOR_SLOTS], len);
        floor_bump(&f->freed);
    }
    double t = now() - t0;
    waitpid(pid, NULL, 0);
    free(dst);
    munmap(f, sizeof *f);
    return t;
}

/* A backlog: n messages of len bytes put with no consumer (they go to the
 * spill once the ring is full), then got by a child. Sets the seconds of
 * each phase. */
static void backlog(size_t len, long n, double *put, double *get)
{
    size_t capacity = 4u << 20;
    cmp_ring_t *r = shared(cmp_ring_footprint(capacity));
    cmp_ring_init(r, capacity, 0);
    int fd = cmp_spill_create();
    if (fd < 0 || cmp_ring_set_spill(r, fd) < 0)
        exit(1);
    uint8_t *buf = calloc(1, len);
    double t0 = now();
    for (long i = 0; i < n; i++)
        if (cmp_ring_put(r, buf, len, CMP_NOWAIT) != 0) {
            fprintf(stderr, "backlog put failed\n");
            exit(1);
        }
    *put = now() - t0;
    t0 = now();
    pid_t pid = fork();
    if (pid == 0) {
        struct sink s = {0};
        for (long got = 0; got < n;)
            got += cmp_ring_get_many(r, sink_alloc, &s, 64, NULL);
        _exit(0);
    }
    waitpid(pid, NULL, 0);
    *get = now() - t0;
    munmap(r, cmp_ring_footprint(capacity));
    close(fd);
    free(buf);
}

/* Ping-pong: a message goes to the child and back. Returns seconds per
 * round trip. */
static double pingpong(long n)
{
    size_t cap = 64 * 1024;
    cmp_ring_t *a = shared(cmp_ring_footprint(cap)), *b = shared(cmp_ring_footprint(cap));
    cmp_ring_init(a, cap, 0);
    cmp_ring_init(b, cap, 0);
    pid_t pid = fork();
    if (pid == 0) {
        struct sink s = {0};
        for (long i = 0; i < n + 100; i++) {
            cmp_ring_get(a, sink_alloc, &s, NULL);
            cmp_ring_put(b, "pong", 4, NULL);
        }
        _exit(0);
    }
    struct sink s = {0};
    for (int i = 0; i < 100; i++) {
        cmp_ring_put(a, "ping", 4, NULL);
        cmp_ring_get(b, sink_alloc, &s, NULL);
    }
    double t0 = now();
    for (long i = 0; i < n; i++) {
        cmp_ring_put(a, "ping", 4, NULL);
        cmp_ring_get(b, sink_alloc, &s, NULL);
    }
    double t = now() - t0;
    waitpid(pid, NULL, 0);
    free(s.buf);
    return t / (double)n;
}

int main(int argc, char **argv)
{
    int load = hogs_parse_load(argc, argv);
    const size_t cap = 4u << 20;
    double t;
    long n = 1000000;

    printf("message ring between processes, %d CPU hog%s running\n", load, load == 1 ? "" : "s");
    struct hogs h;
    hogs_start(&h, load);

    t = run(cap, 1, 64, n, 0, 0);
    printf("1->1   64 B         %8.0f ns/msg  %6.2f M msg/s\n", t / n * 1e9, n / t / 1e6);
    t = run(cap, 4, 64, n / 4, 0, 0);
    printf("4->1   64 B         %8.0f ns/msg  %6.2f M msg/s\n", t / n * 1e9, n / t / 1e6);
    t = run(cap, 4, 64, n / 4, 1, 0);
    printf("4->1   64 B batch   %8.0f ns/msg  %6.2f M msg/s\n", t / n * 1e9, n / t / 1e6);
    long m = 2000;
    t = run(cap, 1, 1u << 20, m, 0, 0);
    printf("1->1   1 MiB        %8.1f us/msg  %6.2f GB/s\n", t / m * 1e6,
           (double)m * (1u << 20) / t / 1e9);
    t = copy_floor(m, 0);
    printf("1->1   1 MiB copies %8.1f us/msg  %6.2f GB/s (reference: the two copies alone, futex "
           "hand-off)\n",
           t / m * 1e6, (double)m * (1u << 20) / t / 1e9);
    t = copy_floor(m, 1);
    printf("1->1   1 MiB copies %8.1f us/msg  %6.2f GB/s (reference: the two copies alone, busy "
           "wait)\n",
           t / m * 1e6, (double)m * (1u << 20) / t / 1e9);
    long b = 20;
    t = run(cap, 1, 64u << 20, b, 0, 0);
    printf("1->1   64 MiB strm  %8.2f ms/msg  %6.2f GB/s (4 MiB ring)\n", t / b * 1e3,
           (double)b * (64u << 20) / t / 1e9);
    t = run(64 * 1024, 1, 1u << 20, m, 0, 0);
    printf("1->1   1 MiB strm   %8.1f us/msg  %6.2f GB/s (64 KiB ring)\n", t / m * 1e6,
           (double)m * (1u << 20) / t / 1e9);
    t = run(cap, 1, 1u << 20, m, 0, 1);
    printf("1->1   1 MiB spill  %8.1f us/msg  %6.2f GB/s (with a spill file)\n", t / m * 1e6,
           (double)m * (1u << 20) / t / 1e9);
    t = run(cap, 1, 64u << 20, b, 0, 1);
    printf("1->1   64 MiB spill %8.2f ms/msg  %6.2f GB/s (4 MiB ring + spill)\n", t / b * 1e3,
           (double)b * (64u << 20) / t / 1e9);
    double tp, tg;
    backlog(64, n, &tp, &tg);
    printf("backlog 64 B x %ld: put %.0f ns/msg, then get %.0f ns/msg\n", n, tp / n * 1e9,
           tg / n * 1e9);
    t = pingpong(200000);
    printf("ping-pong round trip %7.2f us\n", t * 1e6);
    hogs_stop(&h);
    return 0;
}
