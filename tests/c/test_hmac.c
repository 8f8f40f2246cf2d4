/* SHA-256, MD5 and HMAC against the published vectors (FIPS 180-4,
 * RFC 1321, RFC 4231, RFC 2202). */
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hmac.h"

static void hex(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void check_hash(cmp__hash_kind kind, const void *msg, size_t len, const char *want)
{
    unsigned char d[CMP__SHA256_LEN];
    char got[2 * CMP__SHA256_LEN + 1];
    cmp__hash(kind, msg, len, d);
    hex(d, cmp__hash_len(kind), got);
    cr_assert_str_eq(got, want);
}

static void check_hmac(cmp__hash_kind kind, const void *key, size_t keylen, const char *msg,
                       const char *want)
{
    unsigned char d[CMP__SHA256_LEN];
    char got[2 * CMP__SHA256_LEN + 1];
    cmp__hmac(kind, key, keylen, msg, strlen(msg), d);
    hex(d, cmp__hash_len(kind), got);
    cr_assert_str_eq(got, want);
}

static const char nist2[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";

Test(hmac, sha256_vectors, .timeout = 10)
{
    check_hash(CMP__SHA256, "", 0,
               "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    check_hash(CMP__SHA256, "abc", 3,
               "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    check_hash(CMP__SHA256, nist2, strlen(nist2),
               "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char *million = malloc(1000000);
    memset(million, 'a', 1000000);
    check_hash(CMP__SHA256, million, 1000000,
               "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(million);
}

Test(hmac, md5_vectors, .timeout = 10)
{
    check_hash(CMP__MD5, "", 0, "d41d8cd98f00b204e9800998ecf8427e");
    check_hash(CMP__MD5, "abc", 3, "900150983cd24fb0d6963f7d28e17f72");
    check_hash(CMP__MD5, nist2, strlen(nist2), "8215ef0796a20bcaaae116d3876c664a");
    char *million = malloc(1000000);
    memset(million, 'a', 1000000);
    check_hash(CMP__MD5, million, 1000000, "7707d6ae4e027c70eea2a935c2296f21");
    free(million);
}

/* Feeding the data in pieces of every size gives the one-shot digest. */
Test(hmac, incremental_matches_one_shot, .timeout = 10)
{
    unsigned char data[300];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)(i * 7 + 3);
    for (int kind = CMP__MD5; kind <= CMP__SHA256; kind++) {
        unsigned char want[CMP__SHA256_LEN], got[CMP__SHA256_LEN];
        cmp__hash((cmp__hash_kind)kind, data, sizeof data, want);
        for (size_t step = 1; step < 130; step++) {
            cmp__hash_ctx ctx;
            cmp__hash_init(&ctx, (cmp__hash_kind)kind);
            for (size_t off = 0; off < sizeof data; off += step)
                cmp__hash_update(&ctx, data + off,
                                 off + step > sizeof data ? sizeof data - off : step);
            cmp__hash_final(&ctx, got);
            cr_assert_arr_eq(got, want, cmp__hash_len((cmp__hash_kind)kind), "step %zu", step);
        }
    }
}

Test(hmac, hmac_sha256_rfc4231, .timeout = 10)
{
    unsigned char k1[20], k3[131];
    memset(k1, 0x0b, sizeof k1);
    memset(k3, 0xaa, sizeof k3);
    check_hmac(CMP__SHA256, k1, sizeof k1, "Hi There",
               "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    check_hmac(CMP__SHA256, "Jefe", 4, "what do ya want for nothing?",
               "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    check_hmac(CMP__SHA256, k3, sizeof k3, "Test Using Larger Than Block-Size Key - Hash Key First",
               "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

Test(hmac, hmac_md5_rfc2202, .timeout = 10)
{
    unsigned char k1[16], k3[80];
    memset(k1, 0x0b, sizeof k1);
    memset(k3, 0xaa, sizeof k3);
    check_hmac(CMP__MD5, k1, sizeof k1, "Hi There", "9294727a3638bb1c13f48ef8158bfc9d");
    check_hmac(CMP__MD5, "Jefe", 4, "what do ya want for nothing?",
               "750c783e6ab0b503eaa86e310a5db738");
    check_hmac(CMP__MD5, k3, sizeof k3, "Test Using Larger Than Block-Size Key - Hash Key First",
               "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd");
}

Test(hmac, digest_equal, .timeout = 5)
{
    cr_assert(cmp__digest_equal("abcd", "abcd", 4));
    cr_assert(!cmp__digest_equal("abcd", "abce", 4));
    cr_assert(cmp__digest_equal("", "x", 0));
}
