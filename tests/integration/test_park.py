#!/usr/bin/python3
"""Idle connections parked without a thread (src/park.c).

- Thousands of handshaken idle clients: the server's threads fall back to a
  handful once they are parked (one thread each would not), a new client is
  served, and parked clients resume with their data intact, pipelined
  requests included, and park again.
- The idle timeout still closes a parked connection, and not before it.
- SIGTERM with the idle clients connected: the server exits with status 0,
  flushing what the clients wrote, and every client sees its socket closed.
No timing is asserted beyond generous bounds (a noisy shared host).
"""

import os
import resource
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("memory", "file")
T.start_watchdog()
C = Checker("test_park")

# Sanitizers make each thread start and request far slower.
N = 400 if os.environ.get("NBD_SANITIZER") else 2500
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard != resource.RLIM_INFINITY and hard < N + 200:
    N = max(100, hard - 200)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def threads(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def wait_threads_below(pid, n, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t = threads(pid)
        if t < n:
            return t
        time.sleep(0.2)
    return threads(pid)


disk = os.path.join(T.TMPDIR, "park.img")
with open(disk, "wb") as f:
    f.truncate(64 << 20)
srv = Server(["--max-connections", str(N + 50), "file", "file=" + disk],
             name="park")
idle = []


def many_idle():
    for i in range(N):
        idle.append(connect_go(srv.sock, timeout=30))
    # Parked after a second without a request: one thread each would
    # leave N threads.
    t = wait_threads_below(srv.proc.pid, 20)
    log("%d idle clients: %d server threads" % (N, t))
    check(t < 20, "%d idle clients still hold %d threads" % (N, t))
    c = connect_go(srv.sock)
    check_eq(c.write(0, b"n" * 4096), 0, "new client's write")
    check_eq(c.read(0, 4096), (0, b"n" * 4096), "new client's read")
    c.close()


def resume():
    """Parked clients come back: each writes its own block (one of them with
    requests pipelined) and reads it back, then parks again."""
    picks = list(range(0, N, max(1, N // 20)))
    for k in picks:
        c = idle[k]
        data = struct.pack(">I", k) * 1024
        check_eq(c.write(4096 * (k + 1), data), 0, "write on parked client %d" % k)
    k = picks[-1]
    c = idle[k]
    cookies = [c.request(CMD_WRITE, 4096 * (k + 1), 4096,
                         data=struct.pack(">I", k + 7) * 1024)
               for _ in range(3)]
    for ck in cookies:
        check_eq(c.recv_structured(ck)[0], 0, "pipelined write")
    time.sleep(1.5)                     # parked again
    for k in picks:
        want = struct.pack(">I", k + 7 if k == picks[-1] else k) * 1024
        check_eq(idle[k].read(4096 * (k + 1), 4096), (0, want),
                 "read back on client %d after parking again" % k)


def sigterm():
    for k in range(0, N, max(1, N // 50)):
        check_eq(idle[k].write(4096 * (N + 2 + k), b"z" * 512), 0, "write before SIGTERM")
    time.sleep(1.5)
    t = wait_threads_below(srv.proc.pid, 20)
    check(t < 20, "threads before SIGTERM: %d" % t)
    t0 = time.monotonic()
    srv.proc.send_signal(15)
    try:
        rc = srv.proc.wait(60)
    except Exception:
        rc = None
    log("SIGTERM with %d parked clients: exit %s after %.2f s"
        % (N, rc, time.monotonic() - t0))
    check_eq(rc, 0, "exit status after SIGTERM")
    for c in idle[:50]:
        c.s.settimeout(5)
        try:
            check_eq(c.s.recv(1), b"", "idle client sees the close")
        except OSError:
            pass
    with open(disk, "rb") as f:
        f.seek(4096 * (N + 2))
        check_eq(f.read(512), b"z" * 512, "a parked client's write on disk")


C.run("%d idle clients park; a new client is served" % N, many_idle)
C.run("parked clients resume, pipelined too, and park again", resume)
C.run("SIGTERM with the parked clients: exit 0, sockets closed", sigterm)

tmo = Server(["--idle-timeout", "3s", "memory", "size=1M"], name="parktmo")


def idle_timeout_parked():
    c = connect_go(tmo.sock)
    check_eq(c.write(0, b"y" * 512), 0, "write before idling")
    c.s.settimeout(12)
    t0 = time.monotonic()
    try:
        d = c.s.recv(1)
    except socket.timeout:
        d = None
    t = time.monotonic() - t0
    check(d == b"", "parked connection not closed by the idle timeout")
    check(t >= 1.9, "closed after %.2f s, before the 3 s idle timeout" % t)


C.run("the idle timeout closes a parked connection, not before", idle_timeout_parked)
C.finish([tmo])
