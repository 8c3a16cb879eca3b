/* nbdstack filter fua: change how the FUA flag and flushes are handled
 * (nbdkit's fua filter, same key, modes and default).
 *
 *   none     FUA not advertised; clients flush instead (the default)
 *   emulate  FUA advertised, done by a flush after the write (the engine
 *            does it: this filter only answers can_fua EMULATE)
 *   native   FUA advertised as native and passed down
 *   force    every write, trim and zero goes down with FUA; flush is a
 *            no-op, since nothing can be left unwritten
 *   pass     no change at all
 *   discard  FUA stripped and flushes dropped (unsafe: data loss on crash)
 *
 * The datapath is one expression per request, (flags & ~clear) | set with
 * the two masks fixed at setup, then one call below: nothing moves,
 * nothing is read or written here, and extents keep their meaning.  This
 * file does not emulate anything itself (the engine does).
 */
#include <string.h>

#include "layer.h"

enum fua_mode { FUA_NONE, FUA_EMULATE, FUA_NATIVE, FUA_FORCE, FUA_PASS,
                FUA_DISCARD };

static const char *const fua_modes[] = {
  "none", "emulate", "native", "force", "pass", "discard", NULL
};

struct fua_conf {
  int mode;                   /* enum fua_mode */
  uint32_t set, clear;        /* command flags added / removed (setup) */
};

static const struct nbd_param fua_params[] = {
  { "fuamode", NBD_PARAM_ENUM, offsetof(struct fua_conf, mode), "none",
    "none: FUA not advertised; emulate: by a flush after the write; "
    "native: advertised as native, passed down; force: every write with "
    "FUA, flush a no-op; pass: unchanged; discard: FUA and flush dropped "
    "(unsafe)", fua_modes, 0 },
  NBD_PARAM_END
};

static int
fua_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct fua_conf *c = layer->conf;

  (void)err;
  (void)errlen;
  c->set = c->mode == FUA_FORCE ? NBD_CMD_FLAG_FUA : 0;
  c->clear = c->mode == FUA_DISCARD ? NBD_CMD_FLAG_FUA : 0;
  return 0;
}

static const struct fua_conf *
fua_conf(const struct nbd_ctx *self)
{
  return self->layer->conf;
}

static uint32_t
fua_flags(const struct nbd_ctx *self, uint32_t flags)
{
  const struct fua_conf *c = fua_conf(self);

  return (flags & ~c->clear) | c->set;
}

/* The layer below must be able to do what the mode promises; checked at
 * open so the connection fails with this line in the log (nbdkit 1.32.5
 * names the wrong mode here: "fuamode 'force'" for native). */
static int
fua_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  int mode = fua_conf(self)->mode, r;

  if (readonly)
    return 0;
  switch (mode) {
  case FUA_EMULATE:
    if ((r = next_can_flush(next)) < 0)
      return r;
    if (r == 0) {
      nbd_error("export '%s': filter fua: fuamode 'emulate' needs flush "
                "support in the layer below", self->layer->export_name);
      return -EINVAL;
    }
    return 0;
  case FUA_NATIVE:
  case FUA_FORCE:
    if ((r = next_can_fua(next)) < 0)
      return r;
    if (r == NBD_FUA_NONE) {
      nbd_error("export '%s': filter fua: fuamode '%s' needs FUA support "
                "(native or by flush) in the layer below",
                self->layer->export_name, fua_modes[mode]);
      return -EINVAL;
    }
    return 0;
  default:
    return 0;
  }
}

static int
fua_can_fua(struct nbd_ctx *self, struct nbd_ctx *next)
{
  switch (fua_conf(self)->mode) {
  case FUA_NONE:
    return NBD_FUA_NONE;
  case FUA_EMULATE:
    return NBD_FUA_EMULATE;
  case FUA_PASS:
    return next_can_fua(next);
  default:                    /* native, force, discard */
    return NBD_FUA_NATIVE;
  }
}

/* force and discard advertise their no-op flush even when the layer
 * below cannot flush. */
static int
fua_can_flush(struct nbd_ctx *self, struct nbd_ctx *next)
{
  int mode = fua_conf(self)->mode;

  if (mode == FUA_FORCE || mode == FUA_DISCARD)
    return 1;
  return next_can_flush(next);
}

static int
fua_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  int mode = fua_conf(self)->mode;

  if (mode == FUA_FORCE || mode == FUA_DISCARD)
    return 0;
  return next_flush(next, flags);
}

/* FUA arrives here only when can_fua said NATIVE (the engine strips it for
 * EMULATE and refuses it for NONE); force adds it, discard removes it. */
static int
fua_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
           uint32_t count, uint64_t offset, uint32_t flags)
{
  return next_pwrite(next, buf, count, offset, fua_flags(self, flags));
}

static int
fua_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                struct nbd_source *src, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  return next_pwrite_from(next, src, count, offset, fua_flags(self, flags));
}

static int
fua_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
         uint64_t offset, uint32_t flags)
{
  return next_trim(next, count, offset, fua_flags(self, flags));
}

static int
fua_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
         uint64_t offset, uint32_t flags)
{
  return next_zero(next, count, offset, fua_flags(self, flags));
}

/* Reads, extents and cache carry no FUA; data and offsets are unchanged. */
PASSTHROUGH(fua, pread)
PASSTHROUGH(fua, extents)
PASSTHROUGH(fua, depth)
PASSTHROUGH(fua, cache)

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define fua_reopen nbd_reopen_close_open

PASSTHROUGH(fua, get_size)
PASSTHROUGH(fua, block_size)
PASSTHROUGH(fua, can_write)
PASSTHROUGH(fua, can_trim)
PASSTHROUGH(fua, can_zero)
PASSTHROUGH(fua, can_fast_zero)
PASSTHROUGH(fua, can_cache)
PASSTHROUGH(fua, can_extents)
PASSTHROUGH(fua, can_multi_conn)
PASSTHROUGH(fua, is_rotational)
PASSTHROUGH(fua, list_exports)
PASSTHROUGH(fua, preconnect)

NBD_REGISTER_FILTER(fua, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "change how FUA and flush are advertised and handled",
  .params = fua_params,
  .conf_size = sizeof(struct fua_conf),
  .pwrite_from = fua_pwrite_from,
  .setup = fua_setup,
  .prepare = fua_prepare,
);
