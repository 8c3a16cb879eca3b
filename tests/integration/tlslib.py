"""Certificates and PSK files for the TLS tests, made with certtool
(gnutls-bin) in the test's temporary directory; no key is committed.
Import after nbdtest (it uses nbdtest.TMPDIR)."""

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading

import nbdtest as T


def run(argv, **kw):
    kw.setdefault("timeout", 120)
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def skip_unless_tls():
    version = run([T.NBDSTACK, "--version"]).stdout
    if "TLS:" not in version or "not compiled in" in version:
        T.skip("%s was built without TLS" % T.NBDSTACK)
    if not shutil.which("certtool"):
        T.skip("certtool (gnutls-bin) is not installed")


def libnbd():
    """python3-libnbd's module nbd, or a skip."""
    try:
        import nbd
    except ImportError:
        T.skip("python3-libnbd (module nbd) not available to %s" % sys.executable)
    return nbd


def certtool(*args):
    r = run(["certtool"] + list(args))
    if r.returncode != 0:
        T.die("certtool %s: %s" % (" ".join(args), r.stderr.strip()))


def _template(name, text):
    path = os.path.join(T.TMPDIR, name + ".info")
    with open(path, "w") as f:
        f.write(text)
    return path


def mkdir(name):
    path = os.path.join(T.TMPDIR, name)
    os.makedirs(path, exist_ok=True)
    return path


def make_ca(name):
    """(key, cert) of a new self-signed CA."""
    key = os.path.join(T.TMPDIR, name + "-key.pem")
    cert = os.path.join(T.TMPDIR, name + "-cert.pem")
    certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", key)
    certtool("--generate-self-signed", "--load-privkey", key, "--template",
             _template(name, 'cn = "nbdstack test %s"\nca\ncert_signing_key\n'
                       'expiration_days = 2\n' % name), "--outfile", cert)
    return key, cert


def make_cert(ca, name, role, outdir, prefix, cn="localhost", key_type="ecdsa",
              expired=False):
    """outdir/PREFIX-{key,cert}.pem signed by ca; role is server or client."""
    key = os.path.join(outdir, prefix + "-key.pem")
    cert = os.path.join(outdir, prefix + "-cert.pem")
    dates = ('activation_date = "2020-01-01 00:00:00 UTC"\n'
             'expiration_date = "2020-02-01 00:00:00 UTC"\n' if expired
             else "expiration_days = 2\n")
    certtool("--generate-privkey", "--key-type=" + key_type, "--outfile", key)
    certtool("--generate-certificate", "--load-privkey", key,
             "--load-ca-certificate", ca[1], "--load-ca-privkey", ca[0],
             "--template", _template(name, 'cn = "%s"\ndns_name = "localhost"\n'
                                     'tls_www_%s\nencryption_key\nsigning_key\n%s'
                                     % (cn, role, dates)),
             "--outfile", cert)
    os.chmod(key, 0o600)


class Pki:
    """A CA, a server directory (ca-cert.pem, server-cert.pem,
    server-key.pem: nbdkit's and qemu's layout), a client directory with a
    client certificate (CN "alice"), a CA-only client directory, and a PSK
    file with alice and bob."""

    def __init__(self, prefix="pki"):
        self.ca = make_ca(prefix + "-ca")
        self.srv = mkdir(prefix + "-srv")
        self.cli = mkdir(prefix + "-cli")
        self.caonly = mkdir(prefix + "-caonly")
        make_cert(self.ca, prefix + "-server", "server", self.srv, "server",
                  key_type="rsa")
        make_cert(self.ca, prefix + "-client", "client", self.cli, "client",
                  cn="alice")
        for d in (self.srv, self.cli, self.caonly):
            shutil.copy(self.ca[1], os.path.join(d, "ca-cert.pem"))
        self.psk = os.path.join(T.TMPDIR, prefix + ".psk")
        self.keys = {"alice": os.urandom(32).hex(), "bob": os.urandom(32).hex()}
        write_psk(self.psk, self.keys)


def write_psk(path, keys):
    with open(path + ".tmp", "w") as f:
        for user, key in keys.items():
            f.write("%s:%s\n" % (user, key))
    os.rename(path + ".tmp", path)


def x509_uri(sock, certdir, export=""):
    return "nbds+unix:///%s?socket=%s&tls-certificates=%s" % (export, sock, certdir)


def psk_uri(sock, pskfile, user="alice", export=""):
    return "nbds+unix://%s@/%s?socket=%s&tls-psk-file=%s" % (user, export, sock,
                                                              pskfile)


class Relay:
    """127.0.0.1:port -> the server's Unix socket, after doing the NBD
    greeting and NBD_OPT_STARTTLS on the client's behalf."""

    def __init__(self, sock):
        self.sock = sock
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(1)
        self.port = self.ls.getsockname()[1]
        self.error = None
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self):
        try:
            c, _ = self.ls.accept()
            u = socket.socket(socket.AF_UNIX)
            u.connect(self.sock)
            g = b""
            while len(g) < 18:
                g += u.recv(18 - len(g))
            u.sendall(struct.pack(">I", 3))                   # FIXED_NEWSTYLE|NO_ZEROES
            u.sendall(struct.pack(">QII", T.IHAVEOPT, T.OPT_STARTTLS, 0))
            r = b""
            while len(r) < 20:
                r += u.recv(20 - len(r))
            if struct.unpack(">QIII", r)[2] != T.REP_ACK:
                self.error = "STARTTLS not acknowledged"
                return
            self.pump(c, u)
        except OSError as e:
            self.error = str(e)

    @staticmethod
    def pump(a, b):
        def one(src, dst):
            try:
                while True:
                    d = src.recv(65536)
                    if not d:
                        break
                    dst.sendall(d)
            except OSError:
                pass
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        t = threading.Thread(target=one, args=(b, a), daemon=True)
        t.start()
        one(a, b)
        t.join(10)
        a.close()
        b.close()
