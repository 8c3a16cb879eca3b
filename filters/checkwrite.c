/* nbdstack filter checkwrite: writes become checks that the data is
 * already there (nbdkit's checkwrite filter; no keys), to test copying
 * tools: copy a disk onto itself through this filter, and any byte the
 * tool gets wrong fails its write with EIO.
 *
 * Nothing is ever written below.  A write reads the same range below and
 * compares; a zero or a trim compares with zeros, skipping what the
 * layer below reports as reading zeros (extents), so sparse disks check
 * quickly.  Flush, FUA and fast zero cost nothing and are always
 * offered; the disk is writable for the client even when the layer below
 * is not (nbdkit opens its plugin read-only).  Sparseness is not
 * compared: a write of zeros over a hole passes.
 */
#include <stdlib.h>
#include <string.h>

#include "layer.h"

#define CHECKWRITE_CHUNK (1u << 20)

/* Compares [offset, offset+len) below with want (NULL = zeros): 0, -EIO
 * on a difference, or the read's -errno. */
static int
checkwrite_compare(struct nbd_ctx *next, const unsigned char *want,
                   uint64_t len, uint64_t offset)
{
  size_t cap = len < CHECKWRITE_CHUNK ? (size_t)len : CHECKWRITE_CHUNK;
  unsigned char *buf;
  int r = 0;

  if (len == 0)
    return 0;
  if ((buf = malloc(cap)) == NULL)
    return -ENOMEM;
  while (len > 0 && r == 0) {
    uint32_t n = len < cap ? (uint32_t)len : (uint32_t)cap;
    r = next_pread(next, buf, n, offset, 0);
    if (r == 0 && (want ? memcmp(buf, want, n) != 0 : !nbd_is_zero(buf, n)))
      r = -EIO;
    if (want)
      want += n;
    len -= n;
    offset += n;
  }
  free(buf);
  return r;
}

static int
checkwrite_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
                  uint32_t count, uint64_t offset, uint32_t flags)
{
  int r;

  (void)flags;
  r = checkwrite_compare(next, buf, count, offset);
  if (r == -EIO)
    nbd_debug("export '%s': filter checkwrite: write of %u bytes at %llu "
              "differs from the data below", self->layer->export_name,
              count, (unsigned long long)offset);
  return r;
}

/* Zeros expected: extents below say which parts read as zeros already;
 * only the rest is read. */
static int
checkwrite_zeros(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                 uint64_t offset)
{
  uint64_t end = offset + count;
  int r = 0;

  while (offset < end && r == 0) {
    uint64_t n = end - offset;
    struct nbd_extents *e;
    size_t i;

    if (n > CHECKWRITE_CHUNK * 64u)
      n = CHECKWRITE_CHUNK * 64u;
    if (next_can_extents(next) <= 0) {
      r = checkwrite_compare(next, NULL, n, offset);
      offset += n;
      continue;
    }
    if ((e = nbd_extents_new(offset, offset + n)) == NULL)
      return -ENOMEM;
    r = next_extents(next, n, offset, 0, e);
    if (r == 0 && e->n == 0)
      r = -EIO;                 /* a layer that answered nothing */
    for (i = 0; r == 0 && i < e->n; i++)
      if (!(e->v[i].type & NBD_EXTENT_ZERO))
        r = checkwrite_compare(next, NULL, e->v[i].length, e->v[i].offset);
    if (r == 0)
      offset = e->v[e->n - 1].offset + e->v[e->n - 1].length;
    nbd_extents_free(e);
  }
  if (r == -EIO)
    nbd_debug("export '%s': filter checkwrite: zero or trim over data that "
              "is not zero", self->layer->export_name);
  return r;
}

static int
checkwrite_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                uint64_t offset, uint32_t flags)
{
  (void)flags;
  return checkwrite_zeros(self, next, count, offset);
}

static int
checkwrite_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                uint64_t offset, uint32_t flags)
{
  (void)flags;
  return checkwrite_zeros(self, next, count, offset);
}

/* Nothing was written, so nothing to make durable. */
static int
checkwrite_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  (void)self;
  (void)next;
  (void)flags;
  return 0;
}

static int
checkwrite_can_zero(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)self;
  (void)next;
  return NBD_ZERO_NATIVE;
}

static int
checkwrite_can_fua(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)self;
  (void)next;
  return NBD_FUA_NATIVE;
}

#define checkwrite_can_write nbd_cap_yes
#define checkwrite_can_flush nbd_cap_yes
#define checkwrite_can_trim nbd_cap_yes
#define checkwrite_can_fast_zero nbd_cap_yes
#define checkwrite_can_multi_conn nbd_cap_yes /* nothing changes */

PASSTHROUGH(checkwrite, pread)
PASSTHROUGH(checkwrite, extents)
PASSTHROUGH(checkwrite, depth)
PASSTHROUGH(checkwrite, cache)
PASSTHROUGH(checkwrite, reopen)
PASSTHROUGH(checkwrite, get_size)
PASSTHROUGH(checkwrite, block_size)
PASSTHROUGH(checkwrite, can_cache)
PASSTHROUGH(checkwrite, can_extents)
PASSTHROUGH(checkwrite, is_rotational)
PASSTHROUGH(checkwrite, list_exports)
PASSTHROUGH(checkwrite, preconnect)

NBD_REGISTER_FILTER(checkwrite, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "writes become checks against the data below (EIO when "
                 "different), to test copying tools",
);
