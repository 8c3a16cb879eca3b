/* nbdstack backend partitioning: the disk's layout and its tables
 * (table.c), built once at setup from the opened files.
 *
 * partitioning_table_layout cuts the disk into regions: the primary
 * table (an MBR sector, or protective MBR + GPT header + entries), then
 * for each file an EBR sector (MBR with more than 4 files, files 4 and
 * up), zero padding up to the alignment, the file, zero padding up to a
 * whole sector; for GPT the backup entries and header at the end.
 * partitioning_table_fill then writes the table bytes the regions point
 * at, in nbdkit's layout: with more than 4 files an MBR gets three
 * primary partitions, an extended partition 4 to the end of the disk and
 * logical partitions 5 and up; the first partition is marked bootable.
 *
 * It does not open files, check keys or serve requests (partitioning.c
 * does), and never looks at a file's contents: only its size.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "table.h"

#define PART_GPT_MIN     128u   /* UEFI: at least 128 entries */
#define PART_GPT_ENTRY   128u
#define PART_GPT_HDR     92u

/* ---- small helpers --------------------------------------------------- */

static void
table_le32(unsigned char *p, uint32_t v)
{
  int i;
  for (i = 0; i < 4; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

static void
table_le64(unsigned char *p, uint64_t v)
{
  int i;
  for (i = 0; i < 8; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

/* CRC-32 of GPT (UEFI 2.x, the zlib/IEEE polynomial, reflected). */
static uint32_t
table_crc32(const unsigned char *p, size_t len)
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
table_hex(int c)
{
  return isdigit(c) ? c - '0' : tolower(c) - 'a' + 10;
}

/* "0FC63DAF-8483-4772-8E79-3D69D8477DE4" or with braces, into the mixed
 * endian bytes of GPT (first three groups little endian).  0 or -1. */
int
partitioning_table_parse_guid(const char *s, unsigned char *out)
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
    out[i] = (unsigned char)(table_hex(s[order[i]]) << 4 |
                             table_hex(s[order[i] + 1]));
  return 0;
}

void
partitioning_table_random_guid(unsigned char *g)
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
table_add(struct partitioning_state *st, uint64_t len,
          enum partitioning_kind kind, size_t file, const unsigned char *data)
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
table_region_of(const struct partitioning_state *st, size_t i, int ebr)
{
  size_t j;

  for (j = 0; j < st->nr; j++)
    if (ebr ? st->r[j].data == st->ebr + (i - 3) * PART_SECTOR
        : st->r[j].kind == REG_FILE && st->r[j].file == i)
      return &st->r[j];
  abort();
}

static void
table_mbr_entry(unsigned char *out, uint64_t start, uint64_t len, int boot,
                uint8_t id)
{
  static const unsigned char chs[3] = { 254, (1023 & 0x300) >> 2 | 63,
                                        1023 & 0xff };   /* "too large" */

  out[0] = boot ? 0x80 : 0;
  memcpy(out + 1, chs, 3);
  out[4] = id;
  memcpy(out + 5, chs, 3);
  table_le32(out + 8, (uint32_t)(start / PART_SECTOR));
  table_le32(out + 12, (uint32_t)((len + PART_SECTOR - 1) / PART_SECTOR));
}

static void
table_mbr(struct partitioning_state *st)
{
  const struct partitioning_region *r, *e, *e0, *en, *rn;
  unsigned char *mbr = st->primary, *ebr;
  size_t i, nprim = st->nf > 4 ? 3 : st->nf;

  mbr[0x1fe] = 0x55;
  mbr[0x1ff] = 0xaa;
  for (i = 0; i < nprim; i++) {
    r = table_region_of(st, i, 0);
    table_mbr_entry(mbr + 0x1be + 16 * i, r->start, r->len, i == 0,
                    st->mbr_id);
  }
  if (st->nf <= 4)
    return;
  /* Partition 4: extended, from the first EBR to the end of the disk;
   * EBR offsets are relative to their own sector (the partition) or to
   * the extended partition's start (the next EBR). */
  e0 = table_region_of(st, 3, 1);
  table_mbr_entry(mbr + 0x1ee, e0->start, st->size - e0->start, 0, 0x0f);
  for (i = 3; i < st->nf; i++) {
    e = table_region_of(st, i, 1);
    r = table_region_of(st, i, 0);
    ebr = st->ebr + (i - 3) * PART_SECTOR;
    ebr[0x1fe] = 0x55;
    ebr[0x1ff] = 0xaa;
    table_mbr_entry(ebr + 0x1be, r->start - e->start, r->len, 0,
                    st->mbr_id);
    if (i + 1 < st->nf) {
      en = table_region_of(st, i + 1, 1);
      rn = table_region_of(st, i + 1, 0);
      table_mbr_entry(ebr + 0x1ce, en->start - e0->start,
                      rn->start + rn->len - en->start, 0, 0x0f);
    }
  }
}

static void
table_gpt_entries(struct partitioning_state *st, unsigned char *out,
                  char *const *names)
{
  const struct partitioning_region *r;
  size_t i, k, len;

  for (i = 0; i < st->nf; i++, out += PART_GPT_ENTRY) {
    r = table_region_of(st, i, 0);
    memcpy(out, st->type_guid, 16);
    memcpy(out + 16, st->f[i].guid, 16);
    table_le64(out + 32, r->start / PART_SECTOR);
    table_le64(out + 40, (r->start + r->len - 1) / PART_SECTOR);
    table_le64(out + 48, i == 0 ? 4 : 0);  /* legacy BIOS bootable */
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
table_gpt_header(const struct partitioning_state *st, unsigned char *h,
                 const unsigned char *pta, int primary,
                 const unsigned char *disk_guid)
{
  uint64_t lbas = st->size / PART_SECTOR;

  static const unsigned char sig[8] = { 'E', 'F', 'I', ' ',
                                        'P', 'A', 'R', 'T' };
  static const unsigned char rev[4] = { 0, 0, 1, 0 };  /* revision 1.0 */

  memcpy(h, sig, sizeof sig);
  memcpy(h + 8, rev, sizeof rev);
  table_le32(h + 12, PART_GPT_HDR);
  table_le64(h + 24, primary ? 1 : lbas - 1);
  table_le64(h + 32, primary ? lbas - 1 : 1);
  table_le64(h + 40, 2 + st->pta_lbas);
  table_le64(h + 48, lbas - st->pta_lbas - 2);
  memcpy(h + 56, disk_guid, 16);
  table_le64(h + 72, primary ? 2 : lbas - st->pta_lbas - 1);
  table_le32(h + 80, st->pta_entries);
  table_le32(h + 84, PART_GPT_ENTRY);
  table_le32(h + 88, table_crc32(pta, (size_t)st->pta_entries *
                                 PART_GPT_ENTRY));
  table_le32(h + 16, table_crc32(h, PART_GPT_HDR)); /* last */
}

static void
table_gpt(struct partitioning_state *st, char *const *names)
{
  unsigned char *pta = st->primary + 2 * PART_SECTOR, disk_guid[16];
  uint64_t end = st->size - 1;
  size_t ptalen = (size_t)st->pta_lbas * PART_SECTOR;

  /* Protective MBR: type 0xee over the disk, or what MBR can say. */
  if (end > (uint64_t)UINT32_MAX * PART_SECTOR)
    end = (uint64_t)UINT32_MAX * PART_SECTOR;
  table_mbr_entry(st->primary + 0x1be, PART_SECTOR, end - PART_SECTOR + 1, 0,
                  0xee);
  st->primary[0x1fe] = 0x55;
  st->primary[0x1ff] = 0xaa;
  table_gpt_entries(st, pta, names);
  memcpy(st->secondary, pta, ptalen);
  partitioning_table_random_guid(disk_guid);
  table_gpt_header(st, st->primary + PART_SECTOR, pta, 1, disk_guid);
  table_gpt_header(st, st->secondary + ptalen, pta, 0, disk_guid);
}

int
partitioning_table_layout(struct partitioning_state *st, uint64_t align)
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
  if (table_add(st, st->type == PART_GPT ?
                (2 + (uint64_t)st->pta_lbas) * PART_SECTOR : PART_SECTOR,
                REG_DATA, 0, st->primary) == -1)
    return -1;
  for (i = 0; i < st->nf; i++) {
    if (st->type == PART_MBR && st->nf > 4 && i >= 3 &&
        table_add(st, PART_SECTOR, REG_DATA, 0,
                  st->ebr + (i - 3) * PART_SECTOR) == -1)
      return -1;
    if ((pad = (align - st->size % align) % align) != 0 &&
        table_add(st, pad, REG_ZERO, 0, NULL) == -1)
      return -1;
    if (table_add(st, st->f[i].size, REG_FILE, i, NULL) == -1)
      return -1;
    if ((pad = (PART_SECTOR - st->size % PART_SECTOR) % PART_SECTOR) != 0 &&
        table_add(st, pad, REG_ZERO, 0, NULL) == -1)
      return -1;
  }
  if (st->type == PART_GPT &&
      table_add(st, (1 + (uint64_t)st->pta_lbas) * PART_SECTOR, REG_DATA, 0,
                st->secondary) == -1)
    return -1;
  return 0;
}

void
partitioning_table_fill(struct partitioning_state *st, char *const *names)
{
  if (st->type == PART_MBR)
    table_mbr(st);
  else
    table_gpt(st, names);
}
