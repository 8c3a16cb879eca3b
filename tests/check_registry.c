/* Unit tests for src/registry.c: the linker-section registry holds exactly
 * the filters and backends the build selected, sorted, each findable by
 * kind and name, and --list prints every one with its parameters.
 *
 * The expected names come from two places: modules_gen.h (what CMake
 * wrote) and, when ctest runs this, NBD_EXPECT_FILTERS/NBD_EXPECT_BACKENDS
 * (comma lists straight from the CMake selection), so a wrong generated
 * header cannot hide a wrong link.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "modules_gen.h"

static const char *const registry_selected[2][64] = {
  [NBD_LAYER_FILTER] = { NBD_SELECTED_FILTERS NULL },
  [NBD_LAYER_BACKEND] = { NBD_SELECTED_BACKENDS NULL },
};

static int
registry_is_selected(enum nbd_layer_kind kind, const char *name)
{
  const char *const *p;

  for (p = registry_selected[kind]; *p; p++)
    if (strcmp(*p, name) == 0)
      return 1;
  return 0;
}

START_TEST(test_self_check_passes)
{
  char err[256] = "";

  ck_assert_msg(registry_self_check(err, sizeof err) == 0, "%s", err);
}
END_TEST

START_TEST(test_linked_set_equals_generated_selection)
{
  const struct nbd_layer_ops *const *v;
  size_t i, n, want;
  int kind;

  for (kind = NBD_LAYER_FILTER; kind <= NBD_LAYER_BACKEND; kind++) {
    n = registry_list(kind, &v);
    for (want = 0; registry_selected[kind][want]; want++)
      ck_assert_msg(registry_find(kind, registry_selected[kind][want]),
                    "%s not linked", registry_selected[kind][want]);
    ck_assert_uint_eq(n, want);
    for (i = 0; i < n; i++)
      ck_assert_msg(registry_is_selected(kind, v[i]->name),
                    "%s linked but not selected", v[i]->name);
  }
}
END_TEST

static int
registry_strcmp(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "b,a" -> "a,b": the environment lists are in selection order. */
static char *
registry_sorted_csv(const char *csv)
{
  char *copy = strdup(csv), *names[256], *save = NULL, *t, *out;
  size_t n = 0, i, len = strlen(csv) + 2;

  ck_assert_ptr_nonnull(copy);
  for (t = strtok_r(copy, ",", &save); t && n < 256;
       t = strtok_r(NULL, ",", &save))
    names[n++] = t;
  qsort(names, n, sizeof names[0], registry_strcmp);
  out = calloc(1, len);
  ck_assert_ptr_nonnull(out);
  for (i = 0; i < n; i++)
    snprintf(out + strlen(out), len - strlen(out), "%s%s", i ? "," : "",
             names[i]);
  free(copy);
  return out;
}

static void
registry_assert_env(enum nbd_layer_kind kind, const char *var)
{
  const struct nbd_layer_ops *const *v;
  size_t i, n = registry_list(kind, &v);
  char got[4096] = "";
  char *want = registry_sorted_csv(getenv(var));

  for (i = 0; i < n; i++)
    snprintf(got + strlen(got), sizeof got - strlen(got), "%s%s",
             i ? "," : "", v[i]->name);
  ck_assert_str_eq(got, want);
  free(want);
}

/* Only registered when ctest provides the variables (tests/CMakeLists.txt). */
START_TEST(test_linked_set_equals_cmake_selection)
{
  registry_assert_env(NBD_LAYER_FILTER, "NBD_EXPECT_FILTERS");
  registry_assert_env(NBD_LAYER_BACKEND, "NBD_EXPECT_BACKENDS");
}
END_TEST

START_TEST(test_offset_filter_found)
{
  const struct nbd_layer_ops *o = registry_find(NBD_LAYER_FILTER, "offset");

  ck_assert_ptr_nonnull(o);
  ck_assert_str_eq(o->name, "offset");
  ck_assert_int_eq(o->kind, NBD_LAYER_FILTER);
}
END_TEST

START_TEST(test_null_backend_found)
{
  const struct nbd_layer_ops *o = registry_find(NBD_LAYER_BACKEND, "null");

  ck_assert_ptr_nonnull(o);
  ck_assert_str_eq(o->name, "null");
  ck_assert_int_eq(o->kind, NBD_LAYER_BACKEND);
}
END_TEST

START_TEST(test_kinds_kept_apart)
{
  ck_assert_ptr_null(registry_find(NBD_LAYER_BACKEND, "offset"));
  ck_assert_ptr_null(registry_find(NBD_LAYER_FILTER, "null"));
}
END_TEST

START_TEST(test_unknown_names_not_found)
{
  ck_assert_ptr_null(registry_find(NBD_LAYER_FILTER, "no-such-filter"));
  ck_assert_ptr_null(registry_find(NBD_LAYER_BACKEND, ""));
}
END_TEST

/* testlib builds its layers by hand precisely so they stay out. */
START_TEST(test_test_layers_not_registered)
{
  ck_assert_ptr_null(registry_find(NBD_LAYER_BACKEND, "recorder"));
  ck_assert_ptr_null(registry_find(NBD_LAYER_FILTER, "tracer"));
}
END_TEST

START_TEST(test_lists_sorted_by_name_without_duplicates)
{
  const struct nbd_layer_ops *const *v;
  size_t i, n;
  int kind;

  for (kind = NBD_LAYER_FILTER; kind <= NBD_LAYER_BACKEND; kind++) {
    n = registry_list(kind, &v);
    for (i = 0; i + 1 < n; i++)
      ck_assert_msg(strcmp(v[i]->name, v[i + 1]->name) < 0,
                    "%s listed before %s", v[i]->name, v[i + 1]->name);
  }
}
END_TEST

START_TEST(test_each_list_holds_only_its_kind)
{
  const struct nbd_layer_ops *const *v;
  size_t i, n;
  int kind;

  for (kind = NBD_LAYER_FILTER; kind <= NBD_LAYER_BACKEND; kind++) {
    n = registry_list(kind, &v);
    for (i = 0; i < n; i++) {
      ck_assert_msg((int)v[i]->kind == kind, "%s in the wrong list",
                    v[i]->name);
      ck_assert_msg(v[i]->description && *v[i]->description,
                    "%s has no description for --list", v[i]->name);
    }
  }
}
END_TEST

START_TEST(test_print_shows_every_layer_and_param)
{
  const struct nbd_layer_ops *const *v;
  const struct nbd_param *p;
  char *text = NULL, want[256];
  size_t len = 0, i, n;
  FILE *fp = open_memstream(&text, &len);
  int kind;

  ck_assert_ptr_nonnull(fp);
  registry_print(fp);
  fclose(fp);
  for (kind = NBD_LAYER_FILTER; kind <= NBD_LAYER_BACKEND; kind++) {
    n = registry_list(kind, &v);
    for (i = 0; i < n; i++) {
      snprintf(want, sizeof want, "  %s ", v[i]->name);
      ck_assert_msg(strstr(text, want), "--list lacks '%s'", v[i]->name);
      for (p = v[i]->params; p && p->name; p++) {
        snprintf(want, sizeof want, " %s=<%s>", p->name,
                 params_type_name(p->type));
        ck_assert_msg(strstr(text, want), "--list lacks %s's '%s'",
                      v[i]->name, want);
      }
    }
  }
  ck_assert_ptr_nonnull(strstr(text, " offset=<size> default 0"));
  free(text);
}
END_TEST

static Suite *
registry_suite(void)
{
  Suite *s = suite_create("registry");
  TCase *tc = tcase_create("registry");

  tcase_add_test(tc, test_self_check_passes);
  tcase_add_test(tc, test_linked_set_equals_generated_selection);
  if (getenv("NBD_EXPECT_FILTERS") && getenv("NBD_EXPECT_BACKENDS"))
    tcase_add_test(tc, test_linked_set_equals_cmake_selection);
  /* A build may leave offset or null out; then these have nothing to find. */
  if (registry_is_selected(NBD_LAYER_FILTER, "offset")) {
    tcase_add_test(tc, test_offset_filter_found);
    tcase_add_test(tc, test_print_shows_every_layer_and_param);
  }
  if (registry_is_selected(NBD_LAYER_BACKEND, "null"))
    tcase_add_test(tc, test_null_backend_found);
  if (registry_is_selected(NBD_LAYER_FILTER, "offset") &&
      registry_is_selected(NBD_LAYER_BACKEND, "null"))
    tcase_add_test(tc, test_kinds_kept_apart);
  tcase_add_test(tc, test_unknown_names_not_found);
  tcase_add_test(tc, test_test_layers_not_registered);
  tcase_add_test(tc, test_lists_sorted_by_name_without_duplicates);
  tcase_add_test(tc, test_each_list_holds_only_its_kind);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(registry_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
