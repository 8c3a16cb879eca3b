"""Helpers shared by the integration tests of the operations filters
(protect, checkwrite, swab, cacheextents, exportname, retry,
retry-request, readahead, scan): nbdkit beside nbdstack, libnbd errnos,
and the config-file check that a bad key is refused with FILE:LINE."""

import contextlib
import os
import subprocess

import nbdtest as T
from nbdtest import check


def connect(uri, meta=False):
    import nbd
    h = nbd.NBD()
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h


def errno_of(fn):
    """The errno name fn() fails with, or "ok"."""
    import nbd
    try:
        fn()
        return "ok"
    except nbd.Error as e:
        return e.errno


@contextlib.contextmanager
def nbdkit(args, name):
    """nbdkit ARGS on a socket of its own; yields its URI."""
    sock = os.path.join(T.TMPDIR, name + ".nbdkit.sock")
    p = T.start_nbdkit(args[0], args[1:], sock)
    try:
        yield T.unix_uri(sock)
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def have_nbdkit_filter(name):
    """True when nbdkit and its NAME filter are installed."""
    try:
        r = subprocess.run(["nbdkit", "--filter=" + name, "null",
                            "--dump-plugin"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def config_refused(filter_line, want):
    """A config whose export has `filter = FILTER_LINE` is refused by
    --check-config with FILE:LINE: and want in the message."""
    cfg = os.path.join(T.TMPDIR, "refused.conf")
    with open(cfg, "w") as f:
        f.write("[server]\nlisten = unix:%s\n\n[export \"\"]\n"
                "filter = %s\nbackend = memory size=1M\n"
                % (os.path.join(T.TMPDIR, "refused.sock"), filter_line))
    r = subprocess.run([T.NBDSTACK, "--check-config", cfg],
                       capture_output=True, text=True, timeout=20)
    check(r.returncode != 0, "%r accepted" % filter_line)
    check("%s:5:" % cfg in r.stderr and want in r.stderr,
          "%r: message %r (want %s:5: and %r)" % (filter_line, r.stderr, cfg,
                                                  want))


def config_accepted(filter_line, backend="memory size=1M"):
    """The same config with a good filter line passes --check-config."""
    cfg = os.path.join(T.TMPDIR, "accepted.conf")
    with open(cfg, "w") as f:
        f.write("[server]\nlisten = unix:%s\n\n[export \"\"]\n"
                "filter = %s\nbackend = %s\n"
                % (os.path.join(T.TMPDIR, "accepted.sock"), filter_line,
                   backend))
    r = subprocess.run([T.NBDSTACK, "--check-config", cfg],
                       capture_output=True, text=True, timeout=20)
    check(r.returncode == 0, "%r refused: %s" % (filter_line, r.stderr))
