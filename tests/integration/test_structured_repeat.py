#!/usr/bin/python3
"""A repeated NBD_OPT_STRUCTURED_REPLY, by raw socket.

The NBD spec (doc/proto.md with the extended-headers changes) lists
NBD_REP_ACK, NBD_REP_ERR_EXT_HEADER_REQD (after extended headers) and
NBD_REP_ERR_UNSUP as the replies to NBD_OPT_STRUCTURED_REPLY, and says
nothing of a second request for it without extended headers.  So
nbdstack ACKs it again, as nbdkit 1.32 does (qemu-nbd 7.2 answers
NBD_REP_ERR_INVALID; libnbd reads either as "already negotiated").  The
session stays structured and in sync: GO, then a read answered with
structured chunks.  After extended headers it stays EXT_HEADER_REQD.
"""

import os
import shutil
import sys

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

T.require_layers("memory")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "60")))

OPT_EXTENDED_HEADERS = 11
REP_ERR_EXT_HEADER_REQD = REP_ERR_BIT + 10

srv = Server(["memory", "size=1M"], name="sr")
C = Checker("test_structured_repeat")


def replies(sock, opts):
    c = Raw(sock)
    c.handshake()
    out = [c.option(o)[-1][0] for o in opts]
    return c, out


def t_repeat_acked():
    c, got = replies(srv.sock, [OPT_STRUCTURED_REPLY, OPT_STRUCTURED_REPLY])
    check_eq([rep_name(r) for r in got], ["ACK", "ACK"],
             "replies to STRUCTURED_REPLY twice")
    c.structured = True
    c.go()
    c.write(4096, b"\x5a" * 4096)
    err, data = c.read(4096, 4096)
    check_eq((err, data), (0, b"\x5a" * 4096), "structured read after")
    c.disc()
    c.close()


def t_same_as_nbdkit():
    if not shutil.which("nbdkit"):
        T.log("nbdkit not installed: comparison skipped")
        return
    sock = os.path.join(T.TMPDIR, "nbdkit.sock")
    p = T.start_nbdkit("memory", ["1M"], sock)
    try:
        c, got = replies(sock, [OPT_STRUCTURED_REPLY, OPT_STRUCTURED_REPLY])
        c.close()
        check_eq([rep_name(r) for r in got], ["ACK", "ACK"],
                 "nbdkit's replies to STRUCTURED_REPLY twice")
    finally:
        p.terminate()
        p.wait(10)


def t_after_extended():
    c, got = replies(srv.sock, [OPT_STRUCTURED_REPLY, OPT_EXTENDED_HEADERS,
                                OPT_STRUCTURED_REPLY])
    check_eq(got[:2], [REP_ACK, REP_ACK], "STRUCTURED then EXTENDED")
    check_eq(got[2], REP_ERR_EXT_HEADER_REQD,
             "STRUCTURED_REPLY after extended headers")
    c.close()


C.run("STRUCTURED_REPLY twice: ACK twice, session in sync", t_repeat_acked)
C.run("nbdkit 1.32 ACKs it twice too", t_same_as_nbdkit)
C.run("after extended headers: EXT_HEADER_REQD", t_after_extended)
C.finish([srv])
