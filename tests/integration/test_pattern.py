#!/usr/bin/python3
"""The pattern backend through real clients, next to nbdkit.

The same size served by nbdstack and by `nbdkit pattern` give the same
bytes (nbdcopy of both to files, compared; a bare size too) and map; each
8-byte word holds its offset; the disk is read-only.
"""

import json
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check_eq  # noqa: E402
from nbdtest import copy_out, unix_uri as uri  # noqa: E402

NAME = "pattern"
CASES = [["1M"], ["size=100003"]]

T.require_layers(NAME)
for tool in ("nbdcopy", "nbdinfo"):
    if not shutil.which(tool):
        T.skip(tool + " is not installed")
T.start_watchdog(120)
C = Checker("test_pattern")


def refused(args, want):
    T.startup_refused(NAME, args, want)


def words_and_read_only():
    import struct
    srv = Server([NAME, "1M"])
    data = copy_out(srv.sock, os.path.join(T.TMPDIR, "p.img"))
    check_eq(len(data), 1 << 20, "size")
    for off in (0, 8, 4096, (1 << 20) - 8):
        check_eq(struct.unpack(">Q", data[off:off + 8])[0], off,
                 "word at %d" % off)
    r = subprocess.run(["nbdinfo", "--json", uri(srv.sock)],
                       capture_output=True, text=True, check=True)
    info = json.loads(r.stdout)["exports"][0]
    check_eq(info["is_read_only"], True, "read-only")
    srv.stop()


def bad_values_refused():
    refused(["size=8E"], "2^63-1")
    refused(["size=1M", "seed=1"], "seed")


C.run("same bytes as nbdkit pattern", T.same_as_nbdkit, NAME, CASES)
C.run("words hold their offset, read-only", words_and_read_only)
C.run("bad values refused at startup", bad_values_refused)
C.finish()
