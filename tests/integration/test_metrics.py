#!/usr/bin/python3
"""The Prometheus endpoint (`[server] metrics`, docs/metrics.md).

- Scrapes with curl while clients do I/O: the counters of an export whose
  client is between batches agree exactly with what that client did
  (requests and bytes per method, errors by errno), and those of an
  export under I/O at the moment of the scrape lie between what its
  client had finished and what it had issued.
- Every scrape passes `promtool check metrics` (when prometheus is
  installed) and this file's own parser of the text format, which also
  checks the histograms (cumulative buckets, +Inf = _count).
- Handshakes (ok, aborted by a listing client, failed on junk, timeout
  of a silent client in the lobby), refused connections (an export's
  max-connections, the limit filter, the ip filter at NBD_OPT_GO and
  before the greeting; TLS required at GO, INFO and EXPORT_NAME; a
  layer's open saying EPERM, EACCES, EBUSY, ENOENT (exportname-strict)
  or EIO; an unknown export name), open connections: each exactly as
  often as the test caused it.
- Requests the server refuses before any layer (bad flags, past the end,
  no meta context, a write to a read-only export, zero length) count in
  the errors by errno of their method exactly as the client saw them.
- Hostile HTTP: junk, binary, oversized, a body, no Host, other methods
  and paths, a slowloris: each gets its 4xx or a close, and NBD clients
  are served meanwhile (also while the slowloris holds the endpoint).
- SIGHUP: an export added shows at 0, one removed stays while its client
  is connected and goes after; counters of a kept export do not reset.
- TCP form, --metrics on the command line, bad addresses refused with
  file:line.
"""

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")
if shutil.which("curl") is None:
    T.skip("curl is not installed")

T.start_watchdog(280)
C = Checker("test_metrics")
PROMTOOL = shutil.which("promtool")
if PROMTOOL is None:
    T.log("promtool not found (package prometheus): the text format is "
          "checked by this test's own parser only")

MSOCK = os.path.join(T.TMPDIR, "metrics.sock")
CFG = os.path.join(T.TMPDIR, "metrics.ini")
NSOCK = os.path.join(T.TMPDIR, "nbd.sock")

CONFIG = """[server]
listen = unix:%s
metrics = unix:%s

[export a]
backend = memory size=64M

[export b]
backend = memory size=64M

[export ro]
readonly = yes
backend = memory size=1M

[export one]
max-connections = 1
backend = memory size=1M
%s"""


def write_cfg(extra=""):
    with open(CFG + ".tmp", "w") as f:
        f.write(CONFIG % (NSOCK, MSOCK, extra))
    os.rename(CFG + ".tmp", CFG)


# ---- the text format ---------------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
SAMPLE = re.compile(r"^(?P<name>%s)(\{(?P<labels>%s(?:,%s)*)?\})? (?P<value>\S+)$"
                    % (NAME, LABEL, LABEL))


def parse(text):
    """Parses exposition format 0.0.4 strictly; returns
    {(name, frozenset(labels)): value}.  Raises CheckFailed on any
    violation: unknown line shapes, a sample before its TYPE, a family's
    samples split up, duplicate series, bad values, inconsistent
    histograms."""
    check(text.endswith("\n"), "exposition ends with a newline")
    samples, types, seen_families, current = {}, {}, set(), None
    for n, line in enumerate(text.split("\n")[:-1], 1):
        if line.startswith("# HELP "):
            check(re.match(r"^# HELP %s .+$" % NAME, line), "line %d: HELP: %r" % (n, line))
            continue
        if line.startswith("# TYPE "):
            m = re.match(r"^# TYPE (%s) (counter|gauge|histogram|summary|untyped)$" % NAME, line)
            check(m, "line %d: TYPE: %r" % (n, line))
            check(m.group(1) not in types, "line %d: second TYPE for %s" % (n, m.group(1)))
            types[m.group(1)] = m.group(2)
            check(m.group(1) not in seen_families, "line %d: family %s split" % (n, m.group(1)))
            seen_families.add(m.group(1))
            current = m.group(1)
            continue
        check(not line.startswith("#") and line, "line %d: unexpected %r" % (n, line))
        m = SAMPLE.match(line)
        check(m, "line %d: not a sample: %r" % (n, line))
        name, value = m.group("name"), m.group("value")
        fam = name
        if current and types.get(current) == "histogram":
            fam = re.sub(r"_(bucket|sum|count)$", "", name)
        check(fam == current, "line %d: %s outside its family (%s)" % (n, name, current))
        labels = frozenset(re.findall(LABEL, m.group("labels") or ""))
        check(len(labels) == len(re.findall(LABEL, m.group("labels") or "")),
              "line %d: repeated label" % n)
        v = float(value.replace("+Inf", "inf"))
        check(not math.isnan(v), "line %d: NaN" % n)
        key = (name, labels)
        check(key not in samples, "line %d: duplicate series %r" % (n, line))
        samples[key] = v
        if types[current] == "counter":
            check(name.endswith("_total") and v >= 0, "line %d: counter %s" % (n, name))
    # Histograms: buckets cumulative, +Inf equals _count.
    for (name, labels), v in samples.items():
        if not name.endswith("_bucket"):
            continue
        base = name[:-7]
        rest = frozenset(l for l in labels if l[0] != "le")
        les = sorted((float(dict(l)["le"].replace("+Inf", "inf")), c)
                     for (nm, l), c in samples.items()
                     if nm == name and frozenset(x for x in l if x[0] != "le") == rest
                     for _ in [0] if dict(l).get("le") is not None)
        counts = [c for _, c in les]
        check(counts == sorted(counts), "%s%s: buckets not cumulative" % (base, sorted(rest)))
        check(les[-1][0] == math.inf, "%s: no +Inf bucket" % base)
        check_eq(samples[(base + "_count", rest)], les[-1][1], "%s +Inf = _count" % base)
    return samples


def get(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(sock=MSOCK, url="http://localhost/metrics"):
    args = ["curl", "-sS", "--max-time", "30", "-D", "-"]
    if sock:
        args += ["--unix-socket", sock]
    r = subprocess.run(args + [url], capture_output=True, timeout=60)
    check(r.returncode == 0, "curl: %s" % r.stderr.decode(errors="replace"))
    head, _, body = r.stdout.decode().partition("\r\n\r\n")
    check(head.startswith("HTTP/1.1 200 "), "status: %r" % head.split("\r\n")[0])
    check("text/plain; version=0.0.4" in head, "Content-Type of format 0.0.4")
    if PROMTOOL:
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=body.encode(),
                           capture_output=True, timeout=60)
        check(p.returncode == 0, "promtool check metrics: %s%s"
              % (p.stdout.decode(), p.stderr.decode()))
    return parse(body)


# ---- a client that keeps its own books ----------------------------------------

METHODS = ("read", "write", "flush", "trim", "zero", "cache", "extents")


class Books:
    def __init__(self):
        self.req = {m: 0 for m in METHODS}
        self.bytes = {m: 0 for m in METHODS}

    def did(self, method, count):
        self.req[method] += 1
        self.bytes[method] += count


def batch(h, books, rounds, pipelined=32):
    """Known I/O on h: pipelined 4 KiB reads and writes, then trims,
    zeroes, cache, block status and a flush, each noted in books."""
    for r in range(rounds):
        cookies = []
        for i in range(pipelined):
            off = ((r * pipelined + i) * 4096) % (32 << 20)
            if i % 2:
                cookies.append(h.aio_pwrite(b"\x5a" * 4096, off))
                books.did("write", 4096)
            else:
                buf = nbd.Buffer(4096)
                cookies.append(h.aio_pread(buf, off))
                books.did("read", 4096)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for c in cookies:
            check(h.aio_command_completed(c), "request completed")
    h.trim(65536, 1 << 20)
    books.did("trim", 65536)
    h.zero(8192, 2 << 20)
    books.did("zero", 8192)
    h.cache(12288, 0)
    books.did("cache", 12288)
    h.block_status(1 << 20, 0, lambda *a: 0)
    books.did("extents", 1 << 20)
    h.flush()
    books.did("flush", 0)


def client(export):
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri("nbd+unix:///%s?socket=%s" % (export, NSOCK))
    return h


def agree(samples, export, books, what):
    for m in METHODS:
        check_eq(get(samples, "nbdstack_requests_total", export=export, method=m),
                 books.req[m], "%s: %s requests of %s" % (what, m, export))
        check_eq(get(samples, "nbdstack_request_bytes_total", export=export, method=m),
                 books.bytes[m], "%s: %s bytes of %s" % (what, m, export))
        check_eq(get(samples, "nbdstack_request_duration_seconds_count",
                     export=export, method=m),
                 books.req[m], "%s: %s latency observations of %s" % (what, m, export))


def wait_for(fn, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(0.05)
    raise T.CheckFailed("timed out waiting for " + what)


write_cfg()
srv = Server(config=CFG, sock=NSOCK, name="metrics")


def t_empty():
    s = scrape()
    out = subprocess.run([T.NBDSTACK, "--version"], capture_output=True, text=True,
                         timeout=60).stdout.split("\n")
    version = out[0].split()[1]             # "nbdstack 0.1.0", then the TLS line
    check_eq(get(s, "nbdstack_build_info", version=version, tls=out[1]), 1,
             "build info: the version and TLS library of --version")
    for e in ("a", "b", "ro", "one"):
        check_eq(get(s, "nbdstack_connections_open", export=e), 0, "open of " + e)
        check(("nbdstack_requests_total", frozenset({("export", e), ("method", "read")}))
              in s, "a series for every configured export from the start")


def t_exact_during_io():
    ha, hb = client("a"), client("b")
    books_a = Books()
    done_b = [0]
    issued_b = [0]
    stop = threading.Event()
    errors = []

    def hammer():
        try:
            buf = bytearray(4096)
            i = 0
            while not stop.is_set():
                issued_b[0] += 1
                hb.pread(4096, (i * 4096) % (1 << 20))
                done_b[0] += 1
                i += 1
        except Exception as e:      # noqa: BLE001
            errors.append(e)
            raise

    th = threading.Thread(target=hammer)
    th.start()
    try:
        s0 = scrape()
        check_eq(get(s0, "nbdstack_connections_open", export="a"), 1, "a open")
        for cycle in range(3):
            batch(ha, books_a, rounds=4 + cycle)
            before = done_b[0]
            s = scrape()
            after = issued_b[0]
            agree(s, "a", books_a, "cycle %d" % cycle)
            rb = get(s, "nbdstack_requests_total", export="b", method="read")
            check(before <= rb <= after,
                  "b under I/O: %d finished <= %d counted <= %d issued" % (before, rb, after))
            check_eq(get(s, "nbdstack_request_bytes_total", export="b", method="read"),
                     rb * 4096, "b: bytes = 4 KiB x requests")
    finally:
        stop.set()
        th.join()
    check(not errors, "hammer: %r" % errors)
    check(done_b[0] > 0, "b did I/O during the scrapes")
    s = scrape()
    check_eq(get(s, "nbdstack_requests_total", export="b", method="read"), done_b[0],
             "b, once idle: every read counted")
    check_eq(get(s, "nbdstack_connections_open", export="b"), 1, "b open")
    ha.shutdown()
    hb.shutdown()
    wait_for(lambda: get(scrape(), "nbdstack_connections_open", export="a") == 0,
             "a's open connections back to 0")
    s = scrape()
    check_eq(get(s, "nbdstack_connections_total", export="a"), 1, "a: one connection in all")
    agree(s, "a", books_a, "after close")


def t_errors():
    h = client("ro")
    h.set_strict_mode(0)            # let bad requests reach the server
    try:
        h.pwrite(b"x" * 512, 0)
        raise T.CheckFailed("write to a read-only export succeeded")
    except nbd.Error as e:
        check(e.errno in (1, "EPERM"), "EPERM from the read-only export: %r" % e.errno)
    try:
        h.pread(4096, 1 << 20)
        raise T.CheckFailed("read past the end succeeded")
    except nbd.Error:
        pass
    s = scrape()
    check_eq(get(s, "nbdstack_request_errors_total", export="ro", method="write",
                 errno="EPERM"), 1, "ro: one EPERM write")
    check_eq(get(s, "nbdstack_request_errors_total", export="ro", method="read",
                 errno="EINVAL"), 1, "ro: one EINVAL read")
    check_eq(get(s, "nbdstack_requests_total", export="ro", method="write"), 1,
             "a refused write is a request")
    check_eq(get(s, "nbdstack_request_bytes_total", export="ro", method="write"), 0,
             "a refused write moved no bytes")
    h.shutdown()


def t_handshakes():
    s0 = scrape()
    r = subprocess.run(["nbdinfo", "--list", "nbd+unix:///?socket=" + NSOCK],
                       capture_output=True, timeout=60)
    check_eq(r.returncode, 0, "nbdinfo --list")
    raw = T.Raw(NSOCK)
    raw.greeting()
    raw.send(b"\0\0\0\3" + b"junk" * 8)
    check(raw.wait_closed(), "junk option closed")
    raw.close()
    h1 = client("one")
    try:
        client("one")
        raise T.CheckFailed("second client of a max-connections=1 export admitted")
    except nbd.Error:
        pass
    h1.shutdown()

    def moved():
        s = scrape()
        return (get(s, "nbdstack_handshakes_total", result="aborted") >
                get(s0, "nbdstack_handshakes_total", result="aborted") and
                get(s, "nbdstack_handshakes_total", result="failed") >
                get(s0, "nbdstack_handshakes_total", result="failed"))
    wait_for(moved, "aborted and failed handshakes counted")
    s = scrape()
    check_eq(get(s, "nbdstack_handshakes_total", result="ok")
             - get(s0, "nbdstack_handshakes_total", result="ok"), 1, "one ok handshake")
    check_eq(get(s, "nbdstack_connections_refused_total", reason="export-limit")
             - get(s0, "nbdstack_connections_refused_total", reason="export-limit"), 1,
             "one refusal at the export's limit")


# A second server for the refusals of layers and the lobby's timeout.
NSOCK2 = os.path.join(T.TMPDIR, "nbd2.sock")
MSOCK2 = os.path.join(T.TMPDIR, "metrics2.sock")
CFG2 = os.path.join(T.TMPDIR, "metrics2.ini")
with open(CFG2, "w") as f:
    f.write("""[server]
listen = unix:%s
metrics = unix:%s
handshake-timeout = 3s

[export open]
backend = memory size=1M

[export lim]
filter = limit limit=1
backend = memory size=1M

[export deny]
filter = ip deny=uid:%d
backend = memory size=1M
""" % (NSOCK2, MSOCK2, os.getuid()))
srv2 = Server(config=CFG2, sock=NSOCK2, name="metrics2")


REASONS = ("max-connections", "max-handshakes", "export-limit", "limit", "ip",
           "tls", "policy", "unknown-export", "open-failed")


def refusals(s, **more):
    out = {r: get(s, "nbdstack_connections_refused_total", reason=r)
           for r in REASONS}
    out.update(more)
    return out


def hs(s):
    return {r: get(s, "nbdstack_handshakes_total", result=r)
            for r in ("ok", "aborted", "failed", "timeout")}


def delta(a, b):
    return {k: b[k] - a[k] for k in a}


def t_layer_refusals():
    s0 = scrape(MSOCK2)
    h1 = nbd.NBD()
    h1.connect_uri("nbd+unix:///lim?socket=" + NSOCK2)
    raw = T.Raw(NSOCK2)
    raw.handshake()
    for i in range(2):       # the limit filter: NBD_REP_ERR_POLICY, twice
        final, _ = raw.info_or_go(T.OPT_GO, b"lim")
        check_eq(T.rep_name(final), T.rep_name(T.REP_ERR_POLICY), "GO over limit=1")
    final, _ = raw.info_or_go(T.OPT_GO, b"deny")   # the ip filter, at GO
    check_eq(T.rep_name(final), T.rep_name(T.REP_ERR_POLICY), "GO denied by ip")
    raw.go(b"open")                                 # still served elsewhere
    raw.disc()
    raw.close()
    h1.shutdown()
    s1 = scrape(MSOCK2)
    check_eq(delta(refusals(s0), refusals(s1)),
             dict(dict.fromkeys(REASONS, 0), limit=2, ip=1),
             "refusals at GO by the limit and ip filters")

    # A client no export lets in: closed before the greeting, one refusal,
    # and no handshake.
    deny_all = Server(["--metrics", "unix:" + os.path.join(T.TMPDIR, "m3.sock"),
                       "--filter", "ip", "memory", "size=1M",
                       "deny=uid:%d" % os.getuid()], name="denyall")
    try:
        m3 = os.path.join(T.TMPDIR, "m3.sock")
        # Server() made sure of the socket with a connection: refused too.
        wait_for(lambda: get(scrape(m3), "nbdstack_connections_refused_total",
                             reason="ip") == 1, "the start-up probe refused")
        a = scrape(m3)
        for i in range(3):
            raw = T.Raw(deny_all.sock)
            check(raw.wait_closed(), "refused client closed")
            check_eq(raw.drained, b"", "no greeting for a refused client")
            raw.close()
        b = scrape(m3)
        check_eq(delta(refusals(a), refusals(b)),
                 dict(dict.fromkeys(REASONS, 0), ip=3),
                 "refusals before the greeting")
        check_eq(delta(hs(a), hs(b)), {"ok": 0, "aborted": 0, "failed": 0,
                                       "timeout": 0},
                 "no handshake for a client refused before the greeting")
    finally:
        deny_all.stop()


def t_lobby_timeout():
    s0 = scrape(MSOCK2)
    silent = [T.Raw(NSOCK2) for i in range(2)]
    for raw in silent:
        raw.greeting()
    for raw in silent:
        check(raw.wait_closed(timeout=60), "silent client closed at handshake-timeout")
        raw.close()
    s1 = scrape(MSOCK2)
    check_eq(delta(hs(s0), hs(s1)), {"ok": 0, "aborted": 0, "failed": 0, "timeout": 2},
             "two lobby timeouts, counted as such and nothing else")
    check_eq(delta(refusals(s0), refusals(s1)), dict.fromkeys(REASONS, 0),
             "a timeout is no refusal")


def http(data, timeout=30, sock=MSOCK, half_close=False):
    """Sends data; returns what came back before the close ("" if none)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock)
    out = b""
    try:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    return out


def nbd_still_served():
    h = client("a")
    h.pwrite(b"\xa5" * 4096, 0)
    check_eq(h.pread(4096, 0), b"\xa5" * 4096, "NBD served")
    h.shutdown()


def t_hostile():
    s0 = scrape()
    cases = [
        (b"\x00\x01\x02\xff\xfe" * 10, 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),                  # no Host
        (b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 400),
        (b"GET http://x/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400),
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 400),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ]
    for data, code in cases:
        out = http(data)
        # An oversized request may be cut off by a reset before its 400.
        check(out.startswith(b"HTTP/1.1 %d " % code) or (out == b"" and code == 400),
              "%r...: expected %d, got %r" % (data[:40], code, out[:60]))
        check(b"Connection: close" in out or out == b"", "no keep-alive")
    nbd_still_served()
    # Slowloris: half a request, then nothing.  The endpoint gives up
    # (408 and a close) on its own deadline; NBD clients are served
    # while it waits, and the endpoint serves again after.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(MSOCK)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    nbd_still_served()
    out = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
    except ConnectionResetError:
        pass
    s.close()
    check(out == b"" or out.startswith(b"HTTP/1.1 408 "), "slowloris: %r" % out[:40])
    # Clients that connect and say nothing, in a row.
    for _ in range(3):
        check_eq(http(b"", half_close=True), b"", "empty request: closed")
    s1 = scrape()
    check(get(s1, "nbdstack_metrics_responses_total", code="400")
          - get(s0, "nbdstack_metrics_responses_total", code="400") >= 9,
          "400s counted")
    check_eq(get(s1, "nbdstack_metrics_responses_total", code="405")
             - get(s0, "nbdstack_metrics_responses_total", code="405"), 1, "one 405")
    check(srv.alive(), "server alive")


def reload(expect="reloaded "):
    before = srv.log_text().count(expect)
    os.kill(srv.proc.pid, signal.SIGHUP)
    wait_for(lambda: srv.log_text().count(expect) > before, "reload")


def t_reload():
    books = Books()
    ha, hb = client("a"), client("b")
    s0 = scrape()
    base = Books()
    for m in METHODS:
        base.req[m] = get(s0, "nbdstack_requests_total", export="a", method=m)
        base.bytes[m] = get(s0, "nbdstack_request_bytes_total", export="a", method=m)
    batch(ha, base, rounds=1)
    batch(hb, books, rounds=1)
    # b removed, c added.
    with open(CFG + ".tmp", "w") as f:
        f.write((CONFIG % (NSOCK, MSOCK, "[export c]\nbackend = memory size=1M\n"))
                .replace("[export b]\nbackend = memory size=64M\n", ""))
    os.rename(CFG + ".tmp", CFG)
    reload()
    s = scrape()
    agree(s, "a", base, "a across the reload")
    check_eq(get(s, "nbdstack_connections_open", export="c"), 0, "c shown at 0")
    check(("nbdstack_requests_total", frozenset({("export", "c"), ("method", "read")})) in s,
          "c's series exist")
    check_eq(get(s, "nbdstack_connections_open", export="b"), 1,
             "b, removed, still shown while its client is connected")
    batch(hb, books, rounds=1)      # the removed export still serves its client
    batch(ha, base, rounds=1)
    s = scrape()
    agree(s, "a", base, "a after the reload")
    check_eq(get(s, "nbdstack_requests_total", export="b", method="write")
             - get(s0, "nbdstack_requests_total", export="b", method="write"),
             books.req["write"], "b's writes across the reload")
    hb.shutdown()
    wait_for(lambda: ("nbdstack_connections_open", frozenset({("export", "b")}))
             not in scrape(), "b gone from the scrape once its client left")
    # b comes back: its counters go on from where they were.
    write_cfg()
    reload()
    s = scrape()
    check_eq(get(s, "nbdstack_requests_total", export="b", method="write")
             - get(s0, "nbdstack_requests_total", export="b", method="write"),
             books.req["write"], "b back: counters kept, not reset")
    ha.shutdown()


def t_tcp_and_cmdline():
    p = socket.socket()
    p.bind(("127.0.0.1", 0))
    port = p.getsockname()[1]
    p.close()
    s2 = Server(["--metrics", "tcp:127.0.0.1:%d" % port, "memory", "1M"], name="tcp")
    try:
        h = nbd.NBD()
        h.connect_uri(s2.uri)
        h.pread(4096, 0)
        s = scrape(sock=None, url="http://127.0.0.1:%d/metrics" % port)
        check_eq(get(s, "nbdstack_requests_total", export="", method="read"), 1,
                 "tcp endpoint, command line")
        h.shutdown()
    finally:
        s2.stop()


def t_bad_addresses():
    bad = os.path.join(T.TMPDIR, "bad.ini")
    with open(bad, "w") as f:
        f.write("[server]\nmetrics = tcp:[::1\n[export a]\nbackend = memory size=1M\n")
    r = subprocess.run([T.NBDSTACK, "--check-config", bad], capture_output=True,
                       timeout=60)
    check(r.returncode != 0, "bad metrics address refused")
    check(("bad.ini:2:" in r.stderr.decode()), "file:line in %r" % r.stderr)
    # --check-config checks the directory of a Unix socket, as for listen.
    with open(bad, "w") as f:
        f.write("[server]\nlisten = unix:%s\nmetrics = unix:/nonexistent-dir/m.sock\n"
                "[export a]\nbackend = memory size=1M\n" % os.path.join(T.TMPDIR, "c.sock"))
    r = subprocess.run([T.NBDSTACK, "--check-config", bad], capture_output=True,
                       timeout=60)
    check(r.returncode != 0 and b"bad.ini:3: metrics: cannot create" in r.stderr,
          "--check-config: metrics socket directory: %r" % r.stderr)
    r = subprocess.run([T.NBDSTACK, "--metrics", "unix:", "memory", "1M"],
                       capture_output=True, timeout=60)
    check(r.returncode != 0 and b"metrics" in r.stderr, "--metrics unix: refused: %r"
          % r.stderr)
    # An address that cannot be bound (a regular file is there) stops the
    # server at start, saying which address it was.
    taken = os.path.join(T.TMPDIR, "taken")
    open(taken, "w").close()
    r = subprocess.run([T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "x.sock"),
                        "--metrics", "unix:" + taken, "memory", "1M"],
                       capture_output=True, timeout=60)
    check(r.returncode != 0 and b"metrics: cannot serve on unix:" in r.stderr,
          "unbindable metrics address: %r" % r.stderr)
    check(os.path.isfile(taken), "the file in the way is left alone")


# A third server (with the test-only layers when built) for refusals by
# TLS, layers' opens and unknown names.
NSOCK3 = os.path.join(T.TMPDIR, "nbd3.sock")
MSOCK3 = os.path.join(T.TMPDIR, "metrics3.sock")
CFG3 = os.path.join(T.TMPDIR, "metrics3.ini")
PSK3 = os.path.join(T.TMPDIR, "metrics3.psk")
ERRNOS = {1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC",
          75: "EOVERFLOW", 95: "ENOTSUP", 108: "ESHUTDOWN"}


def t_open_refusals():
    testbin = T.NBDSTACK_TESTBIN
    have_refuse = False
    if testbin and os.access(testbin, os.X_OK):
        out = subprocess.run([testbin, "--list"], capture_output=True,
                             text=True).stdout
        have_refuse = any(l.split()[:1] == ["testrefuse"]
                          for l in out.splitlines())
    tls = "not compiled in" not in subprocess.run(
        [testbin if have_refuse else T.NBDSTACK, "--version"],
        capture_output=True, text=True).stdout
    with open(PSK3, "w") as f:
        f.write("alice:%s\n" % ("ab" * 32))
    text = "[server]\nlisten = unix:%s\nmetrics = unix:%s\n" % (NSOCK3, MSOCK3)
    if tls:
        text += "tls-psk = %s\n" % PSK3
    text += ("[export open]\nbackend = memory size=1M\n"
             "[export strict]\nfilter = exportname exportname=a "
             "exportname-strict=true\nbackend = memory size=1M\n")
    if tls:
        text += "[export secret]\ntls = require\nbackend = memory size=1M\n"
    if have_refuse:
        for name, e in (("perm", "EPERM"), ("acc", "EACCES"), ("busy", "EBUSY"),
                        ("gone", "ENOENT"), ("eio", "EIO")):
            text += ("[export %s]\nfilter = testrefuse refuse=%s\n"
                     "backend = memory size=1M\n" % (name, e))
    else:
        T.log("  (no test-only layers: the EPERM/EACCES/EBUSY/EIO opens are "
              "not tried)")
    with open(CFG3, "w") as f:
        f.write(text)
    srv3 = Server(config=CFG3, sock=NSOCK3, name="metrics3",
                  binary=testbin if have_refuse else None)
    servers_extra.append(srv3)
    s0 = scrape(MSOCK3)
    want = dict.fromkeys(REASONS, 0)
    raw = T.Raw(NSOCK3)
    raw.handshake()

    def go(name, rep, reason):
        final, _ = raw.info_or_go(T.OPT_GO, name)
        check_eq(T.rep_name(final), rep, "GO %r" % name)
        if reason:
            want[reason] += 1
    go(b"nosuch", "ERR_UNKNOWN", "unknown-export")
    go(b"strict", "ERR_UNKNOWN", "unknown-export")    # open said ENOENT
    if tls:
        go(b"secret", "ERR_TLS_REQD", "tls")
        final, _ = raw.info_or_go(T.OPT_INFO, b"secret")
        check_eq(T.rep_name(final), "ERR_TLS_REQD", "INFO secret")
        want["tls"] += 1
    if have_refuse:
        go(b"perm", "ERR_POLICY", "policy")
        go(b"acc", "ERR_POLICY", "policy")
        go(b"busy", "ERR_POLICY", "limit")
        go(b"gone", "ERR_UNKNOWN", "unknown-export")
        go(b"eio", "ERR_UNKNOWN", "open-failed")
    raw.go(b"open")
    raw.disc()
    raw.close()
    # NBD_OPT_EXPORT_NAME has no error reply: the server closes.
    names = [b"nosuch"] + ([b"secret"] if tls else [])
    for name in names:
        raw = T.Raw(NSOCK3)
        raw.handshake()
        raw.send_opt(T.OPT_EXPORT_NAME, name)
        check(raw.wait_closed(), "EXPORT_NAME %r closed" % name)
        raw.close()
    want["unknown-export"] += 1
    if tls:
        want["tls"] += 1

    def counted():
        return (hs(scrape(MSOCK3))["failed"] - hs(s0)["failed"]) == len(names)
    wait_for(counted, "the closed EXPORT_NAME handshakes counted")
    s1 = scrape(MSOCK3)
    check_eq(delta(refusals(s0), refusals(s1)), want, "refusals by reason")
    check_eq(delta(hs(s0), hs(s1)), {"ok": 1, "aborted": 0,
                                     "failed": len(names), "timeout": 0},
             "handshakes")
    srv3.stop()


servers_extra = []


def t_refused_requests():
    """Requests refused before any layer, as the client saw them."""
    s0 = scrape()
    seen = {}                               # (export, method, errno) -> n
    reqs = {}                               # (export, method) -> n

    def note(export, method, err):
        reqs[(export, method)] = reqs.get((export, method), 0) + 1
        if err:
            key = (export, method, ERRNOS.get(err, "EIO"))
            seen[key] = seen.get(key, 0) + 1
    for export in ("a", "ro"):
        raw = T.connect_go(NSOCK, export.encode(), structured=True, meta=False)
        size = 64 << 20 if export == "a" else 1 << 20
        cases = [
            ("read", T.CMD_READ, 0, 512, 1 << 9),           # unknown flag
            ("read", T.CMD_READ, size, 512, 0),              # past the end
            ("read", T.CMD_READ, size - 256, 512, 0),        # across the end
            ("write", T.CMD_WRITE, size, 512, 0),            # past the end
            ("write", T.CMD_WRITE, 0, 512, T.CMD_FLAG_REQ_ONE),
            ("trim", T.CMD_TRIM, size - 512, 4096, 0),
            ("zero", T.CMD_WRITE_ZEROES, 0, 4096, T.CMD_FLAG_DF),
            ("extents", T.CMD_BLOCK_STATUS, 0, 4096, 0),     # no meta context
            ("cache", T.CMD_CACHE, size, 4096, 0),
            ("flush", T.CMD_FLUSH, 0, 0, T.CMD_FLAG_FUA | (1 << 10)),
            ("write", T.CMD_WRITE, 0, 512, 0),               # ro: EPERM
            ("trim", T.CMD_TRIM, 0, 512, 0),                 # ro: EPERM
        ]
        for method, cmd, off, n, flags in cases:
            data = b"\x01" * n if cmd == T.CMD_WRITE else b""
            if cmd == T.CMD_READ:
                err, _ = raw.read(off, n, flags)
            else:
                err = raw.cmd(cmd, off, n, flags, data)
            if export == "a" and (method, off) in (("write", 0), ("trim", 0)):
                check(err == 0 or flags, "a: %s at 0 without bad flags" % method)
            note(export, method, err)
        check(any(v for k, v in seen.items() if k[0] == export),
              "%s: some requests were refused" % export)
        raw.disc()
        raw.close()
    check(("ro", "write", "EPERM") in seen, "ro: a write refused with EPERM")
    check(("a", "read", "EINVAL") in seen, "a: a read refused with EINVAL")

    def settled():
        s = scrape()
        return all(get(s, "nbdstack_requests_total", export=e, method=m)
                   - get(s0, "nbdstack_requests_total", export=e, method=m) == n
                   for (e, m), n in reqs.items())
    wait_for(settled, "every request counted")
    s1 = scrape()
    for export in ("a", "ro"):
        for m in METHODS:
            for name in ERRNOS.values():
                d = (get(s1, "nbdstack_request_errors_total", export=export,
                         method=m, errno=name)
                     - get(s0, "nbdstack_request_errors_total", export=export,
                           method=m, errno=name))
                check_eq(d, seen.get((export, m, name), 0),
                         "%s: %s errors %s" % (export, m, name))


C.run("every configured export shown from the start", t_empty)
C.run("scrapes during I/O agree exactly with the clients", t_exact_during_io)
C.run("errors by errno", t_errors)
C.run("handshakes and refusals", t_handshakes)
C.run("refusals by the limit and ip filters", t_layer_refusals)
C.run("refusals by TLS, layers' opens and unknown names", t_open_refusals)
C.run("requests refused before any layer count by errno",
      t_refused_requests)
C.run("lobby timeouts", t_lobby_timeout)
C.run("hostile HTTP: 4xx or close, NBD served", t_hostile)
C.run("SIGHUP: exports added and removed, counters kept", t_reload)
C.run("tcp endpoint from the command line", t_tcp_and_cmdline)
C.run("bad metrics addresses", t_bad_addresses)
C.finish([srv, srv2] + servers_extra)
