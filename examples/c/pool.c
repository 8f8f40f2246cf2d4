/* A pool of worker processes squares 1..5 and the results are printed in
 * task order: the C twin of the documentation's Pool example
 * (examples/python/pool.py). Tasks and results are bytes; here, one int64. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmp.h"

static int square(void *arg, const void *task, size_t len, cmp_pool_result_t *out)
{
    (void)arg;
    int64_t x;
    if (len != sizeof x)
        return 1; /* failed: the pool reports CMP_POOL_FAILED */
    memcpy(&x, task, sizeof x);
    int64_t y = x * x;
    void *room = cmp_pool_result_extend(out, sizeof y);
    if (!room)
        return 1;
    memcpy(room, &y, sizeof y);
    return 0;
}

static void *in_place(void *arg, size_t len)
{
    return len <= 64 ? arg : NULL; /* results here are 8 bytes + trailer */
}

int main(void)
{
    cmp_pool_options_t opt = {.workers = 5, .task = square};
    cmp_pool_t *pool;
    int rc = cmp_pool_create(&pool, &opt);
    if (rc < 0) {
        fprintf(stderr, "pool: %s\n", cmp_strerror(rc));
        return 1;
    }
    enum { N = 5 };
    uint64_t first = 0;
    for (int64_t x = 1; x <= N; x++) {
        uint64_t id;
        if ((rc = cmp_pool_submit(pool, &x, sizeof x, &id)) < 0) {
            fprintf(stderr, "submit: %s\n", cmp_strerror(rc));
            return 1;
        }
        if (x == 1)
            first = id;
    }
    /* Results come in any order; ids are consecutive from the first. */
    int64_t squares[N];
    for (int k = 0; k < N; k++) {
        char buf[64];
        cmp_pool_outcome_t o;
        if ((rc = cmp_pool_next(pool, &o, in_place, buf, NULL)) < 0) {
            fprintf(stderr, "next: %s\n", cmp_strerror(rc));
            return 1;
        }
        if (o.status != CMP_POOL_DONE) {
            fprintf(stderr, "task %llu: status %d\n", (unsigned long long)o.id, o.status);
            return 1;
        }
        memcpy(&squares[o.id - first], o.data, sizeof squares[0]);
    }
    cmp_pool_close(pool);
    cmp_pool_join(pool, NULL);
    cmp_pool_destroy(pool);
    printf("[");
    for (int k = 0; k < N; k++)
        printf("%s%lld", k ? ", " : "", (long long)squares[k]);
    printf("]\n");
    return 0;
}
