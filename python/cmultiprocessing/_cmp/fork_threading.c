/*
 * threading's after-fork hook, made cheap for the common case (CPython 3.11).
 *
 * Every fork child runs the hooks registered with os.register_at_fork()
 * from PyOS_AfterFork_Child(). threading's (threading._after_fork) is
 * Python code that walks its tables and rebuilds its locks; in a child
 * every object it touches sits on a page shared with the parent, so it
 * costs ~130 copy-on-write faults, about half of a whole start+join.
 *
 * When threading's state is the trivial one (the forking thread is the
 * only Thread object alive, and it is the main thread), the hook's effect
 * is fully known: fresh module locks, an empty _shutdown_locks, and the
 * main thread's own locks reinitialized. In our child, the hook's entry in
 * the interpreter's list is swapped for a C function that, at the same
 * position among the other hooks, checks that state (reading only) and
 * does exactly that. Any other state, a tracer or profiler (it would see
 * the hook's frames), and any later fork from that child (os.fork()
 * included) run threading's own hook unchanged.
 *
 * The interpreter's hook list has no public accessor: it is found once, at
 * the first start(), as the only object referring to a no-op marker hook we
 * register for that (gc.get_referrers). The replica follows CPython 3.11's
 * threading; on other versions the hook always runs as it is.
 */
#include "_cmp.h"

#include <pythread.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000

static int g_fast_fork;              /* 0 not probed, 1 usable, -1 never */
static int g_fresh_child;            /* child: the replica is to run now */
static PyObject *g_threading_dict;   /* threading's namespace */
static PyObject *g_fork_hooks;       /* the interpreter's after_in_child list */
static Py_ssize_t g_fork_hook_index; /* threading._after_fork's place in it */
static PyObject *g_thr_after_fork;   /* threading._after_fork */
static PyObject *g_thr_standin;      /* our replacement for it */
static PyObject *g_thr_rlock, *g_thr_crlock, *g_thr_alloc_lock, *g_thr_lock_type;
static PyObject *g_thr_main_type, *g_thr_event_type, *g_thr_cond_type, *g_deque_type;
static PyObject *g_thr_reset_fn, *g_thr_event_reinit, *g_thr_cond_reinit;
static PyObject *s_active, *s_limbo, *s_dangling, *s_main_thread, *s_active_limbo_lock,
    *s_shutdown_locks_lock, *s_shutdown_locks, *s_started, *s_cond, *s_lock, *s_waiters,
    *s_tstate_lock, *s_ident, *s_data, *s_at_fork_reinit, *s_acquire, *s_after_fork, *s_rlock_name,
    *s_crlock, *s_allocate_lock, *s_reset_internal_locks, *s_clear;

static PyObject *fn_fork_marker(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    Py_RETURN_NONE;
}

static int threading_is_trivial(void);
static int threading_after_fork_fast(void);

/* Stands in for threading._after_fork in the hook list of our children. */
static PyObject *fn_threading_after_fork(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    if (g_fresh_child) {
        g_fresh_child = 0;
        if (threading_is_trivial()) {
            if (threading_after_fork_fast() == 0)
                Py_RETURN_NONE;
            PyErr_Clear(); /* threading's own hook redoes all of it */
        }
    }
    return PyObject_CallNoArgs(g_thr_after_fork);
}

static PyMethodDef marker_def = {"_cmp_fork_marker", fn_fork_marker, METH_NOARGS, NULL};
static PyMethodDef standin_def = {"_after_fork", fn_threading_after_fork, METH_NOARGS,
                                  "threading._after_fork, done in C when threading's state "
                                  "is trivial."};

/* A borrowed global of threading's that must be a function defined there. */
static PyObject *threading_function(PyObject *name)
{
    PyObject *f = PyDict_GetItemWithError(g_threading_dict, name);
    if (!f || !PyFunction_Check(f) || PyFunction_GetGlobals(f) != g_threading_dict)
        return NULL;
    return f;
}

/* What the type's (or its bases') namespace holds under name, borrowed;
 * NULL if nothing. Nothing is written: this runs in the child too. */
static PyObject *type_attr(PyObject *type, PyObject *name)
{
    PyObject *mro = ((PyTypeObject *)type)->tp_mro;
    for (Py_ssize_t i = 0; mro && i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *dict = ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_dict;
        PyObject *v = dict ? PyDict_GetItemWithError(dict, name) : NULL;
        if (v)
            return v;
    }
    PyErr_Clear();
    return NULL;
}

/* Finds what the fast path needs, once. 1 usable, -1 not. */
static int probe_fast_fork(void)
{
#define INTERN(var, text)                                                                          \
    if (!(var) && !((var) = PyUnicode_InternFromString(text)))                                     \
        goto fail;
    INTERN(s_active, "_active");
    INTERN(s_limbo, "_limbo");
    INTERN(s_dangling, "_dangling");
    INTERN(s_main_thread, "_main_thread");
    INTERN(s_active_limbo_lock, "_active_limbo_lock");
    INTERN(s_shutdown_locks_lock, "_shutdown_locks_lock");
    INTERN(s_shutdown_locks, "_shutdown_locks");
    INTERN(s_started, "_started");
    INTERN(s_cond, "_cond");
    INTERN(s_lock, "_lock");
    INTERN(s_waiters, "_waiters");
    INTERN(s_tstate_lock, "_tstate_lock");
    INTERN(s_ident, "_ident");
    INTERN(s_data, "data");
    INTERN(s_at_fork_reinit, "_at_fork_reinit");
    INTERN(s_acquire, "acquire");
    INTERN(s_after_fork, "_after_fork");
    INTERN(s_rlock_name, "RLock");
    INTERN(s_crlock, "_CRLock");
    INTERN(s_allocate_lock, "_allocate_lock");
    INTERN(s_reset_internal_locks, "_reset_internal_locks");
    INTERN(s_clear, "clear");
#undef INTERN
    if (!g_threading_dict) {
        PyObject *threading = PyImport_ImportModule("threading");
        if (!threading)
            goto fail;
        g_threading_dict = Py_NewRef(PyModule_GetDict(threading));
        Py_DECREF(threading);
    }
    PyObject *td = g_threading_dict;
    PyObject *after = threading_function(s_after_fork);
    PyObject *rlock = threading_function(s_rlock_name);
    PyObject *crlock = PyDict_GetItemWithError(td, s_crlock);
    PyObject *alloc = PyDict_GetItemWithError(td, s_allocate_lock);
    PyObject *main_type = PyDict_GetItemString(td, "_MainThread");
    PyObject *event_type = PyDict_GetItemString(td, "Event");
    PyObject *cond_type = PyDict_GetItemString(td, "Condition");
    if (!after || !rlock || !crlock || !PyType_Check(crlock) || !alloc ||
        !PyCFunction_Check(alloc) || !main_type || !PyType_Check(main_type) || !event_type ||
        !PyType_Check(event_type) || !cond_type || !PyType_Check(cond_type))
        goto fail;
    PyObject *reset = type_attr(main_type, s_reset_internal_locks);
    PyObject *event_reinit = type_attr(event_type, s_at_fork_reinit);
    PyObject *cond_reinit = type_attr(cond_type, s_at_fork_reinit);
    if (!reset || !PyFunction_Check(reset) || PyFunction_GetGlobals(reset) != td || !event_reinit ||
        !PyFunction_Check(event_reinit) || PyFunction_GetGlobals(event_reinit) != td ||
        !cond_reinit || !PyFunction_Check(cond_reinit) || PyFunction_GetGlobals(cond_reinit) != td)
        goto fail;
    PyObject *a_lock = PyObject_CallNoArgs(alloc);
    if (!a_lock)
        goto fail;
    PyObject *lock_type = (PyObject *)Py_TYPE(a_lock);
    Py_DECREF(a_lock);
    PyObject *collections = PyImport_ImportModule("collections");
    PyObject *deque = collections ? PyObject_GetAttrString(collections, "deque") : NULL;
    Py_XDECREF(collections);
    if (!deque)
        goto fail;

    /* Register a marker: the one list that refers to it is the hook list. */
    PyObject *marker = PyCFunction_New(&marker_def, NULL);
    PyObject *standin = marker ? PyCFunction_New(&standin_def, NULL) : NULL;
    PyObject *os = standin ? PyImport_ImportModule("os") : NULL;
    PyObject *reg = os ? PyObject_GetAttrString(os, "register_at_fork") : NULL;
    PyObject *kw = reg ? Py_BuildValue("{sO}", "after_in_child", marker) : NULL;
    PyObject *empty = kw ? PyTuple_New(0) : NULL;
    PyObject *r = empty ? PyObject_Call(reg, empty, kw) : NULL;
    Py_XDECREF(r);
    Py_XDECREF(empty);
    Py_XDECREF(kw);
    Py_XDECREF(reg);
    Py_XDECREF(os);
    PyObject *gc = r ? PyImport_ImportModule("gc") : NULL;
    PyObject *refs = gc ? PyObject_CallMethod(gc, "get_referrers", "O", marker) : NULL;
    Py_XDECREF(gc);
    PyObject *hooks = NULL;
    Py_ssize_t index = -1;
    for (Py_ssize_t i = 0; refs && PyList_Check(refs) && i < PyList_GET_SIZE(refs); i++) {
        PyObject *o = PyList_GET_ITEM(refs, i);
        if (!PyList_CheckExact(o))
            continue;
        if (hooks) { /* two candidates: do not guess */
            hooks = NULL;
            index = -1;
            break;
        }
        hooks = o;
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(o); j++) {
            if (PyList_GET_ITEM(o, j) != after)
                continue;
            index = index < 0 ? j : -2; /* must be there exactly once */
        }
    }
    if (!hooks || index < 0) {
        Py_XDECREF(refs);
        Py_XDECREF(marker);
        Py_XDECREF(standin);
        Py_DECREF(deque);
        goto fail;
    }
    g_fork_hooks = Py_NewRef(hooks);
    Py_DECREF(refs);
    Py_DECREF(marker); /* the hook list keeps it */
    g_fork_hook_index = index;
    g_thr_standin = standin;
    g_thr_after_fork = Py_NewRef(after);
    g_thr_rlock = Py_NewRef(rlock);
    g_thr_crlock = Py_NewRef(crlock);
    g_thr_alloc_lock = Py_NewRef(alloc);
    g_thr_lock_type = Py_NewRef(lock_type);
    g_thr_main_type = Py_NewRef(main_type);
    g_thr_event_type = Py_NewRef(event_type);
    g_thr_cond_type = Py_NewRef(cond_type);
    g_thr_reset_fn = Py_NewRef(reset);
    g_thr_event_reinit = Py_NewRef(event_reinit);
    g_thr_cond_reinit = Py_NewRef(cond_reinit);
    g_deque_type = deque;
    return 1;
fail:
    PyErr_Clear();
    return -1;
}

/* A new reference to obj.name if it is exactly of the given type (or None
 * when none_ok), else NULL with no exception. */
static PyObject *attr_of_type(PyObject *obj, PyObject *name, PyObject *type, int none_ok)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v) {
        PyErr_Clear();
        return NULL;
    }
    if ((PyObject *)Py_TYPE(v) == type || (none_ok && v == Py_None))
        return v;
    Py_DECREF(v);
    return NULL;
}

/* The main thread, if threading's state is the trivial one described
 * above, as seen from the forking thread (borrowed); else NULL. */
static PyObject *trivial_main_thread(void)
{
    PyObject *td = g_threading_dict;
    PyObject *active = PyDict_GetItemWithError(td, s_active);
    PyObject *limbo = PyDict_GetItemWithError(td, s_limbo);
    if (!active || !PyDict_CheckExact(active) || PyDict_GET_SIZE(active) != 1 || !limbo ||
        !PyDict_CheckExact(limbo) || PyDict_GET_SIZE(limbo) != 0)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *main;
    if (!PyDict_Next(active, &pos, &key, &main) || !PyLong_CheckExact(key) ||
        (PyObject *)Py_TYPE(main) != g_thr_main_type)
        return NULL;
    unsigned long ident = PyLong_AsUnsignedLong(key);
    if (ident != PyThread_get_thread_ident())
        return NULL;
    return main;
}

/* In the child, where threading's hook is due: 1 when threading's state
 * is the trivial one, as the parent left it and the hooks before this one
 * made it. Reads only (it runs in the parent's pages); any doubt says 0. */
static int threading_is_trivial(void)
{
    PyObject *td = g_threading_dict;
    int ok = 0;
    PyObject *started = NULL, *cond = NULL, *lock = NULL, *waiters = NULL, *tstate = NULL,
             *ident = NULL, *dangling = NULL, *data = NULL;
    /* A tracer or profiler would see threading's hook run: let it. */
    PyThreadState *ts = PyThreadState_Get();
    if (ts->c_tracefunc || ts->c_profilefunc)
        return 0;
    if (PyDict_GetItemWithError(td, s_after_fork) != g_thr_after_fork ||
        PyDict_GetItemWithError(td, s_rlock_name) != g_thr_rlock ||
        PyDict_GetItemWithError(td, s_crlock) != g_thr_crlock ||
        PyDict_GetItemWithError(td, s_allocate_lock) != g_thr_alloc_lock)
        goto out;
    if (type_attr(g_thr_main_type, s_reset_internal_locks) != g_thr_reset_fn ||
        type_attr(g_thr_event_type, s_at_fork_reinit) != g_thr_event_reinit ||
        type_attr(g_thr_cond_type, s_at_fork_reinit) != g_thr_cond_reinit)
        goto out;
    PyObject *main = trivial_main_thread();
    if (!main)
        goto out;
    /* The main thread's own locks are what the hook resets. */
    started = attr_of_type(main, s_started, g_thr_event_type, 0);
    cond = started ? attr_of_type(started, s_cond, g_thr_cond_type, 0) : NULL;
    lock = cond ? attr_of_type(cond, s_lock, g_thr_lock_type, 0) : NULL;
    waiters = lock ? attr_of_type(cond, s_waiters, g_deque_type, 0) : NULL;
    tstate = waiters ? attr_of_type(main, s_tstate_lock, g_thr_lock_type, 1) : NULL;
    ident = tstate ? PyObject_GetAttr(main, s_ident) : NULL;
    if (!ident || !PyLong_CheckExact(ident) ||
        PyLong_AsUnsignedLong(ident) != PyThread_get_thread_ident())
        goto out;
    /* Thread objects that are not running (never started, or finished
     * but still referenced) are in _dangling: the hook stops them. */
    dangling = PyDict_GetItemWithError(td, s_dangling);
    data = dangling ? PyObject_GetAttr(dangling, s_data) : NULL;
    if (!data || !PySet_CheckExact(data) || PySet_GET_SIZE(data) > 1)
        goto out;
    if (PySet_GET_SIZE(data) == 1) {
        PyObject *it = PyObject_GetIter(data);
        PyObject *ref = it ? PyIter_Next(it) : NULL;
        Py_XDECREF(it);
        ok = ref && PyWeakref_Check(ref) && PyWeakref_GetObject(ref) == main;
        Py_XDECREF(ref);
    } else {
        ok = 1;
    }
out:
    Py_XDECREF(started);
    Py_XDECREF(cond);
    Py_XDECREF(lock);
    Py_XDECREF(waiters);
    Py_XDECREF(tstate);
    Py_XDECREF(ident);
    Py_XDECREF(data);
    PyErr_Clear();
    return ok;
}

static int call_method0(PyObject *obj, PyObject *name)
{
    PyObject *r = PyObject_CallMethodNoArgs(obj, name);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* Child: what threading._after_fork() does when the state is trivial. The
 * forking thread is the main thread and lives on with the same ident, so
 * _active, _limbo and its _ident are already what the hook makes them. */
static int threading_after_fork_fast(void)
{
    PyObject *td = g_threading_dict;
    PyObject *main = trivial_main_thread();
    if (!main)
        return -1;
    int rc = -1;
    PyObject *started = NULL, *cond = NULL, *lock = NULL, *waiters = NULL, *tstate = NULL;
    PyObject *obj = PyObject_CallNoArgs(g_thr_crlock); /* RLock() */
    int err = !obj || PyDict_SetItem(td, s_active_limbo_lock, obj) < 0;
    Py_XDECREF(obj);
    if (err)
        goto out;
    if (PyDict_GetItemWithError(td, s_main_thread) != main &&
        PyDict_SetItem(td, s_main_thread, main) < 0)
        goto out;
    obj = PyObject_CallNoArgs(g_thr_alloc_lock);
    err = !obj || PyDict_SetItem(td, s_shutdown_locks_lock, obj) < 0;
    Py_XDECREF(obj);
    if (err)
        goto out;
    obj = PySet_New(NULL);
    err = !obj || PyDict_SetItem(td, s_shutdown_locks, obj) < 0;
    Py_XDECREF(obj);
    if (err)
        goto out;
    /* main._reset_internal_locks(True) */
    started = PyObject_GetAttr(main, s_started);
    cond = started ? PyObject_GetAttr(started, s_cond) : NULL;
    lock = cond ? PyObject_GetAttr(cond, s_lock) : NULL;
    waiters = lock ? PyObject_GetAttr(cond, s_waiters) : NULL;
    if (!waiters || call_method0(lock, s_at_fork_reinit) < 0)
        goto out;
    Py_ssize_t n = PyObject_Length(waiters);
    if (n < 0 || (n > 0 && call_method0(waiters, s_clear) < 0))
        goto out;
    tstate = PyObject_GetAttr(main, s_tstate_lock);
    if (!tstate)
        goto out;
    if (tstate != Py_None &&
        (call_method0(tstate, s_at_fork_reinit) < 0 || call_method0(tstate, s_acquire) < 0))
        goto out;
    rc = 0;
out:
    Py_XDECREF(started);
    Py_XDECREF(cond);
    Py_XDECREF(lock);
    Py_XDECREF(waiters);
    Py_XDECREF(tstate);
    return rc;
}

/* Parent, before the first fork: looks for the hook list once. */
void cmp_py_fork_threading_prepare(void)
{
    if (!g_fast_fork)
        g_fast_fork = probe_fast_fork();
}

/* Child, before PyOS_AfterFork_Child(): puts the stand-in in place. */
void cmp_py_fork_threading_arm(void)
{
    if (g_fast_fork <= 0 || PyList_GET_SIZE(g_fork_hooks) <= g_fork_hook_index)
        return;
    PyObject *hook = PyList_GET_ITEM(g_fork_hooks, g_fork_hook_index);
    if (hook != g_thr_after_fork && hook != g_thr_standin)
        return;
    if (hook == g_thr_after_fork) {
        /* The child's own copy of the list: the parent's is untouched. */
        PyList_SET_ITEM(g_fork_hooks, g_fork_hook_index, Py_NewRef(g_thr_standin));
        Py_DECREF(hook);
    }
    g_fresh_child = 1;
}

#else /* other versions: threading's hook always runs as it is */

static int g_fresh_child;

void cmp_py_fork_threading_prepare(void)
{
}

void cmp_py_fork_threading_arm(void)
{
}

#endif

/* threading.main_thread()._set_native_id(): threading's hook (and our
 * stand-in, which does what it does) leaves the main Thread's native_id
 * the parent's; the stdlib's Process bootstrap renews it in every child,
 * and so do we, for Process children, pool workers and managers alike. */
static void renew_native_id(void)
{
    PyObject *name = PyUnicode_InternFromString("threading");
    PyObject *threading = name ? PyImport_GetModule(name) : NULL; /* not imported: none */
    Py_XDECREF(name);
    PyObject *main = threading ? PyObject_CallMethod(threading, "main_thread", NULL) : NULL;
    PyObject *r = NULL;
    if (main && PyObject_HasAttrString(main, "_set_native_id"))
        r = PyObject_CallMethod(main, "_set_native_id", NULL);
    else if (main)
        r = Py_NewRef(Py_None); /* a platform without native ids */
    if (!r && PyErr_Occurred())
        PyErr_WriteUnraisable(main);
    Py_XDECREF(r);
    Py_XDECREF(main);
    Py_XDECREF(threading);
}

/* Child, after PyOS_AfterFork_Child(): the stand-in has had its turn; a
 * later fork from this child runs threading's own hook. */
void cmp_py_fork_threading_disarm(void)
{
    g_fresh_child = 0;
    renew_native_id();
}
