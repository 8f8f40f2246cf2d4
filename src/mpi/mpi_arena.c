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
 * Big results go the other way through result slots, after the blocks:
 * a worker whose task wrote a big result claims a free slot (one CAS on
 * the slot's word: its task's token and its pid), copies the result there
 * and hands the pool only a frame naming the slot; the serving rank sends
 * the slot's bytes to rank 0 straight from there (MPI_Isend) and frees it
 * when the send completes. No copy into the pool's ring and none out of it
 * on the serving rank, and no hand-off streamed through the 1 MiB ring.
 * A worker that dies with a slot (killed while it copied) never sent its
 * frame: its task comes out LOST, and the serving rank frees the slot that
 * task's token claimed once the worker is gone. No free slot, or a result
 * too big for one: the result goes through the ring, as before.
 *
 * CMP_MPI_NO_ARENA in a serving rank's environment turns it off (tasks
 * and results then travel through the pools' rings, a copy in and one
 * out): to measure what it saves. For the tests: CMP_MPI_RESULT_SLOTS=n
 * uses only n slots (0: the arena is full for results, so they fall back
 * to the ring), and CMP_MPI_TEST_KILL_RESULT=L makes a worker kill itself
 * (SIGKILL) halfway through copying a result of L to L + 255 bytes into
 * its slot.
 */
#include "mpi_internal.h"

#include "atomic.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

/* Address space only: a block's pages are allocated when MPI writes them. */
#define ARENA_CAP ((size_t)16 << 30)
/* Beyond this much in blocks, a free block of any larger size is reused
 * rather than a new one cut (a map of mixed sizes would cut without end). */
#define ARENA_SOFT ((size_t)1 << 30)
#define BLOCKS_MAX 4096
#define HDR 64 /* the header's room: the bytes start cache-line aligned */
#define PAGE 4096
/* The result slots: a page of slot words, then the slots, after the task
 * blocks (address space only, as theirs). */
#define RES_SLOTS 64
#define RES_CAP ((size_t)512 << 20)
#define RES_BASE ARENA_CAP
#define MAP_LEN (ARENA_CAP + PAGE + RES_SLOTS * RES_CAP)

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

/* A result frame starts with this, chosen when the arena is mapped (the
 * workers inherit it): a task's own result of the frame's size is not
 * taken for one (the token and the slot's word must match too). */
static uint64_t magic;
/* Serving rank: slots whose task came out without its frame, to free
 * once their writer is gone. */
static unsigned char doomed[RES_SLOTS];
static unsigned nslots = RES_SLOTS;
static size_t kill_len; /* CMP_MPI_TEST_KILL_RESULT; 0: none */

typedef struct {
    uint64_t magic;
    uint32_t slot, tok;
    uint64_t len;
} res_frame;

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
    if (ftruncate(fd, (off_t)MAP_LEN) < 0) {
        open_rc = -errno;
        close(fd);
        return open_rc;
    }
    void *m = mmap(NULL, MAP_LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    int err = errno;
    close(fd); /* the mapping keeps the memory; forked workers inherit it */
    if (m == MAP_FAILED)
        return open_rc = -err;
    base = m;
    if (getrandom(&magic, sizeof magic, 0) != sizeof magic)
        magic = (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)m;
    magic |= 1;
    const char *env = getenv("CMP_MPI_RESULT_SLOTS");
    if (env && strtoul(env, NULL, 10) < RES_SLOTS)
        nslots = (unsigned)strtoul(env, NULL, 10);
    if ((env = getenv("CMP_MPI_TEST_KILL_RESULT")))
        kill_len = (size_t)strtoull(env, NULL, 10);
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

/* ---- big results ---------------------------------------------------------- */

/* A slot's word: its claimer's token << 32 | pid; pid 0 once the serving
 * rank has the slot (sending it); 0: free. */
static uint64_t *slot_word(unsigned i)
{
    return (uint64_t *)(void *)(base + RES_BASE) + i;
}

static char *slot_data(unsigned i)
{
    return base + RES_BASE + PAGE + i * RES_CAP;
}

/* Claims a free slot for tok's result of len bytes: its index, or -1. */
static int claim(uint32_t tok, size_t len)
{
    if (!base || !tok || len < CMP__MPI_INLINE_MAX || len > RES_CAP)
        return -1;
    uint64_t mine = (uint64_t)tok << 32 | (uint32_t)getpid();
    for (unsigned i = 0; i < nslots; i++) {
        uint64_t expected = 0;
        /* the lowest free slot: the pages of the first few stay warm */
        if (cmp__load64_relaxed(slot_word(i)) == 0 &&
            cmp__cas64_acquire(slot_word(i), &expected, mine))
            return (int)i;
    }
    return -1;
}

static int test_kill(size_t len)
{
    return kill_len && len >= kill_len && len - kill_len < 256;
}

/* In a worker: the task being run (its token), and the slot its result
 * was written to straight (by the pool's room, below). */
static uint32_t room_tok;
static int room_slot = -1;

static void *room_get(size_t len)
{
    int i = room_slot < 0 ? claim(room_tok, len) : -1;
    if (i < 0)
        return NULL;
    if (test_kill(len))
        raise(SIGKILL); /* the tests' worker killed as it returns */
    room_slot = i;
    return slot_data((unsigned)i);
}

static void room_put(void *room)
{
    (void)room;
    cmp__store64_release(slot_word((unsigned)room_slot), 0);
    room_slot = -1;
}

static const cmp__pool_room_t room = {room_get, room_put};

void cmp__mpi_result_begin(uint32_t tok, cmp_pool_result_t *out)
{
    if (!base || !tok || !nslots)
        return;
    room_tok = tok;
    room_slot = -1;
    cmp__pool_result_room(out, &room);
}

/* The frame naming slot i, for a result of len bytes, as out's only bytes. */
static void put_frame(cmp_pool_result_t *out, unsigned i, uint32_t tok, size_t len)
{
    res_frame f = {magic, i, tok, len};
    /* out has room for far more already (or none is in use): 24 bytes */
    char *at = cmp_pool_result_extend(out, sizeof f);
    if (at)
        memcpy(at, &f, sizeof f);
}

int cmp__mpi_result_move(uint32_t tok, cmp_pool_result_t *out)
{
    size_t len;
    const char *bytes = cmp__pool_result_bytes(out, &len);
    if (room_slot >= 0 && bytes == slot_data((unsigned)room_slot)) {
        /* written there straight: only the frame goes by the ring */
        unsigned i = (unsigned)room_slot;
        room_slot = -1;
        cmp__pool_result_detach(out);
        cmp__pool_result_room(out, NULL);
        put_frame(out, i, tok, len);
        return 0;
    }
    cmp__pool_result_room(out, NULL); /* the result is in its own buffer */
    int i = claim(tok, len);
    if (i < 0 && test_kill(len))
        raise(SIGKILL); /* on its way to the ring, then */
    if (i < 0)
        return -ENOSPC;
    if (test_kill(len)) {
        memcpy(slot_data((unsigned)i), bytes, len / 2);
        raise(SIGKILL); /* the tests' worker killed while it returns */
    }
    memcpy(slot_data((unsigned)i), bytes, len);
    cmp_pool_result_clear(out);
    put_frame(out, (unsigned)i, tok, len);
    return 0;
}

int cmp__mpi_result_take(uint32_t tok, const void *data, size_t len, char **bytes, size_t *blen)
{
    res_frame f;
    if (!base || !tok || len != sizeof f)
        return -1;
    memcpy(&f, data, sizeof f);
    if (f.magic != magic || f.tok != tok || f.slot >= RES_SLOTS || f.len > RES_CAP)
        return -1;
    /* acquire: the worker's copy came before its frame, which we hold */
    uint64_t w = cmp__load64_acquire(slot_word(f.slot));
    if (w >> 32 != tok || (uint32_t)w == 0)
        return -1;
    cmp__store64_relaxed(slot_word(f.slot), (uint64_t)tok << 32);
    *bytes = slot_data(f.slot);
    *blen = (size_t)f.len;
    return (int)f.slot;
}

void cmp__mpi_result_free(int slot)
{
    /* release: MPI has read the bytes before a worker writes the slot again */
    cmp__store64_release(slot_word((unsigned)slot), 0);
}

void cmp__mpi_result_drop(uint32_t tok)
{
    if (!base || !tok)
        return;
    for (unsigned i = 0; i < RES_SLOTS; i++) {
        uint64_t w = cmp__load64_acquire(slot_word(i));
        if (w >> 32 == tok && (uint32_t)w != 0)
            doomed[i] = 1;
    }
    cmp__mpi_results_sweep();
}

void cmp__mpi_results_sweep(void)
{
    for (unsigned i = 0; i < RES_SLOTS; i++) {
        if (!doomed[i])
            continue;
        /* a writer still alive (terminate is killing it) may still copy */
        uint32_t pid = (uint32_t)cmp__load64_acquire(slot_word(i));
        if (pid && alive(pid))
            continue;
        doomed[i] = 0;
        if (pid)
            cmp__store64_release(slot_word(i), 0);
    }
}

unsigned cmp__mpi_results_held(void)
{
    unsigned n = 0;
    for (unsigned i = 0; base && i < RES_SLOTS; i++)
        n += (uint32_t)cmp__load64_acquire(slot_word(i)) != 0;
    return n;
}
