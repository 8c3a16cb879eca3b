/* nbdstack filter cache: the cached blocks (blocks.c).
 *
 * The blocks of an export's cache file and the state of each, shared by
 * every connection.  A request takes the blocks it touches (busy) for its
 * I/O, then gives them back with their new states.  This module also
 * writes dirty blocks back below (FLUSH, reclaim) and drops blocks past
 * cache-max-size.  It does not create the cache file or choose the block
 * size, and knows nothing of the cache modes, cache-on-read,
 * read-modify-write or the filter's methods: cache.c does that.
 */
#ifndef NBDSTACK_CACHE_BLOCKS_H
#define NBDSTACK_CACHE_BLOCKS_H

#include <stddef.h>
#include <stdint.h>

struct nbd_bufpool;
struct nbd_ctx;
struct nbd_extents;

#define CACHE_MIN_BLOCK   4096u         /* nbdkit's lower bound */
#define CACHE_MAX_BLOCK   (32u << 20)   /* a block must fit one request */
#define CACHE_RUN         (4u << 20)    /* bytes per writeback or prefetch */

/* The state of a block. */
#define CACHE_NONE   0x00             /* not cached */
#define CACHE_CLEAN  0x01             /* same bytes as below */
#define CACHE_DIRTY  0x02             /* newer than below */

struct cache_blocks;

/* ---- setup ---- */

/* The blocks of the cache file fd (sparse, already unlinked), of
 * block_size bytes: a power of two in [CACHE_MIN_BLOCK, CACHE_MAX_BLOCK].
 * Takes fd: closed by cache_blocks_close, or at once on failure.  NULL
 * with err filled (one line) on failure. */
struct cache_blocks *cache_blocks_open(int fd, uint32_t block_size,
                                       char *err, size_t errlen);
/* cache-max-size: reclaim from high percent of max_size down to low
 * percent.  0, or -1 with err filled. */
int cache_blocks_limit(struct cache_blocks *bl, uint64_t max_size,
                       uint64_t high, uint64_t low, char *err,
                       size_t errlen);
void cache_blocks_close(struct cache_blocks *bl);
/* Block-sized bounce buffers, shared with reclaim. */
struct nbd_bufpool *cache_blocks_pool(struct cache_blocks *bl);

/* ---- connections ---- */

/* A connection starts using the blocks of a disk of size bytes (the size
 * of the layer below): 0, or a negative errno (reported). */
int cache_blocks_attach(struct cache_blocks *bl, int64_t size,
                        const char *export_name);
void cache_blocks_detach(struct cache_blocks *bl);

/* ---- requests (blocks first..last, by number) ---- */

/* First byte after block b (the end of the disk for the last block). */
uint64_t cache_blocks_end(const struct cache_blocks *bl, uint64_t b);
/* Takes blocks first..last for one request, all at once, waiting while
 * any is busy. */
void cache_blocks_acquire(struct cache_blocks *bl, uint64_t first,
                          uint64_t last);
/* Gives them back: unchanged; all set to state; or after a failed change
 * (clean ones dropped, dirty ones kept). */
void cache_blocks_release(struct cache_blocks *bl, uint64_t first,
                          uint64_t last);
void cache_blocks_release_as(struct cache_blocks *bl, uint64_t first,
                             uint64_t last, unsigned state);
void cache_blocks_release_failed(struct cache_blocks *bl, uint64_t first,
                                 uint64_t last);
/* Sets blocks first..last (owned) to state. */
void cache_blocks_mark(struct cache_blocks *bl, uint64_t first,
                       uint64_t last, unsigned state);
/* The last block of the run from b up to last (owned) whose blocks are
 * all cached or all not cached, and which it is. */
uint64_t cache_blocks_run(struct cache_blocks *bl, uint64_t b, uint64_t last,
                          int *cached);
/* After a zero (trim 0) or trim of [offset, offset+count) went below:
 * covered blocks leave the cache, partial ones are zeroed or dropped.
 * The caller owns blocks first..last, those of the range.  0 or -errno. */
int cache_blocks_discard(struct cache_blocks *bl, uint64_t count,
                         uint64_t offset, uint64_t first, uint64_t last,
                         int trim);

/* Bytes of the cache file at a disk offset.  0 or -errno. */
int cache_blocks_pread(struct cache_blocks *bl, void *buf, uint64_t len,
                       uint64_t off);
int cache_blocks_pwrite(struct cache_blocks *bl, const void *buf,
                        uint64_t len, uint64_t off);
/* The same from the client's socket with splice(2), when
 * cache_blocks_can_splice; nbd_source_splice_at's returns. */
int cache_blocks_pwrite_from(struct cache_blocks *bl, struct nbd_source *src,
                             uint64_t len, uint64_t off);
int cache_blocks_can_splice(const struct cache_blocks *bl);

/* Requests below, split to the lower layer's maximum.  0 or -errno. */
int cache_blocks_below_pread(struct nbd_ctx *next, void *buf, uint64_t len,
                             uint64_t off);
int cache_blocks_below_pwrite(struct nbd_ctx *next, const void *buf,
                              uint64_t len, uint64_t off, uint32_t flags);

/* ---- the whole cache ---- */

/* How many blocks are dirty; with cleaned non-NULL, also how many times
 * so far a dirty block stopped being dirty (written back, reclaimed,
 * dropped), under the same lock. */
uint64_t cache_blocks_ndirty(struct cache_blocks *bl, uint64_t *cleaned);
/* The extents of below added to extents, cut at block boundaries, with
 * dirty blocks of type dirty_type (0, data, for base:allocation; 1 for
 * the depth map).  below was asked after cache_blocks_ndirty returned
 * cleaned: when a dirty block was cleaned since, below may be older than
 * the data written back meanwhile (a hole where the client wrote), and
 * nothing is added: 1.  Else 0 or -errno. */
int cache_blocks_extents(struct cache_blocks *bl,
                         const struct nbd_extents *below,
                         struct nbd_extents *extents, uint32_t dirty_type,
                         uint64_t cleaned);
/* Writes every dirty block below (waiting for busy ones); failed ones
 * stay dirty.  0 or the first -errno. */
int cache_blocks_write_back_all(struct cache_blocks *bl,
                                struct nbd_ctx *next);
/* Past the high threshold of cache-max-size: drops blocks down to the low
 * one, writing dirty ones back first (clean ones only when next cannot
 * write). */
void cache_blocks_reclaim(struct cache_blocks *bl, struct nbd_ctx *next);

#endif
