#!/usr/bin/python3
"""The ip filter with real clients on a Unix socket and on TCP
(127.0.0.1): allow=uid:<mine> deny=all lets this user in; deny=uid:<mine>
closes the socket before the greeting and logs the client; allow wins
over deny whatever the order (nbdkit's rule); CIDR ranges, anyipv4 and
all match TCP clients; with two exports, the one whose ip filter refuses
answers NBD_REP_ERR_POLICY while the other serves; a bad rule is refused
at startup."""

import os
import socket
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

T.require_layers("ip", "memory")
T.start_watchdog()
C = Checker("test_ip")
servers = []
UID, GID = os.getuid(), os.getgid()


def unix_let_in(sock):
    h = nbd.NBD()
    h.connect_unix(sock)
    h.pread(512, 0)
    h.shutdown()


def unix_refused(srv):
    r = T.Raw(srv.sock)
    check(r.wait_closed(5) and r.drained == b"",
          "a refused client got %r before the close" % r.drained)
    r.close()
    deadline = time.monotonic() + 5
    while "refused" not in srv.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    check("client unix pid %d uid %d" % (os.getpid(), UID) in srv.log_text(),
          "the refusal is logged with the client: %r" % srv.log_text())


def unix_rules():
    for rules, ok in ((["allow=uid:%d" % UID, "deny=all"], True),
                      (["deny=uid:%d" % UID], False),
                      (["deny=all", "allow=gid:%d" % GID], True),
                      (["deny=anyunix"], False),
                      (["deny=pid:1,uid:%d" % (UID + 1)], True),
                      (["deny=anyipv4,anyipv6"], True)):
        srv = Server(["--filter", "ip", "memory", "size=1M"] + rules,
                     name="u%d" % len(servers))
        servers.append(srv)
        try:
            if ok:
                unix_let_in(srv.sock)
            else:
                unix_refused(srv)
        except T.CheckFailed as e:
            raise T.CheckFailed("%s: %s" % (rules, e))
        srv.stop()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tcp_server(rules, name):
    port = free_port()
    sock = os.path.join(T.TMPDIR, name + ".sock")
    conf = os.path.join(T.TMPDIR, name + ".conf")
    with open(conf, "w") as f:
        f.write("[server]\nlisten = unix:%s\nlisten = tcp:127.0.0.1:%d\n"
                "[export \"\"]\nfilter = ip %s\nbackend = memory size=1M\n"
                "[export other]\nbackend = memory size=1M\n"
                % (sock, port, " ".join(rules)))
    srv = Server(config=conf, sock=sock, name=name)
    servers.append(srv)
    return srv, port


def tcp_ok(port, export=""):
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_tcp("127.0.0.1", str(port))
    h.pread(512, 0)
    h.shutdown()


def tcp_policy(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    r = T.Raw.__new__(T.Raw)
    r.s = s
    r.structured = False
    r.cookie = 0x1000
    r.handshake()
    rep, _ = r.info_or_go(T.OPT_GO, b"")
    check_eq(T.rep_name(rep), "ERR_POLICY", "GO on the refusing export")
    rep, _ = r.info_or_go(T.OPT_GO, b"other")
    check_eq(T.rep_name(rep), "ACK", "GO on the other export")
    s.close()


def tcp_rules():
    srv, port = tcp_server(["allow=127.0.0.1", "deny=all"], "t1")
    tcp_ok(port)
    unix_refused_export(srv)
    srv.stop()
    srv, port = tcp_server(["deny=127.0.0.0/8"], "t2")
    tcp_policy(port)
    tcp_ok(port, "other")
    unix_let_in(srv.sock)
    srv.stop()
    srv, port = tcp_server(["deny=10.0.0.0/8,::1/128"], "t3")
    tcp_ok(port)
    srv.stop()
    srv, port = tcp_server(["deny=anyipv4"], "t4")
    tcp_policy(port)
    srv.stop()


def unix_refused_export(srv):
    """On the Unix socket the refusing export answers POLICY (another
    export serves, so the client is greeted)."""
    r = T.Raw(srv.sock)
    r.handshake()
    rep, _ = r.info_or_go(T.OPT_GO, b"")
    check_eq(T.rep_name(rep), "ERR_POLICY", "unix client, refusing export")
    r.close()


def bad_rules():
    for rule, want in (("allow=300.1.1.1", "not an address"),
                       ("deny=10.0.0.0/33", "prefix length"),
                       ("allow=uid:x", "not a number"),
                       ("deny=vsock-cid:3", "not an address")):
        r = subprocess.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "x"),
                            "--filter", "ip", "memory", "size=1M", rule],
                           capture_output=True, text=True, timeout=10)
        check(r.returncode != 0 and want in r.stderr,
              "%s: rc %d, %r" % (rule, r.returncode, r.stderr))


C.run("Unix peers by uid, gid, pid; nbdkit's allow-then-deny rule",
      unix_rules)
C.run("TCP clients by address, CIDR and anyipv4; per export", tcp_rules)
C.run("bad rules are refused at startup", bad_rules)
C.finish(servers)
