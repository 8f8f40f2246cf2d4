/* Resource tracker: what a dead program registered is removed, by its
 * watcher when the program ends, by a later sweep when the watcher was
 * killed too, and never while a living process maps it. Each "program" is
 * a forked child of the test that starts its own registry. */
#include "helpers.h"
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void test_name(char *out, size_t len, const char *what)
{
    snprintf(out, len, "cmp-test-trk-%d-%s", (int)getpid(), what);
}

/* Polls until the segment is gone or seconds pass (sweeping each time
 * when sweep is set: a killed watcher dies asynchronously, and holds the
 * registry's lock until it is gone); 1 when gone. */
static int wait_gone(const char *name, double seconds, int sweep)
{
    struct timespec deadline = test_deadline(seconds);
    while (test_shm_exists(name)) {
        if (cmp_deadline_remaining(&deadline) <= 0)
            return 0;
        if (sweep)
            cmp_tracker_sweep();
        usleep(2000);
    }
    return 1;
}

enum { EXIT_CLEAN, KILL_ALL, UNLINK_FIRST };

/* The program: creates and registers name, then ends as `how` says
 * (KILL_ALL: SIGKILL of its watcher, then of itself). Returns its pid. */
static pid_t run_program(const char *name, int how)
{
    pid_t pid = test_fork();
    if (pid == 0) {
        cmp_shm_t s;
        if (cmp_shm_open(&s, name, CMP_SHM_CREATE, 4096) != 0)
            _exit(10);
        if (cmp_tracker_register(CMP_TRACK_SHM, name) != 0)
            _exit(11);
        if (cmp_tracker_fd() < 0 || cmp_tracker_watcher_pid() <= 0)
            _exit(12);
        if (how == UNLINK_FIRST &&
            (cmp_shm_unlink(name) != 0 || cmp_tracker_unregister(CMP_TRACK_SHM, name) != 0))
            _exit(13);
        if (how == KILL_ALL) {
            kill(cmp_tracker_watcher_pid(), SIGKILL);
            raise(SIGKILL);
        }
        _exit(0);
    }
    return pid;
}

Test(tracker, watcher_removes_leftovers_when_the_program_ends, .timeout = 10)
{
    char name[64];
    test_name(name, sizeof name, "exit");
    cr_assert_eq(test_join(run_program(name, EXIT_CLEAN), 5), 0);
    cr_assert(wait_gone(name, 5, 0), "the watcher did not remove %s", name);
}

Test(tracker, sweep_removes_what_a_killed_program_and_watcher_left, .timeout = 10)
{
    char name[64];
    test_name(name, sizeof name, "killed");
    pid_t pid = run_program(name, KILL_ALL);
    cr_assert_eq(test_join(pid, 5), -1, "the program was killed");
    /* nobody of the program is left to remove it: a sweep does (this one
     * or that of a test running alongside) */
    cr_assert(wait_gone(name, 5, 1), "the sweep did not remove %s", name);
}

/* Another program, none of the dead one's, that maps name until
 * stop_mapper(); returns once it does. */
struct mapper {
    pid_t pid;
    int go;
};

static struct mapper start_mapper(const char *name)
{
    int ready[2], go[2];
    cr_assert_eq(pipe(ready), 0);
    cr_assert_eq(pipe(go), 0);
    pid_t pid = test_fork();
    if (pid == 0) {
        cmp_shm_t s;
        char c = 0;
        if (cmp_shm_open(&s, name, 0, 0) != 0)
            _exit(1);
        if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
            _exit(2);
        _exit(0);
    }
    char c;
    cr_assert_eq(read(ready[0], &c, 1), 1);
    close(ready[0]);
    close(ready[1]);
    close(go[0]);
    return (struct mapper){pid, go[1]};
}

static void stop_mapper(struct mapper m)
{
    char c = 0;
    cr_assert_eq(write(m.go, &c, 1), 1);
    close(m.go);
    cr_assert_eq(test_join(m.pid, 5), 0);
}

Test(tracker, a_segment_still_mapped_is_kept_until_unused, .timeout = 15)
{
    char name[64];
    test_name(name, sizeof name, "mapped");
    pid_t prog = run_program(name, KILL_ALL);
    cr_assert_eq(test_join(prog, 5), -1);
    struct mapper m = start_mapper(name);
    cmp_tracker_sweep();
    cr_assert(test_shm_exists(name), "removed while another process maps it");
    stop_mapper(m);
    cr_assert(wait_gone(name, 5, 1), "kept once unused");
}

Test(tracker, unregistered_and_untracked_names_are_left_alone, .timeout = 10)
{
    char name[64], other[64];
    test_name(name, sizeof name, "unreg");
    test_name(other, sizeof other, "untracked");
    cr_assert_eq(test_join(run_program(name, UNLINK_FIRST), 5), 0);
    cr_assert_not(test_shm_exists(name));
    /* one that nobody registered survives every sweep: shared memory by
     * name may outlive its creator on purpose */
    cmp_shm_t s;
    cr_assert_eq(cmp_shm_open(&s, other, CMP_SHM_CREATE, 64), 0);
    cmp_shm_detach(&s);
    cmp_tracker_sweep();
    cr_assert(test_shm_exists(other));
    cr_assert_eq(cmp_shm_unlink(other), 0);
}

Test(tracker, a_fork_belongs_to_its_parents_program, .timeout = 10)
{
    char name[64];
    test_name(name, sizeof name, "fork");
    int ready[2];
    cr_assert_eq(pipe(ready), 0);
    pid_t prog = test_fork();
    if (prog == 0) {
        cr_assert_eq(cmp_tracker_start(), 0);
        pid_t child = fork();
        if (child == 0) {
            /* the child registers in its parent's program, and outlives
             * it: the segment stays until the child is gone too */
            cmp_shm_t s;
            char c = 0;
            if (cmp_shm_open(&s, name, CMP_SHM_CREATE, 64) != 0 ||
                cmp_tracker_register(CMP_TRACK_SHM, name) != 0)
                _exit(1);
            cmp_shm_detach(&s);
            if (write(ready[1], &c, 1) != 1)
                _exit(2);
            usleep(300000);
            _exit(0);
        }
        char c;
        _exit(read(ready[0], &c, 1) == 1 ? 0 : 3);
    }
    cr_assert_eq(test_join(prog, 5), 0);
    usleep(100000);
    cmp_tracker_sweep();
    cr_assert(test_shm_exists(name), "removed while a process of its program lives");
    cr_assert(wait_gone(name, 5, 0), "the watcher did not remove it after the last process");
}

Test(tracker, adopt_checks_the_fd, .timeout = 5)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    cr_assert_eq(cmp_tracker_adopt(fds[0]), -EINVAL);
    cr_assert_eq(cmp_tracker_adopt(999), -ENOENT);
    cr_assert_eq(cmp_tracker_register('x', "name"), -EINVAL);
}

Test(tracker, starting_the_watcher_keeps_no_heap_block, .timeout = 10)
{
    pid_t prog = test_fork();
    if (prog == 0) {
        /* a block alive when the watcher forks is freed with its last
         * holder here: the watcher keeps no reference */
        cmp_shared_t *block;
        if (cmp_shared_alloc(1000, &block) != 0)
            _exit(1);
        size_t before = cmp__shared_heap_free_bytes();
        if (cmp_tracker_start() != 0)
            _exit(2);
        cmp_shared_release(block);
        /* the watcher lets go of its reference as it starts */
        struct timespec deadline = test_deadline(3);
        while (cmp__shared_heap_free_bytes() <= before)
            if (cmp_deadline_remaining(&deadline) <= 0)
                _exit(3);
            else
                usleep(1000);
        _exit(0);
    }
    cr_assert_eq(test_join(prog, 5), 0);
}

Test(tracker, one_pass_keeps_exactly_the_mapped_ones, .timeout = 15)
{
    char names[3][64];
    for (int k = 0; k < 3; k++)
        snprintf(names[k], sizeof names[k], "cmp-test-trk-%d-many%d", (int)getpid(), k);
    pid_t prog = test_fork();
    if (prog == 0) {
        for (int k = 0; k < 3; k++) {
            cmp_shm_t s;
            if (cmp_shm_open(&s, names[k], CMP_SHM_CREATE, 64) != 0 ||
                cmp_tracker_register(CMP_TRACK_SHM, names[k]) != 0)
                _exit(1);
            cmp_shm_detach(&s);
        }
        kill(cmp_tracker_watcher_pid(), SIGKILL);
        raise(SIGKILL);
    }
    cr_assert_eq(test_join(prog, 5), -1);
    struct mapper m = start_mapper(names[1]);
    cr_assert(wait_gone(names[0], 5, 1) && wait_gone(names[2], 5, 1));
    cr_assert(test_shm_exists(names[1]), "removed while another process maps it");
    stop_mapper(m);
    cr_assert(wait_gone(names[1], 5, 1), "kept once unused");
}
