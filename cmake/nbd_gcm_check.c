/* nbd_gcm_check: the AES-GCM of the static build's mbedTLS (with
 * cmake/nbd_gcm_alt.c) on test cases from stdin, for
 * tests/integration/test_gcm_alt.py, which compares with OpenSSL.
 *
 * Each input line: KEY IV AAD DATA SPLIT (hex, "-" for empty; SPLIT a
 * decimal byte count, a multiple of 16: mbedtls_gcm_update gets DATA in
 * pieces of that size, 0 = one piece).  Output line: CIPHERTEXT TAG, then
 * DECRYPTED (ciphertext decrypted and checked with auth_decrypt) or
 * "AUTH_FAILED", then REFUSED (auth_decrypt with a changed tag failed,
 * as it must) or ACCEPTED.  NBD_GCM_PORTABLE=1 in the environment takes
 * the portable path instead of AES-NI.  Not installed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbedtls/gcm.h"

static size_t
unhex(const char *s, unsigned char *out)
{
    size_t n = 0;

    if (strcmp(s, "-") == 0)
        return 0;
    while (s[0] && s[1]) {
        unsigned v;
        sscanf(s, "%2x", &v);
        out[n++] = (unsigned char) v;
        s += 2;
    }
    return n;
}

static void
hex(const unsigned char *p, size_t n)
{
    size_t i;

    if (n == 0)
        fputs("-", stdout);
    for (i = 0; i < n; i++)
        printf("%02x", p[i]);
}

int
main(void)
{
    static char line[1 << 20], k[128], iv[1024], aad[8192], data[1 << 19];
    static unsigned char K[64], IV[512], A[4096], P[1 << 18], C[1 << 18], D[1 << 18];
    unsigned char tag[16];
    size_t kl, ivl, al, pl, split, off, n;
    mbedtls_gcm_context g;

    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%127s %1023s %8191s %524287s %zu", k, iv, aad, data,
                   &split) != 5)
            return 2;
        kl = unhex(k, K);
        ivl = unhex(iv, IV);
        al = unhex(aad, A);
        pl = unhex(data, P);
        mbedtls_gcm_init(&g);
        if (mbedtls_gcm_setkey(&g, MBEDTLS_CIPHER_ID_AES, K, (unsigned) kl * 8) ||
            mbedtls_gcm_starts(&g, MBEDTLS_GCM_ENCRYPT, IV, ivl, A, al))
            return 3;
        for (off = 0; off < pl; off += n) {
            n = split && pl - off > split ? split : pl - off;
            if (mbedtls_gcm_update(&g, n, P + off, C + off))
                return 4;
        }
        if (mbedtls_gcm_finish(&g, tag, 16))
            return 5;
        hex(C, pl);
        putchar(' ');
        hex(tag, 16);
        putchar(' ');
        if (mbedtls_gcm_auth_decrypt(&g, pl, IV, ivl, A, al, tag, 16, C, D) == 0)
            hex(D, pl);
        else
            fputs("AUTH_FAILED", stdout);
        tag[0] ^= 1;                    /* a changed tag must fail */
        fputs(mbedtls_gcm_auth_decrypt(&g, pl, IV, ivl, A, al, tag, 16, C, D) ==
              MBEDTLS_ERR_GCM_AUTH_FAILED ? " REFUSED" : " ACCEPTED", stdout);
        putchar('\n');
        mbedtls_gcm_free(&g);
    }
    return 0;
}
