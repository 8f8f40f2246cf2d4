/*
 * A serving rank: one local cmp_pool per pool rank 0 created, fed with the
 * tasks that arrive by MPI; outcomes go back in batches. One thread: it
 * polls MPI for tasks (MPI has no descriptor to sleep on) and, while its
 * pools have tasks, sleeps in cmp_pool_next for their results instead.
 */
#include "mpi_internal.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct spool {
    uint64_t id; /* rank 0's */
    cmp_pool_t *pool;
    cmp__mpi_map ids;    /* local task id -> rank 0's */
    cmp__mpi_map rids;   /* rank 0's task id -> local (for CANCEL) */
    cmp__mpi_map blocks; /* local task id -> its arena block + 1 */
    cmp__mpi_map toks;   /* local task id -> its token (framed pools) */
    /* framed: the pool's workers are forks of ours and run the functions
     * below, which take the frame off each task and find a big one's bytes
     * in the arena, then call inner's (what configure made) */
    int framed;
    cmp_pool_options_t inner;
    int32_t pids[CMP__MPI_PIDS_MAX]; /* as rank 0 last heard them */
    unsigned npids;
    int pids_due; /* a worker died: its successor's pid goes out at once */
    int ending;   /* rank 0 closed or terminated it: end it once drained */
    int finished; /* every task is out (a broken pool): only rank 0 ends it */
    struct spool *next;
} spool;

typedef struct {
    const cmp_mpi_serve_options_t *opt;
    spool *pools;
    cmp__mpi_batch out;
    char *scratch; /* small results land here; big ones get their own buffer */
    size_t scratch_cap;
    uint32_t tok;                        /* the last task's token: its big result's slot names it */
    unsigned long from_slots, from_ring; /* big results sent (CMP_MPI_STATS) */
    int failed;                          /* an MPI or memory error: the serve loop ends */
} server;

/* Big tasks' buffers, kept for the next ones: a fresh one of 8 MiB costs
 * its page faults each time (a map over big arrays sends many alike). The
 * local pool calls release from this thread, in its cmp_pool_* calls. */
#define SPARE_MAX 4
static struct {
    char *buf;
    size_t cap;
} spare[SPARE_MAX];

static char *big_buffer(size_t len)
{
    for (int i = 0; i < SPARE_MAX; i++)
        if (spare[i].buf && spare[i].cap >= len && spare[i].cap / 2 <= len) {
            char *b = spare[i].buf;
            spare[i].buf = NULL;
            return b;
        }
    /* its size first, so that release can tell how big it is */
    size_t *b = malloc(sizeof(size_t) * 2 + (len ? len : 1));
    if (!b)
        return NULL;
    b[0] = len;
    return (char *)(b + 2);
}

static void big_release(void *arg)
{
    char *buf = arg;
    size_t cap = ((size_t *)buf)[-2];
    for (int i = 0; i < SPARE_MAX; i++)
        if (!spare[i].buf) {
            spare[i].buf = buf;
            spare[i].cap = cap;
            return;
        }
    free((size_t *)buf - 2);
}

static void spares_free(void)
{
    for (int i = 0; i < SPARE_MAX; i++) {
        if (spare[i].buf)
            free((size_t *)spare[i].buf - 2);
        spare[i].buf = NULL;
    }
}

static spool *find(server *s, uint64_t id)
{
    for (spool *p = s->pools; p; p = p->next)
        if (p->id == id)
            return p;
    return NULL;
}

static void *result_alloc(void *arg, size_t len)
{
    server *s = arg;
    if (len >= CMP__MPI_INLINE_MAX)
        return malloc(len);
    if (len > s->scratch_cap) {
        char *b = realloc(s->scratch, len);
        if (!b)
            return NULL;
        s->scratch = b;
        s->scratch_cap = len;
    }
    return s->scratch;
}

static void add(server *s, const cmp__mpi_rec *rec, const void *data)
{
    if (cmp__mpi_batch_add(&s->out, rec, data) < 0)
        s->failed = -ENOMEM;
}

/* Tells rank 0 the pool's worker pids when they changed (pool._pool). */
static void report_pids(server *s, spool *p)
{
    pid_t now[CMP__MPI_PIDS_MAX];
    int32_t wire[CMP__MPI_PIDS_MAX];
    unsigned n = cmp_pool_pids(p->pool, now, CMP__MPI_PIDS_MAX);
    for (unsigned i = 0; i < n; i++)
        wire[i] = (int32_t)now[i];
    if (n >= cmp_pool_size(p->pool))
        p->pids_due = 0;
    if (n == p->npids && !memcmp(wire, p->pids, n * sizeof *wire))
        return;
    memcpy(p->pids, wire, n * sizeof *wire);
    p->npids = n;
    cmp__mpi_rec r = {.kind = CMP__MPI_PIDS, .pool = p->id, .len = n * sizeof *wire};
    add(s, &r, wire);
}

/* ---- what a framed pool's workers run ---------------------------------- */

/* Each task of a framed pool starts with this; a FRAME_ARENA one is only
 * that (its bytes are in the arena), a FRAME_INLINE one has them after.
 * tok: the task's token, which names it in a big result's slot. */
enum { FRAME_INLINE = 1, FRAME_ARENA };
typedef struct {
    uint32_t kind, tok;
    uint64_t off, len; /* FRAME_ARENA only */
} frame;
#define FRAME_INLINE_LEN 8 /* kind and tok: the bytes stay 8-aligned */

static int framed_task(void *arg, const void *task, size_t len, cmp_pool_result_t *out)
{
    spool *p = arg;
    frame f = {0};
    if (len < FRAME_INLINE_LEN)
        abort(); /* only our serve loop submits to this pool */
    memcpy(&f, task, len < sizeof f ? FRAME_INLINE_LEN : sizeof f);
    int rc;
    cmp__mpi_result_begin(f.tok, out);
    if (f.kind == FRAME_INLINE) {
        rc = p->inner.task(p->inner.arg, (const char *)task + FRAME_INLINE_LEN,
                           len - FRAME_INLINE_LEN, out);
    } else {
        const char *data = cmp__mpi_arena_enter(f.off);
        rc = p->inner.task(p->inner.arg, data, f.len, out);
        cmp__mpi_arena_leave();
    }
    /* a big result to a slot of the arena (else it goes by the ring) */
    (void)cmp__mpi_result_move(f.tok, out);
    return rc;
}

static int framed_init(void *arg, cmp_pool_result_t *out)
{
    spool *p = arg;
    return p->inner.init(p->inner.arg, out);
}

static void framed_wait(void *arg, int waiting)
{
    spool *p = arg;
    p->inner.wait_hook(p->inner.arg, waiting);
}

static void framed_fork(void *arg, int phase)
{
    spool *p = arg;
    p->inner.fork_hook(p->inner.arg, phase);
}

static void *framed_alloc(void *arg, size_t len)
{
    spool *p = arg;
    return p->inner.task_alloc(p->inner.arg, len);
}

/* Workers forked by us (not started by a hook of the caller's) see the
 * arena: their pool's tasks are framed. */
static void frame_pool(spool *p, cmp_pool_options_t *opt)
{
    if (opt->start_worker || cmp__mpi_arena_open() < 0)
        return;
    p->inner = *opt;
    p->framed = 1;
    opt->task = framed_task;
    opt->init = opt->init ? framed_init : NULL;
    opt->wait_hook = opt->wait_hook ? framed_wait : NULL;
    opt->fork_hook = opt->fork_hook ? framed_fork : NULL;
    opt->task_alloc = opt->task_alloc ? framed_alloc : NULL;
    opt->arg = p;
}

static void create_pool(server *s, const cmp__mpi_rec *rec, const char *data)
{
    cmp_pool_options_t opt = {0};
    if (s->opt->pool)
        opt = *s->opt->pool;
    opt.workers = (unsigned)rec->workers;
    int rc = 0;
    if (s->opt->configure && s->opt->configure(s->opt->arg, data, rec->len, &opt) != 0)
        rc = -EPROTO;
    spool *p = rc ? NULL : calloc(1, sizeof *p);
    if (!rc && !p)
        rc = -ENOMEM;
    if (p)
        frame_pool(p, &opt);
    if (!rc && (rc = cmp_pool_create(&p->pool, &opt)) < 0) {
        free(p);
        p = NULL;
    }
    if (p) {
        p->id = rec->pool;
        p->next = s->pools;
        s->pools = p;
    }
    const char *host = cmp_mpi_host();
    cmp__mpi_rec r = {.kind = CMP__MPI_CREATED,
                      .pool = rec->pool,
                      .len = strlen(host) + 1,
                      .status = rc,
                      .workers = p ? (int32_t)cmp_pool_size(p->pool) : 0};
    add(s, &r, host);
    if (p)
        report_pids(s, p);
}

static void reply(server *s, uint64_t pool, uint64_t id, int status, const void *data, size_t len)
{
    cmp__mpi_rec r = {
        .kind = CMP__MPI_RESULT, .pool = pool, .id = id, .len = len, .status = status};
    add(s, &r, data);
}

/* Submits a task to p's pool: framed when the pool is. big (a buffer of
 * big_buffer's, holding the bytes) is released once they are in the ring. */
static int submit_local(spool *p, const char *data, size_t len, char *big, uint32_t tok,
                        uint64_t *lid)
{
    frame f = {.kind = FRAME_INLINE, .tok = tok};
    if (big) {
        /* big_buffer's second word holds the frame: the piece is one */
        char *at = p->framed ? big - FRAME_INLINE_LEN : big;
        if (p->framed)
            memcpy(at, &f, FRAME_INLINE_LEN);
        struct iovec iov = {at, len + (size_t)(big - at)};
        int rc = cmp_pool_submitv_ref(p->pool, &iov, 1, lid, big_release, big);
        if (rc < 0)
            big_release(big);
        return rc;
    }
    if (!p->framed)
        return cmp_pool_submit(p->pool, data, len, lid);
    struct iovec iov[2] = {{&f, FRAME_INLINE_LEN}, {(void *)data, len}};
    return cmp_pool_submitv(p->pool, iov, 2, lid);
}

/* A big task's pieces, received into the arena when p's workers see it
 * (*block), else into a buffer of big_buffer's (*big). 0 or -EPROTO. */
static int receive_big(spool *p, const cmp__mpi_rec *rec, int from, int *block, char **big)
{
    char *into = NULL;
    *block = p && p->framed ? cmp__mpi_arena_get(rec->len, &into) : -1;
    *big = NULL;
    if (*block < 0)
        into = *big = big_buffer(rec->len);
    /* the pieces must be taken off the wire even for a pool that is gone */
    if (into && cmp__mpi_recv_pieces(from, into, rec->len, rec->npieces) == 0)
        return 0;
    if (*block >= 0)
        cmp__mpi_arena_done(*block);
    if (*big)
        big_release(*big);
    return -EPROTO;
}

static void take_task(server *s, const cmp__mpi_rec *rec, const char *data, int from)
{
    spool *p = find(s, rec->pool);
    char *big = NULL;
    int block = -1;
    if (rec->npieces && receive_big(p, rec, from, &block, &big) < 0) {
        s->failed = -EPROTO;
        return;
    }
    if (!p) {
        if (big)
            big_release(big);
        return; /* terminated: rank 0 has already given its tasks up */
    }
    uint64_t lid = 0;
    int rc;
    if (!++s->tok)
        s->tok = 1; /* never 0: a free slot's */
    if (block >= 0) {
        frame f = {FRAME_ARENA, s->tok, cmp__mpi_arena_offset(block), rec->len};
        rc = cmp_pool_submit(p->pool, &f, sizeof f, &lid);
        /* out of memory for the map: the block stays out of use, the task runs */
        if (rc < 0)
            cmp__mpi_arena_done(block);
        else
            (void)cmp__mpi_map_put(&p->blocks, lid, (uint64_t)block + 1);
    } else {
        rc = submit_local(p, data, rec->len, big, s->tok, &lid);
    }
    /* no memory for it: the task's big result, if any, goes unclaimed (its
     * slot is never taken, and stays out of use) */
    if (rc == 0 && p->framed)
        (void)cmp__mpi_map_put(&p->toks, lid, s->tok);
    if (rc == 0 && cmp__mpi_map_put(&p->ids, lid, rec->id) < 0)
        rc = -ENOMEM; /* the task runs, but its outcome could not be routed */
    if (rc == 0)
        (void)cmp__mpi_map_put(&p->rids, rec->id, lid); /* no memory: not cancellable */
    if (rc < 0) {
        /* a broken pool refuses tasks: they fail as those it took did */
        const void *why;
        size_t why_len;
        if (cmp_pool_init_error(p->pool, &why, &why_len))
            reply(s, rec->pool, rec->id, CMP_POOL_BROKEN, why, why_len);
        else
            reply(s, rec->pool, rec->id, CMP_POOL_CANCELLED, NULL, 0);
    }
}

static void end_pool(server *s, spool *p)
{
    cmp_pool_join(p->pool, NULL);
    cmp_pool_destroy(p->pool);
    cmp__mpi_rec r = {.kind = CMP__MPI_ENDED, .pool = p->id};
    add(s, &r, NULL);
    for (spool **pp = &s->pools; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    cmp__mpi_map_free(&p->ids);
    cmp__mpi_map_free(&p->rids);
    cmp__mpi_map_free(&p->blocks);
    cmp__mpi_map_free(&p->toks);
    free(p);
}

static void slot_release(void *arg)
{
    cmp__mpi_result_free((int)(intptr_t)arg);
}

/* A big result a worker left in a result slot: sent from there (after the
 * batch that announces it, so that one is flushed first), the slot freed
 * once MPI is done with it. */
static void forward_slot(server *s, const cmp__mpi_rec *rec, int slot, char *bytes)
{
    add(s, rec, NULL);
    if (cmp__mpi_batch_flush(&s->out, 0) < 0 ||
        cmp__mpi_send(0, CMP__MPI_TAG_PIECE, bytes, rec->len, 0, slot_release,
                      (void *)(intptr_t)slot) < 0)
        s->failed = -ENOMEM;
}

/* Sends one local outcome back (a big result as its own message). */
static void forward(server *s, spool *p, cmp_pool_outcome_t *o)
{
    uint64_t rid, block, tok = 0;
    if (o->status == CMP_POOL_LOST)
        p->pids_due = 1; /* before the result that tells rank 0 of the death */
    if (cmp__mpi_map_take(&p->blocks, o->id, &block))
        cmp__mpi_arena_done((int)block - 1);
    int known = cmp__mpi_map_take(&p->ids, o->id, &rid);
    if (known)
        cmp__mpi_map_take(&p->rids, rid, NULL);
    if (cmp__mpi_map_take(&p->toks, o->id, &tok)) {
        char *bytes;
        size_t blen;
        int slot = o->status == CMP_POOL_DONE || o->status == CMP_POOL_FAILED
                       ? cmp__mpi_result_take((uint32_t)tok, o->data, o->len, &bytes, &blen)
                       : -1;
        if (slot >= 0 && known) {
            cmp__mpi_rec r = {.kind = CMP__MPI_RESULT,
                              .npieces = 1,
                              .pool = p->id,
                              .id = rid,
                              .len = blen,
                              .status = o->status,
                              .cause = o->cause,
                              .pid = o->pid};
            forward_slot(s, &r, slot, bytes);
            s->from_slots++;
            return;
        }
        if (slot >= 0)
            cmp__mpi_result_free(slot);
        else if (o->status != CMP_POOL_DONE && o->status != CMP_POOL_FAILED)
            cmp__mpi_result_drop((uint32_t)tok); /* its worker may have claimed one */
    }
    int big = o->len >= CMP__MPI_INLINE_MAX;
    if (known) {
        cmp__mpi_rec r = {.kind = CMP__MPI_RESULT,
                          .npieces = big ? 1 : 0,
                          .pool = p->id,
                          .id = rid,
                          .len = o->len,
                          .status = o->status,
                          .cause = o->cause,
                          .pid = o->pid};
        add(s, &r, o->data);
        if (big) {
            s->from_ring++;
            /* after the batch that announces it: flush that first */
            if (cmp__mpi_batch_flush(&s->out, 0) < 0 ||
                cmp__mpi_send(0, CMP__MPI_TAG_PIECE, o->data, o->len, 1, NULL, NULL) < 0)
                s->failed = -ENOMEM;
            return;
        }
    }
    if (big)
        free(o->data);
}

/* Takes what the local pools have; with wait_ns, sleeps up to that long in
 * the first busy pool for its next outcome. Returns how many came. */
static int drain(server *s, long wait_ns)
{
    int got = 0;
    for (spool *p = s->pools, *next; p; p = next) {
        next = p->next;
        for (;;) {
            cmp_pool_outcome_t o;
            struct timespec until;
            const struct timespec *dl = CMP_NOWAIT;
            if (wait_ns && !got && cmp_pool_outstanding(p->pool)) {
                clock_gettime(CLOCK_MONOTONIC, &until);
                until.tv_nsec += wait_ns;
                if (until.tv_nsec >= 1000000000L) {
                    until.tv_sec++;
                    until.tv_nsec -= 1000000000L;
                }
                dl = &until;
            }
            if (p->finished)
                break;
            int rc = cmp_pool_next(p->pool, &o, result_alloc, s, dl);
            if (rc == -ENOENT) {
                /* A broken pool is done too, before rank 0 knows it: it
                 * stays, to answer its later tasks, until rank 0 ends it. */
                if (p->ending)
                    end_pool(s, p);
                else
                    p->finished = 1;
                got++;
                break;
            }
            if (rc < 0)
                break;
            got++;
            forward(s, p, &o);
        }
    }
    return got;
}

/* While our pools hold tasks, rank 0 hears from us at least every
 * CMP__MPI_HEARTBEAT_NS (a result, or ALIVE), so that silence means we
 * are gone. */
static void heartbeat(server *s, struct timespec *said)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!s->out.len) {
        long ns = (now.tv_sec - said->tv_sec) * 1000000000L + (now.tv_nsec - said->tv_nsec);
        if (ns < CMP__MPI_HEARTBEAT_NS)
            return;
        int busy = 0;
        for (spool *p = s->pools; p; p = p->next)
            busy |= cmp_pool_outstanding(p->pool) != 0;
        if (!busy)
            return;
        cmp__mpi_rec r = {.kind = CMP__MPI_ALIVE};
        add(s, &r, NULL);
    }
    *said = now;
}

static int handle(server *s, const char *buf, size_t len, int from, int *stop)
{
    size_t off = 0;
    cmp__mpi_rec rec;
    const char *data;
    int rc;
    while ((rc = cmp__mpi_batch_next(buf, len, &off, &rec, &data)) == 1) {
        spool *p;
        switch (rec.kind) {
        case CMP__MPI_CREATE:
            create_pool(s, &rec, data);
            break;
        case CMP__MPI_TASK:
            take_task(s, &rec, data, from);
            break;
        case CMP__MPI_CLOSE:
        case CMP__MPI_TERMINATE:
            if (!(p = find(s, rec.pool)))
                break;
            if (rec.kind == CMP__MPI_CLOSE)
                cmp_pool_close(p->pool);
            else
                cmp_pool_terminate(p->pool);
            p->ending = 1;
            if (p->finished)
                end_pool(s, p);
            break;
        case CMP__MPI_CANCEL: {
            uint64_t lid;
            /* the local pool drops it if no worker has it yet: it then comes
             * out CANCELLED, and goes back as any outcome does */
            if ((p = find(s, rec.pool)) && cmp__mpi_map_get(&p->rids, rec.id, &lid))
                cmp_pool_cancel(p->pool, &lid, 1);
            break;
        }
        case CMP__MPI_STOP:
            *stop = 1;
            if (rec.status == 1)
                cmp__mpi_lost = 1; /* MPI cannot finalize: rank 0 says why */
            break;
        default:
            return -EPROTO;
        }
    }
    return rc;
}

int cmp_mpi_serve(const cmp_mpi_serve_options_t *opt)
{
    if (cmp__mpi_rank <= 0 || !opt || (!opt->configure && !opt->pool))
        return -EINVAL;
    server s = {.opt = opt};
    unsigned idle = 0;
    int stop = 0;
    struct timespec said, looked, now; /* when we last sent rank 0 something, read pids */
    clock_gettime(CLOCK_MONOTONIC, &said);
    looked = said;
    while (!stop && !s.failed) {
        int did = 0;
        char *buf;
        size_t len;
        int from, rc = 0;
        while (!stop && (rc = cmp__mpi_recv_batch(0, &buf, &len, &from)) == 1) {
            if (handle(&s, buf, len, from, &stop) < 0)
                s.failed = -EPROTO;
            free(buf);
            did++;
        }
        if (rc < 0)
            s.failed = rc;
        if (stop)
            break;
        did += drain(&s, 0);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - looked.tv_sec) * 1000000000L + (now.tv_nsec - looked.tv_nsec) >=
            CMP__MPI_PIDS_NS) {
            for (spool *p = s.pools; p; p = p->next)
                report_pids(&s, p);
            cmp__mpi_results_sweep();
            looked = now;
        } else {
            for (spool *p = s.pools; p; p = p->next)
                if (p->pids_due)
                    report_pids(&s, p);
        }
        heartbeat(&s, &said);
        if (cmp__mpi_batch_flush(&s.out, 0) < 0)
            s.failed = -ENOMEM;
        cmp__mpi_release rel[32];
        int nrel;
        did += cmp__mpi_sends_test(rel, 32, &nrel);
        for (int i = 0; i < nrel; i++)
            rel[i].fn(rel[i].arg);
        /* A big send moves only while we call MPI (shared memory without
         * single copy: fragment by fragment), so it is polled, not slept
         * on: a sleep of 200 µs a fragment made 8 MiB take 40 ms. */
        if (did || cmp__mpi_sends_pending()) {
            idle = 0;
            continue;
        }
        int busy = 0;
        for (spool *p = s.pools; p; p = p->next)
            busy |= cmp_pool_outstanding(p->pool) != 0;
        long ns = cmp__mpi_backoff_ns(++idle, busy);
        if (!ns) {
            sched_yield();
        } else if (busy) {
            if (drain(&s, ns)) /* sleeps on the pool's result queue */
                idle = 0;
        } else {
            struct timespec ts = {0, ns};
            nanosleep(&ts, NULL);
        }
    }
    /* the job ends: every pool goes, its workers with it */
    while (s.pools) {
        spool *p = s.pools;
        cmp_pool_terminate(p->pool);
        cmp_pool_outcome_t o;
        while (cmp_pool_next(p->pool, &o, result_alloc, &s, NULL) == 0)
            if (o.len >= CMP__MPI_INLINE_MAX)
                free(o.data);
        cmp_pool_join(p->pool, NULL);
        cmp_pool_destroy(p->pool);
        s.pools = p->next;
        cmp__mpi_map_free(&p->ids);
        cmp__mpi_map_free(&p->rids);
        cmp__mpi_map_free(&p->blocks);
        cmp__mpi_map_free(&p->toks);
        free(p);
    }
    /* for the tests (and whoever measures): the way big results went */
    if (getenv("CMP_MPI_STATS"))
        fprintf(stderr,
                "cmp.mpi stats: rank %d: %lu big results from slots, %lu by the ring, %u "
                "slots held at the end\n",
                cmp__mpi_rank, s.from_slots, s.from_ring, cmp__mpi_results_held());
    free(s.out.buf);
    free(s.scratch);
    spares_free();
    return s.failed ? -EPROTO : 0;
}
