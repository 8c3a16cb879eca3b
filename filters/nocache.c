/* nbdstack filter nocache: change how cache requests (NBD_CMD_CACHE) are
 * advertised and handled (nbdkit's nocache filter, same key, modes and
 * default).
 *
 *   cachemode=none     cache not advertised (the default)
 *   cachemode=emulate  cache advertised, done by reading (the engine reads
 *                      through this layer's pread and discards the data)
 *   cachemode=nop      cache advertised, accepted and ignored
 *
 * Offsets, data and extents are unchanged; every other request passes
 * through in one call.
 */
#include "layer.h"

enum nocache_mode { NOCACHE_NONE, NOCACHE_EMULATE, NOCACHE_NOP };

static const char *const nocache_modes[] = { "none", "emulate", "nop", NULL };

struct nocache_conf {
  int mode;                   /* enum nocache_mode */
};

static const struct nbd_param nocache_params[] = {
  { "cachemode", NBD_PARAM_ENUM, offsetof(struct nocache_conf, mode), "none",
    "none: cache not advertised; emulate: done by reading; nop: accepted "
    "and ignored", nocache_modes, 0 },
  NBD_PARAM_END
};

static int
nocache_can_cache(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)next;
  switch (((const struct nocache_conf *)self->layer->conf)->mode) {
  case NOCACHE_EMULATE:
    return NBD_CACHE_EMULATE;
  case NOCACHE_NOP:
    return NBD_CACHE_NATIVE;
  default:
    return NBD_CACHE_NONE;
  }
}

/* Reached only in nop mode: none is refused and emulate is read by the
 * engine before a request gets here. */
static int
nocache_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
              uint64_t offset, uint32_t flags)
{
  (void)self;
  (void)next;
  (void)count;
  (void)offset;
  (void)flags;
  return 0;
}

static int
nocache_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                    struct nbd_source *src, uint32_t count, uint64_t offset,
                    uint32_t flags)
{
  (void)self;
  return next_pwrite_from(next, src, count, offset, flags);
}

PASSTHROUGH(nocache, pread)
PASSTHROUGH(nocache, pwrite)
PASSTHROUGH(nocache, flush)
PASSTHROUGH(nocache, trim)
PASSTHROUGH(nocache, zero)
PASSTHROUGH(nocache, extents)
PASSTHROUGH(nocache, reopen)
PASSTHROUGH(nocache, depth)
PASSTHROUGH(nocache, get_size)
PASSTHROUGH(nocache, block_size)
PASSTHROUGH(nocache, can_write)
PASSTHROUGH(nocache, can_flush)
PASSTHROUGH(nocache, can_trim)
PASSTHROUGH(nocache, can_zero)
PASSTHROUGH(nocache, can_fast_zero)
PASSTHROUGH(nocache, can_fua)
PASSTHROUGH(nocache, can_extents)
PASSTHROUGH(nocache, can_multi_conn)
PASSTHROUGH(nocache, is_rotational)
PASSTHROUGH(nocache, list_exports)
PASSTHROUGH(nocache, preconnect)

NBD_REGISTER_FILTER(nocache, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "change how cache requests are advertised and handled",
  .params = nocache_params,
  .conf_size = sizeof(struct nocache_conf),
  .pwrite_from = nocache_pwrite_from,
);
