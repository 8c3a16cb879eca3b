/* nbdstack filter stats: per-method counts, bytes, errors and latency
 * percentiles, written to a file at exit and on SIGUSR1 (nbdkit's stats
 * filter: statsfile=, statsappend=; its lines, plus errors and latency).
 *
 *   total: 6 ops, 1.047475 s, 13.00 KiB, 12.41 KiB/s
 *   read: 2 ops, 0.000004 s, 4.50 KiB, 1.07 GiB/s op, 4.30 KiB/s total
 *     errors: 0, latency p50 1.8 us, p90 2.2 us, p99 2.2 us, max 2.1 us
 *
 * "total" gives the time since the filter started and the bytes of every
 * method; each method line the time spent in it (summed over requests),
 * its bytes, bytes per second of that time ("op") and of the elapsed time
 * ("total"), as nbdkit's.  ops counts every call, errors the failed
 * ones, bytes the successful ones.  Latency comes from a histogram of 8
 * buckets per power of two (values are upper bounds of their bucket, so
 * within 12.5 %); max is exact.
 *
 * statsthreshold=PERCENTILE (nbdkit's, default 95, 0 = off) adds
 * nbdkit's "Request size and alignment breakdown" after each method but
 * flush: requests grouped by the bits of their size (floor(log2 count)),
 * each group by the trailing zero bits of its offset (offset 0 counts as
 * aligned to everything), cut where PERCENTILE of the requests are shown.
 * Its counters are one table per filter (not per connection: 230 KiB),
 * relaxed atomics, one cell per size and alignment, so only requests of
 * the same shape on different CPUs touch the same cache line.
 *
 * Each connection counts into its own counters (relaxed atomics: its
 * requests may run on several workers), so connections share no cache
 * line and no lock on the datapath; a report sums the finished
 * connections and the live ones under the filter's lock, which only
 * open, close and reports take.  statsappend=no rewrites the file at each
 * report, yes appends every report.  Under --check-config nothing is
 * written.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "layer.h"

struct stats_conf {
  char *statsfile;
  int statsappend;
  uint64_t statsthreshold;
};

static const struct nbd_param stats_params[] = {
  { "statsfile", NBD_PARAM_PATH, offsetof(struct stats_conf, statsfile),
    NULL, "the file the statistics are written to (at exit, on SIGUSR1)",
    NULL, 1 },
  { "statsappend", NBD_PARAM_BOOL, offsetof(struct stats_conf, statsappend),
    "no", "yes: append each report; no: replace the file", NULL, 0 },
  { "statsthreshold", NBD_PARAM_UINT,
    offsetof(struct stats_conf, statsthreshold), "95",
    "percentile of requests the size and alignment breakdown shows "
    "(0 to 100, 0 = no breakdown)", NULL, 0 },
  NBD_PARAM_END
};

/* nbdkit's order. */
enum { ST_READ, ST_WRITE, ST_TRIM, ST_ZERO, ST_EXTENTS, ST_CACHE, ST_FLUSH,
       ST_N };
static const char *const stats_names[ST_N] = {
  "read", "write", "trim", "zero", "extents", "cache", "flush"
};

/* Latency buckets (ns): 0..15 exact, then 8 per power of two. */
#define ST_SUB 8
#define ST_NB (16 + 60 * ST_SUB)

struct stats_method {
  _Atomic uint64_t ops, errors, bytes, ns, max_ns;
  _Atomic uint64_t hist[ST_NB];
};

struct stats_counters {
  struct stats_method m[ST_N];
};

struct stats_handle {
  struct stats_counters c;
  struct stats_handle *prev, *next;
};

/* The size and alignment breakdown: requests by the bits of their size
 * (0..63) and the trailing zero bits of their offset (0..63, and
 * ST_ANY for offset 0, aligned to everything). */
#define ST_BITS 64
#define ST_ANY 64
struct stats_hist {
  _Atomic uint64_t count[ST_N][ST_BITS][ST_BITS + 1];
  _Atomic uint64_t bytes[ST_N][ST_BITS];
  _Atomic uint64_t first[ST_N][ST_BITS]; /* when a size was first seen */
  _Atomic uint64_t seen;                 /* the clock of first */
};

struct stats_state {
  pthread_mutex_t lock;
  struct stats_hist *hist;      /* NULL: statsthreshold=0 */
  struct stats_counters done;   /* connections that closed */
  struct stats_handle *live;
  uint64_t start_ns;
  const struct nbd_layer *layer;
  int hooked;
};

static uint64_t
stats_now(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static unsigned
stats_bucket(uint64_t v)
{
  unsigned msb;

  if (v < 16)
    return (unsigned)v;
  msb = 63u - (unsigned)__builtin_clzll(v);
  return 16 + (msb - 4) * ST_SUB + (unsigned)((v >> (msb - 3)) & (ST_SUB - 1));
}

/* The largest value of bucket b. */
static uint64_t
stats_bucket_top(unsigned b)
{
  unsigned msb, sub;

  if (b < 16)
    return b;
  msb = (b - 16) / ST_SUB + 4;
  sub = (b - 16) % ST_SUB;
  return ((uint64_t)(ST_SUB + sub + 1) << (msb - 3)) - 1;
}

/* Every request counts in the breakdown, failed or not (as nbdkit's):
 * it shows what clients ask. */
static void
stats_shape(struct nbd_ctx *self, int m, uint64_t count, uint64_t offset)
{
  const struct stats_state *st = self->layer->state;
  unsigned size_bits, align;

  if (st->hist == NULL || count == 0)
    return;
  size_bits = 63u - (unsigned)__builtin_clzll(count);
  align = offset ? (unsigned)__builtin_ctzll(offset) : ST_ANY;
  atomic_fetch_add_explicit(&st->hist->count[m][size_bits][align], 1,
                            memory_order_relaxed);
  atomic_fetch_add_explicit(&st->hist->bytes[m][size_bits], count,
                            memory_order_relaxed);
  /* Once per size and method: the order ties are reported in. */
  if (atomic_load_explicit(&st->hist->first[m][size_bits],
                           memory_order_relaxed) == 0) {
    uint64_t zero = 0, t = atomic_fetch_add(&st->hist->seen, 1) + 1;
    atomic_compare_exchange_strong(&st->hist->first[m][size_bits], &zero, t);
  }
}

static void
stats_record(struct nbd_ctx *self, int m, uint64_t t0, uint64_t bytes,
             uint64_t offset, int r)
{
  struct stats_handle *h = self->handle;
  struct stats_method *s = &h->c.m[m];
  uint64_t ns = stats_now() - t0, max;

  if (m != ST_FLUSH)
    stats_shape(self, m, bytes, offset);
  atomic_fetch_add_explicit(&s->ops, 1, memory_order_relaxed);
  if (r < 0)
    atomic_fetch_add_explicit(&s->errors, 1, memory_order_relaxed);
  else
    atomic_fetch_add_explicit(&s->bytes, bytes, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->ns, ns, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->hist[stats_bucket(ns)], 1,
                            memory_order_relaxed);
  max = atomic_load_explicit(&s->max_ns, memory_order_relaxed);
  while (ns > max &&
         !atomic_compare_exchange_weak_explicit(&s->max_ns, &max, ns,
                                                memory_order_relaxed,
                                                memory_order_relaxed))
    ;
}

static void
stats_add(struct stats_counters *to, const struct stats_counters *from)
{
  unsigned m, b;

  for (m = 0; m < ST_N; m++) {
    const struct stats_method *f = &from->m[m];
    struct stats_method *t = &to->m[m];
    uint64_t max = atomic_load(&f->max_ns);
    atomic_fetch_add(&t->ops, atomic_load(&f->ops));
    atomic_fetch_add(&t->errors, atomic_load(&f->errors));
    atomic_fetch_add(&t->bytes, atomic_load(&f->bytes));
    atomic_fetch_add(&t->ns, atomic_load(&f->ns));
    if (max > atomic_load(&t->max_ns))
      atomic_store(&t->max_ns, max);
    for (b = 0; b < ST_NB; b++)
      if (atomic_load(&f->hist[b]))
        atomic_fetch_add(&t->hist[b], atomic_load(&f->hist[b]));
  }
}

/* ---- the report -------------------------------------------------------- */

/* nbdkit's human sizes: "512 bytes", "4.50 KiB", of the value truncated
 * to whole bytes as nbdkit's. */
static void
stats_size(char *buf, size_t len, double v, const char *suffix)
{
  static const char *const units[] = { "KiB", "MiB", "GiB" };
  uint64_t n = v >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)v;
  double d = (double)n;
  int u = -1;

  /* nbdkit's units stop at GiB ("9304.06 GiB/s"). */
  while (d >= 1024 && u < 2) {
    d /= 1024;
    u++;
  }
  if (u < 0)
    snprintf(buf, len, "%" PRIu64 " bytes%s", n, suffix);
  else
    snprintf(buf, len, "%.2f %s%s", d, units[u], suffix);
}

static void
stats_duration(char *buf, size_t len, uint64_t ns)
{
  if (ns < 1000)
    snprintf(buf, len, "%" PRIu64 " ns", ns);
  else if (ns < 1000000)
    snprintf(buf, len, "%.1f us", (double)ns / 1e3);
  else if (ns < 1000000000)
    snprintf(buf, len, "%.1f ms", (double)ns / 1e6);
  else
    snprintf(buf, len, "%.2f s", (double)ns / 1e9);
}

/* The smallest bucket top with at least p of the ops at or below it,
 * never above the exact maximum. */
static uint64_t
stats_percentile(const struct stats_method *s, uint64_t ops, double p)
{
  uint64_t max = atomic_load(&s->max_ns), top;
  uint64_t want = (uint64_t)((double)ops * p + 0.999999), seen = 0;
  unsigned b;

  if (want == 0)
    want = 1;
  for (b = 0; b < ST_NB; b++) {
    seen += atomic_load(&s->hist[b]);
    if (seen >= want) {
      top = stats_bucket_top(b);
      return top < max ? top : max;
    }
  }
  return 0;
}

/* ---- the size and alignment breakdown (statsthreshold) --------------- */

/* nbdkit's alignment lines for one size group: for each alignment seen,
 * the requests aligned at least that much (offset 0 counts everywhere),
 * a line only where the count changes, until fewer than (1 - threshold)
 * of the group are left ("N+ bit-aligned"). */
static void
stats_print_align(FILE *fp, const _Atomic uint64_t *cell, double threshold)
{
  uint64_t n[ST_BITS], any = atomic_load(&cell[ST_ANY]), total = any;
  uint64_t cum = any, cutoff;
  int present[ST_BITS], b, next;

  for (b = ST_BITS - 1; b >= 0; b--) {
    uint64_t v = atomic_load(&cell[b]);
    present[b] = v > 0;
    total += v;
    cum += v;
    n[b] = cum;                 /* aligned to b bits or more */
  }
  cutoff = (uint64_t)((1 - threshold) * (double)total);
  for (b = 0; b < ST_BITS; b++) {
    if (!present[b])
      continue;
    if (n[b] < cutoff) {
      fprintf(fp, "         %2d+ bit-aligned: %4.1f%% (%" PRIu64 ")\n", b,
              (double)n[b] / (double)total * 100, n[b]);
      return;
    }
    for (next = b + 1; next < ST_BITS && !present[next]; next++)
      ;
    if (next == ST_BITS || n[next] != n[b])
      fprintf(fp, "         %2d bit aligned: %5.1f%% (%" PRIu64 ")\n", b,
              (double)(n[b] * 100) / (double)total, n[b]);
  }
}

/* nbdkit's breakdown of one method: size groups, most requests first,
 * until threshold of the requests are shown, then "other sizes".
 * nbdkit keys its groups by their request count, so of groups with the
 * same count it shows one (the first seen) and drops the others from
 * the report; here each group shows, ties in size order, and "other
 * sizes" gives the requests and bytes not shown (nbdkit: the method's
 * total bytes). */
static void
stats_print_hist(FILE *fp, const struct stats_hist *hist, int m,
                 double threshold)
{
  uint64_t req[ST_BITS], total = 0, bytes = 0, printed = 0, pbytes = 0;
  uint64_t to_print;
  int order[ST_BITS] = { 0 }, n = 0, i, j, b;
  char sz[64];

  for (b = 0; b < ST_BITS; b++) {
    req[b] = 0;
    for (j = 0; j <= ST_BITS; j++)
      req[b] += atomic_load(&hist->count[m][b][j]);
    total += req[b];
    bytes += atomic_load(&hist->bytes[m][b]);
    if (req[b] == 0)
      continue;
    for (i = n++; i > 0 && (req[order[i - 1]] < req[b] ||
                            (req[order[i - 1]] == req[b] &&
                             atomic_load(&hist->first[m][order[i - 1]]) >
                             atomic_load(&hist->first[m][b]))); i--)
      order[i] = order[i - 1];
    order[i] = b;
  }
  fprintf(fp, "  Request size and alignment breakdown:\n");
  to_print = (uint64_t)(threshold * (double)total);
  for (i = 0; i < n; i++) {
    uint64_t by;
    b = order[i];
    if (printed >= to_print) {
      stats_size(sz, sizeof sz, (double)(bytes - pbytes), "");
      fprintf(fp, "    other sizes: %4.1f%% (%" PRIu64 " reqs, %s total)\n",
              (double)(total - printed) / (double)total * 100,
              total - printed, sz);
      break;
    }
    by = atomic_load(&hist->bytes[m][b]);
    stats_size(sz, sizeof sz, (double)by, "");
    fprintf(fp, "    %2d bits: %4.1f%% (%" PRIu64 " reqs, %s total)\n", b,
            (double)req[b] / (double)total * 100, req[b], sz);
    printed += req[b];
    pbytes += by;
    stats_print_align(fp, hist->count[m][b], threshold);
  }
  fprintf(fp, "\n");
}

static void
stats_write_report(FILE *fp, const struct stats_counters *c,
                   const struct stats_hist *hist, double threshold,
                   uint64_t elapsed_ns)
{
  double el = (double)elapsed_ns / 1e9;
  uint64_t ops = 0, bytes = 0;
  char a[64], b[64], d[64], p50[32], p90[32], p99[32], mx[32];
  unsigned m;

  /* Bytes of data moved or changed, as nbdkit's total (not those of
   * extents and cache); ops of every method (nbdkit leaves out cache). */
  for (m = 0; m < ST_N; m++) {
    ops += atomic_load(&c->m[m].ops);
    if (m != ST_EXTENTS && m != ST_CACHE)
      bytes += atomic_load(&c->m[m].bytes);
  }
  stats_size(a, sizeof a, (double)bytes, "");
  stats_size(b, sizeof b, el > 0 ? (double)bytes / el : 0, "/s");
  fprintf(fp, "total: %" PRIu64 " ops, %.6f s, %s, %s\n", ops, el, a, b);
  for (m = 0; m < ST_N; m++) {
    const struct stats_method *s = &c->m[m];
    uint64_t n = atomic_load(&s->ops), by = atomic_load(&s->bytes);
    uint64_t max = atomic_load(&s->max_ns);
    double t = (double)atomic_load(&s->ns) / 1e9;
    if (n == 0)
      continue;
    stats_size(a, sizeof a, (double)by, "");
    if (t > 0)
      stats_size(b, sizeof b, (double)by / t, "/s");
    else
      snprintf(b, sizeof b, "(n/a)/s");
    stats_size(d, sizeof d, el > 0 ? (double)by / el : 0, "/s");
    fprintf(fp, "%s: %" PRIu64 " ops, %.6f s, %s, %s op, %s total\n",
            stats_names[m], n, t, a, b, d);
    stats_duration(p50, sizeof p50, stats_percentile(s, n, 0.50));
    stats_duration(p90, sizeof p90, stats_percentile(s, n, 0.90));
    stats_duration(p99, sizeof p99, stats_percentile(s, n, 0.99));
    stats_duration(mx, sizeof mx, max);
    fprintf(fp, "  errors: %" PRIu64 ", latency p50 %s, p90 %s, p99 %s, "
            "max %s\n", atomic_load(&s->errors), p50, p90, p99, mx);
    if (hist && m != ST_FLUSH)
      stats_print_hist(fp, hist, (int)m, threshold);
  }
}

static void
stats_report(void *arg)
{
  struct stats_state *st = arg;
  const struct stats_conf *c = st->layer->conf;
  struct stats_counters *sum = calloc(1, sizeof *sum);
  struct stats_handle *h;
  FILE *fp;
  int fd;

  if (sum == NULL) {
    nbd_error("stats: out of memory");
    return;
  }
  pthread_mutex_lock(&st->lock);
  stats_add(sum, &st->done);
  for (h = st->live; h; h = h->next)
    stats_add(sum, &h->c);
  pthread_mutex_unlock(&st->lock);
  fd = open(c->statsfile, O_WRONLY | O_CREAT | O_CLOEXEC |
            (c->statsappend ? O_APPEND : O_TRUNC), 0644);
  if (fd == -1 || (fp = fdopen(fd, c->statsappend ? "a" : "w")) == NULL) {
    nbd_error("stats: %s: %s", c->statsfile, strerror(errno));
    if (fd != -1)
      close(fd);
    free(sum);
    return;
  }
  stats_write_report(fp, sum, st->hist, (double)c->statsthreshold / 100,
                     stats_now() - st->start_ns);
  if (fclose(fp) == EOF)
    nbd_error("stats: %s: %s", c->statsfile, strerror(errno));
  free(sum);
}

/* ---- lifecycle --------------------------------------------------------- */

static int
stats_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct stats_conf *c = layer->conf;
  struct stats_state *st;

  if (c->statsthreshold > 100) {
    snprintf(err, errlen, "statsthreshold=%" PRIu64 ": must be between 0 "
             "and 100 (percent)", c->statsthreshold);
    return -1;
  }
  if ((st = calloc(1, sizeof *st)) == NULL ||
      (c->statsthreshold &&
       (st->hist = calloc(1, sizeof *st->hist)) == NULL)) {
    free(st);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  pthread_mutex_init(&st->lock, NULL);
  st->start_ns = stats_now();
  st->layer = layer;
  layer->state = st;
  if (!nbd_checking()) {
    if (nbd_on_sigusr1(stats_report, st) < 0) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    st->hooked = 1;
  }
  return 0;
}

/* At exit (and when a reload drops the export): the last report. */
static void
stats_cleanup(struct nbd_layer *layer)
{
  struct stats_state *st = layer->state;

  if (st == NULL)
    return;
  if (st->hooked) {
    nbd_off_sigusr1(stats_report, st);
    stats_report(st);
  }
  pthread_mutex_destroy(&st->lock);
  free(st->hist);
  free(st);
  layer->state = NULL;
}

static int
stats_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct stats_state *st = self->layer->state;
  struct stats_handle *h = calloc(1, sizeof *h);

  (void)next;
  (void)readonly;
  if (h == NULL)
    return -ENOMEM;
  pthread_mutex_lock(&st->lock);
  h->next = st->live;
  if (st->live)
    st->live->prev = h;
  st->live = h;
  pthread_mutex_unlock(&st->lock);
  self->handle = h;
  return 0;
}

static void
stats_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct stats_state *st = self->layer->state;
  struct stats_handle *h = self->handle;

  (void)next;
  pthread_mutex_lock(&st->lock);
  if (h->prev)
    h->prev->next = h->next;
  else
    st->live = h->next;
  if (h->next)
    h->next->prev = h->prev;
  stats_add(&st->done, &h->c);
  pthread_mutex_unlock(&st->lock);
  free(h);
}

/* ---- requests ---------------------------------------------------------- */

static int
stats_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
            uint32_t count, uint64_t offset, uint32_t flags)
{
  uint64_t t0 = stats_now();
  int r = next_pread(next, buf, count, offset, flags);

  stats_record(self, ST_READ, t0, count, offset, r);
  return r;
}

static int
stats_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
             uint32_t count, uint64_t offset, uint32_t flags)
{
  uint64_t t0 = stats_now();
  int r = next_pwrite(next, buf, count, offset, flags);

  stats_record(self, ST_WRITE, t0, count, offset, r);
  return r;
}

static int
stats_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                  struct nbd_source *src, uint32_t count, uint64_t offset,
                  uint32_t flags)
{
  uint64_t t0 = stats_now();
  int r = next_pwrite_from(next, src, count, offset, flags);

  stats_record(self, ST_WRITE, t0, count, offset, r);
  return r;
}

static int
stats_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  uint64_t t0 = stats_now();
  int r = next_flush(next, flags);

  stats_record(self, ST_FLUSH, t0, 0, 0, r);
  return r;
}

static int
stats_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  uint64_t t0 = stats_now();
  int r = next_trim(next, count, offset, flags);

  stats_record(self, ST_TRIM, t0, count, offset, r);
  return r;
}

static int
stats_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  uint64_t t0 = stats_now();
  int r = next_zero(next, count, offset, flags);

  stats_record(self, ST_ZERO, t0, count, offset, r);
  return r;
}

static int
stats_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
              uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  uint64_t t0 = stats_now();
  int r = next_extents(next, count, offset, flags, extents);

  stats_record(self, ST_EXTENTS, t0, count, offset, r);
  return r;
}

/* qemu:allocation-depth has no nbdkit counterpart to count as: through. */
PASSTHROUGH(stats, depth)

static int
stats_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags)
{
  uint64_t t0 = stats_now();
  int r = next_cache(next, count, offset, flags);

  stats_record(self, ST_CACHE, t0, count, offset, r);
  return r;
}

PASSTHROUGH(stats, reopen)
PASSTHROUGH(stats, get_size)
PASSTHROUGH(stats, block_size)
PASSTHROUGH(stats, can_write)
PASSTHROUGH(stats, can_flush)
PASSTHROUGH(stats, can_trim)
PASSTHROUGH(stats, can_zero)
PASSTHROUGH(stats, can_fast_zero)
PASSTHROUGH(stats, can_fua)
PASSTHROUGH(stats, can_cache)
PASSTHROUGH(stats, can_extents)
PASSTHROUGH(stats, can_multi_conn)
PASSTHROUGH(stats, is_rotational)
PASSTHROUGH(stats, list_exports)
PASSTHROUGH(stats, preconnect)

NBD_REGISTER_FILTER(stats, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "count requests, bytes, errors and latency; report at "
                 "exit and on SIGUSR1",
  .params = stats_params,
  .conf_size = sizeof(struct stats_conf),
  .setup = stats_setup,
  .cleanup = stats_cleanup,
  .open = stats_open,
  .close = stats_close,
  .pwrite_from = stats_pwrite_from,
);
