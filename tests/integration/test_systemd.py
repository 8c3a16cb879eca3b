#!/usr/bin/python3
"""systemd integration without libsystemd.

- Socket activation: the server serves on an inherited listening socket
  (fd 3, LISTEN_PID = its pid, LISTEN_FDS = 1), ignores the listen
  addresses it was given, and leaves the inherited socket's path alone.
- LISTEN_PID of another process: the variables are ignored.
- Readiness: READY=1 arrives on $NOTIFY_SOCKET (a path, and an abstract
  '@' address) once the server accepts clients, STOPPING=1 on SIGTERM.
"""

import os
import signal
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("memory")
T.start_watchdog()
C = Checker("test_systemd")


def spawn_activated(lsock, args, listen_pid_self=True, env_extra=None):
    """fork; in the child put lsock on fd 3, set LISTEN_* and exec."""
    pid = os.fork()
    if pid == 0:
        try:
            fd = lsock.fileno()
            if fd != 3:
                os.dup2(fd, 3)
            os.set_inheritable(3, True)
            env = dict(os.environ)
            env["LISTEN_PID"] = str(os.getpid() if listen_pid_self else 1)
            env["LISTEN_FDS"] = "1"
            env["LISTEN_FDNAMES"] = "nbd"
            env.update(env_extra or {})
            log_fd = os.open(os.path.join(T.TMPDIR, "act.log"),
                             os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(log_fd, 2)
            os.execve(T.NBDSTACK, [T.NBDSTACK] + args, env)
        finally:
            os._exit(127)
    return pid


def wait_exit(pid, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p, status = os.waitpid(pid, os.WNOHANG)
        if p == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def activation():
    path = os.path.join(T.TMPDIR, "activated.sock")
    other = os.path.join(T.TMPDIR, "not-used.sock")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(16)
    pid = spawn_activated(ls, ["-U", other, "memory", "size=8M"])
    ls.close()
    try:
        c = connect_go(path)
        check_eq(c.write(0, b"a" * 4096), 0, "write over the activated socket")
        check_eq(c.read(0, 4096), (0, b"a" * 4096), "read back")
        c.close()
        check(not os.path.exists(other), "-U socket created despite activation")
    finally:
        os.kill(pid, signal.SIGTERM)
        rc = wait_exit(pid)
    check_eq(rc, 0, "exit status after SIGTERM")
    check(os.path.exists(path), "inherited socket path was removed")


def activation_other_pid():
    path = os.path.join(T.TMPDIR, "act2.sock")
    own = os.path.join(T.TMPDIR, "own.sock")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(16)
    pid = spawn_activated(ls, ["-U", own, "memory", "size=8M"],
                          listen_pid_self=False)
    ls.close()
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(own) and time.monotonic() < deadline:
            time.sleep(0.05)
        check(os.path.exists(own), "server did not listen on its own -U socket")
        c = connect_go(own)
        c.close()
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_exit(pid)


def readiness(abstract):
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = "\0nbdstack-test-%d" % os.getpid()
        ns.bind(name)
        env_name = "@" + name[1:]
    else:
        name = os.path.join(T.TMPDIR, "notify.sock")
        ns.bind(name)
        env_name = name
    ns.settimeout(10)
    sock = os.path.join(T.TMPDIR, "ready-%d.sock" % abstract)
    env = dict(os.environ, NOTIFY_SOCKET=env_name)
    p = subprocess.Popen([T.NBDSTACK, "-U", sock, "memory", "size=8M"],
                         env=env, stderr=subprocess.DEVNULL)
    try:
        msg = ns.recv(4096)
        check(b"READY=1" in msg, "first notification %r" % msg)
        # Ready means ready: a client connects at once.
        c = connect_go(sock)
        c.close()
        p.send_signal(signal.SIGTERM)
        msg = ns.recv(4096)
        check(b"STOPPING=1" in msg, "notification at SIGTERM %r" % msg)
        check_eq(p.wait(5), 0, "exit status")
    finally:
        if p.poll() is None:
            p.kill()
        ns.close()


def activation_parent_exits():
    """A client that started the server (libnbd's [ server ] form) and goes
    away without a signal takes the server with it, as with nbdkit."""
    path = os.path.join(T.TMPDIR, "act3.sock")
    pidfile = os.path.join(T.TMPDIR, "act3.pid")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(16)
    mid = os.fork()
    if mid == 0:                      # the "client": starts the server, exits
        try:
            spid = spawn_activated(ls, ["memory", "size=1M"])
            connect_go(path).close()  # it serves
            with open(pidfile, "w") as f:
                f.write(str(spid))
        finally:
            os._exit(0)
    ls.close()
    os.waitpid(mid, 0)
    try:
        with open(pidfile) as f:
            spid = int(f.read())
    except (OSError, ValueError):
        check(False, "the server never wrote its pid file")
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(spid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(spid, signal.SIGKILL)
        check(False, "the server outlived the process that started it")
        return
    check(True, "the server ended with the process that started it")


C.run("serves on a socket-activated fd 3 and keeps its path", activation)
C.run("ends when the process that started it ends", activation_parent_exits)
C.run("ignores LISTEN_FDS meant for another pid", activation_other_pid)
C.run("READY=1 and STOPPING=1 on a NOTIFY_SOCKET path", readiness, 0)
C.run("READY=1 on an abstract NOTIFY_SOCKET", readiness, 1)
C.finish()
