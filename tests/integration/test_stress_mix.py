#!/usr/bin/python3
"""Everything at once, for the sanitizers (ASan+UBSan and TSan run it).

For about 20 seconds, on one server with a metrics endpoint:
- plain clients go idle long enough to park (src/park.c parks after 1 s
  without a request; there is no setting to shorten it), then resume
  with pipelined writes and reads, and check their data;
- extended-header clients (raw socket, test_extended.py's client) write,
  read, zero 6 GiB and ask 64-bit block status, parking between rounds;
- TLS (PSK) clients on a `tls = require` export idle past the park
  delay and resume (a TLS session stays on its thread: wire_park parks
  plain sockets only, as mbedTLS may hold input the socket no longer
  shows);
- clients send a request header in two pieces with a pause past the park
  delay between them;
- clients leave mid-request: a half-sent header, a half-sent write
  payload, a read whose reply is still pending, and over TLS a read and
  a write in flight;
- SIGHUP reloads keep coming, every other one removing an export whose
  clients stay connected (and park), the next adding it back.
Then a scrape: each export's request counters equal what its clients
completed (the leaving clients have exports of their own, unchecked).
Finally SIGTERM with the plain clients parked: exit 0, each sees its
socket closed, and every acknowledged write is in the files.
No timing is asserted.
"""

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")
if shutil.which("curl") is None:
    T.skip("curl is not installed")
T.require_layers("memory", "file")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "240")))
C = Checker("test_stress_mix")

RUN = 20.0                  # seconds of mixed load
PARK = 1.4                  # idle long enough to park (PARK_AFTER_NS is 1 s)
GiB = 1 << 30
BS = 4096

# ---- extended headers: test_extended.py's client, the parts used here -------

OPT_EXTENDED_HEADERS = 11
EXTENDED_REQUEST_MAGIC = 0x21E41C71
EXTENDED_REPLY_MAGIC = 0x6E8A278C
CMD_FLAG_PAYLOAD_LEN = 1 << 5
REPLY_TYPE_BLOCK_STATUS_EXT = 6


class Ext(Raw):
    def extended_headers(self):
        r = self.option(OPT_EXTENDED_HEADERS)
        check_eq(rep_name(r[-1][0]), "ACK", "reply to NBD_OPT_EXTENDED_HEADERS")
        self.extended = True
        self.structured = True

    def request_ext(self, cmd, offset=0, length=0, flags=0, data=b""):
        cookie = self.next_cookie()
        self.send(struct.pack(">IHHQQQ", EXTENDED_REQUEST_MAGIC, flags, cmd,
                              cookie, offset, length) + data)
        return cookie

    def reply_ext(self, cookie, offset):
        chunks, err = [], 0
        while True:
            (magic,) = struct.unpack(">I", self.recv_exact(4))
            check_eq(hex(magic), hex(EXTENDED_REPLY_MAGIC), "extended reply magic")
            flags, rtype, ck, off, length = struct.unpack(">HHQQQ",
                                                          self.recv_exact(28))
            check(length < 1 << 32, "reply length %d over 32 bits" % length)
            payload = self.recv_exact(length) if length else b""
            check_eq(hex(ck), hex(cookie), "cookie in extended chunk")
            check_eq(off, offset, "offset echoed in extended chunk")
            chunks.append((rtype, payload))
            if rtype & 0x8000:
                err = err or struct.unpack(">I", payload[:4])[0]
            if flags & REPLY_FLAG_DONE:
                return err, chunks

    def read_ext(self, offset, length):
        err, chunks = self.reply_ext(self.request_ext(CMD_READ, offset, length),
                                     offset)
        buf = bytearray(length)
        for rtype, p in chunks:
            if rtype == REPLY_TYPE_OFFSET_DATA:
                (off,) = struct.unpack(">Q", p[:8])
                buf[off - offset:off - offset + len(p) - 8] = p[8:]
        return err, bytes(buf)

    def status_ext(self, offset, length):
        err, chunks = self.reply_ext(
            self.request_ext(CMD_BLOCK_STATUS, offset, length), offset)
        ext = []
        for rtype, p in chunks:
            check_eq(rtype, REPLY_TYPE_BLOCK_STATUS_EXT, "block status chunk type")
            cid, n = struct.unpack(">II", p[:8])
            ext += [struct.unpack(">QQ", p[8 + 16 * i:24 + 16 * i]) for i in range(n)]
        return err, ext


# ---- the server ---------------------------------------------------------------

NSOCK = os.path.join(T.TMPDIR, "stress.sock")
MSOCK = os.path.join(T.TMPDIR, "stress-metrics.sock")
CFG = os.path.join(T.TMPDIR, "stress.ini")
PSK = os.path.join(T.TMPDIR, "stress.psk")
DISK = os.path.join(T.TMPDIR, "stress-d.img")
TDISK = os.path.join(T.TMPDIR, "stress-t.img")
with open(PSK, "w") as f:
    f.write("alice:%s\n" % os.urandom(32).hex())
for p in (DISK, TDISK):
    with open(p, "wb") as f:
        f.truncate(64 << 20)
CONFIG = """[server]
listen = unix:%s
metrics = unix:%s
tls = on
tls-psk = %s

[export d]
backend = file file=%s

[export t]
tls = require
backend = file file=%s

[export x]
backend = memory size=%d

[export z]
backend = memory size=16M

[export tz]
tls = require
backend = memory size=64M
""" % (NSOCK, MSOCK, PSK, DISK, TDISK, 8 * GiB)
EXTRA = """
[export e]
backend = memory size=16M
"""


def write_cfg(extra):
    with open(CFG + ".tmp", "w") as f:
        f.write(CONFIG + (EXTRA if extra else ""))
    os.rename(CFG + ".tmp", CFG)


write_cfg(True)
srv = Server(sock=NSOCK, config=CFG, name="stress")

lock = threading.Lock()
done = {e: {} for e in ("d", "t", "x")}      # export -> method -> requests
acked = {"d": {}, "t": {}}                   # export -> offset -> data
errors = []
kept = []                                    # clients left connected
stop = threading.Event()


def did(export, method, n=1):
    with lock:
        done[export][method] = done[export].get(method, 0) + n


def worker(fn, *args):
    def run():
        try:
            fn(*args)
        except Exception as e:     # noqa: BLE001 - reported by the checker
            errors.append("%s%r: %s: %s" % (fn.__name__, args, type(e).__name__, e))
            stop.set()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def parker(k):
    """Idles past the park delay, then pipelines writes and reads of its own
    blocks and checks them."""
    c = connect_go(NSOCK, name=b"d", timeout=60)
    base = k * 256 * BS
    r = 0
    while not stop.is_set():
        time.sleep(PARK)
        r += 1
        blocks = [(base + ((r * 8 + i) % 256) * BS,
                   struct.pack(">II", k, r) * (BS // 8)) for i in range(8)]
        cookies = [c.request(CMD_WRITE, off, BS, data=d) for off, d in blocks]
        for ck in cookies:
            check_eq(c.recv_structured(ck)[0], 0, "pipelined write")
        for off, d in blocks:
            with lock:
                acked["d"][off] = d
        did("d", "write", len(blocks))
        cookies = [c.request(CMD_READ, off, BS) for off, _ in blocks]
        for ck, (off, d) in zip(cookies, blocks):
            err, data = c.recv_structured(ck, off, BS)[:2]
            check_eq((err, data == d), (0, True), "read back after parking")
        did("d", "read", len(blocks))
    with lock:
        kept.append(c)                 # parked when SIGTERM comes


def extended(k):
    c = Ext(NSOCK, timeout=60)
    c.handshake()
    c.extended_headers()
    r = c.set_meta(b"x", (b"base:allocation",))
    check_eq(rep_name(r[-1][0]), "ACK", "SET_META_CONTEXT")
    c.go(b"x")
    r = 0
    while not stop.is_set():
        r += 1
        off = k * 64 * BS + (r % 64) * BS
        d = struct.pack(">QQ", k, r) * (BS // 16)
        err, _ = c.reply_ext(c.request_ext(CMD_WRITE, off, BS,
                                           CMD_FLAG_PAYLOAD_LEN, d), off)
        check_eq(err, 0, "extended write")
        did("x", "write")
        check_eq(c.read_ext(off, BS), (0, d), "extended read back")
        did("x", "read")
        if k == 0 and r == 1:
            # A 6 GiB zero in one request, then 64-bit block status over it.
            err, _ = c.reply_ext(c.request_ext(CMD_WRITE_ZEROES, 2 * GiB, 6 * GiB),
                                 2 * GiB)
            check_eq(err, 0, "6 GiB zero")
            did("x", "zero")
        err, ext = c.status_ext(2 * GiB, 6 * GiB)
        check_eq(err, 0, "64-bit block status")
        # Nothing but holes there: one extent whose length needs 64 bits.
        check_eq(ext, [(6 * GiB, STATE_HOLE | STATE_ZERO)],
                 "64-bit block status of the zeroed 6 GiB")
        did("x", "extents")
        if r % 3 == 0:
            time.sleep(PARK)
    c.request_ext(CMD_DISC)
    c.close()


def tls_client(k):
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_uri_allow_local_file(True)
    h.connect_uri("nbds+unix://alice@/t?socket=%s&tls-psk-file=%s" % (NSOCK, PSK))
    base = k * 256 * BS
    r = 0
    while not stop.is_set():
        time.sleep(PARK)
        r += 1
        blocks = [(base + ((r * 4 + i) % 256) * BS,
                   struct.pack(">II", k + 100, r) * (BS // 8)) for i in range(4)]
        cookies = [h.aio_pwrite(d, off) for off, d in blocks]
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for ck in cookies:
            check(h.aio_command_completed(ck), "TLS pipelined write completed")
        for off, d in blocks:
            with lock:
                acked["t"][off] = d
        did("t", "write", len(blocks))
        for off, d in blocks:
            check(h.pread(BS, off) == d, "TLS read back after parking")
        did("t", "read", len(blocks))
    h.shutdown()


def slow_sender(k):
    """Sends a request in two pieces with a pause past the park delay
    between them: in the header, and (extended) between the first 28
    bytes and the rest; the request must be answered, the data right."""
    c = connect_go(NSOCK, name=b"d", timeout=60)
    base = (6 + k) * 256 * BS
    r = 0
    while not stop.is_set():
        r += 1
        off = base + (r % 256) * BS
        d = struct.pack(">II", k + 200, r) * (BS // 8)
        ck = c.next_cookie()
        hdr = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, ck, off, BS)
        cut = 1 + r % 27
        c.send(hdr[:cut])
        time.sleep(PARK)
        c.send(hdr[cut:] + d)
        check_eq(c.recv_structured(ck)[0], 0, "write sent in two pieces")
        with lock:
            acked["d"][off] = d
        did("d", "write")
        check_eq(c.read(off, BS), (0, d), "read back a write sent in pieces")
        did("d", "read")
    c.disc()
    c.close()


def leaver(k):
    """Leaves in the middle of a request, in three ways, over and over."""
    n = 0
    while not stop.is_set():
        c = connect_go(NSOCK, name=b"z", timeout=60)
        if random.random() < 0.3:
            time.sleep(PARK)               # leave from the park, too
        how = n % 3
        n += 1
        hdr = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 1, 0, BS)
        if how == 0:
            c.send(hdr[:13])                                   # half a header
        elif how == 1:
            c.send(hdr + b"w" * (BS // 2))                     # half a payload
        else:
            c.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 2, 0,
                               1 << 20))                       # reply pending
        c.close()
        time.sleep(0.05)


def tls_leaver(k):
    """A TLS client that leaves with a read and a write in flight,
    sometimes after idling past the park delay."""
    n = 0
    while not stop.is_set():
        n += 1
        h = nbd.NBD()
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_uri_allow_local_file(True)
        h.connect_uri("nbds+unix://alice@/tz?socket=%s&tls-psk-file=%s"
                      % (NSOCK, PSK))
        if n % 3 == 0:
            time.sleep(PARK)
        h.aio_pread(nbd.Buffer(1 << 20), 32 << 20)
        h.aio_pwrite(b"l" * 65536, 48 << 20)
        del h                          # nbd_close: the socket just closes
        time.sleep(0.1)


def reloader():
    """SIGHUPs; every other one removes export e, the next adds it back."""
    n = 0
    while not stop.is_set():
        time.sleep(1.7)
        n += 1
        write_cfg(n % 2 == 0)
        srv.proc.send_signal(signal.SIGHUP)
    write_cfg(True)


def removed(k):
    """On export e, which reloads remove and add back: parks, resumes and
    finds its data, whether e is in the configuration or not."""
    c = connect_go(NSOCK, name=b"e", timeout=60)
    r = 0
    while not stop.is_set():
        time.sleep(PARK)
        r += 1
        off = k * 64 * BS + (r % 64) * BS
        d = struct.pack(">II", k + 300, r) * (BS // 8)
        check_eq(c.write(off, d), 0, "write on a removed export")
        check_eq(c.read(off, BS), (0, d), "read on a removed export")
    c.disc()
    c.close()


def scrape():
    r = subprocess.run(["curl", "-sS", "--max-time", "30", "--unix-socket", MSOCK,
                        "http://localhost/metrics"], capture_output=True, timeout=60)
    check(r.returncode == 0, "curl: %s" % r.stderr.decode(errors="replace"))
    out = {}
    for line in r.stdout.decode().split("\n"):
        if line.startswith("nbdstack_requests_total{"):
            labels, _, v = line.partition("} ")
            lab = dict(kv.split("=", 1) for kv in labels[len("nbdstack_requests_total{"):].split(","))
            out[(lab["export"].strip('"'), lab["method"].strip('"'))] = float(v)
    return out


def mix():
    threads = [worker(parker, k) for k in range(6)]
    threads += [worker(extended, k) for k in range(2)]
    threads += [worker(tls_client, k) for k in range(2)]
    threads += [worker(slow_sender, k) for k in range(2)]
    threads += [worker(leaver, k) for k in range(2)]
    threads += [worker(removed, k) for k in range(2)]
    threads.append(worker(tls_leaver, 0))
    threads.append(worker(reloader))
    t0 = time.monotonic()
    while time.monotonic() - t0 < RUN and not stop.is_set():
        time.sleep(0.2)
        check(srv.alive(), "server died under the mix")
    stop.set()
    for t in threads:
        t.join(120)
        check(not t.is_alive(), "a client thread hangs")
    check(not errors, "client failures:\n  " + "\n  ".join(errors))
    check(srv.alive(), "server alive after the mix")
    log("completed: %r" % done)


def counters():
    s = scrape()
    for export, methods in done.items():
        for m in ("read", "write", "zero", "extents"):
            check_eq(s.get((export, m), 0), methods.get(m, 0),
                     "requests_total of %s %s" % (export, m))


def sigterm():
    """With the plain clients connected, parked after their last writes."""
    check_eq(len(kept), 6, "clients kept connected")
    time.sleep(PARK)
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.proc.wait(120)
    check_eq(rc, 0, "exit status after SIGTERM")
    for c in kept:
        c.s.settimeout(30)
        try:
            check_eq(c.s.recv(1), b"", "a parked client sees the close")
        except OSError:
            pass
    for export, path in (("d", DISK), ("t", TDISK)):
        with open(path, "rb") as f:
            for off, d in sorted(acked[export].items()):
                f.seek(off)
                check(f.read(len(d)) == d, "acknowledged write at %s:%d lost"
                      % (export, off))
        log("%s: %d acknowledged blocks present" % (export, len(acked[export])))


C.run("parking, extended, TLS and leaving clients with SIGHUPs", mix)
C.run("request counters equal what the clients completed", counters)
C.run("SIGTERM: exit 0, every acknowledged write on disk", sigterm)
C.finish()
