/* nbdstack filter scan: prefetch the whole disk in the background with
 * cache requests to the layer below (nbdkit's scan filter, same keys and
 * defaults).
 *
 * While a client is connected, one thread per export walks the disk from
 * the scan position in scan-size steps, sending each step below as a
 * cache request.  The thread runs on one connection's contexts; when that
 * connection closes, the thread stops (joined before close returns) and
 * starts again at the same position on another connection still open,
 * so the scan goes on while any client is connected (nbdkit: each
 * connection runs a scan of its own, which stops with it; the others'
 * go on, all of them prefetching the same blocks).  A stopping server
 * stops it too.
 *
 *   scan-ahead (default true): a read beyond the scan position moves the
 *     position to the end of that read: prefetch stays ahead of reads.
 *   scan-clock (default true): the position survives the clients; false
 *     starts from 0 whenever a client connects after all had left.
 *   scan-forever (default false): after the end, start again at 0.
 *   scan-size (default 2M): the step, a power of two up to 1G.
 *
 * Unlike nbdkit (default export only) every export name is scanned.  As
 * in nbdkit it does nothing, with a warning, when the layers below
 * cannot cache or cannot take requests in parallel.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"

struct scan_conf {
  int ahead, clock, forever;
  uint64_t size;
};

static const struct nbd_param scan_params[] = {
  { "scan-ahead", NBD_PARAM_BOOL, offsetof(struct scan_conf, ahead), "true",
    "skip forward past client reads beyond the scan position", NULL, 0 },
  { "scan-clock", NBD_PARAM_BOOL, offsetof(struct scan_conf, clock), "true",
    "resume where the scan stopped when a client connects after all had "
    "left (false: start again at 0)", NULL, 0 },
  { "scan-forever", NBD_PARAM_BOOL, offsetof(struct scan_conf, forever),
    "false", "after the end of the disk, start again at 0", NULL, 0 },
  { "scan-size", NBD_PARAM_SIZE, offsetof(struct scan_conf, size), "2M",
    "size of each cache request (a power of 2)", NULL, 0 },
  NBD_PARAM_END
};

/* Per export. */
struct scan_state {
  pthread_mutex_t lock;
  uint64_t pos;                 /* next byte to prefetch */
  unsigned conns;               /* connections open */
  int running;                  /* a connection's thread is scanning */
  struct scan_h *live;          /* connections that may scan, newest first */
};

/* Per connection. */
struct scan_h {
  struct nbd_ctx *self, *next;
  pthread_t thread;
  int owner;                    /* this connection runs the thread (lock) */
  int counted;                  /* counted in conns, in live */
  struct scan_h *prev, *nextc;  /* in live */
  int stop;                     /* atomic: ask the thread to stop */
  uint64_t size;
};

static int
scan_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct scan_conf *c = layer->conf;
  struct scan_state *st;

  if (c->size == 0 || (c->size & (c->size - 1)) || c->size > (1u << 30)) {
    snprintf(err, errlen, "scan-size: %" PRIu64 " is not a power of 2 "
             "between 1 and 1G", c->size);
    return -1;
  }
  if ((st = calloc(1, sizeof *st)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  pthread_mutex_init(&st->lock, NULL);
  layer->state = st;
  return 0;
}

static void
scan_cleanup(struct nbd_layer *layer)
{
  struct scan_state *st = layer->state;

  if (st) {
    pthread_mutex_destroy(&st->lock);
    free(st);
  }
  layer->state = NULL;
}

static void *
scan_thread(void *arg)
{
  struct scan_h *h = arg;
  const struct nbd_layer *l = h->self->layer;
  const struct scan_conf *c = l->conf;
  struct scan_state *st = l->state;

  while (!__atomic_load_n(&h->stop, __ATOMIC_ACQUIRE) &&
         !nbd_server_stopping()) {
    uint64_t p, n;
    int r;

    pthread_mutex_lock(&st->lock);
    if (st->pos >= h->size && c->forever)
      st->pos = 0;
    p = st->pos;
    pthread_mutex_unlock(&st->lock);
    if (p >= h->size) {
      nbd_debug("export '%s': filter scan: the whole disk is prefetched",
                l->export_name);
      break;
    }
    n = h->size - p < c->size ? h->size - p : c->size;
    r = next_cache(h->next, n, p, 0);
    if (r < 0)
      nbd_debug("export '%s': filter scan: cache of %" PRIu64 " bytes at %"
                PRIu64 ": %s", l->export_name, n, p, strerror(-r));
    pthread_mutex_lock(&st->lock);
    if (st->pos == p)           /* a read did not move it meanwhile */
      st->pos = p + n;
    pthread_mutex_unlock(&st->lock);
  }
  return NULL;
}

/* Starts the thread on h's contexts (st->lock held); 0 or an errno. */
static int
scan_start(struct scan_state *st, struct scan_h *h)
{
  int r;

  h->stop = 0;
  r = pthread_create(&h->thread, NULL, scan_thread, h);
  h->owner = st->running = r == 0;
  return r;
}

static int
scan_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct scan_h *h = calloc(1, sizeof *h);

  (void)readonly;
  if (h == NULL)
    return -ENOMEM;
  h->self = self;
  h->next = next;
  self->handle = h;
  return 0;
}

static int
scan_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  const struct scan_conf *c = self->layer->conf;
  struct scan_state *st = self->layer->state;
  struct scan_h *h = self->handle;
  const char *why = nbd_prefetch_unable(self, next);
  int64_t size = next_get_size(next);
  int r = 0;

  (void)readonly;
  if (size < 0)
    return (int)size;
  h->size = (uint64_t)size;
  if (nbd_checking())           /* --check-config: open, change nothing */
    return 0;
  if (why) {
    nbd_warn("export '%s': filter scan: does nothing: %s",
             self->layer->export_name, why);
    return 0;
  }
  pthread_mutex_lock(&st->lock);
  if (st->conns++ == 0 && !c->clock)
    st->pos = 0;
  h->counted = 1;
  h->nextc = st->live;
  if (st->live)
    st->live->prev = h;
  st->live = h;
  if (!st->running)
    r = scan_start(st, h);
  pthread_mutex_unlock(&st->lock);
  return -r;
}

static void
scan_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct scan_state *st = self->layer->state;
  struct scan_h *h = self->handle;

  int owner;

  (void)next;
  if (h == NULL)
    return;
  /* Out of live first: no one hands the scan to this connection now. */
  pthread_mutex_lock(&st->lock);
  if (h->counted) {
    if (h->prev)
      h->prev->nextc = h->nextc;
    else
      st->live = h->nextc;
    if (h->nextc)
      h->nextc->prev = h->prev;
    st->conns--;
  }
  owner = h->owner;
  pthread_mutex_unlock(&st->lock);
  if (owner) {
    __atomic_store_n(&h->stop, 1, __ATOMIC_RELEASE);
    pthread_join(h->thread, NULL);
    /* The scan goes on from where it is, on a connection still open. */
    pthread_mutex_lock(&st->lock);
    st->running = 0;
    if (st->live && !nbd_server_stopping() &&
        scan_start(st, st->live) != 0)
      nbd_warn("export '%s': filter scan: cannot start a thread: the scan "
               "stops", self->layer->export_name);
    pthread_mutex_unlock(&st->lock);
  }
  free(h);
  self->handle = NULL;
}

static int
scan_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
           uint32_t count, uint64_t offset, uint32_t flags)
{
  const struct scan_conf *c = self->layer->conf;
  struct scan_state *st = self->layer->state;

  if (c->ahead) {
    pthread_mutex_lock(&st->lock);
    if (offset + count > st->pos)
      st->pos = offset + count;
    pthread_mutex_unlock(&st->lock);
  }
  return next_pread(next, buf, count, offset, flags);
}

PASSTHROUGH(scan, pwrite)
PASSTHROUGH(scan, flush)
PASSTHROUGH(scan, trim)
PASSTHROUGH(scan, zero)
PASSTHROUGH(scan, extents)
PASSTHROUGH(scan, depth)
PASSTHROUGH(scan, cache)

/* reopen: the thread stops with close and starts again with prepare. */
#define scan_reopen nbd_reopen_close_open

PASSTHROUGH(scan, get_size)
PASSTHROUGH(scan, block_size)
PASSTHROUGH(scan, can_write)
PASSTHROUGH(scan, can_flush)
PASSTHROUGH(scan, can_trim)
PASSTHROUGH(scan, can_zero)
PASSTHROUGH(scan, can_fast_zero)
PASSTHROUGH(scan, can_fua)
PASSTHROUGH(scan, can_cache)
PASSTHROUGH(scan, can_extents)
PASSTHROUGH(scan, can_multi_conn)
PASSTHROUGH(scan, is_rotational)
PASSTHROUGH(scan, list_exports)
PASSTHROUGH(scan, preconnect)

NBD_REGISTER_FILTER(scan, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "prefetch the whole disk in the background (cache "
                 "requests below)",
  .params = scan_params,
  .conf_size = sizeof(struct scan_conf),
  .setup = scan_setup,
  .cleanup = scan_cleanup,
  .open = scan_open,
  .prepare = scan_prepare,
  .close = scan_close,
);
