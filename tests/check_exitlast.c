/* Unit tests for filters/exitlast.c over the recording backend: closing a
 * connection's stack asks the server to exit once idle
 * (server_exit_idle), a stack opened outside a connection (no
 * nbd_conn_info: --check-config, tests) does not, requests pass through
 * unchanged, and the filter has no keys.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "stop.h"
#include "testlib.h"

static struct testlib_caps el_caps;
static struct testlib_stack el_s;

static void
el_setup(void)
{
  testlib_caps_default(&el_caps);
  atomic_store(&server_exit_idle, 0);
  atomic_store(&server_exit_requested, 0);
}

static void
el_teardown(void)
{
  testlib_stack_free(&el_s);
}

START_TEST(test_close_of_a_connection_asks_exit)
{
  struct nbd_conn_info info;
  struct nbd_ctx *c;
  char err[512];

  memset(&info, 0, sizeof info);
  info.id = 3;
  info.family = AF_UNIX;
  testlib_stack(&el_s, "exitlast", &el_caps);
  c = engine_open(el_s.exp, 0, &info, err, sizeof err);
  ck_assert_ptr_nonnull(c);
  ck_assert_int_eq(atomic_load(&server_exit_idle), 0);
  engine_close(c);
  ck_assert_int_eq(atomic_load(&server_exit_idle), 1);
  /* Only when idle: not the immediate exit. */
  ck_assert_int_eq(atomic_load(&server_exit_requested), 0);
}
END_TEST

START_TEST(test_no_connection_no_exit)
{
  testlib_stack(&el_s, "exitlast", &el_caps);
  engine_close(el_s.top);
  el_s.top = NULL;
  ck_assert_int_eq(atomic_load(&server_exit_idle), 0);
}
END_TEST

START_TEST(test_requests_pass_through)
{
  static unsigned char buf[512];

  testlib_stack(&el_s, "exitlast", &el_caps);
  ck_assert_int_eq(next_pwrite(el_s.top, buf, 512, 1024, 0), 0);
  ck_assert_int_eq(next_flush(el_s.top, 0), 0);
  ck_assert_int_eq(next_trim(el_s.top, 512, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 1024+512 flags=0; flush; "
                   "trim 0+512 flags=0");
}
END_TEST

START_TEST(test_no_keys)
{
  char err[512] = "";

  ck_assert_ptr_null(testlib_filter_new("exitlast", "last=1", err,
                                        sizeof err));
  ck_assert_msg(strstr(err, "unknown key 'last'"), "err: %s", err);
}
END_TEST

static Suite *
el_suite(void)
{
  Suite *s = suite_create("exitlast");
  TCase *tc = tcase_create("exitlast");

  tcase_add_checked_fixture(tc, el_setup, el_teardown);
  tcase_add_test(tc, test_close_of_a_connection_asks_exit);
  tcase_add_test(tc, test_no_connection_no_exit);
  tcase_add_test(tc, test_requests_pass_through);
  tcase_add_test(tc, test_no_keys);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "exitlast"))
    return EXIT_SUCCESS;
  sr = srunner_create(el_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
