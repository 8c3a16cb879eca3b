/* Unit tests for filters/log.c over the recording backend: the Connect
 * line gives the export and the capabilities of the layer below; each
 * request gives a call line with nbdkit's fields and flags and a result
 * line (return=0, or return=-1 error=NAME); extents list offset, length
 * and type; Preconnect and ListExports have their own ids; Disconnect
 * counts the transactions; strings are shell-quoted; logappend keeps the
 * old file; every line reaches the file by the close; logscript runs a
 * script per event with the line's fields as variables (the extents a
 * bash array), alone or beside logfile, every script done by cleanup,
 * a failing script changes no result; neither key: an inactive filter.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testlib.h"

static struct testlib_caps tl_caps;
static struct testlib_stack tl_s;
static char tl_dir[] = "/tmp/check_log.XXXXXX";
static char tl_file[600];
static char tl_params[800];
static struct nbd_conn_info tl_info;

static void
tl_setup(void)
{
  testlib_caps_default(&tl_caps);
  ck_assert_ptr_nonnull(mkdtemp(tl_dir));
  snprintf(tl_file, sizeof tl_file, "%s/log", tl_dir);
  memset(&tl_info, 0, sizeof tl_info);
  tl_info.id = 42;
  tl_info.family = AF_UNIX;
  tl_info.export_name = "disk 1";
}

static void
tl_teardown(void)
{
  testlib_stack_free(&tl_s);
  unlink(tl_file);
  rmdir(tl_dir);
  memcpy(tl_dir + strlen(tl_dir) - 6, "XXXXXX", 6);
}

/* The file without its timestamps (27 characters a line). */
static char *
tl_read(void)
{
  static char out[65536];
  char line[4096];
  size_t n = 0;
  FILE *f = fopen(tl_file, "r");

  ck_assert_ptr_nonnull(f);
  out[0] = '\0';
  while (fgets(line, sizeof line, f)) {
    ck_assert_msg(strlen(line) > 27 && line[4] == '-' && line[10] == ' ' &&
                  line[19] == '.' && line[26] == ' ', "bad line: %s", line);
    n += (size_t)snprintf(out + n, sizeof out - n, "%s", line + 27);
  }
  fclose(f);
  return out;
}

/* A stack opened as connection 42. */
static void
tl_open(const char *extra)
{
  char err[512];

  snprintf(tl_params, sizeof tl_params, "log logfile=%s %s", tl_file,
           extra);
  ck_assert_msg(testlib_stack_new(&tl_s, tl_params, &tl_caps) == 0, "%s",
                tl_s.err);
  tl_s.top = engine_open(tl_s.exp, 0, &tl_info, err, sizeof err);
  ck_assert_msg(tl_s.top != NULL, "%s", err);
}

static void
tl_close(void)
{
  engine_close(tl_s.top);
  tl_s.top = NULL;
}

START_TEST(test_session_lines)
{
  static unsigned char buf[4096];
  struct nbd_extents *e;
  const char *want =
    "Ready thread_model=3\n"
    "connection=42 Connect export=\"disk 1\" tls=0 size=0x100000 "
    "minsize=0x0 prefsize=0x0 maxsize=0x0 write=1 flush=1 rotational=0 "
    "trim=1 zero=2 fua=2 extents=1 cache=2 fast_zero=1\n"
    "connection=42 Write id=1 offset=0x200 count=0x200 fua=1 ...\n"
    "connection=42 ...Write id=1 return=0\n"
    "connection=42 Read id=2 offset=0x0 count=0x1000 ...\n"
    "connection=42 ...Read id=2 return=0\n"
    "connection=42 Flush id=3 ...\n"
    "connection=42 ...Flush id=3 return=0\n"
    "connection=42 Trim id=4 offset=0x1000 count=0x1000 fua=0 ...\n"
    "connection=42 ...Trim id=4 return=0\n"
    "connection=42 Zero id=5 offset=0x0 count=0x2000 trim=0 fua=1 fast=1 ...\n"
    "connection=42 ...Zero id=5 return=-1 error=ENOSPC\n"
    "connection=42 Cache id=6 offset=0x0 count=0x1000 ...\n"
    "connection=42 ...Cache id=6 return=0\n"
    "connection=42 Extents id=7 offset=0x0 count=0x10000 req_one=1 ...\n"
    "connection=42 ...Extents id=7 extents=(0x0 0x8000 \"\" "
    "0x8000 0x4000 \"hole,zero\" 0xc000 0x4000 \"zero\") return=0\n"
    "connection=42 Disconnect transactions=7\n";

  tl_open("");
  testlib_recorder_map(tl_s.rec, 0, 0x8000, 0);
  testlib_recorder_map(tl_s.rec, 0x8000, 0x4000,
                       NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  testlib_recorder_map(tl_s.rec, 0xc000, 0xf4000, NBD_EXTENT_ZERO);
  tl_s.rec->fail[NBD_METHOD_ZERO] = -ENOSPC;
  ck_assert_int_eq(next_pwrite(tl_s.top, buf, 512, 512, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_pread(tl_s.top, buf, 4096, 0, 0), 0);
  ck_assert_int_eq(next_flush(tl_s.top, 0), 0);
  ck_assert_int_eq(next_trim(tl_s.top, 4096, 4096, 0), 0);
  ck_assert_int_eq(next_zero(tl_s.top, 8192, 0, NBD_CMD_FLAG_FUA |
                             NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO),
                   -ENOSPC);
  ck_assert_int_eq(next_cache(tl_s.top, 4096, 0, 0), 0);
  e = nbd_extents_new(0, 0x10000);
  ck_assert_int_eq(next_extents(tl_s.top, 0x10000, 0, NBD_CMD_FLAG_REQ_ONE,
                                e), 0);
  nbd_extents_free(e);
  tl_close();
  ck_assert_str_eq(tl_read(), want);
}
END_TEST

START_TEST(test_preconnect_and_list)
{
  struct nbd_exports ex = { NULL, 0, 0 };

  tl_open("");
  tl_close();
  ck_assert_int_eq(engine_preconnect(tl_s.exp, &tl_info), 0);
  ck_assert_int_eq(engine_list_exports(tl_s.exp, &tl_info, &ex), 0);
  nbd_exports_clear(&ex);
  tl_info.readonly = 1;         /* the server's -r */
  ck_assert_int_eq(engine_preconnect(tl_s.exp, &tl_info), 0);
  tl_info.readonly = 0;
  tl_s.exp->readonly = 1;       /* the export's own readonly */
  ck_assert_int_eq(engine_preconnect(tl_s.exp, &tl_info), 0);
  tl_s.exp->readonly = 0;
  ck_assert_msg(strstr(tl_read(),
                       "Preconnect id=1 readonly=0 ...\n"
                       "...Preconnect id=1 return=0\n"
                       "ListExports id=1 readonly=0 tls=0 ...\n"
                       "...ListExports id=1 exports=(test) return=0\n"
                       "Preconnect id=2 readonly=1 ...\n"
                       "...Preconnect id=2 return=0\n"
                       "Preconnect id=3 readonly=1 ...\n"
                       "...Preconnect id=3 return=0\n"),
                "%s", tl_read());
}
END_TEST

START_TEST(test_append)
{
  FILE *f = fopen(tl_file, "w");

  ck_assert_ptr_nonnull(f);
  fputs("2026-01-01 00:00:00.000000 old\n", f);
  fclose(f);
  tl_open("logappend=yes");
  tl_close();
  ck_assert_msg(strncmp(tl_read(), "old\nReady thread_model=3\n"
                        "connection=42 Connect", 46) == 0,
                "%s", tl_read());
  testlib_stack_free(&tl_s);
  tl_open("logappend=no");
  tl_close();
  ck_assert_msg(strncmp(tl_read(), "Ready thread_model=3\n"
                        "connection=42 Connect", 42) == 0,
                "%s", tl_read());
}
END_TEST

START_TEST(test_bad_keys)
{
  char err[512] = "";

  ck_assert_ptr_null(testlib_filter_new("log", "logfile=/nonexistent/dir/x",
                                        err, sizeof err));
  ck_assert_msg(strstr(err, "/nonexistent/dir/x"), "err: %s", err);
  ck_assert_ptr_null(testlib_filter_new("log", "logfile=/tmp/x logfil=y",
                                        err, sizeof err));
  ck_assert_msg(strstr(err, "unknown key 'logfil'"), "err: %s", err);
}
END_TEST

/* The script's lines, sorted (scripts run at once, in any order). */
static int
tl_cmp(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *
tl_sorted(const char *path)
{
  static char out[16384], text[16384];
  char *lines[256], *p, *save;
  size_t n = 0, k, len = 0;
  FILE *f = fopen(path, "r");

  ck_assert_ptr_nonnull(f);
  text[fread(text, 1, sizeof text - 1, f)] = '\0';
  fclose(f);
  for (p = strtok_r(text, "\n", &save); p && n < 256;
       p = strtok_r(NULL, "\n", &save))
    lines[n++] = p;
  qsort(lines, n, sizeof lines[0], tl_cmp);
  out[0] = '\0';
  for (k = 0; k < n; k++)
    len += (size_t)snprintf(out + len, sizeof out - len, "%s\n", lines[k]);
  return out;
}

/* A stack whose log filter has logscript=script (spaces and all: the
 * test's "k=v k=v" parser splits on blanks) and logfile=tl_file when
 * with_file, opened as connection 42. */
static void
tl_open_script(const char *script, int with_file)
{
  struct nbd_layer *log, *rec;
  char err[512];

  tl_s.exp = engine_export_new("test");
  log = engine_layer_new(registry_find(NBD_LAYER_FILTER, "log"), "test");
  ck_assert_ptr_nonnull(log);
  ck_assert_int_eq(params_set(log, "logscript", script, err, sizeof err), 0);
  if (with_file)
    ck_assert_int_eq(params_set(log, "logfile", tl_file, err, sizeof err),
                     0);
  ck_assert_msg(engine_layer_setup(log, err, sizeof err) == 0, "%s", err);
  engine_export_push(tl_s.exp, log);
  rec = testlib_recorder_new(&tl_caps);
  tl_s.rec = testlib_recorder(rec);
  engine_export_push(tl_s.exp, rec);
  ck_assert_msg(engine_export_finish(tl_s.exp, err, sizeof err) == 0, "%s",
                err);
  tl_s.top = engine_open(tl_s.exp, 0, &tl_info, err, sizeof err);
  ck_assert_msg(tl_s.top != NULL, "%s", err);
}

START_TEST(test_logscript)
{
  static unsigned char buf[4096];
  struct nbd_extents *e;
  char out[600], script[1500];
  const char *want =
    "Connect PRINT c=42 id= export=disk 1 size=0x100000 zero=2\n"
    "Disconnect PRINT c=42 id= transactions=3\n"
    "Extents ENTER c=42 id=3 offset=0x0 count=0x10000 req_one=0\n"
    "Extents LEAVE c=42 id=3 return=0 extents=0x0 0x8000  "
    "0x8000 0x8000 hole,zero n=6\n"
    "Read ENTER c=42 id=1 offset=0x200 count=0x200\n"
    "Read LEAVE c=42 id=1 return=0\n"
    "Ready PRINT c= id= thread_model=3\n"
    "Write ENTER c=42 id=2 offset=0x0 count=0x200 fua=1\n"
    "Write LEAVE c=42 id=2 return=-1 error=EPERM\n";

  snprintf(out, sizeof out, "%s/script.out", tl_dir);
  /* Every variable the line has; the script fails (exit 3): no effect. */
  snprintf(script, sizeof script, "case $act in "
           "Ready) x=\"thread_model=$thread_model\";; "
           "Connect) x=\"export=$export size=$size zero=$zero\";; "
           "Disconnect) x=transactions=$transactions;; "
           "*) if [ $type = ENTER ]; then x=\"offset=$offset count=$count\"; "
           "[ -n \"$fua\" ] && x=\"$x fua=$fua\"; "
           "[ -n \"$req_one\" ] && x=\"$x req_one=$req_one\"; "
           "else x=\"return=$return\"; [ -n \"$error\" ] && "
           "x=\"$x error=$error\"; [ -n \"$extents\" ] && "
           "x=\"$x extents=${extents[*]} n=${#extents[@]}\"; fi;; esac; "
           "echo \"$act $type c=$connection id=$id $x\" >> %s; exit 3",
           out);
  tl_open_script(script, 0);
  testlib_recorder_map(tl_s.rec, 0, 0x8000, 0);
  testlib_recorder_map(tl_s.rec, 0x8000, 0xf8000,
                       NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  ck_assert_int_eq(next_pread(tl_s.top, buf, 512, 512, 0), 0);
  tl_s.rec->fail[NBD_METHOD_PWRITE] = -EROFS;
  ck_assert_int_eq(next_pwrite(tl_s.top, buf, 512, 0, NBD_CMD_FLAG_FUA),
                   -EROFS);
  e = nbd_extents_new(0, 0x10000);
  ck_assert_int_eq(next_extents(tl_s.top, 0x10000, 0, 0, e), 0);
  nbd_extents_free(e);
  tl_close();
  testlib_stack_free(&tl_s);    /* waits for every script */
  ck_assert_str_eq(tl_sorted(out), want);
  ck_assert_int_eq(access(tl_file, F_OK), -1);  /* no logfile= */
  unlink(out);
}
END_TEST

START_TEST(test_file_and_script)
{
  char out[600];
  const char *t;

  char script[700];

  snprintf(out, sizeof out, "%s/script.out", tl_dir);
  snprintf(script, sizeof script, "echo $act >> %s", out);
  tl_open_script(script, 1);
  tl_close();
  testlib_stack_free(&tl_s);
  ck_assert_str_eq(tl_sorted(out), "Connect\nDisconnect\nReady\n");
  t = tl_read();
  ck_assert_msg(strncmp(t, "Ready thread_model=3\nconnection=42 Connect",
                        42) == 0 && strstr(t, "Disconnect transactions=0"),
                "%s", t);
  unlink(out);
}
END_TEST

START_TEST(test_inactive)
{
  static unsigned char buf[512];
  char err[512];

  ck_assert_msg(testlib_stack_new(&tl_s, "log", &tl_caps) == 0, "%s",
                tl_s.err);
  tl_s.top = engine_open(tl_s.exp, 0, &tl_info, err, sizeof err);
  ck_assert_msg(tl_s.top != NULL, "%s", err);
  ck_assert_int_eq(next_pwrite(tl_s.top, buf, 512, 0, 0), 0);
  ck_assert_int_eq(engine_preconnect(tl_s.exp, &tl_info), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+512 flags=0");
  tl_close();
}
END_TEST

static Suite *
tl_suite(void)
{
  Suite *s = suite_create("log");
  TCase *tc = tcase_create("log");

  tcase_add_checked_fixture(tc, tl_setup, tl_teardown);
  tcase_add_test(tc, test_session_lines);
  tcase_add_test(tc, test_preconnect_and_list);
  tcase_add_test(tc, test_append);
  tcase_add_test(tc, test_bad_keys);
  tcase_add_test(tc, test_logscript);
  tcase_add_test(tc, test_file_and_script);
  tcase_add_test(tc, test_inactive);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "log"))
    return EXIT_SUCCESS;
  sr = srunner_create(tl_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
