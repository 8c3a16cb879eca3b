/* nbdstack connection: a client's life from accept to close, in three
 * steps (conn_handshake, conn_transmit, conn_finish) that server.c runs on
 * the connection's thread.  The socket is wire.c's, the negotiation
 * handshake.c's, the request loop transmission.c's.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conn.h"
#include "metrics.h"
#include "modes.h"
#include "reload.h"
#include "stop.h"

struct nbd_conn *
conn_new(int fd, const struct nbd_config *cfg)
{
  struct nbd_conn *c = calloc(1, sizeof *c);

  if (c == NULL)
    return NULL;
  c->cfg = cfg;
  c->started_ns = nbd_now_ns();
  snprintf(c->peer, sizeof c->peer, "unix client fd %d", fd);
  wire_init(&c->w, fd, c->peer, cfg->poll, cfg->coalesce);
  pthread_mutex_init(&c->qlock, NULL);
  pthread_cond_init(&c->qcond, NULL);
  pthread_cond_init(&c->donecond, NULL);
  return c;
}

void
conn_free(struct nbd_conn *c)
{
  wire_destroy(&c->w);
  pthread_mutex_destroy(&c->qlock);
  pthread_cond_destroy(&c->qcond);
  pthread_cond_destroy(&c->donecond);
  free(c->meta_export);
  free(c->asked_name);
  free(c->refused);
  if (c->set_ref)
    reload_put(c->cfg);         /* may free a set a reload replaced */
  free(c);
}

/* Who the client is, for the connect and disconnect lines: address and
 * port, or the process of a Unix socket peer. */
static void
conn_describe(const struct nbd_conn *c, char *buf, size_t len)
{
  const struct nbd_conn_info *i = &c->info;

  if (i->family == AF_INET6)
    snprintf(buf, len, "[%s]:%u", i->addr, (unsigned)i->port);
  else if (i->family == AF_INET)
    snprintf(buf, len, "%s:%u", i->addr, (unsigned)i->port);
  else if (i->has_cred)
    snprintf(buf, len, "unix pid %ld uid %ld", (long)i->pid, (long)i->uid);
  else
    snprintf(buf, len, "%s", c->peer);
}

int
conn_preconnect(struct nbd_conn *c)
{
  struct nbd_export *e;
  size_t n = 0, i, nrefused = 0;
  char who[128];
  int r;

  for (e = c->cfg->exports; e; e = e->next)
    n++;
  if (n == 0)
    return 0;
  if ((c->refused = calloc(n, 1)) == NULL)
    return -1;
  c->nrefused = n;
  for (e = c->cfg->exports, i = 0; e; e = e->next, i++)
    if ((r = engine_preconnect(e, &c->info)) < 0) {
      c->refused[i] = 1;
      nrefused++;
      conn_describe(c, who, sizeof who);
      nbd_debug("%s: export \"%s\" refused the client before the "
                "handshake: %s", who, e->name, strerror(-r));
    }
  if (nrefused < n)
    return 0;
  conn_describe(c, who, sizeof who);
  nbd_info("refused before the handshake: %s (no export lets it in)", who);
  metrics_refused(METRICS_REFUSED_IP);
  return -1;
}

int
conn_refused(const struct nbd_conn *c, const struct nbd_export *e)
{
  const struct nbd_export *x;
  size_t i;

  for (x = c->cfg->exports, i = 0; x && i < c->nrefused; x = x->next, i++)
    if (x == e)
      return c->refused[i];
  return 0;
}

int
conn_handshake(struct nbd_conn *c)
{
  /* The deadline runs from accept when the server set it there. */
  if (c->cfg->handshake_timeout && c->w.deadline == 0)
    c->w.deadline = nbd_now_ns() + c->cfg->handshake_timeout;
  if (handshake_run(c) == -1) {
    metrics_handshake(c, -1);
    handshake_release(c);
    return -1;
  }
  metrics_handshake(c, 0);
  c->w.deadline = 0;
  wire_set_timeout(&c->w, 0, 1);
  if (c->cfg->idle_timeout)
    wire_set_timeout(&c->w, c->cfg->idle_timeout, 0);
  wire_size_sndbuf(&c->w);
  if (c->exp) {
    char who[128];
    conn_describe(c, who, sizeof who);
    nbd_info("connect: %s, export \"%s\"", who, c->exp->name);
  }
  return 0;
}

void
conn_transmit(struct nbd_conn *c)
{
  transmission_run(c);
}

void
conn_run(struct nbd_conn *c)
{
  if (conn_handshake(c) == 0)
    conn_transmit(c);
  conn_finish(c);
}

/* Whether a layer of the stack keeps acknowledged writes in the process
 * until a flush (struct nbd_layer, keeps_writes). */
static int
conn_keeps_writes(const struct nbd_ctx *x)
{
  for (; x; x = x->next)
    if (x->layer->keeps_writes)
      return 1;
  return 0;
}

/* Flush what this client wrote when a layer keeps it in the process (a
 * write-back cache), so nothing acknowledged is lost with the process;
 * and when the server ends the connection (SIGTERM, or a single
 * client's end), so an orderly exit leaves every export flushed.  Not
 * when the client ended it (DISC) while the server stops: whether a
 * flush ran must not depend on which came first.  Not otherwise: a
 * file's writes are the kernel's once written, and an fdatasync at
 * every disconnect made the next client's writes wait behind the whole
 * write-back (nbdcopy into a file just written at random: 0.6x nbdkit,
 * which does not flush).  The client did not ask for it and must not
 * wait for it: libnbd waits for the close after DISC. */
void
conn_finish(struct nbd_conn *c)
{
  int r;

  wire_shutdown(&c->w, SHUT_RDWR);
  if (c->top && c->top->can_flush && c->top->can_write &&
      __atomic_load_n(&c->wrote, __ATOMIC_RELAXED) &&
      ((nbd_server_stopping() && !c->disc) || nbd_modes.single ||
       conn_keeps_writes(c->top)) &&
      (r = next_flush(c->top, 0)) < 0) {
    nbd_error("%s: export \"%s\": flush at close failed: %s: writes "
              "acknowledged to this client may not be durable", c->peer,
              c->exp->name, strerror(-r));
    stop_note_unwritten();
  }
  /* Only clients that got an export: probes and --list are debug noise. */
  if (c->exp) {
    char who[128];
    uint64_t ms = (nbd_now_ns() - c->started_ns) / 1000000;
    conn_describe(c, who, sizeof who);
    nbd_info("disconnect: %s, export \"%s\": read %" PRIu64 " bytes, "
             "wrote %" PRIu64 " bytes, %" PRIu64 " requests, %" PRIu64
             ".%03" PRIu64 "s", who, c->exp->name, c->bytes_read,
             c->bytes_written, c->nrequests, ms / 1000, ms % 1000);
  }
  metrics_conn_close(c);
  handshake_release(c);
  nbd_debug("%s: connection closed", c->peer);
}
