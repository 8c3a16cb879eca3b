/* nbdstack config file: the INI dialect described in docs/config.md.
 *
 * Reads [server] and [export NAME] sections line by line, builds each
 * export's stack (registry_find, engine_layer_new, params_set, then every
 * layer's setup, backend first) and reports every error as
 * "file:line: message", going on to the end so that one run shows them all.
 * The keys of [server] come from the settings table (settings.c), an
 * export's from a table of name, setter and field offset here; lines,
 * values and headers are read by config_lex.c, stacks built by stack.c.
 *
 * It does not know any layer's keys (each layer's parameter table, checked
 * by params.c, does) nor how a listen address is written (listen.c), and it
 * does not open sockets or resolve host names.
 */
#include <errno.h>
#include <grp.h>
#include <netdb.h>
#include <pwd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config_lex.h"
#include "settings.h"
#include "registry.h"
#include "params.h"
#define CONFIG_MAX_FILE   (16 << 20)  /* a config file, not a disk image */

/* A key of [server] or of an export: nginx-style name, setter, offset. */
struct config_key {
  const char *name;
  int (*set)(struct config_parser *p, const struct config_key *k,
             void *base, char *value);
  size_t offset;                /* field in struct nbd_config / nbd_export */
  unsigned min, max;            /* config_set_uint; max: duration in us */
  int flags;
};
#define CONFIG_REPEAT 1         /* may appear again; order kept */
#define CONFIG_WORDS  2         /* the setter splits the raw value itself */
/* Not in the export's signature: a reload that changes only such keys
 * keeps the layer instances (config_reuse).  Only for a key read from
 * the set's own export (handshake.c's e), never from its origin. */
#define CONFIG_UNSIGNED 4

static int config_set_string(struct config_parser *, const struct config_key *,
                             void *, char *);
static int config_set_bool(struct config_parser *, const struct config_key *,
                           void *, char *);
static int config_set_uint(struct config_parser *, const struct config_key *,
                           void *, char *);
static int config_set_tls(struct config_parser *, const struct config_key *,
                          void *, char *);
static int config_set_filter(struct config_parser *, const struct config_key *,
                             void *, char *);
static int config_set_backend(struct config_parser *,
                              const struct config_key *, void *, char *);

static const struct config_key config_export_keys[] = {
  { "description", config_set_string,
    offsetof(struct nbd_export, description), 0, 0, CONFIG_UNSIGNED },
  /* Signed: engine_open and handshake.c read these two, with the
   * connection count and the serializing lock, from the origin shared
   * with the older set's connections (docs/config.md, "Reload"). */
  { "readonly", config_set_bool, offsetof(struct nbd_export, readonly),
    0, 0, 0 },
  { "max-connections", config_set_uint,
    offsetof(struct nbd_export, max_connections), 1, 1000000, 0 },
  /* Unsigned: the handshake reads it from the set's own export, before
   * any stack opens, so a reload that changes only `tls` keeps the
   * layers (a memory disk its data) and applies to new clients. */
  { "tls", config_set_tls, offsetof(struct nbd_export, tls), 0, 0,
    CONFIG_UNSIGNED },
  { "filter", config_set_filter, 0, 0, 0, CONFIG_REPEAT | CONFIG_WORDS },
  /* REPEAT: config_set_backend reports a second backend itself. */
  { "backend", config_set_backend, 0, 0, 0, CONFIG_REPEAT | CONFIG_WORDS },
  { NULL, NULL, 0, 0, 0, 0 }
};

/* An error of the stack being built, at its line. */
static void
config_stack_error(void *arg, int line, const char *msg)
{
  config_error(arg, line, "%s", msg);
}

/* "export \"vm1\"" for messages, long names cut short. */
static const char *
config_export_label(const struct nbd_export *exp, char *buf, size_t len)
{
  if (strlen(exp->name) > 64)
    snprintf(buf, len, "export \"%.64s...\"", exp->name);
  else
    snprintf(buf, len, "export \"%s\"", exp->name);
  return buf;
}

/* ---- key setters --------------------------------------------------------- */

static int
config_set_string(struct config_parser *p, const struct config_key *k,
                  void *base, char *value)
{
  char **field = (char **)((char *)base + k->offset);
  char *s = strdup(value);

  if (s == NULL) {
    config_error(p, p->line, "out of memory");
    return -1;
  }
  free(*field);
  *field = s;
  return 0;
}

static int
config_set_bool(struct config_parser *p, const struct config_key *k,
                void *base, char *value)
{
  if (params_parse_bool(value, (int *)((char *)base + k->offset)) == -1) {
    config_error(p, p->line, "%s: invalid value '%s' (expected yes or no)",
                 k->name, value);
    return -1;
  }
  return 0;
}

static int
config_set_uint(struct config_parser *p, const struct config_key *k,
                void *base, char *value)
{
  uint64_t v;

  if (params_parse_uint(value, &v) == -1 || v < k->min || v > k->max) {
    config_error(p, p->line, "%s: invalid value '%s' (expected an integer "
                 "from %u to %u)", k->name, value, k->min, k->max);
    return -1;
  }
  *(unsigned *)((char *)base + k->offset) = (unsigned)v;
  return 0;
}

/* An export's `tls = off|on|require` (yes/no as the server's key). */
static int
config_set_tls(struct config_parser *p, const struct config_key *k,
               void *base, char *value)
{
  int *field = (int *)((char *)base + k->offset);

  if (strcmp(value, "off") == 0 || strcmp(value, "no") == 0)
    *field = NBD_TLS_OFF;
  else if (strcmp(value, "on") == 0 || strcmp(value, "yes") == 0)
    *field = NBD_TLS_ON;
  else if (strcmp(value, "require") == 0)
    *field = NBD_TLS_REQUIRE;
  else {
    config_error(p, p->line, "%s: invalid value '%s' (expected off, on or "
                 "require)", k->name, value);
    return -1;
  }
  return 0;
}

int
config_export_tls(const struct nbd_config *cfg, const struct nbd_export *e)
{
  return e->tls >= 0 ? e->tls : cfg->tls;
}

int
config_tls_offered(const struct nbd_config *cfg)
{
  const struct nbd_export *e;

  if (cfg->tls != NBD_TLS_OFF)
    return 1;
  for (e = cfg->exports; e; e = e->next)
    if (config_export_tls(cfg, e) != NBD_TLS_OFF)
      return 1;
  return 0;
}

int
config_tls_forced(const struct nbd_config *cfg)
{
  const struct nbd_export *e;

  if (cfg->exports == NULL)
    return cfg->tls == NBD_TLS_REQUIRE;
  for (e = cfg->exports; e; e = e->next)
    if (config_export_tls(cfg, e) != NBD_TLS_REQUIRE)
      return 0;
  return 1;
}

/* ---- filter and backend lines -------------------------------------------- */

static int
config_add_layer(struct config_parser *p, enum nbd_layer_kind kind,
                 char *value)
{
  struct nbd_layer *layer = NULL;
  struct config_word *w = NULL;
  char known[512];
  int n, i, ok = 1;

  n = config_words(p, value, &w);
  if (n == -1)
    return -1;
  if (n == 0 || (w[0].eq && stack_is_key(w[0].text,
                                         (size_t)(w[0].eq - w[0].text)))) {
    stack_layer_names(kind, known, sizeof known);
    config_error(p, p->line, "%s: missing name, as in '%s = NAME key=value "
                 "...' (known: %s)", kind == NBD_LAYER_FILTER ? "filter"
                 : "backend", kind == NBD_LAYER_FILTER ? "filter" : "backend",
                 known);
  } else if ((layer = stack_add(&p->cur.stack, kind, w[0].text,
                                p->line)) != NULL) {
    for (i = 1; i < n; i++) {
      const char *key = NULL, *v = w[i].text;
      if (w[i].eq && stack_is_key(w[i].text,
                                  (size_t)(w[i].eq - w[i].text))) {
        *w[i].eq = '\0';
        key = w[i].text;
        v = w[i].eq + 1;
      }
      if (stack_param(&p->cur.stack, layer, key, v, p->line) == -1)
        ok = 0;
    }
    if (!ok)
      stack_bad_params(&p->cur.stack);
  }
  free(w);
  return layer ? 0 : -1;
}

static int
config_set_filter(struct config_parser *p, const struct config_key *k,
                  void *base, char *value)
{
  return config_add_layer(p, NBD_LAYER_FILTER, value);
}

static int
config_set_backend(struct config_parser *p, const struct config_key *k,
                   void *base, char *value)
{
  p->cur.backend_tried = 1;     /* its own error is enough */
  return config_add_layer(p, NBD_LAYER_BACKEND, value);
}

/* ---- sections ------------------------------------------------------------ */

/* --check-config: opens the stack as a connection would (read-only, no
 * connection), so that what layers check only then (sizes, partition
 * tables, overlays) is found now, and closes it again. */
static void
config_check_export(struct config_parser *p, struct config_export_build *b)
{
  char err[CONFIG_ERRLEN];
  struct nbd_ctx *top;

  top = engine_open(b->exp, 1, NULL, err, sizeof err);
  if (top == NULL) {
    config_error(p, b->line, "%s: cannot open it as a client would: %s",
                 b->label, err);
    return;
  }
  if (engine_close(top) < 0)
    config_error(p, b->line, "%s: closing it failed", b->label);
}

/* Reload (reload.c): the running config, whose exports a new one keeps
 * when their lines did not change; NULL at startup. */
static const struct nbd_config *config_prev;

void
config_reuse_from(const struct nbd_config *prev)
{
  config_prev = prev;
}

/* An export whose signed lines (every key but description, in order)
 * are those of a running one keeps its layer instances (a memory backend
 * its data, a cow overlay its lock): the layers just parsed are dropped
 * before any setup, and its own description serves.  1 = reused. */
static int
config_reuse(struct config_export_build *b)
{
  struct nbd_export *e;

  if (config_prev == NULL || !b->linked || !b->backend_tried ||
      b->stack.nerrs || b->exp->sig == NULL)
    return 0;
  for (e = config_prev->exports; e; e = e->next)
    if (strcmp(e->name, b->exp->name) == 0)
      break;
  if (e == NULL || e->sig == NULL || strcmp(e->sig, b->exp->sig) != 0)
    return 0;
  free(b->stack.v);             /* the builder's list; no setup ran */
  engine_export_adopt(b->exp, e);
  return 1;
}

/* Runs every layer's setup (backend first: a filter's setup may look at
 * the layer below) and links or drops the export. */
static void
config_end_export(struct config_parser *p)
{
  struct config_export_build *b = &p->cur;
  int r;

  if (b->exp == NULL)
    return;
  if (!b->backend_tried)
    config_error(p, b->line, "%s: no backend (add 'backend = NAME "
                 "key=value ...')", b->label);
  if (config_reuse(b)) {
    memset(b, 0, sizeof *b);
    return;
  }
  r = stack_finish(&b->stack, b->line);
  if (r == 0 && b->backend_tried && b->exp->top && nbd_checking())
    config_check_export(p, b);
  if (!b->linked)
    engine_export_free(b->exp);
  memset(b, 0, sizeof *b);
}

static void
config_end_section(struct config_parser *p)
{
  if (p->sec == CONFIG_EXPORT)
    config_end_export(p);
  p->sec = CONFIG_NONE;
}

static int
config_remember_export(struct config_parser *p, const char *name, int line)
{
  if (p->nseen == p->capseen) {
    size_t cap = p->capseen ? 2 * p->capseen : 16;
    struct config_seen_export *v = realloc(p->seen, cap * sizeof *v);
    if (v == NULL)
      return -1;
    p->seen = v;
    p->capseen = cap;
  }
  p->seen[p->nseen].name = name;
  p->seen[p->nseen].line = line;
  p->nseen++;
  return 0;
}

/* A bad export (duplicate, name too long) is still read, to report the
 * errors inside it, but never linked. */
static void
config_begin_export(struct config_parser *p, const char *name)
{
  struct config_export_build *b = &p->cur;
  int keep = 1;
  size_t i, len = strlen(name);

  p->export_headers++;
  if (len > CONFIG_MAX_NAME) {
    config_error(p, p->line, "export name is %zu bytes, longer than the "
                 "NBD limit of %d", len, CONFIG_MAX_NAME);
    keep = 0;
  }
  for (i = 0; keep && i < p->nseen; i++)
    if (strcmp(p->seen[i].name, name) == 0) {
      config_error(p, p->line, "duplicate export \"%.64s\" (first at line "
                   "%d)", name, p->seen[i].line);
      keep = 0;
    }
  b->exp = engine_export_new(name);
  if (b->exp == NULL ||
      (keep && config_remember_export(p, b->exp->name, p->line) == -1)) {
    config_error(p, p->line, "out of memory");
    engine_export_free(b->exp);
    b->exp = NULL;
    p->sec = CONFIG_SKIP;
    return;
  }
  b->line = p->line;
  config_export_label(b->exp, b->label, sizeof b->label);
  stack_begin(&b->stack, b->exp, b->label, config_stack_error, p);
  if (keep) {
    *p->tail = b->exp;
    p->tail = &b->exp->next;
    b->linked = 1;
  }
  p->sec = CONFIG_EXPORT;
}

static int
config_word_is(const char *word, size_t wlen, const char *name)
{
  return wlen == strlen(name) && memcmp(word, name, wlen) == 0;
}

static void
config_header(struct config_parser *p, char *s)
{
  const char *word;
  size_t wlen;
  char *arg;

  p->sec = CONFIG_SKIP;
  if (config_header_split(p, s, &word, &wlen, &arg) == -1) {
    if (config_word_is(word, wlen, "export"))
      p->export_headers++;      /* no "no export defined" on top */
    return;
  }
  if (config_word_is(word, wlen, "server")) {
    if (arg)
      config_error(p, p->line, "[server] takes no name");
    p->sec = CONFIG_SERVER;
  } else if (config_word_is(word, wlen, "export")) {
    if (arg == NULL) {
      p->export_headers++;
      config_error(p, p->line, "[export] needs a name: [export NAME], or "
                   "[export \"\"] for the default export");
    } else
      config_begin_export(p, arg);
  } else
    config_error(p, p->line, "unknown section [%.*s] (known: [server], "
                 "[export NAME])", (int)(wlen > 64 ? 64 : wlen), word);
}

/* ---- key lines ----------------------------------------------------------- */

static void
config_unknown_key(struct config_parser *p, const char *key,
                   const struct config_key *keys, const char *where)
{
  char known[256], hint[128];
  size_t used = 0;
  const struct config_key *k;

  known[0] = '\0';
  for (k = keys; k->name && used < sizeof known; k++)
    used += (size_t)snprintf(known + used, sizeof known - used, "%s%s",
                             k == keys ? "" : ", ", k->name);
  config_error(p, p->line, "unknown key '%.64s' in %s (%sknown: %s)", key,
               where, params_suggest(key, known, hint, sizeof hint), known);
}

/* The line of each listen address added since the last call, for the
 * checks of --check-config. */
static void
config_note_listen_lines(struct config_parser *p)
{
  size_t n = p->cfg->nlistens;
  int *v;

  if (n <= p->nlisten_lines)
    return;
  v = realloc(p->listen_lines, n * sizeof *v);
  if (v == NULL)
    return;                     /* lines are for messages only */
  p->listen_lines = v;
  while (p->nlisten_lines < n)
    v[p->nlisten_lines++] = p->line;
}

/* A [server] key: one of the server settings (settings.c). */
static void
config_server_key(struct config_parser *p, const char *key, char *value)
{
  const struct nbd_setting *st = settings_find(key);
  char err[CONFIG_ERRLEN], known[512], hint[128];
  int i;

  if (st == NULL) {
    settings_key_names(known, sizeof known);
    config_error(p, p->line, "unknown key '%.64s' in [server] (%sknown: "
                 "%s)", key, params_suggest(key, known, hint, sizeof hint),
                 known);
    return;
  }
  i = (int)(st - nbd_settings);
  if (!(st->flags & SETTING_REPEAT) && p->server_seen[i]) {
    config_error(p, p->line, "'%s' given twice in [server] (first at line "
                 "%d)", key, p->server_seen[i]);
    return;
  }
  p->server_seen[i] = p->line;
  if (config_scalar(p, value) == -1)
    return;
  if (settings_set(st, p->cfg, value, err, sizeof err) == -1)
    config_error(p, p->line, "%s: %s", key, err);
  else
    config_note_listen_lines(p);
}

/* Looks the key up in the section's table and calls its setter. */
static void
config_dispatch(struct config_parser *p, const char *key, char *value)
{
  const struct config_key *keys, *k;
  int *seen;
  void *base;
  char where[160], label[128];

  if (p->sec == CONFIG_SERVER) {
    config_server_key(p, key, value);
    return;
  } else {
    keys = config_export_keys;
    seen = p->cur.seen;
    base = p->cur.exp;
    snprintf(where, sizeof where, "[%s]",
             config_export_label(p->cur.exp, label, sizeof label));
  }
  for (k = keys; k->name && strcmp(k->name, key) != 0; k++)
    ;
  if (k->name == NULL) {
    config_unknown_key(p, key, keys, where);
    return;
  }
  if (!(k->flags & CONFIG_REPEAT) && seen[k - keys]) {
    config_error(p, p->line, "'%s' given twice in %s (first at line %d)",
                 key, where, seen[k - keys]);
    return;
  }
  seen[k - keys] = p->line;
  /* The raw value, before config_scalar or a setter rewrites it. */
  if (!(k->flags & CONFIG_UNSIGNED) &&
      engine_export_sign(p->cur.exp, key, value) == -1) {
    config_error(p, p->line, "out of memory");
    return;
  }
  if (!(k->flags & CONFIG_WORDS) && config_scalar(p, value) == -1)
    return;
  k->set(p, k, base, value);
}

/* "key = value" */
static void
config_key_line(struct config_parser *p, char *s)
{
  char *key = s, *q = s, *value;
  size_t len;

  if (p->sec == CONFIG_NONE) {
    config_error(p, p->line, "line outside any section (start with "
                 "[server] or [export NAME])");
    return;
  }
  if (p->sec == CONFIG_SKIP)
    return;
  while (config_iskeychar((unsigned char)*q))
    q++;
  len = (size_t)(q - key);
  q = config_skip_space(q);
  if (*q != '=' || !stack_is_key(key, len)) {
    if (strchr(s, '=') == NULL)
      config_error(p, p->line, "expected 'key = value' or a [section] "
                   "header, got '%.40s'", s);
    else
      config_error(p, p->line, "invalid key '%.*s' (a key is letters, "
                   "digits, '_', '-' and '.')",
                   (int)strcspn(s, "=") > 64 ? 64 : (int)strcspn(s, "="), s);
    return;
  }
  value = config_skip_space(q + 1);
  key[len] = '\0';              /* after reading q: it may be the '=' */
  config_dispatch(p, key, value);
}

static void
config_line(struct config_parser *p, char *line)
{
  char *s = config_skip_space(line);

  if (*s == '\0' || *s == '#' || *s == ';')
    return;
  if (*s == '[') {
    config_end_section(p);
    config_header(p, s);
    return;
  }
  config_key_line(p, s);
}

/* ---- whole files --------------------------------------------------------- */

void
config_free(struct nbd_config *cfg)
{
  struct nbd_export *e, *next;
  size_t i;

  for (i = 0; i < cfg->nlistens; i++)
    listen_clear(&cfg->listens[i]);
  free(cfg->listens);
  for (e = cfg->exports; e; e = next) {
    next = e->next;
    engine_export_free(e);
  }
  free(cfg->pidfile);
  free(cfg->user);
  free(cfg->group);
  free(cfg->run);
  if (cfg->tmpdir)
    rmdir(cfg->tmpdir);         /* its socket is gone by now */
  free(cfg->tmpdir);
  free(cfg->log);
  free(cfg->tls_certificates);
  free(cfg->tls_psk);
  free(cfg->metrics);
  config_defaults(cfg);
}

/* 1 GiB, or an eighth of the RAM on a smaller machine (at least the
 * minimum). */
static uint64_t
config_default_buffer_memory(void)
{
  long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
  uint64_t v = CONFIG_MAX_BUFFER_MEMORY_DEFAULT;

  if (pages > 0 && psize > 0 && (uint64_t)pages * (uint64_t)psize / 8 < v)
    v = (uint64_t)pages * (uint64_t)psize / 8;
  return v < CONFIG_MIN_BUFFER_MEMORY ? CONFIG_MIN_BUFFER_MEMORY : v;
}

void
config_defaults(struct nbd_config *cfg)
{
  memset(cfg, 0, sizeof *cfg);
  cfg->threads = CONFIG_DEFAULT_THREADS;
  cfg->max_connections = CONFIG_DEFAULT_MAX_CONNECTIONS;
  cfg->handshake_timeout = CONFIG_DEFAULT_HANDSHAKE_TIMEOUT;
  cfg->inline_requests = 1;
  cfg->poll = CONFIG_DEFAULT_POLL;
  cfg->coalesce = CONFIG_DEFAULT_COALESCE;
  cfg->max_buffer_memory = config_default_buffer_memory();
}

unsigned
config_max_handshakes(const struct nbd_config *cfg)
{
  if (cfg->max_handshakes)
    return cfg->max_handshakes;
  return cfg->max_connections < 1000000 / 4 ? 4 * cfg->max_connections
                                            : 1000000;
}

unsigned
config_max_handshakes_per_source(const struct nbd_config *cfg)
{
  unsigned all = config_max_handshakes(cfg);

  if (cfg->max_handshakes_per_source == 0 ||
      cfg->max_handshakes_per_source > all)
    return all;
  return cfg->max_handshakes_per_source;
}

/* ---- --check-config: what the server needs once it runs -------------- */

/* The line of a [server] key, or 1 when it was not given in the file. */
static int
config_key_line_of(const struct config_parser *p, const char *key)
{
  const struct nbd_setting *st = settings_find(key);
  int line = st ? p->server_seen[st - nbd_settings] : 0;

  return line > 0 ? line : 1;
}

static int
config_is_number(const char *s)
{
  if (*s == '\0')
    return 0;
  for (; *s; s++)
    if (*s < '0' || *s > '9')
      return 0;
  return 1;
}

/* The directory part of path (malloc'd), "." for a bare name. */
static char *
config_dirname(const char *path)
{
  char *dir = strdup(path), *slash;

  if (dir == NULL)
    return NULL;
  slash = strrchr(dir, '/');
  if (slash == NULL)
    strcpy(dir, ".");
  else if (slash == dir)
    slash[1] = '\0';
  else
    *slash = '\0';
  return dir;
}

/* 0 when dir is a directory the server may create files in, else -1 with
 * errno set. */
static int
config_dir_writable(const char *dir)
{
  struct stat sb;

  if (stat(dir, &sb) == -1)
    return -1;
  if (!S_ISDIR(sb.st_mode)) {
    errno = ENOTDIR;
    return -1;
  }
  return access(dir, W_OK | X_OK);
}

static void
config_check_path_dir(struct config_parser *p, int line, const char *what,
                      const char *path)
{
  char *dir = config_dirname(path);

  if (dir == NULL)
    config_error(p, line, "out of memory");
  else if (config_dir_writable(dir) == -1)
    config_error(p, line, "%s: cannot create '%s': directory '%s': %s",
                 what, path, dir, strerror(errno));
  free(dir);
}

/* Addresses are parsed and resolved, never bound: a server already
 * listening on them must not make the check fail. */
static void
config_check_listen(struct config_parser *p, const struct nbd_listen *l,
                    int line, const char *what)
{
  struct addrinfo hints, *res = NULL;
  const char *host;
  int r;

  if (l->kind == NBD_LISTEN_UNIX) {
    config_check_path_dir(p, line, what, l->path);
    return;
  }
  host = l->host && *l->host ? l->host : NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  r = getaddrinfo(host, l->port, &hints, &res);
  /* As the server does: "nbd" is 10809 where /etc/services lacks it. */
  if (r == EAI_SERVICE && strcmp(l->port, "nbd") == 0)
    r = getaddrinfo(host, "10809", &hints, &res);
  if (r != 0)
    config_error(p, line, "%s: cannot resolve '%s' port '%s': %s", what,
                 host ? host : "*", l->port, gai_strerror(r));
  else
    freeaddrinfo(res);
}

/* user, group, the pidfile's directory and the listen addresses, each
 * reported at the line of its key. */
static void
config_check_server(struct config_parser *p)
{
  const struct nbd_config *cfg = p->cfg;
  size_t i;

  if (cfg->user && !config_is_number(cfg->user) &&
      getpwnam(cfg->user) == NULL)
    config_error(p, config_key_line_of(p, "user"), "user: no user '%s' on "
                 "this system", cfg->user);
  if (cfg->group && !config_is_number(cfg->group) &&
      getgrnam(cfg->group) == NULL)
    config_error(p, config_key_line_of(p, "group"), "group: no group '%s' "
                 "on this system", cfg->group);
  if (cfg->pidfile)
    config_check_path_dir(p, config_key_line_of(p, "pidfile"), "pidfile",
                          cfg->pidfile);
  for (i = 0; i < cfg->nlistens && i < p->nlisten_lines; i++)
    config_check_listen(p, &cfg->listens[i], p->listen_lines[i], "listen");
  if (cfg->metrics) {
    struct nbd_listen l;
    char err[CONFIG_ERRLEN];
    if (listen_parse(cfg->metrics, &l, err, sizeof err) == 0) {
      config_check_listen(p, &l, config_key_line_of(p, "metrics"),
                          "metrics");
      listen_clear(&l);
    }
  }
}

static void
config_finish(struct config_parser *p)
{
  char err[CONFIG_ERRLEN];

  config_end_section(p);
  if (nbd_checking())
    config_check_server(p);
  if (p->export_headers == 0)
    config_error(p, p->line > 0 ? p->line : 1, "no export defined (add an "
                 "[export NAME] section; [export \"\"] is the default "
                 "export)");
  if (p->nerrs == 0 && p->cfg->nlistens == 0 &&
      settings_set(settings_find("listen"), p->cfg,
                   "tcp:" LISTEN_DEFAULT_PORT, err, sizeof err) == -1)
    config_error(p, p->line, "%s", err);
  free(p->seen);
  free(p->listen_lines);
  if (p->nerrs)
    config_free(p->cfg);
}

/* text[0..len) may hold NUL bytes (a file): a line with one is an error. */
static int
config_parse_buf(const char *text, size_t len, const char *name,
                 struct nbd_config *cfg, FILE *errs)
{
  struct config_parser p;
  char *line = NULL;
  size_t pos = 0, cap = 0, n;

  memset(&p, 0, sizeof p);
  p.name = name;
  p.errs = errs;
  p.cfg = cfg;
  p.tail = &cfg->exports;
  config_defaults(cfg);
  if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
    pos = 3;                    /* UTF-8 byte order mark */
  while (pos < len) {
    const char *nl = memchr(text + pos, '\n', len - pos);
    n = nl ? (size_t)(nl - (text + pos)) : len - pos;
    p.line++;
    if (n + 1 > cap) {
      char *bigger = realloc(line, n + 1);
      if (bigger == NULL) {
        config_error(&p, p.line, "out of memory");
        break;
      }
      line = bigger;
      cap = n + 1;
    }
    memcpy(line, text + pos, n);
    line[n] = '\0';
    if (n > 0 && line[n - 1] == '\r')
      line[n - 1] = '\0';       /* CRLF */
    if (memchr(text + pos, '\0', n))
      config_error(&p, p.line, "NUL byte in line");
    else
      config_line(&p, line);
    pos += n + (nl != NULL);
  }
  free(line);
  config_finish(&p);
  return p.nerrs;
}

int
config_parse_string(const char *text, const char *name,
                    struct nbd_config *cfg, FILE *errs)
{
  return config_parse_buf(text, strlen(text), name, cfg, errs);
}

static char *
config_read_all(FILE *fp, size_t *len)
{
  size_t cap = 4096, n = 0, got;
  char *buf = malloc(cap), *bigger;

  while (buf) {
    got = fread(buf + n, 1, cap - n, fp);
    n += got;
    if (got == 0 || n > CONFIG_MAX_FILE)
      break;
    if (n == cap) {
      bigger = realloc(buf, cap * 2);
      if (bigger == NULL)
        free(buf);
      buf = bigger;
      cap *= 2;
    }
  }
  *len = n;
  return buf;
}

int
config_load_file(const char *path, struct nbd_config *cfg, FILE *errs)
{
  FILE *fp = fopen(path, "r");
  size_t len = 0;
  char *buf;
  int r;

  config_defaults(cfg);
  if (fp == NULL) {
    if (errs)
      fprintf(errs, "%s: cannot open: %s\n", path, strerror(errno));
    return 1;
  }
  errno = 0;
  buf = config_read_all(fp, &len);
  if (buf == NULL || ferror(fp) || len > CONFIG_MAX_FILE) {
    if (errs)
      fprintf(errs, "%s: cannot read: %s\n", path,
              len > CONFIG_MAX_FILE ? "larger than 16 MiB" :
              strerror(errno ? errno : ENOMEM));
    free(buf);
    fclose(fp);
    return 1;
  }
  fclose(fp);
  r = config_parse_buf(buf, len, path, cfg, errs);
  free(buf);
  return r;
}
