/* nbdstack: the API a filter or backend is written against.
 *
 * A layer is one file.  It defines, for every method in src/methods.def, a
 * function <layer>_<method>, or says PASSTHROUGH(layer, method) (filters) or
 * UNSUPPORTED(layer, method) (backends), and ends with NBD_REGISTER_FILTER or
 * NBD_REGISTER_BACKEND.  A method left out is a compile error that names the
 * layer and the method.
 *
 * Every method receives its own per-connection context (self) and the context
 * of the layer below (next, NULL for a backend).  Through next_<method>(next,
 * ...) a filter may call any method of the layer below; the engine applies
 * capability checks and emulation (FUA by flush, zero by writes, cache by
 * read, extents as "all data") at every boundary, so no layer repeats them.
 *
 * Datapath methods return 0 or -errno.  Capabilities return >= 0 or -errno.
 * The build also refuses a method of the wrong type (or a macro alias to
 * one), PASSTHROUGH in a backend, and a registration that does not give
 * the thread model and nonblocking class, each naming layer and method.
 * This header does not deal with the wire protocol or sockets.
 */
#ifndef NBDSTACK_LAYER_H
#define NBDSTACK_LAYER_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "log.h"
#include "methods_gen.h"

/* Command flags, named and valued as in the protocol (proto.md "Request
 * message"), so they travel from the wire through every layer unchanged.
 * The handshake and transmission flags (NBD_FLAG_*) are protocol.h's. */
#define NBD_CMD_FLAG_FUA       (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE   (1u << 1)
#define NBD_CMD_FLAG_DF        (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE   (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

/* Tri-state answers of can_fua, can_zero and can_cache. */
#define NBD_FUA_NONE       0
#define NBD_FUA_EMULATE    1 /* engine sends a flush after the write */
#define NBD_FUA_NATIVE     2
#define NBD_ZERO_NONE      0
#define NBD_ZERO_EMULATE   1 /* engine writes zeros through pwrite */
#define NBD_ZERO_NATIVE    2
#define NBD_CACHE_NONE     0
#define NBD_CACHE_EMULATE  1 /* engine reads and discards */
#define NBD_CACHE_NATIVE   2

/* Extent types of the base:allocation meta context. */
#define NBD_EXTENT_HOLE    (1u << 0)
#define NBD_EXTENT_ZERO    (1u << 1)

/* What a depth method (src/methods.def) may return instead of adding
 * extents: depth 1 over the whole range asked. */
#define NBD_DEPTH_ONE      1

/* ---- typed parameters ------------------------------------------------- */

/* Storage per type (the field at .offset in the layer's conf struct):
 *   SIZE      uint64_t  bytes; accepts 512, 4k, 1M, 2G, 1T, 1E (binary units)
 *   UINT      uint64_t  decimal or 0x hex
 *   BOOL      int       yes/no, true/false, on/off, 1/0
 *   STRING    char *    malloc'd copy
 *   PATH      char *    malloc'd copy, must not be empty
 *   DURATION  uint64_t  nanoseconds; accepts 10ns, 5us, 2ms, 1s, 1.5s, 3m, 1h; bare = seconds
 *   ENUM      int       index into .choices
 *   PATH_LIST struct nbd_strlist  a repeatable key: each "key=value" (or
 *             bare value, if it is the magic param) appends a malloc'd
 *             non-empty copy, in the order given.  nbd_layer_param_set
 *             says 0 for it (one more may always come), look at .n.
 *   STRING_LIST struct nbd_strlist  as PATH_LIST, and a value may be
 *             empty (a command's arguments: arg=-f arg=raw).
 */
enum nbd_param_type {
  NBD_PARAM_SIZE,
  NBD_PARAM_UINT,
  NBD_PARAM_BOOL,
  NBD_PARAM_STRING,
  NBD_PARAM_PATH,
  NBD_PARAM_DURATION,
  NBD_PARAM_ENUM,
  NBD_PARAM_PATH_LIST,
  NBD_PARAM_STRING_LIST,
};

/* The field of a PATH_LIST or STRING_LIST parameter; freed by the
 * engine. */
struct nbd_strlist {
  char **v;
  size_t n;
};

/* Fields in the order of the positional initializers every layer's table
 * uses; that costs 8 bytes of padding per parameter, which the analyzer's
 * padding check reports for tables of three parameters or more. */
struct nbd_param { /* NOLINT(clang-analyzer-optin.performance.Padding) */
  const char *name;
  enum nbd_param_type type;
  size_t offset;              /* offsetof(struct conf, field) */
  const char *def;            /* default as text, NULL = none (field stays 0) */
  const char *help;
  const char *const *choices; /* ENUM only, NULL-terminated */
  int required;
};

#define NBD_PARAM_END { NULL, 0, 0, NULL, NULL, NULL, 0 }

/* ---- layers ------------------------------------------------------------ */

enum nbd_layer_kind { NBD_LAYER_FILTER, NBD_LAYER_BACKEND };

/* How much concurrency a layer tolerates; an export runs with the most
 * restrictive model of its layers. */
enum nbd_thread_model {
  NBD_SERIALIZE_CONNECTIONS = 0, /* one connection at a time */
  NBD_SERIALIZE_ALL_REQUESTS = 1,/* one request at a time, all connections */
  NBD_SERIALIZE_REQUESTS = 2,    /* one request at a time per connection */
  NBD_PARALLEL = 3,
};

/* How long a request may take, which decides how the engine runs
 * requests; an export takes the lowest of its layers:
 *   NBD_MAY_BLOCK      sleeps or waits (delay, network): requests run on
 *                      a pool of workers per connection, concurrently;
 *   NBD_RARELY_BLOCKS  usually quick, now and then slow (a file in the
 *                      page cache): inline on the reader, with no
 *                      handoff, until one request takes over 1 ms, then
 *                      workers for the rest of the connection;
 *   NBD_NEVER_BLOCKS   CPU only (RAM, pure transforms): always inline.
 * The values do not overlap those of enum nbd_thread_model, so the two
 * arguments of NBD_REGISTER_* given in the wrong order fail their check. */
enum nbd_nonblocking {
  NBD_MAY_BLOCK = 8,
  NBD_RARELY_BLOCKS = 9,
  NBD_NEVER_BLOCKS = 10,
};

struct nbd_layer;

struct nbd_layer_ops {
  const char *name;
  const char *description;            /* one line for --list */
  enum nbd_layer_kind kind;
  const struct nbd_param *params;     /* ends with NBD_PARAM_END */
  size_t conf_size;                   /* size of the conf struct params fill */
  /* The loosest the layer ever allows; the register macros require both
   * (no silent default), an instance may tighten them in setup. */
  enum nbd_thread_model thread_model;
  enum nbd_nonblocking nonblocking;
  /* Command line: a bare value with no "key=" sets this parameter, as in
   * nbdkit ("memory 1G", "file disk.img").  NULL = none. */
  const char *magic_param;
  /* submit takes writes whose payload is still in the client's socket
   * (struct nbd_async, src). */
  int submit_src;
  /* pwrite_from pays only when it can splice (nbd_source_splice_at): the
   * engine offers it large writes on plain connections, and reads the
   * others into a buffer for pwrite. */
  int pull_splice;

  /* Startup, once per export after the params are parsed: validate and
   * acquire shared state (open a file, allocate the store).  On error fill
   * err (one line, no trailing newline) and return -1. */
  int (*setup)(struct nbd_layer *layer, char *err, size_t errlen);
  /* Undo setup at exit; conf strings are freed by the engine. */
  void (*cleanup)(struct nbd_layer *layer);

  NBD_OPS_FIELDS
};

/* One instance of a layer in one export's stack. */
struct nbd_layer {
  const struct nbd_layer_ops *ops;
  void *conf;                 /* conf_size bytes, filled from params */
  uint64_t params_set;        /* bit i set when params[i] was given */
  void *state;                /* free for setup(): shared by all connections */
  const char *export_name;
  /* Copied from ops before setup, which may lower them for this instance
   * (a setting that needs serialised requests); raising them is an
   * error.  The export's model is computed from these. */
  enum nbd_thread_model thread_model;
  enum nbd_nonblocking nonblocking;
  struct nbd_layer *below;    /* next layer instance, NULL for the backend */
  /* Set by a filter's setup to have the engine retry a failed open of
   * any layer below it (retry-request-open): up to open_retries more
   * times, open_retry_delay ns apart.  0 = no retries. */
  unsigned open_retries;
  uint64_t open_retry_delay;
  /* Set by setup when this instance acknowledges writes that it keeps in
   * the process until a flush (a write-back cache): a connection that
   * wrote is then flushed when it closes, since the process could end
   * before another flush.  Without it the engine flushes a closing
   * connection only when the server is stopping (as nbdkit, it leaves a
   * file's writes to the kernel: a client that wants them durable
   * flushes). */
  int keeps_writes;
  /* Set by setup when this instance's writes, trims and zeroes run one
   * at a time in the kernel anyway (a regular file's buffered writes hold
   * its inode lock): they are no reason to move a connection to worker
   * threads, where they would only contend for that lock (the stack's
   * writes go through this layer: so do those of the layers above). */
  int serial_writes;
};

/* Per-connection context of one layer. */
struct nbd_ctx {
  const struct nbd_layer *layer;
  void *handle;               /* the layer's own per-connection state */
  struct nbd_ctx *next;       /* context of the layer below, NULL for backend */
  const struct nbd_conn_info *info; /* its connection (nbd_conn_info) */
  /* Capabilities, asked once when the connection opens (src/methods.def,
   * column 'cache'): size, min_block/pref_block/max_block (0 = no
   * constraint), can_write ... is_rotational. */
  NBD_CTX_CAP_FIELDS
  /* pwrite_from reaches a layer that reads payloads itself: a backend
   * with pwrite_from, through filters that have it too. */
  int pull;
  int pull_splice;            /* ... and the backend's pull_splice */
  int serial_writes;          /* this layer's or one below's */
  /* pread_to reaches the layer that has the data: a backend with
   * pread_to, with no filter between (src/layer.h, nbd_sink). */
  int push;
  /* submit reaches the layer that does the work: a backend with submit,
   * with no filter between (src/layer.h, nbd_async). */
  int async;
  int async_src;              /* ... and its submit_src */
  /* min_block and max_block are hints, advertised to the client but not
   * enforced by the engine at this boundary (blocksize_policy's
   * error-policy=allow, nbdkit's default).  A layer says so from its
   * block_size method with nbd_block_size_advisory(self); a layer that
   * answers the same three sizes as the layer below (PASSTHROUGH) keeps
   * the flag of the layer below.  The layer below still enforces its own
   * limits, so a request that breaks a hint reaches the layer that gave
   * it, which must then take any size and alignment. */
  int block_advisory;
  /* A copy of the connection's info with another export_name, for the
   * contexts below a layer whose export_name hook renamed it (owned by
   * the first context below; NULL = none). */
  struct nbd_conn_info *renamed;
  /* reopen closed this context and could not open it again: the engine
   * calls neither finalize nor close on it, and nothing else may be
   * called on it but next_reopen (see "Reopening" below). */
  int closed;
  /* The export is read-only whatever the client asks (its own `readonly`
   * setting); set in opened and unopened contexts alike. */
  int export_readonly;
};

/* Called from a layer's block_size method: the sizes it answers are hints
 * (see block_advisory above). */
void nbd_block_size_advisory(struct nbd_ctx *self);

/* A capability that is always there (can_flush, can_trim, ...): a layer
 * aliases it, #define x_can_flush nbd_cap_yes, rather than writing its
 * own function that returns 1. */
static inline int
nbd_cap_yes(struct nbd_ctx *self, struct nbd_ctx *next)
{
  (void)self;
  (void)next;
  return 1;
}

/* ---- the connection ---------------------------------------------------- */

/* What a layer may know of the connection a context belongs to, read
 * only: for layers that decide by client (ip), log it (log), or serve by
 * export name (file dir=; see "export names" below). */
struct nbd_conn_info {
  uint64_t id;                /* 1, 2, ... in the order clients came */
  int family;                 /* AF_INET, AF_INET6, AF_UNIX; 0 = unknown */
  char addr[64];              /* numeric address of a TCP peer, else "" */
  unsigned port;              /* TCP peer's port */
  int has_cred;               /* a Unix peer: pid, uid and gid are known */
  pid_t pid;
  uid_t uid;
  gid_t gid;
  const char *export_name;    /* the name the client asked for */
  int tls;                    /* the connection is encrypted */
  int readonly;               /* the server is read-only (-r, [server]
                               * readonly), as nbdkit's -r */
};

/* The connection of ctx; NULL for a stack opened outside a connection
 * (unit tests). */
const struct nbd_conn_info *nbd_conn_info(const struct nbd_ctx *ctx);

/* True when the parameter called name was given in the config. */
int nbd_layer_param_set(const struct nbd_layer *layer, const char *name);

/* ---- extents ----------------------------------------------------------- */

struct nbd_extent {
  uint64_t offset;
  uint64_t length;
  uint32_t type;              /* NBD_EXTENT_HOLE | NBD_EXTENT_ZERO */
};

/* A list of contiguous extents covering part of [start, end).  Layers add
 * extents in increasing order; nbd_extents_add clips to [start, end), merges
 * neighbours of the same type, and ignores anything before the last extent. */
struct nbd_extents {
  struct nbd_extent *v;
  size_t n, cap;
  uint64_t start, end;
};

struct nbd_extents *nbd_extents_new(uint64_t start, uint64_t end);
void nbd_extents_free(struct nbd_extents *e);
/* Returns 0 or -ENOMEM / -EINVAL (gap or overlap after the last extent). */
int nbd_extents_add(struct nbd_extents *e, uint64_t offset, uint64_t length,
                    uint32_t type);
/* For filters that serve a window of the layer below starting at shift
 * (offset, partition): asks next for the extents of [offset+shift,
 * offset+shift+count) in its own list, in its own coordinates, and adds
 * them to extents shifted back.  0 or -errno. */
int nbd_extents_shifted(struct nbd_ctx *next, uint64_t count, uint64_t offset,
                        uint64_t shift, uint32_t flags,
                        struct nbd_extents *extents);
/* The same for the depth map (next_depth); the depths are unchanged. */
int nbd_depth_shifted(struct nbd_ctx *next, uint64_t count, uint64_t offset,
                      uint64_t shift, uint32_t flags,
                      struct nbd_extents *extents);

/* ---- before the handshake (preconnect) ---------------------------------
 *
 * A layer's preconnect runs when a client connects, before the server
 * greets it or reads any option, so it can only look at
 * nbd_conn_info(self) (no export name yet).  It runs on contexts that were
 * never opened, like list_exports (layer, info and next set), and on the
 * accept loop: it must not block.  Returns 0 (pass it on: next_preconnect)
 * or -errno to refuse.  The server asks every export's stack: when all
 * refuse, the socket is closed before the greeting and the client logged
 * with its address; otherwise the refusing exports answer
 * NBD_REP_ERR_POLICY to this client's NBD_OPT_GO. */

/* ---- reopening (reopen) ------------------------------------------------ */

/* next_reopen(next, readonly) makes the contexts from next down fresh, as
 * if this connection had closed and opened them again, then asks their
 * capabilities again.  The caller (the retry filter) must make sure no
 * other request of this connection runs on them meanwhile, and should
 * check that what the client was told (size, can_write) still holds.
 * readonly is the caller's own open mode, or 1 to reopen read-only.
 *
 * Each layer's reopen method decides what it means for that layer:
 *   PASSTHROUGH(layer, reopen)   keep this layer's own state, reopen below
 *                                (cow keeps its overlay, cache its blocks);
 *   #define layer_reopen nbd_reopen_close_open
 *                                finalize and close this layer, reopen
 *                                below, open and prepare it again (a
 *                                backend reconnects or reopens its file,
 *                                partition re-reads its table);
 *   its own function             e.g. drop a cache, then next_reopen.
 * On failure the contexts that could not be opened again are marked
 * closed (struct nbd_ctx) and the call returns -errno; the caller must
 * then send nothing below but another next_reopen. */
int next_reopen(struct nbd_ctx *next, int readonly);
int nbd_reopen_close_open(struct nbd_ctx *self, struct nbd_ctx *next,
                          int readonly);

/* ---- export names (list_exports) --------------------------------------- */

/* The names a stack serves, for NBD_OPT_LIST and for finding the export a
 * client's name belongs to.  A layer's list_exports adds names and
 * returns 1 ("exactly these"), or adds nothing and returns 0 ("only the
 * config export's own name": what UNSUPPORTED(layer, list_exports) says,
 * right for a backend that serves one disk).  Filters pass it through
 * unless they change names.  It runs on contexts that were never opened:
 * self->layer (conf, state), nbd_conn_info(self) and next are set, no
 * handle and no capability.
 *
 * How a config export with such a stack (a "dynamic" export, e.g.
 * backend = file dir=/srv/images) meets client names, in the handshake:
 *   - a config export whose name is the asked name wins, dynamic or not
 *     (its stack then opens with that name, which it may refuse);
 *   - else the first dynamic export, in config order, whose list holds
 *     the name serves it: the stack opens with
 *     nbd_conn_info(self)->export_name set to the asked name, and
 *     NBD_INFO_NAME reports the asked name;
 *   - else the server's any-export-name fallback, as before.
 * NBD_OPT_LIST lists every plain export by its config name and, for each
 * dynamic export, every name its stack lists (with the layer's
 * description, else the export's), never the dynamic export's own name.
 * Plain exports are unchanged. */
/* A layer may also serve the layers below it under another name than the
 * client asked for: its optional export_name hook (src/methods.def) is
 * asked top down before the stack opens, and a different answer gives the
 * contexts below a copy of the connection info with that export_name
 * (exportname's default-export). */
struct nbd_export_name {
  char *name;
  char *description;          /* NULL = the export's description */
};

struct nbd_exports {
  struct nbd_export_name *v;
  size_t n, cap;
};

/* The description of the opened export from next down: the first
 * export_description hook's answer (src/methods.def), NULL when no layer
 * has one (the export's own description then). */
const char *next_export_description(struct nbd_ctx *next);

/* Appends copies of name and description (may be NULL); 0 or -ENOMEM. */
int nbd_exports_add(struct nbd_exports *e, const char *name,
                    const char *description);
/* Frees the names and the array; the struct itself is the caller's. */
void nbd_exports_clear(struct nbd_exports *e);
/* True when name is in the list. */
int nbd_exports_has(const struct nbd_exports *e, const char *name);

/* ---- write payloads still in the socket (pwrite_from) ------------------ */

/* The payload of one write, handed to a layer's pwrite_from instead of a
 * buffer, so the layer can read it straight into its own storage.  The
 * layer takes exactly count bytes, in order, with nbd_source_readv or
 * nbd_source_read; the engine discards whatever it leaves.  A failed read
 * means the client is gone: return any error, the connection then closes
 * without a reply. */
struct nbd_source {
  /* Set by the engine: reads every byte the iovecs describe (the array
   * may be changed); 0, or -1 when the connection failed. */
  int (*readv)(struct nbd_source *src, struct iovec *iov, int n);
  uint64_t left;              /* payload bytes not read yet */
  int failed;                 /* a read failed: the connection is dead */
  /* Set by the engine when the payload can go to another socket without
   * passing through user space (a plain client connection, splice(2)),
   * else NULL: as wire_splice (src/wire.h); *moved counts the bytes
   * taken.  Use nbd_source_splice or nbd_source_splice_at. */
  int (*splice)(struct nbd_source *src, int fd, int64_t *off, uint64_t len,
                uint64_t *moved);
  /* Set by the engine: how many bytes of input have arrived (taking that
   * many does not wait for the client); may be NULL.  Use
   * nbd_source_ready. */
  uint64_t (*ready)(struct nbd_source *src);
};

/* 0, -EIO (the connection failed) or -EINVAL (more than is left). */
int nbd_source_readv(struct nbd_source *src, struct iovec *iov, int n);
int nbd_source_read(struct nbd_source *src, void *buf, size_t len);
/* Reads and drops len bytes. */
int nbd_source_skip(struct nbd_source *src, uint64_t len);
/* For a pwrite_from that does not take this write itself: reads the
 * count bytes into a buffer (page-aligned, as O_DIRECT wants) and runs
 * self's own pwrite on them.  What the engine does for a layer without
 * pwrite_from. */
int nbd_pwrite_buffered(struct nbd_ctx *self, struct nbd_source *src,
                        uint32_t count, uint64_t offset, uint32_t flags);
/* Moves len bytes to the stream socket fd (src->splice, which must be
 * set): 0; -EIO when the client connection failed (src->failed set);
 * -EPIPE when writing fd failed (the bytes not taken are still in src);
 * -EINVAL when more than is left. */
int nbd_source_splice(struct nbd_source *src, int fd, uint64_t len);
/* The same to the file fd at offset: 0; -EIO when the client connection
 * failed (src->failed set); the write's -errno when writing failed (the
 * bytes not taken are still in src); -EINVAL when more than is left. */
int nbd_source_splice_at(struct nbd_source *src, int fd, uint64_t len,
                         uint64_t offset);
/* Bytes of the payload that can be taken without waiting for the client
 * (at most src->left): a layer that takes them under a lock shared with
 * other connections must not wait for a slow client meanwhile. */
uint64_t nbd_source_ready(struct nbd_source *src);
/* Whether splice(2) can write into fd at an offset (nbd_source_splice_at):
 * a file whose filesystem cannot says so before anything is written. */
int nbd_can_splice_at(int fd);

/* ---- read data that goes straight to the client (pread_to) ------------- */

/* The client's side of one read, handed to a layer's pread_to instead of
 * a buffer, so that the bytes leave from the layer's own storage.  The
 * layer passes exactly count bytes, in order, with nbd_sink_writev; when
 * a call returns its bytes have been sent or copied, so the layer need
 * hold its locks only around the call.  pread_to may fail before its
 * first call (the client gets the error); once bytes are passed the
 * reply is under way, and a failure or a short count closes the
 * connection.  A failed call means the client is gone: return any
 * error. */
struct nbd_sink {
  /* Set by the engine: takes every byte the iovecs describe; 0, or -1
   * when the connection failed. */
  int (*writev)(struct nbd_sink *dst, const struct iovec *iov, int n);
  uint64_t left;              /* bytes still to pass */
  int failed;                 /* a call failed: the connection is dead */
};

/* 0, -EIO (the connection failed) or -EINVAL (more than is left). */
int nbd_sink_writev(struct nbd_sink *dst, const struct iovec *iov, int n);

/* ---- requests that complete later (submit) ----------------------------- */

/* A read or write handed to a layer's submit: the layer starts it and
 * returns 0, and calls done exactly once, from any thread, with 0 or
 * -errno (buf must stay untouched by the layer after that); or it
 * returns -errno at once and never calls done.  The engine fills in
 * everything but the layer's two fields, and keeps the request and its
 * buffer alive until done. */
enum nbd_async_op { NBD_ASYNC_READ, NBD_ASYNC_WRITE };
struct nbd_async {
  enum nbd_async_op op;
  void *buf;                  /* where a read's data goes; a write's data */
  /* A write whose payload is still in the client's socket (buf NULL):
   * valid only during submit, which takes the count bytes from it then
   * (nbd_source_read or nbd_source_splice), or returns -EAGAIN having
   * taken none: the engine then reads it into buf and submits again.
   * Offered only to a layer whose submit_src says it takes such writes;
   * what it leaves, the engine discards. */
  struct nbd_source *src;
  uint32_t count;
  uint64_t offset;
  uint32_t flags;             /* NBD_CMD_FLAG_* */
  void (*done)(struct nbd_async *a, int err);
  const void *layer_ctx;      /* the layer's own use */
  void *layer_data;
};

/* ---- registration ------------------------------------------------------ */

/* A layer's methods come from NBD_REQUIRED_METHODS, which names
 * <layer>_<method> for every datapath and capability method.
 * PASSTHROUGH is for filters: a backend's registration refuses it. */
#define PASSTHROUGH(layer, method) PASSTHROUGH_##method(layer)
#define UNSUPPORTED(layer, method) UNSUPPORTED_##method(layer)

/* Place a pointer to the descriptor in a linker section named after a C
 * identifier, so the linker provides __start_/__stop_ bounds. */
#define NBD_SECTION_ENTRY(sect, name)                                       \
  /* used: no reference exists; retain: survive --gc-sections;           */ \
  /* aligned: the section is read as an array of pointers.               */ \
  static const struct nbd_layer_ops *const name##_registry_entry           \
    __attribute__((used, retain, section(sect),                           \
                   aligned(sizeof(void *)))) = &name##_layer_ops

/* thread_model and nonblocking come first, by position, so that leaving
 * one out cannot compile: the struct literal names the layer in the error
 * ("'struct offset_thread_model_nonblocking' has no member named ...")
 * when a designated initializer stands where they belong. */
#define NBD_CHECK_MODEL(layer, what, model_, nonblocking_)                  \
  struct layer##_thread_model_nonblocking {                                 \
    enum nbd_thread_model thread_model;                                     \
    enum nbd_nonblocking nonblocking;                                       \
  };                                                                        \
  /* unused: it only has to compile. */                                   \
  static const struct layer##_thread_model_nonblocking                      \
    layer##_model_check __attribute__((unused)) = { model_, nonblocking_ }; \
  _Static_assert((model_) >= NBD_SERIALIZE_CONNECTIONS &&                   \
                 (model_) <= NBD_PARALLEL,                                  \
                 what " " #layer ": the thread model, first after the "     \
                 "name, must be NBD_SERIALIZE_CONNECTIONS, "                \
                 "NBD_SERIALIZE_ALL_REQUESTS, NBD_SERIALIZE_REQUESTS or "   \
                 "NBD_PARALLEL");                                           \
  _Static_assert((nonblocking_) >= NBD_MAY_BLOCK &&                         \
                 (nonblocking_) <= NBD_NEVER_BLOCKS,                        \
                 what " " #layer ": nonblocking, second after the name, "   \
                 "must be NBD_MAY_BLOCK, NBD_RARELY_BLOCKS or "             \
                 "NBD_NEVER_BLOCKS")

/* The pragmas make a wrongly typed pointer in the descriptor (setup,
 * open, pwrite_from...) an error in every build, not a warning, and so a
 * second initializer of a field the macro sets. */
#define NBD_REGISTER_LAYER(layer, name_, sect, kind_, what, model,          \
                           nonblocking_, ...)                               \
  NBD_CHECK_MODEL(layer, what, model, nonblocking_);                        \
  _Pragma("GCC diagnostic push")                                            \
  _Pragma("GCC diagnostic error \"-Wincompatible-pointer-types\"")          \
  _Pragma("GCC diagnostic error \"-Woverride-init\"")                       \
  static const struct nbd_layer_ops layer##_layer_ops = {                   \
    .name = name_,                                                          \
    .kind = kind_,                                                          \
    .thread_model = (model),                                                \
    .nonblocking = (nonblocking_),                                          \
    NBD_REQUIRED_METHODS(layer)                                             \
    __VA_ARGS__                                                             \
  };                                                                        \
  _Pragma("GCC diagnostic pop")                                             \
  NBD_CHECK_METHOD_TYPES(layer, what)                                       \
  NBD_SECTION_ENTRY(sect, layer)

/* Usage, last in the file:
 *   NBD_REGISTER_FILTER(offset, NBD_PARALLEL, NBD_NEVER_BLOCKS,
 *                       .description = "...", .params = ...,
 *                       .conf_size = sizeof (struct offset_conf), ...);
 * The thread model and nonblocking class have no default: each layer
 * says what it tolerates. */
#define NBD_REGISTER_FILTER(layer, model, nonblocking, ...)                 \
  NBD_REGISTER_LAYER(layer, #layer, "nbd_filters", NBD_LAYER_FILTER,        \
                     "filter", model, nonblocking, __VA_ARGS__)
#define NBD_REGISTER_BACKEND(layer, model, nonblocking, ...)                \
  NBD_CHECK_BACKEND_METHODS(layer)                                          \
  NBD_REGISTER_LAYER(layer, #layer, "nbd_backends", NBD_LAYER_BACKEND,      \
                     "backend", model, nonblocking, __VA_ARGS__)
/* A filter whose user-facing name is not a C identifier (nbdkit's
 * "multi-conn"): the file and functions use layer (multi_conn), the
 * config, --list and messages use name.  The registry treats '-' and '_'
 * as the same character, so the build's selection (file names) still
 * finds it and "multi_conn" works in a config too. */
#define NBD_REGISTER_FILTER_AS(layer, name, model, nonblocking, ...)        \
  NBD_REGISTER_LAYER(layer, name, "nbd_filters", NBD_LAYER_FILTER,          \
                     "filter", model, nonblocking, __VA_ARGS__)
/* The same for a backend (nbdkit's "sparse-random"). */
#define NBD_REGISTER_BACKEND_AS(layer, name, model, nonblocking, ...)       \
  NBD_CHECK_BACKEND_METHODS(layer)                                          \
  NBD_REGISTER_LAYER(layer, name, "nbd_backends", NBD_LAYER_BACKEND,        \
                     "backend", model, nonblocking, __VA_ARGS__)

/* ---- helpers for layers ------------------------------------------------ */

/* Logging: nbd_error, nbd_warn, nbd_info, nbd_debug (log.h). */

/* Server shutdown (src/stop.c).  stopping: a first SIGTERM/SIGINT came;
 * every connection still finishes its requests and flushes what it
 * wrote.  aborting: a second one came; long work at close (a write-back)
 * should stop early, log what it did not write, and fail with
 * -ESHUTDOWN.  nbd_sleep sleeps ns and returns 0, or -ESHUTDOWN as soon
 * as the server stops (a delay must not hold a stopping server). */
int nbd_server_stopping(void);
int nbd_server_aborting(void);
int nbd_sleep(uint64_t ns);

/* A graceful exit asked by a layer (nbdkit's exitlast and exitwhen
 * filters): the server stops accepting clients (it closes its listening
 * sockets), serves the connected ones until each leaves, then shuts down
 * as on SIGTERM with no client left (every export flushed, layers
 * cleaned up) and exits 0, or 1 if a flush failed.  why goes in the log
 * line.  Safe from any thread, any number of times.  nbd_server_exiting
 * says whether an exit (or a stop) was asked. */
void nbd_server_exit(const char *why);
int nbd_server_exiting(void);
/* The same exit, but only if no client is connected once the calling
 * connection is gone (nbdkit's exitlast): a client the server admits
 * after the call cancels it.  Call it from close. */
void nbd_server_exit_when_idle(void);

/* SIGUSR1 runs fn(arg) on the server's main thread, for a layer that
 * reports on demand (stats).  Register in setup (0 or -ENOMEM) and
 * unregister in cleanup: unregistering waits for a report in progress.
 * Without any, SIGUSR1 does nothing (it never kills the server). */
int nbd_on_sigusr1(void (*fn)(void *arg), void *arg);
void nbd_off_sigusr1(void (*fn)(void *arg), void *arg);

/* True under --check-config: every export's stack is set up and opened
 * once, read-only and with no connection, beside a server that may be
 * running with the same files.  A layer must then change nothing and
 * take no lock another process holds (the cow filter opens a kept
 * overlay read-only, unlocked, and does not create a missing one). */
int nbd_checking(void);

/* True when every byte of buf[0..len) is zero. */
int nbd_is_zero(const void *buf, size_t len);

/* A disk made of pieces laid end to end (split: files, partitioning:
 * table, padding and files).  v[0..n) are structs of `stride` bytes, each
 * with a uint64_t start (its place in the disk, ascending, the first at
 * 0) and a uint64_t length at the given offsets (NBD_PIECES fills them
 * in); a piece of length 0 holds nothing.  size is where the last ends. */
struct nbd_pieces {
  const void *v;
  size_t n, stride, start_at, len_at;
  uint64_t size;
};
#define NBD_PIECES(v, n, type, start, len, size) \
  { (v), (n), sizeof(type), offsetof(type, start), offsetof(type, len), \
    (size) }
/* Called for each piece a request touches, in order: piece i, the offset
 * within it, the length there, and how many bytes of the request came
 * before.  0 or -errno. */
typedef int (*nbd_piece_fn)(void *ctx, size_t i, uint64_t poff,
                            uint64_t len, uint64_t done, void *arg);
/* Cuts [offset, offset+count) at the pieces' boundaries and calls fn for
 * each part; the first error stops it and is returned.  -EINVAL past
 * size (the engine checks too: this one guards the arithmetic). */
/* Why a filter that prefetches below from its own thread (readahead,
 * scan) cannot: the layer below cannot cache, or a layer below does not
 * take requests in parallel; NULL when it can. */
const char *nbd_prefetch_unable(const struct nbd_ctx *self,
                                struct nbd_ctx *next);

int nbd_pieces_each(const struct nbd_pieces *p, uint64_t count,
                    uint64_t offset, nbd_piece_fn fn, void *ctx, void *arg);

/* pread/pwrite of all count bytes at offset, retried on EINTR and short
 * transfers; 0, or -errno (-EIO at end of file).  Writes go in pieces of
 * at most 256 KiB (src/util.c says why). */
int nbd_pread_full(int fd, void *buf, size_t count, uint64_t offset);
int nbd_pwrite_full(int fd, const void *buf, size_t count, uint64_t offset);
/* openat(dirfd, path, flags) with O_RDWR, or O_RDONLY when *readonly is
 * set.  A file the server may not write (EACCES, EROFS, EPERM) is opened
 * O_RDONLY instead and *readonly set: a backend then serves it read-only,
 * as nbdkit's file plugin does.  fd, or -1 with errno (the first refusal
 * when the file cannot be read either).  flags carry no access mode. */
int nbd_open_maybe_readonly(int dirfd, const char *path, int flags,
                            int *readonly);
/* fallocate(fd, mode, offset, count) unless *unsupported says this file
 * cannot; 0, -errno, or -EOPNOTSUPP (and *unsupported set, so the next
 * call costs nothing) when the filesystem or device refuses the mode. */
int nbd_fallocate(int fd, int mode, uint64_t offset, uint64_t count,
                  atomic_int *unsupported);

/* A few malloc'd buffers of one size, kept for reuse by the requests of a
 * layer (bounce buffers of read-modify-write), safe between threads.
 * get(len) returns a buffer of at least len bytes (NULL when out of
 * memory); put(buf, len) takes it back with the same len.  Lengths over
 * size are plain malloc/free.  src/util.c says why this is worth it. */
#define NBD_BUFPOOL_MAX 16
struct nbd_bufpool {
  pthread_mutex_t lock;
  size_t size;
  unsigned n, keep;
  void *buf[NBD_BUFPOOL_MAX];
};
void nbd_bufpool_init(struct nbd_bufpool *p, size_t size);
void nbd_bufpool_destroy(struct nbd_bufpool *p);
void *nbd_bufpool_get(struct nbd_bufpool *p, size_t len);
void nbd_bufpool_put(struct nbd_bufpool *p, void *buf, size_t len);

#endif
