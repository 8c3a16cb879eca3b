/* nbdstack config reload: the export sets, and SIGHUP.
 *
 * A set is a whole struct nbd_config.  Connections hold a reference to
 * the set they were accepted with, so an export a reload removed or
 * changed keeps serving them until they close; the old set is freed
 * with its last connection.  A reload parses the file into a complete
 * new set (config.c keeps the layer instances of exports whose lines,
 * description aside, did not change), binds the listen addresses it
 * adds, and only then swaps the current pointer; a set with any error
 * is refused whole.  Server settings other than listen addresses need a
 * restart: a new value is reported and the running one kept.  It does
 * not accept clients (server.c) nor bind sockets itself (sockets.c).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "process.h"
#include "reload.h"
#include "settings.h"
#include "sockets.h"
#include "tls.h"

struct reload_set {
  struct nbd_config *cfg;
  unsigned refs;                /* the server's (while current) + conns */
  int owned;                    /* 0: main's struct, freed by main */
  struct reload_set *next;
};

static pthread_mutex_t reload_lock = PTHREAD_MUTEX_INITIALIZER;
static struct reload_set *reload_sets;  /* current first */
static const char *reload_path;

void
reload_init(struct nbd_config *cfg, const char *path)
{
  static struct reload_set first;

  first.cfg = cfg;
  first.refs = 1;
  reload_sets = &first;
  reload_path = path;
}

const struct nbd_config *
reload_current(void)
{
  return reload_sets ? reload_sets->cfg : NULL;
}

const struct nbd_config *
reload_get(void)
{
  const struct nbd_config *cfg;

  pthread_mutex_lock(&reload_lock);
  reload_sets->refs++;
  cfg = reload_sets->cfg;
  pthread_mutex_unlock(&reload_lock);
  return cfg;
}

static void
reload_free(struct reload_set *s)
{
  config_free(s->cfg);
  if (s->owned) {
    free(s->cfg);
    free(s);
  }
}

void
reload_put(const struct nbd_config *cfg)
{
  struct reload_set **pp, *s = NULL;

  if (cfg == NULL)
    return;
  pthread_mutex_lock(&reload_lock);
  for (pp = &reload_sets; *pp; pp = &(*pp)->next)
    if ((*pp)->cfg == cfg) {
      if (--(*pp)->refs == 0) {
        s = *pp;
        *pp = s->next;
      }
      break;
    }
  pthread_mutex_unlock(&reload_lock);
  if (s)
    reload_free(s);             /* an old set's last connection is gone */
}

void
reload_end(void)
{
  if (reload_sets && reload_sets->owned)
    reload_put(reload_sets->cfg);
}

/* The value of setting st in cfg, as text, for comparison and messages. */
static void
reload_setting_text(const struct nbd_setting *st,
                    const struct nbd_config *cfg, char *buf, size_t len)
{
  const char *p = (const char *)cfg + st->offset;

  switch (st->type) {
  case SETTING_UINT:
    snprintf(buf, len, "%u", *(const unsigned *)p);
    break;
  case SETTING_BOOL:
    snprintf(buf, len, "%s", *(const int *)p ? "yes" : "no");
    break;
  case SETTING_TLS:
    snprintf(buf, len, "%d", *(const int *)p);
    break;
  case SETTING_DURATION:
  case SETTING_SIZE:
    snprintf(buf, len, "%llu", (unsigned long long)*(const uint64_t *)p);
    break;
  case SETTING_STRING:
  case SETTING_PATH:
  case SETTING_LOG:
  case SETTING_ADDR:
    snprintf(buf, len, "%s", *(char *const *)p ? *(char *const *)p : "");
    break;
  case SETTING_LISTEN:
    buf[0] = '\0';
    break;
  }
}

static int
reload_dup(char **dst, const char *src)
{
  free(*dst);
  *dst = src ? strdup(src) : NULL;
  return src && *dst == NULL ? -1 : 0;
}

/* Server settings take effect at start only: says which ones the file
 * changed, and gives the new set the running values.  0, or -1 when
 * out of memory. */
static int
reload_keep_settings(const struct nbd_config *cur, struct nbd_config *next)
{
  const struct nbd_setting *st;
  char a[256], b[256];
  int r = 0;

  for (st = nbd_settings; st->key; st++) {
    char *p = (char *)next + st->offset;
    if (st->type == SETTING_LISTEN)
      continue;
    reload_setting_text(st, cur, a, sizeof a);
    reload_setting_text(st, next, b, sizeof b);
    if (strcmp(a, b) != 0)
      nbd_warn("reload: [server] %s changed: needs a restart (ignored, "
               "still %s)", st->key, a[0] ? a : "unset");
    /* Strings are copied: a pointer shared with cur would be freed
     * with it. */
    if (st->type == SETTING_STRING || st->type == SETTING_PATH ||
        st->type == SETTING_LOG || st->type == SETTING_ADDR)
      r |= reload_dup((char **)p, *(char *const *)((const char *)cur +
                                                    st->offset));
    else
      memcpy(p, (const char *)cur + st->offset,
             st->type == SETTING_UINT ? sizeof(unsigned)
             : st->type == SETTING_BOOL || st->type == SETTING_TLS
             ? sizeof(int) : sizeof(uint64_t));
  }
  next->verbose = cur->verbose;
  r |= reload_dup(&next->run, cur->run);
  return r;
}

/* Parses the file with every error logged; NULL when refused. */
static struct nbd_config *
reload_parse(const struct nbd_config *cur)
{
  struct nbd_config *next = calloc(1, sizeof *next);
  char *text = NULL, *line, *save = NULL;
  size_t len = 0;
  FILE *errs = open_memstream(&text, &len);
  int n;

  if (next == NULL || errs == NULL) {
    nbd_error("reload: out of memory");
    if (errs)
      fclose(errs);
    free(text);
    free(next);
    return NULL;
  }
  config_reuse_from(cur);
  n = config_load_file(reload_path, next, errs);
  config_reuse_from(NULL);
  fclose(errs);
  for (line = strtok_r(text, "\n", &save); line;
       line = strtok_r(NULL, "\n", &save))
    nbd_error("reload: %s", line);
  free(text);
  if (n > 0) {
    nbd_error("reload: %s has %d error%s: refused, the running exports "
              "stay", reload_path, n, n == 1 ? "" : "s");
    free(next);                 /* config_load_file freed its contents */
    return NULL;
  }
  if (reload_keep_settings(cur, next) == -1) {
    nbd_error("reload: out of memory: refused");
    config_free(next);
    free(next);
    return NULL;
  }
  /* Credentials are loaded at start only (tls-certificates and tls-psk
   * are server settings): an export that now wants TLS on a server that
   * started without it cannot be served. */
  if (config_tls_offered(next) && !tls_server_ready()) {
    nbd_error("reload: an export sets tls = on or require, but the server "
              "started without TLS credentials: refused (restart with "
              "tls-certificates or tls-psk)");
    config_free(next);
    free(next);
    return NULL;
  }
  return next;
}

static void
reload_report(const struct nbd_config *cur, const struct nbd_config *next)
{
  const struct nbd_export *e, *o;
  unsigned kept = 0, added = 0, changed = 0, removed = 0;

  for (e = next->exports; e; e = e->next) {
    for (o = cur->exports; o && strcmp(o->name, e->name) != 0; o = o->next)
      ;
    if (o == NULL)
      added++;
    else if (e->origin)
      kept++;
    else
      changed++;
  }
  for (o = cur->exports; o; o = o->next) {
    for (e = next->exports; e && strcmp(o->name, e->name) != 0; e = e->next)
      ;
    removed += e == NULL;
  }
  nbd_info("reloaded %s: %u export%s kept, %u changed, %u added, %u "
           "removed", reload_path, kept, kept == 1 ? "" : "s", changed,
           added, removed);
}

int
reload_run(const struct nbd_config **old)
{
  const struct nbd_config *cur = reload_current();
  struct nbd_config *next;
  struct reload_set *s;
  struct timespec ts;
  char msg[64];

  if (reload_path == NULL) {
    nbd_info("SIGHUP: nothing to reload (the exports come from the "
             "command line, not a config file)");
    return 0;
  }
  clock_gettime(CLOCK_MONOTONIC, &ts);
  snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
           (unsigned long long)ts.tv_sec * 1000000 +
           (unsigned long long)ts.tv_nsec / 1000);
  notify_systemd(msg);
  nbd_info("SIGHUP: reloading %s", reload_path);
  if ((s = calloc(1, sizeof *s)) == NULL)
    nbd_error("reload: out of memory: refused");
  next = s ? reload_parse(cur) : NULL;
  if (next && sockets_update(next) == -1) {
    nbd_error("reload: a new listen address cannot be bound: refused, "
              "the running exports stay");
    config_free(next);
    free(next);
    next = NULL;
  }
  if (next == NULL) {
    free(s);
    notify_systemd("READY=1");
    return 0;
  }
  reload_report(cur, next);
  s->cfg = next;
  s->refs = 1;
  s->owned = 1;
  pthread_mutex_lock(&reload_lock);
  s->next = reload_sets;
  reload_sets = s;
  pthread_mutex_unlock(&reload_lock);
  *old = cur;                   /* the caller drops the server's reference */
  notify_systemd("READY=1");
  return 1;
}
