#!/usr/bin/python3
"""The nozero filter through real clients, against nbdkit's.

Every zeromode x fastzeromode pair runs on both servers over a memory
disk and the flags nbdinfo --json shows must agree; then zero and fast
zero requests go through libnbd.
"""

import json
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

T.require_layers("nozero", "memory")
T.start_watchdog()
C = Checker("test_nozero")
FLAGS = ("can_zero", "can_fast_zero", "can_trim", "can_fua")


def flags(srv):
    out = subprocess.run(["nbdinfo", "--json", srv.uri], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    exp = json.loads(out)["exports"][0]
    return {k: exp.get(k) for k in FLAGS}


def ours(keys):
    return Server(["--filter", "nozero", "memory", "size=1M"] + keys)


def same_flags_as_nbdkit(keys):
    a = ours(keys)
    b = Server(["-f", "--filter=nozero", "memory", "1M"] + keys,
               binary="nbdkit")
    try:
        fa, fb = flags(a), flags(b)
        check_eq(fa, fb, "flags with %s" % keys)
    finally:
        a.stop()
        b.stop()


def zero_requests(keys, fast_ok):
    srv = ours(keys)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"\xaa" * 8192, 0)
    h.zero(4096, 0)
    check_eq(h.pread(4096, 0), b"\0" * 4096, "%s: zeroed" % keys)
    if h.can_fast_zero():
        try:
            h.zero(4096, 4096, nbd.CMD_FLAG_FAST_ZERO)
            check(fast_ok, "%s: fast zero should have failed" % keys)
            check_eq(h.pread(4096, 4096), b"\0" * 4096,
                     "%s: fast zeroed" % keys)
        except nbd.Error as e:
            check(not fast_ok, "%s: fast zero failed: %s" % (keys, e))
            check_eq(h.pread(4096, 4096), b"\xaa" * 4096,
                     "%s: failed fast zero left the data" % keys)
    h.shutdown()
    srv.stop()


def zero_not_advertised():
    srv = ours([])
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    check(not h.can_zero(), "zero not advertised by default")
    h.shutdown()
    srv.stop()


if shutil.which("nbdkit") and shutil.which("nbdinfo"):
    for z in ("none", "emulate", "notrim", "plugin"):
        for f in ("default", "none", "slow", "ignore"):
            C.run("same flags as nbdkit: zeromode=%s fastzeromode=%s" % (z, f),
                  same_flags_as_nbdkit, ["zeromode=" + z, "fastzeromode=" + f])
C.run("zero not advertised by default", zero_not_advertised)
for keys, fast_ok in ((["zeromode=emulate"], False),
                      (["zeromode=emulate", "fastzeromode=ignore"], True),
                      (["zeromode=plugin"], True),
                      (["zeromode=plugin", "fastzeromode=slow"], False),
                      (["zeromode=notrim"], True),
                      (["zeromode=plugin", "fastzeromode=none"], False)):
    C.run("zero requests with %s" % keys, zero_requests, keys, fast_ok)
C.finish()
