/* nbdstack backend partitioning: a partitioned disk made of files, one
 * partition per file, as nbdkit's partitioning plugin
 * ("nbdkit partitioning boot.img swap.img root.img").
 *
 * The disk is a list of regions built once at setup: the primary table
 * (an MBR sector, or protective MBR + GPT header + 32 sectors of entries),
 * then for each file: an EBR sector (MBR with more than 4 files, files 4
 * and up), zero padding up to the alignment, the file, zero padding up to
 * a whole 512-byte sector; and for GPT the backup entries and header at
 * the end.  nbdkit's layout: with more than 4 files an MBR gets three
 * primary partitions, an extended partition 4 to the end of the disk and
 * logical partitions 5 and up; the first partition is marked bootable.
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
#include <sys/random.h>
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

#define PART_SECTOR      512u
#define PART_MAX_ALIGN   (2048u * PART_SECTOR)           /* nbdkit's 1M */
/* nbdkit's limit: 2^32 sectors, less room for padding. */
#define PART_MAX_MBR     ((uint64_t)UINT32_MAX * PART_SECTOR - \
                          5u * PART_MAX_ALIGN)
#define PART_GPT_MIN     128u   /* UEFI: at least 128 entries */
#define PART_GPT_ENTRY   128u
#define PART_GPT_HDR     92u
#define PART_DEF_MBR_ID  "0x83"
#define PART_DEF_GUID    "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

enum { PART_MBR, PART_GPT };
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

enum partitioning_kind { REG_DATA, REG_ZERO, REG_FILE };

struct partitioning_file {
  int fd;
  uint64_t size;
  unsigned char guid[16];       /* GPT unique partition GUID */
  atomic_int no_punch, no_zero_range, no_seek;
};

struct partitioning_region {
  uint64_t start, len;
  enum partitioning_kind kind;
  size_t file;                  /* REG_FILE */
  const unsigned char *data;    /* REG_DATA: len bytes */
};

struct partitioning_state {
  struct partitioning_file *f;
  size_t nf;
  struct partitioning_region *r;
  size_t nr, cap;
  uint64_t size;
  int type;
  unsigned char *primary, *secondary, *ebr;
  uint32_t pta_entries, pta_lbas; /* GPT */
  uint8_t mbr_id;
  unsigned char type_guid[16];
};

/* ---- small helpers --------------------------------------------------- */

static void
partitioning_le32(unsigned char *p, uint32_t v)
{
  int i;
  for (i = 0; i < 4; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

static void
partitioning_le64(unsigned char *p, uint64_t v)
{
  int i;
  for (i = 0; i < 8; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

/* CRC-32 of GPT (UEFI 2.x, the zlib/IEEE polynomial, reflected). */
static uint32_t
partitioning_crc32(const unsigned char *p, size_t len)
{
  uint32_t c = 0xffffffffu;
  int k;

  while (len--) {
    c ^= *p++;
    for (k = 0; k < 8; k++)
      c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
  }
  return c ^ 0xffffffffu;
}

static int
partitioning_hex(int c)
{
  return isdigit(c) ? c - '0' : tolower(c) - 'a' + 10;
}

/* "0FC63DAF-8483-4772-8E79-3D69D8477DE4" or with braces, into the mixed
 * endian bytes of GPT (first three groups little endian).  0 or -1. */
static int
partitioning_parse_guid(const char *s, unsigned char *out)
{
  static const int order[16] = { 6, 4, 2, 0, 11, 9, 16, 14, 19, 21, 24, 26,
                                 28, 30, 32, 34 };
  size_t len = strlen(s), i;

  if (len == 38 && s[0] == '{' && s[37] == '}')
    s++, len -= 2;
  if (len != 36)
    return -1;
  for (i = 0; i < 36; i++)
    if (i == 8 || i == 13 || i == 18 || i == 23 ? s[i] != '-'
        : !isxdigit((unsigned char)s[i]))
      return -1;
  for (i = 0; i < 16; i++)
    out[i] = (unsigned char)(partitioning_hex(s[order[i]]) << 4 |
                             partitioning_hex(s[order[i] + 1]));
  return 0;
}

static void
partitioning_random_guid(unsigned char *g)
{
  size_t got = 0;
  ssize_t r;

  while (got < 16) {
    r = getrandom(g + got, 16 - got, 0);
    if (r <= 0) {
      if (r == -1 && errno == EINTR)
        continue;
      /* No entropy source: unique enough for one disk. */
      for (; got < 16; got++)
        g[got] = (unsigned char)(rand() ^ (int)getpid() ^ (int)got);
      break;
    }
    got += (size_t)r;
  }
  g[7] = (unsigned char)((g[7] & 0x0f) | 0x40);  /* version 4 (LE group) */
  g[8] = (unsigned char)((g[8] & 0x3f) | 0x80);  /* RFC 4122 variant */
}

/* ---- layout ---------------------------------------------------------- */

static int
partitioning_add(struct partitioning_state *st, uint64_t len,
                 enum partitioning_kind kind, size_t file,
                 const unsigned char *data)
{
  struct partitioning_region *r;

  if (st->nr == st->cap) {
    size_t cap = st->cap ? 2 * st->cap : 16;
    if ((r = realloc(st->r, cap * sizeof *r)) == NULL)
      return -1;
    st->r = r;
    st->cap = cap;
  }
  r = &st->r[st->nr++];
  r->start = st->size;
  r->len = len;
  r->kind = kind;
  r->file = file;
  r->data = data;
  st->size += len;
  return 0;
}

/* The region of file i, or of the EBR before it. */
static const struct partitioning_region *
partitioning_region_of(const struct partitioning_state *st, size_t i,
                       int ebr)
{
  size_t j;

  for (j = 0; j < st->nr; j++)
    if (ebr ? st->r[j].data == st->ebr + (i - 3) * PART_SECTOR
        : st->r[j].kind == REG_FILE && st->r[j].file == i)
      return &st->r[j];
  abort();
}

static void
partitioning_mbr_entry(unsigned char *out, uint64_t start, uint64_t len,
                       int boot, uint8_t id)
{
  static const unsigned char chs[3] = { 254, (1023 & 0x300) >> 2 | 63,
                                        1023 & 0xff };   /* "too large" */

  out[0] = boot ? 0x80 : 0;
  memcpy(out + 1, chs, 3);
  out[4] = id;
  memcpy(out + 5, chs, 3);
  partitioning_le32(out + 8, (uint32_t)(start / PART_SECTOR));
  partitioning_le32(out + 12,
                    (uint32_t)((len + PART_SECTOR - 1) / PART_SECTOR));
}

static void
partitioning_mbr(struct partitioning_state *st)
{
  const struct partitioning_region *r, *e, *e0, *en, *rn;
  unsigned char *mbr = st->primary, *ebr;
  size_t i, nprim = st->nf > 4 ? 3 : st->nf;

  mbr[0x1fe] = 0x55;
  mbr[0x1ff] = 0xaa;
  for (i = 0; i < nprim; i++) {
    r = partitioning_region_of(st, i, 0);
    partitioning_mbr_entry(mbr + 0x1be + 16 * i, r->start, r->len, i == 0,
                           st->mbr_id);
  }
  if (st->nf <= 4)
    return;
  /* Partition 4: extended, from the first EBR to the end of the disk;
   * EBR offsets are relative to their own sector (the partition) or to
   * the extended partition's start (the next EBR). */
  e0 = partitioning_region_of(st, 3, 1);
  partitioning_mbr_entry(mbr + 0x1ee, e0->start, st->size - e0->start, 0,
                         0x0f);
  for (i = 3; i < st->nf; i++) {
    e = partitioning_region_of(st, i, 1);
    r = partitioning_region_of(st, i, 0);
    ebr = st->ebr + (i - 3) * PART_SECTOR;
    ebr[0x1fe] = 0x55;
    ebr[0x1ff] = 0xaa;
    partitioning_mbr_entry(ebr + 0x1be, r->start - e->start, r->len, 0,
                           st->mbr_id);
    if (i + 1 < st->nf) {
      en = partitioning_region_of(st, i + 1, 1);
      rn = partitioning_region_of(st, i + 1, 0);
      partitioning_mbr_entry(ebr + 0x1ce, en->start - e0->start,
                             rn->start + rn->len - en->start, 0, 0x0f);
    }
  }
}

static void
partitioning_gpt_entries(struct partitioning_state *st, unsigned char *out,
                         char *const *names)
{
  const struct partitioning_region *r;
  size_t i, k, len;

  for (i = 0; i < st->nf; i++, out += PART_GPT_ENTRY) {
    r = partitioning_region_of(st, i, 0);
    memcpy(out, st->type_guid, 16);
    memcpy(out + 16, st->f[i].guid, 16);
    partitioning_le64(out + 32, r->start / PART_SECTOR);
    partitioning_le64(out + 40, (r->start + r->len - 1) / PART_SECTOR);
    partitioning_le64(out + 48, i == 0 ? 4 : 0);  /* legacy BIOS bootable */
    /* The name is the file name when it fits and is ASCII, as nbdkit. */
    len = strlen(names[i]);
    for (k = 0; k < len && !(names[i][k] & 0x80); k++)
      ;
    if (len < 36 && k == len)
      for (k = 0; k < len; k++)
        out[56 + 2 * k] = (unsigned char)names[i][k];
  }
}

static void
partitioning_gpt_header(const struct partitioning_state *st,
                        unsigned char *h, const unsigned char *pta,
                        int primary, const unsigned char *disk_guid)
{
  uint64_t lbas = st->size / PART_SECTOR;

  memcpy(h, "EFI PART", 8);
  memcpy(h + 8, "\0\0\1\0", 4);                 /* revision 1.0 */
  partitioning_le32(h + 12, PART_GPT_HDR);
  partitioning_le64(h + 24, primary ? 1 : lbas - 1);
  partitioning_le64(h + 32, primary ? lbas - 1 : 1);
  partitioning_le64(h + 40, 2 + st->pta_lbas);
  partitioning_le64(h + 48, lbas - st->pta_lbas - 2);
  memcpy(h + 56, disk_guid, 16);
  partitioning_le64(h + 72, primary ? 2 : lbas - st->pta_lbas - 1);
  partitioning_le32(h + 80, st->pta_entries);
  partitioning_le32(h + 84, PART_GPT_ENTRY);
  partitioning_le32(h + 88, partitioning_crc32(pta, (size_t)st->pta_entries *
                                               PART_GPT_ENTRY));
  partitioning_le32(h + 16, partitioning_crc32(h, PART_GPT_HDR)); /* last */
}

static void
partitioning_gpt(struct partitioning_state *st, char *const *names)
{
  unsigned char *pta = st->primary + 2 * PART_SECTOR, disk_guid[16];
  uint64_t end = st->size - 1;
  size_t ptalen = (size_t)st->pta_lbas * PART_SECTOR;

  /* Protective MBR: type 0xee over the disk, or what MBR can say. */
  if (end > (uint64_t)UINT32_MAX * PART_SECTOR)
    end = (uint64_t)UINT32_MAX * PART_SECTOR;
  partitioning_mbr_entry(st->primary + 0x1be, PART_SECTOR,
                         end - PART_SECTOR + 1, 0, 0xee);
  st->primary[0x1fe] = 0x55;
  st->primary[0x1ff] = 0xaa;
  partitioning_gpt_entries(st, pta, names);
  memcpy(st->secondary, pta, ptalen);
  partitioning_random_guid(disk_guid);
  partitioning_gpt_header(st, st->primary + PART_SECTOR, pta, 1, disk_guid);
  partitioning_gpt_header(st, st->secondary + ptalen, pta, 0, disk_guid);
}

static int
partitioning_layout(struct partitioning_state *st, uint64_t align)
{
  size_t i;
  uint64_t pad;

  if (st->type == PART_GPT) {
    st->pta_entries = (uint32_t)((st->nf + PART_GPT_MIN - 1) / PART_GPT_MIN *
                                 PART_GPT_MIN);
    st->pta_lbas = st->pta_entries * PART_GPT_ENTRY / PART_SECTOR;
    st->primary = calloc(2 + st->pta_lbas, PART_SECTOR);
    st->secondary = calloc(1 + st->pta_lbas, PART_SECTOR);
    if (st->primary == NULL || st->secondary == NULL)
      return -1;
  } else {
    st->primary = calloc(1, PART_SECTOR);
    if (st->primary == NULL ||
        (st->nf > 4 && (st->ebr = calloc(st->nf - 3, PART_SECTOR)) == NULL))
      return -1;
  }
  if (partitioning_add(st, st->type == PART_GPT ?
                       (2 + (uint64_t)st->pta_lbas) * PART_SECTOR :
                       PART_SECTOR, REG_DATA, 0, st->primary) == -1)
    return -1;
  for (i = 0; i < st->nf; i++) {
    if (st->type == PART_MBR && st->nf > 4 && i >= 3 &&
        partitioning_add(st, PART_SECTOR, REG_DATA, 0,
                         st->ebr + (i - 3) * PART_SECTOR) == -1)
      return -1;
    if ((pad = (align - st->size % align) % align) != 0 &&
        partitioning_add(st, pad, REG_ZERO, 0, NULL) == -1)
      return -1;
    if (partitioning_add(st, st->f[i].size, REG_FILE, i, NULL) == -1)
      return -1;
    if ((pad = (PART_SECTOR - st->size % PART_SECTOR) % PART_SECTOR) != 0 &&
        partitioning_add(st, pad, REG_ZERO, 0, NULL) == -1)
      return -1;
  }
  if (st->type == PART_GPT &&
      partitioning_add(st, (1 + (uint64_t)st->pta_lbas) * PART_SECTOR,
                       REG_DATA, 0, st->secondary) == -1)
    return -1;
  return 0;
}

/* ---- pieces ---------------------------------------------------------- */

typedef int (*partitioning_piece_fn)(struct partitioning_state *st,
                                     const struct partitioning_region *r,
                                     uint64_t roff, uint32_t len,
                                     uint32_t done, void *arg);

/* The region holding offset (< st->size). */
static size_t
partitioning_find(const struct partitioning_state *st, uint64_t offset)
{
  size_t lo = 0, hi = st->nr;

  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (st->r[mid].start <= offset)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/* Cuts [offset, offset+count) at region boundaries; -EINVAL past the end
 * (the engine checks too: this one guards the arithmetic). */
static int
partitioning_each(struct partitioning_state *st, uint32_t count,
                  uint64_t offset, partitioning_piece_fn fn, void *arg)
{
  uint32_t done = 0;
  size_t i;
  int r;

  if (offset > st->size || count > st->size - offset)
    return -EINVAL;
  if (count == 0)
    return 0;
  i = partitioning_find(st, offset);
  while (done < count) {
    const struct partitioning_region *reg = &st->r[i++];
    uint64_t roff = offset + done - reg->start;
    uint64_t len = reg->len - roff;

    if (len > count - done)
      len = count - done;
    if ((r = fn(st, reg, roff, (uint32_t)len, done, arg)) < 0)
      return r;
    done += (uint32_t)len;
  }
  return 0;
}

static int
partitioning_fallocate(struct partitioning_file *f, int mode,
                       uint64_t offset, uint32_t count,
                       atomic_int *unsupported)
{
  int r;

  if (atomic_load_explicit(unsupported, memory_order_relaxed))
    return -EOPNOTSUPP;
  do
    r = fallocate(f->fd, mode, (off_t)offset, (off_t)count);
  while (r == -1 && errno == EINTR);
  if (r == 0)
    return 0;
  if (errno == EOPNOTSUPP || errno == ENOSYS) {
    atomic_store_explicit(unsupported, 1, memory_order_relaxed);
    return -EOPNOTSUPP;
  }
  return -errno;
}

/* ---- datapath -------------------------------------------------------- */

static int
partitioning_read_piece(struct partitioning_state *st,
                        const struct partitioning_region *r, uint64_t roff,
                        uint32_t len, uint32_t done, void *arg)
{
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
partitioning_write_piece(struct partitioning_state *st,
                         const struct partitioning_region *r, uint64_t roff,
                         uint32_t len, uint32_t done, void *arg)
{
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
partitioning_trim_piece(struct partitioning_state *st,
                        const struct partitioning_region *r, uint64_t roff,
                        uint32_t len, uint32_t done, void *arg)
{
  struct partitioning_file *f = &st->f[r->file];
  int e;

  if (r->kind != REG_FILE)
    return 0;                   /* trim is advisory: tables stay */
  e = partitioning_fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                             roff, len, &f->no_punch);
  return e == -EOPNOTSUPP ? 0 : e;
}

static int
partitioning_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
                  uint64_t offset, uint32_t flags)
{
  return partitioning_each(self->layer->state, count, offset,
                           partitioning_trim_piece, NULL);
}

/* Fast methods only (-EOPNOTSUPP: the engine writes zeros, which meet
 * the same rules as any write).  Zeroing a table that is not zero there
 * would change it: EIO. */
static int
partitioning_zero_piece(struct partitioning_state *st,
                        const struct partitioning_region *r, uint64_t roff,
                        uint32_t len, uint32_t done, void *arg)
{
  const uint32_t flags = *(const uint32_t *)arg;
  struct partitioning_file *f = &st->f[r->file];
  const int keep = FALLOC_FL_KEEP_SIZE;
  int e;

  if (r->kind == REG_ZERO)
    return 0;
  if (r->kind == REG_DATA)
    return nbd_is_zero(r->data + roff, len) ? 0 : -EIO;
  if (!(flags & NBD_CMD_FLAG_NO_HOLE)) {
    e = partitioning_fallocate(f, FALLOC_FL_PUNCH_HOLE | keep, roff, len,
                               &f->no_punch);
    if (e != -EOPNOTSUPP)
      return e;
  }
  return partitioning_fallocate(f, FALLOC_FL_ZERO_RANGE | keep, roff, len,
                                &f->no_zero_range);
}

static int
partitioning_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
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
partitioning_extents_piece(struct partitioning_state *st,
                           const struct partitioning_region *r,
                           uint64_t roff, uint32_t len, uint32_t done,
                           void *arg)
{
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
                     uint32_t count, uint64_t offset, uint32_t flags,
                     struct nbd_extents *extents)
{
  struct partitioning_ext_arg a = { extents, flags, 0 };

  return partitioning_each(self->layer->state, count, offset,
                           partitioning_extents_piece, &a);
}

static int
partitioning_cache_piece(struct partitioning_state *st,
                         const struct partitioning_region *r, uint64_t roff,
                         uint32_t len, uint32_t done, void *arg)
{
  if (r->kind != REG_FILE)
    return 0;
  /* Returns the error number itself, not -1 and errno. */
  return -posix_fadvise(st->f[r->file].fd, (off_t)roff, (off_t)len,
                        POSIX_FADV_WILLNEED);
}

static int
partitioning_cache(struct nbd_ctx *self, struct nbd_ctx *next,
                   uint32_t count, uint64_t offset, uint32_t flags)
{
  return partitioning_each(self->layer->state, count, offset,
                           partitioning_cache_piece, NULL);
}

/* ---- capabilities ---------------------------------------------------- */

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

static int
partitioning_yes(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return 1;
}
#define partitioning_can_flush partitioning_yes
#define partitioning_can_trim partitioning_yes
#define partitioning_can_fast_zero partitioning_yes /* only fast work */
#define partitioning_can_extents partitioning_yes
#define partitioning_can_multi_conn partitioning_yes /* shared fds */

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
  partitioning_random_guid(f->guid);
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
  if (partitioning_parse_guid(guid, st->type_guid) == -1) {
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
  if (partitioning_layout(st, conf->alignment) == -1) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (st->type == PART_MBR && st->size > (uint64_t)UINT32_MAX * PART_SECTOR) {
    snprintf(err, errlen, "partition-type=mbr: the disk with padding is "
             "%" PRIu64 " bytes, more than MBR can address; use "
             "partition-type=gpt or a smaller alignment", st->size);
    goto fail;
  }
  if (st->type == PART_MBR)
    partitioning_mbr(st);
  else
    partitioning_gpt(st, conf->file.v);
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
