/* Tests of the NBD wire protocol as the server speaks it: option parsing in
 * the handshake (handshake.c) and request parsing and replies in
 * transmission (transmission.c), in-process and without the server binary.
 *
 * Each test builds a config with two 1 MiB memory exports, "" and "ro"
 * (read-only, description "read only"), sets up a struct nbd_conn on one
 * end of a socketpair exactly as server.c's server_accept does, runs
 * conn_run on it in a thread, and drives the other end with a small
 * blocking client written here.  The client's socket has 5 s send and
 * receive timeouts, so a server that stops answering fails the test
 * instead of hanging it.  The config is built per test (checked fixture),
 * so data written by one test is never seen by another.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "conn.h"
#include "engine.h"
#include "protocol.h"

#define KIB             ((uint32_t)1024)
#define MIB             ((uint32_t)1 << 20)
#define DISK_SIZE       ((uint64_t)MIB)
#define HOLE_TYPE       (NBD_EXTENT_HOLE | NBD_EXTENT_ZERO)   /* 3 */
#define CLIENT_TIMEOUT  5               /* seconds, per socket operation */

/* What a 1 MiB writable memory export can serve, bit by bit: flush, FUA,
 * trim, write zeroes (and fast zero), multi-conn and cache; never
 * rotational or read-only.  SEND_DF only with structured replies. */
#define MEM_TFLAGS (NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |               \
                    NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |                 \
                    NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_CAN_MULTI_CONN |   \
                    NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_FAST_ZERO)
/* The same export read-only: nothing that writes is offered. */
#define RO_TFLAGS  (NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY |                \
                    NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN |          \
                    NBD_FLAG_SEND_CACHE)

/* ---- the config ---------------------------------------------------------- */

static struct nbd_config cfg;

static struct nbd_export *
make_export(const char *name, int readonly, const char *description)
{
  const struct nbd_layer_ops *ops = registry_find(NBD_LAYER_BACKEND,
                                                  "memory");
  struct nbd_layer *l;
  struct nbd_export *e;
  char err[256] = "";

  ck_assert_msg(ops != NULL, "the memory backend is not compiled in");
  l = engine_layer_new(ops, name);
  ck_assert_ptr_nonnull(l);
  ck_assert_msg(params_set(l, "size", "1M", err, sizeof err) == 0,
                "size=1M: %s", err);
  ck_assert_msg(engine_layer_setup(l, err, sizeof err) == 0, "setup: %s",
                err);
  e = engine_export_new(name);
  ck_assert_ptr_nonnull(e);
  engine_export_push(e, l);
  ck_assert_msg(engine_export_finish(e, err, sizeof err) == 0, "finish: %s",
                err);
  e->readonly = readonly;
  if (description) {
    e->description = strdup(description);
    ck_assert_ptr_nonnull(e->description);
  }
  return e;
}

static void
setup_config(void)
{
  config_defaults(&cfg);
  cfg.threads = 16;
  cfg.handshake_timeout = UINT64_C(5) * 1000000000;
  cfg.exports = make_export("", 0, NULL);
  cfg.exports->next = make_export("ro", 1, "read only");
}

static void
setup_config_workers(void)
{
  setup_config();
  cfg.inline_requests = 0;
}

static void
teardown_config(void)
{
  config_free(&cfg);
}

/* ---- one connection ------------------------------------------------------- */

struct tc {
  int fd;                       /* the client's end */
  pthread_t tid;
  struct nbd_conn *c;           /* the server's end */
  uint32_t meta_id;             /* from SET_META_CONTEXT, when negotiated */
};

/* The connection thread: as server_conn_thread, the server's end is
 * closed as soon as conn_run returns, so the client sees EOF then. */
static void *
server_thread(void *arg)
{
  struct nbd_conn *c = arg;

  conn_run(c);
  close(c->fd);
  return NULL;
}

static void
tc_start(struct tc *t)
{
  struct timeval tv = { CLIENT_TIMEOUT, 0 };
  struct nbd_conn *c;
  int sv[2];

  memset(t, 0, sizeof *t);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ck_assert_int_eq(setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv,
                              sizeof tv), 0);
  ck_assert_int_eq(setsockopt(sv[1], SOL_SOCKET, SO_SNDTIMEO, &tv,
                              sizeof tv), 0);

  c = conn_new(sv[0], &cfg);
  ck_assert_ptr_nonnull(c);

  t->fd = sv[1];
  t->c = c;
  ck_assert_int_eq(pthread_create(&t->tid, NULL, server_thread, c), 0);
}

/* Closes the client end, waits for the connection to end and frees it as
 * server_conn_thread does (its fd is already closed by server_thread). */
static void
tc_end(struct tc *t)
{
  struct nbd_conn *c = t->c;

  close(t->fd);
  ck_assert_int_eq(pthread_join(t->tid, NULL), 0);
  conn_free(c);
  t->c = NULL;
}

/* ---- client I/O ------------------------------------------------------------ */

static void
cl_send(struct tc *t, const void *buf, size_t len)
{
  const char *p = buf;
  ssize_t r;

  while (len > 0) {
    r = send(t->fd, p, len, MSG_NOSIGNAL);
    if (r == -1 && errno == EINTR)
      continue;
    ck_assert_msg(r > 0, "client send failed: %s",
                  r == -1 ? strerror(errno) : "sent nothing");
    p += r;
    len -= (size_t)r;
  }
}

/* Reads exactly len bytes: 0, or -1 on EOF, error or timeout. */
static int
cl_recv(struct tc *t, void *buf, size_t len)
{
  char *p = buf;
  ssize_t r;

  while (len > 0) {
    r = recv(t->fd, p, len, 0);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0) {
      if (r == 0)
        errno = 0;
      return -1;
    }
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

static void
cl_read(struct tc *t, void *buf, size_t len)
{
  ck_assert_msg(cl_recv(t, buf, len) == 0,
                "client: could not read %zu bytes: %s", len,
                errno ? strerror(errno) : "EOF");
}

/* The server must have closed its end: the next read is EOF (or a reset,
 * when it closed with our bytes unread), not data and not a timeout. */
static void
cl_expect_eof(struct tc *t)
{
  unsigned char b;
  ssize_t r;

  do
    r = recv(t->fd, &b, 1, 0);
  while (r == -1 && errno == EINTR);
  ck_assert_msg(r == 0 || (r == -1 && errno == ECONNRESET),
                "expected the server to close the connection, got %s",
                r > 0 ? "data" : strerror(errno));
}

static int
is_zero(const unsigned char *p, size_t len)
{
  size_t i;

  for (i = 0; i < len; i++)
    if (p[i])
      return 0;
  return 1;
}

/* Never-zero bytes that depend on the disk offset, so misplaced data and
 * data read back as a hole are both caught. */
static void
pattern(unsigned char *p, size_t len, uint64_t off)
{
  size_t i;

  for (i = 0; i < len; i++)
    p[i] = (unsigned char)((off + i) * 131 % 251 + 1);
}

static unsigned char *
xmalloc(size_t len)
{
  unsigned char *p = malloc(len ? len : 1);

  ck_assert_ptr_nonnull(p);
  return p;
}

/* ---- handshake client ------------------------------------------------------ */

/* Reads the greeting, checks it, and answers with the client flags. */
static void
hs_start(struct tc *t, uint32_t cflags)
{
  unsigned char g[18], f[4];

  cl_read(t, g, sizeof g);
  ck_assert_msg(wire_get64(g) == NBD_MAGIC, "greeting magic %#llx",
                (unsigned long long)wire_get64(g));
  ck_assert_msg(wire_get64(g + 8) == NBD_IHAVEOPT, "greeting IHAVEOPT %#llx",
                (unsigned long long)wire_get64(g + 8));
  wire_put32(f, cflags);
  cl_send(t, f, sizeof f);
}

static void
opt_send(struct tc *t, uint32_t opt, const void *data, uint32_t len)
{
  unsigned char h[16];

  wire_put64(h, NBD_IHAVEOPT);
  wire_put32(h + 8, opt);
  wire_put32(h + 12, len);
  cl_send(t, h, sizeof h);
  if (len)
    cl_send(t, data, len);
}

struct rep {
  uint32_t opt, type, len;
  unsigned char data[2 * NBD_MAX_STRING + 64];
};

static void
rep_read(struct tc *t, struct rep *r)
{
  unsigned char h[20];

  cl_read(t, h, sizeof h);
  ck_assert_msg(wire_get64(h) == NBD_REP_MAGIC, "option reply magic %#llx",
                (unsigned long long)wire_get64(h));
  r->opt = wire_get32(h + 8);
  r->type = wire_get32(h + 12);
  r->len = wire_get32(h + 16);
  ck_assert_uint_le(r->len, sizeof r->data);
  cl_read(t, r->data, r->len);
}

/* Reads one reply and checks it answers opt with the given type. */
static void
rep_expect(struct tc *t, uint32_t opt, uint32_t type, struct rep *r)
{
  rep_read(t, r);
  ck_assert_uint_eq(r->opt, opt);
  ck_assert_msg(r->type == type, "option %u: reply type %#x, expected %#x",
                opt, r->type, type);
}

/* The data of NBD_OPT_INFO / NBD_OPT_GO: name, number of requests,
 * requests.  Returns its length. */
static uint32_t
info_data(unsigned char *buf, const char *name, const uint16_t *reqs,
          uint16_t nreqs)
{
  uint32_t n = (uint32_t)strlen(name), i;

  wire_put32(buf, n);
  memcpy(buf + 4, name, n);
  wire_put16(buf + 4 + n, nreqs);
  for (i = 0; i < nreqs; i++)
    wire_put16(buf + 6 + n + 2 * i, reqs[i]);
  return 6 + n + 2 * (uint32_t)nreqs;
}

/* What the replies to one INFO or GO said. */
struct info_res {
  uint32_t final;               /* ACK or the error type */
  int nexport, nblock, ndesc, nname;
  uint64_t size;
  uint16_t tflags;
  uint32_t bmin, bpref, bmax;
  char desc[NBD_MAX_STRING + 1], name[NBD_MAX_STRING + 1];
};

/* Sends INFO or GO and reads every reply up to the ACK or an error. */
static void
hs_info(struct tc *t, uint32_t opt, const char *name, const uint16_t *reqs,
        uint16_t nreqs, struct info_res *res)
{
  unsigned char buf[64 + NBD_MAX_STRING];
  struct rep r;

  memset(res, 0, sizeof *res);
  ck_assert_uint_le(strlen(name) + 6 + 2u * nreqs, sizeof buf);
  opt_send(t, opt, buf, info_data(buf, name, reqs, nreqs));
  for (;;) {
    rep_read(t, &r);
    ck_assert_uint_eq(r.opt, opt);
    if (r.type != NBD_REP_INFO) {
      res->final = r.type;
      if (r.type == NBD_REP_ACK)
        ck_assert_uint_eq(r.len, 0);
      return;
    }
    ck_assert_uint_ge(r.len, 2);
    switch (wire_get16(r.data)) {
    case NBD_INFO_EXPORT:
      ck_assert_uint_eq(r.len, 12);
      res->nexport++;
      res->size = wire_get64(r.data + 2);
      res->tflags = wire_get16(r.data + 10);
      break;
    case NBD_INFO_BLOCK_SIZE:
      ck_assert_uint_eq(r.len, 14);
      res->nblock++;
      res->bmin = wire_get32(r.data + 2);
      res->bpref = wire_get32(r.data + 6);
      res->bmax = wire_get32(r.data + 10);
      break;
    case NBD_INFO_DESCRIPTION:
      res->ndesc++;
      memcpy(res->desc, r.data + 2, r.len - 2);
      res->desc[r.len - 2] = '\0';
      break;
    case NBD_INFO_NAME:
      res->nname++;
      memcpy(res->name, r.data + 2, r.len - 2);
      res->name[r.len - 2] = '\0';
      break;
    default:
      ck_abort_msg("unexpected NBD_INFO type %u", wire_get16(r.data));
    }
  }
}

/* GO that must succeed; returns the transmission flags. */
static uint16_t
hs_go(struct tc *t, const char *name)
{
  struct info_res res;

  hs_info(t, NBD_OPT_GO, name, NULL, 0, &res);
  ck_assert_msg(res.final == NBD_REP_ACK, "GO \"%s\" failed: %#x", name,
                res.final);
  ck_assert_int_eq(res.nexport, 1);
  ck_assert_uint_eq(res.size, DISK_SIZE);
  return res.tflags;
}

static void
hs_structured(struct tc *t)
{
  struct rep r;

  opt_send(t, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
  rep_expect(t, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &r);
  ck_assert_uint_eq(r.len, 0);
}

/* SET_META_CONTEXT data: export name, one query. */
static uint32_t
meta_data(unsigned char *buf, const char *name, const char *query)
{
  uint32_t n = (uint32_t)strlen(name), q = (uint32_t)strlen(query);

  wire_put32(buf, n);
  memcpy(buf + 4, name, n);
  wire_put32(buf + 4 + n, 1);
  wire_put32(buf + 8 + n, q);
  memcpy(buf + 12 + n, query, q);
  return 12 + n + q;
}

/* SET_META_CONTEXT base:allocation that must succeed; keeps the id. */
static void
hs_meta(struct tc *t, const char *name)
{
  unsigned char buf[256];
  struct rep r;

  opt_send(t, NBD_OPT_SET_META_CONTEXT, buf,
           meta_data(buf, name, "base:allocation"));
  rep_expect(t, NBD_OPT_SET_META_CONTEXT, NBD_REP_META_CONTEXT, &r);
  ck_assert_uint_eq(r.len, 4 + 15);
  ck_assert(memcmp(r.data + 4, "base:allocation", 15) == 0);
  t->meta_id = wire_get32(r.data);
  ck_assert_uint_ne(t->meta_id, 0);
  rep_expect(t, NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &r);
  ck_assert_uint_eq(r.len, 0);
}

/* A connection in transmission on export name. */
static uint16_t
tc_connect(struct tc *t, const char *name, int structured, int meta)
{
  tc_start(t);
  hs_start(t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  if (structured)
    hs_structured(t);
  if (meta)
    hs_meta(t, name);
  return hs_go(t, name);
}

/* ---- transmission client ---------------------------------------------------- */

static void
req_send(struct tc *t, uint16_t flags, uint16_t type, uint64_t cookie,
         uint64_t offset, uint32_t count, const void *payload)
{
  unsigned char h[28];

  wire_put32(h, NBD_REQUEST_MAGIC);
  wire_put16(h + 4, flags);
  wire_put16(h + 6, type);
  wire_put64(h + 8, cookie);
  wire_put64(h + 16, offset);
  wire_put32(h + 24, count);
  cl_send(t, h, sizeof h);
  if (payload)
    cl_send(t, payload, count);
}

/* Reads a simple reply header for cookie; returns its error. */
static uint32_t
simple_reply(struct tc *t, uint64_t cookie)
{
  unsigned char h[16];

  cl_read(t, h, sizeof h);
  ck_assert_msg(wire_get32(h) == NBD_SIMPLE_REPLY_MAGIC,
                "simple reply magic %#x", wire_get32(h));
  ck_assert_msg(wire_get64(h + 8) == cookie, "reply cookie %llu, expected %llu",
                (unsigned long long)wire_get64(h + 8),
                (unsigned long long)cookie);
  return wire_get32(h + 4);
}

/* A request with no payload and no data in its reply; returns the error. */
static uint32_t
simple_cmd(struct tc *t, uint16_t flags, uint16_t type, uint64_t cookie,
           uint64_t offset, uint32_t count)
{
  req_send(t, flags, type, cookie, offset, count, NULL);
  return simple_reply(t, cookie);
}

static uint32_t
simple_write(struct tc *t, uint64_t cookie, uint64_t offset,
             const void *buf, uint32_t count)
{
  req_send(t, 0, NBD_CMD_WRITE, cookie, offset, count, buf);
  return simple_reply(t, cookie);
}

/* A READ with simple replies; on success the data is in buf. */
static uint32_t
simple_read(struct tc *t, uint64_t cookie, uint64_t offset, void *buf,
            uint32_t count)
{
  uint32_t err;

  req_send(t, 0, NBD_CMD_READ, cookie, offset, count, NULL);
  err = simple_reply(t, cookie);
  if (err == 0)
    cl_read(t, buf, count);
  return err;
}

struct chunk {
  uint16_t flags, type;
  uint64_t cookie;
  uint32_t len;
  unsigned char *data;          /* len bytes, malloc'd */
};

static void
chunk_read(struct tc *t, struct chunk *ch)
{
  unsigned char h[20];

  cl_read(t, h, sizeof h);
  ck_assert_msg(wire_get32(h) == NBD_STRUCTURED_REPLY_MAGIC,
                "structured reply magic %#x", wire_get32(h));
  ch->flags = wire_get16(h + 4);
  ch->type = wire_get16(h + 6);
  ch->cookie = wire_get64(h + 8);
  ch->len = wire_get32(h + 16);
  ck_assert_uint_le(ch->len, 64 * MIB);
  ch->data = xmalloc(ch->len);
  cl_read(t, ch->data, ch->len);
}

/* Reads one chunk that must be the final error chunk for cookie; returns
 * its NBD error. */
static uint32_t
chunk_error(struct tc *t, uint64_t cookie)
{
  struct chunk ch;
  uint32_t err = 0, msglen = 0;

  chunk_read(t, &ch);
  if (ch.len >= 6) {
    err = wire_get32(ch.data);
    msglen = wire_get16(ch.data + 4);
  }
  free(ch.data);                /* before asserting: no leak on failure */
  ck_assert_uint_eq(ch.cookie, cookie);
  ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_ERROR);
  ck_assert_uint_eq(ch.flags, NBD_REPLY_FLAG_DONE);
  ck_assert_uint_ge(ch.len, 6);
  ck_assert_uint_eq(ch.len, 6u + msglen);
  return err;
}

/* ---- handshake tests ------------------------------------------------------- */

START_TEST(test_greeting_magic_and_flags)
{
  struct tc t;
  unsigned char g[18];

  tc_start(&t);
  cl_read(&t, g, sizeof g);
  ck_assert(wire_get64(g) == NBD_MAGIC);
  ck_assert(memcmp(g, "NBDMAGIC", 8) == 0);
  ck_assert(wire_get64(g + 8) == NBD_IHAVEOPT);
  ck_assert(memcmp(g + 8, "IHAVEOPT", 8) == 0);
  ck_assert_uint_eq(wire_get16(g + 16),
                    NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  tc_end(&t);
}
END_TEST

START_TEST(test_unknown_client_flag_drops_connection)
{
  struct tc t;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES | (1u << 2));
  cl_expect_eof(&t);
  tc_end(&t);
}
END_TEST

START_TEST(test_unknown_option_unsup_then_go_works)
{
  struct tc t;
  struct rep r;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, 0x4242, "abcde", 5);   /* its data must be skipped */
  rep_expect(&t, 0x4242, NBD_REP_ERR_UNSUP, &r);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_list_returns_both_exports_then_ack)
{
  struct tc t;
  struct rep r;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_LIST, NULL, 0);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_SERVER, &r);
  ck_assert_uint_eq(r.len, 4);                  /* "" and no description */
  ck_assert_uint_eq(wire_get32(r.data), 0);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_SERVER, &r);
  ck_assert_uint_eq(r.len, 4 + 2 + 9);
  ck_assert_uint_eq(wire_get32(r.data), 2);
  ck_assert(memcmp(r.data + 4, "ro", 2) == 0);
  ck_assert(memcmp(r.data + 6, "read only", 9) == 0);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_ACK, &r);
  ck_assert_uint_eq(r.len, 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_list_with_data_invalid_and_stays_in_sync)
{
  struct tc t;
  struct rep r;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_LIST, "\0\0\0\0", 4);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_ERR_INVALID, &r);
  /* The 4 bytes were consumed: a plain LIST works. */
  opt_send(&t, NBD_OPT_LIST, NULL, 0);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_SERVER, &r);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_SERVER, &r);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_ACK, &r);
  tc_end(&t);
}
END_TEST

START_TEST(test_abort_acked_then_closed)
{
  struct tc t;
  struct rep r;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_ABORT, NULL, 0);
  rep_expect(&t, NBD_OPT_ABORT, NBD_REP_ACK, &r);
  ck_assert_uint_eq(r.len, 0);
  cl_expect_eof(&t);
  tc_end(&t);
}
END_TEST

START_TEST(test_starttls_refused_and_session_continues)
{
  struct tc t;
  struct rep r;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_STARTTLS, NULL, 0);
  rep_read(&t, &r);
  ck_assert_uint_eq(r.opt, NBD_OPT_STARTTLS);
  ck_assert_msg(r.type & UINT32_C(0x80000000),
                "STARTTLS reply type %#x is not an error", r.type);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_info_unknown_export_err_unknown)
{
  struct tc t;
  struct info_res res;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_info(&t, NBD_OPT_INFO, "nope", NULL, 0, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ERR_UNKNOWN);
  ck_assert_int_eq(res.nexport, 0);
  /* INFO on a real export then works and leaves the handshake going. */
  hs_info(&t, NBD_OPT_INFO, "", NULL, 0, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ACK);
  ck_assert_int_eq(res.nexport, 1);
  ck_assert_uint_eq(hs_go(&t, "ro"), RO_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_unknown_export_err_unknown)
{
  struct tc t;
  struct info_res res;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_info(&t, NBD_OPT_GO, "nope", NULL, 0, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ERR_UNKNOWN);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_nrinfos_beyond_length_invalid_and_in_sync)
{
  struct tc t;
  struct rep r;
  unsigned char d[6];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  wire_put32(d, 0);             /* name "" */
  wire_put16(d + 4, 3);         /* three requests ... and no bytes */
  opt_send(&t, NBD_OPT_GO, d, sizeof d);
  rep_expect(&t, NBD_OPT_GO, NBD_REP_ERR_INVALID, &r);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_extra_bytes_invalid_and_in_sync)
{
  struct tc t;
  struct rep r;
  unsigned char d[10];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  wire_put32(d, 0);             /* name "" */
  wire_put16(d + 4, 1);         /* one request, but two follow */
  wire_put16(d + 6, NBD_INFO_BLOCK_SIZE);
  wire_put16(d + 8, NBD_INFO_NAME);
  opt_send(&t, NBD_OPT_GO, d, sizeof d);
  rep_expect(&t, NBD_OPT_GO, NBD_REP_ERR_INVALID, &r);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_name_longer_than_option_invalid)
{
  struct tc t;
  struct rep r;
  unsigned char d[8];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  wire_put32(d, 100);           /* a 100-byte name in an 8-byte option */
  memcpy(d + 4, "abcd", 4);
  opt_send(&t, NBD_OPT_GO, d, sizeof d);
  rep_expect(&t, NBD_OPT_GO, NBD_REP_ERR_INVALID, &r);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_memory_size_and_exact_flags)
{
  struct tc t;
  uint16_t f;

  f = tc_connect(&t, "", 0, 0);
  ck_assert_msg(f == MEM_TFLAGS, "flags %#x, expected %#x", f, MEM_TFLAGS);
  ck_assert(!(f & NBD_FLAG_SEND_DF));   /* no structured replies */
  tc_end(&t);
}
END_TEST

START_TEST(test_go_memory_structured_adds_df)
{
  struct tc t;
  uint16_t f;

  f = tc_connect(&t, "", 1, 0);
  ck_assert_msg(f == (MEM_TFLAGS | NBD_FLAG_SEND_DF), "flags %#x, expected %#x",
                f, MEM_TFLAGS | NBD_FLAG_SEND_DF);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_readonly_export_flags)
{
  struct tc t;
  uint16_t f;

  f = tc_connect(&t, "ro", 0, 0);
  ck_assert(f & NBD_FLAG_READ_ONLY);
  ck_assert(!(f & (NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
                   NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_FAST_ZERO)));
  ck_assert_msg(f == RO_TFLAGS, "flags %#x, expected %#x", f, RO_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_block_size_when_requested)
{
  struct tc t;
  struct info_res res;
  const uint16_t reqs[] = { NBD_INFO_BLOCK_SIZE };

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_info(&t, NBD_OPT_GO, "", reqs, 1, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ACK);
  ck_assert_int_eq(res.nexport, 1);
  ck_assert_int_eq(res.nblock, 1);
  ck_assert_uint_eq(res.bmin, 1);
  ck_assert_uint_eq(res.bpref, 4096);
  ck_assert_uint_eq(res.bmax, 32 * MIB);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_description_when_requested)
{
  struct tc t;
  struct info_res res;
  const uint16_t reqs[] = { NBD_INFO_DESCRIPTION };

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_info(&t, NBD_OPT_INFO, "ro", NULL, 0, &res);     /* not requested */
  ck_assert_uint_eq(res.final, NBD_REP_ACK);
  ck_assert_int_eq(res.ndesc, 0);
  /* An export without a description sends none, even when asked. */
  hs_info(&t, NBD_OPT_INFO, "", reqs, 1, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ACK);
  ck_assert_int_eq(res.nexport, 1);
  ck_assert_int_eq(res.ndesc, 0);
  hs_info(&t, NBD_OPT_GO, "ro", reqs, 1, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ACK);
  ck_assert_int_eq(res.nexport, 1);
  ck_assert_int_eq(res.ndesc, 1);
  ck_assert_str_eq(res.desc, "read only");
  tc_end(&t);
}
END_TEST

START_TEST(test_go_name_when_requested)
{
  struct tc t;
  struct info_res res;
  const uint16_t reqs[] = { NBD_INFO_NAME };

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_info(&t, NBD_OPT_GO, "ro", reqs, 1, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ACK);
  ck_assert_int_eq(res.nname, 1);
  ck_assert_str_eq(res.name, "ro");
  tc_end(&t);
}
END_TEST

START_TEST(test_set_meta_context_before_structured_invalid)
{
  struct tc t;
  struct rep r;
  unsigned char buf[64];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_SET_META_CONTEXT, buf,
           meta_data(buf, "", "base:allocation"));
  rep_expect(&t, NBD_OPT_SET_META_CONTEXT, NBD_REP_ERR_INVALID, &r);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_unknown_info_request_ignored)
{
  struct tc t;
  struct info_res res;
  const uint16_t reqs[] = { 0x7777, NBD_INFO_BLOCK_SIZE };

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_info(&t, NBD_OPT_GO, "", reqs, 2, &res);    /* hs_info rejects any */
  ck_assert_uint_eq(res.final, NBD_REP_ACK);     /* unknown NBD_INFO type */
  ck_assert_int_eq(res.nexport, 1);
  ck_assert_int_eq(res.nblock, 1);
  tc_end(&t);
}
END_TEST

START_TEST(test_set_meta_context_base_allocation)
{
  struct tc t;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_structured(&t);
  hs_meta(&t, "");              /* META_CONTEXT, nonzero id, then ACK */
  ck_assert_uint_ne(t.meta_id, 0);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS | NBD_FLAG_SEND_DF);
  tc_end(&t);
}
END_TEST

START_TEST(test_export_name_without_no_zeroes_pads_124)
{
  struct tc t;
  unsigned char out[8 + 2 + 124], buf[512];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE);
  opt_send(&t, NBD_OPT_EXPORT_NAME, NULL, 0);
  cl_read(&t, out, sizeof out);
  ck_assert_uint_eq(wire_get64(out), DISK_SIZE);
  ck_assert_uint_eq(wire_get16(out + 8), MEM_TFLAGS);
  ck_assert(is_zero(out + 10, 124));
  /* Exactly 134 bytes: the next thing is the reply to our request. */
  ck_assert_uint_eq(simple_read(&t, 7, 0, buf, sizeof buf), 0);
  ck_assert(is_zero(buf, sizeof buf));
  tc_end(&t);
}
END_TEST

START_TEST(test_export_name_with_no_zeroes_sends_10)
{
  struct tc t;
  unsigned char out[10], buf[512];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_EXPORT_NAME, "ro", 2);
  cl_read(&t, out, sizeof out);
  ck_assert_uint_eq(wire_get64(out), DISK_SIZE);
  ck_assert_uint_eq(wire_get16(out + 8), RO_TFLAGS);
  /* Any padding would be read here instead of the reply magic. */
  ck_assert_uint_eq(simple_read(&t, 8, 0, buf, sizeof buf), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_export_name_unknown_drops_connection)
{
  struct tc t;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_EXPORT_NAME, "nope", 4);
  cl_expect_eof(&t);
  tc_end(&t);
}
END_TEST

/* ---- transmission tests ----------------------------------------------------- */

START_TEST(test_simple_read_returns_written_data)
{
  struct tc t;
  unsigned char w[4096], r[4096];

  tc_connect(&t, "", 0, 0);
  pattern(w, sizeof w, 8192);
  ck_assert_uint_eq(simple_write(&t, 1, 8192, w, sizeof w), 0);
  memset(r, 0, sizeof r);
  ck_assert_uint_eq(simple_read(&t, 2, 8192, r, sizeof r), 0);
  ck_assert(memcmp(r, w, sizeof w) == 0);
  /* The data was exactly 4096 bytes: the next reply follows it. */
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_FLUSH, 3, 0, 0), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_write_read_round_trip_unaligned)
{
  struct tc t;
  unsigned char *w = xmalloc(10000), *r = xmalloc(12000);

  tc_connect(&t, "", 0, 0);
  /* Across a 32 KiB page of the store, not aligned to anything. */
  pattern(w, 10000, 30001);
  ck_assert_uint_eq(simple_write(&t, 1, 30001, w, 10000), 0);
  ck_assert_uint_eq(simple_read(&t, 2, 29001, r, 12000), 0);
  ck_assert(is_zero(r, 1000));
  ck_assert(memcmp(r + 1000, w, 10000) == 0);
  ck_assert(is_zero(r + 11000, 1000));
  free(w);
  free(r);
  tc_end(&t);
}
END_TEST

START_TEST(test_read_past_end_einval)
{
  struct tc t;
  unsigned char buf[1024];

  tc_connect(&t, "", 0, 0);
  ck_assert_uint_eq(simple_read(&t, 1, DISK_SIZE - 512, buf, 1024),
                    NBD_EINVAL);
  ck_assert_uint_eq(simple_read(&t, 2, DISK_SIZE, buf, 1), NBD_EINVAL);
  /* offset + count wraps around 2^64 */
  ck_assert_uint_eq(simple_read(&t, 3, UINT64_MAX - 511, buf, 1024),
                    NBD_EINVAL);
  /* Up to the last byte is fine. */
  ck_assert_uint_eq(simple_read(&t, 4, DISK_SIZE - 512, buf, 512), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_write_past_end_enospc)
{
  struct tc t;
  unsigned char w[8192], r[4096];

  tc_connect(&t, "", 0, 0);
  pattern(w, sizeof w, DISK_SIZE - 4096);
  ck_assert_uint_eq(simple_write(&t, 1, DISK_SIZE - 4096, w, sizeof w),
                    NBD_ENOSPC);
  /* Its payload was consumed and nothing of it was written. */
  ck_assert_uint_eq(simple_read(&t, 2, DISK_SIZE - 4096, r, sizeof r), 0);
  ck_assert(is_zero(r, sizeof r));
  tc_end(&t);
}
END_TEST

START_TEST(test_trim_past_end_einval)
{
  struct tc t;

  tc_connect(&t, "", 0, 0);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_TRIM, 1, DISK_SIZE - 4096,
                               8192), NBD_EINVAL);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_TRIM, 2, DISK_SIZE - 4096,
                               4096), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_read_zero_length_einval)
{
  struct tc t;

  tc_connect(&t, "", 0, 0);
  /* An error reply carries no data, even for a READ. */
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_READ, 1, 0, 0), NBD_EINVAL);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_FLUSH, 2, 0, 0), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_read_over_max_payload_einval_and_continues)
{
  struct tc t;
  unsigned char buf[512];

  tc_connect(&t, "", 0, 0);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_READ, 1, 0, 33 * MIB),
                    NBD_EINVAL);
  ck_assert_uint_eq(simple_read(&t, 2, 0, buf, sizeof buf), 0);
  ck_assert(is_zero(buf, sizeof buf));
  tc_end(&t);
}
END_TEST

START_TEST(test_unknown_command_einval_and_continues)
{
  struct tc t;
  unsigned char buf[512];

  tc_connect(&t, "", 0, 0);
  ck_assert_uint_eq(simple_cmd(&t, 0, 99, 1, 0, 512), NBD_EINVAL);
  ck_assert_uint_eq(simple_read(&t, 2, 0, buf, sizeof buf), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_read_unknown_flag_einval)
{
  struct tc t;
  unsigned char buf[512];

  tc_connect(&t, "", 0, 0);
  ck_assert_uint_eq(simple_cmd(&t, 1u << 7, NBD_CMD_READ, 1, 0, 512),
                    NBD_EINVAL);
  /* DF without structured replies is not a valid flag either. */
  ck_assert_uint_eq(simple_cmd(&t, NBD_FLAG_DF, NBD_CMD_READ, 2, 0, 512),
                    NBD_EINVAL);
  ck_assert_uint_eq(simple_read(&t, 3, 0, buf, sizeof buf), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_write_zeroes_fast_zero_succeeds)
{
  struct tc t;
  unsigned char w[8192], r[8192];

  tc_connect(&t, "", 0, 0);
  pattern(w, sizeof w, 0);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, sizeof w), 0);
  ck_assert_uint_eq(simple_cmd(&t, NBD_FLAG_FAST_ZERO, NBD_CMD_WRITE_ZEROES,
                               2, 0, sizeof w), 0);
  ck_assert_uint_eq(simple_read(&t, 3, 0, r, sizeof r), 0);
  ck_assert(is_zero(r, sizeof r));
  tc_end(&t);
}
END_TEST

START_TEST(test_block_status_without_meta_context_einval)
{
  struct tc t;

  tc_connect(&t, "", 1, 0);
  req_send(&t, 0, NBD_CMD_BLOCK_STATUS, 1, 0, 4096, NULL);
  ck_assert_uint_eq(chunk_error(&t, 1), NBD_EINVAL);
  tc_end(&t);
}
END_TEST

/* Extent type of the descriptor covering disk byte off. */
static uint32_t
extent_type_at(const unsigned char *d, uint32_t n, uint64_t start,
               uint64_t off)
{
  uint32_t i;

  for (i = 0; i < n; i++) {
    uint32_t len = wire_get32(d + 8 * i);
    if (off < start + len)
      return wire_get32(d + 8 * i + 4);
    start += len;
  }
  ck_abort_msg("no descriptor covers offset %llu", (unsigned long long)off);
  return 0;
}

START_TEST(test_block_status_base_allocation_descriptors)
{
  struct tc t;
  struct chunk ch;
  unsigned char w[4096];
  uint32_t i, n, total = 0;
  const uint64_t start = 0;
  const uint32_t count = 256 * KIB;

  tc_connect(&t, "", 1, 1);
  pattern(w, sizeof w, 64 * KIB);
  ck_assert_uint_eq(simple_write(&t, 1, 64 * KIB, w, sizeof w), 0);
  req_send(&t, 0, NBD_CMD_BLOCK_STATUS, 2, start, count, NULL);
  chunk_read(&t, &ch);
  ck_assert_uint_eq(ch.cookie, 2);
  ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_BLOCK_STATUS);
  ck_assert_uint_eq(ch.flags, NBD_REPLY_FLAG_DONE);
  ck_assert_uint_ge(ch.len, 4 + 8);
  ck_assert_uint_eq((ch.len - 4) % 8, 0);
  ck_assert_uint_eq(wire_get32(ch.data), t.meta_id);
  n = (ch.len - 4) / 8;
  for (i = 0; i < n; i++) {
    uint32_t len = wire_get32(ch.data + 4 + 8 * i);
    ck_assert_uint_gt(len, 0);
    total += len;
  }
  /* Memory knows every byte: the whole request is described, no more. */
  ck_assert_uint_eq(total, count);
  /* The written bytes are data; far from them, holes that read as zero. */
  ck_assert_uint_eq(extent_type_at(ch.data + 4, n, start, 64 * KIB), 0);
  ck_assert_uint_eq(extent_type_at(ch.data + 4, n, start, 68 * KIB - 1), 0);
  ck_assert_uint_eq(extent_type_at(ch.data + 4, n, start, 0), HOLE_TYPE);
  ck_assert_uint_eq(extent_type_at(ch.data + 4, n, start, 32 * KIB - 1),
                    HOLE_TYPE);
  ck_assert_uint_eq(extent_type_at(ch.data + 4, n, start, 128 * KIB),
                    HOLE_TYPE);
  ck_assert_uint_eq(extent_type_at(ch.data + 4, n, start, count - 1),
                    HOLE_TYPE);
  free(ch.data);
  tc_end(&t);
}
END_TEST

START_TEST(test_block_status_req_one_single_descriptor)
{
  struct tc t;
  struct chunk ch;
  unsigned char w[4096];

  tc_connect(&t, "", 1, 1);
  pattern(w, sizeof w, 128 * KIB);
  ck_assert_uint_eq(simple_write(&t, 1, 128 * KIB, w, sizeof w), 0);
  req_send(&t, NBD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 2, 0, 256 * KIB, NULL);
  chunk_read(&t, &ch);
  ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_BLOCK_STATUS);
  ck_assert_uint_eq(ch.len, 4 + 8);
  ck_assert_uint_eq(wire_get32(ch.data), t.meta_id);
  ck_assert_uint_gt(wire_get32(ch.data + 4), 0);
  ck_assert_uint_le(wire_get32(ch.data + 4), 128 * KIB);
  ck_assert_uint_eq(wire_get32(ch.data + 8), HOLE_TYPE);
  free(ch.data);
  tc_end(&t);
}
END_TEST

START_TEST(test_write_over_max_payload_einval_payload_skipped)
{
  struct tc t;
  const uint32_t big = 33 * MIB;
  unsigned char *w = xmalloc(big), r[512];

  tc_connect(&t, "", 0, 0);
  memset(w, 0xa5, big);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, big), NBD_EINVAL);
  /* The 33 MiB were read and dropped: the stream is in sync, and the disk
   * is untouched. */
  ck_assert_uint_eq(simple_read(&t, 2, 0, r, sizeof r), 0);
  ck_assert(is_zero(r, sizeof r));
  free(w);
  tc_end(&t);
}
END_TEST

START_TEST(test_write_far_over_max_payload_closes)
{
  struct tc t;

  tc_connect(&t, "", 0, 0);
  /* 65 MiB announced: not worth reading, the connection is dropped. */
  req_send(&t, 0, NBD_CMD_WRITE, 1, 0, 65 * MIB, NULL);
  cl_expect_eof(&t);
  tc_end(&t);
}
END_TEST

START_TEST(test_block_status_meta_context_of_other_export_go)
{
  struct tc t;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_structured(&t);
  hs_meta(&t, "ro");
  hs_go(&t, "");
  /* The context was chosen for "ro", not for the export in use. */
  req_send(&t, 0, NBD_CMD_BLOCK_STATUS, 1, 0, 4096, NULL);
  ck_assert_uint_eq(chunk_error(&t, 1), NBD_EINVAL);
  tc_end(&t);
}
END_TEST

START_TEST(test_block_status_meta_context_of_other_export_export_name)
{
  struct tc t;
  unsigned char out[10];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_structured(&t);
  hs_meta(&t, "ro");
  opt_send(&t, NBD_OPT_EXPORT_NAME, NULL, 0);  /* export "" */
  cl_read(&t, out, sizeof out);
  ck_assert_uint_eq(wire_get64(out), DISK_SIZE);
  /* As with GO: the context was chosen for "ro", not for "". */
  req_send(&t, 0, NBD_CMD_BLOCK_STATUS, 1, 0, 4096, NULL);
  ck_assert_uint_eq(chunk_error(&t, 1), NBD_EINVAL);
  tc_end(&t);
}
END_TEST

START_TEST(test_structured_read_unwritten_is_hole_chunk)
{
  struct tc t;
  struct chunk ch;

  tc_connect(&t, "", 1, 0);
  req_send(&t, 0, NBD_CMD_READ, 1, 128 * KIB, 64 * KIB, NULL);
  chunk_read(&t, &ch);
  ck_assert_uint_eq(ch.cookie, 1);
  ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_OFFSET_HOLE);
  ck_assert_uint_eq(ch.flags, NBD_REPLY_FLAG_DONE);
  ck_assert_uint_eq(ch.len, 12);
  ck_assert_uint_eq(wire_get64(ch.data), 128 * KIB);
  ck_assert_uint_eq(wire_get32(ch.data + 8), 64 * KIB);
  free(ch.data);
  tc_end(&t);
}
END_TEST

/* After many reads without zeros only some reads are scanned for them
 * (transmission.c, TX_SCAN_*); zeros read after that must still come back
 * as a hole chunk within a few reads, and every read is right either way. */
START_TEST(test_structured_read_hole_found_again_after_data_streak)
{
  struct tc t;
  struct chunk ch;
  unsigned char *w = xmalloc(4096);
  unsigned i, got_hole = 0;

  tc_connect(&t, "", 1, 0);
  pattern(w, 4096, 0);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, 4096), 0);
  for (i = 0; i < 40; i++) {          /* a long streak of data reads */
    req_send(&t, 0, NBD_CMD_READ, 2, 0, 4096, NULL);
    chunk_read(&t, &ch);
    ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_OFFSET_DATA);
    ck_assert(memcmp(ch.data + 8, w, 4096) == 0);
    free(ch.data);
  }
  for (i = 0; i < 300 && !got_hole; i++) {  /* then zeros */
    req_send(&t, 0, NBD_CMD_READ, 3, 64 * KIB, 4096, NULL);
    chunk_read(&t, &ch);
    ck_assert_uint_eq(ch.flags, NBD_REPLY_FLAG_DONE);
    if (ch.type == NBD_REPLY_TYPE_OFFSET_HOLE)
      got_hole = 1;
    else {
      ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_OFFSET_DATA);
      ck_assert(is_zero(ch.data + 8, 4096));
    }
    free(ch.data);
  }
  /* The streak was 40: the next scan is at 64, and scans never come more
   * than 256 reads apart. */
  ck_assert_msg(got_hole, "300 reads of zeros after a data streak: no hole "
                "chunk");
  ck_assert_msg(i <= 25, "the first hole chunk came %u reads after the "
                "zeros began; the back-off scans at a streak of 64", i);
  free(w);
  tc_end(&t);
}
END_TEST

START_TEST(test_structured_read_df_is_one_data_chunk)
{
  struct tc t;
  struct chunk ch;

  tc_connect(&t, "", 1, 0);
  req_send(&t, NBD_FLAG_DF, NBD_CMD_READ, 1, 128 * KIB, 64 * KIB, NULL);
  chunk_read(&t, &ch);
  ck_assert_uint_eq(ch.cookie, 1);
  ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_OFFSET_DATA);
  ck_assert_uint_eq(ch.flags, NBD_REPLY_FLAG_DONE);
  ck_assert_uint_eq(ch.len, 8 + 64 * KIB);
  ck_assert_uint_eq(wire_get64(ch.data), 128 * KIB);
  ck_assert(is_zero(ch.data + 8, 64 * KIB));
  free(ch.data);
  tc_end(&t);
}
END_TEST

/* Chunks of a structured read, reassembled: every byte covered once, in
 * any mix of data and hole chunks, DONE only on the last. */
START_TEST(test_structured_read_chunks_reassemble_data)
{
  struct tc t;
  struct chunk ch;
  unsigned char w[10000], *got = xmalloc(64 * KIB), *seen = xmalloc(64 * KIB);
  const uint64_t base = 256 * KIB;
  uint32_t covered = 0, i;
  int done = 0;

  memset(seen, 0, 64 * KIB);
  tc_connect(&t, "", 1, 0);
  pattern(w, sizeof w, base + 20000);
  ck_assert_uint_eq(simple_write(&t, 1, base + 20000, w, sizeof w), 0);
  req_send(&t, 0, NBD_CMD_READ, 2, base, 64 * KIB, NULL);
  while (!done) {
    uint64_t off;
    uint32_t len;

    chunk_read(&t, &ch);
    ck_assert_uint_eq(ch.cookie, 2);
    ck_assert_uint_ge(ch.len, 12);
    off = wire_get64(ch.data);
    if (ch.type == NBD_REPLY_TYPE_OFFSET_DATA) {
      len = ch.len - 8;
    } else {
      ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_OFFSET_HOLE);
      ck_assert_uint_eq(ch.len, 12);
      len = wire_get32(ch.data + 8);
    }
    ck_assert_uint_gt(len, 0);
    ck_assert_uint_ge(off, base);
    ck_assert_uint_le(off - base + len, 64 * KIB);
    for (i = 0; i < len; i++) {
      ck_assert_msg(!seen[off - base + i], "byte %llu sent twice",
                    (unsigned long long)(off + i));
      seen[off - base + i] = 1;
      got[off - base + i] = ch.type == NBD_REPLY_TYPE_OFFSET_DATA ?
                            ch.data[8 + i] : 0;
    }
    covered += len;
    done = ch.flags & NBD_REPLY_FLAG_DONE;
    free(ch.data);
  }
  ck_assert_uint_eq(covered, 64 * KIB);
  ck_assert(is_zero(got, 20000));
  ck_assert(memcmp(got + 20000, w, sizeof w) == 0);
  ck_assert(is_zero(got + 30000, 64 * KIB - 30000));
  free(got);
  free(seen);
  tc_end(&t);
}
END_TEST

START_TEST(test_structured_read_past_end_error_chunk)
{
  struct tc t;

  tc_connect(&t, "", 1, 0);
  req_send(&t, 0, NBD_CMD_READ, 5, DISK_SIZE - 512, 1024, NULL);
  ck_assert_uint_eq(chunk_error(&t, 5), NBD_EINVAL);
  tc_end(&t);
}
END_TEST

START_TEST(test_write_to_readonly_export_eperm)
{
  struct tc t;
  unsigned char w[512], r[512];

  tc_connect(&t, "ro", 0, 0);
  pattern(w, sizeof w, 0);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, sizeof w), NBD_EPERM);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_TRIM, 2, 0, 4096), NBD_EPERM);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_WRITE_ZEROES, 3, 0, 4096),
                    NBD_EPERM);
  /* The payload was skipped and nothing was written. */
  ck_assert_uint_eq(simple_read(&t, 4, 0, r, sizeof r), 0);
  ck_assert(is_zero(r, sizeof r));
  tc_end(&t);
}
END_TEST

START_TEST(test_bad_request_magic_closes)
{
  struct tc t;
  unsigned char h[28];

  tc_connect(&t, "", 0, 0);
  memset(h, 0, sizeof h);
  wire_put32(h, 0x25609514);
  wire_put32(h + 24, 512);
  cl_send(&t, h, sizeof h);
  cl_expect_eof(&t);
  tc_end(&t);
}
END_TEST

START_TEST(test_disc_closes_after_earlier_replies)
{
  struct tc t;
  unsigned char w[8192], r[4096];
  int seen[2] = { 0, 0 }, i;

  tc_connect(&t, "", 0, 0);
  pattern(w, sizeof w, 4096);
  ck_assert_uint_eq(simple_write(&t, 1, 4096, w, sizeof w), 0);
  /* Two reads and DISC in one go, before reading anything: both reads
   * are answered (in any order), then the server closes, and DISC itself
   * gets no reply. */
  req_send(&t, 0, NBD_CMD_READ, 2, 4096, 4096, NULL);
  req_send(&t, 0, NBD_CMD_READ, 3, 8192, 4096, NULL);
  req_send(&t, 0, NBD_CMD_DISC, 4, 0, 0, NULL);
  for (i = 0; i < 2; i++) {
    unsigned char h[16];
    uint64_t cookie;

    cl_read(&t, h, sizeof h);
    ck_assert_uint_eq(wire_get32(h), NBD_SIMPLE_REPLY_MAGIC);
    ck_assert_uint_eq(wire_get32(h + 4), 0);
    cookie = wire_get64(h + 8);
    ck_assert_msg(cookie == 2 || cookie == 3, "reply with cookie %llu",
                  (unsigned long long)cookie);
    ck_assert(!seen[cookie - 2]);
    seen[cookie - 2] = 1;
    cl_read(&t, r, sizeof r);
    ck_assert(memcmp(r, w + (cookie - 2) * 4096, 4096) == 0);
  }
  cl_expect_eof(&t);
  tc_end(&t);
}
END_TEST

#define NPIPE 64

START_TEST(test_pipelined_reads_matched_by_cookie)
{
  struct tc t;
  unsigned char *w = xmalloc(NPIPE * 4096), r[4096];
  unsigned char reqs[NPIPE][28];
  int seen[NPIPE];
  unsigned i;

  memset(seen, 0, sizeof seen);
  tc_connect(&t, "", 0, 0);
  pattern(w, NPIPE * 4096, 0);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, NPIPE * 4096), 0);
  /* Offsets in a scrambled order, cookies unrelated to the order. */
  for (i = 0; i < NPIPE; i++) {
    uint64_t block = (i * 37) % NPIPE;
    wire_put32(reqs[i], NBD_REQUEST_MAGIC);
    wire_put16(reqs[i] + 4, 0);
    wire_put16(reqs[i] + 6, NBD_CMD_READ);
    wire_put64(reqs[i] + 8, UINT64_C(0xC00C1E0000000000) | block);
    wire_put64(reqs[i] + 16, block * 4096);
    wire_put32(reqs[i] + 24, 4096);
  }
  cl_send(&t, reqs, sizeof reqs);
  for (i = 0; i < NPIPE; i++) {
    unsigned char h[16];
    uint64_t cookie, block;

    cl_read(&t, h, sizeof h);
    ck_assert_uint_eq(wire_get32(h), NBD_SIMPLE_REPLY_MAGIC);
    ck_assert_uint_eq(wire_get32(h + 4), 0);
    cookie = wire_get64(h + 8);
    ck_assert_msg(cookie >> 40 == UINT64_C(0xC00C1E),
                  "unknown cookie %#llx", (unsigned long long)cookie);
    block = cookie & 0xffffffffff;
    ck_assert_uint_lt(block, NPIPE);
    ck_assert_msg(!seen[block], "two replies for cookie %#llx",
                  (unsigned long long)cookie);
    seen[block] = 1;
    cl_read(&t, r, sizeof r);
    ck_assert_msg(memcmp(r, w + block * 4096, 4096) == 0,
                  "data of cookie %#llx is not block %llu",
                  (unsigned long long)cookie, (unsigned long long)block);
  }
  free(w);
  tc_end(&t);
}
END_TEST

/* ---- coalescing (conn_coalesce) --------------------------------------------- */

#define COAL_BLOCKS 256
#define COAL_DEPTH  32

/* Request i of a trickling client: the first pass over the blocks writes
 * them, the next reads them back, and so on; each write fills its block
 * with a pattern of (block, pass). */
static void
coal_send(struct tc *t, unsigned i, unsigned char *buf)
{
  unsigned block = i % COAL_BLOCKS, pass = i / COAL_BLOCKS;

  if (pass % 2 == 0) {
    pattern(buf, 4096, (uint64_t)pass << 32 | block);
    req_send(t, 0, NBD_CMD_WRITE, i, (uint64_t)block * 4096, 4096, buf);
  } else
    req_send(t, 0, NBD_CMD_READ, i, (uint64_t)block * 4096, 4096, NULL);
}

/* Reads one reply and checks it; returns its request's index. */
static unsigned
coal_reply(struct tc *t, unsigned char *done)
{
  unsigned char h[16], buf[4096], want[4096];
  unsigned i, block, pass;

  cl_read(t, h, sizeof h);
  ck_assert_uint_eq(wire_get32(h), NBD_SIMPLE_REPLY_MAGIC);
  ck_assert_uint_eq(wire_get32(h + 4), 0);
  ck_assert_uint_lt(wire_get64(h + 8), 16 * COAL_BLOCKS);
  i = (unsigned)wire_get64(h + 8);
  ck_assert_msg(!done[i], "two replies for request %u", i);
  done[i] = 1;
  block = i % COAL_BLOCKS;
  pass = i / COAL_BLOCKS;
  if (pass % 2 == 1) {
    cl_read(t, buf, sizeof buf);
    pattern(want, sizeof want, (uint64_t)(pass - 1) << 32 | block);
    ck_assert_msg(memcmp(buf, want, sizeof buf) == 0,
                  "request %u read block %u without pass %u's data", i,
                  block, pass - 1);
  }
  return i;
}

/* Ends the connection as tc_end does and returns its gathering counts,
 * read once its thread has ended. */
static void
coal_end(struct tc *t, unsigned long *tries, unsigned long *batches)
{
  close(t->fd);
  ck_assert_int_eq(pthread_join(t->tid, NULL), 0);
  *tries = t->c->coal_tries;
  *batches = t->c->coal_batches;
  conn_free(t->c);
  t->c = NULL;
}

/* A client like fio at queue depth 32: 32 requests in flight, and a new
 * one sent for every reply taken.  Every reply matches its request, reads
 * see the writes before them, and the server did gather requests.  The
 * longest gathering (1 ms, slices of 250 us) lets a client slowed down by
 * a sanitizer still send 6 requests within a slice. */
START_TEST(test_coalesce_trickling_client_gathered_and_correct)
{
  const unsigned total = 16 * COAL_BLOCKS;
  unsigned char *done = calloc(total, 1), buf[4096];
  unsigned sent = 0, got = 0;
  unsigned long tries, batches;
  struct tc t;

  ck_assert_ptr_nonnull(done);
  cfg.coalesce = (uint64_t)CONFIG_MAX_COALESCE_US * 1000;
  tc_connect(&t, "", 0, 0);
  while (got < total) {
    while (sent < total && sent - got < COAL_DEPTH) {
      /* A read waits for the write of its block a pass before. */
      while (sent >= COAL_BLOCKS && !done[sent - COAL_BLOCKS]) {
        coal_reply(&t, done);
        got++;
      }
      coal_send(&t, sent++, buf);
    }
    coal_reply(&t, done);
    got++;
  }
  coal_end(&t, &tries, &batches);
  ck_assert_uint_gt(batches, 0);
  free(done);
}
END_TEST

/* One request at a time: a gathering never finds enough, and the tries
 * back off (1, 2, 4 ... 1024 waits apart), so qd 1 almost never sleeps. */
START_TEST(test_coalesce_qd1_client_backs_off)
{
  unsigned char buf[4096];
  unsigned long tries, batches;
  unsigned i;
  struct tc t;

  tc_connect(&t, "", 0, 0);
  for (i = 0; i < 2000; i++)
    ck_assert_uint_eq(simple_read(&t, i, (uint64_t)(i % 256) * 4096, buf,
                                  sizeof buf), 0);
  coal_end(&t, &tries, &batches);
  ck_assert_uint_eq(batches, 0);
  ck_assert_uint_le(tries, 12);
}
END_TEST

/* Bursts of 8 that the client then waits for: each burst is answered
 * whole (a gathering that finds nothing more stops), 200 times. */
START_TEST(test_coalesce_bursts_answered)
{
  unsigned char *done = calloc(200 * 8, 1), buf[4096];
  unsigned round, k;
  struct tc t;

  ck_assert_ptr_nonnull(done);
  tc_connect(&t, "", 0, 0);
  for (round = 0; round < 200; round++) {
    for (k = 0; k < 8; k++)
      req_send(&t, 0, NBD_CMD_READ, round * 8 + k, k * 4096, 4096, NULL);
    for (k = 0; k < 8; k++) {
      unsigned char h[16];
      uint64_t cookie;

      cl_read(&t, h, sizeof h);
      ck_assert_uint_eq(wire_get32(h + 4), 0);
      cookie = wire_get64(h + 8);
      ck_assert_uint_lt(cookie, 200 * 8);
      ck_assert_uint_eq(cookie / 8, round);
      ck_assert(!done[cookie]);
      done[cookie] = 1;
      cl_read(&t, buf, sizeof buf);
    }
  }
  tc_end(&t);
  free(done);
}
END_TEST

/* The client sends requests and then closes its sending side while the
 * server may be gathering: every request is answered, then the server
 * closes. */
START_TEST(test_coalesce_client_eof_after_requests)
{
  unsigned char buf[4096];
  unsigned k, round;

  for (round = 0; round < 20; round++) {
    struct tc t;

    tc_connect(&t, "", 0, 0);
    /* Some requests first, so that gathering is on. */
    for (k = 0; k < 64; k++)
      req_send(&t, 0, NBD_CMD_READ, k, 0, 4096, NULL);
    for (k = 0; k < 64; k++) {
      ck_assert_uint_eq(simple_reply(&t, k), 0);
      cl_read(&t, buf, sizeof buf);
    }
    for (k = 0; k < 7; k++)
      req_send(&t, 0, NBD_CMD_READ, 100 + k, 0, 4096, NULL);
    ck_assert_int_eq(shutdown(t.fd, SHUT_WR), 0);
    for (k = 0; k < 7; k++) {
      ck_assert_uint_eq(simple_reply(&t, 100 + k), 0);
      cl_read(&t, buf, sizeof buf);
    }
    cl_expect_eof(&t);
    tc_end(&t);
  }
}
END_TEST

/* ---- suite ------------------------------------------------------------------ */

/* The transmission tests, run once inline on the reader and once with
 * every request on the worker pool (inline = no). */
static void
add_transmission_tests(TCase *tc)
{
  tcase_add_test(tc, test_simple_read_returns_written_data);
  tcase_add_test(tc, test_write_read_round_trip_unaligned);
  tcase_add_test(tc, test_read_past_end_einval);
  tcase_add_test(tc, test_write_past_end_enospc);
  tcase_add_test(tc, test_trim_past_end_einval);
  tcase_add_test(tc, test_read_zero_length_einval);
  tcase_add_test(tc, test_read_over_max_payload_einval_and_continues);
  tcase_add_test(tc, test_unknown_command_einval_and_continues);
  tcase_add_test(tc, test_read_unknown_flag_einval);
  tcase_add_test(tc, test_write_zeroes_fast_zero_succeeds);
  tcase_add_test(tc, test_block_status_without_meta_context_einval);
  tcase_add_test(tc, test_block_status_base_allocation_descriptors);
  tcase_add_test(tc, test_block_status_req_one_single_descriptor);
  tcase_add_test(tc, test_write_over_max_payload_einval_payload_skipped);
  tcase_add_test(tc, test_write_far_over_max_payload_closes);
  tcase_add_test(tc, test_block_status_meta_context_of_other_export_go);
  tcase_add_test(tc,
                 test_block_status_meta_context_of_other_export_export_name);
  tcase_add_test(tc, test_structured_read_unwritten_is_hole_chunk);
  tcase_add_test(tc, test_structured_read_df_is_one_data_chunk);
  tcase_add_test(tc, test_structured_read_hole_found_again_after_data_streak);
  tcase_add_test(tc, test_structured_read_chunks_reassemble_data);
  tcase_add_test(tc, test_structured_read_past_end_error_chunk);
  tcase_add_test(tc, test_write_to_readonly_export_eperm);
  tcase_add_test(tc, test_bad_request_magic_closes);
  tcase_add_test(tc, test_disc_closes_after_earlier_replies);
  tcase_add_test(tc, test_pipelined_reads_matched_by_cookie);
}

/* ---- inline or workers: a backend that only rarely blocks ------------------ */

/* "slowpoke": a read-only 1 MiB disk of zeros, NBD_RARELY_BLOCKS, whose
 * reads take SLOW_MS either asleep (as a disk read would) or busy (as a
 * thread that keeps losing its CPU would look).  It records how many reads
 * ran at once: more than one means the connection moved to workers. */
#define SLOW_MS 20
static int slow_sleeps, slow_fast;
/* The thread of the first read, and whether a read ran on another one
 * (the reads of an inline connection all run on its reader). */
static pthread_t slow_first_thread;
static int slow_have_first, slow_other_thread;
static int slow_active, slow_max_active;

static int
slowpoke_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
               uint32_t count, uint64_t offset, uint32_t flags)
{
  int now = __atomic_add_fetch(&slow_active, 1, __ATOMIC_SEQ_CST);
  int max = __atomic_load_n(&slow_max_active, __ATOMIC_SEQ_CST);
  struct timespec ts = { 0, SLOW_MS * 1000000L }, t0, t1;

  while (now > max &&
         !__atomic_compare_exchange_n(&slow_max_active, &max, now, 0,
                                      __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
    ;
  if (__atomic_exchange_n(&slow_have_first, 1, __ATOMIC_SEQ_CST) == 0)
    __atomic_store_n(&slow_first_thread, pthread_self(), __ATOMIC_SEQ_CST);
  else if (!pthread_equal(__atomic_load_n(&slow_first_thread,
                                          __ATOMIC_SEQ_CST), pthread_self()))
    __atomic_store_n(&slow_other_thread, 1, __ATOMIC_SEQ_CST);
  if (slow_fast)
    ;                           /* as quick as a read can be */
  else if (slow_sleeps)
    nanosleep(&ts, NULL);
  else {
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do
      clock_gettime(CLOCK_MONOTONIC, &t1);
    while ((t1.tv_sec - t0.tv_sec) * 1000000000L +
           (t1.tv_nsec - t0.tv_nsec) < SLOW_MS * 1000000L);
  }
  memset(buf, 0, count);
  __atomic_sub_fetch(&slow_active, 1, __ATOMIC_SEQ_CST);
  return 0;
}

static int64_t
slowpoke_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 1 << 20;
}

UNSUPPORTED(slowpoke, pwrite)
UNSUPPORTED(slowpoke, flush)
UNSUPPORTED(slowpoke, trim)
UNSUPPORTED(slowpoke, zero)
UNSUPPORTED(slowpoke, extents)
UNSUPPORTED(slowpoke, cache)
UNSUPPORTED(slowpoke, block_size)
UNSUPPORTED(slowpoke, can_write)
UNSUPPORTED(slowpoke, can_flush)
UNSUPPORTED(slowpoke, can_trim)
UNSUPPORTED(slowpoke, can_zero)
UNSUPPORTED(slowpoke, can_fast_zero)
UNSUPPORTED(slowpoke, can_fua)
UNSUPPORTED(slowpoke, can_cache)
UNSUPPORTED(slowpoke, can_extents)
UNSUPPORTED(slowpoke, can_multi_conn)
UNSUPPORTED(slowpoke, is_rotational)

static const struct nbd_layer_ops slowpoke_ops = {
  .name = "slowpoke",
  .description = "test-only disk whose reads take 20 ms",
  .kind = NBD_LAYER_BACKEND,
  .thread_model = NBD_PARALLEL,
  .nonblocking = NBD_RARELY_BLOCKS,
  NBD_REQUIRED_METHODS(slowpoke)
};

/* The default export served by one test-only backend. */
static void
setup_config_backend(const struct nbd_layer_ops *ops)
{
  struct nbd_layer *l;
  char err[256] = "";

  config_defaults(&cfg);
  cfg.threads = 16;
  cfg.handshake_timeout = UINT64_C(5) * 1000000000;
  l = engine_layer_new(ops, "");
  ck_assert_ptr_nonnull(l);
  cfg.exports = engine_export_new("");
  ck_assert_ptr_nonnull(cfg.exports);
  engine_export_push(cfg.exports, l);
  ck_assert_msg(engine_export_finish(cfg.exports, err, sizeof err) == 0,
                "finish: %s", err);
}

static void
setup_config_slow(void)
{
  setup_config_backend(&slowpoke_ops);
  slow_active = slow_max_active = 0;
  slow_sleeps = slow_fast = 0;
  slow_have_first = slow_other_thread = 0;
}

/* Sends n reads at once, then reads the n replies (in any order). */
static void
slow_reads(struct tc *t, unsigned n)
{
  unsigned char h[16], d[512];
  unsigned i;

  for (i = 0; i < n; i++)
    req_send(t, 0, NBD_CMD_READ, i, (uint64_t)i * 512, 512, NULL);
  for (i = 0; i < n; i++) {
    cl_read(t, h, sizeof h);
    ck_assert_uint_eq(wire_get32(h), NBD_SIMPLE_REPLY_MAGIC);
    ck_assert_uint_eq(wire_get32(h + 4), 0);
    cl_read(t, d, sizeof d);
  }
}

START_TEST(test_rarely_blocking_layer_that_sleeps_moves_to_workers)
{
  struct tc t;

  slow_sleeps = 1;
  tc_connect(&t, "", 0, 0);
  slow_reads(&t, 8);            /* inline: slow and asleep, 5 are enough */
  slow_reads(&t, 8);            /* now on workers, concurrently */
  ck_assert_msg(slow_max_active >= 2, "reads never overlapped (max %d): "
                "still inline after 8 reads that slept %d ms each",
                slow_max_active, SLOW_MS);
  tc_end(&t);
}
END_TEST

START_TEST(test_rarely_blocking_layer_slow_on_cpu_stays_inline)
{
  struct tc t;

  slow_sleeps = 0;
  tc_connect(&t, "", 0, 0);
  slow_reads(&t, 8);            /* slow, but never asleep */
  slow_reads(&t, 8);
  ck_assert_msg(slow_max_active == 1, "%d reads overlapped: moved to "
                "workers though the layer never slept", slow_max_active);
  tc_end(&t);
}
END_TEST

/* ---- the flush at close ---------------------------------------------------- */

/* "slowflush": a writable 1 MiB disk (writes are dropped, reads are zeros)
 * whose flush sleeps FLUSH_MS and then counts itself as done.  It shows
 * whether the close-time flush ran, and whether the client had to wait
 * for it. */
#define FLUSH_MS 300
static int flushes_started, flushes_done;

static int
slowflush_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
                uint32_t count, uint64_t offset, uint32_t flags)
{
  memset(buf, 0, count);
  return 0;
}

static int
slowflush_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags)
{
  return 0;
}

static int
slowflush_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  struct timespec ts = { 0, FLUSH_MS * 1000000L };

  __atomic_add_fetch(&flushes_started, 1, __ATOMIC_SEQ_CST);
  nanosleep(&ts, NULL);
  __atomic_add_fetch(&flushes_done, 1, __ATOMIC_SEQ_CST);
  return 0;
}

static int64_t
slowflush_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 1 << 20;
}

static int
slowflush_can_write(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 1;
}

static int
slowflush_can_flush(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 1;
}

UNSUPPORTED(slowflush, trim)
UNSUPPORTED(slowflush, zero)
UNSUPPORTED(slowflush, extents)
UNSUPPORTED(slowflush, cache)
UNSUPPORTED(slowflush, block_size)
UNSUPPORTED(slowflush, can_trim)
UNSUPPORTED(slowflush, can_zero)
UNSUPPORTED(slowflush, can_fast_zero)
UNSUPPORTED(slowflush, can_fua)
UNSUPPORTED(slowflush, can_cache)
UNSUPPORTED(slowflush, can_extents)
UNSUPPORTED(slowflush, can_multi_conn)
UNSUPPORTED(slowflush, is_rotational)

static const struct nbd_layer_ops slowflush_ops = {
  .name = "slowflush",
  .description = "test-only disk whose flush takes 300 ms",
  .kind = NBD_LAYER_BACKEND,
  .thread_model = NBD_PARALLEL,
  .nonblocking = NBD_NEVER_BLOCKS,
  NBD_REQUIRED_METHODS(slowflush)
};

static void
setup_config_slowflush(void)
{
  setup_config_backend(&slowflush_ops);
  flushes_started = flushes_done = 0;
}

/* ---- write payloads that are not kept (null, refused writes) -------------- */

static void
setup_config_null(void)
{
  const struct nbd_layer_ops *ops = registry_find(NBD_LAYER_BACKEND, "null");
  struct nbd_layer *l;
  char err[256] = "";

  ck_assert_msg(ops != NULL, "the null backend is not compiled in");
  setup_config_backend(ops);
  l = cfg.exports->top;
  ck_assert_msg(params_set(l, "size", "1M", err, sizeof err) == 0, "%s",
                err);
  ck_assert_msg(engine_layer_setup(l, err, sizeof err) == 0, "%s", err);
}

/* Payloads that are read and dropped (null's writes, a refused write past
 * the end), large, odd-sized and small, all keep the stream in step. */
START_TEST(test_null_drops_payloads_and_stays_in_step)
{
  const uint32_t big = 3 * MIB + 100;
  unsigned char *w = xmalloc(big), r[4096];
  struct tc t;

  tc_connect(&t, "", 0, 0);
  memset(w, 0x5a, big);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, MIB), 0);
  ck_assert_uint_eq(simple_write(&t, 6, 0, w, big), NBD_ENOSPC);
  ck_assert_uint_eq(simple_write(&t, 2, 4096, w, 64 * 1024), 0);
  ck_assert_uint_eq(simple_write(&t, 3, 0, w, 100), 0);
  ck_assert_uint_eq(simple_write(&t, 4, 8192, w, 70001), 0);
  ck_assert_uint_eq(simple_read(&t, 5, 0, r, sizeof r), 0);
  ck_assert(is_zero(r, sizeof r));
  tc_end(&t);
  free(w);
}
END_TEST

/* The client goes away in the middle of a write's payload: the
 * connection ends, it does not wait or spin. */
START_TEST(test_null_client_gone_mid_payload_ends_connection)
{
  unsigned char *w = xmalloc(300 * 1024);
  struct tc t;

  tc_connect(&t, "", 0, 0);
  memset(w, 0x5a, 300 * 1024);
  req_send(&t, 0, NBD_CMD_WRITE, 1, 0, 1 * MIB, NULL);
  cl_send(&t, w, 300 * 1024);
  shutdown(t.fd, SHUT_WR);
  cl_expect_eof(&t);
  tc_end(&t);
  free(w);
}
END_TEST

START_TEST(test_close_after_write_flushes_after_the_client_saw_eof)
{
  unsigned char w[4096];
  struct tc t;

  tc_connect(&t, "", 0, 0);
  memset(w, 0x5a, sizeof w);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, sizeof w), 0);
  req_send(&t, 0, NBD_CMD_DISC, 2, 0, 0, NULL);
  cl_expect_eof(&t);
  /* The socket is shut before the flush starts, so the client is free
   * FLUSH_MS before the flush ends. */
  ck_assert_msg(__atomic_load_n(&flushes_done, __ATOMIC_SEQ_CST) == 0,
                "the client saw EOF only after the close-time flush");
  tc_end(&t);
  ck_assert_int_eq(flushes_started, 1);
  ck_assert_int_eq(flushes_done, 1);
}
END_TEST

START_TEST(test_close_after_reads_only_does_not_flush)
{
  unsigned char r[4096];
  struct tc t;

  tc_connect(&t, "", 0, 0);
  ck_assert_uint_eq(simple_read(&t, 1, 0, r, sizeof r), 0);
  ck_assert_uint_eq(simple_read(&t, 2, 8192, r, sizeof r), 0);
  req_send(&t, 0, NBD_CMD_DISC, 3, 0, 0, NULL);
  cl_expect_eof(&t);
  tc_end(&t);
  ck_assert_int_eq(flushes_started, 0);
}
END_TEST

START_TEST(test_client_gone_without_disc_after_write_flushes)
{
  unsigned char w[512];
  struct tc t;

  tc_connect(&t, "", 0, 0);
  memset(w, 0xa5, sizeof w);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, sizeof w), 0);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_FLUSH, 2, 0, 0), 0);
  ck_assert_int_eq(flushes_done, 1);
  ck_assert_uint_eq(simple_write(&t, 3, 512, w, sizeof w), 0);
  close(t.fd);                  /* no DISC: the client just goes away */
  ck_assert_int_eq(pthread_join(t.tid, NULL), 0);
  conn_free(t.c);
  ck_assert_int_eq(flushes_done, 2);
}
END_TEST

/* A client that reads its replies slowly makes the server's sends wait,
 * asleep, for over 1 ms each; that is not the layer blocking, and must not
 * move the connection to workers. */
START_TEST(test_rarely_blocking_layer_with_slow_client_stays_inline)
{
  struct timespec ts = { 0, 3 * 1000000L };
  unsigned char h[16];
  unsigned char *d = xmalloc(1 << 20);
  struct tc t;
  unsigned i;

  slow_fast = 1;
  tc_connect(&t, "", 0, 0);
  for (i = 0; i < 64; i++)
    req_send(&t, 0, NBD_CMD_READ, i, 0, 1 << 20, NULL);
  for (i = 0; i < 64; i++) {
    nanosleep(&ts, NULL);
    cl_read(&t, h, sizeof h);
    ck_assert_uint_eq(wire_get32(h), NBD_SIMPLE_REPLY_MAGIC);
    ck_assert_uint_eq(wire_get32(h + 4), 0);
    cl_read(&t, d, 1 << 20);
  }
  ck_assert_msg(!__atomic_load_n(&slow_other_thread, __ATOMIC_SEQ_CST),
                "moved to workers because the client read slowly");
  free(d);
  tc_end(&t);
}
END_TEST

static Suite *
protocol_suite(void)
{
  Suite *s = suite_create("protocol");
  TCase *tc;

  tc = tcase_create("handshake");
  tcase_add_checked_fixture(tc, setup_config, teardown_config);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_greeting_magic_and_flags);
  tcase_add_test(tc, test_unknown_client_flag_drops_connection);
  tcase_add_test(tc, test_unknown_option_unsup_then_go_works);
  tcase_add_test(tc, test_list_returns_both_exports_then_ack);
  tcase_add_test(tc, test_list_with_data_invalid_and_stays_in_sync);
  tcase_add_test(tc, test_abort_acked_then_closed);
  tcase_add_test(tc, test_starttls_refused_and_session_continues);
  tcase_add_test(tc, test_info_unknown_export_err_unknown);
  tcase_add_test(tc, test_go_unknown_export_err_unknown);
  tcase_add_test(tc, test_go_nrinfos_beyond_length_invalid_and_in_sync);
  tcase_add_test(tc, test_go_extra_bytes_invalid_and_in_sync);
  tcase_add_test(tc, test_go_name_longer_than_option_invalid);
  tcase_add_test(tc, test_go_memory_size_and_exact_flags);
  tcase_add_test(tc, test_go_memory_structured_adds_df);
  tcase_add_test(tc, test_go_readonly_export_flags);
  tcase_add_test(tc, test_go_block_size_when_requested);
  tcase_add_test(tc, test_go_description_when_requested);
  tcase_add_test(tc, test_go_name_when_requested);
  tcase_add_test(tc, test_set_meta_context_before_structured_invalid);
  tcase_add_test(tc, test_go_unknown_info_request_ignored);
  tcase_add_test(tc, test_set_meta_context_base_allocation);
  tcase_add_test(tc, test_export_name_without_no_zeroes_pads_124);
  tcase_add_test(tc, test_export_name_with_no_zeroes_sends_10);
  tcase_add_test(tc, test_export_name_unknown_drops_connection);
  suite_add_tcase(s, tc);

  tc = tcase_create("transmission");
  tcase_add_checked_fixture(tc, setup_config, teardown_config);
  tcase_set_timeout(tc, 30);
  add_transmission_tests(tc);
  suite_add_tcase(s, tc);

  tc = tcase_create("transmission on workers");
  tcase_add_checked_fixture(tc, setup_config_workers, teardown_config);
  tcase_set_timeout(tc, 30);
  add_transmission_tests(tc);
  suite_add_tcase(s, tc);

  tc = tcase_create("inline or workers");
  tcase_add_checked_fixture(tc, setup_config_slow, teardown_config);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_rarely_blocking_layer_that_sleeps_moves_to_workers);
  tcase_add_test(tc, test_rarely_blocking_layer_slow_on_cpu_stays_inline);
  tcase_add_test(tc, test_rarely_blocking_layer_with_slow_client_stays_inline);
  suite_add_tcase(s, tc);

  tc = tcase_create("payloads not kept");
  tcase_add_checked_fixture(tc, setup_config_null, teardown_config);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_null_drops_payloads_and_stays_in_step);
  tcase_add_test(tc, test_null_client_gone_mid_payload_ends_connection);
  suite_add_tcase(s, tc);

  tc = tcase_create("coalescing");
  tcase_add_checked_fixture(tc, setup_config, teardown_config);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_coalesce_trickling_client_gathered_and_correct);
  tcase_add_test(tc, test_coalesce_qd1_client_backs_off);
  tcase_add_test(tc, test_coalesce_bursts_answered);
  tcase_add_test(tc, test_coalesce_client_eof_after_requests);
  suite_add_tcase(s, tc);

  tc = tcase_create("flush at close");
  tcase_add_checked_fixture(tc, setup_config_slowflush, teardown_config);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_close_after_write_flushes_after_the_client_saw_eof);
  tcase_add_test(tc, test_close_after_reads_only_does_not_flush);
  tcase_add_test(tc, test_client_gone_without_disc_after_write_flushes);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(protocol_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
