/* Unit tests for filters/partition/ (table.c and partition.c).
 *
 * The table reader (partition_find) on disks built in a buffer: MBR primary
 * partitions, logical partitions through an EBR chain, GPT entries, and
 * every refusal (unused, missing, past the end, EBR loops and chains that
 * leave the disk, absurd GPT headers, failed reads).  The buffer's read
 * callback fails the test on any read outside the disk.  Then the filter
 * over the recording backend: size, every datapath method shifted by the
 * partition's start, extents shifted back, block sizes, open failures.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "partition/table.h"

#define KIB 1024ull
#define MIB (1024 * KIB)
#define SECT 512ull

/* ---- building disks ------------------------------------------------------------ */

static void
part_le32(unsigned char *p, uint32_t v)
{
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

static void
part_le64(unsigned char *p, uint64_t v)
{
  part_le32(p, (uint32_t)v);
  part_le32(p + 4, (uint32_t)(v >> 32));
}

/* One slot of the MBR or EBR in sector lba; sets the boot signature. */
static void
part_slot(unsigned char *disk, uint64_t lba, unsigned slot, uint8_t type,
          uint32_t start, uint32_t count)
{
  unsigned char *s = disk + lba * SECT;
  unsigned char *p = s + 0x1be + 16 * slot;

  p[4] = type;
  part_le32(p + 8, start);
  part_le32(p + 12, count);
  s[510] = 0x55;
  s[511] = 0xaa;
}

/* An EBR at lba: its partition (start relative to the EBR) and the link
 * to the next EBR (start relative to the extended partition; 0 = none). */
static void
part_ebr(unsigned char *disk, uint64_t lba, uint32_t start, uint32_t count,
         uint32_t next, uint32_t next_count)
{
  part_slot(disk, lba, 0, 0x83, start, count);
  if (next_count)
    part_slot(disk, lba, 1, 0x05, next, next_count);
}

/* A protective MBR and a GPT header at LBA 1 with its entries at table. */
static void
part_gpt(unsigned char *disk, uint64_t sectors, uint64_t table,
         uint32_t count, uint32_t size)
{
  unsigned char *h = disk + SECT;

  part_slot(disk, 0, 0, 0xee, 1,
            sectors - 1 > 0xffffffff ? 0xffffffff : (uint32_t)(sectors - 1));
  memcpy(h, "EFI PART", 8);
  part_le32(h + 8, 0x00010000);
  part_le32(h + 12, 92);
  part_le64(h + 24, 1);
  part_le64(h + 32, sectors - 1);
  part_le64(h + 40, 34);
  part_le64(h + 48, sectors - 34);
  part_le64(h + 72, table);
  part_le32(h + 80, count);
  part_le32(h + 84, size);
}

/* GPT entry i (from 0); a type of 0 leaves it unused. */
static void
part_gpt_entry(unsigned char *disk, uint64_t table, uint32_t size,
               unsigned i, uint8_t type, uint64_t first, uint64_t last)
{
  unsigned char *e = disk + table * SECT + (uint64_t)i * size;

  memset(e, 0, 16);
  e[0] = type;
  e[15] = type;
  e[16] = (unsigned char)(i + 1);     /* unique GUID */
  part_le64(e + 32, first);
  part_le64(e + 40, last);
}

/* ---- partition_find on a buffer --------------------------------------------- */

/* A disk of size bytes whose first len bytes are disk[]; the rest reads
 * as zeros. */
static struct {
  unsigned char *data;
  size_t len;
  uint64_t size;
  unsigned reads;
  int fail;                       /* nonzero: every read returns this */
} part_t;

static char part_err[256];
static uint64_t part_off, part_len;

static int
part_read(void *opaque, void *buf, uint32_t count, uint64_t offset)
{
  ck_assert_ptr_eq(opaque, &part_t);
  ck_assert_msg(offset <= part_t.size && count <= part_t.size - offset,
                "read %u bytes at %llu, past the end of a %llu-byte disk",
                count, (unsigned long long)offset,
                (unsigned long long)part_t.size);
  part_t.reads++;
  if (part_t.fail)
    return part_t.fail;
  memset(buf, 0, count);
  if (offset < part_t.len)
    memcpy(buf, part_t.data + offset,
           part_t.len - offset < count ? part_t.len - offset : count);
  return 0;
}

static void
part_setup(void)
{
  memset(&part_t, 0, sizeof part_t);
  part_t.len = 8 * MIB;
  part_t.size = 8 * MIB;
  part_t.data = calloc(1, part_t.len);
  ck_assert_ptr_nonnull(part_t.data);
  part_err[0] = '\0';
  part_off = part_len = 0xdeadbeef;
}

static void
part_teardown(void)
{
  free(part_t.data);
  part_t.data = NULL;
}

static int
part_find(unsigned partnum)
{
  part_off = part_len = 0xdeadbeef;
  return partition_find(part_read, &part_t, part_t.size, partnum, &part_off,
                        &part_len, part_err, sizeof part_err);
}

static void
part_assert_found(unsigned partnum, uint64_t lba, uint64_t sectors)
{
  int r = part_find(partnum);

  ck_assert_msg(r == 0, "partition %u: %d %s", partnum, r, part_err);
  ck_assert_uint_eq(part_off, lba * SECT);
  ck_assert_uint_eq(part_len, sectors * SECT);
}

static void
part_assert_refused(unsigned partnum, const char *want)
{
  int r = part_find(partnum);

  ck_assert_msg(r == -EINVAL, "partition %u: expected -EINVAL, got %d "
                "(offset %llu)", partnum, r, (unsigned long long)part_off);
  ck_assert_msg(strstr(part_err, want) != NULL, "error '%s' lacks '%s'",
                part_err, want);
  ck_assert_uint_eq(part_off, 0xdeadbeef);    /* outputs left alone */
}

/* ---- MBR primary partitions ---- */

static void
part_four_primaries(void)
{
  part_slot(part_t.data, 0, 0, 0x83, 2048, 2048);
  part_slot(part_t.data, 0, 1, 0x07, 4096, 1024);
  part_slot(part_t.data, 0, 2, 0x0c, 8192, 100);
  part_slot(part_t.data, 0, 3, 0x82, 10000, 6384);  /* ends at the end */
}

START_TEST(test_mbr_primary_partitions)
{
  part_four_primaries();
  part_assert_found(1, 2048, 2048);
  part_assert_found(2, 4096, 1024);
  part_assert_found(3, 8192, 100);
  part_assert_found(4, 10000, 6384);
  ck_assert_uint_le(part_t.reads, 4);
}
END_TEST

START_TEST(test_mbr_empty_slot_is_unused)
{
  part_four_primaries();
  part_slot(part_t.data, 0, 1, 0, 0, 0);
  part_assert_refused(2, "partition 2 is unused");
  /* A type without sectors is empty too. */
  part_slot(part_t.data, 0, 2, 0x83, 8192, 0);
  part_assert_refused(3, "partition 3 is unused");
  part_slot(part_t.data, 0, 3, 0, 8192, 100);
  part_assert_refused(4, "partition 4 is unused");
}
END_TEST

START_TEST(test_mbr_extended_is_not_served)
{
  part_slot(part_t.data, 0, 0, 0x0f, 2048, 4096);
  part_assert_refused(1, "partition 1 is an extended partition");
}
END_TEST

START_TEST(test_mbr_partition_past_end)
{
  part_four_primaries();
  part_slot(part_t.data, 0, 1, 0x83, 16000, 385);
  part_assert_refused(2, "partition 2 extends beyond the end of the disk "
                      "(LBA 16000-16384, the disk has 16384 sectors)");
}
END_TEST

/* start + count > 2^32 and * 512 > 2^41: no 32-bit wrap brings it back. */
START_TEST(test_mbr_largest_values_do_not_wrap)
{
  part_slot(part_t.data, 0, 0, 0x83, 0xffffffff, 0xffffffff);
  part_assert_refused(1, "extends beyond the end of the disk");
  part_slot(part_t.data, 0, 0, 0x83, 1, 0xffffffff);
  part_assert_refused(1, "extends beyond the end of the disk");
}
END_TEST

/* A partition ending in the disk's last partial sector cannot be read. */
START_TEST(test_mbr_partial_last_sector_is_outside)
{
  part_t.size = 8 * MIB + 511;
  part_slot(part_t.data, 0, 0, 0x83, 2048, 14337);
  part_assert_refused(1, "extends beyond the end of the disk");
  part_slot(part_t.data, 0, 0, 0x83, 2048, 14336);
  part_assert_found(1, 2048, 14336);
}
END_TEST

START_TEST(test_no_boot_signature)
{
  part_four_primaries();
  part_t.data[511] = 0;
  part_assert_refused(1, "partition 1 not found: the disk has no MBR or GPT "
                      "partition table");
}
END_TEST

START_TEST(test_disk_too_small)
{
  part_four_primaries();
  part_t.size = 511;
  part_assert_refused(1, "partition 1 not found: the disk (511 bytes) is "
                      "too small");
  ck_assert_uint_eq(part_t.reads, 0);
  part_t.size = 0;
  part_assert_refused(1, "too small");
}
END_TEST

START_TEST(test_partition_number_out_of_range)
{
  part_four_primaries();
  part_assert_refused(0, "partition 0 is out of range");
  part_assert_refused(129, "partition 129 is out of range (partitions are "
                      "numbered 1-128)");
  ck_assert_uint_eq(part_t.reads, 0);
}
END_TEST

START_TEST(test_read_error_is_returned)
{
  part_four_primaries();
  part_t.fail = -EIO;
  ck_assert_int_eq(part_find(1), -EIO);
  ck_assert_str_eq(part_err, "partition 1: cannot read the MBR at byte 0: "
                   "Input/output error");
  part_t.fail = 5;                /* not an errno: still an error */
  ck_assert_int_eq(part_find(1), -EIO);
}
END_TEST

/* ---- MBR logical partitions ---- */

/* Extended partition 2 at LBA 4096, 8192 sectors; EBRs at 4096, 6144 and
 * 8192 describe partitions 5, 6 and 7. */
static void
part_logicals(void)
{
  part_slot(part_t.data, 0, 0, 0x83, 2048, 2048);
  part_slot(part_t.data, 0, 1, 0x05, 4096, 8192);
  part_ebr(part_t.data, 4096, 63, 1000, 2048, 2048);
  part_ebr(part_t.data, 6144, 63, 1500, 4096, 1024);
  part_ebr(part_t.data, 8192, 2048, 500, 0, 0);
}

START_TEST(test_logical_partitions_through_ebr_chain)
{
  part_logicals();
  part_assert_found(5, 4096 + 63, 1000);
  part_assert_found(6, 6144 + 63, 1500);
  part_assert_found(7, 8192 + 2048, 500);
  part_assert_found(1, 2048, 2048);
  part_assert_refused(2, "partition 2 is an extended partition");
}
END_TEST

START_TEST(test_logical_past_chain_end_not_found)
{
  part_logicals();
  part_assert_refused(8, "partition 8 not found (the EBR chain ends at "
                      "partition 7)");
  part_assert_refused(128, "partition 128 not found (the EBR chain ends at "
                      "partition 7)");
}
END_TEST

START_TEST(test_other_extended_types)
{
  part_logicals();
  part_slot(part_t.data, 0, 1, 0x0f, 4096, 8192);
  part_assert_found(6, 6144 + 63, 1500);
  part_slot(part_t.data, 0, 1, 0x85, 4096, 8192);
  part_assert_found(7, 8192 + 2048, 500);
}
END_TEST

START_TEST(test_logical_without_extended_partition)
{
  part_four_primaries();
  part_assert_refused(5, "partition 5 not found: the MBR has no extended "
                      "partition");
}
END_TEST

START_TEST(test_ebr_loop_refused)
{
  part_logicals();
  /* the EBR of 7 links back to the EBR of 5 */
  part_slot(part_t.data, 8192, 1, 0x05, 0, 2048);
  part_assert_found(7, 8192 + 2048, 500);
  part_assert_refused(8, "partition 8 not found: invalid EBR chain: it "
                      "loops back to LBA 4096 (the EBR of partition 5)");
  part_assert_refused(128, "loops back to LBA 4096");
  ck_assert_uint_le(part_t.reads, 2 * PARTITION_MAX_READS);
}
END_TEST

START_TEST(test_ebr_linking_to_itself_refused)
{
  part_logicals();
  part_slot(part_t.data, 4096, 1, 0x05, 0, 2048);
  part_assert_refused(6, "partition 6 not found: invalid EBR chain: it "
                      "loops back to LBA 4096 (the EBR of partition 5)");
}
END_TEST

/* Linux accepts EBRs in any order; only a loop is refused. */
START_TEST(test_ebr_chain_backwards_accepted)
{
  part_slot(part_t.data, 0, 0, 0x05, 2048, 8192);
  part_ebr(part_t.data, 2048, 6000, 100, 4000, 2048);
  part_ebr(part_t.data, 6048, 1, 100, 1000, 2048);
  part_ebr(part_t.data, 3048, 1, 100, 0, 0);
  part_assert_found(5, 8048, 100);
  part_assert_found(6, 6049, 100);
  part_assert_found(7, 3049, 100);
}
END_TEST

START_TEST(test_ebr_chain_off_the_disk_refused)
{
  /* The extended partition claims more than the disk has; the link points
   * past the disk's end, inside the claimed extended partition. */
  part_slot(part_t.data, 0, 0, 0x05, 2048, 0xfffff000);
  part_ebr(part_t.data, 2048, 63, 100, 0x7ffff000, 2048);
  part_assert_found(5, 2048 + 63, 100);
  part_assert_refused(6, "partition 6 not found: invalid EBR chain: the EBR "
                      "of partition 6 (LBA 2147481600) is outside the "
                      "extended partition or the disk");
}
END_TEST

START_TEST(test_ebr_chain_leaving_extended_refused)
{
  part_logicals();
  part_slot(part_t.data, 6144, 1, 0x05, 8192, 100);   /* LBA 12288: past it */
  part_assert_refused(7, "partition 7 not found: invalid EBR chain: the EBR "
                      "of partition 7 (LBA 12288) is outside the extended "
                      "partition");
}
END_TEST

START_TEST(test_extended_at_lba_0_refused)
{
  part_slot(part_t.data, 0, 0, 0x05, 0, 8192);
  part_slot(part_t.data, 0, 1, 0x83, 1, 100);
  part_assert_refused(5, "partition 5 not found: invalid EBR chain");
}
END_TEST

START_TEST(test_ebr_without_signature_refused)
{
  part_logicals();
  part_t.data[6144 * SECT + 510] = 0;
  part_assert_found(5, 4096 + 63, 1000);
  part_assert_refused(6, "partition 6 not found: invalid EBR chain: no boot "
                      "signature in the EBR of partition 6 (LBA 6144)");
}
END_TEST

START_TEST(test_logical_unused_or_invalid)
{
  part_logicals();
  part_slot(part_t.data, 6144, 0, 0, 0, 0);
  part_assert_refused(6, "partition 6 is unused");
  part_slot(part_t.data, 6144, 0, 0x83, 0, 100);
  part_assert_refused(6, "partition 6 is invalid: it starts at its own EBR "
                      "(LBA 6144)");
  part_slot(part_t.data, 6144, 0, 0x83, 63, 8000);
  part_assert_refused(6, "partition 6 is invalid: it ends at LBA 14206, "
                      "past its extended partition (LBA 4096-12287)");
  part_slot(part_t.data, 6144, 0, 0x83, 63, 0xffffffff);
  part_assert_refused(6, "partition 6 extends beyond the end of the disk");
}
END_TEST

/* 124 logical partitions, one EBR each: the deepest number there is. */
START_TEST(test_longest_ebr_chain)
{
  unsigned i;

  part_slot(part_t.data, 0, 0, 0x05, 2048, 124 * 16);
  for (i = 0; i < 124; i++)
    part_ebr(part_t.data, 2048 + 16 * i, 1, 15, 16 * (i + 1),
             i == 123 ? 0 : 16);
  part_assert_found(128, 2048 + 16 * 123 + 1, 15);
  ck_assert_uint_eq(part_t.reads, 125);
  part_assert_found(64, 2048 + 16 * 59 + 1, 15);
}
END_TEST

/* ---- GPT ---- */

/* 128 entries of 128 bytes at LBA 2: 1 and 3 used, 2 unused. */
static void
part_gpt_standard(void)
{
  part_gpt(part_t.data, 16384, 2, 128, 128);
  part_gpt_entry(part_t.data, 2, 128, 0, 0xaf, 2048, 4095);
  part_gpt_entry(part_t.data, 2, 128, 2, 0x0f, 8192, 16350);
}

START_TEST(test_gpt_entries)
{
  part_gpt_standard();
  part_assert_found(1, 2048, 2048);
  part_assert_found(3, 8192, 8159);
  part_assert_refused(2, "partition 2 is unused (its GPT entry has no type)");
  part_assert_refused(128, "partition 128 is unused");
}
END_TEST

START_TEST(test_gpt_respects_entry_count)
{
  part_gpt(part_t.data, 16384, 2, 4, 128);
  part_gpt_entry(part_t.data, 2, 128, 3, 0xaf, 2048, 4095);
  part_gpt_entry(part_t.data, 2, 128, 4, 0xaf, 4096, 5000);  /* beyond */
  part_assert_found(4, 2048, 2048);
  part_assert_refused(5, "partition 5 not found (the GPT has 4 partition "
                      "entries)");
  part_gpt(part_t.data, 16384, 2, 0, 128);
  part_assert_refused(1, "partition 1 not found (the GPT has 0 partition "
                      "entries)");
}
END_TEST

START_TEST(test_gpt_respects_entry_size_and_table_lba)
{
  part_gpt(part_t.data, 16384, 10, 16, 512);
  part_gpt_entry(part_t.data, 10, 512, 0, 0xaf, 100, 199);
  part_gpt_entry(part_t.data, 10, 512, 5, 0xaf, 300, 399);
  part_assert_found(1, 100, 100);
  part_assert_found(6, 300, 100);
  part_assert_refused(2, "partition 2 is unused");
}
END_TEST

START_TEST(test_gpt_absurd_entry_count_refused)
{
  part_gpt_standard();
  part_gpt(part_t.data, 16384, 2, 129, 128);
  part_assert_refused(1, "partition 1 not found: invalid GPT header: 129 "
                      "partition entries (at most 128)");
  part_gpt(part_t.data, 16384, 2, 0xffffffff, 128);
  part_assert_refused(1, "4294967295 partition entries");
}
END_TEST

START_TEST(test_gpt_absurd_entry_size_refused)
{
  static const uint32_t bad[] = { 0, 64, 127, 129, 192, 8192, 0x80000000,
                                  0xffffffff };
  size_t i;

  part_gpt_standard();
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    part_gpt(part_t.data, 16384, 2, 128, bad[i]);
    part_assert_refused(1, "invalid GPT header: partition entry size");
  }
}
END_TEST

START_TEST(test_gpt_table_outside_disk_refused)
{
  static const uint64_t bad[] = { 0, 1, 16384, 16353, 1ull << 55,
                                  UINT64_MAX };
  size_t i;

  part_gpt_standard();
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    part_gpt(part_t.data, 16384, bad[i], 128, 128);
    part_assert_refused(1, "invalid GPT header: the partition entries");
  }
  /* 128 entries of 4096 bytes need 1024 sectors. */
  part_gpt(part_t.data, 16384, 15361, 128, 4096);
  part_assert_refused(1, "are not inside the disk");
  part_gpt(part_t.data, 16384, 15360, 128, 4096);
  part_assert_refused(1, "partition 1 is unused");
}
END_TEST

START_TEST(test_gpt_partition_past_end_refused)
{
  part_gpt_standard();
  part_gpt_entry(part_t.data, 2, 128, 1, 0xaf, 10000, 16384);
  part_assert_refused(2, "partition 2 extends beyond the end of the disk "
                      "(LBA 10000-16384, the disk has 16384 sectors)");
  part_gpt_entry(part_t.data, 2, 128, 1, 0xaf, 0, UINT64_MAX);
  part_assert_refused(2, "extends beyond the end of the disk");
  part_gpt_entry(part_t.data, 2, 128, 1, 0xaf, UINT64_MAX, UINT64_MAX);
  part_assert_refused(2, "extends beyond the end of the disk");
}
END_TEST

START_TEST(test_gpt_last_before_first_refused)
{
  part_gpt_standard();
  part_gpt_entry(part_t.data, 2, 128, 1, 0xaf, 5000, 4999);
  part_assert_refused(2, "partition 2 is invalid: it ends at LBA 4999 before "
                      "it starts at LBA 5000");
}
END_TEST

START_TEST(test_protective_mbr_without_gpt_header)
{
  part_gpt_standard();
  memcpy(part_t.data + SECT, "EFI PART", 7);
  part_t.data[SECT + 7] = 'X';
  part_assert_refused(1, "partition 1 not found: protective MBR, but no GPT "
                      "header");
  part_t.size = SECT;
  part_assert_refused(1, "too small for a GPT header");
}
END_TEST

/* Without the protective MBR, "EFI PART" is left over: the MBR counts. */
START_TEST(test_gpt_header_without_protective_mbr_is_mbr)
{
  part_gpt_standard();
  part_slot(part_t.data, 0, 0, 0x83, 4096, 1000);
  part_assert_found(1, 4096, 1000);
  part_assert_refused(3, "partition 3 is unused");
}
END_TEST

/* A hybrid MBR (0xEE beside other slots) is GPT, as in Linux. */
START_TEST(test_hybrid_mbr_is_gpt)
{
  part_gpt_standard();
  part_slot(part_t.data, 0, 1, 0x83, 4096, 1000);
  part_slot(part_t.data, 0, 0, 0x0c, 2048, 2048);
  part_slot(part_t.data, 0, 3, 0xee, 1, 2047);
  part_assert_found(3, 8192, 8159);
  part_assert_refused(2, "partition 2 is unused (its GPT entry");
}
END_TEST

/* Only the first len bytes are stored: a disk of 2^63-1 bytes. */
START_TEST(test_huge_disk_gpt)
{
  uint64_t sectors = (uint64_t)INT64_MAX / SECT;

  part_t.size = (uint64_t)INT64_MAX;
  part_t.len = 64 * KIB;
  part_gpt(part_t.data, sectors, 2, 128, 128);
  part_gpt_entry(part_t.data, 2, 128, 0, 0xaf, sectors - 1000, sectors - 1);
  part_gpt_entry(part_t.data, 2, 128, 1, 0xaf, 34, sectors);
  part_assert_found(1, sectors - 1000, 1000);
  part_assert_refused(2, "extends beyond the end of the disk");
}
END_TEST

/* ---- the filter over the recording backend -------------------------------- */

static struct testlib_caps part_caps;
static struct testlib_stack part_s;
static unsigned char part_buf[64 * KIB], part_want[64 * KIB];

static void
part_stack_setup(void)
{
  testlib_caps_default(&part_caps);
  part_caps.size = 8 * MIB;
}

static void
part_stack_teardown(void)
{
  testlib_stack_free(&part_s);
}

/* MBR: 1 at LBA 2048 (1 MiB, 2048 sectors), extended 2 at 4096 with
 * logical 5 at 4096+2048 (1000 sectors), 3 at LBA 63 (misaligned for
 * blocks over 512), 4 unused. */
static void
part_stack_table(unsigned char *disk)
{
  part_slot(disk, 0, 0, 0x83, 2048, 2048);
  part_slot(disk, 0, 1, 0x05, 4096, 8192);
  part_ebr(disk, 4096, 2048, 1000, 0, 0);
  part_slot(disk, 0, 2, 0x83, 63, 1985);
}

/* A stack over a disk with part_stack_table, not yet opened. */
static void
part_stack_new(const char *filters)
{
  ck_assert_msg(testlib_stack_new(&part_s, filters, &part_caps) == 0,
                "stack: %s", part_s.err);
  part_stack_table(part_s.rec->ram);
}

static struct nbd_ctx *
part_open(const char *filters)
{
  part_stack_new(filters);
  ck_assert_msg(testlib_stack_open(&part_s, 0) == 0, "open: %s", part_s.err);
  return part_s.top;
}

static void
part_assert_open_fails(const char *want)
{
  char *log;
  int r;

  testlib_stderr_begin();
  r = testlib_stack_open(&part_s, 0);
  log = testlib_stderr_end();
  ck_assert_int_eq(r, -1);
  ck_assert_msg(strstr(log, want) != NULL, "log '%s' lacks '%s'", log, want);
  ck_assert_msg(strstr(part_s.err, "partition: prepare failed") != NULL,
                "open error: %s", part_s.err);
  free(log);
}

START_TEST(test_filter_size_is_partition_length)
{
  ck_assert_int_eq(next_get_size(part_open("partition partition=1")),
                   (int64_t)MIB);
  testlib_stack_free(&part_s);
  ck_assert_int_eq(next_get_size(part_open("partition partition=5")),
                   1000 * 512);
}
END_TEST

START_TEST(test_filter_pread_reads_at_partition_start)
{
  struct nbd_ctx *top = part_open("partition partition=1");

  testlib_pattern(part_s.rec->ram + MIB, 64 * KIB, MIB);
  ck_assert_int_eq(next_pread(top, part_buf, 4096, 8192, 0), 0);
  ck_assert_str_eq(testlib_log(), "pread 1056768+4096 flags=0");
  testlib_pattern(part_want, 4096, MIB + 8192);
  ck_assert_mem_eq(part_buf, part_want, 4096);
}
END_TEST

START_TEST(test_filter_pwrite_lands_at_partition_start)
{
  struct nbd_ctx *top = part_open("partition partition=5");
  uint64_t start = (4096 + 2048) * SECT;

  testlib_pattern(part_buf, 4096, 0);
  ck_assert_int_eq(next_pwrite(top, part_buf, 4096, 1000 * 512 - 4096,
                               NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 3653632+4096 flags=FUA");
  ck_assert_mem_eq(part_s.rec->ram + start + 1000 * 512 - 4096, part_buf,
                   4096);
  ck_assert(nbd_is_zero(part_s.rec->ram + start, 1000 * 512 - 4096));
  ck_assert(nbd_is_zero(part_s.rec->ram + start + 1000 * 512, 4096));
}
END_TEST

START_TEST(test_filter_trim_zero_cache_flush)
{
  struct nbd_ctx *top = part_open("partition partition=1");

  ck_assert_int_eq(next_trim(top, 4096, 0, 0), 0);
  ck_assert_int_eq(next_zero(top, 8192, 4096, NBD_CMD_FLAG_FAST_ZERO), 0);
  ck_assert_int_eq(next_cache(top, 512, 512, 0), 0);
  ck_assert_int_eq(next_flush(top, 0), 0);
  ck_assert_str_eq(testlib_log(), "trim 1048576+4096 flags=0; "
                   "zero 1052672+8192 flags=FAST_ZERO; "
                   "cache 1049088+512 flags=0; flush");
}
END_TEST

START_TEST(test_filter_pwrite_from_lands_at_partition_start)
{
  struct nbd_ctx *top = part_open("partition partition=5");
  uint64_t start = (4096 + 2048) * SECT;
  struct testlib_source src;

  testlib_pattern(part_buf, 4096, 0);
  testlib_source_init(&src, part_buf, 4096, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 4096, 1000 * 512 - 4096,
                                    NBD_CMD_FLAG_FUA), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 3653632+4096 flags=FUA");
  ck_assert_mem_eq(part_s.rec->ram + start + 1000 * 512 - 4096, part_buf,
                   4096);
  /* Past the partition's end: refused, and the payload still taken. */
  testlib_source_init(&src, part_buf, 4096, SIZE_MAX);
  ck_assert_int_eq(next_pwrite_from(top, &src.src, 4096, 1000 * 512 - 2048,
                                    0), -ENOSPC);
  ck_assert_uint_eq(src.src.left, 0);
}
END_TEST

START_TEST(test_filter_request_past_partition_end_rejected)
{
  struct nbd_ctx *top = part_open("partition partition=1");

  ck_assert_int_eq(next_pread(top, part_buf, 4096, MIB - 2048, 0), -EINVAL);
  ck_assert_int_eq(next_pwrite(top, part_buf, 512, MIB, 0), -ENOSPC);
  ck_assert_str_eq(testlib_log(), "");
}
END_TEST

START_TEST(test_filter_extents_shifted_back)
{
  struct nbd_ctx *top = part_open("partition partition=1");
  struct nbd_extents *e = nbd_extents_new(0, 128 * KIB);

  testlib_recorder_map(part_s.rec, 0, MIB + 64 * KIB, 0);
  testlib_recorder_map(part_s.rec, MIB + 64 * KIB, 7 * MIB - 64 * KIB,
                       NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  ck_assert_int_eq(next_extents(top, 128 * KIB, 0, 0, e), 0);
  ck_assert_str_eq(testlib_log(), "extents 1048576+131072 flags=0");
  ck_assert_uint_eq(e->n, 2);
  ck_assert_uint_eq(e->v[0].offset, 0);
  ck_assert_uint_eq(e->v[0].length, 64 * KIB);
  ck_assert_uint_eq(e->v[0].type, 0);
  ck_assert_uint_eq(e->v[1].offset, 64 * KIB);
  ck_assert_uint_eq(e->v[1].length, 64 * KIB);
  ck_assert_uint_eq(e->v[1].type, NBD_EXTENT_HOLE | NBD_EXTENT_ZERO);
  nbd_extents_free(e);
}
END_TEST

START_TEST(test_filter_gpt_partition)
{
  struct nbd_ctx *top;

  ck_assert_int_eq(testlib_stack_new(&part_s, "partition partition=2",
                                     &part_caps), 0);
  part_gpt(part_s.rec->ram, 16384, 2, 128, 128);
  part_gpt_entry(part_s.rec->ram, 2, 128, 1, 0xaf, 4096, 6143);
  ck_assert_msg(testlib_stack_open(&part_s, 0) == 0, "%s", part_s.err);
  top = part_s.top;
  ck_assert_int_eq(next_get_size(top), (int64_t)MIB);
  memset(part_buf, 0x5a, 512);
  ck_assert_int_eq(next_pwrite(top, part_buf, 512, 0, 0), 0);
  ck_assert_str_eq(testlib_log(), "pwrite 2097152+512 flags=0");
  ck_assert_mem_eq(part_s.rec->ram + 2 * MIB, part_buf, 512);
}
END_TEST

START_TEST(test_filter_unused_partition_fails_open)
{
  part_stack_new("partition partition=4");
  part_assert_open_fails("export 'test': filter partition: partition 4 is "
                         "unused");
}
END_TEST

START_TEST(test_filter_missing_partition_fails_open)
{
  part_stack_new("partition partition=6");
  part_assert_open_fails("partition 6 not found");
}
END_TEST

START_TEST(test_filter_partition_past_end_fails_open)
{
  part_caps.size = MIB + 512 * KIB;
  ck_assert_int_eq(testlib_stack_new(&part_s, "partition partition=1",
                                     &part_caps), 0);
  part_slot(part_s.rec->ram, 0, 0, 0x83, 2048, 2048);
  part_assert_open_fails("partition 1 extends beyond the end of the disk");
}
END_TEST

START_TEST(test_filter_read_error_fails_open)
{
  part_stack_new("partition partition=1");
  part_s.rec->fail[NBD_METHOD_PREAD] = -EIO;
  part_assert_open_fails("partition 1: cannot read the MBR at byte 0: "
                         "Input/output error");
}
END_TEST

/* Each connection reads the table again. */
START_TEST(test_filter_table_read_per_connection)
{
  struct nbd_ctx *top = part_open("partition partition=1");

  ck_assert_int_eq(next_get_size(top), (int64_t)MIB);
  engine_close(top);
  part_s.top = NULL;
  part_slot(part_s.rec->ram, 0, 0, 0x83, 2048, 4096);
  ck_assert_int_eq(testlib_stack_open(&part_s, 0), 0);
  ck_assert_int_eq(next_get_size(part_s.top), (int64_t)(2 * MIB));
}
END_TEST

/* The table's 512-byte reads are rounded out to 4096 below; partition
 * 1 at 1 MiB stays aligned. */
START_TEST(test_filter_reads_table_through_large_minimum)
{
  struct nbd_ctx *top;
  uint32_t mn, pr, mx;

  part_caps.min_block = 4096;
  part_caps.pref_block = 64 * KIB;
  part_caps.max_block = 4096;
  top = part_open("partition partition=5");
  ck_assert_int_eq(next_get_size(top), 1000 * 512);
  ck_assert_int_eq(next_block_size(top, &mn, &pr, &mx), 0);
  ck_assert_uint_eq(mn, 4096);
  ck_assert_uint_eq(pr, 64 * KIB);    /* 3 MiB: aligned to 64K */
  ck_assert_uint_eq(mx, 4096);
}
END_TEST

START_TEST(test_filter_lowers_preferred_block_size)
{
  struct nbd_ctx *top;
  uint32_t mn, pr, mx;

  part_caps.min_block = 512;
  part_caps.pref_block = 64 * KIB;
  part_caps.max_block = 32 * MIB;
  top = part_open("partition partition=3");
  ck_assert_int_eq(next_block_size(top, &mn, &pr, &mx), 0);
  ck_assert_uint_eq(mn, 512);
  ck_assert_uint_eq(pr, 512);         /* LBA 63: 32256 = 512 * 63 */
  ck_assert_uint_eq(mx, 32 * MIB);
}
END_TEST

START_TEST(test_filter_misaligned_start_fails_open)
{
  part_caps.min_block = 4096;
  part_caps.pref_block = 4096;
  part_caps.max_block = 32 * MIB;
  part_stack_new("partition partition=3");
  part_assert_open_fails("partition 3 starts at byte 32256, not a multiple "
                         "of the underlying minimum block size 4096");
}
END_TEST

START_TEST(test_filter_misaligned_length_fails_open)
{
  part_caps.min_block = 4096;
  part_caps.pref_block = 4096;
  part_caps.max_block = 32 * MIB;
  part_stack_new("partition partition=5");
  part_slot(part_s.rec->ram, 4096, 0, 0x83, 2048, 1001);
  part_assert_open_fails("partition 5 is 512512 bytes, not a multiple of "
                         "the underlying minimum block size 4096 (its last "
                         "512 bytes could not be reached)");
}
END_TEST

START_TEST(test_filter_capabilities_pass_through)
{
  struct nbd_ctx *top;

  part_caps.can_trim = 0;
  part_caps.can_multi_conn = 1;
  part_caps.is_rotational = 1;
  top = part_open("partition partition=1");
  ck_assert_int_eq(next_can_write(top), 1);
  ck_assert_int_eq(next_can_trim(top), 0);
  ck_assert_int_eq(next_can_zero(top), NBD_ZERO_NATIVE);
  ck_assert_int_eq(next_can_fua(top), NBD_FUA_NATIVE);
  ck_assert_int_eq(next_can_multi_conn(top), 1);
  ck_assert_int_eq(next_is_rotational(top), 1);
}
END_TEST

START_TEST(test_filter_readonly)
{
  part_stack_new("partition partition=1");
  ck_assert_int_eq(testlib_stack_open(&part_s, 1), 0);
  ck_assert_int_eq(next_can_write(part_s.top), 0);
  ck_assert_int_eq(next_pwrite(part_s.top, part_buf, 512, 0, 0), -EPERM);
}
END_TEST

START_TEST(test_setup_checks_partition_number)
{
  ck_assert_int_eq(testlib_stack_new(&part_s, "partition partition=0",
                                     &part_caps), -1);
  ck_assert_str_eq(part_s.err, "filter partition: partition=0 is out of "
                   "range (partitions are numbered 1-128)");
  ck_assert_int_eq(testlib_stack_new(&part_s, "partition partition=129",
                                     &part_caps), -1);
  ck_assert_int_eq(testlib_stack_new(&part_s, "partition", &part_caps), -1);
  ck_assert_str_eq(part_s.err, "filter partition: missing required key "
                   "'partition'");
}
END_TEST

/* ---- suite ---------------------------------------------------------------------- */

static TCase *
part_tcase(Suite *s, const char *name, void (*setup)(void),
           void (*teardown)(void))
{
  TCase *tc = tcase_create(name);

  tcase_add_checked_fixture(tc, setup, teardown);
  suite_add_tcase(s, tc);
  return tc;
}

static Suite *
part_suite(void)
{
  Suite *s = suite_create("partition");
  TCase *tc;

  tc = part_tcase(s, "mbr", part_setup, part_teardown);
  tcase_add_test(tc, test_mbr_primary_partitions);
  tcase_add_test(tc, test_mbr_empty_slot_is_unused);
  tcase_add_test(tc, test_mbr_extended_is_not_served);
  tcase_add_test(tc, test_mbr_partition_past_end);
  tcase_add_test(tc, test_mbr_largest_values_do_not_wrap);
  tcase_add_test(tc, test_mbr_partial_last_sector_is_outside);
  tcase_add_test(tc, test_no_boot_signature);
  tcase_add_test(tc, test_disk_too_small);
  tcase_add_test(tc, test_partition_number_out_of_range);
  tcase_add_test(tc, test_read_error_is_returned);

  tc = part_tcase(s, "logical", part_setup, part_teardown);
  tcase_add_test(tc, test_logical_partitions_through_ebr_chain);
  tcase_add_test(tc, test_logical_past_chain_end_not_found);
  tcase_add_test(tc, test_other_extended_types);
  tcase_add_test(tc, test_logical_without_extended_partition);
  tcase_add_test(tc, test_ebr_loop_refused);
  tcase_add_test(tc, test_ebr_linking_to_itself_refused);
  tcase_add_test(tc, test_ebr_chain_backwards_accepted);
  tcase_add_test(tc, test_ebr_chain_off_the_disk_refused);
  tcase_add_test(tc, test_ebr_chain_leaving_extended_refused);
  tcase_add_test(tc, test_extended_at_lba_0_refused);
  tcase_add_test(tc, test_ebr_without_signature_refused);
  tcase_add_test(tc, test_logical_unused_or_invalid);
  tcase_add_test(tc, test_longest_ebr_chain);

  tc = part_tcase(s, "gpt", part_setup, part_teardown);
  tcase_add_test(tc, test_gpt_entries);
  tcase_add_test(tc, test_gpt_respects_entry_count);
  tcase_add_test(tc, test_gpt_respects_entry_size_and_table_lba);
  tcase_add_test(tc, test_gpt_absurd_entry_count_refused);
  tcase_add_test(tc, test_gpt_absurd_entry_size_refused);
  tcase_add_test(tc, test_gpt_table_outside_disk_refused);
  tcase_add_test(tc, test_gpt_partition_past_end_refused);
  tcase_add_test(tc, test_gpt_last_before_first_refused);
  tcase_add_test(tc, test_protective_mbr_without_gpt_header);
  tcase_add_test(tc, test_gpt_header_without_protective_mbr_is_mbr);
  tcase_add_test(tc, test_hybrid_mbr_is_gpt);
  tcase_add_test(tc, test_huge_disk_gpt);

  tc = part_tcase(s, "filter", part_stack_setup, part_stack_teardown);
  tcase_add_test(tc, test_filter_size_is_partition_length);
  tcase_add_test(tc, test_filter_pread_reads_at_partition_start);
  tcase_add_test(tc, test_filter_pwrite_lands_at_partition_start);
  tcase_add_test(tc, test_filter_pwrite_from_lands_at_partition_start);
  tcase_add_test(tc, test_filter_trim_zero_cache_flush);
  tcase_add_test(tc, test_filter_request_past_partition_end_rejected);
  tcase_add_test(tc, test_filter_extents_shifted_back);
  tcase_add_test(tc, test_filter_gpt_partition);
  tcase_add_test(tc, test_filter_unused_partition_fails_open);
  tcase_add_test(tc, test_filter_missing_partition_fails_open);
  tcase_add_test(tc, test_filter_partition_past_end_fails_open);
  tcase_add_test(tc, test_filter_read_error_fails_open);
  tcase_add_test(tc, test_filter_table_read_per_connection);
  tcase_add_test(tc, test_filter_reads_table_through_large_minimum);
  tcase_add_test(tc, test_filter_lowers_preferred_block_size);
  tcase_add_test(tc, test_filter_misaligned_start_fails_open);
  tcase_add_test(tc, test_filter_misaligned_length_fails_open);
  tcase_add_test(tc, test_filter_capabilities_pass_through);
  tcase_add_test(tc, test_filter_readonly);
  tcase_add_test(tc, test_setup_checks_partition_number);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(part_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
