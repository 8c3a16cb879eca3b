/* nbdstack protocol encoding for the transmission phase (proto.md
 * "Transmission", "Request types", "Structured replies", "Error values"):
 * request headers parsed and checked against what was negotiated,
 * replies built (simple, structured, error chunks, read data with holes,
 * block status) and sent, each as one write, through wire.c; and the one
 * errno to NBD error table.  It runs no request (transmission.c does) and
 * touches no socket.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "protocol.h"

#define PROTO_HOLE_GRANULE 4096
#define PROTO_MAX_CHUNKS   64

/* The one errno → NBD error table (proto.md "Error values"): EDQUOT and
 * EFBIG map to ENOSPC, EROFS to EPERM, anything unknown to EIO. */
uint32_t
proto_nbd_error(int err)
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

static int
proto_simple_reply(struct nbd_conn *c, const struct nbd_request *r,
                uint32_t error, const void *data, size_t len)
{
  unsigned char h[16];
  struct iovec iov[2] = { { h, sizeof h }, { (void *)data, len } };

  wire_put32(h, NBD_SIMPLE_REPLY_MAGIC);
  wire_put32(h + 4, error);
  wire_put64(h + 8, r->cookie);
  return wire_writev(&c->w, iov, error == 0 && len ? 2 : 1);
}

static void
proto_chunk_header(unsigned char *h, const struct nbd_request *r, uint16_t flags,
                uint16_t type, uint32_t len)
{
  wire_put32(h, NBD_STRUCTURED_REPLY_MAGIC);
  wire_put16(h + 4, flags);
  wire_put16(h + 6, type);
  wire_put64(h + 8, r->cookie);
  wire_put32(h + 16, len);
}

int
proto_reply_error(struct nbd_conn *c, const struct nbd_request *r, int err)
{
  uint32_t nbderr = proto_nbd_error(err);
  const char *msg;
  unsigned char h[20 + 6];
  struct iovec iov[2];
  size_t mlen;

  /* Structured replies are mandatory for READ and BLOCK_STATUS once
   * negotiated; they also carry a message for a human. */
  if (!c->structured ||
      (r->type != NBD_CMD_READ && r->type != NBD_CMD_BLOCK_STATUS))
    return proto_simple_reply(c, r, nbderr, NULL, 0);
  msg = strerror(err < 0 ? -err : err);
  mlen = strlen(msg);
  proto_chunk_header(h, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                  (uint32_t)(6 + mlen));
  wire_put32(h + 20, nbderr);
  wire_put16(h + 24, (uint16_t)mlen);
  iov[0].iov_base = h;
  iov[0].iov_len = sizeof h;
  iov[1].iov_base = (void *)msg;
  iov[1].iov_len = mlen;
  return wire_writev(&c->w, iov, 2);
}

/* A structured read reply: data chunks, with aligned runs of zeros sent as
 * hole chunks (they read as zero: proto.md NBD_REPLY_TYPE_OFFSET_HOLE),
 * unless the client asked not to fragment (DF).  Finding the zeros means
 * touching every 4 KiB of the data, so the I/O policy decides which
 * replies are scanned (iopolicy_scan_begin). */
static int
proto_structured_read(struct nbd_conn *c, const struct nbd_request *r)
{
  int scan = !(r->flags & NBD_CMD_FLAG_DF) && iopolicy_scan_begin(&c->w.pol);
  int holes = 0;
  unsigned char hdrs[PROTO_MAX_CHUNKS][32];
  struct iovec iov[2 * PROTO_MAX_CHUNKS];
  uint32_t pos = 0, end = r->count;
  int nchunks = 0, niov = 0;

  while (pos < end) {
    uint32_t run_end = end, g;
    int hole = 0;

    if (scan && nchunks < PROTO_MAX_CHUNKS - 1) {
      /* First granule boundary at or after pos, aligned to the disk. */
      uint64_t a = (r->offset + pos + PROTO_HOLE_GRANULE - 1) &
                   ~(uint64_t)(PROTO_HOLE_GRANULE - 1);
      uint32_t first = (uint32_t)(a - r->offset);
      if (first == pos && end - pos >= PROTO_HOLE_GRANULE &&
          nbd_is_zero(r->buf + pos, PROTO_HOLE_GRANULE)) {
        hole = 1;
        for (g = pos + PROTO_HOLE_GRANULE; end - g >= PROTO_HOLE_GRANULE &&
             nbd_is_zero(r->buf + g, PROTO_HOLE_GRANULE); g += PROTO_HOLE_GRANULE)
          ;
        run_end = g;
      } else {
        /* Data until the next all-zero aligned granule. */
        for (g = first > pos ? first : pos + PROTO_HOLE_GRANULE;
             g < end && end - g >= PROTO_HOLE_GRANULE; g += PROTO_HOLE_GRANULE)
          if (nbd_is_zero(r->buf + g, PROTO_HOLE_GRANULE))
            break;
        run_end = g < end && end - g >= PROTO_HOLE_GRANULE ? g : end;
      }
    }
    unsigned char *h = hdrs[nchunks++];
    uint16_t fl = run_end == end ? NBD_REPLY_FLAG_DONE : 0;
    if (hole) {
      holes = 1;
      proto_chunk_header(h, r, fl, NBD_REPLY_TYPE_OFFSET_HOLE, 12);
      wire_put64(h + 20, r->offset + pos);
      wire_put32(h + 28, run_end - pos);
      iov[niov].iov_base = h;
      iov[niov++].iov_len = 32;
    } else {
      proto_chunk_header(h, r, fl, NBD_REPLY_TYPE_OFFSET_DATA,
                      8 + run_end - pos);
      wire_put64(h + 20, r->offset + pos);
      iov[niov].iov_base = h;
      iov[niov++].iov_len = 28;
      iov[niov].iov_base = r->buf + pos;
      iov[niov++].iov_len = run_end - pos;
    }
    pos = run_end;
  }
  iopolicy_scan_end(&c->w.pol, scan, holes);
  return wire_writev(&c->w, iov, niov);
}

int
proto_reply_extents(struct nbd_conn *c, const struct nbd_request *r,
                    const struct nbd_extents *e)
{
  unsigned char h[24], *d;
  struct iovec iov[2];
  size_t i, n;
  int err;

  n = (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : e->n;
  d = malloc(8 * n);
  if (d == NULL)
    return proto_reply_error(c, r, -ENOMEM);
  for (i = 0; i < n; i++) {
    /* Each extent lies within the request, so its length fits 32 bits. */
    wire_put32(d + 8 * i, (uint32_t)e->v[i].length);
    wire_put32(d + 8 * i + 4, e->v[i].type);
  }
  proto_chunk_header(h, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS,
                     (uint32_t)(4 + 8 * n));
  wire_put32(h + 20, NBD_META_BASE_ALLOCATION_ID);
  iov[0].iov_base = h;
  iov[0].iov_len = sizeof h;
  iov[1].iov_base = d;
  iov[1].iov_len = 8 * n;
  err = wire_writev(&c->w, iov, 2);
  free(d);
  return err;
}

int
proto_reply_read(struct nbd_conn *c, const struct nbd_request *r)
{
  return c->structured ? proto_structured_read(c, r)
                       : proto_simple_reply(c, r, 0, r->buf, r->count);
}

int
proto_reply_ok(struct nbd_conn *c, const struct nbd_request *r)
{
  return proto_simple_reply(c, r, 0, NULL, 0);
}

/* proto.md "Request message". */
int
proto_parse_request(const unsigned char *h, struct nbd_request *r)
{
  if (wire_get32(h) != NBD_REQUEST_MAGIC)
    return -1;
  r->flags = wire_get16(h + 4);
  r->type = wire_get16(h + 6);
  r->cookie = wire_get64(h + 8);
  r->offset = wire_get64(h + 16);
  r->count = wire_get32(h + 24);
  return 0;
}

/* Checks a request against the negotiated flags; 0 or -errno.  The engine
 * checks again at each layer; this gives the client the errors the NBD
 * protocol asks for, in its order (EPERM before ENOSPC). */
int
proto_validate(const struct nbd_conn *c, const struct nbd_request *r)
{
  uint16_t tf = c->tflags;
  uint32_t allowed = NBD_CMD_FLAG_FUA;
  int past_end_err = EINVAL, writes = 0;
  uint64_t size = (uint64_t)c->top->size;

  switch (r->type) {
  case NBD_CMD_READ:
    if (c->structured)
      allowed |= NBD_CMD_FLAG_DF;
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
    allowed |= NBD_CMD_FLAG_NO_HOLE;
    if (tf & NBD_FLAG_SEND_FAST_ZERO)
      allowed |= NBD_CMD_FLAG_FAST_ZERO;
    if (!(tf & NBD_FLAG_READ_ONLY) && !(tf & NBD_FLAG_SEND_WRITE_ZEROES))
      return -EINVAL;
    break;
  case NBD_CMD_BLOCK_STATUS:
    allowed |= NBD_CMD_FLAG_REQ_ONE;
    if (!c->meta_base_allocation)
      return -EINVAL;
    break;
  default:
    return -EINVAL;
  }
  if (r->flags & ~allowed)
    return -EINVAL;
  if ((r->flags & NBD_CMD_FLAG_FUA) && !(tf & NBD_FLAG_SEND_FUA))
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
  /* The advertised maximum binds unless the top layer gave its block
   * sizes as hints (blocksize-policy's allow); the server's own payload
   * limit binds always. */
  if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE) &&
      r->count > (c->top->block_advisory ? NBD_MAX_PAYLOAD : c->max_payload))
    return -EINVAL;
  if (r->count > size || r->offset > size - r->count)
    return -past_end_err;
  return 0;
}

