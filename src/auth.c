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

static int recv_small(cmp_conn_t *conn, unsigned char *buf, size_t *len,
                      const struct timespec *deadline)
{
    cmp_conn_rx_t rx = {0};
    int r = cmp_conn_recv(conn, &rx, CMP_AUTH_MSG_MAX, into_stack, buf, deadline);
    *len = (size_t)rx.len;
    return r;
}

int cmp_conn_deliver_challenge(cmp_conn_t *conn, const void *key, size_t keylen,
                               const struct timespec *deadline)
{
    unsigned char challenge[CMP_AUTH_MSG_MAX], answer[CMP_AUTH_MSG_MAX];
    size_t alen = 0;
    int n = cmp_auth_challenge(challenge);
    if (n < 0)
        return n;
    int r = cmp_conn_send(conn, challenge, (size_t)n, NULL, deadline);
    if (r == 0)
        r = recv_small(conn, answer, &alen, deadline);
    if (r < 0)
        return r;
    int v = cmp_auth_verify(key, keylen, challenge, (size_t)n, answer, alen);
    const char *reply = v == 0 ? CMP_AUTH_WELCOME : CMP_AUTH_FAILURE;
    r = cmp_conn_send(conn, reply, strlen(reply), NULL, deadline);
    return v < 0 ? v : r;
}

int cmp_conn_answer_challenge(cmp_conn_t *conn, const void *key, size_t keylen,
                              const struct timespec *deadline)
{
    unsigned char challenge[CMP_AUTH_MSG_MAX], answer[CMP_AUTH_MSG_MAX];
    size_t clen = 0, rlen = 0;
    int r = recv_small(conn, challenge, &clen, deadline);
    if (r < 0)
        return r;
    int n = cmp_auth_answer(key, keylen, challenge, clen, answer);
    if (n < 0)
        return n;
    r = cmp_conn_send(conn, answer, (size_t)n, NULL, deadline);
    if (r == 0)
        r = recv_small(conn, challenge, &rlen, deadline);
    if (r < 0)
        return r;
    if (rlen != strlen(CMP_AUTH_WELCOME) || memcmp(challenge, CMP_AUTH_WELCOME, rlen) != 0)
        return -EACCES;
    return 0;
}
