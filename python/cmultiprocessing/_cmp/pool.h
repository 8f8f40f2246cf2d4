/*
 * The Pool binding's parts, internal to the extension: pool.c (the Pool,
 * its results and iterators, who reads the outcomes), pool_worker.c (what
 * runs in a forked worker), pool_jobs.c (the tasks in flight),
 * pool_view.c (pool._pool) and pool_progress.c (progress=).
 */
#ifndef CMP_PY_POOL_H
#define CMP_PY_POOL_H

#include "_cmp.h"

/* A task is the message (kind, func, payload): APPLY (args, kwds), MAP (a
 * chunk of items), STARMAP (a chunk of argument tuples), CLOUD (the whole
 * task pickled by cloudpickle, in func). func is the function's own
 * encoding (bytes), unpickled once per worker. */
enum { KIND_APPLY, KIND_MAP, KIND_STARMAP, KIND_CLOUD };

/* ---- the worker side (pool_worker.c) ---- */

/* What the workers need of their pool (the arg of its cmp_pool_options_t),
 * set before they fork. initializer NULL: none; initargs a tuple. */
typedef struct {
    cmp_py_state *st;
    PyObject *initializer, *initargs;
    /* spawn and forkserver (CMP_PY_SPAWN...): the workers are started by
     * cmp_py_pool_worker_start, with the pool's max_tasks; CMP_PY_FORK:
     * forked. creating: inside cmp_pool_create, where a failed start
     * leaves its exception set for Pool() to raise. */
    int method, creating;
    unsigned long long max_tasks;
} cmp_py_pool_work;

/* Loads the stdlib's ExceptionWithTraceback and MaybeEncodingError, which
 * carry a worker's failures; before the first pool's workers fork. 0, or
 * -1 with an exception. */
int cmp_py_pool_worker_setup(void);
/* The cmp_pool_options_t callbacks, arg a cmp_py_pool_work. */
int cmp_py_pool_worker_task(void *arg, const void *data, size_t len, cmp_pool_result_t *out);
int cmp_py_pool_worker_init(void *arg, cmp_pool_result_t *out);
void cmp_py_pool_worker_wait_hook(void *arg, int waiting);
void cmp_py_pool_worker_exit_hook(void *arg);
void *cmp_py_pool_worker_task_alloc(void *arg, size_t len);
int cmp_py_pool_worker_task_owned(void *arg, PyObject *owner, const void *data, size_t len,
                                  cmp_pool_result_t *out);
void cmp_py_pool_worker_fork_hook(void *arg, int phase);
/* The note a task's exception gets (NULL: none); 0, or -1 (memory). */
int cmp_py_pool_worker_set_where(const char *where);

/* ---- the pool underneath (pool.c) ---- */

/* What a Pool calls of the pool that runs its tasks: libcmp's cmp_pool_*
 * by default; another backend (cmultiprocessing.mpi: the pool spread over
 * MPI ranks) passes its own as Pool(..., _backend=capsule), the capsule
 * named CMP_PY_POOL_BACKEND holding a cmp_py_pool_backend. Same contracts
 * as the cmp_pool_* functions they stand for. An outcome of status
 * CMP_POOL_LOST may carry text (data, len) that says where the worker ran:
 * WorkerLostError's message ends with it. pids may be NULL (none known). */
typedef struct cmp_py_pool_ops {
    int (*create)(void *ctx, void **pool, const cmp_pool_options_t *opt);
    int (*submitv)(void *pool, const struct iovec *iov, int iovcnt, uint64_t *id);
    int (*submitv_ref)(void *pool, const struct iovec *iov, int iovcnt, uint64_t *id,
                       void (*release)(void *), void *arg);
    int (*next)(void *pool, cmp_pool_outcome_t *out, cmp_ring_alloc_fn alloc, void *arg,
                const struct timespec *deadline);
    long (*cancel)(void *pool, const uint64_t *ids, size_t n);
    int (*close)(void *pool);
    int (*terminate)(void *pool);
    int (*join)(void *pool, const struct timespec *deadline);
    void (*destroy)(void *pool);
    unsigned (*size)(const void *pool);
    unsigned (*pids)(void *pool, pid_t *pids, unsigned max);
} cmp_py_pool_ops;

#define CMP_PY_POOL_BACKEND "cmultiprocessing._cmp.pool_backend"
typedef struct {
    const cmp_py_pool_ops *ops;
    void *ctx; /* given to create */
} cmp_py_pool_backend;

/* What the extension offers a backend that builds Pool workers elsewhere
 * (a serving MPI rank): the capsule _cmp._pool_api, named CMP_PY_POOL_API.
 * work_new: a cmp_py_pool_work for (initializer or None, initargs), to be
 * the arg of a cmp_pool_options_t with the callbacks below; NULL with an
 * exception. set_where: text the workers add as a note to a task's
 * exception (where it ran), or NULL. GIL held for both. */
#define CMP_PY_POOL_API "cmultiprocessing._cmp._pool_api"
#define CMP_PY_POOL_API_VERSION 2
typedef struct {
    unsigned version;
    cmp_pool_task_fn task;
    cmp_pool_init_fn init;
    cmp_pool_wait_fn wait_hook;
    cmp_pool_fork_fn fork_hook;
    void *(*task_alloc)(void *arg, size_t len);
    cmp_py_pool_work *(*work_new)(PyObject *initializer, PyObject *initargs);
    int (*set_where)(const char *where);
    /* task, when the task's bytes (data, len) are memory of owner (an
     * object with a writable buffer, from which data is the start): its
     * arrays are decoded as views of owner's memory, no copy. GIL held. */
    int (*task_owned)(void *arg, PyObject *owner, const void *data, size_t len,
                      cmp_pool_result_t *out);
} cmp_py_pool_api;

/* ---- pool._pool (pool_view.c) ---- */

/* The pids of pool's running workers (pool.c), a new list, or NULL with an
 * exception. */
PyObject *cmp_py_pool_pids(PyObject *pool);
/* pool._pool: a new list of one view per running worker, or NULL with an
 * exception. init: once, with the module; 0, or -1 with an exception. */
PyObject *cmp_py_pool_views(PyObject *pool);
int cmp_py_pool_view_init(PyObject *module);
/* cmp_pool_options_t.start_worker for spawn and forkserver: a new
 * interpreter (cmultiprocessing._spawn) that serves as worker index. */
int cmp_py_pool_worker_start(void *arg, cmp_pool_t *pool, unsigned index, cmp_process_t *out);
/* The worker's module functions (_pool_worker_serve). */
int cmp_py_pool_worker_init_module(PyObject *module);

/* ---- progress= (pool_progress.c) ---- */

typedef struct {
    PyObject *fn;  /* the callable, or NULL */
    PyObject *bar; /* the tqdm bar, or NULL */
    int line;      /* the plain stderr line */
    Py_ssize_t total, last;
} cmp_py_progress;

/* progress: None/False (nothing), True, or a callable; total -1 when
 * unknown. 0, or -1 with TypeError. */
int cmp_py_progress_start(cmp_py_progress *pr, PyObject *progress, Py_ssize_t total);
/* done so far; 0, or -1 with the callable's or the bar's exception. */
int cmp_py_progress_update(cmp_py_progress *pr, Py_ssize_t done);
void cmp_py_progress_end(cmp_py_progress *pr);

/* ---- the tasks in flight (pool_jobs.c) ---- */

/* The pool's tasks in flight, task id (never 0) -> (job, chunk index)
 * (pool_jobs.c). GIL held for every call; the table holds a reference to
 * each job. add: 0, or -1 with MemoryError. take: removes the task, 1
 * with *out filled (its job reference now the caller's) or 0 when the id
 * is unknown. peek: the job, borrowed, or NULL. clear: drops every job;
 * the table stays usable. */
typedef struct {
    uint64_t id;
    PyObject *job;
    Py_ssize_t index;
} cmp_py_job_ref;
typedef struct {
    cmp_py_job_ref *slots;
    size_t cap; /* a power of two */
    size_t len;
} cmp_py_jobs;
int cmp_py_jobs_init(cmp_py_jobs *t);
int cmp_py_jobs_add(cmp_py_jobs *t, uint64_t id, PyObject *job, Py_ssize_t index);
int cmp_py_jobs_take(cmp_py_jobs *t, uint64_t id, cmp_py_job_ref *out);
PyObject *cmp_py_jobs_peek(const cmp_py_jobs *t, uint64_t id);
/* The ids of job's tasks in flight (PyMem_Free them), *n of them; NULL
 * when out of memory. */
uint64_t *cmp_py_jobs_ids_of(const cmp_py_jobs *t, PyObject *job, size_t *n);
int cmp_py_jobs_traverse(const cmp_py_jobs *t, visitproc visit, void *arg);
void cmp_py_jobs_clear(cmp_py_jobs *t);

#endif
