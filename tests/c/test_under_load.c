/* Ping-pongs between two processes through each primitive, with a CPU hog
 * on every core: each must finish (no livelock, no lost wake-up) within a
 * generous bound. Speed is for bench/wake_bench.c; every wait here has a
 * deadline, so a lost wake-up fails the test instead of hanging it. */
#include "helpers.h"

#include "../../bench/hogs.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define ROUNDS 2000
#define BOUND 30.0 /* seconds for a whole exchange */

static struct hogs hogs;

static void load_start(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    hogs_start(&hogs, n < 1 ? 1 : (int)n);
}

static void load_stop(void)
{
    hogs_stop(&hogs);
}

TestSuite(under_load, .init = load_start, .fini = load_stop);

struct pair {
    cmp_sem_t sem[2];
    cmp_event_t event[2];
    cmp_lock_t lock;
    cmp_cond_t cond;
    uint32_t turn;
    uint64_t counter;
    cmp_barrier_t barrier;
};

/* One side of an exchange (child: 1 in the forked child, 0 in the test's
 * process): 0 once its rounds are done, -1 when a wait timed out. */
typedef int (*side_fn)(struct pair *p, int child);

/* Runs side in a fresh pair of processes over fresh objects; returns the
 * pair for checks after the exchange. */
static struct pair *exchange(side_fn side)
{
    struct pair *p = test_shared_map(sizeof *p);
    for (int i = 0; i < 2; i++) {
        cmp_sem_init(&p->sem[i], 0, CMP_SEM_VALUE_MAX);
        cmp_event_init(&p->event[i]);
    }
    cmp_lock_init(&p->lock);
    cmp_cond_init(&p->cond);
    cmp_barrier_init(&p->barrier, 2);
    p->turn = 1; /* the child's */
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0)
        _exit(side(p, 1) == 0 ? 0 : 2);
    cr_assert_eq(side(p, 0), 0);
    cr_assert_eq(test_join(pid, BOUND), 0);
    return p;
}

/* The parent posts on [0] and waits on [1]; the child the other way. */
static int sem_side(struct pair *p, int child)
{
    struct timespec d = test_deadline(BOUND);
    for (int i = 0; i < ROUNDS; i++) {
        if (!child)
            cmp_sem_release(&p->sem[0]);
        if (cmp_sem_acquire(&p->sem[!child], &d) != 0)
            return -1;
        if (child)
            cmp_sem_release(&p->sem[1]);
    }
    return 0;
}

Test(under_load, semaphore_ping_pong, .timeout = 60)
{
    exchange(sem_side);
}

Test(under_load, semaphore_ping_pong_without_spinning, .timeout = 60)
{
    setenv("CMP_SPIN", "0", 1); /* read at this process's first wait */
    exchange(sem_side);
}

static int event_side(struct pair *p, int child)
{
    struct timespec d = test_deadline(BOUND);
    for (int i = 0; i < ROUNDS; i++) {
        if (!child)
            cmp_event_set(&p->event[0]);
        if (cmp_event_wait(&p->event[!child], &d) != 0)
            return -1;
        cmp_event_clear(&p->event[!child]);
        if (child)
            cmp_event_set(&p->event[1]);
    }
    return 0;
}

Test(under_load, event_ping_pong, .timeout = 60)
{
    exchange(event_side);
}

/* turn: 1 = the child's, 2 = the parent's. morph: notify as the lock's
 * holder (cmp_cond_notify_lock), moving the waiter to the lock. */
static int cond_exchange(struct pair *p, int child, int morph)
{
    uint32_t mine = child ? 1 : 2, other = child ? 2 : 1;
    struct timespec d = test_deadline(BOUND);
    if (cmp_lock_acquire(&p->lock, &d) != 0)
        return -1;
    for (int i = 0; i < ROUNDS; i++) {
        while (p->turn != mine)
            if (cmp_cond_wait_lock(&p->cond, &p->lock, &d) == -ETIMEDOUT)
                return -1;
        p->turn = other;
        if (morph)
            cmp_cond_notify_lock(&p->cond, &p->lock, 1);
        else
            cmp_cond_notify(&p->cond, 1);
    }
    cmp_lock_release(&p->lock);
    return 0;
}

static int cond_side(struct pair *p, int child)
{
    return cond_exchange(p, child, 0);
}

static int cond_morph_side(struct pair *p, int child)
{
    return cond_exchange(p, child, 1);
}

Test(under_load, condition_ping_pong, .timeout = 60)
{
    exchange(cond_side);
}

Test(under_load, condition_ping_pong_notify_lock, .timeout = 60)
{
    exchange(cond_morph_side);
}

static int lock_side(struct pair *p, int child)
{
    (void)child;
    struct timespec d = test_deadline(BOUND);
    for (int i = 0; i < ROUNDS * 10; i++) {
        if (cmp_lock_acquire(&p->lock, &d) != 0)
            return -1;
        p->counter++;
        cmp_lock_release(&p->lock);
    }
    return 0;
}

Test(under_load, lock_contended, .timeout = 60)
{
    struct pair *p = exchange(lock_side);
    cr_assert_eq(p->counter, 2u * ROUNDS * 10);
}

static int barrier_side(struct pair *p, int child)
{
    (void)child;
    struct timespec d = test_deadline(BOUND);
    for (int i = 0; i < ROUNDS / 4; i++)
        if (cmp_barrier_wait(&p->barrier, &d, NULL, NULL) < 0)
            return -1;
    return 0;
}

Test(under_load, barrier_rounds, .timeout = 60)
{
    exchange(barrier_side);
}

/* The ring both ways: requests one way, replies the other. */
struct rings {
    cmp_ring_t *req, *rep;
};

static char sink_buf[64];

static void *sink(void *arg, size_t len)
{
    (void)arg;
    return len <= sizeof sink_buf ? sink_buf : NULL;
}

Test(under_load, ring_request_reply, .timeout = 60)
{
    size_t cap = 64 * 1024;
    struct rings r = {test_shared_map(cmp_ring_footprint(cap)),
                      test_shared_map(cmp_ring_footprint(cap))};
    cr_assert_eq(cmp_ring_init(r.req, cap, 0), 0);
    cr_assert_eq(cmp_ring_init(r.rep, cap, 0), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        struct timespec d = test_deadline(BOUND);
        for (int i = 0; i < ROUNDS; i++) {
            if (cmp_ring_get(r.req, sink, NULL, &d) < 0)
                _exit(2);
            if (cmp_ring_put(r.rep, "pong", 4, &d) != 0)
                _exit(3);
        }
        _exit(0);
    }
    struct timespec d = test_deadline(BOUND);
    for (int i = 0; i < ROUNDS; i++) {
        cr_assert_eq(cmp_ring_put(r.req, "ping", 4, &d), 0);
        cr_assert(cmp_ring_get(r.rep, sink, NULL, &d) >= 0, "round %d", i);
    }
    cr_assert_eq(test_join(pid, BOUND), 0);
}

/* A stream through a small ring: the producer waits for space as often as
 * the consumer for data. */
Test(under_load, ring_stream_small_ring, .timeout = 60)
{
    size_t cap = CMP_RING_MIN_CAPACITY * 16;
    cmp_ring_t *ring = test_shared_map(cmp_ring_footprint(cap));
    cr_assert_eq(cmp_ring_init(ring, cap, 0), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        struct timespec d = test_deadline(BOUND);
        for (int i = 0; i < ROUNDS * 10; i++)
            if (cmp_ring_put(ring, &i, sizeof i, &d) != 0)
                _exit(2);
        _exit(0);
    }
    struct timespec d = test_deadline(BOUND);
    for (int i = 0; i < ROUNDS * 10; i++) {
        int got = -1;
        cr_assert(cmp_ring_get(ring, sink, NULL, &d) >= 0, "message %d", i);
        memcpy(&got, sink_buf, sizeof got);
        cr_assert_eq(got, i);
    }
    cr_assert_eq(test_join(pid, BOUND), 0);
}
