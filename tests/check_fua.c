/* Unit tests for filters/fua.c over the recording backend: what each
 * fuamode advertises (can_fua, can_flush), which flags and flushes reach
 * the backend, the checks at open, and the refusal of a bad mode.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps fua_caps;
static struct testlib_stack fua_s;
static unsigned char fua_buf[4096];

static void
fua_setup(void)
{
  testlib_caps_default(&fua_caps);
}

static void
fua_teardown(void)
{
  testlib_stack_free(&fua_s);
}

static struct nbd_ctx *
fua_open(const char *filters)
{
  testlib_stack(&fua_s, filters, &fua_caps);
  return fua_s.top;
}

/* Opening (read-write) must fail and the log must carry want. */
static void
fua_assert_open_fails(const char *filters, const char *want)
{
  char *log;
  int r;

  ck_assert_int_eq(testlib_stack_new(&fua_s, filters, &fua_caps), 0);
  testlib_stderr_begin();
  r = testlib_stack_open(&fua_s, 0);
  log = testlib_stderr_end();
  ck_assert_int_eq(r, -1);
  ck_assert_msg(strstr(log, want) != NULL, "log '%s' lacks '%s'", log, want);
  free(log);
}

/* pwrite, trim and zero with flags, then a flush, as one log. */
static const char *
fua_writes(struct nbd_ctx *top, uint32_t flags)
{
  ck_assert_int_eq(next_pwrite(top, fua_buf, 512, 0, flags), 0);
  ck_assert_int_eq(next_trim(top, 512, 512, flags), 0);
  ck_assert_int_eq(next_zero(top, 512, 1024, flags), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  return testlib_log();
}

/* ---- none -------------------------------------------------------------- */

START_TEST(test_none_is_default_and_hides_fua)
{
  struct nbd_ctx *top = fua_open("fua");

  ck_assert_int_eq(top->can_fua, NBD_FUA_NONE);
  ck_assert_int_eq(top->can_flush, 1);
  ck_assert_int_eq(next_pwrite(top, fua_buf, 512, 0, NBD_CMD_FLAG_FUA),
                   -EINVAL);
  ck_assert_str_eq(fua_writes(top, 0),
                   "pwrite 0+512 flags=0; trim 512+512 flags=0; "
                   "zero 1024+512 flags=0; flush");
}
END_TEST

START_TEST(test_none_accepted_by_name)
{
  struct nbd_ctx *top = fua_open("fua fuamode=none");

  ck_assert_int_eq(top->can_fua, NBD_FUA_NONE);
}
END_TEST

/* ---- emulate ----------------------------------------------------------- */

START_TEST(test_emulate_flushes_after_each_fua_write)
{
  struct nbd_ctx *top = fua_open("fua fuamode=emulate");

  ck_assert_int_eq(top->can_fua, NBD_FUA_EMULATE);
  ck_assert_str_eq(fua_writes(top, NBD_CMD_FLAG_FUA),
                   "pwrite 0+512 flags=0; flush; trim 512+512 flags=0; "
                   "flush; zero 1024+512 flags=0; flush; flush");
}
END_TEST

START_TEST(test_emulate_without_flush_below_fails_open)
{
  fua_caps.can_flush = 0;
  fua_caps.can_fua = NBD_FUA_NONE;
  fua_assert_open_fails("fua fuamode=emulate",
                        "fuamode 'emulate' needs flush support");
}
END_TEST

START_TEST(test_readonly_open_skips_checks)
{
  fua_caps.can_flush = 0;
  fua_caps.can_fua = NBD_FUA_NONE;
  ck_assert_int_eq(testlib_stack_new(&fua_s, "fua fuamode=emulate",
                                     &fua_caps), 0);
  ck_assert_int_eq(testlib_stack_open(&fua_s, 1), 0);
  ck_assert_int_eq(fua_s.top->can_write, 0);
}
END_TEST

/* ---- native ------------------------------------------------------------ */

START_TEST(test_native_passes_fua_down)
{
  struct nbd_ctx *top = fua_open("fua fuamode=native");

  ck_assert_int_eq(top->can_fua, NBD_FUA_NATIVE);
  ck_assert_str_eq(fua_writes(top, NBD_CMD_FLAG_FUA),
                   "pwrite 0+512 flags=FUA; trim 512+512 flags=FUA; "
                   "zero 1024+512 flags=FUA; flush");
}
END_TEST

START_TEST(test_native_over_emulated_fua_flushes_below)
{
  struct nbd_ctx *top;

  fua_caps.can_fua = NBD_FUA_EMULATE;
  top = fua_open("fua fuamode=native");
  ck_assert_int_eq(top->can_fua, NBD_FUA_NATIVE);
  ck_assert_int_eq(next_pwrite(top, fua_buf, 512, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=0; flush");
}
END_TEST

START_TEST(test_native_without_fua_below_fails_open_naming_native)
{
  fua_caps.can_flush = 0;
  fua_caps.can_fua = NBD_FUA_NONE;
  fua_assert_open_fails("fua fuamode=native",
                        "fuamode 'native' needs FUA support");
}
END_TEST

/* ---- force ------------------------------------------------------------- */

START_TEST(test_force_adds_fua_and_drops_flush)
{
  struct nbd_ctx *top = fua_open("fua fuamode=force");

  ck_assert_int_eq(top->can_fua, NBD_FUA_NATIVE);
  ck_assert_str_eq(fua_writes(top, 0),
                   "pwrite 0+512 flags=FUA; trim 512+512 flags=FUA; "
                   "zero 1024+512 flags=FUA");
}
END_TEST

START_TEST(test_force_pwrite_from_adds_fua)
{
  struct nbd_ctx *top = fua_open("fua fuamode=force");
  struct testlib_source src;

  testlib_source_init(&src, fua_buf, 512, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 512, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=FUA");
}
END_TEST

START_TEST(test_force_advertises_flush_below_without_it)
{
  struct nbd_ctx *top;

  fua_caps.can_flush = 0;       /* native FUA, no flush */
  top = fua_open("fua fuamode=force");
  ck_assert_int_eq(top->can_flush, 1);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_force_without_fua_below_fails_open)
{
  fua_caps.can_flush = 0;
  fua_caps.can_fua = NBD_FUA_NONE;
  fua_assert_open_fails("fua fuamode=force",
                        "fuamode 'force' needs FUA support");
}
END_TEST

/* ---- pass and discard -------------------------------------------------- */

START_TEST(test_pass_changes_nothing)
{
  struct nbd_ctx *top = fua_open("fua fuamode=pass");

  ck_assert_int_eq(top->can_fua, NBD_FUA_NATIVE);
  ck_assert_str_eq(fua_writes(top, NBD_CMD_FLAG_FUA),
                   "pwrite 0+512 flags=FUA; trim 512+512 flags=FUA; "
                   "zero 1024+512 flags=FUA; flush");
}
END_TEST

START_TEST(test_pass_follows_below)
{
  struct nbd_ctx *top;

  fua_caps.can_fua = NBD_FUA_NONE;
  top = fua_open("fua fuamode=pass");
  ck_assert_int_eq(top->can_fua, NBD_FUA_NONE);
}
END_TEST

START_TEST(test_discard_drops_fua_and_flush)
{
  struct nbd_ctx *top;

  fua_caps.can_flush = 0;
  fua_caps.can_fua = NBD_FUA_NONE;
  top = fua_open("fua fuamode=discard");
  ck_assert_int_eq(top->can_fua, NBD_FUA_NATIVE);
  ck_assert_int_eq(top->can_flush, 1);
  ck_assert_str_eq(fua_writes(top, NBD_CMD_FLAG_FUA),
                   "pwrite 0+512 flags=0; trim 512+512 flags=0; "
                   "zero 1024+512 flags=0");
}
END_TEST

/* ---- keys -------------------------------------------------------------- */

START_TEST(test_bad_mode_lists_choices)
{
  char err[512] = "";

  ck_assert_ptr_null(testlib_filter_new("fua", "fuamode=sometimes", err,
                                        sizeof err));
  ck_assert_msg(strstr(err, "none emulate native force pass discard"),
                "err: %s", err);
}
END_TEST

static TCase *
fua_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, fua_setup, fua_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
fua_suite(void)
{
  Suite *s = suite_create("fua");
  TCase *tc;

  tc = fua_tcase(s, "none");
  tcase_add_test(tc, test_none_is_default_and_hides_fua);
  tcase_add_test(tc, test_none_accepted_by_name);
  tc = fua_tcase(s, "emulate");
  tcase_add_test(tc, test_emulate_flushes_after_each_fua_write);
  tcase_add_test(tc, test_emulate_without_flush_below_fails_open);
  tcase_add_test(tc, test_readonly_open_skips_checks);
  tc = fua_tcase(s, "native");
  tcase_add_test(tc, test_native_passes_fua_down);
  tcase_add_test(tc, test_native_over_emulated_fua_flushes_below);
  tcase_add_test(tc, test_native_without_fua_below_fails_open_naming_native);
  tc = fua_tcase(s, "force");
  tcase_add_test(tc, test_force_adds_fua_and_drops_flush);
  tcase_add_test(tc, test_force_pwrite_from_adds_fua);
  tcase_add_test(tc, test_force_advertises_flush_below_without_it);
  tcase_add_test(tc, test_force_without_fua_below_fails_open);
  tc = fua_tcase(s, "pass and discard");
  tcase_add_test(tc, test_pass_changes_nothing);
  tcase_add_test(tc, test_pass_follows_below);
  tcase_add_test(tc, test_discard_drops_fua_and_flush);
  tc = fua_tcase(s, "keys");
  tcase_add_test(tc, test_bad_mode_lists_choices);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "fua"))
    return EXIT_SUCCESS;
  sr = srunner_create(fua_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
