#!/usr/bin/python3
"""The zero backend: a disk of size 0, as `nbdkit zero`.
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

NAME = "zero"
CASES = [[]]

T.require_layers(NAME)
for tool in ("nbdcopy", "nbdinfo"):
    if not shutil.which(tool):
        T.skip(tool + " is not installed")
T.start_watchdog(120)
C = Checker("test_zero")


def size_zero():
    srv = Server([NAME])
    r = subprocess.run(["nbdinfo", "--size", uri(srv.sock)],
                       capture_output=True, text=True, check=True)
    check_eq(int(r.stdout), 0, "size")
    srv.stop()


C.run("size 0", size_zero)
C.run("same as nbdkit zero", T.same_as_nbdkit, NAME, CASES)
C.finish()
