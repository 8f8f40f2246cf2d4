/*
 * cmultiprocessing.mpi._mpi: the binding of libcmp_mpi. On rank 0 it is a
 * backend of _cmp's Pool (the capsule backend() makes): the Pool's whole
 * API, its results, iterators and callbacks are _cmp's, and only the pool
 * underneath is the one spread over the ranks. On the other ranks serve()
 * runs libcmp_mpi's server, whose local pools run _cmp's own worker
 * callbacks (from _cmp's capsule _pool_api), so a task runs there exactly
 * as in a local Pool's worker.
 */
#define PY_SSIZE_T_CLEAN
#include "pool.h"

#include "cmp_mpi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cmp_py_pool_api *api;

static int load_api(void)
{
    if (api)
        return 0;
    api = PyCapsule_Import(CMP_PY_POOL_API, 0);
    if (!api)
        return -1;
    if (api->version != CMP_PY_POOL_API_VERSION) {
        api = NULL;
        PyErr_SetString(PyExc_ImportError, "cmultiprocessing.mpi: _cmp is of another version");
        return -1;
    }
    return 0;
}

static PyObject *raise_rc(int rc)
{
    errno = -rc;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* ---- the backend (rank 0) ------------------------------------------------- */

typedef struct {
    char *config;
    size_t len;
} backend_ctx;

static void *raw_alloc(void *arg, size_t len)
{
    (void)arg;
    return PyMem_RawMalloc(len ? len : 1);
}

static void raw_free(void *arg, void *p)
{
    (void)arg;
    PyMem_RawFree(p);
}

static int be_create(void *ctx, void **pool, const cmp_pool_options_t *opt)
{
    backend_ctx *b = ctx;
    cmp_mpi_pool_options_t mo = {
        .workers = opt->workers,
        .config = b->config,
        .config_len = b->len,
        .alloc = raw_alloc,
        .free = raw_free,
    };
    int rc;
    /* waits for every rank to start its workers */
    Py_BEGIN_ALLOW_THREADS
    rc = cmp_mpi_pool_create((cmp_mpi_pool_t **)pool, &mo);
    Py_END_ALLOW_THREADS
    return rc;
}

static int be_submitv(void *p, const struct iovec *iov, int n, uint64_t *id)
{
    return cmp_mpi_pool_submitv(p, iov, n, id);
}

static int be_submitv_ref(void *p, const struct iovec *iov, int n, uint64_t *id,
                          void (*release)(void *), void *arg)
{
    return cmp_mpi_pool_submitv_ref(p, iov, n, id, release, arg);
}

/* The outcome as the Pool reads it; a lost worker's says where it ran. */
static int be_next(void *p, cmp_pool_outcome_t *out, cmp_ring_alloc_fn alloc, void *arg,
                   const struct timespec *deadline)
{
    (void)alloc; /* our buffers are PyMem_Raw ones already (raw_alloc) */
    (void)arg;
    cmp_mpi_outcome_t o;
    int rc = cmp_mpi_pool_next(p, &o, deadline);
    if (rc < 0)
        return rc;
    *out = o.o;
    if (o.o.status == CMP_POOL_LOST && (o.rank > 0 || o.rank_lost)) {
        /* a worker's death: where; a whole rank's (pid 0): the message */
        char where[400];
        int n = !o.rank_lost
                    ? snprintf(where, sizeof where, "on host %s (MPI rank %d)", o.host, o.rank)
                : o.rank > 0
                    ? snprintf(where, sizeof where,
                               "MPI rank %d on host %s was lost while it ran the task (nothing "
                               "came from it for %s s; the job goes on without it)",
                               o.rank, o.host,
                               getenv(CMP_MPI_RANK_TIMEOUT_ENV) ? getenv(CMP_MPI_RANK_TIMEOUT_ENV)
                                                                : "10")
                    : snprintf(where, sizeof where,
                               "every serving MPI rank was lost: the task cannot run");
        PyMem_RawFree(out->data);
        out->data = PyMem_RawMalloc((size_t)n + 1);
        out->len = out->data ? (size_t)n : 0;
        if (out->data)
            memcpy(out->data, where, (size_t)n + 1);
    }
    return 0;
}

static long be_cancel(void *p, const uint64_t *ids, size_t n)
{
    return cmp_mpi_pool_cancel(p, ids, n);
}
static int be_close(void *p)
{
    return cmp_mpi_pool_close(p);
}
static int be_terminate(void *p)
{
    return cmp_mpi_pool_terminate(p);
}
static int be_join(void *p, const struct timespec *deadline)
{
    return cmp_mpi_pool_join(p, deadline);
}
static void be_destroy(void *p)
{
    cmp_mpi_pool_destroy(p);
}
static unsigned be_size(const void *p)
{
    return cmp_mpi_pool_size(p);
}
static unsigned be_pids(void *p, pid_t *pids, unsigned max)
{
    return cmp_mpi_pool_pids(p, pids, max);
}

static const cmp_py_pool_ops mpi_ops = {
    be_create,    be_submitv, be_submitv_ref, be_next, be_cancel, be_close,
    be_terminate, be_join,    be_destroy,     be_size, be_pids,
};

static void backend_free(PyObject *capsule)
{
    cmp_py_pool_backend *be = PyCapsule_GetPointer(capsule, CMP_PY_POOL_BACKEND);
    if (!be)
        return;
    backend_ctx *b = be->ctx;
    PyMem_Free(b->config);
    PyMem_Free(b);
    PyMem_Free(be);
}

static PyObject *mpi_backend(PyObject *m, PyObject *arg)
{
    (void)m;
    char *data;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &data, &len) < 0)
        return NULL;
    if (cmp_mpi_rank() != 0 || cmp_mpi_size() < 2) {
        PyErr_SetString(PyExc_RuntimeError, "an MPI pool is made on rank 0 of a job of 2+ ranks");
        return NULL;
    }
    cmp_py_pool_backend *be = PyMem_Malloc(sizeof *be);
    backend_ctx *b = be ? PyMem_Malloc(sizeof *b) : NULL;
    char *copy = b ? PyMem_Malloc(len ? (size_t)len : 1) : NULL;
    if (!copy) {
        PyMem_Free(be);
        PyMem_Free(b);
        return PyErr_NoMemory();
    }
    memcpy(copy, data, (size_t)len);
    *b = (backend_ctx){copy, (size_t)len};
    *be = (cmp_py_pool_backend){&mpi_ops, b};
    PyObject *cap = PyCapsule_New(be, CMP_PY_POOL_BACKEND, backend_free);
    if (!cap) {
        PyMem_Free(copy);
        PyMem_Free(b);
        PyMem_Free(be);
    }
    return cap;
}

/* ---- serving (other ranks) ------------------------------------------------ */

/* A big task's bytes where libcmp_mpi received them (its arena, shared
 * with the serving rank): the owner of the arrays decoded from them, which
 * gives the memory back when the last of them goes. In a worker only. */
typedef struct {
    PyObject_HEAD
    void *handle; /* cmp_mpi_task_keep's */
    char *data;
    Py_ssize_t len;
} task_memory;

static PyTypeObject *task_memory_type;

static int task_memory_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    task_memory *m = (task_memory *)self;
    /* writable, as a bytearray's: the memory is this worker's until freed */
    return PyBuffer_FillInfo(view, self, m->data, m->len, 0, flags);
}

static void task_memory_dealloc(PyObject *self)
{
    task_memory *m = (task_memory *)self;
    cmp_mpi_task_release(m->handle);
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot task_memory_slots[] = {
    {Py_bf_getbuffer, task_memory_getbuffer},
    {Py_tp_dealloc, task_memory_dealloc},
    {0, NULL},
};

static PyType_Spec task_memory_spec = {
    "cmultiprocessing.mpi._mpi.TaskMemory",
    sizeof(task_memory),
    0,
    Py_TPFLAGS_DEFAULT,
    task_memory_slots,
};

/* The pool's task function on a serving rank: _cmp's, with a big task
 * decoded where it lies (the arena) instead of copied out of it. */
static int serve_task(void *arg, const void *data, size_t len, cmp_pool_result_t *out)
{
    void *handle = cmp_mpi_task_keep();
    if (!handle)
        return api->task(arg, data, len, out);
    task_memory *m = PyObject_New(task_memory, task_memory_type);
    if (!m) {
        PyErr_Clear();
        cmp_mpi_task_release(handle); /* decoded with a copy, as a small one */
        return api->task(arg, data, len, out);
    }
    Py_INCREF(task_memory_type); /* a heap type's instances hold it */
    m->handle = handle;
    m->data = (char *)data;
    m->len = (Py_ssize_t)len;
    int rc = api->task_owned(arg, (PyObject *)m, data, len, out);
    Py_DECREF(m);
    return rc;
}

/* A pool's config is the pickle of (initializer, initargs, maxtasksperchild)
 * that cmultiprocessing.mpi made on rank 0. */
static int configure(void *arg, const void *config, size_t len, cmp_pool_options_t *opt)
{
    (void)arg;
    PyGILState_STATE g = PyGILState_Ensure();
    int rc = -1;
    PyObject *pickle = PyImport_ImportModule("pickle");
    PyObject *cfg =
        pickle ? PyObject_CallMethod(pickle, "loads", "y#", (const char *)config, (Py_ssize_t)len)
               : NULL;
    PyObject *init, *initargs, *maxtasks;
    if (cfg && PyArg_ParseTuple(cfg, "OOO", &init, &initargs, &maxtasks)) {
        cmp_py_pool_work *w = api->work_new(init, initargs);
        if (w) {
            opt->task = serve_task;
            opt->init = api->init;
            opt->wait_hook = api->wait_hook;
            opt->fork_hook = api->fork_hook;
            opt->task_alloc = api->task_alloc;
            opt->arg = w;
            opt->max_tasks = maxtasks == Py_None ? 0 : PyLong_AsUnsignedLongLong(maxtasks);
            rc = PyErr_Occurred() ? -1 : 0;
        }
    }
    if (rc < 0)
        PyErr_Print(); /* rank 0's Pool() fails; this rank says why */
    Py_XDECREF(cfg);
    Py_XDECREF(pickle);
    PyGILState_Release(g);
    return rc;
}

static PyObject *mpi_serve(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    if (load_api() < 0)
        return NULL;
    char where[300];
    snprintf(where, sizeof where, "(raised on host %s, MPI rank %d)", cmp_mpi_host(),
             cmp_mpi_rank());
    if (api->set_where(where) < 0)
        return NULL;
    cmp_mpi_serve_options_t so = {.configure = configure};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = cmp_mpi_serve(&so);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return raise_rc(rc);
    Py_RETURN_NONE;
}

/* ---- the job -------------------------------------------------------------- */

static PyObject *mpi_init(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = cmp_mpi_init(NULL, NULL);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return raise_rc(rc);
    return PyLong_FromLong(rc);
}

static PyObject *mpi_finalize(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    Py_BEGIN_ALLOW_THREADS
    cmp_mpi_finalize();
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *mpi_rank(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyLong_FromLong(cmp_mpi_rank());
}

static PyObject *mpi_size(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyLong_FromLong(cmp_mpi_size());
}

static PyObject *mpi_host(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyUnicode_FromString(cmp_mpi_host());
}

static PyMethodDef mpi_methods[] = {
    {"init", mpi_init, METH_NOARGS, "Initializes MPI (if it is not); returns this rank."},
    {"finalize", mpi_finalize, METH_NOARGS,
     "Rank 0: stops every serving rank; then finalizes MPI."},
    {"rank", mpi_rank, METH_NOARGS, "This process's rank (-1 before init)."},
    {"size", mpi_size, METH_NOARGS, "The number of ranks (0 before init)."},
    {"host", mpi_host, METH_NOARGS, "This host's name, as MPI knows it."},
    {"serve", mpi_serve, METH_NOARGS, "Serves rank 0's pools until rank 0 finalizes."},
    {"backend", mpi_backend, METH_O, "The Pool backend (_backend=) for a pool config (bytes)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mpi_module = {
    PyModuleDef_HEAD_INIT,
    "cmultiprocessing.mpi._mpi",
    "libcmp_mpi's binding.",
    0,
    mpi_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__mpi(void)
{
    if (load_api() < 0)
        return NULL;
    /* one per process: the workers that use it are of this interpreter */
    if (!task_memory_type &&
        !(task_memory_type = (PyTypeObject *)PyType_FromSpec(&task_memory_spec)))
        return NULL;
    return PyModuleDef_Init(&mpi_module);
}
