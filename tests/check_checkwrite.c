/* Unit tests for filters/checkwrite.c over the recording backend: a write
 * of the data already there passes and writes nothing; a different one
 * fails with EIO; zero and trim compare with zeros and skip what the
 * layer below maps as zero; flush and FUA do nothing; the disk is
 * writable even over a read-only layer.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps cw_caps;
static struct testlib_stack cw_s;
static unsigned char cw_buf[8192];

static void
cw_setup(void)
{
  testlib_caps_default(&cw_caps);
}

static void
cw_teardown(void)
{
  testlib_stack_free(&cw_s);
}

START_TEST(test_same_data_passes_without_writing)
{
  testlib_stack(&cw_s, "checkwrite", &cw_caps);
  memset(cw_s.rec->ram + 4096, 0x5a, 4096);
  memset(cw_buf, 0x5a, 4096);
  ck_assert_int_eq(next_pwrite(cw_s.top, cw_buf, 4096, 4096,
                               NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pread 4096+4096 flags=0");
  cw_buf[100] = 0;
  ck_assert_int_eq(next_pwrite(cw_s.top, cw_buf, 4096, 4096, 0), -EIO);
  ck_assert_uint_eq(testlib_calls_of(cw_s.rec, NBD_METHOD_PWRITE), 0);
  ck_assert_int_eq(cw_s.rec->ram[4096 + 100], 0x5a);
}
END_TEST

START_TEST(test_zero_and_trim_compare_with_zeros)
{
  testlib_stack(&cw_s, "checkwrite", &cw_caps);
  ck_assert_int_eq(next_zero(cw_s.top, 8192, 0, 0), 0);
  ck_assert_int_eq(next_trim(cw_s.top, 8192, 0, 0), 0);
  cw_s.rec->ram[8000] = 1;
  ck_assert_int_eq(next_zero(cw_s.top, 8192, 0, 0), -EIO);
  ck_assert_int_eq(next_trim(cw_s.top, 8192, 0, 0), -EIO);
  ck_assert_int_eq(next_zero(cw_s.top, 4096, 0, NBD_CMD_FLAG_FAST_ZERO), 0);
  ck_assert_uint_eq(testlib_calls_of(cw_s.rec, NBD_METHOD_ZERO), 0);
  ck_assert_uint_eq(testlib_calls_of(cw_s.rec, NBD_METHOD_TRIM), 0);
}
END_TEST

START_TEST(test_zero_extents_not_read)
{
  testlib_stack_new(&cw_s, "checkwrite", &cw_caps);
  testlib_recorder_map(cw_s.rec, 0, 65536, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  testlib_recorder_map(cw_s.rec, 65536, 4096, 0);
  testlib_recorder_map(cw_s.rec, 69632, (1 << 20) - 69632,
                       NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  ck_assert_int_eq(testlib_stack_open(&cw_s, 0), 0);
  ck_assert_int_eq(next_zero(cw_s.top, 1 << 20, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "extents 0+1048576 flags=0; "
                   "pread 65536+4096 flags=0");
}
END_TEST

START_TEST(test_capabilities)
{
  cw_caps.can_write = 0;
  cw_caps.can_flush = 0;
  cw_caps.can_trim = 0;
  cw_caps.can_zero = NBD_ZERO_NONE;
  testlib_stack(&cw_s, "checkwrite", &cw_caps);
  ck_assert_int_eq(cw_s.top->can_write, 1);
  ck_assert_int_eq(cw_s.top->can_flush, 1);
  ck_assert_int_eq(cw_s.top->can_trim, 1);
  ck_assert_int_eq(cw_s.top->can_zero, NBD_ZERO_NATIVE);
  ck_assert_int_eq(cw_s.top->can_fua, NBD_FUA_NATIVE);
  ck_assert_int_eq(cw_s.top->can_multi_conn, 1);
  ck_assert_int_eq(next_flush(cw_s.top, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  memset(cw_buf, 0, 512);
  ck_assert_int_eq(next_pwrite(cw_s.top, cw_buf, 512, 0, 0), 0);
}
END_TEST

START_TEST(test_no_keys)
{
  char err[256];

  ck_assert_ptr_null(testlib_filter_new("checkwrite", "check=yes", err,
                                        sizeof err));
}
END_TEST

static Suite *
cw_suite(void)
{
  Suite *s = suite_create("checkwrite");
  TCase *tc = tcase_create("checkwrite");

  if (!testlib_require_layer(NBD_LAYER_FILTER, "checkwrite"))
    return s;
  tcase_add_checked_fixture(tc, cw_setup, cw_teardown);
  tcase_add_test(tc, test_same_data_passes_without_writing);
  tcase_add_test(tc, test_zero_and_trim_compare_with_zeros);
  tcase_add_test(tc, test_zero_extents_not_read);
  tcase_add_test(tc, test_capabilities);
  tcase_add_test(tc, test_no_keys);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(cw_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
