#!/usr/bin/python3
"""mkpart.py IMAGE SIZE: a sparse image whose MBR holds one partition of
SIZE bytes (a multiple of 512) starting at 1 MiB: the disk the deep test
stack serves as partition 1.  Used by lib.sh and nbdtest.py."""

import struct
import sys


def make(path, size):
    if size % 512:
        raise ValueError("size %d is not a multiple of 512" % size)
    start = 2048                       # sectors: 1 MiB
    mbr = bytearray(512)
    # one primary partition: status, CHS (unused), type 0x83, CHS, LBA, count
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0x83,
                               b"\xfe\xff\xff", start, size // 512)
    mbr[510:512] = b"\x55\xaa"
    with open(path, "wb") as f:
        f.write(mbr)
        f.truncate(start * 512 + size + 1024 * 1024)


if __name__ == "__main__":
    make(sys.argv[1], int(sys.argv[2]))
