/* Unit tests for backends/data/: the data= parser (many expressions and
 * the bytes they make, checked against what nbdkit 1.32 serves for the
 * same text; refusals with the offset of the first bad token), raw=,
 * base64=, size=, and the disk's writes, trims and extents, driven through
 * the engine's next_<method>() entry points with no sockets.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "testlib.h"

#define HOLE (NBD_EXTENT_HOLE | NBD_EXTENT_ZERO)

static struct nbd_export *data_exp;
static struct nbd_ctx *data_ctx;

/* A data export from "key", "value" pairs (NULL-terminated); NULL with
 * err filled when a key or setup refuses. */
static struct nbd_export *
data_export(const char *const *kv, char *err, size_t errlen)
{
  const struct nbd_layer_ops *ops = registry_find(NBD_LAYER_BACKEND, "data");
  struct nbd_layer *l;
  struct nbd_export *exp;

  ck_assert_ptr_nonnull(ops);
  l = engine_layer_new(ops, "");
  ck_assert_ptr_nonnull(l);
  for (; kv[0]; kv += 2)
    if (params_set(l, kv[0], kv[1], err, errlen) == -1) {
      engine_layer_free(l);
      return NULL;
    }
  if (engine_layer_setup(l, err, errlen) == -1) {
    engine_layer_free(l);
    return NULL;
  }
  exp = engine_export_new("");
  ck_assert_ptr_nonnull(exp);
  engine_export_push(exp, l);
  ck_assert_int_eq(engine_export_finish(exp, err, errlen), 0);
  return exp;
}

static struct nbd_ctx *
data_open_kv(const char *const *kv)
{
  char err[512] = "";

  data_exp = data_export(kv, err, sizeof err);
  ck_assert_msg(data_exp != NULL, "setup failed: %s", err);
  data_ctx = engine_open(data_exp, 0, NULL, err, sizeof err);
  ck_assert_msg(data_ctx != NULL, "open failed: %s", err);
  return data_ctx;
}

static struct nbd_ctx *
data_open(const char *text)
{
  const char *kv[] = { "data", text, NULL };
  return data_open_kv(kv);
}

static void
data_teardown(void)
{
  if (data_ctx)
    engine_close(data_ctx);
  engine_export_free(data_exp);
  data_ctx = NULL;
  data_exp = NULL;
}

/* The disk is exactly want[0..len). */
static void
assert_disk(struct nbd_ctx *c, const char *what, const void *want,
            size_t len)
{
  unsigned char *got = malloc(len + 1);

  ck_assert_ptr_nonnull(got);
  ck_assert_msg(c->size == (int64_t)len, "%s: size %lld, want %zu", what,
                (long long)c->size, len);
  ck_assert_int_eq(next_pread(c, got, (uint32_t)len, 0, 0), 0);
  ck_assert_msg(memcmp(got, want, len) == 0, "%s: bytes differ", what);
  free(got);
}

static unsigned char
byte_at(struct nbd_ctx *c, uint64_t offset)
{
  unsigned char b = 0xee;

  ck_assert_int_eq(next_pread(c, &b, 1, offset, 0), 0);
  return b;
}

/* The setup error of kv, which must fail. */
static void
assert_refused_kv(const char *const *kv, const char *want)
{
  char err[512] = "";
  struct nbd_export *exp = data_export(kv, err, sizeof err);

  ck_assert_msg(exp == NULL, "accepted: %s=%s", kv[0], kv[1]);
  ck_assert_msg(strstr(err, want) != NULL, "%s=%s: error '%s' lacks '%s'",
                kv[0], kv[1], err, want);
}

static void
assert_refused(const char *text, const char *want)
{
  const char *kv[] = { "data", text, NULL };
  assert_refused_kv(kv, want);
}

/* ---- the parser: expression -> bytes ---------------------------------- */

#define B(s) s, sizeof(s) - 1

/* Each checked with nbdkit 1.32.5 (`nbdkit data '...'` through nbdcopy). */
static const struct {
  const char *expr;
  const char *want;
  size_t len;
} data_cases[] = {
  { "1 2 3", B("\1\2\3") },
  { "0x55 0xAA 0377 017", B("\x55\xaa\xff\x0f") },
  { "1 2 @0 3", B("\3\2") },
  { "1 2 3 @1", B("\1\2\3") },
  { "1 @100", B("\1\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
                "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
                "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
                "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0") },
  { "@10 @-5", B("\0\0\0\0\0\0\0\0\0\0") },
  { "@+0x4", B("\0\0\0\0") },
  { "@010 1", B("\0\0\0\0\0\0\0\0\1") },
  { "1 @+3", B("\1\0\0\0") },
  { "1 @-1", B("\1") },
  { "@^512", B("") },
  { "1 @^8 2", B("\1\0\0\0\0\0\0\0\2") },
  { "1 2*3", B("\1\2\2\2") },
  { "1*2*3", B("\1\1\1\1\1\1") },
  { "1 *  2", B("\1\1") },
  { "0xff*0x3", B("\xff\xff\xff") },
  { "7*0", B("") },
  { "( 1 2 ) * 0", B("") },
  { "( )", B("") },
  { "( 1 @4 )*2", B("\1\0\0\0\1\0\0\0") },
  { "( @4 1 @0 )*2", B("\0\0\0\0\1\0\0\0\0\1") },
  { "( 1 2 @-1 )*3", B("\1\2\1\2\1\2") },
  { "( ( 1 ) 2 ) * 2", B("\1\2\1\2") },
  { "1 2 3 @0 ( @2 9 )", B("\0\0\x09") },
  { "(1)(2)", B("\1\2") },
  { "\"ab\"*2", B("abab") },
  { "\"a\\n\\t\\\\\\\"b\"", B("a\n\t\\\"b") },
  /* nbdkit 1.32: \xNN, and an unknown escape is the character itself */
  { "\"\\x41\\xff\\x00\\xAb\"", B("A\xff\0\xab") },
  { "\"\\e\\q\\?\"", B("eq?") },
  /* slices, as nbdkit 1.32 reads them */
  { "\"abcdef\"[1:3]", B("bc") },
  { "\"abcdef\" [2:]", B("cdef") },
  { "\"abcdef\"[:2]", B("ab") },
  { "\"abcdef\"[:]", B("abcdef") },
  { "\"abcdef\"[3:3]", B("") },
  { "\"abcdef\"[1:3][1:]", B("c") },
  { "\"ab\"*2[1:3]", B("ba") },
  { "(1 2 3)[1:]*2", B("\2\3\2\3") },
  { "(@4 1)[2:]", B("\0\0\1") },
  { "1 [0:1] 1[0:1] le16:1 [1:2]", B("\1\1\0") },
  { "\"abcdef\"[0x1:0x3] 9", B("bc\x09") },
  { "\"\"", B("") },
  { "1 # a comment ( ) $x\n2", B("\1\2") },
  { "le16:0x1234 be32:1", B("\x34\x12\0\0\0\1") },
  { "be16:0xaa55 le32:0xffffffff", B("\xaa\x55\xff\xff\xff\xff") },
  { "le64:0x0102030405060708", B("\x08\x07\x06\x05\x04\x03\x02\x01") },
  { "be64:0xffffffffffffffff", B("\xff\xff\xff\xff\xff\xff\xff\xff") },
  { "0 1 2 3 @^0x8 @-2 le16:0xaa55", B("\0\1\2\3\0\0\x55\xaa") },
};

START_TEST(test_expressions_make_nbdkits_bytes)
{
  const char *expr = data_cases[_i].expr;

  assert_disk(data_open(expr), expr, data_cases[_i].want,
              data_cases[_i].len);
}
END_TEST

START_TEST(test_mbr_signature_at_0x1fe)
{
  struct nbd_ctx *c = data_open("0 1 2 3 @0x1fe 0x55 0xaa");

  ck_assert_int_eq(c->size, 512);
  ck_assert_int_eq(byte_at(c, 3), 3);
  ck_assert_int_eq(byte_at(c, 4), 0);
  ck_assert_int_eq(byte_at(c, 0x1fe), 0x55);
  ck_assert_int_eq(byte_at(c, 0x1ff), 0xaa);
}
END_TEST

START_TEST(test_repeated_pattern_fills_4096_bytes)
{
  struct nbd_ctx *c = data_open(" ( 0x55 0xAA )*2048 ");
  unsigned char buf[4096];
  int i;

  ck_assert_int_eq(c->size, 4096);
  ck_assert_int_eq(next_pread(c, buf, sizeof buf, 0, 0), 0);
  for (i = 0; i < 4096; i++)
    ck_assert_int_eq(buf[i], i % 2 ? 0xaa : 0x55);
}
END_TEST

/* A group over 1 MiB stays a store of its own and is copied whole, its
 * zeros overwriting what was below. */
START_TEST(test_large_group_is_copied_with_its_zeros)
{
  struct nbd_ctx *c = data_open("5*0x300000 @0 ( @0x180000 9 )*1 "
                                "@0x200000 ( 7 @0x100001 )*2");

  ck_assert_int_eq(c->size, 0x400002);
  ck_assert_int_eq(byte_at(c, 0x10), 0);
  ck_assert_int_eq(byte_at(c, 0x180000), 9);
  ck_assert_int_eq(byte_at(c, 0x180001), 5);
  ck_assert_int_eq(byte_at(c, 0x200000), 7);
  ck_assert_int_eq(byte_at(c, 0x200001), 0);
  ck_assert_int_eq(byte_at(c, 0x300001), 7);
}
END_TEST

START_TEST(test_far_offset_is_sparse)
{
  struct nbd_ctx *c = data_open("1 @0x100000000 2");
  struct nbd_extents *e = nbd_extents_new(0, 1 << 20);

  ck_assert_int_eq(c->size, ((int64_t)1 << 32) + 1);
  ck_assert_int_eq(byte_at(c, 0), 1);
  ck_assert_int_eq(byte_at(c, (uint64_t)1 << 32), 2);
  ck_assert_int_eq(next_extents(c, 1 << 20, 0, 0, e), 0);
  ck_assert_uint_eq(e->n, 2);
  ck_assert_uint_eq(e->v[0].type, 0);
  ck_assert_uint_eq(e->v[1].type, HOLE);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_file_is_read_in_whole)
{
  char path[] = "/tmp/check_data.XXXXXX", text[64];
  int fd = mkstemp(path);

  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, "ABC", 3), 3);
  close(fd);
  snprintf(text, sizeof text, "1 <%s*2 ( <%s )", path, path);
  assert_disk(data_open(text), text, B("\1ABCABCABC"));
  unlink(path);
}
END_TEST

/* ---- refusals, with the offset of the first bad token ------------------ */

static const struct {
  const char *expr;
  const char *err;
} data_refusals[] = {
  { "1 2 $x", "data: at offset 4: unknown token '$x'" },
  { "1\n\\name", "data: at offset 2: unknown token '\\name'" },
  { "1 -> \\n", "data: at offset 2: unknown token '->'" },
  { "1x", "data: at offset 0: unknown token '1x'" },
  { "0x", "data: at offset 0: unknown token '0x'" },
  { "09", "data: at offset 0: unknown token '09'" },
  { "  256", "data: at offset 2: byte 256 is out of range (0..255)" },
  { "1 )", "data: at offset 2: unmatched ')'" },
  { "1 ( 2 ( 3 )", "data: at offset 2: unmatched '('" },
  { "*2", "data: at offset 0: '*' must follow" },
  { "@4*2", "data: at offset 2: '*' must follow" },
  { "1 * x", "data: at offset 4: unknown token 'x'" },
  { "1 *", "data: at offset 3: expected a number" },
  { "be16:65536", "data: at offset 5: be16 word 65536 is out of range" },
  { "le32:0x100000000", "data: at offset 5: le32 word" },
  { "le64:-1", "data: at offset 5: negative numbers are not allowed" },
  { "le64:0x10000000000000000", "data: at offset 5: number" },
  { "le8:1", "data: at offset 0: unknown token 'le8:1'" },
  { "@ 4", "data: at offset 0: '@' needs a number" },
  { "@+", "data: at offset 0: '@+' needs a number" },
  { "@^3", "data: at offset 0: @^3: the alignment must be a power of 2" },
  { "@^0", "power of 2" },
  { "1 @-2", "data: at offset 2: @-2 goes before the start" },
  { "( 1 @-2 )", "data: at offset 4: @-2 goes before the start" },
  { "1 \"abc", "data: at offset 2: unterminated string" },
  { "\"\\x4\"", "data: at offset 1: \\xNN must be followed by exactly two" },
  { "\"\\x4g\"", "data: at offset 1: \\xNN must be followed by exactly two" },
  { "\"\\101\"", "data: at offset 1: unsupported escape '\\1'" },
  { "\"\\u00e9\"", "data: at offset 1: unsupported escape '\\u'" },
  { "\"abcdef\"[4:2]", "data: at offset 8: [4:2] does not describe a valid slice" },
  { "\"abcdef\"[0:7]", "data: at offset 8: [0:7] does not describe a valid slice" },
  { "\"ab\"[a:b]", "data: at offset 4: [N:M] must be numbers" },
  { "\"ab\"[1:2", "data: at offset 4: [N:M] must be numbers" },
  { "[1:2]", "data: at offset 0: '[N:M]' must follow" },
  { "(1)*2000000[0:5]", "a slice of a repeat over 1 MiB is not supported" },
  { "<(echo hi)", "data: at offset 0: '<(SCRIPT)' is not supported" },
  { "1 <", "data: at offset 2: '<' needs a file name" },
  { "<" "/nonexistent/x", "data: at offset 0: /nonexistent/x: No such file" },
  { "@0x8000000000000000", "data: at offset 0: offset past 2^63-1" },
  { "@0x7fffffffffffffff @+1", "data: at offset 20: offset past 2^63-1" },
  { "@0x7fffffffffffffff 1", "data: at offset 20: data past 2^63-1" },
  { "( 1 2 )*0x4000000000000000", "data: at offset 0: data past 2^63-1" },
  { "1*0x8000000000000000*2", "repeat count too large" },
};

START_TEST(test_refuses_with_offset)
{
  assert_refused(data_refusals[_i].expr, data_refusals[_i].err);
}
END_TEST

START_TEST(test_refuses_deep_nesting)
{
  char text[300];
  int i;

  for (i = 0; i < 100; i++)
    text[i] = '(';
  for (; i < 200; i++)
    text[i] = ')';
  text[i] = '\0';
  assert_refused(text, "data: at offset 64: groups nested deeper than 64");
}
END_TEST

/* ---- the other keys ---------------------------------------------------- */

START_TEST(test_raw_is_literal)
{
  const char *kv[] = { "raw", "Hello, world!", NULL };
  assert_disk(data_open_kv(kv), "raw", B("Hello, world!"));
}
END_TEST

START_TEST(test_base64_is_decoded)
{
  const char *kv[] = { "base64", "aGVsbG8gbmJka2l0IHVzZXI=", NULL };
  const char *kv2[] = { "base64", "MTIz", "size", "1M", NULL };
  struct nbd_ctx *c;

  assert_disk(data_open_kv(kv), "base64", B("hello nbdkit user"));
  data_teardown();
  c = data_open_kv(kv2);
  ck_assert_int_eq(c->size, 1 << 20);
  ck_assert_int_eq(byte_at(c, 2), '3');
  ck_assert_int_eq(byte_at(c, 3), 0);
}
END_TEST

START_TEST(test_base64_refuses_bad_characters)
{
  const char *kv[] = { "base64", "MT$z", NULL };
  const char *kv2[] = { "base64", "MTIzN", NULL };
  const char *kv3[] = { "base64", "MQ==MQ", NULL };

  assert_refused_kv(kv, "base64: at offset 2: invalid character '$'");
  assert_refused_kv(kv2, "base64: at offset 5: truncated input");
  assert_refused_kv(kv3, "base64: at offset 4: invalid character 'M'");
}
END_TEST

START_TEST(test_size_pads_and_cuts)
{
  const char *pad[] = { "data", "1 2 3", "size", "6", NULL };
  const char *cut[] = { "data", "1 2 3", "size", "2", NULL };
  struct nbd_ctx *c;

  assert_disk(data_open_kv(pad), "padded", B("\1\2\3\0\0\0"));
  data_teardown();
  assert_disk(data_open_kv(cut), "cut", B("\1\2"));
  data_teardown();
  /* Cut data does not come back when the cut range is read after a
   * write: it is gone, not hidden. */
  c = data_open_kv(cut);
  ck_assert_int_eq(next_pwrite(c, "\7", 1, 1, 0), 0);
  assert_disk(c, "cut then written", B("\1\7"));
}
END_TEST

START_TEST(test_needs_exactly_one_source)
{
  const char *none[] = { "size", "1M", NULL };
  const char *two[] = { "data", "1", "raw", "x", NULL };
  const char *big[] = { "data", "1", "size", "9223372036854775808", NULL };

  assert_refused_kv(none, "exactly one of data=, raw= or base64=");
  assert_refused_kv(two, "exactly one of data=, raw= or base64=");
  assert_refused_kv(big, "too large");
}
END_TEST

/* ---- the disk ---------------------------------------------------------- */

START_TEST(test_writes_read_back_and_trim_zeroes)
{
  struct nbd_ctx *c = data_open("1 2 3 @65536");
  unsigned char buf[40000];
  struct nbd_extents *e;

  memset(buf, 0xab, sizeof buf);
  ck_assert_int_eq(next_pwrite(c, buf, sizeof buf, 20000, 0), 0);
  ck_assert_int_eq(byte_at(c, 2), 3);
  ck_assert_int_eq(byte_at(c, 19999), 0);
  ck_assert_int_eq(byte_at(c, 20000), 0xab);
  ck_assert_int_eq(byte_at(c, 59999), 0xab);
  ck_assert_int_eq(byte_at(c, 60000), 0);
  /* Trim the second page whole: a hole again, and zeros. */
  ck_assert_int_eq(next_trim(c, 32768, 32768, 0), 0);
  ck_assert_int_eq(byte_at(c, 40000), 0);
  ck_assert_int_eq(byte_at(c, 32767), 0xab);
  e = nbd_extents_new(0, 65536);
  ck_assert_int_eq(next_extents(c, 65536, 0, 0, e), 0);
  ck_assert_uint_eq(e->n, 2);
  ck_assert_uint_eq(e->v[1].offset, 32768);
  ck_assert_uint_eq(e->v[1].type, HOLE);
  nbd_extents_free(e);
  /* A partial zero keeps the page and zeroes only its range. */
  ck_assert_int_eq(next_zero(c, 10, 1, 0), 0);
  ck_assert_int_eq(byte_at(c, 0), 1);
  ck_assert_int_eq(byte_at(c, 1), 0);
  ck_assert_int_eq(byte_at(c, 20000), 0xab);
}
END_TEST

START_TEST(test_connections_share_the_disk)
{
  struct nbd_ctx *c = data_open("0*16"), *c2;
  char err[256];

  c2 = engine_open(data_exp, 0, NULL, err, sizeof err);
  ck_assert_ptr_nonnull(c2);
  ck_assert_int_eq(next_pwrite(c, "xy", 2, 14, 0), 0);
  ck_assert_int_eq(byte_at(c2, 15), 'y');
  ck_assert_int_eq(next_can_multi_conn(c2), 1);
  engine_close(c2);
}
END_TEST

START_TEST(test_refuses_requests_past_the_end)
{
  struct nbd_ctx *c = data_open("1 2 3 4");
  const struct nbd_layer *l = c->layer;
  unsigned char buf[8];

  /* Straight to the layer, past the engine's own checks. */
  ck_assert_int_eq(l->ops->pread(c, NULL, buf, 2, 3, 0), -EINVAL);
  ck_assert_int_eq(l->ops->pwrite(c, NULL, buf, 1, UINT64_MAX, 0), -EINVAL);
  ck_assert_int_eq(l->ops->trim(c, NULL, 0xffffffffu, 4, 0), -EINVAL);
  ck_assert_int_eq(l->ops->pread(c, NULL, buf, 0, 4, 0), 0);
}
END_TEST

static void
add(Suite *s, const char *name, const TTest *t, int n)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, NULL, data_teardown);
  if (n)
    tcase_add_loop_test(tc, t, 0, n);
  else
    tcase_add_test(tc, t);
  suite_add_tcase(s, tc);
}

static Suite *
data_suite(void)
{
  Suite *s = suite_create("data");

  if (!testlib_require_layer(NBD_LAYER_BACKEND, "data"))
    return s;
  add(s, "expressions make nbdkit's bytes", test_expressions_make_nbdkits_bytes,
      (int)(sizeof data_cases / sizeof data_cases[0]));
  add(s, "MBR signature at 0x1fe", test_mbr_signature_at_0x1fe, 0);
  add(s, "repeated pattern fills 4096 bytes",
      test_repeated_pattern_fills_4096_bytes, 0);
  add(s, "large group is copied with its zeros",
      test_large_group_is_copied_with_its_zeros, 0);
  add(s, "far offset is sparse", test_far_offset_is_sparse, 0);
  add(s, "file is read in whole", test_file_is_read_in_whole, 0);
  add(s, "refuses with the offset of the bad token", test_refuses_with_offset,
      (int)(sizeof data_refusals / sizeof data_refusals[0]));
  add(s, "refuses deep nesting", test_refuses_deep_nesting, 0);
  add(s, "raw is literal", test_raw_is_literal, 0);
  add(s, "base64 is decoded", test_base64_is_decoded, 0);
  add(s, "base64 refuses bad characters", test_base64_refuses_bad_characters,
      0);
  add(s, "size pads and cuts", test_size_pads_and_cuts, 0);
  add(s, "needs exactly one source", test_needs_exactly_one_source, 0);
  add(s, "writes read back and trim zeroes",
      test_writes_read_back_and_trim_zeroes, 0);
  add(s, "connections share the disk", test_connections_share_the_disk, 0);
  add(s, "refuses requests past the end", test_refuses_requests_past_the_end,
      0);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(data_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
