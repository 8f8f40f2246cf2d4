/*
 * shared_memory.ShareableList's item access, in C: the base class whose
 * __getitem__, __setitem__ and __len__ read and write the segment directly
 * in the standard library's layout (shared_memory.py describes it and
 * builds new lists; it calls _layout() once the layout is known).
 *
 * Each access reads the item's format and kind from the segment, since
 * another process (on either module) may have changed them. The formats
 * that the standard library writes (q, d, the two bool paddings, Ns) are
 * decoded here; anything else, an int out of range, or a list on some
 * other SharedMemory goes to the Python methods _slow_getitem and
 * _slow_setitem, which behave as the standard library's code does.
 */
#include "_cmp.h"

#include <stdlib.h>
#include <string.h>
#include <structmember.h> /* PyMemberDef, T_OBJECT_EX before 3.12 */

enum { KIND_NUMBER, KIND_STR, KIND_BYTES, KIND_NONE };
#define FMT_BOOL "xxxxxxx?"
#define FMT_NONE "xxxxxx?x"

typedef struct {
    PyObject_HEAD
    PyObject *dict;
    PyObject *shm;
    Py_ssize_t n;             /* items, 0 until _layout() */
    int64_t *offsets;         /* n + 1, into the data area */
    size_t data, fmts, kinds; /* offsets in the segment */
} list_object;

/* The segment's memory, when this object can use it directly (ours, open,
 * and large enough for the layout). 1: use the slow path. */
static int memory(list_object *self, unsigned char **addr)
{
    void *a;
    size_t size;
    if (!self->offsets || !self->shm)
        return 1;
    int rc = cmp_py_shm_memory(self->shm, &a, &size);
    if (rc != 0)
        return rc;
    if (self->kinds + (size_t)self->n > size)
        return 1;
    *addr = a;
    return 0;
}

static int position(list_object *self, Py_ssize_t *i, const char *msg)
{
    if (*i < 0)
        *i += self->n;
    if (*i < 0 || *i >= self->n) {
        PyErr_SetString(PyExc_IndexError, msg);
        return -1;
    }
    return 0;
}

/* The item's format, its NULs stripped, into out (9 bytes). */
static size_t read_format(const unsigned char *mem, list_object *self, Py_ssize_t i, char *out)
{
    memcpy(out, mem + self->fmts + 8 * (size_t)i, 8);
    out[8] = '\0';
    return strlen(out);
}

/* Width of an "Ns" format, or 0. */
static size_t str_width(const char *fmt, size_t len)
{
    if (len < 2 || fmt[len - 1] != 's')
        return 0;
    size_t w = 0;
    for (size_t k = 0; k + 1 < len; k++) {
        if (fmt[k] < '0' || fmt[k] > '9')
            return 0;
        w = w * 10 + (size_t)(fmt[k] - '0');
    }
    return w;
}

static PyObject *slow_get(list_object *self, Py_ssize_t i)
{
    return PyObject_CallMethod((PyObject *)self, "_slow_getitem", "n", i);
}

static PyObject *list_item(PyObject *op, Py_ssize_t i)
{
    list_object *self = (list_object *)op;
    unsigned char *mem;
    if (position(self, &i, "index out of range") < 0)
        return NULL;
    int rc = memory(self, &mem);
    if (rc < 0)
        return NULL;
    if (rc > 0)
        return slow_get(self, i);
    char fmt[9];
    size_t len = read_format(mem, self, i, fmt);
    signed char kind = (signed char)mem[self->kinds + (size_t)i];
    const unsigned char *p = mem + self->data + (size_t)self->offsets[i];
    size_t room = (size_t)(self->offsets[i + 1] - self->offsets[i]);
    if (kind == KIND_NONE)
        return Py_NewRef(Py_None); /* whatever it was packed as */
    if (kind == KIND_NUMBER && len == 1 && room >= 8) {
        if (fmt[0] == 'q') {
            long long v;
            memcpy(&v, p, sizeof v);
            return PyLong_FromLongLong(v);
        }
        if (fmt[0] == 'd') {
            double v;
            memcpy(&v, p, sizeof v);
            return PyFloat_FromDouble(v);
        }
    }
    if (kind == KIND_NUMBER && room >= 8 && strcmp(fmt, FMT_BOOL) == 0)
        return PyBool_FromLong(p[7] != 0);
    size_t w = str_width(fmt, len);
    if ((kind == KIND_STR || kind == KIND_BYTES) && w && w <= room) {
        while (w > 0 && p[w - 1] == 0)
            w--;
        if (kind == KIND_STR)
            return PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)w, NULL);
        return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)w);
    }
    return slow_get(self, i);
}

static int slow_set(list_object *self, Py_ssize_t i, PyObject *value)
{
    PyObject *r = PyObject_CallMethod((PyObject *)self, "_slow_setitem", "nO", i, value);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static void write_format(unsigned char *mem, list_object *self, Py_ssize_t i, const char *fmt,
                         int kind)
{
    unsigned char *f = mem + self->fmts + 8 * (size_t)i;
    size_t len = strlen(fmt);
    memcpy(f, fmt, len);
    memset(f + len, 0, 8 - len);
    mem[self->kinds + (size_t)i] = (unsigned char)kind;
}

/* A str or bytes value: into its item's room, as "Ns" (the item's own N
 * when it holds one already). */
static int set_text(list_object *self, unsigned char *mem, Py_ssize_t i, PyObject *value)
{
    int kind = PyUnicode_Check(value) ? KIND_STR : KIND_BYTES;
    const char *bytes;
    Py_ssize_t len;
    if (kind == KIND_STR) {
        bytes = PyUnicode_AsUTF8AndSize(value, &len);
        if (!bytes)
            return -1;
    } else {
        bytes = PyBytes_AS_STRING(value);
        len = PyBytes_GET_SIZE(value);
    }
    size_t room = (size_t)(self->offsets[i + 1] - self->offsets[i]);
    if ((size_t)len > room) {
        PyErr_SetString(PyExc_ValueError, "bytes/str item exceeds available storage");
        return -1;
    }
    char fmt[9];
    size_t flen = read_format(mem, self, i, fmt);
    size_t w = str_width(fmt, flen);
    if (flen && fmt[flen - 1] == 's') {
        if (!w || w > room)
            return slow_set(self, i, value);
    } else {
        w = room;
        if (snprintf(fmt, sizeof fmt, "%zus", room) >= (int)sizeof fmt)
            return slow_set(self, i, value);
    }
    write_format(mem, self, i, fmt, kind);
    unsigned char *p = mem + self->data + (size_t)self->offsets[i];
    size_t n = (size_t)len < w ? (size_t)len : w; /* struct cuts what is longer */
    memcpy(p, bytes, n);
    memset(p + n, 0, w - n);
    return 0;
}

static int list_ass_item(PyObject *op, Py_ssize_t i, PyObject *value)
{
    list_object *self = (list_object *)op;
    unsigned char *mem;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "__delitem__");
        return -1;
    }
    if (position(self, &i, "assignment index out of range") < 0)
        return -1;
    int rc = memory(self, &mem);
    if (rc < 0)
        return -1;
    if (rc > 0)
        return slow_set(self, i, value);
    if (PyUnicode_Check(value) || PyBytes_Check(value))
        return set_text(self, mem, i, value);
    unsigned char word[8] = {0};
    const char *fmt;
    if (PyBool_Check(value)) {
        fmt = FMT_BOOL;
        word[7] = value == Py_True;
    } else if (value == Py_None) {
        fmt = FMT_NONE;
    } else if (PyLong_CheckExact(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow)
            return slow_set(self, i, value); /* struct's error */
        fmt = "q";
        memcpy(word, &v, sizeof v);
    } else if (PyFloat_CheckExact(value)) {
        double v = PyFloat_AS_DOUBLE(value);
        fmt = "d";
        memcpy(word, &v, sizeof v);
    } else {
        /* no format for its type: the stdlib's KeyError */
        PyErr_SetObject(PyExc_KeyError, (PyObject *)Py_TYPE(value));
        return -1;
    }
    if (self->offsets[i + 1] - self->offsets[i] < 8)
        return slow_set(self, i, value);
    write_format(mem, self, i, fmt, value == Py_None ? KIND_NONE : KIND_NUMBER);
    memcpy(mem + self->data + (size_t)self->offsets[i], word, sizeof word);
    return 0;
}

static PyObject *list_subscript(PyObject *op, PyObject *key)
{
    Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    return list_item(op, i);
}

static int list_ass_subscript(PyObject *op, PyObject *key, PyObject *value)
{
    Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred())
        return -1;
    return list_ass_item(op, i, value);
}

static Py_ssize_t list_length(PyObject *op)
{
    list_object *self = (list_object *)op;
    unsigned char *mem;
    int rc = memory(self, &mem);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        PyObject *r = PyObject_CallMethod(op, "_slow_len", NULL);
        Py_ssize_t n = r ? PyLong_AsSsize_t(r) : -1;
        Py_XDECREF(r);
        return n;
    }
    long long n;
    memcpy(&n, mem, sizeof n);
    return (Py_ssize_t)n;
}

static PyObject *list_iter(PyObject *op)
{
    return PySeqIter_New(op);
}

/* _layout(n, offsets): the list's shape, known once it is created or
 * attached; checked against the segment before any access trusts it. */
static PyObject *list_layout(PyObject *op, PyObject *args)
{
    list_object *self = (list_object *)op;
    Py_ssize_t n;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "nO:_layout", &n, &seq))
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "offsets must be a sequence");
    if (!fast)
        return NULL;
    if (n < 0 || PySequence_Fast_GET_SIZE(fast) != n + 1) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "a list of n + 1 offsets is needed");
        return NULL;
    }
    int64_t *offsets = PyMem_Malloc(sizeof *offsets * (size_t)(n + 1));
    if (!offsets) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0; k <= n; k++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, k));
        if (v == -1 && PyErr_Occurred()) {
            PyMem_Free(offsets);
            Py_DECREF(fast);
            return NULL;
        }
        /* a layout another process wrote is a claim: an offset going
         * backwards makes every access take the checked slow path */
        if (v < 0 || (k && v < offsets[k - 1])) {
            PyMem_Free(offsets);
            offsets = NULL;
            break;
        }
        offsets[k] = v;
    }
    Py_DECREF(fast);
    PyMem_Free(self->offsets);
    self->offsets = offsets;
    self->n = n;
    if (offsets) {
        self->data = 8 * (size_t)(n + 2);
        self->fmts = self->data + (size_t)offsets[n];
        self->kinds = self->fmts + 8 * (size_t)n;
    }
    Py_RETURN_NONE;
}

static int list_traverse(PyObject *op, visitproc visit, void *arg)
{
    list_object *self = (list_object *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->dict);
    Py_VISIT(self->shm);
    return 0;
}

static int list_clear(PyObject *op)
{
    list_object *self = (list_object *)op;
    Py_CLEAR(self->dict);
    Py_CLEAR(self->shm);
    return 0;
}

static void list_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    list_clear(op);
    PyMem_Free(((list_object *)op)->offsets);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyMethodDef list_methods[] = {
    {"_layout", list_layout, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef list_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(list_object, dict), READONLY, NULL},
    {"shm", T_OBJECT_EX, offsetof(list_object, shm), 0, "The SharedMemory holding the list."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot list_slots[] = {
    {Py_tp_doc, "Item access of shared_memory.ShareableList, in C."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, list_dealloc},
    {Py_tp_traverse, list_traverse},
    {Py_tp_clear, list_clear},
    {Py_tp_iter, list_iter},
    {Py_tp_methods, list_methods},
    {Py_tp_members, list_members},
    {Py_sq_length, list_length},
    {Py_sq_item, list_item},
    {Py_sq_ass_item, list_ass_item},
    {Py_mp_length, list_length},
    {Py_mp_subscript, list_subscript},
    {Py_mp_ass_subscript, list_ass_subscript},
    {0, NULL},
};

static PyType_Spec list_spec = {
    .name = "cmultiprocessing.shared_memory._ShareableListBase",
    .basicsize = sizeof(list_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = list_slots,
};

int cmp_py_shareable_list_init(PyObject *module, cmp_py_state *st)
{
    st->ShareableListBase_type = cmp_py_add_type(module, &list_spec, NULL);
    return st->ShareableListBase_type ? 0 : -1;
}
