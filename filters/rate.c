/* nbdstack filter rate: limit the bandwidth of reads and writes (nbdkit's
 * rate filter: same keys and units).
 *
 * rate= bounds the whole export, connection-rate= each connection; both
 * may be given.  Rates are in bits per second with nbdkit's binary
 * suffixes (rate=8M is 8 x 2^20 bit/s = 1 MiB/s of payload); 0 or unset =
 * no limit.  Reads and writes have separate buckets, as in nbdkit; zero,
 * trim, cache, extents and flush are free (no payload on the wire).
 *
 * Token buckets: a request takes count x 8 tokens and, if the bucket goes
 * below zero, sleeps until the debt is paid at the rate (the next request
 * finds the debt and waits behind it, so concurrent requests share the
 * rate fairly).  Tokens come back at the rate up to a capacity of
 * burstiness= seconds' worth (default 2, nbdkit's); a bucket starts
 * empty, so a transfer runs at the rate from its first byte.  The lock of
 * a bucket is held for the arithmetic only, never across a sleep.  A
 * request sleeps for the connection's bucket, then the export's.
 * Sleeps end early when the server stops, failing the request with
 * ESHUTDOWN.
 *
 * rate-file= and connection-rate-file= hold a rate (same syntax); the
 * file is looked at (stat) at most every 100 ms by requests, re-read when
 * its inode, size or modification time changed, and its rate applies
 * from the next request.  A missing file keeps the last rate (at start,
 * the rate= or connection-rate= value); a bad one is logged and ignored.
 * Large requests at low rates sleep long: put blocksize maxdata= in front.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "layer.h"
#include "params.h"

struct rate_conf {
  uint64_t rate, conn_rate;
  char *rate_file, *conn_rate_file;
  uint64_t burstiness;          /* ns */
};

static const struct nbd_param rate_params[] = {
  { "rate", NBD_PARAM_SIZE, offsetof(struct rate_conf, rate), "0",
    "bits per second for the whole export (1M = 2^20 bit/s; 0 = no limit)",
    NULL, 0 },
  { "connection-rate", NBD_PARAM_SIZE, offsetof(struct rate_conf, conn_rate),
    "0", "bits per second for each connection", NULL, 0 },
  { "rate-file", NBD_PARAM_PATH, offsetof(struct rate_conf, rate_file), NULL,
    "file holding the export's rate, re-read when it changes", NULL, 0 },
  { "connection-rate-file", NBD_PARAM_PATH,
    offsetof(struct rate_conf, conn_rate_file), NULL,
    "file holding each connection's rate, re-read when it changes", NULL, 0 },
  { "burstiness", NBD_PARAM_DURATION, offsetof(struct rate_conf, burstiness),
    "2", "bucket capacity: seconds at the rate a client may burst after "
    "idling", NULL, 0 },
  NBD_PARAM_END
};

#define RATE_STAT_NS 100000000ull

struct rate_bucket {
  pthread_mutex_t lock;
  double level;                 /* tokens (bits); below 0 = debt */
  uint64_t last_ns;
  uint64_t rate;                /* the rate since last_ns */
};

/* A rate that a file may change. */
struct rate_source {
  const char *path;             /* NULL: fixed */
  _Atomic uint64_t rate;
  pthread_mutex_t lock;         /* one stat at a time */
  _Atomic uint64_t checked_ns;
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
  int seen, complained;
};

struct rate_state {
  struct rate_source total, conn;
  struct rate_bucket read, write;
};

struct rate_handle {
  struct rate_bucket read, write;
};

static uint64_t
rate_now(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
rate_bucket_init(struct rate_bucket *b)
{
  pthread_mutex_init(&b->lock, NULL);
  b->level = 0;
  b->last_ns = rate_now();
}

/* Re-reads src->path if it changed; cheap when it did not. */
static void
rate_source_check(struct rate_source *src)
{
  uint64_t now = rate_now(), v;
  struct stat sb;
  char buf[64];
  ssize_t n;
  int fd;

  if (src->path == NULL || now - atomic_load(&src->checked_ns) < RATE_STAT_NS)
    return;
  if (pthread_mutex_trylock(&src->lock) != 0)
    return;                     /* another request is looking */
  atomic_store(&src->checked_ns, now);
  if (stat(src->path, &sb) == -1 ||
      (src->seen && sb.st_dev == src->dev && sb.st_ino == src->ino &&
       sb.st_size == src->size && sb.st_mtim.tv_sec == src->mtime.tv_sec &&
       sb.st_mtim.tv_nsec == src->mtime.tv_nsec))
    goto out;
  src->seen = 1;
  src->dev = sb.st_dev;
  src->ino = sb.st_ino;
  src->size = sb.st_size;
  src->mtime = sb.st_mtim;
  if ((fd = open(src->path, O_RDONLY | O_CLOEXEC)) == -1)
    goto out;
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n < 0)
    goto out;
  buf[n] = '\0';
  buf[strcspn(buf, " \t\r\n")] = '\0';
  if (params_parse_size(buf, &v) == -1) {
    if (!src->complained)
      nbd_error("rate: %s: '%s' is not a rate (bits per second, 1M = 2^20 "
                "bit/s): keeping %llu", src->path, buf,
                (unsigned long long)atomic_load(&src->rate));
    src->complained = 1;
    goto out;
  }
  src->complained = 0;
  if (v != atomic_load(&src->rate))
    nbd_debug("rate: %s: now %llu bit/s", src->path, (unsigned long long)v);
  atomic_store(&src->rate, v);
out:
  pthread_mutex_unlock(&src->lock);
}

/* Takes bits from b at rate and sleeps off any debt; 0 or -ESHUTDOWN. */
static int
rate_take(struct rate_bucket *b, uint64_t rate, uint64_t burst_ns,
          uint64_t bits)
{
  double cap, wait = 0;
  uint64_t now;

  pthread_mutex_lock(&b->lock);
  now = rate_now();
  /* Tokens since the last request came at the rate of that time: a
   * debt made at a lower rate is not paid back at a new, higher one. */
  b->level += (double)(now - b->last_ns) * (double)b->rate / 1e9;
  b->last_ns = now;
  b->rate = rate;
  if (rate == 0) {
    b->level = 0;               /* no limit now: no debt, no credit */
    pthread_mutex_unlock(&b->lock);
    return 0;
  }
  cap = (double)rate * (double)burst_ns / 1e9;
  if (b->level > cap)
    b->level = cap;
  b->level -= (double)bits;
  if (b->level < 0)
    wait = -b->level * 1e9 / (double)rate;
  pthread_mutex_unlock(&b->lock);
  return wait >= 1 ? nbd_sleep((uint64_t)wait) : 0;
}

static int
rate_account(struct nbd_ctx *self, int write, uint32_t count)
{
  const struct rate_conf *c = self->layer->conf;
  struct rate_state *st = self->layer->state;
  struct rate_handle *h = self->handle;
  uint64_t bits = (uint64_t)count * 8;
  int r;

  /* A fixed "no limit" costs no lock: the export's bucket is shared. */
  if (st->conn.path || atomic_load(&st->conn.rate)) {
    rate_source_check(&st->conn);
    if ((r = rate_take(write ? &h->write : &h->read,
                       atomic_load(&st->conn.rate), c->burstiness,
                       bits)) < 0)
      return r;
  }
  if (st->total.path || atomic_load(&st->total.rate)) {
    rate_source_check(&st->total);
    return rate_take(write ? &st->write : &st->read,
                     atomic_load(&st->total.rate), c->burstiness, bits);
  }
  return 0;
}

static void
rate_source_init(struct rate_source *src, const char *path, uint64_t rate)
{
  src->path = path;
  atomic_store(&src->rate, rate);
  pthread_mutex_init(&src->lock, NULL);
  rate_source_check(src);       /* the file wins over the key at start */
}

static int
rate_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct rate_conf *c = layer->conf;
  struct rate_state *st = calloc(1, sizeof *st);

  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  rate_source_init(&st->total, c->rate_file, c->rate);
  rate_source_init(&st->conn, c->conn_rate_file, c->conn_rate);
  rate_bucket_init(&st->read);
  rate_bucket_init(&st->write);
  layer->state = st;
  return 0;
}

static void
rate_cleanup(struct nbd_layer *layer)
{
  struct rate_state *st = layer->state;

  if (st == NULL)
    return;
  pthread_mutex_destroy(&st->total.lock);
  pthread_mutex_destroy(&st->conn.lock);
  pthread_mutex_destroy(&st->read.lock);
  pthread_mutex_destroy(&st->write.lock);
  free(st);
  layer->state = NULL;
}

static int
rate_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct rate_handle *h = calloc(1, sizeof *h);

  (void)next;
  (void)readonly;
  if (h == NULL)
    return -ENOMEM;
  rate_bucket_init(&h->read);
  rate_bucket_init(&h->write);
  self->handle = h;
  return 0;
}

static void
rate_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct rate_handle *h = self->handle;

  (void)next;
  pthread_mutex_destroy(&h->read.lock);
  pthread_mutex_destroy(&h->write.lock);
  free(h);
}

static int
rate_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
           uint32_t count, uint64_t offset, uint32_t flags)
{
  int r = rate_account(self, 0, count);

  return r < 0 ? r : next_pread(next, buf, count, offset, flags);
}

/* No pwrite_from: a sleeping write must not hold the socket. */
static int
rate_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags)
{
  int r = rate_account(self, 1, count);

  return r < 0 ? r : next_pwrite(next, buf, count, offset, flags);
}

PASSTHROUGH(rate, flush)
PASSTHROUGH(rate, trim)
PASSTHROUGH(rate, zero)
PASSTHROUGH(rate, extents)
PASSTHROUGH(rate, depth)
PASSTHROUGH(rate, cache)
PASSTHROUGH(rate, reopen)
PASSTHROUGH(rate, get_size)
PASSTHROUGH(rate, block_size)
PASSTHROUGH(rate, can_write)
PASSTHROUGH(rate, can_flush)
PASSTHROUGH(rate, can_trim)
PASSTHROUGH(rate, can_zero)
PASSTHROUGH(rate, can_fast_zero)
PASSTHROUGH(rate, can_fua)
PASSTHROUGH(rate, can_cache)
PASSTHROUGH(rate, can_extents)
PASSTHROUGH(rate, can_multi_conn)
PASSTHROUGH(rate, is_rotational)
PASSTHROUGH(rate, list_exports)
PASSTHROUGH(rate, preconnect)

NBD_REGISTER_FILTER(rate,
  NBD_PARALLEL,                 /* buckets have their own locks */
  NBD_MAY_BLOCK,                /* sleeps: requests go to workers */
  .description = "limit the bandwidth of reads and writes (bits per second)",
  .params = rate_params,
  .conf_size = sizeof(struct rate_conf),
  .setup = rate_setup,
  .cleanup = rate_cleanup,
  .open = rate_open,
  .close = rate_close,
);
