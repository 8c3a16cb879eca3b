/* nbdstack filter multi-conn: advertise NBD_FLAG_CAN_MULTI_CONN, and make
 * it true by emulation (nbdkit's multi-conn filter, same name, keys,
 * modes and defaults).
 *
 * In emulate mode a flush on one connection (or a FUA write, which the
 * engine turns into write + flush here) flushes every connection of the
 * export that may hold unflushed data, each through its own context below.
 * The open connections live in the layer's shared state, in groups (one
 * per export name with multi-conn-exportname=true, else one), each
 * connection with dirty bits: WRITE (it wrote since its last flush) and
 * READ (it read; a read may have cached data that a write elsewhere made
 * stale).  The group's dirty flag says someone wrote.
 *
 * Locking: one mutex per instance guards the lists.  A flush picks the
 * connections to flush under the mutex and takes a reference on each
 * (busy), then flushes them without the mutex, so a slow flush below
 * blocks no other connection's open, close or flush; a connection that
 * closes unlinks itself and waits until nobody flushes through it any
 * more, before the engine closes the layers below it.  Dirty bits are
 * atomics: requests mark them without the mutex.
 *
 * Offsets and data are never changed, extents pass through.  This file
 * does not emulate FUA or flush itself: the engine does.
 */
#include <stdlib.h>
#include <string.h>

#include "layer.h"

enum multi_conn_mode { MC_AUTO, MC_EMULATE, MC_PLUGIN, MC_DISABLE, MC_UNSAFE };
enum multi_conn_track { MC_TRACK_CONN, MC_TRACK_CONNECTION, MC_TRACK_FAST,
                MC_TRACK_OFF };

static const char *const multi_conn_modes[] = {
  "auto", "emulate", "plugin", "disable", "unsafe", NULL
};
/* "connection" is nbdkit's documented spelling, "conn" its help's. */
static const char *const multi_conn_tracks[] = {
  "conn", "connection", "fast", "off", NULL
};

#define MC_WRITE 1u           /* wrote since its last flush */
#define MC_READ  2u           /* read: may have cached stale data */

struct multi_conn_conf {
  int mode;                   /* enum multi_conn_mode */
  int track;                  /* enum multi_conn_track */
  int byname;                 /* multi-conn-exportname */
};

static const struct nbd_param multi_conn_params[] = {
  { "multi-conn-mode", NBD_PARAM_ENUM,
    offsetof(struct multi_conn_conf, mode),
    "auto", "auto: plugin if the layer below has multi-conn, else emulate "
    "(disable under serialised connections); emulate: a flush flushes "
    "every connection; plugin: as below; disable: never; unsafe: always, "
    "without emulation", multi_conn_modes, 0 },
  { "multi-conn-track-dirty", NBD_PARAM_ENUM,
    offsetof(struct multi_conn_conf, track),
    "conn", "conn (or connection): skip flushes of connections with "
    "nothing to flush; fast: skip a flush when nobody wrote since the last "
    "one; off: flush every time", multi_conn_tracks, 0 },
  { "multi-conn-exportname", NBD_PARAM_BOOL,
    offsetof(struct multi_conn_conf, byname),
    "false", "true: share flushes only between connections to the same "
    "export name", NULL, 0 },
  NBD_PARAM_END
};

struct multi_conn_handle;

struct multi_conn_group {
  struct multi_conn_group *next;
  char *name;                 /* export name, or NULL: every connection */
  struct multi_conn_handle *conns;
  unsigned dirty;             /* atomic: someone wrote since a flush */
};

struct multi_conn_handle {
  struct multi_conn_handle *prev, *next;   /* in group->conns */
  struct nbd_ctx *below;      /* this connection's context below */
  struct multi_conn_group *group;     /* NULL when not linked */
  int mode;                   /* resolved: never MC_AUTO */
  unsigned dirty;             /* atomic: MC_WRITE | MC_READ */
  unsigned busy;              /* flushes using below from elsewhere */
};

struct multi_conn_state {
  pthread_mutex_t lock;
  pthread_cond_t idle;        /* a handle's busy went to 0 */
  struct multi_conn_group *groups;
};

static int
multi_conn_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct multi_conn_conf *c = layer->conf;
  struct multi_conn_state *st = calloc(1, sizeof *st);

  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  if (c->track == MC_TRACK_CONNECTION)
    c->track = MC_TRACK_CONN;
  pthread_mutex_init(&st->lock, NULL);
  pthread_cond_init(&st->idle, NULL);
  layer->state = st;
  return 0;
}

static void
multi_conn_cleanup(struct nbd_layer *layer)
{
  struct multi_conn_state *st = layer->state;

  if (st == NULL)
    return;
  pthread_mutex_destroy(&st->lock);
  pthread_cond_destroy(&st->idle);
  free(st);
  layer->state = NULL;
}

static const struct multi_conn_conf *
multi_conn_conf(const struct nbd_ctx *self)
{
  return self->layer->conf;
}

static struct multi_conn_state *
multi_conn_state(const struct nbd_ctx *self)
{
  return self->layer->state;
}

static int
multi_conn_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  (void)readonly;
  self->handle = calloc(1, sizeof(struct multi_conn_handle));
  if (self->handle == NULL)
    return -ENOMEM;
  ((struct multi_conn_handle *)self->handle)->below = next;
  return 0;
}

/* nbdkit's auto: disable when connections are serialised anyway.  The
 * layers above are not known here, only this one and those below. */
static int
multi_conn_resolve(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct nbd_layer *l;
  int r;

  if (multi_conn_conf(self)->mode != MC_AUTO)
    return multi_conn_conf(self)->mode;
  for (l = self->layer; l; l = l->below)
    if (l->thread_model == NBD_SERIALIZE_CONNECTIONS)
      return MC_DISABLE;
  if ((r = next_can_multi_conn(next)) < 0)
    return r;
  return r ? MC_PLUGIN : MC_EMULATE;
}

static struct multi_conn_group *
multi_conn_group_find(struct multi_conn_state *st, const char *name)
{
  struct multi_conn_group *g;

  for (g = st->groups; g; g = g->next)
    if (g->name == NULL || (name && strcmp(g->name, name) == 0))
      return g;
  g = calloc(1, sizeof *g);
  if (g == NULL)
    return NULL;
  if (name && (g->name = strdup(name)) == NULL) {
    free(g);
    return NULL;
  }
  g->next = st->groups;
  st->groups = g;
  return g;
}

static int
multi_conn_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct multi_conn_handle *h = self->handle;
  struct multi_conn_state *st = multi_conn_state(self);
  const struct nbd_conn_info *info = nbd_conn_info(self);
  const char *name = NULL;
  int r;

  (void)readonly;
  if ((r = multi_conn_resolve(self, next)) < 0)
    return r;
  h->mode = r;
  if (h->mode == MC_EMULATE) {
    if ((r = next_can_flush(next)) < 0)
      return r;
    if (r == 0) {
      nbd_error("export '%s': filter multi-conn: emulating multi-conn needs "
                "flush support in the layer below", self->layer->export_name);
      return -EINVAL;
    }
  }
  if (multi_conn_conf(self)->byname)
    name = info && info->export_name ? info->export_name : "";
  pthread_mutex_lock(&st->lock);
  h->group = multi_conn_group_find(st, name);
  if (h->group) {
    h->next = h->group->conns;
    if (h->next)
      h->next->prev = h;
    h->group->conns = h;
  }
  pthread_mutex_unlock(&st->lock);
  return h->group ? 0 : -ENOMEM;
}

/* Leaves the group and waits until no other connection flushes through
 * this one's context below, which the engine closes next.  Idempotent:
 * finalize and close both call it (close alone when open failed later). */
static void
multi_conn_unlink(struct nbd_ctx *self)
{
  struct multi_conn_handle *h = self->handle;
  struct multi_conn_state *st = multi_conn_state(self);
  struct multi_conn_group *g, **pg;

  if (h == NULL)
    return;
  pthread_mutex_lock(&st->lock);
  if ((g = h->group) != NULL) {
    if (h->prev)
      h->prev->next = h->next;
    else
      g->conns = h->next;
    if (h->next)
      h->next->prev = h->prev;
    h->group = NULL;
    if (g->conns == NULL) {
      for (pg = &st->groups; *pg != g; pg = &(*pg)->next)
        ;
      *pg = g->next;
      free(g->name);
      free(g);
    }
  }
  while (h->busy)
    pthread_cond_wait(&st->idle, &st->lock);
  pthread_mutex_unlock(&st->lock);
}

static int
multi_conn_finalize(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)next;
  multi_conn_unlink(self);
  return 0;
}

static void
multi_conn_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)next;
  multi_conn_unlink(self);
  free(self->handle);
  self->handle = NULL;
}

static void
multi_conn_mark(struct nbd_ctx *self, unsigned what)
{
  struct multi_conn_handle *h = self->handle;

  switch (multi_conn_conf(self)->track) {
  case MC_TRACK_CONN:
    __atomic_fetch_or(&h->dirty, what, __ATOMIC_RELAXED);
    /* fallthrough */
  case MC_TRACK_FAST:
    if (what == MC_WRITE && h->group)
      __atomic_store_n(&h->group->dirty, 1, __ATOMIC_RELAXED);
    break;
  default:
    break;
  }
}

/* A write with FUA reaches here only outside emulate mode (there the
 * engine strips it and calls multi_conn_flush after): it is durable, so
 * nothing is marked. */
static void
multi_conn_mark_write(struct nbd_ctx *self, uint32_t flags)
{
  if (!(flags & NBD_CMD_FLAG_FUA))
    multi_conn_mark(self, MC_WRITE);
}

/* Emulate: flush every connection of the group that needs it, this one
 * included.  The bits are cleared before the flushes (a write racing a
 * flush marks again) and put back when a flush fails. */
static int
multi_conn_flush_group(struct nbd_ctx *self, uint32_t flags)
{
  struct multi_conn_handle *h = self->handle, *h2, **v;
  struct multi_conn_state *st = multi_conn_state(self);
  int track = multi_conn_conf(self)->track, r = 0;
  size_t n = 0, cap = 0, i;
  unsigned gdirty;

  pthread_mutex_lock(&st->lock);
  for (h2 = h->group->conns; h2; h2 = h2->next)
    cap++;
  /* This connection is in its own group: cap >= 1. */
  v = malloc((cap ? cap : 1) * sizeof(struct multi_conn_handle *));
  if (v == NULL) {
    pthread_mutex_unlock(&st->lock);
    return -ENOMEM;
  }
  gdirty = __atomic_exchange_n(&h->group->dirty, 0, __ATOMIC_RELAXED);
  for (h2 = h->group->conns; h2; h2 = h2->next) {
    unsigned d = __atomic_load_n(&h2->dirty, __ATOMIC_RELAXED);
    if (track == MC_TRACK_OFF || (gdirty && (track == MC_TRACK_FAST ||
                                             (d & MC_READ))) ||
        (d & MC_WRITE)) {
      __atomic_fetch_and(&h2->dirty, ~d, __ATOMIC_RELAXED);
      h2->busy++;
      v[n++] = h2;
    }
  }
  pthread_mutex_unlock(&st->lock);

  for (i = 0; i < n && r == 0; i++)
    r = next_flush(v[i]->below, flags);

  pthread_mutex_lock(&st->lock);
  for (i = 0; i < n; i++) {
    if (r < 0 && v[i]->group) {
      __atomic_fetch_or(&v[i]->dirty, MC_WRITE, __ATOMIC_RELAXED);
      __atomic_store_n(&v[i]->group->dirty, 1, __ATOMIC_RELAXED);
    }
    if (--v[i]->busy == 0)
      pthread_cond_broadcast(&st->idle);
  }
  pthread_mutex_unlock(&st->lock);
  free(v);
  return r;
}

static int
multi_conn_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  struct multi_conn_handle *h = self->handle, *h2;
  struct multi_conn_state *st = multi_conn_state(self);
  int track = multi_conn_conf(self)->track, r;

  if (h->mode == MC_EMULATE)
    return multi_conn_flush_group(self, flags);
  /* Others: skip the flush when nobody wrote since the last one. */
  if (track != MC_TRACK_OFF &&
      !__atomic_load_n(&h->group->dirty, __ATOMIC_RELAXED))
    return 0;
  if ((r = next_flush(next, flags)) < 0)
    return r;
  if (track == MC_TRACK_FAST)
    __atomic_store_n(&h->group->dirty, 0, __ATOMIC_RELAXED);
  else if (track == MC_TRACK_CONN) {
    if (next_can_multi_conn(next)) {
      pthread_mutex_lock(&st->lock);
      for (h2 = h->group->conns; h2; h2 = h2->next)
        __atomic_store_n(&h2->dirty, 0, __ATOMIC_RELAXED);
      __atomic_store_n(&h->group->dirty, 0, __ATOMIC_RELAXED);
      pthread_mutex_unlock(&st->lock);
    }
    else
      __atomic_store_n(&h->dirty, 0, __ATOMIC_RELAXED);
  }
  return 0;
}

static int
multi_conn_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
         uint32_t count, uint64_t offset, uint32_t flags)
{
  multi_conn_mark(self, MC_READ);
  return next_pread(next, buf, count, offset, flags);
}

static int
multi_conn_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
         uint64_t offset, uint32_t flags)
{
  multi_conn_mark(self, MC_READ);
  return next_cache(next, count, offset, flags);
}

static int
multi_conn_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
          uint32_t count, uint64_t offset, uint32_t flags)
{
  multi_conn_mark_write(self, flags);
  return next_pwrite(next, buf, count, offset, flags);
}

static int
multi_conn_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
               struct nbd_source *src, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  multi_conn_mark_write(self, flags);
  return next_pwrite_from(next, src, count, offset, flags);
}

static int
multi_conn_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
        uint64_t offset, uint32_t flags)
{
  multi_conn_mark_write(self, flags);
  return next_trim(next, count, offset, flags);
}

static int
multi_conn_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
        uint64_t offset, uint32_t flags)
{
  multi_conn_mark_write(self, flags);
  return next_zero(next, count, offset, flags);
}

/* Emulate: a native FUA below would make one connection durable, not
 * all; EMULATE makes the engine call multi_conn_flush after the write
 * instead. */
static int
multi_conn_can_fua(struct nbd_ctx *self, struct nbd_ctx *next)
{
  int r = next_can_fua(next);

  if (r == NBD_FUA_NATIVE &&
      ((struct multi_conn_handle *)self->handle)->mode == MC_EMULATE)
    return NBD_FUA_EMULATE;
  return r;
}

static int
multi_conn_can_multi_conn(struct nbd_ctx *self, struct nbd_ctx *next)
{
  switch (((struct multi_conn_handle *)self->handle)->mode) {
  case MC_EMULATE:
  case MC_UNSAFE:
    return 1;
  case MC_PLUGIN:
    return next_can_multi_conn(next);
  default:
    return 0;
  }
}

/* Block status moves nothing and marks nothing (nbdkit's does not). */
PASSTHROUGH(multi_conn, extents)
PASSTHROUGH(multi_conn, reopen)
PASSTHROUGH(multi_conn, depth)
PASSTHROUGH(multi_conn, get_size)
PASSTHROUGH(multi_conn, block_size)
PASSTHROUGH(multi_conn, can_write)
PASSTHROUGH(multi_conn, can_flush)
PASSTHROUGH(multi_conn, can_trim)
PASSTHROUGH(multi_conn, can_zero)
PASSTHROUGH(multi_conn, can_fast_zero)
PASSTHROUGH(multi_conn, can_cache)
PASSTHROUGH(multi_conn, can_extents)
PASSTHROUGH(multi_conn, is_rotational)
PASSTHROUGH(multi_conn, list_exports)
PASSTHROUGH(multi_conn, preconnect)

NBD_REGISTER_FILTER_AS(multi_conn, "multi-conn", NBD_PARALLEL,
                       NBD_NEVER_BLOCKS,
  .description = "advertise multi-conn, emulated by flushing every "
                 "connection",
  .params = multi_conn_params,
  .conf_size = sizeof(struct multi_conn_conf),
  .pwrite_from = multi_conn_pwrite_from,
  .setup = multi_conn_setup,
  .cleanup = multi_conn_cleanup,
  .open = multi_conn_open,
  .prepare = multi_conn_prepare,
  .finalize = multi_conn_finalize,
  .close = multi_conn_close,
);
