/* Fd sharing: redeem in the same process and in a forked child, single
 * use, unknown keys, a sharer that exited, withdrawn registrations, and a
 * child that forgets the parent's pending dups. */
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Redeems with a 5 s deadline. */
static int redeem(const cmp_fd_token_t *t)
{
    struct timespec d = test_deadline(5.0);
    return cmp_fdshare_redeem(t, &d);
}

/* Writes msg into w and checks that it comes out of r. */
static void assert_linked(int w, int r, const char *msg)
{
    size_t n = strlen(msg);
    cr_assert_eq(write(w, msg, n), (ssize_t)n);
    char buf[64] = {0};
    cr_assert_eq(read(r, buf, sizeof buf), (ssize_t)n);
    cr_assert_str_eq(buf, msg);
}

Test(fdshare, redeem_in_same_process, .timeout = 10)
{
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    cmp_fd_token_t t;
    cr_assert_eq(cmp_fdshare_register(p[1], &t), 0);
    cr_assert(t.addr[0] != '\0');
    /* the registration holds a dup: the original may go */
    close(p[1]);
    int fd = redeem(&t);
    cr_assert_geq(fd, 0, "redeem: %s", cmp_strerror(fd));
    cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    assert_linked(fd, p[0], "same");
    /* the sharer closed its dup after sending: ours is the last writer */
    close(fd);
    char c;
    cr_assert_eq(read(p[0], &c, 1), 0);
    close(p[0]);
    cmp_fdshare_shutdown();
}

Test(fdshare, redeem_in_forked_child, .timeout = 10)
{
    int s[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    cmp_fd_token_t t;
    cr_assert_eq(cmp_fdshare_register(s[1], &t), 0);
    close(s[1]);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int fd = redeem(&t); /* served by the parent's thread */
        if (fd < 0)
            _exit(2);
        _exit(write(fd, "child", 5) == 5 ? 0 : 3);
    }
    cr_assert_eq(test_join(pid, 5.0), 0);
    char buf[8] = {0};
    cr_assert_eq(read(s[0], buf, sizeof buf), 5);
    cr_assert_str_eq(buf, "child");
    close(s[0]);
    cmp_fdshare_shutdown();
}

Test(fdshare, second_redeem_fails, .timeout = 10)
{
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    cmp_fd_token_t t;
    cr_assert_eq(cmp_fdshare_register(p[1], &t), 0);
    int fd = redeem(&t);
    cr_assert_geq(fd, 0);
    cr_assert_eq(redeem(&t), -ENOENT);
    close(fd);
    close(p[0]);
    close(p[1]);
    cmp_fdshare_shutdown();
}

Test(fdshare, unknown_key, .timeout = 10)
{
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    cmp_fd_token_t t;
    cr_assert_eq(cmp_fdshare_register(p[1], &t), 0);
    cmp_fd_token_t wrong = t;
    wrong.key ^= 1;
    cr_assert_eq(redeem(&wrong), -ENOENT);
    /* the failed attempt did not spend the real one */
    int fd = redeem(&t);
    cr_assert_geq(fd, 0);
    close(fd);
    close(p[0]);
    close(p[1]);
    cmp_fdshare_shutdown();
}

Test(fdshare, sender_exited, .timeout = 10)
{
    int p[2], tp[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(tp, O_CLOEXEC), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        cmp_fd_token_t t;
        if (cmp_fdshare_register(p[1], &t) < 0)
            _exit(2);
        _exit(write(tp[1], &t, sizeof t) == (ssize_t)sizeof t ? 0 : 3);
    }
    cr_assert_eq(test_join(pid, 5.0), 0);
    cmp_fd_token_t t;
    cr_assert_eq(read(tp[0], &t, sizeof t), (ssize_t)sizeof t);
    struct timespec before, after;
    clock_gettime(CLOCK_MONOTONIC, &before);
    cr_assert_eq(redeem(&t), -ECONNREFUSED);
    clock_gettime(CLOCK_MONOTONIC, &after);
    cr_assert_lt(after.tv_sec - before.tv_sec, 2, "must fail at once, not wait");
    close(p[0]);
    close(p[1]);
    close(tp[0]);
    close(tp[1]);
}

Test(fdshare, cancel_and_shutdown, .timeout = 10)
{
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    cmp_fd_token_t a, b;
    cr_assert_eq(cmp_fdshare_register(p[1], &a), 0);
    cr_assert_eq(cmp_fdshare_register(p[1], &b), 0);
    cr_assert_str_eq(a.addr, b.addr, "one server per process");
    cr_assert_eq(cmp_fdshare_cancel(&a), 0);
    cr_assert_eq(cmp_fdshare_cancel(&a), -ENOENT);
    cr_assert_eq(redeem(&a), -ENOENT);
    cmp_fdshare_shutdown();
    cr_assert_eq(redeem(&b), -ECONNREFUSED);
    /* every dup is closed: the write end's last copy is p[1] */
    close(p[1]);
    char c;
    cr_assert_eq(read(p[0], &c, 1), 0);
    close(p[0]);
    /* and a new registration starts a new server */
    int q[2];
    cr_assert_eq(pipe2(q, O_CLOEXEC), 0);
    cr_assert_eq(cmp_fdshare_register(q[1], &a), 0);
    int fd = redeem(&a);
    cr_assert_geq(fd, 0);
    close(fd);
    close(q[0]);
    close(q[1]);
    cmp_fdshare_shutdown();
}

Test(fdshare, child_closes_inherited_dups, .timeout = 10)
{
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    cmp_fd_token_t t;
    cr_assert_eq(cmp_fdshare_register(p[1], &t), 0);
    close(p[1]);
    int go[2];
    cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(go[1]);
        /* the child's own server: a new address, and the parent's
         * registration is unknown to it */
        int q[2];
        cmp_fd_token_t mine;
        if (pipe2(q, O_CLOEXEC) < 0 || cmp_fdshare_register(q[1], &mine) < 0)
            _exit(2);
        if (strcmp(mine.addr, t.addr) == 0)
            _exit(3);
        cmp_fd_token_t theirs_here = t;
        memcpy(theirs_here.addr, mine.addr, sizeof mine.addr);
        if (redeem(&theirs_here) != -ENOENT)
            _exit(4);
        char c;
        (void)!read(go[0], &c, 1); /* stay alive while the parent checks */
        _exit(0);
    }
    /* Once the parent's dup is redeemed and closed, nobody but the
     * redeemer writes: the child must not hold a copy of it. */
    int fd = redeem(&t);
    cr_assert_geq(fd, 0);
    close(fd);
    char c;
    cr_assert_eq(read(p[0], &c, 1), 0, "a copy of the dup survived in the child");
    close(go[1]);
    cr_assert_eq(test_join(pid, 5.0), 0);
    close(go[0]);
    close(p[0]);
    cmp_fdshare_shutdown();
}

/* The sharer's socket is an abstract name, which has no file mode: its
 * SO_PEERCRED check is what keeps another user from taking our fds. The
 * token stays redeemable by us afterwards. Needs root. */
Test(fdshare, other_uid_is_refused, .timeout = 10)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to uid 65534");
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    cmp_fd_token_t t;
    cr_assert_eq(cmp_fdshare_register(p[1], &t), 0);
    pid_t pid = fork();
    if (pid == 0) {
        if (setgroups(0, NULL) != 0 || setresgid(65534, 65534, 65534) != 0 ||
            setresuid(65534, 65534, 65534) != 0)
            _exit(2);
        int fd = redeem(&t);
        _exit(fd == -EACCES ? 0 : fd >= 0 ? 1 : 3);
    }
    cr_assert_eq(test_join(pid, 5), 0);
    int fd = redeem(&t);
    cr_assert_geq(fd, 0, "redeem: %s", cmp_strerror(fd));
    assert_linked(fd, p[0], "mine");
    close(fd);
    close(p[0]);
    close(p[1]);
    cmp_fdshare_shutdown();
}
