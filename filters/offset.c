/* nbdstack filter offset: serve the window [offset, offset+range) of the
 * layer below as a disk of size range (nbdkit's offset filter, same keys).
 *
 * Every datapath method shifts the request by offset; the engine has
 * already checked it against the window's size, and prepare checked the
 * window against the disk below, so the shifted request cannot overflow or
 * leave the disk.  Extents come back shifted by -offset.  Block-size
 * constraints are the lower layer's: offset and range must be multiples of
 * its minimum, and the preferred size is lowered when offset would
 * misalign it.  It does not cache, split or merge requests.
 */
#include <inttypes.h>
#include <string.h>

#include "layer.h"

struct offset_conf {
  uint64_t offset;
  uint64_t range;
  int has_range;              /* range given; else "rest of the disk" */
};

static const struct nbd_param offset_params[] = {
  { "offset", NBD_PARAM_SIZE, offsetof(struct offset_conf, offset), "0",
    "first byte of the window in the layer below", NULL, 0 },
  { "range", NBD_PARAM_SIZE, offsetof(struct offset_conf, range), NULL,
    "size of the window (default: up to the end of the layer below)",
    NULL, 0 },
  NBD_PARAM_END
};

static int
offset_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct offset_conf *conf = layer->conf;

  conf->has_range = nbd_layer_param_set(layer, "range");
  /* Sizes travel as int64_t (get_size); anything larger can never fit. */
  if (conf->offset > INT64_MAX) {
    snprintf(err, errlen, "offset=%" PRIu64 " is larger than 2^63-1",
             conf->offset);
    return -1;
  }
  if (conf->has_range && conf->range > INT64_MAX - conf->offset) {
    snprintf(err, errlen, "offset+range (%" PRIu64 "+%" PRIu64
             ") is larger than 2^63-1", conf->offset, conf->range);
    return -1;
  }
  return 0;
}

/* "1G", "1280M", "1000": the largest binary unit that divides v exactly,
 * so messages echo sizes the way a config file writes them. */
static const char *
offset_fmt_size(char *buf, size_t len, uint64_t v)
{
  static const char units[] = "KMGTPE";
  int i;

  for (i = 5; v != 0 && i >= 0; i--)
    if (v % ((uint64_t)1 << (10 * (i + 1))) == 0) {
      snprintf(buf, len, "%" PRIu64 "%c", v >> (10 * (i + 1)), units[i]);
      return buf;
    }
  snprintf(buf, len, "%" PRIu64, v);
  return buf;
}

/* The window must lie inside the disk below.  Checked in prepare (so the
 * connection fails at open with this line in the log) and again in
 * get_size, which must never report a window that is not there. */
static int
offset_check_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct offset_conf *conf = self->layer->conf;
  int64_t size = next_get_size(next);
  char a[32], b[32];

  if (size < 0)
    return (int)size;
  if (conf->offset > (uint64_t)size) {
    nbd_error("export '%s': filter offset: offset %s is beyond the end of "
              "the underlying disk (%s)", self->layer->export_name,
              offset_fmt_size(a, sizeof a, conf->offset),
              offset_fmt_size(b, sizeof b, (uint64_t)size));
    return -EINVAL;
  }
  /* offset <= size here, so size - offset does not wrap. */
  if (conf->has_range && conf->range > (uint64_t)size - conf->offset) {
    nbd_error("export '%s': filter offset: offset+range (%s) is beyond the "
              "end of the underlying disk (%s)", self->layer->export_name,
              offset_fmt_size(a, sizeof a, conf->offset + conf->range),
              offset_fmt_size(b, sizeof b, (uint64_t)size));
    return -EINVAL;
  }
  return 0;
}

/* An aligned request in the window must stay aligned below: offset must be
 * a multiple of the minimum, and the preferred size is lowered to the
 * largest power of two dividing offset when offset breaks it.
 *
 * range must be a multiple of the minimum as well.  The window is the
 * export, and the NBD protocol ("Block size constraints") wants its size
 * to be a multiple of the minimum: the engine refuses every request that
 * touches a last partial block, so its bytes could never be read or
 * written.  nbdkit's offset filter has no block-size rule to follow, and
 * rounding range would serve another window than the one configured, so
 * open fails, naming both values.  Without range the window ends with the
 * disk below, and an unaligned end is that layer's own, passed on. */
static int
offset_block_size(struct nbd_ctx *self, struct nbd_ctx *next,
                  uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  const struct offset_conf *conf = self->layer->conf;
  uint64_t low = conf->offset & -conf->offset; /* 0 when offset is 0 */
  int r;

  if ((r = next_block_size(next, minimum, preferred, maximum)) < 0)
    return r;
  if (*minimum == 0)
    return 0;                   /* no constraints */
  if (conf->offset % *minimum != 0) {
    nbd_error("export '%s': filter offset: offset %" PRIu64 " is not a "
              "multiple of the underlying minimum block size %" PRIu32,
              self->layer->export_name, conf->offset, *minimum);
    return -EINVAL;
  }
  if (conf->has_range && conf->range % *minimum != 0) {
    nbd_error("export '%s': filter offset: range %" PRIu64 " is not a "
              "multiple of the underlying minimum block size %" PRIu32
              " (its last %" PRIu64 " bytes could not be reached)",
              self->layer->export_name, conf->range, *minimum,
              conf->range % *minimum);
    return -EINVAL;
  }
  if (conf->offset % *preferred != 0)
    *preferred = low < *minimum ? *minimum : (uint32_t)low;
  return 0;
}

static int
offset_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  uint32_t minimum, preferred, maximum;
  int r;

  if ((r = offset_check_size(self, next)) < 0)
    return r;
  return offset_block_size(self, next, &minimum, &preferred, &maximum);
}

static int64_t
offset_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct offset_conf *conf = self->layer->conf;
  int r;

  if ((r = offset_check_size(self, next)) < 0)
    return r;
  if (conf->has_range)
    return (int64_t)conf->range;
  return next_get_size(next) - (int64_t)conf->offset;
}

static uint64_t
offset_of(const struct nbd_ctx *self)
{
  return ((const struct offset_conf *)self->layer->conf)->offset;
}

/* ---- datapath: shift by offset ------------------------------------------ */

static int
offset_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
             uint32_t count, uint64_t offset, uint32_t flags)
{
  return next_pread(next, buf, count, offset + offset_of(self), flags);
}

static int
offset_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
              uint32_t count, uint64_t offset, uint32_t flags)
{
  return next_pwrite(next, buf, count, offset + offset_of(self), flags);
}

static int
offset_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                   struct nbd_source *src, uint32_t count, uint64_t offset,
                   uint32_t flags)
{
  return next_pwrite_from(next, src, count, offset + offset_of(self), flags);
}

static int
offset_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
            uint64_t offset, uint32_t flags)
{
  return next_trim(next, count, offset + offset_of(self), flags);
}

static int
offset_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
            uint64_t offset, uint32_t flags)
{
  return next_zero(next, count, offset + offset_of(self), flags);
}

static int
offset_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
             uint64_t offset, uint32_t flags)
{
  return next_cache(next, count, offset + offset_of(self), flags);
}

/* Extents of the window: the layer below's, shifted back (extents.c). */
static int
offset_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
               uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  return nbd_extents_shifted(next, count, offset, offset_of(self), flags,
                             extents);
}

/* Flush has no range; every capability but size and block size is the
 * lower layer's. */
PASSTHROUGH(offset, flush)
PASSTHROUGH(offset, can_write)
PASSTHROUGH(offset, can_flush)
PASSTHROUGH(offset, can_trim)
PASSTHROUGH(offset, can_zero)
PASSTHROUGH(offset, can_fast_zero)
PASSTHROUGH(offset, can_fua)
PASSTHROUGH(offset, can_cache)
PASSTHROUGH(offset, can_extents)
PASSTHROUGH(offset, can_multi_conn)
PASSTHROUGH(offset, is_rotational)

NBD_REGISTER_FILTER(offset,
  .description = "serve the window [offset, offset+range) of the layer below",
  .params = offset_params,
  .conf_size = sizeof(struct offset_conf),
  .thread_model = NBD_PARALLEL,
  .nonblocking = NBD_NEVER_BLOCKS,
  .pwrite_from = offset_pwrite_from,
  .setup = offset_setup,
  .prepare = offset_prepare,
);
