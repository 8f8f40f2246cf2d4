/* Producer/consumer: two child processes put numbers on a cmp_queue_t in
 * the shared heap, a third adds them up; an empty message tells it that a
 * producer is done. The C twin of examples/python/queues.py. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cmp.h"

#define N 100 /* numbers per producer */

struct job {
    cmp_queue_t *q;
    cmp_queue_t *results;
    int64_t start;
};

static int produce(void *arg)
{
    struct job *job = arg;
    for (int64_t i = job->start; i < job->start + N; i++) {
        int64_t v = i * i;
        if (cmp_queue_put(job->q, &v, sizeof v, NULL) < 0)
            return 1;
    }
    return cmp_queue_put(job->q, NULL, 0, NULL) < 0; /* done */
}

/* The ring copies each message straight into the buffer this returns. */
struct slot {
    int64_t value;
    size_t len;
};

static void *into_slot(void *arg, size_t len)
{
    struct slot *s = arg;
    s->len = len;
    return len <= sizeof s->value ? &s->value : NULL;
}

static int consume(void *arg)
{
    struct job *job = arg;
    int64_t sums[2] = {0, 0}; /* count, total */
    for (int finished = 0; finished < 2;) {
        struct slot s;
        if (cmp_queue_get(job->q, into_slot, &s, NULL) < 0)
            return 1;
        if (s.len == 0) {
            finished++;
        } else {
            sums[0]++;
            sums[1] += s.value;
        }
    }
    return cmp_queue_put(job->results, sums, sizeof sums, NULL) < 0;
}

static void *into_sums(void *arg, size_t len)
{
    return len == 2 * sizeof(int64_t) ? arg : NULL;
}

int main(void)
{
    size_t size = cmp_queue_footprint(64 << 10);
    cmp_shared_t *blocks[2];
    cmp_queue_t *q[2];
    for (int i = 0; i < 2; i++) {
        int rc = cmp_shared_alloc(size, &blocks[i]);
        if (rc < 0) {
            fprintf(stderr, "alloc: %s\n", cmp_strerror(rc));
            return 1;
        }
        q[i] = cmp_shared_ptr(blocks[i]);
        cmp_queue_init(q[i], 64 << 10, 0);
    }

    cmp_process_t procs[3];
    struct job jobs[3] = {{q[0], q[1], 0}, {q[0], q[1], 0}, {q[0], q[1], N}};
    cmp_process_fn fns[3] = {consume, produce, produce};
    for (int i = 0; i < 3; i++) {
        int rc = cmp_process_start(&procs[i], fns[i], &jobs[i], 0);
        if (rc < 0) {
            fprintf(stderr, "start: %s\n", cmp_strerror(rc));
            return 1;
        }
    }
    int64_t sums[2];
    struct timespec deadline;
    cmp_deadline_after(60, &deadline);
    int rc = cmp_queue_get(q[1], into_sums, sums, &deadline);
    int status = rc < 0;
    for (int i = 0; i < 3; i++) {
        int code = 1;
        cmp_process_join(&procs[i], NULL);
        cmp_process_exitcode(&procs[i], &code);
        cmp_process_close(&procs[i]);
        status |= code != 0;
    }
    if (rc < 0) {
        fprintf(stderr, "get: %s\n", cmp_strerror(rc));
        return 1;
    }
    printf("consumed %lld items, sum of squares %lld\n", (long long)sums[0], (long long)sums[1]);
    for (int i = 0; i < 2; i++)
        cmp_shared_release(blocks[i]);
    return status;
}
