#!/usr/bin/python3
"""The limit filter through libnbd and a raw client: with limit=1 a
second client is refused in the handshake with NBD_REP_ERR_POLICY and a
message that says why (the socket stays open for more options), nbdinfo
fails at NBD_OPT_GO, and once the first client leaves the next one gets in; limit=2
lets two in and refuses the third; limit=0 has no limit."""

import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("limit", "memory")
T.start_watchdog()
C = Checker("test_limit")
servers = []


def connect(sock):
    h = nbd.NBD()
    h.connect_unix(sock)
    return h


def connect_when_free(sock, tries=100):
    """The slot of a client that just left is freed when the server has
    closed its connection, a moment after the client's shutdown: a loaded
    machine may refuse the next client until then.  Try for 10 s."""
    import time
    for i in range(tries):
        try:
            return connect(sock)
        except nbd.Error:
            if i == tries - 1:
                raise
            time.sleep(0.1)


def refused_in_handshake(sock):
    r = T.Raw(sock)
    r.handshake()
    r.send_opt(T.OPT_GO, r.go_data(b""))
    rep, msg = r.recv_opt_reply(T.OPT_GO)
    check_eq(T.rep_name(rep), "ERR_POLICY", "GO over the limit")
    check(b"limit" in msg, "the reply says why: %r" % msg)
    # The session goes on: the server answers another option.
    rep2 = r.option(T.OPT_LIST)[-1][0]
    check_eq(T.rep_name(rep2), "ACK", "NBD_OPT_LIST after the refusal")
    r.close()


def limit_one():
    srv = Server(["--filter", "limit", "memory", "size=1M"], name="l1")
    servers.append(srv)
    h = connect(srv.sock)
    h.pwrite(b"q" * 512, 0)
    refused_in_handshake(srv.sock)
    p = subprocess.run(["nbdinfo", srv.uri], capture_output=True, text=True,
                       timeout=20)
    check(p.returncode != 0 and "opt_go" in p.stderr,
          "nbdinfo over the limit: rc %d, %r" % (p.returncode, p.stderr))
    h.shutdown()
    h2 = connect_when_free(srv.sock)    # the slot is free again
    check_eq(h2.pread(512, 0), b"q" * 512, "data for the next client")
    h2.shutdown()
    check_eq(srv.stop(), 0, "exit status")


def limit_two_and_zero():
    srv = Server(["--filter", "limit", "memory", "size=1M", "limit=2"],
                 name="l2")
    servers.append(srv)
    hs = [connect(srv.sock), connect(srv.sock)]
    refused_in_handshake(srv.sock)
    for h in hs:
        h.shutdown()
    srv.stop()
    srv = Server(["--filter", "limit", "memory", "size=1M", "limit=0"],
                 name="l0")
    servers.append(srv)
    hs = [connect(srv.sock) for _ in range(5)]
    for h in hs:
        h.shutdown()
    srv.stop()


C.run("limit=1: the second client is refused in the handshake", limit_one)
C.run("limit=2 refuses the third; limit=0 has no limit", limit_two_and_zero)
C.finish(servers)
