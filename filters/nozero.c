/* nbdstack filter nozero: change how zero requests (NBD_CMD_WRITE_ZEROES)
 * and fast zeroes are advertised and handled (nbdkit's nozero filter,
 * same keys, modes and defaults).
 *
 *   zeromode=none     zero not advertised: clients write zeros (default)
 *   zeromode=emulate  zero advertised, done by writing zeros (pwrite)
 *   zeromode=notrim   zero passed down with NO_HOLE: never punches holes
 *   zeromode=plugin   zero passed down unchanged
 *   fastzeromode=default  emulate: advertised, every fast zero fails;
 *                         notrim/plugin: as the layer below
 *   fastzeromode=none     fast zero not advertised
 *   fastzeromode=slow     advertised, every fast zero fails with ENOTSUP
 *   fastzeromode=ignore   advertised, the flag dropped (unsafe)
 *
 * Emulation is the engine's: in emulate mode this filter answers can_zero
 * NATIVE (so fast zero can be advertised as nbdkit does) and its zero
 * declines with -EOPNOTSUPP, on which the engine writes zeros through this
 * layer's pwrite.  Offsets, data and extents are unchanged.
 */
#include <string.h>

#include "layer.h"

enum nozero_mode { NOZERO_NONE, NOZERO_EMULATE, NOZERO_NOTRIM,
                   NOZERO_PLUGIN };
enum nozero_fast { NOZERO_FAST_DEFAULT, NOZERO_FAST_NONE, NOZERO_FAST_SLOW,
                   NOZERO_FAST_IGNORE };

static const char *const nozero_modes[] = {
  "none", "emulate", "notrim", "plugin", NULL
};
static const char *const nozero_fast_modes[] = {
  "default", "none", "slow", "ignore", NULL
};

struct nozero_conf {
  int mode;                   /* enum nozero_mode */
  int fast;                   /* enum nozero_fast */
};

static const struct nbd_param nozero_params[] = {
  { "zeromode", NBD_PARAM_ENUM, offsetof(struct nozero_conf, mode), "none",
    "none: zero not advertised; emulate: done by writing zeros; notrim: "
    "passed down with NO_HOLE; plugin: passed down unchanged",
    nozero_modes, 0 },
  { "fastzeromode", NBD_PARAM_ENUM, offsetof(struct nozero_conf, fast),
    "default", "default: emulate fails fast zeroes, others as below; none: "
    "not advertised; slow: advertised, always ENOTSUP; ignore: the flag "
    "dropped (unsafe)", nozero_fast_modes, 0 },
  NBD_PARAM_END
};

static const struct nozero_conf *
nozero_conf(const struct nbd_ctx *self)
{
  return self->layer->conf;
}

/* notrim and plugin pass zero down, so the layer below must have it. */
static int
nozero_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  int mode = nozero_conf(self)->mode, r;

  if (readonly || (mode != NOZERO_NOTRIM && mode != NOZERO_PLUGIN))
    return 0;
  if ((r = next_can_zero(next)) < 0)
    return r;
  if (r == NBD_ZERO_NONE) {
    nbd_error("export '%s': filter nozero: zeromode '%s' needs zero support "
              "in the layer below", self->layer->export_name,
              nozero_modes[mode]);
    return -EINVAL;
  }
  return 0;
}

/* NATIVE for emulate too: the engine advertises fast zero only over a
 * native zero, and falls back to writing zeros when zero declines. */
static int
nozero_can_zero(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)next;
  return nozero_conf(self)->mode == NOZERO_NONE ? NBD_ZERO_NONE
                                                : NBD_ZERO_NATIVE;
}

static int
nozero_can_fast_zero(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct nozero_conf *c = nozero_conf(self);

  if (c->mode == NOZERO_NONE)
    return 0;
  if (c->mode != NOZERO_EMULATE && c->fast == NOZERO_FAST_DEFAULT)
    return next_can_fast_zero(next);
  return c->fast != NOZERO_FAST_NONE;
}

static int
nozero_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags)
{
  const struct nozero_conf *c = nozero_conf(self);

  if (flags & NBD_CMD_FLAG_FAST_ZERO) {
    if (c->fast == NOZERO_FAST_SLOW ||
        (c->fast == NOZERO_FAST_DEFAULT && c->mode == NOZERO_EMULATE))
      return -ENOTSUP;
    /* ignore: the same request without the flag, through the engine again
     * on this layer, so that in emulate mode the engine's fallback (which
     * a fast zero never gets) writes the zeros. */
    if (c->fast == NOZERO_FAST_IGNORE)
      return next_zero(self, count, offset, flags & ~NBD_CMD_FLAG_FAST_ZERO);
  }
  switch (c->mode) {
  case NOZERO_NOTRIM:
    return next_zero(next, count, offset, flags | NBD_CMD_FLAG_NO_HOLE);
  case NOZERO_PLUGIN:
    return next_zero(next, count, offset, flags);
  default:
    /* emulate: the engine writes zeros through nozero_pwrite.  none: the
     * engine never calls zero (can_zero said NONE). */
    return -EOPNOTSUPP;
  }
}

/* Writes are how emulated zeros reach the layer below: one call each. */
PASSTHROUGH(nozero, pread)
PASSTHROUGH(nozero, pwrite)
PASSTHROUGH(nozero, flush)
PASSTHROUGH(nozero, trim)
PASSTHROUGH(nozero, extents)
PASSTHROUGH(nozero, depth)
PASSTHROUGH(nozero, cache)

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define nozero_reopen nbd_reopen_close_open

PASSTHROUGH(nozero, get_size)
PASSTHROUGH(nozero, block_size)
PASSTHROUGH(nozero, can_write)
PASSTHROUGH(nozero, can_flush)
PASSTHROUGH(nozero, can_trim)
PASSTHROUGH(nozero, can_fua)
PASSTHROUGH(nozero, can_cache)
PASSTHROUGH(nozero, can_extents)
PASSTHROUGH(nozero, can_multi_conn)
PASSTHROUGH(nozero, is_rotational)
PASSTHROUGH(nozero, list_exports)
PASSTHROUGH(nozero, preconnect)

static int
nozero_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                   struct nbd_source *src, uint32_t count, uint64_t offset,
                   uint32_t flags)
{
  (void)self;
  return next_pwrite_from(next, src, count, offset, flags);
}

NBD_REGISTER_FILTER(nozero, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "change how zero and fast zero are advertised and handled",
  .params = nozero_params,
  .conf_size = sizeof(struct nozero_conf),
  .pwrite_from = nozero_pwrite_from,
  .prepare = nozero_prepare,
);
