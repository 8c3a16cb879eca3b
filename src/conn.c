/* nbdstack connection I/O: buffered reads, locked vectored reply writes,
 * the errno to NBD error table, and a connection's life from handshake to
 * close.  Thread management for requests is in transmission.c; accepting
 * and the list of live connections in server.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "protocol.h"

#define CONN_RBUF_SIZE (32u << 10)
#define CONN_OBUF_SIZE (64u << 10)
#define CONN_OBUF_SMALL (8u << 10)    /* replies up to this size are batched */
#define CONN_MAX_IOV   160
#define CONN_SNDBUF    (4 << 20)
#define CONN_SPIN_BACKOFF_MAX 64      /* a failed poll skips up to this many */
#define CONN_COAL_MIN   6             /* fewer requests per sleep: stop coalescing */
#define CONN_COAL_SLICES 4            /* sleeps per gathering, at most */
#define CONN_COAL_BACKOFF_MAX 1024    /* waits before coalescing is tried again */

void
conn_set_timeout(struct nbd_conn *c, uint64_t ns, int send_too)
{
  struct timeval tv;

  tv.tv_sec = (time_t)(ns / 1000000000);
  tv.tv_usec = (suseconds_t)(ns % 1000000000 / 1000);
  if (ns && tv.tv_sec == 0 && tv.tv_usec == 0)
    tv.tv_usec = 1;             /* 0 would mean "no timeout" */
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (send_too)
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* During the handshake every read gets only the time left before the
 * deadline, so a client sending one byte a second cannot hold a thread. */
static int
conn_before_read(struct nbd_conn *c)
{
  uint64_t now;

  if (c->deadline == 0)
    return 0;
  now = conn_now_ns();
  if (now >= c->deadline) {
    nbd_info("%s: handshake timed out", c->peer);
    return -1;
  }
  conn_set_timeout(c, c->deadline - now, 1);
  return 0;
}

/* A receive timeout (EAGAIN) is the idle timeout in transmission: it ends
 * the connection only when no request is in flight. */
static int
conn_retry(struct nbd_conn *c, ssize_t r)
{
  int busy;

  if (r == -1 && errno == EINTR)
    return 1;
  if (r == -1 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
      c->deadline == 0) {
    pthread_mutex_lock(&c->qlock);
    busy = c->inflight > 0;
    pthread_mutex_unlock(&c->qlock);
    if (!busy)
      nbd_info("%s: idle timeout, closing", c->peer);
    return busy;
  }
  return 0;
}

/* Receives into the free end of the input buffer. */
static ssize_t
conn_recv_more(struct nbd_conn *c, int flags)
{
  return recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, flags);
}

/* After a non-blocking read returned -1: nothing has come yet (as
 * opposed to an error). */
static int
conn_nothing_yet(void)
{
  return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

/* With requests inline on the reader, polls briefly (cfg->poll, `poll` in
 * the config) for the next request before sleeping in recv.  A client with requests in flight answers a
 * batch of replies with new requests within microseconds, and here, as on
 * any virtualised host, a sleep and wake-up costs more than that: with it,
 * fio's 4 KiB qd 32 random I/O ran 20-30% more IOPS (57k -> 71k) at about
 * 25% more CPU per request.  A client that does not answer that fast (qd 1,
 * idle) makes the poll fail, and each failure doubles the number of waits
 * that skip it, so such a connection soon costs almost nothing extra.
 * Returns what recv would, or -1 with errno EAGAIN when nothing came. */
static ssize_t
conn_spin(struct nbd_conn *c)
{
  uint64_t t0;
  ssize_t r;

  if (c->spin_skip > 0) {
    c->spin_skip--;
    errno = EAGAIN;
    return -1;
  }
  t0 = conn_now_ns();
  do {
    r = conn_recv_more(c, MSG_DONTWAIT);
    if (r >= 0 || !conn_nothing_yet()) {
      c->spin_backoff = 0;
      return r;
    }
  } while (conn_now_ns() - t0 < c->cfg->poll);
  c->spin_backoff = c->spin_backoff == 0 ? 1
                    : c->spin_backoff >= CONN_SPIN_BACKOFF_MAX / 2
                      ? CONN_SPIN_BACKOFF_MAX : 2 * c->spin_backoff;
  c->spin_skip = c->spin_backoff;
  errno = EAGAIN;
  return -1;
}

/* Counts the requests whose header is in the input buffer. */
static unsigned
conn_count_requests(const struct nbd_conn *c)
{
  const unsigned char *p = (const unsigned char *)c->rbuf + c->rpos;
  size_t left = c->rlen - c->rpos, need;
  unsigned n = 0;

  while (left >= NBD_REQUEST_SIZE) {
    n++;
    need = NBD_REQUEST_SIZE;
    if (wire_get16(p + 6) == NBD_CMD_WRITE)
      need += wire_get32(p + 24);
    if (left < need)
      break;
    p += need;
    left -= need;
  }
  return n;
}

static void
conn_coalesce_backoff(struct nbd_conn *c)
{
  c->coal_on = 0;
  c->coal_stop = 0;
  c->coal_backoff = c->coal_backoff == 0 ? 1
                    : c->coal_backoff >= CONN_COAL_BACKOFF_MAX / 2
                      ? CONN_COAL_BACKOFF_MAX : 2 * c->coal_backoff;
  c->coal_skip = c->coal_backoff;
}

/* Called with an empty socket while the reader waits for a new request.
 * A client that keeps many 4 KiB requests in flight sends them one at a
 * time as it takes each reply, so a reader that answers every request at
 * once sleeps and wakes (or polls) once per request, and on this virtual
 * machine that costs more than the request itself.  Here the reader
 * sleeps for a slice of cfg->coalesce, takes what came, and sleeps again
 * while more keeps coming, up to CONN_COAL_SLICES slices, then answers
 * the whole batch in one reply write.
 *
 * It must not make a client wait that has no more to send: a slice that
 * brings nothing ends the gathering, and the count it ended at (the
 * client's queue depth, roughly) bounds later ones to 3/4 of it, so the
 * client still has replies to work on while the server sleeps.  A
 * gathering of fewer than CONN_COAL_MIN requests (qd 1, a slow or idle
 * client) turns coalescing off for 1, 2, 4 ... CONN_COAL_BACKOFF_MAX
 * waits before it is tried again.
 *
 * Returns the bytes added to rbuf, 0 at end of file, or -1: errno EAGAIN
 * when nothing came (the caller waits as usual). */
static ssize_t
conn_coalesce(struct nbd_conn *c)
{
  struct timespec slice;
  uint64_t ns;
  size_t got = 0;
  ssize_t r;
  unsigned n = 0, i;

  if (!c->coal_on) {
    if (c->coal_skip > 0) {
      c->coal_skip--;
      errno = EAGAIN;
      return -1;
    }
    c->coal_on = 1;             /* try it */
  }
  c->coal_tries++;
  if (!c->coal_slack_set) {
    /* Sleeps of tens of microseconds: the default 50 us timer slack
     * would double them. */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
    c->coal_slack_set = 1;
  }
  ns = c->cfg->coalesce / CONN_COAL_SLICES;
  slice.tv_sec = 0;
  slice.tv_nsec = (long)ns;
  for (i = 0; i < CONN_COAL_SLICES; i++) {
    nanosleep(&slice, NULL);
    r = conn_recv_more(c, MSG_DONTWAIT);
    if (r == 0 || (r == -1 && !conn_nothing_yet())) {
      if (got > 0)
        break;                  /* answer what came; the end shows next */
      return r;
    }
    if (r <= 0) {
      /* Nothing more: the client is waiting for us (or idle). */
      unsigned stop = 3 * n / 4 > CONN_COAL_MIN ? 3 * n / 4 : CONN_COAL_MIN;

      if (n > 0 && (c->coal_stop == 0 || stop < c->coal_stop))
        c->coal_stop = stop;
      break;
    }
    c->rlen += (size_t)r;
    got += (size_t)r;
    n = conn_count_requests(c);
    if ((c->coal_stop && n >= c->coal_stop) || c->rlen == c->rcap)
      break;
  }
  if (n < CONN_COAL_MIN)
    conn_coalesce_backoff(c);
  else {
    c->coal_backoff = 0;
    c->coal_batches++;
  }
  if (got == 0) {
    errno = EAGAIN;
    return -1;
  }
  return (ssize_t)got;
}

/* Fills the input buffer with whatever is available (at least 1 byte). */
static int
conn_fill(struct nbd_conn *c)
{
  ssize_t r;

  if (c->rbuf == NULL) {
    c->rbuf = malloc(CONN_RBUF_SIZE);
    if (c->rbuf == NULL)
      return -1;
    c->rcap = CONN_RBUF_SIZE;
  }
  if (c->rpos == c->rlen)
    c->rpos = c->rlen = 0;
  /* About to wait for the client: batched replies must leave first. */
  if (c->olen && conn_flush(c) == -1)
    return -1;
  r = -1;
  if (c->obuf && c->deadline == 0 && c->at_request && c->cfg->coalesce) {
    r = conn_recv_more(c, MSG_DONTWAIT);
    if (r == -1 && conn_nothing_yet()) {
      r = conn_coalesce(c);
      if (r > 0)
        return 0;               /* conn_coalesce added it to rlen */
    }
    if (r == -1 && !conn_nothing_yet())
      return -1;
  }
  if (r == -1 && c->obuf && c->deadline == 0 && c->cfg->poll &&
      (r = conn_spin(c)) == -1 && errno != EAGAIN)
    return -1;
  if (r == -1)                  /* nothing came while gathering or polling */
    do {
      if (conn_before_read(c) == -1)
        return -1;
      r = conn_recv_more(c, 0);
    } while (conn_retry(c, r));
  if (r <= 0)
    return -1;
  c->rlen += (size_t)r;
  return 0;
}

/* Moves iov past r bytes; returns the iovecs left. */
static int
conn_iov_advance(struct iovec **iov, int n, size_t r)
{
  while (n > 0 && r >= (*iov)->iov_len) {
    r -= (*iov)->iov_len;
    (*iov)++;
    n--;
  }
  if (n > 0) {
    (*iov)->iov_base = (char *)(*iov)->iov_base + r;
    (*iov)->iov_len -= r;
  }
  return n;
}

static ssize_t
conn_recvv(struct nbd_conn *c, struct iovec *iov, int n, int flags)
{
  struct msghdr msg;

  memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = n > CONN_MAX_IOV ? CONN_MAX_IOV : n;
  return recvmsg(c->fd, &msg, flags);
}

/* Before a large payload is waited for asleep: takes what arrives within
 * the poll time of the last piece, without sleeping.  A client's 1 MiB
 * write comes in pieces of its socket send buffer (208 KiB by default),
 * and a blocking recv sleeps and wakes for each; perf put 16% of the
 * server's CPU for 1 MiB qd 16 writes in those waits.  Polling through
 * them: 3257-4548 -> 3680-4708 MiB/s over 6 alternated runs, at about the
 * same CPU per request.  Only inline connections (obuf set) poll, as in
 * conn_spin.  Returns the iovecs still to fill, or -1 on EOF or error. */
static int
conn_spin_payload(struct nbd_conn *c, struct iovec **iov, int n)
{
  uint64_t t0 = conn_now_ns();
  ssize_t r;

  while (n > 0 && conn_now_ns() - t0 < c->cfg->poll) {
    r = conn_recvv(c, *iov, n, MSG_DONTWAIT);
    if (r > 0) {
      n = conn_iov_advance(iov, n, (size_t)r);
      t0 = conn_now_ns();
    } else if (r == 0 || !conn_nothing_yet())
      return -1;
  }
  return n;
}

int
conn_readv(struct nbd_conn *c, struct iovec *iov, int n)
{
  while (n > 0) {
    size_t avail = c->rlen - c->rpos, want = 0;
    ssize_t r;
    int i;

    if (iov->iov_len == 0) {
      iov++;
      n--;
      continue;
    }
    if (avail > 0) {
      size_t k = avail < iov->iov_len ? avail : iov->iov_len;
      memcpy(iov->iov_base, c->rbuf + c->rpos, k);
      c->rpos += k;
      n = conn_iov_advance(&iov, n, k);
      continue;
    }
    for (i = 0; i < n && want < CONN_RBUF_SIZE / 2; i++)
      want += iov[i].iov_len;
    if (want < CONN_RBUF_SIZE / 2) {
      if (conn_fill(c) == -1)
        return -1;
      continue;
    }
    /* Large payloads go straight into the caller's buffers. */
    if (c->olen && conn_flush(c) == -1)
      return -1;
    if (c->obuf && c->deadline == 0 && c->cfg->poll &&
        (n = conn_spin_payload(c, &iov, n)) <= 0)
      return n;
    do {
      if (conn_before_read(c) == -1)
        return -1;
      r = conn_recvv(c, iov, n, MSG_WAITALL);
    } while (conn_retry(c, r));
    if (r <= 0)
      return -1;
    n = conn_iov_advance(&iov, n, (size_t)r);
  }
  return 0;
}

int
conn_read(struct nbd_conn *c, void *buf, size_t len)
{
  struct iovec iov = { buf, len };

  /* Request headers are usually buffered already. */
  if (c->rlen - c->rpos >= len) {
    memcpy(buf, c->rbuf + c->rpos, len);
    c->rpos += len;
    return 0;
  }
  return conn_readv(c, &iov, 1);
}

int
conn_skip(struct nbd_conn *c, size_t len)
{
  char tmp[4096];

  while (len > 0) {
    size_t n = len < sizeof tmp ? len : sizeof tmp;
    if (conn_read(c, tmp, n) == -1)
      return -1;
    len -= n;
  }
  return 0;
}

/* Sends every iovec; caller holds wlock. */
static int
conn_send_locked(struct nbd_conn *c, struct iovec *iov, int n)
{
  struct msghdr msg;
  ssize_t r;

  while (n > 0) {
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    r = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      c->write_failed = 1;
      return -1;
    }
    n = conn_iov_advance(&iov, n, (size_t)r);
  }
  return 0;
}

static int
conn_flush_locked(struct nbd_conn *c)
{
  struct iovec iov = { c->obuf, c->olen };

  if (c->olen == 0)
    return 0;
  c->olen = 0;
  return conn_send_locked(c, &iov, 1);
}

int
conn_flush(struct nbd_conn *c)
{
  int r;

  pthread_mutex_lock(&c->wlock);
  r = c->write_failed ? -1 : conn_flush_locked(c);
  pthread_mutex_unlock(&c->wlock);
  return r;
}

/* With batching on (requests running inline on the reader), small replies
 * collect in obuf and leave in one sendmsg before the reader next waits
 * for input: pipelined 4 KiB requests then cost one syscall per batch
 * instead of one per reply.  A large reply goes out with the batch in
 * front of it, still one sendmsg. */
static int
conn_batch_locked(struct nbd_conn *c, struct iovec *iov, int n)
{
  struct iovec all[CONN_MAX_IOV + 1];
  size_t total = 0;
  int i;

  for (i = 0; i < n; i++)
    total += iov[i].iov_len;
  if (total <= CONN_OBUF_SMALL) {
    if (c->olen + total > CONN_OBUF_SIZE && conn_flush_locked(c) == -1)
      return -1;
    for (i = 0; i < n; i++) {
      memcpy(c->obuf + c->olen, iov[i].iov_base, iov[i].iov_len);
      c->olen += iov[i].iov_len;
    }
    return 0;
  }
  if (c->olen == 0 || n > CONN_MAX_IOV) {
    if (conn_flush_locked(c) == -1)
      return -1;
    return conn_send_locked(c, iov, n);
  }
  all[0].iov_base = c->obuf;
  all[0].iov_len = c->olen;
  memcpy(all + 1, iov, (size_t)n * sizeof *iov);
  c->olen = 0;
  return conn_send_locked(c, all, n + 1);
}

int
conn_writev(struct nbd_conn *c, struct iovec *iov, int n)
{
  int ret;

  pthread_mutex_lock(&c->wlock);
  if (c->write_failed)
    ret = -1;
  else if (c->obuf)
    ret = conn_batch_locked(c, iov, n);
  else
    ret = conn_send_locked(c, iov, n);
  pthread_mutex_unlock(&c->wlock);
  return ret;
}

int
conn_batch_start(struct nbd_conn *c)
{
  c->obuf = malloc(CONN_OBUF_SIZE);
  c->olen = 0;
  return c->obuf ? 0 : -1;
}

void
conn_batch_stop(struct nbd_conn *c)
{
  conn_flush(c);
  pthread_mutex_lock(&c->wlock);
  free(c->obuf);
  c->obuf = NULL;
  pthread_mutex_unlock(&c->wlock);
}

/* The one errno → NBD error table (proto.md "Error values"): EDQUOT and
 * EFBIG map to ENOSPC, EROFS to EPERM, anything unknown to EIO. */
uint32_t
conn_nbd_error(int err)
{
  if (err < 0)
    err = -err;
  switch (err) {
  case 0: return 0;
  case EPERM: case EROFS: case EACCES: return NBD_EPERM;
  case EIO: return NBD_EIO;
  case ENOMEM: return NBD_ENOMEM;
  case EINVAL: case ERANGE: return NBD_EINVAL;
  case ENOSPC: case EDQUOT: case EFBIG: return NBD_ENOSPC;
  case EOVERFLOW: return NBD_EOVERFLOW;
  case ENOTSUP: return NBD_ENOTSUP;
  case ESHUTDOWN: return NBD_ESHUTDOWN;
  default: return NBD_EIO;
  }
}

struct nbd_conn *
conn_new(int fd, const struct nbd_config *cfg)
{
  struct nbd_conn *c = calloc(1, sizeof *c);

  if (c == NULL)
    return NULL;
  c->fd = fd;
  c->cfg = cfg;
  snprintf(c->peer, sizeof c->peer, "unix client fd %d", fd);
  pthread_mutex_init(&c->wlock, NULL);
  pthread_mutex_init(&c->qlock, NULL);
  pthread_cond_init(&c->qcond, NULL);
  pthread_cond_init(&c->donecond, NULL);
  return c;
}

void
conn_free(struct nbd_conn *c)
{
  pthread_mutex_destroy(&c->wlock);
  pthread_mutex_destroy(&c->qlock);
  pthread_cond_destroy(&c->qcond);
  pthread_cond_destroy(&c->donecond);
  free(c->rbuf);
  free(c->obuf);
  free(c->meta_export);
  free(c);
}

uint64_t
conn_now_ns(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

void
conn_release_export(struct nbd_conn *c)
{
  int r;

  if (c->top) {
    if ((r = engine_close(c->top)) < 0)
      nbd_error("%s: close failed: %s", c->peer, strerror(-r));
    c->top = NULL;
  }
  if (c->serial_lock_held) {
    pthread_mutex_unlock(&c->exp->lock);
    c->serial_lock_held = 0;
  }
  if (c->counted) {
    __atomic_sub_fetch(&c->exp->nconnections, 1, __ATOMIC_SEQ_CST);
    c->counted = 0;
  }
}

/* A Unix socket's default send buffer (208 KiB) is a fifth of a 1 MiB read
 * reply, so the reader slept and woke about five times per reply.  With
 * room for a few whole replies, fio's 1 MiB qd 16 reads ran 3349 -> 4453
 * IOPS here.  The kernel caps the value (net.core.wmem_max).  TCP sockets
 * keep the kernel's autotuning, which a fixed size would switch off. */
static void
conn_size_sndbuf(struct nbd_conn *c)
{
  struct sockaddr_storage ss = { 0 };
  socklen_t len = sizeof ss;
  int v = CONN_SNDBUF;

  if (getsockname(c->fd, (struct sockaddr *)&ss, &len) == 0 &&
      ss.ss_family == AF_UNIX)
    (void)setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
}

int
conn_handshake(struct nbd_conn *c)
{
  /* The deadline runs from accept when the server set it there. */
  if (c->cfg->handshake_timeout && c->deadline == 0)
    c->deadline = conn_now_ns() + c->cfg->handshake_timeout;
  if (handshake_run(c) == -1)
    return -1;
  c->deadline = 0;
  conn_set_timeout(c, 0, 1);
  if (c->cfg->idle_timeout)
    conn_set_timeout(c, c->cfg->idle_timeout, 0);
  conn_size_sndbuf(c);
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

/* Flush what this client wrote, so nothing acknowledged lingers in a
 * layer's cache (and SIGTERM, which ends every connection, flushes every
 * export).  The client did not ask for it and must not wait for it:
 * libnbd waits for the close after DISC, and an fdatasync here made
 * nbdcopy into a file take twice as long. */
void
conn_finish(struct nbd_conn *c)
{
  int r;

  shutdown(c->fd, SHUT_RDWR);
  if (c->top && c->top->can_flush && c->top->can_write &&
      __atomic_load_n(&c->wrote, __ATOMIC_RELAXED) &&
      (r = next_flush(c->top, 0)) < 0) {
    nbd_error("%s: export \"%s\": flush at close failed: %s: writes "
              "acknowledged to this client may not be durable", c->peer,
              c->exp->name, strerror(-r));
    stop_note_unwritten();
  }
  conn_release_export(c);
  nbd_debug("%s: connection closed", c->peer);
}
