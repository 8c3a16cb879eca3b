/* nbdstack sockets: the listening sockets, bound from the config (TCP v4
 * and v6, Unix) or inherited through systemd socket activation
 * (activation.c).  It does not accept clients (server.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "layer.h"
#include "modes.h"
#include "sockets.h"

/* musl's SOMAXCONN is 128: a burst of connects beyond it fails at once
 * for clients that connect without blocking (libnbd); the kernel caps
 * this at net.core.somaxconn. */
#define SOCKETS_BACKLOG 4096

static struct nbd_listener sockets_v[SOCKETS_MAX];
static size_t sockets_n;
/* The listen address being bound, recorded by sockets_add. */
static char sockets_spec[300];

size_t
sockets_count(void)
{
  return sockets_n;
}

const struct nbd_listener *
sockets_get(size_t i)
{
  return &sockets_v[i];
}

/* Inherited sockets, if systemd passed any: their number, or -1. */
static int
sockets_activation(void)
{
  int fds[SOCKETS_MAX], n, i;
  char desc[32];

  n = activation_fds(fds, SOCKETS_MAX);
  for (i = 0; i < n; i++) {
    snprintf(desc, sizeof desc, "inherited fd %d", fds[i]);
    if (sockets_add(fds[i], NULL, desc) == -1)
      return -1;
  }
  return n;
}

int
sockets_add(int fd, const char *path, const char *desc)
{
  struct nbd_listener *l;

  if (sockets_n == SOCKETS_MAX) {
    nbd_error("too many listening sockets (max %d)", SOCKETS_MAX);
    close(fd);
    return -1;
  }
  l = &sockets_v[sockets_n++];
  l->fd = fd;
  l->unlink_path = path ? strdup(path) : NULL;
  snprintf(l->desc, sizeof l->desc, "%s", desc);
  snprintf(l->spec, sizeof l->spec, "%s", sockets_spec);
  return 0;
}

/* Whether something accepts connections on the Unix socket at sun: a
 * stale socket (nobody listening) refuses them. */
static int
sockets_unix_live(const struct sockaddr_un *sun)
{
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int r;

  if (fd == -1)
    return 0;
  r = connect(fd, (const struct sockaddr *)sun, sizeof *sun);
  /* EAGAIN: a live listener with a full backlog. */
  r = r == 0 || errno == EAGAIN || errno == EINPROGRESS;
  close(fd);
  return r;
}

static int
sockets_listen_unix(const struct nbd_listen *ln)
{
  struct sockaddr_un sun;
  struct stat st;
  int fd;

  memset(&sun, 0, sizeof sun);
  sun.sun_family = AF_UNIX;
  if (strlen(ln->path) >= sizeof sun.sun_path) {
    nbd_error("unix socket path too long (max %zu bytes): %s",
              sizeof sun.sun_path - 1, ln->path);
    return -1;
  }
  strcpy(sun.sun_path, ln->path);
  /* A stale socket from an earlier run would make bind fail; remove only
   * a socket, never a regular file, and never one a live server still
   * answers on (it would keep running, unreachable). */
  if (lstat(ln->path, &st) == 0 && S_ISSOCK(st.st_mode)) {
    if (sockets_unix_live(&sun)) {
      nbd_error("cannot listen on unix:%s: another server is listening "
                "there (it accepted a connection); stop it or choose "
                "another path", ln->path);
      return -1;
    }
    unlink(ln->path);
  }
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1 || bind(fd, (struct sockaddr *)&sun, sizeof sun) == -1 ||
      listen(fd, SOCKETS_BACKLOG) == -1) {
    nbd_error("cannot listen on unix:%s: %s", ln->path, strerror(errno));
    if (fd != -1)
      close(fd);
    return -1;
  }
  return sockets_add(fd, ln->path, ln->path);
}

/* Binds every address host resolves to; returns how many, or -1 (errno
 * set) if it does not resolve or one of them cannot be bound. */
static int
sockets_listen_tcp_host(const char *host, const char *port, int quiet)
{
  struct addrinfo hints, *res, *a;
  char desc[128], addr[INET6_ADDRSTRLEN];
  int r, fd, one = 1, bound = 0;

  memset(&hints, 0, sizeof hints);
  hints.ai_family = nbd_modes.family ? nbd_modes.family : AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  r = getaddrinfo(host, port, &hints, &res);
  /* "nbd" is IANA's 10809, also where no /etc/services names it (an
   * empty container or chroot holds nothing but the binary). */
  if ((r == EAI_SERVICE || r == EAI_NONAME) && strcmp(port, "nbd") == 0) {
    if (!quiet)
      nbd_info("service \"nbd\" is not in /etc/services here: using port "
               "10809");
    port = "10809";
    r = getaddrinfo(host, port, &hints, &res);
  }
  if (r != 0) {
    if (!quiet)
      nbd_error("cannot resolve tcp:%s:%s: %s", host ? host : "*", port,
                gai_strerror(r));
    return -1;
  }
  for (a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd == -1) {
      /* An address family this kernel lacks (no IPv6 at all) is the one
       * failure that is not fatal. */
      if (errno == EAFNOSUPPORT) {
        nbd_info("tcp:%s:%s: skipping an address of a family this kernel "
                 "does not support", host ? host : "*", port);
        continue;
      }
      if (!quiet)
        nbd_error("cannot listen on tcp:%s:%s: socket: %s",
                  host ? host : "*", port, strerror(errno));
      freeaddrinfo(res);
      return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Bind v4 and v6 separately so both can listen on one port. */
    if (a->ai_family == AF_INET6)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    getnameinfo(a->ai_addr, a->ai_addrlen, addr, sizeof addr, NULL, 0,
                NI_NUMERICHOST);
    snprintf(desc, sizeof desc, a->ai_family == AF_INET6 ? "[%s]:%s" :
             "%s:%s", addr, port);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == -1 ||
        listen(fd, SOCKETS_BACKLOG) == -1) {
      /* Serving on some of the addresses asked for while another process
       * answers on the others would split the clients between two
       * servers: every address binds, or none. */
      int e = errno;
      if (!quiet)
        nbd_error("cannot listen on tcp %s: %s", desc, strerror(e));
      close(fd);
      freeaddrinfo(res);
      errno = e;
      return -1;
    }
    if (sockets_add(fd, NULL, desc) == 0)
      bound++;
  }
  freeaddrinfo(res);
  return bound;
}

static int
sockets_listen_tcp(const struct nbd_listen *ln)
{
  const char *host = ln->host && *ln->host ? ln->host : NULL;
  const char *port = ln->port && *ln->port ? ln->port : "10809";
  int n;

  /* "localhost" means both loopbacks, whatever /etc/hosts lists; a host
   * without IPv6 just gets 127.0.0.1. */
  if (host && strcmp(host, "localhost") == 0 && nbd_modes.family)
    n = sockets_listen_tcp_host(nbd_modes.family == AF_INET ? "127.0.0.1"
                                : "::1", port, 0);
  else if (host && strcmp(host, "localhost") == 0) {
    n = sockets_listen_tcp_host("127.0.0.1", port, 0);
    if (n > 0 && sockets_listen_tcp_host("::1", port, 1) < 0) {
      if (errno != EADDRNOTAVAIL && errno != EAFNOSUPPORT) {
        nbd_error("cannot listen on tcp [::1]:%s: %s", port,
                  strerror(errno));
        return -1;
      }
      nbd_info("tcp:localhost:%s: no IPv6 loopback here, 127.0.0.1 only",
               port);
    }
  }
  else
    n = sockets_listen_tcp_host(host, port, 0);
  return n > 0 ? 0 : -1;
}

/* "unix:PATH" or "tcp:HOST:PORT": what reload compares. */
static void
sockets_spec_of(const struct nbd_listen *ln, char *buf, size_t len)
{
  if (ln->kind == NBD_LISTEN_UNIX)
    snprintf(buf, len, "unix:%s", ln->path);
  else
    snprintf(buf, len, "tcp:%s:%s", ln->host ? ln->host : "",
             ln->port && *ln->port ? ln->port : "10809");
}

static int
sockets_listen(const struct nbd_listen *ln)
{
  int r;

  sockets_spec_of(ln, sockets_spec, sizeof sockets_spec);
  r = ln->kind == NBD_LISTEN_UNIX ? sockets_listen_unix(ln)
                                  : sockets_listen_tcp(ln);
  sockets_spec[0] = '\0';
  return r;
}

/* Closes listener i and moves the last one into its place. */
static void
sockets_close_one(size_t i)
{
  struct nbd_listener *l = &sockets_v[i];

  close(l->fd);
  if (l->unlink_path && unlink(l->unlink_path) == -1)
    nbd_warn("cannot remove %s: %s", l->unlink_path, strerror(errno));
  free(l->unlink_path);
  if (i != sockets_n - 1)
    *l = sockets_v[sockets_n - 1];
  sockets_n--;
}

int
sockets_bind_apart(const struct nbd_listen *ln, struct nbd_listener *out,
                   size_t max)
{
  size_t old_n = sockets_n, n;
  int r = sockets_listen(ln);

  n = sockets_n - old_n;
  if (r == 0 && n > max) {
    nbd_error("%s: more than %zu sockets", sockets_v[old_n].desc, max);
    r = -1;
  }
  if (r == 0)
    memcpy(out, sockets_v + old_n, n * sizeof *out);
  else
    while (sockets_n > old_n)
      sockets_close_one(sockets_n - 1);
  sockets_n = old_n;
  return r == 0 ? (int)n : -1;
}

int
sockets_update(const struct nbd_config *cfg)
{
  size_t i, j, old_n = sockets_n;
  char spec[300];
  int found;

  for (i = 0; i < old_n; i++)
    if (sockets_v[i].spec[0] == '\0') {
      nbd_info("reload: listening on sockets from systemd: listen "
               "addresses are not changed");
      return 0;
    }
  for (j = 0; j < cfg->nlistens; j++) {
    sockets_spec_of(&cfg->listens[j], spec, sizeof spec);
    for (found = 0, i = 0; i < old_n && !found; i++)
      found = strcmp(sockets_v[i].spec, spec) == 0;
    if (found)
      continue;
    if (sockets_listen(&cfg->listens[j]) == -1) {
      while (sockets_n > old_n)
        sockets_close_one(sockets_n - 1);
      return -1;
    }
  }
  for (i = old_n; i < sockets_n; i++) {
    fcntl(sockets_v[i].fd, F_SETFL,
          fcntl(sockets_v[i].fd, F_GETFL) | O_NONBLOCK);
    nbd_info("reload: listening on %s", sockets_v[i].desc);
  }
  for (i = 0; i < sockets_n;) {
    for (found = 0, j = 0; j < cfg->nlistens && !found; j++) {
      sockets_spec_of(&cfg->listens[j], spec, sizeof spec);
      found = strcmp(sockets_v[i].spec, spec) == 0;
    }
    if (found) {
      i++;
      continue;
    }
    nbd_info("reload: no longer listening on %s", sockets_v[i].desc);
    sockets_close_one(i);
  }
  return 0;
}

int
sockets_open(const struct nbd_config *cfg)
{
  size_t i;
  int n = sockets_activation();

  if (n < 0)
    return -1;
  if (n > 0) {
    nbd_info("using %d socket(s) from systemd socket activation", n);
    return 0;
  }
  for (i = 0; i < cfg->nlistens; i++)
    if (sockets_listen(&cfg->listens[i]) == -1)
      return -1;
  if (sockets_n == 0) {
    nbd_error("nothing to listen on");
    return -1;
  }
  return 0;
}

void
sockets_close(void)
{
  size_t i;

  for (i = 0; i < sockets_n; i++) {
    close(sockets_v[i].fd);
    if (sockets_v[i].unlink_path) {
      unlink(sockets_v[i].unlink_path);
      free(sockets_v[i].unlink_path);
    }
  }
  sockets_n = 0;
}

