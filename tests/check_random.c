/* Unit tests for backends/random.c: the content is nbdkit's random
 * plugin's, byte for byte (expected bytes taken from nbdkit 1.32.5 with
 * seed=42), a write must match it, trim and zero fail, and bad seeds are
 * refused at setup.  Through the engine's next_<method>(), no sockets.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "testlib.h"

#define GEN_NAME "random"
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

/* ---- tests -------------------------------------------------------------- */

START_TEST(test_content_is_nbdkits_for_the_seed)
{
  struct nbd_ctx *c = gen_open("size=2M seed=42", 1);
  unsigned char b[16];
  char hex[40];

  ck_assert_int_eq(next_pread(c, b, 16, 0, 0), 0);
  gen_hex(b, 16, hex);
  ck_assert_str_eq(hex, "a16730e21cb6f8750dc6ae014f2a46e4");
  ck_assert_int_eq(next_pread(c, b, 16, 1000000, 0), 0);
  gen_hex(b, 16, hex);
  ck_assert_str_eq(hex, "6ae6ad40207ac22c4c87cbf9b054f4ce");
  gen_teardown();
}
END_TEST

START_TEST(test_a_byte_does_not_depend_on_where_the_read_starts)
{
  struct nbd_ctx *c = gen_open("size=1M seed=7", 1);
  unsigned char a[4096], b[100];

  ck_assert_int_eq(next_pread(c, a, 4096, 8192, 0), 0);
  ck_assert_int_eq(next_pread(c, b, 100, 8192 + 333, 0), 0);
  ck_assert_mem_eq(a + 333, b, 100);
  gen_teardown();
}
END_TEST

START_TEST(test_another_seed_gives_other_bytes)
{
  unsigned char a[64], b[64];

  gen_open("size=1M seed=1", 1);
  ck_assert_int_eq(next_pread(gen_b.ctx, a, 64, 0, 0), 0);
  gen_teardown();
  gen_open("size=1M seed=2", 1);
  ck_assert_int_eq(next_pread(gen_b.ctx, b, 64, 0, 0), 0);
  gen_teardown();
  ck_assert(memcmp(a, b, 64) != 0);
}
END_TEST

START_TEST(test_a_matching_write_succeeds_another_fails_with_eio)
{
  struct nbd_ctx *c = gen_open("size=1M seed=42", 0);
  unsigned char b[5000];

  ck_assert_int_eq(next_pread(c, b, sizeof b, 12345, 0), 0);
  ck_assert_int_eq(next_pwrite(c, b, sizeof b, 12345, 0), 0);
  b[4999] ^= 1;
  ck_assert_int_eq(next_pwrite(c, b, sizeof b, 12345, 0), -EIO);
  gen_teardown();
}
END_TEST

START_TEST(test_trim_and_zero_fail_with_eio)
{
  struct nbd_ctx *c = gen_open("size=1M seed=42", 0);

  ck_assert_int_eq(next_trim(c, 4096, 0, 0), -EIO);
  ck_assert_int_eq(next_zero(c, 4096, 0, 0), -EIO);
  ck_assert_int_eq(c->can_flush, 0);
  ck_assert_int_eq(c->can_extents, 0);
  ck_assert_int_eq(c->can_multi_conn, 1);
  ck_assert_int_eq(c->can_cache, NBD_CACHE_NATIVE);
  gen_teardown();
}
END_TEST

START_TEST(test_bad_seed_and_size_are_refused)
{
  ck_assert_str_eq(gen_refused("size=1M seed=4294967295"), "");
  ck_assert_ptr_nonnull(strstr(gen_refused("size=1M seed=4294967296"),
                               "0 to 4294967295"));
  ck_assert_ptr_nonnull(strstr(gen_refused("size=8E"), "2^63-1"));
  ck_assert_str_ne(gen_refused("seed=-1"), "");
}
END_TEST

static Suite *
random_suite(void)
{
  Suite *s = suite_create("random");
  TCase *tc = tcase_create("random");

  if (!testlib_require_layer(NBD_LAYER_BACKEND, "random"))
    return s;
  tcase_add_test(tc, test_content_is_nbdkits_for_the_seed);
  tcase_add_test(tc, test_a_byte_does_not_depend_on_where_the_read_starts);
  tcase_add_test(tc, test_another_seed_gives_other_bytes);
  tcase_add_test(tc, test_a_matching_write_succeeds_another_fails_with_eio);
  tcase_add_test(tc, test_trim_and_zero_fail_with_eio);
  tcase_add_test(tc, test_bad_seed_and_size_are_refused);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(random_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
