#!/usr/bin/python3
"""The checkwrite filter through real clients: nbdcopy and qemu-img copy a
disk onto itself through it and succeed; a write of other data, or a zero
over data, fails with EIO and changes nothing; the same requests give the
same results as nbdkit's checkwrite filter (skipped without nbdkit); an
unknown key is refused with FILE:LINE."""

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

T.require_layers("checkwrite", "pattern", "sparse-random", "memory")
T.start_watchdog(120)
C = Checker("test_checkwrite")
servers = []


def copy_onto_itself():
    for args in (["pattern", "size=8M"],
                 ["sparse-random", "size=64M", "seed=7"]):
        srv = Server(["--filter", "checkwrite"] + args, name="self")
        servers.append(srv)
        r = subprocess.run(["nbdcopy", srv.uri, srv.uri],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, "nbdcopy %s onto itself: %s"
              % (args, r.stderr))
        if shutil.which("qemu-img"):
            r = subprocess.run(["qemu-img", "convert", "-n", "-f", "raw",
                                "-O", "raw", srv.uri, srv.uri],
                               capture_output=True, text=True, timeout=60)
            check(r.returncode == 0, "qemu-img convert %s onto itself: %s"
                  % (args, r.stderr))
        srv.stop()


def script(h):
    out = []
    out.append(O.errno_of(lambda: h.pwrite(h.pread(4096, 8192), 8192)))
    out.append(O.errno_of(lambda: h.pwrite(b"x" * 4096, 8192)))
    out.append(O.errno_of(lambda: h.zero(4096, 8192)))
    out.append(O.errno_of(lambda: h.trim(4096, 8192)))
    out.append(O.errno_of(lambda: h.flush()))
    out.append(h.pread(8, 8192))
    out.append(not h.is_read_only() and h.can_zero() and h.can_trim())
    return out


def wrong_data_fails():
    srv = Server(["--filter", "checkwrite", "pattern", "size=1M"],
                 name="wrong")
    servers.append(srv)
    h = O.connect(srv.uri)
    got = script(h)
    check_eq(got[:5], ["ok", "EIO", "EIO", "EIO", "ok"], "results")
    check_eq(got[5], (8192).to_bytes(8, "big"), "data unchanged")
    h.shutdown()
    srv.stop()


def same_as_nbdkit():
    if not O.have_nbdkit_filter("checkwrite"):
        T.log("  (skipped: nbdkit's checkwrite filter is not installed)")
        return
    srv = Server(["--filter", "checkwrite", "pattern", "size=1M"], name="cmp")
    servers.append(srv)
    with O.nbdkit(["--filter=checkwrite", "pattern", "1M"], "cw") as k:
        hk = O.connect(k)
        theirs = script(hk)
        hk.shutdown()
    h = O.connect(srv.uri)
    ours = script(h)
    h.shutdown()
    check_eq(ours, theirs, "results against nbdkit")
    srv.stop()


def unknown_key_refused():
    O.config_refused("checkwrite strict=yes", "unknown key")
    O.config_accepted("checkwrite", "pattern size=1M")


C.run("nbdcopy and qemu-img copy a disk onto itself", copy_onto_itself)
C.run("other data, and zero over data, fail with EIO", wrong_data_fails)
C.run("same results as nbdkit's checkwrite filter", same_as_nbdkit)
C.run("an unknown key is refused with FILE:LINE", unknown_key_refused)
C.finish(servers)
