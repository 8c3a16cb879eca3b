/* nbdstack backend s3: AWS Signature Version 4 (sigv4.c).
 *
 * SHA-256 and HMAC-SHA-256 come from mbedTLS (mbedtls_md), nothing is
 * hand-written.  The signed headers are host, x-amz-content-sha256,
 * x-amz-date and, with a session token, x-amz-security-token: the
 * headers every request of the backend carries; the rest (Range,
 * If-Match, Content-Length) are sent unsigned, which S3 allows. */
#ifndef NBDSTACK_S3_SIGV4_H
#define NBDSTACK_S3_SIGV4_H

#include <stddef.h>
#include <stdint.h>

struct s3_sigv4 {
  const char *method;         /* "GET" */
  const char *host;           /* the Host header: host or host:port */
  const char *path;           /* canonical URI, already encoded: /bucket/key */
  const char *query;          /* canonical query (sorted, encoded), "" = none */
  const char *payload_hash;   /* lowercase hex SHA-256, or "UNSIGNED-PAYLOAD" */
  const char *amz_date;       /* 20261207T025300Z */
  const char *region;         /* us-east-1 */
  const char *access_key;
  const char *secret_key;
  const char *session_token;  /* NULL = none */
};

/* The Authorization header's value into out; 0, or -1 when it does not
 * fit (or the hash fails). */
int s3_sigv4_authorization(const struct s3_sigv4 *r, char *out, size_t outlen);

/* Lowercase hex SHA-256 of buf into hex[65]; 0 or -1. */
int s3_sha256_hex(const void *buf, size_t len, char hex[65]);

/* S3's URI encoding (RFC 3986 unreserved characters kept, the rest
 * %XX uppercase); '/' kept when keep_slash.  Bytes written (without the
 * NUL), or -1 when out is too small. */
int s3_uri_encode(const char *in, int keep_slash, char *out, size_t outlen);

/* x-amz-date of t (UTC) into out[17]. */
void s3_amz_date(int64_t t, char out[17]);

#endif
