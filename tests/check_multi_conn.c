/* Unit tests for filters/multi_conn.c over the recording backend, with
 * two connections open on one export: what each mode advertises, which
 * flushes reach the backend under each dirty-tracking level, FUA in
 * emulate mode, the check at open, and the filter's two spellings.  Then
 * connections that asked for two export names (multi-conn-exportname),
 * and a stress test of connections closing while other connections'
 * group flushes run through them, over a thread-safe probe backend of
 * this file (the recorder logs without locks).
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps mc_caps;
static struct testlib_stack mc_s;
static struct nbd_ctx *mc_c2;         /* the second connection */
static unsigned char mc_buf[512];

/* Connections opened with a name (mc_open_named), closed by teardown. */
#define MC_NAMED_MAX 4
static struct nbd_conn_info mc_info[MC_NAMED_MAX];
static struct nbd_ctx *mc_named[MC_NAMED_MAX];

static void
mc_setup(void)
{
  testlib_caps_default(&mc_caps);
  mc_caps.can_multi_conn = 0;
  mc_c2 = NULL;
  memset(mc_info, 0, sizeof mc_info);
  memset(mc_named, 0, sizeof mc_named);
}

static void
mc_teardown(void)
{
  int i;

  for (i = 0; i < MC_NAMED_MAX; i++)
    if (mc_named[i])
      engine_close(mc_named[i]);
  memset(mc_named, 0, sizeof mc_named);
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

/* Connection i of mc_s.exp (stack made, not opened), as a client that
 * asked for export name (the engine keeps a pointer to its info). */
static struct nbd_ctx *
mc_open_named(int i, const char *name)
{
  char err[256];

  mc_info[i].id = (uint64_t)i + 1;
  mc_info[i].export_name = name;
  mc_named[i] = engine_open(mc_s.exp, 0, &mc_info[i], err, sizeof err);
  ck_assert_msg(mc_named[i] != NULL, "open %d (%s): %s", i, name, err);
  return mc_named[i];
}

/* Two connections asking for export name "a" (0, 1), two for "b" (2, 3),
 * all on the one instance of the filter (one config export that serves
 * any name, as on the command line). */
static void
mc_open_ab(const char *filters)
{
  ck_assert_int_eq(testlib_stack_new(&mc_s, filters, &mc_caps), 0);
  mc_open_named(0, "a");
  mc_open_named(1, "a");
  mc_open_named(2, "b");
  mc_open_named(3, "b");
  testlib_log_clear();
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

/* ---- multi-conn-exportname --------------------------------------------- */

/* The recorder logs "flush" without saying whose: each case leaves one
 * connection dirty per group and counts the flushes each group's flush
 * sends down. */
START_TEST(test_exportname_true_flushes_only_its_name)
{
  mc_open_ab("multi-conn multi-conn-mode=emulate multi-conn-exportname=true");
  mc_write(mc_named[1], 0);
  mc_write(mc_named[3], 0);
  testlib_log_clear();
  ck_assert_int_eq(next_flush(mc_named[0], 0), 0);
  ck_assert_str_eq(testlib_log(), "flush");         /* a's writer only */
  testlib_log_clear();
  ck_assert_int_eq(next_flush(mc_named[0], 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_int_eq(next_flush(mc_named[2], 0), 0);
  ck_assert_str_eq(testlib_log(), "flush");         /* b's is still dirty */
}
END_TEST

START_TEST(test_exportname_false_flushes_every_name)
{
  mc_open_ab("multi-conn multi-conn-mode=emulate");
  mc_write(mc_named[1], 0);
  mc_write(mc_named[3], 0);
  testlib_log_clear();
  ck_assert_int_eq(next_flush(mc_named[0], 0), 0);
  ck_assert_str_eq(testlib_log(), "flush; flush");
  testlib_log_clear();
  ck_assert_int_eq(next_flush(mc_named[2], 0), 0);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

/* A write under one name makes the readers of that name stale, not the
 * readers of another. */
START_TEST(test_exportname_true_write_leaves_other_readers)
{
  mc_open_ab("multi-conn multi-conn-mode=emulate multi-conn-exportname=true");
  mc_read(mc_named[1]);
  mc_read(mc_named[3]);
  mc_write(mc_named[0], 0);
  testlib_log_clear();
  ck_assert_int_eq(next_flush(mc_named[0], 0), 0);
  ck_assert_str_eq(testlib_log(), "flush; flush");  /* a's writer, reader */
  testlib_log_clear();
  ck_assert_int_eq(next_flush(mc_named[2], 0), 0);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_exportname_false_write_flushes_every_reader)
{
  mc_open_ab("multi-conn multi-conn-mode=emulate");
  mc_read(mc_named[1]);
  mc_read(mc_named[3]);
  mc_write(mc_named[0], 0);
  testlib_log_clear();
  ck_assert_int_eq(next_flush(mc_named[0], 0), 0);
  ck_assert_str_eq(testlib_log(), "flush; flush; flush");
}
END_TEST

/* fast and off flush the whole group, and only it. */
START_TEST(test_exportname_true_track_off_flushes_its_group)
{
  mc_open_ab("multi-conn multi-conn-mode=emulate multi-conn-exportname=true "
             "multi-conn-track-dirty=off");
  ck_assert_int_eq(next_flush(mc_named[2], 0), 0);
  ck_assert_str_eq(testlib_log(), "flush; flush");
}
END_TEST

/* The default export "" and a stack opened outside a connection (no
 * info) are the same name; the group of a name outlives none of its
 * connections and a new connection to it starts a fresh one. */
START_TEST(test_exportname_true_default_name_and_reopen)
{
  mc_open_ab("multi-conn multi-conn-mode=emulate multi-conn-exportname=true "
             "multi-conn-track-dirty=off");
  engine_close(mc_named[2]);
  engine_close(mc_named[3]);
  mc_named[2] = mc_named[3] = NULL;
  ck_assert_int_eq(testlib_stack_open(&mc_s, 0), 0);  /* no info: "" */
  mc_open_named(2, "");
  testlib_log_clear();
  ck_assert_int_eq(next_flush(mc_s.top, 0), 0);
  ck_assert_str_eq(testlib_log(), "flush; flush");
  testlib_log_clear();
  mc_open_named(3, "b");
  ck_assert_int_eq(next_flush(mc_named[3], 0), 0);
  ck_assert_str_eq(testlib_log(), "flush");
  testlib_log_clear();
  ck_assert_int_eq(next_flush(mc_named[1], 0), 0);
  ck_assert_str_eq(testlib_log(), "flush; flush");
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

/* ---- stress: closes racing group flushes ------------------------------- */

/* The probe backend: a disk of zeros whose contexts know whether they are
 * open and whether a flush runs through them, counted with atomics from
 * any thread.  A flush through a context that is closing or closed counts
 * as bad (without ASan, the freed handle's magic shows it too, mostly). */
#define MC_PROBE_ALIVE 0x616c6976u
#define MC_PROBE_DEAD  0x64656164u
#define MC_STRESS_THREADS 8
#define MC_STRESS_ITERS   200

struct mc_probe_handle {
  unsigned magic;             /* atomic */
  unsigned flushing;          /* atomic: flushes running through it */
};

static unsigned mc_probe_bad;         /* atomic */
static unsigned long mc_probe_flushes;        /* atomic */

static int
mc_probe_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  struct mc_probe_handle *h = calloc(1, sizeof *h);

  (void)next;
  (void)readonly;
  if (h == NULL)
    return -ENOMEM;
  __atomic_store_n(&h->magic, MC_PROBE_ALIVE, __ATOMIC_SEQ_CST);
  self->handle = h;
  return 0;
}

static void
mc_probe_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  struct mc_probe_handle *h = self->handle;

  (void)next;
  __atomic_store_n(&h->magic, MC_PROBE_DEAD, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&h->flushing, __ATOMIC_SEQ_CST))
    __atomic_fetch_add(&mc_probe_bad, 1, __ATOMIC_SEQ_CST);
  free(h);
}

/* Yields in the middle, so a close elsewhere has a chance to come. */
static int
mc_probe_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  struct mc_probe_handle *h = self->handle;
  int i;

  (void)next;
  (void)flags;
  __atomic_fetch_add(&h->flushing, 1, __ATOMIC_SEQ_CST);
  for (i = 0; i < 2; i++) {
    if (__atomic_load_n(&h->magic, __ATOMIC_SEQ_CST) != MC_PROBE_ALIVE)
      __atomic_fetch_add(&mc_probe_bad, 1, __ATOMIC_SEQ_CST);
    sched_yield();
  }
  __atomic_fetch_sub(&h->flushing, 1, __ATOMIC_SEQ_CST);
  __atomic_fetch_add(&mc_probe_flushes, 1, __ATOMIC_RELAXED);
  return 0;
}

static int
mc_probe_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
               uint32_t count, uint64_t offset, uint32_t flags)
{
  (void)self, (void)next, (void)offset, (void)flags;
  memset(buf, 0, count);
  return 0;
}

static int
mc_probe_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
                uint32_t count, uint64_t offset, uint32_t flags)
{
  (void)self, (void)next, (void)buf, (void)count, (void)offset, (void)flags;
  return 0;
}

UNSUPPORTED(mc_probe, reopen)
static int64_t
mc_probe_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)self, (void)next;
  return 1 << 20;
}

static int
mc_probe_can_write(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)self, (void)next;
  return 1;
}

static int
mc_probe_can_flush(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)self, (void)next;
  return 1;
}

UNSUPPORTED(mc_probe, trim)
UNSUPPORTED(mc_probe, zero)
UNSUPPORTED(mc_probe, extents)
UNSUPPORTED(mc_probe, depth)
UNSUPPORTED(mc_probe, cache)
UNSUPPORTED(mc_probe, list_exports)
UNSUPPORTED(mc_probe, preconnect)
UNSUPPORTED(mc_probe, block_size)
UNSUPPORTED(mc_probe, can_trim)
UNSUPPORTED(mc_probe, can_zero)
UNSUPPORTED(mc_probe, can_fast_zero)
UNSUPPORTED(mc_probe, can_fua)
UNSUPPORTED(mc_probe, can_cache)
UNSUPPORTED(mc_probe, can_extents)
UNSUPPORTED(mc_probe, can_multi_conn)
UNSUPPORTED(mc_probe, is_rotational)

static const struct nbd_layer_ops mc_probe_ops = {
  .name = "mc-probe",
  .description = "test-only disk of zeros that checks flushes vs closes",
  .kind = NBD_LAYER_BACKEND,
  .thread_model = NBD_PARALLEL,
  .nonblocking = NBD_NEVER_BLOCKS,
  NBD_REQUIRED_METHODS(mc_probe)
  .open = mc_probe_open,
  .close = mc_probe_close,
};

struct mc_stress {
  struct nbd_export *exp;
  int byname;
  unsigned failed;            /* atomic: opens or requests that failed */
};

struct mc_stress_thread {
  struct mc_stress *st;
  pthread_t tid;
  struct nbd_conn_info info;
};

/* Open, write, flush twice (every open connection of the group, track
 * off), close: each close races the flushes of the others. */
static void *
mc_stress_run(void *arg)
{
  struct mc_stress_thread *t = arg;
  struct mc_stress *st = t->st;
  struct nbd_ctx *c;
  char err[256];
  int i;

  for (i = 0; i < MC_STRESS_ITERS; i++) {
    c = engine_open(st->exp, 0, &t->info, err, sizeof err);
    if (c == NULL) {
      __atomic_fetch_add(&st->failed, 1, __ATOMIC_SEQ_CST);
      continue;
    }
    if (next_pwrite(c, mc_buf, 512, 0, 0) < 0 || next_flush(c, 0) < 0 ||
        next_flush(c, 0) < 0)
      __atomic_fetch_add(&st->failed, 1, __ATOMIC_SEQ_CST);
    if (engine_close(c) < 0)
      __atomic_fetch_add(&st->failed, 1, __ATOMIC_SEQ_CST);
  }
  return NULL;
}

/* min_flushes: per thread and iteration, what reaches the probe at
 * least (track off: the thread's own two). */
static void
mc_stress(const char *params, unsigned long min_flushes)
{
  struct mc_stress st = { 0 };
  struct mc_stress_thread t[MC_STRESS_THREADS];
  struct nbd_layer *l;
  char err[512];
  int i;

  mc_probe_bad = 0;
  mc_probe_flushes = 0;
  l = testlib_filter_new("multi-conn", params, err, sizeof err);
  ck_assert_msg(l != NULL, "filter: %s", err);
  st.exp = engine_export_new("test");
  ck_assert_ptr_nonnull(st.exp);
  engine_export_push(st.exp, l);
  engine_export_push(st.exp, engine_layer_new(&mc_probe_ops, "test"));
  ck_assert_msg(engine_export_finish(st.exp, err, sizeof err) == 0,
                "export: %s", err);
  for (i = 0; i < MC_STRESS_THREADS; i++) {
    memset(&t[i], 0, sizeof t[i]);
    t[i].st = &st;
    t[i].info.id = (uint64_t)i + 1;
    t[i].info.export_name = i % 2 ? "a" : "b";
    ck_assert_int_eq(pthread_create(&t[i].tid, NULL, mc_stress_run, &t[i]),
                     0);
  }
  for (i = 0; i < MC_STRESS_THREADS; i++)
    pthread_join(t[i].tid, NULL);
  engine_export_free(st.exp);
  ck_assert_uint_eq(st.failed, 0);
  ck_assert_uint_eq(mc_probe_bad, 0);
  ck_assert_uint_ge(mc_probe_flushes,
                    min_flushes * MC_STRESS_THREADS * MC_STRESS_ITERS);
}

START_TEST(test_stress_close_during_group_flush)
{
  mc_stress("multi-conn-mode=emulate multi-conn-track-dirty=off", 2);
}
END_TEST

START_TEST(test_stress_close_during_group_flush_byname)
{
  mc_stress("multi-conn-mode=emulate multi-conn-track-dirty=off "
            "multi-conn-exportname=true", 2);
}
END_TEST

START_TEST(test_stress_close_during_group_flush_track_conn)
{
  /* A thread's write may be flushed by another thread first. */
  mc_stress("multi-conn-mode=emulate", 0);
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
  tc = mc_tcase(s, "exportname");
  tcase_add_test(tc, test_exportname_true_flushes_only_its_name);
  tcase_add_test(tc, test_exportname_false_flushes_every_name);
  tcase_add_test(tc, test_exportname_true_write_leaves_other_readers);
  tcase_add_test(tc, test_exportname_false_write_flushes_every_reader);
  tcase_add_test(tc, test_exportname_true_track_off_flushes_its_group);
  tcase_add_test(tc, test_exportname_true_default_name_and_reopen);
  tc = mc_tcase(s, "stress");
  /* Generous for sanitizer builds; the tests assert no timing. */
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_stress_close_during_group_flush);
  tcase_add_test(tc, test_stress_close_during_group_flush_byname);
  tcase_add_test(tc, test_stress_close_during_group_flush_track_conn);
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
