/* Unit tests for backends/pattern.c: each 8-byte word is its own offset,
 * big-endian, from any starting byte; the disk is read-only; the size is
 * checked at setup.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "testlib.h"

#define GEN_NAME "pattern"
/* ---- helpers ------------------------------------------------------------ */

static struct nbd_export *gen_exp;
static struct nbd_ctx *gen_ctx;

/* A NAME export with params "k=v k=v", set up; NULL with err filled when
 * a key or the setup refuses. */
static struct nbd_export *
gen_export(const char *params, char *err, size_t errlen)
{
  const struct nbd_layer_ops *ops = registry_find(NBD_LAYER_BACKEND, GEN_NAME);
  char *copy = strdup(params), *tok, *save = NULL;
  struct nbd_layer *l;
  struct nbd_export *exp;

  ck_assert_ptr_nonnull(ops);
  ck_assert_ptr_nonnull(copy);
  l = engine_layer_new(ops, "");
  ck_assert_ptr_nonnull(l);
  for (tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
    char *eq = strchr(tok, '=');

    ck_assert_ptr_nonnull(eq);
    *eq = '\0';
    if (params_set(l, tok, eq + 1, err, errlen) == -1)
      goto fail;
  }
  if (engine_layer_setup(l, err, errlen) == -1)
    goto fail;
  free(copy);
  exp = engine_export_new("");
  ck_assert_ptr_nonnull(exp);
  engine_export_push(exp, l);
  ck_assert_int_eq(engine_export_finish(exp, err, errlen), 0);
  return exp;
fail:
  free(copy);
  engine_layer_free(l);
  return NULL;
}

static struct nbd_ctx *
gen_open(const char *params, int readonly)
{
  char err[256] = "";

  gen_exp = gen_export(params, err, sizeof err);
  ck_assert_msg(gen_exp != NULL, "setup failed: %s", err);
  gen_ctx = engine_open(gen_exp, readonly, NULL, err, sizeof err);
  ck_assert_msg(gen_ctx != NULL, "open failed: %s", err);
  return gen_ctx;
}

static void
gen_teardown(void)
{
  if (gen_ctx)
    engine_close(gen_ctx);
  engine_export_free(gen_exp);
  gen_ctx = NULL;
  gen_exp = NULL;
}

/* The setup error of params, "" when it was accepted. */
static const char *
gen_refused(const char *params)
{
  static char err[256];
  struct nbd_export *exp;

  err[0] = '\0';
  exp = gen_export(params, err, sizeof err);
  if (exp) {
    engine_export_free(exp);
    return "";
  }
  return err;
}

static void
gen_hex(const unsigned char *b, size_t n, char *out)
{
  size_t i;

  for (i = 0; i < n; i++)
    sprintf(out + 2 * i, "%02x", b[i]);
}

START_TEST(test_words_hold_their_offset_from_any_start)
{
  struct nbd_ctx *c = gen_open("size=64", 1);
  unsigned char b[24];
  char hex[60];

  /* nbdkit 1.32.5: pattern size=64, 24 bytes at 13 */
  ck_assert_int_eq(next_pread(c, b, 24, 13, 0), 0);
  gen_hex(b, 24, hex);
  ck_assert_str_eq(hex, "000008000000000000001000000000000000180000000000");
  ck_assert_int_eq(next_pread(c, b, 3, 61, 0), 0);
  ck_assert_uint_eq(b[2], 0x38);
  gen_teardown();
}
END_TEST

START_TEST(test_is_read_only_with_no_extents)
{
  struct nbd_ctx *c = gen_open("size=1M", 0);
  unsigned char b[8] = { 0 };

  ck_assert_int_eq(c->can_write, 0);
  ck_assert_int_eq(c->can_extents, 0);
  ck_assert_int_eq(c->can_cache, NBD_CACHE_NATIVE);
  ck_assert_int_eq(next_pwrite(c, b, 8, 0, 0), -EPERM);
  gen_teardown();
}
END_TEST

START_TEST(test_size_is_checked)
{
  ck_assert_str_eq(gen_refused("size=0"), "");
  ck_assert_ptr_nonnull(strstr(gen_refused("size=8E"), "0 to 2^63-1"));
  ck_assert_str_ne(gen_refused("size=-1"), "");
}
END_TEST

static Suite *
pattern_suite(void)
{
  Suite *s = suite_create("pattern");
  TCase *tc = tcase_create("pattern");

  if (!testlib_require_layer(NBD_LAYER_BACKEND, "pattern"))
    return s;
  tcase_add_test(tc, test_words_hold_their_offset_from_any_start);
  tcase_add_test(tc, test_is_read_only_with_no_extents);
  tcase_add_test(tc, test_size_is_checked);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(pattern_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
