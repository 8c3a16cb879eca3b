"""Shared helpers for the nbdstack integration tests (Python).

Run the tests with /usr/bin/python3 (Debian's, which has the `nbd` module of
python3-libnbd).  What this module gives a test:

  - Server: start $NBDSTACK on a Unix socket in a fresh temp dir, wait for
    the socket (bounded), stop it with a signal and collect its exit status;
    every server is killed at exit, and a watchdog kills everything and fails
    the test if it runs past its deadline.
  - Checker: soft assertions that keep going and report every failure, so
    one run shows all the broken behaviours; exit 1 if any failed.
  - Raw: a hand-written NBD client on a plain socket (fixed newstyle
    handshake, options, simple and structured replies) for the protocol
    tests, with wire constants from the NBD spec (doc/proto.md).
  - same_as_nbdkit and its pieces (unix_uri, copy_out, extent_map,
    start_nbdkit): a backend served by nbdstack and by nbdkit with the
    same arguments, compared byte for byte and map for map; and
    startup_refused for arguments the server must refuse.

It does not import `nbd` (libnbd) itself, so the raw tests do not need it.
"""

import atexit
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

SKIP = 77

# ---- wire constants (NBD protocol, doc/proto.md) -------------------------

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
CLISERV_MAGIC = 0x00420281861253      # oldstyle
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# handshake flags (server) / client flags
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# options
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

# option replies
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_BIT = 1 << 31
REP_ERR_UNSUP = REP_ERR_BIT + 1
REP_ERR_POLICY = REP_ERR_BIT + 2
REP_ERR_INVALID = REP_ERR_BIT + 3
REP_ERR_PLATFORM = REP_ERR_BIT + 4
REP_ERR_TLS_REQD = REP_ERR_BIT + 5
REP_ERR_UNKNOWN = REP_ERR_BIT + 6
REP_ERR_SHUTDOWN = REP_ERR_BIT + 7
REP_ERR_BLOCK_SIZE_REQD = REP_ERR_BIT + 8
REP_ERR_TOO_BIG = REP_ERR_BIT + 9

REP_NAMES = {
    REP_ACK: "ACK", REP_SERVER: "SERVER", REP_INFO: "INFO",
    REP_META_CONTEXT: "META_CONTEXT", REP_ERR_UNSUP: "ERR_UNSUP",
    REP_ERR_POLICY: "ERR_POLICY", REP_ERR_INVALID: "ERR_INVALID",
    REP_ERR_PLATFORM: "ERR_PLATFORM", REP_ERR_TLS_REQD: "ERR_TLS_REQD",
    REP_ERR_UNKNOWN: "ERR_UNKNOWN", REP_ERR_SHUTDOWN: "ERR_SHUTDOWN",
    REP_ERR_BLOCK_SIZE_REQD: "ERR_BLOCK_SIZE_REQD", REP_ERR_TOO_BIG: "ERR_TOO_BIG",
}


def rep_name(r):
    return REP_NAMES.get(r, "0x%x" % r)


# NBD_OPT_INFO / NBD_OPT_GO information types
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# transmission flags
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_RESIZE = 1 << 9
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11

TF_NAMES = ["HAS_FLAGS", "READ_ONLY", "SEND_FLUSH", "SEND_FUA", "ROTATIONAL",
            "SEND_TRIM", "SEND_WRITE_ZEROES", "SEND_DF", "CAN_MULTI_CONN",
            "SEND_RESIZE", "SEND_CACHE", "SEND_FAST_ZERO"]


def tf_str(flags):
    names = [n for i, n in enumerate(TF_NAMES) if flags & (1 << i)]
    extra = flags & ~((1 << len(TF_NAMES)) - 1)
    if extra:
        names.append("0x%x" % extra)
    return "0x%x(%s)" % (flags, "|".join(names))


# commands
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

# command flags
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

# structured reply
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1

# errors on the wire
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

KiB = 1 << 10
MiB = 1 << 20
MAX_REQUEST = 32 * MiB          # nbdstack's advertised maximum block size


# ---- environment, temp dir, servers, watchdog -----------------------------

def log(*args):
    print(*args, file=sys.stderr, flush=True)


def die(msg):
    log("FATAL: " + msg)
    sys.exit(1)


def skip(msg):
    log("SKIP: " + msg)
    sys.exit(SKIP)


NBDSTACK = os.environ.get("NBDSTACK")
if not NBDSTACK:
    die("NBDSTACK is not set (path of the server binary)")
NBDSTACK = os.path.abspath(NBDSTACK)
if not os.access(NBDSTACK, os.X_OK):
    die("NBDSTACK=%s is not executable" % NBDSTACK)

# This build's own binary, which in test builds has the test-only layers
# of tests/layers/ (the shipped static binary does not).
NBDSTACK_TESTBIN = os.environ.get("NBDSTACK_TESTBIN")


def require_test_layer(name):
    """Skip unless $NBDSTACK_TESTBIN has the test-only layer name."""
    if not NBDSTACK_TESTBIN or not os.access(NBDSTACK_TESTBIN, os.X_OK):
        skip("NBDSTACK_TESTBIN is not set: no build with test-only layers")
    out = subprocess.run([NBDSTACK_TESTBIN, "--list"], capture_output=True,
                         text=True).stdout
    if not any(line.split()[:1] == [name] for line in out.splitlines()):
        skip("%s has no test-only layer %s" % (NBDSTACK_TESTBIN, name))
    return NBDSTACK_TESTBIN


def require_layers(*names, binary=None):
    """Skip unless every filter or backend in names is compiled into binary
    (default $NBDSTACK): a build may select any subset of the layers
    (-DNBD_FILTERS=... -DNBD_BACKENDS=...), and --list names those it has."""
    binary = binary or NBDSTACK
    res = subprocess.run([binary, "--list"], capture_output=True, text=True)
    if res.returncode != 0:
        die("%s --list failed: %s" % (binary, res.stderr.strip()))
    have = {line.split()[0] for line in res.stdout.splitlines()
            if line.startswith("  ") and not line.startswith("   ")}
    for name in names:
        if name not in have:
            skip("the %s layer is not compiled into %s" % (name, binary))
    return binary


TMPDIR = tempfile.mkdtemp(prefix="nbdstack-test.")
_servers = []

# ---- the stack under test -------------------------------------------------
#
# Client tests serve a blank disk through disk_args().  By default that is
# a memory disk; NBD_TEST_STACK=deep runs the same checks through a deep
# stack over a file, to show that layers compose:
#   error (rate 0) -> delay (0) -> blocksize -> cache -> cow -> partition 1
DEEP_STACK = [("error", ["error-rate=0"]), ("delay", ["delay-read=0"]),
              ("blocksize", []), ("cache", []), ("cow", []),
              ("partition", ["partition=1"])]
STACK = os.environ.get("NBD_TEST_STACK", "")
_disks = 0


def disk_args(size, readonly=False):
    """Server arguments (after -U SOCK) for a blank disk of size bytes."""
    global _disks
    ro = ["-r"] if readonly else []
    if STACK != "deep":
        return ro + ["memory", "size=%d" % size]
    require_layers(*[n for n, _ in DEEP_STACK], "file")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import mkpart
    _disks += 1
    img = os.path.join(TMPDIR, "deep%d.img" % _disks)
    mkpart.make(img, size)
    args = ro
    for name, _ in DEEP_STACK:
        args += ["--filter", name]
    args += ["file", "file=" + img]
    for _, kv in DEEP_STACK:
        args += kv
    return args


def _cleanup():
    for s in list(_servers):
        s.kill()
    if not os.environ.get("KEEP_TMP"):
        shutil.rmtree(TMPDIR, ignore_errors=True)


atexit.register(_cleanup)


def start_watchdog(seconds=None):
    """Kill every server and fail the test if it runs past `seconds`
    (default $TEST_DEADLINE or 55; a libnbd call blocked in C would not see
    a Python signal, hence a thread)."""
    if seconds is None:
        seconds = int(os.environ.get("TEST_DEADLINE", "55"))
    def fire():
        log("TIMEOUT: test exceeded %d s" % seconds)
        for s in list(_servers):
            s.dump_log()
        _cleanup()
        os._exit(1)
    w = threading.Timer(seconds, fire)
    w.daemon = True
    w.start()
    return w


class CheckFailed(Exception):
    pass


class ServerError(CheckFailed):
    """The server did not start."""


class Server:
    """$NBDSTACK on a Unix socket.  `args` follow `-U SOCK`; with
    config=PATH the server is started as `$NBDSTACK -c PATH` and `sock` must be
    the listen path written in that file."""

    _n = 0

    def __init__(self, args=(), sock=None, config=None, name=None, binary=None,
                 env=None, prefix=()):
        Server._n += 1
        binary = binary or NBDSTACK
        self.env = env
        self.prefix = list(prefix)
        self.name = name or "server%d" % Server._n
        self.sock = sock or os.path.join(TMPDIR, self.name + ".sock")
        self.logpath = os.path.join(TMPDIR, self.name + ".log")
        if config:
            self.argv = [binary, "-c", config]
        else:
            self.argv = [binary, "-U", self.sock] + list(args)
        self.proc = None
        self.start()

    def start(self):
        try:
            os.unlink(self.sock)
        except FileNotFoundError:
            pass
        log("starting: " + " ".join(self.argv))
        self.logf = open(self.logpath, "ab")
        # SIGKILL the server if this test dies (e.g. CTest kills it on a
        # timeout); setpriv execs, so the pid is the server's.
        spawn = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
        self.proc = subprocess.Popen(spawn + self.prefix + self.argv,
                                     stdin=subprocess.DEVNULL, env=self.env,
                                     stdout=self.logf, stderr=self.logf)
        _servers.append(self)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.dump_log()
                raise ServerError("%s exited early with status %s"
                                  % (self.name, self.proc.returncode))
            if os.path.exists(self.sock):
                try:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(self.sock)
                    s.close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        self.dump_log()
        self.kill()
        raise ServerError("%s: socket %s did not appear within 10 s" % (self.name, self.sock))

    @property
    def uri(self):
        return unix_uri(self.sock)

    def uri_for(self, export):
        return "nbd+unix:///%s?socket=%s" % (export, self.sock)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=5):
        """Send sig; return the exit status, or None if it did not exit
        within timeout (then it is SIGKILLed)."""
        if self.proc.poll() is not None:
            rc = self.proc.returncode
        else:
            self.proc.send_signal(sig)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                rc = None
                self.proc.kill()
                self.proc.wait()
        if self in _servers:
            _servers.remove(self)
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self in _servers:
            _servers.remove(self)

    def log_text(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def sighup(self, cfg=None, text=None, expect="reloaded ", timeout=10):
        """Rewrites cfg with text (SOCK = this server's socket) when both
        are given, sends SIGHUP and waits for one more `expect` line in the
        log; fails the check when the server dies or the line never comes."""
        before = self.log_text().count(expect)
        if cfg and text is not None:
            write_config(cfg, text.replace("SOCK", self.sock))
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count(expect) > before:
                return
            if not self.alive():
                raise CheckFailed("%s died on SIGHUP" % self.name)
            time.sleep(0.05)
        raise CheckFailed("no %r line after SIGHUP" % expect)

    def dump_log(self, lines=30):
        text = self.log_text().splitlines()
        log("--- last %d lines of %s log (%s) ---" % (lines, self.name, self.logpath))
        for line in text[-lines:]:
            log("    " + line)


def write_config(path, text):
    """Writes a config file atomically (a reload never reads half of it)."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def config_server(name, text, **kw):
    """Starts $NBDSTACK -c on TMPDIR/name.ini holding text, where SOCK
    stands for the server's socket TMPDIR/name.sock.  Returns (server,
    config path)."""
    cfg = os.path.join(TMPDIR, name + ".ini")
    sock = os.path.join(TMPDIR, name + ".sock")
    write_config(cfg, text.replace("SOCK", sock))
    return Server(config=cfg, sock=sock, name=name, **kw), cfg


# ---- soft assertions -------------------------------------------------------


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def check_eq(actual, expected, what):
    if actual != expected:
        raise CheckFailed("%s: expected %r, got %r" % (what, expected, actual))


class Checker:
    """Runs named cases, reports each as ok/FAIL, keeps going."""

    def __init__(self, name):
        self.name = name
        self.failed = []
        self.count = 0

    def run(self, title, fn, *args, **kw):
        self.count += 1
        t0 = time.monotonic()
        try:
            fn(*args, **kw)
        except CheckFailed as e:
            self.failed.append(title)
            log("FAIL: %s: %s" % (title, e))
            return False
        except Exception as e:                 # noqa: BLE001 - report everything
            self.failed.append(title)
            log("FAIL: %s: unexpected %s: %s" % (title, type(e).__name__, e))
            traceback.print_exc(file=sys.stderr)
            return False
        log("ok: %s (%.2fs)" % (title, time.monotonic() - t0))
        return True

    def finish(self, servers=()):
        if self.failed:
            for s in servers:
                s.dump_log()
            log("%s: %d of %d case(s) FAILED:" % (self.name, len(self.failed), self.count))
            for t in self.failed:
                log("    - " + t)
            sys.exit(1)
        log("%s: all %d cases passed" % (self.name, self.count))
        sys.exit(0)


# ---- raw NBD client ---------------------------------------------------------

class Closed(Exception):
    """The server closed the connection."""


class Raw:
    """A hand-driven NBD client.  Every receive is bounded by `timeout`."""

    def __init__(self, path, timeout=5.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        # A Unix socket whose backlog is full refuses with EAGAIN instead of
        # waiting; retry for a while (the server is just behind).
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.s.connect(path)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.structured = False
        self.cookie = 0x1000
        self.hflags = None

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    # -- bytes --
    def send(self, data):
        try:
            self.s.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed("send: %s" % e)

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.s.recv(min(n - len(buf), 1 << 20))
            except ConnectionResetError:
                chunk = b""
            except socket.timeout:
                raise CheckFailed("timed out waiting for %d bytes from server (got %d)"
                                  % (n, len(buf)))
            if not chunk:
                raise Closed("connection closed after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return bytes(buf)

    def wait_closed(self, timeout=5.0):
        """True if the server closes the connection within timeout; any
        bytes it sends first are drained and returned in self.drained."""
        self.drained = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(65536)
            except ConnectionResetError:
                return True
            except socket.timeout:
                return False
            if not chunk:
                return True
            self.drained += chunk

    # -- handshake --
    def greeting(self):
        magic, opt, hflags = struct.unpack(">QQH", self.recv_exact(18))
        check_eq(hex(magic), hex(NBDMAGIC), "greeting NBDMAGIC")
        check_eq(hex(opt), hex(IHAVEOPT), "greeting IHAVEOPT (fixed newstyle)")
        self.hflags = hflags
        return hflags

    def handshake(self, cflags=FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
        hflags = self.greeting()
        self.send(struct.pack(">I", cflags))
        self.no_zeroes = bool(cflags & FLAG_C_NO_ZEROES)
        return hflags

    def send_opt(self, opt, data=b"", length=None):
        if length is None:
            length = len(data)
        self.send(struct.pack(">QII", IHAVEOPT, opt, length) + data)

    def recv_opt_reply(self, expect_opt=None):
        magic, opt, rep, length = struct.unpack(">QIII", self.recv_exact(20))
        check_eq(hex(magic), hex(OPT_REPLY_MAGIC), "option reply magic")
        if expect_opt is not None:
            check_eq(opt, expect_opt, "option field echoed in reply")
        data = self.recv_exact(length) if length else b""
        return rep, data

    def opt_replies(self, opt):
        """All replies to one option, up to and including the final one
        (ACK or an error).  Returns [(rep, data), ...]."""
        out = []
        while True:
            rep, data = self.recv_opt_reply(opt)
            out.append((rep, data))
            if rep == REP_ACK or rep & REP_ERR_BIT:
                return out
            if len(out) > 1000:
                raise CheckFailed("more than 1000 replies to option %d" % opt)

    def option(self, opt, data=b"", length=None):
        self.send_opt(opt, data, length)
        return self.opt_replies(opt)

    def structured_reply(self):
        r = self.option(OPT_STRUCTURED_REPLY)
        check_eq(rep_name(r[-1][0]), "ACK", "reply to NBD_OPT_STRUCTURED_REPLY")
        self.structured = True

    @staticmethod
    def go_data(name=b"", infos=()):
        if isinstance(name, str):
            name = name.encode()
        return (struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos))
                + b"".join(struct.pack(">H", i) for i in infos))

    def info_or_go(self, opt, name=b"", infos=()):
        """Send NBD_OPT_INFO/GO.  Returns (final_rep, infos) where infos maps
        info type -> payload (after the 16-bit type)."""
        replies = self.option(opt, self.go_data(name, infos))
        got = {}
        for rep, data in replies[:-1]:
            check_eq(rep_name(rep), "INFO", "non-final reply to INFO/GO")
            check(len(data) >= 2, "NBD_REP_INFO shorter than 2 bytes")
            (itype,) = struct.unpack(">H", data[:2])
            got[itype] = data[2:]
        final = replies[-1][0]
        if final == REP_ACK:
            check(INFO_EXPORT in got, "INFO/GO succeeded without NBD_INFO_EXPORT")
            check_eq(len(got[INFO_EXPORT]), 10, "NBD_INFO_EXPORT payload length")
            self.size, self.tflags = struct.unpack(">QH", got[INFO_EXPORT])
        return final, got

    def go(self, name=b"", infos=()):
        final, got = self.info_or_go(OPT_GO, name, infos)
        check_eq(rep_name(final), "ACK", "final reply to NBD_OPT_GO(%r)" % (name,))
        return got

    def export_name(self, name=b""):
        if isinstance(name, str):
            name = name.encode()
        self.send_opt(OPT_EXPORT_NAME, name)
        self.size, self.tflags = struct.unpack(">QH", self.recv_exact(10))
        if not self.no_zeroes:
            pad = self.recv_exact(124)
            check(pad == bytes(124), "124 reserved bytes after EXPORT_NAME are not zeros")
        return self.size, self.tflags

    def set_meta(self, name=b"", queries=(b"base:allocation",), opt=OPT_SET_META_CONTEXT):
        data = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
        for q in queries:
            data += struct.pack(">I", len(q)) + q
        return self.option(opt, data)

    # -- transmission --
    def next_cookie(self):
        self.cookie += 1
        return 0xC0FFEE0000000000 | self.cookie

    def request(self, cmd, offset=0, length=0, flags=0, data=b"", cookie=None,
                magic=REQUEST_MAGIC):
        if cookie is None:
            cookie = self.next_cookie()
        self.send(struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length) + data)
        return cookie

    def recv_simple(self, cookie=None, datalen=0):
        """Simple reply: returns (error, data); data only when error == 0."""
        magic, err, ck = struct.unpack(">IIQ", self.recv_exact(16))
        check_eq(hex(magic), hex(SIMPLE_REPLY_MAGIC), "simple reply magic")
        if cookie is not None:
            check_eq(hex(ck), hex(cookie), "cookie echoed in simple reply")
        data = self.recv_exact(datalen) if (err == 0 and datalen) else b""
        return err, data

    def recv_chunk(self):
        """One reply message of either kind.  Returns a dict:
        simple: {kind, error, cookie}; structured: {kind, flags, type, cookie,
        payload}.  Simple read data is not consumed here."""
        (magic,) = struct.unpack(">I", self.recv_exact(4))
        if magic == SIMPLE_REPLY_MAGIC:
            err, ck = struct.unpack(">IQ", self.recv_exact(12))
            return {"kind": "simple", "error": err, "cookie": ck}
        check_eq(hex(magic), hex(STRUCTURED_REPLY_MAGIC), "reply magic")
        flags, rtype, ck, length = struct.unpack(">HHQI", self.recv_exact(16))
        payload = self.recv_exact(length) if length else b""
        return {"kind": "structured", "flags": flags, "type": rtype, "cookie": ck,
                "payload": payload}

    def recv_structured(self, cookie, offset=0, length=0):
        """All chunks of one structured reply (cookie must match; no other
        request may be in flight).  Returns (error, data, chunks): data is
        the reassembled read (holes as zeros), error is the first error
        chunk's code (0 if none)."""
        err = 0
        chunks = []
        pieces = []                      # (offset, bytes or hole length)
        while True:
            c = self.recv_chunk()
            if c["kind"] == "simple":
                check_eq(hex(c["cookie"]), hex(cookie), "cookie in simple reply")
                c["flags"] = REPLY_FLAG_DONE
                chunks.append(c)
                err = err or c["error"]
                break
            check_eq(hex(c["cookie"]), hex(cookie), "cookie in structured chunk")
            chunks.append(c)
            t, p = c["type"], c["payload"]
            if t == REPLY_TYPE_OFFSET_DATA:
                (off,) = struct.unpack(">Q", p[:8])
                d = p[8:]
                check(offset <= off and off + len(d) <= offset + length,
                      "data chunk [%d,+%d) outside request [%d,+%d)"
                      % (off, len(d), offset, length))
                pieces.append((off, d))
            elif t == REPLY_TYPE_OFFSET_HOLE:
                off, hl = struct.unpack(">QI", p)
                check(offset <= off and off + hl <= offset + length,
                      "hole chunk [%d,+%d) outside request" % (off, hl))
                pieces.append((off, hl))
            elif t & 0x8000:
                e, mlen = struct.unpack(">IH", p[:6])
                check(e != 0, "error chunk with error 0")
                err = err or e
            if c["flags"] & REPLY_FLAG_DONE:
                break
        if err:
            return err, b"", chunks
        buf = bytearray(length)
        pos = offset
        for off, d in sorted(pieces, key=lambda x: x[0]):
            check(off == pos, "read reply chunks leave a gap or overlap at %d" % pos)
            if isinstance(d, int):
                pos += d
            else:
                buf[off - offset:off - offset + len(d)] = d
                pos += len(d)
        check(pos == offset + length,
              "successful read reply does not cover the request (ends at %d)" % pos)
        return 0, bytes(buf), chunks

    def read(self, offset, length, flags=0):
        """READ; returns (error, data) for either reply kind."""
        ck = self.request(CMD_READ, offset, length, flags)
        if self.structured:
            err, data, _ = self.recv_structured(ck, offset, length)
            return err, (data if err == 0 else b"")
        return self.recv_simple(ck, length)

    def cmd(self, cmd, offset=0, length=0, flags=0, data=b""):
        """A command without read payload; returns the error code."""
        ck = self.request(cmd, offset, length, flags, data)
        if self.structured:
            err, _, _ = self.recv_structured(ck)
            return err
        return self.recv_simple(ck)[0]

    def write(self, offset, data, flags=0):
        return self.cmd(CMD_WRITE, offset, len(data), flags, data)

    def disc(self):
        self.request(CMD_DISC)


def connect_go(path, name=b"", structured=True, meta=False, infos=(), timeout=5.0):
    """A Raw client in transmission phase via NBD_OPT_GO."""
    c = Raw(path, timeout)
    c.handshake()
    if structured:
        c.structured_reply()
        if meta:
            r = c.set_meta(name)
            check_eq(rep_name(r[-1][0]), "ACK", "SET_META_CONTEXT final reply")
            c.meta_ids = {}
            for rep, data in r[:-1]:
                (cid,) = struct.unpack(">I", data[:4])
                c.meta_ids[data[4:]] = cid
    c.go(name, infos)
    return c


# ---- a backend side by side with nbdkit -----------------------------------

def unix_uri(sock):
    return "nbd+unix:///?socket=" + sock


def start_nbdkit(name, args, sock):
    """nbdkit NAME ARGS on sock, in the foreground; waits (bounded) for the
    socket.  The caller terminates it."""
    p = subprocess.Popen(["nbdkit", "-f", "-U", sock, name] + list(args),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    return p


def copy_out(sock, path):
    """The whole disk on sock, by nbdcopy into path; returns its bytes."""
    subprocess.run(["nbdcopy", unix_uri(sock), path], check=True)
    with open(path, "rb") as f:
        return f.read()


def extent_map(sock):
    """nbdinfo --map of the disk on sock as (offset, length, type) rows."""
    out = subprocess.run(["nbdinfo", "--map", "--json", unix_uri(sock)],
                         check=True, capture_output=True, text=True).stdout
    return [(e["offset"], e["length"], e["type"]) for e in json.loads(out)]


def same_as_nbdkit(name, cases):
    """For each argument list in cases, backend name served by nbdstack and
    by nbdkit gives the same bytes and the same map.  Skipped (logged)
    without nbdkit."""
    if not shutil.which("nbdkit"):
        log("  (skipped: nbdkit not installed)")
        return
    for i, args in enumerate(cases):
        srv = Server([name] + args)
        ksock = os.path.join(TMPDIR, "nbdkit%d.sock" % i)
        k = start_nbdkit(name, args, ksock)
        try:
            ours = copy_out(srv.sock, os.path.join(TMPDIR, "o.img"))
            theirs = copy_out(ksock, os.path.join(TMPDIR, "k.img"))
            check(ours == theirs, "%s: content differs from nbdkit's" % args)
            check_eq(extent_map(srv.sock), extent_map(ksock), "%s: map" % args)
        finally:
            k.terminate()
            k.wait(10)
            srv.stop()


def startup_refused(name, args, want):
    """nbdstack NAME ARGS exits non-zero at startup with want in stderr."""
    r = subprocess.run([NBDSTACK, "-U", os.path.join(TMPDIR, "x"),
                        name] + args, capture_output=True, text=True,
                       timeout=10)
    check(r.returncode != 0 and want in r.stderr,
          "%s refused with %r: rc %d, %r" % (args, want, r.returncode,
                                              r.stderr))
