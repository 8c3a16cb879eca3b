/* nbdstack protocol encoding for the transmission phase (proto.md
 * "Transmission", "Request types", "Structured replies", "Error values"):
 * request headers (compact or extended) parsed and checked against what
 * was negotiated, replies built (simple, structured or extended chunks,
 * errors, read data with holes, block status for each meta context of the
 * table below) and sent, each as one write, through wire.c; and the one
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
/* proto.md: a server SHOULD NOT send more than 2^20 status descriptors
 * in one chunk. */
#define PROTO_MAX_EXTENTS  (1u << 20)

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

/* The meta contexts served, in id order (id = index + 1). */
const char *const proto_meta_names[NBD_META_COUNT] = {
  [NBD_META_BASE_ALLOCATION] = "base:allocation",
  [NBD_META_ALLOCATION_DEPTH] = "qemu:allocation-depth",
};

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

/* The header of one reply chunk into h (PROTO_CHUNK_MAX bytes): a
 * structured one (20 bytes), or with extended headers an extended one
 * (32 bytes, which echoes the request's offset).  Returns its size. */
#define PROTO_CHUNK_MAX 32
static size_t
proto_chunk_header(const struct nbd_conn *c, unsigned char *h,
                   const struct nbd_request *r, uint16_t flags,
                   uint16_t type, uint64_t len)
{
  wire_put16(h + 4, flags);
  wire_put16(h + 6, type);
  wire_put64(h + 8, r->cookie);
  if (c->extended) {
    wire_put32(h, NBD_EXTENDED_REPLY_MAGIC);
    wire_put64(h + 16, r->offset);
    wire_put64(h + 24, len);
    return 32;
  }
  wire_put32(h, NBD_STRUCTURED_REPLY_MAGIC);
  wire_put32(h + 16, (uint32_t)len);
  return 20;
}

int
proto_reply_error(struct nbd_conn *c, const struct nbd_request *r, int err)
{
  uint32_t nbderr = proto_nbd_error(err);
  const char *msg;
  unsigned char h[PROTO_CHUNK_MAX + 6];
  struct iovec iov[2];
  size_t mlen, hl;

  /* Structured replies are mandatory for READ and BLOCK_STATUS once
   * negotiated, and for everything with extended headers (no simple
   * replies then); they also carry a message for a human. */
  if (!c->structured ||
      (!c->extended && r->type != NBD_CMD_READ &&
       r->type != NBD_CMD_BLOCK_STATUS))
    return proto_simple_reply(c, r, nbderr, NULL, 0);
  msg = strerror(err < 0 ? -err : err);
  mlen = strlen(msg);
  hl = proto_chunk_header(c, h, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                          6 + mlen);
  wire_put32(h + hl, nbderr);
  wire_put16(h + hl + 4, (uint16_t)mlen);
  iov[0].iov_base = h;
  iov[0].iov_len = hl + 6;
  iov[1].iov_base = (void *)msg;
  iov[1].iov_len = mlen;
  return wire_writev(&c->w, iov, 2);
}

/* A structured read reply of the data at buf: data chunks, with aligned
 * runs of zeros sent as hole chunks (they read as zero: proto.md
 * NBD_REPLY_TYPE_OFFSET_HOLE), unless the client asked not to fragment
 * (DF).  Finding the zeros means touching every 4 KiB of the data, so the
 * I/O policy decides which replies are scanned (iopolicy_scan_begin). */
static int
proto_structured_read(struct nbd_conn *c, const struct nbd_request *r,
                      const char *buf)
{
  int scan = !(r->flags & NBD_CMD_FLAG_DF) && iopolicy_scan_begin(&c->w.pol);
  int holes = 0;
  unsigned char hdrs[PROTO_MAX_CHUNKS][PROTO_CHUNK_MAX + 12];
  struct iovec iov[2 * PROTO_MAX_CHUNKS];
  uint32_t pos = 0, end = (uint32_t)r->count;  /* at most the payload */
  size_t hl;
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
          nbd_is_zero(buf + pos, PROTO_HOLE_GRANULE)) {
        hole = 1;
        for (g = pos + PROTO_HOLE_GRANULE; end - g >= PROTO_HOLE_GRANULE &&
             nbd_is_zero(buf + g, PROTO_HOLE_GRANULE); g += PROTO_HOLE_GRANULE)
          ;
        run_end = g;
      } else {
        /* Data until the next all-zero aligned granule. */
        for (g = first > pos ? first : pos + PROTO_HOLE_GRANULE;
             g < end && end - g >= PROTO_HOLE_GRANULE; g += PROTO_HOLE_GRANULE)
          if (nbd_is_zero(buf + g, PROTO_HOLE_GRANULE))
            break;
        run_end = g < end && end - g >= PROTO_HOLE_GRANULE ? g : end;
      }
    }
    unsigned char *h = hdrs[nchunks++];
    uint16_t fl = run_end == end ? NBD_REPLY_FLAG_DONE : 0;
    if (hole) {
      holes = 1;
      hl = proto_chunk_header(c, h, r, fl, NBD_REPLY_TYPE_OFFSET_HOLE, 12);
      wire_put64(h + hl, r->offset + pos);
      wire_put32(h + hl + 8, run_end - pos);
      iov[niov].iov_base = h;
      iov[niov++].iov_len = hl + 12;
    } else {
      hl = proto_chunk_header(c, h, r, fl, NBD_REPLY_TYPE_OFFSET_DATA,
                              8 + (uint64_t)(run_end - pos));
      wire_put64(h + hl, r->offset + pos);
      iov[niov].iov_base = h;
      iov[niov++].iov_len = hl + 8;
      iov[niov].iov_base = (char *)buf + pos;
      iov[niov++].iov_len = run_end - pos;
    }
    pos = run_end;
  }
  iopolicy_scan_end(&c->w.pol, scan, holes);
  return wire_writev(&c->w, iov, niov);
}

size_t
proto_data_header(const struct nbd_conn *c, const struct nbd_request *r,
                  unsigned char *h)
{
  size_t hl = proto_chunk_header(c, h, r, NBD_REPLY_FLAG_DONE,
                                 NBD_REPLY_TYPE_OFFSET_DATA,
                                 8 + (uint64_t)r->count);

  wire_put64(h + hl, r->offset);
  return hl + 8;
}

size_t
proto_read_header_size(const struct nbd_conn *c)
{
  return !c->structured ? 16 : c->extended ? 32 + 8 : 20 + 8;
}

/* The same reply as proto_reply_read's, for data already in place after
 * the room of its header: one data chunk, or one hole chunk when the
 * scan finds the whole request made of aligned zero granules.  A mix of
 * the two is left to proto_reply_read (0). */
size_t
proto_reply_read_at(struct nbd_conn *c, const struct nbd_request *r,
                    unsigned char *p)
{
  size_t hl = proto_read_header_size(c);
  const char *data = (const char *)p + hl;
  uint32_t end = (uint32_t)r->count, g, nzero = 0, ngran = 0;
  uint32_t first;
  int scan;

  if (!c->structured) {
    wire_put32(p, NBD_SIMPLE_REPLY_MAGIC);
    wire_put32(p + 4, 0);
    wire_put64(p + 8, r->cookie);
    return hl + end;
  }
  scan = !(r->flags & NBD_CMD_FLAG_DF) && iopolicy_scan_begin(&c->w.pol);
  if (scan) {
    /* Every whole granule aligned to the disk (proto_structured_read's
     * candidates for holes). */
    first = (uint32_t)(((r->offset + PROTO_HOLE_GRANULE - 1) &
                        ~(uint64_t)(PROTO_HOLE_GRANULE - 1)) - r->offset);
    for (g = first; g < end && end - g >= PROTO_HOLE_GRANULE;
         g += PROTO_HOLE_GRANULE) {
      ngran++;
      nzero += nbd_is_zero(data + g, PROTO_HOLE_GRANULE);
    }
    if (nzero > 0 && (nzero < ngran || first != 0 ||
                      end % PROTO_HOLE_GRANULE != 0))
      return 0;                 /* holes and data: several chunks */
    iopolicy_scan_end(&c->w.pol, scan, nzero > 0);
    if (nzero > 0) {
      size_t l = proto_chunk_header(c, p, r, NBD_REPLY_FLAG_DONE,
                                    NBD_REPLY_TYPE_OFFSET_HOLE, 12);
      wire_put64(p + l, r->offset);
      wire_put32(p + l + 8, end);
      return l + 12;
    }
  } else
    iopolicy_scan_end(&c->w.pol, 0, 0);
  return proto_data_header(c, r, p) + end;
}

/* One status chunk per context, all in one write: BLOCK_STATUS (32-bit
 * lengths) or, with extended headers, BLOCK_STATUS_EXT (64-bit lengths,
 * with the descriptor count).  Each list lies within the request, so a
 * compact request's lengths fit 32 bits. */
int
proto_reply_extents(struct nbd_conn *c, const struct nbd_request *r,
                    size_t nctx, const uint32_t *ids,
                    struct nbd_extents *const *e)
{
  unsigned char h[NBD_META_COUNT][PROTO_CHUNK_MAX + 8];
  unsigned char *d[NBD_META_COUNT] = { NULL };
  struct iovec iov[2 * NBD_META_COUNT];
  size_t i, j, n, hl, dl, esz = c->extended ? 16 : 8;
  int err = 0;

  if (nctx == 0 || nctx > NBD_META_COUNT)
    return proto_reply_error(c, r, -EINVAL);
  for (i = 0; i < nctx; i++) {
    n = (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : e[i]->n;
    if (n > PROTO_MAX_EXTENTS)
      n = PROTO_MAX_EXTENTS;    /* the rest: the client asks again */
    dl = n * esz;
    d[i] = malloc(dl);
    if (d[i] == NULL) {
      err = -ENOMEM;
      nctx = i;
      break;
    }
    for (j = 0; j < n; j++) {
      const struct nbd_extent *x = &e[i]->v[j];
      if (c->extended) {
        wire_put64(d[i] + 16 * j, x->length);
        wire_put64(d[i] + 16 * j + 8, x->type);
      } else {
        wire_put32(d[i] + 8 * j, (uint32_t)x->length);
        wire_put32(d[i] + 8 * j + 4, x->type);
      }
    }
    hl = proto_chunk_header(c, h[i], r,
                            i + 1 == nctx ? NBD_REPLY_FLAG_DONE : 0,
                            c->extended ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT
                                        : NBD_REPLY_TYPE_BLOCK_STATUS,
                            (c->extended ? 8 : 4) + dl);
    wire_put32(h[i] + hl, ids[i]);
    if (c->extended)
      wire_put32(h[i] + hl + 4, (uint32_t)n);
    iov[2 * i].iov_base = h[i];
    iov[2 * i].iov_len = hl + (c->extended ? 8 : 4);
    iov[2 * i + 1].iov_base = d[i];
    iov[2 * i + 1].iov_len = dl;
  }
  if (err == 0)
    err = wire_writev(&c->w, iov, (int)(2 * nctx));
  else
    err = proto_reply_error(c, r, err);
  for (i = 0; i < nctx; i++)
    free(d[i]);
  return err;
}

int
proto_reply_read(struct nbd_conn *c, const struct nbd_request *r)
{
  return c->structured ? proto_structured_read(c, r, r->buf)
                       : proto_simple_reply(c, r, 0, r->buf, r->count);
}

int
proto_reply_ok(struct nbd_conn *c, const struct nbd_request *r)
{
  unsigned char h[PROTO_CHUNK_MAX];
  struct iovec iov = { h, 0 };

  if (!c->extended)
    return proto_simple_reply(c, r, 0, NULL, 0);
  iov.iov_len = proto_chunk_header(c, h, r, NBD_REPLY_FLAG_DONE,
                                   NBD_REPLY_TYPE_NONE, 0);
  return wire_writev(&c->w, &iov, 1);
}

/* proto.md "Request message" */
size_t
proto_request_size(const unsigned char *h)
{
  switch (wire_get32(h)) {
  case NBD_REQUEST_MAGIC: return NBD_REQUEST_SIZE;
  case NBD_EXTENDED_REQUEST_MAGIC: return NBD_EXTENDED_REQUEST_SIZE;
  default: return 0;
  }
}

void
proto_parse_request(const unsigned char *h, struct nbd_request *r)
{
  r->ext = wire_get32(h) == NBD_EXTENDED_REQUEST_MAGIC;
  r->flags = wire_get16(h + 4);
  r->type = wire_get16(h + 6);
  r->cookie = wire_get64(h + 8);
  r->offset = wire_get64(h + 16);
  r->count = r->ext ? wire_get64(h + 24) : wire_get32(h + 24);
  /* A write carries its data either way (with extended headers it must
   * say so with PAYLOAD_LEN; one that does not is refused, but its data
   * still has to leave the socket); any other command a payload only
   * with extended headers and PAYLOAD_LEN. */
  r->payload = r->type == NBD_CMD_WRITE ||
               (r->ext && (r->flags & NBD_CMD_FLAG_PAYLOAD_LEN))
               ? r->count : 0;
  r->meta = 0;
}

/* BLOCK_STATUS's payload form (NBD_FLAG_BLOCK_STAT_PAYLOAD): the effect
 * length, then the ids of the contexts wanted, each selected once. */
int
proto_status_payload(const struct nbd_conn *c, struct nbd_request *r,
                     const unsigned char *p, uint64_t len)
{
  uint64_t i;
  uint32_t id;

  if (len < 12 || (len - 8) % 4)
    return -EINVAL;
  r->meta = 0;
  for (i = 8; i < len; i += 4) {
    id = wire_get32(p + i);
    if (id == 0 || id > NBD_META_COUNT || !(c->meta & (1u << (id - 1))) ||
        (r->meta & (1u << (id - 1))))
      return -EINVAL;           /* unknown, or twice */
    r->meta |= 1u << (id - 1);
  }
  r->count = wire_get64(p);
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

  /* The header style negotiated, no other: a compact header after
   * NBD_OPT_EXTENDED_HEADERS or an extended one without it. */
  if (r->ext != c->extended)
    return -EINVAL;
  switch (r->type) {
  case NBD_CMD_READ:
    if (c->structured)
      allowed |= NBD_CMD_FLAG_DF;
    break;
  case NBD_CMD_WRITE:
    writes = 1;
    /* With extended headers a write must flag its payload. */
    if (r->ext && !(r->flags & NBD_CMD_FLAG_PAYLOAD_LEN))
      return -EINVAL;
    allowed |= r->ext ? NBD_CMD_FLAG_PAYLOAD_LEN : 0;
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
    if (tf & NBD_FLAG_BLOCK_STAT_PAYLOAD)
      allowed |= NBD_CMD_FLAG_PAYLOAD_LEN;
    if (c->meta == 0)
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

