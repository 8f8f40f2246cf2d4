/* Helpers shared by the Criterion tests. */
#ifndef CMP_TEST_HELPERS_H
#define CMP_TEST_HELPERS_H

#include <criterion/criterion.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cmp.h"

/* Anonymous shared mapping for one test's objects (inherited by fork). */
static inline void *test_shared_map(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert(p != MAP_FAILED);
    return p;
}

/* Deadline `seconds` from now. */
static inline struct timespec test_deadline(double seconds)
{
    struct timespec ts;
    cmp_deadline_after(seconds, &ts);
    return ts;
}

#endif
