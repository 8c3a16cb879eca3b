/* Unit tests for filters/cache over the recording backend: what reaches
 * the layer below and when, in each mode (reads kept with cache-on-read,
 * writeback until FLUSH, FUA and writethrough at once, unsafe never), a
 * failed writeback retried by the next flush, read-modify-write of partial
 * blocks and of the last short block, zero and trim never overwritten by
 * a later writeback, extents with dirty blocks as data, eviction under
 * cache-max-size, the cache shared by two connections, and the startup
 * errors.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

#define KIB 1024ull
#define MIB (1024 * KIB)
#define BLK (64 * KIB)

static struct testlib_caps cache_caps;
static struct testlib_stack cache_s;
static unsigned char cache_buf[4 * MIB], cache_want[4 * MIB];

static void
cache_setup(void)
{
  testlib_caps_default(&cache_caps);
  cache_caps.size = 4 * MIB;
}

static void
cache_teardown(void)
{
  testlib_stack_free(&cache_s);
}

/* Opens the stack and fills the disk below with the pattern. */
static struct nbd_ctx *
cache_open(const char *filters)
{
  testlib_stack(&cache_s, filters, &cache_caps);
  if (cache_s.rec->ram)
    testlib_pattern(cache_s.rec->ram, (uint32_t)cache_caps.size, 0);
  return cache_s.top;
}

/* buf must read back as the pattern, except [woff, woff+wlen) == 0x77. */
static void
cache_assert_data(struct nbd_ctx *top, uint64_t off, uint32_t len,
                  uint64_t woff, uint64_t wlen)
{
  uint64_t i;

  ck_assert_int_eq(next_pread(top, cache_buf, len, off, 0), 0);
  testlib_pattern(cache_want, len, off);
  for (i = woff; i < woff + wlen; i++)
    if (i >= off && i < off + len)
      cache_want[i - off] = 0x77;
  ck_assert_mem_eq(cache_buf, cache_want, len);
}

/* ---- reads -------------------------------------------------------------------- */

START_TEST(test_read_twice_reads_below_once)
{
  struct nbd_ctx *top = cache_open("cache cache-on-read=true");

  cache_assert_data(top, 8192, 4096, 0, 0);
  ck_assert_str_eq(testlib_log(), "pread 0+65536 flags=0");
  testlib_log_clear();
  cache_assert_data(top, 8192, 4096, 0, 0);
  cache_assert_data(top, 0, 65536, 0, 0);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_read_spanning_cached_and_uncached_blocks)
{
  struct nbd_ctx *top = cache_open("cache cache-on-read=true");

  cache_assert_data(top, BLK + 10, 100, 0, 0);
  testlib_log_clear();
  cache_assert_data(top, 100, 3 * BLK, 0, 0);
  ck_assert_str_eq(testlib_log(), "pread 0+65536 flags=0; "
                   "pread 131072+131072 flags=0");
}
END_TEST

/* Not keeping the block, it reads only what was asked for. */
START_TEST(test_read_without_cache_on_read_goes_below_each_time)
{
  struct nbd_ctx *top = cache_open("cache");

  cache_assert_data(top, 4096, 4096, 0, 0);
  cache_assert_data(top, 4096, 4096, 0, 0);
  ck_assert_str_eq(testlib_log(), "pread 4096+4096 flags=0; "
                   "pread 4096+4096 flags=0");
}
END_TEST

/* ... except when below could not take those bytes as they are. */
START_TEST(test_read_without_cache_on_read_keeps_below_aligned)
{
  struct nbd_ctx *top;

  cache_caps.min_block = 512;
  cache_caps.pref_block = 4096;
  cache_caps.max_block = 1u << 20;
  top = cache_open("cache");
  cache_assert_data(top, 4096, 4096, 0, 0);
  cache_assert_data(top, 100, 1000, 0, 0);
  ck_assert_str_eq(testlib_log(), "pread 4096+4096 flags=0; "
                   "pread 0+65536 flags=0");
}
END_TEST

START_TEST(test_cache_on_read_path_switches_at_run_time)
{
  char dir[] = "/tmp/check_cache.XXXXXX", flag[64], spec[128];
  FILE *f;
  struct nbd_ctx *top;

  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(flag, sizeof flag, "%s/on", dir);
  snprintf(spec, sizeof spec, "cache cache-on-read=%s", flag);
  top = cache_open(spec);
  cache_assert_data(top, 0, 512, 0, 0);
  cache_assert_data(top, 0, 512, 0, 0);
  ck_assert_str_eq(testlib_log(), "pread 0+512 flags=0; "
                   "pread 0+512 flags=0");
  testlib_log_clear();
  ck_assert_ptr_nonnull(f = fopen(flag, "w"));
  fclose(f);
  cache_assert_data(top, 0, 512, 0, 0);
  cache_assert_data(top, 0, 512, 0, 0);
  ck_assert_str_eq(testlib_log(), "pread 0+65536 flags=0");
  unlink(flag);
  rmdir(dir);
}
END_TEST

START_TEST(test_failed_read_below_is_not_cached)
{
  struct nbd_ctx *top = cache_open("cache cache-on-read=true");

  cache_s.rec->fail[NBD_METHOD_PREAD] = -EIO;
  ck_assert_int_eq(next_pread(top, cache_buf, 512, 0, 0), -EIO);
  cache_s.rec->fail[NBD_METHOD_PREAD] = 0;
  cache_assert_data(top, 0, 512, 0, 0);
  ck_assert_str_eq(testlib_log(), "pread 0+65536 flags=0; "
                   "pread 0+65536 flags=0");
}
END_TEST

START_TEST(test_cache_command_prefetches)
{
  struct nbd_ctx *top = cache_open("cache");

  ck_assert_int_eq(next_cache(top, 2 * BLK, 100, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+196608 flags=0");
  testlib_log_clear();
  cache_assert_data(top, 0, 3 * BLK, 0, 0);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

/* ---- writeback ------------------------------------------------------------------- */

START_TEST(test_writeback_write_stays_in_cache_until_flush)
{
  struct nbd_ctx *top = cache_open("cache");

  memset(cache_buf, 0x77, BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, BLK, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  testlib_pattern(cache_want, BLK, BLK);
  ck_assert_mem_eq(cache_s.rec->ram + BLK, cache_want, BLK);
  cache_assert_data(top, 0, 3 * BLK, BLK, BLK);
  ck_assert_str_eq(testlib_log(), "pread 0+65536 flags=0; "
                   "pread 131072+65536 flags=0");
  testlib_log_clear();

  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 65536+65536 flags=0; flush");
  memset(cache_want, 0x77, BLK);
  ck_assert_mem_eq(cache_s.rec->ram + BLK, cache_want, BLK);
  testlib_log_clear();
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "flush");
}
END_TEST

START_TEST(test_writeback_flush_merges_contiguous_dirty_blocks)
{
  struct nbd_ctx *top = cache_open("cache");

  memset(cache_buf, 0x77, 3 * BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 2 * BLK, 0, 0), 0);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, 2 * BLK, 0), 0);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, 10 * BLK, 0), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+196608 flags=0; "
                   "pwrite 655360+65536 flags=0; flush");
}
END_TEST

START_TEST(test_writeback_fua_write_goes_below_with_fua)
{
  struct nbd_ctx *top = cache_open("cache");

  memset(cache_buf, 0x77, BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+65536 flags=FUA");
  ck_assert_mem_eq(cache_s.rec->ram, cache_buf, BLK);
  testlib_log_clear();
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "flush");
}
END_TEST

START_TEST(test_writeback_fua_writes_whole_dirty_block)
{
  struct nbd_ctx *top = cache_open("cache");

  memset(cache_buf, 0x77, BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 100, 0, 0), 0);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 100, 1000, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+65536 flags=0; "
                   "pwrite 0+65536 flags=FUA");
  testlib_pattern(cache_want, BLK, 0);
  memset(cache_want, 0x77, 100);
  memset(cache_want + 1000, 0x77, 100);
  ck_assert_mem_eq(cache_s.rec->ram, cache_want, BLK);
}
END_TEST

START_TEST(test_fua_emulated_below_is_write_then_flush)
{
  struct nbd_ctx *top;

  cache_caps.can_fua = NBD_FUA_EMULATE;
  top = cache_open("cache");
  ck_assert_int_eq(next_can_fua(top), NBD_FUA_NATIVE);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+65536 flags=0; flush");
}
END_TEST

START_TEST(test_writeback_failure_fails_flush_and_is_retried)
{
  struct nbd_ctx *top = cache_open("cache");

  memset(cache_buf, 0x77, BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, 0, 0), 0);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, 4 * BLK, 0), 0);
  cache_s.rec->fail[NBD_METHOD_PWRITE] = -EIO;
  testlib_stderr_begin();
  ck_assert_int_eq(next_flush(top, 0), -EIO);
  free(testlib_stderr_end());
  /* Both blocks tried, and the layer below still flushed. */
  ck_assert_str_eq(testlib_log(), "pwrite 0+65536 flags=0; "
                   "pwrite 262144+65536 flags=0; flush");
  cache_s.rec->fail[NBD_METHOD_PWRITE] = 0;
  testlib_log_clear();
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+65536 flags=0; "
                   "pwrite 262144+65536 flags=0; flush");
  ck_assert_mem_eq(cache_s.rec->ram, cache_buf, BLK);
  ck_assert_mem_eq(cache_s.rec->ram + 4 * BLK, cache_buf, BLK);
}
END_TEST

START_TEST(test_failed_flush_below_fails_flush)
{
  struct nbd_ctx *top = cache_open("cache");

  cache_s.rec->fail[NBD_METHOD_FLUSH] = -EIO;
  ck_assert_int_eq(next_flush(top, 0), -EIO);
}
END_TEST

/* ---- writethrough and unsafe -------------------------------------------------------- */

START_TEST(test_writethrough_writes_below_at_once)
{
  struct nbd_ctx *top = cache_open("cache cache=writethrough");

  memset(cache_buf, 0x77, BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, BLK, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 65536+65536 flags=0");
  ck_assert_mem_eq(cache_s.rec->ram + BLK, cache_buf, BLK);
  testlib_log_clear();
  cache_assert_data(top, BLK, BLK, BLK, BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 10, 5, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+65536 flags=0; "
                   "pwrite 0+65536 flags=FUA; flush");
}
END_TEST

START_TEST(test_unsafe_ignores_flush_and_fua)
{
  struct nbd_ctx *top = cache_open("cache cache=unsafe");

  memset(cache_buf, 0x77, BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  cache_assert_data(top, 0, BLK, 0, BLK);
  testlib_pattern(cache_want, BLK, 0);
  ck_assert_mem_eq(cache_s.rec->ram, cache_want, BLK);
}
END_TEST

/* ---- partial blocks ------------------------------------------------------------------ */

START_TEST(test_partial_write_reads_block_below_first)
{
  struct nbd_ctx *top = cache_open("cache");

  memset(cache_buf, 0x77, 100);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 100, 70000, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 65536+65536 flags=0");
  testlib_log_clear();
  cache_assert_data(top, 69950, 200, 70000, 100);
  cache_assert_data(top, BLK, BLK, 70000, 100);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 65536+65536 flags=0; flush");
  testlib_pattern(cache_want, BLK, BLK);
  memset(cache_want + 70000 - BLK, 0x77, 100);
  ck_assert_mem_eq(cache_s.rec->ram + BLK, cache_want, BLK);
}
END_TEST

START_TEST(test_unaligned_write_over_three_blocks)
{
  struct nbd_ctx *top = cache_open("cache");

  memset(cache_buf, 0x77, 2 * BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 2 * BLK, BLK / 2, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+65536 flags=0; "
                   "pread 131072+65536 flags=0");
  cache_assert_data(top, 0, 4 * BLK, BLK / 2, 2 * BLK);
  ck_assert_int_eq(next_flush(top, 0), 0);
  testlib_pattern(cache_want, 4 * BLK, 0);
  memset(cache_want + BLK / 2, 0x77, 2 * BLK);
  ck_assert_mem_eq(cache_s.rec->ram, cache_want, 4 * BLK);
}
END_TEST

START_TEST(test_small_write_inside_one_block_reads_it_once)
{
  struct nbd_ctx *top = cache_open("cache");

  ck_assert_int_eq(next_pwrite(top, cache_buf, 10, 0, 0), 0);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 10, 100, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+65536 flags=0");
}
END_TEST

/* Into blocks already cached, a partial write changes only its bytes:
 * nothing is read, below or in the cache, and after FLUSH below holds the
 * old bytes around the new ones (clean and dirty blocks, and a write
 * whose first block is cached and last is not). */
START_TEST(test_partial_write_into_cached_blocks_reads_nothing)
{
  struct nbd_ctx *top = cache_open("cache");

  memset(cache_buf, 0x77, 2 * BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 10, 0, 0), 0);     /* dirty */
  ck_assert_int_eq(next_flush(top, 0), 0);                         /* clean */
  ck_assert_int_eq(next_pwrite(top, cache_buf, 10, BLK + 5, 0), 0);
  testlib_log_clear();
  ck_assert_int_eq(next_pwrite(top, cache_buf, 100, 1000, 0), 0);  /* clean */
  ck_assert_int_eq(next_pwrite(top, cache_buf, 100, BLK + 500, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  /* First block cached, last (block 2) not: only the last is read. */
  ck_assert_int_eq(next_pwrite(top, cache_buf, 2 * BLK, 3000, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 131072+65536 flags=0");
  testlib_log_clear();
  testlib_pattern(cache_want, 4 * BLK, 0);
  memset(cache_want, 0x77, 10);
  memset(cache_want + 1000, 0x77, 100);
  memset(cache_want + 3000, 0x77, 2 * BLK);     /* covers BLK+5, BLK+500 */
  ck_assert_int_eq(next_pread(top, cache_buf, 4 * BLK, 0, 0), 0);
  ck_assert_mem_eq(cache_buf, cache_want, 4 * BLK);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_mem_eq(cache_s.rec->ram, cache_want, 4 * BLK);
}
END_TEST

START_TEST(test_last_partial_block)
{
  struct nbd_ctx *top;
  uint64_t size = MIB + 5000;

  cache_caps.size = (int64_t)size;
  top = cache_open("cache cache-on-read=yes");
  ck_assert_int_eq(next_get_size(top), (int64_t)size);
  cache_assert_data(top, size - 300, 300, 0, 0);
  ck_assert_str_eq(testlib_log(), "pread 1048576+5000 flags=0");
  memset(cache_buf, 0x77, 100);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 100, size - 100, 0), 0);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 100, MIB, 0), 0);
  cache_assert_data(top, MIB + 100, 4900, size - 100, 100);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 10, size, 0), -ENOSPC);
  testlib_log_clear();
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 1048576+5000 flags=0; flush");
  testlib_pattern(cache_want, 5000, MIB);
  memset(cache_want, 0x77, 100);
  memset(cache_want + 4900, 0x77, 100);
  ck_assert_mem_eq(cache_s.rec->ram + MIB, cache_want, 5000);
}
END_TEST

START_TEST(test_whole_disk_write_ending_in_partial_block)
{
  struct nbd_ctx *top;
  uint32_t size = 3 * BLK + 512;

  cache_caps.size = size;
  top = cache_open("cache");
  memset(cache_buf, 0x77, size);
  ck_assert_int_eq(next_pwrite(top, cache_buf, size, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+197120 flags=0; flush");
  ck_assert_mem_eq(cache_s.rec->ram, cache_buf, size);
}
END_TEST

/* ---- zero and trim ----------------------------------------------------------------------- */

START_TEST(test_zero_drops_dirty_blocks_it_covers)
{
  struct nbd_ctx *top = cache_open("cache");

  memset(cache_buf, 0x77, 2 * BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 2 * BLK, 0, 0), 0);
  ck_assert_int_eq(next_zero(top, BLK + 100, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "zero 0+65636 flags=0");
  /* Block 0 is gone; block 1 keeps its dirty bytes, zeroed at the start. */
  memset(cache_want, 0, BLK + 100);
  memset(cache_want + BLK + 100, 0x77, BLK - 100);
  ck_assert_int_eq(next_pread(top, cache_buf, 2 * BLK, 0, 0), 0);
  ck_assert_mem_eq(cache_buf, cache_want, 2 * BLK);
  testlib_log_clear();
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 65536+65536 flags=0; flush");
  ck_assert_mem_eq(cache_s.rec->ram, cache_want, 2 * BLK);
}
END_TEST

START_TEST(test_zero_keeps_clean_partial_block_consistent)
{
  struct nbd_ctx *top = cache_open("cache cache-on-read=true");

  cache_assert_data(top, 0, BLK, 0, 0);
  ck_assert_int_eq(next_zero(top, 100, 50, NBD_CMD_FLAG_FUA), 0);
  testlib_log_clear();
  ck_assert_int_eq(next_pread(top, cache_buf, BLK, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_mem_eq(cache_buf, cache_s.rec->ram, BLK);
  ck_assert(nbd_is_zero(cache_buf + 50, 100));
}
END_TEST

START_TEST(test_failed_zero_keeps_dirty_data)
{
  struct nbd_ctx *top = cache_open("cache");

  memset(cache_buf, 0x77, BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, 0, 0), 0);
  cache_s.rec->fail[NBD_METHOD_ZERO] = -EIO;
  ck_assert_int_eq(next_zero(top, BLK, 0, 0), -EIO);
  cache_assert_data(top, 0, BLK, 0, BLK);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_mem_eq(cache_s.rec->ram, cache_buf, BLK);
}
END_TEST

START_TEST(test_trim_drops_dirty_blocks_it_covers)
{
  struct nbd_ctx *top = cache_open("cache");

  memset(cache_buf, 0x77, 2 * BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 2 * BLK, 0, 0), 0);
  ck_assert_int_eq(next_trim(top, BLK + 100, 0, 0), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  /* Only the partial block goes back, with the trimmed part zeroed. */
  ck_assert_str_eq(testlib_log(), "trim 0+65636 flags=0; "
                   "pwrite 65536+65536 flags=0; flush");
  ck_assert(nbd_is_zero(cache_s.rec->ram + BLK, 100));
  memset(cache_want, 0x77, BLK);
  ck_assert_mem_eq(cache_s.rec->ram + BLK + 100, cache_want, BLK - 100);
}
END_TEST

START_TEST(test_trim_drops_clean_partial_block)
{
  struct nbd_ctx *top = cache_open("cache cache-on-read=true");

  cache_assert_data(top, 0, BLK, 0, 0);
  ck_assert_int_eq(next_trim(top, 100, 50, 0), 0);
  testlib_log_clear();
  ck_assert_int_eq(next_pread(top, cache_buf, 10, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+65536 flags=0");
}
END_TEST

/* ---- extents --------------------------------------------------------------------------- */

START_TEST(test_extents_report_dirty_blocks_as_data)
{
  struct nbd_ctx *top = cache_open("cache");
  struct nbd_extents *e = nbd_extents_new(0, 4 * MIB);
  const uint32_t hz = NBD_EXTENT_HOLE | NBD_EXTENT_ZERO;

  testlib_recorder_map(cache_s.rec, 0, 4 * MIB, hz);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 100, 2 * BLK + 5, 0), 0);
  ck_assert_int_eq(next_extents(top, 4 * MIB, 0, 0, e), 0);
  ck_assert_uint_eq(e->n, 3);
  ck_assert_uint_eq(e->v[0].offset, 0);
  ck_assert_uint_eq(e->v[0].length, 2 * BLK);
  ck_assert_uint_eq(e->v[0].type, hz);
  ck_assert_uint_eq(e->v[1].offset, 2 * BLK);
  ck_assert_uint_eq(e->v[1].length, BLK);
  ck_assert_uint_eq(e->v[1].type, 0);
  ck_assert_uint_eq(e->v[2].offset, 3 * BLK);
  ck_assert_uint_eq(e->v[2].type, hz);
  nbd_extents_free(e);

  /* Once written back, the map below is the truth again. */
  ck_assert_int_eq(next_flush(top, 0), 0);
  e = nbd_extents_new(0, 4 * MIB);
  ck_assert_int_eq(next_extents(top, 4 * MIB, 0, 0, e), 0);
  ck_assert_uint_eq(e->n, 1);
  nbd_extents_free(e);
}
END_TEST

/* A write-back that runs while the map below is asked (another
 * connection's flush, or the flush at close of the connection that
 * wrote) must not turn the blocks it cleans into holes: below's map was
 * taken before their data got there.  nbdcopy skipped such "holes" and
 * copied zeros (the deep test_nbdcopy failure at 50 MiB). */
static void
cache_flush_during_extents(struct testlib_recorder *rec, void *arg)
{
  rec->after_extents = NULL;    /* once */
  ck_assert_int_eq(next_flush(arg, 0), 0);
  rec->map[1].type = 0;         /* below now holds the written block */
}

START_TEST(test_extents_with_write_back_meanwhile_keep_data)
{
  struct nbd_ctx *top = cache_open("cache");
  struct nbd_extents *e = nbd_extents_new(0, 4 * MIB);
  const uint32_t hz = NBD_EXTENT_HOLE | NBD_EXTENT_ZERO;
  uint64_t pos;
  size_t i;

  testlib_recorder_map(cache_s.rec, 0, 2 * BLK, hz);
  testlib_recorder_map(cache_s.rec, 2 * BLK, BLK, hz);
  testlib_recorder_map(cache_s.rec, 3 * BLK, 4 * MIB - 3 * BLK, hz);
  memset(cache_buf, 0x77, BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, 2 * BLK, 0), 0);
  cache_s.rec->after_extents = cache_flush_during_extents;
  cache_s.rec->after_extents_arg = top;
  ck_assert_int_eq(next_extents(top, 4 * MIB, 0, 0, e), 0);
  ck_assert_ptr_null(cache_s.rec->after_extents);   /* it did run */
  ck_assert_uint_eq(testlib_calls_of(cache_s.rec, NBD_METHOD_PWRITE), 1);
  /* The written block is data (below's static map says hole
   * everywhere: only this layer knows better). */
  for (i = 0, pos = 0; i < e->n; pos += e->v[i].length, i++)
    if (e->v[i].offset <= 2 * BLK && e->v[i].offset + e->v[i].length > 2 * BLK)
      ck_assert_uint_eq(e->v[i].type & NBD_EXTENT_ZERO, 0);
  ck_assert_uint_eq(pos, 4 * MIB);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_extents_clipped_inside_a_dirty_block)
{
  struct nbd_ctx *top = cache_open("cache");
  struct nbd_extents *e = nbd_extents_new(BLK + 10, BLK + 30);

  testlib_recorder_map(cache_s.rec, 0, 4 * MIB, NBD_EXTENT_HOLE);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, BLK, 0), 0);
  ck_assert_int_eq(next_extents(top, 20, BLK + 10, 0, e), 0);
  ck_assert_uint_eq(e->n, 1);
  ck_assert_uint_eq(e->v[0].offset, BLK + 10);
  ck_assert_uint_eq(e->v[0].length, 20);
  ck_assert_uint_eq(e->v[0].type, 0);
  nbd_extents_free(e);
}
END_TEST

/* ---- cache-max-size ------------------------------------------------------------------------- */

/* 8 blocks of 64K: reclaim above 7 (95%), down to 6 (80%). */
START_TEST(test_eviction_keeps_data_correct)
{
  struct nbd_ctx *top = cache_open("cache cache-max-size=512k "
                                   "cache-on-read=true");
  uint64_t off;
  unsigned i;

  for (off = 0; off < 4 * MIB; off += BLK) {
    memset(cache_buf, 0x77, BLK);
    testlib_pattern(cache_buf, 200, off + 1000);
    ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, off, 0), 0);
  }
  /* The cache holds 8 blocks at most: the rest went below on reclaim. */
  ck_assert_uint_ge(cache_s.rec->calls[NBD_METHOD_PWRITE], 64 - 8);
  for (i = 0; i < 2; i++)
    for (off = 0; off < 4 * MIB; off += BLK) {
      memset(cache_want, 0x77, BLK);
      testlib_pattern(cache_want, 200, off + 1000);
      ck_assert_int_eq(next_pread(top, cache_buf, BLK, off, 0), 0);
      ck_assert_mem_eq(cache_buf, cache_want, BLK);
    }
  ck_assert_int_eq(next_flush(top, 0), 0);
  for (off = 0; off < 4 * MIB; off += BLK) {
    memset(cache_want, 0x77, BLK);
    testlib_pattern(cache_want, 200, off + 1000);
    ck_assert_mem_eq(cache_s.rec->ram + off, cache_want, BLK);
  }
}
END_TEST

START_TEST(test_eviction_prefers_blocks_not_used_again)
{
  struct nbd_ctx *top = cache_open("cache cache-max-size=512k "
                                   "cache-on-read=true");
  uint64_t off;

  /* Block 0 is read again between every new block: it stays. */
  for (off = BLK; off < 2 * MIB; off += BLK) {
    ck_assert_int_eq(next_pread(top, cache_buf, 512, 0, 0), 0);
    ck_assert_int_eq(next_pread(top, cache_buf, 512, off, 0), 0);
  }
  ck_assert_uint_eq(cache_s.rec->calls[NBD_METHOD_PREAD], 32);
}
END_TEST

START_TEST(test_failed_writeback_on_reclaim_keeps_block)
{
  struct nbd_ctx *top = cache_open("cache cache-max-size=256k");
  uint64_t off;

  testlib_stderr_begin();
  cache_s.rec->fail[NBD_METHOD_PWRITE] = -EIO;
  memset(cache_buf, 0x77, BLK);
  for (off = 0; off < 8 * BLK; off += BLK)
    ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, off, 0), 0);
  cache_s.rec->fail[NBD_METHOD_PWRITE] = 0;
  free(testlib_stderr_end());
  cache_assert_data(top, 0, 8 * BLK, 0, 8 * BLK);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_mem_eq(cache_s.rec->ram, cache_buf, BLK);
  ck_assert_mem_eq(cache_s.rec->ram + 7 * BLK, cache_buf, BLK);
}
END_TEST

/* ---- connections and capabilities ------------------------------------------------------------ */

START_TEST(test_cache_shared_by_connections)
{
  struct nbd_ctx *top = cache_open("cache"), *other;
  char err[256];

  other = engine_open(cache_s.exp, 0, NULL, err, sizeof err);
  ck_assert_msg(other != NULL, "second open: %s", err);
  memset(cache_buf, 0x77, BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, 0, 0), 0);
  testlib_log_clear();
  cache_assert_data(other, 0, BLK, 0, BLK);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_int_eq(next_flush(other, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+65536 flags=0; flush");
  engine_close(other);
}
END_TEST

START_TEST(test_readonly_connection_reclaims_clean_blocks_only)
{
  struct nbd_ctx *top = cache_open("cache cache-max-size=256k "
                                   "cache-on-read=true"), *ro;
  char err[256], *log;
  uint64_t off;

  memset(cache_buf, 0x77, 2 * BLK);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 2 * BLK, 0, 0), 0);
  ro = engine_open(cache_s.exp, 1, NULL, err, sizeof err);
  ck_assert_msg(ro != NULL, "read-only open: %s", err);
  testlib_log_clear();
  testlib_stderr_begin();
  for (off = 2 * BLK; off < 10 * BLK; off += BLK)
    cache_assert_data(ro, off, BLK, 0, 0);
  ck_assert_int_eq(next_flush(ro, 0), 0);
  log = testlib_stderr_end();
  ck_assert_str_eq(log, "");
  free(log);
  ck_assert_msg(strstr(testlib_log(), "pwrite") == NULL, "%s", testlib_log());
  cache_assert_data(ro, 0, 2 * BLK, 0, 2 * BLK);
  engine_close(ro);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_mem_eq(cache_s.rec->ram, cache_buf, 2 * BLK);
}
END_TEST

START_TEST(test_capabilities)
{
  struct nbd_ctx *top;
  uint32_t mn, pref, mx;

  cache_caps.can_flush = 0;
  cache_caps.can_fua = NBD_FUA_EMULATE;
  cache_caps.can_cache = NBD_CACHE_NONE;
  cache_caps.can_multi_conn = 1;
  cache_caps.can_zero = NBD_ZERO_EMULATE;
  top = cache_open("cache");
  ck_assert_int_eq(next_can_flush(top), 1);
  ck_assert_int_eq(next_can_cache(top), NBD_CACHE_NATIVE);
  ck_assert_int_eq(next_can_multi_conn(top), 1);
  ck_assert_int_eq(next_can_zero(top), NBD_ZERO_NATIVE);
  ck_assert_int_eq(next_can_fast_zero(top), 0);
  ck_assert_int_eq(next_can_trim(top), 1);
  ck_assert_int_eq(next_can_extents(top), 1);
  ck_assert_int_eq(next_get_size(top), 4 * MIB);
  next_block_size(top, &mn, &pref, &mx);
  ck_assert_uint_eq(mn, 1);
  ck_assert_uint_eq(pref, BLK);
  /* Below cannot flush: a flush writes back, and does not flush below. */
  ck_assert_int_eq(next_pwrite(top, cache_buf, BLK, 0, 0), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+65536 flags=0");
}
END_TEST

START_TEST(test_multi_conn_follows_below_except_unsafe)
{
  struct nbd_ctx *top;

  cache_caps.can_multi_conn = 0;
  top = cache_open("cache");
  ck_assert_int_eq(next_can_multi_conn(top), 0);
  testlib_stack_free(&cache_s);
  top = cache_open("cache cache=unsafe");
  ck_assert_int_eq(next_can_multi_conn(top), 1);
}
END_TEST

START_TEST(test_readonly_below_is_readonly)
{
  struct nbd_ctx *top;

  cache_caps.can_write = 0;
  cache_caps.can_flush = 0;
  top = cache_open("cache");
  ck_assert_int_eq(next_can_write(top), 0);
  ck_assert_int_eq(next_pwrite(top, cache_buf, 10, 0, 0), -EPERM);
  /* nothing of ours to write back: below's answer (as nbdkit) */
  ck_assert_int_eq(next_can_flush(top), 0);
}
END_TEST

START_TEST(test_block_size_below_larger_than_cache_block_fails_open)
{
  char *log;
  int r;

  cache_caps.min_block = 4096;
  cache_caps.pref_block = 4096;
  cache_caps.max_block = 1 << 20;
  ck_assert_int_eq(testlib_stack_new(&cache_s, "cache", &cache_caps), 0);
  ck_assert_int_eq(testlib_stack_open(&cache_s, 0), 0);
  testlib_stack_free(&cache_s);
  /* A 64K minimum below is fine; cache blocks of 4K are not. */
  cache_caps.min_block = cache_caps.pref_block = 64 * 1024;
  ck_assert_int_eq(testlib_stack_new(&cache_s, "cache cache-min-block-size=4k",
                                     &cache_caps), 0);
  testlib_stderr_begin();
  r = testlib_stack_open(&cache_s, 0);
  log = testlib_stderr_end();
  ck_assert_int_eq(r, -1);
  ck_assert_msg(strstr(log, "raise cache-min-block-size") != NULL, "%s", log);
  free(log);
}
END_TEST

START_TEST(test_below_max_block_splits_requests)
{
  struct nbd_ctx *top;

  cache_caps.min_block = 512;
  cache_caps.pref_block = 4096;
  cache_caps.max_block = 32 * 1024;
  top = cache_open("cache");
  ck_assert_int_eq(next_pwrite(top, cache_buf, 100, 10, 0), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+32768 flags=0; "
                   "pread 32768+32768 flags=0; pwrite 0+32768 flags=0; "
                   "pwrite 32768+32768 flags=0; flush");
}
END_TEST

/* ---- configuration ---------------------------------------------------------------------------- */

static void
cache_assert_refused(const char *filters, const char *want)
{
  ck_assert_int_eq(testlib_stack_new(&cache_s, filters, &cache_caps), -1);
  ck_assert_msg(strstr(cache_s.err, want) != NULL, "'%s': error '%s' "
                "lacks '%s'", filters, cache_s.err, want);
}

START_TEST(test_bad_keys_refused)
{
  cache_assert_refused("cache cache=sometimes",
                       "cache: invalid value 'sometimes'");
  cache_assert_refused("cache cache-min-block-size=2048",
                       "cache-min-block-size=2048 must be a power of two");
  cache_assert_refused("cache cache-min-block-size=12k",
                       "cache-min-block-size=12288 must be a power of two");
  cache_assert_refused("cache cache-min-block-size=64M",
                       "must be a power of two from 4096 to 32M");
  cache_assert_refused("cache cache-max-size=1M cache-high-threshold=101",
                       "cache-high-threshold=101 must be a percentage");
  cache_assert_refused("cache cache-max-size=1M cache-high-threshold=50 "
                       "cache-low-threshold=50",
                       "cache-low-threshold=50 must be above 0 and below "
                       "cache-high-threshold (50)");
  cache_assert_refused("cache cache-max-size=1M cache-low-threshold=0",
                       "cache-low-threshold=0 must be above 0");
  cache_assert_refused("cache cache-max-size=128k",
                       "cache-max-size=131072 is too small");
  cache_assert_refused("cache cache-high-threshold=90",
                       "need cache-max-size");
  cache_assert_refused("cache cache-on-read=sometimes",
                       "cache-on-read: invalid value 'sometimes'");
  cache_assert_refused("cache cache-on-read=relative/path",
                       "expected true, false or an absolute /PATH");
  cache_assert_refused("cache cache-max-size=lots",
                       "cache-max-size: invalid value 'lots'");
  cache_assert_refused("cache cache_mode=writeback",
                       "unknown key 'cache_mode'");
}
END_TEST

START_TEST(test_good_keys_accepted)
{
  ck_assert_int_eq(testlib_stack_new(&cache_s, "cache cache=writethrough "
                                     "cache-min-block-size=4k "
                                     "cache-max-size=16k "
                                     "cache-high-threshold=100 "
                                     "cache-low-threshold=1 "
                                     "cache-on-read=/nonexistent", &cache_caps),
                   0);
}
END_TEST

START_TEST(test_missing_tmpdir_refused)
{
  setenv("TMPDIR", "/nonexistent/dir", 1);
  cache_assert_refused("cache", "cannot create the cache file in "
                       "/nonexistent/dir");
}
END_TEST

static TCase *
cache_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, cache_setup, cache_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
cache_suite(void)
{
  Suite *s = suite_create("cache");
  TCase *tc;

  tc = cache_tcase(s, "reads");
  tcase_add_test(tc, test_read_twice_reads_below_once);
  tcase_add_test(tc, test_read_spanning_cached_and_uncached_blocks);
  tcase_add_test(tc, test_read_without_cache_on_read_goes_below_each_time);
  tcase_add_test(tc, test_read_without_cache_on_read_keeps_below_aligned);
  tcase_add_test(tc, test_cache_on_read_path_switches_at_run_time);
  tcase_add_test(tc, test_failed_read_below_is_not_cached);
  tcase_add_test(tc, test_cache_command_prefetches);

  tc = cache_tcase(s, "writeback");
  tcase_add_test(tc, test_writeback_write_stays_in_cache_until_flush);
  tcase_add_test(tc, test_writeback_flush_merges_contiguous_dirty_blocks);
  tcase_add_test(tc, test_writeback_fua_write_goes_below_with_fua);
  tcase_add_test(tc, test_writeback_fua_writes_whole_dirty_block);
  tcase_add_test(tc, test_fua_emulated_below_is_write_then_flush);
  tcase_add_test(tc, test_writeback_failure_fails_flush_and_is_retried);
  tcase_add_test(tc, test_failed_flush_below_fails_flush);

  tc = cache_tcase(s, "writethrough and unsafe");
  tcase_add_test(tc, test_writethrough_writes_below_at_once);
  tcase_add_test(tc, test_unsafe_ignores_flush_and_fua);

  tc = cache_tcase(s, "partial blocks");
  tcase_add_test(tc, test_partial_write_reads_block_below_first);
  tcase_add_test(tc, test_unaligned_write_over_three_blocks);
  tcase_add_test(tc, test_small_write_inside_one_block_reads_it_once);
  tcase_add_test(tc, test_partial_write_into_cached_blocks_reads_nothing);
  tcase_add_test(tc, test_last_partial_block);
  tcase_add_test(tc, test_whole_disk_write_ending_in_partial_block);

  tc = cache_tcase(s, "zero and trim");
  tcase_add_test(tc, test_zero_drops_dirty_blocks_it_covers);
  tcase_add_test(tc, test_zero_keeps_clean_partial_block_consistent);
  tcase_add_test(tc, test_failed_zero_keeps_dirty_data);
  tcase_add_test(tc, test_trim_drops_dirty_blocks_it_covers);
  tcase_add_test(tc, test_trim_drops_clean_partial_block);

  tc = cache_tcase(s, "extents");
  tcase_add_test(tc, test_extents_report_dirty_blocks_as_data);
  tcase_add_test(tc, test_extents_clipped_inside_a_dirty_block);
  tcase_add_test(tc, test_extents_with_write_back_meanwhile_keep_data);

  tc = cache_tcase(s, "cache-max-size");
  tcase_add_test(tc, test_eviction_keeps_data_correct);
  tcase_add_test(tc, test_eviction_prefers_blocks_not_used_again);
  tcase_add_test(tc, test_failed_writeback_on_reclaim_keeps_block);

  tc = cache_tcase(s, "connections and capabilities");
  tcase_add_test(tc, test_cache_shared_by_connections);
  tcase_add_test(tc, test_readonly_connection_reclaims_clean_blocks_only);
  tcase_add_test(tc, test_capabilities);
  tcase_add_test(tc, test_multi_conn_follows_below_except_unsafe);
  tcase_add_test(tc, test_readonly_below_is_readonly);
  tcase_add_test(tc, test_block_size_below_larger_than_cache_block_fails_open);
  tcase_add_test(tc, test_below_max_block_splits_requests);

  tc = cache_tcase(s, "configuration");
  tcase_add_test(tc, test_bad_keys_refused);
  tcase_add_test(tc, test_good_keys_accepted);
  tcase_add_test(tc, test_missing_tmpdir_refused);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(cache_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
