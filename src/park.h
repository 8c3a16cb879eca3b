/* nbdstack park (park.c): idle connections without a thread. */
#ifndef NBDSTACK_PARK_H
#define NBDSTACK_PARK_H

#include "conn.h"

/* What a connection waits before it parks: idle this long with nothing
 * in flight, its thread goes (wire.h, park_ns). */
#define PARK_AFTER_NS (1000u * 1000000u)

/* Starts the event loop; wake is called on its thread with each parked
 * connection whose socket became readable (a request, end of file or an
 * error), which is then no longer parked.  0, or -1 (logged). */
int park_start(void (*wake)(struct nbd_conn *c));
/* Takes c, whose reader gave up its thread (c->w.parked): from now on
 * c belongs to park.c until wake gets it back.  idle_left_ns: after
 * that long still idle, its socket is shut (the idle timeout); 0 =
 * never.  0, or -1 when c cannot be parked (the caller keeps it). */
int park_add(struct nbd_conn *c, uint64_t idle_left_ns);
/* Stops the loop (after every connection is gone). */
void park_stop(void);

#endif
