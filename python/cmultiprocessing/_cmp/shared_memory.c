/*
 * multiprocessing.shared_memory.SharedMemory on libcmp's named segments
 * (cmp_shm_open), registered with libcmp's resource tracker (tracker.c).
 *
 * The same /dev/shm names and files as the standard library's, so that a
 * segment made by either is attached by the other. Its buf is a memoryview
 * of a small exporter object (_Mapping) that owns the mapping and counts
 * the buffers handed out, so close() refuses with BufferError, as the
 * stdlib's mmap does, while a view of the memory is alive, and the mapping
 * outlives its SharedMemory for as long as one is.
 */
#include "_cmp.h"

#include <fcntl.h>
#include <string.h>
#include <structmember.h> /* PyMemberDef, T_PYSSIZET before 3.12 */

/* Generated names: the standard library's prefix, so that both kinds look
 * the same in /dev/shm and fit its 14 characters. */
#define NAME_PREFIX "psm_"

/* ------------------------------------------------------------------------
 * _Mapping: a mapped segment exported as a writable buffer
 * ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    cmp_shm_t shm;
    Py_ssize_t exports;
} mapping_object;

static void mapping_dealloc(mapping_object *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    cmp_shm_detach(&self->shm);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int mapping_getbuffer(mapping_object *self, Py_buffer *view, int flags)
{
    if (!self->shm.addr) {
        PyErr_SetString(PyExc_ValueError, "shared memory is closed");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->shm.addr, (Py_ssize_t)self->shm.size, 0,
                          flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void mapping_releasebuffer(mapping_object *self, Py_buffer *Py_UNUSED(view))
{
    self->exports--;
}

/* Unmaps now, unless a buffer of it is still out. 0, or -1 with
 * BufferError set. */
static int mapping_close(mapping_object *self)
{
    if (self->exports > 0) {
        PyErr_SetString(PyExc_BufferError, "cannot close exported pointers exist");
        return -1;
    }
    cmp_shm_detach(&self->shm);
    return 0;
}

static PyType_Slot mapping_slots[] = {
    {Py_tp_doc, "The mapping of a SharedMemory, exported as its buf."},
    {Py_tp_dealloc, mapping_dealloc},
    {Py_bf_getbuffer, mapping_getbuffer},
    {Py_bf_releasebuffer, mapping_releasebuffer},
    {0, NULL},
};

static PyType_Spec mapping_spec = {
    .name = "cmultiprocessing.shared_memory._Mapping",
    .basicsize = sizeof(mapping_object),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = mapping_slots,
};

/* ------------------------------------------------------------------------
 * SharedMemory
 * ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *dict;
    PyObject *name;    /* str as reported (no leading '/'), NULL before init */
    PyObject *mapping; /* mapping_object, NULL once closed */
    PyObject *buf;     /* memoryview of mapping, NULL once closed */
    Py_ssize_t size;
    int track;
} shm_object;

/* OSError for err with the name as shm_open saw it, as the stdlib's
 * _posixshmem reports it ('/name'). */
static void raise_for_name(int err, PyObject *name)
{
    if (err == -ENODATA) {
        PyErr_SetString(PyExc_ValueError, "cannot mmap an empty file");
        return;
    }
    PyObject *path = PyUnicode_FromFormat("/%U", name);
    if (!path)
        return;
    errno = -err;
    PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
    Py_DECREF(path);
}

/* Forgets the mapping (unmapping it once no view of it is left). */
static int shm_close_impl(shm_object *self)
{
    if (self->buf) {
        PyObject *r = PyObject_CallMethod(self->buf, "release", NULL);
        if (!r)
            return -1;
        Py_DECREF(r);
        Py_CLEAR(self->buf);
    }
    if (self->mapping) {
        if (mapping_close((mapping_object *)self->mapping) < 0)
            return -1;
        Py_CLEAR(self->mapping);
    }
    return 0;
}

/* The _make_filename a caller (CPython's tests) put in shared_memory's
 * namespace in place of ours, or NULL: ours is C (cmp_shm_create_named).
 * NULL with an exception on error. */
static PyObject *patched_name_maker(cmp_py_state *st)
{
    if (!st->shm_globals)
        return NULL;
    PyObject *current = PyDict_GetItemString(st->shm_globals, "_make_filename");
    if (!current || current == st->shm_name_maker)
        return NULL;
    return Py_NewRef(current);
}

/* Creates m under the names maker returns ('/' + name, as the stdlib's),
 * drawing again while one is taken. The reported name, or NULL. */
static PyObject *create_with_maker(mapping_object *m, PyObject *maker, size_t size)
{
    for (;;) {
        PyObject *made = PyObject_CallNoArgs(maker);
        if (!made)
            return NULL;
        const char *cname = PyUnicode_Check(made) ? PyUnicode_AsUTF8(made) : NULL;
        if (!cname) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "_make_filename() must return a str");
            Py_DECREF(made);
            return NULL;
        }
        int rc = cmp_shm_open(&m->shm, cname, CMP_SHM_CREATE, size);
        if (rc == -EEXIST) {
            Py_DECREF(made);
            continue;
        }
        while (*cname == '/')
            cname++;
        PyObject *reported = rc == 0 ? PyUnicode_FromString(cname) : NULL;
        if (rc < 0) {
            PyObject *bare = PyUnicode_FromString(cname);
            if (bare) {
                raise_for_name(rc, bare);
                Py_DECREF(bare);
            }
        }
        Py_DECREF(made);
        return reported;
    }
}

/* The flags to attach with: a subclass may set _flags to the stdlib's
 * os.O_CREAT | os.O_RDWR (attach, creating it if missing). */
static int attach_flags(PyObject *op, cmp_py_state *st)
{
    if (Py_TYPE(op) == st->SharedMemory_type)
        return 0;
    PyObject *flags = PyObject_GetAttrString(op, "_flags");
    if (!flags)
        return -1;
    long v = PyLong_AsLong(flags);
    Py_DECREF(flags);
    if (v == -1 && PyErr_Occurred())
        return -1;
    return v & O_CREAT ? CMP_SHM_MAY_CREATE : 0;
}

static int shm_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    shm_object *self = (shm_object *)op;
    static char *kwlist[] = {"name", "create", "size", "track", NULL};
    PyObject *name = Py_None, *size_obj = NULL;
    int create = 0, track = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OpO$p:SharedMemory", kwlist, &name, &create,
                                     &size_obj, &track))
        return -1;
    Py_ssize_t size = 0;
    if (size_obj) {
        size = PyNumber_AsSsize_t(size_obj, PyExc_OverflowError);
        if (size == -1 && PyErr_Occurred())
            return -1;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "'size' must be a positive integer");
        return -1;
    }
    if (create && size == 0) {
        PyErr_SetString(PyExc_ValueError, "'size' must be a positive number different from zero");
        return -1;
    }
    if (name == Py_None && !create) {
        PyErr_SetString(PyExc_ValueError, "'name' can only be None if create=True");
        return -1;
    }
    if (name != Py_None && !PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "SharedMemory name must be str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return -1;
    }
    if (shm_close_impl(self) < 0)
        return -1;
    cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(op));
    mapping_object *m = PyObject_New(mapping_object, st->ShmMapping_type);
    if (!m)
        return -1;
    m->shm.fd = -1;
    m->shm.addr = NULL;
    m->shm.size = 0;
    m->exports = 0;
    PyObject *reported;
    int rc;
    PyObject *maker = name == Py_None ? patched_name_maker(st) : NULL;
    if (maker) {
        reported = create_with_maker(m, maker, (size_t)size);
        Py_DECREF(maker);
    } else if (PyErr_Occurred()) {
        reported = NULL;
    } else if (name == Py_None) {
        char buf[64];
        rc = cmp_shm_create_named(&m->shm, (size_t)size, NAME_PREFIX, buf, sizeof buf);
        reported = rc == 0 ? PyUnicode_FromString(buf) : NULL;
        if (rc < 0)
            cmp_py_raise(rc);
    } else {
        Py_ssize_t len;
        const char *cname = PyUnicode_AsUTF8AndSize(name, &len);
        if (cname && strlen(cname) != (size_t)len) {
            PyErr_SetString(PyExc_ValueError, "embedded null character");
            cname = NULL;
        }
        if (!cname) {
            Py_DECREF(m);
            return -1;
        }
        int flags = create ? CMP_SHM_CREATE : attach_flags(op, st);
        if (flags < 0) {
            Py_DECREF(m);
            return -1;
        }
        rc = cmp_shm_open(&m->shm, cname, flags, (size_t)size);
        reported = rc == 0 ? Py_NewRef(name) : NULL;
        if (rc < 0)
            raise_for_name(rc, name);
    }
    if (!reported) {
        Py_DECREF(m);
        return -1;
    }
    PyObject *view = PyMemoryView_FromObject((PyObject *)m);
    if (!view) {
        Py_DECREF(m);
        Py_DECREF(reported);
        return -1;
    }
    Py_XSETREF(self->name, reported);
    self->mapping = (PyObject *)m;
    self->buf = view;
    self->size = (Py_ssize_t)m->shm.size;
    self->track = track;
    /* Best effort, as the stdlib's: a registry that cannot be written
     * (another user's directory in its place) leaves the segment to
     * unlink(), never the program without its memory. */
    if (track)
        cmp_tracker_register(CMP_TRACK_SHM, PyUnicode_AsUTF8(reported));
    return 0;
}

int cmp_py_shm_memory(PyObject *op, void **addr, size_t *size)
{
    cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(op));
    if (!st || !PyObject_TypeCheck(op, st->SharedMemory_type))
        return 1;
    mapping_object *m = (mapping_object *)((shm_object *)op)->mapping;
    if (!m || !m->shm.addr) {
        /* the stdlib's struct call on a closed one's buf (None) */
        PyErr_SetString(PyExc_TypeError, "the list's shared memory is closed");
        return -1;
    }
    *addr = m->shm.addr;
    *size = m->shm.size;
    return 0;
}

static PyObject *shm_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (shm_close_impl((shm_object *)op) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *shm_unlink(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    shm_object *self = (shm_object *)op;
    if (!self->name)
        Py_RETURN_NONE;
    const char *name = PyUnicode_AsUTF8(self->name);
    if (!name)
        return NULL;
    int rc = cmp_shm_unlink(name);
    if (rc < 0) {
        raise_for_name(rc, self->name);
        return NULL;
    }
    if (self->track)
        cmp_tracker_unregister(CMP_TRACK_SHM, name);
    Py_RETURN_NONE;
}

static PyObject *shm_reduce(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    shm_object *self = (shm_object *)op;
    return Py_BuildValue("(O(OOn))", (PyObject *)Py_TYPE(op), self->name ? self->name : Py_None,
                         Py_False, self->size);
}

static PyObject *shm_repr(PyObject *op)
{
    shm_object *self = (shm_object *)op;
    PyObject *tname = PyObject_GetAttrString((PyObject *)Py_TYPE(op), "__name__");
    if (!tname)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("%U(%R, size=%zd)", tname, self->name ? self->name : Py_None,
                                       self->size);
    Py_DECREF(tname);
    return r;
}

static PyObject *shm_get_buf(PyObject *op, void *Py_UNUSED(closure))
{
    shm_object *self = (shm_object *)op;
    return Py_NewRef(self->buf ? self->buf : Py_None);
}

static PyObject *shm_get_name(PyObject *op, void *Py_UNUSED(closure))
{
    shm_object *self = (shm_object *)op;
    return Py_NewRef(self->name ? self->name : Py_None);
}

/* The name as the stdlib keeps it ('/' + name): programs pass it to
 * resource_tracker.unregister() to stop tracking an attached segment. */
static PyObject *shm_get_private_name(PyObject *op, void *Py_UNUSED(closure))
{
    shm_object *self = (shm_object *)op;
    if (!self->name)
        Py_RETURN_NONE;
    return PyUnicode_FromFormat("/%U", self->name);
}

static PyObject *shm_get_size(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(((shm_object *)op)->size);
}

static void shm_finalize(PyObject *op)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    /* a view still out keeps the mapping (it owns it): nothing to report */
    if (shm_close_impl((shm_object *)op) < 0)
        PyErr_Clear();
    PyErr_Restore(type, value, tb);
}

static int shm_traverse(PyObject *op, visitproc visit, void *arg)
{
    shm_object *self = (shm_object *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->dict);
    Py_VISIT(self->buf);
    Py_VISIT(self->mapping);
    return 0;
}

static int shm_clear(PyObject *op)
{
    shm_object *self = (shm_object *)op;
    Py_CLEAR(self->dict);
    Py_CLEAR(self->buf);
    Py_CLEAR(self->mapping);
    Py_CLEAR(self->name);
    return 0;
}

static void shm_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    if (PyObject_CallFinalizerFromDealloc(op) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(op);
    shm_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyMethodDef shm_methods[] = {
    {"close", shm_close, METH_NOARGS,
     "Closes this process's access (the segment stays for the others)."},
    {"unlink", shm_unlink, METH_NOARGS,
     "Removes the segment's name; call it once, in one process."},
    {"__reduce__", shm_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef shm_getset[] = {
    {"buf", shm_get_buf, NULL, "A memoryview of the segment's memory.", NULL},
    {"name", shm_get_name, NULL, "The name other processes attach it by.", NULL},
    {"size", shm_get_size, NULL, "Size in bytes.", NULL},
    {"_name", shm_get_private_name, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef shm_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(shm_object, dict), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(shm_doc,
             "SharedMemory(name=None, create=False, size=0, *, track=True)\n--\n\n"
             "A named shared memory segment (/dev/shm), as multiprocessing.shared_memory's:\n"
             "the same names and files, so either attaches the other's. track (3.13's\n"
             "keyword, on every version) registers it with cmultiprocessing's resource\n"
             "tracker, which removes it once the whole program is dead, even after a\n"
             "SIGKILL of every process and of the tracker (see resource_tracker), and\n"
             "never while another living process maps it.");

static PyType_Slot shm_slots[] = {
    {Py_tp_doc, (void *)shm_doc}, {Py_tp_new, PyType_GenericNew}, {Py_tp_init, shm_init},
    {Py_tp_dealloc, shm_dealloc}, {Py_tp_finalize, shm_finalize}, {Py_tp_traverse, shm_traverse},
    {Py_tp_clear, shm_clear},     {Py_tp_repr, shm_repr},         {Py_tp_methods, shm_methods},
    {Py_tp_getset, shm_getset},   {Py_tp_members, shm_members},   {0, NULL},
};

static PyType_Spec shm_spec = {
    .name = "cmultiprocessing.shared_memory.SharedMemory",
    .basicsize = sizeof(shm_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = shm_slots,
};

/* ------------------------------------------------------------------------
 * The resource tracker's functions (resource_tracker.py)
 * ------------------------------------------------------------------------ */

/* The tracker's kind for a stdlib rtype: 0 for "noop", -1 with ValueError
 * for one it cannot clean up. */
static int rtype_kind(const char *rtype)
{
    if (strcmp(rtype, "shared_memory") == 0)
        return CMP_TRACK_SHM;
    if (strcmp(rtype, "semaphore") == 0)
        return CMP_TRACK_SEM;
    if (strcmp(rtype, "noop") == 0)
        return 0;
    PyErr_Format(PyExc_ValueError,
                 "Cannot register %s for automatic cleanup: unknown resource type", rtype);
    return -1;
}

static PyObject *tracker_call(PyObject *args, int (*fn)(int, const char *), int missing_ok)
{
    const char *name, *rtype;
    if (!PyArg_ParseTuple(args, "ss", &name, &rtype))
        return NULL;
    int kind = rtype_kind(rtype);
    if (kind <= 0)
        return kind < 0 ? NULL : Py_NewRef(Py_None);
    int rc = fn(kind, name);
    if (rc < 0 && !(missing_ok && rc == -ENOENT))
        return cmp_py_raise(rc);
    Py_RETURN_NONE;
}

static PyObject *tracker_register(PyObject *Py_UNUSED(module), PyObject *args)
{
    return tracker_call(args, cmp_tracker_register, 0);
}

static PyObject *tracker_unregister(PyObject *Py_UNUSED(module), PyObject *args)
{
    return tracker_call(args, cmp_tracker_unregister, 1);
}

static PyObject *tracker_start(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    int rc = cmp_tracker_start();
    if (rc < 0)
        return cmp_py_raise(rc);
    return PyLong_FromLong(rc); /* 1: its watcher had died */
}

static PyObject *tracker_watcher_alive(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    pid_t pid = cmp_tracker_watcher_pid();
    return PyBool_FromLong(cmp_tracker_fd() >= 0 && (pid <= 0 || cmp_pid_alive(pid)));
}

static PyObject *tracker_fd(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(cmp_tracker_fd());
}

static PyObject *tracker_watcher_pid(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong((long)cmp_tracker_watcher_pid());
}

static PyObject *tracker_adopt(PyObject *Py_UNUSED(module), PyObject *arg)
{
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    int rc = cmp_tracker_adopt(fd);
    if (rc < 0)
        return cmp_py_raise(rc);
    Py_RETURN_NONE;
}

static PyObject *tracker_sweep(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = cmp_tracker_sweep();
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return cmp_py_raise(rc);
    return PyLong_FromLong(rc);
}

/* _shm_name_maker(fn): shared_memory's own _make_filename, so that a
 * patched one is told from it. */
static PyObject *shm_name_maker(PyObject *module, PyObject *fn)
{
    if (!PyFunction_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "a function is needed");
        return NULL;
    }
    cmp_py_state *st = cmp_py_state_of_module(module);
    Py_XSETREF(st->shm_name_maker, Py_NewRef(fn));
    Py_XSETREF(st->shm_globals, Py_NewRef(PyFunction_GetGlobals(fn)));
    Py_RETURN_NONE;
}

static PyMethodDef tracker_functions[] = {
    {"_shm_name_maker", shm_name_maker, METH_O, NULL},
    {"_tracker_register", tracker_register, METH_VARARGS, NULL},
    {"_tracker_unregister", tracker_unregister, METH_VARARGS, NULL},
    {"_tracker_start", tracker_start, METH_NOARGS, NULL},
    {"_tracker_fd", tracker_fd, METH_NOARGS, NULL},
    {"_tracker_watcher_alive", tracker_watcher_alive, METH_NOARGS, NULL},
    {"_tracker_watcher_pid", tracker_watcher_pid, METH_NOARGS, NULL},
    {"_tracker_adopt", tracker_adopt, METH_O, NULL},
    {"_tracker_sweep", tracker_sweep, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

int cmp_py_shared_memory_init(PyObject *module, cmp_py_state *st)
{
    st->ShmMapping_type = (PyTypeObject *)cmp_py_type_from_spec(module, &mapping_spec, NULL);
    if (!st->ShmMapping_type)
        return -1;
    st->SharedMemory_type = cmp_py_add_type(module, &shm_spec, NULL);
    if (!st->SharedMemory_type)
        return -1;
    return PyModule_AddFunctions(module, tracker_functions);
}
