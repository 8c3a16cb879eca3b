/* Tests of the config file parser (config.c) and the command line
 * (cmdline.c).
 *
 * Test-only layers registered in this binary give the parser known keys
 * and setup errors without depending on the layers being written:
 *   tfilt   filter, keys offset (size), range (size), mode (enum), label;
 *           setup fails when offset > range
 *   tfilt2  filter, keys offset, label
 *   tback   backend, keys path (magic), size (default 1M), ro (bool);
 *           setup fails for path=/nope as a file backend would
 *   tsize   backend, key size (magic, required)
 * Every setup allocates state that cleanup frees, so ASan sees leaks.
 */
#include <check.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "settings.h"
#include "testlib.h"
#include "cmdline.h"

/* ---- test layers --------------------------------------------------------- */

static int setups, cleanups;

struct tf_conf {
  uint64_t offset, range;
  int mode;
  char *label;
};

static const char *const tf_modes[] = { "fast", "slow", NULL };

static const struct nbd_param tfilt_params[] = {
  { "offset", NBD_PARAM_SIZE, offsetof(struct tf_conf, offset), "0",
    "start", NULL, 0 },
  { "range", NBD_PARAM_SIZE, offsetof(struct tf_conf, range), NULL,
    "length", NULL, 0 },
  { "mode", NBD_PARAM_ENUM, offsetof(struct tf_conf, mode), "fast",
    "how", tf_modes, 0 },
  { "label", NBD_PARAM_STRING, offsetof(struct tf_conf, label), NULL,
    "a name", NULL, 0 },
  NBD_PARAM_END
};

static const struct nbd_param tfilt2_params[] = {
  { "offset", NBD_PARAM_SIZE, offsetof(struct tf_conf, offset), NULL,
    "start", NULL, 0 },
  { "label", NBD_PARAM_STRING, offsetof(struct tf_conf, label), NULL,
    "a name", NULL, 0 },
  NBD_PARAM_END
};

struct tb_conf {
  char *path;
  uint64_t size;
  int ro;
};

static const struct nbd_param tback_params[] = {
  { "path", NBD_PARAM_PATH, offsetof(struct tb_conf, path), NULL,
    "file", NULL, 0 },
  { "size", NBD_PARAM_SIZE, offsetof(struct tb_conf, size), "1M",
    "bytes", NULL, 0 },
  { "ro", NBD_PARAM_BOOL, offsetof(struct tb_conf, ro), "no",
    "read-only", NULL, 0 },
  NBD_PARAM_END
};

static const struct nbd_param tsize_params[] = {
  { "size", NBD_PARAM_SIZE, offsetof(struct tb_conf, size), NULL,
    "bytes", NULL, 1 },
  NBD_PARAM_END
};

static int
tfilt_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct tf_conf *c = layer->conf;

  if (nbd_layer_param_set(layer, "range") && c->offset > c->range) {
    snprintf(err, errlen, "offset=%llu is past range=%llu",
             (unsigned long long)c->offset, (unsigned long long)c->range);
    return -1;
  }
  setups++;
  layer->state = malloc(16);
  return 0;
}

static int
tback_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct tb_conf *c = layer->conf;

  if (c->path && strcmp(c->path, "/nope") == 0) {
    snprintf(err, errlen, "cannot open %s: No such file or directory",
             c->path);
    return -1;
  }
  setups++;
  layer->state = malloc(16);
  return 0;
}

static void
test_cleanup(struct nbd_layer *layer)
{
  if (layer->state)
    cleanups++;
  free(layer->state);
  layer->state = NULL;
}

#define TEST_PASS_ALL(l)                                                    \
  PASSTHROUGH(l, pread) PASSTHROUGH(l, pwrite) PASSTHROUGH(l, flush)        \
  PASSTHROUGH(l, trim) PASSTHROUGH(l, zero) PASSTHROUGH(l, extents)         \
  PASSTHROUGH(l, depth)                                                     \
  PASSTHROUGH(l, cache) PASSTHROUGH(l, reopen) PASSTHROUGH(l, get_size) PASSTHROUGH(l, block_size) \
  PASSTHROUGH(l, can_write) PASSTHROUGH(l, can_flush)                       \
  PASSTHROUGH(l, can_trim) PASSTHROUGH(l, can_zero)                         \
  PASSTHROUGH(l, can_fast_zero) PASSTHROUGH(l, can_fua)                     \
  PASSTHROUGH(l, can_cache) PASSTHROUGH(l, can_extents)                     \
  PASSTHROUGH(l, can_multi_conn) PASSTHROUGH(l, is_rotational)         \
  PASSTHROUGH(l, list_exports)                                              \
  PASSTHROUGH(l, preconnect)

#define TEST_UNSUP_ALL(l)                                                   \
  UNSUPPORTED(l, pread) UNSUPPORTED(l, pwrite) UNSUPPORTED(l, flush)        \
  UNSUPPORTED(l, trim) UNSUPPORTED(l, zero) UNSUPPORTED(l, extents)         \
  UNSUPPORTED(l, depth)                                                     \
  UNSUPPORTED(l, cache) UNSUPPORTED(l, reopen) UNSUPPORTED(l, get_size) UNSUPPORTED(l, block_size) \
  UNSUPPORTED(l, can_write) UNSUPPORTED(l, can_flush)                       \
  UNSUPPORTED(l, can_trim) UNSUPPORTED(l, can_zero)                         \
  UNSUPPORTED(l, can_fast_zero) UNSUPPORTED(l, can_fua)                     \
  UNSUPPORTED(l, can_cache) UNSUPPORTED(l, can_extents)                     \
  UNSUPPORTED(l, can_multi_conn) UNSUPPORTED(l, is_rotational)         \
  UNSUPPORTED(l, list_exports)                                              \
  UNSUPPORTED(l, preconnect)

TEST_PASS_ALL(tfilt)
TEST_PASS_ALL(tfilt2)
TEST_UNSUP_ALL(tback)
TEST_UNSUP_ALL(tsize)

NBD_REGISTER_FILTER(tfilt, NBD_PARALLEL, NBD_MAY_BLOCK,
  .description = "test filter",
  .params = tfilt_params, .conf_size = sizeof(struct tf_conf),
  .setup = tfilt_setup,
  .cleanup = test_cleanup);
NBD_REGISTER_FILTER(tfilt2, NBD_SERIALIZE_REQUESTS, NBD_MAY_BLOCK,
  .description = "second test filter",
  .params = tfilt2_params, .conf_size = sizeof(struct tf_conf),
  .setup = tfilt_setup,
  .cleanup = test_cleanup);
NBD_REGISTER_BACKEND(tback, NBD_PARALLEL, NBD_MAY_BLOCK,
  .description = "test backend",
  .params = tback_params, .conf_size = sizeof(struct tb_conf),
  .magic_param = "path",
  .setup = tback_setup, .cleanup = test_cleanup);
NBD_REGISTER_BACKEND(tsize, NBD_PARALLEL, NBD_MAY_BLOCK,
  .description = "test backend, size required",
  .params = tsize_params, .conf_size = sizeof(struct tb_conf),
  .magic_param = "size",
  .setup = tback_setup, .cleanup = test_cleanup);

/* ---- helpers ------------------------------------------------------------- */

static char *errbuf;            /* messages of the last parse */

/* Parses text as "t.ini"; the messages land in errbuf. */
static int
parse(const char *text, struct nbd_config *cfg)
{
  size_t len;
  FILE *errs;
  int n;

  free(errbuf);
  errbuf = NULL;
  errs = open_memstream(&errbuf, &len);
  ck_assert_ptr_nonnull(errs);
  n = config_parse_string(text, "t.ini", cfg, errs);
  fclose(errs);
  return n;
}

#define ck_assert_has(hay, needle)                                          \
  ck_assert_msg(strstr((hay), (needle)) != NULL,                            \
                "expected '%s' in:\n%s", (needle), (hay))

/* Parses text, expects exactly n errors, frees nothing (cfg is freed). */
static void
expect_errors(const char *text, int n)
{
  struct nbd_config cfg;
  int got = parse(text, &cfg);

  ck_assert_msg(got == n, "expected %d errors, got %d:\n%s", n, got, errbuf);
  ck_assert_ptr_null(cfg.exports);
  ck_assert_uint_eq(cfg.nlistens, 0);
}

/* Expects one error, equal to msg. */
static void
expect_error(const char *text, const char *msg)
{
  char want[2048];

  expect_errors(text, 1);
  snprintf(want, sizeof want, "%s\n", msg);
  ck_assert_str_eq(errbuf, want);
}

static void
parse_ok(const char *text, struct nbd_config *cfg)
{
  int n = parse(text, cfg);
  ck_assert_msg(n == 0, "expected no errors, got %d:\n%s", n, errbuf);
  ck_assert_str_eq(errbuf, "");
}

static const struct tf_conf *
tf(const struct nbd_layer *l)
{
  return l->conf;
}

static const struct tb_conf *
tb(const struct nbd_layer *l)
{
  return l->conf;
}

static size_t
count_exports(const struct nbd_config *cfg)
{
  const struct nbd_export *e;
  size_t n = 0;

  for (e = cfg->exports; e; e = e->next)
    n++;
  return n;
}

static void
teardown(void)
{
  free(errbuf);
  errbuf = NULL;
}

/* ---- good files ---------------------------------------------------------- */

START_TEST(test_minimal)
{
  struct nbd_config cfg;

  parse_ok("[export \"\"]\nbackend = tback\n", &cfg);
  ck_assert_uint_eq(count_exports(&cfg), 1);
  ck_assert_str_eq(cfg.exports->name, "");
  ck_assert_ptr_null(cfg.exports->description);
  ck_assert_int_eq(cfg.exports->readonly, 0);
  ck_assert_str_eq(cfg.exports->top->ops->name, "tback");
  ck_assert_ptr_null(cfg.exports->top->below);
  ck_assert_uint_eq(tb(cfg.exports->top)->size, 1 << 20);  /* default */
  ck_assert_uint_eq(cfg.nlistens, 1);
  ck_assert_int_eq(cfg.listens[0].kind, NBD_LISTEN_TCP);
  ck_assert_ptr_null(cfg.listens[0].host);
  ck_assert_str_eq(cfg.listens[0].port, "10809");
  ck_assert_uint_eq(cfg.threads, 16);
  ck_assert_int_eq(cfg.readonly, 0);
  ck_assert_int_eq(cfg.any_export_name, 0);
  ck_assert_ptr_null(cfg.pidfile);
  ck_assert_int_eq(setups, 1);
  config_free(&cfg);
  ck_assert_int_eq(cleanups, 1);
}
END_TEST

START_TEST(test_export_names)
{
  struct nbd_config cfg;
  const struct nbd_export *e;

  parse_ok("[export \"my disk\"]\nbackend = tback\n"
           "[export vm1]\nbackend = tback\n"
           "[ export   \"a \\\"q\\\" \\\\ b\" ]   # comment\nbackend = tback\n"
           "[export \"#;[]=\"]\nbackend = tback\n"
           "[export vm2 ]\nbackend = tback\n", &cfg);
  e = cfg.exports;
  ck_assert_str_eq(e->name, "my disk");
  ck_assert_str_eq((e = e->next)->name, "vm1");
  ck_assert_str_eq((e = e->next)->name, "a \"q\" \\ b");
  ck_assert_str_eq((e = e->next)->name, "#;[]=");
  ck_assert_str_eq((e = e->next)->name, "vm2");
  ck_assert_ptr_null(e->next);
  config_free(&cfg);
}
END_TEST

START_TEST(test_listen_order)
{
  struct nbd_config cfg;

  parse_ok("[server]\n"
           "listen = unix:/run/a.sock\n"
           "listen = tcp:localhost:10809\n"
           "listen = tcp:[::1]:1234\n"
           "listen = /run/b.sock\n"
           "listen = tcp:2000\n"
           "[export x]\nbackend = tback\n", &cfg);
  ck_assert_uint_eq(cfg.nlistens, 5);
  ck_assert_int_eq(cfg.listens[0].kind, NBD_LISTEN_UNIX);
  ck_assert_str_eq(cfg.listens[0].path, "/run/a.sock");
  ck_assert_int_eq(cfg.listens[1].kind, NBD_LISTEN_TCP);
  ck_assert_str_eq(cfg.listens[1].host, "localhost");
  ck_assert_str_eq(cfg.listens[1].port, "10809");
  ck_assert_str_eq(cfg.listens[2].host, "::1");
  ck_assert_str_eq(cfg.listens[2].port, "1234");
  ck_assert_str_eq(cfg.listens[3].path, "/run/b.sock");
  ck_assert_ptr_null(cfg.listens[4].host);
  ck_assert_str_eq(cfg.listens[4].port, "2000");
  config_free(&cfg);
}
END_TEST

START_TEST(test_stack_order)
{
  struct nbd_config cfg;
  const struct nbd_layer *l;

  parse_ok("[export x]\n"
           "filter = tfilt2 label=outer\n"
           "filter = tfilt offset=1M range=4M mode=slow\n"
           "filter = tfilt label=inner\n"
           "backend = tback /srv/x.img size=2G\n", &cfg);
  l = cfg.exports->top;
  ck_assert_str_eq(l->ops->name, "tfilt2");
  ck_assert_str_eq(tf(l)->label, "outer");
  l = l->below;
  ck_assert_str_eq(l->ops->name, "tfilt");
  ck_assert_uint_eq(tf(l)->offset, 1 << 20);
  ck_assert_uint_eq(tf(l)->range, 4 << 20);
  ck_assert_int_eq(tf(l)->mode, 1);
  ck_assert_ptr_null(tf(l)->label);
  l = l->below;
  ck_assert_str_eq(tf(l)->label, "inner");
  ck_assert_int_eq(tf(l)->mode, 0);      /* default "fast" */
  l = l->below;
  ck_assert_str_eq(l->ops->name, "tback");
  ck_assert_str_eq(tb(l)->path, "/srv/x.img");
  ck_assert_uint_eq(tb(l)->size, 2ull << 30);
  ck_assert_ptr_null(l->below);
  ck_assert_str_eq(l->export_name, "x");
  /* tfilt2 serialises requests: the export takes the strictest model. */
  ck_assert_int_eq(cfg.exports->model, NBD_SERIALIZE_REQUESTS);
  ck_assert_int_eq(setups, 4);
  config_free(&cfg);
  ck_assert_int_eq(cleanups, 4);
}
END_TEST

START_TEST(test_quoted_values)
{
  struct nbd_config cfg;
  const struct nbd_layer *l;

  parse_ok("[export x]\n"
           "filter = tfilt label=\"two  words # not a comment\"\n"
           "filter = tfilt label=a\"b c\"d\n"
           "filter = tfilt label=\"say \\\"hi\\\" \\\\ \\n\"\n"
           "filter = tfilt label=\"\"\n"
           "backend = tback path=\"/srv/my disk.img\"  # trailing\n", &cfg);
  l = cfg.exports->top;
  ck_assert_str_eq(tf(l)->label, "two  words # not a comment");
  ck_assert_str_eq(tf(l = l->below)->label, "ab cd");
  ck_assert_str_eq(tf(l = l->below)->label, "say \"hi\" \\ \\n");
  ck_assert_str_eq(tf(l = l->below)->label, "");
  ck_assert_str_eq(tb(l = l->below)->path, "/srv/my disk.img");
  config_free(&cfg);
}
END_TEST

START_TEST(test_magic_param)
{
  struct nbd_config cfg;

  parse_ok("[export a]\nbackend = tsize 1G\n"
           "[export b]\nbackend = tback /srv/a=b.img\n"
           "[export c]\nbackend = tback \"x=1\"\n", &cfg);
  ck_assert_uint_eq(tb(cfg.exports->top)->size, 1ull << 30);
  /* "/srv/a" is no key, so the word is a bare value (as in nbdkit). */
  ck_assert_str_eq(tb(cfg.exports->next->top)->path, "/srv/a=b.img");
  /* A quoted '=' is no separator. */
  ck_assert_str_eq(tb(cfg.exports->next->next->top)->path, "x=1");
  config_free(&cfg);
}
END_TEST

START_TEST(test_server_keys)
{
  struct nbd_config cfg;

  parse_ok("[server]\nthreads = 4\nreadonly = yes\n"
           "pidfile = /run/nbdstack.pid\n"
           "[export x]\nbackend = tback\n", &cfg);
  ck_assert_uint_eq(cfg.threads, 4);
  ck_assert_int_eq(cfg.readonly, 1);
  ck_assert_str_eq(cfg.pidfile, "/run/nbdstack.pid");
  config_free(&cfg);
  parse_ok("[server]\nthreads = 1024\nreadonly = off\n"
           "[export x]\nbackend = tback\n[server]\nlisten = /s\n", &cfg);
  ck_assert_uint_eq(cfg.threads, 1024);
  ck_assert_int_eq(cfg.readonly, 0);
  ck_assert_uint_eq(cfg.nlistens, 1);
  /* Defaults of the limits. */
  ck_assert_uint_eq(cfg.max_connections, 1024);
  ck_assert_uint_eq(cfg.handshake_timeout, UINT64_C(10000000000));
  ck_assert_uint_eq(cfg.idle_timeout, 0);
  config_free(&cfg);
}
END_TEST

START_TEST(test_server_limit_keys)
{
  struct nbd_config cfg;

  parse_ok("[server]\nmax-connections = 7\nhandshake-timeout = 500ms\n"
           "idle-timeout = 2m\nuser = nobody\ngroup = nogroup\n"
           "[export x]\nmax-connections = 3\nbackend = tback\n", &cfg);
  ck_assert_uint_eq(cfg.max_connections, 7);
  ck_assert_uint_eq(cfg.handshake_timeout, UINT64_C(500000000));
  ck_assert_uint_eq(cfg.idle_timeout, UINT64_C(120000000000));
  ck_assert_str_eq(cfg.user, "nobody");
  ck_assert_str_eq(cfg.group, "nogroup");
  ck_assert_uint_eq(cfg.exports->max_connections, 3);
  ck_assert_int_eq(cfg.inline_requests, 1);
  config_free(&cfg);
  ck_assert_uint_eq(cfg.poll, 50000);        /* default 50 us */
  config_free(&cfg);
  parse_ok("[server]\ninline = no\n[export x]\nbackend = tback\n", &cfg);
  ck_assert_int_eq(cfg.inline_requests, 0);
  config_free(&cfg);
  parse_ok("[server]\npoll = 0\n[export x]\nbackend = tback\n", &cfg);
  ck_assert_uint_eq(cfg.poll, 0);
  config_free(&cfg);
  parse_ok("[server]\npoll = 1ms\n[export x]\nbackend = tback\n", &cfg);
  ck_assert_uint_eq(cfg.poll, 1000000);
  config_free(&cfg);
  expect_error("[server]\npoll = 2ms\n[export x]\nbackend = tback\n",
               "t.ini:2: poll: '2ms' is too long (at most 1000us)");
  parse_ok("[export x]\nbackend = tback\n", &cfg);
  ck_assert_uint_eq(cfg.coalesce, 120000);   /* default 120 us */
  config_free(&cfg);
  parse_ok("[server]\ncoalesce = 0\n[export x]\nbackend = tback\n", &cfg);
  ck_assert_uint_eq(cfg.coalesce, 0);
  config_free(&cfg);
  parse_ok("[server]\ncoalesce = 300us\n[export x]\nbackend = tback\n",
           &cfg);
  ck_assert_uint_eq(cfg.coalesce, 300000);
  config_free(&cfg);
  expect_error("[server]\ncoalesce = 5ms\n[export x]\nbackend = tback\n",
               "t.ini:2: coalesce: '5ms' is too long (at most 1000us)");
  expect_error("[server]\nhandshake-timeout = soon\n"
               "[export x]\nbackend = tback\n",
               "t.ini:2: handshake-timeout: invalid value 'soon' (expected "
               "a duration such as 500ms, 10s or 2m; 0 = none)");
  expect_error("[server]\nmax-connections = 0\n"
               "[export x]\nbackend = tback\n",
               "t.ini:2: max-connections: invalid value '0' (expected an "
               "integer from 1 to 1000000)");
}
END_TEST

START_TEST(test_export_keys)
{
  struct nbd_config cfg;
  const struct nbd_export *e;

  parse_ok("[export a]\ndescription = scratch RAM disk   # comment\n"
           "readonly = true\nbackend = tback\n"
           "[export b]\ndescription = \"disk #1, quoted\"  # c\n"
           "backend = tback\n"
           "[export c]\ndescription = a#b c\nbackend = tback\n"
           "[export d]\ndescription =\nbackend = tback\n", &cfg);
  e = cfg.exports;
  ck_assert_str_eq(e->description, "scratch RAM disk");
  ck_assert_int_eq(e->readonly, 1);
  ck_assert_str_eq((e = e->next)->description, "disk #1, quoted");
  ck_assert_int_eq(e->readonly, 0);
  ck_assert_str_eq((e = e->next)->description, "a#b c");
  ck_assert_str_eq((e = e->next)->description, "");
  config_free(&cfg);
}
END_TEST

START_TEST(test_comments)
{
  struct nbd_config cfg;

  parse_ok("# full line\n; also a comment\n   # indented\n\n \t \n"
           "[server]   # trailing after header\n"
           "threads = 8 # eight\n"
           "[export x] ; semicolon after header\n"
           "backend = tback path=/a#b   # the '#' inside a word stays\n",
           &cfg);
  ck_assert_uint_eq(cfg.threads, 8);
  ck_assert_str_eq(tb(cfg.exports->top)->path, "/a#b");
  config_free(&cfg);
}
END_TEST

START_TEST(test_crlf)
{
  struct nbd_config cfg;

  parse_ok("\xef\xbb\xbf[server]\r\nthreads = 3\r\n\r\n[export \"a b\"]\r\n"
           "description = d\r\nbackend = tback size=2M", &cfg);
  ck_assert_uint_eq(cfg.threads, 3);
  ck_assert_str_eq(cfg.exports->name, "a b");
  ck_assert_str_eq(cfg.exports->description, "d");
  ck_assert_uint_eq(tb(cfg.exports->top)->size, 2 << 20);
  config_free(&cfg);
  /* Line numbers count CRLF lines. */
  expect_error("[export x]\r\n\r\nbackend = tback bogus=1\r\n",
               "t.ini:3: backend tback: unknown key 'bogus' (known: path, "
               "size, ro)");
}
END_TEST

/* ---- errors -------------------------------------------------------------- */

START_TEST(test_unknown_layer_key)
{
  expect_error("[export x]\n\nfilter = tfilt rnage=1M\nbackend = tback\n",
               "t.ini:3: filter tfilt: unknown key 'rnage' (did you mean "
               "'range'?; known: offset, range, mode, label)");
  expect_error("[export x]\nbackend = tback size=12x\n",
               "t.ini:2: backend tback: size: invalid value '12x' (expected "
               "a size such as 4096, 64k, 1M or 2G)");
  expect_error("[export x]\nfilter = tfilt mode=medium\nbackend = tback\n",
               "t.ini:2: filter tfilt: mode: invalid value 'medium' (one "
               "of: fast slow)");
}
END_TEST

START_TEST(test_unknown_filter)
{
  struct nbd_config cfg;

  ck_assert_int_eq(parse("[export x]\nfilter = ofset\nbackend = tback\n",
                         &cfg), 1);
  ck_assert_has(errbuf, "t.ini:2: unknown filter 'ofset' (did you mean "
                "'offset'?; known: ");
  ck_assert_has(errbuf, "tfilt, tfilt2");
  ck_assert_int_eq(parse("[export x]\nfilter = tback\nbackend = tback\n",
                         &cfg), 1);
  ck_assert_has(errbuf, "; 'tback' is a backend\n");
  /* A bad backend line is not followed by "no backend". */
  ck_assert_int_eq(parse("[export x]\nbackend = tfilt\n", &cfg), 1);
  ck_assert_has(errbuf, "t.ini:2: unknown backend 'tfilt' (known: ");
  ck_assert_has(errbuf, "'tfilt' is a filter\n");
  ck_assert_int_eq(parse("[export x]\nbackend =\n", &cfg), 1);
  ck_assert_has(errbuf, "t.ini:2: backend: missing name, as in 'backend = "
                "NAME key=value ...' (known: ");
  ck_assert_int_eq(parse("[export x]\nbackend = size=1\n", &cfg), 1);
  ck_assert_has(errbuf, "t.ini:2: backend: missing name");
}
END_TEST

START_TEST(test_no_backend)
{
  expect_error("[server]\n[export vm1]\ndescription = d\n"
               "[export vm2]\nbackend = tback\n",
               "t.ini:2: export \"vm1\": no backend (add 'backend = NAME "
               "key=value ...')");
}
END_TEST

START_TEST(test_duplicate_export)
{
  expect_error("[export a]\nbackend = tback\n\n[export vm1]\nbackend = tback\n"
               "[export \"vm1\"]\nbackend = tback\n",
               "t.ini:6: duplicate export \"vm1\" (first at line 4)");
  /* The body of a duplicate is still checked. */
  expect_errors("[export \"\"]\nbackend = tback\n[export \"\"]\n"
                "backend = tback nokey=1\n[export \"\"]\n", 4);
  ck_assert_has(errbuf, "t.ini:3: duplicate export \"\" (first at line 1)\n"
                "t.ini:4: backend tback: unknown key 'nokey'");
  ck_assert_has(errbuf, "t.ini:5: duplicate export \"\" (first at line 1)\n"
                "t.ini:5: export \"\": no backend");
}
END_TEST

START_TEST(test_server_errors)
{
  expect_error("[server]\nfoo = 1\n[export x]\nbackend = tback\n",
               "t.ini:2: unknown key 'foo' in [server] (known: listen, "
               "threads, readonly, pidfile, max-connections, max-handshakes, "
               "max-handshakes-per-source, max-buffer-memory, "
               "handshake-timeout, idle-timeout, user, group, inline, poll, "
               "coalesce, log, tls, tls-certificates, tls-psk, "
               "tls-verify-peer, metrics)");
  expect_error("[export x]\nfilter tfilt\nbackend = tback\n",
               "t.ini:2: expected 'key = value' or a [section] header, got "
               "'filter tfilt'");
  expect_error("[export x]\nbackend = tback\nfoo = 1\n",
               "t.ini:3: unknown key 'foo' in [export \"x\"] (known: "
               "description, readonly, max-connections, tls, filter, backend)");
  expect_error("[export x]\nbackend = tback\n9key = 1\n",
               "t.ini:3: invalid key '9key ' (a key is letters, digits, '_', "
               "'-' and '.')");
  expect_error("[server]\nthreads = 0\n[export x]\nbackend = tback\n",
               "t.ini:2: threads: invalid value '0' (expected an integer "
               "from 1 to 1024)");
  expect_error("[server]\nthreads = 1025\n[export x]\nbackend = tback\n",
               "t.ini:2: threads: invalid value '1025' (expected an integer "
               "from 1 to 1024)");
  expect_error("[server]\nreadonly = maybe\n[export x]\nbackend = tback\n",
               "t.ini:2: readonly: invalid value 'maybe' (expected yes or "
               "no)");
  expect_error("[server]\npidfile =   # none\n[export x]\nbackend = tback\n",
               "t.ini:2: pidfile: empty value (expected a path)");
  expect_error("[server]\nlisten = tcp:h:70000\n[export x]\nbackend = tback\n",
               "t.ini:2: listen: invalid port '70000' (expected 1-65535 or "
               "a service name)");
}
END_TEST

START_TEST(test_repeated_keys)
{
  expect_error("[server]\nthreads = 2\n[export x]\nbackend = tback\n"
               "[server]\nthreads = 3\n",
               "t.ini:6: 'threads' given twice in [server] (first at line "
               "2)");
  expect_error("[export x]\ndescription = a\nbackend = tback\n"
               "description = b\n",
               "t.ini:4: 'description' given twice in [export \"x\"] (first "
               "at line 2)");
  expect_error("[export x]\nbackend = tback size=1M size=2M\n",
               "t.ini:2: backend tback: key 'size' given twice");
  expect_error("[export x]\nbackend = tsize size=2M 1G\n",
               "t.ini:2: backend tsize: bare value '1G' sets 'size', which "
               "is already set");
  expect_error("[export x]\nbackend = tback /a /b\n",
               "t.ini:2: backend tback: bare value '/b' sets 'path', which "
               "is already set");
  expect_error("[export x]\nfilter = tfilt 5\nbackend = tback\n",
               "t.ini:2: filter tfilt: takes no bare value '5' (write "
               "key=value; known keys: offset, range, mode, label)");
}
END_TEST

START_TEST(test_outside_section)
{
  expect_errors("threads = 4\n[export x]\nbackend = tback\n", 1);
  ck_assert_str_eq(errbuf, "t.ini:1: line outside any section (start with "
                   "[server] or [export NAME])\n");
}
END_TEST

START_TEST(test_unterminated_quote)
{
  expect_error("[export x]\nbackend = tback path=\"/a b\n",
               "t.ini:2: unterminated quote");
  expect_errors("[export x]\ndescription = \"abc\nbackend = tback\n", 1);
  ck_assert_str_eq(errbuf, "t.ini:2: unterminated quote\n");
  expect_error("[export \"x]\n", "t.ini:1: unterminated quote in section "
               "header");
  expect_error("[export x]\ndescription = \"a\" b\nbackend = tback\n",
               "t.ini:2: unexpected text after the closing quote: 'b'");
}
END_TEST

START_TEST(test_second_backend)
{
  expect_error("[export x]\n\n\n\nbackend = tback\nbackend = tsize 1M\n",
               "t.ini:6: second backend for export \"x\" (first at line 5)");
  expect_error("[export x]\nbackend = tback\nfilter = tfilt\n",
               "t.ini:3: filter tfilt comes after the backend (line 2): list "
               "filters first, client side first");
}
END_TEST

START_TEST(test_bad_headers)
{
  static const struct { const char *text, *msg; } cases[] = {
    { "[export x\n", "t.ini:1: bad section header: expected ']'\n" },
    { "[foo]\nbar = 1\n", "t.ini:1: unknown section [foo] (known: [server], "
      "[export NAME])\n" },
    { "[server x]\n", "t.ini:1: [server] takes no name\n" },
    { "[export my disk]\n", "t.ini:1: bad section header: a name with "
      "spaces must be quoted, as in [export \"my disk\"]\n" },
    { "[export]\n", "t.ini:1: [export] needs a name: [export NAME], or "
      "[export \"\"] for the default export\n" },
    { "[]\n", "t.ini:1: bad section header: missing section name (known: "
      "[server], [export NAME])\n" },
    { "[export \"x\"] junk\n", "t.ini:1: bad section header: unexpected "
      "text after ']': 'junk'\n" },
    { "[export a\"b]\n", "t.ini:1: bad section header: expected ']' (a "
      "quote inside a name?)\n" },
  };
  struct nbd_config cfg;
  size_t i;
  char text[256];

  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    /* A valid export after it: only the header's error is reported, and
     * the skipped body's keys are ignored. */
    snprintf(text, sizeof text, "%s[export ok]\nbackend = tback\n",
             cases[i].text);
    ck_assert_msg(parse(text, &cfg) >= 1, "%s", cases[i].text);
    ck_assert_msg(strncmp(errbuf, cases[i].msg, strlen(cases[i].msg)) == 0,
                  "for %s expected\n%sgot\n%s", cases[i].text, cases[i].msg,
                  errbuf);
  }
}
END_TEST

START_TEST(test_setup_errors)
{
  expect_errors("[export x]\n# c\nfilter = tfilt offset=2M range=1M\n"
                "filter = tfilt\n\n\n\nbackend = tback path=/nope\n", 2);
  /* Setup runs backend first, so its error comes first. */
  ck_assert_str_eq(errbuf,
                   "t.ini:8: backend tback: cannot open /nope: No such file "
                   "or directory\n"
                   "t.ini:3: filter tfilt: offset=2097152 is past "
                   "range=1048576\n");
  /* Every layer that was set up is cleaned up. */
  ck_assert_int_eq(setups, 1);
  ck_assert_int_eq(cleanups, 1);
}
END_TEST

START_TEST(test_required_key)
{
  expect_error("[export x]\nbackend = tsize\n",
               "t.ini:2: backend tsize: missing required key 'size'");
}
END_TEST

START_TEST(test_every_error)
{
  struct nbd_config cfg;
  int n;

  n = parse("stray = 1\n"                                   /* 1 */
            "[server]\n"
            "threads = lots\n"                              /* 3 */
            "listen = tcp:[::1\n"                           /* 4 */
            "[export a]\n"
            "filter = nosuch\n"                             /* 6 */
            "filter = tfilt rnage=1 mode=x\n"               /* 7 (two) */
            "backend = tback size=1X\n"                     /* 8 */
            "[export a]\n"                                  /* 9 */
            "[bogus\n"                                      /* 10 */
            "key = ignored in a skipped section\n"
            "[export b]\n"
            "backend = tback /nope\n",                      /* 13 */
            &cfg);
  ck_assert_msg(n == 11, "got %d:\n%s", n, errbuf);
  ck_assert_has(errbuf, "t.ini:1: line outside any section");
  ck_assert_has(errbuf, "t.ini:3: threads: invalid value 'lots'");
  ck_assert_has(errbuf, "t.ini:4: listen: missing ']'");
  ck_assert_has(errbuf, "t.ini:6: unknown filter 'nosuch'");
  ck_assert_has(errbuf, "t.ini:7: filter tfilt: unknown key 'rnage'");
  ck_assert_has(errbuf, "t.ini:7: filter tfilt: mode: invalid value 'x'");
  ck_assert_has(errbuf, "t.ini:8: backend tback: size: invalid value '1X'");
  ck_assert_has(errbuf, "t.ini:9: duplicate export \"a\" (first at line 5)");
  ck_assert_has(errbuf, "t.ini:9: export \"a\": no backend");
  ck_assert_has(errbuf, "t.ini:10: bad section header: expected ']'");
  ck_assert_has(errbuf, "t.ini:13: backend tback: cannot open /nope");
  ck_assert_ptr_null(cfg.exports);
  ck_assert_int_eq(cleanups, setups);
}
END_TEST

START_TEST(test_name_limit)
{
  struct nbd_config cfg;
  char *text = malloc(5000 + 64), *name = malloc(4098);

  memset(name, 'n', 4096);
  name[4096] = '\0';
  sprintf(text, "[export \"%s\"]\nbackend = tback\n", name);
  parse_ok(text, &cfg);
  ck_assert_uint_eq(strlen(cfg.exports->name), 4096);
  config_free(&cfg);
  strcpy(name + 4096, "n");
  sprintf(text, "[export %s]\nbackend = tback\n", name);
  expect_error(text, "t.ini:1: export name is 4097 bytes, longer than the "
               "NBD limit of 4096");
  free(text);
  free(name);
}
END_TEST

START_TEST(test_no_export)
{
  expect_error("", "t.ini:1: no export defined (add an [export NAME] "
               "section; [export \"\"] is the default export)");
  expect_error("# only a comment\n[server]\nthreads = 2\n",
               "t.ini:3: no export defined (add an [export NAME] section; "
               "[export \"\"] is the default export)");
}
END_TEST

START_TEST(test_too_many_layers)
{
  char *text = malloc(70 * 32);
  int i;

  strcpy(text, "[export x]\n");
  for (i = 0; i < 64; i++)
    strcat(text, "filter = tfilt\n");
  strcat(text, "backend = tback\n");
  expect_errors(text, 1);
  ck_assert_has(errbuf, "t.ini:66: too many layers in export \"x\" (at "
                "most 64)");
  free(text);
}
END_TEST

/* ---- robustness ---------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t
rand64(void)
{
  rng ^= rng << 13;             /* xorshift64: fixed seed, same every run */
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static int
load_bytes(const char *bytes, size_t len, struct nbd_config *cfg)
{
  char path[] = "/tmp/check_config.XXXXXX";
  int fd = mkstemp(path), n;
  FILE *errs = fopen("/dev/null", "w");

  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, bytes, len), (ssize_t)len);
  close(fd);
  n = config_load_file(path, cfg, errs);
  unlink(path);
  fclose(errs);
  return n;
}

START_TEST(test_garbage)
{
  static const char alphabet[] = "[]=\"#; \t\r\n\\abcdefxportsvr01:/\x80\xff";
  struct nbd_config cfg;
  char *buf = malloc(8192);
  size_t len, i;
  int round, n;

  for (round = 0; round < 300; round++) {
    len = rand64() % 8192;
    for (i = 0; i < len; i++)
      /* Half the rounds any byte (NULs too), half config-like bytes. */
      buf[i] = round & 1 ? (char)rand64()
                         : alphabet[rand64() % (sizeof alphabet - 1)];
    n = load_bytes(buf, len, &cfg);
    ck_assert_msg(n > 0, "round %d: garbage accepted", round);
    ck_assert_ptr_null(cfg.exports);
    for (i = 0; i < len; i++)
      if (buf[i] == '\0')
        buf[i] = '\n';
    buf[len] = '\0';
    n = parse(buf, &cfg);
    ck_assert_msg(n > 0, "round %d: garbage accepted", round);
  }
  free(buf);
  ck_assert_int_eq(cleanups, setups);
}
END_TEST

START_TEST(test_long_lines)
{
  static const char *const forms[] = {
    "[export x]\nbackend = tback path=%s\n",
    "[export x]\nbackend = tback %s=1\n",
    "[export x]\nbackend = tback path=\"%s\n",
    "[export x]\ndescription = %s\nbackend = tback size=1M\n%s\n",
    "[export %s]\nbackend = tback\n",
    "[%s]\n",
    "%s = 1\n",
    "[server]\nlisten = tcp:%s\n",
    "[server]\nlisten = unix:%s\n",
  };
  size_t big = 1 << 20, i;
  char *word = malloc(big + 1), *text = malloc(2 * big + 200);
  struct nbd_config cfg;

  memset(word, 'a', big);
  word[big] = '\0';
  for (i = 0; i < sizeof forms / sizeof forms[0]; i++) {
    snprintf(text, 2 * big + 200, forms[i], word, word);
    if (parse(text, &cfg) == 0)
      config_free(&cfg);
    /* Messages stay one line each and short. */
    ck_assert_msg(strlen(errbuf) < 8192, "form %zu: %zu bytes of errors", i,
                  strlen(errbuf));
  }
  free(word);
  free(text);
}
END_TEST

START_TEST(test_nul_bytes)
{
  static const char text[] = "[export x]\nbackend = tback\0 size=1M\n"
                             "description = x\n";
  struct nbd_config cfg;
  FILE *errs;
  size_t len;
  char path[] = "/tmp/check_config.XXXXXX";
  int fd = mkstemp(path);

  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, text, sizeof text - 1), (ssize_t)sizeof text - 1);
  close(fd);
  free(errbuf);
  errs = open_memstream(&errbuf, &len);
  ck_assert_int_eq(config_load_file(path, &cfg, errs), 2);
  fclose(errs);
  ck_assert_has(errbuf, ":2: NUL byte in line\n");
  ck_assert_has(errbuf, ":1: export \"x\": no backend");
  unlink(path);
}
END_TEST

START_TEST(test_load_file)
{
  static const char text[] = "[export x]\nbackend = tback\n";
  struct nbd_config cfg;
  FILE *errs;
  size_t len;

  ck_assert_int_eq(load_bytes(text, sizeof text - 1, &cfg), 0);
  ck_assert_str_eq(cfg.exports->name, "x");
  config_free(&cfg);
  free(errbuf);
  errs = open_memstream(&errbuf, &len);
  ck_assert_int_eq(config_load_file("/nonexistent/x.ini", &cfg, errs), 1);
  ck_assert_int_eq(config_load_file("/", &cfg, errs), 1);
  fclose(errs);
  ck_assert_str_eq(errbuf, "/nonexistent/x.ini: cannot open: No such file "
                   "or directory\n/: cannot read: Is a directory\n");
  ck_assert_ptr_null(cfg.exports);
}
END_TEST

/* config.example at the repository root parses, when the layers it uses
 * (memory, offset) are compiled in. */
START_TEST(test_example)
{
  const char *src = getenv("SRCDIR");
  char path[4096];
  struct nbd_config cfg;
  FILE *errs;
  size_t len;
  int n;

  if (src == NULL || !testlib_require_layer(NBD_LAYER_BACKEND, "memory") ||
      !testlib_require_layer(NBD_LAYER_FILTER, "offset"))
    return;
  snprintf(path, sizeof path, "%s/config.example", src);
  free(errbuf);
  errs = open_memstream(&errbuf, &len);
  n = config_load_file(path, &cfg, errs);
  fclose(errs);
  ck_assert_msg(n == 0, "%s", errbuf);
  ck_assert_uint_eq(cfg.nlistens, 2);
  ck_assert_str_eq(cfg.listens[0].path, "/tmp/nbdstack.sock");
  ck_assert_str_eq(cfg.listens[1].host, "localhost");
  ck_assert_uint_eq(count_exports(&cfg), 2);
  ck_assert_str_eq(cfg.exports->name, "");
  ck_assert_str_eq(cfg.exports->next->name, "scratch2");
  ck_assert_str_eq(cfg.exports->next->top->ops->name, "offset");
  config_free(&cfg);
}
END_TEST

/* ---- command line -------------------------------------------------------- */

static char *outbuf, *cerrbuf;  /* stdout and stderr of the last call */

static char *
slurp(FILE *fp)
{
  long n;
  char *s;

  fflush(fp);
  n = ftell(fp);
  s = calloc(1, (size_t)n + 1);
  rewind(fp);
  ck_assert_int_eq(fread(s, 1, (size_t)n, fp), n);
  fclose(fp);
  return s;
}

/* Runs cmdline_parse on a NULL-terminated argument list (argv[0] added),
 * with stdout and stderr captured into outbuf and cerrbuf. */
static int
run(struct nbd_config *cfg, ...)
{
  char *argv[64];
  int argc = 0, r, save1, save2;
  FILE *out = tmpfile(), *err = tmpfile();
  va_list ap;

  argv[argc++] = (char *)"nbdstack";
  va_start(ap, cfg);
  while ((argv[argc] = va_arg(ap, char *)) != NULL)
    argc++;
  va_end(ap);
  fflush(stdout);
  fflush(stderr);
  save1 = dup(1);
  save2 = dup(2);
  dup2(fileno(out), 1);
  dup2(fileno(err), 2);
  r = cmdline_parse(argc, argv, cfg);
  fflush(stdout);
  fflush(stderr);
  dup2(save1, 1);
  dup2(save2, 2);
  close(save1);
  close(save2);
  free(outbuf);
  free(cerrbuf);
  fseek(out, 0, SEEK_END);
  fseek(err, 0, SEEK_END);
  outbuf = slurp(out);
  cerrbuf = slurp(err);
  return r;
}

static void
cmd_teardown(void)
{
  teardown();
  free(outbuf);
  free(cerrbuf);
  outbuf = cerrbuf = NULL;
}

START_TEST(test_cmd_backend)
{
  struct nbd_config cfg;

  ck_assert_int_eq(run(&cfg, "tsize", "1G", NULL), 0);
  ck_assert_str_eq(cerrbuf, "");
  ck_assert_uint_eq(count_exports(&cfg), 1);
  ck_assert_str_eq(cfg.exports->name, "");
  ck_assert_uint_eq(tb(cfg.exports->top)->size, 1ull << 30);
  ck_assert_int_eq(cfg.any_export_name, 1);
  ck_assert_uint_eq(cfg.nlistens, 1);
  ck_assert_int_eq(cfg.listens[0].kind, NBD_LISTEN_TCP);
  ck_assert_ptr_null(cfg.listens[0].host);
  ck_assert_str_eq(cfg.listens[0].port, "10809");
  ck_assert_uint_eq(cfg.threads, 16);
  ck_assert_int_eq(setups, 1);
  config_free(&cfg);
  ck_assert_int_eq(cleanups, 1);
  /* The same call again: cmdline_parse resets getopt itself. */
  ck_assert_int_eq(run(&cfg, "-r", "tback", "size=4k", NULL), 0);
  ck_assert_int_eq(cfg.readonly, 1);
  ck_assert_uint_eq(tb(cfg.exports->top)->size, 4096);
  config_free(&cfg);
}
END_TEST

START_TEST(test_cmd_key_routing)
{
  struct nbd_config cfg;
  const struct nbd_layer *l;

  ck_assert_int_eq(run(&cfg, "--filter", "tfilt2", "--filter", "tfilt",
                       "tback", "/srv/disk.img", "offset=1M", "range=4M",
                       "size=8M", "label=x", "mode=slow", NULL), 0);
  ck_assert_str_eq(cerrbuf, "");
  l = cfg.exports->top;
  ck_assert_str_eq(l->ops->name, "tfilt2");
  ck_assert_uint_eq(tf(l)->offset, 1 << 20);     /* first filter that knows */
  ck_assert_str_eq(tf(l)->label, "x");
  l = l->below;
  ck_assert_str_eq(l->ops->name, "tfilt");
  ck_assert_int_eq(nbd_layer_param_set(l, "offset"), 0);
  ck_assert_uint_eq(tf(l)->range, 4 << 20);
  ck_assert_int_eq(tf(l)->mode, 1);
  l = l->below;
  ck_assert_str_eq(tb(l)->path, "/srv/disk.img");
  ck_assert_uint_eq(tb(l)->size, 8 << 20);
  config_free(&cfg);
}
END_TEST

/* Every server setting is a [server] key and, when it has an option, the
 * option: both refuse a bad value with the same words (one table,
 * settings.c).  Strings and paths take anything but "", and listen
 * addresses have tests of their own. */
START_TEST(test_settings_one_table)
{
  const struct nbd_setting *st;
  struct nbd_config cfg;
  char text[256], opt[64], want[256], *tail;

  for (st = nbd_settings; st->key; st++) {
    if (st->type == SETTING_STRING || st->type == SETTING_LISTEN ||
        (st->flags & SETTING_FLAG))
      continue;
    snprintf(text, sizeof text, "[server]\n%s = %s\n[export x]\n"
             "backend = tback\n", st->key,
             st->type == SETTING_PATH ? "\"\"" :
             st->type == SETTING_ADDR ? "tcp:[::1" : "bogus");
    ck_assert_int_eq(parse(text, &cfg), 1);
    snprintf(want, sizeof want, "t.ini:2: %s: ", st->key);
    ck_assert_msg(strncmp(errbuf, want, strlen(want)) == 0,
                  "config %s: %s", st->key, errbuf);
    tail = strdup(errbuf + strlen(want));
    ck_assert_ptr_nonnull(tail);
    if (st->option) {
      snprintf(opt, sizeof opt, "--%s", st->option);
      ck_assert_int_eq(run(&cfg, opt, st->type == SETTING_PATH ? "" :
                           st->type == SETTING_ADDR ? "tcp:[::1" : "bogus",
                           "tback", NULL), -1);
      snprintf(want, sizeof want, "nbdstack: %s: %s", opt, tail);
      ck_assert_str_eq(cerrbuf, want);
    }
    free(tail);
  }
}
END_TEST

START_TEST(test_cmd_errors)
{
  struct nbd_config cfg;

  ck_assert_int_eq(run(&cfg, "--filter", "tfilt", "tback", "rnage=1", NULL),
                   -1);
  ck_assert_str_eq(cerrbuf, "nbdstack: unknown key 'rnage' (did you mean "
                   "'range'?; filter tfilt knows: offset, range, mode, label; "
                   "backend tback knows: path, size, ro)\n");
  ck_assert_ptr_null(cfg.exports);
  ck_assert_int_eq(run(&cfg, "memroy", "1G", NULL), -1);
  ck_assert_has(cerrbuf, "nbdstack: unknown backend 'memroy' (did you mean "
                "'memory'?; known: ");
  ck_assert_has(cerrbuf, "tback, tsize");
  ck_assert_int_eq(run(&cfg, "tfilt", NULL), -1);
  ck_assert_has(cerrbuf, "; 'tfilt' is a filter, use --filter tfilt\n");
  ck_assert_int_eq(run(&cfg, "--filter", "ofset", "tback", NULL), -1);
  ck_assert_has(cerrbuf, "nbdstack: unknown filter 'ofset' (did you mean "
                "'offset'?; known: ");
  ck_assert_int_eq(run(&cfg, NULL), -1);
  ck_assert_has(cerrbuf, "nbdstack: no backend given");
  ck_assert_int_eq(run(&cfg, "tback", "/nope", NULL), -1);
  ck_assert_str_eq(cerrbuf, "nbdstack: backend tback: cannot open /nope: "
                   "No such file or directory\n");
  ck_assert_int_eq(run(&cfg, "tsize", NULL), -1);
  ck_assert_str_eq(cerrbuf, "nbdstack: backend tsize: missing required key "
                   "'size'\n");
  ck_assert_int_eq(run(&cfg, "tsize", "1G", "2G", NULL), -1);
  ck_assert_has(cerrbuf, "bare value '2G' sets 'size', which is already set");
  ck_assert_int_eq(run(&cfg, "--bogus", "tback", NULL), -1);
  ck_assert_str_eq(cerrbuf, "nbdstack: invalid option '--bogus' (see "
                   "--help)\n");
  ck_assert_int_eq(run(&cfg, "-x", "tback", NULL), -1);
  ck_assert_str_eq(cerrbuf, "nbdstack: unknown option '-x' (see --help)\n");
  ck_assert_int_eq(run(&cfg, "tback", "-p", NULL), -1);
  ck_assert_str_eq(cerrbuf, "nbdstack: option '-p' needs an argument (see "
                   "--help)\n");
  ck_assert_int_eq(run(&cfg, "tback", "--port", NULL), -1);
  ck_assert_str_eq(cerrbuf, "nbdstack: option '--port' needs an argument "
                   "(see --help)\n");
  ck_assert_int_eq(run(&cfg, "-t", "0", "tback", NULL), -1);
  ck_assert_str_eq(cerrbuf, "nbdstack: -t: invalid value '0' (expected an "
                   "integer from 1 to 1024)\n");
  ck_assert_int_eq(run(&cfg, "--threads", "0", "tback", NULL), -1);
  ck_assert_str_eq(cerrbuf, "nbdstack: --threads: invalid value '0' "
                   "(expected an integer from 1 to 1024)\n");
  ck_assert_int_eq(run(&cfg, "-p", "http x", "tback", NULL), -1);
  ck_assert_has(cerrbuf, "nbdstack: -p: invalid port 'http x'");
  ck_assert_int_eq(cleanups, setups);
}
END_TEST

START_TEST(test_cmd_listen)
{
  struct nbd_config cfg;

  ck_assert_int_eq(run(&cfg, "-U", "/tmp/a.sock", "tback", NULL), 0);
  ck_assert_uint_eq(cfg.nlistens, 1);
  ck_assert_int_eq(cfg.listens[0].kind, NBD_LISTEN_UNIX);
  ck_assert_str_eq(cfg.listens[0].path, "/tmp/a.sock");
  config_free(&cfg);
  ck_assert_int_eq(run(&cfg, "-U", "a", "--unix", "b", "-p", "2000", "tback",
                       NULL), 0);
  ck_assert_uint_eq(cfg.nlistens, 3);
  ck_assert_str_eq(cfg.listens[1].path, "b");
  ck_assert_int_eq(cfg.listens[2].kind, NBD_LISTEN_TCP);
  ck_assert_ptr_null(cfg.listens[2].host);
  ck_assert_str_eq(cfg.listens[2].port, "2000");
  config_free(&cfg);
  ck_assert_int_eq(run(&cfg, "-i", "::1", "tback", NULL), 0);
  ck_assert_str_eq(cfg.listens[0].host, "::1");
  ck_assert_str_eq(cfg.listens[0].port, "10809");
  config_free(&cfg);
  ck_assert_int_eq(run(&cfg, "--ipaddr=127.0.0.1", "--port=99", "tback",
                       NULL), 0);
  ck_assert_uint_eq(cfg.nlistens, 1);
  ck_assert_str_eq(cfg.listens[0].host, "127.0.0.1");
  ck_assert_str_eq(cfg.listens[0].port, "99");
  config_free(&cfg);
}
END_TEST

START_TEST(test_cmd_options)
{
  struct nbd_config cfg;

  nbd_verbose = 0;
  ck_assert_int_eq(run(&cfg, "-r", "-t", "4", "-P", "/run/p.pid", "-e", "vm1",
                       "-v", "-f", "tback", "size=1M", NULL), 0);
  ck_assert_int_eq(cfg.readonly, 1);
  ck_assert_uint_eq(cfg.threads, 4);
  ck_assert_str_eq(cfg.pidfile, "/run/p.pid");
  ck_assert_str_eq(cfg.exports->name, "vm1");
  ck_assert_int_eq(cfg.verbose, 1);
  ck_assert_int_eq(nbd_verbose, 1);
  config_free(&cfg);
  /* Options after the backend, as with nbdkit. */
  ck_assert_int_eq(run(&cfg, "tsize", "1M", "--readonly", "--threads=2",
                       "--export-name", "x", NULL), 0);
  ck_assert_int_eq(cfg.readonly, 1);
  ck_assert_uint_eq(cfg.threads, 2);
  ck_assert_str_eq(cfg.exports->name, "x");
  config_free(&cfg);
  /* Inline tuning: --poll and --coalesce, with their bounds. */
  ck_assert_int_eq(run(&cfg, "--poll", "0", "--coalesce", "250us", "tsize",
                       "1M", NULL), 0);
  ck_assert_uint_eq(cfg.poll, 0);
  ck_assert_uint_eq(cfg.coalesce, 250000);
  config_free(&cfg);
  ck_assert_int_eq(run(&cfg, "--coalesce=0", "tsize", "1M", NULL), 0);
  ck_assert_uint_eq(cfg.coalesce, 0);
  config_free(&cfg);
  ck_assert_int_eq(run(&cfg, "--coalesce", "5ms", "tsize", "1M", NULL), -1);
  ck_assert_has(cerrbuf, "--coalesce: '5ms' is too long (at most 1000us)");
  ck_assert_int_eq(run(&cfg, "--coalesce", "soon", "tsize", "1M", NULL), -1);
  ck_assert_has(cerrbuf, "--coalesce");
  nbd_verbose = 0;
}
END_TEST

START_TEST(test_cmd_exit_zero)
{
  struct nbd_config cfg;

  ck_assert_int_eq(run(&cfg, "--help", NULL), 1);
  ck_assert_has(outbuf, "usage: nbdstack [OPTIONS]");
  ck_assert_int_eq(run(&cfg, "-h", "--bogus", NULL), 1);
  ck_assert_int_eq(run(&cfg, "-V", NULL), 1);
  /* The second line says whether TLS is compiled in. */
  ck_assert_has(outbuf, "nbdstack 0.1.0\nTLS: ");
  ck_assert_int_eq(run(&cfg, "--version", NULL), 1);
  ck_assert_int_eq(run(&cfg, "--list", NULL), 1);
  ck_assert_has(outbuf, "tfilt");
  ck_assert_has(outbuf, "tsize");
  ck_assert_str_eq(cerrbuf, "");
  ck_assert_ptr_null(cfg.exports);
}
END_TEST

static char *
write_config(const char *text)
{
  static char path[64];
  int fd;

  strcpy(path, "/tmp/check_config.XXXXXX");
  fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

START_TEST(test_cmd_check_config)
{
  struct nbd_config cfg;
  char *path, want[128];

  path = write_config("[export x]\nfilter = tfilt\nbackend = memory 1M\n");
  ck_assert_int_eq(run(&cfg, "--check-config", path, NULL), 1);
  snprintf(want, sizeof want, "%s: OK\n", path);
  ck_assert_str_eq(outbuf, want);
  ck_assert_int_eq(setups, 1);
  ck_assert_int_eq(cleanups, 1);
  unlink(path);
  path = write_config("[export x]\nbackend = tback /nope\n");
  ck_assert_int_eq(run(&cfg, "--check-config", path, NULL), -1);
  snprintf(want, sizeof want, "%s:2: backend tback: cannot open /nope", path);
  ck_assert_has(cerrbuf, want);
  ck_assert_has(cerrbuf, ": 1 error\n");
  ck_assert_str_eq(outbuf, "");
  unlink(path);
}
END_TEST

/* --check-config opens every stack as a client would (tback cannot be
 * opened: it has no size) and checks user, group, the pidfile's directory
 * and the listen addresses, each at its line; a plain parse does not. */
START_TEST(test_cmd_check_config_deep)
{
  static const char text[] =
    "[server]\n"
    "user = nbdstack-no-such-user\n"
    "group = nbdstack-no-such-group\n"
    "pidfile = /nonexistent-dir/x.pid\n"
    "listen = unix:/nonexistent-dir/s.sock\n"
    "listen = tcp:127.0.0.1:10809\n"
    "[export x]\n"
    "backend = tback\n"
    "[export y]\n"
    "backend = memory 1M\n";
  struct nbd_config cfg;
  char *path, want[256];

  ck_assert_int_eq(parse(text, &cfg), 0);
  config_free(&cfg);
  path = write_config(text);
  ck_assert_int_eq(run(&cfg, "--check-config", path, NULL), -1);
  snprintf(want, sizeof want, "%s:2: user: no user 'nbdstack-no-such-user'",
           path);
  ck_assert_has(cerrbuf, want);
  snprintf(want, sizeof want, "%s:3: group: no group "
           "'nbdstack-no-such-group'", path);
  ck_assert_has(cerrbuf, want);
  snprintf(want, sizeof want, "%s:4: pidfile: cannot create "
           "'/nonexistent-dir/x.pid': directory '/nonexistent-dir': No such "
           "file or directory", path);
  ck_assert_has(cerrbuf, want);
  snprintf(want, sizeof want, "%s:5: listen: cannot create "
           "'/nonexistent-dir/s.sock'", path);
  ck_assert_has(cerrbuf, want);
  snprintf(want, sizeof want, "%s:7: export \"x\": cannot open it as a "
           "client would: ", path);
  ck_assert_has(cerrbuf, want);
  ck_assert_has(cerrbuf, ": 5 errors\n");
  ck_assert_str_eq(outbuf, "");
  ck_assert_int_eq(nbd_checking(), 0);
  unlink(path);
  /* Numeric ids are accepted. */
  path = write_config("[server]\nuser = 12345\ngroup = 12345\n"
                      "[export y]\nbackend = memory 1M\n");
  ck_assert_int_eq(run(&cfg, "--check-config", path, NULL), 1);
  unlink(path);
}
END_TEST

/* Did-you-mean: a close known name is suggested before the known list. */
START_TEST(test_did_you_mean)
{
  struct nbd_config cfg;

  ck_assert_int_eq(parse("[server]\nthraeds = 4\n[export x]\n"
                         "descripton = d\nfilter = tflit\n"
                         "backend = tback\n", &cfg), 3);
  ck_assert_has(errbuf, "t.ini:2: unknown key 'thraeds' in [server] (did "
                "you mean 'threads'?; known: listen, ");
  ck_assert_has(errbuf, "t.ini:4: unknown key 'descripton' in [export "
                "\"x\"] (did you mean 'description'?; known: ");
  ck_assert_has(errbuf, "t.ini:5: unknown filter 'tflit' (did you mean "
                "'tfilt'?; known: ");
  /* Nothing close: no suggestion. */
  ck_assert_int_eq(parse("[export x]\nfilter = zzzzzz\nbackend = tback\n",
                         &cfg), 1);
  ck_assert_has(errbuf, "t.ini:2: unknown filter 'zzzzzz' (known: ");
  ck_assert_int_eq(run(&cfg, "--filter", "tfilt", "tback", "rnage=1", NULL),
                   -1);
  ck_assert_has(cerrbuf, "unknown key 'rnage' (did you mean 'range'?; ");
  ck_assert_int_eq(run(&cfg, "tbakc", NULL), -1);
  ck_assert_has(cerrbuf, "unknown backend 'tbakc' (did you mean 'tback'?; "
                "known: ");
}
END_TEST

START_TEST(test_cmd_config_file)
{
  struct nbd_config cfg;
  char *path;

  path = write_config("[server]\nlisten = unix:/a\nthreads = 2\n"
                      "pidfile = /p1\n[export x]\nbackend = tback\n");
  ck_assert_int_eq(run(&cfg, "-c", path, NULL), 0);
  ck_assert_int_eq(cfg.any_export_name, 0);
  ck_assert_uint_eq(cfg.nlistens, 1);
  ck_assert_str_eq(cfg.listens[0].path, "/a");
  ck_assert_uint_eq(cfg.threads, 2);
  config_free(&cfg);
  /* Options override the file. */
  ck_assert_int_eq(run(&cfg, "--config", path, "-U", "/b", "-t", "3", "-r",
                       "-P", "/p2", NULL), 0);
  ck_assert_uint_eq(cfg.nlistens, 1);
  ck_assert_str_eq(cfg.listens[0].path, "/b");
  ck_assert_uint_eq(cfg.threads, 3);
  ck_assert_int_eq(cfg.readonly, 1);
  ck_assert_str_eq(cfg.pidfile, "/p2");
  config_free(&cfg);
  ck_assert_int_eq(run(&cfg, "-c", path, "tback", NULL), -1);
  ck_assert_str_eq(cerrbuf, "nbdstack: -c and a backend on the command line "
                   "('tback') are exclusive\n");
  ck_assert_int_eq(run(&cfg, "-c", path, "--filter", "tfilt", NULL), -1);
  ck_assert_has(cerrbuf, "--filter cannot be used with -c");
  ck_assert_int_eq(run(&cfg, "-c", "/nonexistent", NULL), -1);
  ck_assert_has(cerrbuf, "/nonexistent: cannot open");
  ck_assert_ptr_null(cfg.exports);
  unlink(path);
}
END_TEST

/* ---- suites -------------------------------------------------------------- */

static void
reset_counts(void)
{
  setups = cleanups = 0;
}

static void
add(Suite *s, const char *name, const TTest *t, void (*td)(void))
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, reset_counts, td);
  tcase_add_test(tc, t);
  suite_add_tcase(s, tc);
}

static Suite *
config_suite(void)
{
  Suite *s = suite_create("config");

  add(s, "parses a minimal export with defaults", test_minimal, teardown);
  add(s, "parses quoted and unquoted export names", test_export_names,
      teardown);
  add(s, "repeated listen keeps order", test_listen_order, teardown);
  add(s, "stacks filters client side first", test_stack_order, teardown);
  add(s, "accepts double-quoted values with spaces", test_quoted_values,
      teardown);
  add(s, "gives a bare value to the magic parameter", test_magic_param,
      teardown);
  add(s, "sets [server] keys", test_server_keys, teardown);
  add(s, "sets limit and privilege keys", test_server_limit_keys, teardown);
  add(s, "sets export description and readonly", test_export_keys,
      teardown);
  add(s, "skips comments", test_comments, teardown);
  add(s, "accepts CRLF, a BOM and no final newline", test_crlf, teardown);
  add(s, "rejects unknown key with list of known keys",
      test_unknown_layer_key, teardown);
  add(s, "rejects unknown filter with registered names", test_unknown_filter,
      teardown);
  add(s, "reports an export without backend", test_no_backend, teardown);
  add(s, "reports duplicate export with its first line",
      test_duplicate_export, teardown);
  add(s, "reports unknown keys and bad values", test_server_errors,
      teardown);
  add(s, "reports keys given twice", test_repeated_keys, teardown);
  add(s, "reports line outside any section", test_outside_section,
      teardown);
  add(s, "reports unterminated quote", test_unterminated_quote, teardown);
  add(s, "reports second backend and late filter", test_second_backend,
      teardown);
  add(s, "reports bad section headers", test_bad_headers, teardown);
  add(s, "reports setup errors at the layer's line", test_setup_errors,
      teardown);
  add(s, "reports missing required key", test_required_key, teardown);
  add(s, "reports every error with file:line", test_every_error, teardown);
  add(s, "limits export names to 4096 bytes", test_name_limit, teardown);
  add(s, "rejects a file without export", test_no_export, teardown);
  add(s, "rejects more than 64 layers", test_too_many_layers, teardown);
  add(s, "survives random garbage", test_garbage, teardown);
  add(s, "survives megabyte lines", test_long_lines, teardown);
  add(s, "reports NUL bytes with their line", test_nul_bytes, teardown);
  add(s, "loads files and reports read errors", test_load_file, teardown);
  add(s, "parses config.example", test_example, teardown);
  return s;
}

static Suite *
cmdline_suite(void)
{
  Suite *s = suite_create("cmdline");

  add(s, "builds one export from backend and magic value", test_cmd_backend,
      cmd_teardown);
  add(s, "gives each key to the first layer that knows it",
      test_cmd_key_routing, cmd_teardown);
  add(s, "reports unknown layers, keys and options", test_cmd_errors,
      cmd_teardown);
  add(s, "one table: config keys and options refuse alike",
      test_settings_one_table, cmd_teardown);
  add(s, "builds listen addresses from -U -p -i", test_cmd_listen,
      cmd_teardown);
  add(s, "sets options before and after the backend", test_cmd_options,
      cmd_teardown);
  add(s, "help, version and list exit 0", test_cmd_exit_zero, cmd_teardown);
  add(s, "check-config opens stacks, checks user/group/pidfile/listen",
      test_cmd_check_config_deep, cmd_teardown);
  add(s, "did-you-mean for unknown layers and keys", test_did_you_mean,
      cmd_teardown);
  add(s, "check-config sets up every export", test_cmd_check_config,
      cmd_teardown);
  add(s, "-c reads the file and options override it", test_cmd_config_file,
      cmd_teardown);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(config_suite());
  int failed;

  srunner_add_suite(sr, cmdline_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
