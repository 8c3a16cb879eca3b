/* Unit tests for filters/offset.c over the recording backend: every
 * request shifted by offset, the window limited by range, extents shifted
 * back, the size and block-size checks at open (offset and range against
 * the minimum below), flags passed through.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

#define KIB 1024ull
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)

static struct testlib_caps offset_caps;
static struct testlib_stack offset_s;
static unsigned char offset_buf[64 * KIB], offset_want[64 * KIB];

static void
offset_setup(void)
{
  testlib_caps_default(&offset_caps);
  offset_caps.size = 4 * MIB;
}

static void
offset_teardown(void)
{
  testlib_stack_free(&offset_s);
}

static struct nbd_ctx *
offset_open(const char *filters)
{
  testlib_stack(&offset_s, filters, &offset_caps);
  return offset_s.top;
}

/* Opening must fail and the log must carry want. */
static void
offset_assert_open_fails(const char *filters, const char *want)
{
  char *log;
  int r;

  ck_assert_int_eq(testlib_stack_new(&offset_s, filters, &offset_caps), 0);
  testlib_stderr_begin();
  r = testlib_stack_open(&offset_s, 0);
  log = testlib_stderr_end();
  ck_assert_int_eq(r, -1);
  ck_assert_msg(strstr(log, want) != NULL, "log '%s' lacks '%s'", log, want);
  ck_assert_msg(strstr(offset_s.err, "offset: prepare failed") != NULL,
                "open error: %s", offset_s.err);
  free(log);
}

/* ---- datapath translation ------------------------------------------------- */

START_TEST(test_pread_reads_at_offset)
{
  struct nbd_ctx *top = offset_open("offset offset=1M");

  testlib_pattern(offset_s.rec->ram, 4 * MIB, 0);
  ck_assert_int_eq(next_pread(top, offset_buf, 4096, 8192, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 1056768+4096 flags=0");
  testlib_pattern(offset_want, 4096, MIB + 8192);
  ck_assert_mem_eq(offset_buf, offset_want, 4096);
}
END_TEST

START_TEST(test_pwrite_writes_at_offset)
{
  struct nbd_ctx *top = offset_open("offset offset=1M");

  testlib_pattern(offset_buf, 4096, 0);
  ck_assert_int_eq(next_pwrite(top, offset_buf, 4096, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 1048576+4096 flags=0");
  ck_assert_mem_eq(offset_s.rec->ram + MIB, offset_buf, 4096);
  ck_assert(nbd_is_zero(offset_s.rec->ram, MIB));
}
END_TEST

/* pwrite_from is shifted like pwrite; the recorder reads no payloads
 * itself, so the engine buffers it, and the stack does not pull. */
START_TEST(test_pwrite_from_writes_at_offset)
{
  struct nbd_ctx *top = offset_open("offset offset=1M");
  struct testlib_source src;

  ck_assert_int_eq(top->pull, 0);
  testlib_pattern(offset_buf, 4096, 0);
  testlib_source_init(&src, offset_buf, 4096, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 4096, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 1048576+4096 flags=0");
  ck_assert_mem_eq(offset_s.rec->ram + MIB, offset_buf, 4096);
  ck_assert(nbd_is_zero(offset_s.rec->ram, MIB));
}
END_TEST

START_TEST(test_trim_zero_cache_at_offset)
{
  struct nbd_ctx *top = offset_open("offset offset=1M");

  ck_assert_int_eq(next_trim(top, 4096, 0, 0), 0);
  ck_assert_int_eq(next_zero(top, 8192, 4096, 0), 0);
  ck_assert_int_eq(next_cache(top, 512, 512, 0), 0);
  ck_assert_str_eq(testlib_log(), "trim 1048576+4096 flags=0; "
                   "zero 1052672+8192 flags=0; cache 1049088+512 flags=0");
}
END_TEST

START_TEST(test_flush_passes_through)
{
  struct nbd_ctx *top = offset_open("offset offset=1M");

  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "flush");
}
END_TEST

START_TEST(test_fua_native_flag_passes_through)
{
  struct nbd_ctx *top = offset_open("offset offset=1M");

  ck_assert_int_eq(next_pwrite(top, offset_buf, 4096, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_zero(top, 4096, 0,
                             NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 1048576+4096 flags=FUA; "
                   "zero 1048576+4096 flags=FUA|NO_HOLE");
}
END_TEST

START_TEST(test_fua_emulated_below_flushes_after)
{
  struct nbd_ctx *top;

  offset_caps.can_fua = NBD_FUA_EMULATE;
  top = offset_open("offset offset=1M");

  ck_assert_int_eq(next_can_fua(top), NBD_FUA_EMULATE);
  ck_assert_int_eq(next_pwrite(top, offset_buf, 4096, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 1048576+4096 flags=0; flush");
}
END_TEST

START_TEST(test_fast_zero_flag_passes_through)
{
  struct nbd_ctx *top = offset_open("offset offset=1M");

  ck_assert_int_eq(next_zero(top, 4096, 0, NBD_CMD_FLAG_FAST_ZERO), 0);
  ck_assert_str_eq(testlib_log(), "zero 1048576+4096 flags=FAST_ZERO");
}
END_TEST

START_TEST(test_stacked_offsets_add_up)
{
  struct nbd_ctx *top = offset_open("offset offset=4k | offset offset=1M");

  ck_assert_int_eq(next_get_size(top), 3 * MIB - 4 * KIB);
  ck_assert_int_eq(next_pread(top, offset_buf, 512, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 1052672+512 flags=0");
}
END_TEST

/* ---- size and range --------------------------------------------------------- */

START_TEST(test_size_is_rest_of_disk_without_range)
{
  struct nbd_ctx *top = offset_open("offset offset=1M");

  ck_assert_int_eq(next_get_size(top), 3 * MIB);
  ck_assert_int_eq(next_pread(top, offset_buf, 4096, 3 * MIB - 4096, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 4190208+4096 flags=0");
}
END_TEST

START_TEST(test_default_offset_is_zero)
{
  struct nbd_ctx *top = offset_open("offset");

  ck_assert_int_eq(next_get_size(top), 4 * MIB);
  ck_assert_int_eq(next_pread(top, offset_buf, 512, 512, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 512+512 flags=0");
}
END_TEST

START_TEST(test_range_limits_size)
{
  struct nbd_ctx *top = offset_open("offset offset=1M range=64k");

  ck_assert_int_eq(next_get_size(top), 64 * KIB);
}
END_TEST

START_TEST(test_request_past_range_rejected_without_call)
{
  struct nbd_ctx *top = offset_open("offset offset=1M range=64k");

  ck_assert_int_eq(next_pread(top, offset_buf, 4096, 62 * KIB, 0), -EINVAL);
  ck_assert_int_eq(next_pwrite(top, offset_buf, 4096, 64 * KIB, 0), -ENOSPC);
  ck_assert_int_eq(next_zero(top, 4096, 63 * KIB, 0), -ENOSPC);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_range_without_offset_is_a_prefix)
{
  struct nbd_ctx *top = offset_open("offset range=1M");

  ck_assert_int_eq(next_get_size(top), MIB);
  ck_assert_int_eq(next_pwrite(top, offset_buf, 4096, MIB - 4096, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 1044480+4096 flags=0");
}
END_TEST

START_TEST(test_window_ending_at_disk_end_accepted)
{
  struct nbd_ctx *top = offset_open("offset offset=3M range=1M");

  ck_assert_int_eq(next_get_size(top), MIB);
}
END_TEST

START_TEST(test_offset_at_disk_end_gives_empty_disk)
{
  struct nbd_ctx *top = offset_open("offset offset=4M");

  ck_assert_int_eq(next_get_size(top), 0);
  ck_assert_int_eq(next_pread(top, offset_buf, 512, 0, 0), -EINVAL);
}
END_TEST

START_TEST(test_offset_beyond_end_fails_open)
{
  offset_caps.size = (int64_t)GIB;
  offset_assert_open_fails("offset offset=2G", "offset 2G is beyond the end "
                           "of the underlying disk (1G)");
}
END_TEST

START_TEST(test_offset_plus_range_beyond_end_fails_open)
{
  offset_caps.size = (int64_t)GIB;
  offset_assert_open_fails("offset offset=256M range=1G",
                           "offset+range (1280M) is beyond the end of the "
                           "underlying disk (1G)");
}
END_TEST

/* A range that fits int64_t but not the disk (setup allows it). */
START_TEST(test_huge_range_fails_open)
{
  offset_caps.size = (int64_t)GIB;
  offset_assert_open_fails("offset offset=512 range=9223372036854775295",
                           "offset+range (9223372036854775807) is beyond the "
                           "end of the underlying disk (1G)");
}
END_TEST

START_TEST(test_sizes_in_messages_fall_back_to_bytes)
{
  offset_caps.size = 4096;
  offset_assert_open_fails("offset offset=5000",
                           "offset 5000 is beyond the end of the underlying "
                           "disk (4K)");
}
END_TEST

START_TEST(test_offset_over_2_63_rejected_at_setup)
{
  ck_assert_int_eq(testlib_stack_new(&offset_s, "offset offset=8E",
                                     &offset_caps), -1);
  ck_assert_msg(strstr(offset_s.err, "larger than 2^63-1") != NULL, "%s",
                offset_s.err);
}
END_TEST

START_TEST(test_offset_plus_range_over_2_63_rejected_at_setup)
{
  ck_assert_int_eq(testlib_stack_new(&offset_s, "offset offset=4E range=4E",
                                     &offset_caps), -1);
  ck_assert_msg(strstr(offset_s.err, "offset+range") != NULL, "%s",
                offset_s.err);
}
END_TEST

START_TEST(test_unknown_key_lists_known_keys)
{
  ck_assert_int_eq(testlib_stack_new(&offset_s, "offset rnage=1M",
                                     &offset_caps), -1);
  ck_assert_str_eq(offset_s.err, "filter offset: unknown key 'rnage' "
                   "(did you mean 'range'?; known: offset, range)");
}
END_TEST

/* ---- extents ------------------------------------------------------------------ */

/* Below: data [0, 1M+64K), hole [1M+64K, 1M+128K), data to the end. */
static void
offset_map(void)
{
  testlib_recorder_map(offset_s.rec, 0, MIB + 64 * KIB, 0);
  testlib_recorder_map(offset_s.rec, MIB + 64 * KIB, 64 * KIB,
                       NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  testlib_recorder_map(offset_s.rec, MIB + 128 * KIB, 3 * MIB - 128 * KIB, 0);
}

START_TEST(test_extents_shifted_back_by_offset)
{
  struct nbd_ctx *top = offset_open("offset offset=1M");
  struct nbd_extents *e = nbd_extents_new(32 * KIB, 160 * KIB);

  offset_map();
  ck_assert_int_eq(next_extents(top, 128 * KIB, 32 * KIB, 0, e), 0);
  ck_assert_str_eq(testlib_log(), "extents 1081344+131072 flags=0");
  ck_assert_uint_eq(e->n, 3);
  ck_assert_uint_eq(e->v[0].offset, 32 * KIB);
  ck_assert_uint_eq(e->v[0].length, 32 * KIB);
  ck_assert_uint_eq(e->v[0].type, 0);
  ck_assert_uint_eq(e->v[1].offset, 64 * KIB);
  ck_assert_uint_eq(e->v[1].length, 64 * KIB);
  ck_assert_uint_eq(e->v[1].type, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  ck_assert_uint_eq(e->v[2].offset, 128 * KIB);
  ck_assert_uint_eq(e->v[2].length, 32 * KIB);
  nbd_extents_free(e);
}
END_TEST

/* Window [1M+48K, 1M+80K): data then the start of the hole, which runs on
 * past the request and the range below; only the requested part of each
 * extent comes back, in window coordinates. */
START_TEST(test_extents_clipped_to_request_and_range)
{
  struct nbd_ctx *top = offset_open("offset offset=1097728 range=32k");
  struct nbd_extents *e = nbd_extents_new(8 * KIB, 32 * KIB);

  offset_map();
  ck_assert_int_eq(next_extents(top, 24 * KIB, 8 * KIB, 0, e), 0);
  ck_assert_str_eq(testlib_log(), "extents 1105920+24576 flags=0");
  ck_assert_uint_eq(e->n, 2);
  ck_assert_uint_eq(e->v[0].offset, 8 * KIB);
  ck_assert_uint_eq(e->v[0].length, 8 * KIB);
  ck_assert_uint_eq(e->v[0].type, 0);
  ck_assert_uint_eq(e->v[1].offset, 16 * KIB);
  ck_assert_uint_eq(e->v[1].length, 16 * KIB);
  ck_assert_uint_eq(e->v[1].type, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_extents_unsupported_below_is_all_data)
{
  struct nbd_ctx *top;
  struct nbd_extents *e;

  offset_caps.can_extents = 0;
  top = offset_open("offset offset=1M");
  e = nbd_extents_new(0, 64 * KIB);

  ck_assert_int_eq(next_can_extents(top), 0);
  ck_assert_int_eq(next_extents(top, 64 * KIB, 0, 0, e), 0);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_uint_eq(e->n, 1);
  ck_assert_uint_eq(e->v[0].offset, 0);
  ck_assert_uint_eq(e->v[0].length, 64 * KIB);
  ck_assert_uint_eq(e->v[0].type, 0);
  nbd_extents_free(e);
}
END_TEST

/* ---- block size -------------------------------------------------------------- */

static void
offset_blocks(uint32_t min, uint32_t pref, uint32_t max)
{
  offset_caps.min_block = min;
  offset_caps.pref_block = pref;
  offset_caps.max_block = max;
}

static void
offset_assert_blocks(struct nbd_ctx *top, uint32_t min, uint32_t pref,
                     uint32_t max)
{
  uint32_t mn, pr, mx;

  ck_assert_int_eq(next_block_size(top, &mn, &pr, &mx), 0);
  ck_assert_uint_eq(mn, min);
  ck_assert_uint_eq(pr, pref);
  ck_assert_uint_eq(mx, max);
}

START_TEST(test_aligned_offset_keeps_block_sizes)
{
  offset_blocks(512, 64 * KIB, 32 * MIB);
  offset_assert_blocks(offset_open("offset offset=1M"), 512, 64 * KIB,
                       32 * MIB);
}
END_TEST

START_TEST(test_offset_not_multiple_of_minimum_fails_open)
{
  offset_blocks(512, 4096, 32 * MIB);
  offset_assert_open_fails("offset offset=1000", "offset 1000 is not a "
                           "multiple of the underlying minimum block size 512");
}
END_TEST

START_TEST(test_offset_breaking_preferred_lowers_it)
{
  offset_blocks(512, 64 * KIB, 32 * MIB);
  offset_assert_blocks(offset_open("offset offset=1052672"), 512, 4096,
                       32 * MIB);
}
END_TEST

START_TEST(test_preferred_lowered_no_further_than_minimum)
{
  offset_blocks(2048, 64 * KIB, 32 * MIB);
  offset_assert_blocks(offset_open("offset offset=6k"), 2048, 2048,
                       32 * MIB);
}
END_TEST

START_TEST(test_no_constraints_below_means_none)
{
  offset_assert_blocks(offset_open("offset offset=1000"), 0, 0, 0);
}
END_TEST

START_TEST(test_range_not_multiple_of_minimum_fails_open)
{
  offset_blocks(512, 4096, 32 * MIB);
  offset_assert_open_fails("offset offset=1M range=1000", "range 1000 is not "
                           "a multiple of the underlying minimum block size "
                           "512 (its last 488 bytes could not be reached)");
}
END_TEST

/* offset=0 shifts nothing, but the window still ends at range. */
START_TEST(test_range_checked_without_offset)
{
  offset_blocks(4096, 4096, 32 * MIB);
  offset_assert_open_fails("offset range=1049088", "range 1049088 is not a "
                           "multiple of the underlying minimum block size "
                           "4096");
}
END_TEST

START_TEST(test_range_multiple_of_minimum_accepted)
{
  struct nbd_ctx *top;

  offset_blocks(4096, 64 * KIB, 32 * MIB);
  top = offset_open("offset offset=1M range=12k");

  ck_assert_int_eq(next_get_size(top), 12 * KIB);
  offset_assert_blocks(top, 4096, 64 * KIB, 32 * MIB);
  ck_assert_int_eq(next_pread(top, offset_buf, 4096, 8 * KIB, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 1056768+4096 flags=0");
}
END_TEST

START_TEST(test_unaligned_range_accepted_without_minimum)
{
  struct nbd_ctx *top = offset_open("offset offset=1M range=1000");

  ck_assert_int_eq(next_get_size(top), 1000);
  ck_assert_int_eq(next_pread(top, offset_buf, 1000, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 1048576+1000 flags=0");
}
END_TEST

/* Without range the end is the disk's: an unaligned one is the lower
 * layer's, passed on (its tail unreachable, as without the filter). */
START_TEST(test_unaligned_disk_end_passed_on_without_range)
{
  struct nbd_ctx *top;

  offset_caps.size = (int64_t)(4 * MIB + 1000);
  offset_blocks(512, 4096, 32 * MIB);
  top = offset_open("offset offset=1M");

  ck_assert_int_eq(next_get_size(top), 3 * MIB + 1000);
  ck_assert_int_eq(next_pread(top, offset_buf, 512, 3 * MIB, 0), 0);
  ck_assert_int_eq(next_pread(top, offset_buf, 512, 3 * MIB + 512, 0),
                   -EINVAL);
  ck_assert_str_eq(testlib_log(), "pread 4194304+512 flags=0");
}
END_TEST

START_TEST(test_minimum_enforced_at_filter_boundary)
{
  struct nbd_ctx *top;

  offset_blocks(512, 4096, 32 * MIB);
  top = offset_open("offset offset=1M");

  ck_assert_int_eq(next_pread(top, offset_buf, 100, 0, 0), -EINVAL);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

/* ---- capabilities ------------------------------------------------------------ */

START_TEST(test_capabilities_pass_through)
{
  struct nbd_ctx *top;

  offset_caps.can_trim = 0;
  offset_caps.can_zero = NBD_ZERO_EMULATE;
  offset_caps.can_cache = NBD_CACHE_EMULATE;
  offset_caps.can_multi_conn = 1;
  offset_caps.is_rotational = 1;
  top = offset_open("offset offset=1M");

  ck_assert_int_eq(next_can_write(top), 1);
  ck_assert_int_eq(next_can_flush(top), 1);
  ck_assert_int_eq(next_can_trim(top), 0);
  ck_assert_int_eq(next_can_zero(top), NBD_ZERO_EMULATE);
  ck_assert_int_eq(next_can_fast_zero(top), 0);
  ck_assert_int_eq(next_can_cache(top), NBD_CACHE_EMULATE);
  ck_assert_int_eq(next_can_multi_conn(top), 1);
  ck_assert_int_eq(next_is_rotational(top), 1);
  ck_assert_int_eq(next_trim(top, 4096, 0, 0), -EOPNOTSUPP);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_readonly_passes_through)
{
  ck_assert_int_eq(testlib_stack_new(&offset_s, "offset offset=1M",
                                     &offset_caps), 0);
  ck_assert_int_eq(testlib_stack_open(&offset_s, 1), 0);
  ck_assert_int_eq(next_can_write(offset_s.top), 0);
  ck_assert_int_eq(next_pwrite(offset_s.top, offset_buf, 512, 0, 0), -EPERM);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

/* ---- suite --------------------------------------------------------------------- */

static TCase *
offset_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, offset_setup, offset_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
offset_suite(void)
{
  Suite *s = suite_create("offset");
  TCase *tc;

  tc = offset_tcase(s, "datapath");
  tcase_add_test(tc, test_pread_reads_at_offset);
  tcase_add_test(tc, test_pwrite_writes_at_offset);
  tcase_add_test(tc, test_pwrite_from_writes_at_offset);
  tcase_add_test(tc, test_trim_zero_cache_at_offset);
  tcase_add_test(tc, test_flush_passes_through);
  tcase_add_test(tc, test_fua_native_flag_passes_through);
  tcase_add_test(tc, test_fua_emulated_below_flushes_after);
  tcase_add_test(tc, test_fast_zero_flag_passes_through);
  tcase_add_test(tc, test_stacked_offsets_add_up);

  tc = offset_tcase(s, "size");
  tcase_add_test(tc, test_size_is_rest_of_disk_without_range);
  tcase_add_test(tc, test_default_offset_is_zero);
  tcase_add_test(tc, test_range_limits_size);
  tcase_add_test(tc, test_request_past_range_rejected_without_call);
  tcase_add_test(tc, test_range_without_offset_is_a_prefix);
  tcase_add_test(tc, test_window_ending_at_disk_end_accepted);
  tcase_add_test(tc, test_offset_at_disk_end_gives_empty_disk);
  tcase_add_test(tc, test_offset_beyond_end_fails_open);
  tcase_add_test(tc, test_offset_plus_range_beyond_end_fails_open);
  tcase_add_test(tc, test_huge_range_fails_open);
  tcase_add_test(tc, test_sizes_in_messages_fall_back_to_bytes);
  tcase_add_test(tc, test_offset_over_2_63_rejected_at_setup);
  tcase_add_test(tc, test_offset_plus_range_over_2_63_rejected_at_setup);
  tcase_add_test(tc, test_unknown_key_lists_known_keys);

  tc = offset_tcase(s, "extents");
  tcase_add_test(tc, test_extents_shifted_back_by_offset);
  tcase_add_test(tc, test_extents_clipped_to_request_and_range);
  tcase_add_test(tc, test_extents_unsupported_below_is_all_data);

  tc = offset_tcase(s, "block size");
  tcase_add_test(tc, test_aligned_offset_keeps_block_sizes);
  tcase_add_test(tc, test_offset_not_multiple_of_minimum_fails_open);
  tcase_add_test(tc, test_offset_breaking_preferred_lowers_it);
  tcase_add_test(tc, test_preferred_lowered_no_further_than_minimum);
  tcase_add_test(tc, test_no_constraints_below_means_none);
  tcase_add_test(tc, test_range_not_multiple_of_minimum_fails_open);
  tcase_add_test(tc, test_range_checked_without_offset);
  tcase_add_test(tc, test_range_multiple_of_minimum_accepted);
  tcase_add_test(tc, test_unaligned_range_accepted_without_minimum);
  tcase_add_test(tc, test_unaligned_disk_end_passed_on_without_range);
  tcase_add_test(tc, test_minimum_enforced_at_filter_boundary);

  tc = offset_tcase(s, "capabilities");
  tcase_add_test(tc, test_capabilities_pass_through);
  tcase_add_test(tc, test_readonly_passes_through);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(offset_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
