/*
 * Declarations shared by libcmp's own files (cmp__ prefix), never installed.
 */
#ifndef CMP_INTERNAL_H
#define CMP_INTERNAL_H

#include "cmp.h"

#include <stdint.h>
#include <time.h>

/* How many times a lock's waiter re-checks the word before it sleeps
 * (where spin.h lets it spin at all). Short: on two cores a long spin only
 * steals time from the holder. */
#define CMP__SPIN_LIMIT 100

/* Waiters on an owned lock wake this often to check the holder (cmp.h). */
#define CMP__OWNER_CHECK_NS CMP_OWNER_CHECK_NS

/* futex on a word in shared memory (never FUTEX_PRIVATE: other processes
 * wait on the same word).
 * wait: sleeps while *word == expected, until woken or the absolute
 * CLOCK_MONOTONIC deadline (NULL = none). Returns 0 when woken or when the
 * word had already changed (-EAGAIN is folded into 0: recheck either way),
 * -ETIMEDOUT, -EINTR. */
int cmp__futex_wait(uint32_t *word, uint32_t expected, const struct timespec *deadline);
/* Wakes up to n waiters; returns how many woke. */
int cmp__futex_wake(uint32_t *word, int n);
/* Moves up to n waiters of word to target without waking them, if *word
 * still equals expected (FUTEX_CMP_REQUEUE). Returns how many moved,
 * -EAGAIN when the word changed, or another negative errno. */
int cmp__futex_requeue(uint32_t *word, uint32_t expected, uint32_t *target, int n);

/* Lock internals for the condition variable's wait morphing (lock.c). */
/* The word a lock's sleepers wait on. */
uint32_t *cmp__lock_futex_word(cmp_lock_t *lock);
/* Marks a lock the caller holds as having sleepers, so that its release
 * wakes one. */
void cmp__lock_mark_waiters(cmp_lock_t *lock);

/* The condition variable's deferred wake-up (cond.c): a notify made while
 * holding an RLock wakes its waiter when that RLock is released, from the
 * release itself. An RLock's full release calls this; inline, since it is
 * on every release and nearly always one thread-local load. */
extern __thread const cmp_rlock_t *cmp__cond_deferred_rlock;
void cmp__cond_flush_deferred(void);
static inline void cmp__cond_released(const cmp_rlock_t *rlock)
{
    if (cmp__cond_deferred_rlock == rlock)
        cmp__cond_flush_deferred();
}

/* 1 for a zero deadline (CMP_NOWAIT, {0, 0}): a non-blocking attempt. */
static inline int cmp__is_nowait(const struct timespec *d)
{
    return d && d->tv_sec == 0 && d->tv_nsec == 0;
}
/* Earlier of two deadlines (NULL = infinity). */
const struct timespec *cmp__deadline_min(const struct timespec *a, const struct timespec *b);
/* The time left until deadline (non-NULL), 0 once it has passed: a
 * relative timeout for ppoll. */
void cmp__deadline_left(const struct timespec *deadline, struct timespec *left);
/* 1 if deadline is non-NULL and has passed. */
int cmp__deadline_passed(const struct timespec *deadline);
/* now + ns on CLOCK_MONOTONIC. */
void cmp__deadline_in_ns(struct timespec *out, long ns);
/* The time on clock (CLOCK_MONOTONIC, or CLOCK_MONOTONIC_COARSE: a few ms
 * of resolution, no system call) in ns. */
int64_t cmp__now_ns(clockid_t clock);

/* Kernel thread id of the caller, cached per thread. */
uint32_t cmp__self_tid(void);

/* The caller's identity as a lock records it: pid in the low 32 bits (below
 * CMP__LOCK_WAITERS), a tag of its start time in the high 32 (0 when /proc
 * could not be read). Cached per process, recomputed after fork. Inline: it
 * is on every lock operation, and the cached case is one load. */
/* hidden: a direct load in libcmp.so too, not one through the GOT */
extern uint64_t cmp__self_id_cache __attribute__((visibility("hidden")));
uint64_t cmp__self_id_slow(void);
static inline uint64_t cmp__self_id(void)
{
    uint64_t id = __atomic_load_n(&cmp__self_id_cache, __ATOMIC_RELAXED);
    if (__builtin_expect(id != 0, 1))
        return id;
    return cmp__self_id_slow();
}
/* 1 while the process an identity names lives: not a zombie, and the pid
 * not given to a newer process (the start time tells, to the clock tick). */
int cmp__id_alive(uint64_t id);

/* A malloc'ed buffer buf (of capacity *cap; NULL and 0 at first) that
 * holds at least len bytes, its contents kept: buf itself while it has
 * room, else a larger one (doubling from 256 bytes) and *cap updated.
 * NULL when out of memory (buf is unchanged). */
void *cmp__grow(void *buf, size_t *cap, size_t len);

struct iovec;
/* sendmsg on a socket with fd attached (SCM_RIGHTS; fd < 0: none),
 * MSG_NOSIGNAL, retried on EINTR. Returns the bytes sent or a negative
 * errno (fdshare.c). */
long cmp__send_fd(int sock, struct iovec *iov, int iovcnt, int fd);
/* One recvmsg (flags | MSG_CMSG_CLOEXEC) into iov: the first fd that
 * arrives goes to *fd when it is -1, any other is closed. Returns the
 * bytes read (0 at EOF), or a negative errno; -EPROTO when control data
 * was cut. */
long cmp__recv_fd(int sock, struct iovec *iov, int flags, int *fd);

/* Fills out with len random bytes (getrandom). 0 or a negative errno. */
int cmp__random_bytes(void *out, size_t len);

/* Shared heap test hooks (shm.c). heap_lock takes the lock of the first
 * heap segment (creating it) and returns 0 with it held; free_bytes sums the
 * free lists of every heap segment this process maps. */
int cmp__shared_heap_lock(void);
size_t cmp__shared_heap_free_bytes(void);

/* Sets used[k] to 1 for each of the n files that a living process maps
 * or holds open, and for all when /proc cannot tell; else 0. One pass over
 * /proc for all of them (tracker.c). */
struct cmp__file_id {
    dev_t dev;
    ino_t ino;
};
void cmp__files_in_use(const struct cmp__file_id *files, int *used, size_t n);

/* The bytes a worker's task wrote to r so far (pool.c): for a layer that
 * moves a big result elsewhere (libcmp_mpi's arena) before it reaches the
 * ring. NULL when none. */
const char *cmp__pool_result_bytes(const cmp_pool_result_t *r, size_t *len);
/* Where a worker's result goes when it is written whole at once (the
 * first extend of an empty result): get(len) memory for it, or NULL for
 * the result's own buffer; put gives back memory the result no longer
 * uses (it grew, or was cleared). Set on r in a worker by such a layer
 * around its task function; NULL: none. */
typedef struct {
    void *(*get)(size_t len);
    void (*put)(void *room);
} cmp__pool_room_t;
void cmp__pool_result_room(cmp_pool_result_t *r, const cmp__pool_room_t *room);
/* The result's memory (from room) is the caller's now; r is empty. */
void cmp__pool_result_detach(cmp_pool_result_t *r);

#endif /* CMP_INTERNAL_H */
