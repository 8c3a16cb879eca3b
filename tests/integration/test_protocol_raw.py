#!/usr/bin/python3
"""NBD protocol conformance and robustness, spoken by hand on raw sockets.

Handshake: greeting flags, unknown/unsupported options and staying in sync,
STARTTLS without TLS, ABORT, LIST, INFO/GO (unknown export, NBD_INFO_EXPORT,
NBD_INFO_BLOCK_SIZE, exact transmission flags), short options, meta contexts
before structured replies, unknown client flags, EXPORT_NAME with and without
NO_ZEROES.  Transmission: simple and structured replies, errors, unknown
commands and flags, pipelining, DISC.  Hostile input: bad magic, garbage
handshakes, huge lengths, connection storms.  After every hostile step a
bystander connection and a fresh one check that the server is alive and that
data written earlier is intact.

Wire constants and rules: NBD protocol, doc/proto.md.
"""

import os
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("memory", "offset")
T.start_watchdog()

SIZE = 64 * MiB
REF_OFF = 1 * MiB
REF = os.urandom(MiB)

srv = Server(["memory", "size=64M"], name="rw")
ro = Server(["-r", "memory", "size=64M"], name="ro")
C = Checker("test_protocol_raw")

# A client that stays connected through every hostile step.
bystander = connect_go(srv.sock)
check_eq(bystander.write(REF_OFF, REF), 0, "initial write of reference data")
check_eq(bystander.cmd(CMD_FLUSH), 0, "initial flush")


_config = {}
CONFIG_TEXT = ('[server]\nlisten = unix:%s\n\n[export ""]\ndescription = first\n'
               'backend = memory size=64M\n\n[export vm1]\ndescription = second disk\n'
               'filter = offset offset=1M range=8M\nbackend = memory size=64M\n')


def config_server():
    """A server with two named exports from a config file ("" and vm1),
    started on first use.  (In command-line mode any export name gets the
    one export, like nbdkit, so unknown names are tested here.)"""
    if "srv" not in _config:
        sock = os.path.join(T.TMPDIR, "cfg.sock")
        conf = os.path.join(T.TMPDIR, "two.conf")
        with open(conf, "w") as f:
            f.write(CONFIG_TEXT % sock)
        _config["srv"] = Server(config=conf, sock=sock, name="config")
    return _config["srv"]


def verify_intact():
    """Server alive, the bystander still works, a fresh client reads the
    reference data back."""
    check(srv.alive(), "server process died")
    err, data = bystander.read(REF_OFF, len(REF))
    check_eq(err, 0, "bystander read error")
    check(data == REF, "bystander: reference data changed")
    c = connect_go(srv.sock, structured=False)
    err, data = c.read(REF_OFF, len(REF))
    check_eq(err, 0, "fresh client read error")
    check(data == REF, "fresh client: reference data changed")
    c.disc()
    c.close()


def hostile(title, fn):
    C.run(title, fn)
    if not C.run("  ... after '%s': server alive and data intact" % title, verify_intact):
        # put the reference back so later cases are judged on their own
        try:
            c = connect_go(srv.sock)
            c.write(REF_OFF, REF)
            c.close()
        except Exception:          # noqa: BLE001 - the server may be gone
            pass


def new(path=None, cflags=FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
    c = Raw(path or srv.sock)
    c.handshake(cflags)
    return c


def go_works(c, name=b""):
    c.go(name)
    err, data = c.read(REF_OFF, 4096)
    check_eq(err, 0, "read after GO")
    check(data == REF[:4096], "read after GO returned wrong data")
    c.disc()
    c.close()


# ---- handshake ---------------------------------------------------------------

def t_greeting():
    c = Raw(srv.sock)
    h = c.greeting()
    check(h & FLAG_FIXED_NEWSTYLE, "handshake flags lack FIXED_NEWSTYLE: 0x%x" % h)
    check(h & FLAG_NO_ZEROES, "handshake flags lack NO_ZEROES: 0x%x" % h)
    check_eq(h & ~3, 0, "unknown handshake flag bits (server MUST NOT set others)")
    c.close()


def t_unknown_option():
    c = new()
    r = c.option(0x7F3A, b"some option data")
    check_eq(len(r), 1, "number of replies to an unknown option")
    check_eq(rep_name(r[0][0]), rep_name(REP_ERR_UNSUP), "reply to unknown option")
    r = c.option(0x0BADBEEF)       # and with no data
    check_eq(rep_name(r[0][0]), rep_name(REP_ERR_UNSUP), "reply to unknown option (no data)")
    go_works(c)


def t_starttls():
    c = new()
    r = c.option(OPT_STARTTLS)
    check(r[-1][0] & REP_ERR_BIT, "STARTTLS without TLS configured must be an error reply, "
          "got %s" % rep_name(r[-1][0]))
    go_works(c)


def t_abort():
    c = new()
    c.send_opt(OPT_ABORT)
    rep, _ = c.recv_opt_reply(OPT_ABORT)
    check_eq(rep_name(rep), "ACK", "reply to NBD_OPT_ABORT")
    check(c.wait_closed(), "server did not close the connection after ABORT")
    c.close()


def t_list():
    c = new()
    r = c.option(OPT_LIST)
    check_eq(rep_name(r[-1][0]), "ACK", "final reply to LIST")
    names = []
    for rep, data in r[:-1]:
        check_eq(rep_name(rep), "SERVER", "LIST reply type")
        (n,) = struct.unpack(">I", data[:4])
        check(n <= len(data) - 4, "REP_SERVER name length %d > payload %d" % (n, len(data) - 4))
        names.append(data[4:4 + n])
    check_eq(names, [b""], "exports listed by a one-export server")
    r = c.option(OPT_LIST, b"xx")            # LIST takes no data
    check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_INVALID), "LIST with data")
    go_works(c)


def t_unknown_export():
    c = new(config_server().sock)
    final, _ = c.info_or_go(OPT_INFO, b"no-such-export")
    check_eq(rep_name(final), rep_name(REP_ERR_UNKNOWN), "INFO on unknown export")
    final, _ = c.info_or_go(OPT_GO, b"no-such-export")
    check_eq(rep_name(final), rep_name(REP_ERR_UNKNOWN), "GO on unknown export")
    final, _ = c.info_or_go(OPT_GO, b"VM1")
    check_eq(rep_name(final), rep_name(REP_ERR_UNKNOWN), "GO on VM1 (names are case-sensitive)")
    c.go(b"vm1")
    check_eq(c.size, 8 * MiB, "size of vm1 after the failed attempts")
    check_eq(c.write(0, b"abc"), 0, "write to vm1")
    check_eq(c.read(0, 3), (0, b"abc"), "read vm1")
    c.close()


def t_info_then_go():
    c = new()
    final, got = c.info_or_go(OPT_INFO, b"")
    check_eq(rep_name(final), "ACK", "INFO on the default export")
    check_eq(c.size, SIZE, "size in NBD_INFO_EXPORT")
    check(c.tflags & TF_HAS_FLAGS, "HAS_FLAGS missing")
    go_works(c)        # INFO does not end the negotiation


def t_go_block_size():
    c = new()
    got = c.go(b"", [INFO_BLOCK_SIZE])
    check(INFO_BLOCK_SIZE in got, "NBD_INFO_BLOCK_SIZE not sent although requested")
    check_eq(len(got[INFO_BLOCK_SIZE]), 12, "NBD_INFO_BLOCK_SIZE payload length")
    mn, pref, mx = struct.unpack(">III", got[INFO_BLOCK_SIZE])
    pow2 = lambda v: v and not (v & (v - 1))   # noqa: E731
    check(pow2(mn) and mn <= 65536, "minimum block size %d" % mn)
    check(pow2(pref) and pref >= max(mn, 512), "preferred block size %d" % pref)
    check(mx >= pref and mx <= MAX_REQUEST, "maximum block size %d (want <= 32 MiB)" % mx)
    check_eq((mn, pref), (1, 4096), "memory backend minimum, preferred")
    c.close()


MEMORY_FLAGS = (TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_TRIM |
                TF_SEND_WRITE_ZEROES | TF_CAN_MULTI_CONN | TF_SEND_CACHE |
                TF_SEND_FAST_ZERO)


def t_flags_exact():
    c = new()
    c.structured_reply()
    c.go()
    check_eq(tf_str(c.tflags), tf_str(MEMORY_FLAGS | TF_SEND_DF),
             "transmission flags of memory (structured replies)")
    c.close()
    c = new()
    c.go()
    check_eq(tf_str(c.tflags), tf_str(MEMORY_FLAGS),
             "transmission flags of memory (no structured replies: DF MUST be clear)")
    c.close()


def t_flags_readonly():
    c = Raw(ro.sock)
    c.handshake()
    c.structured_reply()
    c.go()
    f = c.tflags
    check(f & TF_READ_ONLY, "READ_ONLY not set on -r: %s" % tf_str(f))
    for bit in (TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, TF_SEND_FAST_ZERO):
        check(not f & bit, "%s set on a read-only export: %s" % (tf_str(bit), tf_str(f)))
    err = c.write(0, b"x" * 512)
    check_eq(err, EPERM, "WRITE on a read-only export")
    err = c.cmd(CMD_TRIM, 0, 4096)
    check_eq(err, EPERM, "TRIM on a read-only export")
    err, data = c.read(0, 4096)
    check_eq((err, data), (0, bytes(4096)), "READ on a read-only export")
    c.close()


def t_short_option():
    c = new()
    # GO whose declared length (2) cannot even hold the 32-bit name length.
    c.send_opt(OPT_GO, b"\0\0", length=2)
    r = c.opt_replies(OPT_GO)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_INVALID), "GO with length 2")
    # INFO whose name length runs past the option length.
    c.send_opt(OPT_INFO, struct.pack(">I", 100) + b"abc" + struct.pack(">H", 0))
    r = c.opt_replies(OPT_INFO)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_INVALID), "INFO with name past option end")
    # GO whose info count runs past the option length.
    c.send_opt(OPT_GO, struct.pack(">IH", 0, 5) + struct.pack(">H", INFO_BLOCK_SIZE))
    r = c.opt_replies(OPT_GO)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_INVALID), "GO with info count past option end")
    go_works(c)        # still in sync


def t_meta_before_structured():
    c = new()
    r = c.set_meta()
    check(r[-1][0] & REP_ERR_BIT, "SET_META_CONTEXT before STRUCTURED_REPLY must fail, got %s"
          % rep_name(r[-1][0]))
    go_works(c)


def t_meta_and_block_status():
    c = new()
    c.structured_reply()
    r = c.set_meta(opt=OPT_LIST_META_CONTEXT, queries=())
    check_eq(rep_name(r[-1][0]), "ACK", "LIST_META_CONTEXT final reply")
    listed = [d[4:] for rep, d in r[:-1]]
    check(b"base:allocation" in listed, "LIST_META_CONTEXT lacks base:allocation: %r" % listed)
    r = c.set_meta()
    check_eq(rep_name(r[-1][0]), "ACK", "SET_META_CONTEXT final reply")
    check_eq(len(r), 2, "replies to SET_META_CONTEXT base:allocation (one context + ACK)")
    check_eq(rep_name(r[0][0]), "META_CONTEXT", "SET_META_CONTEXT reply type")
    (cid,) = struct.unpack(">I", r[0][1][:4])
    check_eq(r[0][1][4:], b"base:allocation", "context name")
    c.go()
    ck = c.request(CMD_BLOCK_STATUS, 0, 4 * MiB)
    err, _, chunks = c.recv_structured(ck)
    check_eq(err, 0, "BLOCK_STATUS error")
    bs = [x for x in chunks if x.get("type") == REPLY_TYPE_BLOCK_STATUS]
    check_eq(len(bs), 1, "BLOCK_STATUS chunks")
    p = bs[0]["payload"]
    check((len(p) - 4) % 8 == 0 and len(p) >= 12, "BLOCK_STATUS payload length %d" % len(p))
    (got_id,) = struct.unpack(">I", p[:4])
    check_eq(got_id, cid, "context id in BLOCK_STATUS")
    ext = [struct.unpack(">II", p[i:i + 8]) for i in range(4, len(p), 8)]
    total = sum(e[0] for e in ext)
    check(0 < total <= 4 * MiB and all(e[0] for e in ext), "extent lengths %r" % ext)
    # REF at 1 MiB was written: the extent covering 1 MiB must be data.
    pos = 0
    for length, fl in ext:
        if pos <= REF_OFF < pos + length:
            check_eq(fl & STATE_HOLE, 0, "written area reported as hole")
        pos += length
    # REQ_ONE: exactly one descriptor.
    ck = c.request(CMD_BLOCK_STATUS, 0, 4 * MiB, CMD_FLAG_REQ_ONE)
    err, _, chunks = c.recv_structured(ck)
    bs = [x for x in chunks if x.get("type") == REPLY_TYPE_BLOCK_STATUS]
    check_eq((err, len(bs), len(bs[0]["payload"]) if bs else None), (0, 1, 12),
             "REQ_ONE: (error, chunks, payload length)")
    # past the end -> EINVAL
    ck = c.request(CMD_BLOCK_STATUS, SIZE - 512, 4096)
    err, _, _ = c.recv_structured(ck)
    check_eq(err, EINVAL, "BLOCK_STATUS past the end")
    c.disc()
    c.close()


def t_block_status_without_context():
    c = connect_go(srv.sock, structured=True, meta=False)
    ck = c.request(CMD_BLOCK_STATUS, 0, 4096)
    err, _, _ = c.recv_structured(ck)
    check_eq(err, EINVAL, "BLOCK_STATUS without a negotiated context (SHOULD be EINVAL)")
    check_eq(c.read(REF_OFF, 16), (0, REF[:16]), "read after that")
    c.close()


def block_status_err(c):
    """The error of a BLOCK_STATUS of the first 64 KiB (0 when it worked:
    then exactly one base:allocation chunk came)."""
    ck = c.request(CMD_BLOCK_STATUS, 0, 64 * KiB)
    err, _, chunks = c.recv_structured(ck)
    if err == 0:
        bs = [x for x in chunks if x.get("type") == REPLY_TYPE_BLOCK_STATUS]
        check_eq(len(bs), 1, "BLOCK_STATUS chunks")
    return err


def t_meta_any_export_name():
    # Command-line mode serves its one export under any name; a context
    # chosen for "foo" holds when GO enters "foo" too (proto.md: the same
    # export name used to enter transmission), and not for another name.
    for set_name, go_name, want in ((b"foo", b"foo", 0), (b"", b"", 0),
                                    (b"foo", b"", EINVAL), (b"", b"bar", EINVAL)):
        c = new()
        c.structured_reply()
        r = c.set_meta(name=set_name)
        check_eq(rep_name(r[-1][0]), "ACK", "SET_META_CONTEXT(%r)" % set_name)
        c.go(go_name)
        check_eq(block_status_err(c), want,
                 "BLOCK_STATUS after SET(%r) and GO(%r)" % (set_name, go_name))
        c.disc()
        c.close()


def t_meta_failed_set_clears():
    # "Issuing this command replaces all previously-set metadata contexts
    # (including when this command fails)": a valid SET, then one that
    # fails (malformed; too long; before structured replies cannot happen
    # twice, so malformed and too long), leaves no context selected.
    bad = (struct.pack(">I", 0) + struct.pack(">I", 1) + struct.pack(">I", 99) + b"x",
           b"y" * (65 * KiB))
    for data in bad:
        c = new()
        c.structured_reply()
        check_eq(rep_name(c.set_meta()[-1][0]), "ACK", "first SET_META_CONTEXT")
        r = c.option(OPT_SET_META_CONTEXT, data)
        check(r[-1][0] & REP_ERR_BIT, "a bad SET_META_CONTEXT must fail, got %s"
              % rep_name(r[-1][0]))
        c.go()
        check_eq(block_status_err(c), EINVAL,
                 "BLOCK_STATUS after a failed SET_META_CONTEXT (%d bytes)" % len(data))
        check_eq(c.read(REF_OFF, 16), (0, REF[:16]), "read after that")
        c.disc()
        c.close()


def t_long_unknown_option():
    # "Servers that receive messages which they do not implement MUST
    # reply to them with NBD_REP_ERR_UNSUP", whatever their length; a
    # known option that long is too big for us.
    c = new()
    for n in (64 * KiB + 1, 1 * MiB, 8 * MiB):
        r = c.option(0x7F3A, b"z" * n)
        check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_UNSUP),
                 "reply to an unknown option of %d bytes" % n)
    r = c.option(OPT_INFO, c.go_data(b"x" * (65 * KiB)))
    check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_TOO_BIG), "reply to an INFO of 65 KiB")
    go_works(c)


def t_info_name_canonical():
    # NBD_INFO_NAME: command-line mode serves its one export under any
    # name and names it as asked (as nbdkit); a config file's exports by
    # their own names, the default export's for "".
    for asked in (b"", b"bar"):
        c = new()
        got = c.go(asked, infos=(INFO_NAME,))
        check_eq(got.get(INFO_NAME), asked, "NBD_INFO_NAME for GO(%r)" % asked)
        c.disc()
        c.close()
    c = Raw(config_server().sock)
    c.handshake()
    got = c.go(b"vm1", infos=(INFO_NAME,))
    check_eq(got.get(INFO_NAME), b"vm1", "NBD_INFO_NAME of config export vm1")
    c.disc()
    c.close()


def t_meta_config_default_export():
    # In a config file the default export "" has a name of its own; the
    # context a client sets for "" holds when it enters "".
    sock = config_server().sock
    for name in (b"", b"vm1"):
        c = Raw(sock)
        c.handshake()
        c.structured_reply()
        check_eq(rep_name(c.set_meta(name=name)[-1][0]), "ACK", "SET_META_CONTEXT(%r)" % name)
        c.go(name)
        check_eq(block_status_err(c), 0, "BLOCK_STATUS on %r" % name)
        c.disc()
        c.close()


def t_unknown_client_flags():
    c = Raw(srv.sock)
    c.greeting()
    c.send(struct.pack(">I", FLAG_C_FIXED_NEWSTYLE | 0x100))
    check(c.wait_closed(), "server kept the connection after unknown client flags 0x101")
    c.close()
    c = Raw(srv.sock)
    c.greeting()
    c.send(struct.pack(">I", 0x80000000 | FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES))
    check(c.wait_closed(), "server kept the connection after client flag bit 31")
    c.close()


def t_export_name(no_zeroes):
    cf = FLAG_C_FIXED_NEWSTYLE | (FLAG_C_NO_ZEROES if no_zeroes else 0)
    c = new(cflags=cf)
    size, flags = c.export_name(b"")          # checks the 124 zeros if owed
    check_eq(size, SIZE, "size after EXPORT_NAME")
    check_eq(tf_str(flags), tf_str(MEMORY_FLAGS), "transmission flags after EXPORT_NAME")
    # The next bytes must be exactly our reply: proves no stray padding.
    err, data = c.read(REF_OFF, 4096)
    check_eq(err, 0, "read error")
    check(data == REF[:4096], "wrong data after EXPORT_NAME")
    c.disc()
    check(c.wait_closed(), "no close after DISC")
    c.close()


def t_export_name_unknown():
    c = new(config_server().sock)
    c.send_opt(OPT_EXPORT_NAME, b"no-such-export")
    check(c.wait_closed(), "EXPORT_NAME of an unknown export must close the connection")
    c.close()


# ---- transmission --------------------------------------------------------------

def t_simple_replies():
    c = connect_go(srv.sock, structured=False)
    err, data = c.read(REF_OFF + 100, 1000)
    check_eq((err, data), (0, REF[100:1100]), "simple read")
    err, data = c.read(SIZE - 512, 1024)
    check_eq((err, data), (EINVAL, b""), "simple read past end (no payload)")
    err, data = c.read(SIZE, 1)
    check_eq(err, EINVAL, "simple read at the end")
    # stream still in sync
    check_eq(c.read(REF_OFF, 8), (0, REF[:8]), "read after errors")
    check_eq(c.write(2 * MiB, b"\x55" * 4096), 0, "simple write")
    check_eq(c.read(2 * MiB, 4096), (0, b"\x55" * 4096), "read back")
    err = c.write(SIZE - 512, b"x" * 1024)
    check(err in (ENOSPC, EINVAL), "write past end: error %d (want ENOSPC, or EINVAL)" % err)
    check_eq(c.read(2 * MiB, 8), (0, b"\x55" * 8), "read after write error (in sync)")
    c.disc()
    c.close()


def t_structured_read():
    c = connect_go(srv.sock)
    ck = c.request(CMD_READ, REF_OFF - 4096, 8192 + len(REF))
    err, data, chunks = c.recv_structured(ck, REF_OFF - 4096, 8192 + len(REF))
    check_eq(err, 0, "structured read error")
    check(data[4096:4096 + len(REF)] == REF, "structured read data")
    check(chunks[-1]["flags"] & REPLY_FLAG_DONE, "last chunk lacks DONE")
    for x in chunks[:-1]:
        check(not x["flags"] & REPLY_FLAG_DONE, "DONE before the last chunk")
    # DF: at most one content chunk
    ck = c.request(CMD_READ, REF_OFF - 4096, 65536, CMD_FLAG_DF)
    err, data, chunks = c.recv_structured(ck, REF_OFF - 4096, 65536)
    check_eq(err, 0, "DF read error")
    content = [x for x in chunks if x["type"] in (REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE)]
    check_eq(len(content), 1, "content chunks with DF")
    check(data[4096:] == REF[:65536 - 4096], "DF read data")
    # past end: error chunk EINVAL
    ck = c.request(CMD_READ, SIZE - 4096, 8192)
    err, _, _ = c.recv_structured(ck, SIZE - 4096, 8192)
    check_eq(err, EINVAL, "structured read past end")
    check_eq(c.read(REF_OFF, 8), (0, REF[:8]), "read after error")
    c.disc()
    c.close()


def t_other_commands():
    c = connect_go(srv.sock)
    base = 3 * MiB
    check_eq(c.write(base, b"\xaa" * 65536, CMD_FLAG_FUA), 0, "WRITE+FUA")
    check_eq(c.cmd(CMD_FLUSH), 0, "FLUSH")
    check_eq(c.cmd(CMD_CACHE, base, 65536), 0, "CACHE")
    check_eq(c.cmd(CMD_WRITE_ZEROES, base, 4096), 0, "WRITE_ZEROES")
    check_eq(c.cmd(CMD_WRITE_ZEROES, base + 4096, 4096, CMD_FLAG_NO_HOLE | CMD_FLAG_FUA), 0,
             "WRITE_ZEROES NO_HOLE|FUA")
    check_eq(c.cmd(CMD_WRITE_ZEROES, base + 8192, 4096, CMD_FLAG_FAST_ZERO), 0,
             "WRITE_ZEROES FAST_ZERO")
    check_eq(c.read(base, 16384), (0, bytes(12288) + b"\xaa" * 4096), "read after zeroes")
    check_eq(c.cmd(CMD_TRIM, base, 65536, CMD_FLAG_FUA), 0, "TRIM+FUA")
    check_eq(c.cmd(CMD_TRIM, SIZE - 4096, 8192), EINVAL, "TRIM past end")
    err = c.cmd(CMD_WRITE_ZEROES, SIZE - 4096, 8192)
    check(err in (ENOSPC, EINVAL), "WRITE_ZEROES past end: error %d (want ENOSPC or EINVAL)" % err)
    c.disc()
    c.close()


def t_unknown_command():
    c = connect_go(srv.sock)
    check_eq(c.cmd(99, 0, 4096), EINVAL, "unknown command type 99")
    check_eq(c.read(REF_OFF, 16), (0, REF[:16]), "read after unknown command")
    check_eq(c.cmd(CMD_FLUSH, 0, 0, 0x4000), EINVAL, "unknown command flag 0x4000 on FLUSH")
    check_eq(c.read(REF_OFF, 16), (0, REF[:16]), "read after unknown flag")
    c.disc()
    c.close()


def t_pipelined():
    c = connect_go(srv.sock)
    want = {}
    for i in range(32):
        off = REF_OFF + i * 32768
        ck = c.request(CMD_READ, off, 32768)
        want[ck] = (off, REF[i * 32768:(i + 1) * 32768])
    done = {}
    partial = {ck: bytearray(32768) for ck in want}
    while len(done) < len(want):
        x = c.recv_chunk()
        check(x["kind"] == "structured", "simple reply to a READ with structured replies")
        ck = x["cookie"]
        check(ck in want, "reply with unknown cookie 0x%x" % ck)
        off = want[ck][0]
        if x["type"] == REPLY_TYPE_OFFSET_DATA:
            (o,) = struct.unpack(">Q", x["payload"][:8])
            d = x["payload"][8:]
            partial[ck][o - off:o - off + len(d)] = d
        elif x["type"] & 0x8000:
            raise CheckFailed("error chunk in a pipelined read")
        if x["flags"] & REPLY_FLAG_DONE:
            check(ck not in done, "two DONE chunks for cookie 0x%x" % ck)
            done[ck] = bytes(partial[ck])
    for ck, (off, data) in want.items():
        check(done[ck] == data, "pipelined read at %d returned wrong data" % off)
    c.disc()
    c.close()


def t_disc_flushes_pending():
    c = connect_go(srv.sock)
    pat = os.urandom(65536)
    c.request(CMD_WRITE, 5 * MiB, len(pat), 0, pat)   # not waiting for the reply
    c.disc()
    check(c.wait_closed(), "no close after write+DISC")
    c.close()
    d = connect_go(srv.sock)
    check_eq(d.read(5 * MiB, len(pat)), (0, pat), "write sent just before DISC was lost")
    d.close()


# ---- hostile ------------------------------------------------------------------

def t_bad_request_magic():
    c = connect_go(srv.sock)
    c.request(CMD_READ, 0, 4096, magic=0x12345678)
    check(c.wait_closed(), "connection not closed after bad request magic")
    c.close()


def t_garbage_handshake():
    c = Raw(srv.sock)
    c.greeting()
    try:
        c.send(os.urandom(4096))
    except Closed:
        pass
    check(c.wait_closed(), "connection not closed after 4 KiB of garbage as client flags")
    c.close()
    # garbage instead of IHAVEOPT after valid client flags
    c = new()
    try:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(1000))
    except Closed:
        pass
    check(c.wait_closed(), "connection not closed after garbage in option haggling")
    c.close()
    # garbage before even reading the greeting
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(srv.sock)
    try:
        s.sendall(os.urandom(65536))
    except OSError:
        pass
    s.close()


def t_huge_option():
    c = new()
    # an option claiming 1 GiB of data: the server must not wait for / buffer it
    try:
        c.send_opt(0x7F3A, b"x" * 100, length=1 << 30)
    except Closed:
        return
    r = c.wait_closed()
    if not r:
        raise CheckFailed("server neither closed nor answered an option declaring 1 GiB of data")
    c.close()


def t_read_ffffffff():
    for structured in (False, True):
        c = connect_go(srv.sock, structured=structured)
        try:
            err, _ = c.read(0, 0xFFFFFFFF)
        except Closed:
            raise CheckFailed("connection closed instead of an error reply (structured=%s)"
                              % structured)
        check(err in (EINVAL, EOVERFLOW), "read length 0xffffffff: error %d, want EINVAL or "
              "EOVERFLOW (structured=%s)" % (err, structured))
        # the server may then hang up (proto.md), but if not, it must be in sync
        try:
            res = c.read(REF_OFF, 16)
        except Closed:
            res = None
        if res is not None:
            check_eq(res, (0, REF[:16]), "read after the rejected read")
        c.close()


def t_read_33mib():
    c = connect_go(srv.sock)
    err, _ = c.read(0, 33 * MiB)
    check(err in (EINVAL, EOVERFLOW), "33 MiB read (over the 32 MiB maximum): error %d" % err)
    check_eq(c.read(REF_OFF, 16), (0, REF[:16]), "read after the rejected read")
    c.close()


def t_write_over_max():
    """33 MiB > the 32 MiB maximum, with its whole payload: the server may
    hang up, or read and drop the payload and reply with an error; either
    way nothing may be written."""
    before = bystander.read(0, 2 * MiB)
    c = connect_go(srv.sock)
    try:
        c.request(CMD_WRITE, 0, 33 * MiB, 0, b"\xee" * (33 * MiB))
        x = c.recv_chunk()
    except Closed:
        x = None
    if x is not None:
        err = x.get("error") if x["kind"] == "simple" else (
            struct.unpack(">I", x["payload"][:4])[0] if x["type"] & 0x8000 else 0)
        check(err in (EINVAL, ENOMEM, EOVERFLOW, ENOSPC),
              "33 MiB write: reply error %s, want EINVAL/ENOMEM/EOVERFLOW/ENOSPC (or a close)" % err)
        if x["kind"] == "structured" and not x["flags"] & REPLY_FLAG_DONE:
            c.recv_structured(x["cookie"])
        check_eq(c.read(REF_OFF, 16), (0, REF[:16]), "connection in sync after the error")
    c.close()
    check(bystander.read(0, 2 * MiB) == before, "part of the rejected 33 MiB write was applied")


def t_write_huge():
    """A write declaring 1 GiB: the server cannot resynchronise (nobody
    skips a gigabyte), so it must hang up, and apply nothing."""
    before = bystander.read(0, 2 * MiB)
    c = connect_go(srv.sock)
    try:
        c.request(CMD_WRITE, 0, 1 << 30, 0, b"\xee" * (MiB + MiB // 2))
    except Closed:
        c.close()
        return
    check(c.wait_closed(), "server kept a connection that declared a 1 GiB write")
    c.close()
    check(bystander.read(0, 2 * MiB) == before, "part of the rejected 1 GiB write was applied")


def t_write_ffffffff():
    c = connect_go(srv.sock)
    try:
        c.request(CMD_WRITE, 0, 0xFFFFFFFF, 0, b"\xee" * 4096)
    except Closed:
        c.close()
        return
    check(c.wait_closed(), "server kept a connection that declared a 4 GiB write")
    c.close()


def t_storm():
    t0 = time.monotonic()
    for i in range(200):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(srv.sock)
        if i % 4 == 1:
            s.recv(18)
        elif i % 4 == 2:
            s.recv(18)
            s.sendall(struct.pack(">I", 3))
        elif i % 4 == 3:
            s.close()
            c = connect_go(srv.sock, structured=(i % 8 == 3))
            c.disc()
            c.close()
            continue
        s.close()
    T.log("    200 connect/disconnects in %.2fs" % (time.monotonic() - t0))


def t_half_request_then_close():
    c = connect_go(srv.sock)
    c.send(struct.pack(">IHH", REQUEST_MAGIC, 0, CMD_WRITE))   # 8 of 28 header bytes
    c.close()
    c = connect_go(srv.sock)
    c.request(CMD_WRITE, 6 * MiB, 65536, 0, b"\x11" * 1000)   # payload cut short
    c.close()


def t_write_cut_over_data():
    # The payload stops 300 KiB into a 512 KiB write over the reference
    # data (unaligned, so it starts and ends mid-page), and the client goes.
    # memory reads payloads straight into its pages; none may change.
    c = connect_go(srv.sock)
    c.request(CMD_WRITE, REF_OFF + 100, 512 * 1024, 0, b"\x22" * (300 * 1024))
    time.sleep(0.2)
    c.close()

# ---- exports by name (needs the config file: nbdstack only) -------------------

def t_config_list_and_names():
    sock = config_server().sock
    c = new(sock)
    r = c.option(OPT_LIST)
    check_eq(rep_name(r[-1][0]), "ACK", "LIST final reply")
    got = {}
    for rep, data in r[:-1]:
        (n,) = struct.unpack(">I", data[:4])
        got[data[4:4 + n]] = data[4 + n:]
    check_eq(sorted(got), [b"", b"vm1"], "names from LIST")
    final, info = c.info_or_go(OPT_INFO, b"vm1", [INFO_DESCRIPTION, INFO_NAME])
    check_eq(rep_name(final), "ACK", "INFO vm1")
    check_eq(c.size, 8 * MiB, "vm1 size (offset filter range)")
    check_eq(info.get(INFO_DESCRIPTION), b"second disk", "NBD_INFO_DESCRIPTION of vm1")
    c.go(b"")
    check_eq(c.size, 64 * MiB, "default export size")
    c.close()
    # vm1 through EXPORT_NAME
    c = new(sock)
    c.export_name(b"vm1")
    check_eq(c.size, 8 * MiB, "vm1 size via EXPORT_NAME")
    check_eq(c.write(100, b"vm1!"), 0, "write vm1")
    check_eq(c.read(100, 4), (0, b"vm1!"), "read vm1")
    check_eq(c.read(8 * MiB - 512, 1024)[0], EINVAL, "read past the end of the range")
    c.close()
    c = connect_go(sock, b"")
    check_eq(c.read(100, 4), (0, bytes(4)), "exports do not share a memory disk")
    c.close()


C.run("greeting: NBDMAGIC, IHAVEOPT, flags FIXED_NEWSTYLE|NO_ZEROES", t_greeting)
C.run("unknown option -> ERR_UNSUP, session usable", t_unknown_option)
C.run("STARTTLS without TLS -> error reply, session usable", t_starttls)
C.run("ABORT -> ACK then close", t_abort)
C.run("LIST -> REP_SERVER per export, ACK; LIST with data -> ERR_INVALID", t_list)
C.run("config: INFO/GO unknown export -> ERR_UNKNOWN, session usable", t_unknown_export)
C.run("INFO returns NBD_INFO_EXPORT, GO still possible", t_info_then_go)
C.run("GO with NBD_INFO_BLOCK_SIZE request", t_go_block_size)
C.run("transmission flags of memory are exact", t_flags_exact)
C.run("read-only export: flags and EPERM", t_flags_readonly)
C.run("options too short for their content -> ERR_INVALID, stream in sync", t_short_option)
C.run("SET_META_CONTEXT before STRUCTURED_REPLY -> error", t_meta_before_structured)
C.run("LIST/SET_META_CONTEXT base:allocation and BLOCK_STATUS", t_meta_and_block_status)
C.run("BLOCK_STATUS without a context -> EINVAL", t_block_status_without_context)
C.run("SET_META_CONTEXT holds for the same export name, any name", t_meta_any_export_name)
C.run("a failed SET_META_CONTEXT clears the contexts", t_meta_failed_set_clears)
C.run("unknown option of 64 KiB-8 MiB -> ERR_UNSUP; INFO that long -> ERR_TOO_BIG",
      t_long_unknown_option)
C.run("config: SET_META_CONTEXT and GO on the default export", t_meta_config_default_export)
C.run("NBD_INFO_NAME: the name asked for on the command line, a config export's own", t_info_name_canonical)
C.run("EXPORT_NAME with NO_ZEROES", t_export_name, True)
C.run("EXPORT_NAME without NO_ZEROES (124 zero bytes)", t_export_name, False)
C.run("config: EXPORT_NAME of unknown export -> close", t_export_name_unknown)
C.run("simple replies: data, EINVAL past end, ENOSPC write past end", t_simple_replies)
C.run("structured read: chunks, DONE, DF, error chunk", t_structured_read)
C.run("WRITE FUA, FLUSH, CACHE, WRITE_ZEROES, TRIM", t_other_commands)
C.run("unknown command / flag -> EINVAL, connection usable", t_unknown_command)
C.run("32 pipelined reads, replies matched by cookie", t_pipelined)
C.run("DISC after a write: write completes, clean close", t_disc_flushes_pending)
hostile("unknown client flags -> connection dropped", t_unknown_client_flags)
hostile("bad request magic -> connection closed", t_bad_request_magic)
hostile("garbage handshakes -> connection closed", t_garbage_handshake)
hostile("option declaring 1 GiB of data", t_huge_option)
hostile("READ length 0xffffffff -> EINVAL/EOVERFLOW", t_read_ffffffff)
hostile("READ 33 MiB (over maximum) -> error, connection usable", t_read_33mib)
hostile("WRITE of 33 MiB (over maximum) -> error or close, nothing applied", t_write_over_max)
hostile("WRITE declaring 1 GiB -> connection closed, nothing applied", t_write_huge)
hostile("WRITE declaring 0xffffffff bytes -> connection closed", t_write_ffffffff)
hostile("truncated requests then close", t_half_request_then_close)
hostile("WRITE over data, payload cut short -> nothing applied", t_write_cut_over_data)
hostile("200 rapid connect/disconnects", t_storm)
C.run("config: LIST both exports, INFO description, offset range, EXPORT_NAME vm1",
      t_config_list_and_names)

bystander.disc()
bystander.close()
C.run("server exits 0 on SIGTERM", lambda: check_eq(srv.stop(), 0, "exit status after SIGTERM"))
servers = [srv, ro] + list(_config.values())
if "srv" in _config:
    C.run("config server exits 0 on SIGTERM",
          lambda: check_eq(_config["srv"].stop(), 0, "exit status after SIGTERM"))
C.finish(servers)
