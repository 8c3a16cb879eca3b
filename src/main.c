/* nbdstack: a Network Block Device server with stackable filters.
 *
 * main parses the command line (cmdline.c, which may load a config file
 * through config.c), checks the registry against the build's selection,
 * and runs the server until SIGTERM/SIGINT.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "reload.h"
#include "server.h"
#include "registry.h"
#include "cmdline.h"

/* The file -c/--config named, for reload on SIGHUP; NULL in
 * command-line mode.  cmdline.c has checked the arguments already. */
static const char *
main_config_path(int argc, char **argv)
{
  const char *path = NULL;
  int i;

  for (i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
    if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) &&
        i + 1 < argc)
      path = argv[++i];
    else if (strncmp(argv[i], "--config=", 9) == 0)
      path = argv[i] + 9;
    else if (strncmp(argv[i], "-c", 2) == 0)   /* -cFILE */
      path = argv[i] + 2;
  }
  return path;
}

int
main(int argc, char **argv)
{
  struct nbd_config cfg;
  char err[256];
  int r, drained;

  if (registry_self_check(err, sizeof err) == -1) {
    fprintf(stderr, "nbdstack: registry self-check failed: %s\n", err);
    return 1;
  }
  memset(&cfg, 0, sizeof cfg);
  r = cmdline_parse(argc, argv, &cfg);
  if (r != 0)
    return r == 1 ? 0 : 1;
  reload_init(&cfg, main_config_path(argc, argv));
  r = server_run(&cfg, &drained);
  if (drained)
    config_free(&cfg);
  return r < 0 ? 1 : r;
}
