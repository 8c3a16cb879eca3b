#!/usr/bin/python3
"""The filter template of README.md ("Writing a filter") is
filters/nofilter.c (nbdkit's nofilter), byte for byte, and it works:
stacked over memory it offers what memory offers, and data written
through it reads back, also at unaligned offsets and after zero and trim.

The README check runs first, in any build; the served part skips when the
build left nofilter out."""

import os
import re
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

SRCDIR = os.environ.get("SRCDIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..")
C = Checker("test_nofilter")


def readme_template():
    """The first ```c block after the "## Writing a filter" heading."""
    with open(os.path.join(SRCDIR, "README.md")) as f:
        text = f.read()
    m = re.search(r"^## Writing a filter\n.*?^```c\n(.*?)^```$", text,
                  re.M | re.S)
    check(m, "README.md has no ```c block under \"## Writing a filter\"")
    return m.group(1)


def readme_is_nofilter():
    with open(os.path.join(SRCDIR, "filters", "nofilter.c")) as f:
        want = f.read()
    got = readme_template()
    if got != want:
        for i, (a, b) in enumerate(zip(got.splitlines(), want.splitlines())):
            if a != b:
                log("first difference, line %d:\n  README:    %s\n"
                    "  nofilter.c: %s" % (i + 1, a, b))
                break
    check(got == want, "the README template differs from "
          "filters/nofilter.c (copy the file into the README)")


if not C.run("README's filter template is filters/nofilter.c",
             readme_is_nofilter):
    C.finish()

T.require_layers("memory", "nofilter")
T.start_watchdog()

plain = Server(["memory", "size=1M"], name="plain")
srv = Server(["--filter", "nofilter", "memory", "size=1M"], name="nofilter")


def same_flags():
    for structured in (False, True):
        a = connect_go(plain.sock, structured=structured)
        b = connect_go(srv.sock, structured=structured)
        check_eq(tf_str(b.tflags), tf_str(a.tflags),
                 "transmission flags through nofilter (structured=%s)"
                 % structured)
        check_eq(b.size, a.size, "size through nofilter")
        a.close()
        b.close()


def round_trip():
    c = connect_go(srv.sock)
    data = bytes((i * 7 + 3) % 251 + 1 for i in range(10000))
    check_eq(c.write(4097, data), 0, "WRITE at 4097")
    check_eq(c.write(65536, data, CMD_FLAG_FUA), 0, "WRITE FUA at 64K")
    check_eq(c.read(4097, len(data)), (0, data), "READ back at 4097")
    check_eq(c.read(65536, len(data)), (0, data), "READ back at 64K")
    check_eq(c.cmd(CMD_WRITE_ZEROES, 4096, 8192), 0, "WRITE_ZEROES")
    check_eq(c.read(4096, 8192), (0, bytes(8192)), "READ after WRITE_ZEROES")
    check_eq(c.cmd(CMD_TRIM, 65536, 16384), 0, "TRIM")
    check_eq(c.cmd(CMD_FLUSH), 0, "FLUSH")
    check_eq(c.read(1 << 20, 1), (EINVAL, b""), "READ past the end")
    c.close()


C.run("nofilter over memory offers what memory offers", same_flags)
C.run("data written through nofilter reads back", round_trip)
C.finish([plain, srv])
