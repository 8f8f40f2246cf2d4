/*
 * Shared declarations of the _cmp extension: module state and the init
 * function of each concept file (one file per concept, mirroring src/).
 */
#ifndef CMP_PY_CMP_H
#define CMP_PY_CMP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cmp.h"

/* Python 3.9 lacks a few conveniences of 3.10. */
#if PY_VERSION_HEX < 0x030A0000
static inline int PyModule_AddObjectRef(PyObject *m, const char *name, PyObject *v)
{
    Py_INCREF(v);
    if (PyModule_AddObject(m, name, v) < 0) {
        Py_DECREF(v);
        return -1;
    }
    return 0;
}
static inline PyObject *cmp_py_new_ref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
/* A macro as in 3.10, so that any object pointer converts. */
#define Py_NewRef(o) cmp_py_new_ref((PyObject *)(o))
#endif

typedef struct {
    /* synchronization (lock.c, rlock.c, semaphore.c, event.c, condition.c,
     * barrier.c) */
    PyTypeObject *Lock_type;
    PyTypeObject *RLock_type;
    PyTypeObject *Semaphore_type;
    PyTypeObject *BoundedSemaphore_type;
    PyTypeObject *Event_type;
    PyTypeObject *Condition_type;
    PyTypeObject *Barrier_type;
    PyObject *BrokenBarrierError;   /* threading.BrokenBarrierError */
    PyObject *AbandonedLockWarning; /* a holder died; see errors.c */
    /* processes (process.c, context.c) */
    PyTypeObject *Process_type;
    PyTypeObject *Context_type;
    /* shared memory (sharedctypes.c) */
    PyTypeObject *SharedBlock_type;
    PyTypeObject *Synchronized_type;
    PyTypeObject *SynchronizedArray_type;
    PyTypeObject *SynchronizedBase_type;
    PyTypeObject *SynchronizedString_type;
    PyTypeObject *SyncField_type; /* per-field property of Structures */
    PyObject *ctypes;             /* imported on first use */
    PyObject *typecode_to_type;   /* 'i' -> ctypes.c_int, ... */
    PyObject *fast_types;         /* _type_ -> canonical simple type */
    PyObject *sync_class_cache;   /* Structure class -> wrapper class */
    /* named segments (shared_memory.c) */
    PyTypeObject *SharedMemory_type;
    PyTypeObject *ShmMapping_type;
    PyTypeObject *ShareableListBase_type; /* shareable_list.c */
    PyObject *shm_name_maker;             /* shared_memory._make_filename */
    PyObject *shm_globals;                /* where a test may patch it */
    /* __enter__/__exit__ descriptors with recycled bound methods (fastmethod.c) */
    PyTypeObject *FastMethod_type;
    PyTypeObject *FastBound_type;
    /* connections (connection.c) */
    PyTypeObject *Connection_type;
    PyTypeObject *Listener_type;
    /* exceptions (errors.c), same hierarchy as multiprocessing's */
    PyObject *ProcessError;
    PyObject *BufferTooShort;
    PyObject *TimeoutError;
    PyObject *AuthenticationError;
    /* messages (serialize.c): _pickle.loads and its arguments; pickling
     * goes through reduction.c's Pickler */
    PyObject *pickle_loads;
    PyObject *pickle_protocol; /* 5 */
    PyObject *kw_buffers;      /* ("buffers",) */
    /* pickling for our transports (reduction.c) */
    PyObject *Pickler;            /* _pickle.Pickler */
    PyObject *SimpleNamespace;    /* types.SimpleNamespace (a Pickler's file) */
    PyObject *dispatch_table;     /* ours: Connection, socket, then copyreg's */
    PyTypeObject *Encoder_type;   /* a reusable Pickler and its output */
    PyObject *queue_encoder;      /* protocol 5, out-of-band buffers */
    PyObject *conn_encoder;       /* default protocol, in band */
    PyObject *reduce_connection;  /* _cmp._reduce_connection ... */
    PyObject *rebuild_connection; /* ... and the others, for the table */
    PyObject *reduce_socket;
    PyObject *rebuild_socket;
    PyObject *socket_type; /* socket.socket, once the socket module is loaded */
    PyObject *str_socket;  /* "socket" */
    /* queues (queue.c) */
    PyTypeObject *Queue_type;
    PyTypeObject *SimpleQueue_type;
    PyTypeObject *JoinableQueue_type;
    PyTypeObject *QueueReader_type; /* queue_reader.c */
    PyTypeObject *QueueWriter_type; /* queue_reader.c */
    PyObject *Empty;                /* queue.Empty */
    PyObject *Full;                 /* queue.Full */
    /* managers (manager.c, proxy.c) */
    PyTypeObject *ManagerProcess_type;
    PyTypeObject *ManagerChannel_type;
    PyTypeObject *ManagerListener_type;
    PyTypeObject *ManagerThreadClient_type;
    PyTypeObject *ProxyBase_type;
    PyTypeObject *ProxyMethod_type;
} cmp_py_state;

extern PyModuleDef cmp_py_module_def;

/* State of the module that defined tp or one of its bases (subclasses
 * written in Python have no module of their own). Never NULL once the
 * module is initialized. */
cmp_py_state *cmp_py_state_of_type(PyTypeObject *tp);
/* State for module-level functions. */
static inline cmp_py_state *cmp_py_state_of_module(PyObject *module)
{
    return (cmp_py_state *)PyModule_GetState(module);
}

/* A heap type made from spec with one base (or none), on every supported
 * version. New reference, or NULL with an exception. */
PyObject *cmp_py_type_from_spec(PyObject *module, PyType_Spec *spec, PyObject *base);

/* Adds a heap type made from spec to the module and returns it (new ref
 * kept in the state by the caller), or NULL with an exception. */
PyTypeObject *cmp_py_add_type(PyObject *module, PyType_Spec *spec, PyObject *base);

/* Converts a Python timeout (None, or a number of seconds) into a deadline.
 * Returns 0 and sets *out (NULL for None) using storage, or -1 with an
 * exception set. */
int cmp_py_deadline(PyObject *timeout, struct timespec *storage, const struct timespec **out);

/* `block` as the stdlib's acquire() takes it, an integer (bool included):
 * None, 'x' or 1.5 raise TypeError there, so they do here. dflt when block
 * is NULL (not given). Returns 0 or 1, or -1 with an exception set. */
int cmp_py_block_arg(PyObject *block, int dflt);

/* Raises TypeError unless timeout is NULL, None or a real number: the
 * stdlib checks its type even when the call will not wait (a free lock,
 * block=False). NaN passes: whether it is an error depends on waiting.
 * Returns 0, or -1 with an exception set. */
int cmp_py_check_timeout(PyObject *timeout);

/* The stdlib's locks take at most the three exception arguments in
 * __exit__; returns 0, or -1 with TypeError set. */
int cmp_py_check_exit_args(Py_ssize_t nargs);

/* Parses the arguments of a METH_FASTCALL | METH_KEYWORDS call whose
 * parameters are all positional-or-keyword and optional: names[0..n-1].
 * out[i] receives the argument (borrowed) or stays NULL when not given.
 * Raises the interpreter's own TypeErrors (too many, unknown keyword, given
 * twice). Returns 0, or -1 with an exception set. */
int cmp_py_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *const *names, Py_ssize_t n, PyObject **out);

/* Raises the Python exception for a negative libcmp return value (OSError
 * with errno by default) and returns NULL. */
PyObject *cmp_py_raise(int err);

/* Warns that a lock was taken over from a holder process that died
 * (AbandonedLockWarning). Returns 0, or -1 if the warning was turned into an
 * exception (the lock is then still held by the caller). */
int cmp_py_warn_abandoned(PyTypeObject *tp, const char *what);

/* An instance's own bound __enter__ and __exit__ (fastmethod.c): NULL
 * until first used; the object's tp_finalize calls
 * cmp_py_fast_cache_finalize() and its tp_dealloc, first
 * PyObject_CallFinalizerFromDealloc() (when cmp_py_fast_cache_used()),
 * then cmp_py_fast_cache_clear(). */
#define CMP_PY_FAST_CACHE_SIZE 2
typedef struct {
    PyObject *bound[CMP_PY_FAST_CACHE_SIZE];
} cmp_py_fast_cache;

static inline int cmp_py_fast_cache_used(const cmp_py_fast_cache *cache)
{
    return cache->bound[0] || cache->bound[1];
}
void cmp_py_fast_cache_finalize(PyObject *self, cmp_py_fast_cache *cache);
void cmp_py_fast_cache_clear(cmp_py_fast_cache *cache);

/* What the synchronization objects share (shared_object.c). */

/* The head of an object whose state is one block of the shared heap
 * (Lock, RLock, Semaphore, Event, Condition, Barrier): the object keeps
 * the block alive. Weak references to it work, as to the stdlib's (util.
 * Finalize, weakref.finalize and WeakValueDictionary take them): each type
 * lists cmp_py_shared_members (shared_object.h). */
#define CMP_PY_SHARED_HEAD                                                                         \
    PyObject_HEAD                                                                                  \
    cmp_shared_t *block;                                                                           \
    PyObject *weakreflist;

/* tp_new's part for such an object: a new instance of type (starting with
 * CMP_PY_SHARED_HEAD) that owns a fresh block of size bytes, at *mem for the
 * caller to initialize. New reference, or NULL with an exception. */
PyObject *cmp_py_shared_new(PyTypeObject *type, size_t size, void **mem);
/* tp_dealloc's part: clears the instance's cmp_py_fast_cache (cache, or
 * NULL when it has none; returns early when a bound method it handed out
 * resurrected op), its weak references, releases the block and frees op. GC types untrack and
 * clear their references first. */
void cmp_py_shared_dealloc(PyObject *op, cmp_py_fast_cache *cache);
/* __reduce__: raises RuntimeError("<what> objects should only be shared
 * between processes through inheritance"), what being the type's __name__
 * when NULL, as the stdlib does outside spawning. Returns NULL. */
PyObject *cmp_py_refuse_pickle(PyObject *op, const char *what);

/* A libcmp wait on obj until deadline (NULL: none): 0 or more, or a
 * negative errno, -EINTR when a signal interrupted it. */
typedef int (*cmp_py_wait_fn)(void *obj, const struct timespec *deadline);
/* Blocks in wait(obj, ...) with the GIL released; on -EINTR runs the signal
 * handlers and waits again until the same deadline. sliced: sleeps at most
 * 50 ms at a time (cmp_py_slice), for waits that can miss a signal landing
 * between two futex sleeps. Returns what wait returned (never -EINTR), or
 * -EINTR with the exception a signal handler raised. */
int cmp_py_wait(cmp_py_wait_fn wait, void *obj, const struct timespec *deadline, int sliced);
/* The deadline for one GIL-released sleep of a blocking acquire: at most
 * 50 ms away, so that signal handlers run promptly even when a signal lands
 * between two futex waits. Returns deadline itself when it comes first. */
const struct timespec *cmp_py_slice(const struct timespec *deadline, struct timespec *storage);
/* Records the main thread (module init): cmp_py_slice slices only there. */
int cmp_py_main_thread_init(void);

/* The Lock and RLock objects, visible to condition.c and sharedctypes.c,
 * which act on the lock directly instead of through method calls. */
typedef struct {
    CMP_PY_SHARED_HEAD
    cmp_lock_t *lock;          /* inside block */
    unsigned long owner;       /* this process's thread that last acquired it */
    int64_t next_holder_check; /* see cmp_py_holder_died */
    cmp_py_fast_cache with_cache;
} cmp_py_lock;

typedef struct {
    CMP_PY_SHARED_HEAD
    cmp_rlock_t *rlock;        /* inside block */
    int64_t next_holder_check; /* see cmp_py_holder_died */
    cmp_py_fast_cache with_cache;
} cmp_py_rlock;

/* Acquire (blocking, no timeout) and release any lock object: directly for
 * this module's Lock and RLock, through acquire()/release() otherwise.
 * Blocking waits release the GIL and run signal handlers.
 * Return 0, or -1 with an exception set. (lock.c) */
int cmp_py_lock_acquire_any(PyObject *lock);
int cmp_py_lock_release_any(PyObject *lock);

/* Lock and RLock internals for condition.c (lock.c, rlock.c).
 * acquire_deadline: blocking acquire with the GIL released, -EINTR retried
 * after running signal handlers, AbandonedLockWarning on a dead holder.
 * Returns 1 acquired, 0 timed out, -1 with an exception set. */
int cmp_py_Lock_acquire_deadline(cmp_py_lock *self, const struct timespec *deadline);
int cmp_py_RLock_acquire_count(cmp_py_rlock *self, uint32_t count, const struct timespec *deadline);
/* 1 if the calling thread of this process holds it. */
int cmp_py_Lock_is_mine(cmp_py_lock *self);
/* After a failed acquire(False): whether `holder` has died, so that the
 * caller takes the lock over (an acquire with an expired deadline). Looks
 * at most once per CMP_OWNER_CHECK_NS per lock object, the cadence of a
 * blocked acquirer, since a liveness check costs a few syscalls and a
 * polling loop calls this at full speed. (lock.c) */
int cmp_py_holder_died(int64_t *next_check_ns, const cmp_lock_t *lock);
extern const struct timespec cmp_py_expired_deadline;
PyObject *cmp_py_Lock_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames);
PyObject *cmp_py_Lock_release(PyObject *self, PyObject *unused);
PyObject *cmp_py_RLock_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames);
PyObject *cmp_py_RLock_release(PyObject *self, PyObject *unused);
/* Parses (block=True, timeout=None) of acquire(); fname for messages.
 * Checks both as the stdlib does (cmp_py_block_arg, cmp_py_check_timeout).
 * Returns 0, or -1 with TypeError set. */
int cmp_py_parse_acquire_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames, int *block, PyObject **timeout);
/* "MainProcess" or "MainProcess|Thread-1", as the stdlib's reprs name the
 * caller. New reference, or NULL with an exception. */
PyObject *cmp_py_owner_name(void);

/* threading's at-fork hook done in C in our fork children when threading's
 * state is trivial (fork_threading.c): prepare in the parent before a
 * fork, arm in the child before PyOS_AfterFork_Child(), disarm after. */
void cmp_py_fork_threading_prepare(void);
void cmp_py_fork_threading_arm(void);
void cmp_py_fork_threading_disarm(void);

/* Installs defs (METH_NOARGS or METH_FASTCALL methods, such as __enter__
 * and __exit__) on type as descriptors whose bound methods are recycled
 * instead of allocated on every access: see fastmethod.c for why.
 * cache_offset: of a cmp_py_fast_cache in the instances (at most
 * CMP_PY_FAST_CACHE_SIZE defs then), or 0. Needs cmp_py_fastmethod_init()
 * first. Returns 0, or -1 with an exception. */
int cmp_py_add_fast_methods(cmp_py_state *st, PyTypeObject *type, PyMethodDef *defs,
                            Py_ssize_t cache_offset);

/* Messages (serialize.c). A message is the object in a compact tagged
 * encoding for small built-in values, or pickled (protocol 5) with its
 * out-of-band buffers after the pickle stream. Both sides work in pieces so
 * that large payloads are copied once, straight between the objects and
 * shared memory. */
typedef struct {
    void *ptr; /* where the piece's bytes are (read or written) */
    size_t len;
    size_t off; /* private */
} cmp_py_piece;

/* An encoded message: pieces[0..npieces) in order, size bytes in all,
 * pointing into the frame and into the objects it keeps alive. Must not be
 * moved or changed while the pieces are in use. */
typedef struct {
    cmp_py_piece *pieces;
    int npieces;
    size_t size;
    /* private */
    int cap_pieces;
    char *buf;
    size_t len, cap, cut;
    Py_buffer *views;
    int nviews;
    PyObject *keep;
    cmp_py_piece inline_pieces[4];
    char inline_buf[256];
} cmp_py_frame;

void cmp_py_frame_init(cmp_py_frame *f);
/* Encodes obj into an initialized, empty frame. Returns 0, or -1 with the
 * exception of pickling (the frame is then empty). */
int cmp_py_encode(cmp_py_state *st, PyObject *obj, cmp_py_frame *f);
/* Releases what the frame holds and leaves it empty and reusable. */
void cmp_py_frame_clear(cmp_py_frame *f);
/* Copies the frame's f->size bytes, in order, to dst. */
void cmp_py_frame_copy(const cmp_py_frame *f, char *dst);
/* The message of obj as one bytes object, or NULL with an exception. */
PyObject *cmp_py_encode_bytes(cmp_py_state *st, PyObject *obj);

/* Decoding. A message below CMP_PY_BIG bytes is copied out of the queue
 * into any memory and decoded from there (cmp_py_decode). A larger one is
 * copied straight into the object cmp_py_msg_new makes for it (a bytes
 * object for odd sizes, a bytearray for even ones: the encoder picks the
 * size), which becomes the value or holds its out-of-band buffers
 * (cmp_py_decode_owned); so the payload is copied out exactly once. */
#define CMP_PY_BIG ((size_t)64 << 10)
/* The whole message in data: the object, or NULL with an exception. */
PyObject *cmp_py_decode(cmp_py_state *st, const char *data, size_t len);
/* A message holding a list, decoded straight into dst[start:start + n]
 * (the slots' old values released), n being its length. Returns n; -1
 * with an exception (corrupt, or longer than dst has room for); -2, with
 * none, when the message is not in the compact encoding (decode it with
 * cmp_py_decode then). */
Py_ssize_t cmp_py_decode_list_into(const char *data, size_t len, PyObject *dst, Py_ssize_t start);
/* New object to receive a message of len >= CMP_PY_BIG bytes at *data. */
PyObject *cmp_py_msg_new(size_t len, char **data);
/* The object of the message in owner (from cmp_py_msg_new; stolen). */
PyObject *cmp_py_decode_owned(cmp_py_state *st, PyObject *owner, size_t len);
/* The message at offset in a bytearray from cmp_py_msg_new, or in another
 * object whose buffer stays put while it lives (not stolen): like
 * cmp_py_decode, but a pickle's out-of-band buffers are views of owner
 * (which they keep alive), not copies. */
PyObject *cmp_py_decode_at(cmp_py_state *st, PyObject *owner, size_t offset, size_t len);
/* The message at *data, PyMem_RawMalloc'd memory: a big pickle's
 * out-of-band buffers (numpy arrays) become views of that memory, which
 * then goes to an object of ours (*data set to NULL: not the caller's to
 * free any more); else decoded as cmp_py_decode does, *data left as is. */
PyObject *cmp_py_decode_raw(cmp_py_state *st, void **data, size_t len);

/* Pickling for our transports (reduction.c): with a dispatch table that
 * sends Connections and sockets as fd sharer tokens, on a Pickler reused
 * across calls. begin() pickles obj (oob: protocol 5 with out-of-band
 * buffers, for queues; else the default protocol, for Connection.send) and
 * fills *p: chunks, the list of bytes-like objects the stream is made of,
 * in order; buffers (oob only), the out-of-band buffers. Both lists are
 * borrowed from the encoder until end(): take references to what must
 * outlive it. Returns 0, or -1 with the pickling exception (nothing to
 * end then). */
typedef struct {
    PyObject *encoder, *chunks, *buffers; /* private, chunks, buffers */
} cmp_py_pickling;
int cmp_py_pickle_begin(cmp_py_state *st, int oob, PyObject *obj, cmp_py_pickling *p);
void cmp_py_pickle_end(cmp_py_pickling *p);
/* Registers a dup of fd with the fd sharer: a new (addr bytes, key int)
 * tuple, or NULL with an exception. */
PyObject *cmp_py_share_fd(int fd);
/* Redeems a token of cmp_py_share_fd (GIL released, at most
 * CMP_PY_REDEEM_TIMEOUT seconds): the fd, or -1 with an exception that
 * names what (e.g. "Connection") and says why. */
#define CMP_PY_REDEEM_TIMEOUT 30.0
int cmp_py_redeem_fd(PyObject *addr, PyObject *key, const char *what);

/* Pickling for a spawned or fork-server child (spawn.c). While it runs
 * (cmp_py_spawning()), the objects that refuse pickling otherwise reduce
 * to what the child attaches to: shared_reduce, for an object that starts
 * with CMP_PY_SHARED_HEAD (or the same two fields), exports its block and
 * returns (_rebuild_shared, (type, fd, offset, extra)), extra (borrowed,
 * NULL: None) going to the type's adopt function in the child; outside
 * spawning it refuses as cmp_py_refuse_pickle(op, what). pass_fd adds an
 * fd that the child finds at the same number (segment: the child closes
 * it once unpickled; else the child's rebuilt object owns it). */
int cmp_py_spawning(void);
int cmp_py_spawn_pass_fd(int fd, int segment);
PyObject *cmp_py_shared_reduce(PyObject *op, const char *what, PyObject *extra);
/* In the child: op (allocated, its block imported) made usable over mem,
 * from the extra its reduce gave. 0, or -1 with an exception. */
int cmp_py_lock_adopt(PyObject *op, void *mem, PyObject *extra);
int cmp_py_rlock_adopt(PyObject *op, void *mem, PyObject *extra);
int cmp_py_semaphore_adopt(PyObject *op, void *mem, PyObject *extra);
int cmp_py_event_adopt(PyObject *op, void *mem, PyObject *extra);
int cmp_py_condition_adopt(PyObject *op, void *mem, PyObject *extra);
int cmp_py_barrier_adopt(PyObject *op, void *mem, PyObject *extra);
int cmp_py_queue_adopt(PyObject *op, void *mem, PyObject *extra);
int cmp_py_spawn_init(PyObject *module, cmp_py_state *st);

/* Per-concept module initialization, called from module.c's exec slot. */
int cmp_py_fastmethod_init(PyObject *module, cmp_py_state *st);
int cmp_py_errors_init(PyObject *module, cmp_py_state *st);
/* A new exception class cmultiprocessing.<name>, added to module; a new
 * reference, or NULL with an exception. (errors.c) */
PyObject *cmp_py_add_exception(PyObject *module, const char *name, PyObject *base, const char *doc);
int cmp_py_pool_init(PyObject *module, cmp_py_state *st);
int cmp_py_lock_init(PyObject *module, cmp_py_state *st);
int cmp_py_rlock_init(PyObject *module, cmp_py_state *st);
int cmp_py_semaphore_init(PyObject *module, cmp_py_state *st);
int cmp_py_event_init(PyObject *module, cmp_py_state *st);
int cmp_py_condition_init(PyObject *module, cmp_py_state *st);
int cmp_py_barrier_init(PyObject *module, cmp_py_state *st);
int cmp_py_process_init(PyObject *module, cmp_py_state *st);
/* Around the fork of a pool worker (GIL held; process.c): the worker's
 * current_process(), ForkPoolWorker-N, is made before the fork, made
 * current in the child, dropped in the parent. */
void cmp_py_process_pool_worker_prepare(void);
void cmp_py_process_pool_worker_parent(void);
void cmp_py_process_pool_worker_child(void);
/* In a worker that leaves on its own (GIL held): what a Process child runs
 * after run() (util's exit finalizers, its children, its threads). */
void cmp_py_process_pool_worker_exit(void);
int cmp_py_context_init(PyObject *module, cmp_py_state *st);
/* Fixes the default context's start method, as the stdlib does once the
 * default context is used (here: a default Process starts), so that a
 * later set_start_method() without force raises RuntimeError. (context.c) */
void cmp_py_context_pin_default(void);
/* The start methods, as context.c's table orders them. */
enum { CMP_PY_FORK = 0, CMP_PY_SPAWN = 1, CMP_PY_FORKSERVER = 2 };
/* Makes method the default context's, as the stdlib's child does with the
 * method of the context its Process came from. */
void cmp_py_context_force(int method);
/* The default context's method (pinning it, as cmp_py_context_pin_default). */
int cmp_py_context_method(void);
int cmp_py_sharedctypes_init(PyObject *module, cmp_py_state *st);
int cmp_py_shared_memory_init(PyObject *module, cmp_py_state *st);
int cmp_py_shareable_list_init(PyObject *module, cmp_py_state *st);
/* The memory of op when it is one of our SharedMemory objects: 0 and
 * *addr, *size; -1 with TypeError when it is closed; 1 when op is some
 * other object (shared_memory.c). */
int cmp_py_shm_memory(PyObject *op, void **addr, size_t *size);
int cmp_py_connection_init(PyObject *module, cmp_py_state *st);
/* After connection's: it looks up the reducers connection.c defines. */
int cmp_py_reduction_init(PyObject *module, cmp_py_state *st);

int cmp_py_serialize_init(PyObject *module, cmp_py_state *st);
/* After process's: proxies take current_process() for their authkey.
 * manager_init runs manager_channel_init. */
int cmp_py_manager_init(PyObject *module, cmp_py_state *st);
int cmp_py_manager_channel_init(PyObject *module, cmp_py_state *st);
int cmp_py_proxy_init(PyObject *module, cmp_py_state *st);

/* Python address <-> sockaddr as connection.c converts them (AF_INET: a
 * (host, port) tuple; AF_UNIX: str or bytes). to: 0, or -1 with an
 * exception; from: a new reference, or NULL. */
#include <sys/socket.h>
int cmp_py_to_sockaddr(int family, PyObject *address, struct sockaddr_storage *out,
                       socklen_t *outlen);
PyObject *cmp_py_from_sockaddr(const struct sockaddr_storage *a, socklen_t len);

/* A manager's messages (manager_wire.c): the encoding of a message, by
 * its first byte; a message as bytes in the pickle or XML encoding (new
 * reference, or NULL with an exception); any message decoded. */
enum { CMP_PY_MGR_COMPACT, CMP_PY_MGR_PICKLE, CMP_PY_MGR_XML };
int cmp_py_mgr_encoding_of(const void *data, size_t len);
PyObject *cmp_py_mgr_encode_bytes(cmp_py_state *st, PyObject *obj, int enc);
PyObject *cmp_py_mgr_decode(cmp_py_state *st, const void *data, size_t len);
/* A manager's address (a (host, port) tuple: AF_INET, else AF_UNIX) as a
 * sockaddr: 0, or -1 with an exception. */
int cmp_py_mgr_addr(PyObject *address, struct sockaddr_storage *sa, socklen_t *len);

/* A manager's channel for address, authkey (bytes or None) and serializer
 * ('pickle', 'xmlrpclib'; NULL: pickle): one per process, with a
 * connection per calling thread (manager.c). New reference, or NULL with
 * an exception. */
PyObject *cmp_py_channel_get(cmp_py_state *st, PyObject *address, PyObject *authkey,
                             PyObject *serializer);
/* Sends (oid, name, args, kwds) and returns the decoded reply (kind,
 * result), GIL released while waiting; ManagerGoneError when the server is
 * gone. New reference, or NULL with an exception. */
PyObject *cmp_py_channel_request(PyObject *chan, PyObject *oid, PyObject *name, PyObject *args,
                                 PyObject *kwds);
/* Run by a child process of ours on its way out, when set (process.c):
 * the proxies' references go back to their managers (proxy.c). */
extern void (*cmp_py_child_exit_hook)(void);

/* multiprocessing.util's hooks, if a util module is loaded (util_hooks.c):
 * the register_after_fork() callbacks, and the finalizers with
 * exitpriority >= minpriority (-1: every one with a priority). Errors are
 * printed, never raised: they run in a child on its way in or out. */
void cmp_py_util_after_fork(void);

/* Subclassing: a subclass with an __init__ of its own calls our __new__
 * with its own arguments. Then (type's tp_init is not ours) __new__ makes
 * a default object, ignoring them, and our __init__, reached through
 * super().__init__(...), parses and applies ours. Otherwise __new__ took
 * them and __init__ does nothing. */
#define CMP_PY_FOREIGN_INIT(type, ours) ((type)->tp_init != (ours))
/* Parses the (*, ctx=None) that Lock, RLock and Event take (fmt: "|$O:Name"),
 * in their __new__ or __init__ as above. 0, or -1 with an exception. */
int cmp_py_parse_ctx_only(PyObject *args, PyObject *kwds, const char *fmt);
extern PyObject *cmp_py_empty_tuple; /* () for the default arguments */
void cmp_py_util_run_finalizers(int minpriority);
void cmp_py_proxy_child_exit(void);
/* proxy._callmethod(name, args (tuple), kwds (dict)) (proxy.c). */
PyObject *cmp_py_proxy_call(PyObject *proxy, PyObject *name, PyObject *args, PyObject *kwds);
int cmp_py_queue_init(PyObject *module, cmp_py_state *st);

/* Per-concept GC of the state. */
int cmp_py_state_traverse(cmp_py_state *st, visitproc visit, void *arg);
void cmp_py_state_clear(cmp_py_state *st);

#endif /* CMP_PY_CMP_H */
