#!/usr/bin/python3
"""The null backend takes a bare size, as nbdkit does ("null 1G").

nbdstack and `nbdkit null` with the same bare size report the same size,
bytes and map.
"""

import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check_eq  # noqa: E402
from nbdtest import unix_uri as uri  # noqa: E402

NAME = "null"
CASES = [["1M"], ["size=3M"]]

T.require_layers(NAME)
for tool in ("nbdcopy", "nbdinfo"):
    if not shutil.which(tool):
        T.skip(tool + " is not installed")
T.start_watchdog(120)
C = Checker("test_null")


def bare_size():
    srv = Server([NAME, "1G"])
    r = subprocess.run(["nbdinfo", "--size", uri(srv.sock)],
                       capture_output=True, text=True, check=True)
    check_eq(int(r.stdout), 1 << 30, "size of null 1G")
    srv.stop()


C.run("null 1G serves 1 GiB", bare_size)
C.run("same bytes and map as nbdkit null", T.same_as_nbdkit, NAME, CASES)
C.finish()
