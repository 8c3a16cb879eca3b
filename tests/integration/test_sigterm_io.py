#!/usr/bin/python3
"""SIGTERM during heavy I/O loses nothing acknowledged.

Two libnbd connections keep 32 writes each in flight (1 MiB with FUA every
eighth, 64 KiB otherwise, each in its own 1 MiB slot with its own pattern)
against the file backend, inline and on workers.  The server gets SIGTERM mid-stream.
Every write whose reply said success must be in the file once the server
has exited (it flushes on the way out); the server exits 0.
"""

import os
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import MiB, Checker, Server, check, check_eq, log  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("file")
T.start_watchdog()
C = Checker("test_sigterm_io")
SIZE = 1024 * MiB              # sparse; one 1 MiB slot per write


def pattern(seq, n):
    head = ("%08d" % seq).encode()
    return (head * (n // len(head) + 1))[:n]


def run(extra):
    img = os.path.join(T.TMPDIR, "disk%s.img" % ("-w" if extra else ""))
    with open(img, "wb") as f:
        f.truncate(SIZE)
    srv = Server(extra + ["file", "file=" + img], name="io" + ("w" if extra else ""))
    acked = []                 # (seq, offset, length) of successful writes
    handles = []
    for _ in range(2):
        h = nbd.NBD()
        h.connect_unix(srv.sock)
        handles.append(h)
    seq = 0
    start = time.monotonic()
    signalled = False

    def submit(h):
        nonlocal seq
        seq += 1
        n = MiB if seq % 8 == 0 else 64 * 1024
        # Writes in flight together have no order (NBD), so none overlap:
        # write seq goes to its own slot.
        off = ((seq * 7919) % 1024) * MiB
        buf = nbd.Buffer.from_bytearray(bytearray(pattern(seq, n)))
        flags = nbd.CMD_FLAG_FUA if seq % 8 == 0 else 0
        s = seq

        def done(err, s=s, off=off, n=n):
            if err.value == 0:
                acked.append((s, off, n))
            return 1
        h.aio_pwrite(buf, off, completion=done, flags=flags)

    alive = list(handles)
    while alive and time.monotonic() - start < 20:
        for h in list(alive):
            try:
                while h.aio_in_flight() < 32 and seq < 1023:
                    submit(h)
                h.poll(1)
            except nbd.Error:
                alive.remove(h)
        if seq >= 1023 and not signalled:
            break
        if not signalled and len(acked) > 300:
            srv.proc.send_signal(signal.SIGTERM)
            signalled = True
    rc = srv.proc.wait(10)
    log("%d writes acknowledged before the server went away" % len(acked))
    check(signalled, "never got enough writes acknowledged to send SIGTERM")
    check_eq(rc, 0, "server exit status after SIGTERM")
    bad = 0
    with open(img, "rb") as f:
        for s, off, n in acked:
            f.seek(off)
            got = f.read(n)
            if got != pattern(s, n):
                if bad < 3:
                    log("seq %d at %d+%d: file has %r" % (s, off, n, got[:16]))
                bad += 1
    check_eq(bad, 0, "acknowledged writes missing from the file")
    for h in handles:
        try:
            h.shutdown()
        except nbd.Error:
            pass


C.run("SIGTERM mid-stream, inline: every acknowledged write is in the file",
      run, [])
C.run("SIGTERM mid-stream, workers: every acknowledged write is in the file",
      run, ["--no-inline"])
C.finish()
