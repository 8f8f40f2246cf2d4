/*
 * Mailbox: the request/response channel of one manager client in shared
 * memory (a memfd that the server creates and hands to the client). Internal
 * to libcmp (manager.c, manager_client.c).
 *
 * One data area used half-duplex: the two sides take turns. Each side has
 * a sequence word that it bumps (by 2) to hand the data area to the other
 * side; bit 0 of both words is set when the mailbox is closed, so that a
 * close is a change of the very futex word a sleeper compares and can never
 * be missed. A message larger than the data area goes in chunks, each one
 * acknowledged by a hand-off back, so turns strictly alternate: request
 * chunks, the server's acks, reply chunks, the client's acks.
 *
 * The waits follow the policy of spin.h: spin while the peer runs on
 * another CPU and spins pay, then sleep on the futex.
 *
 * The server's death must wake a sleeping client at once, and no process
 * outlives it to do so: the kernel does. The word `alive` holds the id of
 * a thread of the server that does nothing but wait (its "watch" thread)
 * and is on that thread's robust futex list (set_robust_list), through the
 * `robust` entry of the mailbox. When the thread dies, with its process,
 * the kernel sets FUTEX_OWNER_DIED in the word and, if FUTEX_WAITERS is
 * set, wakes the one sleeper: so a client sleeps on `alive`, not on the
 * server's seq, after setting FUTEX_WAITERS, and the server's hand-off
 * clears the bit and wakes it. Where the server has no watch (alive 0) a
 * client sleeps on the seq and runs its check callback before each sleep
 * and every CMP__OWNER_CHECK_NS (the server's pidfd).
 *
 * The memory is shared with a process of the same user that may be buggy:
 * a receiver reads each header field once and checks it, so that garbage
 * fails the message (-EPROTO) instead of overrunning a buffer.
 */
#ifndef CMP_MAILBOX_H
#define CMP_MAILBOX_H

#include "internal.h"

#include <linux/futex.h>

#include <stddef.h>
#include <stdint.h>

#define CMP__MBOX_MAGIC 0x6d626f78u /* "mbox" */
/* Bytes of the data area: a 64 MiB message is 256 hand-offs. Pages of the
 * memfd are committed only as a message reaches them. */
#define CMP__MBOX_DATA ((size_t)256 << 10)

enum { CMP__MBOX_CLIENT = 0, CMP__MBOX_SERVER = 1 };

struct cmp__mbox_side {
    uint32_t seq;     /* futex word: +2 per hand-off by this side; bit 0 closed */
    uint32_t waiters; /* the other side sleeps on seq (0 or 1) */
    uint32_t cpu;     /* this side's CPU + 1 at its last hand-off (a hint) */
    uint32_t spin_ns; /* adaptive spin budget of waits for this side (a hint) */
    uint32_t pad[12];
};

struct cmp__mbox {
    uint32_t magic;
    uint32_t data_size;
    uint32_t pad0[14];
    struct cmp__mbox_side side[2]; /* [CMP__MBOX_CLIENT] bumps side[0].seq */
    /* the chunk now in the data area, written by the side whose turn it is */
    uint64_t msg_len;   /* length of the whole message */
    uint64_t chunk_off; /* offset of this chunk in it */
    uint64_t chunk_len;
    uint32_t pad1[10];
    /* the server's liveness (see above): written by the server at init,
     * FUTEX_WAITERS by a sleeping client, FUTEX_OWNER_DIED by the kernel,
     * CMP__MBOX_ALIVE_CLOSED by a close */
    uint32_t alive;
    uint32_t pad2;
    /* The entry of the watch thread's robust list: a pointer of the
     * server's address space, the one exception to "no pointers in shared
     * memory", because the kernel finds the word at a fixed offset from the
     * entry. Only the server and the kernel read it. */
    struct robust_list robust;
    uint32_t pad3[12];
    unsigned char data[];
};

/* A bit of `alive` above any thread id (ids stay below 2^22): the mailbox
 * is closed, so the kernel, which compares the whole id field, leaves the
 * word alone from then on. */
#define CMP__MBOX_ALIVE_CLOSED 0x20000000u
/* futex_offset of the watch thread's robust list head. */
#define CMP__MBOX_ROBUST_OFFSET                                                                    \
    ((long)offsetof(struct cmp__mbox, alive) - (long)offsetof(struct cmp__mbox, robust))

/* Bytes of the memfd for a mailbox with the default data area. */
#define CMP__MBOX_SIZE (sizeof(struct cmp__mbox) + CMP__MBOX_DATA)

/* Called by a waiter before it sleeps and every CMP__OWNER_CHECK_NS while
 * it sleeps: 0 while the peer may still answer, else the negative errno
 * the wait returns. */
typedef int (*cmp__mbox_check_fn)(void *arg);

/* One process's view of a mailbox: which side it is and what it last saw
 * of the other side's word. Process-local. */
struct cmp__mbox_end {
    struct cmp__mbox *m;
    size_t data_size;
    int me;
    uint32_t seen; /* the other side's seq (bit 0 clear) at its last hand-off */
    cmp__mbox_check_fn check;
    void *check_arg;
};

/* A growing receive buffer (process-local, reused between messages). */
struct cmp__mbox_buf {
    unsigned char *data;
    size_t cap;
};

/* Room for len bytes in buf, its bytes kept (a cmp_conn_alloc_fn, with
 * buf as its arg). NULL when out of memory. */
void *cmp__mbox_buf_room(void *buf, size_t len);

/* Formats a mailbox in size bytes of fresh zeroed shared memory. watch:
 * the thread id of the server's watch thread, 0 for none (link
 * &m->robust into its list before a client waits). */
void cmp__mbox_init(struct cmp__mbox *m, size_t size, uint32_t watch);
/* Attaches one side to a mapped mailbox of size bytes. Returns 0, or
 * -EPROTO when the memory does not hold a mailbox. */
int cmp__mbox_end_init(struct cmp__mbox_end *e, struct cmp__mbox *m, size_t size, int side);

/* Sends one message (the concatenation of iovcnt buffers): it must be this
 * side's turn. Chunks after the first wait for the peer's acknowledgement,
 * until deadline; signals do not interrupt them. Returns 0, -ESHUTDOWN
 * (closed), -ETIMEDOUT (the message is cut: close the mailbox),
 * -ECONNRESET (a client's: the server died), or the check's error. */
int cmp__mbox_sendv(struct cmp__mbox_end *e, const struct iovec *iov, int iovcnt,
                    const struct timespec *deadline);

/* Waits for the peer's next message and receives it into *buf (grown as
 * chunks arrive); *len gets its length. The wait for the first chunk
 * returns -EINTR when intr is set (nothing was consumed: call again);
 * later chunks are waited for through signals, until deadline. Returns 0,
 * -ESHUTDOWN, -ETIMEDOUT (before the first chunk: nothing consumed),
 * -ECONNABORTED (the deadline passed midway: the message is cut, close the
 * mailbox), -EINTR, -ENOMEM, -EPROTO (a corrupt header), -ECONNRESET (a
 * client's: the server died), or the check's error. */
int cmp__mbox_recv(struct cmp__mbox_end *e, struct cmp__mbox_buf *buf, size_t *len, int intr,
                   const struct timespec *deadline);

/* Closes the mailbox for both sides: every wait in it, now or later,
 * returns -ESHUTDOWN (after the hand-offs already made). */
void cmp__mbox_close(struct cmp__mbox *m);
/* 1 once closed. */
int cmp__mbox_is_closed(const struct cmp__mbox *m);

#endif /* CMP_MAILBOX_H */
