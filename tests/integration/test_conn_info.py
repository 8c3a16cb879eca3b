#!/usr/bin/python3
"""Layers see the connection they serve (nbd_conn_info, layer.h).

The test-only filter testinfo makes the first 4 KiB of the disk read as
what the server told the layers: a Unix client's pid, uid and gid, the
export name it asked for, a TCP client's address and port, and a number
that grows with each connection.  Read through libnbd from this process,
so the pid and the port can be checked against what the client knows.
"""

import os
import socket
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

BIN = T.require_test_layer("testinfo")
T.start_watchdog()
C = Checker("test_conn_info")


def info(h):
    text = h.pread(4096, 0).rstrip(b"\0").decode()
    return dict(kv.split("=", 1) for kv in text.split())


def unix_peer():
    cfg = os.path.join(T.TMPDIR, "u.ini")
    sock = os.path.join(T.TMPDIR, "u.sock")
    with open(cfg, "w") as f:
        f.write("[server]\nlisten = unix:%s\n[export disk1]\n"
                "filter = testinfo\nbackend = memory size=1M\n" % sock)
    srv = Server(config=cfg, sock=sock, name="u", binary=BIN)
    ids = []
    for _ in range(2):
        h = nbd.NBD()
        h.set_export_name("disk1")
        h.connect_unix(sock)
        i = info(h)
        h.shutdown()
        check_eq(i["family"], "unix", "family")
        check_eq(i["cred"], "1", "Unix peer credentials known")
        check_eq(int(i["pid"]), os.getpid(), "peer pid")
        check_eq(int(i["uid"]), os.getuid(), "peer uid")
        check_eq(int(i["gid"]), os.getgid(), "peer gid")
        check_eq(i["export"], "disk1", "export name asked for")
        check_eq(i["tls"], "0", "no TLS")
        ids.append(int(i["id"]))
    check(ids[1] > ids[0] >= 1, "connection numbers grow: %s" % ids)
    srv.stop()


def tcp_peer():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    sock = os.path.join(T.TMPDIR, "t.sock")
    srv = Server(["-p", str(port), "-i", "127.0.0.1", "--filter", "testinfo",
                  "memory", "size=1M"], sock=sock, name="t", binary=BIN)
    h = nbd.NBD()
    h.connect_tcp("127.0.0.1", str(port))
    i = info(h)
    check_eq(i["family"], "inet", "family")
    check_eq(i["addr"], "127.0.0.1", "peer address")
    check(int(i["port"]) > 0, "peer port %s" % i["port"])
    check_eq(i["cred"], "0", "no Unix credentials over TCP")
    check_eq(i["export"], "", "default export name")
    h.shutdown()
    srv.stop()


C.run("a Unix client: pid, uid, gid, export name, numbers", unix_peer)
C.run("a TCP client: address and port", tcp_peer)
C.finish()
