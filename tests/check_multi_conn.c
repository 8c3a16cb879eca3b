/* Unit tests for filters/multi_conn.c over the recording backend, with
 * two connections open on one export: what each mode advertises, which
 * flushes reach the backend under each dirty-tracking level, FUA in
 * emulate mode, the check at open, and the filter's two spellings.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps mc_caps;
static struct testlib_stack mc_s;
static struct nbd_ctx *mc_c2;         /* the second connection */
static unsigned char mc_buf[512];

static void
mc_setup(void)
{
  testlib_caps_default(&mc_caps);
  mc_caps.can_multi_conn = 0;
  mc_c2 = NULL;
}

static void
mc_teardown(void)
{
  if (mc_c2)
    engine_close(mc_c2);
  mc_c2 = NULL;
  testlib_stack_free(&mc_s);
}

/* Opens two connections; returns the first, the second in mc_c2. */
static struct nbd_ctx *
mc_open2(const char *filters)
{
  char err[256];

  testlib_stack(&mc_s, filters, &mc_caps);
  mc_c2 = engine_open(mc_s.exp, 0, NULL, err, sizeof err);
  ck_assert_msg(mc_c2 != NULL, "second open: %s", err);
  testlib_log_clear();
  return mc_s.top;
}

static void
mc_write(struct nbd_ctx *c, uint32_t flags)
{
  ck_assert_int_eq(next_pwrite(c, mc_buf, 512, 0, flags), 0);
}

static void
mc_read(struct nbd_ctx *c)
{
  ck_assert_int_eq(next_pread(c, mc_buf, 512, 0, 0), 0);
}

/* ---- what is advertised -------------------------------------------------- */

START_TEST(test_auto_emulates_when_below_lacks_multi_conn)
{
  struct nbd_ctx *c1 = mc_open2("multi-conn");

  ck_assert_int_eq(c1->can_multi_conn, 1);
  ck_assert_int_eq(c1->can_fua, NBD_FUA_EMULATE);
}
END_TEST

START_TEST(test_auto_is_plugin_when_below_has_multi_conn)
{
  struct nbd_ctx *c1;

  mc_caps.can_multi_conn = 1;
  c1 = mc_open2("multi-conn");
  ck_assert_int_eq(c1->can_multi_conn, 1);
  ck_assert_int_eq(c1->can_fua, NBD_FUA_NATIVE);
  mc_write(mc_c2, 0);
  ck_assert_int_eq(next_flush(c1, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=0; flush");
}
END_TEST

START_TEST(test_disable_plugin_unsafe_advertise)
{
  ck_assert_int_eq(mc_open2("multi-conn multi-conn-mode=disable")
                     ->can_multi_conn, 0);
  mc_teardown();
  ck_assert_int_eq(mc_open2("multi-conn multi-conn-mode=plugin")
                     ->can_multi_conn, 0);
  mc_teardown();
  ck_assert_int_eq(mc_open2("multi-conn multi-conn-mode=unsafe")
                     ->can_multi_conn, 1);
  ck_assert_int_eq(mc_s.top->can_fua, NBD_FUA_NATIVE);
}
END_TEST

START_TEST(test_emulate_without_flush_below_fails_open)
{
  char *log;
  int r;

  mc_caps.can_flush = 0;
  ck_assert_int_eq(testlib_stack_new(&mc_s, "multi-conn", &mc_caps), 0);
  testlib_stderr_begin();
  r = testlib_stack_open(&mc_s, 0);
  log = testlib_stderr_end();
  ck_assert_int_eq(r, -1);
  ck_assert_msg(strstr(log, "emulating multi-conn needs flush support"),
                "log: %s", log);
  free(log);
}
END_TEST

/* ---- emulate: flushes across connections ------------------------------- */

START_TEST(test_flush_flushes_the_other_dirty_connection)
{
  struct nbd_ctx *c1 = mc_open2("multi-conn multi-conn-mode=emulate");

  mc_write(mc_c2, 0);
  ck_assert_int_eq(next_flush(c1, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=0; flush");
  testlib_log_clear();
  ck_assert_int_eq(next_flush(c1, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_flush_flushes_every_writer)
{
  struct nbd_ctx *c1 = mc_open2("multi-conn multi-conn-mode=emulate");

  mc_write(c1, 0);
  mc_write(mc_c2, 0);
  testlib_log_clear();
  ck_assert_int_eq(next_flush(mc_c2, 0), 0);
  ck_assert_str_eq(testlib_log(), "flush; flush");
}
END_TEST

START_TEST(test_reader_flushed_after_a_write_elsewhere)
{
  struct nbd_ctx *c1 = mc_open2("multi-conn multi-conn-mode=emulate");

  mc_read(mc_c2);
  mc_write(c1, 0);
  testlib_log_clear();
  ck_assert_int_eq(next_flush(c1, 0), 0);
  ck_assert_str_eq(testlib_log(), "flush; flush");
}
END_TEST

START_TEST(test_fua_write_flushes_every_dirty_connection)
{
  struct nbd_ctx *c1 = mc_open2("multi-conn multi-conn-mode=emulate");

  mc_write(mc_c2, 0);
  testlib_log_clear();
  mc_write(c1, NBD_CMD_FLAG_FUA);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=0; flush; flush");
}
END_TEST

START_TEST(test_track_fast_flushes_all_once)
{
  struct nbd_ctx *c1 = mc_open2("multi-conn multi-conn-mode=emulate "
                                "multi-conn-track-dirty=fast");

  mc_write(c1, 0);
  testlib_log_clear();
  ck_assert_int_eq(next_flush(mc_c2, 0), 0);
  ck_assert_str_eq(testlib_log(), "flush; flush");
  testlib_log_clear();
  ck_assert_int_eq(next_flush(c1, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_track_off_always_flushes_all)
{
  struct nbd_ctx *c1 = mc_open2("multi-conn multi-conn-mode=emulate "
                                "multi-conn-track-dirty=off");

  ck_assert_int_eq(next_flush(c1, 0), 0);
  ck_assert_int_eq(next_flush(c1, 0), 0);
  ck_assert_str_eq(testlib_log(), "flush; flush; flush; flush");
}
END_TEST

START_TEST(test_closed_connection_leaves_the_group)
{
  struct nbd_ctx *c1 = mc_open2("multi-conn multi-conn-mode=emulate "
                                "multi-conn-track-dirty=off");

  engine_close(mc_c2);
  mc_c2 = NULL;
  testlib_log_clear();
  ck_assert_int_eq(next_flush(c1, 0), 0);
  ck_assert_str_eq(testlib_log(), "flush");
}
END_TEST

/* ---- plugin and disable: one connection's own flushes ------------------- */

START_TEST(test_plugin_skips_flush_when_clean)
{
  struct nbd_ctx *c1 = mc_open2("multi-conn multi-conn-mode=disable");

  ck_assert_int_eq(next_flush(c1, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  mc_write(c1, 0);
  ck_assert_int_eq(next_flush(c1, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=0; flush");
}
END_TEST

START_TEST(test_plugin_passes_fua_down)
{
  struct nbd_ctx *c1 = mc_open2("multi-conn multi-conn-mode=plugin");

  mc_write(c1, NBD_CMD_FLAG_FUA);
  ck_assert_int_eq(next_flush(c1, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=FUA");
}
END_TEST

/* ---- keys and names ------------------------------------------------------ */

START_TEST(test_both_spellings_and_bad_values)
{
  char err[512] = "";
  struct nbd_layer *l;

  l = testlib_filter_new("multi_conn", "multi-conn-track-dirty=connection",
                         err, sizeof err);
  ck_assert_msg(l != NULL, "err: %s", err);
  ck_assert_str_eq(l->ops->name, "multi-conn");
  engine_layer_free(l);
  ck_assert_ptr_null(testlib_filter_new("multi-conn", "multi-conn-mode=on",
                                        err, sizeof err));
  ck_assert_msg(strstr(err, "auto emulate plugin disable unsafe"),
                "err: %s", err);
  ck_assert_ptr_null(testlib_filter_new("multi-conn",
                                        "multi-conn-track-dirty=slow",
                                        err, sizeof err));
  ck_assert_msg(strstr(err, "conn connection fast off"), "err: %s", err);
}
END_TEST

static TCase *
mc_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, mc_setup, mc_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
mc_suite(void)
{
  Suite *s = suite_create("multi_conn");
  TCase *tc;

  tc = mc_tcase(s, "advertised");
  tcase_add_test(tc, test_auto_emulates_when_below_lacks_multi_conn);
  tcase_add_test(tc, test_auto_is_plugin_when_below_has_multi_conn);
  tcase_add_test(tc, test_disable_plugin_unsafe_advertise);
  tcase_add_test(tc, test_emulate_without_flush_below_fails_open);
  tc = mc_tcase(s, "emulate");
  tcase_add_test(tc, test_flush_flushes_the_other_dirty_connection);
  tcase_add_test(tc, test_flush_flushes_every_writer);
  tcase_add_test(tc, test_reader_flushed_after_a_write_elsewhere);
  tcase_add_test(tc, test_fua_write_flushes_every_dirty_connection);
  tcase_add_test(tc, test_track_fast_flushes_all_once);
  tcase_add_test(tc, test_track_off_always_flushes_all);
  tcase_add_test(tc, test_closed_connection_leaves_the_group);
  tc = mc_tcase(s, "plugin and disable");
  tcase_add_test(tc, test_plugin_skips_flush_when_clean);
  tcase_add_test(tc, test_plugin_passes_fua_down);
  tc = mc_tcase(s, "keys");
  tcase_add_test(tc, test_both_spellings_and_bad_values);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "multi-conn"))
    return EXIT_SUCCESS;
  sr = srunner_create(mc_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
