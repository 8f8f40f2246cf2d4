/*
 * A serving rank's arena: shared memory its local pools' workers see,
 * mapped before the first of them forks, into which big tasks are received
 * straight from MPI. The task a worker gets is then only where the bytes
 * are, and its task function reads them in place: no copy into the pool's
 * ring on the serving rank, none out of it in the worker.
 *
 * The arena is a sparse memfd (only what is touched costs memory), cut
 * into blocks the serving rank hands out and reuses. A block's header, in
 * the arena, says whether it is free and which worker holds it: the worker
 * that runs the task frees it when its task function returns, or later
 * when it kept the bytes (cmp_mpi_task_keep, for arrays decoded in place).
 * The serving rank frees a block no worker took (the task was cancelled,
 * or its worker died first), and takes back the blocks of workers that
 * died keeping them.
 *
 * CMP_MPI_NO_ARENA in a serving rank's environment turns it off (tasks
 * then travel through the pools' rings, a copy in and one out): to
 * measure what it saves.
 */
#include "mpi_internal.h"

#include "atomic.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Address space only: a block's pages are allocated when MPI writes them. */
#define ARENA_CAP ((size_t)16 << 30)
/* Beyond this much in blocks, a free block of any larger size is reused
 * rather than a new one cut (a map of mixed sizes would cut without end). */
#define ARENA_SOFT ((size_t)1 << 30)
#define BLOCKS_MAX 4096
#define HDR 64 /* the header's room: the bytes start cache-line aligned */
#define PAGE 4096

enum { FREE, USED };

typedef struct {
    uint32_t state;  /* FREE or USED; the holder's release store frees it */
    uint32_t holder; /* the pid of the worker that runs or keeps it; 0: none */
} blk_hdr;

static char *base;
static size_t top;
static int open_rc = 1; /* 1: not tried yet */
static struct {
    uint64_t off; /* of the header */
    size_t cap;   /* bytes after the header */
    int inflight; /* its task's outcome has not come yet */
} blocks[BLOCKS_MAX];
static unsigned nblocks;

/* The worker side: the block of the task being run. */
static blk_hdr *current;
static int kept;

static blk_hdr *hdr(uint64_t off)
{
    return (blk_hdr *)(void *)(base + off);
}

int cmp__mpi_arena_open(void)
{
    if (open_rc != 1)
        return open_rc;
    if (getenv("CMP_MPI_NO_ARENA"))
        return open_rc = -ENOSYS;
    int fd = memfd_create("cmp-mpi-arena", MFD_CLOEXEC);
    if (fd < 0)
        return open_rc = -errno;
    if (ftruncate(fd, (off_t)ARENA_CAP) < 0) {
        open_rc = -errno;
        close(fd);
        return open_rc;
    }
    void *m = mmap(NULL, ARENA_CAP, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    int err = errno;
    close(fd); /* the mapping keeps the memory; forked workers inherit it */
    if (m == MAP_FAILED)
        return open_rc = -err;
    base = m;
    return open_rc = 0;
}

static int alive(uint32_t pid)
{
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

/* Free for a new task: no worker holds it, and its last task is out. */
static int reusable(unsigned i)
{
    if (blocks[i].inflight)
        return 0;
    blk_hdr *h = hdr(blocks[i].off);
    if (cmp__load_acquire(&h->state) == FREE)
        return 1;
    /* kept by a worker that is gone: nobody can read it any more */
    uint32_t holder = cmp__load_acquire(&h->holder);
    return holder && !alive(holder);
}

int cmp__mpi_arena_get(size_t len, char **data)
{
    if (!base)
        return -ENODEV;
    int best = -1;
    for (unsigned i = 0; i < nblocks; i++) {
        size_t cap = blocks[i].cap;
        if (cap < len || (cap / 2 > len && top < ARENA_SOFT))
            continue;
        if ((best < 0 || cap < blocks[best].cap) && reusable(i))
            best = (int)i;
    }
    if (best < 0) {
        size_t size = (HDR + len + PAGE - 1) / PAGE * PAGE;
        if (nblocks == BLOCKS_MAX || size > ARENA_CAP - top)
            return -ENOMEM;
        best = (int)nblocks++;
        blocks[best].off = top;
        blocks[best].cap = size - HDR;
        top += size;
    }
    blk_hdr *h = hdr(blocks[best].off);
    /* relaxed: the task that names the block publishes these (the pool's
     * queue put is a release), and no worker looks at a free block */
    cmp__store_relaxed(&h->holder, 0);
    cmp__store_relaxed(&h->state, USED);
    blocks[best].inflight = 1;
    *data = base + blocks[best].off + HDR;
    return best;
}

uint64_t cmp__mpi_arena_offset(int block)
{
    return blocks[block].off;
}

void cmp__mpi_arena_done(int block)
{
    blocks[block].inflight = 0;
    blk_hdr *h = hdr(blocks[block].off);
    /* acquire: a worker that took the task wrote holder before it ran it,
     * and the outcome we are handling came after that */
    uint32_t holder = cmp__load_acquire(&h->holder);
    if (!holder || !alive(holder))
        cmp__store_release(&h->state, FREE);
}

/* ---- in a worker --------------------------------------------------------- */

char *cmp__mpi_arena_enter(uint64_t off)
{
    blk_hdr *h = hdr(off);
    /* release: the serving rank reads it once our outcome has come */
    cmp__store_release(&h->holder, (uint32_t)getpid());
    current = h;
    kept = 0;
    return base + off + HDR;
}

void cmp__mpi_arena_leave(void)
{
    if (current && !kept)
        cmp_mpi_task_release(current);
    current = NULL;
}

void *cmp_mpi_task_keep(void)
{
    if (!current || kept)
        return NULL;
    kept = 1;
    return current;
}

void cmp_mpi_task_release(void *handle)
{
    blk_hdr *h = handle;
    if (!h)
        return;
    cmp__store_relaxed(&h->holder, 0);
    /* release: our reads of the bytes are done before the rank reuses them */
    cmp__store_release(&h->state, FREE);
}
