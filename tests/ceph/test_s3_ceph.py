"""The s3 backend against a real single-node Ceph cluster (cluster.sh):
data in and out with nbdcopy and qemu-img, holes in the map, concurrent
partial writes to one object, the lease, the gateway going away in the
middle of I/O, restarts, SIGKILL after FLUSH (with and without cache in
front), a single object served read-only, and disks written by nbdkit's
S3 plugin read back here and the other way round.

The cluster must start: when it cannot, this test fails with its log
(it does not skip).  CTest runs it with the label `ceph` and the resource
lock `ceph` (the monitor's port is fixed)."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.environ["SRCDIR"], "tests", "integration"))
from nbdtest import (TMPDIR, Checker, Server, check, check_eq, log, die,  # noqa: E402
                     start_watchdog)
import nbd  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CLUSTER = os.path.join(HERE, "cluster.sh")
CDIR = os.path.join(TMPDIR, "ceph")
PORT = int(os.environ.get("CEPH_RGW_PORT", "47480"))
ENDPOINT = "http://127.0.0.1:%d" % PORT
ACCESS = "nbdstacktestaccess"
SECRET = "nbdstacktestsecret0123456789abcdefghijkl"
BUCKET = "nbdtest"
MiB = 1 << 20

start_watchdog(int(os.environ.get("TEST_DEADLINE", "880")))


def cluster(*args):
    r = subprocess.run(["bash", CLUSTER] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        log(r.stderr)
        raise RuntimeError("cluster.sh %s failed" % " ".join(args))
    return r.stdout


def stop_cluster():
    subprocess.run(["bash", CLUSTER, "stop", CDIR])


def s3client():
    import boto3
    return boto3.client("s3", endpoint_url=ENDPOINT, aws_access_key_id=ACCESS,
                        aws_secret_access_key=SECRET, region_name="us-east-1")


def s3args(key, size=None, objsz=None, extra=()):
    a = ["s3", "endpoint-url=" + ENDPOINT, "bucket=" + BUCKET, "key=" + key,
         "access-key=" + ACCESS, "secret-key=" + SECRET]
    if size:
        a += ["size=%d" % size, "object-size=%d" % objsz]
    return a + list(extra)


def connect(srv, export=None):
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri(srv.uri_for(export) if export else srv.uri)
    return h


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run(cmd, **kw):
    log("+ " + " ".join(cmd))
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (cmd[0], r.returncode, r.stderr))
    return r.stdout


def randfile(name, size):
    path = os.path.join(TMPDIR, name)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return path


# ---- cases ---------------------------------------------------------------

def nbdcopy_in_out():
    src = randfile("rand256", 256 * MiB)
    srv = Server(s3args("copy", 256 * MiB, MiB), name="copy")
    run(["nbdcopy", src, srv.uri])
    out = os.path.join(TMPDIR, "out256")
    run(["nbdcopy", srv.uri, out])
    check_eq(sha(out), sha(src), "nbdcopy out of the s3 disk")
    srv.stop()
    # A new server on the same prefix reads back everything acknowledged.
    srv = Server(s3args("copy", 256 * MiB, MiB), name="copy2")
    os.unlink(out)
    run(["nbdcopy", srv.uri, out])
    check_eq(sha(out), sha(src), "nbdcopy after a restart")
    srv.stop()
    os.unlink(out)
    os.unlink(src)


def qemu_img():
    src = randfile("q.raw", 8 * MiB)
    srv = Server(s3args("qemu", 16 * MiB, 256 * 1024), name="qemu")
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src,
         srv.uri])
    out = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", src,
               srv.uri])
    log(out)
    # The second half was never written: qemu-img compare says the
    # images differ in size, so compare that part through nbdsh instead.
    h = connect(srv)
    check(h.pread(8 * MiB, 8 * MiB) == bytes(8 * MiB), "unwritten half is zero")
    h.shutdown()
    srv.stop()


def map_holes():
    srv = Server(s3args("holes", 16 * MiB, MiB), name="holes")
    h = connect(srv)
    h.pwrite(b"a" * MiB, 2 * MiB)
    h.pwrite(b"b" * 100, 5 * MiB + 7)          # partial: object 5 exists
    h.shutdown()
    out = run(["nbdinfo", "--map", srv.uri])
    log(out)
    rows = [line.split() for line in out.splitlines() if line.strip()]
    got = [(int(r[0]), int(r[1]), r[3]) for r in rows]
    want = [(0, 2 * MiB, "hole,zero"), (2 * MiB, MiB, "data"),
            (3 * MiB, 2 * MiB, "hole,zero"), (5 * MiB, MiB, "data"),
            (6 * MiB, 10 * MiB, "hole,zero")]
    check_eq(got, want, "nbdinfo --map")
    # Zeroing a whole object deletes it: a hole again.
    h = connect(srv)
    h.zero(MiB, 2 * MiB)
    check(h.pread(MiB, 2 * MiB) == bytes(MiB), "zeroed object reads zeros")
    h.shutdown()
    names = [o["Key"] for o in s3client().list_objects_v2(
        Bucket=BUCKET, Prefix="holes/").get("Contents", [])]
    check_eq(names, ["holes/0000000000000005"], "objects after the zero")
    srv.stop()


def concurrent_partial():
    srv = Server(s3args("conc", 1 * MiB, 64 * 1024), name="conc")
    # 8 clients, each writing 40 unaligned pieces into object 3 (and one
    # straddling objects 3 and 4), interleaved: nothing may be lost.
    base = 3 * 65536
    pieces = {}
    for c in range(8):
        for i in range(40):
            off = base + (i * 8 + c) * 201 + 13
            pieces[(c, i)] = (off, bytes([c * 40 + i & 255 or 1]) * 150)
    errors = []

    def writer(c):
        try:
            h = connect(srv)
            for i in range(40):
                off, data = pieces[(c, i)]
                h.pwrite(data, off)
            h.shutdown()
        except Exception as e:              # noqa: BLE001
            errors.append(repr(e))

    ts = [threading.Thread(target=writer, args=(c,)) for c in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    check_eq(errors, [], "writer errors")
    h = connect(srv)
    lost = 0
    for (c, i), (off, data) in pieces.items():
        if h.pread(len(data), off) != data:
            lost += 1
    check_eq(lost, 0, "pieces lost")
    h.shutdown()
    srv.stop()


def lease():
    w = Server(s3args("lease", 4 * MiB, MiB), name="lease-w")
    h = connect(w)
    h.pwrite(b"w" * 4096, 0)
    # A second writable server is refused, naming the holder...
    w2 = Server(s3args("lease", 4 * MiB, MiB), name="lease-w2")
    try:
        connect(w2)
        check(False, "second writer was served")
    except nbd.Error:
        pass
    check("is held by" in w2.log_text() and "until" in w2.log_text(),
          "refusal names holder and expiry")
    # ...while a read-only one is served, and reports all data (its map
    # may be stale while another server writes).
    r = Server(["-r"] + s3args("lease", 4 * MiB, MiB), name="lease-r")
    g = connect(r)
    check_eq(bytes(g.pread(4, 0)), b"wwww", "read-only server reads")
    ext = []
    g.block_status(4 * MiB, 0, lambda m, o, e, err: ext.extend(e) or 0)
    check_eq(ext[1], 0, "read-only server reports data while leased")
    g.shutdown()
    h.shutdown()
    # The lease is released at close: now the second server may write.
    time.sleep(0.5)
    h2 = connect(w2)
    h2.pwrite(b"v" * 4096, 0)
    h2.shutdown()
    for s in (w, w2, r):
        s.stop()
    # A stale lease (a writer that died) is taken over.
    c = s3client()
    c.put_object(Bucket=BUCKET, Key="lease/lease",
                 Body=b"nbdstack lease\nowner dead server\nexpires 1000\n")
    w3 = Server(s3args("lease", 4 * MiB, MiB), name="lease-w3")
    h3 = connect(w3)
    h3.pwrite(b"u" * 4096, 0)
    h3.shutdown()
    check("took over" in w3.log_text(), "takeover logged")
    w3.stop()


def gateway_down():
    cfg = os.path.join(TMPDIR, "gw.conf")
    sock = os.path.join(TMPDIR, "gw.sock")
    with open(cfg, "w") as f:
        f.write("[server]\nlisten = unix:%s\n\n[export s3]\nbackend = %s\n\n"
                "[export mem]\nbackend = memory 1M\n"
                % (sock, " ".join(s3args("gw", 8 * MiB, MiB,
                                         ["retries=2", "lease-time=6s"]))))
    srv = Server(config=cfg, sock=sock, name="gw")
    h = connect(srv, "s3")
    m = connect(srv, "mem")
    data = os.urandom(2 * MiB)
    h.pwrite(data, 0)
    h.flush()
    stop = threading.Event()
    errs = []

    def io():
        while not stop.is_set():
            try:
                h.pread(MiB, 0)
            except nbd.Error as e:
                errs.append(e.errno)
                return

    t = threading.Thread(target=io)
    t.start()
    time.sleep(0.5)
    cluster("stop-rgw", CDIR)
    t.join(60)
    stop.set()
    check(errs and errs[0] in (5, "EIO"), "I/O with the gateway gone fails with EIO "
          "(got %r)" % errs)
    m.pwrite(b"m" * 512, 0)
    check_eq(bytes(m.pread(512, 0)), b"m" * 512, "other export still served")
    # Past the lease time without renewal: EROFS for writes.
    time.sleep(7)
    try:
        h.pwrite(b"x" * 512, 0)
        check(False, "write without a renewed lease succeeded")
    except nbd.Error as e:
        # EROFS travels as NBD_EPERM (the protocol has no EROFS).
        check(e.errno in (1, "EPERM"), "write without lease: EROFS/EPERM "
              "(got %r)" % e.errno)
        check("writes fail with EROFS" in srv.log_text(), "EROFS logged")
    cluster("start-rgw", CDIR)
    # Renewal resumes (within lease-time/3) and so do writes.
    deadline = time.monotonic() + 30
    while True:
        try:
            h.pwrite(data[:MiB], 0)
            break
        except nbd.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    check(bytes(h.pread(2 * MiB, 0)) == data, "data back after the gateway")
    h.shutdown()
    m.shutdown()
    srv.stop()


def sigkill_after_flush(cache):
    key = "kill-cache" if cache else "kill"
    pre = ["--filter", "cache"] if cache else []
    srv = Server(pre + s3args(key, 8 * MiB, MiB), name=key)
    h = connect(srv)
    data = os.urandom(3 * MiB + 4097)
    h.pwrite(data, 12345)
    h.flush()
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    # The dead writer's lease is still there: take it over after expiry
    # would take 60 s, so delete it as an operator would.
    s3client().delete_object(Bucket=BUCKET, Key=key + "/lease")
    srv2 = Server(["-r"] + s3args(key, 8 * MiB, MiB), name=key + "-2")
    g = connect(srv2)
    check(bytes(g.pread(len(data), 12345)) == data,
          "everything flushed survives SIGKILL")
    g.shutdown()
    srv2.stop()


def single_object():
    c = s3client()
    img = os.urandom(3 * MiB + 1000)
    c.put_object(Bucket=BUCKET, Key="images/golden.img", Body=img)
    srv = Server(s3args("images/golden.img"), name="single")
    h = connect(srv)
    check_eq(h.get_size(), len(img), "size of the object")
    check(h.is_read_only(), "single object is read-only")
    check(bytes(h.pread(len(img), 0)) == img, "object content")
    check(bytes(h.pread(777, 3 * MiB + 1)) == img[3 * MiB + 1:3 * MiB + 778],
          "unaligned tail")
    h.shutdown()
    srv.stop()
    # cow in front: a writable scratch copy of the golden image.
    srv = Server(["--filter", "cow"] + s3args("images/golden.img"),
                 name="single-cow")
    h = connect(srv)
    h.pwrite(b"z" * 4096, 4096)
    check_eq(bytes(h.pread(4096, 4096)), b"z" * 4096, "cow over s3")
    h.shutdown()
    srv.stop()
    check(c.get_object(Bucket=BUCKET, Key="images/golden.img")["Body"].read()
          == img, "golden image unchanged")


def nbdkit_interop():
    def kit(key, cmd):
        return ["nbdkit", "-U", "-", "--run", cmd, "S3",
                "endpoint-url=" + ENDPOINT, "bucket=" + BUCKET,
                "access-key=" + ACCESS, "secret-key=" + SECRET,
                "size=%d" % (4 * MiB), "object-size=65536", "key=" + key]
    # nbdkit writes, nbdstack reads.
    src = randfile("kit.raw", 4 * MiB)
    run(kit("fromkit", "nbdcopy %s $uri" % src))
    srv = Server(s3args("fromkit", 4 * MiB, 65536), name="fromkit")
    out = os.path.join(TMPDIR, "kit.out")
    run(["nbdcopy", srv.uri, out])
    check_eq(sha(out), sha(src), "nbdkit's disk read by nbdstack")
    srv.stop()
    # nbdstack writes (with holes), nbdkit reads.
    srv = Server(s3args("tokit", 4 * MiB, 65536), name="tokit")
    h = connect(srv)
    part = os.urandom(300000)
    h.pwrite(part, 70001)
    h.shutdown()
    srv.stop()
    os.unlink(out)
    run(kit("tokit", "nbdcopy $uri %s" % out))
    with open(out, "rb") as f:
        got = f.read()
    want = bytes(70001) + part + bytes(4 * MiB - 70001 - len(part))
    check(got == want, "nbdstack's disk read by nbdkit")


def access_denied():
    # A wrong secret: 403 from the store, EPERM to the client, logged once.
    args = s3args("copy", 256 * MiB, MiB)
    args = [a if not a.startswith("secret-key=") else "secret-key=wrong"
            for a in args]
    srv = Server(["-r"] + args, name="denied")
    h = connect(srv)
    for _ in range(3):
        try:
            h.pread(512, 0)
            check(False, "read with a wrong key succeeded")
        except nbd.Error as e:
            check(e.errno in (1, "EPERM"), "EPERM (got %r)" % e.errno)
    h.shutdown()
    log_text = srv.log_text()
    check_eq(log_text.count("access denied"), 1, "403 logged once")
    check("SignatureDoesNotMatch" in log_text, "S3 error code logged")
    srv.stop()


def https():
    ca = os.path.join(CDIR, "ca.pem")
    # A name, not 127.0.0.1: mbedTLS 2.28 checks DNS names only (no IP SANs).
    url = "https://localhost:%d" % (PORT + 1)
    base = [a for a in s3args("tls", 4 * MiB, 64 * 1024)
            if not a.startswith("endpoint-url=")] + ["endpoint-url=" + url]
    srv = Server(base + ["tls-ca=" + ca], name="tls")
    h = connect(srv)
    data = os.urandom(100000)
    h.pwrite(data, 12345)
    check(bytes(h.pread(len(data), 12345)) == data, "data over https")
    h.shutdown()
    srv.stop()
    # Without the CA the certificate is refused; tls-verify=false accepts.
    srv = Server(["-r"] + base + ["tls-ca=/etc/ssl/certs/ca-certificates.crt"],
                 name="tls-bad")
    try:
        connect(srv).pread(512, 0)
        check(False, "unverified certificate accepted")
    except nbd.Error:
        pass
    check("verif" in srv.log_text().lower(), "verification failure logged")
    srv.stop()
    srv = Server(["-r"] + base + ["tls-verify=false"], name="tls-noverify")
    check(bytes(connect(srv).pread(len(data), 12345)) == data,
          "tls-verify=false")
    srv.stop()


def main():
    try:
        log(cluster("start", CDIR, str(PORT)).strip())
    except RuntimeError:
        stop_cluster()
        die("the Ceph cluster did not start (log above)")
    try:
        s3client().create_bucket(Bucket=BUCKET)
        c = Checker("s3 on ceph")
        only = os.environ.get("S3_TEST_ONLY")
        if only:
            c.run(only, globals()[only])
            stop_cluster()
            c.finish()
        c.run("nbdcopy 256 MiB in and out, and after a restart", nbdcopy_in_out)
        c.run("qemu-img convert and compare", qemu_img)
        c.run("nbdinfo --map shows holes", map_holes)
        c.run("8 concurrent unaligned writers on one object", concurrent_partial)
        c.run("lease: second writer refused, read-only served, takeover", lease)
        c.run("SIGKILL after FLUSH loses nothing", sigkill_after_flush, False)
        c.run("SIGKILL after FLUSH with cache in front", sigkill_after_flush, True)
        c.run("single object read-only, cow in front", single_object)
        c.run("403: EPERM, logged once with the S3 code", access_denied)
        c.run("https: tls-ca, refused without it, tls-verify=false", https)
        c.run("disks of nbdkit S3 and nbdstack read by the other", nbdkit_interop)
        c.run("gateway stopped mid-I/O: EIO, other exports served", gateway_down)
    finally:
        stop_cluster()
    c.finish()


main()
