/* nbdstack backend nbd: the NBD client of one upstream connection.
 *
 * Handshake (proto.md "Newstyle negotiation"): fixed newstyle only; asks
 * for extended headers (NBD_OPT_EXTENDED_HEADERS, which imply structured
 * replies) and, refused, for structured replies, then base:allocation,
 * then NBD_OPT_GO with NBD_INFO_BLOCK_SIZE; a server without GO gets
 * NBD_OPT_EXPORT_NAME.  With extended headers every request has a 64-bit
 * length (trim, zero, cache and block status of any length go as one
 * request) and every reply is an extended chunk (32-byte header, block
 * status as BLOCK_STATUS_EXT); without them trim, zero and cache over
 * 4 GiB are split and block status asks for at most 4 GiB.
 *
 * Transmission (proto.md "Transmission"): a request is put in the table
 * of requests in flight before it is sent (its reply may come before the
 * send returns), then sent in one locked sendmsg, header and payload
 * together.  Who reads the replies: a caller whose request is alone in
 * flight, with nobody reading, reads its own reply, woken by the kernel
 * and not by another thread (handing each reply over from a reader
 * thread cost a wake-up, futex calls and a context switch per request,
 * most of the proxy's latency at queue depth 1).  Otherwise the
 * connection's reader thread reads for as long as anything is in flight,
 * and the callers sleep on their own condition: at depth the replies
 * keep flowing without a pause to hand reading from caller to caller.
 * Replies are read through a small buffer, so a short reply, or a header
 * with the data of a small read, takes one read(2) (and a queue of short
 * replies one in all); data beyond what is buffered goes straight into
 * the caller's buffer.
 *
 * A submitted write of 64 KiB or more is not sent by its caller but
 * queued for the connection's sender thread (started at the first one):
 * the caller, a client connection's reader, then receives the client's
 * next request while this payload goes upstream, as nbdkit's workers
 * overlap them.  A request is marked unsent until its send returned: a
 * reply with its cookie waits for that, and when the connection dies only
 * its sender fails it, so no payload is freed while it is being sent.
 *
 * The reader finds each reply's request by cookie, checks each chunk
 * against that request (offsets, lengths, types, the context id), writes
 * read data into the request's buffer, and wakes its caller when the
 * reply is done.  Only the reader completes requests, so a buffer is
 * never written after its request returned.  When anything goes wrong on
 * the socket (EOF, a reply that breaks the protocol, a failed send) the
 * connection is dead: every request in flight and every later one fails
 * with EIO.  An upstream that goes away while nothing is in flight is
 * found at the next request.
 *
 * Meta contexts: base:allocation and, when the upstream offers it (qemu-nbd
 * -A, nbdstack), qemu:allocation-depth, both asked in one
 * SET_META_CONTEXT.  A block status reply then has a chunk for each; the
 * request keeps the one it asked for (nbdc_extents or nbdc_depth) and
 * checks the other's id only.
 *
 * Not here: connecting, reconnecting, other meta contexts.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "layer.h"
#include "protocol.h"
#include "client.h"
#include "tls.h"
#include "wire.h"

#define NBDC_META_NAME "base:allocation"
#define NBDC_DEPTH_NAME "qemu:allocation-depth"
/* A block status reply of more extents than this is refused: no server
 * describes a request in 512-byte pieces (a compact request is at most
 * 4 GiB; ours answers at most 2^20 extents, as qemu does). */
#define NBDC_MAX_EXTENTS (1u << 20)
#define NBDC_HANDSHAKE_TIMEOUT 30   /* seconds per read during the handshake */
/* Reply read buffer: a 4 KiB read's reply, or a few dozen short replies,
 * in one read(2); small, as every connection has one. */
#define NBDC_RBUF (16u << 10)
/* A submitted write of at least this many bytes is sent by the
 * connection's sender thread, so the caller (a client connection's
 * reader) goes back to receiving the next request while this one's
 * payload goes upstream; smaller ones are sent by the caller. */
#define NBDC_QUEUE_MIN (64u << 10)

/* Upstream connections with requests in flight, in this process.  The
 * sender thread pays when the CPUs are busy anyway: with as many busy
 * connections as half the CPUs, each caller sends its own (4 clients
 * writing 1M at queue depth 16 on 2 CPUs: 0.87x the throughput, 1.19x
 * the CPU with a sender each; 1 client: 1.69x at 0.75x). */
static atomic_int nbdc_busy;
static int nbdc_ncpus;
static pthread_once_t nbdc_ncpus_once = PTHREAD_ONCE_INIT;

/* NBDSTACK_NBD_SPLICE=always|never overrides the choice between
 * splicing a large write's payload and the sender thread (tests). */
static int nbdc_splice_mode;    /* 0 by load, 1 always, -1 never */

static void
nbdc_count_cpus(void)
{
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  const char *e = getenv("NBDSTACK_NBD_SPLICE");

  nbdc_ncpus = n < 1 ? 1 : n > 4096 ? 4096 : (int)n;
  if (e && strcmp(e, "always") == 0)
    nbdc_splice_mode = 1;
  else if (e && strcmp(e, "never") == 0)
    nbdc_splice_mode = -1;
}

struct nbdc_req {
  uint64_t cookie;
  uint16_t cmd;
  uint64_t offset;
  uint64_t count;               /* at most the payload limit for reads */
  void *buf;                    /* NBD_CMD_READ */
  struct nbd_extents *extents;  /* NBD_CMD_BLOCK_STATUS */
  uint64_t covered;             /* read: bytes of data and holes received */
  uint64_t contig;              /* read: bytes received in order from offset */
  int unordered;                /* read: a chunk came out of order */
  uint32_t want;                /* block status: the context id kept */
  unsigned got_status;          /* block status: bit 0 base:allocation's
                                   chunk came, bit 1 the depth's */
  int err;                      /* first error, -errno */
  int done;
  pthread_cond_t cond;
  /* nbdc_submit: called once done, outside every lock (the request is
   * then freed); NULL for a caller that waits on cond. */
  void (*cb)(void *arg, int err);
  void *arg;
  void *owned;                  /* a payload buffer freed with it */
  struct nbdc_req *next, *later; /* later: completed, cb still to call */
  /* Not sent yet (in the table, being sent or in the send queue): no
   * reply may complete it, and only its sender fails it when the
   * connection dies, so its payload is never freed while being sent. */
  int unsent;
  /* The send queue: what the sender thread sends. */
  uint32_t flags;
  const void *wbuf;
  struct nbdc_req *qnext;
};

struct nbdc {
  /* The socket: fd, and after STARTTLS the session and its io (else
   * io is NULL and bytes go through read and sendmsg directly). */
  struct nbd_wire w;
  const struct nbdc_tls *tls;   /* NULL: plaintext (tls=off) */
  struct nbdc_info info;
  pthread_mutex_t wlock;        /* one sender at a time on the socket */
  pthread_mutex_t lock;         /* reqs, cookie, dead, closing, reading */
  struct nbdc_req *reqs;
  uint64_t cookie;
  int dead;
  int closing;
  int reading;                  /* someone is reading replies */
  pthread_cond_t rcond;         /* wakes the reader thread */
  pthread_t reader;
  /* The sender thread, started at the first large submitted write; it
   * sends the send queue in order (under lock). */
  struct nbdc_req *sendq, **sendq_tail;
  pthread_cond_t scond;
  pthread_t sender;
  int has_sender;
  pthread_cond_t ucond;         /* nbdc_lookup waits for a send's end */
  int unsent_wait;
  int sender_idle;              /* waiting on scond */
  /* Replies received but not parsed yet; only the reading caller touches
   * them. */
  size_t rpos, rlen;
  unsigned char rbuf[NBDC_RBUF];
};

/* ---- bytes ------------------------------------------------------------ */

/* What read(2) would return; through the TLS session once STARTTLS
 * succeeded (tls.c, the same code the server's connections use). */
static ssize_t
nbdc_read_some(struct nbdc *c, void *buf, size_t len)
{
  struct iovec iov = { buf, len };

  if (c->w.io)
    return c->w.io->recvv(&c->w, &iov, 1, 0);
  return read(c->w.fd, buf, len);
}

/* 0, or -1 at end of file or error. */
static int
nbdc_read_full(struct nbdc *c, void *buf, size_t len)
{
  unsigned char *p = buf;
  ssize_t r;

  while (len > 0) {
    r = nbdc_read_some(c, p, len);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

static int
nbdc_skip(struct nbdc *c, uint64_t len)
{
  unsigned char tmp[512];
  size_t n;

  while (len > 0) {
    n = len < sizeof tmp ? (size_t)len : sizeof tmp;
    if (nbdc_read_full(c, tmp, n) == -1)
      return -1;
    len -= n;
  }
  return 0;
}

/* len bytes of the reply stream: what the buffer holds first; a rest as
 * large as the buffer straight from the socket (no copy), a smaller one
 * through the buffer.  0, or -1 at end of file or error. */
static int
nbdc_recv(struct nbdc *c, void *buf, size_t len)
{
  unsigned char *p = buf;
  size_t n;
  ssize_t r;

  for (;;) {
    n = c->rlen - c->rpos < len ? c->rlen - c->rpos : len;
    if (n) {
      memcpy(p, c->rbuf + c->rpos, n);
      c->rpos += n;
      p += n;
      len -= n;
    }
    if (len == 0)
      return 0;
    if (len >= sizeof c->rbuf)  /* the buffer is empty here */
      return nbdc_read_full(c, p, len);
    r = nbdc_read_some(c, c->rbuf, sizeof c->rbuf);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    c->rpos = 0;
    c->rlen = (size_t)r;
  }
}

static int
nbdc_discard(struct nbdc *c, uint64_t len)
{
  unsigned char tmp[512];
  size_t n;

  while (len > 0) {
    n = len < sizeof tmp ? (size_t)len : sizeof tmp;
    if (nbdc_recv(c, tmp, n) == -1)
      return -1;
    len -= n;
  }
  return 0;
}

/* Every byte of iov[0..n), MSG_NOSIGNAL so a dead peer is an error and
 * not a signal; 0 or -1. */
static int
nbdc_writev_full(struct nbdc *c, struct iovec *iov, int n)
{
  struct msghdr m;
  ssize_t r;

  while (n > 0) {
    memset(&m, 0, sizeof m);
    m.msg_iov = iov;
    m.msg_iovlen = (size_t)n;
    r = c->w.io ? c->w.io->sendv(&c->w, iov, n)
                : sendmsg(c->w.fd, &m, MSG_NOSIGNAL);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    while (n > 0 && (size_t)r >= iov->iov_len) {
      r -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + r;
      iov->iov_len -= (size_t)r;
    }
  }
  return 0;
}

static int
nbdc_write_full(struct nbdc *c, const void *buf, size_t len)
{
  struct iovec iov = { (void *)buf, len };
  return nbdc_writev_full(c, &iov, 1);
}

int
nbdc_errno(uint32_t e)
{
  switch (e) {
  case NBD_EPERM: return -EPERM;
  case NBD_EIO: return -EIO;
  case NBD_ENOMEM: return -ENOMEM;
  case NBD_EINVAL: return -EINVAL;
  case NBD_ENOSPC: return -ENOSPC;
  case NBD_EOVERFLOW: return -EOVERFLOW;
  case NBD_ENOTSUP: return -ENOTSUP;
  case NBD_ESHUTDOWN: return -ESHUTDOWN;
  default: return -EIO;
  }
}

/* ---- handshake -------------------------------------------------------- */

static int
nbdc_opt_send(struct nbdc *c, uint32_t opt, const void *data, uint32_t len)
{
  unsigned char h[16];
  struct iovec iov[2] = { { h, sizeof h }, { (void *)data, len } };

  wire_put64(h, NBD_IHAVEOPT);
  wire_put32(h + 8, opt);
  wire_put32(h + 12, len);
  return nbdc_writev_full(c, iov, len ? 2 : 1);
}

/* One option reply (proto.md "Option reply"): its type in *rep, up to
 * bufsize bytes of its data in buf (the rest is dropped), the data length
 * kept in *len.  0 or -1 with err filled. */
static int
nbdc_opt_reply(struct nbdc *c, uint32_t opt, uint32_t *rep, unsigned char *buf,
               uint32_t bufsize, uint32_t *len, char *err, size_t errlen)
{
  unsigned char h[20];
  uint32_t n;

  if (nbdc_read_full(c, h, sizeof h) == -1) {
    snprintf(err, errlen, "connection closed during option %u", opt);
    return -1;
  }
  if (wire_get64(h) != NBD_REP_MAGIC || wire_get32(h + 8) != opt) {
    snprintf(err, errlen, "bad reply to option %u", opt);
    return -1;
  }
  *rep = wire_get32(h + 12);
  n = wire_get32(h + 16);
  if (n > NBD_MAX_OPTION_LEN) {
    snprintf(err, errlen, "reply to option %u too long (%u bytes)", opt, n);
    return -1;
  }
  *len = n < bufsize ? n : bufsize;
  if (nbdc_read_full(c, buf, *len) == -1 || nbdc_skip(c, n - *len) == -1) {
    snprintf(err, errlen, "connection closed during option %u", opt);
    return -1;
  }
  return 0;
}

/* NBD_OPT_STRUCTURED_REPLY: 1 acked, 0 refused, -1 failed. */
static int
nbdc_opt_structured(struct nbdc *c, char *err, size_t errlen)
{
  unsigned char buf[256];
  uint32_t rep, len;

  if (nbdc_opt_send(c, NBD_OPT_STRUCTURED_REPLY, NULL, 0) == -1) {
    snprintf(err, errlen, "send failed: %s", strerror(errno));
    return -1;
  }
  if (nbdc_opt_reply(c, NBD_OPT_STRUCTURED_REPLY, &rep, buf, sizeof buf,
                     &len, err, errlen) == -1)
    return -1;
  return rep == NBD_REP_ACK;
}

/* NBD_OPT_EXTENDED_HEADERS (extension-ext-header): 1 acked, 0 refused
 * (an upstream without them says NBD_REP_ERR_UNSUP), -1 failed. */
static int
nbdc_opt_extended(struct nbdc *c, char *err, size_t errlen)
{
  unsigned char buf[256];
  uint32_t rep, len;

  if (nbdc_opt_send(c, NBD_OPT_EXTENDED_HEADERS, NULL, 0) == -1) {
    snprintf(err, errlen, "send failed: %s", strerror(errno));
    return -1;
  }
  if (nbdc_opt_reply(c, NBD_OPT_EXTENDED_HEADERS, &rep, buf, sizeof buf,
                     &len, err, errlen) == -1)
    return -1;
  return rep == NBD_REP_ACK;
}

/* NBD_OPT_SET_META_CONTEXT base:allocation and qemu:allocation-depth;
 * fills info with those the upstream selected; 0 or -1. */
static int
nbdc_opt_meta(struct nbdc *c, const char *name, struct nbdc_info *info, char *err,
              size_t errlen)
{
  size_t nlen = strlen(name), qlen = strlen(NBDC_META_NAME);
  size_t dqlen = strlen(NBDC_DEPTH_NAME);
  size_t dlen = 4 + nlen + 4 + 4 + qlen + 4 + dqlen;
  unsigned char *d = malloc(dlen), buf[256];
  uint32_t rep, len;
  int r;

  if (d == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  wire_put32(d, (uint32_t)nlen);
  memcpy(d + 4, name, nlen);    /* NOLINT(bugprone-not-null-terminated-result): a length-prefixed NBD string */
  wire_put32(d + 4 + nlen, 2);
  wire_put32(d + 8 + nlen, (uint32_t)qlen);
  memcpy(d + 12 + nlen, NBDC_META_NAME, qlen);  /* NOLINT(bugprone-not-null-terminated-result): length-prefixed */
  wire_put32(d + 12 + nlen + qlen, (uint32_t)dqlen);
  memcpy(d + 16 + nlen + qlen, NBDC_DEPTH_NAME, dqlen);  /* NOLINT(bugprone-not-null-terminated-result): length-prefixed */
  r = nbdc_opt_send(c, NBD_OPT_SET_META_CONTEXT, d, (uint32_t)dlen);
  free(d);
  if (r == -1) {
    snprintf(err, errlen, "send failed: %s", strerror(errno));
    return -1;
  }
  for (;;) {
    if (nbdc_opt_reply(c, NBD_OPT_SET_META_CONTEXT, &rep, buf, sizeof buf,
                       &len, err, errlen) == -1)
      return -1;
    if (rep != NBD_REP_META_CONTEXT)
      return 0;                 /* ACK, or an error: no block status */
    if (len == 4 + qlen && memcmp(buf + 4, NBDC_META_NAME, qlen) == 0) {
      info->base_allocation = 1;
      info->meta_id = wire_get32(buf);
    } else if (len == 4 + dqlen &&
               memcmp(buf + 4, NBDC_DEPTH_NAME, dqlen) == 0) {
      info->allocation_depth = 1;
      info->depth_id = wire_get32(buf);
    }
  }
}

/* NBD_INFO_BLOCK_SIZE (proto.md "Block size constraints"); kept only when
 * valid.  The maximum is cut to what this server's own clients may send. */
static void
nbdc_block_size(struct nbdc_info *info, const unsigned char *p)
{
  uint32_t min = wire_get32(p), pref = wire_get32(p + 4);
  uint32_t max = wire_get32(p + 8);

  if (min == 0 || (min & (min - 1)) || min > 65536 ||
      pref == 0 || (pref & (pref - 1)) || pref < min || max < min ||
      (max != UINT32_MAX && max % min)) {
    nbd_warn("nbd: upstream block sizes %u/%u/%u are not valid, ignored",
             min, pref, max);
    return;
  }
  if (max > NBD_MAX_PAYLOAD)
    max = NBD_MAX_PAYLOAD / min * min;
  while (pref > max)            /* stays >= min: min divides max */
    pref >>= 1;
  info->has_block_size = 1;
  info->min_block = min;
  info->pref_block = pref;
  info->max_block = max;
}

/* NBD_OPT_GO asking for NBD_INFO_BLOCK_SIZE: 1 done, 0 server has no GO
 * (NBD_REP_ERR_UNSUP), -1 failed. */
static int
nbdc_opt_go(struct nbdc *c, const char *name, struct nbdc_info *info, char *err,
            size_t errlen)
{
  size_t nlen = strlen(name), dlen = 4 + nlen + 2 + 2;
  unsigned char *d = malloc(dlen), buf[64];
  int have_export = 0, r;
  uint32_t rep, len;

  if (d == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  wire_put32(d, (uint32_t)nlen);
  memcpy(d + 4, name, nlen);    /* NOLINT(bugprone-not-null-terminated-result): a length-prefixed NBD string */
  wire_put16(d + 4 + nlen, 1);
  wire_put16(d + 6 + nlen, NBD_INFO_BLOCK_SIZE);
  r = nbdc_opt_send(c, NBD_OPT_GO, d, (uint32_t)dlen);
  free(d);
  if (r == -1) {
    snprintf(err, errlen, "send failed: %s", strerror(errno));
    return -1;
  }
  for (;;) {
    if (nbdc_opt_reply(c, NBD_OPT_GO, &rep, buf, sizeof buf, &len, err,
                       errlen) == -1)
      return -1;
    if (rep == NBD_REP_ACK)
      break;
    if (rep == NBD_REP_ERR_UNSUP)
      return 0;
    if (rep & NBD_REP_ERR(0)) {
      snprintf(err, errlen, "upstream refused export '%s'%s%s", name,
               rep == NBD_REP_ERR_UNKNOWN ? ": no such export" : "",
               rep == NBD_REP_ERR_TLS_REQD ? ": TLS required" : "");
      return -1;
    }
    if (rep != NBD_REP_INFO || len < 2)
      continue;
    switch (wire_get16(buf)) {
    case NBD_INFO_EXPORT:
      if (len != 12)
        break;
      info->size = wire_get64(buf + 2);
      info->tflags = wire_get16(buf + 10);
      have_export = 1;
      break;
    case NBD_INFO_BLOCK_SIZE:
      if (len == 14)
        nbdc_block_size(info, buf + 2);
      break;
    }
  }
  if (!have_export) {
    snprintf(err, errlen, "upstream sent no NBD_INFO_EXPORT");
    return -1;
  }
  return 1;
}

/* The old way in (proto.md "NBD_OPT_EXPORT_NAME"): a server that refuses
 * the name just closes the connection. */
static int
nbdc_opt_export_name(struct nbdc *c, const char *name, int no_zeroes,
                     struct nbdc_info *info, char *err, size_t errlen)
{
  unsigned char buf[10];

  if (nbdc_opt_send(c, NBD_OPT_EXPORT_NAME, name,
                    (uint32_t)strlen(name)) == -1 ||
      nbdc_read_full(c, buf, sizeof buf) == -1 ||
      (!no_zeroes && nbdc_skip(c, 124) == -1)) {
    snprintf(err, errlen, "upstream closed the connection at export '%s'",
             name);
    return -1;
  }
  info->size = wire_get64(buf);
  info->tflags = wire_get16(buf + 8);
  return 0;
}

/* NBD_OPT_STARTTLS (proto.md "TLS support"), first of all options, then
 * the TLS handshake; the rest of the haggling goes on inside it.  With
 * tls=on a server that does not do TLS is used in plaintext (as libnbd's
 * LIBNBD_TLS_ALLOW); with tls=require that fails. */
static int
nbdc_opt_starttls(struct nbdc *c, char *err, size_t errlen)
{
  unsigned char buf[256];
  uint32_t rep, len;
  char how[128];

  if (nbdc_opt_send(c, NBD_OPT_STARTTLS, NULL, 0) == -1) {
    snprintf(err, errlen, "send failed: %s", strerror(errno));
    return -1;
  }
  if (nbdc_opt_reply(c, NBD_OPT_STARTTLS, &rep, buf, sizeof buf - 1, &len,
                     err, errlen) == -1)
    return -1;
  if (rep != NBD_REP_ACK) {
    buf[len] = '\0';
    if (c->tls->require) {
      snprintf(err, errlen, "upstream refused NBD_OPT_STARTTLS (reply "
               "0x%x%s%s) and tls=require", rep, len ? ": " : "",
               (char *)buf);
      return -1;
    }
    nbd_debug("nbd: upstream has no TLS (reply 0x%x): plaintext, as "
              "tls=on allows", rep);
    return 0;
  }
  if (c->rlen != c->rpos) {
    snprintf(err, errlen, "upstream sent bytes before the TLS handshake");
    return -1;
  }
  c->w.rcvtimeo = (uint64_t)NBDC_HANDSHAKE_TIMEOUT * 1000000000u;
  c->w.sndtimeo = c->w.rcvtimeo;
  if (tls_client_start(c->tls->client, &c->w, c->tls->hostname, how,
                       sizeof how) == -1) {
    snprintf(err, errlen, "%s", how);
    return -1;
  }
  nbd_debug("nbd: upstream TLS: %s", how);
  return 0;
}

/* The greeting, our flags, and STARTTLS when asked: up to the options.
 * *hflags the server's handshake flags. */
static int
nbdc_greet(struct nbdc *c, uint16_t *hflagsp, char *err, size_t errlen)
{
  unsigned char h[18], cf[4];
  uint16_t hflags;

  if (nbdc_read_full(c, h, sizeof h) == -1) {
    snprintf(err, errlen, "connection closed before the greeting");
    return -1;
  }
  if (wire_get64(h) != NBD_MAGIC || wire_get64(h + 8) != NBD_IHAVEOPT) {
    snprintf(err, errlen, "upstream is not a newstyle NBD server");
    return -1;
  }
  hflags = wire_get16(h + 16);
  if (!(hflags & NBD_FLAG_FIXED_NEWSTYLE)) {
    snprintf(err, errlen, "upstream does not speak fixed newstyle");
    return -1;
  }
  wire_put32(cf, NBD_FLAG_C_FIXED_NEWSTYLE |
                 (hflags & NBD_FLAG_NO_ZEROES ? NBD_FLAG_C_NO_ZEROES : 0));
  if (nbdc_write_full(c, cf, sizeof cf) == -1) {
    snprintf(err, errlen, "send failed: %s", strerror(errno));
    return -1;
  }
  if (c->tls && nbdc_opt_starttls(c, err, errlen) == -1)
    return -1;
  *hflagsp = hflags;
  return 0;
}

static int
nbdc_handshake(struct nbdc *c, const char *name, struct nbdc_info *info, char *err,
               size_t errlen)
{
  uint16_t hflags;
  int r;

  if (strlen(name) > NBD_MAX_STRING) {
    snprintf(err, errlen, "export name longer than %d bytes", NBD_MAX_STRING);
    return -1;
  }
  if (nbdc_greet(c, &hflags, err, errlen) == -1)
    return -1;
  if ((r = nbdc_opt_extended(c, err, errlen)) == -1)
    return -1;
  info->extended = info->structured = r;
  if (!r && (r = nbdc_opt_structured(c, err, errlen)) == -1)
    return -1;
  info->structured = r;
  if (r && nbdc_opt_meta(c, name, info, err, errlen) == -1)
    return -1;
  if ((r = nbdc_opt_go(c, name, info, err, errlen)) == -1)
    return -1;
  if (r == 0) {
    /* No GO: the meta context was for a name EXPORT_NAME still picks, but
     * without GO no block size came. */
    if (nbdc_opt_export_name(c, name, hflags & NBD_FLAG_NO_ZEROES, info,
                             err, errlen) == -1)
      return -1;
  }
  if (info->size > INT64_MAX) {
    snprintf(err, errlen, "upstream size %llu is too large",
             (unsigned long long)info->size);
    return -1;
  }
  return 0;
}

/* ---- requests in flight ----------------------------------------------- */

/* Under c->lock. */
static struct nbdc_req *
nbdc_find(struct nbdc *c, uint64_t cookie)
{
  struct nbdc_req *r;

  for (r = c->reqs; r; r = r->next)
    if (r->cookie == cookie)
      return r;
  return NULL;
}

/* Under c->lock: unlink and wake. */
static void
nbdc_complete(struct nbdc *c, struct nbdc_req *req)
{
  struct nbdc_req **p;

  for (p = &c->reqs; *p; p = &(*p)->next)
    if (*p == req) {
      *p = req->next;
      break;
    }
  if (c->reqs == NULL)
    atomic_fetch_sub_explicit(&nbdc_busy, 1, memory_order_relaxed);
  req->done = 1;
  if (req->cb == NULL)
    pthread_cond_signal(&req->cond);
}

/* After nbdc_complete, once c->lock is released: an async request's
 * callback, then it is freed.  (Not for a waiter's request: that one
 * lives on the waiter's stack, gone as soon as it wakes.) */
static void
nbdc_finish(struct nbdc_req *req)
{
  req->cb(req->arg, req->err);
  free(req->owned);
  free(req);
}

/* Marks the connection dead and wakes a caller blocked reading
 * (shutdown): called by a sender whose send failed, and by the reader
 * when the connection fails. */
static void
nbdc_kill(struct nbdc *c, const char *why)
{
  pthread_mutex_lock(&c->lock);
  if (!c->dead && !c->closing)
    nbd_error("nbd: upstream connection lost: %s", why);
  c->dead = 1;
  pthread_mutex_unlock(&c->lock);
  shutdown(c->w.fd, SHUT_RDWR);
}

/* ---- the reader ------------------------------------------------------- */

/* Returns the request of cookie, or NULL (protocol error). */
static struct nbdc_req *
nbdc_lookup(struct nbdc *c, uint64_t cookie)
{
  struct nbdc_req *r;

  pthread_mutex_lock(&c->lock);
  /* Its sender may not have marked it sent yet (the upstream has all of
   * it, the send is returning): wait, so its payload is not freed under
   * the send.  An upstream that answers before the request came waits
   * here too. */
  while ((r = nbdc_find(c, cookie)) != NULL && r->unsent) {
    c->unsent_wait = 1;
    pthread_cond_wait(&c->ucond, &c->lock);
  }
  pthread_mutex_unlock(&c->lock);
  return r;
}

/* [off, off+len) within the request; no overflow: both terms are
 * compared to the request's own offset and count. */
static int
nbdc_in_request(const struct nbdc_req *req, uint64_t off, uint64_t len)
{
  return off >= req->offset && len <= req->count &&
         off - req->offset <= req->count - len;
}

static void
nbdc_read_piece(struct nbdc_req *req, uint64_t off, uint64_t len)
{
  if (off == req->offset + req->contig && !req->unordered)
    req->contig += len;
  else
    req->unordered = 1;
  req->covered += len;
}

/* OFFSET_DATA or OFFSET_HOLE of a read (proto.md "Structured reply
 * types").  0, or -1 for a protocol error (message in *why). */
static int
nbdc_chunk_read(struct nbdc *c, struct nbdc_req *req, uint16_t type,
                uint64_t len, const char **why)
{
  unsigned char h[12];
  uint64_t off, n;

  if (req->cmd != NBD_CMD_READ) {
    *why = "read data in the reply to another command";
    return -1;
  }
  if (type == NBD_REPLY_TYPE_OFFSET_HOLE) {
    if (len != 12 || nbdc_recv(c, h, 12) == -1) {
      *why = len != 12 ? "hole chunk of bad length" : "connection closed";
      return -1;
    }
    off = wire_get64(h);
    n = wire_get32(h + 8);
  } else {
    if (len < 8 || len - 8 > req->count || nbdc_recv(c, h, 8) == -1) {
      *why = len < 8 ? "data chunk of bad length" : "connection closed";
      return -1;
    }
    off = wire_get64(h);
    n = len - 8;
  }
  if (n == 0 || !nbdc_in_request(req, off, n)) {
    *why = "read chunk outside the request";
    return -1;
  }
  if (type == NBD_REPLY_TYPE_OFFSET_HOLE)
    memset((char *)req->buf + (off - req->offset), 0, (size_t)n);
  else if (nbdc_recv(c, (char *)req->buf + (off - req->offset),
                          (size_t)n) == -1) {
    *why = "connection closed";
    return -1;
  }
  nbdc_read_piece(req, off, n);
  return 0;
}

/* BLOCK_STATUS: the context id, then (32-bit length, flags) pairs from
 * the request's offset; BLOCK_STATUS_EXT (extended headers): the context
 * id, the descriptor count, then (64-bit length, 64-bit flags) pairs.
 * The last may run past the request (clipped). */
static int
nbdc_chunk_status(struct nbdc *c, struct nbdc_req *req, uint16_t type,
                  uint64_t len, const char **why)
{
  unsigned char *p;
  uint64_t off = req->offset, end = req->offset + req->count, elen;
  int ext = type == NBD_REPLY_TYPE_BLOCK_STATUS_EXT;
  size_t hl = ext ? 8 : 4, esz = ext ? 16 : 8, i, n;
  uint32_t id, mask;
  unsigned bit;
  int r = 0;

  if (req->cmd != NBD_CMD_BLOCK_STATUS) {
    *why = "unexpected block status chunk";
    return -1;
  }
  /* With extended headers the server may use either type (the spec:
   * the client MUST be prepared for both); without, only the compact. */
  if (ext && !c->info.extended) {
    *why = "BLOCK_STATUS_EXT without extended headers";
    return -1;
  }
  if (len < hl + esz || (len - hl) % esz ||
      (len - hl) / esz > NBDC_MAX_EXTENTS) {
    *why = "block status chunk of bad length";
    return -1;
  }
  if ((p = malloc((size_t)len)) == NULL) {
    req->err = req->err ? req->err : -ENOMEM;
    return nbdc_discard(c, len) == -1 ? (*why = "connection closed", -1)
                                       : 0;
  }
  if (nbdc_recv(c, p, (size_t)len) == -1) {
    free(p);
    *why = "connection closed";
    return -1;
  }
  n = (size_t)((len - hl) / esz);
  id = wire_get32(p);
  if (c->info.base_allocation && id == c->info.meta_id)
    bit = 1;
  else if (c->info.allocation_depth && id == c->info.depth_id)
    bit = 2;
  else {
    free(p);
    *why = "block status for a context not negotiated";
    return -1;
  }
  if (req->got_status & bit) {
    free(p);
    *why = "two block status chunks for one context";
    return -1;
  }
  req->got_status |= bit;
  if (id != req->want) {        /* the other context's: checked, dropped */
    free(p);
    return 0;
  }
  /* base:allocation's flags are HOLE and ZERO; a depth is the number. */
  mask = bit == 1 ? NBD_EXTENT_HOLE | NBD_EXTENT_ZERO : UINT32_MAX;
  /* The descriptor count is 0 (not given) or the number that follow. */
  if (ext && wire_get32(p + 4) != 0 && wire_get32(p + 4) != n) {
    free(p);
    *why = "BLOCK_STATUS_EXT descriptor count does not match its length";
    return -1;
  }
  for (i = 0; i < n && off < end && r == 0; i++) {
    const unsigned char *d = p + hl + esz * i;
    uint32_t flags = ext ? (uint32_t)wire_get64(d + 8) : wire_get32(d + 4);
    elen = ext ? wire_get64(d) : wire_get32(d);
    if (elen == 0) {
      free(p);
      *why = "block status extent of length 0";
      return -1;
    }
    if (elen > end - off)
      elen = end - off;         /* the last one may run past the request */
    r = nbd_extents_add(req->extents, off, elen, flags & mask);
    off += elen;                /* off < end <= 2^64 */
  }
  free(p);
  if (r < 0 && req->err == 0)
    req->err = r;
  return 0;
}

/* ERROR or ERROR_OFFSET (any type with bit 15 set): error, message
 * length, message (and an offset, not needed). */
static int
nbdc_chunk_error(struct nbdc *c, struct nbdc_req *req, uint64_t len,
                 const char **why)
{
  unsigned char h[6];
  uint32_t e;
  uint16_t mlen;

  if (len < 6 || nbdc_recv(c, h, 6) == -1) {
    *why = len < 6 ? "error chunk of bad length" : "connection closed";
    return -1;
  }
  e = wire_get32(h);
  mlen = wire_get16(h + 4);
  if (mlen > len - 6 || nbdc_discard(c, len - 6) == -1) {
    *why = mlen > len - 6 ? "error chunk message too long"
                          : "connection closed";
    return -1;
  }
  if (req->err == 0)
    req->err = e ? nbdc_errno(e) : -EIO;
  return 0;
}

/* One structured reply chunk (after its magic): a compact one (16 more
 * bytes of header, 32-bit length) or, with extended headers, an extended
 * one (28 more: flags, type, cookie, offset, 64-bit length).  0 or -1
 * (protocol error). */
static int
nbdc_structured(struct nbdc *c, int ext, const char **why)
{
  unsigned char h[28];
  struct nbdc_req *req;
  uint16_t flags, type;
  uint64_t len;
  int r, async;

  if (ext != c->info.extended) {
    *why = ext ? "extended reply without extended headers"
               : "structured reply with extended headers";
    return -1;
  }
  if (nbdc_recv(c, h, ext ? 28 : 16) == -1) {
    *why = "connection closed";
    return -1;
  }
  flags = wire_get16(h);
  type = wire_get16(h + 2);
  len = ext ? wire_get64(h + 20) : wire_get32(h + 12);
  if (!c->info.structured || (req = nbdc_lookup(c, wire_get64(h + 4))) == NULL) {
    *why = "structured reply with an unknown cookie";
    return -1;
  }
  if (len > NBD_MAX_PAYLOAD + 8 &&
      len > (uint64_t)NBDC_MAX_EXTENTS * 16 + 8) {
    *why = "reply chunk too long";
    return -1;
  }
  if (type == NBD_REPLY_TYPE_NONE)
    r = len == 0 && (flags & NBD_REPLY_FLAG_DONE) ? 0
        : (*why = "bad NBD_REPLY_TYPE_NONE", -1);
  else if (type == NBD_REPLY_TYPE_OFFSET_DATA ||
           type == NBD_REPLY_TYPE_OFFSET_HOLE)
    r = nbdc_chunk_read(c, req, type, len, why);
  else if (type == NBD_REPLY_TYPE_BLOCK_STATUS ||
           type == NBD_REPLY_TYPE_BLOCK_STATUS_EXT)
    r = nbdc_chunk_status(c, req, type, len, why);
  else if (type & 0x8000)
    r = nbdc_chunk_error(c, req, len, why);
  else
    r = (*why = "unknown structured reply type", -1);
  if (r == -1 || !(flags & NBD_REPLY_FLAG_DONE))
    return r;
  /* The reply is complete: a successful one must have said everything. */
  if (req->err == 0 && req->cmd == NBD_CMD_READ &&
      (req->unordered ? req->covered : req->contig) != req->count) {
    *why = "read reply does not cover the request";
    return -1;
  }
  if (req->err == 0 && req->cmd == NBD_CMD_BLOCK_STATUS &&
      !(req->got_status & (req->want == c->info.meta_id &&
                           c->info.base_allocation ? 1u : 2u))) {
    *why = "block status reply without extents";
    return -1;
  }
  pthread_mutex_lock(&c->lock);
  async = req->cb != NULL;      /* a waiter's req is gone once woken */
  nbdc_complete(c, req);
  pthread_mutex_unlock(&c->lock);
  if (async)
    nbdc_finish(req);
  return 0;
}

/* A simple reply; the data of a successful read follows it. */
static int
nbdc_simple(struct nbdc *c, const char **why)
{
  unsigned char h[12];
  struct nbdc_req *req;
  uint32_t e;
  int async;

  if (nbdc_recv(c, h, sizeof h) == -1) {
    *why = "connection closed";
    return -1;
  }
  e = wire_get32(h);
  if ((req = nbdc_lookup(c, wire_get64(h + 4))) == NULL) {
    *why = "simple reply with an unknown cookie";
    return -1;
  }
  if (c->info.extended) {
    *why = "simple reply with extended headers";
    return -1;
  }
  if (req->cmd == NBD_CMD_BLOCK_STATUS && e == 0) {
    *why = "simple reply to block status";
    return -1;
  }
  if (req->cmd == NBD_CMD_READ && e == 0) {
    if (req->covered != 0) {
      *why = "simple reply after read chunks";
      return -1;
    }
    if (nbdc_recv(c, req->buf, (size_t)req->count) == -1) {
      *why = "connection closed";
      return -1;
    }
  }
  pthread_mutex_lock(&c->lock);
  req->err = e ? nbdc_errno(e) : 0;
  async = req->cb != NULL;      /* a waiter's req is gone once woken */
  nbdc_complete(c, req);
  pthread_mutex_unlock(&c->lock);
  if (async)
    nbdc_finish(req);
  return 0;
}

/* One reply, all its chunks; 0 or -1 (dead, the reason in *why). */
static int
nbdc_reply(struct nbdc *c, const char **why)
{
  unsigned char m[4];

  if (nbdc_recv(c, m, 4) == -1) {
    *why = "connection closed";
    return -1;
  }
  if (wire_get32(m) == NBD_SIMPLE_REPLY_MAGIC)
    return nbdc_simple(c, why);
  if (wire_get32(m) == NBD_STRUCTURED_REPLY_MAGIC)
    return nbdc_structured(c, 0, why);
  if (wire_get32(m) == NBD_EXTENDED_REPLY_MAGIC)
    return nbdc_structured(c, 1, why);
  *why = "bad reply magic";
  return -1;
}

/* Fails every request in flight with EIO (the connection is dead). */
static void
nbdc_fail_all(struct nbdc *c)
{
  struct nbdc_req *later = NULL, *r, **p;

  pthread_mutex_lock(&c->lock);
  for (p = &c->reqs; (r = *p) != NULL; ) {
    if (r->unsent) {            /* its sender fails it (nbdc_sent) */
      p = &r->next;
      continue;
    }
    r->err = -EIO;
    nbdc_complete(c, r);
    if (r->cb) {
      r->later = later;
      later = r;
    }
  }
  pthread_mutex_unlock(&c->lock);
  while ((r = later) != NULL) {
    later = r->later;
    nbdc_finish(r);
  }
}

/* Reads replies, whoever's, until mine is done (a caller reading) or
 * nothing is in flight (the reader thread); when the connection dies,
 * every request in flight fails.  Only the reader completes requests, so
 * mine->done is its own to read. */
static void
nbdc_read_replies(struct nbdc *c, struct nbdc_req *mine)
{
  const char *why = "connection closed";
  int dead, more = 1;

  pthread_mutex_lock(&c->lock);
  dead = c->dead;               /* a send failed: nothing to read */
  pthread_mutex_unlock(&c->lock);
  while (!dead && more) {
    dead = nbdc_reply(c, &why) == -1;
    if (mine)
      more = !mine->done;
    else {
      pthread_mutex_lock(&c->lock);
      more = c->reqs != NULL;
      pthread_mutex_unlock(&c->lock);
    }
  }
  if (!dead)
    return;
  nbdc_kill(c, why);
  nbdc_fail_all(c);
}

/* Under c->lock: whether a reply is due, or requests sent before the
 * connection died are still to fail. */
static int
nbdc_to_read(const struct nbdc *c)
{
  const struct nbdc_req *r;

  if (!c->dead)
    return c->reqs != NULL;
  for (r = c->reqs; r; r = r->next)
    if (!r->unsent)
      return 1;
  return 0;
}

/* The reader thread: reads while more than one request is in flight, or
 * one whose caller sleeps; a lone caller reads its own reply. */
static void *
nbdc_reader(void *arg)
{
  struct nbdc *c = arg;

  pthread_mutex_lock(&c->lock);
  for (;;) {
    while (!c->closing && (c->reading || !nbdc_to_read(c)))
      pthread_cond_wait(&c->rcond, &c->lock);
    if (c->closing)
      break;
    c->reading = 1;
    pthread_mutex_unlock(&c->lock);
    nbdc_read_replies(c, NULL);
    pthread_mutex_lock(&c->lock);
    c->reading = 0;
  }
  pthread_mutex_unlock(&c->lock);
  return NULL;
}

/* ---- the connection --------------------------------------------------- */

/* Ends the TLS session, if any: close_notify when the stream is still
 * good (an orderly close), then the session is freed. */
static void
nbdc_end_tls(struct nbdc *c, int notify)
{
  if (c->w.io == NULL)
    return;
  if (notify)
    c->w.io->close_notify(&c->w);
  c->w.io->free(&c->w);
  c->w.io = NULL;
}

/* Starts one of the connection's threads with a stack of the size
 * given (they keep nothing big on it; musl's 128 KiB default would do,
 * but say so rather than depend on it); 0 or an errno. */
static int
nbdc_thread(struct nbdc *c, pthread_t *t, void *(*fn)(void *),
            size_t stack)
{
  pthread_attr_t attr;
  int r;

  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, stack);
  r = pthread_create(t, &attr, fn, c);
  pthread_attr_destroy(&attr);
  return r;
}

/* NBD_OPT_LIST on fd (which it closes): every export upstream names,
 * with its description, appended to out; then NBD_OPT_ABORT.  0, or -1
 * with a one-line reason in err (*errnum: EPERM when upstream refused to
 * list, EIO otherwise). */
int
nbdc_list(int fd, const struct nbdc_tls *tls, struct nbd_exports *out,
          int *errnum, char *err, size_t errlen)
{
  struct timeval tv = { NBDC_HANDSHAKE_TIMEOUT, 0 };
  unsigned char buf[4 + 2 * NBD_MAX_STRING];
  char name[NBD_MAX_STRING + 1], desc[NBD_MAX_STRING + 1];
  struct nbdc *c = calloc(1, sizeof *c);
  uint32_t rep, len, n, k;
  uint16_t hflags;
  int r = -1;

  *errnum = EIO;
  if (c == NULL) {
    snprintf(err, errlen, "out of memory");
    close(fd);
    return -1;
  }
  c->w.fd = fd;
  c->w.peer = "nbd upstream";
  c->tls = tls && tls->client ? tls : NULL;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (nbdc_greet(c, &hflags, err, errlen) == -1 ||
      nbdc_opt_send(c, NBD_OPT_LIST, NULL, 0) == -1)
    goto out;
  for (k = 0; k < 65536; k++) {
    if (nbdc_opt_reply(c, NBD_OPT_LIST, &rep, buf, sizeof buf, &len, err,
                       errlen) == -1)
      goto out;
    if (rep == NBD_REP_ACK) {
      r = 0;
      break;
    }
    if (rep != NBD_REP_SERVER) {
      snprintf(err, errlen, "upstream refused to list its exports (reply "
               "0x%x)", rep);
      if (rep & NBD_REP_ERR(0))
        *errnum = EPERM;
      goto out;
    }
    if (len < 4 || (n = wire_get32(buf)) > len - 4 || n > NBD_MAX_STRING ||
        len - 4 - n > NBD_MAX_STRING) {
      snprintf(err, errlen, "malformed NBD_REP_SERVER from upstream");
      goto out;
    }
    memcpy(name, buf + 4, n);
    name[n] = '\0';
    memcpy(desc, buf + 4 + n, len - 4 - n);
    desc[len - 4 - n] = '\0';
    if (strlen(name) != n || nbd_exports_add(out, name, desc[0] ? desc
                                             : NULL) != 0) {
      snprintf(err, errlen, strlen(name) != n ? "export name with a NUL "
               "from upstream" : "out of memory");
      goto out;
    }
  }
  if (r == -1)
    snprintf(err, errlen, "upstream lists too many exports");
  else
    (void)nbdc_opt_send(c, NBD_OPT_ABORT, NULL, 0);
out:
  nbdc_end_tls(c, r == 0);
  close(fd);
  free(c);
  return r;
}

struct nbdc *
nbdc_open(int fd, const char *name, const struct nbdc_tls *tls, char *err,
          size_t errlen)
{
  struct timeval tv = { NBDC_HANDSHAKE_TIMEOUT, 0 }, none = { 0, 0 };
  struct nbdc *c = calloc(1, sizeof *c);
  int r;

  pthread_once(&nbdc_ncpus_once, nbdc_count_cpus);
  if (c == NULL) {
    snprintf(err, errlen, "out of memory");
    close(fd);
    return NULL;
  }
  c->w.fd = fd;
  c->w.peer = "nbd upstream";
  c->tls = tls && tls->client ? tls : NULL;
  /* A server that stops talking in the handshake must not hold the
   * client's connection for ever. */
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (nbdc_handshake(c, name, &c->info, err, errlen) == -1) {
    nbdc_end_tls(c, 0);
    close(fd);
    free(c);
    return NULL;
  }
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
  c->w.rcvtimeo = c->w.sndtimeo = 0;
  pthread_mutex_init(&c->wlock, NULL);
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->rcond, NULL);
  pthread_cond_init(&c->scond, NULL);
  pthread_cond_init(&c->ucond, NULL);
  c->sendq_tail = &c->sendq;
  if ((r = nbdc_thread(c, &c->reader, nbdc_reader, 256 << 10)) != 0) {
    snprintf(err, errlen, "cannot start the reader thread: %s", strerror(r));
    pthread_cond_destroy(&c->scond);
    pthread_cond_destroy(&c->ucond);
    pthread_cond_destroy(&c->rcond);
    pthread_mutex_destroy(&c->wlock);
    pthread_mutex_destroy(&c->lock);
    nbdc_end_tls(c, 0);
    close(fd);
    free(c);
    return NULL;
  }
  return c;
}

void
nbdc_close(struct nbdc *c)
{
  unsigned char h[NBD_EXTENDED_REQUEST_SIZE];
  size_t hl;

  if (c == NULL)
    return;
  pthread_mutex_lock(&c->lock);
  c->closing = 1;
  pthread_cond_signal(&c->rcond);
  pthread_cond_signal(&c->scond);
  pthread_mutex_unlock(&c->lock);
  if (c->has_sender)
    pthread_join(c->sender, NULL);
  pthread_join(c->reader, NULL);
  memset(h, 0, sizeof h);
  wire_put32(h, c->info.extended ? NBD_EXTENDED_REQUEST_MAGIC
                                 : NBD_REQUEST_MAGIC);
  wire_put16(h + 6, NBD_CMD_DISC);
  hl = c->info.extended ? NBD_EXTENDED_REQUEST_SIZE : NBD_REQUEST_SIZE;
  pthread_mutex_lock(&c->wlock);
  if (!nbdc_dead(c))
    (void)nbdc_write_full(c, h, hl);
  pthread_mutex_unlock(&c->wlock);
  nbdc_end_tls(c, !nbdc_dead(c));
  shutdown(c->w.fd, SHUT_RDWR);
  close(c->w.fd);
  pthread_cond_destroy(&c->scond);
  pthread_cond_destroy(&c->ucond);
  pthread_cond_destroy(&c->rcond);
  pthread_mutex_destroy(&c->wlock);
  pthread_mutex_destroy(&c->lock);
  free(c);
}

const struct nbdc_info *
nbdc_info(const struct nbdc *c)
{
  return &c->info;
}

int
nbdc_dead(struct nbdc *c)
{
  int d;

  pthread_mutex_lock(&c->lock);
  d = c->dead;
  pthread_mutex_unlock(&c->lock);
  return d;
}

/* Sends one request's header and payload (proto.md "Request message"):
 * a compact header (32-bit length) or, with extended headers, an
 * extended one (64-bit length; a write says NBD_CMD_FLAG_PAYLOAD_LEN, as
 * the spec wants and libnbd does). */
static size_t
nbdc_header(const struct nbdc *c, unsigned char *h, uint16_t cmd,
            uint32_t flags, uint64_t cookie, uint64_t offset, uint64_t count,
            int payload)
{
  wire_put32(h, c->info.extended ? NBD_EXTENDED_REQUEST_MAGIC
                                 : NBD_REQUEST_MAGIC);
  if (c->info.extended && payload)
    flags |= NBD_CMD_FLAG_PAYLOAD_LEN;
  wire_put16(h + 4, (uint16_t)flags);
  wire_put16(h + 6, cmd);
  wire_put64(h + 8, cookie);
  wire_put64(h + 16, offset);
  if (c->info.extended)
    wire_put64(h + 24, count);
  else
    wire_put32(h + 24, (uint32_t)count);
  return c->info.extended ? NBD_EXTENDED_REQUEST_SIZE : NBD_REQUEST_SIZE;
}

static void
nbdc_send(struct nbdc *c, uint16_t cmd, uint32_t flags, uint64_t cookie,
          uint64_t offset, uint64_t count, const void *wbuf)
{
  unsigned char h[NBD_EXTENDED_REQUEST_SIZE];
  struct iovec iov[2];
  int r;

  iov[0].iov_base = h;
  iov[0].iov_len = nbdc_header(c, h, cmd, flags, cookie, offset, count,
                               wbuf != NULL);
  iov[1].iov_base = (void *)wbuf;
  iov[1].iov_len = wbuf ? (size_t)count : 0;
  pthread_mutex_lock(&c->wlock);
  r = nbdc_writev_full(c, iov, wbuf ? 2 : 1);
  pthread_mutex_unlock(&c->wlock);
  /* A half-sent request leaves the stream unusable; the reader then fails
   * every request, this one too. */
  if (r == -1)
    nbdc_kill(c, strerror(errno));
}

/* After req's send (or its failure): from now on its reply may complete
 * it (and an async one be freed at any time, so req is not looked at
 * after the unlock); when the connection died meanwhile, it fails here,
 * as nbdc_fail_all left it to its sender.  Makes sure someone reads
 * (the reader thread, unless a caller or the thread already does). */
static void
nbdc_sent(struct nbdc *c, struct nbdc_req *req, int async)
{
  int wake, failed = 0;

  pthread_mutex_lock(&c->lock);
  req->unsent = 0;
  if (c->unsent_wait) {
    c->unsent_wait = 0;
    pthread_cond_broadcast(&c->ucond);
  }
  if (c->dead && !req->done) {
    req->err = -EIO;
    nbdc_complete(c, req);
    failed = async;
  }
  wake = !c->reading && nbdc_to_read(c);
  pthread_mutex_unlock(&c->lock);
  if (failed)
    nbdc_finish(req);
  if (wake)
    pthread_cond_signal(&c->rcond);
}

/* The sender thread: sends the send queue in order; at close, whatever
 * is left (nothing, when the engine waited for its requests) fails. */
static void *
nbdc_sender(void *arg)
{
  struct nbdc *c = arg;
  struct nbdc_req *req;
  int dead;

  pthread_mutex_lock(&c->lock);
  for (;;) {
    while (c->sendq == NULL && !c->closing) {
      c->sender_idle = 1;
      pthread_cond_wait(&c->scond, &c->lock);
      c->sender_idle = 0;
    }
    if ((req = c->sendq) == NULL)
      break;
    if ((c->sendq = req->qnext) == NULL)
      c->sendq_tail = &c->sendq;
    if (c->closing)
      c->dead = 1;              /* nbdc_sent fails it */
    dead = c->dead;
    pthread_mutex_unlock(&c->lock);
    if (!dead)
      nbdc_send(c, req->cmd, req->flags, req->cookie, req->offset,
                req->count, req->wbuf);
    nbdc_sent(c, req, 1);
    pthread_mutex_lock(&c->lock);
  }
  pthread_mutex_unlock(&c->lock);
  return NULL;
}

/* Under c->lock: starts the sender thread; 0, or -1 (the caller sends). */
static int
nbdc_start_sender(struct nbdc *c)
{
  if (nbdc_thread(c, &c->sender, nbdc_sender, 64 << 10) != 0)
    return -1;
  c->has_sender = 1;
  return 0;
}

/* Whether the sender thread is worth it with busy upstream connections
 * in this process (see nbdc_busy). */
static int
nbdc_few_busy(int busy)
{
  return busy * 2 <= nbdc_ncpus;
}

/* Under c->lock: enters req in the table of requests in flight, under a
 * fresh cookie and marked unsent (nbdc_sent ends that); -EIO when the
 * connection is dead, else the number of busy upstream connections
 * now. */
static int
nbdc_enter(struct nbdc *c, struct nbdc_req *req)
{
  int busy;

  if (c->dead)
    return -EIO;
  req->cookie = ++c->cookie;
  req->unsent = 1;
  busy = c->reqs == NULL
         ? atomic_fetch_add_explicit(&nbdc_busy, 1, memory_order_relaxed) + 1
         : atomic_load_explicit(&nbdc_busy, memory_order_relaxed);
  req->next = c->reqs;
  c->reqs = req;
  return busy;
}

/* A request that completes later (cb), not entered yet; NULL when out of
 * memory. */
static struct nbdc_req *
nbdc_req_new(uint16_t cmd, uint64_t offset, uint64_t count, void *rbuf,
             void (*cb)(void *arg, int err), void *arg)
{
  struct nbdc_req *req = calloc(1, sizeof *req);

  if (req == NULL)
    return NULL;
  req->cmd = cmd;
  req->offset = offset;
  req->count = count;
  req->buf = rbuf;
  req->cb = cb;
  req->arg = arg;
  return req;
}

/* One request and its reply, the caller waiting for it. */
static int
nbdc_request_ctx(struct nbdc *c, uint16_t cmd, uint32_t flags,
                 uint64_t offset, uint64_t count, const void *wbuf,
                 void *rbuf, struct nbd_extents *extents, uint32_t want)
{
  struct nbdc_req req;

  if (count != 0 && offset > UINT64_MAX - count)
    return -EINVAL;
  if (!c->info.extended && count > UINT32_MAX)
    return -EINVAL;             /* nbdc_ranged splits before this */
  memset(&req, 0, sizeof req);
  req.cmd = cmd;
  req.offset = offset;
  req.count = count;
  req.buf = rbuf;
  req.extents = extents;
  req.want = want;
  pthread_cond_init(&req.cond, NULL);
  pthread_mutex_lock(&c->lock);
  if (nbdc_enter(c, &req) < 0) {
    pthread_mutex_unlock(&c->lock);
    pthread_cond_destroy(&req.cond);
    return -EIO;
  }
  pthread_mutex_unlock(&c->lock);

  nbdc_send(c, cmd, flags, req.cookie, offset, count, wbuf);
  nbdc_sent(c, &req, 0);

  /* Alone in flight with nobody reading: read the reply here.  Else sleep
   * until the reader completes this request, making sure there is one. */
  pthread_mutex_lock(&c->lock);
  while (!req.done) {
    if (!c->reading && c->reqs == &req && req.next == NULL) {
      c->reading = 1;
      pthread_mutex_unlock(&c->lock);
      nbdc_read_replies(c, &req);
      pthread_mutex_lock(&c->lock);
      c->reading = 0;
      if (c->reqs)              /* arrived meanwhile: the thread reads on */
        pthread_cond_signal(&c->rcond);
      continue;
    }
    if (!c->reading)
      pthread_cond_signal(&c->rcond);
    pthread_cond_wait(&req.cond, &c->lock);
  }
  pthread_mutex_unlock(&c->lock);
  pthread_cond_destroy(&req.cond);
  return req.err;
}

static int
nbdc_request(struct nbdc *c, uint16_t cmd, uint32_t flags, uint64_t offset,
             uint64_t count, const void *wbuf, void *rbuf)
{
  return nbdc_request_ctx(c, cmd, flags, offset, count, wbuf, rbuf, NULL, 0);
}

static int
nbdc_submit_own(struct nbdc *c, uint16_t cmd, uint32_t flags,
                uint64_t offset, uint32_t count, const void *wbuf,
                void *rbuf, void *owned, void (*cb)(void *arg, int err),
                void *arg)
{
  struct nbdc_req *req;
  int wake, busy;

  if (count != 0 && offset > UINT64_MAX - count)
    return -EINVAL;
  if ((req = nbdc_req_new(cmd, offset, count, rbuf, cb, arg)) == NULL)
    return -ENOMEM;
  req->owned = owned;           /* freed with it once it is entered */
  pthread_mutex_lock(&c->lock);
  if ((busy = nbdc_enter(c, req)) < 0) {
    pthread_mutex_unlock(&c->lock);
    free(req);                  /* not owned: the caller frees it */
    return busy;
  }
  if (wbuf && count >= NBDC_QUEUE_MIN &&
      (c->sendq != NULL || nbdc_few_busy(busy)) &&
      (c->has_sender || nbdc_start_sender(c) == 0)) {
    req->flags = flags;
    req->wbuf = wbuf;
    *c->sendq_tail = req;
    c->sendq_tail = &req->qnext;
    wake = c->sender_idle;
    pthread_mutex_unlock(&c->lock);
    if (wake)
      pthread_cond_signal(&c->scond);
    return 0;
  }
  pthread_mutex_unlock(&c->lock);
  nbdc_send(c, cmd, flags, req->cookie, offset, count, wbuf);
  nbdc_sent(c, req, 1);
  return 0;
}

int
nbdc_submit(struct nbdc *c, uint16_t cmd, uint32_t flags, uint64_t offset,
            uint32_t count, const void *wbuf, void *rbuf,
            void (*cb)(void *arg, int err), void *arg)
{
  return nbdc_submit_own(c, cmd, flags, offset, count, wbuf, rbuf, NULL,
                         cb, arg);
}

int
nbdc_submit_src(struct nbdc *c, uint32_t flags, uint64_t offset,
                uint32_t count, struct nbd_source *src, int may_splice,
                void (*cb)(void *arg, int err), void *arg)
{
  unsigned char h[NBD_EXTENDED_REQUEST_SIZE];
  struct nbdc_req *req;
  size_t hl;
  int r;

  if (!may_splice || c->w.io != NULL || src->splice == NULL ||
      nbdc_splice_mode < 0) {
    void *buf = malloc(count ? count : 1);

    if (buf == NULL)
      return -ENOMEM;
    if ((r = nbd_source_read(src, buf, count)) == 0 &&
        (r = nbdc_submit_own(c, NBD_CMD_WRITE, flags, offset, count, buf,
                             NULL, buf, cb, arg)) == 0)
      return 0;
    free(buf);
    return r;
  }
  /* Few upstream connections busy: the CPUs have room, and the sender
   * thread overlaps receiving the next payload with sending this one
   * (one client writing 1 MiB at queue depth 16: splicing on the
   * reader, 0.82x the throughput of that).  The engine reads the
   * payload into a buffer of its own and submits again. */
  pthread_mutex_lock(&c->lock);
  r = nbdc_few_busy(atomic_load_explicit(&nbdc_busy, memory_order_relaxed) +
                    (c->reqs == NULL));
  pthread_mutex_unlock(&c->lock);
  if (r && count >= NBDC_QUEUE_MIN && nbdc_splice_mode == 0)
    return -EAGAIN;
  if (count != 0 && offset > UINT64_MAX - count)
    return -EINVAL;
  if ((req = nbdc_req_new(NBD_CMD_WRITE, offset, count, NULL, cb,
                          arg)) == NULL)
    return -ENOMEM;
  pthread_mutex_lock(&c->lock);
  if ((r = nbdc_enter(c, req)) < 0) {
    pthread_mutex_unlock(&c->lock);
    free(req);
    return r;
  }
  pthread_mutex_unlock(&c->lock);
  /* Header and payload under the send lock, the payload straight from
   * the client's socket: a client that stops in the middle holds this
   * upstream connection (which is its own: not done when shared). */
  hl = nbdc_header(c, h, NBD_CMD_WRITE, flags, req->cookie, offset, count,
                   1);
  pthread_mutex_lock(&c->wlock);
  r = nbdc_write_full(c, h, hl) == -1 ? -EPIPE
      : nbd_source_splice(src, c->w.fd, count);
  pthread_mutex_unlock(&c->wlock);
  if (r != 0)
    nbdc_kill(c, r == -EIO ? "the client went away in the middle of a "
                             "write's payload" : strerror(-r));
  nbdc_sent(c, req, 1);
  return 0;
}

int
nbdc_pread(struct nbdc *c, void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  return nbdc_request(c, NBD_CMD_READ, flags, offset, count, NULL, buf);
}

int
nbdc_pwrite(struct nbdc *c, const void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  return nbdc_request(c, NBD_CMD_WRITE, flags, offset, count, buf, NULL);
}

int
nbdc_flush(struct nbdc *c, uint32_t flags)
{
  return nbdc_request(c, NBD_CMD_FLUSH, flags, 0, 0, NULL, NULL);
}

/* The largest length one compact request header carries (32 bits),
 * rounded down to a multiple of the upstream's minimum block size, so
 * every piece of a longer request stays aligned to it.  An upstream
 * without extended headers takes no more per request; with them, one
 * request carries any length. */
static uint64_t
nbdc_max_length(const struct nbdc *c)
{
  uint32_t min = c->info.has_block_size && c->info.min_block > 1
                 ? c->info.min_block : 1;

  if (c->info.extended)
    return UINT64_MAX;          /* any length in one request */
  return UINT32_MAX - UINT32_MAX % min;
}

/* TRIM, WRITE_ZEROES and CACHE of any 64-bit length, as requests of at
 * most max each.  Every piece carries the flags: with FUA each must be
 * durable before the whole is answered. */
static int
nbdc_ranged(struct nbdc *c, uint16_t cmd, uint64_t count, uint64_t offset,
            uint32_t flags, uint64_t max)
{
  uint64_t n;
  int r = 0;

  if (count != 0 && offset > UINT64_MAX - count)
    return -EINVAL;
  do {
    n = count < max ? count : max;
    r = nbdc_request(c, cmd, flags, offset, n, NULL, NULL);
    offset += n;
    count -= n;
  } while (r == 0 && count > 0);
  return r;
}

int
nbdc_trim(struct nbdc *c, uint64_t count, uint64_t offset, uint32_t flags)
{
  return nbdc_ranged(c, NBD_CMD_TRIM, count, offset, flags,
                     nbdc_max_length(c));
}

int
nbdc_zero(struct nbdc *c, uint64_t count, uint64_t offset, uint32_t flags)
{
  return nbdc_ranged(c, NBD_CMD_WRITE_ZEROES, count, offset, flags,
                     nbdc_max_length(c));
}

int
nbdc_cache(struct nbdc *c, uint64_t count, uint64_t offset, uint32_t flags)
{
  uint64_t max = nbdc_max_length(c);

  /* The spec lets only TRIM, WRITE_ZEROES and BLOCK_STATUS exceed the
   * maximum block size; qemu-nbd refuses a CACHE over it (32 MiB) with
   * EINVAL. */
  if (c->info.has_block_size && c->info.max_block < max)
    max = c->info.max_block;
  return nbdc_ranged(c, NBD_CMD_CACHE, count, offset, flags, max);
}

/* Without extended headers, at most 2 GiB is asked (as qemu's client
 * does): a block status reply may always describe less than the request
 * (the client asks again from where it stops), and nbdkit 1.32 drops the
 * connection when asked 4 GiB - 1 over a hole of 4 GiB or more. */
/* Block status of the context want (an id info says was negotiated). */
static int
nbdc_status(struct nbdc *c, uint64_t count, uint64_t offset, uint32_t flags,
            struct nbd_extents *extents, uint32_t want)
{
  uint64_t max = nbdc_max_length(c);

  if (!c->info.extended)
    max = UINT64_C(1) << 31;    /* a multiple of any minimum block size */
  return nbdc_request_ctx(c, NBD_CMD_BLOCK_STATUS, flags, offset,
                          count < max ? count : max, NULL, NULL, extents,
                          want);
}

int
nbdc_extents(struct nbdc *c, uint64_t count, uint64_t offset, uint32_t flags,
             struct nbd_extents *extents)
{
  if (!c->info.base_allocation)
    return -EOPNOTSUPP;
  return nbdc_status(c, count, offset, flags, extents, c->info.meta_id);
}

int
nbdc_depth(struct nbdc *c, uint64_t count, uint64_t offset, uint32_t flags,
           struct nbd_extents *extents)
{
  if (!c->info.allocation_depth)
    return NBD_DEPTH_ONE;
  return nbdc_status(c, count, offset, flags, extents, c->info.depth_id);
}
