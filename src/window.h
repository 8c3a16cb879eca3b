/* nbdstack: shared code for filters that serve a window of the layer below
 * (offset, partition): bytes [start, start+len) below are the whole disk.
 *
 * A window filter keeps a struct nbd_window (in its conf when it is the
 * same for every connection, in its handle when each connection finds its
 * own) and defines
 *
 *   static const struct nbd_window *<layer>_window(const struct nbd_ctx *);
 *
 * Then NBD_WINDOW_SHIFTED(layer) defines its seven ranged methods (the
 * request moved up by start; extents moved back down) and
 * NBD_WINDOW_PASSTHROUGH(layer) passes flush and every capability but
 * get_size and block_size through.  The filter still writes get_size and
 * block_size, with its own messages: nbd_window_fit_size and
 * nbd_window_fit_blocks decide, the filter words the refusal, since each
 * names the window in its own terms ("offset 2G", "partition 3").
 *
 * The groups are macros, as PASSTHROUGH is, so every method is still a
 * function the layer's registration names: a method added to methods.def
 * stops the build of every window filter until it is added here, once,
 * for all of them.  A filter that must treat one method its own way uses
 * NBD_WINDOW_SHIFT(layer, method) for the others instead of the group.
 * This header does not read tables, parse parameters or check that a
 * request lies inside the window: the engine checks requests against
 * get_size, and the filter checks the window against the disk below.
 */
#ifndef NBDSTACK_WINDOW_H
#define NBDSTACK_WINDOW_H

#include <stdint.h>

#include "layer.h"

struct nbd_window {
  uint64_t start;             /* first byte in the layer below */
  uint64_t len;               /* bytes; unused when to_end */
  int to_end;                 /* the window ends where the layer below does */
};

/* What nbd_window_fit_size and nbd_window_fit_blocks found wrong. */
#define NBD_WINDOW_FITS            0
#define NBD_WINDOW_START_PAST_END  1 /* start > size below */
#define NBD_WINDOW_END_PAST_END    2 /* start + len > size below */
#define NBD_WINDOW_START_UNALIGNED 3 /* start % minimum != 0 */
#define NBD_WINDOW_LEN_UNALIGNED   4 /* len % minimum != 0 */

/* Does w lie inside a disk of size bytes?  NBD_WINDOW_FITS, or
 * START_PAST_END / END_PAST_END. */
int nbd_window_fit_size(const struct nbd_window *w, uint64_t size);

/* The window's size over a disk of size bytes, on which it fits. */
uint64_t nbd_window_len(const struct nbd_window *w, uint64_t size);

/* The block-size rule, given the minimum and preferred sizes below.  An
 * aligned request in the window must stay aligned below, so start must be
 * a multiple of the minimum (START_UNALIGNED), and when start breaks the
 * preferred size, *preferred is lowered to the largest power of two
 * dividing start (at least the minimum).  len must be a multiple of the
 * minimum as well (LEN_UNALIGNED): the window is the export, and the NBD
 * protocol ("Block size constraints") wants its size a multiple of the
 * minimum, since the engine refuses every request that touches a last
 * partial block, whose bytes could then never be reached.  Rounding len
 * would serve another window than the one asked for, so the filter must
 * refuse.  A to_end window ends with the disk below, and an unaligned end
 * is that layer's own, passed on.  minimum 0 (no constraints) always
 * fits. */
int nbd_window_fit_blocks(const struct nbd_window *w, uint32_t minimum,
                          uint32_t *preferred);

/* ---- the forwarders ----------------------------------------------------- */

/* NBD_WINDOW_SHIFT(layer, method) defines layer_<method> for one ranged
 * method.  Each is one call with the offset moved, and static in the
 * filter's file, so the compiler inlines <layer>_window. */
#define NBD_WINDOW_SHIFT(layer, method) NBD_WINDOW_SHIFT_##method(layer)

#define NBD_WINDOW_SHIFT_pread(layer)                                       \
  static int                                                                \
  layer##_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,      \
                uint32_t count, uint64_t offset, uint32_t flags)            \
  {                                                                         \
    return next_pread(next, buf, count,                                     \
                      offset + layer##_window(self)->start, flags);         \
  }
#define NBD_WINDOW_SHIFT_pwrite(layer)                                      \
  static int                                                                \
  layer##_pwrite(struct nbd_ctx *self, struct nbd_ctx *next,                \
                 const void *buf, uint32_t count, uint64_t offset,          \
                 uint32_t flags)                                            \
  {                                                                         \
    return next_pwrite(next, buf, count,                                    \
                       offset + layer##_window(self)->start, flags);        \
  }
/* pwrite_from is optional: the filter's registration names it
 * (.pwrite_from = layer_pwrite_from) for payloads to reach the backend
 * without a copy. */
#define NBD_WINDOW_SHIFT_pwrite_from(layer)                                 \
  static int                                                                \
  layer##_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,           \
                      struct nbd_source *src, uint32_t count,               \
                      uint64_t offset, uint32_t flags)                      \
  {                                                                         \
    return next_pwrite_from(next, src, count,                               \
                            offset + layer##_window(self)->start, flags);   \
  }
#define NBD_WINDOW_SHIFT_trim(layer)                                        \
  static int                                                                \
  layer##_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,  \
               uint64_t offset, uint32_t flags)                             \
  {                                                                         \
    return next_trim(next, count, offset + layer##_window(self)->start,     \
                     flags);                                                \
  }
#define NBD_WINDOW_SHIFT_zero(layer)                                        \
  static int                                                                \
  layer##_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,  \
               uint64_t offset, uint32_t flags)                             \
  {                                                                         \
    return next_zero(next, count, offset + layer##_window(self)->start,     \
                     flags);                                                \
  }
#define NBD_WINDOW_SHIFT_cache(layer)                                       \
  static int                                                                \
  layer##_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count, \
                uint64_t offset, uint32_t flags)                            \
  {                                                                         \
    return next_cache(next, count, offset + layer##_window(self)->start,    \
                      flags);                                               \
  }
/* The layer below's extents, shifted back (src/extents.c). */
#define NBD_WINDOW_SHIFT_extents(layer)                                     \
  static int                                                                \
  layer##_extents(struct nbd_ctx *self, struct nbd_ctx *next,               \
                  uint64_t count, uint64_t offset, uint32_t flags,          \
                  struct nbd_extents *extents)                              \
  {                                                                         \
    return nbd_extents_shifted(next, count, offset,                         \
                               layer##_window(self)->start, flags,          \
                               extents);                                    \
  }

/* The depth map of the layer below, shifted back: a window changes no
 * depth. */
#define NBD_WINDOW_SHIFT_depth(layer)                                       \
  static int                                                                \
  layer##_depth(struct nbd_ctx *self, struct nbd_ctx *next,                 \
                uint64_t count, uint64_t offset, uint32_t flags,            \
                struct nbd_extents *extents)                                \
  {                                                                         \
    return nbd_depth_shifted(next, count, offset,                           \
                             layer##_window(self)->start, flags, extents);  \
  }

/* Every method that takes a range. */
#define NBD_WINDOW_SHIFTED(layer)                                           \
  NBD_WINDOW_SHIFT(layer, pread)                                            \
  NBD_WINDOW_SHIFT(layer, pwrite)                                           \
  NBD_WINDOW_SHIFT(layer, pwrite_from)                                      \
  NBD_WINDOW_SHIFT(layer, trim)                                             \
  NBD_WINDOW_SHIFT(layer, zero)                                             \
  NBD_WINDOW_SHIFT(layer, cache)                                            \
  NBD_WINDOW_SHIFT(layer, extents)                                          \
  NBD_WINDOW_SHIFT(layer, depth)

/* Flush has no range, and a window changes no capability but size and
 * block size. */
#define NBD_WINDOW_PASSTHROUGH(layer)                                       \
  PASSTHROUGH(layer, flush)                                                 \
  PASSTHROUGH(layer, can_write)                                             \
  PASSTHROUGH(layer, can_flush)                                             \
  PASSTHROUGH(layer, can_trim)                                              \
  PASSTHROUGH(layer, can_zero)                                              \
  PASSTHROUGH(layer, can_fast_zero)                                         \
  PASSTHROUGH(layer, can_fua)                                               \
  PASSTHROUGH(layer, can_cache)                                             \
  PASSTHROUGH(layer, can_extents)                                           \
  PASSTHROUGH(layer, can_multi_conn)                                        \
  PASSTHROUGH(layer, is_rotational)

#endif
