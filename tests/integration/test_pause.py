#!/usr/bin/python3
"""The pause filter through libnbd, with its control socket.

A client writes in a loop through pause over testslow (each write sleeps
WDELAY below, so one is usually in flight).  'p' is answered with 'P' only
once that write has finished; no write completes while paused; after 'r'
the writes go on.  SIGTERM while a write waits in a pause still stops the
server promptly.  Where nbdkit is installed, its pause filter answers the
same bytes on its control socket.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

BIN = T.require_test_layer("testslow")
T.require_layers("pause", binary=BIN)
T.start_watchdog(100)
C = Checker("test_pause")
WDELAY = 0.3


class Writer(threading.Thread):
    """Writes in a loop, counting completions, until stopped or failed."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.h = nbd.NBD()
        self.h.connect_unix(sock)
        self.done = 0
        self.error = None
        self.stop = False

    def run(self):
        i = 0
        try:
            while not self.stop:
                self.h.pwrite(b"w" * 4096, (i % 64) * 4096)
                self.done += 1
                i += 1
        except nbd.Error as e:
            self.error = e


def control(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def cmd(s, c):
    s.sendall(c)
    return s.recv(1)


def serve(ctl):
    return Server(["--filter", "pause", "--filter", "testslow", "memory",
                   "size=1M", "pause-control=" + ctl,
                   "wdelay=%gs" % WDELAY], binary=BIN)


def pause_holds_writes():
    ctl = os.path.join(T.TMPDIR, "ctl1")
    srv = serve(ctl)
    w = Writer(srv.sock)
    w.start()
    time.sleep(WDELAY * 3)
    check(w.done >= 1, "writer made no progress before the pause")
    s = control(ctl)
    t0 = time.monotonic()
    check_eq(cmd(s, b"p"), b"P", "reply to p")
    t_p = time.monotonic() - t0
    # The write in flight finishes before 'P'; its reply may reach the
    # client just after, so give it a moment before counting.
    check(t_p < 5, "P took %.2fs" % t_p)
    time.sleep(0.2)
    n_paused = w.done
    time.sleep(WDELAY * 5)
    check_eq(w.done, n_paused, "writes completed while paused")
    check(w.error is None, "writer failed while paused: %s" % w.error)
    check_eq(cmd(s, b"?"), b"X", "reply to an unknown command")
    # blanks and newlines are skipped without a reply, as in nbdkit
    check_eq(cmd(s, b" \t\nr"), b"R", "reply to ' \\t\\nr'")
    time.sleep(WDELAY * 4)
    check(w.done > n_paused, "no write completed after the resume")
    w.stop = True
    w.join(10)
    check(w.error is None, "writer failed: %s" % w.error)
    s.close()
    w.h.shutdown()
    check_eq(srv.stop(), 0, "exit status")
    check(not os.path.exists(ctl), "control socket left behind")


def pause_waits_for_inflight():
    """'P' comes only once a write already below has finished."""
    ctl = os.path.join(T.TMPDIR, "ctl2")
    srv = Server(["--filter", "pause", "--filter", "testslow", "memory",
                  "size=1M", "pause-control=" + ctl, "wdelay=1.5s"],
                 binary=BIN)
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    t0 = time.monotonic()
    c = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(4096)), 0)
    time.sleep(0.3)
    s = control(ctl)
    check_eq(cmd(s, b"p"), b"P", "reply to p")
    dt = time.monotonic() - t0
    check(dt >= 1.2, "P came %.2fs after a 1.5 s write started" % dt)
    while not h.aio_command_completed(c):
        h.poll(-1)
    check_eq(cmd(s, b"r"), b"R", "reply to r")
    s.close()
    h.shutdown()
    srv.stop()


def sigterm_while_paused():
    ctl = os.path.join(T.TMPDIR, "ctl3")
    srv = serve(ctl)
    s = control(ctl)
    check_eq(cmd(s, b"p"), b"P", "reply to p")
    w = Writer(srv.sock)
    w.start()
    time.sleep(0.5)
    check_eq(w.done, 0, "a write completed while paused")
    t0 = time.monotonic()
    rc = srv.stop(signal.SIGTERM, timeout=10)
    dt = time.monotonic() - t0
    check(rc is not None, "server did not exit within 10 s of SIGTERM")
    check(dt < 5, "server took %.2fs to exit while paused" % dt)
    w.join(10)
    check(w.error is not None, "the waiting write did not fail")
    s.close()


def same_replies_as_nbdkit():
    if not shutil.which("nbdkit"):
        T.log("  (skipped: nbdkit not installed)")
        return
    ctl = os.path.join(T.TMPDIR, "kctl")
    ksock = os.path.join(T.TMPDIR, "k.sock")
    p = subprocess.Popen(["nbdkit", "-f", "-U", ksock, "--filter=pause",
                          "memory", "1M", "pause-control=" + ctl],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(ctl) and time.monotonic() < deadline:
            time.sleep(0.05)
        s = control(ctl)
        theirs = [cmd(s, c) for c in (b"p", b"?", b"r")]
        s.close()
    finally:
        p.terminate()
        p.wait(10)
    ctl = os.path.join(T.TMPDIR, "ctl4")
    srv = serve(ctl)
    s = control(ctl)
    ours = [cmd(s, c) for c in (b"p", b"?", b"r")]
    s.close()
    srv.stop()
    check_eq(ours, theirs, "replies to p, ?, r (nbdkit's)")


C.run("p holds writes until r; replies P, X, R", pause_holds_writes)
C.run("P comes once the write in flight has finished",
      pause_waits_for_inflight)
C.run("SIGTERM while paused: the server exits, the write fails",
      sigterm_while_paused)
C.run("same control replies as nbdkit --filter=pause", same_replies_as_nbdkit)
C.finish()
