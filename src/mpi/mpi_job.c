/*
 * The job: MPI's initialization and end, and the wire both sides share
 * (batches of records, sends in flight, receives).
 */
#include "mpi_internal.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

int cmp__mpi_rank = -1, cmp__mpi_size = 0;
int cmp__mpi_lost;
MPI_Comm cmp__mpi_comm = MPI_COMM_NULL;
static int we_initialized;
static char host[MPI_MAX_PROCESSOR_NAME + 1];

int cmp_mpi_init(int *argc, char ***argv)
{
    if (cmp__mpi_rank >= 0)
        return cmp__mpi_rank;
    int inited = 0, provided = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        /* SERIALIZED is what we need (one thread of ours calls MPI at a
         * time); MULTIPLE lets the caller use MPI too, in its own threads. */
        if (MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
            return -EPROTO;
        we_initialized = 1;
    } else {
        MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_SERIALIZED)
        return -EPROTO;
    /* a communicator of ours: the caller's MPI traffic never meets ours,
     * and an error (a rank gone, under mpiexec --enable-recovery) comes
     * back to us instead of aborting the job */
    if (MPI_Comm_dup(MPI_COMM_WORLD, &cmp__mpi_comm) != MPI_SUCCESS ||
        MPI_Comm_set_errhandler(cmp__mpi_comm, MPI_ERRORS_RETURN) != MPI_SUCCESS)
        return -EPROTO;
    MPI_Comm_rank(cmp__mpi_comm, &cmp__mpi_rank);
    MPI_Comm_size(cmp__mpi_comm, &cmp__mpi_size);
    int n = 0;
    MPI_Get_processor_name(host, &n);
    host[n < 0 ? 0 : n] = '\0';
    return cmp__mpi_rank;
}

int cmp_mpi_size(void)
{
    return cmp__mpi_size;
}

int cmp_mpi_rank(void)
{
    return cmp__mpi_rank;
}

const char *cmp_mpi_host(void)
{
    return host;
}

int cmp_mpi_finalize(void)
{
    if (cmp__mpi_rank < 0)
        return 0;
    if (cmp__mpi_rank == 0)
        cmp__mpi_pool_shutdown(); /* tells the servers to stop */
    /* what we sent must reach them before MPI goes */
    while (cmp__mpi_sends_pending()) {
        cmp__mpi_release rel[16];
        int nrel = 0;
        cmp__mpi_sends_test(rel, 16, &nrel);
        for (int i = 0; i < nrel; i++)
            rel[i].fn(rel[i].arg);
        sched_yield();
    }
    /* With a rank gone, Open MPI 4.1 (no ULFM) cannot finalize: its
     * MPI_Finalize waits for every rank. The job then ends without it, and
     * mpiexec ends it as failed (with the ranks still there). */
    if (we_initialized && !cmp__mpi_lost) {
        MPI_Comm_free(&cmp__mpi_comm);
        MPI_Finalize();
    }
    cmp__mpi_rank = -1;
    cmp__mpi_size = 0;
    return 0;
}

long cmp__mpi_backoff_ns(unsigned idle, int busy)
{
    /* Busy (tasks in flight): a result is due soon; yield a few turns, then
     * sleep briefly, up to 200 µs, so that polling never takes a core the
     * workers need. Idle: up to 5 ms. */
    if (idle < 64)
        return 0;
    long ns = 10000L << ((idle - 64) / 16 > 8 ? 8 : (idle - 64) / 16);
    long cap = busy ? 200000L : 5000000L;
    return ns > cap ? cap : ns;
}

/* ---- batches ----------------------------------------------------------- */

#define PAD8(n) (((n) + 7u) & ~(size_t)7u)

int cmp__mpi_batch_add(cmp__mpi_batch *b, const cmp__mpi_rec *rec, const void *data)
{
    size_t inl = rec->npieces ? 0 : (size_t)rec->len;
    size_t need = b->len + sizeof *rec + PAD8(inl);
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < need)
            cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb)
            return -ENOMEM;
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, rec, sizeof *rec);
    if (inl)
        memcpy(b->buf + b->len + sizeof *rec, data, inl);
    b->len = need;
    return 0;
}

int cmp__mpi_batch_flush(cmp__mpi_batch *b, int dest)
{
    if (!b->len)
        return 0;
    int rc = cmp__mpi_send(dest, CMP__MPI_TAG_BATCH, b->buf, b->len, 1, NULL, NULL);
    if (rc < 0)
        return rc;
    b->buf = NULL;
    b->len = b->cap = 0;
    return 0;
}

int cmp__mpi_batch_next(const char *buf, size_t len, size_t *off, cmp__mpi_rec *rec,
                        const char **data)
{
    if (*off >= len)
        return 0;
    if (len - *off < sizeof *rec)
        return -EPROTO;
    memcpy(rec, buf + *off, sizeof *rec);
    size_t inl = rec->npieces ? 0 : (size_t)rec->len;
    if (inl > len || len - *off - sizeof *rec < PAD8(inl))
        return -EPROTO;
    *data = buf + *off + sizeof *rec;
    *off += sizeof *rec + PAD8(inl);
    return 1;
}

/* ---- sends in flight ----------------------------------------------------- */

typedef struct {
    void *buf;
    int own, dest;
    void (*release)(void *);
    void *rarg;
} send_slot;

static MPI_Request *reqs;
static send_slot *slots;
static int nsends, capsends;

int cmp__mpi_send(int dest, int tag, void *buf, size_t len, int own, void (*release)(void *),
                  void *rarg)
{
    if (nsends == capsends) {
        int cap = capsends ? capsends * 2 : 64;
        MPI_Request *nr = realloc(reqs, (size_t)cap * sizeof *nr);
        if (!nr)
            return -ENOMEM;
        reqs = nr;
        send_slot *ns = realloc(slots, (size_t)cap * sizeof *ns);
        if (!ns)
            return -ENOMEM;
        slots = ns;
        capsends = cap;
    }
    /* counts are int: a piece is at most INT_MAX bytes (the sender splits) */
    if (MPI_Isend(buf, (int)len, MPI_BYTE, dest, tag, cmp__mpi_comm, &reqs[nsends]) != MPI_SUCCESS)
        return -EPROTO;
    slots[nsends] = (send_slot){buf, own, dest, release, rarg};
    nsends++;
    return 0;
}

int cmp__mpi_sends_test(cmp__mpi_release *rel, int max, int *nrel)
{
    *nrel = 0;
    if (!nsends)
        return 0;
    int done = 0;
    for (int i = 0; i < nsends;) {
        int flag = 0;
        if (slots[i].release && *nrel == max) {
            i++;
            continue;
        }
        MPI_Test(&reqs[i], &flag, MPI_STATUS_IGNORE);
        if (!flag) {
            i++;
            continue;
        }
        if (slots[i].own)
            free(slots[i].buf);
        if (slots[i].release)
            rel[(*nrel)++] = (cmp__mpi_release){slots[i].release, slots[i].rarg};
        done++;
        nsends--;
        reqs[i] = reqs[nsends];
        slots[i] = slots[nsends];
    }
    return done;
}

int cmp__mpi_sends_pending(void)
{
    return nsends;
}

void cmp__mpi_sends_forget(int dest)
{
    for (int i = 0; i < nsends;) {
        if (slots[i].dest != dest) {
            i++;
            continue;
        }
        /* MPI may still read the buffer (the send never completes): it and
         * its release are given up, not reused */
        MPI_Request_free(&reqs[i]);
        nsends--;
        reqs[i] = reqs[nsends];
        slots[i] = slots[nsends];
    }
}

/* ---- receives ------------------------------------------------------------ */

int cmp__mpi_recv_batch(int src, char **buf, size_t *len, int *from)
{
    int flag = 0, count = 0;
    MPI_Status st;
    if (MPI_Iprobe(src, CMP__MPI_TAG_BATCH, cmp__mpi_comm, &flag, &st) != MPI_SUCCESS)
        return -EPROTO;
    if (!flag)
        return 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    char *b = malloc(count ? (size_t)count : 1);
    if (!b)
        return -ENOMEM;
    if (MPI_Recv(b, count, MPI_BYTE, st.MPI_SOURCE, CMP__MPI_TAG_BATCH, cmp__mpi_comm,
                 MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        free(b);
        return -EPROTO;
    }
    *buf = b;
    *len = (size_t)count;
    *from = st.MPI_SOURCE;
    return 1;
}

int cmp__mpi_recv_pieces(int src, char *buf, size_t len, unsigned npieces)
{
    size_t off = 0;
    for (unsigned i = 0; i < npieces; i++) {
        MPI_Status st;
        int count = 0;
        if (MPI_Probe(src, CMP__MPI_TAG_PIECE, cmp__mpi_comm, &st) != MPI_SUCCESS)
            return -EPROTO;
        MPI_Get_count(&st, MPI_BYTE, &count);
        if ((size_t)count > len - off)
            return -EPROTO;
        if (MPI_Recv(buf + off, count, MPI_BYTE, src, CMP__MPI_TAG_PIECE, cmp__mpi_comm,
                     MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return -EPROTO;
        off += (size_t)count;
    }
    return off == len ? 0 : -EPROTO;
}

/* ---- the map ------------------------------------------------------------- */

static size_t slot_of(uint64_t key, size_t cap)
{
    key *= 0x9E3779B97F4A7C15ull; /* ids are consecutive: spread them */
    return (size_t)(key >> 17) & (cap - 1);
}

int cmp__mpi_map_put(cmp__mpi_map *m, uint64_t key, uint64_t val)
{
    if ((m->len + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        uint64_t *k = calloc(cap, sizeof *k), *v = calloc(cap, sizeof *v);
        if (!k || !v) {
            free(k);
            free(v);
            return -ENOMEM;
        }
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->keys[i])
                continue;
            size_t j = slot_of(m->keys[i], cap);
            while (k[j])
                j = (j + 1) & (cap - 1);
            k[j] = m->keys[i];
            v[j] = m->vals[i];
        }
        free(m->keys);
        free(m->vals);
        m->keys = k;
        m->vals = v;
        m->cap = cap;
    }
    size_t j = slot_of(key, m->cap);
    while (m->keys[j] && m->keys[j] != key)
        j = (j + 1) & (m->cap - 1);
    if (!m->keys[j])
        m->len++;
    m->keys[j] = key;
    m->vals[j] = val;
    return 0;
}

int cmp__mpi_map_get(const cmp__mpi_map *m, uint64_t key, uint64_t *val)
{
    if (!m->cap)
        return 0;
    for (size_t j = slot_of(key, m->cap); m->keys[j]; j = (j + 1) & (m->cap - 1))
        if (m->keys[j] == key) {
            *val = m->vals[j];
            return 1;
        }
    return 0;
}

int cmp__mpi_map_take(cmp__mpi_map *m, uint64_t key, uint64_t *val)
{
    if (!m->cap)
        return 0;
    size_t mask = m->cap - 1, j = slot_of(key, m->cap);
    while (m->keys[j] != key) {
        if (!m->keys[j])
            return 0;
        j = (j + 1) & mask;
    }
    if (val)
        *val = m->vals[j];
    m->len--;
    /* backward-shift deletion: no tombstones, lookups stay short. The
     * entry at k may fill the hole at i when i lies in [its home, k). */
    size_t i = j;
    for (size_t k = (i + 1) & mask; m->keys[k]; k = (k + 1) & mask) {
        size_t home = slot_of(m->keys[k], m->cap);
        if (((k - home) & mask) >= ((k - i) & mask)) {
            m->keys[i] = m->keys[k];
            m->vals[i] = m->vals[k];
            i = k;
        }
    }
    m->keys[i] = 0;
    return 1;
}

void cmp__mpi_map_free(cmp__mpi_map *m)
{
    free(m->keys);
    free(m->vals);
    *m = (cmp__mpi_map){0};
}

/* ---- pieces -------------------------------------------------------------- */

unsigned cmp__mpi_npieces(const struct iovec *iov, int iovcnt)
{
    unsigned n = 0;
    for (int i = 0; i < iovcnt; i++)
        n += (unsigned)((iov[i].iov_len + CMP__MPI_PIECE_MAX - 1) / CMP__MPI_PIECE_MAX);
    return n;
}

/* The release of a multi-piece send runs once its last piece is sent. */
typedef struct {
    unsigned left;
    void (*fn)(void *);
    void *arg;
} piece_group;

static void piece_done(void *arg)
{
    piece_group *g = arg;
    if (--g->left)
        return;
    if (g->fn)
        g->fn(g->arg);
    free(g);
}

/* A release queued by cmp__mpi_sends_test for a piece: runs at once (it only
 * counts), so the caller's release runs when the group's last is done. */
static void piece_release(void *arg)
{
    piece_done(arg);
}

int cmp__mpi_send_pieces(int dest, const struct iovec *iov, int iovcnt, void (*release)(void *),
                         void *rarg)
{
    piece_group *g = malloc(sizeof *g);
    if (!g)
        return -ENOMEM;
    *g = (piece_group){cmp__mpi_npieces(iov, iovcnt) + 1, NULL, rarg};
    for (int i = 0; i < iovcnt; i++) {
        for (size_t off = 0; off < iov[i].iov_len; off += CMP__MPI_PIECE_MAX) {
            size_t n = iov[i].iov_len - off;
            n = n > CMP__MPI_PIECE_MAX ? CMP__MPI_PIECE_MAX : n;
            int rc = cmp__mpi_send(dest, CMP__MPI_TAG_PIECE, (char *)iov[i].iov_base + off, n, 0,
                                   piece_release, g);
            if (rc < 0)
                return rc; /* g stays with the sends in flight */
        }
    }
    g->fn = release;
    piece_done(g); /* the hold taken while sending */
    return 0;
}
