/* nbdstack backend partitioning: the disk's regions and tables (table.c).
 *
 * struct partitioning_state is the whole disk: the opened files (filled by
 * partitioning.c), the regions that cut the disk into tables, padding and
 * files (filled by partitioning_table_layout), and the table bytes the
 * regions point at (filled by partitioning_table_fill).  partitioning.c
 * serves requests by walking the regions; this module knows nothing of
 * NBD, keys or descriptors.
 */
#ifndef NBDSTACK_PARTITIONING_TABLE_H
#define NBDSTACK_PARTITIONING_TABLE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define PART_SECTOR      512u
#define PART_MAX_ALIGN   (2048u * PART_SECTOR)           /* nbdkit's 1M */
/* nbdkit's limit: 2^32 sectors, less room for padding. */
#define PART_MAX_MBR     ((uint64_t)UINT32_MAX * PART_SECTOR - \
                          5u * PART_MAX_ALIGN)

enum { PART_MBR, PART_GPT };

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

/* "0FC63DAF-8483-4772-8E79-3D69D8477DE4" or with braces, into the mixed
 * endian bytes of GPT (first three groups little endian).  0 or -1. */
int partitioning_table_parse_guid(const char *s, unsigned char *out);
/* A random (version 4) GUID, in GPT's byte order. */
void partitioning_table_random_guid(unsigned char *g);

/* With st->f, st->nf and st->type set: allocates the tables (zeroed) and
 * cuts the disk into regions, each file starting on a multiple of align;
 * sets st->r, st->nr and st->size.  0, or -1 when out of memory. */
int partitioning_table_layout(struct partitioning_state *st, uint64_t align);
/* After partitioning_table_layout: writes the MBR and EBRs, or the
 * protective MBR and both GPTs (names[i]: partition i's GPT name). */
void partitioning_table_fill(struct partitioning_state *st,
                             char *const *names);

#endif
