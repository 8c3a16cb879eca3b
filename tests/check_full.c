/* Unit tests for backends/full.c: reads are zeros, writes, trims and
 * zeros fail with ENOSPC (a fast zero with ENOTSUP), extents are one
 * hole, size is required.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "testlib.h"

#define GEN_NAME "full"
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

START_TEST(test_reads_zeros_and_reports_a_hole)
{
  struct nbd_ctx *c = gen_open("size=1M", 0);
  unsigned char b[4096];
  struct nbd_extents *e = nbd_extents_new(4096, 8192);

  memset(b, 0xaa, sizeof b);
  ck_assert_int_eq(next_pread(c, b, sizeof b, 1000, 0), 0);
  ck_assert(nbd_is_zero(b, sizeof b));
  ck_assert_int_eq(next_extents(c, 4096, 4096, 0, e), 0);
  ck_assert_uint_eq(e->n, 1);
  ck_assert_uint_eq(e->v[0].offset, 4096);
  ck_assert_uint_eq(e->v[0].type, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  nbd_extents_free(e);
  gen_teardown();
}
END_TEST

START_TEST(test_every_write_fails_with_enospc)
{
  struct nbd_ctx *c = gen_open("size=1M", 0);
  unsigned char b[512] = { 0 };

  ck_assert_int_eq(c->can_write, 1);
  ck_assert_int_eq(c->can_flush, 0);
  ck_assert_int_eq(next_pwrite(c, b, sizeof b, 0, 0), -ENOSPC);
  ck_assert_int_eq(next_trim(c, 512, 0, 0), -ENOSPC);
  ck_assert_int_eq(next_zero(c, 512, 0, 0), -ENOSPC);
  ck_assert_int_eq(next_zero(c, 512, 0, NBD_CMD_FLAG_FAST_ZERO), -ENOTSUP);
  gen_teardown();
}
END_TEST

START_TEST(test_size_is_required_and_checked)
{
  ck_assert_str_ne(gen_refused(""), "");
  ck_assert_ptr_nonnull(strstr(gen_refused("size=8E"), "0 to 2^63-1"));
  ck_assert_str_eq(gen_refused("size=0"), "");
}
END_TEST

static Suite *
full_suite(void)
{
  Suite *s = suite_create("full");
  TCase *tc = tcase_create("full");

  if (!testlib_require_layer(NBD_LAYER_BACKEND, "full"))
    return s;
  tcase_add_test(tc, test_reads_zeros_and_reports_a_hole);
  tcase_add_test(tc, test_every_write_fails_with_enospc);
  tcase_add_test(tc, test_size_is_required_and_checked);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(full_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
