/* nbdstack filter log: one line per connection event and two per request
 * (call and result) in a file, in nbdkit's log filter format, so that
 * tools reading nbdkit's logs read these; and/or a shell script run for
 * each of those events (nbdkit's keys logfile=, logappend=, logscript=;
 * neither logfile nor logscript: the filter does nothing, as nbdkit's).
 *
 *   2026-12-07 02:56:19.671418 connection=1 Write id=1 offset=0x0 count=0x200 fua=0 ...
 *   2026-12-07 02:56:19.671457 connection=1 ...Write id=1 return=0
 *
 * connection= is the server's connection id (nbd_conn_info, the number
 * the server's own log lines use); id= counts the requests of the
 * connection from 1.  Actions: Ready, Preconnect, ListExports, Connect,
 * Read, Write, Flush, Trim, Zero, Extents, Cache, Disconnect; strings
 * are shell-quoted as nbdkit does.  Ready thread_model=N is written when
 * the filter is set up (at start and on each reload), with the model of
 * the log filter and the layers below it (nbdkit: the whole server's;
 * layers above the log filter are not set up yet).  Preconnect's
 * readonly= is 1 when the server (-r) or the export is read-only.
 * Timestamps are UTC, as nbdkit's.  No Fork line (no such step here).
 *
 * logscript=SCRIPT, as nbdkit 1.32 runs it: for each event, /bin/bash
 * (as "sh", so in POSIX mode) -c with the event's variables as shell
 * assignments first (act=, connection=, type=ENTER|LEAVE|PRINT, id=,
 * then the line's own fields: offset=0x0 count=0x200 ..., return=0
 * error=EIO, extents=(0x0 0x8000 "hole,zero") a bash array, ...) and
 * SCRIPT after them.  The script is started at the event and not waited
 * for: requests never wait for it, scripts of one connection may run at
 * once and finish in any order, and its exit status changes nothing (it
 * is logged with -v).  It inherits the server's environment, working
 * directory and standard descriptors (nothing else: every other is
 * close-on-exec), with default signal handling and no signal blocked.
 * Unlike nbdkit, which never reaps them, a thread of the filter waits
 * for each script, so none stays a zombie; at cleanup it waits 5 s at
 * most for those still running, then leaves them (as nbdkit does).
 *
 * (C names logf_: log_ is src/log.h's.)  Writing does not serialise the
 * datapath on the file: each connection collects its lines in its own
 * buffer (under the connection's own lock) and writes them with one
 * write(2) to the O_APPEND file when none of its requests is in flight
 * any more, when 16 KiB are waiting, and at disconnect.  A line is
 * therefore whole in the file, lines of one connection keep their order,
 * and connections never wait for each other; a request still running
 * may keep its neighbours' lines in the buffer until it ends.  Under
 * --check-config the file is not touched and no script runs.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "layer.h"
#include "protocol.h"

extern char **environ;

struct logf_conf {
  char *logfile;
  int logappend;
  char *logscript;
};

static const struct nbd_param logf_params[] = {
  { "logfile", NBD_PARAM_PATH, offsetof(struct logf_conf, logfile), NULL,
    "the file the log is written to", NULL, 0 },
  { "logappend", NBD_PARAM_BOOL, offsetof(struct logf_conf, logappend), "no",
    "yes: append to an existing file; no: truncate it at startup", NULL, 0 },
  { "logscript", NBD_PARAM_STRING, offsetof(struct logf_conf, logscript),
    NULL, "shell script run (not waited for) for each event, with the "
    "line's fields as variables", NULL, 0 },
  NBD_PARAM_END
};

#define LOG_FLUSH_AT 16384

/* The scripts started and not reaped yet (logf_reaper). */
struct logf_pid {
  pid_t pid;
  struct logf_pid *next;
};

struct logf_state {
  int fd;                       /* -1: no logfile, or --check-config */
  const char *script;           /* NULL: no logscript, or --check-config */
  _Atomic uint64_t preconnects; /* Preconnect ids */
  _Atomic uint64_t lists;       /* ListExports ids (a count of their own,
                                 * as nbdkit's) */
  pthread_mutex_t lock;         /* pids, quit */
  pthread_cond_t cond;
  struct logf_pid *pids, **tail;
  int quit, reaper;
  pthread_t thread;
  atomic_int spawn_failed;
};

struct logf_handle {
  pthread_mutex_t lock;
  char *buf;
  size_t len, cap;
  unsigned inflight;
  _Atomic uint64_t ids;         /* request ids of the connection */
  uint64_t conn;
};

enum logf_type { LOGF_ENTER, LOGF_LEAVE, LOGF_PRINT };

static void logf_ready(const struct nbd_layer *layer);

/* ---- the script's children -------------------------------------------- */

/* How long cleanup (exit, or a reload dropping the filter) waits for
 * scripts still running, whose output belongs to the log; one that
 * hangs is then left running (as nbdkit leaves every script), not
 * killed, and the server goes on exiting. */
#define LOG_SCRIPT_GRACE_NS 5000000000ull

static uint64_t
logf_now(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Waits for each script in the order they started; a script still
 * running holds back the reaping of later ones, never a request.  It
 * polls (WNOHANG, 1 ms growing to 50 ms while the script runs), so that
 * cleanup can stop it: once quit is set it waits at most
 * LOG_SCRIPT_GRACE_NS in all, and not at all on a second SIGTERM. */
static void *
logf_reaper(void *arg)
{
  struct logf_state *st = arg;
  struct logf_pid *p;
  uint64_t deadline = 0, nap;
  int status, quit;
  pid_t r;

  pthread_mutex_lock(&st->lock);
  for (;;) {
    while (st->pids == NULL && !st->quit)
      pthread_cond_wait(&st->cond, &st->lock);
    if ((p = st->pids) == NULL)
      break;
    pthread_mutex_unlock(&st->lock);
    status = 0;
    nap = 1000000;
    for (;;) {
      r = waitpid(p->pid, &status, WNOHANG);
      if (r != 0 && !(r == -1 && errno == EINTR))
        break;
      pthread_mutex_lock(&st->lock);
      quit = st->quit;
      pthread_mutex_unlock(&st->lock);
      if (quit && deadline == 0)
        deadline = logf_now() + LOG_SCRIPT_GRACE_NS;
      if (quit && (logf_now() >= deadline || nbd_server_aborting())) {
        nbd_warn("log: logscript still running (pid %ld): not waited for",
                 (long)p->pid);
        r = 0;
        break;
      }
      {
        /* Not nbd_sleep: a stopping server would not sleep. */
        struct timespec tick = { 0, (long)nap };
        nanosleep(&tick, NULL);
      }
      if (nap < 50000000)
        nap *= 2;
    }
    if (r > 0 && WIFEXITED(status) && WEXITSTATUS(status) != 0)
      nbd_debug("log: logscript exited with status %d",
                WEXITSTATUS(status));
    else if (r > 0 && WIFSIGNALED(status))
      nbd_debug("log: logscript killed by signal %d", WTERMSIG(status));
    pthread_mutex_lock(&st->lock);
    if ((st->pids = p->next) == NULL)
      st->tail = &st->pids;
    free(p);
  }
  pthread_mutex_unlock(&st->lock);
  return NULL;
}

/* Starts text under /bin/bash as nbdkit does, and hands its pid to the
 * reaper.  Failures are logged, never a request's error. */
static void
logf_spawn(struct logf_state *st, const char *text)
{
  char *argv[] = { (char *)"sh", (char *)"-c", (char *)text, NULL };
  posix_spawnattr_t attr;
  sigset_t none, dfl;
  struct logf_pid *p = malloc(sizeof *p);
  int r;

  if (p == NULL) {
    nbd_error("log: logscript: out of memory");
    return;
  }
  /* Worker threads block signals and the server ignores SIGPIPE: the
   * script gets neither. */
  sigemptyset(&none);
  sigemptyset(&dfl);
  sigaddset(&dfl, SIGPIPE);
  sigaddset(&dfl, SIGTERM);
  sigaddset(&dfl, SIGINT);
  sigaddset(&dfl, SIGHUP);
  sigaddset(&dfl, SIGUSR1);
  sigaddset(&dfl, SIGCHLD);
  posix_spawnattr_init(&attr);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &dfl);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK |
                           POSIX_SPAWN_SETSIGDEF);
  r = posix_spawn(&p->pid, "/bin/bash", NULL, &attr, argv, environ);
  posix_spawnattr_destroy(&attr);
  if (r != 0) {
    /* Once, not per request (nbdkit says nothing). */
    if (!atomic_exchange(&st->spawn_failed, 1))
      nbd_error("log: logscript: cannot run /bin/bash: %s (said once)",
                strerror(r));
    free(p);
    return;
  }
  p->next = NULL;
  pthread_mutex_lock(&st->lock);
  *st->tail = p;
  st->tail = &p->next;
  pthread_cond_signal(&st->cond);
  pthread_mutex_unlock(&st->lock);
}

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
  pthread_mutex_init(&st->lock, NULL);
  pthread_cond_init(&st->cond, NULL);
  st->tail = &st->pids;
  layer->state = st;
  if (nbd_checking())
    return 0;
  if (c->logfile) {
    st->fd = open(c->logfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC |
                  (c->logappend ? 0 : O_TRUNC), 0644);
    if (st->fd == -1) {
      snprintf(err, errlen, "logfile: %s: %s", c->logfile, strerror(errno));
      goto fail;
    }
  }
  if (c->logscript) {
    if (pthread_create(&st->thread, NULL, logf_reaper, st) != 0) {
      snprintf(err, errlen, "logscript: cannot start a thread");
      goto fail;
    }
    st->reaper = 1;
    st->script = c->logscript;
  }
  logf_ready(layer);
  return 0;
fail:
  if (st->fd != -1)
    close(st->fd);
  pthread_cond_destroy(&st->cond);
  pthread_mutex_destroy(&st->lock);
  free(st);
  layer->state = NULL;
  return -1;
}

/* The scripts still running are waited for: their output is part of
 * the log. */
static void
logf_cleanup(struct nbd_layer *layer)
{
  struct logf_state *st = layer->state;

  if (st == NULL)
    return;
  if (st->reaper) {
    pthread_mutex_lock(&st->lock);
    st->quit = 1;
    pthread_cond_signal(&st->cond);
    pthread_mutex_unlock(&st->lock);
    pthread_join(st->thread, NULL);
  }
  if (st->fd != -1)
    close(st->fd);
  pthread_cond_destroy(&st->cond);
  pthread_mutex_destroy(&st->lock);
  free(st);
  layer->state = NULL;
}

/* ---- formatting ------------------------------------------------------- */

/* A growing string: on the stack up to 1 KiB, then malloc'd (a long
 * extents list).  Out of memory, it stops growing (the line is cut). */
struct logf_str {
  char *s;
  size_t n, cap;
  char small[1024];
};

static void
logf_init(struct logf_str *l)
{
  l->s = l->small;
  l->n = 0;
  l->cap = sizeof l->small;
  l->s[0] = '\0';
}

static void
logf_free(struct logf_str *l)
{
  if (l->s != l->small)
    free(l->s);
}

static void
logf_add(struct logf_str *l, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));

static void
logf_add(struct logf_str *l, const char *fmt, ...)
{
  va_list ap;
  int r;

  va_start(ap, fmt);
  r = vsnprintf(l->s + l->n, l->cap - l->n, fmt, ap);
  va_end(ap);
  if (r < 0)
    return;
  if ((size_t)r >= l->cap - l->n) {
    size_t cap = (l->n + (size_t)r + 1) * 2;
    char *b = l->s == l->small ? malloc(cap) : realloc(l->s, cap);
    if (b == NULL) {
      l->n = l->cap - 1;        /* cut */
      return;
    }
    if (l->s == l->small)
      memcpy(b, l->small, l->n);
    l->s = b;
    l->cap = cap;
    va_start(ap, fmt);
    r = vsnprintf(l->s + l->n, l->cap - l->n, fmt, ap);
    va_end(ap);
    if (r < 0)
      return;
  }
  l->n += (size_t)r;
}

/* nbdkit's shell quoting: safe strings as they are, others in double
 * quotes with \ before $ ` \ and ". */
static void
logf_quote(struct logf_str *l, const char *s)
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

/* The result fields: return=0, or return=-1 and the NBD error the
 * client gets (nbdkit's names: EROFS shows as EPERM, EFBIG as ENOSPC). */
static void
logf_result(struct logf_str *l, int r)
{
  const char *name;

  if (r >= 0) {
    logf_add(l, "return=0");
    return;
  }
  switch (proto_nbd_error(r)) {
  case NBD_EPERM: name = "EPERM"; break;
  case NBD_ENOMEM: name = "ENOMEM"; break;
  case NBD_EINVAL: name = "EINVAL"; break;
  case NBD_ENOSPC: name = "ENOSPC"; break;
  case NBD_EOVERFLOW: name = "EOVERFLOW"; break;
  case NBD_ENOTSUP: name = "ENOTSUP"; break;
  case NBD_ESHUTDOWN: name = "ESHUTDOWN"; break;
  default: name = "EIO"; break;
  }
  logf_add(l, "return=-1 error=%s", name);
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

/* Appends a line to the connection's buffer; writes the buffer out when
 * the last request in flight ended (leave) or it is large. */
static void
logf_buffer(struct logf_handle *h, int fd, const char *s, size_t n,
            int enter, int leave)
{
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
    logf_write(fd, h->buf, h->len);
    h->len = 0;
  }
  pthread_mutex_unlock(&h->lock);
}

/* One event, as nbdkit's output(): a line in the file (through the
 * connection's buffer when h is set) and a run of the script.  conn 0:
 * not a connection's (Ready, Preconnect, ListExports); id 0: none; body:
 * the fields after the id. */
static void
logf_event(struct logf_state *st, struct logf_handle *h, uint64_t conn,
           const char *act, enum logf_type type, uint64_t id,
           const char *body)
{
  static const char *const types[] = { "ENTER", "LEAVE", "PRINT" };
  struct logf_str l;

  if (st->fd != -1) {
    struct timespec ts;
    struct tm tm;
    char stamp[40];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
    logf_init(&l);
    logf_add(&l, "%s.%06ld ", stamp, ts.tv_nsec / 1000);
    if (conn)
      logf_add(&l, "connection=%" PRIu64 " ", conn);
    logf_add(&l, "%s%s", type == LOGF_LEAVE ? "..." : "", act);
    if (id)
      logf_add(&l, " id=%" PRIu64, id);
    if (*body)
      logf_add(&l, " %s", body);
    logf_add(&l, "%s\n", type == LOGF_ENTER ? " ..." : "");
    if (h)
      logf_buffer(h, st->fd, l.s, l.n, type == LOGF_ENTER,
                  type == LOGF_LEAVE);
    else
      logf_write(st->fd, l.s, l.n);
    logf_free(&l);
  }
  if (st->script) {
    logf_init(&l);
    logf_add(&l, "act=%s\n", act);
    if (conn)
      logf_add(&l, "connection=%" PRIu64 "\n", conn);
    logf_add(&l, "type=%s\n", types[type]);
    if (id)
      logf_add(&l, "id=%" PRIu64 "\n", id);
    logf_add(&l, "%s\n%s", body, st->script);
    logf_spawn(st, l.s);
    logf_free(&l);
  }
}

static int
logf_active(const struct logf_state *st)
{
  return st->fd != -1 || st->script != NULL;
}

/* nbdkit's Ready line: the thread model of this layer and those below
 * (set up before it, bottom up), the numbers of nbdkit's
 * NBDKIT_THREAD_MODEL_*. */
static void
logf_ready(const struct nbd_layer *layer)
{
  struct logf_state *st = layer->state;
  enum nbd_thread_model m = NBD_PARALLEL;
  const struct nbd_layer *l;
  char body[32];

  if (!logf_active(st))
    return;
  for (l = layer; l; l = l->below)
    if (l->thread_model < m)
      m = l->thread_model;
  snprintf(body, sizeof body, "thread_model=%d", (int)m);
  logf_event(st, NULL, 0, "Ready", LOGF_PRINT, 0, body);
}

/* ---- connection events ------------------------------------------------ */

static int
logf_preconnect(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct logf_state *st = self->layer->state;
  uint64_t id;
  struct logf_str l;
  int r;

  if (!logf_active(st))
    return next_preconnect(next);
  id = atomic_fetch_add(&st->preconnects, 1) + 1;
  logf_init(&l);
  logf_add(&l, "readonly=%d",
           (self->info && self->info->readonly) || self->export_readonly);
  logf_event(st, NULL, 0, "Preconnect", LOGF_ENTER, id, l.s);
  r = next_preconnect(next);
  l.n = 0;
  logf_result(&l, r);
  logf_event(st, NULL, 0, "Preconnect", LOGF_LEAVE, id, l.s);
  logf_free(&l);
  return r;
}

static int
logf_list_exports(struct nbd_ctx *self, struct nbd_ctx *next,
                 struct nbd_exports *exports)
{
  struct logf_state *st = self->layer->state;
  const struct nbd_conn_info *i = nbd_conn_info(self);
  uint64_t id;
  struct logf_str l;
  size_t k;
  int r;

  if (!logf_active(st))
    return next_list_exports(next, exports);
  id = atomic_fetch_add(&st->lists, 1) + 1;
  logf_init(&l);
  logf_add(&l, "readonly=%d tls=%d",
           (i && i->readonly) || self->export_readonly, i ? i->tls : 0);
  logf_event(st, NULL, 0, "ListExports", LOGF_ENTER, id, l.s);
  r = next_list_exports(next, exports);
  l.n = 0;
  logf_add(&l, "exports=(");
  if (r == 0)
    logf_quote(&l, self->layer->export_name ? self->layer->export_name : "");
  for (k = 0; r > 0 && k < exports->n; k++) {
    logf_add(&l, "%s", k ? " " : "");
    logf_quote(&l, exports->v[k].name);
  }
  logf_add(&l, ") ");
  logf_result(&l, r);
  logf_event(st, NULL, 0, "ListExports", LOGF_LEAVE, id, l.s);
  logf_free(&l);
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
  struct logf_state *st = self->layer->state;
  struct logf_handle *h = self->handle;
  const struct nbd_conn_info *i = nbd_conn_info(self);
  const char *name = i && i->export_name ? i->export_name
                     : self->layer->export_name ? self->layer->export_name
                     : "";
  struct logf_str l;

  (void)readonly;
  if (!logf_active(st))
    return 0;
  logf_init(&l);
  logf_add(&l, "export=");
  logf_quote(&l, name);
  logf_add(&l, " tls=%d size=0x%" PRIx64 " minsize=0x%" PRIx32
          " prefsize=0x%" PRIx32 " maxsize=0x%" PRIx32 " write=%d flush=%d "
          "rotational=%d trim=%d zero=%d fua=%d extents=%d cache=%d "
          "fast_zero=%d", i ? i->tls : 0, (uint64_t)next->size,
          next->min_block, next->pref_block, next->max_block,
          next->can_write, next->can_flush, next->is_rotational,
          next->can_trim, next->can_zero, next->can_fua, next->can_extents,
          next->can_cache, next->can_fast_zero);
  logf_event(st, h, h->conn, "Connect", LOGF_PRINT, 0, l.s);
  logf_free(&l);
  return 0;
}

static void
logf_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct logf_state *st = self->layer->state;
  struct logf_handle *h = self->handle;
  char body[64];

  (void)next;
  if (logf_active(st)) {
    snprintf(body, sizeof body, "transactions=%" PRIu64,
             atomic_load(&h->ids));
    logf_event(st, h, h->conn, "Disconnect", LOGF_PRINT, 0, body);
  }
  pthread_mutex_destroy(&h->lock);
  free(h->buf);
  free(h);
}

/* ---- requests ---------------------------------------------------------- */

/* The call; returns the request id (0: the filter is inactive).  fmt
 * adds flags after count. */
static uint64_t
logf_enter(struct nbd_ctx *self, const char *act, uint64_t count,
           uint64_t offset, const char *fmt, ...)
  __attribute__((format(printf, 5, 6)));

static uint64_t
logf_enter(struct nbd_ctx *self, const char *act, uint64_t count,
           uint64_t offset, const char *fmt, ...)
{
  struct logf_state *st = self->layer->state;
  struct logf_handle *h = self->handle;
  uint64_t id;
  struct logf_str l;
  va_list ap;
  char flags[128] = "";

  if (!logf_active(st))
    return 0;
  id = atomic_fetch_add(&h->ids, 1) + 1;
  logf_init(&l);
  if (strcmp(act, "Flush") != 0)
    logf_add(&l, "offset=0x%" PRIx64 " count=0x%" PRIx64, offset, count);
  if (fmt) {
    va_start(ap, fmt);
    vsnprintf(flags, sizeof flags, fmt, ap);
    va_end(ap);
    logf_add(&l, " %s", flags);
  }
  logf_event(st, h, h->conn, act, LOGF_ENTER, id, l.s);
  logf_free(&l);
  return id;
}

static int
logf_leave(struct nbd_ctx *self, const char *act, uint64_t id, int r)
{
  struct logf_handle *h = self->handle;
  struct logf_str l;

  if (id == 0)
    return r;
  logf_init(&l);
  logf_result(&l, r);
  logf_event(self->layer->state, h, h->conn, act, LOGF_LEAVE, id, l.s);
  logf_free(&l);
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
  uint64_t id = logf_enter(self, "Write", count, offset, "fua=%d",
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
  uint64_t id = logf_enter(self, "Trim", count, offset, "fua=%d",
                          !!(flags & NBD_CMD_FLAG_FUA));

  return logf_leave(self, "Trim", id, next_trim(next, count, offset, flags));
}

static int
logf_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
         uint64_t offset, uint32_t flags)
{
  uint64_t id = logf_enter(self, "Zero", count, offset,
                          "trim=%d fua=%d fast=%d",
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

/* The result lists the extents, as nbdkit: offset length "type" (a bash
 * array for the script). */
static int
logf_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  static const char *const types[4] = { "", "hole", "zero", "hole,zero" };
  struct logf_handle *h = self->handle;
  uint64_t id = logf_enter(self, "Extents", count, offset, "req_one=%d",
                          !!(flags & NBD_CMD_FLAG_REQ_ONE));
  int r = next_extents(next, count, offset, flags, extents);
  struct logf_str l;
  size_t k;

  if (r < 0 || id == 0)
    return logf_leave(self, "Extents", id, r);
  logf_init(&l);
  logf_add(&l, "extents=(");
  for (k = 0; k < extents->n; k++)
    logf_add(&l, "%s0x%" PRIx64 " 0x%" PRIx64 " \"%s\"", k ? " " : "",
             extents->v[k].offset, extents->v[k].length,
             types[extents->v[k].type & 3]);
  logf_add(&l, ") return=0");
  logf_event(self->layer->state, h, h->conn, "Extents", LOGF_LEAVE, id, l.s);
  logf_free(&l);
  return r;
}

/* qemu:allocation-depth has no nbdkit counterpart to log as: through. */
PASSTHROUGH(logf, depth)

static int
logf_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                struct nbd_source *src, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  uint64_t id = logf_enter(self, "Write", count, offset, "fua=%d",
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
  .description = "log connections and requests to a file (nbdkit's "
                 "format) and/or run a script for each",
  .params = logf_params,
  .conf_size = sizeof(struct logf_conf),
  .setup = logf_setup,
  .cleanup = logf_cleanup,
  .open = logf_open,
  .prepare = logf_prepare,
  .close = logf_close,
  .pwrite_from = logf_pwrite_from,
);
