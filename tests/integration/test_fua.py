#!/usr/bin/python3
"""The fua filter through real clients, against nbdkit's.

For every fuamode both servers run over a memory disk; the flags nbdinfo
--json shows must agree (nbdkit 1.32.5 refuses fuamode=none by name, a
known fault: nbdstack accepts it and matches nbdkit's default).  Then FUA
writes and flushes go through libnbd, and a bad mode fails at startup
naming the choices.
"""

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

T.require_layers("fua", "memory")
T.start_watchdog()
C = Checker("test_fua")
FLAGS = ("can_fua", "can_flush", "can_zero", "can_trim", "can_cache")


def flags(srv):
    out = subprocess.run(["nbdinfo", "--json", srv.uri], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    exp = json.loads(out)["exports"][0]
    return {k: exp.get(k) for k in FLAGS}


def ours(keys):
    return Server(["--filter", "fua", "memory", "size=1M"] + keys)


def theirs(keys):
    return Server(["-f", "--filter=fua", "memory", "1M"] + keys,
                  binary="nbdkit")


def same_flags_as_nbdkit(keys):
    a = ours(keys)
    b = theirs(keys)
    try:
        check_eq(flags(a), flags(b), "flags with %s" % (keys or "no keys"))
    finally:
        a.stop()
        b.stop()


def none_by_name_is_the_default():
    a = ours(["fuamode=none"])
    b = theirs([])
    try:
        check_eq(flags(a), flags(b), "fuamode=none against nbdkit's default")
        check_eq(flags(a)["can_fua"], False, "no FUA advertised")
    finally:
        a.stop()
        b.stop()


def fua_writes_and_flushes(mode):
    srv = ours(["fuamode=" + mode])
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    check(h.can_fua(), "%s: FUA advertised" % mode)
    h.pwrite(b"\x55" * 4096, 8192, nbd.CMD_FLAG_FUA)
    h.zero(4096, 0, nbd.CMD_FLAG_FUA)
    h.flush()
    check_eq(h.pread(4096, 8192), b"\x55" * 4096, "%s: data written" % mode)
    check_eq(h.pread(4096, 0), b"\0" * 4096, "%s: zeros written" % mode)
    h.shutdown()
    srv.stop()


def bad_mode_refused():
    res = subprocess.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "bad.sock"),
                          "--filter", "fua", "memory", "size=1M",
                          "fuamode=sometimes"],
                         capture_output=True, text=True, timeout=30)
    check(res.returncode != 0, "bad fuamode exits non-zero")
    check("one of: none emulate native force pass discard" in res.stderr,
          "choices listed: %r" % res.stderr)


if shutil.which("nbdkit") and shutil.which("nbdinfo"):
    for keys in ([], ["fuamode=emulate"], ["fuamode=native"],
                 ["fuamode=force"], ["fuamode=pass"], ["fuamode=discard"]):
        C.run("same flags as nbdkit: %s" % (keys or "default"),
              same_flags_as_nbdkit, keys)
    C.run("fuamode=none is nbdkit's default", none_by_name_is_the_default)
for mode in ("emulate", "native", "force", "pass", "discard"):
    C.run("FUA writes with fuamode=%s" % mode, fua_writes_and_flushes, mode)
C.run("bad fuamode refused with the choices", bad_mode_refused)
C.finish()
