#!/usr/bin/python3
"""Black-box protocol compatibility: the same raw bytes sent to nbdstack and
to nbdkit (the reference peer) must get the same answers, option by option
and request by request (reply types, error codes, structured chunk kinds,
transmission flags), on hand-written sockets so that nothing in a client
library smooths a difference over.

Where the NBD spec (doc/proto.md) says what must happen, the case asserts
the spec itself, so it also runs without nbdkit.  Differences that are
deliberate are listed in DIFFERENCES below, each with its reason, and are
asserted as ours (not compared).
"""

import os
import shutil
import struct
import subprocess
import sys
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("memory")
T.start_watchdog(120)

SZ = MiB
ARGS = ["memory", "size=1M"]

# Deliberate differences from nbdkit 1.32 (asserted as ours, not compared):
DIFFERENCES = {
    # nbdkit returns ENOSPC for a zero-length WRITE or WRITE_ZEROES (its
    # range check); a request of length 0 is invalid, not out of space.
    "zero_len": "EINVAL for every zero-length request",
    # nbdkit only sends NBD_INFO_BLOCK_SIZE when a plugin has constraints;
    # nbdstack always has them (it enforces its 32M maximum).
    "info_block_size": "NBD_INFO_BLOCK_SIZE sent when asked for",
    # Over-long (> 4096) strings: NBD_REP_ERR_TOO_BIG, which proto.md
    # defines for this; nbdkit says ERR_INVALID.
    "long_name": "NBD_REP_ERR_TOO_BIG",
    # nbdstack knows NBD_OPT_EXTENDED_HEADERS (11); nbdkit 1.32 does not.
    # NBD_OPT_STARTTLS without TLS: ERR_UNSUP (nbdkit: ERR_POLICY); the
    # spec allows both in NOTLS mode.
    # LIST_META_CONTEXT also lists qemu:allocation-depth.
    # SET_META_CONTEXT with trailing bytes after the queries is
    # ERR_INVALID (nbdkit ignores them); a duplicate query selects its
    # context once (nbdkit replies twice with the same id).
    # A client without NBD_FLAG_C_FIXED_NEWSTYLE may still use GO (the
    # spec lets a server honour fixed newstyle anyway); nbdkit refuses.
}


# ---- transcripts ------------------------------------------------------------

def opt_tr(c, opt, data=b"", length=None):
    """One option's replies, as comparable values."""
    try:
        c.send_opt(opt, data, length)
        r = c.opt_replies(opt)
    except Closed:
        return ["CLOSED"]
    out = []
    for rep, d in r:
        if rep == REP_INFO:
            out.append(("INFO", struct.unpack(">H", d[:2])[0], d[2:].hex()))
        elif rep & REP_ERR_BIT:
            out.append(rep_name(rep))
        elif rep == REP_META_CONTEXT:
            out.append(("META", d[4:].decode("latin1")))
        else:
            out.append((rep_name(rep), d.hex()))
    return out


def cmd_tr(c, cmd, off=0, ln=0, flags=0, data=b""):
    """One request's reply: simple (error, payload length) or the list of
    structured chunks (kind, offsets, lengths, error codes)."""
    try:
        ck = c.request(cmd, off, ln, flags, data)
        if not c.structured:
            err, d = c.recv_simple(ck, ln if cmd == CMD_READ else 0)
            return [("simple", err, len(d))]
        out = []
        while True:
            x = c.recv_chunk()
            if x["kind"] == "simple":
                out.append(("simple", x["error"]))
                return out
            t, p = x["type"], x["payload"]
            if t & 0x8000:
                out.append(("error", t, struct.unpack(">I", p[:4])[0]))
            elif t == REPLY_TYPE_BLOCK_STATUS:
                out.append(("bs", [struct.unpack(">II", p[i:i + 8])
                                   for i in range(4, len(p), 8)]))
            elif t == REPLY_TYPE_OFFSET_DATA:
                out.append(("data", struct.unpack(">Q", p[:8])[0], len(p) - 8))
            elif t == REPLY_TYPE_OFFSET_HOLE:
                out.append(("hole",) + struct.unpack(">QI", p))
            else:
                out.append(("type", t))
            if x["flags"] & REPLY_FLAG_DONE:
                return out
    except Closed:
        return ["CLOSED"]


def new(sock, cflags=FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
    c = Raw(sock, timeout=5)
    c.handshake(cflags)
    return c


def goinfo(name=b"", infos=()):
    return Raw.go_data(name, infos)


def meta(name=b"", qs=(b"base:allocation",)):
    d = struct.pack(">I", len(name)) + name + struct.pack(">I", len(qs))
    for q in qs:
        d += struct.pack(">I", len(q)) + q
    return d


def go(sock, structured=True, meta_q=None):
    c = new(sock)
    if structured:
        opt_tr(c, OPT_STRUCTURED_REPLY)
        c.structured = True
        if meta_q is not None:
            opt_tr(c, OPT_SET_META_CONTEXT, meta(qs=meta_q))
    r = opt_tr(c, OPT_GO, goinfo())
    check_eq(r[-1], ("ACK", ""), "GO")
    return c, r


# ---- scenarios, each run against both servers ----------------------------

SCEN = {}


def scen(f):
    SCEN[f.__name__] = f
    return f


@scen
def info_and_go_flags(s):
    c = new(s)
    r = [opt_tr(c, OPT_INFO, goinfo(b"", [INFO_NAME, INFO_DESCRIPTION, 99, 0xffff]))]
    c2, g = go(s, structured=False)
    c3, g3 = go(s, structured=True)
    return r + [g, g3]


@scen
def options_misc(s):
    c = new(s)
    return [opt_tr(c, OPT_LIST, b"abc"), opt_tr(c, OPT_LIST),
            opt_tr(c, OPT_STRUCTURED_REPLY, b"x"),
            opt_tr(c, OPT_STRUCTURED_REPLY),
            opt_tr(c, 0), opt_tr(c, 4), opt_tr(c, 0x7fff),
            opt_tr(c, 0xffffffff, b"zz"),
            opt_tr(c, OPT_INFO, goinfo(b"a" * 4096)),
            opt_tr(c, OPT_INFO, goinfo(b"") + b"xx"),
            opt_tr(c, OPT_INFO, struct.pack(">IH", 0, 1) + b"\0\1\0"),
            opt_tr(c, OPT_GO, b"\0\0", length=2),
            opt_tr(c, OPT_ABORT)]


@scen
def meta_contexts(s):
    c = new(s)
    r = [opt_tr(c, OPT_SET_META_CONTEXT, meta())]     # before structured
    opt_tr(c, OPT_STRUCTURED_REPLY)
    return r + [opt_tr(c, OPT_LIST_META_CONTEXT, meta(qs=(b"base:",))),
                opt_tr(c, OPT_LIST_META_CONTEXT,
                       meta(qs=(b"base:allocation", b"foo:bar", b"qemu:dirty-bitmap:x"))),
                opt_tr(c, OPT_LIST_META_CONTEXT, meta(qs=(b"",))),
                opt_tr(c, OPT_LIST_META_CONTEXT, meta(qs=(b"base:alloc",))),
                opt_tr(c, OPT_SET_META_CONTEXT, meta(qs=())),
                opt_tr(c, OPT_SET_META_CONTEXT, meta(qs=(b"base:",))),
                opt_tr(c, OPT_SET_META_CONTEXT, meta(qs=(b"foo:bar",))),
                opt_tr(c, OPT_SET_META_CONTEXT, meta()[:-3]),
                opt_tr(c, OPT_SET_META_CONTEXT, struct.pack(">I", 1000) + b"a"),
                opt_tr(c, OPT_LIST_META_CONTEXT, struct.pack(">II", 0, 5))]


@scen
def hangups(s):
    out = []
    c = new(s, 0x80)                           # unknown client flag
    out.append(c.wait_closed(5))
    c = new(s)
    c.send(struct.pack(">QII", 0x1234, OPT_GO, 0))   # bad option magic
    out.append(c.wait_closed(5))
    c = new(s)
    c.send_opt(OPT_EXPORT_NAME, b"a" * 5000)   # cannot be answered
    out.append(c.wait_closed(5))
    c, _ = go(s)
    c.request(CMD_READ, 0, 512, magic=0x12345678)
    out.append(c.wait_closed(5))
    return out


@scen
def export_name_padding(s):
    c = new(s, FLAG_C_FIXED_NEWSTYLE)
    c.send_opt(OPT_EXPORT_NAME, b"")
    return c.recv_exact(10 + 124).hex()


def requests(structured):
    def past_end(s):
        c, _ = go(s, structured)
        return [cmd_tr(c, CMD_READ, SZ - 1, 2),
                cmd_tr(c, CMD_WRITE, SZ - 1, 2, 0, b"ab"),
                cmd_tr(c, CMD_TRIM, SZ - 1, 2),
                cmd_tr(c, CMD_WRITE_ZEROES, SZ - 1, 2),
                cmd_tr(c, CMD_CACHE, SZ - 1, 2),
                cmd_tr(c, CMD_READ, SZ, 1),
                cmd_tr(c, CMD_READ, SZ, 0),
                cmd_tr(c, CMD_READ, 0xFFFFFFFFFFFFFFFF, 1),
                cmd_tr(c, CMD_READ, 0xFFFFFFFFFFFFF000, 0x2000),
                cmd_tr(c, CMD_WRITE_ZEROES, 0x8000000000000000, 512),
                cmd_tr(c, CMD_TRIM, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF),
                cmd_tr(c, CMD_READ, 0, 0), cmd_tr(c, CMD_TRIM, 0, 0),
                cmd_tr(c, CMD_CACHE, 0, 0), cmd_tr(c, CMD_FLUSH, 0, 0)]

    def bad_flags(s):
        c, _ = go(s, structured)
        return [cmd_tr(c, CMD_READ, 0, 512, 0x8000),
                cmd_tr(c, CMD_READ, 0, 512, CMD_FLAG_FUA),
                cmd_tr(c, CMD_READ, 0, 512, CMD_FLAG_DF),
                cmd_tr(c, CMD_READ, 0, 512, CMD_FLAG_NO_HOLE),
                cmd_tr(c, CMD_WRITE, 0, 4, CMD_FLAG_DF, b"abcd"),
                cmd_tr(c, CMD_WRITE, 0, 4, CMD_FLAG_FAST_ZERO, b"abcd"),
                cmd_tr(c, CMD_TRIM, 0, 512, CMD_FLAG_NO_HOLE),
                cmd_tr(c, CMD_WRITE_ZEROES, 0, 512, CMD_FLAG_REQ_ONE),
                cmd_tr(c, CMD_FLUSH, 0, 0, CMD_FLAG_FUA),
                cmd_tr(c, CMD_FLUSH, 5, 7),
                cmd_tr(c, CMD_READ, 0, 512, 0x20),
                cmd_tr(c, 8, 0, 512), cmd_tr(c, 9, 0, 0), cmd_tr(c, 0xffff, 0, 0),
                cmd_tr(c, CMD_BLOCK_STATUS, 0, 512),      # no context selected
                cmd_tr(c, CMD_READ, 0, 16)]
    tag = "_structured" if structured else "_simple"
    SCEN["past_end" + tag] = past_end
    SCEN["bad_flags" + tag] = bad_flags


requests(False)
requests(True)


@scen
def block_status_edges(s):
    c, _ = go(s, True, (b"base:allocation",))
    cmd_tr(c, CMD_WRITE, 4096, 4096, 0, b"x" * 4096)
    return [cmd_tr(c, CMD_BLOCK_STATUS, 0, 0),
            cmd_tr(c, CMD_BLOCK_STATUS, SZ - 1, 2),
            cmd_tr(c, CMD_BLOCK_STATUS, SZ, 1),
            cmd_tr(c, CMD_BLOCK_STATUS, 0, 0xFFFFFFFF),
            cmd_tr(c, CMD_BLOCK_STATUS, 0, SZ, CMD_FLAG_REQ_ONE),
            cmd_tr(c, CMD_BLOCK_STATUS, 4096, SZ - 4096, CMD_FLAG_REQ_ONE),
            cmd_tr(c, CMD_BLOCK_STATUS, 0, SZ, CMD_FLAG_FUA),
            cmd_tr(c, CMD_READ, 4096, 4096, CMD_FLAG_DF)]


def transcript(sock, name):
    try:
        return SCEN[name](sock)
    except Closed as e:
        return "CLOSED: %s" % e


# ---- spec and our deliberate differences (no nbdkit needed) ---------------

srv = Server(ARGS, name="ours")
C = Checker("test_compat_protocol")


def t_set_meta_namespace_only():
    """proto.md, 'The base: metadata namespace': the server MUST ignore
    "base:" in SET_META_CONTEXT (and list base:allocation for it in
    LIST_META_CONTEXT); BLOCK_STATUS then has no context: EINVAL."""
    c = new(srv.sock)
    opt_tr(c, OPT_STRUCTURED_REPLY)
    check_eq(opt_tr(c, OPT_LIST_META_CONTEXT, meta(qs=(b"base:",))),
             [("META", "base:allocation"), ("ACK", "")], "LIST base:")
    for q in (b"base:", b"qemu:"):
        check_eq(opt_tr(c, OPT_SET_META_CONTEXT, meta(qs=(q,))), [("ACK", "")],
                 "SET %r" % q)
    c.structured = True
    check_eq(opt_tr(c, OPT_GO, goinfo())[-1], ("ACK", ""), "GO")
    r = cmd_tr(c, CMD_BLOCK_STATUS, 0, 4096)
    check(len(r) == 1 and r[0][-1] == EINVAL, "BLOCK_STATUS with no context: %r" % r)


def t_zero_length():
    c, _ = go(srv.sock, structured=False)
    for cmd in (CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES, CMD_CACHE):
        check_eq(cmd_tr(c, cmd, 0, 0), [("simple", EINVAL, 0)], "zero-length cmd %d" % cmd)


def t_long_names():
    c = new(srv.sock)
    for opt in (OPT_INFO, OPT_GO):
        check_eq(opt_tr(c, opt, goinfo(b"a" * 4097)), [rep_name(REP_ERR_BIT + 9)],
                 "name of 4097 bytes")
    opt_tr(c, OPT_STRUCTURED_REPLY)
    check_eq(opt_tr(c, OPT_SET_META_CONTEXT, meta(b"a" * 4097)),
             [rep_name(REP_ERR_BIT + 9)], "meta export name of 4097 bytes")


def t_block_size_info():
    c = new(srv.sock)
    r = opt_tr(c, OPT_INFO, goinfo(b"", [INFO_BLOCK_SIZE]))
    check_eq(r[-1], ("ACK", ""), "INFO")
    bs = [x for x in r if x[0] == "INFO" and x[1] == INFO_BLOCK_SIZE]
    check_eq(len(bs), 1, "NBD_INFO_BLOCK_SIZE replies")
    mn, pref, mx = struct.unpack(">III", bytes.fromhex(bs[0][2]))
    check_eq((mn, pref, mx), (1, 4096, 32 * MiB), "block sizes")


def t_long_option():
    """An option over our 64 KiB but under 8 MiB: NBD_REP_ERR_TOO_BIG
    when we implement it, NBD_REP_ERR_UNSUP when we do not (proto.md:
    "MUST reply to them with NBD_REP_ERR_UNSUP"; nbdkit 1.32 too), and
    the client stays in sync (nbdkit takes it; a hang-up is for a client
    that is a denial of service, proto.md)."""
    c = new(srv.sock)
    opt_tr(c, OPT_STRUCTURED_REPLY)
    big = meta(qs=[b"base:allocation"] * 20000)         # ~380 KB
    check_eq(opt_tr(c, OPT_LIST_META_CONTEXT, big), [rep_name(REP_ERR_BIT + 9)],
             "LIST_META_CONTEXT of %d bytes" % len(big))
    check_eq(opt_tr(c, 0x7777, b"z" * (5 << 20)), [rep_name(REP_ERR_UNSUP)],
             "unknown option of 5 MiB")
    c.structured = True
    check_eq(opt_tr(c, OPT_GO, goinfo())[-1], ("ACK", ""), "GO after them")
    check_eq(cmd_tr(c, CMD_READ, 0, 512), [("data", 0, 512)], "READ after them")
    c = new(srv.sock)
    c.send_opt(OPT_INFO, b"", length=64 << 20)          # not worth reading
    check(c.wait_closed(5), "a 64 MiB option is not hung up on")


C.run("SET_META_CONTEXT base: selects nothing (spec)", t_set_meta_namespace_only)
C.run("zero-length requests: EINVAL", t_zero_length)
C.run("names over 4096 bytes: ERR_TOO_BIG", t_long_names)
C.run("NBD_INFO_BLOCK_SIZE when asked", t_block_size_info)
C.run("options over 64 KiB: ERR_TOO_BIG or ERR_UNSUP, in sync", t_long_option)


# ---- side by side with nbdkit ----------------------------------------------

def t_same(name, ksock):
    ours = transcript(srv.sock, name)
    theirs = transcript(ksock, name)
    if ours != theirs:
        raise CheckFailed("differs from nbdkit:\n      ours:   %r\n      nbdkit: %r"
                          % (ours, theirs))


if shutil.which("nbdkit"):
    ksock = os.path.join(T.TMPDIR, "nbdkit.sock")
    k = subprocess.Popen(["nbdkit", "-f", "-U", ksock] + ARGS,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(ksock) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        for name in SCEN:
            C.run("same as nbdkit: %s" % name, t_same, name, ksock)
    finally:
        k.terminate()
        k.wait(10)
else:
    log("  (nbdkit not installed: the side-by-side cases are skipped)")

C.finish([srv])
