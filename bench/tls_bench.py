"""bench/run --tls: nbdstack vs nbdkit, both with --tls=require, same PSK
file and same X.509 directory, on a Unix socket, rounds alternated.

Workloads (libnbd clients, so TLS parameters go in the URI; fio's nbd
engine cannot pass them):
  copy-in    nbdcopy of a random file into the memory disk (--flush)
  copy-out   nbdcopy of the disk to /dev/null
  rand4k     nbdsh-driven: 4 KiB random reads and writes (50/50) from
             one connection, 16 in flight, for --runtime seconds
For each: MiB/s and server CPU (utime+stime of the server's process
tree) per GiB moved.  Also: the version and suite a GnuTLS client
(gnutls-cli, libnbd's library) negotiates with each server, and with
--perf a perf profile of each server during an X.509 copy-out.

Imported by bench/run; standard library only (plus /usr/bin/python3's
nbd module through nbdsh)."""

import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

MiB = 1 << 20
GiB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("[bench-tls]", *a, file=sys.stderr, flush=True)


def run(argv, timeout=600, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def cpu_ticks(pid):
    """utime+stime of pid and its children still alive, in seconds."""
    total = 0
    pids = [pid]
    try:
        for t in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / CLK_TCK


def make_pki(d):
    def certtool(*a):
        r = run(["certtool"] + list(a))
        if r.returncode:
            raise RuntimeError("certtool: " + r.stderr)

    def tmpl(name, text):
        p = os.path.join(d, name + ".info")
        with open(p, "w") as f:
            f.write(text)
        return p
    srv, cli = os.path.join(d, "srv"), os.path.join(d, "cli")
    os.makedirs(srv)
    os.makedirs(cli)
    ca_key, ca = os.path.join(d, "ca-key.pem"), os.path.join(srv, "ca-cert.pem")
    certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", ca_key)
    certtool("--generate-self-signed", "--load-privkey", ca_key, "--template",
             tmpl("ca", 'cn = "bench CA"\nca\ncert_signing_key\nexpiration_days = 2\n'),
             "--outfile", ca)
    # RSA 2048, what certtool and most sites make for servers.
    certtool("--generate-privkey", "--key-type=rsa", "--bits=2048", "--outfile",
             os.path.join(srv, "server-key.pem"))
    certtool("--generate-certificate", "--load-privkey", os.path.join(srv, "server-key.pem"),
             "--load-ca-certificate", ca, "--load-ca-privkey", ca_key, "--template",
             tmpl("srv", 'cn = "localhost"\ndns_name = "localhost"\ntls_www_server\n'
                  'encryption_key\nsigning_key\nexpiration_days = 2\n'),
             "--outfile", os.path.join(srv, "server-cert.pem"))
    shutil.copy(ca, os.path.join(cli, "ca-cert.pem"))
    psk = os.path.join(d, "keys.psk")
    key = os.urandom(32).hex()
    with open(psk, "w") as f:
        f.write("alice:%s\n" % key)
    return srv, cli, psk, key


class Server:
    def __init__(self, argv, sock, logpath):
        self.sock = sock
        try:
            os.unlink(sock)
        except FileNotFoundError:
            pass
        self.logf = open(logpath, "wb")
        self.p = subprocess.Popen(argv, stdout=self.logf, stderr=self.logf,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start: %s" % " ".join(argv))
            time.sleep(0.05)

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.logf.close()


class Relay:
    """127.0.0.1:port -> Unix socket, after the NBD greeting and STARTTLS,
    so that gnutls-cli (which knows no NBD) can report the suite."""

    def __init__(self, path):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(1)
        self.port = self.ls.getsockname()[1]
        self.path = path
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        c, _ = self.ls.accept()
        u = socket.socket(socket.AF_UNIX)
        u.connect(self.path)
        self.recvn(u, 18)
        u.sendall(struct.pack(">I", 3))
        u.sendall(struct.pack(">QII", 0x49484156454F5054, 5, 0))
        self.recvn(u, 20)

        def one(a, b):
            try:
                while True:
                    x = a.recv(65536)
                    if not x:
                        break
                    b.sendall(x)
            except OSError:
                pass
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        t = threading.Thread(target=one, args=(u, c), daemon=True)
        t.start()
        one(c, u)
        t.join(5)

    @staticmethod
    def recvn(s, n):
        b = b""
        while len(b) < n:
            x = s.recv(n - len(b))
            if not x:
                raise OSError("closed")
            b += x
        return b


def negotiated(sock, creds):
    """'TLS1.2 ... AES-256-GCM' as gnutls-cli (NORMAL priority, as libnbd)
    reports it for this server."""
    r = Relay(sock)
    argv = ["gnutls-cli", "-p", str(r.port), "127.0.0.1"] + creds
    out = run(argv, timeout=30, input="")
    for line in (out.stdout + out.stderr).splitlines():
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    return "? (%s)" % (out.stderr.strip().splitlines() or ["no output"])[-1]


RAND_SCRIPT = r'''
import os, random, time
h.set_uri_allow_local_file(True)
h.connect_uri(URI)
size = h.get_size()
rng = random.Random(1)
buf = nbd.Buffer(4096)
wbuf = nbd.Buffer.from_bytearray(bytearray(os.urandom(4096)))
done = [0]
def fin(err):
    done[0] += 1
    return 1            # retire the command
end = time.monotonic() + RUNTIME
while time.monotonic() < end:
    while h.aio_in_flight() < 16:
        off = rng.randrange(size // 4096) * 4096
        if rng.random() < 0.5:
            h.aio_pread(buf, off, completion=fin)
        else:
            h.aio_pwrite(wbuf, off, completion=fin)
    h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
print(done[0])
h.shutdown()
'''


def workload(kind, srv, uri, src, size, runtime, workdir):
    """(MiB/s, bytes moved, server CPU s)."""
    c0, t0 = cpu_ticks(srv.p.pid), time.monotonic()
    if kind == "copy-in":
        r = run(["nbdcopy", "--flush", src, uri])
        moved = size
    elif kind == "copy-out":
        r = run(["nbdcopy", uri, "null:"])
        moved = size
    else:
        script = os.path.join(workdir, "rand.py")
        with open(script, "w") as f:
            f.write(RAND_SCRIPT.replace("URI", repr(uri)).replace("RUNTIME", str(runtime)))
        env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
        r = run(["nbdsh", "-c", "exec(open(%r).read())" % script], env=env)
        moved = int(r.stdout.strip() or 0) * 4096 if r.returncode == 0 else 0
    t1, c1 = time.monotonic(), cpu_ticks(srv.p.pid)
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (kind, r.stderr.strip()[-300:]))
    return moved / MiB / (t1 - t0), moved, c1 - c0


def profile(argv, sock, uri, src, workdir, name):
    """The server's profile during one X.509 copy-out alone: the disk is
    filled first, then perf records the whole machine while nbdcopy reads
    it out, and the report keeps the server's threads (by process id),
    in percent of the server's samples."""
    if not shutil.which("perf"):
        return ["(perf not installed)"]
    data = os.path.join(workdir, name + ".perf")
    srv = Server(argv, sock, os.path.join(workdir, name + "-perf.log"))
    try:
        run(["nbdcopy", "--flush", src, uri])
        run(["perf", "record", "-q", "-a", "-F", "999", "-o", data, "--",
             "nbdcopy", uri, "null:"])
    finally:
        srv.stop()
    # By process: other programs (or another nbdstack) may run meanwhile.
    r = run(["perf", "report", "-i", data, "--pid", str(srv.p.pid),
             "--percentage", "relative", "--no-children", "--sort", "dso,sym", "--stdio"])
    rows = [ln.rstrip() for ln in r.stdout.splitlines()
            if ln.strip() and not ln.startswith("#") and "%" in ln]
    return rows[:14] or ["(perf report empty: %s)" % r.stderr.strip()[-200:]]


def main(args, nbdstack):
    for tool in ("nbdkit", "nbdcopy", "nbdsh", "certtool", "gnutls-cli"):
        if not shutil.which(tool):
            log("missing tool: %s" % tool)
            return 2
    size = {"K": 1 << 10, "M": MiB, "G": GiB}.get(args.size[-1:].upper(), 1) * \
        int(args.size[:-1] if args.size[-1:].isalpha() else args.size)
    workdir = tempfile.mkdtemp(prefix="nbdtls-", dir="/tmp")
    try:
        srvdir, clidir, psk, key = make_pki(workdir)
        src = os.path.join(workdir, "src.bin")
        with open(src, "wb") as f:
            for _ in range(size // (16 * MiB)):
                f.write(os.urandom(16 * MiB))
            f.write(os.urandom(size % (16 * MiB)))
        sock = os.path.join(workdir, "s.sock")
        # One credential per run: nbdkit given both serves PSK only.
        sides = {
            "nbdstack": lambda cred: [nbdstack, "-U", sock, "--tls=require", cred, "memory",
                                      "size=%d" % size],
            "nbdkit": lambda cred: ["nbdkit", "-f", "-U", sock, "--tls=require", cred, "memory",
                                    str(size)],
        }
        modes = {
            "X.509": ("nbds+unix:///?socket=%s&tls-certificates=%s" % (sock, clidir),
                      ["--x509cafile=" + os.path.join(clidir, "ca-cert.pem"),
                       "--verify-hostname=localhost"],
                      "--tls-certificates=" + srvdir),
            "PSK": ("nbds+unix://alice@/?socket=%s&tls-psk-file=%s" % (sock, psk),
                    ["--pskusername=alice", "--pskkey=" + key,
                     "--priority=NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"], "--tls-psk=" + psk),
        }
        kinds = ["copy-in", "copy-out", "rand4k"]
        res = {}                        # (mode, kind, side) -> [(mibs, cpu/GiB)]
        suites = {}
        order = list(sides)
        for rnd in range(args.rounds):
            for side in (order if rnd % 2 == 0 else order[::-1]):
                for mode, (uri, creds, cred) in modes.items():
                    srv = Server(sides[side](cred), sock, os.path.join(workdir, side + ".log"))
                    try:
                        if (mode, side) not in suites:
                            suites[(mode, side)] = negotiated(sock, creds)
                        for kind in kinds:
                            mibs, moved, cpu = workload(kind, srv, uri, src, size,
                                                        args.runtime, workdir)
                            res.setdefault((mode, kind, side), []).append(
                                (mibs, cpu / (moved / GiB) if moved else float("nan")))
                            log("round %d %s %s %s: %.1f MiB/s, %.2f CPU s/GiB"
                                % (rnd + 1, side, mode, kind, mibs, res[(mode, kind, side)][-1][1]))
                    finally:
                        srv.stop()
        profiles = {}
        if args.perf:
            for side in order:
                profiles[side] = profile(sides[side](modes["X.509"][2]), sock,
                                         modes["X.509"][0], src, workdir, side)
        return render(args, res, suites, profiles, kinds, list(modes), order, size)
    finally:
        shutil.rmtree(workdir, True)


def render(args, res, suites, profiles, kinds, modes, order, size):
    a, b = order
    out = ["## TLS: nbdstack vs nbdkit, both --tls=require", "",
           "- disk: memory, %d MiB; %d rounds, sides alternated (A B, B A, ...); rand4k: "
           "%d s, 16 in flight, 50%% writes, one nbdsh connection" % (size // MiB, args.rounds,
                                                                       args.runtime),
           "- MiB/s and server CPU seconds (utime+stime) per GiB moved: medians, min..max in "
           "brackets; ratio = nbdstack / nbdkit (MiB/s: > 1 is faster; CPU: < 1 is cheaper)",
           "", "| mode | workload | nbdstack MiB/s | nbdkit MiB/s | ratio | nbdstack CPU s/GiB "
           "| nbdkit CPU s/GiB | CPU ratio |", "|---|---|---|---|---|---|---|---|"]
    for mode in modes:
        for kind in kinds:
            ra, rb = res.get((mode, kind, a), []), res.get((mode, kind, b), [])
            if not ra or not rb:
                continue
            ma = statistics.median(x[0] for x in ra)
            mb = statistics.median(x[0] for x in rb)
            ca = statistics.median(x[1] for x in ra)
            cb = statistics.median(x[1] for x in rb)

            def rng(xs, i):
                return "%.0f..%.0f" % (min(x[i] for x in xs), max(x[i] for x in xs)) if i == 0 \
                    else "%.2f..%.2f" % (min(x[i] for x in xs), max(x[i] for x in xs))
            out.append("| %s | %s | %.0f [%s] | %.0f [%s] | %.2f | %.2f [%s] | %.2f [%s] | %.2f |"
                       % (mode, kind, ma, rng(ra, 0), mb, rng(rb, 0), ma / mb if mb else 0,
                          ca, rng(ra, 1), cb, rng(rb, 1), ca / cb if cb else 0))
    out += ["", "Negotiated with a GnuTLS client (gnutls-cli, NORMAL priority, as libnbd):", ""]
    for (mode, side), s in sorted(suites.items()):
        out.append("- %s, %s: %s" % (side, mode, s))
    for side, rows in profiles.items():
        out += ["", "perf profile of %s during an X.509 copy-out (top symbols, self time, %% of the server's samples):" % side,
                "", "```"] + rows + ["```"]
    return "\n".join(out) + "\n"
