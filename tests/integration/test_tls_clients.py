#!/usr/bin/python3
"""TLS with other peers and refusals in require mode.

- Raw handshakes: gnutls-cli and `openssl s_client`, with X.509 and with
  PSK, through a relay that does the NBD greeting and NBD_OPT_STARTTLS
  for them (neither knows NBD's STARTTLS) and then passes bytes; each
  reports the version and suite it negotiated: TLS 1.2 and an AEAD suite.
- qemu-img and qemu-io with --object tls-creds-x509 and tls-creds-psk.
- tls = require with --tls-verify-peer: a plaintext client gets
  NBD_REP_ERR_TLS_REQD, a client certificate from another CA and an
  expired one are refused, a wrong PSK too; each refusal is one log line
  and a TLS client connected beside goes on working.  An expired server
  certificate stops the server at startup."""

import os
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
import tlslib as L                        # noqa: E402
from nbdtest import (MiB, Checker, Server, check, check_eq, rep_name,  # noqa: E402
                     OPT_GO, OPT_LIST, REP_ERR_TLS_REQD)

L.skip_unless_tls()
try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (module nbd) not available to %s" % sys.executable)
T.require_layers("memory")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "240")))

SIZE = 64 * MiB
pki = L.Pki()
other = L.Pki("other")
# A client directory trusting our CA but holding a certificate from
# another CA, and one with an expired certificate from ours.
foreign = L.mkdir("foreign")
shutil.copy(pki.ca[1], os.path.join(foreign, "ca-cert.pem"))
L.make_cert(other.ca, "foreign-client", "client", foreign, "client", cn="mallory")
expired = L.mkdir("expired")
shutil.copy(pki.ca[1], os.path.join(expired, "ca-cert.pem"))
L.make_cert(pki.ca, "expired-client", "client", expired, "client", cn="old",
            expired=True)

C = Checker("test_tls_clients")
x509 = Server(["--tls=require", "--tls-certificates=" + pki.srv, "memory",
               "size=%d" % SIZE], name="x509")
psk = Server(["--tls=require", "--tls-psk=" + pki.psk, "memory",
              "size=%d" % SIZE], name="psk")
verify = Server(["--tls=require", "--tls-certificates=" + pki.srv,
                 "--tls-verify-peer", "memory", "size=%d" % SIZE], name="verify")


def raw(argv, what):
    r = L.run(argv, input="", timeout=30)
    out = r.stdout + r.stderr
    check(r.returncode == 0, "%s: status %d: %s" % (what, r.returncode, out[-600:]))
    return out


def check_suite(out, what):
    check("TLS1.2" in out or "TLSv1.2" in out, "%s: not TLS 1.2: %s" % (what, out[-600:]))
    check(any(a in out for a in ("GCM", "CHACHA20", "ChaCha20")),
          "%s: not an AEAD suite: %s" % (what, out[-600:]))


def gnutls_cli(server, *args):
    relay = L.Relay(server.sock)
    out = raw(["gnutls-cli", "-p", str(relay.port), "127.0.0.1"] + list(args),
              "gnutls-cli " + " ".join(args))
    check(relay.error is None, "relay: %s" % relay.error)
    return out


def t_gnutls_x509():
    out = gnutls_cli(x509, "--x509cafile=" + os.path.join(pki.srv, "ca-cert.pem"),
                     "--verify-hostname=localhost")
    check("Handshake was completed" in out, "gnutls-cli X.509: %s" % out[-400:])
    check_suite(out, "gnutls-cli X.509")
    T.log([ln for ln in out.splitlines() if "Description" in ln])


def t_gnutls_psk():
    out = gnutls_cli(psk, "--pskusername=alice", "--pskkey=" + pki.keys["alice"],
                     "--priority=NORMAL:+ECDHE-PSK:+PSK")
    check("Handshake was completed" in out, "gnutls-cli PSK: %s" % out[-400:])
    check_suite(out, "gnutls-cli PSK")


def openssl(server, *args):
    relay = L.Relay(server.sock)
    out = raw(["openssl", "s_client", "-connect", "127.0.0.1:%d" % relay.port,
               "-brief"] + list(args), "openssl s_client " + " ".join(args))
    check(relay.error is None, "relay: %s" % relay.error)
    return out


def t_openssl_x509():
    out = openssl(x509, "-CAfile", os.path.join(pki.srv, "ca-cert.pem"),
                  "-verify_return_error", "-verify_hostname", "localhost")
    check("Verification: OK" in out, "openssl X.509 verification: %s" % out[-400:])
    check_suite(out, "openssl X.509")


def t_openssl_psk():
    out = openssl(psk, "-tls1_2", "-psk_identity", "alice", "-psk", pki.keys["alice"])
    check_suite(out, "openssl PSK")


def qemu_object(kind):
    if kind == "x509":
        return ("tls-creds-x509,id=tls0,endpoint=client,dir=" + pki.caonly, x509)
    d = L.mkdir("qemu-psk")
    L.write_psk(os.path.join(d, "keys.psk"), {"alice": pki.keys["alice"]})
    return ("tls-creds-psk,id=tls0,endpoint=client,dir=%s,username=alice" % d, psk)


def t_qemu(kind):
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            T.log("%s not installed: skipped" % tool)
            return
    obj, srv = qemu_object(kind)
    dst = "driver=nbd,path=%s,tls-creds=tls0" % srv.sock
    if kind == "x509":
        dst += ",tls-hostname=localhost"
    img = os.path.join(T.TMPDIR, "q.raw")
    with open(img, "wb") as f:
        f.write(os.urandom(4 * MiB))
    r = L.run(["qemu-img", "convert", "-n", "--object", obj, "--target-image-opts",
               "-f", "raw", img, dst])
    check(r.returncode == 0, "qemu-img convert into TLS (%s): %s" % (kind, r.stderr.strip()))
    r = L.run(["qemu-io", "--object", obj, "--image-opts", dst, "-c",
               "write -P 0x5a 8M 1M", "-c", "read -P 0x5a 8M 1M", "-c", "flush"])
    check(r.returncode == 0 and "Pattern verification failed" not in r.stdout,
          "qemu-io over TLS (%s): %s %s" % (kind, r.stdout[-300:], r.stderr.strip()))
    back = os.path.join(T.TMPDIR, "q-back.raw")
    r = L.run(["qemu-img", "convert", "--object", obj, "--image-opts", dst,
               "-O", "raw", back])
    check(r.returncode == 0, "qemu-img convert out of TLS: %s" % r.stderr.strip())
    with open(img, "rb") as a, open(back, "rb") as b:
        check(a.read() == b.read(4 * MiB), "qemu-img data over TLS (%s) differs" % kind)


def tls_handle(uri):
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(uri)
    return h


def refused_once(srv, uri, needle, what, beside):
    """The client is refused; the server adds one log line that says why
    (and nothing else); the TLS client beside still reads."""
    beside.pread(512, 0)                     # its own log lines are out
    time.sleep(0.2)
    before = srv.log_text().splitlines()
    try:
        h = tls_handle(uri)
        h.shutdown()
        raise T.CheckFailed("%s: the client was served" % what)
    except nbd.Error:
        pass
    time.sleep(0.2)                          # the server's line after the close
    new = srv.log_text().splitlines()[len(before):]
    check_eq(len(new), 1, "%s: log lines for the refusal: %r" % (what, new))
    check(any(needle in ln for ln in new), "%s: %r lacks %r" % (what, new, needle))
    check(beside.pread(4096, 0) is not None, "%s: the TLS client beside" % what)
    check(srv.alive(), "%s: the server died" % what)


def t_require_refusals():
    good = tls_handle(L.x509_uri(verify.sock, pki.cli))
    # Plaintext: TLS_REQD for LIST and GO.
    c = T.Raw(verify.sock)
    c.handshake()
    for opt, data in ((OPT_LIST, b""), (OPT_GO, T.Raw.go_data())):
        r = c.option(opt, data)
        check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_TLS_REQD),
                 "plaintext option %d under tls=require" % opt)
    c.close()
    refused_once(verify, L.x509_uri(verify.sock, foreign), "handshake failed",
                 "a client certificate from another CA", good)
    refused_once(verify, L.x509_uri(verify.sock, expired), "handshake failed",
                 "an expired client certificate", good)
    check(good.pread(MiB, 0) is not None, "the good client after the refusals")
    good.shutdown()
    gp = tls_handle(L.psk_uri(psk.sock, pki.psk))
    wrong = os.path.join(T.TMPDIR, "wrong.psk")
    L.write_psk(wrong, {"alice": os.urandom(32).hex()})
    refused_once(psk, L.psk_uri(psk.sock, wrong), "handshake failed", "a wrong PSK", gp)
    gp.shutdown()


def t_expired_server_cert():
    d = L.mkdir("expired-srv")
    shutil.copy(pki.ca[1], os.path.join(d, "ca-cert.pem"))
    L.make_cert(pki.ca, "expired-server", "server", d, "server", expired=True)
    T.startup_refused("memory", ["size=1M", "--tls=on", "--tls-certificates=" + d],
                      "expired 2020-02-01")


C.run("gnutls-cli: X.509 handshake, TLS 1.2 AEAD", t_gnutls_x509)
C.run("gnutls-cli: PSK handshake", t_gnutls_psk)
C.run("openssl s_client: X.509 handshake, verified", t_openssl_x509)
C.run("openssl s_client: PSK handshake", t_openssl_psk)
C.run("qemu-img and qemu-io with tls-creds-x509", t_qemu, "x509")
C.run("qemu-img and qemu-io with tls-creds-psk", t_qemu, "psk")
C.run("require: plaintext, foreign CA, expired cert, wrong PSK refused in one "
      "line each, a TLS client beside unharmed", t_require_refusals)
C.run("an expired server certificate stops the server", t_expired_server_cert)
C.finish([x509, psk, verify])
