/* Unit tests for src/util.c. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layer.h"

/* Every alignment and length up to 200, with one non-zero byte at every
 * position (or none), and non-zero guard bytes just outside the range. */
START_TEST(test_is_zero_every_alignment_length_and_position)
{
  unsigned char b[300];
  size_t off, len;
  long pos;

  for (off = 0; off < 16; off++)
    for (len = 0; len < 200; len++)
      for (pos = -1; pos < (long)len; pos++) {
        memset(b, 0, sizeof b);
        if (pos >= 0)
          b[off + (size_t)pos] = 0x80;
        b[off + len] = 7;
        if (off)
          b[off - 1] = 9;
        ck_assert_int_eq(nbd_is_zero(b + off, len), pos < 0);
      }
}
END_TEST

START_TEST(test_is_zero_large_buffers)
{
  size_t n = 1 << 20;
  unsigned char *b = calloc(1, n);

  ck_assert_ptr_nonnull(b);
  ck_assert_int_eq(nbd_is_zero(b, n), 1);
  b[n - 1] = 1;
  ck_assert_int_eq(nbd_is_zero(b, n), 0);
  ck_assert_int_eq(nbd_is_zero(b, n - 1), 1);
  b[n / 2] = 1;
  ck_assert_int_eq(nbd_is_zero(b, n - 1), 0);
  free(b);
}
END_TEST

START_TEST(test_pwrite_full_writes_more_than_one_chunk)
{
  size_t len = (1u << 20) + 12345;
  unsigned char *a = malloc(len), *b = malloc(len);
  char path[] = "/tmp/check_util.XXXXXX";
  int fd = mkstemp(path);
  size_t i;

  ck_assert_int_ge(fd, 0);
  unlink(path);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  for (i = 0; i < len; i++)
    a[i] = (unsigned char)(i * 7 + i / 4099);
  ck_assert_int_eq(nbd_pwrite_full(fd, a, len, 4096), 0);
  ck_assert_int_eq(lseek(fd, 0, SEEK_END), (off_t)(len + 4096));
  ck_assert_int_eq(nbd_pread_full(fd, b, len, 4096), 0);
  ck_assert(memcmp(a, b, len) == 0);
  /* Past the end of the file: -EIO, not a short read. */
  ck_assert_int_eq(nbd_pread_full(fd, b, 8192, len), -EIO);
  close(fd);
  ck_assert_int_eq(nbd_pwrite_full(fd, a, 10, 0), -EBADF);
  free(a);
  free(b);
}
END_TEST

START_TEST(test_bufpool_reuses_buffers_up_to_its_limit)
{
  struct nbd_bufpool p;
  void *a, *b, *big;

  nbd_bufpool_init(&p, 65536);
  a = nbd_bufpool_get(&p, 65536);
  b = nbd_bufpool_get(&p, 100);         /* smaller: still a whole buffer */
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_ptr_ne(a, b);
  memset(b, 1, 65536);
  nbd_bufpool_put(&p, a, 65536);
  nbd_bufpool_put(&p, b, 100);
  ck_assert_uint_eq(p.n, 2);
  ck_assert_ptr_eq(nbd_bufpool_get(&p, 4096), b);   /* last in, first out */
  ck_assert_ptr_eq(nbd_bufpool_get(&p, 65536), a);
  big = nbd_bufpool_get(&p, 65537);     /* over size: plain malloc */
  ck_assert_ptr_nonnull(big);
  memset(big, 2, 65537);
  nbd_bufpool_put(&p, big, 65537);
  ck_assert_uint_eq(p.n, 0);            /* not kept */
  nbd_bufpool_put(&p, a, 65536);
  nbd_bufpool_put(&p, b, 65536);
  nbd_bufpool_put(&p, NULL, 65536);
  ck_assert_uint_eq(p.n, 2);
  nbd_bufpool_destroy(&p);
}
END_TEST

START_TEST(test_bufpool_keeps_at_most_4_mib)
{
  struct nbd_bufpool p;
  void *v[4];
  int i;

  nbd_bufpool_init(&p, (size_t)2 << 20);
  for (i = 0; i < 4; i++)
    v[i] = nbd_bufpool_get(&p, (size_t)2 << 20);
  for (i = 0; i < 4; i++)
    nbd_bufpool_put(&p, v[i], (size_t)2 << 20);
  ck_assert_uint_eq(p.n, 2);
  nbd_bufpool_destroy(&p);
  nbd_bufpool_init(&p, (size_t)32 << 20);
  ck_assert_uint_eq(p.keep, 1);
  nbd_bufpool_destroy(&p);
}
END_TEST

/* ---- nbd_pieces_each ---- */

struct piece {
  int tag;
  uint64_t start, len;
};

/* Lengths 0, 10, 0, 5, 20, 0: empty pieces first, between and last. */
static const struct piece pieces[] = {
  { 1, 0, 0 }, { 2, 0, 10 }, { 3, 10, 0 }, { 4, 10, 5 }, { 5, 15, 20 },
  { 6, 35, 0 },
};
#define PIECES_SIZE 35

struct calls {
  int n, fail_at;
  size_t i[16];
  uint64_t poff[16], len[16], done[16];
};

static int
record(void *ctx, size_t i, uint64_t poff, uint64_t len, uint64_t done,
       void *arg)
{
  struct calls *c = arg;

  ck_assert_ptr_eq(ctx, pieces);
  ck_assert_int_lt(c->n, 16);
  c->i[c->n] = i;
  c->poff[c->n] = poff;
  c->len[c->n] = len;
  c->done[c->n] = done;
  return ++c->n == c->fail_at ? -EIO : 0;
}

/* The piece that holds byte b, the slow way. */
static size_t
holder(uint64_t b)
{
  size_t i;

  for (i = 0; i < sizeof pieces / sizeof pieces[0]; i++)
    if (b >= pieces[i].start && b - pieces[i].start < pieces[i].len)
      return i;
  ck_abort_msg("no piece holds %llu", (unsigned long long)b);
  return 0;
}

START_TEST(test_pieces_each_every_range)
{
  const struct nbd_pieces p = NBD_PIECES(pieces, 6, struct piece, start, len,
                                         PIECES_SIZE);
  uint64_t off, count, b;
  int k;

  for (off = 0; off <= PIECES_SIZE; off++)
    for (count = 0; off + count <= PIECES_SIZE; count++) {
      struct calls c = { 0, 0, { 0 }, { 0 }, { 0 }, { 0 } };
      uint64_t done = 0;

      ck_assert_int_eq(nbd_pieces_each(&p, count, off, record,
                                       (void *)pieces, &c), 0);
      /* Every byte once, in order, each in the piece that holds it, and
       * no call for an empty piece or of length 0. */
      for (k = 0; k < c.n; k++) {
        ck_assert_uint_eq(c.done[k], done);
        ck_assert_uint_gt(c.len[k], 0);
        ck_assert_uint_le(c.poff[k] + c.len[k], pieces[c.i[k]].len);
        for (b = 0; b < c.len[k]; b++)
          ck_assert_uint_eq(holder(off + done + b), c.i[k]);
        ck_assert_uint_eq(pieces[c.i[k]].start + c.poff[k], off + done);
        done += c.len[k];
      }
      ck_assert_uint_eq(done, count);
    }
}
END_TEST

START_TEST(test_pieces_each_bounds_and_errors)
{
  const struct nbd_pieces p = NBD_PIECES(pieces, 6, struct piece, start, len,
                                         PIECES_SIZE);
  struct calls c = { 0, 0, { 0 }, { 0 }, { 0 }, { 0 } };

  ck_assert_int_eq(nbd_pieces_each(&p, 1, PIECES_SIZE, record,
                                   (void *)pieces, &c), -EINVAL);
  ck_assert_int_eq(nbd_pieces_each(&p, 0, PIECES_SIZE + 1, record,
                                   (void *)pieces, &c), -EINVAL);
  ck_assert_int_eq(nbd_pieces_each(&p, UINT64_MAX, 1, record,
                                   (void *)pieces, &c), -EINVAL);
  ck_assert_int_eq(nbd_pieces_each(&p, 2, UINT64_MAX, record,
                                   (void *)pieces, &c), -EINVAL);
  ck_assert_int_eq(c.n, 0);
  /* The first error stops the walk and is the answer. */
  c.fail_at = 2;
  ck_assert_int_eq(nbd_pieces_each(&p, PIECES_SIZE, 0, record,
                                   (void *)pieces, &c), -EIO);
  ck_assert_int_eq(c.n, 2);
  ck_assert_uint_eq(c.i[0], 1);
  ck_assert_uint_eq(c.i[1], 3);
}
END_TEST

int
main(void)
{
  Suite *s = suite_create("util");
  TCase *tc = tcase_create("nbd_is_zero");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_is_zero_every_alignment_length_and_position);
  tcase_add_test(tc, test_is_zero_large_buffers);
  suite_add_tcase(s, tc);
  tc = tcase_create("files and buffers");
  tcase_add_test(tc, test_pwrite_full_writes_more_than_one_chunk);
  tcase_add_test(tc, test_bufpool_reuses_buffers_up_to_its_limit);
  tcase_add_test(tc, test_bufpool_keeps_at_most_4_mib);
  suite_add_tcase(s, tc);
  tc = tcase_create("pieces");
  tcase_add_test(tc, test_pieces_each_every_range);
  tcase_add_test(tc, test_pieces_each_bounds_and_errors);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
