/* nbdstack filter error: fail requests on purpose, to test how clients
 * cope (nbdkit's error filter, same keys and defaults, plus flush).
 *
 * Each datapath method has a rule: which errno, how often (a rate), and
 * optionally a trigger file that must exist.  error, error-rate and
 * error-file set the rule of every method that has no key of its own;
 * error-<method>, error-<method>-rate and error-<method>-file set one
 * method's, whatever their order in the config (in nbdkit the last key
 * wins, so "error-pread-rate=0 error-rate=100%" fails reads too).  Flush,
 * which nbdkit 1.32 cannot fail, fails only with its own error-flush-rate
 * (error and error-file still apply to it).
 *
 * An injected error returns before the layer below is called.  The
 * random draw uses a per-thread xorshift generator: no lock on the
 * datapath (nbdkit takes one global lock per draw).  Rates 0 and 1 are
 * exact and draw nothing.  The trigger file is looked up per request, so
 * creating or removing it turns errors on and off on open connections.
 *
 * No pwrite_from: error-pwrite must cover every write, so the engine
 * reads the payload and calls pwrite.  Requests the engine emulates at
 * this boundary (zero by writes, cache by reads, FUA by a flush) go
 * through this filter's pwrite, pread and flush, and their rules apply,
 * as in nbdkit.  Capabilities are the layer below's; no offsets, data or
 * extents change.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "layer.h"

enum {
  ERROR_PREAD, ERROR_PWRITE, ERROR_TRIM, ERROR_ZERO, ERROR_EXTENTS,
  ERROR_CACHE, ERROR_FLUSH, ERROR_NMETHODS,
  ERROR_ALL = ERROR_NMETHODS    /* the general keys */
};

static const char *const error_method_names[ERROR_NMETHODS] = {
  "pread", "pwrite", "trim", "zero", "extents", "cache", "flush",
};

/* The values of the error keys, in the order of error_errnos. */
static const char *const error_choices[] = {
  "EPERM", "EIO", "ENOMEM", "EINVAL", "ENOSPC", "ESHUTDOWN", NULL
};
static const int error_errnos[] = {
  EPERM, EIO, ENOMEM, EINVAL, ENOSPC, ESHUTDOWN,
};

/* The keys as given: [ERROR_ALL] holds error, error-rate, error-file. */
struct error_keys {
  int error;                    /* index into error_choices */
  char *rate;                   /* parsed in setup */
  char *file;
};

/* What one method does, resolved in setup. */
struct error_rule {
  int err;                      /* positive errno */
  int mode;                     /* ERROR_NEVER, ERROR_ALWAYS, ERROR_RANDOM */
  uint64_t threshold;           /* RANDOM: inject when a draw is below */
  const char *file;             /* NULL, or must exist (points into keys) */
};

enum { ERROR_NEVER, ERROR_ALWAYS, ERROR_RANDOM };

struct error_conf {
  struct error_keys keys[ERROR_NMETHODS + 1];
  struct error_rule rule[ERROR_NMETHODS];
};

#define ERROR_KEYS(m, name, noun)                                           \
  { "error" name, NBD_PARAM_ENUM,                                           \
    offsetof(struct error_conf, keys[m].error),                             \
    NULL,                                                                   \
    "errno returned by failed " noun, error_choices, 0 },                   \
  { "error" name "-rate", NBD_PARAM_STRING,                                 \
    offsetof(struct error_conf, keys[m].rate), NULL,                        \
    "share of " noun " that fail: 0%..100% or 0..1 (default 0)",            \
    NULL, 0 },                                                              \
  { "error" name "-file", NBD_PARAM_PATH,                                   \
    offsetof(struct error_conf, keys[m].file), NULL,                        \
    "fail " noun " only while this file exists", NULL, 0 }

static const struct nbd_param error_params[] = {
  { "error", NBD_PARAM_ENUM, offsetof(struct error_conf, keys[ERROR_ALL].error),
    "EIO", "errno of failed requests, for methods without error-METHOD",
    error_choices, 0 },
  { "error-rate", NBD_PARAM_STRING,
    offsetof(struct error_conf, keys[ERROR_ALL].rate), NULL,
    "share of requests that fail, for methods without error-METHOD-rate "
    "(not flush): 0%..100% or 0..1 (default 0)", NULL, 0 },
  { "error-file", NBD_PARAM_PATH,
    offsetof(struct error_conf, keys[ERROR_ALL].file), NULL,
    "fail requests only while this file exists, for methods without "
    "error-METHOD-file", NULL, 0 },
  ERROR_KEYS(ERROR_PREAD, "-pread", "reads"),
  ERROR_KEYS(ERROR_PWRITE, "-pwrite", "writes"),
  ERROR_KEYS(ERROR_TRIM, "-trim", "trims"),
  ERROR_KEYS(ERROR_ZERO, "-zero", "zero requests"),
  ERROR_KEYS(ERROR_EXTENTS, "-extents", "block status requests"),
  ERROR_KEYS(ERROR_CACHE, "-cache", "cache requests"),
  ERROR_KEYS(ERROR_FLUSH, "-flush", "flushes"),
  NBD_PARAM_END
};

/* "5%", "0.05", "1", "100%", ".5", "1e-3": digits with an optional
 * fraction, exponent (nbdkit takes "1e-3") and '%'; no sign, hex, "nan"
 * or locale (strtod has them all).
 * 0 and the result in [0, 1] in *rate, or -1. */
static int
error_parse_rate(const char *s, double *rate)
{
  double v = 0, scale = 0.1;
  int digits = 0;

  for (; *s >= '0' && *s <= '9'; s++, digits++)
    if (v < 1e6)
      v = v * 10 + (*s - '0');
  if (*s == '.')
    for (s++; *s >= '0' && *s <= '9'; s++, digits++, scale /= 10)
      v += (*s - '0') * scale;
  if (digits == 0)
    return -1;
  if (*s == 'e' || *s == 'E') {   /* 1e-3: nbdkit reads rates with strtod */
    int neg = 0, e = 0;

    s++;
    if (*s == '-' || *s == '+')
      neg = *s++ == '-';
    if (*s < '0' || *s > '9')
      return -1;
    for (; *s >= '0' && *s <= '9'; s++)
      if (e < 1000)
        e = e * 10 + (*s - '0');
    for (; e > 0; e--)
      v = neg ? v / 10 : (v < 1e6 ? v * 10 : v);
  }
  if (*s == '%') {
    v /= 100;
    s++;
  }
  if (*s != '\0')
    return -1;
  *rate = v;
  return 0;
}

/* Fills one method's rule from its own keys, else the general ones. */
static int
error_resolve(struct nbd_layer *layer, int m, char *err, size_t errlen)
{
  struct error_conf *c = layer->conf;
  struct error_rule *r = &c->rule[m];
  struct error_keys *k = &c->keys[ERROR_ALL];
  char key[32];
  int own;
  double rate;

  snprintf(key, sizeof key, "error-%s", error_method_names[m]);
  own = nbd_layer_param_set(layer, key);
  r->err = error_errnos[own ? c->keys[m].error : k->error];

  snprintf(key, sizeof key, "error-%s-file", error_method_names[m]);
  r->file = nbd_layer_param_set(layer, key) ? c->keys[m].file : k->file;

  snprintf(key, sizeof key, "error-%s-rate", error_method_names[m]);
  own = nbd_layer_param_set(layer, key);
  if (!own) {
    /* The general rate was checked once already.  It does not reach
     * flush: nbdkit 1.32 has no flush rule, so error-rate=100% must leave
     * flushes (and the flush at close) working there and here alike. */
    if (m == ERROR_FLUSH || k->rate == NULL ||
        error_parse_rate(k->rate, &rate) < 0)
      rate = 0;
  }
  else if (error_parse_rate(c->keys[m].rate, &rate) < 0 || rate > 1) {
    snprintf(err, errlen, "%s: invalid value '%s' (expected a percentage "
             "0%%..100%% or a fraction 0..1)", key, c->keys[m].rate);
    return -1;
  }
  r->mode = rate <= 0 ? ERROR_NEVER : rate >= 1 ? ERROR_ALWAYS : ERROR_RANDOM;
  /* 2^64 * rate, below 2^64 since rate < 1. */
  r->threshold = r->mode == ERROR_RANDOM ?
    (uint64_t)(rate * 18446744073709551616.0) : 0;
  return 0;
}

static int
error_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct error_conf *c = layer->conf;
  const char *general = c->keys[ERROR_ALL].rate;
  double rate;
  int m;

  if (general &&
      (error_parse_rate(general, &rate) < 0 || rate > 1)) {
    snprintf(err, errlen, "error-rate: invalid value '%s' (expected a "
             "percentage 0%%..100%% or a fraction 0..1)", general);
    return -1;
  }
  for (m = 0; m < ERROR_NMETHODS; m++) {
    if (error_resolve(layer, m, err, errlen) < 0)
      return -1;
    /* access() of a trigger file may wait on a slow file system. */
    if (c->rule[m].file && c->rule[m].mode != ERROR_NEVER &&
        layer->nonblocking > NBD_RARELY_BLOCKS)
      layer->nonblocking = NBD_RARELY_BLOCKS;
  }
  return 0;
}

/* xorshift64*, one state per thread, seeded on first use from the clock,
 * the thread and the state's own address; never zero. */
static __thread uint64_t error_rng;

static uint64_t
error_random(void)
{
  uint64_t x = error_rng;

  if (x == 0) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    x = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^
        (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)&error_rng ^
        (uint64_t)pthread_self() * 0xbf58476d1ce4e5b9ull;
    if (x == 0)
      x = 0x2545f4914f6cdd1dull;
  }
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  error_rng = x;
  return x * 0x2545f4914f6cdd1dull;
}

/* The rare path of error_check: a rule that may inject. */
static int __attribute__((noinline))
error_check_rule(const struct nbd_ctx *self, const struct error_rule *r,
                 int m)
{
  if (r->file && access(r->file, F_OK) != 0)
    return 0;
  if (r->mode == ERROR_RANDOM && error_random() >= r->threshold)
    return 0;
  nbd_debug("export '%s': filter error: injecting %s into %s",
            self->layer->export_name, strerror(r->err),
            error_method_names[m]);
  return -r->err;
}

/* Each method: a rule that never fails passes the request on in one
 * tail call, as offset does; the rest (the rare path: a trigger file, a
 * rate) is a separate function, so the common one needs no stack frame.
 * PARAMS and ARGS are the method's own, after self and next. */
#define ERROR_METHOD(m, M, PARAMS, ARGS)                                      \
  static int __attribute__((noinline))                                      \
  error_##m##_rule(struct nbd_ctx *self, struct nbd_ctx *next, PARAMS)      \
  {                                                                         \
    const struct error_rule *r =                                            \
      &((const struct error_conf *)self->layer->conf)->rule[ERROR_##M];     \
    int e = error_check_rule(self, r, ERROR_##M);                           \
                                                                            \
    return e ? e : next_##m(next, ARGS);                                    \
  }                                                                         \
  static int                                                                \
  error_##m(struct nbd_ctx *self, struct nbd_ctx *next, PARAMS)             \
  {                                                                         \
    const struct error_conf *conf = self->layer->conf;                      \
                                                                            \
    if (__builtin_expect(conf->rule[ERROR_##M].mode == ERROR_NEVER, 1))     \
      return next_##m(next, ARGS);                                          \
    return error_##m##_rule(self, next, ARGS);                              \
  }

#define ERROR_P(...) __VA_ARGS__
ERROR_METHOD(pread, PREAD, ERROR_P(void *buf, uint32_t count, uint64_t offset,
                                   uint32_t flags),
             ERROR_P(buf, count, offset, flags))
ERROR_METHOD(pwrite, PWRITE, ERROR_P(const void *buf, uint32_t count,
                                     uint64_t offset, uint32_t flags),
             ERROR_P(buf, count, offset, flags))
ERROR_METHOD(flush, FLUSH, uint32_t flags, flags)
ERROR_METHOD(trim, TRIM, ERROR_P(uint64_t count, uint64_t offset,
                                 uint32_t flags),
             ERROR_P(count, offset, flags))
ERROR_METHOD(zero, ZERO, ERROR_P(uint64_t count, uint64_t offset,
                                 uint32_t flags),
             ERROR_P(count, offset, flags))
ERROR_METHOD(extents, EXTENTS, ERROR_P(uint64_t count, uint64_t offset,
                                       uint32_t flags,
                                       struct nbd_extents *extents),
             ERROR_P(count, offset, flags, extents))
/* qemu:allocation-depth is block status too: error-extents decides. */
static int
error_depth(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  const struct error_rule *r =
    &((const struct error_conf *)self->layer->conf)->rule[ERROR_EXTENTS];
  int e;

  if (r->mode != ERROR_NEVER && (e = error_check_rule(self, r, ERROR_EXTENTS)))
    return e;
  return next_depth(next, count, offset, flags, extents);
}
ERROR_METHOD(cache, CACHE, ERROR_P(uint64_t count, uint64_t offset,
                                   uint32_t flags),
             ERROR_P(count, offset, flags))

/* Errors are injected per request; what the disk can do is unchanged. */
PASSTHROUGH(error, reopen)
PASSTHROUGH(error, get_size)
PASSTHROUGH(error, block_size)
PASSTHROUGH(error, can_write)
PASSTHROUGH(error, can_flush)
PASSTHROUGH(error, can_trim)
PASSTHROUGH(error, can_zero)
PASSTHROUGH(error, can_fast_zero)
PASSTHROUGH(error, can_fua)
PASSTHROUGH(error, can_cache)
PASSTHROUGH(error, can_extents)
PASSTHROUGH(error, can_multi_conn)
PASSTHROUGH(error, is_rotational)
PASSTHROUGH(error, list_exports)
PASSTHROUGH(error, preconnect)

NBD_REGISTER_FILTER(error,
  NBD_PARALLEL,                 /* rules are read only; the PRNG is per thread */
  NBD_NEVER_BLOCKS,             /* setup lowers it for a trigger file */
  .description = "inject errors into requests (testing clients)",
  .params = error_params,
  .conf_size = sizeof(struct error_conf),
  .setup = error_setup,
);
