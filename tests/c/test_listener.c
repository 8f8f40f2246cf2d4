/* Listener and client over AF_UNIX (path, abstract) and AF_INET, accept
 * deadlines, and the challenge handshake (3.12 form and the 3.11 MD5 form). */
#include "helpers.h"

#include <errno.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "hmac.h"

static void *into(void *arg, size_t len)
{
    (void)len;
    return arg;
}

/* Client in a child: connect, optionally authenticate, send "ping", expect
 * "pong"; exit status says how it went. */
static pid_t client_child(struct sockaddr_storage *addr, socklen_t len, const char *key)
{
    pid_t pid = fork();
    if (pid)
        return pid;
    struct timespec dl = test_deadline(5);
    cmp_conn_t c;
    if (cmp_client_connect(&c, (struct sockaddr *)addr, len, &dl) != 0)
        _exit(2);
    if (key) {
        int r = cmp_conn_answer_challenge(&c, key, strlen(key), &dl);
        if (r == 0)
            r = cmp_conn_deliver_challenge(&c, key, strlen(key), &dl);
        if (r != 0)
            _exit(r == -EACCES ? 3 : 4);
    }
    char buf[8];
    cmp_conn_rx_t rx = {0};
    if (cmp_conn_send(&c, "ping", 4, NULL, &dl) != 0 ||
        cmp_conn_recv(&c, &rx, sizeof buf, into, buf, &dl) != 0 || rx.len != 4 ||
        memcmp(buf, "pong", 4) != 0)
        _exit(5);
    _exit(0);
}

static int child_status(pid_t pid)
{
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

static void serve_one(struct sockaddr_storage *addr, socklen_t len, const char *skey,
                      const char *ckey, int want_server, int want_client)
{
    cmp_listener_t l;
    cr_assert_eq(cmp_listener_open(&l, (struct sockaddr *)addr, len, 1), 0);
    pid_t pid = client_child(&l.addr, l.addrlen, ckey);
    cmp_conn_t c;
    struct sockaddr_storage peer;
    socklen_t peerlen;
    struct timespec dl = test_deadline(5);
    cr_assert_eq(cmp_listener_accept(&l, &c, &peer, &peerlen, &dl), 0);
    cr_assert_eq(peer.ss_family, addr->ss_family);
    int r = 0;
    if (skey) {
        r = cmp_conn_deliver_challenge(&c, skey, strlen(skey), &dl);
        if (r == 0)
            r = cmp_conn_answer_challenge(&c, skey, strlen(skey), &dl);
    }
    cr_assert_eq(r, want_server);
    if (r == 0) {
        char buf[8];
        cmp_conn_rx_t rx = {0};
        cr_assert_eq(cmp_conn_recv(&c, &rx, sizeof buf, into, buf, &dl), 0);
        cr_assert_eq(memcmp(buf, "ping", 4), 0);
        cr_assert_eq(cmp_conn_send(&c, "pong", 4, NULL, &dl), 0);
    }
    cmp_conn_close(&c);
    cr_assert_eq(child_status(pid), want_client);
    cmp_listener_close(&l);
}

Test(listener, unix_path_and_unlink, .timeout = 10)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/cmp-test-listener-%d", (int)getpid());
    struct sockaddr_storage a;
    socklen_t len;
    cr_assert_eq(cmp_sockaddr_unix(&a, &len, path, strlen(path)), 0);
    serve_one(&a, len, NULL, NULL, 0, 0);
    cr_assert_eq(access(path, F_OK), -1); /* the binder unlinked it */
    char toolong[200];
    memset(toolong, 'x', sizeof toolong);
    cr_assert_eq(cmp_sockaddr_unix(&a, &len, toolong, sizeof toolong), -ENAMETOOLONG);
}

Test(listener, unix_abstract, .timeout = 10)
{
    char name[64];
    int n = snprintf(name, sizeof name, "%ccmp-test-abstract-%d", 0, (int)getpid());
    struct sockaddr_storage a;
    socklen_t len;
    cr_assert_eq(cmp_sockaddr_unix(&a, &len, name, (size_t)n), 0);
    serve_one(&a, len, "key", "key", 0, 0);
}

Test(listener, inet_loopback_port_zero, .timeout = 10)
{
    struct sockaddr_storage a;
    socklen_t len;
    cr_assert_eq(cmp_sockaddr_inet(&a, &len, "127.0.0.1", 0), 0);
    cmp_listener_t l;
    cr_assert_eq(cmp_listener_open(&l, (struct sockaddr *)&a, len, 4), 0);
    cr_assert_neq(((struct sockaddr_in *)&l.addr)->sin_port, 0); /* a port was chosen */
    cmp_listener_close(&l);
    serve_one(&a, len, "secret", "secret", 0, 0);
    cr_assert_eq(cmp_sockaddr_inet(&a, &len, "no-such-host.invalid", 1), -ENOENT);
}

Test(listener, wrong_key_fails_both_sides, .timeout = 10)
{
    struct sockaddr_storage a;
    socklen_t len;
    cr_assert_eq(cmp_sockaddr_inet(&a, &len, "127.0.0.1", 0), 0);
    serve_one(&a, len, "right", "wrong", -EACCES, 3);
}

Test(listener, accept_deadline_and_refused, .timeout = 10)
{
    struct sockaddr_storage a;
    socklen_t len;
    cr_assert_eq(cmp_sockaddr_inet(&a, &len, "127.0.0.1", 0), 0);
    cmp_listener_t l;
    cr_assert_eq(cmp_listener_open(&l, (struct sockaddr *)&a, len, 1), 0);
    cmp_conn_t c;
    struct timespec dl = test_deadline(0.05);
    cr_assert_eq(cmp_listener_accept(&l, &c, NULL, NULL, &dl), -ETIMEDOUT);
    struct sockaddr_storage bound = l.addr;
    socklen_t blen = l.addrlen;
    cmp_listener_close(&l);
    cmp_listener_close(&l);
    cr_assert_eq(cmp_listener_accept(&l, &c, NULL, NULL, NULL), -EBADF);
    dl = test_deadline(2);
    cr_assert_eq(cmp_client_connect(&c, (struct sockaddr *)&bound, blen, &dl), -ECONNREFUSED);
    char path[64];
    snprintf(path, sizeof path, "/tmp/cmp-test-missing-%d", (int)getpid());
    cr_assert_eq(cmp_sockaddr_unix(&a, &len, path, strlen(path)), 0);
    cr_assert_eq(cmp_client_connect(&c, (struct sockaddr *)&a, len, NULL), -ENOENT);
}

/* The handshake steps against hand-made messages of both protocols. */
Test(listener, auth_protocol_forms, .timeout = 5)
{
    const char *key = "k3y";
    unsigned char ch[CMP_AUTH_MSG_MAX], ans[CMP_AUTH_MSG_MAX];
    int n = cmp_auth_challenge(ch);
    cr_assert_eq(n, 11 + 8 + 40);
    cr_assert_eq(memcmp(ch, "#CHALLENGE#{sha256}", 19), 0);
    unsigned char again[CMP_AUTH_MSG_MAX];
    cmp_auth_challenge(again);
    cr_assert_neq(memcmp(ch + 19, again + 19, 40), 0); /* random each time */

    int a = cmp_auth_answer(key, 3, ch, (size_t)n, ans);
    cr_assert_eq(a, 8 + 32);
    cr_assert_eq(memcmp(ans, "{sha256}", 8), 0);
    unsigned char mac[32];
    cmp__hmac(CMP__SHA256, key, 3, ch + 11, (size_t)n - 11, mac);
    cr_assert_eq(memcmp(ans + 8, mac, 32), 0);
    cr_assert_eq(cmp_auth_verify(key, 3, ch, (size_t)n, ans, (size_t)a), 0);
    ans[a - 1] ^= 1;
    cr_assert_eq(cmp_auth_verify(key, 3, ch, (size_t)n, ans, (size_t)a), -EACCES);
    cr_assert_eq(cmp_auth_verify("other", 5, ch, (size_t)n, ans, (size_t)a), -EACCES);

    /* A 3.11 client answers any challenge with a bare HMAC-MD5 of it. */
    cmp__hmac(CMP__MD5, key, 3, ch + 11, (size_t)n - 11, ans);
    cr_assert_eq(cmp_auth_verify(key, 3, ch, (size_t)n, ans, 16), 0);
    /* "{md5}" prefixed is also allowed; unknown digests are a protocol error. */
    memcpy(ans, "{md5}", 5);
    cmp__hmac(CMP__MD5, key, 3, ch + 11, (size_t)n - 11, ans + 5);
    cr_assert_eq(cmp_auth_verify(key, 3, ch, (size_t)n, ans, 21), 0);
    memcpy(ans, "{sha384}", 8);
    cr_assert_eq(cmp_auth_verify(key, 3, ch, (size_t)n, ans, 8 + 48), -EPROTO);

    /* A 3.11 server sends 20 bare random bytes: answer with bare MD5. */
    unsigned char legacy[31] = "#CHALLENGE#abcdefghijklmnopqrst";
    a = cmp_auth_answer(key, 3, legacy, sizeof legacy, ans);
    cr_assert_eq(a, 16);
    cmp__hmac(CMP__MD5, key, 3, legacy + 11, 20, mac);
    cr_assert_eq(memcmp(ans, mac, 16), 0);
    /* Not a challenge, too short, unknown digest. */
    cr_assert_eq(cmp_auth_answer(key, 3, (const unsigned char *)"#WELCOME#", 9, ans), -EPROTO);
    cr_assert_eq(cmp_auth_answer(key, 3, (const unsigned char *)"#CHALLENGE#short", 16, ans),
                 -EPROTO);
    const char *odd = "#CHALLENGE#{sha3_384}0123456789012345678901234567890123456789";
    cr_assert_eq(cmp_auth_answer(key, 3, (const unsigned char *)odd, strlen(odd), ans), -EPROTO);
}

/* The private directory: 0700 and ours whatever the umask, one per process
 * tree (a forked child sees the same and does not remove it), removed with
 * what it holds by its creator. */
Test(listener, tempdir_private_shared_removed, .timeout = 10)
{
    mode_t old = umask(0);
    char dir[256], again[256];
    int n = cmp_tempdir(dir, sizeof dir);
    umask(old);
    cr_assert_gt(n, 0);
    cr_assert_eq((size_t)n, strlen(dir));
    struct stat st;
    cr_assert_eq(lstat(dir, &st), 0);
    cr_assert(S_ISDIR(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0700);
    cr_assert_eq(st.st_uid, geteuid());
    cr_assert_eq(cmp_tempdir(again, sizeof again), n);
    cr_assert_str_eq(again, dir);
    cr_assert_eq(cmp_tempdir(again, (size_t)n), -ERANGE);

    pid_t pid = fork();
    if (pid == 0) {
        char child[256];
        int ok = cmp_tempdir(child, sizeof child) == n && strcmp(child, dir) == 0;
        cmp_tempdir_remove(); /* not its creator: nothing happens */
        _exit(ok ? 0 : 1);
    }
    cr_assert_eq(test_join(pid, 5), 0);
    cr_assert_eq(access(dir, F_OK), 0);

    /* A socket left behind (a listener never closed) goes too. */
    struct sockaddr_storage a;
    socklen_t len;
    cr_assert_eq(cmp_listener_default_addr(&a, &len), 0);
    const char *path = ((struct sockaddr_un *)&a)->sun_path;
    cr_assert_eq(strncmp(path, dir, (size_t)n), 0);
    cr_assert_eq(strncmp(path + n, "/listener-", 10), 0);
    cmp_listener_t l;
    cr_assert_eq(cmp_listener_open(&l, (struct sockaddr *)&a, len, 1), 0);
    cr_assert_eq(access(path, F_OK), 0);
    cmp_tempdir_remove();
    cr_assert_eq(access(dir, F_OK), -1);
    close(l.fd);

    /* The next use makes a new one. */
    cr_assert_gt(cmp_tempdir(again, sizeof again), 0);
    cr_assert_str_neq(again, dir);
    cmp_tempdir_remove();
}

/* Another uid cannot connect to a default address, even when the socket
 * file itself was made world-writable by umask 0. Needs root. */
Test(listener, default_addr_refuses_other_uid, .timeout = 10)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to uid 65534");
    struct sockaddr_storage a;
    socklen_t len;
    cr_assert_eq(cmp_listener_default_addr(&a, &len), 0);
    mode_t old = umask(0);
    cmp_listener_t l;
    int r = cmp_listener_open(&l, (struct sockaddr *)&a, len, 1);
    umask(old);
    cr_assert_eq(r, 0);
    pid_t pid = fork();
    if (pid == 0) {
        if (setgroups(0, NULL) != 0 || setresgid(65534, 65534, 65534) != 0 ||
            setresuid(65534, 65534, 65534) != 0)
            _exit(2);
        cmp_conn_t c;
        struct timespec dl = test_deadline(2);
        r = cmp_client_connect(&c, (struct sockaddr *)&a, len, &dl);
        _exit(r == -EACCES ? 0 : 1);
    }
    cr_assert_eq(test_join(pid, 5), 0);
    pid = client_child(&l.addr, l.addrlen, NULL); /* our own uid gets in */
    cmp_conn_t c;
    struct timespec dl = test_deadline(5);
    cr_assert_eq(cmp_listener_accept(&l, &c, NULL, NULL, &dl), 0);
    char buf[8];
    cmp_conn_rx_t rx = {0};
    cr_assert_eq(cmp_conn_recv(&c, &rx, sizeof buf, into, buf, &dl), 0);
    cr_assert_eq(cmp_conn_send(&c, "pong", 4, NULL, &dl), 0);
    cmp_conn_close(&c);
    cr_assert_eq(child_status(pid), 0);
    cmp_listener_close(&l);
    cmp_tempdir_remove();
}

/* A silent peer costs the server its deadline and no more; the handshake
 * then resumes where it stopped once the peer speaks. */
Test(listener, auth_step_silent_peer_then_resume, .timeout = 10)
{
    cmp_conn_t s, p;
    cr_assert_eq(cmp_conn_pair(&s, &p, 1), 0);
    cmp_auth_t a;
    cr_assert_eq(cmp_auth_start(&a, CMP_AUTH_SERVER), 0);
    cr_assert_eq(cmp_auth_start(&a, 0), -EINVAL);
    cr_assert_eq(cmp_auth_start(&a, CMP_AUTH_SERVER), 0);
    struct timespec t0, t1, dl = test_deadline(0.2);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cr_assert_eq(cmp_auth_step(&a, &s, "k", 1, &dl), -ETIMEDOUT);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    cr_assert(took >= 0.15 && took < 2, "took %f s", took);
    cr_assert_eq(cmp_auth_events(&a), POLLIN); /* challenge sent, awaiting the answer */
    pid_t pid = fork();
    if (pid == 0) {
        struct timespec cdl = test_deadline(5);
        cmp_auth_t ca;
        cmp_auth_start(&ca, CMP_AUTH_CLIENT);
        _exit(cmp_auth_step(&ca, &p, "k", 1, &cdl) == 0 ? 0 : 1);
    }
    dl = test_deadline(5);
    cr_assert_eq(cmp_auth_step(&a, &s, "k", 1, &dl), 0);
    cr_assert_eq(cmp_auth_events(&a), 0);
    cr_assert_eq(cmp_auth_step(&a, &s, "k", 1, &dl), 0); /* done stays done */
    cr_assert_eq(test_join(pid, 5), 0);
    cmp_conn_close(&s);
    cmp_conn_close(&p);
}

/* Both ends of many handshakes driven by one thread with poll and a
 * deadline of now: what a multi-client server does, never blocking on any
 * peer. A wrong key fails on both sides with the phase that failed. */
static int poll_pair(cmp_auth_t *sa, cmp_conn_t *s, const char *skey, int *sr, cmp_auth_t *ca,
                     cmp_conn_t *c, const char *ckey, int *cr_)
{
    struct timespec give_up = test_deadline(5);
    *sr = *cr_ = -ETIMEDOUT;
    for (int rounds = 0; (*sr == -ETIMEDOUT || *cr_ == -ETIMEDOUT); rounds++) {
        if (cmp_deadline_remaining(&give_up) <= 0)
            return -1;
        struct timespec now = test_deadline(0);
        if (*sr == -ETIMEDOUT)
            *sr = cmp_auth_step(sa, s, skey, strlen(skey), &now);
        if (*cr_ == -ETIMEDOUT)
            *cr_ = cmp_auth_step(ca, c, ckey, strlen(ckey), &now);
        struct pollfd fds[2] = {{s->fd, cmp_auth_events(sa), 0}, {c->fd, cmp_auth_events(ca), 0}};
        if (*sr == -ETIMEDOUT || *cr_ == -ETIMEDOUT)
            poll(fds, 2, 100);
    }
    return 0;
}

Test(listener, auth_step_poll_driven, .timeout = 10)
{
    for (int wrong = 0; wrong < 2; wrong++) {
        cmp_conn_t s, c;
        cr_assert_eq(cmp_conn_pair(&s, &c, 1), 0);
        cmp_auth_t sa, ca;
        cmp_auth_start(&sa, CMP_AUTH_SERVER);
        cmp_auth_start(&ca, CMP_AUTH_CLIENT);
        int sr, cr_;
        cr_assert_eq(poll_pair(&sa, &s, "key", &sr, &ca, &c, wrong ? "nope" : "key", &cr_), 0);
        if (!wrong) {
            cr_assert_eq(sr, 0);
            cr_assert_eq(cr_, 0);
        } else {
            /* the client answers first: the server rejects its answer */
            cr_assert_eq(sr, -EACCES);
            cr_assert_eq(sa.phase, CMP_AUTH_DELIVERING);
            cr_assert_eq(cr_, -EACCES);
            cr_assert_eq(ca.phase, CMP_AUTH_ANSWERING);
            struct timespec now = test_deadline(0);
            cr_assert_eq(cmp_auth_step(&sa, &s, "key", 3, &now), -EACCES); /* stays failed */
        }
        cmp_conn_close(&s);
        cmp_conn_close(&c);
    }
}

/* A peer that is not of the protocol, or leaves, fails the step for good. */
Test(listener, auth_step_garbage_and_eof, .timeout = 10)
{
    cmp_conn_t s, p;
    cr_assert_eq(cmp_conn_pair(&s, &p, 1), 0);
    struct timespec dl = test_deadline(5);
    cmp_auth_t a;
    cmp_auth_start(&a, CMP_AUTH_CLIENT);
    cr_assert_eq(cmp_conn_send(&p, "hello", 5, NULL, &dl), 0);
    cr_assert_eq(cmp_auth_step(&a, &s, "k", 1, &dl), -EPROTO);
    cr_assert_eq(a.phase, CMP_AUTH_ANSWERING);
    cr_assert_eq(a.in_len, 5);
    cmp_auth_start(&a, CMP_AUTH_SERVER);
    cmp_conn_close(&p);
    int r = cmp_auth_step(&a, &s, "k", 1, &dl);
    cr_assert(r == -EPIPE || r == CMP_CONN_EOF || r == -ECONNRESET, "r = %d", r);
    cmp_conn_close(&s);
}
