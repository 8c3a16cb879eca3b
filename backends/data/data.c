/* nbdstack backend data: a small disk written inline on the command line
 * or in the config (nbdkit's data plugin: data=, raw=, base64=, size=).
 *
 * This file is the layer: its keys, setup (which runs the parser of
 * parse.c into the store of store.c), and the NBD methods, each a call
 * into the store.  The disk is writable and sparse; writes live in memory
 * and are lost at exit, shared by every connection (multi-conn is safe).
 * Without size= the disk is as long as the data, as in nbdkit; with it the
 * data is cut or padded with zeros.  Flush, FUA and cache are no-ops.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "parse.h"
#include "store.h"

struct data_conf {
  char *data;
  char *raw;
  char *base64;
  uint64_t size;
  int allocator;
};

struct data_state {
  struct data_store *store;
  uint64_t size;
};

/* nbdkit's other allocators (malloc, zstd) are not here; sparse is its
 * default, so command lines that name it work unchanged. */
static const char *const data_allocators[] = { "sparse", NULL };

static const struct nbd_param data_params[] = {
  { "data", NBD_PARAM_STRING, offsetof(struct data_conf, data), NULL,
    "disk contents in nbdkit's data format: bytes, @OFFSET, @+N, @-N, @^N, "
    "*N, [N:M], ( ... ), \"string\", <FILE, le16:/be16:/le32:/be32:/le64:/be64:, "
    "# comments (docs/backends/data.md)", NULL, 0 },
  { "raw", NBD_PARAM_STRING, offsetof(struct data_conf, raw), NULL,
    "disk contents as the literal bytes of the value", NULL, 0 },
  { "base64", NBD_PARAM_STRING, offsetof(struct data_conf, base64), NULL,
    "disk contents encoded in base64 (RFC 4648)", NULL, 0 },
  { "size", NBD_PARAM_SIZE, offsetof(struct data_conf, size), NULL,
    "disk size, cutting or zero-padding the data (default: the extent of "
    "the data)", NULL, 0 },
  { "allocator", NBD_PARAM_ENUM, offsetof(struct data_conf, allocator),
    "sparse", "storage layout; only sparse (pages allocated on write)",
    data_allocators, 0 },
  NBD_PARAM_END
};

/* Every request is also checked here, not only by the engine. */
static int
data_range(struct nbd_ctx *self, uint64_t count, uint64_t offset)
{
  const struct data_state *st = self->layer->state;

  return offset > st->size || count > st->size - offset ? -EINVAL : 0;
}

static int
data_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
           uint32_t count, uint64_t offset, uint32_t flags)
{
  const struct data_state *st = self->layer->state;
  int r = data_range(self, count, offset);

  return r ? r : data_store_read(st->store, buf, count, offset);
}

static int
data_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags)
{
  const struct data_state *st = self->layer->state;
  int r = data_range(self, count, offset);

  return r ? r : data_store_write(st->store, buf, count, offset);
}

/* Trim and zero both free whole pages; NO_HOLE is not honoured (the store
 * has no way to keep zeroed pages), which the protocol allows. */
static int
data_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
          uint64_t offset, uint32_t flags)
{
  const struct data_state *st = self->layer->state;
  int r = data_range(self, count, offset);

  return r ? r : data_store_zero(st->store, count, offset);
}
#define data_zero data_trim

static int
data_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
             uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  const struct data_state *st = self->layer->state;
  uint64_t end = offset + count, stop;
  size_t first = extents->n;
  int r = data_range(self, count, offset);

  while (r == 0 && offset < end) {
    uint32_t type = data_store_extent(st->store, offset, end, &stop)
                    ? 0 : NBD_EXTENT_HOLE | NBD_EXTENT_ZERO;

    r = nbd_extents_add(extents, offset, stop - offset, type);
    if ((flags & NBD_CMD_FLAG_REQ_ONE) && extents->n > first + 1)
      break;
    offset = stop;
  }
  return r;
}

UNSUPPORTED(data, depth)

/* Nothing to persist or prefetch. */
static int
data_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  return 0;
}

static int
data_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  return data_range(self, count, offset);
}

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define data_reopen nbd_reopen_close_open

static int64_t
data_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct data_state *st = self->layer->state;
  return (int64_t)st->size;
}

#define data_can_write nbd_cap_yes       /* read-only is the engine's job */
#define data_can_flush nbd_cap_yes
#define data_can_trim nbd_cap_yes
#define data_can_fast_zero nbd_cap_yes
#define data_can_extents nbd_cap_yes
#define data_can_multi_conn nbd_cap_yes  /* one store for all connections */

static int
data_native(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_FUA_NATIVE;        /* == NBD_ZERO_NATIVE == NBD_CACHE_NATIVE */
}
#define data_can_fua data_native
#define data_can_zero data_native
#define data_can_cache data_native

UNSUPPORTED(data, block_size)           /* any alignment works */
UNSUPPORTED(data, is_rotational)        /* 0: RAM does not seek */
UNSUPPORTED(data, list_exports)         /* one export: the one configured */
UNSUPPORTED(data, preconnect)

static void
data_cleanup(struct nbd_layer *layer)
{
  struct data_state *st = layer->state;

  if (st) {
    data_store_free(st->store);
    free(st);
  }
  layer->state = NULL;
}

static int
data_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct data_conf *conf = layer->conf;
  int given = nbd_layer_param_set(layer, "data") +
              nbd_layer_param_set(layer, "raw") +
              nbd_layer_param_set(layer, "base64");
  struct data_state *st;
  uint64_t len = 0;
  int r;

  if (given != 1) {
    snprintf(err, errlen, "exactly one of data=, raw= or base64= must be "
             "given (%d were)", given);
    return -1;
  }
  if (nbd_layer_param_set(layer, "size") && conf->size > INT64_MAX) {
    snprintf(err, errlen, "size=%llu is too large (the maximum is 2^63-1)",
             (unsigned long long)conf->size);
    return -1;
  }
  if ((st = calloc(1, sizeof *st)) == NULL ||
      (st->store = data_store_new()) == NULL) {
    free(st);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  layer->state = st;
  if (conf->data)
    r = data_parse(conf->data, st->store, &len, err, errlen);
  else if (conf->base64)
    r = data_base64(conf->base64, st->store, &len, err, errlen);
  else {
    len = strlen(conf->raw);
    r = data_store_write(st->store, conf->raw, len, 0);
    if (r < 0)
      snprintf(err, errlen, "out of memory");
  }
  if (r != 0) {
    data_cleanup(layer);
    return -1;
  }
  st->size = nbd_layer_param_set(layer, "size") ? conf->size : len;
  /* Data past a smaller size= is dropped, so that growing nothing later
   * can show it. */
  if (st->size < len)
    data_store_zero(st->store, len - st->size, st->size);
  return 0;
}

NBD_REGISTER_BACKEND(data, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "small disk written inline in nbdkit's data format "
                 "(data=, raw=, base64=), writable, in memory",
  .params = data_params,
  .conf_size = sizeof(struct data_conf),
  .magic_param = "data",
  .setup = data_setup,
  .cleanup = data_cleanup,
);
