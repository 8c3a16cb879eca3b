#!/usr/bin/python3
"""The protect filter through libnbd: changes to protected bytes fail with
EPERM and leave them as they were, identical rewrites and writes outside
pass, ~ protects the complement; every request gives the same result as
nbdkit's protect filter with the same keys (skipped without nbdkit); a bad
range is refused with FILE:LINE."""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check_eq  # noqa: E402
import opsfilters as O                    # noqa: E402

try:
    import nbd                            # noqa: F401
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("protect", "memory")
T.start_watchdog()
C = Checker("test_protect")
servers = []

KEYS = ["protect=0-0x1ff", "protect=~0x100000-0x1fffff", "protect=0x300000-"]


def script(h):
    """A fixed series of requests; the result of each."""
    out = []
    out.append(O.errno_of(lambda: h.pwrite(b"\0" * 512, 0)))      # same
    out.append(O.errno_of(lambda: h.pwrite(b"x" * 512, 0)))       # change
    out.append(O.errno_of(lambda: h.pwrite(b"y" * 512, 512)))     # ~ range
    out.append(O.errno_of(lambda: h.pwrite(b"z" * 4096, 0x100000)))
    out.append(O.errno_of(lambda: h.pwrite(b"z" * 4096, 0x1ff000 + 2048)))
    out.append(O.errno_of(lambda: h.zero(4096, 0x100000)))
    out.append(O.errno_of(lambda: h.zero(4096, 0)))
    out.append(O.errno_of(lambda: h.pwrite(b"\0" * 4096, 0x200000)))
    out.append(h.pread(16, 0x100000))
    out.append(h.pread(16, 0))
    return out


def protected_bytes_stay():
    srv = Server(["--filter", "protect", "memory", "size=4M"] + KEYS,
                 name="protect")
    servers.append(srv)
    h = O.connect(srv.uri)
    got = script(h)
    check_eq(got[:8], ["ok", "EPERM", "EPERM", "ok", "EPERM", "ok", "ok",
                       "ok"], "results")
    check_eq(got[8], b"\0" * 16, "zeroed unprotected range")
    check_eq(got[9], b"\0" * 16, "protected range unchanged")
    h.shutdown()
    check_eq(srv.stop(), 0, "exit status")


def same_as_nbdkit():
    if not O.have_nbdkit_filter("protect"):
        T.log("  (skipped: nbdkit's protect filter is not installed)")
        return
    srv = Server(["--filter", "protect", "memory", "size=4M"] + KEYS,
                 name="cmp")
    servers.append(srv)
    with O.nbdkit(["--filter=protect", "memory", "4M"] + KEYS, "protect") as k:
        hk = O.connect(k)
        theirs = script(hk)
        hk.shutdown()
    h = O.connect(srv.uri)
    ours = script(h)
    h.shutdown()
    check_eq(ours, theirs, "results against nbdkit")
    srv.stop()


def bad_range_refused():
    O.config_refused("protect protect=9-3", "START is after END")
    O.config_refused("protect protect=abc", "invalid range")
    O.config_refused("protect range=0-1", "unknown key")
    O.config_accepted("protect protect=0-511 protect=~0x100000-")


C.run("protected bytes stay, identical rewrites pass", protected_bytes_stay)
C.run("same results as nbdkit's protect filter", same_as_nbdkit)
C.run("bad ranges are refused with FILE:LINE", bad_range_refused)
C.finish(servers)
