/* Unit tests of the depth method (qemu:allocation-depth) over the
 * recording backend: the engine turns a backend's NBD_DEPTH_ONE into one
 * extent and checks ranges; cow answers 1 for its overlay and 1 + the
 * depth below elsewhere (0 staying 0 is not reachable: no backend says
 * 0); truncate keeps the depth below and gives its extension depth 1;
 * cache gives a dirty block depth 1; blocksize asks below over whole
 * blocks; offset passes it shifted (check_window.c); the other filters
 * pass it through.  The recorder's depth stands for a backing chain below.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

#define KIB  UINT64_C(1024)
#define MIB  (1024 * KIB)

static struct testlib_caps d_caps;
static struct testlib_stack d_s;

static void
d_setup(void)
{
  testlib_caps_default(&d_caps);
  d_caps.size = (int64_t)(4 * MIB);
  memset(&d_s, 0, sizeof d_s);
}

static void
d_teardown(void)
{
  testlib_stack_free(&d_s);
}

static struct nbd_ctx *
d_open(const char *filters, uint32_t depth_below)
{
  testlib_stack(&d_s, filters, &d_caps);
  d_s.rec->depth = depth_below;
  return d_s.top;
}

/* The depth map of [offset, offset+count), as testlib_map. */
static const char *
d_map(struct nbd_ctx *top, uint64_t count, uint64_t offset, uint32_t flags)
{
  return testlib_map(next_depth, top, count, offset, flags);
}

START_TEST(test_backend_depth_one)
{
  struct nbd_ctx *top = d_open("", 0);
  struct nbd_extents *e = nbd_extents_new(0, UINT64_MAX);

  ck_assert_str_eq(d_map(top, 3 * MIB, MIB, 0), "1048576+3145728/1");
  ck_assert_str_eq(testlib_log(), "depth 1048576+3145728 flags=0");
  ck_assert_int_eq(next_depth(top, 4 * MIB, 1, 0, e), -EINVAL);
  ck_assert_int_eq(next_depth(top, UINT64_MAX, 4096, 0, e), -EINVAL);
  ck_assert_int_eq(next_depth(top, 0, 0, 0, e), 0);
  ck_assert_uint_eq(e->n, 0);
  nbd_extents_free(e);
  d_s.rec->fail[NBD_METHOD_DEPTH] = -EIO;
  e = nbd_extents_new(0, MIB);
  ck_assert_int_eq(next_depth(top, MIB, 0, 0, e), -EIO);
  nbd_extents_free(e);
}
END_TEST

/* Written, zeroed and trimmed blocks are the overlay's (1); the rest is
 * one deeper than below: 2 over a plain backend, 4 over a chain of 3. */
START_TEST(test_cow)
{
  static const uint32_t below[] = { 0, 3 };
  static const char *const want[] = {
    "0+65536/2 65536+65536/1 131072+851968/2 983040+196608/1 "
    "1179648+917504/2 2097152+65536/1 2162688+2031616/2",
    "0+65536/4 65536+65536/1 131072+851968/4 983040+196608/1 "
    "1179648+917504/4 2097152+65536/1 2162688+2031616/4",
  };
  unsigned char buf[4096];
  size_t i;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "cow"))
    return;
  for (i = 0; i < 2; i++) {
    struct nbd_ctx *top = d_open("cow", below[i]);

    memset(buf, 0x5a, sizeof buf);
    ck_assert_int_eq(next_pwrite(top, buf, 100, 65536 + 7, 0), 0);
    ck_assert_int_eq(next_zero(top, 3 * 65536, 15 * 65536, 0), 0);
    ck_assert_int_eq(next_trim(top, 65536, 2 * MIB, 0), 0);
    testlib_log_clear();
    ck_assert_str_eq(d_map(top, 4 * MIB, 0, 0), want[i]);
    /* Below is asked only for what is below. */
    ck_assert_str_eq(testlib_log(),
                     "depth 0+65536 flags=0; depth 131072+851968 flags=0; "
                     "depth 1179648+917504 flags=0; "
                     "depth 2162688+2031616 flags=0");
    /* REQ_ONE: the first run only. */
    ck_assert_str_eq(d_map(top, 4 * MIB - 65536, 65536,
                           NBD_CMD_FLAG_REQ_ONE),
                     "65536+65536/1");
    testlib_stack_free(&d_s);
  }
}
END_TEST

START_TEST(test_cow_over_cow)
{
  struct nbd_ctx *top;
  unsigned char buf[4096];

  if (!testlib_require_layer(NBD_LAYER_FILTER, "cow"))
    return;
  top = d_open("cow | cow", 0);
  memset(buf, 1, sizeof buf);
  /* Written through the top: only the top overlay has it. */
  ck_assert_int_eq(next_pwrite(top, buf, sizeof buf, MIB, 0), 0);
  ck_assert_str_eq(d_map(top, 2 * MIB, 0, 0),
                   "0+1048576/3 1048576+65536/1 1114112+983040/3");
  /* Written into the lower overlay (through its own context). */
  ck_assert_int_eq(next_pwrite(top->next, buf, sizeof buf, 0, 0), 0);
  ck_assert_str_eq(d_map(top, 2 * MIB, 0, 0),
                   "0+65536/2 65536+983040/3 1048576+65536/1 "
                   "1114112+983040/3");
}
END_TEST

/* 4 MiB truncated to 5 MiB: below as below says, the extension at 1. */
START_TEST(test_truncate)
{
  struct nbd_ctx *top;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "truncate"))
    return;
  top = d_open("truncate truncate=5M", 2);
  ck_assert_str_eq(d_map(top, 2 * MIB, 3 * MIB, 0),
                   "3145728+1048576/2 4194304+1048576/1");
  ck_assert_str_eq(testlib_log(), "depth 3145728+1048576 flags=0");
  testlib_stack_free(&d_s);
  top = d_open("truncate truncate=1M", 2);
  ck_assert_str_eq(d_map(top, MIB, 0, 0), "0+1048576/2");
}
END_TEST

/* A dirty block of the cache is its own (1) until written back. */
START_TEST(test_cache)
{
  struct nbd_ctx *top;
  unsigned char buf[4096];

  if (!testlib_require_layer(NBD_LAYER_FILTER, "cache"))
    return;
  top = d_open("cache", 2);
  ck_assert_str_eq(d_map(top, 4 * MIB, 0, 0), "0+4194304/2");
  memset(buf, 7, sizeof buf);
  ck_assert_int_eq(next_pwrite(top, buf, sizeof buf, MIB, 0), 0);
  ck_assert_str_eq(d_map(top, 4 * MIB, 0, 0),
                   "0+1048576/2 1048576+65536/1 1114112+3080192/2");
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(d_map(top, 4 * MIB, 0, 0), "0+4194304/2");
}
END_TEST

/* Asked below over whole blocks, answered for the request. */
START_TEST(test_blocksize)
{
  struct nbd_ctx *top;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "blocksize"))
    return;
  top = d_open("blocksize minblock=4096", 0);
  ck_assert_str_eq(d_map(top, 5000, 100, 0), "100+5000/1");
  ck_assert_str_eq(testlib_log(), "depth 0+8192 flags=0");
}
END_TEST

/* Filters that do not change where data lives pass the depth through:
 * one call below with the same range, the same answer. */
START_TEST(test_passthrough_filters)
{
  static const char *const filters[] = {
    "offset offset=1M", "noextents", "fua", "nozero", "nocache",
    "delay", "error", "multi-conn", "noparallel", "blocksize-policy",
  };
  size_t i;

  for (i = 0; i < sizeof filters / sizeof filters[0]; i++) {
    char name[32];
    struct nbd_ctx *top;

    sscanf(filters[i], "%31s", name);
    if (!testlib_require_layer(NBD_LAYER_FILTER, name))
      continue;
    top = d_open(filters[i], 5);
    ck_assert_msg(strcmp(d_map(top, MIB, 4096, 0), "4096+1048576/5") == 0,
                  "%s: %s", filters[i], d_map(top, MIB, 4096, 0));
    testlib_stack_free(&d_s);
  }
}
END_TEST

int
main(void)
{
  Suite *s = suite_create("depth");
  TCase *tc = tcase_create("depth");
  SRunner *sr;
  int failed;

  tcase_add_checked_fixture(tc, d_setup, d_teardown);
  tcase_add_test(tc, test_backend_depth_one);
  tcase_add_test(tc, test_cow);
  tcase_add_test(tc, test_cow_over_cow);
  tcase_add_test(tc, test_truncate);
  tcase_add_test(tc, test_cache);
  tcase_add_test(tc, test_blocksize);
  tcase_add_test(tc, test_passthrough_filters);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
