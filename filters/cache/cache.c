/* nbdstack filter cache: keep blocks of the layer below in a temporary
 * file (nbdkit's cache filter, same keys).
 *
 * The export's cache is one sparse file in $TMPDIR (default /var/tmp),
 * made at setup with O_TMPFILE (or mkstemp + unlink) and shared by every
 * connection, with one state byte per block (blocks.c): not cached, clean
 * (same bytes as below) or dirty (newer than below).  Modes:
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
 * A request takes the blocks it touches (busy, all at once) for its I/O,
 * then gives them back with their new states; blocks.c says how that
 * orders requests on one block.
 *
 * It does not keep the map, the cache file or their locking (blocks.c),
 * keep the cache across restarts, nor notice the layer below changing
 * behind its back.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layer.h"
#include "blocks.h"

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
  struct cache_blocks *blocks;  /* the cache file and its map */
  uint32_t bs;                  /* block size, a power of two */
  unsigned bits;                /* log2(bs) */
  int on_read;                  /* cache-on-read=true */
  const char *on_read_path;     /* cache-on-read=/PATH, or NULL */
  struct nbd_bufpool *pool;     /* block-sized bounce buffers */
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

static void
cache_cleanup(struct nbd_layer *layer)
{
  struct cache_state *st = layer->state;
  uint64_t n;

  if (st == NULL)
    return;
  /* Every connection is gone (the server waits for them), so dirty
   * blocks left now were never written below: a failed or cut-short
   * flush at close, already reported; say how much in one line. */
  if (st->blocks && st->mode != CACHE_UNSAFE &&
      (n = cache_blocks_ndirty(st->blocks, NULL)) > 0)
    nbd_error("export '%s': filter cache: %" PRIu64 " bytes written by "
              "clients never reached the layer below", layer->export_name,
              n * st->bs);
  cache_blocks_close(st->blocks);
  free(st);
  layer->state = NULL;
}

static int
cache_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct cache_conf *conf = layer->conf;
  const char *dir = getenv("TMPDIR");
  struct cache_state *st;
  struct stat sb;
  int fd;

  if (cache_check_conf(conf, layer, err, errlen) == -1)
    return -1;
  st = calloc(1, sizeof *st);
  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  layer->state = st;
  st->mode = (enum cache_mode)conf->mode;
  /* unsafe ignores flushes; writethrough keeps nothing dirty. */
  layer->keeps_writes = st->mode == CACHE_WRITEBACK;
  if (cache_parse_on_read(st, conf->on_read, err, errlen) == -1)
    goto fail;
  if ((fd = cache_open_file(dir && *dir ? dir : "/var/tmp", err,
                            errlen)) == -1)
    goto fail;
  /* As nbdkit: at least the block size of the cache file's filesystem,
   * so that punching a block's hole frees it. */
  st->bs = (uint32_t)conf->min_block;
  if (fstat(fd, &sb) == 0 && sb.st_blksize > 0 &&
      (uint64_t)sb.st_blksize <= CACHE_MAX_BLOCK &&
      (sb.st_blksize & (sb.st_blksize - 1)) == 0 &&
      (uint32_t)sb.st_blksize > st->bs)
    st->bs = (uint32_t)sb.st_blksize;
  while ((1u << st->bits) < st->bs)
    st->bits++;
  if ((st->blocks = cache_blocks_open(fd, st->bs, err, errlen)) == NULL)
    goto fail;
  st->pool = cache_blocks_pool(st->blocks);
  if (nbd_layer_param_set(layer, "cache-max-size") &&
      cache_blocks_limit(st->blocks, conf->max_size, conf->high, conf->low,
                         err, errlen) == -1)
    goto fail;
  return 0;

fail:
  cache_cleanup(layer);
  return -1;
}

/* ---- connections ------------------------------------------------------------- */

/* A cache block must not be smaller than the layer below's minimum
 * (blocks.c's requests below rely on it); the map follows the size of
 * the disk below (cache_blocks_attach). */
static int
cache_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct cache_state *st = self->layer->state;
  int64_t size = next_get_size(next);
  uint32_t minimum, preferred, maximum;
  int r;

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
  r = cache_blocks_attach(st->blocks, size, self->layer->export_name);
  if (r == 0)
    self->handle = st;
  return r;
}

static void
cache_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct cache_state *st = self->handle;

  if (st)
    cache_blocks_detach(st->blocks);
}

/* ---- reads ---------------------------------------------------------------------- */

static int
cache_on_read(const struct cache_state *st)
{
  if (st->on_read_path)
    return access(st->on_read_path, F_OK) == 0;
  return st->on_read;
}

/* Blocks b..e (owned, not cached) from below, whole; the part of the
 * request [offset, offset+count) they hold goes to buf, and they join the
 * cache as clean when keep says so. */
static int
cache_read_below(struct cache_state *st, struct nbd_ctx *next, char *buf,
                 uint32_t count, uint64_t offset, uint64_t b, uint64_t e,
                 int keep)
{
  uint64_t start = b << st->bits, end = cache_blocks_end(st->blocks, e);
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
      return cache_blocks_below_pread(next, p, hi - lo, lo);
  }
  if (lo != start || hi != end) {
    if ((bounce = nbd_bufpool_get(st->pool, end - start)) == NULL)
      return -ENOMEM;
    p = bounce;
  }
  r = cache_blocks_below_pread(next, p, end - start, start);
  if (r == 0 && bounce)
    memcpy(buf + (lo - offset), bounce + (lo - start), hi - lo);
  /* Not keeping them (cache file full) costs speed, not data. */
  if (r == 0 && keep &&
      cache_blocks_pwrite(st->blocks, p, end - start, start) == 0)
    cache_blocks_mark(st->blocks, b, e, CACHE_CLEAN);
  nbd_bufpool_put(st->pool, bounce, end - start);
  return r;
}

static int
cache_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
            uint32_t count, uint64_t offset, uint32_t flags)
{
  struct cache_state *st = self->layer->state;
  struct cache_blocks *bl = st->blocks;
  uint64_t first, last, b, e, lo, hi;
  int keep = cache_on_read(st), cached, r = 0;

  if (count == 0)
    return 0;
  first = offset >> st->bits;
  last = (offset + count - 1) >> st->bits;
  cache_blocks_acquire(bl, first, last);
  for (b = first; r == 0 && b <= last; b = e + 1) {
    e = cache_blocks_run(bl, b, last, &cached);
    if (!cached) {
      r = cache_read_below(st, next, buf, count, offset, b, e, keep);
      continue;
    }
    lo = offset > b << st->bits ? offset : b << st->bits;
    hi = offset + count < cache_blocks_end(bl, e) ? offset + count
                                                  : cache_blocks_end(bl, e);
    r = cache_blocks_pread(bl, (char *)buf + (lo - offset), hi - lo, lo);
  }
  cache_blocks_release(bl, first, last);
  if (keep)
    cache_blocks_reclaim(bl, next);
  return r;
}

/* NBD_CMD_CACHE: read the blocks in, a run at a time, reclaiming as it
 * goes (prefetching more than cache-max-size keeps the last part). */
static int
cache_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags)
{
  struct cache_state *st = self->layer->state;
  struct cache_blocks *bl = st->blocks;
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
    cache_blocks_acquire(bl, c, cl);
    for (b = c; r == 0 && b <= cl; b = e + 1) {
      e = cache_blocks_run(bl, b, cl, &cached);
      if (cached)
        continue;
      start = b << st->bits;
      if ((r = cache_blocks_below_pread(next, buf,
                                        cache_blocks_end(bl, e) - start,
                                        start)) == 0 &&
          (r = cache_blocks_pwrite(bl, buf, cache_blocks_end(bl, e) - start,
                                   start)) == 0)
        cache_blocks_mark(bl, b, e, CACHE_CLEAN);
    }
    cache_blocks_release(bl, c, cl);
    cache_blocks_reclaim(bl, next);
  }
  free(buf);
  return r;
}

/* ---- writes --------------------------------------------------------------------- */

/* Whether block b (taken by the caller) is in the cache file. */
static int
cache_block_cached(struct cache_state *st, uint64_t b)
{
  int cached;

  cache_blocks_run(st->blocks, b, b, &cached);
  return cached;
}

/* Block b (owned) into dst: from the cache, or whole from below. */
static int
cache_fill_block(struct cache_state *st, struct nbd_ctx *next, char *dst,
                 uint64_t b)
{
  uint64_t start = b << st->bits;
  uint64_t len = cache_blocks_end(st->blocks, b) - start;

  if (cache_block_cached(st, b))
    return cache_blocks_pread(st->blocks, dst, len, start);
  return cache_blocks_below_pread(next, dst, len, start);
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
  struct cache_blocks *bl = st->blocks;
  uint64_t first, last, start, end;
  int through = st->mode == CACHE_WRITETHROUGH ||
    (st->mode == CACHE_WRITEBACK && (flags & NBD_CMD_FLAG_FUA));
  const char *data = buf;
  char *bounce = NULL;
  int r = 0;

  if (count == 0)
    return 0;
  first = offset >> st->bits;
  last = (offset + count - 1) >> st->bits;
  start = first << st->bits;
  end = cache_blocks_end(bl, last);
  cache_blocks_acquire(bl, first, last);
  /* Into blocks already cached, a write that leaves them dirty needs
   * only its own bytes: the rest of each block is in the cache file.
   * (A 4K write into a cached 64K block was a 64K read and a 64K write;
   * writethrough keeps whole blocks, which a dirty block needs below.) */
  if (!through && (offset == start || cache_block_cached(st, first)) &&
      (offset + count == end || cache_block_cached(st, last))) {
    r = cache_blocks_pwrite(bl, buf, count, offset);
    if (r == 0)
      cache_blocks_release_as(bl, first, last, CACHE_DIRTY);
    else
      cache_blocks_release_failed(bl, first, last);
    if (r == 0)
      cache_blocks_reclaim(bl, next);
    return r;
  }
  if (offset != start || offset + count != end) {
    if ((bounce = nbd_bufpool_get(st->pool, end - start)) == NULL)
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
    r = cache_blocks_pwrite(bl, data, end - start, start);
  if (r == 0 && through)
    r = cache_blocks_below_pwrite(next, data, end - start, start,
                                  flags & NBD_CMD_FLAG_FUA);
  if (r == 0)
    cache_blocks_release_as(bl, first, last,
                            through ? CACHE_CLEAN : CACHE_DIRTY);
  else
    cache_blocks_release_failed(bl, first, last);
  nbd_bufpool_put(st->pool, bounce, end - start);
  if (r == 0)
    cache_blocks_reclaim(bl, next);
  return r;
}

/* A large write on a plain connection (the engine offers no others when
 * the backend's pull_splice says so).  In writeback and unsafe modes,
 * without FUA, each whole block whose bytes have all arrived is spliced
 * from the socket into the cache file while the request holds that block
 * alone (one copy instead of two), so a client that stalls in the middle
 * of a payload holds no block; other pieces are read into a buffer first
 * and written as cache_pwrite does.  Anything else is read whole first. */
static int
cache_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                  struct nbd_source *src, uint32_t count, uint64_t offset,
                  uint32_t flags)
{
  struct cache_state *st = self->layer->state;
  struct cache_blocks *bl = st->blocks;
  uint64_t b, end;
  uint32_t n;
  char *buf;
  int r = 0;

  if (st->mode == CACHE_WRITETHROUGH ||
      (st->mode == CACHE_WRITEBACK && (flags & NBD_CMD_FLAG_FUA)) ||
      src->splice == NULL || !cache_blocks_can_splice(bl))
    return nbd_pwrite_buffered(self, src, count, offset, flags);
  while (count > 0 && r == 0) {
    b = offset >> st->bits;
    end = cache_blocks_end(bl, b);
    n = end - offset < count ? (uint32_t)(end - offset) : count;
    if (offset == b << st->bits && offset + n == end &&
        nbd_source_ready(src) >= n) {
      cache_blocks_acquire(bl, b, b);
      r = cache_blocks_pwrite_from(bl, src, n, offset);
      if (r == 0)
        cache_blocks_release_as(bl, b, b, CACHE_DIRTY);
      else
        cache_blocks_release_failed(bl, b, b);
    } else if ((buf = nbd_bufpool_get(st->pool, st->bs)) == NULL)
      r = -ENOMEM;
    else {
      r = nbd_source_read(src, buf, n);
      if (r == 0)
        r = cache_pwrite(self, next, buf, n, offset, flags);
      nbd_bufpool_put(st->pool, buf, st->bs);
    }
    offset += n;
    count -= n;
  }
  if (r == 0)
    cache_blocks_reclaim(bl, next);
  return r;
}

static int
cache_zero_or_trim(struct nbd_ctx *self, struct nbd_ctx *next,
                   uint64_t count, uint64_t offset, uint32_t flags, int trim)
{
  struct cache_state *st = self->layer->state;
  uint64_t first, last;
  int r;

  if (count == 0)
    return 0;
  first = offset >> st->bits;
  last = (offset + count - 1) >> st->bits;
  cache_blocks_acquire(st->blocks, first, last);
  r = trim ? next_trim(next, count, offset, flags)
           : next_zero(next, count, offset, flags);
  if (r == 0)
    r = cache_blocks_discard(st->blocks, count, offset, first, last, trim);
  /* A declined fast zero changed nothing. */
  if (r < 0 && r != -ENOTSUP)
    cache_blocks_release_failed(st->blocks, first, last);
  else
    cache_blocks_release(st->blocks, first, last);
  return r;
}

static int
cache_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  return cache_zero_or_trim(self, next, count, offset, flags, 0);
}

static int
cache_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
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
  r = next_can_write(next) ? cache_blocks_write_back_all(st->blocks, next)
                           : 0;
  if (next_can_flush(next) && (r2 = next_flush(next, 0)) < 0 && r == 0)
    r = r2;
  return r;
}

/* ---- extents -------------------------------------------------------------------- */

#define CACHE_MAP_TRIES 3

/* The map of below's method m (extents or depth) with dirty blocks as
 * dirty_type.  Below's map is only right for the blocks still dirty when
 * this layer looks at them afterwards if no dirty block went below in
 * between: a write-back (another connection's flush, a flush at close,
 * reclaim) running meanwhile turns blocks clean whose data below's map
 * did not show yet, and they would go out as holes: nbdcopy then skips
 * them and copies zeros.  So the map is asked again when that happened,
 * and after CACHE_MAP_TRIES the whole range is reported as dirty_type
 * (data: always true, only less sparse). */
static int
cache_map(struct nbd_ctx *self, struct nbd_ctx *next,
          int (*m)(struct nbd_ctx *, uint64_t, uint64_t, uint32_t,
                   struct nbd_extents *),
          uint64_t count, uint64_t offset, uint32_t flags,
          struct nbd_extents *extents, uint32_t dirty_type)
{
  struct cache_state *st = self->layer->state;
  struct nbd_extents *below;
  uint64_t cleaned;
  unsigned tries;
  int r;

  for (tries = 0; tries < CACHE_MAP_TRIES; tries++) {
    if (cache_blocks_ndirty(st->blocks, &cleaned) == 0)
      return m(next, count, offset, flags, extents);
    if ((below = nbd_extents_new(offset, offset + count)) == NULL)
      return -ENOMEM;
    r = m(next, count, offset, flags, below);
    if (r == 0)
      r = cache_blocks_extents(st->blocks, below, extents, dirty_type,
                               cleaned);
    nbd_extents_free(below);
    if (r <= 0)
      return r;
  }
  return nbd_extents_add(extents, offset, count, dirty_type);
}

/* The layer below's map, but a dirty block is data: below, it may still
 * be a hole or read as zeros, while the client reads what it wrote.
 * (nbdkit's cache filter passes the map through unchanged, so a client
 * that skips holes, such as qemu-img convert or nbdcopy, loses writes not
 * yet flushed.) */
static int
cache_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
              uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  return cache_map(self, next, next_extents, count, offset, flags, extents,
                   0);
}

/* The depth of the layer below, but a dirty block is at depth 1: this
 * layer alone holds its data until it is written back. */
static int
cache_depth(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  return cache_map(self, next, next_depth, count, offset, flags, extents,
                   1);
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

/* Flush writes our dirty blocks back: only a stack that can be written
 * has any.  Over a read-only one, what below says (nbdkit's cache filter
 * passes it through: pattern over it has no flush). */
static int
cache_can_flush(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)self;
  return next_can_write(next) ? 1 : next_can_flush(next);
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

PASSTHROUGH(cache, reopen)
PASSTHROUGH(cache, get_size)
PASSTHROUGH(cache, can_write)
PASSTHROUGH(cache, can_trim)
PASSTHROUGH(cache, can_fast_zero)
PASSTHROUGH(cache, can_extents)
PASSTHROUGH(cache, is_rotational)
PASSTHROUGH(cache, list_exports)
PASSTHROUGH(cache, preconnect)

NBD_REGISTER_FILTER(cache, NBD_PARALLEL, NBD_RARELY_BLOCKS,
  .description = "cache blocks of the layer below in a temporary file",
  .params = cache_params,
  .conf_size = sizeof(struct cache_conf),
  .setup = cache_setup,
  .cleanup = cache_cleanup,
  .prepare = cache_prepare,
  .close = cache_close,
  .pwrite_from = cache_pwrite_from,
);
