/* nbdstack filter pause: hold requests on command, to take a consistent
 * snapshot of the layers below (nbdkit's pause filter, same key and
 * control protocol).
 *
 * Each instance listens on the Unix socket pause-control= with a thread
 * of its own (started in setup, stopped in cleanup).  The protocol is
 * nbdkit's: the client sends single bytes; 'p' pauses, and 'P' comes back
 * once every request that entered before it has finished; 'r' resumes
 * and 'R' comes back; blanks, tabs and newlines are skipped, as in
 * nbdkit; anything else is answered with 'X'.  Requests that
 * enter while paused wait; when the server stops they fail with
 * ESHUTDOWN instead, so a paused server still exits on SIGTERM.
 *
 * Only the datapath waits: capabilities are asked while a connection
 * opens and touch no data.  A request in flight is counted with one
 * atomic, so an unpaused request takes no lock.  This filter does not
 * flush the layers below when it pauses (nor does nbdkit's).
 */
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "layer.h"

/* How often a waiting request looks at nbd_server_stopping(), and the
 * control thread at its stop flag. */
#define PAUSE_POLL_MS 100

struct pause_conf {
  char *control;              /* pause-control= */
};

/* Shared by every connection of the instance (layer->state). */
struct pause_state {
  pthread_mutex_t lock;
  pthread_cond_t cond;        /* paused cleared, or inflight reached 0 */
  int paused;                 /* atomic */
  unsigned inflight;          /* atomic: datapath requests inside */
  int stop;                   /* atomic: cleanup wants the thread gone */
  int lfd;                    /* the listening socket */
  pthread_t thread;
  char *path;                 /* unlinked at cleanup */
};

static const struct nbd_param pause_params[] = {
  { "pause-control", NBD_PARAM_PATH, offsetof(struct pause_conf, control),
    NULL, "Unix socket taking the commands 'p' (pause) and 'r' (resume); "
    "a path of at most 107 bytes", NULL, 1 },
  NBD_PARAM_END
};

/* ---- the datapath gate --------------------------------------------------- */

static void
pause_deadline(struct timespec *ts, long ms)
{
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_nsec += ms * 1000000L;
  ts->tv_sec += ts->tv_nsec / 1000000000L;
  ts->tv_nsec %= 1000000000L;
}

/* Count the request in, or wait while paused.  The count goes up before
 * paused is read, and the pauser sets paused before reading the count
 * (both sequentially consistent), so one of the two always sees the
 * other: no request slips in after 'P' is sent. */
static int
pause_enter(struct pause_state *st)
{
  struct timespec ts;

  for (;;) {
    __atomic_add_fetch(&st->inflight, 1, __ATOMIC_SEQ_CST);
    if (!__atomic_load_n(&st->paused, __ATOMIC_SEQ_CST))
      return 0;
    /* Paused: step out again (the pauser may be waiting for this
     * count), then wait for the resume. */
    if (__atomic_sub_fetch(&st->inflight, 1, __ATOMIC_SEQ_CST) == 0) {
      pthread_mutex_lock(&st->lock);
      pthread_cond_broadcast(&st->cond);
      pthread_mutex_unlock(&st->lock);
    }
    pthread_mutex_lock(&st->lock);
    while (__atomic_load_n(&st->paused, __ATOMIC_SEQ_CST)) {
      if (nbd_server_stopping()) {
        pthread_mutex_unlock(&st->lock);
        return -ESHUTDOWN;
      }
      pause_deadline(&ts, PAUSE_POLL_MS);
      pthread_cond_timedwait(&st->cond, &st->lock, &ts);
    }
    pthread_mutex_unlock(&st->lock);
  }
}

/* The pauser checks the count under the lock, so taking it before the
 * broadcast means the last request out cannot be missed. */
static void
pause_leave(struct pause_state *st)
{
  if (__atomic_sub_fetch(&st->inflight, 1, __ATOMIC_SEQ_CST) == 0 &&
      __atomic_load_n(&st->paused, __ATOMIC_SEQ_CST)) {
    pthread_mutex_lock(&st->lock);
    pthread_cond_broadcast(&st->cond);
    pthread_mutex_unlock(&st->lock);
  }
}

#define PAUSE_STATE(self) ((struct pause_state *)(self)->layer->state)

static int
pause_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
            uint32_t count, uint64_t offset, uint32_t flags)
{
  struct pause_state *st = PAUSE_STATE(self);
  int r;

  if ((r = pause_enter(st)) < 0)
    return r;
  r = next_pread(next, buf, count, offset, flags);
  pause_leave(st);
  return r;
}

static int
pause_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
             uint32_t count, uint64_t offset, uint32_t flags)
{
  struct pause_state *st = PAUSE_STATE(self);
  int r;

  if ((r = pause_enter(st)) < 0)
    return r;
  r = next_pwrite(next, buf, count, offset, flags);
  pause_leave(st);
  return r;
}

/* A refused write leaves its payload in the socket: the engine discards
 * it, so the connection stays in step. */
static int
pause_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                  struct nbd_source *src, uint32_t count, uint64_t offset,
                  uint32_t flags)
{
  struct pause_state *st = PAUSE_STATE(self);
  int r;

  if ((r = pause_enter(st)) < 0)
    return r;
  r = next_pwrite_from(next, src, count, offset, flags);
  pause_leave(st);
  return r;
}

static int
pause_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  struct pause_state *st = PAUSE_STATE(self);
  int r;

  if ((r = pause_enter(st)) < 0)
    return r;
  r = next_flush(next, flags);
  pause_leave(st);
  return r;
}

static int
pause_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  struct pause_state *st = PAUSE_STATE(self);
  int r;

  if ((r = pause_enter(st)) < 0)
    return r;
  r = next_trim(next, count, offset, flags);
  pause_leave(st);
  return r;
}

static int
pause_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  struct pause_state *st = PAUSE_STATE(self);
  int r;

  if ((r = pause_enter(st)) < 0)
    return r;
  r = next_zero(next, count, offset, flags);
  pause_leave(st);
  return r;
}

static int
pause_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
              uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  struct pause_state *st = PAUSE_STATE(self);
  int r;

  if ((r = pause_enter(st)) < 0)
    return r;
  r = next_extents(next, count, offset, flags, extents);
  pause_leave(st);
  return r;
}

static int
pause_depth(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  struct pause_state *st = PAUSE_STATE(self);
  int r;

  if ((r = pause_enter(st)) < 0)
    return r;
  r = next_depth(next, count, offset, flags, extents);
  pause_leave(st);
  return r;
}

static int
pause_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags)
{
  struct pause_state *st = PAUSE_STATE(self);
  int r;

  if ((r = pause_enter(st)) < 0)
    return r;
  r = next_cache(next, count, offset, flags);
  pause_leave(st);
  return r;
}

/* ---- the control socket -------------------------------------------------- */

/* 'p': no new request gets in; wait for those inside to leave.  0 when
 * they have, -1 when cleanup wants the thread to stop first. */
static int
pause_do_pause(struct pause_state *st)
{
  struct timespec ts;

  pthread_mutex_lock(&st->lock);
  __atomic_store_n(&st->paused, 1, __ATOMIC_SEQ_CST);
  while (__atomic_load_n(&st->inflight, __ATOMIC_SEQ_CST) != 0) {
    if (__atomic_load_n(&st->stop, __ATOMIC_SEQ_CST)) {
      pthread_mutex_unlock(&st->lock);
      return -1;
    }
    pause_deadline(&ts, PAUSE_POLL_MS);
    pthread_cond_timedwait(&st->cond, &st->lock, &ts);
  }
  pthread_mutex_unlock(&st->lock);
  return 0;
}

static void
pause_do_resume(struct pause_state *st)
{
  pthread_mutex_lock(&st->lock);
  __atomic_store_n(&st->paused, 0, __ATOMIC_SEQ_CST);
  pthread_cond_broadcast(&st->cond);
  pthread_mutex_unlock(&st->lock);
}

/* Waits until fd is readable; 1, or 0 when the thread must stop. */
static int
pause_wait_readable(struct pause_state *st, int fd)
{
  struct pollfd p = { .fd = fd, .events = POLLIN };

  while (!__atomic_load_n(&st->stop, __ATOMIC_SEQ_CST)) {
    if (poll(&p, 1, PAUSE_POLL_MS) > 0)
      return 1;
  }
  return 0;
}

/* One control client, command by command, until it hangs up. */
static void
pause_serve(struct pause_state *st, int fd)
{
  char c, reply;
  ssize_t n;

  while (pause_wait_readable(st, fd)) {
    n = read(fd, &c, 1);
    if (n == -1 && errno == EINTR)
      continue;
    if (n <= 0)
      return;
    switch (c) {
    case 'p':
      if (pause_do_pause(st) == -1)
        return;
      nbd_info("filter pause: paused");
      reply = 'P';
      break;
    case 'r':
      pause_do_resume(st);
      nbd_info("filter pause: resumed");
      reply = 'R';
      break;
    case ' ': case '\t': case '\n':
      continue;                 /* nbdkit's: `echo p | socat ...` works */
    default:
      reply = 'X';
      break;
    }
    if (send(fd, &reply, 1, MSG_NOSIGNAL) != 1)
      return;
  }
}

static void *
pause_thread(void *arg)
{
  struct pause_state *st = arg;
  int fd;

  while (pause_wait_readable(st, st->lfd)) {
    fd = accept4(st->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd == -1)
      continue;
    pause_serve(st, fd);
    close(fd);
  }
  return NULL;
}

/* A socket left by a server that died is replaced; a live one (someone
 * accepts on it) or anything that is not a socket is refused. */
static int
pause_clear_stale(const struct sockaddr_un *sa, char *err, size_t errlen)
{
  struct stat sb;
  int fd, r;

  if (lstat(sa->sun_path, &sb) == -1)
    return 0;
  if (!S_ISSOCK(sb.st_mode)) {
    snprintf(err, errlen, "pause-control=%s: exists and is not a socket",
             sa->sun_path);
    return -1;
  }
  if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1) {
    snprintf(err, errlen, "socket: %s", strerror(errno));
    return -1;
  }
  r = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
  close(fd);
  if (r == 0) {
    snprintf(err, errlen, "pause-control=%s: in use by another process",
             sa->sun_path);
    return -1;
  }
  unlink(sa->sun_path);
  return 0;
}

static int
pause_listen(struct pause_state *st, const char *path, char *err,
             size_t errlen)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };

  if (strlen(path) >= sizeof sa.sun_path) {
    snprintf(err, errlen, "pause-control=%s: path of %zu bytes, at most %zu",
             path, strlen(path), sizeof sa.sun_path - 1);
    return -1;
  }
  memcpy(sa.sun_path, path, strlen(path) + 1);
  if (pause_clear_stale(&sa, err, errlen) == -1)
    return -1;
  st->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (st->lfd == -1) {
    snprintf(err, errlen, "socket: %s", strerror(errno));
    return -1;
  }
  if (bind(st->lfd, (struct sockaddr *)&sa, sizeof sa) == -1 ||
      listen(st->lfd, 4) == -1) {
    snprintf(err, errlen, "pause-control=%s: %s", path, strerror(errno));
    close(st->lfd);
    return -1;
  }
  return 0;
}

static void
pause_state_free(struct pause_state *st)
{
  pthread_cond_destroy(&st->cond);
  pthread_mutex_destroy(&st->lock);
  free(st->path);
  free(st);
}

static int
pause_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct pause_conf *conf = layer->conf;
  struct pause_state *st = calloc(1, sizeof *st);
  pthread_condattr_t ca;
  int r;

  if (st == NULL || (st->path = strdup(conf->control)) == NULL) {
    free(st);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  pthread_mutex_init(&st->lock, NULL);
  /* Timed waits measure CLOCK_MONOTONIC: a clock step must not stretch
   * them. */
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&st->cond, &ca);
  pthread_condattr_destroy(&ca);
  if (pause_listen(st, conf->control, err, errlen) == -1) {
    pause_state_free(st);
    return -1;
  }
  if ((r = pthread_create(&st->thread, NULL, pause_thread, st)) != 0) {
    snprintf(err, errlen, "pthread_create: %s", strerror(r));
    close(st->lfd);
    unlink(st->path);
    pause_state_free(st);
    return -1;
  }
  layer->state = st;
  return 0;
}

static void
pause_cleanup(struct nbd_layer *layer)
{
  struct pause_state *st = layer->state;

  if (st == NULL)
    return;
  __atomic_store_n(&st->stop, 1, __ATOMIC_SEQ_CST);
  pthread_join(st->thread, NULL);
  close(st->lfd);
  unlink(st->path);
  pause_state_free(st);
  layer->state = NULL;
}

/* Capabilities are asked at open and change no data: not held. */
PASSTHROUGH(pause, reopen)
PASSTHROUGH(pause, get_size)
PASSTHROUGH(pause, block_size)
PASSTHROUGH(pause, can_write)
PASSTHROUGH(pause, can_flush)
PASSTHROUGH(pause, can_trim)
PASSTHROUGH(pause, can_zero)
PASSTHROUGH(pause, can_fast_zero)
PASSTHROUGH(pause, can_fua)
PASSTHROUGH(pause, can_cache)
PASSTHROUGH(pause, can_extents)
PASSTHROUGH(pause, can_multi_conn)
PASSTHROUGH(pause, is_rotational)
PASSTHROUGH(pause, list_exports)
PASSTHROUGH(pause, preconnect)

NBD_REGISTER_FILTER(pause, NBD_PARALLEL, NBD_MAY_BLOCK,
  .description = "pause and resume requests from a control socket "
                 "(for snapshots below)",
  .params = pause_params,
  .conf_size = sizeof(struct pause_conf),
  .pwrite_from = pause_pwrite_from,
  .setup = pause_setup,
  .cleanup = pause_cleanup,
);
