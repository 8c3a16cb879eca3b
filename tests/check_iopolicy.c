/* Unit tests for src/iopolicy.c's polling rule: how long the reader polls
 * for the next request, when it skips polling after a poll that found
 * nothing, and the longer poll a busy client earns.  wire.c only asks;
 * these are the answers it gets.
 */
#include <check.h>
#include <stdlib.h>

#include "iopolicy.h"

#define US 1000ull

/* Polls that find a request, n times; every one must be allowed and last
 * want ns. */
static void
polls_found(struct nbd_iopolicy *p, int n, uint64_t want)
{
  uint64_t ns;

  while (n-- > 0) {
    ns = 0;
    ck_assert_int_eq(iopolicy_poll_begin(p, &ns), 1);
    ck_assert_uint_eq(ns, want);
    iopolicy_poll_end(p, 1);
  }
}

START_TEST(test_poll_off_never_polls)
{
  struct nbd_iopolicy p;
  uint64_t ns = 7;

  iopolicy_init(&p, 0, 0);
  ck_assert_int_eq(iopolicy_poll_begin(&p, &ns), 0);
  ck_assert_uint_eq(ns, 7);
}
END_TEST

START_TEST(test_poll_lasts_poll_until_a_streak)
{
  struct nbd_iopolicy p;

  iopolicy_init(&p, 50 * US, 0);
  polls_found(&p, 16, 50 * US);
  /* 16 in a row found a request: the client is busy, poll longer */
  polls_found(&p, 3, 400 * US);
}
END_TEST

START_TEST(test_long_poll_capped_at_1ms)
{
  struct nbd_iopolicy p;

  iopolicy_init(&p, 200 * US, 0);
  polls_found(&p, 16, 200 * US);
  polls_found(&p, 1, 1000 * US);
  /* a configured poll of 1 ms is not shortened */
  iopolicy_init(&p, 1000 * US, 0);
  polls_found(&p, 16, 1000 * US);
  polls_found(&p, 1, 1000 * US);
}
END_TEST

START_TEST(test_empty_poll_ends_streak_and_skips)
{
  struct nbd_iopolicy p;
  uint64_t ns;

  iopolicy_init(&p, 50 * US, 0);
  polls_found(&p, 16, 50 * US);
  polls_found(&p, 4, 400 * US);
  /* the busy client went idle: one long poll finds nothing */
  ck_assert_int_eq(iopolicy_poll_begin(&p, &ns), 1);
  ck_assert_uint_eq(ns, 400 * US);
  iopolicy_poll_end(&p, 0);
  ck_assert_int_eq(iopolicy_poll_begin(&p, &ns), 0);     /* skipped once */
  /* back to short polls until it has been busy 16 times again */
  polls_found(&p, 16, 50 * US);
  polls_found(&p, 1, 400 * US);
}
END_TEST

START_TEST(test_backoff_doubles_to_64)
{
  static const unsigned want[] = { 1, 2, 4, 8, 16, 32, 64, 64, 64 };
  struct nbd_iopolicy p;
  uint64_t ns;
  unsigned i, skipped;

  iopolicy_init(&p, 50 * US, 0);
  ck_assert_int_eq(iopolicy_poll_begin(&p, &ns), 1);
  for (i = 0; i < sizeof want / sizeof *want; i++) {
    iopolicy_poll_end(&p, 0);   /* the poll begun last found nothing */
    for (skipped = 0; iopolicy_poll_begin(&p, &ns) == 0; skipped++)
      ck_assert_uint_le(skipped, 64);
    ck_assert_uint_eq(skipped, want[i]);
    ck_assert_uint_eq(ns, 50 * US);
  }
  /* one poll that finds a request starts the backoff over */
  iopolicy_poll_end(&p, 1);
  ck_assert_int_eq(iopolicy_poll_begin(&p, &ns), 1);
  iopolicy_poll_end(&p, 0);
  ck_assert_int_eq(iopolicy_poll_begin(&p, &ns), 0);
  ck_assert_int_eq(iopolicy_poll_begin(&p, &ns), 1);
}
END_TEST

int
main(void)
{
  Suite *s = suite_create("iopolicy");
  TCase *tc = tcase_create("poll");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_poll_off_never_polls);
  tcase_add_test(tc, test_poll_lasts_poll_until_a_streak);
  tcase_add_test(tc, test_long_poll_capped_at_1ms);
  tcase_add_test(tc, test_empty_poll_ends_streak_and_skips);
  tcase_add_test(tc, test_backoff_doubles_to_64);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
