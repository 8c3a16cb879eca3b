#!/usr/bin/python3
"""Rough edges a new user hits first (deployment issue, faults 1-3).

- A second server started on the Unix socket of a live one refuses to
  start, and the first keeps serving; a stale socket (nobody listening)
  is replaced.
- A TCP address that cannot be bound is fatal: the server does not go on
  serving on the other addresses while another process answers there.
- An export whose stack cannot be opened (an offset window beyond the
  disk) answers NBD_OPT_GO with NBD_REP_ERR_UNKNOWN and the reason as
  the message, as nbdkit does (it was NBD_REP_ERR_PLATFORM: "Operation
  not supported" in nbdinfo, "lacks support for option 7" in qemu).
"""

import os
import socket
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import (Checker, Raw, Server, check, check_eq, rep_name,  # noqa: E402
                     OPT_GO, OPT_INFO)

T.require_layers("memory", "offset")
T.start_watchdog()
C = Checker("test_first_contact")


def run(args, timeout=10):
    return subprocess.run([T.NBDSTACK] + args, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def reachable(sock):
    c = T.connect_go(sock)
    err, data = c.read(0, 512)
    c.close()
    return err == 0


def live_unix_socket():
    srv = Server(["memory", "size=1M"], name="first")
    r = run(["-U", srv.sock, "memory", "size=1M"])
    check(r.returncode != 0, "a second server on a live socket refuses to start")
    check("another server is listening" in r.stderr, "says why: %r" % r.stderr)
    check(os.path.exists(srv.sock), "the live socket is still there")
    check(reachable(srv.sock), "the first server still serves on it")
    srv.stop()


def stale_unix_socket():
    path = os.path.join(T.TMPDIR, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)                # bound, never listening, then gone
    s.close()
    srv = Server(["memory", "size=1M"], sock=path, name="stale")
    check(reachable(path), "a stale socket is replaced")
    srv.stop()


def tcp_address_taken():
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("0.0.0.0", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    r = run(["-p", str(port), "memory", "size=1M"])
    busy.close()
    check(r.returncode != 0, "0.0.0.0:%d taken: the server does not start "
          "(on [::] alone)" % port)
    check("cannot listen on tcp 0.0.0.0:%d" % port in r.stderr,
          "names the address: %r" % r.stderr)


def open_failure_is_unknown():
    srv = Server(["--filter", "offset", "memory", "size=1M", "offset=2M"],
                 name="bad")
    for opt in (OPT_INFO, OPT_GO):
        c = Raw(srv.sock)
        c.handshake()
        replies = c.option(opt, Raw.go_data(b""))
        rep, msg = replies[-1]
        check_eq(rep_name(rep), "ERR_UNKNOWN", "reply to %s on a stack that "
                 "cannot open" % ("INFO" if opt == OPT_INFO else "GO"))
        check(b"cannot be opened" in msg and b"offset" in msg,
              "the reason is the message: %r" % msg)
        c.close()
    r = subprocess.run(["nbdinfo", srv.uri], capture_output=True, text=True,
                       timeout=20)
    check(r.returncode != 0, "nbdinfo fails")
    check("not supported" not in r.stderr.lower(),
          "nbdinfo does not say 'not supported': %r" % r.stderr)
    srv.stop()


C.run("a live Unix socket is not stolen", live_unix_socket)
C.run("a stale Unix socket is replaced", stale_unix_socket)
C.run("a TCP address that cannot be bound is fatal", tcp_address_taken)
C.run("a stack that cannot open: NBD_REP_ERR_UNKNOWN with the reason",
      open_failure_is_unknown)
C.finish()
