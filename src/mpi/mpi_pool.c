/*
 * Rank 0's side: pools whose workers are the serving ranks' local pools.
 *
 * Callers queue tasks (pending, here); one communication thread of ours
 * does every MPI call: it sends each rank tasks while the rank holds fewer
 * than its credit (depth x its workers), receives outcomes in batches and
 * queues them for cmp_mpi_pool_next. A rank that works slowly returns
 * fewer results and so is sent fewer tasks: the map is never held back by
 * a task queued at the slowest rank behind many others. One lock (G.mu)
 * guards the pools and the thread's state; the thread lets go of it only
 * to sleep and to run callers' release functions.
 */
#include "mpi_internal.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

typedef struct task {
    struct task *next;
    uint64_t id;
    size_t len;
    char *bytes; /* a copy of the task (NULL: iov below, the caller's) */
    struct iovec *iov;
    int iovcnt;
    void (*release)(void *);
    void *rarg;
} task;

typedef struct onode {
    struct onode *next;
    cmp_mpi_outcome_t out;
} onode;

enum { RUN, CLOSED, TERMINATED };

struct cmp_mpi_pool {
    struct cmp_mpi_pool *next_pool;
    uint64_t pool_id;
    cmp_pool_t *local; /* a job of one rank */
    cmp_mpi_pool_options_t opt;
    pthread_cond_t cv;     /* an outcome came, or a rank answered */
    task *ph, *pt;         /* pending, in submission order */
    cmp__mpi_map inflight; /* id -> rank */
    onode *oh, *ot;        /* outcomes, as they came */
    cmp__mpi_map early;    /* CMP_MPI_ORDERED: id -> onode */
    uint64_t next_id, next_out, outstanding;
    unsigned *workers, *held; /* per rank */
    unsigned depth, total;
    int state, close_sent, term_sent, create_rc;
    int broken; /* a rank's initializer failed */
    unsigned created, ended;
    unsigned char *answered; /* per rank: ANSWERED_* (a lost rank: both) */
    int32_t **pids;          /* per rank: its workers' pids, as it reported them */
    unsigned *npids;
};

enum { ANSWERED_CREATED = 1, ANSWERED_ENDED = 2 };

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake; /* the thread sleeps here when nothing is due */
    pthread_t thread;
    int started, stop, sleeping;
    uint64_t next_pool;
    struct cmp_mpi_pool *pools;
    cmp__mpi_batch *out; /* per rank */
    char **hosts;        /* per rank, as they reported */
    /* per rank: when we last heard from it (or began to expect to), whether
     * we expect to, whether it is lost */
    int64_t *heard;
    unsigned char *expected, *lost;
    int nlost;
    int64_t lost_after_ns;
} G = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static task *terminate_locked(struct cmp_mpi_pool *p);
static void free_tasks(task *gone);
static void free_task_later(task *t, cmp__mpi_release *rel, int *nrel);

static void *default_alloc(void *arg, size_t len)
{
    (void)arg;
    return malloc(len ? len : 1);
}

static void default_free(void *arg, void *data)
{
    (void)arg;
    free(data);
}

static void wake_thread(void)
{
    if (G.sleeping)
        pthread_cond_signal(&G.wake);
}

static struct cmp_mpi_pool *find(uint64_t id)
{
    for (struct cmp_mpi_pool *p = G.pools; p; p = p->next_pool)
        if (p->pool_id == id)
            return p;
    return NULL;
}

/* ---- outcomes ------------------------------------------------------------- */

static void push_outcome(struct cmp_mpi_pool *p, onode *n)
{
    n->next = NULL;
    if (p->opt.flags & CMP_MPI_ORDERED) {
        if (cmp__mpi_map_put(&p->early, n->out.o.id, (uint64_t)(uintptr_t)n) < 0)
            abort(); /* out of memory holding a result: nothing sane to do */
    } else {
        if (p->ot)
            p->ot->next = n;
        else
            p->oh = n;
        p->ot = n;
    }
    pthread_cond_broadcast(&p->cv);
}

static onode *pop_outcome(struct cmp_mpi_pool *p)
{
    if (p->opt.flags & CMP_MPI_ORDERED) {
        uint64_t v;
        if (!cmp__mpi_map_take(&p->early, p->next_out, &v))
            return NULL;
        p->next_out++;
        return (onode *)(uintptr_t)v;
    }
    onode *n = p->oh;
    if (n && !(p->oh = n->next))
        p->ot = NULL;
    return n;
}

static onode *new_outcome(uint64_t id, int status, int rank)
{
    onode *n = calloc(1, sizeof *n);
    if (!n)
        abort();
    n->out.o.id = id;
    n->out.o.status = status;
    n->out.rank = rank;
    n->out.host = rank > 0 && G.hosts && G.hosts[rank] ? G.hosts[rank] : cmp_mpi_host();
    return n;
}

/* ---- records from the ranks ---------------------------------------------- */

static void drop_pieces(int from, const cmp__mpi_rec *rec)
{
    char *tmp = malloc(rec->len ? rec->len : 1);
    if (!tmp || cmp__mpi_recv_pieces(from, tmp, rec->len, rec->npieces) < 0)
        abort(); /* the wire is out of step: nothing after can be trusted */
    free(tmp);
}

static void on_result(int from, const cmp__mpi_rec *rec, const char *data)
{
    struct cmp_mpi_pool *p = find(rec->pool);
    uint64_t rank;
    if (!p || !cmp__mpi_map_take(&p->inflight, rec->id, &rank)) {
        if (rec->npieces)
            drop_pieces(from, rec); /* terminated or cancelled meanwhile */
        return;
    }
    p->held[rank]--;
    if (rec->status == CMP_POOL_BROKEN)
        p->broken = 1; /* as a local pool: it takes no more tasks */
    onode *n = new_outcome(rec->id, rec->status, from);
    n->out.o.cause = rec->cause;
    n->out.o.pid = rec->pid;
    n->out.o.len = rec->len;
    if (rec->len) {
        n->out.o.data = p->opt.alloc(p->opt.alloc_arg, rec->len);
        if (!n->out.o.data)
            abort();
        if (rec->npieces) {
            if (cmp__mpi_recv_pieces(from, n->out.o.data, rec->len, rec->npieces) < 0)
                abort();
        } else {
            memcpy(n->out.o.data, data, rec->len);
        }
    }
    push_outcome(p, n);
}

static void on_batch(const char *buf, size_t len, int from)
{
    if (G.lost[from])
        return; /* what it sent before we gave up on it (its pieces may never come) */
    G.heard[from] = now_ns();
    size_t off = 0;
    cmp__mpi_rec rec;
    const char *data;
    struct cmp_mpi_pool *p;
    int rc;
    while ((rc = cmp__mpi_batch_next(buf, len, &off, &rec, &data)) == 1) {
        switch (rec.kind) {
        case CMP__MPI_CREATED:
            if (!G.hosts[from] && rec.len && data[rec.len - 1] == '\0')
                G.hosts[from] = strdup(data);
            if ((p = find(rec.pool)) && !(p->answered[from] & ANSWERED_CREATED)) {
                p->answered[from] |= ANSWERED_CREATED;
                p->workers[from] = rec.workers > 0 ? (unsigned)rec.workers : 0;
                p->total += p->workers[from];
                if (rec.status < 0)
                    p->create_rc = -EPROTO;
                p->created++;
                pthread_cond_broadcast(&p->cv);
            }
            break;
        case CMP__MPI_RESULT:
            on_result(from, &rec, data);
            break;
        case CMP__MPI_ALIVE:
            break;
        case CMP__MPI_PIDS:
            if ((p = find(rec.pool)) && rec.len % sizeof(int32_t) == 0) {
                int32_t *v = realloc(p->pids[from], rec.len ? rec.len : 1);
                if (!v)
                    break; /* the list stays as it was: only pool._pool is late */
                memcpy(v, data, rec.len);
                p->pids[from] = v;
                p->npids[from] = (unsigned)(rec.len / sizeof(int32_t));
            }
            break;
        case CMP__MPI_ENDED:
            if ((p = find(rec.pool)) && !(p->answered[from] & ANSWERED_ENDED)) {
                p->answered[from] |= ANSWERED_ENDED;
                p->ended++;
                pthread_cond_broadcast(&p->cv);
            }
            break;
        default:
            abort();
        }
    }
    if (rc < 0)
        abort();
}

/* ---- sending ------------------------------------------------------------- */

static void add(int rank, const cmp__mpi_rec *rec, const void *data)
{
    if (cmp__mpi_batch_add(&G.out[rank], rec, data) < 0)
        abort();
}

static void add_all(uint64_t pool, int kind)
{
    for (int k = 1; k < cmp__mpi_size; k++) {
        cmp__mpi_rec r = {.kind = (uint32_t)kind, .pool = pool, .status = G.nlost ? 1 : 0};
        if (!G.lost[k])
            add(k, &r, NULL);
    }
}

/* ---- a rank lost ----------------------------------------------------------- */

/* Nothing from rank k for too long while it held tasks (or owed us an
 * answer): its tasks fail, it gets no more, the pools go on without it. */
static void lose_rank(int k)
{
    G.lost[k] = 1;
    G.nlost++;
    cmp__mpi_lost = 1;
    G.out[k].len = 0;
    cmp__mpi_sends_forget(k);
    for (struct cmp_mpi_pool *p = G.pools; p; p = p->next_pool) {
        uint64_t *ids = malloc((p->inflight.len + 1) * sizeof *ids);
        size_t nids = 0;
        if (!ids)
            abort(); /* out of memory failing tasks: nothing sane to do */
        for (size_t i = 0; i < p->inflight.cap; i++)
            if (p->inflight.keys[i] && p->inflight.vals[i] == (uint64_t)k)
                ids[nids++] = p->inflight.keys[i];
        for (size_t i = 0; i < nids; i++) {
            cmp__mpi_map_take(&p->inflight, ids[i], NULL);
            onode *n = new_outcome(ids[i], CMP_POOL_LOST, k);
            n->out.rank_lost = 1;
            push_outcome(p, n);
        }
        free(ids);
        p->held[k] = 0;
        p->npids[k] = 0;
        p->total -= p->workers[k];
        p->workers[k] = 0;
        if (!(p->answered[k] & ANSWERED_CREATED))
            p->created++;
        if (!(p->answered[k] & ANSWERED_ENDED))
            p->ended++;
        p->answered[k] = ANSWERED_CREATED | ANSWERED_ENDED;
        pthread_cond_broadcast(&p->cv);
    }
}

static int expecting_from(int k)
{
    for (struct cmp_mpi_pool *p = G.pools; p; p = p->next_pool) {
        if (p->held[k] || !(p->answered[k] & ANSWERED_CREATED))
            return 1;
        if ((p->close_sent || p->term_sent) && !(p->answered[k] & ANSWERED_ENDED))
            return 1;
    }
    return 0;
}

static void check_ranks(void)
{
    int64_t now = now_ns();
    for (int k = 1; k < cmp__mpi_size; k++) {
        if (G.lost[k])
            continue;
        int e = expecting_from(k);
        if (e && !G.expected[k])
            G.heard[k] = now; /* silence counts from when we began to wait */
        G.expected[k] = (unsigned char)e;
        if (e && now - G.heard[k] > G.lost_after_ns)
            lose_rank(k);
    }
}

/* Every serving rank is lost: the pool's pending tasks can run nowhere. */
static void fail_pending(struct cmp_mpi_pool *p, cmp__mpi_release *rel, int *nrel, int maxrel)
{
    while (p->ph && *nrel < maxrel) {
        task *t = p->ph;
        if (!(p->ph = t->next))
            p->pt = NULL;
        onode *n = new_outcome(t->id, CMP_POOL_LOST, 0);
        n->out.rank_lost = 1;
        push_outcome(p, n);
        free_task_later(t, rel, nrel);
    }
}

/* The rank with the most free credit, or 0 when every rank is full. */
static int pick_rank(struct cmp_mpi_pool *p)
{
    int best = 0;
    long room = 0;
    for (int k = 1; k < cmp__mpi_size; k++) {
        long credit = (long)p->depth * (p->workers[k] ? p->workers[k] : 0);
        long r = credit - (long)p->held[k];
        if (r > room) {
            room = r;
            best = k;
        }
    }
    return best;
}

static void free_task_later(task *t, cmp__mpi_release *rel, int *nrel)
{
    if (t->release)
        rel[(*nrel)++] = (cmp__mpi_release){t->release, t->rarg};
    free(t->bytes);
    free(t->iov);
    free(t);
}

/* Sends what the pool may send now; rel gets releases to run unlocked. */
static int dispatch(struct cmp_mpi_pool *p, cmp__mpi_release *rel, int *nrel, int maxrel)
{
    int did = 0, k;
    if (p->created < (unsigned)cmp__mpi_size - 1)
        return 0;
    if (G.nlost == cmp__mpi_size - 1)
        fail_pending(p, rel, nrel, maxrel);
    while (p->state != TERMINATED && p->ph && *nrel < maxrel && (k = pick_rank(p))) {
        task *t = p->ph;
        if (!(p->ph = t->next))
            p->pt = NULL;
        cmp__mpi_rec r = {.kind = CMP__MPI_TASK, .pool = p->pool_id, .id = t->id, .len = t->len};
        if (t->bytes && t->len < CMP__MPI_INLINE_MAX) {
            add(k, &r, t->bytes);
            free_task_later(t, rel, nrel);
        } else {
            struct iovec one = {t->bytes, t->len};
            const struct iovec *iov = t->bytes ? &one : t->iov;
            int n = t->bytes ? 1 : t->iovcnt;
            r.npieces = cmp__mpi_npieces(iov, n);
            add(k, &r, NULL);
            if (cmp__mpi_batch_flush(&G.out[k], k) < 0)
                lose_rank(k);
            /* the bytes go straight from their memory; freed once sent */
            if (t->bytes) {
                if (r.npieces && cmp__mpi_send_pieces(k, iov, n, free, t->bytes) < 0)
                    abort();
                if (!r.npieces)
                    free(t->bytes);
            } else if (cmp__mpi_send_pieces(k, iov, n, t->release, t->rarg) < 0) {
                abort();
            }
            free(t->iov);
            free(t);
        }
        if (cmp__mpi_map_put(&p->inflight, r.id, (uint64_t)k) < 0)
            abort();
        p->held[k]++;
        did++;
    }
    if (p->state == CLOSED && !p->close_sent && !p->ph) {
        add_all(p->pool_id, CMP__MPI_CLOSE);
        p->close_sent = 1;
        did++;
    }
    if (p->state == TERMINATED && !p->term_sent) {
        add_all(p->pool_id, CMP__MPI_TERMINATE);
        p->term_sent = 1;
        did++;
    }
    return did;
}

/* Something is due from a rank (or to one): the thread polls, else sleeps. */
static int expecting(void)
{
    if (cmp__mpi_sends_pending())
        return 1;
    for (struct cmp_mpi_pool *p = G.pools; p; p = p->next_pool) {
        unsigned servers = (unsigned)cmp__mpi_size - 1;
        if (p->inflight.len || p->created < servers || p->ph)
            return 1;
        if ((p->close_sent || p->term_sent) && p->ended < servers)
            return 1;
    }
    return 0;
}

static void *comm_main(void *unused)
{
    (void)unused;
    unsigned idle = 0;
    int stop_sent = 0;
    enum { MAXREL = 64 };
    cmp__mpi_release rel[MAXREL];
    pthread_mutex_lock(&G.mu);
    for (;;) {
        int did = 0, nrel = 0;
        for (struct cmp_mpi_pool *p = G.pools; p; p = p->next_pool)
            did += dispatch(p, rel, &nrel, MAXREL / 2);
        if (G.stop && !stop_sent) {
            add_all(0, CMP__MPI_STOP);
            stop_sent = 1;
        }
        for (int k = 1; k < cmp__mpi_size; k++)
            if (!G.lost[k] && cmp__mpi_batch_flush(&G.out[k], k) < 0)
                lose_rank(k); /* our communicator returns errors: a rank gone */
        check_ranks();
        int n2 = 0;
        did += cmp__mpi_sends_test(rel + nrel, MAXREL - nrel, &n2);
        nrel += n2;
        char *buf;
        size_t len;
        int from, rc;
        while ((rc = cmp__mpi_recv_batch(MPI_ANY_SOURCE, &buf, &len, &from)) == 1) {
            on_batch(buf, len, from);
            free(buf);
            did++;
        }
        if (rc < 0)
            abort();
        if (nrel) {
            pthread_mutex_unlock(&G.mu);
            for (int i = 0; i < nrel; i++)
                rel[i].fn(rel[i].arg);
            pthread_mutex_lock(&G.mu);
        }
        if (stop_sent && !cmp__mpi_sends_pending())
            break;
        if (did) {
            idle = 0;
            continue;
        }
        int busy = expecting();
        if (!busy && !G.stop) {
            G.sleeping = 1;
            pthread_cond_wait(&G.wake, &G.mu);
            G.sleeping = 0;
            idle = 0;
            continue;
        }
        long ns = cmp__mpi_backoff_ns(++idle, 1);
        pthread_mutex_unlock(&G.mu);
        if (ns) {
            struct timespec ts = {0, ns};
            nanosleep(&ts, NULL);
        } else {
            sched_yield();
        }
        pthread_mutex_lock(&G.mu);
    }
    pthread_mutex_unlock(&G.mu);
    return NULL;
}

/* G.mu held. */
static int start_thread(void)
{
    if (G.started)
        return 0;
    size_t n = (size_t)cmp__mpi_size;
    G.out = calloc(n, sizeof *G.out);
    G.hosts = calloc(n, sizeof *G.hosts);
    G.heard = calloc(n, sizeof *G.heard);
    G.expected = calloc(n, 1);
    G.lost = calloc(n, 1);
    if (!G.out || !G.hosts || !G.heard || !G.expected || !G.lost)
        return -ENOMEM;
    const char *env = getenv(CMP_MPI_RANK_TIMEOUT_ENV);
    double secs = env ? atof(env) : 0;
    G.lost_after_ns = (int64_t)((secs > 0 ? secs : 10.0) * 1e9);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&G.wake, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&G.thread, NULL, comm_main, NULL) != 0)
        return -EAGAIN;
    G.started = 1;
    return 0;
}

void cmp__mpi_pool_shutdown(void)
{
    pthread_mutex_lock(&G.mu);
    if (!G.started) {
        pthread_mutex_unlock(&G.mu);
        return;
    }
    /* pools still open end here: their waiters get CANCELLED outcomes */
    task *gone = NULL;
    for (struct cmp_mpi_pool *p = G.pools; p; p = p->next_pool) {
        task *t = terminate_locked(p);
        while (t) {
            task *next = t->next;
            t->next = gone;
            gone = t;
            t = next;
        }
    }
    G.stop = 1;
    wake_thread();
    pthread_mutex_unlock(&G.mu);
    free_tasks(gone);
    pthread_join(G.thread, NULL);
    pthread_mutex_lock(&G.mu);
    for (struct cmp_mpi_pool *p = G.pools; p; p = p->next_pool)
        pthread_cond_broadcast(&p->cv); /* a join waits no more */
    G.started = 0;
    G.stop = 0;
    for (int k = 0; k < cmp__mpi_size; k++) {
        free(G.out[k].buf);
        free(G.hosts[k]);
    }
    free(G.out);
    free(G.hosts);
    free(G.heard);
    free(G.expected);
    free(G.lost);
    G.out = NULL;
    G.hosts = NULL;
    G.heard = NULL;
    G.expected = G.lost = NULL;
    G.nlost = 0;
    pthread_mutex_unlock(&G.mu);
}

/* ---- the API ------------------------------------------------------------- */

static int wait_cv(struct cmp_mpi_pool *p, const struct timespec *deadline)
{
    int rc = deadline ? pthread_cond_timedwait(&p->cv, &G.mu, deadline)
                      : pthread_cond_wait(&p->cv, &G.mu);
    return rc == ETIMEDOUT ? -ETIMEDOUT : 0;
}

int cmp_mpi_pool_create(cmp_mpi_pool_t **out, const cmp_mpi_pool_options_t *opt)
{
    if (cmp__mpi_rank != 0 && cmp__mpi_rank != -1)
        return -EINVAL;
    int alone = cmp__mpi_size <= 1;
    if (alone && !opt->local)
        return -ENODEV;
    struct cmp_mpi_pool *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->opt = *opt;
    if (!p->opt.alloc) {
        p->opt.alloc = default_alloc;
        p->opt.free = default_free;
    }
    if (!p->opt.free)
        p->opt.free = default_free;
    p->depth = opt->depth ? opt->depth : 2;
    p->next_id = p->next_out = 1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    int rc;
    if (alone) {
        if ((rc = cmp_pool_create(&p->local, opt->local)) < 0)
            goto fail;
        p->total = cmp_pool_size(p->local);
        *out = p;
        return 0;
    }
    p->workers = calloc((size_t)cmp__mpi_size, sizeof *p->workers);
    p->held = calloc((size_t)cmp__mpi_size, sizeof *p->held);
    p->answered = calloc((size_t)cmp__mpi_size, 1);
    p->pids = calloc((size_t)cmp__mpi_size, sizeof *p->pids);
    p->npids = calloc((size_t)cmp__mpi_size, sizeof *p->npids);
    rc = -ENOMEM;
    if (!p->workers || !p->held || !p->answered || !p->pids || !p->npids)
        goto fail;
    pthread_mutex_lock(&G.mu);
    if ((rc = start_thread()) < 0) {
        pthread_mutex_unlock(&G.mu);
        goto fail;
    }
    p->pool_id = ++G.next_pool;
    /* opt->workers spread over the servers, the first ones one more */
    int servers = cmp__mpi_size - 1;
    for (int k = 1; k <= servers; k++) {
        unsigned w = opt->workers ? opt->workers / (unsigned)servers +
                                        ((unsigned)(k - 1) < opt->workers % (unsigned)servers)
                                  : 0;
        if (opt->workers && !w)
            w = 1; /* fewer workers than ranks: each serving rank runs one */
        cmp__mpi_rec r = {.kind = CMP__MPI_CREATE,
                          .pool = p->pool_id,
                          .len = opt->config_len,
                          .workers = (int32_t)w};
        if (r.len >= CMP__MPI_INLINE_MAX) {
            pthread_mutex_unlock(&G.mu);
            rc = -E2BIG;
            goto fail;
        }
        add(k, &r, opt->config);
    }
    p->next_pool = G.pools;
    G.pools = p;
    wake_thread();
    while (p->created < (unsigned)servers)
        wait_cv(p, NULL);
    rc = p->create_rc;
    if (rc < 0) {
        /* the ranks that did make theirs end them (destroy sends that) */
        pthread_mutex_unlock(&G.mu);
        cmp_mpi_pool_destroy(p);
        return rc;
    }
    pthread_mutex_unlock(&G.mu);
    *out = p;
    return 0;
fail:
    free(p->workers);
    free(p->held);
    free(p->answered);
    free(p->pids);
    free(p->npids);
    pthread_cond_destroy(&p->cv);
    free(p);
    return rc;
}

static int queue_task(struct cmp_mpi_pool *p, task *t, uint64_t *id)
{
    if (p->local) {
        int rc = t->bytes
                     ? cmp_pool_submit(p->local, t->bytes, t->len, id)
                     : cmp_pool_submitv_ref(p->local, t->iov, t->iovcnt, id, t->release, t->rarg);
        free(t->bytes);
        free(t->iov);
        free(t);
        if (rc == 0) {
            pthread_mutex_lock(&G.mu);
            p->outstanding++;
            pthread_mutex_unlock(&G.mu);
        }
        return rc;
    }
    pthread_mutex_lock(&G.mu);
    if (p->state != RUN || p->broken) {
        pthread_mutex_unlock(&G.mu);
        free(t->bytes);
        free(t->iov);
        free(t);
        return -EPIPE;
    }
    t->id = p->next_id++;
    if (id)
        *id = t->id; /* now: once unlocked, t is the thread's (sent and freed) */
    p->outstanding++;
    if (p->pt)
        p->pt->next = t;
    else
        p->ph = t;
    p->pt = t;
    wake_thread();
    pthread_mutex_unlock(&G.mu);
    return 0;
}

int cmp_mpi_pool_submitv(cmp_mpi_pool_t *p, const struct iovec *iov, int iovcnt, uint64_t *id)
{
    if (iovcnt < 0 || iovcnt > CMP_POOL_IOV_MAX)
        return -EINVAL;
    size_t len = 0;
    for (int i = 0; i < iovcnt; i++)
        len += iov[i].iov_len;
    task *t = calloc(1, sizeof *t);
    char *b = t ? malloc(len ? len : 1) : NULL;
    if (!b) {
        free(t);
        return -ENOMEM;
    }
    for (size_t i = 0, off = 0; i < (size_t)iovcnt; off += iov[i].iov_len, i++)
        memcpy(b + off, iov[i].iov_base, iov[i].iov_len);
    t->bytes = b;
    t->len = len;
    return queue_task(p, t, id);
}

int cmp_mpi_pool_submit(cmp_mpi_pool_t *p, const void *data, size_t len, uint64_t *id)
{
    struct iovec iov = {(void *)data, len};
    return cmp_mpi_pool_submitv(p, &iov, 1, id);
}

int cmp_mpi_pool_submitv_ref(cmp_mpi_pool_t *p, const struct iovec *iov, int iovcnt, uint64_t *id,
                             void (*release)(void *), void *arg)
{
    if (!release || iovcnt < 1 || iovcnt > CMP_POOL_IOV_MAX)
        return -EINVAL;
    size_t len = 0;
    for (int i = 0; i < iovcnt; i++)
        len += iov[i].iov_len;
    if (len < CMP__MPI_INLINE_MAX && !p->local) {
        /* small: a copy goes inline in a batch; the caller's memory is free now */
        int rc = cmp_mpi_pool_submitv(p, iov, iovcnt, id);
        if (rc == 0)
            release(arg);
        return rc;
    }
    task *t = calloc(1, sizeof *t);
    struct iovec *v = t ? malloc((size_t)iovcnt * sizeof *v) : NULL;
    if (!v) {
        free(t);
        return -ENOMEM;
    }
    memcpy(v, iov, (size_t)iovcnt * sizeof *v);
    *t = (task){.len = len, .iov = v, .iovcnt = iovcnt, .release = release, .rarg = arg};
    return queue_task(p, t, id);
}

static int next_local(struct cmp_mpi_pool *p, const struct timespec *deadline)
{
    cmp_pool_outcome_t o;
    int rc = cmp_pool_next(p->local, &o, p->opt.alloc, p->opt.alloc_arg, deadline);
    if (rc < 0)
        return rc;
    onode *n = new_outcome(o.id, o.status, 0);
    n->out.o = o;
    pthread_mutex_lock(&G.mu);
    push_outcome(p, n);
    pthread_mutex_unlock(&G.mu);
    return 0;
}

int cmp_mpi_pool_next(cmp_mpi_pool_t *p, cmp_mpi_outcome_t *out, const struct timespec *deadline)
{
    pthread_mutex_lock(&G.mu);
    for (;;) {
        onode *n = pop_outcome(p);
        if (n) {
            p->outstanding--;
            pthread_mutex_unlock(&G.mu);
            *out = n->out;
            free(n);
            return 0;
        }
        if (p->local) {
            pthread_mutex_unlock(&G.mu);
            int rc = next_local(p, deadline);
            if (rc < 0)
                return rc;
            pthread_mutex_lock(&G.mu);
            continue;
        }
        if (p->state != RUN && !p->outstanding) {
            pthread_mutex_unlock(&G.mu);
            return -ENOENT;
        }
        if (wait_cv(p, deadline) < 0) {
            pthread_mutex_unlock(&G.mu);
            return -ETIMEDOUT;
        }
    }
}

uint64_t cmp_mpi_pool_outstanding(cmp_mpi_pool_t *p)
{
    pthread_mutex_lock(&G.mu);
    uint64_t n = p->outstanding;
    pthread_mutex_unlock(&G.mu);
    return n;
}

unsigned cmp_mpi_pool_size(const cmp_mpi_pool_t *p)
{
    return p->total;
}

unsigned cmp_mpi_pool_pids(cmp_mpi_pool_t *p, pid_t *pids, unsigned max)
{
    if (p->local)
        return cmp_pool_pids(p->local, pids, max);
    unsigned n = 0;
    pthread_mutex_lock(&G.mu);
    for (int k = 1; k < cmp__mpi_size; k++)
        for (unsigned i = 0; i < p->npids[k] && n < max; i++)
            pids[n++] = (pid_t)p->pids[k][i];
    pthread_mutex_unlock(&G.mu);
    return n;
}

/* Frees a list of tasks no rank will see (their releases run: no lock held). */
static void free_tasks(task *gone)
{
    while (gone) {
        task *t = gone;
        gone = t->next;
        if (t->release)
            t->release(t->rarg);
        free(t->bytes);
        free(t->iov);
        free(t);
    }
}

long cmp_mpi_pool_cancel(cmp_mpi_pool_t *p, const uint64_t *ids, size_t n)
{
    if (p->local)
        return cmp_pool_cancel(p->local, ids, n);
    cmp__mpi_map want = {0};
    for (size_t i = 0; i < n; i++)
        if (cmp__mpi_map_put(&want, ids[i], 1) < 0) {
            cmp__mpi_map_free(&want);
            return -ENOMEM;
        }
    task *gone = NULL;
    long count = 0;
    pthread_mutex_lock(&G.mu);
    task **tp = &p->ph;
    p->pt = NULL;
    while (*tp) {
        task *t = *tp;
        if (cmp__mpi_map_take(&want, t->id, NULL)) {
            *tp = t->next;
            push_outcome(p, new_outcome(t->id, CMP_POOL_CANCELLED, 0));
            t->next = gone;
            gone = t;
            count++;
        } else {
            p->pt = t;
            tp = &t->next;
        }
    }
    /* the others, sent already: their ranks drop those no worker has
     * taken (they come out CANCELLED later, as the ranks answer) */
    for (size_t i = 0; i < want.cap; i++) {
        uint64_t rank;
        if (want.keys[i] && cmp__mpi_map_get(&p->inflight, want.keys[i], &rank) && !G.lost[rank]) {
            cmp__mpi_rec r = {.kind = CMP__MPI_CANCEL, .pool = p->pool_id, .id = want.keys[i]};
            add((int)rank, &r, NULL);
        }
    }
    wake_thread();
    pthread_mutex_unlock(&G.mu);
    cmp__mpi_map_free(&want);
    free_tasks(gone);
    return count;
}

int cmp_mpi_pool_close(cmp_mpi_pool_t *p)
{
    if (p->local)
        return cmp_pool_close(p->local);
    pthread_mutex_lock(&G.mu);
    if (p->state == RUN)
        p->state = CLOSED;
    pthread_cond_broadcast(&p->cv);
    wake_thread();
    pthread_mutex_unlock(&G.mu);
    return 0;
}

int cmp_mpi_pool_terminate(cmp_mpi_pool_t *p)
{
    if (p->local)
        return cmp_pool_terminate(p->local);
    pthread_mutex_lock(&G.mu);
    task *gone = terminate_locked(p);
    pthread_mutex_unlock(&G.mu);
    free_tasks(gone);
    return 0;
}

/* G.mu held: every task not yet out comes out CANCELLED; returns the
 * pending ones, for free_tasks once unlocked. */
static task *terminate_locked(struct cmp_mpi_pool *p)
{
    if (p->state == TERMINATED)
        return NULL;
    p->state = TERMINATED;
    task *gone = p->ph;
    p->ph = p->pt = NULL;
    for (task *t = gone; t; t = t->next)
        push_outcome(p, new_outcome(t->id, CMP_POOL_CANCELLED, 0));
    for (size_t i = 0; i < p->inflight.cap; i++) {
        uint64_t id = p->inflight.keys[i];
        if (id)
            push_outcome(p, new_outcome(id, CMP_POOL_CANCELLED, (int)p->inflight.vals[i]));
    }
    cmp__mpi_map_free(&p->inflight);
    memset(p->held, 0, (size_t)cmp__mpi_size * sizeof *p->held);
    wake_thread();
    return gone;
}

int cmp_mpi_pool_join(cmp_mpi_pool_t *p, const struct timespec *deadline)
{
    if (p->local)
        return cmp_pool_join(p->local, deadline);
    pthread_mutex_lock(&G.mu);
    int rc = 0;
    if (p->state == RUN)
        rc = -EINVAL;
    while (!rc && p->ended < (unsigned)cmp__mpi_size - 1 && G.started)
        rc = wait_cv(p, deadline);
    pthread_mutex_unlock(&G.mu);
    return rc;
}

void cmp_mpi_pool_destroy(cmp_mpi_pool_t *p)
{
    if (p->local) {
        cmp_pool_terminate(p->local);
        cmp_pool_join(p->local, NULL);
        cmp_pool_destroy(p->local);
    } else {
        cmp_mpi_pool_terminate(p);
        pthread_mutex_lock(&G.mu);
        /* terminate queued the ranks' TERMINATE; it must go out before the
         * pool leaves the list */
        while (!p->term_sent && G.started) {
            wake_thread();
            pthread_mutex_unlock(&G.mu);
            sched_yield();
            pthread_mutex_lock(&G.mu);
        }
        for (struct cmp_mpi_pool **pp = &G.pools; *pp; pp = &(*pp)->next_pool)
            if (*pp == p) {
                *pp = p->next_pool;
                break;
            }
        pthread_mutex_unlock(&G.mu);
    }
    onode *n;
    while ((n = pop_outcome(p))) {
        if (n->out.o.data)
            p->opt.free(p->opt.alloc_arg, n->out.o.data);
        free(n);
    }
    if (p->opt.flags & CMP_MPI_ORDERED) {
        for (size_t i = 0; i < p->early.cap; i++)
            if (p->early.keys[i]) {
                onode *e = (onode *)(uintptr_t)p->early.vals[i];
                if (e->out.o.data)
                    p->opt.free(p->opt.alloc_arg, e->out.o.data);
                free(e);
            }
    }
    cmp__mpi_map_free(&p->early);
    cmp__mpi_map_free(&p->inflight);
    free(p->workers);
    free(p->held);
    free(p->answered);
    for (int k = 0; p->pids && k < cmp__mpi_size; k++)
        free(p->pids[k]);
    free(p->pids);
    free(p->npids);
    pthread_cond_destroy(&p->cv);
    free(p);
}
