/* Unit tests for filters/stats.c over the recording backend: the report
 * at cleanup counts ops, errors and bytes of each method exactly, over
 * connections that closed and ones still open, in nbdkit's lines plus
 * errors and latency (percentiles never above the maximum); a report on
 * SIGUSR1 (stop_run_sigusr1) comes while connections are open;
 * statsappend=yes appends; methods never called are left out;
 * statsfile= is required; requests pass through unchanged; the size
 * and alignment breakdown (statsthreshold=) groups by size bits and
 * trailing zero bits of the offset, cut at the percentile, with failed
 * requests, none for flush, none at 0; a threshold over 100 is refused.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stop.h"
#include "testlib.h"

static struct testlib_caps st_caps;
static struct testlib_stack st_s;
static char st_dir[] = "/tmp/check_stats.XXXXXX";
static char st_file[600];
static char st_params[800];
static unsigned char st_buf[8192];

static void
st_setup(void)
{
  testlib_caps_default(&st_caps);
  ck_assert_ptr_nonnull(mkdtemp(st_dir));
  snprintf(st_file, sizeof st_file, "%s/stats", st_dir);
}

static void
st_teardown(void)
{
  testlib_stack_free(&st_s);
  unlink(st_file);
  rmdir(st_dir);
  memcpy(st_dir + strlen(st_dir) - 6, "XXXXXX", 6);
}

static char *
st_read(void)
{
  static char out[16384];
  FILE *f = fopen(st_file, "r");
  size_t n;

  ck_assert_ptr_nonnull(f);
  n = fread(out, 1, sizeof out - 1, f);
  out[n] = '\0';
  fclose(f);
  return out;
}

static void
st_stack(const char *extra)
{
  snprintf(st_params, sizeof st_params, "stats statsfile=%s %s", st_file,
           extra);
  testlib_stack(&st_s, st_params, &st_caps);
}

/* The numbers in "  errors: E, latency p50 X, p90 Y, p99 Z, max M" in
 * nanoseconds, checked p50 <= p90 <= p99 <= max. */
static void
st_check_latency(const char *text, const char *method)
{
  const char *p = strstr(text, method);
  double v[4];
  char u[4][3];
  unsigned e;
  int i;

  ck_assert_ptr_nonnull(p);
  p = strstr(p, "\n  errors: ");
  ck_assert_ptr_nonnull(p);
  ck_assert_int_eq(sscanf(p, "\n  errors: %u, latency p50 %lf %2[a-z], "
                          "p90 %lf %2[a-z], p99 %lf %2[a-z], max %lf "
                          "%2[a-z]", &e, &v[0], u[0],
                          &v[1], u[1], &v[2], u[2], &v[3], u[3]), 9);
  for (i = 0; i < 4; i++)
    v[i] *= u[i][0] == 'n' ? 1 : u[i][0] == 'u' ? 1e3 : u[i][0] == 'm' ? 1e6
            : 1e9;
  ck_assert_msg(v[0] <= v[1] && v[1] <= v[2] && v[2] <= v[3],
                "percentiles out of order: %s", p);
}

START_TEST(test_counts_at_cleanup)
{
  struct nbd_ctx *second;
  char err[512], *t;

  st_stack("");
  ck_assert_ptr_nonnull(second = engine_open(st_s.exp, 0, NULL, err,
                                             sizeof err));
  ck_assert_int_eq(next_pread(st_s.top, st_buf, 4096, 0, 0), 0);
  ck_assert_int_eq(next_pread(second, st_buf, 8192, 0, 0), 0);
  ck_assert_int_eq(next_pwrite(st_s.top, st_buf, 512, 0, 0), 0);
  st_s.rec->fail[NBD_METHOD_PREAD] = -EIO;
  ck_assert_int_eq(next_pread(second, st_buf, 4096, 0, 0), -EIO);
  ck_assert_int_eq(next_trim(st_s.top, 1 << 20, 0, 0), 0);
  ck_assert_int_eq(next_flush(st_s.top, 0), 0);
  engine_close(second);         /* a closed connection still counts */
  testlib_stack_free(&st_s);    /* cleanup: the report */
  t = st_read();
  ck_assert_msg(strncmp(t, "total: 6 ops, ", 14) == 0, "%s", t);
  ck_assert_msg(strstr(t, ", 1.01 MiB, "), "total bytes: %s", t);
  ck_assert_msg(strstr(t, "\nread: 3 ops, "), "%s", t);
  ck_assert_msg(strstr(t, " s, 12.00 KiB, "), "read bytes: %s", t);
  ck_assert_msg(strstr(t, "\nwrite: 1 ops, "), "%s", t);
  ck_assert_msg(strstr(t, " s, 512 bytes, "), "write bytes: %s", t);
  ck_assert_msg(strstr(t, "\ntrim: 1 ops, "), "%s", t);
  ck_assert_msg(strstr(t, " s, 1.00 MiB, "), "trim bytes: %s", t);
  ck_assert_msg(strstr(t, "\nflush: 1 ops, "), "%s", t);
  ck_assert_msg(strstr(t, "\n  errors: 1, latency p50 "), "errors: %s", t);
  ck_assert_msg(strstr(t, "zero:") == NULL && strstr(t, "cache:") == NULL,
                "methods never called: %s", t);
  st_check_latency(t, "\nread:");
  st_check_latency(t, "\nflush:");
}
END_TEST

START_TEST(test_sigusr1_report)
{
  char *t;

  st_stack("");
  ck_assert_int_eq(next_pread(st_s.top, st_buf, 4096, 0, 0), 0);
  stop_run_sigusr1();
  t = st_read();
  ck_assert_msg(strstr(t, "\nread: 1 ops, "), "%s", t);
  ck_assert_int_eq(next_pread(st_s.top, st_buf, 4096, 0, 0), 0);
  stop_run_sigusr1();
  t = st_read();
  ck_assert_msg(strstr(t, "\nread: 2 ops, ") && !strstr(t, "read: 1 ops"),
                "the second report replaces the first: %s", t);
  testlib_stack_free(&st_s);
  /* After cleanup the report function is gone: no crash, no change. */
  stop_run_sigusr1();
}
END_TEST

START_TEST(test_append)
{
  char *t, *second;

  st_stack("statsappend=yes");
  ck_assert_int_eq(next_pread(st_s.top, st_buf, 512, 0, 0), 0);
  stop_run_sigusr1();
  testlib_stack_free(&st_s);
  t = st_read();
  second = strstr(t + 1, "total: ");
  ck_assert_msg(strncmp(t, "total: 1 ops", 12) == 0 && second &&
                strstr(t, "read: 1 ops"), "%s", t);
}
END_TEST

START_TEST(test_requests_pass_through)
{
  st_stack("");
  ck_assert_int_eq(next_zero(st_s.top, 512, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_cache(st_s.top, 512, 512, 0), 0);
  ck_assert_str_eq(testlib_log(), "zero 0+512 flags=FUA; "
                   "cache 512+512 flags=0");
}
END_TEST

START_TEST(test_bad_keys)
{
  char err[512] = "";

  ck_assert_ptr_null(testlib_filter_new("stats", "statsappend=yes", err,
                                        sizeof err));
  ck_assert_msg(strstr(err, "statsfile"), "err: %s", err);
  ck_assert_ptr_null(testlib_filter_new("stats", "statsfile=/tmp/x "
                                        "statsthreshold=101", err,
                                        sizeof err));
  ck_assert_msg(strstr(err, "statsthreshold=101: must be between 0 and 100"),
                "err: %s", err);
}
END_TEST

START_TEST(test_breakdown)
{
  static const struct { uint32_t count; uint64_t offset; } rd[] = {
    { 4096, 4096 }, { 4096, 8192 }, { 4096, 0 }, { 4096, 1 << 16 },
    { 512, 512 }, { 600, 1536 }, { 1, 7 },
  };
  const char *want =
    "  Request size and alignment breakdown:\n"
    "    12 bits: 57.1% (4 reqs, 16.00 KiB total)\n"
    "         12 bit aligned: 100.0% (4)\n"
    "         13 bit aligned:  75.0% (3)\n"
    "         16 bit aligned:  50.0% (2)\n"
    "     9 bits: 28.6% (2 reqs, 1.09 KiB total)\n"
    "          9 bit aligned: 100.0% (2)\n"
    "    other sizes: 14.3% (1 reqs, 1 bytes total)\n"
    "\n";
  char *t, *p;
  size_t i;

  st_stack("");
  for (i = 0; i < sizeof rd / sizeof rd[0]; i++) {
    if (i == 6)
      st_s.rec->fail[NBD_METHOD_PREAD] = -EIO;  /* counts all the same */
    next_pread(st_s.top, st_buf, rd[i].count, rd[i].offset, 0);
  }
  ck_assert_int_eq(next_flush(st_s.top, 0), 0);
  testlib_stack_free(&st_s);
  t = st_read();
  p = strstr(t, "  Request size");
  ck_assert_msg(p && strncmp(p, want, strlen(want)) == 0, "%s", t);
  ck_assert_msg(strstr(p + 10, "Request size") == NULL,
                "flush has no breakdown: %s", t);

  /* 50: groups until half the requests, alignments until half. */
  st_stack("statsthreshold=50");
  for (i = 0; i < sizeof rd / sizeof rd[0]; i++)
    next_pread(st_s.top, st_buf, rd[i].count, rd[i].offset, 0);
  testlib_stack_free(&st_s);
  t = st_read();
  ck_assert_msg(strstr(t, "    12 bits: 57.1% (4 reqs, 16.00 KiB total)\n"
                       "         12 bit aligned: 100.0% (4)\n"
                       "         13 bit aligned:  75.0% (3)\n"
                       "         16 bit aligned:  50.0% (2)\n"
                       "    other sizes: 42.9% (3 reqs, 1.09 KiB total)\n"),
                "%s", t);

  st_stack("statsthreshold=0");
  ck_assert_int_eq(next_pread(st_s.top, st_buf, 512, 0, 0), 0);
  testlib_stack_free(&st_s);
  t = st_read();
  ck_assert_msg(strstr(t, "Request size") == NULL, "%s", t);
}
END_TEST

static Suite *
st_suite(void)
{
  Suite *s = suite_create("stats");
  TCase *tc = tcase_create("stats");

  tcase_add_checked_fixture(tc, st_setup, st_teardown);
  tcase_add_test(tc, test_counts_at_cleanup);
  tcase_add_test(tc, test_sigusr1_report);
  tcase_add_test(tc, test_append);
  tcase_add_test(tc, test_requests_pass_through);
  tcase_add_test(tc, test_bad_keys);
  tcase_add_test(tc, test_breakdown);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "stats"))
    return EXIT_SUCCESS;
  sr = srunner_create(st_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
