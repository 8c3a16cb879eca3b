/* A filter whose trim is a macro alias, of the right name, for a function
 * of another shape (zero-like, but returning the size type).  The alias
 * hides the mismatch from a check by name; the type check must catch it
 * and name the filter and the method.  -DCONTROL: an alias to a function
 * of the right shape, as backends/memory.c does for its capabilities.
 * Never part of the nbdstack build.
 */
#include "layer.h"

#ifdef CONTROL
static int
wrongalias_remove(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                  uint64_t offset, uint32_t flags)
{
  (void)self;
  return next_trim(next, count, offset, flags);
}
#else
static int64_t
wrongalias_remove(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                  uint64_t offset)
{
  (void)self;
  return next_trim(next, count, offset, 0);
}
#endif
#define wrongalias_trim wrongalias_remove

PASSTHROUGH(wrongalias, pread)
PASSTHROUGH(wrongalias, pwrite)
PASSTHROUGH(wrongalias, flush)
PASSTHROUGH(wrongalias, zero)
PASSTHROUGH(wrongalias, extents)
PASSTHROUGH(wrongalias, depth)
PASSTHROUGH(wrongalias, cache)
PASSTHROUGH(wrongalias, reopen)
PASSTHROUGH(wrongalias, get_size)
PASSTHROUGH(wrongalias, block_size)
PASSTHROUGH(wrongalias, can_write)
PASSTHROUGH(wrongalias, can_flush)
PASSTHROUGH(wrongalias, can_trim)
PASSTHROUGH(wrongalias, can_zero)
PASSTHROUGH(wrongalias, can_fast_zero)
PASSTHROUGH(wrongalias, can_fua)
PASSTHROUGH(wrongalias, can_cache)
PASSTHROUGH(wrongalias, can_extents)
PASSTHROUGH(wrongalias, can_multi_conn)
PASSTHROUGH(wrongalias, is_rotational)
PASSTHROUGH(wrongalias, list_exports)
PASSTHROUGH(wrongalias, preconnect)

NBD_REGISTER_FILTER(wrongalias, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "test: trim is an alias for a function of another shape",
);
