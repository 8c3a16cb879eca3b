/* Tests of the NBD handshake as the server speaks it (handshake.c): the
 * greeting, option parsing and the replies to LIST, INFO, GO,
 * SET_META_CONTEXT and EXPORT_NAME, in-process and without the server
 * binary (tests/protolib.h: a socketpair, conn_run in a thread and a
 * blocking client).
 *
 * Every test serves two 1 MiB memory exports, "" and "ro" (read-only,
 * description "read only"); a build without the memory backend skips
 * them.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "protolib.h"
#include "testlib.h"

START_TEST(test_greeting_magic_and_flags)
{
  struct tc t;
  unsigned char g[18];

  tc_start(&t);
  cl_read(&t, g, sizeof g);
  ck_assert(wire_get64(g) == NBD_MAGIC);
  ck_assert(memcmp(g, "NBDMAGIC", 8) == 0);
  ck_assert(wire_get64(g + 8) == NBD_IHAVEOPT);
  ck_assert(memcmp(g + 8, "IHAVEOPT", 8) == 0);
  ck_assert_uint_eq(wire_get16(g + 16),
                    NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  tc_end(&t);
}
END_TEST

START_TEST(test_unknown_client_flag_drops_connection)
{
  struct tc t;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES | (1u << 2));
  cl_expect_eof(&t);
  tc_end(&t);
}
END_TEST

START_TEST(test_unknown_option_unsup_then_go_works)
{
  struct tc t;
  struct rep r;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, 0x4242, "abcde", 5);   /* its data must be skipped */
  rep_expect(&t, 0x4242, NBD_REP_ERR_UNSUP, &r);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_list_returns_both_exports_then_ack)
{
  struct tc t;
  struct rep r;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_LIST, NULL, 0);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_SERVER, &r);
  ck_assert_uint_eq(r.len, 4);                  /* "" and no description */
  ck_assert_uint_eq(wire_get32(r.data), 0);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_SERVER, &r);
  ck_assert_uint_eq(r.len, 4 + 2 + 9);
  ck_assert_uint_eq(wire_get32(r.data), 2);
  ck_assert(memcmp(r.data + 4, "ro", 2) == 0);
  ck_assert(memcmp(r.data + 6, "read only", 9) == 0);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_ACK, &r);
  ck_assert_uint_eq(r.len, 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_list_with_data_invalid_and_stays_in_sync)
{
  struct tc t;
  struct rep r;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_LIST, "\0\0\0\0", 4);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_ERR_INVALID, &r);
  /* The 4 bytes were consumed: a plain LIST works. */
  opt_send(&t, NBD_OPT_LIST, NULL, 0);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_SERVER, &r);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_SERVER, &r);
  rep_expect(&t, NBD_OPT_LIST, NBD_REP_ACK, &r);
  tc_end(&t);
}
END_TEST

START_TEST(test_abort_acked_then_closed)
{
  struct tc t;
  struct rep r;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_ABORT, NULL, 0);
  rep_expect(&t, NBD_OPT_ABORT, NBD_REP_ACK, &r);
  ck_assert_uint_eq(r.len, 0);
  cl_expect_eof(&t);
  tc_end(&t);
}
END_TEST

START_TEST(test_starttls_refused_and_session_continues)
{
  struct tc t;
  struct rep r;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_STARTTLS, NULL, 0);
  rep_read(&t, &r);
  ck_assert_uint_eq(r.opt, NBD_OPT_STARTTLS);
  ck_assert_msg(r.type & UINT32_C(0x80000000),
                "STARTTLS reply type %#x is not an error", r.type);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_info_unknown_export_err_unknown)
{
  struct tc t;
  struct info_res res;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_info(&t, NBD_OPT_INFO, "nope", NULL, 0, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ERR_UNKNOWN);
  ck_assert_int_eq(res.nexport, 0);
  /* INFO on a real export then works and leaves the handshake going. */
  hs_info(&t, NBD_OPT_INFO, "", NULL, 0, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ACK);
  ck_assert_int_eq(res.nexport, 1);
  ck_assert_uint_eq(hs_go(&t, "ro"), RO_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_unknown_export_err_unknown)
{
  struct tc t;
  struct info_res res;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_info(&t, NBD_OPT_GO, "nope", NULL, 0, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ERR_UNKNOWN);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_nrinfos_beyond_length_invalid_and_in_sync)
{
  struct tc t;
  struct rep r;
  unsigned char d[6];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  wire_put32(d, 0);             /* name "" */
  wire_put16(d + 4, 3);         /* three requests ... and no bytes */
  opt_send(&t, NBD_OPT_GO, d, sizeof d);
  rep_expect(&t, NBD_OPT_GO, NBD_REP_ERR_INVALID, &r);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_extra_bytes_invalid_and_in_sync)
{
  struct tc t;
  struct rep r;
  unsigned char d[10];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  wire_put32(d, 0);             /* name "" */
  wire_put16(d + 4, 1);         /* one request, but two follow */
  wire_put16(d + 6, NBD_INFO_BLOCK_SIZE);
  wire_put16(d + 8, NBD_INFO_NAME);
  opt_send(&t, NBD_OPT_GO, d, sizeof d);
  rep_expect(&t, NBD_OPT_GO, NBD_REP_ERR_INVALID, &r);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_name_longer_than_option_invalid)
{
  struct tc t;
  struct rep r;
  unsigned char d[8];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  wire_put32(d, 100);           /* a 100-byte name in an 8-byte option */
  memcpy(d + 4, "abcd", 4);
  opt_send(&t, NBD_OPT_GO, d, sizeof d);
  rep_expect(&t, NBD_OPT_GO, NBD_REP_ERR_INVALID, &r);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_memory_size_and_exact_flags)
{
  struct tc t;
  uint16_t f;

  f = tc_connect(&t, "", 0, 0);
  ck_assert_msg(f == MEM_TFLAGS, "flags %#x, expected %#x", f, MEM_TFLAGS);
  ck_assert(!(f & NBD_FLAG_SEND_DF));   /* no structured replies */
  tc_end(&t);
}
END_TEST

START_TEST(test_go_memory_structured_adds_df)
{
  struct tc t;
  uint16_t f;

  f = tc_connect(&t, "", 1, 0);
  ck_assert_msg(f == (MEM_TFLAGS | NBD_FLAG_SEND_DF), "flags %#x, expected %#x",
                f, MEM_TFLAGS | NBD_FLAG_SEND_DF);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_readonly_export_flags)
{
  struct tc t;
  uint16_t f;

  f = tc_connect(&t, "ro", 0, 0);
  ck_assert(f & NBD_FLAG_READ_ONLY);
  ck_assert(!(f & (NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
                   NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_FAST_ZERO)));
  ck_assert_msg(f == RO_TFLAGS, "flags %#x, expected %#x", f, RO_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_block_size_when_requested)
{
  struct tc t;
  struct info_res res;
  const uint16_t reqs[] = { NBD_INFO_BLOCK_SIZE };

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_info(&t, NBD_OPT_GO, "", reqs, 1, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ACK);
  ck_assert_int_eq(res.nexport, 1);
  ck_assert_int_eq(res.nblock, 1);
  ck_assert_uint_eq(res.bmin, 1);
  ck_assert_uint_eq(res.bpref, 4096);
  ck_assert_uint_eq(res.bmax, 32 * MIB);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_description_when_requested)
{
  struct tc t;
  struct info_res res;
  const uint16_t reqs[] = { NBD_INFO_DESCRIPTION };

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_info(&t, NBD_OPT_INFO, "ro", NULL, 0, &res);     /* not requested */
  ck_assert_uint_eq(res.final, NBD_REP_ACK);
  ck_assert_int_eq(res.ndesc, 0);
  /* An export without a description sends none, even when asked. */
  hs_info(&t, NBD_OPT_INFO, "", reqs, 1, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ACK);
  ck_assert_int_eq(res.nexport, 1);
  ck_assert_int_eq(res.ndesc, 0);
  hs_info(&t, NBD_OPT_GO, "ro", reqs, 1, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ACK);
  ck_assert_int_eq(res.nexport, 1);
  ck_assert_int_eq(res.ndesc, 1);
  ck_assert_str_eq(res.desc, "read only");
  tc_end(&t);
}
END_TEST

START_TEST(test_go_name_when_requested)
{
  struct tc t;
  struct info_res res;
  const uint16_t reqs[] = { NBD_INFO_NAME };

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_info(&t, NBD_OPT_GO, "ro", reqs, 1, &res);
  ck_assert_uint_eq(res.final, NBD_REP_ACK);
  ck_assert_int_eq(res.nname, 1);
  ck_assert_str_eq(res.name, "ro");
  tc_end(&t);
}
END_TEST

START_TEST(test_set_meta_context_before_structured_invalid)
{
  struct tc t;
  struct rep r;
  unsigned char buf[64];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_SET_META_CONTEXT, buf,
           meta_data(buf, "", "base:allocation"));
  rep_expect(&t, NBD_OPT_SET_META_CONTEXT, NBD_REP_ERR_INVALID, &r);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS);
  tc_end(&t);
}
END_TEST

START_TEST(test_go_unknown_info_request_ignored)
{
  struct tc t;
  struct info_res res;
  const uint16_t reqs[] = { 0x7777, NBD_INFO_BLOCK_SIZE };

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_info(&t, NBD_OPT_GO, "", reqs, 2, &res);    /* hs_info rejects any */
  ck_assert_uint_eq(res.final, NBD_REP_ACK);     /* unknown NBD_INFO type */
  ck_assert_int_eq(res.nexport, 1);
  ck_assert_int_eq(res.nblock, 1);
  tc_end(&t);
}
END_TEST

START_TEST(test_set_meta_context_base_allocation)
{
  struct tc t;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  hs_structured(&t);
  hs_meta(&t, "");              /* META_CONTEXT, nonzero id, then ACK */
  ck_assert_uint_ne(t.meta_id, 0);
  ck_assert_uint_eq(hs_go(&t, ""), MEM_TFLAGS | NBD_FLAG_SEND_DF);
  tc_end(&t);
}
END_TEST

START_TEST(test_export_name_without_no_zeroes_pads_124)
{
  struct tc t;
  unsigned char out[8 + 2 + 124], buf[512];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE);
  opt_send(&t, NBD_OPT_EXPORT_NAME, NULL, 0);
  cl_read(&t, out, sizeof out);
  ck_assert_uint_eq(wire_get64(out), DISK_SIZE);
  ck_assert_uint_eq(wire_get16(out + 8), MEM_TFLAGS);
  ck_assert(is_zero(out + 10, 124));
  /* Exactly 134 bytes: the next thing is the reply to our request. */
  ck_assert_uint_eq(simple_read(&t, 7, 0, buf, sizeof buf), 0);
  ck_assert(is_zero(buf, sizeof buf));
  tc_end(&t);
}
END_TEST

START_TEST(test_export_name_with_no_zeroes_sends_10)
{
  struct tc t;
  unsigned char out[10], buf[512];

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_EXPORT_NAME, "ro", 2);
  cl_read(&t, out, sizeof out);
  ck_assert_uint_eq(wire_get64(out), DISK_SIZE);
  ck_assert_uint_eq(wire_get16(out + 8), RO_TFLAGS);
  /* Any padding would be read here instead of the reply magic. */
  ck_assert_uint_eq(simple_read(&t, 8, 0, buf, sizeof buf), 0);
  tc_end(&t);
}
END_TEST

START_TEST(test_export_name_unknown_drops_connection)
{
  struct tc t;

  tc_start(&t);
  hs_start(&t, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  opt_send(&t, NBD_OPT_EXPORT_NAME, "nope", 4);
  cl_expect_eof(&t);
  tc_end(&t);
}
END_TEST

static Suite *
handshake_suite(void)
{
  Suite *s = suite_create("handshake");
  TCase *tc;

  if (!testlib_require_layer(NBD_LAYER_BACKEND, "memory"))
    return s;
  tc = tcase_create("handshake");
  tcase_add_checked_fixture(tc, setup_config, teardown_config);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_greeting_magic_and_flags);
  tcase_add_test(tc, test_unknown_client_flag_drops_connection);
  tcase_add_test(tc, test_unknown_option_unsup_then_go_works);
  tcase_add_test(tc, test_list_returns_both_exports_then_ack);
  tcase_add_test(tc, test_list_with_data_invalid_and_stays_in_sync);
  tcase_add_test(tc, test_abort_acked_then_closed);
  tcase_add_test(tc, test_starttls_refused_and_session_continues);
  tcase_add_test(tc, test_info_unknown_export_err_unknown);
  tcase_add_test(tc, test_go_unknown_export_err_unknown);
  tcase_add_test(tc, test_go_nrinfos_beyond_length_invalid_and_in_sync);
  tcase_add_test(tc, test_go_extra_bytes_invalid_and_in_sync);
  tcase_add_test(tc, test_go_name_longer_than_option_invalid);
  tcase_add_test(tc, test_go_memory_size_and_exact_flags);
  tcase_add_test(tc, test_go_memory_structured_adds_df);
  tcase_add_test(tc, test_go_readonly_export_flags);
  tcase_add_test(tc, test_go_block_size_when_requested);
  tcase_add_test(tc, test_go_description_when_requested);
  tcase_add_test(tc, test_go_name_when_requested);
  tcase_add_test(tc, test_set_meta_context_before_structured_invalid);
  tcase_add_test(tc, test_go_unknown_info_request_ignored);
  tcase_add_test(tc, test_set_meta_context_base_allocation);
  tcase_add_test(tc, test_export_name_without_no_zeroes_pads_124);
  tcase_add_test(tc, test_export_name_with_no_zeroes_sends_10);
  tcase_add_test(tc, test_export_name_unknown_drops_connection);
  suite_add_tcase(s, tc);

  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(handshake_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}