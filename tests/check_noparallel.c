/* Unit tests for filters/noparallel.c over the recording backend: each
 * serialize= mode lowers the instance's thread model, and the export's
 * with it; requests and capabilities pass through unchanged, except
 * multi-conn under serialize=connections; a bad mode is refused.
 * That requests really do not overlap is the integration test's
 * (test_noparallel.py), which has a scheduler.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps noparallel_caps;
static struct testlib_stack noparallel_s;
static unsigned char noparallel_buf[4096];

static void
noparallel_setup(void)
{
  testlib_caps_default(&noparallel_caps);
  noparallel_caps.can_multi_conn = 1;
}

static void
noparallel_teardown(void)
{
  testlib_stack_free(&noparallel_s);
}

static void
noparallel_assert_model(const char *filters, enum nbd_thread_model want)
{
  ck_assert_int_eq(testlib_stack_new(&noparallel_s, filters,
                                     &noparallel_caps), 0);
  ck_assert_int_eq(noparallel_s.exp->top->thread_model, want);
  ck_assert_int_eq(noparallel_s.exp->model, want);
  testlib_stack_free(&noparallel_s);
  memset(&noparallel_s, 0, sizeof noparallel_s);
}

START_TEST(test_default_serializes_requests)
{
  noparallel_assert_model("noparallel", NBD_SERIALIZE_REQUESTS);
}
END_TEST

START_TEST(test_modes_lower_thread_model)
{
  noparallel_assert_model("noparallel serialize=requests",
                          NBD_SERIALIZE_REQUESTS);
  noparallel_assert_model("noparallel serialize=all-requests",
                          NBD_SERIALIZE_ALL_REQUESTS);
  noparallel_assert_model("noparallel serialize=connections",
                          NBD_SERIALIZE_CONNECTIONS);
}
END_TEST

START_TEST(test_requests_pass_through)
{
  struct nbd_ctx *top;

  testlib_stack(&noparallel_s, "noparallel", &noparallel_caps);
  top = noparallel_s.top;
  ck_assert_int_eq(next_pread(top, noparallel_buf, 512, 4096, 0), 0);
  ck_assert_int_eq(next_pwrite(top, noparallel_buf, 512, 0,
                               NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_zero(top, 512, 512, NBD_CMD_FLAG_FAST_ZERO), 0);
  ck_assert_int_eq(next_trim(top, 512, 1024, 0), 0);
  ck_assert_int_eq(next_cache(top, 512, 1536, 0), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 4096+512 flags=0; "
                   "pwrite 0+512 flags=FUA; zero 512+512 flags=FAST_ZERO; "
                   "trim 1024+512 flags=0; cache 1536+512 flags=0; flush");
  ck_assert_int_eq(next_get_size(top), noparallel_caps.size);
}
END_TEST

START_TEST(test_multi_conn_passes_through_for_requests)
{
  testlib_stack(&noparallel_s, "noparallel serialize=all-requests",
                &noparallel_caps);
  ck_assert_int_eq(next_can_multi_conn(noparallel_s.top), 1);
}
END_TEST

START_TEST(test_multi_conn_off_for_connections)
{
  testlib_stack(&noparallel_s, "noparallel serialize=connections",
                &noparallel_caps);
  ck_assert_int_eq(next_can_multi_conn(noparallel_s.top), 0);
}
END_TEST

START_TEST(test_bad_mode_refused)
{
  ck_assert_int_eq(testlib_stack_new(&noparallel_s,
                                     "noparallel serialize=never",
                                     &noparallel_caps), -1);
  ck_assert_msg(strstr(noparallel_s.err, "requests all-requests "
                       "connections") != NULL, "%s", noparallel_s.err);
}
END_TEST

static TCase *
noparallel_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, noparallel_setup, noparallel_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
noparallel_suite(void)
{
  Suite *s = suite_create("noparallel");
  TCase *tc;

  tc = noparallel_tcase(s, "thread model");
  tcase_add_test(tc, test_default_serializes_requests);
  tcase_add_test(tc, test_modes_lower_thread_model);

  tc = noparallel_tcase(s, "pass through");
  tcase_add_test(tc, test_requests_pass_through);
  tcase_add_test(tc, test_multi_conn_passes_through_for_requests);
  tcase_add_test(tc, test_multi_conn_off_for_connections);

  tc = noparallel_tcase(s, "startup");
  tcase_add_test(tc, test_bad_mode_refused);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "noparallel"))
    return EXIT_SUCCESS;
  sr = srunner_create(noparallel_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
