/* Unit tests for backends/pattern.c: each 8-byte word is its own offset,
 * big-endian, from any starting byte; the disk is read-only; the size is
 * checked at setup.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "testlib.h"

#define GEN_NAME "pattern"
/* ---- helpers ------------------------------------------------------------ */

/* The backend alone (tests/testlib.c). */
static struct testlib_backend gen_b;

static struct nbd_ctx *
gen_open(const char *params, int readonly)
{
  return testlib_backend_open(&gen_b, GEN_NAME, params, readonly);
}

static void
gen_teardown(void)
{
  testlib_backend_close(&gen_b);
}

static const char *
gen_refused(const char *params)
{
  return testlib_backend_refused(GEN_NAME, params);
}

#define gen_hex testlib_hex

START_TEST(test_words_hold_their_offset_from_any_start)
{
  struct nbd_ctx *c = gen_open("size=64", 1);
  unsigned char b[24];
  char hex[60];

  /* nbdkit 1.32.5: pattern size=64, 24 bytes at 13 */
  ck_assert_int_eq(next_pread(c, b, 24, 13, 0), 0);
  gen_hex(b, 24, hex);
  ck_assert_str_eq(hex, "000008000000000000001000000000000000180000000000");
  ck_assert_int_eq(next_pread(c, b, 3, 61, 0), 0);
  ck_assert_uint_eq(b[2], 0x38);
  gen_teardown();
}
END_TEST

START_TEST(test_is_read_only_with_no_extents)
{
  struct nbd_ctx *c = gen_open("size=1M", 0);
  unsigned char b[8] = { 0 };

  ck_assert_int_eq(c->can_write, 0);
  ck_assert_int_eq(c->can_extents, 0);
  ck_assert_int_eq(c->can_cache, NBD_CACHE_NATIVE);
  ck_assert_int_eq(next_pwrite(c, b, 8, 0, 0), -EPERM);
  gen_teardown();
}
END_TEST

START_TEST(test_size_is_checked)
{
  ck_assert_str_eq(gen_refused("size=0"), "");
  ck_assert_ptr_nonnull(strstr(gen_refused("size=8E"), "0 to 2^63-1"));
  ck_assert_str_ne(gen_refused("size=-1"), "");
}
END_TEST

static Suite *
pattern_suite(void)
{
  Suite *s = suite_create("pattern");
  TCase *tc = tcase_create("pattern");

  if (!testlib_require_layer(NBD_LAYER_BACKEND, "pattern"))
    return s;
  tcase_add_test(tc, test_words_hold_their_offset_from_any_start);
  tcase_add_test(tc, test_is_read_only_with_no_extents);
  tcase_add_test(tc, test_size_is_checked);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(pattern_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
