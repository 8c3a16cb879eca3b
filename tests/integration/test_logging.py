#!/usr/bin/python3
"""Logging and status reporting, through the real binary.

- Each client that gets an export is logged at the default level when it
  connects (peer, export) and when it disconnects (peer, export, bytes
  read and written, requests, duration); a probe that never negotiates
  is not.
- stderr that is the journal (JOURNAL_STREAM = its device:inode) gets
  sd-daemon "<N>" priority prefixes; a JOURNAL_STREAM naming another
  file does not.
- log = syslog:PATH (and --log): one datagram per line, in the usual
  "<PRI>Mmm dd hh:mm:ss nbdstack[PID]: message" format, facility daemon;
  nothing on stderr.
- Bad `log` values and a syslog socket nobody listens on: exit 1 with a
  clear message.
- $NOTIFY_SOCKET gets READY=1 with MAINPID= and a STATUS= line (exports,
  connections), and a new STATUS= when a connection starts and ends.
"""

import os
import re
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402
import nbd             # noqa: E402

T.require_layers("memory")
T.start_watchdog()
C = Checker("test_logging")


def wait_for(fn, what, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise CheckFailed("timed out waiting for " + what)


def client(sock, export=""):
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)
    return h


def connect_disconnect():
    conf = os.path.join(T.TMPDIR, "cd.conf")
    sock = os.path.join(T.TMPDIR, "cd.sock")
    with open(conf, "w") as f:
        f.write("[server]\nlisten = unix:%s\n\n[export vm1]\n"
                "backend = memory size=8M\n" % sock)
    s = Server(config=conf, sock=sock, name="cd")
    try:
        h = client(sock, "vm1")
        me = "unix pid %d uid %d" % (os.getpid(), os.getuid())
        line = wait_for(lambda: [ln for ln in s.log_text().splitlines()
                                 if "connect: " in ln and "dis" not in ln],
                        "the connect line")
        check_eq(line, ['nbdstack: connect: %s, export "vm1"' % me],
                 "connect line")
        h.pwrite(b"a" * 4096, 0)
        h.pread(8192, 0)
        h.pread(512, 4096)
        h.shutdown()
        line = wait_for(lambda: [ln for ln in s.log_text().splitlines()
                                 if "disconnect: " in ln],
                        "the disconnect line")
        check(len(line) == 1, "one disconnect line: %r" % line)
        m = re.fullmatch(r'nbdstack: disconnect: (.*), export "vm1": read '
                         r'(\d+) bytes, wrote (\d+) bytes, (\d+) requests, '
                         r'(\d+)\.(\d{3})s', line[0])
        check(m is not None, "disconnect line format: %r" % line[0])
        check_eq(m.group(1), me, "peer")
        check_eq(int(m.group(2)), 8192 + 512, "bytes read")
        check_eq(int(m.group(3)), 4096, "bytes written")
        check_eq(int(m.group(4)), 3, "requests")
        # a client that connects and leaves without negotiating
        r = socket.socket(socket.AF_UNIX)
        r.connect(sock)
        r.close()
        time.sleep(0.3)
        check_eq(s.log_text().count("connect: "), 2,
                 "a probe that never negotiated is not logged")
    finally:
        check_eq(s.stop(), 0, "exit status")


def journal_prefixes(match):
    name = "journal%d" % match
    path = os.path.join(T.TMPDIR, name + ".log")
    open(path, "wb").close()
    st = os.stat(path)
    env = dict(os.environ)
    env["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino + (0 if match else 1))
    s = Server(["memory", "size=8M"], name=name, env=env)
    try:
        h = client(s.sock)
        h.shutdown()
        wait_for(lambda: "disconnect: " in s.log_text(), "disconnect line")
    finally:
        s.stop()
    text = s.log_text()
    if match:
        check(re.search(r"^<6>listening on ", text, re.M),
              "info lines get <6>: %r" % text[:300])
        check(re.search(r"^<6>connect: ", text, re.M), "connect line gets <6>")
        check("nbdstack: " not in text, "no program-name prefix in the journal")
    else:
        check(re.search(r"^nbdstack: listening on ", text, re.M),
              "another file's JOURNAL_STREAM: plain lines: %r" % text[:300])
        check(not re.search(r"^<\d>", text, re.M), "no priority prefixes")


def journal_error():
    path = os.path.join(T.TMPDIR, "jerr.log")
    with open(path, "wb") as f:
        st = os.fstat(f.fileno())
        env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
        # A valid value whose socket is not there: refused when the
        # server starts, through the logger (a bad value is refused by
        # the option parser, before logging is set up).
        rc = subprocess.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "x.sock"),
                             "--log=syslog:/nonexistent/log.sock", "memory",
                             "size=1M"], env=env,
                            stderr=f, stdout=f, timeout=10).returncode
    check_eq(rc, 1, "exit status")
    text = open(path).read()
    check(text.startswith("<3>error: log: cannot connect to the syslog "
                          "socket /nonexistent/log.sock"),
          "an error gets <3>: %r" % text)
    r = subprocess.run([T.NBDSTACK, "--log=bogus", "memory", "size=1M"],
                       capture_output=True, text=True, timeout=10)
    check(r.returncode != 0 and "--log: invalid value 'bogus'" in r.stderr,
          "a bad value is refused by the option parser: %r" % r.stderr)


def syslog(how):
    path = os.path.join(T.TMPDIR, "log-%s.dgram" % how)
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ls.bind(path)
    ls.settimeout(5)
    if how == "config":
        conf = os.path.join(T.TMPDIR, "sl.conf")
        sock = os.path.join(T.TMPDIR, "sl.sock")
        with open(conf, "w") as f:
            f.write("[server]\nlisten = unix:%s\nlog = syslog:%s\n\n"
                    "[export \"\"]\nbackend = memory size=8M\n" % (sock, path))
        s = Server(config=conf, sock=sock, name="syslog-" + how)
    else:
        s = Server(["--log=syslog:" + path, "memory", "size=8M"],
                   name="syslog-" + how)
    pid = s.proc.pid
    head = r"<30>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d nbdstack\[%d\]: " % pid

    def until(what):
        """Datagrams up to the one with what; each in syslog format."""
        while True:
            got = ls.recv(4096).decode()
            check(re.match(head, got), "syslog format: %r" % got)
            if what in got:
                return got[got.index("]: ") + 3:]
    try:
        check_eq(until("listening on "), "listening on " + s.sock,
                 "listening line")
        h = client(s.sock)
        check_eq(until("connect: "), 'connect: unix pid %d uid %d, export ""'
                 % (os.getpid(), os.getuid()), "connect line")
        h.shutdown()
        check(until("disconnect: ").startswith("disconnect: unix pid "),
              "disconnect line")
    finally:
        rc = s.stop()
        try:
            until("shutting down")
        finally:
            ls.close()
    check_eq(rc, 0, "exit status")
    check_eq(s.log_text(), "", "nothing on stderr")


def bad_values():
    sock = os.path.join(T.TMPDIR, "bad.sock")
    cases = [
        ("bogus", "log: invalid value 'bogus' (expected stderr, syslog, "
                  "syslog:/PATH or null)"),
        ("syslog:relative/sock", "log: invalid syslog socket 'relative/sock'"),
        ("syslog:" + os.path.join(T.TMPDIR, "nobody.sock"),
         "log: cannot connect to the syslog socket %s: No such file or "
         "directory" % os.path.join(T.TMPDIR, "nobody.sock")),
    ]
    for value, msg in cases:
        p = subprocess.run([T.NBDSTACK, "-U", sock, "--log=" + value,
                            "memory", "size=1M"], capture_output=True,
                           text=True, timeout=10)
        check_eq(p.returncode, 1, "exit status for --log=%s" % value)
        check(msg in p.stderr, "--log=%s: %r" % (value, p.stderr))
        check(not os.path.exists(sock), "did not listen with --log=%s" % value)


def status_lines():
    path = os.path.join(T.TMPDIR, "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(path)
    ns.settimeout(5)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    s = Server(["memory", "size=8M"], name="status", env=env)
    try:
        first = ns.recv(4096).decode().split("\n")
        check("READY=1" in first, "READY=1: %r" % first)
        check("MAINPID=%d" % s.proc.pid in first, "MAINPID: %r" % first)
        # Server() probed the socket: that connection may come and go.
        msgs = []
        h = client(s.sock)

        def saw(want):
            try:
                msgs.append(ns.recv(4096).decode())
            except socket.timeout:
                pass
            return want in msgs
        wait_for(lambda: saw("STATUS=serving 1 export, 1 connection"),
                 "1 connection (got %r)" % msgs)
        h.shutdown()
        wait_for(lambda: msgs[-1] == "STATUS=serving 1 export, 0 connections"
                 or saw("STATUS=serving 1 export, 0 connections"),
                 "0 connections")
        check(any(line.startswith("STATUS=serving 1 export, ")
                  for line in first), "STATUS with READY: %r" % first)
    finally:
        s.stop()
        ns.close()


C.run("connect and disconnect lines at the default level", connect_disconnect)
C.run("journal: priority prefixes when stderr is JOURNAL_STREAM",
      journal_prefixes, 1)
C.run("journal: plain lines when JOURNAL_STREAM is another file",
      journal_prefixes, 0)
C.run("journal: an error gets <3>", journal_error)
C.run("syslog: --log=syslog:PATH", syslog, "option")
C.run("syslog: log = syslog:PATH in the config", syslog, "config")
C.run("bad log values: exit 1 with a message", bad_values)
C.run("NOTIFY_SOCKET: MAINPID and STATUS lines", status_lines)
C.finish(T._servers)
