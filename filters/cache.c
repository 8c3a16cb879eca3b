/* nbdstack filter cache: keep blocks of the layer below in a temporary
 * file (nbdkit's cache filter, same keys).
 *
 * The export's cache is one sparse file in $TMPDIR (default /var/tmp),
 * made at setup with O_TMPFILE (or mkstemp + unlink) and shared by every
 * connection, with one state byte per block: not cached, clean (same bytes
 * as below) or dirty (newer than below).  Modes:
 *   writeback     writes go to the cache and turn dirty; FUA writes go
 *                 through as well; FLUSH writes every dirty block back,
 *                 then flushes below;
 *   writethrough  every write goes to the cache and below;
 *   unsafe        writeback that ignores FLUSH and FUA.
 * Reads are served from cached blocks; the rest is read below, in whole
 * blocks kept (clean) when cache-on-read says so, else only the bytes
 * asked for (when below takes them as they are).  NBD_CMD_CACHE
 * reads blocks in.  Zero and trim go below at once, and the blocks they
 * cover leave the cache, so no dirty block can be written back over them
 * later; partial blocks are zeroed (zero, or trim of a dirty block) or
 * dropped (trim of a clean block) in the cache.  Extents come from below,
 * with dirty blocks reported as data.  With cache-max-size, clean blocks
 * are dropped (second-chance clock), dirty ones after being written back.
 *
 * Concurrency: one mutex guards the map, the counters and the clock ring;
 * no I/O runs under it.  A request marks its blocks busy (all at once, so
 * two requests cannot deadlock), does its I/O, then updates their states;
 * a block is busy for one request at a time, which orders writeback,
 * read-modify-write, zero and trim on it.
 *
 * It does not keep the cache across restarts, nor notice the layer below
 * changing behind its back.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layer.h"

#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif

#define KIB 1024u
#define MIB (1024u * KIB)

#define CACHE_MIN_BLOCK   (4 * KIB)   /* nbdkit's lower bound */
#define CACHE_MAX_BLOCK   (32 * MIB)  /* a block must fit one request */
#define CACHE_RUN         (4 * MIB)   /* bytes per writeback or prefetch */
#define CACHE_MIN_BLOCKS  4           /* cache-max-size: at least this */

/* The map: one byte per block. */
#define CACHE_NONE   0x00
#define CACHE_CLEAN  0x01
#define CACHE_DIRTY  0x02
#define CACHE_STATE  0x03
#define CACHE_BUSY   0x04             /* a request owns the block */
#define CACHE_REF    0x08             /* used since the clock hand passed */
#define CACHE_RING   0x10             /* listed in the clock ring */

enum cache_mode { CACHE_WRITEBACK, CACHE_WRITETHROUGH, CACHE_UNSAFE };

struct cache_conf {
  int mode;
  uint64_t min_block;
  uint64_t max_size;
  uint64_t high, low;
  char *on_read;
};

static const char *const cache_modes[] = {
  "writeback", "writethrough", "unsafe", NULL
};

static const struct nbd_param cache_params[] = {
  { "cache", NBD_PARAM_ENUM, offsetof(struct cache_conf, mode), "writeback",
    "writeback, writethrough or unsafe (FLUSH ignored)", cache_modes, 0 },
  { "cache-min-block-size", NBD_PARAM_SIZE,
    offsetof(struct cache_conf, min_block), "64k",
    "cache block size: a power of two >= 4096", NULL, 0 },
  { "cache-max-size", NBD_PARAM_SIZE, offsetof(struct cache_conf, max_size),
    NULL, "reclaim blocks when the cache grows past this", NULL, 0 },
  { "cache-high-threshold", NBD_PARAM_UINT,
    offsetof(struct cache_conf, high), "95",
    "percent of cache-max-size that starts reclaiming", NULL, 0 },
  { "cache-low-threshold", NBD_PARAM_UINT,
    offsetof(struct cache_conf, low), "80",
    "percent of cache-max-size that stops reclaiming", NULL, 0 },
  { "cache-on-read", NBD_PARAM_STRING, offsetof(struct cache_conf, on_read),
    "false", "keep blocks read from below: true, false, or /PATH (true "
    "while PATH exists)", NULL, 0 },
  NBD_PARAM_END
};

/* Shared by every connection of the export (layer->state). */
struct cache_state {
  enum cache_mode mode;
  int fd;                       /* the cache file */
  uint32_t bs;                  /* block size, a power of two */
  unsigned bits;                /* log2(bs) */
  int on_read;                  /* cache-on-read=true */
  const char *on_read_path;     /* cache-on-read=/PATH, or NULL */
  uint64_t high, low;           /* reclaim thresholds in blocks, 0 = none */
  unsigned char *zeros;         /* bs zero bytes */
  struct nbd_bufpool pool;      /* block-sized bounce buffers */

  pthread_mutex_t lock;         /* everything below */
  pthread_cond_t idle;          /* some busy block was released */
  int64_t size;                 /* of the layer below; -1 until known */
  uint64_t nblocks;
  unsigned char *map;
  uint64_t ncached, ndirty;
  unsigned users;               /* prepared connections */
  uint64_t *ring;               /* clock ring (max size only) */
  size_t ring_cap, ring_head, ring_len;
  int reclaiming;
};

/* ---- setup -------------------------------------------------------------- */

static int
cache_parse_on_read(struct cache_state *st, const char *v, char *err,
                    size_t errlen)
{
  static const char *const yes[] = { "true", "yes", "on", "1", NULL };
  static const char *const no[] = { "false", "no", "off", "0", NULL };
  size_t i;

  if (v[0] == '/') {
    st->on_read_path = v;
    return 0;
  }
  for (i = 0; yes[i]; i++)
    if (strcasecmp(v, yes[i]) == 0) {
      st->on_read = 1;
      return 0;
    }
  for (i = 0; no[i]; i++)
    if (strcasecmp(v, no[i]) == 0)
      return 0;
  snprintf(err, errlen, "cache-on-read: invalid value '%s' (expected true, "
           "false or an absolute /PATH)", v);
  return -1;
}

/* The sparse cache file, already unlinked. */
static int
cache_open_file(const char *dir, char *err, size_t errlen)
{
  size_t len = strlen(dir) + sizeof "/nbdstack-cache-XXXXXX";
  char *tmpl;
  int fd;

#ifdef O_TMPFILE
  fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0)
    return fd;
#endif
  tmpl = malloc(len);
  if (tmpl == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  snprintf(tmpl, len, "%s/nbdstack-cache-XXXXXX", dir);
  fd = mkostemp(tmpl, O_CLOEXEC);
  if (fd == -1)
    snprintf(err, errlen, "cannot create the cache file in %s: %s", dir,
             strerror(errno));
  else
    unlink(tmpl);
  free(tmpl);
  return fd;
}

static int
cache_check_conf(const struct cache_conf *conf, struct nbd_layer *layer,
                 char *err, size_t errlen)
{
  uint64_t b = conf->min_block;

  if (b < CACHE_MIN_BLOCK || b > CACHE_MAX_BLOCK || (b & (b - 1))) {
    snprintf(err, errlen, "cache-min-block-size=%" PRIu64 " must be a power "
             "of two from 4096 to 32M", b);
    return -1;
  }
  if (conf->high == 0 || conf->high > 100) {
    snprintf(err, errlen, "cache-high-threshold=%" PRIu64 " must be a "
             "percentage from 1 to 100", conf->high);
    return -1;
  }
  if (conf->low == 0 || conf->low >= conf->high) {
    snprintf(err, errlen, "cache-low-threshold=%" PRIu64 " must be above 0 "
             "and below cache-high-threshold (%" PRIu64 ")", conf->low,
             conf->high);
    return -1;
  }
  if (!nbd_layer_param_set(layer, "cache-max-size") &&
      (nbd_layer_param_set(layer, "cache-high-threshold") ||
       nbd_layer_param_set(layer, "cache-low-threshold"))) {
    snprintf(err, errlen, "cache-high-threshold and cache-low-threshold "
             "need cache-max-size");
    return -1;
  }
  return 0;
}

/* The size limit, once the block size is final.  Holes must be punchable:
 * without them, dropping a block frees nothing. */
static int
cache_setup_limit(struct cache_state *st, const struct cache_conf *conf,
                  char *err, size_t errlen)
{
  uint64_t m = conf->max_size;

  if (m / st->bs < CACHE_MIN_BLOCKS) {
    snprintf(err, errlen, "cache-max-size=%" PRIu64 " is too small: it must "
             "hold at least %u cache blocks of %" PRIu32 " bytes", m,
             CACHE_MIN_BLOCKS, st->bs);
    return -1;
  }
  /* m * pct / 100 without overflow. */
  st->high = (m / 100 * conf->high + m % 100 * conf->high / 100) >> st->bits;
  st->low = (m / 100 * conf->low + m % 100 * conf->low / 100) >> st->bits;
  if (st->high == 0)
    st->high = 1;
  if (ftruncate(st->fd, st->bs) == -1 ||
      pwrite(st->fd, "x", 1, 0) != 1 ||
      fallocate(st->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                st->bs) == -1) {
    snprintf(err, errlen, "cache-max-size needs a cache file that can punch "
             "holes (fallocate) in $TMPDIR: %s", strerror(errno));
    return -1;
  }
  return 0;
}

static void cache_cleanup(struct nbd_layer *layer);

static int
cache_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct cache_conf *conf = layer->conf;
  const char *dir = getenv("TMPDIR");
  struct cache_state *st;
  struct stat sb;

  if (cache_check_conf(conf, layer, err, errlen) == -1)
    return -1;
  st = calloc(1, sizeof *st);
  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  layer->state = st;
  st->fd = -1;
  st->size = -1;
  st->mode = (enum cache_mode)conf->mode;
  pthread_mutex_init(&st->lock, NULL);
  pthread_cond_init(&st->idle, NULL);
  if (cache_parse_on_read(st, conf->on_read, err, errlen) == -1)
    goto fail;
  if ((st->fd = cache_open_file(dir && *dir ? dir : "/var/tmp", err,
                                errlen)) == -1)
    goto fail;
  /* As nbdkit: at least the block size of the cache file's filesystem,
   * so that punching a block's hole frees it. */
  st->bs = (uint32_t)conf->min_block;
  if (fstat(st->fd, &sb) == 0 && sb.st_blksize > 0 &&
      (uint64_t)sb.st_blksize <= CACHE_MAX_BLOCK &&
      (sb.st_blksize & (sb.st_blksize - 1)) == 0 &&
      (uint32_t)sb.st_blksize > st->bs)
    st->bs = (uint32_t)sb.st_blksize;
  while ((1u << st->bits) < st->bs)
    st->bits++;
  nbd_bufpool_init(&st->pool, st->bs);
  st->zeros = calloc(1, st->bs);
  if (st->zeros == NULL) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (nbd_layer_param_set(layer, "cache-max-size") &&
      cache_setup_limit(st, conf, err, errlen) == -1)
    goto fail;
  return 0;

fail:
  cache_cleanup(layer);
  return -1;
}

static void
cache_cleanup(struct nbd_layer *layer)
{
  struct cache_state *st = layer->state;

  if (st == NULL)
    return;
  if (st->fd >= 0)
    close(st->fd);
  pthread_mutex_destroy(&st->lock);
  pthread_cond_destroy(&st->idle);
  free(st->zeros);
  if (st->pool.size)
    nbd_bufpool_destroy(&st->pool);
  free(st->map);
  free(st->ring);
  free(st);
  layer->state = NULL;
}

/* ---- the cache file and the layer below ----------------------------------- */

static int
cache_file_pread(struct cache_state *st, void *buf, uint64_t len,
                 uint64_t off)
{
  return nbd_pread_full(st->fd, buf, len, off);
}

static int
cache_file_pwrite(struct cache_state *st, const void *buf, uint64_t len,
                  uint64_t off)
{
  return nbd_pwrite_full(st->fd, buf, len, off);
}

/* Frees the file space of dropped blocks; a filesystem that cannot punch
 * only wastes space (cache-max-size checked it can at setup). */
static void
cache_file_punch(struct cache_state *st, uint64_t off, uint64_t len)
{
  if (len)
    (void)fallocate(st->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    (off_t)off, (off_t)len);
}

/* Requests below, split to the lower layer's maximum.  Offsets are block
 * aligned and lengths whole blocks (or up to the end of the disk), and a
 * block is a multiple of the minimum below (checked in prepare). */
static uint32_t
cache_chunk(struct nbd_ctx *next)
{
  uint32_t minimum, preferred, maximum;

  next_block_size(next, &minimum, &preferred, &maximum);
  return maximum && maximum < CACHE_MAX_BLOCK ? maximum : CACHE_MAX_BLOCK;
}

static int
cache_below_pread(struct nbd_ctx *next, void *buf, uint64_t len,
                  uint64_t off)
{
  uint32_t chunk = cache_chunk(next), n;
  char *p = buf;
  int r;

  for (; len > 0; len -= n, off += n, p += n) {
    n = len < chunk ? (uint32_t)len : chunk;
    if ((r = next_pread(next, p, n, off, 0)) < 0)
      return r;
  }
  return 0;
}

static int
cache_below_pwrite(struct nbd_ctx *next, const void *buf, uint64_t len,
                   uint64_t off, uint32_t flags)
{
  uint32_t chunk = cache_chunk(next), n;
  const char *p = buf;
  int r;

  for (; len > 0; len -= n, off += n, p += n) {
    n = len < chunk ? (uint32_t)len : chunk;
    if ((r = next_pwrite(next, p, n, off, flags)) < 0)
      return r;
  }
  return 0;
}

/* ---- the block map (st->lock held unless said otherwise) -------------------- */

/* First byte after block b. */
static uint64_t
cache_end(const struct cache_state *st, uint64_t b)
{
  uint64_t e = (b + 1) << st->bits;

  return e < (uint64_t)st->size ? e : (uint64_t)st->size;
}

static unsigned
cache_state_of(const struct cache_state *st, uint64_t b)
{
  return st->map[b] & CACHE_STATE;
}

/* Lists a newly cached block in the clock ring.  Without memory the block
 * is simply never reclaimed. */
static void
cache_ring_push(struct cache_state *st, uint64_t b)
{
  if (st->ring_len == st->ring_cap) {
    size_t cap = st->ring_cap ? 2 * st->ring_cap : 1024, i;
    uint64_t *r = malloc(cap * sizeof *r);
    if (r == NULL)
      return;
    for (i = 0; i < st->ring_len; i++)
      r[i] = st->ring[(st->ring_head + i) % st->ring_cap];
    free(st->ring);
    st->ring = r;
    st->ring_cap = cap;
    st->ring_head = 0;
  }
  st->ring[(st->ring_head + st->ring_len++) % st->ring_cap] = b;
  st->map[b] |= CACHE_RING;
}

static void
cache_set(struct cache_state *st, uint64_t b, unsigned state)
{
  unsigned old = cache_state_of(st, b);

  st->ncached += (state != CACHE_NONE) - (old != CACHE_NONE);
  st->ndirty += (state == CACHE_DIRTY) - (old == CACHE_DIRTY);
  st->map[b] = (unsigned char)((st->map[b] & ~CACHE_STATE) | state);
  if (old == CACHE_NONE)
    st->map[b] &= (unsigned char)~CACHE_REF;
  if (state != CACHE_NONE && st->high && !(st->map[b] & CACHE_RING))
    cache_ring_push(st, b);
}

static int
cache_any_busy(const struct cache_state *st, uint64_t first, uint64_t last)
{
  uint64_t b;

  for (b = first; b <= last; b++)
    if (st->map[b] & CACHE_BUSY)
      return 1;
  return 0;
}

/* Takes blocks first..last for one request: all at once, when none is
 * busy, so no two requests each hold what the other waits for.  A cached
 * block is marked used (the clock's second chance goes to blocks used
 * again, not to every block just read in, so one pass over the disk does
 * not push out the blocks in use).  Takes and drops the lock. */
static void
cache_acquire(struct cache_state *st, uint64_t first, uint64_t last)
{
  uint64_t b;

  pthread_mutex_lock(&st->lock);
  while (cache_any_busy(st, first, last))
    pthread_cond_wait(&st->idle, &st->lock);
  for (b = first; b <= last; b++)
    st->map[b] |= CACHE_BUSY | (cache_state_of(st, b) ? CACHE_REF : 0);
  pthread_mutex_unlock(&st->lock);
}

static void
cache_release_locked(struct cache_state *st, uint64_t first, uint64_t last)
{
  uint64_t b;

  for (b = first; b <= last; b++)
    st->map[b] &= (unsigned char)~CACHE_BUSY;
  pthread_cond_broadcast(&st->idle);
}

static void
cache_release(struct cache_state *st, uint64_t first, uint64_t last)
{
  pthread_mutex_lock(&st->lock);
  cache_release_locked(st, first, last);
  pthread_mutex_unlock(&st->lock);
}

/* Sets blocks first..last to state (the caller owns them). */
static void
cache_mark(struct cache_state *st, uint64_t first, uint64_t last,
           unsigned state)
{
  uint64_t b;

  pthread_mutex_lock(&st->lock);
  for (b = first; b <= last; b++)
    cache_set(st, b, state);
  pthread_mutex_unlock(&st->lock);
}

/* After a failed change: what went below is unknown, so clean blocks are
 * dropped (the next read asks below); dirty ones keep the newest data the
 * client has seen acknowledged, and stay dirty. */
static void
cache_fail_locked(struct cache_state *st, uint64_t first, uint64_t last)
{
  uint64_t b;

  for (b = first; b <= last; b++)
    if (cache_state_of(st, b) == CACHE_CLEAN)
      cache_set(st, b, CACHE_NONE);
}

/* The last block of the run from b up to last whose blocks are all cached
 * or all not cached (the caller owns them). */
static uint64_t
cache_run(struct cache_state *st, uint64_t b, uint64_t last, int *cached)
{
  pthread_mutex_lock(&st->lock);
  *cached = cache_state_of(st, b) != CACHE_NONE;
  while (b < last && (cache_state_of(st, b + 1) != CACHE_NONE) == *cached)
    b++;
  pthread_mutex_unlock(&st->lock);
  return b;
}

static int
cache_on_read(const struct cache_state *st)
{
  if (st->on_read_path)
    return access(st->on_read_path, F_OK) == 0;
  return st->on_read;
}

/* ---- writeback and reclaim --------------------------------------------------- */

/* Writes blocks first..last (owned, dirty) from the cache file below. */
static int
cache_write_back(struct cache_state *st, struct nbd_ctx *next, void *buf,
                 uint64_t first, uint64_t last)
{
  uint64_t off = first << st->bits, len = cache_end(st, last) - off;
  int r;

  if ((r = cache_file_pread(st, buf, len, off)) < 0 ||
      (r = cache_below_pwrite(next, buf, len, off, 0)) < 0)
    nbd_error("filter cache: writing back %" PRIu64 "+%" PRIu64 " failed: "
              "%s", off, len, strerror(-r));
  return r;
}

/* Every block dirty when it starts goes below.  A dirty block that is
 * busy is waited for (a write to it may be one the flush must cover); a
 * write arriving after a block went back leaves it dirty again.  A failed
 * run stays dirty for the next flush; the rest is still written. */
static int
cache_write_back_all(struct cache_state *st, struct nbd_ctx *next)
{
  uint64_t run = CACHE_RUN >> st->bits, pos = 0, b, e;
  void *buf;
  int r, err = 0;

  if (run == 0)
    run = 1;
  buf = malloc(run << st->bits);
  if (buf == NULL)
    return -ENOMEM;
  pthread_mutex_lock(&st->lock);
  while (st->ndirty > 0) {
    for (b = pos; b < st->nblocks && cache_state_of(st, b) != CACHE_DIRTY; b++)
      ;
    if (b == st->nblocks)
      break;
    if (st->map[b] & CACHE_BUSY) {
      pthread_cond_wait(&st->idle, &st->lock);
      continue;
    }
    for (e = b; e + 1 < st->nblocks && e + 1 - b < run &&
         (st->map[e + 1] & (CACHE_STATE | CACHE_BUSY)) == CACHE_DIRTY; e++)
      ;
    for (pos = b; pos <= e; pos++)
      st->map[pos] |= CACHE_BUSY;
    pthread_mutex_unlock(&st->lock);
    r = cache_write_back(st, next, buf, b, e);
    pthread_mutex_lock(&st->lock);
    for (pos = b; r == 0 && pos <= e; pos++)
      cache_set(st, pos, CACHE_CLEAN);
    for (pos = b; pos <= e; pos++)
      st->map[pos] &= (unsigned char)~CACHE_BUSY;
    pthread_cond_broadcast(&st->idle);
    if (r < 0 && err == 0)
      err = r;
    pos = e + 1;
  }
  pthread_mutex_unlock(&st->lock);
  free(buf);
  return err;
}

#define CACHE_VICTIMS 64

/* Up to CACHE_VICTIMS blocks to drop, by second chance: a block used since
 * the hand last passed goes round again.  Owned on return. */
static size_t
cache_pick_victims(struct cache_state *st, uint64_t *v, int *dirty,
                   int clean_only)
{
  size_t n = 0, steps = 2 * st->ring_len + CACHE_VICTIMS;
  uint64_t b;

  while (n < CACHE_VICTIMS && st->ring_len > 0 && steps-- > 0 &&
         st->ncached - n > st->low) {
    b = st->ring[st->ring_head];
    st->ring_head = (st->ring_head + 1) % st->ring_cap;
    st->ring_len--;
    st->map[b] &= (unsigned char)~CACHE_RING;
    if (cache_state_of(st, b) == CACHE_NONE)
      continue;                 /* dropped by trim or zero meanwhile */
    if ((st->map[b] & (CACHE_BUSY | CACHE_REF)) ||
        (clean_only && cache_state_of(st, b) == CACHE_DIRTY)) {
      st->map[b] &= (unsigned char)~CACHE_REF;
      cache_ring_push(st, b);
      continue;
    }
    st->map[b] |= CACHE_BUSY;
    dirty[n] = cache_state_of(st, b) == CACHE_DIRTY;
    v[n++] = b;
  }
  return n;
}

/* Above the high threshold: drop blocks down to the low one, writing
 * dirty ones back first (in every mode: unsafe only skips FLUSH).  One
 * request reclaims at a time; the others go on.  A read-only connection
 * cannot write below, so it drops clean blocks only. */
static void
cache_reclaim(struct cache_state *st, struct nbd_ctx *next)
{
  uint64_t v[CACHE_VICTIMS];
  int dirty[CACHE_VICTIMS], failed[CACHE_VICTIMS];
  int stop = 0, clean_only = !next_can_write(next);
  void *buf = NULL;
  size_t n, i;

  pthread_mutex_lock(&st->lock);
  if (st->high == 0 || st->reclaiming || st->ncached <= st->high) {
    pthread_mutex_unlock(&st->lock);
    return;
  }
  st->reclaiming = 1;
  while (!stop && st->ncached > st->low &&
         (n = cache_pick_victims(st, v, dirty, clean_only)) > 0) {
    pthread_mutex_unlock(&st->lock);
    for (i = 0; i < n; i++) {
      failed[i] = 0;
      if (dirty[i]) {
        if (buf == NULL && (buf = nbd_bufpool_get(&st->pool, st->bs)) == NULL)
          failed[i] = 1;
        else
          failed[i] = cache_write_back(st, next, buf, v[i], v[i]) < 0;
      }
      if (!failed[i])
        cache_file_punch(st, v[i] << st->bits, cache_end(st, v[i]) -
                         (v[i] << st->bits));
    }
    pthread_mutex_lock(&st->lock);
    for (i = 0; i < n; i++) {
      if (failed[i]) {
        stop = 1;               /* try again after the next request */
        if (!(st->map[v[i]] & CACHE_RING))
          cache_ring_push(st, v[i]);
      }
      else
        cache_set(st, v[i], CACHE_NONE);
      st->map[v[i]] &= (unsigned char)~CACHE_BUSY;
    }
    pthread_cond_broadcast(&st->idle);
  }
  st->reclaiming = 0;
  pthread_mutex_unlock(&st->lock);
  nbd_bufpool_put(&st->pool, buf, st->bs);
}

/* ---- connections ------------------------------------------------------------- */

/* Sizes the map for the disk below; drops every (clean) block. */
static int
cache_resize(struct cache_state *st, int64_t size)
{
  uint64_t n = ((uint64_t)size + st->bs - 1) >> st->bits;
  unsigned char *map = calloc(n ? n : 1, 1);

  if (map == NULL) {
    nbd_error("filter cache: no memory for the map of %" PRIu64 " blocks", n);
    return -ENOMEM;
  }
  if (ftruncate(st->fd, 0) == -1 || ftruncate(st->fd, size) == -1) {
    int e = errno;
    nbd_error("filter cache: cannot size the cache file to %" PRId64
              " bytes: %s", size, strerror(e));
    free(map);
    return -e;
  }
  free(st->map);
  st->map = map;
  st->nblocks = n;
  st->size = size;
  st->ncached = st->ndirty = 0;
  st->ring_len = st->ring_head = 0;
  return 0;
}

/* The map follows the size of the disk below, which may change between
 * connections, but not while another connection uses the cache or dirty
 * blocks wait to go below. */
static int
cache_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct cache_state *st = self->layer->state;
  int64_t size = next_get_size(next);
  uint32_t minimum, preferred, maximum;
  int r = 0;

  if (size < 0)
    return (int)size;
  next_block_size(next, &minimum, &preferred, &maximum);
  if (minimum > st->bs) {
    nbd_error("export '%s': filter cache: the cache block size %" PRIu32
              " is below the minimum block size %" PRIu32 " of the layer "
              "below (raise cache-min-block-size)", self->layer->export_name,
              st->bs, minimum);
    return -EINVAL;
  }
  pthread_mutex_lock(&st->lock);
  if (size != st->size) {
    if (st->users > 0 || st->ndirty > 0) {
      nbd_error("export '%s': filter cache: the size of the layer below "
                "changed from %" PRId64 " to %" PRId64 " while the cache is "
                "in use", self->layer->export_name, st->size, size);
      r = -EBUSY;
    }
    else
      r = cache_resize(st, size);
  }
  if (r == 0) {
    st->users++;
    self->handle = st;
  }
  pthread_mutex_unlock(&st->lock);
  return r;
}

static void
cache_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct cache_state *st = self->handle;

  if (st) {
    pthread_mutex_lock(&st->lock);
    st->users--;
    pthread_mutex_unlock(&st->lock);
  }
}

/* ---- reads ---------------------------------------------------------------------- */

/* Blocks b..e (owned, not cached) from below, whole; the part of the
 * request [offset, offset+count) they hold goes to buf, and they join the
 * cache as clean when keep says so. */
static int
cache_read_below(struct cache_state *st, struct nbd_ctx *next, char *buf,
                 uint32_t count, uint64_t offset, uint64_t b, uint64_t e,
                 int keep)
{
  uint64_t start = b << st->bits, end = cache_end(st, e);
  uint64_t lo = offset > start ? offset : start;
  uint64_t hi = offset + count < end ? offset + count : end;
  char *p = buf + (lo - offset), *bounce = NULL;
  uint32_t min = 0, pref, max;
  int r;

  /* Not kept: only the bytes asked for, when below takes them as they
   * are (a 4 KiB read need not read its whole 64 KiB block). */
  if (!keep && (lo != start || hi != end)) {
    next_block_size(next, &min, &pref, &max);
    if (min <= 1 || (lo % min == 0 && (hi % min == 0 || hi == end)))
      return cache_below_pread(next, p, hi - lo, lo);
  }
  if (lo != start || hi != end) {
    if ((bounce = nbd_bufpool_get(&st->pool, end - start)) == NULL)
      return -ENOMEM;
    p = bounce;
  }
  r = cache_below_pread(next, p, end - start, start);
  if (r == 0 && bounce)
    memcpy(buf + (lo - offset), bounce + (lo - start), hi - lo);
  /* Not keeping them (cache file full) costs speed, not data. */
  if (r == 0 && keep && cache_file_pwrite(st, p, end - start, start) == 0)
    cache_mark(st, b, e, CACHE_CLEAN);
  nbd_bufpool_put(&st->pool, bounce, end - start);
  return r;
}

static int
cache_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
            uint32_t count, uint64_t offset, uint32_t flags)
{
  struct cache_state *st = self->layer->state;
  uint64_t first, last, b, e, lo, hi;
  int keep = cache_on_read(st), cached, r = 0;

  if (count == 0)
    return 0;
  first = offset >> st->bits;
  last = (offset + count - 1) >> st->bits;
  cache_acquire(st, first, last);
  for (b = first; r == 0 && b <= last; b = e + 1) {
    e = cache_run(st, b, last, &cached);
    if (!cached) {
      r = cache_read_below(st, next, buf, count, offset, b, e, keep);
      continue;
    }
    lo = offset > b << st->bits ? offset : b << st->bits;
    hi = offset + count < cache_end(st, e) ? offset + count : cache_end(st, e);
    r = cache_file_pread(st, (char *)buf + (lo - offset), hi - lo, lo);
  }
  cache_release(st, first, last);
  if (keep)
    cache_reclaim(st, next);
  return r;
}

/* NBD_CMD_CACHE: read the blocks in, a run at a time, reclaiming as it
 * goes (prefetching more than cache-max-size keeps the last part). */
static int
cache_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
            uint64_t offset, uint32_t flags)
{
  struct cache_state *st = self->layer->state;
  uint64_t run = CACHE_RUN >> st->bits, first, last, c, cl, b, e, start;
  char *buf;
  int cached, r = 0;

  if (count == 0)
    return 0;
  if (run == 0)
    run = 1;
  first = offset >> st->bits;
  last = (offset + count - 1) >> st->bits;
  if (last - first < run - 1)
    run = last - first + 1;
  /* run >= 1: the test only keeps the analyzer from fearing malloc(0). */
  if ((run << st->bits) == 0 || (buf = malloc(run << st->bits)) == NULL)
    return -ENOMEM;
  for (c = first; r == 0 && c <= last; c = cl + 1) {
    cl = last - c < run - 1 ? last : c + run - 1;
    cache_acquire(st, c, cl);
    for (b = c; r == 0 && b <= cl; b = e + 1) {
      e = cache_run(st, b, cl, &cached);
      if (cached)
        continue;
      start = b << st->bits;
      if ((r = cache_below_pread(next, buf, cache_end(st, e) - start,
                                 start)) == 0 &&
          (r = cache_file_pwrite(st, buf, cache_end(st, e) - start,
                                 start)) == 0)
        cache_mark(st, b, e, CACHE_CLEAN);
    }
    cache_release(st, c, cl);
    cache_reclaim(st, next);
  }
  free(buf);
  return r;
}

/* ---- writes --------------------------------------------------------------------- */

/* Block b (owned) into dst: from the cache, or whole from below. */
static int
cache_fill_block(struct cache_state *st, struct nbd_ctx *next, char *dst,
                 uint64_t b)
{
  uint64_t start = b << st->bits, len = cache_end(st, b) - start;
  int cached;

  pthread_mutex_lock(&st->lock);
  cached = cache_state_of(st, b) != CACHE_NONE;
  pthread_mutex_unlock(&st->lock);
  if (cached)
    return cache_file_pread(st, dst, len, start);
  return cache_below_pread(next, dst, len, start);
}

/* Writes go to whole blocks of the cache file: a partial first or last
 * block is read first (read-modify-write).  writethrough, and FUA in
 * writeback, send the same whole blocks below, which leaves them clean;
 * unsafe ignores FUA, as nbdkit does. */
static int
cache_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
             uint32_t count, uint64_t offset, uint32_t flags)
{
  struct cache_state *st = self->layer->state;
  uint64_t first, last, start, end, b;
  int through = st->mode == CACHE_WRITETHROUGH ||
    (st->mode == CACHE_WRITEBACK && (flags & NBD_FLAG_FUA));
  const char *data = buf;
  char *bounce = NULL;
  int r = 0;

  if (count == 0)
    return 0;
  first = offset >> st->bits;
  last = (offset + count - 1) >> st->bits;
  start = first << st->bits;
  end = cache_end(st, last);
  cache_acquire(st, first, last);
  if (offset != start || offset + count != end) {
    if ((bounce = nbd_bufpool_get(&st->pool, end - start)) == NULL)
      r = -ENOMEM;
    if (r == 0 && offset != start)
      r = cache_fill_block(st, next, bounce, first);
    if (r == 0 && offset + count != end && (last != first || offset == start))
      r = cache_fill_block(st, next, bounce + ((last - first) << st->bits),
                           last);
    if (r == 0)
      memcpy(bounce + (offset - start), buf, count);
    data = bounce;
  }
  if (r == 0)
    r = cache_file_pwrite(st, data, end - start, start);
  if (r == 0 && through)
    r = cache_below_pwrite(next, data, end - start, start,
                           flags & NBD_FLAG_FUA);
  pthread_mutex_lock(&st->lock);
  if (r == 0)
    for (b = first; b <= last; b++)
      cache_set(st, b, through ? CACHE_CLEAN : CACHE_DIRTY);
  else
    cache_fail_locked(st, first, last);
  cache_release_locked(st, first, last);
  pthread_mutex_unlock(&st->lock);
  nbd_bufpool_put(&st->pool, bounce, end - start);
  if (r == 0)
    cache_reclaim(st, next);
  return r;
}

/* After a zero or trim [offset, offset+count) went below: blocks it covers
 * leave the cache (a dirty one must never go back over it); in a partial
 * block the range is zeroed, except that trim drops a clean one.  On a
 * failure to zero, a dirty block keeps its old bytes there, which the
 * failed request allows. */
static int
cache_discard(struct cache_state *st, uint32_t count, uint64_t offset,
              uint64_t first, uint64_t last, int trim)
{
  uint64_t b, start, end, lo, hi, pfirst = 0, pend = 0;
  unsigned state;
  int r = 0, e;

  for (b = first; b <= last; b++) {
    start = b << st->bits;
    end = cache_end(st, b);
    lo = offset > start ? offset : start;
    hi = offset + count < end ? offset + count : end;
    if (lo == start && hi == end) {     /* covered: contiguous */
      if (pend == 0)
        pfirst = start;
      pend = end;
      continue;
    }
    pthread_mutex_lock(&st->lock);
    state = cache_state_of(st, b);
    if (state == CACHE_CLEAN && trim)
      cache_set(st, b, CACHE_NONE);
    pthread_mutex_unlock(&st->lock);
    if (state == CACHE_NONE || (state == CACHE_CLEAN && trim))
      continue;
    if ((e = cache_file_pwrite(st, st->zeros, hi - lo, lo)) < 0) {
      pthread_mutex_lock(&st->lock);
      cache_fail_locked(st, b, b);
      pthread_mutex_unlock(&st->lock);
      r = e;
    }
  }
  if (pend == 0)
    return r;
  cache_file_punch(st, pfirst, pend - pfirst);
  pthread_mutex_lock(&st->lock);
  for (b = pfirst >> st->bits; b <= last && (b << st->bits) < pend; b++)
    cache_set(st, b, CACHE_NONE);
  pthread_mutex_unlock(&st->lock);
  return r;
}

static int
cache_zero_or_trim(struct nbd_ctx *self, struct nbd_ctx *next,
                   uint32_t count, uint64_t offset, uint32_t flags, int trim)
{
  struct cache_state *st = self->layer->state;
  uint64_t first, last;
  int r;

  if (count == 0)
    return 0;
  first = offset >> st->bits;
  last = (offset + count - 1) >> st->bits;
  cache_acquire(st, first, last);
  r = trim ? next_trim(next, count, offset, flags)
           : next_zero(next, count, offset, flags);
  if (r == 0)
    r = cache_discard(st, count, offset, first, last, trim);
  pthread_mutex_lock(&st->lock);
  /* A declined fast zero changed nothing. */
  if (r < 0 && r != -ENOTSUP)
    cache_fail_locked(st, first, last);
  cache_release_locked(st, first, last);
  pthread_mutex_unlock(&st->lock);
  return r;
}

static int
cache_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
           uint64_t offset, uint32_t flags)
{
  return cache_zero_or_trim(self, next, count, offset, flags, 0);
}

static int
cache_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
           uint64_t offset, uint32_t flags)
{
  return cache_zero_or_trim(self, next, count, offset, flags, 1);
}

/* Every dirty block goes below, then the layer below flushes, even when
 * some block failed (what did go below is made durable); the failed ones
 * stay dirty for the next flush.  unsafe ignores FLUSH, as nbdkit does. */
static int
cache_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  struct cache_state *st = self->layer->state;
  int r, r2;

  if (st->mode == CACHE_UNSAFE)
    return 0;
  /* A read-only connection wrote nothing, and cannot write below. */
  r = next_can_write(next) ? cache_write_back_all(st, next) : 0;
  if (next_can_flush(next) && (r2 = next_flush(next, 0)) < 0 && r == 0)
    r = r2;
  return r;
}

/* ---- extents -------------------------------------------------------------------- */

/* The layer below's map, but a dirty block is data: below, it may still
 * be a hole or read as zeros, while the client reads what it wrote.
 * (nbdkit's cache filter passes the map through unchanged, so a client
 * that skips holes, such as qemu-img convert or nbdcopy, loses writes not
 * yet flushed.) */
static int
cache_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
              uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  struct cache_state *st = self->layer->state;
  struct nbd_extents *below;
  uint64_t pos, end, bend;
  uint32_t type;
  size_t i;
  int r;

  pthread_mutex_lock(&st->lock);
  r = st->ndirty == 0;
  pthread_mutex_unlock(&st->lock);
  if (r)
    return next_extents(next, count, offset, flags, extents);
  if ((below = nbd_extents_new(offset, offset + count)) == NULL)
    return -ENOMEM;
  r = next_extents(next, count, offset, flags, below);
  pthread_mutex_lock(&st->lock);
  for (i = 0; r == 0 && i < below->n; i++) {
    end = below->v[i].offset + below->v[i].length;
    for (pos = below->v[i].offset; r == 0 && pos < end; pos = bend) {
      bend = cache_end(st, pos >> st->bits);
      if (bend > end)
        bend = end;
      type = below->v[i].type;
      if (cache_state_of(st, pos >> st->bits) == CACHE_DIRTY)
        type = 0;
      r = nbd_extents_add(extents, pos, bend - pos, type);
    }
  }
  pthread_mutex_unlock(&st->lock);
  nbd_extents_free(below);
  return r;
}

/* ---- capabilities ----------------------------------------------------------------- */

/* Any alignment works (read-modify-write); a whole block avoids it. */
static int
cache_block_size(struct nbd_ctx *self, struct nbd_ctx *next,
                 uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  const struct cache_state *st = self->layer->state;

  *minimum = 1;
  *preferred = st->bs;
  *maximum = 0xffffffff;
  return 0;
}

static int
cache_can_flush(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 1;
}

/* Zero is handled here (it goes below, then the cache is updated), so the
 * engine's emulation below happens under our block locks. */
static int
cache_can_zero(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return next_can_zero(next) == NBD_ZERO_NONE ? NBD_ZERO_EMULATE
                                              : NBD_ZERO_NATIVE;
}

/* FUA is written through with FUA, which the engine emulates below if it
 * must; a layer below that can do neither cannot make a write durable. */
static int
cache_can_fua(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct cache_state *st = self->layer->state;

  if (st->mode == CACHE_UNSAFE)
    return NBD_FUA_NATIVE;      /* and ignored */
  return next_can_fua(next) == NBD_FUA_NONE ? NBD_FUA_NONE : NBD_FUA_NATIVE;
}

static int
cache_can_cache(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_CACHE_NATIVE;
}

/* Every connection reads and writes the one cache, and a FLUSH on any of
 * them writes back every dirty block.  What went below through other
 * connections (writethrough, FUA, reclaim) is covered by this connection's
 * flush below only if the layer below is multi-conn itself; unsafe makes
 * no durability promise, and reads are consistent. */
static int
cache_can_multi_conn(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct cache_state *st = self->layer->state;

  if (st->mode == CACHE_UNSAFE)
    return 1;
  return next_can_multi_conn(next);
}

PASSTHROUGH(cache, get_size)
PASSTHROUGH(cache, can_write)
PASSTHROUGH(cache, can_trim)
PASSTHROUGH(cache, can_fast_zero)
PASSTHROUGH(cache, can_extents)
PASSTHROUGH(cache, is_rotational)

NBD_REGISTER_FILTER(cache,
  .description = "cache blocks of the layer below in a temporary file",
  .params = cache_params,
  .conf_size = sizeof(struct cache_conf),
  .thread_model = NBD_PARALLEL,
  .nonblocking = NBD_RARELY_BLOCKS,
  .setup = cache_setup,
  .cleanup = cache_cleanup,
  .prepare = cache_prepare,
  .close = cache_close,
);
