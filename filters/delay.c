/* nbdstack filter delay: sleep before passing requests on, to play a slow
 * or remote disk (nbdkit's delay filter, same keys, units and defaults).
 *
 * Each kind of request has its own delay; rdelay and wdelay are nbdkit's
 * older keys (wdelay covers write, zero and trim).  A specific key wins
 * over the older one whatever their order in the config (nbdkit lets the
 * last one win).  Delays are per request, never per connection or export:
 * the filter registers NBD_MAY_BLOCK and NBD_PARALLEL, so the engine runs
 * requests on per-connection workers and one sleeping request holds no
 * other.  nbd_sleep ends early when the server stops; the request then
 * fails with ESHUTDOWN, so a stop never waits out a long delay.
 *
 * No pwrite_from: a delayed write must not hold the socket while it
 * sleeps, so the engine reads the payload first and calls pwrite.  Flush
 * is not delayed (nbdkit has no key for it).  The filter changes no
 * offsets, data or extents; every capability is the layer below's,
 * except can_fast_zero (see delay_can_fast_zero).
 */
#include "layer.h"

struct delay_conf {
  /* As given (ns). */
  uint64_t rdelay, wdelay;
  uint64_t read, write, zero, trim, extents, cache, open, close;
  int fast_zero;
};

static const struct nbd_param delay_params[] = {
  { "rdelay", NBD_PARAM_DURATION, offsetof(struct delay_conf, rdelay), "0",
    "delay reads (older name of delay-read)", NULL, 0 },
  { "wdelay", NBD_PARAM_DURATION, offsetof(struct delay_conf, wdelay), "0",
    "delay writes, zeros and trims (each unless its own key is given)",
    NULL, 0 },
  { "delay-read", NBD_PARAM_DURATION, offsetof(struct delay_conf, read), "0",
    "delay reads: seconds (1, 1.5) or 10ms, 500us", NULL, 0 },
  { "delay-write", NBD_PARAM_DURATION, offsetof(struct delay_conf, write),
    "0", "delay writes", NULL, 0 },
  { "delay-zero", NBD_PARAM_DURATION, offsetof(struct delay_conf, zero), "0",
    "delay zero requests", NULL, 0 },
  { "delay-trim", NBD_PARAM_DURATION, offsetof(struct delay_conf, trim), "0",
    "delay trim requests", NULL, 0 },
  { "delay-extents", NBD_PARAM_DURATION,
    offsetof(struct delay_conf, extents), "0",
    "delay block status (extents) requests", NULL, 0 },
  { "delay-cache", NBD_PARAM_DURATION, offsetof(struct delay_conf, cache),
    "0", "delay cache requests", NULL, 0 },
  { "delay-fast-zero", NBD_PARAM_BOOL, offsetof(struct delay_conf, fast_zero),
    "yes", "yes: fast zeros wait like other zeros; no: with delay-zero set, "
    "fail them at once with ENOTSUP", NULL, 0 },
  { "delay-open", NBD_PARAM_DURATION, offsetof(struct delay_conf, open), "0",
    "delay each client's connection (open)", NULL, 0 },
  { "delay-close", NBD_PARAM_DURATION, offsetof(struct delay_conf, close),
    "0", "delay each client's disconnection (close)", NULL, 0 },
  NBD_PARAM_END
};

/* The older keys fill in what the specific ones leave unset, so the
 * datapath reads one field per request. */
static int
delay_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct delay_conf *c = layer->conf;

  (void)err;
  (void)errlen;
  if (!nbd_layer_param_set(layer, "delay-read"))
    c->read = c->rdelay;
  if (!nbd_layer_param_set(layer, "delay-write"))
    c->write = c->wdelay;
  if (!nbd_layer_param_set(layer, "delay-zero"))
    c->zero = c->wdelay;
  if (!nbd_layer_param_set(layer, "delay-trim"))
    c->trim = c->wdelay;
  return 0;
}

static const struct delay_conf *
delay_conf(const struct nbd_ctx *self)
{
  return self->layer->conf;
}

/* 0, or -ESHUTDOWN when the server stopped during the sleep. */
static int
delay_wait(uint64_t ns)
{
  return ns ? nbd_sleep(ns) : 0;
}

static int
delay_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
            uint32_t count, uint64_t offset, uint32_t flags)
{
  int r;

  if ((r = delay_wait(delay_conf(self)->read)) < 0)
    return r;
  return next_pread(next, buf, count, offset, flags);
}

static int
delay_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
             uint32_t count, uint64_t offset, uint32_t flags)
{
  int r;

  if ((r = delay_wait(delay_conf(self)->write)) < 0)
    return r;
  return next_pwrite(next, buf, count, offset, flags);
}

/* With delay-fast-zero=no, a fast zero is refused at once, without
 * asking below (nbdkit's rule): a zero that is known to be slow is not
 * fast.  Only when there is a zero delay; without one nothing is slowed. */
static int
delay_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  const struct delay_conf *c = delay_conf(self);
  int r;

  if ((flags & NBD_CMD_FLAG_FAST_ZERO) && c->zero && !c->fast_zero)
    return -ENOTSUP;
  if ((r = delay_wait(c->zero)) < 0)
    return r;
  return next_zero(next, count, offset, flags);
}

static int
delay_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  int r;

  if ((r = delay_wait(delay_conf(self)->trim)) < 0)
    return r;
  return next_trim(next, count, offset, flags);
}

static int
delay_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
              uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  int r;

  if ((r = delay_wait(delay_conf(self)->extents)) < 0)
    return r;
  return next_extents(next, count, offset, flags, extents);
}

/* Block status of the other context: the same delay. */
static int
delay_depth(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  int r;

  if ((r = delay_wait(delay_conf(self)->extents)) < 0)
    return r;
  return next_depth(next, count, offset, flags, extents);
}

static int
delay_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags)
{
  int r;

  if ((r = delay_wait(delay_conf(self)->cache)) < 0)
    return r;
  return next_cache(next, count, offset, flags);
}

/* When this filter answers fast zeros itself (refusing them), it can
 * advertise fast zero whatever the layer below says, as nbdkit does. */
static int
delay_can_fast_zero(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct delay_conf *c = delay_conf(self);

  if (c->zero && !c->fast_zero)
    return 1;
  return next_can_fast_zero(next);
}

static int
delay_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  (void)next;
  (void)readonly;
  return delay_wait(delay_conf(self)->open);
}

/* A stopping server cuts the sleep short (nbdkit waits it out). */
static void
delay_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)next;
  (void)delay_wait(delay_conf(self)->close);
}

/* Not delayed, and no change to offsets, data or extents. */
PASSTHROUGH(delay, flush)

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define delay_reopen nbd_reopen_close_open

PASSTHROUGH(delay, get_size)
PASSTHROUGH(delay, block_size)
PASSTHROUGH(delay, can_write)
PASSTHROUGH(delay, can_flush)
PASSTHROUGH(delay, can_trim)
PASSTHROUGH(delay, can_zero)
PASSTHROUGH(delay, can_fua)
PASSTHROUGH(delay, can_cache)
PASSTHROUGH(delay, can_extents)
PASSTHROUGH(delay, can_multi_conn)
PASSTHROUGH(delay, is_rotational)
PASSTHROUGH(delay, list_exports)
PASSTHROUGH(delay, preconnect)

NBD_REGISTER_FILTER(delay,
  NBD_PARALLEL,                 /* no shared state on the datapath */
  NBD_MAY_BLOCK,                /* sleeps: requests go to workers */
  .description = "delay requests by kind (a slow or remote disk)",
  .params = delay_params,
  .conf_size = sizeof(struct delay_conf),
  .setup = delay_setup,
  .open = delay_open,
  .close = delay_close,
);
