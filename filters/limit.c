/* nbdstack filter limit: at most limit=N clients of the export at once
 * (nbdkit's limit filter: same key, default 1, 0 = no limit).
 *
 * A client over the limit is refused in the handshake: its NBD_OPT_GO
 * gets an error reply that says why (nbdkit drops the connection in
 * preconnect, so a client cannot tell a refusal from a crash).  The count
 * is of stacks open now, taken in open and given back in close, so
 * NBD_OPT_INFO, which opens and closes, holds no slot afterwards.  The
 * count is this export's (the filter instance's); the server-wide bound
 * stays max-connections.  The filter changes no request.
 */
#include <stdlib.h>

#include "layer.h"

struct limit_conf {
  uint64_t limit;
};

static const struct nbd_param limit_params[] = {
  { "limit", NBD_PARAM_UINT, offsetof(struct limit_conf, limit), "1",
    "clients of this export at once (0 = no limit)", NULL, 0 },
  NBD_PARAM_END
};

struct limit_state {
  atomic_ullong open;           /* stacks open now */
};

static int
limit_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct limit_state *st = calloc(1, sizeof *st);

  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  layer->state = st;
  return 0;
}

static void
limit_cleanup(struct nbd_layer *layer)
{
  free(layer->state);
  layer->state = NULL;
}

static int
limit_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  const struct limit_conf *c = self->layer->conf;
  struct limit_state *st = self->layer->state;
  const struct nbd_conn_info *i = nbd_conn_info(self);

  (void)next;
  (void)readonly;
  if (atomic_fetch_add(&st->open, 1) + 1 > c->limit && c->limit) {
    atomic_fetch_sub(&st->open, 1);
    nbd_info("limit: export \"%s\": refusing connection %llu: %llu "
             "clients at once is the limit", self->layer->export_name,
             i ? (unsigned long long)i->id : 0ull,
             (unsigned long long)c->limit);
    return -EBUSY;
  }
  return 0;
}

/* Only called for a context whose open succeeded. */
static void
limit_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct limit_state *st = self->layer->state;

  (void)next;
  atomic_fetch_sub(&st->open, 1);
}

static int
limit_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                  struct nbd_source *src, uint32_t count, uint64_t offset,
                  uint32_t flags)
{
  (void)self;
  return next_pwrite_from(next, src, count, offset, flags);
}

PASSTHROUGH(limit, pread)
PASSTHROUGH(limit, pwrite)
PASSTHROUGH(limit, flush)
PASSTHROUGH(limit, trim)
PASSTHROUGH(limit, zero)
PASSTHROUGH(limit, extents)
PASSTHROUGH(limit, depth)
PASSTHROUGH(limit, cache)
PASSTHROUGH(limit, reopen)
PASSTHROUGH(limit, get_size)
PASSTHROUGH(limit, block_size)
PASSTHROUGH(limit, can_write)
PASSTHROUGH(limit, can_flush)
PASSTHROUGH(limit, can_trim)
PASSTHROUGH(limit, can_zero)
PASSTHROUGH(limit, can_fast_zero)
PASSTHROUGH(limit, can_fua)
PASSTHROUGH(limit, can_cache)
PASSTHROUGH(limit, can_extents)
PASSTHROUGH(limit, can_multi_conn)
PASSTHROUGH(limit, is_rotational)
PASSTHROUGH(limit, list_exports)
PASSTHROUGH(limit, preconnect)

NBD_REGISTER_FILTER(limit, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "limit how many clients use the export at once",
  .params = limit_params,
  .conf_size = sizeof(struct limit_conf),
  .setup = limit_setup,
  .cleanup = limit_cleanup,
  .open = limit_open,
  .close = limit_close,
  .pwrite_from = limit_pwrite_from,
);
