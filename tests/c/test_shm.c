/* Shared memory: memfd segments and the shared heap. */
#include "helpers.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Waits for pid with a deadline; returns its wait status (fails the test on
 * timeout, after killing it). */
static int wait_child(pid_t pid, double seconds)
{
    struct timespec deadline = test_deadline(seconds);
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        cr_assert(r >= 0);
        if (r == pid)
            return status;
        if (cmp_deadline_remaining(&deadline) <= 0) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            cr_assert_fail("child %d did not exit in time", (int)pid);
        }
        usleep(1000);
    }
}

static void expect_exit_ok(pid_t pid)
{
    int status = wait_child(pid, 10);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
}

/* ---- segments ---------------------------------------------------------- */

Test(shm, create_is_zeroed_and_shared_with_child, .timeout = 10)
{
    cmp_shm_t shm;
    cr_assert_eq(cmp_shm_create(&shm, 8192, "test"), 0);
    cr_assert(shm.fd >= 0);
    cr_assert_eq(shm.size, 8192);
    unsigned char *p = shm.addr;
    for (size_t i = 0; i < shm.size; i++)
        cr_assert_eq(p[i], 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        strcpy((char *)p + 100, "from child");
        _exit(0);
    }
    expect_exit_ok(pid);
    cr_assert_str_eq((char *)p + 100, "from child");
    cmp_shm_detach(&shm);
    cr_assert_eq(shm.fd, -1);
    cr_assert_null(shm.addr);
}

Test(shm, create_zero_size_is_einval, .timeout = 5)
{
    cmp_shm_t shm;
    cr_assert_eq(cmp_shm_create(&shm, 0, NULL), -EINVAL);
}

Test(shm, attach_maps_the_same_memory, .timeout = 5)
{
    cmp_shm_t a, b;
    cr_assert_eq(cmp_shm_create(&a, 4096, NULL), 0);
    int fd = dup(a.fd);
    cr_assert(fd >= 0);
    cr_assert_eq(cmp_shm_attach(&b, fd, 4096), 0);
    cr_assert_neq(a.addr, b.addr);
    ((int *)a.addr)[7] = 42;
    cr_assert_eq(((int *)b.addr)[7], 42);
    cmp_shm_detach(&a);
    /* b keeps the memory alive on its own */
    ((int *)b.addr)[8] = 43;
    cr_assert_eq(((int *)b.addr)[7], 42);
    cmp_shm_detach(&b);
}

Test(shm, attach_bad_fd_fails_without_taking_it, .timeout = 5)
{
    cmp_shm_t shm;
    cr_assert_lt(cmp_shm_attach(&shm, -1, 4096), 0);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    cr_assert_lt(cmp_shm_attach(&shm, fds[0], 4096), 0); /* pipes can't be mapped */
    cr_assert_eq(close(fds[0]), 0);                      /* still ours */
    close(fds[1]);
}

/* ---- named segments ---------------------------------------------------- */

/* A name of this test process's own, so that parallel runs never meet. */
static void test_name(char *out, size_t len, const char *what)
{
    snprintf(out, len, "cmp-test-%d-%s", (int)getpid(), what);
}

Test(named, create_attach_share_unlink, .timeout = 10)
{
    char name[64];
    test_name(name, sizeof name, "share");
    cmp_shm_t a, b;
    cr_assert_eq(cmp_shm_open(&a, name, CMP_SHM_CREATE, 5000), 0);
    cr_assert_eq(a.fd, -1, "the mapping alone keeps it: no fd held");
    cr_assert_eq(a.size, 5000);
    cr_assert_eq(((unsigned char *)a.addr)[4999], 0);
    /* an attacher learns the size from the segment, whatever it asks */
    cr_assert_eq(cmp_shm_open(&b, name, 0, 1), 0);
    cr_assert_eq(b.size, 5000);
    pid_t pid = test_fork();
    if (pid == 0) {
        cmp_shm_t c;
        if (cmp_shm_open(&c, name, 0, 0) != 0)
            _exit(1);
        strcpy(c.addr, "from child");
        _exit(0);
    }
    cr_assert_eq(test_join(pid, 5), 0);
    cr_assert_str_eq(a.addr, "from child");
    cr_assert_str_eq(b.addr, "from child");
    cr_assert_eq(cmp_shm_unlink(name), 0);
    cr_assert_not(test_shm_exists(name));
    cr_assert_str_eq(a.addr, "from child", "mappings outlive the name");
    cr_assert_eq(cmp_shm_unlink(name), -ENOENT);
    cmp_shm_detach(&a);
    cmp_shm_detach(&b);
}

Test(named, errors, .timeout = 5)
{
    char name[64];
    test_name(name, sizeof name, "errors");
    cmp_shm_t a, b;
    cr_assert_eq(cmp_shm_open(&a, name, 0, 0), -ENOENT);
    cr_assert_eq(cmp_shm_open(&a, name, CMP_SHM_CREATE, 0), -EINVAL);
    cr_assert_not(test_shm_exists(name), "a refused create leaves nothing");
    cr_assert_eq(cmp_shm_open(&a, "a/b", CMP_SHM_CREATE, 10), -EINVAL);
    cr_assert_eq(cmp_shm_open(&a, "/", CMP_SHM_CREATE, 10), -EINVAL);
    cr_assert_eq(cmp_shm_open(&a, name, 0x100, 10), -EINVAL);
    cr_assert_eq(cmp_shm_open(&a, name, CMP_SHM_CREATE, 10), 0);
    cr_assert_eq(cmp_shm_open(&b, name, CMP_SHM_CREATE, 10), -EEXIST);
    /* one leading '/' is the same name, as for shm_open() */
    cr_assert_eq(cmp_shm_open(&b, name, 0, 0), 0);
    cmp_shm_detach(&b);
    char slashed[80];
    snprintf(slashed, sizeof slashed, "/%s", name);
    cr_assert_eq(cmp_shm_unlink(slashed), 0);
    cmp_shm_detach(&a);
}

Test(named, empty_segment_is_enodata, .timeout = 5)
{
    char name[64], path[300];
    test_name(name, sizeof name, "empty");
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    cr_assert(fd >= 0);
    close(fd);
    cmp_shm_t a;
    cr_assert_eq(cmp_shm_open(&a, name, 0, 0), -ENODATA);
    cr_assert(test_shm_exists(name), "attaching never removes");
    cr_assert_eq(cmp_shm_unlink(name), 0);
}

Test(named, mode_is_0600_whatever_the_umask, .timeout = 5)
{
    static const mode_t masks[] = {0, 0777, 022};
    for (size_t i = 0; i < sizeof masks / sizeof masks[0]; i++) {
        char name[64], path[300];
        snprintf(name, sizeof name, "cmp-test-%d-umask%zu", (int)getpid(), i);
        snprintf(path, sizeof path, "/dev/shm/%s", name);
        mode_t old = umask(masks[i]);
        cmp_shm_t a;
        int rc = cmp_shm_open(&a, name, CMP_SHM_CREATE, 64);
        umask(old);
        cr_assert_eq(rc, 0);
        struct stat st;
        cr_assert_eq(stat(path, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0600, "umask %o gave %o", masks[i], st.st_mode & 07777);
        cmp_shm_detach(&a);
        cr_assert_eq(cmp_shm_unlink(name), 0);
    }
}

Test(named, generated_names, .timeout = 5)
{
    char n1[32], n2[32];
    cmp_shm_t a, b;
    cr_assert_eq(cmp_shm_create_named(&a, 100, "psm_", n1, sizeof n1), 0);
    cr_assert_eq(cmp_shm_create_named(&b, 100, "psm_", n2, sizeof n2), 0);
    cr_assert_eq(strlen(n1), 4 + 2 * CMP_SHM_RANDOM_BYTES);
    cr_assert_eq(strncmp(n1, "psm_", 4), 0);
    cr_assert_str_neq(n1, n2);
    cr_assert(test_shm_exists(n1) && test_shm_exists(n2));
    char tiny[8];
    cmp_shm_t c;
    cr_assert_eq(cmp_shm_create_named(&c, 100, "psm_", tiny, sizeof tiny), -ERANGE);
    cmp_shm_detach(&a);
    cmp_shm_detach(&b);
    cr_assert_eq(cmp_shm_unlink(n1), 0);
    cr_assert_eq(cmp_shm_unlink(n2), 0);
}

/* ---- heap: basics ------------------------------------------------------ */

Test(shared, zero_size_is_einval, .timeout = 5)
{
    cmp_shared_t *r;
    cr_assert_eq(cmp_shared_alloc(0, &r), -EINVAL);
}

Test(shared, aligned_zeroed_and_sized, .timeout = 10)
{
    static const size_t sizes[] = {1,    7,     63,     64,     65,     100,    1000,
                                   4096, 10000, 100000, 262143, 262144, 300000, 2000000};
    cmp_shared_t *refs[sizeof sizes / sizeof sizes[0]];
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        cr_assert_eq(cmp_shared_alloc(sizes[i], &refs[i]), 0);
        unsigned char *p = cmp_shared_ptr(refs[i]);
        cr_assert_eq((uintptr_t)p % 64, 0, "size %zu misaligned", sizes[i]);
        cr_assert_eq(cmp_shared_size(refs[i]), sizes[i]);
        for (size_t j = 0; j < sizes[i]; j++)
            cr_assert_eq(p[j], 0);
        memset(p, 0xa5, sizes[i]); /* dirty it: reuse must zero again */
    }
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        cmp_shared_release(refs[i]);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        cr_assert_eq(cmp_shared_alloc(sizes[i], &refs[i]), 0);
        unsigned char *p = cmp_shared_ptr(refs[i]);
        for (size_t j = 0; j < sizes[i]; j++)
            cr_assert_eq(p[j], 0, "reused block of %zu not zeroed", sizes[i]);
    }
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        cmp_shared_release(refs[i]);
}

Test(shared, freed_block_is_reused, .timeout = 5)
{
    cmp_shared_t *a, *b;
    cr_assert_eq(cmp_shared_alloc(128, &a), 0);
    void *pa = cmp_shared_ptr(a);
    cmp_shared_release(a);
    cr_assert_eq(cmp_shared_alloc(128, &b), 0);
    cr_assert_eq(cmp_shared_ptr(b), pa);
    cmp_shared_release(b);
}

Test(shared, retain_keeps_block_until_last_release, .timeout = 5)
{
    cmp_shared_t *a, *b;
    cr_assert_eq(cmp_shared_alloc(200, &a), 0);
    void *pa = cmp_shared_ptr(a);
    cmp_shared_retain(a);
    cmp_shared_release(a);
    cr_assert_eq(cmp_shared_alloc(200, &b), 0);
    cr_assert_neq(cmp_shared_ptr(b), pa, "block reused while still retained");
    cmp_shared_release(b);
    cmp_shared_release(a);
}

Test(shared, free_space_coalesces_back, .timeout = 10)
{
    cmp_shared_t *warm;
    cr_assert_eq(cmp_shared_alloc(64, &warm), 0); /* make the first segment */
    size_t before = cmp__shared_heap_free_bytes();
    enum { N = 500 };
    cmp_shared_t *refs[N];
    for (int i = 0; i < N; i++)
        cr_assert_eq(cmp_shared_alloc((size_t)(1 + (i * 37) % 700), &refs[i]), 0);
    /* free in an interleaved order so both neighbours get merged */
    for (int i = 0; i < N; i += 2)
        cmp_shared_release(refs[i]);
    for (int i = 1; i < N; i += 2)
        cmp_shared_release(refs[i]);
    cr_assert_eq(cmp__shared_heap_free_bytes(), before);
    cmp_shared_release(warm);
}

Test(shared, many_segments_and_distinct_blocks, .timeout = 20)
{
    /* 3000 x 1000 bytes needs several 1 MiB segments */
    enum { N = 3000 };
    static cmp_shared_t *refs[N];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(cmp_shared_alloc(1000, &refs[i]), 0);
        memset(cmp_shared_ptr(refs[i]), i & 0xff, 1000);
    }
    for (int i = 0; i < N; i++) {
        unsigned char *p = cmp_shared_ptr(refs[i]);
        cr_assert_eq(p[0], i & 0xff);
        cr_assert_eq(p[999], i & 0xff);
    }
    for (int i = 0; i < N; i++)
        cmp_shared_release(refs[i]);
}

Test(shared, big_block_dedicated_segment, .timeout = 10)
{
    cmp_shared_t *r;
    size_t size = (size_t)64 << 20;
    cr_assert_eq(cmp_shared_alloc(size, &r), 0);
    unsigned char *p = cmp_shared_ptr(r);
    cr_assert_eq((uintptr_t)p % 64, 0);
    cr_assert_eq(p[0], 0);
    cr_assert_eq(p[size - 1], 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        p[size - 1] = 7;
        cmp_shared_release_all();
        _exit(0);
    }
    expect_exit_ok(pid);
    cr_assert_eq(p[size - 1], 7);
    cmp_shared_release(r);
}

Test(shared, huge_size_is_enomem, .timeout = 5)
{
    cmp_shared_t *r;
    cr_assert_eq(cmp_shared_alloc(SIZE_MAX - 10, &r), -ENOMEM);
}

/* ---- heap across fork -------------------------------------------------- */

Test(shared, child_allocation_visible_to_parent, .timeout = 10)
{
    cmp_shared_t *mailbox;
    cr_assert_eq(cmp_shared_alloc(64, &mailbox), 0); /* creates the segment pre-fork */
    void *volatile *slot = cmp_shared_ptr(mailbox);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        cmp_shared_t *r;
        if (cmp_shared_alloc(100, &r) != 0)
            _exit(1);
        strcpy(cmp_shared_ptr(r), "written by the child");
        /* same address in the parent: the segment was mapped before fork */
        *slot = cmp_shared_ptr(r);
        _exit(0); /* keeps its reference: the block stays allocated */
    }
    expect_exit_ok(pid);
    char *p = *slot;
    cr_assert_not_null(p);
    cr_assert_str_eq(p, "written by the child");
    /* the parent's next allocation must not land on the child's block */
    cmp_shared_t *mine;
    cr_assert_eq(cmp_shared_alloc(100, &mine), 0);
    cr_assert_neq(cmp_shared_ptr(mine), (void *)p);
    cr_assert_str_eq(p, "written by the child");
    cmp_shared_release(mine);
    cmp_shared_release(mailbox);
}

/* Reads memory this process released but knows another still holds: under
 * ASan the heap poisons what a process lets go of, and this one read is
 * the test's point, not a bug. */
#if defined(__SANITIZE_ADDRESS__)
#define NO_ASAN __attribute__((no_sanitize_address))
#else
#define NO_ASAN
#endif
NO_ASAN static int peek(const volatile int *p)
{
    return *p;
}

Test(shared, block_not_reused_while_child_holds_it, .timeout = 10)
{
    cmp_shared_t *a;
    cr_assert_eq(cmp_shared_alloc(256, &a), 0);
    int *pa = cmp_shared_ptr(a);
    int go[2];
    cr_assert_eq(pipe(go), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) != 1)
            _exit(2);
        /* the parent dropped the block and allocated again: ours is intact */
        if (pa[0] != 1234)
            _exit(3);
        pa[1] = 5678;
        cmp_shared_release_all();
        _exit(0);
    }
    close(go[0]);
    pa[0] = 1234;
    cmp_shared_release(a);
    cmp_shared_t *b;
    cr_assert_eq(cmp_shared_alloc(256, &b), 0);
    cr_assert_neq(cmp_shared_ptr(b), (void *)pa, "reused while the child holds it");
    cr_assert_eq(((int *)cmp_shared_ptr(b))[0], 0);
    size_t held = cmp__shared_heap_free_bytes();
    cr_assert_eq(write(go[1], "x", 1), 1);
    expect_exit_ok(pid);
    close(go[1]);
    cr_assert_eq(peek(&pa[1]), 5678);
    /* the child let go: now the block (256 + its header) is free again */
    cr_assert_eq(cmp__shared_heap_free_bytes(), held + 256 + 64);
    cmp_shared_release(b);
}

Test(shared, release_all_drops_every_reference, .timeout = 10)
{
    cmp_shared_t *warm;
    cr_assert_eq(cmp_shared_alloc(64, &warm), 0);
    size_t before = cmp__shared_heap_free_bytes();
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        cmp_shared_t *r[10];
        for (int i = 0; i < 10; i++)
            if (cmp_shared_alloc(500, &r[i]) != 0)
                _exit(1);
        cmp_shared_retain(r[3]);
        cmp_shared_release_all(); /* inherited warm + all ten */
        /* handles stay releasable after release_all */
        cmp_shared_release(r[3]);
        _exit(0);
    }
    expect_exit_ok(pid);
    cr_assert_eq(cmp__shared_heap_free_bytes(), before);
    /* the parent still holds warm: releasing it frees it */
    cmp_shared_release(warm);
    cr_assert_eq(cmp__shared_heap_free_bytes(), before + 128);
}

Test(shared, children_allocate_concurrently, .timeout = 20)
{
    cmp_shared_t *warm;
    cr_assert_eq(cmp_shared_alloc(64, &warm), 0);
    size_t before = cmp__shared_heap_free_bytes();
    enum { KIDS = 4, ROUNDS = 2000 };
    pid_t pids[KIDS];
    for (int k = 0; k < KIDS; k++) {
        pids[k] = fork();
        cr_assert(pids[k] >= 0);
        if (pids[k] == 0) {
            cmp_shared_t *held[8] = {0};
            for (int i = 0; i < ROUNDS; i++) {
                int slot = i % 8;
                if (held[slot]) {
                    unsigned char *p = cmp_shared_ptr(held[slot]);
                    for (size_t j = 0; j < cmp_shared_size(held[slot]); j++)
                        if (p[j] != (unsigned char)(k + 1))
                            _exit(3); /* someone else got our block */
                    cmp_shared_release(held[slot]);
                }
                size_t size = (size_t)(1 + (i * 131 + k * 17) % 3000);
                if (cmp_shared_alloc(size, &held[slot]) != 0)
                    _exit(1);
                memset(cmp_shared_ptr(held[slot]), k + 1, size);
            }
            cmp_shared_release_all();
            _exit(0);
        }
    }
    for (int k = 0; k < KIDS; k++)
        expect_exit_ok(pids[k]);
    cr_assert_eq(cmp__shared_heap_free_bytes(), before);
    cmp_shared_release(warm);
}

/* Each churning thread's handles, in static storage rather than on its
 * stack: the child forked mid-churn has none of the threads, and valgrind
 * would count the handles they held as lost in it. */
static cmp_shared_t *churn_held[5][8];

static void *thread_churn(void *arg)
{
    unsigned char tag = (unsigned char)(uintptr_t)arg;
    cmp_shared_t **held = churn_held[tag];
    memset(churn_held[tag], 0, sizeof churn_held[tag]);
    for (int i = 0; i < 3000; i++) {
        int slot = i % 8;
        if (held[slot]) {
            unsigned char *p = cmp_shared_ptr(held[slot]);
            for (size_t j = 0; j < cmp_shared_size(held[slot]); j++)
                if (p[j] != tag)
                    return (void *)1;
            cmp_shared_release(held[slot]);
        }
        size_t size = (size_t)(1 + (i * 53 + tag) % 2000);
        if (cmp_shared_alloc(size, &held[slot]) != 0)
            return (void *)2;
        memset(cmp_shared_ptr(held[slot]), tag, size);
    }
    for (int slot = 0; slot < 8; slot++)
        cmp_shared_release(held[slot]);
    return NULL;
}

Test(shared, threads_allocate_concurrently, .timeout = 20)
{
    cmp_shared_t *warm;
    cr_assert_eq(cmp_shared_alloc(64, &warm), 0);
    size_t before = cmp__shared_heap_free_bytes();
    pthread_t threads[4];
    for (int t = 0; t < 4; t++)
        cr_assert_eq(pthread_create(&threads[t], NULL, thread_churn, (void *)(uintptr_t)(t + 1)),
                     0);
    /* a fork in the middle of it must not deadlock the child */
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        cmp_shared_t *r;
        if (cmp_shared_alloc(10, &r) != 0)
            _exit(1);
        cmp_shared_release_all();
        _exit(0);
    }
    for (int t = 0; t < 4; t++) {
        void *res;
        pthread_join(threads[t], &res);
        cr_assert_null(res);
    }
    expect_exit_ok(pid);
    /* the child inherited (and dropped) references to blocks that were held
     * at fork: everything is free again */
    cr_assert_eq(cmp__shared_heap_free_bytes(), before);
    cmp_shared_release(warm);
}

Test(shared, sigkilled_lock_holder_does_not_wedge, .timeout = 10)
{
    cmp_shared_t *warm;
    cr_assert_eq(cmp_shared_alloc(64, &warm), 0);
    size_t before = cmp__shared_heap_free_bytes();
    int ready[2];
    cr_assert_eq(pipe(ready), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        if (cmp__shared_heap_lock() != 0)
            _exit(1);
        if (write(ready[1], "x", 1) != 1)
            _exit(2);
        pause();
        _exit(0);
    }
    close(ready[1]);
    char c;
    cr_assert_eq(read(ready[0], &c, 1), 1);
    close(ready[0]);
    kill(pid, SIGKILL);
    int status = wait_child(pid, 5);
    cr_assert(WIFSIGNALED(status));
    cmp_shared_t *r;
    cr_assert_eq(cmp_shared_alloc(100, &r), 0);
    strcpy(cmp_shared_ptr(r), "alive");
    cmp_shared_release(r);
    cr_assert_eq(cmp__shared_heap_free_bytes(), before);
    cmp_shared_release(warm);
}

Test(shared, killed_mid_churn_leaves_heap_usable, .timeout = 20)
{
    cmp_shared_t *warm;
    cr_assert_eq(cmp_shared_alloc(64, &warm), 0);
    for (int round = 0; round < 5; round++) {
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            cmp_shared_t *held[16] = {0};
            for (unsigned i = 0;; i++) {
                unsigned slot = i % 16;
                if (held[slot])
                    cmp_shared_release(held[slot]);
                if (cmp_shared_alloc(1 + (i * 97) % 2000, &held[slot]) != 0)
                    _exit(1);
            }
        }
        usleep(20000 + 7000 * round);
        kill(pid, SIGKILL);
        cr_assert(WIFSIGNALED(wait_child(pid, 5)));
        /* whatever state it died in, the heap still works and stays sane */
        cmp_shared_t *refs[50];
        for (int i = 0; i < 50; i++) {
            cr_assert_eq(cmp_shared_alloc(300, &refs[i]), 0);
            memset(cmp_shared_ptr(refs[i]), i, 300);
        }
        for (int i = 0; i < 50; i++) {
            unsigned char *p = cmp_shared_ptr(refs[i]);
            cr_assert_eq(p[0], i);
            cr_assert_eq(p[299], i);
        }
        for (int i = 0; i < 50; i++)
            cmp_shared_release(refs[i]);
    }
    cmp_shared_release(warm);
}

Test(shm, export_import_is_the_same_memory, .timeout = 10)
{
    cmp_shared_t *small, *big;
    cr_assert_eq(cmp_shared_alloc(100, &small), 0);
    cr_assert_eq(cmp_shared_alloc(1 << 20, &big), 0); /* a dedicated segment */
    cmp_shared_t *refs[] = {small, big};
    for (int i = 0; i < 2; i++) {
        int fd;
        uint64_t off;
        cr_assert_eq(cmp_shared_export(refs[i], &fd, &off), 0);
        cmp_shared_t *again;
        cr_assert_eq(cmp_shared_import(fd, off, &again), 0);
        cr_assert_eq(cmp_shared_size(again), cmp_shared_size(refs[i]));
        ((char *)cmp_shared_ptr(refs[i]))[7] = 'x';
        cr_assert_eq(((char *)cmp_shared_ptr(again))[7], 'x');
        cmp_shared_t *found;
        size_t at;
        cr_assert_eq(cmp_shared_find((char *)cmp_shared_ptr(again) + 5, &found, &at), 0);
        cr_assert_eq(at, 5);
        cmp_shared_release(found);
        cmp_shared_release(again);
        cr_assert_eq(cmp_shared_import(fd, off + 64, &again), -EINVAL);
    }
    cmp_shared_release(small);
    cmp_shared_release(big);
}
