/* nbdstack command line, in nbdkit's habits:
 *
 *   nbdstack [OPTIONS] [--filter NAME]... BACKEND [key=value|VALUE]...
 *   nbdstack [OPTIONS] -c CONFIG
 *
 * The first form builds one export from the arguments: key=value words go
 * to the first layer (filters in the order given, then the backend) whose
 * parameter table has the key, a bare word to the backend's magic
 * parameter ("memory 1G").  The second reads the config file (config.c);
 * -U/-p/-i, -r, -t and -P given with it override the file.
 *
 * This file only parses: it does not listen, fork or write the pid file.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "settings.h"
#include "stack.h"
#include "registry.h"
#include "stop.h"

#include "cmdline.h"
#include "modes.h"
#include "tls.h"

#ifndef NBD_VERSION
#define NBD_VERSION "0.1.0"
#endif

#define CMDLINE_ERRLEN 1024

enum {
  CMDLINE_OPT_FILTER = 256,
  CMDLINE_OPT_LIST,
  CMDLINE_OPT_CHECK,
  CMDLINE_OPT_RUN,
  CMDLINE_OPT_SETTINGS_TABLE,
  CMDLINE_OPT_EXIT_WITH_PARENT,
  CMDLINE_OPT_PRINT_URI,
  CMDLINE_OPT_MAN,
  CMDLINE_OPT_NEWSTYLE,
  CMDLINE_OPT_DEBUG,
  CMDLINE_OPT_NBDKIT_ONLY,      /* nbdkit has it, nbdstack refuses it */
  CMDLINE_OPT_SETTING = 1000,   /* + index in nbd_settings */
};

/* A server setting given as an option, applied after the config file. */
struct cmdline_set {
  const struct nbd_setting *s;
  const char *value;
  char name[48];                /* "-t" or "--threads", for messages */
};

/* Options as given; strings point into argv. */
struct cmdline_opts {
  const char **unix_paths;
  size_t nunix;
  const char **filters;
  size_t nfilters;
  struct cmdline_set *sets;
  size_t nsets;
  const char *port, *ipaddr, *export_name, *config, *check, *run;
  int verbose;
};

/* Options that are not server settings; settings come from nbd_settings
 * (settings.c) and are added by cmdline_options(). */
static const struct option cmdline_fixed[] = {
  { "check-config", required_argument, NULL, CMDLINE_OPT_CHECK },
  { "config", required_argument, NULL, 'c' },
  { "export", required_argument, NULL, 'e' },
  { "export-name", required_argument, NULL, 'e' },
  { "exportname", required_argument, NULL, 'e' },
  { "exit-with-parent", no_argument, NULL, CMDLINE_OPT_EXIT_WITH_PARENT },
  { "filter", required_argument, NULL, CMDLINE_OPT_FILTER },
  { "foreground", no_argument, NULL, 'f' },
  { "help", no_argument, NULL, 'h' },
  { "ipaddr", required_argument, NULL, 'i' },
  { "list", no_argument, NULL, CMDLINE_OPT_LIST },
  { "man", required_argument, NULL, CMDLINE_OPT_MAN },  /* hidden: build */
  { "port", required_argument, NULL, 'p' },
  { "print-uri", no_argument, NULL, CMDLINE_OPT_PRINT_URI },
  { "read-only", no_argument, NULL, 'r' },
  { "run", required_argument, NULL, CMDLINE_OPT_RUN },
  { "settings-table", no_argument, NULL, CMDLINE_OPT_SETTINGS_TABLE },
  { "single", no_argument, NULL, 's' },
  { "unix", required_argument, NULL, 'U' },
  { "verbose", no_argument, NULL, 'v' },
  { "version", no_argument, NULL, 'V' },
  /* nbdkit's: --newstyle is its default and ours; -D sets debug flags of
   * nbdkit plugins, which we have none of (nbdkit warns about a flag
   * nothing uses, and so do we). */
  { "newstyle", no_argument, NULL, CMDLINE_OPT_NEWSTYLE },
  { "ipv4-only", no_argument, NULL, '4' },
  { "ipv6-only", no_argument, NULL, '6' },
  { "debug", required_argument, NULL, CMDLINE_OPT_DEBUG },
  /* nbdkit's, refused by name rather than as unknown (docs/config.md). */
  { "oldstyle", no_argument, NULL, CMDLINE_OPT_NBDKIT_ONLY },
  { "dump-config", no_argument, NULL, CMDLINE_OPT_NBDKIT_ONLY },
  { "dump-plugin", no_argument, NULL, CMDLINE_OPT_NBDKIT_ONLY },
  { "no-sr", no_argument, NULL, CMDLINE_OPT_NBDKIT_ONLY },
  { "no-meta-contexts", no_argument, NULL, CMDLINE_OPT_NBDKIT_ONLY },
  { "no-mc", no_argument, NULL, CMDLINE_OPT_NBDKIT_ONLY },
  { "mask-handshake", required_argument, NULL, CMDLINE_OPT_NBDKIT_ONLY },
  { "selinux-label", required_argument, NULL, CMDLINE_OPT_NBDKIT_ONLY },
  { "swap", no_argument, NULL, CMDLINE_OPT_NBDKIT_ONLY },
  { "vsock", no_argument, NULL, CMDLINE_OPT_NBDKIT_ONLY },
};

#define CMDLINE_NFIXED (sizeof cmdline_fixed / sizeof cmdline_fixed[0])
#define CMDLINE_MAXOPTS (CMDLINE_NFIXED + 64)

struct nbd_modes nbd_modes;

static struct option cmdline_long[CMDLINE_MAXOPTS + 1];
/* Leading ':' so that a missing argument returns ':', not '?'. */
static char cmdline_short[64];

/* The long and short options: the fixed ones, then one per setting. */
static void
cmdline_options(void)
{
  const struct nbd_setting *st;
  size_t n = CMDLINE_NFIXED, k;

  memcpy(cmdline_long, cmdline_fixed, sizeof cmdline_fixed);
  strcpy(cmdline_short, ":46c:D:e:fhi:nop:sU:vV");
  for (st = nbd_settings; st->key && n < CMDLINE_MAXOPTS; st++) {
    int arg = (st->flags & SETTING_FLAG) ? no_argument : required_argument;
    if (st->option == NULL)
      continue;
    cmdline_long[n].name = st->option;
    cmdline_long[n].has_arg = arg;
    cmdline_long[n].flag = NULL;
    cmdline_long[n].val = CMDLINE_OPT_SETTING + (int)(st - nbd_settings);
    n++;
    if (st->shortopt) {
      k = strlen(cmdline_short);
      cmdline_short[k++] = (char)st->shortopt;
      if (arg == required_argument)
        cmdline_short[k++] = ':';
      cmdline_short[k] = '\0';
    }
  }
  memset(&cmdline_long[n], 0, sizeof cmdline_long[n]);
}

static void
cmdline_usage(FILE *fp)
{
  fprintf(fp,
    "usage: nbdstack [OPTIONS] [--filter NAME]... BACKEND [key=value|VALUE]...\n"
    "       nbdstack [OPTIONS] -c CONFIG\n"
    "\n"
    "Serves one export built from the command line (any export name the\n"
    "client asks for gets it), or the exports of a config file.\n"
    "\n"
    "  -c, --config FILE       read exports and listen addresses from FILE\n"
    "      --check-config FILE check FILE: open every export's stack as a\n"
    "                          client would, check user, group, pidfile\n"
    "                          and listen addresses, then exit\n"
    "  -U, --unix PATH         listen on a Unix socket (repeatable); PATH -\n"
    "                          makes one in a new private directory\n"
    "  -p, --port PORT         listen on TCP PORT (default 10809)\n"
    "  -i, --ipaddr ADDR       listen on TCP address ADDR only\n"
    "  -e, --export-name NAME  name of the export (default \"\")\n"
    "      --filter NAME       stack a filter, client side first (repeatable)\n"
    "      --run CMD           once serving, run the shell command CMD with\n"
    "                          $uri, $nbd, $unixsocket or $port, $exportname\n"
    "                          set; stop when it exits, with its exit status\n"
    "  -s, --single            serve one client on stdin/stdout (a socket:\n"
    "                          inetd, libnbd's connect_command) and exit\n"
    "      --exit-with-parent  exit when the parent process exits\n"
    "      --print-uri         print the URI of each listener once serving\n"
    "  -f, --foreground        accepted for nbdkit habits; always foreground\n"
    "  -n, --newstyle          accepted for nbdkit habits (the only handshake)\n"
    "  -4, --ipv4-only         TCP: listen on IPv4 addresses only\n"
    "  -6, --ipv6-only         TCP: listen on IPv6 addresses only\n"
    "  -D, --debug FLAG=N      accepted for nbdkit habits, with a warning\n"
    "  -v, --verbose           debug messages\n"
    "      --list              list filters, backends and their keys\n"
    "      --settings-table    print the server settings as a Markdown table\n"
    "  -h, --help              this text\n"
    "  -V, --version           print the version\n"
    "\n"
    "Server settings (the [server] keys of a config file; given here, they\n"
    "override the file):\n");
  settings_usage(fp);
  fprintf(fp,
    "\n"
    "Without -U, -p or -i, nbdstack listens on TCP port 10809, all addresses.\n"
    "key=value goes to the first filter (in order), then the backend, that\n"
    "knows the key; a bare VALUE sets the backend's main key (memory 1G).\n"
    "Example: nbdstack --filter offset memory size=1G offset=1M range=256M\n"
    "\n"
    "See nbdstack --list for the filters, backends and their keys, and the\n"
    "manual pages nbdstack(1), nbdstack.conf(5), nbdstack-filters(7) and\n"
    "nbdstack-backends(7).\n");
}

static void
cmdline_bad_option(int argc, char **argv, int c)
{
  const char *arg = optind > 0 && optind <= argc ? argv[optind - 1] : "";

  if (strncmp(arg, "--", 2) == 0 && c == ':')
    fprintf(stderr, "nbdstack: option '%s' needs an argument (see --help)\n",
            arg);
  else if (strncmp(arg, "--", 2) == 0)
    fprintf(stderr, "nbdstack: invalid option '%s' (see --help)\n", arg);
  else if (c == ':')
    fprintf(stderr, "nbdstack: option '-%c' needs an argument (see --help)\n",
            optopt);
  else
    fprintf(stderr, "nbdstack: unknown option '-%c' (see --help)\n", optopt);
}

/* An option of nbdkit's that nbdstack does not have: said so, by name. */
static void
cmdline_nbdkit_only(int longidx)
{
  fprintf(stderr, "nbdstack: nbdkit's option %s%s is not supported by "
          "nbdstack (see docs/config.md, \"The command line\")\n",
          longidx >= 0 ? "--" : "-o (--oldstyle)",
          longidx >= 0 ? cmdline_long[longidx].name : "");
}

/* A setting from the command line: kept, with the name it was given
 * under, until the config is built (cmdline_apply). */
static void
cmdline_setting(struct cmdline_opts *o, const struct nbd_setting *st,
                int longidx)
{
  struct cmdline_set *cs = &o->sets[o->nsets++];

  cs->s = st;
  if (st->flags & SETTING_FLAG)
    cs->value = (st->flags & SETTING_INVERT) ? "no" : "yes";
  else
    cs->value = optarg;
  if (longidx >= 0)
    snprintf(cs->name, sizeof cs->name, "--%s", cmdline_long[longidx].name);
  else
    snprintf(cs->name, sizeof cs->name, "-%c", st->shortopt);
}

/* The setting of a short option, or NULL. */
static const struct nbd_setting *
cmdline_short_setting(int c)
{
  const struct nbd_setting *st;

  for (st = nbd_settings; st->key; st++)
    if (st->shortopt && st->shortopt == c)
      return st;
  return NULL;
}

/* -s, --exit-with-parent, --print-uri: how the process runs (modes.h). */
static int
cmdline_mode(int c)
{
  if (c == 's')
    nbd_modes.single = 1;
  else if (c == CMDLINE_OPT_PRINT_URI)
    nbd_modes.print_uri = 1;
  else {
    nbd_modes.exit_with_parent = 1;
    nbd_modes.parent = getppid();
  }
  return 0;
}

/* --man PAGE (hidden): the build generates the man pages with it. */
static int
cmdline_man(const char *page)
{
  if (manpage_print(stdout, page) == -1) {
    fprintf(stderr, "nbdstack: --man: unknown page '%s' (expected 1, 5, "
            "filters or backends)\n", page);
    return -1;
  }
  return 1;
}

/* One option; 0 go on, 1 exit 0 (--help, --version, --list), -1 error. */
static int
cmdline_option(int c, int longidx, int argc, char **argv,
               struct cmdline_opts *o)
{
  const struct nbd_setting *st;

  if (c >= CMDLINE_OPT_SETTING) {
    cmdline_setting(o, &nbd_settings[c - CMDLINE_OPT_SETTING], longidx);
    return 0;
  }
  if (c == 'r' && longidx >= 0) /* --read-only, an alias */
    longidx = -1;
  if (c < 256 && c != ':' && c != '?' && (st = cmdline_short_setting(c))) {
    cmdline_setting(o, st, longidx);
    return 0;
  }
  switch (c) {
  case 'c': o->config = optarg; return 0;
  case CMDLINE_OPT_CHECK: o->check = optarg; return 0;
  case 'e': o->export_name = optarg; return 0;
  case CMDLINE_OPT_FILTER: o->filters[o->nfilters++] = optarg; return 0;
  case 'f': return 0;
  case 'i': o->ipaddr = optarg; return 0;
  case 'p': o->port = optarg; return 0;
  case CMDLINE_OPT_RUN: o->run = optarg; return 0;
  case 'U': o->unix_paths[o->nunix++] = optarg; return 0;
  case 'v': o->verbose++; return 0;
  case 'h': cmdline_usage(stdout); return 1;
  case 'V': printf("nbdstack %s\n%s\n", NBD_VERSION, tls_version_text());
    return 1;
  case CMDLINE_OPT_LIST: registry_print(stdout); return 1;
  case CMDLINE_OPT_SETTINGS_TABLE: settings_markdown(stdout); return 1;
  case 's': case CMDLINE_OPT_EXIT_WITH_PARENT: case CMDLINE_OPT_PRINT_URI:
    return cmdline_mode(c);
  case CMDLINE_OPT_MAN: return cmdline_man(optarg);
  case 'n': case CMDLINE_OPT_NEWSTYLE: return 0;
  case '4': nbd_modes.family = AF_INET; return 0;
  case '6': nbd_modes.family = AF_INET6; return 0;
  case 'D': case CMDLINE_OPT_DEBUG:
    fprintf(stderr, "nbdstack: warning: debug flag -D %s was not used "
            "(nbdstack has no debug flags; -v gives debug messages)\n", optarg);
    return 0;
  case 'o': case CMDLINE_OPT_NBDKIT_ONLY:
    cmdline_nbdkit_only(c == 'o' ? -1 : longidx);
    return -1;
  default: cmdline_bad_option(argc, argv, c); return -1;
  }
}

static int
cmdline_getopt(int argc, char **argv, struct cmdline_opts *o)
{
  int c, r, longidx = -1;

  cmdline_options();
  optind = 0;                   /* full reset (glibc and musl), for tests */
  opterr = 0;                   /* our messages, not getopt's */
  while ((c = getopt_long(argc, argv, cmdline_short, cmdline_long,
                          &longidx)) != -1) {
    if ((r = cmdline_option(c, longidx, argc, argv, o)) != 0)
      return r;
    longidx = -1;
  }
  return 0;
}

static int
cmdline_strdup(char **field, const char *s)
{
  char *copy = strdup(s);

  if (copy == NULL) {
    fprintf(stderr, "nbdstack: out of memory\n");
    return -1;
  }
  free(*field);
  *field = copy;
  return 0;
}

/* ---- building the export ------------------------------------------------- */

/* Errors of the stack being built from argv. */
static void
cmdline_stack_error(void *arg, int line, const char *msg)
{
  fprintf(stderr, "nbdstack: %s\n", msg);
}

/* The one export of the first form: filters in the order given, the
 * backend, then every word after it (stack.c routes key=value words to
 * the first layer that knows the key). */
static int
cmdline_export(int nargs, char **args, const struct cmdline_opts *o,
               struct nbd_config *cfg)
{
  const char *name = o->export_name ? o->export_name : "";
  struct nbd_stack st;
  size_t i;
  int n, bad = 0;

  if (strlen(name) > CONFIG_MAX_NAME) {
    fprintf(stderr, "nbdstack: -e: export name is %zu bytes, longer than "
            "the NBD limit of %d\n", strlen(name), CONFIG_MAX_NAME);
    return -1;
  }
  cfg->exports = engine_export_new(name);
  if (cfg->exports == NULL) {
    fprintf(stderr, "nbdstack: out of memory\n");
    return -1;
  }
  cfg->any_export_name = 1;
  stack_begin(&st, cfg->exports, "export", cmdline_stack_error, NULL);
  st.cmdline = 1;
  for (i = 0; i < o->nfilters; i++)
    if (stack_add(&st, NBD_LAYER_FILTER, o->filters[i], 0) == NULL)
      bad = 1;
  if (stack_add(&st, NBD_LAYER_BACKEND, args[0], 0) == NULL || bad) {
    stack_finish(&st, 0);
    return -1;
  }
  for (n = 1; n < nargs; n++) {
    char *eq = strchr(args[n], '='), *key = NULL;
    const char *value = args[n];
    if (eq && stack_is_key(args[n], (size_t)(eq - args[n]))) {
      if ((key = strndup(args[n], (size_t)(eq - args[n]))) == NULL) {
        fprintf(stderr, "nbdstack: out of memory\n");
        bad = 1;
        break;
      }
      value = eq + 1;
    }
    if (stack_param_routed(&st, key, value, 0) == -1)
      bad = 1;
    free(key);
  }
  if (bad) {
    free(st.v);
    return -1;
  }
  return stack_finish(&st, 0);
}

/* ---- listen addresses and overrides -------------------------------------- */

static int
cmdline_add_listen(struct nbd_config *cfg, const char *opt, const char *text)
{
  struct nbd_listen l, *v;
  char err[CMDLINE_ERRLEN];

  if (listen_parse(text, &l, err, sizeof err) == -1) {
    fprintf(stderr, "nbdstack: %s: %s\n", opt, err);
    return -1;
  }
  v = realloc(cfg->listens, (cfg->nlistens + 1) * sizeof *v);
  if (v == NULL) {
    listen_clear(&l);
    fprintf(stderr, "nbdstack: out of memory\n");
    return -1;
  }
  cfg->listens = v;
  v[cfg->nlistens++] = l;
  return 0;
}

/* -U paths, then one TCP address from -i/-p (or the default). */
static int
cmdline_listens(struct nbd_config *cfg, const struct cmdline_opts *o)
{
  const char *ip = o->ipaddr ? o->ipaddr : "";
  const char *port = o->port ? o->port : LISTEN_DEFAULT_PORT;
  int v6 = strchr(ip, ':') != NULL && ip[0] != '[';
  char *text;
  size_t i;
  int r;

  for (i = 0; i < o->nunix; i++) {
    const char *path = o->unix_paths[i];
    if (strcmp(path, "-") == 0) {
      /* nbdkit's "-U -": a socket in a new private directory. */
      char tmpl[] = "/tmp/nbdstackXXXXXX";
      if (cfg->tmpdir) {
        fprintf(stderr, "nbdstack: -U - given twice\n");
        return -1;
      }
      if (mkdtemp(tmpl) == NULL) {
        fprintf(stderr, "nbdstack: -U -: mkdtemp: %s\n", strerror(errno));
        return -1;
      }
      if ((cfg->tmpdir = strdup(tmpl)) == NULL) {
        rmdir(tmpl);
        goto oom;
      }
      if (asprintf(&text, "unix:%s/socket", tmpl) == -1)
        goto oom;
    } else if (asprintf(&text, "unix:%s", path) == -1)
      goto oom;
    r = cmdline_add_listen(cfg, "-U", text);
    free(text);
    if (r == -1)
      return -1;
  }
  if (o->nunix > 0 && o->ipaddr == NULL && o->port == NULL)
    return 0;
  if (*port == '\0') {
    fprintf(stderr, "nbdstack: -p: empty port\n");
    return -1;
  }
  if (asprintf(&text, "tcp:%s%s%s:%s", v6 ? "[" : "", ip, v6 ? "]" : "",
               port) == -1)
    goto oom;
  r = cmdline_add_listen(cfg, o->ipaddr ? "-i" : "-p", text);
  free(text);
  return r;

oom:
  fprintf(stderr, "nbdstack: out of memory\n");
  return -1;
}

static int
cmdline_apply(struct nbd_config *cfg, const struct cmdline_opts *o)
{
  char err[CMDLINE_ERRLEN];
  size_t i;
  int bad = 0;

  if (!cfg->listens || o->nunix || o->port || o->ipaddr) {
    for (i = 0; i < cfg->nlistens; i++)
      listen_clear(&cfg->listens[i]);
    free(cfg->listens);
    cfg->listens = NULL;
    cfg->nlistens = 0;
    if (cmdline_listens(cfg, o) == -1)
      return -1;
  }
  if (o->run && cmdline_strdup(&cfg->run, o->run) == -1)
    return -1;
  for (i = 0; i < o->nsets; i++)
    if (settings_set(o->sets[i].s, cfg, o->sets[i].value, err,
                     sizeof err) == -1) {
      fprintf(stderr, "nbdstack: %s: %s\n", o->sets[i].name, err);
      bad = 1;
    }
  cfg->verbose = o->verbose;
  return bad ? -1 : 0;
}

/* ---- modes --------------------------------------------------------------- */

/* Layers see nbd_checking(): every export's stack is opened read-only
 * and closed, beside a server that may hold the same files. */
static int
cmdline_check_config(const char *path)
{
  struct nbd_config cfg;
  int n;

  atomic_store(&server_checking, 1);
  n = config_load_file(path, &cfg, stderr);
  atomic_store(&server_checking, 0);

  /* The TLS keys are loaded and checked as at startup (readable, the
   * key matching its certificate, the PSK file well formed). */
  if (n == 0) {
    n = tls_server_init(&cfg);
    tls_server_free();
    if (n > 0)
      config_free(&cfg);
  }
  if (n > 0) {
    fprintf(stderr, "nbdstack: %s: %d error%s\n", path, n, n == 1 ? "" : "s");
    return -1;
  }
  config_free(&cfg);
  printf("%s: OK\n", path);
  return 1;
}

static int
cmdline_config_file(int nargs, char **args, const struct cmdline_opts *o,
                    struct nbd_config *cfg)
{
  if (nargs > 0) {
    fprintf(stderr, "nbdstack: -c and a backend on the command line ('%s') "
            "are exclusive\n", args[0]);
    return -1;
  }
  if (o->nfilters || o->export_name) {
    fprintf(stderr, "nbdstack: %s cannot be used with -c: configure "
            "exports in the file\n", o->nfilters ? "--filter" : "-e");
    return -1;
  }
  return config_load_file(o->config, cfg, stderr) > 0 ? -1 : 0;
}

/* -s serves fd 0: listening options and what needs a listener make no
 * sense with it (nbdkit refuses them too). */
static int
cmdline_check_modes(const struct cmdline_opts *o)
{
  const char *opt = NULL;

  if (!nbd_modes.single)
    return 0;
  if (o->nunix)
    opt = "-U";
  else if (o->port)
    opt = "-p";
  else if (o->ipaddr)
    opt = "-i";
  else if (o->run)
    opt = "--run";
  else if (nbd_modes.print_uri)
    opt = "--print-uri";
  if (opt == NULL)
    return 0;
  fprintf(stderr, "nbdstack: -s and %s are exclusive: -s serves one client "
          "on stdin/stdout and listens on nothing\n", opt);
  return -1;
}

static int
cmdline_run(int argc, char **argv, struct cmdline_opts *o,
            struct nbd_config *cfg)
{
  int nargs = argc - optind, r;
  char **args = argv + optind;

  nbd_verbose = o->verbose;
  if (o->check)
    return cmdline_check_config(o->check);
  if (o->config)
    r = cmdline_config_file(nargs, args, o, cfg);
  else if (nargs == 0) {
    fprintf(stderr, "nbdstack: no backend given (nbdstack [OPTIONS] "
            "BACKEND [key=value]..., or -c CONFIG; see --help and --list)\n");
    return -1;
  } else
    r = cmdline_export(nargs, args, o, cfg);
  if (r == 0 && cmdline_apply(cfg, o) == -1)
    r = -1;
  if (r == 0 && cmdline_check_modes(o) == -1)
    r = -1;
  return r;
}

int
cmdline_parse(int argc, char **argv, struct nbd_config *cfg)
{
  struct cmdline_opts o;
  int r = -1;

  config_defaults(cfg);
  memset(&o, 0, sizeof o);
  memset(&nbd_modes, 0, sizeof nbd_modes);
  /* Each repeatable option takes at least one argv slot. */
  o.unix_paths = calloc((size_t)argc + 1, sizeof *o.unix_paths);
  o.filters = calloc((size_t)argc + 1, sizeof *o.filters);
  o.sets = calloc((size_t)argc + 1, sizeof *o.sets);
  if (o.unix_paths == NULL || o.filters == NULL || o.sets == NULL)
    fprintf(stderr, "nbdstack: out of memory\n");
  else if ((r = cmdline_getopt(argc, argv, &o)) == 0)
    r = cmdline_run(argc, argv, &o, cfg);
  if (r != 0)
    config_free(cfg);
  free(o.unix_paths);
  free(o.filters);
  free(o.sets);
  return r;
}
