/* nbdstack transmission phase: the request loop (read a request, check
 * it, run it through the export's stack, reply) until DISC, end of file
 * or a protocol violation (proto.md "Transmission").  Where requests run
 * is scheduler.c's; how they and their replies look on the wire protocol.c's.
 * A bad request gets an error reply and the connection goes on; a
 * protocol violation (bad magic, oversized write payload) closes this
 * connection.
 */
#include <errno.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "metrics.h"
#include "protocol.h"
#include "scheduler.h"

/* The extents of one meta context over the request. */
static int
tx_context_extents(struct nbd_conn *c, unsigned ctx,
                   const struct nbd_request *r, struct nbd_extents *e)
{
  switch (ctx) {
  case NBD_META_BASE_ALLOCATION:
    return next_extents(c->top, r->count, r->offset,
                        r->flags & ~NBD_CMD_FLAG_PAYLOAD_LEN, e);
  case NBD_META_ALLOCATION_DEPTH:
    return next_depth(c->top, r->count, r->offset,
                      r->flags & ~NBD_CMD_FLAG_PAYLOAD_LEN, e);
  default:
    return -EINVAL;
  }
}

/* A status chunk for each context the request wants (every selected
 * one, or those of its payload), in id order. */
static int
tx_block_status(struct nbd_conn *c, struct nbd_request *r)
{
  struct nbd_extents *e[NBD_META_COUNT];
  uint32_t ids[NBD_META_COUNT];
  uint64_t t0 = metrics_start(c);
  size_t n = 0, i;
  unsigned ctx;
  int err = 0;

  for (ctx = 0; ctx < NBD_META_COUNT && err == 0; ctx++) {
    if (!(r->meta & (1u << ctx)))
      continue;
    e[n] = nbd_extents_new(r->offset, r->offset + r->count);
    if (e[n] == NULL) {
      err = -ENOMEM;
      break;
    }
    ids[n] = ctx + 1;
    err = tx_context_extents(c, ctx, r, e[n++]);
    if (err == 0 && e[n - 1]->n == 0)
      err = -EIO;               /* a layer reported nothing: its bug */
  }
  if (err == 0 && n == 0)
    err = -EINVAL;
  metrics_request(c, r, err, t0);
  err = err < 0 ? proto_reply_error(c, r, err)
                : proto_reply_extents(c, r, n, ids, e);
  for (i = 0; i < n; i++)
    nbd_extents_free(e[i]);
  return err;
}

/* The payload of a write, read from the socket as the stack asks. */
struct tx_source {
  struct nbd_source src;
  struct nbd_conn *c;
};

static int
tx_source_readv(struct nbd_source *src, struct iovec *iov, int n)
{
  return wire_readv(&((struct tx_source *)src)->c->w, iov, n);
}

static int
tx_source_splice(struct nbd_source *src, int fd, int64_t *off, uint64_t len,
                 uint64_t *moved)
{
  return wire_splice(&((struct tx_source *)src)->c->w, fd, off, len, moved);
}

static uint64_t
tx_source_ready(struct nbd_source *src)
{
  return wire_ready(&((struct tx_source *)src)->c->w);
}

/* A write at least this large goes to a backend whose submit takes
 * payloads still in the socket (submit_src: the nbd proxy, which
 * splices them to its upstream) without being read here first. */
#define TX_SPLICE_MIN (64u << 10)

/* A small read, while replies are batched: read straight into the
 * batch, after the room of the reply's header.  Returns 1 when that
 * cannot be (tx_execute goes the usual way), else what tx_execute
 * returns. */
static int
tx_read_in_place(struct nbd_conn *c, struct nbd_request *r, uint32_t fl,
                 struct sched_timing *tm, uint64_t t0)
{
  size_t hl = proto_read_header_size(c), len;
  unsigned char *p;
  int err;

  /* Not while replies may come from other threads (submit): the reply
   * lock is held until the layer is done. */
  if (c->top->async ||
      (p = (unsigned char *)wire_reserve(&c->w, hl + r->count)) == NULL)
    return 1;
  err = next_pread(c->top, p + hl, (uint32_t)r->count, r->offset,
                   fl & ~NBD_CMD_FLAG_FUA);
  sched_timing_stop(tm);
  metrics_request(c, r, err, t0);
  len = err < 0 ? 0 : proto_reply_read_at(c, r, p);
  wire_commit(&c->w, len);
  if (err < 0)
    return proto_reply_error(c, r, err);
  if (len > 0)
    return 0;
  /* Holes and data: several chunks, from a copy (wire_commit left the
   * data where it was; only this thread adds to the batch). */
  if ((err = sched_reserve(c, r, (size_t)r->count)) < 0)
    return proto_reply_error(c, r, err);
  memcpy(r->buf, p + hl, (size_t)r->count);
  return proto_reply_read(c, r);
}

/* A large read from a backend that passes its own storage (pread_to),
 * while requests run inline on a plain socket with structured replies:
 * its data goes from the backend to the socket with no copy in between
 * while the socket has room (wire_push).  Not when the I/O policy wants
 * this reply scanned for holes: that needs the data in a buffer.
 * Returns 1 when it does not apply (tx_execute goes the usual way),
 * else what tx_execute returns. */
struct tx_sink {
  struct nbd_sink sink;
  struct wire_push push;
};

static int
tx_sink_writev(struct nbd_sink *dst, const struct iovec *iov, int n)
{
  return wire_push(&((struct tx_sink *)dst)->push, iov, n);
}

static int
tx_read_push(struct nbd_conn *c, struct nbd_request *r, uint32_t fl,
             struct sched_timing *tm, uint64_t t0)
{
  unsigned char h[PROTO_DATA_HEADER_MAX];
  struct tx_sink s;
  size_t hl;
  int err;

  if (!c->top->push || !c->structured || !wire_can_push(&c->w) ||
      (!(r->flags & NBD_CMD_FLAG_DF) && iopolicy_scan_begin(&c->w.pol)) ||
      sched_reserve(c, r, (size_t)r->count) < 0)
    return 1;
  hl = proto_data_header(c, r, h);
  memset(&s.sink, 0, sizeof s.sink);
  s.sink.writev = tx_sink_writev;
  s.sink.left = r->count;
  if (wire_push_begin(&s.push, &c->w, h, hl, r->buf) == -1)
    return -1;
  err = next_pread_to(c->top, &s.sink, (uint32_t)r->count, r->offset,
                      fl & ~NBD_CMD_FLAG_FUA);
  sched_timing_stop(tm);
  metrics_request(c, r, err, t0);
  if (err == 0 && s.sink.left == 0 && !s.sink.failed) {
    iopolicy_scan_end(&c->w.pol, 0, 0);
    return wire_push_end(&s.push, 1);
  }
  if (wire_push_end(&s.push, 0) == -1) {
    if (!s.sink.failed)
      nbd_error("%s: export \"%s\": a read failed after its data had "
                "started (%s), closing", c->peer, c->exp->name,
                err < 0 ? strerror(-err) : "short");
    return -1;
  }
  return proto_reply_error(c, r, err < 0 ? err : -EIO);
}

/* Counts a request that ran (started at t0) and sends its reply: the
 * error, the read's data, or a plain ack.  -1 if the reply could not be
 * written.  Shared by requests run here and those completed later. */
static int
tx_reply(struct nbd_conn *c, struct nbd_request *r, int err, uint64_t t0)
{
  metrics_request(c, r, err, t0);
  if (err < 0)
    return proto_reply_error(c, r, err);
  if (r->type == NBD_CMD_READ)
    return proto_reply_read(c, r);
  return proto_reply_ok(c, r);
}

/* Runs a validated request and sends its reply; -1 if the reply could not
 * be written (the connection is then dead).  tm (or NULL) times the
 * stack. */
static int
tx_execute(struct nbd_conn *c, struct nbd_request *r,
           struct sched_timing *tm)
{
  struct nbd_ctx *t = c->top;
  uint32_t fl = r->flags & ~NBD_CMD_FLAG_PAYLOAD_LEN;  /* the wire's only */
  int err = 0, locked = 0, ret;
  uint64_t t0 = metrics_start(c);

  if (c->exp->model == NBD_SERIALIZE_ALL_REQUESTS) {
    pthread_mutex_lock(&c->exp->lock);
    locked = 1;
  }
  switch (r->type) {
  case NBD_CMD_READ:
    if ((ret = tx_read_in_place(c, r, fl, tm, t0)) != 1 ||
        (ret = tx_read_push(c, r, fl, tm, t0)) != 1)
      goto out;
    err = sched_reserve(c, r, (size_t)r->count);
    if (err == 0)
      err = next_pread(t, r->buf, (uint32_t)r->count, r->offset,
                       fl & ~NBD_CMD_FLAG_FUA);
    break;
  case NBD_CMD_WRITE:
    __atomic_store_n(&c->wrote, 1, __ATOMIC_RELAXED);
    if (r->data) {              /* the payload in the wire's buffer */
      err = next_pwrite(t, r->data, (uint32_t)r->count, r->offset, fl);
      r->data = NULL;
    } else if (r->pull) {
      struct tx_source src = {
        { tx_source_readv, r->count, 0,
          wire_can_splice(&c->w) ? tx_source_splice : NULL,
          tx_source_ready }, c };
      uint64_t in0 = c->w.splice_in_ns;

      err = next_pwrite_from(t, &src.src, (uint32_t)r->count, r->offset,
                             fl);
      /* Waiting for the payload is the client's time, not the stack's. */
      if (tm)
        tm->t0 += c->w.splice_in_ns - in0;
      if (src.src.failed) {
        ret = -1;               /* the client went away mid-payload */
        goto out;
      }
    } else
      err = next_pwrite(t, r->buf, (uint32_t)r->count, r->offset, fl);
    break;
  case NBD_CMD_FLUSH:
    err = next_flush(t, 0);
    break;
  case NBD_CMD_TRIM:
    __atomic_store_n(&c->wrote, 1, __ATOMIC_RELAXED);
    err = next_trim(t, r->count, r->offset, fl);
    break;
  case NBD_CMD_CACHE:
    err = next_cache(t, r->count, r->offset, fl & ~NBD_CMD_FLAG_FUA);
    break;
  case NBD_CMD_WRITE_ZEROES:
    __atomic_store_n(&c->wrote, 1, __ATOMIC_RELAXED);
    err = next_zero(t, r->count, r->offset, fl);
    break;
  case NBD_CMD_BLOCK_STATUS:
    ret = tx_block_status(c, r);
    sched_timing_stop(tm);         /* with its reply: rare enough */
    goto out;
  }
  sched_timing_stop(tm);
  ret = tx_reply(c, r, err, t0);
out:
  if (locked)
    pthread_mutex_unlock(&c->exp->lock);
  return ret;
}

/* ---- reads and writes the backend completes later ------------------------ */

/* From the thread that completes the request (the nbd backend's reply
 * reader): the reply, then the request goes back to the scheduler. */
static void
tx_async_done(struct nbd_async *a, int err)
{
  struct nbd_request *r = (struct nbd_request *)
                          ((char *)a - offsetof(struct nbd_request, async));
  struct nbd_conn *c = r->conn;

  sched_done(c, r, tx_reply(c, r, err, r->t0) == -1);
}

/* A write left in the socket for submit_src that submit did not take
 * from there: its payload is read into a buffer now, on the reader, as
 * for any other write (a worker must never read the socket).  1 to run
 * it; 0 when it was answered (refused), -1 when the connection is dead,
 * both with r given back. */
static int
tx_unpull(struct nbd_conn *c, struct nbd_request *r)
{
  int err;

  r->pull = 0;
  err = sched_reserve(c, r, (size_t)r->payload);
  if (err == 0 && wire_read(&c->w, r->buf, (size_t)r->payload) == 0)
    return 1;
  if (err == 0 || err == -ESHUTDOWN ||
      wire_skip(&c->w, (size_t)r->payload) == -1) {
    sched_put(c, r);
    return -1;
  }
  metrics_request(c, r, err, 0);
  err = proto_reply_error(c, r, err);
  sched_put(c, r);
  return err == -1 ? -1 : 0;
}

/* Hands a read or write to the stack's submit, when the client has more
 * than this one going: the reader goes on to the next request at once,
 * and the reply leaves when it is done.  A
 * proxy then needs no thread waiting on each request in flight (perf:
 * futex calls, 6 a request, were most of its CPU).  Returns 1 when
 * submit does not take it (tx_execute runs it), else 0, or -1 when the
 * connection is dead. */
static int
tx_submit(struct nbd_conn *c, struct nbd_sched *s, struct nbd_request *r)
{
  struct nbd_async *a = &r->async;
  struct tx_source src = { { tx_source_readv, r->count, 0,
                             tx_source_splice, tx_source_ready }, c };
  int err;

  if (r->type != NBD_CMD_READ && r->type != NBD_CMD_WRITE)
    return 1;
  /* Alone (queue depth 1): run inline, where the nbd backend reads its
   * own reply, rather than wake the thread that reads replies. */
  if (atomic_load(&c->w.busy) == 0 && wire_buffered(&c->w) == 0)
    return 1;
  memset(a, 0, sizeof *a);
  a->op = r->type == NBD_CMD_READ ? NBD_ASYNC_READ : NBD_ASYNC_WRITE;
  a->buf = r->pull ? NULL : r->buf;
  a->src = r->pull ? &src.src : NULL;
  a->count = (uint32_t)r->count;
  a->offset = r->offset;
  a->flags = r->flags & ~NBD_CMD_FLAG_PAYLOAD_LEN;
  a->done = tx_async_done;
  r->conn = c;
  r->t0 = metrics_start(c);
  if (r->type == NBD_CMD_WRITE)
    __atomic_store_n(&c->wrote, 1, __ATOMIC_RELAXED);
  sched_track(c, s, r);
  err = next_submit(c->top, a);
  a->src = NULL;
  if (err == -EAGAIN && r->pull && src.src.left == r->count) {
    /* The layer wants this payload in a buffer. */
    sched_untrack(c, r);
    if ((err = tx_unpull(c, r)) != 1)
      return err;               /* answered (0) or dead (-1) */
    sched_track(c, s, r);
    a->buf = r->buf;
    err = next_submit(c->top, a);
  }
  if (err == -EOPNOTSUPP && (!r->pull || src.src.left == r->count)) {
    sched_untrack(c, r);
    return 1;                   /* tx_execute runs it (and reads it) */
  }
  /* What the layer left of a payload still in the socket leaves it now,
   * so the stream stays in sync. */
  if (r->pull && !src.src.failed && src.src.left > 0)
    (void)nbd_source_skip(&src.src, src.src.left);
  if (err == 0)
    return src.src.failed ? -1 : 0;
  sched_untrack(c, r);
  if (src.src.failed) {
    sched_put(c, r);
    return -1;                  /* the client went away mid-payload */
  }
  metrics_request(c, r, err, r->t0);
  err = proto_reply_error(c, r, err);
  sched_put(c, r);
  return err == -1 ? -1 : 0;
}

/* ---- the request loop ----------------------------------------------------- */

/* A payload that is not a write's (block status's list of contexts,
 * or one of a command that takes none): read, and checked when it is
 * block status's.  The stream stays in sync either way. */
static int
tx_read_other_payload(struct nbd_conn *c, struct nbd_request *r, int *verr)
{
  unsigned char p[8 + 4 * NBD_META_COUNT];   /* each context at most once */

  if (r->type != NBD_CMD_BLOCK_STATUS || !r->ext ||
      !(c->tflags & NBD_FLAG_BLOCK_STAT_PAYLOAD) || r->payload > sizeof p) {
    *verr = -EINVAL;
    return wire_skip(&c->w, (size_t)r->payload);
  }
  if (wire_read(&c->w, p, (size_t)r->payload) == -1)
    return -1;
  *verr = proto_status_payload(c, r, p, r->payload);
  return 0;
}

/* Reads one request header and its payload.  Returns 0, 1 on DISC, -1 to
 * close (EOF, violation).  *verr is the validation result.  A header of
 * the style not negotiated is read whole (its magic tells its size) and
 * answered EINVAL, its payload skipped, so the stream stays in sync. */
static int
tx_read_request(struct nbd_conn *c, struct nbd_request *r, int *verr,
                const struct nbd_sched *s)
{
  unsigned char h[NBD_EXTENDED_REQUEST_SIZE];
  size_t size;
  int rc;

  c->w.at_request = wire_buffered(&c->w) == 0;
  rc = wire_read(&c->w, h, NBD_REQUEST_SIZE);
  c->w.at_request = 0;
  if (rc == -1)
    return -1;
  if ((size = proto_request_size(h)) == 0) {
    nbd_info("%s: bad request magic 0x%08x, closing", c->peer,
             wire_get32(h));
    return -1;
  }
  if (size > NBD_REQUEST_SIZE &&
      wire_read(&c->w, h + NBD_REQUEST_SIZE, size - NBD_REQUEST_SIZE) == -1)
    return -1;
  proto_parse_request(h, r);
  if (r->type == NBD_CMD_DISC) {
    c->disc = 1;
    return 1;
  }
  r->pull = 0;
  r->data = NULL;
  /* proto.md: a payload over the maximum is a reason to disconnect; up
   * to twice ours is still read and refused, so that a client a little
   * off gets an error, not a dead connection. */
  if (r->payload > c->max_payload && r->payload > 2 * NBD_MAX_PAYLOAD) {
    nbd_info("%s: request of a %" PRIu64 "-byte payload exceeds the "
             "maximum, closing", c->peer, r->payload);
    return -1;
  }
  *verr = 0;
  if (r->payload && r->type != NBD_CMD_WRITE) {
    if (tx_read_other_payload(c, r, verr) == -1)
      return -1;
    r->payload = 0;
  } else if (r->type == NBD_CMD_BLOCK_STATUS)
    r->meta = c->meta;
  if (*verr == 0)
    *verr = proto_validate(c, r);
  /* A read's buffer is taken here, on the reader: when the budget is
   * spent it is the reader that waits, and the socket that stops. */
  if (r->type == NBD_CMD_READ && *verr == 0) {
    if (s->inl && !s->can_async &&
        wire_can_reserve(&c->w, proto_read_header_size(c) + r->count))
      return 0;                 /* read into the batch (tx_read_in_place) */
    *verr = sched_reserve(c, r, (size_t)r->count);
    return *verr == -ESHUTDOWN ? -1 : 0;
  }
  if (r->payload == 0)
    return 0;
  /* Run inline, a write whose payload came with its header (pipelined
   * small writes) is written from the wire's buffer, which nothing
   * reads into before the request is done. */
  if (s->inl && !s->can_async && *verr == 0 &&
      (r->data = wire_take(&c->w, (size_t)r->payload)) != NULL)
    return 0;
  if (s->pull && s->inl && !s->can_async && *verr == 0 &&
      (!c->top->pull_splice ||
       (r->payload >= TX_SPLICE_MIN && wire_can_splice(&c->w)))) {
    r->pull = 1;                /* tx_execute reads it */
    return 0;
  }
  /* For submit_src (tx_submit), or tx_execute reads it. */
  if (s->can_async && c->top->async_src && *verr == 0 &&
      r->payload >= TX_SPLICE_MIN && r->payload == r->count &&
      wire_can_splice(&c->w)) {
    r->pull = 1;
    return 0;
  }
  /* The payload follows whatever we think of the request; one over the
   * maximum was refused by proto_validate. */
  if (*verr == 0 &&
      (*verr = sched_reserve(c, r, (size_t)r->payload)) == -ESHUTDOWN)
    return -1;
  if (*verr != 0)               /* refused: the payload is not needed */
    return wire_skip(&c->w, (size_t)r->payload);
  return wire_read(&c->w, r->buf, (size_t)r->payload);
}

void
transmission_run(struct nbd_conn *c)
{
  struct nbd_sched s;
  struct nbd_request *r;
  int verr = 0, rr;

  if (sched_start(c, &s, tx_execute) == -1)
    return;
  for (;;) {
    if (sched_room(c, &s) == -1)
      break;
    r = sched_get(c);
    if (r == NULL)
      break;
    rr = tx_read_request(c, r, &verr, &s);
    if (rr != 0 || verr != 0) {
      if (rr == 0)
        metrics_request(c, r, verr, 0);
      if (rr == 0 && proto_reply_error(c, r, verr) == -1)
        rr = -1;
      sched_put(c, r);
      if (rr != 0)
        break;
      continue;
    }
    c->nrequests++;
    if (r->type == NBD_CMD_READ)
      c->bytes_read += r->count;
    else if (r->type == NBD_CMD_WRITE)
      c->bytes_written += r->count;
    if (s.can_async && (rr = tx_submit(c, &s, r)) != 1) {
      if (rr == -1)
        break;
      continue;
    }
    if (r->pull && s.can_async && (rr = tx_unpull(c, r)) != 1) {
      if (rr == -1)
        break;
      continue;
    }
    if (sched_submit(c, &s, r) == -1)
      break;
  }
  /* DISC, EOF or error: every request already read still completes. */
  sched_stop(c, &s);
}
