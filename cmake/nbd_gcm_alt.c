/* AES-GCM for nbdstack's static binary: mbedTLS 2.28's GCM_ALT.
 *
 * Why: mbedTLS 2.28 runs GCM one 16-byte block at a time, with an AES-NI
 * call and a PCLMUL call per block, and was the bulk of a TLS
 * connection's CPU time (bench/results, perf): about 150 MB/s here.  This
 * file does the same arithmetic on whole records: AES-CTR eight blocks at
 * a time, interleaved so the AES units pipeline, and GHASH with
 * PCLMULQDQ on the same blocks, eight products (Karatsuba: three
 * multiplications each) per reduction: about 3.9 GB/s of CPU time here.
 * Without AES-NI and PCLMULQDQ it falls back to mbedTLS's AES and a
 * bitwise GHASH (slow, correct).
 *
 * Not here: GCM with ciphers other than AES (mbedTLS's cipher layer only
 * asks for AES here: cmake/nbd_mbedtls_config.h has no Camellia or ARIA).
 *
 * Checked by tests/integration/test_gcm_alt.py against OpenSSL (Python's
 * cryptography) over random keys, IVs, AAD and lengths and split
 * updates, and by every TLS test (a wrong tag fails the record).
 */
#include <stdlib.h>
#include <string.h>

#include "mbedtls/gcm.h"
#include "mbedtls/aesni.h"
#include "mbedtls/platform_util.h"

#if defined(MBEDTLS_GCM_ALT)

#include <immintrin.h>

#define GCM_FAST __attribute__((target("aes,pclmul,ssse3,sse4.1")))

/* ---- the fast path: AES-NI and PCLMULQDQ ---------------------------------- */

GCM_FAST static inline __m128i
gcm_bswap(__m128i v)
{
    return _mm_shuffle_epi8(v, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                            11, 12, 13, 14, 15));
}

/* a * b in GF(2^128), operands and result byte-reflected (the Intel
 * carry-less multiplication white paper, algorithm 5): the 256-bit
 * product (gcm_mul256), then shift left by one and reduce (gcm_reduce).
 * The product is linear, so the sum of four products needs one
 * reduction (the paper's aggregated reduction, H^1..H^8). */
GCM_FAST static inline void
gcm_mul256(__m128i a, __m128i b, __m128i *lo, __m128i *hi)
{
    __m128i t3, t4, t5, t6;

    t3 = _mm_clmulepi64_si128(a, b, 0x00);
    t4 = _mm_clmulepi64_si128(a, b, 0x10);
    t5 = _mm_clmulepi64_si128(a, b, 0x01);
    t6 = _mm_clmulepi64_si128(a, b, 0x11);
    t4 = _mm_xor_si128(t4, t5);
    t5 = _mm_slli_si128(t4, 8);
    t4 = _mm_srli_si128(t4, 8);
    *lo = _mm_xor_si128(t3, t5);
    *hi = _mm_xor_si128(t6, t4);
}

GCM_FAST static inline __m128i
gcm_reduce(__m128i t3, __m128i t6)
{
    __m128i t2, t4, t5, t7, t8, t9;

    t7 = _mm_srli_epi32(t3, 31);
    t8 = _mm_srli_epi32(t6, 31);
    t3 = _mm_slli_epi32(t3, 1);
    t6 = _mm_slli_epi32(t6, 1);
    t9 = _mm_srli_si128(t7, 12);
    t8 = _mm_slli_si128(t8, 4);
    t7 = _mm_slli_si128(t7, 4);
    t3 = _mm_or_si128(t3, t7);
    t6 = _mm_or_si128(t6, t8);
    t6 = _mm_or_si128(t6, t9);
    t7 = _mm_slli_epi32(t3, 31);
    t8 = _mm_slli_epi32(t3, 30);
    t9 = _mm_slli_epi32(t3, 25);
    t7 = _mm_xor_si128(t7, t8);
    t7 = _mm_xor_si128(t7, t9);
    t8 = _mm_srli_si128(t7, 4);
    t7 = _mm_slli_si128(t7, 12);
    t3 = _mm_xor_si128(t3, t7);
    t2 = _mm_srli_epi32(t3, 1);
    t4 = _mm_srli_epi32(t3, 2);
    t5 = _mm_srli_epi32(t3, 7);
    t2 = _mm_xor_si128(t2, t4);
    t2 = _mm_xor_si128(t2, t5);
    t2 = _mm_xor_si128(t2, t8);
    t3 = _mm_xor_si128(t3, t2);
    return _mm_xor_si128(t6, t3);
}

GCM_FAST static inline __m128i
gcm_gfmul(__m128i a, __m128i b)
{
    __m128i lo, hi;

    gcm_mul256(a, b, &lo, &hi);
    return gcm_reduce(lo, hi);
}

/* x = (x + c0) H^8 + c1 H^7 + ... + c7 H, one reduction; c reflected,
 * hp = H^1..H^8 reflected, hk[i] = hp[i]'s two halves XORed (in the low
 * half).  Karatsuba: three products per block (low halves, high halves,
 * folded halves), summed over the eight; the middle term is recovered
 * and split into the 256-bit sum once, then one reduction. */
GCM_FAST static inline __m128i
gcm_ghash8(__m128i x, const __m128i *c, const __m128i *hp, const __m128i *hk)
{
    __m128i lo = _mm_setzero_si128(), hi = lo, mid = lo, a;
    int i;

#pragma GCC unroll 8
    for (i = 0; i < 8; i++) {
        a = i == 0 ? _mm_xor_si128(x, c[0]) : c[i];
        lo = _mm_xor_si128(lo, _mm_clmulepi64_si128(a, hp[7 - i], 0x00));
        hi = _mm_xor_si128(hi, _mm_clmulepi64_si128(a, hp[7 - i], 0x11));
        mid = _mm_xor_si128(mid, _mm_clmulepi64_si128(
                  _mm_xor_si128(a, _mm_shuffle_epi32(a, 0x4e)), hk[7 - i], 0x00));
    }
    mid = _mm_xor_si128(mid, _mm_xor_si128(lo, hi));
    lo = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
    hi = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));
    return gcm_reduce(lo, hi);
}

/* Blocks of 16 bytes in, the accumulator x updated. */
GCM_FAST static void
gcm_ghash_fast(mbedtls_gcm_context *ctx, const unsigned char *p, size_t n)
{
    __m128i h = gcm_bswap(_mm_loadu_si128((const __m128i *) ctx->h));
    __m128i x = gcm_bswap(_mm_loadu_si128((const __m128i *) ctx->x));
    size_t i;

    for (i = 0; i < n; i++) {
        x = _mm_xor_si128(x, gcm_bswap(_mm_loadu_si128((const __m128i *) (p + 16 * i))));
        x = gcm_gfmul(x, h);
    }
    _mm_storeu_si128((__m128i *) ctx->x, gcm_bswap(x));
}

/* n counter blocks from ctx->ctr encrypted into ks (n <= 8), the
 * counter advanced: their AES rounds interleave. */
GCM_FAST static inline void
gcm_keystream_fast(mbedtls_gcm_context *ctx, __m128i *ks, unsigned n)
{
    const __m128i *rk = (const __m128i *) ctx->aes.rk;
    __m128i c = gcm_bswap(_mm_loadu_si128((const __m128i *) ctx->ctr));
    const __m128i one = _mm_set_epi32(0, 0, 0, 1);
    int r, nr = ctx->aes.nr;
    unsigned i;

    for (i = 0; i < n; i++) {
        /* inc32: the low 32 bits (of the reflected block) wrap alone. */
        ks[i] = _mm_xor_si128(gcm_bswap(c), _mm_loadu_si128(rk));
        c = _mm_blend_epi16(c, _mm_add_epi32(c, one), 0x03);
    }
    for (r = 1; r < nr; r++) {
        __m128i k = _mm_loadu_si128(rk + r);
        for (i = 0; i < n; i++)
            ks[i] = _mm_aesenc_si128(ks[i], k);
    }
    for (i = 0; i < n; i++)
        ks[i] = _mm_aesenclast_si128(ks[i], _mm_loadu_si128(rk + nr));
    _mm_storeu_si128((__m128i *) ctx->ctr, gcm_bswap(c));
}

/* H^1..H^8, reflected, for gcm_ghash8 (made at setkey). */
GCM_FAST static void
gcm_powers_fast(mbedtls_gcm_context *ctx)
{
    __m128i h = gcm_bswap(_mm_loadu_si128((const __m128i *) ctx->h)), p = h;
    int i;

    for (i = 0; i < 8; i++) {
        _mm_storeu_si128((__m128i *) ctx->hpow[i], p);
        p = gcm_gfmul(p, h);
    }
}

/* Eight counter blocks from ctx's counter c encrypted into ks, c
 * advanced: the loops over the eight are unrolled so that ks stays in
 * registers and the eight AES rounds pipeline. */
GCM_FAST static inline __m128i
gcm_keystream8(const __m128i *rk, int nr, __m128i c, __m128i *ks)
{
    const __m128i one = _mm_set_epi32(0, 0, 0, 1);
    __m128i k = _mm_loadu_si128(rk);
    int r, i;

#pragma GCC unroll 8
    for (i = 0; i < 8; i++) {
        /* inc32: the low 32 bits (of the reflected block) wrap alone. */
        ks[i] = _mm_xor_si128(gcm_bswap(c), k);
        c = _mm_blend_epi16(c, _mm_add_epi32(c, one), 0x03);
    }
    for (r = 1; r < nr; r++) {
        k = _mm_loadu_si128(rk + r);
#pragma GCC unroll 8
        for (i = 0; i < 8; i++)
            ks[i] = _mm_aesenc_si128(ks[i], k);
    }
    k = _mm_loadu_si128(rk + nr);
#pragma GCC unroll 8
    for (i = 0; i < 8; i++)
        ks[i] = _mm_aesenclast_si128(ks[i], k);
    return c;
}

/* Whole blocks: 8 at a time (keystream interleaved, GHASH of the eight
 * with one reduction), then the rest one by one. */
GCM_FAST static void
gcm_crypt_fast(mbedtls_gcm_context *ctx, size_t nblocks,
               const unsigned char *in, unsigned char *out)
{
    __m128i ks[8], c[8], hp[8], hk[8];
    __m128i x = gcm_bswap(_mm_loadu_si128((const __m128i *) ctx->x));
    const __m128i *rk = (const __m128i *) ctx->aes.rk;
    int enc = ctx->mode == MBEDTLS_GCM_ENCRYPT;
    unsigned i, n;

    for (i = 0; i < 8; i++) {
        hp[i] = _mm_loadu_si128((const __m128i *) ctx->hpow[i]);
        hk[i] = _mm_xor_si128(hp[i], _mm_shuffle_epi32(hp[i], 0x4e));
    }
    if (nblocks >= 8) {
        __m128i ctr = gcm_bswap(_mm_loadu_si128((const __m128i *) ctx->ctr));
        for (; nblocks >= 8; nblocks -= 8, in += 128, out += 128) {
            __m128i k8[8];      /* its address never escapes: registers */
            ctr = gcm_keystream8(rk, ctx->aes.nr, ctr, k8);
#pragma GCC unroll 8
            for (i = 0; i < 8; i++) {
                __m128i b = _mm_loadu_si128((const __m128i *) (in + 16 * i));
                __m128i o = _mm_xor_si128(b, k8[i]);
                _mm_storeu_si128((__m128i *) (out + 16 * i), o);
                /* GHASH over the ciphertext: the output when encrypting. */
                c[i] = gcm_bswap(enc ? o : b);
            }
            x = gcm_ghash8(x, c, hp, hk);
        }
        _mm_storeu_si128((__m128i *) ctx->ctr, gcm_bswap(ctr));
    }
    if (nblocks > 0) {
        n = (unsigned) nblocks;
        gcm_keystream_fast(ctx, ks, n);
        for (i = 0; i < n; i++) {
            __m128i b = _mm_loadu_si128((const __m128i *) (in + 16 * i));
            __m128i o = _mm_xor_si128(b, ks[i]);
            _mm_storeu_si128((__m128i *) (out + 16 * i), o);
            x = gcm_gfmul(_mm_xor_si128(x, gcm_bswap(enc ? o : b)), hp[0]);
        }
    }
    _mm_storeu_si128((__m128i *) ctx->x, gcm_bswap(x));
    /* No keystream of the last blocks left on the stack. */
    mbedtls_platform_zeroize(ks, sizeof ks);
}

/* ---- the portable path ---------------------------------------------------- */

/* x = x * h in GF(2^128), bit by bit (NIST SP 800-38D, algorithm 1). */
static void
gcm_gfmul_slow(unsigned char x[16], const unsigned char h[16])
{
    unsigned char z[16] = { 0 }, v[16];
    int i, j, lsb;

    memcpy(v, h, 16);
    for (i = 0; i < 128; i++) {
        if (x[i / 8] & (0x80 >> (i % 8)))
            for (j = 0; j < 16; j++)
                z[j] ^= v[j];
        lsb = v[15] & 1;
        for (j = 15; j > 0; j--)
            v[j] = (unsigned char) ((v[j] >> 1) | (v[j - 1] << 7));
        v[0] >>= 1;
        if (lsb)
            v[0] ^= 0xe1;
    }
    memcpy(x, z, 16);
}

static void
gcm_ghash(mbedtls_gcm_context *ctx, const unsigned char *p, size_t n)
{
    size_t i;
    int j;

    if (ctx->fast) {
        gcm_ghash_fast(ctx, p, n);
        return;
    }
    for (i = 0; i < n; i++) {
        for (j = 0; j < 16; j++)
            ctx->x[j] ^= p[16 * i + j];
        gcm_gfmul_slow(ctx->x, ctx->h);
    }
}

static void
gcm_inc32(unsigned char c[16])
{
    int i;

    for (i = 15; i >= 12; i--)
        if (++c[i] != 0)
            break;
}

/* One keystream block from the counter, the counter advanced. */
static void
gcm_keystream1(mbedtls_gcm_context *ctx, unsigned char ks[16])
{
    if (ctx->fast) {
        __m128i k;
        gcm_keystream_fast(ctx, &k, 1);
        memcpy(ks, &k, 16);
        return;
    }
    mbedtls_aes_crypt_ecb(&ctx->aes, MBEDTLS_AES_ENCRYPT, ctx->ctr, ks);
    gcm_inc32(ctx->ctr);
}

/* ---- the API ---------------------------------------------------------------- */

void
mbedtls_gcm_init(mbedtls_gcm_context *ctx)
{
    memset(ctx, 0, sizeof *ctx);
    mbedtls_aes_init(&ctx->aes);
}

int
mbedtls_gcm_setkey(mbedtls_gcm_context *ctx, mbedtls_cipher_id_t cipher,
                   const unsigned char *key, unsigned int keybits)
{
    static const unsigned char zero[16];
    int r;

    if (cipher != MBEDTLS_CIPHER_ID_AES ||
        (keybits != 128 && keybits != 192 && keybits != 256))
        return MBEDTLS_ERR_GCM_BAD_INPUT;
    mbedtls_aes_free(&ctx->aes);
    mbedtls_aes_init(&ctx->aes);
    if ((r = mbedtls_aes_setkey_enc(&ctx->aes, key, keybits)) != 0)
        return r;
    /* The AES-NI path reads the round keys mbedTLS laid out for its own
     * AES-NI code: only when that code made them. */
    ctx->fast = mbedtls_aesni_has_support(MBEDTLS_AESNI_AES) &&
                mbedtls_aesni_has_support(MBEDTLS_AESNI_CLMUL) &&
                getenv("NBD_GCM_PORTABLE") == NULL;     /* tests */
    if ((r = mbedtls_aes_crypt_ecb(&ctx->aes, MBEDTLS_AES_ENCRYPT, zero,
                                   ctx->h)) != 0)
        return r;
    if (ctx->fast)
        gcm_powers_fast(ctx);
    return 0;
}

int
mbedtls_gcm_starts(mbedtls_gcm_context *ctx, int mode, const unsigned char *iv,
                   size_t iv_len, const unsigned char *add, size_t add_len)
{
    unsigned char block[16];
    size_t full;
    int r;

    if (iv_len == 0 || (uint64_t) iv_len >> 61 != 0 ||
        (uint64_t) add_len >> 61 != 0)
        return MBEDTLS_ERR_GCM_BAD_INPUT;
    ctx->mode = mode;
    ctx->len = 0;
    ctx->add_len = add_len;
    memset(ctx->x, 0, 16);
    if (iv_len == 12) {
        memcpy(ctx->ctr, iv, 12);
        memset(ctx->ctr + 12, 0, 4);
        ctx->ctr[15] = 1;
    } else {
        /* J0 = GHASH(IV || 0-pad || [0]64 || [len(IV)]64) */
        full = iv_len / 16;
        gcm_ghash(ctx, iv, full);
        if (iv_len % 16) {
            memset(block, 0, 16);
            memcpy(block, iv + 16 * full, iv_len % 16);
            gcm_ghash(ctx, block, 1);
        }
        memset(block, 0, 16);
        for (r = 0; r < 8; r++)
            block[15 - r] = (unsigned char) (((uint64_t) iv_len * 8) >> (8 * r));
        gcm_ghash(ctx, block, 1);
        memcpy(ctx->ctr, ctx->x, 16);
        memset(ctx->x, 0, 16);
    }
    /* E(K, J0) masks the tag; the data starts at inc32(J0). */
    if ((r = mbedtls_aes_crypt_ecb(&ctx->aes, MBEDTLS_AES_ENCRYPT, ctx->ctr,
                                   ctx->j0)) != 0)
        return r;
    gcm_inc32(ctx->ctr);
    if (add_len) {
        full = add_len / 16;
        gcm_ghash(ctx, add, full);
        if (add_len % 16) {
            memset(block, 0, 16);
            memcpy(block, add + 16 * full, add_len % 16);
            gcm_ghash(ctx, block, 1);
        }
    }
    return 0;
}

/* As mbedTLS 2.28: every call but the last gives a multiple of 16
 * bytes. */
int
mbedtls_gcm_update(mbedtls_gcm_context *ctx, size_t length,
                   const unsigned char *input, unsigned char *output)
{
    unsigned char ks[16], block[16];
    size_t full = length / 16, rest = length % 16, i;

    if (output > input && (size_t) (output - input) < length)
        return MBEDTLS_ERR_GCM_BAD_INPUT;
    /* Total length at most 2^36 - 32 bytes (NIST SP 800-38D). */
    if (ctx->len + length < ctx->len ||
        (uint64_t) ctx->len + length > 0xFFFFFFFE0ull)
        return MBEDTLS_ERR_GCM_BAD_INPUT;
    ctx->len += length;
    if (ctx->fast)
        gcm_crypt_fast(ctx, full, input, output);
    else
        for (i = 0; i < full; i++) {
            const unsigned char *in = input + 16 * i;
            unsigned char *out = output + 16 * i;
            int j;
            if (ctx->mode == MBEDTLS_GCM_DECRYPT)
                gcm_ghash(ctx, in, 1);
            gcm_keystream1(ctx, ks);
            for (j = 0; j < 16; j++)
                out[j] = in[j] ^ ks[j];
            if (ctx->mode == MBEDTLS_GCM_ENCRYPT)
                gcm_ghash(ctx, out, 1);
        }
    if (rest) {
        const unsigned char *in = input + 16 * full;
        unsigned char *out = output + 16 * full;
        memset(block, 0, 16);
        if (ctx->mode == MBEDTLS_GCM_DECRYPT)
            memcpy(block, in, rest);
        gcm_keystream1(ctx, ks);
        for (i = 0; i < rest; i++)
            out[i] = in[i] ^ ks[i];
        if (ctx->mode == MBEDTLS_GCM_ENCRYPT)
            memcpy(block, out, rest);
        gcm_ghash(ctx, block, 1);
    }
    mbedtls_platform_zeroize(ks, sizeof ks);
    return 0;
}

int
mbedtls_gcm_finish(mbedtls_gcm_context *ctx, unsigned char *tag,
                   size_t tag_len)
{
    unsigned char block[16];
    uint64_t abits = ctx->add_len * 8, cbits = ctx->len * 8;
    size_t i;

    if (tag_len > 16 || tag_len < 4)
        return MBEDTLS_ERR_GCM_BAD_INPUT;
    for (i = 0; i < 8; i++) {
        block[7 - i] = (unsigned char) (abits >> (8 * i));
        block[15 - i] = (unsigned char) (cbits >> (8 * i));
    }
    gcm_ghash(ctx, block, 1);
    for (i = 0; i < tag_len; i++)
        tag[i] = ctx->x[i] ^ ctx->j0[i];
    return 0;
}

int
mbedtls_gcm_crypt_and_tag(mbedtls_gcm_context *ctx, int mode, size_t length,
                          const unsigned char *iv, size_t iv_len,
                          const unsigned char *add, size_t add_len,
                          const unsigned char *input, unsigned char *output,
                          size_t tag_len, unsigned char *tag)
{
    int r;

    if ((r = mbedtls_gcm_starts(ctx, mode, iv, iv_len, add, add_len)) != 0 ||
        (r = mbedtls_gcm_update(ctx, length, input, output)) != 0)
        return r;
    return mbedtls_gcm_finish(ctx, tag, tag_len);
}

int
mbedtls_gcm_auth_decrypt(mbedtls_gcm_context *ctx, size_t length,
                         const unsigned char *iv, size_t iv_len,
                         const unsigned char *add, size_t add_len,
                         const unsigned char *tag, size_t tag_len,
                         const unsigned char *input, unsigned char *output)
{
    unsigned char check[16];
    unsigned char diff = 0;
    size_t i;
    int r;

    if ((r = mbedtls_gcm_crypt_and_tag(ctx, MBEDTLS_GCM_DECRYPT, length, iv,
                                       iv_len, add, add_len, input, output,
                                       tag_len, check)) != 0)
        return r;
    for (i = 0; i < tag_len; i++)       /* constant time */
        diff |= tag[i] ^ check[i];
    mbedtls_platform_zeroize(check, sizeof check);
    if (diff != 0) {
        mbedtls_platform_zeroize(output, length);
        return MBEDTLS_ERR_GCM_AUTH_FAILED;
    }
    return 0;
}

void
mbedtls_gcm_free(mbedtls_gcm_context *ctx)
{
    if (ctx == NULL)
        return;
    mbedtls_aes_free(&ctx->aes);
    mbedtls_platform_zeroize(ctx, sizeof *ctx);
}

#endif /* MBEDTLS_GCM_ALT */
