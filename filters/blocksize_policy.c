/* nbdstack filter blocksize_policy: change the block-size constraints the
 * layers above (and so the client, NBD_INFO_BLOCK_SIZE) see, and choose
 * what happens to a request that breaks them (nbdkit's
 * blocksize-policy filter, same keys and defaults).
 *
 * The filter itself checks nothing on the datapath: every request is
 * passed on unchanged.  The engine enforces a layer's minimum and maximum
 * at that layer's boundary (EINVAL, the layer never sees the request);
 * that is error-policy=error.  With allow (the default, as in nbdkit) the
 * block_size answer is marked advisory (nbd_block_size_advisory, layer.h)
 * and the engine lets such requests through to this layer, which hands
 * them to the layer below: the layer below still enforces its own limits.
 */
#include <inttypes.h>

#include "layer.h"

#define POLICY_NONE      0xffffffffu

struct blocksize_policy_conf {
  uint64_t minimum, preferred, maximum;
  int error_policy;           /* index in blocksize_policy_choices */
};

static const char *const blocksize_policy_choices[] = { "allow", "error", NULL };
enum { POLICY_ALLOW, POLICY_ERROR };

static const struct nbd_param blocksize_policy_params[] = {
  { "blocksize-minimum", NBD_PARAM_SIZE,
    offsetof(struct blocksize_policy_conf, minimum), NULL,
    "minimum block size advertised, a power of 2 from 1 to 64K "
    "(default: the layer below's, or 1)", NULL, 0 },
  { "blocksize-preferred", NBD_PARAM_SIZE,
    offsetof(struct blocksize_policy_conf, preferred), NULL,
    "preferred block size advertised, a power of 2 from 512 to 32M "
    "(default: the layer below's, or 4096 within minimum..maximum)", NULL, 0 },
  { "blocksize-maximum", NBD_PARAM_SIZE,
    offsetof(struct blocksize_policy_conf, maximum), NULL,
    "maximum request size advertised, a multiple of the minimum up to "
    "4294967295 (default: the layer below's, or 4294967295)", NULL, 0 },
  { "blocksize-error-policy", NBD_PARAM_ENUM,
    offsetof(struct blocksize_policy_conf, error_policy), "allow",
    "a request that breaks the minimum or maximum: allow passes it on, "
    "error fails it with EINVAL", blocksize_policy_choices, 0 },
  NBD_PARAM_END
};

static int
blocksize_policy_is_pow2(uint64_t v)
{
  return v != 0 && (v & (v - 1)) == 0;
}

/* Everything that can be checked without the layer below, at startup
 * (nbdkit 1.32.5 leaves some of it to the first connection). */
static int
blocksize_policy_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct blocksize_policy_conf *c = layer->conf;
  int has_min = nbd_layer_param_set(layer, "blocksize-minimum");
  int has_pref = nbd_layer_param_set(layer, "blocksize-preferred");
  int has_max = nbd_layer_param_set(layer, "blocksize-maximum");

  if (has_min && (!blocksize_policy_is_pow2(c->minimum) ||
                  c->minimum > 65536)) {
    snprintf(err, errlen, "blocksize-minimum=%" PRIu64 " must be a power "
             "of 2 from 1 to 65536", c->minimum);
    return -1;
  }
  if (has_pref && (!blocksize_policy_is_pow2(c->preferred) ||
                   c->preferred < 512 || c->preferred > (32u << 20))) {
    snprintf(err, errlen, "blocksize-preferred=%" PRIu64 " must be a power "
             "of 2 from 512 to 33554432", c->preferred);
    return -1;
  }
  if (has_max && (c->maximum == 0 || c->maximum > POLICY_NONE)) {
    snprintf(err, errlen, "blocksize-maximum=%" PRIu64 " must be from 1 to "
             "4294967295", c->maximum);
    return -1;
  }
  if (has_min && has_pref && c->minimum > c->preferred) {
    snprintf(err, errlen, "blocksize-minimum=%" PRIu64 " must be <= "
             "blocksize-preferred=%" PRIu64, c->minimum, c->preferred);
    return -1;
  }
  if (has_pref && has_max && c->preferred > c->maximum) {
    snprintf(err, errlen, "blocksize-preferred=%" PRIu64 " must be <= "
             "blocksize-maximum=%" PRIu64, c->preferred, c->maximum);
    return -1;
  }
  if (has_min && has_max && c->maximum != POLICY_NONE &&
      (c->maximum < c->minimum || c->maximum % c->minimum)) {
    snprintf(err, errlen, "blocksize-maximum=%" PRIu64 " must be a multiple "
             "of blocksize-minimum=%" PRIu64 " (or 4294967295)", c->maximum,
             c->minimum);
    return -1;
  }
  return 0;
}

/* The keys given, the layer below's answer for the others; a preferred
 * size not given is kept within [minimum, maximum] (nbdkit 1.32.5 keeps
 * 4096 and fails every connection when the maximum is below it). */
static int
blocksize_policy_block_size(struct nbd_ctx *self, struct nbd_ctx *next,
                            uint32_t *minimum, uint32_t *preferred,
                            uint32_t *maximum)
{
  const struct nbd_layer *l = self->layer;
  const struct blocksize_policy_conf *c = l->conf;
  uint32_t bmin, bpref, bmax;
  int r;

  if ((r = next_block_size(next, &bmin, &bpref, &bmax)) < 0)
    return r;
  *minimum = nbd_layer_param_set(l, "blocksize-minimum") ?
             (uint32_t)c->minimum : bmin ? bmin : 1;
  *maximum = nbd_layer_param_set(l, "blocksize-maximum") ?
             (uint32_t)c->maximum : bmax ? bmax : POLICY_NONE;
  if (nbd_layer_param_set(l, "blocksize-preferred"))
    *preferred = (uint32_t)c->preferred;
  else {
    *preferred = bpref ? bpref : 4096;
    if (*preferred < *minimum)
      *preferred = *minimum;
    while (*preferred > *maximum && *preferred > *minimum)
      *preferred >>= 1;
  }
  if (*preferred < *minimum || *preferred > *maximum ||
      *maximum < *minimum ||
      (*maximum != POLICY_NONE && *maximum % *minimum)) {
    nbd_error("export '%s': filter blocksize_policy: invalid block sizes "
              "minimum=%" PRIu32 " preferred=%" PRIu32 " maximum=%" PRIu32
              " (keys given, the rest from the layer below)",
              l->export_name, *minimum, *preferred, *maximum);
    return -EINVAL;
  }
  if (c->error_policy == POLICY_ALLOW)
    nbd_block_size_advisory(self);
  return 0;
}

/* Requests pass on unchanged in both policies: error is enforced by the
 * engine at this layer's boundary, allow is the layer below's business.
 * Offsets, data and extents are not touched. */
PASSTHROUGH(blocksize_policy, pread)
PASSTHROUGH(blocksize_policy, pwrite)
PASSTHROUGH(blocksize_policy, flush)
PASSTHROUGH(blocksize_policy, trim)
PASSTHROUGH(blocksize_policy, zero)
PASSTHROUGH(blocksize_policy, extents)
PASSTHROUGH(blocksize_policy, depth)
PASSTHROUGH(blocksize_policy, cache)
PASSTHROUGH(blocksize_policy, reopen)
PASSTHROUGH(blocksize_policy, get_size)
PASSTHROUGH(blocksize_policy, can_write)
PASSTHROUGH(blocksize_policy, can_flush)
PASSTHROUGH(blocksize_policy, can_trim)
PASSTHROUGH(blocksize_policy, can_zero)
PASSTHROUGH(blocksize_policy, can_fast_zero)
PASSTHROUGH(blocksize_policy, can_fua)
PASSTHROUGH(blocksize_policy, can_cache)
PASSTHROUGH(blocksize_policy, can_extents)
PASSTHROUGH(blocksize_policy, can_multi_conn)
PASSTHROUGH(blocksize_policy, is_rotational)
PASSTHROUGH(blocksize_policy, list_exports)
PASSTHROUGH(blocksize_policy, preconnect)

static int
blocksize_policy_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                             struct nbd_source *src, uint32_t count,
                             uint64_t offset, uint32_t flags)
{
  return next_pwrite_from(next, src, count, offset, flags);
}

NBD_REGISTER_FILTER_AS(blocksize_policy, "blocksize-policy", NBD_PARALLEL,
                       NBD_NEVER_BLOCKS,
  .description = "advertise block-size constraints and choose whether "
                 "requests that break them fail",
  .params = blocksize_policy_params,
  .conf_size = sizeof(struct blocksize_policy_conf),
  .pwrite_from = blocksize_policy_pwrite_from,
  .setup = blocksize_policy_setup,
);
