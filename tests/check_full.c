/* Unit tests for backends/full.c: reads are zeros, writes, trims and
 * zeros fail with ENOSPC (a fast zero with ENOTSUP), extents are one
 * hole, size is required.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "testlib.h"

#define GEN_NAME "full"
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

START_TEST(test_reads_zeros_and_reports_a_hole)
{
  struct nbd_ctx *c = gen_open("size=1M", 0);
  unsigned char b[4096];
  struct nbd_extents *e = nbd_extents_new(4096, 8192);

  memset(b, 0xaa, sizeof b);
  ck_assert_int_eq(next_pread(c, b, sizeof b, 1000, 0), 0);
  ck_assert(nbd_is_zero(b, sizeof b));
  ck_assert_int_eq(next_extents(c, 4096, 4096, 0, e), 0);
  ck_assert_uint_eq(e->n, 1);
  ck_assert_uint_eq(e->v[0].offset, 4096);
  ck_assert_uint_eq(e->v[0].type, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  nbd_extents_free(e);
  gen_teardown();
}
END_TEST

START_TEST(test_every_write_fails_with_enospc)
{
  struct nbd_ctx *c = gen_open("size=1M", 0);
  unsigned char b[512] = { 0 };

  ck_assert_int_eq(c->can_write, 1);
  ck_assert_int_eq(c->can_flush, 0);
  ck_assert_int_eq(next_pwrite(c, b, sizeof b, 0, 0), -ENOSPC);
  ck_assert_int_eq(next_trim(c, 512, 0, 0), -ENOSPC);
  ck_assert_int_eq(next_zero(c, 512, 0, 0), -ENOSPC);
  ck_assert_int_eq(next_zero(c, 512, 0, NBD_CMD_FLAG_FAST_ZERO), -ENOTSUP);
  gen_teardown();
}
END_TEST

START_TEST(test_size_is_required_and_checked)
{
  ck_assert_str_ne(gen_refused(""), "");
  ck_assert_ptr_nonnull(strstr(gen_refused("size=8E"), "0 to 2^63-1"));
  ck_assert_str_eq(gen_refused("size=0"), "");
}
END_TEST

static Suite *
full_suite(void)
{
  Suite *s = suite_create("full");
  TCase *tc = tcase_create("full");

  if (!testlib_require_layer(NBD_LAYER_BACKEND, "full"))
    return s;
  tcase_add_test(tc, test_reads_zeros_and_reports_a_hole);
  tcase_add_test(tc, test_every_write_fails_with_enospc);
  tcase_add_test(tc, test_size_is_required_and_checked);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(full_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
