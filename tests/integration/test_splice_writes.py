#!/usr/bin/python3
"""Large writes spliced from the client's socket (pwrite_from with
splice(2)): into the file backend's file, and to /dev/null for the null
backend; and the writes that go another way:
small ones, TLS-less fallbacks (direct=true, cache=none), a payload cut
short by a client that goes away, and a write that fails in the middle.

- Writes of 64 KiB to 4 MiB at odd offsets, with and without FUA, read
  back through the server and compared with the file itself.
- direct=true (no splice into O_DIRECT files: through an aligned buffer)
  and cache=none (evicted after the splice) give the same bytes.
- A client stopping halfway through a 1 MiB payload: the server keeps
  serving another client, whose writes and reads are right.
- The server under a file-size limit (prlimit --fsize) below the end of
  the file: a 1 MiB write across it fails with an error (EFBIG, not the
  server killed by SIGXFSZ), the rest of its payload is drained, and the
  next request on the same connection works.
- nbdcopy of 64 MiB into the export and back, byte for byte.
- cow and cache over file: whole blocks spliced into the overlay or the
  cache file, partial ones read first, all read back (and below, after a
  flush, through the cache); a client stalled halfway through a 1 MiB
  payload does not hold the blocks: another client's writes to the same
  blocks complete meanwhile.
- null: 1 and 4 MiB writes between reads keep the stream in step (the
  reads answer zeros), also after a client that stopped halfway through
  a payload.
"""
import os
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import (Checker, Server, check, check_eq, connect_go,  # noqa: E402
                     CMD_WRITE)

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")
T.require_layers("file")
T.start_watchdog(240)
C = Checker("test_splice_writes")

SIZE = 64 << 20
servers = []


def pattern(n, seed):
    """n bytes that differ at every offset and between seeds."""
    block = bytes((i * 131 + seed * 17 + (i >> 8)) & 0xff for i in range(65536))
    return (block * (n // 65536 + 1))[:n]


def make_disk(name, size=SIZE):
    path = os.path.join(T.TMPDIR, name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def writes_read_back(extra=(), name="plain", aligned=False):
    path = make_disk(name + ".img")
    srv = Server(["-v", "file", "file=" + path] + list(extra), name=name)
    servers.append(srv)
    want = "through a buffer" if aligned else "spliced from the socket"
    check("large writes " + want in srv.log_text(),
          "%s: the log does not say large writes are %s" % (name, want))
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    if aligned:                 # direct=true: whole 4 KiB blocks
        cases = [(65536, 12288, 0), (1 << 20, 3 << 20, 0),
                 ((1 << 20) + 4096, (5 << 20) + 4096, nbd.CMD_FLAG_FUA),
                 (4 << 20, 9 << 20, 0), (4096, 40 << 20, 0)]
    else:
        cases = [(65536, 12345, 0), (1 << 20, 3 << 20, 0),
                 ((1 << 20) + 513, (5 << 20) + 1, nbd.CMD_FLAG_FUA),
                 (4 << 20, 9 << 20, 0), (200000, (20 << 20) + 4095, 0),
                 (4096, 40 << 20, 0), (65535, (41 << 20) + 7, 0)]
    for i, (n, off, fl) in enumerate(cases):
        h.pwrite(pattern(n, i), off, fl)
    for i, (n, off, fl) in enumerate(cases):
        check(h.pread(n, off) == pattern(n, i),
              "%s: read back %d bytes at %d" % (name, n, off))
    h.flush()
    h.shutdown()
    with open(path, "rb") as f:
        for i, (n, off, fl) in enumerate(cases):
            f.seek(off)
            check(f.read(n) == pattern(n, i),
                  "%s: the file holds %d bytes at %d" % (name, n, off))
    srv.stop()


def client_gone_mid_payload():
    path = make_disk("mid.img")
    srv = Server(["file", "file=" + path], name="mid")
    servers.append(srv)
    other = connect_go(srv.sock)
    check_eq(other.write(0, b"a" * 65536), 0, "a write before")
    c = connect_go(srv.sock)
    c.request(CMD_WRITE, 1 << 20, 1 << 20, data=b"b" * (1 << 19))
    time.sleep(0.3)
    c.close()
    time.sleep(0.3)
    check(srv.alive(), "the server died")
    err, data = other.read(0, 65536)
    check(err == 0 and data == b"a" * 65536,
          "the other client's read after it: error %d" % err)
    check_eq(other.write(4096, b"d" * (1 << 20)), 0, "the other client's write")
    err, data = other.read(4096, 1 << 20)
    check(err == 0 and data == b"d" * (1 << 20), "its read back")
    other.disc()
    other.close()
    srv.stop()


def write_fails_midway():
    if shutil.which("prlimit") is None:
        T.log("no prlimit: skipped")
        return
    path = make_disk("fsize.img")
    limit = 8 << 20
    srv = Server(["file", "file=" + path], name="fsize",
                 prefix=["prlimit", "--fsize=%d" % limit, "--"])
    servers.append(srv)
    c = connect_go(srv.sock)
    check_eq(c.write(limit - (1 << 20), b"e" * (1 << 20)), 0,
             "a write that ends at the limit")
    err = c.write(limit - (512 << 10), b"f" * (1 << 20))
    check(err != 0, "a write across the file-size limit succeeded")
    check(srv.alive(), "the server died of the write (SIGXFSZ?)")
    # The stream is in step: the next requests are answered.
    check_eq(c.write(0, b"g" * (1 << 20)), 0, "a write after the failure")
    err, data = c.read(0, 1 << 20)
    check(err == 0 and data == b"g" * (1 << 20), "a read after the failure")
    err = c.write(limit + (1 << 20), b"h" * (2 << 20))
    check(err != 0, "a write wholly past the limit succeeded")
    err, data = c.read(limit - (1 << 20), 65536)
    check(err == 0 and data == b"e" * 65536, "the bytes before the limit")
    c.disc()
    c.close()
    srv.stop()


def nbdcopy_round_trip():
    if shutil.which("nbdcopy") is None:
        T.log("no nbdcopy: skipped")
        return
    src = os.path.join(T.TMPDIR, "src.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(SIZE))
    path = make_disk("copy.img")
    srv = Server(["file", "file=" + path], name="copy")
    servers.append(srv)
    subprocess.run(["nbdcopy", src, srv.uri], check=True, timeout=120)
    back = os.path.join(T.TMPDIR, "back.bin")
    subprocess.run(["nbdcopy", srv.uri, back], check=True, timeout=120)
    with open(src, "rb") as a, open(back, "rb") as b:
        check(a.read() == b.read(), "nbdcopy there and back differs")
    with open(src, "rb") as a, open(path, "rb") as b:
        check(a.read() == b.read(), "the file differs from the source")
    srv.stop()


def filter_over_file(name, filt, below_after_flush, params=()):
    """Large writes through filter filt (a list of arguments) over a file
    holding a pattern: read back; the file below unchanged (cow) or, after
    a flush, holding them (cache); then a stalled client."""
    path = make_disk(name + "base.img")
    with open(path, "r+b") as f:
        f.write(pattern(SIZE, 99))
    srv = Server(["-v"] + filt + ["file", "file=" + path] + list(params),
                 name=name)
    servers.append(srv)
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    cases = [(1 << 20, 0), ((1 << 20) + 100, (2 << 20) + 4000),
             (65536, 8 << 20), (4 << 20, (10 << 20) + 65536),
             (200000, 20 << 20)]
    for i, (n, off) in enumerate(cases):
        h.pwrite(pattern(n, i), off)
    for i, (n, off) in enumerate(cases):
        check(h.pread(n, off) == pattern(n, i),
              "%s: read back %d bytes at %d" % (name, n, off))
    # Around the writes the layer below still shows through.
    check(h.pread(4000, (2 << 20)) == pattern(SIZE, 99)[2 << 20:(2 << 20) + 4000],
          "%s: the bytes below before a partial write" % name)
    h.flush()
    h.shutdown()
    with open(path, "rb") as f:
        if below_after_flush:
            for i, (n, off) in enumerate(cases):
                f.seek(off)
                check(f.read(n) == pattern(n, i),
                      "%s: below after a flush, %d bytes at %d" % (name, n, off))
        else:
            check(f.read(1 << 20) == pattern(SIZE, 99)[:1 << 20],
                  "%s wrote below" % name)
    # A client stalled in the middle of a payload holds no block.
    stalled = connect_go(srv.sock)
    stalled.request(CMD_WRITE, 32 << 20, 1 << 20, data=b"s" * (1 << 19))
    time.sleep(0.3)
    other = connect_go(srv.sock, timeout=10)
    t0 = time.monotonic()
    for k in range(16):         # every 64 KiB block of the stalled write
        check_eq(other.write((32 << 20) + k * 65536, b"o" * 65536), 0,
                 "%s: another client's write to a stalled block" % name)
    took = time.monotonic() - t0
    check(took < 5, "%s: another client's writes waited %.1f s behind a "
          "stalled payload" % (name, took))
    err, data = other.read(32 << 20, 65536)
    check(err == 0 and data == b"o" * 65536, "%s: its read back" % name)
    stalled.close()
    other.disc()
    other.close()
    srv.stop()


def null_in_step():
    srv = Server(["-v", "null", "size=64M"], name="null")
    servers.append(srv)
    c = connect_go(srv.sock)
    for n, off in ((1 << 20, 0), (4 << 20, 12345), (65536, 7), (4096, 0)):
        check_eq(c.write(off, b"x" * n), 0, "null: a %d-byte write" % n)
        err, data = c.read(off, 4096)
        check(err == 0 and data == bytes(4096),
              "null: the read after a %d-byte write" % n)
    d = connect_go(srv.sock)
    d.request(CMD_WRITE, 0, 1 << 20, data=b"y" * (1 << 19))
    time.sleep(0.2)
    d.close()
    time.sleep(0.2)
    check(srv.alive(), "null: the server died")
    check_eq(c.write(0, b"z" * (1 << 20)), 0, "null: a write after that")
    err, data = c.read(0, 4096)
    check(err == 0 and data == bytes(4096), "null: a read after that")
    c.disc()
    c.close()
    srv.stop()


C.run("large and small writes read back", writes_read_back)
C.run("direct=true", writes_read_back, ["direct=true"], "direct", True)
C.run("cache=none", writes_read_back, ["cache=none"], "nocache")
C.run("a client gone in the middle of a payload", client_gone_mid_payload)
C.run("a write failing in the middle (file-size limit)", write_fails_midway)
C.run("nbdcopy there and back", nbdcopy_round_trip)
C.run("cow over file", filter_over_file, "cow", ["--filter", "cow"], False)
C.run("cache (writeback) over file", filter_over_file, "cache",
      ["--filter", "cache"], True)
C.run("cache (writethrough) over file", filter_over_file, "cachewt",
      ["--filter", "cache"], True, ["cache=writethrough"])
C.run("null: large writes in step with reads", null_in_step)
C.finish(servers)
