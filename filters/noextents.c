/* nbdstack filter noextents: hide the layer below's extents, so the disk
 * reads as fully allocated data (nbdkit's noextents filter; no keys).
 *
 * can_extents says no; the engine then answers every block-status query
 * at this layer with one data extent ("all data"), so noextents_extents is
 * never reached.  Every other request passes through in one call:
 * offsets and data are unchanged.
 */
#include "layer.h"

static int
noextents_can_extents(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)self;
  (void)next;
  return 0;
}

/* Not reached (can_extents is 0); declines rather than pass the real map
 * through, should that ever change. */
static int
noextents_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                  uint64_t offset, uint32_t flags,
                  struct nbd_extents *extents)
{
  (void)self;
  (void)next;
  (void)count;
  (void)offset;
  (void)flags;
  (void)extents;
  return -EOPNOTSUPP;
}

/* Only base:allocation is hidden, as nbdkit's noextents does; the depth
 * map is another context. */
PASSTHROUGH(noextents, depth)

static int
noextents_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                      struct nbd_source *src, uint32_t count, uint64_t offset,
                      uint32_t flags)
{
  (void)self;
  return next_pwrite_from(next, src, count, offset, flags);
}

PASSTHROUGH(noextents, pread)
PASSTHROUGH(noextents, pwrite)
PASSTHROUGH(noextents, flush)
PASSTHROUGH(noextents, trim)
PASSTHROUGH(noextents, zero)
PASSTHROUGH(noextents, cache)
PASSTHROUGH(noextents, reopen)
PASSTHROUGH(noextents, get_size)
PASSTHROUGH(noextents, block_size)
PASSTHROUGH(noextents, can_write)
PASSTHROUGH(noextents, can_flush)
PASSTHROUGH(noextents, can_trim)
PASSTHROUGH(noextents, can_zero)
PASSTHROUGH(noextents, can_fast_zero)
PASSTHROUGH(noextents, can_fua)
PASSTHROUGH(noextents, can_cache)
PASSTHROUGH(noextents, can_multi_conn)
PASSTHROUGH(noextents, is_rotational)
PASSTHROUGH(noextents, list_exports)
PASSTHROUGH(noextents, preconnect)

NBD_REGISTER_FILTER(noextents, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "hide extents: the disk reads as fully allocated data",
  .pwrite_from = noextents_pwrite_from,
);
