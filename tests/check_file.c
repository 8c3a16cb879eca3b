/* Unit tests for backends/file/ on a temporary regular file under /tmp,
 * driven through the engine's next_<method>() entry points (no sockets).
 * What reached the file is checked with the test's own descriptor (pread,
 * fstat block counts); holes are checked through extents.  Tests of hole
 * punching are skipped if the filesystem under /tmp cannot punch holes.
 * Block devices are not covered (that needs root and a loop device).
 */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "testlib.h"

#define KIB     ((uint32_t)1024)
#define MIB     ((uint32_t)1 << 20)
#define FSIZE   ((uint64_t)8 * MIB + 512)   /* not a multiple of a block */
#define HOLE    (NBD_EXTENT_HOLE | NBD_EXTENT_ZERO)

/* ---- fixture: a temporary file and the stack serving it --------------- */

static char tmp_path[64];
static int tmp_fd = -1;
static struct nbd_export *file_exp;
static struct nbd_ctx *file_ctx;

/* The temporary file is made and removed by the parent process (an
 * unchecked fixture), so a failing test, which ends its child at once,
 * leaves nothing behind in /tmp. */
static void
file_tmp_setup(void)
{
  strcpy(tmp_path, "/tmp/nbdstack-check-file-XXXXXX");
  tmp_fd = mkstemp(tmp_path);
  ck_assert_int_ne(tmp_fd, -1);
  ck_assert_int_eq(ftruncate(tmp_fd, (off_t)FSIZE), 0);
}

static void
file_tmp_teardown(void)
{
  if (tmp_fd != -1) {
    close(tmp_fd);
    unlink(tmp_path);
    tmp_fd = -1;
  }
}

static void
file_stack_teardown(void)
{
  if (file_ctx)
    engine_close(file_ctx);
  engine_export_free(file_exp);
  file_ctx = NULL;
  file_exp = NULL;
}

/* A file export serving path (NULL: file not given), readonly=value unless
 * NULL; NULL with err filled when setup fails. */
static struct nbd_export *
file_export(const char *path, const char *readonly, char *err, size_t errlen)
{
  const struct nbd_layer_ops *ops = registry_find(NBD_LAYER_BACKEND, "file");
  struct nbd_layer *l;
  struct nbd_export *exp;

  ck_assert_ptr_nonnull(ops);
  l = engine_layer_new(ops, "");
  ck_assert_ptr_nonnull(l);
  if ((path && params_set(l, "file", path, err, errlen) == -1) ||
      (readonly && params_set(l, "readonly", readonly, err, errlen) == -1) ||
      engine_layer_setup(l, err, errlen) == -1) {
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
file_open(const char *readonly)
{
  char err[256] = "";

  file_exp = file_export(tmp_path, readonly, err, sizeof err);
  ck_assert_msg(file_exp != NULL, "setup failed: %s", err);
  file_ctx = engine_open(file_exp, 0, NULL, err, sizeof err);
  ck_assert_msg(file_ctx != NULL, "open failed: %s", err);
  return file_ctx;
}

/* True when the filesystem under /tmp can punch holes, probed on a
 * scratch file of its own so the probe cannot touch the served data. */
static int
can_punch(void)
{
  char path[] = "/tmp/nbdstack-check-probe-XXXXXX";
  int fd = mkstemp(path), ok;

  ck_assert_int_ne(fd, -1);
  unlink(path);
  ck_assert_int_eq(ftruncate(fd, 65536), 0);
  ok = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                 4096) == 0;
  close(fd);
  return ok;
}

static void *
xmalloc(size_t n)
{
  void *p = malloc(n);
  ck_assert_ptr_nonnull(p);
  return p;
}

static void
pattern(void *buf, uint32_t count, uint64_t offset)
{
  unsigned char *b = buf;
  uint32_t i;

  for (i = 0; i < count; i++)
    b[i] = (unsigned char)(((offset + i) * 2654435761u >> 11) | 1);
}

static void
write_pattern(struct nbd_ctx *c, uint32_t count, uint64_t offset)
{
  unsigned char *b = xmalloc(count);

  pattern(b, count, offset);
  ck_assert_int_eq(next_pwrite(c, b, count, offset, 0), 0);
  free(b);
}

/* Checks [offset, +count) through the stack: the pattern, or zeros. */
static void
assert_data(struct nbd_ctx *c, uint32_t count, uint64_t offset, int zero)
{
  unsigned char *got = xmalloc(count), *want = xmalloc(count);

  memset(got, 0xee, count);
  if (zero)
    memset(want, 0, count);
  else
    pattern(want, count, offset);
  ck_assert_int_eq(next_pread(c, got, count, offset, 0), 0);
  ck_assert_msg(memcmp(got, want, count) == 0, "%s differs in [%llu, +%u)",
                zero ? "zeros" : "data", (unsigned long long)offset, count);
  free(got);
  free(want);
}

static blkcnt_t
file_blocks(void)
{
  struct stat sb;

  ck_assert_int_eq(fstat(tmp_fd, &sb), 0);
  return sb.st_blocks;
}

/* The extent covering offset, from an extents call over the whole file. */
static struct nbd_extent
extent_at(struct nbd_ctx *c, uint64_t offset)
{
  struct nbd_extents *e = nbd_extents_new(0, FSIZE);
  struct nbd_extent x = { 0, 0, 0xff };
  size_t i;

  ck_assert_ptr_nonnull(e);
  ck_assert_int_eq(next_extents(c, (uint32_t)FSIZE, 0, 0, e), 0);
  ck_assert_uint_gt(e->n, 0);
  ck_assert_uint_eq(e->v[e->n - 1].offset + e->v[e->n - 1].length, FSIZE);
  for (i = 0; i < e->n; i++)
    if (e->v[i].offset <= offset && offset - e->v[i].offset < e->v[i].length)
      x = e->v[i];
  nbd_extents_free(e);
  return x;
}

/* The fd of this process open on tmp_path, found through /proc. */
static int
find_served_fd(void)
{
  DIR *d = opendir("/proc/self/fd");
  struct dirent *de;
  char link[300], target[256];
  int fd = -1;
  ssize_t n;

  ck_assert_ptr_nonnull(d);
  while ((de = readdir(d)) != NULL) {
    int cand = atoi(de->d_name);
    if (cand == tmp_fd || de->d_name[0] == '.')
      continue;
    snprintf(link, sizeof link, "/proc/self/fd/%s", de->d_name);
    n = readlink(link, target, sizeof target - 1);
    if (n > 0 && (target[n] = '\0', strcmp(target, tmp_path) == 0))
      fd = cand;
  }
  closedir(d);
  ck_assert_int_ne(fd, -1);
  return fd;
}

/* ---- setup ------------------------------------------------------------ */

START_TEST(test_reports_the_file_size)
{
  struct nbd_ctx *c = file_open(NULL);

  ck_assert_int_eq(next_get_size(c), (int64_t)FSIZE);
}
END_TEST

START_TEST(test_missing_file_fails_setup_naming_the_path)
{
  char err[256] = "";

  ck_assert_ptr_null(file_export("/tmp/nbdstack-no-such-file/disk.img", NULL,
                                 err, sizeof err));
  ck_assert_ptr_nonnull(strstr(err, "/tmp/nbdstack-no-such-file/disk.img"));
  ck_assert_ptr_nonnull(strstr(err, strerror(ENOENT)));
}
END_TEST

START_TEST(test_directory_is_refused)
{
  char err[256] = "";

  ck_assert_ptr_null(file_export("/tmp", "yes", err, sizeof err));
  ck_assert_ptr_nonnull(strstr(err, "'/tmp'"));
  ck_assert_ptr_nonnull(strstr(err, "not a regular file or block device"));
}
END_TEST

START_TEST(test_requires_file)
{
  const struct nbd_layer_ops *ops = registry_find(NBD_LAYER_BACKEND, "file");
  char err[256] = "";

  ck_assert_ptr_null(file_export(NULL, NULL, err, sizeof err));
  ck_assert_ptr_nonnull(strstr(err, "file"));
  /* "file disk.img" on a command line sets file. */
  ck_assert_str_eq(ops->magic_param, "file");
}
END_TEST

START_TEST(test_opens_read_write_and_close_on_exec)
{
  int fd;

  file_open(NULL);
  fd = find_served_fd();
  ck_assert_int_eq(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDWR);
  ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
}
END_TEST

START_TEST(test_readonly_opens_read_only_and_refuses_writes)
{
  struct nbd_ctx *c = file_open("yes");
  unsigned char b[512] = { 1 };
  int fd = find_served_fd();

  ck_assert_int_eq(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDONLY);
  ck_assert_int_eq(next_can_write(c), 0);
  ck_assert_int_eq(next_pwrite(c, b, sizeof b, 0, 0), -EPERM);
  ck_assert_int_eq(next_trim(c, 4096, 0, 0), -EPERM);
  ck_assert_int_eq(next_zero(c, 4096, 0, 0), -EPERM);
  assert_data(c, 4096, 0, 1);
}
END_TEST

START_TEST(test_advertises_regular_file_capabilities)
{
  struct nbd_ctx *c = file_open(NULL);

  ck_assert_int_eq(next_can_write(c), 1);
  ck_assert_int_eq(next_can_flush(c), 1);
  ck_assert_int_eq(next_can_trim(c), 1);
  ck_assert_int_eq(next_can_zero(c), NBD_ZERO_NATIVE);
  ck_assert_int_eq(next_can_fast_zero(c), 1);
  ck_assert_int_eq(next_can_fua(c), NBD_FUA_EMULATE);
  ck_assert_int_eq(next_can_cache(c), NBD_CACHE_NATIVE);
  ck_assert_int_eq(next_can_extents(c), 1);
  ck_assert_int_eq(next_can_multi_conn(c), 1);
}
END_TEST

/* ---- reading and writing --------------------------------------------- */

START_TEST(test_reads_and_writes_through_to_the_file)
{
  struct nbd_ctx *c = file_open(NULL);
  const uint64_t off = 12345;
  const uint32_t len = 200000;
  unsigned char *got = xmalloc(len), *want = xmalloc(len);

  assert_data(c, MIB, 0, 1);
  write_pattern(c, len, off);
  assert_data(c, len, off, 0);
  pattern(want, len, off);
  ck_assert_int_eq(pread(tmp_fd, got, len, (off_t)off), (ssize_t)len);
  ck_assert_mem_eq(got, want, len);
  /* The last, partial block. */
  write_pattern(c, 1000, FSIZE - 1000);
  assert_data(c, 1000, FSIZE - 1000, 0);
  free(got);
  free(want);
}
END_TEST

START_TEST(test_read_past_a_shrunk_end_of_file_fails_with_eio)
{
  struct nbd_ctx *c = file_open(NULL);
  unsigned char *b = xmalloc(8192);

  ck_assert_int_eq(ftruncate(tmp_fd, 4096), 0);
  ck_assert_int_eq(next_pread(c, b, 8192, 0, 0), -EIO);
  ck_assert_int_eq(next_pread(c, b, 4096, 0, 0), 0);
  free(b);
}
END_TEST

START_TEST(test_flush_fua_and_cache_succeed)
{
  struct nbd_ctx *c = file_open(NULL);
  unsigned char b[4096];

  pattern(b, sizeof b, 65536);
  ck_assert_int_eq(next_pwrite(c, b, sizeof b, 65536, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_flush(c, 0), 0);
  ck_assert_int_eq(next_cache(c, MIB, 0, 0), 0);
  assert_data(c, sizeof b, 65536, 0);
}
END_TEST

/* ---- trim, zero, extents ---------------------------------------------- */

START_TEST(test_extents_of_a_sparse_file)
{
  struct nbd_ctx *c = file_open(NULL);
  struct nbd_extent x;

  if (!can_punch())
    return;                     /* no hole support: nothing to see */
  x = extent_at(c, 0);
  ck_assert_uint_eq(x.length, FSIZE);
  ck_assert_uint_eq(x.type, HOLE);
  write_pattern(c, 4096, MIB);
  ck_assert_int_eq(next_flush(c, 0), 0);
  x = extent_at(c, MIB);
  ck_assert_uint_eq(x.offset, MIB);
  ck_assert_uint_eq(x.length, 4096);
  ck_assert_uint_eq(x.type, 0);
  x = extent_at(c, 0);
  ck_assert_uint_eq(x.length, MIB);
  ck_assert_uint_eq(x.type, HOLE);
  x = extent_at(c, FSIZE - 1);
  ck_assert_uint_eq(x.offset, MIB + 4096);
  ck_assert_uint_eq(x.type, HOLE);
}
END_TEST

START_TEST(test_trim_punches_a_hole)
{
  struct nbd_ctx *c = file_open(NULL);
  struct nbd_extent x;
  blkcnt_t before;

  if (!can_punch())
    return;
  write_pattern(c, MIB, 0);
  ck_assert_int_eq(next_flush(c, 0), 0);
  before = file_blocks();
  ck_assert_int_eq(next_trim(c, 256 * KIB, 256 * KIB, 0), 0);
  assert_data(c, 256 * KIB, 0, 0);
  assert_data(c, 256 * KIB, 256 * KIB, 1);
  assert_data(c, 512 * KIB, 512 * KIB, 0);
  ck_assert_int_lt(file_blocks(), before);
  x = extent_at(c, 300 * KIB);
  ck_assert_uint_eq(x.offset, 256 * KIB);
  ck_assert_uint_eq(x.length, 256 * KIB);
  ck_assert_uint_eq(x.type, HOLE);
}
END_TEST

START_TEST(test_zero_reads_back_zeros_and_punches)
{
  struct nbd_ctx *c = file_open(NULL);
  blkcnt_t before;

  write_pattern(c, MIB, 0);
  ck_assert_int_eq(next_flush(c, 0), 0);
  before = file_blocks();
  ck_assert_int_eq(next_zero(c, 300000, 100001, 0), 0);   /* unaligned */
  assert_data(c, 100001, 0, 0);
  assert_data(c, 300000, 100001, 1);
  assert_data(c, MIB - 400001, 400001, 0);
  if (can_punch()) {
    ck_assert_int_lt(file_blocks(), before);
    ck_assert_uint_eq(extent_at(c, 200000).type, HOLE);
  }
}
END_TEST

START_TEST(test_zero_with_no_hole_zeros_and_keeps_blocks)
{
  struct nbd_ctx *c = file_open(NULL);
  blkcnt_t before;

  write_pattern(c, MIB, 0);
  ck_assert_int_eq(next_flush(c, 0), 0);
  before = file_blocks();
  ck_assert_int_eq(next_zero(c, 256 * KIB, 256 * KIB, NBD_CMD_FLAG_NO_HOLE), 0);
  ck_assert_int_eq(next_flush(c, 0), 0);
  assert_data(c, 256 * KIB, 0, 0);
  assert_data(c, 256 * KIB, 256 * KIB, 1);
  assert_data(c, 512 * KIB, 512 * KIB, 0);
  ck_assert_int_ge(file_blocks(), before);
}
END_TEST

START_TEST(test_fast_zero_succeeds_on_a_regular_file)
{
  struct nbd_ctx *c = file_open(NULL);
  int r;

  write_pattern(c, MIB, 0);
  r = next_zero(c, 512 * KIB, 4096, NBD_CMD_FLAG_FAST_ZERO);
  /* ENOTSUP only where the filesystem can neither punch nor zero. */
  if (can_punch())
    ck_assert_int_eq(r, 0);
  if (r == 0) {
    assert_data(c, 4096, 0, 0);
    assert_data(c, 512 * KIB, 4096, 1);
    assert_data(c, MIB - 512 * KIB - 4096, 512 * KIB + 4096, 0);
  } else
    ck_assert_int_eq(r, -ENOTSUP);
}
END_TEST

/* ---- suite ------------------------------------------------------------- */

static void
add(Suite *s, const char *name, const TTest *t)
{
  TCase *tc = tcase_create(name);

  tcase_add_unchecked_fixture(tc, file_tmp_setup, file_tmp_teardown);
  tcase_add_checked_fixture(tc, NULL, file_stack_teardown);
  tcase_add_test(tc, t);
  suite_add_tcase(s, tc);
}

static Suite *
file_suite(void)
{
  Suite *s = suite_create("file");

  if (!testlib_require_layer(NBD_LAYER_BACKEND, "file"))
    return s;

  add(s, "reports the file size", test_reports_the_file_size);
  add(s, "missing file fails setup naming the path",
      test_missing_file_fails_setup_naming_the_path);
  add(s, "directory is refused", test_directory_is_refused);
  add(s, "requires file", test_requires_file);
  add(s, "opens read-write and close-on-exec",
      test_opens_read_write_and_close_on_exec);
  add(s, "readonly opens read-only and refuses writes",
      test_readonly_opens_read_only_and_refuses_writes);
  add(s, "advertises regular file capabilities",
      test_advertises_regular_file_capabilities);
  add(s, "reads and writes through to the file",
      test_reads_and_writes_through_to_the_file);
  add(s, "read past a shrunk end of file fails with EIO",
      test_read_past_a_shrunk_end_of_file_fails_with_eio);
  add(s, "flush, FUA and cache succeed", test_flush_fua_and_cache_succeed);
  add(s, "extents of a sparse file", test_extents_of_a_sparse_file);
  add(s, "trim punches a hole", test_trim_punches_a_hole);
  add(s, "zero reads back zeros and punches",
      test_zero_reads_back_zeros_and_punches);
  add(s, "zero with NO_HOLE zeros and keeps blocks",
      test_zero_with_no_hole_zeros_and_keeps_blocks);
  add(s, "fast zero succeeds on a regular file",
      test_fast_zero_succeeds_on_a_regular_file);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(file_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
