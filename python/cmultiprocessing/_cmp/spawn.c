/*
 * Spawning: what the spawn and forkserver start methods need in C.
 *
 * A spawned (or fork-server) child is a new interpreter: it gets nothing
 * by inheritance, so everything the Process object carries is pickled for
 * it (cmultiprocessing/_spawn.py drives that). While such a pickle is being
 * made (between _spawning_begin() and _spawning_end()), our objects that
 * otherwise refuse to be pickled ("should only be shared between processes
 * through inheritance") reduce to what the child needs to attach to the
 * very same object: a block of the shared heap travels as its segment's fd
 * and its offset (cmp_shared_export), a Connection as its fd. The fds are
 * collected here and passed to the child at the same numbers (across exec
 * for spawn; by SCM_RIGHTS through the fork server): nothing is re-opened
 * by name.
 *
 * Also here: the thin bindings of libcmp's cmp_process_spawn and fork
 * server that _spawn.py calls.
 */
#include "_cmp.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

/* While pickling for a child: the fds that cross (ints), and those of them
 * that are shared-heap segments, which the child closes once it has
 * unpickled (their mappings keep what they need). NULL otherwise. */
static PyObject *g_pass, *g_segments;
/* The thread pickling for the child (_spawn.py lets one at a time): other
 * threads pickle as usual meanwhile. */
static unsigned long g_pass_thread;
static PyObject *g_module; /* borrowed: outlives every pickle */

typedef struct {
    CMP_PY_SHARED_HEAD
} shared_head;

int cmp_py_spawning(void)
{
    return g_pass != NULL && PyThread_get_thread_ident() == g_pass_thread;
}

static int add_unique(PyObject *list, int fd)
{
    PyObject *n = PyLong_FromLong(fd);
    if (!n)
        return -1;
    int has = PySequence_Contains(list, n);
    int rc = has < 0 ? -1 : has ? 0 : PyList_Append(list, n);
    Py_DECREF(n);
    return rc;
}

int cmp_py_spawn_pass_fd(int fd, int segment)
{
    if (!cmp_py_spawning()) {
        PyErr_SetString(PyExc_RuntimeError, "not pickling for a spawned child");
        return -1;
    }
    if (add_unique(g_pass, fd) < 0 || (segment && add_unique(g_segments, fd) < 0))
        return -1;
    return 0;
}

PyObject *cmp_py_shared_reduce(PyObject *op, const char *what, PyObject *extra)
{
    if (!cmp_py_spawning())
        return cmp_py_refuse_pickle(op, what);
    int fd;
    uint64_t off;
    int rc = cmp_shared_export(((shared_head *)op)->block, &fd, &off);
    if (rc < 0)
        return cmp_py_raise(rc);
    if (cmp_py_spawn_pass_fd(fd, 1) < 0)
        return NULL;
    PyObject *rebuild = PyObject_GetAttrString(g_module, "_rebuild_shared");
    if (!rebuild)
        return NULL;
    /* SharedBlock is not importable by name: None stands for it */
    cmp_py_state *st = cmp_py_state_of_module(g_module);
    PyObject *tp = Py_TYPE(op) == st->SharedBlock_type ? Py_None : (PyObject *)Py_TYPE(op);
    return Py_BuildValue("(N(OiKO))", rebuild, tp, fd, (unsigned long long)off,
                         extra ? extra : Py_None);
}

/* _rebuild_shared(type, fd, offset, extra): the object of that type over
 * the block a parent exported. */
static PyObject *rebuild_shared(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    cmp_py_state *st = cmp_py_state_of_module(module);
    if (nargs != 4 || (!PyType_Check(args[0]) && args[0] != Py_None)) {
        PyErr_SetString(PyExc_TypeError, "_rebuild_shared(type, fd, offset, extra)");
        return NULL;
    }
    PyTypeObject *tp = args[0] == Py_None ? st->SharedBlock_type : (PyTypeObject *)args[0];
    int fd = PyLong_AsLong(args[1]);
    unsigned long long off = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    int (*adopt)(PyObject *, void *, PyObject *) = NULL;
    PyTypeObject *kinds[] = {st->Lock_type,  st->RLock_type,       st->Semaphore_type,
                             st->Event_type, st->Condition_type,   st->Barrier_type,
                             st->Queue_type, st->SimpleQueue_type, st->SharedBlock_type};
    int (*adopters[])(PyObject *, void *, PyObject *) = {
        cmp_py_lock_adopt,  cmp_py_rlock_adopt,     cmp_py_semaphore_adopt,
        cmp_py_event_adopt, cmp_py_condition_adopt, cmp_py_barrier_adopt,
        cmp_py_queue_adopt, cmp_py_queue_adopt,     NULL};
    size_t i;
    for (i = 0; i < sizeof kinds / sizeof *kinds; i++)
        if (kinds[i] && PyType_IsSubtype(tp, kinds[i]))
            break;
    if (i == sizeof kinds / sizeof *kinds) {
        PyErr_Format(PyExc_TypeError, "%s is not a shared object type", tp->tp_name);
        return NULL;
    }
    adopt = adopters[i];
    cmp_shared_t *block;
    int rc = cmp_shared_import(fd, (uint64_t)off, &block);
    if (rc < 0)
        return cmp_py_raise(rc);
    PyObject *obj = tp->tp_alloc(tp, 0);
    if (!obj) {
        cmp_shared_release(block);
        return NULL;
    }
    ((shared_head *)obj)->block = block;
    if (adopt && adopt(obj, cmp_shared_ptr(block), args[3]) < 0) {
        Py_DECREF(obj);
        return NULL;
    }
    return obj;
}

static PyObject *spawning_begin(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    if (g_pass) {
        PyErr_SetString(PyExc_RuntimeError, "already pickling for a spawned child");
        return NULL;
    }
    g_pass = PyList_New(0);
    g_segments = g_pass ? PyList_New(0) : NULL;
    g_pass_thread = PyThread_get_thread_ident();
    if (!g_segments) {
        Py_CLEAR(g_pass);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* -> (fds to pass, of which the segments), and pickling is normal again */
static PyObject *spawning_end(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    if (!cmp_py_spawning())
        return Py_BuildValue("([][])");
    PyObject *r = PyTuple_Pack(2, g_pass, g_segments);
    Py_CLEAR(g_pass);
    Py_CLEAR(g_segments);
    return r;
}

static PyObject *spawning(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyBool_FromLong(cmp_py_spawning());
}

/* _spawn_pass_fd(fd): an fd (a socket's) that the child finds at the same
 * number; the child owns its copy. */
static PyObject *spawn_pass_fd(PyObject *module, PyObject *arg)
{
    (void)module;
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (cmp_py_spawn_pass_fd(fd, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Converts a list of str/bytes into a NULL-terminated argv of copies. */
static char **make_argv(PyObject *list)
{
    Py_ssize_t n = PyList_Size(list);
    if (n < 1) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "empty command line");
        return NULL;
    }
    char **argv = PyMem_Calloc((size_t)n + 1, sizeof *argv);
    if (!argv)
        return (char **)PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = NULL;
        if (!PyUnicode_FSConverter(PyList_GET_ITEM(list, i), &b)) {
            for (Py_ssize_t j = 0; j < i; j++)
                PyMem_Free(argv[j]);
            PyMem_Free(argv);
            return NULL;
        }
        argv[i] = PyMem_Malloc((size_t)PyBytes_GET_SIZE(b) + 1);
        if (argv[i])
            memcpy(argv[i], PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b) + 1);
        Py_DECREF(b);
        if (!argv[i]) {
            for (Py_ssize_t j = 0; j < i; j++)
                PyMem_Free(argv[j]);
            PyMem_Free(argv);
            return (char **)PyErr_NoMemory();
        }
    }
    return argv;
}

static void free_argv(char **argv)
{
    for (size_t i = 0; argv[i]; i++)
        PyMem_Free(argv[i]);
    PyMem_Free(argv);
}

/* A list of ints as a C array (PyMem), its length in *n. */
static int *int_array(PyObject *list, int *n)
{
    PyObject *seq = PySequence_Fast(list, "fds must be a sequence of ints");
    if (!seq)
        return NULL;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    int *out = PyMem_Calloc((size_t)len + 1, sizeof *out);
    for (Py_ssize_t i = 0; out && i < len; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            PyMem_Free(out);
            out = NULL;
            break;
        }
        out[i] = (int)v;
    }
    Py_DECREF(seq);
    if (!out && !PyErr_Occurred())
        PyErr_NoMemory();
    *n = (int)len;
    return out;
}

/* _spawn_exec(argv, keep_fds) -> (pid, pidfd): argv[0] run as a child of
 * ours with only keep_fds inherited (at their numbers). */
static PyObject *spawn_exec(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "_spawn_exec(argv: list, keep_fds)");
        return NULL;
    }
    char **argv = make_argv(args[0]);
    if (!argv)
        return NULL;
    int nkeep;
    int *keep = int_array(args[1], &nkeep);
    if (!keep) {
        free_argv(argv);
        return NULL;
    }
    cmp_process_t proc;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = cmp_process_spawn(&proc, argv[0], argv, keep, nkeep);
    Py_END_ALLOW_THREADS
    free_argv(argv);
    PyMem_Free(keep);
    if (rc < 0)
        return cmp_py_raise(rc);
    return Py_BuildValue("(ii)", (int)proc.pid, proc.pidfd);
}

/* _forkserver_listen() -> (listen_fd, address bytes) */
static PyObject *forkserver_listen(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    char addr[CMP_FORKSERVER_ADDR_MAX];
    int fd;
    int rc = cmp_forkserver_listen(addr, &fd);
    if (rc < 0)
        return cmp_py_raise(rc);
    return Py_BuildValue("(iy)", fd, addr);
}

/* _forkserver_request(address, payload, fds) -> (pid, pidfd, status_fd) */
static PyObject *forkserver_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "_forkserver_request(address: bytes, payload, fds)");
        return NULL;
    }
    Py_buffer payload;
    if (PyObject_GetBuffer(args[1], &payload, PyBUF_SIMPLE) < 0)
        return NULL;
    int nfds;
    int *fds = int_array(args[2], &nfds);
    if (!fds) {
        PyBuffer_Release(&payload);
        return NULL;
    }
    cmp_process_t proc;
    int rc;
    const char *addr = PyBytes_AS_STRING(args[0]);
    Py_BEGIN_ALLOW_THREADS
    rc = cmp_forkserver_request(addr, payload.buf, (size_t)payload.len, fds, nfds, &proc);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&payload);
    PyMem_Free(fds);
    if (rc < 0)
        return cmp_py_raise(rc);
    return Py_BuildValue("(iii)", (int)proc.pid, proc.pidfd, proc.status_fd);
}

/* ---- the fork server's side ---------------------------------------------- */

static void fs_before_fork(void *arg)
{
    (void)arg;
    PyOS_BeforeFork();
}

static void fs_after_fork_parent(void *arg)
{
    (void)arg;
    PyOS_AfterFork_Parent();
}

/* In the new child: Python's after-fork work, then the payload's process
 * (run by arg, _spawn's child entry), then what any child of ours does on
 * its way out. */
static int fs_child(void *arg, const void *payload, size_t len)
{
    PyOS_AfterFork_Child();
    PyObject *data = PyBytes_FromStringAndSize(payload, (Py_ssize_t)len);
    PyObject *r = data ? PyObject_CallOneArg((PyObject *)arg, data) : NULL;
    Py_XDECREF(data);
    int code = 1;
    if (r) {
        long v = PyLong_AsLong(r);
        code = v == -1 && PyErr_Occurred() ? 1 : (int)v;
        Py_DECREF(r);
    }
    if (PyErr_Occurred())
        PyErr_Print();
    cmp_shared_release_all();
    cmp_tempdir_remove();
    return code;
}

/* _forkserver_serve(listen_fd, alive_fd, child) */
static PyObject *forkserver_serve(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyCallable_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "_forkserver_serve(listen_fd, alive_fd, child)");
        return NULL;
    }
    int lfd = PyLong_AsLong(args[0]), afd = PyLong_AsLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    /* The GIL stays held: the server has no other thread, and the fork
     * hooks and the child need it. */
    cmp_forkserver_ops ops = {fs_before_fork, fs_after_fork_parent, fs_child, args[2]};
    int rc = cmp_forkserver_serve(lfd, afd, &ops);
    if (rc < 0)
        return cmp_py_raise(rc);
    Py_RETURN_NONE;
}

static PyMethodDef spawn_functions[] = {
    {"_rebuild_shared", (PyCFunction)(void (*)(void))rebuild_shared, METH_FASTCALL,
     "_rebuild_shared(type, fd, offset, extra)\n--\n\nAn object over a block its parent "
     "exported for a spawned child."},
    {"_spawning_begin", spawning_begin, METH_NOARGS,
     "Start pickling for a spawned child: our objects reduce to what it attaches to."},
    {"_spawning_end", spawning_end, METH_NOARGS, "End it: (fds to pass, the segments among them)."},
    {"_spawning", spawning, METH_NOARGS, "Whether pickling for a spawned child."},
    {"_spawn_pass_fd", spawn_pass_fd, METH_O, "Pass an fd to the child being pickled for."},
    {"_spawn_exec", (PyCFunction)(void (*)(void))spawn_exec, METH_FASTCALL,
     "_spawn_exec(argv, keep_fds)\n--\n\nStart a program: (pid, pidfd)."},
    {"_forkserver_listen", forkserver_listen, METH_NOARGS,
     "A fork server's listening socket: (fd, address)."},
    {"_forkserver_request", (PyCFunction)(void (*)(void))forkserver_request, METH_FASTCALL,
     "_forkserver_request(address, payload, fds)\n--\n\nA child from the fork server: "
     "(pid, pidfd, status_fd)."},
    {"_forkserver_serve", (PyCFunction)(void (*)(void))forkserver_serve, METH_FASTCALL,
     "_forkserver_serve(listen_fd, alive_fd, child)\n--\n\nServe fork requests."},
    {NULL, NULL, 0, NULL},
};

int cmp_py_spawn_init(PyObject *module, cmp_py_state *st)
{
    (void)st;
    g_module = module;
    return PyModule_AddFunctions(module, spawn_functions);
}
