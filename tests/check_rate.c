/* Unit tests for filters/rate.c over the recording backend: reads and
 * writes reach the layer below unchanged after their wait; at a rate of
 * 8M (1 MiB/s) a 256 KiB read waits at least 0.24 s (checked from below
 * only), and two in a row at least 0.48 s; zero, trim, cache and flush
 * are free; a rate file wins over the key and a bad one is logged and
 * ignored; bad values are refused.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testlib.h"

static struct testlib_caps rate_caps;
static struct testlib_stack rate_s;
static unsigned char *rate_buf;
static char rate_dir[] = "/tmp/check_rate.XXXXXX";
static char rate_file[600];
static char rate_params[800];

static void
rate_setup(void)
{
  testlib_caps_default(&rate_caps);
  rate_caps.size = 4 << 20;
  rate_buf = calloc(1, 256 * 1024);
  ck_assert_ptr_nonnull(rate_buf);
  ck_assert_ptr_nonnull(mkdtemp(rate_dir));
  snprintf(rate_file, sizeof rate_file, "%s/rate", rate_dir);
}

static void
rate_teardown(void)
{
  testlib_stack_free(&rate_s);
  free(rate_buf);
  unlink(rate_file);
  rmdir(rate_dir);
  memcpy(rate_dir + strlen(rate_dir) - 6, "XXXXXX", 6);
}

static double
rate_now(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

START_TEST(test_read_waits_at_rate)
{
  double t0, t;

  testlib_stack(&rate_s, "rate rate=8M", &rate_caps);
  t0 = rate_now();
  ck_assert_int_eq(next_pread(rate_s.top, rate_buf, 256 * 1024, 0, 0), 0);
  t = rate_now() - t0;
  ck_assert_msg(t >= 0.24, "256 KiB at 1 MiB/s took %.3f s", t);
  ck_assert_int_eq(next_pread(rate_s.top, rate_buf, 256 * 1024, 0, 0), 0);
  t = rate_now() - t0;
  ck_assert_msg(t >= 0.48, "512 KiB at 1 MiB/s took %.3f s", t);
  ck_assert_str_eq(testlib_log(), "pread 0+262144 flags=0; "
                   "pread 0+262144 flags=0");
}
END_TEST

START_TEST(test_connection_rate_on_writes)
{
  double t0, t;

  testlib_stack(&rate_s, "rate connection-rate=8M", &rate_caps);
  t0 = rate_now();
  ck_assert_int_eq(next_pwrite(rate_s.top, rate_buf, 256 * 1024, 4096,
                               NBD_CMD_FLAG_FUA), 0);
  t = rate_now() - t0;
  ck_assert_msg(t >= 0.24, "256 KiB at 1 MiB/s took %.3f s", t);
  ck_assert_str_eq(testlib_log(), "pwrite 4096+262144 flags=FUA");
}
END_TEST

/* 8 bits per second: any payload would wait for days. */
START_TEST(test_no_payload_is_free)
{
  double t0, t;

  testlib_stack(&rate_s, "rate rate=8 connection-rate=8", &rate_caps);
  t0 = rate_now();
  ck_assert_int_eq(next_zero(rate_s.top, 1 << 20, 0, 0), 0);
  ck_assert_int_eq(next_trim(rate_s.top, 1 << 20, 0, 0), 0);
  ck_assert_int_eq(next_cache(rate_s.top, 1 << 20, 0, 0), 0);
  ck_assert_int_eq(next_flush(rate_s.top, 0), 0);
  t = rate_now() - t0;
  ck_assert_msg(t < 5, "free requests took %.3f s", t);
}
END_TEST

START_TEST(test_rate_file_wins_and_bad_file_ignored)
{
  FILE *f = fopen(rate_file, "w");
  double t0, t;
  char *out;

  ck_assert_ptr_nonnull(f);
  fputs("8M\n", f);
  fclose(f);
  /* rate=8 (days per request) is overridden by the file's 8M. */
  snprintf(rate_params, sizeof rate_params, "rate rate=8 rate-file=%s",
           rate_file);
  testlib_stack(&rate_s, rate_params, &rate_caps);
  t0 = rate_now();
  ck_assert_int_eq(next_pread(rate_s.top, rate_buf, 128 * 1024, 0, 0), 0);
  t = rate_now() - t0;
  ck_assert_msg(t >= 0.12 && t < 30, "128 KiB at the file's rate: %.3f s",
                t);
  f = fopen(rate_file, "w");
  ck_assert_ptr_nonnull(f);
  fputs("fast\n", f);
  fclose(f);
  usleep(150000);               /* past the 100 ms between looks */
  testlib_stderr_begin();
  ck_assert_int_eq(next_pread(rate_s.top, rate_buf, 1024, 0, 0), 0);
  out = testlib_stderr_end();
  ck_assert_msg(strstr(out, "'fast' is not a rate"), "log: %s", out);
  free(out);
}
END_TEST

START_TEST(test_bad_values)
{
  static const char *const bad[][2] = {
    { "rate=fast", "rate" },
    { "connection-rate=-1", "connection-rate" },
    { "burstiness=soon", "burstiness" },
    { "rates=1M", "unknown key 'rates'" },
  };
  char err[512];
  size_t i;

  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = '\0';
    ck_assert_ptr_null(testlib_filter_new("rate", bad[i][0], err,
                                          sizeof err));
    ck_assert_msg(strstr(err, bad[i][1]), "%s: %s", bad[i][0], err);
  }
}
END_TEST

static Suite *
rate_suite(void)
{
  Suite *s = suite_create("rate");
  TCase *tc = tcase_create("rate");

  tcase_add_checked_fixture(tc, rate_setup, rate_teardown);
  tcase_add_test(tc, test_read_waits_at_rate);
  tcase_add_test(tc, test_connection_rate_on_writes);
  tcase_add_test(tc, test_no_payload_is_free);
  tcase_add_test(tc, test_rate_file_wins_and_bad_file_ignored);
  tcase_add_test(tc, test_bad_values);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "rate"))
    return EXIT_SUCCESS;
  sr = srunner_create(rate_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
