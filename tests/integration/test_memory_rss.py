#!/usr/bin/python3
"""The memory backend gives memory back after a burst of large writes.

A write whose payload is still in the socket is read into fresh pages
before it touches the disk, so 60 clients each writing 32 MiB at once hold
60 x 32 MiB of pages, whatever the size of the disk.  Once they have gone
(some completed, some aborted mid-payload), the server's RSS must come
back near the disk's size plus the bounded free list, not stay at the
peak; a second burst reuses the pages instead of growing again, and the
data of the completed writes reads back.
"""

import os
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("memory")
T.start_watchdog(60)
C = Checker("test_memory_rss")

CLIENTS = 60
LEN = 32 * MiB
DISK = 64 * MiB
# What may stay after the burst, over the idle server: the disk's data (32
# MiB written) and the free pages the backend keeps resident (32 MiB), with
# room for allocator and thread-stack noise.  Before the free list was
# bounded this was the whole peak, about 1.9 GiB.
ALLOWED_KIB = (32 + 32 + 64) * 1024

# Not all zeros, or the backend would keep the holes and touch nothing.
PATTERN = bytes(range(1, 256)) * (LEN // 255) + b"\x01" * (LEN % 255)

srv = Server(["memory", "size=%d" % DISK], name="mem")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def client_run(c, abort, errors):
    try:
        if abort:
            c.send(PATTERN[:LEN // 2])
            c.close()               # gone mid-payload: the write changes nothing
            return
        c.send(PATTERN)
        err, _ = c.recv_simple()
        if err != 0:
            errors.append("write failed with NBD error %d" % err)
        c.disc()
        c.close()
    except Exception as e:          # noqa: BLE001 - reported by the caller
        errors.append("%s: %s" % (type(e).__name__, e))
        c.close()


def burst():
    """CLIENTS writes of LEN at offset 0, every third aborted halfway;
    returns the highest RSS seen meanwhile, in KiB."""
    clients = [connect_go(srv.sock, structured=False, timeout=30)
               for _ in range(CLIENTS)]
    # Every header first, so the server holds fresh pages for all the
    # requests at the same time.
    for c in clients:
        c.request(CMD_WRITE, 0, LEN)
    errors = []
    threads = [threading.Thread(target=client_run, args=(c, i % 3 == 0, errors))
               for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    peak = 0
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_kib(srv.proc.pid))
        time.sleep(0.02)
    for t in threads:
        t.join()
    check(not errors, "clients failed: %s" % errors[:3])
    return peak


def settled_rss(limit_kib, seconds=5):
    """The server's RSS once it is under limit_kib (the connection threads
    finish after their clients), or its last value after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        rss = rss_kib(srv.proc.pid)
        if rss < limit_kib or time.monotonic() > deadline:
            return rss
        time.sleep(0.1)


def burst_rss():
    c = connect_go(srv.sock)
    check_eq(c.write(0, b"x" * 4096), 0, "warm-up write")
    check_eq(c.cmd(CMD_TRIM, 0, 4096), 0, "trim of the warm-up write")
    c.close()
    time.sleep(0.2)
    base = rss_kib(srv.proc.pid)
    for round_ in (1, 2):
        peak = burst()
        after = settled_rss(base + ALLOWED_KIB)
        log("burst %d: RSS KiB idle %d, peak %d, after %d"
            % (round_, base, peak, after))
        if not os.environ.get("NBD_SANITIZER"):
            check(after - base < ALLOWED_KIB,
                  "burst %d: RSS stayed %d KiB above idle after every client "
                  "left (peak %d KiB)" % (round_, after - base, peak - base))
    c = connect_go(srv.sock)
    err, data = c.read(0, LEN)
    check_eq(err, 0, "read back")
    check(data == PATTERN, "the completed writes do not read back")
    err, data = c.read(LEN, DISK - LEN)
    check((err, data) == (0, bytes(DISK - LEN)), "past the writes is not zeros")
    c.close()
    check(srv.alive(), "server died")


C.run("RSS falls back after 60 concurrent 32 MiB writes, twice", burst_rss)
C.finish([srv])
