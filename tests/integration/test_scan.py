#!/usr/bin/python3
"""The scan filter through libnbd: while a client is connected the whole
disk is prefetched upstream in scan-size cache requests, in order (over
the nbd backend to nbdkit's memory plugin with nbdkit's log filter;
skipped without nbdkit); with scan-forever the server still stops
promptly on SIGTERM, with a client connected; bad keys are refused with
FILE:LINE.  When the connection that started the scan closes while
another is connected, the scan goes on, from where it was, through the
other (nbdkit: that connection's own scan goes on), scan-forever too;
with two clients connected the blocks are prefetched once."""

import os
import re
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402
import opsfilters as O                    # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("scan", "memory", "nbd", "log", "delay")
T.start_watchdog(120)
C = Checker("test_scan")
servers = []


def caches(logfile):
    try:
        text = open(logfile).read()
    except FileNotFoundError:
        return []
    return [(int(o, 16), int(c, 16)) for o, c in
            re.findall(r"Cache id=\d+ offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+)",
                       text)]


def scans_whole_disk():
    if not O.have_nbdkit_filter("log"):
        T.log("  (skipped: nbdkit's log filter is not installed)")
        return
    logfile = os.path.join(T.TMPDIR, "scan.nbdkit.log")
    sock = os.path.join(T.TMPDIR, "scan.nbdkit.sock")
    p = T.start_nbdkit("--filter=log", ["memory", "16M",
                                        "logfile=" + logfile], sock)
    try:
        srv = Server(["--filter", "scan", "nbd", "socket=" + sock,
                      "scan-size=1M", "scan-ahead=false"], name="scan")
        servers.append(srv)
        h = O.connect(srv.uri)
        deadline = time.monotonic() + 30
        while len(caches(logfile)) < 16 and time.monotonic() < deadline:
            time.sleep(0.05)
        h.shutdown()
        srv.stop()
        check_eq(caches(logfile), [(i << 20, 1 << 20) for i in range(16)],
                 "cache requests upstream")
    finally:
        p.terminate()
        p.wait(10)


def forever_stops_on_sigterm():
    srv = Server(["--filter", "scan", "memory", "size=4M", "scan-forever=true",
                  "scan-size=64k"], name="forever")
    servers.append(srv)
    h = O.connect(srv.uri)
    check_eq(h.pread(4, 0), b"\0" * 4, "reads meanwhile")
    t = time.monotonic()
    rc = srv.stop(timeout=20)
    T.log("  stopped in %.2fs" % (time.monotonic() - t))
    check_eq(rc, 0, "exit status after SIGTERM with a client connected")


def bad_keys_refused():
    O.config_refused("scan scan-size=3k", "power of 2")
    O.config_refused("scan scan-forever=always", "scan-forever")
    O.config_refused("scan scan-speed=1", "unknown key")
    O.config_accepted("scan scan-size=4M scan-ahead=false scan-clock=false "
                      "scan-forever=true")


def conn_caches(logfile):
    """[(connection, offset)] of the cache calls our log filter saw."""
    try:
        text = open(logfile).read()
    except FileNotFoundError:
        return []
    return [(int(c), int(o, 16)) for c, o in
            re.findall(r"connection=(\d+) Cache id=\d+ offset=(0x[0-9a-f]+)",
                       text)]


def wait_until(fn, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    return fn()


def starter_leaves(forever):
    log = os.path.join(T.TMPDIR, "leave%d.log" % forever)
    size = 8 << 20
    srv = Server(["--filter", "scan", "--filter", "log", "--filter", "delay",
                  "memory", "size=%d" % size, "scan-size=256K",
                  "delay-cache=20ms", "logfile=" + log,
                  "scan-forever=%s" % ("true" if forever else "false")],
                 name="leave%d" % forever)
    servers.append(srv)
    a = nbd.NBD()
    a.connect_unix(srv.sock)
    check(wait_until(lambda: conn_caches(log)), "the first client scans")
    b = nbd.NBD()
    b.connect_unix(srv.sock)
    time.sleep(0.2)
    a.shutdown()
    del a
    text = wait_until(lambda: "Disconnect" in open(log).read() and
                      open(log).read())
    first = conn_caches(log)[0][0]
    before = [o for c, o in conn_caches(log) if c == first]
    later = wait_until(lambda: [o for c, o in conn_caches(log)
                                if c != first])
    check(later, "the scan goes on through the second client")
    check_eq(later[0], before[-1] + (256 << 10),
             "it goes on where it was (%r)" % text[-300:])
    if forever:
        wrapped = wait_until(lambda: [o for c, o in conn_caches(log)
                                      if c != first and o == 0])
        check(wrapped, "scan-forever starts again at 0 on the second")
    else:
        done = wait_until(lambda: [o for c, o in conn_caches(log)
                                   if o == size - (256 << 10)])
        check(done, "the whole disk is prefetched")
        offs = [o for _, o in conn_caches(log)]
        check_eq(len(offs), len(set(offs)), "each block prefetched once")
    b.shutdown()
    check_eq(srv.stop(), 0, "exit status")


C.run("the whole disk is prefetched in scan-size steps", scans_whole_disk)
C.run("the starter leaves: the scan goes on through another client",
      starter_leaves, False)
C.run("the starter leaves: scan-forever goes on through another client",
      starter_leaves, True)
C.run("scan-forever stops on SIGTERM", forever_stops_on_sigterm)
C.run("bad keys are refused with FILE:LINE", bad_keys_refused)
C.finish(servers)
