/* nbdstack test-only filter testrefuse: its open fails with the errno
 * given (refuse=EPERM, EACCES, ENOENT, EBUSY or EIO), so that tests see
 * how the handshake answers and counts a layer that turns a client away
 * (the metrics' refusal reasons).  Everything else passes through.  Built
 * into test builds only.
 */
#include <stddef.h>

#include "layer.h"

struct testrefuse_conf {
  int refuse;
};

static const char *const testrefuse_names[] = {
  "EPERM", "EACCES", "ENOENT", "EBUSY", "EIO", NULL
};
static const int testrefuse_errnos[] = { EPERM, EACCES, ENOENT, EBUSY, EIO };

static const struct nbd_param testrefuse_params[] = {
  { "refuse", NBD_PARAM_ENUM, offsetof(struct testrefuse_conf, refuse),
    "EPERM", "the errno open fails with", testrefuse_names, 0 },
  NBD_PARAM_END
};

static int
testrefuse_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  const struct testrefuse_conf *c = self->layer->conf;

  (void)next;
  (void)readonly;
  if (nbd_checking())
    return 0;
  return -testrefuse_errnos[c->refuse];
}

PASSTHROUGH(testrefuse, pread)
PASSTHROUGH(testrefuse, pwrite)
PASSTHROUGH(testrefuse, flush)
PASSTHROUGH(testrefuse, trim)
PASSTHROUGH(testrefuse, zero)
PASSTHROUGH(testrefuse, extents)
PASSTHROUGH(testrefuse, depth)
PASSTHROUGH(testrefuse, cache)
PASSTHROUGH(testrefuse, reopen)
PASSTHROUGH(testrefuse, get_size)
PASSTHROUGH(testrefuse, block_size)
PASSTHROUGH(testrefuse, can_write)
PASSTHROUGH(testrefuse, can_flush)
PASSTHROUGH(testrefuse, can_trim)
PASSTHROUGH(testrefuse, can_zero)
PASSTHROUGH(testrefuse, can_fast_zero)
PASSTHROUGH(testrefuse, can_fua)
PASSTHROUGH(testrefuse, can_cache)
PASSTHROUGH(testrefuse, can_extents)
PASSTHROUGH(testrefuse, can_multi_conn)
PASSTHROUGH(testrefuse, is_rotational)
PASSTHROUGH(testrefuse, list_exports)
PASSTHROUGH(testrefuse, preconnect)

NBD_REGISTER_FILTER(testrefuse, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "test only: open fails with refuse=ERRNO",
  .params = testrefuse_params,
  .conf_size = sizeof(struct testrefuse_conf),
  .open = testrefuse_open,
);
