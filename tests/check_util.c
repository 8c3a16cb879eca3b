/* Unit tests for src/util.c. */
#include <check.h>
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
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
