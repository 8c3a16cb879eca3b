/* nbdstack wire I/O (wire.c): the one place that touches a connection's
 * socket.  Buffered reads, vectored reply writes under one lock, and the
 * batching of small replies while requests run inline on the reader.
 * Bytes move through a pair of functions chosen per connection: the
 * plain socket's, or a TLS session's after STARTTLS (tls.c); no code
 * above calls recv or sendmsg, and none knows which pair is in use. */
#ifndef NBDSTACK_WIRE_H
#define NBDSTACK_WIRE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "iopolicy.h"

struct nbd_wire;

/* How bytes move.  recvv is recvmsg's contract (flags MSG_DONTWAIT and
 * MSG_WAITALL; the socket's receive timeout is rcvtimeo; -1 with errno
 * EAGAIN when it passed), sendv sendmsg's (some bytes, or -1; called
 * under wlock).  close_notify ends the stream in order (TLS); free
 * releases the session.  park, before an idle reader parks (wire_park):
 * -1 when the session holds input that the socket no longer shows (the
 * reader must read it, not wait for the socket), else 0; with drop set
 * (called under wlock), it also gives back the memory an idle session
 * can do without.  NULL: nothing held (the plain socket). */
struct wire_io {
  ssize_t (*recvv)(struct nbd_wire *w, struct iovec *iov, int n, int flags);
  ssize_t (*sendv)(struct nbd_wire *w, struct iovec *iov, int n);
  void (*close_notify)(struct nbd_wire *w);
  void (*free)(struct nbd_wire *w);
  int (*park)(struct nbd_wire *w, int drop);
};

struct nbd_wire {
  int fd;
  const struct wire_io *io;     /* plain, or TLS after STARTTLS */
  void *session;                /* the TLS session (tls.c) */
  uint64_t rcvtimeo, sndtimeo;  /* the socket's timeouts, ns; 0 = none */
  const char *peer;             /* for log lines */
  uint64_t deadline;            /* CLOCK_MONOTONIC ns to finish the
                                   handshake; 0 = none */
  /* Buffered input: requests are parsed out of rbuf. */
  char *rbuf;
  size_t rpos, rlen, rcap;
  int at_request;               /* the reader waits for a new request */
  /* Parking (park.c): with park_ns set, a reader that waits that long
   * for a new request with none in flight gives up instead (wire_read
   * fails with parked set and rbuf freed), so that its thread can go
   * and the idle socket wait in park.c's event loop.  0 = never. */
  uint64_t park_ns;
  int parked;
  /* Requests in flight (set by the scheduler): the idle timeout closes a
   * connection only when there are none. */
  atomic_uint busy;
  /* Replies. */
  pthread_mutex_t wlock;
  int write_failed;
  char *obuf;                   /* batched small replies (inline mode) */
  pthread_t batch_owner;        /* the reader: only its replies batch */
  size_t olen;
  struct nbd_iopolicy pol;
  /* wire_splice's pipe, made at its first use; spipe_ok says it is. */
  int spipe[2];
  int spipe_ok;
  /* Time wire_splice spent taking input (waiting for the client, mostly):
   * the scheduler leaves it out of how long a request took. */
  uint64_t splice_in_ns;
};

void wire_init(struct nbd_wire *w, int fd, const char *peer,
               uint64_t poll_ns, uint64_t coalesce_ns);
/* Frees the buffers; does not close fd. */
void wire_destroy(struct nbd_wire *w);

/* Reads exactly len bytes (buffered); 0, or -1 on EOF/error. */
int wire_read(struct nbd_wire *w, void *buf, size_t len);
/* The same into every iovec, in order (the array is changed). */
int wire_readv(struct nbd_wire *w, struct iovec *iov, int n);
/* The next len bytes of input when all of them are buffered already,
 * consumed: the pointer stays valid until the next read from w.  NULL
 * (nothing consumed) when they are not all there. */
const void *wire_take(struct nbd_wire *w, size_t len);
/* Discards len bytes of input; 0 or -1. */
int wire_skip(struct nbd_wire *w, size_t len);
/* Whether wire_splice can move input (a plain socket, not TLS). */
int wire_can_splice(const struct nbd_wire *w);
/* Moves the next len bytes of input to out: to a stream socket when off
 * is NULL, else to a file at *off (advanced).  What is buffered goes
 * with send or pwrite, the rest with splice(2) through a pipe, never
 * through user space.  *moved counts the bytes taken from the input.
 * 0; -1 when reading the input failed (the connection is dead); -2 when
 * writing to out failed, errno saying why (the rest of the len bytes is
 * still to read). */
int wire_splice(struct nbd_wire *w, int out, int64_t *off, uint64_t len,
                uint64_t *moved);
/* Bytes of input that have arrived: buffered, and in the socket (plain
 * connections; TLS counts what is buffered only). */
uint64_t wire_ready(struct nbd_wire *w);
/* Bytes already read from the socket and not consumed. */
static inline size_t
wire_buffered(const struct nbd_wire *w)
{
  return w->rlen - w->rpos;
}

/* Writes all iovecs under the reply lock (into the batch when batching);
 * 0 or -1. */
int wire_writev(struct nbd_wire *w, struct iovec *iov, int n);
/* Reply batching, for requests run inline on the reader thread: replies
 * are held until the reader is about to wait for input. */
int wire_batch_start(struct nbd_wire *w);
void wire_batch_stop(struct nbd_wire *w);
int wire_flush(struct nbd_wire *w);
/* A small reply built in place in the batch: wire_reserve returns room
 * for len bytes at the end of the batch (sending the batch first when it
 * is too full), holding the reply lock, or NULL when not batching, len is
 * not small, or the connection failed.  wire_commit adds the first len
 * bytes of that room to the batch (0: none) and releases the lock. */
char *wire_reserve(struct nbd_wire *w, size_t len);
void wire_commit(struct nbd_wire *w, size_t len);
/* Whether wire_reserve(w, len) would give room (the connection may fail
 * meanwhile). */
int wire_can_reserve(const struct nbd_wire *w, size_t len);

/* A reply whose data goes out straight from a layer's storage (the
 * nbd_sink of pread_to), while requests run inline on a plain socket:
 * wire_push_begin takes the reply lock and sends the batch; each
 * wire_push sends what the socket takes at once, header first, without
 * waiting, and copies the rest into spill (room for every data byte),
 * so the layer's storage is free again when it returns; wire_push_end
 * sends what is left and releases the lock.  Ended with ok = 0 before
 * any data, nothing was sent (0: the caller may send an error reply);
 * after some, the connection is dead (-1). */
struct wire_push {
  struct nbd_wire *w;
  unsigned char hdr[64];
  size_t hlen, hsent;           /* the reply's header, and how much left */
  char *spill;
  size_t off;                   /* data bytes taken */
  size_t spill_from;            /* data bytes from here on are in spill */
  int spilling;
};
int wire_can_push(const struct nbd_wire *w);
int wire_push_begin(struct wire_push *p, struct nbd_wire *w, const void *hdr,
                    size_t hlen, char *spill);
int wire_push(struct wire_push *p, const struct iovec *iov, int n);
int wire_push_end(struct wire_push *p, int ok);

/* Sets the receive (and send) timeout of the socket; 0 = none. */
void wire_set_timeout(struct nbd_wire *w, uint64_t ns, int send_too);
/* A send buffer with room for a few whole replies (Unix sockets). */
void wire_size_sndbuf(struct nbd_wire *w);
/* SHUT_WR or SHUT_RDWR first ends a TLS session in order (close_notify). */
void wire_shutdown(struct nbd_wire *w, int how);

/* NBD_OPT_STARTTLS was acknowledged: the TLS handshake, then every byte
 * goes through the session.  0, or -1 (drop the connection): no TLS,
 * input already buffered (the client did not wait for the reply), or a
 * failed handshake. */
int wire_starttls(struct nbd_wire *w);
/* 1 when the connection runs TLS. */
int wire_is_tls(const struct nbd_wire *w);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t nbd_now_ns(void);

#endif
