/*
 * libcmp_mpi: the worker pool of cmp.h spread over Open MPI ranks.
 *
 * Rank 0 submits byte tasks; every other rank serves: it runs a local
 * cmp_pool (one worker per CPU it may run on, by default) and the tasks
 * reach it by MPI, once per rank, then a worker through shared memory.
 * Scheduling is by credit: rank 0 keeps at most depth x (that rank's
 * workers) tasks in flight at each rank and sends the next as results come
 * back, so a slow rank gets fewer tasks instead of holding a map back.
 * Outcomes come back in any order (or in submission order, with
 * CMP_MPI_ORDERED), with the rank and host that ran them. A worker killed
 * on a rank fails its task with the local pool's CMP_POOL_LOST.
 *
 * Threads: rank 0 runs one communication thread of ours, the only thread
 * that calls MPI while pools exist (MPI is initialized with at least
 * MPI_THREAD_SERIALIZED). A server rank calls MPI from cmp_mpi_serve only.
 *
 * Its own library (build/libcmp_mpi.{a,so}, linked with libcmp and MPI),
 * so that libcmp keeps no MPI dependency.
 */
#ifndef CMP_MPI_H
#define CMP_MPI_H

#include "cmp.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cmp_mpi_pool cmp_mpi_pool_t;

/* ---- the job ----------------------------------------------------------- */

/* Initializes MPI (MPI_Init_thread, at least MPI_THREAD_SERIALIZED) unless
 * it is already initialized; argc/argv may be NULL. Collective: every rank
 * calls it (it makes libcmp_mpi's own communicator, a duplicate of
 * MPI_COMM_WORLD whose errors return). Returns this process's rank (>= 0),
 * or -EPROTO when MPI fails or offers too little threading. */
int cmp_mpi_init(int *argc, char ***argv);
/* The number of ranks, this one's rank, and this host's name (MPI's
 * processor name), after cmp_mpi_init. */
int cmp_mpi_size(void);
int cmp_mpi_rank(void);
const char *cmp_mpi_host(void);
/* Rank 0: tells every serving rank to stop (their pools are terminated),
 * stops the communication thread, then finalizes MPI (if cmp_mpi_init
 * initialized it). Other ranks: finalizes MPI. Pools still open are
 * terminated; destroy them before or after, never during. Returns 0. */
int cmp_mpi_finalize(void);

/* ---- serving (ranks other than 0) -------------------------------------- */

/* A server builds each pool rank 0 creates from config, the bytes given to
 * cmp_mpi_pool_create: fill *opt (workers, task, ...; opt->workers is
 * already set to what rank 0 asked for this rank, 0 for "my CPUs").
 * Returns 0, or nonzero when the pool can't be made (rank 0's create then
 * fails with -EPROTO). */
typedef int (*cmp_mpi_configure_fn)(void *arg, const void *config, size_t len,
                                    cmp_pool_options_t *opt);

typedef struct cmp_mpi_serve_options {
    cmp_mpi_configure_fn configure; /* NULL: use pool below as it is */
    const cmp_pool_options_t *pool; /* without configure: required */
    void *arg;                      /* given to configure */
} cmp_mpi_serve_options_t;

/* A task of CMP_MPI_BIG bytes or more is received from MPI straight into
 * memory the serving rank shares with its workers, and the task function
 * reads it there: the pointer it gets is valid until it returns, after
 * which the serving rank reuses that memory. A task function that needs
 * the bytes longer (its arrays decoded in place) calls cmp_mpi_task_keep()
 * while it runs: the memory is then its worker's until
 * cmp_mpi_task_release(handle), which may come after later tasks.
 * keep returns NULL for a task whose bytes are the worker's own copy
 * (smaller tasks, and big ones when the shared memory is full): copy what
 * you keep then. release(NULL) does nothing. */
void *cmp_mpi_task_keep(void);
void cmp_mpi_task_release(void *handle);

/* Serves rank 0 until it calls cmp_mpi_finalize (or destroys the job).
 * Returns 0 then, -EINVAL on rank 0, or -EPROTO when MPI fails. */
int cmp_mpi_serve(const cmp_mpi_serve_options_t *opt);

/* ---- the pool (rank 0) -------------------------------------------------- */

/* Outcomes in submission order (cmp_mpi_pool_next holds back those that
 * come early). Default: as they come. */
#define CMP_MPI_ORDERED 1u

typedef struct cmp_mpi_pool_options {
    unsigned workers;   /* across every serving rank; 0: each rank its CPUs */
    unsigned depth;     /* tasks in flight per worker of a rank; 0: 2 */
    unsigned flags;     /* CMP_MPI_ORDERED */
    const void *config; /* given to each server's configure */
    size_t config_len;
    /* Result buffers (NULL: malloc); an outcome's data is the caller's,
     * to free as this allocator's pair frees. Called from our thread. */
    void *(*alloc)(void *arg, size_t len);
    void (*free)(void *arg, void *data); /* NULL: free() */
    void *alloc_arg;
    /* One process only (a job of one rank): the pool runs locally with
     * these options, as a cmp_pool would. NULL: create fails -ENODEV
     * then. */
    const cmp_pool_options_t *local;
} cmp_mpi_pool_options_t;

/* How a task ended: the local pool's outcome, plus where it ran. */
typedef struct cmp_mpi_outcome {
    cmp_pool_outcome_t o; /* data is from opt->alloc (NULL when len is 0) */
    int rank;             /* the serving rank (0: run locally, or none) */
    const char *host;     /* its host, valid while the job runs */
    /* o.status CMP_POOL_LOST because the whole rank was lost (o.pid 0):
     * nothing came from it for CMP_MPI_RANK_TIMEOUT seconds while it held
     * tasks (see below) */
    int rank_lost;
} cmp_mpi_outcome_t;

/* A whole rank lost (its host gone): Open MPI 4.1 ends the job, unless
 * mpiexec runs with --enable-recovery. Then the job goes on: rank 0, having
 * heard nothing from a rank that holds tasks for CMP_MPI_RANK_TIMEOUT
 * seconds (the environment's, else 10; a serving rank with tasks says
 * something every 0.25 s), fails the tasks it held (LOST, rank_lost 1),
 * sends it no more and goes on with the others; tasks of a pool whose every
 * rank is lost fail too. MPI cannot be finalized then (it would wait for
 * the lost rank): cmp_mpi_finalize skips it, and mpiexec ends the job as
 * failed once rank 0 has finished. */
#define CMP_MPI_RANK_TIMEOUT_ENV "CMP_MPI_RANK_TIMEOUT"

/* Creates the pool on every serving rank and waits for them to report
 * their workers. Returns 0, -EINVAL (not rank 0, or no job), -ENODEV
 * (one rank and no local options), -EPROTO (a rank could not make its
 * pool), or a negative errno. */
int cmp_mpi_pool_create(cmp_mpi_pool_t **out, const cmp_mpi_pool_options_t *opt);

/* As cmp_pool_submit / submitv / submitv_ref: never waits for a rank.
 * A task of CMP_MPI_BIG bytes or more travels as its own MPI messages,
 * one per piece, straight from the caller's memory with submitv_ref. */
#define CMP_MPI_BIG ((size_t)64 << 10)
int cmp_mpi_pool_submit(cmp_mpi_pool_t *pool, const void *task, size_t len, uint64_t *id);
int cmp_mpi_pool_submitv(cmp_mpi_pool_t *pool, const struct iovec *iov, int iovcnt, uint64_t *id);
int cmp_mpi_pool_submitv_ref(cmp_mpi_pool_t *pool, const struct iovec *iov, int iovcnt,
                             uint64_t *id, void (*release)(void *), void *arg);

/* Waits for the next outcome (see CMP_MPI_ORDERED). Returns 0, -ETIMEDOUT,
 * -ENOENT once the pool is closed or terminated and every task is out. */
int cmp_mpi_pool_next(cmp_mpi_pool_t *pool, cmp_mpi_outcome_t *out,
                      const struct timespec *deadline);

uint64_t cmp_mpi_pool_outstanding(cmp_mpi_pool_t *pool);
/* Workers across the serving ranks (as they reported them). */
unsigned cmp_mpi_pool_size(const cmp_mpi_pool_t *pool);
/* Up to max pids of the workers running on the serving ranks (each in its
 * host's pid space), as they last reported them (within ~20 ms of a
 * change). Returns how many. */
unsigned cmp_mpi_pool_pids(cmp_mpi_pool_t *pool, pid_t *pids, unsigned max);
/* Cancels those of the tasks not yet sent to a rank: each comes out as
 * CMP_POOL_CANCELLED. Returns how many. The ranks holding the others drop
 * those no worker has taken yet: they come out CANCELLED later, as the
 * ranks answer (not counted). */
long cmp_mpi_pool_cancel(cmp_mpi_pool_t *pool, const uint64_t *ids, size_t n);
/* close: no more tasks; each rank closes its pool once every task is
 * done. terminate: the ranks terminate their pools; every task not yet
 * out comes out CANCELLED. Both return 0. */
int cmp_mpi_pool_close(cmp_mpi_pool_t *pool);
int cmp_mpi_pool_terminate(cmp_mpi_pool_t *pool);
/* After close or terminate: waits until every rank has ended its pool.
 * Returns 0, -ETIMEDOUT, or -EINVAL while the pool is running. */
int cmp_mpi_pool_join(cmp_mpi_pool_t *pool, const struct timespec *deadline);
/* Terminates the pool if it still runs (without waiting) and frees it;
 * the data of outcomes not taken is freed with opt->free. */
void cmp_mpi_pool_destroy(cmp_mpi_pool_t *pool);

#ifdef __cplusplus
}
#endif
#endif
