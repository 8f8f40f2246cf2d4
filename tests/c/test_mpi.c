/* libcmp_mpi's tests: a plain C program (Criterion forks each test, which
 * an MPI process must not), run by scripts/run-mpi-tests.sh under
 * `mpiexec -n 2` and `-n 3` (and alone). Rank 0 runs the checks; the
 * others serve. Every wait has a deadline; the runner bounds the whole
 * run with timeout(1). Prints one "ok"/"FAIL" line per check and exits
 * nonzero when any failed. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmp_mpi.h"

/* A task: op, then its argument. */
enum { OP_SQUARE = 1, OP_FAIL, OP_KILL, OP_ECHO, OP_SLOW_ON_1, OP_KEEP, OP_ECHO_PARTS };

/* OP_KEEP: a big task whose bytes the worker keeps past the task (the last
 * KEPT of them), checking that those it kept still hold their own bytes.
 * Answers 1 (kept, all intact), 0 (one was overwritten), 2 (nothing to
 * keep: the bytes were the worker's own copy). */
enum { KEPT = 4 };
static struct {
    void *handle;
    const unsigned char *bytes;
    size_t len;
    unsigned char fill; /* every byte after the op */
} kept[KEPT];
static unsigned nkept;

static int keep_task(const unsigned char *t, size_t len)
{
    for (unsigned i = 0; i < KEPT && i < nkept; i++)
        for (size_t j = 1; j < kept[i].len; j += 4093)
            if (kept[i].bytes[j] != kept[i].fill)
                return 0;
    void *h = cmp_mpi_task_keep();
    if (!h)
        return 2;
    unsigned slot = nkept++ % KEPT;
    cmp_mpi_task_release(kept[slot].handle); /* the oldest goes back */
    kept[slot].handle = h;
    kept[slot].bytes = t;
    kept[slot].len = len;
    kept[slot].fill = t[1];
    return 1;
}

static int task_fn(void *arg, const void *task, size_t len, cmp_pool_result_t *out)
{
    (void)arg;
    const unsigned char *t = task;
    int64_t x = 0;
    if (len >= 1 + sizeof x)
        memcpy(&x, t + 1, sizeof x);
    switch (t[0]) {
    case OP_SQUARE:
    case OP_SLOW_ON_1: {
        if (t[0] == OP_SLOW_ON_1) {
            /* rank 1 is a slow host: 20 ms a task, rank 2 1 ms */
            struct timespec ts = {0, cmp_mpi_rank() == 1 ? 20000000L : 1000000L};
            nanosleep(&ts, NULL);
        }
        int64_t y = x * x;
        void *room = cmp_pool_result_extend(out, sizeof y);
        if (!room)
            return 1;
        memcpy(room, &y, sizeof y);
        return 0;
    }
    case OP_FAIL: {
        void *room = cmp_pool_result_extend(out, 4);
        memcpy(room, "bad", 4);
        return 1;
    }
    case OP_KILL:
        raise(SIGKILL);
        return 1;
    case OP_KEEP: {
        unsigned char *room = cmp_pool_result_extend(out, 1);
        if (!room)
            return 1;
        *room = (unsigned char)keep_task(t, len);
        return 0;
    }
    case OP_ECHO: {
        void *room = cmp_pool_result_extend(out, len);
        if (!room)
            return 1;
        memcpy(room, task, len);
        return 0;
    }
    case OP_ECHO_PARTS: {
        /* written in 3 parts, the first big: a result that outgrows the
         * serving rank's result slot it was first written to */
        size_t parts[3] = {len / 2, len / 4, len - len / 2 - len / 4};
        const unsigned char *from = task;
        for (int i = 0; i < 3; i++) {
            void *room = cmp_pool_result_extend(out, parts[i]);
            if (!room)
                return 1;
            memcpy(room, from, parts[i]);
            from += parts[i];
        }
        return 0;
    }
    }
    return 1;
}

static int failures;
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                      \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            failures++;                                                                            \
            return;                                                                                \
        }                                                                                          \
    } while (0)

static struct timespec in_s(int s)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += s;
    return ts;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static cmp_pool_options_t local_opt = {.workers = 2, .task = task_fn};

static cmp_mpi_pool_t *make(unsigned flags, unsigned workers)
{
    cmp_mpi_pool_options_t opt = {.flags = flags, .workers = workers, .local = &local_opt};
    cmp_mpi_pool_t *p = NULL;
    int rc = cmp_mpi_pool_create(&p, &opt);
    if (rc < 0) {
        fprintf(stderr, "create: %s\n", cmp_strerror(rc));
        exit(2);
    }
    return p;
}

static int submit_op(cmp_mpi_pool_t *p, int op, int64_t x, uint64_t *id)
{
    unsigned char t[1 + sizeof x];
    t[0] = (unsigned char)op;
    memcpy(t + 1, &x, sizeof x);
    return cmp_mpi_pool_submit(p, t, sizeof t, id);
}

static void finish(cmp_mpi_pool_t *p)
{
    cmp_mpi_pool_close(p);
    cmp_mpi_outcome_t o;
    struct timespec dl = in_s(10);
    while (cmp_mpi_pool_next(p, &o, &dl) == 0)
        free(o.o.data);
    struct timespec jd = in_s(10);
    int rc = cmp_mpi_pool_join(p, &jd);
    if (rc < 0) {
        fprintf(stderr, "  FAIL join: %s\n", cmp_strerror(rc));
        failures++;
    }
    cmp_mpi_pool_destroy(p);
}

/* Ordered results, and with several serving ranks each of them worked. */
static void test_ordered_map(void)
{
    cmp_mpi_pool_t *p = make(CMP_MPI_ORDERED, 0);
    enum { N = 2000 };
    for (int64_t x = 0; x < N; x++)
        CHECK(submit_op(p, OP_SQUARE, x, NULL) == 0, "submit");
    int ranks[64] = {0};
    for (int64_t x = 0; x < N; x++) {
        cmp_mpi_outcome_t o;
        struct timespec dl = in_s(20);
        int rc = cmp_mpi_pool_next(p, &o, &dl);
        CHECK(rc == 0, "next: %s", cmp_strerror(rc));
        CHECK(o.o.status == CMP_POOL_DONE && o.o.len == 8, "status %d", o.o.status);
        CHECK(o.o.id == (uint64_t)x + 1, "id %llu for item %lld", (unsigned long long)o.o.id,
              (long long)x);
        int64_t y;
        memcpy(&y, o.o.data, 8);
        free(o.o.data);
        CHECK(y == x * x, "%lld squared is not %lld", (long long)x, (long long)y);
        CHECK(o.host && *o.host, "no host");
        ranks[o.rank & 63]++;
    }
    for (int k = 1; k < cmp_mpi_size(); k++)
        CHECK(ranks[k] > 0, "rank %d ran nothing", k);
    CHECK(cmp_mpi_pool_size(p) >= (unsigned)(cmp_mpi_size() > 1 ? cmp_mpi_size() - 1 : 1),
          "size %u", cmp_mpi_pool_size(p));
    finish(p);
}

/* A failing task comes back FAILED with its bytes; a killed worker LOST
 * with its signal, rank and host; then the pool goes on. */
static void test_failures(void)
{
    cmp_mpi_pool_t *p = make(CMP_MPI_ORDERED, 0);
    CHECK(submit_op(p, OP_FAIL, 0, NULL) == 0, "submit");
    CHECK(submit_op(p, OP_KILL, 0, NULL) == 0, "submit");
    for (int64_t x = 0; x < 20; x++)
        CHECK(submit_op(p, OP_SQUARE, x, NULL) == 0, "submit");
    cmp_mpi_outcome_t o;
    struct timespec dl = in_s(20);
    CHECK(cmp_mpi_pool_next(p, &o, &dl) == 0, "next");
    CHECK(o.o.status == CMP_POOL_FAILED && o.o.len == 4 && !memcmp(o.o.data, "bad", 4), "status %d",
          o.o.status);
    free(o.o.data);
    CHECK(cmp_mpi_pool_next(p, &o, &dl) == 0, "next");
    CHECK(o.o.status == CMP_POOL_LOST && o.o.cause == -SIGKILL && o.o.pid > 0, "status %d cause %d",
          o.o.status, o.o.cause);
    CHECK(cmp_mpi_size() == 1 || o.rank > 0, "lost on rank %d", o.rank);
    free(o.o.data);
    for (int64_t x = 0; x < 20; x++) {
        CHECK(cmp_mpi_pool_next(p, &o, &dl) == 0, "next");
        CHECK(o.o.status == CMP_POOL_DONE, "after a lost worker: status %d", o.o.status);
        free(o.o.data);
    }
    finish(p);
}

static int released;
static void count_release(void *arg)
{
    (void)arg;
    released++;
}

/* Big tasks and results (pieces straight from and into their memory). */
static void test_big(void)
{
    cmp_mpi_pool_t *p = make(CMP_MPI_ORDERED, 0);
    enum { LEN = 3 << 20, N = 6 };
    unsigned char *big[2];
    for (int b = 0; b < 2; b++) {
        big[b] = malloc(LEN);
        for (size_t i = 0; i < LEN; i++)
            big[b][i] = (unsigned char)(i * 7 + 3 + b);
        big[b][0] = b ? OP_ECHO_PARTS : OP_ECHO;
    }
    released = 0;
    for (int k = 0; k < N; k++) {
        unsigned char *t = big[k % 2];
        struct iovec iov[2] = {{t, 1000}, {t + 1000, LEN - 1000}};
        CHECK(cmp_mpi_pool_submitv_ref(p, iov, 2, NULL, count_release, NULL) == 0, "submit");
    }
    for (int k = 0; k < N; k++) {
        cmp_mpi_outcome_t o;
        struct timespec dl = in_s(20);
        CHECK(cmp_mpi_pool_next(p, &o, &dl) == 0, "next");
        CHECK(o.o.status == CMP_POOL_DONE && o.o.len == LEN, "status %d len %zu", o.o.status,
              o.o.len);
        CHECK(!memcmp(o.o.data, big[k % 2], LEN), "bytes differ (task %d)", k);
        free(o.o.data);
    }
    finish(p);
    free(big[0]);
    free(big[1]);
    CHECK(released == N, "released %d of %d", released, N);
}

/* A slow rank is sent fewer tasks: the fast one does most of them. */
static void test_slow_rank(void)
{
    if (cmp_mpi_size() < 3)
        return;
    cmp_mpi_pool_t *p = make(0, 2 * (unsigned)(cmp_mpi_size() - 1));
    enum { N = 300 };
    for (int64_t x = 0; x < N; x++)
        CHECK(submit_op(p, OP_SLOW_ON_1, x, NULL) == 0, "submit");
    int on1 = 0;
    double t0 = now_s();
    for (int k = 0; k < N; k++) {
        cmp_mpi_outcome_t o;
        struct timespec dl = in_s(30);
        CHECK(cmp_mpi_pool_next(p, &o, &dl) == 0, "next");
        on1 += o.rank == 1;
        free(o.o.data);
    }
    double dt = now_s() - t0;
    /* round robin would give rank 1 half: 150 x 20 ms / 2 workers = 1.5 s */
    CHECK(on1 < N / 4, "the slow rank ran %d of %d", on1, N);
    printf("  slow rank: %d of %d tasks on rank 1, %.2f s\n", on1, N, dt);
    finish(p);
}

/* Cancel takes back what no rank holds (and asks the ranks for the rest);
 * terminate ends the rest. */
static void test_cancel_terminate(void)
{
    cmp_mpi_pool_t *p = make(0, 0);
    enum { N = 500 };
    uint64_t ids[N];
    for (int k = 0; k < N; k++)
        CHECK(submit_op(p, OP_SLOW_ON_1, k, &ids[k]) == 0, "submit");
    long c = cmp_mpi_pool_cancel(p, ids, N);
    CHECK(c > N / 2, "cancelled %ld", c);
    int done = 0, cancelled = 0;
    for (int k = 0; k < N; k++) {
        cmp_mpi_outcome_t o;
        struct timespec dl = in_s(20);
        CHECK(cmp_mpi_pool_next(p, &o, &dl) == 0, "next after cancel");
        done += o.o.status == CMP_POOL_DONE;
        cancelled += o.o.status == CMP_POOL_CANCELLED;
        free(o.o.data);
    }
    /* c, and maybe some the ranks held but no worker had taken */
    CHECK(cancelled >= c && done + cancelled == N, "done %d cancelled %d of %ld", done, cancelled,
          c);
    for (int k = 0; k < N; k++)
        CHECK(submit_op(p, OP_SLOW_ON_1, k, NULL) == 0, "submit");
    CHECK(cmp_mpi_pool_terminate(p) == 0, "terminate");
    int out = 0;
    cmp_mpi_outcome_t o;
    struct timespec dl = in_s(20);
    int rc;
    while ((rc = cmp_mpi_pool_next(p, &o, &dl)) == 0) {
        out++;
        free(o.o.data);
    }
    CHECK(rc == -ENOENT && out == N, "rc %d after %d outcomes", rc, out);
    struct timespec jd = in_s(10);
    CHECK(cmp_mpi_pool_join(p, &jd) == 0, "join after terminate");
    CHECK(submit_op(p, OP_SQUARE, 1, NULL) == -EPIPE, "submit after terminate");
    cmp_mpi_pool_destroy(p);
}

/* Big tasks are read where the serving rank received them (its arena);
 * what a worker keeps stays its own while later tasks arrive. */
static void test_keep_big(void)
{
    cmp_mpi_pool_t *p = make(0, 0);
    enum { N = 40, LEN = 100 << 10 };
    static unsigned char buf[N][LEN];
    for (int k = 0; k < N; k++) {
        /* the op, then a fill of the task's own (a block reused shows) */
        memset(buf[k], 20 + k, LEN);
        buf[k][0] = OP_KEEP;
        CHECK(cmp_mpi_pool_submit(p, buf[k], LEN, NULL) == 0, "submit");
    }
    int want = cmp_mpi_size() > 1 ? 1 : 2, good = 0;
    for (int k = 0; k < N; k++) {
        cmp_mpi_outcome_t o;
        struct timespec dl = in_s(20);
        CHECK(cmp_mpi_pool_next(p, &o, &dl) == 0, "next");
        CHECK(o.o.status == CMP_POOL_DONE && o.o.len == 1, "status %d", o.o.status);
        good += *(unsigned char *)o.o.data == want;
        free(o.o.data);
    }
    CHECK(good == N, "%d of %d answered %d", good, N, want);
    finish(p);
}

/* Two pools at once, each with its own outcomes. */
static void test_two_pools(void)
{
    cmp_mpi_pool_t *a = make(CMP_MPI_ORDERED, 0), *b = make(CMP_MPI_ORDERED, 0);
    for (int64_t x = 0; x < 50; x++) {
        CHECK(submit_op(a, OP_SQUARE, x, NULL) == 0, "submit");
        CHECK(submit_op(b, OP_SQUARE, x + 100, NULL) == 0, "submit");
    }
    for (int64_t x = 0; x < 50; x++) {
        cmp_mpi_outcome_t o;
        int64_t y;
        struct timespec dl = in_s(20);
        CHECK(cmp_mpi_pool_next(b, &o, &dl) == 0, "next b");
        memcpy(&y, o.o.data, 8);
        free(o.o.data);
        CHECK(y == (x + 100) * (x + 100), "pool b item %lld", (long long)x);
        CHECK(cmp_mpi_pool_next(a, &o, &dl) == 0, "next a");
        memcpy(&y, o.o.data, 8);
        free(o.o.data);
        CHECK(y == x * x, "pool a item %lld", (long long)x);
    }
    finish(a);
    finish(b);
}

int main(int argc, char **argv)
{
    int rank = cmp_mpi_init(&argc, &argv);
    if (rank < 0) {
        fprintf(stderr, "mpi: %s\n", cmp_strerror(rank));
        return 2;
    }
    if (rank > 0) {
        cmp_pool_options_t serve = {.task = task_fn};
        cmp_mpi_serve_options_t so = {.pool = &serve};
        int rc = cmp_mpi_serve(&so);
        cmp_mpi_finalize();
        return rc < 0 ? 2 : 0;
    }
    struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        {"ordered_map", test_ordered_map},
        {"failures", test_failures},
        {"big", test_big},
        {"slow_rank", test_slow_rank},
        {"cancel_terminate", test_cancel_terminate},
        {"two_pools", test_two_pools},
        {"keep_big", test_keep_big},
    };
    int passed = 0, n = (int)(sizeof tests / sizeof tests[0]);
    for (int i = 0; i < n; i++) {
        int before = failures;
        tests[i].fn();
        printf("%s mpi/%s (%d ranks)\n", failures == before ? "ok" : "FAIL", tests[i].name,
               cmp_mpi_size() ? cmp_mpi_size() : 1);
        passed += failures == before;
    }
    cmp_mpi_finalize();
    printf("mpi: %d passed, %d failed\n", passed, n - passed);
    return passed == n ? 0 : 1;
}
