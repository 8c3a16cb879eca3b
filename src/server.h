/* nbdstack server entry point (server.c). */
#ifndef NBDSTACK_SERVER_H
#define NBDSTACK_SERVER_H

#include "config.h"

/* Listens, serves until SIGTERM/SIGINT (or until the --run command exits),
 * drains.  Returns the exit status for main: 0, the --run command's
 * status, or -1 on an error (already logged). */
int server_run(const struct nbd_config *cfg);

#endif
