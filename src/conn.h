/* nbdstack: one client connection, from accept to close.
 *
 * server.c accepts and starts a thread per connection that runs the
 * handshake (handshake.c) then the request loop (transmission.c).  The
 * connection's own thread reads requests; requests of stacks that may
 * block are handed to a small per-connection pool of workers so they run
 * concurrently, others run inline on the reader (no handoff).  Replies are
 * written whole, one locked vectored write each.
 */
#ifndef NBDSTACK_CONN_H
#define NBDSTACK_CONN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/uio.h>

#include "config.h"
#include "engine.h"

struct nbd_request {
  uint16_t flags, type;
  uint64_t cookie;
  uint64_t offset;
  uint32_t count;
  char *buf;                    /* payload of a write, data of a read */
  size_t bufcap;
  int pull;                     /* a write whose payload is still in the
                                   socket, for the stack's pwrite_from */
  struct nbd_request *next;     /* queue / free list */
};

struct nbd_conn {
  int fd;
  const struct nbd_config *cfg;
  char peer[64];                /* for log lines */
  uint64_t deadline;            /* CLOCK_MONOTONIC ns to finish the
                                   handshake; 0 = none */
  int counted;                  /* counted in exp->nconnections */
  /* Admission (server.c, lobby.c): where the client comes from (TCP
   * address, or "pid N" of a Unix peer; "" = unknown), whether it was
   * greeted already, and (under server.c's lock) whether it is still in
   * its handshake and whether the server closed it to make room for a
   * newer client. */
  char source[64];
  int greeted;
  int handshaking, evicted;

  /* Buffered input: requests are parsed out of rbuf. */
  char *rbuf;
  size_t rpos, rlen, rcap;

  /* Negotiated in the handshake. */
  struct nbd_export *exp;
  struct nbd_ctx *top;
  int readonly;
  int no_zeroes;
  int structured;
  int meta_base_allocation;     /* base:allocation selected */
  char *meta_export;            /* export the meta context was set for */
  uint16_t tflags;
  uint32_t max_payload;         /* what we advertised as maximum */
  int serial_lock_held;         /* holds exp->lock for the whole connection */
  int wrote;                    /* a write, trim or zero ran (atomic) */
  unsigned nohole_reads;        /* reads in a row without zeros (atomic) */

  /* Replies. */
  pthread_mutex_t wlock;
  int write_failed;
  char *obuf;                   /* batched small replies (inline mode) */
  size_t olen;
  unsigned spin_skip, spin_backoff;  /* see conn_spin() */
  /* Coalescing (see conn_coalesce()). */
  int at_request;               /* the reader waits for a new request */
  int coal_on, coal_slack_set;
  unsigned coal_skip, coal_backoff, coal_stop;
  unsigned long coal_tries, coal_batches;  /* gatherings, and those kept */

  /* Workers (only when the stack may block). */
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

  struct nbd_conn *prev, *next; /* server's list of live connections */
};

/* conn.c */
/* A connection on an accepted socket fd (peer defaults to "unix client
 * fd N"); NULL when out of memory. */
struct nbd_conn *conn_new(int fd, const struct nbd_config *cfg);
/* Frees what conn_new and conn_run allocated; does not close fd. */
void conn_free(struct nbd_conn *c);
/* A connection's life in three steps (server.c calls them in turn):
 * the handshake (0 to go on to transmission, -1 to close), the request
 * loop, and the end: flush what the client wrote (a failure is counted
 * as unwritten data, see stop.h) and close its stack. */
int conn_handshake(struct nbd_conn *c);
void conn_transmit(struct nbd_conn *c);
void conn_finish(struct nbd_conn *c);
/* The three in one (the fuzz harnesses). */
void conn_run(struct nbd_conn *c);
/* Closes the connection's stack, if open, and gives back what opening it
 * took: the export's serialising lock and its connection count. */
void conn_release_export(struct nbd_conn *c);
/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t conn_now_ns(void);
/* Reads exactly len bytes (buffered); 0, or -1 on EOF/error. */
int conn_read(struct nbd_conn *c, void *buf, size_t len);
/* The same into every iovec, in order (the array is changed). */
int conn_readv(struct nbd_conn *c, struct iovec *iov, int n);
/* Discards len bytes of input; 0 or -1. */
int conn_skip(struct nbd_conn *c, size_t len);
/* Writes all iovecs under the reply lock (into the batch when batching);
 * 0 or -1. */
int conn_writev(struct nbd_conn *c, struct iovec *iov, int n);
/* Reply batching, for requests run inline on the reader thread: replies
 * are held until the reader is about to wait for input. */
int conn_batch_start(struct nbd_conn *c);
void conn_batch_stop(struct nbd_conn *c);
int conn_flush(struct nbd_conn *c);
/* Sets the receive (and send) timeout of the socket; 0 = none. */
void conn_set_timeout(struct nbd_conn *c, uint64_t ns, int send_too);
/* Maps -errno to an NBD error value (one table). */
uint32_t conn_nbd_error(int err);

/* handshake.c: handshake_greet sends the server's greeting (0 or -1);
 * handshake_run sends it unless that was done, and negotiates: returns 0
 * to enter transmission, -1 to close. */
int handshake_greet(struct nbd_conn *c);
int handshake_run(struct nbd_conn *c);

/* transmission.c: the request loop until DISC, EOF or a violation. */
void transmission_run(struct nbd_conn *c);

#include "stop.h"

/* Big-endian helpers. */
static inline void
wire_put16(unsigned char *p, uint16_t v)
{
  p[0] = v >> 8; p[1] = v;
}
static inline void
wire_put32(unsigned char *p, uint32_t v)
{
  p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static inline void
wire_put64(unsigned char *p, uint64_t v)
{
  wire_put32(p, v >> 32); wire_put32(p + 4, (uint32_t)v);
}
static inline uint16_t
wire_get16(const unsigned char *p)
{
  return (uint16_t)(p[0] << 8 | p[1]);
}
static inline uint32_t
wire_get32(const unsigned char *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t
wire_get64(const unsigned char *p)
{
  return (uint64_t)wire_get32(p) << 32 | wire_get32(p + 4);
}

#endif
