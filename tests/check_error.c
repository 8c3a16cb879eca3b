/* Unit tests for filters/error.c over the recording backend: rate 0 and
 * 100% are exact, a 10% rate lands in a plausible range, an injected
 * error never reaches the layer below, each method has its own rule and
 * the general keys fill in the rest (in any order), flush only by its own
 * rate, the trigger file turns errors on and off per request, writes from
 * the socket are covered, and bad values are refused at setup.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

static struct testlib_caps error_caps;
static struct testlib_stack error_s;
static unsigned char error_buf[4096];

static void
error_setup(void)
{
  testlib_caps_default(&error_caps);
}

static void
error_teardown(void)
{
  testlib_stack_free(&error_s);
}

static struct nbd_ctx *
error_open(const char *filters)
{
  testlib_stack(&error_s, filters, &error_caps);
  return error_s.top;
}

/* Every datapath method once; their results, in this order, in r[]. */
enum { E_PREAD, E_PWRITE, E_TRIM, E_ZERO, E_EXTENTS, E_CACHE, E_FLUSH, E_N };

static void
error_all(struct nbd_ctx *top, int r[E_N])
{
  struct nbd_extents *e = nbd_extents_new(0, 512);

  r[E_PREAD] = next_pread(top, error_buf, 512, 0, 0);
  r[E_PWRITE] = next_pwrite(top, error_buf, 512, 0, 0);
  r[E_TRIM] = next_trim(top, 512, 0, 0);
  r[E_ZERO] = next_zero(top, 512, 0, 0);
  r[E_EXTENTS] = next_extents(top, 512, 0, 0, e);
  r[E_CACHE] = next_cache(top, 512, 0, 0);
  r[E_FLUSH] = next_flush(top, 0);
  nbd_extents_free(e);
}

static void
error_assert_all(const char *filters, int pread, int pwrite, int trim,
                 int zero, int extents, int cache, int flush)
{
  int want[E_N] = { pread, pwrite, trim, zero, extents, cache, flush };
  int r[E_N], i;

  error_all(error_open(filters), r);
  for (i = 0; i < E_N; i++)
    ck_assert_msg(r[i] == want[i], "%s: method %d returned %d, expected %d",
                  filters, i, r[i], want[i]);
  testlib_stack_free(&error_s);
}

/* ---- rates -------------------------------------------------------------- */

START_TEST(test_default_injects_nothing)
{
  int r[E_N], i;

  error_all(error_open("error"), r);
  for (i = 0; i < E_N; i++)
    ck_assert_int_eq(r[i], 0);
  ck_assert_str_eq(testlib_log(), "pread 0+512 flags=0; pwrite 0+512 flags=0; "
                   "trim 0+512 flags=0; zero 0+512 flags=0; "
                   "extents 0+512 flags=0; cache 0+512 flags=0; flush");
}
END_TEST

START_TEST(test_rate_100_fails_every_request_before_below)
{
  struct nbd_ctx *top = error_open("error error-rate=100%");
  int i;

  for (i = 0; i < 1000; i++)
    ck_assert_int_eq(next_pread(top, error_buf, 512, 0, 0), -EIO);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_rate_0_never_fails)
{
  struct nbd_ctx *top = error_open("error error-rate=0% error=ENOSPC");
  int i;

  for (i = 0; i < 1000; i++)
    ck_assert_int_eq(next_pread(top, error_buf, 512, 0, 0), 0);
  ck_assert_uint_eq(error_s.rec->calls[NBD_METHOD_PREAD], 1000);
}
END_TEST

/* 2000 draws at p = 0.1: mean 200, sd 13.4; [130, 270] is over 5 sd. */
static void
error_assert_tenth(const char *filters)
{
  struct nbd_ctx *top = error_open(filters);
  int i, failed = 0;

  for (i = 0; i < 2000; i++) {
    int r = next_pread(top, error_buf, 512, 0, 0);
    ck_assert(r == 0 || r == -EIO);
    failed += r != 0;
  }
  ck_assert_msg(failed >= 130 && failed <= 270, "%s: %d of 2000 failed",
                filters, failed);
  ck_assert_uint_eq(error_s.rec->calls[NBD_METHOD_PREAD], 2000 - failed);
  testlib_stack_free(&error_s);
}

START_TEST(test_rate_10_percent_is_plausible)
{
  error_assert_tenth("error error-rate=10%");
  error_assert_tenth("error error-pread-rate=0.1");
  error_assert_tenth("error error-rate=1e-1");     /* nbdkit's strtod */
  error_assert_tenth("error error-rate=1E+1%");
}
END_TEST

START_TEST(test_rate_forms_accepted)
{
  static const char *const ok[] = {
    "error error-rate=1", "error error-rate=0", "error error-rate=0.05",
    "error error-rate=5%", "error error-rate=.5", "error error-rate=100%",
    "error error-rate=0.0%", "error error-rate=12.5%",
  };
  size_t i;

  for (i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    ck_assert_msg(testlib_stack_new(&error_s, ok[i], &error_caps) == 0,
                  "%s: %s", ok[i], error_s.err);
    testlib_stack_free(&error_s);
  }
}
END_TEST

/* ---- errnos and per-method rules --------------------------------------- */

START_TEST(test_each_errno_returned)
{
  static const char *const names[] = {
    "EPERM", "EIO", "ENOMEM", "EINVAL", "ENOSPC", "ESHUTDOWN",
  };
  static const int errs[] = { EPERM, EIO, ENOMEM, EINVAL, ENOSPC, ESHUTDOWN };
  char filters[128];
  size_t i;

  for (i = 0; i < 6; i++) {
    snprintf(filters, sizeof filters, "error error-rate=1 error=%s",
             names[i]);
    error_assert_all(filters, -errs[i], -errs[i], -errs[i], -errs[i],
                     -errs[i], -errs[i], 0);
  }
}
END_TEST

START_TEST(test_per_method_rate_applies_to_that_method_only)
{
  error_assert_all("error error-pread-rate=100%", -EIO, 0, 0, 0, 0, 0, 0);
  error_assert_all("error error-pwrite-rate=100%", 0, -EIO, 0, 0, 0, 0, 0);
  error_assert_all("error error-trim-rate=100%", 0, 0, -EIO, 0, 0, 0, 0);
  error_assert_all("error error-zero-rate=100%", 0, 0, 0, -EIO, 0, 0, 0);
  error_assert_all("error error-extents-rate=100%", 0, 0, 0, 0, -EIO, 0, 0);
  error_assert_all("error error-cache-rate=100%", 0, 0, 0, 0, 0, -EIO, 0);
  error_assert_all("error error-flush-rate=100%", 0, 0, 0, 0, 0, 0, -EIO);
}
END_TEST

START_TEST(test_specific_keys_win_in_any_order)
{
  error_assert_all("error error-pread-rate=0 error-rate=100%",
                   0, -EIO, -EIO, -EIO, -EIO, -EIO, 0);
  error_assert_all("error error-rate=100% error-pread-rate=0",
                   0, -EIO, -EIO, -EIO, -EIO, -EIO, 0);
  error_assert_all("error error-zero=ENOSPC error=EPERM error-rate=1",
                   -EPERM, -EPERM, -EPERM, -ENOSPC, -EPERM, -EPERM, 0);
  /* The general errno with a method's own rate. */
  error_assert_all("error error=ENOMEM error-pwrite-rate=1",
                   0, -ENOMEM, 0, 0, 0, 0, 0);
}
END_TEST

START_TEST(test_flush_fails_only_by_its_own_rate)
{
  error_assert_all("error error-rate=100% error=ENOSPC",
                   -ENOSPC, -ENOSPC, -ENOSPC, -ENOSPC, -ENOSPC, -ENOSPC, 0);
  error_assert_all("error error=ENOSPC error-flush-rate=1",
                   0, 0, 0, 0, 0, 0, -ENOSPC);
  error_assert_all("error error-flush=EPERM error-flush-rate=1 error=ENOSPC",
                   0, 0, 0, 0, 0, 0, -EPERM);
}
END_TEST

/* The engine's FUA emulation flushes through this filter's flush. */
START_TEST(test_emulated_fua_flush_is_covered)
{
  struct nbd_ctx *top;

  error_caps.can_fua = NBD_FUA_EMULATE;
  top = error_open("error error-flush-rate=1");
  ck_assert_int_eq(next_pwrite(top, error_buf, 512, 0, NBD_CMD_FLAG_FUA),
                   -EIO);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=0");
}
END_TEST

/* No pwrite_from: writes from the socket go through pwrite's rule. */
START_TEST(test_write_from_socket_is_covered)
{
  struct nbd_ctx *top = error_open("error error-pwrite-rate=1 "
                                   "error-pwrite=ENOSPC");
  struct testlib_source src;

  ck_assert_int_eq(top->pull, 0);
  testlib_source_init(&src, error_buf, 512, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 512, 0, 0), -ENOSPC);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

/* ---- the trigger file --------------------------------------------------- */

START_TEST(test_file_turns_errors_on_and_off)
{
  char dir[] = "/tmp/check_error.XXXXXX", path[64], filters[128];
  struct nbd_ctx *top;
  FILE *f;

  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/inject", dir);
  snprintf(filters, sizeof filters, "error error-rate=1 error-file=%s", path);
  top = error_open(filters);

  ck_assert_int_eq(next_pread(top, error_buf, 512, 0, 0), 0);
  f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fclose(f);
  ck_assert_int_eq(next_pread(top, error_buf, 512, 0, 0), -EIO);
  ck_assert_int_eq(next_trim(top, 512, 0, 0), -EIO);
  ck_assert_int_eq(unlink(path), 0);
  ck_assert_int_eq(next_pread(top, error_buf, 512, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+512 flags=0; pread 0+512 flags=0");
  rmdir(dir);
}
END_TEST

START_TEST(test_method_file_overrides_general_file)
{
  char dir[] = "/tmp/check_error.XXXXXX", a[64], b[64], filters[256];
  struct nbd_ctx *top;
  FILE *f;

  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(a, sizeof a, "%s/a", dir);
  snprintf(b, sizeof b, "%s/b", dir);
  snprintf(filters, sizeof filters, "error error-rate=1 error-file=%s "
           "error-pread-file=%s", a, b);
  top = error_open(filters);
  f = fopen(a, "w");
  ck_assert_ptr_nonnull(f);
  fclose(f);

  ck_assert_int_eq(next_pread(top, error_buf, 512, 0, 0), 0);
  ck_assert_int_eq(next_pwrite(top, error_buf, 512, 0, 0), -EIO);
  unlink(a);
  rmdir(dir);
}
END_TEST

/* ---- keys and capabilities ---------------------------------------------- */

static void
error_assert_refused(const char *filters, const char *want)
{
  ck_assert_int_eq(testlib_stack_new(&error_s, filters, &error_caps), -1);
  ck_assert_msg(strstr(error_s.err, want) != NULL, "%s: '%s' lacks '%s'",
                filters, error_s.err, want);
}

START_TEST(test_bad_values_refused)
{
  error_assert_refused("error error-rate=150%", "error-rate: invalid value "
                       "'150%' (expected a percentage 0%..100% or a fraction "
                       "0..1)");
  error_assert_refused("error error-rate=-1", "error-rate: invalid value '-1'");
  error_assert_refused("error error-pread-rate=abc",
                       "error-pread-rate: invalid value 'abc'");
  error_assert_refused("error error-flush-rate=1.01", "error-flush-rate");
  error_assert_refused("error error-rate=5%%", "error-rate");
  error_assert_refused("error error-rate=1e", "error-rate");
  error_assert_refused("error error-rate=1e1", "error-rate");  /* 10 > 1 */
  error_assert_refused("error error-rate=0x1", "error-rate");
  error_assert_refused("error error-rate=nan", "error-rate");
  error_assert_refused("error error-rate=", "error-rate");
  error_assert_refused("error error=EAGAIN", "EPERM");
  error_assert_refused("error error-cache=EFOO", "error-cache");
  error_assert_refused("error error-file=", "error-file");
  error_assert_refused("error error-write-rate=1", "unknown key");
}
END_TEST

START_TEST(test_capabilities_pass_through)
{
  struct nbd_ctx *top;

  error_caps.can_trim = 0;
  error_caps.can_fast_zero = 0;
  error_caps.can_cache = NBD_CACHE_NONE;
  error_caps.can_multi_conn = 1;
  top = error_open("error error-rate=1");

  ck_assert_int_eq(next_get_size(top), error_caps.size);
  ck_assert_int_eq(next_can_write(top), 1);
  ck_assert_int_eq(next_can_flush(top), 1);
  ck_assert_int_eq(next_can_trim(top), 0);
  ck_assert_int_eq(next_can_zero(top), NBD_ZERO_NATIVE);
  ck_assert_int_eq(next_can_fast_zero(top), 0);
  ck_assert_int_eq(next_can_fua(top), NBD_FUA_NATIVE);
  ck_assert_int_eq(next_can_cache(top), NBD_CACHE_NONE);
  ck_assert_int_eq(next_can_extents(top), 1);
  ck_assert_int_eq(next_can_multi_conn(top), 1);
  ck_assert_int_eq(next_is_rotational(top), 0);
}
END_TEST

/* A trigger file makes the filter call access() per request: the
 * instance then says it may block now and then. */
START_TEST(test_file_lowers_nonblocking)
{
  struct nbd_layer *l;
  char err[256];

  l = testlib_filter_new("error", "error-rate=1", err, sizeof err);
  ck_assert_ptr_nonnull(l);
  ck_assert_int_eq(l->nonblocking, NBD_NEVER_BLOCKS);
  engine_layer_free(l);
  l = testlib_filter_new("error", "error-rate=1 error-file=/nonexistent",
                         err, sizeof err);
  ck_assert_ptr_nonnull(l);
  ck_assert_int_eq(l->nonblocking, NBD_RARELY_BLOCKS);
  engine_layer_free(l);
}
END_TEST

/* ---- suite -------------------------------------------------------------- */

static TCase *
error_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, error_setup, error_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
error_suite(void)
{
  Suite *s = suite_create("error");
  TCase *tc;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "error"))
    return s;
  tc = error_tcase(s, "rates");
  tcase_add_test(tc, test_default_injects_nothing);
  tcase_add_test(tc, test_rate_100_fails_every_request_before_below);
  tcase_add_test(tc, test_rate_0_never_fails);
  tcase_add_test(tc, test_rate_10_percent_is_plausible);
  tcase_add_test(tc, test_rate_forms_accepted);
  tc = error_tcase(s, "errnos and methods");
  tcase_add_test(tc, test_each_errno_returned);
  tcase_add_test(tc, test_per_method_rate_applies_to_that_method_only);
  tcase_add_test(tc, test_specific_keys_win_in_any_order);
  tcase_add_test(tc, test_flush_fails_only_by_its_own_rate);
  tcase_add_test(tc, test_emulated_fua_flush_is_covered);
  tcase_add_test(tc, test_write_from_socket_is_covered);
  tc = error_tcase(s, "trigger file");
  tcase_add_test(tc, test_file_turns_errors_on_and_off);
  tcase_add_test(tc, test_method_file_overrides_general_file);
  tc = error_tcase(s, "keys and capabilities");
  tcase_add_test(tc, test_bad_values_refused);
  tcase_add_test(tc, test_capabilities_pass_through);
  tcase_add_test(tc, test_file_lowers_nonblocking);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(error_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
