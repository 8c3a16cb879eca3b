/* Unit tests for backends/memory/: the sparse RAM disk (memory.c over its
 * page store, store.c), driven through the engine's next_<method>() entry
 * points as the protocol code would, with no filters and no sockets.
 * Holes are observed through extents, so a trim that only zeroed (and did
 * not free) a page is caught.  The concurrency test is meant to be run
 * under -DNBD_SANITIZE=thread too.
 */
#include <check.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine.h"
#include "testlib.h"

#define P       ((uint32_t)32768)       /* the store's page size */
#define PP      ((uint64_t)P)           /* the same, for 64-bit varargs */
#define MIB     ((uint32_t)1 << 20)
#define GIB     ((uint64_t)1 << 30)
#define HOLE    (NBD_EXTENT_HOLE | NBD_EXTENT_ZERO)

/* ---- helpers ------------------------------------------------------------ */

/* A memory export of the given size, or NULL with err filled. */
static struct nbd_export *
memory_export(const char *size, char *err, size_t errlen)
{
  const struct nbd_layer_ops *ops = registry_find(NBD_LAYER_BACKEND,
                                                  "memory");
  struct nbd_layer *l;
  struct nbd_export *exp;

  ck_assert_ptr_nonnull(ops);
  l = engine_layer_new(ops, "");
  ck_assert_ptr_nonnull(l);
  if ((size && params_set(l, "size", size, err, errlen) == -1) ||
      engine_layer_setup(l, err, errlen) == -1) {
    engine_layer_free(l);
    return NULL;
  }
  exp = engine_export_new("");
  ck_assert_ptr_nonnull(exp);
  engine_export_push(exp, l);
  ck_assert_int_eq(engine_export_finish(exp, err, errlen), 0);
  return exp;
}

/* The stack most tests use: one 1 GiB export, one connection. */
static struct nbd_export *mem_exp;
static struct nbd_ctx *mem_ctx;

static struct nbd_ctx *
memory_open(const char *size, int readonly)
{
  char err[256] = "";

  mem_exp = memory_export(size, err, sizeof err);
  ck_assert_msg(mem_exp != NULL, "setup failed: %s", err);
  mem_ctx = engine_open(mem_exp, readonly, NULL, err, sizeof err);
  ck_assert_msg(mem_ctx != NULL, "open failed: %s", err);
  return mem_ctx;
}

static void
memory_teardown(void)
{
  if (mem_ctx)
    engine_close(mem_ctx);
  engine_export_free(mem_exp);
  mem_ctx = NULL;
  mem_exp = NULL;
}

static void *
xmalloc(size_t n)
{
  void *p = malloc(n);
  ck_assert_ptr_nonnull(p);
  return p;
}

/* Bytes that depend on the disk offset and a seed, so misplaced or stale
 * data is caught. */
static void
pattern(void *buf, uint32_t count, uint64_t offset, unsigned seed)
{
  unsigned char *b = buf;
  uint32_t i;

  for (i = 0; i < count; i++) {
    uint64_t o = offset + i;
    b[i] = (unsigned char)((o * 2654435761u >> 13) ^ (o >> 16) ^ seed) | 1;
  }
}

/* Reads [offset, offset+count) and checks it equals the pattern. */
static void
assert_pattern(struct nbd_ctx *c, uint32_t count, uint64_t offset,
               unsigned seed)
{
  unsigned char *got = xmalloc(count), *want = xmalloc(count);

  ck_assert_int_eq(next_pread(c, got, count, offset, 0), 0);
  pattern(want, count, offset, seed);
  ck_assert_msg(memcmp(got, want, count) == 0,
                "data differs in [%llu, +%u)", (unsigned long long)offset,
                count);
  free(got);
  free(want);
}

static void
assert_zero(struct nbd_ctx *c, uint32_t count, uint64_t offset)
{
  unsigned char *got = xmalloc(count);

  memset(got, 0xee, count);
  ck_assert_int_eq(next_pread(c, got, count, offset, 0), 0);
  ck_assert_msg(nbd_is_zero(got, count), "not zero in [%llu, +%u)",
                (unsigned long long)offset, count);
  free(got);
}

static void
write_pattern(struct nbd_ctx *c, uint32_t count, uint64_t offset,
              unsigned seed)
{
  unsigned char *b = xmalloc(count);

  pattern(b, count, offset, seed);
  ck_assert_int_eq(next_pwrite(c, b, count, offset, 0), 0);
  free(b);
}

/* Extents of [offset, offset+count) as "off+len:type ..." for one-line
 * comparisons; types are D (data) or H (hole and zero). */
static char *
extents_str(struct nbd_ctx *c, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  static char out[4096];
  struct nbd_extents *e = nbd_extents_new(offset, offset + count);
  size_t i, len = 0;

  ck_assert_ptr_nonnull(e);
  ck_assert_int_eq(next_extents(c, count, offset, flags, e), 0);
  out[0] = '\0';
  for (i = 0; i < e->n && len < sizeof out; i++)
    len += snprintf(out + len, sizeof out - len, "%s%llu+%llu:%s",
                    i ? " " : "", (unsigned long long)e->v[i].offset,
                    (unsigned long long)e->v[i].length,
                    e->v[i].type == 0 ? "D" :
                    e->v[i].type == HOLE ? "H" : "?");
  nbd_extents_free(e);
  return out;
}

/* "off+len:T" built from numbers, to compare with extents_str. */
static char *
ext(uint64_t off, uint64_t len, const char *type)
{
  static char bufs[8][64];
  static int i;
  char *b = bufs[i++ % 8];

  snprintf(b, 64, "%llu+%llu:%s", (unsigned long long)off,
           (unsigned long long)len, type);
  return b;
}

/* n extents given as (offset, length, type) triples, formatted like
 * extents_str. */
static char *
exts(int n, ...)
{
  static char out[1024];
  size_t len = 0;
  va_list ap;
  int i;

  va_start(ap, n);
  out[0] = '\0';
  for (i = 0; i < n; i++) {
    uint64_t off = va_arg(ap, uint64_t), l = va_arg(ap, uint64_t);
    const char *type = va_arg(ap, const char *);
    len += snprintf(out + len, sizeof out - len, "%s%s", i ? " " : "",
                    ext(off, l, type));
  }
  va_end(ap);
  return out;
}

/* ---- reading and writing ---------------------------------------------- */

START_TEST(test_reads_zeros_before_any_write)
{
  struct nbd_ctx *c = memory_open("1G", 0);

  ck_assert_int_eq(next_get_size(c), (int64_t)GIB);
  assert_zero(c, MIB, 0);
  assert_zero(c, MIB, GIB / 2 + 123);
  assert_zero(c, MIB, GIB - MIB);
  ck_assert_str_eq(extents_str(c, (uint32_t)GIB, 0, 0), ext(0, GIB, "H"));
}
END_TEST

START_TEST(test_reads_back_unaligned_write_across_pages)
{
  struct nbd_ctx *c = memory_open("1G", 0);
  const uint64_t off = 5 * (uint64_t)P - 333;
  const uint32_t len = 3 * P + 1000;

  write_pattern(c, len, off, 1);
  assert_pattern(c, len, off, 1);
  assert_pattern(c, 777, off + P - 100, 1);      /* a slice across a page */
  assert_zero(c, 4096, off - 4096);
  assert_zero(c, 4096, off + len);
}
END_TEST

START_TEST(test_overwrites_part_of_a_written_page)
{
  struct nbd_ctx *c = memory_open("1G", 0);
  unsigned char *got = xmalloc(P), *want = xmalloc(P);

  write_pattern(c, P, 7 * (uint64_t)P, 1);
  write_pattern(c, 10, 7 * (uint64_t)P + 1000, 2);
  pattern(want, P, 7 * (uint64_t)P, 1);
  pattern(want + 1000, 10, 7 * (uint64_t)P + 1000, 2);
  ck_assert_int_eq(next_pread(c, got, P, 7 * (uint64_t)P, 0), 0);
  ck_assert_mem_eq(got, want, P);
  free(got);
  free(want);
}
END_TEST

START_TEST(test_writing_zeros_to_a_hole_allocates_nothing)
{
  struct nbd_ctx *c = memory_open("1G", 0);
  unsigned char *zero = calloc(1, 2 * P);

  ck_assert_ptr_nonnull(zero);
  ck_assert_int_eq(next_pwrite(c, zero, 2 * P, 4 * (uint64_t)P, 0), 0);
  ck_assert_str_eq(extents_str(c, 8 * P, 0, 0), ext(0, 8 * P, "H"));
  /* Zeros written over data keep the data page (it is not scanned). */
  write_pattern(c, P, 0, 1);
  ck_assert_int_eq(next_pwrite(c, zero, P, 0, 0), 0);
  assert_zero(c, P, 0);
  ck_assert_str_eq(extents_str(c, P, 0, 0), ext(0, P, "D"));
  free(zero);
}
END_TEST

START_TEST(test_connections_share_one_store)
{
  struct nbd_ctx *c = memory_open("1G", 0), *c2;
  char err[256];

  c2 = engine_open(mem_exp, 0, NULL, err, sizeof err);
  ck_assert_msg(c2 != NULL, "%s", err);
  write_pattern(c, 5000, 123456, 3);
  assert_pattern(c2, 5000, 123456, 3);
  engine_close(c2);
}
END_TEST

/* ---- pwrite_from: payloads read straight into the store ---------------- */

/* pwrite_from of the pattern; returns what it returned, source in *src. */
static int
write_from(struct nbd_ctx *c, struct testlib_source *src, unsigned char *b,
           uint32_t count, uint64_t offset, unsigned seed, size_t fail_at)
{
  pattern(b, count, offset, seed);
  testlib_source_init(src, b, count, fail_at);
  return next_pwrite_from(c, &src->src, count, offset, 0);
}

/* A partial head page, 100 whole pages (more than one recvmsg's worth)
 * and a partial tail: two reads (up to 64 whole pages and the ends). */
/* A sink that copies what it is passed into buf, counting its calls, and
 * (with slow set) takes a while over each, as a send would. */
struct copy_sink {
  struct nbd_sink sink;
  unsigned char *buf;
  size_t pos;
  unsigned calls;
};

static int
copy_sink_writev(struct nbd_sink *dst, const struct iovec *iov, int n)
{
  struct copy_sink *s = (struct copy_sink *)dst;
  int i;

  s->calls++;
  for (i = 0; i < n; i++) {
    memcpy(s->buf + s->pos, iov[i].iov_base, iov[i].iov_len);
    s->pos += iov[i].iov_len;
  }
  return 0;
}

static int
read_to(struct nbd_ctx *c, void *buf, uint32_t count, uint64_t offset,
        unsigned *calls)
{
  struct copy_sink s = { { copy_sink_writev, count, 0 }, buf, 0, 0 };
  int r = next_pread_to(c, &s.sink, count, offset, 0);

  if (calls)
    *calls = s.calls;
  return r == 0 && (s.sink.left != 0 || s.pos != count) ? -1 : r;
}

START_TEST(test_pread_to_passes_pages_holes_and_parts)
{
  struct nbd_ctx *c = memory_open("1G", 0);
  const uint64_t off = 5 * PP - 300;
  const uint32_t len = 300 + 100 * P + 77;     /* 102 pages touched */
  unsigned char *got = xmalloc(len), *want = xmalloc(len);
  unsigned calls;

  ck_assert_int_eq(c->push, 1);
  write_pattern(c, 40 * P, 4 * PP, 3);
  write_pattern(c, 30 * P, 60 * PP, 4);         /* a hole between */
  memset(got, 0xee, len);
  ck_assert_int_eq(read_to(c, got, len, off, &calls), 0);
  ck_assert_int_eq(next_pread(c, want, len, off, 0), 0);
  ck_assert_msg(memcmp(got, want, len) == 0, "pread_to differs from pread");
  ck_assert(!nbd_is_zero(want, 300));
  ck_assert(nbd_is_zero(want + 50 * P, P));
  ck_assert_uint_eq(calls, 4);                  /* 32 pages per call */
  /* Past the end: refused before any byte. */
  ck_assert_int_eq(read_to(c, got, 2 * P, GIB - P, NULL), -EINVAL);
  free(got);
  free(want);
}
END_TEST

START_TEST(test_pwrite_from_reads_back_unaligned_span)
{
  struct nbd_ctx *c = memory_open("1G", 0);
  const uint64_t off = 3 * PP - 100;
  const uint32_t len = 100 + 100 * P + 200;
  unsigned char *b = xmalloc(len);
  struct testlib_source src;

  write_pattern(c, 4 * P, 2 * PP, 7);           /* old data under part */
  ck_assert_int_eq(write_from(c, &src, b, len, off, 1, SIZE_MAX), 0);
  ck_assert_uint_eq(src.src.left, 0);
  ck_assert_uint_eq(src.reads, 2);
  assert_pattern(c, len, off, 1);
  assert_pattern(c, P - 100, 2 * PP, 7);        /* before the write */
  assert_zero(c, 4096, off + len);
  ck_assert_str_eq(extents_str(c, 110 * P, 0, 0),
                   exts(3, (uint64_t)0, 2 * PP, "H", 2 * PP, 102 * PP, "D",
                        104 * PP, 6 * PP, "H"));
  free(b);
}
END_TEST

START_TEST(test_pwrite_from_zeros_keep_holes_and_replace_data)
{
  struct nbd_ctx *c = memory_open("1G", 0);
  unsigned char *zero = calloc(1, 4 * P);
  struct testlib_source src;

  ck_assert_ptr_nonnull(zero);
  testlib_source_init(&src, zero, 4 * P, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(c, &src.src, 4 * P, 4 * PP, 0), 0);
  ck_assert_str_eq(extents_str(c, 8 * P, 0, 0), ext(0, 8 * P, "H"));
  write_pattern(c, 2 * P, 0, 1);
  testlib_source_init(&src, zero, 2 * P, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(c, &src.src, 2 * P, 0, 0), 0);
  assert_zero(c, 2 * P, 0);
  free(zero);
}
END_TEST

/* The client goes away mid-payload: nothing changes, not even the part
 * of the first page that had fully arrived, and the write fails. */
START_TEST(test_pwrite_from_client_gone_changes_nothing)
{
  struct nbd_ctx *c = memory_open("1G", 0);
  unsigned char *b = xmalloc(8 * P);
  struct testlib_source src;

  write_pattern(c, 10 * P, 16 * PP, 1);
  ck_assert_int_lt(write_from(c, &src, b, 8 * P, 16 * PP + 5, 2, 5 * P + 7),
                   0);
  ck_assert_int_eq(src.src.failed, 1);
  assert_pattern(c, 10 * P, 16 * PP, 1);
  ck_assert_int_lt(write_from(c, &src, b, 1000, 16 * PP + 5, 2, 999), 0);
  assert_pattern(c, P, 16 * PP, 1);
  /* Into holes: they stay holes. */
  ck_assert_int_lt(write_from(c, &src, b, 8 * P, 64 * PP, 2, 3 * P), 0);
  ck_assert_str_eq(extents_str(c, 8 * P, 64 * PP, 0), ext(64 * PP, 8 * PP,
                                                           "H"));
  free(b);
}
END_TEST

START_TEST(test_pwrite_from_read_only_refuses_and_drains)
{
  struct nbd_ctx *c = memory_open("1G", 1);
  unsigned char *b = xmalloc(2 * P);
  struct testlib_source src;

  ck_assert_int_eq(write_from(c, &src, b, 2 * P, 0, 1, SIZE_MAX), -EPERM);
  ck_assert_uint_eq(src.src.left, 0);
  assert_zero(c, 2 * P, 0);
  free(b);
}
END_TEST

/* Through an offset filter the stack still pulls payloads into memory's
 * pages; a read-only connection does not. */
START_TEST(test_pwrite_from_through_offset_filter)
{
  const struct nbd_layer_ops *fops = registry_find(NBD_LAYER_FILTER,
                                                   "offset");
  struct nbd_layer *f;
  struct nbd_ctx *c, *ro;
  unsigned char *b = xmalloc(4 * P);
  struct testlib_source src;
  char err[256] = "";

  struct nbd_layer *m;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "offset"))
    return;
  f = engine_layer_new(fops, "");
  m = engine_layer_new(registry_find(NBD_LAYER_BACKEND, "memory"), "");
  ck_assert_ptr_nonnull(f);
  ck_assert_ptr_nonnull(m);
  ck_assert_int_eq(params_set(f, "offset", "1M", err, sizeof err), 0);
  ck_assert_int_eq(params_set(m, "size", "1G", err, sizeof err), 0);
  ck_assert_msg(engine_layer_setup(m, err, sizeof err) == 0, "%s", err);
  ck_assert_msg(engine_layer_setup(f, err, sizeof err) == 0, "%s", err);
  mem_exp = engine_export_new("");
  engine_export_push(mem_exp, f);
  engine_export_push(mem_exp, m);
  ck_assert_int_eq(engine_export_finish(mem_exp, err, sizeof err), 0);
  mem_ctx = c = engine_open(mem_exp, 0, NULL, err, sizeof err);
  ck_assert_msg(c != NULL, "%s", err);
  ck_assert_int_eq(c->pull, 1);
  ck_assert_int_eq(c->next->pull, 1);
  ck_assert_int_eq(write_from(c, &src, b, 4 * P, 0, 3, SIZE_MAX), 0);
  ck_assert_uint_eq(src.reads, 1);
  pattern(b, 4 * P, 0, 3);
  {
    unsigned char *got = xmalloc(4 * P);
    ck_assert_int_eq(next_pread(c->next, got, 4 * P, MIB, 0), 0);
    ck_assert_mem_eq(got, b, 4 * P);
    free(got);
  }
  ro = engine_open(mem_exp, 1, NULL, err, sizeof err);
  ck_assert_msg(ro != NULL, "%s", err);
  ck_assert_int_eq(ro->pull, 0);
  engine_close(ro);
  free(b);
}
END_TEST

/* ---- size ------------------------------------------------------------- */

START_TEST(test_accepts_size_2_63_minus_1_and_writes_near_the_end)
{
  struct nbd_ctx *c = memory_open("9223372036854775807", 0);
  const uint64_t end = (uint64_t)INT64_MAX;
  unsigned char b[16];

  ck_assert_int_eq(next_get_size(c), INT64_MAX);
  write_pattern(c, 100000, end - 100000, 4);       /* crosses a page */
  assert_pattern(c, 100000, end - 100000, 4);
  write_pattern(c, 4096, 0, 5);
  assert_pattern(c, 4096, 0, 5);
  assert_zero(c, MIB, end / 2);
  ck_assert_int_eq(next_pwrite(c, b, 2, end - 1, 0), -ENOSPC);
  /* The last page ends at 2^63, one byte past the disk. */
  ck_assert_str_eq(extents_str(c, MIB, end - MIB, 0),
                   "9223372036853727231+917505:H "
                   "9223372036854644736+131071:D");
  /* A 4 GiB hole in the middle is one extent, found without walking
   * every page of it. */
  ck_assert_str_eq(extents_str(c, UINT32_MAX, end / 2, 0),
                   ext(end / 2, UINT32_MAX, "H"));
}
END_TEST

START_TEST(test_rejects_size_2_63_with_a_message)
{
  char err[256] = "";

  ck_assert_ptr_null(memory_export("9223372036854775808", err, sizeof err));
  ck_assert_ptr_nonnull(strstr(err, "9223372036854775808"));
  ck_assert_ptr_nonnull(strstr(err, "2^63-1"));
  err[0] = '\0';
  ck_assert_ptr_null(memory_export("8E", err, sizeof err));
  ck_assert_ptr_nonnull(strstr(err, "too large"));
}
END_TEST

START_TEST(test_requires_size)
{
  const struct nbd_layer_ops *ops = registry_find(NBD_LAYER_BACKEND,
                                                  "memory");
  char err[256] = "";

  ck_assert_ptr_null(memory_export(NULL, err, sizeof err));
  ck_assert_ptr_nonnull(strstr(err, "size"));
  /* "memory 1G" on a command line sets size. */
  ck_assert_str_eq(ops->magic_param, "size");
}
END_TEST

/* ---- trim, zero, extents ---------------------------------------------- */

START_TEST(test_trim_of_whole_pages_leaves_holes)
{
  struct nbd_ctx *c = memory_open("1G", 0);

  write_pattern(c, 4 * P, 0, 1);
  ck_assert_int_eq(next_trim(c, 2 * P, P, 0), 0);
  assert_pattern(c, P, 0, 1);
  assert_zero(c, 2 * P, P);
  assert_pattern(c, P, 3 * (uint64_t)P, 1);
  ck_assert_str_eq(extents_str(c, 5 * P, 0, 0),
                   exts(4, 0 * PP, PP, "D", 1 * PP, 2 * PP, "H",
                        3 * PP, PP, "D", 4 * PP, PP, "H"));
}
END_TEST

START_TEST(test_partial_trim_zeroes_and_keeps_the_page)
{
  struct nbd_ctx *c = memory_open("1G", 0);

  write_pattern(c, 4 * P, 0, 1);
  /* Half of page 0, pages 1 and 2 whole, half of page 3. */
  ck_assert_int_eq(next_trim(c, 3 * P, P / 2, 0), 0);
  assert_pattern(c, P / 2, 0, 1);
  assert_zero(c, 3 * P, P / 2);
  assert_pattern(c, P / 2, 3 * (uint64_t)P + P / 2, 1);
  ck_assert_str_eq(extents_str(c, 4 * P, 0, 0),
                   exts(3, 0 * PP, PP, "D", 1 * PP, 2 * PP, "H",
                        3 * PP, PP, "D"));
  /* A trim inside one page only zeroes. */
  ck_assert_int_eq(next_trim(c, 100, 10, 0), 0);
  assert_zero(c, 100, 10);
  assert_pattern(c, 10, 0, 1);
  assert_pattern(c, 1000, 110, 1);
}
END_TEST

START_TEST(test_zero_frees_whole_pages_and_zeroes_partial_ones)
{
  struct nbd_ctx *c = memory_open("1G", 0);

  write_pattern(c, 4 * P, 0, 1);
  ck_assert_int_eq(next_zero(c, 3 * P, P / 2, 0), 0);
  assert_pattern(c, P / 2, 0, 1);
  assert_zero(c, 3 * P, P / 2);
  assert_pattern(c, P / 2, 3 * (uint64_t)P + P / 2, 1);
  ck_assert_str_eq(extents_str(c, 4 * P, 0, 0),
                   exts(3, 0 * PP, PP, "D", 1 * PP, 2 * PP, "H",
                        3 * PP, PP, "D"));
}
END_TEST

START_TEST(test_zero_with_no_hole_keeps_pages_allocated)
{
  struct nbd_ctx *c = memory_open("1G", 0);

  write_pattern(c, 2 * P, 0, 1);
  ck_assert_int_eq(next_zero(c, 2 * P, 0, NBD_CMD_FLAG_NO_HOLE), 0);
  assert_zero(c, 2 * P, 0);
  /* A never-written page is provisioned too. */
  ck_assert_int_eq(next_zero(c, 100, 3 * (uint64_t)P + 5, NBD_CMD_FLAG_NO_HOLE),
                   0);
  assert_zero(c, P, 3 * (uint64_t)P);
  ck_assert_str_eq(extents_str(c, 4 * P, 0, 0),
                   exts(3, 0 * PP, 2 * PP, "D", 2 * PP, PP, "H",
                        3 * PP, PP, "D"));
}
END_TEST

START_TEST(test_fast_zero_is_accepted)
{
  struct nbd_ctx *c = memory_open("1G", 0);

  write_pattern(c, 3 * P, 0, 1);
  ck_assert_int_eq(next_zero(c, 2 * P, 100, NBD_CMD_FLAG_FAST_ZERO), 0);
  assert_pattern(c, 100, 0, 1);
  assert_zero(c, 2 * P, 100);
  assert_pattern(c, P - 100, 2 * (uint64_t)P + 100, 1);
}
END_TEST

START_TEST(test_trim_of_a_huge_unwritten_range_is_quick)
{
  struct nbd_ctx *c = memory_open("9223372036854775807", 0);

  write_pattern(c, P, (uint64_t)1 << 62, 1);
  ck_assert_int_eq(next_trim(c, UINT32_MAX, ((uint64_t)1 << 62) - GIB, 0),
                   0);
  ck_assert_int_eq(next_zero(c, UINT32_MAX, (uint64_t)1 << 61, 0), 0);
  assert_zero(c, P, (uint64_t)1 << 62);
  ck_assert_str_eq(extents_str(c, 4 * P, (uint64_t)1 << 62, 0),
                   ext((uint64_t)1 << 62, 4 * P, "H"));
}
END_TEST

START_TEST(test_extents_merge_neighbours_and_clip_to_the_request)
{
  struct nbd_ctx *c = memory_open("1G", 0);

  write_pattern(c, 2 * P, 0, 1);          /* pages 0, 1 */
  write_pattern(c, 10, 3 * PP + 500, 1);   /* page 3 */
  write_pattern(c, 1, 6 * PP + 100, 1);    /* page 6 */
  ck_assert_str_eq(extents_str(c, 7 * P, PP / 2, 0),
                   exts(6, PP / 2, 2 * PP - PP / 2, "D", 2 * PP, PP, "H",
                        3 * PP, PP, "D", 4 * PP, 2 * PP, "H", 6 * PP, PP, "D",
                        7 * PP, PP / 2, "H"));
  /* REQ_ONE: the first extent is complete; the caller drops the rest. */
  ck_assert_str_eq(strtok(extents_str(c, 7 * P, PP / 2, NBD_CMD_FLAG_REQ_ONE),
                          " "), ext(PP / 2, 2 * PP - PP / 2, "D"));
}
END_TEST

/* ---- flags, capabilities, read-only ----------------------------------- */

START_TEST(test_advertises_native_zero_fua_and_cache)
{
  struct nbd_ctx *c = memory_open("1G", 0);

  ck_assert_int_eq(next_can_write(c), 1);
  ck_assert_int_eq(next_can_flush(c), 1);
  ck_assert_int_eq(next_can_trim(c), 1);
  ck_assert_int_eq(next_can_zero(c), NBD_ZERO_NATIVE);
  ck_assert_int_eq(next_can_fast_zero(c), 1);
  ck_assert_int_eq(next_can_fua(c), NBD_FUA_NATIVE);
  ck_assert_int_eq(next_can_cache(c), NBD_CACHE_NATIVE);
  ck_assert_int_eq(next_can_extents(c), 1);
  ck_assert_int_eq(next_can_multi_conn(c), 1);
  ck_assert_int_eq(next_is_rotational(c), 0);
  ck_assert_int_eq(registry_find(NBD_LAYER_BACKEND, "memory")->thread_model,
                   NBD_PARALLEL);
}
END_TEST

START_TEST(test_flush_fua_and_cache_succeed)
{
  struct nbd_ctx *c = memory_open("1G", 0);
  unsigned char b[512];

  pattern(b, sizeof b, 4096, 9);
  ck_assert_int_eq(next_pwrite(c, b, sizeof b, 4096, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_flush(c, 0), 0);
  ck_assert_int_eq(next_cache(c, MIB, 0, 0), 0);
  assert_pattern(c, sizeof b, 4096, 9);
}
END_TEST

START_TEST(test_read_only_connection_refuses_writes)
{
  struct nbd_ctx *c = memory_open("1G", 1);
  unsigned char b[512] = { 1 };

  ck_assert_int_eq(next_can_write(c), 0);
  ck_assert_int_eq(next_pwrite(c, b, sizeof b, 0, 0), -EPERM);
  ck_assert_int_eq(next_trim(c, P, 0, 0), -EPERM);
  ck_assert_int_eq(next_zero(c, P, 0, 0), -EPERM);
  assert_zero(c, 4096, 0);
}
END_TEST

/* ---- concurrency ------------------------------------------------------- */

#define CONC_THREADS 4
#define CONC_PAGES   512        /* pages 256 apart share a lock stripe */
#define CONC_OPS     3000

struct conc_worker {
  pthread_t tid;
  int id;
  unsigned rng;
  unsigned char *shadow;        /* CONC_PAGES * P: what its pages hold */
  unsigned char *buf;
  long bad;
};

static int conc_stop;

static unsigned
conc_rand(struct conc_worker *w)
{
  w->rng = w->rng * 1103515245u + 12345u;
  return w->rng >> 8;
}

/* One random operation on one of the worker's own pages (page % threads
 * == id), mirrored in the shadow; reads are checked against it. */
static void
conc_step(struct conc_worker *w, int seq)
{
  uint64_t page = (uint64_t)(conc_rand(w) % (CONC_PAGES / CONC_THREADS))
                  * CONC_THREADS + (uint64_t)w->id;
  uint32_t in = conc_rand(w) % P, n = 1 + conc_rand(w) % (P - in);
  uint64_t off = page * P;
  unsigned char *sh = w->shadow + off;

  switch (conc_rand(w) % 5) {
  case 0: case 1:
    pattern(w->buf, n, off + in, (unsigned)seq);
    w->bad += next_pwrite(mem_ctx, w->buf, n, off + in, 0) != 0;
    memcpy(sh + in, w->buf, n);
    break;
  case 2:
    w->bad += next_trim(mem_ctx, P, off, 0) != 0;
    memset(sh, 0, P);
    break;
  case 3:
    w->bad += next_zero(mem_ctx, n, off + in, 0) != 0;
    memset(sh + in, 0, n);
    break;
  default:
    w->bad += next_pread(mem_ctx, w->buf, P, off, 0) != 0;
    w->bad += memcmp(w->buf, sh, P) != 0;
  }
}

static void *
conc_worker_main(void *arg)
{
  struct conc_worker *w = arg;
  int i;

  for (i = 0; i < CONC_OPS; i++)
    conc_step(w, i);
  return NULL;
}

/* Walks the extents of the whole area while the workers run: page
 * pointers change under it, and it must still return a valid list. */
static void *
conc_extents_main(void *arg)
{
  long *bad = arg;

  while (!__atomic_load_n(&conc_stop, __ATOMIC_ACQUIRE)) {
    struct nbd_extents *e = nbd_extents_new(0, CONC_PAGES * (uint64_t)P);
    *bad += e == NULL ||
            next_extents(mem_ctx, CONC_PAGES * P, 0, 0, e) != 0 ||
            e->n == 0 ||
            e->v[e->n - 1].offset + e->v[e->n - 1].length !=
              CONC_PAGES * (uint64_t)P;
    nbd_extents_free(e);
  }
  return NULL;
}

START_TEST(test_concurrent_writers_and_readers_keep_pages_intact)
{
  static struct conc_worker w[CONC_THREADS];
  unsigned char *got;
  pthread_t ext_tid;
  long ext_bad = 0;
  int i;

  memory_open("1G", 0);
  for (i = 0; i < CONC_THREADS; i++) {
    w[i].id = i;
    w[i].rng = 12345u + (unsigned)i * 7919u;
    w[i].shadow = calloc(CONC_PAGES, P);
    w[i].buf = xmalloc(P);
    ck_assert_ptr_nonnull(w[i].shadow);
  }
  ck_assert_int_eq(pthread_create(&ext_tid, NULL, conc_extents_main,
                                  &ext_bad), 0);
  for (i = 0; i < CONC_THREADS; i++)
    ck_assert_int_eq(pthread_create(&w[i].tid, NULL, conc_worker_main,
                                    &w[i]), 0);
  for (i = 0; i < CONC_THREADS; i++)
    pthread_join(w[i].tid, NULL);
  __atomic_store_n(&conc_stop, 1, __ATOMIC_RELEASE);
  pthread_join(ext_tid, NULL);

  got = xmalloc(P);
  for (i = 0; i < CONC_THREADS; i++)
    ck_assert_int_eq(w[i].bad, 0);
  ck_assert_int_eq(ext_bad, 0);
  for (i = 0; i < CONC_PAGES; i++) {
    const unsigned char *want = w[i % CONC_THREADS].shadow + (size_t)i * P;
    ck_assert_int_eq(next_pread(mem_ctx, got, P, (uint64_t)i * P, 0), 0);
    ck_assert_msg(memcmp(got, want, P) == 0, "page %d differs", i);
  }
  for (i = 0; i < CONC_THREADS; i++) {
    free(w[i].shadow);
    free(w[i].buf);
  }
  free(got);
}
END_TEST

/* Readers race one thread that frees pages (trim, zero) and re-allocates
 * them (a whole-page write into the hole publishes a fresh page).  Every
 * page a reader sees must be wholly the pattern or wholly zero: freed
 * memory read after reuse for another page, or a half-copied page, shows
 * up as neither (and as a use-after-free under ASan, a race under TSan).
 * No two threads copy into or out of the same live page, so the only
 * shared page lifetimes are what the stripe locks guard. */
#define RACE_PAGES   64
#define RACE_READERS 3
#ifdef __SANITIZE_THREAD__
#define RACE_ROUNDS  20         /* TSan makes each free+allocate costly */
#else
#define RACE_ROUNDS  300
#endif

/* What the RACE_PAGES pages hold when allocated; computed once. */
static unsigned char *race_image;

static void *
race_mutator_main(void *arg)
{
  struct testlib_source src;
  long *bad = arg;
  int round, i;

  for (round = 0; round < RACE_ROUNDS; round++)
    for (i = 0; i < RACE_PAGES; i++) {
      uint64_t off = (uint64_t)i * P;
      *bad += (round & 1 ? next_zero(mem_ctx, P, off, 0)
                         : next_trim(mem_ctx, P, off, 0)) != 0;
      *bad += next_pwrite(mem_ctx, race_image + off, P, off, 0) != 0;
      /* A whole-page pwrite_from swaps in a new page: the old one is
       * recycled (and soon refilled) while readers may still hold it. */
      testlib_source_init(&src, race_image + off, P, SIZE_MAX);
      *bad += next_pwrite_from(mem_ctx, &src.src, P, off, 0) != 0;
    }
  __atomic_store_n(&conc_stop, 1, __ATOMIC_RELEASE);
  return NULL;
}

static void *
race_reader_main(void *arg)
{
  const uint32_t len = 3 * P;
  unsigned char *got = xmalloc(len);
  long *bad = arg;
  unsigned rng = (unsigned)(uintptr_t)arg;

  while (!__atomic_load_n(&conc_stop, __ATOMIC_ACQUIRE)) {
    uint64_t off, p, stop;
    rng = rng * 1103515245u + 12345u;
    off = (rng >> 8) % ((RACE_PAGES - 3) * (uint64_t)P);
    *bad += next_pread(mem_ctx, got, len, off, 0) != 0;
    /* Check each page's piece of the read separately. */
    for (p = off; p < off + len; p = stop) {
      stop = (p / P + 1) * P < off + len ? (p / P + 1) * P : off + len;
      *bad += !nbd_is_zero(got + (p - off), stop - p) &&
              memcmp(got + (p - off), race_image + p, stop - p) != 0;
    }
  }
  free(got);
  return NULL;
}

START_TEST(test_freeing_pages_under_readers_never_shows_freed_memory)
{
  pthread_t mut, rd[RACE_READERS];
  long bad[RACE_READERS + 1] = { 0 };
  int i;

  memory_open("1G", 0);
  race_image = xmalloc(RACE_PAGES * (size_t)P);
  pattern(race_image, RACE_PAGES * P, 0, 0);
  __atomic_store_n(&conc_stop, 0, __ATOMIC_RELEASE);
  for (i = 0; i < RACE_READERS; i++)
    ck_assert_int_eq(pthread_create(&rd[i], NULL, race_reader_main,
                                    &bad[i]), 0);
  ck_assert_int_eq(pthread_create(&mut, NULL, race_mutator_main,
                                  &bad[RACE_READERS]), 0);
  pthread_join(mut, NULL);
  for (i = 0; i < RACE_READERS; i++)
    pthread_join(rd[i], NULL);
  for (i = 0; i <= RACE_READERS; i++)
    ck_assert_int_eq(bad[i], 0);
  free(race_image);
}
END_TEST

/* One thread overwrites a page whole with pwrite_from, over and over,
 * cycling through three images; each time the replaced page goes to the
 * free list and the next write takes it straight back and refills it with
 * another image.  Readers must see one whole image, never a mix: that would be a page
 * refilled while a reader still copied from it. */
#ifdef __SANITIZE_THREAD__
#define SWAP_ROUNDS  2000
#else
#define SWAP_ROUNDS  40000
#endif

static unsigned char *swap_image[3];

static void *
swap_writer_main(void *arg)
{
  struct testlib_source src;
  long *bad = arg;
  int i;

  for (i = 0; i < SWAP_ROUNDS; i++) {
    testlib_source_init(&src, swap_image[i % 3], P, SIZE_MAX);
    *bad += next_pwrite_from(mem_ctx, &src.src, P, 0, 0) != 0;
  }
  __atomic_store_n(&conc_stop, 1, __ATOMIC_RELEASE);
  return NULL;
}

/* Readers take the page by pread (a copy under the page's lock) or by
 * pread_to (the sink reads the page under its lock). */
static void *
swap_reader_main(void *arg)
{
  unsigned char *got = xmalloc(P);
  long *bad = arg;
  int to = bad[2];

  while (!__atomic_load_n(&conc_stop, __ATOMIC_ACQUIRE)) {
    *bad += (to ? read_to(mem_ctx, got, P, 0, NULL)
                : next_pread(mem_ctx, got, P, 0, 0)) != 0;
    *bad += memcmp(got, swap_image[0], P) != 0 &&
            memcmp(got, swap_image[1], P) != 0 &&
            memcmp(got, swap_image[2], P) != 0;
  }
  free(got);
  return NULL;
}

START_TEST(test_replaced_pages_are_not_refilled_under_readers)
{
  pthread_t wr, rd[2];
  /* Per reader: bad count, unused, pread_to or not (swap_reader_main). */
  long bad[3][3] = { { 0, 0, 0 }, { 0, 0, 1 }, { 0, 0, 0 } };
  int i;

  memory_open("1G", 0);
  for (i = 0; i < 3; i++) {
    swap_image[i] = xmalloc(P);
    pattern(swap_image[i], P, 0, (unsigned)i + 1);
  }
  write_pattern(mem_ctx, P, 0, 1);
  __atomic_store_n(&conc_stop, 0, __ATOMIC_RELEASE);
  for (i = 0; i < 2; i++)
    ck_assert_int_eq(pthread_create(&rd[i], NULL, swap_reader_main, bad[i]),
                     0);
  ck_assert_int_eq(pthread_create(&wr, NULL, swap_writer_main, bad[2]), 0);
  pthread_join(wr, NULL);
  for (i = 0; i < 2; i++)
    pthread_join(rd[i], NULL);
  ck_assert_int_eq(bad[0][0], 0);
  ck_assert_int_eq(bad[1][0], 0);
  ck_assert_int_eq(bad[2][0], 0);
  for (i = 0; i < 3; i++)
    free(swap_image[i]);
}
END_TEST

/* ---- memory given back ------------------------------------------------- */

/* BURST_WRITERS threads pwrite_from BURST_LEN at offset 0 at once, every
 * other one failing halfway (a client gone mid-payload).  A barrier in the
 * source holds every payload until all writers have their fresh pages, as
 * when many clients send together.  The source records the pages each
 * payload is read into, and mincore() tells how many are still resident
 * once all are done: the disk's 32 MiB and at most the 32 MiB of free
 * pages the store keeps, not the burst's peak. */
#define BURST_WRITERS 8
#define BURST_LEN     (32 * MIB)
#define BURST_PAGES   (BURST_LEN / P)
#define BURST_KEEP    BURST_PAGES           /* free pages the store keeps */

struct burst_source {
  struct testlib_source t;
  int (*readv)(struct nbd_source *src, struct iovec *iov, int n);
  int waited;
  void **pages;
  size_t npages;
};

static pthread_barrier_t burst_barrier;
static unsigned char *burst_data;

static int
burst_readv(struct nbd_source *src, struct iovec *iov, int n)
{
  struct burst_source *b = (struct burst_source *)src;
  int i;

  if (!b->waited) {
    pthread_barrier_wait(&burst_barrier);
    b->waited = 1;
  }
  for (i = 0; i < n; i++)
    if (iov[i].iov_len == P && b->npages < BURST_PAGES)
      b->pages[b->npages++] = iov[i].iov_base;
  return b->readv(src, iov, n);
}

static void *
burst_writer_main(void *arg)
{
  struct burst_source *b = arg;

  (void)next_pwrite_from(mem_ctx, &b->t.src, BURST_LEN, 0, 0);
  return NULL;
}

/* Of the pages recorded by the sources, how many 4 KiB pages are
 * resident. */
static size_t
burst_resident(struct burst_source *b, int nb)
{
  unsigned char vec[P / 4096];
  size_t k, j, n = 0;
  int i;

  ck_assert_int_eq(sysconf(_SC_PAGESIZE), 4096);
  for (i = 0; i < nb; i++)
    for (k = 0; k < b[i].npages; k++) {
      ck_assert_int_eq(mincore(b[i].pages[k], P, vec), 0);
      for (j = 0; j < sizeof vec; j++)
        n += vec[j] & 1;
    }
  return n;
}

START_TEST(test_a_burst_of_large_writes_leaves_little_resident)
{
  static struct burst_source b[BURST_WRITERS];
  pthread_t tid[BURST_WRITERS];
  size_t resident, most;
  int round, i;

  memory_open("64M", 0);
  burst_data = xmalloc(BURST_LEN);
  pattern(burst_data, BURST_LEN, 0, 3);
  /* The pages installed and the ones kept free, in 4 KiB pages; slack for
   * khugepaged, which may fill a released 2 MiB range back in. */
  most = (BURST_PAGES + BURST_KEEP + 64) * (P / 4096);
  for (round = 0; round < 2; round++) {
    ck_assert_int_eq(pthread_barrier_init(&burst_barrier, NULL,
                                          BURST_WRITERS), 0);
    for (i = 0; i < BURST_WRITERS; i++) {
      testlib_source_init(&b[i].t, burst_data, BURST_LEN,
                          i & 1 ? BURST_LEN / 2 : SIZE_MAX);
      b[i].readv = b[i].t.src.readv;
      b[i].t.src.readv = burst_readv;
      b[i].waited = 0;
      b[i].pages = xmalloc(BURST_PAGES * sizeof *b[i].pages);
      b[i].npages = 0;
      ck_assert_int_eq(pthread_create(&tid[i], NULL, burst_writer_main,
                                      &b[i]), 0);
    }
    for (i = 0; i < BURST_WRITERS; i++)
      pthread_join(tid[i], NULL);
    pthread_barrier_destroy(&burst_barrier);
    resident = burst_resident(b, BURST_WRITERS);
    ck_assert_msg(resident <= most, "round %d: %zu KiB of the burst's pages "
                  "still resident, want at most %zu KiB", round,
                  resident * 4, most * 4);
    assert_pattern(mem_ctx, BURST_LEN, 0, 3);
    assert_zero(mem_ctx, 64 * MIB - BURST_LEN, BURST_LEN);
    for (i = 0; i < BURST_WRITERS; i++)
      free(b[i].pages);
  }
  free(burst_data);
}
END_TEST

/* ---- suite ------------------------------------------------------------- */

static void
add(Suite *s, const char *name, const TTest *t)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, NULL, memory_teardown);
  tcase_set_timeout(tc, 60);    /* the threaded tests under TSan */
  tcase_add_test(tc, t);
  suite_add_tcase(s, tc);
}

static Suite *
memory_suite(void)
{
  Suite *s = suite_create("memory");

  if (!testlib_require_layer(NBD_LAYER_BACKEND, "memory"))
    return s;

  add(s, "reads zeros before any write", test_reads_zeros_before_any_write);
  add(s, "reads back an unaligned write across pages",
      test_reads_back_unaligned_write_across_pages);
  add(s, "overwrites part of a written page",
      test_overwrites_part_of_a_written_page);
  add(s, "writing zeros to a hole allocates nothing",
      test_writing_zeros_to_a_hole_allocates_nothing);
  add(s, "connections share one store", test_connections_share_one_store);
  add(s, "pread_to passes pages, holes and parts",
      test_pread_to_passes_pages_holes_and_parts);
  add(s, "pwrite_from reads back an unaligned span",
      test_pwrite_from_reads_back_unaligned_span);
  add(s, "pwrite_from zeros keep holes and replace data",
      test_pwrite_from_zeros_keep_holes_and_replace_data);
  add(s, "pwrite_from: client gone mid-payload changes nothing",
      test_pwrite_from_client_gone_changes_nothing);
  add(s, "pwrite_from on read-only refuses and drains",
      test_pwrite_from_read_only_refuses_and_drains);
  add(s, "pwrite_from through an offset filter",
      test_pwrite_from_through_offset_filter);
  add(s, "accepts size 2^63-1 and writes near the end",
      test_accepts_size_2_63_minus_1_and_writes_near_the_end);
  add(s, "rejects size 2^63 with a message",
      test_rejects_size_2_63_with_a_message);
  add(s, "requires size", test_requires_size);
  add(s, "trim of whole pages leaves holes",
      test_trim_of_whole_pages_leaves_holes);
  add(s, "partial trim zeroes and keeps the page",
      test_partial_trim_zeroes_and_keeps_the_page);
  add(s, "zero frees whole pages and zeroes partial ones",
      test_zero_frees_whole_pages_and_zeroes_partial_ones);
  add(s, "zero with NO_HOLE keeps pages allocated",
      test_zero_with_no_hole_keeps_pages_allocated);
  add(s, "fast zero is accepted", test_fast_zero_is_accepted);
  add(s, "trim of a huge unwritten range is quick",
      test_trim_of_a_huge_unwritten_range_is_quick);
  add(s, "extents merge neighbours and clip to the request",
      test_extents_merge_neighbours_and_clip_to_the_request);
  add(s, "advertises native zero, FUA and cache",
      test_advertises_native_zero_fua_and_cache);
  add(s, "flush, FUA and cache succeed", test_flush_fua_and_cache_succeed);
  add(s, "read-only connection refuses writes",
      test_read_only_connection_refuses_writes);
  add(s, "concurrent writers and readers keep pages intact",
      test_concurrent_writers_and_readers_keep_pages_intact);
  add(s, "freeing pages under readers never shows freed memory",
      test_freeing_pages_under_readers_never_shows_freed_memory);
  add(s, "replaced pages are not refilled under readers",
      test_replaced_pages_are_not_refilled_under_readers);
  add(s, "a burst of large writes leaves little resident",
      test_a_burst_of_large_writes_leaves_little_resident);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(memory_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
