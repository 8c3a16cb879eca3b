#!/usr/bin/python3
"""Read-only exports refuse every modifying command with EPERM, whatever
filters sit on top: -r, a config export with readonly = yes, and the file
backend opened with readonly=yes, each under an offset filter; and -r or
readonly = yes over cow and cache, which would otherwise make or keep the
export writable.  Reads still work and the data below is unchanged."""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("offset", "file", "memory", "cow", "cache")
T.start_watchdog()
C = Checker("test_readonly")

img = os.path.join(T.TMPDIR, "disk.img")
with open(img, "wb") as f:
    f.write(b"\x5a" * (4 * MiB))

cfg = os.path.join(T.TMPDIR, "ro.conf")
csock = os.path.join(T.TMPDIR, "ro-conf.sock")
with open(cfg, "w") as f:
    f.write("[server]\nlisten = unix:%s\n"
            "[export ro]\nreadonly = yes\nfilter = offset offset=1M\n"
            "backend = file file=%s\n"
            "[export rw]\nbackend = memory size=1M\n"
            "[export ro-cow-cache]\nreadonly = yes\nfilter = cow\n"
            "filter = cache cache=writeback\nbackend = file file=%s\n"
            % (csock, img, img))

servers = [
    ("-r with offset over memory",
     Server(["-r", "--filter", "offset", "memory", "size=8M", "offset=1M"],
            name="r-offset"), b""),
    ("file readonly=yes under two offsets",
     Server(["--filter", "offset", "--filter", "offset", "file",
             "file=" + img, "readonly=yes", "offset=4096"], name="file-ro"),
     b""),
    ("config export readonly = yes",
     Server(config=cfg, sock=csock, name="conf"), b"ro"),
    ("-r with cow over cache over file",
     Server(["-r", "--filter", "cow", "--filter", "cache", "file",
             "file=" + img], name="r-cow-cache"), b""),
    ("-r with cache over a writable file",
     Server(["-r", "--filter", "cache", "file", "file=" + img,
             "cache=unsafe"], name="r-cache"), b""),
]


def refuses(srv, name):
    c = connect_go(srv.sock, name)
    check(c.tflags & TF_READ_ONLY, "READ_ONLY transmission flag not set")
    check(not c.tflags & TF_SEND_TRIM, "SEND_TRIM advertised read-only")
    check(not c.tflags & TF_SEND_WRITE_ZEROES,
          "SEND_WRITE_ZEROES advertised read-only")
    check_eq(c.write(0, b"x" * 4096), EPERM, "WRITE")
    check_eq(c.write(0, b"x" * 4096, CMD_FLAG_FUA if c.tflags & TF_SEND_FUA
                     else 0), EPERM, "WRITE (FUA if offered)")
    check_eq(c.cmd(CMD_TRIM, 0, 4096), EPERM, "TRIM")
    check_eq(c.cmd(CMD_WRITE_ZEROES, 0, 4096), EPERM, "WRITE_ZEROES")
    check_eq(c.cmd(CMD_WRITE_ZEROES, 0, 4096, CMD_FLAG_NO_HOLE), EPERM,
             "WRITE_ZEROES NO_HOLE")
    err, data = c.read(0, 4096)
    check_eq(err, 0, "READ still works")
    c.close()


for title, srv, name in servers:
    C.run("%s: every write refused with EPERM" % title, refuses, srv, name)
C.run("config export readonly = yes over cow and cache: every write "
      "refused with EPERM", refuses, servers[2][1], b"ro-cow-cache")


def file_unchanged():
    with open(img, "rb") as f:
        check(f.read() == b"\x5a" * (4 * MiB), "file changed under read-only")


C.run("the file below is unchanged", file_unchanged)
C.finish([s for _, s, _ in servers])
