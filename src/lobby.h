/* nbdstack lobby (lobby.c): accepted clients that have not spoken yet. */
#ifndef NBDSTACK_LOBBY_H
#define NBDSTACK_LOBBY_H

#include <poll.h>

#include "conn.h"

/* Takes c (greeted, deadline set).  When the lobby holds max clients, or
 * per_source from c's source, the oldest of them is closed first. */
void lobby_add(struct nbd_conn *c, unsigned max, unsigned per_source);
/* Fills pfd with the lobby's sockets (at most n); returns how many. */
size_t lobby_pollfds(struct pollfd *pfd, size_t n);
/* After poll: removes and returns the next client (from pfd[*pos] on,
 * *pos advanced) whose socket is readable (it spoke, or hung up), or
 * NULL.  pfd as filled above. */
struct nbd_conn *lobby_take_ready(const struct pollfd *pfd, size_t n,
                                  size_t *pos);
/* Closes clients past their handshake deadline. */
void lobby_expire(uint64_t now);
/* Closes every client left (shutdown). */
void lobby_clear(void);
size_t lobby_count(void);

#endif
