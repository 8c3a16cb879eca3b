/* nbdstack URIs (uri.c): the NBD URI of a listen address and an export,
 * as the NBD URI specification writes them (nbd://, nbd+unix://), for
 * --run's $uri, --print-uri and the startup log. */
#ifndef NBDSTACK_URI_H
#define NBDSTACK_URI_H

#include <stddef.h>

#include "listen.h"

/* Room for the longest: a 4096-byte export name and a 107-byte socket
 * path, every byte percent-encoded, and a host. */
#define URI_MAX (3 * 4096 + 3 * 108 + 128)

/* Writes into uri (len >= URI_MAX) the URI of export name on l: a Unix
 * socket as nbd+unix:///NAME?socket=PATH, TCP as nbd://HOST:PORT/NAME
 * (no host, or all addresses: localhost).  tls: nbds / nbds+unix. */
void uri_build(char *uri, size_t len, const struct nbd_listen *l,
               const char *name, int tls);
/* The same for a bound listening socket, from getsockname (the real
 * port of port 0); 0, or -1 when fd is neither AF_UNIX nor TCP. */
int uri_of_socket(char *uri, size_t len, int fd, const char *name, int tls);

#endif
