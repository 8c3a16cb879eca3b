/* nbdstack filter cow: the overlay store (overlay.c).
 *
 * The overlay is one file holding the blocks the client changed, at their
 * own disk offset (plus a fixed data offset), and a map with the state of
 * every block.  It is shared by every connection of the export.  The
 * temporary overlay is an unlinked file in $TMPDIR; the persistent one
 * (overlay=PATH) has a header and an on-disk copy of the map, made
 * durable by cow_overlay_flush.  This module knows nothing of the layer
 * below, of read-modify-write or of locking whole blocks: cow.c does that.
 */
#ifndef NBDSTACK_COW_OVERLAY_H
#define NBDSTACK_COW_OVERLAY_H

#include <stddef.h>
#include <stdint.h>

/* State of a block, two bits in the map (in memory and on disk). */
#define COW_BLOCK_BELOW     0   /* not in the overlay: read the layer below */
#define COW_BLOCK_ALLOCATED 1   /* in the overlay: read it there */
#define COW_BLOCK_ZERO      2   /* trimmed or zeroed: reads as zeros */

#define COW_MIN_BLOCK_SIZE  4096u
#define COW_MAX_BLOCK_SIZE  (32u << 20)

struct cow_overlay;

/* path NULL: a temporary overlay in tmpdir, gone when the process ends.
 * Otherwise the persistent overlay at path, created (mode 0600) if it is
 * missing or empty; an existing one must have been made with this block
 * size.  block_size is a power of two in [COW_MIN_BLOCK_SIZE,
 * COW_MAX_BLOCK_SIZE].  NULL with err filled (one line) on failure. */
struct cow_overlay *cow_overlay_open(const char *path, const char *tmpdir,
                                     uint32_t block_size, char *err,
                                     size_t errlen);
/* Writes the map of a persistent overlay durably (as cow_overlay_flush),
 * then closes and frees. */
void cow_overlay_close(struct cow_overlay *ov);

/* The size of the disk the overlay covers: fixed by the first call (which
 * writes the header of a new persistent overlay); later calls, and a
 * persistent overlay opened with a header, must give the same size.
 * 0, or -1 with err filled. */
int cow_overlay_set_size(struct cow_overlay *ov, uint64_t size, char *err,
                         size_t errlen);
uint64_t cow_overlay_size(const struct cow_overlay *ov);
uint32_t cow_overlay_block_size(const struct cow_overlay *ov);

/* The state of block blk, and how many blocks from blk on (at most max,
 * at least 1) share it. */
int cow_overlay_state(struct cow_overlay *ov, uint64_t blk, uint64_t max,
                      uint64_t *run);
/* Sets the state of block blk.  Set ALLOCATED only after the block's data
 * is in the overlay (cow_overlay_pwrite returned): a flush that sees the
 * new state makes the map durable only after the data. */
void cow_overlay_set_state(struct cow_overlay *ov, uint64_t blk, int state);

/* Bytes at a disk offset, stored in allocated blocks.  0 or -errno. */
int cow_overlay_pread(struct cow_overlay *ov, void *buf, uint32_t count,
                      uint64_t offset);
int cow_overlay_pwrite(struct cow_overlay *ov, const void *buf,
                       uint32_t count, uint64_t offset);
/* The same from the client's socket with splice(2), when
 * cow_overlay_can_splice; nbd_source_splice_at's returns. */
int cow_overlay_pwrite_from(struct cow_overlay *ov, struct nbd_source *src,
                            uint32_t count, uint64_t offset);
int cow_overlay_can_splice(const struct cow_overlay *ov);

/* Temporary overlay: nothing to do.  Persistent: make every write and map
 * change made before the call durable (data first, then the map).
 * 0 or -errno. */
int cow_overlay_flush(struct cow_overlay *ov);

#endif
