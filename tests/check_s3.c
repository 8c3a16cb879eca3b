/* Unit tests for the s3 backend's pure parts: AWS Signature V4 (sigv4.c)
 * against the signatures Debian's python3-botocore computes for the same
 * requests (tests/s3_sigv4_ref.py), and the HTTP and XML parsers
 * (http.c) on good, bad and truncated input. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../backends/s3/awsconf.h"
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

START_TEST(test_aws_parse_credentials_file)
{
  static const char text[] =
    "# comment\n"
    "[other]\n"
    "aws_access_key_id = OTHER\n"
    "aws_secret_access_key = othersecret\n"
    "\n"
    "[default]\n"
    "  ; indented comment\n"
    "AWS_Access_Key_ID=AK # not a comment\n"
    "aws_secret_access_key: S:K=x\n"
    "aws_session_token = tok\n"
    "  continued line = ignored\n"
    "aws_security_token = sec\n"
    "region = eu-west-1\r\n"
    "s3 =\n"
    "    addressing_style = path\n"
    "[profile default]\n"
    "aws_access_key_id = NOT_IN_A_CREDENTIALS_FILE\n";
  struct s3_aws_profile p;
  char err[200];

  ck_assert_int_eq(s3_aws_profile_parse(text, "default", 0, &p, err,
                                        sizeof err), 0);
  ck_assert_int_eq(p.found, 1);
  ck_assert_str_eq(p.access, "AK # not a comment");
  ck_assert_str_eq(p.secret, "S:K=x");
  ck_assert_str_eq(p.token, "sec");     /* aws_security_token wins */
  ck_assert_str_eq(p.region, "eu-west-1");
  ck_assert_int_eq(s3_aws_profile_parse(text, "other", 0, &p, err,
                                        sizeof err), 0);
  ck_assert_str_eq(p.access, "OTHER");
  ck_assert_str_eq(p.token, "");
  ck_assert_int_eq(s3_aws_profile_parse(text, "nope", 0, &p, err,
                                        sizeof err), 0);
  ck_assert_int_eq(p.found, 0);
}
END_TEST

START_TEST(test_aws_parse_config_file)
{
  static const char text[] =
    "[default]\n"
    "region = us-west-2\n"
    "[profile dev]\n"
    "aws_access_key_id = DEV\n"
    "[dev]\n"
    "aws_access_key_id = NOT_A_PROFILE_IN_A_CONFIG_FILE\n"
    "[profile \"with space\"]\n"
    "region = ap-south-1\n"
    "[profilex odd]\n"
    "region = botocore-quirk\n"
    "[profile role]\n"
    "role_arn = arn:aws:iam::1:role/x\n"
    "source_profile = dev\n"
    "[profile proc]\n"
    "credential_process = /bin/true\n";
  struct s3_aws_profile p;
  char err[200];

  ck_assert_int_eq(s3_aws_profile_parse(text, "default", 1, &p, err,
                                        sizeof err), 0);
  ck_assert_str_eq(p.region, "us-west-2");
  ck_assert_int_eq(s3_aws_profile_parse(text, "dev", 1, &p, err,
                                        sizeof err), 0);
  ck_assert_str_eq(p.access, "DEV");
  ck_assert_int_eq(s3_aws_profile_parse(text, "with space", 1, &p, err,
                                        sizeof err), 0);
  ck_assert_str_eq(p.region, "ap-south-1");
  ck_assert_int_eq(s3_aws_profile_parse(text, "odd", 1, &p, err,
                                        sizeof err), 0);
  ck_assert_str_eq(p.region, "botocore-quirk");
  ck_assert_int_eq(s3_aws_profile_parse(text, "role", 1, &p, err,
                                        sizeof err), 0);
  ck_assert_str_eq(p.assume, "role_arn");
  ck_assert_int_eq(s3_aws_profile_parse(text, "proc", 1, &p, err,
                                        sizeof err), 0);
  ck_assert_int_eq(p.process, 1);
  ck_assert_str_eq(p.assume, "");
}
END_TEST

START_TEST(test_aws_parse_errors)
{
  struct s3_aws_profile p;
  char err[200], *big;

  ck_assert_int_eq(s3_aws_profile_parse("key = v\n[default]\n", "default",
                                        0, &p, err, sizeof err), -1);
  ck_assert_str_eq(err, "1: a key before any [section]");
  ck_assert_int_eq(s3_aws_profile_parse("[default]\nregion\n", "default", 0,
                                        &p, err, sizeof err), -1);
  ck_assert_str_eq(err, "2: neither [section] nor key = value");
  ck_assert_int_eq(s3_aws_profile_parse("[default]\n = v\n", "default", 0,
                                        &p, err, sizeof err), -1);
  big = malloc(S3_AWS_VALUE_MAX + 100);
  ck_assert_ptr_nonnull(big);
  strcpy(big, "[default]\nregion = ");
  memset(big + strlen(big), 'x', S3_AWS_VALUE_MAX);
  big[19 + S3_AWS_VALUE_MAX] = '\0';
  ck_assert_int_eq(s3_aws_profile_parse(big, "default", 0, &p, err,
                                        sizeof err), -1);
  ck_assert_str_eq(err, "2: the value of region is too long");
  free(big);
}
END_TEST

static char aws_home[64];

static void
aws_write(const char *name, const char *text)
{
  char path[128];
  FILE *f;

  snprintf(path, sizeof path, "%s/.aws/%s", aws_home, name);
  ck_assert_ptr_nonnull(f = fopen(path, "w"));
  fputs(text, f);
  fclose(f);
}

static void
aws_env_clear(void)
{
  static const char *const vars[] = {
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_DEFAULT_REGION", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", NULL };
  int i;

  for (i = 0; vars[i]; i++)
    unsetenv(vars[i]);
}

/* Resolves, and checks the access key, token ("" none) and region. */
static void
aws_expect(const char *ak, const char *sk, const char *want_ak,
           const char *want_token, const char *want_region)
{
  struct s3_aws_creds c;
  char err[600];

  ck_assert_msg(s3_aws_resolve(ak, sk, NULL, NULL, &c, err, sizeof err) == 0,
                "%s", err);
  ck_assert_str_eq(c.access, want_ak);
  ck_assert_str_eq(c.token ? c.token : "", want_token);
  ck_assert_str_eq(c.region, want_region);
  s3_aws_creds_free(&c);
}

static void
aws_refused(const char *ak, const char *sk, const char *words)
{
  struct s3_aws_creds c;
  char err[600];

  ck_assert_int_eq(s3_aws_resolve(ak, sk, NULL, NULL, &c, err, sizeof err),
                   -1);
  s3_aws_creds_free(&c);
  ck_assert_msg(strstr(err, words) != NULL, "'%s' lacks '%s'", err, words);
}

START_TEST(test_aws_resolve_order)
{
  char dir[80];

  strcpy(aws_home, "/tmp/check_s3_home.XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(aws_home));
  snprintf(dir, sizeof dir, "%s/.aws", aws_home);
  ck_assert_int_eq(mkdir(dir, 0700), 0);
  aws_env_clear();
  setenv("HOME", aws_home, 1);
  aws_refused(NULL, NULL, "no credentials");
  aws_write("config", "[default]\nregion = eu-north-1\n"
            "aws_access_key_id = CONF\naws_secret_access_key = s\n"
            "[profile p]\nregion = ap-east-1\n"
            "aws_access_key_id = CONFP\naws_secret_access_key = s\n"
            "[profile role]\nrole_arn = arn:x\n"
            "[profile proc]\ncredential_process = /bin/false\n");
  aws_expect(NULL, NULL, "CONF", "", "eu-north-1");
  aws_write("credentials", "[default]\naws_access_key_id = CRED\n"
            "aws_secret_access_key = s\naws_session_token = t\n"
            "[p]\naws_access_key_id = CREDP\naws_secret_access_key = s\n"
            "region = sa-east-1\n"
            "[half]\naws_access_key_id = H\n"
            "[proc]\naws_access_key_id = PROCKEYS\n"
            "aws_secret_access_key = s\n");
  aws_expect(NULL, NULL, "CRED", "t", "eu-north-1");
  setenv("AWS_PROFILE", "p", 1);
  aws_expect(NULL, NULL, "CREDP", "", "sa-east-1");   /* credentials' region */
  setenv("AWS_DEFAULT_PROFILE", "default", 1);       /* botocore: it wins */
  aws_expect(NULL, NULL, "CRED", "t", "eu-north-1");
  unsetenv("AWS_DEFAULT_PROFILE");
  setenv("AWS_DEFAULT_REGION", "us-west-1", 1);
  aws_expect(NULL, NULL, "CREDP", "", "us-west-1");
  setenv("AWS_ACCESS_KEY_ID", "ENV", 1);
  setenv("AWS_SECRET_ACCESS_KEY", "s", 1);
  setenv("AWS_SESSION_TOKEN", "envtok", 1);
  aws_expect(NULL, NULL, "ENV", "envtok", "us-west-1");
  aws_expect("KEY", "s", "KEY", "", "us-west-1");     /* no env token */
  aws_expect(NULL, "s", "ENV", "envtok", "us-west-1");/* key from env */
  unsetenv("AWS_SECRET_ACCESS_KEY");
  aws_refused(NULL, NULL, "AWS_ACCESS_KEY_ID is set but not "
              "AWS_SECRET_ACCESS_KEY");
  aws_refused("KEY", NULL, "access-key= is given but not secret-key=");
  unsetenv("AWS_ACCESS_KEY_ID");
  unsetenv("AWS_SESSION_TOKEN");
  setenv("AWS_PROFILE", "missing", 1);
  aws_refused(NULL, NULL, "profile 'missing' (from AWS_PROFILE) is in "
              "neither");
  aws_refused("KEY", "s", "profile 'missing'");        /* as boto3 */
  setenv("AWS_PROFILE", "half", 1);
  aws_refused(NULL, NULL, "profile half has aws_access_key_id but no "
              "aws_secret_access_key");
  setenv("AWS_PROFILE", "role", 1);
  aws_refused(NULL, NULL, "role_arn, which nbdstack does not support");
  aws_expect("KEY", "s", "KEY", "", "us-west-1");      /* keys come first */
  setenv("AWS_PROFILE", "proc", 1);                   /* after the file */
  aws_expect(NULL, NULL, "PROCKEYS", "", "us-west-1");
  aws_write("credentials", "[other]\n");
  aws_refused(NULL, NULL, "credential_process, which nbdstack does not");
  /* Files named by the environment, and the bad line of one. */
  aws_write("elsewhere", "[proc]\naws_access_key_id = ELSE\n"
            "aws_secret_access_key = s\n");
  snprintf(dir, sizeof dir, "%s/.aws/elsewhere", aws_home);
  setenv("AWS_SHARED_CREDENTIALS_FILE", dir, 1);
  aws_expect(NULL, NULL, "ELSE", "", "us-west-1");
  aws_write("elsewhere", "[proc]\njunk\n");
  aws_refused(NULL, NULL, "/.aws/elsewhere:2: neither [section] nor "
              "key = value");
  aws_env_clear();
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
  tcase_add_test(tc, test_aws_parse_credentials_file);
  tcase_add_test(tc, test_aws_parse_config_file);
  tcase_add_test(tc, test_aws_parse_errors);
  tcase_add_test(tc, test_aws_resolve_order);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
