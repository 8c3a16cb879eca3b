/* nbdstack backend s3: HTTP/1.1 client and response parsers (http.h). */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "http.h"

/* ---- parsers ------------------------------------------------------------ */

/* The end of the line starting at p (the '\r' of "\r\n"), or NULL. */
static const char *
s3_line_end(const char *p, const char *end)
{
  for (; p + 1 < end; p++)
    if (p[0] == '\r' && p[1] == '\n')
      return p;
  return NULL;
}

/* Parses a decimal number of [p, end) into *v; 0 or -1. */
static int
s3_parse_u64(const char *p, const char *end, uint64_t *v)
{
  uint64_t n = 0;

  while (p < end && (*p == ' ' || *p == '\t'))
    p++;
  while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
    end--;
  if (p == end)
    return -1;
  for (; p < end; p++) {
    if (*p < '0' || *p > '9' || n > (UINT64_MAX - 9) / 10)
      return -1;
    n = n * 10 + (uint64_t)(*p - '0');
  }
  *v = n;
  return 0;
}

static int
s3_header_is(const char *name, size_t nlen, const char *want)
{
  return strlen(want) == nlen && strncasecmp(name, want, nlen) == 0;
}

/* Whether the comma-separated list [v, end) holds token, any case. */
static int
s3_has_token(const char *v, const char *end, const char *token)
{
  size_t tl = strlen(token);

  while (v < end) {
    const char *c = memchr(v, ',', (size_t)(end - v)), *e = c ? c : end;
    while (v < e && (*v == ' ' || *v == '\t'))
      v++;
    const char *t = e;
    while (t > v && (t[-1] == ' ' || t[-1] == '\t'))
      t--;
    if ((size_t)(t - v) == tl && strncasecmp(v, token, tl) == 0)
      return 1;
    v = c ? c + 1 : end;
  }
  return 0;
}

int
s3_http_parse_head(const char *buf, size_t len, struct s3_http_head *h)
{
  const char *end = buf + (len > S3_HTTP_HEAD_MAX ? S3_HTTP_HEAD_MAX : len);
  const char *p = buf, *eol;
  int minor;

  memset(h, 0, sizeof *h);
  h->content_length = -1;
  /* Status line: HTTP/1.x SP 3DIGIT [SP reason] */
  if ((eol = s3_line_end(p, end)) == NULL)
    goto incomplete;
  if (eol - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 ||
      (p[7] != '0' && p[7] != '1') || p[8] != ' ' ||
      p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' ||
      p[11] < '0' || p[11] > '9' || (eol - p > 12 && p[12] != ' '))
    return -1;
  minor = p[7] - '0';
  h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
  h->close = minor == 0;
  p = eol + 2;
  for (;;) {
    const char *colon, *v, *ve;
    size_t nlen;

    if ((eol = s3_line_end(p, end)) == NULL)
      goto incomplete;
    if (eol == p)
      return (int)(eol + 2 - buf);
    if ((colon = memchr(p, ':', (size_t)(eol - p))) == NULL || colon == p)
      return -1;
    nlen = (size_t)(colon - p);
    for (v = p; v < colon; v++)
      if (*v <= ' ' || *v >= 127)
        return -1;
    v = colon + 1;
    ve = eol;
    while (v < ve && (*v == ' ' || *v == '\t'))
      v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
      ve--;
    if (s3_header_is(p, nlen, "content-length")) {
      uint64_t n;
      if (s3_parse_u64(v, ve, &n) == -1 || n > INT64_MAX ||
          (h->content_length >= 0 && (uint64_t)h->content_length != n))
        return -1;
      h->content_length = (int64_t)n;
    } else if (s3_header_is(p, nlen, "transfer-encoding")) {
      if (s3_has_token(v, ve, "chunked"))
        h->chunked = 1;
      else if (!s3_has_token(v, ve, "identity"))
        return -1;              /* gzip and the like: never asked for */
    } else if (s3_header_is(p, nlen, "connection")) {
      if (s3_has_token(v, ve, "close"))
        h->close = 1;
      else if (s3_has_token(v, ve, "keep-alive"))
        h->close = 0;
    } else if (s3_header_is(p, nlen, "etag")) {
      size_t n;
      if (ve - v >= 2 && *v == '"' && ve[-1] == '"') {
        v++;
        ve--;
      }
      n = (size_t)(ve - v);
      if (n >= sizeof h->etag)
        return -1;
      memcpy(h->etag, v, n);
      h->etag[n] = '\0';
    }
    p = eol + 2;
  }
incomplete:
  return len >= S3_HTTP_HEAD_MAX ? -1 : 0;
}

int
s3_http_parse_chunk_line(const char *buf, size_t len, uint64_t *size)
{
  const char *end = buf + (len > 1024 ? 1024 : len), *eol, *p;
  uint64_t n = 0;
  int digits = 0;

  if ((eol = s3_line_end(buf, end)) == NULL)
    return len >= 1024 ? -1 : 0;
  for (p = buf; p < eol; p++) {
    int d;
    if (*p >= '0' && *p <= '9') d = *p - '0';
    else if (*p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
    else if (*p >= 'A' && *p <= 'F') d = *p - 'A' + 10;
    else break;
    if (n >> 60)
      return -1;
    n = n << 4 | (uint64_t)d;
    digits++;
  }
  if (digits == 0 || (p < eol && *p != ';' && *p != ' ' && *p != '\t'))
    return -1;
  *size = n;
  return (int)(eol + 2 - buf);
}

int
s3_xml_next(const char *xml, size_t len, size_t *pos, const char *tag,
            char *out, size_t outlen)
{
  char open[64], close[64];
  const char *p, *end = xml + len, *v, *ve;
  size_t o = 0, ol, cl;

  if (*pos > len || outlen == 0)
    return -1;
  ol = (size_t)snprintf(open, sizeof open, "<%s>", tag);
  cl = (size_t)snprintf(close, sizeof close, "</%s>", tag);
  if (ol >= sizeof open || cl >= sizeof close)
    return -1;
  p = memmem(xml + *pos, len - *pos, open, ol);
  if (p == NULL)
    return 0;
  v = p + ol;
  ve = memmem(v, (size_t)(end - v), close, cl);
  if (ve == NULL)
    return -1;
  while (v < ve) {
    unsigned long c;
    if (*v == '<')
      return -1;                /* markup inside: not a simple element */
    if (*v != '&') {
      c = (unsigned char)*v++;
    } else {
      const char *semi = memchr(v, ';', (size_t)(ve - v));
      size_t n;
      if (semi == NULL || (n = (size_t)(semi - v - 1)) == 0 || n > 10)
        return -1;
      if (n == 3 && memcmp(v + 1, "amp", 3) == 0) c = '&';
      else if (n == 2 && memcmp(v + 1, "lt", 2) == 0) c = '<';
      else if (n == 2 && memcmp(v + 1, "gt", 2) == 0) c = '>';
      else if (n == 4 && memcmp(v + 1, "quot", 4) == 0) c = '"';
      else if (n == 4 && memcmp(v + 1, "apos", 4) == 0) c = '\'';
      else if (v[1] == '#') {
        char num[12], *e;
        int hex = n > 1 && (v[2] == 'x' || v[2] == 'X');
        if (n - 1 - (size_t)hex == 0)
          return -1;
        memcpy(num, v + 2 + hex, n - 1 - (size_t)hex);
        num[n - 1 - (size_t)hex] = '\0';
        if (num[0] == '-' || num[0] == '+' || num[0] == ' ')
          return -1;
        c = strtoul(num, &e, hex ? 16 : 10);
        if (*e || c == 0 || c > 0x10ffff)
          return -1;
      } else
        return -1;
      v = semi + 1;
    }
    /* UTF-8 of c */
    {
      unsigned char u[4];
      size_t k = 0, i;
      if (c < 0x80) u[k++] = (unsigned char)c;
      else if (c < 0x800) {
        u[k++] = (unsigned char)(0xc0 | c >> 6);
        u[k++] = (unsigned char)(0x80 | (c & 0x3f));
      } else if (c < 0x10000) {
        u[k++] = (unsigned char)(0xe0 | c >> 12);
        u[k++] = (unsigned char)(0x80 | (c >> 6 & 0x3f));
        u[k++] = (unsigned char)(0x80 | (c & 0x3f));
      } else {
        u[k++] = (unsigned char)(0xf0 | c >> 18);
        u[k++] = (unsigned char)(0x80 | (c >> 12 & 0x3f));
        u[k++] = (unsigned char)(0x80 | (c >> 6 & 0x3f));
        u[k++] = (unsigned char)(0x80 | (c & 0x3f));
      }
      if (o + k >= outlen)
        return -1;
      for (i = 0; i < k; i++)
        out[o++] = (char)u[i];
    }
  }
  out[o] = '\0';
  *pos = (size_t)(ve + cl - xml);
  return 1;
}

int
s3_block_key(const char *key, const char *prefix, uint64_t *blk)
{
  size_t plen = strlen(prefix), i;
  uint64_t n = 0;

  if (strncmp(key, prefix, plen) != 0 || strlen(key + plen) != 16)
    return 0;
  for (i = plen; i < plen + 16; i++) {
    char ch = key[i];
    if (ch >= '0' && ch <= '9')
      n = n << 4 | (uint64_t)(ch - '0');
    else if (ch >= 'a' && ch <= 'f')
      n = n << 4 | (uint64_t)(ch - 'a' + 10);
    else
      return 0;
  }
  *blk = n;
  return 1;
}

/* ---- connections -------------------------------------------------------- */

struct s3_conn {
  struct s3_conn *next;       /* idle list */
  int fd;
  int tls;
  mbedtls_ssl_context ssl;
  size_t rpos, rlen;
  char rbuf[S3_HTTP_HEAD_MAX];
};

struct s3_pool {
  struct s3_pool_conf c;
  char *host, *port, *ca, *sni;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  struct s3_conn *idle;
  unsigned n;                 /* connections in use or idle */
  /* TLS: one configuration for every connection */
  mbedtls_ssl_config conf;
  mbedtls_x509_crt cacert;
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  pthread_mutex_t rng_lock;
};

static void
s3_tls_err(char *err, size_t errlen, const char *what, int r)
{
  char b[128];

  mbedtls_strerror(r, b, sizeof b);
  snprintf(err, errlen, "%s: %s", what, b);
}

static int
s3_rng(void *arg, unsigned char *out, size_t len)
{
  struct s3_pool *p = arg;
  int r;

  pthread_mutex_lock(&p->rng_lock);
  r = mbedtls_ctr_drbg_random(&p->drbg, out, len);
  pthread_mutex_unlock(&p->rng_lock);
  return r;
}

struct s3_pool *
s3_pool_new(const struct s3_pool_conf *c, char *err, size_t errlen)
{
  struct s3_pool *p = calloc(1, sizeof *p);
  static const char *const bundles[] = {
    "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem", NULL,
  };
  int r;

  if (p == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  p->c = *c;
  p->host = strdup(c->host);
  p->port = strdup(c->port);
  p->sni = strdup(c->sni ? c->sni : c->host);
  p->ca = c->tls_ca ? strdup(c->tls_ca) : NULL;
  p->c.host = p->host;
  p->c.port = p->port;
  p->c.sni = p->sni;
  p->c.tls_ca = p->ca;
  if (p->c.max_conns == 0)
    p->c.max_conns = 1;
  pthread_mutex_init(&p->lock, NULL);
  pthread_mutex_init(&p->rng_lock, NULL);
  pthread_cond_init(&p->cond, NULL);
  mbedtls_ssl_config_init(&p->conf);
  mbedtls_x509_crt_init(&p->cacert);
  mbedtls_entropy_init(&p->entropy);
  mbedtls_ctr_drbg_init(&p->drbg);
  if (p->host == NULL || p->port == NULL || p->sni == NULL ||
      (c->tls_ca && p->ca == NULL)) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (!c->tls)
    return p;
  if ((r = mbedtls_ctr_drbg_seed(&p->drbg, mbedtls_entropy_func, &p->entropy,
                                 (const unsigned char *)"nbdstack-s3", 11))) {
    s3_tls_err(err, errlen, "TLS random generator", r);
    goto fail;
  }
  if ((r = mbedtls_ssl_config_defaults(&p->conf, MBEDTLS_SSL_IS_CLIENT,
                                       MBEDTLS_SSL_TRANSPORT_STREAM,
                                       MBEDTLS_SSL_PRESET_DEFAULT))) {
    s3_tls_err(err, errlen, "TLS configuration", r);
    goto fail;
  }
  mbedtls_ssl_conf_rng(&p->conf, s3_rng, p);
  if (c->tls_verify) {
    const char *ca = p->ca;
    size_t i;
    for (i = 0; ca == NULL && bundles[i]; i++)
      if (access(bundles[i], R_OK) == 0)
        ca = bundles[i];
    if (ca == NULL) {
      snprintf(err, errlen, "tls-verify=true needs tls-ca= (no system CA "
               "bundle found)");
      goto fail;
    }
    if ((r = mbedtls_x509_crt_parse_file(&p->cacert, ca)) < 0) {
      char what[300];
      snprintf(what, sizeof what, "tls-ca %s", ca);
      s3_tls_err(err, errlen, what, r);
      goto fail;
    }
    mbedtls_ssl_conf_ca_chain(&p->conf, &p->cacert, NULL);
    mbedtls_ssl_conf_authmode(&p->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
  } else
    mbedtls_ssl_conf_authmode(&p->conf, MBEDTLS_SSL_VERIFY_NONE);
  return p;
fail:
  s3_pool_free(p);
  return NULL;
}

static void
s3_conn_free(struct s3_conn *c)
{
  if (c == NULL)
    return;
  if (c->tls)
    mbedtls_ssl_free(&c->ssl);
  if (c->fd >= 0)
    close(c->fd);
  free(c);
}

void
s3_pool_free(struct s3_pool *p)
{
  struct s3_conn *c;

  if (p == NULL)
    return;
  while ((c = p->idle) != NULL) {
    p->idle = c->next;
    s3_conn_free(c);
  }
  mbedtls_ssl_config_free(&p->conf);
  mbedtls_x509_crt_free(&p->cacert);
  mbedtls_ctr_drbg_free(&p->drbg);
  mbedtls_entropy_free(&p->entropy);
  pthread_mutex_destroy(&p->lock);
  pthread_mutex_destroy(&p->rng_lock);
  pthread_cond_destroy(&p->cond);
  free(p->host);
  free(p->port);
  free(p->sni);
  free(p->ca);
  free(p);
}

static int
s3_bio_send(void *arg, const unsigned char *buf, size_t len)
{
  struct s3_conn *c = arg;
  ssize_t r = send(c->fd, buf, len, MSG_NOSIGNAL);

  if (r >= 0)
    return (int)r;
  return errno == EINTR ? MBEDTLS_ERR_SSL_WANT_WRITE : MBEDTLS_ERR_NET_SEND_FAILED;
}

static int
s3_bio_recv(void *arg, unsigned char *buf, size_t len)
{
  struct s3_conn *c = arg;
  ssize_t r = recv(c->fd, buf, len, 0);

  if (r >= 0)
    return (int)r;
  return errno == EINTR ? MBEDTLS_ERR_SSL_WANT_READ : MBEDTLS_ERR_NET_RECV_FAILED;
}

static int
s3_connect(struct s3_pool *p, struct s3_conn **out, char *err, size_t errlen)
{
  struct addrinfo hints, *res, *ai;
  struct s3_conn *c;
  struct timeval tv = { (time_t)p->c.timeout_s, 0 };
  size_t hl;
  int fd = -1, e = ECONNREFUSED, one = 1, r, loop;

  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  /* NAME.localhost is the loopback (RFC 6761 6.3, as curl resolves it):
   * virtual addressing of a store on this host (BUCKET.localhost) needs
   * no /etc/hosts entry. */
  hl = strlen(p->host);
  loop = hl > 10 && strcasecmp(p->host + hl - 10, ".localhost") == 0;
  if ((r = getaddrinfo(loop ? "localhost" : p->host, p->port, &hints,
                       &res)) != 0) {
    snprintf(err, errlen, "%s:%s: %s", p->host, p->port, gai_strerror(r));
    return -EHOSTUNREACH;
  }
  for (ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd == -1) {
      e = errno;
      continue;
    }
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
      break;
    e = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd == -1) {
    snprintf(err, errlen, "connect to %s:%s: %s", p->host, p->port,
             strerror(e));
    return -e;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if ((c = calloc(1, sizeof *c)) == NULL) {
    close(fd);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  c->fd = fd;
  if (p->c.tls) {
    c->tls = 1;
    mbedtls_ssl_init(&c->ssl);
    if ((r = mbedtls_ssl_setup(&c->ssl, &p->conf)) != 0 ||
        (r = mbedtls_ssl_set_hostname(&c->ssl, p->sni)) != 0) {
      s3_tls_err(err, errlen, "TLS setup", r);
      s3_conn_free(c);
      return -EIO;
    }
    mbedtls_ssl_set_bio(&c->ssl, c, s3_bio_send, s3_bio_recv, NULL);
    while ((r = mbedtls_ssl_handshake(&c->ssl)) != 0) {
      if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE)
        continue;
      s3_tls_err(err, errlen, "TLS handshake", r);
      if (r == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
        char v[256];
        mbedtls_x509_crt_verify_info(v, sizeof v, "",
                                     mbedtls_ssl_get_verify_result(&c->ssl));
        v[strcspn(v, "\n")] = '\0';
        snprintf(err + strlen(err), errlen - strlen(err), " (%s)", v);
        s3_conn_free(c);
        return -EACCES;         /* no point in retrying */
      }
      s3_conn_free(c);
      return -EIO;
    }
  }
  *out = c;
  return 0;
}

/* Takes an idle connection, or makes a new one below the limit, or waits. */
static int
s3_pool_get(struct s3_pool *p, struct s3_conn **out, int *reused,
            char *err, size_t errlen)
{
  int r;

  pthread_mutex_lock(&p->lock);
  while (p->idle == NULL && p->n >= p->c.max_conns)
    pthread_cond_wait(&p->cond, &p->lock);
  if (p->idle) {
    *out = p->idle;
    p->idle = (*out)->next;
    pthread_mutex_unlock(&p->lock);
    *reused = 1;
    return 0;
  }
  p->n++;
  pthread_mutex_unlock(&p->lock);
  *reused = 0;
  if ((r = s3_connect(p, out, err, errlen)) < 0) {
    pthread_mutex_lock(&p->lock);
    p->n--;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
  }
  return r;
}

static void
s3_pool_put(struct s3_pool *p, struct s3_conn *c, int keep)
{
  pthread_mutex_lock(&p->lock);
  if (keep) {
    c->next = p->idle;
    p->idle = c;
  } else {
    p->n--;
    s3_conn_free(c);
  }
  pthread_cond_signal(&p->cond);
  pthread_mutex_unlock(&p->lock);
}

/* Sends everything; 0 or -errno.  more: a body follows at once, so a
 * plain connection holds the head back (MSG_MORE) and the two leave in
 * full segments, not a small one of the head (TCP_NODELAY) and then the
 * body: one read less for the store per request. */
static int
s3_send(struct s3_conn *c, const void *buf, size_t len, int more)
{
  const unsigned char *b = buf;

  while (len) {
    ssize_t r;
    if (c->tls) {
      int t = mbedtls_ssl_write(&c->ssl, b, len > 16384 ? 16384 : len);
      if (t == MBEDTLS_ERR_SSL_WANT_READ || t == MBEDTLS_ERR_SSL_WANT_WRITE)
        continue;
      if (t <= 0)
        return -EIO;
      r = t;
    } else {
      r = send(c->fd, b, len, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
      if (r == -1 && errno == EINTR)
        continue;
      if (r <= 0)
        return r == 0 ? -EPIPE : (errno == EAGAIN ? -ETIMEDOUT : -errno);
    }
    b += r;
    len -= (size_t)r;
  }
  return 0;
}

/* Reads at most len bytes; bytes read, 0 at end of stream, or -errno. */
static ssize_t
s3_recv_some(struct s3_conn *c, void *buf, size_t len)
{
  for (;;) {
    ssize_t r;
    if (c->tls) {
      int t = mbedtls_ssl_read(&c->ssl, buf, len);
      if (t == MBEDTLS_ERR_SSL_WANT_READ || t == MBEDTLS_ERR_SSL_WANT_WRITE)
        continue;
      if (t == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY)
        return 0;
      return t < 0 ? -EIO : t;
    }
    r = recv(c->fd, buf, len, 0);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1)
      return errno == EAGAIN ? -ETIMEDOUT : -errno;
    return r;
  }
}

/* Reads exactly len bytes (buffered bytes first) into buf, or discards
 * them when buf is NULL.  0, or -errno (-EPIPE at end of stream). */
static int
s3_recv_exact(struct s3_conn *c, char *buf, uint64_t len)
{
  char sink[4096];

  while (len) {
    size_t n;
    if (c->rpos < c->rlen) {
      n = c->rlen - c->rpos;
      if (n > len)
        n = (size_t)len;
      if (buf) {
        memcpy(buf, c->rbuf + c->rpos, n);
        buf += n;
      }
      c->rpos += n;
    } else {
      ssize_t r;
      n = len > (buf ? SIZE_MAX : sizeof sink) ? (buf ? SIZE_MAX : sizeof sink)
                                               : (size_t)len;
      /* sink only receives bytes to drop. */
      /* cppcheck-suppress legacyUninitvar */
      r = s3_recv_some(c, buf ? buf : sink, n);
      if (r <= 0)
        return r == 0 ? -EPIPE : (int)r;
      n = (size_t)r;
      if (buf)
        buf += n;
    }
    len -= n;
  }
  return 0;
}

/* Makes the buffer hold at least one more byte at rlen; 1, 0 at end of
 * stream, -errno. */
static int
s3_fill(struct s3_conn *c)
{
  ssize_t r;

  if (c->rpos > 0) {
    memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
    c->rlen -= c->rpos;
    c->rpos = 0;
  }
  if (c->rlen == sizeof c->rbuf)
    return -EMSGSIZE;
  r = s3_recv_some(c, c->rbuf + c->rlen, sizeof c->rbuf - c->rlen);
  if (r <= 0)
    return (int)r;
  c->rlen += (size_t)r;
  return 1;
}

/* Body sink: a fixed destination, or a growing malloc'd buffer. */
struct s3_sink {
  char *dst;
  size_t cap, len;
  int grow;
};

static int
s3_sink_reserve(struct s3_sink *s, uint64_t more)
{
  if (more > s->cap - s->len) {
    size_t want;
    char *n;
    if (!s->grow || more > S3_HTTP_BODY_MAX - s->len)
      return -EFBIG;
    want = s->len + (size_t)more;
    if ((n = realloc(s->dst, want + 1)) == NULL)
      return -ENOMEM;
    s->dst = n;
    s->cap = want;
  }
  return 0;
}

static int
s3_read_body(struct s3_conn *c, const struct s3_http_head *h, int head_req,
             struct s3_sink *s, int *keep, char *err, size_t errlen)
{
  int r;

  if (head_req || h->status == 204 || h->status == 304 ||
      (h->status >= 100 && h->status < 200))
    return 0;
  if (h->chunked) {
    for (;;) {
      uint64_t size;
      int n;
      while ((n = s3_http_parse_chunk_line(c->rbuf + c->rpos,
                                           c->rlen - c->rpos, &size)) == 0)
        if ((r = s3_fill(c)) <= 0)
          goto short_read;
      if (n < 0) {
        snprintf(err, errlen, "malformed chunk in the response");
        return -EIO;
      }
      c->rpos += (size_t)n;
      if (size == 0)
        break;
      if ((r = s3_sink_reserve(s, size)) < 0)
        goto too_big;
      if ((r = s3_recv_exact(c, s->dst + s->len, size)) < 0)
        goto short_read;
      s->len += (size_t)size;
      if ((r = s3_recv_exact(c, NULL, 2)) < 0)   /* CRLF */
        goto short_read;
    }
    /* Trailers, up to the empty line. */
    for (;;) {
      const char *b = c->rbuf + c->rpos, *e;
      size_t avail = c->rlen - c->rpos;
      e = avail >= 2 ? memmem(b, avail, "\r\n", 2) : NULL;
      if (e == NULL) {
        if ((r = s3_fill(c)) <= 0)
          goto short_read;
        continue;
      }
      c->rpos += (size_t)(e - b) + 2;
      if (e == b)
        break;
    }
    return 0;
  }
  if (h->content_length >= 0) {
    if ((r = s3_sink_reserve(s, (uint64_t)h->content_length)) < 0)
      goto too_big;
    if ((r = s3_recv_exact(c, s->dst + s->len,
                           (uint64_t)h->content_length)) < 0)
      goto short_read;
    s->len += (size_t)h->content_length;
    return 0;
  }
  /* Until the server closes. */
  *keep = 0;
  for (;;) {
    ssize_t n;
    if ((r = s3_sink_reserve(s, 4096)) < 0)
      goto too_big;
    if (c->rpos < c->rlen) {
      size_t k = c->rlen - c->rpos > 4096 ? 4096 : c->rlen - c->rpos;
      memcpy(s->dst + s->len, c->rbuf + c->rpos, k);
      c->rpos += k;
      s->len += k;
      continue;
    }
    n = s3_recv_some(c, s->dst + s->len, 4096);
    if (n < 0) {
      r = (int)n;
      goto short_read;
    }
    if (n == 0)
      return 0;
    s->len += (size_t)n;
  }
too_big:
  *keep = 0;
  snprintf(err, errlen, "HTTP %d: response body larger than expected",
           h->status);
  return r == -ENOMEM ? r : -EIO;
short_read:
  *keep = 0;
  snprintf(err, errlen, "HTTP %d: response body cut short: %s", h->status,
           r == 0 || r == -EPIPE ? "connection closed" : strerror(-r));
  return r == 0 ? -EPIPE : r;
}

/* One attempt on connection c.  *sent: the request went out whole. */
static int
s3_http_once(struct s3_pool *p, struct s3_conn *c,
             const struct s3_http_req *rq, struct s3_http_resp *rs,
             int *keep, int *got_nothing, char *err, size_t errlen)
{
  char head[8192];
  struct s3_sink sink;
  int n, r, head_req = strcmp(rq->method, "HEAD") == 0;

  *keep = 0;
  *got_nothing = 1;
  n = snprintf(head, sizeof head,
               "%s %s HTTP/1.1\r\nUser-Agent: nbdstack\r\n"
               "Content-Length: %zu\r\n%s\r\n",
               rq->method, rq->target, rq->body_len,
               rq->headers ? rq->headers : "");
  if (n < 0 || (size_t)n >= sizeof head) {
    snprintf(err, errlen, "request head too long");
    return -EINVAL;
  }
  if ((r = s3_send(c, head, (size_t)n, rq->body_len > 0)) < 0 ||
      (rq->body_len && (r = s3_send(c, rq->body, rq->body_len, 0)) < 0)) {
    snprintf(err, errlen, "sending the request: %s", strerror(-r));
    return r;
  }
  c->rpos = c->rlen = 0;
  for (;;) {
    n = s3_http_parse_head(c->rbuf + c->rpos, c->rlen - c->rpos, &rs->head);
    if (n > 0 && rs->head.status >= 100 && rs->head.status < 200) {
      c->rpos += (size_t)n;     /* 100 Continue: read on */
      continue;
    }
    if (n != 0)
      break;
    if ((r = s3_fill(c)) <= 0) {
      snprintf(err, errlen, "reading the response: %s",
               r == 0 ? "connection closed" : strerror(-r));
      return r == 0 ? -EPIPE : r;
    }
    *got_nothing = 0;
  }
  *got_nothing = 0;
  if (n < 0) {
    snprintf(err, errlen, "malformed HTTP response head");
    return -EIO;
  }
  c->rpos += (size_t)n;
  memset(&sink, 0, sizeof sink);
  if (rs->head.status >= 200 && rs->head.status < 300 && rq->dst) {
    sink.dst = rq->dst;
    sink.cap = rq->dst_cap;
  } else
    sink.grow = 1;
  *keep = !rs->head.close;
  r = s3_read_body(c, &rs->head, head_req, &sink, keep, err, errlen);
  if (sink.grow) {
    if (r == 0 && sink.dst == NULL)
      sink.dst = malloc(1);
    if (r < 0 || sink.dst == NULL) {
      free(sink.dst);
      return r < 0 ? r : -ENOMEM;
    }
    sink.dst[sink.len] = '\0';
    rs->body = sink.dst;
  }
  if (r < 0)
    return r;
  rs->body_len = sink.len;
  if (c->rpos != c->rlen)
    *keep = 0;                  /* bytes beyond the answer: do not trust it */
  return 0;
}

int
s3_http_do(struct s3_pool *p, const struct s3_http_req *rq,
           struct s3_http_resp *rs, char *err, size_t errlen)
{
  int attempt, r = -EIO;

  memset(rs, 0, sizeof *rs);
  /* A kept connection the server closed meanwhile fails before any
   * answer: then once more on a new one. */
  for (attempt = 0; attempt < 2; attempt++) {
    struct s3_conn *c = NULL;
    int reused = 0, keep, nothing;

    if ((r = s3_pool_get(p, &c, &reused, err, errlen)) < 0 || c == NULL)
      return r < 0 ? r : -EIO;
    r = s3_http_once(p, c, rq, rs, &keep, &nothing, err, errlen);
    s3_pool_put(p, c, r == 0 && keep);
    if (r == 0 || !reused || !nothing || r == -ETIMEDOUT)
      break;
    free(rs->body);
    memset(rs, 0, sizeof *rs);
  }
  return r;
}
