#!/usr/bin/python3
"""The tls-fallback filter (docs/filters/tls-fallback.md): with tls = on,
a plaintext client reads a 512-byte read-only disk holding the message
(nbdkit's default, or tlsreadme=) and never reaches the layers below; a
client that started TLS gets the real export.  Compared with nbdkit
--filter=tls-fallback: the same bytes and the same flags.  A stack below
that serializes connections is refused at setup, as nbdkit does."""

import json
import os
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
import tlslib as L                        # noqa: E402
from nbdtest import MiB, Checker, Server, check, check_eq  # noqa: E402

L.skip_unless_tls()
try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (module nbd) not available to %s" % sys.executable)
T.require_layers("memory", "tls-fallback", "noparallel")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "120")))

pki = L.Pki()
C = Checker("test_tls_fallback")
CAPS = ("is_read_only", "can_flush", "can_trim", "can_zero", "can_fua",
        "can_cache", "can_multi_conn", "can_fast_zero", "is_rotational",
        "export-size")


def server(extra=()):
    return Server(["--tls=on", "--tls-psk=" + pki.psk, "--filter", "tls-fallback",
                   "memory", "size=%d" % MiB] + list(extra))


def nbdkit(extra=()):
    sock = os.path.join(T.TMPDIR, "nbdkit%d.sock" % time.monotonic_ns())
    p = subprocess.Popen(["nbdkit", "-f", "-U", sock, "--tls=on", "--tls-psk=" + pki.psk,
                          "--filter=tls-fallback", "memory", "1M"] + list(extra),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    return p, sock


def plain_view(sock):
    """(bytes, flags) a plaintext client sees."""
    data = T.copy_out(sock, os.path.join(T.TMPDIR, "plain.img"))
    r = L.run(["nbdinfo", "--json", T.unix_uri(sock)])
    check(r.returncode == 0, "nbdinfo: %s" % r.stderr.strip())
    e = json.loads(r.stdout)["exports"][0]
    return data, {k: e.get(k) for k in CAPS}


def t_plain(extra=()):
    s = server(extra)
    data, caps = plain_view(s.sock)
    check_eq(len(data), 512 if not extra else len(data), "plaintext disk size")
    check(data.startswith(b"This NBD server requires TLS" if not extra else
                          extra[0].split("=", 1)[1].encode()),
          "plaintext content: %r" % data[:80])
    check(caps["is_read_only"], "plaintext disk is read-only")
    h = nbd.NBD()
    h.connect_uri(s.uri)
    try:
        h.pwrite(b"x" * 512, 0)
        check(False, "a write through the plaintext view succeeded")
    except nbd.Error:
        pass
    h.shutdown()
    if shutil.which("nbdkit"):
        p, ksock = nbdkit(extra)
        try:
            kdata, kcaps = plain_view(ksock)
            check(data == kdata, "content differs from nbdkit's: %r vs %r"
                  % (data[:100], kdata[:100]))
            check_eq(caps, kcaps, "flags against nbdkit's")
        finally:
            p.terminate()
            p.wait(10)
    else:
        T.log("nbdkit not installed: not compared")
    s.stop()


def t_tls_real():
    s = server()
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(L.psk_uri(s.sock, pki.psk))
    check_eq(h.get_size(), MiB, "the real export's size over TLS")
    check(not h.is_read_only(), "the real export is writable over TLS")
    h.pwrite(b"real" * 1024, 8192)
    check(h.pread(4096, 8192) == b"real" * 1024, "read back over TLS")
    h.shutdown()
    # The plaintext view is unchanged by what the TLS client wrote.
    data, _ = plain_view(s.sock)
    check(b"real" not in data and len(data) == 512, "plaintext view after a TLS write")
    s.stop()


def t_long_message():
    msg = "m" * 700
    s = server(["tlsreadme=" + msg])
    data, caps = plain_view(s.sock)
    check_eq(len(data), 1024, "a 700-byte message rounds up to 1024")
    check(data == msg.encode() + bytes(324), "long message content")
    s.stop()


def t_serialized_refused():
    r = L.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "x.sock"), "--tls=on",
               "--tls-psk=" + pki.psk, "--filter", "tls-fallback", "--filter",
               "noparallel", "memory", "size=1M", "serialize=connections"])
    check(r.returncode != 0 and "serializes connections" in r.stderr,
          "a serialized stack below: rc %d, %s" % (r.returncode, r.stderr.strip()))


C.run("plaintext: the default message, read-only, as nbdkit", t_plain)
C.run("plaintext: tlsreadme=, as nbdkit", t_plain, ["tlsreadme=hello, plaintext"])
C.run("TLS: the real export, writable", t_tls_real)
C.run("a message over 512 bytes rounds up", t_long_message)
C.run("a stack below that serializes connections is refused", t_serialized_refused)
C.finish()
