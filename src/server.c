/* nbdstack server: listening sockets (TCP v4/v6, Unix, or inherited from
 * systemd socket activation), the accept loop, one thread per connection,
 * readiness notification, and orderly shutdown on SIGTERM/SIGINT: stop
 * accepting, let every connection finish its in-flight requests, flush,
 * close, exit 0.  It does not parse the config (config.c) nor speak NBD
 * (handshake.c, transmission.c).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bufmem.h"
#include "conn.h"
#include "lobby.h"
#include "server.h"

#define SERVER_MAX_LISTEN 64
#define SERVER_CONN_STACK (256u << 10)
#define SERVER_GRACE_SECONDS 5

#define SERVER_ABORT_SECONDS 10
/* musl's SOMAXCONN is 128: a burst of connects beyond it fails at once
 * for clients that connect without blocking (libnbd); the kernel caps
 * this at net.core.somaxconn. */
#define SERVER_BACKLOG 4096

static int server_sigpipe[2] = { -1, -1 };
static pthread_mutex_t server_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t server_conns_cond = PTHREAD_COND_INITIALIZER;
static struct nbd_conn *server_conns;   /* newest first */
static unsigned server_nconns;          /* threads alive, evicted included */
static unsigned server_nevicted;        /* closed for room, not gone yet */
static volatile sig_atomic_t server_nsignals;

struct server_listener {
  int fd;
  char *unlink_path;            /* Unix socket we created */
  char desc[128];
};

static struct server_listener server_listeners[SERVER_MAX_LISTEN];
static size_t server_nlisteners;

static void
server_on_signal(int sig)
{
  int saved = errno;
  char c = (char)sig;

  /* A second SIGTERM/SIGINT cuts the final flushes short (stop.h). */
  if (sig != SIGCHLD && ++server_nsignals >= 2)
    server_aborting = 1;
  server_stopping = 1;
  if (write(server_sigpipe[1], &c, 1) == -1) {
    /* The pipe is full: a wake-up is already pending. */
  }
  errno = saved;
}

static int
server_add_fd(int fd, const char *path, const char *desc)
{
  struct server_listener *l;

  if (server_nlisteners == SERVER_MAX_LISTEN) {
    nbd_error("too many listening sockets (max %d)", SERVER_MAX_LISTEN);
    close(fd);
    return -1;
  }
  l = &server_listeners[server_nlisteners++];
  l->fd = fd;
  l->unlink_path = path ? strdup(path) : NULL;
  snprintf(l->desc, sizeof l->desc, "%s", desc);
  return 0;
}

static int
server_listen_unix(const struct nbd_listen *ln)
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
   * a socket, never a regular file. */
  if (lstat(ln->path, &st) == 0 && S_ISSOCK(st.st_mode))
    unlink(ln->path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1 || bind(fd, (struct sockaddr *)&sun, sizeof sun) == -1 ||
      listen(fd, SERVER_BACKLOG) == -1) {
    nbd_error("cannot listen on unix:%s: %s", ln->path, strerror(errno));
    if (fd != -1)
      close(fd);
    return -1;
  }
  return server_add_fd(fd, ln->path, ln->path);
}

/* Binds every address host resolves to; returns how many, or -1 if it
 * does not resolve. */
static int
server_listen_tcp_host(const char *host, const char *port, int quiet)
{
  struct addrinfo hints, *res, *a;
  char desc[128], addr[INET6_ADDRSTRLEN];
  int r, fd, one = 1, bound = 0;

  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  r = getaddrinfo(host, port, &hints, &res);
  if (r != 0) {
    if (!quiet)
      nbd_error("cannot resolve tcp:%s:%s: %s", host ? host : "*", port,
                gai_strerror(r));
    return -1;
  }
  for (a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd == -1)
      continue;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Bind v4 and v6 separately so both can listen on one port. */
    if (a->ai_family == AF_INET6)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    getnameinfo(a->ai_addr, a->ai_addrlen, addr, sizeof addr, NULL, 0,
                NI_NUMERICHOST);
    snprintf(desc, sizeof desc, a->ai_family == AF_INET6 ? "[%s]:%s" :
             "%s:%s", addr, port);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == -1 ||
        listen(fd, SERVER_BACKLOG) == -1) {
      if (!quiet)
        nbd_error("cannot listen on tcp %s: %s", desc, strerror(errno));
      close(fd);
      continue;
    }
    if (server_add_fd(fd, NULL, desc) == 0)
      bound++;
  }
  freeaddrinfo(res);
  return bound;
}

static int
server_listen_tcp(const struct nbd_listen *ln)
{
  const char *host = ln->host && *ln->host ? ln->host : NULL;
  const char *port = ln->port && *ln->port ? ln->port : "10809";
  int n;

  /* "localhost" means both loopbacks, whatever /etc/hosts lists; a host
   * without IPv6 just gets 127.0.0.1. */
  if (host && strcmp(host, "localhost") == 0) {
    n = server_listen_tcp_host("127.0.0.1", port, 0);
    if (server_listen_tcp_host("::1", port, 1) > 0 && n < 0)
      n = 1;
  }
  else
    n = server_listen_tcp_host(host, port, 0);
  return n > 0 ? 0 : -1;
}

/* systemd socket activation: LISTEN_PID must be us; fds 3..3+N-1. */
static int
server_activation(void)
{
  const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
  char *end;
  long n, i;

  if (pid == NULL || fds == NULL)
    return 0;
  if (strtol(pid, &end, 10) != (long)getpid() || *end)
    return 0;
  n = strtol(fds, &end, 10);
  if (*end || n <= 0 || n > SERVER_MAX_LISTEN)
    return 0;
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  /* As nbdkit does: a server that a client started itself through socket
   * activation (libnbd's "nbdinfo -- [ nbdstack ... ]") ends with that
   * client, which does not always signal it (not when the handshake
   * failed).  Under systemd the parent is PID 1, which never goes. */
  {
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) == 0 && getppid() != parent)
      raise(SIGTERM);           /* it went before we asked */
  }
  for (i = 0; i < n; i++) {
    char desc[32];
    int fd = 3 + (int)i;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    snprintf(desc, sizeof desc, "inherited fd %d", fd);
    if (server_add_fd(fd, NULL, desc) == -1)
      return -1;
  }
  return (int)n;
}

/* READY=1 to $NOTIFY_SOCKET ('@' = abstract namespace). */
static void
server_notify(const char *msg)
{
  const char *path = getenv("NOTIFY_SOCKET");
  struct sockaddr_un sun;
  socklen_t len;
  int fd;

  if (path == NULL || (path[0] != '/' && path[0] != '@') ||
      strlen(path) >= sizeof sun.sun_path)
    return;
  memset(&sun, 0, sizeof sun);
  sun.sun_family = AF_UNIX;
  memcpy(sun.sun_path, path, strlen(path));
  if (path[0] == '@')
    sun.sun_path[0] = '\0';
  len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return;
  if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sun,
             len) == -1)
    nbd_warn("sd_notify to %s failed: %s", path, strerror(errno));
  close(fd);
}

/* The handshake is over: the connection may no longer be closed to make
 * room for a newer client. */
static void
server_handshake_done(struct nbd_conn *c)
{
  pthread_mutex_lock(&server_lock);
  c->handshaking = 0;
  pthread_mutex_unlock(&server_lock);
}

static void *
server_conn_thread(void *arg)
{
  struct nbd_conn *c = arg;
  int evicted;

  if (conn_handshake(c) == 0) {
    server_handshake_done(c);
    conn_transmit(c);
  }
  conn_finish(c);
  server_handshake_done(c);
  pthread_mutex_lock(&server_lock);
  if (c->prev)
    c->prev->next = c->next;
  else
    server_conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  evicted = c->evicted;         /* off the list: nobody changes it now */
  pthread_mutex_unlock(&server_lock);
  close(c->fd);
  conn_free(c);
  /* Last: server_drain returns once this reaches 0, and then the layers
   * this thread used are torn down. */
  pthread_mutex_lock(&server_lock);
  server_nconns--;
  if (evicted)
    server_nevicted--;
  pthread_cond_broadcast(&server_conns_cond);
  pthread_mutex_unlock(&server_lock);
  return NULL;
}

/* A client that spoke needs a connection thread.  At max-connections the
 * oldest connection still in its handshake (a client that sends slowly)
 * makes room for it; with none, every slot is a handshaken connection and
 * the client is refused (docs/config.md, "Limits").  Caller holds
 * server_lock.  0 = admitted (linked into the list), -1 = refuse. */
static int
server_admit(const struct nbd_config *cfg, struct nbd_conn *c)
{
  struct nbd_conn *o, *victim = NULL;

  if (server_nconns - server_nevicted >= cfg->max_connections) {
    for (o = server_conns; o; o = o->next)     /* newest first */
      if (o->handshaking && !o->evicted)
        victim = o;
    /* Closed connections not gone yet still hold a thread: bound them. */
    if (victim == NULL || server_nconns >= 2 * cfg->max_connections)
      return -1;
    nbd_debug("%s: closed in its handshake to make room for a new client",
              victim->peer);
    victim->evicted = 1;
    server_nevicted++;
    shutdown(victim->fd, SHUT_RDWR);
  }
  c->handshaking = 1;
  c->next = server_conns;
  if (server_conns)
    server_conns->prev = c;
  server_conns = c;
  server_nconns++;
  return 0;
}

/* Where a client comes from, for the per-source handshake limit: its
 * address for TCP, its process for a Unix socket. */
static void
server_source(struct nbd_conn *c, const struct sockaddr_storage *ss,
              socklen_t sslen)
{
  char addr[INET6_ADDRSTRLEN] = "";
  struct ucred cr;
  socklen_t len = sizeof cr;
  int one = 1;

  if (ss->ss_family == AF_INET || ss->ss_family == AF_INET6) {
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    getnameinfo((const struct sockaddr *)ss, sslen, addr, sizeof addr, NULL,
                0, NI_NUMERICHOST);
    snprintf(c->peer, sizeof c->peer, "%s", addr);
    snprintf(c->source, sizeof c->source, "%s", addr);
  } else if (ss->ss_family == AF_UNIX &&
             getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0)
    snprintf(c->source, sizeof c->source, "pid %ld", (long)cr.pid);
}

/* Starts the thread of a client that left the lobby, or refuses it. */
static void
server_start_conn(const struct nbd_config *cfg, struct nbd_conn *c)
{
  pthread_attr_t attr;
  pthread_t tid;
  int r;

  pthread_mutex_lock(&server_lock);
  r = server_admit(cfg, c);
  pthread_mutex_unlock(&server_lock);
  if (r == -1) {
    static time_t last;
    time_t now = time(NULL);
    if (now != last)            /* one line a second, not one per client */
      nbd_warn("refusing a client: %u connections is the maximum",
               cfg->max_connections);
    last = now;
    close(c->fd);
    conn_free(c);
    return;
  }
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, SERVER_CONN_STACK);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (pthread_create(&tid, &attr, server_conn_thread, c) != 0) {
    nbd_warn("cannot start a connection thread: dropping client");
    shutdown(c->fd, SHUT_RDWR);
    /* The thread body does the unlinking and freeing; run it here. */
    server_conn_thread(c);
  }
  pthread_attr_destroy(&attr);
}

/* Accepts one client, greets it and puts it in the lobby until it
 * speaks; returns -1 when there is none left to accept. */
static int
server_accept(const struct nbd_config *cfg, struct server_listener *l)
{
  struct sockaddr_storage ss;
  socklen_t sslen = sizeof ss;
  struct nbd_conn *c;
  int fd;

  fd = accept4(l->fd, (struct sockaddr *)&ss, &sslen, SOCK_CLOEXEC);
  if (fd == -1) {
    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
      nbd_warn("accept on %s: %s", l->desc, strerror(errno));
    if (errno == EMFILE || errno == ENFILE)
      usleep(100000);           /* let connections close; don't spin */
    return -1;
  }
  c = conn_new(fd, cfg);
  if (c == NULL) {
    close(fd);
    return 0;
  }
  server_source(c, &ss, sslen);
  nbd_debug("%s: connected on %s", c->peer, l->desc);
  if (cfg->handshake_timeout)
    c->deadline = conn_now_ns() + cfg->handshake_timeout;
  if (handshake_greet(c) == -1) {
    close(fd);
    conn_free(c);
    return 0;
  }
  lobby_add(c, config_max_handshakes(cfg),
            config_max_handshakes_per_source(cfg));
  return 0;
}

/* Ends every connection and waits until each thread is gone, so that no
 * layer is torn down while a connection still uses it: their sockets are
 * shut for reading (each finishes the requests it read and flushes what
 * its client wrote), and after the grace period for writing too (a
 * client that stops reading cannot hold a reply).  The final flushes
 * take as long as they take; a second signal (server_aborting) makes
 * layers cut them short, and if threads are still busy
 * SERVER_ABORT_SECONDS after it, gives up.  Returns 0 when every
 * connection is gone, -1 when some are still running (the caller must
 * then leave the configuration alone). */
static int
server_drain(void)
{
  struct timespec now, tick;
  struct nbd_conn *c;
  time_t grace_end, abort_end = 0;
  int how = SHUT_RD, r = 0;

  clock_gettime(CLOCK_REALTIME, &now);
  grace_end = now.tv_sec + SERVER_GRACE_SECONDS;
  pthread_mutex_lock(&server_lock);
  for (;;) {
    for (c = server_conns; c; c = c->next)
      shutdown(c->fd, how);
    if (server_nconns == 0)
      break;
    /* Wake up now and then: a second signal only sets a flag. */
    clock_gettime(CLOCK_REALTIME, &tick);
    tick.tv_nsec += 200000000;
    if (tick.tv_nsec >= 1000000000) {
      tick.tv_sec++;
      tick.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&server_conns_cond, &server_lock, &tick);
    if (server_nconns == 0)
      break;
    clock_gettime(CLOCK_REALTIME, &now);
    if (how == SHUT_RD && now.tv_sec >= grace_end) {
      nbd_warn("%u connections still busy after %ds: closing their "
               "sockets, waiting for their flushes", server_nconns,
               SERVER_GRACE_SECONDS);
      how = SHUT_RDWR;
    }
    if (server_aborting && abort_end == 0) {
      nbd_warn("second signal: cutting the final flushes short");
      pthread_mutex_unlock(&server_lock);
      stop_wake();
      pthread_mutex_lock(&server_lock);
      abort_end = now.tv_sec + SERVER_ABORT_SECONDS;
    }
    if (abort_end && now.tv_sec >= abort_end) {
      nbd_error("%u connections still busy %ds after the second signal: "
                "exiting without them; what they had not written is lost",
                server_nconns, SERVER_ABORT_SECONDS);
      r = -1;
      break;
    }
  }
  pthread_mutex_unlock(&server_lock);
  return r;
}

static int
server_open_listeners(const struct nbd_config *cfg)
{
  size_t i;
  int n = server_activation();

  if (n < 0)
    return -1;
  if (n > 0) {
    nbd_info("using %d socket(s) from systemd socket activation", n);
    return 0;
  }
  for (i = 0; i < cfg->nlistens; i++) {
    const struct nbd_listen *ln = &cfg->listens[i];
    if ((ln->kind == NBD_LISTEN_UNIX ? server_listen_unix(ln)
                                     : server_listen_tcp(ln)) == -1)
      return -1;
  }
  if (server_nlisteners == 0) {
    nbd_error("nothing to listen on");
    return -1;
  }
  return 0;
}

static void
server_close_listeners(void)
{
  size_t i;

  for (i = 0; i < server_nlisteners; i++) {
    close(server_listeners[i].fd);
    if (server_listeners[i].unlink_path) {
      unlink(server_listeners[i].unlink_path);
      free(server_listeners[i].unlink_path);
    }
  }
  server_nlisteners = 0;
}

/* Every client holds a socket, in the lobby too: raise the soft limit on
 * open files to the hard one (systemd's default soft limit is 1024), and
 * say so when even that is short of what the limits allow. */
static void
server_raise_nofile(const struct nbd_config *cfg)
{
  struct rlimit rl;
  uint64_t want = (uint64_t)cfg->max_connections +
                  config_max_handshakes(cfg) + 256;

  if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
    return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
    nbd_warn("the limit on open files (%llu) is below what max-connections "
             "and max-handshakes allow (%llu): raise LimitNOFILE",
             (unsigned long long)rl.rlim_cur, (unsigned long long)want);
}

static void
server_signals(void)
{
  struct sigaction sa;

  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &sa, NULL);
  sa.sa_handler = server_on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
}

/* -u/-g: give up root once the sockets are bound. */
static int
server_drop_privileges(const struct nbd_config *cfg)
{
  struct passwd *pw = NULL;
  struct group *gr = NULL;
  gid_t gid;

  if (cfg->user == NULL && cfg->group == NULL)
    return 0;
  if (cfg->user && (pw = getpwnam(cfg->user)) == NULL) {
    nbd_error("unknown user '%s'", cfg->user);
    return -1;
  }
  if (cfg->group && (gr = getgrnam(cfg->group)) == NULL) {
    nbd_error("unknown group '%s'", cfg->group);
    return -1;
  }
  gid = gr ? gr->gr_gid : pw ? pw->pw_gid : getgid();
  if (setgroups(1, &gid) == -1 || setgid(gid) == -1) {
    nbd_error("cannot change group to %u: %s", (unsigned)gid,
              strerror(errno));
    return -1;
  }
  if (pw && setuid(pw->pw_uid) == -1) {
    nbd_error("cannot change user to %s: %s", cfg->user, strerror(errno));
    return -1;
  }
  nbd_debug("running as uid %u gid %u", (unsigned)getuid(), (unsigned)getgid());
  return 0;
}

/* A supervisor waits for the pidfile, so one that cannot be written is
 * fatal (as in nbdkit), not a warning it would never see. */
static int
server_write_pidfile(const char *path)
{
  FILE *fp = fopen(path, "w");
  int r;

  if (fp == NULL) {
    nbd_error("cannot write pidfile %s: %s", path, strerror(errno));
    return -1;
  }
  r = fprintf(fp, "%ld\n", (long)getpid()) < 0;
  if (fclose(fp) != 0 || r) {
    nbd_error("cannot write pidfile %s: %s", path, strerror(errno));
    unlink(path);
    return -1;
  }
  return 0;
}

/* Appends s to the URI being built, percent-encoding all but unreserved
 * characters (and '/', kept for socket paths). */
static void
server_uri_append(char *uri, size_t len, const char *s)
{
  size_t n = strlen(uri);
  static const char hex[] = "0123456789ABCDEF";

  for (; *s && n + 4 < len; s++) {
    unsigned char ch = (unsigned char)*s;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9') || strchr("-._~/", ch))
      uri[n++] = (char)ch;
    else {
      uri[n++] = '%';
      uri[n++] = hex[ch >> 4];
      uri[n++] = hex[ch & 15];
    }
  }
  uri[n] = '\0';
}

/* --run: starts the command with the first listener's address in its
 * environment, as nbdkit does.  Returns its pid, or -1. */
static pid_t
server_start_command(const struct nbd_config *cfg)
{
  const struct nbd_listen *l = &cfg->listens[0];
  const char *name = cfg->exports ? cfg->exports->name : "";
  /* Room for the longest: a 4096-byte name and a 107-byte socket path,
   * every byte percent-encoded (a host is cut by snprintf at worst). */
  char uri[3 * CONFIG_MAX_NAME + 3 * 108 + 64] = "";
  pid_t pid;

  if (l->kind == NBD_LISTEN_UNIX) {
    strcpy(uri, "nbd+unix:///");
    server_uri_append(uri, sizeof uri, name);
    strcat(uri, "?socket=");
    server_uri_append(uri, sizeof uri, l->path);
  } else {
    const char *h = l->host && *l->host ? l->host : "localhost";
    int v6 = strchr(h, ':') != NULL;
    snprintf(uri, sizeof uri, "nbd://%s%s%s:%s/", v6 ? "[" : "", h,
             v6 ? "]" : "", l->port);
    server_uri_append(uri, sizeof uri, name);
  }
  pid = fork();
  if (pid == -1) {
    nbd_error("--run: fork: %s", strerror(errno));
    return -1;
  }
  if (pid == 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    setenv("uri", uri, 1);
    setenv("nbd", uri, 1);
    setenv("exportname", name, 1);
    if (l->kind == NBD_LISTEN_UNIX)
      setenv("unixsocket", l->path, 1);
    else
      setenv("port", l->port, 1);
    execl("/bin/sh", "sh", "-c", cfg->run, (char *)NULL);
    fprintf(stderr, "nbdstack: --run: /bin/sh: %s\n", strerror(errno));
    _exit(127);
  }
  return pid;
}

/* The --run command's exit status as a shell reports it (128 + signal). */
static int
server_command_status(pid_t pid)
{
  pid_t r;
  int st;

  /* Stopped by a signal while the command still runs: pass it on. */
  while ((r = waitpid(pid, &st, WNOHANG)) == -1 && errno == EINTR)
    ;
  if (r == 0) {
    kill(pid, SIGTERM);
    while ((r = waitpid(pid, &st, 0)) == -1 && errno == EINTR)
      ;
  }
  if (r == -1)
    return 1;
  if (WIFEXITED(st))
    return WEXITSTATUS(st);
  return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 1;
}

int
server_run(const struct nbd_config *cfg, int *drained)
{
  pid_t child = -1;
  int status = 0;
  struct pollfd *pfd;
  size_t i, npfd;

  *drained = 1;
  server_raise_nofile(cfg);
  bufmem_set_limit(cfg->max_buffer_memory);
  if (pipe2(server_sigpipe, O_CLOEXEC | O_NONBLOCK) == -1) {
    nbd_error("pipe: %s", strerror(errno));
    return -1;
  }
  server_signals();
  if (server_open_listeners(cfg) == -1) {
    server_close_listeners();
    return -1;
  }
  for (i = 0; i < server_nlisteners; i++) {
    fcntl(server_listeners[i].fd, F_SETFL,
          fcntl(server_listeners[i].fd, F_GETFL) | O_NONBLOCK);
    nbd_info("listening on %s", server_listeners[i].desc);
  }
  if (cfg->pidfile && server_write_pidfile(cfg->pidfile) == -1) {
    server_close_listeners();
    return -1;
  }
  if (server_drop_privileges(cfg) == -1) {
    server_close_listeners();
    return -1;
  }
  server_notify("READY=1");
  if (cfg->run && cfg->nlistens > 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = server_on_signal;   /* its exit stops the server */
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    if ((child = server_start_command(cfg)) == -1)
      server_stopping = 1;
  }

  npfd = SERVER_MAX_LISTEN + 1 + config_max_handshakes(cfg);
  if ((pfd = calloc(npfd, sizeof *pfd)) == NULL)
    nbd_error("out of memory");
  while (pfd && !server_stopping) {
    size_t nl = server_nlisteners + 1, nlobby, pos = 0;
    struct nbd_conn *c;

    for (i = 0; i < server_nlisteners; i++) {
      pfd[i].fd = server_listeners[i].fd;
      pfd[i].events = POLLIN;
    }
    pfd[i].fd = server_sigpipe[0];
    pfd[i].events = POLLIN;
    nlobby = lobby_pollfds(pfd + nl, npfd - nl);
    /* With clients in the lobby, wake now and then to expire them. */
    if (poll(pfd, nl + nlobby, nlobby ? 500 : -1) == -1) {
      if (errno == EINTR)
        continue;
      nbd_error("poll: %s", strerror(errno));
      break;
    }
    while (!server_stopping &&
           (c = lobby_take_ready(pfd + nl, nlobby, &pos)) != NULL)
      server_start_conn(cfg, c);
    lobby_expire(conn_now_ns());
    /* Drain each ready listener (bounded, so one cannot starve others). */
    for (i = 0; i < server_nlisteners && !server_stopping; i++) {
      int n;
      if (pfd[i].revents & POLLIN)
        for (n = 0; n < 64 && !server_stopping; n++)
          if (server_accept(cfg, &server_listeners[i]) == -1)
            break;
    }
  }
  lobby_clear();
  free(pfd);
  nbd_info("shutting down");
  stop_wake();                  /* layers sleeping in nbd_sleep() */
  server_notify("STOPPING=1");
  server_close_listeners();
  *drained = server_drain() == 0;
  if (cfg->pidfile)
    unlink(cfg->pidfile);
  if (cfg->run)
    status = child == -1 ? 1 : server_command_status(child);
  if (stop_unwritten() > 0 || !*drained) {
    nbd_error("exiting with acknowledged writes that may not be durable "
              "(%u failed flushes at close; see above)", stop_unwritten());
    if (status == 0)
      status = 1;
  }
  return status;
}
