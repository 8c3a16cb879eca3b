/* nbdstack filter retry-request: retry a failed request, without
 * reopening anything (nbdkit's retry-request filter, same keys and
 * defaults).
 *
 * Every datapath request that fails below is sent again, up to
 * retry-request-retries more times, retry-request-delay apart; the last
 * error is the client's.  With retry-request-open (the default) a failed
 * open of a layer below is retried the same way, by the engine (layer.h,
 * open_retries).  The retry filter is the heavier kind: it reopens the
 * layers below before each retry.
 *
 * No pwrite_from: a payload read from the socket could not be sent a
 * second time, so the engine hands this filter a buffer.  A stopping
 * server ends the waiting early and the request fails with its last
 * error.
 */
#include <inttypes.h>
#include <string.h>

#include "layer.h"

struct retry_request_conf {
  uint64_t retries;
  uint64_t delay;               /* ns */
  int open;
};

static const struct nbd_param retry_request_params[] = {
  { "retry-request-retries", NBD_PARAM_UINT,
    offsetof(struct retry_request_conf, retries), "2",
    "how many times a failed request is sent again", NULL, 0 },
  { "retry-request-delay", NBD_PARAM_DURATION,
    offsetof(struct retry_request_conf, delay), "2",
    "wait between retries (seconds, or with a unit: 500ms)", NULL, 0 },
  { "retry-request-open", NBD_PARAM_BOOL,
    offsetof(struct retry_request_conf, open), "true",
    "retry a failed open of the layers below too", NULL, 0 },
  NBD_PARAM_END
};

static int
retry_request_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct retry_request_conf *c = layer->conf;

  if (c->retries > 1000) {
    snprintf(err, errlen, "retry-request-retries: %" PRIu64 " is more than "
             "1000", c->retries);
    return -1;
  }
  if (c->open) {
    layer->open_retries = (unsigned)c->retries;
    layer->open_retry_delay = c->delay;
  }
  /* A retry waits. */
  layer->nonblocking = NBD_MAY_BLOCK;
  return 0;
}

/* Sends a request until it succeeds or the retries are used up.  CALL is
 * the request; RESET runs before each retry. */
#define RETRY_REQUEST(what, RESET, CALL)                                    \
  do {                                                                      \
    const struct retry_request_conf *c_ = self->layer->conf;                \
    uint64_t i_;                                                            \
    int r_ = (CALL);                                                        \
                                                                            \
    for (i_ = 0; r_ < 0 && i_ < c_->retries; i_++) {                        \
      nbd_debug("export '%s': filter retry-request: %s failed (%s), "       \
                "retry %" PRIu64 " of %" PRIu64, self->layer->export_name,  \
                what, strerror(-r_), i_ + 1, c_->retries);                  \
      if (nbd_sleep(c_->delay) < 0)                                         \
        break;                                                              \
      RESET;                                                                \
      r_ = (CALL);                                                          \
    }                                                                       \
    return r_;                                                              \
  } while (0)

static int
retry_request_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
                    uint32_t count, uint64_t offset, uint32_t flags)
{
  RETRY_REQUEST("read", (void)0, next_pread(next, buf, count, offset, flags));
}

static int
retry_request_pwrite(struct nbd_ctx *self, struct nbd_ctx *next,
                     const void *buf, uint32_t count, uint64_t offset,
                     uint32_t flags)
{
  RETRY_REQUEST("write", (void)0,
                next_pwrite(next, buf, count, offset, flags));
}

static int
retry_request_flush(struct nbd_ctx *self, struct nbd_ctx *next,
                    uint32_t flags)
{
  RETRY_REQUEST("flush", (void)0, next_flush(next, flags));
}

static int
retry_request_trim(struct nbd_ctx *self, struct nbd_ctx *next,
                   uint64_t count, uint64_t offset, uint32_t flags)
{
  RETRY_REQUEST("trim", (void)0, next_trim(next, count, offset, flags));
}

static int
retry_request_zero(struct nbd_ctx *self, struct nbd_ctx *next,
                   uint64_t count, uint64_t offset, uint32_t flags)
{
  RETRY_REQUEST("zero", (void)0, next_zero(next, count, offset, flags));
}

/* A failed attempt may have added extents: start the list again. */
static int
retry_request_extents(struct nbd_ctx *self, struct nbd_ctx *next,
                      uint64_t count, uint64_t offset, uint32_t flags,
                      struct nbd_extents *extents)
{
  size_t n0 = extents->n;

  RETRY_REQUEST("block status", extents->n = n0,
                next_extents(next, count, offset, flags, extents));
}

static int
retry_request_cache(struct nbd_ctx *self, struct nbd_ctx *next,
                    uint64_t count, uint64_t offset, uint32_t flags)
{
  RETRY_REQUEST("cache", (void)0, next_cache(next, count, offset, flags));
}

PASSTHROUGH(retry_request, reopen)
PASSTHROUGH(retry_request, depth)
PASSTHROUGH(retry_request, get_size)
PASSTHROUGH(retry_request, block_size)
PASSTHROUGH(retry_request, can_write)
PASSTHROUGH(retry_request, can_flush)
PASSTHROUGH(retry_request, can_trim)
PASSTHROUGH(retry_request, can_zero)
PASSTHROUGH(retry_request, can_fast_zero)
PASSTHROUGH(retry_request, can_fua)
PASSTHROUGH(retry_request, can_cache)
PASSTHROUGH(retry_request, can_extents)
PASSTHROUGH(retry_request, can_multi_conn)
PASSTHROUGH(retry_request, is_rotational)
PASSTHROUGH(retry_request, list_exports)
PASSTHROUGH(retry_request, preconnect)

NBD_REGISTER_FILTER_AS(retry_request, "retry-request",
  NBD_PARALLEL, NBD_MAY_BLOCK,
  .description = "retry failed requests (and opens) without reopening",
  .params = retry_request_params,
  .conf_size = sizeof(struct retry_request_conf),
  .setup = retry_request_setup,
);
