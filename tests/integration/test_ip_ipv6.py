#!/usr/bin/python3
"""The ip filter over real IPv6 TCP sockets.  A server listening on
[::1]: allow/deny of ::1, ::/0, CIDR ranges of IPv6 (::1/128, ::/127),
anyipv6, anyipv4 and all decide for a client from ::1 by nbdkit's
allow-then-deny rule, refused clients logged with their address.  A
dual-stack socket (IPV6_V6ONLY off, handed over by socket activation):
an IPv4 client comes as ::ffff:127.0.0.1 and is an IPv4 client (anyipv4,
127.0.0.0/8, and the mapped rules ::ffff:127.0.0.1 and ::ffff:0:0/96
match it; anyipv6 and ::/0 do not), while a ::1 client on the same
socket is IPv6.  The keyword rules give the same answers as nbdkit's for
the ::1 client (nbdkit 1.32.5 cannot parse address rules: "don't know
how to parse rule").  Skipped, saying so, without an IPv6 loopback."""

import errno
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

try:
    _s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    _s.bind(("::1", 0))
    _s.close()
except OSError as e:
    T.skip("no IPv6 loopback in this container (bind [::1]: %s)" % e)

T.require_layers("ip", "memory")
T.start_watchdog()
C = Checker("test_ip_ipv6")
servers = []


def free_port(family=socket.AF_INET6, host="::1"):
    s = socket.socket(family)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def let_in(host, port):
    """True when the client gets through the handshake and reads; False
    when the server closes the connection (a refused connect is an
    error: nothing listens)."""
    h = nbd.NBD()
    try:
        h.connect_tcp(host, str(port))
    except nbd.Error as e:
        if e.errno == errno.ECONNREFUSED:
            raise T.CheckFailed("nothing listens on [%s]:%d" % (host, port))
        return False
    h.pread(512, 0)
    h.shutdown()
    return True


def wait_log(srv, text, timeout=5):
    deadline = time.monotonic() + timeout
    while text not in srv.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return text in srv.log_text()


# rules, is the ::1 client let in
V6_CASES = [
    (["allow=::1", "deny=all"], True),
    (["deny=::1"], False),
    (["deny=::1/128"], False),
    (["deny=::/127"], False),           # ::0 and ::1
    (["deny=::2/127"], True),           # ::2 and ::3
    (["deny=::/0"], False),
    (["allow=::1/128", "deny=::/0"], True),
    (["deny=anyipv6"], False),
    (["deny=anyipv4"], True),
    (["allow=anyipv6", "deny=all"], True),
    (["allow=anyipv4", "deny=all"], False),
    (["deny=all", "allow=0:0:0:0:0:0:0:1"], True),
    (["deny=127.0.0.0/8,fe80::/10"], True),
    (["deny=2001:db8::/32,::1"], False),
]


def on_ipv6_loopback():
    for i, (rules, ok) in enumerate(V6_CASES):
        port = free_port()
        srv = Server(["-i", "::1", "-p", str(port), "--filter", "ip",
                      "memory", "size=1M"] + rules, name="v6_%d" % i)
        servers.append(srv)
        try:
            check_eq(let_in("::1", port), ok, "%s: ::1 let in" % rules)
            if not ok:
                check(wait_log(srv, "client ::1 refused"),
                      "%s: the refusal is logged with the address: %r"
                      % (rules, srv.log_text()))
        finally:
            srv.stop()


def spawn_dual_stack(port, args, name):
    """Our server on a dual-stack [::]:port socket passed as fd 3."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(16)
    fd = s.fileno()
    logpath = os.path.join(T.TMPDIR, name + ".log")

    # close_fds would close fd 3 after pre() made it (it closes what is
    # not in pass_fds); Python's own descriptors are close-on-exec anyway.
    def pre():
        os.dup2(fd, 3)
        os.set_inheritable(3, True)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"
    log = open(logpath, "wb")
    p = subprocess.Popen([T.NBDSTACK] + args, preexec_fn=pre,
                         close_fds=False, stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log)
    s.close()
    log.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(logpath) as f:
            if "serving" in f.read():
                break
        time.sleep(0.05)
    return p, logpath


# rules, is the IPv4 client (::ffff:127.0.0.1) let in, is ::1 let in
DUAL_CASES = [
    (["deny=anyipv4"], False, True),
    (["deny=anyipv6"], True, False),
    (["allow=127.0.0.1", "deny=all"], True, False),
    (["deny=127.0.0.0/8"], False, True),
    (["allow=::ffff:127.0.0.1", "deny=all"], True, False),
    (["deny=::ffff:0:0/96"], False, True),
    (["deny=::ffff:127.0.0.0/104"], False, True),
    (["deny=::ffff:10.0.0.0/104"], True, True),
    (["deny=::/0"], True, False),
    (["allow=::1", "deny=all"], False, True),
    (["allow=anyipv4,::1", "deny=all"], True, True),
]


def on_dual_stack():
    try:
        port = free_port(socket.AF_INET6, "::")
    except OSError as e:
        T.log("  (skipped: no dual-stack socket: %s)" % e)
        return
    for i, (rules, ok4, ok6) in enumerate(DUAL_CASES):
        p, logpath = spawn_dual_stack(port, ["--filter", "ip", "memory",
                                             "size=1M"] + rules,
                                      "dual%d" % i)
        try:
            check_eq(let_in("127.0.0.1", port), ok4,
                     "%s: IPv4 client let in" % rules)
            check_eq(let_in("::1", port), ok6, "%s: ::1 let in" % rules)
            if not ok4:
                deadline = time.monotonic() + 5
                text = ""
                while time.monotonic() < deadline:
                    with open(logpath) as f:
                        text = f.read()
                    if "client ::ffff:127.0.0.1 refused" in text:
                        break
                    time.sleep(0.05)
                check("client ::ffff:127.0.0.1 refused" in text,
                      "%s: refusal logged: %r" % (rules, text))
        finally:
            p.terminate()
            check_eq(p.wait(10), 0, "%s: exit status" % rules)


def keywords_as_nbdkit():
    import shutil
    if not shutil.which("nbdkit"):
        T.log("  (skipped: nbdkit not installed)")
        return
    for rules, ok in V6_CASES:
        if any(any(c in r for c in ":./") for r in rules):
            continue                    # nbdkit 1.32.5 cannot parse these
        port = free_port()
        k = subprocess.Popen(["nbdkit", "-f", "-i", "::1", "-p", str(port),
                              "--filter=ip", "memory", "1M"] + rules,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with open("/proc/net/tcp6") as f:
                    if ":%04X 00000000000000000000000000000000:0000 0A" % port \
                            in f.read():
                        break
                time.sleep(0.05)
            check_eq(let_in("::1", port), ok, "nbdkit %s: ::1 let in" % rules)
        finally:
            k.terminate()
            k.wait(10)


C.run("a server on [::1]: IPv6 addresses, CIDR, keywords", on_ipv6_loopback)
C.run("a dual-stack socket: IPv4-mapped clients are IPv4", on_dual_stack)
C.run("keyword rules for ::1 as nbdkit's", keywords_as_nbdkit)
C.finish(servers)
