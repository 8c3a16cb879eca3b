/* nbdstack filter retry: when a request fails, reopen the layers below
 * and send it again (nbdkit's retry filter, same keys and defaults).
 *
 * A failed request waits retry-delay (doubled after each retry with
 * retry-exponential, the default), reopens the layers below this one
 * for this connection (next_reopen: each layer decides what that means;
 * a backend reconnects or reopens its file) and is sent again, up to
 * retries times; the last error is the client's.  With retry-readonly
 * the reopen is read-only, and for the rest of the connection writes
 * fail with EROFS.  A reopen that gives a different size counts as
 * failed: the client was told the old one.
 *
 * Requests of one connection run in parallel; a reopen waits for those
 * in flight and holds the others back (a read-write lock per
 * connection).  When several fail at once, one reopens and the rest
 * retry on the fresh contexts (a generation count).  Other connections
 * have their own contexts and are not touched.  A stopping server ends
 * the waiting early.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"

struct retry_conf {
  uint64_t retries;
  uint64_t delay;               /* ns */
  int exponential;
  int readonly;
};

static const struct nbd_param retry_params[] = {
  { "retries", NBD_PARAM_UINT, offsetof(struct retry_conf, retries), "5",
    "how many times a failed request is retried", NULL, 0 },
  { "retry-delay", NBD_PARAM_DURATION, offsetof(struct retry_conf, delay),
    "2", "wait before the first retry (seconds, or with a unit: 500ms)",
    NULL, 0 },
  { "retry-exponential", NBD_PARAM_BOOL,
    offsetof(struct retry_conf, exponential), "yes",
    "double the wait after each retry", NULL, 0 },
  { "retry-readonly", NBD_PARAM_BOOL, offsetof(struct retry_conf, readonly),
    "no", "after the first failure reopen the layers below read-only for "
    "the rest of the connection", NULL, 0 },
  NBD_PARAM_END
};

struct retry_h {
  pthread_rwlock_t lock;        /* requests shared, a reopen exclusive */
  int readonly;                 /* the mode the layers below are open in */
  int open;                     /* the layers below can take requests */
  uint64_t gen;                 /* raised by every reopen */
  int64_t size;                 /* what the client was told */
  unsigned reopens;
};

static int
retry_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct retry_conf *c = layer->conf;

  if (c->retries > 1000) {
    snprintf(err, errlen, "retries: %" PRIu64 " is more than 1000",
             c->retries);
    return -1;
  }
  return 0;
}

static int
retry_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct retry_h *h = calloc(1, sizeof *h);

  (void)next;
  if (h == NULL)
    return -ENOMEM;
  pthread_rwlock_init(&h->lock, NULL);
  h->readonly = readonly;
  h->open = 1;
  self->handle = h;
  return 0;
}

static int
retry_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct retry_h *h = self->handle;

  (void)readonly;
  h->size = next_get_size(next);
  return h->size < 0 ? (int)h->size : 0;
}

static void
retry_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct retry_h *h = self->handle;

  (void)next;
  if (h) {
    if (h->reopens)
      nbd_debug("export '%s': filter retry: %u reopens on this connection",
                self->layer->export_name, h->reopens);
    pthread_rwlock_destroy(&h->lock);
    free(h);
  }
  self->handle = NULL;
}

/* Reopens below, holding the lock exclusively. */
static void
retry_reopen_below(struct nbd_ctx *self, struct nbd_ctx *next,
                   struct retry_h *h)
{
  const struct retry_conf *c = self->layer->conf;
  int r;

  if (c->readonly)
    h->readonly = 1;
  r = next_reopen(next, h->readonly);
  if (r == 0 && next_get_size(next) != h->size) {
    nbd_error("export '%s': filter retry: the size changed from %" PRId64
              " to %" PRId64 " on reopening", self->layer->export_name,
              h->size, next_get_size(next));
    r = -EIO;
  }
  h->open = r == 0;
  h->gen++;
  h->reopens++;
  if (r < 0)
    nbd_error("export '%s': filter retry: reopen failed: %s",
              self->layer->export_name, strerror(-r));
  else
    nbd_info("export '%s': filter retry: reopened the layers below%s",
             self->layer->export_name, h->readonly ? " read-only" : "");
}

/* One attempt: the request under the shared lock; *gen gets the
 * generation it ran on. */
#define RETRY_ATTEMPT(WRITE, CALL)                                          \
  (pthread_rwlock_rdlock(&h->lock),                                         \
   r = !h->open ? -EIO : (WRITE) && next_can_write(next) <= 0 ? -EROFS : (CALL),     \
   gen = h->gen, pthread_rwlock_unlock(&h->lock), r)

/* Sends a request until it succeeds or the retries are used up.  WRITE:
 * the request changes data (fails with EROFS below a read-only reopen,
 * not retried); RESET runs before each retry. */
#define RETRY(what, WRITE, RESET, CALL)                                     \
  do {                                                                      \
    const struct retry_conf *c_ = self->layer->conf;                        \
    struct retry_h *h = self->handle;                                       \
    uint64_t delay = c_->delay, i_, gen;                                    \
    int r;                                                                  \
                                                                            \
    for (i_ = 0; RETRY_ATTEMPT(WRITE, CALL) < 0; i_++) {                    \
      if (i_ >= c_->retries || r == -EROFS) {                               \
        nbd_debug("export '%s': filter retry: %s failed (%s), giving up",   \
                  self->layer->export_name, what, strerror(-r));            \
        return r;                                                           \
      }                                                                     \
      nbd_debug("export '%s': filter retry: %s failed (%s), retry %"       \
                PRIu64 " of %" PRIu64 " in %" PRIu64 " ms",                 \
                self->layer->export_name, what, strerror(-r), i_ + 1,       \
                c_->retries, delay / 1000000);                              \
      if (nbd_sleep(delay) < 0)                                             \
        return r;                                                           \
      if (c_->exponential && delay < UINT64_MAX / 2)                        \
        delay *= 2;                                                         \
      pthread_rwlock_wrlock(&h->lock);                                      \
      if (h->gen == gen)        /* nobody reopened since this one failed */ \
        retry_reopen_below(self, next, h);                                  \
      pthread_rwlock_unlock(&h->lock);                                      \
      RESET;                                                                \
    }                                                                       \
    return 0;                                                               \
  } while (0)

static int
retry_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
            uint32_t count, uint64_t offset, uint32_t flags)
{
  RETRY("read", 0, (void)0, next_pread(next, buf, count, offset, flags));
}

static int
retry_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
             uint32_t count, uint64_t offset, uint32_t flags)
{
  RETRY("write", 1, (void)0, next_pwrite(next, buf, count, offset, flags));
}

static int
retry_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  RETRY("flush", 0, (void)0, next_flush(next, flags));
}

static int
retry_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  RETRY("trim", 1, (void)0, next_trim(next, count, offset, flags));
}

static int
retry_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  RETRY("zero", 1, (void)0, next_zero(next, count, offset, flags));
}

/* A failed attempt may have added extents: start the list again. */
static int
retry_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
              uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  size_t n0 = extents->n;

  RETRY("block status", 0, extents->n = n0,
        next_extents(next, count, offset, flags, extents));
}

static int
retry_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags)
{
  RETRY("cache", 0, (void)0, next_cache(next, count, offset, flags));
}

/* A retry filter above this one reopening: this one's state (the mode,
 * the size the client was told) stays; below is reopened. */
PASSTHROUGH(retry, reopen)
PASSTHROUGH(retry, depth)
PASSTHROUGH(retry, get_size)
PASSTHROUGH(retry, block_size)
PASSTHROUGH(retry, can_write)
PASSTHROUGH(retry, can_flush)
PASSTHROUGH(retry, can_trim)
PASSTHROUGH(retry, can_zero)
PASSTHROUGH(retry, can_fast_zero)
PASSTHROUGH(retry, can_fua)
PASSTHROUGH(retry, can_cache)
PASSTHROUGH(retry, can_extents)
PASSTHROUGH(retry, can_multi_conn)
PASSTHROUGH(retry, is_rotational)
PASSTHROUGH(retry, list_exports)
PASSTHROUGH(retry, preconnect)

NBD_REGISTER_FILTER(retry, NBD_PARALLEL, NBD_MAY_BLOCK,
  .description = "reopen the layers below and retry failed requests",
  .params = retry_params,
  .conf_size = sizeof(struct retry_conf),
  .setup = retry_setup,
  .open = retry_open,
  .prepare = retry_prepare,
  .close = retry_close,
);
