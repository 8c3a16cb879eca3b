/* nbdstack server settings: the table of every [server] key, with its
 * long option, bounds, default and help, and the one parser both front
 * ends use (config.c for the file, cmdline.c for the options).  Values
 * are checked here once; callers only add where the value came from.
 */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "settings.h"
#include "params.h"

#define OFF(f) offsetof(struct nbd_config, f)

const struct nbd_setting nbd_settings[] = {
  { "listen", NULL, 0, SETTING_LISTEN, 0, 0, 0, SETTING_REPEAT, "ADDR",
    "`tcp:10809` on all addresses, when no `listen` is given",
    "an address to listen on (below); repeatable, in order" },
  { "threads", "threads", 't', SETTING_UINT, OFF(threads), 1,
    CONFIG_MAX_THREADS, 0, "N", "16",
    "worker threads per connection, 1-1024" },
  { "readonly", "readonly", 'r', SETTING_BOOL, OFF(readonly), 0, 0,
    SETTING_FLAG, NULL, "no", "serve every export read-only" },
  { "pidfile", "pidfile", 'P', SETTING_PATH, OFF(pidfile), 0, 0, 0, "FILE",
    "none", "write the process id to FILE once listening; one that cannot "
    "be written stops the server (exit 1)" },
  { "max-connections", "max-connections", 0, SETTING_UINT,
    OFF(max_connections), 1, 1000000, 0, "N", "1024",
    "connections with a thread at once: handshaken clients and clients "
    "negotiating that have sent a byte (see Limits)" },
  { "max-handshakes", "max-handshakes", 0, SETTING_UINT,
    OFF(max_handshakes), 1, 1000000, 0, "N", "4 x max-connections",
    "greeted clients that have not sent a byte yet, held in the lobby "
    "without a thread; beyond it the oldest silent one makes room" },
  { "max-handshakes-per-source", "max-handshakes-per-source", 0,
    SETTING_UINT, OFF(max_handshakes_per_source), 1, 1000000, 0, "N",
    "no separate limit", "the same, from one source (TCP address, or the "
    "process of a Unix socket peer)" },
  { "max-buffer-memory", "max-buffer-memory", 0, SETTING_SIZE,
    OFF(max_buffer_memory), CONFIG_MIN_BUFFER_MEMORY, 0, 0, "SIZE",
    "1G, or 1/8 of RAM if less", "request and reply buffers of every "
    "connection together, at least 64M; a request that does not fit waits "
    "(see Limits)" },
  { "handshake-timeout", "handshake-timeout", 0, SETTING_DURATION,
    OFF(handshake_timeout), 0, 0, 0, "T", "10s",
    "drop a client that has not finished negotiating after T (0 = never)" },
  { "idle-timeout", "idle-timeout", 0, SETTING_DURATION, OFF(idle_timeout),
    0, 0, 0, "T", "0", "close a connection that sends no request for T, "
    "with none in flight (0 = never)" },
  { "user", "user", 'u', SETTING_STRING, OFF(user), 0, 0, 0, "USER", "none",
    "run as USER once the sockets are bound" },
  { "group", "group", 'g', SETTING_STRING, OFF(group), 0, 0, 0, "GROUP",
    "none", "run as GROUP once the sockets are bound" },
  { "inline", "no-inline", 0, SETTING_BOOL, OFF(inline_requests), 0, 0,
    SETTING_FLAG | SETTING_INVERT, NULL, "yes",
    "run the requests of stacks that never or rarely block on the "
    "reader thread (no: always on the worker pool)" },
  { "poll", "poll", 0, SETTING_DURATION, OFF(poll), 0, CONFIG_MAX_POLL_US,
    0, "T", "50us", "inline: poll T for the next request before sleeping "
    "(at most 1ms; 0 = never; see Tuning)" },
  { "coalesce", "coalesce", 0, SETTING_DURATION, OFF(coalesce), 0,
    CONFIG_MAX_COALESCE_US, 0, "T", "120us", "inline: with many requests "
    "in flight, sleep up to T to answer several at once (at most 1ms; 0 = "
    "never; see Tuning)" },
  { "log", "log", 0, SETTING_LOG, OFF(log), 0, 0, 0, "WHERE",
    "stderr", "where log lines go: `stderr` (the journal's priority "
    "prefixes when stderr is the journal), `syslog` (/dev/log), "
    "`syslog:/PATH` or `null` (nothing, as nbdkit's; see Logging)" },
  { "tls", "tls", 0, SETTING_TLS, OFF(tls), 0, 0, 0, "off|on|require",
    "off", "TLS (STARTTLS): `on` offers it, `require` refuses every option "
    "but STARTTLS and ABORT before it (see TLS)" },
  { "tls-certificates", "tls-certificates", 0, SETTING_PATH,
    OFF(tls_certificates), 0, 0, 0, "DIR", "none", "X.509: DIR holds "
    "`ca-cert.pem`, `server-cert.pem` and `server-key.pem`" },
  { "tls-psk", "tls-psk", 0, SETTING_PATH, OFF(tls_psk), 0, 0, 0, "FILE",
    "none", "pre-shared keys, psktool's `username:hexkey` lines" },
  { "tls-verify-peer", "tls-verify-peer", 0, SETTING_BOOL,
    OFF(tls_verify_peer), 0, 0, SETTING_FLAG, NULL, "no", "X.509: demand "
    "a client certificate signed by `ca-cert.pem`" },
  { "metrics", "metrics", 0, SETTING_ADDR, OFF(metrics), 0, 0, 0, "ADDR",
    "none", "serve Prometheus metrics at `GET /metrics` on ADDR, a "
    "listen address (`unix:PATH` or `tcp:HOST:PORT`; see docs/metrics.md)" },
  { NULL, NULL, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL }
};

const struct nbd_setting *
settings_find(const char *key)
{
  const struct nbd_setting *s;

  for (s = nbd_settings; s->key; s++)
    if (strcmp(s->key, key) == 0)
      return s;
  return NULL;
}

static int
settings_string(char **field, const char *text, char *err, size_t errlen)
{
  char *copy = strdup(text);

  if (copy == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  free(*field);
  *field = copy;
  return 0;
}

static int
settings_listen(struct nbd_config *cfg, const char *text, char *err,
                size_t errlen)
{
  struct nbd_listen l, *v;

  if (listen_parse(text, &l, err, errlen) == -1)
    return -1;
  v = realloc(cfg->listens, (cfg->nlistens + 1) * sizeof *v);
  if (v == NULL) {
    listen_clear(&l);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  cfg->listens = v;
  v[cfg->nlistens++] = l;
  return 0;
}

int
settings_set(const struct nbd_setting *s, struct nbd_config *cfg,
             const char *text, char *err, size_t errlen)
{
  void *field = (char *)cfg + s->offset;
  uint64_t v;

  switch (s->type) {
  case SETTING_UINT:
    if (params_parse_uint(text, &v) == -1 || v < s->min || v > s->max) {
      snprintf(err, errlen, "invalid value '%s' (expected an integer from "
               "%llu to %llu)", text, (unsigned long long)s->min,
               (unsigned long long)s->max);
      return -1;
    }
    *(unsigned *)field = (unsigned)v;
    return 0;
  case SETTING_BOOL:
    if (params_parse_bool(text, (int *)field) == -1) {
      snprintf(err, errlen, "invalid value '%s' (expected yes or no)", text);
      return -1;
    }
    return 0;
  case SETTING_DURATION:
    if (params_parse_duration(text, &v) == -1) {
      snprintf(err, errlen, "invalid value '%s' (expected a duration such as "
               "500ms, 10s or 2m; 0 = none)", text);
      return -1;
    }
    if (s->max && v > s->max * 1000) {
      snprintf(err, errlen, "'%s' is too long (at most %lluus)", text,
               (unsigned long long)s->max);
      return -1;
    }
    *(uint64_t *)field = v;
    return 0;
  case SETTING_SIZE:
    if (params_parse_size(text, &v) == -1 || v < s->min) {
      snprintf(err, errlen, "invalid value '%s' (expected a size of at "
               "least %lluM, such as 512M or 2G)", text,
               (unsigned long long)(s->min >> 20));
      return -1;
    }
    *(uint64_t *)field = v;
    return 0;
  case SETTING_PATH:
    if (*text == '\0') {
      snprintf(err, errlen, "empty value (expected a path)");
      return -1;
    }
    /* fall through */
  case SETTING_STRING:
    return settings_string((char **)field, text, err, errlen);
  case SETTING_LOG:
    if (log_check(text, err, errlen) == -1)
      return -1;
    return settings_string((char **)field, text, err, errlen);
  case SETTING_LISTEN:
    return settings_listen(cfg, text, err, errlen);
  case SETTING_ADDR: {
    struct nbd_listen l;
    if (listen_parse(text, &l, err, errlen) == -1)
      return -1;
    listen_clear(&l);
    return settings_string((char **)field, text, err, errlen);
  }
  case SETTING_TLS:
    if (strcmp(text, "off") == 0 || strcmp(text, "no") == 0)
      *(int *)field = NBD_TLS_OFF;
    else if (strcmp(text, "on") == 0 || strcmp(text, "yes") == 0)
      *(int *)field = NBD_TLS_ON;
    else if (strcmp(text, "require") == 0)
      *(int *)field = NBD_TLS_REQUIRE;
    else {
      snprintf(err, errlen, "invalid value '%s' (expected off, on or "
               "require)", text);
      return -1;
    }
    return 0;
  }
  return -1;
}

size_t
settings_key_names(char *buf, size_t len)
{
  const struct nbd_setting *s;
  size_t used = 0;

  buf[0] = '\0';
  for (s = nbd_settings; s->key && used < len; s++)
    used += (size_t)snprintf(buf + used, len - used, "%s%s",
                             s == nbd_settings ? "" : ", ", s->key);
  return used < len ? used : len - 1;
}

void
settings_usage(FILE *fp)
{
  const struct nbd_setting *s;
  char left[64];

  for (s = nbd_settings; s->key; s++) {
    if (s->option == NULL)
      continue;
    snprintf(left, sizeof left, "%c%c%s--%s%s%s", s->shortopt ? '-' : ' ',
             s->shortopt ? s->shortopt : ' ', s->shortopt ? ", " : "  ",
             s->option, s->arg ? " " : "", s->arg ? s->arg : "");
    fprintf(fp, "  %-30s %s (default %s)\n", left, s->help, s->def);
  }
}

void
settings_markdown(FILE *fp)
{
  const struct nbd_setting *s;

  fprintf(fp, "| key | option | value | default |\n"
              "|-----|--------|-------|---------|\n");
  for (s = nbd_settings; s->key; s++) {
    fprintf(fp, "| `%s` | ", s->key);
    if (s->option && s->shortopt)
      fprintf(fp, "`-%c`, `--%s` | ", s->shortopt, s->option);
    else if (s->option)
      fprintf(fp, "`--%s` | ", s->option);
    else
      fprintf(fp, "config only | ");
    fprintf(fp, "%s | %s |\n", s->help, s->def);
  }
}
