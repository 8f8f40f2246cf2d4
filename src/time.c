/* Deadlines: absolute CLOCK_MONOTONIC, computed once per call. */
#include "internal.h"

#include <errno.h>
#include <math.h>

#define NS_PER_S 1000000000L

int cmp_deadline_after(double seconds, struct timespec *out)
{
    if (isnan(seconds))
        return -EINVAL;
    if (seconds < 0)
        seconds = 0;
    clock_gettime(CLOCK_MONOTONIC, out);
    /* Clamp absurd timeouts to ~100 years rather than overflow time_t. */
    if (seconds > 3.0e9)
        seconds = 3.0e9;
    double whole = floor(seconds);
    out->tv_sec += (time_t)whole;
    out->tv_nsec += (long)((seconds - whole) * 1e9);
    if (out->tv_nsec >= NS_PER_S) {
        out->tv_sec += 1;
        out->tv_nsec -= NS_PER_S;
    }
    return 0;
}

double cmp_deadline_remaining(const struct timespec *deadline)
{
    if (!deadline)
        return INFINITY;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double left =
        (double)(deadline->tv_sec - now.tv_sec) + (double)(deadline->tv_nsec - now.tv_nsec) / 1e9;
    return left > 0 ? left : 0;
}

const struct timespec *cmp__deadline_min(const struct timespec *a, const struct timespec *b)
{
    if (!a)
        return b;
    if (!b)
        return a;
    if (a->tv_sec != b->tv_sec)
        return a->tv_sec < b->tv_sec ? a : b;
    return a->tv_nsec <= b->tv_nsec ? a : b;
}

int cmp__deadline_passed(const struct timespec *deadline)
{
    if (!deadline)
        return 0;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec != deadline->tv_sec)
        return now.tv_sec > deadline->tv_sec;
    return now.tv_nsec >= deadline->tv_nsec;
}

void cmp__deadline_left(const struct timespec *deadline, struct timespec *left)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    left->tv_sec = deadline->tv_sec - now.tv_sec;
    left->tv_nsec = deadline->tv_nsec - now.tv_nsec;
    if (left->tv_nsec < 0) {
        left->tv_sec -= 1;
        left->tv_nsec += NS_PER_S;
    }
    if (left->tv_sec < 0)
        left->tv_sec = left->tv_nsec = 0;
}

void cmp__deadline_in_ns(struct timespec *out, long ns)
{
    clock_gettime(CLOCK_MONOTONIC, out);
    out->tv_sec += ns / NS_PER_S;
    out->tv_nsec += ns % NS_PER_S;
    if (out->tv_nsec >= NS_PER_S) {
        out->tv_sec += 1;
        out->tv_nsec -= NS_PER_S;
    }
}

int64_t cmp__now_ns(clockid_t clock)
{
    struct timespec now;
    clock_gettime(clock, &now);
    return (int64_t)now.tv_sec * NS_PER_S + now.tv_nsec;
}
