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
def free_ports(n):
    """A port p with p .. p+n-1 free on 127.0.0.1 (for the monitor, or the
    gateway's http and https), so clusters of other runs on this host do
    not collide with this one."""
    import socket
    for _ in range(200):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p + n > 65535:
            continue
        try:
            for i in range(n):
                t = socket.socket()
                t.bind(("127.0.0.1", p + i))
                t.close()
            return p
        except OSError:
            continue
    raise RuntimeError("no free ports")


PORT = int(os.environ.get("CEPH_RGW_PORT", "0")) or free_ports(2)
os.environ.setdefault("CEPH_MON_PORT", str(free_ports(1)))
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
    # List once the server is gone: until then it holds holes/lease (a
    # client's disconnect does not wait for the server's close, which
    # releases the lease; listing before that was this test's flake).
    srv.stop()
    check_eq(list_keys("holes/"), ["holes/0000000000000005"],
             "objects after the zero, lease released at exit")


def list_keys(prefix):
    return [o["Key"] for o in s3client().list_objects_v2(
        Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def map_of(uri):
    """nbdinfo --map as (offset, length, description) rows."""
    out = run(["nbdinfo", "--map", uri])
    return [(int(r[0]), int(r[1]), r[3]) for r in
            (line.split() for line in out.splitlines() if line.strip())]


def foreign_objects():
    """Objects under the prefix that are not blocks (the lease, names
    strtoull would take, other tools' files, a longer prefix) never show
    as data, and a block's read never comes from them."""
    c = s3client()
    K = 64 * 1024
    blk1 = os.urandom(K)
    junk = b"j" * K
    c.put_object(Bucket=BUCKET, Key="foreign/0000000000000001", Body=blk1)
    for name in ("lease-not", "000000000000000A", "0x00000000000003",
                 "+000000000000004", " 000000000000005", "0000000000000006/x",
                 "junk", "00000000000000ff", "000000000000007"):
        c.put_object(Bucket=BUCKET, Key="foreign/" + name, Body=junk)
    c.put_object(Bucket=BUCKET, Key="foreignX/0000000000000007", Body=junk)
    c.put_object(Bucket=BUCKET, Key="foreign0000000000000008", Body=junk)
    # A dead server's lease: expired, so a writer takes it over.
    c.put_object(Bucket=BUCKET, Key="foreign/lease",
                 Body=b"nbdstack lease\nowner dead server\nexpires 1000\n")
    want = [(0, K, "hole,zero"), (K, K, "data"), (2 * K, 14 * K, "hole,zero")]
    # Read-only beside the expired lease, then a writer holding its own.
    r = Server(["-r"] + s3args("foreign", 16 * K, K), name="foreign-r")
    check_eq(map_of(r.uri), want, "read-only server's map")
    h = connect(r)
    check(bytes(h.pread(16 * K, 0)) == bytes(K) + blk1 + bytes(14 * K),
          "reads: block 1, zeros elsewhere")
    h.shutdown()
    r.stop()
    w = Server(s3args("foreign", 16 * K, K), name="foreign-w")
    h = connect(w)                       # takes the lease over
    check("foreign/lease" in list_keys("foreign/"), "lease held")
    check_eq(map_of(w.uri), want, "writer's map with its lease present")
    h.pwrite(b"w" * 100, 10 * K + 5)     # block 10, not the upper-case one
    check_eq(map_of(w.uri), want[:2] + [(2 * K, 8 * K, "hole,zero"),
                                        (10 * K, K, "data"),
                                        (11 * K, 5 * K, "hole,zero")],
             "writer's map after a partial write to block 10")
    check(bytes(h.pread(K, 10 * K)) == bytes(5) + b"w" * 100 + bytes(K - 105),
          "block 10 merged from zeros, not from 000000000000000A")
    h.shutdown()
    w.stop()
    check_eq(c.get_object(Bucket=BUCKET, Key="foreign/000000000000000A")
             ["Body"].read(), junk, "the upper-case object is untouched")


def partial_zero_trim():
    """Zero is exact for any range (and leaves no object of zeros behind);
    trim deletes whole objects and leaves partial ones as they were, the
    same on every read; a partial fast zero is refused."""
    K = 64 * 1024
    size = 16 * K
    srv = Server(s3args("zt", size, K), name="zt")
    h = connect(srv)
    model = bytearray(os.urandom(10 * K)) + bytearray(6 * K)
    h.pwrite(bytes(model[:10 * K]), 0)

    def zero(off, n, flags=0):
        h.zero(n, off, flags)
        model[off:off + n] = bytes(n)

    zero(1000, 4000)                                   # inside object 0
    zero(K + 100, 300, nbd.CMD_FLAG_NO_HOLE)           # object 1, no hole
    zero(2 * K, K // 2)                                # object 2 in two
    zero(2 * K + K // 2, K // 2)                       # halves: a hole
    zero(3 * K + 17, 2 * K + 5000)                     # 3 part, 4, 5 part
    zero(10 * K + 1, 3 * K)                            # never written
    try:
        h.zero(100, 6 * K + 1, nbd.CMD_FLAG_FAST_ZERO)
        check(False, "partial fast zero accepted")
    except nbd.Error as e:
        check(e.errno in ("ENOTSUP", 95, "EOPNOTSUPP"),
              "partial fast zero: ENOTSUP (got %r)" % e.errno)
    h.zero(K, 7 * K, nbd.CMD_FLAG_FAST_ZERO)           # whole: fine
    model[7 * K:8 * K] = bytes(K)
    # Trim: object 8 whole (deleted), half of object 9 (kept as it was).
    h.trim(K, 8 * K)
    model[8 * K:9 * K] = bytes(K)
    h.trim(K // 2, 9 * K + 10)
    first = bytes(h.pread(size, 0))
    check(first == bytes(model), "reads after zero and trim match the model")
    check(bytes(h.pread(size, 0)) == first, "a second read is the same")
    h.shutdown()
    srv.stop()
    # What the store holds: no object of zeros, the partial trim's object
    # as it was; a new server reads the same.
    check_eq(list_keys("zt/"), ["zt/%016x" % b for b in (0, 1, 3, 5, 6, 9)],
             "objects after zero and trim")
    srv = Server(["-r"] + s3args("zt", size, K), name="zt-2")
    g = connect(srv)
    check(bytes(g.pread(size, 0)) == bytes(model), "store reads back the model")
    g.shutdown()
    check_eq(map_of(srv.uri),
             [(0, 2 * K, "data"), (2 * K, K, "hole,zero"), (3 * K, K, "data"),
              (4 * K, K, "hole,zero"), (5 * K, 2 * K, "data"),
              (7 * K, 2 * K, "hole,zero"), (9 * K, K, "data"),
              (10 * K, 6 * K, "hole,zero")], "map after zero and trim")
    srv.stop()
    # nbdkit's S3 plugin on the same operation, for the docs' claim: its
    # zero that may trim becomes its trim, which skips partial objects.
    src = os.path.join(TMPDIR, "kitzero")
    with open(src, "wb") as f:
        f.write(b"k" * K)
    kit = ["nbdkit", "-U", "-", "S3", "endpoint-url=" + ENDPOINT,
           "bucket=" + BUCKET, "access-key=" + ACCESS, "secret-key=" + SECRET,
           "size=%d" % (4 * K), "object-size=%d" % K, "key=kitzero", "--run",
           "nbdsh -u $uri -c 'h.set_strict_mode(0)' -c "
           "'h.pwrite(b\"k\" * %d, 0)' -c 'h.zero(100, 1000)' -c "
           "'print(h.pread(100, 1000) == bytes(100))'" % K]
    out = run(kit, env=dict(os.environ, PATH="/usr/bin:" +
                            os.environ.get("PATH", ""))).strip()
    log("nbdkit S3: a partial zero reads back zeros: %s" % out)


def virtual_host():
    """addressing=virtual against radosgw (rgw dns name = localhost):
    requests go to nbdtest.localhost, the bucket in the Host header."""
    K = 64 * 1024
    srv = Server(["s3", "endpoint-url=http://localhost:%d" % PORT,
                  "addressing=virtual", "bucket=" + BUCKET, "key=virt",
                  "access-key=" + ACCESS, "secret-key=" + SECRET,
                  "size=%d" % (8 * K), "object-size=%d" % K], name="virt")
    h = connect(srv)
    data = os.urandom(3 * K + 999)
    h.pwrite(data, 2 * K + 1)
    check(bytes(h.pread(len(data), 2 * K + 1)) == data, "virtual: read back")
    h.shutdown()
    check_eq(map_of(srv.uri), [(0, 2 * K, "hole,zero"), (2 * K, 4 * K, "data"),
                               (6 * K, 2 * K, "hole,zero")], "virtual: map")
    srv.stop()
    check_eq(list_keys("virt/"), ["virt/%016x" % b for b in (2, 3, 4, 5)],
             "virtual: objects in the bucket, seen path style")


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
            for name in only.split(","):
                c.run(name, globals()[name])
            stop_cluster()
            c.finish()
        c.run("nbdcopy 256 MiB in and out, and after a restart", nbdcopy_in_out)
        c.run("qemu-img convert and compare", qemu_img)
        c.run("nbdinfo --map shows holes", map_holes)
        c.run("lease and foreign objects under the prefix are no blocks",
              foreign_objects)
        c.run("partial zero and trim", partial_zero_trim)
        c.run("addressing=virtual: BUCKET.localhost", virtual_host)
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
