#!/usr/bin/python3
"""max-buffer-memory bounds the buffers of every connection together.

60 clients each send four 32 MiB READs and never read the replies: each
connection holds a 32 MiB buffer that cannot leave, 1.9 GiB in all
(before the bound the server's RSS grew with every such client; its
per-connection bounds multiply by max-connections).  With
max-buffer-memory = 256M the server stays near 256 MiB, and a good client
doing small reads is still served meanwhile; once the attackers go, a
32 MiB read works again.  The server runs under `prlimit --as` so that
without the bound it fails (allocations refused, RSS over the bound)
instead of exhausting the machine.
"""

import os
import shutil
import socket
import struct
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import (MiB, Checker, Server, check, check_eq, connect_go,  # noqa: E402
                     log, REQUEST_MAGIC)

T.require_layers("null")
T.start_watchdog()
C = Checker("test_buffer_memory")
if os.environ.get("NBD_SANITIZER"):
    T.skip("a sanitizer build maps shadow memory: prlimit --as does not fit")
if not shutil.which("prlimit"):
    T.skip("prlimit (util-linux) is not installed")

ATTACKERS = 60
READ = 32 * MiB


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


def attacker(sock):
    c = connect_go(sock)
    c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # DF: zeros go as data, not as a hole chunk, so the reply is 32 MiB.
    for i in range(4):
        c.s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 1 << 2, 0, 1000 + i,
                                i * READ, READ))
    return c


def good_small_read(sock):
    c = connect_go(sock, timeout=10)
    err, data = c.read(4096, 4096)
    c.close()
    return err == 0 and data == b"\0" * 4096


def bounded():
    cfg = os.path.join(T.TMPDIR, "bm.ini")
    sock = os.path.join(T.TMPDIR, "bm.sock")
    with open(cfg, "w") as f:
        f.write("[server]\nlisten = unix:%s\nmax-buffer-memory = 256M\n"
                "[export \"\"]\nbackend = null size=8G\n" % sock)
    srv = Server(config=cfg, sock=sock, name="bm",
                 prefix=["prlimit", "--as=%d" % (1536 * MiB), "--"])
    base = rss_mib(srv.proc.pid)
    held = []
    for _ in range(ATTACKERS):
        held.append(attacker(sock))
    time.sleep(2)
    peak = rss_mib(srv.proc.pid)
    log("RSS: %d MiB before, %d MiB with %d attackers holding 32 MiB "
        "replies" % (base, peak, ATTACKERS))
    t0 = time.monotonic()
    ok = good_small_read(sock)
    took = time.monotonic() - t0
    peak = max(peak, rss_mib(srv.proc.pid))
    check(srv.alive(), "server alive under the attack")
    check(peak <= 256 + 64, "RSS %d MiB stays near max-buffer-memory "
          "(256 MiB)" % peak)
    check(ok, "a good client's 4 KiB read is served during the attack")
    check(took < 5, "... within 5 s (took %.1f s)" % took)
    for c in held:
        c.close()
    time.sleep(0.5)
    c = connect_go(sock, timeout=10)
    err, data = c.read(0, READ)
    check_eq((err, len(data)), (0, READ), "a 32 MiB read after the attack")
    c.close()
    check("ENOMEM" not in srv.log_text() and "Cannot allocate" not in
          srv.log_text(), "no allocation failed")
    srv.stop()


def config_errors():
    cfg = os.path.join(T.TMPDIR, "bad.ini")
    with open(cfg, "w") as f:
        f.write("[server]\nmax-buffer-memory = 1M\n"
                "[export \"\"]\nbackend = null size=1M\n")
    r = subprocess.run([T.NBDSTACK, "--check-config", cfg],
                       capture_output=True, text=True)
    check(r.returncode != 0, "max-buffer-memory = 1M refused")
    check("bad.ini:2: max-buffer-memory: invalid value '1M'" in r.stderr,
          "message names file, line and key: %r" % r.stderr)


C.run("60 clients leave 32 MiB replies unread: RSS bounded, good client "
      "served", bounded)
C.run("max-buffer-memory below 64M is refused", config_errors)
C.finish()
