/* nbdstack filter log: one line per connection event and two per request
 * (call and result) in a file, in nbdkit's log filter format, so that
 * tools reading nbdkit's logs read these (nbdkit's keys logfile= and
 * logappend=).
 *
 *   2026-12-07 02:56:19.671418 connection=1 Write id=1 offset=0x0 count=0x200 fua=0 ...
 *   2026-12-07 02:56:19.671457 connection=1 ...Write id=1 return=0
 *
 * connection= is the server's connection id (nbd_conn_info, the number
 * the server's own log lines use); id= counts the requests of the
 * connection from 1.  Actions: Preconnect, ListExports, Connect, Read,
 * Write, Flush, Trim, Zero, Extents, Cache, Disconnect; strings are
 * shell-quoted as nbdkit does.  Ready thread_model=N is written when the
 * filter is set up (at start and on each reload), with the model of the
 * log filter and the layers below it (nbdkit: the whole server's; layers
 * above the log filter are not set up yet).  Preconnect's readonly= is 1
 * when the server (-r) or the export is read-only.  Differences from
 * nbdkit: no Fork line (no such step here), and logscript= is not offered.
 *
 * (C names logf_: log_ is src/log.h's.)  Writing does not serialise the datapath on the file: each connection
 * collects its lines in its own buffer (under the connection's own lock)
 * and writes them with one write(2) to the O_APPEND file when none of
 * its requests is in flight any more, when 16 KiB are waiting, and at
 * disconnect.  A line is therefore whole in the file, lines of one
 * connection keep their order, and connections never wait for each
 * other; a request still running may keep its neighbours' lines in the
 * buffer until it ends.  Under --check-config the file is not touched.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "layer.h"

struct logf_conf {
  char *logfile;
  int logappend;
};

static const struct nbd_param logf_params[] = {
  { "logfile", NBD_PARAM_PATH, offsetof(struct logf_conf, logfile), NULL,
    "the file the log is written to", NULL, 1 },
  { "logappend", NBD_PARAM_BOOL, offsetof(struct logf_conf, logappend), "no",
    "yes: append to an existing file; no: truncate it at startup", NULL, 0 },
  NBD_PARAM_END
};

#define LOG_FLUSH_AT 16384

struct logf_state {
  int fd;                       /* -1 under --check-config */
  _Atomic uint64_t preconnects; /* Preconnect ids */
  _Atomic uint64_t lists;       /* ListExports ids (a count of their own,
                                 * as nbdkit's) */
};

struct logf_handle {
  pthread_mutex_t lock;
  char *buf;
  size_t len, cap;
  unsigned inflight;
  _Atomic uint64_t ids;         /* request ids of the connection */
  uint64_t conn;
};

static void logf_ready(const struct nbd_layer *layer);

static int
logf_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct logf_conf *c = layer->conf;
  struct logf_state *st = calloc(1, sizeof *st);

  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  st->fd = -1;
  layer->state = st;
  if (nbd_checking())
    return 0;
  st->fd = open(c->logfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC |
                (c->logappend ? 0 : O_TRUNC), 0644);
  if (st->fd == -1) {
    snprintf(err, errlen, "logfile: %s: %s", c->logfile, strerror(errno));
    free(st);
    layer->state = NULL;
    return -1;
  }
  logf_ready(layer);
  return 0;
}

static void
logf_cleanup(struct nbd_layer *layer)
{
  struct logf_state *st = layer->state;

  if (st == NULL)
    return;
  if (st->fd != -1)
    close(st->fd);
  free(st);
  layer->state = NULL;
}

/* ---- formatting ------------------------------------------------------- */

struct logf_line {
  char s[1024];
  size_t n;
  char *big;                    /* a long line (many extents), malloc'd */
};

static void
logf_add(struct logf_line *l, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));

static void
logf_add(struct logf_line *l, const char *fmt, ...)
{
  va_list ap;
  int r;

  if (l->n >= sizeof l->s)
    return;                     /* truncated: see logf_add_long */
  va_start(ap, fmt);
  r = vsnprintf(l->s + l->n, sizeof l->s - l->n, fmt, ap);
  va_end(ap);
  if (r > 0)
    l->n += (size_t)r;
  if (l->n >= sizeof l->s)
    l->n = sizeof l->s - 1;
}

/* The timestamp and connection prefix of every line. */
static void
logf_start(struct logf_line *l, uint64_t conn)
{
  struct timespec ts;
  struct tm tm;

  l->n = 0;
  l->big = NULL;
  clock_gettime(CLOCK_REALTIME, &ts);
  localtime_r(&ts.tv_sec, &tm);
  l->n = strftime(l->s, sizeof l->s, "%Y-%m-%d %H:%M:%S", &tm);
  logf_add(l, ".%06ld ", ts.tv_nsec / 1000);
  if (conn)
    logf_add(l, "connection=%" PRIu64 " ", conn);
}

/* nbdkit's shell quoting: safe strings as they are, others in double
 * quotes with \ before $ ` \ and ". */
static void
logf_quote(struct logf_line *l, const char *s)
{
  static const char safe[] = "abcdefghijklmnopqrstuvwxyz"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789%+,-./:=@_^";
  const char *p;

  if (*s && strspn(s, safe) == strlen(s)) {
    logf_add(l, "%s", s);
    return;
  }
  logf_add(l, "\"");
  for (p = s; *p; p++)
    logf_add(l, "%s%c", strchr("$`\\\"", *p) ? "\\" : "", *p);
  logf_add(l, "\"");
}

static const char *
logf_errno_name(int e)
{
  switch (e) {
  case EPERM: return "EPERM";
  case EIO: return "EIO";
  case ENOMEM: return "ENOMEM";
  case EINVAL: return "EINVAL";
  case ENOSPC: return "ENOSPC";
  case ESHUTDOWN: return "ESHUTDOWN";
  case EOVERFLOW: return "EOVERFLOW";
  case EOPNOTSUPP: return "ENOTSUP";
  case EROFS: return "EROFS";
  case EFBIG: return "EFBIG";
  case EBUSY: return "EBUSY";
  case ENOENT: return "ENOENT";
  case EACCES: return "EACCES";
  case EAGAIN: return "EAGAIN";
  case EBADF: return "EBADF";
  case ETIMEDOUT: return "ETIMEDOUT";
  case ECONNRESET: return "ECONNRESET";
  case EPIPE: return "EPIPE";
  default: return NULL;
  }
}

static void
logf_result(struct logf_line *l, int r)
{
  const char *name;

  if (r >= 0) {
    logf_add(l, "return=0\n");
    return;
  }
  if ((name = logf_errno_name(-r)) != NULL)
    logf_add(l, "return=-1 error=%s\n", name);
  else
    logf_add(l, "return=-1 error=%d\n", -r);
}

/* Writes buf[0..len) in one call (O_APPEND: whole lines, never mixed with
 * another connection's). */
static void
logf_write(int fd, const char *buf, size_t len)
{
  ssize_t w;

  while (len > 0) {
    if ((w = write(fd, buf, len)) < 0) {
      if (errno == EINTR)
        continue;
      return;                   /* a full disk must not fail requests */
    }
    buf += w;
    len -= (size_t)w;
  }
}

static void
logf_direct(const struct nbd_ctx *self, const struct logf_line *l)
{
  const struct logf_state *st = self->layer->state;

  if (st->fd != -1)
    logf_write(st->fd, l->s, l->n);
}

/* Appends a line to the connection's buffer; writes the buffer out when
 * the last request in flight ended (done) or it is large. */
static void
logf_buffer(struct nbd_ctx *self, const struct logf_line *l, int enter,
           int leave)
{
  const struct logf_state *st = self->layer->state;
  struct logf_handle *h = self->handle;
  const char *s = l->big ? l->big : l->s;
  size_t n = l->big ? strlen(l->big) : l->n;

  if (st->fd == -1)
    return;
  pthread_mutex_lock(&h->lock);
  if (h->len + n > h->cap) {
    size_t cap = (h->len + n) * 2;
    char *b = realloc(h->buf, cap);
    if (b) {
      h->buf = b;
      h->cap = cap;
    }
  }
  if (h->len + n <= h->cap) {
    memcpy(h->buf + h->len, s, n);
    h->len += n;
  }
  h->inflight += (unsigned)enter;
  h->inflight -= (unsigned)leave;
  if (h->len && (h->inflight == 0 || h->len >= LOG_FLUSH_AT)) {
    logf_write(st->fd, h->buf, h->len);
    h->len = 0;
  }
  pthread_mutex_unlock(&h->lock);
}

/* nbdkit's Ready line: the thread model of this layer and those below
 * (set up before it, bottom up), the numbers of nbdkit's
 * NBDKIT_THREAD_MODEL_*. */
static void
logf_ready(const struct nbd_layer *layer)
{
  const struct logf_state *st = layer->state;
  enum nbd_thread_model m = NBD_PARALLEL;
  const struct nbd_layer *l;
  struct logf_line line;

  for (l = layer; l; l = l->below)
    if (l->thread_model < m)
      m = l->thread_model;
  logf_start(&line, 0);
  logf_add(&line, "Ready thread_model=%d\n", (int)m);
  logf_write(st->fd, line.s, line.n);
}

/* ---- connection events ------------------------------------------------ */

static int
logf_preconnect(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct logf_state *st = self->layer->state;
  uint64_t id = atomic_fetch_add(&st->preconnects, 1) + 1;
  struct logf_line l;
  int r;

  logf_start(&l, 0);
  logf_add(&l, "Preconnect id=%" PRIu64 " readonly=%d ...\n", id,
           (self->info && self->info->readonly) || self->export_readonly);
  logf_direct(self, &l);
  r = next_preconnect(next);
  logf_start(&l, 0);
  logf_add(&l, "...Preconnect id=%" PRIu64 " ", id);
  logf_result(&l, r);
  logf_direct(self, &l);
  return r;
}

static int
logf_list_exports(struct nbd_ctx *self, struct nbd_ctx *next,
                 struct nbd_exports *exports)
{
  struct logf_state *st = self->layer->state;
  const struct nbd_conn_info *i = nbd_conn_info(self);
  uint64_t id = atomic_fetch_add(&st->lists, 1) + 1;
  struct logf_line l;
  size_t k;
  int r;

  logf_start(&l, 0);
  logf_add(&l, "ListExports id=%" PRIu64 " readonly=%d tls=%d ...\n", id,
           (i && i->readonly) || self->export_readonly, i ? i->tls : 0);
  logf_direct(self, &l);
  r = next_list_exports(next, exports);
  logf_start(&l, 0);
  logf_add(&l, "...ListExports id=%" PRIu64 " exports=(", id);
  if (r == 0)
    logf_quote(&l, self->layer->export_name ? self->layer->export_name : "");
  for (k = 0; r > 0 && k < exports->n; k++) {
    logf_add(&l, "%s", k ? " " : "");
    logf_quote(&l, exports->v[k].name);
  }
  logf_add(&l, ") ");
  logf_result(&l, r);
  logf_direct(self, &l);
  return r;
}

static uint64_t
logf_conn_id(const struct nbd_ctx *self)
{
  const struct nbd_conn_info *i = nbd_conn_info(self);

  return i ? i->id : 0;
}

static int
logf_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct logf_handle *h = calloc(1, sizeof *h);

  (void)next;
  (void)readonly;
  if (h == NULL)
    return -ENOMEM;
  pthread_mutex_init(&h->lock, NULL);
  h->conn = logf_conn_id(self);
  self->handle = h;
  return 0;
}

/* In prepare the layer below is complete: its capabilities are known. */
static int
logf_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct logf_handle *h = self->handle;
  const struct nbd_conn_info *i = nbd_conn_info(self);
  const char *name = i && i->export_name ? i->export_name
                     : self->layer->export_name ? self->layer->export_name
                     : "";
  struct logf_line l;

  (void)readonly;
  logf_start(&l, h->conn);
  logf_add(&l, "Connect export=");
  logf_quote(&l, name);
  logf_add(&l, " tls=%d size=0x%" PRIx64 " minsize=0x%" PRIx32
          " prefsize=0x%" PRIx32 " maxsize=0x%" PRIx32 " write=%d flush=%d "
          "rotational=%d trim=%d zero=%d fua=%d extents=%d cache=%d "
          "fast_zero=%d\n", i ? i->tls : 0, (uint64_t)next->size,
          next->min_block, next->pref_block, next->max_block,
          next->can_write, next->can_flush, next->is_rotational,
          next->can_trim, next->can_zero, next->can_fua, next->can_extents,
          next->can_cache, next->can_fast_zero);
  logf_buffer(self, &l, 0, 0);
  return 0;
}

static void
logf_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct logf_handle *h = self->handle;
  struct logf_line l;

  (void)next;
  logf_start(&l, h->conn);
  logf_add(&l, "Disconnect transactions=%" PRIu64 "\n", atomic_load(&h->ids));
  logf_buffer(self, &l, 0, 0);
  pthread_mutex_destroy(&h->lock);
  free(h->buf);
  free(h);
}

/* ---- requests ---------------------------------------------------------- */

static uint64_t
logf_enter(struct nbd_ctx *self, const char *act, uint64_t count,
           uint64_t offset, const char *fmt, ...)
  __attribute__((format(printf, 5, 6)));

/* The call line; returns the request id.  fmt adds flags after count. */
static uint64_t
logf_enter(struct nbd_ctx *self, const char *act, uint64_t count,
           uint64_t offset, const char *fmt, ...)
{
  struct logf_handle *h = self->handle;
  uint64_t id = atomic_fetch_add(&h->ids, 1) + 1;
  struct logf_line l;
  va_list ap;
  int r;

  logf_start(&l, h->conn);
  logf_add(&l, "%s id=%" PRIu64 " ", act, id);
  if (strcmp(act, "Flush") != 0)
    logf_add(&l, "offset=0x%" PRIx64 " count=0x%" PRIx64 " ", offset,
              count);
  if (fmt && l.n < sizeof l.s) {
    va_start(ap, fmt);
    r = vsnprintf(l.s + l.n, sizeof l.s - l.n, fmt, ap);
    va_end(ap);
    if (r > 0)
      l.n = l.n + (size_t)r < sizeof l.s ? l.n + (size_t)r : sizeof l.s - 1;
  }
  logf_add(&l, "...\n");
  logf_buffer(self, &l, 1, 0);
  return id;
}

static int
logf_leave(struct nbd_ctx *self, const char *act, uint64_t id, int r)
{
  struct logf_handle *h = self->handle;
  struct logf_line l;

  logf_start(&l, h->conn);
  logf_add(&l, "...%s id=%" PRIu64 " ", act, id);
  logf_result(&l, r);
  logf_buffer(self, &l, 0, 1);
  return r;
}

static int
logf_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
          uint32_t count, uint64_t offset, uint32_t flags)
{
  uint64_t id = logf_enter(self, "Read", count, offset, NULL);

  return logf_leave(self, "Read", id,
                   next_pread(next, buf, count, offset, flags));
}

static int
logf_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
           uint32_t count, uint64_t offset, uint32_t flags)
{
  uint64_t id = logf_enter(self, "Write", count, offset, "fua=%d ",
                          !!(flags & NBD_CMD_FLAG_FUA));

  return logf_leave(self, "Write", id,
                   next_pwrite(next, buf, count, offset, flags));
}

static int
logf_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  uint64_t id = logf_enter(self, "Flush", 0, 0, NULL);

  return logf_leave(self, "Flush", id, next_flush(next, flags));
}

static int
logf_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
         uint64_t offset, uint32_t flags)
{
  uint64_t id = logf_enter(self, "Trim", count, offset, "fua=%d ",
                          !!(flags & NBD_CMD_FLAG_FUA));

  return logf_leave(self, "Trim", id, next_trim(next, count, offset, flags));
}

static int
logf_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
         uint64_t offset, uint32_t flags)
{
  uint64_t id = logf_enter(self, "Zero", count, offset,
                          "trim=%d fua=%d fast=%d ",
                          !(flags & NBD_CMD_FLAG_NO_HOLE),
                          !!(flags & NBD_CMD_FLAG_FUA),
                          !!(flags & NBD_CMD_FLAG_FAST_ZERO));

  return logf_leave(self, "Zero", id, next_zero(next, count, offset, flags));
}

static int
logf_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
          uint64_t offset, uint32_t flags)
{
  uint64_t id = logf_enter(self, "Cache", count, offset, NULL);

  return logf_leave(self, "Cache", id, next_cache(next, count, offset, flags));
}

/* The result line lists the extents, as nbdkit: offset length "type". */
static int
logf_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  static const char *const types[4] = { "", "hole", "zero", "hole,zero" };
  struct logf_handle *h = self->handle;
  uint64_t id = logf_enter(self, "Extents", count, offset, "req_one=%d ",
                          !!(flags & NBD_CMD_FLAG_REQ_ONE));
  int r = next_extents(next, count, offset, flags, extents);
  struct logf_line l;
  size_t k, cap, n;
  char *big;

  if (r < 0)
    return logf_leave(self, "Extents", id, r);
  logf_start(&l, h->conn);
  cap = l.n + 64 + extents->n * 64;
  if ((big = malloc(cap)) == NULL)
    return logf_leave(self, "Extents", id, r);
  n = (size_t)snprintf(big, cap, "%.*s...Extents id=%" PRIu64 " extents=(",
                       (int)l.n, l.s, id);
  for (k = 0; k < extents->n; k++)
    n += (size_t)snprintf(big + n, cap - n, "%s0x%" PRIx64 " 0x%" PRIx64
                          " \"%s\"", k ? " " : "", extents->v[k].offset,
                          extents->v[k].length,
                          types[extents->v[k].type & 3]);
  snprintf(big + n, cap - n, ") return=0\n");
  l.big = big;
  logf_buffer(self, &l, 0, 1);
  free(big);
  return r;
}

/* qemu:allocation-depth has no nbdkit counterpart to log as: through. */
PASSTHROUGH(logf, depth)

static int
logf_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                struct nbd_source *src, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  uint64_t id = logf_enter(self, "Write", count, offset, "fua=%d ",
                          !!(flags & NBD_CMD_FLAG_FUA));

  return logf_leave(self, "Write", id,
                   next_pwrite_from(next, src, count, offset, flags));
}

PASSTHROUGH(logf, reopen)
PASSTHROUGH(logf, get_size)
PASSTHROUGH(logf, block_size)
PASSTHROUGH(logf, can_write)
PASSTHROUGH(logf, can_flush)
PASSTHROUGH(logf, can_trim)
PASSTHROUGH(logf, can_zero)
PASSTHROUGH(logf, can_fast_zero)
PASSTHROUGH(logf, can_fua)
PASSTHROUGH(logf, can_cache)
PASSTHROUGH(logf, can_extents)
PASSTHROUGH(logf, can_multi_conn)
PASSTHROUGH(logf, is_rotational)

NBD_REGISTER_FILTER_AS(logf, "log", NBD_PARALLEL, NBD_RARELY_BLOCKS,
  .description = "log connections and requests to a file (nbdkit's format)",
  .params = logf_params,
  .conf_size = sizeof(struct logf_conf),
  .setup = logf_setup,
  .cleanup = logf_cleanup,
  .open = logf_open,
  .prepare = logf_prepare,
  .close = logf_close,
  .pwrite_from = logf_pwrite_from,
);
