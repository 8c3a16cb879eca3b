/* Unit tests for filters/retry.c and the reopen method (layer.h
 * "Reopening") over the recording backend: a failing request reopens
 * the layers below (close outer first, open inner first; PASSTHROUGH
 * layers keep their state) and succeeds once the fault is gone; the
 * retries are bounded; retry-readonly reopens read-only and writes then
 * fail with EROFS; a failed reopen leaves the contexts closed and the
 * connection still closes cleanly; bad keys are refused.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testlib.h"

static struct testlib_caps rt_caps;
static struct testlib_stack rt_s;
static unsigned char rt_buf[4096];
static char rt_trigger[64];

static void
rt_setup(void)
{
  testlib_caps_default(&rt_caps);
  snprintf(rt_trigger, sizeof rt_trigger, "/tmp/check_retry.%d",
           (int)getpid());
  unlink(rt_trigger);
}

static void
rt_teardown(void)
{
  testlib_stack_free(&rt_s);
  unlink(rt_trigger);
}

static unsigned
rt_count(const char *hay, const char *needle)
{
  unsigned n = 0;

  while ((hay = strstr(hay, needle)) != NULL) {
    n++;
    hay += strlen(needle);
  }
  return n;
}

/* Removes the trigger file a moment after it starts. */
static void *
rt_remover(void *arg)
{
  struct timespec ts = { 0, 50 * 1000 * 1000 };

  (void)arg;
  nanosleep(&ts, NULL);
  unlink(rt_trigger);
  return NULL;
}

static void
rt_touch(void)
{
  FILE *f = fopen(rt_trigger, "w");

  ck_assert_ptr_nonnull(f);
  fclose(f);
}

START_TEST(test_recovers_after_fault_goes_away)
{
  char filters[512];
  pthread_t t;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "error"))
    return;
  /* Enough retries that the remover's 50 ms always come first. */
  snprintf(filters, sizeof filters,
           "retry retries=1000 retry-delay=10ms retry-exponential=no | "
           "tracer label=mid | error error-pread-rate=100%% error-file=%s",
           rt_trigger);
  rt_touch();
  testlib_stack(&rt_s, filters, &rt_caps);
  ck_assert_int_eq(pthread_create(&t, NULL, rt_remover, NULL), 0);
  ck_assert_int_eq(next_pread(rt_s.top, rt_buf, 512, 0, 0), 0);
  pthread_join(t, NULL);
  /* Reopened at least once, each time: the tracer (close_open) closed
   * before the recorder, and opened after it. */
  ck_assert_uint_ge(rt_count(testlib_lifecycle(), "finalize mid; close mid; "
                             "finalize recorder; close recorder; open "
                             "recorder; prepare recorder; open mid; "
                             "prepare mid"), 1);
  ck_assert_str_eq(testlib_log() + strlen(testlib_log()) -
                   strlen("pread 0+512 flags=0"), "pread 0+512 flags=0");
}
END_TEST

START_TEST(test_gives_up_after_retries)
{
  int before;

  rt_caps.size = 1 << 20;
  testlib_stack(&rt_s, "retry retries=3 retry-delay=1ms", &rt_caps);
  rt_s.rec->fail[NBD_METHOD_PREAD] = -EIO;
  ck_assert_int_eq(next_pread(rt_s.top, rt_buf, 512, 0, 0), -EIO);
  ck_assert_uint_eq(testlib_calls_of(rt_s.rec, NBD_METHOD_PREAD), 4);
  /* Three reopens of the recorder. */
  ck_assert_uint_eq(rt_count(testlib_lifecycle(), "close recorder; open "
                             "recorder"), 3);
  /* The next request is tried again (and reopens again). */
  rt_s.rec->fail[NBD_METHOD_PREAD] = 0;
  before = (int)rt_count(testlib_lifecycle(), "open recorder");
  ck_assert_int_eq(next_pread(rt_s.top, rt_buf, 512, 0, 0), 0);
  ck_assert_int_eq((int)rt_count(testlib_lifecycle(), "open recorder"),
                   before);
}
END_TEST

START_TEST(test_no_retries_means_one_try)
{
  testlib_stack(&rt_s, "retry retries=0", &rt_caps);
  rt_s.rec->fail[NBD_METHOD_PWRITE] = -ENOSPC;
  ck_assert_int_eq(next_pwrite(rt_s.top, rt_buf, 512, 0, 0), -ENOSPC);
  ck_assert_uint_eq(testlib_calls_of(rt_s.rec, NBD_METHOD_PWRITE), 1);
  ck_assert_uint_eq(rt_count(testlib_lifecycle(), "close recorder"), 0);
}
END_TEST

START_TEST(test_readonly_reopen_fails_writes_with_erofs)
{
  testlib_stack(&rt_s, "retry retries=5 retry-delay=1ms retry-readonly=yes",
                &rt_caps);
  rt_s.rec->fail[NBD_METHOD_PWRITE] = -EIO;
  ck_assert_int_eq(next_pwrite(rt_s.top, rt_buf, 512, 0, 0), -EROFS);
  ck_assert_uint_eq(testlib_calls_of(rt_s.rec, NBD_METHOD_PWRITE), 1);
  ck_assert_int_eq(rt_s.top->next->can_write, 0);
  /* Reads still work, and writes stay refused for this connection. */
  rt_s.rec->fail[NBD_METHOD_PWRITE] = 0;
  ck_assert_int_eq(next_pread(rt_s.top, rt_buf, 512, 0, 0), 0);
  ck_assert_int_eq(next_pwrite(rt_s.top, rt_buf, 512, 0, 0), -EROFS);
}
END_TEST

START_TEST(test_failed_reopen_closes_cleanly)
{
  testlib_stack(&rt_s, "retry retries=2 retry-delay=1ms | tracer label=t",
                &rt_caps);
  rt_s.rec->fail[NBD_METHOD_PREAD] = -EIO;
  rt_s.rec->fail[NBD_METHOD_OPEN] = -EIO;
  ck_assert_int_eq(next_pread(rt_s.top, rt_buf, 512, 0, 0), -EIO);
  /* The recorder never opened again: requests are not sent to it. */
  ck_assert_uint_eq(testlib_calls_of(rt_s.rec, NBD_METHOD_PREAD), 1);
  ck_assert_int_eq(rt_s.top->next->closed, 1);
  testlib_stack_free(&rt_s);
  /* Closed once each, at the first reopen; not again at the end. */
  ck_assert_uint_eq(rt_count(testlib_lifecycle(), "close t"), 1);
  ck_assert_uint_eq(rt_count(testlib_lifecycle(), "close recorder"), 1);
}
END_TEST

START_TEST(test_reopen_passthrough_keeps_layer_state)
{
  int r;

  /* cow (PASSTHROUGH) keeps what was written to its overlay. */
  if (!testlib_require_layer(NBD_LAYER_FILTER, "cow"))
    return;
  testlib_stack(&rt_s, "cow", &rt_caps);
  memset(rt_buf, 0xab, 512);
  ck_assert_int_eq(next_pwrite(rt_s.top, rt_buf, 512, 0, 0), 0);
  r = next_reopen(rt_s.top, 0);
  ck_assert_int_eq(r, 0);
  memset(rt_buf, 0, 512);
  ck_assert_int_eq(next_pread(rt_s.top, rt_buf, 512, 0, 0), 0);
  ck_assert_int_eq(rt_buf[0], 0xab);
  ck_assert_uint_eq(rt_count(testlib_lifecycle(), "close recorder; open "
                             "recorder"), 1);
}
END_TEST

START_TEST(test_reopen_asks_capabilities_again)
{
  testlib_stack(&rt_s, "tracer", &rt_caps);
  ck_assert_int_eq(rt_s.top->can_trim, 1);
  rt_s.rec->caps.can_trim = 0;
  ck_assert_int_eq(next_reopen(rt_s.top, 0), 0);
  ck_assert_int_eq(rt_s.top->next->can_trim, 0);
  ck_assert_int_eq(rt_s.top->can_trim, 0);
  ck_assert_int_eq(next_reopen(rt_s.top, 1), 0);
  ck_assert_int_eq(rt_s.top->can_write, 0);
}
END_TEST

START_TEST(test_size_change_fails_the_reopen)
{
  testlib_stack(&rt_s, "retry retries=2 retry-delay=1ms", &rt_caps);
  rt_s.rec->fail[NBD_METHOD_PREAD] = -EIO;
  rt_s.rec->caps.size = 512 << 10;
  ck_assert_int_eq(next_pread(rt_s.top, rt_buf, 512, 0, 0), -EIO);
  rt_s.rec->fail[NBD_METHOD_PREAD] = 0;
  /* Still refused: the layers below do not match what the client saw. */
  ck_assert_int_eq(next_pread(rt_s.top, rt_buf, 512, 0, 0), -EIO);
}
END_TEST

START_TEST(test_bad_keys_refused)
{
  char err[256];

  ck_assert_ptr_null(testlib_filter_new("retry", "retries=x", err,
                                        sizeof err));
  ck_assert_ptr_null(testlib_filter_new("retry", "retries=5000", err,
                                        sizeof err));
  ck_assert_ptr_nonnull(strstr(err, "retries"));
  ck_assert_ptr_null(testlib_filter_new("retry", "retry-delay=soon", err,
                                        sizeof err));
  ck_assert_ptr_null(testlib_filter_new("retry", "retry-readonly=maybe",
                                        err, sizeof err));
  ck_assert_ptr_null(testlib_filter_new("retry", "retrys=1", err,
                                        sizeof err));
}
END_TEST

static Suite *
rt_suite(void)
{
  Suite *s = suite_create("retry");
  TCase *tc = tcase_create("retry");

  if (!testlib_require_layer(NBD_LAYER_FILTER, "retry"))
    return s;
  tcase_add_checked_fixture(tc, rt_setup, rt_teardown);
  tcase_add_test(tc, test_recovers_after_fault_goes_away);
  tcase_add_test(tc, test_gives_up_after_retries);
  tcase_add_test(tc, test_no_retries_means_one_try);
  tcase_add_test(tc, test_readonly_reopen_fails_writes_with_erofs);
  tcase_add_test(tc, test_failed_reopen_closes_cleanly);
  tcase_add_test(tc, test_reopen_passthrough_keeps_layer_state);
  tcase_add_test(tc, test_reopen_asks_capabilities_again);
  tcase_add_test(tc, test_size_change_fails_the_reopen);
  tcase_add_test(tc, test_bad_keys_refused);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(rt_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
