/* Unit tests for filters/noextents.c over the recording backend: extents
 * hidden (one data extent, the backend never asked), the rest unchanged.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps noextents_caps;
static struct testlib_stack noextents_s;

static void
noextents_setup(void)
{
  testlib_caps_default(&noextents_caps);
}

static void
noextents_teardown(void)
{
  testlib_stack_free(&noextents_s);
}

START_TEST(test_extents_read_as_all_data)
{
  struct nbd_extents *e;
  struct nbd_ctx *top;

  testlib_stack(&noextents_s, "noextents", &noextents_caps);
  top = noextents_s.top;
  testlib_recorder_map(noextents_s.rec, 0, 65536,
                       NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  testlib_recorder_map(noextents_s.rec, 65536, (1 << 20) - 65536, 0);
  ck_assert_int_eq(top->can_extents, 0);
  e = nbd_extents_new(0, 1 << 20);
  ck_assert_int_eq(next_extents(top, 1 << 20, 0, 0, e), 0);
  ck_assert_uint_eq(e->n, 1);
  ck_assert_uint_eq(e->v[0].offset, 0);
  ck_assert_uint_eq(e->v[0].length, 1 << 20);
  ck_assert_uint_eq(e->v[0].type, 0);
  nbd_extents_free(e);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_other_requests_pass_through)
{
  struct nbd_ctx *top;
  static unsigned char buf[512];

  testlib_stack(&noextents_s, "noextents", &noextents_caps);
  top = noextents_s.top;
  ck_assert_int_eq(top->can_zero, NBD_ZERO_NATIVE);
  ck_assert_int_eq(top->can_cache, NBD_CACHE_NATIVE);
  ck_assert_int_eq(next_pwrite(top, buf, 512, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_trim(top, 512, 512, 0), 0);
  ck_assert_int_eq(next_cache(top, 512, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=FUA; "
                   "trim 512+512 flags=0; cache 0+512 flags=0");
}
END_TEST

START_TEST(test_no_keys)
{
  char err[512] = "";

  ck_assert_ptr_null(testlib_filter_new("noextents", "mode=on", err,
                                        sizeof err));
  ck_assert_msg(strstr(err, "unknown key 'mode'"), "err: %s", err);
}
END_TEST

static Suite *
noextents_suite(void)
{
  Suite *s = suite_create("noextents");
  TCase *tc = tcase_create("extents");

  tcase_add_checked_fixture(tc, noextents_setup, noextents_teardown);
  tcase_add_test(tc, test_extents_read_as_all_data);
  tcase_add_test(tc, test_other_requests_pass_through);
  tcase_add_test(tc, test_no_keys);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "noextents"))
    return EXIT_SUCCESS;
  sr = srunner_create(noextents_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
