/* Unit tests for filters/blocksize.c over the recording backend: requests
 * split at maxdata and maxlen, unaligned heads and tails read whole,
 * read-modify-written or ignored (trim), FUA on every piece, extents
 * passed through, the size truncated to minblock, bad keys refused, a
 * seeded random sequence of small requests against a model, and
 * concurrent read-modify-writes of one block (over the memory backend,
 * which unlike the recorder is safe between threads).
 */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

#define KIB 1024u
#define MIB (1024 * KIB)

static struct testlib_caps bs_caps;
static struct testlib_stack bs_s;
static unsigned char bs_buf[256 * KIB], bs_want[256 * KIB];

static void
bs_setup(void)
{
  testlib_caps_default(&bs_caps);
  bs_caps.size = 4 * MIB;
}

static void
bs_teardown(void)
{
  testlib_stack_free(&bs_s);
}

static struct nbd_ctx *
bs_open(const char *filters)
{
  testlib_stack(&bs_s, filters, &bs_caps);
  return bs_s.top;
}

START_TEST(test_splits_reads_and_writes_at_maxdata)
{
  struct nbd_ctx *top = bs_open("blocksize maxdata=64k");

  testlib_pattern(bs_s.rec->ram, 4 * MIB, 0);
  ck_assert_int_eq(next_pread(top, bs_buf, 160 * KIB, 4096, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 4096+65536 flags=0; "
                   "pread 69632+65536 flags=0; pread 135168+32768 flags=0");
  testlib_pattern(bs_want, 160 * KIB, 4096);
  ck_assert_mem_eq(bs_buf, bs_want, 160 * KIB);
  testlib_log_clear();
  testlib_pattern(bs_buf, 128 * KIB, 7);
  ck_assert_int_eq(next_pwrite(top, bs_buf, 128 * KIB, MIB, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 1048576+65536 flags=0; "
                   "pwrite 1114112+65536 flags=0");
  ck_assert_mem_eq(bs_s.rec->ram + MIB, bs_buf, 128 * KIB);
}
END_TEST

/* Native FUA below: each piece carries it, so every piece is durable
 * when the reply goes. */
START_TEST(test_fua_on_every_piece)
{
  struct nbd_ctx *top = bs_open("blocksize minblock=512 maxdata=4k");

  memset(bs_buf, 0xab, 8192);
  ck_assert_int_eq(next_pwrite(top, bs_buf, 8192, 100, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(),
                   "pread 0+512 flags=0; pwrite 0+512 flags=FUA; "
                   "pwrite 512+4096 flags=FUA; pwrite 4608+3584 flags=FUA; "
                   "pread 8192+512 flags=0; pwrite 8192+512 flags=FUA");
  ck_assert(nbd_is_zero(bs_s.rec->ram, 100));
  ck_assert_int_eq(bs_s.rec->ram[100], 0xab);
  ck_assert_int_eq(bs_s.rec->ram[8291], 0xab);
  ck_assert_int_eq(bs_s.rec->ram[8292], 0);
}
END_TEST

/* The layer below insists on 4K (the engine refuses anything else
 * there); the filter defaults minblock to it and advertises 1. */
START_TEST(test_unaligned_read_reads_whole_blocks)
{
  struct nbd_ctx *top;
  uint32_t min, pref, max;

  bs_caps.min_block = bs_caps.pref_block = 4096;
  bs_caps.max_block = 64 * KIB;
  top = bs_open("blocksize");
  ck_assert_int_eq(next_block_size(top, &min, &pref, &max), 0);
  ck_assert_uint_eq(min, 1);
  ck_assert_uint_eq(pref, 4096);
  ck_assert_uint_eq(max, 0xffffffffu);
  testlib_pattern(bs_s.rec->ram, 4 * MIB, 0);
  ck_assert_int_eq(next_pread(top, bs_buf, 10, 4090, 0), 0);
  ck_assert_str_eq(testlib_log(),
                   "pread 0+4096 flags=0; pread 4096+4096 flags=0");
  testlib_pattern(bs_want, 10, 4090);
  ck_assert_mem_eq(bs_buf, bs_want, 10);
  /* maxdata defaults to the maximum below. */
  testlib_log_clear();
  ck_assert_int_eq(next_pread(top, bs_buf, 128 * KIB, 0, 0), 0);
  ck_assert_str_eq(testlib_log(),
                   "pread 0+65536 flags=0; pread 65536+65536 flags=0");
}
END_TEST

START_TEST(test_unaligned_write_read_modify_writes)
{
  struct nbd_ctx *top;

  bs_caps.min_block = bs_caps.pref_block = 4096;
  bs_caps.max_block = 0xffffffffu;
  top = bs_open("blocksize");
  testlib_pattern(bs_s.rec->ram, 4 * MIB, 0);
  memcpy(bs_want, bs_s.rec->ram, 16384);
  memset(bs_buf, 0x5a, 5000);
  memset(bs_want + 3000, 0x5a, 5000);
  ck_assert_int_eq(next_pwrite(top, bs_buf, 5000, 3000, 0), 0);
  ck_assert_str_eq(testlib_log(),
                   "pread 0+4096 flags=0; pwrite 0+4096 flags=0; "
                   "pread 4096+4096 flags=0; pwrite 4096+4096 flags=0");
  ck_assert_mem_eq(bs_s.rec->ram, bs_want, 16384);
}
END_TEST

START_TEST(test_zero_unaligned_head_tail_by_rmw)
{
  struct nbd_ctx *top;

  bs_caps.min_block = bs_caps.pref_block = 4096;
  bs_caps.max_block = 0xffffffffu;
  top = bs_open("blocksize maxlen=8k");
  memset(bs_s.rec->ram, 0xff, 64 * KIB);
  ck_assert_int_eq(next_zero(top, 20000, 100, 0), 0);
  ck_assert_str_eq(testlib_log(),
                   "pread 0+4096 flags=0; pwrite 0+4096 flags=0; "
                   "zero 4096+8192 flags=0; zero 12288+4096 flags=0; "
                   "pread 16384+4096 flags=0; pwrite 16384+4096 flags=0");
  ck_assert_int_eq(bs_s.rec->ram[99], 0xff);
  ck_assert(nbd_is_zero(bs_s.rec->ram + 100, 20000));
  ck_assert_int_eq(bs_s.rec->ram[20100], 0xff);
  /* A fast zero cannot read-modify-write. */
  testlib_log_clear();
  ck_assert_int_eq(next_zero(top, 100, 100, NBD_CMD_FLAG_FAST_ZERO),
                   -ENOTSUP);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_int_eq(next_zero(top, 8192, 8192, NBD_CMD_FLAG_FAST_ZERO), 0);
  /* ... nor be split: over maxlen it is refused before anything is done */
  testlib_log_clear();
  ck_assert_int_eq(next_zero(top, 12288, 8192, NBD_CMD_FLAG_FAST_ZERO),
                   -ENOTSUP);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_trim_ignores_unaligned_head_tail)
{
  struct nbd_ctx *top = bs_open("blocksize minblock=4k maxlen=8k");

  ck_assert_int_eq(next_trim(top, 20000, 100, 0), 0);
  ck_assert_str_eq(testlib_log(),
                   "trim 4096+8192 flags=0; trim 12288+4096 flags=0");
  testlib_log_clear();
  ck_assert_int_eq(next_trim(top, 100, 100, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_cache_rounded_out_and_split)
{
  struct nbd_ctx *top = bs_open("blocksize minblock=4k maxlen=8k");

  ck_assert_int_eq(next_cache(top, 10000, 100, 0), 0);
  ck_assert_str_eq(testlib_log(),
                   "cache 0+8192 flags=0; cache 8192+4096 flags=0");
}
END_TEST

/* Extents are the layer below's, asked over whole blocks and clipped. */
START_TEST(test_extents_pass_through)
{
  struct nbd_ctx *top;
  struct nbd_extents *e;

  bs_caps.min_block = bs_caps.pref_block = 4096;
  bs_caps.max_block = 0xffffffffu;
  top = bs_open("blocksize");
  testlib_recorder_map(bs_s.rec, 0, 8192, 0);
  testlib_recorder_map(bs_s.rec, 8192, 4 * MIB - 8192,
                       NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  e = nbd_extents_new(100, 10100);
  ck_assert_ptr_nonnull(e);
  ck_assert_int_eq(next_extents(top, 10000, 100, 0, e), 0);
  ck_assert_str_eq(testlib_log(), "extents 0+12288 flags=0");
  ck_assert_uint_eq(e->n, 2);
  ck_assert_uint_eq(e->v[0].offset, 100);
  ck_assert_uint_eq(e->v[0].length, 8092);
  ck_assert_uint_eq(e->v[0].type, 0);
  ck_assert_uint_eq(e->v[1].offset, 8192);
  ck_assert_uint_eq(e->v[1].type, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_size_truncated_to_minblock)
{
  struct nbd_ctx *top;

  bs_caps.size = 3 * MIB + 1000;
  top = bs_open("blocksize minblock=4k");
  ck_assert_int_eq(next_get_size(top), 3 * MIB);
  ck_assert_int_eq(next_pread(top, bs_buf, 1, 3 * MIB, 0), -EINVAL);
}
END_TEST

START_TEST(test_bad_keys_refused)
{
  static const char *const bad[][2] = {
    { "minblock=3", "power of 2 from 1 to 65536" },
    { "minblock=128k", "power of 2 from 1 to 65536" },
    { "minblock=0", "power of 2 from 1 to 65536" },
    { "minblock=4k maxdata=6k", "multiple of minblock (4096)" },
    { "maxdata=8G", "to 4294967295" },
    { "minblock=512 maxlen=1000", "multiple of minblock (512)" },
    { "maxlen=0", "from 1 to 4294967295" },
  };
  char err[256];
  size_t i;

  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    struct nbd_layer *l = testlib_filter_new("blocksize", bad[i][0], err,
                                             sizeof err);
    ck_assert_msg(l == NULL, "%s accepted", bad[i][0]);
    ck_assert_msg(strstr(err, bad[i][1]) != NULL, "%s: '%s' lacks '%s'",
                  bad[i][0], err, bad[i][1]);
  }
}
END_TEST

/* Small reads, writes, zeroes and trims at random places leave the disk
 * as the same requests would without the filter (the recorder leaves
 * trimmed bytes alone, so the model does too). */
START_TEST(test_random_small_requests_match_model)
{
  struct nbd_ctx *top;
  unsigned char *model = calloc(1, 256 * KIB);
  unsigned seed = 12345;
  int i;

  ck_assert_ptr_nonnull(model);
  bs_caps.size = 256 * KIB;
  bs_caps.min_block = bs_caps.pref_block = 512;
  bs_caps.max_block = 8192;
  top = bs_open("blocksize minblock=4k");
  for (i = 0; i < 20000; i++) {
    uint32_t op = (uint32_t)rand_r(&seed) % 4;
    uint32_t len = i % 3 ? 1 : 1 + (uint32_t)rand_r(&seed) % 9000;
    uint64_t off = (uint64_t)rand_r(&seed) % (256 * KIB - len);
    unsigned char v = (unsigned char)rand_r(&seed);

    switch (op) {
    case 0:
      ck_assert_int_eq(next_pread(top, bs_buf, len, off, 0), 0);
      ck_assert_mem_eq(bs_buf, model + off, len);
      break;
    case 1:
      memset(bs_buf, v, len);
      ck_assert_int_eq(next_pwrite(top, bs_buf, len, off, 0), 0);
      memset(model + off, v, len);
      break;
    case 2:
      ck_assert_int_eq(next_zero(top, len, off, 0), 0);
      memset(model + off, 0, len);
      break;
    default:
      ck_assert_int_eq(next_trim(top, len, off, 0), 0);
      break;
    }
  }
  ck_assert_mem_eq(bs_s.rec->ram, model, 256 * KIB);
  free(model);
}
END_TEST

/* ---- concurrent read-modify-writes of one block ------------------------ */

#define BS_WRITERS 16
#define BS_ROUNDS  3000

struct bs_writer {
  struct nbd_ctx *top;
  unsigned idx;
  int err;
};

static void *
bs_writer_run(void *arg)
{
  struct bs_writer *w = arg;
  unsigned i;

  for (i = 0; i < BS_ROUNDS && w->err == 0; i++) {
    unsigned char v = (unsigned char)(i * 7 + w->idx + 1);
    w->err = next_pwrite(w->top, &v, 1, 8192 + w->idx * 97, 0);
  }
  return NULL;
}

START_TEST(test_concurrent_rmw_loses_no_write)
{
  const struct nbd_layer_ops *mem;
  struct nbd_export *exp;
  struct nbd_layer *f, *b;
  struct bs_writer w[BS_WRITERS];
  pthread_t t[BS_WRITERS];
  struct nbd_ctx *top;
  unsigned char got[4096];
  char err[256];
  unsigned i;

  if (!testlib_require_layer(NBD_LAYER_BACKEND, "memory"))
    return;
  mem = registry_find(NBD_LAYER_BACKEND, "memory");
  exp = engine_export_new("t");
  f = testlib_filter_new("blocksize", "minblock=4k", err, sizeof err);
  ck_assert_msg(f != NULL, "%s", err);
  b = engine_layer_new(mem, "t");
  ck_assert_int_eq(params_set(b, "size", "1M", err, sizeof err), 0);
  ck_assert_msg(engine_layer_setup(b, err, sizeof err) == 0, "%s", err);
  engine_export_push(exp, f);
  engine_export_push(exp, b);
  ck_assert_int_eq(engine_export_finish(exp, err, sizeof err), 0);
  top = engine_open(exp, 0, NULL, err, sizeof err);
  ck_assert_msg(top != NULL, "%s", err);
  for (i = 0; i < BS_WRITERS; i++) {
    w[i].top = top;
    w[i].idx = i;
    w[i].err = 0;
    ck_assert_int_eq(pthread_create(&t[i], NULL, bs_writer_run, &w[i]), 0);
  }
  for (i = 0; i < BS_WRITERS; i++) {
    pthread_join(t[i], NULL);
    ck_assert_int_eq(w[i].err, 0);
  }
  ck_assert_int_eq(next_pread(top, got, 4096, 8192, 0), 0);
  for (i = 0; i < BS_WRITERS; i++)
    ck_assert_uint_eq(got[i * 97],
                      (unsigned char)((BS_ROUNDS - 1) * 7 + i + 1));
  ck_assert_int_eq(engine_close(top), 0);
  engine_export_free(exp);
}
END_TEST

static TCase *
bs_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, bs_setup, bs_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
blocksize_suite(void)
{
  Suite *s = suite_create("blocksize");

  if (!testlib_require_layer(NBD_LAYER_FILTER, "blocksize"))
    return s;
  tcase_add_test(bs_tcase(s, "splits at maxdata"),
                 test_splits_reads_and_writes_at_maxdata);
  tcase_add_test(bs_tcase(s, "FUA on every piece"), test_fua_on_every_piece);
  tcase_add_test(bs_tcase(s, "unaligned read reads whole blocks"),
                 test_unaligned_read_reads_whole_blocks);
  tcase_add_test(bs_tcase(s, "unaligned write read-modify-writes"),
                 test_unaligned_write_read_modify_writes);
  tcase_add_test(bs_tcase(s, "zero head and tail by read-modify-write"),
                 test_zero_unaligned_head_tail_by_rmw);
  tcase_add_test(bs_tcase(s, "trim ignores unaligned head and tail"),
                 test_trim_ignores_unaligned_head_tail);
  tcase_add_test(bs_tcase(s, "cache rounded out and split"),
                 test_cache_rounded_out_and_split);
  tcase_add_test(bs_tcase(s, "extents pass through"),
                 test_extents_pass_through);
  tcase_add_test(bs_tcase(s, "size truncated to minblock"),
                 test_size_truncated_to_minblock);
  tcase_add_test(bs_tcase(s, "bad keys refused"), test_bad_keys_refused);
  tcase_add_test(bs_tcase(s, "random small requests match a model"),
                 test_random_small_requests_match_model);
  tcase_add_test(bs_tcase(s, "concurrent read-modify-writes lose no write"),
                 test_concurrent_rmw_loses_no_write);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(blocksize_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
