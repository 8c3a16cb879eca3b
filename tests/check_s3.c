/* Unit tests for the s3 backend's pure parts: AWS Signature V4 (sigv4.c)
 * against the signatures Debian's python3-botocore computes for the same
 * requests (tests/s3_sigv4_ref.py), and the HTTP and XML parsers
 * (http.c) on good, bad and truncated input. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../backends/s3/http.h"
#include "../backends/s3/sigv4.h"

struct sig_case {
  const char *method, *host, *path, *query, *body, *date, *region;
  const char *ak, *sk, *token;
  int https;
};

static const struct sig_case cases[] = {
  { "GET", "127.0.0.1:47480", "/nbdtest/disk/0000000000000003", "", "",
    "20261207T031500Z", "us-east-1", "AKIDEXAMPLE",
    "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", NULL, 0 },
  { "PUT", "127.0.0.1:47480", "/nbdtest/disk/lease", "",
    "nbdstack lease\nowner x\nexpires 1\n", "20261207T031501Z", "us-east-1",
    "AKIDEXAMPLE", "secret", NULL, 0 },
  { "GET", "s3.example.com", "/bucket", "list-type=2&prefix=a%20b%2F", "",
    "20250101T000000Z", "eu-west-3", "AK", "SK", "session/token+x=", 0 },
  { "PUT", "mybucket.s3.eu-central-1.amazonaws.com", "/my%20key/0000000000000000",
    "", "payload not signed over TLS", "20240229T235959Z", "eu-central-1",
    "AK2", "SK2", NULL, 1 },
  { "DELETE", "[::1]:9000", "/b/k%2Bplus", "", "", "20261207T000000Z",
    "us-east-1", "minioadmin", "minioadmin", NULL, 0 },
  { "HEAD", "host", "/b/%E2%82%AC", "", "", "20261207T000000Z", "us-east-1",
    "a", "b", NULL, 0 },
  { "GET", "host:1", "/b",
    "continuation-token=1%2Fabc%3D%3D&list-type=2&prefix=p%2F", "",
    "20261207T000000Z", "us-east-1", "a", "b", NULL, 0 },
};
#define NCASES (sizeof cases / sizeof cases[0])

static void
ours(const struct sig_case *c, char *out, size_t len)
{
  struct s3_sigv4 s;
  char hash[65];

  if (c->https)
    strcpy(hash, "UNSIGNED-PAYLOAD");
  else
    ck_assert_int_eq(s3_sha256_hex(c->body, strlen(c->body), hash), 0);
  memset(&s, 0, sizeof s);
  s.method = c->method;
  s.host = c->host;
  s.path = c->path;
  s.query = c->query;
  s.payload_hash = hash;
  s.amz_date = c->date;
  s.region = c->region;
  s.access_key = c->ak;
  s.secret_key = c->sk;
  s.session_token = c->token;
  ck_assert_int_eq(s3_sigv4_authorization(&s, out, len), 0);
}

START_TEST(test_sigv4_matches_botocore)
{
  char in[] = "/tmp/check_s3.XXXXXX", cmd[600], line[1024], want[NCASES][1024];
  const char *src = getenv("SRCDIR");
  FILE *f, *p;
  size_t i;
  int fd = mkstemp(in);

  ck_assert_int_ge(fd, 0);
  ck_assert_ptr_nonnull(f = fdopen(fd, "w"));
  for (i = 0; i < NCASES; i++) {
    const struct sig_case *c = &cases[i];
    char body[256];
    size_t j;
    /* One line per request: a newline in the body goes as \x01. */
    snprintf(body, sizeof body, "%s", c->body);
    for (j = 0; body[j]; j++)
      ck_assert_int_ne(body[j], '\t');
    fprintf(f, "%s\t%s\t%s\t%s\t", c->method, c->host, c->path, c->query);
    for (j = 0; body[j]; j++)
      fputs(body[j] == '\n' ? "\x01" : (char[]){ body[j], 0 }, f);
    fprintf(f, "\t%s\t%s\t%s\t%s\t%s\t%d\n", c->date, c->region, c->ak, c->sk,
            c->token ? c->token : "-", c->https);
  }
  fclose(f);
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/s3_sigv4_ref.py <%s",
           src ? src : ".", in);
  ck_assert_ptr_nonnull(p = popen(cmd, "r"));
  for (i = 0; i < NCASES && fgets(line, sizeof line, p); i++) {
    line[strcspn(line, "\n")] = '\0';
    snprintf(want[i], sizeof want[i], "%s", line);
  }
  ck_assert_int_eq(pclose(p), 0);
  unlink(in);
  ck_assert_uint_eq(i, NCASES);
  for (i = 0; i < NCASES; i++) {
    char got[512];
    ours(&cases[i], got, sizeof got);
    ck_assert_msg(strcmp(got, want[i]) == 0, "case %zu:\n ours     %s\n "
                  "botocore %s", i, got, want[i]);
  }
}
END_TEST

START_TEST(test_uri_encode)
{
  char out[64];

  ck_assert_int_eq(s3_uri_encode("a b/c~d", 1, out, sizeof out), 9);
  ck_assert_str_eq(out, "a%20b/c~d");
  ck_assert_int_eq(s3_uri_encode("a/b+", 0, out, sizeof out), 8);
  ck_assert_str_eq(out, "a%2Fb%2B");
  ck_assert_int_eq(s3_uri_encode("abcdef", 1, out, 6), -1);
}
END_TEST

START_TEST(test_parse_head)
{
  static const char ok[] =
    "HTTP/1.1 206 Partial Content\r\nContent-Length: 12\r\n"
    "ETag: \"abc123\"\r\nConnection: keep-alive\r\n\r\nbody";
  struct s3_http_head h;
  size_t i;

  ck_assert_int_eq(s3_http_parse_head(ok, strlen(ok), &h),
                   (int)strlen(ok) - 4);
  ck_assert_int_eq(h.status, 206);
  ck_assert_int_eq(h.content_length, 12);
  ck_assert_str_eq(h.etag, "abc123");
  ck_assert_int_eq(h.close, 0);
  /* every proper prefix is incomplete, never an error */
  for (i = 0; i < strlen(ok) - 4; i++)
    ck_assert_int_eq(s3_http_parse_head(ok, i, &h), 0);
  ck_assert_int_eq(s3_http_parse_head("HTTP/1.0 200 OK\r\n\r\n", 19, &h), 19);
  ck_assert_int_eq(h.close, 1);
  ck_assert_int_eq(h.content_length, -1);
  ck_assert_int_eq(s3_http_parse_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: "
                                      "chunked\r\n\r\n", 47, &h), 47);
  ck_assert_int_eq(h.chunked, 1);
  /* malformed */
  ck_assert_int_eq(s3_http_parse_head("HTTP/2 200 OK\r\n\r\n", 17, &h), -1);
  ck_assert_int_eq(s3_http_parse_head("HTTP/1.1 20 OK\r\n\r\n", 18, &h), -1);
  ck_assert_int_eq(s3_http_parse_head("HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
                                      28, &h), -1);
  ck_assert_int_eq(s3_http_parse_head("HTTP/1.1 200 OK\r\nContent-Length: "
                                      "99999999999999999999999\r\n\r\n", 60,
                                      &h), -1);
  ck_assert_int_eq(s3_http_parse_head("HTTP/1.1 200 OK\r\nContent-Length: 1"
                                      "\r\nContent-Length: 2\r\n\r\n", 56, &h),
                   -1);
  ck_assert_int_eq(s3_http_parse_head("HTTP/1.1 200 OK\r\nTransfer-Encoding:"
                                      " gzip\r\n\r\n", 43, &h), -1);
}
END_TEST

START_TEST(test_parse_head_too_long)
{
  size_t n = S3_HTTP_HEAD_MAX + 100;
  char *b = malloc(n);
  struct s3_http_head h;

  ck_assert_ptr_nonnull(b);
  memcpy(b, "HTTP/1.1 200 OK\r\nX: ", 20);
  memset(b + 20, 'a', n - 20);
  ck_assert_int_eq(s3_http_parse_head(b, n, &h), -1);
  ck_assert_int_eq(s3_http_parse_head(b, 1000, &h), 0);
  free(b);
}
END_TEST

START_TEST(test_chunk_line)
{
  uint64_t n;

  ck_assert_int_eq(s3_http_parse_chunk_line("1a\r\n", 4, &n), 4);
  ck_assert_uint_eq(n, 26);
  ck_assert_int_eq(s3_http_parse_chunk_line("0;ext=1\r\n", 9, &n), 9);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(s3_http_parse_chunk_line("1a", 2, &n), 0);
  ck_assert_int_eq(s3_http_parse_chunk_line("zz\r\n", 4, &n), -1);
  ck_assert_int_eq(s3_http_parse_chunk_line("11111111111111111\r\n", 19, &n),
                   -1);
}
END_TEST

START_TEST(test_xml)
{
  static const char x[] =
    "<ListBucketResult><IsTruncated>true</IsTruncated>"
    "<Contents><Key>d/0000000000000001</Key></Contents>"
    "<Contents><Key>a&amp;b&lt;&#x41;&#66;&#8364;</Key></Contents>"
    "<NextContinuationToken>tok</NextContinuationToken></ListBucketResult>";
  char v[64];
  size_t pos = 0;

  ck_assert_int_eq(s3_xml_next(x, strlen(x), &pos, "Key", v, sizeof v), 1);
  ck_assert_str_eq(v, "d/0000000000000001");
  ck_assert_int_eq(s3_xml_next(x, strlen(x), &pos, "Key", v, sizeof v), 1);
  ck_assert_str_eq(v, "a&b<AB\xe2\x82\xac");
  ck_assert_int_eq(s3_xml_next(x, strlen(x), &pos, "Key", v, sizeof v), 0);
  pos = 0;
  ck_assert_int_eq(s3_xml_next(x, strlen(x), &pos, "NextContinuationToken",
                               v, sizeof v), 1);
  ck_assert_str_eq(v, "tok");
  pos = 0;
  ck_assert_int_eq(s3_xml_next(x, strlen(x), &pos, "Key", v, 5), -1);
  pos = 0;
  ck_assert_int_eq(s3_xml_next("<Key>a&bogus;</Key>", 19, &pos, "Key", v,
                               sizeof v), -1);
  pos = 0;
  ck_assert_int_eq(s3_xml_next("<Key>unterminated", 17, &pos, "Key", v,
                               sizeof v), -1);
  pos = 0;
  ck_assert_int_eq(s3_xml_next("<Key>&#0;</Key>", 15, &pos, "Key", v,
                               sizeof v), -1);
}
END_TEST

START_TEST(test_block_key)
{
  uint64_t b = 77;

  ck_assert_int_eq(s3_block_key("d/0000000000000000", "d/", &b), 1);
  ck_assert_uint_eq(b, 0);
  ck_assert_int_eq(s3_block_key("d/00000000000000ff", "d/", &b), 1);
  ck_assert_uint_eq(b, 255);
  ck_assert_int_eq(s3_block_key("d/ffffffffffffffff", "d/", &b), 1);
  ck_assert_uint_eq(b, UINT64_MAX);
  b = 77;
  /* Not blocks: the lease, foreign names, what strtoull would take. */
  ck_assert_int_eq(s3_block_key("d/lease", "d/", &b), 0);
  ck_assert_int_eq(s3_block_key("d/000000000000000A", "d/", &b), 0);
  ck_assert_int_eq(s3_block_key("d/0x00000000000001", "d/", &b), 0);
  ck_assert_int_eq(s3_block_key("d/+000000000000001", "d/", &b), 0);
  ck_assert_int_eq(s3_block_key("d/-000000000000001", "d/", &b), 0);
  ck_assert_int_eq(s3_block_key("d/ 000000000000001", "d/", &b), 0);
  ck_assert_int_eq(s3_block_key("d/000000000000001", "d/", &b), 0);
  ck_assert_int_eq(s3_block_key("d/00000000000000001", "d/", &b), 0);
  ck_assert_int_eq(s3_block_key("d/0000000000000001/x", "d/", &b), 0);
  ck_assert_int_eq(s3_block_key("e/0000000000000001", "d/", &b), 0);
  ck_assert_int_eq(s3_block_key("d0000000000000001", "d/", &b), 0);
  ck_assert_int_eq(s3_block_key("dd/0000000000000001", "d/", &b), 0);
  ck_assert_uint_eq(b, 77);
}
END_TEST

int
main(void)
{
  Suite *s = suite_create("s3");
  TCase *tc = tcase_create("core");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_sigv4_matches_botocore);
  tcase_add_test(tc, test_uri_encode);
  tcase_add_test(tc, test_parse_head);
  tcase_add_test(tc, test_parse_head_too_long);
  tcase_add_test(tc, test_chunk_line);
  tcase_add_test(tc, test_xml);
  tcase_add_test(tc, test_block_key);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
