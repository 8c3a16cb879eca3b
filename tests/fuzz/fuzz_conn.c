/* nbdstack fuzzing: one NBD connection fed from a byte string (see
 * fuzz_conn.h).  Shared by fuzz_handshake and fuzz_transmission.
 *
 * Why a helper thread and a socketpair rather than a fake fd: conn.c reads
 * with recv(MSG_WAITALL) and writes with sendmsg, so the server code runs
 * unmodified, including partial reads and the early close of a connection
 * it drops.  The helper is started once and reused (creating a thread per
 * input would cost more than most inputs take to serve).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "conn.h"
#include "fuzz_conn.h"
#include "registry.h"
#include "params.h"

const char *const fuzz_export_names[FUZZ_EXPORTS] = { "", "win", "ro" };

static void __attribute__((noreturn, format(printf, 1, 2)))
fuzz_die(const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  fputs("fuzz harness: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

/* ---- the client side: one helper thread ---------------------------------- */

struct fuzz_job {
  int fd;                       /* client end, non-blocking */
  const uint8_t *part[2];
  size_t len[2];
};

static pthread_mutex_t fuzz_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fuzz_cond = PTHREAD_COND_INITIALIZER;
static struct fuzz_job *fuzz_job;   /* set by the harness, NULL when done */
static int fuzz_helper_started;

/* Writes the client bytes, then SHUT_WR; reads and discards until the
 * server closes its end. */
static void
fuzz_client(struct fuzz_job *j)
{
  char sink[64 << 10];
  int part = 0, writing = 1;
  size_t off = 0;
  struct pollfd p;
  ssize_t r;

  for (;;) {
    while (writing && part < 2 && off == j->len[part]) {
      part++;
      off = 0;
    }
    if (writing && part == 2) {
      shutdown(j->fd, SHUT_WR);
      writing = 0;
    }
    p.fd = j->fd;
    p.events = POLLIN | (writing ? POLLOUT : 0);
    if (poll(&p, 1, -1) == -1) {
      if (errno == EINTR)
        continue;
      fuzz_die("poll: %s", strerror(errno));
    }
    if (writing && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
      r = send(j->fd, j->part[part] + off, j->len[part] - off,
               MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r > 0)
        off += (size_t)r;
      else if (r == -1 && errno != EAGAIN && errno != EINTR)
        writing = 0;            /* the server closed: EPIPE, ECONNRESET */
    }
    if (p.revents & (POLLIN | POLLERR | POLLHUP)) {
      r = recv(j->fd, sink, sizeof sink, MSG_DONTWAIT);
      if (r == 0 || (r == -1 && errno != EAGAIN && errno != EINTR))
        return;                 /* server end closed */
    }
  }
}

static void *
fuzz_helper(void *arg)
{
  struct fuzz_job *j;

  for (;;) {
    pthread_mutex_lock(&fuzz_lock);
    while (fuzz_job == NULL)
      pthread_cond_wait(&fuzz_cond, &fuzz_lock);
    j = fuzz_job;
    pthread_mutex_unlock(&fuzz_lock);
    fuzz_client(j);
    pthread_mutex_lock(&fuzz_lock);
    fuzz_job = NULL;
    pthread_cond_broadcast(&fuzz_cond);
    pthread_mutex_unlock(&fuzz_lock);
  }
  return NULL;
}

/* ---- the exports ------------------------------------------------------- */

/* One layer with its parameters (key, value, ..., NULL), pushed below the
 * export's existing layers; setup is run later, backend first, as config.c
 * does. */
static struct nbd_layer *
fuzz_layer(struct nbd_export *e, enum nbd_layer_kind kind, const char *name,
           const char *const *kv)
{
  const struct nbd_layer_ops *ops = registry_find(kind, name);
  struct nbd_layer *l;
  char err[256];

  if (ops == NULL)
    fuzz_die("layer %s is not compiled in (build with NBD_FILTERS=all "
             "NBD_BACKENDS=all)", name);
  l = engine_layer_new(ops, e->name);
  if (l == NULL)
    fuzz_die("out of memory");
  for (; kv && kv[0]; kv += 2)
    if (params_set(l, kv[0], kv[1], err, sizeof err) == -1)
      fuzz_die("%s %s=%s: %s", name, kv[0], kv[1], err);
  engine_export_push(e, l);
  return l;
}

static struct nbd_export *
fuzz_export(const char *name, const char *filter, const char *const *fkv,
            const char *const *bkv, int readonly)
{
  struct nbd_export *e = engine_export_new(name);
  struct nbd_layer *f = NULL, *b;
  char err[256];

  if (e == NULL)
    fuzz_die("out of memory");
  if (filter)
    f = fuzz_layer(e, NBD_LAYER_FILTER, filter, fkv);
  b = fuzz_layer(e, NBD_LAYER_BACKEND, "memory", bkv);
  if (engine_layer_setup(b, err, sizeof err) == -1 ||
      (f && engine_layer_setup(f, err, sizeof err) == -1) ||
      engine_export_finish(e, err, sizeof err) == -1)
    fuzz_die("export \"%s\": %s", name, err);
  e->readonly = readonly;
  return e;
}

static void
fuzz_config(struct nbd_config *cfg)
{
  static const char *const mem[] = { "size", "1M", NULL };
  static const char *const win[] = { "offset", "64k", "range", "512k", NULL };
  struct nbd_export *e0, *e1, *e2;

  memset(cfg, 0, sizeof *cfg);
  cfg->threads = 1;             /* requests run inline: deterministic */
  /* Gathering on, with short sleeps (2 us slices), so that its request
   * counting sees hostile bytes too; polling stays off. */
  cfg->coalesce = 8000;
  e0 = fuzz_export(fuzz_export_names[0], NULL, NULL, mem, 0);
  e1 = fuzz_export(fuzz_export_names[1], "offset", win, mem, 0);
  e2 = fuzz_export(fuzz_export_names[2], NULL, NULL, mem, 1);
  e0->description = strdup("fuzzing RAM disk");
  e0->next = e1;
  e1->next = e2;
  cfg->exports = e0;
}

static void
fuzz_config_free(struct nbd_config *cfg)
{
  struct nbd_export *e, *next;

  for (e = cfg->exports; e; e = next) {
    next = e->next;
    engine_export_free(e);
  }
  cfg->exports = NULL;
}

/* ---- one connection -------------------------------------------------- */

void
fuzz_conn_run(const uint8_t *pre, size_t prelen, const uint8_t *data,
              size_t len)
{
  struct fuzz_job job;
  struct nbd_config cfg;
  struct nbd_conn *c;
  pthread_t tid;
  int sv[2];

  if (!fuzz_helper_started) {
    if (pthread_create(&tid, NULL, fuzz_helper, NULL) != 0)
      fuzz_die("cannot start the helper thread");
    pthread_detach(tid);
    fuzz_helper_started = 1;
  }
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
    fuzz_die("socketpair: %s", strerror(errno));
  if (fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK) == -1)
    fuzz_die("fcntl: %s", strerror(errno));
  fuzz_config(&cfg);

  c = conn_new(sv[0], &cfg);
  if (c == NULL)
    fuzz_die("out of memory");

  job.fd = sv[1];
  job.part[0] = pre;
  job.len[0] = prelen;
  job.part[1] = data;
  job.len[1] = len;
  pthread_mutex_lock(&fuzz_lock);
  fuzz_job = &job;
  pthread_cond_broadcast(&fuzz_cond);
  pthread_mutex_unlock(&fuzz_lock);

  conn_run(c);

  /* As server.c's server_conn_thread: closing our end is what ends the
   * helper's drain loop. */
  close(c->w.fd);
  conn_free(c);

  pthread_mutex_lock(&fuzz_lock);
  while (fuzz_job != NULL)
    pthread_cond_wait(&fuzz_cond, &fuzz_lock);
  pthread_mutex_unlock(&fuzz_lock);
  close(sv[1]);
  fuzz_config_free(&cfg);
}
