/* Unit tests for filters/blocksize_policy.c over the recording backend:
 * the sizes it advertises (keys given, the rest from below), the default
 * preferred size kept within the maximum, bad keys refused at setup,
 * error policy enforced by the engine at the filter's boundary, allow
 * policy letting violations through (the advisory flag of layer.h), and
 * a pass-through filter above keeping the limits advisory.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static struct testlib_caps pol_caps;
static struct testlib_stack pol_s;
static unsigned char pol_buf[65536];

static void
pol_setup(void)
{
  testlib_caps_default(&pol_caps);
}

static void
pol_teardown(void)
{
  testlib_stack_free(&pol_s);
}

static struct nbd_ctx *
pol_open(const char *filters)
{
  testlib_stack(&pol_s, filters, &pol_caps);
  return pol_s.top;
}

static void
pol_assert_sizes(struct nbd_ctx *top, uint32_t min, uint32_t pref,
                 uint32_t max)
{
  uint32_t a, b, c;

  ck_assert_int_eq(next_block_size(top, &a, &b, &c), 0);
  ck_assert_uint_eq(a, min);
  ck_assert_uint_eq(b, pref);
  ck_assert_uint_eq(c, max);
}

START_TEST(test_advertises_keys_given)
{
  pol_assert_sizes(pol_open("blocksize_policy blocksize-minimum=512 "
                            "blocksize-preferred=64k blocksize-maximum=1M"),
                   512, 65536, 1 << 20);
}
END_TEST

START_TEST(test_defaults_without_constraints_below)
{
  pol_assert_sizes(pol_open("blocksize_policy"), 1, 4096, 0xffffffffu);
}
END_TEST

START_TEST(test_defaults_from_below)
{
  pol_caps.min_block = 512;
  pol_caps.pref_block = 8192;
  pol_caps.max_block = 1 << 20;
  pol_assert_sizes(pol_open("blocksize_policy blocksize-maximum=64k"),
                   512, 8192, 65536);
}
END_TEST

/* nbdkit 1.32.5 keeps 4096 and fails every connection. */
START_TEST(test_default_preferred_within_maximum)
{
  pol_assert_sizes(pol_open("blocksize_policy blocksize-maximum=1000"),
                   1, 512, 1000);
}
END_TEST

START_TEST(test_bad_keys_refused)
{
  static const char *const bad[][2] = {
    { "blocksize-minimum=3", "power of 2 from 1 to 65536" },
    { "blocksize-minimum=128k", "power of 2 from 1 to 65536" },
    { "blocksize-preferred=256", "power of 2 from 512 to 33554432" },
    { "blocksize-preferred=64M", "power of 2 from 512 to 33554432" },
    { "blocksize-maximum=8G", "from 1 to 4294967295" },
    { "blocksize-maximum=0", "from 1 to 4294967295" },
    { "blocksize-minimum=1k blocksize-preferred=512", "must be <=" },
    { "blocksize-preferred=64k blocksize-maximum=4k", "must be <=" },
    { "blocksize-minimum=4k blocksize-maximum=6k", "multiple of" },
    { "blocksize-error-policy=maybe", "allow" },
  };
  char err[256];
  size_t i;

  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    struct nbd_layer *l = testlib_filter_new("blocksize_policy", bad[i][0],
                                             err, sizeof err);
    ck_assert_msg(l == NULL, "%s accepted", bad[i][0]);
    ck_assert_msg(strstr(err, bad[i][1]) != NULL, "%s: '%s' lacks '%s'",
                  bad[i][0], err, bad[i][1]);
  }
}
END_TEST

START_TEST(test_error_policy_refuses_violations)
{
  struct nbd_ctx *top = pol_open("blocksize_policy blocksize-minimum=512 "
                                 "blocksize-maximum=64k "
                                 "blocksize-error-policy=error");

  ck_assert_int_eq(top->block_advisory, 0);
  ck_assert_int_eq(next_pread(top, pol_buf, 100, 0, 0), -EINVAL);
  ck_assert_int_eq(next_pwrite(top, pol_buf, 512, 100, 0), -EINVAL);
  ck_assert_int_eq(next_trim(top, 100, 512, 0), -EINVAL);
  ck_assert_int_eq(next_zero(top, 512, 1, 0), -EINVAL);
  ck_assert_int_eq(next_pread(top, pol_buf, 65536 + 512, 0, 0), -EINVAL);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_int_eq(next_pread(top, pol_buf, 1024, 512, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 512+1024 flags=0");
}
END_TEST

START_TEST(test_allow_policy_passes_violations)
{
  struct nbd_ctx *top = pol_open("blocksize_policy blocksize-minimum=512 "
                                 "blocksize-maximum=4k");

  ck_assert_int_eq(top->block_advisory, 1);
  ck_assert_int_eq(next_pread(top, pol_buf, 100, 1, 0), 0);
  ck_assert_int_eq(next_pwrite(top, pol_buf, 8192, 3, 0), 0);
  ck_assert_int_eq(next_trim(top, 1, 7, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 1+100 flags=0; "
                   "pwrite 3+8192 flags=0; trim 7+1 flags=0");
}
END_TEST

/* The layer below keeps its own limits: allow only lifts the filter's. */
START_TEST(test_allow_keeps_limits_below)
{
  struct nbd_ctx *top;

  pol_caps.min_block = pol_caps.pref_block = 4096;
  pol_caps.max_block = 0xffffffffu;
  top = pol_open("blocksize_policy blocksize-minimum=512");
  pol_assert_sizes(top, 512, 4096, 0xffffffffu);
  ck_assert_int_eq(next_pread(top, pol_buf, 512, 512, 0), -EINVAL);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

/* A filter above that answers block_size with the same sizes
 * (PASSTHROUGH) keeps them advisory; offset over it still serves
 * unaligned requests under allow. */
START_TEST(test_passthrough_above_keeps_advisory)
{
  struct nbd_ctx *top;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "offset"))
    return;
  top = pol_open("offset offset=0 | blocksize_policy blocksize-minimum=512");
  ck_assert_int_eq(top->block_advisory, 1);
  ck_assert_int_eq(next_pread(top, pol_buf, 10, 3, 0), 0);
  testlib_stack_free(&pol_s);
  top = pol_open("tracer label=t | blocksize_policy blocksize-minimum=512 "
                 "blocksize-error-policy=error");
  ck_assert_int_eq(top->block_advisory, 0);
  ck_assert_int_eq(next_pread(top, pol_buf, 10, 3, 0), -EINVAL);
}
END_TEST

static TCase *
pol_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, pol_setup, pol_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
blocksize_policy_suite(void)
{
  Suite *s = suite_create("blocksize_policy");

  if (!testlib_require_layer(NBD_LAYER_FILTER, "blocksize_policy"))
    return s;
  tcase_add_test(pol_tcase(s, "advertises the keys given"),
                 test_advertises_keys_given);
  tcase_add_test(pol_tcase(s, "defaults without constraints below"),
                 test_defaults_without_constraints_below);
  tcase_add_test(pol_tcase(s, "defaults from below"),
                 test_defaults_from_below);
  tcase_add_test(pol_tcase(s, "default preferred within the maximum"),
                 test_default_preferred_within_maximum);
  tcase_add_test(pol_tcase(s, "bad keys refused"), test_bad_keys_refused);
  tcase_add_test(pol_tcase(s, "error policy refuses violations"),
                 test_error_policy_refuses_violations);
  tcase_add_test(pol_tcase(s, "allow policy passes violations"),
                 test_allow_policy_passes_violations);
  tcase_add_test(pol_tcase(s, "allow keeps the limits below"),
                 test_allow_keeps_limits_below);
  tcase_add_test(pol_tcase(s, "pass-through above keeps advisory"),
                 test_passthrough_above_keeps_advisory);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(blocksize_policy_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
