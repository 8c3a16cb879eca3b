/* Unit tests for filters/nozero.c over the recording backend: what each
 * zeromode/fastzeromode pair advertises, what reaches the backend for a
 * zero and a fast zero, the check at open, and bad values refused.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps nozero_caps;
static struct testlib_stack nozero_s;

static void
nozero_setup(void)
{
  testlib_caps_default(&nozero_caps);
}

static void
nozero_teardown(void)
{
  testlib_stack_free(&nozero_s);
}

static struct nbd_ctx *
nozero_open(const char *filters)
{
  testlib_stack(&nozero_s, filters, &nozero_caps);
  return nozero_s.top;
}

START_TEST(test_none_is_default_and_hides_zero)
{
  struct nbd_ctx *top = nozero_open("nozero");

  ck_assert_int_eq(top->can_zero, NBD_ZERO_NONE);
  ck_assert_int_eq(top->can_fast_zero, 0);
  ck_assert_int_eq(next_zero(top, 512, 0, 0), -EOPNOTSUPP);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_emulate_writes_zeros)
{
  struct nbd_ctx *top = nozero_open("nozero zeromode=emulate");

  memset(nozero_s.rec->ram, 0xaa, 4096);
  ck_assert_int_eq(top->can_zero, NBD_ZERO_NATIVE);
  ck_assert_int_eq(next_zero(top, 512, 1024, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 1024+512 flags=0");
  ck_assert(nbd_is_zero(nozero_s.rec->ram + 1024, 512));
}
END_TEST

START_TEST(test_emulate_fua_goes_on_the_writes)
{
  struct nbd_ctx *top = nozero_open("nozero zeromode=emulate");

  ck_assert_int_eq(next_zero(top, 512, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=FUA");
}
END_TEST

START_TEST(test_emulate_default_fails_fast_zero)
{
  struct nbd_ctx *top = nozero_open("nozero zeromode=emulate");

  ck_assert_int_eq(top->can_fast_zero, 1);
  ck_assert_int_eq(next_zero(top, 512, 0, NBD_CMD_FLAG_FAST_ZERO), -ENOTSUP);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_emulate_fast_none_hides_fast_zero)
{
  struct nbd_ctx *top = nozero_open("nozero zeromode=emulate "
                                    "fastzeromode=none");

  ck_assert_int_eq(top->can_zero, NBD_ZERO_NATIVE);
  ck_assert_int_eq(top->can_fast_zero, 0);
  ck_assert_int_eq(next_zero(top, 512, 0, NBD_CMD_FLAG_FAST_ZERO), -ENOTSUP);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_emulate_fast_ignore_writes_zeros)
{
  struct nbd_ctx *top = nozero_open("nozero zeromode=emulate "
                                    "fastzeromode=ignore");

  ck_assert_int_eq(top->can_fast_zero, 1);
  ck_assert_int_eq(next_zero(top, 512, 0, NBD_CMD_FLAG_FAST_ZERO), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=0");
}
END_TEST

START_TEST(test_notrim_adds_no_hole)
{
  struct nbd_ctx *top = nozero_open("nozero zeromode=notrim");

  ck_assert_int_eq(top->can_fast_zero, 1);
  ck_assert_int_eq(next_zero(top, 512, 0, NBD_CMD_FLAG_FAST_ZERO), 0);
  ck_assert_str_eq(testlib_log(), "zero 0+512 flags=NO_HOLE|FAST_ZERO");
}
END_TEST

START_TEST(test_plugin_passes_zero_unchanged)
{
  struct nbd_ctx *top = nozero_open("nozero zeromode=plugin");

  ck_assert_int_eq(next_zero(top, 512, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "zero 0+512 flags=FUA");
}
END_TEST

START_TEST(test_plugin_default_follows_fast_zero_below)
{
  struct nbd_ctx *top;

  nozero_caps.can_fast_zero = 0;
  top = nozero_open("nozero zeromode=plugin");
  ck_assert_int_eq(top->can_fast_zero, 0);
}
END_TEST

START_TEST(test_plugin_slow_fails_fast_zero)
{
  struct nbd_ctx *top = nozero_open("nozero zeromode=plugin "
                                    "fastzeromode=slow");

  ck_assert_int_eq(top->can_fast_zero, 1);
  ck_assert_int_eq(next_zero(top, 512, 0, NBD_CMD_FLAG_FAST_ZERO), -ENOTSUP);
  ck_assert_int_eq(next_zero(top, 512, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "zero 0+512 flags=0");
}
END_TEST

START_TEST(test_plugin_ignore_drops_fast_flag)
{
  struct nbd_ctx *top = nozero_open("nozero zeromode=plugin "
                                    "fastzeromode=ignore");

  ck_assert_int_eq(next_zero(top, 512, 0, NBD_CMD_FLAG_FAST_ZERO), 0);
  ck_assert_str_eq(testlib_log(), "zero 0+512 flags=0");
}
END_TEST

START_TEST(test_plugin_without_zero_below_fails_open)
{
  char *log;
  int r;

  nozero_caps.can_zero = NBD_ZERO_NONE;
  ck_assert_int_eq(testlib_stack_new(&nozero_s, "nozero zeromode=plugin",
                                     &nozero_caps), 0);
  testlib_stderr_begin();
  r = testlib_stack_open(&nozero_s, 0);
  log = testlib_stderr_end();
  ck_assert_int_eq(r, -1);
  ck_assert_msg(strstr(log, "zeromode 'plugin' needs zero support"),
                "log: %s", log);
  free(log);
}
END_TEST

START_TEST(test_writes_pass_through)
{
  struct nbd_ctx *top = nozero_open("nozero");
  static const unsigned char buf[512];

  ck_assert_int_eq(next_pwrite(top, buf, 512, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_trim(top, 512, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=FUA; trim 0+512 flags=0");
}
END_TEST

START_TEST(test_bad_values_list_choices)
{
  char err[512] = "";

  ck_assert_ptr_null(testlib_filter_new("nozero", "zeromode=fast", err,
                                        sizeof err));
  ck_assert_msg(strstr(err, "none emulate notrim plugin"), "err: %s", err);
  ck_assert_ptr_null(testlib_filter_new("nozero", "fastzeromode=on", err,
                                        sizeof err));
  ck_assert_msg(strstr(err, "default none slow ignore"), "err: %s", err);
}
END_TEST

static TCase *
nozero_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, nozero_setup, nozero_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
nozero_suite(void)
{
  Suite *s = suite_create("nozero");
  TCase *tc;

  tc = nozero_tcase(s, "none");
  tcase_add_test(tc, test_none_is_default_and_hides_zero);
  tcase_add_test(tc, test_writes_pass_through);
  tc = nozero_tcase(s, "emulate");
  tcase_add_test(tc, test_emulate_writes_zeros);
  tcase_add_test(tc, test_emulate_fua_goes_on_the_writes);
  tcase_add_test(tc, test_emulate_default_fails_fast_zero);
  tcase_add_test(tc, test_emulate_fast_none_hides_fast_zero);
  tcase_add_test(tc, test_emulate_fast_ignore_writes_zeros);
  tc = nozero_tcase(s, "notrim and plugin");
  tcase_add_test(tc, test_notrim_adds_no_hole);
  tcase_add_test(tc, test_plugin_passes_zero_unchanged);
  tcase_add_test(tc, test_plugin_default_follows_fast_zero_below);
  tcase_add_test(tc, test_plugin_slow_fails_fast_zero);
  tcase_add_test(tc, test_plugin_ignore_drops_fast_flag);
  tcase_add_test(tc, test_plugin_without_zero_below_fails_open);
  tc = nozero_tcase(s, "keys");
  tcase_add_test(tc, test_bad_values_list_choices);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "nozero"))
    return EXIT_SUCCESS;
  sr = srunner_create(nozero_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
