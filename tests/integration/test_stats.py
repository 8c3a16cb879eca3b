#!/usr/bin/python3
"""The stats filter through libnbd: after a known set of requests (three
4 KiB reads, two 512-byte writes, a flush, and two reads that fail
through the error filter), SIGUSR1 writes the report with exact op,
error and byte counts and latency percentiles, and the server keeps
serving; SIGTERM writes the final report and exits 0; statsappend=yes
appends every report; and SIGUSR1 to a server without the stats filter
neither kills it nor writes anything."""

import os
import re
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("stats", "error", "memory")
T.start_watchdog()
C = Checker("test_stats")
servers = []


def wait_for(path, want, timeout=10):
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                text = f.read()
            if re.search(want, text):
                return text
        time.sleep(0.05)
    raise T.CheckFailed("%s: no %r in %r" % (path, want, text))


def requests(sock, errfile):
    h = nbd.NBD()
    h.connect_unix(sock)
    for i in range(3):
        h.pread(4096, i * 4096)
    h.pwrite(b"a" * 512, 0)
    h.pwrite(b"b" * 512, 512)
    h.flush()
    open(errfile, "w").close()
    for _ in range(2):
        try:
            h.pread(4096, 0)
        except nbd.Error:
            pass
    os.unlink(errfile)
    return h


def report_on_usr1_and_exit():
    path = os.path.join(T.TMPDIR, "stats.txt")
    errfile = os.path.join(T.TMPDIR, "err1")
    srv = Server(["--filter", "stats", "--filter", "error", "memory",
                  "size=1M", "statsfile=" + path, "error-pread=EIO",
                  "error-pread-rate=100%", "error-pread-file=" + errfile],
                 name="st")
    servers.append(srv)
    h = requests(srv.sock, errfile)
    srv.proc.send_signal(signal.SIGUSR1)
    text = wait_for(path, r"read: 5 ops")
    check(srv.alive(), "the server died of SIGUSR1")
    check(re.search(r"^total: 8 ops, [0-9.]+ s, 13.00 KiB, ", text, re.M),
          "total line: %r" % text)
    check(re.search(r"^read: 5 ops, [0-9.]+ s, 12.00 KiB, .* op, .* total\n"
                    r"  errors: 2, latency p50 [0-9.]+ [nu]?s, p90 .*, "
                    r"p99 .*, max [0-9.]+ [nmu]?s$", text, re.M),
          "read lines: %r" % text)
    check(re.search(r"^write: 2 ops, [0-9.]+ s, 1.00 KiB, ", text, re.M),
          "write line: %r" % text)
    check(re.search(r"^flush: 1 ops, .*\n  errors: 0,", text, re.M),
          "flush lines: %r" % text)
    check("trim:" not in text, "methods never called are left out")
    h.pread(512, 0)                 # still serving after the report
    h.shutdown()
    check_eq(srv.stop(), 0, "exit status after SIGTERM")
    with open(path) as f:
        final = f.read()
    check(re.search(r"^read: 6 ops, ", final, re.M) and
          final.count("total:") == 1,
          "final report replaces the first: %r" % final)


def append_reports():
    path = os.path.join(T.TMPDIR, "stats-app.txt")
    srv = Server(["--filter", "stats", "memory", "size=1M",
                  "statsfile=" + path, "statsappend=yes"], name="stapp")
    servers.append(srv)
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    h.pread(512, 0)
    srv.proc.send_signal(signal.SIGUSR1)
    wait_for(path, r"read: 1 ops")
    h.pread(512, 0)
    h.shutdown()
    check_eq(srv.stop(), 0, "exit status")
    with open(path) as f:
        text = f.read()
    check_eq(text.count("total:"), 2, "reports in the file")
    check("read: 2 ops" in text, "the final report counts both reads")


def usr1_without_stats():
    srv = Server(["memory", "size=1M"], name="nostats")
    servers.append(srv)
    srv.proc.send_signal(signal.SIGUSR1)
    time.sleep(0.3)
    check(srv.alive(), "SIGUSR1 killed a server without the stats filter")
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    check_eq(h.pread(4, 0), b"\0" * 4, "read after SIGUSR1")
    h.shutdown()
    check_eq(srv.stop(), 0, "exit status")


C.run("SIGUSR1 reports exact counts; exit writes the final report",
      report_on_usr1_and_exit)
C.run("statsappend=yes appends each report", append_reports)
C.run("SIGUSR1 without the stats filter does nothing", usr1_without_stats)
C.finish(servers)
