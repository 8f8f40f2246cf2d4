/* cmp_pool_*: results in any order, failed tasks, a worker killed mid-task
 * (by itself, by _exit, from outside, repeatedly), max_tasks recycling, an
 * initializer that runs once per worker and one that fails, close/join,
 * terminate, big tasks and results, workers dying with the pool's process. */
#include "sync_helpers.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum op { SQUARE, FAIL, SELF_KILL, EXIT3, SLEEP_MS, PID, SUM_BYTES, INIT_COUNT, ECHO_BIG };

struct task {
    int32_t op;
    int32_t pad;
    int64_t value;
};

static int initialized; /* per worker: how many times init ran */

static int put_i64(cmp_pool_result_t *out, int64_t v)
{
    void *room = cmp_pool_result_extend(out, sizeof v);
    if (!room)
        return 1;
    memcpy(room, &v, sizeof v);
    return 0;
}

static int run_task(void *arg, const void *data, size_t len, cmp_pool_result_t *out)
{
    (void)arg;
    struct task t;
    if (len < sizeof t)
        return 1;
    memcpy(&t, data, sizeof t);
    switch (t.op) {
    case SQUARE:
        return put_i64(out, t.value * t.value);
    case FAIL: {
        const char msg[] = "it failed";
        memcpy(cmp_pool_result_extend(out, sizeof msg), msg, sizeof msg);
        return 1;
    }
    case SELF_KILL:
        raise(SIGKILL);
        return 1;
    case EXIT3:
        _exit(3);
    case SLEEP_MS: {
        struct timespec ts = {t.value / 1000, (t.value % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        return put_i64(out, t.value);
    }
    case PID:
        return put_i64(out, getpid());
    case SUM_BYTES: {
        const unsigned char *p = (const unsigned char *)data + sizeof t;
        int64_t sum = 0;
        for (size_t i = 0; i < len - sizeof t; i++)
            sum += p[i];
        return put_i64(out, sum);
    }
    case INIT_COUNT:
        return put_i64(out, initialized);
    case ECHO_BIG: {
        char *room = cmp_pool_result_extend(out, (size_t)t.value);
        if (!room)
            return 1;
        memset(room, 0x5a, (size_t)t.value);
        return 0;
    }
    }
    return 1;
}

static int count_init(void *arg, cmp_pool_result_t *out)
{
    (void)arg;
    (void)out;
    initialized++;
    return 0;
}

static int failing_init(void *arg, cmp_pool_result_t *out)
{
    (void)arg;
    const char msg[] = "bad init";
    memcpy(cmp_pool_result_extend(out, sizeof msg), msg, sizeof msg);
    return 1;
}

static cmp_pool_t *new_pool(unsigned workers, uint64_t max_tasks, cmp_pool_init_fn init)
{
    cmp_pool_options_t opt = {
        .workers = workers, .task = run_task, .init = init, .max_tasks = max_tasks};
    cmp_pool_t *p = NULL;
    cr_assert_eq(cmp_pool_create(&p, &opt), 0);
    return p;
}

static uint64_t submit(cmp_pool_t *p, int op, int64_t value)
{
    struct task t = {op, 0, value};
    uint64_t id = 0;
    cr_assert_eq(cmp_pool_submit(p, &t, sizeof t, &id), 0);
    return id;
}

/* A heap buffer per outcome (the caller frees out->data). */
static void *heap_alloc(void *arg, size_t len)
{
    (void)arg;
    return malloc(len ? len : 1);
}

static cmp_pool_outcome_t next(cmp_pool_t *p, double seconds)
{
    cmp_pool_outcome_t o;
    struct timespec d = test_deadline(seconds);
    int rc = cmp_pool_next(p, &o, heap_alloc, NULL, &d);
    cr_assert_eq(rc, 0, "cmp_pool_next: %d", rc);
    return o;
}

static int64_t value_of(const cmp_pool_outcome_t *o)
{
    int64_t v;
    cr_assert_geq(o->len, sizeof v);
    memcpy(&v, o->data, sizeof v);
    return v;
}

static void finish(cmp_pool_t *p)
{
    cr_assert_eq(cmp_pool_close(p), 0);
    struct timespec d = test_deadline(10);
    cr_assert_eq(cmp_pool_join(p, &d), 0);
    cmp_pool_outcome_t o;
    cr_assert_eq(cmp_pool_next(p, &o, heap_alloc, NULL, &d), -ENOENT);
    cmp_pool_destroy(p);
}

Test(pool, squares_each_once, .timeout = 30)
{
    cmp_pool_t *p = new_pool(4, 0, NULL);
    enum { N = 2000 };
    uint64_t first = submit(p, SQUARE, 0);
    for (int64_t i = 1; i < N; i++)
        submit(p, SQUARE, i);
    cr_assert_eq(cmp_pool_outstanding(p), N);
    static char seen[N];
    memset(seen, 0, sizeof seen);
    for (int k = 0; k < N; k++) {
        cmp_pool_outcome_t o = next(p, 10);
        cr_assert_eq(o.status, CMP_POOL_DONE);
        int64_t i = (int64_t)(o.id - first);
        cr_assert(i >= 0 && i < N && !seen[i], "id %llu", (unsigned long long)o.id);
        seen[i] = 1;
        cr_assert_eq(value_of(&o), i * i);
        cr_assert_neq(o.pid, 0);
        free(o.data);
    }
    cr_assert_eq(cmp_pool_outstanding(p), 0);
    finish(p);
}

Test(pool, failed_task_carries_its_bytes, .timeout = 30)
{
    cmp_pool_t *p = new_pool(2, 0, NULL);
    uint64_t bad = submit(p, FAIL, 0);
    uint64_t good = submit(p, SQUARE, 7);
    for (int k = 0; k < 2; k++) {
        cmp_pool_outcome_t o = next(p, 10);
        if (o.id == bad) {
            cr_assert_eq(o.status, CMP_POOL_FAILED);
            cr_assert_str_eq(o.data, "it failed");
        } else {
            cr_assert_eq(o.id, good);
            cr_assert_eq(value_of(&o), 49);
        }
        free(o.data);
    }
    finish(p);
}

/* Tasks of op `op` at positions every 10th among n squares: those come
 * out LOST with cause, every other one DONE, and the pool stays usable. */
static void lost_tasks(int op, int cause)
{
    cmp_pool_t *p = new_pool(2, 0, NULL);
    enum { N = 60 };
    uint64_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = submit(p, i % 10 == 5 ? op : SQUARE, i);
    int lost = 0, done = 0;
    for (int k = 0; k < N; k++) {
        cmp_pool_outcome_t o = next(p, 20);
        int i = (int)(o.id - ids[0]);
        if (i % 10 == 5) {
            cr_assert_eq(o.status, CMP_POOL_LOST, "task %d: status %d", i, o.status);
            cr_assert_eq(o.cause, cause);
            lost++;
        } else {
            cr_assert_eq(o.status, CMP_POOL_DONE, "task %d: status %d", i, o.status);
            cr_assert_eq(value_of(&o), (int64_t)i * i);
            done++;
        }
        free(o.data);
    }
    cr_assert_eq(lost, N / 10);
    cr_assert_eq(done, N - N / 10);
    /* still usable, with replacements */
    submit(p, SQUARE, 12);
    cmp_pool_outcome_t o = next(p, 10);
    cr_assert_eq(value_of(&o), 144);
    free(o.data);
    finish(p);
}

Test(pool, worker_killed_by_a_signal_mid_task, .timeout = 60)
{
    lost_tasks(SELF_KILL, -SIGKILL);
}

Test(pool, worker_exits_mid_task, .timeout = 60)
{
    lost_tasks(EXIT3, 3);
}

Test(pool, worker_killed_from_outside, .timeout = 30)
{
    cmp_pool_t *p = new_pool(1, 0, NULL);
    uint64_t slow = submit(p, SLEEP_MS, 20000);
    uint64_t after = submit(p, SQUARE, 3); /* queued behind it: must survive */
    pid_t pid;
    cr_assert_eq(cmp_pool_pids(p, &pid, 1), 1);
    sync_sleep(0.1);
    cr_assert_eq(kill(pid, SIGKILL), 0);
    cmp_pool_outcome_t o = next(p, 10);
    cr_assert_eq(o.id, slow);
    cr_assert_eq(o.status, CMP_POOL_LOST);
    cr_assert_eq(o.cause, -SIGKILL);
    cr_assert_eq(o.pid, pid);
    free(o.data);
    o = next(p, 10);
    cr_assert_eq(o.id, after);
    cr_assert_eq(o.status, CMP_POOL_DONE);
    cr_assert_neq(o.pid, pid);
    free(o.data);
    finish(p);
}

/* cmp_pool_pids lists running workers only: not one killed (before the
 * pool handles its death), none once the pool is terminated. */
Test(pool, pids_are_running_workers, .timeout = 30)
{
    cmp_pool_t *p = new_pool(2, 0, NULL);
    pid_t pids[2];
    cr_assert_eq(cmp_pool_pids(p, pids, 2), 2);
    cr_assert_eq(kill(pids[0], SIGKILL), 0);
    double end = sync_now() + 10;
    pid_t now[2];
    for (;;) {
        unsigned n = cmp_pool_pids(p, now, 2), listed = 0;
        for (unsigned i = 0; i < n; i++)
            listed |= now[i] == pids[0];
        if (!listed)
            break;
        cr_assert_lt(sync_now(), end, "the killed worker stays listed");
        sync_sleep(0.005);
    }
    cr_assert_eq(cmp_pool_terminate(p), 0);
    cr_assert_eq(cmp_pool_pids(p, now, 2), 0);
    cmp_pool_destroy(p);
}

struct killer {
    cmp_pool_t *pool;
    int kills;
    int stop;
};

static void *killer_main(void *arg)
{
    struct killer *k = arg;
    for (int i = 0; i < 10 && !__atomic_load_n(&k->stop, __ATOMIC_ACQUIRE); i++) {
        sync_sleep(0.03);
        pid_t pids[4];
        unsigned n = cmp_pool_pids(k->pool, pids, 4);
        if (n && kill(pids[i % n], SIGKILL) == 0)
            k->kills++;
    }
    return NULL;
}

Test(pool, repeated_kills_during_a_long_run, .timeout = 90)
{
    cmp_pool_t *p = new_pool(3, 0, NULL);
    enum { N = 600 };
    for (int i = 0; i < N; i++)
        submit(p, SLEEP_MS, 1);
    struct killer k = {p, 0, 0};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, killer_main, &k), 0);
    int lost = 0, done = 0;
    for (int i = 0; i < N; i++) {
        cmp_pool_outcome_t o = next(p, 20);
        cr_assert(o.status == CMP_POOL_DONE || o.status == CMP_POOL_LOST, "status %d", o.status);
        if (o.status == CMP_POOL_LOST)
            lost++;
        else
            done++;
        free(o.data);
    }
    __atomic_store_n(&k.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    cr_assert_leq(lost, k.kills, "%d lost for %d kills", lost, k.kills);
    cr_assert_eq(lost + done, N);
    finish(p);
}

Test(pool, max_tasks_recycles_workers, .timeout = 60)
{
    cmp_pool_t *p = new_pool(2, 3, count_init);
    enum { N = 30 };
    pid_t pids[N];
    for (int i = 0; i < N; i++)
        submit(p, i % 2 ? PID : INIT_COUNT, 0);
    int distinct = 0;
    for (int k = 0; k < N; k++) {
        cmp_pool_outcome_t o = next(p, 20);
        cr_assert_eq(o.status, CMP_POOL_DONE, "status %d", o.status);
        pids[k] = o.pid;
        free(o.data);
        int fresh = 1;
        for (int j = 0; j < k; j++)
            fresh &= pids[j] != pids[k];
        distinct += fresh;
    }
    /* each worker runs at most 3 tasks: at least 10 processes ran them */
    cr_assert_geq(distinct, N / 3);
    finish(p);
}

Test(pool, initializer_runs_once_per_worker, .timeout = 30)
{
    cmp_pool_t *p = new_pool(3, 0, count_init);
    for (int i = 0; i < 30; i++)
        submit(p, INIT_COUNT, 0);
    for (int k = 0; k < 30; k++) {
        cmp_pool_outcome_t o = next(p, 10);
        cr_assert_eq(value_of(&o), 1);
        free(o.data);
    }
    finish(p);
}

Test(pool, failing_initializer_breaks_the_pool, .timeout = 30)
{
    cmp_pool_t *p = new_pool(2, 0, failing_init);
    enum { N = 5 };
    for (int i = 0; i < N; i++)
        submit(p, SQUARE, i);
    for (int k = 0; k < N; k++) {
        cmp_pool_outcome_t o = next(p, 10);
        cr_assert_eq(o.status, CMP_POOL_BROKEN);
        cr_assert_str_eq(o.data, "bad init");
        free(o.data);
    }
    struct task t = {SQUARE, 0, 1};
    cr_assert_eq(cmp_pool_submit(p, &t, sizeof t, NULL), -EPIPE);
    struct timespec d = test_deadline(10);
    cr_assert_eq(cmp_pool_join(p, &d), 0, "workers respawned or stayed");
    cmp_pool_destroy(p);
}

Test(pool, terminate_cancels_what_is_left, .timeout = 30)
{
    cmp_pool_t *p = new_pool(2, 0, NULL);
    enum { N = 6 };
    for (int i = 0; i < N; i++)
        submit(p, SLEEP_MS, 20000);
    sync_sleep(0.05);
    double t0 = sync_now();
    cr_assert_eq(cmp_pool_terminate(p), 0);
    for (int k = 0; k < N; k++) {
        cmp_pool_outcome_t o = next(p, 5);
        cr_assert_eq(o.status, CMP_POOL_CANCELLED);
        free(o.data);
    }
    struct timespec d = test_deadline(5);
    cr_assert_eq(cmp_pool_join(p, &d), 0);
    cr_assert_lt(sync_now() - t0, 3.0);
    struct task t = {SQUARE, 0, 1};
    cr_assert_eq(cmp_pool_submit(p, &t, sizeof t, NULL), -EPIPE);
    cmp_pool_destroy(p);
}

/* cmp_pool_cancel: the tasks still waiting in the pool's process come out
 * CANCELLED; those a worker holds, and the tasks not named, complete. */
Test(pool, cancel_what_no_worker_took, .timeout = 30)
{
    cmp_pool_t *p = new_pool(1, 0, NULL);
    /* one worker takes depth + 1 = 3 tasks; the other 7 wait in the pool */
    uint64_t ids[10];
    for (int i = 0; i < 10; i++)
        ids[i] = submit(p, SLEEP_MS, 30);
    uint64_t other = submit(p, SQUARE, 7);
    cr_assert_eq(cmp_pool_cancel(p, ids, 10), 7);
    cr_assert_eq(cmp_pool_cancel(p, ids, 10), 0); /* nothing left to cancel */
    int done = 0, cancelled = 0, squared = 0;
    for (int k = 0; k < 11; k++) {
        cmp_pool_outcome_t o = next(p, 10);
        if (o.id == other) {
            cr_assert_eq(o.status, CMP_POOL_DONE);
            squared = value_of(&o) == 49;
        } else if (o.status == CMP_POOL_CANCELLED) {
            cancelled++;
        } else {
            cr_assert_eq(o.status, CMP_POOL_DONE);
            done++;
        }
        free(o.data);
    }
    cr_assert_eq(done, 3);
    cr_assert_eq(cancelled, 7);
    cr_assert(squared);
    finish(p);
}

/* A chunk of int64 items: the sum of their squares, and how many. */
static int sum_squares(void *arg, const void *data, size_t len, cmp_pool_result_t *out)
{
    (void)arg;
    int64_t sum = 0, x;
    for (size_t off = 0; off + sizeof x <= len; off += sizeof x) {
        memcpy(&x, (const char *)data + off, sizeof x);
        sum += x * x;
    }
    int64_t pair[2] = {sum, (int64_t)(len / sizeof x)};
    void *room = cmp_pool_result_extend(out, sizeof pair);
    if (!room)
        return 1;
    memcpy(room, pair, sizeof pair);
    return 0;
}

Test(pool, submit_chunks, .timeout = 30)
{
    cmp_pool_options_t opt = {.workers = 2, .task = sum_squares};
    cmp_pool_t *p = NULL;
    cr_assert_eq(cmp_pool_create(&p, &opt), 0);
    enum { N = 100, CHUNK = 7 };
    int64_t items[N];
    for (int i = 0; i < N; i++)
        items[i] = i + 1;
    uint64_t first = 0;
    long ntasks = cmp_pool_submit_chunks(p, items, sizeof items[0], N, CHUNK, &first);
    cr_assert_eq(ntasks, (N + CHUNK - 1) / CHUNK);
    int64_t total = 0, counted = 0;
    for (long k = 0; k < ntasks; k++) {
        cmp_pool_outcome_t o = next(p, 10);
        cr_assert_eq(o.status, CMP_POOL_DONE);
        cr_assert(o.id >= first && o.id < first + (uint64_t)ntasks);
        int64_t pair[2];
        memcpy(pair, o.data, sizeof pair);
        uint64_t index = o.id - first; /* ids follow the item order */
        cr_assert_eq(pair[1], index + 1 < (uint64_t)ntasks ? CHUNK : N - CHUNK * (ntasks - 1));
        total += pair[0];
        counted += pair[1];
        free(o.data);
    }
    cr_assert_eq(counted, N);
    cr_assert_eq(total, (int64_t)N * (N + 1) * (2 * N + 1) / 6);
    cr_assert_eq(cmp_pool_submit_chunks(p, items, 0, N, CHUNK, NULL), -EINVAL);
    cr_assert_eq(cmp_pool_submit_chunks(p, items, sizeof items[0], N, 0, NULL), -EINVAL);
    cr_assert_eq(cmp_pool_submit_chunks(p, items, sizeof items[0], 0, CHUNK, NULL), 0);
    finish(p);
}

/* Tasks that take milliseconds are never queued deeper than depth at a
 * worker (only tasks of a few microseconds are): behind a long task,
 * queued tasks would wait while other workers idle. */
Test(pool, long_tasks_keep_the_depth, .timeout = 30)
{
    cmp_pool_t *p = new_pool(1, 0, NULL);
    for (int i = 0; i < 4; i++) /* time a few */
        submit(p, SLEEP_MS, 20);
    for (int i = 0; i < 4; i++)
        free(next(p, 10).data);
    uint64_t ids[12];
    for (int i = 0; i < 12; i++)
        ids[i] = submit(p, SLEEP_MS, 20);
    cr_assert_eq(cmp_pool_cancel(p, ids, 12), 12 - 3); /* it holds depth + 1 = 3 */
    for (int k = 0; k < 12; k++)
        free(next(p, 10).data);
    finish(p);
}

static int released[8];

static void count_release(void *arg)
{
    __atomic_fetch_add(&released[(intptr_t)arg], 1, __ATOMIC_SEQ_CST);
}

/* cmp_pool_submitv_ref: the bytes a worker gets are the caller's, and each
 * task's release runs exactly once, whether it was dispatched at once,
 * waited (uncopied) for room, or was cancelled. Big tasks (beyond half an
 * inbox) too. */
Test(pool, submit_by_reference, .timeout = 60)
{
    cmp_pool_t *p = new_pool(1, 0, NULL);
    enum { NTASK = 6 };
    size_t sizes[NTASK] = {10, 1000, 300 << 10, 5 << 20, 77, 2 << 20};
    unsigned char *bufs[NTASK];
    struct task head = {SUM_BYTES, 0, 0};
    uint64_t ids[NTASK];
    int64_t want[NTASK];
    memset(released, 0, sizeof released);
    for (int i = 0; i < NTASK; i++) {
        bufs[i] = malloc(sizes[i]);
        cr_assert_not_null(bufs[i]);
        want[i] = 0;
        for (size_t k = 0; k < sizes[i]; k++) {
            bufs[i][k] = (unsigned char)(k * 7 + i);
            want[i] += bufs[i][k];
        }
        struct iovec iov[2] = {{&head, sizeof head}, {bufs[i], sizes[i]}};
        cr_assert_eq(cmp_pool_submitv_ref(p, iov, 2, &ids[i], count_release, (void *)(intptr_t)i),
                     0);
    }
    /* the last one is still waiting: cancelled, it is released too */
    cr_assert_eq(cmp_pool_cancel(p, &ids[NTASK - 1], 1), 1);
    int got = 0;
    for (int k = 0; k < NTASK; k++) {
        cmp_pool_outcome_t o = next(p, 20);
        int i = (int)(o.id - ids[0]);
        if (i == NTASK - 1) {
            cr_assert_eq(o.status, CMP_POOL_CANCELLED);
        } else {
            cr_assert_eq(o.status, CMP_POOL_DONE);
            cr_assert_eq(value_of(&o), want[i], "task %d", i);
            got++;
        }
        free(o.data);
    }
    cr_assert_eq(got, NTASK - 1);
    for (int i = 0; i < NTASK; i++) {
        cr_assert_eq(released[i], 1, "task %d released %d times", i, released[i]);
        free(bufs[i]);
    }
    struct iovec none[1] = {{&head, sizeof head}};
    cr_assert_eq(cmp_pool_submitv_ref(p, none, 1, NULL, NULL, NULL), -EINVAL);
    finish(p);
}

/* terminate releases what waits. */
Test(pool, terminate_releases_by_reference_tasks, .timeout = 30)
{
    cmp_pool_t *p = new_pool(1, 0, NULL);
    memset(released, 0, sizeof released);
    struct task slow = {SLEEP_MS, 0, 20000};
    for (int i = 0; i < 6; i++) {
        struct iovec iov = {&slow, sizeof slow};
        cr_assert_eq(cmp_pool_submitv_ref(p, &iov, 1, NULL, count_release, (void *)(intptr_t)i), 0);
    }
    cr_assert_eq(cmp_pool_terminate(p), 0);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(released[i], 1, "task %d released %d times", i, released[i]);
    for (int k = 0; k < 6; k++)
        free(next(p, 5).data);
    struct timespec d = test_deadline(5);
    cr_assert_eq(cmp_pool_join(p, &d), 0);
    cmp_pool_destroy(p);
}

Test(pool, join_while_running_is_einval, .timeout = 10)
{
    cmp_pool_t *p = new_pool(1, 0, NULL);
    cr_assert_eq(cmp_pool_join(p, CMP_NOWAIT), -EINVAL);
    finish(p);
}

/* join sleeps on the workers' exits: a deadline that passes while a worker
 * still runs its task is -ETIMEDOUT, and a join without one returns once
 * that worker has finished and left. */
Test(pool, join_deadline_then_join, .timeout = 20)
{
    cmp_pool_t *p = new_pool(2, 0, NULL);
    submit(p, SLEEP_MS, 400);
    cr_assert_eq(cmp_pool_close(p), 0);
    struct timespec d = test_deadline(0.05);
    cr_assert_eq(cmp_pool_join(p, &d), -ETIMEDOUT);
    cr_assert_eq(cmp_pool_join(p, CMP_NOWAIT), -ETIMEDOUT);
    cmp_pool_outcome_t o = next(p, 10);
    cr_assert_eq(value_of(&o), 400);
    free(o.data);
    cr_assert_eq(cmp_pool_join(p, NULL), 0);
    pid_t pids[2];
    cr_assert_eq(cmp_pool_pids(p, pids, 2), 0, "every worker has exited");
    cmp_pool_destroy(p);
}

Test(pool, big_tasks_and_results, .timeout = 60)
{
    cmp_pool_t *p = new_pool(2, 0, NULL);
    size_t len = 8u << 20;
    char *buf = malloc(sizeof(struct task) + len);
    struct task t = {SUM_BYTES, 0, 0};
    memcpy(buf, &t, sizeof t);
    memset(buf + sizeof t, 1, len);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(cmp_pool_submit(p, buf, sizeof t + len, NULL), 0);
    uint64_t echo = submit(p, ECHO_BIG, 3 << 20);
    for (int k = 0; k < 5; k++) {
        cmp_pool_outcome_t o = next(p, 30);
        cr_assert_eq(o.status, CMP_POOL_DONE);
        if (o.id == echo) {
            cr_assert_eq(o.len, (size_t)3 << 20);
            cr_assert_eq(((unsigned char *)o.data)[o.len - 1], 0x5a);
        } else {
            cr_assert_eq(value_of(&o), (int64_t)len);
        }
        free(o.data);
    }
    free(buf);
    finish(p);
}

/* task_alloc: a worker's own buffer for each big task (the last one is
 * kept, the one before freed: the pool never frees them). */
static char *owned;
static size_t owned_len;

static void *own_alloc(void *arg, size_t len)
{
    (void)arg;
    free(owned);
    owned = malloc(len);
    owned_len = len;
    return owned;
}

/* Answers 1 when the task's bytes are in the owned buffer, 0 otherwise,
 * and -1 if they are not all 7s. */
static int where_task(void *arg, const void *data, size_t len, cmp_pool_result_t *out)
{
    (void)arg;
    const char *d = data;
    for (size_t i = 0; i < len; i++)
        if (d[i] != 7)
            return put_i64(out, -1);
    int in_owned = owned && d >= owned && d + len <= owned + owned_len;
    return put_i64(out, in_owned);
}

Test(pool, big_tasks_go_to_task_alloc_memory, .timeout = 30)
{
    cmp_pool_options_t opt = {.workers = 1, .task = where_task, .task_alloc = own_alloc};
    cmp_pool_t *p = NULL;
    cr_assert_eq(cmp_pool_create(&p, &opt), 0);
    size_t sizes[] = {100, CMP_POOL_OWN_TASK_MIN, 5u << 20, 10};
    int64_t expect[] = {0, 1, 1, 0};
    char *buf = malloc(5u << 20);
    memset(buf, 7, 5u << 20);
    uint64_t ids[4];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(cmp_pool_submit(p, buf, sizes[i], &ids[i]), 0);
    for (int k = 0; k < 4; k++) {
        cmp_pool_outcome_t o = next(p, 20);
        cr_assert_eq(o.status, CMP_POOL_DONE);
        int i = 0;
        while (ids[i] != o.id)
            i++;
        cr_assert_eq(value_of(&o), expect[i], "task of %zu bytes", sizes[i]);
        free(o.data);
    }
    free(buf);
    finish(p);
}

/* The pool's process is SIGKILLed: its workers go with it. */
Test(pool, workers_die_with_the_pool_process, .timeout = 30)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t owner = test_fork();
    cr_assert(owner >= 0);
    if (owner == 0) {
        cmp_pool_t *p = new_pool(3, 0, NULL);
        pid_t pids[3];
        unsigned n = cmp_pool_pids(p, pids, 3);
        if (write(fds[1], pids, n * sizeof *pids) != (ssize_t)(n * sizeof *pids))
            _exit(2);
        for (;;)
            pause();
    }
    pid_t pids[3];
    cr_assert_eq(read(fds[0], pids, sizeof pids), (ssize_t)sizeof pids);
    cr_assert_eq(kill(owner, SIGKILL), 0);
    cr_assert_eq(test_join(owner, 10), -1); /* killed: not a normal exit */
    double end = sync_now() + 10;
    for (int i = 0; i < 3; i++) {
        while (kill(pids[i], 0) == 0) {
            cr_assert_lt(sync_now(), end, "worker %d outlived the pool's process", pids[i]);
            sync_sleep(0.005);
        }
    }
    close(fds[0]);
    close(fds[1]);
}

/* Workers started by start_worker: each maps the pool's region anew (at
 * another address than the pool's) and serves from there, as a worker
 * that is a new program would. */
struct own_start {
    int fd;
    size_t len;
    unsigned workers, index;
};

static int serve_own(void *arg)
{
    const struct own_start *s = arg;
    /* max_tasks as the pool's: it replaces a worker that has done them */
    cmp_pool_options_t opt = {.task = run_task, .init = count_init, .max_tasks = 50};
    return cmp_pool_worker_serve(s->fd, s->len, s->workers, s->index, &opt);
}

static int started_own;

static int start_own(void *arg, cmp_pool_t *pool, unsigned index, cmp_process_t *out)
{
    (void)arg;
    struct own_start s = {-1, 0, cmp_pool_size(pool), index};
    s.fd = cmp_pool_shared_fd(pool, &s.len);
    started_own++;
    return cmp_process_start(out, serve_own, &s, CMP_PROCESS_DIE_WITH_PARENT);
}

Test(pool, workers_of_its_own_making, .timeout = 30)
{
    cmp_pool_options_t opt = {
        .workers = 2, .task = run_task, .start_worker = start_own, .max_tasks = 50};
    cmp_pool_t *p = NULL;
    started_own = 0;
    cr_assert_eq(cmp_pool_create(&p, &opt), 0);
    cr_assert_eq(started_own, 2);
    enum { N = 300 };
    uint64_t first = submit(p, SQUARE, 0);
    for (int64_t i = 1; i < N; i++)
        submit(p, SQUARE, i);
    for (int k = 0; k < N; k++) {
        cmp_pool_outcome_t o = next(p, 10);
        cr_assert_eq(o.status, CMP_POOL_DONE);
        int64_t i = (int64_t)(o.id - first);
        cr_assert_eq(value_of(&o), i * i);
        free(o.data);
    }
    /* max_tasks: the pool replaced its workers through the hook too */
    cr_assert_geq(started_own, N / 50);
    uint64_t id = submit(p, EXIT3, 0);
    cmp_pool_outcome_t o = next(p, 10);
    cr_assert_eq(o.id, id);
    cr_assert_eq(o.status, CMP_POOL_LOST);
    free(o.data);
    finish(p);
}
