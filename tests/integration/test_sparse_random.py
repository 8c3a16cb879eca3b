#!/usr/bin/python3
"""The sparse-random backend through real clients, next to nbdkit.

The same arguments served by nbdstack and by `nbdkit sparse-random` give
the same bytes (nbdcopy of both to files, compared) and the same
allocation map (nbdinfo --map --json); nbdcopy onto the disk of a copy of
its own content succeeds, of other content fails; bad values are refused
at startup with the accepted range.
"""

import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402
from nbdtest import copy_out, extent_map as amap, unix_uri as uri  # noqa: E402

NAME = "sparse-random"
CASES = [["size=64M", "seed=42", "runlength=65536"],
         ["size=10000000", "seed=7", "percent=50", "runlength=8192",
          "random-content=true"],
         ["size=1M", "seed=1", "percent=100"]]

T.require_layers(NAME)
for tool in ("nbdcopy", "nbdinfo"):
    if not shutil.which(tool):
        T.skip(tool + " is not installed")
T.start_watchdog(120)
C = Checker("test_sparse_random")


def refused(args, want):
    T.startup_refused(NAME, args, want)


def map_true_to_content():
    args = CASES[0]
    srv = Server([NAME] + args)
    data = copy_out(srv.sock, os.path.join(T.TMPDIR, "m.img"))
    m = amap(srv.sock)
    check(any(t == 0 for _, _, t in m) and any(t == 3 for _, _, t in m),
          "both data and holes: %r" % m[:4])
    for off, length, typ in m:
        chunk = data[off:off + length]
        if typ & 2:
            check(chunk.count(0) == length, "hole at %d reads as zeros" % off)
        else:
            check(chunk[:4096].count(0) == 0, "data at %d is nonzero" % off)
    srv.stop()


def copy_onto_verifies():
    args = CASES[1]
    srv = Server([NAME] + args)
    img = os.path.join(T.TMPDIR, "c.img")
    copy_out(srv.sock, img)
    r = subprocess.run(["nbdcopy", img, uri(srv.sock)], capture_output=True)
    check_eq(r.returncode, 0, "copy of its own content onto it")
    with open(img, "r+b") as f:
        f.seek(4096 * 7 + 3)
        b = f.read(1)
        f.seek(4096 * 7 + 3)
        f.write(bytes([b[0] ^ 0x55]))
    r = subprocess.run(["nbdcopy", img, uri(srv.sock)], capture_output=True)
    check(r.returncode != 0, "a copy with one wrong byte fails")
    srv.stop()


def bad_values_refused():
    for args, want in ((["size=1M", "percent=101"], "0 to 100"),
                       (["size=1M", "runlength=0"], "1 to"),
                       (["size=1M", "seed=4294967296"], "0 to 4294967295"),
                       (["size=1M", "rnalength=5"], "rnalength")):
        r = subprocess.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "x"),
                            NAME] + args, capture_output=True, text=True,
                           timeout=10)
        check(r.returncode != 0 and want in r.stderr,
              "%s refused with %r: rc %d, %r" % (args, want, r.returncode,
                                                  r.stderr))


C.run("same bytes and map as nbdkit sparse-random", T.same_as_nbdkit, NAME, CASES)
C.run("holes read as zeros, data is not", map_true_to_content)
C.run("a copy onto the disk verifies the copy", copy_onto_verifies)
C.run("bad values refused at startup", bad_values_refused)
C.finish()
