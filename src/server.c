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
#include "process.h"
#include "server.h"
#include "sockets.h"
#include "stop.h"

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
  close(c->w.fd);
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
    close(c->w.fd);
    conn_free(c);
    return;
  }
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
  c = conn_new(fd, cfg);
  if (c == NULL) {
    close(fd);
    return 0;
  }
  server_source(c, &ss, sslen);
  nbd_debug("%s: connected on %s", c->peer, l->desc);
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
  int how = SHUT_RD, r = 0;

  clock_gettime(CLOCK_REALTIME, &now);
  grace_end = now.tv_sec + SERVER_GRACE_SECONDS;
  pthread_mutex_lock(&server_lock);
  for (;;) {
    for (c = server_conns; c; c = c->next)
      shutdown(c->w.fd, how);
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
  sa.sa_handler = server_on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
}

int
server_run(const struct nbd_config *cfg, int *drained)
{
  pid_t child = -1;
  int status = 0;
  struct pollfd *pfd;
  size_t i, npfd;

  *drained = 1;
  process_raise_nofile(cfg);
  bufmem_set_limit(cfg->max_buffer_memory);
  if (pipe2(server_sigpipe, O_CLOEXEC | O_NONBLOCK) == -1) {
    nbd_error("pipe: %s", strerror(errno));
    return -1;
  }
  server_signals();
  if (sockets_open(cfg) == -1) {
    sockets_close();
    return -1;
  }
  for (i = 0; i < sockets_count(); i++) {
    fcntl(sockets_get(i)->fd, F_SETFL,
          fcntl(sockets_get(i)->fd, F_GETFL) | O_NONBLOCK);
    nbd_info("listening on %s", sockets_get(i)->desc);
  }
  if (cfg->pidfile && process_write_pidfile(cfg->pidfile) == -1) {
    sockets_close();
    return -1;
  }
  if (process_drop_privileges(cfg) == -1) {
    sockets_close();
    return -1;
  }
  notify_systemd("READY=1");
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

    for (i = 0; i < sockets_count(); i++) {
      pfd[i].fd = sockets_get(i)->fd;
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
    lobby_expire(nbd_now_ns());
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
  if (cfg->pidfile)
    unlink(cfg->pidfile);
  if (cfg->run)
    status = child == -1 ? 1 : captive_status(child);
  if (stop_unwritten() > 0 || !*drained) {
    nbd_error("exiting with acknowledged writes that may not be durable "
              "(%u failed flushes at close; see above)", stop_unwritten());
    if (status == 0)
      status = 1;
  }
  return status;
}
