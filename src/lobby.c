/* nbdstack lobby: accepted clients that have been greeted but have not
 * sent a byte yet.  They hold no thread and no slot of max-connections,
 * only a socket, so clients that connect and stay silent cannot lock
 * the server out; the accept loop polls them, and one that speaks gets
 * its connection thread (server.c).  The lobby is bounded (max-handshakes
 * in all, max-handshakes-per-source from one source): a newcomer takes
 * the place of the oldest silent client from its own source, or of the
 * oldest of all when its source has none there.  A client still silent at its
 * handshake deadline is closed.  Only the accept loop's thread uses it.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lobby.h"
#include "metrics.h"

/* Oldest first; removal from the middle shifts (the lobby is small and
 * only the accept loop touches it). */
static struct nbd_conn **lobby_v;
static size_t lobby_n, lobby_cap;

size_t
lobby_count(void)
{
  return lobby_n;
}

static void
lobby_drop(size_t i, const char *why)
{
  struct nbd_conn *c = lobby_v[i];

  nbd_debug("%s: %s", c->peer, why);
  memmove(lobby_v + i, lobby_v + i + 1,
          (lobby_n - i - 1) * sizeof(struct nbd_conn *));
  lobby_n--;
  close(c->w.fd);
  conn_free(c);
}

void
lobby_add(struct nbd_conn *c, unsigned max, unsigned per_source)
{
  size_t i, oldest = lobby_n, same = 0;

  if (*c->source)
    for (i = 0; i < lobby_n; i++)
      if (strcmp(lobby_v[i]->source, c->source) == 0 && same++ == 0)
        oldest = i;
  /* A full lobby makes room at the newcomer's own source first: a storm
   * of silent clients from one place then only displaces itself, and a
   * client from elsewhere keeps its place until it speaks. */
  if ((same > 0 && (same >= per_source || lobby_n >= max)) ||
      (lobby_n >= max && lobby_n > 0))
    metrics_refused(METRICS_REFUSED_MAX_HANDSHAKES);
  if (same > 0 && (same >= per_source || lobby_n >= max))
    lobby_drop(oldest, "silent: closed for a newer client from its source");
  else if (lobby_n >= max && lobby_n > 0)
    lobby_drop(0, "silent: closed for a newer client");
  if (lobby_n == lobby_cap) {
    size_t cap = lobby_cap ? 2 * lobby_cap : 64;
    struct nbd_conn **v = realloc(lobby_v,
                                  cap * sizeof(struct nbd_conn *));
    if (v == NULL) {
      close(c->w.fd);
      conn_free(c);
      return;
    }
    lobby_v = v;
    lobby_cap = cap;
  }
  lobby_v[lobby_n++] = c;
}

size_t
lobby_pollfds(struct pollfd *pfd, size_t n)
{
  size_t i;

  for (i = 0; i < lobby_n && i < n; i++) {
    pfd[i].fd = lobby_v[i]->w.fd;
    pfd[i].events = POLLIN;
    pfd[i].revents = 0;
  }
  return i;
}

struct nbd_conn *
lobby_take_ready(const struct pollfd *pfd, size_t n, size_t *pos)
{
  size_t i, j;
  struct nbd_conn *c;

  /* Entries may have moved since the poll: match by fd. */
  for (i = *pos; i < n; i++) {
    *pos = i + 1;
    if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
      continue;
    for (j = 0; j < lobby_n; j++)
      if (lobby_v[j]->w.fd == pfd[i].fd) {
        c = lobby_v[j];
        memmove(lobby_v + j, lobby_v + j + 1,
                (lobby_n - j - 1) * sizeof(struct nbd_conn *));
        lobby_n--;
        return c;
      }
  }
  return NULL;
}

void
lobby_expire(uint64_t now)
{
  size_t i = 0;

  while (i < lobby_n)
    if (lobby_v[i]->w.deadline && now >= lobby_v[i]->w.deadline) {
      nbd_info("%s: handshake timed out", lobby_v[i]->peer);
      metrics_handshake_timeout();
      lobby_drop(i, "silent past the handshake timeout");
    } else
      i++;
}

void
lobby_clear(void)
{
  while (lobby_n > 0)
    lobby_drop(lobby_n - 1, "server stopping");
  free(lobby_v);
  lobby_v = NULL;
  lobby_cap = 0;
}
