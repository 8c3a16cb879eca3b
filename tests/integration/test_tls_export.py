#!/usr/bin/python3
"""TLS per export, and what SIGHUP does to TLS (docs/config.md "TLS").

One server, no server-wide tls, an export "plain" and an export "secret"
with `tls = require`: a plaintext client is refused "secret" by INFO, GO
and the meta context options (NBD_REP_ERR_TLS_REQD) and by EXPORT_NAME
(closed), is not shown it by LIST, and is served "plain" beside it; a
TLS client (PSK and X.509) sees and opens both.  A reload that changes
only `tls` keeps the layers (the memory disk's data) and applies to the
next clients; when every export requires TLS every option but STARTTLS
and ABORT is refused.  A reload that asks for TLS on a server started
without credentials is refused.  SIGHUP re-reads the PSK file (a bad
file keeps the old keys); --tls-verify-peer logs the client
certificate's CN.  Certificates are made here (tlslib.py)."""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
import tlslib as L                        # noqa: E402
from nbdtest import (MiB, Checker, Server, check, check_eq, rep_name,  # noqa: E402
                     OPT_GO, OPT_INFO, OPT_LIST, OPT_ABORT, OPT_STARTTLS,
                     OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, REP_ACK,
                     REP_SERVER, REP_ERR_TLS_REQD)

L.skip_unless_tls()
try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (module nbd) not available to %s" % sys.executable)
T.require_layers("memory")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "180")))

pki = L.Pki()
C = Checker("test_tls_export")

CONF = """[server]
listen = unix:SOCK
tls-certificates = %s
tls-psk = %s
%%s
[export plain]
%%s
backend = memory size=1M

[export secret]
tls = require
backend = memory size=2M
""" % (pki.srv, pki.psk)


start = T.config_server
write_cfg = T.write_config


def sighup(s, cfg, text, expect):
    s.sighup(cfg, text, expect)


def handle(uri):
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(uri)
    return h


def listed(c):
    r = c.option(OPT_LIST)
    check_eq(rep_name(r[-1][0]), "ACK", "LIST's final reply")
    return sorted(d[4:4 + int.from_bytes(d[:4], "big")].decode()
                  for rep, d in r if rep == REP_SERVER)


srv, cfg = start("perexport", CONF % ("", ""))


def t_plain_client():
    c = T.Raw(srv.sock)
    c.handshake()
    check_eq(listed(c), ["plain"], "exports listed to a plaintext client")
    for opt in (OPT_INFO, OPT_GO):
        final, _ = c.info_or_go(opt, "secret")
        check_eq(rep_name(final), rep_name(REP_ERR_TLS_REQD),
                 "option %d for the TLS-only export before STARTTLS" % opt)
    c.structured_reply()
    for opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
        r = c.set_meta(b"secret", opt=opt)
        check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_TLS_REQD),
                 "meta context option %d for the TLS-only export" % opt)
    c.go("plain")
    check_eq(c.size, MiB, "the plain export's size")
    check_eq(c.write(0, b"p" * 4096), 0, "write to the plain export")
    c.disc()
    c.close()
    # EXPORT_NAME has no error reply: the connection is closed.
    c = T.Raw(srv.sock)
    c.handshake()
    c.send_opt(T.OPT_EXPORT_NAME, b"secret")
    check(c.wait_closed(), "EXPORT_NAME of the TLS-only export was not closed")
    c.close()
    r = L.run(["nbdinfo", "--size", srv.uri_for("secret")])
    check(r.returncode != 0, "plaintext nbdinfo opened the TLS-only export")
    r = L.run(["nbdinfo", "--size", srv.uri_for("plain")])
    check(r.returncode == 0 and r.stdout.strip() == str(MiB),
          "plaintext nbdinfo of the plain export: %s" % r.stderr.strip())


def t_tls_client():
    h = handle(L.psk_uri(srv.sock, pki.psk, export="secret"))
    check_eq(h.get_size(), 2 * MiB, "the TLS-only export's size over TLS")
    h.pwrite(b"s" * 4096, 0)
    h.shutdown()
    r = L.run(["nbdinfo", "--list", "--json", L.x509_uri(srv.sock, pki.caonly)])
    check(r.returncode == 0, "nbdinfo --list over TLS: %s" % r.stderr.strip())
    check('"plain"' in r.stdout and '"secret"' in r.stdout,
          "nbdinfo --list over TLS lists both: %s" % r.stdout[:400])
    # A raw client after STARTTLS gets both in LIST too.
    c = T.Raw(srv.sock)
    c.handshake()
    r = c.option(OPT_STARTTLS)
    check_eq(rep_name(r[-1][0]), "ACK", "STARTTLS")
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(pki.caonly, "ca-cert.pem"))
    c.s = ctx.wrap_socket(c.s, server_hostname="localhost")
    check_eq(listed(c), ["plain", "secret"], "exports listed after STARTTLS")
    c.go("secret")
    check(c.read(0, 4096) == (0, b"s" * 4096), "data of the TLS-only export")
    c.disc()
    c.close()


def t_reload_tls_only():
    """Only `tls` changes: the layers stay (the plain disk keeps its data),
    and now every export requires TLS: LIST gets TLS_REQD too."""
    sighup(srv, cfg, CONF % ("", "tls = require"), "reloaded ")
    check("1 export kept" in srv.log_text() or "2 exports kept" in srv.log_text(),
          "reload of a tls change rebuilt the export: %s"
          % srv.log_text().splitlines()[-1])
    c = T.Raw(srv.sock)
    c.handshake()
    for opt, data in ((OPT_LIST, b""), (OPT_GO, T.Raw.go_data("plain"))):
        r = c.option(opt, data)
        check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_TLS_REQD),
                 "option %d when every export requires TLS" % opt)
    r = c.option(OPT_ABORT)
    check_eq(rep_name(r[-1][0]), "ACK", "ABORT")
    c.close()
    h = handle(L.psk_uri(srv.sock, pki.psk, export="plain"))
    check(h.pread(4096, 0) == b"p" * 4096, "the plain disk lost its data on a "
          "reload that changed only tls")
    h.shutdown()
    # Back: server-wide require, but "plain" says off: plain again.
    sighup(srv, cfg, CONF % ("tls = require", "tls = off"), "reloaded ")
    r = L.run(["nbdinfo", "--size", srv.uri_for("plain")])
    check(r.returncode == 0, "export tls = off under server tls = require: %s"
          % r.stderr.strip())
    r = L.run(["nbdinfo", "--size", srv.uri_for("secret")])
    check(r.returncode != 0, "the TLS-only export served in plaintext")


def t_bad_value():
    conf = os.path.join(T.TMPDIR, "bad.ini")
    write_cfg(conf, "[server]\nlisten = unix:%s/x.sock\n[export a]\ntls = maybe\n"
              "backend = memory size=1M\n" % T.TMPDIR)
    r = L.run([T.NBDSTACK, "--check-config", conf])
    check(r.returncode != 0 and "bad.ini:4: tls: invalid value 'maybe'" in r.stderr,
          "a bad export tls value: %s" % r.stderr.strip())
    write_cfg(conf, "[server]\nlisten = unix:%s/x.sock\n[export a]\ntls = require\n"
              "backend = memory size=1M\n" % T.TMPDIR)
    r = L.run([T.NBDSTACK, "--check-config", conf])
    check(r.returncode != 0 and "tls-certificates or tls-psk" in r.stderr,
          "an export's tls = require without credentials: %s" % r.stderr.strip())


def t_reload_needs_creds():
    text = ("[server]\nlisten = unix:SOCK\n[export a]\n%s\n"
            "backend = memory size=1M\n")
    s, c = start("nocreds", text % "")
    sighup(s, c, text % "tls = require", "refused")
    check("started without TLS credentials" in s.log_text(),
          "reason for refusing: %s" % s.log_text().splitlines()[-2:])
    r = L.run(["nbdinfo", "--size", s.uri_for("a")])
    check(r.returncode == 0, "the running export after a refused reload: %s"
          % r.stderr.strip())
    s.stop()


def t_psk_reload():
    s = Server(["--tls=require", "--tls-psk=" + pki.psk, "memory", "size=1M"],
               name="pskreload")
    psk = pki.psk
    old = dict(pki.keys)
    oldfile = os.path.join(T.TMPDIR, "old.psk")
    L.write_psk(oldfile, old)
    check(L.run(["nbdinfo", "--size", L.psk_uri(s.sock, oldfile)]).returncode == 0,
          "the first key")
    new = {"alice": os.urandom(32).hex(), "carol": os.urandom(32).hex()}
    L.write_psk(psk, new)
    sighup(s, None, None, "reloaded, 2 keys")
    r = L.run(["nbdinfo", "--size", L.psk_uri(s.sock, oldfile)])
    check(r.returncode != 0, "alice's old key still works after SIGHUP")
    check(L.run(["nbdinfo", "--size", L.psk_uri(s.sock, psk, "carol")]).returncode
          == 0, "carol, added by SIGHUP")
    with open(psk, "w") as f:
        f.write("alice:nothex\n")
    sighup(s, None, None, "not reloaded")
    check("%s:1:" % psk in s.log_text(), "the reason for not reloading")
    L.write_psk(oldfile, new)        # the keys in force, for the client
    r = L.run(["nbdinfo", "--size", L.psk_uri(s.sock, oldfile, "carol")])
    check(r.returncode == 0, "the kept keys after a bad PSK file: %s"
          % r.stderr.strip())
    check("PSK identity \"carol\"" in s.log_text(), "the PSK identity is logged")
    L.write_psk(psk, pki.keys)
    s.stop()


def t_cn_logged():
    s = Server(["--tls=require", "--tls-certificates=" + pki.srv,
                "--tls-verify-peer", "memory", "size=1M"], name="cn")
    r = L.run(["nbdinfo", "--size", L.x509_uri(s.sock, pki.cli)])
    check(r.returncode == 0, "nbdinfo with a client certificate: %s"
          % r.stderr.strip())
    check('client certificate CN="alice"' in s.log_text(),
          "the client's CN in the log: %s" % s.log_text()[-500:])
    s.stop()


C.run("per export: a plaintext client, refused only the TLS-only export", t_plain_client)
C.run("per export: a TLS client sees and opens both", t_tls_client)
C.run("per export: reload changing tls keeps layers, applies to new clients",
      t_reload_tls_only)
C.run("per export: bad value and missing credentials refused", t_bad_value)
C.run("reload: tls on a server without credentials is refused", t_reload_needs_creds)
C.run("SIGHUP re-reads the PSK file; a bad one keeps the old keys", t_psk_reload)
C.run("--tls-verify-peer logs the client certificate's CN", t_cn_logged)
C.finish([srv])
