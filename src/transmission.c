/* nbdstack transmission phase: parse requests, validate them against the
 * negotiated flags, run them through the stack, reply (proto.md
 * "Transmission", "Request types", "Error values").
 *
 * Requests run inline on the reader thread when no layer of the export may
 * block (no handoff, best latency and CPU; small replies are batched), or
 * when its layers only rarely block, until requests turn out to block
 * (tx_adapt).  Otherwise a lazily grown pool of per-connection workers runs
 * them concurrently and replies leave in completion order.  In-flight
 * requests and bytes are bounded so a client that never reads replies
 * cannot grow the server's memory.
 * A bad request gets an error reply and the connection goes on; a protocol
 * violation (bad magic, oversized write payload) closes this connection.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bufmem.h"
#include "conn.h"
#include "protocol.h"

#define TX_MAX_INFLIGHT_BYTES (64u << 20)
#define TX_MAX_INFLIGHT       64
/* Finished requests are kept with their buffers for reuse: a fresh
 * buffer costs an mmap, a page fault per 4 KiB and an munmap (musl maps
 * every allocation over 128 KiB), and on a virtual machine the faults are
 * dear.  Keeping only 16 made nbdcopy (64 requests of 256 KiB in flight
 * per connection) read a file at 460 MiB/s and 3.1 s/GiB of CPU. */
#define TX_KEEP_BUF           (4u << 20)   /* larger buffers are not kept */
#define TX_FREELIST_MAX       TX_MAX_INFLIGHT
#define TX_KEEP_BYTES         (32u << 20)  /* per connection */
#define TX_HOLE_GRANULE       4096
#define TX_SCAN_STREAK        16          /* reads without zeros, then ... */
#define TX_SCAN_EVERY         256         /* ... back off to one in this many */
#define TX_MAX_CHUNKS         64
#define TX_WORKER_STACK       (256u << 10)
#define TX_SLOW_NS            1000000     /* 1 ms: an inline request too slow */
#define TX_PROBE              64          /* requests watched after one */
#define TX_SLOW_COUNT         4           /* ... this many times ... */
#define TX_SLOW_WINDOW        256         /* ... within this many requests */

/* ---- requests and buffers ---------------------------------------------- */

static struct nbd_request *
tx_get_request(struct nbd_conn *c)
{
  struct nbd_request *r;

  pthread_mutex_lock(&c->qlock);
  r = c->freelist;
  if (r) {
    c->freelist = r->next;
    c->nfree--;
    c->nfree_bytes -= r->bufcap;
  }
  pthread_mutex_unlock(&c->qlock);
  if (r == NULL)
    r = calloc(1, sizeof *r);
  else if (r->bufcap) {
    bufmem_unkeep(r->bufcap);   /* kept, and now in use again */
    atomic_fetch_add(&c->buf_inuse, r->bufcap);
  }
  return r;
}

/* Frees r's buffer and gives its bytes back to the budget. */
static void
tx_free_buf(struct nbd_conn *c, struct nbd_request *r)
{
  if (r->bufcap) {
    atomic_fetch_sub(&c->buf_inuse, r->bufcap);
    bufmem_uncharge(r->bufcap);
  }
  free(r->buf);
  r->buf = NULL;
  r->bufcap = 0;
}

/* Caller holds qlock. */
static void
tx_put_request_locked(struct nbd_conn *c, struct nbd_request *r)
{
  if (c->nfree >= TX_FREELIST_MAX) {
    tx_free_buf(c, r);
    free(r);
    return;
  }
  if (r->bufcap > TX_KEEP_BUF ||
      c->nfree_bytes + r->bufcap > TX_KEEP_BYTES ||
      (r->bufcap && !bufmem_keep(r->bufcap)))
    tx_free_buf(c, r);
  else
    atomic_fetch_sub(&c->buf_inuse, r->bufcap);
  r->next = c->freelist;
  c->freelist = r;
  c->nfree++;
  c->nfree_bytes += r->bufcap;
}

static int
tx_cancelled(void *arg)
{
  struct nbd_conn *c = arg;
  int stop;

  pthread_mutex_lock(&c->qlock);
  stop = c->stopping;
  pthread_mutex_unlock(&c->qlock);
  return stop || nbd_server_stopping();
}

/* A buffer of at least len bytes for r, within the server-wide budget
 * (bufmem.c): when it is spent, the reader waits here and reads nothing
 * more from its socket, after sending the replies it had batched.
 * 0, -ENOMEM, or -ESHUTDOWN when the wait was cut short. */
static int
tx_reserve(struct nbd_conn *c, struct nbd_request *r, size_t len)
{
  char *p;

  if (r->bufcap >= len)
    return 0;
  tx_free_buf(c, r);
  if (!bufmem_try(len, atomic_load(&c->buf_inuse))) {
    if (c->olen)
      conn_flush(c);
    if (bufmem_wait(len, atomic_load(&c->buf_inuse), tx_cancelled, c) == -1)
      return -ESHUTDOWN;
  }
  p = malloc(len);
  if (p == NULL) {
    bufmem_uncharge(len);
    return -ENOMEM;
  }
  atomic_fetch_add(&c->buf_inuse, len);
  r->buf = p;
  r->bufcap = len;
  return 0;
}

/* ---- replies ------------------------------------------------------------ */

static int
tx_simple_reply(struct nbd_conn *c, const struct nbd_request *r,
                uint32_t error, const void *data, size_t len)
{
  unsigned char h[16];
  struct iovec iov[2] = { { h, sizeof h }, { (void *)data, len } };

  wire_put32(h, NBD_SIMPLE_REPLY_MAGIC);
  wire_put32(h + 4, error);
  wire_put64(h + 8, r->cookie);
  return conn_writev(c, iov, error == 0 && len ? 2 : 1);
}

static void
tx_chunk_header(unsigned char *h, const struct nbd_request *r, uint16_t flags,
                uint16_t type, uint32_t len)
{
  wire_put32(h, NBD_STRUCTURED_REPLY_MAGIC);
  wire_put16(h + 4, flags);
  wire_put16(h + 6, type);
  wire_put64(h + 8, r->cookie);
  wire_put32(h + 16, len);
}

static int
tx_error_reply(struct nbd_conn *c, const struct nbd_request *r, int err)
{
  uint32_t nbderr = conn_nbd_error(err);
  const char *msg;
  unsigned char h[20 + 6];
  struct iovec iov[2];
  size_t mlen;

  /* Structured replies are mandatory for READ and BLOCK_STATUS once
   * negotiated; they also carry a message for a human. */
  if (!c->structured ||
      (r->type != NBD_CMD_READ && r->type != NBD_CMD_BLOCK_STATUS))
    return tx_simple_reply(c, r, nbderr, NULL, 0);
  msg = strerror(err < 0 ? -err : err);
  mlen = strlen(msg);
  tx_chunk_header(h, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                  (uint32_t)(6 + mlen));
  wire_put32(h + 20, nbderr);
  wire_put16(h + 24, (uint16_t)mlen);
  iov[0].iov_base = h;
  iov[0].iov_len = sizeof h;
  iov[1].iov_base = (void *)msg;
  iov[1].iov_len = mlen;
  return conn_writev(c, iov, 2);
}

/* A structured read reply: data chunks, with aligned runs of zeros sent as
 * hole chunks (they read as zero: proto.md NBD_REPLY_TYPE_OFFSET_HOLE),
 * unless the client asked not to fragment (DF).
 *
 * Finding the zeros means touching every 4 KiB of the data, which is not
 * free: in this VM the first user touch of a page the kernel has just
 * filled (a pread from the page cache) costs microseconds, and scanning
 * one read in 8 still took 21% of the server's CPU for nbdcopy out of a
 * cached file (0.96 -> 0.75 s of CPU per GiB without it).  So after
 * TX_SCAN_STREAK reads in a row without a zero granule, the scans back off
 * exponentially: the reads whose streak count is a power of two, then one
 * in TX_SCAN_EVERY, until a scan finds zeros again.  Data sent as data
 * instead of a hole is still correct, only longer on the wire.
 */
static int
tx_read_reply(struct nbd_conn *c, const struct nbd_request *r)
{
  unsigned streak = __atomic_load_n(&c->nohole_reads, __ATOMIC_RELAXED);
  int scan = !(r->flags & NBD_FLAG_DF) &&
             (streak < TX_SCAN_STREAK || (streak & (streak - 1)) == 0 ||
              streak % TX_SCAN_EVERY == 0);
  int holes = 0;
  unsigned char hdrs[TX_MAX_CHUNKS][32];
  struct iovec iov[2 * TX_MAX_CHUNKS];
  uint32_t pos = 0, end = r->count;
  int nchunks = 0, niov = 0;

  while (pos < end) {
    uint32_t run_end = end, g;
    int hole = 0;

    if (scan && nchunks < TX_MAX_CHUNKS - 1) {
      /* First granule boundary at or after pos, aligned to the disk. */
      uint64_t a = (r->offset + pos + TX_HOLE_GRANULE - 1) &
                   ~(uint64_t)(TX_HOLE_GRANULE - 1);
      uint32_t first = (uint32_t)(a - r->offset);
      if (first == pos && end - pos >= TX_HOLE_GRANULE &&
          nbd_is_zero(r->buf + pos, TX_HOLE_GRANULE)) {
        hole = 1;
        for (g = pos + TX_HOLE_GRANULE; end - g >= TX_HOLE_GRANULE &&
             nbd_is_zero(r->buf + g, TX_HOLE_GRANULE); g += TX_HOLE_GRANULE)
          ;
        run_end = g;
      } else {
        /* Data until the next all-zero aligned granule. */
        for (g = first > pos ? first : pos + TX_HOLE_GRANULE;
             g < end && end - g >= TX_HOLE_GRANULE; g += TX_HOLE_GRANULE)
          if (nbd_is_zero(r->buf + g, TX_HOLE_GRANULE))
            break;
        run_end = g < end && end - g >= TX_HOLE_GRANULE ? g : end;
      }
    }
    unsigned char *h = hdrs[nchunks++];
    uint16_t fl = run_end == end ? NBD_REPLY_FLAG_DONE : 0;
    if (hole) {
      holes = 1;
      tx_chunk_header(h, r, fl, NBD_REPLY_TYPE_OFFSET_HOLE, 12);
      wire_put64(h + 20, r->offset + pos);
      wire_put32(h + 28, run_end - pos);
      iov[niov].iov_base = h;
      iov[niov++].iov_len = 32;
    } else {
      tx_chunk_header(h, r, fl, NBD_REPLY_TYPE_OFFSET_DATA,
                      8 + run_end - pos);
      wire_put64(h + 20, r->offset + pos);
      iov[niov].iov_base = h;
      iov[niov++].iov_len = 28;
      iov[niov].iov_base = r->buf + pos;
      iov[niov++].iov_len = run_end - pos;
    }
    pos = run_end;
  }
  if (scan || streak >= TX_SCAN_STREAK)
    __atomic_store_n(&c->nohole_reads, holes ? 0 : streak + 1,
                     __ATOMIC_RELAXED);
  return conn_writev(c, iov, niov);
}

static int
tx_block_status(struct nbd_conn *c, struct nbd_request *r)
{
  struct nbd_extents *e = nbd_extents_new(r->offset, r->offset + r->count);
  unsigned char h[24], *d = NULL;
  struct iovec iov[2];
  size_t i, n;
  int err;

  if (e == NULL)
    return tx_error_reply(c, r, -ENOMEM);
  err = next_extents(c->top, r->count, r->offset, r->flags, e);
  if (err == 0 && e->n == 0)
    err = -EIO;                 /* a layer reported nothing: its bug */
  if (err < 0) {
    nbd_extents_free(e);
    return tx_error_reply(c, r, err);
  }
  n = (r->flags & NBD_FLAG_REQ_ONE) ? 1 : e->n;
  d = malloc(8 * n);
  if (d == NULL) {
    nbd_extents_free(e);
    return tx_error_reply(c, r, -ENOMEM);
  }
  for (i = 0; i < n; i++) {
    /* Each extent lies within the request, so its length fits 32 bits. */
    wire_put32(d + 8 * i, (uint32_t)e->v[i].length);
    wire_put32(d + 8 * i + 4, e->v[i].type);
  }
  tx_chunk_header(h, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS,
                  (uint32_t)(4 + 8 * n));
  wire_put32(h + 20, NBD_META_BASE_ALLOCATION_ID);
  iov[0].iov_base = h;
  iov[0].iov_len = sizeof h;
  iov[1].iov_base = d;
  iov[1].iov_len = 8 * n;
  err = conn_writev(c, iov, 2);
  free(d);
  nbd_extents_free(e);
  return err;
}

/* ---- validation ---------------------------------------------------------- */

/* Checks a request against the negotiated flags; 0 or -errno.  The engine
 * checks again at each layer; this gives the client the errors the NBD
 * protocol asks for, in its order (EPERM before ENOSPC). */
static int
tx_validate(const struct nbd_conn *c, const struct nbd_request *r)
{
  uint16_t tf = c->tflags;
  uint32_t allowed = NBD_FLAG_FUA;
  int past_end_err = EINVAL, writes = 0;
  uint64_t size = (uint64_t)c->top->size;

  switch (r->type) {
  case NBD_CMD_READ:
    if (c->structured)
      allowed |= NBD_FLAG_DF;
    break;
  case NBD_CMD_WRITE:
    writes = 1;
    break;
  case NBD_CMD_FLUSH:
    if (!(tf & NBD_FLAG_SEND_FLUSH) || r->offset || r->count)
      return -EINVAL;
    break;
  case NBD_CMD_TRIM:
    writes = 1;
    if (!(tf & NBD_FLAG_READ_ONLY) && !(tf & NBD_FLAG_SEND_TRIM))
      return -EINVAL;
    break;
  case NBD_CMD_CACHE:
    if (!(tf & NBD_FLAG_SEND_CACHE))
      return -EINVAL;
    break;
  case NBD_CMD_WRITE_ZEROES:
    writes = 1;
    allowed |= NBD_FLAG_NO_HOLE;
    if (tf & NBD_FLAG_SEND_FAST_ZERO)
      allowed |= NBD_FLAG_FAST_ZERO;
    if (!(tf & NBD_FLAG_READ_ONLY) && !(tf & NBD_FLAG_SEND_WRITE_ZEROES))
      return -EINVAL;
    break;
  case NBD_CMD_BLOCK_STATUS:
    allowed |= NBD_FLAG_REQ_ONE;
    if (!c->meta_base_allocation)
      return -EINVAL;
    break;
  default:
    return -EINVAL;
  }
  if (r->flags & ~allowed)
    return -EINVAL;
  if ((r->flags & NBD_FLAG_FUA) && !(tf & NBD_FLAG_SEND_FUA))
    return -EINVAL;
  if (writes && (tf & NBD_FLAG_READ_ONLY))
    return -EPERM;
  if (r->type == NBD_CMD_FLUSH)
    return 0;
  /* proto.md: ENOSPC for writes past the end; a trim writes nothing, so
   * it gets EINVAL like every other request (as nbdkit does). */
  if (r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES)
    past_end_err = ENOSPC;
  if (r->count == 0)
    return -EINVAL;
  if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE) &&
      r->count > c->max_payload)
    return -EINVAL;
  if (r->count > size || r->offset > size - r->count)
    return -past_end_err;
  return 0;
}

/* ---- running one request -------------------------------------------------- */

/* How long the stack took over one inline request, and whether the thread
 * slept meanwhile (tx_adapt).  The reply is not part of it: a send that
 * waits for a slow client says nothing about the layers. */
struct tx_timing {
  uint64_t t0;                  /* in: when the request started */
  long nvcsw;                   /* in: voluntary switches before, or -1 */
  uint64_t took;                /* out: ns in the stack */
  int slept;                    /* out: nvcsw given and over 1 ms asleep */
};

/* Times this thread went to sleep by itself (I/O, a lock), as opposed to
 * being preempted. */
static long
tx_voluntary_switches(void)
{
  struct rusage ru;

  return getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_nvcsw : 0;
}

/* Ends the timing of tm (NULL: none): how long since t0, and whether the
 * thread slept meanwhile, when that was asked and it took over 1 ms. */
static void
tx_timing_stop(struct tx_timing *tm)
{
  if (tm == NULL)
    return;
  tm->took = conn_now_ns() - tm->t0;
  tm->slept = tm->nvcsw >= 0 && tm->took > TX_SLOW_NS &&
              tx_voluntary_switches() > tm->nvcsw;
}

/* The payload of a write, read from the socket as the stack asks. */
struct tx_source {
  struct nbd_source src;
  struct nbd_conn *c;
};

static int
tx_source_readv(struct nbd_source *src, struct iovec *iov, int n)
{
  return conn_readv(((struct tx_source *)src)->c, iov, n);
}

/* Runs a validated request and sends its reply; -1 if the reply could not
 * be written (the connection is then dead).  tm (or NULL) times the
 * stack. */
static int
tx_execute(struct nbd_conn *c, struct nbd_request *r, struct tx_timing *tm)
{
  struct nbd_ctx *t = c->top;
  uint32_t fl = r->flags;
  int err = 0, locked = 0, ret;

  if (c->exp->model == NBD_SERIALIZE_ALL_REQUESTS) {
    pthread_mutex_lock(&c->exp->lock);
    locked = 1;
  }
  switch (r->type) {
  case NBD_CMD_READ:
    err = tx_reserve(c, r, r->count);
    if (err == 0)
      err = next_pread(t, r->buf, r->count, r->offset, fl & ~NBD_FLAG_FUA);
    break;
  case NBD_CMD_WRITE:
    __atomic_store_n(&c->wrote, 1, __ATOMIC_RELAXED);
    if (r->pull) {
      struct tx_source src = { { tx_source_readv, r->count, 0 }, c };
      err = next_pwrite_from(t, &src.src, r->count, r->offset, fl);
      if (src.src.failed) {
        ret = -1;               /* the client went away mid-payload */
        goto out;
      }
    } else
      err = next_pwrite(t, r->buf, r->count, r->offset, fl);
    break;
  case NBD_CMD_FLUSH:
    err = next_flush(t, 0);
    break;
  case NBD_CMD_TRIM:
    __atomic_store_n(&c->wrote, 1, __ATOMIC_RELAXED);
    err = next_trim(t, r->count, r->offset, fl);
    break;
  case NBD_CMD_CACHE:
    err = next_cache(t, r->count, r->offset, fl & ~NBD_FLAG_FUA);
    break;
  case NBD_CMD_WRITE_ZEROES:
    __atomic_store_n(&c->wrote, 1, __ATOMIC_RELAXED);
    err = next_zero(t, r->count, r->offset, fl);
    break;
  case NBD_CMD_BLOCK_STATUS:
    ret = tx_block_status(c, r);
    tx_timing_stop(tm);         /* with its reply: rare enough */
    goto out;
  }
  tx_timing_stop(tm);
  if (err < 0)
    ret = tx_error_reply(c, r, err);
  else if (r->type == NBD_CMD_READ)
    ret = c->structured ? tx_read_reply(c, r)
                        : tx_simple_reply(c, r, 0, r->buf, r->count);
  else
    ret = tx_simple_reply(c, r, 0, NULL, 0);
out:
  if (locked)
    pthread_mutex_unlock(&c->exp->lock);
  return ret;
}

/* ---- workers ----------------------------------------------------------------- */

static void
tx_finish(struct nbd_conn *c, struct nbd_request *r, int dead)
{
  pthread_mutex_lock(&c->qlock);
  c->inflight--;
  c->inflight_bytes -= r->count;
  if (dead)
    c->stopping = 1;
  tx_put_request_locked(c, r);
  pthread_cond_broadcast(&c->donecond);
  pthread_mutex_unlock(&c->qlock);
}

static void *
tx_worker(void *arg)
{
  struct nbd_conn *c = arg;
  struct nbd_request *r;

  for (;;) {
    pthread_mutex_lock(&c->qlock);
    while (c->qhead == NULL && !c->stopping) {
      c->nidle++;
      pthread_cond_wait(&c->qcond, &c->qlock);
      c->nidle--;
    }
    r = c->qhead;
    if (r == NULL) {
      pthread_mutex_unlock(&c->qlock);
      return NULL;
    }
    c->qhead = r->next;
    if (c->qhead == NULL)
      c->qtail = NULL;
    pthread_mutex_unlock(&c->qlock);
    tx_finish(c, r, tx_execute(c, r, NULL) == -1);
  }
}

/* Caller holds qlock.  Starts a worker when none is idle. */
static void
tx_maybe_spawn(struct nbd_conn *c)
{
  pthread_attr_t attr;
  pthread_t *w;
  unsigned max = c->cfg->threads ? c->cfg->threads : 16;

  if (c->nidle > 0 || c->nworkers >= max)
    return;
  w = realloc(c->workers, (c->nworkers + 1) * sizeof *w);
  if (w == NULL)
    return;
  c->workers = w;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, TX_WORKER_STACK);
  if (pthread_create(&c->workers[c->nworkers], &attr, tx_worker, c) == 0)
    c->nworkers++;
  pthread_attr_destroy(&attr);
}

/* Queues a request; waits while the connection is at its in-flight bound.
 * Returns -1 if the connection is stopping. */
static int
tx_enqueue(struct nbd_conn *c, struct nbd_request *r)
{
  pthread_mutex_lock(&c->qlock);
  r->next = NULL;
  if (c->qtail)
    c->qtail->next = r;
  else
    c->qhead = r;
  c->qtail = r;
  tx_maybe_spawn(c);
  if (c->nworkers == 0) {
    /* No thread could be started: run it here rather than hang. */
    c->qhead = c->qtail = NULL;
    pthread_mutex_unlock(&c->qlock);
    tx_finish(c, r, tx_execute(c, r, NULL) == -1);
    return 0;
  }
  pthread_cond_signal(&c->qcond);
  pthread_mutex_unlock(&c->qlock);
  return 0;
}

/* Waits until in-flight work is under the bounds (or all done when
 * all = 1).  Returns -1 if a worker found the connection dead. */
static int
tx_wait(struct nbd_conn *c, int all)
{
  int dead;

  pthread_mutex_lock(&c->qlock);
  while (all ? c->inflight > 0
             : (c->inflight >= TX_MAX_INFLIGHT ||
                c->inflight_bytes >= TX_MAX_INFLIGHT_BYTES))
    pthread_cond_wait(&c->donecond, &c->qlock);
  dead = c->stopping;
  pthread_mutex_unlock(&c->qlock);
  return dead ? -1 : 0;
}

struct tx_adapt {
  unsigned window;              /* requests in this window */
  unsigned slow;                /* slow ones that slept, in this window */
  unsigned probe;               /* requests still to watch closely */
};

/* ---- inline or workers ------------------------------------------------------ */

/* For stacks that rarely block: decides, after each inline request, whether
 * the connection should move to workers.  A request over 1 ms is only a
 * suspicion: on a busy machine the thread may just have lost its CPU, and
 * moving to workers then costs much (fio 4 KiB qd 32 reads of a cached
 * file over 4 connections: 76k IOPS inline, 35k on workers).  So the next
 * TX_PROBE requests are watched closely (getrusage, about 1 us each here):
 * TX_SLOW_COUNT of them over 1 ms during which the thread slept by itself
 * within TX_SLOW_WINDOW requests mean the layer really blocks.  Returns 1
 * to switch. */
static int
tx_adapt(struct tx_adapt *a, const struct tx_timing *tm)
{
  if (++a->window == TX_SLOW_WINDOW)
    a->window = a->slow = 0;
  if (a->probe > 0) {
    a->probe--;
    if (tm->slept && ++a->slow >= TX_SLOW_COUNT)
      return 1;
  } else if (tm->took > TX_SLOW_NS)
    a->probe = TX_PROBE;
  return 0;
}

/* ---- the request loop ----------------------------------------------------------- */

/* Reads one request header and its payload.  Returns 0, 1 on DISC, -1 to
 * close (EOF, violation).  *verr is the validation result. */
static int
tx_read_request(struct nbd_conn *c, struct nbd_request *r, int *verr,
                int pull)
{
  unsigned char h[NBD_REQUEST_SIZE];
  int rc;

  c->at_request = c->rpos == c->rlen;
  rc = conn_read(c, h, sizeof h);
  c->at_request = 0;
  if (rc == -1)
    return -1;
  if (wire_get32(h) != NBD_REQUEST_MAGIC) {
    nbd_info("%s: bad request magic 0x%08x, closing", c->peer,
             wire_get32(h));
    return -1;
  }
  r->flags = wire_get16(h + 4);
  r->type = wire_get16(h + 6);
  r->cookie = wire_get64(h + 8);
  r->offset = wire_get64(h + 16);
  r->count = wire_get32(h + 24);
  if (r->type == NBD_CMD_DISC)
    return 1;
  *verr = tx_validate(c, r);
  r->pull = 0;
  /* A read's buffer is taken here, on the reader: when the budget is
   * spent it is the reader that waits, and the socket that stops. */
  if (r->type == NBD_CMD_READ && *verr == 0) {
    *verr = tx_reserve(c, r, r->count);
    return *verr == -ESHUTDOWN ? -1 : 0;
  }
  if (r->type != NBD_CMD_WRITE)
    return 0;
  if (pull && *verr == 0) {
    r->pull = 1;                /* tx_execute reads it */
    return 0;
  }
  /* The payload follows whatever we think of the request; one over the
   * maximum was refused by tx_validate. */
  if (r->count > c->max_payload && r->count > 2 * NBD_MAX_PAYLOAD) {
    nbd_info("%s: write of %u bytes exceeds the maximum, closing", c->peer,
             r->count);
    return -1;
  }
  if (*verr == 0 && (*verr = tx_reserve(c, r, r->count)) == -ESHUTDOWN)
    return -1;
  if (*verr != 0)               /* refused: the payload is not needed */
    return conn_skip(c, r->count);
  return conn_read(c, r->buf, r->count);
}

void
transmission_run(struct nbd_conn *c)
{
  const struct nbd_export *e = c->exp;
  int serial = e->model <= NBD_SERIALIZE_REQUESTS || c->cfg->threads == 1;
  int inl = serial || (e->nonblocking != NBD_MAY_BLOCK &&
                       c->cfg->inline_requests);
  /* "Rarely blocks": inline until a request turns out slow. */
  int adaptive = !serial && e->nonblocking == NBD_RARELY_BLOCKS;
  /* Writes whose top layer reads the payload itself (pwrite_from), when
   * nothing else can wait on that read: inline, never moving to workers,
   * and no lock across connections held meanwhile. */
  int pull = inl && !adaptive && e->model != NBD_SERIALIZE_ALL_REQUESTS &&
             c->top->pull;
  struct nbd_request *r;
  int verr = 0, rr;
  struct tx_timing tm = { 0, -1, 0, 0 };
  struct tx_adapt ad = { 0, 0, 0 };
  unsigned i;

  nbd_debug("%s: export \"%s\" running %s", c->peer, e->name,
            inl ? "inline" : "with workers");
  if (inl && conn_batch_start(c) == -1)
    return;
  for (;;) {
    if (!inl && tx_wait(c, 0) == -1)
      break;
    r = tx_get_request(c);
    if (r == NULL)
      break;
    rr = tx_read_request(c, r, &verr, pull);
    if (rr != 0 || verr != 0) {
      if (rr == 0 && tx_error_reply(c, r, verr) == -1)
        rr = -1;
      pthread_mutex_lock(&c->qlock);
      tx_put_request_locked(c, r);
      pthread_mutex_unlock(&c->qlock);
      if (rr != 0)
        break;
      continue;
    }
    if (inl) {
      int dead;
      if (adaptive) {
        tm.t0 = conn_now_ns();
        tm.nvcsw = ad.probe ? tx_voluntary_switches() : -1;
      }
      dead = tx_execute(c, r, adaptive ? &tm : NULL) == -1;
      pthread_mutex_lock(&c->qlock);
      tx_put_request_locked(c, r);
      pthread_mutex_unlock(&c->qlock);
      if (dead)
        break;
      if (adaptive && tx_adapt(&ad, &tm)) {
        nbd_debug("%s: %d requests over %d us slept: running requests on "
                  "workers from now on", c->peer, TX_SLOW_COUNT,
                  TX_SLOW_NS / 1000);
        conn_batch_stop(c);
        inl = adaptive = 0;
      }
      continue;
    }
    pthread_mutex_lock(&c->qlock);
    c->inflight++;
    c->inflight_bytes += r->count;
    pthread_mutex_unlock(&c->qlock);
    tx_enqueue(c, r);
  }

  /* DISC, EOF or error: every request already read still completes. */
  if (!inl)
    tx_wait(c, 1);
  else
    conn_batch_stop(c);
  pthread_mutex_lock(&c->qlock);
  c->stopping = 1;
  pthread_cond_broadcast(&c->qcond);
  pthread_mutex_unlock(&c->qlock);
  for (i = 0; i < c->nworkers; i++)
    pthread_join(c->workers[i], NULL);
  free(c->workers);
  c->workers = NULL;
  c->nworkers = 0;
  while ((r = c->freelist) != NULL) {
    c->freelist = r->next;
    if (r->bufcap) {            /* kept: back in use, then freed */
      bufmem_unkeep(r->bufcap);
      atomic_fetch_add(&c->buf_inuse, r->bufcap);
    }
    tx_free_buf(c, r);
    free(r);
  }
  c->nfree = 0;
  c->nfree_bytes = 0;
}
