/* cmp_manager_*: many clients x many requests end exact; a handler that
 * blocks one client while others are served; a forked child gets its own
 * channel; connecting by address (mailbox, socket, TCP with an authkey); a
 * client killed while the server handles its request and while it writes
 * one; a killed server (calls fail promptly); 64 MiB messages both ways;
 * deadlines, resuming and abandoning a call, -EINTR; shutdown while
 * clients wait; stop requested by a client; a server in the caller's
 * process. */
#include "helpers.h"
#include "mailbox.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>

/* Requests: an op byte, then an int64 argument (or bytes, for ECHO). */
enum {
    OP_ECHO = 'e',    /* reply: the bytes after the op */
    OP_ADD = 'a',     /* adds the argument to the counter; reply: the new total */
    OP_BLOCK = 'b',   /* waits (10 s at most, or until stopping) for OP_RELEASE */
    OP_STUCK = 'B',   /* the same, deaf to stopping */
    OP_RELEASE = 'r', /* wakes every OP_BLOCK */
    OP_SLEEP = 's',   /* sleeps the argument in ms */
    OP_ID = 'i',      /* reply: the client id the handler sees */
    OP_LIVE = 'n',    /* reply: clients started and not yet ended */
    OP_BIG = 'L',     /* reply: argument bytes of a pattern */
    OP_SUM = 'u',     /* reply: the sum of the bytes after the op, and their count */
    OP_STOP = 'S',    /* stops the server after the reply */
    OP_BYE = 'd',     /* ends this client's session after the reply */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int64_t total;
static int64_t live;
static unsigned released;
static cmp_manager_t *inproc; /* the server of the in-process test */

static int reply_i64(cmp_manager_reply_t *r, int64_t v)
{
    void *room = cmp_manager_reply_extend(r, sizeof v);
    cr_assert(room);
    memcpy(room, &v, sizeof v);
    return 0;
}

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 131 + (i >> 12));
}

static int handler(void *arg, uint64_t client, const void *req, size_t len,
                   cmp_manager_reply_t *reply)
{
    (void)arg;
    const unsigned char *p = req;
    int64_t v = 0;
    if (len >= 1 + sizeof v)
        memcpy(&v, p + 1, sizeof v);
    switch (len ? p[0] : 0) {
    case OP_ECHO:
        if (len > 1)
            memcpy(cmp_manager_reply_extend(reply, len - 1), p + 1, len - 1);
        return 0;
    case OP_ADD:
        pthread_mutex_lock(&mu);
        total += v;
        v = total;
        pthread_mutex_unlock(&mu);
        return reply_i64(reply, v);
    case OP_BLOCK:
    case OP_STUCK: {
        cmp_manager_t *self = p[0] == OP_BLOCK ? cmp_manager_current() : NULL;
        cr_assert(self || p[0] == OP_STUCK);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 10;
        pthread_mutex_lock(&mu);
        unsigned start = released;
        while (released == start && (!self || !cmp_manager_stopping(self))) {
            struct timespec tick;
            clock_gettime(CLOCK_REALTIME, &tick);
            if (tick.tv_sec > until.tv_sec)
                break;
            tick.tv_nsec += 10000000L;
            if (tick.tv_nsec >= 1000000000L) {
                tick.tv_sec++;
                tick.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&cv, &mu, &tick);
        }
        v = released != start;
        pthread_mutex_unlock(&mu);
        return reply_i64(reply, v);
    }
    case OP_RELEASE:
        pthread_mutex_lock(&mu);
        released++;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
        return reply_i64(reply, 0);
    case OP_SLEEP: {
        struct timespec ts = {v / 1000, (v % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        return reply_i64(reply, v);
    }
    case OP_ID:
        return reply_i64(reply, (int64_t)client);
    case OP_LIVE:
        pthread_mutex_lock(&mu);
        v = live;
        pthread_mutex_unlock(&mu);
        return reply_i64(reply, v);
    case OP_BIG: {
        unsigned char *out = cmp_manager_reply_extend(reply, (size_t)v);
        cr_assert(out);
        for (size_t i = 0; i < (size_t)v; i++)
            out[i] = pattern(i);
        return 0;
    }
    case OP_SUM: {
        uint64_t sum = 0;
        for (size_t i = 1; i < len; i++)
            sum += p[i];
        reply_i64(reply, (int64_t)sum);
        return reply_i64(reply, (int64_t)len - 1);
    }
    case OP_STOP:
        reply_i64(reply, 0);
        return CMP_MANAGER_STOP;
    case OP_BYE:
        reply_i64(reply, 0);
        return CMP_MANAGER_DISCONNECT;
    }
    return reply_i64(reply, -1);
}

static void on_client(void *arg, uint64_t client, int event)
{
    (void)arg;
    (void)client;
    pthread_mutex_lock(&mu);
    live += event == CMP_MANAGER_CLIENT_START ? 1 : -1;
    pthread_mutex_unlock(&mu);
}

static const cmp_manager_options_t options = {.handler = handler, .on_client = on_client};

static void start(cmp_manager_process_t *p)
{
    int rc = cmp_manager_start(p, &options, 0);
    cr_assert_eq(rc, 0, "start: %s", cmp_strerror(rc));
}

static void finish(cmp_manager_process_t *p)
{
    struct timespec dl = test_deadline(5);
    int rc = cmp_manager_shutdown(p, &dl);
    cr_assert_eq(rc, 0, "shutdown: %s", cmp_strerror(rc));
    cmp_manager_close(p);
}

static cmp_manager_client_t *connect_to(const struct sockaddr_storage *addr, socklen_t len,
                                        unsigned flags)
{
    struct timespec dl = test_deadline(5);
    cmp_manager_client_t *c;
    int rc = cmp_manager_connect(&c, (const struct sockaddr *)addr, len, NULL, 0, flags, &dl);
    cr_assert_eq(rc, 0, "connect: %s", cmp_strerror(rc));
    return c;
}

static cmp_manager_client_t *client_of(cmp_manager_process_t *p)
{
    return connect_to(&p->addr, p->addrlen, 0);
}

/* One call with an op and an int64; returns the call's result, the reply's
 * first int64 in *out (if any). */
static int call_op(cmp_manager_client_t *c, int op, int64_t arg, int64_t *out, double seconds)
{
    unsigned char req[1 + sizeof arg];
    req[0] = (unsigned char)op;
    memcpy(req + 1, &arg, sizeof arg);
    struct timespec dl = test_deadline(seconds);
    const void *reply;
    size_t len;
    int rc = cmp_manager_call(c, req, sizeof req, &reply, &len, &dl);
    if (rc == 0 && out) {
        cr_assert_geq(len, sizeof *out);
        memcpy(out, reply, sizeof *out);
    }
    return rc;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

static int64_t must(cmp_manager_client_t *c, int op, int64_t arg)
{
    int64_t v = 0;
    int rc = call_op(c, op, arg, &v, 10);
    cr_assert_eq(rc, 0, "call %c: %s", op, cmp_strerror(rc));
    return v;
}

/* Waits until the server counts n live clients (they end asynchronously). */
static void expect_live(cmp_manager_client_t *c, int64_t n)
{
    struct timespec dl = test_deadline(5);
    int64_t v;
    while ((v = must(c, OP_LIVE, 0)) != n && cmp_deadline_remaining(&dl) > 0)
        usleep(2000);
    cr_assert_eq(v, n, "live clients %lld, expected %lld", (long long)v, (long long)n);
}

Test(manager, many_clients_many_requests_exact, .timeout = 60)
{
    cmp_manager_process_t p;
    start(&p);
    enum { CHILDREN = 4, CALLS = 2000 };
    pid_t pids[CHILDREN];
    for (int k = 0; k < CHILDREN; k++) {
        pids[k] = test_fork();
        if (pids[k] == 0) {
            /* odd children on the socket: both transports at once */
            cmp_manager_client_t *c =
                connect_to(&p.addr, p.addrlen, k & 1 ? CMP_MANAGER_SOCKET : 0);
            if (cmp_manager_client_is_mailbox(c) != !(k & 1))
                _exit(3);
            for (int i = 0; i < CALLS; i++) {
                char msg[32];
                int n = snprintf(msg, sizeof msg, "e%d:%d", k, i);
                const void *reply;
                size_t len;
                struct timespec dl = test_deadline(10);
                if (cmp_manager_call(c, msg, (size_t)n, &reply, &len, &dl) != 0 ||
                    len != (size_t)n - 1 || memcmp(reply, msg + 1, len) != 0)
                    _exit(1);
                int64_t v;
                if (call_op(c, OP_ADD, 1, &v, 10) != 0 || v < 1)
                    _exit(2);
            }
            cmp_manager_disconnect(c);
            _exit(0);
        }
    }
    for (int k = 0; k < CHILDREN; k++)
        cr_assert_eq(test_join(pids[k], 50), 0, "child %d", k);
    cmp_manager_client_t *c = client_of(&p);
    cr_assert_eq(must(c, OP_ADD, 0), CHILDREN * CALLS);
    expect_live(c, 1);
    cmp_manager_disconnect(c);
    finish(&p);
}

Test(manager, blocked_handler_delays_only_its_client, .timeout = 30)
{
    cmp_manager_process_t p;
    start(&p);
    pid_t pid = test_fork();
    if (pid == 0) {
        cmp_manager_client_t *c = client_of(&p);
        int64_t woke = 0;
        _exit(call_op(c, OP_BLOCK, 0, &woke, 20) == 0 && woke == 1 ? 0 : 1);
    }
    cmp_manager_client_t *c = client_of(&p);
    expect_live(c, 2);
    usleep(50000); /* the other client is inside its handler */
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 200; i++)
        cr_assert_eq(must(c, OP_ADD, 1), i + 1);
    double took = seconds_since(&t0);
    cr_assert_lt(took, 2.0, "200 calls took %.3f s beside a blocked client", took);
    must(c, OP_RELEASE, 0);
    cr_assert_eq(test_join(pid, 10), 0);
    cmp_manager_disconnect(c);
    finish(&p);
}

Test(manager, forked_child_gets_its_own_channel, .timeout = 30)
{
    cmp_manager_process_t p;
    start(&p);
    cmp_manager_client_t *c = client_of(&p);
    int64_t mine = must(c, OP_ID, 0);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = test_fork();
    if (pid == 0) {
        close(fds[0]);
        /* the same handle: the first call in the child connects again */
        int64_t id = 0;
        if (call_op(c, OP_ID, 0, &id, 10) != 0)
            _exit(1);
        int ok = cmp_manager_client_is_mailbox(c) && id != mine && id > 0;
        /* many calls of both processes at once on their own channels */
        for (int i = 0; i < 500 && ok; i++) {
            int64_t again = 0;
            ok = call_op(c, OP_ID, 0, &again, 10) == 0 && again == id;
        }
        ssize_t w = write(fds[1], &id, sizeof id);
        (void)w;
        cmp_manager_disconnect(c);
        _exit(ok ? 0 : 2);
    }
    close(fds[1]);
    for (int i = 0; i < 500; i++)
        cr_assert_eq(must(c, OP_ID, 0), mine);
    int64_t child_id = 0;
    cr_assert_eq(read(fds[0], &child_id, sizeof child_id), (ssize_t)sizeof child_id);
    cr_assert_eq(test_join(pid, 10), 0);
    cr_assert_neq(child_id, mine);
    /* the child's disconnect closed its channel, not ours */
    cr_assert_eq(must(c, OP_ID, 0), mine);
    expect_live(c, 1);
    close(fds[0]);
    cmp_manager_disconnect(c);
    finish(&p);
}

static void echo_check(cmp_manager_client_t *c, const char *text)
{
    char msg[64];
    int n = snprintf(msg, sizeof msg, "e%s", text);
    const void *reply;
    size_t len;
    struct timespec dl = test_deadline(5);
    cr_assert_eq(cmp_manager_call(c, msg, (size_t)n, &reply, &len, &dl), 0);
    cr_assert_eq(len, strlen(text));
    cr_assert(memcmp(reply, text, len) == 0);
}

Test(manager, connect_by_address_unix_and_tcp_with_authkey, .timeout = 30)
{
    /* default address: a socket in the private directory, mode 0700 */
    cmp_manager_process_t p;
    start(&p);
    cr_assert_eq(p.addr.ss_family, AF_UNIX);
    cmp_manager_client_t *a = client_of(&p);
    cmp_manager_client_t *b = connect_to(&p.addr, p.addrlen, CMP_MANAGER_SOCKET);
    cr_assert(cmp_manager_client_is_mailbox(a));
    cr_assert(!cmp_manager_client_is_mailbox(b));
    echo_check(a, "over the mailbox");
    echo_check(b, "over the socket");
    cmp_manager_disconnect(a);
    cmp_manager_disconnect(b);
    finish(&p);

    /* TCP on a port the kernel picks, with the stdlib's handshake */
    struct sockaddr_storage ss;
    socklen_t sl;
    cr_assert_eq(cmp_sockaddr_inet(&ss, &sl, "127.0.0.1", 0), 0);
    static const char key[] = "secret";
    cmp_manager_options_t opt = options;
    opt.addr = (struct sockaddr *)&ss;
    opt.addrlen = sl;
    opt.authkey = key;
    opt.authkey_len = sizeof key - 1;
    cr_assert_eq(cmp_manager_start(&p, &opt, 0), 0);
    cr_assert_eq(p.addr.ss_family, AF_INET);
    struct timespec dl = test_deadline(5);
    cmp_manager_client_t *t;
    int rc =
        cmp_manager_connect(&t, (struct sockaddr *)&p.addr, p.addrlen, key, sizeof key - 1, 0, &dl);
    cr_assert_eq(rc, 0, "tcp connect: %s", cmp_strerror(rc));
    cr_assert(!cmp_manager_client_is_mailbox(t));
    echo_check(t, "over tcp");
    cmp_manager_disconnect(t);
    dl = test_deadline(5);
    rc = cmp_manager_connect(&t, (struct sockaddr *)&p.addr, p.addrlen, "wrong", 5, 0, &dl);
    cr_assert_eq(rc, -EACCES, "wrong key: %s", cmp_strerror(rc));
    finish(&p);
}

/* As user nobody, connects to addr with flags (and key, if any): the
 * call's result, or the connect's error. */
static int call_as_nobody(const struct sockaddr_storage *addr, socklen_t len, const char *key,
                          unsigned flags)
{
    pid_t pid = test_fork();
    if (pid == 0) {
        if (setgid(65534) != 0 || setuid(65534) != 0)
            _exit(100);
        struct timespec dl = test_deadline(5);
        cmp_manager_client_t *c;
        int rc = cmp_manager_connect(&c, (const struct sockaddr *)addr, len, key,
                                     key ? strlen(key) : 0, flags, &dl);
        if (rc == 0)
            rc = call_op(c, OP_ADD, 0, NULL, 5);
        _exit(rc == 0 ? 0 : rc == -EACCES ? 1 : rc == -ECONNRESET ? 2 : 3);
    }
    return test_join(pid, 10);
}

Test(manager, another_user_needs_the_key_and_never_gets_a_mailbox, .timeout = 30)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to become another user");
    char dir[] = "/tmp/cmp-manager-test-XXXXXX";
    cr_assert(mkdtemp(dir));
    chmod(dir, 0777); /* a socket path anyone may reach: the server checks */
    char path[64];
    snprintf(path, sizeof path, "%s/sock", dir);
    struct sockaddr_storage ss;
    socklen_t sl;
    cr_assert_eq(cmp_sockaddr_unix(&ss, &sl, path, strlen(path)), 0);
    for (int keyed = 0; keyed < 2; keyed++) {
        cmp_manager_options_t opt = options;
        opt.addr = (struct sockaddr *)&ss;
        opt.addrlen = sl;
        if (keyed) {
            opt.authkey = "k";
            opt.authkey_len = 1;
        }
        cmp_manager_process_t p;
        cr_assert_eq(cmp_manager_start(&p, &opt, 0), 0);
        chmod(path, 0777);
        if (!keyed) {
            /* no key, another uid: the connection is dropped */
            cr_assert_eq(call_as_nobody(&p.addr, p.addrlen, NULL, CMP_MANAGER_SOCKET), 2);
            cr_assert_eq(call_as_nobody(&p.addr, p.addrlen, NULL, 0), 2);
        } else {
            /* with the key, on the socket; a mailbox is refused */
            cr_assert_eq(call_as_nobody(&p.addr, p.addrlen, "k", CMP_MANAGER_SOCKET), 0);
            cr_assert_eq(call_as_nobody(&p.addr, p.addrlen, "k", 0), 1);
        }
        struct timespec dl = test_deadline(5);
        cmp_manager_client_t *c;
        cr_assert_eq(cmp_manager_connect(&c, (struct sockaddr *)&p.addr, p.addrlen, opt.authkey,
                                         opt.authkey_len, 0, &dl),
                     0);
        cr_assert(cmp_manager_client_is_mailbox(c));
        cr_assert_eq(must(c, OP_ADD, 0), 0);
        cmp_manager_disconnect(c);
        finish(&p);
    }
    rmdir(dir);
}

/* Runs a Python snippet with the stdlib and returns its first line of
 * output in out. */
static void python(const char *code, char *out, size_t size)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "timeout 20 /usr/bin/python3 -c \"%s\"", code);
    FILE *f = popen(cmd, "r");
    cr_assert(f);
    out[0] = '\0';
    if (!fgets(out, (int)size, f))
        out[0] = '\0';
    out[strcspn(out, "\n")] = '\0';
    pclose(f);
}

Test(manager, stdlib_client_speaks_to_the_handler_over_tcp, .timeout = 30)
{
    /* the stdlib's framing and authkey handshake, unchanged, reach the
     * handler: the base the Python layer's remote managers build on */
    struct sockaddr_storage ss;
    socklen_t sl;
    cr_assert_eq(cmp_sockaddr_inet(&ss, &sl, "127.0.0.1", 0), 0);
    cmp_manager_options_t opt = options;
    opt.addr = (struct sockaddr *)&ss;
    opt.addrlen = sl;
    opt.authkey = "key";
    opt.authkey_len = 3;
    cmp_manager_process_t p;
    cr_assert_eq(cmp_manager_start(&p, &opt, 0), 0);
    int port = ntohs(((struct sockaddr_in *)&p.addr)->sin_port);
    char code[1024], out[256];
    snprintf(code, sizeof code,
             "from multiprocessing.connection import Client\n"
             "c = Client(('127.0.0.1', %d), authkey=b'key')\n"
             "c.send_bytes(b'ehello from the stdlib')\n"
             "print(c.recv_bytes().decode())",
             port);
    python(code, out, sizeof out);
    cr_assert_str_eq(out, "hello from the stdlib");
    finish(&p);
}

Test(manager, client_of_a_stdlib_listener, .timeout = 30)
{
    /* an echoing stdlib Listener: our socket client works, and a mailbox
     * request gets -EPROTO at once (its answer is not ours) */
    char path[] = "/tmp/cmp-manager-stdlib-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    unlink(path);
    pid_t pid = test_fork();
    if (pid == 0) {
        char code[1024];
        snprintf(code, sizeof code,
                 "from multiprocessing.connection import Listener\n"
                 "import sys\n"
                 "l = Listener('%s', authkey=b'k')\n"
                 "for i in range(2):\n"
                 "    c = l.accept()\n"
                 "    try:\n"
                 "        c.send_bytes(c.recv_bytes())\n"
                 "    except EOFError:\n"
                 "        pass\n",
                 path);
        execl("/usr/bin/python3", "python3", "-c", code, (char *)NULL);
        _exit(127);
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    cr_assert_eq(cmp_sockaddr_unix(&ss, &sl, path, strlen(path)), 0);
    cmp_manager_client_t *c = NULL;
    struct timespec dl = test_deadline(10);
    int rc;
    while ((rc = cmp_manager_connect(&c, (struct sockaddr *)&ss, sl, "k", 1, CMP_MANAGER_SOCKET,
                                     &dl)) == -ENOENT ||
           rc == -ECONNREFUSED)
        usleep(10000); /* until the interpreter listens */
    cr_assert_eq(rc, 0, "%s", cmp_strerror(rc));
    const void *reply;
    size_t len;
    dl = test_deadline(10);
    cr_assert_eq(cmp_manager_call(c, "to the stdlib", 13, &reply, &len, &dl), 0);
    cr_assert_eq(len, 13);
    cr_assert(memcmp(reply, "to the stdlib", 13) == 0);
    cmp_manager_disconnect(c);
    dl = test_deadline(10);
    rc = cmp_manager_connect(&c, (struct sockaddr *)&ss, sl, "k", 1, 0, &dl);
    cr_assert_eq(rc, -EPROTO, "%s", cmp_strerror(rc));
    cr_assert_eq(test_join(pid, 10), 0);
}

Test(manager, killed_client_leaves_the_others_served, .timeout = 30)
{
    cmp_manager_process_t p;
    start(&p);
    cmp_manager_client_t *c = client_of(&p);
    for (int transport = 0; transport < 2; transport++) {
        unsigned flags = transport ? CMP_MANAGER_SOCKET : 0;
        /* killed while the server handles its request */
        pid_t pid = test_fork();
        if (pid == 0) {
            cmp_manager_client_t *k = connect_to(&p.addr, p.addrlen, flags);
            call_op(k, OP_SLEEP, 300, NULL, 10);
            _exit(0);
        }
        expect_live(c, 2);
        usleep(50000);
        kill(pid, SIGKILL);
        test_join(pid, 5);
        cr_assert_eq(must(c, OP_ADD, 1), 2 * transport + 1);
        expect_live(c, 1); /* its thread ended once the handler returned */

        /* killed while it writes a 64 MiB request */
        pid = test_fork();
        if (pid == 0) {
            cmp_manager_client_t *k = connect_to(&p.addr, p.addrlen, flags);
            size_t n = (size_t)64 << 20;
            unsigned char *big = malloc(n);
            memset(big, 'x', n);
            big[0] = OP_SUM;
            for (;;) {
                const void *reply;
                size_t len;
                cmp_manager_call(k, big, n, &reply, &len, NULL);
            }
        }
        expect_live(c, 2);
        usleep(20000);
        kill(pid, SIGKILL);
        test_join(pid, 5);
        cr_assert_eq(must(c, OP_ADD, 1), 2 * transport + 2);
        expect_live(c, 1);
    }
    cmp_manager_disconnect(c);
    finish(&p);
}

/* The mailbox this process maps (found by its memfd's name). */
static struct cmp__mbox *my_mailbox(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    cr_assert(f);
    char line[512];
    void *at = NULL;
    while (!at && fgets(line, sizeof line, f)) {
        unsigned long lo;
        if (strstr(line, "memfd:cmp-manager-mailbox") && sscanf(line, "%lx-", &lo) == 1)
            at = (void *)lo;
    }
    fclose(f);
    return at;
}

Test(manager, a_client_that_corrupts_its_mailbox_is_dropped_alone, .timeout = 30)
{
    cmp_manager_process_t p;
    start(&p);
    cmp_manager_client_t *c = client_of(&p);
    pid_t pid = test_fork();
    if (pid == 0) {
        cmp_manager_client_t *k = client_of(&p);
        if (must(k, OP_ADD, 1) != 1)
            _exit(1);
        struct cmp__mbox *mb = my_mailbox();
        if (!mb)
            _exit(2);
        /* a request whose chunk claims more bytes than the data area */
        mb->msg_len = 10;
        mb->chunk_off = 0;
        mb->chunk_len = (uint64_t)1 << 40;
        __atomic_fetch_add(&mb->side[CMP__MBOX_CLIENT].seq, 2u, __ATOMIC_RELEASE);
        syscall(SYS_futex, &mb->side[CMP__MBOX_CLIENT].seq, FUTEX_WAKE, 1, NULL, NULL, 0);
        /* the server refuses it and closes the mailbox */
        struct timespec dl = test_deadline(5);
        while (!cmp__mbox_is_closed(mb) && cmp_deadline_remaining(&dl) > 0)
            usleep(1000);
        _exit(cmp__mbox_is_closed(mb) ? 0 : 3);
    }
    cr_assert_eq(test_join(pid, 10), 0);
    expect_live(c, 1);
    cr_assert_eq(must(c, OP_ADD, 1), 2);
    cmp_manager_disconnect(c);
    finish(&p);
}

Test(manager, killed_server_fails_calls_promptly, .timeout = 30)
{
    for (int transport = 0; transport < 2; transport++) {
        unsigned flags = transport ? CMP_MANAGER_SOCKET : 0;
        cmp_manager_process_t p;
        start(&p);
        cmp_manager_client_t *c = connect_to(&p.addr, p.addrlen, flags);
        cmp_manager_client_t *idle = connect_to(&p.addr, p.addrlen, flags);
        cr_assert_eq(must(c, OP_ADD, 1), 1);
        /* a client blocked in a call when the server dies */
        pid_t pid = test_fork();
        if (pid == 0) {
            cmp_manager_client_t *k = connect_to(&p.addr, p.addrlen, flags);
            struct timespec soon = test_deadline(20);
            int rc = call_op(k, OP_BLOCK, 0, NULL, 20);
            _exit(rc == -ECONNRESET ? (cmp_deadline_remaining(&soon) > 19 ? 0 : 2) : 1);
        }
        expect_live(c, 3);
        usleep(50000);
        cmp_process_kill(&p.proc);
        cmp_process_join(&p.proc, NULL);
        struct timespec dead;
        clock_gettime(CLOCK_MONOTONIC, &dead);
        int st = test_join(pid, 10);
        cr_assert_eq(st, 0, "the blocked client (transport %d): %d", transport, st);
        /* noticed at once, not at a check period: the kernel marked the
         * mailbox's liveness word as the server died (a socket sees EOF) */
        double late = seconds_since(&dead);
        cr_assert_lt(late, 0.2, "the blocked client left %.3f s after the server died", late);
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int rc = call_op(idle, OP_ADD, 1, NULL, 10);
        double took = seconds_since(&t0);
        cr_assert_eq(rc, -ECONNRESET, "after the server died: %s", cmp_strerror(rc));
        cr_assert_lt(took, 0.5, "%.3f s to notice", took);
        /* and at once ever after */
        cr_assert_eq(call_op(idle, OP_ADD, 1, NULL, 10), -ECONNRESET);
        cr_assert_eq(call_op(c, OP_ADD, 1, NULL, 10), -ECONNRESET);
        cmp_manager_disconnect(c);
        cmp_manager_disconnect(idle);
        cmp_manager_close(&p);
    }
}

/* Times the calling thread has been put on a CPU (schedstat's third
 * field). */
static long runs_of_this_thread(void)
{
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    cr_assert(f);
    unsigned long long run, wait, count;
    cr_assert_eq(fscanf(f, "%llu %llu %llu", &run, &wait, &count), 3);
    fclose(f);
    return (long)count;
}

Test(manager, a_blocked_call_costs_no_wakeups, .timeout = 30)
{
    cmp_manager_process_t p;
    start(&p);
    cmp_manager_client_t *c = client_of(&p);
    must(c, OP_ADD, 0);
    long before = runs_of_this_thread();
    cr_assert_eq(must(c, OP_SLEEP, 1000), 1000);
    long woke = runs_of_this_thread() - before;
    /* no periodic check while the server lives: a few runs, not ten a
     * second */
    cr_assert_leq(woke, 5, "%ld wake-ups in a 1 s call", woke);
    cmp_manager_disconnect(c);
    finish(&p);
}

/* /proc/PID/task, the threads of process pid. */
static DIR *open_tasks(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    cr_assert(d);
    return d;
}

/* Times any thread of process pid has been put on a CPU, summed. */
static long runs_of_process(pid_t pid)
{
    DIR *d = open_tasks(pid);
    long total = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char f[64 + sizeof e->d_name];
        snprintf(f, sizeof f, "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
        FILE *fp = fopen(f, "r");
        unsigned long long run, wait, count;
        if (fp && fscanf(fp, "%llu %llu %llu", &run, &wait, &count) == 3)
            total += (long)count;
        if (fp)
            fclose(fp);
    }
    closedir(d);
    return total;
}

Test(manager, an_idle_server_sleeps, .timeout = 30)
{
    cmp_manager_process_t p;
    start(&p);
    cmp_manager_client_t *c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = connect_to(&p.addr, p.addrlen, i == 2 ? CMP_MANAGER_SOCKET : 0);
        must(c[i], OP_ADD, 1);
    }
    usleep(100000); /* spins and the clients' first hand-offs are over */
    long before = runs_of_process(p.proc.pid);
    usleep(1000000);
    long ran = runs_of_process(p.proc.pid) - before;
    /* serving, watch and three client threads: asleep, no polling */
    cr_assert_leq(ran, 3, "the idle server's threads ran %ld times in 1 s", ran);
    for (int i = 0; i < 3; i++)
        cmp_manager_disconnect(c[i]);
    finish(&p);
}

static void big_round_trip(cmp_manager_client_t *c)
{
    size_t n = (size_t)64 << 20;
    unsigned char *big = malloc(n + 1);
    cr_assert(big);
    big[0] = OP_SUM;
    uint64_t sum = 0;
    for (size_t i = 1; i <= n; i++) {
        big[i] = pattern(i);
        sum += big[i];
    }
    const void *reply;
    size_t len;
    struct timespec dl = test_deadline(30);
    int rc = cmp_manager_call(c, big, n + 1, &reply, &len, &dl);
    cr_assert_eq(rc, 0, "64 MiB request: %s", cmp_strerror(rc));
    int64_t got[2];
    cr_assert_eq(len, sizeof got);
    memcpy(got, reply, sizeof got);
    cr_assert_eq((uint64_t)got[0], sum);
    cr_assert_eq((size_t)got[1], n);
    free(big);

    unsigned char req[9] = {OP_BIG};
    int64_t want = (int64_t)n;
    memcpy(req + 1, &want, sizeof want);
    dl = test_deadline(30);
    rc = cmp_manager_call(c, req, sizeof req, &reply, &len, &dl);
    cr_assert_eq(rc, 0, "64 MiB reply: %s", cmp_strerror(rc));
    cr_assert_eq(len, n);
    const unsigned char *r = reply;
    for (size_t i = 0; i < n; i += 4093)
        cr_assert_eq(r[i], pattern(i), "byte %zu", i);
    cr_assert_eq(r[n - 1], pattern(n - 1));
    /* a small call after the big ones */
    echo_check(c, "small again");
}

Test(manager, messages_of_64_mib, .timeout = 60)
{
    cmp_manager_process_t p;
    start(&p);
    cmp_manager_client_t *m = client_of(&p);
    cmp_manager_client_t *s = connect_to(&p.addr, p.addrlen, CMP_MANAGER_SOCKET);
    big_round_trip(m);
    big_round_trip(s);
    /* a first reply that is empty (the handler's buffer not yet made) */
    cmp_manager_client_t *fresh = client_of(&p);
    const void *r0;
    size_t l0 = 1;
    struct timespec d0 = test_deadline(5);
    cr_assert_eq(cmp_manager_call(fresh, "e", 1, &r0, &l0, &d0), 0);
    cr_assert_eq(l0, 0);
    cmp_manager_disconnect(fresh);
    /* empty request, empty reply */
    const void *reply;
    size_t len = 1;
    struct timespec dl = test_deadline(5);
    cr_assert_eq(cmp_manager_call(m, "e", 1, &reply, &len, &dl), 0);
    cr_assert_eq(len, 0);
    cmp_manager_disconnect(m);
    cmp_manager_disconnect(s);
    finish(&p);
}

static void on_alarm(int sig)
{
    (void)sig;
}

Test(manager, deadlines_resume_abandon_and_eintr, .timeout = 30)
{
    cmp_manager_process_t p;
    start(&p);
    for (int transport = 0; transport < 2; transport++) {
        cmp_manager_client_t *c =
            connect_to(&p.addr, p.addrlen, transport ? CMP_MANAGER_SOCKET : 0);
        int64_t before = must(c, OP_ADD, 0);
        int64_t v = 0;
        cr_assert_eq(call_op(c, OP_SLEEP, 200, &v, 0.05), -ETIMEDOUT);
        const void *reply;
        size_t len;
        struct timespec dl = test_deadline(0.01);
        cr_assert_eq(cmp_manager_call_resume(c, &reply, &len, &dl), -ETIMEDOUT);
        dl = test_deadline(5);
        cr_assert_eq(cmp_manager_call_resume(c, &reply, &len, &dl), 0);
        memcpy(&v, reply, sizeof v);
        cr_assert_eq(v, 200);
        cr_assert_eq(cmp_manager_call_resume(c, &reply, &len, &dl), -EINVAL);
        /* abandoned: the next call gets its own reply, not the late one */
        cr_assert_eq(call_op(c, OP_SLEEP, 200, &v, 0.05), -ETIMEDOUT);
        cr_assert_eq(must(c, OP_ADD, 7), before + 7);

        /* a signal: -EINTR, then the same call's reply */
        struct sigaction sa = {.sa_handler = on_alarm}; /* no SA_RESTART */
        sigaction(SIGALRM, &sa, NULL);
        struct itimerval it = {{0, 0}, {0, 50000}};
        setitimer(ITIMER_REAL, &it, NULL);
        cr_assert_eq(call_op(c, OP_SLEEP, 200, &v, 5), -EINTR);
        dl = test_deadline(5);
        cr_assert_eq(cmp_manager_call_resume(c, &reply, &len, &dl), 0);
        memcpy(&v, reply, sizeof v);
        cr_assert_eq(v, 200);
        cmp_manager_disconnect(c);
    }
    finish(&p);
}

/* Clients blocked in handlers, one of them on the socket, while the
 * starter shuts the server down: handlers that heed cmp_manager_stopping
 * let it exit; stuck ones get it killed at the deadline. Either way every
 * waiting client returns at once. */
static void shutdown_while_clients_wait(int stuck)
{
    cmp_manager_process_t p;
    start(&p);
    enum { N = 3 };
    pid_t pids[N];
    for (int k = 0; k < N; k++) {
        pids[k] = test_fork();
        if (pids[k] == 0) {
            cmp_manager_client_t *c =
                connect_to(&p.addr, p.addrlen, k == 2 ? CMP_MANAGER_SOCKET : 0);
            int rc = call_op(c, stuck ? OP_STUCK : OP_BLOCK, 0, NULL, 20);
            /* the mailbox says the server closed it; a socket cannot tell.
             * A handler that heeds stopping may reply first (0). */
            _exit(rc == (k == 2 ? -ECONNRESET : -ESHUTDOWN) || (!stuck && rc == 0) ? 0 : 1);
        }
    }
    cmp_manager_client_t *c = client_of(&p);
    expect_live(c, N + 1);
    usleep(50000);
    struct timespec t0, dl = test_deadline(stuck ? 0.3 : 3);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cr_assert_eq(cmp_manager_shutdown(&p, &dl), stuck ? -ETIMEDOUT : 0);
    double took = seconds_since(&t0);
    cr_assert_lt(took, stuck ? 1.5 : 2.5, "shutdown took %.3f s", took);
    for (int k = 0; k < N; k++)
        cr_assert_eq(test_join(pids[k], 5), 0, "waiting client %d", k);
    cr_assert_eq(call_op(c, OP_ADD, 0, NULL, 5), -ESHUTDOWN);
    if (!stuck) { /* it exited by itself */
        int code = -1;
        cr_assert_eq(cmp_process_exitcode(&p.proc, &code), 0);
        cr_assert_eq(code, 0);
    }
    cmp_manager_disconnect(c);
    cmp_manager_close(&p);
}

Test(manager, shutdown_while_clients_wait, .timeout = 30)
{
    shutdown_while_clients_wait(0);
}

Test(manager, shutdown_kills_a_server_whose_handlers_are_stuck, .timeout = 30)
{
    shutdown_while_clients_wait(1);
}

Test(manager, stop_requested_by_a_client, .timeout = 30)
{
    cmp_manager_process_t p;
    start(&p);
    cmp_manager_client_t *c = client_of(&p);
    cmp_manager_client_t *other = client_of(&p);
    cr_assert_eq(must(c, OP_BYE, 0), 0); /* the handler ended this session */
    cr_assert_eq(call_op(c, OP_ADD, 0, NULL, 5), -ESHUTDOWN);
    cr_assert_eq(must(other, OP_STOP, 0), 0);
    struct timespec dl = test_deadline(5);
    cr_assert_eq(cmp_manager_join(&p, &dl), 0);
    int code = -1;
    cr_assert_eq(cmp_process_exitcode(&p.proc, &code), 0);
    cr_assert_eq(code, 0);
    /* the server closed every mailbox as it stopped */
    cr_assert_eq(call_op(other, OP_ADD, 0, NULL, 5), -ESHUTDOWN);
    cmp_manager_disconnect(c);
    cmp_manager_disconnect(other);
    cmp_manager_close(&p);
}

struct worker {
    struct sockaddr_storage addr;
    socklen_t len;
    int ok;
};

static void *thread_client(void *arg)
{
    struct worker *w = arg;
    struct timespec dl = test_deadline(5);
    cmp_manager_client_t *c;
    if (cmp_manager_connect(&c, (struct sockaddr *)&w->addr, w->len, NULL, 0, 0, &dl) != 0)
        return NULL;
    int ok = 1;
    for (int i = 0; i < 1000 && ok; i++) {
        int64_t v;
        ok = call_op(c, OP_ADD, 1, &v, 10) == 0;
    }
    /* the last one blocks until the server stops */
    int rc = call_op(c, OP_BLOCK, 0, NULL, 10);
    w->ok = ok && (rc == 0 || rc == -ESHUTDOWN);
    cmp_manager_disconnect(c);
    return NULL;
}

static void *serve_thread(void *arg)
{
    return (void *)(intptr_t)cmp_manager_serve(arg);
}

Test(manager, serve_in_the_callers_process, .timeout = 30)
{
    cr_assert_eq(cmp_manager_create(&inproc, &options), 0);
    pthread_t server;
    cr_assert_eq(pthread_create(&server, NULL, serve_thread, inproc), 0);
    enum { N = 4 };
    struct worker w[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        w[i].len = cmp_manager_address(inproc, &w[i].addr);
        w[i].ok = 0;
        cr_assert_eq(pthread_create(&t[i], NULL, thread_client, &w[i]), 0);
    }
    /* wait for the 4000 adds, then stop with clients blocked in handlers */
    struct timespec dl = test_deadline(20);
    for (;;) {
        pthread_mutex_lock(&mu);
        int64_t n = total, l = live;
        pthread_mutex_unlock(&mu);
        if (n == N * 1000 && l == N)
            break;
        cr_assert(cmp_deadline_remaining(&dl) > 0, "total %lld", (long long)n);
        usleep(2000);
    }
    usleep(50000);
    cmp_manager_stop(inproc);
    void *rc;
    pthread_join(server, &rc);
    cr_assert_eq((intptr_t)rc, 0);
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        cr_assert(w[i].ok, "client thread %d", i);
    }
    cr_assert_eq(live, 0);
    cmp_manager_destroy(inproc);
    inproc = NULL;
}

static int refuse(void *arg)
{
    (void)arg;
    return 1;
}

Test(manager, bad_arguments, .timeout = 10)
{
    cmp_manager_t *m;
    cmp_manager_options_t none = {0};
    cr_assert_eq(cmp_manager_create(&m, &none), -EINVAL);
    cmp_manager_process_t p;
    cr_assert_eq(cmp_manager_start(&p, &options, 0x80), -EINVAL);
    cmp_manager_options_t failing = options;
    failing.init = refuse;
    cr_assert_eq(cmp_manager_start(&p, &failing, 0), -ECANCELED);
    struct sockaddr_storage ss;
    socklen_t sl;
    cr_assert_eq(cmp_sockaddr_unix(&ss, &sl, "/nonexistent-dir/x", 18), 0);
    struct timespec dl = test_deadline(1);
    cmp_manager_client_t *c;
    int rc = cmp_manager_connect(&c, (struct sockaddr *)&ss, sl, NULL, 0, 0, &dl);
    cr_assert(rc == -ENOENT || rc == -ECONNREFUSED, "%s", cmp_strerror(rc));
    cr_assert_eq(cmp_manager_connect(&c, (struct sockaddr *)&ss, sl, NULL, 0, 0x80, &dl), -EINVAL);
}

static int threads_of(pid_t pid)
{
    DIR *d = open_tasks(pid);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* The thread that watches the mailboxes starts with the first of them: a
 * server with no client, or with socket clients only, has none (a new
 * thread can wait a whole time slice for a CPU on a busy machine, and
 * Manager() start + shutdown would wait with it). */
Test(manager, the_watch_starts_with_the_first_mailbox, .timeout = 30)
{
    cmp_manager_process_t p;
    start(&p);
    int alone = threads_of(p.proc.pid);
    cr_assert_eq(alone, 1, "a server without clients runs one thread (%d)", alone);
    cmp_manager_client_t *s = connect_to(&p.addr, p.addrlen, CMP_MANAGER_SOCKET);
    cr_assert_eq(must(s, OP_ADD, 1), 1);
    cr_assert_eq(threads_of(p.proc.pid), 2, "the socket client's thread, no watch");
    cmp_manager_client_t *m = client_of(&p);
    cr_assert_eq(must(m, OP_ADD, 1), 2);
    cr_assert_eq(threads_of(p.proc.pid), 4, "the mailbox client's thread and the watch");
    cmp_manager_disconnect(s);
    cmp_manager_disconnect(m);
    finish(&p);
}
