/* Unit tests for filters/scan.c over the recording backend: the thread
 * walks the whole disk in scan-size cache requests, in order, once;
 * scan-forever starts again and still stops at close; a second
 * connection does not start a second scan; scan-clock=false starts again
 * at 0; a layer below without cache gets nothing; bad keys are refused.
 * The tests wait for the thread's requests (bounded by Check's timeout)
 * and read the log after close, when the thread is joined.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testlib.h"

static struct testlib_caps sc_caps;
static struct testlib_stack sc_s;

static void
sc_setup(void)
{
  testlib_caps_default(&sc_caps);
}

static void
sc_teardown(void)
{
  testlib_stack_free(&sc_s);
}

/* stack_new and engine_open, the log cleared before opening (the thread
 * starts in open: testlib_stack_open would clear the log after it, maybe
 * after the thread's first requests). */
static void
sc_open(const char *filters)
{
  ck_assert_int_eq(testlib_stack_new(&sc_s, filters, &sc_caps), 0);
  testlib_log_clear();
  sc_s.top = engine_open(sc_s.exp, 0, NULL, sc_s.err, sizeof sc_s.err);
  ck_assert_msg(sc_s.top != NULL, "open: %s", sc_s.err);
}

static void
sc_wait_cache(unsigned n)
{
  struct timespec ts = { 0, 1000 * 1000 };

  while (testlib_calls_of(sc_s.rec, NBD_METHOD_CACHE) < n)
    nanosleep(&ts, NULL);
}

START_TEST(test_scans_whole_disk_once)
{
  static const char want[] = "cache 0+262144 flags=0; "
    "cache 262144+262144 flags=0; cache 524288+262144 flags=0; "
    "cache 786432+262144 flags=0";
  struct timespec ts = { 0, 20 * 1000 * 1000 };

  sc_open("scan scan-size=256k");
  sc_wait_cache(4);
  nanosleep(&ts, NULL);       /* a fifth would be a bug; give it a chance */
  testlib_stack_free(&sc_s);
  ck_assert_str_eq(testlib_log(), want);
}
END_TEST

START_TEST(test_forever_stops_at_close)
{
  sc_open("scan scan-size=512k scan-forever=true");
  sc_wait_cache(9);
  testlib_stack_free(&sc_s);    /* returns: the thread stopped */
  ck_assert_ptr_nonnull(strstr(testlib_log(), "cache 0+524288 flags=0; "
                               "cache 524288+524288 flags=0; "
                               "cache 0+524288 flags=0"));
}
END_TEST

START_TEST(test_one_scan_per_export_and_clock)
{
  struct nbd_ctx *other;
  char err[256];

  /* scan-clock=false: the position goes back to 0 when all clients have
   * left; a second connection meanwhile starts no second scan. */
  sc_open("scan scan-size=256k scan-clock=false");
  other = engine_open(sc_s.exp, 0, NULL, err, sizeof err);
  ck_assert_ptr_nonnull(other);
  sc_wait_cache(4);
  engine_close(other);
  engine_close(sc_s.top);
  sc_s.top = NULL;
  ck_assert_uint_eq(testlib_calls_of(sc_s.rec, NBD_METHOD_CACHE), 4);
  /* From 0 again: four more requests, then it is done. */
  sc_s.top = engine_open(sc_s.exp, 0, NULL, sc_s.err, sizeof sc_s.err);
  ck_assert_ptr_nonnull(sc_s.top);
  sc_wait_cache(8);
  engine_close(sc_s.top);
  sc_s.top = NULL;
  ck_assert_uint_eq(testlib_calls_of(sc_s.rec, NBD_METHOD_CACHE), 8);
}
END_TEST

START_TEST(test_clock_resumes)
{
  /* scan-clock=true (default): a finished scan does not start again. */
  sc_open("scan scan-size=512k");
  sc_wait_cache(2);
  engine_close(sc_s.top);
  sc_s.top = NULL;
  sc_s.top = engine_open(sc_s.exp, 0, NULL, sc_s.err, sizeof sc_s.err);
  ck_assert_ptr_nonnull(sc_s.top);
  engine_close(sc_s.top);
  sc_s.top = NULL;
  ck_assert_uint_eq(testlib_calls_of(sc_s.rec, NBD_METHOD_CACHE), 2);
}
END_TEST

START_TEST(test_no_cache_below_does_nothing)
{
  char *err;

  sc_caps.can_cache = NBD_CACHE_NONE;
  testlib_stderr_begin();
  sc_open("scan");
  err = testlib_stderr_end();
  ck_assert_ptr_nonnull(strstr(err, "cannot cache"));
  free(err);
  testlib_stack_free(&sc_s);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_bad_keys_refused)
{
  char err[256];

  ck_assert_ptr_null(testlib_filter_new("scan", "scan-size=3000", err,
                                        sizeof err));
  ck_assert_ptr_nonnull(strstr(err, "power of 2"));
  ck_assert_ptr_null(testlib_filter_new("scan", "scan-size=2G", err,
                                        sizeof err));
  ck_assert_ptr_null(testlib_filter_new("scan", "scan-ahead=sometimes", err,
                                        sizeof err));
  ck_assert_ptr_null(testlib_filter_new("scan", "scan-speed=1", err,
                                        sizeof err));
}
END_TEST

static Suite *
sc_suite(void)
{
  Suite *s = suite_create("scan");
  TCase *tc = tcase_create("scan");

  if (!testlib_require_layer(NBD_LAYER_FILTER, "scan"))
    return s;
  tcase_add_checked_fixture(tc, sc_setup, sc_teardown);
  tcase_add_test(tc, test_scans_whole_disk_once);
  tcase_add_test(tc, test_forever_stops_at_close);
  tcase_add_test(tc, test_one_scan_per_export_and_clock);
  tcase_add_test(tc, test_clock_resumes);
  tcase_add_test(tc, test_no_cache_below_does_nothing);
  tcase_add_test(tc, test_bad_keys_refused);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(sc_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
