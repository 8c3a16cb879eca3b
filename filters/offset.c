/* nbdstack filter offset: serve the window [offset, offset+range) of the
 * layer below as a disk of size range (nbdkit's offset filter, same keys).
 *
 * The window is the same for every connection, so it lives in the conf;
 * window.h shifts every ranged request by offset and passes the rest
 * through.  The engine has already checked a request against the window's
 * size, and prepare checked the window against the disk below, so the
 * shifted request cannot overflow or leave the disk.  Block sizes follow
 * window.h's rule: offset and range multiples of the minimum below, the
 * preferred size lowered when offset would misalign it.  This file parses
 * the keys and words the refusals; it does not cache, split or merge
 * requests.
 */
#include <inttypes.h>
#include <string.h>

#include "layer.h"
#include "window.h"

struct offset_conf {
  struct nbd_window window;   /* start = offset, len = range */
};

static const struct nbd_param offset_params[] = {
  { "offset", NBD_PARAM_SIZE, offsetof(struct offset_conf, window.start),
    "0", "first byte of the window in the layer below", NULL, 0 },
  { "range", NBD_PARAM_SIZE, offsetof(struct offset_conf, window.len), NULL,
    "size of the window (default: up to the end of the layer below)",
    NULL, 0 },
  NBD_PARAM_END
};

static int
offset_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct nbd_window *w = &((struct offset_conf *)layer->conf)->window;

  w->to_end = !nbd_layer_param_set(layer, "range");
  /* Sizes travel as int64_t (get_size); anything larger can never fit. */
  if (w->start > INT64_MAX) {
    snprintf(err, errlen, "offset=%" PRIu64 " is larger than 2^63-1",
             w->start);
    return -1;
  }
  if (!w->to_end && w->len > INT64_MAX - w->start) {
    snprintf(err, errlen, "offset+range (%" PRIu64 "+%" PRIu64
             ") is larger than 2^63-1", w->start, w->len);
    return -1;
  }
  return 0;
}

static const struct nbd_window *
offset_window(const struct nbd_ctx *self)
{
  return &((const struct offset_conf *)self->layer->conf)->window;
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
 * get_size, which must never report a window that is not there.  On
 * success *below is the size of the disk below. */
static int
offset_check_size(struct nbd_ctx *self, struct nbd_ctx *next,
                  uint64_t *below)
{
  const struct nbd_window *w = offset_window(self);
  int64_t size = next_get_size(next);
  char a[32], b[32];

  if (size < 0)
    return (int)size;
  *below = (uint64_t)size;
  switch (nbd_window_fit_size(w, *below)) {
  case NBD_WINDOW_START_PAST_END:
    nbd_error("export '%s': filter offset: offset %s is beyond the end of "
              "the underlying disk (%s)", self->layer->export_name,
              offset_fmt_size(a, sizeof a, w->start),
              offset_fmt_size(b, sizeof b, *below));
    return -EINVAL;
  case NBD_WINDOW_END_PAST_END:
    nbd_error("export '%s': filter offset: offset+range (%s) is beyond the "
              "end of the underlying disk (%s)", self->layer->export_name,
              offset_fmt_size(a, sizeof a, w->start + w->len),
              offset_fmt_size(b, sizeof b, *below));
    return -EINVAL;
  default:
    return 0;
  }
}

/* window.h's rule.  nbdkit's offset filter has no block-size rule to
 * follow, so a range that breaks it fails open, naming both values. */
static int
offset_block_size(struct nbd_ctx *self, struct nbd_ctx *next,
                  uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  const struct nbd_window *w = offset_window(self);
  int r;

  if ((r = next_block_size(next, minimum, preferred, maximum)) < 0)
    return r;
  switch (nbd_window_fit_blocks(w, *minimum, preferred)) {
  case NBD_WINDOW_START_UNALIGNED:
    nbd_error("export '%s': filter offset: offset %" PRIu64 " is not a "
              "multiple of the underlying minimum block size %" PRIu32,
              self->layer->export_name, w->start, *minimum);
    return -EINVAL;
  case NBD_WINDOW_LEN_UNALIGNED:
    nbd_error("export '%s': filter offset: range %" PRIu64 " is not a "
              "multiple of the underlying minimum block size %" PRIu32
              " (its last %" PRIu64 " bytes could not be reached)",
              self->layer->export_name, w->len, *minimum,
              w->len % *minimum);
    return -EINVAL;
  default:
    return 0;
  }
}

static int
offset_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  uint32_t minimum, preferred, maximum;
  uint64_t below;
  int r;

  if ((r = offset_check_size(self, next, &below)) < 0)
    return r;
  return offset_block_size(self, next, &minimum, &preferred, &maximum);
}

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define offset_reopen nbd_reopen_close_open

static int64_t
offset_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  uint64_t below;
  int r;

  if ((r = offset_check_size(self, next, &below)) < 0)
    return r;
  return (int64_t)nbd_window_len(offset_window(self), below);
}

/* Ranged requests move up by offset; flush and the other capabilities
 * are the layer below's (window.h). */
NBD_WINDOW_SHIFTED(offset)
NBD_WINDOW_PASSTHROUGH(offset)
PASSTHROUGH(offset, list_exports)
PASSTHROUGH(offset, preconnect)

NBD_REGISTER_FILTER(offset, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "serve the window [offset, offset+range) of the layer below",
  .params = offset_params,
  .conf_size = sizeof(struct offset_conf),
  .pwrite_from = offset_pwrite_from,
  .setup = offset_setup,
  .prepare = offset_prepare,
);
