/* Unit tests for src/window.c and the forwarders of src/window.h.
 *
 * The size and block-size rules on plain numbers, every answer they give;
 * then a window filter made of nothing but window.h's macros ("win",
 * called directly, not registered) over the recording backend: every
 * ranged method moved by the window's start, flush and the capabilities
 * left alone.  The offset and partition suites test the same through
 * their real stacks.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "window.h"

#define KIB 1024ull
#define MIB (1024 * KIB)

/* ---- the size rule -------------------------------------------------------- */

START_TEST(test_fit_size_window_inside)
{
  struct nbd_window w = { MIB, MIB, 0 };

  ck_assert_int_eq(nbd_window_fit_size(&w, 4 * MIB), NBD_WINDOW_FITS);
  ck_assert_uint_eq(nbd_window_len(&w, 4 * MIB), MIB);
}
END_TEST

START_TEST(test_fit_size_window_ending_at_the_end)
{
  struct nbd_window w = { 3 * MIB, MIB, 0 };

  ck_assert_int_eq(nbd_window_fit_size(&w, 4 * MIB), NBD_WINDOW_FITS);
  w.len++;
  ck_assert_int_eq(nbd_window_fit_size(&w, 4 * MIB),
                   NBD_WINDOW_END_PAST_END);
}
END_TEST

START_TEST(test_fit_size_start_past_end)
{
  struct nbd_window w = { 4 * MIB + 1, 0, 1 };

  ck_assert_int_eq(nbd_window_fit_size(&w, 4 * MIB),
                   NBD_WINDOW_START_PAST_END);
  w.to_end = 0;
  ck_assert_int_eq(nbd_window_fit_size(&w, 4 * MIB),
                   NBD_WINDOW_START_PAST_END);
}
END_TEST

/* len + start past 2^64 must not wrap into "fits". */
START_TEST(test_fit_size_huge_len_does_not_wrap)
{
  struct nbd_window w = { MIB, UINT64_MAX, 0 };

  ck_assert_int_eq(nbd_window_fit_size(&w, 4 * MIB),
                   NBD_WINDOW_END_PAST_END);
}
END_TEST

/* to_end: len is ignored, the window is the rest of the disk, empty when
 * start is the disk's end. */
START_TEST(test_fit_size_to_end_is_the_rest)
{
  struct nbd_window w = { MIB, 123, 1 };

  ck_assert_int_eq(nbd_window_fit_size(&w, 4 * MIB), NBD_WINDOW_FITS);
  ck_assert_uint_eq(nbd_window_len(&w, 4 * MIB), 3 * MIB);
  w.start = 4 * MIB;
  ck_assert_int_eq(nbd_window_fit_size(&w, 4 * MIB), NBD_WINDOW_FITS);
  ck_assert_uint_eq(nbd_window_len(&w, 4 * MIB), 0);
}
END_TEST

/* ---- the block-size rule --------------------------------------------------- */

START_TEST(test_fit_blocks_no_minimum_always_fits)
{
  struct nbd_window w = { 1, 3, 0 };
  uint32_t pref = 4096;

  ck_assert_int_eq(nbd_window_fit_blocks(&w, 0, &pref), NBD_WINDOW_FITS);
  ck_assert_uint_eq(pref, 4096);
}
END_TEST

START_TEST(test_fit_blocks_start_unaligned)
{
  struct nbd_window w = { MIB + 256, MIB, 0 };
  uint32_t pref = 4096;

  ck_assert_int_eq(nbd_window_fit_blocks(&w, 512, &pref),
                   NBD_WINDOW_START_UNALIGNED);
  ck_assert_uint_eq(pref, 4096);
}
END_TEST

/* A refused window leaves preferred alone (a start of 1M+4K would lower
 * it to 4K). */
START_TEST(test_fit_blocks_len_unaligned)
{
  struct nbd_window w = { MIB + 4 * KIB, MIB + 512, 0 };
  uint32_t pref = 64 * KIB;

  ck_assert_int_eq(nbd_window_fit_blocks(&w, 4096, &pref),
                   NBD_WINDOW_LEN_UNALIGNED);
  ck_assert_uint_eq(pref, 64 * KIB);
}
END_TEST

/* A to_end window's end is the disk's own: not checked. */
START_TEST(test_fit_blocks_to_end_len_unchecked)
{
  struct nbd_window w = { MIB, 1, 1 };
  uint32_t pref = 4096;

  ck_assert_int_eq(nbd_window_fit_blocks(&w, 512, &pref), NBD_WINDOW_FITS);
  ck_assert_uint_eq(pref, 4096);
}
END_TEST

/* Preferred drops to the largest power of two dividing start. */
START_TEST(test_fit_blocks_lowers_preferred)
{
  struct nbd_window w = { MIB + 8 * KIB, MIB, 0 };
  uint32_t pref = 64 * KIB;

  ck_assert_int_eq(nbd_window_fit_blocks(&w, 512, &pref), NBD_WINDOW_FITS);
  ck_assert_uint_eq(pref, 8 * KIB);
  w.start = 0;
  pref = 64 * KIB;
  ck_assert_int_eq(nbd_window_fit_blocks(&w, 512, &pref), NBD_WINDOW_FITS);
  ck_assert_uint_eq(pref, 64 * KIB);
}
END_TEST

/* ---- the forwarders ---------------------------------------------------------- */

static const struct nbd_window *
win_window(const struct nbd_ctx *self)
{
  return self->handle;
}

NBD_WINDOW_SHIFTED(win)
NBD_WINDOW_PASSTHROUGH(win)

static struct testlib_stack window_s;

static void
window_teardown(void)
{
  testlib_stack_free(&window_s);
}

START_TEST(test_forwarders_shift_every_ranged_method)
{
  struct testlib_caps caps;
  struct nbd_window w = { MIB, MIB, 0 };
  struct nbd_ctx self = { .handle = &w };
  struct nbd_extents *ext;
  struct testlib_source src;
  unsigned char buf[4096];
  struct nbd_ctx *next;

  testlib_caps_default(&caps);
  caps.size = 4 * MIB;
  testlib_stack(&window_s, "", &caps);
  next = window_s.top;
  testlib_recorder_map(window_s.rec, 0, MIB + 4096, 0);
  testlib_recorder_map(window_s.rec, MIB + 4096, 3 * MIB - 4096,
                       NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  memset(buf, 0xab, sizeof buf);
  testlib_source_init(&src, buf, sizeof buf, SIZE_MAX);
  ck_assert_int_eq(win_pread(&self, next, buf, 512, 0, 0), 0);
  ck_assert_int_eq(win_pwrite(&self, next, buf, 512, 512, NBD_CMD_FLAG_FUA),
                   0);
  ck_assert_int_eq(win_pwrite_from(&self, next, &src.src, 4096, 4096, 0),
                   0);
  ck_assert_int_eq(win_trim(&self, next, 512, 8192, 0), 0);
  ck_assert_int_eq(win_zero(&self, next, 512, 8192, 0), 0);
  ck_assert_int_eq(win_cache(&self, next, 512, 8192, 0), 0);
  ck_assert_int_eq(win_flush(&self, next, 0), 0);
  ck_assert_str_eq(testlib_log(),
                   "pread 1048576+512 flags=0; "
                   "pwrite 1049088+512 flags=FUA; "
                   "pwrite 1052672+4096 flags=0; "
                   "trim 1056768+512 flags=0; "
                   "zero 1056768+512 flags=0; "
                   "cache 1056768+512 flags=0; flush");
  ck_assert_mem_eq(window_s.rec->ram + MIB + 4096, buf, sizeof buf);

  /* Extents come back in the window's coordinates. */
  ext = nbd_extents_new(0, 8192);
  ck_assert_ptr_nonnull(ext);
  ck_assert_int_eq(win_extents(&self, next, 8192, 0, 0, ext), 0);
  ck_assert_uint_eq(ext->n, 2);
  ck_assert_uint_eq(ext->v[0].offset, 0);
  ck_assert_uint_eq(ext->v[0].length, 4096);
  ck_assert_uint_eq(ext->v[0].type, 0);
  ck_assert_uint_eq(ext->v[1].offset, 4096);
  ck_assert_uint_eq(ext->v[1].length, 4096);
  ck_assert_uint_eq(ext->v[1].type, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  nbd_extents_free(ext);

  /* So does the depth map, its depths unchanged. */
  window_s.rec->depth = 3;
  testlib_log_clear();
  ext = nbd_extents_new(0, 8192);
  ck_assert_ptr_nonnull(ext);
  ck_assert_int_eq(win_depth(&self, next, 8192, 0, 0, ext), 0);
  ck_assert_str_eq(testlib_log(), "depth 1048576+8192 flags=0");
  ck_assert_uint_eq(ext->n, 1);
  ck_assert_uint_eq(ext->v[0].offset, 0);
  ck_assert_uint_eq(ext->v[0].length, 8192);
  ck_assert_uint_eq(ext->v[0].type, 3);
  nbd_extents_free(ext);
}
END_TEST

/* Every capability the group passes through is the layer below's. */
START_TEST(test_passthrough_answers_the_layer_below)
{
  struct testlib_caps caps;
  struct nbd_window w = { MIB, MIB, 0 };
  struct nbd_ctx self = { .handle = &w };
  struct nbd_ctx *next;

  testlib_caps_default(&caps);
  caps.can_multi_conn = 1;
  caps.is_rotational = 1;
  caps.can_trim = 0;
  testlib_stack(&window_s, "", &caps);
  next = window_s.top;
  ck_assert_int_eq(win_can_write(&self, next), next_can_write(next));
  ck_assert_int_eq(win_can_flush(&self, next), next_can_flush(next));
  ck_assert_int_eq(win_can_trim(&self, next), 0);
  ck_assert_int_eq(win_can_zero(&self, next), next_can_zero(next));
  ck_assert_int_eq(win_can_fast_zero(&self, next),
                   next_can_fast_zero(next));
  ck_assert_int_eq(win_can_fua(&self, next), next_can_fua(next));
  ck_assert_int_eq(win_can_cache(&self, next), next_can_cache(next));
  ck_assert_int_eq(win_can_extents(&self, next), next_can_extents(next));
  ck_assert_int_eq(win_can_multi_conn(&self, next), 1);
  ck_assert_int_eq(win_is_rotational(&self, next), 1);
}
END_TEST

int
main(void)
{
  Suite *s = suite_create("window");
  TCase *tc = tcase_create("size rule");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_fit_size_window_inside);
  tcase_add_test(tc, test_fit_size_window_ending_at_the_end);
  tcase_add_test(tc, test_fit_size_start_past_end);
  tcase_add_test(tc, test_fit_size_huge_len_does_not_wrap);
  tcase_add_test(tc, test_fit_size_to_end_is_the_rest);
  suite_add_tcase(s, tc);
  tc = tcase_create("block-size rule");
  tcase_add_test(tc, test_fit_blocks_no_minimum_always_fits);
  tcase_add_test(tc, test_fit_blocks_start_unaligned);
  tcase_add_test(tc, test_fit_blocks_len_unaligned);
  tcase_add_test(tc, test_fit_blocks_to_end_len_unchecked);
  tcase_add_test(tc, test_fit_blocks_lowers_preferred);
  suite_add_tcase(s, tc);
  tc = tcase_create("forwarders");
  tcase_add_checked_fixture(tc, NULL, window_teardown);
  tcase_add_test(tc, test_forwarders_shift_every_ranged_method);
  tcase_add_test(tc, test_passthrough_answers_the_layer_below);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
