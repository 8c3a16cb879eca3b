/* nbdstack filter tls-fallback: a plaintext client sees a tiny read-only
 * disk holding a message instead of the real export; a client that
 * started TLS gets the layers below (nbdkit's tls-fallback filter, key
 * tlsreadme=).
 *
 * The connection's TLS state comes from nbd_conn_info(self)->tls, read
 * once in open.  For a plaintext connection every method answers here
 * and nothing reaches the layer below: no read, no capability beyond
 * what open already cached, no export names (list_exports says "only the
 * export's own name", so a file dir= below lists nothing).  The disk is
 * the message padded with NULs to a multiple of 512 bytes, read-only,
 * without flush, trim, zero, cache, FUA or multi-conn (as nbdkit's).
 *
 * Differences from nbdkit: the engine opens the whole stack before any
 * layer sees a request, so the layers below are opened (and closed) for
 * a plaintext client too, although never asked anything; nbdkit skips
 * their open.  As in nbdkit, a stack below that serializes connections
 * is refused at setup: an idle plaintext client would hold it.  A stack
 * opened outside a connection (--check-config) counts as TLS, so the
 * check reaches the layers below.
 */
#include <stdlib.h>
#include <string.h>

#include "layer.h"

#define TLS_FALLBACK_DEFAULT \
  "This NBD server requires TLS authentication before it will serve " \
  "useful data.\n"

struct tls_fallback_conf {
  char *tlsreadme;
};

struct tls_fallback_state {
  char *disk;                   /* the message, NUL padded */
  uint64_t size;                /* a multiple of 512, at least 512 */
};

/* The handle of a plaintext connection; NULL for TLS. */
static char tls_fallback_plain;
#define TLS_FALLBACK_PLAIN(self) ((self)->handle == &tls_fallback_plain)

static int
tls_fallback_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct tls_fallback_conf *conf = layer->conf;
  const char *msg = nbd_layer_param_set(layer, "tlsreadme") ?
                    conf->tlsreadme : TLS_FALLBACK_DEFAULT;
  struct tls_fallback_state *st;
  const struct nbd_layer *l;
  size_t len = msg ? strlen(msg) : 0;

  for (l = layer->below; l; l = l->below)
    if (l->thread_model == NBD_SERIALIZE_CONNECTIONS) {
      snprintf(err, errlen, "layer %s below serializes connections: a "
               "plaintext client would hold the export (as nbdkit, refused)",
               l->ops->name);
      return -1;
    }
  if ((st = calloc(1, sizeof *st)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  st->size = len ? (len + 511) / 512 * 512 : 512;
  if ((st->disk = calloc(1, st->size)) == NULL) {
    free(st);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  if (len)
    memcpy(st->disk, msg, len);
  layer->state = st;
  return 0;
}

static void
tls_fallback_cleanup(struct nbd_layer *layer)
{
  struct tls_fallback_state *st = layer->state;

  if (st) {
    free(st->disk);
    free(st);
  }
  layer->state = NULL;
}

static int
tls_fallback_is_plain(const struct nbd_ctx *self)
{
  const struct nbd_conn_info *info = nbd_conn_info(self);

  return info != NULL && !info->tls;
}

static int
tls_fallback_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  (void)next;
  (void)readonly;
  self->handle = tls_fallback_is_plain(self) ? &tls_fallback_plain : NULL;
  return 0;
}

static int
tls_fallback_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
                   uint32_t count, uint64_t offset, uint32_t flags)
{
  const struct tls_fallback_state *st = self->layer->state;

  if (!TLS_FALLBACK_PLAIN(self))
    return next_pread(next, buf, count, offset, flags);
  /* The engine checked offset + count against get_size (st->size). */
  memcpy(buf, st->disk + offset, count);
  return 0;
}

/* A plaintext connection is read-only without flush, trim, zero or
 * cache: the engine never sends these there.  -EPERM should it ever. */
static int
tls_fallback_pwrite(struct nbd_ctx *self, struct nbd_ctx *next,
                    const void *buf, uint32_t count, uint64_t offset,
                    uint32_t flags)
{
  if (TLS_FALLBACK_PLAIN(self))
    return -EPERM;
  return next_pwrite(next, buf, count, offset, flags);
}

static int
tls_fallback_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  if (TLS_FALLBACK_PLAIN(self))
    return -EPERM;
  return next_flush(next, flags);
}

static int
tls_fallback_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                  uint64_t offset, uint32_t flags)
{
  if (TLS_FALLBACK_PLAIN(self))
    return -EPERM;
  return next_trim(next, count, offset, flags);
}

static int
tls_fallback_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                  uint64_t offset, uint32_t flags)
{
  if (TLS_FALLBACK_PLAIN(self))
    return -EPERM;
  return next_zero(next, count, offset, flags);
}

static int
tls_fallback_extents(struct nbd_ctx *self, struct nbd_ctx *next,
                     uint64_t count, uint64_t offset, uint32_t flags,
                     struct nbd_extents *extents)
{
  if (TLS_FALLBACK_PLAIN(self))
    return -EPERM;              /* can_extents said no */
  return next_extents(next, count, offset, flags, extents);
}

static int
tls_fallback_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                   uint64_t offset, uint32_t flags)
{
  if (TLS_FALLBACK_PLAIN(self))
    return -EPERM;
  return next_cache(next, count, offset, flags);
}

/* Names: a plaintext client learns only the export's own name. */
static int
tls_fallback_list_exports(struct nbd_ctx *self, struct nbd_ctx *next,
                          struct nbd_exports *exports)
{
  if (tls_fallback_is_plain(self))
    return 0;
  return next_list_exports(next, exports);
}

/* A plaintext connection's message disk is this layer's own: depth 1. */
static int
tls_fallback_depth(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                   uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  if (tls_fallback_is_plain(self))
    return NBD_DEPTH_ONE;
  return next_depth(next, count, offset, flags, extents);
}

/* A plaintext connection never reaches below, so there is nothing to
 * reopen for it. */
static int
tls_fallback_reopen(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  if (tls_fallback_is_plain(self))
    return 0;
  return next_reopen(next, readonly);
}

PASSTHROUGH(tls_fallback, preconnect)

static int64_t
tls_fallback_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct tls_fallback_state *st = self->layer->state;

  if (TLS_FALLBACK_PLAIN(self))
    return (int64_t)st->size;
  return next_get_size(next);
}

static int
tls_fallback_block_size(struct nbd_ctx *self, struct nbd_ctx *next,
                        uint32_t *minimum, uint32_t *preferred,
                        uint32_t *maximum)
{
  if (TLS_FALLBACK_PLAIN(self)) {
    *minimum = *preferred = *maximum = 0;       /* no constraint */
    return 0;
  }
  return next_block_size(next, minimum, preferred, maximum);
}

/* Each capability: no for a plaintext connection, else the layer
 * below's answer. */
#define TLS_FALLBACK_CAP(method)                                            \
  static int                                                                \
  tls_fallback_##method(struct nbd_ctx *self, struct nbd_ctx *next)         \
  {                                                                         \
    if (TLS_FALLBACK_PLAIN(self))                                           \
      return 0;                                                             \
    return next_##method(next);                                             \
  }
TLS_FALLBACK_CAP(can_write)
TLS_FALLBACK_CAP(can_flush)
TLS_FALLBACK_CAP(can_trim)
TLS_FALLBACK_CAP(can_zero)
TLS_FALLBACK_CAP(can_fast_zero)
TLS_FALLBACK_CAP(can_fua)
TLS_FALLBACK_CAP(can_cache)
TLS_FALLBACK_CAP(can_extents)
TLS_FALLBACK_CAP(can_multi_conn)
TLS_FALLBACK_CAP(is_rotational)

static const struct nbd_param tls_fallback_params[] = {
  { "tlsreadme", NBD_PARAM_STRING,
    offsetof(struct tls_fallback_conf, tlsreadme), NULL,
    "the message a plaintext client reads (NUL padded to a multiple of 512 "
    "bytes; default: \"This NBD server requires TLS authentication before "
    "it will serve useful data.\")", NULL, 0 },
  NBD_PARAM_END
};

NBD_REGISTER_FILTER_AS(tls_fallback, "tls-fallback", NBD_PARALLEL,
                       NBD_NEVER_BLOCKS,
  .description = "plaintext clients read a message instead of the export",
  .params = tls_fallback_params,
  .conf_size = sizeof(struct tls_fallback_conf),
  .setup = tls_fallback_setup,
  .cleanup = tls_fallback_cleanup,
  .open = tls_fallback_open,
);
