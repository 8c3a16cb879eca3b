/* nbdstack backend full: a disk that reads as zeros and is always full.
 *
 * Like nbdkit's full plugin: reads return zeros, every write and trim
 * fails with ENOSPC, so a client's handling of a full disk can be
 * tested.  A write-zeroes fails with ENOSPC too (nbdkit reaches the same
 * answer through its pwrite fallback), and a fast zero with ENOTSUP, as
 * nbdkit answers it.  No flush: nothing is ever written.  Extents: one
 * hole that reads as zeros.
 */
#include <string.h>

#include "layer.h"

struct full_conf {
  uint64_t size;
};

static const struct nbd_param full_params[] = {
  { "size", NBD_PARAM_SIZE, offsetof(struct full_conf, size), NULL,
    "virtual size in bytes, 0 to 2^63-1 (required)", NULL, 1 },
  NBD_PARAM_END
};

static int
full_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct full_conf *conf = layer->conf;

  if (conf->size > INT64_MAX) {
    snprintf(err, errlen, "size=%llu is out of range (0 to 2^63-1)",
             (unsigned long long)conf->size);
    return -1;
  }
  return 0;
}

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define full_reopen nbd_reopen_close_open

static int64_t
full_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct full_conf *conf = self->layer->conf;
  return (int64_t)conf->size;
}

static int
full_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
           uint32_t count, uint64_t offset, uint32_t flags)
{
  memset(buf, 0, count);
  return 0;
}

static int
full_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags)
{
  return -ENOSPC;
}

static int
full_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
          uint64_t offset, uint32_t flags)
{
  return -ENOSPC;
}

/* nbdkit leaves zero out on purpose: a fast zero answers ENOTSUP at
 * once, a plain one falls back to pwrite and fails with ENOSPC.  The
 * same two answers here, without the fallback's zero buffer. */
static int
full_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
          uint64_t offset, uint32_t flags)
{
  return (flags & NBD_CMD_FLAG_FAST_ZERO) ? -ENOTSUP : -ENOSPC;
}

/* Everything is already "in memory": a cache request has nothing to do. */
static int
full_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  return 0;
}

static int
full_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
             uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  return nbd_extents_add(extents, offset, count,
                         NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
}

UNSUPPORTED(full, depth)

#define full_can_write nbd_cap_yes
#define full_can_trim nbd_cap_yes
#define full_can_fast_zero nbd_cap_yes
#define full_can_extents nbd_cap_yes
#define full_can_multi_conn nbd_cap_yes

static int
full_can_zero(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_ZERO_NATIVE;
}

static int
full_can_cache(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_CACHE_NATIVE;
}

UNSUPPORTED(full, flush)
UNSUPPORTED(full, block_size)
UNSUPPORTED(full, can_flush)
UNSUPPORTED(full, can_fua)
UNSUPPORTED(full, is_rotational)
UNSUPPORTED(full, list_exports)
UNSUPPORTED(full, preconnect)

NBD_REGISTER_BACKEND(full, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "reads zeros, every write fails with ENOSPC (tests)",
  .params = full_params,
  .conf_size = sizeof(struct full_conf),
  .setup = full_setup,
  .magic_param = "size",
);
