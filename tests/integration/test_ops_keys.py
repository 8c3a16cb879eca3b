#!/usr/bin/python3
"""Config errors of the operations filters (log, stats, rate, limit, ip,
exitlast, exitwhen): a misspelt key and a bad value are each refused by
--check-config with FILE:LINE of the filter line and the reason, and a
correct line of each passes."""

import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, check  # noqa: E402

T.require_layers("log", "stats", "rate", "limit", "ip", "exitlast",
                 "exitwhen", "memory")
T.start_watchdog()
C = Checker("test_ops_keys")
D = T.TMPDIR

CASES = [
    # filter line that works, a misspelt key, a bad value and its reason
    ("log logfile=%s/l" % D, "log logfle=%s/l" % D,
     "log logfile=%s/l logappend=maybe" % D, "logappend"),
    ("stats statsfile=%s/s" % D, "stats statsfil=%s/s" % D,
     "stats statsfile=%s/s statsappend=2" % D, "statsappend"),
    ("rate rate=1M connection-rate=64k", "rate rat=1M", "rate rate=1Q",
     "rate"),
    ("limit limit=3", "limit limt=3", "limit limit=many", "limit"),
    ("ip allow=127.0.0.1 deny=all", "ip alow=127.0.0.1",
     "ip deny=127.0.0.1/40", "prefix length"),
    ("exitlast", "exitlast last=yes", None, None),
    ("exitwhen exit-when-poll=2", "exitwhen exit-when-pol=2",
     "exitwhen exit-when-process-exits=me", "not a number"),
]


def check_config(line):
    conf = os.path.join(D, "k.conf")
    with open(conf, "w") as f:
        f.write("[server]\nlisten = unix:%s/k.sock\n[export \"\"]\n"
                "filter = %s\nbackend = memory size=1M\n" % (D, line))
    r = subprocess.run([T.NBDSTACK, "--check-config", conf],
                       capture_output=True, text=True, timeout=20)
    return r.returncode, r.stderr, conf


def all_cases():
    for good, typo, bad, why in CASES:
        rc, err, _ = check_config(good)
        check(rc == 0, "%r refused: %s" % (good, err))
        rc, err, conf = check_config(typo)
        check(rc != 0 and (conf + ":4:") in err and "unknown key" in err,
              "%r: rc %d, %r" % (typo, rc, err))
        if bad:
            rc, err, conf = check_config(bad)
            check(rc != 0 and (conf + ":4:") in err and why in err,
                  "%r: rc %d, %r" % (bad, rc, err))


C.run("bad keys and values refused with FILE:LINE", all_cases)
C.finish()
