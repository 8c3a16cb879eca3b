#!/usr/bin/python3
"""The partitioning backend through real clients, next to nbdkit's.

Files of odd sizes become an MBR disk (3 files), an MBR disk with an
extended partition (5 files) and a GPT disk.  For each: nbdcopy the disk
to a file, `sfdisk -d` reads the table back with the same starts, sizes
and types as `nbdkit partitioning` (GUIDs are random in both), and our own
partition filter serving the copy returns the second input file (and the
fifth, a logical partition).  Writes reach the files; a write that changes
the table fails, one that writes it back unchanged succeeds.  Bad
alignment=, mbr-id=, type-guid= and partition-type= are refused at startup
with the accepted range.
"""

import os
import re
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("partitioning", "partition", "file")
if not shutil.which("sfdisk"):
    T.skip("sfdisk (fdisk package) is not installed")
T.start_watchdog()
C = Checker("test_partitioning")
D = T.TMPDIR
SIZES = [1000000, 3000000, 2 << 20, 5000, 700000]
FILES = [os.path.join(D, "p%d.img" % i) for i in range(len(SIZES))]


def make_files():
    for p, n in zip(FILES, SIZES):
        with open(p, "wb") as f:
            f.write(os.urandom(n))


def uri(sock):
    return "nbd+unix:///?socket=" + sock


def sfdisk_parts(img):
    out = subprocess.run(["sfdisk", "-d", img], capture_output=True,
                         text=True, check=True).stdout
    parts = []
    for line in out.splitlines():
        if " : " not in line:
            continue
        f = dict(re.findall(r"(\w+)=\s*([^,]+)", line.split(" : ", 1)[1]))
        parts.append((f.get("start"), f.get("size"), f.get("type"),
                      f.get("bootable") is not None or "attrs" in f))
    label = re.search(r"^label: (\w+)", out, re.M).group(1)
    return label, parts


def copy_of(args, name):
    s = Server(["partitioning"] + args)
    img = os.path.join(D, name)
    subprocess.run(["nbdcopy", uri(s.sock), img], check=True)
    s.stop()
    return img


def nbdkit_copy(args, name):
    img = os.path.join(D, name)
    subprocess.run(["nbdkit", "-U", "-", "partitioning"] + args +
                   ["--run", 'nbdcopy "$uri" ' + img], check=True)
    return img


def partition_reads(img, n, want):
    s = Server(["--filter", "partition", "file", "file=" + img,
                "partition=%d" % n])
    out = os.path.join(D, "part.out")
    subprocess.run(["nbdcopy", uri(s.sock), out], check=True)
    s.stop()
    with open(out, "rb") as f:
        got = f.read()
    with open(want, "rb") as f:
        w = f.read()
    check_eq(len(got), (len(w) + 511) // 512 * 512, "partition %d size" % n)
    check(got[:len(w)] == w, "partition %d equals %s" % (n, want))
    check(got[len(w):] == bytes(len(got) - len(w)), "sector padding is zero")


def layout_case(files, label, extra, parts_to_check):
    make_files()
    # nbdkit applies alignment=, type-guid=, mbr-id= to the files that
    # follow, so they come first for both.
    args = extra + files
    img = copy_of(args, "disk.img")
    lab, parts = sfdisk_parts(img)
    check_eq(lab, label, "label")
    check_eq(len([p for p in parts if p[2] not in ("5", "f")]), len(files),
             "one partition per file")
    if shutil.which("nbdkit"):
        klab, kparts = sfdisk_parts(nbdkit_copy(args, "k.img"))
        check_eq(lab, klab, "label as nbdkit")
        check_eq(parts, kparts, "partitions as nbdkit")
    for n, f in parts_to_check:
        partition_reads(img, n, f)


def case_mbr():
    layout_case(FILES[:3], "dos", [], [(2, FILES[1])])


def case_mbr_extended():
    layout_case(FILES, "dos", ["partition-type=mbr"],
                [(2, FILES[1]), (5, FILES[3]), (6, FILES[4])])


def case_gpt():
    layout_case(FILES[:3], "gpt", ["partition-type=gpt", "alignment=4k",
                                   "type-guid=0657FD6D-A4AB-43C4-84E5-"
                                   "0933C84B4F4F"], [(2, FILES[1])])


def case_writes():
    make_files()
    s = Server(["partitioning", "file=" + FILES[0], "file=" + FILES[1]])
    h = nbd.NBD()
    h.connect_unix(s.sock)
    start = 2 << 20            # partition 2 at 2M (1M alignment, 1M file)
    h.pwrite(b"\x5a" * 4096, start + 100)
    h.flush()
    with open(FILES[1], "rb") as f:
        check_eq(f.read(4196)[100:], b"\x5a" * 4096, "write reached file 2")
    mbr = h.pread(512, 0)
    h.pwrite(mbr, 0)                       # unchanged: accepted
    try:
        h.pwrite(b"\xff" * 16, 0x1be)
        check(False, "a write changing the MBR must fail")
    except nbd.Error as e:
        check_eq(e.errno, "EIO", "error of a table write")
    try:
        h.pwrite(b"\x01", 1000000 + 10)   # padding after file 1
        check(False, "non-zero padding must fail")
    except nbd.Error:
        pass
    h.pwrite(bytes(512), 1000448)          # zeros in padding: accepted
    check_eq(h.pread(512, 0), mbr, "MBR unchanged")
    h.shutdown()
    s.stop()


def refused(args, words):
    r = subprocess.run([T.NBDSTACK, "-U", os.path.join(D, "bad.sock"),
                        "partitioning", FILES[0]] + args,
                       capture_output=True, text=True, timeout=10)
    check(r.returncode != 0, "%r: exit %d" % (args, r.returncode))
    for w in words:
        check(w in r.stderr, "%r: %r not in %r" % (args, w, r.stderr))


def case_refused():
    make_files()
    refused(["alignment=1000"], ["alignment", "power of two from 512 to 1M"])
    refused(["alignment=2M"], ["alignment", "512 to 1M"])
    refused(["mbr-id=0x100"], ["mbr-id", "0x01 to 0xff"])
    refused(["mbr-id=linux"], ["mbr-id", "0x01 to 0xff"])
    refused(["type-guid=1234"], ["type-guid", "GUID"])
    refused(["partition-type=apm"], ["partition-type", "mbr", "gpt"])
    empty = os.path.join(D, "empty.img")
    open(empty, "wb").close()
    refused([empty], ["zero length"])


C.run("MBR of 3 files: sfdisk, nbdkit, partition filter", case_mbr)
C.run("MBR of 5 files: extended + logical partitions", case_mbr_extended)
C.run("GPT: primary and backup, alignment, type-guid", case_gpt)
C.run("writes reach files, table writes refused unless unchanged",
      case_writes)
C.run("bad values refused at startup", case_refused)
C.finish()
