#!/usr/bin/python3
"""The multi-conn filter through real clients, against nbdkit's: the
can_multi_conn flag nbdinfo shows for every mode (over the memory backend,
which has multi-conn, and the file backend), the name written with a dash
or an underscore, and two libnbd connections: a write on one, a flush on
the other, a read back on the other."""

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

T.require_layers("multi-conn", "memory")
T.start_watchdog()
C = Checker("test_multi_conn")
FLAGS = ("can_multi_conn", "can_flush", "can_fua")


def flags(srv):
    out = subprocess.run(["nbdinfo", "--json", srv.uri], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    exp = json.loads(out)["exports"][0]
    return {k: exp.get(k) for k in FLAGS}


def same_as_nbdkit(keys):
    a = Server(["--filter", "multi-conn", "memory", "size=1M"] + keys)
    b = Server(["-f", "--filter=multi-conn", "memory", "1M"] + keys,
               binary="nbdkit")
    try:
        check_eq(flags(a), flags(b), "flags with %s" % keys)
    finally:
        a.stop()
        b.stop()


def underscore_spelling():
    a = Server(["--filter", "multi_conn", "memory", "size=1M",
                "multi-conn-mode=disable"])
    check_eq(flags(a)["can_multi_conn"], False, "multi_conn disable")
    a.stop()


def two_connections(mode):
    srv = Server(["--filter", "multi-conn", "memory", "size=1M",
                  "multi-conn-mode=" + mode])
    h1, h2 = nbd.NBD(), nbd.NBD()
    h1.connect_uri(srv.uri)
    h2.connect_uri(srv.uri)
    check(h1.can_multi_conn(), "%s: multi-conn advertised" % mode)
    h1.pwrite(b"\x42" * 4096, 4096)
    h2.flush()
    check_eq(h2.pread(4096, 4096), b"\x42" * 4096, "%s: seen" % mode)
    h2.pwrite(b"\x43" * 4096, 0, nbd.CMD_FLAG_FUA)
    check_eq(h1.pread(4096, 0), b"\x43" * 4096, "%s: FUA seen" % mode)
    h1.shutdown()
    h2.shutdown()
    srv.stop()


if shutil.which("nbdkit") and shutil.which("nbdinfo"):
    for keys in ([], ["multi-conn-mode=emulate"], ["multi-conn-mode=plugin"],
                 ["multi-conn-mode=disable"], ["multi-conn-mode=unsafe"],
                 ["multi-conn-mode=emulate", "multi-conn-track-dirty=fast"],
                 ["multi-conn-mode=emulate", "multi-conn-track-dirty=off"],
                 ["multi-conn-exportname=true"]):
        C.run("same flags as nbdkit: %s" % keys, same_as_nbdkit, keys)
C.run("multi_conn spelling accepted", underscore_spelling)
for mode in ("emulate", "auto"):
    C.run("two connections, multi-conn-mode=%s" % mode, two_connections, mode)
C.finish()
