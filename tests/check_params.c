/* Tests of the typed parameters (params.c): the parsers of sizes, integers,
 * booleans and durations, and params_set / params_finish / params_free on
 * a layer whose table has one key of every type.  The layer is not
 * registered: params.c needs only its ops.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "params.h"

struct fake_conf {
  uint64_t size, count, delay;
  int on, mode;
  char *name, *path;
};

static const char *const fake_modes[] = { "fast", "slow", "Odd", NULL };

static const struct nbd_param fake_params[] = {
  { "size", NBD_PARAM_SIZE, offsetof(struct fake_conf, size), NULL,
    "bytes", NULL, 1 },
  { "count", NBD_PARAM_UINT, offsetof(struct fake_conf, count), "7",
    "a number", NULL, 0 },
  { "delay", NBD_PARAM_DURATION, offsetof(struct fake_conf, delay), "2ms",
    "a delay", NULL, 0 },
  { "on", NBD_PARAM_BOOL, offsetof(struct fake_conf, on), "yes",
    "a switch", NULL, 0 },
  { "mode", NBD_PARAM_ENUM, offsetof(struct fake_conf, mode), "slow",
    "how", fake_modes, 0 },
  { "name", NBD_PARAM_STRING, offsetof(struct fake_conf, name), "anon",
    "a name", NULL, 0 },
  { "path", NBD_PARAM_PATH, offsetof(struct fake_conf, path), NULL,
    "a file", NULL, 0 },
  NBD_PARAM_END
};

static const struct nbd_layer_ops fake_ops = {
  .name = "fake",
  .kind = NBD_LAYER_FILTER,
  .params = fake_params,
  .conf_size = sizeof(struct fake_conf),
};

static const struct nbd_param empty_params[] = { NBD_PARAM_END };

static const struct nbd_layer_ops bare_ops = {
  .name = "bare",
  .kind = NBD_LAYER_BACKEND,
  .params = empty_params,
};

static struct nbd_layer *layer;
static char err[256];

static const struct fake_conf *
conf(void)
{
  return layer->conf;
}

static void
setup(void)
{
  layer = engine_layer_new(&fake_ops, "x");
  ck_assert_ptr_nonnull(layer);
  memset(err, 0, sizeof err);
}

static void
teardown(void)
{
  engine_layer_free(layer);
  layer = NULL;
}

static uint64_t
size_ok(const char *s)
{
  uint64_t v = 12345;
  ck_assert_msg(params_parse_size(s, &v) == 0, "size '%s' rejected", s);
  return v;
}

static void
size_bad(const char *s)
{
  uint64_t v = 12345;
  ck_assert_msg(params_parse_size(s, &v) == -1, "size '%s' accepted as %llu",
                s, (unsigned long long)v);
  ck_assert_uint_eq(v, 12345);
}

START_TEST(test_sizes)
{
  ck_assert_uint_eq(size_ok("0"), 0);
  ck_assert_uint_eq(size_ok("512"), 512);
  ck_assert_uint_eq(size_ok("4k"), 4096);
  ck_assert_uint_eq(size_ok("4K"), 4096);
  ck_assert_uint_eq(size_ok("4KiB"), 4096);
  ck_assert_uint_eq(size_ok("4kb"), 4096);
  ck_assert_uint_eq(size_ok("7b"), 7);
  ck_assert_uint_eq(size_ok("1M"), 1 << 20);
  ck_assert_uint_eq(size_ok("2G"), 2ull << 30);
  ck_assert_uint_eq(size_ok("1.5G"), 3ull << 29);
  ck_assert_uint_eq(size_ok("1.5k"), 1536);
  ck_assert_uint_eq(size_ok("0.5k"), 512);
  ck_assert_uint_eq(size_ok("1.0"), 1);
  ck_assert_uint_eq(size_ok("1T"), 1ull << 40);
  ck_assert_uint_eq(size_ok("1P"), 1ull << 50);
  ck_assert_uint_eq(size_ok("1E"), 1ull << 60);
  ck_assert_uint_eq(size_ok("15E"), 15ull << 60);
  ck_assert_uint_eq(size_ok("15.5E"), 31ull << 59);
  ck_assert_uint_eq(size_ok("18446744073709551615"), UINT64_MAX);
  /* nbdkit_parse_size's sectors of 512 bytes */
  ck_assert_uint_eq(size_ok("1s"), 512);
  ck_assert_uint_eq(size_ok("2048S"), 1 << 20);
  ck_assert_uint_eq(size_ok("1.5s"), 768);
  ck_assert_uint_eq(size_ok("1.75k"), 1792);
  ck_assert_uint_eq(size_ok("1.0009765625k"), 1025);
}
END_TEST

START_TEST(test_bad_sizes)
{
  static const char *const bad[] = {
    "", "16E", "17E", "16.0E", "18446744073709551616", "-1", "-0", "+1",
    " 1", "1 ", "12x", "1.5", "1.", ".5k", "1.G", "1.5e3G", "1e3", "0x10",
    "1kk", "1kib2", "1Bib", "k", "1,5G", "inf", "nan", "1M\n",
    "1sb", "1sib", "s", "36028797018963968s",
    /* fractions that are no whole number of bytes */
    "1.3s", "1.0001k", "1.1k", "0.2G",
  };
  size_t i;

  for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
    size_bad(bad[i]);
}
END_TEST

START_TEST(test_uints)
{
  static const char *const bad[] = {
    "", "-1", "+1", " 1", "1 ", "1a", "0x", "0xg", "18446744073709551616",
    "1.0", "1k",
  };
  uint64_t v;
  size_t i;

  ck_assert_int_eq(params_parse_uint("0", &v), 0);
  ck_assert_uint_eq(v, 0);
  ck_assert_int_eq(params_parse_uint("42", &v), 0);
  ck_assert_uint_eq(v, 42);
  ck_assert_int_eq(params_parse_uint("0x10", &v), 0);
  ck_assert_uint_eq(v, 16);
  ck_assert_int_eq(params_parse_uint("0XfF", &v), 0);
  ck_assert_uint_eq(v, 255);
  ck_assert_int_eq(params_parse_uint("010", &v), 0);   /* octal, as nbdkit */
  ck_assert_uint_eq(v, 8);
  ck_assert_int_eq(params_parse_uint("00", &v), 0);
  ck_assert_uint_eq(v, 0);
  ck_assert_int_eq(params_parse_uint("08", &v), -1);
  ck_assert_int_eq(params_parse_uint("18446744073709551615", &v), 0);
  ck_assert_uint_eq(v, UINT64_MAX);
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(params_parse_uint(bad[i], &v) == -1, "uint '%s' accepted",
                  bad[i]);
}
END_TEST

START_TEST(test_bools)
{
  static const char *const yes[] = { "1", "yes", "YES", "true", "True", "on",
                                     "y", "Y" };
  static const char *const no[] = { "0", "no", "No", "false", "FALSE", "off",
                                    "n" };
  static const char *const bad[] = { "", "maybe", "2", "yes ", " no", "ja",
                                     "enabled" };
  size_t i;
  int b;

  for (i = 0; i < sizeof yes / sizeof yes[0]; i++) {
    b = -1;
    ck_assert_msg(params_parse_bool(yes[i], &b) == 0 && b == 1, "%s", yes[i]);
  }
  for (i = 0; i < sizeof no / sizeof no[0]; i++) {
    b = -1;
    ck_assert_msg(params_parse_bool(no[i], &b) == 0 && b == 0, "%s", no[i]);
  }
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(params_parse_bool(bad[i], &b) == -1, "bool '%s' accepted",
                  bad[i]);
}
END_TEST

START_TEST(test_durations)
{
  static const struct { const char *s; uint64_t ns; } good[] = {
    { "0", 0 }, { "10ns", 10 }, { "5us", 5000 }, { "2ms", 2000000 },
    { "1s", 1000000000 }, { "1.5s", 1500000000 }, { "2", 2000000000 },
    { "0.25", 250000000 }, { "3m", 180000000000ull },
    { "1min", 60000000000ull }, { "1h", 3600000000000ull },
    { "1.5ms", 1500000 },
  };
  static const char *const bad[] = {
    "", "-1s", "+1s", " 1s", "1 s", "1x", "1S", "1e3s", "inf", "nan",
    "0x10s", ".5s", "1.s", "1d", "99999999999999999999s", "20000000000s",
  };
  uint64_t v;
  size_t i;

  for (i = 0; i < sizeof good / sizeof good[0]; i++) {
    ck_assert_msg(params_parse_duration(good[i].s, &v) == 0, "'%s' rejected",
                  good[i].s);
    ck_assert_msg(v == good[i].ns, "'%s' = %llu", good[i].s,
                  (unsigned long long)v);
  }
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(params_parse_duration(bad[i], &v) == -1,
                  "duration '%s' accepted", bad[i]);
}
END_TEST

START_TEST(test_set_types)
{
  ck_assert_int_eq(params_set(layer, "size", "1M", err, sizeof err), 0);
  ck_assert_int_eq(params_set(layer, "count", "0x20", err, sizeof err), 0);
  ck_assert_int_eq(params_set(layer, "delay", "1.5s", err, sizeof err), 0);
  ck_assert_int_eq(params_set(layer, "on", "off", err, sizeof err), 0);
  ck_assert_int_eq(params_set(layer, "mode", "FAST", err, sizeof err), 0);
  ck_assert_int_eq(params_set(layer, "name", "", err, sizeof err), 0);
  ck_assert_int_eq(params_set(layer, "path", "/a b", err, sizeof err), 0);
  ck_assert_uint_eq(conf()->size, 1 << 20);
  ck_assert_uint_eq(conf()->count, 32);
  ck_assert_uint_eq(conf()->delay, 1500000000);
  ck_assert_int_eq(conf()->on, 0);
  ck_assert_int_eq(conf()->mode, 0);
  ck_assert_str_eq(conf()->name, "");
  ck_assert_str_eq(conf()->path, "/a b");
  ck_assert_int_eq(nbd_layer_param_set(layer, "size"), 1);
  ck_assert_int_eq(nbd_layer_param_set(layer, "nosuch"), 0);
  ck_assert_int_eq(params_finish(layer, err, sizeof err), 0);
  /* Given values are kept by params_finish. */
  ck_assert_int_eq(conf()->on, 0);
  ck_assert_str_eq(conf()->name, "");
}
END_TEST

START_TEST(test_string_replaced)
{
  /* A string set twice frees the first copy (ASan finds a leak if not). */
  ck_assert_int_eq(params_set(layer, "name", "one", err, sizeof err), 0);
  ck_assert_int_eq(params_set(layer, "name", "two", err, sizeof err), 0);
  ck_assert_str_eq(conf()->name, "two");
  params_free(layer);
  ck_assert_ptr_null(conf()->name);
  params_free(layer);
}
END_TEST

START_TEST(test_defaults)
{
  ck_assert_int_eq(params_set(layer, "size", "4k", err, sizeof err), 0);
  ck_assert_int_eq(params_finish(layer, err, sizeof err), 0);
  ck_assert_uint_eq(conf()->count, 7);
  ck_assert_uint_eq(conf()->delay, 2000000);
  ck_assert_int_eq(conf()->on, 1);
  ck_assert_int_eq(conf()->mode, 1);
  ck_assert_str_eq(conf()->name, "anon");
  ck_assert_ptr_null(conf()->path);        /* no default: stays 0 */
  /* A default is not "given". */
  ck_assert_int_eq(nbd_layer_param_set(layer, "count"), 0);
  ck_assert_int_eq(nbd_layer_param_set(layer, "size"), 1);
}
END_TEST

START_TEST(test_required)
{
  ck_assert_int_eq(params_set(layer, "count", "1", err, sizeof err), 0);
  ck_assert_int_eq(params_finish(layer, err, sizeof err), -1);
  ck_assert_str_eq(err, "missing required key 'size'");
}
END_TEST

START_TEST(test_bad_values)
{
  static const struct { const char *key, *value, *msg; } cases[] = {
    { "size", "12x", "size: invalid value '12x' (expected a size such as "
      "4096, 64k, 1M or 2G)" },
    { "size", "-1", "size: invalid value '-1' (expected a size such as "
      "4096, 64k, 1M or 2G)" },
    { "size", "16E", "size: invalid value '16E' (expected a size such as "
      "4096, 64k, 1M or 2G)" },
    { "count", "x", "count: invalid value 'x' (expected a non-negative "
      "integer)" },
    { "delay", "soon", "delay: invalid value 'soon' (expected a duration "
      "such as 10ms, 2s or 1m)" },
    { "on", "maybe", "on: invalid value 'maybe' (expected yes or no)" },
    { "mode", "medium", "mode: invalid value 'medium' (one of: fast slow "
      "Odd)" },
    { "path", "", "path: invalid value '' (expected a non-empty path)" },
  };
  size_t i;

  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ck_assert_int_eq(params_set(layer, cases[i].key, cases[i].value, err,
                                sizeof err), -1);
    ck_assert_str_eq(err, cases[i].msg);
    ck_assert_int_eq(nbd_layer_param_set(layer, cases[i].key), 0);
  }
  ck_assert_int_eq(params_set(layer, "mode", "odd", err, sizeof err), 0);
  ck_assert_int_eq(conf()->mode, 2);
}
END_TEST

START_TEST(test_unknown_key)
{
  struct nbd_layer *bare = engine_layer_new(&bare_ops, "x");

  ck_assert_int_eq(params_set(layer, "rnage", "1", err, sizeof err), -1);
  ck_assert_str_eq(err, "unknown key 'rnage' (known: size, count, delay, on, "
                   "mode, name, path)");
  ck_assert_int_eq(params_set(bare, "size", "1", err, sizeof err), -1);
  ck_assert_str_eq(err, "unknown key 'size' (known: none)");
  engine_layer_free(bare);
}
END_TEST

START_TEST(test_suggest)
{
  char buf[128];

  /* A swap of two neighbours is one edit. */
  ck_assert_str_eq(params_suggest("offste", "offset, range", buf,
                                   sizeof buf), "did you mean 'offset'?; ");
  ck_assert_str_eq(params_suggest("rnage", "offset, range", buf, sizeof buf),
                   "did you mean 'range'?; ");
  /* '-' and '_' are the same; the nearest wins. */
  ck_assert_str_eq(params_suggest("max_conection", "max-handshakes, "
                                  "max-connections", buf, sizeof buf),
                   "did you mean 'max-connections'?; ");
  /* Too far, too short, an exact match, or nothing known: no hint. */
  ck_assert_str_eq(params_suggest("zzzzzz", "offset, range", buf,
                                  sizeof buf), "");
  ck_assert_str_eq(params_suggest("of", "on, offset", buf, sizeof buf), "");
  ck_assert_str_eq(params_suggest("range", "range", buf, sizeof buf), "");
  ck_assert_str_eq(params_suggest("nome", "none", buf, sizeof buf), "");
  ck_assert_str_eq(params_suggest("size", "", buf, sizeof buf), "");
  /* The unknown-key message carries it. */
  ck_assert_int_eq(params_set(layer, "sise", "1", err, sizeof err), -1);
  ck_assert_str_eq(err, "unknown key 'sise' (did you mean 'size'?; known: "
                   "size, count, delay, on, mode, name, path)");
}
END_TEST

/* Messages are cut at errlen, never written past it, even for a key far
 * longer than the buffer on a layer with no keys. */
START_TEST(test_message_truncated)
{
  struct nbd_layer *bare = engine_layer_new(&bare_ops, "x");
  char key[1000], *buf;
  size_t n;

  memset(key, 'k', sizeof key - 1);
  key[sizeof key - 1] = '\0';
  for (n = 1; n < 48; n++) {
    buf = malloc(n);            /* exact size: ASan sees any overrun */
    ck_assert_int_eq(params_set(bare, key, "1", buf, n), -1);
    ck_assert_uint_eq(strlen(buf), n - 1);
    ck_assert_int_eq(params_set(layer, "nosuch", "1", buf, n), -1);
    ck_assert_uint_eq(strlen(buf), n - 1);
    ck_assert_int_eq(params_set(layer, "mode", key, buf, n), -1);
    ck_assert_uint_eq(strlen(buf), n - 1);
    free(buf);
  }
  engine_layer_free(bare);
}
END_TEST

START_TEST(test_type_names)
{
  ck_assert_str_eq(params_type_name(NBD_PARAM_SIZE), "size");
  ck_assert_str_eq(params_type_name(NBD_PARAM_UINT), "uint");
  ck_assert_str_eq(params_type_name(NBD_PARAM_BOOL), "bool");
  ck_assert_str_eq(params_type_name(NBD_PARAM_STRING), "string");
  ck_assert_str_eq(params_type_name(NBD_PARAM_PATH), "path");
  ck_assert_str_eq(params_type_name(NBD_PARAM_DURATION), "duration");
  ck_assert_str_eq(params_type_name(NBD_PARAM_ENUM), "enum");
}
END_TEST

static void
add(Suite *s, const char *name, const TTest *t)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, t);
  suite_add_tcase(s, tc);
}

int
main(void)
{
  Suite *s = suite_create("params");
  SRunner *sr;
  int failed;

  add(s, "parses sizes with binary units and fractions", test_sizes);
  add(s, "rejects bad sizes, overflow and signs", test_bad_sizes);
  add(s, "parses decimal, hex and octal integers, as nbdkit", test_uints);
  add(s, "parses booleans", test_bools);
  add(s, "parses durations", test_durations);
  add(s, "stores every type at its offset", test_set_types);
  add(s, "frees a string set twice", test_string_replaced);
  add(s, "applies defaults to keys not given", test_defaults);
  add(s, "reports a missing required key", test_required);
  add(s, "names key, value and expectation in errors", test_bad_values);
  add(s, "rejects unknown key with list of known keys", test_unknown_key);
  add(s, "suggests the nearest known name", test_suggest);
  add(s, "never writes past the error buffer", test_message_truncated);
  add(s, "names every type", test_type_names);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
