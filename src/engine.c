/* nbdstack engine: per-connection stacks, capability cache, and the
 * next_<method>() entry points with every emulation in one place.
 *
 * A layer calls next_<m>(next, ...) to reach the layer below; the protocol
 * code calls next_<m>(top, ...) to reach the whole stack.  At each boundary
 * the engine checks the request against the cached capabilities of the
 * layer it enters (write permission, bounds, block-size constraints) and
 * emulates what that layer lacks: FUA by a flush after the write, zero by
 * writing zeros, cache by reading and discarding, extents as "all data".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"

/* The second part of the generated header: the capability asks and the
 * next_<cap>() accessors, made from src/methods.def like the rest. */
#define NBD_METHODS_GEN_ENGINE
#include "methods_gen.h"
#include "params.h"

/* Zeros for write-zero emulation; .bss, never written. */
static char engine_zero_buf[1 << 20];

#define ENGINE_CHUNK (1u << 20)

/* ---- layer instances and exports ---------------------------------------- */

struct nbd_layer *
engine_layer_new(const struct nbd_layer_ops *ops, const char *export_name)
{
  struct nbd_layer *l = calloc(1, sizeof *l);

  if (l == NULL)
    return NULL;
  l->ops = ops;
  l->export_name = export_name;
  l->thread_model = ops->thread_model;
  l->nonblocking = ops->nonblocking;
  if (ops->conf_size > 0) {
    l->conf = calloc(1, ops->conf_size);
    if (l->conf == NULL) {
      free(l);
      return NULL;
    }
  }
  return l;
}

int
engine_layer_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  if (params_finish(layer, err, errlen) == -1)
    return -1;
  if (layer->ops->setup && layer->ops->setup(layer, err, errlen) == -1)
    return -1;
  /* The ops values are what the layer's code was written for; setup may
   * only ask for less concurrency. */
  if (layer->thread_model > layer->ops->thread_model ||
      layer->nonblocking > layer->ops->nonblocking) {
    snprintf(err, errlen, "setup loosened the thread model or nonblocking "
             "class the layer registered");
    return -1;
  }
  return 0;
}

void
engine_layer_free(struct nbd_layer *layer)
{
  if (layer == NULL)
    return;
  if (layer->ops->cleanup)
    layer->ops->cleanup(layer);
  params_free(layer);
  free(layer->conf);
  free(layer);
}

struct nbd_export *
engine_export_new(const char *name)
{
  struct nbd_export *e = calloc(1, sizeof *e);

  if (e == NULL)
    return NULL;
  e->name = strdup(name);
  if (e->name == NULL) {
    free(e);
    return NULL;
  }
  e->tls = -1;
  pthread_mutex_init(&e->lock, NULL);
  return e;
}

void
engine_export_push(struct nbd_export *exp, struct nbd_layer *layer)
{
  struct nbd_layer **p = &exp->top;

  while (*p)
    p = &(*p)->below;
  layer->export_name = exp->name;
  *p = layer;
}

int
engine_export_finish(struct nbd_export *exp, char *err, size_t errlen)
{
  struct nbd_layer *l;
  int backends = 0;

  exp->model = NBD_PARALLEL;
  exp->nonblocking = NBD_NEVER_BLOCKS;
  for (l = exp->top; l; l = l->below) {
    /* Descriptors built by hand (tests) skip the register macros' checks. */
    if (l->thread_model < NBD_SERIALIZE_CONNECTIONS ||
        l->thread_model > NBD_PARALLEL ||
        l->nonblocking < NBD_MAY_BLOCK || l->nonblocking > NBD_NEVER_BLOCKS) {
      snprintf(err, errlen, "%s %s: no valid thread_model and nonblocking",
               l->ops->kind == NBD_LAYER_FILTER ? "filter" : "backend",
               l->ops->name);
      return -1;
    }
    if (l->ops->kind == NBD_LAYER_BACKEND) {
      backends++;
      if (l->below) {
        snprintf(err, errlen, "backend %s must be the last layer",
                 l->ops->name);
        return -1;
      }
    }
    if (l->thread_model < exp->model)
      exp->model = l->thread_model;
    if (l->nonblocking < exp->nonblocking)
      exp->nonblocking = l->nonblocking;
  }
  if (backends != 1) {
    snprintf(err, errlen, "needs exactly one backend (has %d)", backends);
    return -1;
  }
  return 0;
}

/* Guards views and dropped: a config freed on a connection's thread may
 * race the main thread's reload over the same origin. */
static pthread_mutex_t engine_export_lock = PTHREAD_MUTEX_INITIALIZER;

void
engine_export_adopt(struct nbd_export *fresh, struct nbd_export *old)
{
  struct nbd_layer *l, *below;
  struct nbd_export *o = engine_export_origin(old);

  for (l = fresh->top; l; l = below) {  /* setup never ran: no cleanup */
    below = l->below;
    params_free(l);
    free(l->conf);
    free(l);
  }
  fresh->top = o->top;
  fresh->model = o->model;
  fresh->nonblocking = o->nonblocking;
  fresh->origin = o;
  pthread_mutex_lock(&engine_export_lock);
  o->views++;
  pthread_mutex_unlock(&engine_export_lock);
}

struct nbd_export *
engine_export_origin(struct nbd_export *exp)
{
  return exp->origin ? exp->origin : exp;
}

int
engine_export_sign(struct nbd_export *exp, const char *key,
                   const char *value)
{
  size_t n = exp->sig ? strlen(exp->sig) : 0;
  size_t add = strlen(key) + strlen(value) + 2;
  char *s = realloc(exp->sig, n + add + 1);

  if (s == NULL)
    return -1;
  snprintf(s + n, add + 1, "%s=%s\n", key, value);
  exp->sig = s;
  return 0;
}

void
engine_export_free(struct nbd_export *exp)
{
  struct nbd_export *o, *gone = NULL;
  struct nbd_layer *l, *below;

  if (exp == NULL)
    return;
  o = exp->origin;
  pthread_mutex_lock(&engine_export_lock);
  if (o == NULL && exp->views > 0) {
    exp->dropped = 1;           /* a newer config still serves its layers */
    pthread_mutex_unlock(&engine_export_lock);
    return;
  }
  if (o && --o->views == 0 && o->dropped)
    gone = o;
  pthread_mutex_unlock(&engine_export_lock);
  if (o == NULL)
    for (l = exp->top; l; l = below) {
      below = l->below;
      engine_layer_free(l);
    }
  pthread_mutex_destroy(&exp->lock);
  free(exp->name);
  free(exp->description);
  free(exp->sig);
  free(exp);
  if (gone)
    engine_export_free(gone);   /* its last view is gone */
}

/* ---- opening a connection's stack --------------------------------------- */

static int
engine_is_pow2(uint32_t v)
{
  return v != 0 && (v & (v - 1)) == 0;
}

/* Asks every capability of one layer once (engine_gen_ask_caps, from
 * src/methods.def) and normalises the answers. */
static int
engine_cache_caps(struct nbd_ctx *c, int readonly, char *err, size_t errlen)
{
  static const char *const names[] = { NBD_METHOD_NAMES };
  const struct nbd_layer_ops *o = c->layer->ops;
  enum nbd_method failed = NBD_METHOD_COUNT;
  int r;

  r = engine_gen_ask_caps(c, readonly, &failed);
  if (r < 0) {
    snprintf(err, errlen, "%s %s: %s failed: %s",
             o->kind == NBD_LAYER_FILTER ? "filter" : "backend", o->name,
             names[failed], strerror(-r));
    return -1;
  }
  if (c->min_block || c->pref_block || c->max_block) {
    if (!engine_is_pow2(c->min_block) || c->min_block > 65536 ||
        !engine_is_pow2(c->pref_block) || c->pref_block < c->min_block ||
        c->max_block < c->min_block ||
        (c->max_block != 0xffffffff && c->max_block % c->min_block)) {
      snprintf(err, errlen, "%s: invalid block size constraints "
               "minimum=%u preferred=%u maximum=%u", o->name,
               c->min_block, c->pref_block, c->max_block);
      return -1;
    }
  }
  /* PASSTHROUGH of block_size: the hints of the layer below stay hints. */
  if (c->next && c->next->block_advisory && c->min_block == c->next->min_block &&
      c->pref_block == c->next->pref_block &&
      c->max_block == c->next->max_block)
    c->block_advisory = 1;
  /* can_write was asked even so: the layer may want to know. */
  if (readonly)
    c->can_write = 0;
  /* EMULATE (UNSUPPORTED's default too) needs a flush to emulate with. */
  if (c->can_fua == NBD_FUA_EMULATE && !c->can_flush)
    c->can_fua = NBD_FUA_NONE;
  if (c->can_zero != NBD_ZERO_NATIVE)
    c->can_fast_zero = 0;
  c->pull = c->can_write && o->pwrite_from != NULL &&
            (c->next == NULL || c->next->pull);
  c->pull_splice = c->pull && (c->next ? c->next->pull_splice
                                       : o->pull_splice);
  c->serial_writes = c->layer->serial_writes ||
                     (c->next && c->next->serial_writes);
  c->push = o->pread_to != NULL && c->next == NULL;
  c->async = o->submit != NULL && c->next == NULL;
  c->async_src = c->async && o->submit_src;
  return 0;
}

void
nbd_block_size_advisory(struct nbd_ctx *self)
{
  self->block_advisory = 1;
}

const struct nbd_conn_info *
nbd_conn_info(const struct nbd_ctx *ctx)
{
  return ctx->info;
}

/* Asks each layer, top down, under which export name the layers below it
 * open (the export_name hook); a new name gives them a copy of the
 * connection's info.  0, or -1 when out of memory. */
static int
engine_rename(struct nbd_ctx *const *ctxs, size_t n)
{
  size_t i, j;

  for (i = 0; i + 1 < n; i++) {
    const struct nbd_layer_ops *o = ctxs[i]->layer->ops;
    const struct nbd_conn_info *cur = ctxs[i]->info;
    const char *name;

    if (o->export_name == NULL || cur == NULL)
      continue;
    name = o->export_name(ctxs[i], ctxs[i]->next,
                          cur->export_name ? cur->export_name : "");
    if (name == NULL ||
        (cur->export_name && strcmp(name, cur->export_name) == 0))
      continue;
    if ((ctxs[i + 1]->renamed = malloc(sizeof *cur)) == NULL)
      return -1;
    *ctxs[i + 1]->renamed = *cur;
    ctxs[i + 1]->renamed->export_name = name;
    for (j = i + 1; j < n; j++)
      ctxs[j]->info = ctxs[i + 1]->renamed;
  }
  return 0;
}

/* The layer above ctxs[i] that retries opens most often (layer.h,
 * open_retries), or NULL. */
static const struct nbd_layer *
engine_open_retrier(struct nbd_ctx *const *ctxs, size_t i)
{
  const struct nbd_layer *best = NULL;

  while (i-- > 0)
    if (ctxs[i]->layer->open_retries &&
        (best == NULL || ctxs[i]->layer->open_retries > best->open_retries))
      best = ctxs[i]->layer;
  return best;
}

struct nbd_ctx *
engine_open(struct nbd_export *exp, int readonly,
            const struct nbd_conn_info *info, char *err, size_t errlen)
{
  struct nbd_ctx *ctxs[64], *below = NULL;
  struct nbd_layer *l;
  size_t n = 0, i;
  int opened = 0, r, fail_errno = ENOMEM;

  readonly = readonly || exp->readonly;
  for (l = exp->top; l; l = l->below) {
    if (n == sizeof ctxs / sizeof ctxs[0]) {
      snprintf(err, errlen, "stack too deep");
      goto fail;
    }
    ctxs[n] = calloc(1, sizeof *ctxs[n]);
    if (ctxs[n] == NULL) {
      snprintf(err, errlen, "out of memory");
      goto fail;
    }
    ctxs[n]->layer = l;
    ctxs[n]->info = info;
    ctxs[n]->export_readonly = exp->readonly;
    n++;
  }
  for (i = 0; i + 1 < n; i++)
    ctxs[i]->next = ctxs[i + 1];
  if (engine_rename(ctxs, n) == -1) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }

  /* open: inner (backend) to outer. */
  for (i = n; i-- > 0;) {
    const struct nbd_layer_ops *o = ctxs[i]->layer->ops;
    unsigned tries = 0;

    below = ctxs[i]->next;
    while (o->open && (r = o->open(ctxs[i], below, readonly)) < 0) {
      const struct nbd_layer *retry = engine_open_retrier(ctxs, i);

      if (retry == NULL || tries++ >= retry->open_retries ||
          nbd_sleep(retry->open_retry_delay) < 0) {
        snprintf(err, errlen, "%s: open failed: %s", o->name, strerror(-r));
        fail_errno = -r;
        goto fail;
      }
      nbd_debug("export '%s': %s: open failed (%s), retry %u of %u",
                exp->name, o->name, strerror(-r), tries, retry->open_retries);
    }
    opened++;
  }
  /* prepare, then capabilities, inner to outer: a layer's prepare and caps
   * may ask the (already complete) layer below. */
  for (i = n; i-- > 0;) {
    const struct nbd_layer_ops *o = ctxs[i]->layer->ops;
    if (o->prepare && (r = o->prepare(ctxs[i], ctxs[i]->next, readonly)) < 0) {
      snprintf(err, errlen, "%s: prepare failed: %s", o->name, strerror(-r));
      fail_errno = -r;
      goto fail;
    }
    if (engine_cache_caps(ctxs[i], readonly, err, errlen) == -1)
      goto fail;
  }
  return n ? ctxs[0] : NULL;

fail:
  /* close the ones opened (the innermost 'opened' contexts), outer first. */
  for (i = n - (size_t)opened; i < n; i++)
    if (ctxs[i]->layer->ops->close)
      ctxs[i]->layer->ops->close(ctxs[i], ctxs[i]->next);
  for (i = 0; i < n; i++) {
    free(ctxs[i]->renamed);
    free(ctxs[i]);
  }
  errno = fail_errno;
  return NULL;
}

/* True when c or a context below it was left closed by a failed reopen. */
static int
engine_closed_below(const struct nbd_ctx *c)
{
  for (; c; c = c->next)
    if (c->closed)
      return 1;
  return 0;
}

int
engine_close(struct nbd_ctx *top)
{
  struct nbd_ctx *c, *next;
  int r, ret = 0;

  /* A layer over a closed one would finalize (flush) into nothing. */
  for (c = top; c; c = c->next)
    if (c->layer->ops->finalize && !engine_closed_below(c) &&
        (r = c->layer->ops->finalize(c, c->next)) < 0)
      ret = r;
  for (c = top; c; c = next) {
    next = c->next;
    if (c->layer->ops->close && !c->closed)
      c->layer->ops->close(c, c->next);
    free(c->renamed);
    free(c);
  }
  return ret;
}

/* ---- reopening (layer.h "Reopening") ------------------------------------- */

int
next_reopen(struct nbd_ctx *c, int readonly)
{
  char err[256];
  int r;

  r = c->layer->ops->reopen(c, c->next, readonly);
  if (r < 0)
    return r;
  if (engine_cache_caps(c, readonly, err, sizeof err) == -1) {
    nbd_error("export '%s': reopen: %s", c->layer->export_name, err);
    return -EIO;
  }
  return 0;
}

int
nbd_reopen_close_open(struct nbd_ctx *self, struct nbd_ctx *next,
                      int readonly)
{
  const struct nbd_layer_ops *o = self->layer->ops;
  int r;

  if (!self->closed) {
    /* The layer below may be what failed: a finalize that cannot flush
     * is logged, the reopen goes on. */
    if (o->finalize && !engine_closed_below(next) &&
        (r = o->finalize(self, next)) < 0)
      nbd_debug("export '%s': %s: finalize before reopen: %s",
                self->layer->export_name, o->name, strerror(-r));
    if (o->close)
      o->close(self, next);
    self->handle = NULL;
    self->closed = 1;
  }
  if (next && (r = next_reopen(next, readonly)) < 0)
    return r;
  if (o->open && (r = o->open(self, next, readonly)) < 0)
    return r;
  self->closed = 0;
  if (o->prepare && (r = o->prepare(self, next, readonly)) < 0) {
    if (o->close)
      o->close(self, next);
    self->handle = NULL;
    self->closed = 1;
    return r;
  }
  return 0;
}

/* ---- boundary checks ----------------------------------------------------- */

/* Range within the size and aligned to the layer's minimum block size
 * (unless the layer gave it as a hint, block_advisory). */
static int
engine_check_range(const struct nbd_ctx *c, uint64_t count, uint64_t offset,
                   int err_past_end)
{
  if ((uint64_t)c->size < count || offset > (uint64_t)c->size - count)
    return -err_past_end;
  if (c->min_block > 1 && !c->block_advisory &&
      ((offset | count) & (c->min_block - 1)) != 0)
    return -EINVAL;
  return 0;
}

static int
engine_check_payload(const struct nbd_ctx *c, uint32_t count)
{
  if (c->max_block && !c->block_advisory && count > c->max_block)
    return -EINVAL;
  return 0;
}

/* FUA asked of a layer: returns the flags to pass down and sets *flush when
 * the engine must flush afterwards. */
static int
engine_fua(const struct nbd_ctx *c, uint32_t *flags, int *flush)
{
  *flush = 0;
  if (!(*flags & NBD_CMD_FLAG_FUA))
    return 0;
  switch (c->can_fua) {
  case NBD_FUA_NATIVE:
    return 0;
  case NBD_FUA_EMULATE:
    *flags &= ~NBD_CMD_FLAG_FUA;
    *flush = 1;
    return 0;
  default:
    return -EINVAL;
  }
}

static int
engine_after_write(struct nbd_ctx *c, int r, int flush)
{
  if (r == 0 && flush)
    r = c->layer->ops->flush(c, c->next, 0);
  return r;
}

/* ---- datapath entry points ----------------------------------------------- */

int
next_pread(struct nbd_ctx *c, void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  int r;

  if ((r = engine_check_range(c, count, offset, EINVAL)) < 0 ||
      (r = engine_check_payload(c, count)) < 0)
    return r;
  return c->layer->ops->pread(c, c->next, buf, count, offset, flags);
}

int
next_pwrite(struct nbd_ctx *c, const void *buf, uint32_t count,
            uint64_t offset, uint32_t flags)
{
  int r, flush;

  if (!c->can_write)
    return -EPERM;
  if ((r = engine_check_range(c, count, offset, ENOSPC)) < 0 ||
      (r = engine_check_payload(c, count)) < 0 ||
      (r = engine_fua(c, &flags, &flush)) < 0)
    return r;
  r = c->layer->ops->pwrite(c, c->next, buf, count, offset, flags);
  return engine_after_write(c, r, flush);
}

int
next_pread_to(struct nbd_ctx *c, struct nbd_sink *dst, uint32_t count,
              uint64_t offset, uint32_t flags)
{
  int r;

  if ((r = engine_check_range(c, count, offset, EINVAL)) < 0 ||
      (r = engine_check_payload(c, count)) < 0)
    return r;
  if (dst->left != count || !c->push)
    return -EINVAL;             /* the protocol code's bug */
  return c->layer->ops->pread_to(c, c->next, dst, count, offset, flags);
}

/* The checks of next_pread and next_pwrite; FUA only where the layer
 * has it natively (emulating it needs a flush after the write: the
 * caller runs such a write the usual way, on -EOPNOTSUPP). */
int
next_submit(struct nbd_ctx *c, struct nbd_async *a)
{
  int r;

  if (!c->async)
    return -EOPNOTSUPP;
  if (a->op == NBD_ASYNC_WRITE && !c->can_write)
    return -EPERM;
  if ((r = engine_check_range(c, a->count, a->offset,
                              a->op == NBD_ASYNC_READ ? EINVAL : ENOSPC)) < 0 ||
      (r = engine_check_payload(c, a->count)) < 0)
    return r;
  if (a->op == NBD_ASYNC_READ)
    a->flags &= ~(uint32_t)NBD_CMD_FLAG_FUA;
  else if ((a->flags & NBD_CMD_FLAG_FUA) && c->can_fua != NBD_FUA_NATIVE)
    return -EOPNOTSUPP;
  return c->layer->ops->submit(c, c->next, a);
}

int
nbd_sink_writev(struct nbd_sink *dst, const struct iovec *iov, int n)
{
  uint64_t len = 0;
  int i;

  if (dst->failed)
    return -EIO;
  for (i = 0; i < n; i++)
    len += iov[i].iov_len;
  if (len > dst->left)
    return -EINVAL;
  if (len == 0)
    return 0;
  if (dst->writev(dst, iov, n) == -1) {
    dst->failed = 1;
    return -EIO;
  }
  dst->left -= len;
  return 0;
}

/* ---- write payloads still in the socket ---------------------------------- */

int
nbd_source_readv(struct nbd_source *src, struct iovec *iov, int n)
{
  uint64_t len = 0;
  int i;

  if (src->failed)
    return -EIO;
  for (i = 0; i < n; i++)
    len += iov[i].iov_len;
  if (len > src->left)
    return -EINVAL;
  if (len == 0)
    return 0;
  if (src->readv(src, iov, n) == -1) {
    src->failed = 1;
    return -EIO;
  }
  src->left -= len;
  return 0;
}

int
nbd_source_read(struct nbd_source *src, void *buf, size_t len)
{
  struct iovec iov = { buf, len };

  return nbd_source_readv(src, &iov, 1);
}

int
nbd_source_skip(struct nbd_source *src, uint64_t len)
{
  char tmp[8192];
  int r = 0;

  while (len > 0 && r == 0) {
    size_t n = len < sizeof tmp ? (size_t)len : sizeof tmp;
    r = nbd_source_read(src, tmp, n);
    len -= n;
  }
  return r;
}

/* src->splice to fd (at *off, or a stream when NULL): 0, -EIO (the client
 * connection failed), -EINVAL, or -2 when writing fd failed (errno says
 * why). */
static int
engine_source_splice(struct nbd_source *src, int fd, int64_t *off,
                     uint64_t len)
{
  uint64_t moved = 0;
  int r;

  if (src->failed)
    return -EIO;
  if (len > src->left || src->splice == NULL)
    return -EINVAL;
  r = src->splice(src, fd, off, len, &moved);
  src->left -= moved;
  if (r == -1) {
    src->failed = 1;
    return -EIO;
  }
  return r;
}

int
nbd_source_splice(struct nbd_source *src, int fd, uint64_t len)
{
  int r = engine_source_splice(src, fd, NULL, len);

  return r == -2 ? -EPIPE : r;
}

uint64_t
nbd_source_ready(struct nbd_source *src)
{
  uint64_t n;

  if (src->failed || src->ready == NULL)
    return 0;
  n = src->ready(src);
  return n < src->left ? n : src->left;
}

/* An empty pipe, not blocking: a target that takes splices answers
 * EAGAIN (nothing to write), one that does not EINVAL first. */
int
nbd_can_splice_at(int fd)
{
  int p[2], ok;
  loff_t at = 0;

  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) == -1)
    return 0;
  ok = splice(p[0], NULL, fd, &at, 4096, SPLICE_F_NONBLOCK) == -1 &&
       errno == EAGAIN;
  close(p[0]);
  close(p[1]);
  return ok;
}

int
nbd_source_splice_at(struct nbd_source *src, int fd, uint64_t len,
                     uint64_t offset)
{
  int64_t off = (int64_t)offset;
  int r;

  if (offset > INT64_MAX)
    return -EINVAL;
  r = engine_source_splice(src, fd, &off, len);
  return r == -2 ? -(errno ? errno : EIO) : r;
}

int
nbd_pwrite_buffered(struct nbd_ctx *self, struct nbd_source *src,
                    uint32_t count, uint64_t offset, uint32_t flags)
{
  void *buf;
  int r;

  if (posix_memalign(&buf, 4096, count ? count : 1) != 0)
    return -ENOMEM;
  r = nbd_source_read(src, buf, count);
  if (r == 0)
    r = self->layer->ops->pwrite(self, self->next, buf, count, offset,
                                 flags);
  free(buf);
  return r;
}

int
next_pwrite_from(struct nbd_ctx *c, struct nbd_source *src, uint32_t count,
                 uint64_t offset, uint32_t flags)
{
  uint64_t end = src->left - (src->left < count ? src->left : count);
  int r, flush = 0;

  if (!c->can_write)
    r = -EPERM;
  else if ((r = engine_check_range(c, count, offset, ENOSPC)) == 0 &&
           (r = engine_check_payload(c, count)) == 0 &&
           (r = engine_fua(c, &flags, &flush)) == 0) {
    if (src->left < count)
      r = -EINVAL;
    else if (c->layer->ops->pwrite_from)
      r = c->layer->ops->pwrite_from(c, c->next, src, count, offset, flags);
    else
      r = nbd_pwrite_buffered(c, src, count, offset, flags);
  }
  /* What the layer did not take of these count bytes must still leave
   * the socket. */
  if (!src->failed && src->left > end) {
    int s = nbd_source_skip(src, src->left - end);
    if (r == 0)
      r = s;
  }
  return engine_after_write(c, r, flush);
}

int
next_flush(struct nbd_ctx *c, uint32_t flags)
{
  if (!c->can_flush)
    return -EINVAL;
  return c->layer->ops->flush(c, c->next, flags);
}

int
next_trim(struct nbd_ctx *c, uint64_t count, uint64_t offset, uint32_t flags)
{
  int r, flush;

  if (!c->can_write)
    return -EPERM;
  if (!c->can_trim)
    return -EOPNOTSUPP;
  if ((r = engine_check_range(c, count, offset, EINVAL)) < 0 ||
      (r = engine_fua(c, &flags, &flush)) < 0)
    return r;
  r = c->layer->ops->trim(c, c->next, count, offset, flags);
  return engine_after_write(c, r, flush);
}

/* Zero by writing zeros, in chunks that respect the layer's limits.  A FUA
 * still in flags (native FUA) goes on every chunk: each write must be
 * durable before the zero request is answered. */
static int
engine_emulate_zero(struct nbd_ctx *c, uint64_t count, uint64_t offset,
                    uint32_t flags)
{
  uint32_t chunk = ENGINE_CHUNK;
  int r;

  if (c->max_block && c->max_block < chunk)
    chunk = c->max_block;
  while (count > 0) {
    uint32_t n = count < chunk ? (uint32_t)count : chunk;
    r = c->layer->ops->pwrite(c, c->next, engine_zero_buf, n, offset,
                              flags & NBD_CMD_FLAG_FUA);
    if (r < 0)
      return r;
    count -= n;
    offset += n;
  }
  return 0;
}

int
next_zero(struct nbd_ctx *c, uint64_t count, uint64_t offset, uint32_t flags)
{
  int r, flush;

  if (!c->can_write)
    return -EPERM;
  if (c->can_zero == NBD_ZERO_NONE)
    return -EOPNOTSUPP;
  if ((r = engine_check_range(c, count, offset, ENOSPC)) < 0 ||
      (r = engine_fua(c, &flags, &flush)) < 0)
    return r;
  if (c->can_zero == NBD_ZERO_NATIVE) {
    if ((flags & NBD_CMD_FLAG_FAST_ZERO) && !c->can_fast_zero)
      return -ENOTSUP;
    r = c->layer->ops->zero(c, c->next, count, offset, flags);
    /* A native zero may still decline this request; fall back unless the
     * client asked for a fast zero. */
    if (r != -EOPNOTSUPP || (flags & NBD_CMD_FLAG_FAST_ZERO))
      return engine_after_write(c, r, flush);
  }
  else if (flags & NBD_CMD_FLAG_FAST_ZERO)
    return -ENOTSUP;
  r = engine_emulate_zero(c, count, offset, flags);
  return engine_after_write(c, r, flush);
}

int
next_extents(struct nbd_ctx *c, uint64_t count, uint64_t offset,
             uint32_t flags, struct nbd_extents *extents)
{
  int r;

  if ((r = engine_check_range(c, count, offset, EINVAL)) < 0)
    return r;
  if (count == 0)
    return 0;
  if (!c->can_extents)
    return nbd_extents_add(extents, offset, count, 0);
  return c->layer->ops->extents(c, c->next, count, offset, flags, extents);
}

/* qemu:allocation-depth.  Every layer answers (no capability): a backend
 * by UNSUPPORTED's NBD_DEPTH_ONE, made an extent here. */
int
next_depth(struct nbd_ctx *c, uint64_t count, uint64_t offset,
           uint32_t flags, struct nbd_extents *extents)
{
  int r;

  if ((r = engine_check_range(c, count, offset, EINVAL)) < 0)
    return r;
  if (count == 0)
    return 0;
  r = c->layer->ops->depth(c, c->next, count, offset, flags, extents);
  if (r == NBD_DEPTH_ONE)
    r = nbd_extents_add(extents, offset, count, 1);
  return r;
}

int
next_cache(struct nbd_ctx *c, uint64_t count, uint64_t offset, uint32_t flags)
{
  uint32_t chunk = ENGINE_CHUNK;
  void *buf;
  int r = 0;

  if ((r = engine_check_range(c, count, offset, EINVAL)) < 0)
    return r;
  switch (c->can_cache) {
  case NBD_CACHE_NATIVE:
    return c->layer->ops->cache(c, c->next, count, offset, flags);
  case NBD_CACHE_EMULATE:
    break;
  default:
    return -EINVAL;
  }
  if (c->max_block && c->max_block < chunk)
    chunk = c->max_block;
  if (count < chunk)
    chunk = (uint32_t)count;
  if (chunk == 0)
    return 0;
  buf = malloc(chunk);
  if (buf == NULL)
    return -ENOMEM;
  while (count > 0 && r == 0) {
    uint32_t n = count < chunk ? (uint32_t)count : chunk;
    r = c->layer->ops->pread(c, c->next, buf, n, offset, 0);
    count -= n;
    offset += n;
  }
  free(buf);
  return r;
}

/* The capability entry points, next_get_size() ... next_is_rotational(),
 * return the cached answers; they are generated with engine_gen_ask_caps
 * (methods_gen.h, included above). */

/* ---- export names (layer.h "export names") -------------------------------- */

int
nbd_exports_add(struct nbd_exports *e, const char *name,
                const char *description)
{
  struct nbd_export_name *v, *x;

  if (e->n == e->cap) {
    size_t cap = e->cap ? 2 * e->cap : 16;
    if ((v = realloc(e->v, cap * sizeof *v)) == NULL)
      return -ENOMEM;
    e->v = v;
    e->cap = cap;
  }
  x = &e->v[e->n];
  x->name = strdup(name);
  x->description = description ? strdup(description) : NULL;
  if (x->name == NULL || (description && x->description == NULL)) {
    free(x->name);
    free(x->description);
    return -ENOMEM;
  }
  e->n++;
  return 0;
}

void
nbd_exports_clear(struct nbd_exports *e)
{
  size_t i;

  for (i = 0; i < e->n; i++) {
    free(e->v[i].name);
    free(e->v[i].description);
  }
  free(e->v);
  e->v = NULL;
  e->n = e->cap = 0;
}

int
nbd_exports_has(const struct nbd_exports *e, const char *name)
{
  size_t i;

  for (i = 0; i < e->n; i++)
    if (strcmp(e->v[i].name, name) == 0)
      return 1;
  return 0;
}

const char *
next_export_description(struct nbd_ctx *c)
{
  for (; c != NULL; c = c->next)
    if (c->layer->ops->export_description)
      return c->layer->ops->export_description(c, c->next);
  return NULL;
}

/* No capability to check: the contexts are not opened. */
int
next_list_exports(struct nbd_ctx *c, struct nbd_exports *exports)
{
  return c->layer->ops->list_exports(c, c->next, exports);
}

/* No capability to check either. */
int
next_preconnect(struct nbd_ctx *c)
{
  return c->layer->ops->preconnect(c, c->next);
}

/* Contexts never opened (on the heap: musl's thread stacks are small),
 * for the name methods: a layer may look at its layer (conf, state), info
 * and next, nothing else.  NULL when out of memory or the stack is
 * empty. */
static struct nbd_ctx *
engine_unopened(struct nbd_export *exp, const struct nbd_conn_info *info)
{
  struct nbd_ctx *ctxs;
  struct nbd_layer *l;
  size_t n = 0, i;

  for (l = exp->top; l; l = l->below)
    n++;
  if (n == 0 || (ctxs = calloc(n, sizeof *ctxs)) == NULL)
    return NULL;
  for (l = exp->top, i = 0; l; l = l->below, i++) {
    ctxs[i].layer = l;
    ctxs[i].info = info;
    ctxs[i].export_readonly = exp->readonly;
    ctxs[i].next = i + 1 < n ? &ctxs[i + 1] : NULL;
  }
  return ctxs;
}

int
engine_preconnect(struct nbd_export *exp, const struct nbd_conn_info *info)
{
  struct nbd_ctx *ctxs;
  int r;

  if (exp->top == NULL)
    return 0;
  if ((ctxs = engine_unopened(exp, info)) == NULL)
    return -ENOMEM;
  r = next_preconnect(&ctxs[0]);
  free(ctxs);
  return r < 0 ? r : 0;
}

int
engine_list_exports(struct nbd_export *exp, const struct nbd_conn_info *info,
                    struct nbd_exports *exports)
{
  struct nbd_ctx *ctxs;
  int r;

  if (exp->top == NULL)
    return 0;
  if ((ctxs = engine_unopened(exp, info)) == NULL)
    return -ENOMEM;
  r = next_list_exports(&ctxs[0], exports);
  free(ctxs);
  if (r <= 0)
    nbd_exports_clear(exports);
  return r < 0 ? r : r > 0;
}
