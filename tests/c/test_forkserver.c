/* Fork server: a request's child runs with its fds at the requester's
 * numbers, and the requester follows it by pid, pidfd and status. */
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* The payload is "<fd> <byte>": the child writes byte to fd and exits with
 * the byte's value, or with 99 when fd is not there. */
static int run_payload(void *arg, const void *payload, size_t len)
{
    (void)arg;
    char buf[64];
    if (len >= sizeof buf)
        return 98;
    memcpy(buf, payload, len);
    buf[len] = '\0';
    int fd = -1, byte = 0;
    if (sscanf(buf, "%d %d", &fd, &byte) != 2)
        return 97;
    char c = (char)byte;
    if (write(fd, &c, 1) != 1)
        return 99;
    if (byte == 'k')
        pause(); /* until killed */
    return byte;
}

static pid_t start_server(char *addr, int *alive_w)
{
    int lfd, alive[2];
    cr_assert_eq(cmp_forkserver_listen(addr, &lfd), 0);
    cr_assert_eq(pipe2(alive, O_CLOEXEC), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        close(alive[1]);
        cmp_forkserver_ops ops = {NULL, NULL, run_payload, NULL};
        _exit(cmp_forkserver_serve(lfd, alive[0], &ops) == 0 ? 0 : 1);
    }
    close(lfd);
    close(alive[0]);
    *alive_w = alive[1];
    return pid;
}

static void stop_server(pid_t pid, int alive_w)
{
    close(alive_w); /* the server's cue to go */
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

Test(forkserver, child_gets_fds_at_their_numbers, .timeout = 20)
{
    char addr[CMP_FORKSERVER_ADDR_MAX];
    int alive;
    pid_t server = start_server(addr, &alive);
    for (int round = 0; round < 3; round++) {
        int p[2];
        cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
        /* a number the server surely has in use for something else */
        int high = fcntl(p[1], F_DUPFD_CLOEXEC, 3 + round);
        char payload[32];
        int n = snprintf(payload, sizeof payload, "%d %d", high, 'a' + round);
        cmp_process_t child;
        cr_assert_eq(cmp_forkserver_request(addr, payload, (size_t)n, &high, 1, &child), 0);
        close(high);
        close(p[1]);
        cr_assert_eq(cmp_process_join(&child, NULL), 0);
        int code = -1;
        cr_assert_eq(cmp_process_exitcode(&child, &code), 0);
        cr_assert_eq(code, 'a' + round);
        char c = 0;
        cr_assert_eq(read(p[0], &c, 1), 1);
        cr_assert_eq(c, 'a' + round);
        cmp_process_close(&child);
        close(p[0]);
    }
    stop_server(server, alive);
}

Test(forkserver, requester_signals_and_reaps, .timeout = 20)
{
    char addr[CMP_FORKSERVER_ADDR_MAX];
    int alive;
    pid_t server = start_server(addr, &alive);
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    char payload[32];
    int n = snprintf(payload, sizeof payload, "%d %d", p[1], 'k');
    cmp_process_t child;
    cr_assert_eq(cmp_forkserver_request(addr, payload, (size_t)n, &p[1], 1, &child), 0);
    char c;
    cr_assert_eq(read(p[0], &c, 1), 1); /* it runs */
    struct timespec deadline;
    cmp_deadline_after(0.1, &deadline);
    cr_assert_eq(cmp_process_join(&child, &deadline), -ETIMEDOUT);
    cr_assert_eq(cmp_process_poll(&child), 0);
    cr_assert_eq(cmp_process_terminate(&child), 0);
    cr_assert_eq(cmp_process_join(&child, NULL), 0);
    int code = 0;
    cr_assert_eq(cmp_process_exitcode(&child, &code), 0);
    cr_assert_eq(code, -SIGTERM);
    cmp_process_close(&child);
    close(p[0]);
    close(p[1]);
    stop_server(server, alive);
}

Test(forkserver, no_server_is_refused, .timeout = 10)
{
    char addr[CMP_FORKSERVER_ADDR_MAX];
    int lfd;
    cr_assert_eq(cmp_forkserver_listen(addr, &lfd), 0);
    close(lfd);
    cmp_process_t child;
    cr_assert_eq(cmp_forkserver_request(addr, "x", 1, NULL, 0, &child), -ECONNREFUSED);
}
