#!/usr/bin/python3
"""The exitwhen filter: each of the five events (file created, file
deleted, process exited, pipe closed, script exiting 88) makes an idle
server exit 0 within a few polls (exit-when-poll=0.2); with a client
connected, the event closes the listening socket (no new client) while
the connected client is still served, and the server exits 0 once it
leaves, its writes flushed from a write-back cache to the file below; an
event already true at startup exits at once; a script exiting 1 is
logged and does not exit; bad values are refused at startup."""

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

T.require_layers("exitwhen", "cache", "file", "memory")
T.start_watchdog(120)
C = Checker("test_exitwhen")
servers = []


def wait_exit(proc, timeout=10):
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def serve(keys, name, **kw):
    srv = Server(["--filter", "exitwhen", "memory", "size=1M",
                  "exit-when-poll=0.2"] + keys, name=name, **kw)
    servers.append(srv)
    return srv


def idle_events():
    f1 = os.path.join(T.TMPDIR, "created")
    srv = serve(["exit-when-file-created=" + f1], "created")
    time.sleep(0.5)
    check(srv.alive(), "exited before the file was created")
    open(f1, "w").close()
    check_eq(wait_exit(srv.proc), 0, "file created: exit status")

    f2 = os.path.join(T.TMPDIR, "deleted")
    open(f2, "w").close()
    srv = serve(["exit-when-file-deleted=" + f2], "deleted")
    time.sleep(0.5)
    check(srv.alive(), "exited before the file was deleted")
    os.unlink(f2)
    check_eq(wait_exit(srv.proc), 0, "file deleted: exit status")

    sleeper = subprocess.Popen(["sleep", "60"])
    srv = serve(["exit-when-process-exits=%d" % sleeper.pid], "proc")
    time.sleep(0.5)
    check(srv.alive(), "exited before the process did")
    sleeper.kill()
    sleeper.wait()
    check_eq(wait_exit(srv.proc), 0, "process exited: exit status")

    flag = os.path.join(T.TMPDIR, "flag")
    script = "test -e %s && exit 88; exit 0" % flag
    srv = serve(["exit-when-script=" + script], "script")
    time.sleep(0.5)
    check(srv.alive(), "exited before the script said so")
    open(flag, "w").close()
    check_eq(wait_exit(srv.proc), 0, "script exit 88: exit status")


def pipe_closed():
    r, w = os.pipe()
    sock = os.path.join(T.TMPDIR, "pipe.sock")
    proc = subprocess.Popen([T.NBDSTACK, "-U", sock, "--filter", "exitwhen",
                             "memory", "size=1M", "exit-when-poll=0.2",
                             "exit-when-pipe-closed=%d" % r],
                            pass_fds=(r,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(r)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        check(proc.poll() is None, "exited before the pipe closed")
        os.close(w)
        check_eq(wait_exit(proc), 0, "pipe closed: exit status")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def client_finishes_first():
    disk = os.path.join(T.TMPDIR, "disk.img")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    flag = os.path.join(T.TMPDIR, "stop")
    srv = Server(["--filter", "exitwhen", "--filter", "cache", "file",
                  "file=" + disk, "exit-when-poll=0.2",
                  "exit-when-file-created=" + flag], name="busy")
    servers.append(srv)
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    h.pwrite(b"W" * 4096, 0)
    open(flag, "w").close()
    deadline = time.monotonic() + 10
    while os.path.exists(srv.sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    check(not os.path.exists(srv.sock), "the listening socket stays")
    check(srv.alive(), "exited with a client connected")
    h.pwrite(b"X" * 4096, 4096)     # still served, never flushed
    check_eq(h.pread(4096, 0), b"W" * 4096, "read after the event")
    h.shutdown()
    check_eq(wait_exit(srv.proc), 0, "exit status after the client left")
    with open(disk, "rb") as f:
        check_eq(f.read(8192), b"W" * 4096 + b"X" * 4096,
                 "data written back at exit")


def at_startup_and_errors():
    f = os.path.join(T.TMPDIR, "already")
    open(f, "w").close()
    sock = os.path.join(T.TMPDIR, "already.sock")
    p = subprocess.run([T.NBDSTACK, "-U", sock, "--filter", "exitwhen",
                        "memory", "size=1M", "exit-when-file-created=" + f],
                       capture_output=True, text=True, timeout=20)
    check_eq(p.returncode, 0, "event true at startup: exit status (%s)"
             % p.stderr)
    srv = serve(["exit-when-script=exit 1"], "script1")
    time.sleep(0.6)
    check(srv.alive(), "a script exiting 1 stopped the server")
    check("exit status 1" in srv.log_text(), "the script's failure is logged")
    check_eq(srv.stop(), 0, "exit status")
    for key, want in (("exit-when-process-exits=abc", "not a number"),
                      ("exit-when-pipe-closed=1000", "not open"),
                      ("exit-when-poll=0", "more than 0"),
                      ("exit-when-fil=/x", "unknown key")):
        p = subprocess.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "x"),
                            "--filter", "exitwhen", "memory", "size=1M", key],
                           capture_output=True, text=True, timeout=10)
        check(p.returncode != 0 and want in p.stderr,
              "%s: rc %d, %r" % (key, p.returncode, p.stderr))


C.run("idle: file created/deleted, process, script each exit 0",
      idle_events)
C.run("idle: pipe closed exits 0", pipe_closed)
C.run("a connected client is served to the end, then exit 0 flushed",
      client_finishes_first)
C.run("event at startup exits at once; script errors; bad values",
      at_startup_and_errors)
C.finish(servers)
