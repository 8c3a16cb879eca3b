/* nbdstack filter truncate: change the size of the layer below (nbdkit's
 * truncate filter, same keys): cut it short, or extend it with bytes that
 * read as zeros, to an absolute size (truncate=) and/or rounded up or
 * down to a power of two (round-up=, round-down=).
 *
 * The size below may change between connections (a file that grows), so
 * each connection computes its own sizes in prepare and keeps them in its
 * handle.  Requests past the new end never get here: the engine checks
 * them against get_size.  A request that reaches past the old end is
 * clipped there; the extension reads as zeros and reports as a hole,
 * zeroing or trimming it succeeds with nothing to do, and writing data
 * into it fails with ENOSPC, as in nbdkit.  Unlike nbdkit, such a write
 * is refused before any of it goes below, so a failed write changes
 * nothing.  This file does not store the extension's bytes anywhere.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"

struct truncate_conf {
  uint64_t size;              /* truncate= */
  uint64_t round_up;          /* 0 = not set */
  uint64_t round_down;        /* 0 = not set */
};

/* One connection's view, fixed in prepare. */
struct truncate_handle {
  uint64_t size;              /* what this filter reports */
  uint64_t real;              /* the size below */
};

static const struct nbd_param truncate_params[] = {
  { "truncate", NBD_PARAM_SIZE, offsetof(struct truncate_conf, size), NULL,
    "the new size, smaller or larger than the layer below (up to 2^63-1; "
    "default: the size below)", NULL, 0 },
  { "round-up", NBD_PARAM_SIZE, offsetof(struct truncate_conf, round_up),
    NULL, "round the size up to a multiple of N (a power of 2, 1 to 2G)",
    NULL, 0 },
  { "round-down", NBD_PARAM_SIZE, offsetof(struct truncate_conf, round_down),
    NULL, "round the size down to a multiple of N (a power of 2, 1 to 2G)",
    NULL, 0 },
  NBD_PARAM_END
};

/* nbdkit's range: a power of two that fits its unsigned 32-bit key. */
static int
truncate_check_round(struct nbd_layer *layer, const char *key, uint64_t v,
                     char *err, size_t errlen)
{
  if (!nbd_layer_param_set(layer, key))
    return 0;
  if (v == 0 || (v & (v - 1)) != 0 || v > ((uint64_t)1 << 31)) {
    snprintf(err, errlen, "%s=%" PRIu64 ": must be a power of 2 from 1 to "
             "2147483648 (2G)", key, v);
    return -1;
  }
  return 0;
}

static int
truncate_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct truncate_conf *conf = layer->conf;

  /* Sizes travel as int64_t (get_size). */
  if (nbd_layer_param_set(layer, "truncate") && conf->size > INT64_MAX) {
    snprintf(err, errlen, "truncate=%" PRIu64 ": must be at most 2^63-1 "
             "(%" PRId64 ")", conf->size, INT64_MAX);
    return -1;
  }
  if (truncate_check_round(layer, "round-up", conf->round_up, err,
                           errlen) == -1 ||
      truncate_check_round(layer, "round-down", conf->round_down, err,
                           errlen) == -1)
    return -1;
  return 0;
}

static int
truncate_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  self->handle = calloc(1, sizeof(struct truncate_handle));
  return self->handle ? 0 : -ENOMEM;
}

static void
truncate_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  free(self->handle);
}

/* Sizes in nbdkit's order: truncate=, then round-up, then round-down. */
static int
truncate_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  const struct nbd_layer *layer = self->layer;
  const struct truncate_conf *conf = layer->conf;
  struct truncate_handle *h = self->handle;
  int64_t below = next_get_size(next);
  uint64_t size;

  if (below < 0)
    return (int)below;
  h->real = size = (uint64_t)below;
  if (nbd_layer_param_set(layer, "truncate"))
    size = conf->size;
  if (conf->round_up) {
    if (size > (uint64_t)INT64_MAX - (conf->round_up - 1)) {
      nbd_error("export '%s': filter truncate: cannot round size %" PRIu64
                " up to a multiple of %" PRIu64 " (over 2^63-1)",
                layer->export_name, size, conf->round_up);
      return -EINVAL;
    }
    size = (size + conf->round_up - 1) & ~(conf->round_up - 1);
  }
  if (conf->round_down)
    size &= ~(conf->round_down - 1);
  h->size = size;
  return 0;
}

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define truncate_reopen nbd_reopen_close_open

static int64_t
truncate_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return (int64_t)((const struct truncate_handle *)self->handle)->size;
}

/* Bytes of [offset, offset+count) that lie below the old end. */
static uint64_t
truncate_below(const struct nbd_ctx *self, uint64_t count, uint64_t offset)
{
  uint64_t real = ((const struct truncate_handle *)self->handle)->real;

  if (offset >= real)
    return 0;
  return real - offset < count ? real - offset : count;
}

static int
truncate_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
               uint32_t count, uint64_t offset, uint32_t flags)
{
  uint32_t n = (uint32_t)truncate_below(self, count, offset);
  int r;

  if (n == count)
    return next_pread(next, buf, count, offset, flags);
  if (n > 0 && (r = next_pread(next, buf, n, offset, flags)) < 0)
    return r;
  memset((char *)buf + n, 0, count - n);
  return 0;
}

/* Data past the old end has nowhere to go: only zeros may be written
 * there.  Checked first, so a refused write leaves the disk unchanged. */
static int
truncate_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
                uint32_t count, uint64_t offset, uint32_t flags)
{
  uint32_t n = (uint32_t)truncate_below(self, count, offset);

  if (n == count)
    return next_pwrite(next, buf, count, offset, flags);
  if (!nbd_is_zero((const char *)buf + n, count - n)) {
    nbd_debug("filter truncate: write of data past the end of the layer "
              "below (%" PRIu64 "), refused", offset + n);
    return -ENOSPC;
  }
  return n > 0 ? next_pwrite(next, buf, n, offset, flags) : 0;
}

/* The payload still in the socket goes straight below when it all fits
 * there; otherwise it is read first, so its tail can be checked before
 * anything is written. */
static int
truncate_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                     struct nbd_source *src, uint32_t count, uint64_t offset,
                     uint32_t flags)
{
  void *buf;
  int r;

  if (truncate_below(self, count, offset) == count)
    return next_pwrite_from(next, src, count, offset, flags);
  if ((buf = malloc(count ? count : 1)) == NULL)
    return -ENOMEM;
  r = nbd_source_read(src, buf, count);
  if (r == 0)
    r = truncate_pwrite(self, next, buf, count, offset, flags);
  free(buf);
  return r;
}

/* The extension is already zero: zeroing or trimming it has nothing to
 * do, and nothing to persist for FUA. */
static int
truncate_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
              uint64_t offset, uint32_t flags)
{
  uint64_t n = truncate_below(self, count, offset);

  return n > 0 ? next_zero(next, n, offset, flags) : 0;
}

static int
truncate_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
              uint64_t offset, uint32_t flags)
{
  uint64_t n = truncate_below(self, count, offset);

  return n > 0 ? next_trim(next, n, offset, flags) : 0;
}

static int
truncate_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
               uint64_t offset, uint32_t flags)
{
  uint64_t n = truncate_below(self, count, offset);

  return n > 0 ? next_cache(next, n, offset, flags) : 0;
}

/* The part below as the layer below maps it (m is next_extents or
 * next_depth), then the extension as one more extent of type ext.  When
 * the layer below answered only part of its range (it may), the answer
 * stops there: the client asks again. */
static int
truncate_map(int (*m)(struct nbd_ctx *, uint64_t, uint64_t, uint32_t,
                      struct nbd_extents *),
             uint32_t ext, struct nbd_ctx *self, struct nbd_ctx *next,
             uint64_t count, uint64_t offset, uint32_t flags,
             struct nbd_extents *extents)
{
  uint64_t n = truncate_below(self, count, offset);
  const struct nbd_extent *last;
  int r;

  if (n > 0) {
    if ((r = m(next, n, offset, flags, extents)) < 0)
      return r;
    if (n == count || extents->n == 0)
      return 0;
    last = &extents->v[extents->n - 1];
    if (last->offset + last->length < offset + n)
      return 0;
  }
  return nbd_extents_add(extents, offset + n, count - n, ext);
}

/* The extension is a hole that reads as zeros. */
static int
truncate_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                 uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  return truncate_map(next_extents, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO, self,
                      next, count, offset, flags, extents);
}

/* The part below at the depth the layer below says; the extension at
 * depth 1: this export holds its zeros, as a raw file holds its holes
 * (a client reads them without going to any backing image). */
static int
truncate_depth(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
               uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  return truncate_map(next_depth, 1, self, next, count, offset, flags,
                      extents);
}

/* The extension is always known to be a hole, so extents are offered
 * even when the layer below has none (the engine then reports its part
 * as data). */
static int
truncate_can_extents(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 1;
}

/* Flush has no range; the other capabilities are the layer below's (a
 * zero or trim of the extension needs nothing of it).  block_size too:
 * a size that is not a multiple of the minimum below leaves the last
 * partial block unreachable, which the page says. */
PASSTHROUGH(truncate, flush)
PASSTHROUGH(truncate, block_size)
PASSTHROUGH(truncate, can_write)
PASSTHROUGH(truncate, can_flush)
PASSTHROUGH(truncate, can_trim)
PASSTHROUGH(truncate, can_zero)
PASSTHROUGH(truncate, can_fast_zero)
PASSTHROUGH(truncate, can_fua)
PASSTHROUGH(truncate, can_cache)
PASSTHROUGH(truncate, can_multi_conn)
PASSTHROUGH(truncate, is_rotational)
PASSTHROUGH(truncate, list_exports)
PASSTHROUGH(truncate, preconnect)

NBD_REGISTER_FILTER(truncate, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "change the size of the layer below (extend with zeros, "
                 "cut short, or round)",
  .params = truncate_params,
  .conf_size = sizeof(struct truncate_conf),
  .pwrite_from = truncate_pwrite_from,
  .setup = truncate_setup,
  .open = truncate_open,
  .close = truncate_close,
  .prepare = truncate_prepare,
);
