/*
 * Worker pool: forked workers that run a C function on byte tasks.
 *
 * Shared memory (one anonymous MAP_SHARED block, inherited by every
 * worker): the result queue, then for each worker slot its `running` word
 * and its inbox queue. Everything else is the pool process's own.
 *
 * Why an inbox per worker rather than one queue all workers take from:
 * exact accounting when a worker dies. The pool process is the only one
 * that dispatches to a worker, so it knows the tasks each worker holds, in
 * order (`fifo`). A worker takes one task at a time and writes its id to
 * `running` before it calls the task function, and a result travels back
 * after the function returns. When a worker dies, the pool first consumes
 * every result the worker sent (the count of results queued when the death
 * was seen, `results_before`: the queue is FIFO and the dead send no more),
 * then looks at the oldest task it still holds: if `running` names it, or
 * it is no longer in the inbox, the worker took it and it is lost
 * (CMP_POOL_LOST); the tasks still in the inbox never started and go to
 * other workers. With one shared queue, a worker killed between taking a
 * task and recording it would lose that task without a trace.
 *
 * Message layouts. Inbox: [u64 id][task bytes]; id 0 asks the worker to
 * exit. Result queue: [result bytes][trailer], the trailer last so that
 * the bytes land at the start of the caller's buffer with no copy.
 *
 * Dispatch: a task goes to the live worker with the fewest tasks held
 * (below hold_limit: depth + 1, more for tasks of a few microseconds; and
 * below what max_tasks lets it take), else to the pending list, which
 * cmp_pool_next() drains as results free room.
 *
 * Outcomes the pool makes itself (LOST, BROKEN, CANCELLED) wait in
 * `made`, and come out of cmp_pool_next() before any result.
 */
#include "atomic.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <unistd.h>

#define RESULT_RING ((size_t)1 << 20)
#define INBOX_RING ((size_t)256 << 10)
#define DEFAULT_DEPTH 2u
#define MAX_WORKERS 4096u
#define ALIGN 64u
#define KILL_GRACE_NS 100000000L
#define RETIRE_CHECK_NS 500000L
/* Short tasks: at most this many queued at a worker, holding at most
 * QUEUED_WORK_NS of work (see hold_limit). */
#define SHORT_TASK_DEPTH 16u
#define QUEUED_WORK_NS 50000u

/* KIND_WAKE: from the pool's own process (close, terminate), so that a
 * cmp_pool_next() already waiting looks at the state again at once. */
enum { KIND_RESULT = 1, KIND_INIT_FAILED = 2, KIND_WAKE = 3 };

struct trailer {
    uint64_t id;
    uint32_t worker;
    uint16_t kind;
    uint16_t failed;
};
_Static_assert(sizeof(struct trailer) == CMP_POOL_TRAILER, "trailer size");

struct cmp_pool_result {
    char *buf;
    size_t len, cap;
    /* the result is ext_len bytes at ext, memory of cmp__pool_room's (one
     * extend of an empty result; len is 0 then), until it grows or clears */
    char *ext;
    size_t ext_len;
    /* in the result, not a global: a binding may hold its own copy of
     * libcmp, whose extend is then not the copy whose worker set it */
    const cmp__pool_room_t *room;
};

void cmp__pool_result_room(cmp_pool_result_t *r, const cmp__pool_room_t *room)
{
    r->room = room;
}

/* The result back in buf (it grows beyond what room gave). 0 or -ENOMEM. */
static int settle(cmp_pool_result_t *r)
{
    char *b = cmp__grow(r->buf, &r->cap, r->ext_len);
    if (!b)
        return -ENOMEM;
    memcpy(b, r->ext, r->ext_len);
    r->buf = b;
    r->len = r->ext_len;
    r->room->put(r->ext);
    r->ext = NULL;
    return 0;
}

/* Shared, per worker slot. */
struct slot_shared {
    uint64_t running; /* the task the worker runs or ran last; written
                         (release) before the task function is called */
};

struct worker {
    cmp_process_t proc;
    int live;       /* started, not yet seen dead */
    int stopping;   /* told to exit */
    uint64_t taken; /* tasks dispatched to this process */
    uint64_t *fifo; /* ids held, oldest first (ring of depth + 1) */
    unsigned fifo_head, nfifo;
    uint64_t results_before; /* dead: results to consume before handling */
    int dead_pending;        /* dead, not yet handled */
    int respawn;             /* handled, a replacement is due */
    int retiring;            /* sent its last result (max_tasks): exiting */
    int busy_since;          /* held more tasks at its last result */
    int64_t last_result_ns;  /* when its last result came in */
    struct slot_shared *slot;
    cmp_queue_t *inbox;
};

struct item {
    struct item *next;
    uint64_t id;
    int status, cause;
    pid_t pid;
    size_t len;
    /* a task submitted by reference (cmp_pool_submitv_ref): data holds
     * iovcnt iovecs pointing at the caller's bytes, given back with
     * release(release_arg); iovcnt 0: data holds the bytes */
    int iovcnt;
    void (*release)(void *);
    void *release_arg;
    _Alignas(struct iovec) char data[];
};

/* Releases due once the pool's mutex is let go (see flush_releases). */
struct release {
    void (*fn)(void *);
    void *arg;
};

struct list {
    struct item *head, *tail;
    uint64_t n;
};

enum { RUNNING, CLOSED, TERMINATED, BROKEN };

struct cmp_pool {
    cmp_pool_options_t opt;
    unsigned n;
    char *shared;
    size_t shared_len;
    int shared_fd; /* the memfd of shared */
    cmp_queue_t *results;
    struct worker *w;
    pthread_mutex_t mu; /* everything below, and dispatching */
    int state;
    uint64_t last_id;
    uint64_t outstanding; /* submitted, not yet out of next() */
    struct list pending;  /* tasks waiting for room at a worker */
    struct list made;     /* outcomes made by the pool, for next() */
    char *init_error;     /* what a failed initializer wrote */
    size_t init_error_len;
    pid_t owner;              /* the pool's process (a forked child must not use it) */
    int64_t next_check_ns;    /* when next() next looks for dead workers */
    unsigned dying;           /* workers seen dead, not yet handled (dead_pending) */
    unsigned respawns_due;    /* workers handled, not yet replaced (respawn) */
    unsigned retiring;        /* workers exiting after max_tasks, not yet seen dead */
    uint64_t task_ns;         /* a task's run time, averaged (0: none timed yet) */
    struct release *releases; /* by-reference tasks the pool is done with */
    size_t nreleases, cap_releases;
};

/* ---- small helpers ------------------------------------------------------ */

static void list_push(struct list *l, struct item *it)
{
    it->next = NULL;
    if (l->tail)
        l->tail->next = it;
    else
        l->head = it;
    l->tail = it;
    l->n++;
}

static void list_push_front(struct list *l, struct item *it)
{
    it->next = l->head;
    l->head = it;
    if (!l->tail)
        l->tail = it;
    l->n++;
}

static struct item *list_pop(struct list *l)
{
    struct item *it = l->head;
    if (it) {
        l->head = it->next;
        if (!l->head)
            l->tail = NULL;
        l->n--;
    }
    return it;
}

/* A list item with room for len bytes, copied from data unless NULL. */
static struct item *item_new(uint64_t id, const void *data, size_t len)
{
    struct item *it = malloc(sizeof *it + (len ? len : 1));
    if (!it)
        return NULL;
    it->id = id;
    it->status = CMP_POOL_DONE;
    it->cause = 0;
    it->pid = 0;
    it->len = len;
    it->iovcnt = 0;
    it->release = NULL;
    it->release_arg = NULL;
    if (len && data)
        memcpy(it->data, data, len);
    return it;
}

/* Mutex held: frees a pending item; a by-reference task's release is due
 * once the mutex is let go (flush_releases), since it may take locks of
 * the caller's (a binding's interpreter lock) that a thread waiting for
 * this mutex holds. */
static void item_free(cmp_pool_t *p, struct item *it)
{
    if (it->release) {
        if (p->nreleases == p->cap_releases) {
            size_t cap = p->cap_releases ? 2 * p->cap_releases : 8;
            struct release *grown = realloc(p->releases, cap * sizeof *grown);
            if (!grown)
                abort(); /* a few bytes; the caller's bytes must be given back */
            p->releases = grown;
            p->cap_releases = cap;
        }
        p->releases[p->nreleases++] = (struct release){it->release, it->release_arg};
    }
    free(it);
}

/* Mutex not held: runs the releases item_free made due. */
static void flush_releases(cmp_pool_t *p)
{
    if (!__atomic_load_n(&p->nreleases, __ATOMIC_RELAXED))
        return;
    pthread_mutex_lock(&p->mu);
    struct release *due = p->releases;
    size_t n = p->nreleases;
    p->releases = NULL;
    p->nreleases = p->cap_releases = 0;
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < n; i++)
        due[i].fn(due[i].arg);
    free(due);
}

void *cmp_pool_result_extend(cmp_pool_result_t *r, size_t len)
{
    if (r->ext && settle(r) < 0)
        return NULL;
    if (!r->len && len && r->room) {
        char *room = r->room->get(len);
        if (room) {
            r->ext = room;
            r->ext_len = len;
            return room;
        }
    }
    if (len > SIZE_MAX - r->len)
        return NULL;
    char *b = cmp__grow(r->buf, &r->cap, r->len + len);
    if (!b)
        return NULL;
    r->buf = b;
    r->len += len;
    return r->buf + r->len - len;
}

void cmp_pool_result_clear(cmp_pool_result_t *r)
{
    if (r->ext)
        r->room->put(r->ext);
    r->ext = NULL;
    r->len = 0;
}

const char *cmp__pool_result_bytes(const cmp_pool_result_t *r, size_t *len)
{
    *len = r->ext ? r->ext_len : r->len;
    return r->ext ? r->ext : r->buf;
}

void cmp__pool_result_detach(cmp_pool_result_t *r)
{
    r->ext = NULL;
    r->len = 0;
}

static size_t round_up(size_t n)
{
    return (n + ALIGN - 1) & ~(size_t)(ALIGN - 1);
}

static size_t slot_bytes(void)
{
    return round_up(sizeof(struct slot_shared)) + round_up(cmp_queue_footprint(INBOX_RING));
}

static unsigned cpus_allowed(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return (unsigned)n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

/* The size of a worker's ring of held ids: the most it may ever hold. */
static unsigned fifo_cap(const cmp_pool_t *p)
{
    unsigned most = p->opt.depth > SHORT_TASK_DEPTH ? p->opt.depth : SHORT_TASK_DEPTH;
    return most + 1;
}

/* How many tasks a worker may hold now: depth + 1, or more when tasks are
 * short (a few microseconds: their results then come back in batches,
 * and a worker with only depth + 1 of them runs dry while the pool's
 * process reads a batch), so that the tasks queued at a worker stay
 * within QUEUED_WORK_NS of work; a long task keeps at most depth queued
 * behind it, away from the other workers. */
static unsigned hold_limit(const cmp_pool_t *p)
{
    uint64_t fit = p->task_ns ? QUEUED_WORK_NS / p->task_ns : 0;
    unsigned depth = fit > SHORT_TASK_DEPTH ? SHORT_TASK_DEPTH : (unsigned)fit;
    return (depth > p->opt.depth ? depth : p->opt.depth) + 1;
}

static void fifo_push(cmp_pool_t *p, struct worker *w, uint64_t id)
{
    w->fifo[(w->fifo_head + w->nfifo) % fifo_cap(p)] = id;
    w->nfifo++;
}

static uint64_t fifo_pop(cmp_pool_t *p, struct worker *w)
{
    uint64_t id = w->fifo[w->fifo_head];
    w->fifo_head = (w->fifo_head + 1) % fifo_cap(p);
    w->nfifo--;
    return id;
}

/* A result of w came in: when w held more tasks at its previous result
 * (it ran without a pause since), the time between the two is one task's
 * run, averaged into task_ns. */
static void time_task(cmp_pool_t *p, struct worker *w)
{
    int64_t now = cmp__now_ns(CLOCK_MONOTONIC);
    if (w->busy_since && now > w->last_result_ns) {
        uint64_t took = (uint64_t)(now - w->last_result_ns);
        p->task_ns = p->task_ns ? (7 * p->task_ns + took) / 8 : took;
    }
    w->last_result_ns = now;
    w->busy_since = w->nfifo > 0;
}

/* ---- the worker --------------------------------------------------------- */

struct inbox_buf {
    char *buf;
    size_t cap;
    /* where the last message went: buf, or memory of opt.task_alloc's */
    char *data;
    const cmp_pool_options_t *opt; /* NULL: always buf */
};

static void *inbox_alloc(void *arg, size_t len)
{
    struct inbox_buf *b = arg;
    if (b->opt && b->opt->task_alloc && len >= CMP_POOL_OWN_TASK_MIN) {
        b->data = b->opt->task_alloc(b->opt->arg, len);
        if (b->data)
            return b->data;
    }
    if (len > b->cap) {
        char *n = realloc(b->buf, len);
        if (!n)
            return NULL;
        b->buf = n;
        b->cap = len;
    }
    b->data = b->buf;
    return b->buf ? (void *)b->buf : (void *)b;
}

static int send_result(cmp_pool_t *p, unsigned index, uint64_t id, int kind, int failed,
                       const cmp_pool_result_t *r)
{
    struct trailer t = {id, index, (uint16_t)kind, (uint16_t)(failed != 0)};
    size_t len;
    const char *bytes = cmp__pool_result_bytes(r, &len);
    struct iovec iov[2] = {{(void *)bytes, len}, {&t, sizeof t}};
    int rc;
    while ((rc = cmp_queue_putv(p->results, iov, 2, NULL)) == -EINTR)
        ;
    return rc;
}

struct worker_start {
    cmp_pool_t *pool;
    unsigned index;
};

/* The worker's life: its initializer, then tasks until told to exit or
 * max_tasks are done. The return value is its exit status. */
static int worker_loop(cmp_pool_t *p, unsigned index)
{
    struct worker *w = &p->w[index];
    cmp_pool_result_t r = {0};
    if (p->opt.init && p->opt.init(p->opt.arg, &r) != 0) {
        send_result(p, index, 0, KIND_INIT_FAILED, 1, &r);
        return 1;
    }
    struct inbox_buf in = {NULL, 0, NULL, &p->opt};
    for (uint64_t done = 0; p->opt.max_tasks == 0 || done < p->opt.max_tasks; done++) {
        if (p->opt.wait_hook)
            p->opt.wait_hook(p->opt.arg, 1);
        int rc;
        while ((rc = cmp_queue_get(w->inbox, inbox_alloc, &in, NULL)) == -EINTR ||
               rc == -ECONNABORTED)
            ;
        if (p->opt.wait_hook)
            p->opt.wait_hook(p->opt.arg, 0);
        if (rc < 0)
            return 2;
        uint64_t id;
        memcpy(&id, in.data, sizeof id);
        if (id == 0)
            return 0; /* asked to exit */
        /* release: the pool, seeing this after our death, knows we took
         * the task (and may have run part of it) */
        cmp__store64_release(&w->slot->running, id);
        size_t len;
        memcpy(&len, in.data + sizeof id, sizeof len);
        cmp_pool_result_clear(&r);
        int failed = p->opt.task(p->opt.arg, in.data + 2 * sizeof id, len, &r);
        if (send_result(p, index, id, KIND_RESULT, failed, &r) < 0)
            return 3;
        if (failed == CMP_POOL_TASK_FAILED_EXIT)
            return 0; /* the pool replaces this worker */
    }
    return 0;
}

/* The worker's end, forked or started on its own: its exit status. */
static int worker_exit(const cmp_pool_t *p, int status)
{
    if (p->opt.exit_hook)
        p->opt.exit_hook(p->opt.arg);
    return status;
}

static int worker_main(void *arg)
{
    const struct worker_start *ws = arg;
    cmp_pool_t *p = ws->pool;
    unsigned index = ws->index;
    if (p->opt.fork_hook)
        p->opt.fork_hook(p->opt.arg, CMP_POOL_FORK_CHILD);
    /* The other workers' descriptors are not ours to hold. */
    for (unsigned i = 0; i < p->n; i++)
        if (i != index && p->w[i].proc.pidfd >= 0)
            cmp_process_close(&p->w[i].proc);
    return worker_exit(p, worker_loop(p, index));
}

/* Where the shared parts are in the region at base: the results queue,
 * then each worker's slot and inbox. */
static void lay_out(cmp_pool_t *p, char *base)
{
    size_t results_bytes = round_up(cmp_queue_footprint(RESULT_RING));
    p->results = (cmp_queue_t *)(void *)base;
    for (unsigned i = 0; i < p->n; i++) {
        char *at = base + results_bytes + (size_t)i * slot_bytes();
        p->w[i].slot = (struct slot_shared *)(void *)at;
        p->w[i].inbox = (cmp_queue_t *)(void *)(at + round_up(sizeof(struct slot_shared)));
    }
}

int cmp_pool_shared_fd(const cmp_pool_t *p, size_t *len)
{
    *len = p->shared_len;
    return p->shared_fd;
}

int cmp_pool_worker_fds(const cmp_pool_t *p, unsigned index, int *fds, int max)
{
    int all[2] = {cmp_ring_spill_fd(&p->results->ring),
                  index < p->n ? cmp_ring_spill_fd(&p->w[index].inbox->ring) : -1};
    int n = 0;
    for (int i = 0; i < 2; i++) {
        if (all[i] < 0)
            continue;
        if (n < max)
            fds[n] = all[i];
        n++;
    }
    return n;
}

int cmp_pool_worker_serve(int fd, size_t len, unsigned workers, unsigned index,
                          const cmp_pool_options_t *opt)
{
    if (!opt || !opt->task || index >= workers || workers > MAX_WORKERS)
        return -EINVAL;
    /* Like a forked worker (CMP_PROCESS_DIE_WITH_PARENT): gone with the
     * process that started it (the pool's, or a fork server that lives
     * as long as the pool's process), never left waiting for tasks that
     * cannot come. If it is gone already, we have been reparented. */
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent || parent == 1)
        return -ESRCH;
    cmp_pool_t p;
    memset(&p, 0, sizeof p);
    p.opt = *opt;
    p.n = workers;
    size_t results_bytes = round_up(cmp_queue_footprint(RESULT_RING));
    if (len != results_bytes + (size_t)workers * slot_bytes())
        return -EINVAL; /* not a pool of this build, or not of that size */
    p.w = calloc(workers, sizeof *p.w);
    if (!p.w)
        return -ENOMEM;
    char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        free(p.w);
        return -errno;
    }
    lay_out(&p, base);
    int code = worker_exit(&p, worker_loop(&p, index));
    munmap(base, len);
    free(p.w);
    return code;
}

/* ---- starting and stopping workers (pool process, mutex held) ---------- */

/* Forks the worker of slot index. Called without the mutex once the pool
 * is shared between threads (a binding's fork hook may have to wait for
 * its interpreter lock, which a submitting thread holds while it waits
 * for the mutex); the slot is not live meanwhile, so nobody else touches
 * it. */
static int spawn(cmp_pool_t *p, unsigned index)
{
    struct worker *w = &p->w[index];
    w->stopping = 0;
    w->taken = 0;
    w->retiring = 0;
    w->busy_since = 0;
    w->nfifo = 0;
    w->fifo_head = 0;
    w->dead_pending = 0;
    cmp__store64_release(&w->slot->running, 0);
    cmp_process_t proc;
    int rc;
    if (p->opt.start_worker) {
        rc = p->opt.start_worker(p->opt.arg, p, index, &proc);
    } else {
        struct worker_start ws = {p, index};
        if (p->opt.fork_hook)
            p->opt.fork_hook(p->opt.arg, CMP_POOL_FORK_BEFORE);
        rc = cmp_process_start(&proc, worker_main, &ws, CMP_PROCESS_DIE_WITH_PARENT);
        if (p->opt.fork_hook)
            p->opt.fork_hook(p->opt.arg, CMP_POOL_FORK_PARENT);
    }
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&p->mu);
    w->proc = proc;
    w->live = 1;
    pthread_mutex_unlock(&p->mu);
    return 0;
}

static int put_inboxv(struct worker *w, uint64_t id, const struct iovec *task, int iovcnt,
                      size_t len)
{
    uint64_t n = len;
    struct iovec iov[2 + CMP_POOL_IOV_MAX];
    iov[0] = (struct iovec){&id, sizeof id};
    iov[1] = (struct iovec){&n, sizeof n};
    for (int i = 0; i < iovcnt; i++)
        iov[2 + i] = task[i];
    int rc;
    while ((rc = cmp_queue_putv(w->inbox, iov, 2 + iovcnt, NULL)) == -EINTR)
        ;
    return rc;
}

static int put_inbox(struct worker *w, uint64_t id, const void *data, size_t len)
{
    struct iovec iov = {(void *)data, len};
    return put_inboxv(w, id, &iov, 1, len);
}

static void stop_worker(struct worker *w)
{
    if (w->live && !w->stopping && put_inbox(w, 0, NULL, 0) == 0)
        w->stopping = 1;
}

/* The worker for the next task: fewest held, with room; NULL when none. */
/* The worker to take a task of len bytes: the least loaded with room. A
 * task that does not fit its inbox's ring goes only to a worker that holds
 * nothing (it is waiting, so the bytes stream to it as they are written)
 * rather than to the inbox's spill file, a second copy into pages the
 * kernel must first find and clear. */
static struct worker *pick(cmp_pool_t *p, size_t len)
{
    struct worker *best = NULL;
    unsigned limit = len > INBOX_RING / 2 ? 1 : hold_limit(p);
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->w[i];
        if (!w->live || w->stopping || w->dead_pending || w->nfifo >= limit)
            continue;
        if (p->opt.max_tasks && w->taken >= p->opt.max_tasks)
            continue;
        if (!best || w->nfifo < best->nfifo)
            best = w;
    }
    return best;
}

static int dispatchv(cmp_pool_t *p, struct worker *w, uint64_t id, const struct iovec *iov,
                     int iovcnt, size_t len)
{
    int rc = put_inboxv(w, id, iov, iovcnt, len);
    if (rc < 0)
        return rc;
    fifo_push(p, w, id);
    w->taken++;
    return 0;
}

/* A pending item to worker w (mutex held); the item is then freed. */
static int dispatch_item(cmp_pool_t *p, struct worker *w, struct item *it)
{
    struct iovec one = {it->data, it->len};
    const struct iovec *iov = it->iovcnt ? (const struct iovec *)(void *)it->data : &one;
    int rc = dispatchv(p, w, it->id, iov, it->iovcnt ? it->iovcnt : 1, it->len);
    if (rc == 0)
        item_free(p, it);
    return rc;
}

/* Moves pending tasks to workers with room; once the pool is closed and
 * nothing is pending, tells every worker to exit after what it holds. */
static void pump(cmp_pool_t *p)
{
    while (p->pending.head) {
        struct worker *w = pick(p, p->pending.head->len);
        if (!w)
            break;
        struct item *it = list_pop(&p->pending);
        if (dispatch_item(p, w, it) < 0) {
            list_push_front(&p->pending, it);
            break;
        }
    }
    if (p->state == CLOSED && !p->pending.head)
        for (unsigned i = 0; i < p->n; i++)
            if (!p->w[i].dead_pending)
                stop_worker(&p->w[i]);
}

static void make_outcome(cmp_pool_t *p, uint64_t id, int status, int cause, pid_t pid,
                         const void *data, size_t len)
{
    struct item *it = item_new(id, data, len);
    if (!it)
        abort(); /* a task's outcome must never vanish; a few bytes */
    it->status = status;
    it->cause = cause;
    it->pid = pid;
    list_push(&p->made, it);
}

/* Every task still held or pending ends with status (and the init error's
 * bytes for BROKEN). */
static void fail_everything(cmp_pool_t *p, int status)
{
    const void *data = status == CMP_POOL_BROKEN ? p->init_error : NULL;
    size_t len = status == CMP_POOL_BROKEN ? p->init_error_len : 0;
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->w[i];
        while (w->nfifo)
            make_outcome(p, fifo_pop(p, w), status, 0, 0, data, len);
    }
    struct item *it;
    while ((it = list_pop(&p->pending))) {
        make_outcome(p, it->id, status, 0, 0, data, len);
        item_free(p, it);
    }
}

/* A dead worker whose results have all been consumed: decide what it
 * lost, requeue what it never started, and replace it. */
static void handle_death(cmp_pool_t *p, struct worker *w)
{
    w->dead_pending = 0;
    p->dying--;
    w->live = 0;
    int code = 0;
    cmp_process_exitcode(&w->proc, &code);
    pid_t pid = w->proc.pid;
    cmp_process_close(&w->proc);

    /* What is still in the inbox never started. */
    struct list unstarted = {NULL, NULL, 0};
    struct inbox_buf b = {NULL, 0, NULL, NULL};
    for (;;) {
        int rc = cmp_queue_get(w->inbox, inbox_alloc, &b, CMP_NOWAIT);
        if (rc == -ECONNABORTED || rc == -EINTR)
            continue;
        if (rc < 0)
            break;
        uint64_t id, len;
        memcpy(&id, b.buf, sizeof id);
        memcpy(&len, b.buf + sizeof id, sizeof len);
        if (id == 0)
            continue;
        struct item *it = item_new(id, b.buf + 2 * sizeof id, (size_t)len);
        if (!it)
            abort();
        list_push(&unstarted, it);
    }
    free(b.buf);

    /* The held ids, oldest first: those not found in the inbox were taken
     * (only the oldest can be: one at a time), and are lost. */
    uint64_t running = cmp__load64_acquire(&w->slot->running);
    while (w->nfifo) {
        uint64_t id = fifo_pop(p, w);
        int found = 0;
        for (struct item *it = unstarted.head; it; it = it->next)
            found |= it->id == id;
        if (!found || id == running)
            make_outcome(p, id, CMP_POOL_LOST, code, pid, NULL, 0);
    }
    /* Unstarted tasks go first, ahead of newer pending ones. */
    struct item *it;
    struct list rest = p->pending;
    p->pending = unstarted;
    while ((it = list_pop(&rest)))
        list_push(&p->pending, it);

    if (p->state == BROKEN || p->state == TERMINATED)
        return;
    if (p->state == CLOSED && !p->pending.head)
        return;     /* nothing left for a replacement to do */
    w->respawn = 1; /* by respawn(), without the mutex */
    p->respawns_due++;
}

/* Starts the replacements handle_death asked for (mutex not held). */
static void respawn(cmp_pool_t *p)
{
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->w[i];
        pthread_mutex_lock(&p->mu);
        int want = w->respawn && (p->state == RUNNING || p->state == CLOSED);
        if (w->respawn)
            p->respawns_due--;
        w->respawn = 0;
        pthread_mutex_unlock(&p->mu);
        if (!want)
            continue;
        int rc = spawn(p, i);
        pthread_mutex_lock(&p->mu);
        if (rc == 0 && p->state == TERMINATED) {
            cmp_process_kill(&w->proc); /* terminated while it started */
        } else if (rc < 0) {
            /* no replacement possible: go on with the others; with none
             * left the pending tasks would wait forever, so fail them */
            int any = 0;
            for (unsigned k = 0; k < p->n; k++)
                any |= p->w[k].live;
            if (!any)
                fail_everything(p, CMP_POOL_LOST);
        }
        pump(p);
        pthread_mutex_unlock(&p->mu);
    }
}

/* Notices dead workers (without blocking). */
static void check_workers(cmp_pool_t *p)
{
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->w[i];
        if (!w->live || w->dead_pending)
            continue;
        if (cmp_process_poll(&w->proc) == 1) {
            w->dead_pending = 1;
            p->dying++;
            if (w->retiring) {
                w->retiring = 0;
                p->retiring--;
            }
            w->results_before = cmp_queue_qsize(p->results);
        }
    }
}

static void handle_ready_deaths(cmp_pool_t *p)
{
    for (unsigned i = 0; i < p->n; i++)
        if (p->w[i].dead_pending && p->w[i].results_before == 0)
            handle_death(p, &p->w[i]);
    pump(p);
}

/* One result consumed: the dead workers' counts move on. */
static void count_consumed(cmp_pool_t *p)
{
    for (unsigned i = 0; i < p->n; i++)
        if (p->w[i].dead_pending && p->w[i].results_before > 0)
            p->w[i].results_before--;
}

/* ---- public ------------------------------------------------------------- */

int cmp_pool_create(cmp_pool_t **out, const cmp_pool_options_t *opt)
{
    if (!opt || !opt->task || opt->workers > MAX_WORKERS)
        return -EINVAL;
    cmp_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->opt = *opt;
    if (p->opt.depth == 0)
        p->opt.depth = DEFAULT_DEPTH;
    p->n = opt->workers ? opt->workers : cpus_allowed();
    p->owner = getpid();
    int rc = -ENOMEM;
    p->w = calloc(p->n, sizeof *p->w);
    if (!p->w)
        goto fail_free;
    size_t results_bytes = round_up(cmp_queue_footprint(RESULT_RING));
    p->shared_len = results_bytes + (size_t)p->n * slot_bytes();
    /* a memfd, not anonymous memory: a worker that is a new program
     * (opt.start_worker) maps it from its fd */
    cmp_shm_t shm;
    if ((rc = cmp_shm_create(&shm, p->shared_len, "cmp-pool")) < 0) {
        p->shared = NULL;
        goto fail_free;
    }
    p->shared = shm.addr;
    p->shared_fd = shm.fd;
    lay_out(p, p->shared);
    if ((rc = cmp_queue_init(p->results, RESULT_RING, 0)) < 0)
        goto fail_unmap;
    unsigned inited = 0;
    for (; inited < p->n; inited++) {
        struct worker *w = &p->w[inited];
        w->proc.pidfd = -1;
        w->fifo = calloc(fifo_cap(p), sizeof *w->fifo);
        if (!w->fifo || (rc = cmp_queue_init(w->inbox, INBOX_RING, 0)) < 0) {
            free(w->fifo);
            rc = rc < 0 ? rc : -ENOMEM;
            goto fail_queues;
        }
    }
    pthread_mutex_init(&p->mu, NULL);
    for (unsigned i = 0; i < p->n; i++) {
        if ((rc = spawn(p, i)) < 0) {
            p->state = TERMINATED;
            for (unsigned k = 0; k < i; k++) {
                cmp_process_kill(&p->w[k].proc);
                cmp_process_join(&p->w[k].proc, NULL);
                cmp_process_close(&p->w[k].proc);
            }
            pthread_mutex_destroy(&p->mu);
            goto fail_queues;
        }
    }
    *out = p;
    return 0;

fail_queues:
    for (unsigned i = 0; i < inited; i++) {
        cmp_queue_detach(p->w[i].inbox);
        free(p->w[i].fifo);
    }
    cmp_queue_detach(p->results);
fail_unmap:
    munmap(p->shared, p->shared_len);
    close(p->shared_fd);
fail_free:
    free(p->w);
    free(p);
    return rc;
}

int cmp_pool_submit(cmp_pool_t *p, const void *task, size_t len, uint64_t *id)
{
    struct iovec iov = {(void *)task, len};
    return cmp_pool_submitv(p, &iov, 1, id);
}

/* A pending task's bytes: the pieces, gathered. */
static struct item *item_gather(uint64_t id, const struct iovec *iov, int iovcnt, size_t len)
{
    struct item *it = item_new(id, NULL, len);
    if (!it)
        return NULL;
    size_t off = 0;
    for (int i = 0; i < iovcnt; i++) {
        memcpy(it->data + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    return it;
}

/* Mutex held: queues task my, dispatched at once (*copied) or pending:
 * a copy of its bytes, or with release, the pieces' addresses. 0 or
 * -ENOMEM. */
static int enqueue(cmp_pool_t *p, uint64_t my, const struct iovec *iov, int iovcnt, size_t len,
                   void (*release)(void *), void *arg, int *copied)
{
    struct worker *w = p->pending.head ? NULL : pick(p, len);
    *copied = w && dispatchv(p, w, my, iov, iovcnt, len) == 0;
    if (*copied)
        return 0;
    struct item *it = release ? item_new(my, iov, (size_t)iovcnt * sizeof *iov)
                              : item_gather(my, iov, iovcnt, len);
    if (!it)
        return -ENOMEM;
    if (release) {
        it->iovcnt = iovcnt;
        it->len = len;
        it->release = release;
        it->release_arg = arg;
    }
    list_push(&p->pending, it);
    return 0;
}

static int submit_pieces(cmp_pool_t *p, const struct iovec *iov, int iovcnt, uint64_t *id,
                         void (*release)(void *), void *arg)
{
    if (iovcnt < 0 || iovcnt > CMP_POOL_IOV_MAX)
        return -EINVAL;
    size_t len = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len > SIZE_MAX - len)
            return -EINVAL;
        len += iov[i].iov_len;
    }
    pthread_mutex_lock(&p->mu);
    if (p->state != RUNNING) {
        pthread_mutex_unlock(&p->mu);
        return -EPIPE;
    }
    uint64_t my = p->last_id + 1;
    int copied = 0;
    int rc = enqueue(p, my, iov, iovcnt, len, release, arg, &copied);
    if (rc == 0) {
        p->last_id = my;
        p->outstanding++;
        if (id)
            *id = my;
    }
    pthread_mutex_unlock(&p->mu);
    if (release && copied)
        release(arg);
    return rc;
}

int cmp_pool_submitv(cmp_pool_t *p, const struct iovec *iov, int iovcnt, uint64_t *id)
{
    return submit_pieces(p, iov, iovcnt, id, NULL, NULL);
}

int cmp_pool_submitv_ref(cmp_pool_t *p, const struct iovec *iov, int iovcnt, uint64_t *id,
                         void (*release)(void *), void *arg)
{
    if (!release || iovcnt == 0)
        return -EINVAL;
    return submit_pieces(p, iov, iovcnt, id, release, arg);
}

long cmp_pool_submit_chunks(cmp_pool_t *p, const void *items, size_t item_size, size_t n,
                            size_t chunk, uint64_t *first_id)
{
    if (item_size == 0 || chunk == 0 || n > SIZE_MAX / item_size)
        return -EINVAL;
    size_t ntasks = n / chunk + (n % chunk != 0);
    /* every task made first, so that an error leaves nothing submitted */
    struct item **made = calloc(ntasks ? ntasks : 1, sizeof *made);
    if (!made)
        return -ENOMEM;
    const char *bytes = items;
    for (size_t t = 0; t < ntasks; t++) {
        size_t count = t + 1 < ntasks ? chunk : n - t * chunk;
        struct iovec iov = {(void *)(bytes + t * chunk * item_size), count * item_size};
        if (!(made[t] = item_gather(0, &iov, 1, iov.iov_len))) {
            while (t--)
                free(made[t]);
            free(made);
            return -ENOMEM;
        }
    }
    pthread_mutex_lock(&p->mu);
    if (p->state != RUNNING) {
        pthread_mutex_unlock(&p->mu);
        for (size_t t = 0; t < ntasks; t++)
            free(made[t]);
        free(made);
        return -EPIPE;
    }
    if (first_id)
        *first_id = p->last_id + 1;
    for (size_t t = 0; t < ntasks; t++) {
        struct item *it = made[t];
        it->id = ++p->last_id;
        p->outstanding++;
        struct worker *w = p->pending.head ? NULL : pick(p, it->len);
        struct iovec iov = {it->data, it->len};
        if (w && dispatchv(p, w, it->id, &iov, 1, it->len) == 0)
            free(it);
        else
            list_push(&p->pending, it); /* already a copy: no second one */
    }
    pthread_mutex_unlock(&p->mu);
    free(made);
    return (long)ntasks;
}

uint64_t cmp_pool_outstanding(cmp_pool_t *p)
{
    pthread_mutex_lock(&p->mu);
    uint64_t n = p->outstanding;
    pthread_mutex_unlock(&p->mu);
    return n;
}

unsigned cmp_pool_size(const cmp_pool_t *p)
{
    return p->n;
}

int cmp_pool_init_error(cmp_pool_t *p, const void **data, size_t *len)
{
    pthread_mutex_lock(&p->mu);
    int broken = p->state == BROKEN;
    *data = broken ? p->init_error : NULL;
    *len = broken ? p->init_error_len : 0;
    pthread_mutex_unlock(&p->mu);
    return broken;
}

unsigned cmp_pool_pids(cmp_pool_t *p, pid_t *pids, unsigned max)
{
    pthread_mutex_lock(&p->mu);
    unsigned k = 0;
    /* polled as cmp_pool_join does: a worker that has exited is not
     * running, even before cmp_pool_next has handled its death */
    for (unsigned i = 0; i < p->n && k < max; i++)
        if (p->w[i].live && !p->w[i].dead_pending && cmp_process_poll(&p->w[i].proc) == 0)
            pids[k++] = p->w[i].proc.pid;
    pthread_mutex_unlock(&p->mu);
    return k;
}

/* Hands a made outcome to the caller through alloc. */
static int give_made(struct item *it, cmp_pool_outcome_t *out, cmp_ring_alloc_fn alloc, void *arg)
{
    out->id = it->id;
    out->status = it->status;
    out->cause = it->cause;
    out->pid = it->pid;
    out->len = it->len;
    out->data = alloc(arg, it->len);
    int rc = 0;
    if (!out->data)
        rc = -ENOBUFS;
    else if (it->len)
        memcpy(out->data, it->data, it->len);
    free(it);
    return rc;
}

struct result_sink {
    cmp_ring_alloc_fn alloc;
    void *arg;
    void *buf;
    size_t len;
};

static void *result_alloc(void *arg, size_t len)
{
    struct result_sink *s = arg;
    s->len = len;
    s->buf = len >= CMP_POOL_TRAILER ? s->alloc(s->arg, len) : NULL;
    return s->buf;
}

static int next_outcome(cmp_pool_t *p, cmp_pool_outcome_t *out, cmp_ring_alloc_fn alloc, void *arg,
                        const struct timespec *deadline);

int cmp_pool_next(cmp_pool_t *p, cmp_pool_outcome_t *out, cmp_ring_alloc_fn alloc, void *arg,
                  const struct timespec *deadline)
{
    int rc = next_outcome(p, out, alloc, arg, deadline);
    flush_releases(p); /* of the by-reference tasks it dispatched */
    return rc;
}

static int next_outcome(cmp_pool_t *p, cmp_pool_outcome_t *out, cmp_ring_alloc_fn alloc, void *arg,
                        const struct timespec *deadline)
{
    for (;;) {
        pthread_mutex_lock(&p->mu);
        /* a waitid per worker: at most once per check interval (and after
         * each wait that timed out), not once per result */
        /* coarse: it only paces the checks for dead workers */
        int64_t now_ns = cmp__now_ns(CLOCK_MONOTONIC_COARSE);
        if (now_ns >= p->next_check_ns || p->retiring) {
            p->next_check_ns = now_ns + CMP_POOL_CHECK_NS;
            check_workers(p);
        }
        if (p->dying)
            handle_ready_deaths(p);
        if (p->respawns_due) {
            pthread_mutex_unlock(&p->mu);
            respawn(p);
            pthread_mutex_lock(&p->mu);
        }
        struct item *made = list_pop(&p->made);
        if (made) {
            p->outstanding--;
            pthread_mutex_unlock(&p->mu);
            return give_made(made, out, alloc, arg);
        }
        int finished = p->state != RUNNING && p->outstanding == 0;
        unsigned retiring = p->retiring;
        pthread_mutex_unlock(&p->mu);
        if (finished)
            return -ENOENT;

        struct timespec check;
        const struct timespec *until = deadline;
        if (deadline != CMP_NOWAIT) {
            /* a retiring worker exits within a millisecond: look again soon,
             * so that its replacement starts at once */
            cmp__deadline_in_ns(&check, retiring ? RETIRE_CHECK_NS : CMP_POOL_CHECK_NS);
            until = cmp__deadline_min(deadline, &check);
        }
        struct result_sink sink = {alloc, arg, NULL, 0};
        int rc = cmp_queue_get(p->results, result_alloc, &sink, until);
        if (rc == -ETIMEDOUT && until != deadline && !cmp__deadline_passed(deadline))
            continue; /* the check interval, not the caller's deadline */
        if (rc == -ECONNABORTED)
            continue;
        if (rc < 0)
            return rc; /* -ETIMEDOUT, -EINTR, -ENOBUFS, ... */

        struct trailer t;
        memcpy(&t, (char *)sink.buf + sink.len - sizeof t, sizeof t);
        pthread_mutex_lock(&p->mu);
        if (p->dying)
            count_consumed(p);
        if (t.kind == KIND_WAKE || t.worker >= p->n) {
            pthread_mutex_unlock(&p->mu);
            continue; /* a wake-up (or impossible: never deliver it) */
        }
        struct worker *w = &p->w[t.worker];
        if (t.kind == KIND_INIT_FAILED) {
            if (p->state != BROKEN) {
                p->init_error_len = sink.len - sizeof t;
                p->init_error = malloc(p->init_error_len ? p->init_error_len : 1);
                if (!p->init_error)
                    p->init_error_len = 0;
                else
                    memcpy(p->init_error, sink.buf, p->init_error_len);
                p->state = BROKEN;
                fail_everything(p, CMP_POOL_BROKEN);
                for (unsigned i = 0; i < p->n; i++)
                    stop_worker(&p->w[i]);
            }
            pthread_mutex_unlock(&p->mu);
            continue; /* the caller's buffer is theirs; the made outcomes follow */
        }
        if (!w->nfifo || w->fifo[w->fifo_head] != t.id) {
            pthread_mutex_unlock(&p->mu);
            continue; /* impossible: results come in dispatch order */
        }
        fifo_pop(p, w);
        time_task(p, w);
        p->outstanding--;
        if (p->opt.max_tasks && w->taken >= p->opt.max_tasks && !w->nfifo && !w->retiring) {
            w->retiring = 1; /* that was its last: it exits now */
            p->retiring++;
        }
        out->id = t.id;
        out->status = t.failed ? CMP_POOL_FAILED : CMP_POOL_DONE;
        out->cause = 0;
        out->pid = w->proc.pid;
        out->data = sink.buf;
        out->len = sink.len - sizeof t;
        pump(p);
        pthread_mutex_unlock(&p->mu);
        return 0;
    }
}

static void wake_next(cmp_pool_t *p);

static int compare_ids(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

long cmp_pool_cancel(cmp_pool_t *p, const uint64_t *ids, size_t n)
{
    if (n == 0)
        return 0;
    uint64_t *sorted = malloc(n * sizeof *sorted);
    if (!sorted)
        return -ENOMEM;
    memcpy(sorted, ids, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, compare_ids);
    long cancelled = 0;
    pthread_mutex_lock(&p->mu);
    struct list kept = {NULL, NULL, 0};
    struct item *it;
    while ((it = list_pop(&p->pending))) {
        if (!bsearch(&it->id, sorted, n, sizeof *sorted, compare_ids)) {
            list_push(&kept, it);
            continue;
        }
        make_outcome(p, it->id, CMP_POOL_CANCELLED, 0, 0, NULL, 0);
        item_free(p, it);
        cancelled++;
    }
    p->pending = kept;
    pthread_mutex_unlock(&p->mu);
    flush_releases(p);
    free(sorted);
    if (cancelled)
        wake_next(p); /* a next() already waiting hands them out */
    return cancelled;
}

static void wake_next(cmp_pool_t *p)
{
    cmp_pool_result_t none = {0};
    send_result(p, UINT32_MAX, 0, KIND_WAKE, 0, &none);
}

int cmp_pool_close(cmp_pool_t *p)
{
    pthread_mutex_lock(&p->mu);
    if (p->state == RUNNING) {
        p->state = CLOSED;
        pump(p);
    }
    pthread_mutex_unlock(&p->mu);
    flush_releases(p);
    wake_next(p);
    return 0;
}

int cmp_pool_terminate(cmp_pool_t *p)
{
    pthread_mutex_lock(&p->mu);
    if (p->state != TERMINATED) {
        p->state = TERMINATED;
        fail_everything(p, CMP_POOL_CANCELLED);
        for (unsigned i = 0; i < p->n; i++)
            if (p->w[i].live)
                cmp_process_terminate(&p->w[i].proc);
        struct timespec grace;
        cmp__deadline_in_ns(&grace, KILL_GRACE_NS);
        for (unsigned i = 0; i < p->n; i++) {
            struct worker *w = &p->w[i];
            if (w->live && cmp_process_join(&w->proc, &grace) == -ETIMEDOUT) {
                cmp_process_kill(&w->proc);
                cmp_process_join(&w->proc, NULL);
            }
        }
    }
    pthread_mutex_unlock(&p->mu);
    flush_releases(p);
    wake_next(p);
    return 0;
}

/* The longest one round of cmp_pool_join sleeps: a worker started after
 * the round began (a replacement) is waited for from the next round, and
 * a worker without a sentinel is polled for at this interval. */
#define JOIN_ROUND_NS 10000000L
#define JOIN_BLIND_NS 200000L

int cmp_pool_join(cmp_pool_t *p, const struct timespec *deadline)
{
    /* Sleeps on duplicates of the workers' sentinels, not on the workers'
     * own descriptors: cmp_pool_next may meanwhile reap a worker, close
     * its descriptor and start another. A duplicate still turns readable
     * when its process exits, which ends the round. */
    struct pollfd *fds = malloc(p->n * sizeof *fds);
    if (!fds)
        return -ENOMEM;
    int rc;
    for (;;) {
        unsigned nfds = 0;
        int running = 0, blind = 0;
        pthread_mutex_lock(&p->mu);
        if (p->state == RUNNING) {
            pthread_mutex_unlock(&p->mu);
            rc = -EINVAL;
            break;
        }
        for (unsigned i = 0; i < p->n; i++) {
            struct worker *w = &p->w[i];
            if (!w->live || cmp_process_poll(&w->proc) != 0)
                continue;
            running = 1;
            int fd = cmp_process_sentinel(&w->proc);
            fd = fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
            if (fd < 0)
                blind = 1;
            else
                fds[nfds++] = (struct pollfd){.fd = fd, .events = POLLIN};
        }
        pthread_mutex_unlock(&p->mu);
        if (!running) {
            rc = 0;
            break;
        }
        struct timespec round;
        cmp__deadline_in_ns(&round, blind ? JOIN_BLIND_NS : JOIN_ROUND_NS);
        const struct timespec *until = cmp__deadline_min(deadline, &round);
        struct timespec left;
        cmp__deadline_left(until, &left);
        int n = ppoll(fds, nfds, &left, NULL);
        int err = errno;
        for (unsigned i = 0; i < nfds; i++)
            close(fds[i].fd);
        if (n < 0 && err == EINTR) {
            rc = -EINTR;
            break;
        }
        if (n == 0 && until == deadline) {
            rc = -ETIMEDOUT;
            break;
        }
    }
    free(fds);
    return rc;
}

void cmp_pool_destroy(cmp_pool_t *p)
{
    if (!p)
        return;
    if (getpid() == p->owner) {
        for (unsigned i = 0; i < p->n; i++) {
            struct worker *w = &p->w[i];
            if (w->live) {
                cmp_process_kill(&w->proc);
                cmp_process_join(&w->proc, NULL);
                cmp_process_close(&w->proc);
            }
        }
    }
    for (unsigned i = 0; i < p->n; i++) {
        cmp_queue_detach(p->w[i].inbox);
        free(p->w[i].fifo);
    }
    cmp_queue_detach(p->results);
    munmap(p->shared, p->shared_len);
    close(p->shared_fd);
    struct item *it;
    while ((it = list_pop(&p->pending)))
        item_free(p, it);
    flush_releases(p);
    free(p->releases);
    while ((it = list_pop(&p->made)))
        free(it);
    free(p->init_error);
    pthread_mutex_destroy(&p->mu);
    free(p->w);
    free(p);
}
