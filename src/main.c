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
#include "server.h"
#include "registry.h"
#include "cmdline.h"

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
  r = server_run(&cfg, &drained);
  if (drained)
    config_free(&cfg);
  return r < 0 ? 1 : r;
}
