/* nbdstack wire I/O: the one place that reads from and writes to a
 * connection's socket.  Input is buffered (requests are parsed out of
 * rbuf; large payloads go straight into the caller's buffers); replies
 * are written whole under one lock, one vectored write each, and while
 * requests run inline on the reader small replies are batched and leave
 * in one write before the reader next waits.  When to poll and when to
 * sleep to gather requests is iopolicy.c's decision; what the bytes mean
 * is protocol.c's and handshake.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "layer.h"
#include "protocol.h"
#include "tls.h"
#include "wire.h"

static void wire_drop_pipe(struct nbd_wire *w);

#define WIRE_RBUF_SIZE (32u << 10)
#define WIRE_OBUF_SIZE (64u << 10)
#define WIRE_OBUF_SMALL (8u << 10)    /* replies up to this size are batched */
#define WIRE_MAX_IOV   160
#define WIRE_SNDBUF    (4 << 20)
#define WIRE_SNDBUF_TLS (1 << 20)

void
wire_set_timeout(struct nbd_wire *w, uint64_t ns, int send_too)
{
  struct timeval tv;

  w->rcvtimeo = ns;
  if (send_too)
    w->sndtimeo = ns;
  tv.tv_sec = (time_t)(ns / 1000000000);
  tv.tv_usec = (suseconds_t)(ns % 1000000000 / 1000);
  if (ns && tv.tv_sec == 0 && tv.tv_usec == 0)
    tv.tv_usec = 1;             /* 0 would mean "no timeout" */
  setsockopt(w->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (send_too)
    setsockopt(w->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* During the handshake every read gets only the time left before the
 * deadline, so a client sending one byte a second cannot hold a thread. */
static int
wire_before_read(struct nbd_wire *w)
{
  uint64_t now;

  if (w->deadline == 0)
    return 0;
  now = nbd_now_ns();
  if (now >= w->deadline) {
    nbd_info("%s: handshake timed out", w->peer);
    return -1;
  }
  wire_set_timeout(w, w->deadline - now, 1);
  return 0;
}

/* A receive timeout (EAGAIN) is the idle timeout in transmission: it ends
 * the connection only when no request is in flight. */
static int
wire_retry(struct nbd_wire *w, ssize_t r)
{
  int busy;

  if (r == -1 && errno == EINTR)
    return 1;
  if (r == -1 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
      w->deadline == 0) {
    busy = atomic_load(&w->busy) > 0;
    if (!busy)
      nbd_info("%s: idle timeout, closing", w->peer);
    return busy;
  }
  return 0;
}

/* The plain socket's pair (struct wire_io). */
static ssize_t
wire_plain_recvv(struct nbd_wire *w, struct iovec *iov, int n, int flags)
{
  struct msghdr msg;

  memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = n;
  return recvmsg(w->fd, &msg, flags);
}

static ssize_t
wire_plain_sendv(struct nbd_wire *w, struct iovec *iov, int n)
{
  struct msghdr msg;

  memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = n;
  return sendmsg(w->fd, &msg, MSG_NOSIGNAL);
}

static const struct wire_io wire_plain = {
  wire_plain_recvv, wire_plain_sendv, NULL, NULL, NULL
};

/* Receives into the free end of the input buffer. */
static ssize_t
wire_recv_more(struct nbd_wire *w, int flags)
{
  struct iovec iov = { w->rbuf + w->rlen, w->rcap - w->rlen };

  return w->io->recvv(w, &iov, 1, flags);
}

/* After a non-blocking read returned -1: nothing has come yet (as
 * opposed to an error). */
static int
wire_nothing_yet(void)
{
  return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

/* Polls briefly for the next request before the reader sleeps, when the
 * I/O policy says so (iopolicy.c).  Returns what recv would, or -1 with
 * errno EAGAIN when nothing came. */
static ssize_t
wire_spin(struct nbd_wire *w)
{
  uint64_t t0, ns;
  ssize_t r;

  if (!iopolicy_poll_begin(&w->pol, &ns)) {
    errno = EAGAIN;
    return -1;
  }
  t0 = nbd_now_ns();
  do {
    r = wire_recv_more(w, MSG_DONTWAIT);
    if (r >= 0 || !wire_nothing_yet()) {
      iopolicy_poll_end(&w->pol, 1);
      return r;
    }
    /* The client may be waiting for this CPU (the kernel often wakes
     * it here): let it run rather than poll it out of its turn. */
    sched_yield();
  } while (nbd_now_ns() - t0 < ns);
  iopolicy_poll_end(&w->pol, 0);
  errno = EAGAIN;
  return -1;
}

/* Counts the requests whose header is in the input buffer. */
static unsigned
wire_count_requests(const struct nbd_wire *w)
{
  const unsigned char *p = (const unsigned char *)w->rbuf + w->rpos;
  size_t left = w->rlen - w->rpos;
  uint64_t need;
  unsigned n = 0;

  while (left >= NBD_REQUEST_SIZE) {
    n++;
    if (wire_get32(p) == NBD_EXTENDED_REQUEST_MAGIC) {
      need = NBD_EXTENDED_REQUEST_SIZE;
      if (left >= need && (wire_get16(p + 6) == NBD_CMD_WRITE ||
                           (wire_get16(p + 4) & NBD_CMD_FLAG_PAYLOAD_LEN)))
        need += wire_get64(p + 24) < left ? wire_get64(p + 24) : left;
    } else {
      need = NBD_REQUEST_SIZE;
      if (wire_get16(p + 6) == NBD_CMD_WRITE)
        need += wire_get32(p + 24);
    }
    if (left < need)
      break;
    p += need;
    left -= need;
  }
  return n;
}

/* With an empty socket while the reader waits for a new request: sleeps
 * in slices to gather the requests of a client that keeps many in
 * flight, as long as the I/O policy says so (iopolicy.c).  Returns the
 * bytes added to rbuf, 0 at end of file, or -1: errno EAGAIN when
 * nothing came (the caller waits as usual). */
static ssize_t
wire_coalesce(struct nbd_wire *w)
{
  struct timespec slice;
  uint64_t ns;
  size_t got = 0;
  ssize_t r;
  unsigned n = 0, i;

  if (!iopolicy_coalesce_begin(&w->pol, &ns)) {
    errno = EAGAIN;
    return -1;
  }
  slice.tv_sec = 0;
  slice.tv_nsec = (long)ns;
  for (i = 0; i < IOPOLICY_COAL_SLICES; i++) {
    nanosleep(&slice, NULL);
    r = wire_recv_more(w, MSG_DONTWAIT);
    if (r == 0 || (r == -1 && !wire_nothing_yet())) {
      if (got > 0)
        break;                  /* answer what came; the end shows next */
      return r;
    }
    if (r <= 0) {
      iopolicy_coalesce_idle(&w->pol, n);
      break;
    }
    w->rlen += (size_t)r;
    got += (size_t)r;
    n = wire_count_requests(w);
    if (!iopolicy_coalesce_more(&w->pol, n, w->rlen == w->rcap))
      break;
  }
  iopolicy_coalesce_end(&w->pol, n);
  if (got == 0) {
    errno = EAGAIN;
    return -1;
  }
  return (ssize_t)got;
}

/* An idle connection, about to sleep for its next request with none in
 * flight: waits park_ns for it, and when none came, gives the input
 * buffer back and says so (parked; the caller's thread goes, and
 * park.c's event loop holds the socket).  A TLS session may hold input
 * the socket no longer shows (a decrypted record not yet read, part of
 * the next): then the reader reads on instead (io->park).  Returns 1
 * when parked, 0 to read as usual. */
static int
wire_park(struct nbd_wire *w)
{
  struct pollfd p;
  int r;

  if (w->park_ns == 0 || !w->at_request || w->deadline ||
      atomic_load(&w->busy) > 0 ||
      (w->io->park && w->io->park(w, 0) == -1))
    return 0;
  p.fd = w->fd;
  p.events = POLLIN;
  do
    r = poll(&p, 1, (int)(w->park_ns / 1000000));
  while (r == -1 && errno == EINTR);
  if (r != 0)
    return 0;                   /* input, end of file or error: read it */
  if (w->io->park) {
    pthread_mutex_lock(&w->wlock);
    r = w->io->park(w, 1);
    pthread_mutex_unlock(&w->wlock);
    if (r == -1)
      return 0;
  }
  free(w->rbuf);
  w->rbuf = NULL;
  w->rcap = w->rpos = w->rlen = 0;
  wire_drop_pipe(w);
  w->parked = 1;
  return 1;
}

/* Fills the input buffer with whatever is available (at least 1 byte). */
static int
wire_fill(struct nbd_wire *w)
{
  ssize_t r;

  if (w->rbuf == NULL) {
    w->rbuf = malloc(WIRE_RBUF_SIZE);
    if (w->rbuf == NULL)
      return -1;
    w->rcap = WIRE_RBUF_SIZE;
  }
  if (w->rpos == w->rlen)
    w->rpos = w->rlen = 0;
  /* About to wait for the client: batched replies must leave first. */
  if (w->olen && wire_flush(w) == -1)
    return -1;
  r = -1;
  if (w->obuf && w->deadline == 0 && w->at_request && w->pol.coalesce_ns) {
    r = wire_recv_more(w, MSG_DONTWAIT);
    if (r == -1 && wire_nothing_yet()) {
      r = wire_coalesce(w);
      if (r > 0)
        return 0;               /* wire_coalesce added it to rlen */
    }
    if (r == -1 && !wire_nothing_yet())
      return -1;
  }
  if (r == -1 && w->obuf && w->deadline == 0 && w->pol.poll_ns &&
      (r = wire_spin(w)) == -1 && errno != EAGAIN)
    return -1;
  if (r == -1 && wire_park(w)) {
    errno = EAGAIN;
    return -1;
  }
  if (r == -1)                  /* nothing came while gathering or polling */
    do {
      if (wire_before_read(w) == -1)
        return -1;
      r = wire_recv_more(w, 0);
    } while (wire_retry(w, r));
  if (r <= 0)
    return -1;
  w->rlen += (size_t)r;
  return 0;
}

/* Moves iov past r bytes; returns the iovecs left. */
static int
wire_iov_advance(struct iovec **iov, int n, size_t r)
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
wire_recvv(struct nbd_wire *w, struct iovec *iov, int n, int flags)
{
  return w->io->recvv(w, iov, n > WIRE_MAX_IOV ? WIRE_MAX_IOV : n, flags);
}

/* A client sending a large payload keeps its pieces coming within a few
 * microseconds; a longer poll only takes CPU time from it (nbdcopy
 * writing with 2 CPUs shared). */
#define WIRE_PAYLOAD_POLL_NS 12000

/* Before a large payload is waited for asleep: takes what arrives within
 * the poll time of the last piece, without sleeping.  A client's 1 MiB
 * write comes in pieces of its socket send buffer, and a blocking recv
 * would sleep and wake for each, which costs more than polling through
 * them.  Only inline connections (obuf set) poll, as in wire_spin.
 * Returns the iovecs still to fill, or -1 on EOF or error. */
static int
wire_spin_payload(struct nbd_wire *w, struct iovec **iov, int n)
{
  uint64_t t0 = nbd_now_ns(), ns = w->pol.poll_ns;
  ssize_t r;

  if (ns > WIRE_PAYLOAD_POLL_NS)
    ns = WIRE_PAYLOAD_POLL_NS;
  while (n > 0 && nbd_now_ns() - t0 < ns) {
    r = wire_recvv(w, *iov, n, MSG_DONTWAIT);
    if (r > 0) {
      n = wire_iov_advance(iov, n, (size_t)r);
      t0 = nbd_now_ns();
    } else if (r == 0 || !wire_nothing_yet())
      return -1;
    else
      sched_yield();            /* as in wire_spin */
  }
  return n;
}

int
wire_readv(struct nbd_wire *w, struct iovec *iov, int n)
{
  while (n > 0) {
    size_t avail = w->rlen - w->rpos, want = 0;
    ssize_t r;
    int i;

    if (iov->iov_len == 0) {
      iov++;
      n--;
      continue;
    }
    if (avail > 0) {
      size_t k = avail < iov->iov_len ? avail : iov->iov_len;
      /* Part of a request is taken: the rest is not a new request, and
       * the reader must not park (the part would be lost with it). */
      w->at_request = 0;
      memcpy(iov->iov_base, w->rbuf + w->rpos, k);
      w->rpos += k;
      n = wire_iov_advance(&iov, n, k);
      continue;
    }
    for (i = 0; i < n && want < WIRE_RBUF_SIZE / 2; i++)
      want += iov[i].iov_len;
    if (want < WIRE_RBUF_SIZE / 2) {
      if (wire_fill(w) == -1)
        return -1;
      continue;
    }
    /* Large payloads go straight into the caller's buffers. */
    if (w->olen && wire_flush(w) == -1)
      return -1;
    if (w->obuf && w->deadline == 0 && w->pol.poll_ns &&
        (n = wire_spin_payload(w, &iov, n)) <= 0)
      return n;
    do {
      if (wire_before_read(w) == -1)
        return -1;
      r = wire_recvv(w, iov, n, MSG_WAITALL);
    } while (wire_retry(w, r));
    if (r <= 0)
      return -1;
    n = wire_iov_advance(&iov, n, (size_t)r);
  }
  return 0;
}

int
wire_read(struct nbd_wire *w, void *buf, size_t len)
{
  struct iovec iov = { buf, len };

  /* Request headers are usually buffered already. */
  if (w->rlen - w->rpos >= len) {
    memcpy(buf, w->rbuf + w->rpos, len);
    w->rpos += len;
    return 0;
  }
  return wire_readv(w, &iov, 1);
}

const void *
wire_take(struct nbd_wire *w, size_t len)
{
  const char *p = w->rbuf + w->rpos;

  if (w->rlen - w->rpos < len)
    return NULL;
  if (len > 0)
    w->at_request = 0;          /* as in wire_readv */
  w->rpos += len;
  return p;
}

int
wire_skip(struct nbd_wire *w, size_t len)
{
  char tmp[4096];

  while (len > 0) {
    size_t n = len < sizeof tmp ? len : sizeof tmp;
    if (wire_read(w, tmp, n) == -1)
      return -1;
    len -= n;
  }
  return 0;
}

/* Sends every iovec; caller holds wlock. */
static int
wire_send_locked(struct nbd_wire *w, struct iovec *iov, int n)
{
  ssize_t r;

  while (n > 0) {
    r = w->io->sendv(w, iov, n);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      w->write_failed = 1;
      return -1;
    }
    n = wire_iov_advance(&iov, n, (size_t)r);
  }
  return 0;
}

static int
wire_flush_locked(struct nbd_wire *w)
{
  struct iovec iov = { w->obuf, w->olen };

  if (w->olen == 0)
    return 0;
  w->olen = 0;
  return wire_send_locked(w, &iov, 1);
}

int
wire_flush(struct nbd_wire *w)
{
  int r;

  pthread_mutex_lock(&w->wlock);
  r = w->write_failed ? -1 : wire_flush_locked(w);
  pthread_mutex_unlock(&w->wlock);
  return r;
}

/* With batching on (requests running inline on the reader), small replies
 * collect in obuf and leave in one sendmsg before the reader next waits
 * for input: pipelined 4 KiB requests then cost one syscall per batch
 * instead of one per reply.  A large reply goes out with the batch in
 * front of it, still one sendmsg. */
static int
wire_batch_locked(struct nbd_wire *w, struct iovec *iov, int n)
{
  struct iovec all[WIRE_MAX_IOV + 1];
  size_t total = 0;
  int i;

  for (i = 0; i < n; i++)
    total += iov[i].iov_len;
  if (total <= WIRE_OBUF_SMALL) {
    if (w->olen + total > WIRE_OBUF_SIZE && wire_flush_locked(w) == -1)
      return -1;
    for (i = 0; i < n; i++) {
      memcpy(w->obuf + w->olen, iov[i].iov_base, iov[i].iov_len);
      w->olen += iov[i].iov_len;
    }
    return 0;
  }
  if (w->olen == 0 || n > WIRE_MAX_IOV) {
    if (wire_flush_locked(w) == -1)
      return -1;
    return wire_send_locked(w, iov, n);
  }
  all[0].iov_base = w->obuf;
  all[0].iov_len = w->olen;
  memcpy(all + 1, iov, (size_t)n * sizeof *iov);
  w->olen = 0;
  return wire_send_locked(w, all, n + 1);
}

int
wire_writev(struct nbd_wire *w, struct iovec *iov, int n)
{
  int ret;

  pthread_mutex_lock(&w->wlock);
  if (w->write_failed)
    ret = -1;
  else if (w->obuf && pthread_equal(w->batch_owner, pthread_self()))
    ret = wire_batch_locked(w, iov, n);
  else
    ret = wire_send_locked(w, iov, n);
  pthread_mutex_unlock(&w->wlock);
  return ret;
}

int
wire_can_reserve(const struct nbd_wire *w, size_t len)
{
  return w->obuf != NULL && len <= WIRE_OBUF_SMALL;
}

/* Replies of pipelined 4 KiB reads are the bulk of what is batched: built
 * in place, their data is copied once (from the layer into the batch)
 * instead of twice (into the request's buffer, then into the batch). */
char *
wire_reserve(struct nbd_wire *w, size_t len)
{
  if (!wire_can_reserve(w, len))
    return NULL;
  pthread_mutex_lock(&w->wlock);
  if (w->write_failed ||
      (w->olen + len > WIRE_OBUF_SIZE && wire_flush_locked(w) == -1)) {
    pthread_mutex_unlock(&w->wlock);
    return NULL;
  }
  return w->obuf + w->olen;
}

void
wire_commit(struct nbd_wire *w, size_t len)
{
  w->olen += len;
  pthread_mutex_unlock(&w->wlock);
}

/* ---- data straight from a layer's storage ---------------------------------- */

/* A 1 MiB read reply copied once in user space (from the layer into the
 * request's buffer) and once in the kernel (into the socket): the first
 * copy was half the server's CPU in perf.  With a few MiB of send buffer
 * the socket takes a whole reply at once while the client keeps up, and
 * the kernel's copy is then the only one. */
int
wire_can_push(const struct nbd_wire *w)
{
  return w->obuf != NULL && w->io == &wire_plain && w->deadline == 0;
}

int
wire_push_begin(struct wire_push *p, struct nbd_wire *w, const void *hdr,
                size_t hlen, char *spill)
{
  memset(p, 0, sizeof *p);
  if (hlen > sizeof p->hdr)
    return -1;
  p->w = w;
  memcpy(p->hdr, hdr, hlen);
  p->hlen = hlen;
  p->spill = spill;
  pthread_mutex_lock(&w->wlock);
  if (w->write_failed || wire_flush_locked(w) == -1) {
    pthread_mutex_unlock(&w->wlock);
    return -1;
  }
  return 0;
}

/* Copies the iovecs' bytes from the skip-th on into spill at p->off. */
static void
wire_push_spill(struct wire_push *p, const struct iovec *iov, int n,
                size_t skip)
{
  int i;

  for (i = 0; i < n; i++) {
    size_t l = iov[i].iov_len;
    if (skip >= l) {
      skip -= l;
      continue;
    }
    memcpy(p->spill + p->off, (const char *)iov[i].iov_base + skip, l - skip);
    p->off += l - skip;
    skip = 0;
  }
}

int
wire_push(struct wire_push *p, const struct iovec *iov, int n)
{
  struct iovec v[WIRE_MAX_IOV + 1];
  struct msghdr msg;
  size_t sent = 0, t;
  ssize_t r;
  int k = 0, m = n > WIRE_MAX_IOV ? WIRE_MAX_IOV : n;

  if (p->w->write_failed)
    return -1;
  if (!p->spilling) {
    if (p->hsent < p->hlen) {
      v[k].iov_base = p->hdr + p->hsent;
      v[k++].iov_len = p->hlen - p->hsent;
    }
    memcpy(v + k, iov, (size_t)m * sizeof *iov);
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = v;
    msg.msg_iovlen = (size_t)k + (size_t)m;
    do
      r = sendmsg(p->w->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (r == -1 && errno == EINTR);
    if (r == -1 && !wire_nothing_yet()) {
      p->w->write_failed = 1;
      return -1;
    }
    sent = r > 0 ? (size_t)r : 0;
    t = p->hlen - p->hsent < sent ? p->hlen - p->hsent : sent;
    p->hsent += t;
    sent -= t;
    p->spilling = 1;            /* unless all of it went, below */
    p->spill_from = p->off + sent;
    if (p->hsent == p->hlen && m == n) {
      size_t total = 0;
      int i;
      for (i = 0; i < n; i++)
        total += iov[i].iov_len;
      if (sent == total) {
        p->spilling = 0;
        p->off += total;
        return 0;
      }
    }
    p->off += sent;
  }
  wire_push_spill(p, iov, n, sent);
  return 0;
}

int
wire_push_end(struct wire_push *p, int ok)
{
  struct nbd_wire *w = p->w;
  struct iovec v[2];
  int r = 0, k = 0;

  if (!ok) {
    if (p->hsent > 0 || p->off > 0) {
      w->write_failed = 1;      /* a reply cut short: the stream is lost */
      r = -1;
    }
  } else if (p->spilling || p->hsent < p->hlen) {
    if (p->hsent < p->hlen) {
      v[k].iov_base = p->hdr + p->hsent;
      v[k++].iov_len = p->hlen - p->hsent;
    }
    v[k].iov_base = p->spill + p->spill_from;
    v[k++].iov_len = p->off - p->spill_from;
    r = w->write_failed ? -1 : wire_send_locked(w, v, k);
  }
  pthread_mutex_unlock(&w->wlock);
  return r;
}

int
wire_batch_start(struct nbd_wire *w)
{
  w->obuf = malloc(WIRE_OBUF_SIZE);
  w->olen = 0;
  /* Replies from other threads (a layer's submit completing) go out at
   * once: the reader sends its batch only before it waits for input,
   * and it may be waiting already. */
  w->batch_owner = pthread_self();
  return w->obuf ? 0 : -1;
}

void
wire_batch_stop(struct nbd_wire *w)
{
  wire_flush(w);
  pthread_mutex_lock(&w->wlock);
  free(w->obuf);
  w->obuf = NULL;
  pthread_mutex_unlock(&w->wlock);
}


void
wire_init(struct nbd_wire *w, int fd, const char *peer, uint64_t poll_ns,
          uint64_t coalesce_ns)
{
  memset(w, 0, sizeof *w);
  w->fd = fd;
  w->io = &wire_plain;
  w->peer = peer;
  pthread_mutex_init(&w->wlock, NULL);
  iopolicy_init(&w->pol, poll_ns, coalesce_ns);
}

/* ---- moving a payload to another socket (splice) ------------------------ */

uint64_t
wire_ready(struct nbd_wire *w)
{
  int q = 0;

  if (w->io == &wire_plain && ioctl(w->fd, FIONREAD, &q) == -1)
    q = 0;
  return wire_buffered(w) + (uint64_t)(q > 0 ? q : 0);
}

int
wire_can_splice(const struct nbd_wire *w)
{
  return w->io == &wire_plain;
}

/* To a stream socket (off NULL) or a file at *off (advanced); 0, or -1
 * with errno set. */
static int
wire_write_all(int out, int64_t *off, const char *p, size_t len)
{
  ssize_t r;

  if (off) {
    if ((r = nbd_pwrite_full(out, p, len, (uint64_t)*off)) < 0) {
      errno = (int)-r;
      return -1;
    }
    *off += (int64_t)len;
    return 0;
  }
  while (len > 0) {
    r = send(out, p, len, MSG_NOSIGNAL);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0) {
      if (r == 0)
        errno = EIO;
      return -1;
    }
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

static void
wire_drop_pipe(struct nbd_wire *w)
{
  if (w->spipe_ok) {
    close(w->spipe[0]);
    close(w->spipe[1]);
    w->spipe_ok = 0;
  }
}

/* A pipe of 1 MiB (the default maximum, fs.pipe-max-size) takes a large
 * write's payload in one splice instead of sixteen; where the kernel
 * refuses, the default 64 KiB works as well, in more calls. */
#define WIRE_SPIPE_SIZE (1 << 20)

int
wire_splice(struct nbd_wire *w, int out, int64_t *off, uint64_t len,
            uint64_t *moved)
{
  size_t avail = w->rlen - w->rpos;
  ssize_t in, o;
  uint64_t t0;
  int e;

  *moved = 0;
  if (len == 0)
    return 0;
  w->at_request = 0;
  if (avail > 0) {
    size_t k = avail < len ? avail : (size_t)len;

    w->rpos += k;               /* taken, whatever out does with it */
    *moved += k;
    if (wire_write_all(out, off, w->rbuf + w->rpos - k, k) == -1)
      return -2;
    len -= k;
  }
  if (len > 0 && w->olen && wire_flush(w) == -1)
    return -1;
  if (len > 0 && !w->spipe_ok) {
    if (pipe2(w->spipe, O_CLOEXEC) == -1)
      return -1;
    w->spipe_ok = 1;
    (void)fcntl(w->spipe[1], F_SETPIPE_SZ, WIRE_SPIPE_SIZE);
  }
  while (len > 0) {
    t0 = nbd_now_ns();
    do {
      if (wire_before_read(w) == -1)
        return -1;
      in = splice(w->fd, NULL, w->spipe[1], NULL,
                  len < (1u << 30) ? (size_t)len : (1u << 30), SPLICE_F_MOVE);
    } while (wire_retry(w, in));
    w->splice_in_ns += nbd_now_ns() - t0;
    if (in <= 0)
      return -1;
    *moved += (uint64_t)in;
    len -= (uint64_t)in;
    while (in > 0) {
      loff_t at = off ? (loff_t)*off : 0;

      o = splice(w->spipe[0], NULL, out, off ? &at : NULL, (size_t)in,
                 SPLICE_F_MOVE);
      if (o == -1 && errno == EINTR)
        continue;
      if (off && o > 0)
        *off = (int64_t)at;
      if (o <= 0) {
        e = o == 0 ? EIO : errno;
        wire_drop_pipe(w);      /* it still holds bytes nobody wants */
        errno = e;
        return -2;
      }
      in -= o;
    }
  }
  return 0;
}

void
wire_destroy(struct nbd_wire *w)
{
  wire_drop_pipe(w);
  if (w->io->free)
    w->io->free(w);
  w->io = &wire_plain;
  pthread_mutex_destroy(&w->wlock);
  free(w->rbuf);
  free(w->obuf);
  w->rbuf = w->obuf = NULL;
}

/* A Unix socket's default send buffer (208 KiB) is a fifth of a 1 MiB
 * read reply, so the reader slept and woke about five times per reply;
 * with room for a few whole replies it does not.  The kernel caps the
 * value (net.core.wmem_max).  TCP sockets keep the kernel's autotuning,
 * which a fixed size would switch off.  TLS records leave 16 KiB at a
 * time without blocking (tls.c): there 1 MiB served reads with 9% less
 * CPU per GiB than 4 MiB and as fast (bench/results, tls-nocopy). */
void
wire_size_sndbuf(struct nbd_wire *w)
{
  struct sockaddr_storage ss = { 0 };
  socklen_t len = sizeof ss;
  int v = wire_is_tls(w) ? WIRE_SNDBUF_TLS : WIRE_SNDBUF;

  if (getsockname(w->fd, (struct sockaddr *)&ss, &len) == 0 &&
      ss.ss_family == AF_UNIX)
    (void)setsockopt(w->fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
}

void
wire_shutdown(struct nbd_wire *w, int how)
{
  if (how != SHUT_RD && w->io->close_notify) {
    pthread_mutex_lock(&w->wlock);
    if (!w->write_failed)
      w->io->close_notify(w);
    pthread_mutex_unlock(&w->wlock);
  }
  shutdown(w->fd, how);
}

int
wire_starttls(struct nbd_wire *w)
{
  if (wire_buffered(w) > 0) {
    /* proto.md: the TLS handshake starts after the reply.  Bytes that
     * came before it would have to be fed to the TLS library by hand. */
    nbd_info("%s: data sent before the STARTTLS reply, dropping", w->peer);
    return -1;
  }
  if (w->olen && wire_flush(w) == -1)
    return -1;
  return tls_server_start(w);
}

int
wire_is_tls(const struct nbd_wire *w)
{
  return w->io != &wire_plain;
}

uint64_t
nbd_now_ns(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}
