/*
 * A manager's messages and addresses, for its server (manager.c) and its
 * clients (manager_channel.c). A request is the stdlib's (id, methodname,
 * args, kwds) and a reply its (kind, result), in one of three encodings,
 * told apart by the first byte: the compact encoding of serialize.c (a
 * mailbox between two of ours), a pickle (0x80: sockets, which may lead
 * to the stdlib), or XML-RPC ('<': the stdlib's serializer='xmlrpclib').
 */
#include "_cmp.h"

#include <sys/socket.h>

static PyObject *s_join;

/* A message as a pickle (socket peers, which may be the stdlib): new bytes,
 * or NULL with the pickling exception. */
static PyObject *pickle_bytes(cmp_py_state *st, PyObject *obj)
{
    if (!s_join && !(s_join = PyUnicode_InternFromString("join")))
        return NULL;
    cmp_py_pickling p;
    if (cmp_py_pickle_begin(st, 0, obj, &p) < 0)
        return NULL;
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    PyObject *r = empty ? PyObject_CallMethodOneArg(empty, s_join, p.chunks) : NULL;
    Py_XDECREF(empty);
    cmp_py_pickle_end(&p);
    return r;
}

/* The stdlib's serializer='xmlrpclib': a message is the UTF-8 XML of
 * xmlrpc.client.dumps((obj,)). Tuples come back as lists. */
static PyObject *xml_dumps, *xml_loads;

static int xml_init(void)
{
    if (xml_dumps)
        return 0;
    PyObject *m = PyImport_ImportModule("xmlrpc.client");
    xml_dumps = m ? PyObject_GetAttrString(m, "dumps") : NULL;
    xml_loads = xml_dumps ? PyObject_GetAttrString(m, "loads") : NULL;
    Py_XDECREF(m);
    if (!xml_loads)
        Py_CLEAR(xml_dumps);
    return xml_loads ? 0 : -1;
}

static PyObject *xml_bytes(PyObject *obj)
{
    if (xml_init() < 0)
        return NULL;
    PyObject *s = PyObject_CallFunction(xml_dumps, "(O)OOOi", obj, Py_None, Py_None, Py_None, 1);
    PyObject *b = s ? PyUnicode_AsUTF8String(s) : NULL;
    Py_XDECREF(s);
    return b;
}

static PyObject *xml_decode(const char *data, size_t len)
{
    if (xml_init() < 0)
        return NULL;
    PyObject *s = PyUnicode_DecodeUTF8(data, (Py_ssize_t)len, NULL);
    PyObject *r = s ? PyObject_CallOneArg(xml_loads, s) : NULL;
    Py_XDECREF(s);
    PyObject *params =
        r && PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2 ? PyTuple_GET_ITEM(r, 0) : NULL;
    PyObject *obj = NULL;
    if (params && PyTuple_Check(params) && PyTuple_GET_SIZE(params) == 1) {
        obj = PyTuple_GET_ITEM(params, 0);
        /* a request or a reply: the tuple it was */
        obj = PyList_Check(obj) ? PyList_AsTuple(obj) : Py_NewRef(obj);
    } else if (r) {
        PyErr_SetString(PyExc_ValueError, "an XML-RPC message of one value was expected");
    }
    Py_XDECREF(r);
    return obj;
}

int cmp_py_mgr_encoding_of(const void *data, size_t len)
{
    unsigned char b = len ? ((const unsigned char *)data)[0] : 0;
    return b == 0x80 ? CMP_PY_MGR_PICKLE : b == '<' ? CMP_PY_MGR_XML : CMP_PY_MGR_COMPACT;
}

/* A message for a socket (pickle) or of the xmlrpclib serializer. */
PyObject *cmp_py_mgr_encode_bytes(cmp_py_state *st, PyObject *obj, int enc)
{
    return enc == CMP_PY_MGR_XML ? xml_bytes(obj) : pickle_bytes(st, obj);
}

PyObject *cmp_py_mgr_decode(cmp_py_state *st, const void *data, size_t len)
{
    if (cmp_py_mgr_encoding_of(data, len) == CMP_PY_MGR_XML)
        return xml_decode(data, len);
    if (len && ((const unsigned char *)data)[0] == 0x80) {
        PyObject *mv = PyMemoryView_FromMemory((char *)data, (Py_ssize_t)len, PyBUF_READ);
        if (!mv)
            return NULL;
        PyObject *r = PyObject_CallOneArg(st->pickle_loads, mv);
        Py_DECREF(mv);
        return r;
    }
    return cmp_py_decode(st, data, len);
}

int cmp_py_mgr_addr(PyObject *address, struct sockaddr_storage *sa, socklen_t *len)
{
    return cmp_py_to_sockaddr(PyTuple_Check(address) ? AF_INET : AF_UNIX, address, sa, len);
}
