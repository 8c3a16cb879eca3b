/* nbdstack backend nbd: proxy to an upstream NBD server.
 *
 * Keys as nbdkit's nbd plugin: the upstream is one of uri= (nbd:// or
 * nbd+unix://), socket=, hostname= (with port=), or command= (with arg=,
 * repeated for each argument), which runs an NBD server with the socket
 * as its stdin and stdout, as libnbd's nbd_connect_command does (nbdkit
 * -s, nbd-server -i).
 *
 * Each client connection opens its own upstream connection when its
 * context opens (and runs its own command=); shared=true opens one on the
 * first client and shares it, refcounted, until the last one leaves.
 * dynamic-export=true asks upstream for the name this client asked for.
 * retry=N retries a connection that is refused or not there for N
 * seconds, once a second.
 *
 * Every capability is the upstream's: its transmission flags, its size
 * and block sizes, base:allocation when negotiated, qemu:allocation-depth
 * when offered (else depth 1, as any backend).  Flags the upstream
 * did not negotiate are dropped from requests, and nothing is sent
 * upstream that the client did not cause (no probing, no flush at close).
 * The wire client is client.c.
 *
 * TLS to the upstream with nbdkit's keys (tls=, tls-certificates=,
 * tls-psk=, tls-username=, tls-verify=) or an nbds:// URI, through the
 * server's own TLS code (tls.c, client side).
 *
 * Not here (yet): vsock, socket-fd=.
 */
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "layer.h"
#include "protocol.h"
#include "client.h"
#include "tls.h"

struct nbd_conf {
  char *uri;
  char *socket;
  char *hostname;
  char *port;
  char *export;
  int dynamic_export;
  char *command;
  struct nbd_strlist arg;
  int shared;
  uint64_t retry;
  int tls;
  char *tls_certificates, *tls_psk, *tls_username;
  int tls_verify;
};

static const char *const nbd_tls_modes[] = { "off", "on", "require", NULL };
enum { NBD_TLS_MODE_OFF, NBD_TLS_MODE_ON, NBD_TLS_MODE_REQUIRE };

static const struct nbd_param nbd_params[] = {
  { "uri", NBD_PARAM_STRING, offsetof(struct nbd_conf, uri), NULL,
    "nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH", NULL, 0 },
  { "socket", NBD_PARAM_PATH, offsetof(struct nbd_conf, socket), NULL,
    "Unix socket of the upstream server", NULL, 0 },
  { "hostname", NBD_PARAM_STRING, offsetof(struct nbd_conf, hostname), NULL,
    "host of the upstream server (TCP)", NULL, 0 },
  { "port", NBD_PARAM_STRING, offsetof(struct nbd_conf, port), NULL,
    "TCP port or service name (default 10809)", NULL, 0 },
  { "export", NBD_PARAM_STRING, offsetof(struct nbd_conf, export), NULL,
    "export name to ask upstream for (default \"\")", NULL, 0 },
  { "dynamic-export", NBD_PARAM_BOOL,
    offsetof(struct nbd_conf, dynamic_export), "false",
    "ask upstream for the export name the client asked for", NULL, 0 },
  { "command", NBD_PARAM_STRING, offsetof(struct nbd_conf, command), NULL,
    "run this NBD server on the socket as stdin/stdout (nbdkit -s)", NULL, 0 },
  { "arg", NBD_PARAM_STRING_LIST, offsetof(struct nbd_conf, arg), NULL,
    "an argument for command (repeat for more, in order)", NULL, 0 },
  { "shared", NBD_PARAM_BOOL, offsetof(struct nbd_conf, shared), "false",
    "one upstream connection shared by all clients", NULL, 0 },
  { "retry", NBD_PARAM_UINT, offsetof(struct nbd_conf, retry), "0",
    "retry connecting for up to N seconds", NULL, 0 },
  { "tls", NBD_PARAM_ENUM, offsetof(struct nbd_conf, tls), NULL,
    "TLS to the upstream: off, on (plaintext if it has none) or require; "
    "default off, on when another tls key is given, require for nbds://",
    nbd_tls_modes, 0 },
  { "tls-certificates", NBD_PARAM_PATH,
    offsetof(struct nbd_conf, tls_certificates), NULL,
    "X.509: DIR with ca-cert.pem (and client-cert.pem, client-key.pem for "
    "a server that checks clients)", NULL, 0 },
  { "tls-psk", NBD_PARAM_PATH, offsetof(struct nbd_conf, tls_psk), NULL,
    "PSK: psktool's username:hexkey file", NULL, 0 },
  { "tls-username", NBD_PARAM_STRING,
    offsetof(struct nbd_conf, tls_username), NULL,
    "PSK identity (default: the user nbdstack runs as)", NULL, 0 },
  { "tls-verify", NBD_PARAM_BOOL, offsetof(struct nbd_conf, tls_verify),
    "true", "check the upstream's certificate against ca-cert.pem and its "
    "host name (false: no check, open to a man in the middle)", NULL, 0 },
  NBD_PARAM_END
};

enum nbd_mode { NBD_MODE_UNIX, NBD_MODE_TCP, NBD_MODE_COMMAND };

struct nbd_state {
  enum nbd_mode mode;
  char *path;                   /* unix */
  char *host, *port;            /* tcp */
  char *export;
  char **argv;                  /* command: its name, args, NULL */
  /* TLS (tls.c's client side); tls.client NULL = off.  From the keys, or
   * from an nbds:// URI (require; its tls-certificates=, tls-psk-file=
   * and user@ as libnbd reads them). */
  struct nbdc_tls tls;
  int uri_tls;                  /* the URI's scheme was nbds */
  char *uri_certificates, *uri_psk, *uri_username;
  char *username;
  /* shared=true: the connection (and its command's pid), the client
   * contexts open on it, the requests using it now; a connection found
   * dead is replaced by a new one (nbd_get) and retired: closed when the
   * last request still using it returns. */
  pthread_mutex_t lock;
  struct nbdc *conn;
  pid_t pid;
  unsigned refs;
  unsigned users;
  struct nbdc_info first;       /* what the first connection said */
  char *shared_export;
  struct nbd_retired *retired;
};

struct nbd_retired {
  struct nbdc *conn;
  pid_t pid;
  unsigned users;
  struct nbd_retired *next;
};

/* Per client connection. */
struct nbd_handle {
  struct nbdc *conn;            /* shared=true: the one it opened with */
  pid_t pid;                    /* command= child, 0 = none */
  struct nbdc_info info;        /* the capabilities it opened with */
};

/* ---- uri -------------------------------------------------------------- */

static int
nbd_hex(int c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* A malloc'd, %-decoded copy of [s, s+len); NULL on a bad escape. */
static char *
nbd_decode(const char *s, size_t len)
{
  char *out = malloc(len + 1), *o = out;
  size_t i;

  if (out == NULL)
    return NULL;
  for (i = 0; i < len; i++) {
    if (s[i] == '%') {
      int hi = i + 2 < len ? nbd_hex(s[i + 1]) : -1;
      int lo = i + 2 < len ? nbd_hex(s[i + 2]) : -1;
      if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
        free(out);
        return NULL;
      }
      *o++ = (char)(hi << 4 | lo);
      i += 2;
    } else
      *o++ = s[i];
  }
  *o = '\0';
  return out;
}

/* nbd://host[:port][/export] and nbd+unix:///[export]?socket=PATH (the
 * NBD URI spec, doc/uri.md), and the same with nbds (TLS required; user@,
 * tls-certificates= and tls-psk-file= as libnbd reads them); the vsock
 * schemes are not here. */
static int
nbd_parse_uri(struct nbd_state *st, const char *uri, char *err, size_t errlen)
{
  const char *p, *path, *q, *end, *at;

  if (strncmp(uri, "nbds", 4) == 0) {
    st->uri_tls = 1;
    uri++;                      /* "nbds://" is "nbd://" one on */
  }
  if (strncmp(uri, "nbd://", 6) == 0 || (st->uri_tls &&
                                         strncmp(uri, "bds://", 6) == 0)) {
    st->mode = NBD_MODE_TCP;
    p = uri + 6;
    /* user@ names the PSK identity (libnbd's tls-username). */
    path = p + strcspn(p, "/?#");
    if ((at = memchr(p, '@', (size_t)(path - p))) != NULL) {
      if ((st->uri_username = nbd_decode(p, (size_t)(at - p))) == NULL)
        goto bad;
      p = at + 1;
    }
    if (*p == '[') {            /* [IPv6]:port */
      const char *rb = memchr(p, ']', (size_t)(path - p));
      if (rb == NULL)
        goto bad;
      st->host = strndup(p + 1, (size_t)(rb - p - 1));
      if (rb[1] == ':')
        st->port = strndup(rb + 2, (size_t)(path - rb - 2));
    } else {
      const char *colon = memchr(p, ':', (size_t)(path - p));
      st->host = strndup(p, (size_t)((colon ? colon : path) - p));
      if (colon)
        st->port = strndup(colon + 1, (size_t)(path - colon - 1));
    }
    if (st->host == NULL || st->host[0] == '\0')
      goto bad;
  } else if (strncmp(uri, "nbd+unix://", 11) == 0 ||
             (st->uri_tls && strncmp(uri, "bds+unix://", 11) == 0)) {
    st->mode = NBD_MODE_UNIX;
    path = uri + 11;
    if ((at = strchr(path, '@')) != NULL && at < path + strcspn(path, "/?#")) {
      if ((st->uri_username = nbd_decode(path, (size_t)(at - path))) == NULL)
        goto bad;
      path = at + 1;
    }
    if (*path != '/' && *path != '?' && *path != '\0')
      goto bad;                 /* no host part for a Unix socket */
  } else {
    snprintf(err, errlen, "uri '%s': only nbd://, nbds://, nbd+unix:// and "
             "nbds+unix:// are supported", st->uri_tls ? uri - 1 : uri);
    return -1;
  }
  end = path + strcspn(path, "?#");
  if (*path == '/')
    path++;
  if ((st->export = nbd_decode(path, (size_t)(end - path))) == NULL)
    goto bad;
  for (q = *end == '?' ? end + 1 : NULL; q && *q && *q != '#';) {
    size_t n = strcspn(q, "&#");
    if (strncmp(q, "socket=", 7) == 0 && st->mode == NBD_MODE_UNIX) {
      free(st->path);
      if ((st->path = nbd_decode(q + 7, n - 7)) == NULL)
        goto bad;
    } else if (strncmp(q, "tls-certificates=", 17) == 0) {
      free(st->uri_certificates);
      if ((st->uri_certificates = nbd_decode(q + 17, n - 17)) == NULL)
        goto bad;
    } else if (strncmp(q, "tls-psk-file=", 13) == 0) {
      free(st->uri_psk);
      if ((st->uri_psk = nbd_decode(q + 13, n - 13)) == NULL)
        goto bad;
    }
    q += n;
    if (*q == '&')
      q++;
  }
  if (st->mode == NBD_MODE_UNIX && (st->path == NULL || !st->path[0])) {
    snprintf(err, errlen, "uri '%s': nbd+unix:// needs ?socket=PATH", uri);
    return -1;
  }
  return 0;
bad:
  snprintf(err, errlen, "uri '%s' is not a valid NBD URI",
           st->uri_tls ? uri - 1 : uri);
  return -1;
}

/* ---- connecting ------------------------------------------------------- */

/* A connected fd, or -errno. */
static int
nbd_connect_unix(const char *path)
{
  struct sockaddr_un sun;
  int fd, e;

  memset(&sun, 0, sizeof sun);
  sun.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof sun.sun_path)
    return -ENAMETOOLONG;
  memcpy(sun.sun_path, path, strlen(path));
  if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
    return -errno;
  if (connect(fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
    e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

static int
nbd_connect_tcp(const char *host, const char *port)
{
  struct addrinfo hints, *res, *ai;
  int fd = -1, e = ECONNREFUSED, one = 1, r;

  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if ((r = getaddrinfo(host, port, &hints, &res)) != 0) {
    nbd_error("nbd: %s:%s: %s", host, port, gai_strerror(r));
    return r == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
  }
  for (ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                ai->ai_protocol);
    if (fd == -1) {
      e = errno;
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
      break;
    e = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd == -1)
    return -e;
  /* Requests are small writes that must not wait for the next one. */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

/* Runs the command with one end of a socketpair as its stdin and stdout
 * (libnbd's nbd_connect_command); fd or -errno, *pid the child. */
static int
nbd_connect_command(struct nbd_state *st, pid_t *pid)
{
  int sv[2], e;
  sigset_t all;

  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
    return -errno;
  *pid = fork();
  if (*pid == -1) {
    e = errno;
    close(sv[0]);
    close(sv[1]);
    return -e;
  }
  if (*pid == 0) {
    /* The child of a threaded parent: async-signal-safe calls only.  It
     * gets a default SIGPIPE and an empty mask, as a command expects. */
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    signal(SIGPIPE, SIG_DFL);
    if (dup2(sv[1], 0) == -1 || dup2(sv[1], 1) == -1)
      _exit(126);
    execvp(st->argv[0], st->argv);
    _exit(127);
  }
  close(sv[1]);
  return sv[0];
}

static void
nbd_reap(pid_t pid)
{
  if (pid <= 0)
    return;
  kill(pid, SIGTERM);
  while (waitpid(pid, NULL, 0) == -1 && errno == EINTR)
    ;
}

/* A socket to upstream (retrying for conf->retry seconds), or -errno,
 * logged. */
static int
nbd_connect_fd(const struct nbd_layer *layer, pid_t *pid)
{
  const struct nbd_conf *conf = layer->conf;
  struct nbd_state *st = layer->state;
  uint64_t tries = 0;
  int fd;

  *pid = 0;
  for (;;) {
    switch (st->mode) {
    case NBD_MODE_UNIX: fd = nbd_connect_unix(st->path); break;
    case NBD_MODE_TCP: fd = nbd_connect_tcp(st->host, st->port); break;
    default: fd = nbd_connect_command(st, pid); break;
    }
    if (fd >= 0 || tries++ >= conf->retry)
      break;
    if (nbd_sleep(UINT64_C(1000000000)) < 0)
      break;
  }
  if (fd < 0)
    nbd_error("nbd: cannot connect to upstream: %s", strerror(-fd));
  return fd;
}

/* Connects (as nbd_connect_fd) and does the handshake. */
static struct nbdc *
nbd_connect(const struct nbd_layer *layer, const char *export, pid_t *pid)
{
  struct nbd_state *st = layer->state;
  char err[256];
  struct nbdc *c;
  int fd = nbd_connect_fd(layer, pid);

  if (fd < 0)
    return NULL;
  if ((c = nbdc_open(fd, export, &st->tls, err, sizeof err)) == NULL) {
    nbd_error("nbd: upstream handshake failed: %s", err);
    nbd_reap(*pid);
    *pid = 0;
  }
  return c;
}

/* ---- lifecycle -------------------------------------------------------- */

static int
nbd_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  const struct nbd_conf *conf = self->layer->conf;
  struct nbd_state *st = self->layer->state;
  const struct nbd_conn_info *info = nbd_conn_info(self);
  const char *export = st->export;
  struct nbd_handle *h = calloc(1, sizeof *h);

  if (h == NULL)
    return -ENOMEM;
  if (conf->dynamic_export && info && info->export_name)
    export = info->export_name;
  if (conf->shared) {
    pthread_mutex_lock(&st->lock);
    if (st->refs == 0) {
      st->conn = nbd_connect(self->layer, export, &st->pid);
      if (st->conn) {
        st->first = *nbdc_info(st->conn);
        free(st->shared_export);
        st->shared_export = strdup(export);
      }
    }
    if (st->conn)
      st->refs++;
    h->conn = st->conn;
    pthread_mutex_unlock(&st->lock);
  } else
    h->conn = nbd_connect(self->layer, export, &h->pid);
  if (h->conn == NULL) {
    free(h);
    return -EIO;
  }
  h->info = conf->shared ? st->first : *nbdc_info(h->conn);
  self->handle = h;
  return 0;
}

static void
nbd_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct nbd_conf *conf = self->layer->conf;
  struct nbd_state *st = self->layer->state;
  struct nbd_handle *h = self->handle;

  if (h == NULL)
    return;
  if (conf->shared) {
    pthread_mutex_lock(&st->lock);
    if (--st->refs == 0) {
      /* No request runs: every context on it is closed. */
      nbdc_close(st->conn);
      nbd_reap(st->pid);
      st->conn = NULL;
      st->pid = 0;
    }
    pthread_mutex_unlock(&st->lock);
  } else {
    nbdc_close(h->conn);
    nbd_reap(h->pid);
  }
  free(h);
  self->handle = NULL;
}

/* ---- datapath --------------------------------------------------------- */

/* shared=true, under st->lock: the shared connection is dead; replace
 * it by a new one (retrying for retry= seconds, as at open) while
 * clients remain.  The new upstream must say what the first said (size,
 * flags, block sizes): the clients cached those.  The dead one is
 * retired, closed by the last request still using it. */
static void
nbd_reconnect(const struct nbd_layer *layer, struct nbd_state *st)
{
  struct nbd_retired *r = calloc(1, sizeof *r);
  const struct nbdc_info *i;
  struct nbdc *c;
  pid_t pid;

  if (r == NULL)
    return;
  nbd_info("nbd: the shared upstream connection died: reconnecting "
           "(%u client%s)", st->refs, st->refs == 1 ? "" : "s");
  c = nbd_connect(layer, st->shared_export ? st->shared_export : st->export,
                  &pid);
  if (c == NULL) {
    free(r);
    return;                     /* the next request tries again */
  }
  i = nbdc_info(c);
  if (i->size != st->first.size || i->tflags != st->first.tflags ||
      i->structured != st->first.structured ||
      i->base_allocation != st->first.base_allocation ||
      i->allocation_depth != st->first.allocation_depth ||
      i->extended != st->first.extended ||
      i->min_block != st->first.min_block ||
      i->max_block != st->first.max_block) {
    nbd_error("nbd: the reconnected upstream differs (size %llu, flags "
              "0x%x; was %llu, 0x%x): not used",
              (unsigned long long)i->size, i->tflags,
              (unsigned long long)st->first.size, st->first.tflags);
    nbdc_close(c);
    nbd_reap(pid);
    free(r);
    return;
  }
  r->conn = st->conn;
  r->pid = st->pid;
  r->users = st->users;
  r->next = st->retired;
  st->retired = r;
  st->conn = c;
  st->pid = pid;
  st->users = 0;
  nbd_info("nbd: reconnected to the shared upstream");
}

/* The upstream connection for one request, or NULL (dead, and no new
 * one could be made): a handle's own, or the shared one, counted in
 * use until nbd_put. */
static struct nbdc *
nbd_get(const struct nbd_ctx *self)
{
  const struct nbd_conf *conf = self->layer->conf;
  struct nbd_state *st = self->layer->state;
  struct nbdc *c;

  if (!conf->shared)
    return ((struct nbd_handle *)self->handle)->conn;
  pthread_mutex_lock(&st->lock);
  if (nbdc_dead(st->conn))
    nbd_reconnect(self->layer, st);
  c = st->conn;
  st->users++;
  pthread_mutex_unlock(&st->lock);
  return c;
}

static void
nbd_put(const struct nbd_ctx *self, struct nbdc *c)
{
  const struct nbd_conf *conf = self->layer->conf;
  struct nbd_state *st = self->layer->state;
  struct nbd_retired **pp, *r = NULL;

  if (!conf->shared)
    return;
  pthread_mutex_lock(&st->lock);
  if (c == st->conn)
    st->users--;
  else
    for (pp = &st->retired; *pp; pp = &(*pp)->next)
      if ((*pp)->conn == c) {
        if (--(*pp)->users == 0) {
          r = *pp;
          *pp = r->next;
        }
        break;
      }
  pthread_mutex_unlock(&st->lock);
  if (r) {
    nbdc_close(r->conn);
    nbd_reap(r->pid);
    free(r);
  }
}

/* One request on the upstream connection nbd_get gives (a dead one
 * answers -EIO). */
#define NBD_RETURN_REQUEST(self, call)                                       \
  do {                                                                \
    struct nbdc *c_ = nbd_get(self);                                  \
    int r_ = (call);                                                  \
    nbd_put(self, c_);                                                \
    return r_;                                                        \
  } while (0)

static const struct nbdc_info *
nbd_info_of(const struct nbd_ctx *self)
{
  return &((struct nbd_handle *)self->handle)->info;
}

static uint16_t
nbd_tflags(const struct nbd_ctx *self)
{
  return nbd_info_of(self)->tflags;
}

/* FUA only to an upstream that negotiated it. */
static uint32_t
nbd_fua(const struct nbd_ctx *self, uint32_t flags)
{
  return nbd_tflags(self) & NBD_FLAG_SEND_FUA ? flags & NBD_CMD_FLAG_FUA : 0;
}

static int
nbd_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
          uint32_t count, uint64_t offset, uint32_t flags)
{
  const struct nbdc_info *i = nbd_info_of(self);
  uint32_t f = i->structured && (i->tflags & NBD_FLAG_SEND_DF)
               ? flags & NBD_CMD_FLAG_DF : 0;

  NBD_RETURN_REQUEST(self, nbdc_pread(c_, buf, count, offset, f));
}

static int
nbd_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
           uint32_t count, uint64_t offset, uint32_t flags)
{
  NBD_RETURN_REQUEST(self, nbdc_pwrite(c_, buf, count, offset,
                     nbd_fua(self, flags)));
}

/* Reads and writes that complete later (layer.h, nbd_async): sent from
 * the calling thread, answered from the thread that reads the upstream's
 * replies, so a connection keeps many in flight with no thread waiting
 * on each.  nbd_put when done, before the engine hears of it. */
static void
nbd_async_done(void *arg, int err)
{
  struct nbd_async *a = arg;
  const struct nbd_ctx *self = a->layer_ctx;

  nbd_put(self, a->layer_data);
  a->done(a, err);
}

static int
nbd_submit(struct nbd_ctx *self, struct nbd_ctx *next, struct nbd_async *a)
{
  const struct nbdc_info *i = nbd_info_of(self);
  struct nbdc *c = nbd_get(self);
  uint32_t f;
  int r;

  if (a->op == NBD_ASYNC_READ)
    f = i->structured && (i->tflags & NBD_FLAG_SEND_DF)
        ? a->flags & NBD_CMD_FLAG_DF : 0;
  else
    f = nbd_fua(self, a->flags);
  a->layer_ctx = self;
  a->layer_data = c;
  if (c == NULL)
    r = -EIO;
  else if (a->op == NBD_ASYNC_WRITE && a->src)
    /* Spliced from the client's socket to the upstream's; a shared
     * upstream is not held while a client's payload trickles in. */
    r = nbdc_submit_src(c, f, a->offset, a->count, a->src,
                        !((const struct nbd_conf *)self->layer->conf)->shared,
                        nbd_async_done, a);
  else
    r = nbdc_submit(c, a->op == NBD_ASYNC_READ ? NBD_CMD_READ
                                               : NBD_CMD_WRITE,
                    f, a->offset, a->count,
                    a->op == NBD_ASYNC_WRITE ? a->buf : NULL,
                    a->op == NBD_ASYNC_READ ? a->buf : NULL,
                    nbd_async_done, a);
  if (r < 0)
    nbd_put(self, c);
  return r;
}

static int
nbd_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  NBD_RETURN_REQUEST(self, nbdc_flush(c_, 0));
}

static int
nbd_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
         uint64_t offset, uint32_t flags)
{
  NBD_RETURN_REQUEST(self, nbdc_trim(c_, count, offset, nbd_fua(self, flags)));
}

static int
nbd_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
         uint64_t offset, uint32_t flags)
{
  uint32_t f = nbd_fua(self, flags) | (flags & NBD_CMD_FLAG_NO_HOLE);

  if (flags & NBD_CMD_FLAG_FAST_ZERO) {
    if (!(nbd_tflags(self) & NBD_FLAG_SEND_FAST_ZERO))
      return -ENOTSUP;
    f |= NBD_CMD_FLAG_FAST_ZERO;
  }
  NBD_RETURN_REQUEST(self, nbdc_zero(c_, count, offset, f));
}

static int
nbd_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  NBD_RETURN_REQUEST(self, nbdc_extents(c_, count, offset,
                      flags & NBD_CMD_FLAG_REQ_ONE, extents));
}

/* The upstream's qemu:allocation-depth when it offers it (qemu-nbd -A,
 * nbdstack); else depth 1 everywhere, as for any backend. */
static int
nbd_depth(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
          uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  NBD_RETURN_REQUEST(self, nbdc_depth(c_, count, offset,
                     flags & NBD_CMD_FLAG_REQ_ONE, extents));
}

static int
nbd_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
          uint64_t offset, uint32_t flags)
{
  NBD_RETURN_REQUEST(self, nbdc_cache(c_, count, offset, 0));
}

/* ---- capabilities: the upstream's ------------------------------------- */

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define nbd_reopen nbd_reopen_close_open

static int64_t
nbd_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return (int64_t)nbd_info_of(self)->size;
}

static int
nbd_block_size(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t *minimum,
               uint32_t *preferred, uint32_t *maximum)
{
  const struct nbdc_info *i = nbd_info_of(self);

  if (i->has_block_size) {
    *minimum = i->min_block;
    *preferred = i->pref_block;
    *maximum = i->max_block;
  }
  return 0;
}

#define NBD_FLAG_CAP(method, flag)                                    \
  static int                                                          \
  nbd_##method(struct nbd_ctx *self, struct nbd_ctx *next)            \
  {                                                                   \
    return (nbd_tflags(self) & (flag)) != 0;                          \
  }
NBD_FLAG_CAP(can_flush, NBD_FLAG_SEND_FLUSH)
NBD_FLAG_CAP(can_trim, NBD_FLAG_SEND_TRIM)
NBD_FLAG_CAP(can_fast_zero, NBD_FLAG_SEND_FAST_ZERO)
NBD_FLAG_CAP(can_multi_conn, NBD_FLAG_CAN_MULTI_CONN)
NBD_FLAG_CAP(is_rotational, NBD_FLAG_ROTATIONAL)

static int
nbd_can_write(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return !(nbd_tflags(self) & NBD_FLAG_READ_ONLY);
}

static int
nbd_can_fua(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return nbd_tflags(self) & NBD_FLAG_SEND_FUA ? NBD_FUA_NATIVE : NBD_FUA_NONE;
}

static int
nbd_can_zero(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return nbd_tflags(self) & NBD_FLAG_SEND_WRITE_ZEROES ? NBD_ZERO_NATIVE
                                                       : NBD_ZERO_NONE;
}

static int
nbd_can_cache(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return nbd_tflags(self) & NBD_FLAG_SEND_CACHE ? NBD_CACHE_NATIVE
                                                : NBD_CACHE_NONE;
}

static int
nbd_can_extents(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return nbd_info_of(self)->base_allocation;
}

/* ---- setup ------------------------------------------------------------ */

/* command= and each arg=, in order: the argv execvp gets.  0 or -1. */
static int
nbd_setup_argv(struct nbd_state *st, const struct nbd_conf *c)
{
  size_t i;

  if ((st->argv = calloc(c->arg.n + 2, sizeof *st->argv)) == NULL ||
      (st->argv[0] = strdup(c->command)) == NULL)
    return -1;
  for (i = 0; i < c->arg.n; i++)
    if ((st->argv[i + 1] = strdup(c->arg.v[i])) == NULL)
      return -1;
  return 0;
}

static int
nbd_setup_state(struct nbd_state *st, const struct nbd_layer *layer,
                char *err, size_t errlen)
{
  const struct nbd_conf *c = layer->conf;
  int n = !!c->uri + !!c->socket + !!c->hostname + !!c->command;

  if (n != 1) {
    snprintf(err, errlen, "give exactly one of uri=, socket=, hostname= or "
             "command= (%d given)", n);
    return -1;
  }
  if (c->port && !c->hostname) {
    snprintf(err, errlen, "port= goes with hostname=");
    return -1;
  }
  if (c->arg.n && !c->command) {
    snprintf(err, errlen, "arg= goes with command=");
    return -1;
  }
  if (c->export && c->uri) {
    snprintf(err, errlen, "export= conflicts with uri= (the URI names the "
             "export)");
    return -1;
  }
  if (c->export && c->dynamic_export) {
    snprintf(err, errlen, "export= conflicts with dynamic-export=true");
    return -1;
  }
  if (c->shared && c->dynamic_export) {
    snprintf(err, errlen, "dynamic-export=true cannot be shared=true (one "
             "connection has one export)");
    return -1;
  }
  if (c->uri)
    return nbd_parse_uri(st, c->uri, err, errlen);
  if (c->socket) {
    st->mode = NBD_MODE_UNIX;
    st->path = strdup(c->socket);
  } else if (c->hostname) {
    st->mode = NBD_MODE_TCP;
    st->host = strdup(c->hostname);
    st->port = c->port ? strdup(c->port) : NULL;
  } else {
    st->mode = NBD_MODE_COMMAND;
    if (nbd_setup_argv(st, c) == -1) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
  }
  st->export = strdup(c->export ? c->export : "");
  return 0;
}

/* The user nbdstack runs as: libnbd's default PSK identity. */
static char *
nbd_login_name(void)
{
  struct passwd *pw = getpwuid(geteuid());
  const char *u = pw ? pw->pw_name : getenv("USER");

  return strdup(u ? u : "nbd");
}

/* tls= and its keys, or an nbds:// URI's: the client credentials, loaded
 * and checked here so a bad key stops the server, not the first client. */
static int
nbd_setup_tls(struct nbd_state *st, const struct nbd_layer *layer, char *err,
              size_t errlen)
{
  const struct nbd_conf *c = layer->conf;
  struct tls_client_opts o;
  char why[512];
  int mode, other = c->tls_certificates || c->tls_psk || c->tls_username ||
                    nbd_layer_param_set(layer, "tls-verify");

  if (nbd_layer_param_set(layer, "tls"))
    mode = c->tls;
  else
    mode = st->uri_tls ? NBD_TLS_MODE_REQUIRE
           : other || st->uri_certificates || st->uri_psk ? NBD_TLS_MODE_ON
           : NBD_TLS_MODE_OFF;
  if (st->uri_tls && mode != NBD_TLS_MODE_REQUIRE) {
    snprintf(err, errlen, "an nbds:// uri requires TLS: tls=%s contradicts "
             "it", nbd_tls_modes[mode]);
    return -1;
  }
  if (mode == NBD_TLS_MODE_OFF)
    return 0;
  memset(&o, 0, sizeof o);
  o.certificates = c->tls_certificates ? c->tls_certificates
                                       : st->uri_certificates;
  o.psk = c->tls_psk ? c->tls_psk : st->uri_psk;
  o.verify = c->tls_verify;
  if (o.certificates == NULL && o.psk == NULL) {
    snprintf(err, errlen, "tls=%s needs tls-certificates= or tls-psk=",
             nbd_tls_modes[mode]);
    return -1;
  }
  if (o.certificates && o.psk) {
    snprintf(err, errlen, "give tls-certificates= or tls-psk=, not both");
    return -1;
  }
  st->username = c->tls_username ? strdup(c->tls_username)
                 : st->uri_username ? strdup(st->uri_username)
                 : nbd_login_name();
  if (st->username == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  o.username = st->username;
  if ((st->tls.client = tls_client_new(&o, why, sizeof why)) == NULL) {
    snprintf(err, errlen, "%s", why);
    return -1;
  }
  st->tls.require = mode == NBD_TLS_MODE_REQUIRE;
  /* The name the server's certificate must carry: the host connected
   * to (a Unix socket or a command has none, as in libnbd). */
  st->tls.hostname = st->mode == NBD_MODE_TCP ? st->host : NULL;
  return 0;
}

static void
nbd_free_state(struct nbd_state *st)
{
  size_t i;

  tls_client_free(st->tls.client);
  free(st->shared_export);
  while (st->retired) {         /* none left in use: no context is open */
    struct nbd_retired *r = st->retired;
    st->retired = r->next;
    nbdc_close(r->conn);
    nbd_reap(r->pid);
    free(r);
  }
  free(st->uri_certificates);
  free(st->uri_psk);
  free(st->uri_username);
  free(st->username);

  free(st->path);
  free(st->host);
  free(st->port);
  free(st->export);
  if (st->argv) {
    for (i = 0; st->argv[i]; i++)
      free(st->argv[i]);
    free(st->argv);
  }
  pthread_mutex_destroy(&st->lock);
  free(st);
}

static int
nbd_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct nbd_state *st = calloc(1, sizeof *st);

  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  pthread_mutex_init(&st->lock, NULL);
  if (nbd_setup_state(st, layer, err, errlen) == -1) {
    nbd_free_state(st);
    return -1;
  }
  if (st->mode == NBD_MODE_TCP && st->port == NULL)
    st->port = strdup("10809");
  if (st->export == NULL || (st->mode == NBD_MODE_TCP && st->port == NULL)) {
    snprintf(err, errlen, "out of memory");
    nbd_free_state(st);
    return -1;
  }
  if (nbd_setup_tls(st, layer, err, errlen) == -1) {
    nbd_free_state(st);
    return -1;
  }
  layer->state = st;
  return 0;
}

static void
nbd_cleanup(struct nbd_layer *layer)
{
  if (layer->state)
    nbd_free_state(layer->state);
  layer->state = NULL;
}

/* With dynamic-export=true a client's export name goes upstream, so the
 * names to list are upstream's (as nbdkit's nbd plugin); otherwise only
 * the config export (0).  Upstream refusing to list fails the listing. */
static int
nbd_list_exports(struct nbd_ctx *self, struct nbd_ctx *next,
                 struct nbd_exports *exports)
{
  const struct nbd_conf *conf = self->layer->conf;
  struct nbd_state *st = self->layer->state;
  char err[256];
  pid_t pid;
  int fd, e, r;

  (void)next;
  if (!conf->dynamic_export)
    return 0;
  if ((fd = nbd_connect_fd(self->layer, &pid)) < 0)
    return fd;
  r = nbdc_list(fd, &st->tls, exports, &e, err, sizeof err);
  nbd_reap(pid);
  if (r == -1) {
    nbd_error("nbd: listing upstream's exports: %s", err);
    return -e;
  }
  return 1;
}
UNSUPPORTED(nbd, preconnect)

NBD_REGISTER_BACKEND(nbd, NBD_PARALLEL,
  /* Every request waits for the network, but a local upstream answers
   * in microseconds: inline on the reader, a lone request (queue depth
   * 1) costs no handoff to a worker, and the scheduler moves a
   * connection whose requests wait while more queue up to workers. */
  NBD_RARELY_BLOCKS,
  .description = "proxy to an upstream NBD server",
  .params = nbd_params,
  .conf_size = sizeof(struct nbd_conf),
  .magic_param = "uri",
  .setup = nbd_setup,
  .cleanup = nbd_cleanup,
  .submit = nbd_submit,
  .submit_src = 1,
  .open = nbd_open,
  .close = nbd_close,
);
