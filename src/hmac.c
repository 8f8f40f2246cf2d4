/*
 * SHA-256 (FIPS 180-4), MD5 (RFC 1321) and HMAC (RFC 2104). MD5 is here
 * only because Python <= 3.11 answers the connection challenge with
 * HMAC-MD5; new handshakes use SHA-256.
 */
#include "hmac.h"

#include <string.h>

static inline uint32_t rol(uint32_t x, int n)
{
    return (x << n) | (x >> (32 - n));
}
static inline uint32_t ror(uint32_t x, int n)
{
    return (x >> n) | (x << (32 - n));
}

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static void sha256_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            k + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

static const uint32_t md5_k[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};
static const int md5_r[64] = {7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
                              5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20,
                              4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
                              6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21};

static void md5_block(uint32_t h[4], const unsigned char *p)
{
    uint32_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
               (uint32_t)p[4 * i + 3] << 24;
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    for (int i = 0; i < 64; i++) {
        uint32_t f;
        int g;
        if (i < 16) {
            f = (b & c) | (~b & d);
            g = i;
        } else if (i < 32) {
            f = (d & b) | (~d & c);
            g = (5 * i + 1) % 16;
        } else if (i < 48) {
            f = b ^ c ^ d;
            g = (3 * i + 5) % 16;
        } else {
            f = c ^ (b | ~d);
            g = (7 * i) % 16;
        }
        uint32_t t = d;
        d = c;
        c = b;
        b = b + rol(a + f + md5_k[i] + m[g], md5_r[i]);
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
}

size_t cmp__hash_len(cmp__hash_kind kind)
{
    return kind == CMP__MD5 ? CMP__MD5_LEN : CMP__SHA256_LEN;
}

void cmp__hash_init(cmp__hash_ctx *ctx, cmp__hash_kind kind)
{
    static const uint32_t sha_iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                       0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    static const uint32_t md5_iv[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
    memset(ctx, 0, sizeof *ctx);
    ctx->kind = kind;
    if (kind == CMP__MD5)
        memcpy(ctx->h, md5_iv, sizeof md5_iv);
    else
        memcpy(ctx->h, sha_iv, sizeof sha_iv);
}

static void hash_block(cmp__hash_ctx *ctx, const unsigned char *p)
{
    if (ctx->kind == CMP__MD5)
        md5_block(ctx->h, p);
    else
        sha256_block(ctx->h, p);
}

void cmp__hash_update(cmp__hash_ctx *ctx, const void *data, size_t len)
{
    const unsigned char *p = data;
    ctx->total += len;
    if (ctx->used) {
        size_t take = CMP__HASH_BLOCK - ctx->used;
        if (take > len)
            take = len;
        memcpy(ctx->block + ctx->used, p, take);
        ctx->used += take;
        p += take;
        len -= take;
        if (ctx->used < CMP__HASH_BLOCK)
            return;
        hash_block(ctx, ctx->block);
        ctx->used = 0;
    }
    for (; len >= CMP__HASH_BLOCK; p += CMP__HASH_BLOCK, len -= CMP__HASH_BLOCK)
        hash_block(ctx, p);
    memcpy(ctx->block, p, len);
    ctx->used = len;
}

void cmp__hash_final(cmp__hash_ctx *ctx, unsigned char *out)
{
    uint64_t bits = ctx->total * 8;
    unsigned char pad[CMP__HASH_BLOCK + 8] = {0x80};
    size_t padlen = (ctx->used < 56 ? 56 : 120) - ctx->used;
    cmp__hash_update(ctx, pad, padlen);
    unsigned char lenbytes[8];
    for (int i = 0; i < 8; i++) /* MD5 is little-endian, SHA-2 big-endian */
        lenbytes[i] =
            (unsigned char)(ctx->kind == CMP__MD5 ? bits >> (8 * i) : bits >> (56 - 8 * i));
    cmp__hash_update(ctx, lenbytes, 8);
    if (ctx->kind == CMP__MD5) {
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
                out[4 * i + j] = (unsigned char)(ctx->h[i] >> (8 * j));
    } else {
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 4; j++)
                out[4 * i + j] = (unsigned char)(ctx->h[i] >> (24 - 8 * j));
    }
}

void cmp__hash(cmp__hash_kind kind, const void *data, size_t len, unsigned char *out)
{
    cmp__hash_ctx ctx;
    cmp__hash_init(&ctx, kind);
    cmp__hash_update(&ctx, data, len);
    cmp__hash_final(&ctx, out);
}

void cmp__hmac(cmp__hash_kind kind, const void *key, size_t keylen, const void *data, size_t len,
               unsigned char *out)
{
    unsigned char k[CMP__HASH_BLOCK] = {0}, pad[CMP__HASH_BLOCK], inner[CMP__SHA256_LEN];
    if (keylen > CMP__HASH_BLOCK)
        cmp__hash(kind, key, keylen, k);
    else if (keylen)
        memcpy(k, key, keylen);
    cmp__hash_ctx ctx;
    for (int i = 0; i < CMP__HASH_BLOCK; i++)
        pad[i] = k[i] ^ 0x36;
    cmp__hash_init(&ctx, kind);
    cmp__hash_update(&ctx, pad, sizeof pad);
    cmp__hash_update(&ctx, data, len);
    cmp__hash_final(&ctx, inner);
    for (int i = 0; i < CMP__HASH_BLOCK; i++)
        pad[i] = k[i] ^ 0x5c;
    cmp__hash_init(&ctx, kind);
    cmp__hash_update(&ctx, pad, sizeof pad);
    cmp__hash_update(&ctx, inner, cmp__hash_len(kind));
    cmp__hash_final(&ctx, out);
}

int cmp__digest_equal(const void *a, const void *b, size_t len)
{
    const volatile unsigned char *x = a, *y = b;
    unsigned char diff = 0;
    for (size_t i = 0; i < len; i++)
        diff |= x[i] ^ y[i];
    return diff == 0;
}
