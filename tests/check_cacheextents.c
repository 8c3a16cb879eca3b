/* Unit tests for filters/cacheextents.c over the recording backend: a
 * query inside the last answer is answered without the layer below; a
 * REQ_ONE query asks below for the whole range; a query outside asks
 * again; any write, trim or zero, from any connection, drops the answer;
 * a reopen drops it; no keys.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps ce_caps;
static struct testlib_stack ce_s;
static unsigned char ce_buf[512];

static void
ce_setup(void)
{
  testlib_caps_default(&ce_caps);
}

static void
ce_teardown(void)
{
  testlib_stack_free(&ce_s);
}

static void
ce_open(void)
{
  ck_assert_int_eq(testlib_stack_new(&ce_s, "cacheextents", &ce_caps), 0);
  testlib_recorder_map(ce_s.rec, 0, 65536, 0);
  testlib_recorder_map(ce_s.rec, 65536, 65536, NBD_EXTENT_HOLE |
                       NBD_EXTENT_ZERO);
  testlib_recorder_map(ce_s.rec, 131072, (1 << 20) - 131072, 0);
  ck_assert_int_eq(testlib_stack_open(&ce_s, 0), 0);
}

/* The first extent of a query at offset: "offset+length/type". */
static void
ce_query(uint64_t offset, uint32_t count, uint32_t flags, char *out,
         size_t len)
{
  struct nbd_extents *e = nbd_extents_new(offset, offset + count);

  ck_assert_int_eq(next_extents(ce_s.top, count, offset, flags, e), 0);
  ck_assert_uint_ge(e->n, 1);
  snprintf(out, len, "%llu+%llu/%u", (unsigned long long)e->v[0].offset,
           (unsigned long long)e->v[0].length, e->v[0].type);
  nbd_extents_free(e);
}

START_TEST(test_second_query_from_the_answer)
{
  char got[64];

  ce_open();
  ce_query(0, 1 << 20, NBD_CMD_FLAG_REQ_ONE, got, sizeof got);
  ck_assert_str_eq(got, "0+65536/0");
  ck_assert_str_eq(testlib_log(), "extents 0+1048576 flags=0");
  ce_query(65536, (1 << 20) - 65536, NBD_CMD_FLAG_REQ_ONE, got, sizeof got);
  ck_assert_str_eq(got, "65536+65536/3");
  ce_query(70000, 1000, 0, got, sizeof got);
  ck_assert_str_eq(got, "70000+1000/3");
  ck_assert_uint_eq(testlib_calls_of(ce_s.rec, NBD_METHOD_EXTENTS), 1);
}
END_TEST

START_TEST(test_outside_asks_again)
{
  char got[64];

  ce_open();
  ce_query(65536, 4096, 0, got, sizeof got);
  ce_query(0, 4096, 0, got, sizeof got);
  ck_assert_str_eq(got, "0+4096/0");
  ce_query(131072, 4096, 0, got, sizeof got);
  ck_assert_uint_eq(testlib_calls_of(ce_s.rec, NBD_METHOD_EXTENTS), 3);
}
END_TEST

START_TEST(test_changes_drop_the_answer)
{
  struct nbd_ctx *other;
  char got[64], err[256];

  ce_open();
  ce_query(0, 1 << 20, 0, got, sizeof got);
  ck_assert_int_eq(next_pwrite(ce_s.top, ce_buf, 512, 65536, 0), 0);
  ce_query(0, 1 << 20, 0, got, sizeof got);
  ck_assert_uint_eq(testlib_calls_of(ce_s.rec, NBD_METHOD_EXTENTS), 2);
  ck_assert_int_eq(next_trim(ce_s.top, 512, 0, 0), 0);
  ce_query(0, 1 << 20, 0, got, sizeof got);
  ck_assert_int_eq(next_zero(ce_s.top, 512, 0, 0), 0);
  ce_query(0, 1 << 20, 0, got, sizeof got);
  ck_assert_uint_eq(testlib_calls_of(ce_s.rec, NBD_METHOD_EXTENTS), 4);
  /* A write on another connection of the export drops it too. */
  other = engine_open(ce_s.exp, 0, NULL, err, sizeof err);
  ck_assert_ptr_nonnull(other);
  ck_assert_int_eq(next_pwrite(other, ce_buf, 512, 0, 0), 0);
  ce_query(0, 1 << 20, 0, got, sizeof got);
  ck_assert_uint_eq(testlib_calls_of(ce_s.rec, NBD_METHOD_EXTENTS), 5);
  engine_close(other);
  ck_assert_int_eq(next_reopen(ce_s.top, 0), 0);
  ce_query(0, 1 << 20, 0, got, sizeof got);
  ck_assert_uint_eq(testlib_calls_of(ce_s.rec, NBD_METHOD_EXTENTS), 6);
}
END_TEST

START_TEST(test_no_keys)
{
  char err[256];

  ck_assert_ptr_null(testlib_filter_new("cacheextents", "size=1", err,
                                        sizeof err));
}
END_TEST

static Suite *
ce_suite(void)
{
  Suite *s = suite_create("cacheextents");
  TCase *tc = tcase_create("cacheextents");

  if (!testlib_require_layer(NBD_LAYER_FILTER, "cacheextents"))
    return s;
  tcase_add_checked_fixture(tc, ce_setup, ce_teardown);
  tcase_add_test(tc, test_second_query_from_the_answer);
  tcase_add_test(tc, test_outside_asks_again);
  tcase_add_test(tc, test_changes_drop_the_answer);
  tcase_add_test(tc, test_no_keys);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(ce_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
