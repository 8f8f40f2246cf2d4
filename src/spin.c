/* The process-wide switch and the per-thread state of the wake-up policy
 * (spin.h). */
#include "spin.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cmp__spin_setting = -1;

/* CMP_SPIN=0 in the environment makes every wait sleep at once, for
 * machines where no waiter should ever spin (and to measure what spinning
 * buys). Read at the first wait of the process. */
int cmp__spin_enabled_slow(void)
{
    const char *v = getenv("CMP_SPIN");
    int on = !(v && strcmp(v, "0") == 0);
    __atomic_store_n(&cmp__spin_setting, on, __ATOMIC_RELAXED);
    return on;
}

/* Case 2 of spin.h: does this thread share its CPU with other runnable
 * tasks? The kernel counts, per thread, the time it spent runnable but
 * waiting for a CPU (/proc/thread-self/schedstat, field 2). Sampled at a wait at most every
 * SAMPLE_NS: when the waiting grew by more than BUSY_SHARE of the time
 * that passed, the thread does not spin for HOLD_NS. Known limit: the
 * kernel counts a wake-up's latency as waiting too (tens of microseconds
 * on a virtual machine whose CPU went idle), so a thread that sleeps and
 * wakes more than a few thousand times a second on an idle machine also
 * holds off, and stays in plain futex sleeps (as fast as before this
 * policy, never slower).
 * The file is opened for each sample (three system calls a millisecond at
 * most): a descriptor kept per thread would leak with every thread that
 * ends, and one kept per process would name the wrong thread. */
#define SAMPLE_NS (1000L * 1000)
#define HOLD_NS (4L * 1000 * 1000)
#define BUSY_SHARE 20 /* percent */

static __thread int64_t next_sample_ns, held_until_ns, last_wall_ns, last_wait_ns;

/* Nanoseconds this thread has waited on a run queue, or -1. */
static int64_t runqueue_wait_ns(void)
{
    int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[96];
    ssize_t k = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (k <= 0)
        return -1;
    buf[k] = '\0';
    /* "<ns on a CPU> <ns waiting on a run queue> <times run>" */
    char *end;
    strtoll(buf, &end, 10);
    if (end == buf || *end != ' ')
        return -1;
    char *p = end + 1;
    long long wait = strtoll(p, &end, 10);
    return end != p && *end == ' ' ? wait : -1;
}

int cmp__spin_held(void)
{
    int64_t now = cmp__now_ns(CLOCK_MONOTONIC_COARSE);
    if (now >= next_sample_ns) {
        next_sample_ns = now + SAMPLE_NS;
        int64_t wait = runqueue_wait_ns();
        int64_t waited = wait - last_wait_ns;
        if (wait >= 0 && last_wall_ns != 0 && now > last_wall_ns &&
            waited * 100 > (now - last_wall_ns) * BUSY_SHARE)
            held_until_ns = now + HOLD_NS;
        last_wall_ns = now;
        last_wait_ns = wait;
    }
    return now < held_until_ns;
}
