/* Deadlines and error strings: the conventions every other concept uses. */
#include "helpers.h"

#include <errno.h>
#include <math.h>
#include <string.h>

Test(time, deadline_after_is_in_the_future, .timeout = 5)
{
    struct timespec now, deadline;
    clock_gettime(CLOCK_MONOTONIC, &now);
    cr_assert_eq(cmp_deadline_after(1.5, &deadline), 0);
    double delta =
        (double)(deadline.tv_sec - now.tv_sec) + (double)(deadline.tv_nsec - now.tv_nsec) / 1e9;
    cr_assert(delta >= 1.5 && delta < 1.6, "delta %f", delta);
    cr_assert(deadline.tv_nsec >= 0 && deadline.tv_nsec < 1000000000L);
}

Test(time, negative_timeout_means_now, .timeout = 5)
{
    struct timespec deadline;
    cr_assert_eq(cmp_deadline_after(-3, &deadline), 0);
    cr_assert(cmp_deadline_remaining(&deadline) == 0);
}

Test(time, nan_is_rejected, .timeout = 5)
{
    struct timespec deadline;
    cr_assert_eq(cmp_deadline_after(NAN, &deadline), -EINVAL);
}

Test(time, remaining_counts_down, .timeout = 5)
{
    struct timespec deadline = test_deadline(0.2);
    double first = cmp_deadline_remaining(&deadline);
    cr_assert(first > 0.1 && first <= 0.2);
    struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL);
    cr_assert(cmp_deadline_remaining(&deadline) < first);
    cr_assert(isinf(cmp_deadline_remaining(NULL)));
}

Test(errors, strerror_names_every_result, .timeout = 5)
{
    cr_assert_str_eq(cmp_strerror(0), "success");
    cr_assert_str_eq(cmp_strerror(-ETIMEDOUT), "timed out");
    cr_assert(strstr(cmp_strerror(CMP_OWNER_DIED), "died") != NULL);
    cr_assert_not_null(cmp_strerror(-ENOENT));
    cr_assert_not_null(cmp_strerror(12345));
}

Test(self, pid_is_cached_and_refreshed_after_fork, .timeout = 5)
{
    cr_assert_eq(cmp_self_pid(), getpid());
    int *shared = test_shared_map(sizeof(int) * 2);
    pid_t child = fork();
    if (child == 0) {
        shared[0] = cmp_self_pid();
        shared[1] = getpid();
        _exit(0);
    }
    cr_assert(child > 0);
    cr_assert_eq(waitpid(child, NULL, 0), child);
    cr_assert_eq(shared[0], shared[1]);
    cr_assert_eq(shared[0], child);
}

Test(self, pid_alive_sees_zombies_as_dead, .timeout = 5)
{
    cr_assert(cmp_pid_alive(getpid()));
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    /* Not reaped yet: a zombie, which holds nothing. */
    for (int i = 0; i < 500 && cmp_pid_alive(child); i++) {
        struct timespec pause = {0, 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    cr_assert_not(cmp_pid_alive(child));
    waitpid(child, NULL, 0);
    cr_assert_not(cmp_pid_alive(child));
    cr_assert_not(cmp_pid_alive(0));
}
