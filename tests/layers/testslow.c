/* nbdstack test-only filter testslow: a slow disk.  Every write, zero and
 * trim sleeps wdelay before it goes below, and the sleep does not end
 * when the server stops (a disk does not hurry either), so a shutdown
 * test can make a cache's final write-back outlast the drain.  Built into
 * test builds only (NBD_TEST_LAYERS), never into the shipped binary.
 */
#include <time.h>

#include "layer.h"

struct testslow_conf {
  uint64_t wdelay;              /* ns */
};

static const struct nbd_param testslow_params[] = {
  { "wdelay", NBD_PARAM_DURATION, offsetof(struct testslow_conf, wdelay),
    "0", "sleep before each write, zero and trim", NULL, 0 },
  NBD_PARAM_END
};

static void
testslow_wait(const struct nbd_ctx *self)
{
  const struct testslow_conf *conf = self->layer->conf;
  struct timespec ts = { (time_t)(conf->wdelay / 1000000000),
                         (long)(conf->wdelay % 1000000000) };

  while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
    ;
}

static int
testslow_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
                uint32_t count, uint64_t offset, uint32_t flags)
{
  testslow_wait(self);
  return next_pwrite(next, buf, count, offset, flags);
}

static int
testslow_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
              uint64_t offset, uint32_t flags)
{
  testslow_wait(self);
  return next_zero(next, count, offset, flags);
}

static int
testslow_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
              uint64_t offset, uint32_t flags)
{
  testslow_wait(self);
  return next_trim(next, count, offset, flags);
}

PASSTHROUGH(testslow, pread)
PASSTHROUGH(testslow, flush)
PASSTHROUGH(testslow, extents)
PASSTHROUGH(testslow, depth)
PASSTHROUGH(testslow, cache)
PASSTHROUGH(testslow, reopen)
PASSTHROUGH(testslow, get_size)
PASSTHROUGH(testslow, block_size)
PASSTHROUGH(testslow, can_write)
PASSTHROUGH(testslow, can_flush)
PASSTHROUGH(testslow, can_trim)
PASSTHROUGH(testslow, can_zero)
PASSTHROUGH(testslow, can_fast_zero)
PASSTHROUGH(testslow, can_fua)
PASSTHROUGH(testslow, can_cache)
PASSTHROUGH(testslow, can_extents)
PASSTHROUGH(testslow, can_multi_conn)
PASSTHROUGH(testslow, is_rotational)
PASSTHROUGH(testslow, list_exports)
PASSTHROUGH(testslow, preconnect)

NBD_REGISTER_FILTER(testslow, NBD_PARALLEL, NBD_MAY_BLOCK,
  .description = "test only: sleep wdelay before each write (a slow disk)",
  .params = testslow_params,
  .conf_size = sizeof(struct testslow_conf),
);
