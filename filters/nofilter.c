/* nbdstack filter nofilter: passes every request to the layer below
 * unchanged (nbdkit's nofilter filter, no keys).  Like nbdkit's, it is
 * there to test the filter machinery and the clients: a stack with it
 * must serve exactly what the stack without it serves.
 */
#include "layer.h"

/* The optional fast path, forwarded so a write payload still reaches the
 * backend's pages straight from the socket (memory). */
static int
nofilter_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                    struct nbd_source *src, uint32_t count, uint64_t offset,
                    uint32_t flags)
{
  return next_pwrite_from(next, src, count, offset, flags);
}

PASSTHROUGH(nofilter, pread)
PASSTHROUGH(nofilter, pwrite)
PASSTHROUGH(nofilter, flush)
PASSTHROUGH(nofilter, trim)
PASSTHROUGH(nofilter, zero)
PASSTHROUGH(nofilter, extents)
PASSTHROUGH(nofilter, depth)
PASSTHROUGH(nofilter, cache)
PASSTHROUGH(nofilter, reopen)
PASSTHROUGH(nofilter, get_size)
PASSTHROUGH(nofilter, block_size)
PASSTHROUGH(nofilter, can_write)
PASSTHROUGH(nofilter, can_flush)
PASSTHROUGH(nofilter, can_trim)
PASSTHROUGH(nofilter, can_zero)
PASSTHROUGH(nofilter, can_fast_zero)
PASSTHROUGH(nofilter, can_fua)
PASSTHROUGH(nofilter, can_cache)
PASSTHROUGH(nofilter, can_extents)
PASSTHROUGH(nofilter, can_multi_conn)
PASSTHROUGH(nofilter, is_rotational)
PASSTHROUGH(nofilter, list_exports)
PASSTHROUGH(nofilter, preconnect)

NBD_REGISTER_FILTER(nofilter,
  NBD_PARALLEL,                       /* thread model: adds no shared state */
  NBD_NEVER_BLOCKS,                   /* nonblocking: adds no waiting */
  .description = "pass every request through unchanged (nbdkit's nofilter, for tests)",
  .pwrite_from = nofilter_pwrite_from,
);
