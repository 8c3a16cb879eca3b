/* nbdstack filter partition: serve one partition of the layer below
 * (nbdkit's partition filter, same key: partition=N, counting from 1).
 *
 * Each connection reads the partition table of the layer below when it is
 * prepared (partition_find: MBR primary and logical partitions, GPT, with
 * 512-byte sectors), so a table changed between connections is seen.  From
 * then on the filter is the offset filter over the partition's window:
 * every datapath method shifts the request by the partition's start,
 * extents come back shifted, and block sizes follow offset's rules (start
 * and length multiples of the minimum below, preferred lowered when the
 * start breaks it).  It does not write or repair tables, check GPT CRCs or
 * read the backup GPT.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "partition.h"

/* ---- the table reader ------------------------------------------------------ */

#define PARTITION_MBR_TABLE 0x1be   /* four 16-byte slots */
#define PARTITION_TYPE_GPT  0xee    /* protective MBR (UEFI 2.10, 5.2.3) */
#define PARTITION_GPT_ENTRY 128     /* bytes of an entry that are read */

struct partition_disk {
  partition_read_fn read_fn;
  void *opaque;
  uint64_t size;              /* bytes */
  uint64_t sectors;           /* whole 512-byte sectors */
  unsigned partnum;
  unsigned reads;
  char *err;
  size_t errlen;
};

/* One slot of an MBR or EBR. */
struct partition_slot {
  uint8_t type;
  uint32_t start;             /* LBA; an EBR's first slot: from the EBR */
  uint32_t count;             /* sectors */
};

static uint32_t
partition_le32(const uint8_t *p)
{
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

static uint64_t
partition_le64(const uint8_t *p)
{
  return (uint64_t)partition_le32(p) | (uint64_t)partition_le32(p + 4) << 32;
}

static void
partition_slot(const uint8_t *sector, unsigned i, struct partition_slot *s)
{
  const uint8_t *p = sector + PARTITION_MBR_TABLE + 16 * i;

  s->type = p[4];
  s->start = partition_le32(p + 8);
  s->count = partition_le32(p + 12);
}

/* The types Linux treats as extended (block/partitions/msdos.c). */
static int
partition_is_extended(uint8_t type)
{
  return type == 0x05 || type == 0x0f || type == 0x85;
}

static int
partition_has_signature(const uint8_t *sector)
{
  return sector[510] == 0x55 && sector[511] == 0xaa;
}

/* "partition N " + the message into err; returns -EINVAL. */
static int partition_fail(struct partition_disk *d, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));

static int
partition_fail(struct partition_disk *d, const char *fmt, ...)
{
  va_list ap;
  int n = snprintf(d->err, d->errlen, "partition %u ", d->partnum);

  if (n >= 0 && (size_t)n < d->errlen) {
    va_start(ap, fmt);
    vsnprintf(d->err + n, d->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return -EINVAL;
}

/* Every read goes through here: inside the disk, and bounded in number
 * (the callers' checks should make both tests redundant).  The explicit
 * -EINVAL: the analyzer does not follow variadic partition_fail, and
 * would read buf unfilled on a path where it returned >= 0. */
static int
partition_read(struct partition_disk *d, void *buf, uint32_t count,
               uint64_t offset, const char *what)
{
  int r;

  if (offset > d->size || count > d->size - offset) {
    partition_fail(d, "not found: %s at byte %" PRIu64 " lies beyond the "
                   "end of the disk", what, offset);
    return -EINVAL;
  }
  if (d->reads++ >= PARTITION_MAX_READS) {
    partition_fail(d, "not found: the table needs more than %u reads",
                   PARTITION_MAX_READS);
    return -EINVAL;
  }
  r = d->read_fn(d->opaque, buf, count, offset);
  if (r == 0)
    return 0;
  if (r > 0 || r < -4095)       /* not an errno: keep strerror in range */
    r = -EIO;
  snprintf(d->err, d->errlen, "partition %u: cannot read %s at byte %"
           PRIu64 ": %s", d->partnum, what, offset, strerror(-r));
  return r;
}

/* The partition is LBA first..last (inclusive, first <= last). */
static int
partition_found(struct partition_disk *d, uint64_t first, uint64_t last,
                uint64_t *offset, uint64_t *length)
{
  /* last < sectors <= 2^55, so neither product below overflows. */
  if (last >= d->sectors)
    return partition_fail(d, "extends beyond the end of the disk (LBA %"
                          PRIu64 "-%" PRIu64 ", the disk has %" PRIu64
                          " sectors)", first, last, d->sectors);
  *offset = first * PARTITION_SECTOR;
  *length = (last - first + 1) * PARTITION_SECTOR;
  return 0;
}

/* GPT (UEFI 2.10, 5.3): the header at LBA 1, one entry of the array. */
static int
partition_gpt(struct partition_disk *d, uint64_t *offset, uint64_t *length)
{
  static const uint8_t unused[16];
  uint8_t hdr[PARTITION_SECTOR], entry[PARTITION_GPT_ENTRY];
  uint64_t table, first, last;
  uint32_t count, size;
  int r;

  if (d->sectors < 2)
    return partition_fail(d, "not found: protective MBR, but the disk is "
                          "too small for a GPT header");
  if ((r = partition_read(d, hdr, sizeof hdr, PARTITION_SECTOR,
                          "the GPT header")) < 0)
    return r;
  if (memcmp(hdr, "EFI PART", 8) != 0)
    return partition_fail(d, "not found: protective MBR, but no GPT header "
                          "(\"EFI PART\") at LBA 1");
  table = partition_le64(hdr + 72);
  count = partition_le32(hdr + 80);
  size = partition_le32(hdr + 84);
  if (count > PARTITION_MAX)
    return partition_fail(d, "not found: invalid GPT header: %" PRIu32
                          " partition entries (at most %u)", count,
                          PARTITION_MAX);
  /* UEFI: 128 * 2^n.  More than a sector per entry is nonsense. */
  if (size < PARTITION_GPT_ENTRY || size > 4096 || (size & (size - 1)))
    return partition_fail(d, "not found: invalid GPT header: partition "
                          "entry size %" PRIu32 " (not 128, 256, ... 4096)",
                          size);
  /* (sectors - table) * 512 <= disk size: no overflow. */
  if (table < 2 || table >= d->sectors ||
      (uint64_t)count * size > (d->sectors - table) * PARTITION_SECTOR)
    return partition_fail(d, "not found: invalid GPT header: the partition "
                          "entries (LBA %" PRIu64 ", %" PRIu32 " of %" PRIu32
                          " bytes) are not inside the disk", table, count,
                          size);
  if (d->partnum > count)
    return partition_fail(d, "not found (the GPT has %" PRIu32 " partition "
                          "entries)", count);
  if ((r = partition_read(d, entry, sizeof entry, table * PARTITION_SECTOR +
                          (uint64_t)(d->partnum - 1) * size,
                          "its GPT entry")) < 0)
    return r;
  if (memcmp(entry, unused, sizeof unused) == 0)
    return partition_fail(d, "is unused (its GPT entry has no type)");
  first = partition_le64(entry + 32);
  last = partition_le64(entry + 40);
  if (last < first)
    return partition_fail(d, "is invalid: it ends at LBA %" PRIu64 " before "
                          "it starts at LBA %" PRIu64, last, first);
  return partition_found(d, first, last, offset, length);
}

static int
partition_mbr_primary(struct partition_disk *d, const uint8_t *mbr,
                      uint64_t *offset, uint64_t *length)
{
  struct partition_slot s;

  partition_slot(mbr, d->partnum - 1, &s);
  if (s.type == 0 || s.count == 0)
    return partition_fail(d, "is unused (its MBR slot is empty)");
  if (partition_is_extended(s.type))
    return partition_fail(d, "is an extended partition (type 0x%02x); its "
                          "logical partitions are numbered from 5", s.type);
  return partition_found(d, s.start, (uint64_t)s.start + s.count - 1,
                         offset, length);
}

/* The logical partition in the first slot of its EBR at LBA ebr. */
static int
partition_logical(struct partition_disk *d, const uint8_t *sector,
                  uint64_t ebr, const struct partition_slot *ext,
                  uint64_t *offset, uint64_t *length)
{
  uint64_t ext_end = (uint64_t)ext->start + ext->count, first, last;
  struct partition_slot s;

  partition_slot(sector, 0, &s);
  if (s.type == 0 || s.count == 0)
    return partition_fail(d, "is unused (the first slot of its EBR at LBA %"
                          PRIu64 " is empty)", ebr);
  if (s.start == 0)
    return partition_fail(d, "is invalid: it starts at its own EBR (LBA %"
                          PRIu64 ")", ebr);
  first = ebr + s.start;
  last = first + s.count - 1;
  if (last < d->sectors && last >= ext_end)
    return partition_fail(d, "is invalid: it ends at LBA %" PRIu64 ", past "
                          "its extended partition (LBA %" PRIu32 "-%" PRIu64
                          ")", last, ext->start, ext_end - 1);
  return partition_found(d, first, last, offset, length);
}

/* Logical partitions: the EBR chain of the first extended partition, as
 * nbdkit and Linux read it.  Partition 5 is described by the EBR at the
 * start of the extended partition; each EBR's first slot is its partition
 * (start relative to the EBR), its second the link to the next EBR (start
 * relative to the extended partition).  The chain is followed only up to
 * partnum (<= PARTITION_MAX), every EBR must lie inside the extended
 * partition and the disk, and an EBR seen twice is a loop. */
static int
partition_mbr_logical(struct partition_disk *d, const uint8_t *mbr,
                      uint64_t *offset, uint64_t *length)
{
  uint8_t ebr[PARTITION_SECTOR];
  uint64_t seen[PARTITION_MAX], lba, ext_end;
  struct partition_slot ext, s;
  unsigned i, n;
  int r;

  for (i = 0; i < 4; i++) {
    partition_slot(mbr, i, &ext);
    if (partition_is_extended(ext.type) && ext.count > 0)
      break;
  }
  if (i == 4)
    return partition_fail(d, "not found: the MBR has no extended partition "
                          "(logical partitions 5 and up live in one)");
  ext_end = (uint64_t)ext.start + ext.count;    /* exclusive */
  lba = ext.start;
  for (n = 5; n <= d->partnum; n++) {
    if (lba == 0 || lba < ext.start || lba >= ext_end || lba >= d->sectors)
      return partition_fail(d, "not found: invalid EBR chain: the EBR of "
                            "partition %u (LBA %" PRIu64 ") is outside the "
                            "extended partition or the disk", n, lba);
    for (i = 0; i < n - 5; i++)
      if (seen[i] == lba)
        return partition_fail(d, "not found: invalid EBR chain: it loops "
                              "back to LBA %" PRIu64 " (the EBR of "
                              "partition %u)", lba, i + 5);
    seen[n - 5] = lba;
    if ((r = partition_read(d, ebr, sizeof ebr, lba * PARTITION_SECTOR,
                            "an EBR")) < 0)
      return r;
    if (!partition_has_signature(ebr))
      return partition_fail(d, "not found: invalid EBR chain: no boot "
                            "signature in the EBR of partition %u (LBA %"
                            PRIu64 ")", n, lba);
    if (n == d->partnum)
      return partition_logical(d, ebr, lba, &ext, offset, length);
    partition_slot(ebr, 1, &s);
    if (!partition_is_extended(s.type) || s.count == 0)
      return partition_fail(d, "not found (the EBR chain ends at "
                            "partition %u)", n);
    lba = (uint64_t)ext.start + s.start;
  }
  return partition_fail(d, "not found");      /* partnum < 5: not called */
}

int
partition_find(partition_read_fn read_fn, void *opaque, uint64_t disk_size,
               unsigned partnum, uint64_t *offset, uint64_t *length,
               char *err, size_t errlen)
{
  struct partition_disk d = {
    .read_fn = read_fn, .opaque = opaque, .size = disk_size,
    .sectors = disk_size / PARTITION_SECTOR, .partnum = partnum,
    .err = err, .errlen = errlen,
  };
  uint8_t mbr[PARTITION_SECTOR];
  struct partition_slot s;
  unsigned i;
  int r;

  if (partnum < 1 || partnum > PARTITION_MAX)
    return partition_fail(&d, "is out of range (partitions are numbered "
                          "1-%u)", PARTITION_MAX);
  if (d.sectors == 0)
    return partition_fail(&d, "not found: the disk (%" PRIu64 " bytes) is "
                          "too small for a partition table", disk_size);
  if ((r = partition_read(&d, mbr, sizeof mbr, 0, "the MBR")) < 0)
    return r;
  if (!partition_has_signature(mbr))
    return partition_fail(&d, "not found: the disk has no MBR or GPT "
                          "partition table (no boot signature in LBA 0)");
  /* A GPT disk is one whose MBR protects it (as Linux decides; nbdkit
   * looks only for "EFI PART"). */
  for (i = 0; i < 4; i++) {
    partition_slot(mbr, i, &s);
    if (s.type == PARTITION_TYPE_GPT)
      return partition_gpt(&d, offset, length);
  }
  if (partnum <= 4)
    return partition_mbr_primary(&d, mbr, offset, length);
  return partition_mbr_logical(&d, mbr, offset, length);
}

/* ---- the filter -------------------------------------------------------------- */

struct partition_conf {
  uint64_t partition;
};

static const struct nbd_param partition_params[] = {
  { "partition", NBD_PARAM_UINT, offsetof(struct partition_conf, partition),
    NULL, "partition to serve, from 1 (MBR logical partitions from 5)",
    NULL, 1 },
  NBD_PARAM_END
};

/* Per connection: the partition's window in the layer below. */
struct partition_handle {
  uint64_t offset;
  uint64_t length;
};

static int
partition_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct partition_conf *conf = layer->conf;

  if (conf->partition < 1 || conf->partition > PARTITION_MAX) {
    snprintf(err, errlen, "partition=%" PRIu64 " is out of range "
             "(partitions are numbered 1-%u)", conf->partition,
             PARTITION_MAX);
    return -1;
  }
  return 0;
}

/* partition_find's reads through the engine, which enforces the block
 * sizes below: each read is rounded out to the minimum and cut to the
 * maximum, through a bounce buffer as large as the largest minimum. */
#define PARTITION_BOUNCE 65536

struct partition_reader {
  struct nbd_ctx *next;
  unsigned char *bounce;
};

static int
partition_next_read(void *opaque, void *buf, uint32_t count, uint64_t offset)
{
  struct partition_reader *rd = opaque;
  unsigned char *out = buf;
  uint32_t min, pref, max, unit, limit, skip, n;
  uint64_t start, len;
  int r;

  if ((r = next_block_size(rd->next, &min, &pref, &max)) < 0)
    return r;
  unit = min ? min : 1;
  limit = PARTITION_BOUNCE;
  if (max && max < limit)
    limit = max - max % unit;   /* max >= min: at least one unit */
  while (count > 0) {
    start = offset - offset % unit;
    skip = (uint32_t)(offset - start);
    len = ((uint64_t)skip + count + unit - 1) / unit * unit;
    if (len > limit)
      len = limit;
    if ((r = next_pread(rd->next, rd->bounce, (uint32_t)len, start, 0)) < 0)
      return r;
    n = (uint32_t)len - skip;
    if (n > count)
      n = count;
    memcpy(out, rd->bounce + skip, n);
    out += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* The window's start and length must stay aligned below, as in offset. */
static int
partition_block_size(struct nbd_ctx *self, struct nbd_ctx *next,
                     uint32_t *minimum, uint32_t *preferred,
                     uint32_t *maximum)
{
  const struct partition_conf *conf = self->layer->conf;
  const struct partition_handle *h = self->handle;
  uint64_t low = h->offset & -h->offset;    /* 0 when offset is 0 */
  int r;

  if ((r = next_block_size(next, minimum, preferred, maximum)) < 0)
    return r;
  if (*minimum == 0)
    return 0;
  if (h->offset % *minimum != 0) {
    nbd_error("export '%s': filter partition: partition %" PRIu64 " starts "
              "at byte %" PRIu64 ", not a multiple of the underlying minimum "
              "block size %" PRIu32, self->layer->export_name,
              conf->partition, h->offset, *minimum);
    return -EINVAL;
  }
  if (h->length % *minimum != 0) {
    nbd_error("export '%s': filter partition: partition %" PRIu64 " is %"
              PRIu64 " bytes, not a multiple of the underlying minimum "
              "block size %" PRIu32 " (its last %" PRIu64 " bytes could not "
              "be reached)", self->layer->export_name, conf->partition,
              h->length, *minimum, h->length % *minimum);
    return -EINVAL;
  }
  if (h->offset % *preferred != 0)
    *preferred = low < *minimum ? *minimum : (uint32_t)low;
  return 0;
}

static int
partition_open(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  self->handle = calloc(1, sizeof(struct partition_handle));
  return self->handle ? 0 : -ENOMEM;
}

static void
partition_close(struct nbd_ctx *self, struct nbd_ctx *next)
{
  free(self->handle);
  self->handle = NULL;
}

/* Reads the table, then checks the window's alignment, so a connection
 * fails at open with the reason in the log. */
static int
partition_prepare(struct nbd_ctx *self, struct nbd_ctx *next, int readonly)
{
  const struct partition_conf *conf = self->layer->conf;
  struct partition_handle *h = self->handle;
  struct partition_reader rd = { next, NULL };
  int64_t size = next_get_size(next);
  uint32_t minimum, preferred, maximum;
  char err[256];
  int r;

  if (size < 0)
    return (int)size;
  if ((rd.bounce = malloc(PARTITION_BOUNCE)) == NULL)
    return -ENOMEM;
  r = partition_find(partition_next_read, &rd, (uint64_t)size,
                     (unsigned)conf->partition, &h->offset, &h->length,
                     err, sizeof err);
  free(rd.bounce);
  if (r < 0) {
    nbd_error("export '%s': filter partition: %s", self->layer->export_name,
              err);
    return r;
  }
  nbd_debug("export '%s': filter partition: partition %" PRIu64 " is bytes %"
            PRIu64 "+%" PRIu64, self->layer->export_name, conf->partition,
            h->offset, h->length);
  return partition_block_size(self, next, &minimum, &preferred, &maximum);
}

/* prepare checked offset + length <= the size below (an int64_t). */
static int64_t
partition_get_size(struct nbd_ctx *self, struct nbd_ctx *next)
{
  return (int64_t)((const struct partition_handle *)self->handle)->length;
}

static uint64_t
partition_offset(const struct nbd_ctx *self)
{
  return ((const struct partition_handle *)self->handle)->offset;
}

/* ---- datapath: shift by the partition's start ------------------------------ */

static int
partition_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
                uint32_t count, uint64_t offset, uint32_t flags)
{
  return next_pread(next, buf, count, offset + partition_offset(self), flags);
}

static int
partition_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags)
{
  return next_pwrite(next, buf, count, offset + partition_offset(self),
                     flags);
}

static int
partition_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
                      struct nbd_source *src, uint32_t count,
                      uint64_t offset, uint32_t flags)
{
  return next_pwrite_from(next, src, count,
                          offset + partition_offset(self), flags);
}

static int
partition_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
               uint64_t offset, uint32_t flags)
{
  return next_trim(next, count, offset + partition_offset(self), flags);
}

static int
partition_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
               uint64_t offset, uint32_t flags)
{
  return next_zero(next, count, offset + partition_offset(self), flags);
}

static int
partition_cache(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
                uint64_t offset, uint32_t flags)
{
  return next_cache(next, count, offset + partition_offset(self), flags);
}

/* Extents of the partition: the layer below's, shifted back (extents.c). */
static int
partition_extents(struct nbd_ctx *self, struct nbd_ctx *next, uint32_t count,
                  uint64_t offset, uint32_t flags,
                  struct nbd_extents *extents)
{
  return nbd_extents_shifted(next, count, offset, partition_offset(self),
                             flags, extents);
}

/* Flush has no range; every capability but size and block size is the
 * lower layer's. */
PASSTHROUGH(partition, flush)
PASSTHROUGH(partition, can_write)
PASSTHROUGH(partition, can_flush)
PASSTHROUGH(partition, can_trim)
PASSTHROUGH(partition, can_zero)
PASSTHROUGH(partition, can_fast_zero)
PASSTHROUGH(partition, can_fua)
PASSTHROUGH(partition, can_cache)
PASSTHROUGH(partition, can_extents)
PASSTHROUGH(partition, can_multi_conn)
PASSTHROUGH(partition, is_rotational)

NBD_REGISTER_FILTER(partition,
  .description = "serve one partition (MBR or GPT) of the layer below",
  .params = partition_params,
  .conf_size = sizeof(struct partition_conf),
  .thread_model = NBD_PARALLEL,
  .nonblocking = NBD_NEVER_BLOCKS,
  .pwrite_from = partition_pwrite_from,
  .magic_param = "partition",
  .setup = partition_setup,
  .prepare = partition_prepare,
  .open = partition_open,
  .close = partition_close,
);
