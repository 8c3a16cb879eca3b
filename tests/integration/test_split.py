#!/usr/bin/python3
"""The split backend through real clients, next to nbdkit's split plugin.

Four files (1000000 random bytes, an empty file, a 2 MiB hole, 5000 random
bytes) given as file= and bare names make one disk: its size is the sum,
reads and writes that span files land in the right files at the right
offsets, extents of each file are shifted into place (nbdinfo --map),
nbdcopy of the disk equals the files concatenated, trim and zero act on
the files, and the same disk from `nbdkit split -r` reads and maps the
same.  Bad setups are refused at startup with a message.
"""

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

T.require_layers("split")
T.start_watchdog()
C = Checker("test_split")
MiB = 1 << 20
D = T.TMPDIR
A, E, B, CC = (os.path.join(D, n) for n in ("a.img", "e.img", "b.img",
                                             "c.img"))


def make_files():
    with open(A, "wb") as f:
        f.write(os.urandom(1000000))
    open(E, "wb").close()
    with open(B, "wb") as f:
        f.truncate(2 * MiB)
    with open(CC, "wb") as f:
        f.write(os.urandom(5000))


def concat():
    out = b""
    for p in (A, E, B, CC):
        with open(p, "rb") as f:
            out += f.read()
    return out


def handle(sock):
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_unix(sock)
    return h


def nbd_map(sock):
    out = subprocess.run(["nbdinfo", "--map", "nbd+unix:///?socket=" + sock],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()[:3]) for line in out.splitlines()]


def serve(*extra):
    return Server(["split", A, "file=" + E, B, "file=" + CC] + list(extra))


def case_read_size():
    make_files()
    s = serve()
    h = handle(s.sock)
    want = concat()
    check_eq(h.get_size(), len(want), "size")
    check_eq(h.pread(len(want), 0), want, "whole disk")
    # Spans a|b (the empty file between is skipped) and b|c.
    check_eq(h.pread(4096, 1000000 - 100), want[1000000 - 100:1000000 + 3996],
             "read across a|b")
    check_eq(h.pread(300, 1000000 + 2 * MiB - 100),
             want[1000000 + 2 * MiB - 100:1000000 + 2 * MiB + 200],
             "read across b|c")
    h.shutdown()
    s.stop()


def case_write_spans():
    make_files()
    s = serve()
    h = handle(s.sock)
    h.pwrite(b"\xaa" * 200, 1000000 - 100)
    h.pwrite(b"\xbb" * 200, 1000000 + 2 * MiB - 100)
    h.flush()
    h.shutdown()
    s.stop()
    with open(A, "rb") as f:
        check_eq(f.read()[-100:], b"\xaa" * 100, "end of a")
    with open(B, "rb") as f:
        b = f.read()
    check_eq(b[:100], b"\xaa" * 100, "start of b")
    check_eq(b[-100:], b"\xbb" * 100, "end of b")
    check_eq(len(b), 2 * MiB, "b keeps its size")
    with open(CC, "rb") as f:
        check_eq(f.read()[:100], b"\xbb" * 100, "start of c")
    check_eq(os.path.getsize(E), 0, "empty file stays empty")


def case_map_nbdcopy():
    make_files()
    s = serve()
    m = nbd_map(s.sock)
    check(("1000000", str(2 * MiB), "3") in m,
          "b's hole at 1000000 in the map: %r" % (m,))
    check_eq(m[0][2], "0", "a is data")
    check_eq(m[-1][2], "0", "c is data")
    out = os.path.join(D, "copy.img")
    subprocess.run(["nbdcopy", "nbd+unix:///?socket=" + s.sock, out],
                   check=True)
    with open(out, "rb") as f:
        check_eq(f.read() == concat(), True, "nbdcopy equals a+b+c")
    s.stop()


def case_trim_zero():
    make_files()
    s = serve()
    h = handle(s.sock)
    check(h.can_trim() and h.can_zero(), "trim and zero")
    h.pwrite(b"\x11" * 65536, 1000000 + 65536)
    h.zero(65536, 1000000 + 65536)
    check_eq(h.pread(65536, 1000000 + 65536), bytes(65536), "zeroed")
    h.zero(200, 1000000 - 100, nbd.CMD_FLAG_NO_HOLE)
    check_eq(h.pread(200, 1000000 - 100), bytes(200), "zero across a|b")
    h.trim(4096, 0)
    h.flush()
    h.shutdown()
    s.stop()
    with open(A, "rb") as f:
        check_eq(f.read()[-100:], bytes(100), "a zeroed at its end")


def case_readonly():
    make_files()
    s = serve("readonly=yes")
    h = handle(s.sock)
    check(h.is_read_only(), "read-only export")
    h.shutdown()
    s.stop()


def case_nbdkit():
    if not shutil.which("nbdkit"):
        T.log("no nbdkit: comparison skipped")
        return
    make_files()
    s = serve()
    ksock = os.path.join(D, "k.sock")
    k = subprocess.Popen(["nbdkit", "-r", "-f", "-U", ksock, "split", A, E,
                          B, CC])
    try:
        for _ in range(100):
            if os.path.exists(ksock):
                break
            T.time.sleep(0.05)
        hk, hs = handle(ksock), handle(s.sock)
        check_eq(hs.get_size(), hk.get_size(), "size as nbdkit")
        n = hk.get_size()
        check_eq(hs.pread(n, 0) == hk.pread(n, 0), True, "data as nbdkit")
        check_eq(nbd_map(s.sock), nbd_map(ksock), "map as nbdkit")
        hk.shutdown()
        hs.shutdown()
    finally:
        k.terminate()
        k.wait()
    s.stop()


def refused(args, words):
    r = subprocess.run([T.NBDSTACK, "-U", os.path.join(D, "bad.sock")] + args,
                       capture_output=True, text=True, timeout=10)
    check(r.returncode != 0, "%r: exit %d" % (args, r.returncode))
    for w in words:
        check(w in r.stderr, "%r: %r not in %r" % (args, w, r.stderr))


def case_refused():
    make_files()
    refused(["split"], ["file"])
    refused(["split", os.path.join(D, "missing.img")], ["missing.img"])
    refused(["split", A, "file="], ["file", "non-empty path"])
    refused(["split", A, D], ["Is a directory"])


C.run("reads: size is the sum, reads span files", case_read_size)
C.run("writes that span files land in each file", case_write_spans)
C.run("extents shifted per file; nbdcopy equals the files", case_map_nbdcopy)
C.run("trim and zero reach the files", case_trim_zero)
C.run("readonly=yes", case_readonly)
C.run("same data and map as nbdkit split", case_nbdkit)
C.run("bad setups refused at startup", case_refused)
C.finish()
