/* nbdstack filter exportname: shape the list of exports a client sees
 * (NBD_OPT_LIST) and which names it may open (nbdkit's exportname filter,
 * same keys).
 *
 *   default-export=NAME  a client asking for "" gets NAME: the layers
 *     below open with NAME (the export_name hook, src/methods.def).
 *   exportname-list=keep (default)  what the layers below list (file dir=
 *     lists its files; a one-disk stack lists its config name);
 *   error        NBD_OPT_LIST fails (NBD_REP_ERR_POLICY);
 *   empty        an empty list;
 *   defaultonly  only the default export's name: default-export, else the
 *                config export's own name;
 *   explicit     only the exportname= names, in their order.
 *   exportname-strict=true  opening a name not given by exportname= fails
 *     (the name after default-export).
 *   exportdesc=keep | none | fixed:STRING | script:SCRIPT  the description
 *     of each listed name: the one below, none, STRING, or what
 *     `sh -c SCRIPT` prints with $name set (first 4 KiB, one line).
 *
 * A list this filter shapes is the stack's list (layer.h, "export
 * names"): a name it lists is routed to this export by the handshake,
 * and the stack opens with the asked name, as for file dir=.
 */
#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "layer.h"

extern char **environ;

static const char *const exportname_lists[] = {
  "keep", "error", "empty", "defaultonly", "explicit", NULL
};
enum { EN_KEEP, EN_ERROR, EN_EMPTY, EN_DEFAULTONLY, EN_EXPLICIT };
enum { ED_KEEP, ED_NONE, ED_FIXED, ED_SCRIPT };

struct exportname_conf {
  struct nbd_strlist names;
  char *default_export;
  int list;
  int strict;
  char *desc;
  int desc_mode;                /* setup: ED_* */
  const char *desc_arg;         /* the STRING or SCRIPT, inside desc */
};

static const struct nbd_param exportname_params[] = {
  { "exportname", NBD_PARAM_STRING_LIST,
    offsetof(struct exportname_conf, names), NULL,
    "an export name to list (repeatable; for exportname-list=explicit "
    "and exportname-strict)", NULL, 0 },
  { "default-export", NBD_PARAM_STRING,
    offsetof(struct exportname_conf, default_export), NULL,
    "the export name the layers below open when a client asks for \"\"",
    NULL, 0 },
  { "exportname-list", NBD_PARAM_ENUM,
    offsetof(struct exportname_conf, list), "keep",
    "what NBD_OPT_LIST shows: keep, error, empty, defaultonly, explicit",
    exportname_lists, 0 },
  { "exportname-strict", NBD_PARAM_BOOL,
    offsetof(struct exportname_conf, strict), "false",
    "refuse names not given by exportname=", NULL, 0 },
  { "exportdesc", NBD_PARAM_STRING, offsetof(struct exportname_conf, desc),
    "keep", "descriptions: keep, none, fixed:STRING, script:SCRIPT",
    NULL, 0 },
  NBD_PARAM_END
};

static int
exportname_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct exportname_conf *c = layer->conf;
  const char *d = c->desc ? c->desc : "keep";

  if (strcmp(d, "keep") == 0)
    c->desc_mode = ED_KEEP;
  else if (strcmp(d, "none") == 0)
    c->desc_mode = ED_NONE;
  else if (strncmp(d, "fixed:", 6) == 0) {
    c->desc_mode = ED_FIXED;
    c->desc_arg = d + 6;
  }
  else if (strncmp(d, "script:", 7) == 0 && d[7] != '\0') {
    c->desc_mode = ED_SCRIPT;
    c->desc_arg = d + 7;
  }
  else {
    snprintf(err, errlen, "exportdesc: invalid value '%s' (expected keep, "
             "none, fixed:STRING or script:SCRIPT)", d);
    return -1;
  }
  if (c->strict && c->names.n == 0) {
    snprintf(err, errlen, "exportname-strict=true without any exportname= "
             "would refuse every client");
    return -1;
  }
  return 0;
}

/* What `sh -c script` prints with $name set: its first line, at most
 * 4 KiB; "" when it fails.  malloc'd, NULL when out of memory. */
static char *
exportname_script(const char *script, const char *name)
{
  char *argv[] = { (char *)"sh", (char *)"-c", (char *)script, NULL };
  char **env, *out, *var;
  size_t n = 0, len = 0, cap = 4096;
  posix_spawn_file_actions_t fa;
  int fd[2], status;
  pid_t pid;
  ssize_t got;

  while (environ[n])
    n++;
  if ((out = calloc(1, cap + 1)) == NULL)
    return NULL;
  env = calloc(n + 2, sizeof *env);
  var = malloc(strlen(name) + 6);
  if (env == NULL || var == NULL || pipe2(fd, O_CLOEXEC) == -1) {
    free(env);
    free(var);
    return out;
  }
  sprintf(var, "name=%s", name);
  env[0] = var;
  for (size_t i = 0, j = 1; i < n; i++)
    if (strncmp(environ[i], "name=", 5) != 0)
      env[j++] = environ[i];
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fd[1], STDOUT_FILENO);
  if (posix_spawn(&pid, "/bin/sh", &fa, NULL, argv, env) == 0) {
    close(fd[1]);
    while (len < cap && (got = read(fd[0], out + len, cap - len)) > 0)
      len += (size_t)got;
    close(fd[0]);
    while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
      ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      len = 0;
  }
  else {
    close(fd[0]);
    close(fd[1]);
  }
  posix_spawn_file_actions_destroy(&fa);
  out[len] = '\0';
  out[strcspn(out, "\n")] = '\0';
  free(env);
  free(var);
  return out;
}

/* The description exportdesc gives name (below: the layers below's, NULL
 * = the export's).  A script's answer is malloc'd into *made, which the
 * caller frees (NULL, and "" returned, when out of memory). */
static const char *
exportname_describe(const struct exportname_conf *c, const char *name,
                    const char *below, char **made)
{
  *made = NULL;
  switch (c->desc_mode) {
  case ED_NONE:
    return "";
  case ED_FIXED:
    return c->desc_arg;
  case ED_SCRIPT:
    return (*made = exportname_script(c->desc_arg, name)) ? *made : "";
  default:
    return below;
  }
}

/* Adds name with the description exportdesc gives it. */
static int
exportname_add(const struct exportname_conf *c, struct nbd_exports *out,
               const char *name, const char *below)
{
  char *made;
  const char *d = exportname_describe(c, name, below, &made);
  int r;

  if (c->desc_mode == ED_SCRIPT && made == NULL)
    return -ENOMEM;
  r = nbd_exports_add(out, name, d);
  free(made);
  return r;
}

static int
exportname_list_exports(struct nbd_ctx *self, struct nbd_ctx *next,
                        struct nbd_exports *exports)
{
  const struct exportname_conf *c = self->layer->conf;
  struct nbd_exports below = { NULL, 0, 0 };
  size_t i;
  int r = 0;

  switch (c->list) {
  case EN_ERROR:
    return -EPERM;              /* the handshake answers NBD_REP_ERR_POLICY */
  case EN_EMPTY:
    return 1;
  case EN_EXPLICIT:
    for (i = 0; i < c->names.n && r == 0; i++)
      r = exportname_add(c, exports, c->names.v[i], NULL);
    return r < 0 ? r : 1;
  case EN_DEFAULTONLY:
    r = exportname_add(c, exports, c->default_export && *c->default_export ?
                       c->default_export : self->layer->export_name, NULL);
    return r < 0 ? r : 1;
  default:
    break;
  }
  if ((r = next_list_exports(next, &below)) < 0)
    return r;
  if (r == 0) {
    /* Only the config name below: listed as it is unless described. */
    nbd_exports_clear(&below);
    if (c->desc_mode == ED_KEEP)
      return 0;
    r = exportname_add(c, exports, self->layer->export_name, NULL);
    return r < 0 ? r : 1;
  }
  r = 0;
  for (i = 0; i < below.n && r == 0; i++)
    r = exportname_add(c, exports, below.v[i].name, below.v[i].description);
  nbd_exports_clear(&below);
  return r < 0 ? r : 1;
}

/* "" is served as default-export (empty or unset: as ""). */
static const char *
exportname_export_name(struct nbd_ctx *self, struct nbd_ctx *next,
                       const char *name)
{
  const struct exportname_conf *c = self->layer->conf;

  (void)next;
  if (name[0] == '\0' && c->default_export && c->default_export[0])
    return c->default_export;
  return name;
}

static int
exportname_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  const struct exportname_conf *c = self->layer->conf;
  const struct nbd_conn_info *info = nbd_conn_info(self);
  const char *name = info && info->export_name ? info->export_name : "";
  size_t i;

  /* The name the client asked for, as nbdkit: with exportname-strict,
   * "" is served (as default-export) only when "" is listed itself. */
  (void)next;
  (void)readonly;
  self->handle = NULL;          /* exportdesc=script: its answer, later */
  if (!c->strict || nbd_checking())
    return 0;
  for (i = 0; i < c->names.n; i++)
    if (strcmp(c->names.v[i], name) == 0)
      return 0;
  nbd_error("export '%s': filter exportname: export name \"%s\" is not "
            "allowed (exportname-strict)", self->layer->export_name, name);
  return -ENOENT;
}

/* NBD_INFO_DESCRIPTION of the opened export, as exportdesc says: the
 * description the listing gives (for a script, run once per connection
 * with the name opened, default-export applied). */
static const char *
exportname_export_description(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct exportname_conf *c = self->layer->conf;
  const struct nbd_conn_info *info = nbd_conn_info(self);
  const char *name = info && info->export_name ? info->export_name : "";
  const char *d;
  char *made;

  if (self->handle)             /* the script's answer */
    return self->handle;
  d = exportname_describe(c, exportname_export_name(self, next, name),
                          c->desc_mode == ED_KEEP ?
                          next_export_description(next) : NULL, &made);
  self->handle = made;          /* a script runs once per connection */
  return d;
}

static void
exportname_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)next;
  free(self->handle);
  self->handle = NULL;
}

/* Names only: data, sizes and capabilities are the layers below's. */
PASSTHROUGH(exportname, pread)
PASSTHROUGH(exportname, pwrite)
PASSTHROUGH(exportname, flush)
PASSTHROUGH(exportname, trim)
PASSTHROUGH(exportname, zero)
PASSTHROUGH(exportname, extents)
PASSTHROUGH(exportname, depth)
PASSTHROUGH(exportname, cache)
PASSTHROUGH(exportname, reopen)
PASSTHROUGH(exportname, get_size)
PASSTHROUGH(exportname, block_size)
PASSTHROUGH(exportname, can_write)
PASSTHROUGH(exportname, can_flush)
PASSTHROUGH(exportname, can_trim)
PASSTHROUGH(exportname, can_zero)
PASSTHROUGH(exportname, can_fast_zero)
PASSTHROUGH(exportname, can_fua)
PASSTHROUGH(exportname, can_cache)
PASSTHROUGH(exportname, can_extents)
PASSTHROUGH(exportname, can_multi_conn)
PASSTHROUGH(exportname, is_rotational)
PASSTHROUGH(exportname, preconnect)

NBD_REGISTER_FILTER(exportname, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "change the list of exports clients see and the names "
                 "they may open",
  .params = exportname_params,
  .conf_size = sizeof(struct exportname_conf),
  .setup = exportname_setup,
  .export_name = exportname_export_name,
  .open = exportname_open,
  .export_description = exportname_export_description,
  .close = exportname_close,
);
