#!/usr/bin/python3
"""The retry and retry-request filters through real clients.

retry: a read that fails while the error filter's trigger file exists
succeeds once a thread removes the file, after reopening the layers below
(logged); over the nbd backend, an upstream server that dies and comes
back is reconnected and the client's reads go on; with retries=0 the
error is the client's at once; retry-readonly turns a failed write into a
read-only reopen.  retry-request: the same read succeeds without any
reopen, and a connection whose upstream appears late opens (the open is
retried).  Bad keys are refused with FILE:LINE."""

import os
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402
import opsfilters as O                    # noqa: E402

try:
    import nbd                            # noqa: F401
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("retry", "retry-request", "error", "memory", "nbd")
T.start_watchdog(150)
C = Checker("test_retry")
servers = []
TRIG = os.path.join(T.TMPDIR, "fail")


def remove_later(path, seconds):
    t = threading.Timer(seconds, lambda: os.path.exists(path) and
                        os.unlink(path))
    t.start()
    return t


def upstream_later(sock, size, seconds, name):
    """An upstream server on sock started by a shell after seconds: libnbd
    may hold Python's lock while it connects, so no Python thread could
    start it meanwhile.  Its log goes to TMPDIR/NAME.log."""
    log = open(os.path.join(T.TMPDIR, name + ".log"), "wb")
    return subprocess.Popen(["sh", "-c", 'sleep %s; exec "$0" -U "$1" '
                             'memory size=%d' % (seconds, size), T.NBDSTACK,
                             sock], stdout=log, stderr=log)


def stop_upstream(p, name):
    p.terminate()
    p.wait(10)
    with open(os.path.join(T.TMPDIR, name + ".log")) as f:
        T.log("  %s log: %s" % (name, f.read().strip().replace("\n", " | ")))


def faulty(filt, keys, name):
    srv = Server(["--filter", filt, "--filter", "error", "memory", "size=1M",
                  "error-pread-rate=100%", "error-file=" + TRIG] + keys,
                 name=name)
    servers.append(srv)
    return srv


def retry_recovers():
    open(TRIG, "w").close()
    srv = faulty("retry", ["retries=50", "retry-delay=100ms",
                           "retry-exponential=no"], "retry")
    h = O.connect(srv.uri)
    h.pwrite(b"k" * 512, 0)
    t = remove_later(TRIG, 1.0)
    check_eq(h.pread(512, 0), b"k" * 512, "read after the fault went away")
    t.join()
    h.shutdown()
    srv.stop()
    check("reopened the layers below" in srv.log_text(), "reopen logged")


def retry_gives_up():
    open(TRIG, "w").close()
    srv = faulty("retry", ["retries=0"], "noretry")
    h = O.connect(srv.uri)
    check_eq(O.errno_of(lambda: h.pread(512, 0)), "EIO", "retries=0")
    h.shutdown()
    srv = faulty("retry", ["retries=2", "retry-delay=10ms"], "giveup")
    h = O.connect(srv.uri)
    check_eq(O.errno_of(lambda: h.pread(512, 0)), "EIO", "retries=2")
    h.shutdown()
    srv.stop()
    os.unlink(TRIG)


def retry_readonly():
    srv = Server(["--filter", "retry", "--filter", "error", "memory",
                  "size=1M", "error-pwrite-rate=100%", "retry-readonly=yes",
                  "retry-delay=10ms"], name="ro")
    servers.append(srv)
    h = O.connect(srv.uri)
    check(O.errno_of(lambda: h.pwrite(b"x" * 512, 0)) in ("EROFS", "EPERM"),
          "a write after a read-only reopen is refused")
    check_eq(h.pread(4, 0), b"\0" * 4, "reads still work")
    h.shutdown()
    srv.stop()
    check("reopened the layers below read-only" in srv.log_text(),
          "read-only reopen logged")


def retry_reconnects_upstream():
    up_sock = os.path.join(T.TMPDIR, "up.sock")
    up = Server(["memory", "size=1M"], sock=up_sock, name="up1")
    servers.append(up)
    srv = Server(["--filter", "retry", "nbd", "socket=" + up_sock,
                  "retries=30", "retry-delay=100ms", "retry-exponential=no"],
                 name="proxy")
    servers.append(srv)
    h = O.connect(srv.uri)
    h.pwrite(b"a" * 512, 0)
    check_eq(h.pread(512, 0), b"a" * 512, "through the first upstream")
    up.kill()
    os.unlink(up_sock)
    back = upstream_later(up_sock, 1 << 20, 1, "up2")
    # The new upstream is a blank disk: the read works, and reads zeros.
    check_eq(h.pread(512, 0), b"\0" * 512, "after the upstream came back")
    h.shutdown()
    srv.stop()
    stop_upstream(back, "up2")


def retry_request_recovers():
    open(TRIG, "w").close()
    srv = faulty("retry-request", ["retry-request-retries=50",
                                   "retry-request-delay=100ms"], "rr")
    h = O.connect(srv.uri)
    t = remove_later(TRIG, 1.0)
    check_eq(h.pread(512, 0), b"\0" * 512, "read after the fault went away")
    t.join()
    h.shutdown()
    srv.stop()
    check("reopened" not in srv.log_text(), "nothing was reopened")


def retry_request_open():
    up_sock = os.path.join(T.TMPDIR, "upstream-late.sock")
    srv = Server(["--filter", "retry-request", "nbd", "socket=" + up_sock,
                  "retry-request-retries=50", "retry-request-delay=100ms"],
                 name="late")
    servers.append(srv)
    back = upstream_later(up_sock, 65536, 1, "lateup")
    h = O.connect(srv.uri)
    check_eq(h.get_size(), 65536, "the late upstream's disk")
    h.shutdown()
    srv.stop()
    stop_upstream(back, "lateup")
    srv = Server(["--filter", "retry-request", "nbd", "socket=" + up_sock +
                  ".none", "retry-request-open=false"], name="noopen")
    servers.append(srv)
    check(O.errno_of(lambda: O.connect(srv.uri)) != "ok",
          "retry-request-open=false: the open fails at once")
    check(srv.log_text().count("cannot connect to upstream") == 1,
          "retry-request-open=false: one try")
    srv.stop()


def bad_keys_refused():
    O.config_refused("retry retries=lots", "retries")
    O.config_refused("retry retry-delay=soon", "retry-delay")
    O.config_refused("retry retry-request-retries=1", "unknown key")
    O.config_refused("retry-request retry-request-retries=2000",
                     "retry-request-retries")
    O.config_accepted("retry retries=3 retry-delay=500ms "
                      "retry-exponential=no retry-readonly=yes")
    O.config_accepted("retry-request retry-request-retries=1 "
                      "retry-request-delay=1 retry-request-open=false")


C.run("retry: a read succeeds once the fault goes away", retry_recovers)
C.run("retry: retries=0 and used-up retries give the error", retry_gives_up)
C.run("retry: retry-readonly reopens read-only", retry_readonly)
C.run("retry: an upstream that restarts is reconnected",
      retry_reconnects_upstream)
C.run("retry-request: a read succeeds without reopening",
      retry_request_recovers)
C.run("retry-request: a late upstream is waited for at open",
      retry_request_open)
C.run("bad keys are refused with FILE:LINE", bad_keys_refused)
C.finish(servers)
