/* Unit tests for filters/swab.c over the recording backend: reads swap
 * 16-, 32- and 64-bit words (8 changes nothing); writes swap back;
 * unaligned reads and writes work by read-modify-write of the partial
 * words; zero passes whole words down; trim drops partial words; the
 * size is rounded down to a word; extents are hidden; bad values are
 * refused.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps sw_caps;
static struct testlib_stack sw_s;
static unsigned char sw_buf[8192];

static void
sw_setup(void)
{
  testlib_caps_default(&sw_caps);
}

static void
sw_teardown(void)
{
  testlib_stack_free(&sw_s);
}

static void
sw_open(const char *filters)
{
  int i;

  testlib_stack(&sw_s, filters, &sw_caps);
  for (i = 0; i < 64; i++)
    sw_s.rec->ram[i] = (unsigned char)i;
}

START_TEST(test_reads_swap_words)
{
  static const struct { const char *f; unsigned char want[8]; } t[] = {
    { "swab", { 1, 0, 3, 2, 5, 4, 7, 6 } },
    { "swab swab-bits=16", { 1, 0, 3, 2, 5, 4, 7, 6 } },
    { "swab swab-bits=32", { 3, 2, 1, 0, 7, 6, 5, 4 } },
    { "swab swab-bits=64", { 7, 6, 5, 4, 3, 2, 1, 0 } },
    { "swab swab-bits=8", { 0, 1, 2, 3, 4, 5, 6, 7 } },
  };
  size_t i;

  for (i = 0; i < sizeof t / sizeof t[0]; i++) {
    sw_open(t[i].f);
    ck_assert_int_eq(next_pread(sw_s.top, sw_buf, 8, 0, 0), 0);
    ck_assert_msg(memcmp(sw_buf, t[i].want, 8) == 0, "%s", t[i].f);
    testlib_stack_free(&sw_s);
  }
}
END_TEST

START_TEST(test_unaligned_read)
{
  sw_open("swab swab-bits=32");
  ck_assert_int_eq(next_pread(sw_s.top, sw_buf, 3, 2, 0), 0);
  ck_assert_int_eq(sw_buf[0], 1);
  ck_assert_int_eq(sw_buf[1], 0);
  ck_assert_int_eq(sw_buf[2], 7);
  ck_assert_str_eq(testlib_log(), "pread 0+8 flags=0");
}
END_TEST

START_TEST(test_writes_swap_back)
{
  unsigned char w[4] = { 0xa, 0xb, 0xc, 0xd };

  sw_open("swab");
  ck_assert_int_eq(next_pwrite(sw_s.top, w, 4, 8, 0), 0);
  ck_assert_int_eq(sw_s.rec->ram[8], 0xb);
  ck_assert_int_eq(sw_s.rec->ram[9], 0xa);
  ck_assert_int_eq(sw_s.rec->ram[10], 0xd);
  ck_assert_str_eq(testlib_log(), "pwrite 8+4 flags=0");
  ck_assert_int_eq(next_pread(sw_s.top, sw_buf, 4, 8, 0), 0);
  ck_assert_int_eq(memcmp(sw_buf, w, 4), 0);
}
END_TEST

START_TEST(test_unaligned_write_read_modify_write)
{
  unsigned char w = 0xee;

  sw_open("swab swab-bits=64");
  /* Client byte 1 is below byte 6 of the first word. */
  ck_assert_int_eq(next_pwrite(sw_s.top, &w, 1, 1, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+8 flags=0; pwrite 0+8 flags=FUA");
  ck_assert_int_eq(sw_s.rec->ram[6], 0xee);
  ck_assert_int_eq(sw_s.rec->ram[7], 7);
  ck_assert_int_eq(sw_s.rec->ram[5], 5);
}
END_TEST

START_TEST(test_zero_whole_and_partial_words)
{
  sw_open("swab swab-bits=32");
  ck_assert_int_eq(next_zero(sw_s.top, 10, 1, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+4 flags=0; pwrite 0+4 flags=0; "
                   "zero 4+4 flags=0; pread 8+4 flags=0; "
                   "pwrite 8+4 flags=0");
  /* Client bytes 1..10 zero: below, word 0 keeps client byte 0 (below
   * byte 3), word 2 keeps client byte 11 (below byte 8). */
  ck_assert_int_eq(sw_s.rec->ram[3], 3);
  ck_assert_int_eq(sw_s.rec->ram[2], 0);
  ck_assert_int_eq(sw_s.rec->ram[8], 8);
  ck_assert_int_eq(sw_s.rec->ram[9], 0);
  ck_assert_int_eq(next_zero(sw_s.top, 2, 1, NBD_CMD_FLAG_FAST_ZERO),
                   -ENOTSUP);
}
END_TEST

START_TEST(test_trim_whole_words_only)
{
  sw_open("swab swab-bits=64");
  ck_assert_int_eq(next_trim(sw_s.top, 20, 4, 0), 0);
  ck_assert_str_eq(testlib_log(), "trim 8+16 flags=0");
}
END_TEST

START_TEST(test_size_rounded_down_extents_hidden)
{
  sw_caps.size = (1 << 20) + 7;
  testlib_stack(&sw_s, "swab swab-bits=64", &sw_caps);
  ck_assert_int_eq(sw_s.top->size, 1 << 20);
  ck_assert_int_eq(sw_s.top->can_extents, 0);
  testlib_stack_free(&sw_s);
  testlib_stack(&sw_s, "swab swab-bits=16", &sw_caps);
  ck_assert_int_eq(sw_s.top->size, (1 << 20) + 6);
}
END_TEST

START_TEST(test_bad_values_refused)
{
  char err[256];

  ck_assert_ptr_null(testlib_filter_new("swab", "swab-bits=12", err,
                                        sizeof err));
  ck_assert_ptr_null(testlib_filter_new("swab", "swab-bits=", err,
                                        sizeof err));
  ck_assert_ptr_null(testlib_filter_new("swab", "bits=16", err, sizeof err));
}
END_TEST

static Suite *
sw_suite(void)
{
  Suite *s = suite_create("swab");
  TCase *tc = tcase_create("swab");

  if (!testlib_require_layer(NBD_LAYER_FILTER, "swab"))
    return s;
  tcase_add_checked_fixture(tc, sw_setup, sw_teardown);
  tcase_add_test(tc, test_reads_swap_words);
  tcase_add_test(tc, test_unaligned_read);
  tcase_add_test(tc, test_writes_swap_back);
  tcase_add_test(tc, test_unaligned_write_read_modify_write);
  tcase_add_test(tc, test_zero_whole_and_partial_words);
  tcase_add_test(tc, test_trim_whole_words_only);
  tcase_add_test(tc, test_size_rounded_down_extents_hidden);
  tcase_add_test(tc, test_bad_values_refused);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(sw_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
