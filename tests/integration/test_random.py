#!/usr/bin/python3
"""The random backend through real clients, next to nbdkit.

The same size and seed served by nbdstack and by `nbdkit random` give the
same bytes (nbdcopy of both to files, compared) and the same map (all
data); nbdcopy onto the disk of a copy of its own content succeeds, of
other content fails; bad values are refused at startup.
"""

import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402
from nbdtest import copy_out, unix_uri as uri  # noqa: E402

NAME = "random"
# seed=010: octal, as nbdkit reads its integers (8, not 10)
CASES = [["1M", "seed=42"], ["size=65537", "seed=4294967295"], ["64k", "seed=010"]]

T.require_layers(NAME)
for tool in ("nbdcopy", "nbdinfo"):
    if not shutil.which(tool):
        T.skip(tool + " is not installed")
T.start_watchdog(120)
C = Checker("test_random")


def refused(args, want):
    T.startup_refused(NAME, args, want)


def copy_onto_verifies():
    srv = Server([NAME, "size=1M", "seed=9"])
    img = os.path.join(T.TMPDIR, "c.img")
    copy_out(srv.sock, img)
    r = subprocess.run(["nbdcopy", img, uri(srv.sock)], capture_output=True)
    check_eq(r.returncode, 0, "copy of its own content onto it")
    with open(img, "r+b") as f:
        f.seek(77777)
        b = f.read(1)
        f.seek(77777)
        f.write(bytes([b[0] ^ 1]))
    r = subprocess.run(["nbdcopy", img, uri(srv.sock)], capture_output=True)
    check(r.returncode != 0, "a copy with one wrong byte fails")
    srv.stop()


def bad_values_refused():
    refused(["size=1M", "seed=4294967296"], "0 to 4294967295")
    refused(["size=8E"], "2^63-1")
    refused(["size=1M", "sede=1"], "sede")


C.run("same bytes as nbdkit random", T.same_as_nbdkit, NAME, CASES)
C.run("a copy onto the disk verifies the copy", copy_onto_verifies)
C.run("bad values refused at startup", bad_values_refused)
C.finish()
