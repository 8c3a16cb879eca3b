/* Unit tests for the metrics endpoint's pieces: src/httpreq.c (the
 * verdict on each kind of request, fed whole and a byte at a time, and
 * the size bound) and src/metrics.c (what the hooks count and how the
 * text shows it: exact totals from concurrent threads, errors by errno,
 * label escaping of any export name, exports of an earlier set).  The
 * endpoint itself, over a socket, is tests/integration/test_metrics.py.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "httpreq.h"
#include "metrics.h"
#include "protocol.h"

#define ck_assert_has(hay, needle)                                          \
  ck_assert_msg(strstr((hay), (needle)) != NULL,                            \
                "expected '%s' in:\n%s", (needle), (hay))

static const struct {
  const char *req;
  enum httpreq_result v;
} cases[] = {
  { "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", HTTPREQ_METRICS },
  { "GET /metrics HTTP/1.0\r\n\r\n", HTTPREQ_METRICS },
  { "GET /metrics?name[]=x HTTP/1.0\n\n", HTTPREQ_METRICS },
  { "GET /metrics HTTP/1.1\r\nhost:x\r\nAccept: */*\r\n\r\n",
    HTTPREQ_METRICS },
  { "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    HTTPREQ_METRICS },
  { "GET / HTTP/1.1\r\nHost: x\r\n\r\n", HTTPREQ_NOT_FOUND },
  { "GET /metricsx HTTP/1.1\r\nHost: x\r\n\r\n", HTTPREQ_NOT_FOUND },
  { "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", HTTPREQ_METHOD },
  { "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", HTTPREQ_METHOD },
  { "GET /metrics HTTP/1.1\r\n\r\n", HTTPREQ_BAD },               /* Host */
  { "GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", HTTPREQ_BAD },
  { "GET /metrics HTTP/1.2\r\n\r\n", HTTPREQ_BAD },
  { "GET /metrics HTTP/1.\r\n\r\n", HTTPREQ_BAD },
  { "GET /metrics\r\n\r\n", HTTPREQ_BAD },                        /* 0.9 */
  { "GET  /metrics HTTP/1.0\r\n\r\n", HTTPREQ_BAD },
  { "GET * HTTP/1.0\r\n\r\n", HTTPREQ_BAD },
  { "GET http://h/metrics HTTP/1.0\r\n\r\n", HTTPREQ_BAD },
  { "G(T /metrics HTTP/1.0\r\n\r\n", HTTPREQ_BAD },
  { "GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n", HTTPREQ_BAD },
  { "GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", HTTPREQ_BAD },
  { "GET /metrics HTTP/1.1\r\nHost: x\r\nA: b\rc\r\n\r\n", HTTPREQ_BAD },
  { "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    HTTPREQ_BAD },
  { "GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    "\r\n", HTTPREQ_BAD },
  { "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\r", HTTPREQ_BAD },
  { "\x16\x03\x01\x02\x00", HTTPREQ_BAD },                        /* TLS */
  { "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HTTPREQ_BAD },
  { "\r\nGET /metrics HTTP/1.0\r\n\r\n", HTTPREQ_BAD },
};

START_TEST(test_verdicts)
{
  size_t i;

  for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
    ck_assert_msg(httpreq_parse(cases[i].req, strlen(cases[i].req)) ==
                  cases[i].v, "case %zu: %s", i, cases[i].req);
}
END_TEST

/* As the endpoint sees a slow client: a byte more each time.  The
 * verdict never changes once given, and the complete requests need their
 * last byte. */
START_TEST(test_byte_at_a_time)
{
  size_t i, k, len;
  enum httpreq_result v, first;

  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    len = strlen(cases[i].req);
    first = HTTPREQ_MORE;
    for (k = 0; k <= len; k++) {
      v = httpreq_parse(cases[i].req, k);
      if (first != HTTPREQ_MORE)
        ck_assert_msg(v == first, "case %zu changed its verdict at %zu", i,
                      k);
      else
        first = v;
    }
    ck_assert_msg(first == cases[i].v, "case %zu", i);
    if (cases[i].v != HTTPREQ_BAD)
      ck_assert(httpreq_parse(cases[i].req, len - 1) == HTTPREQ_MORE);
  }
  /* Junk is refused at its first byte, not after a timeout. */
  ck_assert(httpreq_parse("\x01", 1) == HTTPREQ_BAD);
  ck_assert(httpreq_parse("", 0) == HTTPREQ_MORE);
}
END_TEST

START_TEST(test_bounded)
{
  char *buf = malloc(HTTPREQ_MAX + 100);
  size_t head = strlen("GET /metrics HTTP/1.1\r\nHost: x\r\nX: ");

  ck_assert_ptr_nonnull(buf);
  memcpy(buf, "GET /metrics HTTP/1.1\r\nHost: x\r\nX: ", head);
  memset(buf + head, 'a', HTTPREQ_MAX + 100 - head);
  ck_assert(httpreq_parse(buf, HTTPREQ_MAX - 1) == HTTPREQ_MORE);
  ck_assert(httpreq_parse(buf, HTTPREQ_MAX) == HTTPREQ_BAD);
  ck_assert(httpreq_parse(buf, HTTPREQ_MAX + 100) == HTTPREQ_BAD);
  free(buf);
}
END_TEST

/* ---- counters ------------------------------------------------------------ */

static struct nbd_export exp_a = { .name = (char *)"a" };
static struct nbd_export exp_odd = { .name = (char *)"q\"b\\n\nx\xff\xc3\xa9" };
static struct nbd_export exp_gone = { .name = (char *)"gone" };

static char *
render(void)
{
  size_t len;
  char *t = metrics_render(&len);

  ck_assert_ptr_nonnull(t);
  ck_assert_uint_eq(strlen(t), len);    /* no NUL inside, NUL after */
  return t;
}

static struct nbd_conn *
conn_on(struct nbd_export *e, uint64_t id)
{
  struct nbd_conn *c = calloc(1, sizeof *c);

  ck_assert_ptr_nonnull(c);
  c->exp = e;
  c->info.id = id;
  metrics_handshake(c, 0);
  ck_assert_ptr_nonnull(c->metrics);
  return c;
}

#define NTHREADS 4
#define NREQ 20000

static void *
hammer(void *arg)
{
  struct nbd_conn *c = arg;
  struct nbd_request r = { .type = NBD_CMD_READ, .count = 4096 };
  struct nbd_request w = { .type = NBD_CMD_WRITE, .count = 512 };
  unsigned i;

  for (i = 0; i < NREQ; i++) {
    metrics_request(c, &r, 0, metrics_start(c));
    metrics_request(c, &w, i % 100 == 0 ? -ENOSPC : 0, metrics_start(c));
  }
  return NULL;
}

START_TEST(test_counts_exactly)
{
  struct nbd_config cfg;
  struct nbd_conn *c[NTHREADS];
  pthread_t t[NTHREADS];
  struct nbd_request disc = { .type = NBD_CMD_DISC };
  struct nbd_request flush = { .type = NBD_CMD_FLUSH };
  char line[256], *text;
  unsigned i;

  memset(&cfg, 0, sizeof cfg);
  cfg.metrics = (char *)"unix:/nonexistent";
  cfg.exports = &exp_a;
  exp_a.next = &exp_odd;
  exp_odd.next = &exp_gone;
  metrics_configure(&cfg);
  /* Two connections share a shard (ids 1 and 17), so adds race. */
  for (i = 0; i < NTHREADS; i++)
    c[i] = conn_on(&exp_a, i == 1 ? 17 : i + 1);
  for (i = 0; i < NTHREADS; i++)
    ck_assert_int_eq(pthread_create(&t[i], NULL, hammer, c[i]), 0);
  for (i = 0; i < NTHREADS; i++)
    pthread_join(t[i], NULL);
  metrics_request(c[0], &disc, 0, 0);             /* not a method */
  metrics_request(c[0], &flush, -EINVAL, 0);      /* refused before it ran */
  text = render();
  snprintf(line, sizeof line, "nbdstack_requests_total{export=\"a\","
           "method=\"read\"} %u\n", NTHREADS * NREQ);
  ck_assert_has(text, line);
  snprintf(line, sizeof line, "nbdstack_request_bytes_total{export=\"a\","
           "method=\"read\"} %llu\n", (unsigned long long)NTHREADS * NREQ *
           4096);
  ck_assert_has(text, line);
  snprintf(line, sizeof line, "nbdstack_request_bytes_total{export=\"a\","
           "method=\"write\"} %llu\n", (unsigned long long)NTHREADS *
           (NREQ - NREQ / 100) * 512);
  ck_assert_has(text, line);
  snprintf(line, sizeof line, "nbdstack_request_errors_total{export=\"a\","
           "method=\"write\",errno=\"ENOSPC\"} %u\n", NTHREADS * NREQ / 100);
  ck_assert_has(text, line);
  snprintf(line, sizeof line, "nbdstack_request_duration_seconds_count{"
           "export=\"a\",method=\"write\"} %u\n", NTHREADS * NREQ);
  ck_assert_has(text, line);
  ck_assert_has(text, "nbdstack_requests_total{export=\"a\","
                "method=\"flush\"} 1\n");
  ck_assert_has(text, "nbdstack_request_errors_total{export=\"a\","
                "method=\"flush\",errno=\"EINVAL\"} 1\n");
  ck_assert_has(text, "nbdstack_request_duration_seconds_bucket{"
                "export=\"a\",method=\"flush\",le=\"1e-06\"} 1\n");
  ck_assert_has(text, "nbdstack_connections_open{export=\"a\"} 4\n");
  /* Any bytes as a label value: escaped, and U+FFFD for what is not
   * UTF-8. */
  ck_assert_has(text, "nbdstack_connections_open{export=\"q\\\"b\\\\n\\nx"
                "\xef\xbf\xbd\xc3\xa9\"} 0\n");
  free(text);
  for (i = 0; i < NTHREADS; i++) {
    metrics_conn_close(c[i]);
    ck_assert_ptr_null(c[i]->metrics);
  }
  text = render();
  ck_assert_has(text, "nbdstack_connections_open{export=\"a\"} 0\n");
  ck_assert_has(text, "nbdstack_connections_total{export=\"a\"} 4\n");
  free(text);

  /* A set without "gone": shown while a connection still has it. */
  free(c[0]);
  c[0] = conn_on(&exp_gone, 5);
  exp_odd.next = NULL;
  metrics_configure(&cfg);
  text = render();
  ck_assert_has(text, "nbdstack_connections_open{export=\"gone\"} 1\n");
  free(text);
  metrics_conn_close(c[0]);
  text = render();
  ck_assert_msg(strstr(text, "export=\"gone\"") == NULL, "%s", text);
  free(text);
  /* Back again: where it was. */
  exp_odd.next = &exp_gone;
  metrics_configure(&cfg);
  text = render();
  ck_assert_has(text, "nbdstack_connections_total{export=\"gone\"} 1\n");
  free(text);
  for (i = 0; i < NTHREADS; i++)
    free(c[i]);
}
END_TEST

START_TEST(test_handshakes_and_refusals)
{
  struct nbd_conn c;
  char *text;

  memset(&c, 0, sizeof c);
  metrics_handshake_aborted();
  metrics_handshake(&c, -1);
  metrics_handshake(&c, -1);
  metrics_refused(METRICS_REFUSED_EXPORT_LIMIT);
  metrics_refused(METRICS_REFUSED_LIMIT);
  metrics_refused(METRICS_REFUSED_IP);
  metrics_refused(METRICS_REFUSED_IP);
  metrics_handshake_timeout();
  text = render();
  ck_assert_has(text, "nbdstack_handshakes_total{result=\"aborted\"} 1\n");
  ck_assert_has(text, "nbdstack_handshakes_total{result=\"failed\"} 1\n");
  ck_assert_has(text, "nbdstack_connections_refused_total{"
                "reason=\"export-limit\"} 1\n");
  ck_assert_has(text, "nbdstack_connections_refused_total{"
                "reason=\"limit\"} 1\n");
  ck_assert_has(text, "nbdstack_connections_refused_total{"
                "reason=\"ip\"} 2\n");
  ck_assert_has(text, "nbdstack_handshakes_total{result=\"timeout\"} 1\n");
  ck_assert_has(text, "# TYPE nbdstack_request_duration_seconds histogram\n");
  ck_assert_has(text, "nbdstack_build_info{version=\"");
  free(text);
}
END_TEST

int
main(void)
{
  Suite *s = suite_create("metrics");
  SRunner *sr;
  TCase *tc;
  int failed;

  tc = tcase_create("verdict on each kind of request");
  tcase_add_test(tc, test_verdicts);
  suite_add_tcase(s, tc);
  tc = tcase_create("a byte at a time: the verdict never changes");
  tcase_add_test(tc, test_byte_at_a_time);
  suite_add_tcase(s, tc);
  tc = tcase_create("requests longer than the bound are refused");
  tcase_add_test(tc, test_bounded);
  suite_add_tcase(s, tc);
  tc = tcase_create("counts exactly from concurrent threads");
  tcase_add_test(tc, test_counts_exactly);
  suite_add_tcase(s, tc);
  tc = tcase_create("handshakes and refusals");
  tcase_add_test(tc, test_handshakes_and_refusals);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
