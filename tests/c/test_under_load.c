/* Ping-pongs between two processes through each primitive, with a CPU hog
 * on every core: each must finish (no livelock, no lost wake-up) within a
 * generous bound. Speed is for bench/wake_bench.c; every wait here has a
 * deadline, so a lost wake-up fails the test instead of hanging it. */
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define ROUNDS 2000
#define BOUND 30.0 /* seconds for a whole exchange */

static pid_t hog_pids[64];
static int nhogs;

static void hogs_start(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    nhogs = n < 1 ? 1 : n > 64 ? 64 : (int)n;
    for (int i = 0; i < nhogs; i++) {
        hog_pids[i] = fork();
        cr_assert(hog_pids[i] >= 0);
        if (hog_pids[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (volatile unsigned long x = 0;; x++) {
            }
        }
    }
}

static void hogs_stop(void)
{
    for (int i = 0; i < nhogs; i++)
        kill(hog_pids[i], SIGKILL);
    for (int i = 0; i < nhogs; i++)
        waitpid(hog_pids[i], NULL, 0);
}

TestSuite(under_load, .init = hogs_start, .fini = hogs_stop);

struct pair {
    cmp_sem_t sem[2];
    cmp_event_t event[2];
    cmp_lock_t lock;
    cmp_cond_t cond;
    uint32_t turn;
    uint64_t counter;
    cmp_barrier_t barrier;
};

static struct pair *pair_new(void)
{
    struct pair *p = test_shared_map(sizeof *p);
    for (int i = 0; i < 2; i++) {
        cmp_sem_init(&p->sem[i], 0, CMP_SEM_VALUE_MAX);
        cmp_event_init(&p->event[i]);
    }
    cmp_lock_init(&p->lock);
    cmp_cond_init(&p->cond);
    cmp_barrier_init(&p->barrier, 2);
    return p;
}

/* Forks child(p), runs parent(p), and checks the child's exit. */
static void exchange(struct pair *p, void (*child)(struct pair *), void (*parent)(struct pair *))
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        child(p);
        _exit(0);
    }
    parent(p);
    cr_assert_eq(test_join(pid, BOUND), 0);
}

static void sem_child(struct pair *p)
{
    struct timespec d = test_deadline(BOUND);
    for (int i = 0; i < ROUNDS; i++) {
        if (cmp_sem_acquire(&p->sem[0], &d) != 0)
            _exit(2);
        cmp_sem_release(&p->sem[1]);
    }
}

static void sem_parent(struct pair *p)
{
    struct timespec d = test_deadline(BOUND);
    for (int i = 0; i < ROUNDS; i++) {
        cmp_sem_release(&p->sem[0]);
        cr_assert_eq(cmp_sem_acquire(&p->sem[1], &d), 0, "round %d", i);
    }
}

Test(under_load, semaphore_ping_pong, .timeout = 60)
{
    exchange(pair_new(), sem_child, sem_parent);
}

Test(under_load, semaphore_ping_pong_without_spinning, .timeout = 60)
{
    setenv("CMP_SPIN", "0", 1); /* read at this process's first wait */
    exchange(pair_new(), sem_child, sem_parent);
}

static void event_child(struct pair *p)
{
    struct timespec d = test_deadline(BOUND);
    for (int i = 0; i < ROUNDS; i++) {
        if (cmp_event_wait(&p->event[0], &d) != 0)
            _exit(2);
        cmp_event_clear(&p->event[0]);
        cmp_event_set(&p->event[1]);
    }
}

static void event_parent(struct pair *p)
{
    struct timespec d = test_deadline(BOUND);
    for (int i = 0; i < ROUNDS; i++) {
        cmp_event_set(&p->event[0]);
        cr_assert_eq(cmp_event_wait(&p->event[1], &d), 0, "round %d", i);
        cmp_event_clear(&p->event[1]);
    }
}

Test(under_load, event_ping_pong, .timeout = 60)
{
    exchange(pair_new(), event_child, event_parent);
}

/* turn: 1 = the child's, 2 = the parent's */
static int cond_take_turns(struct pair *p, uint32_t mine, uint32_t other)
{
    struct timespec d = test_deadline(BOUND);
    if (cmp_lock_acquire(&p->lock, &d) != 0)
        return -1;
    for (int i = 0; i < ROUNDS; i++) {
        while (p->turn != mine)
            if (cmp_cond_wait_lock(&p->cond, &p->lock, &d) == -ETIMEDOUT)
                return -1;
        p->turn = other;
        cmp_cond_notify(&p->cond, 1);
    }
    cmp_lock_release(&p->lock);
    return 0;
}

static void cond_child(struct pair *p)
{
    if (cond_take_turns(p, 1, 2) != 0)
        _exit(2);
}

static void cond_parent(struct pair *p)
{
    p->turn = 1;
    cr_assert_eq(cond_take_turns(p, 2, 1), 0);
}

Test(under_load, condition_ping_pong, .timeout = 60)
{
    exchange(pair_new(), cond_child, cond_parent);
}

static int lock_rounds(struct pair *p)
{
    struct timespec d = test_deadline(BOUND);
    for (int i = 0; i < ROUNDS * 10; i++) {
        if (cmp_lock_acquire(&p->lock, &d) != 0)
            return -1;
        p->counter++;
        cmp_lock_release(&p->lock);
    }
    return 0;
}

static void lock_child(struct pair *p)
{
    if (lock_rounds(p) != 0)
        _exit(2);
}

static void lock_parent(struct pair *p)
{
    cr_assert_eq(lock_rounds(p), 0);
}

Test(under_load, lock_contended, .timeout = 60)
{
    struct pair *p = pair_new();
    exchange(p, lock_child, lock_parent);
    cr_assert_eq(p->counter, 2u * ROUNDS * 10);
}

static int barrier_rounds(struct pair *p)
{
    struct timespec d = test_deadline(BOUND);
    for (int i = 0; i < ROUNDS / 4; i++)
        if (cmp_barrier_wait(&p->barrier, &d, NULL, NULL) < 0)
            return -1;
    return 0;
}

static void barrier_child(struct pair *p)
{
    if (barrier_rounds(p) != 0)
        _exit(2);
}

static void barrier_parent(struct pair *p)
{
    cr_assert_eq(barrier_rounds(p), 0);
}

Test(under_load, barrier_rounds, .timeout = 60)
{
    exchange(pair_new(), barrier_child, barrier_parent);
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
