#!/usr/bin/python3
"""The full backend through real clients, next to nbdkit.

Reads are zeros and the map one hole, as `nbdkit full`; nbdcopy onto it
fails (ENOSPC), a write through libnbd fails with ENOSPC, and a missing
size is refused at startup.
"""

import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402
from nbdtest import unix_uri as uri  # noqa: E402

NAME = "full"
CASES = [["1M"]]

T.require_layers(NAME)
for tool in ("nbdcopy", "nbdinfo"):
    if not shutil.which(tool):
        T.skip(tool + " is not installed")
T.start_watchdog(120)
C = Checker("test_full")


def refused(args, want):
    T.startup_refused(NAME, args, want)


def writes_fail_with_enospc():
    srv = Server([NAME, "size=1M"])
    img = os.path.join(T.TMPDIR, "f.img")
    with open(img, "wb") as f:
        f.write(b"\x01" * (1 << 20))
    r = subprocess.run(["nbdcopy", img, uri(srv.sock)], capture_output=True,
                       text=True)
    check(r.returncode != 0, "nbdcopy onto full fails")
    try:
        import nbd
    except ImportError:
        srv.stop()
        return
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    for fn in (lambda: h.pwrite(b"x" * 512, 0),
               lambda: h.zero(512, 0), lambda: h.trim(512, 0)):
        try:
            fn()
            check(False, "a write succeeded")
        except nbd.Error as e:
            check_eq(e.errnum, T.ENOSPC, "errno")
    h.shutdown()
    srv.stop()


def bad_values_refused():
    refused([], "size")
    refused(["size=8E"], "2^63-1")


C.run("same bytes and map as nbdkit full", T.same_as_nbdkit, NAME, CASES)
C.run("writes, zeros and trims fail with ENOSPC", writes_fail_with_enospc)
C.run("bad values refused at startup", bad_values_refused)
C.finish()
