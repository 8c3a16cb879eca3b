/* nbdstack metrics endpoint: a small HTTP server on its own thread that
 * answers GET /metrics with metrics_render's text (docs/metrics.md).
 *
 * Deliberately small: one scrape at a time, on one thread that never
 * touches a connection or an export; a request of at most HTTPREQ_MAX
 * bytes parsed by httpreq.c; every response closes the connection (no
 * keep-alive); the whole exchange, reading and writing, bounded by
 * METRICS_HTTP_TIMEOUT, so a client that sends or reads slowly holds the
 * endpoint that long at most, and never the NBD clients.
 *
 * The socket is bound like a listen address (listen.c parses it,
 * sockets.c binds it) but kept apart from the NBD listeners.  It does
 * not do TLS, authentication, HEAD, or compression.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "httpreq.h"
#include "log.h"
#include "metrics.h"
#include "sockets.h"
#include "wire.h"

#define METRICS_HTTP_TIMEOUT_NS (UINT64_C(5) * 1000000000)
#define METRICS_HTTP_MAXFDS 8   /* tcp:localhost is two */

static struct nbd_listener metrics_l[METRICS_HTTP_MAXFDS];
static size_t metrics_nl;
static int metrics_wake[2] = { -1, -1 };
static pthread_t metrics_tid;
static int metrics_running;
static char metrics_req[HTTPREQ_MAX];   /* the metrics thread's */

/* Waits for fd until the deadline; 1 ready, 0 timed out, -1 stopping. */
static int
metrics_wait(int fd, short events, uint64_t deadline)
{
  struct pollfd p[2] = { { fd, events, 0 }, { metrics_wake[0], POLLIN, 0 } };
  uint64_t now = nbd_now_ns();
  int r;

  if (now >= deadline)
    return 0;
  r = poll(p, 2, (int)((deadline - now) / 1000000) + 1);
  if (r > 0 && p[1].revents)
    return -1;
  return r > 0 ? 1 : r == 0 ? 0 : errno == EINTR ? 1 : -1;
}

/* Sends all of buf by the deadline; 0 or -1. */
static int
metrics_send(int fd, const char *buf, size_t len, uint64_t deadline)
{
  ssize_t n;

  while (len > 0) {
    n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n > 0) {
      buf += n;
      len -= (size_t)n;
    } else if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
      if (metrics_wait(fd, POLLOUT, deadline) != 1)
        return -1;
    } else
      return -1;
  }
  return 0;
}

static void
metrics_respond(int fd, int code, const char *body, size_t len,
                uint64_t deadline)
{
  const char *reason = code == 200 ? "OK" : code == 400 ? "Bad Request"
    : code == 404 ? "Not Found" : code == 405 ? "Method Not Allowed"
    : code == 408 ? "Request Timeout" : "Internal Server Error";
  char head[256];
  int n;

  if (body == NULL) {
    body = reason;
    len = strlen(reason);
  }
  n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
               "Content-Length: %zu\r\n%sConnection: close\r\n\r\n", code,
               reason, code == 200 ? "text/plain; version=0.0.4; "
               "charset=utf-8" : "text/plain", len,
               code == 405 ? "Allow: GET\r\n" : "");
  metrics_note_response(code);
  if (metrics_send(fd, head, (size_t)n, deadline) == 0)
    metrics_send(fd, body, len, deadline);
}

/* One client, from accept to close. */
static void
metrics_serve(int fd)
{
  uint64_t deadline = nbd_now_ns() + METRICS_HTTP_TIMEOUT_NS;
  enum httpreq_result v = HTTPREQ_MORE;
  size_t len = 0;
  ssize_t n;
  int w;

  while (v == HTTPREQ_MORE) {
    n = recv(fd, metrics_req + len, sizeof metrics_req - len, 0);
    if (n == 0)
      return;                   /* gone before asking */
    if (n == -1) {
      if (errno != EAGAIN && errno != EINTR)
        return;
      if ((w = metrics_wait(fd, POLLIN, deadline)) == 0)
        metrics_respond(fd, 408, NULL, 0, nbd_now_ns() + 1000000000);
      if (w != 1)
        return;
      continue;
    }
    len += (size_t)n;
    v = httpreq_parse(metrics_req, len);
  }
  if (v == HTTPREQ_METRICS) {
    char *body = metrics_render(&len);
    metrics_respond(fd, body ? 200 : 500, body, body ? len : 0, deadline);
    free(body);
  } else
    metrics_respond(fd, v == HTTPREQ_NOT_FOUND ? 404 : v == HTTPREQ_METHOD
                    ? 405 : 400, NULL, 0, deadline);
  shutdown(fd, SHUT_WR);
}

static void *
metrics_thread(void *arg)
{
  struct pollfd p[METRICS_HTTP_MAXFDS + 1];
  size_t i;
  int fd;

  (void)arg;
  for (;;) {
    for (i = 0; i < metrics_nl; i++) {
      p[i].fd = metrics_l[i].fd;
      p[i].events = POLLIN;
    }
    p[i].fd = metrics_wake[0];
    p[i].events = POLLIN;
    if (poll(p, metrics_nl + 1, -1) == -1) {
      if (errno == EINTR)
        continue;
      nbd_error("metrics: poll: %s", strerror(errno));
      return NULL;
    }
    if (p[metrics_nl].revents)
      return NULL;
    for (i = 0; i < metrics_nl; i++) {
      if (!(p[i].revents & POLLIN))
        continue;
      fd = accept4(metrics_l[i].fd, NULL, NULL,
                   SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd == -1) {
        if (errno == EMFILE || errno == ENFILE)
          usleep(100000);       /* NBD clients hold the fds: don't spin */
        continue;
      }
      metrics_serve(fd);
      close(fd);
    }
  }
}

int
metrics_start_server(const struct nbd_config *cfg)
{
  struct nbd_listen ln;
  char err[256];
  size_t i;
  int n;

  metrics_configure(cfg);
  if (cfg->metrics == NULL)
    return 0;
  if (listen_parse(cfg->metrics, &ln, err, sizeof err) == -1) {
    nbd_error("metrics: %s", err);      /* checked when set: no memory */
    return -1;
  }
  n = sockets_bind_apart(&ln, metrics_l, METRICS_HTTP_MAXFDS);
  listen_clear(&ln);
  if (n <= 0) {
    nbd_error("metrics: cannot serve on %s (see above)", cfg->metrics);
    return -1;
  }
  metrics_nl = (size_t)n;
  for (i = 0; i < metrics_nl; i++)
    fcntl(metrics_l[i].fd, F_SETFL,
          fcntl(metrics_l[i].fd, F_GETFL) | O_NONBLOCK);
  if (pipe2(metrics_wake, O_CLOEXEC | O_NONBLOCK) == -1 ||
      pthread_create(&metrics_tid, NULL, metrics_thread, NULL) != 0) {
    nbd_error("metrics: cannot start the endpoint's thread");
    metrics_stop_server();
    return -1;
  }
  metrics_running = 1;
  for (i = 0; i < metrics_nl; i++)
    nbd_info(metrics_l[i].unlink_path ? "metrics on unix:%s (GET /metrics)"
             : "metrics on http://%s/metrics", metrics_l[i].desc);
  return 0;
}

const char *
metrics_unix_path(void)
{
  size_t i;

  for (i = 0; i < metrics_nl; i++)
    if (metrics_l[i].unlink_path)
      return metrics_l[i].unlink_path;
  return NULL;
}

void
metrics_stop_server(void)
{
  size_t i;

  if (metrics_running) {
    if (write(metrics_wake[1], "x", 1) == -1) {
      /* A full pipe already wakes it. */
    }
    pthread_join(metrics_tid, NULL);
    metrics_running = 0;
  }
  for (i = 0; i < 2; i++)
    if (metrics_wake[i] != -1) {
      close(metrics_wake[i]);
      metrics_wake[i] = -1;
    }
  for (i = 0; i < metrics_nl; i++) {
    close(metrics_l[i].fd);
    if (metrics_l[i].unlink_path) {
      unlink(metrics_l[i].unlink_path);
      free(metrics_l[i].unlink_path);
    }
  }
  metrics_nl = 0;
}
