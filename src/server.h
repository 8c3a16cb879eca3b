/* nbdstack server entry point (server.c). */
#ifndef NBDSTACK_SERVER_H
#define NBDSTACK_SERVER_H

#include "config.h"

/* Listens, serves until SIGTERM/SIGINT (or until the --run command exits),
 * drains.  Returns the exit status for main: 0, the --run command's
 * status, 1 when acknowledged writes may not have reached storage, or -1
 * on an error (already logged).  *drained is 0 when connections were
 * still running at exit (after a second signal): cfg must not be freed
 * then, their layers are still in use. */
int server_run(const struct nbd_config *cfg, int *drained);

#endif
