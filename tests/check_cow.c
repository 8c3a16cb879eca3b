/* Unit tests for filters/cow over the recording backend: nothing ever
 * reaches the layer below but reads of blocks not written; partial blocks
 * read-modify-write; trim and zero read back zeros; extents merge the
 * overlay with the layer below; cow-on-read and cow-on-cache copy blocks;
 * capabilities; startup errors; the persistent overlay across restarts
 * and a simulated crash, and the files it refuses.
 */
#include <check.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testlib.h"

#define KIB 1024u
#define MIB (1024u * KIB)

static struct testlib_caps cow_caps;
static struct testlib_stack cow_s;
static unsigned char *cow_buf, *cow_want, *cow_orig;
static char cow_dir[64], cow_path[128], cow_spec[256];

static void
cow_setup(void)
{
  testlib_caps_default(&cow_caps);
  cow_caps.size = MIB;
  cow_buf = calloc(1, 4 * MIB);
  cow_want = calloc(1, 4 * MIB);
  cow_orig = calloc(1, 4 * MIB);
  ck_assert(cow_buf && cow_want && cow_orig);
  strcpy(cow_dir, "/tmp/check_cow.XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(cow_dir));
  snprintf(cow_path, sizeof cow_path, "%s/overlay", cow_dir);
}

static void
cow_teardown(void)
{
  char cmd[128];

  testlib_stack_free(&cow_s);
  free(cow_buf);
  free(cow_want);
  free(cow_orig);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", cow_dir);
  ck_assert_int_eq(system(cmd), 0);
}

/* Opens filters over a recorder filled with the offset pattern, and keeps
 * a copy of that pattern in cow_orig. */
static struct nbd_ctx *
cow_open(const char *filters)
{
  testlib_stack(&cow_s, filters, &cow_caps);
  testlib_pattern(cow_s.rec->ram, (uint32_t)cow_caps.size, 0);
  testlib_pattern(cow_orig, (uint32_t)cow_caps.size, 0);
  return cow_s.top;
}

/* Below is never written: no write-like call, and its bytes unchanged. */
static void
cow_assert_below_untouched(void)
{
  const struct testlib_recorder *rec = cow_s.rec;

  ck_assert_uint_eq(rec->calls[NBD_METHOD_PWRITE], 0);
  ck_assert_uint_eq(rec->calls[NBD_METHOD_ZERO], 0);
  ck_assert_uint_eq(rec->calls[NBD_METHOD_TRIM], 0);
  ck_assert_uint_eq(rec->calls[NBD_METHOD_FLUSH], 0);
  ck_assert_mem_eq(rec->ram, cow_orig, (size_t)cow_caps.size);
}

/* The whole disk reads as cow_want. */
static void
cow_assert_disk(struct nbd_ctx *top)
{
  ck_assert_int_eq(next_pread(top, cow_buf, (uint32_t)cow_caps.size, 0, 0), 0);
  ck_assert_mem_eq(cow_buf, cow_want, (size_t)cow_caps.size);
}

/* ---- reads and writes ------------------------------------------------------ */

START_TEST(test_reads_pass_below_until_written)
{
  struct nbd_ctx *top = cow_open("cow");

  ck_assert_int_eq(next_pread(top, cow_buf, 8192, 4096, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 4096+8192 flags=0");
  ck_assert_mem_eq(cow_buf, cow_orig + 4096, 8192);
}
END_TEST

START_TEST(test_write_never_reaches_below)
{
  struct nbd_ctx *top = cow_open("cow");

  memcpy(cow_want, cow_orig, MIB);
  memset(cow_want + 65536, 0xa5, 131072);
  ck_assert_int_eq(next_pwrite(top, cow_want + 65536, 131072, 65536,
                               NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "");          /* whole blocks: no read */
  cow_assert_disk(top);
  cow_assert_below_untouched();
}
END_TEST

START_TEST(test_written_block_not_read_below)
{
  struct nbd_ctx *top = cow_open("cow cow-block-size=4K");

  memset(cow_buf, 0x11, 4096);
  ck_assert_int_eq(next_pwrite(top, cow_buf, 4096, 8192, 0), 0);
  ck_assert_int_eq(next_pread(top, cow_buf, 3 * 4096, 4096, 0), 0);
  /* Block 1 and block 3 below, block 2 from the overlay. */
  ck_assert_str_eq(testlib_log(),
                   "pread 4096+4096 flags=0; pread 12288+4096 flags=0");
  ck_assert_mem_eq(cow_buf, cow_orig + 4096, 4096);
  ck_assert_mem_eq(cow_buf + 8192, cow_orig + 12288, 4096);
  memset(cow_want, 0x11, 4096);
  ck_assert_mem_eq(cow_buf + 4096, cow_want, 4096);
}
END_TEST

START_TEST(test_partial_write_keeps_surrounding_bytes)
{
  struct nbd_ctx *top = cow_open("cow cow-block-size=4K");

  memset(cow_buf, 0x77, 100);
  ck_assert_int_eq(next_pwrite(top, cow_buf, 100, 4096 + 1000, 0), 0);
  /* The block was read below once, whole, before the write. */
  ck_assert_str_eq(testlib_log(), "pread 4096+4096 flags=0");
  memcpy(cow_want, cow_orig, MIB);
  memset(cow_want + 5096, 0x77, 100);
  cow_assert_disk(top);
  cow_assert_below_untouched();
}
END_TEST

START_TEST(test_unaligned_write_spanning_blocks)
{
  struct nbd_ctx *top = cow_open("cow cow-block-size=4K");

  testlib_pattern(cow_buf, 10000, 777777);      /* not the disk's bytes */
  ck_assert_int_eq(next_pwrite(top, cow_buf, 10000, 3000, 0), 0);
  /* Head and tail blocks read below; blocks 1 and 2 are whole. */
  ck_assert_str_eq(testlib_log(),
                   "pread 0+4096 flags=0; pread 12288+4096 flags=0");
  memcpy(cow_want, cow_orig, MIB);
  memcpy(cow_want + 3000, cow_buf, 10000);
  cow_assert_disk(top);
  /* A second partial write in an allocated block reads nothing below. */
  testlib_log_clear();
  memset(cow_buf, 0x42, 10);
  ck_assert_int_eq(next_pwrite(top, cow_buf, 10, 13000, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  memset(cow_want + 13000, 0x42, 10);
  cow_assert_disk(top);
  cow_assert_below_untouched();
}
END_TEST

/* Many threads, each patching its own bytes of the same few blocks (read-
 * modify-write of zero blocks, so that the recorder, which is not
 * thread-safe, is not called): every patch must survive. */
#define COW_THREADS 8

static pthread_barrier_t cow_barrier;

struct cow_thread_arg {
  struct nbd_ctx *top;
  unsigned id;
  int r;
};

static void *
cow_thread(void *p)
{
  struct cow_thread_arg *a = p;
  unsigned char piece[512];
  unsigned i;

  memset(piece, 0x80 + (int)a->id, sizeof piece);
  /* Thread t writes the t-th 512 bytes of every 4K block of 64 blocks,
   * all threads on the same block at the same time. */
  for (i = 0; i < 64; i++) {
    pthread_barrier_wait(&cow_barrier);
    if (a->r == 0)
      a->r = next_pwrite(a->top, piece, sizeof piece,
                         (uint64_t)i * 4096 + a->id * 512, 0);
  }
  return NULL;
}

START_TEST(test_concurrent_partial_writes_to_one_block)
{
  struct nbd_ctx *top = cow_open("cow cow-block-size=4K");
  struct cow_thread_arg a[COW_THREADS];
  pthread_t th[COW_THREADS];
  unsigned i;

  ck_assert_int_eq(next_trim(top, 64 * 4096, 0, 0), 0);
  ck_assert_int_eq(pthread_barrier_init(&cow_barrier, NULL, COW_THREADS), 0);
  for (i = 0; i < COW_THREADS; i++) {
    a[i] = (struct cow_thread_arg){ .top = top, .id = i };
    ck_assert_int_eq(pthread_create(&th[i], NULL, cow_thread, &a[i]), 0);
  }
  for (i = 0; i < COW_THREADS; i++) {
    pthread_join(th[i], NULL);
    ck_assert_int_eq(a[i].r, 0);
  }
  pthread_barrier_destroy(&cow_barrier);
  memcpy(cow_want, cow_orig, MIB);
  for (i = 0; i < 64 * 8; i++)
    memset(cow_want + i * 512, 0x80 + (int)(i % 8), 512);
  cow_assert_disk(top);
  cow_assert_below_untouched();
}
END_TEST

START_TEST(test_two_connections_share_the_overlay)
{
  struct nbd_ctx *top = cow_open("cow cow-block-size=4K"), *other;
  char err[256];

  other = engine_open(cow_s.exp, 0, NULL, err, sizeof err);
  ck_assert_msg(other != NULL, "second open: %s", err);
  memset(cow_buf, 0x3c, 5000);
  ck_assert_int_eq(next_pwrite(top, cow_buf, 5000, 70000, 0), 0);
  ck_assert_int_eq(next_pread(other, cow_want, 5000, 70000, 0), 0);
  ck_assert_mem_eq(cow_want, cow_buf, 5000);
  ck_assert_int_eq(engine_close(other), 0);
}
END_TEST

/* ---- trim and zero ------------------------------------------------------------ */

START_TEST(test_zero_reads_zeros)
{
  struct nbd_ctx *top = cow_open("cow cow-block-size=4K");

  ck_assert_int_eq(next_zero(top, 10000, 1000, 0), 0);
  memcpy(cow_want, cow_orig, MIB);
  memset(cow_want + 1000, 0, 10000);
  cow_assert_disk(top);
  cow_assert_below_untouched();
}
END_TEST

START_TEST(test_trim_reads_zeros)
{
  struct nbd_ctx *top = cow_open("cow cow-block-size=4K");

  ck_assert_int_eq(next_trim(top, 3 * 4096 + 10, 4096 - 5, 0), 0);
  memcpy(cow_want, cow_orig, MIB);
  memset(cow_want + 4091, 0, 3 * 4096 + 10);
  cow_assert_disk(top);
  cow_assert_below_untouched();
}
END_TEST

START_TEST(test_fast_zero_is_native)
{
  struct nbd_ctx *top = cow_open("cow");

  ck_assert_int_eq(next_zero(top, 65536, 0, NBD_CMD_FLAG_FAST_ZERO), 0);
  ck_assert_str_eq(testlib_log(), "");
  memcpy(cow_want, cow_orig, MIB);
  memset(cow_want, 0, 65536);
  cow_assert_disk(top);
}
END_TEST

START_TEST(test_write_into_zeroed_block_keeps_zeros)
{
  struct nbd_ctx *top = cow_open("cow cow-block-size=4K");

  ck_assert_int_eq(next_zero(top, 8192, 8192, 0), 0);
  memset(cow_buf, 0x99, 10);
  ck_assert_int_eq(next_pwrite(top, cow_buf, 10, 9000, 0), 0);
  ck_assert_str_eq(testlib_log(), "");          /* zeros, not below */
  memcpy(cow_want, cow_orig, MIB);
  memset(cow_want + 8192, 0, 8192);
  memset(cow_want + 9000, 0x99, 10);
  cow_assert_disk(top);
}
END_TEST

/* ---- extents ------------------------------------------------------------------- */

/* "offset+length/type ..." of the extents of [offset, offset+count). */
static const char *
cow_extents_str(struct nbd_ctx *top, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  static char s[1024];
  struct nbd_extents *e = nbd_extents_new(offset, offset + count);
  size_t i, len = 0;

  ck_assert_ptr_nonnull(e);
  ck_assert_int_eq(next_extents(top, count, offset, flags, e), 0);
  s[0] = '\0';
  for (i = 0; i < e->n; i++)
    len += (size_t)snprintf(s + len, sizeof s - len, "%s%llu+%llu/%u",
                            i ? " " : "",
                            (unsigned long long)e->v[i].offset,
                            (unsigned long long)e->v[i].length, e->v[i].type);
  nbd_extents_free(e);
  return s;
}

START_TEST(test_extents_merge_overlay_and_below)
{
  struct nbd_ctx *top;

  /* Below: data up to 256K, then a hole that reads as zeros. */
  top = cow_open("cow");
  testlib_recorder_map(cow_s.rec, 0, 256 * KIB, 0);
  testlib_recorder_map(cow_s.rec, 256 * KIB, 768 * KIB,
                       NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  memset(cow_buf, 0x5a, 100);
  /* Block 1 (data below) trimmed, block 5 (hole below) written: it must
   * never read as a hole; block 6 zeroed with NO_HOLE, block 7 zeroed. */
  ck_assert_int_eq(next_trim(top, 65536, 65536, 0), 0);
  ck_assert_int_eq(next_pwrite(top, cow_buf, 100, 5 * 65536 + 10, 0), 0);
  ck_assert_int_eq(next_zero(top, 65536, 6 * 65536, NBD_CMD_FLAG_NO_HOLE), 0);
  ck_assert_int_eq(next_zero(top, 65536, 7 * 65536, 0), 0);
  ck_assert_str_eq(cow_extents_str(top, MIB, 0, 0),
                   "0+65536/0 65536+65536/3 131072+131072/0 "
                   "262144+65536/3 327680+131072/0 458752+589824/3");
  /* Unaligned request edges. */
  ck_assert_str_eq(cow_extents_str(top, 65536, 60000, 0),
                   "60000+5536/0 65536+60000/3");
  cow_assert_below_untouched();
}
END_TEST

START_TEST(test_extents_req_one_stops_after_first_run)
{
  struct nbd_ctx *top = cow_open("cow");

  ck_assert_int_eq(next_trim(top, 65536, 0, 0), 0);
  ck_assert_str_eq(cow_extents_str(top, MIB, 0, NBD_CMD_FLAG_REQ_ONE),
                   "0+65536/3");
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_extents_without_extents_below)
{
  struct nbd_ctx *top;

  cow_caps.can_extents = 0;
  top = cow_open("cow");
  ck_assert_int_eq(next_trim(top, 65536, 65536, 0), 0);
  ck_assert_str_eq(cow_extents_str(top, MIB, 0, 0),
                   "0+65536/0 65536+65536/3 131072+917504/0");
}
END_TEST

/* ---- the last partial block ------------------------------------------------------ */

START_TEST(test_last_partial_block)
{
  struct nbd_ctx *top;
  uint64_t last = MIB;                  /* block 16 holds 1000 bytes */

  cow_caps.size = MIB + 1000;
  top = cow_open("cow");
  ck_assert_int_eq(next_get_size(top), MIB + 1000);
  memset(cow_buf, 0xe1, 300);
  ck_assert_int_eq(next_pwrite(top, cow_buf, 300, last + 500, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 1048576+1000 flags=0");
  memcpy(cow_want, cow_orig, MIB + 1000);
  memset(cow_want + last + 500, 0xe1, 300);
  cow_assert_disk(top);
  /* The whole last block written, then zeroed in part, then trimmed. */
  memset(cow_buf, 0xe2, 1000);
  ck_assert_int_eq(next_pwrite(top, cow_buf, 1000, last, 0), 0);
  ck_assert_int_eq(next_zero(top, 10, last + 990, 0), 0);
  memset(cow_want + last, 0xe2, 990);
  memset(cow_want + last + 990, 0, 10);
  cow_assert_disk(top);
  ck_assert_str_eq(cow_extents_str(top, 70000, MIB - 69000, 0),
                   "979576+70000/0");
  ck_assert_int_eq(next_trim(top, 1000, last, 0), 0);
  memset(cow_want + last, 0, 1000);
  cow_assert_disk(top);
  ck_assert_str_eq(cow_extents_str(top, 2000, MIB - 1000, 0),
                   "1047576+1000/0 1048576+1000/3");
  ck_assert_int_eq(next_pwrite(top, cow_buf, 1001, last, 0), -ENOSPC);
  cow_assert_below_untouched();
}
END_TEST

/* ---- cow-on-read, cow-on-cache -------------------------------------------------- */

START_TEST(test_reads_go_below_each_time_by_default)
{
  struct nbd_ctx *top = cow_open("cow");

  ck_assert_int_eq(next_pread(top, cow_buf, 100, 1000, 0), 0);
  ck_assert_int_eq(next_pread(top, cow_buf, 100, 1000, 0), 0);
  ck_assert_str_eq(testlib_log(),
                   "pread 1000+100 flags=0; pread 1000+100 flags=0");
}
END_TEST

START_TEST(test_cow_on_read_copies_blocks)
{
  struct nbd_ctx *top = cow_open("cow cow-on-read=true cow-block-size=4K");

  ck_assert_int_eq(next_pread(top, cow_buf, 5000, 1000, 0), 0);
  ck_assert_mem_eq(cow_buf, cow_orig + 1000, 5000);
  ck_assert_str_eq(testlib_log(),
                   "pread 0+4096 flags=0; pread 4096+4096 flags=0");
  /* Now in the overlay: below is not read again, even if it changed. */
  testlib_log_clear();
  memset(cow_s.rec->ram, 0xff, 8192);
  ck_assert_int_eq(next_pread(top, cow_buf, 8192, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_mem_eq(cow_buf, cow_orig, 8192);
  ck_assert_str_eq(cow_extents_str(top, 8192, 0, 0), "0+8192/0");
  ck_assert_uint_eq(cow_s.rec->calls[NBD_METHOD_PWRITE], 0);
}
END_TEST

START_TEST(test_cow_on_cache_copies_blocks)
{
  struct nbd_ctx *top = cow_open("cow cow-on-cache=yes");

  ck_assert_int_eq(next_can_cache(top), NBD_CACHE_NATIVE);
  ck_assert_int_eq(next_cache(top, 70000, 0, 0), 0);
  ck_assert_str_eq(testlib_log(),
                   "pread 0+65536 flags=0; pread 65536+65536 flags=0");
  testlib_log_clear();
  memset(cow_s.rec->ram, 0xff, 131072);
  ck_assert_int_eq(next_pread(top, cow_buf, 131072, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_mem_eq(cow_buf, cow_orig, 131072);
  /* A block already in the overlay is not read again by cache. */
  ck_assert_int_eq(next_cache(top, 65536, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_cache_goes_below_by_default)
{
  struct nbd_ctx *top = cow_open("cow");

  memset(cow_buf, 1, 65536);
  ck_assert_int_eq(next_pwrite(top, cow_buf, 65536, 65536, 0), 0);
  /* Block 1 is in the overlay: only blocks 0 and 2 are cached below. */
  ck_assert_int_eq(next_cache(top, 3 * 65536, 0, 0), 0);
  ck_assert_str_eq(testlib_log(),
                   "cache 0+65536 flags=0; cache 131072+65536 flags=0");
  testlib_log_clear();
  ck_assert_int_eq(next_pread(top, cow_buf, 100, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+100 flags=0");
}
END_TEST

START_TEST(test_cache_ignored_when_below_cannot)
{
  struct nbd_ctx *top;

  cow_caps.can_cache = NBD_CACHE_NONE;
  top = cow_open("cow");
  ck_assert_int_eq(next_cache(top, 65536, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

/* Below with a 4K minimum: a 100-byte read and a partial write are
 * rounded out before they go below (the engine would refuse them). */
START_TEST(test_below_minimum_block_size_respected)
{
  struct nbd_ctx *top;

  cow_caps.min_block = 4096;
  cow_caps.pref_block = 4096;
  cow_caps.max_block = 65536;
  top = cow_open("cow cow-block-size=128K");
  ck_assert_int_eq(next_pread(top, cow_buf, 100, 5000, 0), 0);
  ck_assert_mem_eq(cow_buf, cow_orig + 5000, 100);
  ck_assert_str_eq(testlib_log(), "pread 4096+4096 flags=0");
  testlib_log_clear();
  memset(cow_buf, 0x31, 10);
  ck_assert_int_eq(next_pwrite(top, cow_buf, 10, 3, 0), 0);
  ck_assert_str_eq(testlib_log(),
                   "pread 0+65536 flags=0; pread 65536+65536 flags=0");
  memcpy(cow_want, cow_orig, MIB);
  memset(cow_want + 3, 0x31, 10);
  cow_assert_disk(top);
  ck_assert_str_eq(cow_extents_str(top, 1000, 140000, 0), "140000+1000/0");
}
END_TEST

/* ---- capabilities ------------------------------------------------------------------ */

START_TEST(test_capabilities)
{
  struct nbd_ctx *top;
  uint32_t min, pref, max;

  cow_caps.can_write = 0;               /* read-only below */
  cow_caps.can_trim = 0;
  cow_caps.can_flush = 0;
  cow_caps.can_multi_conn = 0;
  cow_caps.can_extents = 0;
  cow_caps.can_cache = NBD_CACHE_NONE;
  top = cow_open("cow cow-block-size=256K");
  ck_assert_int_eq(next_can_write(top), 1);
  ck_assert_int_eq(next_can_flush(top), 1);
  ck_assert_int_eq(next_can_trim(top), 1);
  ck_assert_int_eq(next_can_zero(top), NBD_ZERO_NATIVE);
  ck_assert_int_eq(next_can_fast_zero(top), 1);
  ck_assert_int_eq(next_can_fua(top), NBD_FUA_EMULATE);
  ck_assert_int_eq(next_can_cache(top), NBD_CACHE_NATIVE);
  ck_assert_int_eq(next_can_extents(top), 1);
  ck_assert_int_eq(next_can_multi_conn(top), 1);
  ck_assert_int_eq(next_block_size(top, &min, &pref, &max), 0);
  ck_assert_uint_eq(min, 1);
  ck_assert_uint_eq(pref, 256 * KIB);
  ck_assert_uint_eq(max, 0xffffffff);
  /* Writes work over the read-only layer, with FUA too. */
  memset(cow_buf, 0x12, 5000);
  ck_assert_int_eq(next_pwrite(top, cow_buf, 5000, 1, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_int_eq(next_pread(top, cow_want, 5000, 1, 0), 0);
  ck_assert_mem_eq(cow_want, cow_buf, 5000);
  cow_assert_below_untouched();
}
END_TEST

START_TEST(test_readonly_export_refuses_writes)
{
  ck_assert_int_eq(testlib_stack_new(&cow_s, "cow", &cow_caps), 0);
  ck_assert_int_eq(testlib_stack_open(&cow_s, 1), 0);
  testlib_pattern(cow_s.rec->ram, MIB, 0);
  testlib_pattern(cow_orig, MIB, 0);
  ck_assert_int_eq(next_can_write(cow_s.top), 0);
  ck_assert_int_eq(next_pwrite(cow_s.top, cow_buf, 512, 0, 0), -EPERM);
  ck_assert_int_eq(next_zero(cow_s.top, 512, 0, 0), -EPERM);
  ck_assert_int_eq(next_trim(cow_s.top, 512, 0, 0), -EPERM);
  ck_assert_int_eq(next_pread(cow_s.top, cow_buf, 512, 0, 0), 0);
  ck_assert_mem_eq(cow_buf, cow_orig, 512);
  ck_assert_str_eq(testlib_log(), "pread 0+512 flags=0");
  cow_assert_below_untouched();
}
END_TEST

/* ---- startup errors ------------------------------------------------------------------- */

static void
cow_assert_setup_fails(const char *filters, const char *want)
{
  ck_assert_int_eq(testlib_stack_new(&cow_s, filters, &cow_caps), -1);
  ck_assert_msg(strstr(cow_s.err, want) != NULL, "error '%s' lacks '%s'",
                cow_s.err, want);
}

START_TEST(test_bad_keys_refused)
{
  cow_assert_setup_fails("cow cow-block-size=1000",
                         "cow-block-size=1000 must be a power of two from "
                         "4K to 32M");
  cow_assert_setup_fails("cow cow-block-size=2K", "cow-block-size=2048 must");
  cow_assert_setup_fails("cow cow-block-size=64M", "cow-block-size=67108864");
  cow_assert_setup_fails("cow cow-block-size=0", "cow-block-size=0 must");
  cow_assert_setup_fails("cow cow-on-read=/some/path", "cow-on-read");
  cow_assert_setup_fails("cow cow-on-cache=maybe", "cow-on-cache");
  cow_assert_setup_fails("cow cow-blocksize=4K", "cow-blocksize");
  cow_assert_setup_fails("cow overlay=", "overlay");
}
END_TEST

START_TEST(test_block_size_limits_accepted)
{
  testlib_stack(&cow_s, "cow cow-block-size=4K", &cow_caps);
  testlib_stack_free(&cow_s);
  testlib_stack(&cow_s, "cow cow-block-size=32M", &cow_caps);
  memset(cow_buf, 7, 10);
  ck_assert_int_eq(next_pwrite(cow_s.top, cow_buf, 10, 100, 0), 0);
  ck_assert_int_eq(next_pread(cow_s.top, cow_want, 10, 100, 0), 0);
  ck_assert_mem_eq(cow_want, cow_buf, 10);
}
END_TEST

START_TEST(test_unwritable_tmpdir_refused)
{
  setenv("TMPDIR", "/nonexistent/dir", 1);
  cow_assert_setup_fails("cow", "cannot create the temporary overlay in "
                         "/nonexistent/dir");
  unsetenv("TMPDIR");
}
END_TEST

/* ---- persistent overlay ---------------------------------------------------------------- */

static struct nbd_ctx *
cow_open_persistent(const char *extra)
{
  snprintf(cow_spec, sizeof cow_spec, "cow overlay=%s %s", cow_path, extra);
  return cow_open(cow_spec);
}

/* The disk after cow_write_mix, in cow_want. */
static void
cow_mix_want(void)
{
  memcpy(cow_want, cow_orig, (size_t)cow_caps.size);
  testlib_pattern(cow_want + 1000, 200000, 424242);
  memset(cow_want + 300000, 0, 140000);
  memset(cow_want + 600000, 0x6e, 5);
}

/* Writes blocks of several kinds, the last write with FUA. */
static void
cow_write_mix(struct nbd_ctx *top)
{
  cow_mix_want();
  ck_assert_int_eq(next_pwrite(top, cow_want + 1000, 200000, 1000, 0), 0);
  ck_assert_int_eq(next_zero(top, 140000, 300000, 0), 0);
  ck_assert_int_eq(next_pwrite(top, cow_want + 600000, 5, 600000,
                               NBD_CMD_FLAG_FUA), 0);
}

START_TEST(test_persistent_survives_restart)
{
  struct nbd_ctx *top = cow_open_persistent("");
  struct stat sb;

  cow_write_mix(top);
  ck_assert_int_eq(next_flush(top, 0), 0);
  cow_assert_disk(top);
  testlib_stack_free(&cow_s);
  ck_assert_int_eq(stat(cow_path, &sb), 0);
  ck_assert_uint_eq(sb.st_mode & 0777, 0600);

  top = cow_open_persistent("");
  cow_assert_disk(top);
  ck_assert_str_eq(cow_extents_str(top, MIB, 0, 0),
                   "0+327680/0 327680+65536/3 393216+655360/0");
  cow_assert_below_untouched();
}
END_TEST

/* Clean shutdown (cleanup) writes the map even without a flush. */
START_TEST(test_persistent_written_at_clean_exit)
{
  struct nbd_ctx *top = cow_open_persistent("cow-block-size=4K");

  cow_write_mix(top);
  testlib_stack_free(&cow_s);
  top = cow_open_persistent("cow-block-size=4K");
  cow_assert_disk(top);
}
END_TEST

/* A crash: a child process writes, flushes, writes again and dies without
 * cleanup.  What the flush (and the FUA write) covered must be back. */
START_TEST(test_persistent_crash_keeps_flushed_writes)
{
  struct nbd_ctx *top;
  pid_t pid;
  int status;

  cow_caps.size = 4 * MIB;
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    top = cow_open_persistent("cow-block-size=4K");
    cow_write_mix(top);                 /* ends with a FUA write */
    memset(cow_buf, 0xfa, 3 * MIB);
    if (next_pwrite(top, cow_buf, 3 * MIB, MIB - 7, 0) != 0 ||
        next_flush(top, 0) != 0)
      _exit(2);
    /* Not flushed: may or may not survive. */
    if (next_pwrite(top, cow_buf, 4096, 0, 0) != 0)
      _exit(3);
    _exit(0);                           /* no cleanup: the map stays */
  }
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  top = cow_open_persistent("cow-block-size=4K");
  cow_mix_want();
  memset(cow_want + MIB - 7, 0xfa, 3 * MIB);
  /* Everything but the unflushed first block. */
  ck_assert_int_eq(next_pread(top, cow_buf, 4 * MIB - 4096, 4096, 0), 0);
  ck_assert_mem_eq(cow_buf, cow_want + 4096, 4 * MIB - 4096);
}
END_TEST

/* The FUA write alone (no flush afterwards) is durable. */
START_TEST(test_persistent_crash_keeps_fua_write)
{
  struct nbd_ctx *top;
  pid_t pid;
  int status;

  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    top = cow_open_persistent("");
    memset(cow_buf, 0x4f, 70000);
    if (next_pwrite(top, cow_buf, 70000, 12345, NBD_CMD_FLAG_FUA) != 0)
      _exit(2);
    _exit(0);
  }
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  top = cow_open_persistent("");
  ck_assert_int_eq(next_pread(top, cow_want, 70000, 12345, 0), 0);
  memset(cow_buf, 0x4f, 70000);
  ck_assert_mem_eq(cow_want, cow_buf, 70000);
}
END_TEST

static void
cow_assert_open_fails(const char *want)
{
  char *log;
  int r;

  ck_assert_int_eq(testlib_stack_new(&cow_s, cow_spec, &cow_caps), 0);
  testlib_stderr_begin();
  r = testlib_stack_open(&cow_s, 0);
  log = testlib_stderr_end();
  ck_assert_int_eq(r, -1);
  ck_assert_msg(strstr(log, want) != NULL, "log '%s' lacks '%s'", log, want);
  free(log);
}

START_TEST(test_persistent_size_mismatch_refused)
{
  cow_open_persistent("");
  testlib_stack_free(&cow_s);
  cow_caps.size = 2 * MIB;
  snprintf(cow_spec, sizeof cow_spec, "cow overlay=%s", cow_path);
  cow_assert_open_fails("was made for a disk of 1048576 bytes, but the disk "
                        "below has 2097152 bytes");
}
END_TEST

START_TEST(test_persistent_block_size_mismatch_refused)
{
  cow_open_persistent("");
  testlib_stack_free(&cow_s);
  snprintf(cow_spec, sizeof cow_spec, "cow overlay=%s cow-block-size=4K",
           cow_path);
  cow_assert_setup_fails(cow_spec, "was made with cow-block-size=65536, not "
                         "4096");
}
END_TEST

/* Replaces the overlay file with len bytes of data. */
static void
cow_write_file(const void *data, size_t len)
{
  FILE *fp = fopen(cow_path, "wb");

  ck_assert_ptr_nonnull(fp);
  ck_assert_uint_eq(fwrite(data, 1, len, fp), len);
  ck_assert_int_eq(fclose(fp), 0);
}

START_TEST(test_persistent_bad_magic_refused_untouched)
{
  struct stat before, after;
  FILE *fp;

  testlib_pattern(cow_want, 100000, 5);
  cow_write_file(cow_want, 100000);
  ck_assert_int_eq(stat(cow_path, &before), 0);
  snprintf(cow_spec, sizeof cow_spec, "cow overlay=%s", cow_path);
  cow_assert_setup_fails(cow_spec, "is not an nbdstack cow overlay (bad "
                         "magic)");
  /* Also a file too short to hold a magic. */
  ck_assert_int_eq(stat(cow_path, &after), 0);
  ck_assert_int_eq(after.st_size, 100000);
  ck_assert(after.st_mtim.tv_sec == before.st_mtim.tv_sec &&
            after.st_mtim.tv_nsec == before.st_mtim.tv_nsec);
  fp = fopen(cow_path, "rb");
  ck_assert_ptr_nonnull(fp);
  ck_assert_uint_eq(fread(cow_buf, 1, 200000, fp), 100000);
  fclose(fp);
  ck_assert_mem_eq(cow_buf, cow_want, 100000);
  cow_write_file("abc", 3);
  cow_assert_setup_fails(cow_spec, "bad magic");
}
END_TEST

START_TEST(test_persistent_corrupt_files_refused)
{
  unsigned char *file;
  size_t len;
  FILE *fp;

  cow_open_persistent("cow-block-size=4K");
  testlib_stack_free(&cow_s);
  fp = fopen(cow_path, "rb");
  ck_assert_ptr_nonnull(fp);
  file = cow_buf;
  len = fread(file, 1, 2 * MIB, fp);
  fclose(fp);
  ck_assert_uint_ge(len, 4096 + 64);
  snprintf(cow_spec, sizeof cow_spec, "cow overlay=%s cow-block-size=4K",
           cow_path);
  file[8] = 9;                                  /* version */
  cow_write_file(file, len);
  cow_assert_setup_fails(cow_spec, "has format version 9");
  file[8] = 1;
  file[4096 + 10] = 0xff;                       /* state 3 in the map */
  cow_write_file(file, len);
  cow_assert_setup_fails(cow_spec, "has a corrupt map");
  file[4096 + 10] = 0;
  cow_write_file(file, 4096 + 10);              /* map cut short */
  cow_assert_setup_fails(cow_spec, "the file is truncated");
}
END_TEST

START_TEST(test_persistent_in_use_refused)
{
  struct nbd_layer *l;
  char err[256];

  cow_open_persistent("");
  snprintf(cow_spec, sizeof cow_spec, "overlay=%s", cow_path);
  l = testlib_filter_new("cow", cow_spec, err, sizeof err);
  ck_assert_ptr_null(l);
  ck_assert_msg(strstr(err, "is in use by another process") != NULL,
                "error: %s", err);
}
END_TEST

START_TEST(test_persistent_empty_file_is_new)
{
  struct nbd_ctx *top;

  cow_write_file("", 0);
  top = cow_open_persistent("");
  cow_write_mix(top);
  testlib_stack_free(&cow_s);
  top = cow_open_persistent("");
  cow_assert_disk(top);
}
END_TEST

/* ---- suite ------------------------------------------------------------------------------ */

static TCase *
cow_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, cow_setup, cow_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
cow_suite(void)
{
  Suite *s = suite_create("cow");
  TCase *tc;

  tc = cow_tcase(s, "datapath");
  tcase_add_test(tc, test_reads_pass_below_until_written);
  tcase_add_test(tc, test_write_never_reaches_below);
  tcase_add_test(tc, test_written_block_not_read_below);
  tcase_add_test(tc, test_partial_write_keeps_surrounding_bytes);
  tcase_add_test(tc, test_unaligned_write_spanning_blocks);
  tcase_add_test(tc, test_concurrent_partial_writes_to_one_block);
  tcase_add_test(tc, test_two_connections_share_the_overlay);
  tcase_add_test(tc, test_last_partial_block);
  tcase_add_test(tc, test_below_minimum_block_size_respected);

  tc = cow_tcase(s, "trim and zero");
  tcase_add_test(tc, test_zero_reads_zeros);
  tcase_add_test(tc, test_trim_reads_zeros);
  tcase_add_test(tc, test_fast_zero_is_native);
  tcase_add_test(tc, test_write_into_zeroed_block_keeps_zeros);

  tc = cow_tcase(s, "extents");
  tcase_add_test(tc, test_extents_merge_overlay_and_below);
  tcase_add_test(tc, test_extents_req_one_stops_after_first_run);
  tcase_add_test(tc, test_extents_without_extents_below);

  tc = cow_tcase(s, "cow-on-read and cow-on-cache");
  tcase_add_test(tc, test_reads_go_below_each_time_by_default);
  tcase_add_test(tc, test_cow_on_read_copies_blocks);
  tcase_add_test(tc, test_cow_on_cache_copies_blocks);
  tcase_add_test(tc, test_cache_goes_below_by_default);
  tcase_add_test(tc, test_cache_ignored_when_below_cannot);

  tc = cow_tcase(s, "capabilities");
  tcase_add_test(tc, test_capabilities);
  tcase_add_test(tc, test_readonly_export_refuses_writes);

  tc = cow_tcase(s, "startup");
  tcase_add_test(tc, test_bad_keys_refused);
  tcase_add_test(tc, test_block_size_limits_accepted);
  tcase_add_test(tc, test_unwritable_tmpdir_refused);

  tc = cow_tcase(s, "persistent overlay");
  tcase_add_test(tc, test_persistent_survives_restart);
  tcase_add_test(tc, test_persistent_written_at_clean_exit);
  tcase_add_test(tc, test_persistent_crash_keeps_flushed_writes);
  tcase_add_test(tc, test_persistent_crash_keeps_fua_write);
  tcase_add_test(tc, test_persistent_size_mismatch_refused);
  tcase_add_test(tc, test_persistent_block_size_mismatch_refused);
  tcase_add_test(tc, test_persistent_bad_magic_refused_untouched);
  tcase_add_test(tc, test_persistent_corrupt_files_refused);
  tcase_add_test(tc, test_persistent_in_use_refused);
  tcase_add_test(tc, test_persistent_empty_file_is_new);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(cow_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
