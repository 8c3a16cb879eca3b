/* Unit tests for filters/nocache.c over the recording backend: what each
 * cachemode advertises and what a cache request turns into below.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps nocache_caps;
static struct testlib_stack nocache_s;

static void
nocache_setup(void)
{
  testlib_caps_default(&nocache_caps);
}

static void
nocache_teardown(void)
{
  testlib_stack_free(&nocache_s);
}

static struct nbd_ctx *
nocache_open(const char *filters)
{
  testlib_stack(&nocache_s, filters, &nocache_caps);
  return nocache_s.top;
}

START_TEST(test_none_is_default_and_refuses_cache)
{
  struct nbd_ctx *top = nocache_open("nocache");

  ck_assert_int_eq(top->can_cache, NBD_CACHE_NONE);
  ck_assert_int_eq(next_cache(top, 4096, 0, 0), -EINVAL);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_emulate_reads_instead)
{
  struct nbd_ctx *top = nocache_open("nocache cachemode=emulate");

  ck_assert_int_eq(top->can_cache, NBD_CACHE_EMULATE);
  ck_assert_int_eq(next_cache(top, 4096, 8192, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 8192+4096 flags=0");
}
END_TEST

START_TEST(test_nop_ignores_cache)
{
  struct nbd_ctx *top = nocache_open("nocache cachemode=nop");

  ck_assert_int_eq(top->can_cache, NBD_CACHE_NATIVE);
  ck_assert_int_eq(next_cache(top, 4096, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_other_requests_pass_through)
{
  struct nbd_ctx *top = nocache_open("nocache");
  static unsigned char buf[512];

  ck_assert_int_eq(next_pread(top, buf, 512, 0, 0), 0);
  ck_assert_int_eq(next_zero(top, 512, 512, NBD_CMD_FLAG_FAST_ZERO), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+512 flags=0; "
                   "zero 512+512 flags=FAST_ZERO; flush");
}
END_TEST

START_TEST(test_bad_mode_lists_choices)
{
  char err[512] = "";

  ck_assert_ptr_null(testlib_filter_new("nocache", "cachemode=off", err,
                                        sizeof err));
  ck_assert_msg(strstr(err, "none emulate nop"), "err: %s", err);
}
END_TEST

static Suite *
nocache_suite(void)
{
  Suite *s = suite_create("nocache");
  TCase *tc = tcase_create("cachemode");

  tcase_add_checked_fixture(tc, nocache_setup, nocache_teardown);
  tcase_add_test(tc, test_none_is_default_and_refuses_cache);
  tcase_add_test(tc, test_emulate_reads_instead);
  tcase_add_test(tc, test_nop_ignores_cache);
  tcase_add_test(tc, test_other_requests_pass_through);
  tcase_add_test(tc, test_bad_mode_lists_choices);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "nocache"))
    return EXIT_SUCCESS;
  sr = srunner_create(nocache_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
