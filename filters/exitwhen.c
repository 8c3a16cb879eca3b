/* nbdstack filter exitwhen: exit the server gracefully when an outside
 * event happens (nbdkit's exitwhen filter, same keys): a file created or
 * deleted, a pipe closed, a process gone, or a script that exits 88.
 *
 * After the event the server refuses new clients (it closes its listening
 * sockets), serves the connected ones until they leave, then shuts down
 * as on SIGTERM, every export flushed, and exits 0 (nbd_server_exit).  An
 * event already true at startup exits at once, as in nbdkit.  The events
 * are checked when a client connects or disconnects and by a thread every
 * exit-when-poll (default 60 s).  nbdkit polls only while no client is
 * connected, so it misses an event during a long connection until the
 * next connect or disconnect; here the thread always polls, and the
 * connected clients are still served until they leave.  Every exit-when-*
 * key may be repeated; any event exits.  Under --check-config nothing is
 * checked and no thread runs.  The filter changes no request.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "layer.h"
#include "params.h"

extern char **environ;

struct exitwhen_conf {
  struct nbd_strlist created, deleted, pipes, pids, scripts;
  uint64_t poll;
};

static const struct nbd_param exitwhen_params[] = {
  { "exit-when-file-created", NBD_PARAM_PATH_LIST,
    offsetof(struct exitwhen_conf, created), NULL,
    "exit when this file exists (repeatable)", NULL, 0 },
  { "exit-when-file-deleted", NBD_PARAM_PATH_LIST,
    offsetof(struct exitwhen_conf, deleted), NULL,
    "exit when this file does not exist (repeatable)", NULL, 0 },
  { "exit-when-pipe-closed", NBD_PARAM_PATH_LIST,
    offsetof(struct exitwhen_conf, pipes), NULL,
    "exit when the writer of the pipe on this inherited fd closes it",
    NULL, 0 },
  { "exit-when-process-exits", NBD_PARAM_PATH_LIST,
    offsetof(struct exitwhen_conf, pids), NULL,
    "exit when the process of this PID has exited", NULL, 0 },
  { "exit-when-script", NBD_PARAM_PATH_LIST,
    offsetof(struct exitwhen_conf, scripts), NULL,
    "exit when this shell command exits 88 (0: not yet; 1-87: logged)",
    NULL, 0 },
  { "exit-when-poll", NBD_PARAM_DURATION,
    offsetof(struct exitwhen_conf, poll), "60",
    "how often to check the events (seconds, or 500ms)", NULL, 0 },
  NBD_PARAM_END
};

struct exitwhen_state {
  int *fds;                     /* exit-when-pipe-closed, parsed */
  pid_t *pids;                  /* exit-when-process-exits, parsed */
  pthread_mutex_t lock;         /* one check at a time; the thread's sleep */
  pthread_cond_t cond;
  int quit, thread_running;
  pthread_t thread;
};

static int
exitwhen_parse_int(const char *key, const char *s, long min, long *out,
                   char *err, size_t errlen)
{
  uint64_t v;

  if (params_parse_uint(s, &v) == -1 || v < (uint64_t)min ||
      v > (uint64_t)INT32_MAX) {
    snprintf(err, errlen, "%s: '%s' is not a number >= %ld", key, s, min);
    return -1;
  }
  *out = (long)v;
  return 0;
}

/* Runs the script with /bin/sh -c; 1 = event (exit status 88). */
static int
exitwhen_script(const char *script)
{
  char *argv[] = { (char *)"sh", (char *)"-c", (char *)script, NULL };
  pid_t pid;
  int status, r;

  if ((r = posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ)) != 0) {
    nbd_error("exitwhen: cannot run %s: %s", script, strerror(r));
    return 0;
  }
  while (waitpid(pid, &status, 0) == -1)
    if (errno != EINTR)
      return 0;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 88)
    return 1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    nbd_error("exitwhen: exit-when-script %s: %s %d", script,
              WIFEXITED(status) ? "exit status" : "killed by signal",
              WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
  return 0;
}

/* What happened, or NULL. */
static const char *
exitwhen_event(const struct exitwhen_conf *c, const struct exitwhen_state *st,
               char *why, size_t len)
{
  struct stat sb;
  size_t i;

  for (i = 0; i < c->created.n; i++)
    if (stat(c->created.v[i], &sb) == 0) {
      snprintf(why, len, "exitwhen: %s was created", c->created.v[i]);
      return why;
    }
  for (i = 0; i < c->deleted.n; i++)
    if (stat(c->deleted.v[i], &sb) == -1 && errno == ENOENT) {
      snprintf(why, len, "exitwhen: %s was deleted", c->deleted.v[i]);
      return why;
    }
  for (i = 0; i < c->pipes.n; i++) {
    struct pollfd p = { st->fds[i], POLLIN, 0 };
    /* The filter reads nothing: only a hang-up (or a dead fd) counts. */
    if (poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR | POLLNVAL))) {
      snprintf(why, len, "exitwhen: the pipe on fd %d was closed",
               st->fds[i]);
      return why;
    }
  }
  for (i = 0; i < c->pids.n; i++)
    if (kill(st->pids[i], 0) == -1 && errno == ESRCH) {
      snprintf(why, len, "exitwhen: process %ld exited", (long)st->pids[i]);
      return why;
    }
  for (i = 0; i < c->scripts.n; i++)
    if (exitwhen_script(c->scripts.v[i])) {
      snprintf(why, len, "exitwhen: %s reported the event",
               c->scripts.v[i]);
      return why;
    }
  return NULL;
}

static void
exitwhen_check(const struct nbd_layer *layer)
{
  struct exitwhen_state *st = layer->state;
  char why[512];

  if (nbd_checking() || nbd_server_exiting())
    return;
  pthread_mutex_lock(&st->lock);
  if (exitwhen_event(layer->conf, st, why, sizeof why))
    nbd_server_exit(why);
  pthread_mutex_unlock(&st->lock);
}

static void *
exitwhen_thread(void *arg)
{
  const struct nbd_layer *layer = arg;
  const struct exitwhen_conf *c = layer->conf;
  struct exitwhen_state *st = layer->state;
  struct timespec end;

  for (;;) {
    exitwhen_check(layer);
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += (time_t)(c->poll / 1000000000);
    end.tv_nsec += (long)(c->poll % 1000000000);
    if (end.tv_nsec >= 1000000000) {
      end.tv_sec++;
      end.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&st->lock);
    while (!st->quit &&
           pthread_cond_timedwait(&st->cond, &st->lock, &end) == 0)
      ;
    if (st->quit) {
      pthread_mutex_unlock(&st->lock);
      return NULL;
    }
    pthread_mutex_unlock(&st->lock);
  }
}

static int
exitwhen_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct exitwhen_conf *c = layer->conf;
  struct exitwhen_state *st = calloc(1, sizeof *st);
  pthread_condattr_t a;
  size_t i;
  long v;

  if (st == NULL || (c->pipes.n && (st->fds = calloc(c->pipes.n, sizeof *st->fds)) == NULL) ||
      (c->pids.n && (st->pids = calloc(c->pids.n, sizeof *st->pids)) == NULL)) {
    if (st) {
      free(st->fds);
      free(st);
    }
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  layer->state = st;
  pthread_mutex_init(&st->lock, NULL);
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&st->cond, &a);
  pthread_condattr_destroy(&a);
  if (c->poll == 0) {
    snprintf(err, errlen, "exit-when-poll: must be more than 0");
    return -1;
  }
  for (i = 0; i < c->pipes.n; i++) {
    if (exitwhen_parse_int("exit-when-pipe-closed", c->pipes.v[i], 0, &v,
                           err, errlen) == -1)
      return -1;
    st->fds[i] = (int)v;
    if (!nbd_checking() && fcntl((int)v, F_GETFD) == -1) {
      snprintf(err, errlen, "exit-when-pipe-closed: fd %ld is not open", v);
      return -1;
    }
  }
  for (i = 0; i < c->pids.n; i++) {
    if (exitwhen_parse_int("exit-when-process-exits", c->pids.v[i], 1, &v,
                           err, errlen) == -1)
      return -1;
    st->pids[i] = (pid_t)v;
  }
  if (nbd_checking() || c->created.n + c->deleted.n + c->pipes.n +
      c->pids.n + c->scripts.n == 0)
    return 0;
  exitwhen_check(layer);        /* true already: exit at once */
  if (pthread_create(&st->thread, NULL, exitwhen_thread, layer) != 0) {
    snprintf(err, errlen, "cannot start the polling thread");
    return -1;
  }
  st->thread_running = 1;
  return 0;
}

static void
exitwhen_cleanup(struct nbd_layer *layer)
{
  struct exitwhen_state *st = layer->state;

  if (st == NULL)
    return;
  if (st->thread_running) {
    pthread_mutex_lock(&st->lock);
    st->quit = 1;
    pthread_cond_signal(&st->cond);
    pthread_mutex_unlock(&st->lock);
    pthread_join(st->thread, NULL);
  }
  pthread_mutex_destroy(&st->lock);
  pthread_cond_destroy(&st->cond);
  free(st->fds);
  free(st->pids);
  free(st);
  layer->state = NULL;
}

/* nbdkit checks when clients come and go, without waiting for the poll. */
static int
exitwhen_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  (void)next;
  (void)readonly;
  if (nbd_conn_info(self) != NULL)
    exitwhen_check(self->layer);
  return 0;
}

static void
exitwhen_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)next;
  if (nbd_conn_info(self) != NULL)
    exitwhen_check(self->layer);
}

/* Keeps the engine's direct path for write payloads. */
static int
exitwhen_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                     struct nbd_source *src, uint32_t count, uint64_t offset,
                     uint32_t flags)
{
  (void)self;
  return next_pwrite_from(next, src, count, offset, flags);
}

PASSTHROUGH(exitwhen, pread)
PASSTHROUGH(exitwhen, pwrite)
PASSTHROUGH(exitwhen, flush)
PASSTHROUGH(exitwhen, trim)
PASSTHROUGH(exitwhen, zero)
PASSTHROUGH(exitwhen, extents)
PASSTHROUGH(exitwhen, depth)
PASSTHROUGH(exitwhen, cache)
PASSTHROUGH(exitwhen, reopen)
PASSTHROUGH(exitwhen, get_size)
PASSTHROUGH(exitwhen, block_size)
PASSTHROUGH(exitwhen, can_write)
PASSTHROUGH(exitwhen, can_flush)
PASSTHROUGH(exitwhen, can_trim)
PASSTHROUGH(exitwhen, can_zero)
PASSTHROUGH(exitwhen, can_fast_zero)
PASSTHROUGH(exitwhen, can_fua)
PASSTHROUGH(exitwhen, can_cache)
PASSTHROUGH(exitwhen, can_extents)
PASSTHROUGH(exitwhen, can_multi_conn)
PASSTHROUGH(exitwhen, is_rotational)
PASSTHROUGH(exitwhen, list_exports)
PASSTHROUGH(exitwhen, preconnect)

NBD_REGISTER_FILTER(exitwhen, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "exit the server gracefully when a file, pipe, process or "
                 "script says so",
  .params = exitwhen_params,
  .conf_size = sizeof(struct exitwhen_conf),
  .setup = exitwhen_setup,
  .cleanup = exitwhen_cleanup,
  .open = exitwhen_open,
  .close = exitwhen_close,
  .pwrite_from = exitwhen_pwrite_from,
);
