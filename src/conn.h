/* nbdstack: one client connection, from accept to close.
 *
 * server.c accepts and starts a thread per connection (once the client
 * has spoken) that runs the handshake (handshake.c), then the request
 * loop (transmission.c).  Below them, calls go one way:
 *
 *   conn.c ─▶ handshake.c ───────────────────┐
 *         └─▶ transmission.c ─▶ scheduler.c   │
 *                  │                  │       ▼
 *                  └─▶ protocol.c ────┴──▶ wire.c ─▶ iopolicy.c
 *
 * wire.c is the only file that touches the socket; protocol.c encodes
 * and checks requests and replies; scheduler.c runs requests inline or
 * on a per-connection pool of workers (calling transmission.c's exec
 * back through a pointer); iopolicy.c holds the heuristics.
 */
#ifndef NBDSTACK_CONN_H
#define NBDSTACK_CONN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/uio.h>

#include "config.h"
#include "engine.h"
#include "wire.h"

struct sched_timing;

struct nbd_request {
  uint16_t flags, type;
  uint64_t cookie;
  uint64_t offset;
  uint64_t count;               /* effect length (a write's: its payload) */
  uint64_t payload;             /* bytes that follow the header */
  int ext;                      /* the header was extended (32 bytes) */
  unsigned meta;                /* block status: contexts to answer, a
                                   bit per protocol.c's proto_meta */
  char *buf;                    /* payload of a write, data of a read */
  size_t bufcap;
  int pull;                     /* a write whose payload is still in the
                                   socket, for the stack's pwrite_from */
  const char *data;             /* a write's payload in the wire's input
                                   buffer (run inline), or NULL */
  /* Run by the layer's submit (transmission.c): what it was given, the
   * connection to reply on, and when it started (metrics). */
  struct nbd_async async;
  struct nbd_conn *conn;
  uint64_t t0;
  struct nbd_request *next;     /* queue / free list */
};

struct nbd_conn {
  struct nbd_wire w;            /* the socket (w.fd) and its buffers */
  /* The export set the connection was accepted with (reload.c); with
   * set_ref, conn_free drops the reference server.c took on it. */
  const struct nbd_config *cfg;
  int set_ref;
  char peer[64];                /* for log lines */
  int counted;                  /* counted in exp->nconnections */
  /* Admission (server.c, lobby.c): where the client comes from (TCP
   * address, or "pid N" of a Unix peer; "" = unknown), whether it was
   * greeted already, and (under server.c's lock) whether it is still in
   * its handshake and whether the server closed it to make room for a
   * newer client. */
  char source[64];
  struct nbd_conn_info info;    /* what layers may know (layer.h) */
  /* Before the handshake (conn_preconnect): refused[i] is set when the
   * i-th export of cfg refused this client (its stack's preconnect). */
  unsigned char *refused;
  size_t nrefused;
  int greeted;
  int handshaking, evicted;

  /* Negotiated in the handshake. */
  struct nbd_export *exp;
  struct nbd_ctx *top;
  int readonly;
  int no_zeroes;
  int fixed;                    /* the client speaks fixed newstyle */
  int structured;               /* structured replies (or extended) */
  int extended;                 /* extended headers (implies structured) */
  unsigned meta;                /* selected contexts, a bit per
                                   protocol.c's proto_meta; id = bit + 1 */
  char *meta_export;            /* export the meta context was set for */
  char *asked_name;             /* export name the client asked for */
  uint16_t tflags;
  uint32_t max_payload;         /* what we advertised as maximum */
  int serial_lock_held;         /* holds exp->lock for the whole connection */
  int wrote;                    /* a write, trim or zero ran (atomic) */
  int disc;                     /* the client ended it with NBD_CMD_DISC */
  /* For the disconnect log line (conn.c): counted by the reader thread
   * alone (transmission.c), read by it at the end, so no lock and no
   * atomics on the data path. */
  uint64_t started_ns, nrequests, bytes_read, bytes_written;
  struct metrics_shard *metrics; /* where it counts (metrics.c), or NULL */

  /* Requests (scheduler.c). */
  pthread_mutex_t qlock;
  pthread_cond_t qcond;         /* work queued or stopping */
  pthread_cond_t donecond;      /* a request finished */
  struct nbd_request *qhead, *qtail;
  struct nbd_request *freelist;
  unsigned nfree;
  size_t nfree_bytes;           /* buffer bytes kept in the free list */
  _Atomic uint64_t buf_inuse;   /* buffer bytes of requests in flight */
  unsigned nworkers, nidle, inflight;
  uint64_t inflight_bytes;
  int stopping;
  pthread_t *workers;
  /* What a worker runs (transmission.c's, through scheduler.c). */
  int (*exec)(struct nbd_conn *, struct nbd_request *,
              struct sched_timing *);

  struct nbd_conn *prev, *next; /* server's list of live connections */
  /* Parked (park.c): its list, under its lock; when the idle timeout
   * shuts the socket (0 = never); added to its epoll set once. */
  struct nbd_conn *park_prev, *park_next;
  uint64_t park_deadline;
  int park_registered;
};

/* conn.c */
/* A connection on an accepted socket fd (peer defaults to "unix client
 * fd N"); NULL when out of memory. */
struct nbd_conn *conn_new(int fd, const struct nbd_config *cfg);
/* Frees what conn_new and conn_run allocated; does not close fd. */
void conn_free(struct nbd_conn *c);
/* Asks every export's stack whether this client may come in (the
 * preconnect method), before the greeting; 0 when one export at least
 * lets it in (the others then refuse it in the handshake), -1 when all
 * refuse (logged: the caller closes the socket). */
int conn_preconnect(struct nbd_conn *c);
/* Whether export e (of c->cfg) refused this client before the
 * handshake. */
int conn_refused(const struct nbd_conn *c, const struct nbd_export *e);
/* A connection's life in three steps (server.c calls them in turn):
 * the handshake (0 to go on to transmission, -1 to close), the request
 * loop, and the end: flush what the client wrote (a failure is counted
 * as unwritten data, see stop.h) and close its stack. */
int conn_handshake(struct nbd_conn *c);
void conn_transmit(struct nbd_conn *c);
void conn_finish(struct nbd_conn *c);
/* The three in one (the fuzz harnesses). */
void conn_run(struct nbd_conn *c);

/* handshake.c: handshake_greet sends the server's greeting (0 or -1);
 * handshake_run sends it unless that was done, and negotiates: returns 0
 * to enter transmission, -1 to close.  handshake_release closes the
 * connection's stack, if open, and gives back what opening it took: the
 * export's serialising lock and its connection count. */
int handshake_greet(struct nbd_conn *c);
int handshake_run(struct nbd_conn *c);
void handshake_release(struct nbd_conn *c);

/* transmission.c: the request loop until DISC, EOF or a violation. */
void transmission_run(struct nbd_conn *c);

#endif
