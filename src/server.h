/* nbdstack server entry point (server.c). */
#ifndef NBDSTACK_SERVER_H
#define NBDSTACK_SERVER_H

#include "config.h"

/* Listens, serves until SIGTERM/SIGINT, drains; 0 or -1 (already logged). */
int server_run(const struct nbd_config *cfg);

#endif
