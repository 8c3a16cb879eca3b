/* Unit tests for src/engine.c and src/extents.c: what the engine does at a
 * layer boundary (checks, emulation, capability cache, lifecycle order),
 * observed through the recording backend of testlib.  No filter logic is
 * tested here; the tracer filter only makes lifecycle order visible.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

#define KIB 1024u

/* A writable recorder with no filters above; caps tweaked by the caller. */
static struct testlib_caps engine_caps;
static struct testlib_stack engine_s;

static void
engine_setup(void)
{
  testlib_caps_default(&engine_caps);
}

static void
engine_teardown(void)
{
  testlib_stack_free(&engine_s);
}

static struct nbd_ctx *
engine_open_caps(void)
{
  testlib_stack(&engine_s, "", &engine_caps);
  return engine_s.top;
}

static char engine_buf[256 * KIB];

/* ---- FUA ------------------------------------------------------------------- */

START_TEST(test_fua_emulated_pwrite_flushes_after)
{
  struct nbd_ctx *top;

  engine_caps.can_fua = NBD_FUA_EMULATE;
  top = engine_open_caps();

  ck_assert_int_eq(next_pwrite(top, engine_buf, 4096, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+4096 flags=0; flush");
}
END_TEST

START_TEST(test_fua_emulated_trim_flushes_after)
{
  struct nbd_ctx *top;

  engine_caps.can_fua = NBD_FUA_EMULATE;
  top = engine_open_caps();

  ck_assert_int_eq(next_trim(top, 4096, 8192, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "trim 8192+4096 flags=0; flush");
}
END_TEST

START_TEST(test_fua_emulated_zero_flushes_after)
{
  struct nbd_ctx *top;

  engine_caps.can_fua = NBD_FUA_EMULATE;
  top = engine_open_caps();

  ck_assert_int_eq(next_zero(top, 4096, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "zero 0+4096 flags=0; flush");
}
END_TEST

START_TEST(test_fua_emulated_no_flush_after_failed_write)
{
  struct nbd_ctx *top;

  engine_caps.can_fua = NBD_FUA_EMULATE;
  top = engine_open_caps();

  engine_s.rec->fail[NBD_METHOD_PWRITE] = -EIO;
  ck_assert_int_eq(next_pwrite(top, engine_buf, 4096, 0, NBD_CMD_FLAG_FUA), -EIO);
  ck_assert_str_eq(testlib_log(), "pwrite 0+4096 flags=0");
}
END_TEST

START_TEST(test_fua_native_passes_flag_without_flush)
{
  struct nbd_ctx *top = engine_open_caps();

  ck_assert_int_eq(next_pwrite(top, engine_buf, 4096, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_trim(top, 4096, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_int_eq(next_zero(top, 4096, 0, NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+4096 flags=FUA; "
                   "trim 0+4096 flags=FUA; zero 0+4096 flags=FUA");
}
END_TEST

START_TEST(test_fua_none_rejects_without_call)
{
  struct nbd_ctx *top;

  engine_caps.can_fua = NBD_FUA_NONE;
  top = engine_open_caps();

  ck_assert_int_eq(next_pwrite(top, engine_buf, 4096, 0, NBD_CMD_FLAG_FUA),
                   -EINVAL);
  ck_assert_int_eq(next_trim(top, 4096, 0, NBD_CMD_FLAG_FUA), -EINVAL);
  ck_assert_int_eq(next_zero(top, 4096, 0, NBD_CMD_FLAG_FUA), -EINVAL);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_fua_emulate_without_flush_becomes_none)
{
  struct nbd_ctx *top;

  engine_caps.can_fua = NBD_FUA_EMULATE;
  engine_caps.can_flush = 0;
  top = engine_open_caps();

  ck_assert_int_eq(next_can_fua(top), NBD_FUA_NONE);
  ck_assert_int_eq(next_pwrite(top, engine_buf, 4096, 0, NBD_CMD_FLAG_FUA),
                   -EINVAL);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

/* A native zero that declines (-EOPNOTSUPP) is redone as writes; the FUA
 * the client asked for must survive the fallback. */
START_TEST(test_fua_native_kept_when_zero_falls_back_to_writes)
{
  struct nbd_ctx *top = engine_open_caps();
  const char *log;

  engine_s.rec->fail[NBD_METHOD_ZERO] = -EOPNOTSUPP;
  ck_assert_int_eq(next_zero(top, 4096, 0, NBD_CMD_FLAG_FUA), 0);
  log = testlib_log();
  ck_assert_msg(strcmp(log, "zero 0+4096 flags=FUA; "
                       "pwrite 0+4096 flags=FUA") == 0 ||
                strcmp(log, "zero 0+4096 flags=FUA; "
                       "pwrite 0+4096 flags=0; flush") == 0,
                "FUA lost in zero fallback: %s", log);
}
END_TEST

/* Zero emulated by writes on a layer with native FUA: the writes must
 * carry the FUA (or be followed by a flush). */
START_TEST(test_fua_native_kept_when_zero_emulated)
{
  struct nbd_ctx *top;
  const char *log;

  engine_caps.can_zero = NBD_ZERO_EMULATE;
  top = engine_open_caps();

  ck_assert_int_eq(next_zero(top, 4096, 0, NBD_CMD_FLAG_FUA), 0);
  log = testlib_log();
  ck_assert_msg(strcmp(log, "pwrite 0+4096 flags=FUA") == 0 ||
                strcmp(log, "pwrite 0+4096 flags=0; flush") == 0,
                "FUA lost in zero emulation: %s", log);
}
END_TEST

/* ---- zero ------------------------------------------------------------------- */

START_TEST(test_zero_emulated_writes_zeros)
{
  struct nbd_ctx *top;

  engine_caps.can_zero = NBD_ZERO_EMULATE;
  top = engine_open_caps();

  memset(engine_s.rec->ram, 0xaa, 3 * 4096);
  ck_assert_int_eq(next_zero(top, 8192, 4096, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 4096+8192 flags=0");
  ck_assert(nbd_is_zero(engine_s.rec->ram + 4096, 8192));
  ck_assert_uint_eq(engine_s.rec->ram[4095], 0xaa);
  ck_assert_uint_eq(engine_s.rec->ram[3 * 4096 - 1], 0);
}
END_TEST

START_TEST(test_zero_emulated_chunks_at_max_block)
{
  struct nbd_ctx *top;

  engine_caps.can_zero = NBD_ZERO_EMULATE;
  engine_caps.min_block = 512;
  engine_caps.pref_block = 4096;
  engine_caps.max_block = 8192;
  top = engine_open_caps();

  ck_assert_int_eq(next_zero(top, 20480, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 0+8192 flags=0; "
                   "pwrite 8192+8192 flags=0; pwrite 16384+4096 flags=0");
}
END_TEST

START_TEST(test_zero_none_is_unsupported)
{
  struct nbd_ctx *top;

  engine_caps.can_zero = NBD_ZERO_NONE;
  top = engine_open_caps();

  ck_assert_int_eq(next_zero(top, 4096, 0, 0), -EOPNOTSUPP);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_fast_zero_emulated_fails_fast_without_writing)
{
  struct nbd_ctx *top;

  engine_caps.can_zero = NBD_ZERO_EMULATE;
  top = engine_open_caps();

  ck_assert_int_eq(next_zero(top, 4096, 0, NBD_CMD_FLAG_FAST_ZERO), -ENOTSUP);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_uint_eq(engine_s.rec->calls[NBD_METHOD_PWRITE], 0);
}
END_TEST

START_TEST(test_fast_zero_native_unsupported_fails_without_call)
{
  struct nbd_ctx *top;

  engine_caps.can_fast_zero = 0;
  top = engine_open_caps();

  ck_assert_int_eq(next_zero(top, 4096, 0, NBD_CMD_FLAG_FAST_ZERO), -ENOTSUP);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_fast_zero_native_passes_flag)
{
  struct nbd_ctx *top = engine_open_caps();

  ck_assert_int_eq(next_zero(top, 4096, 0, NBD_CMD_FLAG_FAST_ZERO), 0);
  ck_assert_str_eq(testlib_log(), "zero 0+4096 flags=FAST_ZERO");
}
END_TEST

START_TEST(test_zero_native_declined_falls_back_to_writes)
{
  struct nbd_ctx *top = engine_open_caps();

  memset(engine_s.rec->ram, 0xaa, 4096);
  engine_s.rec->fail[NBD_METHOD_ZERO] = -EOPNOTSUPP;
  ck_assert_int_eq(next_zero(top, 4096, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "zero 0+4096 flags=0; "
                   "pwrite 0+4096 flags=0");
  ck_assert(nbd_is_zero(engine_s.rec->ram, 4096));
}
END_TEST

START_TEST(test_zero_native_declined_fast_zero_does_not_fall_back)
{
  struct nbd_ctx *top = engine_open_caps();

  engine_s.rec->fail[NBD_METHOD_ZERO] = -EOPNOTSUPP;
  ck_assert_int_eq(next_zero(top, 4096, 0, NBD_CMD_FLAG_FAST_ZERO), -EOPNOTSUPP);
  ck_assert_str_eq(testlib_log(), "zero 0+4096 flags=FAST_ZERO");
}
END_TEST

START_TEST(test_zero_native_error_is_returned_without_fallback)
{
  struct nbd_ctx *top = engine_open_caps();

  engine_s.rec->fail[NBD_METHOD_ZERO] = -EIO;
  ck_assert_int_eq(next_zero(top, 4096, 0, 0), -EIO);
  ck_assert_str_eq(testlib_log(), "zero 0+4096 flags=0");
}
END_TEST

/* ---- cache ------------------------------------------------------------------ */

START_TEST(test_cache_emulated_reads)
{
  struct nbd_ctx *top;

  engine_caps.can_cache = NBD_CACHE_EMULATE;
  top = engine_open_caps();

  ck_assert_int_eq(next_cache(top, 8192, 4096, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 4096+8192 flags=0");
}
END_TEST

START_TEST(test_cache_emulated_chunks_at_max_block)
{
  struct nbd_ctx *top;

  engine_caps.can_cache = NBD_CACHE_EMULATE;
  engine_caps.min_block = 512;
  engine_caps.pref_block = 4096;
  engine_caps.max_block = 4096;
  top = engine_open_caps();

  ck_assert_int_eq(next_cache(top, 8192, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+4096 flags=0; "
                   "pread 4096+4096 flags=0");
}
END_TEST

START_TEST(test_cache_native_calls_cache)
{
  struct nbd_ctx *top = engine_open_caps();

  ck_assert_int_eq(next_cache(top, 8192, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "cache 0+8192 flags=0");
}
END_TEST

START_TEST(test_cache_none_rejected)
{
  struct nbd_ctx *top;

  engine_caps.can_cache = NBD_CACHE_NONE;
  top = engine_open_caps();

  ck_assert_int_eq(next_cache(top, 8192, 0, 0), -EINVAL);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

/* ---- extents dispatch ----------------------------------------------------- */

START_TEST(test_extents_unsupported_reports_all_data)
{
  struct nbd_ctx *top;
  struct nbd_extents *e;

  engine_caps.can_extents = 0;
  top = engine_open_caps();
  e = nbd_extents_new(4096, 12288);

  testlib_recorder_map(engine_s.rec, 0, 1 << 20, NBD_EXTENT_HOLE);
  ck_assert_int_eq(next_extents(top, 8192, 4096, 0, e), 0);
  ck_assert_str_eq(testlib_log(), "");
  ck_assert_uint_eq(e->n, 1);
  ck_assert_uint_eq(e->v[0].offset, 4096);
  ck_assert_uint_eq(e->v[0].length, 8192);
  ck_assert_uint_eq(e->v[0].type, 0);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_extents_native_asks_backend)
{
  struct nbd_ctx *top = engine_open_caps();
  struct nbd_extents *e = nbd_extents_new(0, 8192);

  testlib_recorder_map(engine_s.rec, 0, 4096, 0);
  testlib_recorder_map(engine_s.rec, 4096, (1 << 20) - 4096,
                       NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  ck_assert_int_eq(next_extents(top, 8192, 0, 0, e), 0);
  ck_assert_str_eq(testlib_log(), "extents 0+8192 flags=0");
  ck_assert_uint_eq(e->n, 2);
  ck_assert_uint_eq(e->v[1].offset, 4096);
  ck_assert_uint_eq(e->v[1].length, 4096);
  ck_assert_uint_eq(e->v[1].type, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  nbd_extents_free(e);
}
END_TEST

/* ---- block-size enforcement ------------------------------------------------ */

static struct nbd_ctx *
engine_open_blocks(void)
{
  engine_caps.min_block = 512;
  engine_caps.pref_block = 4096;
  engine_caps.max_block = 64 * KIB;
  return engine_open_caps();
}

START_TEST(test_misaligned_offset_rejected_without_call)
{
  struct nbd_ctx *top = engine_open_blocks();
  struct nbd_extents *e = nbd_extents_new(100, 612);

  ck_assert_int_eq(next_pread(top, engine_buf, 512, 100, 0), -EINVAL);
  ck_assert_int_eq(next_pwrite(top, engine_buf, 512, 100, 0), -EINVAL);
  ck_assert_int_eq(next_trim(top, 512, 100, 0), -EINVAL);
  ck_assert_int_eq(next_zero(top, 512, 100, 0), -EINVAL);
  ck_assert_int_eq(next_cache(top, 512, 100, 0), -EINVAL);
  ck_assert_int_eq(next_extents(top, 512, 100, 0, e), -EINVAL);
  ck_assert_str_eq(testlib_log(), "");
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_misaligned_count_rejected_without_call)
{
  struct nbd_ctx *top = engine_open_blocks();

  ck_assert_int_eq(next_pread(top, engine_buf, 100, 512, 0), -EINVAL);
  ck_assert_int_eq(next_pwrite(top, engine_buf, 100, 512, 0), -EINVAL);
  ck_assert_int_eq(next_trim(top, 100, 512, 0), -EINVAL);
  ck_assert_int_eq(next_zero(top, 100, 512, 0), -EINVAL);
  ck_assert_int_eq(next_cache(top, 100, 512, 0), -EINVAL);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_payload_over_max_rejected_without_call)
{
  struct nbd_ctx *top = engine_open_blocks();

  ck_assert_int_eq(next_pread(top, engine_buf, 128 * KIB, 0, 0), -EINVAL);
  ck_assert_int_eq(next_pwrite(top, engine_buf, 128 * KIB, 0, 0), -EINVAL);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_aligned_request_within_max_reaches_backend)
{
  struct nbd_ctx *top = engine_open_blocks();

  ck_assert_int_eq(next_pread(top, engine_buf, 64 * KIB, 512, 0), 0);
  ck_assert_int_eq(next_pwrite(top, engine_buf, 512, 1024, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 512+65536 flags=0; "
                   "pwrite 1024+512 flags=0");
}
END_TEST

/* The maximum limits payloads; trim and zero carry none. */
START_TEST(test_trim_and_zero_over_max_reach_backend)
{
  struct nbd_ctx *top = engine_open_blocks();

  ck_assert_int_eq(next_trim(top, 128 * KIB, 0, 0), 0);
  ck_assert_int_eq(next_zero(top, 128 * KIB, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "trim 0+131072 flags=0; "
                   "zero 0+131072 flags=0");
}
END_TEST

static void
engine_assert_open_fails(const char *want)
{
  ck_assert_int_eq(testlib_stack_new(&engine_s, "", &engine_caps), 0);
  ck_assert_int_eq(testlib_stack_open(&engine_s, 0), -1);
  ck_assert_msg(strstr(engine_s.err, want) != NULL,
                "error '%s' lacks '%s'", engine_s.err, want);
}

START_TEST(test_minimum_not_power_of_two_fails_open)
{
  engine_caps.min_block = 3;
  engine_caps.pref_block = 4096;
  engine_caps.max_block = 3 * 4096;
  engine_assert_open_fails("invalid block size constraints minimum=3 ");
}
END_TEST

START_TEST(test_preferred_below_minimum_fails_open)
{
  engine_caps.min_block = 4096;
  engine_caps.pref_block = 512;
  engine_caps.max_block = 64 * KIB;
  engine_assert_open_fails("minimum=4096 preferred=512 maximum=65536");
}
END_TEST

START_TEST(test_maximum_not_multiple_of_minimum_fails_open)
{
  engine_caps.min_block = 4096;
  engine_caps.pref_block = 4096;
  engine_caps.max_block = 6000;
  engine_assert_open_fails("maximum=6000");
}
END_TEST

START_TEST(test_minimum_over_64k_fails_open)
{
  engine_caps.min_block = 128 * KIB;
  engine_caps.pref_block = 128 * KIB;
  engine_caps.max_block = 0xffffffff;
  engine_assert_open_fails("minimum=131072");
}
END_TEST

/* ---- bounds --------------------------------------------------------------- */

START_TEST(test_read_past_end_einval)
{
  struct nbd_ctx *top = engine_open_caps();
  struct nbd_extents *e = nbd_extents_new(1 << 20, (1 << 20) + 4096);

  ck_assert_int_eq(next_pread(top, engine_buf, 4096, (1 << 20) - 2048, 0),
                   -EINVAL);
  ck_assert_int_eq(next_cache(top, 4096, 1 << 20, 0), -EINVAL);
  ck_assert_int_eq(next_extents(top, 4096, 1 << 20, 0, e), -EINVAL);
  ck_assert_str_eq(testlib_log(), "");
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_write_past_end_enospc_trim_einval)
{
  struct nbd_ctx *top = engine_open_caps();

  ck_assert_int_eq(next_pwrite(top, engine_buf, 4096, (1 << 20) - 2048, 0),
                   -ENOSPC);
  /* A trim writes nothing: past the end it is EINVAL, as in nbdkit. */
  ck_assert_int_eq(next_trim(top, 4096, 1 << 20, 0), -EINVAL);
  ck_assert_int_eq(next_zero(top, 4096, 1 << 20, 0), -ENOSPC);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_request_ending_at_size_accepted)
{
  struct nbd_ctx *top = engine_open_caps();

  ck_assert_int_eq(next_pread(top, engine_buf, 4096, (1 << 20) - 4096, 0), 0);
  ck_assert_int_eq(next_pwrite(top, engine_buf, 4096, (1 << 20) - 4096, 0),
                   0);
  ck_assert_str_eq(testlib_log(), "pread 1044480+4096 flags=0; "
                   "pwrite 1044480+4096 flags=0");
}
END_TEST

START_TEST(test_offset_plus_count_overflow_rejected)
{
  struct nbd_ctx *top = engine_open_caps();
  const uint64_t off = UINT64_MAX - 100;
  struct nbd_extents *e = nbd_extents_new(0, UINT64_MAX);

  ck_assert_int_eq(next_pread(top, engine_buf, 4096, off, 0), -EINVAL);
  ck_assert_int_eq(next_pwrite(top, engine_buf, 4096, off, 0), -ENOSPC);
  ck_assert_int_eq(next_trim(top, 4096, off, 0), -EINVAL);
  ck_assert_int_eq(next_zero(top, 4096, off, 0), -ENOSPC);
  ck_assert_int_eq(next_cache(top, 4096, off, 0), -EINVAL);
  ck_assert_int_eq(next_extents(top, 4096, off, 0, e), -EINVAL);
  ck_assert_str_eq(testlib_log(), "");
  nbd_extents_free(e);
}
END_TEST

/* ---- read-only ------------------------------------------------------------- */

START_TEST(test_readonly_open_rejects_writes_eperm)
{
  struct nbd_ctx *top;

  ck_assert_int_eq(testlib_stack_new(&engine_s, "", &engine_caps), 0);
  ck_assert_int_eq(testlib_stack_open(&engine_s, 1), 0);
  top = engine_s.top;

  ck_assert_int_eq(next_pwrite(top, engine_buf, 4096, 0, 0), -EPERM);
  ck_assert_int_eq(next_trim(top, 4096, 0, 0), -EPERM);
  ck_assert_int_eq(next_zero(top, 4096, 0, 0), -EPERM);
  ck_assert_int_eq(next_pread(top, engine_buf, 4096, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 0+4096 flags=0");
}
END_TEST

START_TEST(test_readonly_open_caches_can_write_zero)
{
  struct nbd_ctx *top;

  ck_assert_int_eq(testlib_stack_new(&engine_s, "", &engine_caps), 0);
  ck_assert_int_eq(testlib_stack_open(&engine_s, 1), 0);
  top = engine_s.top;

  ck_assert_int_eq(engine_s.rec->calls[NBD_METHOD_CAN_WRITE], 1);
  ck_assert_int_eq(next_can_write(top), 0);
  ck_assert_int_eq(next_can_trim(top), 0);
  ck_assert_int_eq(next_can_zero(top), 0);
  ck_assert_int_eq(next_can_fua(top), 0);
  ck_assert_int_eq(next_can_fast_zero(top), 0);
}
END_TEST

START_TEST(test_readonly_export_rejects_writes_eperm)
{
  ck_assert_int_eq(testlib_stack_new(&engine_s, "", &engine_caps), 0);
  engine_s.exp->readonly = 1;
  ck_assert_int_eq(testlib_stack_open(&engine_s, 0), 0);

  ck_assert_int_eq(next_can_write(engine_s.top), 0);
  ck_assert_int_eq(next_pwrite(engine_s.top, engine_buf, 4096, 0, 0), -EPERM);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

/* ---- capability cache ------------------------------------------------------ */

static const enum nbd_method engine_caps_methods[] = {
  NBD_METHOD_GET_SIZE, NBD_METHOD_BLOCK_SIZE, NBD_METHOD_CAN_WRITE,
  NBD_METHOD_CAN_FLUSH, NBD_METHOD_CAN_TRIM, NBD_METHOD_CAN_ZERO,
  NBD_METHOD_CAN_FAST_ZERO, NBD_METHOD_CAN_FUA, NBD_METHOD_CAN_CACHE,
  NBD_METHOD_CAN_EXTENTS, NBD_METHOD_CAN_MULTI_CONN, NBD_METHOD_IS_ROTATIONAL,
};
#define ENGINE_NCAPS (sizeof engine_caps_methods / sizeof engine_caps_methods[0])

static void
engine_assert_caps_asked(const struct testlib_recorder *rec, unsigned times)
{
  static const char *const names[] = { NBD_METHOD_NAMES };
  size_t i;

  for (i = 0; i < ENGINE_NCAPS; i++)
    ck_assert_msg(rec->calls[engine_caps_methods[i]] == times,
                  "%s asked %u times, want %u", names[engine_caps_methods[i]],
                  rec->calls[engine_caps_methods[i]], times);
}

START_TEST(test_open_asks_each_capability_once)
{
  testlib_stack(&engine_s, "tracer label=a | tracer label=b", &engine_caps);
  engine_assert_caps_asked(engine_s.rec, 1);
}
END_TEST

START_TEST(test_later_capability_calls_do_not_reach_backend)
{
  uint32_t mn, pr, mx;
  struct nbd_ctx *c;

  testlib_stack(&engine_s, "tracer label=a | tracer label=b", &engine_caps);
  for (c = engine_s.top; c; c = c->next) {
    ck_assert_int_eq(next_get_size(c), 1 << 20);
    ck_assert_int_eq(next_block_size(c, &mn, &pr, &mx), 0);
    ck_assert_int_eq(next_can_write(c), 1);
    ck_assert_int_eq(next_can_flush(c), 1);
    ck_assert_int_eq(next_can_trim(c), 1);
    ck_assert_int_eq(next_can_zero(c), NBD_ZERO_NATIVE);
    ck_assert_int_eq(next_can_fast_zero(c), 1);
    ck_assert_int_eq(next_can_fua(c), NBD_FUA_NATIVE);
    ck_assert_int_eq(next_can_cache(c), NBD_CACHE_NATIVE);
    ck_assert_int_eq(next_can_extents(c), 1);
    ck_assert_int_eq(next_can_multi_conn(c), 0);
    ck_assert_int_eq(next_is_rotational(c), 0);
  }
  engine_assert_caps_asked(engine_s.rec, 1);
}
END_TEST

START_TEST(test_each_connection_asks_again)
{
  struct nbd_ctx *second;
  char err[256];

  testlib_stack(&engine_s, "tracer", &engine_caps);
  second = engine_open(engine_s.exp, 0, NULL, err, sizeof err);
  ck_assert_msg(second != NULL, "%s", err);
  engine_assert_caps_asked(engine_s.rec, 2);
  engine_close(second);
}
END_TEST

START_TEST(test_failing_capability_fails_open_naming_layer)
{
  ck_assert_int_eq(testlib_stack_new(&engine_s, "", &engine_caps), 0);
  engine_s.rec->fail[NBD_METHOD_CAN_TRIM] = -EIO;
  ck_assert_int_eq(testlib_stack_open(&engine_s, 0), -1);
  ck_assert_msg(strstr(engine_s.err, "recorder: can_trim failed") != NULL,
                "%s", engine_s.err);
}
END_TEST

/* ---- lifecycle order ------------------------------------------------------- */

START_TEST(test_open_inner_to_outer_close_outer_to_inner)
{
  testlib_stack(&engine_s, "tracer label=outer | tracer label=inner",
                &engine_caps);
  ck_assert_str_eq(testlib_lifecycle(),
                   "open recorder; open inner; open outer; "
                   "prepare recorder; prepare inner; prepare outer");
  engine_close(engine_s.top);
  engine_s.top = NULL;
  ck_assert_str_eq(testlib_lifecycle(),
                   "open recorder; open inner; open outer; "
                   "prepare recorder; prepare inner; prepare outer; "
                   "finalize outer; finalize inner; finalize recorder; "
                   "close outer; close inner; close recorder");
}
END_TEST

START_TEST(test_failed_open_closes_only_opened_layers)
{
  ck_assert_int_eq(testlib_stack_new(&engine_s, "tracer label=outer "
                                     "fail_open=yes | tracer label=inner",
                                     &engine_caps), 0);
  ck_assert_int_eq(testlib_stack_open(&engine_s, 0), -1);
  ck_assert_str_eq(testlib_lifecycle(), "open recorder; open inner; "
                   "open outer; close inner; close recorder");
  ck_assert_msg(strstr(engine_s.err, "tracer: open failed") != NULL, "%s",
                engine_s.err);
}
END_TEST

START_TEST(test_failed_prepare_closes_every_layer)
{
  ck_assert_int_eq(testlib_stack_new(&engine_s, "tracer label=outer",
                                     &engine_caps), 0);
  engine_s.rec->fail[NBD_METHOD_PREPARE] = -EIO;
  ck_assert_int_eq(testlib_stack_open(&engine_s, 0), -1);
  ck_assert_str_eq(testlib_lifecycle(), "open recorder; open outer; "
                   "prepare recorder; close outer; close recorder");
}
END_TEST

/* ---- extent lists ---------------------------------------------------------- */

START_TEST(test_extents_add_clips_to_window)
{
  struct nbd_extents *e = nbd_extents_new(1000, 3000);

  ck_assert_int_eq(nbd_extents_add(e, 0, 500, 0), 0);     /* before */
  ck_assert_uint_eq(e->n, 0);
  ck_assert_int_eq(nbd_extents_add(e, 500, 1000, 0), 0);
  ck_assert_int_eq(nbd_extents_add(e, 1500, 5000, NBD_EXTENT_HOLE), 0);
  ck_assert_int_eq(nbd_extents_add(e, 3000, 100, 0), 0);  /* after */
  ck_assert_uint_eq(e->n, 2);
  ck_assert_uint_eq(e->v[0].offset, 1000);
  ck_assert_uint_eq(e->v[0].length, 500);
  ck_assert_uint_eq(e->v[1].offset, 1500);
  ck_assert_uint_eq(e->v[1].length, 1500);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_extents_add_merges_same_type)
{
  struct nbd_extents *e = nbd_extents_new(0, 10000);

  ck_assert_int_eq(nbd_extents_add(e, 0, 100, NBD_EXTENT_ZERO), 0);
  ck_assert_int_eq(nbd_extents_add(e, 100, 200, NBD_EXTENT_ZERO), 0);
  ck_assert_uint_eq(e->n, 1);
  ck_assert_uint_eq(e->v[0].length, 300);
  ck_assert_int_eq(nbd_extents_add(e, 300, 50, 0), 0);
  ck_assert_uint_eq(e->n, 2);
  ck_assert_uint_eq(e->v[1].offset, 300);
  ck_assert_uint_eq(e->v[1].type, 0);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_extents_add_gap_einval)
{
  struct nbd_extents *e = nbd_extents_new(0, 10000);

  ck_assert_int_eq(nbd_extents_add(e, 100, 100, 0), -EINVAL); /* at start */
  ck_assert_int_eq(nbd_extents_add(e, 0, 100, 0), 0);
  ck_assert_int_eq(nbd_extents_add(e, 200, 100, 0), -EINVAL);
  ck_assert_uint_eq(e->n, 1);
  ck_assert_uint_eq(e->v[0].length, 100);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_extents_add_overlap_keeps_only_new_part)
{
  struct nbd_extents *e = nbd_extents_new(0, 10000);

  ck_assert_int_eq(nbd_extents_add(e, 0, 300, 0), 0);
  ck_assert_int_eq(nbd_extents_add(e, 100, 100, NBD_EXTENT_HOLE), 0);
  ck_assert_uint_eq(e->n, 1);
  ck_assert_int_eq(nbd_extents_add(e, 200, 300, NBD_EXTENT_HOLE), 0);
  ck_assert_uint_eq(e->n, 2);
  ck_assert_uint_eq(e->v[1].offset, 300);
  ck_assert_uint_eq(e->v[1].length, 200);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_extents_add_length_overflow_einval)
{
  struct nbd_extents *e = nbd_extents_new(0, UINT64_MAX);

  ck_assert_int_eq(nbd_extents_add(e, 0, 100, 0), 0);
  ck_assert_int_eq(nbd_extents_add(e, 100, UINT64_MAX - 50, 0), -EINVAL);
  ck_assert_uint_eq(e->v[0].length, 100);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_extents_add_zero_length_ignored)
{
  struct nbd_extents *e = nbd_extents_new(0, 1000);

  ck_assert_int_eq(nbd_extents_add(e, 500, 0, 0), 0);
  ck_assert_uint_eq(e->n, 0);
  nbd_extents_free(e);
}
END_TEST

/* ---- suite ----------------------------------------------------------------- */

/* ---- pwrite_from: writes whose payload is still in the socket ----------- */

/* The recorder has no pwrite_from: the engine reads the payload into a
 * buffer and calls pwrite, with FUA emulated as for pwrite. */
START_TEST(test_pwrite_from_falls_back_to_pwrite)
{
  struct testlib_source src;
  struct nbd_ctx *top;

  engine_caps.can_fua = NBD_FUA_EMULATE;
  top = engine_open_caps();
  testlib_pattern(engine_buf, 8192, 4096);
  testlib_source_init(&src, engine_buf, 8192, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 8192, 4096,
                                    NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 4096+8192 flags=0; flush");
  ck_assert_uint_eq(src.src.left, 0);
  ck_assert_mem_eq(engine_s.rec->ram + 4096, engine_buf, 8192);
}
END_TEST

/* A refused write still takes its payload off the socket, or the next
 * request would be read from the middle of it. */
START_TEST(test_pwrite_from_refused_still_takes_the_payload)
{
  struct testlib_source src;
  struct nbd_ctx *top = engine_open_caps();

  testlib_source_init(&src, engine_buf, 4096, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 4096,
                                    (uint64_t)engine_caps.size - 100, 0),
                   -ENOSPC);
  ck_assert_uint_eq(src.src.left, 0);
  ck_assert_uint_eq(src.pos, 4096);
  ck_assert_uint_eq(engine_s.rec->calls[NBD_METHOD_PWRITE], 0);
  testlib_stack_free(&engine_s);
  engine_caps.can_write = 0;
  top = engine_open_caps();
  testlib_source_init(&src, engine_buf, 4096, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 4096, 0, 0), -EPERM);
  ck_assert_uint_eq(src.src.left, 0);
}
END_TEST

/* Only the request's own bytes are taken: a layer may hand one payload to
 * several calls. */
START_TEST(test_pwrite_from_takes_only_its_count)
{
  struct testlib_source src;
  struct nbd_ctx *top = engine_open_caps();

  testlib_pattern(engine_buf, 8192, 0);
  testlib_source_init(&src, engine_buf, 8192, SIZE_MAX);
  engine_s.rec->fail[NBD_METHOD_PWRITE] = -EIO;
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 4096, 0, 0), -EIO);
  ck_assert_uint_eq(src.src.left, 4096);
  engine_s.rec->fail[NBD_METHOD_PWRITE] = 0;
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 4096, 4096, 0), 0);
  ck_assert_uint_eq(src.src.left, 0);
  ck_assert_mem_eq(engine_s.rec->ram + 4096, engine_buf + 4096, 4096);
}
END_TEST

/* A client gone mid-payload: the write fails, nothing more is read, and
 * the source says the connection is dead; no FUA flush follows. */
START_TEST(test_pwrite_from_client_gone_fails_without_flush)
{
  struct testlib_source src;
  struct nbd_ctx *top;

  engine_caps.can_fua = NBD_FUA_EMULATE;
  top = engine_open_caps();
  testlib_source_init(&src, engine_buf, 8192, 5000);
  ck_assert_int_lt(next_pwrite_from(top, &src.src, 8192, 0, NBD_CMD_FLAG_FUA),
                   0);
  ck_assert_int_eq(src.src.failed, 1);
  ck_assert_uint_eq(src.reads, 1);
  ck_assert_uint_eq(engine_s.rec->calls[NBD_METHOD_PWRITE], 0);
  ck_assert_uint_eq(engine_s.rec->calls[NBD_METHOD_FLUSH], 0);
}
END_TEST

static TCase *
engine_tcase(Suite *s, const char *name)
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, engine_setup, engine_teardown);
  suite_add_tcase(s, tc);
  return tc;
}

/* ---- per-instance thread model ----------------------------------------- */

/* A layer instance may ask for less concurrency in its setup than its
 * registration says (a per-instance setting such as noparallel's
 * serialize=); the export takes the lowest of its instances.  Asking for
 * more than the layer was written for is refused. */
static int engine_tighten_mode;

static int
engine_tighten_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  if (engine_tighten_mode == 1) {
    layer->thread_model = NBD_SERIALIZE_REQUESTS;
    layer->nonblocking = NBD_MAY_BLOCK;
  } else if (engine_tighten_mode == 2)
    layer->thread_model = NBD_PARALLEL + 1;
  return 0;
}

static const struct nbd_layer_ops engine_tighten_ops = {
  .name = "tighten",
  .kind = NBD_LAYER_FILTER,
  .thread_model = NBD_PARALLEL,
  .nonblocking = NBD_NEVER_BLOCKS,
  .setup = engine_tighten_setup,
};

static struct nbd_export *
engine_tighten_export(int mode, int *setup_ok, char *err, size_t errlen)
{
  struct nbd_export *exp = engine_export_new("t");
  struct nbd_layer *f = engine_layer_new(&engine_tighten_ops, "t");
  struct testlib_caps caps;
  struct nbd_layer *b;

  testlib_caps_default(&caps);
  b = testlib_recorder_new(&caps);
  ck_assert_ptr_nonnull(exp);
  ck_assert_ptr_nonnull(f);
  ck_assert_ptr_nonnull(b);
  engine_export_push(exp, f);
  engine_export_push(exp, b);
  engine_tighten_mode = mode;
  *setup_ok = engine_layer_setup(f, err, errlen) == 0;
  return exp;
}

START_TEST(test_setup_may_tighten_the_model)
{
  char err[256];
  int ok;
  struct nbd_export *exp = engine_tighten_export(0, &ok, err, sizeof err);

  ck_assert(ok);
  ck_assert_int_eq(engine_export_finish(exp, err, sizeof err), 0);
  ck_assert_int_eq(exp->model, NBD_PARALLEL);
  ck_assert_int_eq(exp->nonblocking, NBD_NEVER_BLOCKS);
  engine_export_free(exp);

  exp = engine_tighten_export(1, &ok, err, sizeof err);
  ck_assert(ok);
  ck_assert_int_eq(engine_export_finish(exp, err, sizeof err), 0);
  ck_assert_int_eq(exp->model, NBD_SERIALIZE_REQUESTS);
  ck_assert_int_eq(exp->nonblocking, NBD_MAY_BLOCK);
  engine_export_free(exp);
}
END_TEST

START_TEST(test_setup_may_not_loosen_the_model)
{
  char err[256];
  int ok;
  struct nbd_export *exp = engine_tighten_export(2, &ok, err, sizeof err);

  ck_assert(!ok);
  ck_assert_msg(strstr(err, "loosened") != NULL, "%s", err);
  engine_export_free(exp);
}
END_TEST

static Suite *
engine_suite(void)
{
  Suite *s = suite_create("engine");
  TCase *tc;

  tc = engine_tcase(s, "fua");
  tcase_add_test(tc, test_fua_emulated_pwrite_flushes_after);
  tcase_add_test(tc, test_fua_emulated_trim_flushes_after);
  tcase_add_test(tc, test_fua_emulated_zero_flushes_after);
  tcase_add_test(tc, test_fua_emulated_no_flush_after_failed_write);
  tcase_add_test(tc, test_fua_native_passes_flag_without_flush);
  tcase_add_test(tc, test_fua_none_rejects_without_call);
  tcase_add_test(tc, test_fua_emulate_without_flush_becomes_none);
  tcase_add_test(tc, test_fua_native_kept_when_zero_falls_back_to_writes);
  tcase_add_test(tc, test_fua_native_kept_when_zero_emulated);

  tc = engine_tcase(s, "pwrite_from");
  tcase_add_test(tc, test_pwrite_from_falls_back_to_pwrite);
  tcase_add_test(tc, test_pwrite_from_refused_still_takes_the_payload);
  tcase_add_test(tc, test_pwrite_from_takes_only_its_count);
  tcase_add_test(tc, test_pwrite_from_client_gone_fails_without_flush);

  tc = engine_tcase(s, "zero");
  tcase_add_test(tc, test_zero_emulated_writes_zeros);
  tcase_add_test(tc, test_zero_emulated_chunks_at_max_block);
  tcase_add_test(tc, test_zero_none_is_unsupported);
  tcase_add_test(tc, test_fast_zero_emulated_fails_fast_without_writing);
  tcase_add_test(tc, test_fast_zero_native_unsupported_fails_without_call);
  tcase_add_test(tc, test_fast_zero_native_passes_flag);
  tcase_add_test(tc, test_zero_native_declined_falls_back_to_writes);
  tcase_add_test(tc, test_zero_native_declined_fast_zero_does_not_fall_back);
  tcase_add_test(tc, test_zero_native_error_is_returned_without_fallback);

  tc = engine_tcase(s, "cache");
  tcase_add_test(tc, test_cache_emulated_reads);
  tcase_add_test(tc, test_cache_emulated_chunks_at_max_block);
  tcase_add_test(tc, test_cache_native_calls_cache);
  tcase_add_test(tc, test_cache_none_rejected);

  tc = engine_tcase(s, "extents dispatch");
  tcase_add_test(tc, test_extents_unsupported_reports_all_data);
  tcase_add_test(tc, test_extents_native_asks_backend);

  tc = engine_tcase(s, "block size");
  tcase_add_test(tc, test_misaligned_offset_rejected_without_call);
  tcase_add_test(tc, test_misaligned_count_rejected_without_call);
  tcase_add_test(tc, test_payload_over_max_rejected_without_call);
  tcase_add_test(tc, test_aligned_request_within_max_reaches_backend);
  tcase_add_test(tc, test_trim_and_zero_over_max_reach_backend);
  tcase_add_test(tc, test_minimum_not_power_of_two_fails_open);
  tcase_add_test(tc, test_preferred_below_minimum_fails_open);
  tcase_add_test(tc, test_maximum_not_multiple_of_minimum_fails_open);
  tcase_add_test(tc, test_minimum_over_64k_fails_open);

  tc = engine_tcase(s, "bounds");
  tcase_add_test(tc, test_read_past_end_einval);
  tcase_add_test(tc, test_write_past_end_enospc_trim_einval);
  tcase_add_test(tc, test_request_ending_at_size_accepted);
  tcase_add_test(tc, test_offset_plus_count_overflow_rejected);

  tc = engine_tcase(s, "read-only");
  tcase_add_test(tc, test_readonly_open_rejects_writes_eperm);
  tcase_add_test(tc, test_readonly_open_caches_can_write_zero);
  tcase_add_test(tc, test_readonly_export_rejects_writes_eperm);

  tc = engine_tcase(s, "capability cache");
  tcase_add_test(tc, test_open_asks_each_capability_once);
  tcase_add_test(tc, test_later_capability_calls_do_not_reach_backend);
  tcase_add_test(tc, test_each_connection_asks_again);
  tcase_add_test(tc, test_failing_capability_fails_open_naming_layer);

  tc = engine_tcase(s, "thread model per instance");
  tcase_add_test(tc, test_setup_may_tighten_the_model);
  tcase_add_test(tc, test_setup_may_not_loosen_the_model);

  tc = engine_tcase(s, "lifecycle");
  tcase_add_test(tc, test_open_inner_to_outer_close_outer_to_inner);
  tcase_add_test(tc, test_failed_open_closes_only_opened_layers);
  tcase_add_test(tc, test_failed_prepare_closes_every_layer);

  tc = engine_tcase(s, "extent lists");
  tcase_add_test(tc, test_extents_add_clips_to_window);
  tcase_add_test(tc, test_extents_add_merges_same_type);
  tcase_add_test(tc, test_extents_add_gap_einval);
  tcase_add_test(tc, test_extents_add_overlap_keeps_only_new_part);
  tcase_add_test(tc, test_extents_add_length_overflow_einval);
  tcase_add_test(tc, test_extents_add_zero_length_ignored);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(engine_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
