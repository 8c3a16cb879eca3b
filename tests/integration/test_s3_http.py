"""The s3 backend against a fake S3 endpoint that answers badly on
purpose (no Ceph needed): malformed, oversized and cut-short answers are
an EIO with a log line, never a crash or hang; 5xx answers are retried
`retries=` times, then EIO, and a store that recovers is used again; 403
is EPERM, logged once with S3's error code; chunked bodies and keep-alive
work; every request is signed (SigV4 Authorization header present)."""

import os
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import (TMPDIR, Checker, Server, check, check_eq,  # noqa: E402
                     require_layers, start_watchdog, startup_refused)

start_watchdog(120)
for _v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ.pop(_v, None)            # the tests give their own
require_layers("s3")
import nbd  # noqa: E402

SIZE = 65536
counts = {}
lock = threading.Lock()


def pattern(off, n):
    return bytes((off + i) * 7 & 255 for i in range(n))


def answer(method, path, headers):
    """-> (bytes to send, close after)"""
    name = path.split("?")[0].rsplit("/", 1)[-1]
    with lock:
        counts[name] = counts.get(name, 0) + 1
        n = counts[name]
    if "authorization" not in headers or \
            not headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AK/"):
        return b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", False
    if method == "HEAD":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE, False
    rng = headers.get("range", "bytes=0-%d" % (SIZE - 1))[6:].split("-")
    a, b = int(rng[0]), int(rng[1])
    body = pattern(a, b - a + 1)
    ok = b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    if name == "good":
        # chunked, in pieces of 1000
        out = b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\n"
        for i in range(0, len(body), 1000):
            piece = body[i:i + 1000]
            out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        return out + b"0\r\n\r\n", False
    if name == "garbage":
        return b"HTTP/1.1 2xx what\r\n\r\n", True
    if name == "bighead":
        return b"HTTP/1.1 206 OK\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", True
    if name == "toolong":
        return (b"HTTP/1.1 206 OK\r\nContent-Length: %d\r\n\r\n" % (len(body) + 10)
                + body + b"0123456789"), True
    if name == "short":
        return b"HTTP/1.1 206 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10], True
    if name == "err500":
        return (b"HTTP/1.1 500 Internal\r\nContent-Length: 52\r\n\r\n"
                b"<Error><Code>InternalError</Code><Message/></Error>\n"), False
    if name == "flaky":
        if n % 2 == 0:                      # HEAD was 1: GETs 2, 4 fail
            return b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n", False
        return ok, False
    if name == "deny":
        x = b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
        return b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n" % len(x) + x, False
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False


def serve_conn(c):
    f = c.makefile("rb")
    try:
        while True:
            line = f.readline()
            if not line:
                return
            method, path, _ = line.decode().split(" ", 2)
            headers = {}
            while True:
                h = f.readline().decode()
                if h in ("\r\n", ""):
                    break
                k, v = h.split(":", 1)
                headers[k.strip().lower()] = v.strip()
            if int(headers.get("content-length", 0)):
                f.read(int(headers["content-length"]))
            out, close = answer(method, path, headers)
            c.sendall(out)
            if close:
                return
    except OSError:
        pass
    finally:
        c.close()


listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
port = listener.getsockname()[1]


def accept_loop():
    while True:
        c, _ = listener.accept()
        threading.Thread(target=serve_conn, args=(c,), daemon=True).start()


threading.Thread(target=accept_loop, daemon=True).start()


def server(key, extra=(), creds=("access-key=AK", "secret-key=SK"), env=None):
    return Server(["s3", "endpoint-url=http://127.0.0.1:%d" % port, "bucket=b",
                   "key=" + key] + list(creds) + list(extra), name=key, env=env)


def read_fails(key, errno_names, log_words, extra=()):
    srv = server(key, extra)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    check_eq(h.get_size(), SIZE, "size from HEAD")
    try:
        h.pread(4096, 100)
        check(False, "read of %s succeeded" % key)
    except nbd.Error as e:
        check(e.errno in errno_names, "%s: errno %r" % (key, e.errno))
    check(srv.alive(), "server still running")
    log = srv.log_text()
    for w in log_words:
        check(w in log, "log mentions %r" % w)
    h.shutdown()
    srv.stop()
    return srv


def good():
    srv = server("good")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    check(h.is_read_only(), "one object is read-only")
    for off, n in ((0, SIZE), (1, 4095), (SIZE - 3, 3), (12345, 20000)):
        check(bytes(h.pread(n, off)) == pattern(off, n), "read %d+%d" % (off, n))
    h.shutdown()
    srv.stop()


def retried():
    counts.clear()
    read_fails("err500", ("EIO", 5), ["HTTP 500 InternalError"], ["retries=2"])
    check_eq(counts.get("err500"), 1 + 3, "HEAD + 3 GETs (1 + retries=2)")


def flaky():
    counts.clear()
    srv = server("flaky", ["retries=1"])
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    check(bytes(h.pread(100, 50)) == pattern(50, 100), "read after a 503")
    h.shutdown()
    srv.stop()


def denied():
    srv = read_fails("deny", ("EPERM", 1), ["AccessDenied", "access denied"])
    check_eq(srv.log_text().count("access denied"), 1, "logged once")


def credentials():
    # access-key=+FILE (first line), the secret from the environment.
    path = os.path.join(TMPDIR, "access")
    with open(path, "w") as f:
        f.write("AK\nignored second line\n")
    env = dict(os.environ, AWS_SECRET_ACCESS_KEY="SK")
    env.pop("AWS_ACCESS_KEY_ID", None)
    srv = server("good", creds=["access-key=+" + path], env=env)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    check(bytes(h.pread(10, 0)) == pattern(0, 10), "signed with AK")
    h.shutdown()
    srv.stop()


def refused():
    base = ["endpoint-url=http://127.0.0.1:1", "bucket=b", "key=k",
            "access-key=a", "secret-key=s"]
    startup_refused("s3", base + ["size=1M"], "size= and object-size= go together")
    startup_refused("s3", base + ["size=1M", "object-size=3000"],
                    "must be a power of two from 4K to 64M")
    startup_refused("s3", base + ["size=1M", "object-size=128M"],
                    "must be a power of two from 4K to 64M")
    startup_refused("s3", base + ["size=100000", "object-size=64K"],
                    "multiple of object-size")
    startup_refused("s3", ["bucket=b", "key=k", "access-key=a", "secret-key=s",
                           "endpoint-url=ftp://x"], "must start with http://")
    startup_refused("s3", ["bucket=b", "key=k", "access-key=a", "secret-key=s",
                           "endpoint-url=http://h:99x"], "is not http[s]://HOST[:PORT]")
    startup_refused("s3", ["bucket=b", "key=k", "access-key=+/nonexistent/f",
                           "secret-key=s"], "access-key=+/nonexistent/f")
    startup_refused("s3", base + ["connections=0"], "connections=0")
    startup_refused("s3", base + ["lease-time=1s"], "lease-time must be at least 3s")
    startup_refused("s3", ["bucket=b", "key=k"], "no credentials")


c = Checker("s3 http")
c.run("+FILE and environment credentials", credentials)
c.run("bad configurations refused at startup", refused)
c.run("chunked bodies, unaligned ranges, keep-alive", good)
c.run("malformed status line: EIO", read_fails, "garbage", ("EIO", 5),
      ["malformed HTTP response head"], ["retries=0"])
c.run("head over 16 KiB: EIO", read_fails, "bighead", ("EIO", 5),
      ["malformed HTTP response head"], ["retries=0"])
c.run("body longer than asked: EIO", read_fails, "toolong", ("EIO", 5),
      ["larger than expected"], ["retries=0"])
c.run("body cut short: EIO", read_fails, "short", ("EIO", 5), ["cut short"],
      ["retries=0"])
c.run("500: retried, then EIO", retried)
c.run("503 then 206: retried and served", flaky)
c.run("403: EPERM, code logged once", denied)
c.finish()
