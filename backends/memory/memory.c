/* nbdstack backend memory: a sparse RAM disk of up to 2^63-1 bytes
 * (nbdkit's memory plugin with its default allocator, sparse).
 *
 * This file is the layer: its keys, the size check, and the NBD methods,
 * each a direct call into the page store (store.c), which holds the data,
 * allocates 32 KiB pages on first write and does all the locking.
 * Unallocated pages read as zeros and are reported as holes; trim and zero
 * free the pages they cover whole and zero the partial ones.  All
 * connections share one store, so multi-conn is safe.  Nothing is
 * persisted; flush, FUA and cache are no-ops.  It does not honour NO_HOLE
 * on trim (trim is advisory) but does on zero, where it provisions zeroed
 * pages.  Range checks and read-only exports are the engine's job.
 */
#include <stdint.h>

#include "layer.h"
#include "store.h"

struct memory_conf {
  uint64_t size;
  int allocator;
};

/* nbdkit's memory plugin allocators: sparse (its default and ours) and
 * malloc, which nbdkit keeps in one flat array and so reports as all data.
 * Here malloc is the same page store with nbdkit's answer to block status
 * (can_extents no: the engine says "all data"), so a client sees what it
 * sees from nbdkit.  zstd (compressed pages) is not implemented. */
#define MEMORY_SPARSE 0
#define MEMORY_MALLOC 1
static const char *const memory_allocators[] = { "sparse", "malloc", NULL };

static const struct nbd_param memory_params[] = {
  { "size", NBD_PARAM_SIZE, offsetof(struct memory_conf, size), NULL,
    "virtual size in bytes (up to 2^63-1); storage is allocated on write",
    NULL, 1 },
  { "allocator", NBD_PARAM_ENUM, offsetof(struct memory_conf, allocator),
    "sparse", "sparse: 32 KiB pages on first write, holes reported; malloc: "
    "the same, reported as all data (as nbdkit's malloc allocator)",
    memory_allocators, 0 },
  NBD_PARAM_END
};

static int
memory_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
             uint32_t count, uint64_t offset, uint32_t flags)
{
  return memory_store_read(self->layer->state, buf, count, offset);
}

/* Large reads go to the client straight from the pages (store.c). */
static int
memory_pread_to(struct nbd_ctx *self, struct nbd_ctx *next,
                struct nbd_sink *dst, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  return memory_store_read_to(self->layer->state, dst, count, offset);
}

static int
memory_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
              uint32_t count, uint64_t offset, uint32_t flags)
{
  return memory_store_write(self->layer->state, buf, count, offset);
}

/* Whole pages of the payload are read from the socket straight into the
 * store's pages, not through the engine's buffer (store.c). */
static int
memory_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                   struct nbd_source *src, uint32_t count, uint64_t offset,
                   uint32_t flags)
{
  return memory_store_write_from(self->layer->state, src, count, offset);
}

static int
memory_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags)
{
  return memory_store_discard(self->layer->state, count, offset, 0);
}

/* NO_HOLE asks for the range to stay provisioned: allocate zeroed pages so
 * later writes cannot fail for lack of memory.  FAST_ZERO needs nothing:
 * either way this is faster than writing zeros through the engine. */
static int
memory_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags)
{
  return memory_store_discard(self->layer->state, count, offset,
                              (flags & NBD_CMD_FLAG_NO_HOLE) != 0);
}

/* A snapshot (the store takes no lock for it), walked a page or a missing
 * subtree at a time; nbd_extents_add merges neighbours of one type. */
static int
memory_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
               uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  struct memory_store *s = self->layer->state;
  uint64_t end = offset + count, stop;
  size_t first = extents->n;
  int r;

  while (offset < end) {
    uint32_t type = memory_store_extent(s, offset, end, &stop)
                    ? 0 : NBD_EXTENT_HOLE | NBD_EXTENT_ZERO;

    if ((r = nbd_extents_add(extents, offset, stop - offset, type)) < 0)
      return r;
    /* REQ_ONE: stop once a second extent starts. */
    if ((flags & NBD_CMD_FLAG_REQ_ONE) && extents->n > first + 1)
      break;
    offset = stop;
  }
  return 0;
}

UNSUPPORTED(memory, depth)

/* Nothing to persist or prefetch: flush, FUA and cache are no-ops. */
static int
memory_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  return 0;
}

static int
memory_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
             uint64_t offset, uint32_t flags)
{
  return 0;
}

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define memory_reopen nbd_reopen_close_open

static int64_t
memory_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct memory_conf *conf = self->layer->conf;
  return (int64_t)conf->size;
}

#define memory_can_write nbd_cap_yes     /* read-only is the engine's job */
#define memory_can_flush nbd_cap_yes
#define memory_can_trim nbd_cap_yes
#define memory_can_fast_zero nbd_cap_yes
static int
memory_can_extents(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct memory_conf *conf = self->layer->conf;
  return conf->allocator == MEMORY_SPARSE;
}
#define memory_can_multi_conn nbd_cap_yes  /* one store for all connections */

static int
memory_native(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_FUA_NATIVE;        /* == NBD_ZERO_NATIVE == NBD_CACHE_NATIVE */
}
#define memory_can_fua memory_native
#define memory_can_zero memory_native
#define memory_can_cache memory_native

UNSUPPORTED(memory, block_size)         /* any alignment works */
UNSUPPORTED(memory, is_rotational)      /* 0: RAM does not seek */
UNSUPPORTED(memory, list_exports)
UNSUPPORTED(memory, preconnect)

static int
memory_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct memory_conf *conf = layer->conf;

  if (conf->size > INT64_MAX) {
    snprintf(err, errlen, "size=%llu is too large (the maximum is 2^63-1 = "
             "%lld bytes)", (unsigned long long)conf->size,
             (long long)INT64_MAX);
    return -1;
  }
  if ((layer->state = memory_store_open(conf->size)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  return 0;
}

static void
memory_cleanup(struct nbd_layer *layer)
{
  memory_store_close(layer->state);
  layer->state = NULL;
}

NBD_REGISTER_BACKEND(memory, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "sparse RAM disk of up to 2^63-1 bytes, shared by all "
                 "connections",
  .params = memory_params,
  .conf_size = sizeof(struct memory_conf),
  .magic_param = "size",
  .setup = memory_setup,
  .cleanup = memory_cleanup,
  .pwrite_from = memory_pwrite_from,
  .pread_to = memory_pread_to,
);
