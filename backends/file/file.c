/* nbdstack backend file: serve a regular file or a block device.
 *
 * The file is opened once at setup (O_CLOEXEC) and its descriptor shared
 * by every connection: pread/pwrite carry their own offset, so they are
 * thread-safe, and flush (fdatasync) covers every connection's writes,
 * which makes multi-conn safe.  The size is read each time a connection
 * opens (fstat, or BLKGETSIZE64 for a block device).
 *
 * Regular files: trim punches holes, zero punches holes or uses ZERO_RANGE
 * (NO_HOLE: ZERO_RANGE, or punch then re-allocate), extents come from
 * SEEK_DATA/SEEK_HOLE.  Block devices: trim is BLKDISCARD on whole logical
 * sectors (trimmed data is undefined afterwards, which NBD allows), zero
 * uses the kernel's fallocate modes, and there are no extents.
 * is_rotational comes from the device's own queue in sysfs for a block
 * device; a regular file says 0, as nbdkit's file plugin does: the page
 * cache and the filesystem stand between it and the disk, and the flag
 * makes clients serialise (nbdcopy into a file on a virtio disk, which
 * the kernel calls rotational, used one connection and was much slower).
 * An fallocate mode or ioctl the kernel refuses with EOPNOTSUPP is
 * remembered and not tried again.
 *
 * It does not emulate anything the engine does (FUA is a flush after the
 * write; a zero this file cannot do fast returns -EOPNOTSUPP and the engine
 * writes zeros, or tells a FAST_ZERO client ENOTSUP).  No locking of the
 * file against other processes.
 *
 * dir=DIR serves one export per regular file or block device in DIR
 * (symlinks followed, as nbdkit): list_exports reads the directory, open
 * opens the file the client named (nbd_conn_info()->export_name) with a
 * descriptor of the connection's own; names with '/' or a leading '.'
 * are refused.  cache=none evicts what was read or written from the page
 * cache (nbdkit's key); direct=true opens with O_DIRECT and makes the
 * device's logical sector (4096 for a regular file) the minimum block
 * size; fadvise= gives the kernel an access pattern at open.  The bytes
 * of pread and pwrite, with direct=true's bounce buffers and cache=none's
 * eviction, are io.c's; this file is the rest of the backend.
 * docs/backends/file.md is the reference.
 *
 * musl-gcc sees no kernel headers, so the few ioctl and flag numbers are
 * defined here when libc lacks them.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "layer.h"
#include "io.h"

#ifndef BLKSSZGET
#define BLKSSZGET _IO(0x12, 104)
#endif
#ifndef BLKGETSIZE64
#define BLKGETSIZE64 _IOR(0x12, 114, size_t)
#endif
#ifndef BLKDISCARD
#define BLKDISCARD _IO(0x12, 119)
#endif
#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
#ifndef FALLOC_FL_ZERO_RANGE
#define FALLOC_FL_ZERO_RANGE 0x10
#endif
#ifndef SEEK_DATA
#define SEEK_DATA 3
#endif
#ifndef SEEK_HOLE
#define SEEK_HOLE 4
#endif
#ifndef O_DIRECT
#define O_DIRECT 040000         /* x86, arm64's is 0200000: from libc */
#endif

static const char *const file_cache_choices[] = { "default", "none", NULL };
enum { FILE_CACHE_DEFAULT, FILE_CACHE_NONE };
static const char *const file_fadvise_choices[] = {
  "normal", "random", "sequential", NULL
};
static const int file_fadvise_advice[] = {
  POSIX_FADV_NORMAL, POSIX_FADV_RANDOM, POSIX_FADV_SEQUENTIAL
};

struct file_conf {
  char *file;
  char *dir;
  int readonly;
  int cache;                    /* FILE_CACHE_* */
  int direct;
  int fadvise;                  /* index into file_fadvise_advice */
};

static const struct nbd_param file_params[] = {
  { "file", NBD_PARAM_PATH, offsetof(struct file_conf, file), NULL,
    "regular file or block device to serve (this or dir=)", NULL, 0 },
  { "dir", NBD_PARAM_PATH, offsetof(struct file_conf, dir), NULL,
    "serve every regular file or block device in this directory, one "
    "export each, named by file name (this or file=)", NULL, 0 },
  { "readonly", NBD_PARAM_BOOL, offsetof(struct file_conf, readonly), "no",
    "open the file read-only and refuse writes", NULL, 0 },
  { "cache", NBD_PARAM_ENUM, offsetof(struct file_conf, cache), "default",
    "none: evict what was read or written from the page cache",
    file_cache_choices, 0 },
  { "direct", NBD_PARAM_BOOL, offsetof(struct file_conf, direct), "false",
    "open with O_DIRECT; the minimum block size becomes the logical "
    "sector size (4096 for a regular file)", NULL, 0 },
  { "fadvise", NBD_PARAM_ENUM, offsetof(struct file_conf, fadvise),
    "normal", "access pattern hint given to the kernel at open",
    file_fadvise_choices, 0 },
  NBD_PARAM_END
};

/* layer->state: the file of file=, or the directory of dir=. */
struct file_layer {
  struct file_state *one;       /* file=; NULL with dir= */
  int dirfd;                    /* dir=; -1 with file= */
};

/* ---- helpers --------------------------------------------------------- */

/* sysfs knows whether a disk spins; a partition has no queue directory of
 * its own, so also look at its parent disk. */
static int
file_rotational(dev_t dev)
{
  static const char *const fmt[] = {
    "/sys/dev/block/%u:%u/queue/rotational",
    "/sys/dev/block/%u:%u/../queue/rotational",
  };
  char path[96];
  FILE *fp = NULL;
  size_t i;
  int c;

  for (i = 0; i < sizeof fmt / sizeof fmt[0] && fp == NULL; i++) {
    snprintf(path, sizeof path, fmt[i], major(dev), minor(dev));
    fp = fopen(path, "re");
  }
  if (fp == NULL)
    return 0;
  c = fgetc(fp);
  fclose(fp);
  return c == '1';
}

static int64_t
file_size(const struct file_state *st)
{
  struct stat sb;
  uint64_t size;

  if (st->is_block) {
    if (ioctl(st->fd, BLKGETSIZE64, &size) == -1)
      return -errno;
    return size > INT64_MAX ? -EFBIG : (int64_t)size;
  }
  if (fstat(st->fd, &sb) == -1)
    return -errno;
  return sb.st_size;
}

/* ---- datapath -------------------------------------------------------- */

static int
file_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
           uint32_t count, uint64_t offset, uint32_t flags)
{
  return file_io_read(self->handle, buf, count, offset);
}

static int
file_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags)
{
  return file_io_write(self->handle, buf, count, offset);
}

/* Large writes on plain connections (the engine's pull_splice rule),
 * spliced; into a file that takes no splice (direct=true, some
 * filesystems) through a buffer. */
static int
file_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                 struct nbd_source *src, uint32_t count, uint64_t offset,
                 uint32_t flags)
{
  struct file_state *st = self->handle;

  if (src->splice && st->can_splice)
    return file_io_write_from(st, src, count, offset);
  return nbd_pwrite_buffered(self, src, count, offset, flags);
}

static int
file_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  struct file_state *st = self->handle;

  if (fdatasync(st->fd) == -1)
    return -errno;
  if (st->evict)                /* clean now: cheap to drop */
    file_io_evict_all(st);
  return 0;
}

/* BLKDISCARD works on whole logical sectors; a partial sector at either
 * end is left alone (trim is advisory). */
static int
file_discard_block(struct file_state *st, uint64_t count, uint64_t offset)
{
  uint64_t start = (offset + st->sector - 1) / st->sector * st->sector;
  uint64_t end = (offset + count) / st->sector * st->sector;
  uint64_t range[2];

  if (start >= end || atomic_load_explicit(&st->no_discard,
                                           memory_order_relaxed))
    return 0;
  range[0] = start;
  range[1] = end - start;
  if (ioctl(st->fd, BLKDISCARD, range) == 0)
    return 0;
  if (errno == EOPNOTSUPP) {
    atomic_store_explicit(&st->no_discard, 1, memory_order_relaxed);
    return 0;
  }
  return -errno;
}

static int
file_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
          uint64_t offset, uint32_t flags)
{
  struct file_state *st = self->handle;
  int r;

  if (st->is_block)
    return file_discard_block(st, count, offset);
  r = nbd_fallocate(st->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                     offset, count, &st->no_punch);
  return r == -EOPNOTSUPP ? 0 : r;
}

/* Only fast methods; -EOPNOTSUPP lets the engine write zeros (or answer
 * ENOTSUP to a FAST_ZERO client).  Without NO_HOLE, punching keeps the
 * file sparse; with it the range must stay allocated: ZERO_RANGE, else a
 * punch and a re-allocation.  On a block device ZERO_RANGE may write zeros
 * in the kernel, which is not fast, while PUNCH_HOLE never falls back. */
static int file_zero_aligned(struct file_state *st, uint64_t count,
                             uint64_t offset, uint32_t flags);

/* A block device zeroes (fallocate) only whole logical sectors and
 * refuses anything else with EINVAL, though we advertise a minimum block
 * size of 1: the sectors inside the range are zeroed as usual and the
 * partial ones at either end written as zeros.  A FAST_ZERO there cannot
 * be fast: ENOTSUP.  Under direct=true (aligned I/O only) and for a range
 * inside one sector, the engine writes the zeros itself. */
static int
file_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
          uint64_t offset, uint32_t flags)
{
  struct file_state *st = self->handle;
  uint64_t start, end;
  unsigned char *z;
  int r;

  (void)next;
  if (!st->is_block || st->sector <= 1 || (offset | count) % st->sector == 0)
    return file_zero_aligned(st, count, offset, flags);
  start = (offset + st->sector - 1) / st->sector * st->sector;
  end = (offset + count) / st->sector * st->sector;
  if ((flags & NBD_CMD_FLAG_FAST_ZERO) || st->align > 1 || start >= end)
    return -EOPNOTSUPP;
  if ((r = file_zero_aligned(st, end - start, start, flags)) != 0)
    return r;                   /* -EOPNOTSUPP: the engine writes it all */
  if ((z = calloc(1, st->sector)) == NULL)
    return -ENOMEM;
  r = 0;
  if (start > offset)
    r = nbd_pwrite_full(st->fd, z, start - offset, offset);
  if (r == 0 && offset + count > end)
    r = nbd_pwrite_full(st->fd, z, offset + count - end, end);
  free(z);
  return r;
}

static int
file_zero_aligned(struct file_state *st, uint64_t count, uint64_t offset,
                  uint32_t flags)
{
  const int keep = FALLOC_FL_KEEP_SIZE;
  int may_punch = !(flags & NBD_CMD_FLAG_NO_HOLE);
  int may_zero_range = !(st->is_block && (flags & NBD_CMD_FLAG_FAST_ZERO));
  int r;

  if (may_punch) {
    r = nbd_fallocate(st->fd, FALLOC_FL_PUNCH_HOLE | keep, offset, count,
                       &st->no_punch);
    if (r != -EOPNOTSUPP)
      return r;
  }
  if (may_zero_range) {
    r = nbd_fallocate(st->fd, FALLOC_FL_ZERO_RANGE | keep, offset, count,
                       &st->no_zero_range);
    if (r != -EOPNOTSUPP)
      return r;
  }
  if (may_punch || st->is_block ||
      atomic_load_explicit(&st->no_alloc, memory_order_relaxed))
    return -EOPNOTSUPP;
  /* NO_HOLE without ZERO_RANGE (tmpfs): if the re-allocation fails after
   * the punch, the range already reads as zeros and the engine's fallback
   * writes allocate it again. */
  r = nbd_fallocate(st->fd, FALLOC_FL_PUNCH_HOLE | keep, offset, count,
                     &st->no_punch);
  if (r == 0)
    r = nbd_fallocate(st->fd, keep, offset, count, &st->no_alloc);
  return r;
}

static int
file_add_rest(struct nbd_extents *extents, uint64_t offset, uint64_t end,
              uint32_t type)
{
  return nbd_extents_add(extents, offset, end - offset, type);
}

/* SEEK_DATA/SEEK_HOLE from the request's own offset: the shared file
 * position is moved but never used (pread/pwrite), so threads may race on
 * it harmlessly. */
static int
file_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
             uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  struct file_state *st = self->handle;
  uint64_t end = offset + count, stop;
  uint32_t type;
  off_t d, h;
  int r;

  if (atomic_load_explicit(&st->no_seek, memory_order_relaxed))
    return file_add_rest(extents, offset, end, 0);
  while (offset < end) {
    d = lseek(st->fd, (off_t)offset, SEEK_DATA);
    if (d == -1) {
      if (errno == ENXIO)       /* no data from offset to end of file */
        return file_add_rest(extents, offset, end,
                             NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
      if (errno != EINVAL && errno != EOPNOTSUPP)
        return -errno;
      atomic_store_explicit(&st->no_seek, 1, memory_order_relaxed);
      return file_add_rest(extents, offset, end, 0);
    }
    if ((uint64_t)d > offset) {
      type = NBD_EXTENT_HOLE | NBD_EXTENT_ZERO;
      stop = (uint64_t)d;
    } else {
      h = lseek(st->fd, (off_t)offset, SEEK_HOLE);
      if (h == -1 && errno != ENXIO)
        return -errno;
      type = 0;
      /* A write or truncate raced us: call the rest data. */
      stop = h == -1 || (uint64_t)h <= offset ? end : (uint64_t)h;
    }
    if (stop > end)
      stop = end;
    if ((r = nbd_extents_add(extents, offset, stop - offset, type)) < 0)
      return r;
    if (flags & NBD_CMD_FLAG_REQ_ONE)
      break;
    offset = stop;
  }
  return 0;
}

UNSUPPORTED(file, depth)

static int
file_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  const struct file_state *st = self->handle;

  /* Returns the error number itself, not -1 and errno. */
  return -posix_fadvise(st->fd, (off_t)offset, (off_t)count,
                        POSIX_FADV_WILLNEED);
}

/* ---- capabilities ---------------------------------------------------- */

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define file_reopen nbd_reopen_close_open

static int64_t
file_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return file_size(self->handle);
}

static int
file_can_write(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct file_state *st = self->handle;

  return !st->readonly;         /* readonly=yes, or not writable here */
}

static int
file_can_extents(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct file_state *st = self->handle;
  return !st->is_block;
}

static int
file_is_rotational(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct file_state *st = self->handle;
  return st->rotational;
}

static int
file_can_fua(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_FUA_EMULATE;       /* the engine's flush is fdatasync */
}

#define file_can_flush nbd_cap_yes
#define file_can_trim nbd_cap_yes
#define file_can_fast_zero nbd_cap_yes     /* file_zero does only fast work */
#define file_can_multi_conn nbd_cap_yes    /* one fd: flush covers everyone */

static int
file_native(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_ZERO_NATIVE;       /* == NBD_CACHE_NATIVE */
}
#define file_can_zero file_native
#define file_can_cache file_native

/* Buffered I/O takes any alignment; O_DIRECT needs whole sectors. */
static int
file_block_size(struct nbd_ctx *self, struct nbd_ctx *next,
                uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  const struct file_state *st = self->handle;

  if (st->align == 0)
    return 0;
  *minimum = st->align;
  *preferred = st->align > 4096 ? st->align : 4096;
  *maximum = 0xffffffff;
  return 0;
}

/* ---- lifecycle ------------------------------------------------------- */

static int
file_setup_fd(struct file_state *st, const struct file_conf *conf,
              const char *path, char *err, size_t errlen)
{
  struct stat sb;
  int sector = 512, r;
  int64_t size;

  if (fstat(st->fd, &sb) == -1) {
    snprintf(err, errlen, "fstat '%s': %s", path, strerror(errno));
    return -1;
  }
  if (!S_ISREG(sb.st_mode) && !S_ISBLK(sb.st_mode)) {
    snprintf(err, errlen, "'%s' is not a regular file or block device",
             path);
    return -1;
  }
  st->is_block = S_ISBLK(sb.st_mode);
  if (st->is_block && ioctl(st->fd, BLKSSZGET, &sector) == -1)
    sector = 512;
  st->sector = sector > 0 ? (uint32_t)sector : 512;
  st->rotational = st->is_block ? file_rotational(sb.st_rdev) : 0;
  /* A regular file's filesystem block is not known for sure: 4096 is
   * what every Linux filesystem accepts for O_DIRECT (as nbdkit guesses). */
  if (conf->direct)
    st->align = st->is_block ? st->sector : 4096;
  st->evict = conf->cache == FILE_CACHE_NONE;
  file_io_probe_splice(st);
  nbd_debug("file: '%s': large writes %s", path,
            st->can_splice ? "spliced from the socket"
                           : "through a buffer (no splice into it)");
  if ((size = file_size(st)) < 0) {
    snprintf(err, errlen, "cannot get the size of '%s': %s", path,
             strerror((int)-size));
    return -1;
  }
  /* Advice only: a kernel that ignores it still serves the file. */
  r = posix_fadvise(st->fd, 0, 0, file_fadvise_advice[conf->fadvise]);
  if (r != 0)
    nbd_debug("file: fadvise '%s': %s", path, strerror(r));
  return 0;
}

/* Opens path (relative to dirfd, or AT_FDCWD) as the conf says; NULL
 * with err filled and *errnum set. */
static struct file_state *
file_state_open(const struct file_conf *conf, int dirfd, const char *path,
                int readonly, int *errnum, char *err, size_t errlen)
{
  struct file_state *st = calloc(1, sizeof *st);
  /* O_NONBLOCK: a FIFO in a dir= directory must not hang the open; it
   * is refused below and the flag cleared for the real file. */
  int flags = O_CLOEXEC | O_NOCTTY | O_NONBLOCK |
              (conf->direct ? O_DIRECT : 0);
  int e;

  *errnum = ENOMEM;
  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  /* A file we may not write is served read-only (and -r works on it). */
  st->readonly = readonly;
  st->fd = nbd_open_maybe_readonly(dirfd, path, flags, &st->readonly);
  if (st->fd == -1) {
    e = *errnum = errno;
    snprintf(err, errlen, "cannot open '%s': %s%s", path, strerror(e),
             conf->direct && e == EINVAL ? " (O_DIRECT not supported here?)"
             : "");
    free(st);
    return NULL;
  }
  if (st->readonly && !readonly)
    nbd_debug("file: '%s' is not writable here: serving it read-only",
              path);
  if (fcntl(st->fd, F_SETFL, flags & ~O_NONBLOCK) == -1 ||
      file_setup_fd(st, conf, path, err, errlen) == -1) {
    *errnum = EINVAL;
    close(st->fd);
    free(st);
    return NULL;
  }
  pthread_mutex_init(&st->lock, NULL);
  return st;
}

static void
file_state_free(struct file_state *st)
{
  if (st == NULL)
    return;
  if (st->evict)
    file_io_evict_all(st);
  close(st->fd);
  pthread_mutex_destroy(&st->lock);
  free(st);
}

static int
file_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct file_conf *conf = layer->conf;
  struct file_layer *fl;
  int e;

  if (!conf->file == !conf->dir) {
    snprintf(err, errlen, conf->file ? "give file= or dir=, not both"
             : "file= or dir= is required");
    return -1;
  }
  if ((fl = calloc(1, sizeof *fl)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  fl->dirfd = -1;
  if (conf->file)
    fl->one = file_state_open(conf, AT_FDCWD, conf->file, conf->readonly,
                              &e, err, errlen);
  else if ((fl->dirfd = open(conf->dir, O_RDONLY | O_DIRECTORY |
                             O_CLOEXEC)) == -1)
    snprintf(err, errlen, "cannot open directory '%s': %s", conf->dir,
             strerror(errno));
  if (fl->one == NULL && fl->dirfd == -1) {
    free(fl);
    return -1;
  }
  layer->state = fl;
  /* Buffered writes to a regular file hold its inode lock (ext4, xfs,
   * btrfs); a block device's and O_DIRECT writes run side by side.  A
   * dir= export's files are taken to be regular files. */
  layer->serial_writes = !conf->direct && (fl->one == NULL ||
                                           !fl->one->is_block);
  return 0;
}

static void
file_cleanup(struct nbd_layer *layer)
{
  struct file_layer *fl = layer->state;

  if (fl == NULL)
    return;
  file_state_free(fl->one);
  if (fl->dirfd != -1)
    close(fl->dirfd);
  free(fl);
  layer->state = NULL;
}

/* dir=: the names a client may ask for; the rest stay private ("." and
 * "..", dotfiles, anything a path could be made of). */
static int
file_name_ok(const char *name)
{
  return name[0] != '\0' && name[0] != '.' && strchr(name, '/') == NULL;
}

static int
file_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  const struct file_conf *conf = self->layer->conf;
  const struct file_layer *fl = self->layer->state;
  const struct nbd_conn_info *info = nbd_conn_info(self);
  const char *name = info && info->export_name ? info->export_name : "";
  char err[512];
  int e;

  if (fl->one) {
    self->handle = fl->one;
    return 0;
  }
  if (!file_name_ok(name)) {
    nbd_error("file: dir=%s: export name \"%.64s\" refused (empty, '/' "
              "or a leading '.')", conf->dir, name);
    return -EINVAL;
  }
  self->handle = file_state_open(conf, fl->dirfd, name,
                                 readonly || conf->readonly, &e, err,
                                 sizeof err);
  if (self->handle == NULL) {
    nbd_error("file: dir=%s: %s", conf->dir, err);
    return -e;
  }
  return 0;
}

static void
file_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct file_layer *fl = self->layer->state;

  if (fl->one == NULL)
    file_state_free(self->handle);
  else if (fl->one->evict)      /* shared: drop this client's last writes */
    file_io_evict_all(fl->one);
  self->handle = NULL;
}

static int
file_cmp(const void *a, const void *b)
{
  return strcmp(((const struct nbd_export_name *)a)->name,
                ((const struct nbd_export_name *)b)->name);
}

/* dir=: every regular file and block device, symlinks followed (as
 * nbdkit), sorted by name; file=: the config export's own name only. */
static int
file_list_exports(struct nbd_ctx *self, struct nbd_ctx *next,
                  struct nbd_exports *exports)
{
  const struct file_layer *fl = self->layer->state;
  struct dirent *d;
  struct stat sb;
  DIR *dir;
  int fd, r = 0;

  if (fl->one)
    return 0;
  if ((fd = dup(fl->dirfd)) == -1)
    return -errno;
  if ((dir = fdopendir(fd)) == NULL) {
    r = -errno;
    close(fd);
    return r;
  }
  rewinddir(dir);               /* the dup shares the position */
  while (r == 0 && (errno = 0, d = readdir(dir)) != NULL) {
    if (!file_name_ok(d->d_name))
      continue;
    if (d->d_type != DT_REG && d->d_type != DT_BLK) {
      if (d->d_type != DT_LNK && d->d_type != DT_UNKNOWN)
        continue;
      if (fstatat(fl->dirfd, d->d_name, &sb, 0) == -1 ||
          (!S_ISREG(sb.st_mode) && !S_ISBLK(sb.st_mode)))
        continue;
    }
    r = nbd_exports_add(exports, d->d_name, NULL);
  }
  if (r == 0 && errno != 0)
    r = -errno;
  closedir(dir);
  if (r < 0)
    return r;
  qsort(exports->v, exports->n, sizeof *exports->v, file_cmp);
  return 1;
}

UNSUPPORTED(file, preconnect)

NBD_REGISTER_BACKEND(file, NBD_PARALLEL,
  /* A hot page cache answers in microseconds; a cold disk does not, and
   * the engine then moves the connection to workers. */
  NBD_RARELY_BLOCKS,
  .description = "serve a regular file or block device, or a directory",
  .params = file_params,
  .conf_size = sizeof(struct file_conf),
  .magic_param = "file",
  .setup = file_setup,
  .cleanup = file_cleanup,
  .open = file_open,
  .close = file_close,
  .pwrite_from = file_pwrite_from,
  .pull_splice = 1,
);
