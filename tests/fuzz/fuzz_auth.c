/*
 * libFuzzer target: the challenge handshake (auth.c), both roles.
 *
 * Input: [mode][keylen][key bytes][rest]. mode % 3 picks
 *   0  the server (cmp_conn_deliver_challenge): rest is what the client
 *      sends back, as bytes on the socket;
 *   1  the client (cmp_conn_answer_challenge): rest is what the server
 *      sends, challenge then verdict, as bytes on the socket;
 *   2  the server's decision alone (cmp_auth_verify): rest is
 *      [challenge length][challenge][answer], so that answers close to a
 *      right one (the seed corpus holds right ones for both digests) can be
 *      tried; over the socket the challenge is random and no input ever
 *      answers it.
 * The oracle is OpenSSL's HMAC, not libcmp's: an answer is right iff it is
 * "{sha256}" + HMAC-SHA256, "{md5}" + HMAC-MD5 or a bare 16-byte HMAC-MD5
 * (old clients) of the challenge after "#CHALLENGE#"; nothing else may
 * authenticate, and a client must send exactly the right answer.
 */
#include "fuzz.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <signal.h>

#define CHALLENGE "#CHALLENGE#"
#define CHALLENGE_LEN (sizeof CHALLENGE - 1)

typedef struct {
    const uint8_t *key;
    size_t keylen;
} hkey;

static size_t oracle_hmac(const EVP_MD *md, hkey k, const uint8_t *m, size_t n, uint8_t *out)
{
    static const uint8_t none = 0;
    unsigned len = 0;
    FUZZ_CHECK(HMAC(md, k.keylen ? k.key : &none, (int)k.keylen, n ? m : &none, n, out, &len));
    return len;
}

/* The answer a client must give to challenge msg (after "#CHALLENGE#"),
 * written to out: its length, or 0 if msg is not one a client can answer
 * (too short for the legacy form, or no digest prefix we know). */
static size_t oracle_answer(hkey k, const uint8_t *msg, size_t n, uint8_t *out)
{
    if (n < 20)
        return 0;
    if (n == 20) /* an old server: bare HMAC-MD5 */
        return oracle_hmac(EVP_md5(), k, msg, n, out);
    static const struct {
        const char *prefix;
        const EVP_MD *(*md)(void);
    } kinds[] = {{"{md5}", EVP_md5}, {"{sha256}", EVP_sha256}};
    for (size_t i = 0; i < 2; i++) {
        size_t p = strlen(kinds[i].prefix);
        if (n >= p && memcmp(msg, kinds[i].prefix, p) == 0) {
            memcpy(out, kinds[i].prefix, p);
            return p + oracle_hmac(kinds[i].md(), k, msg, n, out + p);
        }
    }
    return 0;
}

/* Whether a server that sent challenge c (whole message) must accept a. */
static int oracle_accepts(hkey k, const uint8_t *c, size_t cn, const uint8_t *a, size_t an)
{
    if (cn < CHALLENGE_LEN || memcmp(c, CHALLENGE, CHALLENGE_LEN) != 0)
        return 0;
    const uint8_t *msg = c + CHALLENGE_LEN;
    size_t n = cn - CHALLENGE_LEN;
    uint8_t want[64];
    if (an == 16 && oracle_hmac(EVP_md5(), k, msg, n, want) == 16 && memcmp(a, want, 16) == 0)
        return 1;
    if (an == 5 + 16 && memcmp(a, "{md5}", 5) == 0)
        return oracle_hmac(EVP_md5(), k, msg, n, want) == 16 && memcmp(a + 5, want, 16) == 0;
    if (an == 8 + 32 && memcmp(a, "{sha256}", 8) == 0)
        return oracle_hmac(EVP_sha256(), k, msg, n, want) == 32 && memcmp(a + 8, want, 32) == 0;
    return 0;
}

static int is_msg(const uint8_t *m, size_t n, const char *s)
{
    return n == strlen(s) && memcmp(m, s, n) == 0;
}

typedef int (*role_fn)(cmp_conn_t *conn, const void *key, size_t keylen,
                       const struct timespec *deadline);

/* Runs one role of the handshake against a peer that sends rest and then
 * shuts its writing side; what the role sent back lands in back (its
 * length in *got). Returns what the role returned. */
static int exchange(role_fn role, hkey k, const uint8_t *rest, size_t n, uint8_t *back, size_t cap,
                    size_t *got)
{
    cmp_conn_t lib, peer;
    FUZZ_CHECK(cmp_conn_pair(&lib, &peer, 1) == 0);
    fuzz_feeder feeder;
    fuzz_feed_start(&feeder, peer.fd, rest, n, 1);
    struct timespec deadline;
    cmp_deadline_after(10.0, &deadline);
    int r = role(&lib, k.key, k.keylen, &deadline);
    cmp_conn_close(&lib);
    fuzz_feed_join(&feeder);
    *got = fuzz_drain(peer.fd, back, cap);
    cmp_conn_close(&peer);
    return r;
}

static void server(hkey k, const uint8_t *rest, size_t n)
{
    static uint8_t back[4096];
    size_t got;
    int r = exchange(cmp_conn_deliver_challenge, k, rest, n, back, sizeof back, &got);
    /* What the server sent: its challenge, then at most one verdict. */
    const uint8_t *m[3];
    size_t len[3];
    int count = fuzz_frames(back, got, m, len, 3);
    FUZZ_CHECK(count >= 1 && count <= 2);
    FUZZ_CHECK(len[0] == CHALLENGE_LEN + 8 + 40 && memcmp(m[0], CHALLENGE "{sha256}", 19) == 0);

    /* The answer the server read, if the input held one it could read. */
    const uint8_t *answer[1];
    size_t alen[1];
    int answered = fuzz_frames(rest, n, answer, alen, 1) == 1 && alen[0] <= CMP_AUTH_MSG_MAX;
    int accept = answered && oracle_accepts(k, m[0], len[0], answer[0], alen[0]);
    FUZZ_CHECK((r == 0) == accept);
    if (answered) {
        FUZZ_CHECK(count == 2);
        FUZZ_CHECK(is_msg(m[1], len[1], accept ? CMP_AUTH_WELCOME : CMP_AUTH_FAILURE));
        FUZZ_CHECK(r == 0 || r == -EACCES || r == -EPROTO);
    } else if (count == 2) {
        /* A negative length read as an empty answer: refused. */
        FUZZ_CHECK(is_msg(m[1], len[1], CMP_AUTH_FAILURE) && r < 0);
    }
}

static void client(hkey k, const uint8_t *rest, size_t n)
{
    static uint8_t back[4096];
    size_t got;
    int r = exchange(cmp_conn_answer_challenge, k, rest, n, back, sizeof back, &got);
    const uint8_t *sent[2];
    size_t slen[2];
    int count = fuzz_frames(back, got, sent, slen, 2);
    FUZZ_CHECK(count <= 1); /* an answer, nothing else */

    const uint8_t *m[2];
    size_t len[2];
    int frames = fuzz_frames(rest, n, m, len, 2);
    uint8_t want[64];
    size_t wlen = 0;
    if (frames >= 1 && len[0] <= CMP_AUTH_MSG_MAX && len[0] >= CHALLENGE_LEN &&
        memcmp(m[0], CHALLENGE, CHALLENGE_LEN) == 0)
        wlen = oracle_answer(k, m[0] + CHALLENGE_LEN, len[0] - CHALLENGE_LEN, want);
    if (count == 1)
        FUZZ_CHECK(wlen > 0 && slen[0] == wlen && memcmp(sent[0], want, wlen) == 0);
    else
        FUZZ_CHECK(r < 0);
    int welcomed = count == 1 && frames == 2 && is_msg(m[1], len[1], CMP_AUTH_WELCOME);
    FUZZ_CHECK((r == 0) == welcomed);
    if (count == 1 && frames == 2 && !welcomed && len[1] <= CMP_AUTH_MSG_MAX)
        FUZZ_CHECK(r == -EACCES);
}

static void verify(hkey k, const uint8_t *rest, size_t n)
{
    if (n < 1)
        return;
    size_t cn = rest[0];
    if (cn > n - 1)
        cn = n - 1;
    const uint8_t *c = rest + 1, *a = c + cn;
    size_t an = n - 1 - cn;
    int r = cmp_auth_verify(k.key, k.keylen, c, cn, a, an);
    FUZZ_CHECK(r == 0 || r == -EACCES || r == -EPROTO);
    FUZZ_CHECK((r == 0) == oracle_accepts(k, c, cn, a, an));
    /* The client's side of the same challenge agrees with the oracle too. */
    uint8_t out[CMP_AUTH_MSG_MAX], want[64];
    int len = cmp_auth_answer(k.key, k.keylen, c, cn, out);
    size_t wlen = 0;
    if (cn >= CHALLENGE_LEN && memcmp(c, CHALLENGE, CHALLENGE_LEN) == 0)
        wlen = oracle_answer(k, c + CHALLENGE_LEN, cn - CHALLENGE_LEN, want);
    if (wlen == 0)
        FUZZ_CHECK(len == -EPROTO);
    else
        FUZZ_CHECK(len == (int)wlen && memcmp(out, want, wlen) == 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (n < 2)
        return 0;
    hkey k = {d + 2, d[1]};
    if (k.keylen > n - 2)
        k.keylen = n - 2;
    const uint8_t *rest = d + 2 + k.keylen;
    size_t rn = n - 2 - k.keylen;
    switch (d[0] % 3) {
    case 0:
        server(k, rest, rn);
        break;
    case 1:
        client(k, rest, rn);
        break;
    default:
        verify(k, rest, rn);
        break;
    }
    return 0;
}
