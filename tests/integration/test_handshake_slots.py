#!/usr/bin/python3
"""Silent connections cannot lock a server out (docs/config.md, "Limits").

1,030 clients connect and never send a byte, reconnecting whenever the
server drops them: more than max-connections (1024).  Meanwhile a good
client connects, finishes its handshake and reads, twice a second, from
another process (libnbd) and from the attackers' own process.  Before the
lobby the good client was refused every time ("1024 connections is the
maximum"); now silent clients wait in the lobby, which holds no slot.

Then with max-handshakes=64 and 300 attackers the lobby overflows: the
oldest silent client makes room for each newcomer, and the good client,
which speaks at once, still gets through every time.  And with
max-connections=8 and max-handshakes=4: at most 4 silent clients are
held, handshaken connections are never closed for room, and once every
slot is a handshaken connection a client that speaks is refused.
"""

import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Closed, Server, check, check_eq, connect_go, log  # noqa: E402

T.require_layers("memory")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "55")) + 30)
C = Checker("test_handshake_slots")

ATTACKERS = 1030
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard < 2 * ATTACKERS + 200:
    T.skip("RLIMIT_NOFILE hard limit %d is too low for %d connections"
           % (hard, ATTACKERS))
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # the server inherits it


class Attack:
    """n silent clients on path, each reconnecting when dropped."""

    def __init__(self, path, n):
        self.path, self.n = path, n
        self.sel = selectors.DefaultSelector()
        self.stop = False
        self.drops = 0
        self.open = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(self.path)
        except OSError:
            # The listen backlog is full (a Unix socket says EAGAIN and
            # does not complete later): try again in the next round.
            s.close()
            return False
        self.sel.register(s, selectors.EVENT_READ)
        self.open += 1
        return True

    def run(self):
        pending = self.n
        while not self.stop:
            while pending and not self.stop:
                if not self.connect():
                    break
                pending -= 1
            for key, _ in self.sel.select(0.05):
                s = key.fileobj
                try:
                    d = s.recv(4096)        # the greeting; never answered
                except BlockingIOError:
                    continue
                except OSError:
                    d = b""
                if not d:
                    self.sel.unregister(s)
                    s.close()
                    self.open -= 1
                    self.drops += 1
                    pending += 1
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()

    def __enter__(self):
        self.thread.start()
        t0 = time.monotonic()
        while self.open < self.n and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join(10)


def good_other_process(sock):
    r = subprocess.run(
        ["/usr/bin/python3", "-c",
         "import nbd,sys; h=nbd.NBD(); h.connect_unix(sys.argv[1]); "
         "assert h.pread(4096, 0) == b'\\0' * 4096; h.shutdown()", sock],
        capture_output=True, timeout=20)
    return r.returncode == 0


def good_same_process(sock):
    try:
        c = connect_go(sock, timeout=5)
        err, data = c.read(0, 4096)
        c.close()
        return err == 0 and data == b"\0" * 4096
    except Exception as e:                  # noqa: BLE001
        log("same-process good client: %s" % e)
        return False


def attack(srv, attackers, rounds, want_drops):
    """The same-process client is checked only when the lobby does not
    overflow: it shares the attackers' interpreter lock, and a lobby that
    turns over tens of thousands of times a second can close it before
    the attackers' loop lets it answer the greeting."""
    with Attack(srv.sock, attackers) as a:
        served_other = served_same = 0
        for _ in range(rounds):
            served_other += good_other_process(srv.sock)
            served_same += want_drops or good_same_process(srv.sock)
            time.sleep(0.5)
        log("attackers: %d open, %d drops" % (a.open, a.drops))
        check(srv.alive(), "server alive under the attack")
        if want_drops:
            check(a.drops > 0, "the lobby closed the oldest silent clients")
    check_eq(served_other, rounds, "good client (another process) served")
    check_eq(served_same, rounds, "good client (the attacker's process) served")
    srv.stop()


def attack_default_limits():
    attack(Server(["memory", "size=16M"], name="attack"), ATTACKERS, 10, False)


def attack_lobby_overflow():
    cfg = os.path.join(T.TMPDIR, "ov.ini")
    sock = os.path.join(T.TMPDIR, "ov.sock")
    with open(cfg, "w") as f:
        f.write("[server]\nlisten = unix:%s\nmax-handshakes = 64\n"
                "[export \"\"]\nbackend = memory size=1M\n" % sock)
    attack(Server(config=cfg, sock=sock, name="ov"), 300, 6, True)


def handshake_limit_small():
    cfg = os.path.join(T.TMPDIR, "hs.ini")
    sock = os.path.join(T.TMPDIR, "hs.sock")
    with open(cfg, "w") as f:
        f.write("[server]\nlisten = unix:%s\nmax-connections = 8\n"
                "max-handshakes = 4\n"
                "[export \"\"]\nbackend = memory size=1M\n" % sock)
    srv = Server(config=cfg, sock=sock, name="hs")
    held = [connect_go(sock) for _ in range(6)]     # handshaken: kept
    silent = []
    for _ in range(6):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(sock)
        silent.append(s)
        time.sleep(0.05)
    time.sleep(0.3)
    open_ = 0
    for s in silent:
        s.setblocking(False)
        try:
            d = s.recv(4096)
            if d:
                try:
                    open_ += s.recv(4096) != b""
                except BlockingIOError:
                    open_ += 1
        except (BlockingIOError, OSError):
            pass
    check_eq(open_, 4, "silent clients held (max-handshakes = 4)")
    for c in held:
        check_eq(c.read(0, 512)[0], 0, "handshaken connections keep working")
    check(good_same_process(sock), "a good client gets the 7th slot")
    # The good client's slot frees when the server has seen it close,
    # which takes a while on a loaded host: retry, bounded.
    c7 = connect_go_retry(sock)
    c8 = connect_go_retry(sock)
    s9 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s9.settimeout(5)
    s9.connect(sock)
    check_eq(len(s9.recv(18)), 18, "greeting to a 9th client")
    s9.sendall(struct.pack(">I", 3))
    try:
        gone = s9.recv(4096) == b""
    except OSError:
        gone = True
    check(gone, "a 9th client that speaks is refused: every slot handshaken")
    for c in held + [c7, c8]:
        c.close()
    for s in silent + [s9]:
        s.close()
    srv.stop()


def connect_go_retry(path, seconds=15):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return connect_go(path)
        except (Closed, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


C.run("1,030 silent reconnecting clients: good clients served every time",
      attack_default_limits)
C.run("300 attackers, max-handshakes 64: the lobby overflows, good "
      "clients still served", attack_lobby_overflow)
C.run("max-connections 8, max-handshakes 4: 4 silent clients held, "
      "handshaken connections stay", handshake_limit_small)
C.finish()
