/* Unit tests for filters/protect.c over the recording backend: a write
 * that changes protected bytes fails with EPERM and writes nothing; an
 * identical rewrite and writes outside pass; ~ protects the complement;
 * open-ended and overlapping ranges; zero compares with zeros; trim
 * never touches protected bytes; bad ranges are refused.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps pr_caps;
static struct testlib_stack pr_s;
static unsigned char pr_buf[8192];

static void
pr_setup(void)
{
  testlib_caps_default(&pr_caps);
}

static void
pr_teardown(void)
{
  testlib_stack_free(&pr_s);
}

static void
pr_open(const char *filters)
{
  testlib_stack(&pr_s, filters, &pr_caps);
  /* Known contents: every byte 0x11. */
  memset(pr_s.rec->ram, 0x11, (size_t)pr_caps.size);
}

START_TEST(test_change_refused_rewrite_allowed)
{
  pr_open("protect protect=1024-2047");
  memset(pr_buf, 0x22, 4096);
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 4096, 0, 0), -EPERM);
  ck_assert_int_eq(pr_s.rec->ram[0], 0x11);
  ck_assert_uint_eq(testlib_calls_of(pr_s.rec, NBD_METHOD_PWRITE), 0);
  /* Only the protected bytes were read to compare. */
  ck_assert_str_eq(testlib_log(), "pread 1024+1024 flags=0");

  memset(pr_buf + 1024, 0x11, 1024);      /* same bytes where protected */
  testlib_log_clear();
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 4096, 0, 0), 0);
  ck_assert_str_eq(testlib_log(),
                   "pread 1024+1024 flags=0; pwrite 0+4096 flags=0");
  ck_assert_int_eq(pr_s.rec->ram[0], 0x22);
  ck_assert_int_eq(pr_s.rec->ram[1024], 0x11);
}
END_TEST

START_TEST(test_outside_writes_not_read)
{
  pr_open("protect protect=0-511");
  memset(pr_buf, 0x33, 512);
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 512, 512, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 512+512 flags=0");
  /* The last protected byte is 511, inclusive. */
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 1, 511, 0), -EPERM);
}
END_TEST

START_TEST(test_complement)
{
  pr_open("protect protect=~4096-8191");
  memset(pr_buf, 0x44, 4096);
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 4096, 4096, 0), 0);
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 1, 4095, 0), -EPERM);
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 1, 8192, 0), -EPERM);
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 1, 1048575, 0), -EPERM);
}
END_TEST

START_TEST(test_open_ends_and_merging)
{
  pr_open("protect protect=-0x1ff protect=0x100-0x3ff protect=1048000-");
  memset(pr_buf, 0x55, 8192);
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 1, 0, 0), -EPERM);
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 1, 0x3ff, 0), -EPERM);
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 1, 0x400, 0), 0);
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 1, 1048575, 0), -EPERM);
  /* The two low ranges merged into one: one compare read. */
  testlib_log_clear();
  ck_assert_int_eq(next_pwrite(pr_s.top, pr_buf, 2048, 0, 0), -EPERM);
  ck_assert_str_eq(testlib_log(), "pread 0+1024 flags=0");
}
END_TEST

START_TEST(test_zero_compares_with_zeros)
{
  pr_open("protect protect=0-4095");
  ck_assert_int_eq(next_zero(pr_s.top, 8192, 0, 0), -EPERM);
  ck_assert_int_eq(pr_s.rec->ram[4096], 0x11);
  memset(pr_s.rec->ram, 0, 4096);
  ck_assert_int_eq(next_zero(pr_s.top, 8192, 0, 0), 0);
  ck_assert_int_eq(pr_s.rec->ram[4096], 0);
}
END_TEST

START_TEST(test_trim_skips_protected)
{
  pr_open("protect protect=4096-8191 protect=12288-");
  ck_assert_int_eq(next_trim(pr_s.top, 16384, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "trim 0+4096 flags=0; "
                   "trim 8192+4096 flags=0");
  testlib_log_clear();
  ck_assert_int_eq(next_trim(pr_s.top, 4096, 4096, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "flush");
}
END_TEST

START_TEST(test_reads_and_extents_pass)
{
  struct nbd_extents *e = nbd_extents_new(0, 4096);

  pr_open("protect protect=0-");
  ck_assert_int_eq(next_pread(pr_s.top, pr_buf, 4096, 0, 0), 0);
  ck_assert_int_eq(next_extents(pr_s.top, 4096, 0, 0, e), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+4096 flags=0; "
                   "extents 0+4096 flags=0");
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_bad_ranges_refused)
{
  static const char *const bad[] = {
    "protect=abc", "protect=5-3", "protect=100", "protect=1-2-3",
    "protect=0x-1", "protect=~", "protect=-5-9", "proteckt=0-1",
  };
  char err[256];
  size_t i;

  for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(testlib_filter_new("protect", bad[i], err, sizeof err) ==
                  NULL, "%s accepted", bad[i]);
}
END_TEST

static Suite *
pr_suite(void)
{
  Suite *s = suite_create("protect");
  TCase *tc = tcase_create("protect");

  if (!testlib_require_layer(NBD_LAYER_FILTER, "protect"))
    return s;
  tcase_add_checked_fixture(tc, pr_setup, pr_teardown);
  tcase_add_test(tc, test_change_refused_rewrite_allowed);
  tcase_add_test(tc, test_outside_writes_not_read);
  tcase_add_test(tc, test_complement);
  tcase_add_test(tc, test_open_ends_and_merging);
  tcase_add_test(tc, test_zero_compares_with_zeros);
  tcase_add_test(tc, test_trim_skips_protected);
  tcase_add_test(tc, test_reads_and_extents_pass);
  tcase_add_test(tc, test_bad_ranges_refused);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(pr_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
