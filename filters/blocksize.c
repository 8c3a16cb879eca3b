/* nbdstack filter blocksize: accept requests of any size and alignment
 * and hand the layer below only what it can take (nbdkit's blocksize
 * filter, same keys and defaults).
 *
 * Reads and writes larger than maxdata, and trims, zeroes and caches
 * larger than maxlen, go down in pieces.  A head or tail not aligned to
 * minblock is read whole (reads), read-modify-written (writes, zeroes),
 * rounded out (cache, extents) or left alone (trims, as nbdkit does).  The
 * read-modify-writes of one block are serialised by a striped lock shared
 * by every connection of the export, so two writers of different bytes of
 * one block never lose each other's bytes.  A FUA goes on every piece: a
 * FUA on the last piece alone would not make the earlier ones durable.
 *
 * The filter advertises minimum 1 (it takes anything) and does not change
 * what extents mean; it truncates the size to a multiple of minblock, as
 * nbdkit does, since it cannot reach the unaligned tail safely.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"

#define BLOCKSIZE_MAX_MIN   65536u              /* largest minblock */
#define BLOCKSIZE_MAXDATA   (64u << 20)         /* nbdkit's default */
#define BLOCKSIZE_U32       0xffffffffu
/* Locks stripe by 64 KiB region, whatever minblock is: one block of any
 * allowed minblock lies in one region, so it always has one lock. */
#define BLOCKSIZE_STRIPES   64
#define BLOCKSIZE_STRIPE_SHIFT 16

struct blocksize_conf {
  uint64_t minblock, maxdata, maxlen;
};

static const struct nbd_param blocksize_params[] = {
  { "minblock", NBD_PARAM_SIZE, offsetof(struct blocksize_conf, minblock),
    NULL, "minimum block size and alignment below, power of 2 <= 64k "
    "(default: the minimum below, or 1)", NULL, 0 },
  { "maxdata", NBD_PARAM_SIZE, offsetof(struct blocksize_conf, maxdata),
    NULL, "maximum size of one read or write below, a multiple of minblock "
    "(default: 64M, or the maximum below if smaller)", NULL, 0 },
  { "maxlen", NBD_PARAM_SIZE, offsetof(struct blocksize_conf, maxlen),
    NULL, "maximum size of one trim, zero, cache or extents below, a "
    "multiple of minblock (default: 4G-1 rounded down to minblock)",
    NULL, 0 },
  NBD_PARAM_END
};

/* Shared by every connection of one instance. */
struct blocksize_state {
  pthread_mutex_t lock[BLOCKSIZE_STRIPES];
  struct nbd_bufpool pool;    /* bounce blocks, BLOCKSIZE_MAX_MIN bytes */
};

/* The limits of one connection: they depend on the layer below's. */
struct blocksize_h {
  uint32_t minb, maxdata, maxlen;
};

static int
blocksize_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct blocksize_conf *c = layer->conf;
  struct blocksize_state *st;
  uint64_t m = nbd_layer_param_set(layer, "minblock") ? c->minblock : 1;
  int i;

  if (nbd_layer_param_set(layer, "minblock") &&
      (m == 0 || m > BLOCKSIZE_MAX_MIN || (m & (m - 1)) != 0)) {
    snprintf(err, errlen, "minblock=%" PRIu64 " must be a power of 2 "
             "from 1 to 65536", c->minblock);
    return -1;
  }
  if (nbd_layer_param_set(layer, "maxdata") &&
      (c->maxdata < m || c->maxdata > BLOCKSIZE_U32 || c->maxdata % m)) {
    snprintf(err, errlen, "maxdata=%" PRIu64 " must be a multiple of "
             "minblock (%" PRIu64 ") from %" PRIu64 " to 4294967295",
             c->maxdata, m, m);
    return -1;
  }
  if (nbd_layer_param_set(layer, "maxlen") &&
      (c->maxlen < m || c->maxlen > BLOCKSIZE_U32 || c->maxlen % m)) {
    snprintf(err, errlen, "maxlen=%" PRIu64 " must be a multiple of "
             "minblock (%" PRIu64 ") from %" PRIu64 " to 4294967295",
             c->maxlen, m, m);
    return -1;
  }
  st = calloc(1, sizeof *st);
  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  for (i = 0; i < BLOCKSIZE_STRIPES; i++)
    pthread_mutex_init(&st->lock[i], NULL);
  nbd_bufpool_init(&st->pool, BLOCKSIZE_MAX_MIN);
  layer->state = st;
  return 0;
}

static void
blocksize_cleanup(struct nbd_layer *layer)
{
  struct blocksize_state *st = layer->state;
  int i;

  if (st == NULL)
    return;
  for (i = 0; i < BLOCKSIZE_STRIPES; i++)
    pthread_mutex_destroy(&st->lock[i]);
  nbd_bufpool_destroy(&st->pool);
  free(st);
  layer->state = NULL;
}

static int
blocksize_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  self->handle = calloc(1, sizeof(struct blocksize_h));
  return self->handle ? 0 : -ENOMEM;
}

static void
blocksize_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  free(self->handle);
}

/* The limits against the layer below's: minblock never below its minimum
 * (a smaller one could only fail there), maxdata never above its
 * maximum. */
static int
blocksize_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  const struct blocksize_conf *c = self->layer->conf;
  const struct nbd_layer *l = self->layer;
  struct blocksize_h *h = self->handle;
  uint32_t bmin, bpref, bmax;
  uint64_t maxdata, maxlen;
  int r;

  if ((r = next_block_size(next, &bmin, &bpref, &bmax)) < 0)
    return r;
  h->minb = nbd_layer_param_set(l, "minblock") ? (uint32_t)c->minblock : 1;
  if (bmin > h->minb) {
    if (nbd_layer_param_set(l, "minblock"))
      nbd_debug("export '%s': filter blocksize: minblock=%" PRIu32 " raised "
                "to the minimum block size below, %" PRIu32,
                l->export_name, h->minb, bmin);
    h->minb = bmin;
  }
  maxdata = nbd_layer_param_set(l, "maxdata") ? c->maxdata : BLOCKSIZE_MAXDATA;
  if (bmax && bmax < maxdata)
    maxdata = bmax;
  maxdata -= maxdata % h->minb;
  if (maxdata == 0) {
    nbd_error("export '%s': filter blocksize: the maximum block size below "
              "(%" PRIu32 ") is smaller than minblock (%" PRIu32 ")",
              l->export_name, bmax, h->minb);
    return -EINVAL;
  }
  maxlen = nbd_layer_param_set(l, "maxlen") ? c->maxlen : BLOCKSIZE_U32;
  maxlen -= maxlen % h->minb;
  if (maxdata % h->minb || maxlen == 0) {
    nbd_error("export '%s': filter blocksize: maxdata and maxlen must be "
              "multiples of the minimum block size below (%" PRIu32 ")",
              l->export_name, h->minb);
    return -EINVAL;
  }
  h->maxdata = (uint32_t)maxdata;
  h->maxlen = (uint32_t)maxlen;
  return 0;
}

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define blocksize_reopen nbd_reopen_close_open

static int64_t
blocksize_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct blocksize_h *h = self->handle;
  int64_t size = next_get_size(next);

  if (size < 0)
    return size;
  return size - size % h->minb;
}

/* Anything goes from above; the preferred size is at least minblock, as
 * nbdkit advertises (4096 or minblock). */
static int
blocksize_block_size(struct nbd_ctx *self, struct nbd_ctx *next,
                     uint32_t *minimum, uint32_t *preferred,
                     uint32_t *maximum)
{
  const struct blocksize_h *h = self->handle;
  uint32_t bmin, bpref, bmax;
  int r;

  if ((r = next_block_size(next, &bmin, &bpref, &bmax)) < 0)
    return r;
  *minimum = 1;
  *preferred = h->minb > 4096 ? h->minb : 4096;
  if (bpref > *preferred)
    *preferred = bpref;
  *maximum = BLOCKSIZE_U32;
  return 0;
}

/* ---- read-modify-write of one block -------------------------------------- */

static pthread_mutex_t *
blocksize_lock(struct nbd_ctx *self, uint64_t blk)
{
  struct blocksize_state *st = self->layer->state;

  return &st->lock[(blk >> BLOCKSIZE_STRIPE_SHIFT) % BLOCKSIZE_STRIPES];
}

/* Reads the block at blk into a bounce buffer, lays len bytes of data (or
 * zeros when data is NULL) at off within it, writes it back. */
static int
blocksize_rmw(struct nbd_ctx *self, struct nbd_ctx *next, const void *data,
              uint32_t len, uint64_t blk, uint32_t off, uint32_t flags)
{
  const struct blocksize_h *h = self->handle;
  struct blocksize_state *st = self->layer->state;
  pthread_mutex_t *lock = blocksize_lock(self, blk);
  unsigned char *b = nbd_bufpool_get(&st->pool, h->minb);
  int r;

  if (b == NULL)
    return -ENOMEM;
  pthread_mutex_lock(lock);
  r = next_pread(next, b, h->minb, blk, 0);
  if (r == 0) {
    if (data)
      memcpy(b + off, data, len);
    else
      memset(b + off, 0, len);
    r = next_pwrite(next, b, h->minb, blk, flags & NBD_CMD_FLAG_FUA);
  }
  pthread_mutex_unlock(lock);
  nbd_bufpool_put(&st->pool, b, h->minb);
  return r;
}

/* The part of [offset, offset+count) in the block that holds offset: its
 * length (never 0 when count > 0). */
static uint32_t
blocksize_head(const struct blocksize_h *h, uint64_t count, uint64_t offset)
{
  uint32_t n = h->minb - (uint32_t)(offset % h->minb);

  return n < count ? n : (uint32_t)count;
}

/* ---- datapath ------------------------------------------------------------ */

static int
blocksize_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
                uint32_t count, uint64_t offset, uint32_t flags)
{
  const struct blocksize_h *h = self->handle;
  struct blocksize_state *st = self->layer->state;
  unsigned char *p = buf, *b;
  uint32_t n;
  int r = 0;

  while (count > 0 && r == 0) {
    if (offset % h->minb == 0 && count >= h->minb) {
      n = count - count % h->minb;
      if (n > h->maxdata)
        n = h->maxdata;
      r = next_pread(next, p, n, offset, flags);
    }
    else {                      /* unaligned head, or a short tail */
      uint64_t blk = offset - offset % h->minb;
      n = blocksize_head(h, count, offset);
      if ((b = nbd_bufpool_get(&st->pool, h->minb)) == NULL)
        return -ENOMEM;
      r = next_pread(next, b, h->minb, blk, flags);
      if (r == 0)
        memcpy(p, b + (offset - blk), n);
      nbd_bufpool_put(&st->pool, b, h->minb);
    }
    p += n;
    offset += n;
    count -= n;
  }
  return r;
}

static int
blocksize_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags)
{
  const struct blocksize_h *h = self->handle;
  const unsigned char *p = buf;
  uint32_t n;
  int r = 0;

  while (count > 0 && r == 0) {
    if (offset % h->minb == 0 && count >= h->minb) {
      n = count - count % h->minb;
      if (n > h->maxdata)
        n = h->maxdata;
      r = next_pwrite(next, p, n, offset, flags);
    }
    else {
      uint64_t blk = offset - offset % h->minb;
      n = blocksize_head(h, count, offset);
      r = blocksize_rmw(self, next, p, n, blk, (uint32_t)(offset - blk),
                        flags);
    }
    p += n;
    offset += n;
    count -= n;
  }
  return r;
}

/* A request that needs no splitting keeps the fast path of the layer
 * below; any other is read into a buffer and split as a pwrite. */
static int
blocksize_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                      struct nbd_source *src, uint32_t count, uint64_t offset,
                      uint32_t flags)
{
  const struct blocksize_h *h = self->handle;

  if ((offset | count) % h->minb == 0 && count <= h->maxdata)
    return next_pwrite_from(next, src, count, offset, flags);
  return nbd_pwrite_buffered(self, src, count, offset, flags);
}

PASSTHROUGH(blocksize, flush)

/* nbdkit's rule: the unaligned head and tail of a trim are left alone
 * (a trim may always do less). */
static int
blocksize_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
               uint64_t offset, uint32_t flags)
{
  const struct blocksize_h *h = self->handle;
  uint64_t end = offset + count;
  uint32_t n;
  int r = 0;

  offset += (h->minb - offset % h->minb) % h->minb;
  end -= end % h->minb;
  while (offset < end && r == 0) {
    n = end - offset < h->maxlen ? (uint32_t)(end - offset) : h->maxlen;
    r = next_trim(next, n, offset, flags);
    offset += n;
  }
  return r;
}

/* An unaligned head or tail is written as zeros by read-modify-write,
 * which is not fast: a FAST_ZERO request that needs one fails with
 * ENOTSUP before anything is written. */
static int
blocksize_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
               uint64_t offset, uint32_t flags)
{
  const struct blocksize_h *h = self->handle;
  uint32_t n;
  int r = 0;

  /* A fast zero is one request below or none: one that needs a
   * read-modify-write cannot be fast, and one split in pieces could fail
   * with ENOTSUP after earlier pieces were zeroed (as nbdkit). */
  if ((flags & NBD_CMD_FLAG_FAST_ZERO) &&
      ((offset | count) % h->minb || count > h->maxlen))
    return -ENOTSUP;
  while (count > 0 && r == 0) {
    if (offset % h->minb == 0 && count >= h->minb) {
      uint64_t aligned = count - count % h->minb;
      n = aligned > h->maxlen ? h->maxlen : (uint32_t)aligned;
      r = next_zero(next, n, offset, flags);
    }
    else {
      uint64_t blk = offset - offset % h->minb;
      n = blocksize_head(h, count, offset);
      r = blocksize_rmw(self, next, NULL, n, blk, (uint32_t)(offset - blk),
                        flags);
    }
    offset += n;
    count -= n;
  }
  return r;
}

/* [offset, offset+count) rounded out to minblock, the size already being
 * a multiple of it, so the end stays inside the disk. */
static void
blocksize_round_out(const struct blocksize_h *h, uint64_t count,
                    uint64_t offset, uint64_t *start, uint64_t *end)
{
  *start = offset - offset % h->minb;
  *end = offset + count;
  *end += (h->minb - *end % h->minb) % h->minb;
}

static int
blocksize_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                uint64_t offset, uint32_t flags)
{
  const struct blocksize_h *h = self->handle;
  uint64_t start, end;
  uint32_t n;
  int r = 0;

  blocksize_round_out(h, count, offset, &start, &end);
  while (start < end && r == 0) {
    n = end - start < h->maxlen ? (uint32_t)(end - start) : h->maxlen;
    r = next_cache(next, n, start, flags);
    start += n;
  }
  return r;
}

/* The extents of the layer below, unchanged: asked over the aligned
 * range (at most maxlen; a reply may always cover less), and clipped to
 * the request by nbd_extents_add. */
static int
blocksize_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                  uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  const struct blocksize_h *h = self->handle;
  uint64_t start, end;

  blocksize_round_out(h, count, offset, &start, &end);
  if (end - start > h->maxlen)
    end = start + h->maxlen;
  return next_extents(next, end - start, start, flags, extents);
}

/* The same for the depth map. */
static int
blocksize_depth(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  const struct blocksize_h *h = self->handle;
  uint64_t start, end;

  blocksize_round_out(h, count, offset, &start, &end);
  if (end - start > h->maxlen)
    end = start + h->maxlen;
  return next_depth(next, end - start, start, flags, extents);
}

/* Whether the layer below can write, trim, zero, flush... is unchanged;
 * the filter only reshapes requests. */
PASSTHROUGH(blocksize, can_write)
PASSTHROUGH(blocksize, can_flush)
PASSTHROUGH(blocksize, can_trim)
PASSTHROUGH(blocksize, can_zero)
PASSTHROUGH(blocksize, can_fast_zero)
PASSTHROUGH(blocksize, can_fua)
PASSTHROUGH(blocksize, can_cache)
PASSTHROUGH(blocksize, can_extents)
PASSTHROUGH(blocksize, can_multi_conn)
PASSTHROUGH(blocksize, is_rotational)
PASSTHROUGH(blocksize, list_exports)
PASSTHROUGH(blocksize, preconnect)

/* Parallel: the only shared state is the striped lock and the buffer
 * pool.  Never blocks by itself: a request waits on a stripe only while
 * another request's read-modify-write runs below, which the layer
 * below's class already accounts for. */
NBD_REGISTER_FILTER(blocksize, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "split, align and read-modify-write requests for the "
                 "layer below",
  .params = blocksize_params,
  .conf_size = sizeof(struct blocksize_conf),
  .pwrite_from = blocksize_pwrite_from,
  .setup = blocksize_setup,
  .cleanup = blocksize_cleanup,
  .open = blocksize_open,
  .close = blocksize_close,
  .prepare = blocksize_prepare,
);
