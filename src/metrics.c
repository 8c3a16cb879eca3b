/* nbdstack live metrics: the counters behind the Prometheus endpoint
 * (docs/metrics.md), and their text exposition.
 *
 * Counters are kept per export name, not per export object: a reload
 * makes new export objects, and a Prometheus counter must not go back to
 * 0 while the process lives.  An export's counters are split in
 * METRICS_SHARDS shards, each on its own cache lines; a connection
 * counts in one of them (its id modulo the shard count) with relaxed
 * atomic adds, so requests take no lock and connections of one export
 * rarely share a cache line.  A scrape sums the shards with relaxed
 * loads: each counter it shows is one that only grows.
 *
 * The list of exports only grows (a name stays when a reload removes it,
 * so that a connection still counting never points at freed memory, and
 * its counters go on if the name comes back).  New names are added under
 * metrics_lock, which only handshakes and reloads take; readers walk the
 * list without it.
 *
 * It does not serve HTTP (metrics_http.c) nor decide what to count:
 * the hooks are called from conn.c, transmission.c, handshake.c,
 * server.c and lobby.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conn.h"
#include "metrics.h"
#include "protocol.h"
#include "tls.h"

#define METRICS_VERSION "0.1.0"
#define METRICS_SHARDS 16

/* The methods as nbdkit's stats filter names them. */
enum { M_READ, M_WRITE, M_FLUSH, M_TRIM, M_ZERO, M_CACHE, M_EXTENTS, M_N };
static const char *const metrics_method_names[M_N] = {
  "read", "write", "flush", "trim", "zero", "cache", "extents",
};
/* NBD_CMD_* (proto.md "Request types") to the above; -1: not counted. */
static const signed char metrics_cmd[8] = {
  M_READ, M_WRITE, -1 /* DISC */, M_FLUSH, M_TRIM, M_CACHE, M_ZERO,
  M_EXTENTS,
};

/* The errors a client can see (proto.md "Error values"). */
#define METRICS_NERRORS 8
static const char *const metrics_errno_names[METRICS_NERRORS] = {
  "EPERM", "EIO", "ENOMEM", "EINVAL", "ENOSPC", "EOVERFLOW", "ENOTSUP",
  "ESHUTDOWN",
};

/* Upper bounds of the latency buckets, ns; the last bucket is +Inf. */
static const uint64_t metrics_bounds[] = {
  1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
  1000000, 2500000, 5000000, 10000000, 25000000, 50000000,
  100000000, 250000000, 500000000,
  1000000000, 2500000000u, 5000000000u, 10000000000u,
};
#define METRICS_NBOUNDS (sizeof metrics_bounds / sizeof metrics_bounds[0])
#define METRICS_NBUCKETS (METRICS_NBOUNDS + 1)
/* For a duration of bit length L (1-64), the first bucket it may fall
 * in: from there at most two steps find it (a power-of-two range holds
 * at most two bounds of a 1-2.5-5 series).  Filled at configure. */
static unsigned char metrics_first_bucket[65];

/* Every answered request is one observation of the histogram (those
 * refused before they ran with duration 0), so the request count is the
 * buckets' sum: one atomic add less per request. */
struct metrics_method {
  uint64_t bytes, sum_ns;
  uint64_t errors[METRICS_NERRORS];
  uint64_t buckets[METRICS_NBUCKETS];    /* not cumulative */
};

struct metrics_export;

/* Aligned so that two shards never share a cache line. */
struct metrics_shard {
  struct metrics_method m[M_N];
  struct metrics_export *exp;
} __attribute__((aligned(64)));

struct metrics_export {
  struct metrics_export *next;  /* set before it is published */
  char *name;
  int configured;               /* in the current set (atomic) */
  int64_t open;                 /* connections now (atomic) */
  uint64_t connections;         /* handshaken connections (atomic) */
  struct metrics_shard shard[METRICS_SHARDS];
};

static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static struct metrics_export *metrics_exports;   /* atomic head */
/* Whether connections are counted (the endpoint is configured). */
static int metrics_on;
static uint64_t metrics_refusals[METRICS_NREFUSALS];
static uint64_t metrics_hs_ok, metrics_hs_aborted, metrics_hs_failed;
static uint64_t metrics_hs_timeout;
static uint64_t metrics_started;        /* seconds since the epoch */
static __thread int metrics_abort_seen;

/* HTTP responses of the endpoint, by code. */
static const int metrics_codes[] = { 200, 400, 404, 405, 408, 500 };
#define METRICS_NCODES (sizeof metrics_codes / sizeof metrics_codes[0])
static uint64_t metrics_responses[METRICS_NCODES];

#define ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define GET(p) __atomic_load_n((p), __ATOMIC_RELAXED)

/* ---- the export list ------------------------------------------------------ */

static struct metrics_export *
metrics_find(const char *name)
{
  struct metrics_export *e;

  for (e = __atomic_load_n(&metrics_exports, __ATOMIC_ACQUIRE); e;
       e = e->next)
    if (strcmp(e->name, name) == 0)
      return e;
  return NULL;
}

/* The counters of export name, made if new; NULL when out of memory. */
static struct metrics_export *
metrics_get(const char *name)
{
  struct metrics_export *e = metrics_find(name);
  size_t i;

  if (e)
    return e;
  pthread_mutex_lock(&metrics_lock);
  if ((e = metrics_find(name)) == NULL &&
      (e = aligned_alloc(64, sizeof *e)) != NULL) {
    memset(e, 0, sizeof *e);
    if ((e->name = strdup(name)) == NULL) {
      free(e);
      e = NULL;
    } else {
      for (i = 0; i < METRICS_SHARDS; i++)
        e->shard[i].exp = e;
      e->next = metrics_exports;
      __atomic_store_n(&metrics_exports, e, __ATOMIC_RELEASE);
    }
  }
  pthread_mutex_unlock(&metrics_lock);
  return e;
}

void
metrics_configure(const struct nbd_config *cfg)
{
  const struct nbd_export *x;
  struct metrics_export *e;

  if (metrics_started == 0) {
    unsigned l, b = 0;
    metrics_started = (uint64_t)time(NULL);
    for (l = 1; l <= 64; l++) {
      /* The smallest duration of bit length l is 2^(l-1). */
      uint64_t low = UINT64_C(1) << (l - 1);
      while (b < METRICS_NBOUNDS && low > metrics_bounds[b])
        b++;
      metrics_first_bucket[l] = (unsigned char)b;
    }
  }
  __atomic_store_n(&metrics_on, cfg->metrics != NULL, __ATOMIC_RELAXED);
  for (x = cfg->exports; x; x = x->next)
    metrics_get(x->name);
  for (e = __atomic_load_n(&metrics_exports, __ATOMIC_ACQUIRE); e;
       e = e->next) {
    int in = 0;
    for (x = cfg->exports; x && !in; x = x->next)
      in = strcmp(x->name, e->name) == 0;
    __atomic_store_n(&e->configured, in, __ATOMIC_RELAXED);
  }
}

/* ---- hooks ---------------------------------------------------------------- */

void
metrics_handshake(struct nbd_conn *c, int r)
{
  struct metrics_export *e;

  if (r == -1) {
    ADD(metrics_abort_seen ? &metrics_hs_aborted : &metrics_hs_failed, 1);
    metrics_abort_seen = 0;
    return;
  }
  ADD(&metrics_hs_ok, 1);
  if (!GET(&metrics_on) || c->exp == NULL || (e = metrics_get(c->exp->name)) ==
      NULL)
    return;
  ADD(&e->open, 1);
  ADD(&e->connections, 1);
  c->metrics = &e->shard[c->info.id % METRICS_SHARDS];
}

void
metrics_handshake_aborted(void)
{
  metrics_abort_seen = 1;
}

void
metrics_handshake_timeout(void)
{
  ADD(&metrics_hs_timeout, 1);
}

void
metrics_conn_close(struct nbd_conn *c)
{
  if (c->metrics) {
    ADD(&c->metrics->exp->open, -1);
    c->metrics = NULL;
  }
}

void
metrics_refused(enum metrics_refusal why)
{
  ADD(&metrics_refusals[why], 1);
}

uint64_t
metrics_start(const struct nbd_conn *c)
{
  return c->metrics ? nbd_now_ns() : 0;
}

/* Index in metrics_errno_names of the error the client is sent. */
static unsigned
metrics_errno_index(int err)
{
  switch (proto_nbd_error(err)) {
  case NBD_EPERM: return 0;
  case NBD_ENOMEM: return 2;
  case NBD_EINVAL: return 3;
  case NBD_ENOSPC: return 4;
  case NBD_EOVERFLOW: return 5;
  case NBD_ENOTSUP: return 6;
  case NBD_ESHUTDOWN: return 7;
  default: return 1;            /* EIO */
  }
}

void
metrics_request(const struct nbd_conn *c, const struct nbd_request *r,
                int err, uint64_t t0)
{
  struct metrics_method *m;
  uint64_t ns;
  unsigned b;

  if (c->metrics == NULL || r->type >= sizeof metrics_cmd ||
      metrics_cmd[r->type] < 0)
    return;
  m = &c->metrics->m[metrics_cmd[r->type]];
  if (err < 0)
    ADD(&m->errors[metrics_errno_index(err)], 1);
  else
    ADD(&m->bytes, r->count);
  ns = t0 ? nbd_now_ns() - t0 : 0;
  b = ns ? metrics_first_bucket[64 - __builtin_clzll(ns)] : 0;
  while (b < METRICS_NBOUNDS && ns > metrics_bounds[b])
    b++;
  if (ns)
    ADD(&m->sum_ns, ns);
  ADD(&m->buckets[b], 1);
}

void
metrics_note_response(int code)
{
  size_t i;

  for (i = 0; i < METRICS_NCODES; i++)
    if (metrics_codes[i] == code)
      ADD(&metrics_responses[i], 1);
}

/* ---- the exposition ------------------------------------------------------- */

struct metrics_buf {
  char *p;
  size_t len, cap;
  int failed;
};

static void metrics_printf(struct metrics_buf *b, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));

static void
metrics_printf(struct metrics_buf *b, const char *fmt, ...)
{
  va_list ap;
  int n;

  if (b->failed)
    return;
  for (;;) {
    va_start(ap, fmt);
    n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->failed = 1;
      return;
    }
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    {
      size_t cap = 2 * b->cap + (size_t)n;
      char *p = realloc(b->p, cap);
      if (p == NULL) {
        b->failed = 1;
        return;
      }
      b->p = p;
      b->cap = cap;
    }
  }
}

/* A label value (format 0.0.4: UTF-8, with \\, \" and \n escaped).  An
 * export name is any bytes: one that is not UTF-8 gets U+FFFD for each
 * bad byte. */
static void
metrics_label(struct metrics_buf *b, const char *s)
{
  const unsigned char *p = (const unsigned char *)s;

  while (*p) {
    unsigned char c = *p;
    size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0
               ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0, i;
    if (c == '\\' || c == '"')
      metrics_printf(b, "\\%c", c);
    else if (c == '\n')
      metrics_printf(b, "\\n");
    else if (n == 1)
      metrics_printf(b, "%c", c);
    else {
      for (i = 1; i < n && (p[i] & 0xc0) == 0x80; i++)
        ;
      /* Overlong, surrogate and out-of-range forms are not UTF-8. */
      if (n == 0 || i < n || (n == 2 && c < 0xc2) ||
          (n == 3 && c == 0xe0 && p[1] < 0xa0) ||
          (n == 3 && c == 0xed && p[1] >= 0xa0) ||
          (n == 4 && c == 0xf0 && p[1] < 0x90) ||
          (n == 4 && (c > 0xf4 || (c == 0xf4 && p[1] >= 0x90)))) {
        metrics_printf(b, "\xef\xbf\xbd");
        p++;
        continue;
      }
      metrics_printf(b, "%.*s", (int)n, (const char *)p);
      p += n;
      continue;
    }
    p++;
  }
}

static void
metrics_family(struct metrics_buf *b, const char *name, const char *type,
               const char *help)
{
  metrics_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* "{export="NAME",method="M"" without the closing brace. */
static void
metrics_labels(struct metrics_buf *b, const char *family,
               const struct metrics_export *e, int method)
{
  metrics_printf(b, "%s{export=\"", family);
  metrics_label(b, e->name);
  metrics_printf(b, "\"");
  if (method >= 0)
    metrics_printf(b, ",method=\"%s\"", metrics_method_names[method]);
}

/* Whether e is shown: in the current set, or still serving clients. */
static int
metrics_shown(const struct metrics_export *e)
{
  return GET(&e->configured) || GET(&e->open) > 0;
}

/* The sum of e's shards. */
static void
metrics_sum(const struct metrics_export *e, struct metrics_method *out)
{
  size_t s, k, i;

  memset(out, 0, M_N * sizeof *out);
  for (s = 0; s < METRICS_SHARDS; s++)
    for (k = 0; k < M_N; k++) {
      const struct metrics_method *m = &e->shard[s].m[k];
      out[k].bytes += GET(&m->bytes);
      out[k].sum_ns += GET(&m->sum_ns);
      for (i = 0; i < METRICS_NERRORS; i++)
        out[k].errors[i] += GET(&m->errors[i]);
      for (i = 0; i < METRICS_NBUCKETS; i++)
        out[k].buckets[i] += GET(&m->buckets[i]);
    }
}

static void
metrics_render_server(struct metrics_buf *b)
{
  static const char *const reasons[METRICS_NREFUSALS] = {
    "max-connections", "max-handshakes", "export-limit", "limit", "ip",
    "tls", "policy", "unknown-export", "open-failed",
  };
  size_t i;

  metrics_family(b, "nbdstack_build_info", "gauge",
                 "The version of the server and of its TLS library.");
  metrics_printf(b, "nbdstack_build_info{version=\"%s\",tls=\"",
                 METRICS_VERSION);
  metrics_label(b, tls_version_text());
  metrics_printf(b, "\"} 1\n");
  metrics_family(b, "nbdstack_start_time_seconds", "gauge",
                 "When the server started, in seconds since the epoch.");
  metrics_printf(b, "nbdstack_start_time_seconds %" PRIu64 "\n",
                 metrics_started);
  metrics_family(b, "nbdstack_handshakes_total", "counter",
                 "Handshakes ended: ok (transmission began), aborted (the "
                 "client sent NBD_OPT_ABORT, as after a list), failed, "
                 "timeout (silent past handshake-timeout).");
  metrics_printf(b, "nbdstack_handshakes_total{result=\"ok\"} %" PRIu64
                 "\nnbdstack_handshakes_total{result=\"aborted\"} %" PRIu64
                 "\nnbdstack_handshakes_total{result=\"failed\"} %" PRIu64
                 "\nnbdstack_handshakes_total{result=\"timeout\"} %" PRIu64
                 "\n", GET(&metrics_hs_ok), GET(&metrics_hs_aborted),
                 GET(&metrics_hs_failed), GET(&metrics_hs_timeout));
  metrics_family(b, "nbdstack_connections_refused_total", "counter",
                 "Clients turned away, by reason: a limit, the ip "
                 "filter, TLS required, a layer's policy, an unknown "
                 "export, a failed open.");
  for (i = 0; i < METRICS_NREFUSALS; i++)
    metrics_printf(b, "nbdstack_connections_refused_total{reason=\"%s\"} %"
                   PRIu64 "\n", reasons[i], GET(&metrics_refusals[i]));
  metrics_family(b, "nbdstack_metrics_responses_total", "counter",
                 "Responses of this endpoint, by HTTP status code.");
  for (i = 0; i < METRICS_NCODES; i++)
    metrics_printf(b, "nbdstack_metrics_responses_total{code=\"%d\"} %"
                   PRIu64 "\n", metrics_codes[i],
                   GET(&metrics_responses[i]));
}

static void
metrics_render_exports(struct metrics_buf *b, struct metrics_export *head,
                       struct metrics_method (*sums)[M_N], size_t n)
{
  struct metrics_export *e;
  size_t x, k, i;

  metrics_family(b, "nbdstack_connections_open", "gauge",
                 "Connections in transmission, by export.");
  for (e = head; e; e = e->next)
    if (metrics_shown(e)) {
      metrics_labels(b, "nbdstack_connections_open", e, -1);
      metrics_printf(b, "} %" PRId64 "\n", GET(&e->open));
    }
  metrics_family(b, "nbdstack_connections_total", "counter",
                 "Connections that entered transmission, by export.");
  for (e = head; e; e = e->next)
    if (metrics_shown(e)) {
      metrics_labels(b, "nbdstack_connections_total", e, -1);
      metrics_printf(b, "} %" PRIu64 "\n", GET(&e->connections));
    }
  metrics_family(b, "nbdstack_requests_total", "counter",
                 "Requests answered, by export and method.");
  for (e = head, x = 0; e && x < n; e = e->next, x++)
    for (k = 0; k < M_N && metrics_shown(e); k++) {
      uint64_t total = 0;
      for (i = 0; i < METRICS_NBUCKETS; i++)
        total += sums[x][k].buckets[i];
      metrics_labels(b, "nbdstack_requests_total", e, (int)k);
      metrics_printf(b, "} %" PRIu64 "\n", total);
    }
  metrics_family(b, "nbdstack_request_bytes_total", "counter",
                 "Bytes of the requests that succeeded (their count), by "
                 "export and method.");
  for (e = head, x = 0; e && x < n; e = e->next, x++)
    for (k = 0; k < M_N && metrics_shown(e); k++) {
      metrics_labels(b, "nbdstack_request_bytes_total", e, (int)k);
      metrics_printf(b, "} %" PRIu64 "\n", sums[x][k].bytes);
    }
  metrics_family(b, "nbdstack_request_errors_total", "counter",
                 "Requests answered with an error, by export, method and "
                 "the NBD error sent (series appear at the first one).");
  for (e = head, x = 0; e && x < n; e = e->next, x++)
    for (k = 0; k < M_N && metrics_shown(e); k++)
      for (i = 0; i < METRICS_NERRORS; i++)
        if (sums[x][k].errors[i]) {
          metrics_labels(b, "nbdstack_request_errors_total", e, (int)k);
          metrics_printf(b, ",errno=\"%s\"} %" PRIu64 "\n",
                         metrics_errno_names[i], sums[x][k].errors[i]);
        }
  metrics_family(b, "nbdstack_request_duration_seconds", "histogram",
                 "Time from the start of a request in the export's stack "
                 "to its reply (0 for one refused before it ran), by export "
                 "and method.");
  for (e = head, x = 0; e && x < n; e = e->next, x++)
    for (k = 0; k < M_N && metrics_shown(e); k++) {
      const struct metrics_method *m = &sums[x][k];
      uint64_t cum = 0;
      for (i = 0; i < METRICS_NBUCKETS; i++) {
        cum += m->buckets[i];
        metrics_labels(b, "nbdstack_request_duration_seconds_bucket", e,
                       (int)k);
        if (i < METRICS_NBOUNDS)
          metrics_printf(b, ",le=\"%g\"} %" PRIu64 "\n",
                         (double)metrics_bounds[i] / 1e9, cum);
        else
          metrics_printf(b, ",le=\"+Inf\"} %" PRIu64 "\n", cum);
      }
      metrics_labels(b, "nbdstack_request_duration_seconds_sum", e, (int)k);
      metrics_printf(b, "} %.9f\n", (double)m->sum_ns / 1e9);
      metrics_labels(b, "nbdstack_request_duration_seconds_count", e,
                     (int)k);
      metrics_printf(b, "} %" PRIu64 "\n", cum);
    }
}

char *
metrics_render(size_t *len)
{
  struct metrics_buf b = { NULL, 0, 0, 0 };
  struct metrics_export *head, *e;
  struct metrics_method (*sums)[M_N];
  size_t n = 0, x;

  head = __atomic_load_n(&metrics_exports, __ATOMIC_ACQUIRE);
  for (e = head; e; e = e->next)
    n++;
  sums = calloc(n ? n : 1, sizeof *sums);
  b.cap = 16384;
  b.p = malloc(b.cap);
  if (sums == NULL || b.p == NULL) {
    free(sums);
    free(b.p);
    return NULL;
  }
  for (e = head, x = 0; e && x < n; e = e->next, x++)
    metrics_sum(e, sums[x]);
  metrics_render_server(&b);
  metrics_render_exports(&b, head, sums, n);
  free(sums);
  if (b.failed) {
    free(b.p);
    return NULL;
  }
  *len = b.len;
  return b.p;
}
