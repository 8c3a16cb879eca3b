/* nbdstack fuzzing: the partition table reader of the partition filter
 * (partition_find, filters/partition/table.c).
 *
 * The input is the first bytes of a disk; the rest of the disk reads as
 * zeros.  Each input is read as disks of several sizes (the input's own
 * length, a little more, 1 GiB and 2^63-1 bytes) for partitions 1-8 and one
 * number taken from the input (byte 0x1bc, otherwise unused in an MBR), so
 * that deep EBR chains are reached too.
 *
 * Beyond crashes and UB, it checks what the filter relies on: every read
 * lies inside the disk, a lookup makes at most PARTITION_MAX_READS reads,
 * a found partition is 512-aligned, not empty and inside the disk, and a
 * refusal leaves the outputs alone and says which partition it refused.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "partition/table.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_POISON UINT64_C(0x5a5a5a5a5a5a5a5a)

struct fuzz_disk {
  const uint8_t *data;
  size_t len;
  uint64_t size;
  unsigned reads;
};

static int
fuzz_read(void *opaque, void *buf, uint32_t count, uint64_t offset)
{
  struct fuzz_disk *d = opaque;

  if (offset > d->size || count > d->size - offset)
    abort();                    /* a read outside the disk */
  d->reads++;
  memset(buf, 0, count);
  if (offset < d->len)
    memcpy(buf, d->data + offset,
           d->len - offset < count ? d->len - offset : count);
  return 0;
}

static void
fuzz_one(const uint8_t *data, size_t len, uint64_t disk_size,
         unsigned partnum)
{
  struct fuzz_disk d = { data, len, disk_size, 0 };
  uint64_t offset = FUZZ_POISON, length = FUZZ_POISON;
  char err[256], want[32];
  int r;

  err[0] = '\0';
  r = partition_find(fuzz_read, &d, disk_size, partnum, &offset, &length,
                     err, sizeof err);
  if (d.reads > PARTITION_MAX_READS)
    abort();
  if (r == 0) {
    if (offset % 512 || length % 512 || length == 0 ||
        offset > disk_size || length > disk_size - offset)
      abort();
    return;
  }
  /* Reads never fail here, so every refusal is -EINVAL. */
  snprintf(want, sizeof want, "partition %u ", partnum);
  if (r != -EINVAL || offset != FUZZ_POISON || length != FUZZ_POISON ||
      strncmp(err, want, strlen(want)) != 0)
    abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  const uint64_t sizes[] = {
    size, (size + 511) / 512 * 512 + 4096, UINT64_C(1) << 30,
    (uint64_t)INT64_MAX,
  };
  size_t i;
  unsigned p;

  for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    for (p = 1; p <= 8; p++)
      fuzz_one(data, size, sizes[i], p);
    if (size > 0x1bc)
      fuzz_one(data, size, sizes[i], 1 + data[0x1bc] % PARTITION_MAX);
  }
  return 0;
}
