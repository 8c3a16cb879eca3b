#!/usr/bin/python3
"""The delay filter through libnbd: a delayed read arrives after its delay
with the right data; two reads in flight on one connection, and on two
connections, both finish in about one delay, not two (the bound is
generous: under 1.8 s for 1 s delays); SIGTERM during a 60 s delay makes
the server exit within a few seconds and the read fail; a bad value is
refused at startup with the accepted forms."""

import os
import signal
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import MiB, Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("delay", "memory")
T.start_watchdog()
C = Checker("test_delay")
servers = []


def delayed_read_has_data():
    srv = Server(["--filter", "delay", "memory", "size=1M",
                  "delay-read=300ms"], name="d300")
    servers.append(srv)
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    h.pwrite(b"\xab" * 4096, 8192)
    t0 = time.monotonic()
    data = h.pread(4096, 8192)
    took = time.monotonic() - t0
    check_eq(data, b"\xab" * 4096, "data read back")
    check(took >= 0.29, "read took %.3f s, expected >= 0.3 s" % took)
    h.shutdown()
    srv.stop()


def two_reads_one_connection():
    srv = Server(["--filter", "delay", "memory", "size=1M",
                  "delay-read=1s"], name="d1conn")
    servers.append(srv)
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    bufs = [nbd.Buffer(512), nbd.Buffer(512)]
    t0 = time.monotonic()
    for i, b in enumerate(bufs):
        h.aio_pread(b, i * 512)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    took = time.monotonic() - t0
    check(0.95 <= took < 1.8,
          "two 1 s reads in flight took %.2f s (expected about 1 s)" % took)
    h.shutdown()
    srv.stop()


def two_reads_two_connections():
    srv = Server(["--filter", "delay", "memory", "size=1M",
                  "delay-read=1s"], name="d2conn")
    servers.append(srv)
    hs = []
    for _ in range(2):
        h = nbd.NBD()
        h.connect_unix(srv.sock)
        hs.append(h)
    errors = []

    def read(h):
        try:
            h.pread(512, 0)
        except nbd.Error as e:
            errors.append(e)

    t0 = time.monotonic()
    ts = [threading.Thread(target=read, args=(h,)) for h in hs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.monotonic() - t0
    check(not errors, "reads failed: %s" % errors)
    check(0.95 <= took < 1.8,
          "1 s reads on two connections took %.2f s (expected about 1 s)"
          % took)
    for h in hs:
        h.shutdown()
    srv.stop()


def sigterm_ends_long_delay():
    srv = Server(["--filter", "delay", "memory", "size=1M",
                  "delay-read=60s"], name="d60")
    servers.append(srv)
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    result = []

    def read():
        try:
            h.pread(512, 0)
            result.append("ok")
        except nbd.Error as e:
            result.append(e.errno)

    t = threading.Thread(target=read)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    rc = srv.stop(signal.SIGTERM, timeout=10)
    took = time.monotonic() - t0
    t.join(10)
    check(rc is not None, "server still running 10 s after SIGTERM")
    check(took < 5, "server took %.1f s to exit during a 60 s delay" % took)
    check(result and result[0] != "ok",
          "the delayed read did not fail: %r" % result)


def bad_value_refused():
    p = subprocess.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "bad.sock"),
                        "--filter", "delay", "memory", "size=1M",
                        "rdelay=soon"], capture_output=True, timeout=10)
    err = p.stderr.decode()
    check(p.returncode != 0, "rdelay=soon accepted")
    check("rdelay: invalid value 'soon'" in err and "duration" in err,
          "message: %r" % err)


def open_delay_and_nbdkit_forms():
    srv = Server(["--filter", "delay", "memory", "size=1M",
                  "delay-open=300ms", "rdelay=10ms", "wdelay=1.5ms"],
                 name="dopen")
    servers.append(srv)
    t0 = time.monotonic()
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    took = time.monotonic() - t0
    check(took >= 0.29, "connect took %.3f s, expected >= 0.3 s" % took)
    h.pwrite(b"x" * 512, 0)
    check_eq(h.pread(512, 0), b"x" * 512, "data")
    h.shutdown()
    srv.stop()


C.run("delayed read returns the data after its delay", delayed_read_has_data)
C.run("two delayed reads on one connection overlap", two_reads_one_connection)
C.run("delayed reads on two connections overlap", two_reads_two_connections)
C.run("SIGTERM during a 60 s delay exits promptly", sigterm_ends_long_delay)
C.run("a bad duration is refused at startup", bad_value_refused)
C.run("delay-open and nbdkit's duration forms", open_delay_and_nbdkit_forms)
C.finish(servers)
