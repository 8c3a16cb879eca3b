/* nbdstack filter partition: the partition table reader (table.h).
 *
 * MBR primary partitions, logical partitions through the EBR chain of the
 * first extended partition, and GPT behind a protective MBR, with 512-byte
 * sectors.  Every read goes through the caller's callback and is checked
 * here to lie inside the disk and stay within PARTITION_MAX_READS.  It
 * knows nothing of layers or connections (partition.c is the filter), and
 * does not check GPT CRCs or read the backup GPT.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "table.h"

#define TABLE_MBR_SLOTS 0x1be   /* four 16-byte slots */
#define TABLE_TYPE_GPT  0xee    /* protective MBR (UEFI 2.10, 5.2.3) */
#define TABLE_GPT_ENTRY 128     /* bytes of an entry that are read */

struct table_disk {
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
struct table_slot {
  uint8_t type;
  uint32_t start;             /* LBA; an EBR's first slot: from the EBR */
  uint32_t count;             /* sectors */
};

static uint32_t
table_le32(const uint8_t *p)
{
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

static uint64_t
table_le64(const uint8_t *p)
{
  return (uint64_t)table_le32(p) | (uint64_t)table_le32(p + 4) << 32;
}

static void
table_slot(const uint8_t *sector, unsigned i, struct table_slot *s)
{
  const uint8_t *p = sector + TABLE_MBR_SLOTS + 16 * i;

  s->type = p[4];
  s->start = table_le32(p + 8);
  s->count = table_le32(p + 12);
}

/* The types Linux treats as extended (block/partitions/msdos.c). */
static int
table_is_extended(uint8_t type)
{
  return type == 0x05 || type == 0x0f || type == 0x85;
}

static int
table_has_signature(const uint8_t *sector)
{
  return sector[510] == 0x55 && sector[511] == 0xaa;
}

/* "partition N " + the message into err; returns -EINVAL. */
static int table_fail(struct table_disk *d, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));

static int
table_fail(struct table_disk *d, const char *fmt, ...)
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
 * -EINVAL: the analyzer does not follow variadic table_fail, and
 * would read buf unfilled on a path where it returned >= 0. */
static int
table_read(struct table_disk *d, void *buf, uint32_t count,
           uint64_t offset, const char *what)
{
  int r;

  if (offset > d->size || count > d->size - offset) {
    table_fail(d, "not found: %s at byte %" PRIu64 " lies beyond the "
               "end of the disk", what, offset);
    return -EINVAL;
  }
  if (d->reads++ >= PARTITION_MAX_READS) {
    table_fail(d, "not found: the table needs more than %u reads",
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
table_found(struct table_disk *d, uint64_t first, uint64_t last,
            uint64_t *offset, uint64_t *length)
{
  /* last < sectors <= 2^55, so neither product below overflows. */
  if (last >= d->sectors)
    return table_fail(d, "extends beyond the end of the disk (LBA %"
                      PRIu64 "-%" PRIu64 ", the disk has %" PRIu64
                      " sectors)", first, last, d->sectors);
  *offset = first * PARTITION_SECTOR;
  *length = (last - first + 1) * PARTITION_SECTOR;
  return 0;
}

/* GPT (UEFI 2.10, 5.3): the header at LBA 1, one entry of the array. */
static int
table_gpt(struct table_disk *d, uint64_t *offset, uint64_t *length)
{
  static const uint8_t unused[16];
  uint8_t hdr[PARTITION_SECTOR], entry[TABLE_GPT_ENTRY];
  uint64_t table, first, last;
  uint32_t count, size;
  int r;

  if (d->sectors < 2)
    return table_fail(d, "not found: protective MBR, but the disk is "
                      "too small for a GPT header");
  if ((r = table_read(d, hdr, sizeof hdr, PARTITION_SECTOR,
                      "the GPT header")) < 0)
    return r;
  if (memcmp(hdr, "EFI PART", 8) != 0)
    return table_fail(d, "not found: protective MBR, but no GPT header "
                      "(\"EFI PART\") at LBA 1");
  table = table_le64(hdr + 72);
  count = table_le32(hdr + 80);
  size = table_le32(hdr + 84);
  if (count > PARTITION_MAX)
    return table_fail(d, "not found: invalid GPT header: %" PRIu32
                      " partition entries (at most %u)", count,
                      PARTITION_MAX);
  /* UEFI: 128 * 2^n.  More than a sector per entry is nonsense. */
  if (size < TABLE_GPT_ENTRY || size > 4096 || (size & (size - 1)))
    return table_fail(d, "not found: invalid GPT header: partition "
                      "entry size %" PRIu32 " (not 128, 256, ... 4096)",
                      size);
  /* (sectors - table) * 512 <= disk size: no overflow. */
  if (table < 2 || table >= d->sectors ||
      (uint64_t)count * size > (d->sectors - table) * PARTITION_SECTOR)
    return table_fail(d, "not found: invalid GPT header: the partition "
                      "entries (LBA %" PRIu64 ", %" PRIu32 " of %" PRIu32
                      " bytes) are not inside the disk", table, count,
                      size);
  if (d->partnum > count)
    return table_fail(d, "not found (the GPT has %" PRIu32 " partition "
                      "entries)", count);
  if ((r = table_read(d, entry, sizeof entry, table * PARTITION_SECTOR +
                      (uint64_t)(d->partnum - 1) * size,
                      "its GPT entry")) < 0)
    return r;
  if (memcmp(entry, unused, sizeof unused) == 0)
    return table_fail(d, "is unused (its GPT entry has no type)");
  first = table_le64(entry + 32);
  last = table_le64(entry + 40);
  if (last < first)
    return table_fail(d, "is invalid: it ends at LBA %" PRIu64 " before "
                      "it starts at LBA %" PRIu64, last, first);
  return table_found(d, first, last, offset, length);
}

static int
table_mbr_primary(struct table_disk *d, const uint8_t *mbr,
                  uint64_t *offset, uint64_t *length)
{
  struct table_slot s;

  table_slot(mbr, d->partnum - 1, &s);
  if (s.type == 0 || s.count == 0)
    return table_fail(d, "is unused (its MBR slot is empty)");
  if (table_is_extended(s.type))
    return table_fail(d, "is an extended partition (type 0x%02x); its "
                      "logical partitions are numbered from 5", s.type);
  return table_found(d, s.start, (uint64_t)s.start + s.count - 1,
                     offset, length);
}

/* The logical partition in the first slot of its EBR at LBA ebr. */
static int
table_logical(struct table_disk *d, const uint8_t *sector,
              uint64_t ebr, const struct table_slot *ext,
              uint64_t *offset, uint64_t *length)
{
  uint64_t ext_end = (uint64_t)ext->start + ext->count, first, last;
  struct table_slot s;

  table_slot(sector, 0, &s);
  if (s.type == 0 || s.count == 0)
    return table_fail(d, "is unused (the first slot of its EBR at LBA %"
                      PRIu64 " is empty)", ebr);
  if (s.start == 0)
    return table_fail(d, "is invalid: it starts at its own EBR (LBA %"
                      PRIu64 ")", ebr);
  first = ebr + s.start;
  last = first + s.count - 1;
  if (last < d->sectors && last >= ext_end)
    return table_fail(d, "is invalid: it ends at LBA %" PRIu64 ", past "
                      "its extended partition (LBA %" PRIu32 "-%" PRIu64
                      ")", last, ext->start, ext_end - 1);
  return table_found(d, first, last, offset, length);
}

/* Logical partitions: the EBR chain of the first extended partition, as
 * nbdkit and Linux read it.  Partition 5 is described by the EBR at the
 * start of the extended partition; each EBR's first slot is its partition
 * (start relative to the EBR), its second the link to the next EBR (start
 * relative to the extended partition).  The chain is followed only up to
 * partnum (<= PARTITION_MAX), every EBR must lie inside the extended
 * partition and the disk, and an EBR seen twice is a loop. */
static int
table_mbr_logical(struct table_disk *d, const uint8_t *mbr,
                  uint64_t *offset, uint64_t *length)
{
  uint8_t ebr[PARTITION_SECTOR];
  uint64_t seen[PARTITION_MAX], lba, ext_end;
  struct table_slot ext, s;
  unsigned i, n;
  int r;

  for (i = 0; i < 4; i++) {
    table_slot(mbr, i, &ext);
    if (table_is_extended(ext.type) && ext.count > 0)
      break;
  }
  if (i == 4)
    return table_fail(d, "not found: the MBR has no extended partition "
                      "(logical partitions 5 and up live in one)");
  ext_end = (uint64_t)ext.start + ext.count;    /* exclusive */
  lba = ext.start;
  for (n = 5; n <= d->partnum; n++) {
    if (lba == 0 || lba < ext.start || lba >= ext_end || lba >= d->sectors)
      return table_fail(d, "not found: invalid EBR chain: the EBR of "
                        "partition %u (LBA %" PRIu64 ") is outside the "
                        "extended partition or the disk", n, lba);
    for (i = 0; i < n - 5; i++)
      if (seen[i] == lba)
        return table_fail(d, "not found: invalid EBR chain: it loops "
                          "back to LBA %" PRIu64 " (the EBR of "
                          "partition %u)", lba, i + 5);
    seen[n - 5] = lba;
    if ((r = table_read(d, ebr, sizeof ebr, lba * PARTITION_SECTOR,
                        "an EBR")) < 0)
      return r;
    if (!table_has_signature(ebr))
      return table_fail(d, "not found: invalid EBR chain: no boot "
                        "signature in the EBR of partition %u (LBA %"
                        PRIu64 ")", n, lba);
    if (n == d->partnum)
      return table_logical(d, ebr, lba, &ext, offset, length);
    table_slot(ebr, 1, &s);
    if (!table_is_extended(s.type) || s.count == 0)
      return table_fail(d, "not found (the EBR chain ends at "
                        "partition %u)", n);
    lba = (uint64_t)ext.start + s.start;
  }
  return table_fail(d, "not found");      /* partnum < 5: not called */
}

int
partition_find(partition_read_fn read_fn, void *opaque, uint64_t disk_size,
               unsigned partnum, uint64_t *offset, uint64_t *length,
               char *err, size_t errlen)
{
  struct table_disk d = {
    .read_fn = read_fn, .opaque = opaque, .size = disk_size,
    .sectors = disk_size / PARTITION_SECTOR, .partnum = partnum,
    .err = err, .errlen = errlen,
  };
  uint8_t mbr[PARTITION_SECTOR];
  struct table_slot s;
  unsigned i;
  int r;

  if (partnum < 1 || partnum > PARTITION_MAX)
    return table_fail(&d, "is out of range (partitions are numbered "
                      "1-%u)", PARTITION_MAX);
  if (d.sectors == 0)
    return table_fail(&d, "not found: the disk (%" PRIu64 " bytes) is "
                      "too small for a partition table", disk_size);
  if ((r = table_read(&d, mbr, sizeof mbr, 0, "the MBR")) < 0)
    return r;
  if (!table_has_signature(mbr))
    return table_fail(&d, "not found: the disk has no MBR or GPT "
                      "partition table (no boot signature in LBA 0)");
  /* A GPT disk is one whose MBR protects it (as Linux decides; nbdkit
   * looks only for "EFI PART"). */
  for (i = 0; i < 4; i++) {
    table_slot(mbr, i, &s);
    if (s.type == TABLE_TYPE_GPT)
      return table_gpt(&d, offset, length);
  }
  if (partnum <= 4)
    return table_mbr_primary(&d, mbr, offset, length);
  return table_mbr_logical(&d, mbr, offset, length);
}
