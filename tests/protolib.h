/* nbdstack protocol-test harness: the server's connection code and a small
 * blocking NBD client in one process, for check_handshake (option parsing,
 * handshake.c) and check_transmission (requests and replies,
 * transmission.c and conn.c).
 *
 * Each test builds a config (checked fixture: setup_config and friends),
 * and tc_start sets up a struct nbd_conn on one end of a socketpair
 * exactly as server.c's server_accept does, runs conn_run on it in a
 * thread, and gives the test the other end.  The client's socket has
 * CLIENT_TIMEOUT send and receive timeouts, so a server that stops
 * answering fails the test instead of hanging it.  The config is built per
 * test, so data written by one test is never seen by another.
 *
 * The client functions assert what every exchange needs (magic numbers,
 * cookies, lengths that fit) and abort the test otherwise; what the server
 * answered is for the tests to check.  The names are short (tc_, cl_, hs_,
 * req_, simple_, chunk_) because every test body is made of them.
 */
#ifndef NBDSTACK_PROTOLIB_H
#define NBDSTACK_PROTOLIB_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "conn.h"
#include "engine.h"
#include "params.h"
#include "registry.h"
#include "protocol.h"

#define KIB             ((uint32_t)1024)
#define MIB             ((uint32_t)1 << 20)
#define DISK_SIZE       ((uint64_t)MIB)
#define HOLE_TYPE       (NBD_EXTENT_HOLE | NBD_EXTENT_ZERO)   /* 3 */
#define CLIENT_TIMEOUT  5               /* seconds, per socket operation */

/* What a 1 MiB writable memory export can serve, bit by bit: flush, FUA,
 * trim, write zeroes (and fast zero), multi-conn and cache; never
 * rotational or read-only.  SEND_DF only with structured replies. */
#define MEM_TFLAGS (NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |               \
                    NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |                 \
                    NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_CAN_MULTI_CONN |   \
                    NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_FAST_ZERO)
/* The same export read-only: nothing that writes is offered. */
#define RO_TFLAGS  (NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY |                \
                    NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN |          \
                    NBD_FLAG_SEND_CACHE)

/* ---- the config ---------------------------------------------------------- */

/* The config every connection of the current test serves. */
extern struct nbd_config cfg;

/* Two 1 MiB memory exports, "" and "ro" (read-only, description "read
 * only"); needs the memory backend. */
void setup_config(void);
/* The same with every request on the worker pool (inline = no). */
void setup_config_workers(void);
/* The default export "" served by ops alone, not yet set up; returns
 * its layer. */
struct nbd_layer *setup_config_backend(const struct nbd_layer_ops *ops);
/* The default export served by slowpoke or slowflush (below), their
 * counters reset.  slowflush keeps writes (struct nbd_layer,
 * keeps_writes), slowflush_plain does not. */
void setup_config_slow(void);
void setup_config_slowflush(void);
void setup_config_slowflush_plain(void);
/* "spinwrite" (below), its writes serialised in the kernel or not. */
void setup_config_spinwrite_serial(void);
void setup_config_spinwrite_parallel(void);
void teardown_config(void);

/* ---- one connection ------------------------------------------------------- */

struct tc {
  int fd;                       /* the client's end */
  pthread_t tid;
  struct nbd_conn *c;           /* the server's end */
  uint32_t meta_id;             /* from SET_META_CONTEXT, when negotiated */
};

void tc_start(struct tc *t);
/* Closes the client end, waits for the connection to end and frees it as
 * server_conn_thread does. */
void tc_end(struct tc *t);
/* tc_start, a fixed-newstyle handshake with NO_ZEROES, optionally
 * structured replies and base:allocation, then GO on export name; returns
 * the transmission flags. */
uint16_t tc_connect(struct tc *t, const char *name, int structured,
                    int meta);

/* ---- client I/O ------------------------------------------------------------ */

void cl_send(struct tc *t, const void *buf, size_t len);
/* Reads exactly len bytes: 0, or -1 on EOF, error or timeout. */
int cl_recv(struct tc *t, void *buf, size_t len);
/* cl_recv that must succeed. */
void cl_read(struct tc *t, void *buf, size_t len);
/* The server must have closed its end: the next read is EOF (or a reset,
 * when it closed with our bytes unread), not data and not a timeout. */
void cl_expect_eof(struct tc *t);

int is_zero(const unsigned char *p, size_t len);
/* Never-zero bytes that depend on the disk offset, so misplaced data and
 * data read back as a hole are both caught. */
void pattern(unsigned char *p, size_t len, uint64_t off);
unsigned char *xmalloc(size_t len);

/* ---- handshake client ------------------------------------------------------ */

/* One option reply. */
struct rep {
  uint32_t opt, type, len;
  unsigned char data[2 * NBD_MAX_STRING + 64];
};

/* What the replies to one INFO or GO said. */
struct info_res {
  uint32_t final;               /* ACK or the error type */
  int nexport, nblock, ndesc, nname;
  uint64_t size;
  uint16_t tflags;
  uint32_t bmin, bpref, bmax;
  char desc[NBD_MAX_STRING + 1], name[NBD_MAX_STRING + 1];
};

/* Reads the greeting, checks it, and answers with the client flags. */
void hs_start(struct tc *t, uint32_t cflags);
void opt_send(struct tc *t, uint32_t opt, const void *data, uint32_t len);
void rep_read(struct tc *t, struct rep *r);
/* Reads one reply and checks it answers opt with the given type. */
void rep_expect(struct tc *t, uint32_t opt, uint32_t type, struct rep *r);
/* Sends INFO or GO and reads every reply up to the ACK or an error. */
void hs_info(struct tc *t, uint32_t opt, const char *name,
             const uint16_t *reqs, uint16_t nreqs, struct info_res *res);
/* GO that must succeed; returns the transmission flags. */
uint16_t hs_go(struct tc *t, const char *name);
void hs_structured(struct tc *t);
/* SET_META_CONTEXT data: export name, one query; returns its length. */
uint32_t meta_data(unsigned char *buf, const char *name, const char *query);
/* SET_META_CONTEXT base:allocation that must succeed; keeps the id. */
void hs_meta(struct tc *t, const char *name);

/* ---- transmission client ---------------------------------------------------- */

/* One structured reply chunk. */
struct chunk {
  uint16_t flags, type;
  uint64_t cookie;
  uint32_t len;
  unsigned char *data;          /* len bytes, malloc'd */
};

void req_send(struct tc *t, uint16_t flags, uint16_t type, uint64_t cookie,
              uint64_t offset, uint32_t count, const void *payload);
/* Reads a simple reply header for cookie; returns its error. */
uint32_t simple_reply(struct tc *t, uint64_t cookie);
/* A request with no payload and no data in its reply; returns the error. */
uint32_t simple_cmd(struct tc *t, uint16_t flags, uint16_t type,
                    uint64_t cookie, uint64_t offset, uint32_t count);
uint32_t simple_write(struct tc *t, uint64_t cookie, uint64_t offset,
                      const void *buf, uint32_t count);
/* A READ with simple replies; on success the data is in buf. */
uint32_t simple_read(struct tc *t, uint64_t cookie, uint64_t offset,
                     void *buf, uint32_t count);
void chunk_read(struct tc *t, struct chunk *ch);
/* Reads one chunk that must be the final error chunk for cookie; returns
 * its NBD error. */
uint32_t chunk_error(struct tc *t, uint64_t cookie);

/* ---- test-only backends ------------------------------------------------------ */

/* "slowpoke": a read-only 1 MiB disk of zeros, NBD_RARELY_BLOCKS, whose
 * reads take SLOW_MS either asleep (as a disk read would, slow_sleeps) or
 * busy (as a thread that keeps losing its CPU would look), or no time at
 * all (slow_fast).  It records how many reads ran at once: more than one
 * means the connection moved to workers. */
#define SLOW_MS 20
extern int slow_sleeps, slow_fast;
/* The thread of the first read, and whether a read ran on another one
 * (the reads of an inline connection all run on its reader). */
extern pthread_t slow_first_thread;
extern int slow_have_first, slow_other_thread;
extern int slow_active, slow_max_active;

/* "slowflush": a writable 1 MiB disk (writes are dropped, reads are zeros)
 * whose flush sleeps FLUSH_MS and then counts itself as done.  It shows
 * whether the close-time flush ran, and whether the client had to wait
 * for it. */
#define FLUSH_MS 300
extern int flushes_started, flushes_done;

/* "spinwrite": a writable 1 MiB disk that rarely blocks, whose writes
 * keep the CPU busy SPIN_US (dropped; reads are zeros), as a 4 KiB
 * write into a large page-cache folio does.  spin_other_thread says
 * whether a write ran on another thread than the first. */
#define SPIN_US 60
extern int spin_other_thread;

#endif
