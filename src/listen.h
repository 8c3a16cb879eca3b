/* nbdstack listen addresses: what a `listen = ...` value, -U, -i or -p
 * asks the server to listen on, parsed and checked (listen.c) but not
 * resolved or bound (server.c does that).
 */
#ifndef NBDSTACK_LISTEN_H
#define NBDSTACK_LISTEN_H

#include <stddef.h>

#define LISTEN_DEFAULT_PORT "10809"     /* IANA port of NBD */

enum nbd_listen_kind { NBD_LISTEN_UNIX, NBD_LISTEN_TCP };

struct nbd_listen {
  enum nbd_listen_kind kind;
  char *path;                   /* unix */
  char *host;                   /* tcp: NULL or "" = all addresses */
  char *port;                   /* tcp: "10809" by default */
};

/* Parses "unix:/path", "tcp:host:port", "tcp:[v6]:port", "tcp:port",
 * "tcp:host" (port 10809), "/path" (unix) or "host:port"; 0 or -1 with err
 * filled.  On 0 the strings in out are malloc'd: listen_clear. */
int listen_parse(const char *text, struct nbd_listen *out, char *err,
                 size_t errlen);
/* Frees the strings of l and zeroes it. */
void listen_clear(struct nbd_listen *l);

#endif
