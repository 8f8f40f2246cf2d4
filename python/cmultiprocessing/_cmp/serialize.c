/*
 * Messages: a Python object turned into bytes for a queue or a connection,
 * and back.
 *
 * Small built-in values (None, bools, ints that fit 64 bits, floats, str,
 * bytes, and tuples/lists/dicts of those) take a compact tagged encoding
 * written and read here without calling pickle. Top-level bytes, bytearray
 * and contiguous memoryviews are sent raw whatever their size. Everything
 * else is pickled with protocol 5 and out-of-band buffers, so the payload of
 * a numpy array is not copied into the pickle stream:
 *
 *     [T_PICKLE][u32 nbuf][u64 pickle_len][u64 len|RO bit per buffer]
 *     [pickle bytes][buffer 1][buffer 2]...
 *
 * The encoder yields the message as a list of pieces (an iovec gather list)
 * pointing into the objects themselves, so the only copy is the one into
 * shared memory. The decoder reads the head first, allocates every result
 * object at its final size and lets the caller copy the rest of the message
 * straight into them (the only copy out); pickle.loads then runs after the
 * caller has let go of the shared memory.
 *
 * Integers are little-endian, unaligned (memcpy).
 */
#include "_cmp.h"

#include <string.h>

enum {
    T_NONE = 0x01,
    T_FALSE,
    T_TRUE,
    T_INT8,      /* i8 */
    T_INT64,     /* i64 */
    T_FLOAT,     /* f64 */
    T_ASCII8,    /* u8 len, ASCII bytes */
    T_ASCII,     /* u64 len, ASCII bytes */
    T_UTF8_8,    /* u8 len, UTF-8 bytes */
    T_UTF8,      /* u64 len, UTF-8 bytes */
    T_BYTES8,    /* u8 len, bytes */
    T_BYTES,     /* u64 len, bytes */
    T_BYTEARRAY, /* u64 len, bytes */
    T_TUPLE,     /* u32 count, items */
    T_LIST,      /* u32 count, items */
    T_DICT,      /* u32 count, key value pairs */
    T_PICKLE = 0x50,
    T_TAIL1 = 0x61, /* last byte of large bytes: 1 byte after the payload */
    T_TAIL2,        /* ... 2 bytes after it */
};

/* Lengths above this go to the ring from the object's own memory instead of
 * being copied into the frame's buffer first. */
#define EXTERNAL_MIN 4096
/* Fast-path limits: deeper or larger values are pickled. */
#define FAST_MAX_DEPTH 8
#define FAST_MAX_MUTABLE 32
#define READONLY_BIT (UINT64_C(1) << 63)

/* ---- encoding ---------------------------------------------------------- */

typedef struct {
    const PyObject **mutable; /* lists and dicts seen, to detect aliasing */
    int nmutable;
    const PyObject *mutable_inline[FAST_MAX_MUTABLE];
} fast_ctx;

static int frame_reserve(cmp_py_frame *f, size_t extra)
{
    if (f->len + extra <= f->cap)
        return 0;
    size_t cap = f->cap * 2;
    while (cap < f->len + extra)
        cap *= 2;
    char *p;
    if (f->buf == f->inline_buf) {
        p = PyMem_Malloc(cap);
        if (p)
            memcpy(p, f->buf, f->len);
    } else {
        p = PyMem_Realloc(f->buf, cap);
    }
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    f->buf = p;
    f->cap = cap;
    return 0;
}

static inline int put_u8(cmp_py_frame *f, unsigned v)
{
    if (f->len + 1 > f->cap && frame_reserve(f, 1) < 0)
        return -1;
    f->buf[f->len++] = (char)v;
    return 0;
}

static inline int put_raw(cmp_py_frame *f, const void *p, size_t n)
{
    if (f->len + n > f->cap && frame_reserve(f, n) < 0)
        return -1;
    memcpy(f->buf + f->len, p, n);
    f->len += n;
    return 0;
}

static inline int put_tag_u64(cmp_py_frame *f, unsigned tag, uint64_t v)
{
    if (f->len + 9 > f->cap && frame_reserve(f, 9) < 0)
        return -1;
    f->buf[f->len] = (char)tag;
    memcpy(f->buf + f->len + 1, &v, 8);
    f->len += 9;
    return 0;
}

static inline int put_tag_u32(cmp_py_frame *f, unsigned tag, uint32_t v)
{
    if (f->len + 5 > f->cap && frame_reserve(f, 5) < 0)
        return -1;
    f->buf[f->len] = (char)tag;
    memcpy(f->buf + f->len + 1, &v, 4);
    f->len += 5;
    return 0;
}

/* Appends a piece to a growable array whose first storage is inline. */
static int pieces_push(cmp_py_piece **pieces, int *n, int *cap, cmp_py_piece *inline_pieces,
                       cmp_py_piece piece)
{
    if (*n == *cap) {
        int ncap = *cap * 2;
        cmp_py_piece *p;
        if (*pieces == inline_pieces) {
            p = PyMem_Malloc(ncap * sizeof *p);
            if (p)
                memcpy(p, *pieces, *n * sizeof *p);
        } else {
            p = PyMem_Realloc(*pieces, ncap * sizeof *p);
        }
        if (!p) {
            PyErr_NoMemory();
            return -1;
        }
        *pieces = p;
        *cap = ncap;
    }
    (*pieces)[(*n)++] = piece;
    return 0;
}

/* Closes the current run of frame-buffer bytes as a piece (its address is
 * filled in by frame_finish: the buffer may still move). */
static int frame_cut(cmp_py_frame *f)
{
    if (f->len == f->cut)
        return 0;
    if (pieces_push(&f->pieces, &f->npieces, &f->cap_pieces, f->inline_pieces,
                    (cmp_py_piece){NULL, f->len - f->cut, f->cut}) < 0)
        return -1;
    f->cut = f->len;
    return 0;
}

/* Adds n bytes at p, kept alive by the caller, as a piece of their own. */
static int frame_external(cmp_py_frame *f, const void *p, size_t n)
{
    if (frame_cut(f) < 0 || pieces_push(&f->pieces, &f->npieces, &f->cap_pieces, f->inline_pieces,
                                        (cmp_py_piece){(void *)p, n, 0}) < 0)
        return -1;
    f->size += n;
    return 0;
}

/* Keeps obj alive until the frame is cleared (its memory is a piece). */
static int frame_keep(cmp_py_frame *f, PyObject *obj)
{
    if (!f->keep) {
        f->keep = PyList_New(0);
        if (!f->keep)
            return -1;
    }
    return PyList_Append(f->keep, obj);
}

static int put_bytes_like(cmp_py_frame *f, unsigned tag8, unsigned tag, const char *p, size_t n,
                          PyObject *owner)
{
    if (n < 256 && tag8) {
        if (f->len + 2 + n > f->cap && frame_reserve(f, 2 + n) < 0)
            return -1;
        f->buf[f->len] = (char)tag8;
        f->buf[f->len + 1] = (char)n;
        memcpy(f->buf + f->len + 2, p, n);
        f->len += 2 + n;
        return 0;
    }
    if (put_tag_u64(f, tag, n) < 0)
        return -1;
    if (n < EXTERNAL_MIN || !owner)
        return put_raw(f, p, n);
    if (frame_keep(f, owner) < 0)
        return -1;
    return frame_external(f, p, n);
}

/* Returns 0 encoded, 1 not a fast-path value (the frame is then left
 * partly written: the caller resets it), -1 with an exception. */
static int fast_encode(cmp_py_frame *f, PyObject *obj, int depth, fast_ctx *cx)
{
    PyTypeObject *tp = Py_TYPE(obj);
    if (obj == Py_None)
        return put_u8(f, T_NONE);
    if (obj == Py_True)
        return put_u8(f, T_TRUE);
    if (obj == Py_False)
        return put_u8(f, T_FALSE);
    if (tp == &PyLong_Type) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (overflow)
            return 1;
        if (v >= -128 && v <= 127) {
            if (f->len + 2 > f->cap && frame_reserve(f, 2) < 0)
                return -1;
            f->buf[f->len] = T_INT8;
            f->buf[f->len + 1] = (char)(signed char)v;
            f->len += 2;
            return 0;
        }
        int64_t v64 = v;
        return put_tag_u64(f, T_INT64, (uint64_t)v64);
    }
    if (tp == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(obj);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        return put_tag_u64(f, T_FLOAT, bits);
    }
    if (tp == &PyUnicode_Type) {
        Py_ssize_t n;
        const char *s;
        if (PyUnicode_IS_ASCII(obj)) {
            s = (const char *)PyUnicode_DATA(obj);
            n = PyUnicode_GET_LENGTH(obj);
            return put_bytes_like(f, T_ASCII8, T_ASCII, s, (size_t)n, obj);
        }
        s = PyUnicode_AsUTF8AndSize(obj, &n);
        if (!s) { /* lone surrogates: pickle knows how */
            PyErr_Clear();
            return 1;
        }
        return put_bytes_like(f, T_UTF8_8, T_UTF8, s, (size_t)n, obj);
    }
    if (tp == &PyBytes_Type)
        return put_bytes_like(f, T_BYTES8, T_BYTES, PyBytes_AS_STRING(obj),
                              (size_t)PyBytes_GET_SIZE(obj), obj);
    if (depth >= FAST_MAX_DEPTH)
        return 1;
    if (tp == &PyTuple_Type) {
        Py_ssize_t n = PyTuple_GET_SIZE(obj);
        if (put_tag_u32(f, T_TUPLE, (uint32_t)n) < 0)
            return -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            int rc = fast_encode(f, PyTuple_GET_ITEM(obj, i), depth + 1, cx);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (tp == &PyList_Type || tp == &PyDict_Type) {
        /* pickle keeps a container that appears twice as one object (and
         * handles cycles): leave those to it */
        for (int i = 0; i < cx->nmutable; i++)
            if (cx->mutable[i] == obj)
                return 1;
        if (cx->nmutable == FAST_MAX_MUTABLE)
            return 1;
        cx->mutable[cx->nmutable++] = obj;
        if (tp == &PyList_Type) {
            /* the list cannot change under us: nothing here runs Python code
             * or releases the GIL */
            Py_ssize_t n = PyList_GET_SIZE(obj);
            if (put_tag_u32(f, T_LIST, (uint32_t)n) < 0)
                return -1;
            for (Py_ssize_t i = 0; i < n; i++) {
                int rc = fast_encode(f, PyList_GET_ITEM(obj, i), depth + 1, cx);
                if (rc)
                    return rc;
            }
            return 0;
        }
        Py_ssize_t n = PyDict_GET_SIZE(obj), pos = 0;
        PyObject *k, *v;
        if (put_tag_u32(f, T_DICT, (uint32_t)n) < 0)
            return -1;
        while (PyDict_Next(obj, &pos, &k, &v)) {
            int rc = fast_encode(f, k, depth + 1, cx);
            if (!rc)
                rc = fast_encode(f, v, depth + 1, cx);
            if (rc)
                return rc;
        }
        return 0;
    }
    return 1;
}

static void frame_reset(cmp_py_frame *f)
{
    for (int i = 0; i < f->nviews; i++)
        PyBuffer_Release(&f->views[i]);
    f->nviews = 0;
    Py_CLEAR(f->keep);
    f->len = f->cut = 0;
    f->npieces = 0;
    f->size = 0;
}

void cmp_py_frame_init(cmp_py_frame *f)
{
    f->buf = f->inline_buf;
    f->cap = sizeof f->inline_buf;
    f->pieces = f->inline_pieces;
    f->cap_pieces = (int)(sizeof f->inline_pieces / sizeof f->inline_pieces[0]);
    f->views = NULL;
    f->nviews = 0;
    f->keep = NULL;
    f->len = f->cut = 0;
    f->npieces = 0;
    f->size = 0;
}

void cmp_py_frame_clear(cmp_py_frame *f)
{
    frame_reset(f);
    if (f->buf != f->inline_buf)
        PyMem_Free(f->buf);
    if (f->pieces != f->inline_pieces)
        PyMem_Free(f->pieces);
    PyMem_Free(f->views);
    cmp_py_frame_init(f);
}

/* Fills iov[] with the pieces; the frame must not be changed while they
 * are in use. */
static void frame_finish(cmp_py_frame *f)
{
    for (int i = 0; i < f->npieces; i++)
        if (!f->pieces[i].ptr)
            f->pieces[i].ptr = f->buf + f->pieces[i].off;
}

static int add_view(cmp_py_frame *f, PyObject *obj, Py_buffer **out)
{
    Py_buffer *v = PyMem_Realloc(f->views, (f->nviews + 1) * sizeof *v);
    if (!v) {
        PyErr_NoMemory();
        return -1;
    }
    f->views = v;
    if (PyObject_GetBuffer(obj, &v[f->nviews], PyBUF_ANY_CONTIGUOUS) < 0)
        return -1;
    *out = &v[f->nviews++];
    return 0;
}

/* Appends n bytes at p, owned by owner, as small bytes are (copied) or
 * large ones are (pointed to, owner kept alive). */
static int put_owned(cmp_py_frame *f, const char *p, size_t n, PyObject *owner)
{
    if (n < EXTERNAL_MIN)
        return put_raw(f, p, n);
    if (frame_keep(f, owner) < 0)
        return -1;
    return frame_external(f, p, n);
}

static int pickle_encode(cmp_py_state *st, cmp_py_frame *f, PyObject *obj)
{
    cmp_py_pickling pk;
    if (cmp_py_pickle_begin(st, 1, obj, &pk) < 0)
        return -1;
    int rc = -1;
    Py_ssize_t nchunks = PyList_GET_SIZE(pk.chunks), nbuf = PyList_GET_SIZE(pk.buffers);
    if (nbuf > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many out-of-band buffers");
        goto done;
    }
    /* the stream's chunks are the pickler's bytes objects, except a large
     * bytearray it streams from the object itself */
    uint64_t plen = 0;
    int views_from = f->nviews;
    for (Py_ssize_t i = 0; i < nchunks; i++) {
        PyObject *c = PyList_GET_ITEM(pk.chunks, i);
        if (PyBytes_CheckExact(c)) {
            plen += (uint64_t)PyBytes_GET_SIZE(c);
        } else {
            Py_buffer *view;
            if (add_view(f, c, &view) < 0)
                goto done;
            plen += (uint64_t)view->len;
        }
    }
    if (put_tag_u32(f, T_PICKLE, (uint32_t)nbuf) < 0)
        goto done;
    if (put_raw(f, &plen, 8) < 0 || frame_reserve(f, 8 * (size_t)nbuf) < 0)
        goto done;
    size_t table = f->len;
    f->len += 8 * (size_t)nbuf;
    for (Py_ssize_t i = 0, v = views_from; i < nchunks; i++) {
        PyObject *c = PyList_GET_ITEM(pk.chunks, i);
        int r;
        if (PyBytes_CheckExact(c)) {
            r = put_owned(f, PyBytes_AS_STRING(c), (size_t)PyBytes_GET_SIZE(c), c);
        } else {
            Py_buffer *view = &f->views[v++]; /* held until the frame is cleared */
            r = view->len < EXTERNAL_MIN ? put_raw(f, view->buf, (size_t)view->len)
                                         : frame_external(f, view->buf, (size_t)view->len);
        }
        if (r < 0)
            goto done;
    }
    for (Py_ssize_t i = 0; i < nbuf; i++) {
        Py_buffer *view;
        if (add_view(f, PyList_GET_ITEM(pk.buffers, i), &view) < 0)
            goto done;
        uint64_t entry = (uint64_t)view->len | (view->readonly ? READONLY_BIT : 0);
        memcpy(f->buf + table + 8 * i, &entry, 8);
        if (view->len < EXTERNAL_MIN) {
            if (put_raw(f, view->buf, (size_t)view->len) < 0)
                goto done;
        } else if (frame_external(f, view->buf, (size_t)view->len) < 0) {
            goto done;
        }
    }
    rc = 0;
done:
    cmp_py_pickle_end(&pk);
    return rc;
}

int cmp_py_encode(cmp_py_state *st, PyObject *obj, cmp_py_frame *f)
{
    PyTypeObject *tp = Py_TYPE(obj);
    int rc, tail = 0;
    /* top-level buffers go raw, whatever their size */
    if (tp == &PyBytes_Type || tp == &PyByteArray_Type || tp == &PyMemoryView_Type) {
        const char *p;
        size_t n;
        if (tp == &PyBytes_Type) {
            p = PyBytes_AS_STRING(obj);
            n = (size_t)PyBytes_GET_SIZE(obj);
        } else {
            Py_buffer *view;
            if (add_view(f, obj, &view) < 0) {
                if (tp == &PyByteArray_Type)
                    return -1;
                PyErr_Clear(); /* a non-contiguous memoryview: pickle's error */
                goto slow;
            }
            p = view->buf;
            n = (size_t)view->len;
        }
        if (tp == &PyByteArray_Type) {
            rc = put_tag_u64(f, T_BYTEARRAY, n);
            if (rc == 0)
                rc = n < EXTERNAL_MIN ? put_raw(f, p, n) : frame_external(f, p, n);
        } else if (n >= CMP_PY_BIG) {
            /* a memoryview arrives as bytes (the stdlib cannot send one).
             * Large bytes: the payload first and an odd total, so that the
             * receiver copies it straight into a bytes object of its own
             * (see cmp_py_msg_new) and only trims the tail */
            tail = 1;
            rc = frame_external(f, p, n);
            if (rc == 0)
                rc = n % 2 ? ((put_u8(f, 0) < 0 || put_u8(f, T_TAIL2) < 0) ? -1 : 0)
                           : put_u8(f, T_TAIL1);
        } else {
            rc = put_bytes_like(f, T_BYTES8, T_BYTES, p, n, obj);
        }
        goto out;
    }
    fast_ctx cx;
    cx.mutable = cx.mutable_inline;
    cx.nmutable = 0;
    rc = fast_encode(f, obj, 0, &cx);
    if (rc <= 0)
        goto out;
    frame_reset(f);
slow:
    rc = pickle_encode(st, f, obj);
out:
    /* large messages other than bytes have an even size (see above) */
    if (rc == 0 && !tail && f->size + f->len >= CMP_PY_BIG && (f->size + f->len) % 2)
        rc = put_u8(f, 0);
    if (rc == 0)
        rc = frame_cut(f);
    if (rc < 0) {
        frame_reset(f);
        return -1;
    }
    f->size += f->len;
    frame_finish(f);
    return 0;
}

/* ---- decoding ---------------------------------------------------------- */

typedef struct {
    const char *p, *end;
} rd;

static PyObject *corrupt(void)
{
    PyErr_SetString(PyExc_RuntimeError, "corrupt message in queue");
    return NULL;
}

static inline int rd_take(rd *r, size_t n, const char **out)
{
    if ((size_t)(r->end - r->p) < n)
        return -1;
    *out = r->p;
    r->p += n;
    return 0;
}

static PyObject *fast_decode(rd *r, int depth)
{
    const char *p;
    uint64_t u64;
    uint32_t u32;
    if (rd_take(r, 1, &p) < 0)
        return corrupt();
    unsigned tag = (unsigned char)*p;
    switch (tag) {
    case T_NONE:
        Py_RETURN_NONE;
    case T_TRUE:
        Py_RETURN_TRUE;
    case T_FALSE:
        Py_RETURN_FALSE;
    case T_INT8:
        if (rd_take(r, 1, &p) < 0)
            return corrupt();
        return PyLong_FromLong((signed char)*p);
    case T_INT64: {
        int64_t v;
        if (rd_take(r, 8, &p) < 0)
            return corrupt();
        memcpy(&v, p, 8);
        return PyLong_FromLongLong(v);
    }
    case T_FLOAT: {
        double d;
        if (rd_take(r, 8, &p) < 0)
            return corrupt();
        memcpy(&d, p, 8);
        return PyFloat_FromDouble(d);
    }
    case T_ASCII8:
    case T_UTF8_8:
    case T_BYTES8:
        if (rd_take(r, 1, &p) < 0)
            return corrupt();
        u64 = (unsigned char)*p;
        goto sized;
    case T_ASCII:
    case T_UTF8:
    case T_BYTES:
    case T_BYTEARRAY:
        if (rd_take(r, 8, &p) < 0)
            return corrupt();
        memcpy(&u64, p, 8);
    sized:
        if (u64 > (uint64_t)(r->end - r->p) || rd_take(r, (size_t)u64, &p) < 0)
            return corrupt();
        switch (tag) {
        case T_ASCII8:
        case T_ASCII: {
            PyObject *s = PyUnicode_New((Py_ssize_t)u64, 127);
            if (s)
                memcpy(PyUnicode_DATA(s), p, (size_t)u64);
            return s;
        }
        case T_UTF8_8:
        case T_UTF8:
            return PyUnicode_DecodeUTF8(p, (Py_ssize_t)u64, "surrogatepass");
        case T_BYTEARRAY:
            return PyByteArray_FromStringAndSize(p, (Py_ssize_t)u64);
        default:
            return PyBytes_FromStringAndSize(p, (Py_ssize_t)u64);
        }
    case T_TUPLE:
    case T_LIST:
    case T_DICT:
        if (depth >= FAST_MAX_DEPTH || rd_take(r, 4, &p) < 0)
            return corrupt();
        memcpy(&u32, p, 4);
        if (u32 > (size_t)(r->end - r->p)) /* every item takes a byte or more */
            return corrupt();
        if (tag == T_TUPLE) {
            PyObject *t = PyTuple_New(u32);
            for (uint32_t i = 0; t && i < u32; i++) {
                PyObject *item = fast_decode(r, depth + 1);
                if (!item)
                    Py_CLEAR(t);
                else
                    PyTuple_SET_ITEM(t, i, item);
            }
            return t;
        }
        if (tag == T_LIST) {
            PyObject *l = PyList_New(u32);
            for (uint32_t i = 0; l && i < u32; i++) {
                PyObject *item = fast_decode(r, depth + 1);
                if (!item)
                    Py_CLEAR(l);
                else
                    PyList_SET_ITEM(l, i, item);
            }
            return l;
        }
        {
            PyObject *d = PyDict_New();
            for (uint32_t i = 0; d && i < u32; i++) {
                PyObject *k = fast_decode(r, depth + 1);
                PyObject *v = k ? fast_decode(r, depth + 1) : NULL;
                if (!v || PyDict_SetItem(d, k, v) < 0)
                    Py_CLEAR(d);
                Py_XDECREF(k);
                Py_XDECREF(v);
            }
            return d;
        }
    default:
        return corrupt();
    }
}

/* A pickled message: [T_PICKLE][u32 nbuf][u64 plen][u64 len|RO]*nbuf
 * [pickle][buffers] in data (len bytes, maybe one pad byte). With view (a
 * memoryview of the message's own bytearray) the parts are slices of it;
 * without, copies. */
static PyObject *decode_pickle(cmp_py_state *st, const char *data, size_t len, PyObject *view)
{
    uint32_t nbuf;
    uint64_t plen;
    if (len < 13)
        return corrupt();
    memcpy(&nbuf, data + 1, 4);
    memcpy(&plen, data + 5, 8);
    size_t hlen = 13 + 8 * (size_t)nbuf;
    if (hlen > len || plen > len - hlen)
        return corrupt();
    uint64_t sum = plen;
    for (uint32_t i = 0; i < nbuf; i++) {
        uint64_t e;
        memcpy(&e, data + 13 + 8 * (size_t)i, 8);
        sum += e & ~READONLY_BIT;
        if (sum > len - hlen)
            return corrupt();
    }
    if (len - hlen - sum > 1)
        return corrupt();
    PyObject *pickled = NULL, *buffers = PyList_New(nbuf), *r = NULL;
    if (!buffers)
        return NULL;
    size_t off = hlen;
    if (view)
        pickled = PySequence_GetSlice(view, (Py_ssize_t)off, (Py_ssize_t)(off + plen));
    else
        pickled = PyBytes_FromStringAndSize(data + off, (Py_ssize_t)plen);
    if (!pickled)
        goto done;
    off += plen;
    for (uint32_t i = 0; i < nbuf; i++) {
        uint64_t e;
        memcpy(&e, data + 13 + 8 * (size_t)i, 8);
        Py_ssize_t n = (Py_ssize_t)(e & ~READONLY_BIT);
        PyObject *b;
        /* writable buffers (a numpy array's) come back writable; pickle
         * makes the read-only ones read-only again */
        if (view)
            b = PySequence_GetSlice(view, (Py_ssize_t)off, (Py_ssize_t)off + n);
        else if (e & READONLY_BIT)
            b = PyBytes_FromStringAndSize(data + off, n);
        else
            b = PyByteArray_FromStringAndSize(data + off, n);
        if (!b)
            goto done;
        PyList_SET_ITEM(buffers, i, b);
        off += (size_t)n;
    }
    PyObject *args[2] = {pickled, buffers};
    r = PyObject_Vectorcall(st->pickle_loads, args, 1, st->kw_buffers);
done:
    Py_XDECREF(pickled);
    Py_DECREF(buffers);
    return r;
}

PyObject *cmp_py_decode(cmp_py_state *st, const char *data, size_t len)
{
    if (len == 0)
        return corrupt();
    unsigned tag = (unsigned char)data[0];
    if (len >= CMP_PY_BIG && len % 2) { /* large bytes, payload first */
        unsigned last = (unsigned char)data[len - 1];
        size_t n = last == T_TAIL1 ? len - 1 : last == T_TAIL2 ? len - 2 : (size_t)-1;
        if (n == (size_t)-1)
            return corrupt();
        return PyBytes_FromStringAndSize(data, (Py_ssize_t)n);
    }
    if (tag == T_PICKLE)
        return decode_pickle(st, data, len, NULL);
    rd r = {data, data + len};
    PyObject *v = fast_decode(&r, 0);
    /* large messages may end with a pad byte */
    if (v && r.p != r.end && !(len >= CMP_PY_BIG && r.p + 1 == r.end)) {
        Py_DECREF(v);
        return corrupt();
    }
    return v;
}

Py_ssize_t cmp_py_decode_list_into(const char *data, size_t len, PyObject *dst, Py_ssize_t start)
{
    if (len < 5 || (unsigned char)data[0] != T_LIST || (len >= CMP_PY_BIG && len % 2))
        return -2; /* pickled, or large bytes: not a fast list */
    uint32_t n;
    memcpy(&n, data + 1, 4);
    if (start < 0 || (Py_ssize_t)n > PyList_GET_SIZE(dst) - start) {
        corrupt();
        return -1;
    }
    rd r = {data + 5, data + len};
    for (uint32_t i = 0; i < n; i++) {
        PyObject *item = fast_decode(&r, 1);
        if (!item)
            return -1;
        PyObject *old = PyList_GET_ITEM(dst, start + (Py_ssize_t)i);
        PyList_SET_ITEM(dst, start + (Py_ssize_t)i, item);
        Py_XDECREF(old);
    }
    if (r.p != r.end && !(len >= CMP_PY_BIG && r.p + 1 == r.end)) {
        corrupt();
        return -1;
    }
    return (Py_ssize_t)n;
}

PyObject *cmp_py_msg_new(size_t len, char **data)
{
    PyObject *o;
    if (len % 2) {
        o = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
        if (o)
            *data = PyBytes_AS_STRING(o);
    } else {
        o = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)len);
        if (o)
            *data = PyByteArray_AS_STRING(o);
    }
    return o;
}

PyObject *cmp_py_decode_owned(cmp_py_state *st, PyObject *owner, size_t len)
{
    if (len % 2) {
        /* large bytes, payload first: trim the tail in place */
        const char *data = PyBytes_AS_STRING(owner);
        unsigned last = (unsigned char)data[len - 1];
        size_t n = last == T_TAIL1 ? len - 1 : last == T_TAIL2 ? len - 2 : (size_t)-1;
        if (n == (size_t)-1) {
            Py_DECREF(owner);
            return corrupt();
        }
        if (_PyBytes_Resize(&owner, (Py_ssize_t)n) < 0)
            return NULL;
        return owner;
    }
    const char *data = PyByteArray_AS_STRING(owner);
    unsigned tag = (unsigned char)data[0];
    PyObject *r;
    if (tag == T_BYTEARRAY && len >= 9) {
        /* the message's own bytearray is the value: drop the head (O(1):
         * bytearray moves its start) and the pad */
        uint64_t n;
        memcpy(&n, data + 1, 8);
        if (n != len - 9 && n != len - 10) {
            Py_DECREF(owner);
            return corrupt();
        }
        if (PySequence_DelSlice(owner, 0, 9) < 0 || PyByteArray_Resize(owner, (Py_ssize_t)n) < 0) {
            Py_DECREF(owner);
            return NULL;
        }
        return owner;
    }
    r = cmp_py_decode_at(st, owner, 0, len);
    Py_DECREF(owner);
    return r;
}

PyObject *cmp_py_decode_at(cmp_py_state *st, PyObject *owner, size_t offset, size_t len)
{
    /* a bytearray, or memory of another owner's (a serving MPI rank's
     * shared arena): its buffer's address stays while owner lives */
    Py_buffer b;
    if (PyObject_GetBuffer(owner, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *data = (const char *)b.buf + offset;
    PyBuffer_Release(&b);
    if (len == 0 || (unsigned char)data[0] != T_PICKLE)
        return cmp_py_decode(st, data, len);
    /* out-of-band buffers are slices of the message: no second copy */
    PyObject *whole = PyMemoryView_FromObject(owner);
    PyObject *view =
        whole ? PySequence_GetSlice(whole, (Py_ssize_t)offset, (Py_ssize_t)(offset + len)) : NULL;
    Py_XDECREF(whole);
    PyObject *r = view ? decode_pickle(st, data, len, view) : NULL;
    Py_XDECREF(view);
    return r;
}

/* A message in PyMem_RawMalloc'd memory (a pool's outcome), owned by an
 * object that frees it when the last view of it goes. */
typedef struct {
    PyObject_HEAD
    void *data;
    Py_ssize_t len;
} raw_message;

static PyTypeObject *raw_message_type; /* one per process, as the memory's allocator */

static int raw_message_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    raw_message *m = (raw_message *)self;
    /* writable: the arrays decoded from it are the caller's, as copies were */
    return PyBuffer_FillInfo(view, self, m->data, m->len, 0, flags);
}

static void raw_message_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyMem_RawFree(((raw_message *)self)->data);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot raw_message_slots[] = {
    {Py_bf_getbuffer, raw_message_getbuffer},
    {Py_tp_dealloc, raw_message_dealloc},
    {0, NULL},
};

static PyType_Spec raw_message_spec = {
    "cmultiprocessing._cmp.RawMessage",
    sizeof(raw_message),
    0,
    Py_TPFLAGS_DEFAULT,
    raw_message_slots,
};

PyObject *cmp_py_decode_raw(cmp_py_state *st, void **data, size_t len)
{
    if (len < CMP_PY_BIG || (unsigned char)((char *)*data)[0] != T_PICKLE)
        return cmp_py_decode(st, *data, len);
    raw_message *m = PyObject_New(raw_message, raw_message_type);
    if (!m)
        return NULL;
    Py_INCREF(raw_message_type); /* a heap type's instances hold it */
    m->data = *data;
    m->len = (Py_ssize_t)len;
    *data = NULL; /* the object's now, whatever comes of the decoding */
    PyObject *r = cmp_py_decode_at(st, (PyObject *)m, 0, len);
    Py_DECREF(m);
    return r;
}

/* ---- Python-level helpers (for tests) ---------------------------------- */

void cmp_py_frame_copy(const cmp_py_frame *f, char *dst)
{
    for (int i = 0; i < f->npieces; i++) {
        memcpy(dst, f->pieces[i].ptr, f->pieces[i].len);
        dst += f->pieces[i].len;
    }
}

PyObject *cmp_py_encode_bytes(cmp_py_state *st, PyObject *obj)
{
    cmp_py_frame f;
    cmp_py_frame_init(&f);
    if (cmp_py_encode(st, obj, &f) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)f.size);
    if (out)
        cmp_py_frame_copy(&f, PyBytes_AS_STRING(out));
    cmp_py_frame_clear(&f);
    return out;
}

static PyObject *py_dumps(PyObject *module, PyObject *obj)
{
    return cmp_py_encode_bytes(cmp_py_state_of_module(module), obj);
}

/* Decodes as a queue does: small messages from memory, large ones in an
 * object of their own. */
static PyObject *py_loads(PyObject *module, PyObject *data)
{
    cmp_py_state *st = cmp_py_state_of_module(module);
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *r;
    if ((size_t)view.len < CMP_PY_BIG) {
        r = cmp_py_decode(st, view.buf, (size_t)view.len);
    } else {
        char *dst;
        PyObject *owner = cmp_py_msg_new((size_t)view.len, &dst);
        if (owner)
            memcpy(dst, view.buf, (size_t)view.len);
        r = owner ? cmp_py_decode_owned(st, owner, (size_t)view.len) : NULL;
    }
    PyBuffer_Release(&view);
    return r;
}

static PyMethodDef serialize_functions[] = {
    {"_dumps", py_dumps, METH_O,
     "_dumps(obj)\n--\n\nobj as the bytes of one queue message (for tests)."},
    {"_loads", py_loads, METH_O,
     "_loads(data)\n--\n\nThe object of one queue message (for tests)."},
    {NULL, NULL, 0, NULL},
};

int cmp_py_serialize_init(PyObject *module, cmp_py_state *st)
{
    PyObject *pickle = PyImport_ImportModule("_pickle");
    if (!pickle)
        return -1;
    st->pickle_loads = PyObject_GetAttrString(pickle, "loads");
    Py_DECREF(pickle);
    if (!st->pickle_loads)
        return -1;
    if (!raw_message_type &&
        !(raw_message_type = (PyTypeObject *)PyType_FromSpec(&raw_message_spec)))
        return -1;
    st->pickle_protocol = PyLong_FromLong(5);
    st->kw_buffers = Py_BuildValue("(s)", "buffers");
    if (!st->pickle_protocol || !st->kw_buffers)
        return -1;
    return PyModule_AddFunctions(module, serialize_functions);
}
