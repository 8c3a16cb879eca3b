#!/usr/bin/python3
"""The noparallel filter through libnbd, over the test-only testslow layer.

testslow sleeps WDELAY before every write.  N writes sent at once on one
connection take about WDELAY without the filter (the workers overlap them)
and about N x WDELAY with it; serialize=all-requests serialises two
connections' writes too; serialize=connections keeps a second client in
the handshake until the first leaves.  Bounds are generous: only
"overlapped" against "one after another" is told apart.
"""

import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

BIN = T.require_test_layer("testslow")
T.require_layers("noparallel", binary=BIN)
T.start_watchdog(100)
C = Checker("test_noparallel")
WDELAY = 0.4
N = 4


def serve(*filters):
    args = []
    for f in filters:
        args += ["--filter", f]
    return Server(args + ["memory", "size=1M", "wdelay=%gs" % WDELAY],
                  binary=BIN)


def connect(sock):
    h = nbd.NBD()
    h.connect_unix(sock)
    return h


def concurrent_writes(handles, n):
    """n writes on each handle at once; seconds until all are done."""
    t0 = time.monotonic()
    cookies = []
    for h in handles:
        for i in range(n):
            cookies.append((h, h.aio_pwrite(nbd.Buffer.from_bytearray(
                bytearray(b"x" * 4096)), i * 4096)))
    for h, c in cookies:
        while not h.aio_command_completed(c):
            h.poll(-1)
    return time.monotonic() - t0


def overlap_without_filter():
    srv = serve("testslow")
    h = connect(srv.sock)
    dt = concurrent_writes([h], N)
    check(dt < N * WDELAY * 0.75, "%d writes took %.2fs: not overlapped "
          "without noparallel (control)" % (N, dt))
    h.shutdown()
    srv.stop()


def requests_serialised():
    srv = serve("noparallel", "testslow")
    h = connect(srv.sock)
    dt = concurrent_writes([h], N)
    check(dt >= N * WDELAY * 0.9, "%d writes took %.2fs, < %d x %.1fs: "
          "they overlapped" % (N, dt, N, WDELAY))
    # Two connections may still overlap each other (serialize=requests).
    h2 = connect(srv.sock)
    dt = concurrent_writes([h, h2], 1)
    check(dt < 2 * WDELAY * 0.9, "one write on each of two connections took "
          "%.2fs: serialize=requests serialised connections" % dt)
    h.shutdown()
    h2.shutdown()
    srv.stop()


def all_requests_serialised():
    srv = Server(["--filter", "noparallel", "--filter", "testslow", "memory",
                  "size=1M", "wdelay=%gs" % WDELAY,
                  "serialize=all-requests"], binary=BIN)
    h1, h2 = connect(srv.sock), connect(srv.sock)
    dt = concurrent_writes([h1, h2], 2)
    check(dt >= 4 * WDELAY * 0.9, "2 x 2 writes on two connections took "
          "%.2fs, < 4 x %.1fs: they overlapped" % (dt, WDELAY))
    h1.shutdown()
    h2.shutdown()
    srv.stop()


def connections_serialised():
    srv = Server(["--filter", "noparallel", "memory", "size=1M",
                  "serialize=connections"], binary=BIN)
    h1 = connect(srv.sock)
    check(not h1.can_multi_conn(), "multi-conn offered with "
          "serialize=connections")
    h2 = nbd.NBD()
    h2.aio_connect_unix(srv.sock)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and not h2.aio_is_ready():
        h2.poll(100)
    check(not h2.aio_is_ready(), "a second client got in while the first "
          "was connected")
    h1.pwrite(b"a" * 512, 0)
    h1.shutdown()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not h2.aio_is_ready():
        h2.poll(100)
    check(h2.aio_is_ready(), "the second client did not get in after the "
          "first left")
    check(h2.pread(512, 0) == b"a" * 512, "second client reads the write")
    h2.shutdown()
    srv.stop()


def connections_under_multi_conn():
    # multi-conn above noparallel would say yes (emulate, unsafe); one
    # connection at a time must still not offer multi-conn, or nbdcopy's
    # second connection waits for its own first (as nbdkit: no).
    for mode in ("emulate", "unsafe"):
        srv = Server(["--filter", "multi-conn", "--filter", "noparallel",
                      "memory", "size=1M", "serialize=connections",
                      "multi-conn-mode=" + mode], binary=BIN)
        h = connect(srv.sock)
        check(not h.can_multi_conn(), "multi-conn offered with "
              "multi-conn-mode=%s above serialize=connections" % mode)
        h.shutdown()
        out = os.path.join(T.TMPDIR, "copy.img")
        try:
            r = subprocess.run(["nbdcopy", "nbd+unix:///?socket=" + srv.sock,
                                out], timeout=30, capture_output=True)
            check(r.returncode == 0, "nbdcopy from it failed: %r" % (r,))
        except subprocess.TimeoutExpired:
            check(False, "nbdcopy from it hung (multi-conn offered?)")
        srv.stop()
    # without serialize=connections the filter's yes stands
    srv = Server(["--filter", "multi-conn", "--filter", "noparallel",
                  "memory", "size=1M", "serialize=requests",
                  "multi-conn-mode=unsafe"], binary=BIN)
    h = connect(srv.sock)
    check(h.can_multi_conn(), "multi-conn-mode=unsafe over serialize="
          "requests should offer multi-conn")
    h.shutdown()
    srv.stop()


C.run("without noparallel, writes overlap (control)", overlap_without_filter)
C.run("serialize=requests: one connection's writes one at a time",
      requests_serialised)
C.run("serialize=all-requests: two connections' writes one at a time",
      all_requests_serialised)
C.run("serialize=connections: a second client waits for the first",
      connections_serialised)
C.run("serialize=connections under multi-conn: no multi-conn, nbdcopy works",
      connections_under_multi_conn)
C.finish()
