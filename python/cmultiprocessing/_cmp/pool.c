/*
 * Pool: multiprocessing.pool.Pool on libcmp's worker pool (cmp_pool_*).
 *
 * The parts:
 *  - Pool, the object the user holds, and a _PoolCore that does the work:
 *    the cmp_pool, the table of jobs in flight and the result thread. The
 *    thread and the results hold the core, not the Pool, so a running Pool
 *    that is garbage collected can warn (ResourceWarning, as the stdlib)
 *    and terminate its workers.
 *  - Tasks cross as messages of serialize.c: (kind, func, payload), kind
 *    APPLY (args, kwds), MAP (a chunk of items), STARMAP (a chunk of
 *    argument tuples). A result is the value (a list for a chunk); a
 *    failure is the exception, pickled as the stdlib's ExceptionWithTraceback
 *    so that the parent re-raises it with the remote traceback as its
 *    __cause__, or a MaybeEncodingError when it cannot be pickled.
 *  - The worker side is pool_worker.c (it runs in the forked workers, with
 *    the GIL, released around each wait for a task); the table of tasks in
 *    flight pool_jobs.c; progress= pool_progress.c (pool.h joins them).
 *  - Outcomes are read (cmp_pool_next, GIL released) by one thread at a
 *    time, the reader, which decodes each, completes its job and wakes the
 *    threads waiting in get()/wait()/next() (one condition variable per
 *    pool). A thread that waits for a result is the reader itself whenever
 *    the role is free: its result then takes one hand-off (worker to it),
 *    not two (worker to a result thread to it), with no switch of the GIL
 *    between threads. apply(), map() and starmap() leave their tasks to
 *    their caller (sync tasks; a long map only once it is submitted, so
 *    that the result thread feeds the workers meanwhile). The pool's result
 *    thread reads when a task is out that no caller waits for (apply_async,
 *    map_async, imap, after close), and no waiting thread read in the last
 *    READER_GRACE_NS; it alone runs the callbacks, as the stdlib's result
 *    handler does: an outcome with callbacks that another reader takes is
 *    handed to it (`deferred`).
 *  - A task whose worker died (CMP_POOL_LOST) fails with WorkerLostError,
 *    naming the signal or the exit code; a failed initializer fails every
 *    task with InitializerError, whose __cause__ is the initializer's
 *    exception, and the pool starts no more workers.
 */
#include "pool.h"
#include "structmember.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/uio.h>

enum { POOL_RUN, POOL_CLOSE, POOL_TERMINATE };
enum { READER_NONE, READER_RESULT_THREAD, READER_WAITER };
enum { RT_BUSY, RT_IDLE, RT_GRACE };

typedef struct PoolCore PoolCore;

typedef struct {
    PyObject_HEAD
    PoolCore *core;
    PyObject *callback, *error_callback;
    PyObject *value; /* the result, or the exception */
    int ready, success;
    /* apply(), map(), starmap(): the caller waits for this job, and reads
     * the pool's outcomes while it does (see core_wait) */
    int sync;
    Py_ssize_t sync_left; /* its tasks counted in PoolCore.sync_tasks */
    /* MapResult */
    Py_ssize_t remaining; /* chunks still out */
    Py_ssize_t chunksize, length;
    PyObject *weakreflist;
} ResultObject;

struct PoolCore {
    PyObject_HEAD
    void *pool;                 /* ops's: a cmp_pool_t by default */
    const cmp_py_pool_ops *ops; /* libcmp's, or a backend's (_backend=) */
    cmp_py_state *st;
    cmp_py_jobs jobs;                      /* task id -> (job, chunk index) */
    PyObject *feeders;                     /* weakrefs to the imap iterators whose input is left */
    PyObject *last_func, *last_func_bytes; /* see function_bytes */
    cmp_py_pool_work work;                 /* what the workers need: the initializer */
    pthread_mutex_t mu;                    /* with cv: completions, handler_done; and below */
    pthread_cond_t cv;
    uint64_t completions;
    int handler_done;
    int state; /* POOL_*: written with the GIL and mu held */
    /* The reader role (mu; rt_cv wakes the result thread): */
    int reader;                   /* READER_* */
    unsigned long reader_tid;     /* the thread that holds the role */
    int reading_waiters;          /* threads in core_wait that read */
    int rt_wait;                  /* RT_*: how the result thread waits */
    int64_t waiter_left_ns;       /* when a reading waiter last left */
    Py_ssize_t ntasks;            /* submitted, not yet out of cmp_pool_next */
    Py_ssize_t sync_tasks;        /* of those, the ones a sync waiter awaits */
    cmp_pool_outcome_t *deferred; /* taken by another reader, for the result thread */
    size_t ndeferred, cap_deferred;
    /* deferred outcomes not yet delivered (queued or in the result thread's
     * hands): a job may complete there, so meanwhile a waiter waits on cv
     * rather than in cmp_pool_next, where nothing would wake it */
    size_t deferred_busy;
    unsigned long rt_tid; /* the result thread (delivers the deferred itself) */
    pthread_cond_t rt_cv;
    unsigned processes;
    pid_t owner;
};

typedef struct {
    PyObject_HEAD
    PoolCore *core;
    PyObject *weakreflist;
    int shown_state; /* POOL_* written to _state, or -1: the core's (Pool_set_state) */
} PoolObject;

static PyTypeObject *Core_type, *Pool_type, *ApplyResult_type, *MapResult_type;
static PyObject *WorkerLostError, *InitializerError;

/* ---- waiting for jobs, and the reader role ---------------------------------- */

static void core_signal(PoolCore *c)
{
    pthread_mutex_lock(&c->mu);
    c->completions++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* mu held: whether the result thread should read: a task is out that no
 * sync waiter awaits (or the pool is winding down), and no thread that
 * waits for a result holds the role or is about to take it. */
static int reading_wanted(const PoolCore *c)
{
    return c->reader == READER_NONE && c->reading_waiters == 0 &&
           (c->ntasks > c->sync_tasks || c->state != POOL_RUN);
}

/* mu held: after the role was given up or what reading_wanted reads
 * changed. A result thread waiting out a grace period looks again when it
 * ends, so it is not woken for that. */
static void role_changed(PoolCore *c)
{
    if (c->ndeferred || (reading_wanted(c) && c->rt_wait == RT_IDLE))
        pthread_cond_signal(&c->rt_cv);
    if (c->reading_waiters && c->reader == READER_NONE)
        pthread_cond_broadcast(&c->cv);
}

/* mu held: takes the role if it is free (1), or finds that this thread
 * holds it already (2: a wait inside a delivery, e.g. an imap input or a
 * callback that calls pool.apply(); it reads on, or it would wait for
 * itself). 0: another thread reads. */
static int take_role(PoolCore *c, int who)
{
    unsigned long me = PyThread_get_thread_ident();
    if (c->reader != READER_NONE)
        return c->reader_tid == me ? 2 : 0;
    c->reader = who;
    c->reader_tid = me;
    return 1;
}

static void give_up_role(PoolCore *c)
{
    pthread_mutex_lock(&c->mu);
    c->reader = READER_NONE;
    role_changed(c);
    pthread_mutex_unlock(&c->mu);
}

static int read_turn(PoolCore *c, const struct timespec *until, int in_result_thread);

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Waits (GIL released, signal handlers run in between) until ready(obj),
 * evaluated with the GIL held after each completion, or the deadline.
 * reads: this thread reads the outcomes itself whenever the role is free
 * (one hand-off from the worker instead of two). Returns 1 ready, 0 timed
 * out, -1 exception. */
static int core_wait_loop(PoolCore *c, int (*ready)(void *), void *obj,
                          const struct timespec *deadline, int reads)
{
    int first = ready(obj); /* most often already: no lock to take */
    if (first != 0)
        return first < 0 ? -1 : 1;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        uint64_t seen = c->completions;
        pthread_mutex_unlock(&c->mu);
        int r = ready(obj);
        if (r != 0)
            return r < 0 ? -1 : 1;
        if (deadline && cmp_deadline_remaining(deadline) <= 0)
            return 0;
        struct timespec storage;
        const struct timespec *until = cmp_py_slice(deadline, &storage);
        int turn = 0;
        /* the result thread itself, waiting inside a callback it runs,
         * reads on: it is the one that delivers the deferred */
        int gated = reads && PyThread_get_thread_ident() != c->rt_tid;
        if (reads) {
            pthread_mutex_lock(&c->mu);
            turn = gated && c->deferred_busy ? 0 : take_role(c, READER_WAITER);
            pthread_mutex_unlock(&c->mu);
        }
        if (turn) {
            read_turn(c, until, 0);
            if (turn == 1)
                give_up_role(c);
        } else {
            Py_BEGIN_ALLOW_THREADS
            pthread_mutex_lock(&c->mu);
            while (c->completions == seen &&
                   !(reads && c->reader == READER_NONE && !(gated && c->deferred_busy))) {
                if (!until) {
                    pthread_cond_wait(&c->cv, &c->mu);
                    continue;
                }
                /* cv runs on CLOCK_MONOTONIC (pthread_condattr_setclock) */
                if (pthread_cond_timedwait(&c->cv, &c->mu, until) == ETIMEDOUT)
                    break;
            }
            pthread_mutex_unlock(&c->mu);
            Py_END_ALLOW_THREADS
        }
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

/* An apply()/map()/starmap() interrupted (Ctrl-C): nobody can get its
 * results any more, so its tasks that no worker has taken are dropped. */
static void cancel_queued(PoolCore *c, ResultObject *job)
{
    size_t n;
    uint64_t *ids = cmp_py_jobs_ids_of(&c->jobs, (PyObject *)job, &n);
    if (ids && n)
        c->ops->cancel(c->pool, ids, n);
    PyMem_Free(ids);
}

/* core_wait_loop for a thread that waits for a result (reads; with
 * sync, the apply()/map()/starmap() job it waits for, whose tasks the
 * result thread leaves to it), or not (reads 0: join). */
static int core_wait(PoolCore *c, int (*ready)(void *), void *obj, const struct timespec *deadline,
                     int reads, ResultObject *sync)
{
    if (sync && !sync->sync)
        sync = NULL;
    if (reads) {
        pthread_mutex_lock(&c->mu);
        c->reading_waiters++;
        pthread_mutex_unlock(&c->mu);
    }
    int rc = core_wait_loop(c, ready, obj, deadline, reads);
    if (sync && rc < 0 && !sync->ready)
        cancel_queued(c, sync);
    if (reads) {
        pthread_mutex_lock(&c->mu);
        c->reading_waiters--;
        c->waiter_left_ns = now_ns();
        if (sync && (rc <= 0 || sync->ready)) {
            /* nobody waits for the rest of its tasks (interrupted, or
             * failed early): the result thread reads them */
            c->sync_tasks -= sync->sync_left;
            sync->sync_left = 0;
            sync->sync = 0;
        }
        role_changed(c);
        pthread_mutex_unlock(&c->mu);
    }
    return rc;
}

static int flag_set(void *flag)
{
    return *(const int *)flag;
}

/* ---- results ------------------------------------------------------------ */

static int parse_timeout(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                         const char *fname, struct timespec *storage,
                         const struct timespec **deadline)
{
    static const char *const names[] = {"timeout"};
    PyObject *timeout = NULL;
    if (cmp_py_parse_args(fname, args, nargs, kwnames, names, 1, &timeout) < 0)
        return -1;
    return cmp_py_deadline(timeout, storage, deadline);
}

static PyObject *Result_ready(PyObject *op, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(((ResultObject *)op)->ready);
}

static PyObject *Result_successful(PyObject *op, PyObject *unused)
{
    (void)unused;
    ResultObject *r = (ResultObject *)op;
    if (!r->ready) {
        PyErr_Format(PyExc_ValueError, "%R not ready", op);
        return NULL;
    }
    return PyBool_FromLong(r->success);
}

static PyObject *Result_wait(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    ResultObject *r = (ResultObject *)op;
    struct timespec storage;
    const struct timespec *deadline;
    if (parse_timeout(args, nargs, kwnames, "wait", &storage, &deadline) < 0)
        return NULL;
    if (core_wait(r->core, flag_set, &r->ready, deadline, 1, r) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Result_get(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    ResultObject *r = (ResultObject *)op;
    struct timespec storage;
    const struct timespec *deadline;
    if (parse_timeout(args, nargs, kwnames, "get", &storage, &deadline) < 0)
        return NULL;
    int rc = core_wait(r->core, flag_set, &r->ready, deadline, 1, r);
    if (rc < 0)
        return NULL;
    if (rc == 0) {
        PyErr_SetNone(r->core->st->TimeoutError);
        return NULL;
    }
    if (r->success)
        return Py_NewRef(r->value);
    PyErr_SetObject((PyObject *)Py_TYPE(r->value), r->value);
    return NULL;
}

/* Runs a user callback in the result thread: its exception is reported,
 * never allowed to stop the thread. */
static void run_callback(PyObject *cb, PyObject *arg)
{
    if (!cb || cb == Py_None)
        return;
    PyObject *res = PyObject_CallOneArg(cb, arg);
    if (!res)
        PyErr_WriteUnraisable(cb);
    Py_XDECREF(res);
}

/* Completes r (GIL held). value: stolen. */
static void result_finish(ResultObject *r, int success, PyObject *value)
{
    if (r->ready) {
        Py_XDECREF(value);
        return;
    }
    Py_XSETREF(r->value, value);
    r->success = success;
    if (success)
        run_callback(r->callback, r->value);
    else
        run_callback(r->error_callback, r->value);
    r->ready = 1;
    core_signal(r->core);
}

/* A chunk of a MapResult came in, its values already in place. */
static void map_chunk_stored(ResultObject *r)
{
    if (--r->remaining == 0) {
        r->success = 1;
        run_callback(r->callback, r->value);
        r->ready = 1;
        core_signal(r->core);
    }
}

/* A chunk of a MapResult came in (GIL held). value: stolen. */
static void map_chunk(ResultObject *r, Py_ssize_t index, int success, PyObject *value)
{
    if (r->ready) {
        Py_XDECREF(value);
        return;
    }
    if (!success) {
        result_finish(r, 0, value); /* the first failure decides */
        return;
    }
    Py_ssize_t start = index * r->chunksize;
    Py_ssize_t n = PyList_Check(value) ? PyList_GET_SIZE(value) : 0;
    for (Py_ssize_t i = 0; i < n && start + i < r->length; i++)
        PyList_SetItem(r->value, start + i, Py_NewRef(PyList_GET_ITEM(value, i)));
    Py_DECREF(value);
    map_chunk_stored(r);
}

static int Result_traverse(PyObject *op, visitproc visit, void *arg)
{
    ResultObject *r = (ResultObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(r->core);
    Py_VISIT(r->callback);
    Py_VISIT(r->error_callback);
    Py_VISIT(r->value);
    return 0;
}

static int Result_clear(PyObject *op)
{
    ResultObject *r = (ResultObject *)op;
    Py_CLEAR(r->core);
    Py_CLEAR(r->callback);
    Py_CLEAR(r->error_callback);
    Py_CLEAR(r->value);
    return 0;
}

static void Result_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (((ResultObject *)op)->weakreflist)
        PyObject_ClearWeakRefs(op);
    Result_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static ResultObject *result_new(PyTypeObject *tp, PoolCore *core, PyObject *callback,
                                PyObject *error_callback)
{
    ResultObject *r = PyObject_GC_New(ResultObject, tp);
    if (!r)
        return NULL;
    r->core = (PoolCore *)Py_NewRef(core);
    r->callback = callback && callback != Py_None ? Py_NewRef(callback) : NULL;
    r->error_callback =
        error_callback && error_callback != Py_None ? Py_NewRef(error_callback) : NULL;
    r->value = NULL;
    r->ready = r->success = 0;
    r->sync = 0;
    r->sync_left = 0;
    r->remaining = r->chunksize = r->length = 0;
    r->weakreflist = NULL;
    PyObject_GC_Track(r);
    return r;
}

static PyMethodDef Result_methods[] = {
    {"ready", Result_ready, METH_NOARGS, "ready()\n--\n\nWhether the call has completed."},
    {"successful", Result_successful, METH_NOARGS,
     "successful()\n--\n\nWhether the call completed without raising; ValueError if it has "
     "not completed."},
    {"wait", (PyCFunction)(void (*)(void))Result_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait($self, /, timeout=None)\n--\n\nWait until the result is available or timeout "
     "seconds pass."},
    {"get", (PyCFunction)(void (*)(void))Result_get, METH_FASTCALL | METH_KEYWORDS,
     "get($self, /, timeout=None)\n--\n\nThe result once it arrives; raises the remote "
     "exception if the call raised, multiprocessing.TimeoutError after timeout seconds."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, "See PEP 585."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Result_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ResultObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot ApplyResult_slots[] = {
    {Py_tp_doc, "The result of Pool.apply_async(): ready(), successful(), wait(), get()."},
    {Py_tp_methods, Result_methods},
    {Py_tp_members, Result_members},
    {Py_tp_traverse, Result_traverse},
    {Py_tp_clear, Result_clear},
    {Py_tp_dealloc, Result_dealloc},
    {0, NULL},
};

static PyType_Spec ApplyResult_spec = {
    "cmultiprocessing.pool.ApplyResult",
    sizeof(ResultObject),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    ApplyResult_slots,
};

static PyType_Slot MapResult_slots[] = {
    {Py_tp_doc, "The result of Pool.map_async() and starmap_async(): a list, in input order."},
    {Py_tp_traverse, Result_traverse},
    {Py_tp_clear, Result_clear},
    {Py_tp_dealloc, Result_dealloc},
    {0, NULL},
};

static PyType_Spec MapResult_spec = {
    "cmultiprocessing.pool.MapResult",
    sizeof(ResultObject),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    MapResult_slots,
};

/* ---- imap and imap_unordered --------------------------------------------- */

/* An imap's outcomes not yet handed out, keyed by position: the chunk's
 * index (ordered) or its rank of arrival (unordered), so that the next to
 * hand out is always key `consumed`. Keys out span less than the input
 * read ahead (buffersize, or everything after close()): slot key % cap,
 * grown when a key would not fit. value NULL: empty. */
typedef struct {
    PyObject *value;
    int ok;
} outcome_slot;
typedef struct {
    outcome_slot *slots;
    Py_ssize_t cap; /* a power of two, or 0 */
} outcome_ring;

/* Room for key, the oldest out being base. 0, or -1 with MemoryError. */
static int ring_fit(outcome_ring *r, Py_ssize_t base, Py_ssize_t key)
{
    if (r->cap && key - base < r->cap)
        return 0;
    Py_ssize_t cap = r->cap ? r->cap : 16;
    while (key - base >= cap)
        cap *= 2;
    outcome_slot *slots = PyMem_Calloc((size_t)cap, sizeof *slots);
    if (!slots) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = base; r->cap && k < base + r->cap; k++)
        slots[k & (cap - 1)] = r->slots[k & (r->cap - 1)];
    PyMem_Free(r->slots);
    r->slots = slots;
    r->cap = cap;
    return 0;
}

static outcome_slot *ring_at(const outcome_ring *r, Py_ssize_t key)
{
    return r->cap ? &r->slots[key & (r->cap - 1)] : NULL;
}

/* The input is read lazily: at most buffersize chunks are out (submitted
 * and not yet handed to the caller) at a time, topped up as the caller
 * consumes results, so a huge or endless input streams in bounded memory.
 * close() feeds what is left of every live iterator's input, so that
 * close(); join() runs every task as the stdlib's does; an iterator
 * dropped before then cancels the rest of its input. */
typedef struct {
    PyObject_HEAD
    PoolCore *core;
    PyObject *func;
    PyObject *source;   /* the input iterator; NULL once it ended */
    outcome_ring done;  /* outcomes not yet handed out (see outcome_ring) */
    Py_ssize_t arrived; /* unordered: outcomes stored so far */
    PyObject *current;  /* the results of the chunk being handed out */
    Py_ssize_t pos;
    Py_ssize_t chunksize, buffersize;
    Py_ssize_t submitted, consumed;
    Py_ssize_t total; /* chunks in all; -1 until the input has ended */
    int unordered;
    int feeding; /* a thread is reading the input (it may release the GIL) */
    Py_ssize_t yielded;
    cmp_py_progress progress;
    PyObject *weakreflist;
} IMapObject;

static PyTypeObject *IMapIterator_type, *IMapUnorderedIterator_type;

static int is_imap(PyObject *o)
{
    return PyObject_TypeCheck(o, IMapIterator_type);
}

/* Stores chunk index's outcome (GIL held). value: stolen. */
static int imap_store(IMapObject *it, Py_ssize_t index, int success, PyObject *value)
{
    Py_ssize_t key = it->unordered ? it->arrived : index;
    if (ring_fit(&it->done, it->consumed, key) < 0) {
        Py_DECREF(value);
        return -1;
    }
    outcome_slot *slot = ring_at(&it->done, key);
    Py_XSETREF(slot->value, value);
    slot->ok = success;
    it->arrived += it->unordered;
    return 0;
}

static int imap_top_up(IMapObject *it);

/* A chunk came in (result thread): stored, the consumer woken, and the
 * input read on while the pool runs. */
static void imap_chunk(IMapObject *it, Py_ssize_t index, int success, PyObject *value)
{
    if (imap_store(it, index, success, value) < 0)
        PyErr_WriteUnraisable((PyObject *)it);
    core_signal(it->core);
    if (it->core->state == POOL_RUN && imap_top_up(it) < 0)
        PyErr_WriteUnraisable((PyObject *)it);
}

static int submit(PoolCore *c, int kind, PyObject *func, PyObject *payload, PyObject *job,
                  Py_ssize_t index);

/* Reads and submits one more chunk. Returns 1 submitted (or the input's
 * own error stored as the chunk), 0 the input has ended, -1 error. */
static int imap_feed_one(IMapObject *it)
{
    if (!it->source)
        return 0;
    PyObject *chunk = PyList_New(0);
    if (!chunk)
        return -1;
    while (PyList_GET_SIZE(chunk) < it->chunksize) {
        PyObject *item = PyIter_Next(it->source);
        if (!item)
            break;
        int rc = PyList_Append(chunk, item);
        Py_DECREF(item);
        if (rc < 0) {
            Py_DECREF(chunk);
            return -1;
        }
    }
    if (PyErr_Occurred()) {
        /* the input raised: that is this position's outcome, as the stdlib */
        Py_DECREF(chunk);
        if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
            return -1;
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        if (tb && exc)
            PyException_SetTraceback(exc, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        Py_CLEAR(it->source);
        if (imap_store(it, it->submitted, 0, exc) < 0)
            return -1;
        it->submitted++;
        it->total = it->submitted;
        return 1;
    }
    if (PyList_GET_SIZE(chunk) == 0) {
        Py_DECREF(chunk);
        Py_CLEAR(it->source);
        it->total = it->submitted;
        return 0;
    }
    int rc = submit(it->core, KIND_MAP, it->func, chunk, (PyObject *)it, it->submitted);
    Py_DECREF(chunk);
    if (rc < 0)
        return -1;
    it->submitted++;
    return 1;
}

/* Reads the input while fewer than buffersize chunks are out. Both the
 * consumer and the result thread (after each chunk it delivers, so that
 * the workers do not wait for a consumer that is between two next()
 * calls) do it; one at a time, since reading may release the GIL and a
 * generator must not be resumed from two threads. */
static int imap_top_up(IMapObject *it)
{
    if (it->feeding)
        return 0;
    it->feeding = 1;
    int rc = 0;
    while (it->source && it->submitted - it->consumed < it->buffersize) {
        rc = imap_feed_one(it);
        if (rc <= 0)
            break;
        rc = 0;
    }
    it->feeding = 0;
    return rc < 0 ? -1 : 0;
}

static int imap_has_next(void *obj)
{
    IMapObject *it = obj;
    if (it->total >= 0 && it->consumed >= it->total)
        return 1;
    outcome_slot *slot = ring_at(&it->done, it->consumed);
    return slot && slot->value;
}

/* The next outcome, removed from done: its value (new reference, *ok
 * set), or NULL when there is none yet. */
static PyObject *imap_take(IMapObject *it, int *ok)
{
    outcome_slot *slot = ring_at(&it->done, it->consumed);
    if (!slot || !slot->value)
        return NULL;
    PyObject *value = slot->value;
    slot->value = NULL;
    *ok = slot->ok;
    return value;
}

static PyObject *imap_next(IMapObject *it, const struct timespec *deadline)
{
    for (;;) {
        if (it->current && it->pos < PyList_GET_SIZE(it->current)) {
            if (cmp_py_progress_update(&it->progress, ++it->yielded) < 0)
                return NULL;
            return Py_NewRef(PyList_GET_ITEM(it->current, it->pos++));
        }
        Py_CLEAR(it->current);
        if (imap_top_up(it) < 0)
            return NULL;
        int ok;
        PyObject *value = imap_take(it, &ok);
        if (value) {
            it->consumed++;
            if (ok && PyList_Check(value)) {
                it->current = value;
                it->pos = 0;
                continue;
            }
            PyErr_SetObject((PyObject *)Py_TYPE(value), value);
            Py_DECREF(value);
            return NULL;
        }
        if (PyErr_Occurred())
            return NULL;
        if (it->total >= 0 && it->consumed >= it->total) {
            cmp_py_progress_end(&it->progress);
            PyErr_SetNone(PyExc_StopIteration);
            return NULL;
        }
        int rc = core_wait(it->core, imap_has_next, it, deadline, 1, NULL);
        if (rc < 0)
            return NULL;
        if (rc == 0) {
            PyErr_SetNone(it->core->st->TimeoutError);
            return NULL;
        }
    }
}

static PyObject *IMap_iternext(PyObject *op)
{
    PyObject *r = imap_next((IMapObject *)op, NULL);
    if (!r && PyErr_ExceptionMatches(PyExc_StopIteration))
        PyErr_Clear(); /* tp_iternext ends with NULL and no exception */
    return r;
}

static PyObject *IMap_next(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    struct timespec storage;
    const struct timespec *deadline;
    if (parse_timeout(args, nargs, kwnames, "next", &storage, &deadline) < 0)
        return NULL;
    return imap_next((IMapObject *)op, deadline);
}

static int IMap_traverse(PyObject *op, visitproc visit, void *arg)
{
    IMapObject *it = (IMapObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(it->core);
    Py_VISIT(it->func);
    Py_VISIT(it->source);
    for (Py_ssize_t k = 0; k < it->done.cap; k++)
        Py_VISIT(it->done.slots[k].value);
    Py_VISIT(it->current);
    Py_VISIT(it->progress.fn);
    Py_VISIT(it->progress.bar);
    return 0;
}

static int IMap_clear(PyObject *op)
{
    IMapObject *it = (IMapObject *)op;
    Py_CLEAR(it->core);
    Py_CLEAR(it->func);
    Py_CLEAR(it->source);
    outcome_ring done = it->done; /* decrefs may run code: detach first */
    it->done = (outcome_ring){NULL, 0};
    for (Py_ssize_t k = 0; k < done.cap; k++)
        Py_XDECREF(done.slots[k].value);
    PyMem_Free(done.slots);
    Py_CLEAR(it->current);
    Py_CLEAR(it->progress.fn);
    Py_CLEAR(it->progress.bar);
    return 0;
}

static void IMap_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (((IMapObject *)op)->weakreflist)
        PyObject_ClearWeakRefs(op);
    IMap_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyMethodDef IMap_methods[] = {
    {"next", (PyCFunction)(void (*)(void))IMap_next, METH_FASTCALL | METH_KEYWORDS,
     "next($self, /, timeout=None)\n--\n\nThe next result; multiprocessing.TimeoutError "
     "after timeout seconds."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef IMap_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(IMapObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot IMapIterator_slots[] = {
    {Py_tp_doc, "The iterator of Pool.imap(): results in input order."},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, IMap_iternext},
    {Py_tp_methods, IMap_methods},
    {Py_tp_members, IMap_members},
    {Py_tp_traverse, IMap_traverse},
    {Py_tp_clear, IMap_clear},
    {Py_tp_dealloc, IMap_dealloc},
    {0, NULL},
};

static PyType_Spec IMapIterator_spec = {
    "cmultiprocessing.pool.IMapIterator",
    sizeof(IMapObject),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    IMapIterator_slots,
};

static PyType_Slot IMapUnorderedIterator_slots[] = {
    {Py_tp_doc, "The iterator of Pool.imap_unordered(): results as they come."},
    {Py_tp_traverse, IMap_traverse},
    {Py_tp_clear, IMap_clear},
    {Py_tp_dealloc, IMap_dealloc},
    {0, NULL},
};

static PyType_Spec IMapUnorderedIterator_spec = {
    "cmultiprocessing.pool.IMapUnorderedIterator",
    sizeof(IMapObject),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    IMapUnorderedIterator_slots,
};

/* ---- the pool underneath: libcmp's by default ------------------------- */

static int lc_create(void *ctx, void **pool, const cmp_pool_options_t *opt)
{
    (void)ctx;
    return cmp_pool_create((cmp_pool_t **)pool, opt);
}
static int lc_submitv(void *p, const struct iovec *iov, int n, uint64_t *id)
{
    return cmp_pool_submitv(p, iov, n, id);
}
static int lc_submitv_ref(void *p, const struct iovec *iov, int n, uint64_t *id,
                          void (*release)(void *), void *arg)
{
    return cmp_pool_submitv_ref(p, iov, n, id, release, arg);
}
static int lc_next(void *p, cmp_pool_outcome_t *out, cmp_ring_alloc_fn alloc, void *arg,
                   const struct timespec *deadline)
{
    return cmp_pool_next(p, out, alloc, arg, deadline);
}
static long lc_cancel(void *p, const uint64_t *ids, size_t n)
{
    return cmp_pool_cancel(p, ids, n);
}
static int lc_close(void *p)
{
    return cmp_pool_close(p);
}
static int lc_terminate(void *p)
{
    return cmp_pool_terminate(p);
}
static int lc_join(void *p, const struct timespec *deadline)
{
    return cmp_pool_join(p, deadline);
}
static void lc_destroy(void *p)
{
    cmp_pool_destroy(p);
}
static unsigned lc_size(const void *p)
{
    return cmp_pool_size(p);
}
static unsigned lc_pids(void *p, pid_t *pids, unsigned max)
{
    return cmp_pool_pids(p, pids, max);
}

static const cmp_py_pool_ops libcmp_ops = {
    lc_create,    lc_submitv, lc_submitv_ref, lc_next, lc_cancel, lc_close,
    lc_terminate, lc_join,    lc_destroy,     lc_size, lc_pids,
};
static const cmp_py_pool_backend libcmp_backend = {&libcmp_ops, NULL};

/* ---- the result thread ---------------------------------------------------- */

/* WorkerLostError for a task whose worker died (or that terminate()
 * cancelled), saying how. */
static PyObject *lost_error(const cmp_pool_outcome_t *o)
{
    PyObject *msg;
    if (o->status == CMP_POOL_CANCELLED) {
        msg = PyUnicode_FromString("the pool was terminated before the task ended");
    } else if (o->pid == 0 && o->len) {
        /* no worker we know of: the backend says what was lost (an MPI rank) */
        msg = PyUnicode_DecodeUTF8(o->data, (Py_ssize_t)o->len, "replace");
        o = NULL;
    } else if (o->cause < 0) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
        const char *abbrev = sigabbrev_np(-o->cause);
#else
        const char *abbrev = NULL;
#endif
        msg = PyUnicode_FromFormat(
            "worker process %d died running the task: killed by signal %d (SIG%s)", (int)o->pid,
            -o->cause, abbrev ? abbrev : "?");
    } else {
        msg = PyUnicode_FromFormat("worker process %d died running the task: exit code %d",
                                   (int)o->pid, o->cause);
    }
    if (msg && o && o->status == CMP_POOL_LOST && o->len) {
        PyObject *where = PyUnicode_DecodeUTF8(o->data, (Py_ssize_t)o->len, "replace");
        Py_SETREF(msg, where ? PyUnicode_FromFormat("%U %U", msg, where) : NULL);
        Py_XDECREF(where);
    }
    if (!msg)
        return NULL;
    PyObject *exc = PyObject_CallOneArg(WorkerLostError, msg);
    Py_DECREF(msg);
    return exc;
}

/* The exception an outcome stands for (new reference), or NULL with an
 * exception when it cannot even be made. */
static PyObject *outcome_exception(PoolCore *c, const cmp_pool_outcome_t *o)
{
    if (o->status == CMP_POOL_LOST || o->status == CMP_POOL_CANCELLED)
        return lost_error(o);
    PyObject *envelope = cmp_py_decode(c->st, o->data, o->len);
    PyObject *name, *text, *inner;
    if (!envelope || !PyArg_ParseTuple(envelope, "UUS", &name, &text, &inner)) {
        Py_XDECREF(envelope);
        return NULL;
    }
    PyObject *exc = cmp_py_decode(c->st, PyBytes_AS_STRING(inner), (size_t)PyBytes_GET_SIZE(inner));
    if (!exc) {
        /* it could not be unpickled here: say what it was, and why */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        exc = PyObject_CallFunction(PyExc_RuntimeError, "N",
                                    PyUnicode_FromFormat("%U: %U (the task's exception could not "
                                                         "be unpickled in the parent: %R)",
                                                         name, text, value ? value : Py_None));
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    Py_DECREF(envelope);
    if (o->status == CMP_POOL_BROKEN && exc) {
        PyObject *broken = PyObject_CallFunction(InitializerError, "s",
                                                 "the pool's initializer raised; no task can run");
        if (broken)
            PyException_SetCause(broken, exc);
        else
            Py_DECREF(exc);
        return broken;
    }
    return exc;
}

enum { DELIVERED, DELIVERED_SYNC, DEFERRED };

/* Completes the job of outcome o (GIL held). Outside the result thread, an
 * outcome whose job has callbacks is not delivered but handed to it (the
 * outcome's data with it). A big pickled value's arrays are views of the
 * outcome's data, which then goes with them (o->data NULL: no copy out of
 * it). Returns DELIVERED, DELIVERED_SYNC (it was a task a sync waiter
 * awaited) or DEFERRED. */
static int deliver(PoolCore *c, cmp_pool_outcome_t *o, int in_result_thread)
{
    PyObject *job = cmp_py_jobs_peek(&c->jobs, o->id);
    if (!job)
        return DELIVERED; /* a job nobody waits for any more */
    ResultObject *r = is_imap(job) ? NULL : (ResultObject *)job;
    if (r && !in_result_thread && (r->callback || r->error_callback)) {
        pthread_mutex_lock(&c->mu);
        if (c->ndeferred == c->cap_deferred) {
            size_t cap = c->cap_deferred ? 2 * c->cap_deferred : 16;
            cmp_pool_outcome_t *grown = realloc(c->deferred, cap * sizeof *grown);
            if (!grown) {
                pthread_mutex_unlock(&c->mu);
                return deliver(c, o, 1); /* out of memory: here, then */
            }
            c->deferred = grown;
            c->cap_deferred = cap;
        }
        c->deferred[c->ndeferred++] = *o;
        c->deferred_busy++;
        pthread_cond_signal(&c->rt_cv);
        pthread_mutex_unlock(&c->mu);
        return DEFERRED;
    }
    cmp_py_job_ref ref;
    cmp_py_jobs_take(&c->jobs, o->id, &ref); /* ref.job is job: ours now */
    int how = DELIVERED;
    if (r && r->sync_left > 0) {
        r->sync_left--;
        how = DELIVERED_SYNC;
    }
    Py_ssize_t index = ref.index;
    int success = o->status == CMP_POOL_DONE;
    Py_ssize_t stored = -2;
    if (r && index >= 0 && success && !r->ready) {
        /* a map's chunk: its values go straight into the result list */
        stored = cmp_py_decode_list_into(o->data, o->len, r->value, index * r->chunksize);
        if (stored >= 0) {
            map_chunk_stored(r);
            Py_DECREF(job);
            return how;
        }
    }
    PyObject *value = stored == -1 ? NULL /* its exception is the outcome */
                      : success    ? cmp_py_decode_raw(c->st, &o->data, o->len)
                                   : outcome_exception(c, o);
    if (!value) {
        success = 0;
        PyObject *type, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
    }
    if (!r)
        imap_chunk((IMapObject *)job, index, success, value);
    else if (index < 0)
        result_finish(r, success, value);
    else
        map_chunk(r, index, success, value);
    Py_DECREF(job);
    return how;
}

/* Outcomes taken per turn with the GIL: the first waited for, the rest
 * already there. Each hand-over of the GIL between this thread and one
 * waiting for it costs a forced switch; a batch pays it once. */
#define RESULT_BATCH 64

static void *raw_alloc(void *arg, size_t len)
{
    (void)arg;
    return PyMem_RawMalloc(len ? len : 1);
}

/* Delivers n outcomes that came out of cmp_pool_next (GIL held). */
static void deliver_batch(PoolCore *c, cmp_pool_outcome_t *batch, int n, int in_result_thread)
{
    Py_ssize_t nsync = 0;
    for (int i = 0; i < n; i++) {
        int how = deliver(c, &batch[i], in_result_thread);
        if (how != DEFERRED)
            PyMem_RawFree(batch[i].data);
        nsync += how == DELIVERED_SYNC;
    }
    pthread_mutex_lock(&c->mu);
    c->ntasks -= n;
    c->sync_tasks -= nsync;
    pthread_mutex_unlock(&c->mu);
}

/* One turn of the reader (the role held, GIL held): waits, GIL released,
 * until an outcome comes or until `until` (NULL: no limit), then delivers
 * it with those already there. Returns what cmp_pool_next returned. */
static int read_turn(PoolCore *c, const struct timespec *until, int in_result_thread)
{
    cmp_pool_outcome_t batch[RESULT_BATCH];
    int rc, n = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = c->ops->next(c->pool, &batch[0], raw_alloc, NULL, until);
    if (rc == 0) {
        n = 1;
        while (n < RESULT_BATCH &&
               c->ops->next(c->pool, &batch[n], raw_alloc, NULL, CMP_NOWAIT) == 0)
            n++;
    }
    Py_END_ALLOW_THREADS
    deliver_batch(c, batch, n, in_result_thread);
    return rc;
}

/* The result thread: delivers what other readers handed it, and reads
 * while reading_wanted. Ends once the pool is closed or terminated
 * and every task is out. An idle pool is looked at every IDLE_CHECK_NS
 * (cmp_pool_next notices dead workers and starts their replacements), so
 * that it keeps its workers as the stdlib's does (it polls every 0.1 s). */
#define IDLE_CHECK_NS 100000000L
/* A thread that waited for a result and read is left the reading for this
 * long after it returns: a consumer of imap(), or a loop of
 * apply_async(...).get(), is back for the next within it. */
#define READER_GRACE_NS 1000000L

static PyObject *result_thread(PyObject *unused, PyObject *arg)
{
    (void)unused;
    PoolCore *c = (PoolCore *)arg;
    c->rt_tid = PyThread_get_thread_ident();
    for (;;) {
        cmp_pool_outcome_t *deferred = NULL;
        size_t ndeferred = 0;
        int reading = 0, idle_check = 0;
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&c->mu);
        for (;;) {
            if (c->ndeferred) {
                deferred = c->deferred;
                ndeferred = c->ndeferred;
                c->deferred = NULL;
                c->ndeferred = c->cap_deferred = 0;
                break;
            }
            int64_t wake = now_ns() + IDLE_CHECK_NS;
            c->rt_wait = RT_IDLE;
            if (reading_wanted(c)) {
                /* a waiter that just read will likely be back: leave the
                 * reading to it, unless it stays away */
                int64_t end = c->waiter_left_ns + READER_GRACE_NS;
                if (c->state != POOL_RUN || now_ns() >= end) {
                    reading = take_role(c, READER_RESULT_THREAD) == 1;
                    break;
                }
                wake = end;
                c->rt_wait = RT_GRACE;
            }
            struct timespec until = {(time_t)(wake / 1000000000), (long)(wake % 1000000000)};
            int rc = pthread_cond_timedwait(&c->rt_cv, &c->mu, &until);
            int was_idle = c->rt_wait == RT_IDLE;
            c->rt_wait = RT_BUSY;
            if (rc == ETIMEDOUT && was_idle && c->reader == READER_NONE &&
                c->reading_waiters == 0) {
                reading = take_role(c, READER_RESULT_THREAD) == 1;
                idle_check = 1;
                break;
            }
        }
        pthread_mutex_unlock(&c->mu);
        Py_END_ALLOW_THREADS
        for (size_t i = 0; i < ndeferred; i++) {
            deliver(c, &deferred[i], 1);
            PyMem_RawFree(deferred[i].data);
        }
        free(deferred);
        if (ndeferred) {
            pthread_mutex_lock(&c->mu);
            c->deferred_busy -= ndeferred;
            role_changed(c); /* a waiter may read again */
            pthread_mutex_unlock(&c->mu);
        }
        if (!reading)
            continue;
        int rc = read_turn(c, idle_check ? CMP_NOWAIT : NULL, 1);
        give_up_role(c);
        if (rc == -ENOENT)
            break;
        /* other errors: -EINTR (only the main thread runs handlers) */
    }
    pthread_mutex_lock(&c->mu);
    c->handler_done = 1;
    c->completions++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    Py_RETURN_NONE;
}

static PyMethodDef result_thread_def = {"_pool_result_thread", result_thread, METH_O, NULL};

/* ---- the core ------------------------------------------------------------- */

static int Core_traverse(PyObject *op, visitproc visit, void *arg)
{
    PoolCore *c = (PoolCore *)op;
    Py_VISIT(Py_TYPE(op));
    int rc = cmp_py_jobs_traverse(&c->jobs, visit, arg);
    if (rc)
        return rc;
    Py_VISIT(c->feeders);
    Py_VISIT(c->last_func);
    Py_VISIT(c->last_func_bytes);
    Py_VISIT(c->work.initializer);
    Py_VISIT(c->work.initargs);
    return 0;
}

static int Core_clear(PyObject *op)
{
    PoolCore *c = (PoolCore *)op;
    cmp_py_jobs_clear(&c->jobs);
    Py_CLEAR(c->feeders);
    Py_CLEAR(c->last_func);
    Py_CLEAR(c->last_func_bytes);
    Py_CLEAR(c->work.initializer);
    Py_CLEAR(c->work.initargs);
    return 0;
}

static void Core_dealloc(PyObject *op)
{
    PoolCore *c = (PoolCore *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (c->pool) {
        if (getpid() == c->owner) {
            c->ops->terminate(c->pool);
            Py_BEGIN_ALLOW_THREADS
            c->ops->join(c->pool, NULL);
            Py_END_ALLOW_THREADS
        }
        c->ops->destroy(c->pool);
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cv);
        pthread_cond_destroy(&c->rt_cv);
        for (size_t i = 0; i < c->ndeferred; i++)
            PyMem_RawFree(c->deferred[i].data);
        free(c->deferred);
    }
    Core_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyType_Slot Core_slots[] = {
    {Py_tp_traverse, Core_traverse},
    {Py_tp_clear, Core_clear},
    {Py_tp_dealloc, Core_dealloc},
    {0, NULL},
};

static PyType_Spec Core_spec = {
    "cmultiprocessing.pool._PoolCore",       sizeof(PoolCore), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, Core_slots,
};

/* ---- Pool ------------------------------------------------------------------ */

static PoolCore *running_core(PoolObject *self)
{
    PoolCore *c = self->core;
    if (!c || c->state != POOL_RUN) {
        PyErr_SetString(PyExc_ValueError, "Pool not running");
        return NULL;
    }
    return c;
}

/* A task pickle cannot take (a lambda, a closure, a function defined at
 * the prompt), as (KIND_CLOUD, cloudpickle.dumps(task), None) when
 * cloudpickle is installed. *task is replaced on success (0); otherwise
 * the original pickling error stays set (-1). */
static int cloud_task(PyObject **task)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *cloudpickle = PyImport_ImportModule("cloudpickle");
    PyObject *dumped = cloudpickle ? PyObject_CallMethod(cloudpickle, "dumps", "(O)", *task) : NULL;
    Py_XDECREF(cloudpickle);
    PyObject *wrapped = dumped ? Py_BuildValue("(iNO)", KIND_CLOUD, dumped, Py_None) : NULL;
    if (!wrapped) {
        PyErr_Clear();
        PyErr_Restore(type, value, tb);
        return -1;
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    Py_SETREF(*task, wrapped);
    return 0;
}

/* Submits (kind, func, payload) for job r at chunk index (-1: whole job). */
/* The function as the bytes of its message, pickled once for a run of
 * tasks with the same function (a map's chunks); new reference, or NULL
 * with no exception when it must travel inside the task (it cannot be
 * pickled on its own: the cloudpickle path). */
static PyObject *function_bytes(PoolCore *c, PyObject *func)
{
    if (func == c->last_func && c->last_func_bytes)
        return Py_NewRef(c->last_func_bytes);
    PyObject *b = cmp_py_encode_bytes(c->st, func);
    if (!b) {
        PyErr_Clear();
        return NULL;
    }
    Py_XSETREF(c->last_func, Py_NewRef(func));
    Py_XSETREF(c->last_func_bytes, Py_NewRef(b));
    return b;
}

/* (kind, func, payload), the message a worker runs (no format string to
 * parse per task: kind is a cached small int). */
static PyObject *task_tuple(int kind, PyObject *func, PyObject *payload)
{
    PyObject *k = PyLong_FromLong(kind);
    PyObject *t = k ? PyTuple_Pack(3, k, func, payload) : NULL;
    Py_XDECREF(k);
    return t;
}

/* Encodes the task (kind, func, payload) into f: the function as its
 * cached bytes, else pickled with the payload, else by cloudpickle. 0, or
 * -1 with the pickling error. */
static int encode_task(PoolCore *c, int kind, PyObject *func, PyObject *payload, cmp_py_frame *f)
{
    PyObject *fbytes = function_bytes(c, func);
    PyObject *task = task_tuple(kind, fbytes ? fbytes : func, payload);
    Py_XDECREF(fbytes);
    if (!task)
        return -1;
    int rc = cmp_py_encode(c->st, task, f);
    if (rc < 0 && fbytes) {
        /* the payload needs the whole task pickled together: as is */
        PyErr_Clear();
        Py_SETREF(task, task_tuple(kind, func, payload));
        rc = task ? cmp_py_encode(c->st, task, f) : -1;
    }
    if (rc < 0 && task && cloud_task(&task) == 0)
        rc = cmp_py_encode(c->st, task, f);
    Py_XDECREF(task);
    return rc;
}

/* A big task's frame, kept by the pool instead of copied while the task
 * waits for a worker (cmp_pool_submitv_ref); given back from whichever
 * thread the pool then runs in. */
#define BIG_TASK_BYTES ((size_t)1 << 20)

static void release_frame(void *arg)
{
    PyGILState_STATE g = PyGILState_Ensure();
    cmp_py_frame_clear(arg);
    PyMem_RawFree(arg);
    PyGILState_Release(g);
}

static int submit(PoolCore *c, int kind, PyObject *func, PyObject *payload, PyObject *job,
                  Py_ssize_t index)
{
    cmp_py_frame f;
    cmp_py_frame_init(&f);
    if (encode_task(c, kind, func, payload, &f) < 0)
        return -1;
    /* A big task (numpy arrays: out-of-band pieces that point at their
     * buffers) goes by reference: encoded again into a frame that can
     * outlive this call (a frame must not move), which is cheap next to
     * the copy of its bytes it saves. */
    cmp_py_frame *held = NULL;
    if (f.size >= BIG_TASK_BYTES && (held = PyMem_RawMalloc(sizeof *held))) {
        cmp_py_frame_init(held);
        if (encode_task(c, kind, func, payload, held) < 0) {
            PyErr_Clear();
            PyMem_RawFree(held);
            held = NULL;
        } else {
            cmp_py_frame_clear(&f);
        }
    }
    cmp_py_frame *use = held ? held : &f;
    struct iovec iov[CMP_POOL_IOV_MAX];
    int n = use->npieces;
    if (n > CMP_POOL_IOV_MAX) {
        cmp_py_frame_clear(use);
        PyMem_RawFree(held);
        PyErr_SetString(PyExc_ValueError, "task has too many out-of-band buffers");
        return -1;
    }
    for (int i = 0; i < n; i++)
        iov[i] = (struct iovec){use->pieces[i].ptr, use->pieces[i].len};
    uint64_t id;
    /* The GIL stays held from here to the job's registration below: the
     * result thread, which may get the outcome at once, needs the GIL to
     * look the job up. */
    int rc = held ? c->ops->submitv_ref(c->pool, iov, n, &id, release_frame, held)
                  : c->ops->submitv(c->pool, iov, n, &id);
    if (!held || rc < 0) {
        cmp_py_frame_clear(use); /* a held frame is the pool's once submitted */
        PyMem_RawFree(held);
    }
    if (rc < 0) {
        if (rc == -EPIPE)
            PyErr_SetString(PyExc_ValueError, "Pool not running");
        else
            cmp_py_raise(rc);
        return -1;
    }
    ResultObject *r = is_imap(job) ? NULL : (ResultObject *)job;
    pthread_mutex_lock(&c->mu);
    c->ntasks++;
    if (r && r->sync) {
        r->sync_left++;
        c->sync_tasks++;
    }
    role_changed(c); /* an async task: the result thread reads, if nobody does */
    pthread_mutex_unlock(&c->mu);
    return cmp_py_jobs_add(&c->jobs, id, job, index);
}

/* Submits func(*fargs, **fkwds) (either may be NULL); a new ApplyResult. */
static PyObject *apply_job(PoolObject *self, PyObject *func, PyObject *fargs, PyObject *fkwds,
                           PyObject *callback, PyObject *error_callback, int sync)
{
    PoolCore *c = running_core(self);
    if (!c)
        return NULL;
    PyObject *targs = fargs ? PySequence_Tuple(fargs) : PyTuple_New(0);
    if (!targs)
        return NULL;
    /* no keywords travel as None: no dict to make, encode and decode */
    int no_kwds = !fkwds || (PyDict_CheckExact(fkwds) && PyDict_GET_SIZE(fkwds) == 0);
    PyObject *tkwds = Py_NewRef(no_kwds ? Py_None : fkwds);
    ResultObject *r = tkwds ? result_new(ApplyResult_type, c, callback, error_callback) : NULL;
    if (r)
        r->sync = sync;
    PyObject *payload = r ? PyTuple_Pack(2, targs, tkwds) : NULL;
    Py_DECREF(targs);
    Py_XDECREF(tkwds);
    if (!payload || submit(c, KIND_APPLY, func, payload, (PyObject *)r, -1) < 0) {
        Py_XDECREF(payload);
        Py_XDECREF(r);
        return NULL;
    }
    Py_DECREF(payload);
    return (PyObject *)r;
}

/* apply()/apply_async() arguments (fast call): func is required. */
static int parse_apply(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *kwnames, int nparams, PyObject **out)
{
    static const char *const names[] = {"func", "args", "kwds", "callback", "error_callback"};
    if (cmp_py_parse_args(fname, args, nargs, kwnames, names, nparams, out) < 0)
        return -1;
    if (!out[0]) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument 'func' (pos 1)", fname);
        return -1;
    }
    return 0;
}

static PyObject *Pool_apply_async(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    PyObject *a[5] = {NULL, NULL, NULL, NULL, NULL};
    if (parse_apply("apply_async", args, nargs, kwnames, 5, a) < 0)
        return NULL;
    return apply_job((PoolObject *)op, a[0], a[1], a[2], a[3], a[4], 0);
}

static PyObject *Pool_apply(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    PyObject *a[3] = {NULL, NULL, NULL};
    if (parse_apply("apply", args, nargs, kwnames, 3, a) < 0)
        return NULL;
    PyObject *r = apply_job((PoolObject *)op, a[0], a[1], a[2], NULL, NULL, 1);
    if (!r)
        return NULL;
    PyObject *v = Result_get(r, NULL, 0, NULL);
    Py_DECREF(r);
    return v;
}

/* The stdlib's default: about four chunks per worker. */
static Py_ssize_t default_chunksize(Py_ssize_t n, unsigned processes)
{
    if (n == 0)
        return 0;
    Py_ssize_t per = (Py_ssize_t)processes * 4;
    Py_ssize_t size = n / per;
    if (n % per)
        size++;
    return size;
}

/* The chunks a worker takes at once (libcmp's default depth + 1). */
#define HANDOVER_CHUNKS_PER_WORKER 3

/* Job r, whose tasks are all submitted, is now awaited by its caller: the
 * tasks still out become sync tasks. */
static void become_sync(PoolCore *c, ResultObject *r)
{
    pthread_mutex_lock(&c->mu);
    if (!r->ready) {
        r->sync = 1;
        r->sync_left = r->remaining;
        c->sync_tasks += r->sync_left;
    }
    pthread_mutex_unlock(&c->mu);
}

/* Chunks at least this long of a map over a range travel as ranges: a
 * chunk is a few bytes to send instead of one int per item, and the
 * worker calls the function on the same ints. */
#define RANGE_CHUNK_MIN 16

static PyObject *map_async(PoolObject *self, int kind, PyObject *func, PyObject *iterable,
                           PyObject *chunksize_o, PyObject *callback, PyObject *error_callback,
                           int sync)
{
    PoolCore *c = running_core(self);
    if (!c)
        return NULL;
    PyObject *items = kind == KIND_MAP && PyRange_Check(iterable) ? Py_NewRef(iterable)
                                                                  : PySequence_List(iterable);
    if (!items)
        return NULL;
    Py_ssize_t n = PySequence_Length(items);
    if (n < 0) {
        Py_DECREF(items); /* a range longer than sys.maxsize */
        return NULL;
    }
    Py_ssize_t chunksize;
    if (!chunksize_o || chunksize_o == Py_None) {
        chunksize = default_chunksize(n, c->processes);
    } else {
        chunksize = PyLong_AsSsize_t(chunksize_o);
        if (chunksize == -1 && PyErr_Occurred()) {
            Py_DECREF(items);
            return NULL;
        }
        if (chunksize < 1) {
            Py_DECREF(items);
            PyErr_Format(PyExc_ValueError, "Chunksize must be 1+, not %zd", chunksize);
            return NULL;
        }
    }
    if (PyRange_Check(items) && chunksize < RANGE_CHUNK_MIN)
        Py_SETREF(items, PySequence_List(items));
    ResultObject *r = items ? result_new(MapResult_type, c, callback, error_callback) : NULL;
    if (!r) {
        Py_XDECREF(items);
        return NULL;
    }
    r->length = n;
    r->chunksize = chunksize ? chunksize : 1;
    r->remaining = n ? (n + r->chunksize - 1) / r->chunksize : 0;
    /* More chunks than the workers take at once: the result thread reads
     * while the caller submits the rest, so that the workers are fed as
     * they finish, and the caller reads once it waits. */
    int handover = sync && r->remaining > (Py_ssize_t)(HANDOVER_CHUNKS_PER_WORKER * c->processes);
    r->sync = sync && !handover;
    r->value = PyList_New(n);
    if (!r->value)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++)
        PyList_SET_ITEM(r->value, i, Py_NewRef(Py_None));
    if (n == 0) {
        r->success = 1; /* ready at once; the stdlib calls no callback then */
        r->ready = 1;
    }
    for (Py_ssize_t k = 0; k * r->chunksize < n; k++) {
        PyObject *chunk = PySequence_GetSlice(items, k * r->chunksize, (k + 1) * r->chunksize);
        if (!chunk || submit(c, kind, func, chunk, (PyObject *)r, k) < 0) {
            Py_XDECREF(chunk);
            goto fail;
        }
        Py_DECREF(chunk);
    }
    if (handover)
        become_sync(c, r);
    Py_DECREF(items);
    return (PyObject *)r;
fail:
    Py_DECREF(items);
    Py_DECREF(r);
    return NULL;
}

struct map_watch {
    ResultObject *r;
    Py_ssize_t seen; /* chunks still out when last reported */
};

static int map_moved(void *obj)
{
    struct map_watch *w = obj;
    return w->r->ready || w->r->remaining != w->seen;
}

/* map()/starmap() with progress=: waits for r reporting each chunk. */
static PyObject *map_with_progress(ResultObject *r, PyObject *progress)
{
    cmp_py_progress pr;
    if (cmp_py_progress_start(&pr, progress, r->length) < 0)
        return NULL;
    Py_ssize_t chunks = r->length ? (r->length + r->chunksize - 1) / r->chunksize : 0;
    struct map_watch w = {r, -1};
    while (!r->ready) {
        w.seen = r->remaining;
        Py_ssize_t done = (chunks - r->remaining) * r->chunksize;
        if (cmp_py_progress_update(&pr, done < r->length ? done : r->length) < 0 ||
            core_wait(r->core, map_moved, &w, NULL, 1, r) < 0) {
            cmp_py_progress_end(&pr);
            return NULL;
        }
    }
    if (r->success && cmp_py_progress_update(&pr, r->length) < 0) {
        cmp_py_progress_end(&pr);
        return NULL;
    }
    cmp_py_progress_end(&pr);
    return Result_get((PyObject *)r, NULL, 0, NULL);
}

static PyObject *parse_map(PyObject *op, PyObject *args, PyObject *kwds, int kind, int async,
                           const char *fmt)
{
    static char *kwlist_async[] = {"func",     "iterable",       "chunksize",
                                   "callback", "error_callback", NULL};
    static char *kwlist[] = {"func", "iterable", "chunksize", "progress", NULL};
    PyObject *func, *iterable, *chunksize = Py_None, *callback = Py_None, *error_callback = Py_None,
                               *progress = Py_None;
    int ok = async ? PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist_async, &func, &iterable,
                                                 &chunksize, &callback, &error_callback)
                   : PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &func, &iterable,
                                                 &chunksize, &progress);
    if (!ok)
        return NULL;
    PyObject *r = map_async((PoolObject *)op, kind, func, iterable, chunksize, callback,
                            error_callback, !async);
    if (!r || async)
        return r;
    PyObject *v = progress != Py_None ? map_with_progress((ResultObject *)r, progress)
                                      : Result_get(r, NULL, 0, NULL);
    Py_DECREF(r);
    return v;
}

static PyObject *Pool_map(PyObject *op, PyObject *args, PyObject *kwds)
{
    return parse_map(op, args, kwds, KIND_MAP, 0, "OO|O$O:map");
}

static PyObject *Pool_map_async(PyObject *op, PyObject *args, PyObject *kwds)
{
    return parse_map(op, args, kwds, KIND_MAP, 1, "OO|OOO:map_async");
}

static PyObject *Pool_starmap(PyObject *op, PyObject *args, PyObject *kwds)
{
    return parse_map(op, args, kwds, KIND_STARMAP, 0, "OO|O$O:starmap");
}

static PyObject *Pool_starmap_async(PyObject *op, PyObject *args, PyObject *kwds)
{
    return parse_map(op, args, kwds, KIND_STARMAP, 1, "OO|OOO:starmap_async");
}

static PyObject *start_imap(PyObject *op, PyObject *args, PyObject *kwds, int unordered)
{
    static char *kwlist[] = {"func", "iterable", "chunksize", "buffersize", "progress", NULL};
    PyObject *func, *iterable, *buffersize_o = Py_None, *progress = Py_None;
    Py_ssize_t chunksize = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds,
                                     unordered ? "OO|n$OO:imap_unordered" : "OO|n$OO:imap", kwlist,
                                     &func, &iterable, &chunksize, &buffersize_o, &progress))
        return NULL;
    PoolCore *c = running_core((PoolObject *)op);
    if (!c)
        return NULL;
    if (chunksize < 1) {
        PyErr_Format(PyExc_ValueError, "Chunksize must be 1+, not %zd", chunksize);
        return NULL;
    }
    Py_ssize_t buffersize = (Py_ssize_t)c->processes * 16;
    if (buffersize_o != Py_None) {
        buffersize = PyLong_AsSsize_t(buffersize_o);
        if (buffersize == -1 && PyErr_Occurred())
            return NULL;
        if (buffersize < 1) {
            PyErr_SetString(PyExc_ValueError, "buffersize must be None or > 0");
            return NULL;
        }
    }
    PyObject *source = PyObject_GetIter(iterable);
    if (!source)
        return NULL;
    IMapObject *it =
        PyObject_GC_New(IMapObject, unordered ? IMapUnorderedIterator_type : IMapIterator_type);
    if (!it) {
        Py_DECREF(source);
        return NULL;
    }
    it->core = (PoolCore *)Py_NewRef(c);
    it->func = Py_NewRef(func);
    it->source = source;
    it->done = (outcome_ring){NULL, 0};
    it->arrived = 0;
    it->current = NULL;
    it->pos = 0;
    it->chunksize = chunksize;
    it->buffersize = buffersize;
    it->submitted = it->consumed = 0;
    it->total = -1;
    it->unordered = unordered;
    it->feeding = 0;
    it->yielded = 0;
    it->weakreflist = NULL;
    Py_ssize_t known = PyObject_HasAttrString(iterable, "__len__") ? PyObject_Length(iterable) : -1;
    if (known < 0)
        PyErr_Clear();
    int prc = cmp_py_progress_start(&it->progress, progress, known);
    PyObject_GC_Track(it);
    if (prc < 0) {
        Py_DECREF(it);
        return NULL;
    }
    PyObject *ref = PyWeakref_NewRef((PyObject *)it, NULL);
    if (!ref || PyList_Append(c->feeders, ref) < 0 || imap_top_up(it) < 0) {
        Py_XDECREF(ref);
        Py_DECREF(it);
        return NULL;
    }
    Py_DECREF(ref);
    return (PyObject *)it;
}

static PyObject *Pool_imap(PyObject *op, PyObject *args, PyObject *kwds)
{
    return start_imap(op, args, kwds, 0);
}

static PyObject *Pool_imap_unordered(PyObject *op, PyObject *args, PyObject *kwds)
{
    return start_imap(op, args, kwds, 1);
}

/* The object a weak reference names, as a new reference, or NULL when it
 * is gone. */
static PyObject *strong_ref(PyObject *ref)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj = NULL;
    if (PyWeakref_GetRef(ref, &obj) < 0)
        PyErr_Clear();
    return obj;
#else
    PyObject *obj = PyWeakref_GetObject(ref);
    return obj == Py_None ? NULL : Py_NewRef(obj);
#endif
}

/* close(): the rest of every live iterator's input goes to the pool now. */
static int feed_all(PoolCore *c)
{
    Py_ssize_t n = PyList_GET_SIZE(c->feeders);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = strong_ref(PyList_GET_ITEM(c->feeders, i));
        if (!it)
            continue; /* dropped: the rest of its input is cancelled */
        int rc;
        while ((rc = imap_feed_one((IMapObject *)it)) > 0)
            ;
        Py_DECREF(it);
        if (rc < 0)
            return -1;
    }
    return PyList_SetSlice(c->feeders, 0, n, NULL);
}

/* GIL held; once the pool is not running, the result thread reads to the
 * end. */
static void set_state(PoolCore *c, int state)
{
    pthread_mutex_lock(&c->mu);
    c->state = state;
    role_changed(c);
    pthread_mutex_unlock(&c->mu);
}

static PyObject *Pool_close(PyObject *op, PyObject *unused)
{
    (void)unused;
    ((PoolObject *)op)->shown_state = -1;
    PoolCore *c = ((PoolObject *)op)->core;
    if (c && c->state == POOL_RUN) {
        if (feed_all(c) < 0)
            return NULL;
        set_state(c, POOL_CLOSE);
        c->ops->close(c->pool);
    }
    Py_RETURN_NONE;
}

static void core_terminate(PoolCore *c)
{
    if (c->state == POOL_TERMINATE)
        return;
    set_state(c, POOL_TERMINATE);
    Py_BEGIN_ALLOW_THREADS
    c->ops->terminate(c->pool);
    Py_END_ALLOW_THREADS
}

static PyObject *Pool_terminate(PyObject *op, PyObject *unused)
{
    (void)unused;
    ((PoolObject *)op)->shown_state = -1;
    PoolCore *c = ((PoolObject *)op)->core;
    if (c)
        core_terminate(c);
    Py_RETURN_NONE;
}

static int pool_join_wait(void *arg, const struct timespec *deadline)
{
    PoolCore *c = arg;
    return c->ops->join(c->pool, deadline);
}

static PyObject *Pool_join(PyObject *op, PyObject *unused)
{
    (void)unused;
    PoolCore *c = ((PoolObject *)op)->core;
    if (!c)
        Py_RETURN_NONE;
    if (c->state == POOL_RUN) {
        PyErr_SetString(PyExc_ValueError, "Pool is still running");
        return NULL;
    }
    /* the result thread ends once every task is out: then the workers */
    if (core_wait(c, flag_set, &c->handler_done, NULL, 0, NULL) < 0)
        return NULL;
    int rc = cmp_py_wait(pool_join_wait, c, NULL, 0);
    if (rc == -EINTR)
        return NULL; /* a signal handler raised */
    if (rc < 0)
        return cmp_py_raise(rc);
    Py_RETURN_NONE;
}

static PyObject *Pool_enter(PyObject *op, PyObject *unused)
{
    (void)unused;
    if (!running_core((PoolObject *)op))
        return NULL;
    return Py_NewRef(op);
}

static PyObject *Pool_exit(PyObject *op, PyObject *args)
{
    (void)args;
    return Pool_terminate(op, NULL);
}

static PyObject *Pool_reduce(PyObject *op, PyObject *unused)
{
    (void)op;
    (void)unused;
    PyErr_SetString(PyExc_NotImplementedError,
                    "pool objects cannot be passed between processes or pickled");
    return NULL;
}

static PyObject *Pool_repr(PyObject *op)
{
    PoolCore *c = ((PoolObject *)op)->core;
    static const char *names[] = {"RUN", "CLOSE", "TERMINATE"};
    return PyUnicode_FromFormat("<%s state=%s pool_size=%u>", Py_TYPE(op)->tp_name,
                                c ? names[c->state] : "TERMINATE", c ? c->processes : 0);
}

static int Pool_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"processes", "initializer", "initargs", "maxtasksperchild",
                             "context",   "_backend",    NULL};
    PoolObject *self = (PoolObject *)op;
    PyObject *processes = Py_None, *initializer = Py_None, *initargs = NULL, *maxtasks = Py_None,
             *context = Py_None, *backend = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OOOOO$O:Pool", kwlist, &processes, &initializer,
                                     &initargs, &maxtasks, &context, &backend))
        return -1;
    const cmp_py_pool_backend *be = &libcmp_backend;
    if (backend != Py_None && !(be = PyCapsule_GetPointer(backend, CMP_PY_POOL_BACKEND)))
        return -1;
    if (self->core) {
        PyErr_SetString(PyExc_RuntimeError, "Pool.__init__ called twice");
        return -1;
    }
    cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(op));
    if (cmp_py_pool_worker_setup() < 0)
        return -1;
    /* the start method: the context's (ctx.Pool() passes it), else the
     * default context's; spawn and forkserver workers are new interpreters */
    int method = CMP_PY_FORK;
    if (context != Py_None) {
        PyObject *name = PyObject_CallMethod(context, "get_start_method", NULL);
        if (!name)
            return -1;
        /* anything but a method's name (a stand-in context of a test, a
         * mock) forks, as the default does */
        int is_str = PyUnicode_Check(name);
        method = is_str && PyUnicode_CompareWithASCIIString(name, "spawn") == 0 ? CMP_PY_SPAWN
                 : is_str && PyUnicode_CompareWithASCIIString(name, "forkserver") == 0
                     ? CMP_PY_FORKSERVER
                     : CMP_PY_FORK;
        Py_DECREF(name);
    } else {
        method = cmp_py_context_method();
    }
    long n = 0;
    if (processes != Py_None) {
        n = PyLong_AsLong(processes);
        if (n == -1 && PyErr_Occurred())
            return -1;
        if (n < 1) {
            PyErr_SetString(PyExc_ValueError, "Number of processes must be at least 1");
            return -1;
        }
    }
    if (initializer != Py_None && !PyCallable_Check(initializer)) {
        PyErr_SetString(PyExc_TypeError, "initializer must be a callable");
        return -1;
    }
    unsigned long long maxt = 0;
    if (maxtasks != Py_None) {
        long long v = PyLong_Check(maxtasks) ? PyLong_AsLongLong(maxtasks) : -1;
        if (v == -1 && PyErr_Occurred())
            PyErr_Clear();
        if (!PyLong_Check(maxtasks) || v <= 0) {
            PyErr_SetString(PyExc_ValueError, "maxtasksperchild must be a positive int or None");
            return -1;
        }
        maxt = (unsigned long long)v;
    }
    PoolCore *c = PyObject_GC_New(PoolCore, Core_type);
    if (!c)
        return -1;
    c->pool = NULL;
    c->ops = be->ops;
    c->st = st;
    int jobs_ok = cmp_py_jobs_init(&c->jobs) == 0;
    c->feeders = PyList_New(0);
    c->last_func = c->last_func_bytes = NULL;
    c->work.st = st;
    c->work.initializer = initializer == Py_None ? NULL : Py_NewRef(initializer);
    c->work.initargs = initargs ? PySequence_Tuple(initargs) : PyTuple_New(0);
    c->completions = 0;
    c->handler_done = 0;
    c->state = POOL_RUN;
    c->reader = READER_NONE;
    c->reader_tid = 0;
    c->reading_waiters = 0;
    c->rt_wait = RT_BUSY;
    c->waiter_left_ns = 0;
    c->ntasks = c->sync_tasks = 0;
    c->deferred = NULL;
    c->ndeferred = c->cap_deferred = 0;
    c->deferred_busy = 0;
    c->rt_tid = 0;
    c->owner = getpid();
    PyObject_GC_Track(c);
    if (!jobs_ok || !c->feeders || !c->work.initargs) {
        Py_DECREF(c);
        return -1;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_cond_init(&c->rt_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&c->mu, NULL);

    cmp_pool_options_t opt = {
        .workers = (unsigned)n,
        .task = cmp_py_pool_worker_task,
        .init = cmp_py_pool_worker_init,
        .wait_hook = cmp_py_pool_worker_wait_hook,
        .exit_hook = cmp_py_pool_worker_exit_hook,
        .task_alloc = cmp_py_pool_worker_task_alloc,
        .fork_hook = cmp_py_pool_worker_fork_hook,
        .arg = &c->work,
        .max_tasks = maxt,
    };
    c->work.method = method;
    c->work.max_tasks = maxt;
    /* spawn and forkserver workers are new programs that map libcmp's
     * pool themselves; another backend starts its workers its own way */
    if (method != CMP_PY_FORK && be->ops == &libcmp_ops)
        opt.start_worker = cmp_py_pool_worker_start;
    void *pool;
    int rc;
    /* the GIL stays held: the fork hook's PyGILState_Ensure nests */
    c->work.creating = 1;
    rc = be->ops->create(be->ctx, &pool, &opt);
    c->work.creating = 0;
    if (rc < 0) {
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cv);
        pthread_cond_destroy(&c->rt_cv);
        Py_DECREF(c);
        if (!PyErr_Occurred()) /* a worker's start failed with its own */
            cmp_py_raise(rc);
        return -1;
    }
    c->pool = pool;
    c->processes = c->ops->size(pool);
    self->core = c;

    PyObject *thread_mod = PyImport_ImportModule("_thread");
    PyObject *start = thread_mod ? PyObject_GetAttrString(thread_mod, "start_new_thread") : NULL;
    PyObject *fn = start ? PyCFunction_New(&result_thread_def, NULL) : NULL;
    PyObject *targs = fn ? PyTuple_Pack(1, (PyObject *)c) : NULL;
    PyObject *ident = targs ? PyObject_CallFunctionObjArgs(start, fn, targs, NULL) : NULL;
    Py_XDECREF(thread_mod);
    Py_XDECREF(start);
    Py_XDECREF(fn);
    Py_XDECREF(targs);
    if (!ident) {
        core_terminate(c);
        return -1;
    }
    Py_DECREF(ident);
    return 0;
}

/* The class Pool(..., context=context) makes instead of ours (a new
 * reference), or NULL: ours, or an exception. Only a context that is not
 * one of ours is looked at (pool.py's _foreign_pool_class decides). */
static PyTypeObject *foreign_pool_class(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (type != Pool_type)
        return NULL; /* a subclass of ours stays one */
    PyObject *context = kwds ? PyDict_GetItemString(kwds, "context") : NULL;
    if (!context && PyTuple_GET_SIZE(args) > 4)
        context = PyTuple_GET_ITEM(args, 4);
    cmp_py_state *st = cmp_py_state_of_type(type);
    if (!context || context == Py_None || PyObject_TypeCheck(context, st->Context_type))
        return NULL;
    PyObject *mod = PyImport_ImportModule("cmultiprocessing.pool");
    PyObject *cls = mod ? PyObject_CallMethod(mod, "_foreign_pool_class", "O", context) : NULL;
    Py_XDECREF(mod);
    if (cls == Py_None)
        Py_CLEAR(cls);
    if (cls && !PyType_Check(cls)) {
        Py_DECREF(cls);
        PyErr_SetString(PyExc_TypeError, "_foreign_pool_class() must return a class or None");
        return NULL;
    }
    return (PyTypeObject *)cls;
}

static PyObject *Pool_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyTypeObject *foreign = foreign_pool_class(type, args, kwds);
    if (foreign) {
        /* Python then calls its __init__ (the stdlib's) with our arguments */
        PyObject *r = foreign->tp_alloc(foreign, 0);
        if (r)
            ((PoolObject *)r)->shown_state = -1;
        Py_DECREF(foreign);
        return r;
    }
    if (PyErr_Occurred())
        return NULL;
    PoolObject *self = (PoolObject *)type->tp_alloc(type, 0);
    if (self) {
        self->core = NULL;
        self->weakreflist = NULL;
        self->shown_state = -1;
    }
    return (PyObject *)self;
}

static void Pool_finalize(PyObject *op)
{
    PoolObject *self = (PoolObject *)op;
    PoolCore *c = self->core;
    int state = !c ? -1 : self->shown_state >= 0 ? self->shown_state : c->state;
    if (state != POOL_RUN || getpid() != c->owner)
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (PyErr_ResourceWarning(op, 1, "unclosed running multiprocessing pool %R", op) < 0)
        PyErr_WriteUnraisable(op);
    core_terminate(c);
    PyErr_Restore(type, value, tb);
}

static int Pool_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((PoolObject *)op)->core);
    return 0;
}

static int Pool_clear(PyObject *op)
{
    Py_CLEAR(((PoolObject *)op)->core);
    return 0;
}

static void Pool_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    if (PyObject_CallFinalizerFromDealloc(op) < 0)
        return;
    PyObject_GC_UnTrack(op);
    if (((PoolObject *)op)->weakreflist)
        PyObject_ClearWeakRefs(op);
    Pool_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *Pool_get_processes(PyObject *op, void *closure)
{
    (void)closure;
    PoolCore *c = ((PoolObject *)op)->core;
    return PyLong_FromUnsignedLong(c ? c->processes : 0);
}

PyObject *cmp_py_pool_pids(PyObject *op)
{
    PoolCore *c = ((PoolObject *)op)->core;
    if (!c)
        return PyList_New(0);
    unsigned size = c->ops->pids ? c->ops->size(c->pool) : 0;
    pid_t *pids = PyMem_Malloc((size ? size : 1) * sizeof *pids);
    if (!pids)
        return PyErr_NoMemory();
    unsigned n = size ? c->ops->pids(c->pool, pids, size) : 0;
    PyObject *list = PyList_New(n);
    for (unsigned i = 0; list && i < n; i++) {
        PyObject *pid = PyLong_FromLong(pids[i]);
        if (!pid)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, pid);
    }
    PyMem_Free(pids);
    return list;
}

static PyObject *Pool_get_pids(PyObject *op, void *closure)
{
    (void)closure;
    return cmp_py_pool_pids(op);
}

static PyObject *Pool_get_pool(PyObject *op, void *closure)
{
    (void)closure;
    return cmp_py_pool_views(op);
}

/* The stdlib's Pool refills itself here after reaping workers that exited
 * (its worker-handler thread calls it; a few programs and CPython's tests
 * too). Ours starts a worker's replacement as soon as it exits: nothing is
 * left to do. */
static PyObject *Pool_repopulate(PyObject *op, PyObject *unused)
{
    (void)op;
    (void)unused;
    Py_RETURN_NONE;
}

static const char *const state_names[] = {"RUN", "CLOSE", "TERMINATE"};

/* The stdlib's state names (multiprocessing.pool.RUN...): code that checks
 * `pool._state == multiprocessing.pool.RUN` before submitting works on
 * ours. */
static PyObject *Pool_get_state(PyObject *op, void *closure)
{
    (void)closure;
    PoolObject *self = (PoolObject *)op;
    if (!self->core)
        return PyUnicode_FromString("INIT");
    return PyUnicode_FromString(
        state_names[self->shown_state >= 0 ? self->shown_state : self->core->state]);
}

/* Writing one of the names changes what _state says and what the
 * collection of the pool does (a pool said to be running warns with a
 * ResourceWarning, as CPython's suite checks by writing RUN into a
 * terminated pool), not what the pool does: whether it takes tasks and
 * how it ends follow close() and terminate() alone, each of which makes
 * _state follow them again. */
static int Pool_set_state(PyObject *op, PyObject *value, void *closure)
{
    (void)closure;
    for (int i = 0; value && PyUnicode_Check(value) && i < 3; i++) {
        if (PyUnicode_CompareWithASCIIString(value, state_names[i]) == 0) {
            ((PoolObject *)op)->shown_state = i;
            return 0;
        }
    }
    PyErr_SetString(PyExc_ValueError, "_state must be 'RUN', 'CLOSE' or 'TERMINATE'");
    return -1;
}

static PyGetSetDef Pool_getset[] = {
    {"_processes", Pool_get_processes, NULL, "Number of worker processes.", NULL},
    {"_state", Pool_get_state, Pool_set_state, "'RUN', 'CLOSE' or 'TERMINATE', as the stdlib's.",
     NULL},
    {"_pids", Pool_get_pids, NULL, "Pids of the running workers (cmultiprocessing).", NULL},
    {"_pool", Pool_get_pool, NULL, "The running workers, as objects with a pid.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#define KW (METH_VARARGS | METH_KEYWORDS)
#define FN(f) (PyCFunction)(void (*)(void))(f)
static PyMethodDef Pool_methods[] = {
    {"_repopulate_pool", Pool_repopulate, METH_NOARGS,
     "Nothing to do: a worker that exits is replaced at once (the stdlib's refill)."},
    {"apply", FN(Pool_apply), METH_FASTCALL | METH_KEYWORDS,
     "apply($self, /, func, args=(), kwds={})\n--\n\nCall func(*args, **kwds) in a worker and "
     "return its result."},
    {"apply_async", FN(Pool_apply_async), METH_FASTCALL | METH_KEYWORDS,
     "apply_async($self, /, func, args=(), kwds={}, callback=None, error_callback=None)\n--\n\n"
     "Call func(*args, **kwds) in a worker; returns an AsyncResult."},
    {"map", FN(Pool_map), KW,
     "map($self, /, func, iterable, chunksize=None, *, progress=None)\n--\n\nfunc applied "
     "to every item, in chunks sent to the workers; the results as a list in input order. "
     "Beyond the stdlib: progress=True shows a tqdm bar (a line on stderr without tqdm); a "
     "callable gets (done, total)."},
    {"map_async", FN(Pool_map_async), KW,
     "map_async($self, /, func, iterable, chunksize=None, callback=None, "
     "error_callback=None)\n--\n\nAs map(), returning an AsyncResult."},
    {"starmap", FN(Pool_starmap), KW,
     "starmap($self, /, func, iterable, chunksize=None, *, progress=None)\n--\n\nAs map(), "
     "calling func(*item)."},
    {"starmap_async", FN(Pool_starmap_async), KW,
     "starmap_async($self, /, func, iterable, chunksize=None, callback=None, "
     "error_callback=None)\n--\n\nAs starmap(), returning an AsyncResult."},
    {"imap", FN(Pool_imap), KW,
     "imap($self, /, func, iterable, chunksize=1, *, buffersize=None, progress=None)\n--\n\n"
     "Like map(), "
     "but an iterator of the results, in input order. Beyond the stdlib: at most buffersize "
     "chunks (default 16 per worker) are out at a time, so the input is read as the results "
     "are consumed; close() feeds the rest."},
    {"imap_unordered", FN(Pool_imap_unordered), KW,
     "imap_unordered($self, /, func, iterable, chunksize=1, *, buffersize=None, "
     "progress=None)\n--\n\nAs "
     "imap(), the results in the order they come."},
    {"close", Pool_close, METH_NOARGS,
     "close()\n--\n\nNo more tasks; the workers exit once the queued ones are done."},
    {"terminate", Pool_terminate, METH_NOARGS,
     "terminate()\n--\n\nStop the workers at once; unfinished tasks fail."},
    {"join", Pool_join, METH_NOARGS,
     "join()\n--\n\nWait for the workers to exit (after close() or terminate())."},
    {"__enter__", Pool_enter, METH_NOARGS, NULL},
    {"__exit__", Pool_exit, METH_VARARGS, NULL},
    {"__reduce__", Pool_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Pool_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(PoolObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static const char POOL_DOC[] =
    "Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None, "
    "context=None)\n--\n\n"
    "A pool of worker processes (multiprocessing.pool.Pool) on libcmp's worker pool.\n\n"
    "Beyond the standard library: a worker that dies mid-task (a signal, os._exit)\n"
    "fails that task with WorkerLostError naming the cause, its queued tasks go to\n"
    "other workers and a new worker replaces it; an initializer that raises fails\n"
    "every task with InitializerError (its __cause__ is the initializer's\n"
    "exception) instead of respawning workers forever; an exception that cannot be\n"
    "pickled arrives as MaybeEncodingError or RuntimeError naming it, never a hang.";

static PyType_Slot Pool_slots[] = {
    {Py_tp_doc, (void *)POOL_DOC}, {Py_tp_new, Pool_new},           {Py_tp_init, Pool_init},
    {Py_tp_methods, Pool_methods}, {Py_tp_members, Pool_members},   {Py_tp_getset, Pool_getset},
    {Py_tp_repr, Pool_repr},       {Py_tp_finalize, Pool_finalize}, {Py_tp_traverse, Pool_traverse},
    {Py_tp_clear, Pool_clear},     {Py_tp_dealloc, Pool_dealloc},   {0, NULL},
};

static PyType_Spec Pool_spec = {
    "cmultiprocessing.pool.Pool",
    sizeof(PoolObject),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    Pool_slots,
};

/* ---- module --------------------------------------------------------------- */

/* Pool(processes, initializer, initargs, maxtasksperchild) for context
 * (None: the default context's), as a context's Pool() takes them: no
 * context= of the caller's. */
static PyObject *make_pool(PyObject *args, PyObject *kwds, PyObject *context)
{
    static char *kwlist[] = {"processes", "initializer", "initargs", "maxtasksperchild", NULL};
    PyObject *processes = Py_None, *initializer = Py_None, *initargs = NULL, *maxtasks = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OOOO:Pool", kwlist, &processes, &initializer,
                                     &initargs, &maxtasks))
        return NULL;
    PyObject *empty = initargs ? NULL : PyTuple_New(0);
    PyObject *r =
        PyObject_CallFunctionObjArgs((PyObject *)Pool_type, processes, initializer,
                                     initargs ? initargs : empty, maxtasks, context, NULL);
    Py_XDECREF(empty);
    return r;
}

static PyObject *pool_factory(PyObject *module, PyObject *args, PyObject *kwds)
{
    (void)module;
    return make_pool(args, kwds, Py_None);
}

/* _context_pool(context, *args, **kwds): a spawn or forkserver context's
 * Pool (context.c binds its first argument). */
static PyObject *context_pool(PyObject *module, PyObject *args, PyObject *kwds)
{
    (void)module;
    if (PyTuple_GET_SIZE(args) < 1) {
        PyErr_SetString(PyExc_TypeError, "_context_pool() needs a context");
        return NULL;
    }
    PyObject *rest = PyTuple_GetSlice(args, 1, PyTuple_GET_SIZE(args));
    PyObject *r = rest ? make_pool(rest, kwds, PyTuple_GET_ITEM(args, 0)) : NULL;
    Py_XDECREF(rest);
    return r;
}

static PyMethodDef pool_functions[] = {
    {"Pool", (PyCFunction)(void (*)(void))pool_factory, METH_VARARGS | METH_KEYWORDS,
     "Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None)\n--\n\n"
     "A process pool object (see cmultiprocessing.pool.Pool)."},
    {"_context_pool", (PyCFunction)(void (*)(void))context_pool, METH_VARARGS | METH_KEYWORDS,
     "_context_pool(context, processes=None, initializer=None, initargs=(), "
     "maxtasksperchild=None)\n--\n\nThe Pool of a spawn or forkserver context."},
    {NULL, NULL, 0, NULL},
};

/* ---- what a backend's servers need (the capsule _pool_api) --------------- */

static cmp_py_state *api_state;

static cmp_py_pool_work *api_work_new(PyObject *initializer, PyObject *initargs)
{
    if (cmp_py_pool_worker_setup() < 0)
        return NULL;
    cmp_py_pool_work *w = PyMem_Calloc(1, sizeof *w);
    if (!w)
        return (cmp_py_pool_work *)PyErr_NoMemory();
    w->st = api_state;
    w->initializer = initializer == Py_None ? NULL : Py_NewRef(initializer);
    w->initargs = PySequence_Tuple(initargs);
    if (!w->initargs) {
        Py_XDECREF(w->initializer);
        PyMem_Free(w);
        return NULL;
    }
    return w; /* lives as long as the pool that runs it: the process */
}

static const cmp_py_pool_api pool_api = {
    CMP_PY_POOL_API_VERSION,
    cmp_py_pool_worker_task,
    cmp_py_pool_worker_init,
    cmp_py_pool_worker_wait_hook,
    cmp_py_pool_worker_fork_hook,
    cmp_py_pool_worker_task_alloc,
    api_work_new,
    cmp_py_pool_worker_set_where,
    cmp_py_pool_worker_task_owned,
};

int cmp_py_pool_init(PyObject *module, cmp_py_state *st)
{
    api_state = st;
    PyObject *api = PyCapsule_New((void *)&pool_api, CMP_PY_POOL_API, NULL);
    if (!api || PyModule_AddObject(module, "_pool_api", api) < 0) {
        Py_XDECREF(api);
        return -1;
    }
    WorkerLostError = cmp_py_add_exception(module, "WorkerLostError", st->ProcessError,
                                           "A pool's worker process died while it ran the task.");
    InitializerError = cmp_py_add_exception(module, "InitializerError", st->ProcessError,
                                            "A pool's initializer raised (the exception is the "
                                            "__cause__): the pool runs no task.");
    if (!WorkerLostError || !InitializerError)
        return -1;
    /* Pool errors, at home in cmultiprocessing.pool (which exports them):
     * the package's own names stay exactly the stdlib's __all__. */
    PyObject *home = PyUnicode_FromString("cmultiprocessing.pool");
    int err = !home || PyObject_SetAttrString(WorkerLostError, "__module__", home) < 0 ||
              PyObject_SetAttrString(InitializerError, "__module__", home) < 0;
    Py_XDECREF(home);
    if (err)
        return -1;
    if (cmp_py_pool_view_init(module) < 0)
        return -1;
    Core_type = (PyTypeObject *)cmp_py_type_from_spec(module, &Core_spec, NULL);
    if (!Core_type)
        return -1;
    ApplyResult_type = cmp_py_add_type(module, &ApplyResult_spec, NULL);
    if (!ApplyResult_type)
        return -1;
    MapResult_type = cmp_py_add_type(module, &MapResult_spec, (PyObject *)ApplyResult_type);
    if (!MapResult_type)
        return -1;
    if (PyModule_AddObjectRef(module, "AsyncResult", (PyObject *)ApplyResult_type) < 0)
        return -1;
    IMapIterator_type = cmp_py_add_type(module, &IMapIterator_spec, NULL);
    if (!IMapIterator_type)
        return -1;
    IMapUnorderedIterator_type =
        cmp_py_add_type(module, &IMapUnorderedIterator_spec, (PyObject *)IMapIterator_type);
    if (!IMapUnorderedIterator_type)
        return -1;
    /* the class as "_Pool" (cmultiprocessing.pool.Pool); "Pool" is the
     * factory that modules and contexts offer, without context= */
    Pool_type = (PyTypeObject *)cmp_py_type_from_spec(module, &Pool_spec, NULL);
    if (!Pool_type || PyModule_AddObjectRef(module, "_Pool", (PyObject *)Pool_type) < 0)
        return -1;
    if (cmp_py_pool_worker_init_module(module) < 0)
        return -1;
    return PyModule_AddFunctions(module, pool_functions);
}
