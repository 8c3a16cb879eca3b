#!/usr/bin/python3
"""The noextents filter through a real client: a sparse memory disk
whose holes show in block status without the filter reads as one data
extent with it, as nbdkit's does."""

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

T.require_layers("noextents", "memory")
T.start_watchdog()
C = Checker("test_noextents")
SIZE = 1 << 20


def extents(uri):
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    h.pwrite(b"\x11" * 4096, 65536)
    got = []

    def cb(meta, offset, entries, err):
        if meta == nbd.CONTEXT_BASE_ALLOCATION:
            got.extend(zip(entries[0::2], entries[1::2]))
        return 0

    h.block_status(SIZE, 0, cb)
    h.shutdown()
    return got


def all_data():
    srv = Server(["--filter", "noextents", "memory", "size=%d" % SIZE])
    check_eq(extents(srv.uri), [(SIZE, 0)], "one data extent")
    srv.stop()
    plain = Server(["memory", "size=%d" % SIZE])
    check(len(extents(plain.uri)) > 1, "without the filter holes show")
    plain.stop()


def same_as_nbdkit():
    b = Server(["-f", "--filter=noextents", "memory", str(SIZE)],
               binary="nbdkit")
    check_eq(extents(b.uri), [(SIZE, 0)], "nbdkit: one data extent")
    b.stop()


C.run("extents read as all data", all_data)
if shutil.which("nbdkit"):
    C.run("nbdkit's noextents agrees", same_as_nbdkit)
C.finish()
