/* Unit tests for src/listen.c: every accepted form of a listen address,
 * the message for each kind of mistake, and the Unix path limit.  How the
 * config file and the command line hand addresses over is tested in
 * check_config.c.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "listen.h"

#define ck_assert_has(hay, needle)                                          \
  ck_assert_msg(strstr((hay), (needle)) != NULL,                            \
                "expected '%s' in:\n%s", (needle), (hay))

#define STR_EQ(a, b) ((a) == NULL ? (b) == NULL : (b) && strcmp(a, b) == 0)

START_TEST(test_parses_every_form)
{
  static const struct {
    const char *text;
    int kind;
    const char *path, *host, *port;
  } good[] = {
    { "unix:/tmp/s", NBD_LISTEN_UNIX, "/tmp/s", NULL, NULL },
    { "unix:rel/s", NBD_LISTEN_UNIX, "rel/s", NULL, NULL },
    { "/tmp/s", NBD_LISTEN_UNIX, "/tmp/s", NULL, NULL },
    { "tcp:host:99", NBD_LISTEN_TCP, NULL, "host", "99" },
    { "tcp:127.0.0.1:10809", NBD_LISTEN_TCP, NULL, "127.0.0.1", "10809" },
    { "tcp:[::1]:5", NBD_LISTEN_TCP, NULL, "::1", "5" },
    { "tcp:[fe80::1%eth0]", NBD_LISTEN_TCP, NULL, "fe80::1%eth0", "10809" },
    { "tcp:4000", NBD_LISTEN_TCP, NULL, NULL, "4000" },
    { "tcp:localhost", NBD_LISTEN_TCP, NULL, "localhost", "10809" },
    { "tcp::77", NBD_LISTEN_TCP, NULL, NULL, "77" },
    { "tcp:*:77", NBD_LISTEN_TCP, NULL, NULL, "77" },
    { "tcp:0.0.0.0:nbd", NBD_LISTEN_TCP, NULL, "0.0.0.0", "nbd" },
    { "host:1", NBD_LISTEN_TCP, NULL, "host", "1" },
    { "tcp:h:065535", NBD_LISTEN_TCP, NULL, "h", "65535" },
  };
  struct nbd_listen l;
  char err[256];
  size_t i;

  for (i = 0; i < sizeof good / sizeof good[0]; i++) {
    ck_assert_msg(listen_parse(good[i].text, &l, err, sizeof err) == 0,
                  "%s: %s", good[i].text, err);
    ck_assert_int_eq(l.kind, good[i].kind);
    ck_assert_msg(STR_EQ(l.path, good[i].path), "%s: path", good[i].text);
    ck_assert_msg(STR_EQ(l.host, good[i].host), "%s: host %s", good[i].text,
                  l.host ? l.host : "NULL");
    ck_assert_msg(STR_EQ(l.port, good[i].port), "%s: port", good[i].text);
    listen_clear(&l);
  }
}
END_TEST

START_TEST(test_rejects_each_mistake_and_leaves_nothing)
{
  static const struct { const char *text, *msg; } bad[] = {
    { "", "empty address" },
    { "unix:", "missing socket path" },
    { "tcp:", "missing host or port" },
    { "tcp:h:0", "invalid port '0'" },
    { "tcp:h:65536", "invalid port '65536'" },
    { "tcp:h:", "invalid port ''" },
    { "tcp:h:1x", "invalid port '1x'" },
    { "tcp:::1", "needs brackets" },
    { "tcp:[::1", "missing ']'" },
    { "tcp:[]:1", "empty IPv6 address" },
    { "tcp:[::1]x", "unexpected text after ']'" },
    { "tcp:a b:1", "invalid character ' ' in host" },
    { "udp:1.2.3.4:5", "needs brackets" },
  };
  struct nbd_listen l;
  char err[256];
  size_t i;

  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_msg(listen_parse(bad[i].text, &l, err, sizeof err) == -1,
                  "%s accepted", bad[i].text);
    ck_assert_has(err, bad[i].msg);
    ck_assert_ptr_null(l.path);
    ck_assert_ptr_null(l.host);
    ck_assert_ptr_null(l.port);
  }
}
END_TEST

/* sun_path holds 108 bytes with the NUL. */
START_TEST(test_unix_path_at_most_107_bytes)
{
  struct nbd_listen l;
  char err[256], longpath[200];

  memset(longpath, 'a', sizeof longpath - 1);
  longpath[0] = '/';
  longpath[108] = '\0';
  ck_assert_int_eq(listen_parse(longpath, &l, err, sizeof err), -1);
  ck_assert_has(err, "108 bytes, longer than the limit of 107");
  longpath[107] = '\0';
  ck_assert_int_eq(listen_parse(longpath, &l, err, sizeof err), 0);
  listen_clear(&l);
}
END_TEST

int
main(void)
{
  Suite *s = suite_create("listen");
  SRunner *sr;
  TCase *tc;
  int failed;

  tc = tcase_create("parses every form");
  tcase_add_test(tc, test_parses_every_form);
  suite_add_tcase(s, tc);
  tc = tcase_create("rejects each mistake and leaves nothing");
  tcase_add_test(tc, test_rejects_each_mistake_and_leaves_nothing);
  suite_add_tcase(s, tc);
  tc = tcase_create("unix path at most 107 bytes");
  tcase_add_test(tc, test_unix_path_at_most_107_bytes);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
