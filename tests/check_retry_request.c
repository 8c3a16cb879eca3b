/* Unit tests for filters/retry_request.c over the recording backend: a
 * failing request is sent retry-request-retries more times and never
 * reopens anything; it succeeds once the fault is gone; a failed open
 * below is retried by the engine unless retry-request-open=false; the
 * extents list is started again on each try; bad keys are refused.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testlib.h"

static struct testlib_caps rr_caps;
static struct testlib_stack rr_s;
static unsigned char rr_buf[4096];
static char rr_trigger[64];

static void
rr_setup(void)
{
  testlib_caps_default(&rr_caps);
  snprintf(rr_trigger, sizeof rr_trigger, "/tmp/check_retry_request.%d",
           (int)getpid());
  unlink(rr_trigger);
}

static void
rr_teardown(void)
{
  testlib_stack_free(&rr_s);
  unlink(rr_trigger);
}

static void *
rr_remover(void *arg)
{
  struct timespec ts = { 0, 50 * 1000 * 1000 };

  (void)arg;
  nanosleep(&ts, NULL);
  unlink(rr_trigger);
  return NULL;
}

START_TEST(test_retries_then_gives_up)
{
  testlib_stack(&rr_s, "retry-request retry-request-retries=3 "
                "retry-request-delay=1ms", &rr_caps);
  rr_s.rec->fail[NBD_METHOD_PREAD] = -EIO;
  ck_assert_int_eq(next_pread(rr_s.top, rr_buf, 512, 0, 0), -EIO);
  ck_assert_uint_eq(testlib_calls_of(rr_s.rec, NBD_METHOD_PREAD), 4);
  ck_assert_ptr_null(strstr(testlib_lifecycle(), "close recorder"));
  rr_s.rec->fail[NBD_METHOD_PREAD] = 0;
  rr_s.rec->fail[NBD_METHOD_FLUSH] = -EIO;
  ck_assert_int_eq(next_flush(rr_s.top, 0), -EIO);
  ck_assert_uint_eq(testlib_calls_of(rr_s.rec, NBD_METHOD_FLUSH), 4);
}
END_TEST

START_TEST(test_default_is_two_retries)
{
  testlib_stack(&rr_s, "retry-request retry-request-delay=1ms", &rr_caps);
  rr_s.rec->fail[NBD_METHOD_TRIM] = -EIO;
  ck_assert_int_eq(next_trim(rr_s.top, 512, 0, 0), -EIO);
  ck_assert_uint_eq(testlib_calls_of(rr_s.rec, NBD_METHOD_TRIM), 3);
}
END_TEST

START_TEST(test_succeeds_when_fault_goes_away)
{
  char filters[512];
  FILE *f;
  pthread_t t;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "error"))
    return;
  snprintf(filters, sizeof filters,
           "retry-request retry-request-retries=1000 "
           "retry-request-delay=10ms | error error-pwrite-rate=1 "
           "error-file=%s", rr_trigger);
  f = fopen(rr_trigger, "w");
  ck_assert_ptr_nonnull(f);
  fclose(f);
  testlib_stack(&rr_s, filters, &rr_caps);
  ck_assert_int_eq(pthread_create(&t, NULL, rr_remover, NULL), 0);
  memset(rr_buf, 7, 512);
  ck_assert_int_eq(next_pwrite(rr_s.top, rr_buf, 512, 4096, 0), 0);
  pthread_join(t, NULL);
  ck_assert_str_eq(testlib_log(), "pwrite 4096+512 flags=0");
  ck_assert_int_eq(rr_s.rec->ram[4096], 7);
}
END_TEST

START_TEST(test_open_is_retried)
{
  ck_assert_int_eq(testlib_stack_new(&rr_s, "retry-request "
                                     "retry-request-retries=4 "
                                     "retry-request-delay=1ms", &rr_caps), 0);
  rr_s.rec->fail[NBD_METHOD_OPEN] = -EIO;
  ck_assert_int_eq(testlib_stack_open(&rr_s, 0), -1);
  ck_assert_uint_eq(testlib_calls_of(rr_s.rec, NBD_METHOD_OPEN), 5);
  testlib_stack_free(&rr_s);

  ck_assert_int_eq(testlib_stack_new(&rr_s, "retry-request "
                                     "retry-request-retries=4 "
                                     "retry-request-delay=1ms "
                                     "retry-request-open=false", &rr_caps),
                   0);
  rr_s.rec->fail[NBD_METHOD_OPEN] = -EIO;
  ck_assert_int_eq(testlib_stack_open(&rr_s, 0), -1);
  ck_assert_uint_eq(testlib_calls_of(rr_s.rec, NBD_METHOD_OPEN), 1);
}
END_TEST

START_TEST(test_extents_restart_each_try)
{
  struct nbd_extents *e = nbd_extents_new(0, 8192);

  testlib_stack(&rr_s, "retry-request retry-request-delay=1ms", &rr_caps);
  rr_s.rec->fail[NBD_METHOD_EXTENTS] = -EIO;
  ck_assert_int_eq(next_extents(rr_s.top, 8192, 0, 0, e), -EIO);
  rr_s.rec->fail[NBD_METHOD_EXTENTS] = 0;
  ck_assert_int_eq(next_extents(rr_s.top, 8192, 0, 0, e), 0);
  ck_assert_uint_eq(e->n, 1);
  ck_assert_uint_eq(e->v[0].length, 8192);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_bad_keys_refused)
{
  char err[256];

  ck_assert_ptr_null(testlib_filter_new("retry-request",
                                        "retry-request-retries=-1", err,
                                        sizeof err));
  ck_assert_ptr_null(testlib_filter_new("retry-request",
                                        "retry-request-retries=1001", err,
                                        sizeof err));
  ck_assert_ptr_null(testlib_filter_new("retry-request",
                                        "retry-request-open=perhaps", err,
                                        sizeof err));
  ck_assert_ptr_null(testlib_filter_new("retry-request", "retries=2", err,
                                        sizeof err));
}
END_TEST

static Suite *
rr_suite(void)
{
  Suite *s = suite_create("retry-request");
  TCase *tc = tcase_create("retry-request");

  if (!testlib_require_layer(NBD_LAYER_FILTER, "retry-request"))
    return s;
  tcase_add_checked_fixture(tc, rr_setup, rr_teardown);
  tcase_add_test(tc, test_retries_then_gives_up);
  tcase_add_test(tc, test_default_is_two_retries);
  tcase_add_test(tc, test_succeeds_when_fault_goes_away);
  tcase_add_test(tc, test_open_is_retried);
  tcase_add_test(tc, test_extents_restart_each_try);
  tcase_add_test(tc, test_bad_keys_refused);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(rr_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
