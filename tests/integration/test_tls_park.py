#!/usr/bin/python3
"""Idle TLS connections park as plain ones do (src/park.c, tls.c's
tls_park): the thread and the wire's buffers go, the mbedTLS session stays.

- A few hundred idle libnbd clients over TLS (X.509), each after a 64 KiB
  write and read: the server's threads fall back to a handful once they
  are parked, its memory grows by less than 16 KiB per connection (the
  session's state; mbedTLS's record buffers, a thread and the wire's
  buffers are given back), and a new TLS client is served beside them.
- Parked clients resume: each writes its own block and reads it back,
  one of them with writes and reads pipelined (libnbd's aio calls, several
  records in flight); they park again and their data reads back.
- SIGTERM with the parked TLS clients: exit status 0, a parked client's
  write on disk, and every client sees its connection end.
- The idle timeout closes a parked TLS connection, and not before it.
No timing is asserted beyond generous bounds (a noisy shared host).
"""

import os
import resource
import select
import signal
import struct
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
import tlslib as L                        # noqa: E402
from nbdtest import Checker, Server, check, check_eq, log  # noqa: E402

L.skip_unless_tls()
nbd = L.libnbd()
T.require_layers("memory", "file")
T.start_watchdog()
C = Checker("test_tls_park")

# A handshake costs an ECDHE and an ECDSA signature on each side; under a
# sanitizer (Debian's mbedTLS, several times slower) fewer clients.
N = 60 if os.environ.get("NBD_SANITIZER") else 300
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard != resource.RLIM_INFINITY and hard < 2 * N + 200:
    N = max(30, (hard - 200) // 2)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

# An ECDSA server key: a few hundred handshakes stay quick.
ca = L.make_ca("park-ca")
srvdir = L.mkdir("park-srv")
clidir = L.mkdir("park-cli")
L.make_cert(ca, "park-server", "server", srvdir, "server", key_type="ecdsa")
for d in (srvdir, clidir):
    with open(ca[1], "rb") as f, open(os.path.join(d, "ca-cert.pem"), "wb") as g:
        g.write(f.read())


def status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def wait_threads_below(pid, n, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t = status(pid, "Threads")
        if t < n:
            return t
        time.sleep(0.2)
    return status(pid, "Threads")


def tls_client(sock):
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(L.x509_uri(sock, clidir))
    return h


disk = os.path.join(T.TMPDIR, "tlspark.img")
with open(disk, "wb") as f:
    f.truncate(64 << 20)
srv = Server(["--tls=require", "--tls-certificates=" + srvdir,
              "--max-connections", str(N + 50), "file", "file=" + disk],
             name="tlspark")
idle = []


def many_idle():
    pid = srv.proc.pid
    rss0 = status(pid, "VmRSS")
    for i in range(N):
        h = tls_client(srv.sock)
        # A full record each way first: mbedTLS's buffers are touched.
        h.pwrite(b"w" * 65536, 65536 * (i % 512))
        h.pread(65536, 65536 * (i % 512))
        idle.append(h)
    t = wait_threads_below(pid, 20)
    log("%d idle TLS clients: %d server threads" % (N, t))
    check(t < 20, "%d idle TLS clients still hold %d threads" % (N, t))
    time.sleep(0.5)
    per = (status(pid, "VmRSS") - rss0) / N
    log("%d parked TLS connections: server RSS %.1f KiB more each" % (N, per))
    # Parked: the session's keys and state, about 4 KiB; mbedTLS's two
    # record buffers (2 x 16.7 KiB) are given back (tls_park): with
    # them, 47 KiB each here.
    # (A sanitizer's shadow memory makes RSS say nothing.)
    if not os.environ.get("NBD_SANITIZER"):
        check(per < 16, "a parked TLS connection costs %.1f KiB of RSS" % per)
    h = tls_client(srv.sock)
    h.pwrite(b"n" * 4096, 0)
    check_eq(h.pread(4096, 0), b"n" * 4096, "new TLS client's read")
    h.shutdown()


def wait_all(h, cookies):
    left = set(cookies)
    deadline = time.monotonic() + 30
    while left and time.monotonic() < deadline:
        left = set(c for c in left if not h.aio_command_completed(c))
        if left:
            h.poll(1)
    return not left


def resume():
    """Parked clients come back: each writes its own block (one with its
    requests pipelined) and reads it back, then parks again."""
    picks = list(range(0, N, max(1, N // 20)))
    for k in picks:
        data = struct.pack(">I", k) * 1024
        idle[k].pwrite(data, 4096 * (k + 1))
        check_eq(idle[k].pread(4096, 4096 * (k + 1)), data,
                 "read on resumed TLS client %d" % k)
    time.sleep(1.5)                     # parked again
    k = picks[-1]
    h = idle[k]
    # Pipelined: five writes of 64 KiB and a read behind them, all sent
    # before any reply is read.
    bufs = [nbd.Buffer.from_bytearray(bytearray(struct.pack(">I", k + i) * 16384))
            for i in range(5)]
    cookies = [h.aio_pwrite(bufs[i], (8 << 20) + i * 65536) for i in range(5)]
    rd = nbd.Buffer(5 * 65536)
    cookies.append(h.aio_pread(rd, 8 << 20))
    check(wait_all(h, cookies), "pipelined requests on a resumed TLS client")
    want = b"".join(struct.pack(">I", k + i) * 16384 for i in range(5))
    check(rd.to_bytearray() == want, "pipelined read after pipelined writes")
    time.sleep(1.5)                     # parked again
    t = wait_threads_below(srv.proc.pid, 20)
    check(t < 20, "threads after the clients parked again: %d" % t)
    for k in picks:
        check_eq(idle[k].pread(4096, 4096 * (k + 1)), struct.pack(">I", k) * 1024,
                 "read back on TLS client %d after parking again" % k)


def sigterm():
    for k in range(0, N, max(1, N // 30)):
        idle[k].pwrite(b"z" * 512, (16 << 20) + 4096 * k)
    time.sleep(1.5)
    check(wait_threads_below(srv.proc.pid, 20) < 20, "threads before SIGTERM")
    t0 = time.monotonic()
    rc = srv.stop(signal.SIGTERM, 60)
    log("SIGTERM with %d parked TLS clients: exit %s after %.2f s"
        % (N, rc, time.monotonic() - t0))
    check_eq(rc, 0, "exit status after SIGTERM")
    ended = 0
    for h in idle[:30]:
        try:
            h.pread(512, 0)
        except nbd.Error:
            ended += 1
    check_eq(ended, 30, "clients whose connection ended")
    with open(disk, "rb") as f:
        f.seek(16 << 20)
        check_eq(f.read(512), b"z" * 512, "a parked TLS client's write on disk")


C.run("%d idle TLS clients park; a new one is served" % N, many_idle)
C.run("parked TLS clients resume, pipelined too, and park again", resume)
C.run("SIGTERM with the parked TLS clients: exit 0, connections end", sigterm)
del idle[:]

tmo = Server(["--tls=require", "--tls-certificates=" + srvdir,
              "--idle-timeout", "3s", "memory", "size=1M"], name="tlsparktmo")


def idle_timeout_parked():
    h = tls_client(tmo.sock)
    h.pwrite(b"y" * 512, 0)
    t0 = time.monotonic()
    r, _, _ = select.select([h.aio_get_fd()], [], [], 12)
    t = time.monotonic() - t0
    check(r != [], "parked TLS connection not closed by the idle timeout")
    check(t >= 1.9, "closed after %.2f s, before the 3 s idle timeout" % t)
    check("idle timeout, closing" in tmo.log_text(),
          "the idle timeout is not in the log")


C.run("the idle timeout closes a parked TLS connection, not before",
      idle_timeout_parked)
C.finish([tmo])
