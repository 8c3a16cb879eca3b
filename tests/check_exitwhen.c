/* Unit tests for filters/exitwhen.c over the recording backend: an event
 * already true at setup asks the exit at once; the polling thread sees a
 * file created later; a connection's open and close check the events
 * (file deleted, process gone, script exiting 88); a script exiting 1 is
 * logged and asks nothing; bad values are refused; requests pass through
 * unchanged.  Waits for the thread are bounded (5 s) and only fail when
 * the exit is never asked.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "stop.h"
#include "testlib.h"

static struct testlib_caps ew_caps;
static struct testlib_stack ew_s;
static char ew_dir[] = "/tmp/check_exitwhen.XXXXXX";
static char ew_path[600];
static char ew_params[1400];

static void
ew_setup(void)
{
  testlib_caps_default(&ew_caps);
  atomic_store(&server_exit_requested, 0);
  ck_assert_ptr_nonnull(mkdtemp(ew_dir));
  snprintf(ew_path, sizeof ew_path, "%s/flag", ew_dir);
}

static void
ew_teardown(void)
{
  testlib_stack_free(&ew_s);
  unlink(ew_path);
  rmdir(ew_dir);
  memcpy(ew_dir + strlen(ew_dir) - 6, "XXXXXX", 6);
  atomic_store(&server_exit_requested, 0);
}

static int
ew_wait_exit(void)
{
  int i;

  for (i = 0; i < 500 && !atomic_load(&server_exit_requested); i++)
    usleep(10000);
  return atomic_load(&server_exit_requested);
}

/* A connection comes and goes. */
static void
ew_connection(void)
{
  struct nbd_conn_info info;
  struct nbd_ctx *c;
  char err[512];

  memset(&info, 0, sizeof info);
  info.id = 1;
  info.family = AF_UNIX;
  c = engine_open(ew_s.exp, 0, &info, err, sizeof err);
  ck_assert_msg(c != NULL, "%s", err);
  engine_close(c);
}

START_TEST(test_true_at_setup)
{
  FILE *f = fopen(ew_path, "w");

  ck_assert_ptr_nonnull(f);
  fclose(f);
  snprintf(ew_params, sizeof ew_params, "exitwhen exit-when-file-created=%s",
           ew_path);
  testlib_stack(&ew_s, ew_params, &ew_caps);
  ck_assert_int_eq(atomic_load(&server_exit_requested), 1);
}
END_TEST

START_TEST(test_thread_sees_file_created)
{
  FILE *f;

  snprintf(ew_params, sizeof ew_params, "exitwhen exit-when-file-created=%s "
           "exit-when-poll=20ms", ew_path);
  testlib_stack(&ew_s, ew_params, &ew_caps);
  usleep(100000);
  ck_assert_int_eq(atomic_load(&server_exit_requested), 0);
  f = fopen(ew_path, "w");
  ck_assert_ptr_nonnull(f);
  fclose(f);
  ck_assert_int_eq(ew_wait_exit(), 1);
}
END_TEST

/* A poll of an hour: only the connection's open and close can see it. */
START_TEST(test_connection_checks_file_deleted)
{
  FILE *f = fopen(ew_path, "w");

  ck_assert_ptr_nonnull(f);
  fclose(f);
  snprintf(ew_params, sizeof ew_params, "exitwhen exit-when-file-deleted=%s "
           "exit-when-poll=1h", ew_path);
  testlib_stack(&ew_s, ew_params, &ew_caps);
  ew_connection();
  ck_assert_int_eq(atomic_load(&server_exit_requested), 0);
  unlink(ew_path);
  ew_connection();
  ck_assert_int_eq(atomic_load(&server_exit_requested), 1);
}
END_TEST

START_TEST(test_process_exits)
{
  pid_t pid = fork();

  ck_assert_int_ne(pid, -1);
  if (pid == 0) {
    pause();
    _exit(0);
  }
  snprintf(ew_params, sizeof ew_params, "exitwhen exit-when-process-exits=%ld "
           "exit-when-poll=1h", (long)pid);
  testlib_stack(&ew_s, ew_params, &ew_caps);
  ew_connection();
  ck_assert_int_eq(atomic_load(&server_exit_requested), 0);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  ew_connection();
  ck_assert_int_eq(atomic_load(&server_exit_requested), 1);
}
END_TEST

/* A script file (the test's parameter strings cannot hold spaces). */
static void
ew_script(const char *path, const char *body)
{
  FILE *f = fopen(path, "w");

  ck_assert_ptr_nonnull(f);
  fprintf(f, "#!/bin/sh\n%s\n", body);
  fclose(f);
  ck_assert_int_eq(chmod(path, 0755), 0);
}

START_TEST(test_script)
{
  char script[700], body[700];
  FILE *f;

  snprintf(script, sizeof script, "%s/event.sh", ew_dir);
  snprintf(body, sizeof body, "test -e %s && exit 88\nexit 0", ew_path);
  ew_script(script, body);
  snprintf(ew_params, sizeof ew_params, "exitwhen exit-when-poll=1h "
           "exit-when-script=%s", script);
  testlib_stack(&ew_s, ew_params, &ew_caps);
  ew_connection();
  ck_assert_int_eq(atomic_load(&server_exit_requested), 0);
  f = fopen(ew_path, "w");
  ck_assert_ptr_nonnull(f);
  fclose(f);
  ew_connection();
  ck_assert_int_eq(atomic_load(&server_exit_requested), 1);
  unlink(script);
}
END_TEST

START_TEST(test_script_error_logged)
{
  char script[700], *out;

  snprintf(script, sizeof script, "%s/fail.sh", ew_dir);
  ew_script(script, "exit 1");
  snprintf(ew_params, sizeof ew_params, "exitwhen exit-when-poll=1h "
           "exit-when-script=%s", script);
  testlib_stderr_begin();
  testlib_stack(&ew_s, ew_params, &ew_caps);
  ew_connection();
  out = testlib_stderr_end();
  ck_assert_int_eq(atomic_load(&server_exit_requested), 0);
  ck_assert_msg(strstr(out, "exit status 1"), "log: %s", out);
  free(out);
  unlink(script);
}
END_TEST

START_TEST(test_bad_values)
{
  static const char *const bad[][2] = {
    { "exit-when-process-exits=abc", "not a number" },
    { "exit-when-process-exits=0", "not a number >= 1" },
    { "exit-when-pipe-closed=987", "fd 987 is not open" },
    { "exit-when-poll=0", "more than 0" },
    { "exit-when-file=/x", "unknown key 'exit-when-file'" },
  };
  char err[512];
  size_t i;

  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = '\0';
    ck_assert_ptr_null(testlib_filter_new("exitwhen", bad[i][0], err,
                                          sizeof err));
    ck_assert_msg(strstr(err, bad[i][1]), "%s: %s", bad[i][0], err);
  }
}
END_TEST

START_TEST(test_requests_pass_through)
{
  static unsigned char buf[512];

  testlib_stack(&ew_s, "exitwhen", &ew_caps);
  ck_assert_int_eq(next_pread(ew_s.top, buf, 512, 512, 0), 0);
  ck_assert_int_eq(next_zero(ew_s.top, 512, 0, NBD_CMD_FLAG_NO_HOLE), 0);
  ck_assert_str_eq(testlib_log(), "pread 512+512 flags=0; "
                   "zero 0+512 flags=NO_HOLE");
}
END_TEST

static Suite *
ew_suite(void)
{
  Suite *s = suite_create("exitwhen");
  TCase *tc = tcase_create("exitwhen");

  tcase_add_checked_fixture(tc, ew_setup, ew_teardown);
  tcase_add_test(tc, test_true_at_setup);
  tcase_add_test(tc, test_thread_sees_file_created);
  tcase_add_test(tc, test_connection_checks_file_deleted);
  tcase_add_test(tc, test_process_exits);
  tcase_add_test(tc, test_script);
  tcase_add_test(tc, test_script_error_logged);
  tcase_add_test(tc, test_bad_values);
  tcase_add_test(tc, test_requests_pass_through);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "exitwhen"))
    return EXIT_SUCCESS;
  sr = srunner_create(ew_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
