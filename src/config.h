/* nbdstack configuration: what the config file or the command line asks
 * for, after every layer instance has been created, its parameters parsed
 * and its setup run.  config.c reads the INI file, cmdline.c the short
 * nbdkit-like command line; both fill the same struct nbd_config.
 */
#ifndef NBDSTACK_CONFIG_H
#define NBDSTACK_CONFIG_H

#include <stdio.h>

#include "engine.h"

enum nbd_listen_kind { NBD_LISTEN_UNIX, NBD_LISTEN_TCP };

struct nbd_listen {
  enum nbd_listen_kind kind;
  char *path;                   /* unix */
  char *host;                   /* tcp: NULL or "" = all addresses */
  char *port;                   /* tcp: "10809" by default */
};

struct nbd_config {
  struct nbd_listen *listens;
  size_t nlistens;
  struct nbd_export *exports;   /* linked by ->next, in config order */
  /* Unknown export names get the first export instead of an error
   * (command-line mode, as nbdkit does). */
  int any_export_name;
  unsigned threads;             /* worker threads per connection, default 16 */
  int readonly;                 /* -r: every export read-only */
  int verbose;                  /* -v */
  char *pidfile;
};

/* Parses the INI text (name is used in messages as name:line:).  Every
 * error is printed to errs as "name:line: message"; returns the number of
 * errors (0 = success).  On success cfg holds the exports with every layer
 * set up; on failure cfg is left freed (config_free not needed). */
int config_parse_string(const char *text, const char *name,
                        struct nbd_config *cfg, FILE *errs);
/* Reads a file and calls config_parse_string. */
int config_load_file(const char *path, struct nbd_config *cfg, FILE *errs);
void config_free(struct nbd_config *cfg);
/* Parses "unix:/path", "tcp:host:port", "tcp:[v6]:port", "tcp:port",
 * "/path" (unix) or "host:port"; 0 or -1 with err filled. */
int config_parse_listen(const char *text, struct nbd_listen *out,
                        char *err, size_t errlen);

/* Command line (cmdline.c).  Returns 0 to run, 1 when the program should
 * exit 0 (--help, --version, --list, --check-config ok), -1 on error
 * (already printed).  On 0, cfg is complete. */
int cmdline_parse(int argc, char **argv, struct nbd_config *cfg);

#endif
