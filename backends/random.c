/* nbdstack backend random: a disk of deterministic random bytes.
 *
 * Like nbdkit's random plugin, byte for byte for the same seed: byte i
 * of the disk is the low 8 bits of the third output of xoshiro256**
 * seeded (through splitmix64) with seed + i, so any byte is computed
 * without running the generator from the start.  A write succeeds only
 * if it matches the content and fails with EIO otherwise, so a copy onto
 * this disk verifies the copy; trim and zero always fail with EIO (the
 * content is never zero on purpose).  No flush, no extents (all data).
 *
 * The generator (splitmix64 and xoshiro256** 1.0 by Blackman and Vigna)
 * is src/xoshiro.h, shared with the other of random and sparse-random.
 */
#include <string.h>
#include <time.h>

#include "layer.h"
#include "xoshiro.h"

struct random_conf {
  uint64_t size;
  uint64_t seed;
};

static const struct nbd_param random_params[] = {
  { "size", NBD_PARAM_SIZE, offsetof(struct random_conf, size), "0",
    "virtual size in bytes, 0 to 2^63-1", NULL, 0 },
  { "seed", NBD_PARAM_UINT, offsetof(struct random_conf, seed), NULL,
    "generator seed, 0 to 4294967295 (default: the time at startup)",
    NULL, 0 },
  NBD_PARAM_END
};

/* The byte at offset: PRNG(seed + offset), two outputs dropped, the
 * third's low byte (nbdkit plugins/random/random.c). */
static inline unsigned char
random_byte(uint64_t seed, uint64_t offset)
{
  struct xoshiro_state st;

  xoshiro_seed(seed + offset, &st);
  xoshiro_next(&st);
  xoshiro_next(&st);
  return (unsigned char)(xoshiro_next(&st) & 255);
}

/* ---- the backend ------------------------------------------------------- */

static int
random_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct random_conf *conf = layer->conf;

  if (conf->size > INT64_MAX) {
    snprintf(err, errlen, "size=%llu is out of range (0 to 2^63-1)",
             (unsigned long long)conf->size);
    return -1;
  }
  if (!nbd_layer_param_set(layer, "seed"))
    conf->seed = (uint32_t)time(NULL);   /* nbdkit's default */
  else if (conf->seed > UINT32_MAX) {
    snprintf(err, errlen, "seed=%llu is out of range (0 to 4294967295)",
             (unsigned long long)conf->seed);
    return -1;
  }
  return 0;
}

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define random_reopen nbd_reopen_close_open

static int64_t
random_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct random_conf *conf = self->layer->conf;
  return (int64_t)conf->size;
}

static int
random_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
             uint32_t count, uint64_t offset, uint32_t flags)
{
  const struct random_conf *conf = self->layer->conf;
  unsigned char *b = buf;
  uint32_t i;

  for (i = 0; i < count; i++)
    b[i] = random_byte(conf->seed, offset + i);
  return 0;
}

/* Compared byte by byte as it is computed: no buffer of count bytes. */
static int
random_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
              uint32_t count, uint64_t offset, uint32_t flags)
{
  const struct random_conf *conf = self->layer->conf;
  const unsigned char *b = buf;
  uint32_t i;

  for (i = 0; i < count; i++)
    if (b[i] != random_byte(conf->seed, offset + i)) {
      nbd_debug("random: write at %llu does not match the content "
                "(byte %llu)", (unsigned long long)offset,
                (unsigned long long)offset + i);
      return -EIO;
    }
  return 0;
}

/* Trim and zero always fail, at once, as nbdkit's answer: the content is
 * random, so zeros never match it (a zero byte here and there does not
 * make a zeroed range). */
static int
random_trim_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                 uint64_t offset, uint32_t flags)
{
  return -EIO;
}
#define random_trim random_trim_zero
#define random_zero random_trim_zero

static int
random_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
             uint64_t offset, uint32_t flags)
{
  return 0;
}

#define random_can_write nbd_cap_yes
#define random_can_trim nbd_cap_yes
#define random_can_multi_conn nbd_cap_yes

static int
random_can_zero(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_ZERO_NATIVE;
}

static int
random_can_cache(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_CACHE_NATIVE;
}

UNSUPPORTED(random, flush)
UNSUPPORTED(random, extents)
UNSUPPORTED(random, depth)
UNSUPPORTED(random, block_size)
UNSUPPORTED(random, list_exports)
UNSUPPORTED(random, preconnect)
UNSUPPORTED(random, can_flush)
UNSUPPORTED(random, can_fast_zero)
UNSUPPORTED(random, can_fua)
UNSUPPORTED(random, can_extents)
UNSUPPORTED(random, is_rotational)

NBD_REGISTER_BACKEND(random, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "deterministic random bytes; writes must match (tests)",
  .params = random_params,
  .conf_size = sizeof(struct random_conf),
  .setup = random_setup,
  .magic_param = "size",
);
