#!/usr/bin/python3
"""The nbd backend's client and extended headers (issue 16).

An nbdstack upstream offers NBD_OPT_EXTENDED_HEADERS: the proxy takes
them, and a 6 GiB zero, trim and cache from a client that speaks them
(spoken by hand, as in test_extended.py: libnbd 1.14 does not) reach the
upstream as ONE request each, as the upstream's log filter shows; 64-bit
block status comes back from the upstream as BLOCK_STATUS_EXT and goes to
the client with an extent over 4 GiB.  nbdkit 1.32 and qemu-nbd 7.2 do
not offer them: the proxy falls back to compact headers and splits the
same zero into requests of at most 4 GiB (nbdkit's log shows them), and
the data is right either way.
"""

import os
import re
import shutil
import struct
import subprocess
import sys
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("nbd", "memory", "log")
for tool in ("nbdkit", "qemu-nbd", "truncate"):
    if not shutil.which(tool):
        T.skip("%s is not installed" % tool)
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "150")))

GiB = 1 << 30
SIZE = 8 * GiB
OPT_EXTENDED_HEADERS = 11
EXTENDED_REQUEST_MAGIC = 0x21E41C71
EXTENDED_REPLY_MAGIC = 0x6E8A278C
CMD_FLAG_PAYLOAD_LEN = 1 << 5
REPLY_TYPE_BLOCK_STATUS_EXT = 6
HOLE = STATE_HOLE | STATE_ZERO


class Ext(Raw):
    """Raw plus extended headers: 32-byte requests and replies."""

    def request_ext(self, cmd, offset=0, length=0, flags=0, data=b""):
        ck = self.next_cookie()
        self.send(struct.pack(">IHHQQQ", EXTENDED_REQUEST_MAGIC, flags, cmd,
                              ck, offset, length) + data)
        return ck

    def reply_ext(self, cookie):
        chunks, err = [], 0
        while True:
            (magic,) = struct.unpack(">I", self.recv_exact(4))
            check_eq(hex(magic), hex(EXTENDED_REPLY_MAGIC), "reply magic")
            flags, rtype, ck, _off, length = struct.unpack(
                ">HHQQQ", self.recv_exact(28))
            check_eq(hex(ck), hex(cookie), "cookie")
            payload = self.recv_exact(length) if length else b""
            chunks.append((rtype, payload))
            if rtype & 0x8000:
                err = err or struct.unpack(">I", payload[:4])[0]
            if flags & REPLY_FLAG_DONE:
                return err, chunks

    def ok(self, cmd, offset, length, flags=0, data=b"", what=""):
        err, _ = self.reply_ext(self.request_ext(cmd, offset, length, flags,
                                                 data))
        check_eq(err, 0, "error of " + what)

    def read_ext(self, offset, length):
        err, chunks = self.reply_ext(self.request_ext(CMD_READ, offset,
                                                      length))
        check_eq(err, 0, "read error")
        buf = bytearray(length)
        for t, p in chunks:
            if t == REPLY_TYPE_OFFSET_DATA:
                (off,) = struct.unpack(">Q", p[:8])
                buf[off - offset:off - offset + len(p) - 8] = p[8:]
        return bytes(buf)

    def status_ext(self, offset, length):
        err, chunks = self.reply_ext(self.request_ext(CMD_BLOCK_STATUS,
                                                      offset, length))
        check_eq(err, 0, "block status error")
        check_eq(len(chunks), 1, "block status chunks")
        t, p = chunks[0]
        check_eq(t, REPLY_TYPE_BLOCK_STATUS_EXT, "block status chunk type")
        _cid, n = struct.unpack(">II", p[:8])
        return [struct.unpack(">QQ", p[8 + 16 * i:24 + 16 * i])
                for i in range(n)]


def ext_client(sock):
    c = Ext(sock)
    c.handshake()
    r = c.option(OPT_EXTENDED_HEADERS)
    check_eq(rep_name(r[-1][0]), "ACK", "NBD_OPT_EXTENDED_HEADERS")
    r = c.set_meta(b"", (b"base:allocation",))
    check_eq(rep_name(r[-1][0]), "ACK", "SET_META_CONTEXT")
    c.go()
    return c


def log_ops(text, op):
    """(offset, count) of every op request an upstream log shows (nbdkit's
    log filter format, which ours keeps)."""
    return [(int(m.group(1), 16), int(m.group(2), 16)) for m in
            re.finditer(r" %s id=\d+ offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+)"
                        % op, text)]


def wait_log(path, op, n):
    """The log is written by another process: wait (untimed: the watchdog
    ends a hang) until it shows n op requests."""
    while True:
        with open(path, errors="replace") as f:
            got = log_ops(f.read(), op)
        if len(got) >= n:
            return got
        time.sleep(0.05)


def workload(front_sock):
    """Data at 1, 5 and 6 GiB + 4 KiB; a 6 GiB zero, trim and cache from
    0; the data at 6 GiB + 4 KiB stays, the rest reads as zeros."""
    c = ext_client(front_sock)
    for off in (1 * GiB, 5 * GiB, 6 * GiB + 4096):
        c.ok(CMD_WRITE, off, 4096, CMD_FLAG_PAYLOAD_LEN, b"\xab" * 4096,
             "write at %d" % off)
    c.ok(CMD_WRITE_ZEROES, 0, 6 * GiB, what="6 GiB zero")
    c.ok(CMD_TRIM, 0, 6 * GiB, what="6 GiB trim")
    c.ok(CMD_CACHE, 0, 6 * GiB, what="6 GiB cache")
    check_eq(c.read_ext(5 * GiB, 4096), bytes(4096), "5 GiB after the zero")
    check_eq(c.read_ext(6 * GiB + 4096, 4096), b"\xab" * 4096,
             "data after the zeroed range")
    ext = c.status_ext(0, SIZE)
    c.request_ext(CMD_DISC)
    c.close()
    return ext


def t_nbdstack_upstream():
    back_log = os.path.join(T.TMPDIR, "back-ops.log")
    back = T.Server(["--filter", "log", "memory", "size=%d" % SIZE,
                     "logfile=" + back_log], name="back")
    front = T.Server(["nbd", "socket=" + back.sock], name="front")
    try:
        ext = workload(front.sock)
        zeros = wait_log(back_log, "Zero", 1)
        check_eq(zeros, [(0, 6 * GiB)], "upstream Zero requests (one)")
        check_eq(wait_log(back_log, "Trim", 1), [(0, 6 * GiB)],
                 "upstream Trim requests (one)")
        # CACHE may not exceed the maximum block size (only trim, zero and
        # block status may): pieces of it, covering the range.
        caches = wait_log(back_log, "Cache", 6 * GiB // (32 << 20))
        check_eq(sum(n for _, n in caches), 6 * GiB, "upstream Cache bytes")
        # 64-bit block status end to end: the upstream answered with
        # BLOCK_STATUS_EXT for the whole disk, the proxy kept its 64-bit
        # first extent.
        check_eq(ext[0], (6 * GiB, HOLE), "first extent (over 4 GiB)")
        check_eq(ext[1][1], 0, "data extent at 6 GiB")
        ops = wait_log(back_log, "Extents", 1)
        check_eq(ops[-1], (0, SIZE), "upstream Extents request (one, 8 GiB)")
    finally:
        front.stop()
        back.stop()


def fallback(argv, name, logpath=None):
    sock = os.path.join(T.TMPDIR, name + ".sock")
    p = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--"] +
                         [a.replace("SOCK", sock) for a in argv],
                         stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(sock):
            check(p.poll() is None, "%s exited" % name)
            time.sleep(0.05)
        front = T.Server(["nbd", "socket=" + sock], name="front-" + name)
        try:
            # The proxy speaks extended headers to its own client still.
            ext = workload(front.sock)
            check_eq(ext[0][1], HOLE, "first extent is a hole")
            check(sum(e[0] for e in ext) <= SIZE, "extents within the disk")
            if logpath:
                zeros = wait_log(logpath, "Zero", 2)
                check_eq(len(zeros), 2, "%s Zero requests" % name)
                check(all(n < 4 * GiB for _, n in zeros),
                      "%s Zero requests under 4 GiB: %r" % (name, zeros))
                check_eq((zeros[0][0], zeros[0][0] + zeros[0][1],
                          zeros[1][0] + zeros[1][1]),
                         (0, zeros[1][0], 6 * GiB),
                         "%s Zero requests cover [0, 6 GiB)" % name)
        finally:
            front.stop()
    finally:
        p.kill()
        p.wait(5)


def t_nbdkit_upstream():
    logpath = os.path.join(T.TMPDIR, "nbdkit-ops.log")
    fallback(["nbdkit", "-f", "-U", "SOCK", "--filter=log", "memory",
              str(SIZE), "logfile=" + logpath], "nbdkit", logpath)


def t_qemu_upstream():
    img = os.path.join(T.TMPDIR, "qemu.img")
    subprocess.run(["truncate", "-s", str(SIZE), img], check=True)
    fallback(["qemu-nbd", "-f", "raw", "-k", "SOCK", "--cache=unsafe",
              "--discard=unmap", img], "qemu")


C = T.Checker("test_nbd_extended")
C.run("nbdstack upstream: extended headers, one request per 6 GiB op",
      t_nbdstack_upstream)
C.run("nbdkit 1.32 upstream: compact headers, split", t_nbdkit_upstream)
C.run("qemu-nbd 7.2 upstream: compact headers", t_qemu_upstream)
C.finish()
