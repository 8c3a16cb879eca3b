#!/usr/bin/python3
"""The file backend's dir=, cache=, direct= and fadvise= through real clients.

A directory of three files, a symlink to one, a dotfile, a subdirectory
and a FIFO: nbdinfo --list shows the files and the symlink, nothing else,
the same names as `nbdkit file dir=` (which also lists dotfiles: ours are
private); each export reads its own file (libnbd); names with '/', a
leading '.' or a subdirectory's are refused; a config file with a dir=
export next to a plain one lists and serves both.  cache=none,
direct=true (minimum block size 4096) and each fadvise= value carry data
both ways through nbdcopy.
"""

import json
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")
for tool in ("nbdinfo", "nbdcopy"):
    if not shutil.which(tool):
        T.skip(tool + " is not installed")

T.require_layers("file")
T.start_watchdog(120)
C = Checker("test_file_dir")
NBDKIT = shutil.which("nbdkit")
D = os.path.join(T.TMPDIR, "images")
FILES = {"a.img": 1 << 20, "b.img": 64 * 1024, "c disk.raw": 5000}


def make_dir():
    os.mkdir(D)
    for name, size in FILES.items():
        with open(os.path.join(D, name), "wb") as f:
            f.write(os.urandom(size))
    os.symlink("a.img", os.path.join(D, "link.img"))
    with open(os.path.join(D, ".hidden"), "wb") as f:
        f.write(b"secret")
    os.mkdir(os.path.join(D, "sub"))
    with open(os.path.join(D, "sub", "x.img"), "wb") as f:
        f.write(b"x" * 512)
    os.mkfifo(os.path.join(D, "fifo"))


def content(name):
    with open(os.path.join(D, name), "rb") as f:
        return f.read()


def listing(sock):
    out = subprocess.run(["nbdinfo", "--list", "--json",
                          "nbd+unix:///?socket=" + sock], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    return [e["export-name"] for e in json.loads(out)["exports"]]


def connect(sock, name):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix(sock)
    return h


def refused(sock, name):
    try:
        h = connect(sock, name)
    except nbd.Error:
        return True
    h.shutdown()
    return False


WANT = sorted(list(FILES) + ["link.img"])


def lists_files_only(srv):
    check_eq(listing(srv.sock), WANT, "listed exports")


def each_export_reads_its_file(srv):
    for name in WANT:
        h = connect(srv.sock, name)
        want = content(name)
        check_eq(h.get_size(), len(want), name + ": size")
        check(h.pread(len(want), 0) == want, name + ": bytes differ")
        h.shutdown()
    # A write through one export lands in its file.
    h = connect(srv.sock, "b.img")
    h.pwrite(b"written", 100)
    h.flush()
    h.shutdown()
    check(content("b.img")[100:107] == b"written", "write reached b.img")


def bad_names_refused(srv):
    for name in ("sub/x.img", "../images/a.img", "/a.img", ".hidden", "sub",
                 "fifo", "", "missing.img"):
        check(refused(srv.sock, name), "export %r was served" % name)
    check("refused" in srv.log_text(), "the log says why")


def same_list_as_nbdkit(srv):
    if not NBDKIT:
        T.log("nbdkit not installed: comparison skipped")
        return
    theirs = Server(["-f", "file", "dir=" + D], name="nbdkit",
                    binary=NBDKIT)
    try:
        names = listing(theirs.sock)
    finally:
        theirs.stop()
    # nbdkit also lists dotfiles, which this backend keeps private.
    check_eq(sorted(n for n in names if not n.startswith(".")),
             listing(srv.sock), "nbdkit's listing (without dotfiles)")


def config_dynamic_and_plain():
    sock = os.path.join(T.TMPDIR, "cfg.sock")
    cfg = os.path.join(T.TMPDIR, "dir.conf")
    with open(cfg, "w") as f:
        f.write("[server]\nlisten = unix:%s\n"
                "[export plain]\nbackend = memory size=1M\n"
                "[export \"\"]\ndescription = images\n"
                "backend = file dir=%s readonly=yes\n" % (sock, D))
    srv = Server(config=cfg, sock=sock, name="cfg")
    try:
        check_eq(listing(sock), ["plain"] + WANT, "plain, then the files")
        h = connect(sock, "plain")
        check_eq(h.get_size(), 1 << 20, "plain export size")
        h.shutdown()
        h = connect(sock, "c disk.raw")
        check(h.pread(5000, 0) == content("c disk.raw"), "file via config")
        check(h.is_read_only(), "readonly=yes")
        h.shutdown()
        check(refused(sock, ""), "the dir= export's own name opens no file")
    finally:
        srv.stop()


def round_trip(args, name):
    """nbdcopy a random file into a.img through the export and back."""
    src = os.path.join(T.TMPDIR, name + ".src")
    back = os.path.join(T.TMPDIR, name + ".back")
    with open(src, "wb") as f:
        f.write(os.urandom(1 << 20))
    path = os.path.join(T.TMPDIR, name + ".img")
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    srv = Server(["file", "file=" + path] + args, name=name)
    try:
        subprocess.run(["nbdcopy", src, srv.uri], check=True, timeout=60)
        subprocess.run(["nbdcopy", srv.uri, back], check=True, timeout=60)
        h = nbd.NBD()
        h.connect_unix(srv.sock)
        minimum = h.get_block_size(nbd.SIZE_MINIMUM)
        h.shutdown()
    finally:
        srv.stop()
    with open(src, "rb") as a, open(back, "rb") as b, open(path, "rb") as c:
        want = a.read()
        check(b.read() == want, name + ": read back differs")
        check(c.read() == want, name + ": file differs")
    return minimum


def cache_none():
    round_trip(["cache=none"], "cachenone")


def direct():
    check_eq(round_trip(["direct=true"], "direct"), 4096, "minimum block")
    check_eq(round_trip(["direct=true", "cache=none"], "direct2"), 4096,
             "minimum block")


def fadvise():
    for mode in ("normal", "random", "sequential"):
        round_trip(["fadvise=" + mode], "fadv-" + mode)


def bad_keys_refused():
    for args, want in [(["dir=" + D, "file=" + os.path.join(D, "a.img")],
                        "not both"),
                       (["fadvise=fast", "dir=" + D], "fadvise"),
                       (["cache=some", "dir=" + D], "cache"),
                       (["dir=" + os.path.join(D, "a.img")], "directory")]:
        r = subprocess.run([T.NBDSTACK, "-U",
                            os.path.join(T.TMPDIR, "bad.sock"), "file"] + args,
                           capture_output=True, text=True, timeout=10)
        check(r.returncode != 0, "%r was accepted" % args)
        check(want in r.stderr, "%r: %r lacks %r" % (args, r.stderr, want))


make_dir()
SRV = Server(["file", "dir=" + D], name="dir")
C.run("nbdinfo --list shows the files and the symlink only",
      lists_files_only, SRV)
C.run("each export reads (and writes) its own file",
      each_export_reads_its_file, SRV)
C.run("names with '/', dotfiles, subdirectories refused", bad_names_refused,
      SRV)
C.run("the same listing as nbdkit file dir=", same_list_as_nbdkit, SRV)
C.run("config: a dir= export next to a plain one", config_dynamic_and_plain)
C.run("cache=none round trip", cache_none)
C.run("direct=true round trip, minimum block 4096", direct)
C.run("fadvise= round trips", fadvise)
C.run("bad keys refused at startup", bad_keys_refused)
C.finish([SRV])
