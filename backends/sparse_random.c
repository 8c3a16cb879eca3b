/* nbdstack backend sparse-random: a mostly empty disk with runs of
 * deterministic random data, and an allocation map true to it.
 *
 * Like nbdkit's sparse-random plugin, byte for byte and extent for
 * extent for the same seed: the disk is cut in 4 KiB blocks, each data
 * or hole, chosen at startup by a two-state walk (hole -> data with
 * probability P_hd, data -> hole with P_dh) whose odds give the asked
 * percentage of data and average run length.  A hole reads as zeros and
 * reports as a hole; a data block is one repeated nonzero byte, or with
 * random-content=true 4096 random bytes, each seeded from seed + the
 * block's offset.  A write succeeds only where it matches the content
 * (EIO otherwise), trim and zero only over holes, so copying onto this
 * disk verifies the copy.
 *
 * Unlike nbdkit 1.32.5, a block's content never depends on where a read
 * starts: nbdkit seeds a partial first block of a request from the
 * request's offset instead of the block's, so an unaligned read (and an
 * unaligned write of the right data) disagrees with an aligned one.
 *
 * The generator (splitmix64 and xoshiro256** 1.0 by Blackman and Vigna)
 * is src/xoshiro.h, shared with the other of random and sparse-random.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "layer.h"
#include "xoshiro.h"

#define SPARSE_BLOCK 4096       /* one bit of the map per block, as nbdkit */

struct sparse_random_conf {
  uint64_t size;
  uint64_t seed;
  char *percent;
  uint64_t runlength;
  int random_content;
};

static const struct nbd_param sparse_random_params[] = {
  { "size", NBD_PARAM_SIZE, offsetof(struct sparse_random_conf, size), "0",
    "virtual size in bytes, 0 to 2^63-1", NULL, 0 },
  { "seed", NBD_PARAM_UINT, offsetof(struct sparse_random_conf, seed), NULL,
    "generator seed, 0 to 4294967295 (default: the time at startup)",
    NULL, 0 },
  { "percent", NBD_PARAM_STRING, offsetof(struct sparse_random_conf, percent),
    "10", "share of data blocks in percent, a number from 0 to 100", NULL, 0 },
  { "runlength", NBD_PARAM_SIZE,
    offsetof(struct sparse_random_conf, runlength), "16M",
    "average length in bytes of a run of data, at least 1", NULL, 0 },
  { "random-content", NBD_PARAM_BOOL,
    offsetof(struct sparse_random_conf, random_content), "no",
    "yes: random bytes in data blocks; no: one repeated byte per block",
    NULL, 0 },
  NBD_PARAM_END
};

/* Shared by every connection, read only after setup. */
struct sparse_random_state {
  uint64_t size;
  uint64_t seed;
  int random_content;
  uint8_t *map;                 /* bit i: block i is data */
};

/* ---- the map ----------------------------------------------------------- */

static inline int
sparse_random_is_data(const struct sparse_random_state *s, uint64_t blk)
{
  return (s->map[blk >> 3] >> (blk & 7)) & 1;
}

/* nbdkit's walk, step for step (plugins/sparse-random, get_ready): the
 * state of block i is the state before drawing; the draw decides the
 * state of block i + 1.  The comparison is done in double, as there. */
static void
sparse_random_walk(struct sparse_random_state *s, uint64_t nblocks,
                   double percent, uint64_t runlength)
{
  struct xoshiro_state rng;
  double p_dh, p_hd;
  uint64_t i;
  int state = 0;                /* 0 hole, 1 data */

  if (percent == 0)
    return;
  if (percent == 100) {
    memset(s->map, 0xff, (nblocks + 7) / 8);
    return;
  }
  p_dh = 1. / ((double)runlength / SPARSE_BLOCK);
  p_hd = (percent / 100.) * p_dh / (1. - (percent / 100.));
  xoshiro_seed(s->seed, &rng);
  for (i = 0; i < nblocks; i++) {
    double p = state ? p_dh : p_hd;

    if (state)
      s->map[i >> 3] |= (uint8_t)(1u << (i & 7));
    if ((double)xoshiro_next(&rng) <= p * (double)UINT64_MAX)
      state ^= 1;
  }
}

/* "10", "2.5": the whole string a number from 0 to 100. */
static int
sparse_random_parse_percent(const char *text, double *out)
{
  char *end;
  double v;

  errno = 0;
  v = strtod(text, &end);
  if (errno || end == text || *end != '\0' || !(v >= 0 && v <= 100))
    return -1;
  *out = v;
  return 0;
}

static int
sparse_random_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct sparse_random_conf *conf = layer->conf;
  struct sparse_random_state *s;
  uint64_t nblocks;
  double percent;

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
  if (sparse_random_parse_percent(conf->percent, &percent) == -1) {
    snprintf(err, errlen, "percent=%s is not a number from 0 to 100",
             conf->percent);
    return -1;
  }
  if (conf->runlength == 0) {
    snprintf(err, errlen, "runlength=0 is out of range (1 to 2^64-1 bytes)");
    return -1;
  }
  nblocks = conf->size / SPARSE_BLOCK + (conf->size % SPARSE_BLOCK != 0);
  s = calloc(1, sizeof *s);
  if (s == NULL || (s->map = calloc(nblocks / 8 + 1, 1)) == NULL) {
    free(s);
    snprintf(err, errlen, "size=%llu: no memory for the map of %llu blocks "
             "(1 bit per 4 KiB)", (unsigned long long)conf->size,
             (unsigned long long)nblocks);
    return -1;
  }
  s->size = conf->size;
  s->seed = conf->seed;
  s->random_content = conf->random_content;
  sparse_random_walk(s, nblocks, percent, conf->runlength);
  layer->state = s;
  return 0;
}

static void
sparse_random_cleanup(struct nbd_layer *layer)
{
  struct sparse_random_state *s = layer->state;

  if (s) {
    free(s->map);
    free(s);
  }
  layer->state = NULL;
}

/* ---- content ----------------------------------------------------------- */

/* The whole block blk into out[SPARSE_BLOCK] (nbdkit's read_block, but
 * seeded from the block's own offset, see the top of the file). */
static void
sparse_random_block(const struct sparse_random_state *s, uint64_t blk,
                    uint8_t *out)
{
  struct xoshiro_state rng;
  unsigned i;

  if (!sparse_random_is_data(s, blk)) {
    memset(out, 0, SPARSE_BLOCK);
    return;
  }
  xoshiro_seed(s->seed + blk * SPARSE_BLOCK, &rng);
  if (!s->random_content) {
    uint8_t b = (uint8_t)(xoshiro_next(&rng) & 255);

    memset(out, b ? b : 1, SPARSE_BLOCK);
  } else {
    for (i = 0; i < SPARSE_BLOCK; i++)
      out[i] = (uint8_t)(xoshiro_next(&rng) & 255);
  }
}

/* Calls fn on each piece of [offset, offset+count) that lies in one
 * block, with the block's content when want_content (a 4 KiB buffer on
 * the heap: musl's threads have small stacks).  Stops at fn's first
 * nonzero return. */
static int
sparse_random_each(const struct sparse_random_state *s, uint64_t count,
                   uint64_t offset, int want_content,
                   int (*fn)(const struct sparse_random_state *s, uint64_t blk,
                             const uint8_t *content, uint32_t in_blk,
                             uint32_t n, uint64_t done, void *arg),
                   void *arg)
{
  uint8_t *block = NULL;
  uint64_t done = 0;
  int r = 0;

  if (want_content && (block = malloc(SPARSE_BLOCK)) == NULL)
    return -ENOMEM;
  while (done < count) {
    uint64_t pos = offset + done;
    uint64_t blk = pos / SPARSE_BLOCK;
    uint32_t in_blk = (uint32_t)(pos % SPARSE_BLOCK);
    uint32_t n = SPARSE_BLOCK - in_blk;

    if (n > count - done)
      n = (uint32_t)(count - done);
    if (want_content)
      sparse_random_block(s, blk, block);
    if ((r = fn(s, blk, block, in_blk, n, done, arg)) != 0)
      break;
    done += n;
  }
  free(block);
  return r;
}

static int
sparse_random_copy_out(const struct sparse_random_state *s, uint64_t blk,
                       const uint8_t *content, uint32_t in_blk, uint32_t n,
                       uint64_t done, void *arg)
{
  memcpy((uint8_t *)arg + done, content + in_blk, n);
  return 0;
}

static int
sparse_random_compare(const struct sparse_random_state *s, uint64_t blk,
                      const uint8_t *content, uint32_t in_blk, uint32_t n,
                      uint64_t done, void *arg)
{
  const uint8_t *buf = (const uint8_t *)arg + done;

  if (content ? memcmp(buf, content + in_blk, n) != 0
              : !nbd_is_zero(buf, n))
    return -EIO;
  return 0;
}

static int
sparse_random_hole_only(const struct sparse_random_state *s, uint64_t blk,
                        const uint8_t *content, uint32_t in_blk, uint32_t n,
                        uint64_t done, void *arg)
{
  return sparse_random_is_data(s, blk) ? -EIO : 0;
}

/* ---- the backend ------------------------------------------------------- */

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define sparse_random_reopen nbd_reopen_close_open

static int64_t
sparse_random_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct sparse_random_state *s = self->layer->state;
  return (int64_t)s->size;
}

static int
sparse_random_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
                    uint32_t count, uint64_t offset, uint32_t flags)
{
  return sparse_random_each(self->layer->state, count, offset, 1,
                            sparse_random_copy_out, buf);
}

/* Holes are compared with zeros without computing the block; data blocks
 * against their content. */
static int
sparse_random_pwrite(struct nbd_ctx *self, struct nbd_ctx *next,
                     const void *buf, uint32_t count, uint64_t offset,
                     uint32_t flags)
{
  const struct sparse_random_state *s = self->layer->state;
  uint8_t *block = malloc(SPARSE_BLOCK);
  const uint8_t *b = buf;
  uint32_t done = 0;
  int r = 0;

  if (block == NULL)
    return -ENOMEM;
  while (done < count && r == 0) {
    uint64_t pos = offset + done;
    uint64_t blk = pos / SPARSE_BLOCK;
    uint32_t in_blk = (uint32_t)(pos % SPARSE_BLOCK);
    uint32_t n = SPARSE_BLOCK - in_blk;

    if (n > count - done)
      n = count - done;
    if (!sparse_random_is_data(s, blk))
      r = sparse_random_compare(s, blk, NULL, in_blk, n, done, (void *)b);
    else {
      sparse_random_block(s, blk, block);
      r = sparse_random_compare(s, blk, block, in_blk, n, done, (void *)b);
    }
    done += n;
  }
  free(block);
  if (r)
    nbd_debug("sparse-random: write at %llu+%u does not match the content",
              (unsigned long long)offset, count);
  return r;
}

/* Nothing is stored: a flush has nothing to do (nbdcopy --flush). */
static int
sparse_random_flush(struct nbd_ctx *self, struct nbd_ctx *next,
                    uint32_t flags)
{
  return 0;
}

/* Trim and zero "succeed" over holes only, as in nbdkit. */
static int
sparse_random_trim_zero(struct nbd_ctx *self, struct nbd_ctx *next,
                        uint64_t count, uint64_t offset, uint32_t flags)
{
  return sparse_random_each(self->layer->state, count, offset, 0,
                            sparse_random_hole_only, NULL);
}
#define sparse_random_trim sparse_random_trim_zero
#define sparse_random_zero sparse_random_trim_zero

static int
sparse_random_cache(struct nbd_ctx *self, struct nbd_ctx *next,
                    uint64_t count, uint64_t offset, uint32_t flags)
{
  return 0;
}

/* One extent per run of blocks of one kind (nbd_extents_add merges). */
static int
sparse_random_extents(struct nbd_ctx *self, struct nbd_ctx *next,
                      uint64_t count, uint64_t offset, uint32_t flags,
                      struct nbd_extents *extents)
{
  const struct sparse_random_state *s = self->layer->state;
  uint64_t pos = offset, end = offset + count;
  int r;

  while (pos < end) {
    uint64_t blk = pos / SPARSE_BLOCK;
    int data = sparse_random_is_data(s, blk);
    uint64_t stop = (blk + 1) * SPARSE_BLOCK;

    while (stop < end && sparse_random_is_data(s, stop / SPARSE_BLOCK) == data)
      stop += SPARSE_BLOCK;
    if (stop > end)
      stop = end;
    r = nbd_extents_add(extents, pos, stop - pos,
                        data ? 0 : NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
    if (r < 0)
      return r;
    if (flags & NBD_CMD_FLAG_REQ_ONE)
      break;
    pos = stop;
  }
  return 0;
}

UNSUPPORTED(sparse_random, depth)

#define sparse_random_can_write nbd_cap_yes
#define sparse_random_can_flush nbd_cap_yes
#define sparse_random_can_trim nbd_cap_yes
#define sparse_random_can_extents nbd_cap_yes
#define sparse_random_can_multi_conn nbd_cap_yes

static int
sparse_random_can_zero(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_ZERO_NATIVE;
}

static int
sparse_random_can_cache(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_CACHE_NATIVE;
}

UNSUPPORTED(sparse_random, block_size)
UNSUPPORTED(sparse_random, list_exports)
UNSUPPORTED(sparse_random, preconnect)
UNSUPPORTED(sparse_random, can_fast_zero)
UNSUPPORTED(sparse_random, can_fua)
UNSUPPORTED(sparse_random, is_rotational)

NBD_REGISTER_BACKEND_AS(sparse_random, "sparse-random",
  NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "holes with runs of random data, writes must match (tests)",
  .params = sparse_random_params,
  .conf_size = sizeof(struct sparse_random_conf),
  .setup = sparse_random_setup,
  .cleanup = sparse_random_cleanup,
  .magic_param = "size",
);
