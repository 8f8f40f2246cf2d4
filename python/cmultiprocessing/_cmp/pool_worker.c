/*
 * The pool's worker side: what runs in each forked worker. A task is the
 * message (kind, func, payload) of pool.c's submit; the worker decodes it,
 * calls the function (unpickled once per worker: the cache below), and
 * answers with the encoded result, or with its exception in an envelope
 * that the parent can read even when the exception does not unpickle.
 * The worker holds the GIL except while it waits for a task.
 */
#include "pool.h"

#include <errno.h>
#include <signal.h>
#include <unistd.h>

static PyObject *ExceptionWithTraceback, *MaybeEncodingError; /* the stdlib's */

/* The stdlib's classes that carry a task's exception (the remote
 * traceback as __cause__) and a result that could not be pickled: loaded
 * with the first Pool, not with the module. */
int cmp_py_pool_worker_setup(void)
{
    if (ExceptionWithTraceback)
        return 0;
    PyObject *stdpool = PyImport_ImportModule("multiprocessing.pool");
    if (!stdpool)
        return -1;
    PyObject *ewt = PyObject_GetAttrString(stdpool, "ExceptionWithTraceback");
    PyObject *mee = ewt ? PyObject_GetAttrString(stdpool, "MaybeEncodingError") : NULL;
    Py_DECREF(stdpool);
    if (!mee) {
        Py_XDECREF(ewt);
        return -1;
    }
    ExceptionWithTraceback = ewt;
    MaybeEncodingError = mee;
    return 0;
}

static PyThreadState *worker_tstate;

void cmp_py_pool_worker_wait_hook(void *arg, int waiting)
{
    (void)arg;
    if (waiting)
        worker_tstate = PyEval_SaveThread();
    else
        PyEval_RestoreThread(worker_tstate);
}

void cmp_py_pool_worker_exit_hook(void *arg)
{
    (void)arg;
    cmp_py_process_pool_worker_exit();
}

/* A big task is received straight into a bytearray of ours (the pool's
 * task_alloc), so that its arrays are decoded as views of it rather than
 * copied a second time. Called in the wait for a task, without the GIL.
 * The worker runs one task at a time: one pending buffer.
 *
 * The buffer of the last big task is kept (`spare`) and received into
 * again once nothing else holds it (the task's arguments are gone): memory
 * the kernel gives a process is faulted in and cleared page by page, which
 * costs several times the copy itself (64 MiB: ~35 ms against ~3 ms here),
 * and glibc hands a block that size back to the kernel at every free. A
 * worker so keeps at most one buffer, of about its last big task's size,
 * between tasks. */
static PyObject *big_task;
static const char *big_data;
static size_t big_len;
static PyObject *spare;

/* spare, when it can take a message of len bytes without holding much
 * more than it needs; else NULL (and a spare too big is let go). */
static PyObject *take_spare(size_t len)
{
    if (!spare)
        return NULL;
    size_t have = (size_t)PyByteArray_GET_SIZE(spare);
    if (Py_REFCNT(spare) != 1 || have < len || have / 2 > len) {
        Py_CLEAR(spare);
        return NULL;
    }
    PyObject *b = spare;
    spare = NULL;
    return b;
}

void *cmp_py_pool_worker_task_alloc(void *arg, size_t len)
{
    (void)arg;
    PyEval_RestoreThread(worker_tstate);
    Py_CLEAR(big_task); /* a get that failed after its allocation */
    big_task = take_spare(len);
    if (!big_task)
        big_task = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (big_task) {
        big_data = PyByteArray_AS_STRING(big_task);
        big_len = len;
    } else {
        PyErr_Clear(); /* the pool falls back to its own buffer */
    }
    worker_tstate = PyEval_SaveThread();
    return big_task ? (void *)PyByteArray_AS_STRING(big_task) : NULL;
}

int cmp_py_pool_worker_task_owned(void *arg, PyObject *owner, const void *data, size_t len,
                                  cmp_pool_result_t *out)
{
    Py_XSETREF(big_task, Py_NewRef(owner));
    big_data = data;
    big_len = len;
    return cmp_py_pool_worker_task(arg, data, len, out);
}

/* The task at data: decoded in place when it is in big_task. */
static PyObject *decode_task(cmp_py_state *st, const char *data, size_t len)
{
    if (!big_task || data < big_data || data > big_data + big_len || len > big_len)
        return cmp_py_decode(st, data, len);
    PyObject *owner = big_task;
    big_task = NULL;
    PyObject *task = cmp_py_decode_at(st, owner, (size_t)(data - big_data), len);
    if (PyByteArray_CheckExact(owner))
        Py_XSETREF(spare, owner); /* reused once the task's views are gone */
    else
        Py_DECREF(owner); /* memory the pool lent (an MPI rank's arena) */
    return task;
}

/* Appends the encoding of obj to out. 0, or -1 with an exception. */
static int write_message(cmp_py_state *st, PyObject *obj, cmp_pool_result_t *out)
{
    cmp_py_frame f;
    cmp_py_frame_init(&f);
    if (cmp_py_encode(st, obj, &f) < 0)
        return -1;
    char *room = cmp_pool_result_extend(out, f.size);
    if (room)
        cmp_py_frame_copy(&f, room);
    cmp_py_frame_clear(&f);
    if (!room) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* The note a task's exception gets where the worker is not on the
 * caller's machine (a serving MPI rank: its host and rank), or NULL. */
static PyObject *where;

int cmp_py_pool_worker_set_where(const char *text)
{
    PyObject *w = text ? PyUnicode_FromString(text) : NULL;
    if (text && !w)
        return -1;
    Py_XSETREF(where, w);
    return 0;
}

/* The exception that is set, as the bytes of a failure: the envelope
 * (type name, message, inner), where inner is the exception pickled with
 * its traceback text (the stdlib's ExceptionWithTraceback: the parent
 * re-raises it with the remote traceback as __cause__), or when it cannot
 * be pickled a MaybeEncodingError saying why (as the stdlib). The names
 * travel apart from the pickle so that the parent can still say what
 * was raised when it cannot unpickle the exception. Clears the exception. */
static void write_exception(cmp_py_state *st, cmp_pool_result_t *out)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value)
        PyException_SetTraceback(value, tb);
    if (where && value) {
        /* before the traceback text is made, so that it shows there too */
        PyObject *r = PyObject_CallMethod(value, "add_note", "O", where);
        if (!r)
            PyErr_Clear(); /* before 3.11, or a type that refuses notes */
        Py_XDECREF(r);
    }
    PyObject *name =
        value ? PyObject_GetAttrString((PyObject *)Py_TYPE(value), "__qualname__") : NULL;
    PyObject *text = value ? PyObject_Str(value) : NULL;
    if (!name || !text) {
        PyErr_Clear();
        Py_XSETREF(name, PyUnicode_FromString("?"));
        Py_XSETREF(text, PyUnicode_FromString(""));
    }
    PyObject *wrapped =
        value ? PyObject_CallFunctionObjArgs(ExceptionWithTraceback, value, tb ? tb : Py_None, NULL)
              : NULL;
    PyObject *inner = wrapped ? cmp_py_encode_bytes(st, wrapped) : NULL;
    if (!inner) {
        /* it cannot be pickled: MaybeEncodingError(why, exception) */
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        PyErr_NormalizeException(&et, &ev, &etb);
        PyObject *mee = PyObject_CallFunctionObjArgs(MaybeEncodingError, ev ? ev : Py_None,
                                                     value ? value : Py_None, NULL);
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        inner = mee ? cmp_py_encode_bytes(st, mee) : NULL;
        Py_XDECREF(mee);
        if (!inner) {
            PyErr_Clear();
            inner = PyBytes_FromStringAndSize("", 0);
        }
    }
    PyObject *envelope = name && text && inner ? PyTuple_Pack(3, name, text, inner) : NULL;
    cmp_pool_result_clear(out);
    if (!envelope || write_message(st, envelope, out) < 0)
        PyErr_Clear();
    Py_XDECREF(envelope);
    Py_XDECREF(inner);
    Py_XDECREF(name);
    Py_XDECREF(text);
    Py_XDECREF(wrapped);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* The worker's functions by the bytes they travel as (see submit), so
 * that a map's thousands of tasks unpickle (and import) the function once
 * per worker. Bounded: cleared when it grows past FUNCTION_CACHE_MAX. */
#define FUNCTION_CACHE_MAX 64
static PyObject *function_cache;
static cmp_py_state *worker_state;

static PyObject *worker_function(PyObject *func)
{
    if (!PyBytes_Check(func))
        return Py_NewRef(func);
    if (!function_cache && !(function_cache = PyDict_New()))
        return NULL;
    PyObject *fn = PyDict_GetItemWithError(function_cache, func);
    if (fn)
        return Py_NewRef(fn);
    if (PyErr_Occurred())
        return NULL;
    fn = cmp_py_decode(worker_state, PyBytes_AS_STRING(func), (size_t)PyBytes_GET_SIZE(func));
    if (!fn)
        return NULL;
    if (PyDict_GET_SIZE(function_cache) >= FUNCTION_CACHE_MAX)
        PyDict_Clear(function_cache);
    if (PyDict_SetItem(function_cache, func, fn) < 0)
        PyErr_Clear();
    return fn;
}

static PyObject *call_task(int kind, PyObject *func, PyObject *payload);

static PyObject *run_task(PyObject *task)
{
    int kind;
    PyObject *func, *payload;
    if (!PyTuple_Check(task) || !PyArg_ParseTuple(task, "iOO", &kind, &func, &payload))
        return NULL;
    if (kind == KIND_CLOUD) {
        /* the whole task, pickled by cloudpickle; plain pickle loads it */
        PyObject *real = PyObject_CallOneArg(worker_state->pickle_loads, func);
        if (!real)
            return NULL;
        PyObject *r = run_task(real);
        Py_DECREF(real);
        return r;
    }
    PyObject *fn = worker_function(func);
    if (!fn)
        return NULL;
    PyObject *r = call_task(kind, fn, payload);
    Py_DECREF(fn);
    return r;
}

static PyObject *call_task(int kind, PyObject *func, PyObject *payload)
{
    if (kind == KIND_APPLY) {
        PyObject *args, *kwds;
        if (!PyArg_ParseTuple(payload, "OO", &args, &kwds))
            return NULL;
        return PyObject_Call(func, args, kwds == Py_None ? NULL : kwds);
    }
    /* a list, or a range (see RANGE_CHUNK_MIN), iterated as it goes */
    int is_list = PyList_Check(payload);
    Py_ssize_t n = is_list ? PyList_GET_SIZE(payload) : PyObject_Length(payload);
    PyObject *iter = n < 0 || is_list ? NULL : PyObject_GetIter(payload);
    PyObject *results = n >= 0 && (is_list || iter) ? PyList_New(n) : NULL;
    for (Py_ssize_t i = 0; results && i < n; i++) {
        PyObject *item = is_list ? Py_NewRef(PyList_GET_ITEM(payload, i)) : PyIter_Next(iter);
        PyObject *v = !item                  ? NULL
                      : kind == KIND_STARMAP ? PyObject_Call(func, item, NULL)
                                             : PyObject_CallOneArg(func, item);
        Py_XDECREF(item);
        if (!v) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "a map task's chunk ended early");
            Py_CLEAR(results);
        } else {
            PyList_SET_ITEM(results, i, v);
        }
    }
    Py_XDECREF(iter);
    return results;
}

int cmp_py_pool_worker_task(void *arg, const void *data, size_t len, cmp_pool_result_t *out)
{
    cmp_py_pool_work *w = arg;
    cmp_py_state *st = w->st;
    PyObject *task = decode_task(st, data, len);
    PyObject *value = task ? run_task(task) : NULL;
    Py_XDECREF(task);
    if (value) {
        int rc = write_message(st, value, out);
        if (rc == 0) {
            Py_DECREF(value);
            return 0;
        }
        /* the result cannot be sent: MaybeEncodingError(exc, value), which
         * keeps the reprs of both */
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        PyObject *mee =
            PyObject_CallFunctionObjArgs(MaybeEncodingError, exc ? exc : Py_None, value, NULL);
        Py_XDECREF(type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
        Py_DECREF(value);
        if (mee)
            PyErr_SetObject(MaybeEncodingError, mee);
        Py_XDECREF(mee);
        write_exception(st, out);
        return 1;
    }
    /* SystemExit, KeyboardInterrupt...: this worker is replaced */
    int fatal = !PyErr_ExceptionMatches(PyExc_Exception);
    write_exception(st, out);
    return fatal ? CMP_POOL_TASK_FAILED_EXIT : 1;
}

int cmp_py_pool_worker_init(void *arg, cmp_pool_result_t *out)
{
    cmp_py_pool_work *w = arg;
    worker_state = w->st;
    /* Ctrl-C goes to the whole process group: the parent handles it and
     * stops the workers, which should not each print a traceback. */
    PyOS_setsig(SIGINT, SIG_IGN);
    if (!w->initializer)
        return 0;
    PyObject *r = PyObject_Call(w->initializer, w->initargs, NULL);
    if (r) {
        Py_DECREF(r);
        return 0;
    }
    write_exception(w->st, out);
    return 1;
}

int cmp_py_pool_worker_start(void *arg, cmp_pool_t *pool, unsigned index, cmp_process_t *out)
{
    cmp_py_pool_work *w = arg;
    /* a replacement is started in the result thread, without the GIL */
    PyGILState_STATE g = PyGILState_Ensure();
    size_t len;
    int fd = cmp_pool_shared_fd(pool, &len);
    /* the spill files of its queues, which it finds by number */
    int spill[2];
    int nspill = cmp_pool_worker_fds(pool, index, spill, 2);
    PyObject *fds = PyTuple_New(nspill < 2 ? nspill : 2);
    for (Py_ssize_t i = 0; fds && i < PyTuple_GET_SIZE(fds); i++) {
        PyObject *v = PyLong_FromLong(spill[i]);
        if (!v) {
            Py_CLEAR(fds);
            break;
        }
        PyTuple_SET_ITEM(fds, i, v);
    }
    PyObject *mod = fds ? PyImport_ImportModule("cmultiprocessing._spawn") : NULL;
    PyObject *r =
        mod ? PyObject_CallMethod(mod, "_launch_pool_worker", "iinIIKOOO", w->method, fd,
                                  (Py_ssize_t)len, cmp_pool_size(pool), index, w->max_tasks,
                                  w->initializer ? w->initializer : Py_None, w->initargs, fds)
            : NULL;
    Py_XDECREF(fds);
    Py_XDECREF(mod);
    int pid, pidfd, status_fd, rc = 0;
    if (!r || !PyArg_ParseTuple(r, "iii", &pid, &pidfd, &status_fd)) {
        rc = -ECHILD;
        if (!w->creating) /* nobody to raise it to: say it */
            PyErr_WriteUnraisable(NULL);
    } else if (status_fd >= 0) {
        cmp_process_adopt(out, (pid_t)pid, pidfd, status_fd);
    } else {
        *out = (cmp_process_t){.pid = (pid_t)pid, .pidfd = pidfd, .status_fd = -1};
    }
    Py_XDECREF(r);
    PyGILState_Release(g);
    return rc;
}

/* _pool_worker_serve(fd, len, workers, index, max_tasks, initializer,
 * initargs) -> exit code: a spawned worker's life. */
static PyObject *pool_worker_serve(PyObject *module, PyObject *args)
{
    int fd;
    Py_ssize_t len;
    unsigned workers, index;
    unsigned long long max_tasks;
    PyObject *initializer, *initargs;
    if (!PyArg_ParseTuple(args, "inIIKOO!:_pool_worker_serve", &fd, &len, &workers, &index,
                          &max_tasks, &initializer, &PyTuple_Type, &initargs))
        return NULL;
    if (cmp_py_pool_worker_setup() < 0)
        return NULL;
    static cmp_py_pool_work work; /* for the life of this process */
    work.st = cmp_py_state_of_module(module);
    work.initializer = initializer == Py_None ? NULL : Py_NewRef(initializer);
    work.initargs = Py_NewRef(initargs);
    cmp_pool_options_t opt = {
        .task = cmp_py_pool_worker_task,
        .init = cmp_py_pool_worker_init,
        .wait_hook = cmp_py_pool_worker_wait_hook,
        .exit_hook = cmp_py_pool_worker_exit_hook,
        .arg = &work,
        .max_tasks = max_tasks,
    };
    int rc = cmp_pool_worker_serve(fd, (size_t)len, workers, index, &opt);
    close(fd);
    if (rc < 0)
        return cmp_py_raise(rc);
    return PyLong_FromLong(rc);
}

int cmp_py_pool_worker_init_module(PyObject *module)
{
    static PyMethodDef functions[] = {
        {"_pool_worker_serve", pool_worker_serve, METH_VARARGS,
         "_pool_worker_serve(fd, len, workers, index, max_tasks, initializer, initargs)\n--\n\n"
         "Serve as a worker of the pool whose region fd is (a spawned worker)."},
        {NULL, NULL, 0, NULL},
    };
    return PyModule_AddFunctions(module, functions);
}

/* Around each fork of a worker, which may happen in the result thread with
 * the GIL released (a replacement): take it for the fork. */
static PyGILState_STATE fork_gil;

void cmp_py_pool_worker_fork_hook(void *arg, int phase)
{
    (void)arg;
    switch (phase) {
    case CMP_POOL_FORK_BEFORE:
        fork_gil = PyGILState_Ensure();
        cmp_py_process_pool_worker_prepare();
        cmp_py_fork_threading_prepare();
        PyOS_BeforeFork();
        break;
    case CMP_POOL_FORK_PARENT:
        PyOS_AfterFork_Parent();
        cmp_py_process_pool_worker_parent();
        PyGILState_Release(fork_gil);
        break;
    case CMP_POOL_FORK_CHILD:
        cmp_py_fork_threading_arm();
        PyOS_AfterFork_Child();
        cmp_py_fork_threading_disarm();
        cmp_py_process_pool_worker_child();
        break;
    }
}
