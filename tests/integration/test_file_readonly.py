#!/usr/bin/python3
"""Files the server may not write: the file and split backends open them
read-only and serve them read-only (as nbdkit's file plugin), with or
without -r, instead of refusing to start; a client's write gets EPERM and
the file is unchanged.  Run as root, the server drops to nobody (setpriv)
so that the permission bits count."""

import os
import shutil
import stat
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.require_layers("file", "split")
T.start_watchdog(60)
C = Checker("test_file_readonly")

# A directory anyone may enter, the socket's too (nobody creates it).
DIR = tempfile.mkdtemp(prefix="nbdstack-ro.")
os.chmod(DIR, 0o777)
PREFIX = []
if os.geteuid() == 0:
    if shutil.which("setpriv") is None:
        T.skip("running as root without setpriv: permissions would not count")
    PREFIX = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
              "--"]
DATA = os.urandom(64 * 1024)
IMG = os.path.join(DIR, "ro.img")
with open(IMG, "wb") as f:
    f.write(DATA)
os.chmod(IMG, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)   # 0444
# Not readable at all: still a clear refusal.
HIDDEN = os.path.join(DIR, "hidden.img")
with open(HIDDEN, "wb") as f:
    f.write(DATA)
os.chmod(HIDDEN, 0)


def serve(args, name):
    return Server(args, sock=os.path.join(DIR, name + ".sock"), name=name,
                  prefix=PREFIX)


def served_read_only(uri, what):
    h = nbd.NBD()
    h.connect_uri(uri)
    check(h.is_read_only(), "%s: not read-only" % what)
    check_eq(h.get_size(), len(DATA), "%s: size" % what)
    check(h.pread(len(DATA), 0) == DATA, "%s: data" % what)
    try:
        h.pwrite(b"x" * 512, 0)
        check(False, "%s: a write succeeded" % what)
    except nbd.Error as e:
        check_eq(e.errno, "EPERM", "%s: write error (%s)" % (what, e))
    h.shutdown()
    with open(IMG, "rb") as f:
        check(f.read() == DATA, "%s: the file changed" % what)


def read_only_files():
    for args, what in ((["file", IMG], "file"),
                       (["-r", "file", IMG], "file with -r"),
                       (["split", IMG], "split"),
                       (["-r", "split", IMG], "split with -r"),
                       (["file", "dir=" + DIR], "file dir=")):
        srv = serve(args, what.replace(" ", "_").replace("=", ""))
        served_read_only(srv.uri_for("ro.img") if "dir=" in what else srv.uri,
                         what)
        srv.stop()


def unreadable_refused():
    if os.geteuid() != 0 and os.access(HIDDEN, os.R_OK):
        return                  # a user that can read mode 0: nothing to see
    for backend in ("file", "split"):
        p = subprocess.run(PREFIX + [T.NBDSTACK, "-U",
                                     os.path.join(DIR, "x.sock"), backend,
                                     HIDDEN],
                           capture_output=True, text=True, timeout=20)
        check(p.returncode != 0, "%s: an unreadable file was served" % backend)
        check("Permission denied" in p.stderr,
              "%s: message %r" % (backend, p.stderr))


C.run("read-only files served read-only (file, split, -r, dir=)",
      read_only_files)
C.run("an unreadable file is still refused at startup", unreadable_refused)
C.finish()
shutil.rmtree(DIR, ignore_errors=True)
