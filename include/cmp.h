/*
 * libcmp — process-based parallelism for C: processes, shared memory and
 * futex-based synchronization that works across fork().
 *
 * Conventions (the whole API follows them):
 *  - A function that can fail returns 0 (or a count) on success and a
 *    negative errno on failure; it never reports through errno.
 *    A timeout is -ETIMEDOUT, a failed non-blocking attempt -EAGAIN, and a
 *    blocking wait interrupted by a signal returns -EINTR so that the caller
 *    can run its signal handlers and retry with the time that is left.
 *  - Deadlines are absolute CLOCK_MONOTONIC times; NULL means "wait forever".
 *    Build one from a relative timeout with cmp_deadline_after().
 *  - Objects that live in shared memory (locks, semaphores, ...) are
 *    fixed-size, hold no pointers, and have an init function. Place them in
 *    memory that every process maps (cmp_shared_alloc(), a cmp_shm_t
 *    segment, or your own MAP_SHARED mapping) before forking. Their fields
 *    are private.
 *  - Acquire functions of owned locks return CMP_OWNER_DIED (> 0) instead
 *    of 0 when they succeeded by recovering a lock whose holder died.
 *
 * Linux only (futex, memfd, pidfd).
 */
#ifndef CMP_H
#define CMP_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Types (fields are private; sizes and layouts are part of the ABI)
 * ------------------------------------------------------------------------ */

/* A mapped shared-memory segment (process-local handle). */
typedef struct cmp_shm {
    int fd;     /* memfd, O_CLOEXEC */
    void *addr; /* where this process maps it */
    size_t size;
} cmp_shm_t;

/* A reference, local to this process, to a block of the shared heap. */
typedef struct cmp_shared cmp_shared_t;

/* Non-recursive lock. Any process may release it (like a binary semaphore);
 * the word records who acquired it last, so that a dead holder can be
 * detected: its pid and a tag of its start time, so that a new process
 * given the dead holder's pid is not mistaken for it. */
typedef struct cmp_lock {
    /* 0 = free; else low 32 bits holder pid | CMP__LOCK_WAITERS (the futex
     * word), high 32 bits the holder's start time (see cmp_lock_abandoned) */
    uint64_t state __attribute__((aligned(8)));
} cmp_lock_t;

/* Recursive lock owned by one thread of one process. */
typedef struct cmp_rlock {
    cmp_lock_t lock;
    uint32_t count; /* recursion depth, touched only by the owner */
    uint32_t owner; /* kernel thread id of the owner, 0 when free */
} cmp_rlock_t;

/* Counting semaphore with an optional upper bound. */
typedef struct cmp_sem {
    uint32_t value; /* futex word */
    uint32_t waiters;
    uint32_t max;     /* CMP_SEM_VALUE_MAX when unbounded */
    uint32_t spin_ns; /* adaptive spin budget (a hint) */
    uint32_t cpu;     /* the last releaser's CPU + 1 (a hint) */
} cmp_sem_t;

/* Manual-reset event. */
typedef struct cmp_event {
    uint32_t flag; /* futex word: bit 0 set, above it a count of sets */
    uint32_t waiters;
    uint32_t spin_ns; /* adaptive spin budget (a hint) */
    uint32_t cpu;     /* the last setter's CPU + 1 (a hint) */
} cmp_event_t;

/* Condition variable, usable with cmp_lock_t or cmp_rlock_t. */
typedef struct cmp_cond {
    cmp_lock_t guard;  /* protects the counters below */
    uint32_t seq;      /* futex word, bumped by every notify */
    uint32_t nwaiters; /* processes/threads inside wait */
    uint32_t nsignals; /* wake-ups granted but not yet consumed */
    uint32_t spin_ns;  /* adaptive spin budget (a hint) */
    uint32_t sleepers; /* waiters inside the futex wait on seq */
    uint32_t morphs;   /* nonzero once a notify moved waiters to a lock */
} cmp_cond_t;

/* Reusable barrier (the semantics of Python's threading.Barrier). */
typedef struct cmp_barrier {
    cmp_lock_t guard;
    uint32_t seq; /* futex word, bumped on every state change */
    uint32_t parties;
    uint32_t count; /* arrivals in the current round */
    uint32_t state; /* private: filling, draining, resetting, broken */
    uint32_t generation;
} cmp_barrier_t;

/* Message ring: a byte ring for variable-size messages, many producers and
 * many consumers, in shared memory. The header is followed directly by the
 * data area (see cmp_ring_footprint()). */
typedef struct cmp_ring {
    /* read-only after init */
    uint64_t capacity;  /* bytes in the data area, a power of two */
    uint64_t max_count; /* messages the ring may hold, 0 = no limit */
    uint32_t closed;    /* futex-free flag, set by cmp_ring_close() */
    int32_t spill_fd;   /* overflow file, -1 = none (see "Message ring") */
    uint64_t spill_id;  /* random, set with the spill: names it to read-aheads */
    uint32_t pad0[8];
    /* producer side (own cache line) */
    uint64_t tail;            /* published write position | message count */
    cmp_lock_t plock;         /* held by the producer putting a message */
    uint64_t spill_tail;      /* published spill write position | count */
    uint64_t head_seen;       /* head as a producer last loaded it (a hint) */
    uint64_t spill_head_seen; /* spill_head as a producer last loaded it */
    uint32_t pstream;         /* 1 while a streamed message is half written */
    uint32_t sgate;           /* a queue's stream in flight: open/taken/aborted */
    uint32_t prod_cpu;        /* the last publishing producer's CPU + 1 (a hint) */
    uint32_t space_spin_ns;   /* adaptive spin budget of a wait for space (a hint) */
    uint32_t pad1[2];
    /* consumer side (own cache line) */
    uint64_t head;         /* consumed position | message count */
    cmp_lock_t clock;      /* held by the consumer getting a message */
    uint64_t spill_head;   /* consumed spill position | count */
    uint64_t spill_freed;  /* spill pages below this are given back */
    uint64_t tail_seen;    /* tail as a consumer last loaded it (a hint) */
    uint32_t data_wanted;  /* a consumer is waiting for a message (0 or 1) */
    uint32_t cons_cpu;     /* the last consuming consumer's CPU + 1 (a hint) */
    uint32_t data_spin_ns; /* adaptive spin budget of a wait for data (a hint) */
    uint32_t pad2[3];
    /* sleepers (own cache line, written only by a side going to sleep and
     * by its waker, so that checking for a sleeper after every put and get
     * reads a line that stays in the checker's cache) */
    uint32_t data_seq;      /* futex word: bumped when data was published */
    uint32_t data_waiters;  /* the consumer sleeping for data (0 or 1) */
    uint32_t space_seq;     /* futex word: bumped when space was freed */
    uint32_t space_waiters; /* the producer sleeping for space (0 or 1) */
    uint32_t pad3[12];
} cmp_ring_t;

/* Queue: a ring plus the counters of a joinable queue. Followed directly by
 * the ring (see cmp_queue_footprint()). */
typedef struct cmp_queue {
    uint32_t done;         /* futex word: task_done() calls, mod 2^32 */
    uint32_t join_waiters; /* processes inside cmp_queue_join() */
    uint32_t pad[14];
    cmp_ring_t ring;
} cmp_queue_t;

/* A child process (process-local handle). */
typedef struct cmp_process {
    pid_t pid;
    int pidfd;  /* -1 once closed */
    int status; /* raw wait status, valid when reaped != 0 */
    int reaped;
    /* Not our child (a fork server's): its status arrives on status_fd,
     * which is then its sentinel too. 0 for a child of ours. */
    int remote;
    int status_fd;
} cmp_process_t;

/* ------------------------------------------------------------------------
 * Errors and time
 * ------------------------------------------------------------------------ */

/* Returned (> 0) by acquire functions that succeeded by taking over a lock
 * whose holder process died while holding it. The protected data may be
 * inconsistent; the caller now holds the lock. */
#define CMP_OWNER_DIED 1
/* A waiter on an owned lock checks at least this often (nanoseconds)
 * whether the holder is still alive. */
#define CMP_OWNER_CHECK_NS 100000000L

/* Message for a return value of this API (negative errno or
 * CMP_OWNER_DIED). Never NULL. */
const char *cmp_strerror(int err);

/* Fills *out with now + seconds on CLOCK_MONOTONIC. Negative seconds count
 * as 0. Returns 0, or -EINVAL for NaN. */
int cmp_deadline_after(double seconds, struct timespec *out);

/* Seconds left until deadline (0 if past). NULL deadline → +infinity. */
double cmp_deadline_remaining(const struct timespec *deadline);

/* ------------------------------------------------------------------------
 * Shared memory
 * ------------------------------------------------------------------------ */

/* Creates an anonymous memfd segment of size bytes, mapped shared and
 * zero-filled. The kernel frees it when the last process unmaps it.
 * name is only a label for /proc (may be NULL).
 * Returns 0, -EINVAL (size 0), or a negative errno from memfd/mmap. */
int cmp_shm_create(cmp_shm_t *shm, size_t size, const char *name);

/* Maps an existing segment from its fd (for example one received from
 * another process). Takes ownership of fd on success. */
int cmp_shm_attach(cmp_shm_t *shm, int fd, size_t size);

/* Unmaps the segment and closes its fd in this process. */
void cmp_shm_detach(cmp_shm_t *shm);

/* Named segments: POSIX shared memory (/dev/shm), for sharing by name with
 * processes that do not descend from the creator, including programs on
 * Python's own multiprocessing.shared_memory (same names, same files).
 * Unlike memfd segments they outlive their processes until unlinked.
 * A name is given with or without its one leading '/'. */
#define CMP_SHM_CREATE 1     /* create it; -EEXIST if the name is taken */
#define CMP_SHM_MAY_CREATE 2 /* attach it, creating it (empty) if missing */
#define CMP_SHM_NAME_MAX 250
/* Random bytes in a generated name (hex: twice as many characters). Four
 * as the standard library's, whose names fit FreeBSD's 14 characters. */
#define CMP_SHM_RANDOM_BYTES 4

/* Opens the named segment, or with CMP_SHM_CREATE creates it with size
 * bytes (zero-filled, mode 0600 whatever the umask), and maps all of it
 * (an attacher's size is the segment's, and size is ignored). The fd is
 * closed at once (shm->fd is -1): the mapping alone keeps the segment.
 * CMP_SHM_MAY_CREATE is the standard library's O_CREAT without O_EXCL,
 * for subclasses that ask for it: what it creates is empty (-ENODATA).
 * Returns 0; -EINVAL (size 0 with CMP_SHM_CREATE, an empty name or one
 * with a '/' past the first character, an unknown flag); -ENOENT;
 * -EEXIST; -ENODATA (an existing segment of size 0: nothing to map);
 * another negative errno. A segment it created is removed again when the
 * call fails. Release with cmp_shm_detach(). */
int cmp_shm_open(cmp_shm_t *shm, const char *name, int flags, size_t size);

/* Creates a segment as cmp_shm_open() does under a fresh name: prefix and
 * 2 * CMP_SHM_RANDOM_BYTES random hex digits, written to name (len bytes).
 * Returns 0, -ERANGE (name too small), or cmp_shm_open()'s errors. */
int cmp_shm_create_named(cmp_shm_t *shm, size_t size, const char *prefix, char *name, size_t len);

/* Removes the name (mappings stay valid until unmapped). Returns 0,
 * -ENOENT, -EINVAL (as cmp_shm_open), or another negative errno. */
int cmp_shm_unlink(const char *name);

/* Allocates size bytes (zeroed, 64-byte aligned) from the process-wide
 * shared heap, which lives in memfd segments and is inherited across fork.
 * The block is reference-counted per process: a fork gives the child its
 * own reference to every block this process holds, so a block is reused
 * only once no process holds it any more.
 * Returns 0 and sets *out, -EINVAL for size 0, -ENOMEM. */
int cmp_shared_alloc(size_t size, cmp_shared_t **out);

/* Address of the block in this process. */
void *cmp_shared_ptr(const cmp_shared_t *ref);

/* Usable size of the block as requested. */
size_t cmp_shared_size(const cmp_shared_t *ref);

/* Takes another local reference to the block. */
void cmp_shared_retain(cmp_shared_t *ref);

/* Drops a local reference; when this process holds no more, drops the
 * process's reference to the block, freeing it when it was the last. */
void cmp_shared_release(cmp_shared_t *ref);

/* Drops every reference this process holds. A child about to _exit()
 * calls it so that blocks it inherited can be reused. */
void cmp_shared_release_all(void);

/* Resource tracker: named resources (segments, POSIX semaphores) that a
 * program registers are removed once the whole program is dead: by its
 * watcher process the moment its last process ends (as the standard
 * library's resource tracker does), and, when the watcher was killed too,
 * by the first registration of any later program (a sweep). A resource
 * that a living process still maps or holds open is never removed; it
 * stays listed until a sweep finds it unused. The program is the process
 * that registered first and every process forked from it (they inherit
 * its registry's fd); an exec'd child joins with cmp_tracker_adopt(). */
#define CMP_TRACK_SHM 'm' /* a cmp_shm_open() / shm_open() name */
#define CMP_TRACK_SEM 's' /* a sem_open() name */

/* Creates this program's registry and its watcher, once; then sweeps.
 * Later calls start a new watcher when the one this process started died
 * (nothing registered is lost: the registry outlives it), and return 1.
 * Returns 0, 1, or a negative errno (-EPERM: /dev/shm/.cmp-tracker-<euid>
 * is not a private directory of ours). */
int cmp_tracker_start(void);

/* Lists name (as cmp_shm_open takes it) in this program's registry,
 * starting it if needed. Returns 0, -EINVAL (bad kind or name), or
 * another negative errno. */
int cmp_tracker_register(int kind, const char *name);

/* Forgets name (it was unlinked). Returns 0, -ENOENT (not listed). */
int cmp_tracker_unregister(int kind, const char *name);

/* Removes what dead programs registered and no living process uses.
 * Returns how many resources it removed, or a negative errno. */
int cmp_tracker_sweep(void);

/* The registry's fd (O_CLOEXEC) that an exec'd child of the program must
 * inherit and pass to cmp_tracker_adopt(); -1 before cmp_tracker_start(). */
int cmp_tracker_fd(void);

/* Joins the program whose registry fd this process inherited. Returns 0,
 * -EINVAL (fd is no registry lock), or a negative errno. */
int cmp_tracker_adopt(int fd);

/* The watcher's pid, in the process that started it (0 elsewhere). */
pid_t cmp_tracker_watcher_pid(void);

/* For a process that was not forked from this one (spawned, or forked by
 * a fork server): export gives the fd of the block's segment (still ours:
 * send a dup of it or pass it across exec) and the block's offset in it,
 * and takes a reference to the block for the receiver. The receiver's
 * import (fd borrowed: the segment is mapped from a dup, once per process)
 * makes a handle that owns that reference; a process that imported blocks
 * drops all its references at exit(). 0 or a negative errno (-EINVAL:
 * not a block of ours at that offset). */
int cmp_shared_export(cmp_shared_t *ref, int *fd, uint64_t *offset);
int cmp_shared_import(int fd, uint64_t offset, cmp_shared_t **out);

/* The block this process holds that contains addr, with a new local
 * reference (release it), and addr's offset in it. 0 or -ENOENT. */
int cmp_shared_find(const void *addr, cmp_shared_t **out, size_t *offset);

/* ------------------------------------------------------------------------
 * Synchronization
 * ------------------------------------------------------------------------ */

/* Waiting. Every blocking call (lock, semaphore, event, condition,
 * barrier, ring and queue put/get, connection recv) follows one policy
 * (src/spin.h): it spins for a few microseconds before it sleeps on a
 * futex only where the spin can pay, that is while the party it waits for
 * runs on another CPU:
 *  - not when that party last ran on the caller's CPU (objects record the
 *    CPU of whoever last released, set, published or consumed);
 *  - where that party's CPU is unknown (sockets, locks, conditions), and
 *    for a full ring, not while the calling thread has lately been kept
 *    waiting for its own CPU (its run-queue wait in
 *    /proc/thread-self/schedstat, sampled at most once a millisecond): a
 *    spinner that a CPU hog preempts is not a sleeper, so the wake-up that
 *    comes meanwhile would not preempt the hog for it;
 *  - for as long as spins succeed: each object keeps an adaptive budget
 *    (4 to 32 us), off after failures at the minimum, with one probing spin
 *    every 16 waits (a lock, one word, spins a fixed 100 rounds instead,
 *    and a ring's wait for data starts with 32 bare rounds);
 *  - a spin that sees it was descheduled stops at once.
 * A waiter that waits long sleeps: it costs no CPU until woken (a
 * condition's sleeper wakes every CMP_OWNER_CHECK_NS to recheck, as a
 * lock's does). A wake-up never goes to a waiter that would only find a
 * lock held: cmp_cond_notify_lock moves condition waiters to the lock.
 * With CMP_SPIN=0 in the environment every wait sleeps at once. */

#define CMP__LOCK_WAITERS 0x80000000u
#define CMP_SEM_VALUE_MAX 0x7fffffffu

/* Lock. acquire: 0, CMP_OWNER_DIED, -ETIMEDOUT, -EINTR.
 * tryacquire: 0 or -EAGAIN: one compare-and-swap, never a syscall, and so
 * no check for a dead holder; to poll and recover from one, acquire with an
 * expired deadline (which checks the holder's liveness when the lock is held).
 * release: 0, or -EPERM when the lock is not held. */
void cmp_lock_init(cmp_lock_t *lock);
int cmp_lock_acquire(cmp_lock_t *lock, const struct timespec *deadline);
int cmp_lock_tryacquire(cmp_lock_t *lock);
int cmp_lock_release(cmp_lock_t *lock);
/* 1 when held by anyone, 0 when free. */
int cmp_lock_is_locked(const cmp_lock_t *lock);
/* Pid of the process that holds it (the last acquirer), 0 when free. */
pid_t cmp_lock_holder(const cmp_lock_t *lock);
/* 1 when the calling process holds it (any of its threads), else 0. */
int cmp_lock_is_mine(const cmp_lock_t *lock);
/* 1 when the lock is held by a process that has died (a zombie counts as
 * dead), 0 when it is free or its holder lives. A process that was given
 * the dead holder's pid later is told apart by its start time, which the
 * lock recorded with the pid; the one case it cannot tell is a new process
 * started within the same clock tick (1/CLK_TCK s, 10 ms) as the dead
 * holder and given its pid. Reads /proc/PID/stat: a slow-path call, which
 * acquire makes only when it has to wait. Holder and checker must share a
 * pid and a time namespace, as every process sharing a lock does unless it
 * unshares them. */
int cmp_lock_abandoned(const cmp_lock_t *lock);

/* Recursive lock. acquire as for cmp_lock_t (a re-entry returns 0).
 * release: 0, or -EPERM when the calling thread does not own it. */
void cmp_rlock_init(cmp_rlock_t *rlock);
int cmp_rlock_acquire(cmp_rlock_t *rlock, const struct timespec *deadline);
int cmp_rlock_tryacquire(cmp_rlock_t *rlock);
int cmp_rlock_release(cmp_rlock_t *rlock);
/* 1 when the calling thread owns it. */
int cmp_rlock_is_mine(const cmp_rlock_t *rlock);
/* Recursion depth held by the calling thread (0 if not the owner). */
uint32_t cmp_rlock_count(const cmp_rlock_t *rlock);
/* Releases every level at once and returns the depth released (for
 * condition waits), or -EPERM. */
int cmp_rlock_release_all(cmp_rlock_t *rlock);
/* Re-acquires with a saved depth. Returns as cmp_rlock_acquire. */
int cmp_rlock_acquire_count(cmp_rlock_t *rlock, uint32_t count, const struct timespec *deadline);

/* Semaphore. max = CMP_SEM_VALUE_MAX for an unbounded one.
 * init: 0, or -EINVAL when value > max.
 * acquire: 0, -ETIMEDOUT, -EINTR; tryacquire: 0, -EAGAIN.
 * release: 0, or -EOVERFLOW when it would exceed max. */
int cmp_sem_init(cmp_sem_t *sem, uint32_t value, uint32_t max);
int cmp_sem_acquire(cmp_sem_t *sem, const struct timespec *deadline);
int cmp_sem_tryacquire(cmp_sem_t *sem);
int cmp_sem_release(cmp_sem_t *sem);
uint32_t cmp_sem_value(const cmp_sem_t *sem);

/* Event. wait: 0 once set, -ETIMEDOUT, -EINTR. */
void cmp_event_init(cmp_event_t *event);
void cmp_event_set(cmp_event_t *event);
void cmp_event_clear(cmp_event_t *event);
int cmp_event_is_set(const cmp_event_t *event);
int cmp_event_wait(cmp_event_t *event, const struct timespec *deadline);

/* Condition. The caller holds the lock; wait releases it (all levels of an
 * rlock), sleeps until notified or the deadline, and re-acquires it before
 * returning, also on timeout and on -EINTR.
 * wait: 0 when notified, -ETIMEDOUT, -EINTR (lock held again in all three
 * cases); CMP_OWNER_DIED when notified or timed out and re-acquiring took
 * over from a dead holder. -EPERM if the caller does not hold the lock.
 * notify grants up to n waiters their wake-up and returns how many.
 * notify_lock/notify_rlock do the same for a caller that holds the lock
 * the waiters re-acquire (as a notifier usually does; -EPERM otherwise):
 * the granted sleepers are moved to that lock's queue instead of being
 * woken ("wait morphing"), so each runs once the lock is free rather than
 * waking only to find it still held and sleeping again on the lock. With
 * notify_rlock, a few sleepers are woken instead by the RLock's next full
 * release in the calling thread (cmp_rlock_release to count 0,
 * cmp_rlock_release_all, a wait on it), which costs the notify no system
 * call; the condition must then stay valid until that release. */
void cmp_cond_init(cmp_cond_t *cond);
int cmp_cond_wait_lock(cmp_cond_t *cond, cmp_lock_t *lock, const struct timespec *deadline);
int cmp_cond_wait_rlock(cmp_cond_t *cond, cmp_rlock_t *rlock, const struct timespec *deadline);
int cmp_cond_notify(cmp_cond_t *cond, uint32_t n);
int cmp_cond_notify_all(cmp_cond_t *cond);
int cmp_cond_notify_lock(cmp_cond_t *cond, cmp_lock_t *lock, uint32_t n);
int cmp_cond_notify_rlock(cmp_cond_t *cond, cmp_rlock_t *rlock, uint32_t n);
/* Split form for callers that release and re-acquire their own lock
 * (a binding with its own lock objects): register as a waiter while still
 * holding the lock, release it, then sleep; once the lock is held again,
 * call cmp_cond_relocked (a sleeper moved to the lock by notify_lock may
 * have left others queued there, whom the next release must wake). */
int cmp_cond_prepare_wait(cmp_cond_t *cond, uint32_t *ticket);
int cmp_cond_sleep(cmp_cond_t *cond, uint32_t ticket, const struct timespec *deadline);
void cmp_cond_relocked(cmp_cond_t *cond, cmp_lock_t *lock);
/* prepare_wait: always 0. sleep: 0 when notified, -ETIMEDOUT (no longer a
 * waiter), -EINTR (STILL a waiter: call cmp_cond_sleep again with the same
 * ticket and deadline, or withdraw with cmp_cond_cancel_wait).
 * cancel_wait: 0 once withdrawn, 1 if a notify for the caller had already
 * been granted (it is consumed: treat the wait as notified). */
int cmp_cond_cancel_wait(cmp_cond_t *cond, uint32_t ticket);
/* Waiters not yet notified (a snapshot, for repr and tests). */
uint32_t cmp_cond_n_waiting(const cmp_cond_t *cond);

/* Barrier. action (may be NULL) runs in the last process to arrive, before
 * the others are released; a nonzero return breaks the barrier.
 * wait: the arrival index 0..parties-1, -EPIPE when the barrier is or
 * becomes broken (timeout, abort, reset while waiting, failed action:
 * those waiting all get -EPIPE; the one whose deadline passed breaks it and
 * gets -ETIMEDOUT), -EINTR (the barrier is left as it was: the caller
 * withdraws). init: -EINVAL for parties 0. */
typedef int (*cmp_barrier_action_fn)(void *arg);
int cmp_barrier_init(cmp_barrier_t *barrier, uint32_t parties);
int cmp_barrier_wait(cmp_barrier_t *barrier, const struct timespec *deadline,
                     cmp_barrier_action_fn action, void *arg);
void cmp_barrier_abort(cmp_barrier_t *barrier);
void cmp_barrier_reset(cmp_barrier_t *barrier);
uint32_t cmp_barrier_parties(const cmp_barrier_t *barrier);
uint32_t cmp_barrier_n_waiting(const cmp_barrier_t *barrier);
int cmp_barrier_broken(const cmp_barrier_t *barrier);

/* ------------------------------------------------------------------------
 * Message ring
 *
 * Messages of any size, 0 bytes up, in the order each producer put them;
 * every message is delivered once.
 *
 * With a spill file (cmp_ring_set_spill(); every queue has one) a put never
 * waits for bytes: a message that does not fit in the ring now (or is
 * larger than capacity/2, or arrives while earlier messages are still in
 * the spill) is appended to the spill file, a second FIFO in a file (a
 * memfd: shared memory too, pages given back as they are consumed), and the
 * put returns once it is there. Only max_count makes such a put wait (and
 * the spill's own limits, 64 GiB and 2^27 messages pending). Consumers take
 * from the ring first, then from the spill, in put order. A message larger
 * than capacity/2 put while the spill is empty and a consumer waits (or
 * arrives within a few ms) is streamed through the ring to it instead, at
 * ring speed; if that consumer stops making progress for a few ms or dies,
 * the producer takes the message back and spills it (the consumer's get
 * then returns -ECONNABORTED with nothing delivered, and the message comes
 * next), so such a put waits for a consumer only while it keeps pace.
 *
 * Without a spill file (a ring in caller memory with no fd) a put waits for
 * room: a message of up to capacity/2 bytes is one record; a larger one is
 * streamed in chunks while the producer holds the producer lock and the
 * consumer the consumer lock, so it needs a consumer running meanwhile (a
 * thread that puts a message larger than capacity/2 and then gets it
 * itself waits until its deadline), and so does any message once the
 * ring's bytes are full. Size the capacity for what may be put before
 * anyone gets.
 *
 * Crashes: a producer killed in the middle of a put leaves nothing visible
 * (or, for a streamed message, the next producer or the waiting consumer
 * marks it aborted and it is dropped); a consumer killed in the middle of a
 * get leaves an unstreamed message (and a batch) in the ring to be
 * delivered whole to the next consumer; a streamed message whose delivery
 * had begun is dropped whole. Nothing partial is ever delivered, and no lock
 * stays held.
 *
 * Deadlines: absolute CLOCK_MONOTONIC; NULL waits forever; CMP_NOWAIT makes
 * one non-blocking attempt that fails with -EAGAIN. A consumer that has
 * begun a streamed message finishes it regardless of its deadline and of
 * signals (it stops only if the producer dies: the message is then
 * dropped); a producer whose deadline passes or who is interrupted in the
 * middle of a stream aborts it (consumers drop it) and returns
 * -ETIMEDOUT / -EINTR.
 * ------------------------------------------------------------------------ */

/* A deadline that means "do not wait" (returns -EAGAIN instead of
 * blocking). Any deadline equal to {0, 0} counts as it. */
extern const struct timespec cmp_nowait;
#define CMP_NOWAIT (&cmp_nowait)

#define CMP_RING_MIN_CAPACITY 64u
#define CMP_RING_MAX_CAPACITY (1u << 30)
#define CMP_RING_DEFAULT_CAPACITY (4u << 20)
/* Largest max_count of a ring and maxsize of a queue. */
#define CMP_QUEUE_MAXSIZE_MAX ((1u << 27) - 1)

struct iovec;

/* Bytes of shared memory a ring of capacity bytes needs (header + data
 * area). capacity is rounded up to a power of two in
 * [CMP_RING_MIN_CAPACITY, CMP_RING_MAX_CAPACITY]; 0 means the default. Pages
 * of a memfd mapping are committed only when the ring first reaches them. */
size_t cmp_ring_footprint(size_t capacity);

/* Initializes a ring in mem (cmp_ring_footprint(capacity) bytes of shared
 * memory, 8-byte aligned; 64 is better). max_count limits the number of
 * messages the ring holds (a put waits while it is reached), 0 = only the
 * bytes limit. Returns 0, or -EINVAL for a capacity above the maximum or
 * max_count above CMP_QUEUE_MAXSIZE_MAX. */
int cmp_ring_init(cmp_ring_t *ring, size_t capacity, uint64_t max_count);

/* The capacity the ring was initialized with (rounded). */
size_t cmp_ring_capacity(const cmp_ring_t *ring);

/* Gives the ring a spill file, before any put: fd is an empty regular file
 * open for reading and writing (a memfd: see cmp_spill_create()), and its
 * number is stored in the ring's shared header, so it must be the same
 * descriptor in every process that uses the ring (processes forked after
 * this call inherit it). The caller keeps ownership of fd: close it, in each
 * process, only once that process no longer uses the ring.
 * Returns 0, -EINVAL (fd < 0), -EBUSY (the ring has messages or a spill). */
int cmp_ring_set_spill(cmp_ring_t *ring, int fd);

/* Creates an empty memfd for a spill file (close-on-exec, numbered 3 or
 * above so that reopening stdin in a child never replaces it). Returns the
 * fd, or a negative errno. */
int cmp_spill_create(void);

/* The ring's spill fd, or -1 when it has none. */
int cmp_ring_spill_fd(const cmp_ring_t *ring);

/* Puts one message: the concatenation of iovcnt buffers (gather; no
 * intermediate copy). Blocks while the ring is full: max_count messages, or
 * (without a spill file) no room for the bytes. Returns 0, -ETIMEDOUT,
 * -EAGAIN (CMP_NOWAIT and no room, or another producer busy), -EINTR
 * (nothing was put), -EPIPE once closed, -EINVAL for iovcnt < 0, or a
 * negative errno from writing the spill file (-ENOSPC, -ENOMEM, -EIO;
 * nothing was put). */
int cmp_ring_putv(cmp_ring_t *ring, const struct iovec *iov, int iovcnt,
                  const struct timespec *deadline);
/* One contiguous buffer. Returns as cmp_ring_putv. */
int cmp_ring_put(cmp_ring_t *ring, const void *data, size_t len, const struct timespec *deadline);

/* Puts up to nmsg messages under one acquisition of the producer lock, in
 * order. Message i is counts[i] consecutive buffers of iov (counts NULL:
 * one buffer per message). Waits for room as cmp_ring_putv does.
 * Returns how many messages were put (1..nmsg; fewer than nmsg when the
 * deadline passed or a signal came after some were put), or, when none
 * was, an error as cmp_ring_putv. nmsg 0 returns 0. */
long cmp_ring_put_many(cmp_ring_t *ring, const struct iovec *iov, const unsigned *counts,
                       size_t nmsg, const struct timespec *deadline);

/* Tells the consumer where to copy a message of len bytes: returns a buffer
 * of at least len bytes (any non-NULL pointer when len is 0), or NULL to
 * refuse it (the message stays in the ring). Called under the consumer
 * lock, once per message, before any byte of it is copied; the message is
 * copied straight from the ring into that buffer, exactly once. */
typedef void *(*cmp_ring_alloc_fn)(void *arg, size_t len);

/* Gets one message. Blocks while the ring is empty. Returns 0 (the message
 * is in the buffer alloc returned), -ETIMEDOUT, -EAGAIN (CMP_NOWAIT and
 * empty, or another consumer waiting for data), -EINTR, -ENOBUFS (alloc
 * returned NULL; the message stays in the ring), -ECONNABORTED (a streamed
 * message was dropped midway because its producer died or gave up; call
 * again), -EPIPE once closed and empty, -EIO (or another negative errno)
 * when reading the spill file failed (the message stays).
 * Rule for buffers: the messages returned are in the buffers of the first
 * calls to alloc; a buffer from a later call (at most one) was not filled
 * and is the caller's to free. */
int cmp_ring_get(cmp_ring_t *ring, cmp_ring_alloc_fn alloc, void *arg,
                 const struct timespec *deadline);

/* Gets up to max messages under one acquisition of the consumer lock:
 * waits (until the deadline) for the first, then takes those already
 * there without waiting. alloc is called once per message, in order.
 * Returns the number got (1..max), or an error as cmp_ring_get when none
 * was. max 0 returns 0. */
long cmp_ring_get_many(cmp_ring_t *ring, cmp_ring_alloc_fn alloc, void *arg, size_t max,
                       const struct timespec *deadline);

/* Waits until a message is available without taking it (for poll()).
 * Returns 1 when one is, -ETIMEDOUT, -EAGAIN (CMP_NOWAIT, none), -EINTR,
 * -EPIPE once closed and empty. A consumer mid-get counts as busy. */
int cmp_ring_wait(cmp_ring_t *ring, const struct timespec *deadline);

/* Messages completely put and not yet got, ring and spill (exact, also
 * after crashes). A streamed message counts once its last byte is in. */
uint64_t cmp_ring_count(const cmp_ring_t *ring);
/* Bytes used in the data area (records, headers included). */
size_t cmp_ring_used(const cmp_ring_t *ring);
/* Bytes pending in the spill file (records, 8-byte headers included). */
uint64_t cmp_ring_spilled(const cmp_ring_t *ring);

/* Closes the ring: puts fail with -EPIPE, gets drain what is there and then
 * fail with -EPIPE; everyone blocked in it wakes. Irreversible. */
void cmp_ring_close(cmp_ring_t *ring);
int cmp_ring_is_closed(const cmp_ring_t *ring);

/* ------------------------------------------------------------------------
 * Queues
 *
 * A ring limited to maxsize items (0 = unbounded) with the counters of a
 * joinable queue: every put adds an unfinished task, task_done removes
 * one, join waits until none is left. Counts are exact across crashes
 * (a put counts once its message is published; task_done is one atomic
 * step). put/get behave as the ring functions of the same name.
 * ------------------------------------------------------------------------ */

/* Bytes of shared memory a queue with a ring of capacity bytes needs
 * (capacity as for cmp_ring_footprint). */
size_t cmp_queue_footprint(size_t capacity);

/* Initializes a queue in mem (cmp_queue_footprint(capacity) bytes of shared
 * memory) with a spill file of its own (cmp_spill_create()), so that a put
 * waits only for maxsize: messages beyond the ring's bytes go to the spill.
 * maxsize 0 = unbounded (a put never waits). The queue owns the spill fd:
 * processes forked after init inherit it with the queue, and each process
 * calls cmp_queue_detach() once it no longer uses the queue.
 * Returns 0, -EINVAL (capacity too large, maxsize above
 * CMP_QUEUE_MAXSIZE_MAX), or a negative errno from memfd_create. */
int cmp_queue_init(cmp_queue_t *q, size_t capacity, uint32_t maxsize);

/* Closes this process's descriptor of the queue's spill file; the queue
 * must not be used by this process afterwards (other processes go on).
 * The spill's memory is freed when the last process has closed it. */
void cmp_queue_detach(cmp_queue_t *q);

/* The underlying ring. */
cmp_ring_t *cmp_queue_ring(cmp_queue_t *q);
uint32_t cmp_queue_maxsize(const cmp_queue_t *q);

int cmp_queue_put(cmp_queue_t *q, const void *data, size_t len, const struct timespec *deadline);
int cmp_queue_putv(cmp_queue_t *q, const struct iovec *iov, int iovcnt,
                   const struct timespec *deadline);
long cmp_queue_put_many(cmp_queue_t *q, const struct iovec *iov, const unsigned *counts,
                        size_t nmsg, const struct timespec *deadline);
int cmp_queue_get(cmp_queue_t *q, cmp_ring_alloc_fn alloc, void *arg,
                  const struct timespec *deadline);
long cmp_queue_get_many(cmp_queue_t *q, cmp_ring_alloc_fn alloc, void *arg, size_t max,
                        const struct timespec *deadline);

/* Items in the queue (exact), and the predicates on it. */
uint64_t cmp_queue_qsize(const cmp_queue_t *q);
int cmp_queue_empty(const cmp_queue_t *q);
int cmp_queue_full(const cmp_queue_t *q);

/* Joinable counters. task_done: 0, or -EOVERFLOW when called more times
 * than items were put. join: 0 once no task is unfinished, -ETIMEDOUT,
 * -EAGAIN (CMP_NOWAIT with tasks left), -EINTR. unfinished: the count of
 * items put and not yet marked done. */
int cmp_queue_task_done(cmp_queue_t *q);
int cmp_queue_join(cmp_queue_t *q, const struct timespec *deadline);
uint64_t cmp_queue_unfinished(const cmp_queue_t *q);

void cmp_queue_close(cmp_queue_t *q);

/* ------------------------------------------------------------------------
 * Processes
 * ------------------------------------------------------------------------ */

/* Child gets SIGKILL when the parent process dies. */
#define CMP_PROCESS_DIE_WITH_PARENT 0x1u

/* Runs in the child; its return value is the exit status (0..255). */
typedef int (*cmp_process_fn)(void *arg);

/* Forks a child that runs fn(arg), flushes stdio and _exit()s with its
 * return value. Returns 0, -EINVAL for unknown flags, or a negative errno
 * from fork/pidfd_open.
 *
 * A child that ends with 32 MiB or more of anonymous memory (its share of
 * a big parent included) closes its descriptors and leaves the teardown
 * of its address space to a short-lived helper process, so that its exit
 * is reported about a millisecond per 100 MB sooner; the helper holds no
 * descriptor, dies with the child and is reaped by whoever adopts orphans
 * (init). Children of a process that adopts orphans itself (pid 1, a
 * subreaper) exit plainly. */
int cmp_process_start(cmp_process_t *proc, cmp_process_fn fn, void *arg, unsigned flags);

/* Starts path (execv, argv NULL-terminated) in a child (posix_spawn: no
 * fork handlers run, nothing is copied). Only the nkeep fds in keep are
 * inherited, at the same numbers; every other fd of ours is close-on-exec.
 * The child starts with an empty signal mask. Returns 0, or a negative
 * errno (the exec's own error when path cannot be run). */
int cmp_process_spawn(cmp_process_t *proc, const char *path, char *const argv[], const int *keep,
                      int nkeep);

/* Adopts a child that another process (a fork server) forked and reports:
 * pidfd refers to it (taken over), its raw wait status will arrive as 4
 * bytes on status_fd (taken over; EOF before them: status unknown, 255). */
void cmp_process_adopt(cmp_process_t *proc, pid_t pid, int pidfd, int status_fd);

/* Waits for the child to exit and reaps it. 0, -ETIMEDOUT, -EINTR,
 * -ECHILD if it was reaped elsewhere. */
int cmp_process_join(cmp_process_t *proc, const struct timespec *deadline);

/* Reaps the child if it has exited, without blocking: 1 exited, 0 running. */
int cmp_process_poll(cmp_process_t *proc);

/* 1 while the child runs (not reaped and not exited), 0 otherwise. */
int cmp_process_is_alive(cmp_process_t *proc);

/* Sends sig (0 on success, -ESRCH once reaped). terminate = SIGTERM,
 * kill = SIGKILL. */
int cmp_process_signal(cmp_process_t *proc, int sig);
int cmp_process_terminate(cmp_process_t *proc);
int cmp_process_kill(cmp_process_t *proc);

/* Exit code as Python reports it: the exit status, or -signum for a child
 * killed by a signal. Returns 0 and sets *code, or -EAGAIN while running. */
int cmp_process_exitcode(cmp_process_t *proc, int *code);

/* An fd that polls readable once the child has exited (a pidfd; the
 * status fd for an adopted child). */
int cmp_process_sentinel(const cmp_process_t *proc);

/* Releases the handle's fd. The child keeps running if it still is. */
void cmp_process_close(cmp_process_t *proc);

/* Pid of the calling process, cached (valid after fork). */
pid_t cmp_self_pid(void);

/* ------------------------------------------------------------------------
 * Fork server: forks children on request (see src/forkserver.c)
 * ------------------------------------------------------------------------ */

/* At most this many fds travel with one request. */
#define CMP_FORKSERVER_MAX_FDS 250
/* Room for a server's address, NUL included. */
#define CMP_FORKSERVER_ADDR_MAX 40

typedef struct cmp_forkserver_ops {
    /* In the server around each fork (may be NULL). */
    void (*before_fork)(void *arg);
    void (*after_fork_parent)(void *arg);
    /* In the new child, with the request's fds at their numbers: runs the
     * payload; its return value is the exit status (the child _exit()s). */
    int (*child)(void *arg, const void *payload, size_t len);
    void *arg;
} cmp_forkserver_ops;

/* Binds and listens on a fresh abstract AF_UNIX name (written to addr,
 * NUL-terminated). Returns 0 and the socket (close-on-exec) in
 * *listen_fd, or a negative errno. */
int cmp_forkserver_listen(char addr[CMP_FORKSERVER_ADDR_MAX], int *listen_fd);

/* Serves requests on listen_fd until alive_fd polls readable (its writer
 * closed it). Returns 0 then, or a negative errno. */
int cmp_forkserver_serve(int listen_fd, int alive_fd, const cmp_forkserver_ops *ops);

/* Asks the server at addr for a child that runs payload with the nfds fds
 * at the same numbers as here, and adopts it into *proc (its sentinel is
 * the connection, which the status arrives on). Returns 0, -E2BIG (too
 * many fds), -ECONNREFUSED (no server there) or another negative errno
 * (the server's fork error among them). */
int cmp_forkserver_request(const char *addr, const void *payload, size_t len, const int *fds,
                           int nfds, cmp_process_t *proc);

/* 1 if a process with this pid exists and is not a zombie, 0 otherwise.
 * It may be a newer process that was given the pid: locks check their
 * holder with cmp_lock_abandoned(), which tells the two apart. */
int cmp_pid_alive(pid_t pid);

/* ------------------------------------------------------------------------
 * Connections
 *
 * A connection carries whole messages over a byte stream (a socket or a
 * pipe) with the framing of Python's multiprocessing.connection: a 4-byte
 * big-endian signed length, or for messages over 0x7fffffff the marker -1
 * followed by an 8-byte big-endian length. Bytes interoperate with the
 * standard library's Connection, Listener and Client.
 * ------------------------------------------------------------------------ */

#define CMP_CONN_READABLE 0x1u
#define CMP_CONN_WRITABLE 0x2u

/* cmp_conn_recv: the peer closed the connection between two messages. */
#define CMP_CONN_EOF (-ENODATA)

struct cmp__conn_ops;

/* One end of a connection (process-local handle; a fork copies it). */
typedef struct cmp_conn {
    int fd;                          /* -1 once closed */
    unsigned flags;                  /* CMP_CONN_READABLE/WRITABLE, private bits */
    const struct cmp__conn_ops *ops; /* the transport (private) */
} cmp_conn_t;

/* Progress of one cmp_conn_recv, so that a call interrupted by a signal or
 * a deadline resumes where it stopped. Zero it before each new message. */
typedef struct cmp_conn_rx {
    uint64_t len;  /* payload length, valid once the header is in */
    uint64_t done; /* header + payload bytes received so far */
    void *buf;     /* from the alloc callback, once len is known */
    uint64_t room; /* bytes at buf the alloc callback provided */
    unsigned char hdr[12];
    int allocated; /* alloc has been called for this message */
} cmp_conn_rx_t;

/* Returns where to put len bytes of the payload, or NULL to fail the
 * receive with -ENOMEM (may return NULL for len 0 without failing).
 * Called first as soon as the length is known, with len = the whole
 * payload if it is at most 1 MiB, else 1 MiB; then, for a larger payload,
 * again each time that room is full and more is due, with a larger len
 * (doubling, the last call exactly rx->len). A later call must return
 * memory that begins with the contents of the previous one, rx->buf —
 * realloc(rx->buf, len) does — so the length in a header, a claim of the
 * peer's, costs only what the peer really sends. rx->len holds the whole
 * length at every call. */
typedef void *(*cmp_conn_alloc_fn)(void *arg, size_t len);

/* Wraps fd (taken over; closed by cmp_conn_close). flags: READABLE and/or
 * WRITABLE. Returns 0, -EINVAL for a negative fd, no direction or unknown
 * flags. */
int cmp_conn_open(cmp_conn_t *conn, int fd, unsigned flags);

/* Two connected ends, like Python's Pipe(duplex): a socketpair when duplex
 * (both ends read and write), else a pipe whose end r only reads and end w
 * only writes. fds are O_CLOEXEC. Returns 0 or a negative errno. */
int cmp_conn_pair(cmp_conn_t *r, cmp_conn_t *w, int duplex);

/* Closes the fd (idempotent). */
void cmp_conn_close(cmp_conn_t *conn);

/* Leaves the connection closed without closing its fd, which is returned
 * (now the caller's, as socket.detach() does), or -EBADF if it was closed. */
int cmp_conn_detach(cmp_conn_t *conn);

/* Sends one message of len bytes. Header and payload go in one writev for
 * every size. *progress (may be NULL) counts header + payload bytes already
 * written: start at 0; after -EINTR or -ETIMEDOUT call again with the same
 * buffer and progress to finish the message (with NULL, an interrupted
 * message that was partly written is finished before returning, and -EINTR
 * is returned only if nothing was written).
 * Returns 0, -EINTR, -ETIMEDOUT, -EBADF (closed or not writable), -EPIPE
 * (reader gone), or another negative errno. */
int cmp_conn_send(cmp_conn_t *conn, const void *buf, size_t len, uint64_t *progress,
                  const struct timespec *deadline);

/* Receives one message: reads the header, calls alloc (see above) for
 * room, reads the payload straight into that memory. A negative 4-byte
 * length other than the marker is an empty message (as the stdlib reads
 * it). rx carries the progress (zero it first; after -EINTR/-ETIMEDOUT call
 * again with the same rx to resume, or give up and free rx->buf yourself;
 * after any other error rx->buf, if not NULL, is also the caller's).
 * Returns 0 (rx->len, rx->buf hold the message), CMP_CONN_EOF (closed
 * between messages), -EPROTO (closed in the middle of a message),
 * -EMSGSIZE (length > maxlen: the header is consumed, the payload is not,
 * rx->len holds the length), -ENOMEM (alloc failed), -EINTR, -ETIMEDOUT,
 * -EBADF (closed or not readable), or another negative errno. */
int cmp_conn_recv(cmp_conn_t *conn, cmp_conn_rx_t *rx, uint64_t maxlen, cmp_conn_alloc_fn alloc,
                  void *arg, const struct timespec *deadline);

/* Waits until a message (or EOF) can be read. Returns 0 when readable,
 * -ETIMEDOUT, -EINTR, -EBADF. */
int cmp_conn_poll(cmp_conn_t *conn, const struct timespec *deadline);

/* ------------------------------------------------------------------------
 * Private temporary directory
 *
 * One directory per process tree, mode 0700 and owned by the effective
 * uid whatever the umask, for files and sockets that other users must not
 * reach (default listener addresses). Made on first use with mkdtemp under
 * $TMPDIR, $TEMP, $TMP, /tmp, /var/tmp or /usr/tmp (the first that works,
 * as Python's tempfile), named cmp-XXXXXX. Children forked afterwards share
 * it; the process that made it removes it, with what it holds, at exit()
 * (processes that leave with _exit() or a signal leave it behind).
 * ------------------------------------------------------------------------ */

/* Copies the directory's path (made now if this process tree has none yet)
 * into out[0..size). Returns its length, -ERANGE if size is too small,
 * -EPERM if what mkdtemp made is not a private directory of ours, or the
 * errno of mkdtemp in the last place tried. */
int cmp_tempdir(char *out, size_t size);

/* Removes the directory and its contents now, if this process made it
 * (otherwise does nothing); the next cmp_tempdir() makes a new one. Also
 * run at exit(). */
void cmp_tempdir_remove(void);

/* ------------------------------------------------------------------------
 * Listener and client (AF_UNIX, including abstract names, and AF_INET)
 * ------------------------------------------------------------------------ */

typedef struct cmp_listener {
    int fd;      /* -1 once closed */
    pid_t owner; /* the process that bound a filesystem path unlinks it */
    socklen_t addrlen;
    struct sockaddr_storage addr; /* the bound address (getsockname) */
} cmp_listener_t;

/* AF_UNIX address for path[0..len) (len > 0; path[0] == '\0' is an
 * abstract name). Returns 0, or -ENAMETOOLONG. */
int cmp_sockaddr_unix(struct sockaddr_storage *out, socklen_t *outlen, const char *path,
                      size_t len);
/* AF_INET address of host (a name or dotted quad, resolved with
 * getaddrinfo, which may block) and port. Returns 0, -ENOENT when host does
 * not resolve, or a negative errno. */
int cmp_sockaddr_inet(struct sockaddr_storage *out, socklen_t *outlen, const char *host,
                      uint16_t port);

/* A fresh AF_UNIX path for a listener: listener-<16 random hex digits> in
 * the private directory (cmp_tempdir), so that only our uid can connect at
 * any umask. Returns 0, or an error of cmp_tempdir or cmp_sockaddr_unix. */
int cmp_listener_default_addr(struct sockaddr_storage *out, socklen_t *outlen);
/* Binds and listens (SO_REUSEADDR, O_CLOEXEC). Returns 0 or a negative
 * errno (-EADDRINUSE, ...). */
int cmp_listener_open(cmp_listener_t *l, const struct sockaddr *addr, socklen_t addrlen,
                      int backlog);
/* Accepts one connection (readable and writable). peer/peerlen may be NULL.
 * Returns 0, -ETIMEDOUT, -EINTR, -EBADF once closed, or a negative errno. */
int cmp_listener_accept(cmp_listener_t *l, cmp_conn_t *conn, struct sockaddr_storage *peer,
                        socklen_t *peerlen, const struct timespec *deadline);
/* Closes the socket; the process that bound a filesystem AF_UNIX path also
 * unlinks it. Idempotent. */
void cmp_listener_close(cmp_listener_t *l);

/* Connects to a listener. Returns 0, -ECONNREFUSED, -ENOENT, -ETIMEDOUT,
 * -EINTR (nothing is left half-open: call again), or a negative errno. */
int cmp_client_connect(cmp_conn_t *conn, const struct sockaddr *addr, socklen_t addrlen,
                       const struct timespec *deadline);

/* The authentication handshake of Python's multiprocessing.connection
 * (3.12's protocol, which also talks to 3.11 and older): the server sends
 * "#CHALLENGE#{sha256}" + 40 random bytes, the client answers "{sha256}" +
 * HMAC-SHA256(key, challenge) and the server replies "#WELCOME#" or
 * "#FAILURE#". A server accepts a bare 16-byte HMAC-MD5 answer (old
 * clients); a client given a bare 20-byte challenge (old servers) answers
 * with a bare HMAC-MD5. A Listener with a key runs deliver then answer, a
 * Client answer then deliver.
 * Both return 0, -EACCES (deliver: the answer was wrong, FAILURE was sent;
 * answer: ours was rejected), -EPROTO (not the protocol, or a digest we do
 * not support), or an error of cmp_conn_send/recv (CMP_CONN_EOF, ...). */
int cmp_conn_deliver_challenge(cmp_conn_t *conn, const void *key, size_t keylen,
                               const struct timespec *deadline);
int cmp_conn_answer_challenge(cmp_conn_t *conn, const void *key, size_t keylen,
                              const struct timespec *deadline);

/* The steps of the handshake, for a caller that moves the messages itself.
 * Every message is at most CMP_AUTH_MSG_MAX bytes (a longer one is a
 * protocol error). */
#define CMP_AUTH_MSG_MAX 256
/* Fills out (>= CMP_AUTH_MSG_MAX bytes) with a fresh challenge message
 * (random bytes from getrandom). Returns its length or a negative errno. */
int cmp_auth_challenge(unsigned char *out);
/* The server's check of an answer to challenge (the whole message it sent):
 * 0 if right, -EACCES if wrong, -EPROTO if malformed or of an unsupported
 * digest. */
int cmp_auth_verify(const void *key, size_t keylen, const unsigned char *challenge,
                    size_t challenge_len, const unsigned char *answer, size_t answer_len);
/* The client's answer to a received challenge message, written to out
 * (>= CMP_AUTH_MSG_MAX bytes). Returns its length, or -EPROTO. */
int cmp_auth_answer(const void *key, size_t keylen, const unsigned char *challenge,
                    size_t challenge_len, unsigned char *out);
/* The server's reply after verifying: "#WELCOME#" or "#FAILURE#". */
#define CMP_AUTH_WELCOME "#WELCOME#"
#define CMP_AUTH_FAILURE "#FAILURE#"

/* How long a listener gives a peer to complete the handshake by default
 * (the stdlib's CONNECTION_TIMEOUT), in seconds. A peer that stays silent
 * then costs a server this long at most. */
#define CMP_AUTH_TIMEOUT 20.0

/* A handshake in progress on one connection, resumable: a server that
 * serves many clients runs one per connection and never blocks on any (call
 * cmp_auth_step with a deadline of now, wait for cmp_auth_events on the fd
 * with poll, step again). Fields are private except phase, io_error and
 * in/in_len (the last message received). */
typedef struct cmp_auth {
    int role;  /* CMP_AUTH_SERVER, CMP_AUTH_CLIENT, ... */
    int step;  /* private */
    int phase; /* after an error: CMP_AUTH_DELIVERING or CMP_AUTH_ANSWERING */
    int verdict;
    int io_error;     /* the final error came from cmp_conn_send/recv */
    uint64_t tx;      /* progress of the message being sent */
    cmp_conn_rx_t rx; /* progress of the message being received */
    size_t challenge_len, in_len, out_len;
    unsigned char challenge[CMP_AUTH_MSG_MAX]; /* the one we sent */
    unsigned char in[CMP_AUTH_MSG_MAX];        /* the last message received */
    unsigned char out[CMP_AUTH_MSG_MAX];       /* our answer */
} cmp_auth_t;

/* Roles: which halves, in which order. A Listener delivers then answers,
 * a Client answers then delivers. */
#define CMP_AUTH_SERVER 1  /* deliver, then answer */
#define CMP_AUTH_CLIENT 2  /* answer, then deliver */
#define CMP_AUTH_DELIVER 3 /* deliver only */
#define CMP_AUTH_ANSWER 4  /* answer only */
/* Values of cmp_auth_t.phase. */
#define CMP_AUTH_DELIVERING 1 /* checking the peer's answer to our challenge */
#define CMP_AUTH_ANSWERING 2  /* answering the peer's challenge */

/* Prepares *a for role. Returns 0, or -EINVAL for an unknown role. */
int cmp_auth_start(cmp_auth_t *a, int role);

/* Runs the handshake of *a on conn until it completes, fails or deadline
 * passes (NULL = no deadline). Returns 0 when both sides are authenticated;
 * -ETIMEDOUT or -EINTR with the progress kept (call again to resume, or
 * drop the connection); or a final error: -EACCES (DELIVERING: the peer's
 * answer was wrong, FAILURE was sent; ANSWERING: ours was rejected),
 * -EPROTO (a message that is not of the protocol, a->in holds it; a
 * malformed answer was also sent FAILURE), or with a->io_error set an error
 * of cmp_conn_send/recv: -EMSGSIZE (a message longer than
 * CMP_AUTH_MSG_MAX), CMP_CONN_EOF (the peer left), -EPROTO (a message cut
 * short), -EPIPE, ... */
int cmp_auth_step(cmp_auth_t *a, cmp_conn_t *conn, const void *key, size_t keylen,
                  const struct timespec *deadline);

/* What the next cmp_auth_step waits for on the connection's fd: POLLIN or
 * POLLOUT (values of <poll.h>), or 0 once the handshake has ended. */
short cmp_auth_events(const cmp_auth_t *a);

/* ------------------------------------------------------------------------
 * Fd sharing
 *
 * Hands a duplicate of a file descriptor to another process of the same
 * user that holds a token for it, as Python's multiprocessing does when it
 * pickles a Connection or a socket. Registering dups the fd and files the
 * dup under a random 64-bit key; a thread, started by the first
 * registration, serves an abstract-namespace AF_UNIX socket from which a
 * process redeems the token for its own copy of the fd (SCM_RIGHTS). Each
 * registration is redeemable once; the sharer closes its dup after sending
 * it. Only peers with the sharer's effective uid are served. The sharer
 * must still be running when the token is redeemed.
 *
 * After fork the child has no server thread: its first registration starts
 * its own, and its copies of the parent's pending dups are closed (so that
 * they do not keep pipes and sockets open). All fds are O_CLOEXEC.
 * ------------------------------------------------------------------------ */

/* Room for the sharer's socket name in a token, NUL included. */
#define CMP_FDSHARE_ADDR_MAX 40

/* What a receiver needs to redeem one registration. Plain data: send it
 * any way you like (its fields are public). */
typedef struct cmp_fd_token {
    char addr[CMP_FDSHARE_ADDR_MAX]; /* abstract AF_UNIX name, without its
                                        leading NUL; NUL-terminated */
    uint64_t key;
} cmp_fd_token_t;

/* Registers a duplicate of fd (fd itself stays the caller's) and fills
 * *token. Starts the server thread if this process has none. Returns 0,
 * -EBADF (fd is not open), or a negative errno (socket, thread, memory). */
int cmp_fdshare_register(int fd, cmp_fd_token_t *token);

/* Redeems a token: returns a new fd (O_CLOEXEC) referring to the same open
 * file as the registered one, or
 *   -ECONNREFUSED  no sharer at that address (its process has exited),
 *   -ENOENT        unknown key, or already redeemed,
 *   -EACCES        the sharer or we are of another user,
 *   -ECONNRESET    the sharer went away during the exchange,
 *   -ETIMEDOUT     no answer before deadline (NULL = none),
 *   -EINVAL        malformed address, -EPROTO, or another negative errno.
 * Signals do not interrupt it: bound it with a deadline. */
int cmp_fdshare_redeem(const cmp_fd_token_t *token, const struct timespec *deadline);

/* Withdraws a registration of this process that will not be redeemed (the
 * token could not be delivered): closes the dup. Returns 0, or -ENOENT. */
int cmp_fdshare_cancel(const cmp_fd_token_t *token);

/* Stops this process's server thread and closes every pending dup (their
 * tokens then fail with -ECONNREFUSED). The next registration starts a new
 * server. */
void cmp_fdshare_shutdown(void);

/* ------------------------------------------------------------------------
 * Worker pool
 *
 * N forked workers run a C function on byte tasks. Each worker has its own
 * inbox (a queue in shared memory) to which the pool's process dispatches
 * tasks, at most depth + 1 at a time (more when tasks are short), the
 * least loaded worker first; the
 * rest wait in the pool's process. Results come back through one result
 * queue. A worker records the id of the task it is about to run in shared
 * memory before it runs it, so when a worker dies the pool knows exactly
 * which task it lost: that one comes out of cmp_pool_next() as
 * CMP_POOL_LOST with the cause (the signal or the exit code), the tasks
 * still queued at the dead worker go to the others, and a new worker takes
 * its place. Workers die with the thread that started them (SIGKILL by
 * PR_SET_PDEATHSIG): the creating thread, and later the thread that calls
 * cmp_pool_next() (which starts replacements), must outlive the pool.
 *
 * Thread safety: submit, outstanding, cancel, close and terminate may be called
 * from any thread of the pool's process; next by one thread at a time.
 * ------------------------------------------------------------------------ */

typedef struct cmp_pool cmp_pool_t;
/* The bytes a task or an initializer answers with, built in the worker. */
typedef struct cmp_pool_result cmp_pool_result_t;

/* Room for len more bytes at the end of the result (valid until the next
 * call); NULL when out of memory. */
void *cmp_pool_result_extend(cmp_pool_result_t *r, size_t len);
/* Drops what was written so far (to write something else instead). */
void cmp_pool_result_clear(cmp_pool_result_t *r);

/* Runs in a worker for each task. Returns 0 when the task succeeded (its
 * result is the bytes written to out) or nonzero when it failed (the bytes
 * describe the failure; the task comes out as CMP_POOL_FAILED);
 * CMP_POOL_TASK_FAILED_EXIT: failed, and the worker must not run another
 * task (it exits once the failure is sent, and is replaced). */
#define CMP_POOL_TASK_FAILED_EXIT 2
typedef int (*cmp_pool_task_fn)(void *arg, const void *task, size_t len, cmp_pool_result_t *out);
/* Runs once in each worker before its first task. Nonzero: the initializer
 * failed, out describes why; the pool starts no more workers and every
 * task comes out as CMP_POOL_BROKEN with those bytes. */
typedef int (*cmp_pool_init_fn)(void *arg, cmp_pool_result_t *out);
/* Called in a worker around each wait for its next task (waiting = 1
 * before, 0 after): a binding releases its interpreter lock there. */
typedef void (*cmp_pool_wait_fn)(void *arg, int waiting);
/* Called around each fork of a worker: phase CMP_POOL_FORK_BEFORE and then
 * _PARENT in the pool's process, _CHILD first thing in the worker. */
typedef void (*cmp_pool_fork_fn)(void *arg, int phase);
enum { CMP_POOL_FORK_BEFORE, CMP_POOL_FORK_PARENT, CMP_POOL_FORK_CHILD };

typedef struct cmp_pool_options {
    unsigned workers;             /* 0: the CPUs this process may run on */
    cmp_pool_task_fn task;        /* required */
    cmp_pool_init_fn init;        /* NULL: none */
    cmp_pool_wait_fn wait_hook;   /* NULL: none */
    cmp_pool_fork_fn fork_hook;   /* NULL: none */
    void *arg;                    /* given to the functions above */
    uint64_t max_tasks;           /* a worker is replaced after this many; 0: never */
    unsigned depth;               /* tasks queued at a worker beyond the one it runs;
                                     0: the default, 2. Short tasks (a few µs) are
                                     queued deeper, up to 16 or ~50 µs of work */
    cmp_ring_alloc_fn task_alloc; /* NULL: none. See CMP_POOL_OWN_TASK_MIN */
    /* NULL: workers are forks of the pool's process. Else it starts worker
     * index of pool as a process of its own making (a new program, a fork
     * server's child) into *out (0, or a negative errno); that process
     * runs cmp_pool_worker_serve() with the pool's cmp_pool_shared_fd().
     * Called where a fork would be (within cmp_pool_create too): fork_hook
     * is not called. */
    int (*start_worker)(void *arg, cmp_pool_t *pool, unsigned index, cmp_process_t *out);
    /* NULL: none. Called in a worker that leaves on its own (told to exit,
     * max_tasks done, its initializer failed), after its last result is
     * sent and before it exits: where a binding runs its exit handlers.
     * A killed worker does not call it. */
    void (*exit_hook)(void *arg);
} cmp_pool_options_t;

/* A worker receives a task of at least this many bytes into memory that
 * opt->task_alloc(opt->arg, n) returns, when it is set: the task's bytes
 * are copied from the shared ring straight into it, and the task function
 * gets a pointer into that memory (a few bytes of the pool's own come
 * first). The pool never frees nor reuses it, so a binding can keep parts
 * of a task beyond its task function (its arrays decoded in place, with no
 * second copy). NULL: the task goes to the worker's own buffer as smaller
 * ones do. Called in the worker, in its wait for a task (after the wait
 * hook's waiting = 1). */
#define CMP_POOL_OWN_TASK_MIN ((size_t)64 << 10)

/* How a task ended (cmp_pool_outcome_t.status). */
enum {
    CMP_POOL_DONE,      /* the task function returned 0; data: its result */
    CMP_POOL_FAILED,    /* it returned nonzero; data: what it wrote */
    CMP_POOL_LOST,      /* its worker died running it; cause says how */
    CMP_POOL_BROKEN,    /* an initializer failed; data: what it wrote */
    CMP_POOL_CANCELLED, /* terminated (or cmp_pool_cancel) before the task ended */
};

typedef struct cmp_pool_outcome {
    uint64_t id; /* as cmp_pool_submit returned it */
    int status;  /* CMP_POOL_* above */
    int cause;   /* LOST: the worker's exit code as cmp_process_exitcode
                    reports it (-signal when killed) */
    pid_t pid;   /* the worker that ran the task (0 if none did) */
    void *data;  /* the buffer alloc returned (may be NULL when len is 0); */
    size_t len;  /* ...its first len bytes are the result */
} cmp_pool_outcome_t;

/* Starts a pool: forks the workers (each runs opt->init first). Returns 0,
 * -EINVAL (no task function), or a negative errno (memory, fork). */
int cmp_pool_create(cmp_pool_t **out, const cmp_pool_options_t *opt);

/* The memfd holding the pool's queues (the pool's: do not close it) and
 * its size, for a worker started by opt.start_worker. */
int cmp_pool_shared_fd(const cmp_pool_t *p, size_t *len);

/* The other fds worker index of p uses (its queues' spill files, named by
 * number in the shared region): a worker started by opt.start_worker must
 * have each at the same number. Writes up to max of them to fds; returns
 * how many there are. */
int cmp_pool_worker_fds(const cmp_pool_t *p, unsigned index, int *fds, int max);

/* In a worker that opt.start_worker started: maps the pool's region from
 * fd (len bytes, of a pool of `workers` workers) and serves as worker
 * index with opt (task, init, wait_hook, arg, and max_tasks, which must
 * be the pool's) until the pool tells it to exit. Like a forked worker
 * it gets SIGKILL when the process that started it dies. Returns the
 * exit status for the worker (0 when told to exit or after max_tasks),
 * or a negative errno (-EINVAL: fd is not such a region; -ESRCH: the
 * starter is gone already). */
int cmp_pool_worker_serve(int fd, size_t len, unsigned workers, unsigned index,
                          const cmp_pool_options_t *opt);

/* Queues a copy of the task; *id (may be NULL) gets its id, never 0, in
 * submission order. Never waits for a worker. Returns 0, -EPIPE once the
 * pool is closed, terminated or broken, -ENOMEM. */
int cmp_pool_submit(cmp_pool_t *pool, const void *task, size_t len, uint64_t *id);
/* The same with the task's bytes in pieces (at most CMP_POOL_IOV_MAX). */
#define CMP_POOL_IOV_MAX 64
int cmp_pool_submitv(cmp_pool_t *pool, const struct iovec *iov, int iovcnt, uint64_t *id);
/* Like cmp_pool_submitv, but the pool does not copy the task's bytes while
 * it waits for room at a worker: it keeps the pieces' addresses, and calls
 * release(arg) once it no longer needs them (it has copied them to a
 * worker, or the task was cancelled or failed with the pool), from the
 * thread then in a cmp_pool_* call, never with the pool's lock held. For
 * big tasks. On an error nothing is kept and release is not called.
 * Returns as cmp_pool_submitv (-EINVAL without release or pieces). */
int cmp_pool_submitv_ref(cmp_pool_t *pool, const struct iovec *iov, int iovcnt, uint64_t *id,
                         void (*release)(void *), void *arg);
/* Chunks: n items of item_size bytes each, in tasks of up to chunk
 * consecutive items (the last may hold fewer; the task function gets
 * len / item_size of them). The tasks' ids are consecutive from *first_id
 * (may be NULL), in item order. Returns the number of tasks, or as
 * cmp_pool_submit (-EINVAL for a zero item_size or chunk); nothing is
 * submitted on error. */
long cmp_pool_submit_chunks(cmp_pool_t *pool, const void *items, size_t item_size, size_t n,
                            size_t chunk, uint64_t *first_id);

/* Waits for the next task to end, in any order, and fills *out; the
 * result's bytes go to a buffer from alloc (see cmp_ring_alloc_fn; it is
 * asked for up to CMP_POOL_TRAILER bytes more than the result holds).
 * alloc may also be asked for a buffer that no outcome uses (a record of
 * the pool's own: one per close, terminate or failed initializer), so
 * allocate from memory that can be reclaimed (one reused buffer, say).
 * Death of a worker is noticed within CMP_POOL_CHECK_NS of it. Returns 0,
 * -ETIMEDOUT, -EINTR, -ENOBUFS (alloc returned NULL: that outcome is
 * lost), or -ENOENT once the pool is closed or terminated and every task
 * has come out. */
int cmp_pool_next(cmp_pool_t *pool, cmp_pool_outcome_t *out, cmp_ring_alloc_fn alloc, void *arg,
                  const struct timespec *deadline);
#define CMP_POOL_TRAILER 16u
#define CMP_POOL_CHECK_NS 50000000L

/* Tasks submitted that have not yet come out of cmp_pool_next(). */
uint64_t cmp_pool_outstanding(cmp_pool_t *pool);
/* Workers the pool keeps running. */
unsigned cmp_pool_size(const cmp_pool_t *pool);
/* 1 once an initializer failed (the pool is broken), with *data, *len what
 * it wrote (valid while the pool lives: what CMP_POOL_BROKEN outcomes
 * carry, for a task submitted too late to get one); else 0. */
int cmp_pool_init_error(cmp_pool_t *pool, const void **data, size_t *len);
/* Pids of the workers running now (one that has exited is left out, even
 * before the pool replaces it), up to max of them; returns how many. */
unsigned cmp_pool_pids(cmp_pool_t *pool, pid_t *pids, unsigned max);

/* Cancels those of the n tasks ids that no worker has taken yet (still
 * waiting in the pool's process): each comes out of cmp_pool_next() as
 * CMP_POOL_CANCELLED. Tasks a worker holds run to the end. Returns how
 * many were cancelled, or -ENOMEM. */
long cmp_pool_cancel(cmp_pool_t *pool, const uint64_t *ids, size_t n);

/* close: no more tasks; the workers exit once every queued task is done.
 * terminate: the workers are killed (SIGTERM, then SIGKILL after 100 ms
 * for any that lives on); every task not yet out comes out CANCELLED.
 * Both return 0. */
int cmp_pool_close(cmp_pool_t *pool);
int cmp_pool_terminate(cmp_pool_t *pool);

/* After close or terminate: waits for every worker to exit. Returns 0,
 * -ETIMEDOUT, -EINTR, or -EINVAL while the pool is running. Tasks that
 * are still queued need cmp_pool_next() to run (in another thread), since
 * it replaces workers that die. */
int cmp_pool_join(cmp_pool_t *pool, const struct timespec *deadline);

/* Kills the workers that remain, reaps them and frees the pool. */
void cmp_pool_destroy(cmp_pool_t *pool);

/* ------------------------------------------------------------------------
 * Manager server
 *
 * A server that holds state for many client processes and answers their
 * requests with a C handler: the loop under Python's managers. A request
 * and its reply are bytes of any size (0 up; a 64 MiB one works).
 *
 * Transports. The server listens on a socket: by default an AF_UNIX path
 * in the private directory (cmp_tempdir: mode 0700, only our uid reaches
 * it), or any AF_UNIX or AF_INET address given. A client on the same
 * machine that connects to an AF_UNIX address asks for a mailbox: the
 * server makes a memfd (the request/response channel of that client
 * alone) and passes it back over the socket (SCM_RIGHTS); from then on
 * requests and replies go through shared memory, with the waiting policy
 * of every libcmp wait (see "Waiting"), and the socket only tells the
 * server when the client goes. Any other client (AF_INET, or
 * CMP_MANAGER_SOCKET) sends requests as messages on the connection with
 * the framing of cmp_conn_* (multiprocessing.connection's), one reply
 * message per request message, so a peer that speaks that framing (the
 * stdlib's Client) can talk to the handler directly. With an authkey the
 * server runs the stdlib's handshake on each connection first (deliver
 * then answer, as a Listener with an authkey does; a client answers then
 * delivers). AF_UNIX peers of another uid are refused unless an authkey
 * is set, and are never given a mailbox.
 *
 * Threads. The server runs one thread per client connection: it reads
 * that client's requests and calls the handler for each, so the handler is
 * called concurrently from many threads (one per client), but never twice
 * at once for one client, and a handler that blocks for a long time (a
 * managed lock's acquire) delays only its own client. The thread that
 * calls cmp_manager_serve accepts connections and watches the clients: a
 * client process that dies (its pidfd) or closes its socket has its
 * mailbox closed and its thread ended (after the handler returns, if it
 * was in it), and the others go on. on_client (if set) is called in the
 * client's thread when it starts and when it ends.
 *
 * Server death. The server also runs a watch thread that only waits, with
 * every mailbox's liveness word on its robust futex list: when the server
 * dies, of whatever cause, the kernel marks those words and wakes the clients that
 * sleep on them, so a call blocked in a dead server returns at once, and a
 * blocked call costs no periodic wake-ups while the server lives. (Where
 * set_robust_list fails, a client checks the server's pidfd before it
 * sleeps and every CMP_OWNER_CHECK_NS.) A socket client sees EOF.
 *
 * Errors a client sees: -ECONNRESET when the server died or exited (and
 * on every later call of that client), -ESHUTDOWN when the server closed
 * this client's mailbox (it is stopping, or the handler ended the
 * session; a socket client sees -ECONNRESET then), -ETIMEDOUT, -EINTR
 * (both resumable, see cmp_manager_call).
 * ------------------------------------------------------------------------ */

typedef struct cmp_manager cmp_manager_t;
typedef struct cmp_manager_client cmp_manager_client_t;
/* The reply a handler builds (see cmp_manager_reply_extend). */
typedef struct cmp_manager_reply cmp_manager_reply_t;

/* Room for len more bytes at the end of the reply (valid until the next
 * call); NULL when out of memory. */
void *cmp_manager_reply_extend(cmp_manager_reply_t *r, size_t len);
/* Drops what was written so far. */
void cmp_manager_reply_clear(cmp_manager_reply_t *r);

/* What a handler returns (bits): 0 sends the reply; with
 * CMP_MANAGER_DISCONNECT the client's connection is closed after the reply
 * is sent (a negative return does the same); with CMP_MANAGER_STOP the
 * server then stops (as cmp_manager_stop; this client's session ends
 * too). */
#define CMP_MANAGER_DISCONNECT 0x1
#define CMP_MANAGER_STOP 0x2
/* Called for each request of client (an id, never 0, unique in this
 * server) with its bytes; writes the reply to reply. req is valid until it
 * returns. */
typedef int (*cmp_manager_handler_fn)(void *arg, uint64_t client, const void *req, size_t len,
                                      cmp_manager_reply_t *reply);
/* Called in a client's thread once the client is connected (and
 * authenticated), before its first request (event CMP_MANAGER_CLIENT_START),
 * and after its last (CMP_MANAGER_CLIENT_END). */
typedef void (*cmp_manager_client_fn)(void *arg, uint64_t client, int event);
enum { CMP_MANAGER_CLIENT_START, CMP_MANAGER_CLIENT_END };
/* Run in a started server's process before it listens (cmp_manager_start);
 * nonzero fails the start. */
typedef int (*cmp_manager_init_fn)(void *arg);

typedef struct cmp_manager_options {
    cmp_manager_handler_fn handler;  /* required */
    cmp_manager_client_fn on_client; /* NULL: none */
    cmp_manager_init_fn init;        /* NULL: none (cmp_manager_start only) */
    void *arg;                       /* given to the functions above */
    const struct sockaddr *addr;     /* NULL: a fresh path in cmp_tempdir */
    socklen_t addrlen;
    const void *authkey; /* NULL: no handshake */
    size_t authkey_len;
    int backlog; /* 0: 64 */
} cmp_manager_options_t;

/* Makes a server in this process and binds its socket (the caller then
 * runs cmp_manager_serve). Returns 0, -EINVAL (no handler), or an error of
 * cmp_listener_open (-EADDRINUSE, ...). */
int cmp_manager_create(cmp_manager_t **out, const cmp_manager_options_t *opt);

/* The address it listens on (for an AF_INET port 0, the port chosen).
 * Returns the length, written to *addr. */
socklen_t cmp_manager_address(const cmp_manager_t *m, struct sockaddr_storage *addr);

/* Serves until stopped (like the stdlib's serve_forever), in the calling
 * thread; then closes every client and waits for the client threads to
 * end, each after its handler returns. Returns 0, or a negative errno if
 * the loop could not run. Signals do not interrupt it. */
int cmp_manager_serve(cmp_manager_t *m);

/* Asks the server to stop: cmp_manager_serve returns soon after. Any
 * thread, also a handler; async-signal-safe. */
void cmp_manager_stop(cmp_manager_t *m);

/* 1 once the server is stopping (for a handler that blocks: give up). */
int cmp_manager_stopping(const cmp_manager_t *m);

/* The server whose handler the calling thread runs (also in on_client),
 * NULL in any other thread: how a handler of a started server, which has
 * no handle, asks cmp_manager_stopping. */
cmp_manager_t *cmp_manager_current(void);

/* Frees a server that is not serving (its socket path is unlinked). */
void cmp_manager_destroy(cmp_manager_t *m);

/* A server in a process of its own (process-local handle). */
typedef struct cmp_manager_process {
    cmp_process_t proc;
    int ctl; /* write end of the server's stop pipe, -1 once closed */
    socklen_t addrlen;
    struct sockaddr_storage addr; /* where it listens */
} cmp_manager_process_t;

/* The server outlives the thread that started it (no PR_SET_PDEATHSIG). */
#define CMP_MANAGER_STANDALONE 0x1u

/* Forks a server process that runs opt->init, cmp_manager_create and
 * cmp_manager_serve, and returns once it listens, with its address in
 * p->addr. Unless CMP_MANAGER_STANDALONE, it is killed when the calling
 * thread exits (PR_SET_PDEATHSIG, as cmp_process_start). Returns 0,
 * -EINVAL (no handler, unknown flags), -ECANCELED (init failed), or the
 * error of the server's create, or of fork. */
int cmp_manager_start(cmp_manager_process_t *p, const cmp_manager_options_t *opt, unsigned flags);

/* Asks the server process to stop, waits for it until deadline, then
 * kills it (SIGKILL) if it lives on, and reaps it. Returns 0 (it exited by
 * itself), -ETIMEDOUT (it was killed), -EINTR (still running: call again),
 * or -ECHILD. The server stops as cmp_manager_serve does: its clients'
 * mailboxes close at once (-ESHUTDOWN), and it exits once its handlers
 * have returned. */
int cmp_manager_shutdown(cmp_manager_process_t *p, const struct timespec *deadline);

/* Waits for the server process to exit (stopped by a client's request)
 * and reaps it. Returns 0, -ETIMEDOUT, -EINTR. */
int cmp_manager_join(cmp_manager_process_t *p, const struct timespec *deadline);

/* Releases the handle's fds (a server still running goes on). */
void cmp_manager_close(cmp_manager_process_t *p);

/* connect flags: requests go on the socket even on AF_UNIX (no mailbox). */
#define CMP_MANAGER_SOCKET 0x1u

/* Connects to a server. Returns 0, -EINVAL (unknown flags), -EACCES (the
 * handshake failed, or a mailbox refused to another user), -EPROTO (not a
 * manager: asked for a mailbox, the peer answered something else),
 * -ECONNRESET (the server dropped the connection: another user without
 * the authkey), or an error of cmp_client_connect (-ECONNREFUSED,
 * -ENOENT, -ETIMEDOUT, -EINTR, ...). authkey may be NULL. */
int cmp_manager_connect(cmp_manager_client_t **out, const struct sockaddr *addr, socklen_t addrlen,
                        const void *authkey, size_t authkey_len, unsigned flags,
                        const struct timespec *deadline);

/* Sends a request and waits for its reply, which is left in a buffer of
 * the client's (*reply, *reply_len: valid until the next call on it).
 * Returns 0; -EINTR or -ETIMEDOUT while waiting for the reply, with the
 * call still pending: cmp_manager_call_resume waits for the same reply,
 * and any other cmp_manager_call abandons it (the client then takes a
 * new connection, so that the old reply is never taken for a new one);
 * -ECONNRESET, -ESHUTDOWN (see above: the client is unusable); -ETIMEDOUT
 * also when a large message was cut (no call pending then); -ENOMEM.
 * A client is used by one thread at a time (a thread blocked in a call
 * holds it: give each thread its own). In a process forked from the one
 * that connected, the first call connects again: the child gets its own
 * channel and the parent's goes on untouched. */
int cmp_manager_call(cmp_manager_client_t *c, const void *req, size_t len, const void **reply,
                     size_t *reply_len, const struct timespec *deadline);
/* The request's bytes in pieces. */
int cmp_manager_callv(cmp_manager_client_t *c, const struct iovec *iov, int iovcnt,
                      const void **reply, size_t *reply_len, const struct timespec *deadline);
/* Waits again for the reply of a call that returned -EINTR or -ETIMEDOUT.
 * Returns as cmp_manager_call, or -EINVAL when no call is pending. */
int cmp_manager_call_resume(cmp_manager_client_t *c, const void **reply, size_t *reply_len,
                            const struct timespec *deadline);

/* 1 when the client talks through a shared-memory mailbox, 0 on a socket. */
int cmp_manager_client_is_mailbox(const cmp_manager_client_t *c);

/* Closes the connection (the server ends this client's thread) and frees
 * the client. In a forked child it only releases the child's copies. */
void cmp_manager_disconnect(cmp_manager_client_t *c);

#ifdef __cplusplus
}
#endif

#endif /* CMP_H */
