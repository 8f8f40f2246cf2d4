/*
 * Shared memory: memfd segments, and the process-wide shared heap.
 *
 * The heap lives in 1 MiB memfd segments, created lazily and mapped
 * MAP_SHARED, so every process forked after a segment exists allocates and
 * frees in it too. Everything the allocator needs sits inside the segment
 * and holds offsets only. A segment is a header followed by blocks that
 * tile it exactly; each block starts with a 64-byte header, so user memory
 * is 64-byte aligned. Free blocks also form a list sorted by offset (first
 * fit, split from the tail, coalesce on free).
 *
 * The allocator's state is guarded by a robust cmp_lock_t in the segment
 * header. Every mutation keeps the physical walk of the blocks consistent
 * at each single store (a split writes the new header before shrinking its
 * host; a merge grows the survivor last), so a process that dies holding
 * the lock leaves a walkable segment: whoever takes the lock over rebuilds
 * the free list from the walk. At worst the dying process's blocks leak.
 *
 * Requests above a quarter of a segment get a dedicated segment of their
 * own: the kernel frees it when the last process unmaps it, so its refcount
 * is not needed.
 *
 * Lifetime: a block's header counts the processes holding it. A process
 * holds a block through one cmp_shared_t (malloc'd, never in shared memory)
 * with a local count; the handles of a process are in a registry so that
 * fork (pthread_atfork prepare) can give the child one reference to each
 * and a child can drop them all (cmp_shared_release_all).
 *
 * One process-local mutex serializes registry and heap operations; the
 * segment lock is only ever taken with it held, so at fork no thread of the
 * parent is inside a segment's critical section.
 */
#include "atomic.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Under ASan, the payload of a block this process let go of is poisoned
 * until this process allocates it again: a Python object still viewing it
 * (the sharedctypes use-after-free of issue 7) then shows up as a report
 * at the bad access instead of as a corrupt value much later. A header is
 * never user memory, but may sit where this process once had a payload
 * (another process split a free block there): blk_at() unpoisons it. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define ALIGN 64u
#define HEAP_SEG_SIZE (1u << 20)
#define DEDICATED_MIN (HEAP_SEG_SIZE / 4)
/* A free remainder smaller than this stays inside the allocated block. */
#define MIN_SPLIT (2 * ALIGN)

#define SEG_MAGIC 0x636d7068u /* "cmph" */
#define BLK_FREE 0x66726565u  /* "free" */
#define BLK_USED 0x75736564u  /* "used" */

/* Lives at offset 0 of every segment. */
struct seg_hdr {
    cmp_lock_t lock; /* first: 8-byte aligned without a hole */
    uint32_t magic;
    uint32_t size;      /* of the whole segment (heap segments) */
    uint32_t free_head; /* offset of the first free block, 0 = none */
    uint32_t dedicated;
    uint8_t pad[ALIGN - sizeof(cmp_lock_t) - 4 * sizeof(uint32_t)];
};

/* Precedes every block's user memory. */
struct blk_hdr {
    uint32_t state;     /* BLK_FREE or BLK_USED */
    uint32_t size;      /* of the block including this header */
    uint32_t next_free; /* offset of the next free block, 0 = end */
    uint32_t refs;      /* processes holding the block */
    uint64_t req_size;  /* as the user asked */
    uint8_t pad[ALIGN - 4 * sizeof(uint32_t) - sizeof(uint64_t)];
};

_Static_assert(sizeof(struct seg_hdr) == ALIGN, "segment header is one line");
_Static_assert(sizeof(struct blk_hdr) == ALIGN, "block header is one line");

/* A segment as this process maps it. */
struct seg {
    cmp_shm_t shm;
    struct seg *next; /* heap segments only */
    ino_t ino;        /* the memfd's: how an imported segment is recognized */
};

struct cmp_shared {
    struct cmp_shared *prev, *next; /* registry; unlinked once dropped */
    struct seg *seg;                /* heap segment or own dedicated one */
    struct blk_hdr *blk;
    void *ptr;
    size_t size;
    size_t local_refs; /* atomically updated */
    int dedicated;
    int dropped; /* the process's shared reference is gone (release_all) */
};

static pthread_mutex_t heap_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t heap_once = PTHREAD_ONCE_INIT;
static struct seg *heap_segs; /* newest first */
static struct cmp_shared registry = {&registry, &registry, NULL, NULL, NULL, 0, 0, 0, 0};

/* ------------------------------------------------------------------------
 * Segments
 * ------------------------------------------------------------------------ */

int cmp_shm_create(cmp_shm_t *shm, size_t size, const char *name)
{
    if (size == 0)
        return -EINVAL;
    int fd = memfd_create(name ? name : "cmp", MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    int rc = cmp_shm_attach(shm, fd, size);
    if (rc < 0)
        close(fd);
    return rc;
}

int cmp_shm_attach(cmp_shm_t *shm, int fd, size_t size)
{
    if (size == 0 || fd < 0)
        return -EINVAL;
    void *addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED)
        return -errno;
    shm->fd = fd;
    shm->addr = addr;
    shm->size = size;
    return 0;
}

void cmp_shm_detach(cmp_shm_t *shm)
{
    if (shm->addr)
        munmap(shm->addr, shm->size);
    if (shm->fd >= 0)
        close(shm->fd);
    shm->addr = NULL;
    shm->fd = -1;
    shm->size = 0;
}

/* ------------------------------------------------------------------------
 * Named segments (POSIX shared memory)
 * ------------------------------------------------------------------------ */

/* The name shm_open() sees: exactly one leading '/', as the standard
 * library passes it, so that both open the same /dev/shm entry. */
static int shm_path(const char *name, char *out, size_t len)
{
    while (*name == '/')
        name++;
    if (!*name || strchr(name, '/') || strlen(name) > CMP_SHM_NAME_MAX)
        return -EINVAL;
    snprintf(out, len, "/%s", name);
    return 0;
}

/* Maps the whole of fd (its size from fstat: an attacher learns it there)
 * and closes fd, which the mapping no longer needs. */
static int map_named(cmp_shm_t *shm, int fd)
{
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) < 0)
        rc = -errno;
    else if (st.st_size == 0)
        rc = -ENODATA;
    if (rc == 0) {
        void *addr = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (addr == MAP_FAILED) {
            rc = -errno;
        } else {
            shm->fd = -1;
            shm->addr = addr;
            shm->size = (size_t)st.st_size;
        }
    }
    close(fd);
    return rc;
}

int cmp_shm_open(cmp_shm_t *shm, const char *name, int flags, size_t size)
{
    char path[CMP_SHM_NAME_MAX + 2];
    if (flags & ~(CMP_SHM_CREATE | CMP_SHM_MAY_CREATE))
        return -EINVAL;
    int create = flags & CMP_SHM_CREATE;
    if ((create && size == 0) || (off_t)size < 0)
        return -EINVAL;
    int rc = shm_path(name, path, sizeof path);
    if (rc < 0)
        return rc;
    int oflags = create                       ? O_RDWR | O_CREAT | O_EXCL
                 : flags & CMP_SHM_MAY_CREATE ? O_RDWR | O_CREAT
                                              : O_RDWR;
    int fd = shm_open(path, oflags, 0600);
    if (fd < 0)
        return -errno;
    if (create) {
        /* 0600 whatever the umask: a umask that strips the owner's bits
         * must not leave a segment its creator cannot reopen */
        if (fchmod(fd, 0600) < 0 || ftruncate(fd, (off_t)size) < 0)
            rc = -errno;
        if (rc < 0) {
            close(fd);
            shm_unlink(path);
            return rc;
        }
    }
    rc = map_named(shm, fd);
    if (rc < 0 && create)
        shm_unlink(path);
    return rc;
}

int cmp_shm_create_named(cmp_shm_t *shm, size_t size, const char *prefix, char *name, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t plen = strlen(prefix);
    if (len < plen + 2 * CMP_SHM_RANDOM_BYTES + 1)
        return -ERANGE;
    for (;;) {
        unsigned char r[CMP_SHM_RANDOM_BYTES];
        int rc = cmp__random_bytes(r, sizeof r);
        if (rc < 0)
            return rc;
        memcpy(name, prefix, plen);
        for (size_t i = 0; i < sizeof r; i++) {
            name[plen + 2 * i] = hex[r[i] >> 4];
            name[plen + 2 * i + 1] = hex[r[i] & 15];
        }
        name[plen + 2 * sizeof r] = '\0';
        rc = cmp_shm_open(shm, name, CMP_SHM_CREATE, size);
        if (rc != -EEXIST)
            return rc; /* taken by chance: draw again */
    }
}

int cmp_shm_unlink(const char *name)
{
    char path[CMP_SHM_NAME_MAX + 2];
    int rc = shm_path(name, path, sizeof path);
    if (rc < 0)
        return rc;
    return shm_unlink(path) < 0 ? -errno : 0;
}

/* ------------------------------------------------------------------------
 * Heap segments: allocation under the segment lock
 * ------------------------------------------------------------------------ */

static inline struct blk_hdr *blk_at(struct seg_hdr *sh, uint32_t off)
{
    struct blk_hdr *b = (struct blk_hdr *)((char *)sh + off);
    UNPOISON(b, sizeof *b);
    return b;
}

/* Single stores that a process dying mid-update must not tear: the walk
 * in rebuild() reads them. Release: a rescuer must see the headers written
 * before them. */
static inline void set_u32(uint32_t *p, uint32_t v)
{
    cmp__store_release(p, v);
}

/* Rebuilds the free list from the physical walk, merging neighbours; run
 * by whoever took the lock over from a dead holder. */
static void rebuild(struct seg_hdr *sh)
{
    uint32_t off = ALIGN, prev_free = 0;
    sh->free_head = 0;
    while (off < sh->size) {
        struct blk_hdr *b = blk_at(sh, off);
        uint32_t size = b->size;
        if (size < ALIGN || size % ALIGN || size > sh->size - off)
            break; /* torn beyond repair: leak the rest of the segment */
        if (b->state != BLK_USED) {
            if (prev_free && prev_free + blk_at(sh, prev_free)->size == off) {
                blk_at(sh, prev_free)->size += size;
            } else {
                b->state = BLK_FREE;
                b->next_free = 0;
                if (prev_free)
                    blk_at(sh, prev_free)->next_free = off;
                else
                    sh->free_head = off;
                prev_free = off;
            }
        }
        off += size;
    }
}

static void seg_lock(struct seg_hdr *sh)
{
    int rc;
    /* The critical sections are short and never block: retry signals here
     * rather than make every caller handle them. */
    while ((rc = cmp_lock_acquire(&sh->lock, NULL)) == -EINTR)
        ;
    if (rc == CMP_OWNER_DIED)
        rebuild(sh);
    else if (rc != 0)
        abort();
}

static void seg_unlock(struct seg_hdr *sh)
{
    cmp_lock_release(&sh->lock);
}

/* First fit. Returns the block's offset (refs = 1, state USED) or 0. */
static uint32_t seg_alloc(struct seg_hdr *sh, uint32_t need, uint64_t req)
{
    uint32_t *link = &sh->free_head;
    while (*link) {
        uint32_t off = *link;
        struct blk_hdr *f = blk_at(sh, off);
        if (f->size >= need) {
            uint32_t rest = f->size - need;
            if (rest >= MIN_SPLIT) {
                /* Carve the tail: the new header first, so a walk that
                 * still sees the old size simply skips over it. */
                uint32_t noff = off + rest;
                struct blk_hdr *b = blk_at(sh, noff);
                b->next_free = 0;
                b->refs = 1;
                b->req_size = req;
                b->size = need;
                set_u32(&b->state, BLK_USED);
                set_u32(&f->size, rest);
                return noff;
            }
            f->refs = 1;
            f->req_size = req;
            set_u32(&f->state, BLK_USED);
            *link = f->next_free;
            return off;
        }
        link = &f->next_free;
    }
    return 0;
}

static void seg_free(struct seg_hdr *sh, uint32_t off)
{
    struct blk_hdr *b = blk_at(sh, off);
    uint32_t prev = 0, next = sh->free_head;
    while (next && next < off) {
        prev = next;
        next = blk_at(sh, next)->next_free;
    }
    b->next_free = next;
    set_u32(&b->state, BLK_FREE);
    if (prev)
        blk_at(sh, prev)->next_free = off;
    else
        sh->free_head = off;
    if (next && off + b->size == next) {
        struct blk_hdr *n = blk_at(sh, next);
        b->next_free = n->next_free;
        set_u32(&b->size, b->size + n->size);
    }
    if (prev) {
        struct blk_hdr *p = blk_at(sh, prev);
        if (prev + p->size == off) {
            p->next_free = b->next_free;
            set_u32(&p->size, p->size + b->size);
        }
    }
}

static int seg_new(struct seg **out)
{
    struct seg *s = malloc(sizeof *s);
    if (!s)
        return -ENOMEM;
    int rc = cmp_shm_create(&s->shm, HEAP_SEG_SIZE, "cmp-heap");
    if (rc < 0) {
        free(s);
        return rc;
    }
    struct stat stb;
    s->ino = fstat(s->shm.fd, &stb) == 0 ? stb.st_ino : 0;
    struct seg_hdr *sh = s->shm.addr;
    sh->magic = SEG_MAGIC;
    cmp_lock_init(&sh->lock);
    sh->size = HEAP_SEG_SIZE;
    sh->dedicated = 0;
    struct blk_hdr *b = blk_at(sh, ALIGN);
    b->state = BLK_FREE;
    b->size = HEAP_SEG_SIZE - ALIGN;
    b->next_free = 0;
    sh->free_head = ALIGN;
    s->next = NULL;
    *out = s;
    return 0;
}

/* ------------------------------------------------------------------------
 * Registry and fork
 * ------------------------------------------------------------------------ */

static void reg_insert(struct cmp_shared *ref)
{
    ref->next = registry.next;
    ref->prev = &registry;
    registry.next->prev = ref;
    registry.next = ref;
}

static void reg_remove(struct cmp_shared *ref)
{
    ref->prev->next = ref->next;
    ref->next->prev = ref->prev;
    ref->prev = ref->next = NULL;
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&heap_mutex);
    /* The child inherits every handle: give it its own reference. */
    for (struct cmp_shared *r = registry.next; r != &registry; r = r->next)
        if (!r->dedicated)
            cmp__fetch_add(&r->blk->refs, 1);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&heap_mutex);
}

static void atfork_child(void)
{
    /* Only the forking thread exists now; it holds the mutex from prepare. */
    pthread_mutex_init(&heap_mutex, NULL);
}

static void heap_init(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* Drops the process's shared reference to ref's block. heap_mutex held. */
static void drop_shared(struct cmp_shared *ref)
{
    if (ref->dedicated)
        return; /* unmapped with the handle; the kernel does the rest */
    if (cmp__fetch_sub(&ref->blk->refs, 1) == 1) {
        struct seg_hdr *sh = ref->seg->shm.addr;
        seg_lock(sh);
        seg_free(sh, (uint32_t)((char *)ref->blk - (char *)sh));
        seg_unlock(sh);
    }
}

static void free_handle(struct cmp_shared *ref)
{
    if (ref->dedicated) {
        cmp_shm_detach(&ref->seg->shm);
        free(ref->seg);
    }
    free(ref);
}

/* ------------------------------------------------------------------------
 * Public heap API
 * ------------------------------------------------------------------------ */

static int alloc_dedicated(size_t size, struct cmp_shared *ref)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t total = 2 * ALIGN + size;
    if (total < size)
        return -ENOMEM;
    total = (total + (size_t)page - 1) & ~((size_t)page - 1);
    struct seg *s = malloc(sizeof *s);
    if (!s)
        return -ENOMEM;
    int rc = cmp_shm_create(&s->shm, total, "cmp-block");
    if (rc < 0) {
        free(s);
        return rc == -EINVAL ? -ENOMEM : rc;
    }
    struct seg_hdr *sh = s->shm.addr;
    sh->magic = SEG_MAGIC;
    sh->dedicated = 1;
    s->ino = 0; /* never looked up: imports map a dedicated segment anew */
    struct blk_hdr *b = blk_at(sh, ALIGN);
    b->state = BLK_USED;
    b->refs = 1;
    b->req_size = size;
    s->next = NULL;
    ref->seg = s;
    ref->blk = b;
    ref->dedicated = 1;
    return 0; /* fresh memfd pages are already zero */
}

static int alloc_heap(size_t size, struct cmp_shared *ref)
{
    uint32_t need = (uint32_t)(ALIGN + ((size + ALIGN - 1) & ~(size_t)(ALIGN - 1)));
    for (int attempt = 0; attempt < 2; attempt++) {
        for (struct seg *s = heap_segs; s; s = s->next) {
            struct seg_hdr *sh = s->shm.addr;
            seg_lock(sh);
            uint32_t off = seg_alloc(sh, need, size);
            seg_unlock(sh);
            if (off) {
                ref->seg = s;
                ref->blk = blk_at(sh, off);
                ref->dedicated = 0;
                /* Reused memory: zero it. Ours alone now, no lock needed. */
                UNPOISON(ref->blk, need);
                memset(ref->blk + 1, 0, need - ALIGN);
                return 0;
            }
        }
        if (attempt == 0) {
            struct seg *s;
            int rc = seg_new(&s);
            if (rc < 0)
                return rc;
            s->next = heap_segs;
            heap_segs = s;
        }
    }
    abort(); /* a fresh segment always fits a non-dedicated request */
}

int cmp_shared_alloc(size_t size, cmp_shared_t **out)
{
    if (size == 0)
        return -EINVAL;
    pthread_once(&heap_once, heap_init);
    struct cmp_shared *ref = calloc(1, sizeof *ref);
    if (!ref)
        return -ENOMEM;
    pthread_mutex_lock(&heap_mutex);
    int rc = size >= DEDICATED_MIN ? alloc_dedicated(size, ref) : alloc_heap(size, ref);
    if (rc == 0) {
        ref->ptr = ref->blk + 1;
        ref->size = size;
        ref->local_refs = 1;
        reg_insert(ref);
    }
    pthread_mutex_unlock(&heap_mutex);
    if (rc < 0) {
        free(ref);
        return rc;
    }
    *out = ref;
    return 0;
}

void *cmp_shared_ptr(const cmp_shared_t *ref)
{
    return ref->ptr;
}

size_t cmp_shared_size(const cmp_shared_t *ref)
{
    return ref->size;
}

void cmp_shared_retain(cmp_shared_t *ref)
{
    __atomic_fetch_add(&ref->local_refs, 1, __ATOMIC_RELAXED);
}

void cmp_shared_release(cmp_shared_t *ref)
{
    /* acq_rel: the last releaser must see every other thread's use done */
    if (__atomic_fetch_sub(&ref->local_refs, 1, __ATOMIC_ACQ_REL) != 1)
        return;
    pthread_mutex_lock(&heap_mutex);
    if (!ref->dropped) {
        reg_remove(ref);
        drop_shared(ref);
        if (!ref->dedicated) /* a dedicated block is unmapped: faults anyway */
            POISON(ref->ptr, (ref->size + ALIGN - 1) & ~(size_t)(ALIGN - 1));
    }
    pthread_mutex_unlock(&heap_mutex);
    free_handle(ref);
}

void cmp_shared_release_all(void)
{
    pthread_once(&heap_once, heap_init);
    pthread_mutex_lock(&heap_mutex);
    /* Handles stay valid (their holders may still release them) but no
     * longer count: the memory may be reused by others from now on. */
    while (registry.next != &registry) {
        struct cmp_shared *ref = registry.next;
        reg_remove(ref);
        drop_shared(ref);
        ref->dropped = 1;
    }
    pthread_mutex_unlock(&heap_mutex);
}

/* ------------------------------------------------------------------------
 * Handing blocks to processes that were not forked from us
 * ------------------------------------------------------------------------ */

int cmp_shared_export(cmp_shared_t *ref, int *fd, uint64_t *offset)
{
    pthread_mutex_lock(&heap_mutex);
    if (ref->dropped) {
        pthread_mutex_unlock(&heap_mutex);
        return -EINVAL;
    }
    /* The receiver's reference, taken now: the block must not be freed
     * while it travels (a dedicated segment needs none: the mapping is). */
    if (!ref->dedicated)
        cmp__fetch_add(&ref->blk->refs, 1);
    *fd = ref->seg->shm.fd;
    *offset = (uint64_t)((char *)ref->blk - (char *)ref->seg->shm.addr);
    pthread_mutex_unlock(&heap_mutex);
    return 0;
}

/* A process that imported blocks was started afresh, not forked by us:
 * nothing else drops its references when it exits. */
static void release_at_exit(void)
{
    cmp_shared_release_all();
}

int cmp_shared_import(int fd, uint64_t offset, cmp_shared_t **out)
{
    pthread_once(&heap_once, heap_init);
    static int exit_hook;
    struct stat stb;
    if (fstat(fd, &stb) < 0)
        return -errno;
    size_t size = (size_t)stb.st_size;
    if (size < 2 * ALIGN || offset % ALIGN || offset < ALIGN || offset > size - ALIGN)
        return -EINVAL;
    struct cmp_shared *ref = calloc(1, sizeof *ref);
    if (!ref)
        return -ENOMEM;
    pthread_mutex_lock(&heap_mutex);
    struct seg *s = NULL;
    for (struct seg *h = heap_segs; h; h = h->next)
        if (h->ino == stb.st_ino && h->shm.size == size)
            s = h;
    int rc = 0, fresh = !s;
    if (fresh) {
        s = calloc(1, sizeof *s);
        int dup = s ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
        if (!s)
            rc = -ENOMEM;
        else if (dup < 0)
            rc = -errno;
        else if ((rc = cmp_shm_attach(&s->shm, dup, size)) < 0)
            close(dup);
        if (rc == 0) {
            struct seg_hdr *sh = s->shm.addr;
            if (sh->magic != SEG_MAGIC || (!sh->dedicated && sh->size != size)) {
                cmp_shm_detach(&s->shm);
                rc = -EINVAL;
            }
        }
        if (rc < 0) {
            pthread_mutex_unlock(&heap_mutex);
            free(s);
            free(ref);
            return rc;
        }
        s->ino = stb.st_ino;
    }
    struct seg_hdr *sh = s->shm.addr;
    struct blk_hdr *b = blk_at(sh, (uint32_t)offset);
    /* a dedicated segment's block records only what was asked for */
    int bad = sh->dedicated ? b->req_size > size - offset - ALIGN
                            : b->size < ALIGN || b->size > size - offset;
    if (b->state != BLK_USED || bad) {
        pthread_mutex_unlock(&heap_mutex);
        if (fresh) {
            cmp_shm_detach(&s->shm);
            free(s);
        }
        free(ref);
        return -EINVAL;
    }
    ref->dedicated = (int)sh->dedicated;
    if (fresh && !ref->dedicated) {
        /* a heap segment like our own: we allocate in it too */
        s->next = heap_segs;
        heap_segs = s;
    }
    ref->seg = s;
    ref->blk = b;
    ref->ptr = b + 1;
    ref->size = (size_t)b->req_size;
    UNPOISON(ref->ptr, ref->size);
    ref->local_refs = 1;
    reg_insert(ref);
    if (!exit_hook && atexit(release_at_exit) == 0)
        exit_hook = 1;
    pthread_mutex_unlock(&heap_mutex);
    *out = ref;
    return 0;
}

int cmp_shared_find(const void *addr, cmp_shared_t **out, size_t *offset)
{
    const char *a = addr;
    int rc = -ENOENT;
    pthread_mutex_lock(&heap_mutex);
    for (struct cmp_shared *r = registry.next; r != &registry; r = r->next) {
        const char *p = r->ptr;
        if (a >= p && a < p + (r->size ? r->size : 1)) {
            __atomic_fetch_add(&r->local_refs, 1, __ATOMIC_RELAXED);
            *out = r;
            *offset = (size_t)(a - p);
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&heap_mutex);
    return rc;
}

/* ------------------------------------------------------------------------
 * Test hooks (internal.h)
 * ------------------------------------------------------------------------ */

int cmp__shared_heap_lock(void)
{
    pthread_once(&heap_once, heap_init);
    pthread_mutex_lock(&heap_mutex);
    if (!heap_segs) {
        struct seg *s;
        int rc = seg_new(&s);
        if (rc < 0) {
            pthread_mutex_unlock(&heap_mutex);
            return rc;
        }
        heap_segs = s;
    }
    struct seg_hdr *sh = heap_segs->shm.addr;
    pthread_mutex_unlock(&heap_mutex);
    seg_lock(sh);
    return 0;
}

size_t cmp__shared_heap_free_bytes(void)
{
    size_t total = 0;
    pthread_mutex_lock(&heap_mutex);
    for (struct seg *s = heap_segs; s; s = s->next) {
        struct seg_hdr *sh = s->shm.addr;
        seg_lock(sh);
        for (uint32_t off = sh->free_head; off; off = blk_at(sh, off)->next_free)
            total += blk_at(sh, off)->size;
        seg_unlock(sh);
    }
    pthread_mutex_unlock(&heap_mutex);
    return total;
}
