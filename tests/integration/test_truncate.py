#!/usr/bin/python3
"""The truncate filter through libnbd, over a file backend, next to nbdkit.

A 1 MiB file served with truncate=2M: the extension reads as zeros and
reports as a hole; zeros may be written into it, data fails with ENOSPC
and (unlike nbdkit, which writes the part below first) leaves the file
unchanged; truncate=64k cuts it short; round-up=4k follows a file that
grew between two connections.  Where nbdkit is installed, the same
requests go to `nbdkit --filter=truncate file` and the answers are
compared.
"""

import os
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("truncate", "file")
T.start_watchdog()
C = Checker("test_truncate")
MiB = 1 << 20
DISK = os.path.join(T.TMPDIR, "disk.img")


def make_disk(size=MiB):
    with open(DISK, "wb") as f:
        f.write(bytes(range(256)) * (size // 256))


def serve(*keys, name=None):
    return Server(["--filter", "truncate", "file", "file=" + DISK] +
                  list(keys), name=name)


def handle(sock):
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_unix(sock)
    return h


def extents_of(h, count, offset):
    got = []

    def cb(ctx, off, entries, err):
        if ctx == "base:allocation":
            for i in range(0, len(entries), 2):
                got.append((entries[i], entries[i + 1]))
        return 0
    h.block_status(count, offset, cb)
    return got


def write_err(h, buf, offset):
    try:
        h.pwrite(buf, offset)
    except nbd.Error as e:
        return e.errnum
    return 0


def behaviour(sock):
    """What a client sees of a 1 MiB file under truncate=2M."""
    h = handle(sock)
    out = {"size": h.get_size()}
    out["read_across"] = h.pread(8192, MiB - 4096)
    out["read_ext"] = h.pread(4096, MiB + 4096)
    out["write_zeros"] = write_err(h, bytes(8192), MiB - 4096)
    out["write_data"] = write_err(h, b"\x55" * 8192, MiB - 4096)
    # The first extent from the old end (nbdkit answers a request that
    # spans it only up to the old end, which the protocol allows).
    out["ext_type_after"] = extents_of(h, 8192, MiB)[0][1] & 3
    h.shutdown()
    return out


def extension():
    make_disk()
    srv = serve("truncate=2M")
    b = behaviour(srv.sock)
    srv.stop()
    check_eq(b["size"], 2 * MiB, "size")
    check(b["read_across"][:4096] == bytes(range(256)) * 16,
          "bytes below the old end")
    check(b["read_across"][4096:] == bytes(4096), "extension reads zeros")
    check(b["read_ext"] == bytes(4096), "extension reads zeros")
    check_eq(b["write_zeros"], 0, "zeros written into the extension")
    check_eq(b["write_data"], T.ENOSPC, "data written into the extension")
    check_eq(b["ext_type_after"], T.STATE_HOLE | T.STATE_ZERO,
             "extension's extent type")
    # The refused write must not have reached the file (it wrote zeros
    # over the last 4 KiB, then was refused).
    with open(DISK, "rb") as f:
        f.seek(MiB - 4096)
        check(f.read() == bytes(4096), "refused write left the file alone")
    check_eq(os.path.getsize(DISK), MiB, "file size unchanged")


def shrink():
    make_disk()
    srv = serve("truncate=64k")
    h = handle(srv.sock)
    check_eq(h.get_size(), 64 * 1024, "size")
    try:
        h.pread(4096, 62 * 1024)
        check(False, "read past the new end succeeded")
    except nbd.Error:
        pass
    h.shutdown()
    srv.stop()


def grows_between_connections():
    make_disk(1000 // 256 * 256)          # 768 bytes
    srv = serve("round-up=4k")
    h = handle(srv.sock)
    check_eq(h.get_size(), 4096, "size of a 768-byte file rounded up")
    with open(DISK, "ab") as f:
        f.write(b"\1" * (5000 - 768))
    h2 = handle(srv.sock)
    check_eq(h2.get_size(), 8192, "second connection sees the grown file")
    check_eq(h.get_size(), 4096, "first connection keeps its size")
    h.shutdown()
    h2.shutdown()
    srv.stop()


def bad_keys_refused():
    for keys, want in ((["round-up=3"], "power of 2 from 1 to"),
                       (["round-down=0"], "power of 2"),
                       (["truncate=9E"], "2^63-1")):
        r = subprocess.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "x.sock"),
                            "--filter", "truncate", "file", "file=" + DISK]
                           + keys, capture_output=True, text=True, timeout=10)
        check(r.returncode != 0, "%s accepted" % keys)
        check(want in r.stderr, "%s: %r lacks %r" % (keys, r.stderr, want))


def same_as_nbdkit():
    if not shutil.which("nbdkit"):
        log_skip = "nbdkit not installed"
        T.log("  (skipped: %s)" % log_skip)
        return
    make_disk()
    srv = serve("truncate=2M")
    ours = behaviour(srv.sock)
    srv.stop()
    make_disk()
    ksock = os.path.join(T.TMPDIR, "nbdkit.sock")
    p = subprocess.Popen(["nbdkit", "-f", "-U", ksock, "--filter=truncate",
                          "file", DISK, "truncate=2M"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(ksock) and time.monotonic() < deadline:
            time.sleep(0.05)
        theirs = behaviour(ksock)
    finally:
        p.terminate()
        p.wait(10)
    # nbdkit writes the part below before it refuses: that difference is
    # intended (docs/filters/truncate.md), the answers are the same.
    for k in ours:
        check(ours[k] == theirs[k], "same as nbdkit: %s: ours %.60r, "
              "nbdkit's %.60r" % (k, ours[k], theirs[k]))


C.run("extension reads zeros, is a hole, takes zeros, refuses data",
      extension)
C.run("truncate= below the size cuts the disk short", shrink)
C.run("a file grown between connections is picked up", grows_between_connections)
C.run("bad values refused at startup with the range", bad_keys_refused)
C.run("same answers as nbdkit --filter=truncate", same_as_nbdkit)
C.finish()
