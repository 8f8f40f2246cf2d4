/* cmp_queue_t: maxsize, exact qsize/empty/full, blocking put and get across
 * processes, the joinable counters, counts that stay exact when producers
 * are killed. */
#include "ring_helpers.h"

static cmp_queue_t *test_queue(size_t capacity, uint32_t maxsize)
{
    cmp_queue_t *q = test_shared_map(cmp_queue_footprint(capacity));
    cr_assert_eq(cmp_queue_init(q, capacity, maxsize), 0);
    return q;
}

Test(queue, init_and_limits, .timeout = 10)
{
    cr_assert_eq(cmp_queue_footprint(4096), 64 + cmp_ring_footprint(4096));
    cmp_queue_t *q = test_queue(4096, 5);
    cr_assert_eq(cmp_queue_maxsize(q), 5);
    cr_assert_eq(cmp_ring_capacity(cmp_queue_ring(q)), 4096);
    cr_assert_eq(cmp_queue_init(q, 4096, CMP_QUEUE_MAXSIZE_MAX + 1), -EINVAL);
    cr_assert_eq(cmp_queue_init(q, 4096, CMP_QUEUE_MAXSIZE_MAX), 0);
}

Test(queue, maxsize_qsize_full_empty, .timeout = 10)
{
    cmp_queue_t *q = test_queue(4096, 4);
    struct sink s = {0};
    cr_assert(cmp_queue_empty(q));
    cr_assert(!cmp_queue_full(q));
    for (uint64_t i = 0; i < 4; i++) {
        cr_assert_eq(cmp_queue_qsize(q), i);
        cr_assert_eq(cmp_queue_put(q, "abc", 3, CMP_NOWAIT), 0);
        cr_assert(!cmp_queue_empty(q));
    }
    cr_assert(cmp_queue_full(q));
    cr_assert_eq(cmp_queue_qsize(q), 4);
    cr_assert_eq(cmp_queue_put(q, "abc", 3, CMP_NOWAIT), -EAGAIN);
    struct timespec d = test_deadline(0.05);
    cr_assert_eq(cmp_queue_put(q, "abc", 3, &d), -ETIMEDOUT);
    struct iovec iov[3] = {{"a", 1}, {"b", 1}, {"c", 1}};
    cr_assert_eq(cmp_queue_put_many(q, iov, NULL, 3, CMP_NOWAIT), -EAGAIN);
    cr_assert_eq(cmp_queue_qsize(q), 4);
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT), 0);
    cr_assert(!cmp_queue_full(q));
    /* only one of three fits */
    cr_assert_eq(cmp_queue_put_many(q, iov, NULL, 3, CMP_NOWAIT), 1);
    cr_assert_eq(cmp_queue_putv(q, iov, 2, CMP_NOWAIT), -EAGAIN);
    cr_assert_eq(cmp_queue_qsize(q), 4);
    uint8_t slots[64][256];
    struct batch_sink b = {slots, {0}, 0};
    cr_assert_eq(cmp_queue_get_many(q, batch_alloc, &b, 10, NULL), 4);
    cr_assert_eq(b.lens[3], 1);
    cr_assert_eq(slots[3][0], 'a');
    cr_assert(cmp_queue_empty(q));
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT), -EAGAIN);
    sink_free(&s);
}

Test(queue, unbounded_queue_is_never_full, .timeout = 10)
{
    cmp_queue_t *q = test_queue(64 * 1024, 0);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(cmp_queue_put(q, &i, sizeof i, CMP_NOWAIT), 0);
    cr_assert_eq(cmp_queue_qsize(q), 1000);
    cr_assert(!cmp_queue_full(q));
}

Test(queue, blocked_put_proceeds_when_a_get_frees_a_slot, .timeout = 10)
{
    cmp_queue_t *q = test_queue(4096, 1);
    uint32_t *flag = test_shared_map(4096);
    cr_assert_eq(cmp_queue_put(q, "first", 5, NULL), 0);
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        __atomic_store_n(flag, 1, __ATOMIC_RELEASE);
        struct timespec d = test_deadline(5);
        int rc = cmp_queue_put(q, "second", 6, &d);
        __atomic_store_n(flag, 2, __ATOMIC_RELEASE);
        _exit(rc == 0 ? 0 : 1);
    }
    sync_wait_flag(flag, 1, 5);
    sync_sleep(0.1);
    cr_assert_eq(__atomic_load_n(flag, __ATOMIC_ACQUIRE), 1, "put did not block");
    struct sink s = {0};
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, NULL), 0);
    cr_assert_eq(memcmp(s.buf, "first", 5), 0);
    sync_reap_ok(pid);
    struct timespec d = test_deadline(5);
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, &d), 0);
    cr_assert_eq(memcmp(s.buf, "second", 6), 0);
    sink_free(&s);
}

Test(queue, blocked_get_wakes_on_put, .timeout = 10)
{
    cmp_queue_t *q = test_queue(4096, 0);
    uint32_t *flag = test_shared_map(4096);
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        struct sink s = {0};
        __atomic_store_n(flag, 1, __ATOMIC_RELEASE);
        struct timespec d = test_deadline(5);
        int rc = cmp_queue_get(q, sink_alloc, &s, &d);
        _exit(rc == 0 && s.len == 2 && memcmp(s.buf, "hi", 2) == 0 ? 0 : 1);
    }
    sync_wait_flag(flag, 1, 5);
    sync_sleep(0.1); /* asleep by now, past the spin */
    cr_assert_eq(cmp_queue_put(q, "hi", 2, NULL), 0);
    sync_reap_ok(pid);
    cr_assert(cmp_queue_empty(q));
}

Test(queue, task_done_and_join, .timeout = 10)
{
    cmp_queue_t *q = test_queue(4096, 0);
    cr_assert_eq(cmp_queue_unfinished(q), 0);
    cr_assert_eq(cmp_queue_join(q, CMP_NOWAIT), 0);
    cr_assert_eq(cmp_queue_task_done(q), -EOVERFLOW);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(cmp_queue_put(q, "t", 1, NULL), 0);
    cr_assert_eq(cmp_queue_unfinished(q), 3);
    cr_assert_eq(cmp_queue_join(q, CMP_NOWAIT), -EAGAIN);
    struct timespec d = test_deadline(0.1);
    double t0 = sync_now();
    cr_assert_eq(cmp_queue_join(q, &d), -ETIMEDOUT);
    cr_assert(sync_now() - t0 >= 0.095);
    /* task_done counts against puts, not gets (as the stdlib's does) */
    cr_assert_eq(cmp_queue_task_done(q), 0);
    cr_assert_eq(cmp_queue_task_done(q), 0);
    cr_assert_eq(cmp_queue_unfinished(q), 1);
    cr_assert_eq(cmp_queue_task_done(q), 0);
    cr_assert_eq(cmp_queue_task_done(q), -EOVERFLOW);
    cr_assert_eq(cmp_queue_unfinished(q), 0);
    cr_assert_eq(cmp_queue_join(q, NULL), 0);
    cr_assert_eq(cmp_queue_qsize(q), 3);
}

Test(queue, join_waits_for_workers_in_other_processes, .timeout = 20)
{
    enum { N = 2000, WORKERS = 3 };
    cmp_queue_t *q = test_queue(16 * 1024, 0);
    uint32_t *handled = test_shared_map(4096);
    pid_t w[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        if ((w[i] = fork_or_fail()) == 0) {
            struct sink s = {0};
            for (;;) {
                struct timespec d = test_deadline(10);
                int rc = cmp_queue_get(q, sink_alloc, &s, &d);
                if (rc == -EPIPE)
                    _exit(0);
                if (rc != 0)
                    _exit(1);
                __atomic_fetch_add(handled, 1, __ATOMIC_RELAXED);
                if (cmp_queue_task_done(q) != 0)
                    _exit(1);
            }
        }
    }
    for (int i = 0; i < N; i++)
        cr_assert_eq(cmp_queue_put(q, &i, sizeof i, NULL), 0);
    struct timespec d = test_deadline(10);
    cr_assert_eq(cmp_queue_join(q, &d), 0);
    /* every task_done came after its item was handled */
    cr_assert_eq(__atomic_load_n(handled, __ATOMIC_ACQUIRE), N);
    cr_assert_eq(cmp_queue_unfinished(q), 0);
    cr_assert(cmp_queue_empty(q));
    cmp_queue_close(q);
    for (int i = 0; i < WORKERS; i++)
        sync_reap_ok(w[i]);
}

Test(queue, join_interrupted, .timeout = 10)
{
    cmp_queue_t *q = test_queue(4096, 0);
    cr_assert_eq(cmp_queue_put(q, "t", 1, NULL), 0);
    struct sync_interrupter it;
    sync_interrupt_me_after(&it, 0.05);
    struct timespec d = test_deadline(5);
    cr_assert_eq(cmp_queue_join(q, &d), -EINTR);
    sync_interrupter_join(&it);
}

/* Producers killed at random points of their puts: afterwards qsize equals
 * exactly the number of messages a consumer can get, and unfinished equals
 * the number of puts that completed. */
Test(queue, counts_exact_after_producers_are_killed, .timeout = 30)
{
    cmp_queue_t *q = test_queue(8192, 0);
    uint32_t *started = test_shared_map(4096), *stop = started + 1;
    uint64_t rng = 5;
    for (int k = 0; k < 20; k++) {
        __atomic_store_n(started, 0, __ATOMIC_RELEASE);
        __atomic_store_n(stop, 0, __ATOMIC_RELEASE);
        pid_t victim = fork_or_fail();
        if (victim == 0) {
            static uint8_t buf[20000];
            uint64_t r2 = (uint64_t)k;
            for (uint32_t i = 0;; i++) {
                size_t len = MSG_HDR + rng_next(&r2) % 6000; /* some stream */
                make_msg(buf, len, (uint32_t)k, i);
                struct timespec d = test_deadline(0.5);
                if (cmp_queue_put(q, buf, len, &d) == 0)
                    __atomic_fetch_add(started, 1, __ATOMIC_RELEASE);
            }
        }
        /* a consumer drains so that puts keep going, until the victim is
         * dead: a drain that stopped first (after so many gets, however
         * slow the victim was to start) could leave it a full ring */
        pid_t drain = fork_or_fail();
        if (drain == 0) {
            struct sink s = {0};
            while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
                struct timespec d = test_deadline(0.05); /* to see stop */
                int rc = cmp_queue_get(q, sink_alloc, &s, &d);
                uint32_t p, n;
                if (rc == 0 && !parse_msg(s.buf, s.len, &p, &n))
                    _exit(1);
                if (rc == 0 && cmp_queue_task_done(q) != 0)
                    _exit(1);
            }
            _exit(0);
        }
        /* one put done: the victim took the lock over from the last one (a
         * waiter checks its holder's liveness every 100 ms); then kill it at
         * a random point of a later put */
        sync_wait_flag(started, 1, 60); /* a hang guard only */
        sync_sleep((double)(rng_next(&rng) % 3000) / 1e6);
        kill(victim, SIGKILL);
        waitpid(victim, NULL, 0);
        __atomic_store_n(stop, 1, __ATOMIC_RELEASE);
        sync_reap_ok(drain);
    }
    uint64_t qs = cmp_queue_qsize(q);
    uint64_t unfinished = cmp_queue_unfinished(q);
    cr_assert_eq(unfinished, qs, "unfinished %lu qsize %lu", (unsigned long)unfinished,
                 (unsigned long)qs);
    struct sink s = {0};
    uint64_t got = 0;
    for (;;) {
        int rc = cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT);
        if (rc == -ECONNABORTED)
            continue;
        if (rc == -EAGAIN)
            break;
        cr_assert_eq(rc, 0);
        uint32_t p, n;
        cr_assert(parse_msg(s.buf, s.len, &p, &n));
        got++;
        cr_assert_eq(cmp_queue_qsize(q), qs - got);
    }
    cr_assert_eq(got, qs);
    cr_assert_eq(cmp_ring_used(cmp_queue_ring(q)), 0);
    for (uint64_t i = 0; i < got; i++)
        cr_assert_eq(cmp_queue_task_done(q), 0);
    cr_assert_eq(cmp_queue_task_done(q), -EOVERFLOW);
    sink_free(&s);
}

#include "pid_helpers.h"

/* A producer killed inside a put (holding the producer lock) of a
 * maxsize=1 queue, its pid then given to a live process: the queue is not
 * "full", a put goes through (blocking or not) and the get returns it. */
static void producer_pid_reused(const struct timespec *deadline)
{
    cmp_queue_t *q = test_queue(4096, 1);
    pid_t squatter = pid_squatter(pid_die_holding(&q->ring.plock));
    int put = cmp_queue_put(q, "after", 5, deadline);
    pid_squatter_end(squatter);
    cr_assert_eq(put, 0);
    cr_assert_eq(cmp_queue_qsize(q), 1);
    struct sink s = {0};
    cr_assert_eq(cmp_queue_get(q, sink_alloc, &s, CMP_NOWAIT), 0);
    cr_assert_eq(s.len, 5);
    cr_assert(memcmp(s.buf, "after", 5) == 0);
    cr_assert(cmp_queue_empty(q));
    sink_free(&s);
}

Test(queue, killed_producer_pid_reused_put_with_timeout, .timeout = 20)
{
    struct timespec d = test_deadline(1);
    producer_pid_reused(&d);
}

Test(queue, killed_producer_pid_reused_put_nowait, .timeout = 20)
{
    producer_pid_reused(CMP_NOWAIT);
}
