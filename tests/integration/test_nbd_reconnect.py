#!/usr/bin/python3
"""nbd backend, shared=true: when the shared upstream connection dies
while clients remain, the requests in flight fail with EIO and the next
request reconnects (retrying for retry= seconds), for every client still
connected; an upstream that comes back different (another size) is not
used.  The upstream is an nbdstack `file` export, killed with SIGKILL and
started again on the same socket, so the data survives it."""

import os
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import MiB, Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (module nbd) not available to %s" % sys.executable)
T.require_layers("file", "nbd")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "120")))

C = Checker("test_nbd_reconnect")
IMG = os.path.join(T.TMPDIR, "disk.img")
with open(IMG, "wb") as f:
    f.truncate(8 * MiB)
up = Server(["file", "file=" + IMG], name="up")
proxy = Server(["nbd", "socket=" + up.sock, "shared=true", "retry=10"],
               name="proxy")


def client():
    h = nbd.NBD()
    h.connect_uri(proxy.uri)
    return h


def read_until_ok(h, off, n, tries=3):
    """The first request after the upstream died may fail (EIO); a later
    one must succeed.  Returns the data and the number of failures."""
    fails = 0
    for _ in range(tries):
        try:
            return h.pread(n, off), fails
        except nbd.Error as e:
            check_eq(e.errnum, 5, "errno of a request on the dead upstream")
            fails += 1
    raise T.CheckFailed("no request succeeded after %d tries" % tries)


def t_reconnect():
    h1, h2 = client(), client()
    data = os.urandom(MiB)
    h1.pwrite(data, MiB)
    h1.flush()
    up.kill()
    up.start()                       # same socket, same file
    got, fails = read_until_ok(h1, MiB, len(data))
    check(got == data, "data after reconnecting differs")
    check(fails <= 1, "%d requests failed after the reconnect" % fails)
    got, _ = read_until_ok(h2, MiB, len(data))
    check(got == data, "the second client after the reconnect")
    h2.pwrite(b"x" * 4096, 0)
    check(h1.pread(4096, 0) == b"x" * 4096, "one shared connection: h1 sees h2's write")
    check("reconnected to the shared upstream" in proxy.log_text(),
          "no reconnect line in the log")
    h1.shutdown()
    h2.shutdown()


def t_reconnect_waits_with_retry():
    """The upstream is down when the request comes: retry= waits for it."""
    h = client()
    h.pread(512, 0)
    up.kill()
    try:
        h.pread(512, 0)              # the connection is found dead: EIO
    except nbd.Error:
        pass
    # The request waits in a thread; the upstream is started from this
    # one (setpriv's parent-death signal follows the thread that forks).
    out = {}
    t = threading.Thread(target=lambda: out.update(r=read_until_ok(h, 0, 4096)))
    t.start()
    time.sleep(1.5)
    up.start()
    t.join(30)
    check("r" in out, "the request did not come back after the upstream did")
    check(out["r"][0] == b"x" * 4096, "data after a reconnect that waited")
    h.shutdown()


def t_different_upstream_not_used():
    h = client()
    h.pread(512, 0)
    up.kill()
    with open(IMG, "ab") as f:       # the disk grows: another upstream
        f.truncate(16 * MiB)
    up.start()
    for _ in range(3):
        try:
            h.pread(512, 0)
            raise T.CheckFailed("a reconnected upstream of another size was used")
        except nbd.Error:
            pass
    check("reconnected upstream differs" in proxy.log_text(), "no reason logged")
    h.shutdown()
    check(proxy.alive(), "the proxy died")


C.run("shared upstream killed and back: clients go on", t_reconnect)
C.run("retry= waits for the upstream to come back", t_reconnect_waits_with_retry)
C.run("an upstream that came back different is refused", t_different_upstream_not_used)
C.finish([proxy, up])
