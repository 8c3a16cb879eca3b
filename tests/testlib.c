/* nbdstack unit-test harness: the recording backend, the tracer filter,
 * stack building and log capture (see testlib.h).
 *
 * Both layers build their struct nbd_layer_ops by hand instead of using
 * NBD_REGISTER_*: registering them would put test-only layers into the
 * registry and break the registry self-check.  NBD_REQUIRED_METHODS still
 * fills the method fields, so a method added to methods.def stops this
 * file from compiling until the harness handles it too.
 */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

/* ---- logs ------------------------------------------------------------------ */

struct testlib_buf {
  char *s;
  size_t len, cap;
};

static struct testlib_buf testlib_calls, testlib_life;

/* Filters with threads of their own (readahead, scan) reach the
 * recorder from them: appends are locked; a test reads the log once
 * those threads are done (or counts calls with testlib_calls_of). */
static pthread_mutex_t testlib_buf_lock = PTHREAD_MUTEX_INITIALIZER;

static void
testlib_buf_add(struct testlib_buf *b, const char *fmt, ...)
{
  char entry[256];
  va_list ap;
  size_t n;

  va_start(ap, fmt);
  vsnprintf(entry, sizeof entry, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&testlib_buf_lock);
  n = strlen(entry) + 2;
  if (b->len + n + 1 > b->cap) {
    b->cap = (b->len + n + 1) * 2;
    b->s = realloc(b->s, b->cap);
    ck_assert_ptr_nonnull(b->s);
  }
  b->len += snprintf(b->s + b->len, b->cap - b->len, "%s%s",
                     b->len ? "; " : "", entry);
  pthread_mutex_unlock(&testlib_buf_lock);
}

unsigned
testlib_calls_of(const struct testlib_recorder *rec, enum nbd_method m)
{
  return __atomic_load_n(&rec->calls[m], __ATOMIC_SEQ_CST);
}

static const char *
testlib_buf_str(const struct testlib_buf *b)
{
  return b->s ? b->s : "";
}

const char *testlib_log(void) { return testlib_buf_str(&testlib_calls); }
const char *testlib_lifecycle(void) { return testlib_buf_str(&testlib_life); }

void
testlib_log_clear(void)
{
  pthread_mutex_lock(&testlib_buf_lock);
  testlib_calls.len = 0;
  if (testlib_calls.s)
    testlib_calls.s[0] = '\0';
  pthread_mutex_unlock(&testlib_buf_lock);
}

/* "0", "FUA", "FUA|FAST_ZERO": names make failing asserts readable. */
static const char *
testlib_flags(char *buf, size_t len, uint32_t flags)
{
  static const struct { uint32_t bit; const char *name; } names[] = {
    { NBD_CMD_FLAG_FUA, "FUA" }, { NBD_CMD_FLAG_NO_HOLE, "NO_HOLE" },
    { NBD_CMD_FLAG_DF, "DF" }, { NBD_CMD_FLAG_REQ_ONE, "REQ_ONE" },
    { NBD_CMD_FLAG_FAST_ZERO, "FAST_ZERO" },
  };
  size_t i, n = 0;

  buf[0] = '\0';
  for (i = 0; i < sizeof names / sizeof names[0]; i++)
    if (flags & names[i].bit) {
      n += snprintf(buf + n, len - n, "%s%s", n ? "|" : "", names[i].name);
      flags &= ~names[i].bit;
    }
  if (flags)
    n += snprintf(buf + n, len - n, "%s0x%" PRIx32, n ? "|" : "", flags);
  if (n == 0)
    snprintf(buf, len, "0");
  return buf;
}

/* ---- the recording backend -------------------------------------------------- */

void
testlib_caps_default(struct testlib_caps *caps)
{
  memset(caps, 0, sizeof *caps);
  caps->size = 1 << 20;
  caps->can_write = caps->can_flush = caps->can_trim = 1;
  caps->can_zero = NBD_ZERO_NATIVE;
  caps->can_fast_zero = 1;
  caps->can_fua = NBD_FUA_NATIVE;
  caps->can_cache = NBD_CACHE_NATIVE;
  caps->can_extents = 1;
}

/* Counts the call, and returns the injected failure if any. */
static int
testlib_rec_enter(struct nbd_ctx *self, enum nbd_method m)
{
  struct testlib_recorder *rec = self->layer->state;

  __atomic_fetch_add(&rec->calls[m], 1, __ATOMIC_SEQ_CST);
  return rec->fail[m];
}

/* Logs a ranged request and checks the engine kept it inside the disk. */
static struct testlib_recorder *
testlib_rec_request(struct nbd_ctx *self, const char *what, uint64_t count,
                    uint64_t offset, uint32_t flags)
{
  struct testlib_recorder *rec = self->layer->state;
  char f[64];

  testlib_buf_add(&testlib_calls, "%s %" PRIu64 "+%" PRIu64 " flags=%s",
                  what, offset, count, testlib_flags(f, sizeof f, flags));
  ck_assert_msg(offset <= (uint64_t)rec->caps.size &&
                count <= (uint64_t)rec->caps.size - offset,
                "engine let %s %" PRIu64 "+%" PRIu64 " past the end",
                what, offset, count);
  return rec;
}

/* The part of [offset, offset+count) that is kept in RAM: its length. */
static size_t
testlib_rec_in_ram(const struct testlib_recorder *rec, uint64_t count,
                   uint64_t offset)
{
  if (rec->ram == NULL || offset >= rec->ramlen)
    return 0;
  return count < rec->ramlen - offset ? (size_t)count
                                      : (size_t)(rec->ramlen - offset);
}

static int
testlib_rec_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
                  uint32_t count, uint64_t offset, uint32_t flags)
{
  struct testlib_recorder *rec =
    testlib_rec_request(self, "pread", count, offset, flags);
  int r = testlib_rec_enter(self, NBD_METHOD_PREAD);

  size_t n = testlib_rec_in_ram(rec, count, offset);

  if (r)
    return r;
  if (n)                        /* ram may be NULL: no memcpy of 0 */
    memcpy(buf, rec->ram + offset, n);
  memset((char *)buf + n, 0, count - n);
  return 0;
}

static int
testlib_rec_pwrite(struct nbd_ctx *self, struct nbd_ctx *next,
                   const void *buf, uint32_t count, uint64_t offset,
                   uint32_t flags)
{
  struct testlib_recorder *rec =
    testlib_rec_request(self, "pwrite", count, offset, flags);
  int r = testlib_rec_enter(self, NBD_METHOD_PWRITE);

  size_t n = testlib_rec_in_ram(rec, count, offset);

  if (r)
    return r;
  if (n)
    memcpy(rec->ram + offset, buf, n);
  return 0;
}

static int
testlib_rec_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  char f[64];

  if (flags)
    testlib_buf_add(&testlib_calls, "flush flags=%s",
                    testlib_flags(f, sizeof f, flags));
  else
    testlib_buf_add(&testlib_calls, "flush");
  return testlib_rec_enter(self, NBD_METHOD_FLUSH);
}

/* Trim leaves the data alone: after a trim the contents are unspecified,
 * and keeping them lets a test see that nothing was written. */
static int
testlib_rec_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                 uint64_t offset, uint32_t flags)
{
  testlib_rec_request(self, "trim", count, offset, flags);
  return testlib_rec_enter(self, NBD_METHOD_TRIM);
}

static int
testlib_rec_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                 uint64_t offset, uint32_t flags)
{
  struct testlib_recorder *rec =
    testlib_rec_request(self, "zero", count, offset, flags);
  int r = testlib_rec_enter(self, NBD_METHOD_ZERO);

  size_t n = testlib_rec_in_ram(rec, count, offset);

  if (r)
    return r;
  if (n)
    memset(rec->ram + offset, 0, n);
  return 0;
}

static int
testlib_rec_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                  uint64_t offset, uint32_t flags)
{
  testlib_rec_request(self, "cache", count, offset, flags);
  return testlib_rec_enter(self, NBD_METHOD_CACHE);
}

static int
testlib_rec_extents(struct nbd_ctx *self, struct nbd_ctx *next,
                    uint64_t count, uint64_t offset, uint32_t flags,
                    struct nbd_extents *extents)
{
  struct testlib_recorder *rec =
    testlib_rec_request(self, "extents", count, offset, flags);
  int r = testlib_rec_enter(self, NBD_METHOD_EXTENTS);
  size_t i;

  if (r)
    return r;
  if (rec->nmap == 0)
    r = nbd_extents_add(extents, 0, (uint64_t)rec->caps.size, 0);
  for (i = 0; r == 0 && i < rec->nmap; i++)
    if (rec->map[i].offset < offset + count &&
        rec->map[i].offset + rec->map[i].length > offset)
      r = nbd_extents_add(extents, rec->map[i].offset, rec->map[i].length,
                          rec->map[i].type);
  if (r == 0 && rec->after_extents)
    rec->after_extents(rec, rec->after_extents_arg);
  return r;
}

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define testlib_rec_reopen nbd_reopen_close_open

/* Depth rec->depth everywhere (a recorder standing for a backing chain),
 * or, when it is 0, a backend's answer: NBD_DEPTH_ONE. */
static int
testlib_rec_depth(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                  uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  struct testlib_recorder *rec =
    testlib_rec_request(self, "depth", count, offset, flags);
  int r = testlib_rec_enter(self, NBD_METHOD_DEPTH);

  if (r)
    return r;
  return rec->depth ? nbd_extents_add(extents, offset, count, rec->depth)
                    : NBD_DEPTH_ONE;
}

static int64_t
testlib_rec_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct testlib_recorder *rec = self->layer->state;
  int r = testlib_rec_enter(self, NBD_METHOD_GET_SIZE);

  return r ? r : rec->caps.size;
}

static int
testlib_rec_block_size(struct nbd_ctx *self, struct nbd_ctx *next,
                       uint32_t *minimum, uint32_t *preferred,
                       uint32_t *maximum)
{
  struct testlib_recorder *rec = self->layer->state;
  int r = testlib_rec_enter(self, NBD_METHOD_BLOCK_SIZE);

  if (r)
    return r;
  *minimum = rec->caps.min_block;
  *preferred = rec->caps.pref_block;
  *maximum = rec->caps.max_block;
  return 0;
}

#define TESTLIB_REC_CAP(method, METHOD)                                      \
  static int                                                                 \
  testlib_rec_##method(struct nbd_ctx *self, struct nbd_ctx *next)           \
  {                                                                          \
    struct testlib_recorder *rec = self->layer->state;                       \
    int r = testlib_rec_enter(self, NBD_METHOD_##METHOD);                    \
    return r ? r : rec->caps.method;                                         \
  }
TESTLIB_REC_CAP(can_write, CAN_WRITE)
TESTLIB_REC_CAP(can_flush, CAN_FLUSH)
TESTLIB_REC_CAP(can_trim, CAN_TRIM)
TESTLIB_REC_CAP(can_zero, CAN_ZERO)
TESTLIB_REC_CAP(can_fast_zero, CAN_FAST_ZERO)
TESTLIB_REC_CAP(can_fua, CAN_FUA)
TESTLIB_REC_CAP(can_cache, CAN_CACHE)
TESTLIB_REC_CAP(can_extents, CAN_EXTENTS)
TESTLIB_REC_CAP(can_multi_conn, CAN_MULTI_CONN)
TESTLIB_REC_CAP(is_rotational, IS_ROTATIONAL)

static int
testlib_rec_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  testlib_buf_add(&testlib_life, "open recorder");
  return testlib_rec_enter(self, NBD_METHOD_OPEN);
}

static int
testlib_rec_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  testlib_buf_add(&testlib_life, "prepare recorder");
  return testlib_rec_enter(self, NBD_METHOD_PREPARE);
}

static int
testlib_rec_finalize(struct nbd_ctx *self, struct nbd_ctx *next)
{
  testlib_buf_add(&testlib_life, "finalize recorder");
  return testlib_rec_enter(self, NBD_METHOD_FINALIZE);
}

static void
testlib_rec_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  testlib_buf_add(&testlib_life, "close recorder");
  testlib_rec_enter(self, NBD_METHOD_CLOSE);
}

static void
testlib_rec_cleanup(struct nbd_layer *layer)
{
  struct testlib_recorder *rec = layer->state;

  free(rec->ram);
  free(rec->map);
  free(rec);
}

UNSUPPORTED(testlib_rec, list_exports) /* one disk */
UNSUPPORTED(testlib_rec, preconnect)

static const struct nbd_layer_ops testlib_rec_ops = {
  .name = "recorder",
  .description = "test-only RAM disk that logs every call",
  .kind = NBD_LAYER_BACKEND,
  .thread_model = NBD_PARALLEL,
  .nonblocking = NBD_NEVER_BLOCKS,
  .cleanup = testlib_rec_cleanup,
  NBD_REQUIRED_METHODS(testlib_rec)
  .open = testlib_rec_open,
  .prepare = testlib_rec_prepare,
  .finalize = testlib_rec_finalize,
  .close = testlib_rec_close,
};

struct nbd_layer *
testlib_recorder_new(const struct testlib_caps *caps)
{
  struct nbd_layer *layer = engine_layer_new(&testlib_rec_ops, "test");
  struct testlib_recorder *rec = calloc(1, sizeof *rec);

  ck_assert_ptr_nonnull(layer);
  ck_assert_ptr_nonnull(rec);
  rec->caps = *caps;
  if (caps->size > 0 && caps->size <= TESTLIB_RAM_MAX) {
    rec->ram = calloc(1, (size_t)caps->size);
    ck_assert_ptr_nonnull(rec->ram);
    rec->ramlen = (size_t)caps->size;
  }
  layer->state = rec;
  return layer;
}

void
testlib_recorder_ram_head(struct testlib_recorder *rec, size_t head)
{
  ck_assert(rec->ram == NULL && head > 0 && head <= TESTLIB_RAM_MAX &&
            head <= (uint64_t)rec->caps.size);
  rec->ram = calloc(1, head);
  ck_assert_ptr_nonnull(rec->ram);
  rec->ramlen = head;
}

struct testlib_recorder *
testlib_recorder(struct nbd_layer *layer)
{
  ck_assert_ptr_eq(layer->ops, &testlib_rec_ops);
  return layer->state;
}

void
testlib_recorder_map(struct testlib_recorder *rec, uint64_t offset,
                     uint64_t length, uint32_t type)
{
  rec->map = realloc(rec->map, (rec->nmap + 1) * sizeof *rec->map);
  ck_assert_ptr_nonnull(rec->map);
  rec->map[rec->nmap].offset = offset;
  rec->map[rec->nmap].length = length;
  rec->map[rec->nmap].type = type;
  rec->nmap++;
}

/* ---- the tracer filter ------------------------------------------------------ */

struct testlib_tracer_conf {
  char *label;
  int fail_open;
};

static const struct nbd_param testlib_tracer_params[] = {
  { "label", NBD_PARAM_STRING, offsetof(struct testlib_tracer_conf, label),
    "tracer", "name in the lifecycle log", NULL, 0 },
  { "fail_open", NBD_PARAM_BOOL,
    offsetof(struct testlib_tracer_conf, fail_open), "no",
    "open returns -EIO", NULL, 0 },
  NBD_PARAM_END
};

static int
testlib_tracer_life(struct nbd_ctx *self, const char *what)
{
  const struct testlib_tracer_conf *conf = self->layer->conf;

  testlib_buf_add(&testlib_life, "%s %s", what, conf->label);
  return 0;
}

static int
testlib_tracer_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  const struct testlib_tracer_conf *conf = self->layer->conf;

  testlib_tracer_life(self, "open");
  return conf->fail_open ? -EIO : 0;
}

static int
testlib_tracer_prepare(struct nbd_ctx *self, struct nbd_ctx *next,
                       int readonly)
{
  return testlib_tracer_life(self, "prepare");
}

static int
testlib_tracer_finalize(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return testlib_tracer_life(self, "finalize");
}

static void
testlib_tracer_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  testlib_tracer_life(self, "close");
}

PASSTHROUGH(testlib_tracer, pread)
PASSTHROUGH(testlib_tracer, pwrite)
PASSTHROUGH(testlib_tracer, flush)
PASSTHROUGH(testlib_tracer, trim)
PASSTHROUGH(testlib_tracer, zero)
PASSTHROUGH(testlib_tracer, extents)
PASSTHROUGH(testlib_tracer, depth)
PASSTHROUGH(testlib_tracer, cache)

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define testlib_tracer_reopen nbd_reopen_close_open

PASSTHROUGH(testlib_tracer, get_size)
PASSTHROUGH(testlib_tracer, block_size)
PASSTHROUGH(testlib_tracer, can_write)
PASSTHROUGH(testlib_tracer, can_flush)
PASSTHROUGH(testlib_tracer, can_trim)
PASSTHROUGH(testlib_tracer, can_zero)
PASSTHROUGH(testlib_tracer, can_fast_zero)
PASSTHROUGH(testlib_tracer, can_fua)
PASSTHROUGH(testlib_tracer, can_cache)
PASSTHROUGH(testlib_tracer, can_extents)
PASSTHROUGH(testlib_tracer, can_multi_conn)
PASSTHROUGH(testlib_tracer, is_rotational)
PASSTHROUGH(testlib_tracer, list_exports)
PASSTHROUGH(testlib_tracer, preconnect)

static const struct nbd_layer_ops testlib_tracer_ops = {
  .name = "tracer",
  .description = "test-only pass-through filter that logs its lifecycle",
  .kind = NBD_LAYER_FILTER,
  .params = testlib_tracer_params,
  .conf_size = sizeof(struct testlib_tracer_conf),
  .thread_model = NBD_PARALLEL,
  .nonblocking = NBD_NEVER_BLOCKS,
  NBD_REQUIRED_METHODS(testlib_tracer)
  .open = testlib_tracer_open,
  .prepare = testlib_tracer_prepare,
  .finalize = testlib_tracer_finalize,
  .close = testlib_tracer_close,
};

/* ---- building stacks ------------------------------------------------------- */

/* Sets "k=v k=v" on layer; 0 or -1 with err filled. */
static int
testlib_set_params(struct nbd_layer *layer, const char *params, char *err,
                   size_t errlen)
{
  char *copy = strdup(params), *save = NULL, *kv, *eq;
  int r = 0;

  ck_assert_ptr_nonnull(copy);
  for (kv = strtok_r(copy, " \t", &save); kv && r == 0;
       kv = strtok_r(NULL, " \t", &save)) {
    if ((eq = strchr(kv, '=')) == NULL) {
      snprintf(err, errlen, "'%s' is not key=value", kv);
      r = -1;
      break;
    }
    *eq = '\0';
    r = params_set(layer, kv, eq + 1, err, errlen);
  }
  free(copy);
  return r;
}

struct nbd_layer *
testlib_filter_new(const char *name, const char *params, char *err,
                   size_t errlen)
{
  const struct nbd_layer_ops *ops;
  struct nbd_layer *layer;
  char msg[256];

  if (strcmp(name, "tracer") == 0)
    ops = &testlib_tracer_ops;
  else if ((ops = registry_find(NBD_LAYER_FILTER, name)) == NULL) {
    snprintf(err, errlen, "no filter called '%s'", name);
    return NULL;
  }
  layer = engine_layer_new(ops, "test");
  ck_assert_ptr_nonnull(layer);
  if (testlib_set_params(layer, params, msg, sizeof msg) == -1 ||
      engine_layer_setup(layer, msg, sizeof msg) == -1) {
    snprintf(err, errlen, "filter %s: %s", name, msg);
    engine_layer_free(layer);
    return NULL;
  }
  return layer;
}

/* Splits "name k=v | name k=v" and pushes each filter into s->exp. */
static int
testlib_push_filters(struct testlib_stack *s, const char *filters)
{
  char *copy = strdup(filters), *save = NULL, *spec, *name, *params;
  struct nbd_layer *layer;
  int r = 0;

  ck_assert_ptr_nonnull(copy);
  for (spec = strtok_r(copy, "|", &save); spec && r == 0;
       spec = strtok_r(NULL, "|", &save)) {
    name = spec + strspn(spec, " \t");
    if (*name == '\0')
      continue;
    params = name + strcspn(name, " \t");
    if (*params)
      *params++ = '\0';
    layer = testlib_filter_new(name, params, s->err, sizeof s->err);
    if (layer == NULL)
      r = -1;
    else
      engine_export_push(s->exp, layer);
  }
  free(copy);
  return r;
}

int
testlib_stack_new(struct testlib_stack *s, const char *filters,
                  const struct testlib_caps *caps)
{
  struct nbd_layer *rec;
  char msg[256];

  memset(s, 0, sizeof *s);
  testlib_life.len = 0;             /* a new stack, a new lifecycle record */
  if (testlib_life.s)
    testlib_life.s[0] = '\0';
  s->exp = engine_export_new("test");
  ck_assert_ptr_nonnull(s->exp);
  if (testlib_push_filters(s, filters) == -1)
    goto fail;
  rec = testlib_recorder_new(caps);
  s->rec = testlib_recorder(rec);
  engine_export_push(s->exp, rec);
  if (engine_export_finish(s->exp, msg, sizeof msg) == -1) {
    snprintf(s->err, sizeof s->err, "export: %s", msg);
    goto fail;
  }
  return 0;

fail:
  engine_export_free(s->exp);
  s->exp = NULL;
  s->rec = NULL;
  return -1;
}

int
testlib_stack_open(struct testlib_stack *s, int readonly)
{
  s->top = engine_open(s->exp, readonly, NULL, s->err, sizeof s->err);
  testlib_log_clear();
  return s->top ? 0 : -1;
}

void
testlib_stack(struct testlib_stack *s, const char *filters,
              const struct testlib_caps *caps)
{
  ck_assert_msg(testlib_stack_new(s, filters, caps) == 0, "stack: %s",
                s->err);
  ck_assert_msg(testlib_stack_open(s, 0) == 0, "open: %s", s->err);
}

void
testlib_stack_free(struct testlib_stack *s)
{
  if (s->top)
    engine_close(s->top);
  engine_export_free(s->exp);
  memset(s, 0, sizeof *s);
}

/* ---- stderr capture and data patterns ------------------------------------- */

static FILE *testlib_capture;
static int testlib_saved_stderr = -1;

void
testlib_stderr_begin(void)
{
  ck_assert_ptr_null(testlib_capture);
  fflush(stderr);
  testlib_capture = tmpfile();
  ck_assert_ptr_nonnull(testlib_capture);
  testlib_saved_stderr = dup(STDERR_FILENO);
  ck_assert_int_ge(testlib_saved_stderr, 0);
  ck_assert_int_ge(dup2(fileno(testlib_capture), STDERR_FILENO), 0);
}

char *
testlib_stderr_end(void)
{
  long len;
  char *s;

  ck_assert_ptr_nonnull(testlib_capture);
  fflush(stderr);
  dup2(testlib_saved_stderr, STDERR_FILENO);
  close(testlib_saved_stderr);
  testlib_saved_stderr = -1;
  /* The writes went through fd 2, which shares the file offset. */
  fseek(testlib_capture, 0, SEEK_END);
  len = ftell(testlib_capture);
  ck_assert_int_ge(len, 0);
  s = calloc(1, (size_t)len + 1);
  ck_assert_ptr_nonnull(s);
  rewind(testlib_capture);
  ck_assert_uint_eq(fread(s, 1, (size_t)len, testlib_capture), (size_t)len);
  fclose(testlib_capture);
  testlib_capture = NULL;
  return s;
}

void
testlib_pattern(void *buf, uint32_t count, uint64_t offset)
{
  unsigned char *p = buf;
  uint32_t i;

  /* The top byte of a multiplicative hash: unlike the low byte of the
   * offset it does not repeat every 256 bytes (or any power of two), so
   * data shifted by a filter's offset is caught. */
  for (i = 0; i < count; i++)
    p[i] = (unsigned char)(((offset + i) * 0x9e3779b97f4a7c15ull) >> 56);
}

/* ---- write payloads ------------------------------------------------------- */

static int
testlib_source_readv(struct nbd_source *src, struct iovec *iov, int n)
{
  struct testlib_source *s = (struct testlib_source *)src;
  int i;

  s->reads++;
  for (i = 0; i < n; i++) {
    size_t k = iov[i].iov_len;
    if (s->pos + k > s->fail_at) {
      memcpy(iov[i].iov_base, s->data + s->pos, s->fail_at - s->pos);
      s->pos = s->fail_at;
      return -1;
    }
    memcpy(iov[i].iov_base, s->data + s->pos, k);
    s->pos += k;
  }
  return 0;
}

void
testlib_source_init(struct testlib_source *s, const void *data, size_t len,
                    size_t fail_at)
{
  memset(s, 0, sizeof *s);
  s->src.readv = testlib_source_readv;
  s->src.left = len;
  s->data = data;
  s->fail_at = fail_at;
}

/* ---- layers a test needs ---------------------------------------------------- */

int
testlib_require_layer(enum nbd_layer_kind kind, const char *name)
{
  if (registry_find(kind, name) != NULL)
    return 1;
  printf("SKIP: the %s %s is not compiled in\n", name,
         kind == NBD_LAYER_FILTER ? "filter" : "backend");
  fflush(stdout);
  return 0;
}

/* ---- one backend alone -------------------------------------------------- */

struct nbd_export *
testlib_backend_export(const char *name, const char *params, char *err,
                       size_t errlen)
{
  const struct nbd_layer_ops *ops = registry_find(NBD_LAYER_BACKEND, name);
  char *copy = strdup(params), *tok, *save = NULL;
  struct nbd_layer *l;
  struct nbd_export *exp;

  ck_assert_ptr_nonnull(ops);
  ck_assert_ptr_nonnull(copy);
  l = engine_layer_new(ops, "");
  ck_assert_ptr_nonnull(l);
  for (tok = strtok_r(copy, " ", &save); tok;
       tok = strtok_r(NULL, " ", &save)) {
    char *eq = strchr(tok, '=');

    ck_assert_ptr_nonnull(eq);
    *eq = '\0';
    if (params_set(l, tok, eq + 1, err, errlen) == -1)
      goto fail;
  }
  if (engine_layer_setup(l, err, errlen) == -1)
    goto fail;
  free(copy);
  exp = engine_export_new("");
  ck_assert_ptr_nonnull(exp);
  engine_export_push(exp, l);
  ck_assert_int_eq(engine_export_finish(exp, err, errlen), 0);
  return exp;
fail:
  free(copy);
  engine_layer_free(l);
  return NULL;
}

struct nbd_ctx *
testlib_backend_open(struct testlib_backend *b, const char *name,
                     const char *params, int readonly)
{
  char err[256] = "";

  b->exp = testlib_backend_export(name, params, err, sizeof err);
  ck_assert_msg(b->exp != NULL, "setup failed: %s", err);
  b->ctx = engine_open(b->exp, readonly, NULL, err, sizeof err);
  ck_assert_msg(b->ctx != NULL, "open failed: %s", err);
  return b->ctx;
}

void
testlib_backend_close(struct testlib_backend *b)
{
  if (b->ctx)
    engine_close(b->ctx);
  engine_export_free(b->exp);
  b->ctx = NULL;
  b->exp = NULL;
}

const char *
testlib_backend_refused(const char *name, const char *params)
{
  static char err[256];
  struct nbd_export *exp;

  err[0] = '\0';
  exp = testlib_backend_export(name, params, err, sizeof err);
  if (exp) {
    engine_export_free(exp);
    return "";
  }
  return err;
}

void
testlib_hex(const void *b, size_t n, char *out)
{
  const unsigned char *p = b;
  size_t i;

  for (i = 0; i < n; i++)
    sprintf(out + 2 * i, "%02x", p[i]);
}

const char *
testlib_map(int (*m)(struct nbd_ctx *, uint64_t, uint64_t, uint32_t,
                     struct nbd_extents *),
            struct nbd_ctx *top, uint64_t count, uint64_t offset,
            uint32_t flags)
{
  static char out[1024];
  struct nbd_extents *e = nbd_extents_new(offset, offset + count);
  size_t i, n = 0;
  int r;

  ck_assert_ptr_nonnull(e);
  r = m(top, count, offset, flags, e);
  ck_assert_msg(r == 0, "map: %d", r);
  out[0] = '\0';
  for (i = 0; i < e->n && n < sizeof out - 64; i++)
    n += (size_t)snprintf(out + n, sizeof out - n, "%s%llu+%llu/%u",
                          i ? " " : "", (unsigned long long)e->v[i].offset,
                          (unsigned long long)e->v[i].length, e->v[i].type);
  nbd_extents_free(e);
  return out;
}
