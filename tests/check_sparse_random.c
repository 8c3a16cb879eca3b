/* Unit tests for backends/sparse_random.c: the map and content are
 * nbdkit's sparse-random plugin's (expected extents and bytes taken from
 * nbdkit 1.32.5 with seed=42 runlength=65536), extents follow the
 * content, writes and trims are checked against it, an unaligned read
 * agrees with an aligned one (where nbdkit 1.32.5 does not), and bad
 * values are refused at setup.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "testlib.h"

#define GEN_NAME "sparse-random"
#define HOLE (NBD_EXTENT_HOLE | NBD_EXTENT_ZERO)
#define NBDKIT_42 "size=64M seed=42 runlength=65536"
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

START_TEST(test_map_is_nbdkits_for_the_seed)
{
  struct nbd_ctx *c = gen_open(NBDKIT_42, 1);
  struct nbd_extents *e = nbd_extents_new(0, 2 << 20);

  ck_assert_ptr_nonnull(e);
  ck_assert_int_eq(next_extents(c, 2 << 20, 0, 0, e), 0);
  ck_assert_uint_ge(e->n, 4);
  ck_assert_uint_eq(e->v[0].offset, 0);
  ck_assert_uint_eq(e->v[0].length, 708608);
  ck_assert_uint_eq(e->v[0].type, HOLE);
  ck_assert_uint_eq(e->v[1].length, 12288);
  ck_assert_uint_eq(e->v[1].type, 0);
  ck_assert_uint_eq(e->v[2].length, 499712);
  ck_assert_uint_eq(e->v[2].type, HOLE);
  ck_assert_uint_eq(e->v[3].offset, 1220608);
  ck_assert_uint_eq(e->v[3].length, 49152);
  ck_assert_uint_eq(e->v[3].type, 0);
  nbd_extents_free(e);
  gen_teardown();
}
END_TEST

START_TEST(test_content_is_nbdkits_and_holes_read_zero)
{
  struct nbd_ctx *c = gen_open(NBDKIT_42, 1);
  unsigned char b[16];
  char hex[40];

  ck_assert_int_eq(next_pread(c, b, 8, 708608, 0), 0);
  gen_hex(b, 8, hex);
  ck_assert_str_eq(hex, "7a7a7a7a7a7a7a7a");
  ck_assert_int_eq(next_pread(c, b, 8, 708608 + 4096, 0), 0);
  gen_hex(b, 8, hex);
  ck_assert_str_eq(hex, "dadadadadadadada");
  ck_assert_int_eq(next_pread(c, b, 16, 708608 - 16, 0), 0);
  ck_assert(nbd_is_zero(b, 16));
  gen_teardown();
  c = gen_open(NBDKIT_42 " random-content=true", 1);
  ck_assert_int_eq(next_pread(c, b, 16, 708608, 0), 0);
  gen_hex(b, 16, hex);
  ck_assert_str_eq(hex, "7a4afa093bb09956c53d980bb68b28a0");
  gen_teardown();
}
END_TEST

START_TEST(test_an_unaligned_read_agrees_with_an_aligned_one)
{
  struct nbd_ctx *c = gen_open(NBDKIT_42 " random-content=true", 1);
  unsigned char *a = malloc(3 * 4096), b[5000];

  ck_assert_ptr_nonnull(a);
  ck_assert_int_eq(next_pread(c, a, 3 * 4096, 708608, 0), 0);
  ck_assert_int_eq(next_pread(c, b, sizeof b, 708608 + 1000, 0), 0);
  ck_assert_mem_eq(a + 1000, b, sizeof b);
  free(a);
  gen_teardown();
}
END_TEST

START_TEST(test_writes_trims_and_zeros_are_checked_against_the_content)
{
  struct nbd_ctx *c = gen_open(NBDKIT_42, 0);
  unsigned char *b = malloc(3 * 4096);

  ck_assert_ptr_nonnull(b);
  /* across the end of the first hole into the data run */
  ck_assert_int_eq(next_pread(c, b, 3 * 4096, 708608 - 4096 - 7, 0), 0);
  ck_assert_int_eq(next_pwrite(c, b, 3 * 4096, 708608 - 4096 - 7, 0), 0);
  b[3] = 1;                     /* in the hole */
  ck_assert_int_eq(next_pwrite(c, b, 3 * 4096, 708608 - 4096 - 7, 0), -EIO);
  b[3] = 0;
  b[3 * 4096 - 1] ^= 0xff;      /* in the data */
  ck_assert_int_eq(next_pwrite(c, b, 3 * 4096, 708608 - 4096 - 7, 0), -EIO);
  ck_assert_int_eq(next_trim(c, 708608 - 5, 5, 0), 0);
  ck_assert_int_eq(next_zero(c, 708608, 0, 0), 0);
  ck_assert_int_eq(next_zero(c, 708608 + 1, 0, 0), -EIO);
  ck_assert_int_eq(next_trim(c, 4096, 708608 - 1, 0), -EIO);
  ck_assert_int_eq(next_flush(c, 0), 0);
  free(b);
  gen_teardown();
}
END_TEST

START_TEST(test_percent_0_and_100_are_all_hole_and_all_data)
{
  struct nbd_ctx *c = gen_open("size=1000000 seed=3 percent=0", 1);
  struct nbd_extents *e = nbd_extents_new(0, 1000000);

  ck_assert_int_eq(next_extents(c, 1000000, 0, 0, e), 0);
  ck_assert_uint_eq(e->n, 1);
  ck_assert_uint_eq(e->v[0].type, HOLE);
  nbd_extents_free(e);
  gen_teardown();
  c = gen_open("size=1000000 seed=3 percent=100", 1);
  e = nbd_extents_new(0, 1000000);
  ck_assert_int_eq(next_extents(c, 1000000, 0, 0, e), 0);
  ck_assert_uint_eq(e->n, 1);
  ck_assert_uint_eq(e->v[0].type, 0);
  ck_assert_uint_eq(e->v[0].length, 1000000);
  nbd_extents_free(e);
  gen_teardown();
}
END_TEST

START_TEST(test_bad_values_are_refused_with_the_range)
{
  ck_assert_str_eq(gen_refused("size=1M percent=2.5 runlength=4k"), "");
  ck_assert_ptr_nonnull(strstr(gen_refused("size=1M percent=101"),
                               "0 to 100"));
  ck_assert_ptr_nonnull(strstr(gen_refused("size=1M percent=5x"),
                               "0 to 100"));
  ck_assert_ptr_nonnull(strstr(gen_refused("size=1M runlength=0"),
                               "1 to"));
  ck_assert_ptr_nonnull(strstr(gen_refused("size=1M seed=4294967296"),
                               "0 to 4294967295"));
  ck_assert_str_ne(gen_refused("size=1M random-content=maybe"), "");
}
END_TEST

static Suite *
sparse_random_suite(void)
{
  Suite *s = suite_create("sparse-random");
  TCase *tc = tcase_create("sparse-random");

  if (!testlib_require_layer(NBD_LAYER_BACKEND, "sparse-random"))
    return s;
  tcase_add_test(tc, test_map_is_nbdkits_for_the_seed);
  tcase_add_test(tc, test_content_is_nbdkits_and_holes_read_zero);
  tcase_add_test(tc, test_an_unaligned_read_agrees_with_an_aligned_one);
  tcase_add_test(tc, test_writes_trims_and_zeros_are_checked_against_the_content);
  tcase_add_test(tc, test_percent_0_and_100_are_all_hole_and_all_data);
  tcase_add_test(tc, test_bad_values_are_refused_with_the_range);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(sparse_random_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
