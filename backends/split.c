/* nbdstack backend split: several files concatenated into one disk, as
 * nbdkit's split plugin ("nbdkit split a.img b.img c.img").
 *
 * file= is repeatable (or bare words: the magic parameter); the disk is
 * the files one after the other in the order given.  The files are opened
 * once at setup and their sizes read then: a file that grows or shrinks
 * while the server runs is not followed (a read past its end fails with
 * EIO).  Every request is cut at file boundaries and each piece goes to
 * its file at the offset within it, so a write may span files.
 *
 * Beyond nbdkit's split (which only reads, writes, caches and reports
 * extents): flush is fdatasync of every file, trim punches holes, zero
 * punches holes or uses ZERO_RANGE (NO_HOLE) and otherwise returns
 * -EOPNOTSUPP so the engine writes zeros; readonly=yes opens the files
 * read-only.  Extents come from SEEK_DATA/SEEK_HOLE in each file, shifted
 * by the file's start.  Regular files only, no block devices.
 */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layer.h"

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

struct split_conf {
  struct nbd_strlist file;
  int readonly;
};

static const struct nbd_param split_params[] = {
  { "file", NBD_PARAM_PATH_LIST, offsetof(struct split_conf, file), NULL,
    "file to serve; repeat it (or give bare names): the disk is the files "
    "concatenated in order", NULL, 1 },
  { "readonly", NBD_PARAM_BOOL, offsetof(struct split_conf, readonly), "no",
    "open the files read-only and refuse writes", NULL, 0 },
  NBD_PARAM_END
};

struct split_file {
  int fd;
  uint64_t start, size;         /* place in the disk */
  /* Set when the kernel said EOPNOTSUPP, so it is not asked again. */
  atomic_int no_punch, no_zero_range, no_seek;
};

struct split_state {
  struct split_file *f;
  size_t n;
  uint64_t size;                /* sum of the files' sizes */
  int readonly;                 /* readonly=yes, or a file we may not write */
};

/* ---- pieces ---------------------------------------------------------- */

/* Cuts [offset, offset+count) at file boundaries (nbd_pieces_each); fn
 * gets st as its ctx and the file's index. */
static int
split_each(struct split_state *st, uint64_t count, uint64_t offset,
           nbd_piece_fn fn, void *arg)
{
  const struct nbd_pieces p = NBD_PIECES(st->f, st->n, struct split_file,
                                         start, size, st->size);

  return nbd_pieces_each(&p, count, offset, fn, st, arg);
}

/* ---- datapath -------------------------------------------------------- */

static int
split_read_piece(void *ctx, size_t i, uint64_t foff, uint64_t len,
                 uint64_t done, void *arg)
{
  struct split_file *f = &((struct split_state *)ctx)->f[i];
  return nbd_pread_full(f->fd, (char *)arg + done, len, foff);
}

static int
split_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
            uint32_t count, uint64_t offset, uint32_t flags)
{
  return split_each(self->layer->state, count, offset, split_read_piece,
                    buf);
}

static int
split_write_piece(void *ctx, size_t i, uint64_t foff, uint64_t len,
                  uint64_t done, void *arg)
{
  struct split_file *f = &((struct split_state *)ctx)->f[i];
  return nbd_pwrite_full(f->fd, (const char *)arg + done, len, foff);
}

static int
split_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
             uint32_t count, uint64_t offset, uint32_t flags)
{
  return split_each(self->layer->state, count, offset, split_write_piece,
                    (void *)(uintptr_t)buf);
}

static int
split_flush(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t flags)
{
  const struct split_state *st = self->layer->state;
  size_t i;

  for (i = 0; i < st->n; i++)
    if (fdatasync(st->f[i].fd) == -1)
      return -errno;
  return 0;
}

static int
split_trim_piece(void *ctx, size_t i, uint64_t foff, uint64_t len,
                 uint64_t done, void *arg)
{
  struct split_file *f = &((struct split_state *)ctx)->f[i];
  int r = nbd_fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          foff, len, &f->no_punch);
  return r == -EOPNOTSUPP ? 0 : r;     /* trim is advisory */
}

static int
split_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  return split_each(self->layer->state, count, offset, split_trim_piece,
                    NULL);
}

/* Only fast methods, as the file backend: a file that cannot returns
 * -EOPNOTSUPP and the engine writes zeros over the whole request (pieces
 * zeroed already are harmlessly zeroed again). */
static int
split_zero_piece(void *ctx, size_t i, uint64_t foff, uint64_t len,
                 uint64_t done, void *arg)
{
  struct split_file *f = &((struct split_state *)ctx)->f[i];
  const uint32_t flags = *(const uint32_t *)arg;
  const int keep = FALLOC_FL_KEEP_SIZE;
  int r;

  if (!(flags & NBD_CMD_FLAG_NO_HOLE)) {
    r = nbd_fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | keep, foff, len,
                        &f->no_punch);
    if (r != -EOPNOTSUPP)
      return r;
  }
  return nbd_fallocate(f->fd, FALLOC_FL_ZERO_RANGE | keep, foff, len,
                         &f->no_zero_range);
}

static int
split_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
           uint64_t offset, uint32_t flags)
{
  return split_each(self->layer->state, count, offset, split_zero_piece,
                    &flags);
}

struct split_ext_arg {
  struct nbd_extents *extents;
  uint32_t flags;
  int stop;                     /* REQ_ONE and one extent given */
};

static int
split_extents_piece(void *ctx, size_t i, uint64_t foff, uint64_t len,
                    uint64_t done, void *arg)
{
  struct split_file *f = &((struct split_state *)ctx)->f[i];
  struct split_ext_arg *a = arg;
  const uint32_t hole = NBD_EXTENT_HOLE | NBD_EXTENT_ZERO;
  uint64_t end = foff + len, stop;
  uint32_t type;
  off_t d, h;
  int r;

  if (a->stop)
    return 0;
  if (atomic_load_explicit(&f->no_seek, memory_order_relaxed))
    return nbd_extents_add(a->extents, f->start + foff, len, 0);
  while (foff < end) {
    d = lseek(f->fd, (off_t)foff, SEEK_DATA);
    if (d == -1 && errno != ENXIO) {
      if (errno != EINVAL && errno != EOPNOTSUPP)
        return -errno;
      atomic_store_explicit(&f->no_seek, 1, memory_order_relaxed);
      return nbd_extents_add(a->extents, f->start + foff, end - foff, 0);
    }
    if (d == -1 || (uint64_t)d > foff) {  /* ENXIO: a hole to the end */
      type = hole;
      stop = d == -1 ? end : (uint64_t)d;
    } else {
      h = lseek(f->fd, (off_t)foff, SEEK_HOLE);
      if (h == -1 && errno != ENXIO)
        return -errno;
      type = 0;
      /* A write or truncate raced us: call the rest data. */
      stop = h == -1 || (uint64_t)h <= foff ? end : (uint64_t)h;
    }
    if (stop > end)
      stop = end;
    r = nbd_extents_add(a->extents, f->start + foff, stop - foff, type);
    if (r < 0)
      return r;
    if (a->flags & NBD_CMD_FLAG_REQ_ONE) {
      a->stop = 1;
      return 0;
    }
    foff = stop;
  }
  return 0;
}

static int
split_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
              uint64_t offset, uint32_t flags, struct nbd_extents *extents)
{
  struct split_ext_arg a = { extents, flags, 0 };

  return split_each(self->layer->state, count, offset, split_extents_piece,
                    &a);
}

UNSUPPORTED(split, depth)

static int
split_cache_piece(void *ctx, size_t i, uint64_t foff, uint64_t len,
                  uint64_t done, void *arg)
{
  struct split_file *f = &((struct split_state *)ctx)->f[i];
  /* Returns the error number itself, not -1 and errno. */
  return -posix_fadvise(f->fd, (off_t)foff, (off_t)len,
                        POSIX_FADV_WILLNEED);
}

static int
split_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
            uint64_t offset, uint32_t flags)
{
  return split_each(self->layer->state, count, offset, split_cache_piece,
                    NULL);
}

/* ---- capabilities ---------------------------------------------------- */

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define split_reopen nbd_reopen_close_open

static int64_t
split_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct split_state *st = self->layer->state;
  return (int64_t)st->size;
}

static int
split_can_write(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct split_state *st = self->layer->state;

  return !st->readonly;
}

static int
split_can_fua(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_FUA_EMULATE;       /* the engine's flush is fdatasync */
}

#define split_can_flush nbd_cap_yes
#define split_can_trim nbd_cap_yes
#define split_can_fast_zero nbd_cap_yes   /* split_zero does only fast work */
#define split_can_extents nbd_cap_yes
#define split_can_multi_conn nbd_cap_yes  /* shared fds: flush covers all */

static int
split_native(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_ZERO_NATIVE;       /* == NBD_CACHE_NATIVE */
}
#define split_can_zero split_native
#define split_can_cache split_native

static int
split_is_rotational(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 0;                     /* regular files, as the file backend */
}

UNSUPPORTED(split, block_size)  /* buffered I/O: any alignment works */
UNSUPPORTED(split, list_exports) /* one disk, whatever the name */
UNSUPPORTED(split, preconnect)

/* ---- lifecycle ------------------------------------------------------- */

static void
split_free(struct split_state *st)
{
  size_t i;

  for (i = 0; i < st->n; i++)
    if (st->f[i].fd >= 0)
      close(st->f[i].fd);
  free(st->f);
  free(st);
}

static int
split_open_file(struct split_file *f, const char *path, int *readonly,
                char *err, size_t errlen)
{
  struct stat sb;
  int was = *readonly;

  /* A file we may not write makes the export read-only, as the file
   * backend (and -r then works on read-only files). */
  f->fd = nbd_open_maybe_readonly(AT_FDCWD, path, O_CLOEXEC | O_NOCTTY,
                                  readonly);
  if (f->fd == -1) {
    snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
    return -1;
  }
  if (*readonly && !was)
    nbd_debug("split: '%s' is not writable here: serving the files "
              "read-only", path);
  if (fstat(f->fd, &sb) == -1) {
    snprintf(err, errlen, "fstat '%s': %s", path, strerror(errno));
    return -1;
  }
  if (!S_ISREG(sb.st_mode)) {
    snprintf(err, errlen, "'%s' is not a regular file", path);
    return -1;
  }
  f->size = (uint64_t)sb.st_size;
  return 0;
}

static int
split_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct split_conf *conf = layer->conf;
  struct split_state *st = calloc(1, sizeof *st);
  size_t i;

  if (st == NULL || conf->file.n == 0 ||
      (st->f = calloc(conf->file.n, sizeof *st->f)) == NULL) {
    snprintf(err, errlen, conf->file.n ? "out of memory"
             : "missing required key 'file'");
    free(st);
    return -1;
  }
  for (i = 0; i < conf->file.n; i++)
    st->f[i].fd = -1;
  st->n = conf->file.n;
  st->readonly = conf->readonly;
  for (i = 0; i < st->n; i++) {
    if (split_open_file(&st->f[i], conf->file.v[i], &st->readonly, err,
                        errlen) == -1)
      goto fail;
    st->f[i].start = st->size;
    if (st->f[i].size > (uint64_t)INT64_MAX - st->size) {
      snprintf(err, errlen, "'%s': the files add up to more than 2^63-1 "
               "bytes", conf->file.v[i]);
      goto fail;
    }
    st->size += st->f[i].size;
  }
  layer->state = st;
  return 0;

fail:
  split_free(st);
  return -1;
}

static void
split_cleanup(struct nbd_layer *layer)
{
  if (layer->state)
    split_free(layer->state);
  layer->state = NULL;
}

NBD_REGISTER_BACKEND(split, NBD_PARALLEL,
  /* Files, as the file backend: quick from the page cache, else slow. */
  NBD_RARELY_BLOCKS,
  .description = "several files concatenated into one disk",
  .params = split_params,
  .conf_size = sizeof(struct split_conf),
  .magic_param = "file",
  .setup = split_setup,
  .cleanup = split_cleanup,
);
