#!/usr/bin/python3
"""Data integrity over TLS.

- nbdcopy of 1 GiB of random data into a memory disk over TLS (X.509),
  then out again over TLS (PSK), compares equal (cmp); 256 MiB under a
  sanitizer (NBD_SANITIZER set).
- SIGKILL over TLS: two PSK clients keep 32 writes each in flight against
  the file backend (each write to its own 1 MiB slot with its own
  pattern, FUA on every eighth, a FLUSH now and then); the server is
  killed with SIGKILL mid-stream.  Every write whose reply said success
  is in the file (the file backend writes before it replies; the page
  cache outlives the process), and a server started again on the file
  serves those bytes over TLS."""

import filecmp
import os
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
import tlslib as L                        # noqa: E402
from nbdtest import MiB, Checker, Server, check, check_eq, log  # noqa: E402

L.skip_unless_tls()
try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (module nbd) not available to %s" % sys.executable)
T.require_layers("memory", "file")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "600")))

GiB = 1024 * MiB
# Under a sanitizer (about 3x slower, and the glibc build's Debian mbedTLS
# has no fast AES-GCM) the copy is 256 MiB, to stay within its deadline.
COPY = 256 * MiB if os.environ.get("NBD_SANITIZER") else GiB
pki = L.Pki()
C = Checker("test_tls_data")


def t_copy_1g():
    src = os.path.join(T.TMPDIR, "src.bin")
    back = os.path.join(T.TMPDIR, "back.bin")
    with open(src, "wb") as f:
        for _ in range(COPY // (16 * MiB)):
            f.write(os.urandom(16 * MiB))
    srv = Server(["--tls=require", "--tls-certificates=" + pki.srv,
                  "--tls-psk=" + pki.psk, "memory", "size=%d" % COPY], name="copy")
    t0 = time.monotonic()
    r = L.run(["nbdcopy", "--flush", src, L.x509_uri(srv.sock, pki.caonly)], timeout=300)
    check(r.returncode == 0, "nbdcopy in over TLS: %s" % r.stderr.strip())
    t1 = time.monotonic()
    r = L.run(["nbdcopy", L.psk_uri(srv.sock, pki.psk), back], timeout=300)
    check(r.returncode == 0, "nbdcopy out over TLS: %s" % r.stderr.strip())
    t2 = time.monotonic()
    log("%d MiB over TLS: in %.1f s, out %.1f s" % (COPY // MiB, t1 - t0, t2 - t1))
    check(os.path.getsize(back) == COPY, "copied out %d bytes" % os.path.getsize(back))
    check(filecmp.cmp(src, back, shallow=False), "the data copied in and out over TLS differs")
    srv.stop()
    os.unlink(src)
    os.unlink(back)


def pattern(seq, n):
    head = ("%08d" % seq).encode()
    return (head * (n // len(head) + 1))[:n]


def t_sigkill():
    img = os.path.join(T.TMPDIR, "disk.img")
    size = 1024 * MiB
    with open(img, "wb") as f:
        f.truncate(size)
    args = ["--tls=require", "--tls-psk=" + pki.psk, "file", "file=" + img]
    srv = Server(args, name="kill")
    handles = []
    for _ in range(2):
        h = nbd.NBD()
        h.set_uri_allow_local_file(True)
        h.connect_uri(L.psk_uri(srv.sock, pki.psk))
        handles.append(h)
    acked, seq, killed = [], 0, False

    def submit(h):
        nonlocal seq
        seq += 1
        n = MiB if seq % 8 == 0 else 64 * 1024
        off = ((seq * 7919) % 1024) * MiB
        buf = nbd.Buffer.from_bytearray(bytearray(pattern(seq, n)))

        def done(err, s=seq, off=off, n=n):
            if err.value == 0:
                acked.append((s, off, n))
            return 1
        h.aio_pwrite(buf, off, completion=done,
                     flags=nbd.CMD_FLAG_FUA if seq % 8 == 0 else 0)
        if seq % 50 == 0:
            h.aio_flush()

    alive, start = list(handles), time.monotonic()
    while alive and time.monotonic() - start < 30 and seq < 1023:
        for h in list(alive):
            try:
                while h.aio_in_flight() < 32 and seq < 1023:
                    submit(h)
                h.poll(1)
            except nbd.Error:
                alive.remove(h)
        if not killed and len(acked) > 300:
            srv.proc.send_signal(signal.SIGKILL)
            killed = True
    srv.proc.wait(10)
    log("%d writes acknowledged over TLS before SIGKILL" % len(acked))
    check(killed, "never got 300 writes acknowledged to send SIGKILL")
    check_eq(srv.proc.returncode, -signal.SIGKILL, "the server's end")
    bad = 0
    with open(img, "rb") as f:
        for s, off, n in acked:
            f.seek(off)
            if f.read(n) != pattern(s, n):
                bad += 1
    check_eq(bad, 0, "acknowledged writes missing from the file after SIGKILL")
    srv.kill()
    srv2 = Server(args, name="kill2")
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(L.psk_uri(srv2.sock, pki.psk))
    for s, off, n in acked[-20:]:
        check(h.pread(n, off) == pattern(s, n), "seq %d read back over TLS" % s)
    h.shutdown()
    srv2.stop()
    for h in handles:
        try:
            h.shutdown()
        except nbd.Error:
            pass


C.run("nbdcopy 1 GiB of random data in and out over TLS compares equal", t_copy_1g)
C.run("SIGKILL over TLS: every acknowledged write is in the file", t_sigkill)
C.finish()
