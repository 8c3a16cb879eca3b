/* nbdstack backend pattern: a read-only disk whose every 8-byte word
 * holds its own offset.
 *
 * Like nbdkit's pattern plugin, byte for byte: the word at offset
 * 8k (k = 0, 1, ...) is the big-endian 64-bit number 8k, so any byte
 * shows where it came from and a misplaced block in a copy is caught.
 * The last word of a disk whose size is not a multiple of 8 is cut
 * short.  Read-only, no extents (all data).
 */
#include <string.h>

#include "layer.h"

struct pattern_conf {
  uint64_t size;
};

static const struct nbd_param pattern_params[] = {
  { "size", NBD_PARAM_SIZE, offsetof(struct pattern_conf, size), "0",
    "virtual size in bytes, 0 to 2^63-1", NULL, 0 },
  NBD_PARAM_END
};

static int
pattern_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct pattern_conf *conf = layer->conf;

  if (conf->size > INT64_MAX) {
    snprintf(err, errlen, "size=%llu is out of range (0 to 2^63-1)",
             (unsigned long long)conf->size);
    return -1;
  }
  return 0;
}

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define pattern_reopen nbd_reopen_close_open

static int64_t
pattern_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct pattern_conf *conf = self->layer->conf;
  return (int64_t)conf->size;
}

static int
pattern_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
              uint32_t count, uint64_t offset, uint32_t flags)
{
  unsigned char *b = buf;

  while (count > 0) {
    uint64_t word = offset & ~(uint64_t)7;
    unsigned o = offset & 7, i;
    unsigned char be[8];
    uint32_t n = 8 - o < count ? 8 - o : count;

    for (i = 0; i < 8; i++)
      be[i] = (unsigned char)(word >> (56 - 8 * i));
    memcpy(b, be + o, n);
    b += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* The content is computed: a cache request has nothing to do. */
static int
pattern_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
              uint64_t offset, uint32_t flags)
{
  return 0;
}

static int
pattern_can_cache(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_CACHE_NATIVE;
}

static int
pattern_can_multi_conn(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 1;
}

UNSUPPORTED(pattern, pwrite)
UNSUPPORTED(pattern, flush)
UNSUPPORTED(pattern, trim)
UNSUPPORTED(pattern, zero)
UNSUPPORTED(pattern, extents)
UNSUPPORTED(pattern, depth)
UNSUPPORTED(pattern, block_size)
UNSUPPORTED(pattern, can_write)
UNSUPPORTED(pattern, can_flush)
UNSUPPORTED(pattern, can_trim)
UNSUPPORTED(pattern, can_zero)
UNSUPPORTED(pattern, can_fast_zero)
UNSUPPORTED(pattern, can_fua)
UNSUPPORTED(pattern, can_extents)
UNSUPPORTED(pattern, is_rotational)
UNSUPPORTED(pattern, list_exports)
UNSUPPORTED(pattern, preconnect)

NBD_REGISTER_BACKEND(pattern, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "read-only, each 8-byte word holds its offset (tests)",
  .params = pattern_params,
  .conf_size = sizeof(struct pattern_conf),
  .setup = pattern_setup,
  .magic_param = "size",
);
