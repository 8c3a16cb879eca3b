/* nbdstack TLS: the server's credentials and the per-connection session
 * under wire.c (DESIGN.md, "The socket side").
 *
 * Credentials are loaded once, at startup, and checked there (readable,
 * the key matching the certificate, the certificate not expired; every
 * PSK line well formed), so a bad key stops the server instead of the
 * first client.  Sessions speak TLS 1.2 (mbedTLS 2.28 has no 1.3; 1.2 is
 * proto.md's floor, "TLS"), AEAD suites only, no renegotiation.
 *
 * Threads: a connection's reader and its workers read and write at once,
 * and an mbedTLS context must not be entered by two threads together.
 * So the socket is driven non-blocking (MSG_DONTWAIT in the BIO), every
 * call into the context holds the session's lock, and the waiting for
 * the socket (poll, with the wire's timeouts) happens outside it.  The
 * shared random generator has its own lock.
 *
 * The PSK file is read again on SIGHUP (tls_server_reload): a file
 * with any error leaves the keys read before.  With tls-verify-peer the
 * client certificate's CN is logged, with PSK the identity.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "tls.h"

#ifndef NBD_HAVE_TLS

int tls_compiled_in(void) { return 0; }
const char *tls_version_text(void) { return "TLS: not compiled in"; }
int
tls_server_init(const struct nbd_config *cfg)
{
  if (!config_tls_offered(cfg))
    return 0;
  nbd_error("tls: this nbdstack was built without TLS (NBD_TLS=OFF)");
  return 1;
}
int tls_server_ready(void) { return 0; }
void tls_server_reload(void) { }
void tls_server_free(void) { }
int tls_server_start(struct nbd_wire *w) { (void)w; return -1; }
struct tls_client *
tls_client_new(const struct tls_client_opts *o, char *err, size_t errlen)
{
  (void)o;
  snprintf(err, errlen, "this nbdstack was built without TLS (NBD_TLS=OFF)");
  return NULL;
}
void tls_client_free(struct tls_client *c) { (void)c; }
int
tls_client_start(struct tls_client *c, struct nbd_wire *w,
                 const char *hostname, char *err, size_t errlen)
{
  (void)c; (void)w; (void)hostname;
  snprintf(err, errlen, "TLS is not compiled in");
  return -1;
}

#else

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/dhm.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_internal.h>   /* the record buffers' lengths (tls_park) */
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

#define TLS_MAX_PSK_KEY 64      /* bytes; psktool makes 32 */
#define TLS_RECORD 16384        /* plaintext bytes per record */
#define TLS_DIRECT_MIN 4096     /* an iovec this large is not copied */
#define TLS_CORK 256            /* a record this short waits for the next */
#define TLS_KEEP 32             /* bytes of a record buffer kept when parked */

struct tls_psk {
  char *identity;
  unsigned char key[TLS_MAX_PSK_KEY];
  size_t keylen;
};

/* The keys of one reading of the PSK file; SIGHUP reads it again
 * (tls_server_reload) and swaps the whole set under psk_lock. */
struct tls_psks {
  struct tls_psk *v;
  size_t n;
};

/* What a server and a client both hold (tls_conf_setup): the random
 * generator, the mbedTLS configuration and the credentials it points
 * to (the CA; our own certificate and key, when we have one). */
struct tls_conf {
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  pthread_mutex_t rng_lock;
  mbedtls_ssl_config conf;
  mbedtls_x509_crt ca, cert;
  mbedtls_pk_context key;
};

struct tls_server {
  struct tls_conf k;
  pthread_rwlock_t psk_lock;    /* psks: read by handshakes, swapped by SIGHUP */
  struct tls_psks *psks;
  char *psk_path;
  int verify_peer;              /* log the client certificate's name */
};

struct tls_session {
  mbedtls_ssl_context ssl;
  pthread_mutex_t lock;         /* every call into ssl */
  int fd;
  _Atomic int dead;             /* a fatal error: no more I/O (any thread) */
  /* Under the wire's wlock (tls_sendv): small pieces gathered into one
   * record; allocated when first needed, given back when the connection
   * parks (tls_park). */
  unsigned char *wbuf;
  /* A short record (a reply header) sealed while more of the same reply
   * follows waits in corkbuf and leaves with the next record, in one
   * sendmsg (tls_bio_send).  Under lock. */
  int cork;
  unsigned char corkbuf[TLS_CORK];
  size_t corklen;
  /* Parked (tls_park): mbedTLS's record buffers given back; what they
   * held that matters (sequence numbers, where records start) is here.
   * Under lock. */
  int released;
  unsigned char in_head[TLS_KEEP], out_head[TLS_KEEP];
  ptrdiff_t in_off[6], out_off[6];
  char who[80];                 /* the PSK identity the client used, for the log */
};

static struct tls_server *tls_srv;

/* AEAD suites only, strongest first; those the library was built
 * without are skipped by it. */
static const int tls_suites[] = {
  MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
  MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
  MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
  MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
  MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
  MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
  /* PSK: forward secrecy with AES-GCM is DHE-PSK in TLS 1.2 (RFC 5487;
   * ECDHE-PSK has no GCM suite there, only ChaCha20-Poly1305, which
   * mbedTLS runs in portable C at a third of our AES-GCM's speed). */
  MBEDTLS_TLS_DHE_PSK_WITH_AES_256_GCM_SHA384,
  MBEDTLS_TLS_DHE_PSK_WITH_AES_128_GCM_SHA256,
  MBEDTLS_TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256,
  MBEDTLS_TLS_PSK_WITH_AES_256_GCM_SHA384,
  MBEDTLS_TLS_PSK_WITH_AES_128_GCM_SHA256,
  MBEDTLS_TLS_PSK_WITH_CHACHA20_POLY1305_SHA256,
  0
};

static const unsigned char tls_ffdhe2048_p[] =
  MBEDTLS_DHM_RFC7919_FFDHE2048_P_BIN;
static const unsigned char tls_ffdhe2048_g[] =
  MBEDTLS_DHM_RFC7919_FFDHE2048_G_BIN;

/* Key exchange curves, fastest first: X25519, then P-256 (mbedTLS's own
 * order starts with P-521, several times slower per handshake). */
static const mbedtls_ecp_group_id tls_curves[] = {
  MBEDTLS_ECP_DP_CURVE25519,
  MBEDTLS_ECP_DP_SECP256R1,
  MBEDTLS_ECP_DP_SECP384R1,
  MBEDTLS_ECP_DP_SECP521R1,
  MBEDTLS_ECP_DP_NONE
};

int
tls_compiled_in(void)
{
  return 1;
}

const char *
tls_version_text(void)
{
  return "TLS: " MBEDTLS_VERSION_STRING_FULL " (TLS 1.2)";
}

static const char *
tls_strerror(int r, char *buf, size_t len)
{
  mbedtls_strerror(r, buf, len);
  return buf;
}

/* ---- credentials --------------------------------------------------------- */

static int
tls_rng(void *arg, unsigned char *out, size_t len)
{
  struct tls_conf *k = arg;
  int r;

  pthread_mutex_lock(&k->rng_lock);
  r = mbedtls_ctr_drbg_random(&k->drbg, out, len);
  pthread_mutex_unlock(&k->rng_lock);
  return r;
}

static void
tls_conf_release(struct tls_conf *k)
{
  mbedtls_ssl_config_free(&k->conf);
  mbedtls_x509_crt_free(&k->cert);
  mbedtls_x509_crt_free(&k->ca);
  mbedtls_pk_free(&k->key);
  mbedtls_ctr_drbg_free(&k->drbg);
  mbedtls_entropy_free(&k->entropy);
  pthread_mutex_destroy(&k->rng_lock);
}

/* The configuration every session of one side starts from, server or
 * client (role: MBEDTLS_SSL_IS_SERVER or _CLIENT): its own random
 * generator, TLS 1.2 at least, our AEAD suites and curves, no
 * renegotiation.  Credentials are added by the caller.  0, or -1 with
 * the reason in err; tls_conf_release either way. */
static int
tls_conf_setup(struct tls_conf *k, int role, char *err, size_t errlen)
{
  const char *pers = role == MBEDTLS_SSL_IS_SERVER ? "nbdstack tls server" :
                     "nbdstack tls client";
  char e[128];
  int r;

  pthread_mutex_init(&k->rng_lock, NULL);
  mbedtls_entropy_init(&k->entropy);
  mbedtls_ctr_drbg_init(&k->drbg);
  mbedtls_ssl_config_init(&k->conf);
  mbedtls_x509_crt_init(&k->ca);
  mbedtls_x509_crt_init(&k->cert);
  mbedtls_pk_init(&k->key);
  if ((r = mbedtls_ctr_drbg_seed(&k->drbg, mbedtls_entropy_func, &k->entropy,
                                 (const unsigned char *)pers,
                                 strlen(pers))) != 0 ||
      (r = mbedtls_ssl_config_defaults(&k->conf, role,
                                       MBEDTLS_SSL_TRANSPORT_STREAM,
                                       MBEDTLS_SSL_PRESET_DEFAULT)) != 0) {
    snprintf(err, errlen, "tls: %s", tls_strerror(r, e, sizeof e));
    return -1;
  }
  mbedtls_ssl_conf_rng(&k->conf, tls_rng, k);
  mbedtls_ssl_conf_min_version(&k->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                               MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_ciphersuites(&k->conf, tls_suites);
  mbedtls_ssl_conf_curves(&k->conf, tls_curves);
#ifdef MBEDTLS_SSL_RENEGOTIATION
  mbedtls_ssl_conf_renegotiation(&k->conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
#endif
  return 0;
}

/* A certificate that is not valid now is refused, not used. */
static int
tls_check_dates(const mbedtls_x509_crt *crt, const char *path, char *err,
                size_t errlen)
{
  if (mbedtls_x509_time_is_past(&crt->valid_to)) {
    snprintf(err, errlen, "tls-certificates: %s: expired %04d-%02d-%02d",
             path, crt->valid_to.year, crt->valid_to.mon, crt->valid_to.day);
    return -1;
  }
  if (mbedtls_x509_time_is_future(&crt->valid_from)) {
    snprintf(err, errlen, "tls-certificates: %s: not valid before "
             "%04d-%02d-%02d", path, crt->valid_from.year,
             crt->valid_from.mon, crt->valid_from.day);
    return -1;
  }
  return 0;
}

/* A certificate file (or chain) into crt: readable and valid now. */
static int
tls_load_crt(mbedtls_x509_crt *crt, const char *path, char *err,
             size_t errlen)
{
  char e[128];
  int r;

  if ((r = mbedtls_x509_crt_parse_file(crt, path)) != 0) {
    snprintf(err, errlen, "tls-certificates: %s: %s", path,
             tls_strerror(r, e, sizeof e));
    return -1;
  }
  return tls_check_dates(crt, path, err, errlen);
}

/* Our own certificate and key, DIR/WHO-cert.pem and DIR/WHO-key.pem
 * (who: "server" or "client", nbdkit's, qemu's and libnbd's layout):
 * readable, valid now, the key the certificate's.  0 or -1 (err). */
static int
tls_conf_own_cert(struct tls_conf *k, const char *dir, const char *who,
                  char *err, size_t errlen)
{
  char path[4096], e[128];
  int r;

  snprintf(path, sizeof path, "%s/%s-cert.pem", dir, who);
  if (tls_load_crt(&k->cert, path, err, errlen) == -1)
    return -1;
  snprintf(path, sizeof path, "%s/%s-key.pem", dir, who);
  if ((r = mbedtls_pk_parse_keyfile(&k->key, path, NULL)) != 0) {
    snprintf(err, errlen, "tls-certificates: %s: %s", path,
             tls_strerror(r, e, sizeof e));
    return -1;
  }
  if ((r = mbedtls_pk_check_pair(&k->cert.pk, &k->key)) != 0) {
    snprintf(err, errlen, "tls-certificates: %s does not belong to "
             "%s-cert.pem: %s", path, who, tls_strerror(r, e, sizeof e));
    return -1;
  }
  if ((r = mbedtls_ssl_conf_own_cert(&k->conf, &k->cert, &k->key)) != 0) {
    snprintf(err, errlen, "tls-certificates: %s",
             tls_strerror(r, e, sizeof e));
    return -1;
  }
  return 0;
}

/* DIR/ca-cert.pem, to check the peer's certificate with.  needed_by
 * names the setting that requires it (its absence is then an error);
 * NULL: optional.  0 loaded, 1 absent and optional, -1 (err). */
static int
tls_conf_ca(struct tls_conf *k, const char *dir, const char *needed_by,
            char *err, size_t errlen)
{
  char path[4096];

  snprintf(path, sizeof path, "%s/ca-cert.pem", dir);
  if (needed_by == NULL && access(path, F_OK) != 0)
    return 1;
  if (tls_load_crt(&k->ca, path, err, errlen) == -1) {
    if (needed_by)
      snprintf(err + strlen(err), errlen - strlen(err), " (needed by %s)",
               needed_by);
    return -1;
  }
  mbedtls_ssl_conf_ca_chain(&k->conf, &k->ca, NULL);
  return 0;
}

static int
tls_hexval(int c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* One "identity:hexkey" line of a psktool file; 0 or -1. */
static int
tls_psk_line(struct tls_psks *s, char *line, const char *path,
             unsigned lineno)
{
  char *colon = strrchr(line, ':'), *hex;
  struct tls_psk *v, *p;
  size_t n, i;

  if (colon == NULL || colon == line) {
    nbd_error("%s:%u: expected username:hexkey (psktool's format)", path,
              lineno);
    return -1;
  }
  *colon = '\0';
  hex = colon + 1;
  n = strlen(hex);
  if (n == 0 || n % 2 || n / 2 > TLS_MAX_PSK_KEY) {
    nbd_error("%s:%u: the key of '%s' must be 2 to %u hex digits, an even "
              "number", path, lineno, line, 2 * TLS_MAX_PSK_KEY);
    return -1;
  }
  v = realloc(s->v, (s->n + 1) * sizeof *v);
  if (v == NULL)
    return -1;
  s->v = v;
  p = &v[s->n];
  for (i = 0; i < n / 2; i++) {
    int hi = tls_hexval(hex[2 * i]), lo = tls_hexval(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      nbd_error("%s:%u: the key of '%s' is not hexadecimal", path, lineno,
                line);
      return -1;
    }
    p->key[i] = (unsigned char)(hi << 4 | lo);
  }
  p->keylen = n / 2;
  if ((p->identity = strdup(line)) == NULL)
    return -1;
  s->n++;
  return 0;
}

static void
tls_psks_free(struct tls_psks *s)
{
  size_t i;

  if (s == NULL)
    return;
  for (i = 0; i < s->n; i++) {
    mbedtls_platform_zeroize(s->v[i].key, sizeof s->v[i].key);
    free(s->v[i].identity);
  }
  free(s->v);
  free(s);
}

/* Reads a psktool file into *out; the number of errors (each logged),
 * *out set only when there are none. */
static int
tls_load_psk(struct tls_psks **out, const char *path)
{
  FILE *fp = fopen(path, "re");
  char line[1024];
  unsigned lineno = 0;
  int errors = 0;
  struct tls_psks *s;

  if (fp == NULL) {
    nbd_error("tls-psk: %s: %s", path, strerror(errno));
    return 1;
  }
  if ((s = calloc(1, sizeof *s)) == NULL) {
    fclose(fp);
    nbd_error("tls-psk: out of memory");
    return 1;
  }
  while (fgets(line, sizeof line, fp)) {
    lineno++;
    line[strcspn(line, "\r\n")] = '\0';
    if (line[0] == '\0' || line[0] == '#')
      continue;
    if (tls_psk_line(s, line, path, lineno) == -1)
      errors++;
  }
  fclose(fp);
  if (errors == 0 && s->n == 0) {
    nbd_error("tls-psk: %s: no keys in it", path);
    errors++;
  }
  if (errors)
    tls_psks_free(s);
  else
    *out = s;
  return errors;
}

/* A name from the client (PSK identity, certificate CN) made safe for a
 * log line: bytes outside printable ASCII become '?', long ones cut. */
static void
tls_printable(char *out, size_t outlen, const unsigned char *in, size_t len)
{
  size_t i;

  if (len > outlen - 1)
    len = outlen - 1;
  for (i = 0; i < len; i++)
    out[i] = in[i] >= 0x20 && in[i] < 0x7f ? (char)in[i] : '?';
  out[len] = '\0';
}

/* mbedTLS asks for the key of the identity a client sent. */
static int
tls_psk_cb(void *arg, mbedtls_ssl_context *ssl, const unsigned char *id,
           size_t idlen)
{
  struct tls_server *s = arg;
  /* ssl is the first member of its session (tls_server_start). */
  struct tls_session *t = (struct tls_session *)(void *)ssl;
  const struct tls_psk *p;
  size_t i;
  int r = -1;

  pthread_rwlock_rdlock(&s->psk_lock);
  for (i = 0; i < s->psks->n; i++) {
    p = &s->psks->v[i];
    if (strlen(p->identity) == idlen && memcmp(p->identity, id, idlen) == 0) {
      /* mbedTLS copies the key: the set may be swapped after this. */
      r = mbedtls_ssl_set_hs_psk(ssl, p->key, p->keylen);
      tls_printable(t->who, sizeof t->who, id, idlen);
      break;
    }
  }
  pthread_rwlock_unlock(&s->psk_lock);
  if (r == -1) {
    char who[80];
    tls_printable(who, sizeof who, id, idlen);
    nbd_info("tls: unknown PSK identity '%s'", who);
  }
  return r;
}

/* The server's certificates: server-cert.pem and server-key.pem, and
 * ca-cert.pem for client certificates (tls-verify-peer).  Errors
 * logged, one line each; their count. */
static int
tls_load_x509(struct tls_server *s, const struct nbd_config *cfg)
{
  char err[4400];

  if (tls_conf_own_cert(&s->k, cfg->tls_certificates, "server", err,
                        sizeof err) == -1 ||
      tls_conf_ca(&s->k, cfg->tls_certificates, cfg->tls_verify_peer ?
                  "tls-verify-peer" : NULL, err, sizeof err) == -1) {
    nbd_error("%s", err);
    return 1;
  }
  mbedtls_ssl_conf_authmode(&s->k.conf, cfg->tls_verify_peer ?
                            MBEDTLS_SSL_VERIFY_REQUIRED :
                            MBEDTLS_SSL_VERIFY_NONE);
  return 0;
}

static void
tls_server_release(struct tls_server *s)
{
  tls_conf_release(&s->k);
  pthread_rwlock_destroy(&s->psk_lock);
  tls_psks_free(s->psks);
  free(s->psk_path);
  free(s);
}

int
tls_server_init(const struct nbd_config *cfg)
{
  struct tls_server *s;
  char e[128];
  int r, errors = 0;

  if (!config_tls_offered(cfg))
    return 0;
  if (!cfg->tls_certificates && !cfg->tls_psk) {
    nbd_error("tls: %s needs tls-certificates or tls-psk",
              cfg->tls == NBD_TLS_ON ? "tls = on" :
              cfg->tls == NBD_TLS_REQUIRE ? "tls = require" :
              "an export's tls = on or require");
    return 1;
  }
  if ((s = calloc(1, sizeof *s)) == NULL)
    return 1;
  pthread_rwlock_init(&s->psk_lock, NULL);
  s->verify_peer = cfg->tls_verify_peer;
  if (tls_conf_setup(&s->k, MBEDTLS_SSL_IS_SERVER, e, sizeof e) == -1) {
    nbd_error("%s", e);
    tls_server_release(s);
    return 1;
  }
  if (cfg->tls_certificates)
    errors += tls_load_x509(s, cfg);
  if (cfg->tls_psk) {
    errors += tls_load_psk(&s->psks, cfg->tls_psk);
    if ((s->psk_path = strdup(cfg->tls_psk)) == NULL)
      errors++;
    mbedtls_ssl_conf_psk_cb(&s->k.conf, tls_psk_cb, s);
    /* DHE-PSK's group: RFC 7919 ffdhe2048, a named group (no
     * parameters of our own to get wrong). */
    if ((r = mbedtls_ssl_conf_dh_param_bin(&s->k.conf, tls_ffdhe2048_p,
                                           sizeof tls_ffdhe2048_p,
                                           tls_ffdhe2048_g,
                                           sizeof tls_ffdhe2048_g)) != 0) {
      nbd_error("tls: DHE group: %s", tls_strerror(r, e, sizeof e));
      errors++;
    }
  }
  if (errors) {
    tls_server_release(s);
    return errors;
  }
  tls_srv = s;
  nbd_debug("tls: %s, %s%s%s", tls_version_text(),
            cfg->tls_certificates ? "X.509" : "",
            cfg->tls_certificates && cfg->tls_psk ? " and " : "",
            cfg->tls_psk ? "PSK" : "");
  return 0;
}

void
tls_server_reload(void)
{
  struct tls_server *s = tls_srv;
  struct tls_psks *fresh = NULL, *old;

  if (s == NULL || s->psk_path == NULL)
    return;
  if (tls_load_psk(&fresh, s->psk_path) != 0) {
    nbd_error("tls-psk: %s: not reloaded, the keys read before stay",
              s->psk_path);
    return;
  }
  pthread_rwlock_wrlock(&s->psk_lock);
  old = s->psks;
  s->psks = fresh;
  pthread_rwlock_unlock(&s->psk_lock);
  nbd_info("tls-psk: %s: reloaded, %zu key%s (was %zu)", s->psk_path,
           fresh->n, fresh->n == 1 ? "" : "s", old->n);
  tls_psks_free(old);
}

int
tls_server_ready(void)
{
  return tls_srv != NULL;
}

void
tls_server_free(void)
{
  if (tls_srv)
    tls_server_release(tls_srv);
  tls_srv = NULL;
}

/* ---- the session under wire.c ----------------------------------------- */

/* The BIO: never blocks; waiting is tls_wait's, outside the lock.  A
 * record sealed with cork set stays in corkbuf when it fits; the next
 * send takes it along in front of its own record. */
static int
tls_bio_send(void *arg, const unsigned char *buf, size_t len)
{
  struct tls_session *t = arg;
  struct iovec iov[2];
  struct msghdr msg;
  ssize_t r;
  int n = 0;

  if (t->cork && t->corklen + len <= sizeof t->corkbuf) {
    memcpy(t->corkbuf + t->corklen, buf, len);
    t->corklen += len;
    return (int)len;
  }
  if (t->corklen) {
    iov[n].iov_base = t->corkbuf;
    iov[n++].iov_len = t->corklen;
  }
  iov[n].iov_base = (void *)buf;
  iov[n++].iov_len = len;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = n;
  r = sendmsg(t->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (r == -1)
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ?
           MBEDTLS_ERR_SSL_WANT_WRITE : MBEDTLS_ERR_NET_SEND_FAILED;
  if ((size_t)r < t->corklen) {
    memmove(t->corkbuf, t->corkbuf + r, t->corklen - (size_t)r);
    t->corklen -= (size_t)r;
    return MBEDTLS_ERR_SSL_WANT_WRITE;
  }
  r -= (ssize_t)t->corklen;
  t->corklen = 0;
  /* 0 would tell mbedTLS the record went: it has not, come back. */
  return r > 0 ? (int)r : MBEDTLS_ERR_SSL_WANT_WRITE;
}

static int
tls_bio_recv(void *arg, unsigned char *buf, size_t len)
{
  struct tls_session *t = arg;
  ssize_t r = recv(t->fd, buf, len, MSG_DONTWAIT);

  if (r >= 0)
    return (int)r;
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
    return MBEDTLS_ERR_SSL_WANT_READ;
  return MBEDTLS_ERR_NET_RECV_FAILED;
}

/* Waits until fd is ready for ev, at most ns (0 = forever); 0, or -1
 * with errno EAGAIN when the time passed (as a socket timeout would). */
static int
tls_wait(int fd, short ev, uint64_t ns)
{
  struct pollfd p = { fd, ev, 0 };
  int ms = ns ? (int)((ns + 999999) / 1000000) : -1, r;

  if (ns > (uint64_t)INT32_MAX * 1000000)
    ms = INT32_MAX;
  do
    r = poll(&p, 1, ms);
  while (r == -1 && errno == EINTR);
  if (r == 0)
    errno = EAGAIN;
  return r == 1 ? 0 : -1;
}

/* ---- a parked session's record buffers -------------------------------- */

/* mbedTLS keeps an input and an output record buffer per session, 16.7
 * KiB each, for its whole life; 2.28 has no call to give them back
 * (MBEDTLS_SSL_VARIABLE_BUFFER_LENGTH shrinks them only to a negotiated
 * max_fragment_length, which libnbd and qemu do not ask for).  Parked,
 * a session has nothing pending either way (tls_park checks), so the
 * buffers hold only the record sequence numbers (the 8 bytes in front
 * of each record header) and the record pointers into them: those are
 * kept here, the buffers freed, and made again by the next call into
 * the session (tls_take_buffers).  The fields are public in 2.28, the
 * lengths are ssl_internal.h's, and the allocator is mbedTLS's default
 * (calloc/free), as in mbedtls_ssl_setup and mbedtls_ssl_free. */

/* The record pointers into each buffer. */
static int
tls_buffer_ptrs(mbedtls_ssl_context *ssl, unsigned char **in[6],
                unsigned char **out[6])
{
  int n = 5;

  in[0] = &ssl->in_ctr;
  out[0] = &ssl->out_ctr;
  in[1] = &ssl->in_hdr;
  out[1] = &ssl->out_hdr;
  in[2] = &ssl->in_len;
  out[2] = &ssl->out_len;
  in[3] = &ssl->in_iv;
  out[3] = &ssl->out_iv;
  in[4] = &ssl->in_msg;
  out[4] = &ssl->out_msg;
#ifdef MBEDTLS_SSL_DTLS_CONNECTION_ID
  in[n] = &ssl->in_cid;
  out[n++] = &ssl->out_cid;
#endif
  return n;
}

static size_t
tls_in_len(const mbedtls_ssl_context *ssl)
{
#ifdef MBEDTLS_SSL_VARIABLE_BUFFER_LENGTH
  return ssl->in_buf_len;
#else
  (void)ssl;
  return MBEDTLS_SSL_IN_BUFFER_LEN;
#endif
}

static size_t
tls_out_len(const mbedtls_ssl_context *ssl)
{
#ifdef MBEDTLS_SSL_VARIABLE_BUFFER_LENGTH
  return ssl->out_buf_len;
#else
  (void)ssl;
  return MBEDTLS_SSL_OUT_BUFFER_LEN;
#endif
}

/* Parking, with nothing pending: frees the record buffers.  Under lock. */
static void
tls_release_buffers(struct tls_session *t)
{
  mbedtls_ssl_context *ssl = &t->ssl;
  unsigned char **in[6], **out[6];
  int i, n = tls_buffer_ptrs(ssl, in, out);

  if (t->released || ssl->in_buf == NULL || ssl->out_buf == NULL)
    return;
  for (i = 0; i < n; i++) {
    t->in_off[i] = *in[i] - ssl->in_buf;
    t->out_off[i] = *out[i] - ssl->out_buf;
  }
  memcpy(t->in_head, ssl->in_buf, TLS_KEEP);
  memcpy(t->out_head, ssl->out_buf, TLS_KEEP);
  mbedtls_platform_zeroize(ssl->in_buf, tls_in_len(ssl));
  mbedtls_platform_zeroize(ssl->out_buf, tls_out_len(ssl));
  free(ssl->in_buf);
  free(ssl->out_buf);
  ssl->in_buf = ssl->out_buf = NULL;
  t->released = 1;
}

/* Before any call into a session that was parked: its buffers again.
 * 0, or -1 (out of memory).  Under lock. */
static int
tls_take_buffers(struct tls_session *t)
{
  mbedtls_ssl_context *ssl = &t->ssl;
  unsigned char **in[6], **out[6], *ib, *ob;
  int i, n;

  if (!t->released)
    return 0;
  ib = calloc(1, tls_in_len(ssl));
  ob = calloc(1, tls_out_len(ssl));
  if (ib == NULL || ob == NULL) {
    free(ib);
    free(ob);
    return -1;
  }
  memcpy(ib, t->in_head, TLS_KEEP);
  memcpy(ob, t->out_head, TLS_KEEP);
  ssl->in_buf = ib;
  ssl->out_buf = ob;
  n = tls_buffer_ptrs(ssl, in, out);
  for (i = 0; i < n; i++) {
    *in[i] = ib + t->in_off[i];
    *out[i] = ob + t->out_off[i];
  }
  t->released = 0;
  return 0;
}

/* After an mbedTLS error: the connection is over. */
static ssize_t
tls_fail(struct nbd_wire *w, struct tls_session *t, const char *what, int r)
{
  char e[128];

  t->dead = 1;
  if (r != MBEDTLS_ERR_SSL_CONN_EOF && r != MBEDTLS_ERR_NET_RECV_FAILED &&
      r != MBEDTLS_ERR_NET_SEND_FAILED)
    nbd_info("%s: tls %s: %s", w->peer, what, tls_strerror(r, e, sizeof e));
  errno = ECONNRESET;
  return -1;
}

/* One read of up to len bytes: what recv would return. */
static ssize_t
tls_read_some(struct nbd_wire *w, struct tls_session *t, void *buf,
              size_t len, int nowait)
{
  int r;

  for (;;) {
    if (t->dead) {
      errno = ECONNRESET;
      return -1;
    }
    pthread_mutex_lock(&t->lock);
    r = tls_take_buffers(t) == -1 ? MBEDTLS_ERR_SSL_ALLOC_FAILED :
        mbedtls_ssl_read(&t->ssl, buf, len);
    pthread_mutex_unlock(&t->lock);
    if (r > 0)
      return r;
    if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ||
        r == MBEDTLS_ERR_SSL_CONN_EOF)
      return 0;
    if (r != MBEDTLS_ERR_SSL_WANT_READ && r != MBEDTLS_ERR_SSL_WANT_WRITE)
      return tls_fail(w, t, "read", r);
    if (nowait) {
      errno = EAGAIN;
      return -1;
    }
    if (tls_wait(t->fd, r == MBEDTLS_ERR_SSL_WANT_READ ? POLLIN : POLLOUT,
                 r == MBEDTLS_ERR_SSL_WANT_READ ? w->rcvtimeo : w->sndtimeo)
        == -1)
      return -1;
  }
}

static ssize_t
tls_recvv(struct nbd_wire *w, struct iovec *iov, int n, int flags)
{
  struct tls_session *t = w->session;
  ssize_t total = 0, r;
  size_t off = 0;
  int i = 0;

  while (i < n) {
    if (off == iov[i].iov_len) {
      i++;
      off = 0;
      continue;
    }
    /* Like recvmsg: once something came, wait only under MSG_WAITALL. */
    r = tls_read_some(w, t, (char *)iov[i].iov_base + off,
                      iov[i].iov_len - off, (flags & MSG_DONTWAIT) ||
                      (total > 0 && !(flags & MSG_WAITALL)));
    if (r <= 0)
      return total > 0 ? total : r;
    total += r;
    off += (size_t)r;
  }
  return total;
}

/* Gathers into wbuf the plaintext of the next record: the small pieces
 * at the front of iov (a reply header, batched replies), and of the
 * large one after them only what makes the rest of it a whole number
 * of full records, which then go from the caller's buffer uncopied (a
 * 256 KiB read: one header record, corked, and sixteen full ones, not
 * a last record of 20 bytes).  Returns the bytes gathered. */
static size_t
tls_gather(unsigned char *wbuf, const struct iovec *iov, int n)
{
  size_t wlen = 0, k;
  int i;

  for (i = 0; i < n && wlen < TLS_RECORD; i++) {
    k = iov[i].iov_len;
    if (k >= TLS_DIRECT_MIN && wlen > 0) {
      k %= TLS_RECORD;
      if (wlen + k > TLS_RECORD)
        k = TLS_RECORD - wlen;  /* fill this record: one copy */
      memcpy(wbuf + wlen, iov[i].iov_base, k);
      return wlen + k;
    }
    if (k > TLS_RECORD - wlen)
      k = TLS_RECORD - wlen;
    memcpy(wbuf + wlen, iov[i].iov_base, k);
    wlen += k;
  }
  return wlen;
}

/* Seals one record from the front of iov; returns the bytes taken, as
 * sendmsg would.  A large first iovec (read data) goes to mbedTLS as it
 * is (which encrypts it into its record buffer: cmake/mbedtls-*.patch;
 * unpatched, it copies it there first); small pieces are gathered in
 * wbuf (tls_gather).  A short record with more of the iovecs to follow
 * is corked (tls_bio_send).  A WANT_WRITE wants the same call again,
 * which the loop makes while waiting. */
static ssize_t
tls_sendv(struct nbd_wire *w, struct iovec *iov, int n)
{
  struct tls_session *t = w->session;
  const unsigned char *buf;
  size_t len, total = 0;
  int i, r;

  for (i = 0; i < n; i++)
    total += iov[i].iov_len;
  if (n > 0 && iov[0].iov_len >= TLS_DIRECT_MIN) {
    buf = iov[0].iov_base;
    len = iov[0].iov_len < TLS_RECORD ? iov[0].iov_len : TLS_RECORD;
  } else {
    if (t->wbuf == NULL && (t->wbuf = malloc(TLS_RECORD)) == NULL) {
      errno = ENOMEM;
      return -1;
    }
    buf = t->wbuf;
    len = tls_gather(t->wbuf, iov, n);
  }
  for (;;) {
    if (t->dead) {
      errno = EPIPE;
      return -1;
    }
    pthread_mutex_lock(&t->lock);
    t->cork = len < total && len < TLS_CORK / 2;
    r = tls_take_buffers(t) == -1 ? MBEDTLS_ERR_SSL_ALLOC_FAILED :
        mbedtls_ssl_write(&t->ssl, buf, len);
    t->cork = 0;
    pthread_mutex_unlock(&t->lock);
    if (r > 0)
      return r;       /* r bytes from the front of iov; the caller passes the rest */
    if (r != MBEDTLS_ERR_SSL_WANT_WRITE && r != MBEDTLS_ERR_SSL_WANT_READ)
      return tls_fail(w, t, "write", r);
    if (tls_wait(t->fd, r == MBEDTLS_ERR_SSL_WANT_WRITE ? POLLOUT : POLLIN,
                 w->sndtimeo) == -1) {
      t->dead = 1;
      return -1;
    }
  }
}

/* wire_park asks: may this connection wait in park.c?  Not while
 * mbedTLS holds input: decrypted bytes not read yet
 * (mbedtls_ssl_get_bytes_avail) or a record begun in its input buffer
 * (mbedtls_ssl_check_pending), which the socket no longer shows.
 * Its context stays (the session's keys and sequence numbers); what
 * goes is wbuf and mbedTLS's record buffers (tls_release_buffers).
 * drop is called under wlock. */
static int
tls_park(struct nbd_wire *w, int drop)
{
  struct tls_session *t = w->session;
  int held;

  pthread_mutex_lock(&t->lock);
  held = t->dead || mbedtls_ssl_get_bytes_avail(&t->ssl) > 0 ||
         mbedtls_ssl_check_pending(&t->ssl) || t->ssl.out_left > 0 ||
         t->corklen > 0;
  if (!held && drop)
    tls_release_buffers(t);
  pthread_mutex_unlock(&t->lock);
  if (held)
    return -1;
  if (drop) {
    free(t->wbuf);
    t->wbuf = NULL;
  }
  return 0;
}

/* close_notify, once, without waiting for a client that does not read. */
static void
tls_close_notify(struct nbd_wire *w)
{
  struct tls_session *t = w->session;

  if (t->dead)
    return;
  pthread_mutex_lock(&t->lock);
  if (tls_take_buffers(t) == 0)
    (void)mbedtls_ssl_close_notify(&t->ssl);
  pthread_mutex_unlock(&t->lock);
  t->dead = 1;
}

static void
tls_free(struct nbd_wire *w)
{
  struct tls_session *t = w->session;

  if (t == NULL)
    return;
  mbedtls_ssl_free(&t->ssl);
  pthread_mutex_destroy(&t->lock);
  free(t->wbuf);
  free(t);
  w->session = NULL;
}

static const struct wire_io tls_io = {
  tls_recvv, tls_sendv, tls_close_notify, tls_free, tls_park
};

/* Why a handshake failed, into err: for a certificate that did not
 * verify, what was wrong with it. */
static void
tls_handshake_error(const struct tls_session *t, int r, char *err,
                    size_t errlen)
{
  uint32_t flags = mbedtls_ssl_get_verify_result(&t->ssl);
  char why[160];

  if (r == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED && flags != 0 &&
      flags != (uint32_t)-1) {
    mbedtls_x509_crt_verify_info(why, sizeof why, "", flags);
    why[strcspn(why, "\n")] = '\0';
    snprintf(err, errlen, "the %s's certificate: %s",
             t->ssl.conf->endpoint == MBEDTLS_SSL_IS_CLIENT ? "server" :
             "client", why);
  } else
    tls_strerror(r, err, errlen);
}

/* A session on w->fd with conf, and its handshake: each wait for the
 * socket ends by the deadline (CLOCK_MONOTONIC ns; the server's
 * handshake timeout) or after wait_ns (0 = no limit; the client's
 * receive timeout).  The session, or NULL with the reason in err (*rc:
 * mbedTLS's error, 0 for a timeout or a socket error). */
static struct tls_session *
tls_session_start(struct nbd_wire *w, const mbedtls_ssl_config *conf,
                  const char *hostname, uint64_t deadline, uint64_t wait_ns,
                  int *rc, char *err, size_t errlen)
{
  struct tls_session *t;
  uint64_t now, ns;
  char e[128];
  int r;

  *rc = 0;
  if ((t = calloc(1, sizeof *t)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  t->fd = w->fd;
  pthread_mutex_init(&t->lock, NULL);
  mbedtls_ssl_init(&t->ssl);
  if ((r = mbedtls_ssl_setup(&t->ssl, conf)) != 0 ||
      (hostname && (r = mbedtls_ssl_set_hostname(&t->ssl, hostname)) != 0)) {
    snprintf(err, errlen, "tls: %s", tls_strerror(r, e, sizeof e));
    goto fail;
  }
  mbedtls_ssl_set_bio(&t->ssl, t, tls_bio_send, tls_bio_recv, NULL);
  /* The session is not shared yet: no lock around the handshake. */
  while ((r = mbedtls_ssl_handshake(&t->ssl)) != 0) {
    if (r != MBEDTLS_ERR_SSL_WANT_READ && r != MBEDTLS_ERR_SSL_WANT_WRITE) {
      *rc = r;
      tls_handshake_error(t, r, err, errlen);
      goto fail;
    }
    ns = wait_ns;
    if (deadline) {
      now = nbd_now_ns();
      if (now >= deadline) {
        snprintf(err, errlen, "timed out");
        goto fail;
      }
      ns = deadline - now;
    }
    if (tls_wait(t->fd, r == MBEDTLS_ERR_SSL_WANT_READ ? POLLIN : POLLOUT,
                 ns) == -1 && (errno != EAGAIN || !deadline)) {
      snprintf(err, errlen, "%s", errno == EAGAIN ? "timed out" :
               strerror(errno));
      goto fail;
    }
  }
  return t;
fail:
  mbedtls_ssl_free(&t->ssl);
  pthread_mutex_destroy(&t->lock);
  free(t);
  return NULL;
}

/* w's bytes go through t from now on. */
static void
tls_session_attach(struct nbd_wire *w, struct tls_session *t)
{
  w->session = t;
  w->io = &tls_io;
}

/* The client certificate's subject CN, into out ("" when none). */
static void
tls_peer_cn(const mbedtls_ssl_context *ssl, char *out, size_t outlen)
{
  const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(ssl);
  const mbedtls_x509_name *n;

  out[0] = '\0';
  if (crt == NULL)
    return;
  for (n = &crt->subject; n; n = n->next)
    if (n->oid.p && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0) {
      tls_printable(out, outlen, n->val.p, n->val.len);
      return;
    }
}

/* One line per session: version, suite and who the client proved to be
 * (the certificate's CN under tls-verify-peer, or the PSK identity). */
static void
tls_log_session(struct nbd_wire *w, struct tls_session *t)
{
  char cn[80];

  if (tls_srv->verify_peer) {
    tls_peer_cn(&t->ssl, cn, sizeof cn);
    nbd_info("%s: tls: %s, %s, client certificate CN=\"%s\"", w->peer,
             mbedtls_ssl_get_version(&t->ssl),
             mbedtls_ssl_get_ciphersuite(&t->ssl), cn);
  } else if (t->who[0])
    nbd_info("%s: tls: %s, %s, PSK identity \"%s\"", w->peer,
             mbedtls_ssl_get_version(&t->ssl),
             mbedtls_ssl_get_ciphersuite(&t->ssl), t->who);
  else
    nbd_debug("%s: tls: %s, %s", w->peer, mbedtls_ssl_get_version(&t->ssl),
              mbedtls_ssl_get_ciphersuite(&t->ssl));
}

int
tls_server_start(struct nbd_wire *w)
{
  struct tls_session *t;
  char err[256];
  int rc;

  if (tls_srv == NULL)
    return -1;
  t = tls_session_start(w, &tls_srv->k.conf, NULL, w->deadline, 0, &rc, err,
                        sizeof err);
  if (t == NULL) {
    if (rc == 0 && strcmp(err, "timed out") == 0)
      nbd_info("%s: handshake timed out (tls)", w->peer);
    else if (rc)
      nbd_info("%s: tls handshake failed: %s", w->peer, err);
    else
      nbd_info("%s: tls handshake: %s", w->peer, err);
    return -1;
  }
  tls_log_session(w, t);
  tls_session_attach(w, t);
  return 0;
}

/* ---- the client side (the nbd backend's upstream) ---------------------- */

/* The credentials of one nbd backend instance: X.509 (the CA to check the
 * server with, and an optional client certificate: libnbd's layout,
 * ca-cert.pem, client-cert.pem, client-key.pem) or one PSK. */
struct tls_client {
  struct tls_conf k;
  int verify;
};

static const int tls_client_psk_suites[] = {
  MBEDTLS_TLS_DHE_PSK_WITH_AES_256_GCM_SHA384,
  MBEDTLS_TLS_DHE_PSK_WITH_AES_128_GCM_SHA256,
  MBEDTLS_TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256,
  MBEDTLS_TLS_PSK_WITH_AES_256_GCM_SHA384,
  MBEDTLS_TLS_PSK_WITH_AES_128_GCM_SHA256,
  MBEDTLS_TLS_PSK_WITH_CHACHA20_POLY1305_SHA256,
  0
};

void
tls_client_free(struct tls_client *c)
{
  if (c == NULL)
    return;
  tls_conf_release(&c->k);
  free(c);
}

static int
tls_client_x509(struct tls_client *c, const char *dir, char *err,
                size_t errlen)
{
  char path[4096];

  if (tls_conf_ca(&c->k, dir, c->verify ? "tls-verify=true" : NULL, err,
                  errlen) == -1)
    return -1;
  /* A client certificate is optional: for servers with
   * --tls-verify-peer. */
  snprintf(path, sizeof path, "%s/client-cert.pem", dir);
  if (access(path, F_OK) == 0 &&
      tls_conf_own_cert(&c->k, dir, "client", err, errlen) == -1)
    return -1;
  return 0;
}

/* The key of username in a psktool file. */
static int
tls_client_psk(struct tls_client *c, const char *path, const char *username,
               char *err, size_t errlen)
{
  struct tls_psks *psks = NULL;
  size_t i;
  int r = -1;

  if (tls_load_psk(&psks, path) != 0) {
    snprintf(err, errlen, "tls-psk: %s: cannot be read (see the line "
             "before)", path);
    return -1;
  }
  for (i = 0; i < psks->n; i++)
    if (strcmp(psks->v[i].identity, username) == 0) {
      r = mbedtls_ssl_conf_psk(&c->k.conf, psks->v[i].key, psks->v[i].keylen,
                               (const unsigned char *)username,
                               strlen(username));
      if (r != 0)
        snprintf(err, errlen, "tls-psk: cannot use the key");
      break;
    }
  if (i == psks->n)
    snprintf(err, errlen, "tls-psk: %s has no key for user '%s' (set "
             "tls-username=)", path, username);
  tls_psks_free(psks);
  if (r == 0)
    mbedtls_ssl_conf_ciphersuites(&c->k.conf, tls_client_psk_suites);
  return r == 0 ? 0 : -1;
}

struct tls_client *
tls_client_new(const struct tls_client_opts *o, char *err, size_t errlen)
{
  struct tls_client *c = calloc(1, sizeof *c);

  if (c == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  c->verify = o->verify;
  if (tls_conf_setup(&c->k, MBEDTLS_SSL_IS_CLIENT, err, errlen) == -1) {
    tls_client_free(c);
    return NULL;
  }
  mbedtls_ssl_conf_authmode(&c->k.conf, o->verify && o->certificates ?
                            MBEDTLS_SSL_VERIFY_REQUIRED :
                            MBEDTLS_SSL_VERIFY_NONE);
  if ((o->certificates && tls_client_x509(c, o->certificates, err,
                                          errlen) == -1) ||
      (o->psk && tls_client_psk(c, o->psk, o->username, err, errlen) == -1)) {
    tls_client_free(c);
    return NULL;
  }
  return c;
}

int
tls_client_start(struct tls_client *c, struct nbd_wire *w,
                 const char *hostname, char *err, size_t errlen)
{
  struct tls_session *t;
  char why[256];
  int rc;

  t = tls_session_start(w, &c->k.conf, c->verify ? hostname : NULL, 0,
                        w->rcvtimeo, &rc, why, sizeof why);
  if (t == NULL) {
    snprintf(err, errlen, "TLS handshake: %s", why);
    return -1;
  }
  snprintf(err, errlen, "%s, %s", mbedtls_ssl_get_version(&t->ssl),
           mbedtls_ssl_get_ciphersuite(&t->ssl));
  tls_session_attach(w, t);
  return 0;
}

#endif
