#!/usr/bin/python3
"""The null backend takes a bare size, as nbdkit does ("null 1G").

nbdstack and `nbdkit null` with the same bare size report the same size,
bytes and map.
"""

import json
import os
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

NAME = "null"
CASES = [["1M"], ["size=3M"]]

T.require_layers(NAME)
for tool in ("nbdcopy", "nbdinfo"):
    if not shutil.which(tool):
        T.skip(tool + " is not installed")
T.start_watchdog(120)
C = Checker("test_null")


def nbdkit(args, sock):
    p = subprocess.Popen(["nbdkit", "-f", "-U", sock, NAME] + args,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    return p


def uri(sock):
    return "nbd+unix:///?socket=" + sock


def copy_out(sock, path):
    subprocess.run(["nbdcopy", uri(sock), path], check=True)
    with open(path, "rb") as f:
        return f.read()


def amap(sock):
    out = subprocess.run(["nbdinfo", "--map", "--json", uri(sock)],
                         check=True, capture_output=True, text=True).stdout
    return [(e["offset"], e["length"], e["type"]) for e in json.loads(out)]


def same_as_nbdkit():
    if not shutil.which("nbdkit"):
        T.log("  (skipped: nbdkit not installed)")
        return
    for i, args in enumerate(CASES):
        srv = Server([NAME] + args)
        ksock = os.path.join(T.TMPDIR, "nbdkit%d.sock" % i)
        k = nbdkit(args, ksock)
        try:
            ours = copy_out(srv.sock, os.path.join(T.TMPDIR, "o.img"))
            theirs = copy_out(ksock, os.path.join(T.TMPDIR, "k.img"))
            check(ours == theirs, "%s: content differs from nbdkit's" % args)
            check_eq(amap(srv.sock), amap(ksock), "%s: map" % args)
        finally:
            k.terminate()
            k.wait(10)
            srv.stop()


def bare_size():
    srv = Server([NAME, "1G"])
    r = subprocess.run(["nbdinfo", "--size", uri(srv.sock)],
                       capture_output=True, text=True, check=True)
    check_eq(int(r.stdout), 1 << 30, "size of null 1G")
    srv.stop()


C.run("null 1G serves 1 GiB", bare_size)
C.run("same bytes and map as nbdkit null", same_as_nbdkit)
C.finish()
