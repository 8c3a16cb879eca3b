/* nbdstack filter cow: the overlay store, temporary or persistent.
 *
 * Block b of the disk (block_size bytes; the last one may be shorter) is
 * kept, when the client changed it, at data_offset + b * block_size of the
 * overlay file: the file is sparse and needs no allocation table.  The map
 * holds two bits per block (COW_BLOCK_BELOW, _ALLOCATED, _ZERO; block b in
 * byte b / 4, bits 2 * (b % 4)), in memory, and for a persistent overlay
 * also on disk.
 *
 * Temporary overlay: an O_TMPFILE (or mkstemp + unlink) file in $TMPDIR,
 * data_offset 0, no header.  Nothing survives the process, so flush does
 * nothing.
 *
 * Persistent overlay (overlay=PATH), all integers little-endian:
 *
 *   0      8  magic "NBDSTCOW"
 *   8      4  version (1)
 *   12     4  block size
 *   16     8  disk size in bytes
 *   24     8  map offset (4096)
 *   32     8  data offset: map offset + map bytes, rounded up to the
 *             block size
 *   40..4095  zero
 *   4096      the map, ceil(blocks / 4) bytes, written in 4 KiB pages
 *   data offset  the blocks, each at data offset + its disk offset
 *
 * The header is written once, when the first client connects to a new
 * (missing or empty) file and the disk size becomes known; a file with a
 * wrong magic is refused before anything is written to it, and flock
 * keeps a second process off a file in use.
 *
 * Crash consistency.  Data blocks are written in place, and the in-memory
 * map marks a block ALLOCATED only after its data was written (cow.c).
 * A map page changed since the last flush is dirty.  cow_overlay_flush:
 *
 *   1. copies the dirty map pages (and clears their dirty marks): every
 *      state in the copy belongs to a write that has returned;
 *   2. fdatasync: that data, and every other write that returned before the
 *      flush began, is durable;
 *   3. writes the copied pages to the on-disk map;
 *   4. fdatasync again: the map is durable.
 *
 * So the on-disk map never points at a block whose data is not durable
 * (the copy is taken before the first fdatasync, and writes made during
 * the flush stay dirty for the next one), and after a completed flush
 * every write acknowledged before it is found again.  Each map byte on
 * disk holds either its old or its new value after a crash in step 3, and
 * both point at durable data.  A failed fdatasync makes the overlay fail
 * every later flush (the kernel may have dropped the dirty pages and would
 * not report it twice).  Flushes run one at a time (flush_lock), so an
 * older copy of a page never lands after a newer one.
 *
 * It does not lock blocks against concurrent read-modify-write (cow.c does)
 * or reclaim the space of zeroed blocks.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layer.h"
#include "overlay.h"

#define OVERLAY_MAGIC       "NBDSTCOW"
#define OVERLAY_VERSION     1
#define OVERLAY_HEADER_SIZE 4096u
#define OVERLAY_HEADER_USED 40u
#define OVERLAY_PAGE        4096u   /* map bytes written at a time */

struct cow_overlay {
  int fd;
  int can_splice;               /* nbd_can_splice_at(fd) */
  int persistent;
  char *path;                   /* persistent: for messages */
  uint32_t block_size;
  unsigned shift;               /* log2(block_size) */
  uint64_t data_offset;
  int failed;                   /* a durable flush failed: errno */
  int checking;                 /* --check-config: read-only, unlocked */

  pthread_mutex_t lock;         /* everything below */
  pthread_mutex_t flush_lock;   /* one flush at a time */
  int has_size;
  int has_header;               /* persistent: header on disk */
  uint64_t size;
  uint64_t nblocks;
  uint8_t *map;                 /* 2 bits per block */
  size_t map_bytes;
  uint8_t *dirty;               /* persistent: one byte per map page */
  size_t npages;
};

/* ---- helpers ---------------------------------------------------------- */

static void
overlay_put32(uint8_t *p, uint32_t v)
{
  int i;

  for (i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static void
overlay_put64(uint8_t *p, uint64_t v)
{
  overlay_put32(p, (uint32_t)v);
  overlay_put32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t
overlay_get32(const uint8_t *p)
{
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

static uint64_t
overlay_get64(const uint8_t *p)
{
  return overlay_get32(p) | (uint64_t)overlay_get32(p + 4) << 32;
}

static int
overlay_sync(int fd)
{
  while (fdatasync(fd) == -1)
    if (errno != EINTR)
      return -errno;
  return 0;
}

static unsigned
overlay_log2(uint32_t v)
{
  unsigned s = 0;

  while ((1u << s) < v)
    s++;
  return s;
}

/* Geometry of a disk of size bytes: blocks, map bytes, data offset.  -1
 * when the overlay could not address it in an off_t. */
static int
overlay_geometry(const struct cow_overlay *ov, uint64_t size,
                 uint64_t *nblocks, uint64_t *map_bytes, uint64_t *data_offset)
{
  uint64_t bs = ov->block_size;

  if (size > (uint64_t)INT64_MAX)
    return -1;
  *nblocks = size / bs + (size % bs != 0);
  *map_bytes = (*nblocks + 3) / 4;
  *data_offset = 0;
  if (ov->persistent)
    *data_offset = (OVERLAY_HEADER_SIZE + *map_bytes + bs - 1) / bs * bs;
  /* The last block is written whole up to the disk's end: data_offset +
   * size must fit. */
  if (*data_offset > (uint64_t)INT64_MAX - size ||
      *map_bytes > (uint64_t)SIZE_MAX)
    return -1;
  return 0;
}

/* Allocates the in-memory map (and dirty pages) for size bytes. */
static int
overlay_alloc_map(struct cow_overlay *ov, uint64_t size, char *err,
                  size_t errlen)
{
  uint64_t nblocks, map_bytes, data_offset;

  if (overlay_geometry(ov, size, &nblocks, &map_bytes, &data_offset) == -1) {
    snprintf(err, errlen, "a disk of %" PRIu64 " bytes is too large for the "
             "overlay", size);
    return -1;
  }
  ov->map = calloc(map_bytes ? (size_t)map_bytes : 1, 1);
  ov->npages = (size_t)((map_bytes + OVERLAY_PAGE - 1) / OVERLAY_PAGE);
  ov->dirty = calloc(ov->npages ? ov->npages : 1, 1);
  if (ov->map == NULL || ov->dirty == NULL) {
    snprintf(err, errlen, "out of memory for the map of %" PRIu64 " blocks",
             nblocks);
    free(ov->map);
    free(ov->dirty);
    ov->map = ov->dirty = NULL;
    return -1;
  }
  ov->size = size;
  ov->nblocks = nblocks;
  ov->map_bytes = (size_t)map_bytes;
  ov->data_offset = data_offset;
  ov->has_size = 1;
  return 0;
}

static int
overlay_get(const struct cow_overlay *ov, uint64_t blk)
{
  return (ov->map[blk >> 2] >> ((blk & 3) * 2)) & 3;
}

/* ---- opening ---------------------------------------------------------- */

static int
overlay_open_temporary(struct cow_overlay *ov, const char *tmpdir, char *err,
                       size_t errlen)
{
  char *tmpl;
  int fd;

#ifdef O_TMPFILE
  fd = open(tmpdir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) {
    ov->fd = fd;
    return 0;
  }
  /* EOPNOTSUPP/EISDIR: a filesystem or kernel without O_TMPFILE. */
  if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
    goto fail;
#endif
  if (asprintf(&tmpl, "%s/nbdstack-cow.XXXXXX", tmpdir) == -1) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  fd = mkostemp(tmpl, O_CLOEXEC);
  if (fd >= 0)
    unlink(tmpl);
  free(tmpl);
  if (fd >= 0) {
    ov->fd = fd;
    return 0;
  }
#ifdef O_TMPFILE
fail:
#endif
  snprintf(err, errlen, "cannot create the temporary overlay in %s: %s "
           "(set TMPDIR to a writable directory)", tmpdir, strerror(errno));
  return -1;
}

/* A new file's name must survive a crash too: fsync its directory. */
static void
overlay_sync_dir(const char *path)
{
  char *dir = strdup(path), *slash;
  int fd;

  if (dir == NULL)
    return;
  slash = strrchr(dir, '/');
  if (slash == NULL)
    strcpy(dir, ".");
  else if (slash == dir)
    slash[1] = '\0';
  else
    *slash = '\0';
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
  free(dir);
}

/* Reads and checks the header and the map of an existing overlay. */
static int
overlay_load(struct cow_overlay *ov, uint64_t file_size, char *err,
             size_t errlen)
{
  uint8_t h[OVERLAY_HEADER_USED];
  uint64_t size, map_offset, data_offset, blk;
  uint32_t version, bs;
  int r;

  if (file_size < OVERLAY_HEADER_USED ||
      (r = nbd_pread_full(ov->fd, h, sizeof h, 0)) < 0 ||
      memcmp(h, OVERLAY_MAGIC, 8) != 0) {
    snprintf(err, errlen, "overlay %s is not an nbdstack cow overlay (bad "
             "magic); refusing to use it", ov->path);
    return -1;
  }
  version = overlay_get32(h + 8);
  bs = overlay_get32(h + 12);
  size = overlay_get64(h + 16);
  map_offset = overlay_get64(h + 24);
  data_offset = overlay_get64(h + 32);
  if (version != OVERLAY_VERSION) {
    snprintf(err, errlen, "overlay %s has format version %" PRIu32 " (this "
             "nbdstack reads version %d)", ov->path, version,
             OVERLAY_VERSION);
    return -1;
  }
  if (bs != ov->block_size) {
    snprintf(err, errlen, "overlay %s was made with cow-block-size=%" PRIu32
             ", not %" PRIu32, ov->path, bs, ov->block_size);
    return -1;
  }
  if (overlay_alloc_map(ov, size, err, errlen) == -1)
    return -1;
  if (map_offset != OVERLAY_HEADER_SIZE || data_offset != ov->data_offset) {
    snprintf(err, errlen, "overlay %s has a corrupt header (map at %" PRIu64
             ", data at %" PRIu64 ")", ov->path, map_offset, data_offset);
    return -1;
  }
  if (file_size < OVERLAY_HEADER_SIZE + ov->map_bytes ||
      (r = nbd_pread_full(ov->fd, ov->map, ov->map_bytes,
                              OVERLAY_HEADER_SIZE)) < 0) {
    snprintf(err, errlen, "overlay %s: cannot read the map: %s", ov->path,
             file_size < OVERLAY_HEADER_SIZE + ov->map_bytes ?
             "the file is truncated" : strerror(-r));
    return -1;
  }
  for (blk = 0; blk < ov->nblocks; blk++)
    if (overlay_get(ov, blk) == 3) {
      snprintf(err, errlen, "overlay %s has a corrupt map (block %" PRIu64
               " has state 3)", ov->path, blk);
      return -1;
    }
  ov->has_header = 1;
  return 0;
}

/* --check-config (nbd_checking): the overlay is opened read-only and
 * not locked, since a running server may hold it, and a missing one is
 * not created: its directory must let the server create it. */
static int
overlay_open_check(struct cow_overlay *ov, const char *path, char *err,
                   size_t errlen)
{
  char *dir, *slash;
  int r;

  ov->checking = 1;
  ov->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (ov->fd >= 0)
    return 1;
  if (errno != ENOENT) {
    snprintf(err, errlen, "cannot open overlay %s: %s", path,
             strerror(errno));
    return 0;
  }
  if ((dir = strdup(path)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return 0;
  }
  slash = strrchr(dir, '/');
  if (slash == NULL)
    strcpy(dir, ".");
  else if (slash == dir)
    slash[1] = '\0';
  else
    *slash = '\0';
  r = access(dir, W_OK | X_OK);
  if (r == -1)
    snprintf(err, errlen, "cannot create overlay %s: %s: %s", path, dir,
             strerror(errno));
  free(dir);
  return r == -1 ? 0 : 2;
}

static int
overlay_open_persistent(struct cow_overlay *ov, const char *path, char *err,
                        size_t errlen)
{
  struct stat sb;
  int created = 1;

  if (nbd_checking()) {
    /* 0: reported, 1: opened, 2: missing, would be created. */
    switch (overlay_open_check(ov, path, err, errlen)) {
    case 0: return -1;
    case 2: return 0;
    default: goto opened;
    }
  }
  ov->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (ov->fd == -1 && errno == EEXIST) {
    created = 0;
    ov->fd = open(path, O_RDWR | O_CLOEXEC);
  }
  if (ov->fd == -1) {
    snprintf(err, errlen, "cannot open overlay %s: %s", path,
             strerror(errno));
    return -1;
  }
  if (created)
    overlay_sync_dir(path);
opened:
  if (!ov->checking && flock(ov->fd, LOCK_EX | LOCK_NB) == -1) {
    snprintf(err, errlen, "overlay %s is in use by another process (%s)",
             path, strerror(errno));
    return -1;
  }
  if (fstat(ov->fd, &sb) == -1) {
    snprintf(err, errlen, "overlay %s: %s", path, strerror(errno));
    return -1;
  }
  if (!S_ISREG(sb.st_mode)) {
    snprintf(err, errlen, "overlay %s is not a regular file", path);
    return -1;
  }
  if (sb.st_size == 0)
    return 0;                   /* new: header when the size is known */
  return overlay_load(ov, (uint64_t)sb.st_size, err, errlen);
}

struct cow_overlay *
cow_overlay_open(const char *path, const char *tmpdir, uint32_t block_size,
                 char *err, size_t errlen)
{
  struct cow_overlay *ov = calloc(1, sizeof *ov);
  int r;

  if (ov == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  ov->fd = -1;
  ov->block_size = block_size;
  ov->shift = overlay_log2(block_size);
  pthread_mutex_init(&ov->lock, NULL);
  pthread_mutex_init(&ov->flush_lock, NULL);
  if (path) {
    ov->persistent = 1;
    ov->path = strdup(path);
    if (ov->path == NULL) {
      snprintf(err, errlen, "out of memory");
      r = -1;
    } else
      r = overlay_open_persistent(ov, path, err, errlen);
  } else
    r = overlay_open_temporary(ov, tmpdir, err, errlen);
  if (r == -1) {
    ov->persistent = 0;         /* nothing to write back */
    cow_overlay_close(ov);
    return NULL;
  }
  ov->can_splice = nbd_can_splice_at(ov->fd);
  return ov;
}

void
cow_overlay_close(struct cow_overlay *ov)
{
  int r;

  if (ov == NULL)
    return;
  if (ov->persistent && !ov->checking && (r = cow_overlay_flush(ov)) < 0)
    nbd_error("overlay %s: writing the map at exit failed: %s", ov->path,
              strerror(-r));
  if (ov->fd >= 0)
    close(ov->fd);
  pthread_mutex_destroy(&ov->lock);
  pthread_mutex_destroy(&ov->flush_lock);
  free(ov->map);
  free(ov->dirty);
  free(ov->path);
  free(ov);
}

/* ---- size ------------------------------------------------------------- */

/* A new persistent overlay: header, then a map of zeros (sparse), durable
 * before any block is written. */
static int
overlay_write_header(struct cow_overlay *ov, char *err, size_t errlen)
{
  uint8_t h[OVERLAY_HEADER_USED] = { 0 };
  int r;

  memcpy(h, OVERLAY_MAGIC, 8);
  overlay_put32(h + 8, OVERLAY_VERSION);
  overlay_put32(h + 12, ov->block_size);
  overlay_put64(h + 16, ov->size);
  overlay_put64(h + 24, OVERLAY_HEADER_SIZE);
  overlay_put64(h + 32, ov->data_offset);
  if (ftruncate(ov->fd, (off_t)ov->data_offset) == -1)
    r = -errno;
  else if ((r = nbd_pwrite_full(ov->fd, h, sizeof h, 0)) == 0)
    r = overlay_sync(ov->fd);
  if (r < 0) {
    snprintf(err, errlen, "overlay %s: cannot write the header: %s",
             ov->path, strerror(-r));
    return -1;
  }
  ov->has_header = 1;
  return 0;
}

int
cow_overlay_set_size(struct cow_overlay *ov, uint64_t size, char *err,
                     size_t errlen)
{
  int r = 0;

  pthread_mutex_lock(&ov->lock);
  if (ov->has_size) {
    if (size != ov->size) {
      if (ov->persistent)
        snprintf(err, errlen, "overlay %s was made for a disk of %" PRIu64
                 " bytes, but the disk below has %" PRIu64 " bytes",
                 ov->path, ov->size, size);
      else
        snprintf(err, errlen, "the disk below changed size from %" PRIu64
                 " to %" PRIu64 " bytes while the overlay was in use",
                 ov->size, size);
      r = -1;
    }
  } else {
    r = overlay_alloc_map(ov, size, err, errlen);
    if (r == 0 && ov->persistent && !ov->has_header && !ov->checking &&
        (r = overlay_write_header(ov, err, errlen)) == -1) {
      free(ov->map);
      free(ov->dirty);
      ov->map = ov->dirty = NULL;
      ov->has_size = 0;
    }
  }
  pthread_mutex_unlock(&ov->lock);
  return r;
}

uint64_t
cow_overlay_size(const struct cow_overlay *ov)
{
  return ov->size;
}

uint32_t
cow_overlay_block_size(const struct cow_overlay *ov)
{
  return ov->block_size;
}

/* ---- the map ---------------------------------------------------------- */

int
cow_overlay_state(struct cow_overlay *ov, uint64_t blk, uint64_t max,
                  uint64_t *run)
{
  uint64_t n = 1;
  int state;

  pthread_mutex_lock(&ov->lock);
  state = overlay_get(ov, blk);
  while (n < max && blk + n < ov->nblocks && overlay_get(ov, blk + n) == state)
    n++;
  pthread_mutex_unlock(&ov->lock);
  *run = n;
  return state;
}

void
cow_overlay_set_state(struct cow_overlay *ov, uint64_t blk, int state)
{
  uint8_t *p;
  unsigned s = (unsigned)(blk & 3) * 2;

  pthread_mutex_lock(&ov->lock);
  p = &ov->map[blk >> 2];
  if (((*p >> s) & 3) != state) {
    *p = (uint8_t)((*p & ~(3u << s)) | (unsigned)state << s);
    ov->dirty[(blk >> 2) / OVERLAY_PAGE] = 1;
  }
  pthread_mutex_unlock(&ov->lock);
}

/* ---- data ------------------------------------------------------------- */

int
cow_overlay_pread(struct cow_overlay *ov, void *buf, uint32_t count,
                  uint64_t offset)
{
  return nbd_pread_full(ov->fd, buf, count, ov->data_offset + offset);
}

int
cow_overlay_pwrite(struct cow_overlay *ov, const void *buf, uint32_t count,
                   uint64_t offset)
{
  return nbd_pwrite_full(ov->fd, buf, count, ov->data_offset + offset);
}

/* count bytes of the client's payload at offset: spliced from the socket
 * where it can be, else read through a buffer (overlay.h). */
int
cow_overlay_pwrite_from(struct cow_overlay *ov, struct nbd_source *src,
                        uint32_t count, uint64_t offset)
{
  return nbd_source_splice_at(src, ov->fd, count, ov->data_offset + offset);
}

int
cow_overlay_can_splice(const struct cow_overlay *ov)
{
  return ov->can_splice;
}

/* ---- flush: data, then map (see the top of the file) -------------------- */

/* Step 1: the dirty pages, copied, marks cleared.  *pages gets their
 * indices, *copy their bytes (OVERLAY_PAGE each).  The count, or -ENOMEM. */
static ssize_t
overlay_take_dirty(struct cow_overlay *ov, size_t **pages, uint8_t **copy)
{
  size_t i, n = 0, len;

  *pages = NULL;
  *copy = NULL;
  pthread_mutex_lock(&ov->lock);
  for (i = 0; i < ov->npages; i++)
    n += ov->dirty[i];
  if (n > 0) {
    *pages = malloc(n * sizeof **pages);
    *copy = malloc(n * OVERLAY_PAGE);
    if (*pages == NULL || *copy == NULL) {
      pthread_mutex_unlock(&ov->lock);
      free(*pages);
      free(*copy);
      return -ENOMEM;
    }
    n = 0;
    for (i = 0; i < ov->npages; i++) {
      if (!ov->dirty[i])
        continue;
      len = ov->map_bytes - i * OVERLAY_PAGE;
      if (len > OVERLAY_PAGE)
        len = OVERLAY_PAGE;
      memcpy(*copy + n * OVERLAY_PAGE, ov->map + i * OVERLAY_PAGE, len);
      ov->dirty[i] = 0;
      (*pages)[n++] = i;
    }
  }
  pthread_mutex_unlock(&ov->lock);
  return (ssize_t)n;
}

static void
overlay_redirty(struct cow_overlay *ov, const size_t *pages, size_t n)
{
  size_t i;

  pthread_mutex_lock(&ov->lock);
  for (i = 0; i < n; i++)
    ov->dirty[pages[i]] = 1;
  pthread_mutex_unlock(&ov->lock);
}

static int
overlay_flush_locked(struct cow_overlay *ov)
{
  size_t *pages, i, len;
  uint8_t *copy;
  ssize_t n;
  int r;

  if (ov->failed)
    return -EIO;
  if ((n = overlay_take_dirty(ov, &pages, &copy)) < 0)
    return (int)n;
  /* Step 2: the data the copied map points at. */
  r = overlay_sync(ov->fd);
  /* Step 3: the map pages. */
  for (i = 0; r == 0 && i < (size_t)n; i++) {
    len = ov->map_bytes - pages[i] * OVERLAY_PAGE;
    if (len > OVERLAY_PAGE)
      len = OVERLAY_PAGE;
    r = nbd_pwrite_full(ov->fd, copy + i * OVERLAY_PAGE, len,
                            OVERLAY_HEADER_SIZE +
                            (uint64_t)pages[i] * OVERLAY_PAGE);
  }
  /* Step 4. */
  if (r == 0 && n > 0)
    r = overlay_sync(ov->fd);
  if (r < 0) {
    overlay_redirty(ov, pages, (size_t)n);
    ov->failed = -r;
    nbd_error("overlay %s: flush failed: %s; every later flush fails",
              ov->path, strerror(-r));
  }
  free(pages);
  free(copy);
  return r;
}

int
cow_overlay_flush(struct cow_overlay *ov)
{
  int r, has_header;

  if (!ov->persistent)
    return 0;
  pthread_mutex_lock(&ov->lock);
  has_header = ov->has_header;
  pthread_mutex_unlock(&ov->lock);
  pthread_mutex_lock(&ov->flush_lock);
  r = has_header ? overlay_flush_locked(ov) : 0;
  pthread_mutex_unlock(&ov->flush_lock);
  return r;
}
