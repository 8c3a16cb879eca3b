/* nbdstack server: the accept loop, the admission of clients (the lobby
 * of silent ones, max-connections), one thread per connection, signals,
 * and the orderly shutdown: stop accepting, let every connection finish
 * its requests and flush what it wrote, however long that takes, then
 * exit (0, or 1 when a flush failed or a second signal cut one short).
 * The listening sockets are sockets.c's, process set-up process.c's,
 * --run captive.c's; it does not parse the config (config.c) nor speak
 * NBD (conn.c and below).
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
#include "metrics.h"
#include "park.h"
#include "process.h"
#include "reload.h"
#include "server.h"
#include "sockets.h"
#include "stop.h"
#include "modes.h"
#include "tls.h"
#include "uri.h"

#define SERVER_CONN_STACK (256u << 10)
#define SERVER_GRACE_SECONDS 5

#define SERVER_ABORT_SECONDS 10

static int server_sigpipe[2] = { -1, -1 };
static pthread_mutex_t server_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t server_conns_cond = PTHREAD_COND_INITIALIZER;
static struct nbd_conn *server_conns;   /* newest first */
static unsigned server_nconns;          /* threads alive, evicted included */
static unsigned server_nevicted;        /* closed for room, not gone yet */
static volatile sig_atomic_t server_nsignals;
static volatile sig_atomic_t server_reload_pending;
static volatile sig_atomic_t server_usr1_pending;
/* A child exited: the --run command, or one a layer started (log's
 * logscript, exitwhen's script), which must not stop the server. */
static volatile sig_atomic_t server_child_pending;
static const struct nbd_config *server_cfg;     /* for server_status */
/* The connection count changed since the last STATUS= (server_lock). */
static int server_status_dirty;


static void
server_on_signal(int sig)
{
  int saved = errno;
  char c = (char)sig;

  if (sig == SIGHUP || sig == SIGUSR1) {
    /* reload (reload.c), or the reports of layers (stats): on the main
     * loop. */
    if (sig == SIGHUP)
      server_reload_pending = 1;
    else
      server_usr1_pending = 1;
    if (write(server_sigpipe[1], &c, 1) == -1) {
      /* The pipe is full: a wake-up is already pending. */
    }
    errno = saved;
    return;
  }
  if (sig == SIGCHLD) {
    /* Atomic: the handler may run on any thread (a layer's). */
    __atomic_store_n(&server_child_pending, 1, __ATOMIC_RELAXED);
    if (write(server_sigpipe[1], &c, 1) == -1) {
      /* The pipe is full: a wake-up is already pending. */
    }
    errno = saved;
    return;
  }
  /* A second SIGTERM/SIGINT cuts the final flushes short (stop.h). */
  if (++server_nsignals >= 2)
    server_aborting = 1;
  server_stopping = 1;
  if (write(server_sigpipe[1], &c, 1) == -1) {
    /* The pipe is full: a wake-up is already pending. */
  }
  errno = saved;
}

/* STATUS= for systemctl status: exports served and connections now.
 * Sent under server_lock so that two threads cannot report counts out
 * of order; only with $NOTIFY_SOCKET set.  Connection changes are sent
 * by the accept loop at most once a second (server_status_dirty), so a
 * storm of clients is not a storm of datagrams to PID 1.  extra goes
 * first (READY=1). */
static void
server_status(const char *extra)
{
  const struct nbd_export *e;
  unsigned nexp = 0, n;
  char msg[160];

  if (getenv("NOTIFY_SOCKET") == NULL)
    return;
  for (e = server_cfg ? server_cfg->exports : NULL; e; e = e->next)
    nexp++;
  n = server_nconns - server_nevicted;
  snprintf(msg, sizeof msg, "%sSTATUS=serving %u export%s, %u connection%s",
           extra, nexp, nexp == 1 ? "" : "s", n, n == 1 ? "" : "s");
  notify_systemd(msg);
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

/* After the request loop returned: an idle connection goes to park.c
 * and its thread ends (1); one that cannot stays on its thread (0, its
 * request loop goes on); -1 = the connection ended.  The idle timeout
 * then runs in park.c, for what is left of it. */
static int
server_park(struct nbd_conn *c)
{
  uint64_t idle = c->cfg->idle_timeout, left;

  if (!c->w.parked)
    return -1;
  left = idle > c->w.park_ns ? idle - c->w.park_ns : 0;
  if (park_add(c, left) == 0)
    return 1;
  c->w.parked = 0;
  c->w.park_ns = 0;             /* stay: this thread serves it to the end */
  return 0;
}

static void server_conn_end(struct nbd_conn *c);

/* A connection's thread: the handshake and requests, or only requests
 * for one back from park.c (c->w.parked); then it parks, or ends. */
static void *
server_conn_thread(void *arg)
{
  struct nbd_conn *c = arg;
  int go;

  if (c->w.parked) {
    c->w.parked = 0;
    go = 1;
  } else if ((go = conn_handshake(c) == 0)) {
    server_handshake_done(c);
    /* Parking: not with an idle timeout shorter than the wait before
     * it, which ends the connection first. */
    if (c->cfg->idle_timeout == 0 || c->cfg->idle_timeout > PARK_AFTER_NS)
      c->w.park_ns = PARK_AFTER_NS;
  }
  while (go) {
    conn_transmit(c);
    go = server_park(c);
    if (go == 1)
      return NULL;              /* c is park.c's now */
    go = go == 0;
  }
  server_conn_end(c);
  return NULL;
}

/* The end of a connection: flush and close its stack, and let it go. */
static void
server_conn_end(struct nbd_conn *c)
{
  int evicted;

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
  close(c->w.fd);
  conn_free(c);
  /* Last: server_drain returns once this reaches 0, and then the layers
   * this thread used are torn down. */
  pthread_mutex_lock(&server_lock);
  server_nconns--;
  if (evicted)
    server_nevicted--;
  server_status_dirty = 1;
  pthread_cond_broadcast(&server_conns_cond);
  pthread_mutex_unlock(&server_lock);
  if (server_exit_requested || server_exit_idle)
    stop_poke();                /* the main loop counts who is left */
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
    shutdown(victim->w.fd, SHUT_RDWR);
  }
  c->handshaking = 1;
  c->next = server_conns;
  if (server_conns)
    server_conns->prev = c;
  server_conns = c;
  server_nconns++;
  return 0;
}

/* Where a client comes from: for the per-source handshake limit (its
 * address for TCP, its process for a Unix socket), and for layers
 * (nbd_conn_info: number, address and port, or pid, uid and gid). */
static void
server_source(struct nbd_conn *c, const struct sockaddr_storage *ss,
              socklen_t sslen)
{
  static uint64_t server_next_id;
  char addr[INET6_ADDRSTRLEN] = "";
  struct ucred cr;
  socklen_t len = sizeof cr;
  int one = 1;

  c->info.id = ++server_next_id;        /* the accept loop's thread only */
  c->info.family = ss->ss_family;
  c->info.readonly = c->cfg->readonly;
  if (ss->ss_family == AF_INET || ss->ss_family == AF_INET6) {
    setsockopt(c->w.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    getnameinfo((const struct sockaddr *)ss, sslen, addr, sizeof addr, NULL,
                0, NI_NUMERICHOST);
    snprintf(c->peer, sizeof c->peer, "%s", addr);
    snprintf(c->source, sizeof c->source, "%s", addr);
    snprintf(c->info.addr, sizeof c->info.addr, "%s", addr);
    c->info.port = ntohs(ss->ss_family == AF_INET
                         ? ((const struct sockaddr_in *)ss)->sin_port
                         : ((const struct sockaddr_in6 *)ss)->sin6_port);
  } else if (ss->ss_family == AF_UNIX &&
             getsockopt(c->w.fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0) {
    snprintf(c->source, sizeof c->source, "pid %ld", (long)cr.pid);
    c->info.has_cred = 1;
    c->info.pid = cr.pid;
    c->info.uid = cr.uid;
    c->info.gid = cr.gid;
  }
}

static void server_spawn(struct nbd_conn *c);

/* Starts the thread of a client that left the lobby, or refuses it. */
static void
server_start_conn(const struct nbd_config *cfg, struct nbd_conn *c)
{
  int r;

  pthread_mutex_lock(&server_lock);
  r = server_admit(cfg, c);
  if (r == 0) {
    server_status_dirty = 1;
    server_exit_idle = 0;       /* a client came: not idle (exitlast) */
  }
  pthread_mutex_unlock(&server_lock);
  if (r == -1) {
    static time_t last;
    metrics_refused(METRICS_REFUSED_MAX_CONNECTIONS);
    time_t now = time(NULL);
    if (now != last)            /* one line a second, not one per client */
      nbd_warn("refusing a client: %u connections is the maximum",
               cfg->max_connections);
    last = now;
    close(c->w.fd);
    conn_free(c);
    return;
  }
  server_spawn(c);
}

/* Gives c a thread: a client that spoke, or a parked connection with
 * input (park.c's wake-up, on its thread). */
static void
server_spawn(struct nbd_conn *c)
{
  pthread_attr_t attr;
  pthread_t tid;

  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, SERVER_CONN_STACK);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (pthread_create(&tid, &attr, server_conn_thread, c) != 0) {
    nbd_warn("cannot start a connection thread: dropping client");
    shutdown(c->w.fd, SHUT_RDWR);
    /* The thread body does the unlinking and freeing; run it here. */
    server_conn_thread(c);
  }
  pthread_attr_destroy(&attr);
}

/* park.c's wake-up for a parked connection whose socket became
 * readable.  At exit, server_drain's shutdown wakes every parked
 * connection at once: one that only shows the end of its input and
 * wrote nothing has nothing left to run or flush and ends here, on
 * park.c's thread, rather than each starting a thread to end (10,000
 * thread starts take seconds on a small host). */
static void
server_wake(struct nbd_conn *c)
{
  char b;

  if (server_stopping && !__atomic_load_n(&c->wrote, __ATOMIC_RELAXED) &&
      recv(c->w.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
    c->w.parked = 0;
    server_conn_end(c);
  } else
    server_spawn(c);
}

/* No connection thread is left. */
static int
server_idle(void)
{
  unsigned n;

  pthread_mutex_lock(&server_lock);
  n = server_nconns;
  pthread_mutex_unlock(&server_lock);
  return n == 0;
}

/* A layer asked for an exit (nbd_server_exit): the first time, stop
 * listening and close the clients that have not spoken; then true once
 * no connection is left, when the main loop ends as on SIGTERM. */
static int
server_exit_step(void)
{
  static int closed;

  if (!closed) {
    closed = 1;
    sockets_close();
    lobby_clear();
  }
  return server_idle();
}

/* Accepts one client, greets it and puts it in the lobby until it
 * speaks; returns -1 when there is none left to accept. */
static int
server_accept(const struct nbd_config *cfg, const struct nbd_listener *l)
{
  struct sockaddr_storage ss;
  socklen_t sslen = sizeof ss;
  struct nbd_conn *c;
  int fd;

  memset(&ss, 0, sizeof ss);    /* the analyzer does not model accept4 */
  fd = accept4(l->fd, (struct sockaddr *)&ss, &sslen, SOCK_CLOEXEC);
  if (fd == -1) {
    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
      nbd_warn("accept on %s: %s", l->desc, strerror(errno));
    if (errno == EMFILE || errno == ENFILE)
      usleep(100000);           /* let connections close; don't spin */
    return -1;
  }
  cfg = reload_get();           /* the set this client opens from */
  c = conn_new(fd, cfg);
  if (c == NULL) {
    reload_put(cfg);
    close(fd);
    return 0;
  }
  c->set_ref = 1;
  server_source(c, &ss, sslen);
  nbd_debug("%s: connected on %s", c->peer, l->desc);
  if (conn_preconnect(c) == -1) {
    close(fd);
    conn_free(c);
    return 0;
  }
  if (cfg->handshake_timeout)
    c->w.deadline = nbd_now_ns() + cfg->handshake_timeout;
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
  int how = SHUT_RD, shut = -1, r = 0;

  clock_gettime(CLOCK_REALTIME, &now);
  grace_end = now.tv_sec + SERVER_GRACE_SECONDS;
  pthread_mutex_lock(&server_lock);
  for (;;) {
    /* Once for each way: no new connection joins the list now, and
     * with 10,000 of them a pass on every wake-up (each thread that
     * ends wakes this one) would cost millions of calls. */
    if (shut != how)
      for (c = server_conns; c; c = c->next)
        shutdown(c->w.fd, how);
    shut = how;
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

static void
server_signals(void)
{
  struct sigaction sa;

  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &sa, NULL);
  /* A write past a file-size limit (ulimit -f, systemd's LimitFSIZE=)
   * fails with EFBIG, and that client gets the error; the signal's
   * default would end the server and every other client with it. */
  sigaction(SIGXFSZ, &sa, NULL);
  sa.sa_handler = server_on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
}

/* The signal pipe is readable: empty it, and reload on SIGHUP.  The set
 * the status line counts is switched under server_lock before the old
 * one may be freed. */
static void
server_on_wakeup(void)
{
  const struct nbd_config *old;
  char buf[64];

  while (read(server_sigpipe[0], buf, sizeof buf) > 0)
    ;
  if (server_usr1_pending) {
    server_usr1_pending = 0;
    stop_run_sigusr1();
  }
  /* No reload once exiting: it could open listeners again. */
  if (!server_reload_pending || server_stopping || server_exit_requested)
    return;
  server_reload_pending = 0;
  tls_server_reload();
  if (reload_run(&old) == 1) {
    pthread_mutex_lock(&server_lock);
    server_cfg = reload_current();
    server_status("");
    pthread_mutex_unlock(&server_lock);
    metrics_configure(server_cfg);
    reload_put(old);
  }
}

/* -u/-g: what was made as root and must go at exit (Unix sockets, the
 * pidfile), for the child that keeps the right to remove it. */
static int
server_drop_privileges(const struct nbd_config *cfg)
{
  const char *paths[SOCKETS_MAX + 2];
  size_t i, n = 0;

  for (i = 0; i < sockets_count(); i++)
    if (sockets_get(i)->unlink_path)
      paths[n++] = sockets_get(i)->unlink_path;
  if (cfg->pidfile)
    paths[n++] = cfg->pidfile;
  if (metrics_unix_path())
    paths[n++] = metrics_unix_path();
  return process_drop_privileges(cfg, paths, n);
}

/* --exit-with-parent: SIGTERM (the orderly shutdown) when the parent
 * goes; a parent that went before we asked shows as a new parent pid. */
static void
server_exit_with_parent(void)
{
  if (prctl(PR_SET_PDEATHSIG, SIGTERM) == -1) {
    nbd_warn("--exit-with-parent: prctl: %s", strerror(errno));
    return;
  }
  if (getppid() != nbd_modes.parent)
    raise(SIGTERM);
}

/* The URI of every listener, once serving: in the log, and on stdout
 * with --print-uri.  From the bound address (the real port of port 0);
 * the IPv4 and IPv6 sockets of "all addresses" give one line.  As in
 * nbdkit, nbds:// only when TLS is required for the export named (with tls = on a plain
 * client is served too, so nbd:// stays right). */
static void
server_print_uris(const struct nbd_config *cfg)
{
  const char *name = cfg->exports ? cfg->exports->name : "";
  static char uri[URI_MAX], last[URI_MAX];
  size_t i;

  last[0] = '\0';
  for (i = 0; i < sockets_count(); i++) {
    if (uri_of_socket(uri, sizeof uri, sockets_get(i)->fd, name,
                      cfg->exports && config_export_tls(cfg, cfg->exports) ==
                      NBD_TLS_REQUIRE) == -1 ||
        strcmp(uri, last) == 0)
      continue;
    nbd_info("serving %s", uri);
    if (nbd_modes.print_uri)
      printf("%s\n", uri);
    memcpy(last, uri, sizeof last);
  }
  fflush(stdout);
}

/* -s: the socket on fd 0, taken from stdin and stdout so that nothing
 * else can write on the connection (they become /dev/null); -1 when fd 0
 * is not a socket. */
static int
server_single_fd(void)
{
  struct stat st;
  int fd, null;

  if (fstat(0, &st) == -1 || !S_ISSOCK(st.st_mode)) {
    nbd_error("-s: standard input is not a socket: -s serves one client "
              "on a socket given as stdin/stdout (inetd, libnbd's "
              "connect_command); to listen, use -U, -p or -i instead");
    return -1;
  }
  if ((fd = fcntl(0, F_DUPFD_CLOEXEC, 3)) == -1) {
    nbd_error("-s: dup: %s", strerror(errno));
    return -1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  if ((null = open("/dev/null", O_RDWR | O_CLOEXEC)) != -1) {
    dup2(null, 0);
    dup2(null, 1);
    if (null > 2)
      close(null);
  }
  return fd;
}

/* -s: waits until the one connection is gone or a signal came. */
static void
server_single_wait(void)
{
  struct timespec tick;

  pthread_mutex_lock(&server_lock);
  while (server_nconns > 0 && !server_stopping) {
    /* A signal only sets a flag: look at it now and then. */
    clock_gettime(CLOCK_REALTIME, &tick);
    tick.tv_sec++;
    pthread_cond_timedwait(&server_conns_cond, &server_lock, &tick);
    if (server_usr1_pending) {
      server_usr1_pending = 0;
      pthread_mutex_unlock(&server_lock);
      stop_run_sigusr1();
      pthread_mutex_lock(&server_lock);
    }
  }
  pthread_mutex_unlock(&server_lock);
}

/* -s: serves the one client on fd 0 with the connection thread of any
 * other client, waits until it goes (or a signal), then drains as
 * server_run does: exit status 0, or 1 when a flush at close failed. */
static int
server_single(const struct nbd_config *cfg, int *drained)
{
  const char *paths[2] = { cfg->pidfile, metrics_unix_path() };
  struct sockaddr_storage ss;
  socklen_t sslen = sizeof ss;
  struct nbd_conn *c;
  int fd, status = 0;

  if ((fd = server_single_fd()) == -1)
    return -1;
  if ((cfg->pidfile && process_write_pidfile(cfg->pidfile) == -1) ||
      process_drop_privileges(cfg, cfg->pidfile ? paths : paths + 1,
                              (cfg->pidfile ? 1 : 0) +
                              (paths[1] ? 1 : 0)) == -1 ||
      (c = conn_new(fd, cfg)) == NULL) {
    close(fd);
    return -1;
  }
  memset(&ss, 0, sizeof ss);
  if (getpeername(fd, (struct sockaddr *)&ss, &sslen) == -1)
    sslen = 0;
  server_source(c, &ss, sslen);
  if (cfg->handshake_timeout)
    c->w.deadline = nbd_now_ns() + cfg->handshake_timeout;
  if (conn_preconnect(c) == -1 || handshake_greet(c) == -1) {
    close(fd);
    conn_free(c);
  } else
    server_start_conn(cfg, c);
  server_single_wait();
  stop_wake();
  *drained = server_drain() == 0;
  park_stop();
  if (cfg->pidfile)
    unlink(cfg->pidfile);
  process_cleanup_done();
  if (stop_unwritten() > 0 || !*drained) {
    nbd_error("exiting with acknowledged writes that may not be durable "
              "(%u failed flushes at close; see above)", stop_unwritten());
    status = 1;
  }
  return status;
}

int
server_run(const struct nbd_config *cfg, int *drained)
{
  pid_t child = -1;
  int status = 0, notifying = getenv("NOTIFY_SOCKET") != NULL;
  uint64_t last_status = 0;
  struct pollfd *pfd;
  size_t i, npfd;

  *drained = 1;
  server_cfg = cfg;
  {
    char err[256];
    if (log_open(cfg->log, err, sizeof err) == -1) {
      nbd_error("log: %s", err);
      return -1;
    }
  }
  /* Bad keys stop the server here, not at the first client. */
  if (tls_server_init(cfg) != 0)
    return -1;
  process_raise_nofile(cfg);
  bufmem_set_limit(cfg->max_buffer_memory);
  if (pipe2(server_sigpipe, O_CLOEXEC | O_NONBLOCK) == -1) {
    nbd_error("pipe: %s", strerror(errno));
    return -1;
  }
  server_signals();
  stop_set_wake_fd(server_sigpipe[1]);
  if (nbd_modes.exit_with_parent)
    server_exit_with_parent();
  if (park_start(server_wake) == -1)
    return -1;
  if (metrics_start_server(cfg) == -1)
    return -1;
  if (nbd_modes.single) {
    status = server_single(cfg, drained);
    metrics_stop_server();
    return status;
  }
  if (sockets_open(cfg) == -1) {
    metrics_stop_server();
    sockets_close();
    return -1;
  }
  for (i = 0; i < sockets_count(); i++) {
    fcntl(sockets_get(i)->fd, F_SETFL,
          fcntl(sockets_get(i)->fd, F_GETFL) | O_NONBLOCK);
    nbd_info("listening on %s", sockets_get(i)->desc);
  }
  if (cfg->pidfile && process_write_pidfile(cfg->pidfile) == -1) {
    metrics_stop_server();
    sockets_close();
    return -1;
  }
  if (server_drop_privileges(cfg) == -1) {
    metrics_stop_server();
    sockets_close();
    process_cleanup_done();
    return -1;
  }
  {
    /* MAINPID: the pid systemd should watch is ours (no fork). */
    char ready[48];
    snprintf(ready, sizeof ready, "READY=1\nMAINPID=%ld\n", (long)getpid());
    pthread_mutex_lock(&server_lock);
    server_status(ready);
    pthread_mutex_unlock(&server_lock);
    last_status = nbd_now_ns();
  }
  server_print_uris(cfg);
  if (cfg->run && cfg->nlistens > 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = server_on_signal;   /* its exit stops the server */
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    if ((child = captive_start(cfg)) == -1)
      server_stopping = 1;
  }

  npfd = SOCKETS_MAX + 1 + config_max_handshakes(cfg);
  if ((pfd = calloc(npfd, sizeof *pfd)) == NULL)
    nbd_error("out of memory");
  while (pfd && !server_stopping) {
    size_t nl = sockets_count() + 1, nlobby, pos = 0;
    struct nbd_conn *c;

    cfg = reload_current();     /* a reload keeps the server settings */
    if (server_exit_idle && !server_exit_requested && server_idle())
      nbd_server_exit("the last client left");
    if (server_exit_requested && server_exit_step())
      break;

    for (i = 0; i < sockets_count(); i++) {
      pfd[i].fd = sockets_get(i)->fd;
      pfd[i].events = POLLIN;
    }
    pfd[i].fd = server_sigpipe[0];
    pfd[i].events = POLLIN;
    nlobby = lobby_pollfds(pfd + nl, npfd - nl);
    /* With clients in the lobby, wake now and then to expire them. */
    /* Under systemd, wake each second to report a changed STATUS=. */
    if (poll(pfd, nl + nlobby, nlobby ? 500 : notifying ? 1000 : -1) ==
        -1) {
      if (errno == EINTR)
        continue;
      nbd_error("poll: %s", strerror(errno));
      break;
    }
    while (!server_stopping &&
           (c = lobby_take_ready(pfd + nl, nlobby, &pos)) != NULL)
      server_start_conn(cfg, c);
    lobby_expire(nbd_now_ns());
    if (notifying && nbd_now_ns() - last_status >= 1000000000) {
      pthread_mutex_lock(&server_lock);
      if (server_status_dirty) {
        server_status("");
        last_status = nbd_now_ns();
      }
      server_status_dirty = 0;
      pthread_mutex_unlock(&server_lock);
    }
    if (__atomic_exchange_n(&server_child_pending, 0, __ATOMIC_RELAXED)) {
      siginfo_t si;
      /* Only the --run command's exit stops the server; WNOWAIT leaves
       * its status to captive_status. */
      memset(&si, 0, sizeof si);
      if (child != -1 &&
          waitid(P_PID, (id_t)child, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
          si.si_pid == child)
        server_stopping = 1;
    }
    if (pfd[nl - 1].revents & POLLIN) {
      server_on_wakeup();
      continue;                 /* the listeners may have changed */
    }
    /* Drain each ready listener (bounded, so one cannot starve others). */
    for (i = 0; i < sockets_count() && !server_stopping; i++) {
      int n;
      if (pfd[i].revents & POLLIN)
        for (n = 0; n < 64 && !server_stopping; n++)
          if (server_accept(cfg, sockets_get(i)) == -1)
            break;
    }
  }
  lobby_clear();
  free(pfd);
  nbd_info("shutting down");
  stop_wake();                  /* layers sleeping in nbd_sleep() */
  notify_systemd("STOPPING=1");
  sockets_close();
  *drained = server_drain() == 0;
  park_stop();
  metrics_stop_server();        /* it served during the drain */
  if (cfg->pidfile)
    unlink(cfg->pidfile);
  process_cleanup_done();
  if (cfg->run)
    status = child == -1 ? 1 : captive_status(child);
  if (stop_unwritten() > 0 || !*drained) {
    nbd_error("exiting with acknowledged writes that may not be durable "
              "(%u failed flushes at close; see above)", stop_unwritten());
    if (status == 0)
      status = 1;
  }
  if (*drained) {
    reload_end();               /* a set a reload made; main frees its own */
    tls_server_free();
  }
  return status;
}
