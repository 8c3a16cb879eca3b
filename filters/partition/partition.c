/* nbdstack filter partition: serve one partition of the layer below
 * (nbdkit's partition filter, same key: partition=N, counting from 1).
 *
 * Each connection reads the partition table of the layer below when it is
 * prepared (partition_find in table.c: MBR primary and logical partitions,
 * GPT, with 512-byte sectors), so a table changed between connections is
 * seen.  The partition found is the connection's window, kept in its
 * handle, and from then on window.h does the work, as for offset: every
 * ranged request shifted by the partition's start, extents shifted back,
 * the rest passed through, and block sizes by its rule (start and length
 * multiples of the minimum below, preferred lowered when the start breaks
 * it).  This file reads the table through the engine and words the
 * refusals; it does not write or repair tables.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "table.h"
#include "window.h"

struct partition_conf {
  uint64_t partition;
};

static const struct nbd_param partition_params[] = {
  { "partition", NBD_PARAM_UINT, offsetof(struct partition_conf, partition),
    NULL, "partition to serve, from 1 (MBR logical partitions from 5)",
    NULL, 1 },
  NBD_PARAM_END
};

static int
partition_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct partition_conf *conf = layer->conf;

  if (conf->partition < 1 || conf->partition > PARTITION_MAX) {
    snprintf(err, errlen, "partition=%" PRIu64 " is out of range "
             "(partitions are numbered 1-%u)", conf->partition,
             PARTITION_MAX);
    return -1;
  }
  return 0;
}

/* partition_find's reads through the engine, which enforces the block
 * sizes below: each read is rounded out to the minimum and cut to the
 * maximum, through a bounce buffer as large as the largest minimum. */
#define PARTITION_BOUNCE 65536

struct partition_reader {
  struct nbd_ctx *next;
  unsigned char *bounce;
};

static int
partition_next_read(void *opaque, void *buf, uint32_t count, uint64_t offset)
{
  struct partition_reader *rd = opaque;
  unsigned char *out = buf;
  uint32_t min, pref, max, unit, limit, skip, n;
  uint64_t start, len;
  int r;

  if ((r = next_block_size(rd->next, &min, &pref, &max)) < 0)
    return r;
  unit = min ? min : 1;
  limit = PARTITION_BOUNCE;
  if (max && max < limit)
    limit = max - max % unit;   /* max >= min: at least one unit */
  while (count > 0) {
    start = offset - offset % unit;
    skip = (uint32_t)(offset - start);
    len = ((uint64_t)skip + count + unit - 1) / unit * unit;
    if (len > limit)
      len = limit;
    if ((r = next_pread(rd->next, rd->bounce, (uint32_t)len, start, 0)) < 0)
      return r;
    n = (uint32_t)len - skip;
    if (n > count)
      n = count;
    memcpy(out, rd->bounce + skip, n);
    out += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* The handle is the connection's window (start, len; to_end 0). */
static const struct nbd_window *
partition_window(const struct nbd_ctx *self)
{
  return self->handle;
}

/* window.h's rule; the messages name the partition and where it lies. */
static int
partition_block_size(struct nbd_ctx *self, struct nbd_ctx *next,
                     uint32_t *minimum, uint32_t *preferred,
                     uint32_t *maximum)
{
  const struct partition_conf *conf = self->layer->conf;
  const struct nbd_window *w = partition_window(self);
  int r;

  if ((r = next_block_size(next, minimum, preferred, maximum)) < 0)
    return r;
  switch (nbd_window_fit_blocks(w, *minimum, preferred)) {
  case NBD_WINDOW_START_UNALIGNED:
    nbd_error("export '%s': filter partition: partition %" PRIu64 " starts "
              "at byte %" PRIu64 ", not a multiple of the underlying minimum "
              "block size %" PRIu32, self->layer->export_name,
              conf->partition, w->start, *minimum);
    return -EINVAL;
  case NBD_WINDOW_LEN_UNALIGNED:
    nbd_error("export '%s': filter partition: partition %" PRIu64 " is %"
              PRIu64 " bytes, not a multiple of the underlying minimum "
              "block size %" PRIu32 " (its last %" PRIu64 " bytes could not "
              "be reached)", self->layer->export_name, conf->partition,
              w->len, *minimum, w->len % *minimum);
    return -EINVAL;
  default:
    return 0;
  }
}

static int
partition_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  self->handle = calloc(1, sizeof(struct nbd_window));
  return self->handle ? 0 : -ENOMEM;
}

static void
partition_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  free(self->handle);
  self->handle = NULL;
}

/* Reads the table, then checks the window's alignment, so a connection
 * fails at open with the reason in the log. */
static int
partition_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  const struct partition_conf *conf = self->layer->conf;
  struct nbd_window *w = self->handle;
  struct partition_reader rd = { next, NULL };
  int64_t size = next_get_size(next);
  uint32_t minimum, preferred, maximum;
  char err[256];
  int r;

  if (size < 0)
    return (int)size;
  if ((rd.bounce = malloc(PARTITION_BOUNCE)) == NULL)
    return -ENOMEM;
  r = partition_find(partition_next_read, &rd, (uint64_t)size,
                     (unsigned)conf->partition, &w->start, &w->len,
                     err, sizeof err);
  free(rd.bounce);
  if (r < 0) {
    nbd_error("export '%s': filter partition: %s", self->layer->export_name,
              err);
    return r;
  }
  nbd_debug("export '%s': filter partition: partition %" PRIu64 " is bytes %"
            PRIu64 "+%" PRIu64, self->layer->export_name, conf->partition,
            w->start, w->len);
  return partition_block_size(self, next, &minimum, &preferred, &maximum);
}

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define partition_reopen nbd_reopen_close_open

/* prepare (partition_find) checked start + len <= the size below (an
 * int64_t). */
static int64_t
partition_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return (int64_t)partition_window(self)->len;
}

/* Ranged requests move up by the partition's start; flush and the other
 * capabilities are the layer below's (window.h). */
NBD_WINDOW_SHIFTED(partition)
NBD_WINDOW_PASSTHROUGH(partition)
PASSTHROUGH(partition, list_exports)
PASSTHROUGH(partition, preconnect)

NBD_REGISTER_FILTER(partition, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "serve one partition (MBR or GPT) of the layer below",
  .params = partition_params,
  .conf_size = sizeof(struct partition_conf),
  .pwrite_from = partition_pwrite_from,
  .magic_param = "partition",
  .setup = partition_setup,
  .prepare = partition_prepare,
  .open = partition_open,
  .close = partition_close,
);
