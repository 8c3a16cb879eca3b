/* nbdstack backend s3: a disk in an S3 bucket (Ceph RGW, AWS, MinIO).
 *
 * Keys as nbdkit's S3 plugin where they overlap (endpoint-url, bucket,
 * key, size, object-size, access-key, secret-key, session-token).
 * Without size=, key names one object, served read-only through ranged
 * GETs.  With size= (and object-size=), the disk is ceil(size /
 * object-size) objects KEY/%016x (the block number; nbdkit's names, so
 * either server reads the other's disks), created on first write; a
 * missing object reads as zeros and is a hole in extents.  A whole-object
 * write is one PUT, a partial one reads, merges and PUTs under the
 * object's lock; trim or zero of a whole object is a DELETE.  A write is
 * acknowledged once its PUT returned 200, so flush has nothing to do and
 * FUA is native.
 *
 * Two servers never write one disk at once: the first writable open
 * creates KEY/lease (If-None-Match: *) holding our owner id and an
 * expiry, a thread renews it (If-Match on its ETag), the last writable
 * close deletes it.  An expired lease is taken over with If-Match on its
 * ETag, unquoted (Ceph RGW compares it as given).  After a failed
 * renewal, or once the local lease time ran out, writes fail with EROFS
 * until a renewal succeeds again.  docs/backends/s3.md says what this
 * does not guarantee.
 *
 * HTTP and the parsers are http.c, AWS Signature V4 is sigv4.c. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "layer.h"
#include "awsconf.h"
#include "http.h"
#include "sigv4.h"

#define S3_LOCKS 256                  /* object locks, by block number */
#define S3_OBJ_MIN 4096
#define S3_OBJ_MAX (UINT64_C(64) << 20)

struct s3_conf {
  char *endpoint_url;
  char *bucket;
  char *key;
  uint64_t size;
  uint64_t object_size;
  char *access_key;
  char *secret_key;
  char *session_token;
  char *region;
  int addressing;
  uint64_t connections;
  uint64_t retries;
  int tls_verify;
  char *tls_ca;
  uint64_t lease_time;
  int payload_signing;
};

static const char *const s3_addressing[] = { "auto", "path", "virtual", NULL };
enum { S3_ADDR_AUTO, S3_ADDR_PATH, S3_ADDR_VIRTUAL };
static const char *const s3_signing[] = { "auto", "true", "false", NULL };
enum { S3_SIGN_AUTO, S3_SIGN_ALWAYS, S3_SIGN_NEVER };

static const struct nbd_param s3_params[] = {
  { "endpoint-url", NBD_PARAM_STRING, offsetof(struct s3_conf, endpoint_url),
    NULL, "http[s]://HOST[:PORT] of the store (default AWS: "
    "https://s3.REGION.amazonaws.com)", NULL, 0 },
  { "bucket", NBD_PARAM_STRING, offsetof(struct s3_conf, bucket), NULL,
    "bucket name", NULL, 1 },
  { "key", NBD_PARAM_STRING, offsetof(struct s3_conf, key), NULL,
    "object name, or the prefix of the objects when size= is given",
    NULL, 1 },
  { "size", NBD_PARAM_SIZE, offsetof(struct s3_conf, size), NULL,
    "disk size: a writable disk of many objects (with object-size=)",
    NULL, 0 },
  { "object-size", NBD_PARAM_SIZE, offsetof(struct s3_conf, object_size),
    NULL, "size of each object, 4K to 64M (with size=)", NULL, 0 },
  { "access-key", NBD_PARAM_STRING, offsetof(struct s3_conf, access_key),
    NULL, "access key id, or +FILE (default: $AWS_ACCESS_KEY_ID, then "
    "~/.aws/credentials and ~/.aws/config, as botocore)", NULL, 0 },
  { "secret-key", NBD_PARAM_STRING, offsetof(struct s3_conf, secret_key),
    NULL, "secret access key, or +FILE (default as access-key)",
    NULL, 0 },
  { "session-token", NBD_PARAM_STRING,
    offsetof(struct s3_conf, session_token), NULL,
    "session token, or +FILE (default: with the keys it came with)",
    NULL, 0 },
  { "region", NBD_PARAM_STRING, offsetof(struct s3_conf, region),
    NULL, "region the requests are signed for (default: "
    "$AWS_DEFAULT_REGION, the profile's region, us-east-1)", NULL, 0 },
  { "addressing", NBD_PARAM_ENUM, offsetof(struct s3_conf, addressing),
    "auto", "path (/BUCKET/KEY: Ceph, MinIO), virtual (BUCKET.HOST), or "
    "auto: path with endpoint-url, else (AWS) virtual when the bucket can "
    "be a host name label", s3_addressing, 0 },
  { "connections", NBD_PARAM_UINT, offsetof(struct s3_conf, connections),
    "16", "HTTP keep-alive connections to the store", NULL, 0 },
  { "retries", NBD_PARAM_UINT, offsetof(struct s3_conf, retries), "3",
    "retries of a request after a 5xx or network error", NULL, 0 },
  { "tls-verify", NBD_PARAM_BOOL, offsetof(struct s3_conf, tls_verify),
    "true", "verify the store's certificate (https)", NULL, 0 },
  { "tls-ca", NBD_PARAM_PATH, offsetof(struct s3_conf, tls_ca), NULL,
    "CA certificates (PEM) to verify the store with", NULL, 0 },
  { "lease-time", NBD_PARAM_DURATION, offsetof(struct s3_conf, lease_time),
    "60s", "how long a writer's lease lasts without renewal", NULL, 0 },
  { "payload-signing", NBD_PARAM_ENUM,
    offsetof(struct s3_conf, payload_signing), "auto",
    "sign the SHA-256 of each body: auto (over http, not https, as "
    "botocore), true, or false (UNSIGNED-PAYLOAD: no hashing, for a "
    "trusted network)", s3_signing, 0 },
  NBD_PARAM_END
};

struct s3_state {
  struct s3_pool *pool;
  int tls;
  int sign_payload;
  char *host_header;          /* Host: as signed */
  char *path_prefix;          /* "/BUCKET" (path style) or "" */
  char *access, *secret, *token;
  char *region;
  const char *key;
  uint64_t retries;
  atomic_int eperm_logged;

  int multi;
  uint64_t size, objsz, nobj;

  /* Which objects exist: LIST at open, then our own writes.  gen counts
   * changes, so a LIST that raced with writes keeps their bits. */
  pthread_mutex_t map_lock;
  uint8_t *map;
  int map_valid;
  uint64_t map_gen;

  pthread_mutex_t obj_lock[S3_LOCKS];
  struct nbd_bufpool bufs;

  /* The lease. */
  /* lease_op: held over the lease's requests (open, renewal, close);
   * state_lock: the fields the datapath reads, only briefly. */
  pthread_mutex_t lease_op;
  pthread_mutex_t state_lock;
  pthread_cond_t lease_cond;
  unsigned writers;
  int lease_held;             /* we own it (renewals may still fail) */
  int lease_ok;               /* the last renewal succeeded */
  uint64_t lease_until;       /* monotonic ns: writes allowed until */
  char lease_etag[S3_HTTP_ETAG_MAX];
  char owner[160];
  pthread_t renewer;
  int renewer_running;
  /* A renewer runs while renewer_epoch is the one it was started with:
   * a close that stops it and an open that starts the next one may both
   * happen before it wakes, and then it must still stop. */
  uint64_t renewer_epoch;
};

struct s3_handle {
  int writer;                 /* counted in writers */
  int foreign;                /* another server held the lease at open */
  int64_t single_size;
};

/* ---- helpers ---------------------------------------------------------- */

static uint64_t
s3_mono_ns(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
s3_obj_name(const struct s3_state *st, uint64_t blk, char *out, size_t len)
{
  snprintf(out, len, "%s/%016" PRIx64, st->key, blk);
}

static pthread_mutex_t *
s3_lock_of(struct s3_state *st, uint64_t blk)
{
  return &st->obj_lock[blk % S3_LOCKS];
}

static void
s3_map_set(struct s3_state *st, uint64_t blk, int present)
{
  pthread_mutex_lock(&st->map_lock);
  if (st->map && blk < st->nobj) {
    st->map[blk] = (uint8_t)present;
    st->map_gen++;
  }
  pthread_mutex_unlock(&st->map_lock);
}

/* 1: the object surely does not exist (our map is authoritative: we hold
 * the lease, so nobody else writes, and the map was built after). */
static int
s3_known_absent(struct s3_state *st, uint64_t blk)
{
  int r, held;

  pthread_mutex_lock(&st->state_lock);
  held = st->lease_held && st->lease_ok;
  pthread_mutex_unlock(&st->state_lock);
  pthread_mutex_lock(&st->map_lock);
  r = held && st->map_valid && !st->map[blk];
  pthread_mutex_unlock(&st->map_lock);
  return r;
}

/* S3's error code from an error body, or "". */
static void
s3_error_code(const struct s3_http_resp *rs, char *code, size_t len)
{
  size_t pos = 0;

  code[0] = '\0';
  if (rs->body == NULL ||
      s3_xml_next(rs->body, rs->body_len, &pos, "Code", code, len) != 1)
    code[0] = '\0';
}

/* -errno for a status that is not what the caller expected; logs it (a
 * 403 once). */
static int
s3_status_error(struct s3_state *st, const char *method, const char *what,
                const struct s3_http_resp *rs)
{
  char code[128];

  s3_error_code(rs, code, sizeof code);
  if (rs->head.status == 403) {
    if (atomic_exchange(&st->eperm_logged, 1) == 0)
      nbd_error("s3: %s %s: access denied (HTTP 403 %s); further 403s are "
                "not logged", method, what, code[0] ? code : "");
    return -EPERM;
  }
  nbd_error("s3: %s %s: HTTP %d %s", method, what, rs->head.status,
            code[0] ? code : "");
  return -EIO;
}

/* One signed request, retried with back-off after network errors and
 * 5xx answers.  0 with rs filled (any status), or -errno. */
static int
s3_request(struct s3_state *st, const char *method, const char *key,
           const char *query, const char *extra, const void *body,
           size_t len, void *dst, size_t dst_cap, struct s3_http_resp *rs)
{
  char path[1200], target[2400], auth[512], hash[65], date[17];
  char headers[4096];
  struct s3_sigv4 sig;
  struct s3_http_req rq;
  uint64_t attempt, delay = 100000000u;
  int n, r = -EIO;

  n = snprintf(path, sizeof path, "%s/", st->path_prefix);
  if (n < 0 || (size_t)n >= sizeof path ||
      (key && s3_uri_encode(key, 1, path + n, sizeof path - (size_t)n) < 0))
    return -ENAMETOOLONG;
  n = snprintf(target, sizeof target, "%s%s%s", path, query[0] ? "?" : "",
               query);
  if (n < 0 || (size_t)n >= sizeof target)
    return -ENAMETOOLONG;
  if (!st->sign_payload)
    strcpy(hash, "UNSIGNED-PAYLOAD");   /* TLS protects it, or not wanted */
  else if (s3_sha256_hex(body ? body : "", len, hash) == -1)
    return -EIO;

  for (attempt = 0;; attempt++) {
    char err[256] = "";

    s3_amz_date((int64_t)time(NULL), date);
    memset(&sig, 0, sizeof sig);
    sig.method = method;
    sig.host = st->host_header;
    sig.path = path;
    sig.query = query;
    sig.payload_hash = hash;
    sig.amz_date = date;
    sig.region = st->region;
    sig.access_key = st->access;
    sig.secret_key = st->secret;
    sig.session_token = st->token;
    if (s3_sigv4_authorization(&sig, auth, sizeof auth) == -1)
      return -EIO;
    n = snprintf(headers, sizeof headers,
                 "Host: %s\r\nx-amz-date: %s\r\nx-amz-content-sha256: %s\r\n"
                 "%s%s%sAuthorization: %s\r\n%s",
                 st->host_header, date, hash,
                 st->token ? "x-amz-security-token: " : "",
                 st->token ? st->token : "", st->token ? "\r\n" : "",
                 auth, extra ? extra : "");
    if (n < 0 || (size_t)n >= sizeof headers)
      return -EIO;
    memset(&rq, 0, sizeof rq);
    rq.method = method;
    rq.target = target;
    rq.headers = headers;
    rq.body = body;
    rq.body_len = len;
    rq.dst = dst;
    rq.dst_cap = dst_cap;
    r = s3_http_do(st->pool, &rq, rs, err, sizeof err);
    if (r == 0 && rs->head.status < 500 && rs->head.status != 429)
      return 0;
    if (r == -ENOMEM || r == -EINVAL || r == -EACCES) {
      nbd_error("s3: %s %s: %s", method, key ? key : st->path_prefix, err);
      return r == -EACCES ? -EIO : r;
    }
    if (attempt >= st->retries) {
      if (r == 0) {
        r = s3_status_error(st, method, key ? key : st->path_prefix, rs);
        free(rs->body);
        rs->body = NULL;
        return r;
      }
      nbd_error("s3: %s %s: %s (after %" PRIu64 " retries)", method,
                key ? key : st->path_prefix, err, st->retries);
      return -EIO;
    }
    if (r == 0) {
      free(rs->body);
      rs->body = NULL;
    }
    if (nbd_sleep(delay) < 0)
      return -EIO;
    if (delay < UINT64_C(4000000000))
      delay *= 2;
  }
}

/* ---- objects ---------------------------------------------------------- */

/* Reads [off, off+n) of object name into buf; a missing object (or part
 * beyond its end) reads as zeros. */
static int
s3_get_range(struct s3_state *st, const char *name, void *buf, uint64_t n,
             uint64_t off)
{
  struct s3_http_resp rs;
  char range[96];
  int r;

  snprintf(range, sizeof range, "Range: bytes=%" PRIu64 "-%" PRIu64 "\r\n",
           off, off + n - 1);
  r = s3_request(st, "GET", name, "", range, NULL, 0, buf, (size_t)n, &rs);
  if (r < 0)
    return r;
  switch (rs.head.status) {
  case 200:
  case 206:
    if (rs.body_len < n)
      memset((char *)buf + rs.body_len, 0, (size_t)n - rs.body_len);
    r = 0;
    break;
  case 404:
  case 416:
    memset(buf, 0, (size_t)n);
    r = 0;
    break;
  default:
    r = s3_status_error(st, "GET", name, &rs);
  }
  free(rs.body);
  return r;
}

static int
s3_put(struct s3_state *st, const char *name, const void *buf, uint64_t n)
{
  struct s3_http_resp rs;
  int r;

  r = s3_request(st, "PUT", name, "", NULL, buf, (size_t)n, NULL, 0, &rs);
  if (r < 0)
    return r;
  r = rs.head.status == 200 ? 0 : s3_status_error(st, "PUT", name, &rs);
  free(rs.body);
  return r;
}

static int
s3_delete(struct s3_state *st, const char *name)
{
  struct s3_http_resp rs;
  int r;

  r = s3_request(st, "DELETE", name, "", NULL, NULL, 0, NULL, 0, &rs);
  if (r < 0)
    return r;
  r = rs.head.status == 204 || rs.head.status == 200 || rs.head.status == 404
      ? 0 : s3_status_error(st, "DELETE", name, &rs);
  free(rs.body);
  return r;
}

/* LIST of KEY/ into a fresh map; 0 or -errno. */
static int
s3_list(struct s3_state *st)
{
  char prefix[1100], token[1100], query[6700], enc_p[3300], enc_t[3300];
  char key[1100];
  uint8_t *map = calloc(st->nobj ? st->nobj : 1, 1);
  uint64_t gen;
  int r = 0, more = 1;

  if (map == NULL)
    return -ENOMEM;
  pthread_mutex_lock(&st->map_lock);
  gen = st->map_gen;
  pthread_mutex_unlock(&st->map_lock);
  snprintf(prefix, sizeof prefix, "%s/", st->key);
  if (s3_uri_encode(prefix, 0, enc_p, sizeof enc_p) < 0) {
    free(map);
    return -ENAMETOOLONG;
  }
  token[0] = '\0';
  while (more && r == 0) {
    struct s3_http_resp rs;
    size_t pos = 0;

    if (token[0]) {
      if (s3_uri_encode(token, 0, enc_t, sizeof enc_t) < 0) {
        r = -EIO;
        break;
      }
      snprintf(query, sizeof query,
               "continuation-token=%s&list-type=2&prefix=%s", enc_t, enc_p);
    } else
      snprintf(query, sizeof query, "list-type=2&prefix=%s", enc_p);
    if ((r = s3_request(st, "GET", NULL, query, NULL, NULL, 0, NULL, 0,
                        &rs)) < 0)
      break;
    if (rs.head.status != 200) {
      r = s3_status_error(st, "LIST", prefix, &rs);
      free(rs.body);
      break;
    }
    for (;;) {
      int k = s3_xml_next(rs.body, rs.body_len, &pos, "Key", key, sizeof key);
      uint64_t blk;
      if (k == 0)
        break;
      if (k < 0) {
        nbd_error("s3: LIST %s: malformed answer", prefix);
        r = -EIO;
        break;
      }
      /* Only block objects; the lease and foreign objects under the
       * prefix are no data (s3_block_key). */
      if (s3_block_key(key, prefix, &blk) && blk < st->nobj)
        map[blk] = 1;
    }
    pos = 0;
    more = 0;
    if (r == 0) {
      char trunc[16];
      size_t p2 = 0;
      if (s3_xml_next(rs.body, rs.body_len, &p2, "IsTruncated", trunc,
                      sizeof trunc) == 1 && strcmp(trunc, "true") == 0) {
        p2 = 0;
        if (s3_xml_next(rs.body, rs.body_len, &p2, "NextContinuationToken",
                        token, sizeof token) != 1) {
          nbd_error("s3: LIST %s: truncated without a continuation token",
                    prefix);
          r = -EIO;
        } else
          more = 1;
      }
    }
    free(rs.body);
  }
  if (r < 0) {
    free(map);
    return r;
  }
  pthread_mutex_lock(&st->map_lock);
  if (st->map && st->map_gen != gen) {
    /* Our writes raced with the LIST: keep what they made (a deleted
     * object may then stay data, never the other way round). */
    uint64_t i;
    for (i = 0; i < st->nobj; i++)
      map[i] |= st->map[i];
  }
  free(st->map);
  st->map = map;
  st->map_valid = 1;
  st->map_gen++;
  pthread_mutex_unlock(&st->map_lock);
  return 0;
}

/* ---- the lease -------------------------------------------------------- */

struct s3_lease_info {
  char owner[160];
  int64_t expires;            /* Unix seconds */
  char etag[S3_HTTP_ETAG_MAX];
};

static void
s3_lease_name(const struct s3_state *st, char *out, size_t len)
{
  snprintf(out, len, "%s/lease", st->key);
}

/* Reads the lease: 1 found (info filled), 0 none, -errno. */
static int
s3_lease_read(struct s3_state *st, struct s3_lease_info *li)
{
  struct s3_http_resp rs;
  char name[1100];
  int r;

  s3_lease_name(st, name, sizeof name);
  memset(li, 0, sizeof *li);
  r = s3_request(st, "GET", name, "", NULL, NULL, 0, NULL, 0, &rs);
  if (r < 0)
    return r;
  if (rs.head.status == 404) {
    free(rs.body);
    return 0;
  }
  if (rs.head.status != 200) {
    r = s3_status_error(st, "GET", name, &rs);
    free(rs.body);
    return r;
  }
  {
    const char *o = strstr(rs.body, "owner ");
    const char *e = strstr(rs.body, "expires ");
    if (o) {
      size_t n = strcspn(o + 6, "\n");
      if (n >= sizeof li->owner)
        n = sizeof li->owner - 1;
      memcpy(li->owner, o + 6, n);
    } else
      strcpy(li->owner, "(unknown)");
    li->expires = e ? strtoll(e + 8, NULL, 10) : 0;
  }
  snprintf(li->etag, sizeof li->etag, "%s", rs.head.etag);
  free(rs.body);
  return 1;
}

/* PUT the lease with a condition header; 1 done (etag kept), 0 the
 * condition failed (412/409), -errno. */
static int
s3_lease_put(struct s3_state *st, uint64_t lease_s, const char *cond)
{
  struct s3_http_resp rs;
  char name[1100], body[320];
  int n, r;

  s3_lease_name(st, name, sizeof name);
  n = snprintf(body, sizeof body, "nbdstack lease\nowner %s\nexpires %" PRId64
               "\n", st->owner, (int64_t)time(NULL) + (int64_t)lease_s);
  r = s3_request(st, "PUT", name, "", cond, body, (size_t)n, NULL, 0, &rs);
  if (r < 0)
    return r;
  if (rs.head.status == 200) {
    pthread_mutex_lock(&st->state_lock);
    snprintf(st->lease_etag, sizeof st->lease_etag, "%s", rs.head.etag);
    pthread_mutex_unlock(&st->state_lock);
    r = 1;
  } else if (rs.head.status == 412 || rs.head.status == 409)
    r = 0;
  else
    r = s3_status_error(st, "PUT", name, &rs);
  free(rs.body);
  return r;
}

static void
s3_fmt_time(int64_t t, char *out, size_t len)
{
  struct tm tm;
  time_t tt = (time_t)t;

  gmtime_r(&tt, &tm);
  strftime(out, len, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

/* Takes the lease (create, or take over an expired one or our own).
 * Called with lease_op held.  0, -EBUSY (held by another; logged),
 * -errno. */
static int
s3_lease_acquire(struct s3_state *st, uint64_t lease_ns, int quiet)
{
  uint64_t lease_s = lease_ns / 1000000000u, start = s3_mono_ns();
  struct s3_lease_info li;
  char cond[200], when[64];
  int r, tries;

  for (tries = 0; tries < 3; tries++) {
    r = s3_lease_put(st, lease_s, "If-None-Match: *\r\n");
    if (r < 0)
      return r;
    if (r == 1)
      goto held;
    if ((r = s3_lease_read(st, &li)) < 0)
      return r;
    if (r == 0)
      continue;                 /* released meanwhile: create again */
    if (strcmp(li.owner, st->owner) != 0 && li.expires >= (int64_t)time(NULL)) {
      s3_fmt_time(li.expires, when, sizeof when);
      if (!quiet)
        nbd_error("s3: %s/lease is held by %s until %s: refusing to write "
                  "(another server writes this disk)", st->key, li.owner,
                  when);
      return -EBUSY;
    }
    /* Expired (or ours): take it over, conditional on the ETag we read,
     * unquoted (Ceph RGW compares the value as given). */
    snprintf(cond, sizeof cond, "If-Match: %s\r\n", li.etag);
    if ((r = s3_lease_put(st, lease_s, cond)) < 0)
      return r;
    if (r == 1) {
      if (strcmp(li.owner, st->owner) != 0) {
        s3_fmt_time(li.expires, when, sizeof when);
        nbd_info("s3: took over %s/lease from %s (expired %s)", st->key,
                 li.owner, when);
      }
      goto held;
    }
  }
  if (!quiet)
    nbd_error("s3: %s/lease: could not take it (changed under us)", st->key);
  return -EBUSY;
held:
  pthread_mutex_lock(&st->state_lock);
  st->lease_held = 1;
  st->lease_ok = 1;
  /* Leave a margin of a tenth for the time the PUT took to arrive. */
  st->lease_until = start + lease_ns - lease_ns / 10;
  pthread_mutex_unlock(&st->state_lock);
  return 0;
}

struct s3_renewer_arg {
  struct nbd_layer *layer;
  uint64_t epoch;
};

static void *
s3_renewer(void *arg)
{
  struct s3_renewer_arg a = *(struct s3_renewer_arg *)arg;
  struct s3_state *st = a.layer->state;
  const struct s3_conf *conf = a.layer->conf;
  uint64_t period = conf->lease_time / 3;

  free(arg);
  pthread_mutex_lock(&st->lease_op);
  while (st->renewer_epoch == a.epoch) {
    struct timespec ts;
    uint64_t start;
    char cond[200];
    int r = 0;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(period / 1000000000u);
    ts.tv_nsec += (long)(period % 1000000000u);
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    while (st->renewer_epoch == a.epoch && r != ETIMEDOUT)
      r = pthread_cond_timedwait(&st->lease_cond, &st->lease_op, &ts);
    if (st->renewer_epoch != a.epoch)
      break;
    start = s3_mono_ns();
    snprintf(cond, sizeof cond, "If-Match: %s\r\n", st->lease_etag);
    r = s3_lease_put(st, conf->lease_time / 1000000000u, cond);
    if (r == 1) {
      pthread_mutex_lock(&st->state_lock);
      if (!st->lease_ok)
        nbd_info("s3: %s/lease renewed again: writes resume", st->key);
      st->lease_ok = 1;
      st->lease_held = 1;
      st->lease_until = start + conf->lease_time - conf->lease_time / 10;
      pthread_mutex_unlock(&st->state_lock);
      continue;
    }
    if (r == 0 && (r = s3_lease_acquire(st, conf->lease_time, 1)) == 0) {
      nbd_info("s3: %s/lease taken again: writes resume", st->key);
      continue;
    }
    pthread_mutex_lock(&st->state_lock);
    if (st->lease_ok)
      nbd_error("s3: %s/lease: renewal failed (%s): writes fail with EROFS "
                "until it is held again", st->key,
                r == -EBUSY ? "another server holds it" : strerror(-r));
    st->lease_ok = 0;
    pthread_mutex_unlock(&st->state_lock);
  }
  pthread_mutex_unlock(&st->lease_op);
  return NULL;
}

/* 0 when this server may write now, else -EROFS. */
static int
s3_may_write(struct s3_state *st)
{
  int ok;

  pthread_mutex_lock(&st->state_lock);
  ok = st->lease_held && st->lease_ok && s3_mono_ns() < st->lease_until;
  if (st->lease_held && st->lease_ok && !ok) {
    nbd_error("s3: %s/lease: not renewed in time: writes fail with EROFS "
              "until it is", st->key);
    st->lease_ok = 0;
  }
  pthread_mutex_unlock(&st->state_lock);
  return ok ? 0 : -EROFS;
}

/* ---- lifecycle -------------------------------------------------------- */

static int
s3_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct nbd_layer *layer = (struct nbd_layer *)self->layer;
  struct s3_state *st = layer->state;
  const struct s3_conf *conf = layer->conf;
  struct s3_handle *h = calloc(1, sizeof *h);
  int r;

  if (h == NULL)
    return -ENOMEM;
  if (!st->multi) {
    struct s3_http_resp rs;
    r = s3_request(st, "HEAD", st->key, "", NULL, NULL, 0, NULL, 0, &rs);
    if (r == 0) {
      if (rs.head.status != 200 || rs.head.content_length < 0) {
        if (rs.head.status == 404)
          nbd_error("s3: object %s not found in bucket %s", st->key,
                    conf->bucket);
        r = rs.head.status == 404 ? -ENOENT
            : s3_status_error(st, "HEAD", st->key, &rs);
        if (r == 0)
          r = -EIO;
      } else
        h->single_size = rs.head.content_length;
      free(rs.body);
    }
    if (r < 0) {
      free(h);
      return r;
    }
    self->handle = h;
    return 0;
  }

  if (!readonly && !nbd_checking()) {
    pthread_mutex_lock(&st->lease_op);
    if (st->writers == 0) {
      r = s3_lease_acquire(st, conf->lease_time, 0);
      if (r == 0) {
        struct s3_renewer_arg *a = malloc(sizeof *a);
        if (a) {
          a->layer = layer;
          a->epoch = ++st->renewer_epoch;
        }
        if (a == NULL || pthread_create(&st->renewer, NULL, s3_renewer, a)) {
          free(a);
          r = -EAGAIN;
        } else
          st->renewer_running = 1;
      }
      if (r < 0) {
        pthread_mutex_unlock(&st->lease_op);
        free(h);
        return r == -EBUSY ? -EPERM : r;
      }
      /* The map must be built after we hold the lease. */
      pthread_mutex_lock(&st->map_lock);
      st->map_valid = 0;
      pthread_mutex_unlock(&st->map_lock);
    }
    st->writers++;
    h->writer = 1;
    pthread_mutex_unlock(&st->lease_op);
  } else {
    struct s3_lease_info li;
    if (s3_lease_read(st, &li) == 1 && strcmp(li.owner, st->owner) != 0 &&
        li.expires >= (int64_t)time(NULL))
      h->foreign = 1;
  }

  /* The map: built when no writer of ours keeps it current. */
  {
    int need;
    pthread_mutex_lock(&st->lease_op);
    pthread_mutex_lock(&st->map_lock);
    need = !st->map_valid || st->writers == 0 ||
           (h->writer && st->writers == 1);
    pthread_mutex_unlock(&st->map_lock);
    pthread_mutex_unlock(&st->lease_op);
    if (need && s3_list(st) < 0) {
      nbd_warn("s3: LIST of %s/ failed: extents report everything as data",
               st->key);
      pthread_mutex_lock(&st->map_lock);
      st->map_valid = 0;
      pthread_mutex_unlock(&st->map_lock);
    }
  }
  self->handle = h;
  return 0;
}

static void
s3_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct s3_state *st = self->layer->state;
  struct s3_handle *h = self->handle;
  pthread_t t;
  int join = 0;

  if (h == NULL)
    return;
  if (h->writer) {
    pthread_mutex_lock(&st->lease_op);
    if (--st->writers == 0) {
      if (st->renewer_running) {
        st->renewer_epoch++;
        pthread_cond_broadcast(&st->lease_cond);
        t = st->renewer;
        st->renewer_running = 0;
        join = 1;
      }
    }
    pthread_mutex_unlock(&st->lease_op);
    if (join)
      pthread_join(t, NULL);
    pthread_mutex_lock(&st->lease_op);
    if (st->writers == 0 && st->lease_held) {
      char name[1100];
      int ok;
      pthread_mutex_lock(&st->state_lock);
      ok = st->lease_ok;
      pthread_mutex_unlock(&st->state_lock);
      if (ok) {
        s3_lease_name(st, name, sizeof name);
        if (s3_delete(st, name) < 0)
          nbd_warn("s3: could not release %s (it expires by itself)", name);
      }
      pthread_mutex_lock(&st->state_lock);
      st->lease_held = 0;
      st->lease_ok = 0;
      pthread_mutex_unlock(&st->state_lock);
    }
    pthread_mutex_unlock(&st->lease_op);
  }
  free(h);
  self->handle = NULL;
}

/* ---- datapath --------------------------------------------------------- */

static int
s3_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
         uint32_t count, uint64_t offset, uint32_t flags)
{
  struct s3_state *st = self->layer->state;
  struct s3_handle *h = self->handle;
  char *p = buf;
  uint64_t left = count;
  char name[1100];
  int r;

  if (!st->multi)
    return s3_get_range(st, st->key, buf, count, offset);
  while (left) {
    uint64_t blk = offset / st->objsz, off = offset % st->objsz;
    uint64_t n = st->objsz - off < left ? st->objsz - off : left;

    if (!h->foreign && s3_known_absent(st, blk))
      memset(p, 0, (size_t)n);
    else {
      s3_obj_name(st, blk, name, sizeof name);
      if ((r = s3_get_range(st, name, p, n, off)) < 0)
        return r;
    }
    p += n;
    offset += n;
    left -= n;
  }
  return 0;
}

/* Writes [off, off+n) of object blk from src, or zeros when src is NULL,
 * under the object's lock.  Zeros never store an object of zeros: a
 * whole object of zeros is a DELETE (none when the object is known
 * absent), and so is a partial zero that leaves the object all zero, so
 * zeroed space is a hole again and takes no room in the store. */
static int
s3_write_obj(struct s3_state *st, uint64_t blk, const void *src, uint64_t n,
             uint64_t off)
{
  pthread_mutex_t *lock = s3_lock_of(st, blk);
  char name[1100];
  char *tmp;
  int r;

  s3_obj_name(st, blk, name, sizeof name);
  pthread_mutex_lock(lock);
  if (src == NULL && s3_known_absent(st, blk)) {
    pthread_mutex_unlock(lock);
    return 0;                   /* reads as zeros already */
  }
  if (n == st->objsz) {
    if (src == NULL) {
      if ((r = s3_delete(st, name)) == 0)
        s3_map_set(st, blk, 0);
    } else if ((r = s3_put(st, name, src, n)) == 0)
      s3_map_set(st, blk, 1);
    pthread_mutex_unlock(lock);
    return r;
  }
  /* Partial: read, merge, put. */
  if ((tmp = nbd_bufpool_get(&st->bufs, (size_t)st->objsz)) == NULL) {
    pthread_mutex_unlock(lock);
    return -ENOMEM;
  }
  if (s3_known_absent(st, blk)) {
    memset(tmp, 0, (size_t)st->objsz);
    r = 0;
  } else
    r = s3_get_range(st, name, tmp, st->objsz, 0);
  if (r == 0) {
    if (src)
      memcpy(tmp + off, src, (size_t)n);
    else
      memset(tmp + off, 0, (size_t)n);
    if (src == NULL && nbd_is_zero(tmp, (size_t)st->objsz)) {
      if ((r = s3_delete(st, name)) == 0)
        s3_map_set(st, blk, 0);
    } else if ((r = s3_put(st, name, tmp, st->objsz)) == 0)
      s3_map_set(st, blk, 1);
  }
  nbd_bufpool_put(&st->bufs, tmp, (size_t)st->objsz);
  pthread_mutex_unlock(lock);
  return r;
}

/* Writes (buf), zeroes (buf NULL) or trims (trim) a range, object by
 * object.  Trim is a hint (NBD: the client may assume nothing of trimmed
 * contents until it writes them): a whole object is deleted, the part of
 * an object a trim covers is left as it is, so a read after a partial
 * trim returns the old data, the same on every read, and costs no GET and
 * PUT for space S3 would not give back anyway (an object is stored whole).
 * nbdkit's S3 plugin trims the same way. */
static int
s3_write_range(struct nbd_ctx *self, const void *buf, uint64_t count,
               uint64_t offset, int trim)
{
  struct s3_state *st = self->layer->state;
  const char *p = buf;
  int r;

  if ((r = s3_may_write(st)) < 0)
    return r;
  while (count) {
    uint64_t blk = offset / st->objsz, off = offset % st->objsz;
    uint64_t n = st->objsz - off < count ? st->objsz - off : count;

    if (!(trim && n < st->objsz) &&
        (r = s3_write_obj(st, blk, p, n, off)) < 0)
      return r;
    if (p)
      p += n;
    offset += n;
    count -= n;
  }
  return 0;
}

static int
s3_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
          uint32_t count, uint64_t offset, uint32_t flags)
{
  return s3_write_range(self, buf, count, offset, 0);
}

static int
s3_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  return 0;                     /* every write was acknowledged by a PUT */
}

static int
s3_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
        uint64_t offset, uint32_t flags)
{
  return s3_write_range(self, NULL, count, offset, 1);
}

static int
s3_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
        uint64_t offset, uint32_t flags)
{
  struct s3_state *st = self->layer->state;

  /* Always zeroes, whatever the flags: NBD_CMD_FLAG_NO_HOLE only asks to
   * keep space allocated, and S3 stores zeros no cheaper than a hole.
   * (nbdkit's S3 plugin turns a zero that may trim into its trim, which
   * skips partial objects: their old data stays, read back after the
   * zero.)  Fast only when every object is whole (a DELETE each). */
  if ((flags & NBD_CMD_FLAG_FAST_ZERO) &&
      (offset % st->objsz || count % st->objsz))
    return -ENOTSUP;
  return s3_write_range(self, NULL, count, offset, 0);
}

static int
s3_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  struct s3_state *st = self->layer->state;
  struct s3_handle *h = self->handle;
  uint64_t end = offset + count, blk;
  int r = 0, valid;

  pthread_mutex_lock(&st->map_lock);
  valid = st->map_valid && !h->foreign;
  if (!valid) {
    pthread_mutex_unlock(&st->map_lock);
    return nbd_extents_add(extents, offset, count, 0);
  }
  if (end > st->size)
    end = st->size;
  /* Runs of objects of one kind; at most 4096 runs per answer (a client
   * asks again for the rest). */
  blk = offset / st->objsz;
  while (r == 0 && blk * st->objsz < end && extents->n < 4096) {
    uint64_t first = blk;
    uint8_t kind = st->map[blk];
    while (blk * st->objsz < end && st->map[blk] == kind)
      blk++;
    r = nbd_extents_add(extents, first * st->objsz, (blk - first) * st->objsz,
                        kind ? 0 : NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  }
  pthread_mutex_unlock(&st->map_lock);
  return r;
}

/* ---- capabilities ----------------------------------------------------- */

static int64_t
s3_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct s3_state *st = self->layer->state;
  struct s3_handle *h = self->handle;

  return st->multi ? (int64_t)st->size : h->single_size;
}

static int
s3_can_write(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return ((struct s3_state *)self->layer->state)->multi;
}

static int
s3_can_extents(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return ((struct s3_state *)self->layer->state)->multi;
}

static int
s3_can_fua(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_FUA_NATIVE;
}

static int
s3_can_zero(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_ZERO_NATIVE;
}

#define s3_can_flush nbd_cap_yes
#define s3_can_trim nbd_cap_yes
#define s3_can_fast_zero nbd_cap_yes
#define s3_can_multi_conn nbd_cap_yes

/* ---- setup ------------------------------------------------------------ */

static void
s3_free_state(struct s3_state *st)
{
  int i;

  s3_pool_free(st->pool);
  free(st->host_header);
  free(st->path_prefix);
  if (st->secret)
    memset(st->secret, 0, strlen(st->secret));
  free(st->access);
  free(st->secret);
  free(st->token);
  free(st->region);
  free(st->map);
  for (i = 0; i < S3_LOCKS; i++)
    pthread_mutex_destroy(&st->obj_lock[i]);
  pthread_mutex_destroy(&st->map_lock);
  pthread_mutex_destroy(&st->lease_op);
  pthread_mutex_destroy(&st->state_lock);
  pthread_cond_destroy(&st->lease_cond);
  nbd_bufpool_destroy(&st->bufs);
  free(st);
}

/* Whether a bucket name can be the first label of a host name (virtual
 * addressing): 0 yes, -1 no.  Not with dots, as botocore decides: they
 * make more labels, which AWS's wildcard certificate
 * (*.s3.REGION.amazonaws.com) does not match. */
static int
s3_bucket_hostable(const char *b)
{
  size_t n = strlen(b), i;

  if (n < 3 || n > 63 || b[0] == '-' || b[n - 1] == '-')
    return -1;
  for (i = 0; i < n; i++)
    if (!((b[i] >= 'a' && b[i] <= 'z') || (b[i] >= '0' && b[i] <= '9') ||
          b[i] == '-'))
      return -1;
  return 0;
}

static int
s3_setup_endpoint(struct s3_state *st, const struct s3_conf *c,
                  char *err, size_t errlen)
{
  char url[1024], host[512], port[16], hosthdr[740], conn_host[700];
  struct s3_pool_conf pc;
  const char *p, *slash, *colon;
  int tls, virt, hostable;

  if (c->endpoint_url)
    snprintf(url, sizeof url, "%s", c->endpoint_url);
  else                          /* AWS; its China partition has .cn */
    snprintf(url, sizeof url, "https://s3.%s.amazonaws.com%s", st->region,
             strncmp(st->region, "cn-", 3) == 0 ? ".cn" : "");
  if (strncmp(url, "http://", 7) == 0) {
    tls = 0;
    p = url + 7;
  } else if (strncmp(url, "https://", 8) == 0) {
    tls = 1;
    p = url + 8;
  } else {
    snprintf(err, errlen, "endpoint-url '%s' must start with http:// or "
             "https://", url);
    return -1;
  }
  slash = p + strcspn(p, "/?#");
  if (*slash && strcmp(slash, "/") != 0) {
    snprintf(err, errlen, "endpoint-url '%s': a path after the host is not "
             "supported", url);
    return -1;
  }
  if (*p == '[') {
    const char *rb = memchr(p, ']', (size_t)(slash - p));
    if (rb == NULL || (rb[1] != ':' && rb + 1 != slash))
      goto bad;
    colon = rb[1] == ':' ? rb + 1 : NULL;
  } else
    colon = memchr(p, ':', (size_t)(slash - p));
  if ((size_t)((colon ? colon : slash) - p) >= sizeof host ||
      (colon ? colon : slash) == p)
    goto bad;
  memcpy(host, p, (size_t)((colon ? colon : slash) - p));
  host[(colon ? colon : slash) - p] = '\0';
  if (colon) {
    if ((size_t)(slash - colon - 1) >= sizeof port || slash == colon + 1 ||
        strspn(colon + 1, "0123456789") != (size_t)(slash - colon - 1))
      goto bad;
    memcpy(port, colon + 1, (size_t)(slash - colon - 1));
    port[slash - colon - 1] = '\0';
  } else
    strcpy(port, tls ? "443" : "80");
  /* auto: virtual for AWS when the bucket can be a host name label, as
   * botocore does (path style for the rest, which AWS still serves). */
  hostable = s3_bucket_hostable(c->bucket);
  virt = c->addressing == S3_ADDR_VIRTUAL ||
         (c->addressing == S3_ADDR_AUTO && c->endpoint_url == NULL &&
          hostable == 0);
  if (virt && hostable < 0) {
    snprintf(err, errlen, "addressing=virtual: bucket '%s' cannot be part "
             "of a host name (3 to 63 lowercase letters, digits and '-'): "
             "use addressing=path",
             c->bucket);
    return -1;
  }
  if (virt && (host[0] == '[' || strspn(host, "0123456789.") ==
               strlen(host))) {
    snprintf(err, errlen, "addressing=virtual needs a host name in "
             "endpoint-url, not the address '%s' (the bucket becomes part "
             "of the name: BUCKET.HOST)", host);
    return -1;
  }
  snprintf(conn_host, sizeof conn_host, "%s%s%s", virt ? c->bucket : "",
           virt ? "." : "", host);
  if (colon)
    snprintf(hosthdr, sizeof hosthdr, "%s:%s", conn_host, port);
  else
    snprintf(hosthdr, sizeof hosthdr, "%s", conn_host);
  st->tls = tls;
  st->sign_payload = c->payload_signing == S3_SIGN_ALWAYS ||
                     (c->payload_signing == S3_SIGN_AUTO && !tls);
  st->host_header = strdup(hosthdr);
  if (virt)
    st->path_prefix = strdup("");
  else {
    char enc[600];
    if (s3_uri_encode(c->bucket, 0, enc + 1, sizeof enc - 1) < 0)
      goto bad;
    enc[0] = '/';
    st->path_prefix = strdup(enc);
  }
  if (st->host_header == NULL || st->path_prefix == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  memset(&pc, 0, sizeof pc);
  /* Brackets of an IPv6 literal are for the URL, not for getaddrinfo. */
  if (conn_host[0] == '[') {
    memmove(conn_host, conn_host + 1, strlen(conn_host));
    conn_host[strcspn(conn_host, "]")] = '\0';
  }
  pc.host = conn_host;
  pc.port = port;
  pc.tls = tls;
  pc.tls_verify = c->tls_verify;
  pc.tls_ca = c->tls_ca;
  pc.sni = conn_host;
  pc.max_conns = (unsigned)c->connections;
  pc.timeout_s = 30;
  if ((st->pool = s3_pool_new(&pc, err, errlen)) == NULL)
    return -1;
  return 0;
bad:
  snprintf(err, errlen, "endpoint-url '%s' is not http[s]://HOST[:PORT]",
           url);
  return -1;
}

static int
s3_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct s3_conf *c = layer->conf;
  struct s3_state *st = calloc(1, sizeof *st);
  char hostname[64] = "";
  unsigned rnd = 0;
  FILE *ur;
  int i;

  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  for (i = 0; i < S3_LOCKS; i++)
    pthread_mutex_init(&st->obj_lock[i], NULL);
  pthread_mutex_init(&st->map_lock, NULL);
  pthread_mutex_init(&st->lease_op, NULL);
  pthread_mutex_init(&st->state_lock, NULL);
  pthread_cond_init(&st->lease_cond, NULL);
  st->key = c->key;
  st->retries = c->retries;

  if (c->key[0] == '\0' || c->bucket[0] == '\0') {
    snprintf(err, errlen, "bucket= and key= must not be empty");
    goto fail;
  }
  if (strlen(c->key) > 900) {
    snprintf(err, errlen, "key= is longer than 900 bytes");
    goto fail;
  }
  if (nbd_layer_param_set(layer, "size") !=
      nbd_layer_param_set(layer, "object-size")) {
    snprintf(err, errlen, "size= and object-size= go together (a writable "
             "disk of many objects); neither serves one object read-only");
    goto fail;
  }
  if (nbd_layer_param_set(layer, "size")) {
    if (c->object_size < S3_OBJ_MIN || c->object_size > S3_OBJ_MAX ||
        (c->object_size & (c->object_size - 1))) {
      snprintf(err, errlen, "object-size=%" PRIu64 ": must be a power of "
               "two from 4K to 64M", c->object_size);
      goto fail;
    }
    if (c->size == 0 || c->size % c->object_size ||
        c->size > (uint64_t)INT64_MAX) {
      snprintf(err, errlen, "size=%" PRIu64 " must be a non-zero multiple "
               "of object-size=%" PRIu64, c->size, c->object_size);
      goto fail;
    }
    st->multi = 1;
    st->size = c->size;
    st->objsz = c->object_size;
    st->nobj = c->size / c->object_size;
    nbd_bufpool_init(&st->bufs, (size_t)c->object_size);
  } else
    nbd_bufpool_init(&st->bufs, 4096);
  if (c->connections == 0 || c->connections > 1024) {
    snprintf(err, errlen, "connections=%" PRIu64 ": must be 1 to 1024",
             c->connections);
    goto fail;
  }
  if (c->retries > 100) {
    snprintf(err, errlen, "retries=%" PRIu64 ": at most 100", c->retries);
    goto fail;
  }
  if (c->lease_time < UINT64_C(3000000000)) {
    snprintf(err, errlen, "lease-time must be at least 3s");
    goto fail;
  }
  {
    struct s3_aws_creds cr;
    if (s3_aws_resolve(c->access_key, c->secret_key, c->session_token,
                       c->region, &cr, err, errlen) < 0) {
      s3_aws_creds_free(&cr);
      goto fail;
    }
    st->access = cr.access;
    st->secret = cr.secret;
    st->token = cr.token;
    st->region = cr.region;
    nbd_debug("s3: credentials from %s, region %s", cr.source, st->region);
  }
  if (strlen(st->access) > 128 || strlen(st->secret) > 256 ||
      (st->token && strlen(st->token) > 2048)) {
    snprintf(err, errlen, "access-key, secret-key or session-token is too "
             "long");
    goto fail;
  }
  if (s3_setup_endpoint(st, c, err, errlen) == -1)
    goto fail;
  gethostname(hostname, sizeof hostname - 1);
  if ((ur = fopen("/dev/urandom", "r")) != NULL) {
    if (fread(&rnd, sizeof rnd, 1, ur) != 1)
      rnd = (unsigned)s3_mono_ns();
    fclose(ur);
  } else
    rnd = (unsigned)s3_mono_ns();
  snprintf(st->owner, sizeof st->owner, "nbdstack@%s pid %ld export '%s' "
           "(%08x)", hostname, (long)getpid(),
           layer->export_name ? layer->export_name : "", rnd);
  st->owner[strcspn(st->owner, "\n")] = '\0';
  layer->state = st;
  return 0;
fail:
  s3_free_state(st);
  return -1;
}

static void
s3_cleanup(struct nbd_layer *layer)
{
  if (layer->state)
    s3_free_state(layer->state);
  layer->state = NULL;
}

UNSUPPORTED(s3, list_exports)
UNSUPPORTED(s3, depth)
UNSUPPORTED(s3, preconnect)
/* reopen: close and open this layer too (layer.h "Reopening"): the
 * lease is released and taken again when this was the export's last
 * writer, and the object map is listed again unless another writer of
 * this server keeps it; the HTTP pool and the map belong to the export. */
#define s3_reopen nbd_reopen_close_open
UNSUPPORTED(s3, cache)
UNSUPPORTED(s3, block_size)
UNSUPPORTED(s3, can_cache)
UNSUPPORTED(s3, is_rotational)

NBD_REGISTER_BACKEND(s3, NBD_PARALLEL,
  /* Every request waits for the store. */
  NBD_MAY_BLOCK,
  .description = "a disk in an S3 bucket (Ceph RGW, AWS, MinIO)",
  .params = s3_params,
  .conf_size = sizeof(struct s3_conf),
  .setup = s3_setup,
  .cleanup = s3_cleanup,
  .open = s3_open,
  .close = s3_close,
);
