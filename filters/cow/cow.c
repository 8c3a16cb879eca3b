/* nbdstack filter cow: a copy-on-write overlay over the layer below
 * (nbdkit's cow filter, same keys, plus overlay=PATH to keep it).
 *
 * Nothing is ever written below: writes, trims and zeros go to an overlay
 * of cow-block-size blocks (overlay.c) shared by every connection of the
 * export, so the export is writable over a read-only layer.  A block is
 * below (read from the layer below), allocated (read from the overlay) or
 * zero (trimmed or zeroed: reads zeros, a hole in extents).  A request
 * that covers part of a block that is not allocated yet reads the whole
 * block first (from below, or zeros), patches it and writes it to the
 * overlay whole.  Reads are served run by run from where each block
 * lives; extents of blocks still below come from the layer below.
 *
 * Locking: every change to a block (and the copy of cow-on-read and
 * cow-on-cache) holds the block's stripe lock (COW_STRIPES of them), so
 * two read-modify-writes of one block never interleave and a block is
 * copied from below once; reading the layer below for a read that copies
 * nothing holds no lock.  The map has its own lock, held only to look up
 * or change states.
 *
 * FUA is left to the engine (a flush after the write): with a temporary
 * overlay flush has nothing to do, with overlay=PATH it makes the data
 * and then the map durable (overlay.c).  It does not pass writes, flushes
 * or trims below, resize with the layer below, or reclaim overlay space.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "overlay.h"

#define COW_STRIPES      64

struct cow_conf {
  uint64_t block_size;
  int on_cache;
  int on_read;
  char *overlay;
};

static const struct nbd_param cow_params[] = {
  { "cow-block-size", NBD_PARAM_SIZE, offsetof(struct cow_conf, block_size),
    "64K", "overlay block size: a power of two from 4K to 32M", NULL, 0 },
  { "cow-on-cache", NBD_PARAM_BOOL, offsetof(struct cow_conf, on_cache),
    "false", "a cache request copies the blocks into the overlay", NULL, 0 },
  { "cow-on-read", NBD_PARAM_BOOL, offsetof(struct cow_conf, on_read),
    "false", "reads copy the blocks into the overlay", NULL, 0 },
  { "overlay", NBD_PARAM_PATH, offsetof(struct cow_conf, overlay), NULL,
    "keep the overlay in this file across restarts (default: a temporary "
    "file in $TMPDIR)", NULL, 0 },
  NBD_PARAM_END
};

/* Shared by every connection of the export (layer->state). */
struct cow_state {
  struct cow_overlay *ov;
  uint32_t bs;
  unsigned shift;
  int on_cache, on_read;
  unsigned char *zeros;         /* bs bytes of zeros */
  struct nbd_bufpool pool;      /* block-sized read-modify-write buffers */
  pthread_mutex_t stripe[COW_STRIPES];
};

static struct cow_state *
cow_st(const struct nbd_ctx *self)
{
  return self->layer->state;
}

/* ---- startup ------------------------------------------------------------ */

static void
cow_cleanup(struct nbd_layer *layer)
{
  struct cow_state *st = layer->state;
  unsigned i;

  if (st == NULL)
    return;
  cow_overlay_close(st->ov);
  for (i = 0; i < COW_STRIPES; i++)
    pthread_mutex_destroy(&st->stripe[i]);
  free(st->zeros);
  if (st->pool.size)
    nbd_bufpool_destroy(&st->pool);
  free(st);
  layer->state = NULL;
}

static int
cow_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct cow_conf *conf = layer->conf;
  const char *tmpdir = getenv("TMPDIR");
  struct cow_state *st;
  uint64_t bs = conf->block_size;
  unsigned i;

  if (bs < COW_MIN_BLOCK_SIZE || bs > COW_MAX_BLOCK_SIZE || (bs & (bs - 1))) {
    snprintf(err, errlen, "cow-block-size=%" PRIu64 " must be a power of "
             "two from 4K to 32M", bs);
    return -1;
  }
  if (tmpdir == NULL || *tmpdir == '\0')
    tmpdir = "/var/tmp";        /* as nbdkit: /tmp may be a small tmpfs */
  st = calloc(1, sizeof *st);
  if (st == NULL || (st->zeros = calloc(1, (size_t)bs)) == NULL) {
    free(st);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  st->bs = (uint32_t)bs;
  nbd_bufpool_init(&st->pool, st->bs);
  while ((1u << st->shift) < st->bs)
    st->shift++;
  st->on_cache = conf->on_cache;
  st->on_read = conf->on_read;
  for (i = 0; i < COW_STRIPES; i++)
    pthread_mutex_init(&st->stripe[i], NULL);
  layer->state = st;
  st->ov = cow_overlay_open(conf->overlay, tmpdir, st->bs, err, errlen);
  if (st->ov == NULL) {
    cow_cleanup(layer);
    return -1;
  }
  return 0;
}

/* The disk size is known only now: the first connection fixes it (and
 * writes the header of a new persistent overlay); the others, and an
 * overlay kept from an earlier run, must agree. */
static int
cow_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  int64_t size = next_get_size(next);
  char err[256];

  if (size < 0)
    return (int)size;
  if (cow_overlay_set_size(cow_st(self)->ov, (uint64_t)size, err,
                           sizeof err) == -1) {
    nbd_error("export '%s': filter cow: %s", self->layer->export_name, err);
    return -EINVAL;
  }
  return 0;
}

/* ---- the layer below --------------------------------------------------------- */

/* Rounds [*start, *start + *len) out to the minimum block size below, and
 * clips it to the disk. */
static void
cow_round_below(struct nbd_ctx *next, uint64_t *start, uint64_t *len)
{
  uint32_t min, pref, max;
  uint64_t size = (uint64_t)next_get_size(next), end = *start + *len;

  next_block_size(next, &min, &pref, &max);
  if (min > 1) {
    *start -= *start % min;
    end += (min - end % min) % min;
  }
  if (end > size)
    end = size;
  *len = end - *start;
}

/* Reads from below, within its block-size constraints: aligned stretches
 * directly (cut to its maximum), unaligned edges through one minimum-sized
 * bounce read each.  (The engine would refuse anything else.) */
static int
cow_below_pread(struct nbd_ctx *next, void *buf, uint32_t count,
                uint64_t offset)
{
  uint64_t size = (uint64_t)next_get_size(next), start, len;
  uint32_t min, pref, max, unit, limit, skip, n;
  unsigned char *out = buf, *bounce = NULL;
  int r = 0;

  next_block_size(next, &min, &pref, &max);
  unit = min ? min : 1;
  limit = max ? max - max % unit : UINT32_MAX - UINT32_MAX % unit;
  while (count > 0 && r == 0) {
    skip = (uint32_t)(offset % unit);
    if (skip == 0 && count >= unit) {
      n = count - count % unit;
      if (n > limit)
        n = limit;
      r = next_pread(next, out, n, offset, 0);
    } else {
      if (bounce == NULL && (bounce = malloc(unit)) == NULL)
        return -ENOMEM;
      start = offset - skip;
      len = size - start < unit ? size - start : unit;
      n = (uint32_t)len - skip < count ? (uint32_t)len - skip : count;
      if ((r = next_pread(next, bounce, (uint32_t)len, start, 0)) == 0)
        memcpy(out, bounce + skip, n);
    }
    out += n;
    offset += n;
    count -= n;
  }
  free(bounce);
  return r;
}

/* ---- blocks ---------------------------------------------------------------- */

/* Bytes in block blk: the block size, or less for the last block. */
static uint32_t
cow_block_len(const struct cow_state *st, uint64_t blk)
{
  uint64_t left = cow_overlay_size(st->ov) - (blk << st->shift);

  return left < st->bs ? (uint32_t)left : st->bs;
}

static pthread_mutex_t *
cow_stripe(struct cow_state *st, uint64_t blk)
{
  return &st->stripe[blk % COW_STRIPES];
}

/* The current bytes of block blk in state into buf (its whole length). */
static int
cow_fill(struct cow_state *st, struct nbd_ctx *next, uint64_t blk, int state,
         unsigned char *buf, uint32_t len)
{
  switch (state) {
  case COW_BLOCK_ALLOCATED:
    return cow_overlay_pread(st->ov, buf, len, blk << st->shift);
  case COW_BLOCK_ZERO:
    memset(buf, 0, len);
    return 0;
  default:
    return cow_below_pread(next, buf, len, blk << st->shift);
  }
}

/* Writes n bytes of data (NULL: zeros) at byte o of block blk.  A whole
 * block of zeros becomes a zero block when may_hole.  Caller holds
 * nothing; this takes the block's stripe. */
static int
cow_write_block(struct cow_state *st, struct nbd_ctx *next, uint64_t blk,
                uint32_t o, uint32_t n, const void *data, int may_hole)
{
  uint32_t len = cow_block_len(st, blk);
  uint64_t pos = blk << st->shift, run;
  unsigned char *buf;
  int state, r = 0;

  pthread_mutex_lock(cow_stripe(st, blk));
  state = cow_overlay_state(st->ov, blk, 1, &run);
  if (data == NULL && state == COW_BLOCK_ZERO)
    ;                           /* already zeros */
  else if (n == len && data == NULL && may_hole)
    cow_overlay_set_state(st->ov, blk, COW_BLOCK_ZERO);
  else if (n == len || state == COW_BLOCK_ALLOCATED) {
    r = cow_overlay_pwrite(st->ov, data ? data : st->zeros, n, pos + o);
    if (r == 0)
      cow_overlay_set_state(st->ov, blk, COW_BLOCK_ALLOCATED);
  } else if ((buf = nbd_bufpool_get(&st->pool, len)) == NULL)
    r = -ENOMEM;
  else {
    /* Read-modify-write of a block not in the overlay yet. */
    if ((r = cow_fill(st, next, blk, state, buf, len)) == 0) {
      if (data)
        memcpy(buf + o, data, n);
      else
        memset(buf + o, 0, n);
      r = cow_overlay_pwrite(st->ov, buf, len, pos);
    }
    if (r == 0)
      cow_overlay_set_state(st->ov, blk, COW_BLOCK_ALLOCATED);
    nbd_bufpool_put(&st->pool, buf, len);
  }
  pthread_mutex_unlock(cow_stripe(st, blk));
  return r;
}

/* Copies block blk from below into the overlay unless it is there already
 * (cow-on-read, cow-on-cache), and n bytes of it from byte o into out
 * (NULL: none). */
static int
cow_copy_block(struct cow_state *st, struct nbd_ctx *next, uint64_t blk,
               unsigned char *out, uint32_t o, uint32_t n)
{
  uint32_t len = cow_block_len(st, blk);
  unsigned char *buf;
  uint64_t run;
  int state, r = 0;

  pthread_mutex_lock(cow_stripe(st, blk));
  state = cow_overlay_state(st->ov, blk, 1, &run);
  if (state == COW_BLOCK_BELOW || out) {
    if ((buf = nbd_bufpool_get(&st->pool, len)) == NULL)
      r = -ENOMEM;
    else {
      r = cow_fill(st, next, blk, state, buf, len);
      if (r == 0 && state == COW_BLOCK_BELOW &&
          (r = cow_overlay_pwrite(st->ov, buf, len, blk << st->shift)) == 0)
        cow_overlay_set_state(st->ov, blk, COW_BLOCK_ALLOCATED);
      if (r == 0 && out)
        memcpy(out, buf + o, n);
      nbd_bufpool_put(&st->pool, buf, len);
    }
  }
  pthread_mutex_unlock(cow_stripe(st, blk));
  return r;
}

/* The run of blocks in one state that starts at offset, cut to the request
 * [offset, end): its state, *n its bytes. */
static int
cow_run(struct cow_state *st, uint64_t offset, uint64_t end, uint64_t *n)
{
  uint64_t blk = offset >> st->shift, last = (end - 1) >> st->shift, run;
  uint64_t run_end;
  int state;

  state = cow_overlay_state(st->ov, blk, last - blk + 1, &run);
  run_end = (blk + run) << st->shift;
  *n = (run_end < end ? run_end : end) - offset;
  return state;
}

/* ---- datapath -------------------------------------------------------------- */

/* A run of blocks still below, with cow-on-read: copied block by block. */
static int
cow_read_copy(struct cow_state *st, struct nbd_ctx *next, unsigned char *out,
              uint32_t count, uint64_t offset)
{
  uint32_t o, n;
  int r;

  while (count > 0) {
    o = (uint32_t)(offset & (st->bs - 1));
    n = st->bs - o < count ? st->bs - o : count;
    if ((r = cow_copy_block(st, next, offset >> st->shift, out, o, n)) < 0)
      return r;
    out += n;
    offset += n;
    count -= n;
  }
  return 0;
}

static int
cow_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
          uint32_t count, uint64_t offset, uint32_t flags)
{
  struct cow_state *st = cow_st(self);
  uint64_t end = offset + count, run;
  unsigned char *out = buf;
  uint32_t n;
  int r;

  while (offset < end) {
    int state = cow_run(st, offset, end, &run);

    n = (uint32_t)run;          /* at most count */
    switch (state) {
    case COW_BLOCK_ALLOCATED:
      r = cow_overlay_pread(st->ov, out, n, offset);
      break;
    case COW_BLOCK_ZERO:
      memset(out, 0, n);
      r = 0;
      break;
    default:
      r = st->on_read ? cow_read_copy(st, next, out, n, offset)
                      : cow_below_pread(next, out, n, offset);
    }
    if (r < 0)
      return r;
    out += n;
    offset += n;
  }
  return 0;
}

/* pwrite, zero and trim: data NULL writes zeros. */
static int
cow_write(struct nbd_ctx *self, struct nbd_ctx *next, const void *data,
          uint64_t count, uint64_t offset, int may_hole)
{
  struct cow_state *st = cow_st(self);
  const unsigned char *in = data;
  uint32_t o, n;
  int r;

  while (count > 0) {
    o = (uint32_t)(offset & (st->bs - 1));
    n = st->bs - o < count ? st->bs - o : (uint32_t)count;
    r = cow_write_block(st, next, offset >> st->shift, o, n, in, may_hole);
    if (r < 0)
      return r;
    if (in)
      in += n;
    offset += n;
    count -= n;
  }
  return 0;
}

static int
cow_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
           uint32_t count, uint64_t offset, uint32_t flags)
{
  return cow_write(self, next, buf, count, offset, 0);
}

/* A large write on a plain connection (the engine offers no others when
 * the backend's pull_splice says so): each whole block whose bytes have
 * all arrived is spliced from the socket into the overlay under its
 * stripe lock (one copy instead of two); any other piece is read into a
 * buffer first, with no lock held while the client may still be
 * sending, and written as cow_pwrite does. */
static int
cow_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                struct nbd_source *src, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  struct cow_state *st = cow_st(self);
  int splice = src->splice && cow_overlay_can_splice(st->ov);
  unsigned char *buf;
  uint64_t blk;
  uint32_t o, n;
  int r;

  while (count > 0) {
    o = (uint32_t)(offset & (st->bs - 1));
    n = st->bs - o < count ? st->bs - o : count;
    blk = offset >> st->shift;
    if (splice && n == cow_block_len(st, blk) &&
        nbd_source_ready(src) >= n) {
      pthread_mutex_lock(cow_stripe(st, blk));
      r = cow_overlay_pwrite_from(st->ov, src, n, blk << st->shift);
      if (r == 0)
        cow_overlay_set_state(st->ov, blk, COW_BLOCK_ALLOCATED);
      pthread_mutex_unlock(cow_stripe(st, blk));
    } else if ((buf = nbd_bufpool_get(&st->pool, st->bs)) == NULL)
      r = -ENOMEM;
    else {
      r = nbd_source_read(src, buf, n);
      if (r == 0)
        r = cow_write_block(st, next, blk, o, n, buf, 0);
      nbd_bufpool_put(&st->pool, buf, st->bs);
    }
    if (r < 0)
      return r;
    offset += n;
    count -= n;
  }
  return 0;
}

/* FAST_ZERO needs nothing: no zero here ever falls back to slow writes
 * of a whole range (only partial blocks are written, as for any zero). */
static int
cow_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
         uint64_t offset, uint32_t flags)
{
  return cow_write(self, next, NULL, count, offset,
                   !(flags & NBD_CMD_FLAG_NO_HOLE));
}

/* Trimmed data reads back as zeros, as in nbdkit. */
static int
cow_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
         uint64_t offset, uint32_t flags)
{
  return cow_write(self, next, NULL, count, offset, 1);
}

static int
cow_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  return cow_overlay_flush(cow_st(self)->ov);
}

/* Blocks still below: with cow-on-cache copied into the overlay, else the
 * cache request goes below (if it can cache). */
static int
cow_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
          uint64_t offset, uint32_t flags)
{
  struct cow_state *st = cow_st(self);
  uint64_t end = offset + count, start, len, blk, n;
  int r = 0;

  while (offset < end && r == 0) {
    if (cow_run(st, offset, end, &n) == COW_BLOCK_BELOW) {
      if (st->on_cache) {
        for (blk = offset >> st->shift;
             r == 0 && blk <= (offset + n - 1) >> st->shift; blk++)
          r = cow_copy_block(st, next, blk, NULL, 0, 0);
      } else if (next_can_cache(next) != NBD_CACHE_NONE) {
        start = offset;
        len = n;
        cow_round_below(next, &start, &len);
        r = next_cache(next, len, start, flags);
      }
    }
    offset += n;
  }
  return r;
}

/* The map of [offset, offset + n), all below, from the layer below's
 * method m (extents, or depth with deeper set: each depth one more, as
 * this overlay sits on top, 0 staying 0), added to extents; *covered gets
 * how much of it they cover. */
static int
cow_below_map(int (*m)(struct nbd_ctx *, uint64_t, uint64_t, uint32_t,
                       struct nbd_extents *),
              int deeper, struct nbd_ctx *next, uint64_t offset, uint64_t n,
              uint32_t flags, struct nbd_extents *extents, uint64_t *covered)
{
  uint64_t start = offset, len = n, end = offset + n, a, b;
  struct nbd_extents *e;
  size_t i;
  int r;

  *covered = 0;
  cow_round_below(next, &start, &len);
  if ((e = nbd_extents_new(start, start + len)) == NULL)
    return -ENOMEM;
  r = m(next, len, start, flags, e);
  for (i = 0; r == 0 && i < e->n; i++) {
    uint32_t type = e->v[i].type;
    a = e->v[i].offset < offset ? offset : e->v[i].offset;
    b = e->v[i].offset + e->v[i].length;
    if (b > end)
      b = end;
    if (b <= a)
      continue;
    if (deeper && type)
      type++;
    r = nbd_extents_add(extents, a, b - a, type);
    *covered = b - offset;
  }
  nbd_extents_free(e);
  return r;
}

/* Allocated blocks are data, zero blocks holes that read as zeros, and the
 * rest is what the layer below says.  A reply may stop early (when below
 * does, or after one run with REQ_ONE): the client asks again. */
static int
cow_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  struct cow_state *st = cow_st(self);
  uint64_t end = offset + count, covered, n;
  int r;

  while (offset < end) {
    switch (cow_run(st, offset, end, &n)) {
    case COW_BLOCK_ALLOCATED:
      r = nbd_extents_add(extents, offset, n, 0);
      break;
    case COW_BLOCK_ZERO:
      r = nbd_extents_add(extents, offset, n,
                          NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
      break;
    default:
      r = cow_below_map(next_extents, 0, next, offset, n, flags, extents,
                        &covered);
      if (r == 0 && covered < n)
        return 0;
    }
    if (r < 0)
      return r;
    if (flags & NBD_CMD_FLAG_REQ_ONE)
      return 0;
    offset += n;
  }
  return 0;
}

/* qemu:allocation-depth: 1 for blocks in the overlay (written, zeroed or
 * trimmed: the overlay answers for them), 1 + the depth below for the
 * rest, as qemu-nbd says of a qcow2 overlay over its backing file. */
static int
cow_depth(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
          uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  struct cow_state *st = cow_st(self);
  uint64_t end = offset + count, covered, n;
  int r;

  while (offset < end) {
    if (cow_run(st, offset, end, &n) != COW_BLOCK_BELOW)
      r = nbd_extents_add(extents, offset, n, 1);
    else {
      r = cow_below_map(next_depth, 1, next, offset, n, flags, extents,
                        &covered);
      if (r == 0 && covered < n)
        return 0;
    }
    if (r < 0)
      return r;
    if (flags & NBD_CMD_FLAG_REQ_ONE)
      return 0;
    offset += n;
  }
  return 0;
}

/* ---- capabilities ---------------------------------------------------------- */

PASSTHROUGH(cow, reopen)
static int64_t
cow_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return (int64_t)cow_overlay_size(cow_st(self)->ov);
}

/* Any alignment works (partial blocks are read-modify-written); whole
 * blocks avoid the read. */
static int
cow_block_size(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t *minimum,
               uint32_t *preferred, uint32_t *maximum)
{
  *minimum = 1;
  *preferred = cow_st(self)->bs;
  *maximum = 0xffffffff;
  return 0;
}

/* Writable whatever below says (the engine still makes a read-only
 * export refuse writes); one overlay for every connection. */
static int cow_can_write(struct nbd_ctx *s, struct nbd_ctx *n) { return 1; }
static int cow_can_flush(struct nbd_ctx *s, struct nbd_ctx *n) { return 1; }
static int cow_can_trim(struct nbd_ctx *s, struct nbd_ctx *n) { return 1; }
static int cow_can_extents(struct nbd_ctx *s, struct nbd_ctx *n) { return 1; }
static int cow_can_multi_conn(struct nbd_ctx *s, struct nbd_ctx *n) { return 1; }
static int cow_can_fast_zero(struct nbd_ctx *s, struct nbd_ctx *n) { return 1; }

static int
cow_can_zero(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_ZERO_NATIVE;
}

/* A flush after the write: nothing with a temporary overlay, the durable
 * sequence with overlay=PATH. */
static int
cow_can_fua(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_FUA_EMULATE;
}

static int
cow_can_cache(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_CACHE_NATIVE;
}

PASSTHROUGH(cow, is_rotational)
PASSTHROUGH(cow, list_exports)
PASSTHROUGH(cow, preconnect)

NBD_REGISTER_FILTER(cow, NBD_PARALLEL, NBD_RARELY_BLOCKS,
  .description = "copy-on-write overlay: writes never reach the layer below",
  .params = cow_params,
  .conf_size = sizeof(struct cow_conf),
  .setup = cow_setup,
  .cleanup = cow_cleanup,
  .prepare = cow_prepare,
  .pwrite_from = cow_pwrite_from,
);
