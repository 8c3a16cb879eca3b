/* mbedTLS GCM_ALT context for nbdstack's AES-GCM (cmake/nbd_gcm_alt.c).
 * Included by mbedtls/gcm.h when cmake/nbd_mbedtls_config.h defines
 * MBEDTLS_GCM_ALT (the musl build from Debian's source only). */
#ifndef NBD_GCM_ALT_H
#define NBD_GCM_ALT_H

#include <stdint.h>
#include "mbedtls/aes.h"

typedef struct mbedtls_gcm_context {
    mbedtls_aes_context aes;        /* key schedule (AES-NI's layout too) */
    unsigned char h[16];            /* H = E(K, 0), as GHASH takes it */
    unsigned char hpow[8][16];      /* H^1..H^8 byte-reflected (fast path) */
    unsigned char j0[16];           /* E(K, J0): masks the tag */
    unsigned char ctr[16];          /* the next counter block */
    unsigned char x[16];            /* the GHASH accumulator */
    uint64_t len, add_len;          /* bytes of data and of AAD */
    int mode;
    int fast;                       /* AES-NI and PCLMULQDQ are there */
} mbedtls_gcm_context;

#endif
