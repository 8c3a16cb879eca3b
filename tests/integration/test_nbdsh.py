#!/usr/bin/python3
"""The datapath through libnbd (python3-libnbd): reads and writes of many
sizes and alignments checked against a model, zero/trim/flush/FUA/cache,
block status (base:allocation, REQ_ONE), DF and FAST_ZERO, error codes for
out-of-range, oversized and read-only requests (libnbd's client-side checks
are turned off with set_strict_mode(0) so the server is what answers),
64-deep AIO concurrency and multi-conn visibility."""

import errno
import os
import random
import sys

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import (MiB, Checker, Server, check, check_eq, CheckFailed)  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (module nbd) not available to %s" % sys.executable)

T.require_layers("memory")
T.start_watchdog()

SIZE = 128 * MiB
srv = Server(T.disk_args(SIZE), name="rw")
C = Checker("test_nbdsh")


def connect(server=srv, meta=True, strict=True):
    h = nbd.NBD()
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_unix(server.sock)
    if not strict:
        h.set_strict_mode(0)
    return h


def expect_error(fn, errnums, what):
    """fn() must raise nbd.Error with errnum in errnums."""
    try:
        fn()
    except nbd.Error as e:
        check(e.errnum in errnums, "%s: errnum %s (%s), want %s"
              % (what, e.errnum, errno.errorcode.get(e.errnum, "?"),
                 "/".join(errno.errorcode[x] for x in errnums)))
        return e
    raise CheckFailed("%s: succeeded, expected %s"
                      % (what, "/".join(errno.errorcode[x] for x in errnums)))


def extents(h, offset, length, flags=0):
    """[(offset, length, flags)] of base:allocation covering [offset, +length)."""
    out = []
    pos, end = offset, offset + length
    while pos < end:
        got = []

        def cb(ctx, off, entries, err):
            if ctx == nbd.CONTEXT_BASE_ALLOCATION:
                got.append((off, list(entries)))
            return 0
        h.block_status(end - pos, pos, cb, flags)
        check_eq(len(got), 1, "base:allocation callbacks per block_status")
        off, ent = got[0]
        check_eq(off, pos, "extent callback offset")
        check(len(ent) >= 2 and len(ent) % 2 == 0, "extent entries %r" % ent)
        for i in range(0, len(ent), 2):
            check(ent[i] > 0, "zero-length extent")
            out.append((pos, ent[i], ent[i + 1]))
            pos += ent[i]
    return out


def assert_extents(h, offset, length, hole, what):
    """Every extent overlapping [offset, +length) is a hole (hole=True) or
    data (hole=False)."""
    for off, ln, fl in extents(h, offset, length):
        if off + ln <= offset or off >= offset + length:
            continue
        is_hole = bool(fl & nbd.STATE_HOLE)
        check(is_hole == hole, "%s: extent [%d,+%d) flags %d, want %s"
              % (what, off, ln, fl, "hole" if hole else "data"))
        if hole:
            check(fl & nbd.STATE_ZERO, "%s: hole [%d,+%d) lacks STATE_ZERO" % (what, off, ln))


def pread_df(h, n, off):
    """READ with NBD_CMD_FLAG_DF (libnbd 1.14 takes DF on pread_structured
    only); checks that the server sent at most one content chunk."""
    chunks = []

    def cb(buf, o, status, err):
        chunks.append((o, len(buf), status))
        return 0
    data = h.pread_structured(n, off, cb, nbd.CMD_FLAG_DF)
    check(len(chunks) <= 1, "DF read of %d at %d came in %d chunks" % (n, off, len(chunks)))
    return data


h = connect()


def t_negotiated():
    check(h.get_structured_replies_negotiated(), "structured replies not negotiated")
    check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation not negotiated")
    check_eq(h.get_size(), SIZE, "size")
    for cap in ("can_flush", "can_trim", "can_zero", "can_fua", "can_multi_conn",
                "can_cache", "can_fast_zero", "can_df"):
        check(getattr(h, cap)(), cap + " is false")
    check(not h.is_read_only(), "read-only")


def t_fresh_zero():
    for off, n in ((0, 4096), (1, 1), (SIZE - 1, 1), (12345, 1000000), (64 * MiB, 4 * MiB)):
        check(h.pread(n, off) == bytes(n), "fresh disk at %d+%d is not zeros" % (off, n))
        check(pread_df(h, n, off) == bytes(n),
              "fresh disk at %d+%d with DF is not zeros" % (off, n))


def t_sizes_offsets():
    cases = [(0, 1), (SIZE - 1, 1), (4097, 12345), (4095, 2), (MiB - 3, 7),
             (3 * MiB + 511, 4096 * 3 + 1), (8 * MiB, MiB), (16 * MiB + 1, MiB),
             (SIZE - MiB, MiB), (32 * MiB, 32 * MiB)]
    for off, n in cases:
        data = os.urandom(n)
        before = h.pread(4096, off - 4096) if off >= 4096 else None
        after = h.pread(4096, off + n) if off + n + 4096 <= SIZE else None
        h.pwrite(data, off)
        check(h.pread(n, off) == data, "read back of %d bytes at %d" % (n, off))
        if before is not None:
            check(h.pread(4096, off - 4096) == before, "write at %d+%d changed bytes before" % (off, n))
        if after is not None:
            check(h.pread(4096, off + n) == after, "write at %d+%d changed bytes after" % (off, n))


def t_model():
    """Random unaligned write/zero/trim/read against a model of 4 MiB."""
    base, span = 100 * MiB, 4 * MiB
    rnd = random.Random(12345)
    h.zero(span, base)
    model = bytearray(span)
    for i in range(300):
        op = rnd.choice("wwwzztr")
        off = rnd.randrange(span)
        n = rnd.randrange(1, min(span - off, 300000) + 1)
        if op == "w":
            d = rnd.randbytes(n)
            h.pwrite(d, base + off, nbd.CMD_FLAG_FUA if i % 5 == 0 else 0)
            model[off:off + n] = d
        elif op == "z":
            h.zero(n, base + off, nbd.CMD_FLAG_NO_HOLE if i % 2 else 0)
            model[off:off + n] = bytes(n)
        elif op == "t":
            # trim of a memory disk reads back as zeros
            h.trim(n, base + off)
            model[off:off + n] = bytes(n)
        else:
            got = h.pread(n, base + off)
            if got != bytes(model[off:off + n]):
                raise CheckFailed("op %d: read %d+%d differs from the model" % (i, off, n))
    check(h.pread(span, base) == bytes(model), "final 4 MiB differs from the model")


def t_zero_trim_flush_fua_cache():
    off = 110 * MiB          # untouched by the other cases
    h.pwrite(b"\xab" * (4 * MiB), off, nbd.CMD_FLAG_FUA)
    h.flush()
    check(h.pread(4 * MiB, off) == b"\xab" * (4 * MiB), "FUA write")
    check(pread_df(h, 65536, off + 4 * MiB - 4096) == b"\xab" * 4096 + bytes(61440),
          "DF read across data and hole")
    h.zero(MiB, off, nbd.CMD_FLAG_FUA)
    check(h.pread(MiB, off) == bytes(MiB), "zero then read")
    h.zero(MiB, off + MiB, nbd.CMD_FLAG_FAST_ZERO)
    check(h.pread(MiB, off + MiB) == bytes(MiB), "FAST_ZERO then read")
    h.trim(MiB, off + 2 * MiB, nbd.CMD_FLAG_FUA)
    check(h.pread(MiB, off + 2 * MiB) == bytes(MiB), "trimmed memory reads zeros")
    h.cache(4 * MiB, off)
    h.cache(1, SIZE - 1)
    h.flush()
    check(h.pread(MiB, off + 3 * MiB) == b"\xab" * MiB, "untouched data after zero/trim")


def t_block_status():
    off = 48 * MiB
    h.zero(8 * MiB, off)
    assert_extents(h, off, 8 * MiB, True, "zeroed region")
    h.pwrite(b"\x01" * (2 * MiB), off + 2 * MiB)
    h.pwrite(b"\x02" * (2 * MiB), off + 6 * MiB)
    assert_extents(h, off + 2 * MiB, 2 * MiB, False, "written region")
    assert_extents(h, off + 6 * MiB, 2 * MiB, False, "second written region")
    assert_extents(h, off, 2 * MiB, True, "never written region")
    assert_extents(h, off + 4 * MiB, 2 * MiB, True, "gap between writes")
    h.trim(2 * MiB, off + 2 * MiB)
    assert_extents(h, off + 2 * MiB, 2 * MiB, True, "trimmed region")
    h.zero(2 * MiB, off + 6 * MiB)
    assert_extents(h, off + 6 * MiB, 2 * MiB, True, "zeroed (was data) region")
    h.pwrite(b"\x03" * MiB, off + MiB)
    ext = extents(h, off, 8 * MiB)
    check(len(ext) >= 3, "expected hole/data/hole, got %r" % ext)
    # REQ_ONE: exactly one extent, starting at the requested offset
    got = []
    h.block_status(8 * MiB, off, lambda c, o, e, err: got.append((c, o, list(e))) or 0,
                   nbd.CMD_FLAG_REQ_ONE)
    ba = [g for g in got if g[0] == nbd.CONTEXT_BASE_ALLOCATION]
    check_eq(len(ba), 1, "callbacks with REQ_ONE")
    check_eq(len(ba[0][2]), 2, "entries (length, flags) with REQ_ONE")
    check_eq(ba[0][1], off, "offset with REQ_ONE")
    check(ba[0][2][0] <= MiB and ba[0][2][1] & nbd.STATE_HOLE, "REQ_ONE extent %r" % ba[0][2])


def t_past_end():
    g = connect(strict=False)
    expect_error(lambda: g.pread(512, SIZE), (errno.EINVAL,), "read at the end")
    expect_error(lambda: g.pread(4096, SIZE - 512), (errno.EINVAL,), "read across the end")
    # NBD spec: a write past the end SHOULD fail with ENOSPC; accept EINVAL too.
    e = expect_error(lambda: g.pwrite(b"x" * 4096, SIZE - 512), (errno.ENOSPC, errno.EINVAL),
                     "write across the end")
    if e.errnum != errno.ENOSPC:
        T.log("    note: write past end gave %s; proto.md says SHOULD be ENOSPC"
              % errno.errorcode[e.errnum])
    expect_error(lambda: g.zero(4096, SIZE - 512), (errno.ENOSPC, errno.EINVAL), "zero across the end")
    expect_error(lambda: g.trim(4096, SIZE - 512), (errno.EINVAL,), "trim across the end")
    expect_error(lambda: g.cache(4096, SIZE - 512), (errno.EINVAL,), "cache across the end")
    # still usable
    check(g.pread(8, SIZE - 8) is not None, "connection unusable after errors")
    g.shutdown()


def t_oversized():
    g = connect(strict=False)
    expect_error(lambda: g.pread(33 * MiB, 0), (errno.EINVAL, errno.EOVERFLOW, errno.ERANGE),
                 "33 MiB read (over the 32 MiB maximum)")
    g.pwrite(b"ok", 0)
    check_eq(g.pread(2, 0), b"ok", "connection usable after the rejected read")
    # the advertised maximum (libnbd asks for NBD_INFO_BLOCK_SIZE by default)
    mx = g.get_block_size(nbd.SIZE_MAXIMUM)
    check(0 < mx <= 32 * MiB, "advertised maximum block size %d" % mx)
    check_eq(g.get_block_size(nbd.SIZE_MINIMUM), 1, "minimum block size")
    pref = g.get_block_size(nbd.SIZE_PREFERRED)
    check(pref & (pref - 1) == 0 and 1 <= pref <= mx,
          "preferred block size %d: a power of two up to the maximum" % pref)
    if T.STACK != "deep":       # a stack of caches prefers its block size
        check_eq(pref, 4096, "preferred block size of a memory disk")
    g.shutdown()


def t_readonly():
    ro = Server(T.disk_args(16 * MiB, readonly=True), name="ro")
    try:
        g = connect(ro, strict=False)
        check(g.is_read_only(), "-r export not read-only")
        check(not g.can_trim() and not g.can_zero(), "-r export advertises trim/zero")
        check_eq(g.pread(4096, 0), bytes(4096), "read on -r")
        expect_error(lambda: g.pwrite(b"x" * 512, 0), (errno.EPERM,), "write on -r")
        expect_error(lambda: g.trim(4096, 0), (errno.EPERM,), "trim on -r")
        expect_error(lambda: g.zero(4096, 0), (errno.EPERM, errno.EINVAL), "zero on -r")
        # FUA may not be advertised on a read-only export: EINVAL is fair then
        expect_error(lambda: g.pwrite(b"x" * 512, 0, nbd.CMD_FLAG_FUA),
                     (errno.EPERM, errno.EINVAL), "FUA write on -r")
        check_eq(g.pread(4096, 0), bytes(4096), "data unchanged on -r")
        g.shutdown()
    finally:
        check_eq(ro.stop(), 0, "-r server exit status after SIGTERM")


def t_aio():
    n, bs, base = 64, 256 * 1024, 64 * MiB
    datas = [os.urandom(bs) for _ in range(n)]
    order = list(range(n))
    random.Random(7).shuffle(order)
    cookies = []
    for i in order:
        cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(datas[i])), base + i * bs))
    check(h.aio_in_flight() > 0 or all(h.aio_command_completed(c) for c in cookies),
          "no requests in flight")
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        check(h.aio_command_completed(c), "aio_pwrite cookie %d not completed" % c)
    bufs = {}
    for i in order:
        b = nbd.Buffer(bs)
        bufs[i] = (b, h.aio_pread(b, base + i * bs))
    peak = h.aio_in_flight()
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for i, (b, c) in bufs.items():
        check(h.aio_command_completed(c), "aio_pread %d not completed" % i)
        check(bytes(b.to_bytearray()) == datas[i], "aio_pread %d returned wrong data" % i)
    T.log("    %d reads were in flight at once" % peak)


def t_multi_conn():
    hs = [connect() for _ in range(4)]
    for i, g in enumerate(hs):
        g.pwrite(bytes([0x40 + i]) * 65536, 90 * MiB + i * 65536)
    for g in hs:
        g.flush()
    for j, g in enumerate(hs):
        for i in range(4):
            check(g.pread(65536, 90 * MiB + i * 65536) == bytes([0x40 + i]) * 65536,
                  "connection %d does not see connection %d's flushed write" % (j, i))
    for g in hs:
        g.shutdown()


C.run("negotiation: structured replies, base:allocation, capabilities", t_negotiated)
C.run("fresh memory disk reads zeros (with and without DF)", t_fresh_zero)
C.run("pwrite/pread: 1 byte, unaligned, 1 MiB, 32 MiB; neighbours intact", t_sizes_offsets)
C.run("300 random write/zero/trim/read vs a model", t_model)
C.run("zero, FAST_ZERO, trim, flush, FUA, cache", t_zero_trim_flush_fua_cache)
C.run("block status: data vs holes, REQ_ONE", t_block_status)
C.run("past the end: EINVAL reads, ENOSPC/EINVAL writes, connection usable", t_past_end)
C.run("33 MiB read rejected by the server; advertised block sizes", t_oversized)
C.run("read-only server: EPERM", t_readonly)
C.run("64 aio_pwrite then 64 aio_pread in flight", t_aio)
C.run("multi-conn: 4 connections see each other's flushed writes", t_multi_conn)
h.shutdown()
C.run("server exits 0 on SIGTERM", lambda: check_eq(srv.stop(), 0, "exit status"))
C.finish([srv])
