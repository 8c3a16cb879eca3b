#!/usr/bin/python3
"""The nbd proxy's reads and writes in flight at once (the backend's
submit: sent upstream by the client's reader, answered from the thread
that reads the upstream's replies), by raw socket, over a second
nbdstack's memory backend.

Checked against a model of the disk: 64 requests at a time, reads and
writes of 512 bytes to 256 KiB mixed (writes to places no read of the
same batch touches, so any order of completion gives the same bytes),
with FUA on some writes; each reply matched to its request by cookie,
as they may come in any order.  Then a flush and a read past the end
(the usual path) on the same connection, and the upstream killed with
requests in flight: each gets an error, none hangs.  Last, 1 MiB
writes (which the proxy's sender thread sends while the client's reader
takes the next) with the upstream stopped and then killed while their
payloads are on the way: every write is answered, none hangs, and the
proxy stays up.  The in-flight batches and the killed upstream run
again with large payloads spliced from the client's socket to the
upstream's (NBDSTACK_NBD_SPLICE=always; by default that happens only
when several upstream connections are busy) and with the sender thread
only (never); lone large writes on a proxy whose requests run on
workers; last, a client that stops in the middle of a spliced payload
and goes away: the proxy answers the other clients.
"""

import os
import random
import signal
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("memory", "nbd")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "180")))

CMD_READ, CMD_WRITE, CMD_FLUSH = 0, 1, 3
CMD_FLAG_FUA = 1 << 0
REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE = 1, 2
SIZE = 16 << 20

C = Checker("test_nbd_async")
up = Server(["memory", "size=16M"], name="up")
px = Server(["nbd", "socket=" + up.sock], name="px")


def env_splice(mode):
    return dict(os.environ, NBDSTACK_NBD_SPLICE=mode)
rnd = random.Random(131)


def batch(c, reqs):
    """Sends every request (cmd, offset, length, flags, data) at once;
    returns {index: (error, data)} from the replies, in whatever order
    they come."""
    out, byck = b"", {}
    for i, (cmd, off, length, flags, data) in enumerate(reqs):
        ck = c.next_cookie()
        byck[ck] = i
        out += struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, ck, off,
                           length) + data
    c.send(out)
    res, parts = {}, {}
    while len(res) < len(reqs):
        ch = c.recv_chunk()
        ck = ch["cookie"]
        check(ck in byck and byck[ck] not in res, "reply with an unknown "
              "or finished cookie 0x%x" % ck)
        i = byck[ck]
        cmd, off, length, _, _ = reqs[i]
        buf, err = parts.setdefault(i, [bytearray(length), 0])
        if ch["kind"] == "simple":
            res[i] = (ch["error"], b"")
            continue
        t, p = ch["type"], ch["payload"]
        if t == REPLY_TYPE_OFFSET_DATA:
            (o,) = struct.unpack(">Q", p[:8])
            buf[o - off:o - off + len(p) - 8] = p[8:]
        elif t == REPLY_TYPE_OFFSET_HOLE:
            o, n = struct.unpack(">QI", p)
            buf[o - off:o - off + n] = bytes(n)
        elif t & 0x8000:
            parts[i][1] = struct.unpack(">I", p[:4])[0]
        if ch["flags"] & REPLY_FLAG_DONE:
            res[i] = (parts[i][1], bytes(buf) if cmd == CMD_READ else b"")
    return res


def t_in_flight(sock=None):
    c = connect_go(sock or px.sock)
    model = bytearray(SIZE)
    for rnd_batch in range(30):
        reqs, busy = [], []
        for _ in range(64):
            length = rnd.choice([512, 4096, 4096, 65536, 262144])
            off = rnd.randrange(0, SIZE - length)
            if rnd.random() < 0.5:
                reqs.append((CMD_READ, off, length, 0, b""))
            else:
                # Not where another request of the batch goes.
                if any(o < off + length and off < o + n for o, n in busy):
                    continue
                data = rnd.randbytes(length)
                reqs.append((CMD_WRITE, off, length,
                             CMD_FLAG_FUA if rnd.random() < 0.2 else 0, data))
            busy.append((off, length))
        # Reads overlapping a write of their batch would race it: drop.
        writes = [(r[1], r[2]) for r in reqs if r[0] == CMD_WRITE]
        reqs = [r for r in reqs if r[0] == CMD_WRITE or
                not any(o < r[1] + r[2] and r[1] < o + n for o, n in writes)]
        res = batch(c, reqs)
        for i, (cmd, off, length, flags, data) in enumerate(reqs):
            err, got = res[i]
            check_eq(err, 0, "batch %d: error of %s at %d+%d"
                     % (rnd_batch, "read" if cmd == CMD_READ else "write",
                        off, length))
            if cmd == CMD_READ:
                check(got == bytes(model[off:off + length]), "batch %d: "
                      "read at %d+%d differs" % (rnd_batch, off, length))
        for cmd, off, length, flags, data in reqs:
            if cmd == CMD_WRITE:
                model[off:off + length] = data
    check_eq(c.cmd(CMD_FLUSH), 0, "flush after the batches")
    err, _ = c.read(SIZE - 4096, 8192)
    check(err != 0, "a read past the end succeeded")
    err, data = c.read(0, SIZE // 4)
    check_eq(err, 0, "a 4 MiB read")
    check(data == bytes(model[:SIZE // 4]), "the first 4 MiB differ")
    c.disc()
    c.close()


def t_upstream_dies():
    c = connect_go(px.sock)
    reqs = [(CMD_READ, i * 65536, 65536, 0, b"") for i in range(48)]
    out = b""
    for cmd, off, length, flags, data in reqs:
        out += struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, c.next_cookie(),
                           off, length)
    up.proc.send_signal(signal.SIGKILL)
    up.proc.wait(10)
    c.send(out)
    # Replies may come in any order: take them by cookie.
    got = {}
    while len(got) < len(reqs):
        ch = c.recv_chunk()
        if ch["kind"] == "simple" or ch["flags"] & REPLY_FLAG_DONE:
            got[ch["cookie"]] = ch
    check(all(ch["kind"] == "structured" and ch["type"] & 0x8000
              for ch in got.values()),
          "a read succeeded after the upstream died")
    check_eq(c.cmd(CMD_FLUSH) != 0, True, "flush after the upstream died")
    c.disc()
    c.close()


def t_upstream_dies_mid_writes(mode=None):
    up2 = Server(["memory", "size=64M"], name="up2")
    px2 = Server(["nbd", "socket=" + up2.sock], name="px2",
                 env=env_splice(mode) if mode else None)
    c = connect_go(px2.sock, timeout=30)
    # One write through first: the upstream connection is open.
    check_eq(c.write(0, b"x" * 4096), 0, "a write before")
    n, data = 40, rnd.randbytes(1 << 20)
    cookies = [c.next_cookie() for _ in range(n)]
    out = b"".join(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, ck,
                               i << 20, 1 << 20) + data
                   for i, ck in enumerate(cookies))
    up2.proc.send_signal(signal.SIGSTOP)
    sender = threading.Thread(target=c.send, args=(out,), daemon=True)
    sender.start()
    time.sleep(0.5)             # the proxy's sends to it block
    up2.proc.send_signal(signal.SIGKILL)
    up2.proc.wait(10)
    got = {}
    while len(got) < n:
        ch = c.recv_chunk()
        if ch["kind"] == "simple" or ch["flags"] & REPLY_FLAG_DONE:
            check(ch["cookie"] in cookies and ch["cookie"] not in got,
                  "reply with an unknown or finished cookie")
            got[ch["cookie"]] = ch
    sender.join(30)
    check(not sender.is_alive(), "the client's send never finished")
    failed = sum(1 for ch in got.values()
                 if (ch["error"] if ch["kind"] == "simple"
                     else ch["type"] & 0x8000))
    check(failed > 0, "every write succeeded although the upstream was "
          "killed before it read them")
    check(px2.alive(), "the proxy died")
    c.close()
    px2.stop()
    up2.kill()


def t_modes(mode):
    up3 = Server(["memory", "size=16M"], name="up-" + mode)
    px3 = Server(["nbd", "socket=" + up3.sock], name="px-" + mode,
                 env=env_splice(mode))
    t_in_flight(px3.sock)
    px3.stop()
    up3.stop()
    t_upstream_dies_mid_writes(mode)


def t_workers():
    # A lone write (queue depth 1) is not submitted but run the usual
    # way, here on a worker: its payload, left in the socket for the
    # proxy to splice, must be read by the reader first, never by the
    # worker while the reader reads the next request.
    up5 = Server(["memory", "size=16M"], name="up5")
    px5 = Server(["--no-inline", "nbd", "socket=" + up5.sock], name="px5",
                 env=env_splice("always"))
    c = connect_go(px5.sock)
    datas = [rnd.randbytes(1 << 20) for _ in range(8)]
    for i, d in enumerate(datas):
        # The header alone first: nothing of the payload is buffered
        # when the request is read, so it counts as alone.
        ck = c.next_cookie()
        c.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, ck,
                           i << 20, 1 << 20))
        time.sleep(0.02)
        c.send(d)
        ch = c.recv_chunk()
        check(ch["cookie"] == ck and (ch["error"] if ch["kind"] == "simple"
                                      else ch["type"] & 0x8000) == 0,
              "lone 1 MiB write %d: %r" % (i, ch))
    for i, d in enumerate(datas):
        err, got = c.read(i << 20, 1 << 20)
        check(err == 0 and got == d, "read back of write %d" % i)
    c.disc()
    c.close()
    px5.stop()
    up5.stop()


def t_client_dies_mid_payload():
    up4 = Server(["memory", "size=16M"], name="up4")
    px4 = Server(["nbd", "socket=" + up4.sock], name="px4",
                 env=env_splice("always"))
    other = connect_go(px4.sock)
    check_eq(other.write(0, b"a" * 65536), 0, "a write before")
    c = connect_go(px4.sock)
    # Two writes in flight (so they are submitted, not run alone), the
    # second stopping halfway through its 1 MiB payload.
    c.request(CMD_WRITE, 1 << 20, 1 << 20, data=b"b" * (1 << 20))
    c.request(CMD_WRITE, 2 << 20, 1 << 20, data=b"c" * (1 << 19))
    time.sleep(0.3)
    c.close()
    time.sleep(0.3)
    check(px4.alive(), "the proxy died")
    err, data = other.read(0, 65536)
    check(err == 0 and data == b"a" * 65536,
          "the other client's read after it: error %d" % err)
    check_eq(other.write(4096, b"d" * 65536), 0, "the other client's write")
    other.disc()
    other.close()
    c3 = connect_go(px4.sock)
    err, data = c3.read(4096, 65536)
    check(err == 0 and data == b"d" * 65536, "a new client's read")
    c3.disc()
    c3.close()
    px4.stop()
    up4.stop()


C.run("64 reads and writes in flight, replies by cookie", t_in_flight)
C.run("the upstream killed with reads in flight", t_upstream_dies)
C.run("the upstream killed with 1 MiB writes on the way",
      t_upstream_dies_mid_writes)
C.run("payloads always spliced", t_modes, "always")
C.run("requests on workers (--no-inline): lone large writes",
      t_workers)
C.run("payloads never spliced", t_modes, "never")
C.run("a client gone in the middle of a spliced payload",
      t_client_dies_mid_payload)
C.finish([px])
