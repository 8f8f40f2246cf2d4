/*
 * Sharing a number and an array with a child process: memory from the
 * shared heap is inherited by fork, and the child writes under a lock that
 * lives in the same block.
 *
 *   cc shared_memory.c -lcmp -lpthread && ./a.out      prints: 1 [2, 2, 3]
 */
#include <cmp.h>

#include <stdio.h>
#include <stdlib.h>

struct shared {
    cmp_lock_t lock;
    int num;
    int arr[3];
};

static int work(void *arg)
{
    struct shared *s = arg;
    cmp_lock_acquire(&s->lock, NULL);
    s->num += 1;
    s->arr[0] = 2;
    cmp_lock_release(&s->lock);
    return 0;
}

static int check(int rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", what, cmp_strerror(rc));
        exit(1);
    }
    return rc;
}

int main(void)
{
    cmp_shared_t *block;
    check(cmp_shared_alloc(sizeof(struct shared), &block), "cmp_shared_alloc");
    struct shared *s = cmp_shared_ptr(block); /* zeroed */
    cmp_lock_init(&s->lock);
    s->arr[0] = 1;
    s->arr[1] = 2;
    s->arr[2] = 3;

    cmp_process_t proc;
    check(cmp_process_start(&proc, work, s, 0), "cmp_process_start");
    check(cmp_process_join(&proc, NULL), "cmp_process_join");
    cmp_process_close(&proc);

    printf("%d [%d, %d, %d]\n", s->num, s->arr[0], s->arr[1], s->arr[2]);
    cmp_shared_release(block);
    return 0;
}
