#!/usr/bin/python3
"""TLS against hostile or broken clients, and the record layer's edges.

A raw client drives its TLS session through memory BIOs (Python's
ssl.SSLObject), so it can stop mid-handshake, trickle bytes, and write
records of its own (a huge one, an alert) into the stream.  After each
case the server is alive and serves a libnbd TLS client beside it.

- Each AEAD suite (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305): random
  data of odd lengths written and read back, replies of a header and
  whole records (cmake/mbedtls-2.28-write-nocopy.patch encrypts from
  the reply buffer; tls.c corks the header record).
- Input mbedTLS holds but the socket no longer shows (the tail of a
  record behind a large write payload, with requests on the worker
  pool): answered, not parked on (tls_park).
- A client that stops after its ClientHello, and one that sends it a
  byte at a time: both dropped at the handshake timeout, which is one
  deadline for the whole handshake, TLS included.
- A renegotiation request (openssl s_client's "R"): refused, the server
  goes on.
- A record longer than TLS allows, a plaintext alert and garbage inside
  the session, close_notify while a large read is in flight: the
  connection ends, nothing else does.
"""

import os
import random
import socket
import ssl
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
import tlslib as L                        # noqa: E402
from nbdtest import (Checker, Server, check, check_eq, log, rep_name,  # noqa: E402
                     OPT_STARTTLS, REP_ACK, CMD_READ, CMD_WRITE)

L.skip_unless_tls()
nbd = L.libnbd()
T.require_layers("memory")
T.start_watchdog()
C = Checker("test_tls_hostile")
pki = L.Pki("hostile")

srv = Server(["--tls=require", "--tls-certificates=" + pki.srv,
              "--handshake-timeout=2s", "memory", "size=64M"], name="hostile")
# Inline requests, no polling or gathering: the reader goes from one
# request to waiting for the next (wire_park) without reading first.
workers = Server(["--tls=require", "--tls-certificates=" + pki.srv,
                  "--poll=0", "--coalesce=0", "memory", "size=64M"], name="hostile-held")


class TlsSock:
    """A TLS session over a connected socket, driven by hand: what
    T.Raw needs of a socket (sendall, recv, settimeout, close), and
    inject() to write raw bytes into the stream."""

    def __init__(self, raw, ciphers=None, handshake=True):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if ciphers:
            ctx.set_ciphers(ciphers)
        ctx.load_verify_locations(os.path.join(pki.caonly, "ca-cert.pem"))
        self.raw = raw
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        if handshake:
            while True:
                try:
                    self.obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self.flush()
                    self.fill()
            self.flush()

    def hello(self):
        """The ClientHello, not sent."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.out.read()

    def flush(self):
        d = self.out.read()
        if d:
            self.raw.sendall(d)

    def fill(self):
        d = self.raw.recv(65536)
        if not d:
            self.inc.write_eof()
        else:
            self.inc.write(d)
        return d

    def sendall(self, data):
        self.obj.write(data)
        self.flush()

    def inject(self, data):
        # The server may hang up before the whole of a hostile record is
        # sent (it needs only its header to refuse it): that is the answer
        # the caller's wait_closed then sees, not a failure.
        try:
            self.raw.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def recv(self, n):
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                if not self.fill():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""
            except (ssl.SSLError, ssl.SSLEOFError):
                raise ConnectionResetError("tls")

    def settimeout(self, t):
        self.raw.settimeout(t)

    def close(self):
        self.raw.close()


def starttls(server, timeout=10.0, **kw):
    """A raw NBD client after STARTTLS; the TLS handshake done unless
    handshake=False."""
    c = T.Raw(server.sock, timeout=timeout)
    c.handshake()
    r = c.option(OPT_STARTTLS)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ACK), "STARTTLS reply")
    c.s = TlsSock(c.s, **kw)
    return c


def others_served(server, what):
    check(server.alive(), "the server died after %s" % what)
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(L.x509_uri(server.sock, pki.caonly))
    data = os.urandom(4096)
    h.pwrite(data, 60 << 20)
    check(h.pread(4096, 60 << 20) == data, "a TLS client beside, after %s" % what)
    h.shutdown()


def t_suites():
    rnd = random.Random(15)
    for suite in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                  "ECDHE-RSA-CHACHA20-POLY1305"):
        c = starttls(srv, ciphers=suite)
        check_eq(c.s.obj.cipher()[0], suite, "negotiated suite")
        c.structured_reply()
        c.go()
        for n in (1, 15, 16, 17, 4095, 16383, 16384, 16385, 65536 + 333,
                  262144, 1000003):
            off = rnd.randrange(0, 32 << 20)
            data = os.urandom(n)
            check_eq(c.write(off, data), 0, "%s: write %d bytes" % (suite, n))
            check(c.read(off, n) == (0, data), "%s: read %d bytes back" % (suite, n))
        c.disc()
        check(c.wait_closed(), "%s: closed after DISC" % suite)
        c.close()


def t_held_input():
    """A 60000-byte write and three reads behind it in one go: the end of
    the payload is read straight into the request's buffer, exactly,
    which leaves the reads in mbedTLS's last record (16 KiB records; 32
    KiB of the wire's buffer filled first); the socket shows nothing
    more."""
    c = starttls(workers)
    c.structured_reply()
    c.go()
    old = os.urandom(3 * 4096)
    check_eq(c.write(1 << 20, old), 0, "the data the reads will read")
    data = os.urandom(60000)
    msg = struct.pack(">IHHQQI", T.REQUEST_MAGIC, 0, CMD_WRITE, 1, 0, len(data)) + data
    for k in range(3):
        msg += struct.pack(">IHHQQI", T.REQUEST_MAGIC, 0, CMD_READ, 2 + k,
                           (1 << 20) + 4096 * k, 4096)
    c.s.settimeout(10)
    c.send(msg)
    # Workers: replies in any order.
    got, done = {}, set()
    while len(done) < 4:
        ch = c.recv_chunk()
        ck = ch["cookie"]
        if ch["kind"] == "simple" or ch["flags"] & T.REPLY_FLAG_DONE:
            done.add(ck)
        if ch["kind"] != "simple" and ch["type"] == T.REPLY_TYPE_OFFSET_DATA:
            got[ck] = got.get(ck, b"") + ch["payload"][8:]
    check_eq(sorted(done), [1, 2, 3, 4], "replies")
    for k in range(3):
        check(got.get(2 + k) == old[4096 * k:4096 * (k + 1)],
              "read %d from the tail of the last record" % k)
    check_eq(c.read(0, len(data)), (0, data), "the write")
    c.disc()
    c.close()


def t_stalled_handshake():
    """A ClientHello and then silence; a ClientHello a byte at a time."""
    # The deadline runs from accept: time from before connecting.
    t0 = time.monotonic()
    c = starttls(srv, handshake=False)
    c.s.inject(c.s.hello())
    check(c.wait_closed(15), "a client silent after its ClientHello stays")
    t_silent = time.monotonic() - t0
    c.close()
    t0 = time.monotonic()
    c = starttls(srv, handshake=False)
    hello = c.s.hello()
    stop = threading.Event()

    def trickle():
        for b in hello:
            if stop.wait(0.3):
                return
            try:
                c.s.inject(bytes([b]))
            except OSError:
                return
    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    # The whole hello would take len(hello) * 0.3 s (over a minute).
    closed = c.wait_closed(15)
    t_trickle = time.monotonic() - t0
    stop.set()
    t.join(5)
    c.close()
    log("handshake timeout 2s: silent client dropped after %.1f s, trickling "
        "one after %.1f s (its hello: %d bytes)" % (t_silent, t_trickle, len(hello)))
    check(closed, "a client trickling its ClientHello stays")
    check(t_silent >= 1.0 and t_trickle >= 1.0,
          "dropped before the 2 s handshake timeout: %.1f, %.1f s"
          % (t_silent, t_trickle))
    check(srv.log_text().count("handshake timed out (tls)") >= 2,
          "the TLS handshake timeouts are not logged")
    others_served(srv, "stalled handshakes")


def t_renegotiation():
    relay = L.Relay(srv.sock)
    # "R" asks s_client to renegotiate (TLS 1.2); the server has it off.
    r = L.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % relay.port,
               "-tls1_2", "-no_ign_eof"], input="R\n", timeout=30)
    out = r.stdout + r.stderr
    check("RENEGOTIATING" in out, "s_client did not try: %s" % out[-400:])
    log("s_client after R: %s" % " | ".join(out.strip().splitlines()[-3:]))
    others_served(srv, "a renegotiation request")


def in_session(what, record, inflight=False):
    c = starttls(srv)
    c.structured_reply()
    c.go()
    check_eq(c.write(0, b"h" * 4096), 0, "%s: a write first" % what)
    if inflight:
        # An 8 MiB read in flight, its reply partly read.
        c.request(CMD_READ, 0, 8 << 20)
        c.s.recv(1000)
    if record is None:
        try:
            c.s.obj.unwrap()
        except ssl.SSLError:
            pass                # the reply's records after our close_notify
        c.s.flush()
    else:
        c.s.inject(record)
    check(c.wait_closed(15), "%s: the connection stays" % what)
    c.close()
    others_served(srv, what)


def t_bad_records():
    # A length beyond 2^14 + 2048, the most TLS 1.2 allows a ciphertext.
    in_session("a huge record", b"\x17\x03\x03\xff\xff" + os.urandom(65535))
    in_session("a plaintext fatal alert", b"\x15\x03\x03\x00\x02\x02\x28")
    in_session("garbage in the session", os.urandom(3000))
    in_session("a plaintext alert during a large read",
               b"\x15\x03\x03\x00\x02\x02\x28", inflight=True)
    in_session("close_notify during a large read", None, inflight=True)
    check(srv.alive(), "the server died")


C.run("each AEAD suite: odd lengths written and read back", t_suites)
C.run("input held by mbedTLS is answered, not parked on", t_held_input)
C.run("stalled and trickled handshakes: dropped at the handshake timeout",
      t_stalled_handshake)
C.run("renegotiation refused, the server goes on", t_renegotiation)
C.run("huge record, alerts, garbage, close_notify mid-transfer", t_bad_records)
C.finish([srv, workers])
