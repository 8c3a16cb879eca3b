/* Tests of NBD transmission as the server speaks it: request parsing and
 * replies (transmission.c), and what a connection does around them
 * (conn.c): moving between the reader and the workers, gathering requests
 * (coalescing), the flush at close; in-process and without the server
 * binary (tests/protolib.h: a socketpair, conn_run in a thread and a
 * blocking client).
 *
 * Most test cases serve two 1 MiB memory exports, "" and "ro" (read-only);
 * "payloads not kept" serves null; "inline or workers" and "flush at
 * close" serve protolib's test-only slowpoke and slowflush.  A build
 * without memory or null skips the test cases that need it.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "protolib.h"
#include "stop.h"
#include "testlib.h"

START_TEST(test_simple_read_returns_written_data)
{
  struct tc t;
  unsigned char w[4096], r[4096];

  tc_connect(&t, "", 0, 0);
  pattern(w, sizeof w, 8192);
  ck_assert_uint_eq(simple_write(&t, 1, 8192, w, sizeof w), 0);
  memset(r, 0, sizeof r);
  ck_assert_uint_eq(simple_read(&t, 2, 8192, r, sizeof r), 0);
  ck_assert(memcmp(r, w, sizeof w) == 0);
  /* The data was exactly 4096 bytes: the next reply follows it. */
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_FLUSH, 3, 0, 0), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_write_read_round_trip_unaligned)
{
  struct tc t;
  unsigned char *w = xmalloc(10000), *r = xmalloc(12000);

  tc_connect(&t, "", 0, 0);
  /* Across a 32 KiB page of the store, not aligned to anything. */
  pattern(w, 10000, 30001);
  ck_assert_uint_eq(simple_write(&t, 1, 30001, w, 10000), 0);
  ck_assert_uint_eq(simple_read(&t, 2, 29001, r, 12000), 0);
  ck_assert(is_zero(r, 1000));
  ck_assert(memcmp(r + 1000, w, 10000) == 0);
  ck_assert(is_zero(r + 11000, 1000));
  free(w);
  free(r);
  tc_end(&t);
}
END_TEST

START_TEST(test_read_past_end_einval)
{
  struct tc t;
  unsigned char buf[1024];

  tc_connect(&t, "", 0, 0);
  ck_assert_uint_eq(simple_read(&t, 1, DISK_SIZE - 512, buf, 1024),
                    NBD_EINVAL);
  ck_assert_uint_eq(simple_read(&t, 2, DISK_SIZE, buf, 1), NBD_EINVAL);
  /* offset + count wraps around 2^64 */
  ck_assert_uint_eq(simple_read(&t, 3, UINT64_MAX - 511, buf, 1024),
                    NBD_EINVAL);
  /* Up to the last byte is fine. */
  ck_assert_uint_eq(simple_read(&t, 4, DISK_SIZE - 512, buf, 512), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_write_past_end_enospc)
{
  struct tc t;
  unsigned char w[8192], r[4096];

  tc_connect(&t, "", 0, 0);
  pattern(w, sizeof w, DISK_SIZE - 4096);
  ck_assert_uint_eq(simple_write(&t, 1, DISK_SIZE - 4096, w, sizeof w),
                    NBD_ENOSPC);
  /* Its payload was consumed and nothing of it was written. */
  ck_assert_uint_eq(simple_read(&t, 2, DISK_SIZE - 4096, r, sizeof r), 0);
  ck_assert(is_zero(r, sizeof r));
  tc_end(&t);
}
END_TEST

START_TEST(test_trim_past_end_einval)
{
  struct tc t;

  tc_connect(&t, "", 0, 0);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_TRIM, 1, DISK_SIZE - 4096,
                               8192), NBD_EINVAL);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_TRIM, 2, DISK_SIZE - 4096,
                               4096), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_read_zero_length_einval)
{
  struct tc t;

  tc_connect(&t, "", 0, 0);
  /* An error reply carries no data, even for a READ. */
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_READ, 1, 0, 0), NBD_EINVAL);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_FLUSH, 2, 0, 0), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_read_over_max_payload_einval_and_continues)
{
  struct tc t;
  unsigned char buf[512];

  tc_connect(&t, "", 0, 0);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_READ, 1, 0, 33 * MIB),
                    NBD_EINVAL);
  ck_assert_uint_eq(simple_read(&t, 2, 0, buf, sizeof buf), 0);
  ck_assert(is_zero(buf, sizeof buf));
  tc_end(&t);
}
END_TEST

START_TEST(test_unknown_command_einval_and_continues)
{
  struct tc t;
  unsigned char buf[512];

  tc_connect(&t, "", 0, 0);
  ck_assert_uint_eq(simple_cmd(&t, 0, 99, 1, 0, 512), NBD_EINVAL);
  ck_assert_uint_eq(simple_read(&t, 2, 0, buf, sizeof buf), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_read_unknown_flag_einval)
{
  struct tc t;
  unsigned char buf[512];

  tc_connect(&t, "", 0, 0);
  ck_assert_uint_eq(simple_cmd(&t, 1u << 7, NBD_CMD_READ, 1, 0, 512),
                    NBD_EINVAL);
  /* DF without structured replies is not a valid flag either. */
  ck_assert_uint_eq(simple_cmd(&t, NBD_CMD_FLAG_DF, NBD_CMD_READ, 2, 0, 512),
                    NBD_EINVAL);
  ck_assert_uint_eq(simple_read(&t, 3, 0, buf, sizeof buf), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_write_zeroes_fast_zero_succeeds)
{
  struct tc t;
  unsigned char w[8192], r[8192];

  tc_connect(&t, "", 0, 0);
  pattern(w, sizeof w, 0);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, sizeof w), 0);
  ck_assert_uint_eq(simple_cmd(&t, NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_WRITE_ZEROES,
                               2, 0, sizeof w), 0);
  ck_assert_uint_eq(simple_read(&t, 3, 0, r, sizeof r), 0);
  ck_assert(is_zero(r, sizeof r));
  tc_end(&t);
}
END_TEST

START_TEST(test_block_status_without_meta_context_einval)
{
  struct tc t;

  tc_connect(&t, "", 1, 0);
  req_send(&t, 0, NBD_CMD_BLOCK_STATUS, 1, 0, 4096, NULL);
  ck_assert_uint_eq(chunk_error(&t, 1), NBD_EINVAL);
  tc_end(&t);
}
END_TEST

/* Extent type of the descriptor covering disk byte off. */
static uint32_t
extent_type_at(const unsigned char *d, uint32_t n, uint64_t start,
               uint64_t off)
{
  uint32_t i;

  for (i = 0; i < n; i++) {
    uint32_t len = wire_get32(d + 8 * i);
    if (off < start + len)
      return wire_get32(d + 8 * i + 4);
    start += len;
  }
  ck_abort_msg("no descriptor covers offset %llu", (unsigned long long)off);
  return 0;
}

START_TEST(test_block_status_base_allocation_descriptors)
{
  struct tc t;
  struct chunk ch;
  unsigned char w[4096];
  uint32_t i, n, total = 0;
  const uint64_t start = 0;
  const uint32_t count = 256 * KIB;

  tc_connect(&t, "", 1, 1);
  pattern(w, sizeof w, 64 * KIB);
  ck_assert_uint_eq(simple_write(&t, 1, 64 * KIB, w, sizeof w), 0);
  req_send(&t, 0, NBD_CMD_BLOCK_STATUS, 2, start, count, NULL);
  chunk_read(&t, &ch);
  ck_assert_uint_eq(ch.cookie, 2);
  ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_BLOCK_STATUS);
  ck_assert_uint_eq(ch.flags, NBD_REPLY_FLAG_DONE);
  ck_assert_uint_ge(ch.len, 4 + 8);
  ck_assert_uint_eq((ch.len - 4) % 8, 0);
  ck_assert_uint_eq(wire_get32(ch.data), t.meta_id);
  n = (ch.len - 4) / 8;
  for (i = 0; i < n; i++) {
    uint32_t len = wire_get32(ch.data + 4 + 8 * i);
    ck_assert_uint_gt(len, 0);
    total += len;
  }
  /* Memory knows every byte: the whole request is described, no more. */
  ck_assert_uint_eq(total, count);
  /* The written bytes are data; far from them, holes that read as zero. */
  ck_assert_uint_eq(extent_type_at(ch.data + 4, n, start, 64 * KIB), 0);
  ck_assert_uint_eq(extent_type_at(ch.data + 4, n, start, 68 * KIB - 1), 0);
  ck_assert_uint_eq(extent_type_at(ch.data + 4, n, start, 0), HOLE_TYPE);
  ck_assert_uint_eq(extent_type_at(ch.data + 4, n, start, 32 * KIB - 1),
                    HOLE_TYPE);
  ck_assert_uint_eq(extent_type_at(ch.data + 4, n, start, 128 * KIB),
                    HOLE_TYPE);
  ck_assert_uint_eq(extent_type_at(ch.data + 4, n, start, count - 1),
                    HOLE_TYPE);
  free(ch.data);
  tc_end(&t);
}
END_TEST

START_TEST(test_block_status_req_one_single_descriptor)
{
  struct tc t;
  struct chunk ch;
  unsigned char w[4096];

  tc_connect(&t, "", 1, 1);
  pattern(w, sizeof w, 128 * KIB);
  ck_assert_uint_eq(simple_write(&t, 1, 128 * KIB, w, sizeof w), 0);
  req_send(&t, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 2, 0, 256 * KIB, NULL);
  chunk_read(&t, &ch);
  ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_BLOCK_STATUS);
  ck_assert_uint_eq(ch.len, 4 + 8);
  ck_assert_uint_eq(wire_get32(ch.data), t.meta_id);
  ck_assert_uint_gt(wire_get32(ch.data + 4), 0);
  ck_assert_uint_le(wire_get32(ch.data + 4), 128 * KIB);
  ck_assert_uint_eq(wire_get32(ch.data + 8), HOLE_TYPE);
  free(ch.data);
  tc_end(&t);
}
END_TEST

START_TEST(test_write_over_max_payload_einval_payload_skipped)
{
  struct tc t;
  const uint32_t big = 33 * MIB;
  unsigned char *w = xmalloc(big), r[512];

  tc_connect(&t, "", 0, 0);
  memset(w, 0xa5, big);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, big), NBD_EINVAL);
  /* The 33 MiB were read and dropped: the stream is in sync, and the disk
   * is untouched. */
  ck_assert_uint_eq(simple_read(&t, 2, 0, r, sizeof r), 0);
  ck_assert(is_zero(r, sizeof r));
  free(w);
  tc_end(&t);
}
END_TEST

START_TEST(test_write_far_over_max_payload_closes)
{
  struct tc t;

  tc_connect(&t, "", 0, 0);
  /* 65 MiB announced: not worth reading, the connection is dropped. */
  req_send(&t, 0, NBD_CMD_WRITE, 1, 0, 65 * MIB, NULL);
  cl_expect_eof(&t);
  tc_end(&t);
}
END_TEST

START_TEST(test_block_status_meta_context_of_other_export_go)
{
  struct tc t;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_structured(&t);
  hs_meta(&t, "ro");
  hs_go(&t, "");
  /* The context was chosen for "ro", not for the export in use. */
  req_send(&t, 0, NBD_CMD_BLOCK_STATUS, 1, 0, 4096, NULL);
  ck_assert_uint_eq(chunk_error(&t, 1), NBD_EINVAL);
  tc_end(&t);
}
END_TEST

START_TEST(test_block_status_meta_context_of_other_export_export_name)
{
  struct tc t;
  unsigned char out[10];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_structured(&t);
  hs_meta(&t, "ro");
  opt_send(&t, NBD_OPT_EXPORT_NAME, NULL, 0);  /* export "" */
  cl_read(&t, out, sizeof out);
  ck_assert_uint_eq(wire_get64(out), DISK_SIZE);
  /* As with GO: the context was chosen for "ro", not for "". */
  req_send(&t, 0, NBD_CMD_BLOCK_STATUS, 1, 0, 4096, NULL);
  ck_assert_uint_eq(chunk_error(&t, 1), NBD_EINVAL);
  tc_end(&t);
}
END_TEST

START_TEST(test_structured_read_unwritten_is_hole_chunk)
{
  struct tc t;
  struct chunk ch;

  tc_connect(&t, "", 1, 0);
  req_send(&t, 0, NBD_CMD_READ, 1, 128 * KIB, 64 * KIB, NULL);
  chunk_read(&t, &ch);
  ck_assert_uint_eq(ch.cookie, 1);
  ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_OFFSET_HOLE);
  ck_assert_uint_eq(ch.flags, NBD_REPLY_FLAG_DONE);
  ck_assert_uint_eq(ch.len, 12);
  ck_assert_uint_eq(wire_get64(ch.data), 128 * KIB);
  ck_assert_uint_eq(wire_get32(ch.data + 8), 64 * KIB);
  free(ch.data);
  tc_end(&t);
}
END_TEST

/* After many reads without zeros only some reads are scanned for them
 * (transmission.c, TX_SCAN_*); zeros read after that must still come back
 * as a hole chunk within a few reads, and every read is right either way. */
START_TEST(test_structured_read_hole_found_again_after_data_streak)
{
  struct tc t;
  struct chunk ch;
  unsigned char *w = xmalloc(4096);
  unsigned i, got_hole = 0;

  tc_connect(&t, "", 1, 0);
  pattern(w, 4096, 0);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, 4096), 0);
  for (i = 0; i < 40; i++) {          /* a long streak of data reads */
    req_send(&t, 0, NBD_CMD_READ, 2, 0, 4096, NULL);
    chunk_read(&t, &ch);
    ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_OFFSET_DATA);
    ck_assert(memcmp(ch.data + 8, w, 4096) == 0);
    free(ch.data);
  }
  for (i = 0; i < 300 && !got_hole; i++) {  /* then zeros */
    req_send(&t, 0, NBD_CMD_READ, 3, 64 * KIB, 4096, NULL);
    chunk_read(&t, &ch);
    ck_assert_uint_eq(ch.flags, NBD_REPLY_FLAG_DONE);
    if (ch.type == NBD_REPLY_TYPE_OFFSET_HOLE)
      got_hole = 1;
    else {
      ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_OFFSET_DATA);
      ck_assert(is_zero(ch.data + 8, 4096));
    }
    free(ch.data);
  }
  /* The streak was 40: the next scan is at 64, and scans never come more
   * than 256 reads apart. */
  ck_assert_msg(got_hole, "300 reads of zeros after a data streak: no hole "
                "chunk");
  ck_assert_msg(i <= 25, "the first hole chunk came %u reads after the "
                "zeros began; the back-off scans at a streak of 64", i);
  free(w);
  tc_end(&t);
}
END_TEST

START_TEST(test_structured_read_df_is_one_data_chunk)
{
  struct tc t;
  struct chunk ch;

  tc_connect(&t, "", 1, 0);
  req_send(&t, NBD_CMD_FLAG_DF, NBD_CMD_READ, 1, 128 * KIB, 64 * KIB, NULL);
  chunk_read(&t, &ch);
  ck_assert_uint_eq(ch.cookie, 1);
  ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_OFFSET_DATA);
  ck_assert_uint_eq(ch.flags, NBD_REPLY_FLAG_DONE);
  ck_assert_uint_eq(ch.len, 8 + 64 * KIB);
  ck_assert_uint_eq(wire_get64(ch.data), 128 * KIB);
  ck_assert(is_zero(ch.data + 8, 64 * KIB));
  free(ch.data);
  tc_end(&t);
}
END_TEST

/* Chunks of a structured read, reassembled: every byte covered once, in
 * any mix of data and hole chunks, DONE only on the last. */
START_TEST(test_structured_read_chunks_reassemble_data)
{
  struct tc t;
  struct chunk ch;
  unsigned char w[10000], *got = xmalloc(64 * KIB), *seen = xmalloc(64 * KIB);
  const uint64_t base = 256 * KIB;
  uint32_t covered = 0, i;
  int done = 0;

  memset(seen, 0, 64 * KIB);
  tc_connect(&t, "", 1, 0);
  pattern(w, sizeof w, base + 20000);
  ck_assert_uint_eq(simple_write(&t, 1, base + 20000, w, sizeof w), 0);
  req_send(&t, 0, NBD_CMD_READ, 2, base, 64 * KIB, NULL);
  while (!done) {
    uint64_t off;
    uint32_t len;

    chunk_read(&t, &ch);
    ck_assert_uint_eq(ch.cookie, 2);
    ck_assert_uint_ge(ch.len, 12);
    off = wire_get64(ch.data);
    if (ch.type == NBD_REPLY_TYPE_OFFSET_DATA) {
      len = ch.len - 8;
    } else {
      ck_assert_uint_eq(ch.type, NBD_REPLY_TYPE_OFFSET_HOLE);
      ck_assert_uint_eq(ch.len, 12);
      len = wire_get32(ch.data + 8);
    }
    ck_assert_uint_gt(len, 0);
    ck_assert_uint_ge(off, base);
    ck_assert_uint_le(off - base + len, 64 * KIB);
    for (i = 0; i < len; i++) {
      ck_assert_msg(!seen[off - base + i], "byte %llu sent twice",
                    (unsigned long long)(off + i));
      seen[off - base + i] = 1;
      got[off - base + i] = ch.type == NBD_REPLY_TYPE_OFFSET_DATA ?
                            ch.data[8 + i] : 0;
    }
    covered += len;
    done = ch.flags & NBD_REPLY_FLAG_DONE;
    free(ch.data);
  }
  ck_assert_uint_eq(covered, 64 * KIB);
  ck_assert(is_zero(got, 20000));
  ck_assert(memcmp(got + 20000, w, sizeof w) == 0);
  ck_assert(is_zero(got + 30000, 64 * KIB - 30000));
  free(got);
  free(seen);
  tc_end(&t);
}
END_TEST

START_TEST(test_structured_read_past_end_error_chunk)
{
  struct tc t;

  tc_connect(&t, "", 1, 0);
  req_send(&t, 0, NBD_CMD_READ, 5, DISK_SIZE - 512, 1024, NULL);
  ck_assert_uint_eq(chunk_error(&t, 5), NBD_EINVAL);
  tc_end(&t);
}
END_TEST

START_TEST(test_write_to_readonly_export_eperm)
{
  struct tc t;
  unsigned char w[512], r[512];

  tc_connect(&t, "ro", 0, 0);
  pattern(w, sizeof w, 0);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, sizeof w), NBD_EPERM);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_TRIM, 2, 0, 4096), NBD_EPERM);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_WRITE_ZEROES, 3, 0, 4096),
                    NBD_EPERM);
  /* The payload was skipped and nothing was written. */
  ck_assert_uint_eq(simple_read(&t, 4, 0, r, sizeof r), 0);
  ck_assert(is_zero(r, sizeof r));
  tc_end(&t);
}
END_TEST

START_TEST(test_bad_request_magic_closes)
{
  struct tc t;
  unsigned char h[28];

  tc_connect(&t, "", 0, 0);
  memset(h, 0, sizeof h);
  wire_put32(h, 0x25609514);
  wire_put32(h + 24, 512);
  cl_send(&t, h, sizeof h);
  cl_expect_eof(&t);
  tc_end(&t);
}
END_TEST

START_TEST(test_disc_closes_after_earlier_replies)
{
  struct tc t;
  unsigned char w[8192], r[4096];
  int seen[2] = { 0, 0 }, i;

  tc_connect(&t, "", 0, 0);
  pattern(w, sizeof w, 4096);
  ck_assert_uint_eq(simple_write(&t, 1, 4096, w, sizeof w), 0);
  /* Two reads and DISC in one go, before reading anything: both reads
   * are answered (in any order), then the server closes, and DISC itself
   * gets no reply. */
  req_send(&t, 0, NBD_CMD_READ, 2, 4096, 4096, NULL);
  req_send(&t, 0, NBD_CMD_READ, 3, 8192, 4096, NULL);
  req_send(&t, 0, NBD_CMD_DISC, 4, 0, 0, NULL);
  for (i = 0; i < 2; i++) {
    unsigned char h[16];
    uint64_t cookie;

    cl_read(&t, h, sizeof h);
    ck_assert_uint_eq(wire_get32(h), NBD_SIMPLE_REPLY_MAGIC);
    ck_assert_uint_eq(wire_get32(h + 4), 0);
    cookie = wire_get64(h + 8);
    ck_assert_msg(cookie == 2 || cookie == 3, "reply with cookie %llu",
                  (unsigned long long)cookie);
    ck_assert(!seen[cookie - 2]);
    seen[cookie - 2] = 1;
    cl_read(&t, r, sizeof r);
    ck_assert(memcmp(r, w + (cookie - 2) * 4096, 4096) == 0);
  }
  cl_expect_eof(&t);
  tc_end(&t);
}
END_TEST

#define NPIPE 64

START_TEST(test_pipelined_reads_matched_by_cookie)
{
  struct tc t;
  unsigned char *w = xmalloc(NPIPE * 4096), r[4096];
  unsigned char reqs[NPIPE][28];
  int seen[NPIPE];
  unsigned i;

  memset(seen, 0, sizeof seen);
  tc_connect(&t, "", 0, 0);
  pattern(w, NPIPE * 4096, 0);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, NPIPE * 4096), 0);
  /* Offsets in a scrambled order, cookies unrelated to the order. */
  for (i = 0; i < NPIPE; i++) {
    uint64_t block = (i * 37) % NPIPE;
    wire_put32(reqs[i], NBD_REQUEST_MAGIC);
    wire_put16(reqs[i] + 4, 0);
    wire_put16(reqs[i] + 6, NBD_CMD_READ);
    wire_put64(reqs[i] + 8, UINT64_C(0xC00C1E0000000000) | block);
    wire_put64(reqs[i] + 16, block * 4096);
    wire_put32(reqs[i] + 24, 4096);
  }
  cl_send(&t, reqs, sizeof reqs);
  for (i = 0; i < NPIPE; i++) {
    unsigned char h[16];
    uint64_t cookie, block;

    cl_read(&t, h, sizeof h);
    ck_assert_uint_eq(wire_get32(h), NBD_SIMPLE_REPLY_MAGIC);
    ck_assert_uint_eq(wire_get32(h + 4), 0);
    cookie = wire_get64(h + 8);
    ck_assert_msg(cookie >> 40 == UINT64_C(0xC00C1E),
                  "unknown cookie %#llx", (unsigned long long)cookie);
    block = cookie & 0xffffffffff;
    ck_assert_uint_lt(block, NPIPE);
    ck_assert_msg(!seen[block], "two replies for cookie %#llx",
                  (unsigned long long)cookie);
    seen[block] = 1;
    cl_read(&t, r, sizeof r);
    ck_assert_msg(memcmp(r, w + block * 4096, 4096) == 0,
                  "data of cookie %#llx is not block %llu",
                  (unsigned long long)cookie, (unsigned long long)block);
  }
  free(w);
  tc_end(&t);
}
END_TEST

/* ---- coalescing (conn_coalesce) --------------------------------------------- */

#define COAL_BLOCKS 256
#define COAL_DEPTH  32

/* Request i of a trickling client: the first pass over the blocks writes
 * them, the next reads them back, and so on; each write fills its block
 * with a pattern of (block, pass). */
static void
coal_send(struct tc *t, unsigned i, unsigned char *buf)
{
  unsigned block = i % COAL_BLOCKS, pass = i / COAL_BLOCKS;

  if (pass % 2 == 0) {
    pattern(buf, 4096, (uint64_t)pass << 32 | block);
    req_send(t, 0, NBD_CMD_WRITE, i, (uint64_t)block * 4096, 4096, buf);
  } else
    req_send(t, 0, NBD_CMD_READ, i, (uint64_t)block * 4096, 4096, NULL);
}

/* Reads one reply and checks it; returns its request's index. */
static unsigned
coal_reply(struct tc *t, unsigned char *done)
{
  unsigned char h[16], buf[4096], want[4096];
  unsigned i, block, pass;

  cl_read(t, h, sizeof h);
  ck_assert_uint_eq(wire_get32(h), NBD_SIMPLE_REPLY_MAGIC);
  ck_assert_uint_eq(wire_get32(h + 4), 0);
  ck_assert_uint_lt(wire_get64(h + 8), 16 * COAL_BLOCKS);
  i = (unsigned)wire_get64(h + 8);
  ck_assert_msg(!done[i], "two replies for request %u", i);
  done[i] = 1;
  block = i % COAL_BLOCKS;
  pass = i / COAL_BLOCKS;
  if (pass % 2 == 1) {
    cl_read(t, buf, sizeof buf);
    pattern(want, sizeof want, (uint64_t)(pass - 1) << 32 | block);
    ck_assert_msg(memcmp(buf, want, sizeof buf) == 0,
                  "request %u read block %u without pass %u's data", i,
                  block, pass - 1);
  }
  return i;
}

/* Ends the connection as tc_end does and returns its gathering counts,
 * read once its thread has ended. */
static void
coal_end(struct tc *t, unsigned long *tries, unsigned long *batches)
{
  close(t->fd);
  ck_assert_int_eq(pthread_join(t->tid, NULL), 0);
  *tries = t->c->w.pol.coal_tries;
  *batches = t->c->w.pol.coal_batches;
  conn_free(t->c);
  t->c = NULL;
}

/* A client like fio at queue depth 32: 32 requests in flight, and a new
 * one sent for every reply taken.  Every reply matches its request, reads
 * see the writes before them, and the server did gather requests.  The
 * longest gathering (1 ms, slices of 250 us) lets a client slowed down by
 * a sanitizer still send 6 requests within a slice. */
START_TEST(test_coalesce_trickling_client_gathered_and_correct)
{
  const unsigned total = 16 * COAL_BLOCKS;
  unsigned char *done = calloc(total, 1), buf[4096];
  unsigned sent = 0, got = 0;
  unsigned long tries, batches;
  struct tc t;

  ck_assert_ptr_nonnull(done);
  cfg.coalesce = (uint64_t)CONFIG_MAX_COALESCE_US * 1000;
  tc_connect(&t, "", 0, 0);
  while (got < total) {
    while (sent < total && sent - got < COAL_DEPTH) {
      /* A read waits for the write of its block a pass before. */
      while (sent >= COAL_BLOCKS && !done[sent - COAL_BLOCKS]) {
        coal_reply(&t, done);
        got++;
      }
      coal_send(&t, sent++, buf);
    }
    coal_reply(&t, done);
    got++;
  }
  coal_end(&t, &tries, &batches);
  ck_assert_uint_gt(batches, 0);
  free(done);
}
END_TEST

/* One request at a time: a gathering never finds enough, and the tries
 * back off (1, 2, 4 ... 1024 waits apart), so qd 1 almost never sleeps. */
START_TEST(test_coalesce_qd1_client_backs_off)
{
  unsigned char buf[4096];
  unsigned long tries, batches;
  unsigned i;
  struct tc t;

  tc_connect(&t, "", 0, 0);
  for (i = 0; i < 2000; i++)
    ck_assert_uint_eq(simple_read(&t, i, (uint64_t)(i % 256) * 4096, buf,
                                  sizeof buf), 0);
  coal_end(&t, &tries, &batches);
  ck_assert_uint_eq(batches, 0);
  ck_assert_uint_le(tries, 12);
}
END_TEST

/* Bursts of 8 that the client then waits for: each burst is answered
 * whole (a gathering that finds nothing more stops), 200 times. */
START_TEST(test_coalesce_bursts_answered)
{
  unsigned char *done = calloc(200 * 8, 1), buf[4096];
  unsigned round, k;
  struct tc t;

  ck_assert_ptr_nonnull(done);
  tc_connect(&t, "", 0, 0);
  for (round = 0; round < 200; round++) {
    for (k = 0; k < 8; k++)
      req_send(&t, 0, NBD_CMD_READ, round * 8 + k, k * 4096, 4096, NULL);
    for (k = 0; k < 8; k++) {
      unsigned char h[16];
      uint64_t cookie;

      cl_read(&t, h, sizeof h);
      ck_assert_uint_eq(wire_get32(h + 4), 0);
      cookie = wire_get64(h + 8);
      ck_assert_uint_lt(cookie, 200 * 8);
      ck_assert_uint_eq(cookie / 8, round);
      ck_assert(!done[cookie]);
      done[cookie] = 1;
      cl_read(&t, buf, sizeof buf);
    }
  }
  tc_end(&t);
  free(done);
}
END_TEST

/* The client sends requests and then closes its sending side while the
 * server may be gathering: every request is answered, then the server
 * closes. */
START_TEST(test_coalesce_client_eof_after_requests)
{
  unsigned char buf[4096];
  unsigned k, round;

  for (round = 0; round < 20; round++) {
    struct tc t;

    tc_connect(&t, "", 0, 0);
    /* Some requests first, so that gathering is on. */
    for (k = 0; k < 64; k++)
      req_send(&t, 0, NBD_CMD_READ, k, 0, 4096, NULL);
    for (k = 0; k < 64; k++) {
      ck_assert_uint_eq(simple_reply(&t, k), 0);
      cl_read(&t, buf, sizeof buf);
    }
    for (k = 0; k < 7; k++)
      req_send(&t, 0, NBD_CMD_READ, 100 + k, 0, 4096, NULL);
    ck_assert_int_eq(shutdown(t.fd, SHUT_WR), 0);
    for (k = 0; k < 7; k++) {
      ck_assert_uint_eq(simple_reply(&t, 100 + k), 0);
      cl_read(&t, buf, sizeof buf);
    }
    cl_expect_eof(&t);
    tc_end(&t);
  }
}
END_TEST

/* The transmission tests, run once inline on the reader and once with
 * every request on the worker pool (inline = no). */
static void
add_transmission_tests(TCase *tc)
{
  tcase_add_test(tc, test_simple_read_returns_written_data);
  tcase_add_test(tc, test_write_read_round_trip_unaligned);
  tcase_add_test(tc, test_read_past_end_einval);
  tcase_add_test(tc, test_write_past_end_enospc);
  tcase_add_test(tc, test_trim_past_end_einval);
  tcase_add_test(tc, test_read_zero_length_einval);
  tcase_add_test(tc, test_read_over_max_payload_einval_and_continues);
  tcase_add_test(tc, test_unknown_command_einval_and_continues);
  tcase_add_test(tc, test_read_unknown_flag_einval);
  tcase_add_test(tc, test_write_zeroes_fast_zero_succeeds);
  tcase_add_test(tc, test_block_status_without_meta_context_einval);
  tcase_add_test(tc, test_block_status_base_allocation_descriptors);
  tcase_add_test(tc, test_block_status_req_one_single_descriptor);
  tcase_add_test(tc, test_write_over_max_payload_einval_payload_skipped);
  tcase_add_test(tc, test_write_far_over_max_payload_closes);
  tcase_add_test(tc, test_block_status_meta_context_of_other_export_go);
  tcase_add_test(tc,
                 test_block_status_meta_context_of_other_export_export_name);
  tcase_add_test(tc, test_structured_read_unwritten_is_hole_chunk);
  tcase_add_test(tc, test_structured_read_df_is_one_data_chunk);
  tcase_add_test(tc, test_structured_read_hole_found_again_after_data_streak);
  tcase_add_test(tc, test_structured_read_chunks_reassemble_data);
  tcase_add_test(tc, test_structured_read_past_end_error_chunk);
  tcase_add_test(tc, test_write_to_readonly_export_eperm);
  tcase_add_test(tc, test_bad_request_magic_closes);
  tcase_add_test(tc, test_disc_closes_after_earlier_replies);
  tcase_add_test(tc, test_pipelined_reads_matched_by_cookie);
}

/* ---- inline or workers (slowpoke) ----------------------------------------- */

/* Sends n reads at once, then reads the n replies (in any order). */
static void
slow_reads(struct tc *t, unsigned n)
{
  unsigned char h[16], d[512];
  unsigned i;

  for (i = 0; i < n; i++)
    req_send(t, 0, NBD_CMD_READ, i, (uint64_t)i * 512, 512, NULL);
  for (i = 0; i < n; i++) {
    cl_read(t, h, sizeof h);
    ck_assert_uint_eq(wire_get32(h), NBD_SIMPLE_REPLY_MAGIC);
    ck_assert_uint_eq(wire_get32(h + 4), 0);
    cl_read(t, d, sizeof d);
  }
}

START_TEST(test_rarely_blocking_layer_that_sleeps_moves_to_workers)
{
  struct tc t;

  slow_sleeps = 1;
  tc_connect(&t, "", 0, 0);
  slow_reads(&t, 8);            /* inline: slow and asleep, 5 are enough */
  slow_reads(&t, 8);            /* now on workers, concurrently */
  ck_assert_msg(slow_max_active >= 2, "reads never overlapped (max %d): "
                "still inline after 8 reads that slept %d ms each",
                slow_max_active, SLOW_MS);
  tc_end(&t);
}
END_TEST

START_TEST(test_rarely_blocking_layer_slow_on_cpu_stays_inline)
{
  struct tc t;

  slow_sleeps = 0;
  tc_connect(&t, "", 0, 0);
  slow_reads(&t, 8);            /* slow, but never asleep */
  slow_reads(&t, 8);
  ck_assert_msg(slow_max_active == 1, "%d reads overlapped: moved to "
                "workers though the layer never slept", slow_max_active);
  tc_end(&t);
}
END_TEST

/* ---- write payloads that are not kept (null, refused writes) -------------- */

static void
setup_config_null(void)
{
  const struct nbd_layer_ops *ops = registry_find(NBD_LAYER_BACKEND, "null");
  struct nbd_layer *l;
  char err[256] = "";

  ck_assert_msg(ops != NULL, "the null backend is not compiled in");
  setup_config_backend(ops);
  l = cfg.exports->top;
  ck_assert_msg(params_set(l, "size", "1M", err, sizeof err) == 0, "%s",
                err);
  ck_assert_msg(engine_layer_setup(l, err, sizeof err) == 0, "%s", err);
}

/* Payloads that are read and dropped (null's writes, a refused write past
 * the end), large, odd-sized and small, all keep the stream in step. */
START_TEST(test_null_drops_payloads_and_stays_in_step)
{
  const uint32_t big = 3 * MIB + 100;
  unsigned char *w = xmalloc(big), r[4096];
  struct tc t;

  tc_connect(&t, "", 0, 0);
  memset(w, 0x5a, big);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, MIB), 0);
  ck_assert_uint_eq(simple_write(&t, 6, 0, w, big), NBD_ENOSPC);
  ck_assert_uint_eq(simple_write(&t, 2, 4096, w, 64 * 1024), 0);
  ck_assert_uint_eq(simple_write(&t, 3, 0, w, 100), 0);
  ck_assert_uint_eq(simple_write(&t, 4, 8192, w, 70001), 0);
  ck_assert_uint_eq(simple_read(&t, 5, 0, r, sizeof r), 0);
  ck_assert(is_zero(r, sizeof r));
  tc_end(&t);
  free(w);
}
END_TEST

/* The client goes away in the middle of a write's payload: the
 * connection ends, it does not wait or spin. */
START_TEST(test_null_client_gone_mid_payload_ends_connection)
{
  unsigned char *w = xmalloc(300 * 1024);
  struct tc t;

  tc_connect(&t, "", 0, 0);
  memset(w, 0x5a, 300 * 1024);
  req_send(&t, 0, NBD_CMD_WRITE, 1, 0, 1 * MIB, NULL);
  cl_send(&t, w, 300 * 1024);
  shutdown(t.fd, SHUT_WR);
  cl_expect_eof(&t);
  tc_end(&t);
  free(w);
}
END_TEST

/* ---- the flush at close (slowflush) ----------------------------------------- */

START_TEST(test_close_after_write_flushes_after_the_client_saw_eof)
{
  unsigned char w[4096];
  struct tc t;

  tc_connect(&t, "", 0, 0);
  memset(w, 0x5a, sizeof w);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, sizeof w), 0);
  req_send(&t, 0, NBD_CMD_DISC, 2, 0, 0, NULL);
  cl_expect_eof(&t);
  /* The socket is shut before the flush starts, so the client is free
   * FLUSH_MS before the flush ends. */
  ck_assert_msg(__atomic_load_n(&flushes_done, __ATOMIC_SEQ_CST) == 0,
                "the client saw EOF only after the close-time flush");
  tc_end(&t);
  ck_assert_int_eq(flushes_started, 1);
  ck_assert_int_eq(flushes_done, 1);
}
END_TEST

START_TEST(test_close_after_reads_only_does_not_flush)
{
  unsigned char r[4096];
  struct tc t;

  tc_connect(&t, "", 0, 0);
  ck_assert_uint_eq(simple_read(&t, 1, 0, r, sizeof r), 0);
  ck_assert_uint_eq(simple_read(&t, 2, 8192, r, sizeof r), 0);
  req_send(&t, 0, NBD_CMD_DISC, 3, 0, 0, NULL);
  cl_expect_eof(&t);
  tc_end(&t);
  ck_assert_int_eq(flushes_started, 0);
}
END_TEST

START_TEST(test_client_gone_without_disc_after_write_flushes)
{
  unsigned char w[512];
  struct tc t;

  tc_connect(&t, "", 0, 0);
  memset(w, 0xa5, sizeof w);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, sizeof w), 0);
  ck_assert_uint_eq(simple_cmd(&t, 0, NBD_CMD_FLUSH, 2, 0, 0), 0);
  ck_assert_int_eq(flushes_done, 1);
  ck_assert_uint_eq(simple_write(&t, 3, 512, w, sizeof w), 0);
  close(t.fd);                  /* no DISC: the client just goes away */
  ck_assert_int_eq(pthread_join(t.tid, NULL), 0);
  conn_free(t.c);
  ck_assert_int_eq(flushes_done, 2);
}
END_TEST

/* A stack that keeps nothing in the process (a file) is not flushed when
 * its client leaves (as nbdkit), but it is when the server stops and
 * ends the connection (its input shut: EOF without DISC); a client that
 * sent DISC just as the server stopped is not. */
static void
write_then_leave(int stopping, int disc)
{
  unsigned char w[512];
  struct tc t;

  tc_connect(&t, "", 0, 0);
  memset(w, 0x3c, sizeof w);
  ck_assert_uint_eq(simple_write(&t, 1, 0, w, sizeof w), 0);
  atomic_store(&server_stopping, stopping);
  if (disc)
    req_send(&t, 0, NBD_CMD_DISC, 2, 0, 0, NULL);
  else
    shutdown(t.fd, SHUT_WR);
  cl_expect_eof(&t);
  tc_end(&t);
  atomic_store(&server_stopping, 0);
}

START_TEST(test_close_after_write_plain_does_not_flush)
{
  write_then_leave(0, 1);
  ck_assert_int_eq(flushes_started, 0);
  write_then_leave(0, 0);
  ck_assert_int_eq(flushes_started, 0);
}
END_TEST

START_TEST(test_close_after_write_plain_flushes_when_stopping)
{
  write_then_leave(1, 0);
  ck_assert_int_eq(flushes_done, 1);
}
END_TEST

START_TEST(test_disc_after_write_plain_while_stopping_does_not_flush)
{
  write_then_leave(1, 1);
  ck_assert_int_eq(flushes_started, 0);
}
END_TEST

/* ---- inline or workers: writes that keep a CPU busy ------------------------- */

/* 256 pipelined 4 KiB writes of SPIN_US each; every reply checked, in
 * whatever order (workers answer as they finish). */
static void
spin_writes(void)
{
  enum { N = 256, LEN = 4096 };
  unsigned char *w = xmalloc(LEN), h[16], seen[N + 1];
  struct tc t;
  unsigned i;
  uint64_t ck;

  memset(w, 0x77, LEN);
  memset(seen, 0, sizeof seen);
  tc_connect(&t, "", 0, 0);
  for (i = 0; i < N; i++)
    req_send(&t, 0, NBD_CMD_WRITE, i + 1, (uint64_t)(i % 64) * LEN, LEN, w);
  for (i = 0; i < N; i++) {
    cl_read(&t, h, sizeof h);
    ck_assert_uint_eq(wire_get32(h), NBD_SIMPLE_REPLY_MAGIC);
    ck_assert_uint_eq(wire_get32(h + 4), 0);
    ck = wire_get64(h + 8);
    ck_assert(ck >= 1 && ck <= N && !seen[ck]);
    seen[ck] = 1;
  }
  tc_end(&t);
  free(w);
}

/* Writes the kernel runs one at a time (serial_writes: a file's) stay on
 * the reader, however long each keeps the CPU. */
START_TEST(test_cpu_heavy_serial_writes_stay_inline)
{
  spin_writes();
  ck_assert_msg(!__atomic_load_n(&spin_other_thread, __ATOMIC_SEQ_CST),
                "serial writes moved to workers");
}
END_TEST

/* Other CPU-heavy writes with more waiting move to workers when a
 * second CPU can run them. */
START_TEST(test_cpu_heavy_parallel_writes_move_to_workers)
{
  spin_writes();
  if (sysconf(_SC_NPROCESSORS_ONLN) > 1)
    ck_assert_msg(__atomic_load_n(&spin_other_thread, __ATOMIC_SEQ_CST),
                  "CPU-heavy writes stayed on the reader");
}
END_TEST

/* ---- inline or workers, again: a slow client -------------------------------- */

/* A client that reads its replies slowly makes the server's sends wait,
 * asleep, for over 1 ms each; that is not the layer blocking, and must not
 * move the connection to workers. */
START_TEST(test_rarely_blocking_layer_with_slow_client_stays_inline)
{
  struct timespec ts = { 0, 3 * 1000000L };
  unsigned char h[16];
  unsigned char *d = xmalloc(1 << 20);
  struct tc t;
  unsigned i;

  slow_fast = 1;
  tc_connect(&t, "", 0, 0);
  for (i = 0; i < 64; i++)
    req_send(&t, 0, NBD_CMD_READ, i, 0, 1 << 20, NULL);
  for (i = 0; i < 64; i++) {
    nanosleep(&ts, NULL);
    cl_read(&t, h, sizeof h);
    ck_assert_uint_eq(wire_get32(h), NBD_SIMPLE_REPLY_MAGIC);
    ck_assert_uint_eq(wire_get32(h + 4), 0);
    cl_read(&t, d, 1 << 20);
  }
  ck_assert_msg(!__atomic_load_n(&slow_other_thread, __ATOMIC_SEQ_CST),
                "moved to workers because the client read slowly");
  free(d);
  tc_end(&t);
}
END_TEST

/* ---- suite ------------------------------------------------------------------ */

static Suite *
transmission_suite(void)
{
  Suite *s = suite_create("transmission");
  TCase *tc;

  if (testlib_require_layer(NBD_LAYER_BACKEND, "memory")) {
    tc = tcase_create("transmission");
    tcase_add_checked_fixture(tc, setup_config, teardown_config);
    tcase_set_timeout(tc, 30);
    add_transmission_tests(tc);
    suite_add_tcase(s, tc);

    tc = tcase_create("transmission on workers");
    tcase_add_checked_fixture(tc, setup_config_workers, teardown_config);
    tcase_set_timeout(tc, 30);
    add_transmission_tests(tc);
    suite_add_tcase(s, tc);
  }

  tc = tcase_create("inline or workers");
  tcase_add_checked_fixture(tc, setup_config_slow, teardown_config);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_rarely_blocking_layer_that_sleeps_moves_to_workers);
  tcase_add_test(tc, test_rarely_blocking_layer_slow_on_cpu_stays_inline);
  tcase_add_test(tc, test_rarely_blocking_layer_with_slow_client_stays_inline);
  suite_add_tcase(s, tc);
  tc = tcase_create("CPU-heavy serial writes");
  tcase_add_checked_fixture(tc, setup_config_spinwrite_serial, teardown_config);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_cpu_heavy_serial_writes_stay_inline);
  suite_add_tcase(s, tc);
  tc = tcase_create("CPU-heavy parallel writes");
  tcase_add_checked_fixture(tc, setup_config_spinwrite_parallel,
                            teardown_config);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_cpu_heavy_parallel_writes_move_to_workers);
  suite_add_tcase(s, tc);

  if (testlib_require_layer(NBD_LAYER_BACKEND, "null")) {
    tc = tcase_create("payloads not kept");
    tcase_add_checked_fixture(tc, setup_config_null, teardown_config);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_null_drops_payloads_and_stays_in_step);
    tcase_add_test(tc, test_null_client_gone_mid_payload_ends_connection);
    suite_add_tcase(s, tc);
  }

  if (testlib_require_layer(NBD_LAYER_BACKEND, "memory")) {
    tc = tcase_create("coalescing");
    tcase_add_checked_fixture(tc, setup_config, teardown_config);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_coalesce_trickling_client_gathered_and_correct);
    tcase_add_test(tc, test_coalesce_qd1_client_backs_off);
    tcase_add_test(tc, test_coalesce_bursts_answered);
    tcase_add_test(tc, test_coalesce_client_eof_after_requests);
    suite_add_tcase(s, tc);
  }

  tc = tcase_create("flush at close");
  tcase_add_checked_fixture(tc, setup_config_slowflush, teardown_config);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_close_after_write_flushes_after_the_client_saw_eof);
  tcase_add_test(tc, test_close_after_reads_only_does_not_flush);
  tcase_add_test(tc, test_client_gone_without_disc_after_write_flushes);
  suite_add_tcase(s, tc);
  tc = tcase_create("no flush at close");
  tcase_add_checked_fixture(tc, setup_config_slowflush_plain, teardown_config);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_close_after_write_plain_does_not_flush);
  tcase_add_test(tc, test_close_after_write_plain_flushes_when_stopping);
  tcase_add_test(tc, test_disc_after_write_plain_while_stopping_does_not_flush);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(transmission_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
