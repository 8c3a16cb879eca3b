/* Unit tests of 64-bit counts: zero, trim, cache and extents requests
 * that cross 2^32 bytes, through the engine (checks and emulation), the
 * filters that change ranges (offset, partition, truncate, blocksize, cow,
 * cache) over the recording backend, and the memory and file backends.
 * A layer that kept a 32-bit count or length anywhere on the way shows
 * up here as a request cut to its low 32 bits (6 GiB -> 2 GiB), a range
 * check that wraps, or an extent list that stops at 4 GiB.
 */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

#define KIB  UINT64_C(1024)
#define MIB  (1024 * KIB)
#define GIB  (1024 * MIB)
#define HOLE (NBD_EXTENT_HOLE | NBD_EXTENT_ZERO)

static struct testlib_caps c64_caps;
static struct testlib_stack c64_s;

static void
c64_setup(void)
{
  testlib_caps_default(&c64_caps);
  c64_caps.size = (int64_t)(16 * GIB);
  memset(&c64_s, 0, sizeof c64_s);
}

static void
c64_teardown(void)
{
  testlib_stack_free(&c64_s);
}

static struct nbd_ctx *
c64_open(const char *filters)
{
  testlib_stack(&c64_s, filters, &c64_caps);
  return c64_s.top;
}

/* The extents map of [offset, offset+count), as testlib_map. */
static const char *
c64_extents(struct nbd_ctx *top, uint64_t count, uint64_t offset,
            uint32_t flags)
{
  return testlib_map(next_extents, top, count, offset, flags);
}

#define ASSERT_LOG(want) \
  ck_assert_str_eq(testlib_log(), want)

/* ---- the engine ---------------------------------------------------------- */

START_TEST(test_engine_native_whole)
{
  struct nbd_ctx *top = c64_open("");

  ck_assert_int_eq(next_zero(top, 6 * GIB, GIB, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_trim(top, 6 * GIB, GIB, 0), 0);
  ck_assert_int_eq(next_cache(top, 6 * GIB, GIB, 0), 0);
  ck_assert_str_eq(c64_extents(top, 15 * GIB, GIB, 0),
                   "1073741824+16106127360/0");
  ASSERT_LOG("zero 1073741824+6442450944 flags=FUA; "
             "trim 1073741824+6442450944 flags=0; "
             "cache 1073741824+6442450944 flags=0; "
             "extents 1073741824+16106127360 flags=0");
}
END_TEST

/* Ranges that would wrap, or pass the end only in their high 32 bits. */
START_TEST(test_engine_range_checks)
{
  struct nbd_ctx *top = c64_open("");
  struct nbd_extents *e = nbd_extents_new(0, UINT64_MAX);

  ck_assert_int_eq(next_zero(top, 16 * GIB + 1, 0, 0), -ENOSPC);
  ck_assert_int_eq(next_zero(top, UINT64_MAX, 4096, 0), -ENOSPC);
  ck_assert_int_eq(next_zero(top, 2 * GIB, 15 * GIB, 0), -ENOSPC);
  ck_assert_int_eq(next_trim(top, UINT64_MAX - 4095, 4096, 0), -EINVAL);
  ck_assert_int_eq(next_cache(top, 12 * GIB, 8 * GIB, 0), -EINVAL);
  ck_assert_int_eq(next_extents(top, UINT64_MAX, 1, 0, e), -EINVAL);
  nbd_extents_free(e);
  ASSERT_LOG("");
}
END_TEST

/* Emulated zero and cache over 4 GiB: 1 MiB pieces to the very end. */
START_TEST(test_engine_emulated_over_4g)
{
  struct nbd_ctx *top;
  const char *log, *last;

  c64_caps.can_zero = NBD_ZERO_EMULATE;
  c64_caps.can_cache = NBD_CACHE_EMULATE;
  top = c64_open("");
  ck_assert_int_eq(next_zero(top, 4 * GIB + MIB, 0, 0), 0);
  ck_assert_uint_eq(c64_s.rec->calls[NBD_METHOD_PWRITE], 4097);
  ck_assert_uint_eq(c64_s.rec->calls[NBD_METHOD_ZERO], 0);
  log = testlib_log();
  last = strrchr(log, ';');
  ck_assert_ptr_nonnull(last);
  ck_assert_str_eq(last, "; pwrite 4294967296+1048576 flags=0");
  testlib_log_clear();
  ck_assert_int_eq(next_cache(top, 4 * GIB + 4096, 2 * GIB, 0), 0);
  ck_assert_uint_eq(c64_s.rec->calls[NBD_METHOD_PREAD], 4097);
  last = strrchr(testlib_log(), ';');
  ck_assert_ptr_nonnull(last);
  ck_assert_str_eq(last, "; pread 6442450944+4096 flags=0");
}
END_TEST

/* ---- filters over the recorder ---------------------------------------------- */

START_TEST(test_offset)
{
  struct nbd_ctx *top;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "offset"))
    return;
  top = c64_open("offset offset=1G");
  testlib_recorder_map(c64_s.rec, 0, 5 * GIB, 0);
  testlib_recorder_map(c64_s.rec, 5 * GIB, 11 * GIB, HOLE);
  ck_assert_int_eq(next_zero(top, 6 * GIB, 2 * GIB, 0), 0);
  ck_assert_int_eq(next_trim(top, 6 * GIB, 2 * GIB, 0), 0);
  ck_assert_int_eq(next_cache(top, 6 * GIB, 2 * GIB, 0), 0);
  ASSERT_LOG("zero 3221225472+6442450944 flags=0; "
             "trim 3221225472+6442450944 flags=0; "
             "cache 3221225472+6442450944 flags=0");
  ck_assert_str_eq(c64_extents(top, 8 * GIB, 0, 0),
                   "0+4294967296/0 4294967296+4294967296/3");
  ck_assert_int_eq(next_zero(top, 14 * GIB, 2 * GIB, 0), -ENOSPC);
}
END_TEST

static void
c64_le32(unsigned char *p, uint32_t v)
{
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

/* Partition 1 of an MBR: 12 GiB from sector 2048 (1 MiB). */
START_TEST(test_partition)
{
  unsigned char *mbr;
  struct nbd_ctx *top;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "partition"))
    return;
  ck_assert_int_eq(testlib_stack_new(&c64_s, "partition partition=1",
                                     &c64_caps), 0);
  testlib_recorder_ram_head(c64_s.rec, MIB);
  mbr = c64_s.rec->ram;
  mbr[0x1be + 4] = 0x83;
  c64_le32(mbr + 0x1be + 8, 2048);
  c64_le32(mbr + 0x1be + 12, (uint32_t)(12 * GIB / 512));
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  ck_assert_msg(testlib_stack_open(&c64_s, 0) == 0, "%s", c64_s.err);
  top = c64_s.top;
  ck_assert_int_eq(next_get_size(top), (int64_t)(12 * GIB));
  ck_assert_int_eq(next_zero(top, 6 * GIB, GIB, 0), 0);
  ck_assert_int_eq(next_trim(top, 11 * GIB, GIB, 0), 0);
  ck_assert_int_eq(next_cache(top, 5 * GIB, 0, 0), 0);
  ck_assert_str_eq(c64_extents(top, 12 * GIB, 0, 0), "0+12884901888/0");
  ASSERT_LOG("zero 1074790400+6442450944 flags=0; "
             "trim 1074790400+11811160064 flags=0; "
             "cache 1048576+5368709120 flags=0; "
             "extents 1048576+12884901888 flags=0");
  ck_assert_int_eq(next_trim(top, 11 * GIB + 1, GIB, 0), -EINVAL);
}
END_TEST

/* 16 GiB truncated up to 20 GiB: the part below the old end goes below
 * whole, the rest is a hole. */
START_TEST(test_truncate)
{
  struct nbd_ctx *top;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "truncate"))
    return;
  top = c64_open("truncate truncate=20G");
  ck_assert_int_eq(next_zero(top, 6 * GIB, 12 * GIB, 0), 0);
  ck_assert_int_eq(next_trim(top, 8 * GIB, 2 * GIB, 0), 0);
  ck_assert_int_eq(next_cache(top, 19 * GIB, GIB, 0), 0);
  ck_assert_int_eq(next_cache(top, GIB, 19 * GIB, 0), 0);
  ASSERT_LOG("zero 12884901888+4294967296 flags=0; "
             "trim 2147483648+8589934592 flags=0; "
             "cache 1073741824+16106127360 flags=0");
  testlib_log_clear();
  ck_assert_str_eq(c64_extents(top, 8 * GIB, 12 * GIB, 0),
                   "12884901888+4294967296/0 17179869184+4294967296/3");
  ASSERT_LOG("extents 12884901888+4294967296 flags=0");
}
END_TEST

/* minblock 4096: maxlen's default is 4 GiB - 4096; an unaligned zero is
 * read-modify-written at both ends, its middle zeroed in maxlen pieces. */
START_TEST(test_blocksize)
{
  struct nbd_ctx *top;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "blocksize"))
    return;
  top = c64_open("blocksize minblock=4096");
  ck_assert_int_eq(next_zero(top, 6 * GIB, 512, 0), 0);
  ASSERT_LOG("pread 0+4096 flags=0; pwrite 0+4096 flags=0; "
             "zero 4096+4294963200 flags=0; "
             "zero 4294967296+2147483648 flags=0; "
             "pread 6442450944+4096 flags=0; pwrite 6442450944+4096 flags=0");
  testlib_log_clear();
  ck_assert_int_eq(next_trim(top, 6 * GIB, 512, 0), 0);
  ASSERT_LOG("trim 4096+4294963200 flags=0; "
             "trim 4294967296+2147483648 flags=0");
  testlib_log_clear();
  ck_assert_int_eq(next_cache(top, 6 * GIB, 0, 0), 0);
  ASSERT_LOG("cache 0+4294963200 flags=0; "
             "cache 4294963200+2147487744 flags=0");
  testlib_log_clear();
  /* Asked below for maxlen; the recorder answers for the whole disk,
   * clipped to the request. */
  ck_assert_str_eq(c64_extents(top, 6 * GIB, 0, 0), "0+6442450944/0");
  ASSERT_LOG("extents 0+4294963200 flags=0");
}
END_TEST

/* cow keeps every zero and trim: below sees none, and extents merge the
 * overlay's 6 GiB hole with the layer below's data after it. */
START_TEST(test_cow)
{
  struct nbd_ctx *top;
  unsigned char *buf = malloc(8192), want[1000];

  if (!testlib_require_layer(NBD_LAYER_FILTER, "cow"))
    return;
  ck_assert_ptr_nonnull(buf);
  ck_assert_int_eq(testlib_stack_new(&c64_s, "cow", &c64_caps), 0);
  testlib_recorder_ram_head(c64_s.rec, MIB);
  testlib_pattern(c64_s.rec->ram, MIB, 0);
  memcpy(want, c64_s.rec->ram, sizeof want);
  ck_assert_msg(testlib_stack_open(&c64_s, 0) == 0, "%s", c64_s.err);
  top = c64_s.top;
  ck_assert_int_eq(next_zero(top, 6 * GIB, 1000, 0), 0);
  ck_assert_int_eq(next_trim(top, 8 * GIB, 5 * GIB, 0), 0);
  ck_assert_uint_eq(c64_s.rec->calls[NBD_METHOD_ZERO], 0);
  ck_assert_uint_eq(c64_s.rec->calls[NBD_METHOD_TRIM], 0);
  ck_assert_uint_eq(c64_s.rec->calls[NBD_METHOD_PWRITE], 0);
  ck_assert_int_eq(next_pread(top, buf, 8192, 0, 0), 0);
  ck_assert_mem_eq(buf, want, sizeof want);
  ck_assert(nbd_is_zero(buf + 1000, 8192 - 1000));
  ck_assert_int_eq(next_pread(top, buf, 8192, 6 * GIB, 0), 0);
  ck_assert(nbd_is_zero(buf, 8192));
  testlib_log_clear();
  /* [0, 64K) data (the partial block), 64K..13G zero, then below. */
  ck_assert_str_eq(c64_extents(top, 16 * GIB, 0, 0),
                   "0+65536/0 65536+13958578176/3 "
                   "13958643712+3221225472/0");
  ASSERT_LOG("extents 13958643712+3221225472 flags=0");
  free(buf);
}
END_TEST

/* cache sends zero and trim below whole, and its extents keep a dirty
 * block as data inside a hole of 8 GiB. */
START_TEST(test_cache)
{
  struct nbd_ctx *top;
  unsigned char buf[4096];

  if (!testlib_require_layer(NBD_LAYER_FILTER, "cache"))
    return;
  top = c64_open("cache");
  testlib_recorder_map(c64_s.rec, 0, 16 * GIB, HOLE);
  memset(buf, 0xab, sizeof buf);
  ck_assert_int_eq(next_pwrite(top, buf, sizeof buf, 5 * GIB, 0), 0);
  testlib_log_clear();
  ck_assert_str_eq(c64_extents(top, 8 * GIB, 0, 0),
                   "0+5368709120/3 5368709120+65536/0 "
                   "5368774656+3221159936/3");
  ck_assert_int_eq(next_zero(top, 6 * GIB, GIB, 0), 0);
  ck_assert_int_eq(next_trim(top, 6 * GIB, GIB, 0), 0);
  ASSERT_LOG("extents 0+8589934592 flags=0; "
             "zero 1073741824+6442450944 flags=0; "
             "trim 1073741824+6442450944 flags=0");
  /* The zero dropped the dirty block: all hole now. */
  ck_assert_str_eq(c64_extents(top, 8 * GIB, 0, 0), "0+8589934592/3");
  ck_assert_int_eq(next_pread(top, buf, sizeof buf, 5 * GIB, 0), 0);
  ck_assert(nbd_is_zero(buf, sizeof buf));
}
END_TEST

/* ---- backends ------------------------------------------------------------- */

static struct nbd_export *c64_exp;
static struct nbd_ctx *c64_ctx;
static char c64_path[64];

static struct nbd_ctx *
c64_backend(const char *name, const char *key, const char *value)
{
  const struct nbd_layer_ops *ops = registry_find(NBD_LAYER_BACKEND, name);
  struct nbd_layer *l;
  char err[256] = "";

  ck_assert_ptr_nonnull(ops);
  l = engine_layer_new(ops, "");
  ck_assert_ptr_nonnull(l);
  ck_assert_msg(params_set(l, key, value, err, sizeof err) == 0, "%s", err);
  ck_assert_msg(engine_layer_setup(l, err, sizeof err) == 0, "%s", err);
  c64_exp = engine_export_new("");
  ck_assert_ptr_nonnull(c64_exp);
  engine_export_push(c64_exp, l);
  ck_assert_int_eq(engine_export_finish(c64_exp, err, sizeof err), 0);
  c64_ctx = engine_open(c64_exp, 0, NULL, err, sizeof err);
  ck_assert_msg(c64_ctx != NULL, "%s", err);
  return c64_ctx;
}

static void
c64_backend_teardown(void)
{
  if (c64_ctx)
    engine_close(c64_ctx);
  engine_export_free(c64_exp);
  c64_ctx = NULL;
  c64_exp = NULL;
  if (c64_path[0])
    unlink(c64_path);
  c64_path[0] = '\0';
}

/* Data at 0, 4 GiB and 8 GiB; a zero of [1 GiB, 7 GiB) and a trim of
 * [7 GiB, 13 GiB) leave only the first, and the map is one hole of
 * almost 16 GiB after it, whose length needs 64 bits. */
static void
c64_backend_check(struct nbd_ctx *top, const char *want_map)
{
  unsigned char buf[4096];

  memset(buf, 0xcd, sizeof buf);
  ck_assert_int_eq(next_pwrite(top, buf, sizeof buf, 0, 0), 0);
  ck_assert_int_eq(next_pwrite(top, buf, sizeof buf, 4 * GIB, 0), 0);
  ck_assert_int_eq(next_pwrite(top, buf, sizeof buf, 8 * GIB, 0), 0);
  ck_assert_int_eq(next_zero(top, 6 * GIB, GIB, 0), 0);
  ck_assert_int_eq(next_trim(top, 6 * GIB, 7 * GIB, 0), 0);
  ck_assert_int_eq(next_cache(top, 6 * GIB, GIB, 0), 0);
  ck_assert_int_eq(next_pread(top, buf, sizeof buf, 4 * GIB, 0), 0);
  ck_assert(nbd_is_zero(buf, sizeof buf));
  ck_assert_int_eq(next_pread(top, buf, sizeof buf, 8 * GIB, 0), 0);
  ck_assert(nbd_is_zero(buf, sizeof buf));
  ck_assert_int_eq(next_pread(top, buf, sizeof buf, 0, 0), 0);
  ck_assert_int_eq(buf[4095], 0xcd);
  ck_assert_str_eq(c64_extents(top, 16 * GIB, 0, 0), want_map);
}

START_TEST(test_memory)
{
  /* Pages of 32 KiB: the first holds the data. */
  c64_backend_check(c64_backend("memory", "size", "16G"),
                    "0+32768/0 32768+17179836416/3");
}
END_TEST

START_TEST(test_file)
{
  int fd, holes;

  strcpy(c64_path, "/tmp/check_count64.XXXXXX");
  fd = mkstemp(c64_path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(ftruncate(fd, (off_t)(16 * GIB)), 0);
  /* A filesystem that cannot punch holes or find them cannot tell. */
  ck_assert_int_eq(pwrite(fd, "x", 1, (off_t)GIB), 1);
  holes = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    (off_t)GIB, 4096) == 0 &&
          lseek(fd, 0, SEEK_DATA) == -1 && errno == ENXIO;
  close(fd);
  if (!holes) {
    printf("SKIP: the filesystem under /tmp has no holes\n");
    return;
  }
  c64_backend_check(c64_backend("file", "file", c64_path),
                    "0+4096/0 4096+17179865088/3");
}
END_TEST

int
main(void)
{
  Suite *s = suite_create("count64");
  TCase *tc = tcase_create("filters");
  TCase *tb = tcase_create("backends");
  SRunner *sr;
  int failed;

  tcase_add_checked_fixture(tc, c64_setup, c64_teardown);
  tcase_add_test(tc, test_engine_native_whole);
  tcase_add_test(tc, test_engine_range_checks);
  tcase_add_test(tc, test_engine_emulated_over_4g);
  tcase_add_test(tc, test_offset);
  tcase_add_test(tc, test_partition);
  tcase_add_test(tc, test_truncate);
  tcase_add_test(tc, test_blocksize);
  tcase_add_test(tc, test_cow);
  tcase_add_test(tc, test_cache);
  suite_add_tcase(s, tc);
  tcase_add_checked_fixture(tb, NULL, c64_backend_teardown);
  tcase_add_test(tb, test_memory);
  tcase_add_test(tb, test_file);
  suite_add_tcase(s, tb);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
