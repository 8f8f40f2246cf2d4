/*
 * Process, current_process(), parent_process(), active_children() and the
 * process-wide bookkeeping around them (names, children, exit handling).
 *
 * Starting a process is one fork() in C (libcmp's cmp_process_start): the
 * parent does no Python-level work besides flushing the standard streams,
 * and the child runs its target straight from the C bootstrap below and
 * leaves with _exit() without finalizing the interpreter.
 *
 * The bookkeeping is process-wide state (like the stdlib's module globals):
 * the child of a fork gets a copy and resets it in its bootstrap.
 */
#include "_cmp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <structmember.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

enum { KIND_CHILD = 0, KIND_MAIN = 1, KIND_PARENT = 2 };

typedef struct {
    PyObject_HEAD
    PyObject *dict;
    PyObject *weakreflist;
    PyObject *target;
    PyObject *args;
    PyObject *kwargs;
    PyObject *name;
    PyObject *identity; /* tuple of ints: the path of counters from the main process */
    PyObject *config;   /* dict inherited from the creator: daemon, authkey, ... */
    PyObject *parent_name;
    long parent_pid; /* -1 for None */
    long pid;        /* KIND_PARENT: the parent's pid */
    int kind;
    int started; /* the stdlib's "_popen is not None" */
    int closed;
    int parent_fd;         /* KIND_PARENT: lazily opened sentinel, -1 */
    int run_is_ours;       /* run() not overridden: the child calls it directly */
    int bootstrap_is_ours; /* _bootstrap neither overridden nor patched (coverage) */
    cmp_process_t proc;
} ProcObject;

/* Process-wide state. Strong references, alive for the whole process. */
static PyObject *g_current;        /* current_process() */
static PyObject *g_parent;         /* parent_process(), NULL for None */
static PyObject *g_children;       /* dict: started, not yet known finished -> None */
static pid_t g_children_pid;       /* the process g_children belongs to */
static int g_parent_pending;       /* g_parent is still to be made from g_current */
static PyObject *g_threading_dict; /* threading's namespace, for the child's exit */
static long g_counter = 1;         /* next child number */
static PyTypeObject *g_main_type;
static PyTypeObject *g_fork_process_type; /* _ForkProcess: a concrete context's */
static PyTypeObject *g_spawn_process_type, *g_forkserver_process_type; /* the same */
static int g_parent_fd_given = -1; /* a spawned child: its parent's pidfd, from it */
static PyTypeObject *g_parent_type;
static PyObject *g_authstr_type;
static PyObject *g_logger;    /* the 'multiprocessing' logger once get_logger() ran */
static PyObject *g_exit_func; /* _exit_function, registered with atexit */
void (*cmp_py_child_exit_hook)(void);
static PyObject *g_exitcode_names;
static PyObject *g_executable;
static PyObject *g_forkserver_preload;
static PyObject *g_module_ref; /* borrowed: the module, for rebuild functions */

static PyObject *s_daemon, *s_authkey, *s_semprefix, *s_run, *s_flush, *s_name;
static PyObject *s_shutdown, *s_shutdown_locks;
static PyObject *g_run_descr;       /* Process.run as found on the type */
static PyObject *g_bootstrap_descr; /* Process._bootstrap as defined here */
static PyObject *s_bootstrap;

#define LOG_INFO 20
#define LOG_DEBUG 10

/* ------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

static const char *type_short_name(PyTypeObject *tp)
{
    const char *s = strrchr(tp->tp_name, '.');
    return s ? s + 1 : tp->tp_name;
}

/* Logs through the 'multiprocessing' logger if anyone asked for it, like
 * the stdlib's util.info(). Never disturbs a pending exception. */
static void log_msg(int level, const char *fmt, ...)
{
    if (!g_logger)
        return;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg) {
        PyObject *r = PyObject_CallMethod(g_logger, "log", "iO", level, msg);
        Py_XDECREF(r);
        Py_DECREF(msg);
    }
    PyErr_Clear();
    PyErr_Restore(et, ev, tb);
}

static int check_closed(ProcObject *self)
{
    if (self->closed) {
        PyErr_SetString(PyExc_ValueError, "process object is closed");
        return -1;
    }
    return 0;
}

static int check_initialized(ProcObject *self)
{
    if (!self->config) {
        PyErr_Format(PyExc_AttributeError,
                     "'%.100s' object is not initialized: its __init__ must call "
                     "Process.__init__()",
                     type_short_name(Py_TYPE(self)));
        return -1;
    }
    return 0;
}

static int is_child_of_me(ProcObject *self)
{
    return self->parent_pid == (long)cmp_self_pid();
}

static PyObject *raise_assert(const char *msg)
{
    PyErr_SetString(PyExc_AssertionError, msg);
    return NULL;
}

static int is_daemon(ProcObject *self)
{
    if (!self->config)
        return 0;
    PyObject *d = PyDict_GetItemWithError(self->config, s_daemon);
    if (!d)
        return PyErr_Occurred() ? -1 : 0;
    return PyObject_IsTrue(d);
}

/* 1 finished (reaped), 0 running, -1 with an exception. */
static int proc_poll(ProcObject *self)
{
    int rc = cmp_process_poll(&self->proc);
    if (rc >= 0)
        return rc;
    if (rc == -ECHILD) {
        /* Reaped behind our back (os.wait() in user code): no status to
         * report, but the process is gone. The stdlib keeps saying
         * "running" forever; we say what we know. */
        struct pollfd pfd = {.fd = self->proc.pidfd, .events = POLLIN};
        if (self->proc.pidfd >= 0 && poll(&pfd, 1, 0) == 0)
            return 0;
        self->proc.status = 0xff00; /* exit status 255: unknown */
        self->proc.reaped = 1;
        return 1;
    }
    cmp_py_raise(rc);
    return -1;
}

static int exitcode_of(ProcObject *self)
{
    int code = 0;
    cmp_process_exitcode(&self->proc, &code);
    return code;
}

/* Waits for a started child. timeout NULL or None: forever. Returns 1 when
 * it finished, 0 on timeout, -1 with an exception (KeyboardInterrupt...). */
static int proc_wait(ProcObject *self, PyObject *timeout)
{
    int rc;
    /* The stdlib converts the timeout unless the exit status is known
     * already, so join('x') on a child that ended but was not reaped yet
     * is a TypeError there too: convert before the first look. */
    struct timespec storage;
    const struct timespec *deadline = NULL;
    if (!__atomic_load_n(&self->proc.reaped, __ATOMIC_ACQUIRE) &&
        cmp_py_deadline(timeout, &storage, &deadline) < 0)
        return -1;
    /* Without a timeout, the blocking wait returns at once for a child that
     * already ended: no need for a first non-blocking look. */
    if (timeout && timeout != Py_None && (rc = proc_poll(self)) != 0)
        return rc;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = cmp_process_join(&self->proc, deadline);
        Py_END_ALLOW_THREADS
        if (rc == 0)
            return 1;
        if (rc == -ETIMEDOUT)
            return 0;
        if (rc == -EINTR) {
            if (PyErr_CheckSignals() < 0)
                return -1;
            continue;
        }
        if (rc == -ECHILD) {
            /* Another thread reaped it and is about to publish the status. */
            for (int i = 0; i < 1000 && !__atomic_load_n(&self->proc.reaped, __ATOMIC_ACQUIRE); i++)
                sched_yield();
            return proc_poll(self);
        }
        cmp_py_raise(rc);
        return -1;
    }
}

/* The children of this process. A forked child inherits its parent's
 * dict and starts its own only when it needs one: writing to inherited
 * memory costs page faults on every start. Borrowed, NULL on error. */
static PyObject *children(void)
{
    pid_t me = cmp_self_pid();
    if (g_children && g_children_pid == me)
        return g_children;
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    Py_XSETREF(g_children, d);
    g_children_pid = me;
    return d;
}

/* Forgets children that have finished (the stdlib's _cleanup()). */
static int cleanup_children(void)
{
    if (!g_children || g_children_pid != cmp_self_pid() || PyDict_GET_SIZE(g_children) == 0)
        return 0;
    PyObject *keys = PyDict_Keys(g_children);
    if (!keys)
        return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        ProcObject *p = (ProcObject *)PyList_GET_ITEM(keys, i);
        int done = 1;
        if (p->started && !p->closed && is_child_of_me(p)) {
            done = proc_poll(p);
            if (done < 0) {
                Py_DECREF(keys);
                return -1;
            }
        }
        if (done && PyDict_DelItem(g_children, (PyObject *)p) < 0)
            PyErr_Clear();
    }
    Py_DECREF(keys);
    return 0;
}

static void discard_child(ProcObject *self)
{
    if (g_children && g_children_pid == cmp_self_pid() &&
        PyDict_DelItem(g_children, (PyObject *)self) < 0)
        PyErr_Clear();
}

static void flush_std_streams(void)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    const char *names[] = {"stdout", "stderr"};
    for (int i = 0; i < 2; i++) {
        PyObject *f = PySys_GetObject(names[i]); /* borrowed */
        if (f && f != Py_None) {
            PyObject *r = PyObject_CallMethodNoArgs(f, s_flush);
            if (!r)
                PyErr_Clear();
            Py_XDECREF(r);
        }
    }
    PyErr_Restore(et, ev, tb);
}

/* ------------------------------------------------------------------------
 * Construction
 * ------------------------------------------------------------------------ */

static PyObject *proc_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    ProcObject *self = (ProcObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->parent_pid = -1;
    self->pid = -1;
    self->parent_fd = -1;
    self->proc.pid = 0;
    self->proc.pidfd = -1;
    return (PyObject *)self;
}

static PyObject *identity_string(PyObject *identity)
{
    PyObject *parts = PyList_New(0);
    if (!parts)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(identity); i++) {
        PyObject *s = PyObject_Str(PyTuple_GET_ITEM(identity, i));
        if (!s || PyList_Append(parts, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(parts);
            return NULL;
        }
        Py_DECREF(s);
    }
    PyObject *sep = PyUnicode_FromString(":");
    PyObject *r = sep ? PyUnicode_Join(sep, parts) : NULL;
    Py_XDECREF(sep);
    Py_DECREF(parts);
    return r;
}

static int proc_init(ProcObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"group", "target", "name", "args", "kwargs", "daemon", NULL};
    PyObject *group = Py_None, *target = Py_None, *name = Py_None, *pargs = NULL, *pkwargs = NULL,
             *daemon = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OOOOO$O:Process", kwlist, &group, &target, &name,
                                     &pargs, &pkwargs, &daemon))
        return -1;
    if (group != Py_None) {
        raise_assert("group argument must be None for now");
        return -1;
    }
    ProcObject *cur = (ProcObject *)g_current;
    PyObject *count = PyLong_FromLong(g_counter++);
    if (!count)
        return -1;
    PyObject *tail = PyTuple_Pack(1, count);
    Py_DECREF(count);
    if (!tail)
        return -1;
    PyObject *identity = PySequence_Concat(cur->identity, tail);
    Py_DECREF(tail);
    if (!identity)
        return -1;
    Py_XSETREF(self->identity, identity);

    PyObject *config = PyDict_Copy(cur->config);
    if (!config)
        return -1;
    Py_XSETREF(self->config, config);
    self->parent_pid = (long)cmp_self_pid();
    Py_XSETREF(self->parent_name, Py_NewRef(cur->name));
    self->started = 0;
    self->closed = 0;
    self->kind = KIND_CHILD;

    Py_XSETREF(self->target, Py_NewRef(target));
    PyObject *t = pargs ? PySequence_Tuple(pargs) : PyTuple_New(0);
    if (!t)
        return -1;
    Py_XSETREF(self->args, t);
    /* dict(kwargs), as the stdlib: a mapping or an iterable of pairs */
    PyObject *kw = pkwargs ? PyObject_CallOneArg((PyObject *)&PyDict_Type, pkwargs) : PyDict_New();
    if (!kw)
        return -1;
    Py_XSETREF(self->kwargs, kw);

    int truthy = PyObject_IsTrue(name);
    if (truthy < 0)
        return -1;
    if (truthy) {
        Py_XSETREF(self->name, Py_NewRef(name));
    } else {
        PyObject *ids = identity_string(identity);
        if (!ids)
            return -1;
        PyObject *n = PyUnicode_FromFormat("%s-%U", type_short_name(Py_TYPE(self)), ids);
        Py_DECREF(ids);
        if (!n)
            return -1;
        Py_XSETREF(self->name, n);
    }
    if (daemon != Py_None && PyDict_SetItem(self->config, s_daemon, daemon) < 0)
        return -1;
    return 0;
}

static int proc_traverse(ProcObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->dict);
    Py_VISIT(self->target);
    Py_VISIT(self->args);
    Py_VISIT(self->kwargs);
    Py_VISIT(self->name);
    Py_VISIT(self->identity);
    Py_VISIT(self->config);
    Py_VISIT(self->parent_name);
    return 0;
}

static int proc_clear(ProcObject *self)
{
    Py_CLEAR(self->dict);
    Py_CLEAR(self->target);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    Py_CLEAR(self->name);
    Py_CLEAR(self->identity);
    Py_CLEAR(self->config);
    Py_CLEAR(self->parent_name);
    return 0;
}

static void proc_dealloc(ProcObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)self);
    /* The child keeps running (or stays a zombie until someone reaps it),
     * as with the stdlib when a Process object is dropped. */
    if (self->started)
        cmp_process_close(&self->proc);
    if (self->parent_fd >= 0)
        close(self->parent_fd);
    proc_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* ------------------------------------------------------------------------
 * The child side
 * ------------------------------------------------------------------------ */

static ProcObject *new_special(PyTypeObject *tp, int kind)
{
    ProcObject *p = (ProcObject *)proc_new(tp, NULL, NULL);
    if (!p)
        return NULL;
    p->kind = kind;
    p->identity = PyTuple_New(0);
    p->config = PyDict_New();
    if (!p->identity || !p->config) {
        Py_DECREF(p);
        return NULL;
    }
    return p;
}

/* The stdlib replaces the child's stdin with /dev/null so that a child
 * never competes with its parent for input. Building a new file object
 * costs a child ~50 copy-on-write page faults (a third of a fast start),
 * so when sys.stdin is still the interpreter's own stdin on fd 0, the fd is
 * pointed at /dev/null instead: reads then see end of file, as they do
 * with the stdlib. */
static void close_stdin(void)
{
    PyObject *in = PySys_GetObject("stdin"); /* borrowed */
    if (!in || in == Py_None)
        return;
    if (in == PySys_GetObject("__stdin__")) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            int ok = fd == 0 || dup2(fd, 0) == 0;
            if (fd != 0)
                close(fd);
            if (ok)
                return;
        }
    }
    PyObject *r = PyObject_CallMethod(in, "close", NULL);
    Py_XDECREF(r);
    PyErr_Clear();
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    PyObject *f = PyFile_FromFd(fd, NULL, "r", -1, "utf-8", NULL, NULL, 0);
    if (!f) {
        PyErr_Clear();
        close(fd);
        return;
    }
    PySys_SetObject("stdin", f);
    Py_DECREF(f);
}

/* Waits for the non-daemon threads the target started, as the stdlib's
 * child does through threading._shutdown(). Skipped when there are none
 * (threading tracks them in _shutdown_locks), which saves the child a
 * dozen page faults. */
static void join_threads(void)
{
    /* Borrowed lookups with interned keys: nothing is allocated and no
     * reference count is written unless there are threads to wait for. */
    PyObject *locks = PyDict_GetItemWithError(g_threading_dict, s_shutdown_locks);
    if (locks && PyAnySet_Check(locks) && PySet_GET_SIZE(locks) == 0)
        return;
    PyObject *fn = PyDict_GetItemWithError(g_threading_dict, s_shutdown);
    PyObject *res = fn ? PyObject_CallNoArgs(fn) : NULL;
    Py_XDECREF(res);
    PyErr_Clear();
}

/* ---- pool workers (pool.c) --------------------------------------------- */

/* The stdlib's Pool starts each worker as a daemonic Process of the fork
 * context renamed ForkPoolWorker-N (N counts every child of this process,
 * as for any Process); current_process() in the worker is that object.
 * Ours: made in the parent just before a worker's fork (GIL held), made
 * current in the child, dropped in the parent. */
static PyObject *g_pool_worker;

void cmp_py_process_pool_worker_prepare(void)
{
    PyObject *kw = Py_BuildValue("{s:O}", "daemon", Py_True);
    PyObject *none = PyTuple_New(0);
    PyObject *w = kw && none ? PyObject_Call((PyObject *)g_fork_process_type, none, kw) : NULL;
    Py_XDECREF(kw);
    Py_XDECREF(none);
    PyObject *ids = w ? identity_string(((ProcObject *)w)->identity) : NULL;
    PyObject *name = ids ? PyUnicode_FromFormat("ForkPoolWorker-%U", ids) : NULL;
    Py_XDECREF(ids);
    if (!name) {
        Py_XDECREF(w);
        PyErr_Clear(); /* the worker then just keeps the parent's */
        return;
    }
    Py_SETREF(((ProcObject *)w)->name, name);
    Py_XSETREF(g_pool_worker, w);
}

void cmp_py_process_pool_worker_parent(void)
{
    Py_CLEAR(g_pool_worker);
}

void cmp_py_process_pool_worker_child(void)
{
    if (!g_pool_worker)
        return;
    ProcObject *w = (ProcObject *)g_pool_worker;
    g_pool_worker = NULL;
    w->started = 1;
    g_counter = 1;
    g_current = (PyObject *)w; /* the parent's current object stays as it is */
    g_parent_pending = 1;
    close_stdin();
    cmp_py_util_after_fork();
}

static int exit_children(void);
static PyObject *proc_run(ProcObject *self, PyObject *unused);

/* The start method of a context's Process class (ForkProcess...), or -1
 * for the plain Process, which follows the default context. */
static int context_method_of(ProcObject *self)
{
    return PyObject_TypeCheck(self, g_fork_process_type)         ? CMP_PY_FORK
           : PyObject_TypeCheck(self, g_spawn_process_type)      ? CMP_PY_SPAWN
           : PyObject_TypeCheck(self, g_forkserver_process_type) ? CMP_PY_FORKSERVER
                                                                 : -1;
}

/* A pool worker leaving on its own (max tasks done, the pool closed): the
 * stdlib's worker is a Process whose run() returns, so what follows run()
 * in a child follows here too: util's exit finalizers around the worker's
 * own children, its non-daemon threads, the standard streams. */
void cmp_py_process_pool_worker_exit(void)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    cmp_py_util_run_finalizers(0);
    if (exit_children() < 0)
        PyErr_Print();
    cmp_py_util_run_finalizers(-1);
    join_threads();
    flush_std_streams();
    PyErr_Restore(et, ev, tb);
}

/* Runs self.run() and turns its outcome into an exit code, as the stdlib's
 * BaseProcess._bootstrap does. */
static int bootstrap(ProcObject *self)
{
    /* Every write here lands on a page shared with the parent and costs a
     * copy: the children dict and the parent_process() object are made
     * when first asked for, and the previous current process object is
     * left as it is (a reference nobody will drop before _exit). */
    g_counter = 1;
    g_current = Py_NewRef((PyObject *)self);
    g_parent_pending = 1;
    close_stdin();
    /* A child of a context's Process (not the plain one) runs with that
     * context's method as its default: get_start_method() there says so. */
    int method = context_method_of(self);
    if (method >= 0)
        cmp_py_context_force(method);
    cmp_py_util_after_fork();
    log_msg(LOG_INFO, "child process calling self.run()");

    int exitcode = 0;
    /* The parent looked run() up before forking, where the lookup's
     * reference counting costs no page copies. */
    PyObject *r = self->run_is_ours ? proc_run(self, NULL)
                                    : PyObject_CallMethodNoArgs((PyObject *)self, s_run);
    Py_XDECREF(r);
    PyObject *et = NULL, *ev = NULL, *tb = NULL;
    PyErr_Fetch(&et, &ev, &tb);
    /* Like a finally clause: util's finalizers with a priority >= 0, the
     * child's own children, then the remaining finalizers (the stdlib's
     * util._exit_function()). */
    cmp_py_util_run_finalizers(0);
    int joined = exit_children();
    cmp_py_util_run_finalizers(-1);
    if (joined < 0) {
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
        PyErr_Fetch(&et, &ev, &tb);
    }
    if (et) {
        PyErr_NormalizeException(&et, &ev, &tb);
        if (tb && ev)
            PyException_SetTraceback(ev, tb);
        if (PyErr_GivenExceptionMatches(et, PyExc_SystemExit)) {
            PyObject *code = ev ? PyObject_GetAttrString(ev, "code") : NULL;
            if (!code || code == Py_None) {
                exitcode = 0;
            } else if (PyLong_Check(code)) {
                int overflow = 0;
                long v = PyLong_AsLongAndOverflow(code, &overflow);
                exitcode = overflow || (v == -1 && PyErr_Occurred()) ? 1 : (int)v;
            } else {
                PyObject *s = PyObject_Str(code);
                PyObject *err = PySys_GetObject("stderr");
                if (s && err && err != Py_None) {
                    PyFile_WriteObject(s, err, Py_PRINT_RAW);
                    PyFile_WriteString("\n", err);
                }
                Py_XDECREF(s);
                exitcode = 1;
            }
            Py_XDECREF(code);
            PyErr_Clear();
        } else {
            exitcode = 1;
            PyObject *name = PyObject_GetAttr((PyObject *)self, s_name);
            PyObject *err = PySys_GetObject("stderr");
            if (name && err && err != Py_None) {
                PyObject *line = PyUnicode_FromFormat("Process %S:\n", name);
                if (line)
                    PyFile_WriteObject(line, err, Py_PRINT_RAW);
                Py_XDECREF(line);
            }
            Py_XDECREF(name);
            PyErr_Clear();
            PyErr_Display(et, ev, tb);
            PyErr_Clear();
        }
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
    }
    join_threads();
    if (cmp_py_child_exit_hook)
        cmp_py_child_exit_hook();
    log_msg(LOG_INFO, "process exiting with exitcode %d", exitcode);
    flush_std_streams();
    return exitcode;
}

/* A _bootstrap of a subclass, or one patched in (coverage measures
 * children so), runs instead of ours and calls ours itself. */
static int foreign_bootstrap(ProcObject *self)
{
    PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self, s_bootstrap);
    int exitcode = 1;
    if (r && PyLong_Check(r)) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(r, &overflow);
        exitcode = overflow || (v == -1 && PyErr_Occurred()) ? 1 : (int)v;
    } else if (r == Py_None) {
        exitcode = 0;
    }
    Py_XDECREF(r);
    if (PyErr_Occurred())
        PyErr_Print();
    flush_std_streams();
    return exitcode;
}

static int child_main(void *arg)
{
    cmp_py_fork_threading_arm();
    PyOS_AfterFork_Child();
    cmp_py_fork_threading_disarm();
    ProcObject *self = arg;
    return self->bootstrap_is_ours ? bootstrap(self) : foreign_bootstrap(self);
}

/* _bootstrap(parent_sentinel=None): what the child runs; returns the
 * exit code. Callable only in the child, from a _bootstrap that wraps it. */
static PyObject *proc_bootstrap(ProcObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    (void)args;
    if (nargs > 1 || (kwnames && PyTuple_GET_SIZE(kwnames) + nargs > 1))
        return PyErr_Format(PyExc_TypeError, "_bootstrap() takes at most 1 argument");
    if (self->kind != KIND_CHILD || self->parent_pid == (long)cmp_self_pid())
        return raise_assert("_bootstrap() runs in the started child only");
    return PyLong_FromLong(bootstrap(self));
}

/* ------------------------------------------------------------------------
 * Methods
 * ------------------------------------------------------------------------ */

static PyObject *proc_run(ProcObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->target) /* deleted by start(), as in the stdlib */
        return PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '_target'",
                            type_short_name(Py_TYPE(self)));
    int truthy = PyObject_IsTrue(self->target);
    if (truthy <= 0)
        return truthy < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *args = self->args ? self->args : Py_None;
    PyObject *kwargs = self->kwargs ? self->kwargs : Py_None;
    PyObject *targs = PyTuple_Check(args) ? Py_NewRef(args) : PySequence_Tuple(args);
    if (!targs)
        return NULL;
    PyObject *r;
    if (PyDict_Check(kwargs) && PyDict_GET_SIZE(kwargs) == 0) {
        r = PyObject_Call(self->target, targs, NULL);
    } else if (PyDict_Check(kwargs)) {
        r = PyObject_Call(self->target, targs, kwargs);
    } else {
        PyObject *d = PyDict_New();
        if (!d || PyDict_Merge(d, kwargs, 1) < 0) {
            Py_XDECREF(d);
            Py_DECREF(targs);
            return NULL;
        }
        r = PyObject_Call(self->target, targs, d);
        Py_DECREF(d);
    }
    Py_DECREF(targs);
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

#if PY_VERSION_HEX >= 0x030C0000
/* Python 3.12+ warns when a process with threads forks (os.fork() does,
 * so the stdlib's fork start method does): ours forks in C, so it says it
 * the same way. Threads are the kernel's count, as CPython counts them. */
static int warn_fork_with_threads(void)
{
    long threads = 0;
    FILE *f = fopen("/proc/self/stat", "re");
    if (f) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        char *p = strrchr(buf, ')'); /* the name may hold spaces */
        for (int field = 2; p && field < 20; field++)
            p = strchr(p + 1, ' ');
        if (p)
            threads = strtol(p + 1, NULL, 10);
    }
    if (threads <= 0) {
        PyObject *fn = PyDict_GetItemString(g_threading_dict, "active_count");
        PyObject *r = fn ? PyObject_CallNoArgs(fn) : NULL;
        threads = r ? PyLong_AsLong(r) : 0;
        Py_XDECREF(r);
        PyErr_Clear();
    }
    if (threads > 1)
        return PyErr_WarnFormat(PyExc_DeprecationWarning, 1,
                                "This process (pid=%d) is multi-threaded, use of fork() may lead "
                                "to deadlocks in the child.",
                                (int)getpid());
    return 0;
}
#endif

/* Whether the child can call Process.run directly (not overridden). */
static int find_run(ProcObject *self)
{
    self->run_is_ours = 0;
    PyObject *boot = PyObject_GetAttr((PyObject *)Py_TYPE(self), s_bootstrap);
    if (!boot)
        return -1;
    self->bootstrap_is_ours = boot == g_bootstrap_descr;
    Py_DECREF(boot);
    if (!self->dict || !PyDict_GetItemWithError(self->dict, s_run)) {
        if (PyErr_Occurred())
            return -1;
        PyObject *run = PyObject_GetAttr((PyObject *)Py_TYPE(self), s_run);
        if (!run)
            return -1;
        self->run_is_ours = run == g_run_descr;
        Py_DECREF(run);
    }
    return 0;
}

/* What start() does after the child exists, whatever the method. */
static PyObject *started(ProcObject *self)
{
    self->started = 1;
    /* Drop what the child needed: a target that refers back to this object
     * would otherwise keep it alive in a cycle. */
    Py_CLEAR(self->target);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    PyObject *kids = children();
    if (!kids || PyDict_SetItem(kids, (PyObject *)self, Py_None) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* spawn and forkserver: cmultiprocessing._spawn pickles the process for a
 * new interpreter and starts it, and hands back what we follow it by. */
static PyObject *start_spawned(ProcObject *self, int method)
{
    PyObject *mod = PyImport_ImportModule("cmultiprocessing._spawn");
    PyObject *r = mod ? PyObject_CallMethod(mod, "_launch", "Oi", (PyObject *)self, method) : NULL;
    Py_XDECREF(mod);
    if (!r)
        return NULL;
    int pid, pidfd, status_fd;
    if (!PyArg_ParseTuple(r, "iii", &pid, &pidfd, &status_fd)) {
        Py_DECREF(r);
        return NULL;
    }
    Py_DECREF(r);
    if (status_fd >= 0) {
        cmp_process_adopt(&self->proc, (pid_t)pid, pidfd, status_fd);
    } else {
        self->proc = (cmp_process_t){.pid = (pid_t)pid, .pidfd = pidfd, .status_fd = -1};
    }
    return started(self);
}

static PyObject *proc_start(ProcObject *self, PyObject *unused)
{
    (void)unused;
    if (check_closed(self) < 0 || check_initialized(self) < 0)
        return NULL;
    if (self->started || self->kind != KIND_CHILD)
        return raise_assert("cannot start a process twice");
    if (!is_child_of_me(self))
        return raise_assert("can only start a process object created by current process");
    int d = is_daemon((ProcObject *)g_current);
    if (d < 0)
        return NULL;
    if (d)
        return raise_assert("daemonic processes are not allowed to have children");
    if (cleanup_children() < 0)
        return NULL;
    /* Buffered output would otherwise be written twice, once by each. */
    flush_std_streams();
    if (find_run(self) < 0)
        return NULL;

    /* a plain Process runs with the default context's method, fixing it */
    int method = context_method_of(self);
    if (method < 0)
        method = cmp_py_context_method();
    if (method != CMP_PY_FORK)
        return start_spawned(self, method);
#if PY_VERSION_HEX >= 0x030C0000
    if (warn_fork_with_threads() < 0)
        return NULL;
#endif

    cmp_py_fork_threading_prepare();
    PyOS_BeforeFork();
    int rc = cmp_process_start(&self->proc, child_main, self, 0);
    /* Only the parent gets here: the child leaves through _exit(). */
    PyOS_AfterFork_Parent();
    if (rc < 0)
        return cmp_py_raise(rc);
    return started(self);
}

static int parent_sentinel_fd(ProcObject *self)
{
    if (self->parent_fd >= 0)
        return self->parent_fd;
    int fd = (int)syscall(SYS_pidfd_open, (pid_t)self->pid, 0);
    /* Only while it is still our parent does the pid name it: once we
     * have been reparented it died, and the pid may be anyone's now. */
    if (fd >= 0 && getppid() != (pid_t)self->pid) {
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        /* Gone: a pipe with no writer is always readable, like the
         * stdlib's sentinel once the parent has exited. */
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        close(p[1]);
        fd = p[0];
    }
    self->parent_fd = fd;
    return fd;
}

/* ParentProcess.join(timeout): waits until the parent exits. */
static PyObject *parent_join(ProcObject *self, PyObject *timeout)
{
    int fd = parent_sentinel_fd(self);
    if (fd < 0)
        return NULL;
    struct timespec storage;
    const struct timespec *deadline;
    if (cmp_py_deadline(timeout, &storage, &deadline) < 0)
        return NULL;
    for (;;) {
        struct timespec left, *lp = NULL;
        if (deadline) {
            double s = cmp_deadline_remaining(deadline);
            left.tv_sec = (time_t)s;
            left.tv_nsec = (long)((s - (double)left.tv_sec) * 1e9);
            lp = &left;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int n;
        Py_BEGIN_ALLOW_THREADS
        n = ppoll(&pfd, 1, lp, NULL);
        Py_END_ALLOW_THREADS
        if (n < 0 && errno == EINTR) {
            if (PyErr_CheckSignals() < 0)
                return NULL;
            continue;
        }
        if (n < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (n > 0 || !deadline || cmp_deadline_remaining(deadline) <= 0)
            break;
    }
    Py_RETURN_NONE;
}

static PyObject *proc_join(ProcObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject *timeout = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1)
        return PyErr_Format(PyExc_TypeError, "join() takes at most 1 argument (%zd given)",
                            nargs + nkw);
    if (nargs == 1) {
        timeout = args[0];
    } else if (nkw == 1) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0)
            return PyErr_Format(PyExc_TypeError, "join() got an unexpected keyword argument '%S'",
                                PyTuple_GET_ITEM(kwnames, 0));
        timeout = args[0];
    }
    if (check_closed(self) < 0)
        return NULL;
    if (self->kind == KIND_PARENT)
        return parent_join(self, timeout);
    if (!is_child_of_me(self))
        return raise_assert("can only join a child process");
    if (!self->started)
        return raise_assert("can only join a started process");
    int rc = proc_wait(self, timeout);
    if (rc < 0)
        return NULL;
    if (rc == 1)
        discard_child(self);
    Py_RETURN_NONE;
}

static PyObject *proc_is_alive(ProcObject *self, PyObject *unused)
{
    (void)unused;
    if (check_closed(self) < 0)
        return NULL;
    if ((PyObject *)self == g_current)
        Py_RETURN_TRUE;
    if (self->kind == KIND_PARENT) {
        /* a fork server's child has that server for its OS parent */
        if (g_parent_fd_given < 0 && getppid() != (pid_t)self->pid)
            Py_RETURN_FALSE;
        int fd = parent_sentinel_fd(self);
        if (fd < 0)
            return NULL;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        return PyBool_FromLong(poll(&pfd, 1, 0) == 0);
    }
    if (!is_child_of_me(self))
        return raise_assert("can only test a child process");
    if (!self->started)
        Py_RETURN_FALSE;
    int rc = proc_poll(self);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        Py_RETURN_TRUE;
    discard_child(self);
    Py_RETURN_FALSE;
}

static PyObject *send_signal(ProcObject *self, int sig, const char *what)
{
    if (check_closed(self) < 0)
        return NULL;
    if (!self->started)
        return PyErr_Format(PyExc_AttributeError, "'NoneType' object has no attribute '%s'", what);
    if (!__atomic_load_n(&self->proc.reaped, __ATOMIC_ACQUIRE)) {
        int rc = cmp_process_signal(&self->proc, sig);
        if (rc < 0 && rc != -ESRCH)
            return cmp_py_raise(rc);
    }
    Py_RETURN_NONE;
}

static PyObject *proc_terminate(ProcObject *self, PyObject *unused)
{
    (void)unused;
    return send_signal(self, SIGTERM, "terminate");
}

static PyObject *proc_kill(ProcObject *self, PyObject *unused)
{
    (void)unused;
    return send_signal(self, SIGKILL, "kill");
}

static PyObject *proc_interrupt(ProcObject *self, PyObject *unused)
{
    (void)unused;
    return send_signal(self, SIGINT, "interrupt");
}

static PyObject *proc_close(ProcObject *self, PyObject *unused)
{
    (void)unused;
    if (self->kind == KIND_MAIN)
        Py_RETURN_NONE;
    if (self->started) {
        int rc = proc_poll(self);
        if (rc < 0)
            return NULL;
        if (rc == 0) {
            PyErr_SetString(PyExc_ValueError, "Cannot close a process while it is still running. "
                                              "You should first call join() or terminate().");
            return NULL;
        }
        cmp_process_close(&self->proc);
        self->started = 0;
        discard_child(self);
    }
    self->closed = 1;
    Py_RETURN_NONE;
}

static PyObject *proc_reduce(ProcObject *self, PyObject *unused)
{
    (void)unused;
    if (cmp_py_spawning() && self->kind == KIND_CHILD && self->config) {
        /* for the child it is being started in: everything but the handle */
        PyObject *rebuild = PyObject_GetAttrString(g_module_ref, "_rebuild_process");
        if (!rebuild)
            return NULL;
#define OR_NONE(x) ((x) ? (x) : Py_None)
        return Py_BuildValue("(N(O(OOOOOOlOO)))", rebuild, (PyObject *)Py_TYPE(self),
                             OR_NONE(self->target), OR_NONE(self->args), OR_NONE(self->kwargs),
                             OR_NONE(self->name), self->identity, self->config, self->parent_pid,
                             OR_NONE(self->parent_name), OR_NONE(self->dict));
#undef OR_NONE
    }
    /* TypeError: what the stdlib raises here (its authkey refuses) */
    return PyErr_Format(PyExc_TypeError,
                        "%s objects should only be shared between processes through "
                        "inheritance",
                        type_short_name(Py_TYPE(self)));
}

/* ------------------------------------------------------------------------
 * Properties
 * ------------------------------------------------------------------------ */

static PyObject *get_name(ProcObject *self, void *c)
{
    (void)c;
    if (!self->name)
        return PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '_name'",
                            type_short_name(Py_TYPE(self)));
    return Py_NewRef(self->name);
}

static int set_name(ProcObject *self, PyObject *value, void *c)
{
    (void)c;
    if (!value || !PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_AssertionError, "name must be a string");
        return -1;
    }
    Py_XSETREF(self->name, Py_NewRef(value));
    return 0;
}

static PyObject *get_daemon(ProcObject *self, void *c)
{
    (void)c;
    if (!self->config)
        Py_RETURN_FALSE;
    PyObject *d = PyDict_GetItemWithError(self->config, s_daemon);
    if (!d)
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_False);
    return Py_NewRef(d);
}

static int set_daemon(ProcObject *self, PyObject *value, void *c)
{
    (void)c;
    if (self->started) {
        PyErr_SetString(PyExc_AssertionError, "process has already started");
        return -1;
    }
    if (check_initialized(self) < 0)
        return -1;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "can't delete attribute");
        return -1;
    }
    return PyDict_SetItem(self->config, s_daemon, value);
}

static PyObject *get_authkey(ProcObject *self, void *c)
{
    (void)c;
    PyObject *k = self->config ? PyDict_GetItemWithError(self->config, s_authkey) : NULL;
    if (!k) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, s_authkey);
        return NULL;
    }
    return Py_NewRef(k);
}

static int set_authkey(ProcObject *self, PyObject *value, void *c)
{
    (void)c;
    if (check_initialized(self) < 0)
        return -1;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "can't delete attribute");
        return -1;
    }
    PyObject *k = PyObject_CallOneArg(g_authstr_type, value);
    if (!k)
        return -1;
    int rc = PyDict_SetItem(self->config, s_authkey, k);
    Py_DECREF(k);
    return rc;
}

static PyObject *get_exitcode(ProcObject *self, void *c)
{
    (void)c;
    if (check_closed(self) < 0)
        return NULL;
    if (!self->started)
        Py_RETURN_NONE;
    int rc = proc_poll(self);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(exitcode_of(self));
}

static PyObject *get_ident(ProcObject *self, void *c)
{
    (void)c;
    if (check_closed(self) < 0)
        return NULL;
    if ((PyObject *)self == g_current)
        return PyLong_FromLong((long)cmp_self_pid());
    if (self->kind == KIND_PARENT)
        return PyLong_FromLong(self->pid);
    if (!self->started)
        Py_RETURN_NONE;
    return PyLong_FromLong((long)self->proc.pid);
}

static PyObject *get_sentinel(ProcObject *self, void *c)
{
    (void)c;
    if (check_closed(self) < 0)
        return NULL;
    if (self->kind == KIND_PARENT) {
        int fd = parent_sentinel_fd(self);
        return fd < 0 ? NULL : PyLong_FromLong(fd);
    }
    if (!self->started) {
        PyErr_SetString(PyExc_ValueError, "process not started");
        return NULL;
    }
    return PyLong_FromLong(cmp_process_sentinel(&self->proc));
}

static PyObject *get_parent_pid(ProcObject *self, void *c)
{
    (void)c;
    if (self->parent_pid < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->parent_pid);
}

static PyObject *get_popen(ProcObject *self, void *c)
{
    (void)c;
    /* Code written against the stdlib tests `p._popen is None` to know
     * whether a process was started; any non-None object answers that. */
    if (!self->started)
        Py_RETURN_NONE;
    return Py_NewRef((PyObject *)self);
}

static PyObject *exitcode_name(int code)
{
    if (code < 0) {
        if (!g_exitcode_names) {
            PyObject *names = PyDict_New();
            PyObject *sig = PyImport_ImportModule("signal");
            PyObject *d = sig ? PyModule_GetDict(sig) : NULL;
            PyObject *k, *v;
            Py_ssize_t pos = 0;
            while (names && d && PyDict_Next(d, &pos, &k, &v)) {
                if (!PyUnicode_Check(k) || !PyLong_Check(v))
                    continue;
                const char *s = PyUnicode_AsUTF8(k);
                if (!s || strncmp(s, "SIG", 3) != 0 || strchr(s, '_'))
                    continue;
                PyObject *neg = PyNumber_Negative(v);
                PyObject *label = PyUnicode_FromFormat("-%s", s);
                if (neg && label)
                    PyDict_SetItem(names, neg, label);
                Py_XDECREF(neg);
                Py_XDECREF(label);
            }
            Py_XDECREF(sig);
            PyErr_Clear();
            g_exitcode_names = names;
        }
        if (g_exitcode_names) {
            PyObject *key = PyLong_FromLong(code);
            PyObject *label = key ? PyDict_GetItemWithError(g_exitcode_names, key) : NULL;
            Py_XDECREF(key);
            PyErr_Clear();
            if (label)
                return Py_NewRef(label);
        }
    }
    return PyUnicode_FromFormat("%d", code);
}

static PyObject *proc_repr(ProcObject *self)
{
    const char *status;
    int have_code = 0, code = 0;
    if ((PyObject *)self == g_current) {
        status = "started";
    } else if (self->closed) {
        status = "closed";
    } else if (!is_child_of_me(self)) {
        status = "unknown";
    } else if (!self->started) {
        status = "initial";
    } else {
        int rc = proc_poll(self);
        if (rc < 0)
            return NULL;
        if (rc == 1) {
            status = "stopped";
            have_code = 1;
            code = exitcode_of(self);
        } else {
            status = "started";
        }
    }
    PyObject *name = self->name ? self->name : Py_None;
    PyObject *out = PyUnicode_FromFormat("<%s name=%R", type_short_name(Py_TYPE(self)), name);
    if (out && self->started)
        PyUnicode_AppendAndDel(&out, PyUnicode_FromFormat(" pid=%d", (int)self->proc.pid));
    if (out) {
        if (self->parent_pid < 0)
            PyUnicode_AppendAndDel(&out, PyUnicode_FromString(" parent=None"));
        else
            PyUnicode_AppendAndDel(&out, PyUnicode_FromFormat(" parent=%ld", self->parent_pid));
    }
    if (out)
        PyUnicode_AppendAndDel(&out, PyUnicode_FromFormat(" %s", status));
    if (out && have_code) {
        PyObject *label = exitcode_name(code);
        if (label)
            PyUnicode_AppendAndDel(&out, PyUnicode_FromFormat(" exitcode=%U", label));
        else
            Py_CLEAR(out);
        Py_XDECREF(label);
    }
    int d = is_daemon(self);
    if (d < 0)
        Py_CLEAR(out);
    if (out && d)
        PyUnicode_AppendAndDel(&out, PyUnicode_FromString(" daemon"));
    if (out)
        PyUnicode_AppendAndDel(&out, PyUnicode_FromString(">"));
    return out;
}

static PyMethodDef proc_methods[] = {
    {"run", (PyCFunction)proc_run, METH_NOARGS,
     "Method to be run in the child; override it in a subclass."},
    {"start", (PyCFunction)proc_start, METH_NOARGS, "Start the child process."},
    {"join", (PyCFunction)(void (*)(void))proc_join, METH_FASTCALL | METH_KEYWORDS,
     "join(timeout=None)\n--\n\nWait until the child process terminates."},
    {"is_alive", (PyCFunction)proc_is_alive, METH_NOARGS, "Return whether the process is alive."},
    {"terminate", (PyCFunction)proc_terminate, METH_NOARGS, "Send SIGTERM to the process."},
    {"kill", (PyCFunction)proc_kill, METH_NOARGS, "Send SIGKILL to the process."},
    {"interrupt", (PyCFunction)proc_interrupt, METH_NOARGS,
     "Send SIGINT to the process (Python 3.14's Process.interrupt)."},
    {"_bootstrap", (PyCFunction)(void (*)(void))proc_bootstrap, METH_FASTCALL | METH_KEYWORDS,
     "_bootstrap(parent_sentinel=None)\n--\n\n"
     "Run the process in the child: run(), exit handling; returns the exit code.\n"
     "A subclass or a patch (coverage) may wrap it."},
    {"close", (PyCFunction)proc_close, METH_NOARGS, "Release the resources of a finished process."},
    {"__reduce__", (PyCFunction)proc_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef proc_getset[] = {
    {"name", (getter)get_name, (setter)set_name, "Name of the process.", NULL},
    {"_name", (getter)get_name, (setter)set_name, NULL, NULL},
    {"daemon", (getter)get_daemon, (setter)set_daemon, "Whether the process is a daemon.", NULL},
    {"authkey", (getter)get_authkey, (setter)set_authkey, "Authorization key.", NULL},
    {"exitcode", (getter)get_exitcode, NULL, "Exit code, or None while running.", NULL},
    {"ident", (getter)get_ident, NULL, "Process id, or None before start().", NULL},
    {"pid", (getter)get_ident, NULL, "Process id, or None before start().", NULL},
    {"sentinel", (getter)get_sentinel, NULL,
     "A file descriptor that becomes readable when the process ends.", NULL},
    {"_parent_pid", (getter)get_parent_pid, NULL, NULL, NULL},
    {"_popen", (getter)get_popen, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef proc_members[] = {
    {"_target", T_OBJECT_EX, offsetof(ProcObject, target), 0, NULL},
    {"_args", T_OBJECT_EX, offsetof(ProcObject, args), 0, NULL},
    {"_kwargs", T_OBJECT_EX, offsetof(ProcObject, kwargs), 0, NULL},
    {"_identity", T_OBJECT_EX, offsetof(ProcObject, identity), READONLY, NULL},
    {"_config", T_OBJECT_EX, offsetof(ProcObject, config), READONLY, NULL},
    {"_parent_name", T_OBJECT_EX, offsetof(ProcObject, parent_name), READONLY, NULL},
    {"_closed", T_BOOL, offsetof(ProcObject, closed), READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(ProcObject, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ProcObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot proc_slots[] = {
    {Py_tp_new, proc_new},
    {Py_tp_init, proc_init},
    {Py_tp_dealloc, proc_dealloc},
    {Py_tp_traverse, proc_traverse},
    {Py_tp_clear, proc_clear},
    {Py_tp_repr, proc_repr},
    {Py_tp_methods, proc_methods},
    {Py_tp_getset, proc_getset},
    {Py_tp_members, proc_members},
    {Py_tp_doc, "Process(group=None, target=None, name=None, args=(), kwargs={}, *, "
                "daemon=None)\n--\n\n"
                "Activity run in a separate process (forked), like threading.Thread."},
    {0, NULL},
};

static PyType_Spec proc_spec = {
    .name = "cmultiprocessing.process.Process",
    .basicsize = sizeof(ProcObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = proc_slots,
};

static PyType_Slot special_slots[] = {
    {Py_tp_traverse, proc_traverse},
    {Py_tp_clear, proc_clear},
    {0, NULL},
};

/* What the fork context's Process is: the stdlib names its processes after
 * this class (ForkProcess-1). */
static PyType_Spec fork_process_spec = {
    .name = "cmultiprocessing.context.ForkProcess",
    .basicsize = sizeof(ProcObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = special_slots,
};

static PyType_Spec spawn_process_spec = {
    .name = "cmultiprocessing.context.SpawnProcess",
    .basicsize = sizeof(ProcObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = special_slots,
};

static PyType_Spec forkserver_process_spec = {
    .name = "cmultiprocessing.context.ForkServerProcess",
    .basicsize = sizeof(ProcObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = special_slots,
};

static PyType_Spec main_spec = {
    .name = "cmultiprocessing.process._MainProcess",
    .basicsize = sizeof(ProcObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = special_slots,
};

static PyType_Spec parent_spec = {
    .name = "cmultiprocessing.process._ParentProcess",
    .basicsize = sizeof(ProcObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = special_slots,
};

/* ------------------------------------------------------------------------
 * AuthenticationString: bytes that refuse to be pickled
 * ------------------------------------------------------------------------ */

static PyObject *authstr_reduce(PyObject *self, PyObject *unused)
{
    (void)unused;
    if (cmp_py_spawning()) /* the child needs its key, as the stdlib's does */
        return Py_BuildValue("(O(y#))", (PyObject *)Py_TYPE(self), PyBytes_AS_STRING(self),
                             PyBytes_GET_SIZE(self));
    PyErr_SetString(PyExc_TypeError,
                    "Pickling an AuthenticationString object is disallowed for security "
                    "reasons");
    return NULL;
}

static PyMethodDef authstr_methods[] = {
    {"__reduce__", authstr_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot authstr_slots[] = {
    {Py_tp_methods, authstr_methods},
    {0, NULL},
};

static PyType_Spec authstr_spec = {
    .name = "cmultiprocessing.process.AuthenticationString",
    .basicsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = authstr_slots,
};

/* ------------------------------------------------------------------------
 * Module functions
 * ------------------------------------------------------------------------ */

static PyObject *fn_current_process(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return Py_NewRef(g_current);
}

static PyObject *fn_parent_process(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    if (g_parent_pending) {
        ProcObject *cur = (ProcObject *)g_current;
        ProcObject *parent = new_special(g_parent_type, KIND_PARENT);
        if (!parent)
            return NULL;
        parent->pid = cur->parent_pid;
        parent->name = Py_NewRef(cur->parent_name);
        parent->parent_fd = g_parent_fd_given;
        Py_XSETREF(g_parent, (PyObject *)parent);
        g_parent_pending = 0;
    }
    return Py_NewRef(g_parent ? g_parent : Py_None);
}

static PyObject *fn_active_children(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    if (cleanup_children() < 0)
        return NULL;
    PyObject *kids = children();
    return kids ? PyDict_Keys(kids) : NULL;
}

static PyObject *fn_cpu_count(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) {
        PyErr_SetString(PyExc_NotImplementedError, "cannot determine number of cpus");
        return NULL;
    }
    return PyLong_FromLong(n);
}

static PyObject *fn_freeze_support(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    /* Only frozen Windows executables need it. */
    Py_RETURN_NONE;
}

static PyObject *fn_get_logger(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    if (g_logger)
        return Py_NewRef(g_logger);
    PyObject *logging = PyImport_ImportModule("logging");
    if (!logging)
        return NULL;
    PyObject *logger = PyObject_CallMethod(logging, "getLogger", "s", "multiprocessing");
    Py_DECREF(logging);
    if (!logger)
        return NULL;
    if (PyObject_SetAttrString(logger, "propagate", Py_False) < 0) {
        Py_DECREF(logger);
        return NULL;
    }
    /* logging's own exit handler was registered when logging was imported,
     * probably after ours: register ours again so that it runs first and
     * can still log. */
    PyObject *atexit = PyImport_ImportModule("atexit");
    if (atexit && g_exit_func) {
        PyObject *r = PyObject_CallMethod(atexit, "unregister", "O", g_exit_func);
        Py_XDECREF(r);
        r = r ? PyObject_CallMethod(atexit, "register", "O", g_exit_func) : NULL;
        Py_XDECREF(r);
    }
    Py_XDECREF(atexit);
    if (PyErr_Occurred()) {
        Py_DECREF(logger);
        return NULL;
    }
    g_logger = logger;
    return Py_NewRef(logger);
}

static PyObject *fn_log_to_stderr(PyObject *m, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    PyObject *level = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1)
        return PyErr_Format(PyExc_TypeError, "log_to_stderr() takes at most 1 argument");
    if (nargs + nkw == 1) {
        if (nkw && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "level") != 0)
            return PyErr_Format(PyExc_TypeError,
                                "log_to_stderr() got an unexpected keyword argument '%S'",
                                PyTuple_GET_ITEM(kwnames, 0));
        level = args[0];
    }
    PyObject *logger = fn_get_logger(m, NULL);
    if (!logger)
        return NULL;
    PyObject *logging = PyImport_ImportModule("logging");
    PyObject *formatter = logging ? PyObject_CallMethod(logging, "Formatter", "s",
                                                        "[%(levelname)s/%(processName)s] "
                                                        "%(message)s")
                                  : NULL;
    PyObject *handler = formatter ? PyObject_CallMethod(logging, "StreamHandler", NULL) : NULL;
    PyObject *r = handler ? PyObject_CallMethod(handler, "setFormatter", "O", formatter) : NULL;
    Py_XDECREF(r);
    r = r ? PyObject_CallMethod(logger, "addHandler", "O", handler) : NULL;
    Py_XDECREF(r);
    int ok = r != NULL;
    if (ok) {
        int truthy = PyObject_IsTrue(level);
        if (truthy < 0) {
            ok = 0;
        } else if (truthy) {
            r = PyObject_CallMethod(logger, "setLevel", "O", level);
            ok = r != NULL;
            Py_XDECREF(r);
        }
    }
    Py_XDECREF(logging);
    Py_XDECREF(formatter);
    Py_XDECREF(handler);
    if (!ok) {
        Py_DECREF(logger);
        return NULL;
    }
    return logger;
}

static PyObject *fn_set_executable(PyObject *m, PyObject *executable)
{
    (void)m;
    /* Only the spawn start method runs an executable; kept for it. */
    PyObject *path = PyOS_FSPath(executable);
    if (!path)
        return NULL;
    Py_XSETREF(g_executable, path);
    Py_RETURN_NONE;
}

static PyObject *fn_set_forkserver_preload(PyObject *m, PyObject *names)
{
    (void)m;
    PyObject *list = PySequence_List(names);
    if (!list)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        if (!PyUnicode_CheckExact(PyList_GET_ITEM(list, i))) {
            Py_DECREF(list);
            PyErr_SetString(PyExc_TypeError, "module_names must be a list of strings");
            return NULL;
        }
    }
    /* Kept for the forkserver start method. */
    Py_XSETREF(g_forkserver_preload, list);
    Py_RETURN_NONE;
}

/* _rebuild_process(type, state): the Process object a spawned child
 * unpickles (see proc_reduce), not started. */
static PyObject *fn_rebuild_process(PyObject *m, PyObject *args)
{
    (void)m;
    PyTypeObject *tp;
    PyObject *target, *pargs, *kwargs, *name, *identity, *config, *parent_name, *dict;
    long parent_pid;
    if (!PyArg_ParseTuple(args, "O!(OOOOO!O!lOO):_rebuild_process", &PyType_Type, &tp, &target,
                          &pargs, &kwargs, &name, &PyTuple_Type, &identity, &PyDict_Type, &config,
                          &parent_pid, &parent_name, &dict))
        return NULL;
    if (!PyType_IsSubtype(tp, g_main_type->tp_base)) {
        PyErr_SetString(PyExc_TypeError, "_rebuild_process() needs a Process type");
        return NULL;
    }
    ProcObject *self = (ProcObject *)tp->tp_new(tp, NULL, NULL);
    if (!self)
        return NULL;
    self->kind = KIND_CHILD;
    self->target = Py_NewRef(target);
    self->args = Py_NewRef(pargs);
    self->kwargs = Py_NewRef(kwargs);
    self->name = name == Py_None ? NULL : Py_NewRef(name);
    self->identity = Py_NewRef(identity);
    self->config = Py_NewRef(config);
    self->parent_pid = parent_pid;
    self->parent_name = Py_NewRef(parent_name);
    if (dict != Py_None) {
        if (!PyDict_Check(dict)) {
            Py_DECREF(self);
            PyErr_SetString(PyExc_TypeError, "_rebuild_process(): bad state");
            return NULL;
        }
        self->dict = Py_NewRef(dict);
    }
    return (PyObject *)self;
}

/* _bootstrap_spawned(process, parent_pidfd) -> exit code: runs a process
 * a spawned child unpickled, as a forked child runs its own. */
static PyObject *fn_bootstrap_spawned(PyObject *m, PyObject *args)
{
    (void)m;
    ProcObject *self;
    int parent_fd;
    if (!PyArg_ParseTuple(args, "O!i:_bootstrap_spawned", g_main_type->tp_base, &self, &parent_fd))
        return NULL;
    if (self->kind != KIND_CHILD || !self->config)
        return PyErr_Format(PyExc_ValueError, "not a process to run");
    if (find_run(self) < 0)
        return NULL;
    g_parent_fd_given = parent_fd;
    Py_CLEAR(g_parent);
    return PyLong_FromLong(self->bootstrap_is_ours ? bootstrap(self) : foreign_bootstrap(self));
}

static PyObject *fn_spawn_settings(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return Py_BuildValue("(OO)", g_executable ? g_executable : Py_None,
                         g_forkserver_preload ? g_forkserver_preload : Py_None);
}

/* At exit (and at the end of every child): daemonic children are
 * terminated, then every child is joined. */
static int exit_children(void)
{
    if (!g_children || g_children_pid != cmp_self_pid())
        return 0;
    for (int pass = 0; pass < 2; pass++) {
        if (cleanup_children() < 0)
            return -1;
        PyObject *keys = PyDict_Keys(g_children);
        if (!keys)
            return -1;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
            ProcObject *p = (ProcObject *)PyList_GET_ITEM(keys, i);
            if (!p->started || p->closed || !is_child_of_me(p))
                continue;
            if (pass == 0) {
                int d = is_daemon(p);
                if (d < 0) {
                    Py_DECREF(keys);
                    return -1;
                }
                if (d) {
                    log_msg(LOG_INFO, "calling terminate() for daemon %S", p->name);
                    cmp_process_terminate(&p->proc);
                }
            } else {
                log_msg(LOG_INFO, "calling join() for process %S", p->name);
                int rc = proc_wait(p, NULL);
                if (rc < 0) {
                    Py_DECREF(keys);
                    return -1;
                }
                discard_child(p);
            }
        }
        Py_DECREF(keys);
    }
    return 0;
}

static PyObject *fn_exit_function(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    log_msg(LOG_INFO, "process shutting down");
    if (exit_children() < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef process_functions[] = {
    {"current_process", fn_current_process, METH_NOARGS,
     "Return the Process object of the calling process."},
    {"parent_process", fn_parent_process, METH_NOARGS,
     "Return the Process object of the parent process (None in the main process)."},
    {"active_children", fn_active_children, METH_NOARGS,
     "Return the live children of the calling process (joining finished ones)."},
    {"cpu_count", fn_cpu_count, METH_NOARGS, "Return the number of CPUs in the system."},
    {"freeze_support", fn_freeze_support, METH_NOARGS,
     "Does nothing except in frozen Windows programs."},
    {"get_logger", fn_get_logger, METH_NOARGS, "Return the 'multiprocessing' logger."},
    {"log_to_stderr", (PyCFunction)(void (*)(void))fn_log_to_stderr, METH_FASTCALL | METH_KEYWORDS,
     "log_to_stderr(level=None)\n--\n\nLog to stderr through the 'multiprocessing' logger."},
    {"set_executable", fn_set_executable, METH_O,
     "Set the interpreter the spawn start method runs."},
    {"set_forkserver_preload", fn_set_forkserver_preload, METH_O,
     "Set the modules the forkserver start method preloads."},
    {"_rebuild_process", fn_rebuild_process, METH_VARARGS,
     "_rebuild_process(type, state)\n--\n\nA Process object for a spawned child."},
    {"_bootstrap_spawned", fn_bootstrap_spawned, METH_VARARGS,
     "_bootstrap_spawned(process, parent_pidfd)\n--\n\nRun the process in this spawned child; "
     "return its exit code."},
    {"_spawn_settings", fn_spawn_settings, METH_NOARGS,
     "(executable or None, forkserver preload list or None)."},
    {"_exit_function", fn_exit_function, METH_NOARGS,
     "Terminate daemonic children and join the others (run at exit)."},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------------
 * Initialization
 * ------------------------------------------------------------------------ */

static int make_main_process(void)
{
    ProcObject *main = new_special(g_main_type, KIND_MAIN);
    if (!main)
        return -1;
    main->name = PyUnicode_FromString("MainProcess");
    PyObject *os = PyImport_ImportModule("os");
    PyObject *raw = os ? PyObject_CallMethod(os, "urandom", "i", 32) : NULL;
    Py_XDECREF(os);
    PyObject *key = raw ? PyObject_CallOneArg(g_authstr_type, raw) : NULL;
    Py_XDECREF(raw);
    PyObject *prefix = PyUnicode_FromString("/mp");
    int rc = main->name && key && prefix && PyDict_SetItem(main->config, s_authkey, key) == 0 &&
                     PyDict_SetItem(main->config, s_semprefix, prefix) == 0
                 ? 0
                 : -1;
    Py_XDECREF(key);
    Py_XDECREF(prefix);
    if (rc < 0) {
        Py_DECREF(main);
        return -1;
    }
    g_current = (PyObject *)main;
    return 0;
}

int cmp_py_process_init(PyObject *module, cmp_py_state *st)
{
    if (PyModule_AddFunctions(module, process_functions) < 0)
        return -1;
    st->Process_type = cmp_py_add_type(module, &proc_spec, NULL);
    if (!st->Process_type)
        return -1;
    if (g_current) /* the module was initialized again: keep the process state */
        return 0;

#define INTERN(var, text)                                                                          \
    if (!((var) = PyUnicode_InternFromString(text)))                                               \
        return -1;
    INTERN(s_daemon, "daemon");
    INTERN(s_authkey, "authkey");
    INTERN(s_semprefix, "semprefix");
    INTERN(s_run, "run");
    INTERN(s_flush, "flush");
    INTERN(s_name, "name");
    INTERN(s_shutdown, "_shutdown");
    INTERN(s_bootstrap, "_bootstrap");
    g_run_descr = PyObject_GetAttr((PyObject *)st->Process_type, s_run);
    g_bootstrap_descr = PyObject_GetAttr((PyObject *)st->Process_type, s_bootstrap);
    if (!g_run_descr || !g_bootstrap_descr)
        return -1;
    INTERN(s_shutdown_locks, "_shutdown_locks");
#undef INTERN

    g_main_type =
        (PyTypeObject *)cmp_py_type_from_spec(module, &main_spec, (PyObject *)st->Process_type);
    g_parent_type =
        (PyTypeObject *)cmp_py_type_from_spec(module, &parent_spec, (PyObject *)st->Process_type);
    g_authstr_type = cmp_py_type_from_spec(module, &authstr_spec, (PyObject *)&PyBytes_Type);
    if (!g_main_type || !g_parent_type || !g_authstr_type)
        return -1;
    PyObject *fork_process =
        cmp_py_type_from_spec(module, &fork_process_spec, (PyObject *)st->Process_type);
    if (!fork_process || PyModule_AddObjectRef(module, "_ForkProcess", fork_process) < 0) {
        Py_XDECREF(fork_process);
        return -1;
    }
    /* keeps this reference, for is-a checks in start() */
    Py_XSETREF(g_fork_process_type, (PyTypeObject *)fork_process);
    PyObject *sp = cmp_py_type_from_spec(module, &spawn_process_spec, (PyObject *)st->Process_type);
    if (!sp || PyModule_AddObjectRef(module, "_SpawnProcess", sp) < 0) {
        Py_XDECREF(sp);
        return -1;
    }
    Py_XSETREF(g_spawn_process_type, (PyTypeObject *)sp);
    PyObject *fs =
        cmp_py_type_from_spec(module, &forkserver_process_spec, (PyObject *)st->Process_type);
    if (!fs || PyModule_AddObjectRef(module, "_ForkServerProcess", fs) < 0) {
        Py_XDECREF(fs);
        return -1;
    }
    Py_XSETREF(g_forkserver_process_type, (PyTypeObject *)fs);
    g_module_ref = module;
    PyObject *os_mod = PyImport_ImportModule("os");
    PyObject *cwd = os_mod ? PyObject_CallMethod(os_mod, "getcwd", NULL) : NULL;
    Py_XDECREF(os_mod);
    if (!cwd)
        PyErr_Clear(); /* the stdlib's ORIGINAL_DIR is None then too */
    if (PyModule_AddObjectRef(module, "_original_dir", cwd ? cwd : Py_None) < 0) {
        Py_XDECREF(cwd);
        return -1;
    }
    Py_XDECREF(cwd);
    if (PyModule_AddObjectRef(module, "_AuthenticationString", g_authstr_type) < 0)
        return -1;
    if (!children() || make_main_process() < 0)
        return -1;
    PyObject *threading = PyImport_ImportModule("threading");
    if (!threading)
        return -1;
    g_threading_dict = Py_NewRef(PyModule_GetDict(threading));
    Py_DECREF(threading);

    g_exit_func = PyObject_GetAttrString(module, "_exit_function");
    PyObject *atexit = g_exit_func ? PyImport_ImportModule("atexit") : NULL;
    PyObject *r = atexit ? PyObject_CallMethod(atexit, "register", "O", g_exit_func) : NULL;
    Py_XDECREF(atexit);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}
