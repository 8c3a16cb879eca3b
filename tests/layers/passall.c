/* nbdstack filter passall: passes every request to the layer below
 * unchanged.  It is the template of README.md ("Writing a filter"); it
 * lives in tests/layers/, built into test builds only, so that the tests
 * compile it, serve it and keep the README's copy identical to it.
 */
#include "layer.h"

/* The optional fast path, forwarded so a write payload still reaches the
 * backend's pages straight from the socket (memory). */
static int
passall_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                    struct nbd_source *src, uint32_t count, uint64_t offset,
                    uint32_t flags)
{
  return next_pwrite_from(next, src, count, offset, flags);
}

PASSTHROUGH(passall, pread)
PASSTHROUGH(passall, pwrite)
PASSTHROUGH(passall, flush)
PASSTHROUGH(passall, trim)
PASSTHROUGH(passall, zero)
PASSTHROUGH(passall, extents)
PASSTHROUGH(passall, depth)
PASSTHROUGH(passall, cache)
PASSTHROUGH(passall, reopen)
PASSTHROUGH(passall, get_size)
PASSTHROUGH(passall, block_size)
PASSTHROUGH(passall, can_write)
PASSTHROUGH(passall, can_flush)
PASSTHROUGH(passall, can_trim)
PASSTHROUGH(passall, can_zero)
PASSTHROUGH(passall, can_fast_zero)
PASSTHROUGH(passall, can_fua)
PASSTHROUGH(passall, can_cache)
PASSTHROUGH(passall, can_extents)
PASSTHROUGH(passall, can_multi_conn)
PASSTHROUGH(passall, is_rotational)
PASSTHROUGH(passall, list_exports)
PASSTHROUGH(passall, preconnect)

NBD_REGISTER_FILTER(passall,
  NBD_PARALLEL,                       /* thread model: adds no shared state */
  NBD_NEVER_BLOCKS,                   /* nonblocking: adds no waiting */
  .description = "pass every request through unchanged (the filter template)",
  .pwrite_from = passall_pwrite_from,
);
