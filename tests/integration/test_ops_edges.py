#!/usr/bin/python3
"""The operations filters against nbdkit 1.32.5 on edge cases, request by
request with a raw client: zero-length requests, requests at, across and
past the end, unaligned writes, zeroes and trims with FUA, NO_HOLE and
FAST_ZERO, cache, flush with FUA, read with FUA and DF, block status
(empty, across the end, REQ_ONE), an unknown flag; then two connections
at once (a FUA write on one is read on the other).  For each filter
(log, stats, ip, scan, readahead, cacheextents, retry, retry-request,
rate, limit, exportname, checkwrite, exitlast) over a memory disk, every
reply (error, data, extents) and the transmission flags must be
nbdkit's; and the log filter's lines for the session are nbdkit's (the
requests the server refuses reach no filter, there as here).  One
difference is the server's, not a filter's, and is
expected: a zero-length write or write-zeroes gets EINVAL here, ENOSPC
from nbdkit (which treats it as out of range).  protect and swab differ
on purpose (their pages) and have their own nbdkit comparisons."""

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, check, check_eq  # noqa: E402

if not shutil.which("nbdkit"):
    T.skip("nbdkit is not installed")
FILTERS = [
    (["log"], ["logfile=/dev/null"]),
    (["stats"], ["statsfile=/dev/null"]),
    (["ip"], ["allow=anyunix", "deny=all"]),
    (["scan"], []),
    (["readahead"], []),
    (["cacheextents"], []),
    (["retry"], []),
    (["retry-request"], []),
    (["rate"], ["rate=1G"]),
    (["limit"], ["limit=2"]),
    (["exportname"], ["exportname=a"]),
    (["checkwrite"], []),
    (["exitlast"], []),
    (["log", "stats"], ["logfile=/dev/null", "statsfile=/dev/null"]),
]
T.require_layers("memory", *sorted({f for fs, _ in FILTERS for f in fs}))
T.start_watchdog(240)
C = Checker("test_ops_edges")

SIZE = 1 << 20
FUA, NO_HOLE, DF, REQ_ONE, FAST = 1, 2, 4, 8, 16
EINVAL, ENOSPC = 22, 28


def sequence(r):
    out = []

    def rd(off, n, fl=0):
        err, data = r.read(off, n, fl)
        out.append(("read", off, n, fl, err,
                    hashlib.md5(data).hexdigest() if not err else ""))

    def cmd(name, c, off, n, fl=0, data=b""):
        out.append((name, off, n, fl, r.cmd(c, off, n, fl, data)))

    def bs(off, n, fl=0):
        ck = r.request(T.CMD_BLOCK_STATUS, off, n, fl)
        err, _, chunks = r.recv_structured(ck)
        ext = []
        for c in chunks:
            if c.get("type") == T.REPLY_TYPE_BLOCK_STATUS:
                p = c["payload"][4:]
                ext += [struct.unpack(">II", p[i:i + 8])
                        for i in range(0, len(p), 8)]
        out.append(("bs", off, n, fl, err, tuple(ext)))

    cmd("write", T.CMD_WRITE, 0, 8192, 0, bytes(range(256)) * 32)
    rd(0, 0)
    rd(SIZE, 0)
    rd(SIZE + 1, 0)
    rd(SIZE - 256, 512)
    rd(SIZE, 1)
    rd(SIZE - 1, 1)
    cmd("write", T.CMD_WRITE, 0, 0)
    cmd("write", T.CMD_WRITE, SIZE, 0)
    cmd("write", T.CMD_WRITE, SIZE - 256, 512, 0, b"x" * 512)
    cmd("trim", T.CMD_TRIM, 0, 0)
    cmd("zero", T.CMD_WRITE_ZEROES, 0, 0)
    cmd("cache", T.CMD_CACHE, 0, 0)
    cmd("trim", T.CMD_TRIM, SIZE - 256, 512)
    cmd("zero", T.CMD_WRITE_ZEROES, SIZE - 256, 512)
    cmd("cache", T.CMD_CACHE, SIZE - 256, 512)
    cmd("write", T.CMD_WRITE, 3, 1, FUA, b"Z")
    rd(0, 16)
    cmd("zero", T.CMD_WRITE_ZEROES, 5, 3, FUA | NO_HOLE)
    rd(0, 16)
    cmd("zero", T.CMD_WRITE_ZEROES, 8, 3, FAST)
    rd(0, 16)
    cmd("zero", T.CMD_WRITE_ZEROES, 4096, 4096, FUA)
    rd(4096, 16)
    cmd("trim", T.CMD_TRIM, 1, 1000, FUA)
    rd(0, 2048)
    cmd("cache", T.CMD_CACHE, 7, 9)
    cmd("flush", T.CMD_FLUSH, 0, 0)
    cmd("flush", T.CMD_FLUSH, 0, 0, FUA)
    rd(0, 16, FUA)
    rd(0, 16, DF)
    bs(0, 0)
    bs(0, 65536)
    bs(SIZE - 256, 512)
    bs(0, 65536, REQ_ONE)
    bs(SIZE, 1)
    cmd("write", T.CMD_WRITE, 0, 4, 1 << 12, b"abcd")
    return out


def session(sock):
    a = T.connect_go(sock, b"", structured=True, meta=True)
    b = T.connect_go(sock, b"", structured=True, meta=True)
    try:
        out = [("tflags", hex(a.tflags), a.size)] + sequence(a)
        # Two connections: a FUA write on one, read on the other.
        out.append(("a-write", a.write(65536, b"\xa5" * 4096, FUA)))
        err, data = b.read(65536, 4096)
        out.append(("b-read", err, hashlib.md5(data).hexdigest()))
        out.append(("b-write", b.write(70000, b"\x5a" * 100, 0),
                    b.cmd(T.CMD_FLUSH)))
        err, data = a.read(69900, 300)
        out.append(("a-read", err, hashlib.md5(data).hexdigest()))
        return out
    finally:
        for c in (a, b):
            try:
                c.disc()
                c.close()
            except Exception:                 # noqa: BLE001
                pass


def wait_listening(path, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/unix") as f:
            for line in f:
                v = line.split()
                if len(v) >= 8 and v[7] == path and v[3] == "00010000":
                    return
        time.sleep(0.05)
    raise T.CheckFailed("nothing listens on " + path)


def expected_difference(theirs, ours):
    """The server's own answer to zero-length writes (module docstring)."""
    return (theirs[0] in ("write", "zero") and theirs[2] == 0 and
            theirs[:4] == ours[:4] and theirs[4] == ENOSPC and
            ours[4] == EINVAL)


def compare(filters, args):
    n = len(os.listdir(T.TMPDIR))
    ksock = os.path.join(T.TMPDIR, "k%d.sock" % n)
    osock = os.path.join(T.TMPDIR, "o%d.sock" % n)
    klog = open(os.path.join(T.TMPDIR, "k%d.log" % n), "wb")
    olog = open(os.path.join(T.TMPDIR, "o%d.log" % n), "wb")
    k = subprocess.Popen(["nbdkit", "-f", "-U", ksock] +
                         ["--filter=" + f for f in filters] +
                         ["memory", "1M"] + args,
                         stdout=subprocess.DEVNULL, stderr=klog)
    o = subprocess.Popen([T.NBDSTACK, "-U", osock] +
                         sum((["--filter", f] for f in filters), []) +
                         ["memory", "size=1M"] + args,
                         stdout=subprocess.DEVNULL, stderr=olog)
    try:
        wait_listening(ksock)
        wait_listening(osock)
        theirs = session(ksock)
        ours = session(osock)
    finally:
        for p in (k, o):
            p.terminate()
            p.wait(10)
        klog.close()
        olog.close()
    check_eq(len(ours), len(theirs), "%s: replies" % filters)
    bad = [(t, o) for t, o in zip(theirs, ours)
           if t != o and not expected_difference(t, o)]
    check(not bad, "%s %s: replies differ from nbdkit's (nbdkit, ours): %r"
          % (filters, args, bad))
    check_eq(sum(1 for t, o in zip(theirs, ours) if t != o), 3,
             "%s: the zero-length write and zero differences" % filters)


def log_lines():
    n = len(os.listdir(T.TMPDIR))
    lines = {}
    for who in ("k", "o"):
        sock = os.path.join(T.TMPDIR, "l%s%d.sock" % (who, n))
        logf = os.path.join(T.TMPDIR, "l%s%d.nbdlog" % (who, n))
        argv = (["nbdkit", "-f", "-U", sock, "--filter=log", "memory", "1M"]
                if who == "k" else
                [T.NBDSTACK, "-U", sock, "--filter", "log", "memory",
                 "size=1M"])
        p = subprocess.Popen(argv + ["logfile=" + logf],
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            wait_listening(sock)
            r = T.connect_go(sock, b"", structured=True, meta=True)
            sequence(r)
            r.disc()
            r.close()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with open(logf) as f:
                    text = f.read()
                if "Disconnect" in text:
                    break
                time.sleep(0.05)
        finally:
            p.terminate()
            p.wait(10)
        lines[who] = [l.split(" ", 2)[2].split(" ", 1)[1]
                      for l in text.splitlines() if " connection=" in l]
    # No flush at close (no layer keeps writes in the process), as nbdkit.
    check_eq(lines["o"], lines["k"], "log lines of the edge-case session")


C.run("log: the lines of the edge-case session as nbdkit's", log_lines)
for filters, args in FILTERS:
    C.run("%s: every reply as nbdkit's" % "+".join(filters), compare,
          filters, args)
C.finish()
