/* nbdstack: NBD wire constants, named as in the NBD protocol
 * (doc/proto.md of NetworkBlockDevice/nbd), the big-endian helpers, and
 * the protocol encoding of the transmission phase (protocol.c).  Only
 * what nbdstack speaks is here: fixed newstyle negotiation, simple,
 * structured and extended replies, compact and extended requests, and
 * the meta contexts of protocol.c's table.  Constants of the extended
 * headers extension (merged into proto.md in 2023) are as in the spec
 * patches and in qemu's include/block/nbd.h of that series. */
#ifndef NBDSTACK_PROTOCOL_H
#define NBDSTACK_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

/* Handshake (proto.md "Newstyle negotiation"). */
#define NBD_MAGIC                 UINT64_C(0x4e42444d41474943) /* "NBDMAGIC" */
#define NBD_IHAVEOPT              UINT64_C(0x49484156454F5054) /* "IHAVEOPT" */
#define NBD_REP_MAGIC             UINT64_C(0x3e889045565a9)

#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0)
#define NBD_FLAG_NO_ZEROES        (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

#define NBD_OPT_EXPORT_NAME       1
#define NBD_OPT_ABORT             2
#define NBD_OPT_LIST              3
#define NBD_OPT_STARTTLS          5
#define NBD_OPT_INFO              6
#define NBD_OPT_GO                7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10
#define NBD_OPT_EXTENDED_HEADERS  11

#define NBD_REP_ACK               1
#define NBD_REP_SERVER            2
#define NBD_REP_INFO              3
#define NBD_REP_META_CONTEXT      4
#define NBD_REP_ERR(n)            (UINT32_C(0x80000000) | (n))
#define NBD_REP_ERR_UNSUP         NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY        NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID       NBD_REP_ERR(3)
#define NBD_REP_ERR_PLATFORM      NBD_REP_ERR(4)
#define NBD_REP_ERR_TLS_REQD      NBD_REP_ERR(5)
#define NBD_REP_ERR_UNKNOWN       NBD_REP_ERR(6)
#define NBD_REP_ERR_SHUTDOWN      NBD_REP_ERR(7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR(8)
#define NBD_REP_ERR_TOO_BIG       NBD_REP_ERR(9)
#define NBD_REP_ERR_EXT_HEADER_REQD NBD_REP_ERR(10)

#define NBD_INFO_EXPORT           0
#define NBD_INFO_NAME             1
#define NBD_INFO_DESCRIPTION      2
#define NBD_INFO_BLOCK_SIZE       3

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS        (1u << 0)
#define NBD_FLAG_READ_ONLY        (1u << 1)
#define NBD_FLAG_SEND_FLUSH       (1u << 2)
#define NBD_FLAG_SEND_FUA         (1u << 3)
#define NBD_FLAG_ROTATIONAL       (1u << 4)
#define NBD_FLAG_SEND_TRIM        (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF          (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN   (1u << 8)
#define NBD_FLAG_SEND_CACHE       (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO   (1u << 11)
#define NBD_FLAG_BLOCK_STAT_PAYLOAD (1u << 12)

/* Transmission (proto.md "Transmission"). */
#define NBD_REQUEST_MAGIC         UINT32_C(0x25609513)
#define NBD_REQUEST_SIZE          28    /* bytes of a request header */
#define NBD_EXTENDED_REQUEST_MAGIC UINT32_C(0x21e41c71)
#define NBD_EXTENDED_REQUEST_SIZE 32
#define NBD_SIMPLE_REPLY_MAGIC    UINT32_C(0x67446698)
#define NBD_STRUCTURED_REPLY_MAGIC UINT32_C(0x668e33ef)
#define NBD_EXTENDED_REPLY_MAGIC  UINT32_C(0x6e8a278c)

#define NBD_CMD_READ              0
#define NBD_CMD_WRITE             1
#define NBD_CMD_DISC              2
#define NBD_CMD_FLUSH             3
#define NBD_CMD_TRIM              4
#define NBD_CMD_CACHE             5
#define NBD_CMD_WRITE_ZEROES      6
#define NBD_CMD_BLOCK_STATUS      7

/* Command flags are NBD_CMD_FLAG_FUA ... NBD_CMD_FLAG_FAST_ZERO in
 * layer.h; this one never reaches a layer: with extended headers, the
 * length is that of a payload (a write's data, block status's list of
 * context ids). */
#define NBD_CMD_FLAG_PAYLOAD_LEN  (1u << 5)

#define NBD_REPLY_FLAG_DONE       (1u << 0)
#define NBD_REPLY_TYPE_NONE       0
#define NBD_REPLY_TYPE_OFFSET_DATA 1
#define NBD_REPLY_TYPE_OFFSET_HOLE 2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6
#define NBD_REPLY_TYPE_ERROR      32769

/* Error values (proto.md "Error values"). */
#define NBD_EPERM                 1
#define NBD_EIO                   5
#define NBD_ENOMEM                12
#define NBD_EINVAL                22
#define NBD_ENOSPC                28
#define NBD_EOVERFLOW             75
#define NBD_ENOTSUP               95
#define NBD_ESHUTDOWN             108

/* Limits of this server. */
#define NBD_MAX_STRING            4096            /* proto.md: strings */
#define NBD_MAX_PAYLOAD           (32u << 20)     /* advertised maximum */
#define NBD_MAX_OPTION_LEN        (64u << 10)
#define NBD_MAX_OPTIONS           256

/* Meta contexts (proto.md "Metadata querying"): context i has the id
 * i + 1 in every session, and a bit (1 << i) in a set of them. */
#define NBD_META_BASE_ALLOCATION  0
#define NBD_META_ALLOCATION_DEPTH 1     /* qemu:allocation-depth */
#define NBD_META_COUNT            2
extern const char *const proto_meta_names[NBD_META_COUNT];

/* ---- big-endian helpers --------------------------------------------------- */

static inline void
wire_put16(unsigned char *p, uint16_t v)
{
  p[0] = v >> 8; p[1] = v;
}
static inline void
wire_put32(unsigned char *p, uint32_t v)
{
  p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static inline void
wire_put64(unsigned char *p, uint64_t v)
{
  wire_put32(p, v >> 32); wire_put32(p + 4, (uint32_t)v);
}
static inline uint16_t
wire_get16(const unsigned char *p)
{
  return (uint16_t)(p[0] << 8 | p[1]);
}
static inline uint32_t
wire_get32(const unsigned char *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t
wire_get64(const unsigned char *p)
{
  return (uint64_t)wire_get32(p) << 32 | wire_get32(p + 4);
}

/* ---- transmission encoding (protocol.c) ------------------------------------ */

struct nbd_conn;
struct nbd_request;
struct nbd_extents;

/* Maps -errno (or errno) to an NBD error value: the one table. */
uint32_t proto_nbd_error(int err);
/* The size of the request header whose first 4 bytes are at h: compact
 * (NBD_REQUEST_SIZE) or extended (NBD_EXTENDED_REQUEST_SIZE) by its
 * magic; 0 when the magic is neither. */
size_t proto_request_size(const unsigned char *h);
/* Fills r from a whole header of proto_request_size(h) bytes, with
 * r->payload the bytes that follow it. */
void proto_parse_request(const unsigned char *h, struct nbd_request *r);
/* BLOCK_STATUS's payload (len bytes at p): sets r->count and r->meta;
 * 0 or -EINVAL. */
int proto_status_payload(const struct nbd_conn *c, struct nbd_request *r,
                         const unsigned char *p, uint64_t len);
/* Checks a request against what was negotiated; 0 or -errno. */
int proto_validate(const struct nbd_conn *c, const struct nbd_request *r);
/* Replies, one write each; 0, or -1 when the connection is dead. */
int proto_reply_ok(struct nbd_conn *c, const struct nbd_request *r);
int proto_reply_error(struct nbd_conn *c, const struct nbd_request *r,
                      int err);
/* The data of a read in r->buf: structured, aligned zero runs go as
 * holes unless DF (when the I/O policy scans this one). */
int proto_reply_read(struct nbd_conn *c, const struct nbd_request *r);
/* A read's reply built in place (wire_reserve): the room its header
 * takes before the data; then, with the data there, the header written
 * at p and the reply's length returned, or 0 when the reply needs more
 * than one chunk (proto_reply_read, from a copy of the data). */
size_t proto_read_header_size(const struct nbd_conn *c);
/* Structured replies: the header of one data chunk with all of a read's
 * data (DONE), into h (PROTO_DATA_HEADER_MAX bytes); returns its size. */
#define PROTO_DATA_HEADER_MAX 40
size_t proto_data_header(const struct nbd_conn *c, const struct nbd_request *r,
                         unsigned char *h);
size_t proto_reply_read_at(struct nbd_conn *c, const struct nbd_request *r,
                           unsigned char *p);
/* The reply to a BLOCK_STATUS request: a status chunk for each of nctx
 * contexts, ids[i] with the extents e[i]. */
int proto_reply_extents(struct nbd_conn *c, const struct nbd_request *r,
                        size_t nctx, const uint32_t *ids,
                        struct nbd_extents *const *e);

#endif
