#!/usr/bin/python3
"""The error filter through real clients: libnbd sees the configured errno
(ENOSPC on reads with error-pread-rate=100%); the trigger file turns errors
on and off on an open connection; qemu-io reports the injected error; and
for every method nbdkit 1.32's error filter supports, libnbd sees the same
errno from nbdkit and from nbdstack with the same keys (skipped when
nbdkit is not installed).  Bad rates are refused at startup."""

import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq, log  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("error", "memory")
T.start_watchdog()
C = Checker("test_error")
servers = []


def connect(uri):
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h


def errno_of(fn):
    try:
        fn()
        return "ok"
    except nbd.Error as e:
        return e.errno


def all_methods(h):
    """The errno (or "ok") of each method, flush last."""
    return {
        "pread": errno_of(lambda: h.pread(512, 0)),
        "pwrite": errno_of(lambda: h.pwrite(b"x" * 512, 0)),
        "trim": errno_of(lambda: h.trim(512, 0)),
        "zero": errno_of(lambda: h.zero(512, 0)),
        "extents": errno_of(lambda: h.block_status(512, 0,
                                                   lambda *a: 0)),
        "cache": errno_of(lambda: h.cache(512, 0)),
        "flush": errno_of(lambda: h.flush()),
    }


def read_enospc():
    srv = Server(["--filter", "error", "memory", "size=1M",
                  "error-pread-rate=100%", "error=ENOSPC"], name="enospc")
    servers.append(srv)
    h = connect(srv.uri)
    got = all_methods(h)
    check_eq(got["pread"], "ENOSPC", "pread")
    for m in ("pwrite", "trim", "zero", "extents", "cache", "flush"):
        check_eq(got[m], "ok", m)
    h.shutdown()
    check_eq(srv.stop(), 0, "exit status")


def trigger_file_toggles():
    trig = os.path.join(T.TMPDIR, "inject")
    srv = Server(["--filter", "error", "memory", "size=1M",
                  "error-rate=1", "error-file=" + trig, "error=EPERM"],
                 name="trigger")
    servers.append(srv)
    h = connect(srv.uri)
    check_eq(errno_of(lambda: h.pread(512, 0)), "ok", "before the file")
    open(trig, "w").close()
    check_eq(errno_of(lambda: h.pread(512, 0)), "EPERM", "with the file")
    check_eq(errno_of(lambda: h.pwrite(b"y" * 512, 0)), "EPERM",
             "write with the file")
    os.unlink(trig)
    check_eq(errno_of(lambda: h.pread(512, 0)), "ok", "after removing it")
    h.pwrite(b"z" * 512, 0)
    check_eq(h.pread(512, 0), b"z" * 512, "data after recovery")
    h.shutdown()
    srv.stop()


def qemu_io_sees_error():
    if not shutil.which("qemu-io"):
        log("qemu-io not installed: case skipped")
        return
    srv = Server(["--filter", "error", "memory", "size=1M",
                  "error-pwrite-rate=100%", "error-pwrite=ENOSPC"],
                 name="qemu")
    servers.append(srv)
    args = ["qemu-io", "-f", "raw", srv.uri]
    p = subprocess.run(args + ["-c", "write -P 0x55 0 4k"],
                       capture_output=True, timeout=60)
    out = (p.stdout + p.stderr).decode()
    check("No space left on device" in out,
          "qemu-io write did not report ENOSPC: %r" % out)
    p = subprocess.run(args + ["-c", "read 0 4k"], capture_output=True,
                       timeout=60)
    out = (p.stdout + p.stderr).decode()
    check(p.returncode == 0 and "read 4096/4096" in out,
          "qemu-io read failed: %r" % out)
    srv.stop()


_nbdkit_n = [0]


def nbdkit_run(keys):
    """all_methods() of nbdkit's error filter with keys."""
    _nbdkit_n[0] += 1
    sock = os.path.join(T.TMPDIR, "nbdkit%d.sock" % _nbdkit_n[0])
    pidf = os.path.join(T.TMPDIR, "nbdkit%d.pid" % _nbdkit_n[0])
    p = subprocess.run(["nbdkit", "-U", sock, "-P", pidf, "--filter=error",
                        "memory", "1M"] + keys, capture_output=True,
                       timeout=30)
    if p.returncode != 0:
        raise T.CheckFailed("nbdkit failed: %s" % p.stderr.decode())
    try:
        h = connect("nbd+unix:///?socket=" + sock)
        got = all_methods(h)
        h.shutdown()
    finally:
        with open(pidf) as f:
            os.kill(int(f.read()), 15)
    return got


def same_as_nbdkit():
    if not shutil.which("nbdkit"):
        log("nbdkit not installed: case skipped")
        return
    cases = [
        ["error-rate=100%"],
        ["error-rate=100%", "error=ESHUTDOWN"],
        ["error-rate=1", "error=EINVAL"],
        ["error=ENOMEM", "error-pwrite-rate=100%", "error-zero-rate=1"],
        ["error-extents-rate=100%", "error-extents=EPERM"],
        ["error-cache-rate=100%", "error-trim-rate=100%", "error=ENOSPC"],
        ["error-rate=0%"],
    ]
    for keys in cases:
        want = nbdkit_run(keys)
        srv = Server(["--filter", "error", "memory", "size=1M"] + keys,
                     name="cmp")
        h = connect(srv.uri)
        got = all_methods(h)
        h.shutdown()
        srv.stop()
        log("  %s: nbdkit %s" % (" ".join(keys), want))
        check_eq(got, want, " ".join(keys))


def bad_rates_refused():
    for bad in ("error-rate=150%", "error-rate=-1", "error-pread-rate=abc"):
        p = subprocess.run([T.NBDSTACK, "-U",
                            os.path.join(T.TMPDIR, "bad.sock"), "--filter",
                            "error", "memory", "size=1M", bad],
                           capture_output=True, timeout=10)
        err = p.stderr.decode()
        check(p.returncode != 0, "%s accepted" % bad)
        check("expected a percentage 0%..100% or a fraction 0..1" in err,
              "%s: message %r" % (bad, err))


C.run("error-pread-rate=100% error=ENOSPC fails reads only",
      read_enospc)
C.run("the trigger file turns errors on and off mid-connection",
      trigger_file_toggles)
C.run("qemu-io sees the injected ENOSPC", qemu_io_sees_error)
C.run("the client sees the same errno as with nbdkit", same_as_nbdkit)
C.run("bad rates are refused at startup", bad_rates_refused)
C.finish(servers)
