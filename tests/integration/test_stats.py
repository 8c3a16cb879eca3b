#!/usr/bin/python3
"""The stats filter through libnbd: after a known set of requests (three
4 KiB reads, two 512-byte writes, a flush, and two reads that fail
through the error filter), SIGUSR1 writes the report with exact op,
error and byte counts and latency percentiles, and the server keeps
serving; SIGTERM writes the final report and exits 0; statsappend=yes
appends every report; and SIGUSR1 to a server without the stats filter
neither kills it nor writes anything.  statsthreshold= (default 95, 100,
0): for one fixed nbdsh request sequence, the size and alignment
breakdown is nbdkit's text, line for line (its "other sizes" bytes are
the method's total there, the bytes of the requests not shown here:
checked as such); a threshold over 100 is refused."""

import os
import re
import shutil
import signal
import subprocess
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


def wait_listening(path, timeout=10):
    """Until a server listens on the Unix socket path (the file appears
    before nbdkit listens on it), without connecting: a probe would be
    one more client in nbdkit's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/unix") as f:
            for line in f:
                v = line.split()
                # Flags 00010000: __SO_ACCEPTCON, a listening socket.
                if len(v) >= 8 and v[7] == path and v[3] == "00010000":
                    return
        time.sleep(0.05)


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


# Group sizes with distinct counts (nbdkit shows one group of equal
# counts only: docs/filters/stats.md) and offsets of several alignments,
# 0 among them (aligned to everything).
READS = [(4096, 4096), (4096, 8192), (4096, 12288), (4096, 1 << 20),
         (4096, 0), (4096, 5 * 4096), (512, 0), (512, 512), (512, 1536),
         (65536, 65536), (65536, 3 << 16), (1, 7)]
WRITES = [(4096, 4096), (4096, 0), (4096, 3 << 20), (4096, 40960),
          (8192, 8192), (8192, 24576), (1 << 20, 1 << 20), (700, 100),
          (700, 300), (700, 2)]
TRIMS = [(1 << 20, 0), (4096, 1 << 22), (4096, 1 << 21)]
ZEROS = [(65536, 1 << 20), (65536, 3 << 16), (4096, 4096)]
SIZES = {"read": READS, "write": WRITES, "trim": TRIMS, "zero": ZEROS,
         "cache": [(4096, 0)], "extents": [(65536, 0)]}
SEQUENCE = r"""
import nbd, sys
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_unix(sys.argv[1])
for n, o in %r:
    h.pread(n, o)
for n, o in %r:
    h.pwrite(b"w" * n, o)
for n, o in %r:
    h.trim(n, o)
h.zero(*%r[0])
h.zero(*%r[1], nbd.CMD_FLAG_NO_HOLE)
h.zero(*%r[2])
h.cache(4096, 0)
h.block_status(65536, 0, lambda *a: 0)
h.flush()
h.shutdown()
""" % (READS, WRITES, TRIMS, ZEROS, ZEROS, ZEROS)


def breakdown(text):
    """The breakdown lines of a report, by method: {method: [lines]}; and
    the method lines' op counts and bytes."""
    out, heads, cur = {}, {}, None
    for line in text.splitlines():
        m = re.match(r"^(\w+): (\d+) ops, [0-9.]+ s, ([^,]+),", line)
        if m:
            cur = m.group(1)
            heads[cur] = (int(m.group(2)), m.group(3))
            out[cur] = []
        elif cur and line.startswith("    "):
            out[cur].append(line)
    return out, heads


def human(n):
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            return "%.2f %s" % (n / k, unit)
    return "%d bytes" % n


def threshold_same_as_nbdkit():
    if not shutil.which("nbdkit"):
        T.log("  (skipped: nbdkit not installed)")
        return
    script = os.path.join(T.TMPDIR, "seq.py")
    with open(script, "w") as f:
        f.write(SEQUENCE)
    for extra in ([], ["statsthreshold=100"], ["statsthreshold=50"],
                  ["statsthreshold=0"]):
        ours_f = os.path.join(T.TMPDIR, "ours.stats")
        theirs_f = os.path.join(T.TMPDIR, "theirs.stats")
        srv = Server(["--filter", "stats", "memory", "size=8M",
                      "statsfile=" + ours_f] + extra, name="thr")
        servers.append(srv)
        subprocess.run(["/usr/bin/python3", script, srv.sock], check=True)
        check_eq(srv.stop(), 0, "exit status")
        ksock = os.path.join(T.TMPDIR, "k%d.sock" % len(servers))
        k = subprocess.Popen(["nbdkit", "-f", "-U", ksock, "--filter=stats",
                              "memory", "8M", "statsfile=" + theirs_f] + extra,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        wait_listening(ksock)
        try:
            subprocess.run(["/usr/bin/python3", script, ksock], check=True)
        finally:
            k.terminate()
            k.wait(10)
        with open(ours_f) as f:
            ours, oheads = breakdown(f.read())
        with open(theirs_f) as f:
            theirs, theads = breakdown(f.read())
        check_eq(sorted(ours), sorted(theirs), "%s: methods" % extra)
        # The total counts cache requests (nbdkit's leaves them out):
        # bytes only there.
        check_eq(oheads["total"][1], theads["total"][1], "total bytes")
        for m in theirs:
            if m != "total":
                check_eq(oheads[m], theads[m], "%s: %s ops and bytes"
                         % (extra, m))
            t = theirs[m]
            o = ours[m]
            if t and t[-1].startswith("    other sizes:"):
                # nbdkit: the method's bytes; here: those not shown.
                shown = {int(x.split()[0]) for x in t if " bits: " in x}
                left = sum(n for n, _ in SIZES[m]
                           if n.bit_length() - 1 not in shown)
                t = t[:-1] + [re.sub(r"reqs, .* total\)$",
                                     "reqs, %s total)" % human(left), t[-1])]
            check_eq(o, t, "%s: %s breakdown" % (extra, m))
        if extra == ["statsthreshold=0"]:
            check(all(not v for v in ours.values()), "no breakdown at 0")
        else:
            check(any(ours.values()), "a breakdown at %s" % extra)
    r = subprocess.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "x"),
                        "--filter", "stats", "memory", "size=1M",
                        "statsfile=/dev/null", "statsthreshold=101"],
                       capture_output=True, text=True, timeout=10)
    check(r.returncode != 0 and "statsthreshold=101: must be between 0 and "
          "100" in r.stderr, "statsthreshold=101: %r" % r.stderr)


C.run("statsthreshold: the breakdown is nbdkit's", threshold_same_as_nbdkit)
C.run("SIGUSR1 reports exact counts; exit writes the final report",
      report_on_usr1_and_exit)
C.run("statsappend=yes appends each report", append_reports)
C.run("SIGUSR1 without the stats filter does nothing", usr1_without_stats)
C.finish(servers)
