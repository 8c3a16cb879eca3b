/* Unit tests for filters/readahead.c over the recording backend: a run
 * of sequential reads makes cache requests below, ahead of the reads and
 * never behind them; reads elsewhere make none; a write ends the run;
 * a layer below without cache gets none (and the reads still work); the
 * thread stops at close.  The prefetch thread runs on its own, so the
 * tests wait for its cache requests (bounded by Check's timeout), then
 * close the stack before reading the log.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testlib.h"

static struct testlib_caps ra_caps;
static struct testlib_stack ra_s;
static unsigned char ra_buf[65536];

static void
ra_setup(void)
{
  testlib_caps_default(&ra_caps);
  ra_caps.size = 16 << 20;
}

static void
ra_teardown(void)
{
  testlib_stack_free(&ra_s);
}

static void
ra_wait_cache(unsigned n)
{
  struct timespec ts = { 0, 1000 * 1000 };

  while (testlib_calls_of(ra_s.rec, NBD_METHOD_CACHE) < n)
    nanosleep(&ts, NULL);
}

/* Checks every cache request in the log starts at or after from. */
static void
ra_caches_from(const char *log, unsigned long long from)
{
  const char *p = log;
  unsigned long long off, len;

  while ((p = strstr(p, "cache ")) != NULL) {
    ck_assert_int_eq(sscanf(p, "cache %llu+%llu", &off, &len), 2);
    ck_assert_msg(off >= from, "cache at %llu, before %llu: %s", off, from,
                  log);
    p += 6;
  }
}

START_TEST(test_sequential_reads_prefetch_ahead)
{
  uint64_t off;

  testlib_stack(&ra_s, "readahead", &ra_caps);
  for (off = 0; off < 4 * 65536; off += 65536)
    ck_assert_int_eq(next_pread(ra_s.top, ra_buf, 65536, off, 0), 0);
  ra_wait_cache(1);
  testlib_stack_free(&ra_s);
  /* The second read continued the run: prefetch starts past it. */
  ra_caches_from(testlib_log(), 2 * 65536);
  ck_assert_ptr_nonnull(strstr(testlib_log(), "cache 131072+"));
}
END_TEST

START_TEST(test_random_reads_prefetch_nothing)
{
  static const uint64_t offs[] = { 8 << 20, 0, 4 << 20, 65536, 12 << 20 };
  size_t i;

  testlib_stack(&ra_s, "readahead", &ra_caps);
  for (i = 0; i < sizeof offs / sizeof offs[0]; i++)
    ck_assert_int_eq(next_pread(ra_s.top, ra_buf, 4096, offs[i], 0), 0);
  testlib_stack_free(&ra_s);
  ck_assert_ptr_null(strstr(testlib_log(), "cache"));
}
END_TEST

START_TEST(test_write_ends_the_run)
{
  testlib_stack(&ra_s, "readahead", &ra_caps);
  ck_assert_int_eq(next_pread(ra_s.top, ra_buf, 4096, 0, 0), 0);
  ck_assert_int_eq(next_pwrite(ra_s.top, ra_buf, 512, 1 << 20, 0), 0);
  ck_assert_int_eq(next_pread(ra_s.top, ra_buf, 4096, 4096, 0), 0);
  ck_assert_int_eq(next_zero(ra_s.top, 512, 1 << 20, 0), 0);
  ck_assert_int_eq(next_pread(ra_s.top, ra_buf, 4096, 8192, 0), 0);
  testlib_stack_free(&ra_s);
  ck_assert_ptr_null(strstr(testlib_log(), "cache"));
}
END_TEST

START_TEST(test_window_grows)
{
  uint64_t off;
  unsigned long long o, len, maxend = 0;
  const char *p;

  testlib_stack(&ra_s, "readahead", &ra_caps);
  for (off = 0; off < 16 * 4096; off += 4096)
    ck_assert_int_eq(next_pread(ra_s.top, ra_buf, 4096, off, 0), 0);
  ra_wait_cache(1);
  testlib_stack_free(&ra_s);
  for (p = testlib_log(); (p = strstr(p, "cache ")) != NULL; p += 6) {
    ck_assert_int_eq(sscanf(p, "cache %llu+%llu", &o, &len), 2);
    if (o + len > maxend)
      maxend = o + len;
  }
  /* 15 reads of the run doubled the window past 1 MiB ahead (8 MiB cap),
   * but only what was queued before close was sent. */
  ck_assert_uint_le(maxend, 16 * 4096 + (8u << 20));
  ck_assert_uint_gt(maxend, 16 * 4096);
}
END_TEST

START_TEST(test_no_cache_below_does_nothing)
{
  char *err;
  uint64_t off;

  ra_caps.can_cache = NBD_CACHE_NONE;
  testlib_stderr_begin();
  testlib_stack(&ra_s, "readahead", &ra_caps);
  err = testlib_stderr_end();
  ck_assert_ptr_nonnull(strstr(err, "cannot cache"));
  free(err);
  for (off = 0; off < 4 * 4096; off += 4096)
    ck_assert_int_eq(next_pread(ra_s.top, ra_buf, 4096, off, 0), 0);
  testlib_stack_free(&ra_s);
  ck_assert_ptr_null(strstr(testlib_log(), "cache"));
}
END_TEST

START_TEST(test_reopen_restarts_thread)
{
  uint64_t off;

  testlib_stack(&ra_s, "readahead", &ra_caps);
  ck_assert_int_eq(next_reopen(ra_s.top, 0), 0);
  for (off = 0; off < 4 * 65536; off += 65536)
    ck_assert_int_eq(next_pread(ra_s.top, ra_buf, 65536, off, 0), 0);
  ra_wait_cache(1);
}
END_TEST

START_TEST(test_no_keys)
{
  char err[256];

  ck_assert_ptr_null(testlib_filter_new("readahead", "window=1M", err,
                                        sizeof err));
}
END_TEST

static Suite *
ra_suite(void)
{
  Suite *s = suite_create("readahead");
  TCase *tc = tcase_create("readahead");

  if (!testlib_require_layer(NBD_LAYER_FILTER, "readahead"))
    return s;
  tcase_add_checked_fixture(tc, ra_setup, ra_teardown);
  tcase_add_test(tc, test_sequential_reads_prefetch_ahead);
  tcase_add_test(tc, test_random_reads_prefetch_nothing);
  tcase_add_test(tc, test_write_ends_the_run);
  tcase_add_test(tc, test_window_grows);
  tcase_add_test(tc, test_no_cache_below_does_nothing);
  tcase_add_test(tc, test_reopen_restarts_thread);
  tcase_add_test(tc, test_no_keys);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(ra_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
