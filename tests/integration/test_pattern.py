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
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

NAME = "pattern"
CASES = [["1M"], ["size=100003"]]

T.require_layers(NAME)
for tool in ("nbdcopy", "nbdinfo"):
    if not shutil.which(tool):
        T.skip(tool + " is not installed")
T.start_watchdog(120)
C = Checker("test_pattern")


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


def refused(args, want):
    r = subprocess.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "x"),
                        NAME] + args, capture_output=True, text=True,
                       timeout=10)
    check(r.returncode != 0 and want in r.stderr,
          "%s refused with %r: rc %d, %r" % (args, want, r.returncode,
                                              r.stderr))


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


C.run("same bytes as nbdkit pattern", same_as_nbdkit)
C.run("words hold their offset, read-only", words_and_read_only)
C.run("bad values refused at startup", bad_values_refused)
C.finish()
