/*
 * Method descriptors whose bound methods are recycled, for __enter__ and
 * __exit__.
 *
 * Why: a `with` statement looks both methods up on the type and binds them
 * (CPython up to 3.13 calls the descriptor's __get__ for each). For an
 * ordinary C method that allocates a GC-tracked builtin method object, and
 * frees it right after the call: two allocations and two deallocations per
 * `with lock:`, about half of its cost once the lock itself is one
 * compare-and-swap.
 *
 * Here each descriptor keeps a small free list of its own bound objects.
 * A bound object holds strong references to its instance and descriptor,
 * like any bound method, so it may outlive every other reference to the
 * instance (`f = lock.__exit__; del lock; f(None, None, None)`). When it
 * dies, its memory goes back to the descriptor's free list instead of to
 * the allocator; the next binding takes it from there. Nothing refers to a
 * parked object, so there is no cycle and no lifetime tied to an instance:
 * the instance is freed as soon as its last reference goes, as before.
 *
 * Objects of the exact types that embed a cmp_py_fast_cache (Lock, RLock)
 * go further: each keeps its own bound __enter__ and __exit__, which a
 * `with` then only increfs. Those bound objects refer to their instance
 * without owning it (so no cycle, and the instance dies as before); should
 * one still be referenced elsewhere when its instance's refcount drops to
 * zero, the instance's finalizer hands it ownership of the instance, which
 * is thereby resurrected until that last bound method goes
 * (cmp_py_fast_cache_finalize).
 *
 * The descriptor is also a Py_TPFLAGS_METHOD_DESCRIPTOR, so `lock.__exit__(
 * ...)` written out and 3.14's `with` call it unbound, with no bound object
 * at all. Both types offer what inspect and pydoc look for (__name__,
 * __qualname__, __doc__, __text_signature__, __objclass__ / __self__).
 */
#include "_cmp.h"

#include <stdint.h>
#include <string.h>
#include <structmember.h> /* PyMemberDef, T_OBJECT, T_PYSSIZET before 3.12 */

/* Enough for a `with` (both methods bound at once) in a few threads or
 * nested blocks; more bound objects than that are simply freed. */
#define FREE_MAX 4

typedef struct fast_bound fast_bound;

typedef struct {
    PyObject_HEAD
    PyMethodDef *def;       /* METH_NOARGS or METH_FASTCALL */
    PyTypeObject *objclass; /* the type it was installed on */
    PyTypeObject *bound_type;
    vectorcallfunc vectorcall;
    fast_bound *free; /* parked bound objects, linked by next_free */
    int nfree;
    Py_ssize_t cache_offset; /* of the cmp_py_fast_cache in objclass, or 0 */
    int cache_index;         /* this method's slot in it */
} fast_descr;

struct fast_bound {
    PyObject_HEAD
    PyObject *self; /* NULL only while parked */
    fast_descr *descr;
    vectorcallfunc vectorcall;
    fast_bound *next_free;
    int owns_self; /* 0 while in its instance's cache: self is borrowed */
};

static PyObject *call_def(PyMethodDef *def, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    if (kwnames && PyTuple_GET_SIZE(kwnames)) {
        PyErr_Format(PyExc_TypeError, "%s() takes no keyword arguments", def->ml_name);
        return NULL;
    }
    if (def->ml_flags & METH_NOARGS) {
        if (nargs) {
            PyErr_Format(PyExc_TypeError, "%s() takes no arguments (%zd given)", def->ml_name,
                         nargs);
            return NULL;
        }
        return def->ml_meth(self, NULL);
    }
    return ((PyObject * (*)(PyObject *, PyObject *const *, Py_ssize_t))(
                void (*)(void))def->ml_meth)(self, args, nargs);
}

static int check_self(fast_descr *d, PyObject *obj)
{
    if (PyObject_TypeCheck(obj, d->objclass))
        return 0;
    PyErr_Format(PyExc_TypeError, "descriptor '%s' for '%s' objects doesn't apply to a '%s' object",
                 d->def->ml_name, d->objclass->tp_name, Py_TYPE(obj)->tp_name);
    return -1;
}

/* -- the bound method ----------------------------------------------------- */

static PyObject *bound_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    fast_bound *b = (fast_bound *)op;
    return call_def(b->descr->def, b->self, args, PyVectorcall_NARGS(nargsf), kwnames);
}

/* A bound object, untracked by the GC, with a borrowed self. */
static fast_bound *new_bound(fast_descr *d, PyObject *obj)
{
    fast_bound *b = d->free;
    if (b) {
        d->free = b->next_free;
        d->nfree--;
        /* a fresh reference count (and type reference) on parked memory, as
         * CPython's own free lists do */
        PyObject_Init((PyObject *)b, d->bound_type);
    } else {
        b = PyObject_GC_New(fast_bound, d->bound_type);
        if (!b)
            return NULL;
    }
    b->self = obj;
    b->descr = (fast_descr *)Py_NewRef((PyObject *)d);
    b->vectorcall = bound_vectorcall;
    b->next_free = NULL;
    b->owns_self = 0;
    return b;
}

static PyObject *bind_method(fast_descr *d, PyObject *obj)
{
    if (d->cache_offset && Py_IS_TYPE(obj, d->objclass)) {
        /* Exact type only: a Python subclass instance may have a dict and
         * thus take part in cycles, and gets its finalizer called only
         * once, which cmp_py_fast_cache_finalize relies on. */
        cmp_py_fast_cache *cache = (cmp_py_fast_cache *)((char *)obj + d->cache_offset);
        PyObject **slot = &cache->bound[d->cache_index];
        if (!*slot && !(*slot = (PyObject *)new_bound(d, obj)))
            return NULL;
        /* untracked: it owns no reference the GC could follow */
        return Py_NewRef(*slot);
    }
    fast_bound *b = new_bound(d, obj);
    if (!b)
        return NULL;
    Py_INCREF(obj);
    b->owns_self = 1;
    PyObject_GC_Track(b);
    return (PyObject *)b;
}

static void bound_dealloc(PyObject *op)
{
    fast_bound *b = (fast_bound *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject *self = b->owns_self ? b->self : NULL;
    fast_descr *d = b->descr;
    PyObject_GC_UnTrack(op); /* a no-op for an untracked one */
    b->self = NULL;
    b->descr = NULL;
    if (d && d->nfree < FREE_MAX) {
        b->next_free = d->free;
        d->free = b;
        d->nfree++;
    } else {
        PyObject_GC_Del(op);
    }
    /* as any heap type instance; bind_method() takes it again on reuse */
    Py_DECREF(tp);
    /* last: either may free the descriptor (and with it the parked memory,
     * b included) or run arbitrary code */
    Py_XDECREF(self);
    Py_XDECREF((PyObject *)d);
}

static int bound_traverse(PyObject *op, visitproc visit, void *arg)
{
    fast_bound *b = (fast_bound *)op;
    Py_VISIT(Py_TYPE(op));
    if (b->owns_self)
        Py_VISIT(b->self);
    Py_VISIT((PyObject *)b->descr);
    return 0;
}

static PyObject *bound_repr(PyObject *op)
{
    fast_bound *b = (fast_bound *)op;
    return PyUnicode_FromFormat("<built-in method %s of %s object at %p>", b->descr->def->ml_name,
                                Py_TYPE(b->self)->tp_name, b->self);
}

/* Equal when they bind the same method to the same object, as builtin
 * methods (and the stdlib's Python methods) are. */
static PyObject *bound_richcompare(PyObject *a, PyObject *other, int op)
{
    if ((op != Py_EQ && op != Py_NE) || !PyObject_TypeCheck(other, Py_TYPE(a)))
        Py_RETURN_NOTIMPLEMENTED;
    fast_bound *x = (fast_bound *)a, *y = (fast_bound *)other;
    int eq = x->descr == y->descr && x->self == y->self;
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

/* Py_HashPointer() is public only from 3.13 */
static Py_hash_t hash_pointer(const void *p)
{
    uintptr_t x = (uintptr_t)p;
    return (Py_hash_t)((x >> 4) | (x << (8 * sizeof x - 4)));
}

static Py_hash_t bound_hash(PyObject *op)
{
    fast_bound *b = (fast_bound *)op;
    Py_hash_t h = hash_pointer(b->self) ^ hash_pointer(b->descr);
    return h == -1 ? -2 : h;
}

static PyObject *bound_get_name(PyObject *op, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(((fast_bound *)op)->descr->def->ml_name);
}

static PyObject *bound_get_qualname(PyObject *op, void *closure)
{
    (void)closure;
    fast_bound *b = (fast_bound *)op;
    PyObject *q = PyObject_GetAttrString((PyObject *)Py_TYPE(b->self), "__qualname__");
    if (!q)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("%U.%s", q, b->descr->def->ml_name);
    Py_DECREF(q);
    return r;
}

static PyObject *bound_get_self(PyObject *op, void *closure)
{
    (void)closure;
    return Py_NewRef(((fast_bound *)op)->self);
}

static PyObject *descr_get_doc(PyObject *op, void *closure);
static PyObject *descr_get_text_signature(PyObject *op, void *closure);

static PyObject *bound_get_doc(PyObject *op, void *closure)
{
    return descr_get_doc((PyObject *)((fast_bound *)op)->descr, closure);
}

static PyObject *bound_get_text_signature(PyObject *op, void *closure)
{
    return descr_get_text_signature((PyObject *)((fast_bound *)op)->descr, closure);
}

/* inspect.signature() recognizes only CPython's own builtin methods by
 * type; give it the descriptor's signature without the bound `self`. */
static PyObject *bound_get_signature(PyObject *op, void *closure)
{
    (void)closure;
    PyObject *inspect = PyImport_ImportModule("inspect");
    if (!inspect)
        return NULL;
    PyObject *r = NULL, *params = NULL, *rest = NULL, *replace = NULL, *kw = NULL, *empty = NULL;
    PyObject *sig =
        PyObject_CallMethod(inspect, "signature", "O", (PyObject *)((fast_bound *)op)->descr);
    if (!sig)
        goto done;
    params = PyObject_GetAttrString(sig, "parameters");
    PyObject *values = params ? PyObject_CallMethod(params, "values", NULL) : NULL;
    PyObject *list = values ? PySequence_List(values) : NULL;
    Py_XDECREF(values);
    if (!list)
        goto done;
    rest = PyList_GetSlice(list, 1, PyList_GET_SIZE(list));
    Py_DECREF(list);
    replace = rest ? PyObject_GetAttrString(sig, "replace") : NULL;
    empty = PyTuple_New(0);
    kw = replace && empty ? Py_BuildValue("{sO}", "parameters", rest) : NULL;
    if (kw)
        r = PyObject_Call(replace, empty, kw);
done:
    Py_DECREF(inspect);
    Py_XDECREF(sig);
    Py_XDECREF(params);
    Py_XDECREF(rest);
    Py_XDECREF(replace);
    Py_XDECREF(kw);
    Py_XDECREF(empty);
    return r;
}

/* Pickled as getattr(self, name), as builtin methods are: it then fails or
 * not exactly as pickling the object itself does. */
static PyObject *bound_reduce(PyObject *op, PyObject *unused)
{
    (void)unused;
    fast_bound *b = (fast_bound *)op;
    PyObject *getattr = PyDict_GetItemString(PyEval_GetBuiltins(), "getattr");
    if (!getattr) {
        PyErr_SetString(PyExc_RuntimeError, "builtins.getattr is missing");
        return NULL;
    }
    return Py_BuildValue("O(Os)", getattr, b->self, b->descr->def->ml_name);
}

static PyGetSetDef bound_getset[] = {
    {"__name__", bound_get_name, NULL, NULL, NULL},
    {"__qualname__", bound_get_qualname, NULL, NULL, NULL},
    {"__self__", bound_get_self, NULL, NULL, NULL},
    {"__doc__", bound_get_doc, NULL, NULL, NULL},
    {"__text_signature__", bound_get_text_signature, NULL, NULL, NULL},
    {"__signature__", bound_get_signature, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef bound_methods[] = {
    {"__reduce__", bound_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bound_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(fast_bound, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot bound_slots[] = {
    {Py_tp_dealloc, bound_dealloc},         {Py_tp_traverse, bound_traverse},
    {Py_tp_call, PyVectorcall_Call},        {Py_tp_repr, bound_repr},
    {Py_tp_richcompare, bound_richcompare}, {Py_tp_hash, bound_hash},
    {Py_tp_getset, bound_getset},           {Py_tp_methods, bound_methods},
    {Py_tp_members, bound_members},         {0, NULL},
};

#if PY_VERSION_HEX >= 0x030A0000
#define NOT_INSTANTIABLE (Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE)
#else
#define NOT_INSTANTIABLE 0 /* tp_new is cleared after creation instead */
#endif

static PyType_Spec bound_spec = {
    .name = "cmultiprocessing._cmp.builtin_method",
    .basicsize = sizeof(fast_bound),
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | NOT_INSTANTIABLE,
    .slots = bound_slots,
};

/* -- the descriptor ------------------------------------------------------- */

static PyObject *descr_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    fast_descr *d = (fast_descr *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "unbound method %s.%s() needs an argument",
                     d->objclass->tp_name, d->def->ml_name);
        return NULL;
    }
    if (check_self(d, args[0]) < 0)
        return NULL;
    return call_def(d->def, args[0], args + 1, nargs - 1, kwnames);
}

static PyObject *descr_get(PyObject *op, PyObject *obj, PyObject *type)
{
    (void)type;
    fast_descr *d = (fast_descr *)op;
    if (!obj)
        return Py_NewRef(op);
    if (check_self(d, obj) < 0)
        return NULL;
    return bind_method(d, obj);
}

static void descr_free_parked(fast_descr *d)
{
    while (d->free) {
        fast_bound *b = d->free;
        d->free = b->next_free;
        PyObject_GC_Del(b);
    }
    d->nfree = 0;
}

static void descr_dealloc(PyObject *op)
{
    fast_descr *d = (fast_descr *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    descr_free_parked(d);
    Py_XDECREF(d->objclass);
    Py_XDECREF(d->bound_type);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static int descr_traverse(PyObject *op, visitproc visit, void *arg)
{
    fast_descr *d = (fast_descr *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(d->objclass);
    Py_VISIT(d->bound_type);
    return 0;
}

static PyObject *descr_repr(PyObject *op)
{
    fast_descr *d = (fast_descr *)op;
    return PyUnicode_FromFormat("<method '%s' of '%s' objects>", d->def->ml_name,
                                d->objclass->tp_name);
}

/* The doc string is "name(signature)\n--\n\ntext", as for CPython's own
 * methods: __text_signature__ is the part in parentheses, __doc__ the text. */
static const char *doc_body(const char *doc)
{
    const char *end = doc ? strstr(doc, ")\n--\n\n") : NULL;
    return end ? end + 6 : doc;
}

static PyObject *descr_get_doc(PyObject *op, void *closure)
{
    (void)closure;
    const char *doc = doc_body(((fast_descr *)op)->def->ml_doc);
    if (!doc)
        Py_RETURN_NONE;
    return PyUnicode_FromString(doc);
}

static PyObject *descr_get_text_signature(PyObject *op, void *closure)
{
    (void)closure;
    const char *doc = ((fast_descr *)op)->def->ml_doc;
    const char *body = doc_body(doc);
    const char *open = doc ? strchr(doc, '(') : NULL;
    if (!doc || body == doc || !open || open > body)
        Py_RETURN_NONE;
    return PyUnicode_FromStringAndSize(open, body - 5 - open);
}

static PyObject *descr_get_name(PyObject *op, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(((fast_descr *)op)->def->ml_name);
}

static PyObject *descr_get_qualname(PyObject *op, void *closure)
{
    (void)closure;
    fast_descr *d = (fast_descr *)op;
    PyObject *q = PyObject_GetAttrString((PyObject *)d->objclass, "__qualname__");
    if (!q)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("%U.%s", q, d->def->ml_name);
    Py_DECREF(q);
    return r;
}

static PyObject *descr_reduce(PyObject *op, PyObject *unused)
{
    (void)unused;
    fast_descr *d = (fast_descr *)op;
    PyObject *getattr = PyDict_GetItemString(PyEval_GetBuiltins(), "getattr");
    if (!getattr) {
        PyErr_SetString(PyExc_RuntimeError, "builtins.getattr is missing");
        return NULL;
    }
    return Py_BuildValue("O(Os)", getattr, (PyObject *)d->objclass, d->def->ml_name);
}

static PyGetSetDef descr_getset[] = {
    {"__name__", descr_get_name, NULL, NULL, NULL},
    {"__qualname__", descr_get_qualname, NULL, NULL, NULL},
    {"__doc__", descr_get_doc, NULL, NULL, NULL},
    {"__text_signature__", descr_get_text_signature, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef descr_methods[] = {
    {"__reduce__", descr_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef descr_members[] = {
    {"__objclass__", T_OBJECT, offsetof(fast_descr, objclass), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(fast_descr, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot descr_slots[] = {
    {Py_tp_dealloc, descr_dealloc},
    {Py_tp_traverse, descr_traverse},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, descr_get},
    {Py_tp_repr, descr_repr},
    {Py_tp_getset, descr_getset},
    {Py_tp_methods, descr_methods},
    {Py_tp_members, descr_members},
    {0, NULL},
};

static PyType_Spec descr_spec = {
    .name = "cmultiprocessing._cmp.method_descriptor",
    .basicsize = sizeof(fast_descr),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_METHOD_DESCRIPTOR | NOT_INSTANTIABLE,
    .slots = descr_slots,
};

/* -- installation --------------------------------------------------------- */

void cmp_py_fast_cache_finalize(PyObject *self, cmp_py_fast_cache *cache)
{
    for (int i = 0; i < CMP_PY_FAST_CACHE_SIZE; i++) {
        fast_bound *b = (fast_bound *)cache->bound[i];
        if (!b || Py_REFCNT(b) == 1)
            continue;
        /* referenced elsewhere: from now on it owns self (resurrecting it,
         * see PyObject_CallFinalizerFromDealloc) and lives on its own */
        b->self = Py_NewRef(self);
        b->owns_self = 1;
        cache->bound[i] = NULL;
        Py_DECREF(b);
    }
}

void cmp_py_fast_cache_clear(cmp_py_fast_cache *cache)
{
    for (int i = 0; i < CMP_PY_FAST_CACHE_SIZE; i++)
        Py_CLEAR(cache->bound[i]); /* unreferenced elsewhere by now */
}

int cmp_py_add_fast_methods(cmp_py_state *st, PyTypeObject *type, PyMethodDef *defs,
                            Py_ssize_t cache_offset)
{
    for (PyMethodDef *def = defs; def->ml_name; def++) {
        int index = (int)(def - defs);
        assert(!cache_offset || index < CMP_PY_FAST_CACHE_SIZE);
        /* the vectorcalls above know these two conventions only */
        assert(def->ml_flags == METH_NOARGS || def->ml_flags == METH_FASTCALL);
        fast_descr *d = PyObject_GC_New(fast_descr, st->FastMethod_type);
        if (!d)
            return -1;
        d->def = def;
        d->objclass = (PyTypeObject *)Py_NewRef((PyObject *)type);
        d->bound_type = (PyTypeObject *)Py_NewRef((PyObject *)st->FastBound_type);
        d->vectorcall = descr_vectorcall;
        d->free = NULL;
        d->nfree = 0;
        d->cache_offset = cache_offset;
        d->cache_index = index;
        PyObject_GC_Track(d);
        int rc = PyObject_SetAttrString((PyObject *)type, def->ml_name, (PyObject *)d);
        Py_DECREF(d);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static PyTypeObject *new_type(PyObject *module, PyType_Spec *spec)
{
    PyTypeObject *tp = (PyTypeObject *)PyType_FromModuleAndSpec(module, spec, NULL);
#if PY_VERSION_HEX < 0x030A0000
    if (tp)
        tp->tp_new = NULL; /* not instantiable from Python */
#endif
    return tp;
}

int cmp_py_fastmethod_init(PyObject *module, cmp_py_state *st)
{
    st->FastMethod_type = new_type(module, &descr_spec);
    st->FastBound_type = new_type(module, &bound_spec);
    return st->FastMethod_type && st->FastBound_type ? 0 : -1;
}
