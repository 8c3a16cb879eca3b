/* Unit tests for filters/delay.c over the recording backend: each kind of
 * request waits its own delay and then reaches the layer below unchanged;
 * the older keys rdelay/wdelay fill in what the specific keys leave out;
 * delay-fast-zero=no refuses fast zeros at once; a stopping server cuts a
 * sleep short with ESHUTDOWN; bad values are refused at setup.
 *
 * Times are only checked from below (a delayed call took at least its
 * delay) or with generous bounds (an undelayed call returns well before
 * the delay another key would have caused).
 */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "stop.h"
#include "testlib.h"

static struct testlib_caps delay_caps;
static struct testlib_stack delay_s;
static unsigned char delay_buf[4096];

static void
delay_setup(void)
{
  testlib_caps_default(&delay_caps);
}

static void
delay_teardown(void)
{
  testlib_stack_free(&delay_s);
}

static struct nbd_ctx *
delay_open(const char *filters)
{
  testlib_stack(&delay_s, filters, &delay_caps);
  return delay_s.top;
}

static double
delay_now(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Calls that wait 300 ms ("slow") and calls that do not: the latter must
 * return well under it (a generous bound, not a speed check). */
#define SLOW 0.3
#define FAST 0.2

static double delay_t0;

static void
delay_start(void)
{
  delay_t0 = delay_now();
}

static void
delay_assert_slow(const char *what)
{
  double t = delay_now() - delay_t0;

  ck_assert_msg(t >= SLOW - 0.01, "%s took %.3f s, expected >= %.1f s", what,
                t, SLOW);
}

static void
delay_assert_fast(const char *what)
{
  double t = delay_now() - delay_t0;

  ck_assert_msg(t < FAST, "%s took %.3f s, expected no delay", what, t);
}

/* ---- each method ---------------------------------------------------------- */

START_TEST(test_read_waits_then_passes_on)
{
  struct nbd_ctx *top = delay_open("delay delay-read=300ms");

  testlib_pattern(delay_s.rec->ram, 4096, 0);
  delay_start();
  ck_assert_int_eq(next_pread(top, delay_buf, 4096, 0, 0), 0);
  delay_assert_slow("pread");
  ck_assert_str_eq(testlib_log(), "pread 0+4096 flags=0");
  ck_assert_mem_eq(delay_buf, delay_s.rec->ram, 4096);
}
END_TEST

START_TEST(test_read_delay_leaves_writes_alone)
{
  struct nbd_ctx *top = delay_open("delay delay-read=300ms");

  delay_start();
  ck_assert_int_eq(next_pwrite(top, delay_buf, 512, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_zero(top, 512, 0, 0), 0);
  ck_assert_int_eq(next_trim(top, 512, 0, 0), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  delay_assert_fast("write, zero, trim, flush");
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=FUA; zero 0+512 "
                   "flags=0; trim 0+512 flags=0; flush");
}
END_TEST

START_TEST(test_write_waits)
{
  struct nbd_ctx *top = delay_open("delay delay-write=300ms");

  testlib_pattern(delay_buf, 4096, 4096);
  delay_start();
  ck_assert_int_eq(next_pwrite(top, delay_buf, 4096, 4096, 0), 0);
  delay_assert_slow("pwrite");
  ck_assert_str_eq(testlib_log(), "pwrite 4096+4096 flags=0");
  ck_assert_mem_eq(delay_s.rec->ram + 4096, delay_buf, 4096);
}
END_TEST

/* The filter has no pwrite_from: a delayed write must not hold the
 * socket, so the engine reads the payload and calls pwrite. */
START_TEST(test_write_from_socket_goes_through_pwrite)
{
  struct nbd_ctx *top = delay_open("delay delay-write=300ms");
  struct testlib_source src;

  ck_assert_int_eq(top->pull, 0);
  testlib_source_init(&src, delay_buf, 512, SIZE_MAX);
  delay_start();
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 512, 0, 0), 0);
  delay_assert_slow("pwrite_from");
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=0");
}
END_TEST

START_TEST(test_zero_trim_extents_cache_each_wait)
{
  static const char *const stacks[] = {
    "delay delay-zero=300ms", "delay delay-trim=300ms",
    "delay delay-extents=300ms", "delay delay-cache=300ms",
  };
  struct nbd_extents *e;
  int i, r = 0;

  for (i = 0; i < 4; i++) {
    struct nbd_ctx *top = delay_open(stacks[i]);

    e = nbd_extents_new(0, 4096);
    delay_start();
    switch (i) {
    case 0: r = next_zero(top, 4096, 0, NBD_CMD_FLAG_NO_HOLE); break;
    case 1: r = next_trim(top, 4096, 0, 0); break;
    case 2: r = next_extents(top, 4096, 0, 0, e); break;
    case 3: r = next_cache(top, 4096, 0, 0); break;
    }
    ck_assert_int_eq(r, 0);
    delay_assert_slow(stacks[i]);
    nbd_extents_free(e);
    testlib_stack_free(&delay_s);
  }
}
END_TEST

START_TEST(test_no_keys_no_delay)
{
  struct nbd_ctx *top = delay_open("delay");
  struct nbd_extents *e = nbd_extents_new(0, 4096);

  delay_start();
  ck_assert_int_eq(next_pread(top, delay_buf, 512, 0, 0), 0);
  ck_assert_int_eq(next_pwrite(top, delay_buf, 512, 0, 0), 0);
  ck_assert_int_eq(next_zero(top, 512, 0, NBD_CMD_FLAG_FAST_ZERO), 0);
  ck_assert_int_eq(next_trim(top, 512, 0, 0), 0);
  ck_assert_int_eq(next_extents(top, 512, 0, 0, e), 0);
  ck_assert_int_eq(next_cache(top, 512, 0, 0), 0);
  delay_assert_fast("every method");
  ck_assert_str_eq(testlib_log(), "pread 0+512 flags=0; pwrite 0+512 flags=0; "
                   "zero 0+512 flags=FAST_ZERO; trim 0+512 flags=0; "
                   "extents 0+512 flags=0; cache 0+512 flags=0");
  nbd_extents_free(e);
}
END_TEST

/* ---- the older keys ----------------------------------------------------- */

START_TEST(test_rdelay_is_delay_read)
{
  struct nbd_ctx *top = delay_open("delay rdelay=0.3");

  delay_start();
  ck_assert_int_eq(next_pread(top, delay_buf, 512, 0, 0), 0);
  delay_assert_slow("pread with rdelay");
}
END_TEST

START_TEST(test_wdelay_covers_write_zero_trim)
{
  struct nbd_ctx *top = delay_open("delay wdelay=100ms");

  delay_start();
  ck_assert_int_eq(next_pwrite(top, delay_buf, 512, 0, 0), 0);
  ck_assert_int_eq(next_zero(top, 512, 0, 0), 0);
  ck_assert_int_eq(next_trim(top, 512, 0, 0), 0);
  delay_assert_slow("write + zero + trim with wdelay=100ms");
}
END_TEST

/* A specific key wins over wdelay in either order (nbdkit: the last). */
START_TEST(test_specific_key_wins_over_wdelay)
{
  struct nbd_ctx *top = delay_open("delay delay-zero=0 wdelay=300ms");

  delay_start();
  ck_assert_int_eq(next_zero(top, 512, 0, 0), 0);
  delay_assert_fast("zero with delay-zero=0 before wdelay");
  delay_start();
  ck_assert_int_eq(next_trim(top, 512, 0, 0), 0);
  delay_assert_slow("trim with wdelay");
  testlib_stack_free(&delay_s);

  top = delay_open("delay rdelay=300ms delay-read=0");
  delay_start();
  ck_assert_int_eq(next_pread(top, delay_buf, 512, 0, 0), 0);
  delay_assert_fast("read with delay-read=0 after rdelay");
}
END_TEST

/* ---- fast zero ----------------------------------------------------------- */

START_TEST(test_fast_zero_waits_by_default)
{
  struct nbd_ctx *top = delay_open("delay delay-zero=300ms");

  delay_start();
  ck_assert_int_eq(next_zero(top, 512, 0, NBD_CMD_FLAG_FAST_ZERO), 0);
  delay_assert_slow("fast zero");
  ck_assert_str_eq(testlib_log(), "zero 0+512 flags=FAST_ZERO");
}
END_TEST

START_TEST(test_fast_zero_no_refuses_at_once)
{
  struct nbd_ctx *top;

  delay_caps.can_fast_zero = 0;
  top = delay_open("delay delay-zero=300ms delay-fast-zero=no");

  ck_assert_int_eq(next_can_fast_zero(top), 1);
  delay_start();
  ck_assert_int_eq(next_zero(top, 512, 0, NBD_CMD_FLAG_FAST_ZERO), -ENOTSUP);
  delay_assert_fast("refused fast zero");
  ck_assert_str_eq(testlib_log(), "");
  /* A plain zero still waits and goes below. */
  delay_start();
  ck_assert_int_eq(next_zero(top, 512, 0, 0), 0);
  delay_assert_slow("plain zero");
  ck_assert_str_eq(testlib_log(), "zero 0+512 flags=0");
}
END_TEST

/* Without a zero delay nothing is slow: fast zeros go below as asked. */
START_TEST(test_fast_zero_no_without_zero_delay_passes)
{
  struct nbd_ctx *top;

  delay_caps.can_fast_zero = 0;
  top = delay_open("delay delay-fast-zero=no delay-read=1s");

  ck_assert_int_eq(next_can_fast_zero(top), 0);
  ck_assert_int_eq(next_zero(top, 512, 0, NBD_CMD_FLAG_FAST_ZERO), -ENOTSUP);
  ck_assert_int_eq(next_zero(top, 512, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "zero 0+512 flags=0");
}
END_TEST

/* ---- open, close and stopping --------------------------------------------- */

START_TEST(test_open_and_close_wait)
{
  delay_start();
  delay_open("delay delay-open=300ms");
  delay_assert_slow("open");
  testlib_stack_free(&delay_s);

  delay_open("delay delay-close=300ms");
  delay_start();
  testlib_stack_free(&delay_s);
  delay_assert_slow("close");
}
END_TEST

static void *
delay_stop_later(void *arg)
{
  (void)arg;
  usleep(200000);
  atomic_store(&server_stopping, 1);
  stop_wake();
  return NULL;
}

START_TEST(test_stopping_server_ends_sleep_with_eshutdown)
{
  struct nbd_ctx *top = delay_open("delay delay-read=60s");
  pthread_t t;
  double took;

  ck_assert_int_eq(pthread_create(&t, NULL, delay_stop_later, NULL), 0);
  delay_start();
  ck_assert_int_eq(next_pread(top, delay_buf, 512, 0, 0), -ESHUTDOWN);
  took = delay_now() - delay_t0;
  pthread_join(t, NULL);
  ck_assert_msg(took < 10, "the stop took %.1f s to end a 60 s sleep", took);
  ck_assert_str_eq(testlib_log(), "");
  atomic_store(&server_stopping, 0);
}
END_TEST

/* ---- capabilities and keys --------------------------------------------------- */

START_TEST(test_capabilities_pass_through)
{
  struct nbd_ctx *top;

  delay_caps.size = 12345 * 512;
  delay_caps.can_trim = 0;
  delay_caps.can_cache = NBD_CACHE_EMULATE;
  delay_caps.can_multi_conn = 1;
  delay_caps.is_rotational = 1;
  delay_caps.min_block = 512;
  delay_caps.pref_block = 4096;
  delay_caps.max_block = 1 << 20;
  top = delay_open("delay rdelay=1ms wdelay=1ms");

  ck_assert_int_eq(next_get_size(top), 12345 * 512);
  ck_assert_int_eq(next_can_write(top), 1);
  ck_assert_int_eq(next_can_flush(top), 1);
  ck_assert_int_eq(next_can_trim(top), 0);
  ck_assert_int_eq(next_can_zero(top), NBD_ZERO_NATIVE);
  ck_assert_int_eq(next_can_fast_zero(top), 1);
  ck_assert_int_eq(next_can_fua(top), NBD_FUA_NATIVE);
  ck_assert_int_eq(next_can_cache(top), NBD_CACHE_EMULATE);
  ck_assert_int_eq(next_can_extents(top), 1);
  ck_assert_int_eq(next_can_multi_conn(top), 1);
  ck_assert_int_eq(next_is_rotational(top), 1);
  ck_assert_uint_eq(top->min_block, 512);
  ck_assert_uint_eq(top->pref_block, 4096);
  ck_assert_uint_eq(top->max_block, 1 << 20);
}
END_TEST

START_TEST(test_durations_in_nbdkit_forms_accepted)
{
  static const char *const ok[] = {
    "delay rdelay=10", "delay rdelay=1.5", "delay rdelay=10ms",
    "delay delay-read=500us", "delay wdelay=0", "delay delay-open=2s",
    "delay delay-close=1.5ms",
  };
  size_t i;

  for (i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    ck_assert_msg(testlib_stack_new(&delay_s, ok[i], &delay_caps) == 0,
                  "%s: %s", ok[i], delay_s.err);
    testlib_stack_free(&delay_s);
  }
}
END_TEST

START_TEST(test_bad_values_refused)
{
  ck_assert_int_eq(testlib_stack_new(&delay_s, "delay rdelay=-1",
                                     &delay_caps), -1);
  ck_assert_msg(strstr(delay_s.err, "rdelay: invalid value '-1'") != NULL,
                "%s", delay_s.err);
  ck_assert_int_eq(testlib_stack_new(&delay_s, "delay delay-write=fast",
                                     &delay_caps), -1);
  ck_assert_msg(strstr(delay_s.err, "duration") != NULL, "%s", delay_s.err);
  ck_assert_int_eq(testlib_stack_new(&delay_s, "delay delay-fast-zero=maybe",
                                     &delay_caps), -1);
  ck_assert_msg(strstr(delay_s.err, "delay-fast-zero") != NULL, "%s",
                delay_s.err);
  ck_assert_int_eq(testlib_stack_new(&delay_s, "delay delay-flush=1",
                                     &delay_caps), -1);
  ck_assert_msg(strstr(delay_s.err, "unknown key 'delay-flush'") != NULL,
                "%s", delay_s.err);
}
END_TEST

/* ---- suite -------------------------------------------------------------------- */

static TCase *
delay_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, delay_setup, delay_teardown);
  tcase_set_timeout(tc, 30);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
delay_suite(void)
{
  Suite *s = suite_create("delay");
  TCase *tc;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "delay"))
    return s;
  tc = delay_tcase(s, "read waits then passes on");
  tcase_add_test(tc, test_read_waits_then_passes_on);
  tc = delay_tcase(s, "read delay leaves writes alone");
  tcase_add_test(tc, test_read_delay_leaves_writes_alone);
  tc = delay_tcase(s, "write waits");
  tcase_add_test(tc, test_write_waits);
  tcase_add_test(tc, test_write_from_socket_goes_through_pwrite);
  tc = delay_tcase(s, "zero trim extents cache wait");
  tcase_add_test(tc, test_zero_trim_extents_cache_each_wait);
  tc = delay_tcase(s, "no keys no delay");
  tcase_add_test(tc, test_no_keys_no_delay);
  tc = delay_tcase(s, "older keys");
  tcase_add_test(tc, test_rdelay_is_delay_read);
  tcase_add_test(tc, test_wdelay_covers_write_zero_trim);
  tcase_add_test(tc, test_specific_key_wins_over_wdelay);
  tc = delay_tcase(s, "fast zero");
  tcase_add_test(tc, test_fast_zero_waits_by_default);
  tcase_add_test(tc, test_fast_zero_no_refuses_at_once);
  tcase_add_test(tc, test_fast_zero_no_without_zero_delay_passes);
  tc = delay_tcase(s, "open close");
  tcase_add_test(tc, test_open_and_close_wait);
  tc = delay_tcase(s, "stopping server ends sleep");
  tcase_add_test(tc, test_stopping_server_ends_sleep_with_eshutdown);
  tc = delay_tcase(s, "capabilities pass through");
  tcase_add_test(tc, test_capabilities_pass_through);
  tc = delay_tcase(s, "keys");
  tcase_add_test(tc, test_durations_in_nbdkit_forms_accepted);
  tcase_add_test(tc, test_bad_values_refused);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(delay_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
