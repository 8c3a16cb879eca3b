#!/usr/bin/python3
"""Limits against hostile or broken clients.

- A client that connects and sends nothing, or trickles one byte at a time,
  is dropped at the handshake timeout while a good client is still served
  promptly.
- The idle timeout closes a connection that sends no request.
- max-connections (server-wide) refuses clients beyond the limit; the
  per-export max-connections refuses GO with NBD_REP_ERR_POLICY.
- 1000 connect/disconnect cycles and 200 simultaneous idle connections
  leave the server serving, and its RSS returns near where it was.
"""

import os
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("memory")
T.start_watchdog()
C = Checker("test_limits")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def closed_within(s, seconds):
    """True when the server closes s within seconds."""
    s.settimeout(seconds)
    t0 = time.monotonic()
    try:
        while True:
            d = s.recv(4096)
            if not d:
                return time.monotonic() - t0
    except socket.timeout:
        return None
    except OSError:
        return time.monotonic() - t0


def good_client_fast(path):
    t0 = time.monotonic()
    c = connect_go(path)
    check_eq(c.write(0, b"x" * 4096), 0, "write")
    err, data = c.read(0, 4096)
    check_eq((err, data), (0, b"x" * 4096), "read back")
    c.close()
    return time.monotonic() - t0


srv = Server(["--handshake-timeout", "1s", "memory", "size=16M"], name="hs")


def handshake_timeout_silent():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(srv.sock)
    t = closed_within(s, 5)
    check(t is not None, "silent client not dropped within 5 s")
    check(0.5 <= t <= 3, "silent client dropped after %.2fs, want ~1s" % t)


def handshake_timeout_trickle():
    """50 clients trickling one byte every 0.2 s; a good client meanwhile
    gets served in normal time and all the slow ones are dropped."""
    slow = []
    for _ in range(50):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(srv.sock)
        s.settimeout(5)
        s.recv(18)
        slow.append(s)
    hello = struct.pack(">I", 1) + struct.pack(">QII", IHAVEOPT, OPT_GO, 100)
    t0 = time.monotonic()
    dropped = 0
    i = 0
    took = None
    while time.monotonic() - t0 < 4 and dropped < len(slow):
        for s in slow:
            if s is None:
                continue
            try:
                s.send(hello[i:i + 1] if i < len(hello) else b"\0")
            except OSError:
                pass
        if took is None and time.monotonic() - t0 > 0.3:
            took = good_client_fast(srv.sock)
        time.sleep(0.2)
        i += 1
        for k, s in enumerate(slow):
            if s is None:
                continue
            s.setblocking(False)
            try:
                if s.recv(4096) == b"":
                    dropped += 1
                    slow[k] = None
            except BlockingIOError:
                pass
            except OSError:
                dropped += 1
                slow[k] = None
    check(took is not None and took < 1.0,
          "good client took %s s among slow handshakes" % took)
    check_eq(dropped, 50, "slow clients dropped by the handshake timeout")


C.run("silent client dropped at the handshake timeout", handshake_timeout_silent)
C.run("50 trickling handshakes dropped, a good client served meanwhile",
      handshake_timeout_trickle)

idle = Server(["--idle-timeout", "1s", "memory", "size=16M"], name="idle")


def idle_timeout():
    c = connect_go(idle.sock)
    check_eq(c.write(0, b"y" * 512), 0, "write before idling")
    t = closed_within(c.s, 5)
    check(t is not None and 0.5 <= t <= 3,
          "idle connection closed after %s s, want ~1 s" % t)


C.run("idle timeout closes a connection without requests", idle_timeout)

cfgpath = os.path.join(T.TMPDIR, "limits.conf")
sock = os.path.join(T.TMPDIR, "limits.sock")
with open(cfgpath, "w") as f:
    f.write("[server]\nlisten = unix:%s\nmax-connections = 5\n"
            "[export \"\"]\nbackend = memory size=1M\n"
            "[export two]\nmax-connections = 2\nbackend = memory size=1M\n"
            % sock)
lim = Server(config=cfgpath, sock=sock, name="lim")



def export_limit_raw():
    a = connect_go(sock, b"two")
    b = connect_go(sock, b"two")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(sock)
    s.recv(18)
    name = b"two"
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">I", 1) + struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
    hdr = b""
    while len(hdr) < 20:
        hdr += s.recv(20 - len(hdr))
    _, opt, rep, ln = struct.unpack(">QIII", hdr)
    check_eq(rep, (1 << 31) | 2, "reply to GO beyond the export's limit (ERR_POLICY)")
    s.close()
    a.close()
    b.close()


def server_limit():
    held = [connect_go(sock) for _ in range(5)]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(sock)
    # Greeted in the lobby (no slot yet); refused once it speaks.
    check_eq(len(s.recv(18)), 18, "greeting to the sixth client")
    s.sendall(struct.pack(">I", 3))
    t = closed_within(s, 15)        # generous: a loaded host is slow
    check(t is not None, "sixth client was not refused")
    for h in held:
        h.close()
    # The server notices the closes in its own time (a parked connection
    # first gets a thread back): retry until a slot is free.
    deadline = time.monotonic() + 15
    while True:
        try:
            good_client_fast(sock)
            break
        except (Closed, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


C.run("per-export max-connections refuses GO with ERR_POLICY", export_limit_raw)
C.run("server max-connections refuses the client beyond it", server_limit)

big = Server(["memory", "size=64M"], name="big")


def cycles_and_idle():
    good_client_fast(big.sock)
    before = rss_kib(big.proc.pid)
    for _ in range(1000):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for _try in range(200):
            try:
                s.connect(big.sock)
                break
            except BlockingIOError:      # backlog full: the server is behind
                time.sleep(0.01)
        s.close()
    held = [connect_go(big.sock) for _ in range(200)]
    good_client_fast(big.sock)
    during = rss_kib(big.proc.pid)
    for h in held:
        h.close()
    time.sleep(1.0)
    good_client_fast(big.sock)
    after = rss_kib(big.proc.pid)
    log("RSS KiB: before %d, with 200 idle %d, after %d" % (before, during, after))
    # Sanitizers keep freed memory in quarantine and add shadow memory:
    # RSS says nothing there (LeakSanitizer and valgrind check leaks).
    if not os.environ.get("NBD_SANITIZER"):
        check(during - before < 64 * 1024,
              "200 idle connections cost %d KiB" % (during - before))
        check(after - before < 8 * 1024,
              "RSS grew by %d KiB after the clients left" % (after - before))
    check(big.alive(), "server died")


C.run("1000 connect/disconnect cycles and 200 idle connections", cycles_and_idle)


def stalled_reader():
    """A client pipelines thousands of 1 MiB reads and never reads the
    replies: the server stops reading requests once its replies back up,
    instead of buffering replies without end."""
    c = connect_go(big.sock)
    c.s.setblocking(False)
    before = rss_kib(big.proc.pid)
    sent = 0
    hdr_n = 0
    deadline = time.monotonic() + 3
    # 4096 requests for 1 MiB each = 4 GiB of replies nobody reads.
    while hdr_n < 4096 and time.monotonic() < deadline:
        req = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, hdr_n, 0, MiB)
        try:
            c.s.send(req)
            hdr_n += 1
        except BlockingIOError:
            time.sleep(0.05)        # the server stopped reading: good
    time.sleep(1.0)
    grown = rss_kib(big.proc.pid) - before
    log("stalled reader: %d requests accepted, RSS grew %d KiB" % (hdr_n, grown))
    if not os.environ.get("NBD_SANITIZER"):
        check(grown < 128 * 1024, "RSS grew %d KiB for a client that never "
              "reads its replies" % grown)
    good_client_fast(big.sock)     # others are still served
    c.close()
    time.sleep(0.5)
    good_client_fast(big.sock)


C.run("a client that never reads replies does not grow memory without bound",
      stalled_reader)


def sigterm_with_1000_idle():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200 and hard >= 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2200, hard))
    s = Server(["memory", "size=8M"], name="many")
    held = []
    try:
        for _ in range(1000):
            held.append(connect_go(s.sock))
        good_client_fast(s.sock)
        t0 = time.monotonic()
        rc = s.stop(timeout=10)
        took = time.monotonic() - t0
        log("SIGTERM with 1000 idle clients: exit %s after %.2f s" % (rc, took))
        check_eq(rc, 0, "exit status")
        check(took < 2.0 or os.environ.get("NBD_SANITIZER"),
              "exit took %.2f s (want < 2 s)" % took)
    finally:
        for h in held:
            h.close()
        s.kill()


C.run("SIGTERM with 1000 idle clients exits 0 within 2 s", sigterm_with_1000_idle)


def drops_privileges():
    if os.geteuid() != 0:
        log("not root: privilege drop not testable")
        return
    d = os.path.join(T.TMPDIR, "priv")
    os.mkdir(d)
    os.chmod(d, 0o777)
    sock = os.path.join(d, "p.sock")
    s = Server(["-u", "nobody", "-g", "nogroup", "memory", "size=1M"],
               sock=sock, name="priv")
    try:
        import pwd
        import grp
        want = pwd.getpwnam("nobody").pw_uid
        # The socket is connectable as soon as listen() returns, which is
        # before the privilege drop: poll until the ids change (or 10 s).
        deadline = time.monotonic() + 10
        while True:
            with open("/proc/%d/status" % s.proc.pid) as f:
                st = f.read()
            uid = [l for l in st.splitlines() if l.startswith("Uid:")][0].split()
            gid = [l for l in st.splitlines() if l.startswith("Gid:")][0].split()
            if int(uid[1]) == want or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        check(all(int(x) == pwd.getpwnam("nobody").pw_uid for x in uid[1:]),
              "uids after -u nobody: %s" % uid)
        check(all(int(x) == grp.getgrnam("nogroup").gr_gid for x in gid[1:]),
              "gids after -g nogroup: %s" % gid)
        good_client_fast(sock)
    finally:
        s.kill()


C.run("-u/-g drop privileges after binding", drops_privileges)
C.finish([srv, idle, lim, big])
