/* nbdstack unit-test harness: in-process stacks over a recording backend.
 *
 * The recorder is a RAM disk with capabilities set by the test and a log
 * of every datapath call ("pwrite 0+4096 flags=FUA; flush"), so a test
 * stacks real filters over it, calls next_<method>(top, ...) as the
 * protocol code would, and asserts on what reached the bottom.  The tracer
 * is a pass-through filter that logs lifecycle calls with a label.
 *
 * Neither is registered in the linker sections: the registry (and its
 * self-check) sees only the layers the build selected.  No sockets, no
 * threads; every function aborts the test (ck_abort) on out-of-memory.
 */
#ifndef NBDSTACK_TESTLIB_H
#define NBDSTACK_TESTLIB_H

#include <stdint.h>

#include "engine.h"
#include "params.h"
#include "registry.h"

/* What the recorder answers.  testlib_caps_default: 1 MiB, writable,
 * flush, trim, native zero + fast zero, native FUA, native cache, extents,
 * no block-size constraints. */
struct testlib_caps {
  int64_t size;
  int can_write, can_flush, can_trim, can_zero, can_fast_zero;
  int can_fua, can_cache, can_extents, can_multi_conn, is_rotational;
  uint32_t min_block, pref_block, max_block;
};

void testlib_caps_default(struct testlib_caps *caps);

/* Disks up to this size keep their bytes in RAM; larger ones (to test
 * size limits) read as zeros and drop writes, but still log every call. */
#define TESTLIB_RAM_MAX ((int64_t)64 << 20)

/* The recorder's shared state (layer->state); tests read and poke it. */
struct testlib_recorder {
  struct testlib_caps caps;
  unsigned char *ram;             /* ramlen bytes, or NULL (see above) */
  size_t ramlen;                  /* caps.size, or a larger disk's head */
  unsigned calls[NBD_METHOD_COUNT];   /* every method, capabilities too */
  /* Nonzero: the method returns this (a negative errno) instead of
   * doing its work; the call is still logged and counted. */
  int fail[NBD_METHOD_COUNT];
  /* What extents reports, in disk order and contiguous; none set means
   * one data extent over the whole disk. */
  struct nbd_extent *map;
  size_t nmap;
  /* What depth reports everywhere; 0 = a backend's answer, depth 1. */
  uint32_t depth;
  /* Called (when set) after extents reported its map, before it returns:
   * what a layer above may see change while its call below runs. */
  void (*after_extents)(struct testlib_recorder *rec, void *arg);
  void *after_extents_arg;
};

/* rec->calls[m], read atomically: for tests whose filter calls the
 * recorder from a thread of its own. */
unsigned testlib_calls_of(const struct testlib_recorder *rec,
                          enum nbd_method m);

/* A recorder backend instance (set up, ready to push into an export). */
struct nbd_layer *testlib_recorder_new(const struct testlib_caps *caps);
struct testlib_recorder *testlib_recorder(struct nbd_layer *layer);
/* A disk over TESTLIB_RAM_MAX keeps its first head bytes in RAM (a
 * partition table, a header) and the rest as above.  Before opening. */
void testlib_recorder_ram_head(struct testlib_recorder *rec, size_t head);
/* Appends one extent to the recorder's map. */
void testlib_recorder_map(struct testlib_recorder *rec, uint64_t offset,
                          uint64_t length, uint32_t type);

/* A filter instance by registry name ("tracer" is the test-only tracer,
 * key "label"), params as "key=value key=value", set up.  NULL with err
 * filled on an unknown name, a bad key or a failed setup. */
struct nbd_layer *testlib_filter_new(const char *name, const char *params,
                                     char *err, size_t errlen);

/* A write payload for next_pwrite_from: len bytes of data.  A read that
 * reaches byte fail_at fills up to it and fails, like a client that went
 * away mid-payload (fail_at >= len: never). */
struct testlib_source {
  struct nbd_source src;
  const unsigned char *data;
  size_t pos, fail_at;
  unsigned reads;                 /* readv calls */
};
void testlib_source_init(struct testlib_source *s, const void *data,
                         size_t len, size_t fail_at);

/* A whole stack: filters over a recorder, opened as one connection. */
struct testlib_stack {
  struct nbd_export *exp;
  struct testlib_recorder *rec;
  struct nbd_ctx *top;            /* NULL until opened */
  char err[512];                  /* why stack_new or stack_open failed */
};

/* filters: "name k=v ... | name k=v ..." client side first, "" = none.
 * Returns 0, or -1 with s->err filled (and nothing left to free). */
int testlib_stack_new(struct testlib_stack *s, const char *filters,
                      const struct testlib_caps *caps);
/* engine_open; 0 or -1 with s->err filled.  Clears the call log, so the
 * log shows only what the test does after opening. */
int testlib_stack_open(struct testlib_stack *s, int readonly);
/* stack_new + stack_open; aborts the test on failure. */
void testlib_stack(struct testlib_stack *s, const char *filters,
                   const struct testlib_caps *caps);
/* engine_close (if open) and engine_export_free. */
void testlib_stack_free(struct testlib_stack *s);

/* The datapath call log, entries joined by "; ", "" when empty. */
const char *testlib_log(void);
void testlib_log_clear(void);
/* Lifecycle calls across every recorder and tracer, in call order:
 * "open recorder; open inner; ...".  Cleared by stack_new only, so it
 * shows the whole life of the current stack. */
const char *testlib_lifecycle(void);

/* The map of [offset, offset+count) that m (next_extents or next_depth)
 * gives at top, as "offset+length/type ..." (a static buffer, valid
 * until the next call); aborts the test when m fails. */
const char *testlib_map(int (*m)(struct nbd_ctx *, uint64_t, uint64_t,
                                 uint32_t, struct nbd_extents *),
                        struct nbd_ctx *top, uint64_t count,
                        uint64_t offset, uint32_t flags);

/* Captures what is written to stderr (nbd_error and friends) between the
 * two calls; end returns a malloc'd string. */
void testlib_stderr_begin(void);
char *testlib_stderr_end(void);

/* Fills buf with a pattern that depends on the disk offset of each byte,
 * so misplaced data is caught. */
void testlib_pattern(void *buf, uint32_t count, uint64_t offset);

/* Whether layer name of kind is compiled into this build.  When it is not,
 * prints "SKIP: the NAME filter is not compiled in" and returns 0, and the
 * test returns early or the suite leaves the test case out: Check has no
 * skip, and a build may select any subset of layers (-DNBD_FILTERS=...). */
int testlib_require_layer(enum nbd_layer_kind kind, const char *name);

/* ---- one backend alone -------------------------------------------------- */

/* An export of the backend called name with params "k=v k=v", set up;
 * NULL with err filled when a key or the setup refuses. */
struct nbd_export *testlib_backend_export(const char *name,
                                          const char *params, char *err,
                                          size_t errlen);
/* The same, opened (readonly or not); the test fails when it cannot be.
 * testlib_backend_close closes and frees what it opened. */
struct testlib_backend {
  struct nbd_export *exp;
  struct nbd_ctx *ctx;
};
struct nbd_ctx *testlib_backend_open(struct testlib_backend *b,
                                     const char *name, const char *params,
                                     int readonly);
void testlib_backend_close(struct testlib_backend *b);
/* The setup error of params, "" when they were accepted (a static
 * buffer). */
const char *testlib_backend_refused(const char *name, const char *params);
/* Lowercase hex of b[0..n) into out (2n + 1 bytes). */
void testlib_hex(const void *b, size_t n, char *out);

#endif
