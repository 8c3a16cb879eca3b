/* nbdstack backend zero: a disk of zero bytes.
 *
 * Like nbdkit's zero plugin (deprecated there in favour of "null"): it
 * has no keys and no content, so a client can connect, see size 0 and
 * do nothing else.  Read-only; the engine refuses every request against
 * a disk of size 0 before it could reach this file.
 */
#include <string.h>

#include "layer.h"

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define zero_reopen nbd_reopen_close_open

static int64_t
zero_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 0;
}

/* Never reached (every range is past the end), kept for completeness. */
static int
zero_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
           uint32_t count, uint64_t offset, uint32_t flags)
{
  memset(buf, 0, count);
  return 0;
}

/* Nothing to bring in; advertised as nbdkit's zero plugin does. */
static int
zero_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  return 0;
}

static int
zero_can_cache(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_CACHE_NATIVE;
}

static int
zero_can_multi_conn(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 1;
}

UNSUPPORTED(zero, pwrite)
UNSUPPORTED(zero, flush)
UNSUPPORTED(zero, trim)
UNSUPPORTED(zero, zero)
UNSUPPORTED(zero, extents)
UNSUPPORTED(zero, depth)
UNSUPPORTED(zero, block_size)
UNSUPPORTED(zero, can_write)
UNSUPPORTED(zero, can_flush)
UNSUPPORTED(zero, can_trim)
UNSUPPORTED(zero, can_zero)
UNSUPPORTED(zero, can_fast_zero)
UNSUPPORTED(zero, can_fua)
UNSUPPORTED(zero, can_extents)
UNSUPPORTED(zero, is_rotational)
UNSUPPORTED(zero, list_exports)
UNSUPPORTED(zero, preconnect)

NBD_REGISTER_BACKEND(zero, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "a disk of size 0 (nbdkit's zero plugin)",
);
