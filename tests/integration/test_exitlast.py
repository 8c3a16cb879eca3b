#!/usr/bin/python3
"""The exitlast filter through libnbd: the server does not exit before a
first client; with two clients it stays while one is left; when the last
one leaves it exits 0 on its own, after writing back what the client
wrote into a write-back cache (never flushed by the client) to the file
below.  (nbdinfo --list ends it too, as it ends nbdkit: its NBD_OPT_INFO
opens the export.)"""

import os
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

T.require_layers("exitlast", "cache", "file", "memory")
T.start_watchdog()
C = Checker("test_exitlast")
servers = []


def wait_exit(srv, timeout=10):
    try:
        return srv.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def exits_after_last_with_data_flushed():
    disk = os.path.join(T.TMPDIR, "disk.img")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    srv = Server(["--filter", "exitlast", "--filter", "cache", "file",
                  "file=" + disk], name="el")
    servers.append(srv)
    time.sleep(0.5)
    check(srv.alive(), "exited before any client came")
    a = nbd.NBD()
    a.connect_unix(srv.sock)
    b = nbd.NBD()
    b.connect_unix(srv.sock)
    a.pwrite(b"A" * 4096, 0)
    a.shutdown()
    time.sleep(0.5)
    check(srv.alive(), "exited while a client was still connected")
    b.pwrite(b"B" * 4096, 4096)     # no flush: the cache holds it
    b.shutdown()
    rc = wait_exit(srv)
    check_eq(rc, 0, "exit status after the last client left")
    with open(disk, "rb") as f:
        data = f.read(8192)
    check_eq(data, b"A" * 4096 + b"B" * 4096, "data written back at exit")
    check("exit requested" in srv.log_text(), "the exit is logged")
    check(not os.path.exists(srv.sock), "the socket is removed")


C.run("exits 0 after the last client, having flushed",
      exits_after_last_with_data_flushed)
C.finish(servers)
