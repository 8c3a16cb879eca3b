/* nbdstack filter exitlast: the server exits once the last client has
 * gone (nbdkit's exitlast filter; no keys).  It never exits before the
 * first client.
 *
 * When a connection closes its stack here, the filter asks the server for
 * nbd_server_exit_when_idle: once that connection has flushed and its
 * thread has ended, a server with no connection left stops listening and
 * shuts down as on SIGTERM (layers flushed and cleaned up) and exits 0.
 * A client admitted in between cancels the request; its own close asks
 * again.  "Last" counts every connection of the server, of any export,
 * as nbdkit does (it has one).  A client that only sent NBD_OPT_LIST
 * never opened a stack and does not trigger it; nbdinfo --list, whose
 * NBD_OPT_INFO opens the export, does, as it does in nbdkit.  Under --check-config the one
 * open and close of every stack does nothing here.  The filter changes no
 * request.
 */
#include "layer.h"

static void
exitlast_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)next;
  if (nbd_conn_info(self) != NULL && !nbd_checking())
    nbd_server_exit_when_idle();
}

/* Keeps the engine's direct path for write payloads. */
static int
exitlast_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                     struct nbd_source *src, uint32_t count, uint64_t offset,
                     uint32_t flags)
{
  (void)self;
  return next_pwrite_from(next, src, count, offset, flags);
}

PASSTHROUGH(exitlast, pread)
PASSTHROUGH(exitlast, pwrite)
PASSTHROUGH(exitlast, flush)
PASSTHROUGH(exitlast, trim)
PASSTHROUGH(exitlast, zero)
PASSTHROUGH(exitlast, extents)
PASSTHROUGH(exitlast, depth)
PASSTHROUGH(exitlast, cache)
PASSTHROUGH(exitlast, reopen)
PASSTHROUGH(exitlast, get_size)
PASSTHROUGH(exitlast, block_size)
PASSTHROUGH(exitlast, can_write)
PASSTHROUGH(exitlast, can_flush)
PASSTHROUGH(exitlast, can_trim)
PASSTHROUGH(exitlast, can_zero)
PASSTHROUGH(exitlast, can_fast_zero)
PASSTHROUGH(exitlast, can_fua)
PASSTHROUGH(exitlast, can_cache)
PASSTHROUGH(exitlast, can_extents)
PASSTHROUGH(exitlast, can_multi_conn)
PASSTHROUGH(exitlast, is_rotational)
PASSTHROUGH(exitlast, list_exports)
PASSTHROUGH(exitlast, preconnect)

NBD_REGISTER_FILTER(exitlast, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "exit the server when the last client has gone",
  .close = exitlast_close,
  .pwrite_from = exitlast_pwrite_from,
);
