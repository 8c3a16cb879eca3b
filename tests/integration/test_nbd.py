#!/usr/bin/python3
"""backend nbd: nbdstack as a proxy to an upstream NBD server.

Upstreams: nbdkit memory, qemu-nbd over a raw file, a second nbdstack.
Checks that the proxy shows the upstream's capabilities and bytes, that a
filter stack split across two processes gives the same bytes as in one,
that a killed upstream gives the client EIO and no hang, shared=true with
8 clients on one upstream connection, dynamic-export=, command= (with
repeated arg=), retry= and nbd:// over TCP.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T  # noqa: E402

import nbd  # noqa: E402  (python3-libnbd, /usr/bin/python3)

T.require_layers("nbd", "memory", "file", "cow", "truncate")
for tool in ("nbdkit", "nbdinfo", "nbdcopy"):
    if not shutil.which(tool):
        T.skip("%s is not installed" % tool)
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "150")))

MiB = 1 << 20
CAPS = ("export-size", "is_rotational", "is_read_only", "can_cache",
        "can_df", "can_fast_zero", "can_flush", "can_fua", "can_multi_conn",
        "can_trim", "can_zero", "block_size_minimum", "block_size_preferred",
        "block_size_maximum")


class Proc:
    """An upstream that is not nbdstack (nbdkit, qemu-nbd) on a Unix socket,
    killed at exit."""

    _n = 0

    def __init__(self, argv, sock):
        Proc._n += 1
        self.sock = sock
        self.logpath = os.path.join(T.TMPDIR, "up%d.log" % Proc._n)
        try:
            os.unlink(sock)
        except FileNotFoundError:
            pass
        T.log("starting upstream: " + " ".join(argv))
        self.p = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--"] + argv,
                                  stdin=subprocess.DEVNULL,
                                  stdout=open(self.logpath, "ab"),
                                  stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise T.ServerError("upstream exited: %s" % self.log())
            if os.path.exists(sock):
                return
            time.sleep(0.05)
        self.kill()
        raise T.ServerError("upstream socket %s did not appear" % sock)

    def log(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


_procs = []


def upstream(argv, name):
    sock = os.path.join(T.TMPDIR, name + ".sock")
    p = Proc([a.replace("SOCK", sock) for a in argv], sock)
    _procs.append(p)
    return p


def proxy(*kv, filters=(), readonly=False):
    args = ["-r"] if readonly else []
    for f in filters:
        args += ["--filter", f]
    return T.Server(args + ["nbd"] + list(kv))


def uri(sock, export=""):
    return "nbd+unix:///%s?socket=%s" % (export, sock)


def same_caps(pi, ui, what):
    """An upstream that gives no block sizes leaves the proxy's server to
    advertise its own defaults, as for any backend without block_size."""
    if ui["block_size_minimum"] is None:
        pi = {k: v for k, v in pi.items() if not k.startswith("block_size")}
        ui = {k: v for k, v in ui.items() if not k.startswith("block_size")}
    T.check_eq(pi, ui, what)


def info(u):
    out = subprocess.run(["nbdinfo", "--json", u], capture_output=True,
                         text=True, timeout=20)
    T.check(out.returncode == 0, "nbdinfo %s: %s" % (u, out.stderr.strip()))
    e = json.loads(out.stdout)["exports"][0]
    return {k: e.get(k) for k in CAPS}, e.get("contexts", [])


def connect(u, meta=True):
    h = nbd.NBD()
    if meta:
        h.add_meta_context("base:allocation")
    h.connect_uri(u)
    return h


def extents(h, size):
    got = []
    off = 0
    while off < size:
        def cb(meta, o, ents, err):
            if meta == "base:allocation":
                got.extend(zip(ents[0::2], ents[1::2]))
        before = len(got)
        h.block_status(min(size - off, 32 * MiB), off, cb)
        off += sum(n for n, _ in got[before:])
    # merge neighbours of one type: split points are the servers' business
    out = []
    for n, t in got:
        if out and out[-1][1] == t:
            out[-1] = (out[-1][0] + n, t)
        else:
            out.append((n, t))
    return out


def same_as_upstream(up_uri, px_uri, size):
    """Capabilities, contexts, data, zero, trim and extents agree."""
    ui, uc = info(up_uri)
    pi, pc = info(px_uri)
    same_caps(pi, ui, "capabilities through the proxy")
    T.check_eq("base:allocation" in pc, "base:allocation" in uc,
               "base:allocation offered")
    h = connect(px_uri)
    pattern = bytes(range(256)) * 256                        # 64 KiB
    h.pwrite(pattern, 1 * MiB)
    h.pwrite(pattern, size - len(pattern), nbd.CMD_FLAG_FUA if h.can_fua() else 0)
    if h.can_zero():
        h.zero(4096, 1 * MiB + 4096)
    if h.can_trim():
        h.trim(65536, 2 * MiB)
    if h.can_flush():
        h.flush()
    u = connect(up_uri)
    for off, n in ((0, 4 * MiB), (size - 65536, 65536), (1 * MiB, 8192)):
        T.check_eq(h.pread(n, off), u.pread(n, off), "read [%d,+%d)" % (off, n))
    exp = bytearray(pattern[:8192])
    exp[4096:] = bytes(4096) if h.can_zero() else exp[4096:]
    T.check_eq(bytes(h.pread(8192, 1 * MiB)), bytes(exp), "data after write+zero")
    if "base:allocation" in uc:
        T.check_eq(extents(h, size), extents(u, size), "extents")
    h.shutdown()
    u.shutdown()


def t_nbdkit_memory():
    up = upstream(["nbdkit", "-U", "SOCK", "-f", "memory", "64M"], "nbdkit")
    px = proxy("socket=" + up.sock)
    same_as_upstream(uri(up.sock), px.uri, 64 * MiB)
    px.stop()


def t_nbdkit_readonly_flags():
    # a read-only upstream without zero, extents, cache: nor the proxy
    up = upstream(["nbdkit", "-U", "SOCK", "-f", "-r", "--filter=nozero",
                   "--filter=noextents", "--filter=nocache", "memory", "16M",
                   "cachemode=none"], "nbdkit-ro")
    px = proxy("uri=" + uri(up.sock))
    same_as_upstream_ro(uri(up.sock), px.uri)
    px.stop()


def same_as_upstream_ro(up_uri, px_uri):
    ui, _ = info(up_uri)
    pi, _ = info(px_uri)
    same_caps(pi, ui, "capabilities of a read-only upstream")
    T.check(pi["is_read_only"], "read-only upstream seen read-only")
    h = connect(px_uri)
    try:
        h.pwrite(b"x" * 512, 0)
        raise T.CheckFailed("write to a read-only upstream succeeded")
    except nbd.Error:
        pass
    h.shutdown()


def t_qemu_nbd():
    if not shutil.which("qemu-nbd"):
        T.skip("qemu-nbd is not installed")
    img = os.path.join(T.TMPDIR, "q.img")
    with open(img, "wb") as f:
        f.truncate(32 * MiB)
    up = upstream(["qemu-nbd", "-k", "SOCK", "-f", "raw", "--persistent",
                   "--shared=16", img], "qemu")
    px = proxy("socket=" + up.sock)
    same_as_upstream(uri(up.sock), px.uri, 32 * MiB)
    # qemu-img over the proxy (qemu's own client): write and compare
    src = os.path.join(T.TMPDIR, "src.img")
    with open(src, "wb") as f:
        f.write(os.urandom(32 * MiB))
    r = subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw",
                        src, px.uri], capture_output=True, text=True, timeout=60)
    T.check(r.returncode == 0, "qemu-img convert: " + r.stderr)
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", src,
                        px.uri], capture_output=True, text=True, timeout=60)
    T.check(r.returncode == 0, "qemu-img compare: " + r.stdout + r.stderr)
    px.stop()


def t_nbdstack_upstream():
    up = T.Server(["memory", "size=48M"], name="up-nbdstack")
    px = proxy("socket=" + up.sock)
    same_as_upstream(up.uri, px.uri, 48 * MiB)
    # nbdcopy with many requests in flight, both ways
    src = os.path.join(T.TMPDIR, "copy.img")
    with open(src, "wb") as f:
        f.write(os.urandom(48 * MiB))
    out = os.path.join(T.TMPDIR, "copy.out")
    for a, b in ((src, px.uri), (px.uri, out)):
        r = subprocess.run(["nbdcopy", "--requests=64", "--connections=4", a, b],
                           capture_output=True, text=True, timeout=60)
        T.check(r.returncode == 0, "nbdcopy %s %s: %s" % (a, b, r.stderr))
    with open(src, "rb") as f1, open(out, "rb") as f2:
        T.check(f1.read() == f2.read(), "nbdcopy round trip differs")
    px.stop()
    up.stop()


def t_split_stack():
    """truncate -> cow -> file in one process == truncate -> nbd | cow -> file."""
    base = os.path.join(T.TMPDIR, "base.img")
    with open(base, "wb") as f:
        f.write(os.urandom(20 * MiB))
    with open(base, "rb") as f:
        orig = f.read()
    one = T.Server(["--filter", "truncate", "--filter", "cow", "file",
                    "file=" + base, "truncate=17M"], name="one")
    back = T.Server(["--filter", "cow", "file", "file=" + base], name="back")
    front = T.Server(["--filter", "truncate", "nbd", "socket=" + back.sock,
                      "truncate=17M"], name="front")
    results = []
    for s in (one, front):
        h = connect(s.uri)
        h.pwrite(b"A" * 100000, 12345)
        h.zero(65536, 5 * MiB)
        h.trim(1 * MiB, 8 * MiB)
        h.pwrite(b"Z" * 4096, 17 * MiB - 4096)
        h.flush()
        size = h.get_size()
        data = b"".join(bytes(h.pread(min(4 * MiB, size - o), o))
                        for o in range(0, size, 4 * MiB))
        results.append((size, data))
        h.shutdown()
    T.check_eq(results[1][0], results[0][0], "size through the split stack")
    T.check(results[1][1] == results[0][1], "bytes through the split stack differ")
    with open(base, "rb") as f:
        T.check(f.read() == orig, "cow wrote to its base")
    for s in (front, back, one):
        s.stop()


def t_upstream_killed():
    up = upstream(["nbdkit", "-U", "SOCK", "-f", "--filter=delay",
                   "random", "256M", "rdelay=50ms"], "dying")
    px = proxy("socket=" + up.sock)
    # a client in the middle of a copy
    out = os.path.join(T.TMPDIR, "dying.out")
    cp = subprocess.Popen(["nbdcopy", "--requests=16", px.uri, out],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # and one that stays connected for an orderly close
    h = connect(px.uri)
    h.pread(4096, 0)
    time.sleep(0.5)
    up.kill()
    try:
        rc = cp.wait(20)
    except subprocess.TimeoutExpired:
        cp.kill()
        raise T.CheckFailed("nbdcopy hung after the upstream died")
    T.check(rc != 0, "nbdcopy succeeded although the upstream died")
    try:
        h.pread(4096, 0)
        raise T.CheckFailed("read after the upstream died succeeded")
    except nbd.Error as e:
        T.check_eq(e.errnum, 5, "errno of a read after the upstream died (EIO)")
    h.shutdown()                                  # orderly, no hang
    T.check(px.alive(), "the proxy died with its upstream")
    rc = px.stop()
    T.check_eq(rc, 0, "proxy exit status")


def t_shared():
    up = upstream(["nbdkit", "-U", "SOCK", "-f", "--filter=log", "memory", "64M",
                   "logfile=" + os.path.join(T.TMPDIR, "shared.log")], "shared")
    px = proxy("socket=" + up.sock, "shared=true")
    errors = []

    def client(i):
        try:
            h = connect(px.uri)
            data = bytes([i + 1]) * (1 * MiB)
            for k in range(4):
                h.pwrite(data, (i * 4 + k) * MiB)
            for k in range(4):
                if bytes(h.pread(1 * MiB, (i * 4 + k) * MiB)) != data:
                    errors.append("client %d: read back differs" % i)
            h.flush()
            h.shutdown()
        except Exception as e:                    # noqa: BLE001
            errors.append("client %d: %s" % (i, e))
    ts = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    T.check(not errors, "; ".join(errors))
    px.stop()
    with open(os.path.join(T.TMPDIR, "shared.log")) as f:
        conns = sum(1 for line in f if " Connect " in line or "Connect export" in line)
    T.check(1 <= conns <= 8 and conns < 8,
            "upstream saw %d connections for 8 shared clients" % conns)


def t_dynamic_export():
    if not shutil.which("qemu-nbd"):
        T.skip("qemu-nbd is not installed")
    img = os.path.join(T.TMPDIR, "dyn.img")
    with open(img, "wb") as f:
        f.truncate(4 * MiB)
    up = upstream(["qemu-nbd", "-k", "SOCK", "-f", "raw", "--persistent",
                   "-x", "vm1", img], "dyn")
    px = proxy("socket=" + up.sock, "dynamic-export=true")
    h = connect(px.uri_for("vm1"))
    T.check_eq(h.get_size(), 4 * MiB, "size of export vm1")
    h.shutdown()
    try:
        connect(px.uri_for("nosuch")).shutdown()
        raise T.CheckFailed("an export upstream lacks was served")
    except nbd.Error:
        pass
    px.stop()
    # without dynamic-export the proxy asks for export= whatever the client says
    px = proxy("socket=" + up.sock, "export=vm1")
    h = connect(px.uri_for("anything"))
    T.check_eq(h.get_size(), 4 * MiB, "size with export=vm1")
    h.shutdown()
    px.stop()


def t_dynamic_export_list():
    # dynamic-export=true: the names a client may ask for are upstream's,
    # and so is the listing (as nbdkit's nbd plugin); without it the
    # proxy lists its own export only.
    d = os.path.join(T.TMPDIR, "listdir")
    os.mkdir(d)
    for n, size in (("a.img", 4096), ("b.img", 8192)):
        with open(os.path.join(d, n), "wb") as f:
            f.truncate(size)
    up = T.Server(["file", "dir=" + d], name="listup")
    px = proxy("socket=" + up.sock, "dynamic-export=true")
    r = subprocess.run(["nbdinfo", "--list", "--json", px.uri],
                       capture_output=True, text=True, timeout=30)
    T.check_eq(r.returncode, 0, "nbdinfo --list through the proxy: %s" % r.stderr)
    names = sorted(e["export-name"] for e in json.loads(r.stdout)["exports"])
    T.check_eq(names, ["a.img", "b.img"], "names listed through the proxy")
    h = connect(px.uri_for("b.img"))
    T.check_eq(h.get_size(), 8192, "size of b.img through the proxy")
    h.shutdown()
    px.stop()
    px = proxy("socket=" + up.sock, "export=a.img")
    r = subprocess.run(["nbdinfo", "--list", "--json", px.uri],
                       capture_output=True, text=True, timeout=30)
    names = sorted(e["export-name"] for e in json.loads(r.stdout)["exports"])
    T.check_eq(names, [""], "names listed without dynamic-export")
    px.stop()
    up.stop()


def t_command():
    script = os.path.join(T.TMPDIR, "up.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nexec nbdkit -s memory 3M\n")
    os.chmod(script, 0o755)
    px = proxy("command=" + script)
    h1, h2 = connect(px.uri), connect(px.uri)
    h1.pwrite(b"a" * 512, 0)
    T.check_eq(h1.get_size(), 3 * MiB, "size from the command")
    T.check_eq(bytes(h2.pread(512, 0)), bytes(512),
               "each client has its own command (own memory disk)")
    h1.shutdown()
    h2.shutdown()
    px.stop()


def t_command_args():
    # arg= repeated, as nbdkit takes it: each one argument, in order
    px = proxy("command=nbdkit", "arg=-s", "arg=--exit-with-parent",
               "arg=memory", "arg=5M")
    h = connect(px.uri)
    T.check_eq(h.get_size(), 5 * MiB, "size from command= with four arg=")
    h.pwrite(b"q" * 4096, 0)
    T.check_eq(bytes(h.pread(4096, 0)), b"q" * 4096, "data through it")
    h.shutdown()
    px.stop()


def t_retry():
    sock = os.path.join(T.TMPDIR, "late.sock")
    px = proxy("socket=" + sock, "retry=10")
    res = {}

    def client():
        try:
            h = connect(px.uri)
            res["size"] = h.get_size()
            h.shutdown()
        except Exception as e:                    # noqa: BLE001
            res["err"] = str(e)
    t = threading.Thread(target=client)
    t.start()
    time.sleep(1.5)
    upstream(["nbdkit", "-U", "SOCK", "-f", "memory", "5M"], "late")
    t.join(20)
    T.check_eq(res.get("size"), 5 * MiB, "size after retrying (%s)" % res.get("err"))
    px.stop()
    # without retry a missing upstream fails the client's connection, not the server
    px = proxy("socket=" + os.path.join(T.TMPDIR, "never.sock"))
    try:
        connect(px.uri).shutdown()
        raise T.CheckFailed("connected to a missing upstream")
    except nbd.Error:
        pass
    T.check(px.alive(), "the proxy died with no upstream")
    px.stop()


def t_tcp_uri():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", "nbdkit",
                          "-f", "-i", "127.0.0.1", "-p", str(port), "-e", "disk",
                          "memory", "7M"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.05)
        px = proxy("nbd://127.0.0.1:%d/disk" % port)   # the bare value is uri
        h = connect(px.uri)
        T.check_eq(h.get_size(), 7 * MiB, "size over nbd://")
        h.pwrite(b"t" * 4096, 4096)
        T.check_eq(bytes(h.pread(4096, 4096)), b"t" * 4096, "read over TCP")
        h.shutdown()
        px.stop()
    finally:
        p.kill()
        p.wait()


def t_bad_config():
    for args, msg in ((["nbd"], "exactly one"),
                      (["nbd", "socket=/x", "hostname=h"], "exactly one"),
                      (["nbd", "uri=nbds://h/x"], "tls-certificates= or tls-psk="),
                      (["nbd", "uri=nbd+unix:///x"], "socket="),
                      (["nbd", "socket=/x", "port=1"], "port="),
                      (["nbd", "socket=/x", "arg=-s", "arg=x"], "arg="),
                      (["nbd", "socket=/x", "shared=true", "dynamic-export=true"],
                       "shared")):
        r = subprocess.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "bad.sock")]
                           + args, capture_output=True, text=True, timeout=10)
        T.check(r.returncode != 0, "%s started" % args)
        T.check(msg in r.stderr, "%s: message %r lacks %r" % (args, r.stderr, msg))


c = T.Checker("test_nbd")
c.run("upstream nbdkit memory: same caps, bytes, extents", t_nbdkit_memory)
c.run("read-only upstream without trim/zero: same caps", t_nbdkit_readonly_flags)
c.run("upstream qemu-nbd: same caps and bytes, qemu-img", t_qemu_nbd)
c.run("upstream nbdstack: same caps, nbdcopy both ways", t_nbdstack_upstream)
c.run("filter stack split across two processes", t_split_stack)
c.run("upstream killed mid-copy: EIO, no hang", t_upstream_killed)
c.run("shared=true with 8 clients", t_shared)
c.run("dynamic-export and export=", t_dynamic_export)
c.run("dynamic-export lists upstream's exports", t_dynamic_export_list)
c.run("command= runs an upstream per client", t_command)
c.run("command= with repeated arg=", t_command_args)
c.run("retry= waits for the upstream", t_retry)
c.run("nbd:// over TCP", t_tcp_uri)
c.run("bad keys are refused at startup", t_bad_config)
for p in _procs:
    p.kill()
c.finish()
