#!/usr/bin/python3
"""The nbd backend as a TLS client (docs/backends/nbd.md, "TLS"): nbdkit's
nbd plugin keys tls=, tls-certificates=, tls-psk=, tls-username=,
tls-verify= and nbds:// URIs, against nbdkit --tls=require (X.509 and
PSK) and against nbdstack itself (with a client certificate under
--tls-verify-peer).  tls=on falls back to plaintext when the upstream
has no TLS, tls=require refuses it; a wrong PSK, a server certificate
from another CA (tls-verify=true) fail the client's open with a reason in
the log; bad credentials stop the server at startup."""

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
T.require_layers("memory", "nbd")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "180")))

pki = L.Pki()
other = L.Pki("other")
C = Checker("test_nbd_tls")
SIZE = 16 * MiB
procs = []


def nbdkit(*args):
    sock = os.path.join(T.TMPDIR, "nbdkit%d.sock" % time.monotonic_ns())
    p = subprocess.Popen(["nbdkit", "-f", "-U", sock] + list(args) +
                         ["memory", str(SIZE)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sock


def roundtrip(proxy, what):
    """3 MiB of random data through the proxy, read back by nbdcopy."""
    data = os.urandom(3 * MiB)
    src, back = os.path.join(T.TMPDIR, "src.bin"), os.path.join(T.TMPDIR, "back.bin")
    with open(src, "wb") as f:
        f.write(data)
    r = L.run(["nbdcopy", src, proxy.uri])
    check(r.returncode == 0, "%s: nbdcopy in: %s" % (what, r.stderr.strip()))
    r = L.run(["nbdcopy", proxy.uri, back])
    check(r.returncode == 0, "%s: nbdcopy out: %s" % (what, r.stderr.strip()))
    with open(back, "rb") as f:
        check(f.read(len(data)) == data, "%s: data through the TLS proxy differs" % what)


def open_fails(proxy, needle, what):
    r = L.run(["nbdinfo", "--size", proxy.uri])
    check(r.returncode != 0, "%s: the client was served" % what)
    check(needle in proxy.log_text(), "%s: log lacks %r: %s"
          % (what, needle, proxy.log_text()[-400:]))


def need_nbdkit():
    if not shutil.which("nbdkit"):
        T.log("nbdkit not installed: skipped")
        return False
    return True


def t_nbdkit_psk():
    if not need_nbdkit():
        return
    up = nbdkit("--tls=require", "--tls-psk=" + pki.psk)
    p = Server(["nbd", "socket=" + up, "tls=require", "tls-psk=" + pki.psk,
                "tls-username=alice"], name="psk")
    roundtrip(p, "nbdkit PSK")
    p.stop()
    # The same through an nbds+unix URI with user@ and tls-psk-file=.
    p = Server(["nbd", "uri=nbds+unix://bob@/?socket=%s&tls-psk-file=%s"
                % (up, pki.psk)], name="pskuri")
    roundtrip(p, "nbdkit PSK via nbds+unix://")
    p.stop()


def t_nbdkit_x509():
    if not need_nbdkit():
        return
    up = nbdkit("--tls=require", "--tls-certificates=" + pki.srv)
    p = Server(["nbd", "socket=" + up, "tls=require",
                "tls-certificates=" + pki.caonly], name="x509")
    roundtrip(p, "nbdkit X.509")
    p.stop()
    # Another CA: refused while tls-verify=true (the default)...
    p = Server(["nbd", "socket=" + up, "tls=require",
                "tls-certificates=" + other.caonly], name="otherca")
    open_fails(p, "certificate", "a server certificate from another CA")
    p.stop()
    # ... and taken with tls-verify=false (nbdkit's meaning: no check).
    p = Server(["nbd", "socket=" + up, "tls=require", "tls-verify=false",
                "tls-certificates=" + other.caonly], name="noverify")
    roundtrip(p, "tls-verify=false")
    p.stop()


def t_nbdkit_wrong_psk():
    if not need_nbdkit():
        return
    up = nbdkit("--tls=require", "--tls-psk=" + pki.psk)
    wrong = os.path.join(T.TMPDIR, "wrong.psk")
    L.write_psk(wrong, {"alice": os.urandom(32).hex()})
    p = Server(["nbd", "socket=" + up, "tls=require", "tls-psk=" + wrong,
                "tls-username=alice"], name="wrongpsk")
    open_fails(p, "TLS handshake", "a wrong PSK")
    p.stop()


def t_self_verify_peer():
    """Upstream nbdstack demanding a client certificate: the backend shows
    client-cert.pem; the upstream logs its CN."""
    up = Server(["--tls=require", "--tls-certificates=" + pki.srv,
                 "--tls-verify-peer", "memory", "size=%d" % SIZE], name="up")
    p = Server(["nbd", "socket=" + up.sock, "tls=require",
                "tls-certificates=" + pki.cli], name="selfcli")
    roundtrip(p, "nbdstack upstream, client certificate")
    check('CN="alice"' in up.log_text(), "upstream did not log the proxy's CN")
    p.stop()
    # Without a client certificate the upstream refuses.
    p = Server(["nbd", "socket=" + up.sock, "tls=require",
                "tls-certificates=" + pki.caonly], name="selfnocli")
    open_fails(p, "upstream handshake failed", "no client certificate")
    p.stop()
    check(up.alive(), "the upstream died")
    up.stop()


def t_on_and_require_plain_upstream():
    up = Server(["memory", "size=%d" % SIZE], name="plainup")
    p = Server(["nbd", "socket=" + up.sock, "tls=on", "tls-psk=" + pki.psk,
                "tls-username=alice"], name="on")
    roundtrip(p, "tls=on over a plaintext upstream")
    p.stop()
    p = Server(["nbd", "socket=" + up.sock, "tls=require", "tls-psk=" + pki.psk,
                "tls-username=alice"], name="req")
    open_fails(p, "STARTTLS", "tls=require over a plaintext upstream")
    p.stop()
    up.stop()


def t_setup_errors():
    sock = "socket=" + os.path.join(T.TMPDIR, "none.sock")
    for args, needle in (
            (["tls=require"], "needs tls-certificates= or tls-psk="),
            (["tls-psk=" + pki.psk, "tls-username=carol"], "no key for user 'carol'"),
            (["tls=on", "tls-psk=" + os.path.join(T.TMPDIR, "missing.psk")],
             "missing.psk"),
            (["tls-certificates=" + T.TMPDIR], "ca-cert.pem"),
            (["tls=maybe", "tls-psk=" + pki.psk], "tls"),
    ):
        T.startup_refused("nbd", [sock] + args, needle)
    T.startup_refused("nbd", ["uri=nbds+unix:///?socket=/x", "tls=off"],
                      "requires TLS")


C.run("nbdkit --tls=require, PSK (keys and nbds+unix:// URI)", t_nbdkit_psk)
C.run("nbdkit --tls=require, X.509; another CA refused unless tls-verify=false",
      t_nbdkit_x509)
C.run("nbdkit --tls=require, a wrong PSK fails the client's open", t_nbdkit_wrong_psk)
C.run("nbdstack upstream with --tls-verify-peer: client certificate", t_self_verify_peer)
C.run("tls=on falls back to plaintext, tls=require refuses it",
      t_on_and_require_plain_upstream)
C.run("bad TLS keys stop the server at startup", t_setup_errors)
for pr in procs:
    pr.terminate()
    pr.wait(10)
C.finish()
