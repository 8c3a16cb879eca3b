#!/usr/bin/python3
"""TLS (STARTTLS) with real clients: libnbd (nbdinfo, the nbd module that
nbdsh runs) with X.509 certificates and with a PSK, qemu-img with
tls-creds-x509, and a raw client that wraps its socket in Python's ssl
after STARTTLS.  `tls = require` refuses a plaintext client with
NBD_REP_ERR_TLS_REQD while a TLS client is served beside it; a wrong PSK,
a missing client certificate under --tls-verify-peer, a second STARTTLS
and garbage after STARTTLS are refused without harm to anyone else; bad
keys stop the server at startup.  Certificates and keys are made here
with certtool (gnutls-bin); none is committed.  Skips (77) when the
binary was built without TLS."""

import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import (MiB, Checker, Server, check, check_eq, rep_name,  # noqa: E402
                     OPT_GO, OPT_LIST, OPT_STARTTLS, OPT_ABORT, REP_ACK,
                     REP_ERR_BIT, REP_ERR_INVALID, REP_ERR_TLS_REQD)

version = subprocess.run([T.NBDSTACK, "--version"], capture_output=True,
                         text=True).stdout
if "TLS: not compiled in" in version or "TLS:" not in version:
    T.skip("%s was built without TLS" % T.NBDSTACK)
for tool in ("certtool", "nbdinfo"):
    if not shutil.which(tool):
        T.skip("%s is not installed" % tool)
try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (module nbd) not available to %s" % sys.executable)

T.require_layers("memory")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "120")))

D = T.TMPDIR
SIZE = 64 * MiB


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


def certtool(*args):
    r = run(["certtool"] + list(args))
    if r.returncode != 0:
        T.die("certtool %s: %s" % (" ".join(args), r.stderr.strip()))


def template(name, text):
    path = os.path.join(D, name + ".info")
    with open(path, "w") as f:
        f.write(text)
    return path


def make_ca(name):
    key, cert = os.path.join(D, name + "-key.pem"), os.path.join(D, name + "-cert.pem")
    certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", key)
    certtool("--generate-self-signed", "--load-privkey", key, "--template",
             template(name, 'cn = "nbdstack test %s"\nca\ncert_signing_key\n'
                      'expiration_days = 2\n' % name), "--outfile", cert)
    return key, cert


def make_cert(ca, name, role, outdir, prefix, key_type="ecdsa"):
    """A key and certificate signed by ca, as outdir/PREFIX-{key,cert}.pem."""
    key = os.path.join(outdir, prefix + "-key.pem")
    cert = os.path.join(outdir, prefix + "-cert.pem")
    certtool("--generate-privkey", "--key-type=" + key_type, "--outfile", key)
    certtool("--generate-certificate", "--load-privkey", key,
             "--load-ca-certificate", ca[1], "--load-ca-privkey", ca[0],
             "--template", template(name, 'cn = "localhost"\ndns_name = "localhost"\n'
                                    'tls_www_%s\nencryption_key\nsigning_key\n'
                                    'expiration_days = 2\n' % role),
             "--outfile", cert)
    os.chmod(key, 0o600)


def mkdir(name):
    path = os.path.join(D, name)
    os.makedirs(path, exist_ok=True)
    return path


# Server directory (nbdkit's and qemu's layout), a client directory with a
# client certificate (for --tls-verify-peer), one with the CA only, and one
# whose CA is another.
ca = make_ca("ca")
other_ca = make_ca("other-ca")
srvdir, clidir, cadir, otherdir = (mkdir("srv"), mkdir("cli"), mkdir("caonly"),
                                   mkdir("other"))
make_cert(ca, "server", "server", srvdir, "server", key_type="rsa")
make_cert(ca, "client", "client", clidir, "client")
for d in (srvdir, clidir, cadir):
    shutil.copy(ca[1], os.path.join(d, "ca-cert.pem"))
shutil.copy(other_ca[1], os.path.join(otherdir, "ca-cert.pem"))

PSK = os.path.join(D, "keys.psk")
with open(PSK, "w") as f:
    f.write("alice:%s\nbob:%s\n" % (os.urandom(32).hex(), os.urandom(32).hex()))
WRONG_PSK = os.path.join(D, "wrong.psk")
with open(WRONG_PSK, "w") as f:
    f.write("alice:%s\n" % os.urandom(32).hex())

x509_on = Server(["--tls=on", "--tls-certificates=" + srvdir, "memory",
                  "size=%d" % SIZE], name="x509on")
psk_req = Server(["--tls=require", "--tls-psk=" + PSK, "memory",
                  "size=%d" % SIZE], name="pskreq")
x509_req = Server(["--tls=require", "--tls-certificates=" + srvdir,
                   "--tls-verify-peer", "memory", "size=%d" % SIZE],
                  name="x509verify")
x509_req_any = Server(["--tls=require", "--tls-certificates=" + srvdir,
                       "memory", "size=%d" % SIZE], name="x509req")
C = Checker("test_tls")


def x509_uri(srv, certdir):
    return "nbds+unix:///?socket=%s&tls-certificates=%s" % (srv.sock, certdir)


def psk_uri(srv, user="alice", pskfile=PSK):
    return "nbds+unix://%s@/?socket=%s&tls-psk-file=%s" % (user, srv.sock, pskfile)


def handle(uri):
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(uri)
    return h


def roundtrip(uri, offset):
    """Writes 3 MiB of random data (a payload larger than a TLS record and
    than the read buffer), reads it back on a second connection."""
    data = os.urandom(3 * MiB)
    h = handle(uri)
    check(h.get_size() == SIZE, "size over TLS: %d" % h.get_size())
    h.pwrite(data, offset)
    h.flush()
    h.shutdown()
    h = handle(uri)
    check(h.pread(len(data), offset) == data, "data read back over TLS differs")
    # Pipelined small requests: many replies in flight at once.
    bufs = [nbd.Buffer(4096) for _ in range(64)]
    cookies = [h.aio_pread(b, offset + i * 4096) for i, b in enumerate(bufs)]
    for ck in cookies:
        while not h.aio_command_completed(ck):
            h.poll(-1)
    for i, b in enumerate(bufs):
        check(b.to_bytearray() == data[i * 4096:(i + 1) * 4096],
              "pipelined read %d differs" % i)
    h.shutdown()


def refused(uri, what):
    try:
        h = handle(uri)
    except nbd.Error as e:
        return str(e)
    h.shutdown()
    raise T.CheckFailed("%s: connected, expected a refusal" % what)


def t_x509_nbdinfo():
    r = run(["nbdinfo", "--json", x509_uri(x509_on, cadir)])
    check(r.returncode == 0, "nbdinfo over TLS failed: %s" % r.stderr.strip())
    check('"export-size": %d' % SIZE in r.stdout, "nbdinfo: %s" % r.stdout[:300])


def t_x509_data():
    roundtrip(x509_uri(x509_on, cadir), 5 * MiB + 17)


def t_x509_nbdsh():
    if not shutil.which("nbdsh"):
        T.log("nbdsh not installed: only the nbd module was used")
        return
    # /usr/bin/nbdsh runs "python3 -m nbd": Debian's python3 must come
    # first in PATH, where the nbd module is.
    env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
    # nbdsh -u does not allow the URI's local files (tls-certificates).
    r = run(["nbdsh", "-c", "h.set_uri_allow_local_file(True)", "-c",
             "h.connect_uri(%r)" % x509_uri(x509_on, cadir), "-c",
             "h.pwrite(b'tls!' * 1024, 4096); assert h.pread(4096, 4096) == b'tls!' * 1024; "
             "print(h.get_size())"], env=env)
    check(r.returncode == 0 and r.stdout.strip() == str(SIZE),
          "nbdsh over TLS: rc %d, %s %s" % (r.returncode, r.stdout, r.stderr.strip()))


def t_on_plain_too():
    r = run(["nbdinfo", "--size", x509_on.uri])
    check(r.returncode == 0 and r.stdout.strip() == str(SIZE),
          "plaintext client of a tls=on server: %s" % r.stderr.strip())


def t_other_ca():
    # libnbd checks no certificate on a Unix socket (no hostname to check
    # it against), so Python's ssl is the client that does.
    try:
        raw_tls(x509_on, otherdir)
    except ssl.SSLCertVerificationError:
        pass
    else:
        raise T.CheckFailed("a client trusting another CA accepted the server")
    t_x509_nbdinfo()


def t_psk_data():
    roundtrip(psk_uri(psk_req), 0)
    r = run(["nbdinfo", "--size", psk_uri(psk_req, "bob")])
    check(r.returncode == 0 and r.stdout.strip() == str(SIZE),
          "nbdinfo with PSK: %s" % r.stderr.strip())
    # libnbd's PSK priority (NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK) offers
    # DHE-PSK with AES-GCM: forward secrecy and our AES-GCM, preferred
    # over ECDHE-PSK's ChaCha20-Poly1305 (portable C in mbedTLS 2.28).
    log = psk_req.log_text()
    check("TLS-DHE-PSK-WITH-AES-256-GCM-SHA384" in log,
          "PSK suite: want DHE-PSK AES-256-GCM; the log says %r" %
          [l for l in log.splitlines() if "tls: TLS" in l][-1:])


def t_psk_wrong():
    refused(psk_uri(psk_req, "alice", WRONG_PSK), "a wrong PSK")
    refused(psk_uri(psk_req, "carol", WRONG_PSK), "an unknown PSK identity")
    check(psk_req.alive(), "server died after wrong PSKs")
    roundtrip(psk_uri(psk_req), 7 * MiB)


def raw_tls(srv, certdir=cadir):
    """A raw client that has done STARTTLS: its socket is an SSLSocket."""
    c = T.Raw(srv.sock)
    c.handshake()
    r = c.option(OPT_STARTTLS)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ACK), "STARTTLS reply")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(os.path.join(certdir, "ca-cert.pem"))
    c.s = ctx.wrap_socket(c.s, server_hostname="localhost")
    return c


def t_require_refuses_plain():
    # A TLS client connected and idle beside the refused plaintext one.
    h = handle(psk_uri(psk_req))
    c = T.Raw(psk_req.sock)
    c.handshake()
    for opt, data in ((OPT_LIST, b""), (OPT_GO, T.Raw.go_data())):
        r = c.option(opt, data)
        check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_TLS_REQD),
                 "option %d before STARTTLS under tls=require" % opt)
    r = c.option(OPT_ABORT)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ACK), "ABORT before TLS")
    c.close()
    r = run(["nbdinfo", "--size", psk_req.uri])
    check(r.returncode != 0, "a plaintext nbdinfo got through tls=require")
    check(h.pread(512, 0) is not None, "the TLS client beside it")
    h.shutdown()


def t_raw_x509():
    c = raw_tls(x509_on)
    version = c.s.version()
    check(version in ("TLSv1.2", "TLSv1.3"), "TLS version %s" % version)
    check("GCM" in c.s.cipher()[0] or "CHACHA20" in c.s.cipher()[0],
          "not an AEAD suite: %s" % (c.s.cipher(),))
    r = c.option(OPT_STARTTLS)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_INVALID), "a second STARTTLS")
    c.structured_reply()
    c.go()
    data = os.urandom(64 * 1024)
    check_eq(c.write(1 * MiB, data), 0, "raw write over TLS")
    check(c.read(1 * MiB, len(data)) == (0, data), "raw read over TLS")
    c.disc()
    check(c.wait_closed(), "server closes after DISC over TLS")
    c.close()


OPT_EXTENDED_HEADERS = 11
REP_ERR_EXT_HEADER_REQD = REP_ERR_BIT + 10


def t_extended_headers():
    """NBD_OPT_EXTENDED_HEADERS under tls=require: TLS_REQD before
    STARTTLS, accepted after it; under tls=on, one negotiated in the clear
    is forgotten by STARTTLS (proto.md: a client MUST renegotiate)."""
    c = T.Raw(x509_req_any.sock)
    c.handshake()
    r = c.option(OPT_EXTENDED_HEADERS)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ERR_TLS_REQD),
             "EXTENDED_HEADERS before STARTTLS under tls=require")
    r = c.option(OPT_STARTTLS)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ACK), "STARTTLS reply")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(cadir, "ca-cert.pem"))
    c.s = ctx.wrap_socket(c.s, server_hostname="localhost")
    r = c.option(OPT_EXTENDED_HEADERS)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ACK),
             "EXTENDED_HEADERS after STARTTLS")
    c.go()
    c.send(struct.pack(">IHHQQQ", 0x21E41C71, 0, T.CMD_FLUSH, 7, 0, 0))
    magic, flags, rtype, ck, off, length = struct.unpack(">IHHQQQ",
                                                         c.recv_exact(32))
    check_eq((hex(magic), flags, rtype, ck, length),
             (hex(0x6E8A278C), 1, 0, 7, 0), "extended reply to a flush over TLS")
    c.close()
    c = T.Raw(x509_on.sock)
    c.handshake()
    r = c.option(OPT_EXTENDED_HEADERS)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ACK), "EXTENDED_HEADERS in clear")
    r = c.option(OPT_STARTTLS)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ACK), "STARTTLS reply")
    c.s = ctx.wrap_socket(c.s, server_hostname="localhost")
    c.structured_reply()        # EXT_HEADER_REQD if it had been kept
    c.go()
    check(c.read(0, 4096)[0] == 0, "compact structured read after STARTTLS")
    c.close()


def t_garbage_after_starttls():
    c = T.Raw(x509_on.sock)
    c.handshake()
    r = c.option(OPT_STARTTLS)
    check_eq(rep_name(r[-1][0]), rep_name(REP_ACK), "STARTTLS reply")
    c.send(b"\x16\x03\x01\x02\x00" + b"\xff" * 600)
    check(c.wait_closed(), "server closes after garbage instead of a ClientHello")
    c.close()
    t_x509_nbdinfo()


def t_verify_peer():
    roundtrip(x509_uri(x509_req, clidir), 0)
    refused(x509_uri(x509_req, cadir), "a client without a certificate under "
            "--tls-verify-peer")
    check(x509_req.alive(), "server died")


def t_qemu_img():
    if not shutil.which("qemu-img"):
        T.log("qemu-img not installed: skipped")
        return
    img = os.path.join(D, "qemu.raw")
    with open(img, "wb") as f:
        f.write(os.urandom(2 * MiB))
    obj = "tls-creds-x509,id=tls0,endpoint=client,dir=" + cadir
    # A Unix socket has no host name to check the certificate against.
    dst = "driver=nbd,path=%s,tls-creds=tls0,tls-hostname=localhost" % x509_on.sock
    r = run(["qemu-img", "convert", "-n", "--object", obj, "--target-image-opts",
             "-f", "raw", img, dst])
    check(r.returncode == 0, "qemu-img convert into TLS: %s" % r.stderr.strip())
    back = os.path.join(D, "back.raw")
    r = run(["qemu-img", "convert", "--object", obj, "--image-opts", dst,
             "-O", "raw", back])
    check(r.returncode == 0, "qemu-img convert out of TLS: %s" % r.stderr.strip())
    with open(img, "rb") as a, open(back, "rb") as b:
        check(a.read() == b.read(2 * MiB), "qemu-img data over TLS differs")


def startup_fails(args, needle, what):
    r = run([T.NBDSTACK, "-U", os.path.join(D, "bad.sock")] + args +
            ["memory", "size=1M"])
    check(r.returncode != 0, "%s: the server started" % what)
    check(needle in r.stderr, "%s: message %r lacks %r" % (what, r.stderr.strip(), needle))


def t_bad_keys():
    bad = mkdir("mismatch")
    shutil.copy(os.path.join(srvdir, "server-cert.pem"), bad)
    shutil.copy(os.path.join(clidir, "client-key.pem"),
                os.path.join(bad, "server-key.pem"))
    startup_fails(["--tls=on", "--tls-certificates=" + bad], "does not belong",
                  "a key of another certificate")
    startup_fails(["--tls=on", "--tls-certificates=" + mkdir("empty")],
                  "server-cert.pem", "an empty certificate directory")
    startup_fails(["--tls=require"], "tls-certificates or tls-psk",
                  "tls without credentials")
    badpsk = os.path.join(D, "bad.psk")
    with open(badpsk, "w") as f:
        f.write("alice:xyz\n")
    startup_fails(["--tls=on", "--tls-psk=" + badpsk], "bad.psk:1:",
                  "a malformed PSK file")
    startup_fails(["--tls=on", "--tls-verify-peer", "--tls-certificates=" + bad.replace(
        "mismatch", "srvnoca")], "server-cert.pem", "a missing directory")
    startup_fails(["--tls=maybe"], "off, on or require", "a bad --tls value")


def t_check_config():
    """--check-config loads the TLS credentials as startup would."""
    badpsk = os.path.join(D, "bad.psk")
    with open(badpsk, "w") as f:
        f.write("alice:xyz\n")
    bad = os.path.join(D, "mismatch")
    cases = [("tls-psk = " + PSK, None, "a good PSK file"),
             ("tls-certificates = " + srvdir, None, "good certificates"),
             ("tls-psk = " + badpsk, "bad.psk:1:", "a malformed PSK file"),
             ("tls-psk = " + os.path.join(D, "no.psk"), "no.psk",
              "a missing PSK file"),
             ("tls-certificates = " + bad, "does not belong",
              "a key of another certificate"),
             ("", "tls-certificates or tls-psk", "tls without credentials")]
    for i, (line, needle, what) in enumerate(cases):
        conf = os.path.join(D, "check%d.conf" % i)
        with open(conf, "w") as f:
            f.write("[server]\nlisten = unix:%s\ntls = require\n%s\n"
                    "[export a]\nbackend = memory size=1M\n"
                    % (os.path.join(D, "check.sock"), line))
        r = run([T.NBDSTACK, "--check-config", conf])
        if needle is None:
            check(r.returncode == 0, "--check-config, %s: status %d: %s"
                  % (what, r.returncode, r.stderr.strip()))
        else:
            check(r.returncode != 0, "--check-config passed %s" % what)
            check(needle in r.stderr, "--check-config, %s: message %r lacks %r"
                  % (what, r.stderr.strip(), needle))


def t_print_uri():
    """nbds+unix:// in --print-uri and $uri when TLS is required (nbdkit
    does the same); with tls=on a plain client is served, so nbd+unix://."""
    sock = os.path.join(D, "uri.sock")
    # $uri with the PSK user and file added must reach the export.
    cmd = ('u=$(printf %%s "$uri" | sed "s|:///|://alice@/|"); '
           'echo "run: $uri"; nbdinfo --size "$u&tls-psk-file=%s"' % PSK)
    for mode, scheme in (("require", "nbds+unix://"), ("on", "nbd+unix://")):
        r = run([T.NBDSTACK, "-U", sock, "--tls=" + mode, "--tls-psk=" + PSK,
                 "--print-uri", "--run", cmd, "memory", "size=%d" % MiB])
        check(r.returncode == 0, "tls=%s --run: status %d: %s"
              % (mode, r.returncode, r.stderr.strip()))
        lines = r.stdout.splitlines()
        want = [scheme + "/?socket=" + sock, "run: " + scheme + "/?socket=" + sock]
        check(lines[:2] == want, "tls=%s: printed %r, want %r" % (mode, lines, want))
        if mode == "require":
            check(lines[2:] == [str(MiB)], "tls=require: nbdinfo through $uri "
                  "printed %r" % lines[2:])


C.run("X.509: nbdinfo over nbds+unix", t_x509_nbdinfo)
C.run("X.509: 3 MiB written and read back, 64 pipelined reads", t_x509_data)
C.run("X.509: nbdsh -u nbds+unix", t_x509_nbdsh)
C.run("tls=on: a plaintext client is served too", t_on_plain_too)
C.run("X.509: a client trusting another CA is refused", t_other_ca)
C.run("PSK: data round trip, two identities", t_psk_data)
C.run("PSK: wrong key and unknown identity refused, server unharmed", t_psk_wrong)
C.run("require: LIST/GO get TLS_REQD, ABORT works, TLS client beside", t_require_refuses_plain)
C.run("raw client in Python ssl: AEAD suite, second STARTTLS invalid, I/O", t_raw_x509)
C.run("garbage after STARTTLS: dropped, others served", t_garbage_after_starttls)
C.run("extended headers: only after STARTTLS, forgotten by it", t_extended_headers)
C.run("--tls-verify-peer: client certificate demanded", t_verify_peer)
C.run("qemu-img convert in and out with tls-creds-x509", t_qemu_img)
C.run("bad keys and settings stop the server at startup", t_bad_keys)
C.run("--check-config loads and checks the TLS credentials", t_check_config)
C.run("--print-uri and $uri say nbds+unix:// when TLS is required", t_print_uri)
C.finish([x509_on, psk_req, x509_req, x509_req_any])
