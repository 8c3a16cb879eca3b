/* nbdstack filter cache: the cached blocks, in the cache file and its map.
 *
 * The export's cache is one sparse file (cache.c makes it at setup),
 * shared by every connection, each block at its own disk offset, with one
 * state byte per block: not cached, clean (same bytes as below) or dirty
 * (newer than below).  FLUSH writes every dirty block back.  With
 * cache-max-size, clean blocks are dropped (second-chance clock), dirty
 * ones after being written back.
 *
 * Concurrency: one mutex guards the map, the counters and the clock ring;
 * no I/O runs under it.  A request marks its blocks busy (all at once, so
 * two requests cannot deadlock), does its I/O, then updates their states;
 * a block is busy for one request at a time, which orders writeback,
 * read-modify-write, zero and trim on it.
 *
 * It does not know the cache modes, cache-on-read or what a request does
 * with the blocks it holds (cache.c does), nor keep the cache across
 * restarts.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layer.h"
#include "blocks.h"

#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif

#define CACHE_MIN_BLOCKS  4           /* cache-max-size: at least this */

/* The map: one byte per block, its state (CACHE_NONE, _CLEAN, _DIRTY) and
 * these. */
#define CACHE_STATE  0x03
#define CACHE_BUSY   0x04             /* a request owns the block */
#define CACHE_REF    0x08             /* used since the clock hand passed */
#define CACHE_RING   0x10             /* listed in the clock ring */

#define CACHE_VICTIMS 64

/* Shared by every connection of the export. */
struct cache_blocks {
  int fd;                       /* the cache file */
  int can_splice;               /* nbd_can_splice_at(fd) */
  uint32_t bs;                  /* block size, a power of two */
  unsigned bits;                /* log2(bs) */
  uint64_t high, low;           /* reclaim thresholds in blocks, 0 = none */
  unsigned char *zeros;         /* bs zero bytes */
  struct nbd_bufpool pool;      /* block-sized bounce buffers */

  pthread_mutex_t lock;         /* everything below */
  pthread_cond_t idle;          /* some busy block was released */
  int64_t size;                 /* of the layer below; -1 until known */
  uint64_t nblocks;
  unsigned char *map;
  uint64_t ncached, ndirty;
  uint64_t cleaned;             /* dirty blocks that stopped being dirty */
  unsigned users;               /* prepared connections */
  uint64_t *ring;               /* clock ring (max size only) */
  size_t ring_cap, ring_head, ring_len;
  int reclaiming;
};

/* ---- setup -------------------------------------------------------------- */

struct cache_blocks *
cache_blocks_open(int fd, uint32_t block_size, char *err, size_t errlen)
{
  struct cache_blocks *bl;

  bl = calloc(1, sizeof *bl);
  if (bl == NULL) {
    close(fd);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  bl->fd = fd;
  bl->can_splice = nbd_can_splice_at(fd);
  bl->size = -1;
  pthread_mutex_init(&bl->lock, NULL);
  pthread_cond_init(&bl->idle, NULL);
  bl->bs = block_size;
  while ((1u << bl->bits) < bl->bs)
    bl->bits++;
  nbd_bufpool_init(&bl->pool, bl->bs);
  bl->zeros = calloc(1, bl->bs);
  if (bl->zeros == NULL) {
    snprintf(err, errlen, "out of memory");
    cache_blocks_close(bl);
    return NULL;
  }
  return bl;
}

/* The size limit, once the block size is final.  Holes must be punchable:
 * without them, dropping a block frees nothing. */
int
cache_blocks_limit(struct cache_blocks *bl, uint64_t max_size, uint64_t high,
                   uint64_t low, char *err, size_t errlen)
{
  uint64_t m = max_size;

  if (m / bl->bs < CACHE_MIN_BLOCKS) {
    snprintf(err, errlen, "cache-max-size=%" PRIu64 " is too small: it must "
             "hold at least %u cache blocks of %" PRIu32 " bytes", m,
             CACHE_MIN_BLOCKS, bl->bs);
    return -1;
  }
  /* m * pct / 100 without overflow. */
  bl->high = (m / 100 * high + m % 100 * high / 100) >> bl->bits;
  bl->low = (m / 100 * low + m % 100 * low / 100) >> bl->bits;
  if (bl->high == 0)
    bl->high = 1;
  if (ftruncate(bl->fd, bl->bs) == -1 ||
      pwrite(bl->fd, "x", 1, 0) != 1 ||
      fallocate(bl->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                bl->bs) == -1) {
    snprintf(err, errlen, "cache-max-size needs a cache file that can punch "
             "holes (fallocate) in $TMPDIR: %s", strerror(errno));
    return -1;
  }
  return 0;
}

void
cache_blocks_close(struct cache_blocks *bl)
{
  if (bl == NULL)
    return;
  if (bl->fd >= 0)
    close(bl->fd);
  pthread_mutex_destroy(&bl->lock);
  pthread_cond_destroy(&bl->idle);
  free(bl->zeros);
  if (bl->pool.size)
    nbd_bufpool_destroy(&bl->pool);
  free(bl->map);
  free(bl->ring);
  free(bl);
}

struct nbd_bufpool *
cache_blocks_pool(struct cache_blocks *bl)
{
  return &bl->pool;
}

/* ---- the cache file and the layer below ----------------------------------- */

int
cache_blocks_pread(struct cache_blocks *bl, void *buf, uint64_t len,
                   uint64_t off)
{
  return nbd_pread_full(bl->fd, buf, len, off);
}

int
cache_blocks_pwrite(struct cache_blocks *bl, const void *buf, uint64_t len,
                    uint64_t off)
{
  return nbd_pwrite_full(bl->fd, buf, len, off);
}

int
cache_blocks_pwrite_from(struct cache_blocks *bl, struct nbd_source *src,
                         uint64_t len, uint64_t off)
{
  return nbd_source_splice_at(src, bl->fd, len, off);
}

int
cache_blocks_can_splice(const struct cache_blocks *bl)
{
  return bl->can_splice;
}

/* Frees the file space of dropped blocks; a filesystem that cannot punch
 * only wastes space (cache-max-size checked it can at setup). */
static void
blocks_punch(struct cache_blocks *bl, uint64_t off, uint64_t len)
{
  if (len)
    (void)fallocate(bl->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    (off_t)off, (off_t)len);
}

/* Requests below, split to the lower layer's maximum.  Offsets are block
 * aligned and lengths whole blocks (or up to the end of the disk), and a
 * block is a multiple of the minimum below (cache_prepare checks). */
static uint32_t
blocks_chunk(struct nbd_ctx *next)
{
  uint32_t minimum, preferred, maximum;

  next_block_size(next, &minimum, &preferred, &maximum);
  return maximum && maximum < CACHE_MAX_BLOCK ? maximum : CACHE_MAX_BLOCK;
}

int
cache_blocks_below_pread(struct nbd_ctx *next, void *buf, uint64_t len,
                         uint64_t off)
{
  uint32_t chunk = blocks_chunk(next), n;
  char *p = buf;
  int r;

  for (; len > 0; len -= n, off += n, p += n) {
    n = len < chunk ? (uint32_t)len : chunk;
    if ((r = next_pread(next, p, n, off, 0)) < 0)
      return r;
  }
  return 0;
}

int
cache_blocks_below_pwrite(struct nbd_ctx *next, const void *buf, uint64_t len,
                          uint64_t off, uint32_t flags)
{
  uint32_t chunk = blocks_chunk(next), n;
  const char *p = buf;
  int r;

  for (; len > 0; len -= n, off += n, p += n) {
    n = len < chunk ? (uint32_t)len : chunk;
    if ((r = next_pwrite(next, p, n, off, flags)) < 0)
      return r;
  }
  return 0;
}

/* ---- the block map (bl->lock held unless said otherwise) -------------------- */

/* First byte after block b.  The size changes only while no connection
 * uses the blocks (cache_blocks_attach), so no lock is needed. */
uint64_t
cache_blocks_end(const struct cache_blocks *bl, uint64_t b)
{
  uint64_t e = (b + 1) << bl->bits;

  return e < (uint64_t)bl->size ? e : (uint64_t)bl->size;
}

static unsigned
blocks_state_of(const struct cache_blocks *bl, uint64_t b)
{
  return bl->map[b] & CACHE_STATE;
}

/* Lists a newly cached block in the clock ring.  Without memory the block
 * is simply never reclaimed. */
static void
blocks_ring_push(struct cache_blocks *bl, uint64_t b)
{
  if (bl->ring_len == bl->ring_cap) {
    size_t cap = bl->ring_cap ? 2 * bl->ring_cap : 1024, i;
    uint64_t *r = malloc(cap * sizeof *r);
    if (r == NULL)
      return;
    for (i = 0; i < bl->ring_len; i++)
      r[i] = bl->ring[(bl->ring_head + i) % bl->ring_cap];
    free(bl->ring);
    bl->ring = r;
    bl->ring_cap = cap;
    bl->ring_head = 0;
  }
  bl->ring[(bl->ring_head + bl->ring_len++) % bl->ring_cap] = b;
  bl->map[b] |= CACHE_RING;
}

static void
blocks_set(struct cache_blocks *bl, uint64_t b, unsigned state)
{
  unsigned old = blocks_state_of(bl, b);

  bl->ncached += (state != CACHE_NONE) - (old != CACHE_NONE);
  bl->ndirty += (state == CACHE_DIRTY) - (old == CACHE_DIRTY);
  if (old == CACHE_DIRTY && state != CACHE_DIRTY)
    bl->cleaned++;
  bl->map[b] = (unsigned char)((bl->map[b] & ~CACHE_STATE) | state);
  if (old == CACHE_NONE)
    bl->map[b] &= (unsigned char)~CACHE_REF;
  if (state != CACHE_NONE && bl->high && !(bl->map[b] & CACHE_RING))
    blocks_ring_push(bl, b);
}

static int
blocks_any_busy(const struct cache_blocks *bl, uint64_t first, uint64_t last)
{
  uint64_t b;

  for (b = first; b <= last; b++)
    if (bl->map[b] & CACHE_BUSY)
      return 1;
  return 0;
}

/* Takes blocks first..last for one request: all at once, when none is
 * busy, so no two requests each hold what the other waits for.  A cached
 * block is marked used (the clock's second chance goes to blocks used
 * again, not to every block just read in, so one pass over the disk does
 * not push out the blocks in use).  Takes and drops the lock. */
void
cache_blocks_acquire(struct cache_blocks *bl, uint64_t first, uint64_t last)
{
  uint64_t b;

  pthread_mutex_lock(&bl->lock);
  while (blocks_any_busy(bl, first, last))
    pthread_cond_wait(&bl->idle, &bl->lock);
  for (b = first; b <= last; b++)
    bl->map[b] |= CACHE_BUSY | (blocks_state_of(bl, b) ? CACHE_REF : 0);
  pthread_mutex_unlock(&bl->lock);
}

static void
blocks_release_locked(struct cache_blocks *bl, uint64_t first, uint64_t last)
{
  uint64_t b;

  for (b = first; b <= last; b++)
    bl->map[b] &= (unsigned char)~CACHE_BUSY;
  pthread_cond_broadcast(&bl->idle);
}

void
cache_blocks_release(struct cache_blocks *bl, uint64_t first, uint64_t last)
{
  pthread_mutex_lock(&bl->lock);
  blocks_release_locked(bl, first, last);
  pthread_mutex_unlock(&bl->lock);
}

/* After a failed change: what went below is unknown, so clean blocks are
 * dropped (the next read asks below); dirty ones keep the newest data the
 * client has seen acknowledged, and stay dirty. */
static void
blocks_fail_locked(struct cache_blocks *bl, uint64_t first, uint64_t last)
{
  uint64_t b;

  for (b = first; b <= last; b++)
    if (blocks_state_of(bl, b) == CACHE_CLEAN)
      blocks_set(bl, b, CACHE_NONE);
}

/* Sets blocks first..last to state and gives them back, under one lock. */
void
cache_blocks_release_as(struct cache_blocks *bl, uint64_t first,
                        uint64_t last, unsigned state)
{
  uint64_t b;

  pthread_mutex_lock(&bl->lock);
  for (b = first; b <= last; b++)
    blocks_set(bl, b, state);
  blocks_release_locked(bl, first, last);
  pthread_mutex_unlock(&bl->lock);
}

/* Drops clean blocks first..last (blocks_fail_locked) and gives them back,
 * under one lock. */
void
cache_blocks_release_failed(struct cache_blocks *bl, uint64_t first,
                            uint64_t last)
{
  pthread_mutex_lock(&bl->lock);
  blocks_fail_locked(bl, first, last);
  blocks_release_locked(bl, first, last);
  pthread_mutex_unlock(&bl->lock);
}

/* Sets blocks first..last to state (the caller owns them). */
void
cache_blocks_mark(struct cache_blocks *bl, uint64_t first, uint64_t last,
                  unsigned state)
{
  uint64_t b;

  pthread_mutex_lock(&bl->lock);
  for (b = first; b <= last; b++)
    blocks_set(bl, b, state);
  pthread_mutex_unlock(&bl->lock);
}

/* The last block of the run from b up to last whose blocks are all cached
 * or all not cached (the caller owns them). */
uint64_t
cache_blocks_run(struct cache_blocks *bl, uint64_t b, uint64_t last,
                 int *cached)
{
  pthread_mutex_lock(&bl->lock);
  *cached = blocks_state_of(bl, b) != CACHE_NONE;
  while (b < last && (blocks_state_of(bl, b + 1) != CACHE_NONE) == *cached)
    b++;
  pthread_mutex_unlock(&bl->lock);
  return b;
}

/* After a zero or trim [offset, offset+count) went below: blocks it covers
 * leave the cache (a dirty one must never go back over it); in a partial
 * block the range is zeroed, except that trim drops a clean one.  On a
 * failure to zero, a dirty block keeps its old bytes there, which the
 * failed request allows. */
int
cache_blocks_discard(struct cache_blocks *bl, uint64_t count, uint64_t offset,
                     uint64_t first, uint64_t last, int trim)
{
  uint64_t b, start, end, lo, hi, pfirst = 0, pend = 0;
  unsigned state;
  int r = 0, e;

  for (b = first; b <= last; b++) {
    start = b << bl->bits;
    end = cache_blocks_end(bl, b);
    lo = offset > start ? offset : start;
    hi = offset + count < end ? offset + count : end;
    if (lo == start && hi == end) {     /* covered: contiguous */
      if (pend == 0)
        pfirst = start;
      pend = end;
      continue;
    }
    pthread_mutex_lock(&bl->lock);
    state = blocks_state_of(bl, b);
    if (state == CACHE_CLEAN && trim)
      blocks_set(bl, b, CACHE_NONE);
    pthread_mutex_unlock(&bl->lock);
    if (state == CACHE_NONE || (state == CACHE_CLEAN && trim))
      continue;
    if ((e = cache_blocks_pwrite(bl, bl->zeros, hi - lo, lo)) < 0) {
      pthread_mutex_lock(&bl->lock);
      blocks_fail_locked(bl, b, b);
      pthread_mutex_unlock(&bl->lock);
      r = e;
    }
  }
  if (pend == 0)
    return r;
  blocks_punch(bl, pfirst, pend - pfirst);
  pthread_mutex_lock(&bl->lock);
  for (b = pfirst >> bl->bits; b <= last && (b << bl->bits) < pend; b++)
    blocks_set(bl, b, CACHE_NONE);
  pthread_mutex_unlock(&bl->lock);
  return r;
}

uint64_t
cache_blocks_ndirty(struct cache_blocks *bl, uint64_t *cleaned)
{
  uint64_t n;

  pthread_mutex_lock(&bl->lock);
  n = bl->ndirty;
  if (cleaned)
    *cleaned = bl->cleaned;
  pthread_mutex_unlock(&bl->lock);
  return n;
}

/* below's extents cut at block boundaries, a dirty block as dirty_type,
 * under one lock. */
int
cache_blocks_extents(struct cache_blocks *bl, const struct nbd_extents *below,
                     struct nbd_extents *extents, uint32_t dirty_type,
                     uint64_t cleaned)
{
  uint64_t pos, end, bend;
  uint32_t type;
  size_t i;
  int r = 0;

  pthread_mutex_lock(&bl->lock);
  if (bl->cleaned != cleaned) {
    pthread_mutex_unlock(&bl->lock);
    return 1;
  }
  for (i = 0; r == 0 && i < below->n; i++) {
    end = below->v[i].offset + below->v[i].length;
    for (pos = below->v[i].offset; r == 0 && pos < end; pos = bend) {
      bend = cache_blocks_end(bl, pos >> bl->bits);
      if (bend > end)
        bend = end;
      type = below->v[i].type;
      if (blocks_state_of(bl, pos >> bl->bits) == CACHE_DIRTY)
        type = dirty_type;
      r = nbd_extents_add(extents, pos, bend - pos, type);
    }
  }
  pthread_mutex_unlock(&bl->lock);
  return r;
}

/* ---- writeback and reclaim --------------------------------------------------- */

/* Writes blocks first..last (owned, dirty) from the cache file below. */
static int
blocks_write_back(struct cache_blocks *bl, struct nbd_ctx *next, void *buf,
                  uint64_t first, uint64_t last)
{
  uint64_t off = first << bl->bits, len = cache_blocks_end(bl, last) - off;
  int r;

  if ((r = cache_blocks_pread(bl, buf, len, off)) < 0 ||
      (r = cache_blocks_below_pwrite(next, buf, len, off, 0)) < 0)
    nbd_error("filter cache: writing back %" PRIu64 "+%" PRIu64 " failed: "
              "%s", off, len, strerror(-r));
  return r;
}

/* Every block dirty when it starts goes below.  A dirty block that is
 * busy is waited for (a write to it may be one the flush must cover); a
 * write arriving after a block went back leaves it dirty again.  A failed
 * run stays dirty for the next flush; the rest is still written. */
int
cache_blocks_write_back_all(struct cache_blocks *bl, struct nbd_ctx *next)
{
  uint64_t run = CACHE_RUN >> bl->bits, pos = 0, b, e;
  void *buf;
  int r, err = 0;

  if (run == 0)
    run = 1;
  buf = malloc(run << bl->bits);
  if (buf == NULL)
    return -ENOMEM;
  pthread_mutex_lock(&bl->lock);
  while (bl->ndirty > 0) {
    if (nbd_server_aborting()) {
      /* A second signal: the operator chose to lose these. */
      nbd_error("filter cache: shutdown cut the write-back short: %" PRIu64
                " dirty blocks (%" PRIu64 " bytes) not written below",
                bl->ndirty, bl->ndirty << bl->bits);
      err = -ESHUTDOWN;
      break;
    }
    for (b = pos; b < bl->nblocks && blocks_state_of(bl, b) != CACHE_DIRTY;
         b++)
      ;
    if (b == bl->nblocks)
      break;
    if (bl->map[b] & CACHE_BUSY) {
      pthread_cond_wait(&bl->idle, &bl->lock);
      continue;
    }
    for (e = b; e + 1 < bl->nblocks && e + 1 - b < run &&
         (bl->map[e + 1] & (CACHE_STATE | CACHE_BUSY)) == CACHE_DIRTY; e++)
      ;
    for (pos = b; pos <= e; pos++)
      bl->map[pos] |= CACHE_BUSY;
    pthread_mutex_unlock(&bl->lock);
    r = blocks_write_back(bl, next, buf, b, e);
    pthread_mutex_lock(&bl->lock);
    for (pos = b; r == 0 && pos <= e; pos++)
      blocks_set(bl, pos, CACHE_CLEAN);
    for (pos = b; pos <= e; pos++)
      bl->map[pos] &= (unsigned char)~CACHE_BUSY;
    pthread_cond_broadcast(&bl->idle);
    if (r < 0 && err == 0)
      err = r;
    pos = e + 1;
  }
  pthread_mutex_unlock(&bl->lock);
  free(buf);
  return err;
}

/* Up to CACHE_VICTIMS blocks to drop, by second chance: a block used since
 * the hand last passed goes round again.  Owned on return. */
static size_t
blocks_pick_victims(struct cache_blocks *bl, uint64_t *v, int *dirty,
                    int clean_only)
{
  size_t n = 0, steps = 2 * bl->ring_len + CACHE_VICTIMS;
  uint64_t b;

  while (n < CACHE_VICTIMS && bl->ring_len > 0 && steps-- > 0 &&
         bl->ncached - n > bl->low) {
    b = bl->ring[bl->ring_head];
    bl->ring_head = (bl->ring_head + 1) % bl->ring_cap;
    bl->ring_len--;
    bl->map[b] &= (unsigned char)~CACHE_RING;
    if (blocks_state_of(bl, b) == CACHE_NONE)
      continue;                 /* dropped by trim or zero meanwhile */
    if ((bl->map[b] & (CACHE_BUSY | CACHE_REF)) ||
        (clean_only && blocks_state_of(bl, b) == CACHE_DIRTY)) {
      bl->map[b] &= (unsigned char)~CACHE_REF;
      blocks_ring_push(bl, b);
      continue;
    }
    bl->map[b] |= CACHE_BUSY;
    dirty[n] = blocks_state_of(bl, b) == CACHE_DIRTY;
    v[n++] = b;
  }
  return n;
}

/* Above the high threshold: drop blocks down to the low one, writing
 * dirty ones back first (in every mode: unsafe only skips FLUSH).  One
 * request reclaims at a time; the others go on.  A read-only connection
 * cannot write below, so it drops clean blocks only. */
void
cache_blocks_reclaim(struct cache_blocks *bl, struct nbd_ctx *next)
{
  uint64_t v[CACHE_VICTIMS];
  int dirty[CACHE_VICTIMS], failed[CACHE_VICTIMS];
  int stop = 0, clean_only = !next_can_write(next);
  void *buf = NULL;
  size_t n, i;

  pthread_mutex_lock(&bl->lock);
  if (bl->high == 0 || bl->reclaiming || bl->ncached <= bl->high) {
    pthread_mutex_unlock(&bl->lock);
    return;
  }
  bl->reclaiming = 1;
  while (!stop && bl->ncached > bl->low &&
         (n = blocks_pick_victims(bl, v, dirty, clean_only)) > 0) {
    pthread_mutex_unlock(&bl->lock);
    for (i = 0; i < n; i++) {
      failed[i] = 0;
      if (dirty[i]) {
        if (buf == NULL && (buf = nbd_bufpool_get(&bl->pool, bl->bs)) == NULL)
          failed[i] = 1;
        else
          failed[i] = blocks_write_back(bl, next, buf, v[i], v[i]) < 0;
      }
      if (!failed[i])
        blocks_punch(bl, v[i] << bl->bits, cache_blocks_end(bl, v[i]) -
                     (v[i] << bl->bits));
    }
    pthread_mutex_lock(&bl->lock);
    for (i = 0; i < n; i++) {
      if (failed[i]) {
        stop = 1;               /* try again after the next request */
        if (!(bl->map[v[i]] & CACHE_RING))
          blocks_ring_push(bl, v[i]);
      }
      else
        blocks_set(bl, v[i], CACHE_NONE);
      bl->map[v[i]] &= (unsigned char)~CACHE_BUSY;
    }
    pthread_cond_broadcast(&bl->idle);
  }
  bl->reclaiming = 0;
  pthread_mutex_unlock(&bl->lock);
  nbd_bufpool_put(&bl->pool, buf, bl->bs);
}

/* ---- connections ------------------------------------------------------------- */

/* Sizes the map for the disk below; drops every (clean) block. */
static int
blocks_resize(struct cache_blocks *bl, int64_t size)
{
  uint64_t n = ((uint64_t)size + bl->bs - 1) >> bl->bits;
  unsigned char *map = calloc(n ? n : 1, 1);

  if (map == NULL) {
    nbd_error("filter cache: no memory for the map of %" PRIu64 " blocks", n);
    return -ENOMEM;
  }
  if (ftruncate(bl->fd, 0) == -1 || ftruncate(bl->fd, size) == -1) {
    int e = errno;
    nbd_error("filter cache: cannot size the cache file to %" PRId64
              " bytes: %s", size, strerror(e));
    free(map);
    return -e;
  }
  free(bl->map);
  bl->map = map;
  bl->nblocks = n;
  bl->size = size;
  bl->ncached = bl->ndirty = 0;
  bl->ring_len = bl->ring_head = 0;
  return 0;
}

/* The map follows the size of the disk below, which may change between
 * connections, but not while another connection uses the cache or dirty
 * blocks wait to go below. */
int
cache_blocks_attach(struct cache_blocks *bl, int64_t size,
                    const char *export_name)
{
  int r = 0;

  pthread_mutex_lock(&bl->lock);
  if (size != bl->size) {
    if (bl->users > 0 || bl->ndirty > 0) {
      nbd_error("export '%s': filter cache: the size of the layer below "
                "changed from %" PRId64 " to %" PRId64 " while the cache is "
                "in use", export_name, bl->size, size);
      r = -EBUSY;
    }
    else
      r = blocks_resize(bl, size);
  }
  if (r == 0)
    bl->users++;
  pthread_mutex_unlock(&bl->lock);
  return r;
}

void
cache_blocks_detach(struct cache_blocks *bl)
{
  pthread_mutex_lock(&bl->lock);
  bl->users--;
  pthread_mutex_unlock(&bl->lock);
}
