/* nbdstack filter noparallel: serve requests one at a time (nbdkit's
 * noparallel filter, same key and default).
 *
 * serialize=requests: one request at a time per connection;
 * all-requests: one at a time across all connections; connections: one
 * connection at a time (a second client waits in the handshake until the
 * first leaves).  The filter only lowers its instance's thread model in
 * setup; the export runs with the most restrictive model of its layers,
 * and the scheduler enforces it.  Every request passes through unchanged.
 * With serialize=connections multi-conn is not offered, as in nbdkit: a
 * client opening a second connection would wait for its own first.
 */
#include "layer.h"

struct noparallel_conf {
  int serialize;              /* index into noparallel_modes */
};

static const char *const noparallel_modes[] = {
  "requests", "all-requests", "connections", NULL
};

/* The thread model of each mode, in noparallel_modes' order. */
static const enum nbd_thread_model noparallel_models[] = {
  NBD_SERIALIZE_REQUESTS, NBD_SERIALIZE_ALL_REQUESTS,
  NBD_SERIALIZE_CONNECTIONS,
};

static const struct nbd_param noparallel_params[] = {
  { "serialize", NBD_PARAM_ENUM, offsetof(struct noparallel_conf, serialize),
    "requests", "one request at a time per connection (requests), across "
    "all connections (all-requests), or one connection at a time "
    "(connections)", noparallel_modes, 0 },
  NBD_PARAM_END
};

static int
noparallel_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct noparallel_conf *conf = layer->conf;
  enum nbd_thread_model m = noparallel_models[conf->serialize];

  if (m < layer->thread_model)
    layer->thread_model = m;
  return 0;
}

static int
noparallel_can_multi_conn(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct noparallel_conf *conf = self->layer->conf;

  if (noparallel_models[conf->serialize] == NBD_SERIALIZE_CONNECTIONS)
    return 0;
  return next_can_multi_conn(next);
}

/* The optional fast path, forwarded so a write payload still reaches the
 * backend straight from the socket. */
static int
noparallel_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                       struct nbd_source *src, uint32_t count,
                       uint64_t offset, uint32_t flags)
{
  return next_pwrite_from(next, src, count, offset, flags);
}

/* Serialising changes no offset, data or extent. */
PASSTHROUGH(noparallel, pread)
PASSTHROUGH(noparallel, pwrite)
PASSTHROUGH(noparallel, flush)
PASSTHROUGH(noparallel, trim)
PASSTHROUGH(noparallel, zero)
PASSTHROUGH(noparallel, extents)
PASSTHROUGH(noparallel, depth)
PASSTHROUGH(noparallel, cache)
PASSTHROUGH(noparallel, reopen)
PASSTHROUGH(noparallel, get_size)
PASSTHROUGH(noparallel, block_size)
PASSTHROUGH(noparallel, can_write)
PASSTHROUGH(noparallel, can_flush)
PASSTHROUGH(noparallel, can_trim)
PASSTHROUGH(noparallel, can_zero)
PASSTHROUGH(noparallel, can_fast_zero)
PASSTHROUGH(noparallel, can_fua)
PASSTHROUGH(noparallel, can_cache)
PASSTHROUGH(noparallel, can_extents)
PASSTHROUGH(noparallel, is_rotational)
PASSTHROUGH(noparallel, list_exports)
PASSTHROUGH(noparallel, preconnect)

NBD_REGISTER_FILTER(noparallel,
  NBD_PARALLEL,                 /* setup lowers it to the mode's model */
  NBD_NEVER_BLOCKS,             /* adds no waiting of its own */
  .description = "serve requests (or connections) one at a time",
  .params = noparallel_params,
  .conf_size = sizeof(struct noparallel_conf),
  .pwrite_from = noparallel_pwrite_from,
  .setup = noparallel_setup,
);
