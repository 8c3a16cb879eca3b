/* The in-process NBD client and server of check_handshake and
 * check_transmission (see protolib.h): the per-test config, one
 * connection over a socketpair, a blocking client for the handshake and
 * for transmission, and the test-only backends slowpoke and slowflush.
 *
 * It asserts nothing about the server beyond what every test needs (magic
 * numbers, cookies, lengths that fit); the tests assert the rest.
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

#include "protolib.h"

/* ---- the config ---------------------------------------------------------- */

struct nbd_config cfg;

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

void
setup_config(void)
{
  config_defaults(&cfg);
  cfg.threads = 16;
  cfg.handshake_timeout = UINT64_C(5) * 1000000000;
  cfg.exports = make_export("", 0, NULL);
  cfg.exports->next = make_export("ro", 1, "read only");
}

void
setup_config_workers(void)
{
  setup_config();
  cfg.inline_requests = 0;
}

/* The default export served by one test-only backend. */
struct nbd_layer *
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
  return l;
}

void
teardown_config(void)
{
  config_free(&cfg);
}

/* ---- one connection ------------------------------------------------------- */

/* The connection thread: as server_conn_thread, the server's end is
 * closed as soon as conn_run returns, so the client sees EOF then. */
static void *
server_thread(void *arg)
{
  struct nbd_conn *c = arg;

  conn_run(c);
  close(c->w.fd);
  return NULL;
}

void
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
void
tc_end(struct tc *t)
{
  struct nbd_conn *c = t->c;

  close(t->fd);
  ck_assert_int_eq(pthread_join(t->tid, NULL), 0);
  conn_free(c);
  t->c = NULL;
}

/* ---- client I/O ------------------------------------------------------------ */

void
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
int
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

void
cl_read(struct tc *t, void *buf, size_t len)
{
  ck_assert_msg(cl_recv(t, buf, len) == 0,
                "client: could not read %zu bytes: %s", len,
                errno ? strerror(errno) : "EOF");
}

/* The server must have closed its end: the next read is EOF (or a reset,
 * when it closed with our bytes unread), not data and not a timeout. */
void
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

int
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
void
pattern(unsigned char *p, size_t len, uint64_t off)
{
  size_t i;

  for (i = 0; i < len; i++)
    p[i] = (unsigned char)((off + i) * 131 % 251 + 1);
}

unsigned char *
xmalloc(size_t len)
{
  unsigned char *p = malloc(len ? len : 1);

  ck_assert_ptr_nonnull(p);
  return p;
}

/* ---- handshake client ------------------------------------------------------ */

/* Reads the greeting, checks it, and answers with the client flags. */
void
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

void
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

void
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
void
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

/* Sends INFO or GO and reads every reply up to the ACK or an error. */
void
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
uint16_t
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

void
hs_structured(struct tc *t)
{
  struct rep r;

  opt_send(t, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
  rep_expect(t, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &r);
  ck_assert_uint_eq(r.len, 0);
}

/* SET_META_CONTEXT data: export name, one query. */
uint32_t
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
void
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
uint16_t
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

void
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
uint32_t
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
uint32_t
simple_cmd(struct tc *t, uint16_t flags, uint16_t type, uint64_t cookie,
           uint64_t offset, uint32_t count)
{
  req_send(t, flags, type, cookie, offset, count, NULL);
  return simple_reply(t, cookie);
}

uint32_t
simple_write(struct tc *t, uint64_t cookie, uint64_t offset,
             const void *buf, uint32_t count)
{
  req_send(t, 0, NBD_CMD_WRITE, cookie, offset, count, buf);
  return simple_reply(t, cookie);
}

/* A READ with simple replies; on success the data is in buf. */
uint32_t
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

void
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
uint32_t
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

/* ---- slowpoke: a backend that only rarely blocks ---------------------------- */

int slow_sleeps, slow_fast;
pthread_t slow_first_thread;
int slow_have_first, slow_other_thread;
int slow_active, slow_max_active;

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

UNSUPPORTED(slowpoke, reopen)
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
UNSUPPORTED(slowpoke, depth)
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
UNSUPPORTED(slowpoke, list_exports)
UNSUPPORTED(slowpoke, preconnect)

static const struct nbd_layer_ops slowpoke_ops = {
  .name = "slowpoke",
  .description = "test-only disk whose reads take 20 ms",
  .kind = NBD_LAYER_BACKEND,
  .thread_model = NBD_PARALLEL,
  .nonblocking = NBD_RARELY_BLOCKS,
  NBD_REQUIRED_METHODS(slowpoke)
};

void
setup_config_slow(void)
{
  setup_config_backend(&slowpoke_ops);
  slow_active = slow_max_active = 0;
  slow_sleeps = slow_fast = 0;
  slow_have_first = slow_other_thread = 0;
}

/* ---- slowflush: a backend whose flush takes a while ------------------------- */

int flushes_started, flushes_done;

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

UNSUPPORTED(slowflush, reopen)
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
UNSUPPORTED(slowflush, depth)
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
UNSUPPORTED(slowflush, list_exports)
UNSUPPORTED(slowflush, preconnect)

static const struct nbd_layer_ops slowflush_ops = {
  .name = "slowflush",
  .description = "test-only disk whose flush takes 300 ms",
  .kind = NBD_LAYER_BACKEND,
  .thread_model = NBD_PARALLEL,
  .nonblocking = NBD_NEVER_BLOCKS,
  NBD_REQUIRED_METHODS(slowflush)
};

/* As a write-back cache: what it acknowledged is flushed at close. */
void
setup_config_slowflush(void)
{
  setup_config_backend(&slowflush_ops)->keeps_writes = 1;
  flushes_started = flushes_done = 0;
}

/* As a file: nothing kept in the process, no flush at close. */
void
setup_config_slowflush_plain(void)
{
  setup_config_backend(&slowflush_ops);
  flushes_started = flushes_done = 0;
}

/* ---- spinwrite: writes that keep a CPU busy ---------------------------------- */

int spin_other_thread;
static pthread_t spin_first_thread;
static int spin_have_first;

static int
spinwrite_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
                uint32_t count, uint64_t offset, uint32_t flags)
{
  memset(buf, 0, count);
  return 0;
}

static int
spinwrite_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags)
{
  struct timespec t0, t1;

  if (__atomic_exchange_n(&spin_have_first, 1, __ATOMIC_SEQ_CST) == 0)
    __atomic_store_n(&spin_first_thread, pthread_self(), __ATOMIC_SEQ_CST);
  else if (!pthread_equal(__atomic_load_n(&spin_first_thread,
                                          __ATOMIC_SEQ_CST), pthread_self()))
    __atomic_store_n(&spin_other_thread, 1, __ATOMIC_SEQ_CST);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do
    clock_gettime(CLOCK_MONOTONIC, &t1);
  while ((t1.tv_sec - t0.tv_sec) * 1000000000L +
         (t1.tv_nsec - t0.tv_nsec) < SPIN_US * 1000L);
  return 0;
}

UNSUPPORTED(spinwrite, reopen)
static int64_t
spinwrite_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 1 << 20;
}

static int
spinwrite_yes(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 1;
}
#define spinwrite_can_write spinwrite_yes

UNSUPPORTED(spinwrite, flush)
UNSUPPORTED(spinwrite, trim)
UNSUPPORTED(spinwrite, zero)
UNSUPPORTED(spinwrite, extents)
UNSUPPORTED(spinwrite, depth)
UNSUPPORTED(spinwrite, cache)
UNSUPPORTED(spinwrite, block_size)
UNSUPPORTED(spinwrite, can_flush)
UNSUPPORTED(spinwrite, can_trim)
UNSUPPORTED(spinwrite, can_zero)
UNSUPPORTED(spinwrite, can_fast_zero)
UNSUPPORTED(spinwrite, can_fua)
UNSUPPORTED(spinwrite, can_cache)
UNSUPPORTED(spinwrite, can_extents)
UNSUPPORTED(spinwrite, can_multi_conn)
UNSUPPORTED(spinwrite, is_rotational)
UNSUPPORTED(spinwrite, list_exports)
UNSUPPORTED(spinwrite, preconnect)

static const struct nbd_layer_ops spinwrite_ops = {
  .name = "spinwrite",
  .description = "test-only disk whose writes keep a CPU busy 60 us",
  .kind = NBD_LAYER_BACKEND,
  .thread_model = NBD_PARALLEL,
  .nonblocking = NBD_RARELY_BLOCKS,
  NBD_REQUIRED_METHODS(spinwrite)
};

static void
setup_config_spinwrite(int serial)
{
  setup_config_backend(&spinwrite_ops)->serial_writes = serial;
  spin_other_thread = spin_have_first = 0;
}

void
setup_config_spinwrite_serial(void)
{
  setup_config_spinwrite(1);
}

void
setup_config_spinwrite_parallel(void)
{
  setup_config_spinwrite(0);
}
