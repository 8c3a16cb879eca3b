/* nbdstack sockets (sockets.c) and socket activation (activation.c). */
#ifndef NBDSTACK_SOCKETS_H
#define NBDSTACK_SOCKETS_H

#include <stddef.h>

#include "config.h"

#define SOCKETS_MAX 64

struct nbd_listener {
  char *unlink_path;            /* Unix socket we created */
  int fd;
  char desc[128];
  char spec[300];               /* the listen address it was bound for,
                                   "" = inherited (reload compares these) */
};

/* Binds what cfg asks for, or takes the sockets systemd passed; 0, or
 * -1 after logging why (nothing is left open then). */
int sockets_open(const struct nbd_config *cfg);
/* Adds a listening fd (path: a Unix socket to remove at close). */
int sockets_add(int fd, const char *path, const char *desc);
size_t sockets_count(void);
const struct nbd_listener *sockets_get(size_t i);
/* Reload: binds the listen addresses of cfg not bound yet, then closes
 * the listeners of addresses cfg no longer has (removing their Unix
 * sockets).  On a failure to bind, closes what it just bound and returns
 * -1 (logged), leaving the running listeners as they were.  Inherited
 * sockets are never touched. */
int sockets_update(const struct nbd_config *cfg);
/* Binds ln as a listen address would be, but apart from the NBD
 * listeners (the metrics endpoint): at most max sockets into out (the
 * caller closes them and removes unlink_path); their number, or -1
 * after logging why (nothing left open). */
int sockets_bind_apart(const struct nbd_listen *ln, struct nbd_listener *out,
                       size_t max);
/* Closes every listener and removes the Unix sockets we created. */
void sockets_close(void);

/* activation.c: the fds systemd passed (LISTEN_PID is us), at most max,
 * into fds; their number (0 = none).  Unsets the variables. */
int activation_fds(int *fds, int max);

#endif
