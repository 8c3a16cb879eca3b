/* Unit tests for filters/ip.c over the recording backend: preconnect
 * decides by the connection's address or Unix credentials with nbdkit's
 * rules (allow first, then deny, else allow), CIDR ranges at their edges,
 * IPv4-mapped IPv6 clients match IPv4 rules, a refusal is logged with
 * the client's address, the layer below's preconnect is asked when the
 * client is let in, and bad rules are refused at setup.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "testlib.h"

static struct testlib_caps ip_caps;
static struct testlib_stack ip_s;

static void
ip_setup(void)
{
  testlib_caps_default(&ip_caps);
}

static void
ip_teardown(void)
{
  testlib_stack_free(&ip_s);
}

static struct nbd_conn_info
ip_tcp(int family, const char *addr)
{
  struct nbd_conn_info i;

  memset(&i, 0, sizeof i);
  i.id = 7;
  i.family = family;
  snprintf(i.addr, sizeof i.addr, "%s", addr);
  i.port = 4000;
  return i;
}

static struct nbd_conn_info
ip_unix(pid_t pid, uid_t uid, gid_t gid)
{
  struct nbd_conn_info i;

  memset(&i, 0, sizeof i);
  i.id = 8;
  i.family = AF_UNIX;
  i.has_cred = 1;
  i.pid = pid;
  i.uid = uid;
  i.gid = gid;
  return i;
}

/* 0 = let in, else -errno. */
static int
ip_decide(const char *rules, const struct nbd_conn_info *i)
{
  int r;

  testlib_stack_free(&ip_s);
  ck_assert_msg(testlib_stack_new(&ip_s, rules, &ip_caps) == 0, "%s: %s",
                rules, ip_s.err);
  r = engine_preconnect(ip_s.exp, i);
  return r;
}

START_TEST(test_allow_then_deny)
{
  struct nbd_conn_info a = ip_tcp(AF_INET, "192.168.2.9");
  struct nbd_conn_info b = ip_tcp(AF_INET, "10.1.2.3");

  ck_assert_int_eq(ip_decide("ip allow=192.168.2.0/24 deny=all", &a), 0);
  ck_assert_int_eq(ip_decide("ip allow=192.168.2.0/24 deny=all", &b),
                   -EPERM);
  /* The order of the keys does not matter: allow is checked first. */
  ck_assert_int_eq(ip_decide("ip deny=all allow=192.168.2.9", &a), 0);
  /* Not in either list: let in. */
  ck_assert_int_eq(ip_decide("ip deny=10.0.0.0/8", &a), 0);
  ck_assert_int_eq(ip_decide("ip deny=10.0.0.0/8", &b), -EPERM);
  /* No keys: the filter does nothing. */
  ck_assert_int_eq(ip_decide("ip", &b), 0);
}
END_TEST

START_TEST(test_cidr_edges)
{
  struct nbd_conn_info last = ip_tcp(AF_INET, "10.255.255.255");
  struct nbd_conn_info next = ip_tcp(AF_INET, "11.0.0.0");
  struct nbd_conn_info odd = ip_tcp(AF_INET, "192.168.3.1");

  ck_assert_int_eq(ip_decide("ip deny=10.0.0.0/8", &last), -EPERM);
  ck_assert_int_eq(ip_decide("ip deny=10.0.0.0/8", &next), 0);
  /* /23: 192.168.2.0 - 192.168.3.255 */
  ck_assert_int_eq(ip_decide("ip deny=192.168.2.0/23", &odd), -EPERM);
  ck_assert_int_eq(ip_decide("ip deny=192.168.2.0/24", &odd), 0);
  ck_assert_int_eq(ip_decide("ip deny=0.0.0.0/0", &odd), -EPERM);
  ck_assert_int_eq(ip_decide("ip deny=192.168.3.1/32", &odd), -EPERM);
}
END_TEST

START_TEST(test_ipv6_and_mapped)
{
  struct nbd_conn_info v6 = ip_tcp(AF_INET6, "2001:db8::17");
  struct nbd_conn_info mapped = ip_tcp(AF_INET6, "::ffff:10.0.0.1");
  struct nbd_conn_info lo = ip_tcp(AF_INET6, "::1");

  ck_assert_int_eq(ip_decide("ip deny=2001:db8::/32", &v6), -EPERM);
  ck_assert_int_eq(ip_decide("ip deny=2001:db9::/32", &v6), 0);
  ck_assert_int_eq(ip_decide("ip deny=anyipv6", &v6), -EPERM);
  ck_assert_int_eq(ip_decide("ip deny=anyipv4", &v6), 0);
  ck_assert_int_eq(ip_decide("ip deny=10.0.0.0/8", &mapped), -EPERM);
  ck_assert_int_eq(ip_decide("ip deny=anyipv4", &mapped), -EPERM);
  ck_assert_int_eq(ip_decide("ip allow=::1 deny=all", &lo), 0);
  ck_assert_int_eq(ip_decide("ip allow=::2 deny=all", &lo), -EPERM);
  /* A mapped client is IPv4: not anyipv6 nor ::/0, but a rule inside
   * ::ffff:0:0/96 is the IPv4 rule it maps. */
  ck_assert_int_eq(ip_decide("ip deny=anyipv6", &mapped), 0);
  ck_assert_int_eq(ip_decide("ip deny=::/0", &mapped), 0);
  ck_assert_int_eq(ip_decide("ip deny=::ffff:0:0/96", &mapped), -EPERM);
  ck_assert_int_eq(ip_decide("ip deny=::ffff:10.0.0.0/104", &mapped),
                   -EPERM);
  ck_assert_int_eq(ip_decide("ip deny=::ffff:10.0.0.2", &mapped), 0);
  ck_assert_int_eq(ip_decide("ip allow=::ffff:10.0.0.1 deny=all", &mapped),
                   0);
  ck_assert_int_eq(ip_decide("ip deny=::ffff:0:0/96", &v6), 0);
}
END_TEST

START_TEST(test_link_local_scope)
{
  struct nbd_conn_info ll = ip_tcp(AF_INET6, "fe80::1%eth0");

  ck_assert_int_eq(ip_decide("ip deny=fe80::/10", &ll), -EPERM);
  ck_assert_int_eq(ip_decide("ip allow=fe80::1 deny=all", &ll), 0);
  ck_assert_int_eq(ip_decide("ip deny=anyipv6", &ll), -EPERM);
}
END_TEST

START_TEST(test_unix_credentials)
{
  struct nbd_conn_info u = ip_unix(1234, 1000, 100);
  struct nbd_conn_info tcp = ip_tcp(AF_INET, "127.0.0.1");

  ck_assert_int_eq(ip_decide("ip allow=uid:1000 deny=all", &u), 0);
  ck_assert_int_eq(ip_decide("ip allow=uid:1001 deny=all", &u), -EPERM);
  ck_assert_int_eq(ip_decide("ip allow=gid:100 deny=all", &u), 0);
  ck_assert_int_eq(ip_decide("ip deny=pid:1234", &u), -EPERM);
  ck_assert_int_eq(ip_decide("ip deny=pid:1235,gid:7", &u), 0);
  ck_assert_int_eq(ip_decide("ip deny=anyunix", &u), -EPERM);
  ck_assert_int_eq(ip_decide("ip deny=anyipv4,anyipv6", &u), 0);
  /* uid rules never match a TCP client. */
  ck_assert_int_eq(ip_decide("ip allow=uid:0 deny=all", &tcp), -EPERM);
}
END_TEST

START_TEST(test_refusal_logged)
{
  struct nbd_conn_info a = ip_tcp(AF_INET, "203.0.113.5");
  char *out;

  testlib_stderr_begin();
  ck_assert_int_eq(ip_decide("ip deny=203.0.113.0/24", &a), -EPERM);
  out = testlib_stderr_end();
  ck_assert_msg(strstr(out, "client 203.0.113.5 refused (deny="
                       "203.0.113.0/24)"), "log: %s", out);
  free(out);
}
END_TEST

START_TEST(test_requests_pass_through)
{
  static unsigned char buf[512];

  testlib_stack(&ip_s, "ip deny=all", &ip_caps);
  ck_assert_int_eq(next_pread(ip_s.top, buf, 512, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+512 flags=0");
}
END_TEST

START_TEST(test_bad_rules)
{
  static const char *const bad[][2] = {
    { "allow=1.2.3", "not an address" },
    { "deny=10.0.0.0/33", "prefix length must be 0 to 32" },
    { "deny=::/129", "prefix length must be 0 to 128" },
    { "deny=10.0.0.0/", "prefix length" },
    { "allow=uid:abc", "not a number after uid:" },
    { "allow=vsock-cid:3", "not an address" },
    { "allow=1.2.3.4,,bogus", "'bogus'" },
  };
  char err[512];
  size_t i;

  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = '\0';
    ck_assert_ptr_null(testlib_filter_new("ip", bad[i][0], err, sizeof err));
    ck_assert_msg(strstr(err, bad[i][1]), "%s: %s", bad[i][0], err);
  }
}
END_TEST

static Suite *
ip_suite(void)
{
  Suite *s = suite_create("ip");
  TCase *tc = tcase_create("ip");

  tcase_add_checked_fixture(tc, ip_setup, ip_teardown);
  tcase_add_test(tc, test_allow_then_deny);
  tcase_add_test(tc, test_cidr_edges);
  tcase_add_test(tc, test_ipv6_and_mapped);
  tcase_add_test(tc, test_link_local_scope);
  tcase_add_test(tc, test_unix_credentials);
  tcase_add_test(tc, test_refusal_logged);
  tcase_add_test(tc, test_requests_pass_through);
  tcase_add_test(tc, test_bad_rules);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr;
  int failed;

  if (!testlib_require_layer(NBD_LAYER_FILTER, "ip"))
    return EXIT_SUCCESS;
  sr = srunner_create(ip_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
