/* nbdstack backend nbd: a small NBD client (client.c).
 *
 * One struct nbdc is one upstream connection in the transmission phase:
 * fixed newstyle handshake with NBD_OPT_EXTENDED_HEADERS (else
 * NBD_OPT_STRUCTURED_REPLY), NBD_OPT_SET_META_CONTEXT base:allocation
 * and qemu:allocation-depth,
 * NBD_OPT_SET_META_CONTEXT base:allocation and NBD_OPT_GO asking for
 * NBD_INFO_BLOCK_SIZE (NBD_OPT_EXPORT_NAME when the server has no GO).
 * Many requests may be in flight: senders share the socket under a write
 * lock; a reader thread (or the caller of a request alone in flight)
 * matches replies to requests by cookie and writes read data into the
 * caller's buffer.  Every reply is checked
 * against its request; a reply that breaks the protocol, or a dead
 * socket, fails every request in flight (and every later one) with EIO.
 *
 * TLS: NBD_OPT_STARTTLS first, then every byte goes through the session
 * of tls.c (the server's own TLS code, client side).  It does not connect
 * sockets or run commands (nbd.c does, and hands the fd over), or
 * reconnect.
 */
#ifndef NBDSTACK_NBD_CLIENT_H
#define NBDSTACK_NBD_CLIENT_H

#include <stddef.h>
#include <stdint.h>

struct nbd_source;

struct nbd_extents;
struct nbdc;

/* What the upstream said in the handshake. */
struct nbdc_info {
  uint64_t size;
  uint16_t tflags;            /* NBD_FLAG_HAS_FLAGS, READ_ONLY, ... */
  int structured;             /* structured replies negotiated */
  int extended;               /* extended headers negotiated (implies
                                 structured) */
  int base_allocation;        /* base:allocation negotiated */
  uint32_t meta_id;           /* its context id */
  int allocation_depth;       /* qemu:allocation-depth negotiated */
  uint32_t depth_id;          /* its context id */
  int has_block_size;         /* NBD_INFO_BLOCK_SIZE came and was valid */
  uint32_t min_block, pref_block, max_block;
};

/* TLS to the upstream (nbdkit's nbd plugin tls=on|require): the
 * credentials (tls.h), whether a server without TLS is refused, and the
 * host name its certificate must carry (NULL: not checked, as libnbd on a
 * Unix socket). */
struct tls_client;
struct nbdc_tls {
  struct tls_client *client;
  int require;
  const char *hostname;
};

/* Handshake on fd (which the client then owns, also on failure) for
 * export name, first with STARTTLS when tls is given; on success starts
 * the reader thread.  NULL on failure, with a one-line reason in err. */
struct nbdc *nbdc_open(int fd, const char *name, const struct nbdc_tls *tls,
                       char *err, size_t errlen);
/* NBD_OPT_LIST on fd (closed after): upstream's exports appended to out
 * (description NULL when it gave none); 0, or -1 with err filled and
 * *errnum EPERM (upstream refused) or EIO. */
struct nbd_exports;
int nbdc_list(int fd, const struct nbdc_tls *tls, struct nbd_exports *out,
              int *errnum, char *err, size_t errlen);
/* Sends NBD_CMD_DISC unless dead, stops the reader, closes the fd.  No
 * request may be in flight. */
void nbdc_close(struct nbdc *c);
const struct nbdc_info *nbdc_info(const struct nbdc *c);
/* True once the connection failed. */
int nbdc_dead(struct nbdc *c);

/* Requests; 0 or -errno (-EIO when the connection is or goes dead).
 * flags are NBD_CMD_FLAG_*, passed as given: the caller drops those the
 * upstream did not negotiate. */
int nbdc_pread(struct nbdc *c, void *buf, uint32_t count, uint64_t offset,
               uint32_t flags);
int nbdc_pwrite(struct nbdc *c, const void *buf, uint32_t count,
                uint64_t offset, uint32_t flags);
int nbdc_flush(struct nbdc *c, uint32_t flags);
/* A read or write that completes later: cb(arg, 0 or -errno) is called
 * once, from the thread that reads its reply (any), outside every lock
 * of c.  0 when sent (cb will come, with -EIO if the connection dies),
 * or -errno at once (no cb). */
/* The same for a write whose payload is still in the client's socket
 * (src): moved with splice(2) when may_splice and the upstream is plain,
 * else read into a buffer of its own first; -EAGAIN (nothing taken) when
 * the sender thread would do better with it in a buffer.  Takes the count bytes from
 * src before it returns (what it leaves, the caller discards), or fails
 * at once (-errno, no cb).  A client that goes away mid-payload leaves src->failed set and
 * the upstream connection dead (cb comes with -EIO). */
int nbdc_submit_src(struct nbdc *c, uint32_t flags, uint64_t offset,
                    uint32_t count, struct nbd_source *src, int may_splice,
                    void (*cb)(void *arg, int err), void *arg);
int nbdc_submit(struct nbdc *c, uint16_t cmd, uint32_t flags,
                uint64_t offset, uint32_t count, const void *wbuf,
                void *rbuf, void (*cb)(void *arg, int err), void *arg);
/* Any length: one request with extended headers; without them, requests
 * of at most 4 GiB (all such an upstream takes), each with flags. */
int nbdc_trim(struct nbdc *c, uint64_t count, uint64_t offset, uint32_t flags);
int nbdc_zero(struct nbdc *c, uint64_t count, uint64_t offset, uint32_t flags);
int nbdc_cache(struct nbdc *c, uint64_t count, uint64_t offset, uint32_t flags);
/* base:allocation extents of [offset, offset+count), added to extents;
 * over 4 GiB without extended headers they may cover only the first
 * 4 GiB. */
int nbdc_extents(struct nbdc *c, uint64_t count, uint64_t offset,
                 uint32_t flags, struct nbd_extents *extents);

/* qemu:allocation-depth of [offset, offset+count) (extent types are the
 * depths), as nbdc_extents; NBD_DEPTH_ONE when the upstream did not
 * offer the context (every byte is the upstream's own: depth 1). */
int nbdc_depth(struct nbdc *c, uint64_t count, uint64_t offset,
               uint32_t flags, struct nbd_extents *extents);

/* The NBD error value of a reply as -errno (unknown values are -EIO). */
int nbdc_errno(uint32_t nbd_error);

#endif
