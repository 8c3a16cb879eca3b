#!/usr/bin/python3
"""Pipelined small requests, by raw socket, over the memory backend: the
replies of small reads are built in place in the reply batch, and small
writes whose payload arrived with the header are written from the input
buffer (transmission.c).  Many requests go out in one send, so they are
read from one buffer and answered in one batch.

Checked against a model of the disk: the data of every read, and the
shape of structured replies: a 4 KiB aligned read of zeros is one hole
chunk (while the server scans for holes), a read of data one data chunk,
an 8 KiB read of a hole then data a hole chunk and a data chunk (built
from a copy), a DF read one data chunk even of zeros; and the same bytes
with simple replies.  A read between writes to the same place sees the
writes before it.
"""

import os
import random
import struct
import sys

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("memory")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "120")))

SIZE = 1 << 20
G = 4096

srv = Server(["memory", "size=1M"], name="ps")
C = Checker("test_pipelined_small")


def reply_shape(chunks):
    return [{REPLY_TYPE_OFFSET_DATA: "data",
             REPLY_TYPE_OFFSET_HOLE: "hole"}.get(c.get("type"), c["kind"])
            for c in chunks]


def pipeline(c, reqs):
    """Sends every request in one write, then takes the replies in order
    (requests run in order on the reader).  reqs: (cmd, offset, length,
    flags, data).  Returns [(error, data, chunks)]."""
    out, cookies = b"", []
    for cmd, off, length, flags, data in reqs:
        ck = c.next_cookie()
        cookies.append(ck)
        out += struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, ck, off,
                           length) + data
    c.send(out)
    res = []
    for ck, (cmd, off, length, flags, data) in zip(cookies, reqs):
        if c.structured:
            res.append(c.recv_structured(ck, off,
                                         length if cmd == CMD_READ else 0))
        else:
            err, d = c.recv_simple(ck, length if cmd == CMD_READ else 0)
            res.append((err, d, []))
    return res


def t_mixed(structured):
    c = connect_go(srv.sock, structured=structured)
    check_eq(c.cmd(CMD_TRIM, 0, SIZE), 0, "trim of the whole disk")
    model = bytearray(SIZE)
    rnd = random.Random(19)
    # Data in every other 4 KiB granule of the first 256 KiB.
    writes = []
    for g in range(0, 64, 2):
        data = bytes(rnd.getrandbits(8) for _ in range(G))
        writes.append((CMD_WRITE, g * G, G, 0, data))
        model[g * G:(g + 1) * G] = data
    res = pipeline(c, writes)
    check_eq([r[0] for r in res], [0] * len(writes), "errors of 32 writes")

    reqs = []
    for g in range(64):                          # data, hole, data, ...
        reqs.append((CMD_READ, g * G, G, 0, b""))
    for g in range(1, 63, 2):                    # hole then data: 8 KiB
        reqs.append((CMD_READ, g * G, 2 * G, 0, b""))
    for off in (100, 5000, 3 * G - 7):           # unaligned
        reqs.append((CMD_READ, off, G, 0, b""))
    # DF (structured replies only): no hole chunk.
    reqs.append((CMD_READ, G, G, CMD_FLAG_DF if structured else 0, b""))
    reqs.append((CMD_READ, 512 << 10, 512, 0, b""))   # small, of zeros
    res = pipeline(c, reqs)
    for (cmd, off, length, flags, _), (err, data, chunks) in zip(reqs, res):
        check_eq(err, 0, "error of read at %d+%d" % (off, length))
        check(data == bytes(model[off:off + length]),
              "data of read at %d+%d differs from what was written"
              % (off, length))
    if structured:
        shapes = [reply_shape(r[2]) for r in res]
        # The server scans replies for holes while it finds them.
        check_eq(shapes[:64], [["data"], ["hole"]] * 32,
                 "chunks of 4 KiB reads, data and hole in turn")
        check_eq(shapes[64:95], [["hole", "data"]] * 31,
                 "chunks of 8 KiB reads, hole then data")
        check_eq(shapes[95:98], [["data"]] * 3, "chunks of unaligned reads")
        check_eq(shapes[98], ["data"], "chunks of a DF read of zeros")
        check_eq(shapes[99], ["data"], "chunks of a 512-byte read of zeros")

    # Writes and reads of the same place in one pipeline: each read sees
    # the writes sent before it.
    reqs, expect = [], []
    for i in range(40):
        off = rnd.randrange(0, 256) * 1024
        if i % 2 == 0:
            data = bytes([i]) * 2048
            reqs.append((CMD_WRITE, off, len(data), 0, data))
            model[off:off + len(data)] = data
            expect.append(None)
        else:
            reqs.append((CMD_READ, off, 3000, 0, b""))
            expect.append(bytes(model[off:off + 3000]))
    res = pipeline(c, reqs)
    for i, ((cmd, off, length, _, _), (err, data, _)) in enumerate(zip(reqs, res)):
        check_eq(err, 0, "error of request %d" % i)
        if expect[i] is not None:
            check(data == expect[i], "read %d at %d does not see the writes "
                  "before it" % (i, off))
    c.disc()
    c.close()


def t_large_after_small():
    """Small replies batched, then a read too large for the batch: the
    bytes arrive whole and in order."""
    c = connect_go(srv.sock)
    big = bytes(random.Random(7).getrandbits(8) for _ in range(64 << 10))
    check_eq(c.write(300 << 10, big), 0, "64 KiB write")
    reqs = [(CMD_READ, (300 << 10) + i * 512, 512, 0, b"") for i in range(20)]
    reqs.append((CMD_READ, 300 << 10, 64 << 10, 0, b""))
    reqs += [(CMD_READ, (300 << 10) + i * 512, 512, 0, b"") for i in range(20)]
    res = pipeline(c, reqs)
    for (cmd, off, length, _, _), (err, data, _) in zip(reqs, res):
        check_eq(err, 0, "error of read at %d+%d" % (off, length))
        rel = off - (300 << 10)
        check(data == big[rel:rel + length], "data of read at %d+%d"
              % (off, length))
    c.disc()
    c.close()


C.run("structured: pipelined small reads and writes", t_mixed, True)
C.run("simple replies: pipelined small reads and writes", t_mixed, False)
C.run("a large read among batched small ones", t_large_after_small)
C.finish([srv])
