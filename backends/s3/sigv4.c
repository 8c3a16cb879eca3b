/* nbdstack backend s3: AWS Signature Version 4 with mbedTLS's SHA-256 and
 * HMAC (see sigv4.h).  The canonical request, string to sign and signing
 * key are those of the AWS documentation ("Create a signed AWS API
 * request"); tests/check_s3_sigv4.c compares the result with botocore's. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <mbedtls/md.h>

#include "sigv4.h"

static void
s3_hex(const unsigned char *in, size_t n, char *out)
{
  static const char digits[] = "0123456789abcdef";
  size_t i;

  for (i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

int
s3_sha256_hex(const void *buf, size_t len, char hex[65])
{
  unsigned char d[32];
  const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);

  if (md == NULL || mbedtls_md(md, buf, len, d) != 0)
    return -1;
  s3_hex(d, sizeof d, hex);
  return 0;
}

static int
s3_hmac(const void *key, size_t keylen, const char *msg, unsigned char out[32])
{
  const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);

  if (md == NULL)
    return -1;
  return mbedtls_md_hmac(md, key, keylen, (const unsigned char *)msg,
                         strlen(msg), out) == 0 ? 0 : -1;
}

int
s3_uri_encode(const char *in, int keep_slash, char *out, size_t outlen)
{
  static const char digits[] = "0123456789ABCDEF";
  size_t o = 0;
  const unsigned char *p;

  for (p = (const unsigned char *)in; *p; p++) {
    int plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' ||
                *p == '.' || *p == '~' || (keep_slash && *p == '/');
    if (o + (plain ? 1 : 3) >= outlen)
      return -1;
    if (plain)
      out[o++] = (char)*p;
    else {
      out[o++] = '%';
      out[o++] = digits[*p >> 4];
      out[o++] = digits[*p & 15];
    }
  }
  if (o >= outlen)
    return -1;
  out[o] = '\0';
  return (int)o;
}

void
s3_amz_date(int64_t t, char out[17])
{
  struct tm tm;
  time_t tt = (time_t)t;

  gmtime_r(&tt, &tm);
  strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

int
s3_sigv4_authorization(const struct s3_sigv4 *r, char *out, size_t outlen)
{
  char creq[8192], sts[512], scope[128], hash[65], date[9], sig[65];
  unsigned char k1[32], k2[32], k3[32], k4[32], s[32];
  char secret[300];
  const char *signed_headers = r->session_token
    ? "host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
    : "host;x-amz-content-sha256;x-amz-date";
  int n;

  if (strlen(r->amz_date) != 16)
    return -1;
  memcpy(date, r->amz_date, 8);
  date[8] = '\0';
  /* Canonical request: method, URI, query, headers (lowercase names,
   * sorted, each line ending in \n, then an empty line), signed header
   * names, payload hash. */
  n = snprintf(creq, sizeof creq,
               "%s\n%s\n%s\nhost:%s\nx-amz-content-sha256:%s\n"
               "x-amz-date:%s\n%s%s%s\n%s\n%s",
               r->method, r->path, r->query, r->host, r->payload_hash,
               r->amz_date,
               r->session_token ? "x-amz-security-token:" : "",
               r->session_token ? r->session_token : "",
               r->session_token ? "\n" : "",
               signed_headers, r->payload_hash);
  if (n < 0 || (size_t)n >= sizeof creq)
    return -1;
  if (s3_sha256_hex(creq, (size_t)n, hash) == -1)
    return -1;
  n = snprintf(scope, sizeof scope, "%s/%s/s3/aws4_request", date, r->region);
  if (n < 0 || (size_t)n >= sizeof scope)
    return -1;
  n = snprintf(sts, sizeof sts, "AWS4-HMAC-SHA256\n%s\n%s\n%s",
               r->amz_date, scope, hash);
  if (n < 0 || (size_t)n >= sizeof sts)
    return -1;
  /* Signing key: HMAC chain over date, region, service, terminator. */
  n = snprintf(secret, sizeof secret, "AWS4%s", r->secret_key);
  if (n < 0 || (size_t)n >= sizeof secret)
    return -1;
  if (s3_hmac(secret, (size_t)n, date, k1) == -1 ||
      s3_hmac(k1, 32, r->region, k2) == -1 ||
      s3_hmac(k2, 32, "s3", k3) == -1 ||
      s3_hmac(k3, 32, "aws4_request", k4) == -1 ||
      s3_hmac(k4, 32, sts, s) == -1)
    return -1;
  memset(secret, 0, sizeof secret);
  s3_hex(s, sizeof s, sig);
  n = snprintf(out, outlen,
               "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, "
               "Signature=%s", r->access_key, scope, signed_headers, sig);
  return n < 0 || (size_t)n >= outlen ? -1 : 0;
}
