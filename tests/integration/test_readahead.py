#!/usr/bin/python3
"""The readahead filter through libnbd: reads are right; over the nbd
backend to nbdkit's memory plugin with nbdkit's log filter (skipped
without nbdkit), a run of sequential reads makes cache requests upstream
ahead of the reads, random reads make none, and a client's write ends the
run; an unknown key is refused with FILE:LINE."""

import os
import random
import re
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402
import opsfilters as O                    # noqa: E402

try:
    import nbd                            # noqa: F401
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("readahead", "memory", "nbd")
T.start_watchdog(120)
C = Checker("test_readahead")
servers = []
CHUNK = 65536


def data_right():
    srv = Server(["--filter", "readahead", "memory", "size=8M"], name="mem")
    servers.append(srv)
    h = O.connect(srv.uri)
    blob = random.Random(5).randbytes(8 << 20)
    h.pwrite(blob[:4 << 20], 0)
    h.pwrite(blob[4 << 20:], 4 << 20)
    got = b"".join(h.pread(CHUNK, off) for off in range(0, 8 << 20, CHUNK))
    check(got == blob, "sequential reads return the data")
    h.shutdown()
    check_eq(srv.stop(), 0, "exit status")


def cache_offsets(logfile):
    """Offsets and counts of the Cache requests in nbdkit's log."""
    try:
        text = open(logfile).read()
    except FileNotFoundError:
        return []
    return [(int(o, 16), int(c, 16)) for o, c in
            re.findall(r"Cache id=\d+ offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+)",
                       text)]


def upstream(name):
    logfile = os.path.join(T.TMPDIR, name + ".nbdkit.log")
    sock = os.path.join(T.TMPDIR, name + ".nbdkit.sock")
    p = T.start_nbdkit("--filter=log", ["memory", "32M",
                                        "logfile=" + logfile], sock)
    return p, sock, logfile


def prefetch_upstream():
    if not O.have_nbdkit_filter("log"):
        T.log("  (skipped: nbdkit's log filter is not installed)")
        return
    p, sock, logfile = upstream("seq")
    try:
        srv = Server(["--filter", "readahead", "nbd", "socket=" + sock],
                     name="seq")
        servers.append(srv)
        h = O.connect(srv.uri)
        for off in range(0, 32 * CHUNK, CHUNK):
            h.pread(CHUNK, off)
        # The thread prefetches beside the reads: wait (bounded) until it
        # has asked past the last read, as it must while connected.
        deadline = time.monotonic() + 30
        while (max([o + c for o, c in cache_offsets(logfile)] + [0]) <=
               32 * CHUNK and time.monotonic() < deadline):
            time.sleep(0.05)
        h.shutdown()
        srv.stop()
        got = cache_offsets(logfile)
        check(len(got) > 0, "cache requests reached the upstream")
        check(all(o >= 2 * CHUNK for o, _ in got),
              "every prefetch is ahead of the run's second read: %s" % got)
        check(max(o + c for o, c in got) > 32 * CHUNK,
              "prefetch went beyond the last read: %s" % got)
    finally:
        p.terminate()
        p.wait(10)


def random_and_writes_prefetch_nothing():
    if not O.have_nbdkit_filter("log"):
        T.log("  (skipped: nbdkit's log filter is not installed)")
        return
    p, sock, logfile = upstream("rnd")
    try:
        srv = Server(["--filter", "readahead", "nbd", "socket=" + sock],
                     name="rnd")
        servers.append(srv)
        h = O.connect(srv.uri)
        offs = list(range(0, 32 << 20, 1 << 20))
        random.Random(1).shuffle(offs)
        for off in offs:
            h.pread(4096, off)
        for off in range(0, 16 * 4096, 4096):       # read, write, read ...
            h.pread(4096, off)
            h.pwrite(b"w" * 512, 16 << 20)
        h.shutdown()
        srv.stop()
        check_eq(cache_offsets(logfile), [], "cache requests")
    finally:
        p.terminate()
        p.wait(10)


def unknown_key_refused():
    O.config_refused("readahead window=1M", "unknown key")
    O.config_accepted("readahead")


C.run("reads through it return the data", data_right)
C.run("sequential reads prefetch ahead upstream", prefetch_upstream)
C.run("random reads, and reads between writes, prefetch nothing",
      random_and_writes_prefetch_nothing)
C.run("an unknown key is refused with FILE:LINE", unknown_key_refused)
C.finish(servers)
