/* Unit tests for filters/limit.c over the recording backend: limit=N
 * stacks open at once, the next open fails with EBUSY (which the
 * handshake turns into NBD_REP_ERR_POLICY), a close frees a slot, the
 * default is 1, 0 means no limit, requests pass through unchanged, and
 * bad values are refused.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps limit_caps;
static struct testlib_stack limit_s;

static void
limit_setup(void)
{
  testlib_caps_default(&limit_caps);
}

static void
limit_teardown(void)
{
  testlib_stack_free(&limit_s);
}

static struct nbd_ctx *
limit_open(void)
{
  char err[512];

  return engine_open(limit_s.exp, 0, NULL, err, sizeof err);
}

START_TEST(test_limit_two)
{
  struct nbd_ctx *b, *c;

  testlib_stack(&limit_s, "limit limit=2", &limit_caps);
  ck_assert_ptr_nonnull(b = limit_open());
  errno = 0;
  ck_assert_ptr_null(c = limit_open());
  ck_assert_int_eq(errno, EBUSY);
  engine_close(b);
  ck_assert_ptr_nonnull(c = limit_open());
  engine_close(c);
}
END_TEST

START_TEST(test_default_is_one)
{
  struct nbd_ctx *b;

  testlib_stack(&limit_s, "limit", &limit_caps);
  ck_assert_ptr_null(limit_open());
  engine_close(limit_s.top);
  limit_s.top = NULL;
  ck_assert_ptr_nonnull(b = limit_open());
  engine_close(b);
}
END_TEST

START_TEST(test_zero_is_unlimited)
{
  struct nbd_ctx *v[10];
  size_t i;

  testlib_stack(&limit_s, "limit limit=0", &limit_caps);
  for (i = 0; i < 10; i++)
    ck_assert_ptr_nonnull(v[i] = limit_open());
  for (i = 0; i < 10; i++)
    engine_close(v[i]);
}
END_TEST

/* A layer above limit that fails its open closes limit's context: the
 * slot comes back. */
START_TEST(test_failed_open_above_frees_slot)
{
  struct nbd_ctx *b;

  testlib_stack(&limit_s, "limit limit=1", &limit_caps);
  engine_close(limit_s.top);
  limit_s.top = NULL;
  ck_assert_ptr_nonnull(b = limit_open());
  ck_assert_ptr_null(limit_open());
  engine_close(b);
  ck_assert_ptr_nonnull(b = limit_open());
  engine_close(b);
}
END_TEST

START_TEST(test_requests_pass_through)
{
  static unsigned char buf[512];

  testlib_stack(&limit_s, "limit", &limit_caps);
  ck_assert_int_eq(next_pwrite(limit_s.top, buf, 512, 0, NBD_CMD_FLAG_FUA),
                   0);
  ck_assert_int_eq(next_pread(limit_s.top, buf, 512, 512, 0), 0);
  ck_assert_int_eq(next_zero(limit_s.top, 512, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=FUA; "
                   "pread 512+512 flags=0; zero 0+512 flags=0");
}
END_TEST

START_TEST(test_bad_values)
{
  char err[512] = "";

  ck_assert_ptr_null(testlib_filter_new("limit", "limit=-1", err,
                                        sizeof err));
  ck_assert_msg(strstr(err, "limit"), "err: %s", err);
  ck_assert_ptr_null(testlib_filter_new("limit", "limits=2", err,
                                        sizeof err));
  ck_assert_msg(strstr(err, "unknown key 'limits'"), "err: %s", err);
}
END_TEST

static Suite *
limit_suite(void)
{
  Suite *s = suite_create("limit");
  TCase *tc = tcase_create("limit");

  tcase_add_checked_fixture(tc, limit_setup, limit_teardown);
  tcase_add_test(tc, test_limit_two);
  tcase_add_test(tc, test_default_is_one);
  tcase_add_test(tc, test_zero_is_unlimited);
  tcase_add_test(tc, test_failed_open_above_frees_slot);
  tcase_add_test(tc, test_requests_pass_through);
  tcase_add_test(tc, test_bad_values);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "limit"))
    return EXIT_SUCCESS;
  sr = srunner_create(limit_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
