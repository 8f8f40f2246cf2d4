/*
 * SHA-256, MD5 and HMAC over either, for the connection handshake
 * (listener.c). Self-contained so libcmp needs no crypto library; internal
 * to libcmp (cmp__ prefix), never installed.
 */
#ifndef CMP_HMAC_H
#define CMP_HMAC_H

#include <stddef.h>
#include <stdint.h>

#define CMP__SHA256_LEN 32
#define CMP__MD5_LEN 16
#define CMP__HASH_BLOCK 64 /* both hashes use 64-byte blocks */

typedef enum { CMP__MD5, CMP__SHA256 } cmp__hash_kind;

typedef struct {
    cmp__hash_kind kind;
    uint32_t h[8];
    uint64_t total; /* bytes hashed so far */
    unsigned char block[CMP__HASH_BLOCK];
    size_t used;
} cmp__hash_ctx;

/* Digest length of a kind (16 or 32). */
size_t cmp__hash_len(cmp__hash_kind kind);
void cmp__hash_init(cmp__hash_ctx *ctx, cmp__hash_kind kind);
void cmp__hash_update(cmp__hash_ctx *ctx, const void *data, size_t len);
/* Writes cmp__hash_len(kind) bytes. */
void cmp__hash_final(cmp__hash_ctx *ctx, unsigned char *out);
void cmp__hash(cmp__hash_kind kind, const void *data, size_t len, unsigned char *out);

/* HMAC (RFC 2104) of data under key; writes cmp__hash_len(kind) bytes. */
void cmp__hmac(cmp__hash_kind kind, const void *key, size_t keylen, const void *data, size_t len,
               unsigned char *out);

/* Constant-time comparison: 1 if equal. */
int cmp__digest_equal(const void *a, const void *b, size_t len);

#endif /* CMP_HMAC_H */
