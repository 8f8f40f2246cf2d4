/* The Pool example over MPI ranks: rank 0 squares 1..5 on the workers of
 * the other ranks and prints the results in task order (CMP_MPI_ORDERED).
 *
 *   mpiexec -n 3 build/examples/mpi_pool      ->  [1, 4, 9, 16, 25]
 *
 * Run alone (one rank), it uses a local pool with the same options. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmp_mpi.h"

static int square(void *arg, const void *task, size_t len, cmp_pool_result_t *out)
{
    (void)arg;
    int64_t x;
    if (len != sizeof x)
        return 1; /* failed: rank 0 gets CMP_POOL_FAILED */
    memcpy(&x, task, sizeof x);
    int64_t y = x * x;
    void *room = cmp_pool_result_extend(out, sizeof y);
    if (!room)
        return 1;
    memcpy(room, &y, sizeof y);
    return 0;
}

int main(int argc, char **argv)
{
    cmp_pool_options_t local = {.workers = 2, .task = square};
    int rank = cmp_mpi_init(&argc, &argv);
    if (rank < 0) {
        fprintf(stderr, "mpi: %s\n", cmp_strerror(rank));
        return 1;
    }
    if (rank > 0) {
        /* every other rank serves, one worker per CPU it was given */
        cmp_pool_options_t serve_opt = {.task = square};
        cmp_mpi_serve_options_t so = {.pool = &serve_opt};
        int rc = cmp_mpi_serve(&so);
        cmp_mpi_finalize();
        return rc < 0;
    }
    cmp_mpi_pool_options_t opt = {.flags = CMP_MPI_ORDERED, .local = &local};
    cmp_mpi_pool_t *pool;
    int rc = cmp_mpi_pool_create(&pool, &opt);
    if (rc < 0) {
        fprintf(stderr, "pool: %s\n", cmp_strerror(rc));
        cmp_mpi_finalize();
        return 1;
    }
    enum { N = 5 };
    for (int64_t x = 1; x <= N; x++)
        if ((rc = cmp_mpi_pool_submit(pool, &x, sizeof x, NULL)) < 0) {
            fprintf(stderr, "submit: %s\n", cmp_strerror(rc));
            return 1;
        }
    printf("[");
    for (int k = 0; k < N; k++) {
        cmp_mpi_outcome_t o;
        if ((rc = cmp_mpi_pool_next(pool, &o, NULL)) < 0) {
            fprintf(stderr, "next: %s\n", cmp_strerror(rc));
            return 1;
        }
        if (o.o.status != CMP_POOL_DONE || o.o.len != sizeof(int64_t)) {
            fprintf(stderr, "task %llu: status %d on rank %d (%s)\n", (unsigned long long)o.o.id,
                    o.o.status, o.rank, o.host);
            return 1;
        }
        int64_t y;
        memcpy(&y, o.o.data, sizeof y);
        free(o.o.data);
        printf("%s%lld", k ? ", " : "", (long long)y);
    }
    printf("]\n");
    cmp_mpi_pool_close(pool);
    cmp_mpi_pool_join(pool, NULL);
    cmp_mpi_pool_destroy(pool);
    cmp_mpi_finalize();
    return 0;
}
