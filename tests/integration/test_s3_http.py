"""The s3 backend against a fake S3 endpoint that answers badly on
purpose (no Ceph needed): malformed, oversized and cut-short answers are
an EIO with a log line, never a crash or hang; 5xx answers are retried
`retries=` times, then EIO, and a store that recovers is used again; 403
is EPERM, logged once with S3's error code; chunked bodies and keep-alive
work.  Every request's SigV4 signature is checked against the one
Debian's python3-botocore computes for the request as it arrived (Host
header, path, query, x-amz-date), path style and virtual-host style; and
the credentials and region come from the keys, the environment,
~/.aws/credentials and ~/.aws/config exactly as botocore picks them
(HOME is a temporary directory)."""

import json
import os
import re
import socket
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import (NBDSTACK, TMPDIR, Checker, Server, check, check_eq,  # noqa: E402
                     require_layers, start_watchdog, startup_refused)

start_watchdog(180)
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
            "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_CONFIG_FILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
for _v in AWS_VARS:
    os.environ.pop(_v, None)            # the tests give their own
HOME = os.path.join(TMPDIR, "home")
os.makedirs(os.path.join(HOME, ".aws"), exist_ok=True)
os.environ["HOME"] = HOME               # not the machine's ~/.aws
require_layers("s3")
import nbd  # noqa: E402

SIZE = 65536
counts = {}
lock = threading.Lock()
# access key -> secret the fake store knows; every request is checked.
SECRETS = {"AK": "SK"}
seen = []             # (host, path, access key, region, token) per request
bad_signatures = []


def botocore_authorization(method, host, path, body, date, ak, secret, token,
                           region, unsigned=False):
    """The Authorization header botocore computes for this request (with
    an unsigned payload as botocore sends it over https)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials
    req = AWSRequest(method=method, url="%s://%s%s" % (
        "https" if unsigned else "http", host, path), data=body,
        headers={"Host": host})
    if unsigned:
        req.context["client_config"] = Config(
            s3={"payload_signing_enabled": False})
    req.context["timestamp"] = date
    auth = S3SigV4Auth(Credentials(ak, secret, token), "s3", region)
    auth._modify_request_before_signing(req)
    cr = auth.canonical_request(req)
    sig = auth.signature(auth.string_to_sign(req, cr), req)
    auth._inject_signature_to_request(req, sig)
    return req.headers["Authorization"]


def verify(method, path, headers, body):
    """None when the request is signed as botocore signs it, else why not."""
    auth = headers.get("authorization", "")
    m = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/\d{8}/([^/]+)/s3/"
                 r"aws4_request, SignedHeaders=[^,]+, Signature=[0-9a-f]{64}$",
                 auth)
    if not m:
        return "malformed Authorization %r" % auth
    ak, region = m.group(1), m.group(2)
    token = headers.get("x-amz-security-token")
    with lock:
        seen.append((headers.get("host"), path, ak, region, token))
    if ak not in SECRETS:
        return "unknown access key %r" % ak
    want = botocore_authorization(
        method, headers.get("host"), path, body, headers.get("x-amz-date", ""),
        ak, SECRETS[ak], token, region,
        headers.get("x-amz-content-sha256") == "UNSIGNED-PAYLOAD")
    return None if want == auth else "ours %s, botocore %s" % (auth, want)


def pattern(off, n):
    return bytes((off + i) * 7 & 255 for i in range(n))


def answer(method, path, headers, body=b""):
    """-> (bytes to send, close after)"""
    name = path.split("?")[0].rsplit("/", 1)[-1]
    with lock:
        counts[name] = counts.get(name, 0) + 1
        n = counts[name]
    why = verify(method, path, headers, body)
    if why:
        with lock:
            bad_signatures.append(why)
        x = b"<Error><Code>SignatureDoesNotMatch</Code></Error>"
        return (b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n"
                % len(x) + x), False
    if path.startswith("/mb/"):
        return store_answer(method, path, headers, body), False
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
            body = f.read(int(headers.get("content-length", 0)))
            out, close = answer(method, path, headers, body)
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


accepted = [0]


def accept_loop():
    while True:
        c, _ = listener.accept()
        accepted[0] += 1
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


def one_read(srv):
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    check(bytes(h.pread(100, 7)) == pattern(7, 100), "read through %s"
          % srv.name)
    h.shutdown()


def botocore_url(addressing, endpoint, bucket, key):
    """Host and path botocore (boto3) puts a GET of bucket/key at."""
    import boto3
    from botocore.config import Config
    from urllib.parse import urlsplit
    c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="AK", aws_secret_access_key="SK",
                     config=Config(s3={"addressing_style": addressing}))
    u = urlsplit(c.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}))
    return u.netloc, u.path


def addressing():
    # Path style: Host is the endpoint's, the bucket leads the path.
    for style, endpoint, bucket in (
            ("path", "http://127.0.0.1:%d" % port, "b"),
            ("virtual", "http://localhost:%d" % port, "vbucket"),
            ("virtual", "http://LocalHost:%d" % port, "v-2x")):
        del seen[:]
        srv = Server(["s3", "endpoint-url=" + endpoint, "bucket=" + bucket,
                      "key=dir/good", "addressing=" + style, "access-key=AK",
                      "secret-key=SK"], name="addr-" + bucket)
        one_read(srv)
        srv.stop()
        host, path = botocore_url(style, endpoint, bucket, "dir/good")
        got = sorted({(h.lower(), p) for h, p, _, _, _ in seen})
        check_eq(got, [(host.lower(), path)],
                 "%s style: Host and path as botocore's" % style)
    check_eq(bad_signatures, [], "signatures differing from botocore's")
    # Refused: an address cannot carry a bucket; names that cannot be a
    # host label, dotted ones among them (botocore makes them path style).
    base = ["key=k", "access-key=a", "secret-key=s", "addressing=virtual"]
    startup_refused("s3", base + ["bucket=b1x", "endpoint-url=http://127.0.0.1:9"],
                    "needs a host name in endpoint-url")
    startup_refused("s3", base + ["bucket=b1x", "endpoint-url=http://[::1]:9"],
                    "needs a host name in endpoint-url")
    startup_refused("s3", base + ["bucket=My_Bucket", "endpoint-url=http://h:9"],
                    "bucket 'My_Bucket' cannot be part of a host name")
    startup_refused("s3", base + ["bucket=a.b.c", "endpoint-url=http://h:9"],
                    "bucket 'a.b.c' cannot be part of a host name")


BOTO_REF = r"""
import json, sys
import boto3
explicit = json.loads(sys.argv[1])
try:
    c = boto3.Session().client("s3", endpoint_url="http://127.0.0.1:9",
                               **explicit)
    cr = c._request_signer._credentials
    if cr is None:
        print(json.dumps({"error": "NoCredentials"}))
    else:
        f = cr.get_frozen_credentials()
        print(json.dumps({"ak": f.access_key, "sk": f.secret_key,
                          "token": f.token or None,
                          "region": c.meta.region_name}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__}))
"""


def aws_chain():
    """Each case: files under HOME, environment, explicit keys; nbdstack
    must sign with the access key, token and region botocore picks, or
    refuse to start where botocore fails."""
    aws = os.path.join(HOME, ".aws")
    other = os.path.join(TMPDIR, "other-aws")
    os.makedirs(other, exist_ok=True)
    CONF = ("[default]\nregion = eu-north-1\naws_access_key_id = CONFDEF\n"
            "aws_secret_access_key = sCONFDEF\n"
            "[profile p]\nregion = ap-east-1\naws_access_key_id = CONFP\n"
            "aws_secret_access_key = sCONFP\n"
            "[profile q]\nregion = ca-central-1\n"
            "[profile role]\nrole_arn = arn:aws:iam::1:role/x\n"
            "source_profile = p\n")
    CRED = ("[default]\naws_access_key_id = CREDDEF\n"
            "aws_secret_access_key = sCREDDEF\naws_session_token = tokdef\n"
            "[p]\naws_access_key_id = CREDP\naws_secret_access_key = sCREDP\n"
            "[q]\nAWS_ACCESS_KEY_ID: CREDQ\naws_secret_access_key: sCREDQ\n"
            "aws_security_token = sec\naws_session_token = ses\n"
            "region = sa-east-1\n"
            "[half]\naws_access_key_id = HALF\n")
    cases = [
        # name, config file, credentials file, environment, explicit keys
        ("config file only", CONF, None, {}, {}),
        ("credentials file before config file", CONF, CRED, {}, {}),
        ("AWS_PROFILE", CONF, CRED, {"AWS_PROFILE": "p"}, {}),
        ("AWS_DEFAULT_PROFILE before AWS_PROFILE", CONF, CRED,
         {"AWS_PROFILE": "p", "AWS_DEFAULT_PROFILE": "q"}, {}),
        ("profile only in the config file", CONF, "[x]\n",
         {"AWS_PROFILE": "p"}, {}),
        ("region of the credentials file", CONF, CRED,
         {"AWS_PROFILE": "q"}, {}),
        ("AWS_DEFAULT_REGION", CONF, CRED,
         {"AWS_PROFILE": "p", "AWS_DEFAULT_REGION": "me-south-1"}, {}),
        ("environment before the files", CONF, CRED,
         {"AWS_ACCESS_KEY_ID": "ENV", "AWS_SECRET_ACCESS_KEY": "sENV",
          "AWS_SESSION_TOKEN": "envtok", "AWS_PROFILE": "p"}, {}),
        ("keys before the environment", CONF, CRED,
         {"AWS_ACCESS_KEY_ID": "ENV", "AWS_SECRET_ACCESS_KEY": "sENV",
          "AWS_SESSION_TOKEN": "envtok"},
         {"aws_access_key_id": "KEY", "aws_secret_access_key": "sKEY"}),
        ("files named by the environment", None, None,
         {"AWS_SHARED_CREDENTIALS_FILE": os.path.join(other, "c"),
          "AWS_CONFIG_FILE": os.path.join(other, "f")}, {}),
        ("a missing profile", CONF, CRED, {"AWS_PROFILE": "nope"}, {}),
        ("keys, and a missing profile", CONF, CRED, {"AWS_PROFILE": "nope"},
         {"aws_access_key_id": "KEY", "aws_secret_access_key": "sKEY"}),
        ("an access key without its secret in the environment", CONF, CRED,
         {"AWS_ACCESS_KEY_ID": "ENV"}, {}),
        ("a profile without its secret", CONF, CRED,
         {"AWS_PROFILE": "half"}, {}),
        ("a role to assume", CONF, "[x]\n", {"AWS_PROFILE": "role"}, {}),
        ("no credentials anywhere", None, None, {}, {}),
    ]
    with open(os.path.join(other, "c"), "w") as f:
        f.write("[default]\naws_access_key_id = OTHERC\n"
                "aws_secret_access_key = sOTHERC\n")
    with open(os.path.join(other, "f"), "w") as f:
        f.write("[default]\nregion = af-south-1\n")
    for name, conf, cred, env_add, explicit in cases:
        for fname, text in (("config", conf), ("credentials", cred)):
            path = os.path.join(aws, fname)
            if text is None:
                if os.path.exists(path):
                    os.unlink(path)
            else:
                with open(path, "w") as f:
                    f.write(text)
        env = dict(os.environ, **env_add)
        ref = json.loads(subprocess.run(
            ["/usr/bin/python3", "-c", BOTO_REF, json.dumps(explicit)],
            env=env, capture_output=True, text=True, check=True).stdout)
        keys = []
        if explicit:
            keys = ["access-key=" + explicit["aws_access_key_id"],
                    "secret-key=" + explicit["aws_secret_access_key"]]
        args = ["s3", "endpoint-url=http://127.0.0.1:%d" % port, "bucket=b",
                "key=good"] + keys
        if "error" in ref:
            r = subprocess.run([NBDSTACK, "-U", os.path.join(TMPDIR, "x")]
                               + args, env=env, capture_output=True,
                               text=True, timeout=10)
            check(r.returncode != 0, "%s: botocore fails (%s), nbdstack "
                  "refused to start: %r" % (name, ref["error"],
                                            r.stderr.strip()[-300:]))
            continue
        SECRETS[ref["ak"]] = ref["sk"]
        del seen[:]
        srv = Server(args, name="chain", env=env)
        one_read(srv)
        srv.stop()
        got = sorted({(ak, region, token) for _, _, ak, region, token in seen})
        check_eq(got, [(ref["ak"], ref["region"], ref["token"])],
                 "%s: access key, region, token as botocore's" % name)
    check_eq(bad_signatures, [], "signatures differing from botocore's")
    for fname in ("config", "credentials"):
        if os.path.exists(os.path.join(aws, fname)):
            os.unlink(os.path.join(aws, fname))


# ---- bucket "mb": a small in-memory store, counting what is asked -----------

store = {}            # key -> bytes
etags = {}            # key -> ETag, for If-Match
store_ops = []        # (method, kind): kind "lease", "list" or "block"


def store_answer(method, path, headers, body):
    from urllib.parse import unquote
    p, _, query = path.partition("?")
    key = unquote(p[len("/mb/"):])
    kind = "list" if "list-type=2" in query else (
        "lease" if key.endswith("/lease") else "block")
    with lock:
        store_ops.append((method, kind))
    empty = b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n"
    if kind == "list":
        prefix = unquote(re.search(r"prefix=([^&]*)", query).group(1))
        x = b"<ListBucketResult><IsTruncated>false</IsTruncated>"
        for k in sorted(store):
            if k.startswith(prefix):
                x += b"<Contents><Key>%s</Key></Contents>" % k.encode()
        x += b"</ListBucketResult>"
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(x) + x
    if method == "PUT":
        with lock:
            if headers.get("if-none-match") == "*" and key in store:
                return empty % 412
            if "if-match" in headers and etags.get(key) != headers["if-match"]:
                return empty % 412
            store[key] = body
            etags[key] = "e%d" % len(store_ops)
            return (b"HTTP/1.1 200 OK\r\nETag: \"%s\"\r\nContent-Length: 0"
                    b"\r\n\r\n" % etags[key].encode())
    if method == "DELETE":
        store.pop(key, None)
        return empty % 204
    if key not in store:
        return empty % 404
    data = store[key]
    if "range" not in headers:
        return (b"HTTP/1.1 200 OK\r\nETag: \"%s\"\r\nContent-Length: %d\r\n"
                b"\r\n" % (etags.get(key, "x").encode(), len(data)) + data)
    a, b = (int(x) for x in headers["range"][6:].split("-"))
    piece = data[a:b + 1]
    return (b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n\r\n"
            % len(piece) + piece)


def no_avoidable_requests():
    """Whole-object writes are one PUT each, with no GET or HEAD; zero and
    trim of objects known absent send nothing; a zero that empties an
    object deletes it; keep-alive: no more TCP connections than
    connections=; payload-signing=false sends UNSIGNED-PAYLOAD, signed as
    botocore signs it."""
    K = 65536
    for signing in ("auto", "false"):
        store.clear()
        del store_ops[:]
        before = accepted[0]
        srv = Server(["s3", "endpoint-url=http://127.0.0.1:%d" % port,
                      "bucket=mb", "key=d", "size=%d" % (64 * K),
                      "object-size=%d" % K, "access-key=AK", "secret-key=SK",
                      "connections=3", "payload-signing=" + signing],
                     name="count-" + signing)
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        opened = list(store_ops)
        check_eq(sorted(opened), [("GET", "list"), ("PUT", "lease")],
                 "open: the lease and one LIST")

        def ops(f, *a):
            del store_ops[:]
            f(*a)
            return sorted(store_ops)

        check_eq(ops(h.pwrite, os.urandom(16 * K), 0),
                 [("PUT", "block")] * 16, "1 MiB write: 16 PUTs, nothing else")
        check_eq(ops(h.zero, 16 * K, 32 * K), [],
                 "zero of absent objects: nothing sent")
        check_eq(ops(h.trim, 16 * K, 32 * K), [],
                 "trim of absent objects: nothing sent")
        check_eq(ops(h.pwrite, b"x" * 100, 20 * K + 5), [("PUT", "block")],
                 "partial write to an absent object: no GET")
        check_eq(ops(h.pwrite, b"y" * 100, 3 * K + 5),
                 [("GET", "block"), ("PUT", "block")],
                 "partial write to an object: GET and PUT")
        check_eq(ops(h.zero, 2 * K, 4 * K), [("DELETE", "block")] * 2,
                 "zero of two whole objects: two DELETEs")
        check_eq(ops(h.zero, K - 100, 20 * K + 5), [("DELETE", "block"),
                                                    ("GET", "block")],
                 "zero leaving an object all zero: GET and DELETE")
        check(bytes(h.pread(64 * K, 0)) == bytes(h.pread(64 * K, 0)), "reads")
        h.shutdown()
        srv.stop()
        check(accepted[0] - before <= 3, "%d TCP connections for %d requests "
              "(connections=3)" % (accepted[0] - before, len(store_ops)))
    check_eq(bad_signatures, [], "signatures differing from botocore's")


def lease_churn():
    """Writable connections opening and closing at once, over and over:
    the lease passes from the last close to the next open, nothing is
    refused, the server stops at once, and the lease is released at the
    end.  (The race of a close stopping the renewer with an open starting
    the next one, fixed by the renewer's epoch, has too small a window to
    be hit here on purpose.)"""
    store.clear()
    srv = Server(["s3", "endpoint-url=http://127.0.0.1:%d" % port,
                  "bucket=mb", "key=churn", "size=1M", "object-size=64K",
                  "access-key=AK", "secret-key=SK"], name="churn")
    errors = []

    def client(c):
        try:
            for i in range(25):
                h = nbd.NBD()
                h.connect_uri(srv.uri)
                h.pwrite(bytes([c * 25 + i]) * 512, c * 65536)
                h.shutdown()
        except Exception as e:              # noqa: BLE001
            errors.append(repr(e))

    ts = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    check_eq(errors, [], "client errors")
    check_eq(srv.stop(), 0, "exit status of a prompt stop")
    check("churn/lease" not in store, "lease released")
    check_eq(sorted(k for k in store if k != "churn/lease"),
             ["churn/%016x" % c for c in range(4)], "objects")


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
c.run("path and virtual-host style: Host, path, signature as botocore's",
      addressing)
c.run("credentials and region: keys, environment, ~/.aws as botocore",
      aws_chain)
c.run("no avoidable requests; keep-alive; payload-signing",
      no_avoidable_requests)
c.run("lease passed between closing and opening writers", lease_churn)
c.finish()
