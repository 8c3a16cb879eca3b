/* nbdstack filter readahead: prefetch ahead of sequential reads through
 * the cache method of the layer below (nbdkit's readahead filter; no
 * keys).
 *
 * Each connection watches its own reads.  A read that starts where the
 * previous one ended continues a run; the window ahead of it starts at
 * 64 KiB and doubles with each read of the run, up to 8 MiB.  The part of
 * the window not asked for yet goes to a prefetch thread of the
 * connection, which sends it below as cache requests while the reads go
 * on; the reads never wait for it.  A read elsewhere ends the run (window
 * back to 64 KiB, nothing prefetched); a write, trim or zero does the
 * same and drops any prefetch not started yet, so data just changed is
 * not fetched again for nothing.  Connections do not share a window:
 * two clients reading different places (multi-conn) each get their own
 * run, and the thread only ever uses its own connection's contexts.
 *
 * It does nothing, with a warning, when the layers below cannot cache
 * (can_cache none: put the cache filter, or cow with cow-on-cache, below)
 * or cannot take requests in parallel (the prefetch runs beside the
 * reads), as nbdkit.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"

#define READAHEAD_MIN ((uint64_t)64 << 10)
#define READAHEAD_MAX ((uint64_t)8 << 20)

struct readahead_h {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  pthread_t thread;
  int running, stop;
  struct nbd_ctx *next;
  uint64_t size;
  uint64_t last_end;            /* where the run continues; UINT64_MAX: none */
  uint64_t window;
  uint64_t ahead;               /* prefetched (or queued) up to here */
  uint64_t want_off, want_len;  /* queued for the thread; len 0 = nothing */
  uint64_t prefetches;          /* cache requests sent (tests, debug) */
};

static void *
readahead_thread(void *arg)
{
  struct readahead_h *h = arg;

  pthread_mutex_lock(&h->lock);
  for (;;) {
    uint64_t off, len;
    int r;

    while (!h->stop && h->want_len == 0)
      pthread_cond_wait(&h->cond, &h->lock);
    if (h->stop)
      break;
    off = h->want_off;
    len = h->want_len < READAHEAD_MAX ? h->want_len : READAHEAD_MAX;
    h->want_off += len;
    h->want_len -= len;
    pthread_mutex_unlock(&h->lock);
    r = next_cache(h->next, len, off, 0);
    if (r < 0)
      nbd_debug("filter readahead: prefetch of %llu bytes at %llu: %s",
                (unsigned long long)len, (unsigned long long)off,
                strerror(-r));
    pthread_mutex_lock(&h->lock);
    h->prefetches++;
    pthread_cond_broadcast(&h->cond);
  }
  pthread_mutex_unlock(&h->lock);
  return NULL;
}

static int
readahead_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct readahead_h *h = calloc(1, sizeof *h);

  (void)readonly;
  if (h == NULL)
    return -ENOMEM;
  pthread_mutex_init(&h->lock, NULL);
  pthread_cond_init(&h->cond, NULL);
  h->next = next;
  h->window = READAHEAD_MIN;
  h->last_end = UINT64_MAX;
  self->handle = h;
  return 0;
}

static int
readahead_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct readahead_h *h = self->handle;
  const char *why = nbd_prefetch_unable(self, next);
  int64_t size = next_get_size(next);
  int r;

  (void)readonly;
  if (size < 0)
    return (int)size;
  h->size = (uint64_t)size;
  if (nbd_checking())           /* --check-config: no thread */
    return 0;
  if (why) {
    nbd_warn("export '%s': filter readahead: does nothing: %s",
             self->layer->export_name, why);
    return 0;
  }
  if ((r = pthread_create(&h->thread, NULL, readahead_thread, h)) != 0)
    return -r;
  h->running = 1;
  return 0;
}

static void
readahead_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct readahead_h *h = self->handle;

  (void)next;
  if (h == NULL)
    return;
  if (h->running) {
    pthread_mutex_lock(&h->lock);
    h->stop = 1;
    pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->lock);
    pthread_join(h->thread, NULL);
  }
  pthread_cond_destroy(&h->cond);
  pthread_mutex_destroy(&h->lock);
  free(h);
  self->handle = NULL;
}

/* Notes a read of [offset, offset+count): a read where the last one
 * ended continues the run and doubles the window, any other starts a
 * new run without prefetching.  What the window adds beyond what was
 * asked already goes to the thread (merged with a part it has not taken
 * yet). */
static void
readahead_note(struct readahead_h *h, uint64_t offset, uint32_t count)
{
  uint64_t end = offset + count, from, to;
  int run;

  pthread_mutex_lock(&h->lock);
  run = offset == h->last_end;
  h->last_end = end;
  if (!run) {
    h->window = READAHEAD_MIN;
    h->ahead = end;
    pthread_mutex_unlock(&h->lock);
    return;
  }
  if (h->window < READAHEAD_MAX)
    h->window *= 2;
  from = h->ahead > end ? h->ahead : end;
  to = end < h->size && h->size - end > h->window ? end + h->window : h->size;
  if (h->running && to > from) {
    if (h->want_len && h->want_off + h->want_len == from)
      h->want_len += to - from;
    else {
      h->want_off = from;
      h->want_len = to - from;
    }
    h->ahead = to;
    pthread_cond_signal(&h->cond);
  }
  pthread_mutex_unlock(&h->lock);
}

static void
readahead_drop(struct readahead_h *h)
{
  pthread_mutex_lock(&h->lock);
  h->window = READAHEAD_MIN;
  h->last_end = UINT64_MAX;
  h->ahead = 0;
  h->want_len = 0;
  pthread_mutex_unlock(&h->lock);
}

static int
readahead_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
                uint32_t count, uint64_t offset, uint32_t flags)
{
  readahead_note(self->handle, offset, count);
  return next_pread(next, buf, count, offset, flags);
}

static int
readahead_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags)
{
  readahead_drop(self->handle);
  return next_pwrite(next, buf, count, offset, flags);
}

static int
readahead_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
               uint64_t offset, uint32_t flags)
{
  readahead_drop(self->handle);
  return next_trim(next, count, offset, flags);
}

static int
readahead_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
               uint64_t offset, uint32_t flags)
{
  readahead_drop(self->handle);
  return next_zero(next, count, offset, flags);
}

PASSTHROUGH(readahead, flush)
PASSTHROUGH(readahead, extents)
PASSTHROUGH(readahead, depth)
PASSTHROUGH(readahead, cache)

/* reopen: the thread stops with close and starts again with prepare. */
#define readahead_reopen nbd_reopen_close_open

PASSTHROUGH(readahead, get_size)
PASSTHROUGH(readahead, block_size)
PASSTHROUGH(readahead, can_write)
PASSTHROUGH(readahead, can_flush)
PASSTHROUGH(readahead, can_trim)
PASSTHROUGH(readahead, can_zero)
PASSTHROUGH(readahead, can_fast_zero)
PASSTHROUGH(readahead, can_fua)
PASSTHROUGH(readahead, can_cache)
PASSTHROUGH(readahead, can_extents)
PASSTHROUGH(readahead, can_multi_conn)
PASSTHROUGH(readahead, is_rotational)
PASSTHROUGH(readahead, list_exports)
PASSTHROUGH(readahead, preconnect)

NBD_REGISTER_FILTER(readahead, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "prefetch ahead of sequential reads (cache requests below)",
  .open = readahead_open,
  .prepare = readahead_prepare,
  .close = readahead_close,
);
