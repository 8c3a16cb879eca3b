#!/usr/bin/python3
"""The multi-conn filter through real clients, against nbdkit's: the
can_multi_conn flag nbdinfo shows for every mode (over the memory backend,
which has multi-conn, and the file backend), the name written with a dash
or an underscore, and two libnbd connections: a write on one, a flush on
the other, a read back on the other.  Then clients under two export names
of one command-line export (which serves any name: the one filter instance
whose connections multi-conn-exportname=true groups by name; which flushes
reach the layer below is tested in check_multi_conn), and clients that
connect, write, flush and disconnect from several threads, so connections
close while other connections' group flushes run through them: the server
must stay up and exit cleanly (under the sanitizer builds, without a
report)."""

import json
import os
import shutil
import subprocess
import sys
import threading

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


def two_names(byname):
    srv = Server(["--filter", "multi-conn", "memory", "size=1M",
                  "multi-conn-mode=emulate",
                  "multi-conn-exportname=" + byname])
    hs = {}
    for name in ("a", "a2", "b"):
        hs[name] = nbd.NBD()
        hs[name].set_export_name(name[0])
        hs[name].connect_unix(srv.sock)
        check(hs[name].can_multi_conn(), "%s: multi-conn advertised" % name)
    hs["a"].pwrite(b"\x44" * 4096, 8192)
    hs["b"].pwrite(b"\x45" * 4096, 12288)
    hs["a2"].flush()
    check_eq(hs["a2"].pread(4096, 8192), b"\x44" * 4096, "a: seen under a")
    hs["b"].flush()
    # memory serves one disk whatever the name
    check_eq(hs["a"].pread(4096, 12288), b"\x45" * 4096, "b: seen under a")
    for h in hs.values():
        h.shutdown()
    check(srv.alive(), "server still up")
    check_eq(srv.stop(), 0, "server exit status")


STRESS_THREADS = 4
STRESS_ITERS = 25


def stress_client(srv, i, errors):
    try:
        for j in range(STRESS_ITERS):
            h = nbd.NBD()
            h.set_export_name("ab"[i % 2])
            h.connect_unix(srv.sock)
            h.pwrite(bytes([i + 1]) * 4096, 4096 * i)
            h.flush()
            h.pwrite(bytes([j + 1]) * 512, 4096 * i, nbd.CMD_FLAG_FUA)
            h.flush()
            if j % 2:
                h.shutdown()    # odd: NBD_CMD_DISC; even: just hang up
            del h
    except Exception as e:      # noqa: BLE001 - reported by the checker
        errors.append("client %d: %r" % (i, e))


def close_during_group_flush(byname):
    srv = Server(["--filter", "multi-conn", "memory", "size=1M",
                  "multi-conn-mode=emulate", "multi-conn-track-dirty=off",
                  "multi-conn-exportname=" + byname])
    errors = []
    ts = [threading.Thread(target=stress_client, args=(srv, i, errors))
          for i in range(STRESS_THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    check_eq(errors, [], "client errors")
    check(srv.alive(), "server still up")
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    for i in range(STRESS_THREADS):
        check_eq(h.pread(512, 4096 * i), bytes([STRESS_ITERS]) * 512,
                 "client %d's last FUA write" % i)
    h.shutdown()
    check_eq(srv.stop(), 0, "server exit status")
    log = srv.log_text()
    check("Sanitizer" not in log and "runtime error" not in log,
          "no sanitizer report in the server log")


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
for byname in ("true", "false"):
    C.run("two export names, multi-conn-exportname=%s" % byname, two_names,
          byname)
    C.run("closes during group flushes, multi-conn-exportname=%s" % byname,
          close_during_group_flush, byname)
C.finish()
