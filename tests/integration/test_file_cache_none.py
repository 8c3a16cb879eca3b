#!/usr/bin/python3
"""The file backend's cache=none (nbdkit's key) keeps what clients write
and read out of the page cache; the default cache keeps it there.

Residency is asked of the kernel with mincore(2) on a fresh mmap of the
file (ctypes; mapping faults nothing in).  16 MiB are written through the
server in 256 KiB writes, then a FLUSH; with the default cache the
written range stays (mostly) resident, with cache=none it does not (the
FLUSH drops the backend's eviction window too).  Written again without
a FLUSH, at most the writes still in the window are (8 of 64), and none
once the client has gone.  A read of the whole disk through a cache=none
server leaves it (mostly) not resident either.

No timing: the kernel's writeback is asynchronous, so a check that
expects pages gone is retried a few times.  A filesystem on which even
the test's own fsync + POSIX_FADV_DONTNEED leaves pages resident (tmpfs)
cannot show anything: the test skips there.
"""
import ctypes
import ctypes.util
import mmap
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")
T.require_layers("file")
T.start_watchdog(240)
C = Checker("test_file_cache_none")

SIZE = 16 << 20
WRITE = 256 << 10
WINDOW = 8                      # FILE_EVICT_WINDOW in backends/file/io.h
PAGE = mmap.PAGESIZE

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                      ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                         ctypes.POINTER(ctypes.c_ubyte)]


def resident(path):
    """The fraction of the file's pages in the page cache now."""
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, SIZE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise T.CheckFailed("mmap: %s" % os.strerror(ctypes.get_errno()))
        try:
            n = (SIZE + PAGE - 1) // PAGE
            vec = (ctypes.c_ubyte * n)()
            if libc.mincore(addr, SIZE, vec) != 0:
                raise T.CheckFailed("mincore: %s" % os.strerror(ctypes.get_errno()))
            return sum(b & 1 for b in vec) / n
        finally:
            libc.munmap(addr, SIZE)
    finally:
        os.close(fd)


def drop(path):
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def settles(path, ok, tries=20):
    """resident(path) once ok() says so, or after tries attempts (the
    kernel's writeback runs on its own); the last value either way."""
    for i in range(tries):
        r = resident(path)
        if ok(r):
            return r
        time.sleep(0.1 * (i + 1))
    return r


def image(name):
    path = os.path.join(T.TMPDIR, name)
    with open(path, "wb") as f:
        for off in range(0, SIZE, 1 << 20):
            f.write(bytes([off >> 20 & 0xff]) * (1 << 20))
    drop(path)
    return path


def write_all(srv):
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    for i, off in enumerate(range(0, SIZE, WRITE)):
        h.pwrite(bytes([0x40 + i % 64]) * WRITE, off)
    h.flush()
    return h


def verify(path):
    with open(path, "rb") as f:
        for i, off in enumerate(range(0, SIZE, WRITE)):
            check(f.read(WRITE) == bytes([0x40 + i % 64]) * WRITE,
                  "%s: bytes at %d" % (path, off))


# Can this filesystem show eviction at all?
probe = image("probe.img")
with open(probe, "rb") as f:
    f.read()
if resident(probe) < 0.5:
    T.skip("reading %s left it not resident: no page cache to look at" % probe)
drop(probe)
if settles(probe, lambda r: r < 0.05) >= 0.05:
    T.skip("%s keeps pages resident after fsync + POSIX_FADV_DONTNEED "
           "(tmpfs?): mincore cannot tell cache=none from the default"
           % T.TMPDIR)


def default_cache():
    path = image("default.img")
    srv = Server(["file", "file=" + path], name="default")
    try:
        h = write_all(srv)
        r = resident(path)
        T.log("default cache: %.0f%% resident after the writes" % (r * 100))
        check(r >= 0.75, "default cache: only %.0f%% of the written range "
              "resident" % (r * 100))
        h.shutdown()
    finally:
        srv.stop()
    verify(path)


def cache_none_writes():
    path = image("none.img")
    srv = Server(["file", "file=" + path, "cache=none"], name="none")
    try:
        h = write_all(srv)
        # FLUSH drops the writes still in the backend's eviction window.
        r = settles(path, lambda r: r <= 0.05)
        T.log("cache=none: %.0f%% resident after the writes and FLUSH"
              % (r * 100))
        check(r <= 0.05, "cache=none: %.0f%% of the written range resident "
              "after FLUSH" % (r * 100))
        # Without a FLUSH, at most the last WINDOW writes are held (their
        # writeback started, not yet dropped) until the client leaves.
        for off in range(0, SIZE, WRITE):
            h.pwrite(bytes([0x40 + (off // WRITE) % 64]) * WRITE, off)
        most = (WINDOW * WRITE) / SIZE + 0.05
        r = settles(path, lambda r: r <= most)
        T.log("cache=none: %.0f%% resident after writes, no FLUSH" % (r * 100))
        check(r <= most, "cache=none: %.0f%% resident without FLUSH (at most "
              "%.0f%% expected)" % (r * 100, most * 100))
        h.shutdown()
        r = settles(path, lambda r: r <= 0.05)
        T.log("cache=none: %.0f%% resident after the client left" % (r * 100))
        check(r <= 0.05, "cache=none: %.0f%% resident after close" % (r * 100))
    finally:
        srv.stop()
    verify(path)


def cache_none_reads():
    path = image("reads.img")
    srv = Server(["file", "file=" + path, "cache=none"], name="reads")
    try:
        h = nbd.NBD()
        h.connect_unix(srv.sock)
        for off in range(0, SIZE, WRITE):
            check(h.pread(WRITE, off) == bytes([off >> 20 & 0xff]) * WRITE,
                  "read at %d" % off)
        # Mostly: the kernel's readahead may leave a large folio reaching
        # past the last read (docs/backends/file.md).
        r = settles(path, lambda r: r <= 0.10)
        T.log("cache=none: %.0f%% resident after reading it all" % (r * 100))
        check(r <= 0.10, "cache=none: %.0f%% resident after reads" % (r * 100))
        h.shutdown()
    finally:
        srv.stop()


C.run("default cache: written pages stay resident", default_cache)
C.run("cache=none: written pages evicted (all at close)", cache_none_writes)
C.run("cache=none: read pages evicted", cache_none_reads)
C.finish()
