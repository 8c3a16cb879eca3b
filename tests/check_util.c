/* Unit tests for src/util.c. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"

/* Every alignment and length up to 200, with one non-zero byte at every
 * position (or none), and non-zero guard bytes just outside the range. */
START_TEST(test_is_zero_every_alignment_length_and_position)
{
  unsigned char b[300];
  size_t off, len;
  long pos;

  for (off = 0; off < 16; off++)
    for (len = 0; len < 200; len++)
      for (pos = -1; pos < (long)len; pos++) {
        memset(b, 0, sizeof b);
        if (pos >= 0)
          b[off + (size_t)pos] = 0x80;
        b[off + len] = 7;
        if (off)
          b[off - 1] = 9;
        ck_assert_int_eq(nbd_is_zero(b + off, len), pos < 0);
      }
}
END_TEST

START_TEST(test_is_zero_large_buffers)
{
  size_t n = 1 << 20;
  unsigned char *b = calloc(1, n);

  ck_assert_ptr_nonnull(b);
  ck_assert_int_eq(nbd_is_zero(b, n), 1);
  b[n - 1] = 1;
  ck_assert_int_eq(nbd_is_zero(b, n), 0);
  ck_assert_int_eq(nbd_is_zero(b, n - 1), 1);
  b[n / 2] = 1;
  ck_assert_int_eq(nbd_is_zero(b, n - 1), 0);
  free(b);
}
END_TEST

int
main(void)
{
  Suite *s = suite_create("util");
  TCase *tc = tcase_create("nbd_is_zero");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_is_zero_every_alignment_length_and_position);
  tcase_add_test(tc, test_is_zero_large_buffers);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
