/*
 * libcmp_mpi's internals, shared by the job (mpi_job.c), rank 0's pools
 * (mpi_pool.c) and the servers (mpi_serve.c). Never installed.
 *
 * The wire: every message is a batch (TAG_BATCH) of records, each a
 * fixed header and, unless it is big, its bytes inline (padded to 8). A
 * big record's bytes follow as npieces messages of TAG_PIECE from the same
 * rank, sent straight from (and received straight into) the memory the
 * bytes live in: MPI keeps messages of one tag from one rank in order, so
 * a receiver that reads a batch and then the pieces it announces gets the
 * right ones.
 */
#ifndef CMP_MPI_INTERNAL_H
#define CMP_MPI_INTERNAL_H

#include "cmp_mpi.h"
#include "internal.h"

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

enum { CMP__MPI_TAG_BATCH = 7101, CMP__MPI_TAG_PIECE = 7102 };

enum {
    CMP__MPI_CREATE = 1, /* 0 -> k: bytes the config; workers asked for */
    CMP__MPI_CREATED,    /* k -> 0: status 0 or -errno; workers; bytes the host */
    CMP__MPI_TASK,       /* 0 -> k: id, the task's bytes */
    CMP__MPI_RESULT,     /* k -> 0: id, status, cause, pid, the result's bytes */
    CMP__MPI_CLOSE,      /* 0 -> k: no more tasks for that pool */
    CMP__MPI_TERMINATE,  /* 0 -> k: end that pool now */
    CMP__MPI_ENDED,      /* k -> 0: that pool's workers are gone */
    CMP__MPI_STOP,       /* 0 -> k: the job ends; status 1: a rank was lost */
    CMP__MPI_ALIVE,      /* k -> 0: nothing else to say, while tasks run */
    CMP__MPI_PIDS,       /* k -> 0: bytes its pool's worker pids (int32), when they change */
    CMP__MPI_CANCEL,     /* 0 -> k: drop task id if no worker has taken it */
};

/* A serving rank looks at its pools' worker pids this often (a worker
 * replaced: rank 0's pool._pool lists the new one). */
#define CMP__MPI_PIDS_NS 20000000L
#define CMP__MPI_PIDS_MAX 1024

typedef struct cmp__mpi_rec {
    uint32_t kind;
    uint32_t npieces; /* 0: bytes inline; else that many TAG_PIECE messages */
    uint64_t pool, id, len;
    int32_t status, cause, pid, workers;
} cmp__mpi_rec;

/* A record's bytes are inline below this size, pieces from it on. */
#define CMP__MPI_INLINE_MAX CMP_MPI_BIG

/* One growing batch per destination. */
typedef struct {
    char *buf;
    size_t len, cap;
} cmp__mpi_batch;

/* Appends a record with its inline bytes (rec->len of them at data, or
 * none when rec->npieces). 0, or -ENOMEM. */
int cmp__mpi_batch_add(cmp__mpi_batch *b, const cmp__mpi_rec *rec, const void *data);
/* Sends the batch to dest (the buffer goes with the send); 0 or -ENOMEM. */
int cmp__mpi_batch_flush(cmp__mpi_batch *b, int dest);

/* Sends len bytes at buf to dest without waiting (MPI_Isend). When the
 * send completes, buf is freed with free() if own, and release(rarg) is
 * queued (cmp__mpi_sends_test hands it back). 0 or -ENOMEM. */
int cmp__mpi_send(int dest, int tag, void *buf, size_t len, int own, void (*release)(void *),
                  void *rarg);
/* Completes the sends that are done; their releases go to *rel (up to
 * max; the rest later). Returns how many sends completed. */
typedef struct {
    void (*fn)(void *);
    void *arg;
} cmp__mpi_release;
int cmp__mpi_sends_test(cmp__mpi_release *rel, int max, int *nrel);
/* Sends still in flight. */
int cmp__mpi_sends_pending(void);
/* Gives up the sends to dest (a lost rank): their buffers are not freed
 * nor released (MPI may still hold them). */
void cmp__mpi_sends_forget(int dest);

/* Receives one batch if one is there (from src, or MPI_ANY_SOURCE):
 * *buf (free() it), *len, *from. 1, 0 (nothing), or -EPROTO/-ENOMEM. */
int cmp__mpi_recv_batch(int src, char **buf, size_t *len, int *from);
/* Walks a batch: the record at *off and its inline bytes; advances *off.
 * 1, 0 at the end, -EPROTO when malformed. */
int cmp__mpi_batch_next(const char *buf, size_t len, size_t *off, cmp__mpi_rec *rec,
                        const char **data);
/* Receives the npieces pieces of a big record from src into buf (len
 * bytes in all). 0 or -EPROTO. */
int cmp__mpi_recv_pieces(int src, char *buf, size_t len, unsigned npieces);

/* The job's state (mpi_job.c): our communicator (errors return), and
 * lost: a rank is gone, so MPI is not finalized (it would wait for it). */
extern int cmp__mpi_rank, cmp__mpi_size, cmp__mpi_lost;
extern MPI_Comm cmp__mpi_comm;

/* A serving rank with tasks says ALIVE when it has sent nothing for this
 * long, so that rank 0 can tell a rank that is gone from a busy one. */
#define CMP__MPI_HEARTBEAT_NS 250000000L

/* Idle backoff: the sleep after `idle` empty turns in a row, in ns (0: yield
 * only). Both sides poll MPI, which has no descriptor to wait on. */
long cmp__mpi_backoff_ns(unsigned idle, int busy);

/* Rank 0: stops the communication thread (mpi_pool.c). */
void cmp__mpi_pool_shutdown(void);

/* ---- a map u64 -> u64 (ids never 0), open addressing ---- */
typedef struct {
    uint64_t *keys, *vals;
    size_t cap, len; /* cap a power of two, or 0 */
} cmp__mpi_map;
/* 0, or -ENOMEM. */
int cmp__mpi_map_put(cmp__mpi_map *m, uint64_t key, uint64_t val);
/* 1 with *val, or 0 when absent. */
int cmp__mpi_map_get(const cmp__mpi_map *m, uint64_t key, uint64_t *val);
/* 1 with *val (may be NULL) and the key removed, or 0 when absent. */
int cmp__mpi_map_take(cmp__mpi_map *m, uint64_t key, uint64_t *val);
void cmp__mpi_map_free(cmp__mpi_map *m);

/* Pieces of at most this many bytes (MPI counts are int). */
#define CMP__MPI_PIECE_MAX ((size_t)1 << 30)
/* How many pieces iov makes. */
unsigned cmp__mpi_npieces(const struct iovec *iov, int iovcnt);
/* Sends iov's bytes to dest as that many TAG_PIECE messages, straight from
 * their memory; release(rarg) once all are sent. 0, or -ENOMEM/-EPROTO
 * (then release is not called, and what went out is still in flight). */
int cmp__mpi_send_pieces(int dest, const struct iovec *iov, int iovcnt, void (*release)(void *),
                         void *rarg);

/* ---- the arena (mpi_arena.c): big tasks in memory the workers share ---- */

/* Maps the arena (once; before the first local pool forks). 0, or a
 * negative errno (then tasks travel through the pools' rings). */
int cmp__mpi_arena_open(void);
/* A block of at least len bytes for a task: *data gets where to write it.
 * Returns the block (>= 0), -ENOMEM (no room: the ring then), -ENODEV. */
int cmp__mpi_arena_get(size_t len, char **data);
/* Where the block is, for the worker (cmp__mpi_arena_enter). */
uint64_t cmp__mpi_arena_offset(int block);
/* The block's task has come out: it is free unless a worker keeps it. */
void cmp__mpi_arena_done(int block);
/* In a worker: the bytes at off, held by this worker until the task
 * function returns (leave), or longer with cmp_mpi_task_keep. */
char *cmp__mpi_arena_enter(uint64_t off);
void cmp__mpi_arena_leave(void);

/* Big results (the arena's result slots). tok: the serving rank's token
 * for the task (never 0), travelling in its frame.
 * In a worker, begin before the task function: a big result written whole
 * at once (as _cmp's workers write theirs) goes straight into a free slot.
 * move after it: the big result in out goes to a slot (copied there if it
 * was not written there), and out keeps only the frame naming it. 0, or
 * -ENOSPC with out as it was (small, too big, no free slot, no arena). */
void cmp__mpi_result_begin(uint32_t tok, cmp_pool_result_t *out);
int cmp__mpi_result_move(uint32_t tok, cmp_pool_result_t *out);
/* Serving rank: when (data, len) is the frame of tok's task, the slot it
 * names (>= 0, the rank's now: free it) and its bytes; else -1. */
int cmp__mpi_result_take(uint32_t tok, const void *data, size_t len, char **bytes, size_t *blen);
void cmp__mpi_result_free(int slot);
/* tok's task came out without its frame (lost, cancelled): the slot it
 * may have claimed is freed once its writer is gone (now, or by a later
 * sweep, which the serving rank runs every few ms). */
void cmp__mpi_result_drop(uint32_t tok);
void cmp__mpi_results_sweep(void);
/* Slots a worker holds (not the rank's own, being sent): at the end of a
 * job, slots leaked. */
unsigned cmp__mpi_results_held(void);

#endif
