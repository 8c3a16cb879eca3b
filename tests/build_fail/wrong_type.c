/* A filter whose trim has the wrong signature (offset and count swapped,
 * as a hurried refactoring might leave it).  gcc alone only warns about
 * the pointer in the descriptor, and the call would then misbehave; the
 * registration must stop the build naming the filter and the method.
 * -DCONTROL: the right signature.  Never part of the nbdstack build.
 */
#include "layer.h"

#ifdef CONTROL
static int
wrongtype_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
               uint64_t offset, uint32_t flags)
#else
static int
wrongtype_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t offset,
               uint32_t count, uint32_t flags)
#endif
{
  (void)self;
  return next_trim(next, count, offset, flags);
}

PASSTHROUGH(wrongtype, pread)
PASSTHROUGH(wrongtype, pwrite)
PASSTHROUGH(wrongtype, flush)
PASSTHROUGH(wrongtype, zero)
PASSTHROUGH(wrongtype, extents)
PASSTHROUGH(wrongtype, depth)
PASSTHROUGH(wrongtype, cache)
PASSTHROUGH(wrongtype, reopen)
PASSTHROUGH(wrongtype, get_size)
PASSTHROUGH(wrongtype, block_size)
PASSTHROUGH(wrongtype, can_write)
PASSTHROUGH(wrongtype, can_flush)
PASSTHROUGH(wrongtype, can_trim)
PASSTHROUGH(wrongtype, can_zero)
PASSTHROUGH(wrongtype, can_fast_zero)
PASSTHROUGH(wrongtype, can_fua)
PASSTHROUGH(wrongtype, can_cache)
PASSTHROUGH(wrongtype, can_extents)
PASSTHROUGH(wrongtype, can_multi_conn)
PASSTHROUGH(wrongtype, is_rotational)
PASSTHROUGH(wrongtype, list_exports)
PASSTHROUGH(wrongtype, preconnect)

NBD_REGISTER_FILTER(wrongtype, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "test: a filter whose trim has the wrong type",
);
