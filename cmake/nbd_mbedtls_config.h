/* nbdstack's trimmed mbedTLS 2.28 configuration, for the library built
 * from source (cmake/mbedtls.cmake, the static musl binary).  What
 * src/tls.c needs and no more: a TLS 1.2 server and client, AEAD suites
 * only (AES-GCM, ChaCha20-Poly1305) with ECDHE (X.509: RSA or ECDSA
 * keys) or PSK (plain, DHE or ECDHE) key exchange, X.509 certificates in PEM.
 * No renegotiation, no CBC, no TLS 1.0/1.1, no compression.  The glibc
 * builds use Debian's full configuration instead; src/tls.c must build
 * with both. */
#ifndef NBD_MBEDTLS_CONFIG_H
#define NBD_MBEDTLS_CONFIG_H

/* System support */
#define MBEDTLS_HAVE_ASM
#define MBEDTLS_HAVE_TIME
#define MBEDTLS_HAVE_TIME_DATE          /* certificate validity */
#define MBEDTLS_PLATFORM_C
#define MBEDTLS_FS_IO                   /* certificates and keys from files */
#define MBEDTLS_DEPRECATED_REMOVED

/* Symmetric: AES (with AES-NI and PCLMUL through inline asm) in GCM,
 * ChaCha20-Poly1305. */
#define MBEDTLS_AES_C
#define MBEDTLS_AESNI_C
#define MBEDTLS_GCM_C
/* Our AES-GCM (cmake/nbd_gcm_alt.c): whole records with AES-NI and
 * PCLMULQDQ instead of one mbedTLS call per 16-byte block. */
#define MBEDTLS_GCM_ALT
#define MBEDTLS_CHACHA20_C
#define MBEDTLS_POLY1305_C
#define MBEDTLS_CHACHAPOLY_C
#define MBEDTLS_CIPHER_C

/* Hashes */
#define MBEDTLS_MD_C
#define MBEDTLS_SHA1_C                  /* old certificate signatures */
#define MBEDTLS_SHA256_C
#define MBEDTLS_SHA512_C                /* and SHA-384 */

/* Public key: RSA and ECDSA certificates, ECDHE on the usual curves */
#define MBEDTLS_BIGNUM_C
#define MBEDTLS_RSA_C
#define MBEDTLS_PKCS1_V15
#define MBEDTLS_PKCS1_V21
#define MBEDTLS_ECP_C
#define MBEDTLS_ECP_DP_SECP256R1_ENABLED
#define MBEDTLS_ECP_DP_SECP384R1_ENABLED
#define MBEDTLS_ECP_DP_SECP521R1_ENABLED
#define MBEDTLS_ECP_DP_CURVE25519_ENABLED
#define MBEDTLS_ECP_NIST_OPTIM
#define MBEDTLS_ECDH_C
#define MBEDTLS_ECDSA_C
#define MBEDTLS_ECDSA_DETERMINISTIC
#define MBEDTLS_HMAC_DRBG_C
#define MBEDTLS_PK_C
#define MBEDTLS_PK_PARSE_C
#define MBEDTLS_PK_PARSE_EC_EXTENDED

/* Encodings, certificates */
#define MBEDTLS_ASN1_PARSE_C
#define MBEDTLS_ASN1_WRITE_C
#define MBEDTLS_BASE64_C
#define MBEDTLS_PEM_PARSE_C
#define MBEDTLS_OID_C
#define MBEDTLS_X509_USE_C
#define MBEDTLS_X509_CRT_PARSE_C
#define MBEDTLS_X509_CHECK_KEY_USAGE
#define MBEDTLS_X509_CHECK_EXTENDED_KEY_USAGE

/* Randomness */
#define MBEDTLS_ENTROPY_C
#define MBEDTLS_CTR_DRBG_C

/* TLS 1.2 */
#define MBEDTLS_SSL_TLS_C
#define MBEDTLS_SSL_SRV_C
#define MBEDTLS_SSL_CLI_C
#define MBEDTLS_SSL_PROTO_TLS1_2
#define MBEDTLS_SSL_EXTENDED_MASTER_SECRET
#define MBEDTLS_SSL_SERVER_NAME_INDICATION
#define MBEDTLS_SSL_KEEP_PEER_CERTIFICATE  /* the client's name for the log */
#define MBEDTLS_KEY_EXCHANGE_ECDHE_RSA_ENABLED
#define MBEDTLS_KEY_EXCHANGE_ECDHE_ECDSA_ENABLED
#define MBEDTLS_KEY_EXCHANGE_PSK_ENABLED
#define MBEDTLS_KEY_EXCHANGE_ECDHE_PSK_ENABLED
#define MBEDTLS_KEY_EXCHANGE_DHE_PSK_ENABLED   /* PSK with AES-GCM and forward secrecy */
#define MBEDTLS_DHM_C
#define MBEDTLS_REMOVE_ARC4_CIPHERSUITES
#define MBEDTLS_REMOVE_3DES_CIPHERSUITES

#define MBEDTLS_ERROR_C                 /* messages for the log */

#include "mbedtls/check_config.h"

#endif
