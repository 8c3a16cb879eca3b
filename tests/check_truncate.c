/* Unit tests for filters/truncate.c over the recording backend: the size
 * (truncate=, round-up=, round-down=, in nbdkit's order), requests clipped
 * at the old end, the extension reading as zeros and reporting as a hole,
 * zeros accepted there and data refused with ENOSPC before anything goes
 * below, the size below picked up per connection, and bad keys refused.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

#define KIB 1024ull
#define MIB (1024 * KIB)

static struct testlib_caps truncate_caps;
static struct testlib_stack truncate_s;
static unsigned char truncate_buf[64 * KIB], truncate_want[64 * KIB];

static void
truncate_setup(void)
{
  testlib_caps_default(&truncate_caps);
  truncate_caps.size = 1 * MIB;
}

static void
truncate_teardown(void)
{
  testlib_stack_free(&truncate_s);
}

static struct nbd_ctx *
truncate_open(const char *filters)
{
  testlib_stack(&truncate_s, filters, &truncate_caps);
  return truncate_s.top;
}

/* ---- size ------------------------------------------------------------------ */

START_TEST(test_no_keys_keeps_size)
{
  ck_assert_int_eq(next_get_size(truncate_open("truncate")), MIB);
}
END_TEST

START_TEST(test_truncate_shrinks)
{
  struct nbd_ctx *top = truncate_open("truncate truncate=64k");

  ck_assert_int_eq(next_get_size(top), 64 * KIB);
  ck_assert_int_lt(next_pread(top, truncate_buf, 4096, 62 * KIB, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_int_eq(next_pread(top, truncate_buf, 4096, 60 * KIB, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 61440+4096 flags=0");
}
END_TEST

START_TEST(test_truncate_extends)
{
  ck_assert_int_eq(next_get_size(truncate_open("truncate truncate=3M")),
                   3 * MIB);
}
END_TEST

START_TEST(test_round_up)
{
  truncate_caps.size = 1000;
  ck_assert_int_eq(next_get_size(truncate_open("truncate round-up=512")),
                   1024);
}
END_TEST

START_TEST(test_round_up_of_a_multiple_changes_nothing)
{
  ck_assert_int_eq(next_get_size(truncate_open("truncate round-up=4k")), MIB);
}
END_TEST

START_TEST(test_round_down)
{
  truncate_caps.size = 1000;
  ck_assert_int_eq(next_get_size(truncate_open("truncate round-down=512")),
                   512);
}
END_TEST

/* nbdkit: truncate=3000 round-down=512 gives 2560. */
START_TEST(test_truncate_then_round)
{
  ck_assert_int_eq(next_get_size(
      truncate_open("truncate truncate=3000 round-down=512")), 2560);
  testlib_stack_free(&truncate_s);
  ck_assert_int_eq(next_get_size(
      truncate_open("truncate truncate=3000 round-up=1k")), 3072);
}
END_TEST

START_TEST(test_round_up_overflow_fails_open)
{
  char *log;
  int r;

  ck_assert_int_eq(testlib_stack_new(&truncate_s, "truncate truncate="
                                     "9223372036854775807 round-up=2G",
                                     &truncate_caps), 0);
  testlib_stderr_begin();
  r = testlib_stack_open(&truncate_s, 0);
  log = testlib_stderr_end();
  ck_assert_int_eq(r, -1);
  ck_assert_msg(strstr(log, "cannot round size") != NULL, "log: %s", log);
  free(log);
}
END_TEST

/* Each connection asks the layer below again: a disk that grew between
 * two connections is seen by the second. */
START_TEST(test_size_below_picked_up_per_connection)
{
  struct nbd_ctx *second;
  char err[256];

  truncate_caps.size = 1000;
  ck_assert_int_eq(next_get_size(truncate_open("truncate round-up=4k")),
                   4096);
  truncate_s.rec->caps.size = 5000;
  second = engine_open(truncate_s.exp, 0, NULL, err, sizeof err);
  ck_assert_msg(second != NULL, "%s", err);
  ck_assert_int_eq(next_get_size(second), 8192);
  ck_assert_int_eq(next_get_size(truncate_s.top), 4096);
  /* The first connection still clips at its own old end (1000). */
  ck_assert_int_eq(next_pread(truncate_s.top, truncate_buf, 4096, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+1000 flags=0");
  engine_close(second);
}
END_TEST

/* ---- the extension ----------------------------------------------------------- */

START_TEST(test_read_across_old_end_zero_fills)
{
  struct nbd_ctx *top = truncate_open("truncate truncate=2M");

  testlib_pattern(truncate_s.rec->ram, MIB, 0);
  memset(truncate_buf, 0xaa, sizeof truncate_buf);
  ck_assert_int_eq(next_pread(top, truncate_buf, 8192, MIB - 4096, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 1044480+4096 flags=0");
  testlib_pattern(truncate_want, 4096, MIB - 4096);
  ck_assert_mem_eq(truncate_buf, truncate_want, 4096);
  ck_assert(nbd_is_zero(truncate_buf + 4096, 4096));
}
END_TEST

START_TEST(test_read_in_extension_goes_nowhere)
{
  struct nbd_ctx *top = truncate_open("truncate truncate=2M");

  memset(truncate_buf, 0xaa, sizeof truncate_buf);
  ck_assert_int_eq(next_pread(top, truncate_buf, 4096, MIB + 4096, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert(nbd_is_zero(truncate_buf, 4096));
}
END_TEST

START_TEST(test_write_of_zeros_into_extension_succeeds)
{
  struct nbd_ctx *top = truncate_open("truncate truncate=2M");

  memset(truncate_buf, 0, sizeof truncate_buf);
  memset(truncate_buf, 0x55, 4096);
  ck_assert_int_eq(next_pwrite(top, truncate_buf, 8192, MIB - 4096,
                               NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 1044480+4096 flags=FUA");
  ck_assert_mem_eq(truncate_s.rec->ram + MIB - 4096, truncate_buf, 4096);
  ck_assert_int_eq(next_pwrite(top, truncate_buf + 4096, 4096, MIB, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 1044480+4096 flags=FUA");
}
END_TEST

/* nbdkit writes the part below and then fails; here nothing is written. */
START_TEST(test_write_of_data_into_extension_fails_enospc_untouched)
{
  struct nbd_ctx *top = truncate_open("truncate truncate=2M");

  memset(truncate_buf, 0x55, sizeof truncate_buf);
  ck_assert_int_eq(next_pwrite(top, truncate_buf, 8192, MIB - 4096, 0),
                   -ENOSPC);
  ck_assert_int_eq(next_pwrite(top, truncate_buf, 512, MIB + 512, 0),
                   -ENOSPC);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert(nbd_is_zero(truncate_s.rec->ram, MIB));
}
END_TEST

START_TEST(test_pwrite_from_below_forwarded)
{
  struct nbd_ctx *top = truncate_open("truncate truncate=2M");
  struct testlib_source src;

  testlib_pattern(truncate_buf, 4096, 0);
  testlib_source_init(&src, truncate_buf, 4096, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 4096, 8192, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 8192+4096 flags=0");
  ck_assert_mem_eq(truncate_s.rec->ram + 8192, truncate_buf, 4096);
}
END_TEST

START_TEST(test_pwrite_from_across_old_end_checked_first)
{
  struct nbd_ctx *top = truncate_open("truncate truncate=2M");
  struct testlib_source src;

  memset(truncate_buf, 0x55, 8192);
  testlib_source_init(&src, truncate_buf, 8192, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 8192, MIB - 4096, 0),
                   -ENOSPC);
  ck_assert_str_eq(testlib_log(), "");
  memset(truncate_buf + 4096, 0, 4096);
  testlib_source_init(&src, truncate_buf, 8192, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 8192, MIB - 4096, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 1044480+4096 flags=0");
}
END_TEST

START_TEST(test_zero_trim_cache_clipped_at_old_end)
{
  struct nbd_ctx *top = truncate_open("truncate truncate=2M");

  ck_assert_int_eq(next_zero(top, 8192, MIB - 4096, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_trim(top, 8192, MIB - 4096, 0), 0);
  ck_assert_int_eq(next_cache(top, 8192, MIB - 4096, 0), 0);
  ck_assert_str_eq(testlib_log(), "zero 1044480+4096 flags=FUA; "
                   "trim 1044480+4096 flags=0; cache 1044480+4096 flags=0");
  ck_assert_int_eq(next_zero(top, 4096, MIB, NBD_CMD_FLAG_FAST_ZERO), 0);
  ck_assert_int_eq(next_trim(top, 4096, MIB, 0), 0);
  ck_assert_int_eq(next_cache(top, 4096, MIB, 0), 0);
  ck_assert_str_eq(testlib_log(), "zero 1044480+4096 flags=FUA; "
                   "trim 1044480+4096 flags=0; cache 1044480+4096 flags=0");
}
END_TEST

START_TEST(test_flush_passes_through)
{
  ck_assert_int_eq(next_flush(truncate_open("truncate truncate=2M"), 0), 0);
  ck_assert_str_eq(testlib_log(), "flush");
}
END_TEST

/* ---- extents ----------------------------------------------------------------- */

START_TEST(test_extents_extension_is_hole)
{
  struct nbd_ctx *top = truncate_open("truncate truncate=2M");
  struct nbd_extents *e = nbd_extents_new(MIB - 8192, MIB + 8192);

  testlib_recorder_map(truncate_s.rec, 0, MIB - 4096, 0);
  testlib_recorder_map(truncate_s.rec, MIB - 4096, 4096,
                       NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  ck_assert_int_eq(next_extents(top, 16384, MIB - 8192, 0, e), 0);
  ck_assert_str_eq(testlib_log(), "extents 1040384+8192 flags=0");
  ck_assert_uint_eq(e->n, 2);
  ck_assert_uint_eq(e->v[0].offset, MIB - 8192);
  ck_assert_uint_eq(e->v[0].length, 4096);
  ck_assert_uint_eq(e->v[0].type, 0);
  ck_assert_uint_eq(e->v[1].offset, MIB - 4096);
  ck_assert_uint_eq(e->v[1].length, 4096 + 8192);
  ck_assert_uint_eq(e->v[1].type, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_extents_without_extents_below)
{
  struct nbd_ctx *top;
  struct nbd_extents *e = nbd_extents_new(MIB - 4096, MIB + 4096);

  truncate_caps.can_extents = 0;
  top = truncate_open("truncate truncate=2M");
  ck_assert_int_eq(next_can_extents(top), 1);
  ck_assert_int_eq(next_extents(top, 8192, MIB - 4096, 0, e), 0);
  ck_assert_uint_eq(e->n, 2);
  ck_assert_uint_eq(e->v[0].type, 0);
  ck_assert_uint_eq(e->v[0].length, 4096);
  ck_assert_uint_eq(e->v[1].type, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  nbd_extents_free(e);
}
END_TEST

/* ---- startup errors ----------------------------------------------------------- */

static void
truncate_assert_setup_fails(const char *filters, const char *want)
{
  ck_assert_int_eq(testlib_stack_new(&truncate_s, filters, &truncate_caps),
                   -1);
  ck_assert_msg(strstr(truncate_s.err, want) != NULL, "error '%s' lacks '%s'",
                truncate_s.err, want);
}

START_TEST(test_bad_values_refused_with_range)
{
  truncate_assert_setup_fails("truncate round-up=3", "power of 2 from 1 to");
  truncate_assert_setup_fails("truncate round-up=0", "round-up=0");
  truncate_assert_setup_fails("truncate round-down=4G", "round-down=");
  truncate_assert_setup_fails("truncate truncate=9E", "at most 2^63-1");
  truncate_assert_setup_fails("truncate size=1M", "size");
}
END_TEST

static TCase *
truncate_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, truncate_setup, truncate_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
truncate_suite(void)
{
  Suite *s = suite_create("truncate");
  TCase *tc;

  tc = truncate_tcase(s, "size");
  tcase_add_test(tc, test_no_keys_keeps_size);
  tcase_add_test(tc, test_truncate_shrinks);
  tcase_add_test(tc, test_truncate_extends);
  tcase_add_test(tc, test_round_up);
  tcase_add_test(tc, test_round_up_of_a_multiple_changes_nothing);
  tcase_add_test(tc, test_round_down);
  tcase_add_test(tc, test_truncate_then_round);
  tcase_add_test(tc, test_round_up_overflow_fails_open);
  tcase_add_test(tc, test_size_below_picked_up_per_connection);

  tc = truncate_tcase(s, "extension");
  tcase_add_test(tc, test_read_across_old_end_zero_fills);
  tcase_add_test(tc, test_read_in_extension_goes_nowhere);
  tcase_add_test(tc, test_write_of_zeros_into_extension_succeeds);
  tcase_add_test(tc, test_write_of_data_into_extension_fails_enospc_untouched);
  tcase_add_test(tc, test_pwrite_from_below_forwarded);
  tcase_add_test(tc, test_pwrite_from_across_old_end_checked_first);
  tcase_add_test(tc, test_zero_trim_cache_clipped_at_old_end);
  tcase_add_test(tc, test_flush_passes_through);

  tc = truncate_tcase(s, "extents");
  tcase_add_test(tc, test_extents_extension_is_hole);
  tcase_add_test(tc, test_extents_without_extents_below);

  tc = truncate_tcase(s, "startup");
  tcase_add_test(tc, test_bad_values_refused_with_range);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "truncate"))
    return EXIT_SUCCESS;
  sr = srunner_create(truncate_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
