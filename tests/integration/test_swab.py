#!/usr/bin/python3
"""The swab filter through real clients: for swab-bits 8, 16, 32 and 64
the disk nbdcopy reads is nbdkit's swab filter's over the same pattern
(skipped without nbdkit), and byte swaps are checked directly; a write
reads back as written and lands swapped below; unaligned reads and writes
work (read-modify-write, where nbdkit refuses them); extents are hidden;
a bad swab-bits is refused with FILE:LINE."""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402
import opsfilters as O                    # noqa: E402

try:
    import nbd                            # noqa: F401
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("swab", "pattern", "memory")
T.start_watchdog()
C = Checker("test_swab")
servers = []


def swaps_pattern():
    for bits in (8, 16, 32, 64):
        srv = Server(["--filter", "swab", "pattern", "size=64k",
                      "swab-bits=%d" % bits], name="p%d" % bits)
        servers.append(srv)
        h = O.connect(srv.uri)
        word = h.pread(8, 8)
        w = bits // 8
        want = b"".join(bytes(reversed((8).to_bytes(8, "big")[i:i + w]))
                        for i in range(0, 8, w))
        check_eq(word, want, "swab-bits=%d word at 8" % bits)
        h.shutdown()
        srv.stop()


def same_as_nbdkit():
    if not O.have_nbdkit_filter("swab"):
        T.log("  (skipped: nbdkit's swab filter is not installed)")
        return
    for bits in (16, 32, 64):
        srv = Server(["--filter", "swab", "pattern", "size=1M",
                      "swab-bits=%d" % bits], name="cmp%d" % bits)
        servers.append(srv)
        ours = T.copy_out(srv.sock, os.path.join(T.TMPDIR, "o.img"))
        ksock = os.path.join(T.TMPDIR, "k%d.sock" % bits)
        k = T.start_nbdkit("--filter=swab", ["pattern", "1M",
                                             "swab-bits=%d" % bits], ksock)
        try:
            theirs = T.copy_out(ksock, os.path.join(T.TMPDIR, "k.img"))
        finally:
            k.terminate()
            k.wait(10)
        check(ours == theirs, "swab-bits=%d: content differs from nbdkit's"
              % bits)
        srv.stop()


def writes_and_unaligned():
    srv = Server(["--filter", "swab", "--filter", "noparallel", "memory",
                  "size=1M", "swab-bits=32"], name="rw")
    servers.append(srv)
    h = O.connect(srv.uri, meta=True)
    h.pwrite(b"ABCDEFGH", 0)
    check_eq(h.pread(8, 0), b"ABCDEFGH", "aligned read back")
    h.pwrite(b"xy", 3)
    check_eq(h.pread(8, 0), b"ABCxyFGH", "unaligned write read back")
    check_eq(h.pread(3, 2), b"Cxy", "unaligned read")
    h.zero(3, 1)
    check_eq(h.pread(8, 0), b"A\0\0\0yFGH", "unaligned zero")
    check(not h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION) or
          T.extent_map(srv.sock)[0][2] == 0, "extents hidden (all data)")
    h.shutdown()
    srv.stop()


def bad_bits_refused():
    O.config_refused("swab swab-bits=12", "swab-bits")
    O.config_accepted("swab swab-bits=64")


C.run("pattern words are swapped for each swab-bits", swaps_pattern)
C.run("the same bytes as nbdkit's swab filter", same_as_nbdkit)
C.run("writes, unaligned requests, hidden extents", writes_and_unaligned)
C.run("a bad swab-bits is refused with FILE:LINE", bad_bits_refused)
C.finish(servers)
