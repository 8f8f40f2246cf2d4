/*
 * A serving rank: one local cmp_pool per pool rank 0 created, fed with the
 * tasks that arrive by MPI; outcomes go back in batches. One thread: it
 * polls MPI for tasks (MPI has no descriptor to sleep on) and, while its
 * pools have tasks, sleeps in cmp_pool_next for their results instead.
 */
#include "mpi_internal.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct spool {
    uint64_t id; /* rank 0's */
    cmp_pool_t *pool;
    cmp__mpi_map ids; /* local task id -> rank 0's */
    int ending;       /* rank 0 closed or terminated it: end it once drained */
    int finished;     /* every task is out (a broken pool): only rank 0 ends it */
    struct spool *next;
} spool;

typedef struct {
    const cmp_mpi_serve_options_t *opt;
    spool *pools;
    cmp__mpi_batch out;
    char *scratch; /* small results land here; big ones get their own buffer */
    size_t scratch_cap;
    int failed; /* an MPI or memory error: the serve loop ends */
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
}

static void reply(server *s, uint64_t pool, uint64_t id, int status, const void *data, size_t len)
{
    cmp__mpi_rec r = {
        .kind = CMP__MPI_RESULT, .pool = pool, .id = id, .len = len, .status = status};
    add(s, &r, data);
}

static void take_task(server *s, const cmp__mpi_rec *rec, const char *data, int from)
{
    spool *p = find(s, rec->pool);
    char *big = NULL;
    if (rec->npieces) {
        big = big_buffer(rec->len);
        /* the pieces must be taken off the wire even for a pool that is gone */
        char *into = big ? big : NULL;
        if (!into || cmp__mpi_recv_pieces(from, into, rec->len, rec->npieces) < 0) {
            if (big)
                big_release(big);
            s->failed = -EPROTO;
            return;
        }
        data = big;
    }
    if (!p) {
        if (big)
            big_release(big);
        return; /* terminated: rank 0 has already given its tasks up */
    }
    uint64_t lid = 0;
    int rc;
    if (big) {
        struct iovec iov = {big, rec->len};
        rc = cmp_pool_submitv_ref(p->pool, &iov, 1, &lid, big_release, big);
        if (rc < 0)
            big_release(big);
    } else {
        rc = cmp_pool_submit(p->pool, data, rec->len, &lid);
    }
    if (rc == 0 && cmp__mpi_map_put(&p->ids, lid, rec->id) < 0)
        rc = -ENOMEM; /* the task runs, but its outcome could not be routed */
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
    free(p);
}

/* Sends one local outcome back (a big result as its own message). */
static void forward(server *s, spool *p, cmp_pool_outcome_t *o)
{
    uint64_t rid;
    int known = cmp__mpi_map_take(&p->ids, o->id, &rid);
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
        case CMP__MPI_STOP:
            *stop = 1;
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
        if (cmp__mpi_batch_flush(&s.out, 0) < 0)
            s.failed = -ENOMEM;
        cmp__mpi_release rel[32];
        int nrel;
        did += cmp__mpi_sends_test(rel, 32, &nrel);
        for (int i = 0; i < nrel; i++)
            rel[i].fn(rel[i].arg);
        if (did) {
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
        free(p);
    }
    free(s.out.buf);
    free(s.scratch);
    spares_free();
    return s.failed ? -EPROTO : 0;
}
