/* Unit tests for filters/exportname.c over the recording backend (a
 * one-disk stack, whose list is its config name "test"): each
 * exportname-list mode, each exportdesc mode including a script, and
 * exportname-strict at open; bad values are refused.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testlib.h"

static struct testlib_caps en_caps;
static struct testlib_stack en_s;
static struct nbd_exports en_list;

static void
en_setup(void)
{
  testlib_caps_default(&en_caps);
  memset(&en_list, 0, sizeof en_list);
}

static void
en_teardown(void)
{
  nbd_exports_clear(&en_list);
  testlib_stack_free(&en_s);
}

/* The stack's list as "name=desc,name=desc" (desc "-" when NULL), and
 * what engine_list_exports returned. */
static int
en_names(const char *filters, char *out, size_t len)
{
  size_t i, n = 0;
  int r;

  ck_assert_int_eq(testlib_stack_new(&en_s, filters, &en_caps), 0);
  r = engine_list_exports(en_s.exp, NULL, &en_list);
  out[0] = '\0';
  for (i = 0; i < en_list.n; i++)
    n += (size_t)snprintf(out + n, len - n, "%s%s=%s", i ? "," : "",
                          en_list.v[i].name, en_list.v[i].description ?
                          en_list.v[i].description : "-");
  nbd_exports_clear(&en_list);
  testlib_stack_free(&en_s);
  return r;
}

START_TEST(test_list_modes)
{
  char got[512];

  ck_assert_int_eq(en_names("exportname", got, sizeof got), 0);
  ck_assert_int_eq(en_names("exportname exportname-list=keep", got,
                            sizeof got), 0);
  ck_assert_int_eq(en_names("exportname exportname-list=error", got,
                            sizeof got), -EPERM);
  ck_assert_int_eq(en_names("exportname exportname-list=empty", got,
                            sizeof got), 1);
  ck_assert_str_eq(got, "");
  ck_assert_int_eq(en_names("exportname exportname-list=defaultonly", got,
                            sizeof got), 1);
  ck_assert_str_eq(got, "test=-");
  ck_assert_int_eq(en_names("exportname exportname-list=explicit "
                            "exportname=b exportname=a exportname=", got,
                            sizeof got), 1);
  ck_assert_str_eq(got, "b=-,a=-,=-");
}
END_TEST

START_TEST(test_descriptions)
{
  char got[512], script[64], key[256];
  FILE *f;

  ck_assert_int_eq(en_names("exportname exportdesc=fixed:hello", got,
                            sizeof got), 1);
  ck_assert_str_eq(got, "test=hello");
  ck_assert_int_eq(en_names("exportname exportdesc=none "
                            "exportname-list=explicit exportname=x", got,
                            sizeof got), 1);
  ck_assert_str_eq(got, "x=");
  /* The script sees $name; only its first line counts. */
  snprintf(script, sizeof script, "/tmp/check_exportname.%d", (int)getpid());
  f = fopen(script, "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f, "echo \"size of $name\"\necho second line\n");
  fclose(f);
  ck_assert_int_eq(chmod(script, 0755), 0);
  snprintf(key, sizeof key, "exportname exportname-list=explicit "
           "exportname=disk1 exportname=two exportdesc=script:%s", script);
  ck_assert_int_eq(en_names(key, got, sizeof got), 1);
  ck_assert_str_eq(got, "disk1=size of disk1,two=size of two");
  unlink(script);
  /* A failing script: no description. */
  ck_assert_int_eq(en_names("exportname exportname-list=explicit "
                            "exportname=a exportdesc=script:false", got,
                            sizeof got), 1);
  ck_assert_str_eq(got, "a=");
}
END_TEST

START_TEST(test_strict)
{
  ck_assert_int_eq(testlib_stack_new(&en_s, "exportname exportname=a "
                                     "exportname-strict=true", &en_caps), 0);
  testlib_stderr_begin();
  ck_assert_int_eq(testlib_stack_open(&en_s, 0), -1);
  free(testlib_stderr_end());
  testlib_stack_free(&en_s);
  /* Outside a connection the name is "": listing it lets it open. */
  testlib_stack(&en_s, "exportname exportname=a exportname= "
                "exportname-strict=true", &en_caps);
}
END_TEST

START_TEST(test_default_export)
{
  struct nbd_conn_info info;
  struct nbd_ctx *top;
  char got[512];

  memset(&info, 0, sizeof info);
  info.export_name = "";
  ck_assert_int_eq(testlib_stack_new(&en_s, "exportname default-export=disk2 "
                                     "| tracer", &en_caps), 0);
  top = engine_open(en_s.exp, 0, &info, en_s.err, sizeof en_s.err);
  ck_assert_ptr_nonnull(top);
  /* The client's name stays ""; the layers below open with disk2. */
  ck_assert_str_eq(nbd_conn_info(top)->export_name, "");
  ck_assert_str_eq(nbd_conn_info(top->next)->export_name, "disk2");
  ck_assert_str_eq(nbd_conn_info(top->next->next)->export_name, "disk2");
  engine_close(top);
  /* Any other name is left alone. */
  info.export_name = "other";
  top = engine_open(en_s.exp, 0, &info, en_s.err, sizeof en_s.err);
  ck_assert_ptr_nonnull(top);
  ck_assert_ptr_eq(nbd_conn_info(top->next), &info);
  engine_close(top);
  testlib_stack_free(&en_s);
  /* defaultonly lists it; strict checks the name asked for, before
   * default-export (as nbdkit): "" only when "" is listed itself. */
  ck_assert_int_eq(en_names("exportname exportname-list=defaultonly "
                            "default-export=disk2", got, sizeof got), 1);
  ck_assert_str_eq(got, "disk2=-");
  ck_assert_int_eq(testlib_stack_new(&en_s, "exportname default-export=d "
                                     "exportname=d exportname-strict=true",
                                     &en_caps), 0);
  info.export_name = "";
  top = engine_open(en_s.exp, 0, &info, en_s.err, sizeof en_s.err);
  ck_assert_ptr_null(top);
  info.export_name = "d";
  top = engine_open(en_s.exp, 0, &info, en_s.err, sizeof en_s.err);
  ck_assert_ptr_nonnull(top);
  engine_close(top);
  testlib_stack_free(&en_s);
  ck_assert_int_eq(testlib_stack_new(&en_s, "exportname default-export=d "
                                     "exportname=d exportname= "
                                     "exportname-strict=true", &en_caps), 0);
  info.export_name = "";
  top = engine_open(en_s.exp, 0, &info, en_s.err, sizeof en_s.err);
  ck_assert_ptr_nonnull(top);
  ck_assert_str_eq(nbd_conn_info(top->next)->export_name, "d");
  engine_close(top);
}
END_TEST

START_TEST(test_bad_values_refused)
{
  char err[256];

  ck_assert_ptr_null(testlib_filter_new("exportname", "exportdesc=fancy", err,
                                        sizeof err));
  ck_assert_ptr_nonnull(strstr(err, "exportdesc"));
  ck_assert_ptr_null(testlib_filter_new("exportname", "exportdesc=script:",
                                        err, sizeof err));
  ck_assert_ptr_null(testlib_filter_new("exportname", "exportname-list=all",
                                        err, sizeof err));
  ck_assert_ptr_null(testlib_filter_new("exportname",
                                        "exportname-strict=true", err,
                                        sizeof err));
}
END_TEST

static Suite *
en_suite(void)
{
  Suite *s = suite_create("exportname");
  TCase *tc = tcase_create("exportname");

  if (!testlib_require_layer(NBD_LAYER_FILTER, "exportname"))
    return s;
  tcase_add_checked_fixture(tc, en_setup, en_teardown);
  tcase_add_test(tc, test_list_modes);
  tcase_add_test(tc, test_descriptions);
  tcase_add_test(tc, test_strict);
  tcase_add_test(tc, test_default_export);
  tcase_add_test(tc, test_bad_values_refused);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(en_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
