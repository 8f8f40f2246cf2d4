/*
 * The authentication handshake of multiprocessing.connection, as Python
 * 3.12 speaks it: "{digest}"-prefixed challenges and answers (SHA-256 by
 * default), with the bare HMAC-MD5 form of Python <= 3.11 still accepted
 * from old clients and produced for old servers. The HMAC always covers the
 * whole challenge after "#CHALLENGE#", prefix included, so an answer cannot
 * be downgraded.
 */
#include "conn_internal.h"
#include "hmac.h"

#include <errno.h>
#include <poll.h>

#define CHALLENGE "#CHALLENGE#"
#define CHALLENGE_LEN (sizeof CHALLENGE - 1)
#define RANDOM_LEN 40     /* 3.12's MESSAGE_LENGTH: > 20 marks the new protocol */
#define LEGACY_MSG_LEN 20 /* what 3.11 servers send; also the shortest allowed */

/* Splits "{name}payload". Returns the hash kind, or -EPROTO for a missing
 * prefix or a digest this library does not implement (3.12 also knows
 * sha384 and sha3_*, which it never picks by default). */
static int parse_prefix(const unsigned char *m, size_t len, size_t *prefix_len)
{
    /* 3.12 looks for the '}' within the longest known name ("sha3_384"). */
    if (len < 2 || m[0] != '{')
        return -EPROTO;
    size_t end = 1;
    while (end < len && end < 10 && m[end] != '}')
        end++;
    if (end >= len || m[end] != '}')
        return -EPROTO;
    *prefix_len = end + 1;
    if (end - 1 == 3 && memcmp(m + 1, "md5", 3) == 0)
        return CMP__MD5;
    if (end - 1 == 6 && memcmp(m + 1, "sha256", 6) == 0)
        return CMP__SHA256;
    return -EPROTO;
}

int cmp_auth_challenge(unsigned char *out)
{
    static const char prefix[] = CHALLENGE "{sha256}";
    size_t n = sizeof prefix - 1;
    memcpy(out, prefix, n);
    int rc = cmp__random_bytes(out + n, RANDOM_LEN);
    return rc < 0 ? rc : (int)(n + RANDOM_LEN);
}

int cmp_auth_verify(const void *key, size_t keylen, const unsigned char *challenge,
                    size_t challenge_len, const unsigned char *answer, size_t answer_len)
{
    if (challenge_len < CHALLENGE_LEN || memcmp(challenge, CHALLENGE, CHALLENGE_LEN) != 0)
        return -EPROTO;
    const unsigned char *msg = challenge + CHALLENGE_LEN;
    size_t msglen = challenge_len - CHALLENGE_LEN;
    int kind = CMP__MD5;
    size_t skip = 0;
    /* A bare 16-byte answer is an old client's HMAC-MD5 (20 bytes is the
     * other legacy length; it then fails the length check as in 3.12). */
    if (answer_len != CMP__MD5_LEN && answer_len != LEGACY_MSG_LEN) {
        kind = parse_prefix(answer, answer_len, &skip);
        if (kind < 0)
            return kind;
    }
    unsigned char want[CMP__SHA256_LEN];
    cmp__hmac((cmp__hash_kind)kind, key, keylen, msg, msglen, want);
    size_t n = cmp__hash_len((cmp__hash_kind)kind);
    if (answer_len - skip != n || !cmp__digest_equal(want, answer + skip, n))
        return -EACCES;
    return 0;
}

int cmp_auth_answer(const void *key, size_t keylen, const unsigned char *challenge,
                    size_t challenge_len, unsigned char *out)
{
    if (challenge_len < CHALLENGE_LEN || memcmp(challenge, CHALLENGE, CHALLENGE_LEN) != 0)
        return -EPROTO;
    const unsigned char *msg = challenge + CHALLENGE_LEN;
    size_t msglen = challenge_len - CHALLENGE_LEN;
    if (msglen < LEGACY_MSG_LEN)
        return -EPROTO;
    if (msglen == LEGACY_MSG_LEN) {
        /* An old server: bare HMAC-MD5, no prefix. */
        cmp__hmac(CMP__MD5, key, keylen, msg, msglen, out);
        return CMP__MD5_LEN;
    }
    size_t skip;
    int kind = parse_prefix(msg, msglen, &skip);
    if (kind < 0)
        return kind;
    memcpy(out, msg, skip); /* answer with the digest the server asked for */
    cmp__hmac((cmp__hash_kind)kind, key, keylen, msg, msglen, out + skip);
    return (int)(skip + cmp__hash_len((cmp__hash_kind)kind));
}

static void *into_stack(void *arg, size_t len)
{
    (void)len; /* bounded by maxlen = CMP_AUTH_MSG_MAX */
    return arg;
}

/* The handshake as a sequence of sends and receives, each resumable. */
enum { D_SEND, D_RECV, D_REPLY, A_RECV, A_SEND, A_REPLY, DONE, FAILED };

int cmp_auth_start(cmp_auth_t *a, int role)
{
    if (role < CMP_AUTH_SERVER || role > CMP_AUTH_ANSWER)
        return -EINVAL;
    memset(a, 0, sizeof *a);
    a->role = role;
    int answer_first = role == CMP_AUTH_CLIENT || role == CMP_AUTH_ANSWER;
    a->step = answer_first ? A_RECV : D_SEND;
    a->phase = answer_first ? CMP_AUTH_ANSWERING : CMP_AUTH_DELIVERING;
    return 0;
}

short cmp_auth_events(const cmp_auth_t *a)
{
    switch (a->step) {
    case D_SEND:
    case D_REPLY:
    case A_SEND:
        return POLLOUT;
    case D_RECV:
    case A_RECV:
    case A_REPLY:
        return POLLIN;
    default:
        return 0;
    }
}

static int send_step(cmp_auth_t *a, cmp_conn_t *conn, const void *buf, size_t len,
                     const struct timespec *deadline)
{
    int r = cmp_conn_send(conn, buf, len, &a->tx, deadline);
    if (r == 0)
        a->tx = 0;
    return r;
}

static int recv_step(cmp_auth_t *a, cmp_conn_t *conn, const struct timespec *deadline)
{
    int r = cmp_conn_recv(conn, &a->rx, CMP_AUTH_MSG_MAX, into_stack, a->in, deadline);
    if (r == 0) {
        a->in_len = (size_t)a->rx.len;
        memset(&a->rx, 0, sizeof a->rx);
    }
    return r;
}

/* Where a finished half leads: the other half, or the end. */
static void half_done(cmp_auth_t *a, int delivered)
{
    if (delivered && a->role == CMP_AUTH_SERVER) {
        a->step = A_RECV;
        a->phase = CMP_AUTH_ANSWERING;
    } else if (!delivered && a->role == CMP_AUTH_CLIENT) {
        a->step = D_SEND;
        a->phase = CMP_AUTH_DELIVERING;
    } else {
        a->step = DONE;
    }
}

/* A final error: later calls return it again. */
static int fail(cmp_auth_t *a, int err)
{
    a->step = FAILED;
    a->verdict = err;
    return err;
}

/* Errors after which the same call may resume the same message. */
static int resumable(int r)
{
    return r == -EINTR || r == -ETIMEDOUT;
}

int cmp_auth_step(cmp_auth_t *a, cmp_conn_t *conn, const void *key, size_t keylen,
                  const struct timespec *deadline)
{
    int r = 0, n;
    while (r == 0) {
        switch (a->step) {
        case D_SEND:
            if (!a->challenge_len) {
                if ((n = cmp_auth_challenge(a->challenge)) < 0)
                    return fail(a, n);
                a->challenge_len = (size_t)n;
            }
            if ((r = send_step(a, conn, a->challenge, a->challenge_len, deadline)) == 0)
                a->step = D_RECV;
            break;
        case D_RECV:
            if ((r = recv_step(a, conn, deadline)) == 0) {
                a->verdict =
                    cmp_auth_verify(key, keylen, a->challenge, a->challenge_len, a->in, a->in_len);
                a->step = D_REPLY;
            }
            break;
        case D_REPLY: {
            const char *reply = a->verdict == 0 ? CMP_AUTH_WELCOME : CMP_AUTH_FAILURE;
            if ((r = send_step(a, conn, reply, strlen(reply), deadline)) < 0)
                break;
            if (a->verdict < 0)
                return fail(a, a->verdict);
            half_done(a, 1);
            break;
        }
        case A_RECV:
            if ((r = recv_step(a, conn, deadline)) < 0)
                break;
            if ((n = cmp_auth_answer(key, keylen, a->in, a->in_len, a->out)) < 0)
                return fail(a, n);
            a->out_len = (size_t)n;
            a->step = A_SEND;
            break;
        case A_SEND:
            if ((r = send_step(a, conn, a->out, a->out_len, deadline)) == 0)
                a->step = A_REPLY;
            break;
        case A_REPLY:
            if ((r = recv_step(a, conn, deadline)) < 0)
                break;
            if (a->in_len != strlen(CMP_AUTH_WELCOME) ||
                memcmp(a->in, CMP_AUTH_WELCOME, a->in_len) != 0)
                return fail(a, -EACCES);
            half_done(a, 0);
            break;
        case DONE:
            return 0;
        default:
            return a->verdict;
        }
    }
    if (resumable(r))
        return r;
    a->io_error = 1;
    return fail(a, r);
}

static int run_half(cmp_conn_t *conn, int role, const void *key, size_t keylen,
                    const struct timespec *deadline)
{
    cmp_auth_t a;
    cmp_auth_start(&a, role);
    return cmp_auth_step(&a, conn, key, keylen, deadline);
}

int cmp_conn_deliver_challenge(cmp_conn_t *conn, const void *key, size_t keylen,
                               const struct timespec *deadline)
{
    return run_half(conn, CMP_AUTH_DELIVER, key, keylen, deadline);
}

int cmp_conn_answer_challenge(cmp_conn_t *conn, const void *key, size_t keylen,
                              const struct timespec *deadline)
{
    return run_half(conn, CMP_AUTH_ANSWER, key, keylen, deadline);
}
