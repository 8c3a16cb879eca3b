#!/usr/bin/python3
"""The data backend through real clients, byte for byte against nbdkit.

For a list of data=, raw=, base64= and size= arguments, serve the same
arguments with `nbdstack data ...` and `nbdkit data ...`, copy both disks
to files with nbdcopy and compare them (size and bytes).  Then writes,
trims and zeroes through libnbd are read back, on both servers, and the
answers compared; a read-only export refuses writes; a bad expression is
refused at startup with the offset of the bad token.  Without nbdkit the
comparisons are skipped and the write checks still run.
"""

import filecmp
import os
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

if not shutil.which("nbdcopy"):
    T.skip("nbdcopy is not installed")
T.require_layers("data")
T.start_watchdog(120)
C = Checker("test_data")
NBDKIT = shutil.which("nbdkit")

FILE = os.path.join(T.TMPDIR, "blob.bin")
with open(FILE, "wb") as f:
    f.write(b"ABCDEFG" * 100)

MBR = """
  @0x1be    # MBR first partition entry
    0           # Partition status
    0 2 0       # CHS start
    0x83        # Partition type (Linux)
    0x20 0x20 0 # CHS last sector
    le32:1      # LBA first sector
    le32:0x7ff  # LBA number of sectors
  @0x1fe    # Boot signature
    0x55 0xaa
"""

# Arguments after the plugin name, the same for both servers.
CASES = [
    ["1 2 3"],
    ["data=0 1 2 3 @0x1fe 0x55 0xaa"],
    ["0 1 2 3 @^0x200 @-2 le16:0xaa55"],
    [" ( 0x55 0xAA )*2048 "],
    [' ( "Hello" )*2000 ', "size=8192"],
    [MBR, "size=1M"],
    ["1 2 @0 3"],
    ['"abcdef"[1:3] "ab"*2[1:3] (1 2 3)[1:]*2 (@4 1)[2:] "xy"[:1]'],
    ['"\\x41\\xff\\x00 \\e\\?" ( 0x55 0xAA )*1000[1:1999]'],
    ["( @4 1 @0 )*2"],
    ["1 2 3 @0 ( @2 9 )"],
    ["( ( 1 ) 2 ) * 3 @+5 0xff*0x3"],
    ['"a\\n\\t\\\\\\"b" be32:0x01020304 le64:0xffffffffffffffff be16:1'],
    ["1 @0x100000 2"],
    ["@10 @-5"],
    ["@^512"],
    ["1 2 3", "size=2"],
    ["<%s @^512 <%s*2 @^512" % (FILE, FILE)],
    ["( 7 @0x100001 )*3 @0 ( @0x180000 9 )"],
    ["raw=Hello, world!"],
    ["base64=MTIz", "size=1M"],
    ["base64=aGVsbG8gbmJka2l0IHVzZXI="],
]


def uri(server):
    return "nbd+unix:///?socket=" + server.sock


def copy_out(server, path):
    subprocess.run(["nbdcopy", uri(server), path], check=True, timeout=30)


def nbdkit(args, name):
    # -f: stay in the foreground, so Server sees the process it started.
    return Server(["-f", "data"] + args, name=name, binary=NBDKIT)


def compare_with_nbdkit(i, args):
    ours = Server(["data"] + args, name="ours%d" % i)
    a = os.path.join(T.TMPDIR, "ours%d.img" % i)
    b = os.path.join(T.TMPDIR, "theirs%d.img" % i)
    try:
        copy_out(ours, a)
    finally:
        ours.stop()
    if not NBDKIT:
        check(os.path.getsize(a) >= 0, "copied")
        return
    theirs = nbdkit(args, "theirs%d" % i)
    try:
        copy_out(theirs, b)
    finally:
        theirs.stop()
    check_eq(os.path.getsize(a), os.path.getsize(b), "size")
    check(filecmp.cmp(a, b, shallow=False), "bytes differ from nbdkit's")


def same(a, b, what):
    # No repr of whole disks in the report.
    check(a == b, what)


def handle(server):
    h = nbd.NBD()
    h.connect_unix(server.sock)
    return h


def session(server):
    """Writes, trims and zeroes; what a client reads after each."""
    h = handle(server)
    out = [h.get_size(), h.pread(64, 0)]
    h.pwrite(b"\xab" * 5000, 100)
    out.append(h.pread(5200, 0))
    h.pwrite(b"xyz", 3, nbd.CMD_FLAG_FUA)
    h.flush()
    out.append(h.pread(16, 0))
    h.zero(1000, 200)
    out.append(h.pread(1300, 0))
    h.trim(65536, 65536)
    out.append(h.pread(65536 + 100, 65536 - 50))
    h.pwrite(b"end", h.get_size() - 3)
    out.append(h.pread(8, h.get_size() - 8))
    out.append(h.pread(5200, 0))
    h.shutdown()
    # A second connection sees what the first wrote.
    h = handle(server)
    out.append(h.pread(5200, 0))
    h.shutdown()
    return out


WRITE_ARGS = ["( 0x55 0xAA )*1000 @0x10000 \"tail\"", "size=256K"]


def writes_read_back():
    ours = Server(["data"] + WRITE_ARGS, name="ours-w")
    try:
        got = session(ours)
    finally:
        ours.stop()
    check_eq(got[0], 256 * 1024, "size")
    check_eq(got[1], b"\x55\xaa" * 32, "initial bytes")
    same(got[2][100:5100], b"\xab" * 5000, "written bytes")
    same(got[2][:100], b"\x55\xaa" * 50, "bytes before the write")
    same(got[2][5100:], b"\x00" * 100, "bytes after the write")
    same(got[4][200:1200], b"\x00" * 1000, "zeroed bytes")
    check(got[3][3:6] == b"xyz", "FUA write read back")
    check(got[-1] == got[-2], "second connection sees the first's writes")
    if not NBDKIT:
        return
    theirs = nbdkit(WRITE_ARGS, "theirs-w")
    try:
        want = session(theirs)
    finally:
        theirs.stop()
    for n, (g, w) in enumerate(zip(got, want)):
        check(g == w, "read %d differs from nbdkit's" % n)


def readonly_refuses_writes():
    s = Server(["-r", "data", "1 2 3"], name="ro")
    try:
        h = handle(s)
        check(h.is_read_only(), "export is read-only")
        try:
            h.pwrite(b"x", 0)
            check(False, "write on a read-only export succeeded")
        except nbd.Error:
            pass
        check_eq(h.pread(3, 0), b"\1\2\3", "data after the refused write")
        h.shutdown()
    finally:
        s.stop()


def bad_expression_refused():
    for args, want in [
        (["1 2 3 @1 $x"], "data: at offset 9: unknown token '$x'"),
        (["1 ( 2"], "data: at offset 2: unmatched '('"),
        (["base64=MT$z"], "base64: at offset 2: invalid character '$'"),
        (["raw=x", "base64=MTIz"], "exactly one of data=, raw= or base64="),
        (["1", "size=1Q"], "size"),
    ]:
        r = subprocess.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "bad.sock"),
                            "data"] + args, capture_output=True, text=True,
                           timeout=10)
        check(r.returncode != 0, "%r was accepted" % args)
        check(want in r.stderr, "%r: stderr %r lacks %r" % (args, r.stderr, want))


for i, args in enumerate(CASES):
    C.run("same bytes as nbdkit: %r" % " ".join(args)[:60],
          compare_with_nbdkit, i, args)
C.run("writes, trims and zeroes read back (and match nbdkit)", writes_read_back)
C.run("read-only export refuses writes", readonly_refuses_writes)
C.run("bad arguments refused at startup", bad_expression_refused)
C.finish()
