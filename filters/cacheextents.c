/* nbdstack filter cacheextents: keep the last block-status answer of the
 * layer below (nbdkit's cacheextents filter; no keys), for clients that
 * walk the disk one extent at a time (qemu-img convert and map ask with
 * REQ_ONE) over a layer that answers many extents as cheaply as one.
 *
 * One answer per export name, shared by its connections (a dynamic export,
 * file dir=, keeps it for the name it was asked for): a query whose offset
 * falls inside it is answered from it; any other asks the layer below
 * for the whole range without REQ_ONE and keeps what comes back.  Every
 * write, trim and zero, from any connection, drops it.  A generation
 * counter, raised before and after each change, keeps an answer computed
 * while a change was under way from being kept (nbdkit 1.32 can keep
 * such a stale answer).  Reopening below drops it too.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"

struct cacheextents_state {
  pthread_mutex_t lock;
  uint64_t gen;                 /* raised before and after every change */
  struct nbd_extent *v;         /* the kept answer, contiguous; n = 0: none */
  size_t n;
  char *name;                   /* the export name it was asked for */
};

/* The name the client asked for; "" outside a connection (tests). */
static const char *
cacheextents_name(const struct nbd_ctx *self)
{
  const struct nbd_conn_info *info = nbd_conn_info(self);

  return info && info->export_name ? info->export_name : "";
}

static int
cacheextents_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct cacheextents_state *st = calloc(1, sizeof *st);

  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  pthread_mutex_init(&st->lock, NULL);
  layer->state = st;
  return 0;
}

static void
cacheextents_cleanup(struct nbd_layer *layer)
{
  struct cacheextents_state *st = layer->state;

  if (st) {
    pthread_mutex_destroy(&st->lock);
    free(st->v);
    free(st->name);
    free(st);
  }
  layer->state = NULL;
}

static struct cacheextents_state *
cacheextents_st(const struct nbd_ctx *self)
{
  return self->layer->state;
}

static void
cacheextents_drop(struct cacheextents_state *st)
{
  pthread_mutex_lock(&st->lock);
  st->gen++;
  free(st->v);
  free(st->name);
  st->v = NULL;
  st->name = NULL;
  st->n = 0;
  pthread_mutex_unlock(&st->lock);
}

/* Answers from the kept extents when they hold offset: 1 answered, 0 not
 * held, or -errno.  Called with the lock held. */
static int
cacheextents_answer(struct cacheextents_state *st, const char *name,
                    uint64_t count, uint64_t offset,
                    struct nbd_extents *extents)
{
  uint64_t end = offset + count;
  size_t i;
  int r;

  if (st->n == 0 || strcmp(st->name, name) != 0 || offset < st->v[0].offset ||
      offset >= st->v[st->n - 1].offset + st->v[st->n - 1].length)
    return 0;
  for (i = 0; i < st->n && st->v[i].offset < end; i++) {
    if (st->v[i].offset + st->v[i].length <= offset)
      continue;
    r = nbd_extents_add(extents, st->v[i].offset, st->v[i].length,
                        st->v[i].type);
    if (r < 0)
      return r;
  }
  return 1;
}

static int
cacheextents_extents(struct nbd_ctx *self, struct nbd_ctx *next,
                     uint64_t count, uint64_t offset, uint32_t flags,
                     struct nbd_extents *extents)
{
  struct cacheextents_state *st = cacheextents_st(self);
  struct nbd_extents *got;
  struct nbd_extent *copy = NULL;
  const char *name = cacheextents_name(self);
  char *kept = NULL;
  uint64_t gen;
  size_t i;
  int r;

  pthread_mutex_lock(&st->lock);
  r = cacheextents_answer(st, name, count, offset, extents);
  gen = st->gen;
  pthread_mutex_unlock(&st->lock);
  if (r != 0)
    return r < 0 ? r : 0;

  if ((got = nbd_extents_new(offset, offset + count)) == NULL)
    return -ENOMEM;
  r = next_extents(next, count, offset, flags & ~NBD_CMD_FLAG_REQ_ONE, got);
  for (i = 0; r == 0 && i < got->n; i++)
    r = nbd_extents_add(extents, got->v[i].offset, got->v[i].length,
                        got->v[i].type);
  if (r == 0 && got->n > 0 &&
      (copy = malloc(got->n * sizeof *copy)) != NULL &&
      (kept = strdup(name)) != NULL) {
    memcpy(copy, got->v, got->n * sizeof *copy);
    pthread_mutex_lock(&st->lock);
    if (st->gen == gen) {       /* nothing changed meanwhile */
      free(st->v);
      free(st->name);
      st->v = copy;
      st->name = kept;
      st->n = got->n;
      copy = NULL;
      kept = NULL;
    }
    pthread_mutex_unlock(&st->lock);
  }
  free(copy);
  free(kept);
  nbd_extents_free(got);
  return r;
}

/* A change drops the answer before (queries from now on ask below) and
 * after (a query that asked below while the change ran is not kept). */
#define CACHEEXTENTS_CHANGE(call)                                           \
  do {                                                                      \
    struct cacheextents_state *st_ = cacheextents_st(self);                 \
    int r_;                                                                 \
                                                                            \
    cacheextents_drop(st_);                                                 \
    r_ = (call);                                                            \
    cacheextents_drop(st_);                                                 \
    return r_;                                                              \
  } while (0)

static int
cacheextents_pwrite(struct nbd_ctx *self, struct nbd_ctx *next,
                    const void *buf, uint32_t count, uint64_t offset,
                    uint32_t flags)
{
  CACHEEXTENTS_CHANGE(next_pwrite(next, buf, count, offset, flags));
}

static int
cacheextents_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                  uint64_t offset, uint32_t flags)
{
  CACHEEXTENTS_CHANGE(next_trim(next, count, offset, flags));
}

static int
cacheextents_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                  uint64_t offset, uint32_t flags)
{
  CACHEEXTENTS_CHANGE(next_zero(next, count, offset, flags));
}

/* What is below may differ after a reopen. */
static int
cacheextents_reopen(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  CACHEEXTENTS_CHANGE(next_reopen(next, readonly));
}

PASSTHROUGH(cacheextents, pread)
PASSTHROUGH(cacheextents, flush)
PASSTHROUGH(cacheextents, depth)
PASSTHROUGH(cacheextents, cache)
PASSTHROUGH(cacheextents, get_size)
PASSTHROUGH(cacheextents, block_size)
PASSTHROUGH(cacheextents, can_write)
PASSTHROUGH(cacheextents, can_flush)
PASSTHROUGH(cacheextents, can_trim)
PASSTHROUGH(cacheextents, can_zero)
PASSTHROUGH(cacheextents, can_fast_zero)
PASSTHROUGH(cacheextents, can_fua)
PASSTHROUGH(cacheextents, can_cache)
PASSTHROUGH(cacheextents, can_extents)
PASSTHROUGH(cacheextents, can_multi_conn)
PASSTHROUGH(cacheextents, is_rotational)
PASSTHROUGH(cacheextents, list_exports)
PASSTHROUGH(cacheextents, preconnect)

NBD_REGISTER_FILTER(cacheextents, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "keep the last block-status answer of the layer below "
                 "(dropped by any write, trim or zero)",
  .setup = cacheextents_setup,
  .cleanup = cacheextents_cleanup,
);
