#!/usr/bin/python3
"""NBD extended headers (NBD_OPT_EXTENDED_HEADERS), spoken by hand: the
clients installed here (libnbd 1.14, qemu 7.2) do not speak them.

Negotiation: the option with data, twice, after and before
STRUCTURED_REPLY, EXPORT_NAME after it, without fixed newstyle, and the
transmission flags it brings (DF, BLOCK_STAT_PAYLOAD only with a context).
Transmission with 32-byte requests and replies, for every command and its
flags: reads as data and hole chunks that echo the request's offset,
writes with PAYLOAD_LEN, flush, trim, cache, zero (FUA, NO_HOLE,
FAST_ZERO), block status as BLOCK_STATUS_EXT with REQ_ONE and the payload
form (effect length and context ids), DISC.  A 6 GiB zero on a sparse
memory export in one request, and 64-bit block status after it.  The bad
cases: an extended header before negotiation, a compact one after it, a
write without PAYLOAD_LEN, PAYLOAD_LEN where no payload belongs, bad
block status payloads, a length over the payload limit: each answered
with EINVAL in the negotiated reply style and the stream still in sync
(the next request works), and a payload far over the limit drops the
connection (the spec's SHOULD).  TLS: test_tls.py.

Wire constants: the NBD spec patches "spec: Add NBD_OPT_EXTENDED_HEADERS"
and "spec: Introduce NBD_FLAG_BLOCK_STATUS_PAYLOAD" (2022-2023), as merged
into doc/proto.md, and qemu's include/block/nbd.h of that series.
"""

import os
import struct
import sys

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("memory")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "120")))

GiB = 1 << 30
OPT_EXTENDED_HEADERS = 11
REP_ERR_EXT_HEADER_REQD = REP_ERR_BIT + 10
EXTENDED_REQUEST_MAGIC = 0x21E41C71
EXTENDED_REPLY_MAGIC = 0x6E8A278C
CMD_FLAG_PAYLOAD_LEN = 1 << 5
TF_BLOCK_STAT_PAYLOAD = 1 << 12
REPLY_TYPE_BLOCK_STATUS_EXT = 6
HOLE = STATE_HOLE | STATE_ZERO

SIZE = 8 * GiB
srv = Server(["memory", "size=%d" % SIZE], name="ext")
C = Checker("test_extended")


class Ext(Raw):
    """Raw plus extended headers: 32-byte requests and replies."""

    def extended_headers(self):
        r = self.option(OPT_EXTENDED_HEADERS)
        check_eq(rep_name(r[-1][0]), "ACK", "reply to NBD_OPT_EXTENDED_HEADERS")
        self.extended = True
        self.structured = True

    def request_ext(self, cmd, offset=0, length=0, flags=0, data=b"",
                    cookie=None):
        if cookie is None:
            cookie = self.next_cookie()
        self.send(struct.pack(">IHHQQQ", EXTENDED_REQUEST_MAGIC, flags, cmd,
                              cookie, offset, length) + data)
        return cookie

    def recv_ext_chunk(self):
        (magic,) = struct.unpack(">I", self.recv_exact(4))
        check_eq(hex(magic), hex(EXTENDED_REPLY_MAGIC), "extended reply magic")
        flags, rtype, ck, off, length = struct.unpack(">HHQQQ",
                                                      self.recv_exact(28))
        check(length < 1 << 32, "reply length %d over 32 bits" % length)
        payload = self.recv_exact(length) if length else b""
        return {"flags": flags, "type": rtype, "cookie": ck, "offset": off,
                "payload": payload}

    def reply_ext(self, cookie, offset):
        """Every chunk of one reply, checked for cookie and offset echo.
        Returns (error, chunks)."""
        chunks, err = [], 0
        while True:
            c = self.recv_ext_chunk()
            check_eq(hex(c["cookie"]), hex(cookie), "cookie in extended chunk")
            check_eq(c["offset"], offset, "offset echoed in extended chunk")
            chunks.append(c)
            if c["type"] & 0x8000:
                e, mlen = struct.unpack(">IH", c["payload"][:6])
                check(e != 0, "error chunk with error 0")
                check_eq(len(c["payload"]), 6 + mlen, "error chunk length")
                err = err or e
            if c["flags"] & REPLY_FLAG_DONE:
                return err, chunks
            check(len(chunks) < 10000, "too many chunks")

    def cmd_ext(self, cmd, offset=0, length=0, flags=0, data=b""):
        """A command without read data: (error, chunks)."""
        ck = self.request_ext(cmd, offset, length, flags, data)
        return self.reply_ext(ck, offset)

    def ok_ext(self, cmd, offset=0, length=0, flags=0, data=b"", what=""):
        err, chunks = self.cmd_ext(cmd, offset, length, flags, data)
        check_eq(err, 0, "error of %s" % (what or cmd))
        check_eq(len(chunks), 1, "chunks of %s" % (what or cmd))
        check_eq(chunks[0]["type"], REPLY_TYPE_NONE, "reply type of %s" % what)
        check_eq(chunks[0]["payload"], b"", "payload of %s" % what)

    def write_ext(self, offset, data, flags=0):
        err, _ = self.cmd_ext(CMD_WRITE, offset, len(data),
                              flags | CMD_FLAG_PAYLOAD_LEN, data)
        return err

    def read_ext(self, offset, length, flags=0):
        """(error, data, chunks), data reassembled from data and holes."""
        ck = self.request_ext(CMD_READ, offset, length, flags)
        err, chunks = self.reply_ext(ck, offset)
        if err:
            return err, b"", chunks
        buf = bytearray(length)
        covered = 0
        for c in chunks:
            p = c["payload"]
            if c["type"] == REPLY_TYPE_OFFSET_DATA:
                (off,) = struct.unpack(">Q", p[:8])
                d = p[8:]
                check(offset <= off and off + len(d) <= offset + length,
                      "data chunk outside the request")
                buf[off - offset:off - offset + len(d)] = d
                covered += len(d)
            elif c["type"] == REPLY_TYPE_OFFSET_HOLE:
                check_eq(len(p), 12, "hole chunk length")
                off, hl = struct.unpack(">QI", p)
                check(offset <= off and off + hl <= offset + length,
                      "hole chunk outside the request")
                covered += hl
            else:
                raise CheckFailed("unexpected chunk type %d in a read" % c["type"])
        check_eq(covered, length, "bytes covered by the read reply")
        return 0, bytes(buf), chunks

    def status_ext(self, offset, length, flags=0, data=b""):
        """BLOCK_STATUS: (error, {context id: [(length, flags)...]})."""
        err, chunks = self.cmd_ext(CMD_BLOCK_STATUS, offset,
                                   len(data) if data else length, flags, data)
        out = {}
        if err:
            return err, out
        for c in chunks:
            check_eq(c["type"], REPLY_TYPE_BLOCK_STATUS_EXT,
                     "block status chunk type with extended headers")
            p = c["payload"]
            cid, n = struct.unpack(">II", p[:8])
            check_eq(len(p), 8 + 16 * n, "BLOCK_STATUS_EXT length vs count")
            ext = []
            for i in range(n):
                ln, fl = struct.unpack(">QQ", p[8 + 16 * i:24 + 16 * i])
                check(ln > 0, "extent of length 0")
                ext.append((ln, fl))
            check(cid not in out, "two chunks for context %d" % cid)
            out[cid] = ext
        return 0, out


def ext_client(meta=True, path=None, queries=(b"base:allocation",)):
    c = Ext(path or srv.sock)
    c.handshake()
    c.extended_headers()
    if meta:
        r = c.set_meta(b"", queries)
        check_eq(rep_name(r[-1][0]), "ACK", "SET_META_CONTEXT")
        c.meta_ids = {d[4:]: struct.unpack(">I", d[:4])[0] for _, d in r[:-1]}
    c.go()
    return c


def in_sync(c):
    """The connection still answers a plain request correctly."""
    err, data, _ = c.read_ext(0, 4096)
    check_eq(err, 0, "read after a bad request")


# ---- negotiation -------------------------------------------------------------

def t_option_rules():
    c = Ext(srv.sock)
    c.handshake()
    r = c.option(OPT_EXTENDED_HEADERS, b"x")
    check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_INVALID), "option with data")
    c.extended_headers()
    r = c.option(OPT_EXTENDED_HEADERS)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_INVALID), "second time")
    r = c.option(OPT_STRUCTURED_REPLY)
    check_eq(r[-1][0], REP_ERR_EXT_HEADER_REQD,
             "STRUCTURED_REPLY after extended headers")
    c.go()
    c.ok_ext(CMD_FLUSH, what="flush")
    c.request_ext(CMD_DISC)
    c.close()
    # Structured replies first, then extended headers: both accepted.
    c = Ext(srv.sock)
    c.handshake()
    c.structured_reply()
    c.extended_headers()
    c.go()
    c.ok_ext(CMD_FLUSH, what="flush")
    c.close()


def t_export_name_after():
    c = Ext(srv.sock)
    c.handshake()
    c.extended_headers()
    c.send_opt(OPT_EXPORT_NAME, b"")
    check(c.wait_closed(), "EXPORT_NAME after extended headers: not dropped")
    check_eq(c.drained, b"", "bytes sent before dropping")


def t_not_fixed_newstyle():
    c = Ext(srv.sock)
    c.handshake(cflags=FLAG_C_NO_ZEROES)
    r = c.option(OPT_EXTENDED_HEADERS)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_UNSUP),
             "EXTENDED_HEADERS without fixed newstyle")
    c.close()


def t_tflags():
    c = ext_client(meta=False)
    check(c.tflags & TF_SEND_DF, "DF not offered with extended headers")
    check(not c.tflags & TF_BLOCK_STAT_PAYLOAD,
          "BLOCK_STAT_PAYLOAD offered without a meta context")
    c.close()
    c = ext_client(meta=True)
    check(c.tflags & TF_BLOCK_STAT_PAYLOAD, "BLOCK_STAT_PAYLOAD not offered")
    c.close()
    # Compact: never.
    c = connect_go(srv.sock, meta=True)
    check(not c.tflags & TF_BLOCK_STAT_PAYLOAD,
          "BLOCK_STAT_PAYLOAD offered without extended headers")
    c.close()


# ---- every command -------------------------------------------------------------

def t_commands():
    c = ext_client()
    data = os.urandom(256 * 1024)
    base = 3 * GiB
    check_eq(c.write_ext(base, data), 0, "write")
    check_eq(c.write_ext(base + len(data), data[:4096], CMD_FLAG_FUA), 0,
             "write FUA")
    err, got, chunks = c.read_ext(base, len(data))
    check_eq(err, 0, "read")
    check(got == data, "read back differs")
    # A read over data and a hole: a hole chunk with the 32-byte header.
    err, got, chunks = c.read_ext(base + len(data), 64 * 1024)
    check_eq(err, 0, "read over a hole")
    check(got == data[:4096] + bytes(60 * 1024), "data and hole read back")
    check(any(x["type"] == REPLY_TYPE_OFFSET_HOLE for x in chunks),
          "no hole chunk in a mostly empty read")
    err, got, chunks = c.read_ext(base + len(data), 64 * 1024, CMD_FLAG_DF)
    check_eq(err, 0, "read DF")
    check_eq(len(chunks), 1, "DF read chunks")
    check(got == data[:4096] + bytes(60 * 1024), "DF read back")
    c.ok_ext(CMD_FLUSH, what="flush")
    c.ok_ext(CMD_CACHE, base, 1 * MiB, what="cache")
    c.ok_ext(CMD_TRIM, base, 64 * 1024, what="trim")
    c.ok_ext(CMD_TRIM, base, 64 * 1024, CMD_FLAG_FUA, what="trim FUA")
    c.ok_ext(CMD_WRITE_ZEROES, base + 64 * 1024, 4096, CMD_FLAG_NO_HOLE,
             what="zero NO_HOLE")
    c.ok_ext(CMD_WRITE_ZEROES, base + 68 * 1024, 4096,
             CMD_FLAG_FAST_ZERO | CMD_FLAG_FUA, what="zero FAST_ZERO|FUA")
    err, got, _ = c.read_ext(base, 128 * 1024)
    check(got == bytes(72 * 1024) + data[72 * 1024:128 * 1024],
          "after trim and zeros")
    err, st = c.status_ext(base, 1 * MiB)
    check_eq(err, 0, "block status")
    bid = c.meta_ids[b"base:allocation"]
    check_eq(list(st), [bid], "contexts answered")
    check_eq(sum(ln for ln, _ in st[bid]), 1 * MiB, "status covers request")
    err, st = c.status_ext(base, 1 * MiB, CMD_FLAG_REQ_ONE)
    check_eq(err, 0, "block status REQ_ONE")
    check_eq(len(st[bid]), 1, "REQ_ONE descriptors")
    # Read-only command errors arrive as error chunks, not simple replies.
    err, _, _ = c.read_ext(SIZE - 4096, 8192)
    check_eq(err, EINVAL, "read past the end")
    err, _ = c.cmd_ext(CMD_WRITE_ZEROES, SIZE - 4096, 8192)
    check_eq(err, ENOSPC, "zero past the end")
    err, _ = c.cmd_ext(CMD_FLUSH, 0, 0, CMD_FLAG_REQ_ONE)
    check_eq(err, EINVAL, "flush with a flag it does not take")
    c.request_ext(CMD_DISC)
    check(c.wait_closed(), "DISC does not close")


# ---- 64 bits -------------------------------------------------------------------

def t_zero_6g():
    c = ext_client()
    bid = c.meta_ids[b"base:allocation"]
    for off in (1 * GiB, 5 * GiB, 6 * GiB + 4096):
        check_eq(c.write_ext(off, b"\xab" * 4096), 0, "write at %d" % off)
    c.ok_ext(CMD_WRITE_ZEROES, 0, 6 * GiB, what="6 GiB zero")
    for off in (1 * GiB, 5 * GiB):
        err, got, _ = c.read_ext(off, 4096)
        check(err == 0 and got == bytes(4096), "zeroed at %d" % off)
    err, got, _ = c.read_ext(6 * GiB + 4096, 4096)
    check(got == b"\xab" * 4096, "data after the zeroed range")
    # One request for the whole disk: a hole of 6 GiB, whose length needs
    # 64 bits, then the data (the memory backend's page), then a hole to
    # the end.
    err, st = c.status_ext(0, SIZE)
    check_eq(err, 0, "block status of 8 GiB")
    ext = st[bid]
    check_eq(ext[0], (6 * GiB, HOLE), "first extent")
    check_eq(ext[1][1], 0, "then data")
    check_eq(sum(ln for ln, _ in ext), SIZE, "status covers 8 GiB")
    # Trim of 7 GiB from 1 GiB, one request: all holes now.
    c.ok_ext(CMD_TRIM, 1 * GiB, 7 * GiB, what="7 GiB trim")
    err, st = c.status_ext(0, SIZE)
    check_eq(st[bid], [(SIZE, HOLE)], "one 8 GiB hole")
    c.ok_ext(CMD_CACHE, 0, SIZE, what="8 GiB cache")
    # Past the end by one byte, 64-bit: refused, nothing zeroed.
    err, _ = c.cmd_ext(CMD_WRITE_ZEROES, 1, SIZE)
    check_eq(err, ENOSPC, "zero past the end")
    err, _ = c.cmd_ext(CMD_TRIM, 1 << 63, 1 << 63)
    check_eq(err, EINVAL, "trim whose end wraps")
    c.close()


def t_status_payload():
    c = ext_client(queries=(b"base:allocation", b"qemu:allocation-depth"))
    bid = c.meta_ids[b"base:allocation"]
    did = c.meta_ids[b"qemu:allocation-depth"]
    err, st = c.status_ext(0, SIZE)
    check_eq(sorted(st), sorted([bid, did]), "both contexts without payload")
    check_eq(st[did], [(SIZE, 1)], "depth of a memory disk")
    payload = struct.pack(">QI", 2 * GiB, bid)
    err, st = c.status_ext(0, 0, CMD_FLAG_PAYLOAD_LEN, payload)
    check_eq(err, 0, "block status with a payload")
    check_eq(list(st), [bid], "contexts of the payload")
    check(sum(ln for ln, _ in st[bid]) >= 2 * GiB, "effect length used")
    err, st = c.status_ext(0, 0, CMD_FLAG_PAYLOAD_LEN,
                           struct.pack(">QI", 3 * GiB, did))
    check_eq((err, list(st)), (0, [did]), "depth alone by payload")
    check_eq(st[did], [(3 * GiB, 1)], "depth over the effect length")
    err, st = c.status_ext(0, 0, CMD_FLAG_PAYLOAD_LEN,
                           struct.pack(">QII", GiB, did, bid))
    check_eq((err, sorted(st)), (0, sorted([bid, did])), "both by payload")
    for what, p in (("unknown id", struct.pack(">QI", GiB, bid + 7)),
                    ("duplicate id", struct.pack(">QII", GiB, bid, bid)),
                    ("no id", struct.pack(">Q", GiB)),
                    ("odd length", struct.pack(">QI", GiB, bid) + b"x"),
                    ("id 0", struct.pack(">QI", GiB, 0))):
        err, _ = c.status_ext(0, 0, CMD_FLAG_PAYLOAD_LEN, p)
        check_eq(err, EINVAL, "block status payload: " + what)
        in_sync(c)
    c.close()
    # Without a context selected the flag is not offered: refused.
    c = ext_client(meta=False)
    err, _ = c.status_ext(0, 0, CMD_FLAG_PAYLOAD_LEN,
                          struct.pack(">QI", GiB, 1))
    check_eq(err, EINVAL, "payload form without a context")
    in_sync(c)
    c.close()


# ---- bad cases ---------------------------------------------------------------------

def t_extended_before_negotiation():
    for structured in (False, True):
        c = connect_go(srv.sock, structured=structured)
        ck = c.next_cookie()
        c.send(struct.pack(">IHHQQQ", EXTENDED_REQUEST_MAGIC, 0, CMD_READ, ck,
                           0, 4096))
        if structured:
            err, _, chunks = c.recv_structured(ck)
        else:
            err, _ = c.recv_simple(ck)
        check_eq(err, EINVAL, "extended header without negotiation")
        # One with a payload: the payload goes too.
        ck = c.next_cookie()
        c.send(struct.pack(">IHHQQQ", EXTENDED_REQUEST_MAGIC,
                           CMD_FLAG_PAYLOAD_LEN, CMD_WRITE, ck, 0, 4096)
               + b"\xee" * 4096)
        err = (c.recv_structured(ck)[0] if structured else c.recv_simple(ck)[0])
        check_eq(err, EINVAL, "extended write without negotiation")
        err, data = c.read(0, 4096)
        check(err == 0 and data != b"\xee" * 4096,
              "compact read after (structured=%s)" % structured)
        c.close()


def t_compact_after_negotiation():
    c = ext_client()
    ck = c.request(CMD_READ, 0, 4096)
    err, chunks = c.reply_ext(ck, 0)
    check_eq(err, EINVAL, "compact read after extended headers")
    ck = c.request(CMD_WRITE, 8192, 4096, data=b"\xee" * 4096)
    err, chunks = c.reply_ext(ck, 8192)
    check_eq(err, EINVAL, "compact write after extended headers")
    err, got, _ = c.read_ext(8192, 4096)
    check(err == 0 and got != b"\xee" * 4096, "refused write wrote nothing")
    c.close()


def t_bad_payloads():
    c = ext_client()
    # A write must say PAYLOAD_LEN; its data still leaves the socket.
    err, _ = c.cmd_ext(CMD_WRITE, 0, 4096, 0, b"\xee" * 4096)
    check_eq(err, EINVAL, "write without PAYLOAD_LEN")
    in_sync(c)
    # PAYLOAD_LEN on commands without a payload form.
    for cmd in (CMD_TRIM, CMD_READ, CMD_WRITE_ZEROES, CMD_FLUSH, CMD_CACHE):
        err, _ = c.cmd_ext(cmd, 0, 16, CMD_FLAG_PAYLOAD_LEN, bytes(16))
        check_eq(err, EINVAL, "PAYLOAD_LEN on command %d" % cmd)
        in_sync(c)
    # Over the advertised maximum (32 MiB) but not absurdly: refused, and
    # the payload read and dropped.
    err, _, _ = c.read_ext(0, MAX_REQUEST + 4096)
    check_eq(err, EINVAL, "read over the maximum")
    err = c.write_ext(0, b"\xee" * (MAX_REQUEST + 4096))
    check_eq(err, EINVAL, "write over the maximum")
    in_sync(c)
    # Unknown command.
    err, _ = c.cmd_ext(99, 0, 4096)
    check_eq(err, EINVAL, "unknown command")
    in_sync(c)
    # A payload of 1 GiB: the spec's hard disconnect.
    c.request_ext(CMD_WRITE, 0, GiB, CMD_FLAG_PAYLOAD_LEN)
    check(c.wait_closed(), "1 GiB write payload: not dropped")
    c.close()
    check(srv.alive(), "server died")


C.run("option rules: data, repeat, STRUCTURED_REPLY after and before", t_option_rules)
C.run("EXPORT_NAME after extended headers drops", t_export_name_after)
C.run("not offered without fixed newstyle", t_not_fixed_newstyle)
C.run("transmission flags: DF, BLOCK_STAT_PAYLOAD", t_tflags)
C.run("every command and flag with 32-byte headers", t_commands)
C.run("6 GiB zero, 7 GiB trim, 64-bit block status on sparse memory", t_zero_6g)
C.run("block status payload form: ids, effect length, bad payloads", t_status_payload)
C.run("extended header before negotiation: EINVAL, in sync", t_extended_before_negotiation)
C.run("compact header after negotiation: EINVAL, in sync", t_compact_after_negotiation)
C.run("bad payloads, lengths over the limit, unknown command", t_bad_payloads)
C.finish([srv])
