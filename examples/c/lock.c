/* Three child processes take turns with one cmp_lock_t in the shared heap;
 * each says when it has it. The C twin of examples/python/lock.py. */
#include <stdio.h>

#include "cmp.h"

struct job {
    cmp_lock_t *lock;
    int n;
};

static int work(void *arg)
{
    struct job *job = arg;
    int rc = cmp_lock_acquire(job->lock, NULL);
    if (rc < 0)
        return 1;
    printf("Process-%d acquired the lock\n", job->n);
    fflush(stdout);
    cmp_lock_release(job->lock);
    return 0;
}

int main(void)
{
    cmp_shared_t *block;
    int rc = cmp_shared_alloc(sizeof(cmp_lock_t), &block);
    if (rc < 0) {
        fprintf(stderr, "alloc: %s\n", cmp_strerror(rc));
        return 1;
    }
    cmp_lock_t *lock = cmp_shared_ptr(block);
    cmp_lock_init(lock);

    cmp_process_t procs[3];
    struct job jobs[3];
    for (int i = 0; i < 3; i++) {
        jobs[i] = (struct job){lock, i + 1};
        rc = cmp_process_start(&procs[i], work, &jobs[i], 0);
        if (rc < 0) {
            fprintf(stderr, "start: %s\n", cmp_strerror(rc));
            return 1;
        }
    }
    int status = 0;
    for (int i = 0; i < 3; i++) {
        int code = -1;
        if (cmp_process_join(&procs[i], NULL) == 0)
            cmp_process_exitcode(&procs[i], &code);
        cmp_process_close(&procs[i]);
        if (code != 0)
            status = 1;
    }
    cmp_shared_release(block);
    return status;
}
