/* The one futex seam: every sleep and wake in libcmp goes through here. */
#include "internal.h"

#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

int cmp__futex_wait(uint32_t *word, uint32_t expected, const struct timespec *deadline)
{
    /* A deadline already past is not slept on: the kernel would still arm
     * a timer and sleep for up to the timer slack (50 us by default, 75 us
     * measured here) before saying so, which made every wait(0) and
     * get(timeout=0) on an empty object cost that. */
    if (cmp__deadline_passed(deadline))
        return -ETIMEDOUT;
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so a
     * retry after EINTR never stretches the total wait. */
    long rc = syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected, deadline, NULL,
                      FUTEX_BITSET_MATCH_ANY);
    if (rc == 0)
        return 0;
    switch (errno) {
    case EAGAIN:
        return 0;
    case ETIMEDOUT:
        return -ETIMEDOUT;
    case EINTR:
        return -EINTR;
    default:
        return -errno;
    }
}

int cmp__futex_wake(uint32_t *word, int n)
{
    long rc = syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
    return rc < 0 ? -errno : (int)rc;
}

int cmp__futex_requeue(uint32_t *word, uint32_t expected, uint32_t *target, int n)
{
    /* the count to move travels in the timeout argument's slot */
    long rc = syscall(SYS_futex, word, FUTEX_CMP_REQUEUE, 0, (void *)(long)n, target, expected);
    return rc < 0 ? -errno : (int)rc;
}
