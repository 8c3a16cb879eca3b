/* nbdstack backend partitioning: a partitioned disk made of files, one
 * partition per file, as nbdkit's partitioning plugin
 * ("nbdkit partitioning boot.img swap.img root.img").
 *
 * This file is the backend: its keys, setup (open the files, check the
 * keys, choose MBR or GPT) and cleanup, and the datapath.  The disk is a
 * list of regions built once at setup by table.c (tables, padding,
 * files; see table.h): each request is cut at region boundaries and each
 * piece served by what the region is.
 *
 * Reads and writes of the files go to the files; the tables and padding
 * read as built.  A write that would change a table or put non-zero bytes
 * in padding fails with EIO (nbdkit does the same), so a client may write
 * back what it read (nbdcopy of the whole disk onto it).  Trim and zero
 * act on the files only; extents: tables are data, padding is a hole,
 * files answer SEEK_DATA/SEEK_HOLE.
 *
 * Not done: nbdkit's alignment=, mbr-id= and type-guid= apply to the
 * files that follow them on the command line; here each is given once and
 * applies to every file (the same disk as nbdkit when they come first).
 * File sizes are read at setup and not followed afterwards.  512-byte
 * sectors only.
 */
#include <ctype.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layer.h"
#include "table.h"

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

#define PART_DEF_MBR_ID  "0x83"
#define PART_DEF_GUID    "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

static const char *const partitioning_types[] = { "mbr", "gpt", NULL };

struct partitioning_conf {
  struct nbd_strlist file;
  int type;
  uint64_t alignment;
  char *mbr_id;
  char *type_guid;
  int readonly;
};

static const struct nbd_param partitioning_params[] = {
  { "file", NBD_PARAM_PATH_LIST, offsetof(struct partitioning_conf, file),
    NULL, "file holding one partition; repeat it (or give bare names): "
    "partition N is the Nth file", NULL, 1 },
  { "partition-type", NBD_PARAM_ENUM,
    offsetof(struct partitioning_conf, type), NULL,
    "partition table; default mbr, or gpt for more than 4 files or a disk "
    "over about 2T", partitioning_types, 0 },
  { "alignment", NBD_PARAM_SIZE,
    offsetof(struct partitioning_conf, alignment), "1M",
    "start of each partition: a power of two from 512 to 1M", NULL, 0 },
  { "mbr-id", NBD_PARAM_STRING, offsetof(struct partitioning_conf, mbr_id),
    "default", "MBR partition type byte, 0x01 to 0xff, or default (0x83)",
    NULL, 0 },
  { "type-guid", NBD_PARAM_STRING,
    offsetof(struct partitioning_conf, type_guid), "default",
    "GPT partition type GUID, or default (" PART_DEF_GUID ")", NULL, 0 },
  { "readonly", NBD_PARAM_BOOL, offsetof(struct partitioning_conf, readonly),
    "no", "open the files read-only and refuse writes", NULL, 0 },
  NBD_PARAM_END
};

/* ---- pieces ---------------------------------------------------------- */

/* Cuts [offset, offset+count) at region boundaries (nbd_pieces_each); fn
 * gets st as its ctx and the region's index. */
static int
partitioning_each(struct partitioning_state *st, uint64_t count,
                  uint64_t offset, nbd_piece_fn fn, void *arg)
{
  const struct nbd_pieces p = NBD_PIECES(st->r, st->nr,
                                         struct partitioning_region, start,
                                         len, st->size);

  return nbd_pieces_each(&p, count, offset, fn, st, arg);
}

/* ---- datapath -------------------------------------------------------- */

static int
partitioning_read_piece(void *ctx, size_t i, uint64_t roff, uint64_t len,
                        uint64_t done, void *arg)
{
  struct partitioning_state *st = ctx;
  const struct partitioning_region *r = &st->r[i];
  char *buf = (char *)arg + done;

  switch (r->kind) {
  case REG_DATA: memcpy(buf, r->data + roff, len); return 0;
  case REG_ZERO: memset(buf, 0, len); return 0;
  case REG_FILE: return nbd_pread_full(st->f[r->file].fd, buf, len, roff);
  }
  return -EIO;
}

static int
partitioning_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
                   uint32_t count, uint64_t offset, uint32_t flags)
{
  return partitioning_each(self->layer->state, count, offset,
                           partitioning_read_piece, buf);
}

/* A table may be written with what it holds and padding with zeros;
 * anything else would change the disk's layout: EIO, as nbdkit. */
static int
partitioning_write_piece(void *ctx, size_t i, uint64_t roff, uint64_t len,
                         uint64_t done, void *arg)
{
  struct partitioning_state *st = ctx;
  const struct partitioning_region *r = &st->r[i];
  const char *buf = (const char *)arg + done;

  switch (r->kind) {
  case REG_DATA:
    if (memcmp(buf, r->data + roff, len) == 0)
      return 0;
    nbd_error("partitioning: refused a write changing the partition "
              "table at %" PRIu64, r->start + roff);
    return -EIO;
  case REG_ZERO:
    if (nbd_is_zero(buf, len))
      return 0;
    nbd_error("partitioning: refused non-zero bytes in padding at %" PRIu64,
              r->start + roff);
    return -EIO;
  case REG_FILE:
    return nbd_pwrite_full(st->f[r->file].fd, buf, len, roff);
  }
  return -EIO;
}

static int
partitioning_pwrite(struct nbd_ctx *self, struct nbd_ctx *next,
                    const void *buf, uint32_t count, uint64_t offset,
                    uint32_t flags)
{
  return partitioning_each(self->layer->state, count, offset,
                           partitioning_write_piece,
                           (void *)(uintptr_t)buf);
}

static int
partitioning_flush(struct nbd_ctx *self, struct nbd_ctx *next,
                   uint32_t flags)
{
  const struct partitioning_state *st = self->layer->state;
  size_t i;

  for (i = 0; i < st->nf; i++)
    if (fdatasync(st->f[i].fd) == -1)
      return -errno;
  return 0;
}

static int
partitioning_trim_piece(void *ctx, size_t i, uint64_t roff, uint64_t len,
                        uint64_t done, void *arg)
{
  struct partitioning_state *st = ctx;
  const struct partitioning_region *r = &st->r[i];
  struct partitioning_file *f = &st->f[r->file];
  int e;

  if (r->kind != REG_FILE)
    return 0;                   /* trim is advisory: tables stay */
  e = nbd_fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                             roff, len, &f->no_punch);
  return e == -EOPNOTSUPP ? 0 : e;
}

static int
partitioning_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                  uint64_t offset, uint32_t flags)
{
  return partitioning_each(self->layer->state, count, offset,
                           partitioning_trim_piece, NULL);
}

/* Fast methods only (-EOPNOTSUPP: the engine writes zeros, which meet
 * the same rules as any write).  Zeroing a table that is not zero there
 * would change it: EIO. */
static int
partitioning_zero_piece(void *ctx, size_t i, uint64_t roff, uint64_t len,
                        uint64_t done, void *arg)
{
  struct partitioning_state *st = ctx;
  const struct partitioning_region *r = &st->r[i];
  const uint32_t flags = *(const uint32_t *)arg;
  struct partitioning_file *f = &st->f[r->file];
  const int keep = FALLOC_FL_KEEP_SIZE;
  int e;

  if (r->kind == REG_ZERO)
    return 0;
  if (r->kind == REG_DATA)
    return nbd_is_zero(r->data + roff, len) ? 0 : -EIO;
  if (!(flags & NBD_CMD_FLAG_NO_HOLE)) {
    e = nbd_fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | keep, roff, len,
                               &f->no_punch);
    if (e != -EOPNOTSUPP)
      return e;
  }
  return nbd_fallocate(f->fd, FALLOC_FL_ZERO_RANGE | keep, roff, len,
                                &f->no_zero_range);
}

static int
partitioning_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
                  uint64_t offset, uint32_t flags)
{
  return partitioning_each(self->layer->state, count, offset,
                           partitioning_zero_piece, &flags);
}

struct partitioning_ext_arg {
  struct nbd_extents *extents;
  uint32_t flags;
  int stop;                     /* REQ_ONE and one extent given */
};

static int
partitioning_file_extents(struct partitioning_file *f, uint64_t base,
                          uint64_t off, uint64_t end,
                          struct partitioning_ext_arg *a)
{
  const uint32_t hole = NBD_EXTENT_HOLE | NBD_EXTENT_ZERO;
  uint64_t stop;
  uint32_t type;
  off_t d, h;
  int r;

  if (atomic_load_explicit(&f->no_seek, memory_order_relaxed))
    return nbd_extents_add(a->extents, base + off, end - off, 0);
  while (off < end && !a->stop) {
    d = lseek(f->fd, (off_t)off, SEEK_DATA);
    if (d == -1 && errno != ENXIO) {
      if (errno != EINVAL && errno != EOPNOTSUPP)
        return -errno;
      atomic_store_explicit(&f->no_seek, 1, memory_order_relaxed);
      return nbd_extents_add(a->extents, base + off, end - off, 0);
    }
    if (d == -1 || (uint64_t)d > off) {   /* ENXIO: a hole to the end */
      type = hole;
      stop = d == -1 ? end : (uint64_t)d;
    } else {
      h = lseek(f->fd, (off_t)off, SEEK_HOLE);
      if (h == -1 && errno != ENXIO)
        return -errno;
      type = 0;
      /* A write or truncate raced us: call the rest data. */
      stop = h == -1 || (uint64_t)h <= off ? end : (uint64_t)h;
    }
    if (stop > end)
      stop = end;
    if ((r = nbd_extents_add(a->extents, base + off, stop - off, type)) < 0)
      return r;
    a->stop = (a->flags & NBD_CMD_FLAG_REQ_ONE) != 0;
    off = stop;
  }
  return 0;
}

static int
partitioning_extents_piece(void *ctx, size_t i, uint64_t roff,
                           uint64_t len, uint64_t done, void *arg)
{
  struct partitioning_state *st = ctx;
  const struct partitioning_region *r = &st->r[i];
  struct partitioning_ext_arg *a = arg;

  if (a->stop)
    return 0;
  if (r->kind == REG_FILE)
    return partitioning_file_extents(&st->f[r->file], r->start, roff,
                                     roff + len, a);
  a->stop = (a->flags & NBD_CMD_FLAG_REQ_ONE) != 0;
  return nbd_extents_add(a->extents, r->start + roff, len,
                         r->kind == REG_ZERO ?
                         NBD_EXTENT_HOLE | NBD_EXTENT_ZERO : 0);
}

static int
partitioning_extents(struct nbd_ctx *self, struct nbd_ctx *next,
                     uint64_t count, uint64_t offset, uint32_t flags,
                     struct nbd_extents *extents)
{
  struct partitioning_ext_arg a = { extents, flags, 0 };

  return partitioning_each(self->layer->state, count, offset,
                           partitioning_extents_piece, &a);
}

UNSUPPORTED(partitioning, depth)

static int
partitioning_cache_piece(void *ctx, size_t i, uint64_t roff, uint64_t len,
                         uint64_t done, void *arg)
{
  struct partitioning_state *st = ctx;
  const struct partitioning_region *r = &st->r[i];
  if (r->kind != REG_FILE)
    return 0;
  /* Returns the error number itself, not -1 and errno. */
  return -posix_fadvise(st->f[r->file].fd, (off_t)roff, (off_t)len,
                        POSIX_FADV_WILLNEED);
}

static int
partitioning_cache(struct nbd_ctx *self, struct nbd_ctx *next,
                   uint64_t count, uint64_t offset, uint32_t flags)
{
  return partitioning_each(self->layer->state, count, offset,
                           partitioning_cache_piece, NULL);
}

/* ---- capabilities ---------------------------------------------------- */

/* reopen: close and open this layer too (layer.h "Reopening"). */
#define partitioning_reopen nbd_reopen_close_open

static int64_t
partitioning_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct partitioning_state *st = self->layer->state;
  return (int64_t)st->size;
}

static int
partitioning_can_write(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct partitioning_conf *conf = self->layer->conf;
  return !conf->readonly;
}

static int
partitioning_can_fua(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_FUA_EMULATE;       /* the engine's flush is fdatasync */
}

#define partitioning_can_flush nbd_cap_yes
#define partitioning_can_trim nbd_cap_yes
#define partitioning_can_fast_zero nbd_cap_yes /* only fast work */
#define partitioning_can_extents nbd_cap_yes
#define partitioning_can_multi_conn nbd_cap_yes /* shared fds */

static int
partitioning_native(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return NBD_ZERO_NATIVE;       /* == NBD_CACHE_NATIVE */
}
#define partitioning_can_zero partitioning_native
#define partitioning_can_cache partitioning_native

static int
partitioning_is_rotational(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 0;                     /* regular files, as the file backend */
}

UNSUPPORTED(partitioning, block_size)   /* any alignment works */
UNSUPPORTED(partitioning, list_exports) /* one disk, whatever the name */
UNSUPPORTED(partitioning, preconnect)

/* ---- lifecycle ------------------------------------------------------- */

static void
partitioning_free(struct partitioning_state *st)
{
  size_t i;

  for (i = 0; i < st->nf; i++)
    if (st->f[i].fd >= 0)
      close(st->f[i].fd);
  free(st->f);
  free(st->r);
  free(st->primary);
  free(st->secondary);
  free(st->ebr);
  free(st);
}

static int
partitioning_open_file(struct partitioning_file *f, const char *path,
                       int readonly, char *err, size_t errlen)
{
  struct stat sb;
  int e;

  f->fd = open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY);
  if (f->fd == -1) {
    e = errno;
    snprintf(err, errlen, "cannot open '%s': %s%s", path, strerror(e),
             !readonly && (e == EACCES || e == EROFS)
               ? " (readonly=yes?)" : "");
    return -1;
  }
  if (fstat(f->fd, &sb) == -1) {
    snprintf(err, errlen, "fstat '%s': %s", path, strerror(errno));
    return -1;
  }
  if (!S_ISREG(sb.st_mode)) {
    snprintf(err, errlen, "'%s' is not a regular file", path);
    return -1;
  }
  if (sb.st_size == 0) {
    snprintf(err, errlen, "'%s': zero length partitions are not allowed",
             path);
    return -1;
  }
  f->size = (uint64_t)sb.st_size;
  partitioning_table_random_guid(f->guid);
  return 0;
}

/* alignment, mbr-id and type-guid: the accepted range in the message. */
static int
partitioning_check_keys(struct partitioning_state *st,
                        const struct partitioning_conf *conf, char *err,
                        size_t errlen)
{
  const char *id = strcmp(conf->mbr_id, "default") == 0 ? PART_DEF_MBR_ID
                   : conf->mbr_id;
  const char *guid = strcmp(conf->type_guid, "default") == 0 ? PART_DEF_GUID
                     : conf->type_guid;
  uint64_t a = conf->alignment, v;
  char *end;

  if (a < PART_SECTOR || a > PART_MAX_ALIGN || (a & (a - 1)) != 0) {
    snprintf(err, errlen, "alignment: invalid value %" PRIu64 " (expected "
             "a power of two from 512 to 1M)", a);
    return -1;
  }
  errno = 0;
  v = strtoull(id, &end, 0);
  if (!isdigit((unsigned char)*id) || *end != '\0' || errno || v == 0 ||
      v > 0xff) {
    snprintf(err, errlen, "mbr-id: invalid value '%s' (expected 0x01 to "
             "0xff, or default)", conf->mbr_id);
    return -1;
  }
  st->mbr_id = (uint8_t)v;
  if (partitioning_table_parse_guid(guid, st->type_guid) == -1) {
    snprintf(err, errlen, "type-guid: invalid value '%s' (expected a GUID "
             "such as %s, or default)", conf->type_guid, PART_DEF_GUID);
    return -1;
  }
  return 0;
}

/* nbdkit's choice when partition-type is not given. */
static int
partitioning_pick_type(struct nbd_layer *layer, struct partitioning_state *st,
                       uint64_t total, char *err, size_t errlen)
{
  const struct partitioning_conf *conf = layer->conf;

  if (!nbd_layer_param_set(layer, "partition-type")) {
    st->type = st->nf > 4 || total > PART_MAX_MBR ? PART_GPT : PART_MBR;
    return 0;
  }
  st->type = conf->type;
  if (st->type == PART_MBR && total > PART_MAX_MBR) {
    snprintf(err, errlen, "partition-type=mbr: the files add up to %" PRIu64
             " bytes, more than MBR can hold (%" PRIu64 "); use "
             "partition-type=gpt", total, PART_MAX_MBR);
    return -1;
  }
  return 0;
}

static int
partitioning_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct partitioning_conf *conf = layer->conf;
  struct partitioning_state *st = calloc(1, sizeof *st);
  uint64_t total = 0;
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
  st->nf = conf->file.n;
  if (partitioning_check_keys(st, conf, err, errlen) == -1)
    goto fail;
  for (i = 0; i < st->nf; i++) {
    if (partitioning_open_file(&st->f[i], conf->file.v[i], conf->readonly,
                               err, errlen) == -1)
      goto fail;
    /* Room for tables and padding keeps the sum far from overflow. */
    if (st->f[i].size > (uint64_t)INT64_MAX / 2 - total) {
      snprintf(err, errlen, "'%s': the files add up to more than 2^62 "
               "bytes", conf->file.v[i]);
      goto fail;
    }
    total += st->f[i].size;
  }
  if (partitioning_pick_type(layer, st, total, err, errlen) == -1)
    goto fail;
  if (partitioning_table_layout(st, conf->alignment) == -1) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (st->type == PART_MBR && st->size > (uint64_t)UINT32_MAX * PART_SECTOR) {
    snprintf(err, errlen, "partition-type=mbr: the disk with padding is "
             "%" PRIu64 " bytes, more than MBR can address; use "
             "partition-type=gpt or a smaller alignment", st->size);
    goto fail;
  }
  partitioning_table_fill(st, conf->file.v);
  layer->state = st;
  return 0;

fail:
  partitioning_free(st);
  return -1;
}

static void
partitioning_cleanup(struct nbd_layer *layer)
{
  if (layer->state)
    partitioning_free(layer->state);
  layer->state = NULL;
}

NBD_REGISTER_BACKEND(partitioning, NBD_PARALLEL,
  /* Files, as the file backend: quick from the page cache, else slow. */
  NBD_RARELY_BLOCKS,
  .description = "a partitioned disk (MBR or GPT) made of files, one "
                 "partition per file",
  .params = partitioning_params,
  .conf_size = sizeof(struct partitioning_conf),
  .magic_param = "file",
  .setup = partitioning_setup,
  .cleanup = partitioning_cleanup,
);
