#!/usr/bin/python3
"""The cacheextents filter through real clients: nbdinfo --map and
qemu-img map see the same extents as without the filter and as nbdkit's
cacheextents filter over the same sparse-random disk (skipped without
nbdkit); a write changes the map at once (the kept answer is dropped); an
unknown key is refused with FILE:LINE."""

import json
import os
import shutil
import subprocess
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

T.require_layers("cacheextents", "sparse-random", "memory")
T.start_watchdog()
C = Checker("test_cacheextents")
servers = []
DISK = ["sparse-random", "size=256M", "seed=11", "runlength=1048576"]


def qemu_map(uri):
    out = subprocess.run(["qemu-img", "map", "--output=json", "-f", "raw",
                          uri], check=True, capture_output=True,
                         text=True).stdout
    return [(e["start"], e["length"], e["data"], e["zero"])
            for e in json.loads(out)]


def same_map():
    plain = Server(DISK, name="plain")
    cached = Server(["--filter", "cacheextents"] + DISK, name="cached")
    servers.extend([plain, cached])
    want = T.extent_map(plain.sock)
    check(len(want) > 10, "the disk has many extents (%d)" % len(want))
    check_eq(T.extent_map(cached.sock), want, "nbdinfo --map")
    if shutil.which("qemu-img"):
        check_eq(qemu_map(cached.uri), qemu_map(plain.uri), "qemu-img map")
    if O.have_nbdkit_filter("cacheextents"):
        ksock = os.path.join(T.TMPDIR, "k.sock")
        k = T.start_nbdkit("--filter=cacheextents",
                           ["sparse-random", "256M", "seed=11",
                            "runlength=1048576"], ksock)
        try:
            check_eq(T.extent_map(ksock), want, "nbdkit's map")
        finally:
            k.terminate()
            k.wait(10)
    else:
        T.log("  (nbdkit comparison skipped: no cacheextents filter)")
    plain.stop()
    cached.stop()


def write_drops_answer():
    srv = Server(["--filter", "cacheextents", "memory", "size=4M"],
                 name="mem")
    servers.append(srv)
    check_eq(T.extent_map(srv.sock), [(0, 4 << 20, 3)], "empty disk")
    h = O.connect(srv.uri)
    h.pwrite(b"x" * 65536, 1 << 20)
    check_eq(T.extent_map(srv.sock),
             [(0, 1 << 20, 3), (1 << 20, 65536, 0),
              ((1 << 20) + 65536, (3 << 20) - 65536, 3)], "after a write")
    h.trim(65536, 1 << 20)
    check_eq(T.extent_map(srv.sock), [(0, 4 << 20, 3)], "after a trim")
    h.shutdown()
    srv.stop()


def unknown_key_refused():
    O.config_refused("cacheextents size=1M", "unknown key")
    O.config_accepted("cacheextents")


C.run("the same map as without it and as nbdkit", same_map)
C.run("a write or trim changes the map at once", write_drops_answer)
C.run("an unknown key is refused with FILE:LINE", unknown_key_refused)
C.finish(servers)
