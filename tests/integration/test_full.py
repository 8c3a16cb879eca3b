#!/usr/bin/python3
"""The full backend through real clients, next to nbdkit.

Reads are zeros and the map one hole, as `nbdkit full`; nbdcopy onto it
fails (ENOSPC), a write through libnbd fails with ENOSPC, and a missing
size is refused at startup.
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

NAME = "full"
CASES = [["1M"]]

T.require_layers(NAME)
for tool in ("nbdcopy", "nbdinfo"):
    if not shutil.which(tool):
        T.skip(tool + " is not installed")
T.start_watchdog(120)
C = Checker("test_full")


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


C.run("same bytes and map as nbdkit full", same_as_nbdkit)
C.run("writes, zeros and trims fail with ENOSPC", writes_fail_with_enospc)
C.run("bad values refused at startup", bad_values_refused)
C.finish()
