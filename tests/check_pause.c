/* Unit tests for filters/pause.c over the recording backend: requests
 * pass through unchanged when not paused; the control socket answers
 * 'p' with 'P', 'r' with 'R' and anything else with 'X'; a request that
 * enters while paused waits until the resume, and fails with ESHUTDOWN
 * when the server stops; bad paths are refused at startup.  The control
 * socket is the filter's own concern, so these tests use a real one in a
 * temporary directory; the client stays in-process.
 */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "stop.h"
#include "testlib.h"

static struct testlib_caps pause_caps;
static struct testlib_stack pause_s;
static char pause_dir[64], pause_sock[128], pause_spec[256];
static unsigned char pause_buf[4096];

static void
pause_setup(void)
{
  testlib_caps_default(&pause_caps);
  strcpy(pause_dir, "/tmp/check_pause.XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(pause_dir));
  snprintf(pause_sock, sizeof pause_sock, "%s/ctl", pause_dir);
  snprintf(pause_spec, sizeof pause_spec, "pause pause-control=%s",
           pause_sock);
}

static void
pause_teardown(void)
{
  testlib_stack_free(&pause_s);
  unlink(pause_sock);
  rmdir(pause_dir);
  atomic_store(&server_stopping, 0);
}

static int
pause_connect(void)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);

  ck_assert_int_ge(fd, 0);
  strcpy(sa.sun_path, pause_sock);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  return fd;
}

/* Sends one command byte and returns the byte that comes back. */
static char
pause_cmd(int fd, char c)
{
  char r = 0;

  ck_assert_int_eq(write(fd, &c, 1), 1);
  ck_assert_int_eq(read(fd, &r, 1), 1);
  return r;
}

struct pause_req {
  struct nbd_ctx *top;
  int r;
  int done;                   /* atomic */
};

static void *
pause_reader(void *arg)
{
  struct pause_req *q = arg;

  q->r = next_pread(q->top, pause_buf, 512, 0, 0);
  __atomic_store_n(&q->done, 1, __ATOMIC_SEQ_CST);
  return NULL;
}

static void
pause_ms(long ms)
{
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

  nanosleep(&ts, NULL);
}

/* Waits up to 5 s for q to finish: "returns promptly", generously. */
static int
pause_wait_done(struct pause_req *q)
{
  int i;

  for (i = 0; i < 500 && !__atomic_load_n(&q->done, __ATOMIC_SEQ_CST); i++)
    pause_ms(10);
  return __atomic_load_n(&q->done, __ATOMIC_SEQ_CST);
}

START_TEST(test_requests_pass_through_unpaused)
{
  struct nbd_ctx *top;

  testlib_stack(&pause_s, pause_spec, &pause_caps);
  top = pause_s.top;
  ck_assert_int_eq(next_pread(top, pause_buf, 512, 4096, 0), 0);
  ck_assert_int_eq(next_pwrite(top, pause_buf, 512, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_zero(top, 512, 512, 0), 0);
  ck_assert_int_eq(next_trim(top, 512, 1024, 0), 0);
  ck_assert_int_eq(next_cache(top, 512, 1536, 0), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 4096+512 flags=0; "
                   "pwrite 0+512 flags=FUA; zero 512+512 flags=0; "
                   "trim 1024+512 flags=0; cache 1536+512 flags=0; flush");
}
END_TEST

START_TEST(test_control_replies)
{
  int fd;

  testlib_stack(&pause_s, pause_spec, &pause_caps);
  fd = pause_connect();
  ck_assert_int_eq(pause_cmd(fd, 'p'), 'P');
  ck_assert_int_eq(pause_cmd(fd, 'p'), 'P');
  ck_assert_int_eq(pause_cmd(fd, '?'), 'X');
  ck_assert_int_eq(pause_cmd(fd, 'r'), 'R');
  ck_assert_int_eq(pause_cmd(fd, 'r'), 'R');
  close(fd);
  /* The next client is served after the first hung up. */
  fd = pause_connect();
  ck_assert_int_eq(pause_cmd(fd, 'x'), 'X');
  close(fd);
}
END_TEST

START_TEST(test_request_waits_while_paused)
{
  struct pause_req q = { 0 };
  pthread_t t;
  int fd;

  testlib_stack(&pause_s, pause_spec, &pause_caps);
  q.top = pause_s.top;
  fd = pause_connect();
  ck_assert_int_eq(pause_cmd(fd, 'p'), 'P');
  ck_assert_int_eq(pthread_create(&t, NULL, pause_reader, &q), 0);
  pause_ms(300);
  ck_assert_int_eq(__atomic_load_n(&q.done, __ATOMIC_SEQ_CST), 0);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_int_eq(pause_cmd(fd, 'r'), 'R');
  ck_assert(pause_wait_done(&q));
  pthread_join(t, NULL);
  ck_assert_int_eq(q.r, 0);
  ck_assert_str_eq(testlib_log(), "pread 0+512 flags=0");
  close(fd);
}
END_TEST

START_TEST(test_waiting_request_fails_when_server_stops)
{
  struct pause_req q = { 0 };
  pthread_t t;
  int fd;

  testlib_stack(&pause_s, pause_spec, &pause_caps);
  q.top = pause_s.top;
  fd = pause_connect();
  ck_assert_int_eq(pause_cmd(fd, 'p'), 'P');
  ck_assert_int_eq(pthread_create(&t, NULL, pause_reader, &q), 0);
  pause_ms(200);
  ck_assert_int_eq(__atomic_load_n(&q.done, __ATOMIC_SEQ_CST), 0);
  atomic_store(&server_stopping, 1);
  ck_assert(pause_wait_done(&q));
  pthread_join(t, NULL);
  ck_assert_int_eq(q.r, -ESHUTDOWN);
  ck_assert_str_eq(testlib_log(), "");
  close(fd);
}
END_TEST

/* Cleanup stops the control thread even with a client connected and
 * removes the socket. */
START_TEST(test_cleanup_with_client_connected)
{
  int fd;

  testlib_stack(&pause_s, pause_spec, &pause_caps);
  fd = pause_connect();
  ck_assert_int_eq(pause_cmd(fd, 'p'), 'P');
  testlib_stack_free(&pause_s);
  memset(&pause_s, 0, sizeof pause_s);
  ck_assert_int_eq(access(pause_sock, F_OK), -1);
  close(fd);
}
END_TEST

static void
pause_assert_setup_fails(const char *filters, const char *want)
{
  ck_assert_int_eq(testlib_stack_new(&pause_s, filters, &pause_caps), -1);
  ck_assert_msg(strstr(pause_s.err, want) != NULL, "error '%s' lacks '%s'",
                pause_s.err, want);
}

START_TEST(test_bad_paths_refused)
{
  char spec[400], path[300];
  FILE *f;

  pause_assert_setup_fails("pause", "pause-control");
  memset(path, 'a', 200);
  path[200] = '\0';
  snprintf(spec, sizeof spec, "pause pause-control=/tmp/%s", path);
  pause_assert_setup_fails(spec, "at most 107");
  f = fopen(pause_sock, "w");
  ck_assert_ptr_nonnull(f);
  fclose(f);
  pause_assert_setup_fails(pause_spec, "not a socket");
}
END_TEST

/* A socket in use by a live instance is refused; a stale one replaced. */
START_TEST(test_socket_in_use_refused)
{
  struct testlib_stack other;

  testlib_stack(&pause_s, pause_spec, &pause_caps);
  memset(&other, 0, sizeof other);
  ck_assert_int_eq(testlib_stack_new(&other, pause_spec, &pause_caps), -1);
  ck_assert_msg(strstr(other.err, "in use") != NULL, "%s", other.err);
}
END_TEST

static TCase *
pause_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, pause_setup, pause_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
pause_suite(void)
{
  Suite *s = suite_create("pause");
  TCase *tc;

  tc = pause_tcase(s, "datapath");
  tcase_add_test(tc, test_requests_pass_through_unpaused);
  tcase_add_test(tc, test_request_waits_while_paused);
  tcase_add_test(tc, test_waiting_request_fails_when_server_stops);

  tc = pause_tcase(s, "control");
  tcase_add_test(tc, test_control_replies);
  tcase_add_test(tc, test_cleanup_with_client_connected);

  tc = pause_tcase(s, "startup");
  tcase_add_test(tc, test_bad_paths_refused);
  tcase_add_test(tc, test_socket_in_use_refused);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "pause"))
    return EXIT_SUCCESS;
  sr = srunner_create(pause_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
