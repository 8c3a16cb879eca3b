/* nbdstack backend null: a disk that reads as zeros and discards writes.
 *
 * For benchmarking the protocol engine and for tests; like nbdkit's null
 * plugin.  Reads return zeros, writes are accepted and dropped, extents
 * report one hole that reads as zero.  A bare value is the size
 * ("null 1G"), as in nbdkit.  The payload of a large write on a plain
 * connection is spliced from the socket to /dev/null, never copied.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layer.h"

struct null_conf {
  uint64_t size;
};

/* /dev/null, when large writes can be spliced into it; else -1. */
struct null_state {
  int devnull;
};

static const struct nbd_param null_params[] = {
  { "size", NBD_PARAM_SIZE, offsetof(struct null_conf, size), "0",
    "virtual size in bytes (up to 2^63-1)", NULL, 0 },
  NBD_PARAM_END
};

static int
null_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct null_conf *conf = layer->conf;
  struct null_state *st;

  if (conf->size > INT64_MAX) {
    snprintf(err, errlen, "size=%llu is larger than 2^63-1",
             (unsigned long long)conf->size);
    return -1;
  }
  if ((st = malloc(sizeof *st)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  st->devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (st->devnull >= 0 && !nbd_can_splice_at(st->devnull)) {
    close(st->devnull);
    st->devnull = -1;
  }
  layer->state = st;
  return 0;
}

static void
null_cleanup(struct nbd_layer *layer)
{
  struct null_state *st = layer->state;

  if (st && st->devnull >= 0)
    close(st->devnull);
  free(st);
  layer->state = NULL;
}

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define null_reopen nbd_reopen_close_open

static int64_t
null_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct null_conf *conf = self->layer->conf;
  return (int64_t)conf->size;
}

static int
null_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
           uint32_t count, uint64_t offset, uint32_t flags)
{
  memset(buf, 0, count);
  return 0;
}

static int
null_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags)
{
  return 0;
}

/* The engine offers only large writes on plain connections (pull_splice);
 * without /dev/null they are read and dropped. */
static int
null_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                 struct nbd_source *src, uint32_t count, uint64_t offset,
                 uint32_t flags)
{
  const struct null_state *st = self->layer->state;

  if (st && src->splice && st->devnull >= 0)
    return nbd_source_splice_at(src, st->devnull, count, 0);
  return nbd_source_skip(src, count);
}

static int
null_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  return 0;
}

static int
null_discard(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
             uint64_t offset, uint32_t flags)
{
  return 0;
}
#define null_trim null_discard
#define null_zero null_discard
#define null_cache null_discard

static int
null_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
             uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  return nbd_extents_add(extents, offset, count,
                         NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
}

UNSUPPORTED(null, depth)

#define null_can_write nbd_cap_yes
#define null_can_flush nbd_cap_yes
#define null_can_trim nbd_cap_yes
#define null_can_fast_zero nbd_cap_yes
#define null_can_extents nbd_cap_yes
#define null_can_multi_conn nbd_cap_yes

static int
null_native(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_FUA_NATIVE;        /* == NBD_ZERO_NATIVE == NBD_CACHE_NATIVE */
}
#define null_can_zero null_native
#define null_can_fua null_native
#define null_can_cache null_native

UNSUPPORTED(null, block_size)
UNSUPPORTED(null, is_rotational)
UNSUPPORTED(null, list_exports)
UNSUPPORTED(null, preconnect)

NBD_REGISTER_BACKEND(null, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "reads zeros, discards writes (benchmarks, tests)",
  .params = null_params,
  .conf_size = sizeof(struct null_conf),
  .setup = null_setup,
  .cleanup = null_cleanup,
  .magic_param = "size",              /* "null 1G", as nbdkit */
  .pwrite_from = null_pwrite_from,
  .pull_splice = 1,
);
