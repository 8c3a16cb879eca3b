/* nbdstack filter partition: the partition table reader, apart from the
 * filter so that unit tests and the fuzzer can call it on plain bytes.
 *
 * partition_find reads an MBR (primary partitions 1-4, logical ones from 5
 * through the EBR chain of the first extended partition) or a GPT (behind
 * a protective MBR) with 512-byte sectors, as nbdkit's partition filter
 * does.  It reads only through the callback, never outside [0, disk_size),
 * and never more than PARTITION_MAX_READS times.  It does not check GPT
 * CRCs or the backup GPT, and knows no other table format.
 */
#ifndef NBDSTACK_PARTITION_TABLE_H
#define NBDSTACK_PARTITION_TABLE_H

#include <stddef.h>
#include <stdint.h>

#define PARTITION_SECTOR   512u
/* Highest partition number: a GPT of more entries is refused, and an EBR
 * chain is never followed further than this. */
#define PARTITION_MAX      128u
/* LBA 0, LBA 1 and one GPT entry, or LBA 0 and one EBR per logical
 * partition up to PARTITION_MAX. */
#define PARTITION_MAX_READS (PARTITION_MAX + 2u)

/* Reads count bytes at offset into buf; returns 0 or a negative errno. */
typedef int (*partition_read_fn)(void *opaque, void *buf, uint32_t count,
                                 uint64_t offset);

/* Finds partition partnum (1-based) of a disk of disk_size bytes.  On
 * success returns 0 with *offset and *length set: both are multiples of
 * 512, *length is at least 512 and offset + length <= disk_size.
 * Otherwise returns a negative errno (a failed read's, or -EINVAL when the
 * partition is missing, unused or invalid) with a one-line message naming
 * the partition in err ("partition 3 not found: ..."). */
int partition_find(partition_read_fn read_fn, void *opaque,
                   uint64_t disk_size, unsigned partnum, uint64_t *offset,
                   uint64_t *length, char *err, size_t errlen);

#endif
