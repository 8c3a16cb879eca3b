/* nbdstack request scheduling (scheduler.c): where a connection's requests
 * run (inline on the reader, or on its pool of workers, with the move
 * from one to the other), their request objects and buffers (within the
 * server-wide budget of bufmem.c), and the bounds on what is in flight. */
#ifndef NBDSTACK_SCHEDULER_H
#define NBDSTACK_SCHEDULER_H

#include "conn.h"

/* How long the stack took over one inline request, and whether the
 * thread slept meanwhile.  The reply is not part of it: a send that
 * waits for a slow client says nothing about the layers. */
struct sched_timing {
  uint64_t t0;                  /* in: when the request started */
  long nvcsw;                   /* in: voluntary switches before, or -1 */
  uint64_t took;                /* out: ns in the stack */
  int slept;                    /* out: nvcsw given, over 20 us, and it
                                   slept meanwhile */
};

/* Runs a request and sends its reply; -1 if the connection is dead.
 * tm (NULL on workers) is to be stopped with sched_timing_stop once the
 * stack is done, before the reply. */
typedef int sched_exec_fn(struct nbd_conn *c, struct nbd_request *r,
                          struct sched_timing *tm);

struct nbd_sched {
  int inl;                      /* requests run on the reader */
  int adaptive;                 /* ... until they turn out to block */
  int pull;                     /* writes read by the stack (pwrite_from) */
  int can_async;                /* reads and writes may go to submit */
  int async;                    /* ... and one did: wait for them too */
  sched_exec_fn *exec;
  struct sched_timing tm;
  unsigned window, slow, probe; /* see sched_adapt() */
  unsigned heavy, waits;
};

/* Chooses where c's requests run; 0, or -1 when out of memory. */
int sched_start(struct nbd_conn *c, struct nbd_sched *s, sched_exec_fn *exec);
/* Before reading the next request: waits while too much is in flight;
 * -1 when a worker found the connection dead. */
int sched_room(struct nbd_conn *c, struct nbd_sched *s);
/* Runs r (inline) or queues it (workers); -1 when the connection is
 * dead.  r belongs to the scheduler afterwards. */
int sched_submit(struct nbd_conn *c, struct nbd_sched *s,
                 struct nbd_request *r);
/* Every request read still completes; then the workers end and the
 * request objects are freed. */
void sched_stop(struct nbd_conn *c, struct nbd_sched *s);

/* A request handed to the stack's submit (transmission.c) counts as in
 * flight from sched_track until sched_done (from the thread that
 * completes it, after its reply; dead: the reply could not be sent),
 * which takes r back; sched_untrack when submit refused it at once. */
void sched_track(struct nbd_conn *c, struct nbd_sched *s,
                 struct nbd_request *r);
void sched_untrack(struct nbd_conn *c, struct nbd_request *r);
void sched_done(struct nbd_conn *c, struct nbd_request *r, int dead);

struct nbd_request *sched_get(struct nbd_conn *c);
void sched_put(struct nbd_conn *c, struct nbd_request *r);
/* A buffer of at least len bytes for r, within the server-wide budget:
 * when it is spent, the reader waits here, reading nothing more from its
 * socket.  0, -ENOMEM, or -ESHUTDOWN when the wait was cut short. */
int sched_reserve(struct nbd_conn *c, struct nbd_request *r, size_t len);
void sched_timing_stop(struct sched_timing *tm);

#endif
