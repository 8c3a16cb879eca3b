#!/usr/bin/python3
"""Large reads from the memory backend, by raw socket: once the server
stops scanning replies for holes (a run of reads without any), their
data goes from the store's pages to the socket (pread_to, wire_push),
and what the socket does not take at once is copied and sent after.

Checked against a model of the disk: pipelined reads of 64 KiB to 4 MiB,
aligned or not, over data and holes; a client that sends 48 reads of
1 MiB before it reads any reply (the server's send buffer fills and the
rest of each reply waits in a copy); a read past the end (an error,
before any data); and a second connection trimming and rewriting the
pages the first one reads meanwhile (each 32 KiB page of every reply is
made of the images it ever held).
"""

import os
import random
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("memory")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "240")))

SIZE = 64 * MiB
PAGE = 32768

srv = Server(["memory", "size=64M"], name="lr")
C = Checker("test_large_reads")
rnd = random.Random(1913)
model = bytearray(SIZE)


def send_reads(c, reqs):
    out, cookies = b"", []
    for off, length in reqs:
        ck = c.next_cookie()
        cookies.append(ck)
        out += struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, ck, off, length)
    c.send(out)
    return cookies


def check_replies(c, reqs, cookies, what):
    for ck, (off, length) in zip(cookies, reqs):
        err, data, _ = c.recv_structured(ck, off, length)
        check_eq(err, 0, "%s: error of read at %d+%d" % (what, off, length))
        check(data == bytes(model[off:off + length]),
              "%s: data of read at %d+%d differs" % (what, off, length))


def fill(c):
    # Data in the first 48 MiB, with holes of 1 MiB every 8 MiB.
    data = rnd.randbytes(48 * MiB)
    for o in range(0, 48 * MiB, 4 * MiB):
        check_eq(c.write(o, data[o:o + 4 * MiB]), 0, "write at %d" % o)
    model[:48 * MiB] = data
    for o in range(3 * MiB, 48 * MiB, 8 * MiB):
        check_eq(c.cmd(CMD_TRIM, o, MiB), 0, "trim at %d" % o)
        model[o:o + MiB] = bytes(MiB)


def t_pipelined():
    c = connect_go(srv.sock)
    fill(c)
    # A run of reads of data: the server stops scanning them.
    reqs = [(i * MiB, MiB) for i in (0, 1, 2, 4, 5, 6)] * 4
    check_replies(c, reqs, send_reads(c, reqs), "warm-up")
    reqs = []
    for _ in range(200):
        length = rnd.choice([64 << 10, 100000, MiB, MiB + 1, 4 * MiB])
        off = rnd.randrange(0, SIZE - length)
        if rnd.random() < 0.5:
            off -= off % PAGE
        reqs.append((off, length))
    for i in range(0, len(reqs), 20):
        part = reqs[i:i + 20]
        check_replies(c, part, send_reads(c, part), "pipelined")
    c.disc()
    c.close()


def t_slow_client():
    c = connect_go(srv.sock)
    # Past the reads the server scans for holes (the first 16 of a
    # connection), so that the replies below go from the pages.
    reqs = [(i * MiB, 64 << 10) for i in (0, 1, 2)] * 7
    check_replies(c, reqs, send_reads(c, reqs), "warm-up")
    reqs = [((i * 7 % 48) * MiB + 4096, MiB) for i in range(48)]
    cookies = send_reads(c, reqs)
    time.sleep(1.0)                    # the replies pile up meanwhile
    check_replies(c, reqs, cookies, "slow client")
    err, _, _ = c.recv_structured(send_reads(c, [(SIZE - MiB, 2 * MiB)])[0],
                                  SIZE - MiB, 2 * MiB)
    check(err != 0, "a read past the end succeeded")
    check_replies(c, [(0, MiB)], send_reads(c, [(0, MiB)]), "after the error")
    c.disc()
    c.close()


def t_concurrent_rewrites():
    """The reader's pages are trimmed and rewritten with one of two
    images meanwhile: every 8 bytes of every reply must be those of one
    of the three (zeros, image A, image B) at that place, never another
    page's (a write that runs meanwhile may tear a page, as on a disk)."""
    region = 8 * MiB
    base = 56 * MiB
    imgs = [bytes(region), rnd.randbytes(region), rnd.randbytes(region)]
    w = connect_go(srv.sock)
    check_eq(w.write(base, imgs[1]), 0, "first image")
    stop = threading.Event()
    errors = []

    def mutate():
        try:
            i = 0
            while not stop.is_set():
                i += 1
                o = rnd.randrange(0, region // PAGE) * PAGE
                n = PAGE * rnd.choice([1, 4, 32])
                n = min(n, region - o)
                if i % 3 == 0:
                    check_eq(w.cmd(CMD_TRIM, base + o, n), 0, "trim")
                else:
                    img = imgs[1 + i % 2]
                    check_eq(w.write(base + o, img[o:o + n]), 0, "rewrite")
        except Exception as e:          # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=mutate)
    t.start()
    r = connect_go(srv.sock)
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            reqs = [(base + rnd.randrange(0, 7) * MiB, MiB) for _ in range(8)]
            for ck, (off, length) in zip(send_reads(r, reqs), reqs):
                err, data, _ = r.recv_structured(ck, off, length)
                check_eq(err, 0, "read under rewrites")
                for p in range(0, length, PAGE):
                    rel = off - base + p
                    page = data[p:p + PAGE]
                    if any(page == im[rel:rel + PAGE] for im in imgs):
                        continue
                    # Torn by a write that ran meanwhile (allowed): then
                    # word by word.
                    got = memoryview(page).cast("Q")
                    ims = [memoryview(im[rel:rel + PAGE]).cast("Q")
                           for im in imgs]
                    check(all(any(got[k] == m[k] for m in ims)
                              for k in range(len(got))),
                          "page at %d holds bytes of none of its images"
                          % (off + p))
    finally:
        stop.set()
        t.join()
    if errors:
        raise errors[0]
    r.disc()
    r.close()
    w.disc()
    w.close()


C.run("pipelined large reads over data and holes", t_pipelined)
C.run("a client that reads its replies late", t_slow_client)
C.run("reads while another connection rewrites the pages",
      t_concurrent_rewrites)
C.finish([srv])
