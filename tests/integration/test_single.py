#!/usr/bin/python3
"""Process modes: -s/--single serves one client on a socket given as
stdin/stdout (libnbd's connect_command: writes and reads, the size, the
data on disk once the client goes) and exits when the client goes, also
without a disconnect; -s refuses a stdin that is not a socket and the
listening options; --exit-with-parent ends the server with its parent,
and without it the server outlives its parent."""

import os
import signal
import socket
import struct
import subprocess
import sys
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import (MiB, Checker, check, check_eq)  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (module nbd) not available to %s" % sys.executable)

T.require_layers("memory", "file")
T.start_watchdog()
C = Checker("test_single")
BIN = T.NBDSTACK


def gone(pid, timeout=5.0):
    """True once pid has exited (a zombie of libnbd's counts)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def server_child():
    """The pid of the server libnbd started (this libnbd has no
    get_pid): our child running the binary."""
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            exe = os.readlink("/proc/%s/exe" % d)
        except OSError:
            continue
        if ppid == me and exe == BIN:
            return int(d)
    raise T.CheckFailed("no server child process found")


def connect_command_memory():
    h = nbd.NBD()
    h.connect_command([BIN, "-s", "memory", "size=1M"])
    check_eq(h.get_size(), 1 * MiB, "size")
    h.pwrite(b"single" * 100, 4096)
    check_eq(h.pread(600, 4096), b"single" * 100, "read back")
    check_eq(h.pread(4, 0), b"\0" * 4, "unwritten")
    pid = server_child()
    h.shutdown()
    check(gone(pid), "server %d still running after the client went" % pid)
    del h


def connect_command_file():
    path = os.path.join(T.TMPDIR, "disk.img")
    with open(path, "wb") as f:
        f.truncate(2 * MiB)
    h = nbd.NBD()
    h.connect_command([BIN, "--single", "file", path])
    h.pwrite(b"\xab" * 65536, MiB)
    pid = server_child()
    h.shutdown()
    check(gone(pid), "server still running after the client went")
    del h
    with open(path, "rb") as f:
        f.seek(MiB)
        check_eq(f.read(65536), b"\xab" * 65536, "data on disk")


def client_goes_without_disconnect():
    a, b = socket.socketpair()
    p = subprocess.Popen([BIN, "-s", "memory", "1M"], stdin=b, stdout=b,
                         stderr=subprocess.PIPE)
    b.close()
    a.settimeout(5)
    greeting = b""
    while len(greeting) < 18:
        chunk = a.recv(18 - len(greeting))
        check(chunk, "no greeting")
        greeting += chunk
    check_eq(struct.unpack(">QQ", greeting[:16]),
             (T.NBDMAGIC, T.IHAVEOPT), "greeting magic")
    a.close()
    try:
        rc = p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()
        raise T.CheckFailed("server did not exit when its client went")
    check_eq(rc, 0, "exit status")


def refuses(argv, stdin, words):
    p = subprocess.run(argv, stdin=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=10)
    err = p.stderr.decode()
    check_eq(p.returncode, 1, "exit status of %s" % argv[1:])
    for w in words:
        check(w in err, "%r not in %r" % (w, err))


def stdin_not_a_socket():
    refuses([BIN, "-s", "memory", "1M"], subprocess.DEVNULL,
            ["-s: standard input is not a socket"])
    r, w = os.pipe()
    try:
        refuses([BIN, "-s", "memory", "1M"], r, ["not a socket"])
    finally:
        os.close(r)
        os.close(w)


def single_with_listeners():
    for opt in (["-U", os.path.join(T.TMPDIR, "x.sock")], ["-p", "10999"],
                ["--run", "true"], ["--print-uri"]):
        refuses([BIN, "-s"] + opt + ["memory", "1M"], subprocess.DEVNULL,
                ["-s and %s are exclusive" % opt[0]])


def parent_and_server(extra):
    """A shell that starts the server in the background; returns the
    shell and the server's pid once its socket is up."""
    sock = os.path.join(T.TMPDIR, "ewp%d.sock" % len(extra))
    sh = subprocess.Popen(["/bin/sh", "-c", '"$@" & echo $!; wait', "sh",
                           BIN] + extra + ["-U", sock, "memory", "1M"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    pid = int(sh.stdout.readline())
    end = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < end:
        time.sleep(0.05)
    check(os.path.exists(sock), "server did not start")
    return sh, pid


def exit_with_parent():
    sh, pid = parent_and_server(["--exit-with-parent"])
    sh.kill()
    sh.wait()
    check(gone(pid), "server outlived its parent with --exit-with-parent")


def no_exit_with_parent():
    sh, pid = parent_and_server([])
    sh.kill()
    sh.wait()
    try:
        check(not gone(pid, 1.0), "server ended with its parent without "
              "--exit-with-parent (the test shows nothing)")
    finally:
        os.kill(pid, signal.SIGTERM)
        gone(pid)


C.run("connect_command: size, write, read, exit at disconnect",
      connect_command_memory)
C.run("connect_command: file written through, exit", connect_command_file)
C.run("client goes without NBD_CMD_DISC: exit 0", client_goes_without_disconnect)
C.run("-s: stdin not a socket is refused", stdin_not_a_socket)
C.run("-s: -U/-p/--run/--print-uri refused", single_with_listeners)
C.run("--exit-with-parent: ends with the parent", exit_with_parent)
C.run("without it: outlives the parent", no_exit_with_parent)
C.finish()
