#!/usr/bin/python3
"""The log filter through libnbd: one client session (writes with and
without FUA, read, flush, trim, zero with its flags, cache, block status,
and failed requests through the error filter) gives the same lines as
nbdkit's log filter for the same session, timestamps and connection
numbers aside; logappend= keeps or truncates the file; requests in flight
on two connections at once each get exactly one call and one result line,
whole; --check-config leaves the file alone.  logscript=: for one
client session the script gets, event by event, the same shell
variables as under nbdkit's log filter (the extents a bash array), in
the server's working directory; it is not waited for (a read returns
while the script of its call still runs); a failing script changes no
result; no script is left a zombie; with --run, a script's exit does not
stop the server; logfile= and logscript= together both log."""

import os
import re
import shutil
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

T.require_layers("log", "error", "memory", "null")
T.start_watchdog()
C = Checker("test_log")
servers = []


def wait_listening(path, timeout=10):
    """Until a server listens on the Unix socket path (the file appears
    before nbdkit listens on it), without connecting: a probe would be
    one more client in nbdkit's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/unix") as f:
            for line in f:
                v = line.split()
                # Flags 00010000: __SO_ACCEPTCON, a listening socket.
                if len(v) >= 8 and v[7] == path and v[3] == "00010000":
                    return
        time.sleep(0.05)


def norm(text):
    """Lines of connection events and requests, without timestamps and
    with connection=N as connection=C."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} ", "", line)
        if not line.startswith("connection="):
            continue
        out.append(re.sub(r"^connection=\d+ ", "connection=C ", line))
    return out


def wait_for(path, want, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                t = f.read()
            if want in t:
                return t
        time.sleep(0.05)
    with open(path) as f:
        return f.read()


def clip_extents(lines):
    """nbdkit logs the extents its plugin returned, which may run past the
    request; ours are clipped to the request (src/layer.h, nbd_extents):
    clip nbdkit's the same way before comparing."""
    calls, out = {}, []
    for line in lines:
        m = re.search(r" Extents id=(\d+) offset=0x([0-9a-f]+) count=0x([0-9a-f]+)", line)
        if m:
            calls[m.group(1)] = (int(m.group(2), 16), int(m.group(3), 16))
        m = re.search(r"\.\.\.Extents id=(\d+) extents=\((.*)\) ", line)
        if m and m.group(1) in calls:
            start, count = calls[m.group(1)]
            end = start + count
            parts = re.findall(r'0x([0-9a-f]+) 0x([0-9a-f]+) ("[^"]*")', m.group(2))
            kept = []
            for o, n, t in parts:
                o, n = int(o, 16), int(n, 16)
                lo, hi = max(o, start), min(o + n, end)
                if lo < hi:
                    kept.append("0x%x 0x%x %s" % (lo, hi - lo, t))
            line = line[:m.start(2)] + " ".join(kept) + line[m.end(2):]
        out.append(line)
    return out


def same_as_nbdkit():
    if not shutil.which("nbdkit"):
        T.log("  (skipped: nbdkit not installed)")
        return
    ours_log = os.path.join(T.TMPDIR, "ours.nbdlog")
    theirs_log = os.path.join(T.TMPDIR, "theirs.nbdlog")
    errfile = os.path.join(T.TMPDIR, "err")
    keys = ["error-pread=ENOSPC", "error-pread-rate=100%",
            "error-pread-file=" + errfile]
    # null: a backend with the same map in both servers.
    srv = Server(["--filter", "log", "--filter", "error", "null",
                  "size=1M", "logfile=" + ours_log] + keys, name="logours")
    servers.append(srv)
    ksock = os.path.join(T.TMPDIR, "nbdkit.sock")
    k = subprocess.Popen(["nbdkit", "-f", "-U", ksock, "--filter=log",
                          "--filter=error", "null", "1M",
                          "logfile=" + theirs_log, "error-pread=ENOSPC",
                          "error-pread-rate=1",
                          "error-pread-file=" + errfile],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(ksock)
        for sock in (srv.sock, ksock):
            if os.path.exists(errfile):
                os.unlink(errfile)
            # The error file appears before the two last reads.
            h = nbd.NBD()
            h.add_meta_context("base:allocation")
            h.connect_unix(sock)
            h.pwrite(b"x" * 512, 0)
            h.pwrite(b"y" * 512, 512, nbd.CMD_FLAG_FUA)
            h.pread(512, 0)
            h.flush()
            h.trim(4096, 8192)
            h.zero(4096, 0, nbd.CMD_FLAG_FUA)
            h.zero(4096, 65536, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO)
            h.cache(4096, 0)
            h.block_status(65536, 0, lambda *a: 0)
            h.block_status(65536, 0, lambda *a: 0, nbd.CMD_FLAG_REQ_ONE)
            open(errfile, "w").close()
            for off in (131072, 0):
                try:
                    h.pread(512, off)
                    raise T.CheckFailed("a read did not fail")
                except nbd.Error:
                    pass
            os.unlink(errfile)
            h.pwrite(b"z" * 512, 1024)
            h.shutdown()
        theirs = norm(wait_for(theirs_log, "Disconnect"))
        ours = norm(wait_for(ours_log, "Disconnect"))
    finally:
        k.terminate()
        k.wait(10)
        srv.stop()
    theirs = clip_extents(theirs)
    ours = [re.sub(r"transactions=\d+", "transactions=N", x) for x in ours]
    theirs = [re.sub(r"transactions=\d+", "transactions=N", x) for x in theirs]
    check(len(theirs) > 20, "nbdkit's log is too short: %r" % theirs)
    for i, (o, t) in enumerate(zip(ours, theirs)):
        check_eq(o, t, "line %d" % (i + 1))
    check_eq(len(ours), len(theirs), "number of lines")


def server_lines(text):
    """The lines that are not a connection's, without timestamps; nbdkit's
    Fork line (no such step in our server) left out."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} ", "", line)
        if line.startswith("connection=") or line == "Fork":
            continue
        out.append(line)
    return out


def ready_and_preconnect():
    """Ready thread_model=, Preconnect and ListExports readonly= as nbdkit
    writes them, with and without -r, and with noparallel below the log
    filter."""
    if not shutil.which("nbdkit"):
        T.log("  (skipped: nbdkit not installed)")
        return
    cases = [([], []), (["-r"], []),
             ([], ["noparallel", "serialize=connections"]),
             (["-r"], ["noparallel", "serialize=requests"])]
    for i, (opts, below) in enumerate(cases):
        filt = ["--filter", below[0]] if below else []
        ours_log = os.path.join(T.TMPDIR, "rp%d.ours" % i)
        theirs_log = os.path.join(T.TMPDIR, "rp%d.theirs" % i)
        srv = Server(opts + ["--filter", "log"] + filt +
                     ["null", "size=1M", "logfile=" + ours_log] + below[1:],
                     name="rp%d" % i)
        servers.append(srv)
        ksock = os.path.join(T.TMPDIR, "rpk%d.sock" % i)
        k = subprocess.Popen(["nbdkit", "-f", "-U", ksock] + opts +
                             ["--filter=log"] +
                             (["--filter=" + below[0]] if below else []) +
                             ["null", "1M", "logfile=" + theirs_log] +
                             below[1:],
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            wait_listening(ksock)
            for sock in (srv.sock, ksock):
                h = nbd.NBD()
                h.connect_unix(sock)
                h.pread(512, 0)
                h.shutdown()
                h = nbd.NBD()
                h.set_opt_mode(True)
                h.connect_unix(sock)
                h.opt_list(lambda *a: 0)
                h.opt_abort()
            theirs = server_lines(wait_for(theirs_log, "Disconnect"))
            ours = server_lines(wait_for(ours_log, "Disconnect"))
        finally:
            k.terminate()
            k.wait(10)
            srv.stop()
        check(len(theirs) == 7 and theirs[0].startswith("Ready ") and
              theirs[-2].startswith("ListExports "),
              "nbdkit's lines: %r" % theirs)
        # Server's readiness probe is a connection of its own: compare the
        # Ready line, the last Preconnect (its id aside) and ListExports.
        check(len(ours) >= 7, "our lines: %r" % ours)
        ours, theirs = ([re.sub(r"Preconnect id=\d+", "Preconnect id=N", x)
                         for x in v[:1] + v[-4:]] for v in (ours, theirs))
        check_eq(ours, theirs, "case %r %r" % (opts, below))


def append_and_truncate():
    path = os.path.join(T.TMPDIR, "app.nbdlog")
    with open(path, "w") as f:
        f.write("old line\n")
    for append in ("yes", "no"):
        srv = Server(["--filter", "log", "memory", "size=1M",
                      "logfile=" + path, "logappend=" + append],
                     name="app" + append)
        servers.append(srv)
        h = nbd.NBD()
        h.connect_unix(srv.sock)
        h.pread(512, 0)
        h.shutdown()
        text = wait_for(path, "Disconnect")
        check_eq(srv.stop(), 0, "exit status")
        check_eq("old line" in text, append == "yes",
                 "logappend=%s keeps the old line" % append)
        check("Read id=1 offset=0x0 count=0x200 ..." in text,
              "logappend=%s: the read is logged: %r" % (append, text))


def concurrent_lines():
    path = os.path.join(T.TMPDIR, "conc.nbdlog")
    srv = Server(["--filter", "log", "memory", "size=4M",
                  "logfile=" + path], name="conc")
    servers.append(srv)
    hs = []
    for _ in range(2):
        h = nbd.NBD()
        h.connect_unix(srv.sock)
        hs.append(h)
    n = 200
    for i in range(n):
        for h in hs:
            h.aio_pread(nbd.Buffer(4096), (i % 1000) * 4096)
    for h in hs:
        while h.aio_in_flight() > 0:
            h.poll(-1)
        h.shutdown()
    deadline = time.monotonic() + 10
    while True:
        text = wait_for(path, "Disconnect transactions=%d" % n)
        if text.count("Disconnect") >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    srv.stop()
    lines = text.splitlines()
    pat = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} "
                     r"(connection=(\d+) )?(\.\.\.)?\w+ ")
    conns = {}
    for line in lines:
        m = pat.match(line)
        check(m is not None, "a broken line: %r" % line)
        m2 = re.search(r"(\.\.\.)?Read id=(\d+)", line)
        if m2:
            key = (m.group(2), m2.group(2))
            conns.setdefault(key, []).append(bool(m2.group(1)))
    check_eq(len(conns), 2 * n, "requests logged")
    for key, v in conns.items():
        check_eq(sorted(v), [False, True], "lines of request %r" % (key,))


def check_config_leaves_file():
    path = os.path.join(T.TMPDIR, "cc.nbdlog")
    with open(path, "w") as f:
        f.write("keep\n")
    conf = os.path.join(T.TMPDIR, "cc.conf")
    with open(conf, "w") as f:
        f.write("[server]\nlisten = unix:%s\n[export \"\"]\n"
                "filter = log logfile=%s\nbackend = memory size=1M\n"
                % (os.path.join(T.TMPDIR, "cc.sock"), path))
    r = subprocess.run([T.NBDSTACK, "--check-config", conf],
                       capture_output=True, text=True, timeout=20)
    check_eq(r.returncode, 0, "--check-config status (%s)" % r.stderr)
    with open(path) as f:
        check_eq(f.read(), "keep\n", "file after --check-config")

DUMP = r"""t=$(for v in act type id connection offset count fua trim fast req_one \
  return error readonly tls export size minsize prefsize maxsize write flush \
  rotational zero extents cache fast_zero transactions thread_model exports; do
  if declare -p $v >/dev/null 2>&1; then declare -p $v; fi
done; echo "pwd=$PWD"; echo "posix=$(set -o | grep -c 'posix.*on')")
printf '%s\n' "$t" > "$OUT/$act.$type.${id:-0}.$$"
"""


def script_events(d):
    """{event: variables} of the files the dump script wrote in d."""
    out = {}
    for name in os.listdir(d):
        key = name.rsplit(".", 1)[0]
        with open(os.path.join(d, name)) as f:
            out.setdefault(key, []).append(f.read())
    return out


def wait_children(pid, zombies=False, timeout=20):
    """The server's child processes (zombies=True: those still running,
    nbdkit never reaps its scripts), once none is left (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        kids = []
        for t in os.listdir("/proc/%d/task" % pid):
            try:  # a thread may end between the listing and the read
                with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                    kids += f.read().split()
            except FileNotFoundError:
                pass
        if zombies:
            running = []
            for c in kids:
                try:
                    with open("/proc/%s/stat" % c) as f:
                        if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                            running.append(c)
                except FileNotFoundError:
                    pass
            kids = running
        if not kids or time.monotonic() > deadline:
            return kids
        time.sleep(0.05)


def logscript_same_as_nbdkit():
    if not shutil.which("nbdkit"):
        T.log("  (skipped: nbdkit not installed)")
        return
    dump = os.path.join(T.TMPDIR, "dump.sh")
    with open(dump, "w") as f:
        f.write(DUMP)
    dirs = {}
    for who in ("ours", "theirs"):
        d = os.path.join(T.TMPDIR, "ev-" + who)
        os.mkdir(d)
        dirs[who] = d
    env = dict(os.environ, OUT=dirs["ours"])
    srv = Server(["--filter", "log", "memory", "size=1M",
                  "logscript=. " + dump], name="lsours", env=env)
    servers.append(srv)
    ksock = os.path.join(T.TMPDIR, "lsk.sock")
    k = subprocess.Popen(["nbdkit", "-f", "-U", ksock, "--filter=log",
                          "memory", "1M", "logscript=. " + dump],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, OUT=dirs["theirs"]))
    try:
        wait_listening(ksock)
        for sock in (srv.sock, ksock):
            h = nbd.NBD()
            h.add_meta_context("base:allocation")
            h.connect_unix(sock)
            h.pwrite(b"x" * 512, 0)
            h.pread(512, 0)
            h.zero(4096, 65536, nbd.CMD_FLAG_FUA)
            h.zero(4096, 8192, nbd.CMD_FLAG_NO_HOLE)
            h.block_status(1 << 20, 0, lambda *a: 0)
            h.trim(4096, 8192)
            h.flush()
            h.cache(512, 0)
            try:
                h.pread(512, 1 << 20)       # beyond the end: the engine's
            except nbd.Error:
                pass
            h.shutdown()
        check_eq(wait_children(srv.proc.pid), [], "our children")
        check_eq(wait_children(k.pid, zombies=True), [],
                 "nbdkit's children still running")
    finally:
        k.terminate()
        k.wait(10)
        srv.stop()
    ours = script_events(dirs["ours"])
    theirs = script_events(dirs["theirs"])
    # Our Server()'s readiness probe is a client too: one more Preconnect.
    # Preconnect ids (and connection numbers) aside, the sets must match.
    def norm(ev):
        out = {}
        for key, v in ev.items():
            if key.startswith("Preconnect."):
                key = key.rsplit(".", 1)[0] + ".N"
                v = [re.sub(r'id="\d+"', 'id="N"', x) for x in v]
            v = [re.sub(r'connection="\d+"', 'connection="C"', x) for x in v]
            out.setdefault(key, set()).update(v)
        return out
    ours, theirs = norm(ours), norm(theirs)
    # No flush at close of ours (as nbdkit: a file backend's writes are
    # not kept in the process): the same events.
    check_eq(sorted(set(ours) - set(theirs)), [], "events only ours")
    check_eq(sorted(ours), sorted(theirs), "events")
    for key in sorted(theirs):
        check_eq(sorted(ours[key]), sorted(theirs[key]),
                 "variables of %s" % key)
    check(any("declare -a extents=(" in x for k, v in theirs.items()
              if k.startswith("Extents.LEAVE") for x in v),
          "the extents array compared")
    check(all("posix=1" in x for v in ours.values() for x in v),
          "bash in POSIX mode (run as sh)")


def logscript_not_waited():
    go = os.path.join(T.TMPDIR, "go")
    out = os.path.join(T.TMPDIR, "nw.out")
    script = ('if [ "$act" = Read ] && [ "$type" = ENTER ]; then '
              'while [ ! -e %s ]; do sleep 0.02; done; fi; '
              'echo "$act $type" >> %s; exit 7' % (go, out))
    srv = Server(["--filter", "log", "memory", "size=1M",
                  "logscript=" + script], name="nw")
    servers.append(srv)
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    h.pwrite(b"y" * 512, 0)
    check_eq(h.pread(512, 0), b"y" * 512, "the read, its script blocked")
    with open(out) if os.path.exists(out) else open(os.devnull) as f:
        check("Read ENTER" not in f.read(), "the Read script still waits")
    open(go, "w").close()
    h.shutdown()
    check_eq(wait_children(srv.proc.pid), [], "children left")
    with open(out) as f:
        text = f.read()
    check("Read ENTER" in text and "Write LEAVE" in text,
          "every script ran: %r" % text)
    check_eq(srv.stop(), 0, "exit status")


def logscript_with_run():
    out = os.path.join(T.TMPDIR, "run.out")
    r = subprocess.run(
        [T.NBDSTACK, "-U", "-", "--filter", "log", "memory", "size=1M",
         "logscript=echo $act >> " + out, "--run",
         "sleep 0.5; /usr/bin/python3 -c 'import nbd, sys; h = nbd.NBD(); "
         "h.connect_uri(sys.argv[1]); h.pread(512, 0); h.shutdown()' "
         "\"$uri\" && exit 5"],
        capture_output=True, text=True, timeout=60)
    check_eq(r.returncode, 5, "the --run command's status (%s)" % r.stderr)
    with open(out) as f:
        check("Read" in f.read(), "the read was logged")


def file_and_script():
    path = os.path.join(T.TMPDIR, "both.nbdlog")
    out = os.path.join(T.TMPDIR, "both.out")
    srv = Server(["--filter", "log", "memory", "size=1M", "logfile=" + path,
                  "logscript=echo $act $type $id >> " + out], name="both")
    servers.append(srv)
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    h.pread(512, 0)
    h.shutdown()
    text = wait_for(path, "Disconnect")
    check_eq(srv.stop(), 0, "exit status")
    check("Read id=1 offset=0x0 count=0x200 ..." in text, "file: %r" % text)
    with open(out) as f:
        check("Read ENTER 1\n" in f.read(), "script")


C.run("logscript: the same variables as nbdkit's", logscript_same_as_nbdkit)
C.run("logscript is not waited for, leaves no zombie", logscript_not_waited)
C.run("logscript with --run: a script's exit does not stop the server",
      logscript_with_run)
def hanging_script():
    """A script that never ends does not hold the exit for ever: it is
    waited for a while, then left running (as nbdkit leaves them)."""
    srv = Server(["--filter", "log", "memory", "size=1M",
                  "logscript=[ $act = Ready ] && exec sleep 1000 "
                  ">/dev/null 2>&1; true"], name="hang")
    servers.append(srv)
    check_eq(srv.stop(timeout=30), 0, "exit status")
    m = re.search(r"logscript still running \(pid (\d+)\): not waited for",
                  srv.log_text())
    check(m is not None, "the script left is logged: %r" % srv.log_text())
    if m:
        os.kill(int(m.group(1)), 15)


C.run("logfile and logscript together", file_and_script)
C.run("a script that hangs does not hold the exit", hanging_script)
C.run("same lines as nbdkit's log filter for one session", same_as_nbdkit)
C.run("Ready and Preconnect lines as nbdkit's", ready_and_preconnect)
C.run("logappend=yes keeps, no truncates", append_and_truncate)
C.run("two connections in flight: one call and one result line each",
      concurrent_lines)
C.run("--check-config does not touch the log file", check_config_leaves_file)
C.finish(servers)
