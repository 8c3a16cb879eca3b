/* nbdstack backend s3: a small HTTP/1.1 client (http.c) with a pool of
 * keep-alive connections, plain or TLS (mbedTLS), and the bounded parsers
 * of what S3 answers: the status line and headers, chunked bodies, and
 * the few XML elements of LIST and error bodies.  The parsers take
 * buffers only, so tests/fuzz/fuzz_s3.c runs them on any input. */
#ifndef NBDSTACK_S3_HTTP_H
#define NBDSTACK_S3_HTTP_H

#include <stddef.h>
#include <stdint.h>

/* Limits: a response head, an error or LIST body kept in memory. */
#define S3_HTTP_HEAD_MAX  16384
#define S3_HTTP_BODY_MAX  (4u << 20)
#define S3_HTTP_ETAG_MAX  128

struct s3_http_head {
  int status;                 /* 100..599 */
  int64_t content_length;     /* -1 = not given */
  int chunked;                /* Transfer-Encoding: chunked */
  int close;                  /* Connection: close, or HTTP/1.0 */
  char etag[S3_HTTP_ETAG_MAX];/* ETag without its quotes, "" = none */
};

/* Parses the head at buf (status line, headers, empty line).  Returns
 * its length including the empty line, 0 when buf does not hold all of
 * it yet (and len < S3_HTTP_HEAD_MAX), or -1 when it is malformed or
 * longer than S3_HTTP_HEAD_MAX. */
int s3_http_parse_head(const char *buf, size_t len, struct s3_http_head *h);

/* Parses a chunk-size line ("1a2b[;ext]\r\n") at buf: its length, 0 when
 * incomplete, -1 when malformed; *size the chunk's size. */
int s3_http_parse_chunk_line(const char *buf, size_t len, uint64_t *size);

/* Finds the next <tag>value</tag> in xml[*pos, len), decodes the five
 * XML entities and numeric references of value into out (NUL-terminated)
 * and moves *pos past it.  1 found, 0 none left, -1 malformed or the
 * value does not fit outlen. */
int s3_xml_next(const char *xml, size_t len, size_t *pos, const char *tag,
                char *out, size_t outlen);

/* Whether a listed key is prefix followed by exactly 16 lowercase hex
 * digits, the name of a block object (nbdkit's "%016x"); 1 with *blk its
 * number, else 0.  Anything else under the prefix is not a block: the
 * lease, a foreign object, and the forms strtoull would take (blanks, a
 * sign, "0x", upper case: S3 names are case-sensitive, so
 * "KEY/000000000000000A" is not block 10). */
int s3_block_key(const char *key, const char *prefix, uint64_t *blk);

/* ---- the client --------------------------------------------------------- */

struct s3_pool;

struct s3_pool_conf {
  const char *host;           /* name or address to connect to */
  const char *port;
  int tls;
  int tls_verify;
  const char *tls_ca;         /* PEM file, NULL = the system's */
  const char *sni;            /* the name TLS verifies */
  unsigned max_conns;
  unsigned timeout_s;         /* per send or receive */
};

/* NULL with err filled on failure. */
struct s3_pool *s3_pool_new(const struct s3_pool_conf *c, char *err,
                            size_t errlen);
void s3_pool_free(struct s3_pool *p);

struct s3_http_req {
  const char *method;
  const char *target;         /* /bucket/key?query */
  const char *headers;        /* header lines, each ending in \r\n, Host
                               * among them (the one the caller signed) */
  const void *body;
  size_t body_len;
  /* A 2xx body goes to dst (at most dst_cap bytes, more is an error);
   * without dst, and for any other status, into a malloc'd resp->body of
   * at most S3_HTTP_BODY_MAX bytes. */
  void *dst;
  size_t dst_cap;
};

struct s3_http_resp {
  struct s3_http_head head;
  size_t body_len;
  char *body;                 /* malloc'd, NUL-terminated; caller frees */
};

/* Sends the request on a pooled connection (a fresh one if a kept one
 * turns out closed) and reads the answer.  0, or -errno for a network
 * error, timeout or malformed answer (with a log line in err). */
int s3_http_do(struct s3_pool *p, const struct s3_http_req *rq,
               struct s3_http_resp *rs, char *err, size_t errlen);

#endif
