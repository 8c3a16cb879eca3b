#!/usr/bin/python3
"""SIGTERM keeps every acknowledged write, however long the final flush.

The cache filter (writeback) sits over a slow disk (the test-only layer
testslow, 1.2 s per 4 MiB written below) over a file.  A libnbd client writes
32 MiB in acknowledged 4 MiB writes without FLUSH and keeps its
connection open; the server gets SIGTERM.  Writing them back (about 10 s) takes
longer than the 5 s drain grace period, and still:

- the server waits for it: it exits 0, and every acknowledged byte is in
  the file (before the fix it tore the cache down under the write-back:
  "Bad file descriptor", data lost, exit 0);
- a second SIGTERM during the write-back cuts it short: the server exits
  promptly with a non-zero status and says what it did not write.

Runs this build's own binary ($NBDSTACK_TESTBIN), which has testslow; the
ASan and TSan suites run it too.
"""

import os
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import MiB, Checker, Server, check, check_eq, log  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

BIN = T.require_test_layer("testslow")
T.require_layers("cache", "file", binary=BIN)
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "55")) + 60)
C = Checker("test_shutdown_flush")
SIZE = 32 * MiB
CHUNK = 4 * MiB


def setup(name, wdelay):
    img = os.path.join(T.TMPDIR, name + ".img")
    with open(img, "wb") as f:
        f.truncate(SIZE)
    cachedir = os.path.join(T.TMPDIR, name + "-cache")
    os.mkdir(cachedir)
    sock = os.path.join(T.TMPDIR, name + ".sock")
    cfg = os.path.join(T.TMPDIR, name + ".ini")
    with open(cfg, "w") as f:
        f.write("[server]\nlisten = unix:%s\n[export \"\"]\n"
                "filter = cache cache=writeback\n"
                "filter = testslow wdelay=%s\n"
                "backend = file file=%s\n" % (sock, wdelay, img))
    env = dict(os.environ, TMPDIR=cachedir)
    srv = Server(config=cfg, sock=sock, name=name, binary=BIN, env=env)
    h = nbd.NBD()
    h.connect_unix(sock)
    data = os.urandom(SIZE)
    for off in range(0, SIZE, CHUNK):
        h.pwrite(data[off:off + CHUNK], off)     # acknowledged, no FLUSH
    return srv, h, img, data


def wait_exit(srv, timeout):
    try:
        return srv.proc.wait(timeout)
    except Exception:
        return None


def test_waits_for_writeback():
    srv, h, img, data = setup("slow", "1200ms")
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    rc = wait_exit(srv, 60)
    took = time.monotonic() - t0
    log("exited with %s after %.1f s" % (rc, took))
    if rc is None:
        srv.kill()
    check_eq(rc, 0, "exit status after a long final flush")
    check(took > 5, "the write-back outlasted the 5 s grace period "
          "(%.1f s): the test is meaningful" % took)
    with open(img, "rb") as f:
        got = f.read()
    bad = [off for off in range(0, SIZE, CHUNK)
           if got[off:off + CHUNK] != data[off:off + CHUNK]]
    check(not bad, "every acknowledged write is in the file (missing: %s)"
          % [o // MiB for o in bad])
    text = srv.log_text()
    check("failed" not in text and "Bad file" not in text,
          "no failed write-back in the log")
    try:
        h.close()
    except Exception:
        pass


def test_second_signal_cuts_short():
    srv, h, img, data = setup("abort", "1s")
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(1.5)
    check(srv.alive(), "still writing back 1.5 s after SIGTERM")
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    rc = wait_exit(srv, 20)
    took = time.monotonic() - t0
    log("exited with %s %.1f s after the second SIGTERM" % (rc, took))
    if rc is None:
        srv.kill()
    check(rc is not None and rc != 0,
          "non-zero exit status when the flush was cut short (got %s)" % rc)
    check(took < 10, "exits promptly after the second signal (%.1f s)" % took)
    text = srv.log_text()
    check("not written" in text, "the log says what was not written")
    check("may not be durable" in text, "the log says writes may be lost")
    try:
        h.close()
    except Exception:
        pass


C.run("SIGTERM waits for a write-back longer than the grace period",
      test_waits_for_writeback)
C.run("a second SIGTERM cuts the write-back short, exit status non-zero",
      test_second_signal_cuts_short)
C.finish()
