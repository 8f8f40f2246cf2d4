/*
 * multiprocessing.sharedctypes: ctypes objects in the shared heap, and the
 * synchronized wrappers around them.
 *
 * RawValue/RawArray are genuine ctypes objects over a SharedBlock, a small
 * object exporting a cmp_shared_t block as a writable buffer. The block
 * lives as long as any ctypes object viewing it (new_shared_ctype() says
 * how, whatever the object stores), and survives fork through the heap's
 * per-process references. A pointer stored in it means something only in
 * the process that stored it (POINTER_NOTE).
 *
 * The wrappers keep the standard library's behaviour, but their per-call
 * paths (Synchronized.value, SynchronizedArray items) read and write the
 * shared memory directly by type code, under the lock taken through
 * cmp_py_lock_acquire_any(): no ctypes call, no Python-level call. Anything
 * unusual (Structures, slices, 'c' and 'u' values) goes through ctypes,
 * still under the lock, exactly as the standard library does.
 */
#include "_cmp.h"

#include <string.h>
#include <structmember.h> /* PyMemberDef, T_PYSSIZET before 3.12 */

/* ------------------------------------------------------------------------
 * SharedBlock: a cmp_shared_t as a writable buffer
 * ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    cmp_shared_t *block;
} block_object;

static PyObject *block_new_sized(cmp_py_state *st, size_t size)
{
    block_object *self = PyObject_New(block_object, st->SharedBlock_type);
    if (!self)
        return NULL;
    int rc = cmp_shared_alloc(size ? size : 1, &self->block);
    if (rc < 0) {
        self->block = NULL;
        Py_DECREF(self);
        return cmp_py_raise(rc);
    }
    return (PyObject *)self;
}

static PyObject *block_tp_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    Py_ssize_t size;
    static char *kwlist[] = {"size", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n:SharedBlock", kwlist, &size))
        return NULL;
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "size must be a positive integer");
        return NULL;
    }
    cmp_py_state *st = cmp_py_state_of_type(tp);
    return block_new_sized(st, (size_t)size);
}

static void block_dealloc(block_object *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->block)
        cmp_shared_release(self->block);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int block_getbuffer(block_object *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, cmp_shared_ptr(self->block),
                             (Py_ssize_t)cmp_shared_size(self->block), 0, flags);
}

static Py_ssize_t block_length(block_object *self)
{
    return (Py_ssize_t)cmp_shared_size(self->block);
}

static PyObject *block_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return cmp_py_shared_reduce(self, NULL, NULL);
}

/* _shared_block_of(ctypes_object) -> (SharedBlock, offset), or None when
 * its memory is not in a block of ours: how a spawned child gets a
 * RawValue/RawArray over the same memory. */
static PyObject *shared_block_of(PyObject *module, PyObject *obj)
{
    cmp_py_state *st = cmp_py_state_of_module(module);
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    cmp_shared_t *ref;
    size_t off;
    int rc = cmp_shared_find(view.buf, &ref, &off);
    PyBuffer_Release(&view);
    if (rc < 0)
        Py_RETURN_NONE;
    block_object *b = PyObject_New(block_object, st->SharedBlock_type);
    if (!b) {
        cmp_shared_release(ref);
        return NULL;
    }
    b->block = ref;
    return Py_BuildValue("(Nn)", (PyObject *)b, (Py_ssize_t)off);
}

static PyMethodDef block_methods[] = {
    {"__reduce__", block_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot block_slots[] = {
    {Py_tp_doc, "SharedBlock(size)\n--\n\nZeroed block of the shared heap, exported as a "
                "writable buffer. Forked children share it."},
    {Py_tp_new, block_tp_new},
    {Py_tp_dealloc, block_dealloc},
    {Py_tp_methods, block_methods},
    {Py_sq_length, block_length},
    {Py_bf_getbuffer, block_getbuffer},
    {0, NULL},
};

static PyType_Spec block_spec = {
    .name = "cmultiprocessing.sharedctypes.SharedBlock",
    .basicsize = sizeof(block_object),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = block_slots,
};

/* ------------------------------------------------------------------------
 * ctypes, imported on first use (not at module import: it costs time)
 * ------------------------------------------------------------------------ */

static const char *const typecode_names[][2] = {
    {"c", "c_char"},  {"u", "c_wchar"},  {"b", "c_byte"},     {"B", "c_ubyte"},
    {"h", "c_short"}, {"H", "c_ushort"}, {"i", "c_int"},      {"I", "c_uint"},
    {"l", "c_long"},  {"L", "c_ulong"},  {"q", "c_longlong"}, {"Q", "c_ulonglong"},
    {"f", "c_float"}, {"d", "c_double"},
};

/* Simple types whose value the fast paths read and write by themselves. */
static const char *const fast_type_names[] = {
    "c_byte",  "c_ubyte",    "c_short",     "c_ushort", "c_int",    "c_uint", "c_long",
    "c_ulong", "c_longlong", "c_ulonglong", "c_float",  "c_double", "c_bool",
};

static int ensure_ctypes(cmp_py_state *st)
{
    if (st->ctypes)
        return 0;
    PyObject *ctypes = PyImport_ImportModule("ctypes");
    if (!ctypes)
        return -1;
    PyObject *map = PyDict_New(), *fast = PyDict_New();
    if (!map || !fast)
        goto fail;
    for (size_t i = 0; i < sizeof typecode_names / sizeof typecode_names[0]; i++) {
        PyObject *t = PyObject_GetAttrString(ctypes, typecode_names[i][1]);
        if (!t)
            goto fail;
        int rc = PyDict_SetItemString(map, typecode_names[i][0], t);
        Py_DECREF(t);
        if (rc < 0)
            goto fail;
    }
    for (size_t i = 0; i < sizeof fast_type_names / sizeof fast_type_names[0]; i++) {
        PyObject *t = PyObject_GetAttrString(ctypes, fast_type_names[i]);
        if (!t)
            goto fail;
        PyObject *code = PyObject_GetAttrString(t, "_type_");
        int rc = code ? PyDict_SetItem(fast, code, t) : -1;
        Py_XDECREF(code);
        Py_DECREF(t);
        if (rc < 0)
            goto fail;
    }
    if (st->ctypes) { /* another thread got here while we imported */
        Py_DECREF(map);
        Py_DECREF(fast);
        Py_DECREF(ctypes);
        return 0;
    }
    st->typecode_to_type = map;
    st->fast_types = fast;
    st->ctypes = ctypes;
    return 0;
fail:
    Py_XDECREF(map);
    Py_XDECREF(fast);
    Py_DECREF(ctypes);
    return -1;
}

static PyObject *ctypes_attr(cmp_py_state *st, const char *name)
{
    return PyObject_GetAttrString(st->ctypes, name);
}

/* The type code the fast paths use for values of ctype, or 0. Only the
 * canonical native types qualify: a subclass or a byte-swapped type may
 * behave differently, so those go through ctypes. */
static int fast_code(cmp_py_state *st, PyObject *ctype)
{
    PyObject *code = PyObject_GetAttrString(ctype, "_type_");
    if (!code) {
        PyErr_Clear();
        return 0;
    }
    int result = 0;
    if (PyUnicode_Check(code) && PyUnicode_GET_LENGTH(code) == 1) {
        PyObject *canon = PyDict_GetItemWithError(st->fast_types, code);
        if (canon == ctype)
            result = (int)PyUnicode_READ_CHAR(code, 0);
    }
    PyErr_Clear();
    Py_DECREF(code);
    return result;
}

static PyObject *resolve_type(cmp_py_state *st, PyObject *typecode_or_type)
{
    PyObject *t = PyDict_GetItemWithError(st->typecode_to_type, typecode_or_type);
    if (t)
        return Py_NewRef(t);
    if (PyErr_Occurred())
        return NULL;
    return Py_NewRef(typecode_or_type);
}

/* A zeroed instance of ctype in a fresh shared block (not initialized).
 *
 * The block must live exactly as long as any ctypes object viewing it.
 * from_buffer() keeps its memoryview in the object's _objects, but only
 * while that is a dict: for a simple type it is the memoryview itself, and
 * storing a c_char_p, c_wchar_p or py_object value *replaces* it with the
 * stored object, freeing the block under the live object. So the object
 * handed out is instead the contents of a pointer to that first view: its
 * _b_base_ is the pointer, which every ctypes object derived from it
 * (fields, elements, contents) reaches through its own base chain, whose
 * _objects is always a dict (a pointer has one slot), and which holds the
 * view (so the memoryview and the block) under keys no store can replace:
 * ctypes files what the handed-out object stores under keys of its own
 * ("0:0"...). All of it is public ctypes API; the bytes the fast paths
 * touch are the same, so they cost nothing more. */
static PyObject *new_shared_ctype(cmp_py_state *st, PyObject *ctype)
{
    PyObject *sizeof_fn = ctypes_attr(st, "sizeof");
    if (!sizeof_fn)
        return NULL;
    PyObject *size_obj = PyObject_CallOneArg(sizeof_fn, ctype);
    Py_DECREF(sizeof_fn);
    if (!size_obj)
        return NULL;
    Py_ssize_t size = PyLong_AsSsize_t(size_obj);
    Py_DECREF(size_obj);
    if (size < 0)
        return NULL;
    PyObject *block = block_new_sized(st, (size_t)size);
    if (!block)
        return NULL;
    PyObject *view = PyObject_CallMethod(ctype, "from_buffer", "O", block);
    Py_DECREF(block);
    if (!view)
        return NULL;
    PyObject *pointer_fn = ctypes_attr(st, "pointer");
    PyObject *root = pointer_fn ? PyObject_CallOneArg(pointer_fn, view) : NULL;
    Py_XDECREF(pointer_fn);
    Py_DECREF(view);
    if (!root)
        return NULL;
    PyObject *obj = PyObject_GetAttrString(root, "contents");
    Py_DECREF(root);
    return obj;
}

static int call_init(PyObject *obj, PyObject *args)
{
    PyObject *init = PyObject_GetAttrString(obj, "__init__");
    if (!init)
        return -1;
    PyObject *r = PyObject_Call(init, args, NULL);
    Py_DECREF(init);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *raw_value(cmp_py_state *st, PyObject *typecode_or_type, PyObject *args)
{
    if (ensure_ctypes(st) < 0)
        return NULL;
    PyObject *ctype = resolve_type(st, typecode_or_type);
    if (!ctype)
        return NULL;
    PyObject *obj = new_shared_ctype(st, ctype);
    Py_DECREF(ctype);
    if (obj && call_init(obj, args) < 0)
        Py_CLEAR(obj);
    return obj;
}

static PyObject *raw_array(cmp_py_state *st, PyObject *typecode_or_type, PyObject *size_or_init)
{
    if (ensure_ctypes(st) < 0)
        return NULL;
    PyObject *ctype = resolve_type(st, typecode_or_type);
    if (!ctype)
        return NULL;
    PyObject *init = NULL, *n = NULL, *obj = NULL;
    if (PyLong_Check(size_or_init)) {
        n = Py_NewRef(size_or_init);
    } else {
        Py_ssize_t len = PyObject_Length(size_or_init);
        if (len < 0)
            goto done;
        n = PyLong_FromSsize_t(len);
        init = n ? PySequence_Tuple(size_or_init) : NULL;
        if (!init)
            goto done;
    }
    PyObject *array_type = PyNumber_Multiply(ctype, n);
    if (!array_type)
        goto done;
    obj = new_shared_ctype(st, array_type);
    Py_DECREF(array_type);
    if (obj && init && call_init(obj, init) < 0)
        Py_CLEAR(obj);
done:
    Py_DECREF(ctype);
    Py_XDECREF(n);
    Py_XDECREF(init);
    return obj;
}

/* ------------------------------------------------------------------------
 * Synchronized wrappers
 * ------------------------------------------------------------------------ */

enum { LOCK_OTHER, LOCK_LOCK, LOCK_RLOCK }; /* which lock a wrapper holds */

/* One value of any fast type code, as stored in shared memory. */
typedef union {
    signed char b;
    unsigned char B;
    short h;
    unsigned short H;
    int i;
    unsigned int I;
    long l;
    unsigned long L;
    long long q;
    unsigned long long Q;
    float f;
    double d;
    _Bool t;
} scalar;

typedef struct {
    PyObject_HEAD
    PyObject *obj;
    PyObject *lock;
    PyObject *acquire; /* lock.acquire and lock.release, as the stdlib exposes */
    PyObject *release;
    char *addr;        /* obj's memory, for the fast paths */
    Py_ssize_t length; /* arrays */
    int code;          /* fast type code of the value or items, 0 = via ctypes */
    int lock_kind;     /* LOCK_* */
    /* Synchronized.value: the object last returned or stored and its bytes
     * in shared memory. While the memory still holds those bytes, reading
     * .value returns it again instead of boxing a new int or float: in
     * `v.value += 1` the read then allocates nothing. */
    PyObject *cached;
    scalar cached_raw;
    PyObject *dict;
    PyObject *weakreflist;
} sync_object;

/* The default lock is this module's RLock, and the usual pattern
 * (`with v.get_lock(): v.value += 1`) re-enters it: take that case inline,
 * exactly as RLock.__enter__/__exit__ do, and leave everything else
 * (blocking, errors, other locks) to cmp_py_lock_*_any. */
static inline int sync_acquire(sync_object *self)
{
    if (self->lock_kind == LOCK_RLOCK &&
        cmp_rlock_tryacquire(((cmp_py_rlock *)self->lock)->rlock) == 0)
        return 0;
    return cmp_py_lock_acquire_any(self->lock);
}

static inline int sync_release(sync_object *self)
{
    if (self->lock_kind == LOCK_RLOCK &&
        cmp_rlock_release(((cmp_py_rlock *)self->lock)->rlock) == 0)
        return 0;
    return cmp_py_lock_release_any(self->lock);
}

/* Releases the lock and passes result through (NULL stays NULL, with the
 * first exception kept). */
static PyObject *sync_release_with(sync_object *self, PyObject *result)
{
    if (!result) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (sync_release(self) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    if (sync_release(self) < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static int sync_release_status(sync_object *self, int status)
{
    PyObject *r = sync_release_with(self, status < 0 ? NULL : Py_None);
    return r ? 0 : -1;
}

/* -- typed access to shared memory -------------------------------------- */

static size_t code_size(int code)
{
    switch (code) {
    case 'b':
    case 'B':
        return 1;
    case 'h':
    case 'H':
        return sizeof(short);
    case 'i':
    case 'I':
        return sizeof(int);
    case 'l':
    case 'L':
        return sizeof(long);
    case 'q':
    case 'Q':
        return sizeof(long long);
    case 'f':
        return sizeof(float);
    case 'd':
        return sizeof(double);
    case '?':
        return sizeof(_Bool);
    }
    return 0;
}

/* memcpy(dst, src, code_size(code)) for the hot paths: with a size known
 * at compile time each copy is a single move, where the variable-size
 * memcpy became `rep movsb`, whose start-up cost was ~7% of
 * `with v.get_lock(): v.value += 1`. */
static inline void scalar_copy(int code, void *dst, const void *src)
{
    switch (code_size(code)) {
    case 1:
        memcpy(dst, src, 1);
        break;
    case 2:
        memcpy(dst, src, 2);
        break;
    case 4:
        memcpy(dst, src, 4);
        break;
    case 8:
        memcpy(dst, src, 8);
        break;
    }
}

/* Whether a and b hold the same bytes for this code (memcmp() with a
 * variable size would be a libc call). */
static inline int scalar_same(int code, const scalar *a, const scalar *b)
{
    switch (code_size(code)) {
    case 1:
        return a->B == b->B;
    case 2:
        return a->H == b->H;
    case 4:
        return a->I == b->I;
    case 8:
        return a->Q == b->Q;
    }
    return 0;
}

/* Converts v as ctypes would for this code (integers wrap, floats accept
 * anything with __float__). Python code may run: call without the lock.
 * Returns 1 when reading the result back would give an object equal to v
 * and of its exact type (v may then stand for it, see sync_object.cached),
 * 0 otherwise, -1 with an exception. */
static int scalar_pack(int code, PyObject *v, scalar *out)
{
    if (code == 'f' || code == 'd') {
        double x = PyFloat_AsDouble(v);
        if (x == -1.0 && PyErr_Occurred())
            return -1;
        if (code == 'f')
            out->f = (float)x;
        else
            out->d = x;
        return code == 'd' && PyFloat_CheckExact(v);
    }
    if (code == '?') {
        int t = PyObject_IsTrue(v);
        if (t < 0)
            return -1;
        out->t = (_Bool)t;
        return 0; /* True and False are singletons: nothing to save */
    }
    unsigned long long x;
    int overflow = 1;
    long long exact = 0;
    if (PyLong_CheckExact(v))
        exact = PyLong_AsLongLongAndOverflow(v, &overflow); /* no error for an int */
    if (!overflow) {
        x = (unsigned long long)exact; /* what the mask gives, cheaper */
    } else {
        x = PyLong_AsUnsignedLongLongMask(v);
        if (x == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
    }
    int same; /* v fits the type: no wrap-around */
    switch (code) {
    case 'b':
        out->b = (signed char)x;
        same = out->b == exact;
        break;
    case 'B':
        out->B = (unsigned char)x;
        same = out->B == exact;
        break;
    case 'h':
        out->h = (short)x;
        same = out->h == exact;
        break;
    case 'H':
        out->H = (unsigned short)x;
        same = out->H == exact;
        break;
    case 'i':
        out->i = (int)x;
        same = out->i == exact;
        break;
    case 'I':
        out->I = (unsigned int)x;
        same = out->I == exact;
        break;
    case 'l':
        out->l = (long)x;
        same = out->l == exact;
        break;
    case 'L':
        out->L = (unsigned long)x;
        same = exact >= 0 && out->L == (unsigned long long)exact;
        break;
    case 'q':
        out->q = (long long)x;
        same = 1;
        break;
    default:
        out->Q = x;
        same = exact >= 0;
        break;
    }
    return !overflow && same;
}

static PyObject *scalar_box(int code, const scalar *s)
{
    switch (code) {
    case 'b':
        return PyLong_FromLong(s->b);
    case 'B':
        return PyLong_FromLong(s->B);
    case 'h':
        return PyLong_FromLong(s->h);
    case 'H':
        return PyLong_FromLong(s->H);
    case 'i':
        return PyLong_FromLong(s->i);
    case 'I':
        return PyLong_FromUnsignedLong(s->I);
    case 'l':
        return PyLong_FromLong(s->l);
    case 'L':
        return PyLong_FromUnsignedLong(s->L);
    case 'q':
        return PyLong_FromLongLong(s->q);
    case 'Q':
        return PyLong_FromUnsignedLongLong(s->Q);
    case 'f':
        return PyFloat_FromDouble(s->f);
    case 'd':
        return PyFloat_FromDouble(s->d);
    default:
        return PyBool_FromLong(s->t);
    }
}

/* 1 when the calling thread already holds the wrapper's RLock: then a
 * nested acquire/release pair would change nothing but the count, and the
 * fast paths skip it. */
static inline int sync_held(sync_object *self)
{
    return self->lock_kind == LOCK_RLOCK && cmp_rlock_is_mine(((cmp_py_rlock *)self->lock)->rlock);
}

/* Reads the fast value at addr under the lock. */
static PyObject *sync_load(sync_object *self, const char *addr)
{
    scalar s;
    int held = sync_held(self);
    if (!held && sync_acquire(self) < 0)
        return NULL;
    scalar_copy(self->code, &s, addr);
    if (!held && sync_release(self) < 0)
        return NULL;
    return scalar_box(self->code, &s);
}

static int sync_store(sync_object *self, char *addr, PyObject *v)
{
    scalar s;
    if (scalar_pack(self->code, v, &s) < 0)
        return -1;
    int held = sync_held(self);
    if (!held && sync_acquire(self) < 0)
        return -1;
    scalar_copy(self->code, addr, &s);
    return held ? 0 : sync_release(self);
}

/* -- attribute access through ctypes, under the lock -------------------- */

static PyObject *sync_getattr_locked(sync_object *self, PyObject *name)
{
    if (sync_acquire(self) < 0)
        return NULL;
    return sync_release_with(self, PyObject_GetAttr(self->obj, name));
}

static int sync_setattr_locked(sync_object *self, PyObject *name, PyObject *value)
{
    if (!value) {
        PyErr_Format(PyExc_AttributeError, "can't delete attribute %R", name);
        return -1;
    }
    if (sync_acquire(self) < 0)
        return -1;
    return sync_release_status(self, PyObject_SetAttr(self->obj, name, value));
}

static PyObject *getattr_named(sync_object *self, const char *name)
{
    PyObject *n = PyUnicode_InternFromString(name);
    if (!n)
        return NULL;
    PyObject *r = sync_getattr_locked(self, n);
    Py_DECREF(n);
    return r;
}

static int setattr_named(sync_object *self, const char *name, PyObject *value)
{
    PyObject *n = PyUnicode_InternFromString(name);
    if (!n)
        return -1;
    int rc = sync_setattr_locked(self, n, value);
    Py_DECREF(n);
    return rc;
}

/* -- SynchronizedBase ---------------------------------------------------- */

static PyObject *new_rlock(cmp_py_state *st, PyObject *ctx)
{
    if (ctx && ctx != Py_None)
        return PyObject_CallMethod(ctx, "RLock", NULL);
    if (!st->RLock_type) {
        PyErr_SetString(PyExc_RuntimeError, "cmultiprocessing was built without RLock");
        return NULL;
    }
    return PyObject_CallNoArgs((PyObject *)st->RLock_type);
}

static int sync_init(sync_object *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"obj", "lock", "ctx", NULL};
    PyObject *obj, *lock = Py_None, *ctx = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO:SynchronizedBase", kwlist, &obj, &lock,
                                     &ctx))
        return -1;
    if (self->obj) {
        /* The fast paths cache the object's address: keep it for life. */
        PyErr_SetString(PyExc_TypeError, "synchronized wrapper is already initialized");
        return -1;
    }
    cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(self));
    int truthy = PyObject_IsTrue(lock);
    if (truthy < 0)
        return -1;
    if (truthy)
        Py_INCREF(lock);
    else if (!(lock = new_rlock(st, ctx)))
        return -1;
    PyObject *acquire = PyObject_GetAttrString(lock, "acquire");
    PyObject *release = acquire ? PyObject_GetAttrString(lock, "release") : NULL;
    if (!release) {
        Py_XDECREF(acquire);
        Py_DECREF(lock);
        return -1;
    }
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    /* CPython 3.11 specializes a method call such as `v.get_lock()` on an
     * object with a __dict__ slot (LOAD_METHOD_WITH_DICT) only once its
     * dict exists; 3.12 only while it does not. An empty dict here saves
     * ~70 instructions per get_lock() call on 3.11. */
    if (!self->dict && !(self->dict = PyDict_New())) {
        Py_DECREF(acquire);
        Py_DECREF(release);
        Py_DECREF(lock);
        return -1;
    }
#endif
    Py_XSETREF(self->obj, Py_NewRef(obj));
    Py_XSETREF(self->lock, lock);
    Py_XSETREF(self->acquire, acquire);
    Py_XSETREF(self->release, release);
    self->lock_kind = Py_TYPE(lock) == st->RLock_type  ? LOCK_RLOCK
                      : Py_TYPE(lock) == st->Lock_type ? LOCK_LOCK
                                                       : LOCK_OTHER;

    /* Fast paths: only for the canonical simple ctypes types (and arrays
     * of them) whose memory we can see through the buffer protocol. */
    self->code = 0;
    self->addr = NULL;
    self->length = 0;
    int is_array = PyObject_TypeCheck(self, st->SynchronizedArray_type);
    if (is_array) {
        self->length = PyObject_Length(obj);
        if (self->length < 0)
            return -1;
    }
    if (st->ctypes && PyObject_CheckBuffer(obj)) {
        PyObject *ctype =
            is_array ? PyObject_GetAttrString(obj, "_type_") : Py_NewRef((PyObject *)Py_TYPE(obj));
        if (!ctype) {
            PyErr_Clear();
            return 0;
        }
        int code = fast_code(st, ctype);
        Py_DECREF(ctype);
        Py_buffer view;
        if (code && PyObject_GetBuffer(obj, &view, PyBUF_WRITABLE) == 0) {
            size_t need = code_size(code) * (size_t)(is_array ? self->length : 1);
            if ((size_t)view.len >= need) {
                self->addr = view.buf; /* obj owns or references the memory */
                self->code = code;
            }
            PyBuffer_Release(&view);
        }
        PyErr_Clear();
    }
    return 0;
}

static int sync_traverse(sync_object *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->obj);
    Py_VISIT(self->lock);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    Py_VISIT(self->dict);
    return 0;
}

static int sync_clear(sync_object *self)
{
    self->code = 0;
    self->addr = NULL;
    Py_CLEAR(self->obj);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    Py_CLEAR(self->dict);
    Py_CLEAR(self->cached);
    return 0;
}

static void sync_dealloc(sync_object *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)self);
    sync_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int sync_ready(sync_object *self)
{
    if (!self->lock) {
        PyErr_SetString(PyExc_ValueError, "synchronized wrapper is not initialized");
        return -1;
    }
    return 0;
}

static PyObject *sync_get_obj(sync_object *self, PyObject *Py_UNUSED(ignored))
{
    if (sync_ready(self) < 0)
        return NULL;
    return Py_NewRef(self->obj);
}

static PyObject *sync_get_lock(sync_object *self, PyObject *Py_UNUSED(ignored))
{
    if (sync_ready(self) < 0)
        return NULL;
    return Py_NewRef(self->lock);
}

static PyObject *sync_enter(sync_object *self, PyObject *Py_UNUSED(ignored))
{
    if (sync_ready(self) < 0)
        return NULL;
    if (self->lock_kind != LOCK_OTHER) {
        if (sync_acquire(self) < 0)
            return NULL;
        Py_RETURN_TRUE;
    }
    return PyObject_CallMethod(self->lock, "__enter__", NULL);
}

static PyObject *sync_exit(sync_object *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (sync_ready(self) < 0)
        return NULL;
    if (self->lock_kind != LOCK_OTHER) {
        if (sync_release(self) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *method = PyObject_GetAttrString(self->lock, "__exit__");
    if (!method)
        return NULL;
    PyObject *r = PyObject_Vectorcall(method, args, (size_t)nargs, NULL);
    Py_DECREF(method);
    return r;
}

static PyObject *sync_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    sync_object *s = (sync_object *)self;
    if (!cmp_py_spawning() || !s->obj)
        return cmp_py_refuse_pickle(self, NULL);
    /* the ctypes object and the lock travel as theirs (spawning), and the
     * child wraps them again as synchronized() does: the per-ctype classes
     * (Synchronized_Foo for a Structure) cannot be found by name */
    PyObject *mod = PyImport_ImportModule("cmultiprocessing.sharedctypes");
    PyObject *fn = mod ? PyObject_GetAttrString(mod, "synchronized") : NULL;
    Py_XDECREF(mod);
    if (!fn)
        return NULL;
    return Py_BuildValue("(N(OO))", fn, s->obj, s->lock);
}

static PyObject *sync_repr(sync_object *self)
{
    PyObject *name = PyObject_GetAttrString((PyObject *)Py_TYPE(self), "__name__");
    if (!name)
        return NULL;
    PyObject *r =
        PyUnicode_FromFormat("<%U wrapper for %S>", name, self->obj ? self->obj : Py_None);
    Py_DECREF(name);
    return r;
}

static PyObject *sync_get_acquire(sync_object *self, void *Py_UNUSED(closure))
{
    if (sync_ready(self) < 0)
        return NULL;
    return Py_NewRef(self->acquire);
}

static PyObject *sync_get_release(sync_object *self, void *Py_UNUSED(closure))
{
    if (sync_ready(self) < 0)
        return NULL;
    return Py_NewRef(self->release);
}

static PyObject *sync_get_private_obj(sync_object *self, void *Py_UNUSED(closure))
{
    return sync_get_obj(self, NULL);
}

static PyObject *sync_get_private_lock(sync_object *self, void *Py_UNUSED(closure))
{
    return sync_get_lock(self, NULL);
}

static PyMethodDef sync_methods[] = {
    {"get_obj", (PyCFunction)sync_get_obj, METH_NOARGS, "The wrapped ctypes object."},
    {"get_lock", (PyCFunction)sync_get_lock, METH_NOARGS, "The lock that guards it."},
    {"__reduce__", sync_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* Installed by cmp_py_add_fast_methods(): `with` binds them on every use. */
static PyMethodDef sync_with_methods[] = {
    {"__enter__", (PyCFunction)sync_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nAcquire the lock; return its __enter__() result."},
    {"__exit__", (PyCFunction)(void (*)(void))sync_exit, METH_FASTCALL,
     "__exit__($self, /, *args)\n--\n\nRelease the lock."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sync_getset[] = {
    {"acquire", (getter)sync_get_acquire, NULL, NULL, NULL},
    {"release", (getter)sync_get_release, NULL, NULL, NULL},
    {"_obj", (getter)sync_get_private_obj, NULL, NULL, NULL},
    {"_lock", (getter)sync_get_private_lock, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef sync_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(sync_object, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(sync_object, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot base_slots[] = {
    {Py_tp_doc, "SynchronizedBase(obj, lock=None, ctx=None)\n--\n\n"
                "A ctypes object and the lock that guards it."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, sync_init},
    {Py_tp_dealloc, sync_dealloc},
    {Py_tp_traverse, sync_traverse},
    {Py_tp_clear, sync_clear},
    {Py_tp_repr, sync_repr},
    {Py_tp_methods, sync_methods},
    {Py_tp_getset, sync_getset},
    {Py_tp_members, sync_members},
    {0, NULL},
};

static PyType_Spec base_spec = {
    .name = "cmultiprocessing.sharedctypes.SynchronizedBase",
    .basicsize = sizeof(sync_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = base_slots,
};

/* -- Synchronized (simple values) ---------------------------------------- */

static PyObject *value_get(sync_object *self, void *Py_UNUSED(closure))
{
    if (!self->code) {
        if (sync_ready(self) < 0)
            return NULL;
        return getattr_named(self, "value");
    }
    scalar s;
    int held = sync_held(self);
    if (!held && sync_acquire(self) < 0)
        return NULL;
    scalar_copy(self->code, &s, self->addr);
    if (!held && sync_release(self) < 0)
        return NULL;
    if (self->cached && scalar_same(self->code, &s, &self->cached_raw))
        return Py_NewRef(self->cached);
    PyObject *r = scalar_box(self->code, &s);
    if (r && self->code != '?') {
        /* boxing is a function of the bytes: r stands for them */
        Py_XSETREF(self->cached, Py_NewRef(r));
        scalar_copy(self->code, &self->cached_raw, &s);
    }
    return r;
}

static int value_set(sync_object *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (!value || !self->code) {
        if (sync_ready(self) < 0)
            return -1;
        return setattr_named(self, "value", value);
    }
    scalar s;
    int same = scalar_pack(self->code, value, &s);
    if (same < 0)
        return -1;
    int held = sync_held(self);
    if (!held && sync_acquire(self) < 0)
        return -1;
    scalar_copy(self->code, self->addr, &s);
    if (!held && sync_release(self) < 0)
        return -1;
    if (same) {
        Py_XSETREF(self->cached, Py_NewRef(value));
        scalar_copy(self->code, &self->cached_raw, &s);
    }
    return 0;
}

static PyGetSetDef value_getset[] = {
    {"value", (getter)value_get, (setter)value_set, "The value, read and written under the lock.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* `v.value = x` without the generic attribute machinery (type lookup,
 * descriptor dispatch: a third of the store's cost), which CPython cannot
 * specialize for a C getset. Only for Synchronized itself, recognized by
 * its getset table, which Python subclasses (that may redefine `value`) and
 * objects whose __class__ was changed do not share. */
static int value_setattro(PyObject *self, PyObject *name, PyObject *value)
{
    if (Py_TYPE(self)->tp_getset == value_getset && value && PyUnicode_CheckExact(name) &&
        PyUnicode_GET_LENGTH(name) == 5 && PyUnicode_KIND(name) == PyUnicode_1BYTE_KIND &&
        memcmp(PyUnicode_1BYTE_DATA(name), "value", 5) == 0)
        return value_set((sync_object *)self, value, NULL);
    return PyObject_GenericSetAttr(self, name, value);
}

/* get_lock() and get_obj() again, on the concrete type: CPython 3.11's
 * specialized call of a C method (PRECALL_NO_KW_METHOD_DESCRIPTOR_NOARGS)
 * requires the object's type to be exactly the method's defining type,
 * and falls back to the generic call for an inherited one. */
static PyMethodDef concrete_methods[] = {
    {"get_obj", (PyCFunction)sync_get_obj, METH_NOARGS, "The wrapped ctypes object."},
    {"get_lock", (PyCFunction)sync_get_lock, METH_NOARGS, "The lock that guards it."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot value_slots[] = {
    {Py_tp_getset, value_getset},
    {Py_tp_setattro, value_setattro},
    {Py_tp_methods, concrete_methods},
    {0, NULL},
};

static PyType_Spec value_spec = {
    .name = "cmultiprocessing.sharedctypes.Synchronized",
    .basicsize = sizeof(sync_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE /* GC inherited */,
    .slots = value_slots,
};

/* -- SynchronizedArray ----------------------------------------------------- */

static Py_ssize_t array_length(sync_object *self)
{
    if (sync_ready(self) < 0)
        return -1;
    return self->length;
}

/* Index of item for the fast path, or -1 (not an int: use ctypes) or -2
 * (error set). */
static Py_ssize_t fast_index(sync_object *self, PyObject *item)
{
    if (!self->code || !PyLong_CheckExact(item))
        return -1;
    Py_ssize_t i = PyNumber_AsSsize_t(item, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred())
        return -2;
    if (i < 0)
        i += self->length;
    if (i < 0 || i >= self->length) {
        PyErr_SetString(PyExc_IndexError, "invalid index");
        return -2;
    }
    return i;
}

static PyObject *array_subscript(sync_object *self, PyObject *item)
{
    Py_ssize_t i = fast_index(self, item);
    if (i >= 0)
        return sync_load(self, self->addr + (size_t)i * code_size(self->code));
    if (i == -2 || sync_ready(self) < 0)
        return NULL;
    if (sync_acquire(self) < 0)
        return NULL;
    return sync_release_with(self, PyObject_GetItem(self->obj, item));
}

static int array_ass_subscript(sync_object *self, PyObject *item, PyObject *value)
{
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "__delitem__");
        return -1;
    }
    Py_ssize_t i = fast_index(self, item);
    if (i >= 0)
        return sync_store(self, self->addr + (size_t)i * code_size(self->code), value);
    if (i == -2 || sync_ready(self) < 0)
        return -1;
    if (sync_acquire(self) < 0)
        return -1;
    return sync_release_status(self, PyObject_SetItem(self->obj, item, value));
}

/* For iteration (the sequence protocol) and `in`: i is non-negative. */
static PyObject *array_item(sync_object *self, Py_ssize_t i)
{
    PyObject *index = PyLong_FromSsize_t(i);
    if (!index)
        return NULL;
    PyObject *r = array_subscript(self, index);
    Py_DECREF(index);
    return r;
}

static PyType_Slot array_slots[] = {
    {Py_mp_length, array_length},
    {Py_mp_subscript, array_subscript},
    {Py_mp_ass_subscript, array_ass_subscript},
    {Py_sq_length, array_length},
    {Py_sq_item, array_item},
    {Py_tp_methods, concrete_methods},
    {0, NULL},
};

static PyType_Spec array_spec = {
    .name = "cmultiprocessing.sharedctypes.SynchronizedArray",
    .basicsize = sizeof(sync_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE /* GC inherited */,
    .slots = array_slots,
};

/* -- SynchronizedString ('c' arrays) ------------------------------------- */

static PyObject *string_get_value(sync_object *self, void *Py_UNUSED(closure))
{
    if (sync_ready(self) < 0)
        return NULL;
    return getattr_named(self, "value");
}

static int string_set_value(sync_object *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (sync_ready(self) < 0)
        return -1;
    return setattr_named(self, "value", v);
}

static PyObject *string_get_raw(sync_object *self, void *Py_UNUSED(closure))
{
    if (sync_ready(self) < 0)
        return NULL;
    return getattr_named(self, "raw");
}

static int string_set_raw(sync_object *self, PyObject *v, void *Py_UNUSED(closure))
{
    if (sync_ready(self) < 0)
        return -1;
    return setattr_named(self, "raw", v);
}

static PyGetSetDef string_getset[] = {
    {"value", (getter)string_get_value, (setter)string_set_value, NULL, NULL},
    {"raw", (getter)string_get_raw, (setter)string_set_raw, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot string_slots[] = {
    {Py_tp_getset, string_getset},
    {Py_tp_methods, concrete_methods},
    {0, NULL},
};

static PyType_Spec string_spec = {
    .name = "cmultiprocessing.sharedctypes.SynchronizedString",
    .basicsize = sizeof(sync_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE /* GC inherited */,
    .slots = string_slots,
};

/* -- per-field properties of synchronized Structures --------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *name;
} field_object;

static PyObject *field_tp_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    PyObject *name;
    if (kwds && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "SyncField() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "U:SyncField", &name))
        return NULL;
    field_object *self = (field_object *)tp->tp_alloc(tp, 0);
    if (self)
        self->name = Py_NewRef(name);
    return (PyObject *)self;
}

static void field_dealloc(field_object *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_CLEAR(self->name);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int field_check(field_object *self, PyObject *inst)
{
    cmp_py_state *st = cmp_py_state_of_type(Py_TYPE(self));
    if (!PyObject_TypeCheck(inst, st->SynchronizedBase_type)) {
        PyErr_Format(PyExc_TypeError, "descriptor %R applies to synchronized wrappers, not %.100s",
                     self->name, Py_TYPE(inst)->tp_name);
        return -1;
    }
    return sync_ready((sync_object *)inst);
}

static PyObject *field_get(field_object *self, PyObject *inst, PyObject *Py_UNUSED(owner))
{
    if (!inst || inst == Py_None)
        return Py_NewRef(self);
    if (field_check(self, inst) < 0)
        return NULL;
    return sync_getattr_locked((sync_object *)inst, self->name);
}

static int field_set(field_object *self, PyObject *inst, PyObject *value)
{
    if (field_check(self, inst) < 0)
        return -1;
    return sync_setattr_locked((sync_object *)inst, self->name, value);
}

static PyType_Slot field_slots[] = {
    {Py_tp_doc, "Attribute of the wrapped Structure, accessed under the lock."},
    {Py_tp_new, field_tp_new},
    {Py_tp_dealloc, field_dealloc},
    {Py_tp_descr_get, field_get},
    {Py_tp_descr_set, field_set},
    {0, NULL},
};

static PyType_Spec field_spec = {
    .name = "cmultiprocessing.sharedctypes.SyncField",
    .basicsize = sizeof(field_object),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = field_slots,
};

/* ------------------------------------------------------------------------
 * Module functions
 * ------------------------------------------------------------------------ */

/* The wrapper class for a Structure (or Union) class, made once. */
static PyObject *structure_wrapper_class(cmp_py_state *st, PyObject *cls)
{
    if (!st->sync_class_cache) {
        PyObject *weakref = PyImport_ImportModule("weakref");
        if (!weakref)
            return NULL;
        st->sync_class_cache = PyObject_CallMethod(weakref, "WeakKeyDictionary", NULL);
        Py_DECREF(weakref);
        if (!st->sync_class_cache)
            return NULL;
    }
    PyObject *scls = PyObject_GetItem(st->sync_class_cache, cls);
    if (scls || !PyErr_ExceptionMatches(PyExc_KeyError))
        return scls;
    PyErr_Clear();

    PyObject *fields = NULL, *dict = NULL, *name = NULL, *cls_name = NULL, *it = NULL;
    fields = PyObject_GetAttrString(cls, "_fields_");
    dict = fields ? PyDict_New() : NULL;
    it = dict ? PyObject_GetIter(fields) : NULL;
    if (!it)
        goto done;
    PyObject *field;
    while ((field = PyIter_Next(it))) {
        PyObject *fname = PySequence_GetItem(field, 0);
        Py_DECREF(field);
        if (!fname)
            goto done;
        PyObject *prop = PyObject_CallOneArg((PyObject *)st->SyncField_type, fname);
        int rc = prop ? PyDict_SetItem(dict, fname, prop) : -1;
        Py_XDECREF(prop);
        Py_DECREF(fname);
        if (rc < 0)
            goto done;
    }
    if (PyErr_Occurred())
        goto done;
    PyObject *module_name = PyUnicode_FromString("cmultiprocessing.sharedctypes");
    int rc = module_name ? PyDict_SetItemString(dict, "__module__", module_name) : -1;
    Py_XDECREF(module_name);
    if (rc < 0)
        goto done;
    cls_name = PyObject_GetAttrString(cls, "__name__");
    name = cls_name ? PyUnicode_FromFormat("Synchronized%U", cls_name) : NULL;
    if (!name)
        goto done;
    scls = PyObject_CallFunction((PyObject *)&PyType_Type, "O(O)O", name,
                                 (PyObject *)st->SynchronizedBase_type, dict);
    if (scls && PyObject_SetItem(st->sync_class_cache, cls, scls) < 0)
        Py_CLEAR(scls);
done:
    Py_XDECREF(fields);
    Py_XDECREF(dict);
    Py_XDECREF(it);
    Py_XDECREF(cls_name);
    Py_XDECREF(name);
    return scls;
}

static PyObject *do_synchronized(cmp_py_state *st, PyObject *obj, PyObject *lock, PyObject *ctx)
{
    if (PyObject_TypeCheck(obj, st->SynchronizedBase_type)) {
        PyErr_SetString(PyExc_AssertionError, "object already synchronized");
        return NULL;
    }
    if (ensure_ctypes(st) < 0)
        return NULL;
    PyObject *simple = ctypes_attr(st, "_SimpleCData");
    PyObject *array = simple ? ctypes_attr(st, "Array") : NULL;
    if (!array) {
        Py_XDECREF(simple);
        return NULL;
    }
    PyObject *cls = NULL;
    int is_simple = PyObject_IsInstance(obj, simple);
    int is_array = is_simple == 0 ? PyObject_IsInstance(obj, array) : 0;
    Py_DECREF(simple);
    Py_DECREF(array);
    if (is_simple < 0 || is_array < 0)
        return NULL;
    if (is_simple) {
        cls = Py_NewRef((PyObject *)st->Synchronized_type);
    } else if (is_array) {
        PyObject *item_type = PyObject_GetAttrString(obj, "_type_");
        PyObject *c_char = item_type ? ctypes_attr(st, "c_char") : NULL;
        if (!c_char) {
            Py_XDECREF(item_type);
            return NULL;
        }
        cls = Py_NewRef(item_type == c_char ? (PyObject *)st->SynchronizedString_type
                                            : (PyObject *)st->SynchronizedArray_type);
        Py_DECREF(item_type);
        Py_DECREF(c_char);
    } else {
        cls = structure_wrapper_class(st, (PyObject *)Py_TYPE(obj));
        if (!cls)
            return NULL;
    }
    PyObject *r =
        PyObject_CallFunctionObjArgs(cls, obj, lock ? lock : Py_None, ctx ? ctx : Py_None, NULL);
    Py_DECREF(cls);
    return r;
}

/* The lock argument of Value and Array, as the stdlib treats it. Returns a
 * new reference to the lock to use, Py_False (new ref) for none, or NULL. */
static PyObject *lock_argument(cmp_py_state *st, PyObject *lock, PyObject *ctx)
{
    if (lock == Py_False)
        return Py_NewRef(Py_False);
    int is_true = lock == Py_None ? 1 : PyObject_RichCompareBool(lock, Py_True, Py_EQ);
    if (is_true < 0)
        return NULL;
    if (is_true)
        return new_rlock(st, ctx);
    if (!PyObject_HasAttrString(lock, "acquire")) {
        PyErr_Format(PyExc_AttributeError, "%R has no method 'acquire'", lock);
        return NULL;
    }
    return Py_NewRef(lock);
}

/* Hand-rolled argument parsing for the constructors: positional names in
 * order, then keyword-only names. Fills out[] (NULL where not given) and,
 * if rest is not NULL, a tuple of extra positionals. */
static int parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *const *names, int npos, int nrequired, int nkwonly,
                      PyObject **out, PyObject **rest)
{
    int total = npos + nkwonly;
    for (int k = 0; k < total; k++)
        out[k] = NULL;
    Py_ssize_t take = nargs < npos ? nargs : npos;
    if (nargs > npos && !rest) {
        PyErr_Format(PyExc_TypeError, "%s() takes %d positional arguments but %zd were given",
                     fname, npos, nargs);
        return -1;
    }
    for (Py_ssize_t k = 0; k < take; k++)
        out[k] = args[k];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t j = 0; j < nkw; j++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, j);
        int k;
        for (k = 0; k < total; k++)
            if (PyUnicode_CompareWithASCIIString(key, names[k]) == 0)
                break;
        if (k == total) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                         key);
            return -1;
        }
        if (out[k] || (k < npos && nargs > npos)) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[k]);
            return -1;
        }
        out[k] = args[nargs + j];
    }
    for (int k = 0; k < nrequired; k++) {
        if (!out[k]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, names[k]);
            return -1;
        }
    }
    if (rest) {
        *rest = nargs > npos ? PyTuple_New(nargs - npos) : PyTuple_New(0);
        if (!*rest)
            return -1;
        for (Py_ssize_t k = npos; k < nargs; k++)
            PyTuple_SET_ITEM(*rest, k - npos, Py_NewRef(args[k]));
    }
    return 0;
}

/* Wraps raw in a synchronized wrapper according to the lock argument. */
static PyObject *wrap_with_lock(cmp_py_state *st, PyObject *raw, PyObject *lock, PyObject *ctx)
{
    PyObject *l = lock_argument(st, lock ? lock : Py_True, ctx);
    if (!l) {
        Py_DECREF(raw);
        return NULL;
    }
    if (l == Py_False) {
        Py_DECREF(l);
        return raw;
    }
    PyObject *r = do_synchronized(st, raw, l, ctx);
    Py_DECREF(l);
    Py_DECREF(raw);
    return r;
}

static PyObject *mod_RawValue(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    static const char *const names[] = {"typecode_or_type"};
    PyObject *out[1], *rest;
    if (parse_args("RawValue", args, nargs, kwnames, names, 1, 1, 0, out, &rest) < 0)
        return NULL;
    PyObject *r = raw_value(cmp_py_state_of_module(module), out[0], rest);
    Py_DECREF(rest);
    return r;
}

static PyObject *mod_RawArray(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    static const char *const names[] = {"typecode_or_type", "size_or_initializer"};
    PyObject *out[2];
    if (parse_args("RawArray", args, nargs, kwnames, names, 2, 2, 0, out, NULL) < 0)
        return NULL;
    return raw_array(cmp_py_state_of_module(module), out[0], out[1]);
}

static PyObject *mod_Value(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    static const char *const names[] = {"typecode_or_type", "lock", "ctx"};
    PyObject *out[3], *rest;
    if (parse_args("Value", args, nargs, kwnames, names, 1, 1, 2, out, &rest) < 0)
        return NULL;
    cmp_py_state *st = cmp_py_state_of_module(module);
    PyObject *raw = raw_value(st, out[0], rest);
    Py_DECREF(rest);
    if (!raw)
        return NULL;
    return wrap_with_lock(st, raw, out[1], out[2]);
}

static PyObject *mod_Array(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    static const char *const names[] = {"typecode_or_type", "size_or_initializer", "lock", "ctx"};
    PyObject *out[4];
    if (parse_args("Array", args, nargs, kwnames, names, 2, 2, 2, out, NULL) < 0)
        return NULL;
    cmp_py_state *st = cmp_py_state_of_module(module);
    PyObject *raw = raw_array(st, out[0], out[1]);
    if (!raw)
        return NULL;
    return wrap_with_lock(st, raw, out[2], out[3]);
}

static PyObject *mod_synchronized(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    static const char *const names[] = {"obj", "lock", "ctx"};
    PyObject *out[3];
    if (parse_args("synchronized", args, nargs, kwnames, names, 3, 1, 0, out, NULL) < 0)
        return NULL;
    return do_synchronized(cmp_py_state_of_module(module), out[0], out[1], out[2]);
}

/* 1 if instances of ctype can hold references to Python objects that
 * ctypes keeps alive beside the bytes (c_char_p, c_wchar_p, py_object,
 * pointers, function pointers, and anything made of them), 0 if not, -1 on
 * error. An unknown kind of type counts as holding them. */
static int holds_references(cmp_py_state *st, PyObject *ctype, int depth)
{
    static const char *const plain_kinds[] = {"_SimpleCData", "Array", "Structure", "Union"};
    if (depth > 64 || !PyType_Check(ctype)) /* be safe rather than guess */
        return 1;
    int kind = -1, is_root = 0;
    for (int k = 0; k < 4 && kind < 0; k++) {
        PyObject *base = ctypes_attr(st, plain_kinds[k]);
        int sub = base ? PyObject_IsSubclass(ctype, base) : -1;
        is_root = base == ctype;
        Py_XDECREF(base);
        if (sub < 0)
            return -1;
        if (sub)
            kind = k;
    }
    if (kind < 0)
        return 1;
    if (is_root) /* ctypes.Structure itself, say: no fields */
        return 0;
    if (kind <= 1) {
        PyObject *item = PyObject_GetAttrString(ctype, "_type_");
        if (!item)
            return -1;
        int r;
        if (kind == 1)
            r = holds_references(st, item, depth + 1);
        else
            r = !PyUnicode_Check(item) || PyUnicode_FindChar(item, 'z', 0, 1, 1) >= 0 ||
                PyUnicode_FindChar(item, 'Z', 0, 1, 1) >= 0 ||
                PyUnicode_FindChar(item, 'O', 0, 1, 1) >= 0;
        Py_DECREF(item);
        return r;
    }
    /* A Structure's own _fields_ follow those of the Structure it derives
     * from: look at each class's own, then at its base's. */
    PyTypeObject *tp = (PyTypeObject *)ctype;
    PyObject *fields = PyDict_GetItemString(tp->tp_dict, "_fields_"); /* borrowed */
    int r = 0;
    if (fields) {
        PyObject *seq = PySequence_Fast(fields, "_fields_ must be a sequence");
        if (!seq)
            return -1;
        for (Py_ssize_t i = 0; r == 0 && i < PySequence_Fast_GET_SIZE(seq); i++) {
            PyObject *field = PySequence_Fast_GET_ITEM(seq, i);
            PyObject *ftype = PySequence_Check(field) ? PySequence_GetItem(field, 1) : NULL;
            r = ftype ? holds_references(st, ftype, depth + 1) : -1;
            Py_XDECREF(ftype);
        }
        Py_DECREF(seq);
    }
    if (r == 0 && tp->tp_base)
        r = holds_references(st, (PyObject *)tp->tp_base, depth + 1);
    return r;
}

/* What ctypes keeps alive for obj: the _objects of the object at the root
 * of its _b_base_ chain (a new reference, maybe None), or NULL. */
static PyObject *kept_objects(PyObject *obj)
{
    PyObject *root = Py_NewRef(obj);
    for (;;) {
        PyObject *base = PyObject_GetAttrString(root, "_b_base_");
        if (!base) {
            Py_DECREF(root);
            return NULL;
        }
        if (base == Py_None) {
            Py_DECREF(base);
            break;
        }
        Py_SETREF(root, base);
    }
    PyObject *kept = PyObject_GetAttrString(root, "_objects");
    Py_DECREF(root);
    return kept;
}

/* The standard library's copy() assigns through a temporary pointer, so
 * what the source references (the bytes of a c_char_p, a py_object's
 * object) is kept by nothing once it returns: the copy dangles when the
 * source goes. Ours keeps them in the copy's own root container, under a
 * key no ctypes store uses. Only for types that hold references: for the
 * others that would keep the source's shared block alive for nothing. */
static int copy_keep_references(cmp_py_state *st, PyObject *copy, PyObject *src)
{
    int holds = holds_references(st, (PyObject *)Py_TYPE(src), 0);
    if (holds <= 0)
        return holds;
    PyObject *kept = kept_objects(src);
    if (!kept)
        return -1;
    int rc = 0;
    if (kept != Py_None) {
        PyObject *root = PyObject_GetAttrString(copy, "_b_base_");
        PyObject *dict = root ? PyObject_GetAttrString(root, "_objects") : NULL;
        rc = !dict ? -1 : PyDict_Check(dict) ? PyDict_SetItemString(dict, "cmp.copy", kept) : 0;
        Py_XDECREF(dict);
        Py_XDECREF(root);
    }
    Py_DECREF(kept);
    return rc;
}

static PyObject *mod_copy(PyObject *module, PyObject *obj)
{
    cmp_py_state *st = cmp_py_state_of_module(module);
    if (ensure_ctypes(st) < 0)
        return NULL;
    PyObject *copy = new_shared_ctype(st, (PyObject *)Py_TYPE(obj));
    if (!copy)
        return NULL;
    Py_buffer src, dst;
    if (PyObject_GetBuffer(obj, &src, PyBUF_SIMPLE) < 0)
        goto fail;
    if (PyObject_GetBuffer(copy, &dst, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        goto fail;
    }
    memcpy(dst.buf, src.buf, (size_t)(src.len < dst.len ? src.len : dst.len));
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    if (copy_keep_references(st, copy, obj) < 0)
        goto fail;
    return copy;
fail:
    Py_DECREF(copy);
    return NULL;
}

#define FASTCALL_KW (METH_FASTCALL | METH_KEYWORDS)

/* The same words as the README's: what the shared bytes of a pointer are. */
#define POINTER_NOTE                                                                               \
    "A pointer stored in shared memory (c_char_p, c_wchar_p, c_void_p, py_object, "                \
    "POINTER(...), or a Structure or array holding one) is an address in the process that "        \
    "stored it: it keeps what it points to alive there and means nothing in any other process, "   \
    "so only that process may read it."

static PyMethodDef module_functions[] = {
    {"RawValue", (PyCFunction)(void (*)(void))mod_RawValue, FASTCALL_KW,
     "RawValue(typecode_or_type, *args)\n--\n\nA ctypes object allocated from shared "
     "memory.\n\n" POINTER_NOTE},
    {"RawArray", (PyCFunction)(void (*)(void))mod_RawArray, FASTCALL_KW,
     "RawArray(typecode_or_type, size_or_initializer)\n--\n\n"
     "A ctypes array allocated from shared memory.\n\n" POINTER_NOTE},
    {"Value", (PyCFunction)(void (*)(void))mod_Value, FASTCALL_KW,
     "Value(typecode_or_type, *args, lock=True, ctx=None)\n--\n\n"
     "A synchronized wrapper around a shared ctypes object.\n\n" POINTER_NOTE},
    {"Array", (PyCFunction)(void (*)(void))mod_Array, FASTCALL_KW,
     "Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None)\n--\n\n"
     "A synchronized wrapper around a shared ctypes array.\n\n" POINTER_NOTE},
    {"synchronized", (PyCFunction)(void (*)(void))mod_synchronized, FASTCALL_KW,
     "synchronized(obj, lock=None, ctx=None)\n--\n\n"
     "Wraps a ctypes object in a synchronized wrapper."},
    {"_shared_block_of", shared_block_of, METH_O,
     "_shared_block_of(obj)\n--\n\n(SharedBlock, offset) of a ctypes object in the shared heap, "
     "or None."},
    {"copy", mod_copy, METH_O,
     "copy(obj)\n--\n\nA copy of the ctypes object obj, in shared memory."},
    {NULL, NULL, 0, NULL},
};

int cmp_py_sharedctypes_init(PyObject *module, cmp_py_state *st)
{
    /* SharedBlock and SyncField are internal: not added to the module. */
    if (!(st->SharedBlock_type =
              (PyTypeObject *)cmp_py_type_from_spec(module, &block_spec, NULL)) ||
        !(st->SyncField_type = (PyTypeObject *)cmp_py_type_from_spec(module, &field_spec, NULL)) ||
        !(st->SynchronizedBase_type = cmp_py_add_type(module, &base_spec, NULL)) ||
        cmp_py_add_fast_methods(st, st->SynchronizedBase_type, sync_with_methods, 0) < 0 ||
        !(st->Synchronized_type =
              cmp_py_add_type(module, &value_spec, (PyObject *)st->SynchronizedBase_type)) ||
        !(st->SynchronizedArray_type =
              cmp_py_add_type(module, &array_spec, (PyObject *)st->SynchronizedBase_type)) ||
        !(st->SynchronizedString_type =
              cmp_py_add_type(module, &string_spec, (PyObject *)st->SynchronizedArray_type)))
        return -1;
    return PyModule_AddFunctions(module, module_functions);
}
