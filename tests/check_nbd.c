/* Unit tests of the nbd backend's client (backends/nbd/client.c): a fake
 * server on the other end of a socketpair does the handshake, then the
 * test reads each request and writes the reply bytes it wants, well
 * formed or not, while a thread waits in the client call. */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "layer.h"
#include "protocol.h"
#include "../backends/nbd/client.h"

#define META_ID 7
#define SIZE (1u << 20)

static void
rd(int fd, void *buf, size_t len)
{
  unsigned char *p = buf;
  ssize_t r;

  while (len > 0) {
    r = read(fd, p, len);
    ck_assert_int_gt(r, 0);
    p += r;
    len -= (size_t)r;
  }
}

static void
wr(int fd, const void *buf, size_t len)
{
  ck_assert_int_eq(write(fd, buf, len), (ssize_t)len);
}

static void
opt_reply(int fd, uint32_t opt, uint32_t rep, const void *data, uint32_t len)
{
  unsigned char h[20];

  wire_put64(h, NBD_REP_MAGIC);
  wire_put32(h + 8, opt);
  wire_put32(h + 12, rep);
  wire_put32(h + 16, len);
  wr(fd, h, sizeof h);
  if (len)
    wr(fd, data, len);
}

/* Whether the fake server ACKs NBD_OPT_EXTENDED_HEADERS (nbdstack's
 * server does; nbdkit 1.32 and qemu 7.2 answer NBD_REP_ERR_UNSUP). */
static int fake_extended;
/* Whether it selects qemu:allocation-depth too (as DEPTH_ID), as
 * qemu-nbd -A and nbdstack do. */
static int fake_depth;
#define DEPTH_ID 9

/* The server side of the handshake: structured replies (or extended
 * headers with fake_extended), base:allocation as META_ID, GO with size
 * SIZE and block sizes 512/4096/1M. */
static void *
fake_handshake(void *arg)
{
  int fd = *(int *)arg;
  unsigned char g[18], h[16], *d, buf[32];
  uint32_t opt, len;

  wire_put64(g, NBD_MAGIC);
  wire_put64(g + 8, NBD_IHAVEOPT);
  wire_put16(g + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  wr(fd, g, sizeof g);
  rd(fd, buf, 4);
  for (;;) {
    rd(fd, h, sizeof h);
    opt = wire_get32(h + 8);
    len = wire_get32(h + 12);
    d = malloc(len + 1);
    rd(fd, d, len);
    free(d);
    if (opt == NBD_OPT_STRUCTURED_REPLY)
      opt_reply(fd, opt, fake_extended ? NBD_REP_ERR_EXT_HEADER_REQD
                                       : NBD_REP_ACK, NULL, 0);
    else if (opt == NBD_OPT_EXTENDED_HEADERS && fake_extended)
      opt_reply(fd, opt, NBD_REP_ACK, NULL, 0);
    else if (opt == NBD_OPT_SET_META_CONTEXT) {
      wire_put32(buf, META_ID);
      memcpy(buf + 4, "base:allocation", 15);
      opt_reply(fd, opt, NBD_REP_META_CONTEXT, buf, 19);
      if (fake_depth) {
        wire_put32(buf, DEPTH_ID);
        memcpy(buf + 4, "qemu:allocation-depth", 21);
        opt_reply(fd, opt, NBD_REP_META_CONTEXT, buf, 25);
      }
      opt_reply(fd, opt, NBD_REP_ACK, NULL, 0);
    } else if (opt == NBD_OPT_GO) {
      wire_put16(buf, NBD_INFO_EXPORT);
      wire_put64(buf + 2, SIZE);
      wire_put16(buf + 10, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH);
      opt_reply(fd, opt, NBD_REP_INFO, buf, 12);
      wire_put16(buf, NBD_INFO_BLOCK_SIZE);
      wire_put32(buf + 2, 512);
      wire_put32(buf + 6, 4096);
      wire_put32(buf + 10, 1 << 20);
      opt_reply(fd, opt, NBD_REP_INFO, buf, 14);
      opt_reply(fd, opt, NBD_REP_ACK, NULL, 0);
      return NULL;
    } else
      opt_reply(fd, opt, NBD_REP_ERR_UNSUP, NULL, 0);
  }
}

struct fix {
  int srv;
  struct nbdc *c;
};

static void
fix_open(struct fix *f)
{
  int sv[2];
  pthread_t t;
  char err[256] = "";

  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  f->srv = sv[1];
  ck_assert_int_eq(pthread_create(&t, NULL, fake_handshake, &f->srv), 0);
  f->c = nbdc_open(sv[0], "", NULL, err, sizeof err);
  pthread_join(t, NULL);
  ck_assert_msg(f->c != NULL, "%s", err);
}

static void
fix_close(struct fix *f)
{
  close(f->srv);                /* before: the client's DISC may not be read */
  nbdc_close(f->c);
}

/* A request in a thread, so the test can play the server. */
struct call {
  struct nbdc *c;
  int cmd;
  void *buf;
  uint64_t count;
  uint32_t flags;
  uint64_t offset;
  struct nbd_extents *e;
  int depth;                    /* block status: nbdc_depth */
  int r;
  pthread_t t;
};

static void *
call_run(void *arg)
{
  struct call *k = arg;

  if (k->cmd == NBD_CMD_READ)
    k->r = nbdc_pread(k->c, k->buf, k->count, k->offset, 0);
  else if (k->cmd == NBD_CMD_BLOCK_STATUS && k->depth)
    k->r = nbdc_depth(k->c, k->count, k->offset, 0, k->e);
  else if (k->cmd == NBD_CMD_BLOCK_STATUS)
    k->r = nbdc_extents(k->c, k->count, k->offset, 0, k->e);
  else if (k->cmd == NBD_CMD_WRITE_ZEROES)
    k->r = nbdc_zero(k->c, k->count, k->offset, k->flags);
  else if (k->cmd == NBD_CMD_TRIM)
    k->r = nbdc_trim(k->c, k->count, k->offset, k->flags);
  else if (k->cmd == NBD_CMD_CACHE)
    k->r = nbdc_cache(k->c, k->count, k->offset, k->flags);
  else
    k->r = nbdc_flush(k->c, 0);
  return NULL;
}

/* Reads one compact request of the call's command; checks its flags,
 * offset and length, returns the cookie. */
static uint64_t
call_request(struct fix *f, struct call *k, uint16_t flags, uint64_t offset,
             uint32_t count)
{
  unsigned char h[NBD_REQUEST_SIZE];

  rd(f->srv, h, sizeof h);
  ck_assert_uint_eq(wire_get32(h), NBD_REQUEST_MAGIC);
  ck_assert_uint_eq(wire_get16(h + 4), flags);
  ck_assert_uint_eq(wire_get16(h + 6), (unsigned)k->cmd);
  ck_assert_uint_eq(wire_get64(h + 16), offset);
  ck_assert_uint_eq(wire_get32(h + 24), count);
  return wire_get64(h + 8);
}

/* Starts the call and reads its request; returns the cookie. */
static uint64_t
call_start(struct fix *f, struct call *k)
{
  k->c = f->c;
  ck_assert_int_eq(pthread_create(&k->t, NULL, call_run, k), 0);
  return call_request(f, k, (uint16_t)k->flags, k->offset,
                      (uint32_t)k->count);
}

static void
simple_reply(int fd, uint64_t cookie, uint32_t error)
{
  unsigned char h[16];

  wire_put32(h, NBD_SIMPLE_REPLY_MAGIC);
  wire_put32(h + 4, error);
  wire_put64(h + 8, cookie);
  wr(fd, h, sizeof h);
}

static int
call_end(struct call *k)
{
  pthread_join(k->t, NULL);
  return k->r;
}

static void
chunk(int fd, uint16_t flags, uint16_t type, uint64_t cookie,
      const void *payload, uint32_t len)
{
  unsigned char *h = malloc(20 + (size_t)len);

  /* One write: a client that refuses the header shuts the socket down,
   * and a second write would then fail. */
  wire_put32(h, NBD_STRUCTURED_REPLY_MAGIC);
  wire_put16(h + 4, flags);
  wire_put16(h + 6, type);
  wire_put64(h + 8, cookie);
  wire_put32(h + 16, len);
  if (len)
    memcpy(h + 20, payload, len);
  wr(fd, h, 20 + (size_t)len);
  free(h);
}

static void
data_chunk(int fd, uint16_t flags, uint64_t cookie, uint64_t off, char c,
           uint32_t n)
{
  unsigned char *p = malloc(8 + n);

  wire_put64(p, off);
  memset(p + 8, c, n);
  chunk(fd, flags, NBD_REPLY_TYPE_OFFSET_DATA, cookie, p, 8 + n);
  free(p);
}

START_TEST(test_handshake_info)
{
  struct fix f;
  const struct nbdc_info *i;

  fix_open(&f);
  i = nbdc_info(f.c);
  ck_assert_uint_eq(i->size, SIZE);
  ck_assert_int_eq(i->structured, 1);
  ck_assert_int_eq(i->base_allocation, 1);
  ck_assert_uint_eq(i->meta_id, META_ID);
  ck_assert_int_eq(i->has_block_size, 1);
  ck_assert_uint_eq(i->min_block, 512);
  ck_assert_uint_eq(i->max_block, 1 << 20);
  fix_close(&f);
}
END_TEST

START_TEST(test_read_chunks_out_of_order)
{
  struct fix f;
  struct call k = { .cmd = NBD_CMD_READ, .count = 3072, .offset = 4096 };
  unsigned char hole[12];
  char *buf = malloc(3072);
  uint64_t ck;

  memset(buf, 'x', 3072);
  k.buf = buf;
  fix_open(&f);
  ck = call_start(&f, &k);
  data_chunk(f.srv, 0, ck, 4096 + 2048, 'c', 1024);
  wire_put64(hole, 4096 + 1024);
  wire_put32(hole + 8, 1024);
  chunk(f.srv, 0, NBD_REPLY_TYPE_OFFSET_HOLE, ck, hole, 12);
  data_chunk(f.srv, NBD_REPLY_FLAG_DONE, ck, 4096, 'a', 1024);
  ck_assert_int_eq(call_end(&k), 0);
  ck_assert_int_eq(buf[0], 'a');
  ck_assert_int_eq(buf[1023], 'a');
  ck_assert_int_eq(buf[1024], 0);
  ck_assert_int_eq(buf[2047], 0);
  ck_assert_int_eq(buf[2048], 'c');
  ck_assert_int_eq(nbdc_dead(f.c), 0);
  fix_close(&f);
  free(buf);
}
END_TEST

START_TEST(test_read_chunk_past_request_kills)
{
  struct fix f;
  struct call k = { .cmd = NBD_CMD_READ, .count = 1024, .offset = 0 };
  struct call k2 = { .cmd = NBD_CMD_FLUSH };
  char *buf = malloc(4096);
  uint64_t ck;

  k.buf = buf;
  fix_open(&f);
  ck = call_start(&f, &k);
  /* 8 bytes of offset claiming 2048 bytes for a 1024-byte read */
  data_chunk(f.srv, NBD_REPLY_FLAG_DONE, ck, 0, 'a', 2048);
  ck_assert_int_eq(call_end(&k), -EIO);
  ck_assert_int_eq(nbdc_dead(f.c), 1);
  k2.c = f.c;
  call_run(&k2);
  ck_assert_int_eq(k2.r, -EIO);
  fix_close(&f);
  free(buf);
}
END_TEST

START_TEST(test_read_short_reply_fails)
{
  struct fix f;
  struct call k = { .cmd = NBD_CMD_READ, .count = 2048, .offset = 0 };
  char *buf = malloc(2048);
  uint64_t ck;

  k.buf = buf;
  fix_open(&f);
  ck = call_start(&f, &k);
  data_chunk(f.srv, NBD_REPLY_FLAG_DONE, ck, 0, 'a', 1024);
  ck_assert_int_eq(call_end(&k), -EIO);
  fix_close(&f);
  free(buf);
}
END_TEST

START_TEST(test_error_chunk)
{
  struct fix f;
  struct call k = { .cmd = NBD_CMD_READ, .count = 512, .offset = 0 };
  unsigned char e[6 + 3];
  char *buf = malloc(512);
  uint64_t ck;

  k.buf = buf;
  fix_open(&f);
  ck = call_start(&f, &k);
  wire_put32(e, NBD_ENOSPC);
  wire_put16(e + 4, 3);
  memcpy(e + 6, "bad", 3);
  chunk(f.srv, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, ck, e, sizeof e);
  ck_assert_int_eq(call_end(&k), -ENOSPC);
  ck_assert_int_eq(nbdc_dead(f.c), 0);
  fix_close(&f);
  free(buf);
}
END_TEST

START_TEST(test_block_status)
{
  struct fix f;
  struct call k = { .cmd = NBD_CMD_BLOCK_STATUS, .count = 8192, .offset = 4096 };
  unsigned char p[4 + 16];
  uint64_t ck;

  k.e = nbd_extents_new(4096, 4096 + 8192);
  fix_open(&f);
  ck = call_start(&f, &k);
  wire_put32(p, META_ID);
  wire_put32(p + 4, 4096);
  wire_put32(p + 8, 0);
  wire_put32(p + 12, 65536);    /* runs past the request: clipped */
  wire_put32(p + 16, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  chunk(f.srv, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, ck, p,
        sizeof p);
  ck_assert_int_eq(call_end(&k), 0);
  ck_assert_uint_eq(k.e->n, 2);
  ck_assert_uint_eq(k.e->v[0].length, 4096);
  ck_assert_uint_eq(k.e->v[0].type, 0);
  ck_assert_uint_eq(k.e->v[1].offset, 8192);
  ck_assert_uint_eq(k.e->v[1].length, 4096);
  ck_assert_uint_eq(k.e->v[1].type, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  nbd_extents_free(k.e);
  fix_close(&f);
}
END_TEST

/* Over 4 GiB, trim, zero and cache go as compact requests of at most
 * 4 GiB - 512 (the largest multiple of the upstream's 512-byte minimum),
 * each with the flags; the first error ends the request. */
#define GIB (UINT64_C(1) << 30)
#define PIECE (UINT32_MAX - UINT32_MAX % 512)

START_TEST(test_zero_over_4g_split)
{
  static const int cmds[] = { NBD_CMD_WRITE_ZEROES, NBD_CMD_TRIM };
  size_t i;

  for (i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
    struct fix f;
    struct call k = { .cmd = cmds[i], .count = 6 * GIB + 512,
                      .offset = 512, .flags = NBD_CMD_FLAG_FUA };
    uint64_t ck;

    fix_open(&f);
    k.c = f.c;
    ck_assert_int_eq(pthread_create(&k.t, NULL, call_run, &k), 0);
    ck = call_request(&f, &k, NBD_CMD_FLAG_FUA, 512, PIECE);
    simple_reply(f.srv, ck, 0);
    ck = call_request(&f, &k, NBD_CMD_FLAG_FUA, 512 + (uint64_t)PIECE,
                      (uint32_t)(6 * GIB + 512 - PIECE));
    simple_reply(f.srv, ck, 0);
    ck_assert_int_eq(call_end(&k), 0);
    fix_close(&f);
  }
}
END_TEST

/* CACHE may not exceed the maximum block size (1 MiB here): pieces. */
START_TEST(test_cache_split_at_max_block)
{
  struct fix f;
  struct call k = { .cmd = NBD_CMD_CACHE, .count = (5u << 19) + 512,
                    .offset = 512 };
  uint64_t ck;

  fix_open(&f);
  k.c = f.c;
  ck_assert_int_eq(pthread_create(&k.t, NULL, call_run, &k), 0);
  ck = call_request(&f, &k, 0, 512, 1u << 20);
  simple_reply(f.srv, ck, 0);
  ck = call_request(&f, &k, 0, 512 + (1u << 20), 1u << 20);
  simple_reply(f.srv, ck, 0);
  ck = call_request(&f, &k, 0, 512 + (2u << 20), (1u << 19) + 512);
  simple_reply(f.srv, ck, 0);
  ck_assert_int_eq(call_end(&k), 0);
  fix_close(&f);
}
END_TEST

START_TEST(test_zero_over_4g_error_stops)
{
  struct fix f;
  struct call k = { .cmd = NBD_CMD_WRITE_ZEROES, .count = 8 * GIB };
  uint64_t ck;
  unsigned char h[NBD_REQUEST_SIZE];

  fix_open(&f);
  k.c = f.c;
  ck_assert_int_eq(pthread_create(&k.t, NULL, call_run, &k), 0);
  ck = call_request(&f, &k, 0, 0, PIECE);
  simple_reply(f.srv, ck, NBD_ENOSPC);
  ck_assert_int_eq(call_end(&k), -ENOSPC);
  /* Nothing more was sent: the next thing on the wire is the DISC. */
  nbdc_close(f.c);
  rd(f.srv, h, sizeof h);
  ck_assert_uint_eq(wire_get16(h + 6), NBD_CMD_DISC);
  close(f.srv);
}
END_TEST

/* Block status over 4 GiB asks for the first piece only (a reply may
 * describe less than asked). */
START_TEST(test_block_status_over_4g)
{
  struct fix f;
  struct call k = { .cmd = NBD_CMD_BLOCK_STATUS, .count = 5 * GIB };
  unsigned char p[4 + 8];
  uint64_t ck;

  k.e = nbd_extents_new(0, 5 * GIB);
  fix_open(&f);
  k.c = f.c;
  ck_assert_int_eq(pthread_create(&k.t, NULL, call_run, &k), 0);
  ck = call_request(&f, &k, 0, 0, 1u << 31);   /* at most 2 GiB asked */
  wire_put32(p, META_ID);
  wire_put32(p + 4, PIECE);
  wire_put32(p + 8, NBD_EXTENT_HOLE);
  chunk(f.srv, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, ck, p,
        sizeof p);
  ck_assert_int_eq(call_end(&k), 0);
  ck_assert_uint_eq(k.e->n, 1);
  ck_assert_uint_eq(k.e->v[0].length, 1u << 31);  /* clipped */
  nbd_extents_free(k.e);
  fix_close(&f);
}
END_TEST

/* ---- extended headers ---- */

static void
ext_chunk(int fd, uint16_t flags, uint16_t type, uint64_t cookie,
          uint64_t offset, const void *payload, uint64_t len)
{
  unsigned char *h = malloc(32 + (size_t)len);

  wire_put32(h, NBD_EXTENDED_REPLY_MAGIC);  /* one write, as chunk() */
  wire_put16(h + 4, flags);
  wire_put16(h + 6, type);
  wire_put64(h + 8, cookie);
  wire_put64(h + 16, offset);
  wire_put64(h + 24, len);
  if (len)
    memcpy(h + 32, payload, (size_t)len);
  wr(fd, h, 32 + (size_t)len);
  free(h);
}

/* One extended request; checks it, returns the cookie. */
static uint64_t
ext_request(struct fix *f, uint16_t cmd, uint16_t flags, uint64_t offset,
            uint64_t count)
{
  unsigned char h[NBD_EXTENDED_REQUEST_SIZE];

  rd(f->srv, h, sizeof h);
  ck_assert_uint_eq(wire_get32(h), NBD_EXTENDED_REQUEST_MAGIC);
  ck_assert_uint_eq(wire_get16(h + 4), flags);
  ck_assert_uint_eq(wire_get16(h + 6), cmd);
  ck_assert_uint_eq(wire_get64(h + 16), offset);
  ck_assert_uint_eq(wire_get64(h + 24), count);
  return wire_get64(h + 8);
}

static void
ext_open(struct fix *f)
{
  fake_extended = 1;
  fix_open(f);
  fake_extended = 0;
  ck_assert_int_eq(nbdc_info(f->c)->extended, 1);
  ck_assert_int_eq(nbdc_info(f->c)->structured, 1);
}

/* Zero and trim of 6 GiB: one request each, 64-bit length. */
START_TEST(test_ext_zero_one_request)
{
  static const int cmds[] = { NBD_CMD_WRITE_ZEROES, NBD_CMD_TRIM };
  size_t i;

  for (i = 0; i < 2; i++) {
    struct fix f;
    struct call k = { .cmd = cmds[i], .count = 6 * GIB + 512,
                      .offset = 512, .flags = NBD_CMD_FLAG_FUA };
    uint64_t ck;

    ext_open(&f);
    k.c = f.c;
    ck_assert_int_eq(pthread_create(&k.t, NULL, call_run, &k), 0);
    ck = ext_request(&f, (uint16_t)cmds[i], NBD_CMD_FLAG_FUA, 512,
                     6 * GIB + 512);
    ext_chunk(f.srv, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, ck, 512,
              NULL, 0);
    ck_assert_int_eq(call_end(&k), 0);
    ck_assert_int_eq(nbdc_dead(f.c), 0);
    fix_close(&f);
  }
}
END_TEST

/* Block status of 5 GiB in one request, answered with BLOCK_STATUS_EXT
 * and a 64-bit extent (descriptor count given, or 0: not given); a
 * compact BLOCK_STATUS is fine too (the spec: a client MUST be prepared
 * for both); a simple reply or a descriptor count that does not match
 * kill the connection. */
START_TEST(test_ext_block_status)
{
  int bad;

  for (bad = 0; bad < 5; bad++) {
    struct fix f;
    struct call k = { .cmd = NBD_CMD_BLOCK_STATUS, .count = 5 * GIB };
    unsigned char p[8 + 32], s[16];
    uint64_t ck;

    k.e = nbd_extents_new(0, 5 * GIB);
    ext_open(&f);
    k.c = f.c;
    ck_assert_int_eq(pthread_create(&k.t, NULL, call_run, &k), 0);
    ck = ext_request(&f, NBD_CMD_BLOCK_STATUS, 0, 0, 5 * GIB);
    wire_put32(p, META_ID);
    wire_put32(p + 4, bad == 2 ? 3 : bad == 4 ? 0 : 2);
    wire_put64(p + 8, 4 * GIB + 4096);
    wire_put64(p + 16, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
    wire_put64(p + 24, 4 * GIB);       /* runs past the request: clipped */
    wire_put64(p + 32, 0);
    if (bad == 1) {
      wire_put32(s, NBD_SIMPLE_REPLY_MAGIC);
      wire_put32(s + 4, 0);
      wire_put64(s + 8, ck);
      wr(f.srv, s, sizeof s);
    } else if (bad == 3) {
      unsigned char cp[12];

      wire_put32(cp, META_ID);
      wire_put32(cp + 4, 4096);
      wire_put32(cp + 8, NBD_EXTENT_HOLE);
      ext_chunk(f.srv, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, ck,
                0, cp, sizeof cp);  /* compact type, extended header */
    }
    else
      ext_chunk(f.srv, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS_EXT,
                ck, 0, p, sizeof p);
    if (bad == 1 || bad == 2) {
      ck_assert_int_eq(call_end(&k), -EIO);
      ck_assert_int_eq(nbdc_dead(f.c), 1);
    } else if (bad == 3) {
      ck_assert_int_eq(call_end(&k), 0);
      ck_assert_int_eq(nbdc_dead(f.c), 0);
      ck_assert_uint_eq(k.e->v[0].length, 4096);
    } else {
      ck_assert_int_eq(call_end(&k), 0);
      ck_assert_uint_eq(k.e->n, 2);
      ck_assert_uint_eq(k.e->v[0].length, 4 * GIB + 4096);
      ck_assert_uint_eq(k.e->v[0].type, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
      ck_assert_uint_eq(k.e->v[1].length, GIB - 4096);
    }
    nbd_extents_free(k.e);
    fix_close(&f);
  }
}
END_TEST

/* A read: extended data and hole chunks; a write says PAYLOAD_LEN. */
START_TEST(test_ext_read_write)
{
  struct fix f;
  struct call k = { .cmd = NBD_CMD_READ, .count = 2048, .offset = 4096 };
  unsigned char p[8 + 1024], hole[12];
  char *buf = malloc(2048), wbuf[512];
  uint64_t ck;

  memset(buf, 'x', 2048);
  k.buf = buf;
  ext_open(&f);
  k.c = f.c;
  ck_assert_int_eq(pthread_create(&k.t, NULL, call_run, &k), 0);
  ck = ext_request(&f, NBD_CMD_READ, 0, 4096, 2048);
  wire_put64(hole, 4096);
  wire_put32(hole + 8, 1024);
  ext_chunk(f.srv, 0, NBD_REPLY_TYPE_OFFSET_HOLE, ck, 4096, hole, 12);
  wire_put64(p, 4096 + 1024);
  memset(p + 8, 'a', 1024);
  ext_chunk(f.srv, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, ck, 4096,
            p, sizeof p);
  ck_assert_int_eq(call_end(&k), 0);
  ck_assert_int_eq(buf[0], 0);
  ck_assert_int_eq(buf[1024], 'a');
  ck_assert_int_eq(buf[2047], 'a');
  free(buf);
  /* The write, from the test thread: the fake server answers after. */
  memset(wbuf, 'w', sizeof wbuf);
  {
    unsigned char h[NBD_EXTENDED_REQUEST_SIZE + 512];
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
      rd(f.srv, h, sizeof h);
      if (wire_get32(h) != NBD_EXTENDED_REQUEST_MAGIC ||
          wire_get16(h + 4) != NBD_CMD_FLAG_PAYLOAD_LEN ||
          wire_get64(h + 24) != 512 || h[32] != 'w')
        _exit(1);
      ext_chunk(f.srv, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE,
                wire_get64(h + 8), 0, NULL, 0);
      _exit(0);
    }
    ck_assert_int_eq(nbdc_pwrite(f.c, wbuf, 512, 0, 0), 0);
    {
      int st;
      ck_assert_int_eq(waitpid(pid, &st, 0), pid);
      ck_assert_int_eq(WIFEXITED(st) && WEXITSTATUS(st) == 0, 1);
    }
  }
  fix_close(&f);
}
END_TEST

/* Both contexts: a reply has a chunk for each; nbdc_depth keeps the
 * depth's (its types the depths), nbdc_extents base:allocation's; two
 * chunks for one context kill.  Without the context, depth is
 * NBD_DEPTH_ONE and nothing is sent. */
START_TEST(test_depth_context)
{
  int which;

  for (which = 0; which < 3; which++) {
    struct fix f;
    struct call k = { .cmd = NBD_CMD_BLOCK_STATUS, .count = 8192,
                      .depth = which != 1 };
    unsigned char b[4 + 8], d[4 + 16];
    uint64_t ck;

    k.e = nbd_extents_new(0, 8192);
    fake_depth = 1;
    fix_open(&f);
    fake_depth = 0;
    ck_assert_int_eq(nbdc_info(f.c)->allocation_depth, 1);
    ck_assert_uint_eq(nbdc_info(f.c)->depth_id, DEPTH_ID);
    ck = call_start(&f, &k);
    wire_put32(b, META_ID);
    wire_put32(b + 4, 8192);
    wire_put32(b + 8, NBD_EXTENT_HOLE);
    wire_put32(d, DEPTH_ID);
    wire_put32(d + 4, 4096);
    wire_put32(d + 8, 1);
    wire_put32(d + 12, 4096);
    wire_put32(d + 16, 2);
    chunk(f.srv, 0, NBD_REPLY_TYPE_BLOCK_STATUS, ck, d, sizeof d);
    if (which == 2)
      chunk(f.srv, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, ck, d,
            sizeof d);
    else
      chunk(f.srv, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, ck, b,
            sizeof b);
    if (which == 2)
      ck_assert_int_eq(call_end(&k), -EIO);
    else {
      ck_assert_int_eq(call_end(&k), 0);
      if (which == 0) {
        ck_assert_uint_eq(k.e->n, 2);
        ck_assert_uint_eq(k.e->v[0].type, 1);
        ck_assert_uint_eq(k.e->v[1].type, 2);
      } else {
        ck_assert_uint_eq(k.e->n, 1);
        ck_assert_uint_eq(k.e->v[0].type, NBD_EXTENT_HOLE);
      }
    }
    nbd_extents_free(k.e);
    fix_close(&f);
  }
  {
    struct fix f;
    struct nbd_extents *e = nbd_extents_new(0, 8192);

    fix_open(&f);
    ck_assert_int_eq(nbdc_info(f.c)->allocation_depth, 0);
    ck_assert_int_eq(nbdc_depth(f.c, 8192, 0, 0, e), NBD_DEPTH_ONE);
    nbd_extents_free(e);
    fix_close(&f);
  }
}
END_TEST

START_TEST(test_unknown_cookie_kills)
{
  struct fix f;
  struct call k = { .cmd = NBD_CMD_FLUSH };
  unsigned char s[16];
  uint64_t ck;

  fix_open(&f);
  ck = call_start(&f, &k);
  wire_put32(s, NBD_SIMPLE_REPLY_MAGIC);
  wire_put32(s + 4, 0);
  wire_put64(s + 8, ck + 1000);
  wr(f.srv, s, sizeof s);
  ck_assert_int_eq(call_end(&k), -EIO);
  ck_assert_int_eq(nbdc_dead(f.c), 1);
  fix_close(&f);
}
END_TEST

START_TEST(test_upstream_gone)
{
  struct fix f;
  struct call k = { .cmd = NBD_CMD_FLUSH };

  fix_open(&f);
  (void)call_start(&f, &k);
  shutdown(f.srv, SHUT_RDWR);
  ck_assert_int_eq(call_end(&k), -EIO);
  fix_close(&f);
}
END_TEST

int
main(void)
{
  Suite *s;
  TCase *tc = tcase_create("client");
  SRunner *sr;
  int failed;

  signal(SIGPIPE, SIG_IGN);     /* the fake server writes to a dead client */
  s = suite_create("nbd");
  tcase_add_test(tc, test_handshake_info);
  tcase_add_test(tc, test_read_chunks_out_of_order);
  tcase_add_test(tc, test_read_chunk_past_request_kills);
  tcase_add_test(tc, test_read_short_reply_fails);
  tcase_add_test(tc, test_error_chunk);
  tcase_add_test(tc, test_block_status);
  tcase_add_test(tc, test_zero_over_4g_split);
  tcase_add_test(tc, test_cache_split_at_max_block);
  tcase_add_test(tc, test_zero_over_4g_error_stops);
  tcase_add_test(tc, test_ext_zero_one_request);
  tcase_add_test(tc, test_ext_block_status);
  tcase_add_test(tc, test_ext_read_write);
  tcase_add_test(tc, test_depth_context);
  tcase_add_test(tc, test_block_status_over_4g);
  tcase_add_test(tc, test_unknown_cookie_kills);
  tcase_add_test(tc, test_upstream_gone);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
