#!/usr/bin/python3
"""nbdkit's command line, spoken to nbdstack: what nbdstack claims to
support behaves as in nbdkit (the magic key of each backend, size
suffixes, --filter=NAME and --filter NAME, -r, -e, --run with $uri,
$nbd, $exportname, -f, -n, -D), and nbdkit options it does not have are
refused by name, with exit status 1.  With nbdkit installed, each command
line is also run by nbdkit, and both must agree on success or failure
and on the size served.
"""

import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                              # noqa: E402
from nbdtest import Checker, check, check_eq     # noqa: E402

if not shutil.which("nbdinfo"):
    T.skip("nbdinfo is not installed")
T.require_layers("memory", "null", "pattern", "offset", "truncate")
T.start_watchdog(200)
C = Checker("test_compat_cmdline")
NBDKIT = shutil.which("nbdkit")

RUN = 'echo "size=$(nbdinfo --size "$uri") nbd=$(nbdinfo --size "$nbd") name=$exportname"'


def run(server, args):
    r = subprocess.run([server, "-U", "-"] + args + ["--run", RUN],
                       capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout.strip(), r.stderr


# (arguments, expected "size=... nbd=... name=..." or None if refused)
SAME = [
    (["memory", "1M"], "size=1048576 nbd=1048576 name="),
    (["memory", "size=1M"], "size=1048576 nbd=1048576 name="),
    (["null", "2048s"], "size=1048576 nbd=1048576 name="),
    (["null", "size=3S"], "size=1536 nbd=1536 name="),
    (["null", "size=1k"], "size=1024 nbd=1024 name="),
    (["null", "size=1b"], "size=1 nbd=1 name="),
    (["pattern", "size=1T"], "size=1099511627776 nbd=1099511627776 name="),
    (["-r", "memory", "1M"], "size=1048576 nbd=1048576 name="),
    (["--filter=offset", "null", "1M", "offset=1k"], "size=1047552 nbd=1047552 name="),
    (["--filter", "offset", "null", "1M", "range=4k"], "size=4096 nbd=4096 name="),
    (["--filter=truncate", "--filter=offset", "null", "1M", "offset=1k",
      "round-down=4k"], "size=1044480 nbd=1044480 name="),
    (["-e", "foo", "null", "1M"], "size=1048576 nbd=1048576 name=foo"),
    (["--export-name=bar", "null", "1M"], "size=1048576 nbd=1048576 name=bar"),
    (["-f", "null", "1M"], "size=1048576 nbd=1048576 name="),
    (["-n", "null", "1M"], "size=1048576 nbd=1048576 name="),
    (["--newstyle", "null", "1M"], "size=1048576 nbd=1048576 name="),
    (["-D", "foo.bar=1", "null", "1M"], "size=1048576 nbd=1048576 name="),
    (["--log=null", "null", "1M"], "size=1048576 nbd=1048576 name="),
    (["--log=stderr", "null", "1M"], "size=1048576 nbd=1048576 name="),
    (["memory", "size=8E"], None),
    (["memory", "size=1x"], None),
    (["memory", "size=-1"], None),
    (["nosuchbackend"], None),
    (["--filter=nosuch", "null", "1M"], None),
    (["null", "1M", "nosuchkey=1"], None),
    # past the end: refused when a client connects, in both
    (["--filter=offset", "null", "1M", "offset=2M"], "size= nbd= name="),
]

NBDKIT_ONLY = [["-o"], ["--oldstyle"], ["--no-sr"], ["--no-mc"],
               ["--no-meta-contexts"], ["--mask-handshake=0"], ["--vsock"],
               ["--swap"], ["--selinux-label=x"], ["--dump-plugin"],
               ["--dump-config"]]


def same(args, want):
    rc, out, err = run(T.NBDSTACK, args)
    if want is None:
        check(rc != 0 and "nbdstack:" in err, "%s: rc %d, stderr %r" % (args, rc, err))
    else:
        check_eq((rc, out), (0, want), "%s" % args)
    if args[:1] == ["--log=null"]:
        check_eq(err, "", "stderr with --log=null")
    if args[:1] == ["-D"]:
        check("debug flag -D foo.bar=1 was not used" in err, "-D warning: %r" % err)
    if NBDKIT:
        krc, kout, _ = run(NBDKIT, args)
        check_eq((krc == 0, kout), (rc == 0, out), "%s: nbdkit's rc and output" % args)


def refused_by_name(args):
    rc, out, err = run(T.NBDSTACK, args + ["null", "1M"])
    name = args[0].split("=")[0]
    if name == "-o":
        name = "-o (--oldstyle)"
    check_eq(rc, 1, "%s: exit status" % args)
    check("nbdkit's option %s is not supported" % name in err,
          "%s: stderr %r" % (args, err))


def family_only():
    """-4 / -6 (nbdkit's --ipv4-only, --ipv6-only): the TCP listeners of
    one family; without them both."""
    import socket as S
    import re
    for opt, want in (("-4", {"0.0.0.0"}), ("-6", {"::"}), (None, {"0.0.0.0", "::"})):
        port = str(20000 + os.getpid() % 20000 + len(want) * 7 + (opt == "-6"))
        args = ([opt] if opt else []) + ["-p", port, "null", "1M"]
        r = subprocess.run([T.NBDSTACK] + args + ["--run", "true"],
                           capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        if "Address already in use" in r.stderr:
            continue                      # a busy port proves nothing
        got = set(re.findall(r"listening on \[?([0-9a-f.:]+?)\]?:%s" % port, r.stderr))
        check_eq((r.returncode, got), (0, want), "%s listeners" % (opt or "default"))


for args, want in SAME:
    C.run("as nbdkit: %s" % " ".join(args), same, args, want)
C.run("-4 and -6 bind one family", family_only)
for args in NBDKIT_ONLY:
    C.run("refused by name: %s" % args[0], refused_by_name, args)
C.finish()
