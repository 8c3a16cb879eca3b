#!/usr/bin/python3
"""SIGHUP re-reads the config file (docs/config.md, "Reload").

Real clients (libnbd) connected across reloads: an unchanged memory
export keeps its data, a kept cow overlay stays locked by its instance, a
kept writeback cache stays one cache, a changed description keeps the
layers (readonly does not), an added export answers, a removed one keeps
serving the client that had it open and refuses new ones, a broken file
is refused whole, listen addresses are bound and closed, settings that
need a restart are reported, systemd hears RELOADING=1 then READY=1, and
in command-line mode SIGHUP does not kill the server.
"""

import os
import shutil
import socket
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (the nbd module) is not installed")

T.start_watchdog()
C = Checker("test_reload")
servers = []


def start(name, text):
    s, cfg = T.config_server(name, text)
    servers.append(s)
    return s, cfg, s.sock


def reload(s, cfg, text, expect="reloaded "):
    """Writes the new config, sends SIGHUP, waits for the outcome line."""
    s.sighup(cfg, text, expect)


def client(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def cannot_open(uri):
    h = nbd.NBD()
    try:
        h.connect_uri(uri)
    except nbd.Error:
        return True
    h.shutdown()
    return False


ONE = "[server]\nlisten = unix:SOCK\n[export a]\nbackend = memory size=1M\n"
TWO = ONE + "[export b]\nbackend = memory size=2M\n"


def keeps_data_and_adds():
    s, cfg, sock = start("keep", ONE)
    h = client(s.uri_for("a"))
    h.pwrite(b"kept across reload", 4096)
    h.shutdown()
    old = client(s.uri_for("a"))             # connected across the reload
    reload(s, cfg, TWO)
    check_eq(old.pread(18, 4096), b"kept across reload", "old client's data")
    old.shutdown()
    h = client(s.uri_for("a"))
    check_eq(h.pread(18, 4096), b"kept across reload", "new client's data")
    h.shutdown()
    b = client(s.uri_for("b"))
    check_eq(b.get_size(), 2 << 20, "added export's size")
    b.shutdown()
    check("1 export kept, 0 changed, 1 added" in s.log_text(),
          "reload reports what it kept and added")
    check_eq(s.stop(), 0, "exit status")


def have_layers(*names):
    out = subprocess.run([T.NBDSTACK, "--list"], capture_output=True,
                         text=True).stdout
    have = {line.split()[0] for line in out.splitlines()
            if line.startswith("  ") and not line.startswith("   ")}
    return all(n in have for n in names)


def kept_overlay_stays_locked():
    if not have_layers("cow"):
        T.log("SKIP: no cow filter in this build")
        return
    ov = os.path.join(T.TMPDIR, "kept.overlay")
    cow = ("[server]\nlisten = unix:SOCK\n[export c]\n"
           "filter = cow overlay=%s\nbackend = memory size=1M\n" % ov)
    s, cfg, sock = start("cowkeep", cow)
    h = client(s.uri_for("c"))
    h.pwrite(b"in the overlay", 8192)
    h.shutdown()
    # Rebuilt, the new instance would find the overlay locked by the
    # running one and the reload would be refused.
    reload(s, cfg, cow + "[export d]\nbackend = memory size=1M\n")
    check("1 export kept, 0 changed, 1 added" in s.log_text(),
          "the cow export is kept:\n" + s.log_text())
    h = client(s.uri_for("c"))
    check_eq(h.pread(14, 8192), b"in the overlay", "data after the reload")
    h.shutdown()
    second = subprocess.run(
        [T.NBDSTACK, "-U", os.path.join(T.TMPDIR, "cowkeep2.sock"),
         "--filter", "cow", "memory", "size=1M", "overlay=" + ov],
        stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=10)
    check(second.returncode != 0 and "in use" in second.stderr,
          "a second server took the kept overlay: %d %r"
          % (second.returncode, second.stderr))
    check_eq(s.stop(), 0, "exit status")


def kept_cache_is_one_cache():
    if not have_layers("cache", "file"):
        T.log("SKIP: no cache filter or file backend in this build")
        return
    img = os.path.join(T.TMPDIR, "cached.img")
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    text = ("[server]\nlisten = unix:SOCK\n[export k]\n"
            "filter = cache cache=writeback\nbackend = file %s\n" % img)
    s, cfg, sock = start("cachekeep", text)
    # Stays open across the reload: a connection flushes when it closes.
    w = client(s.uri_for("k"))
    w.pwrite(b"dirty in the cache", 65536)
    with open(img, "rb") as f:
        f.seek(65536)
        check_eq(f.read(18), b"\0" * 18, "writeback before any flush")
    reload(s, cfg, text + "[export other]\nbackend = memory size=1M\n")
    check("1 export kept, 0 changed, 1 added" in s.log_text(),
          "the cache export is kept:\n" + s.log_text())
    h = client(s.uri_for("k"))
    check_eq(h.pread(18, 65536), b"dirty in the cache",
             "a new connection reads the one cache")
    h.shutdown()
    check_eq(s.stop(), 0, "exit status")   # w still connected
    del w
    with open(img, "rb") as f:
        f.seek(65536)
        check_eq(f.read(18), b"dirty in the cache", "the file after SIGTERM")


def description_only_is_kept():
    text = ONE.replace("[export a]\n", "[export a]\ndescription = first\n")
    s, cfg, sock = start("desc", text)
    h = client(s.uri_for("a"))
    h.pwrite(b"kept data", 0)
    h.shutdown()
    reload(s, cfg, text.replace("= first", "= second one"))
    check("1 export kept, 0 changed" in s.log_text(),
          "a description change keeps the export:\n" + s.log_text())
    h = client(s.uri_for("a"))
    check_eq(h.pread(9, 0), b"kept data", "data after a description change")
    h.shutdown()
    h = nbd.NBD()
    h.set_full_info(True)
    h.connect_uri(s.uri_for("a"))
    check_eq(h.get_export_description(), "second one", "new description")
    h.shutdown()
    if shutil.which("nbdinfo"):
        out = subprocess.run(["nbdinfo", s.uri_for("a")], capture_output=True,
                             text=True, timeout=10).stdout
        check("description: second one" in out, "nbdinfo shows:\n" + out)
    # readonly is kept on the layers' export, shared with older
    # connections: a change rebuilds (docs/config.md, "Reload").
    reload(s, cfg, text.replace("= first", "= second one\nreadonly = yes"))
    check("0 exports kept, 1 changed" in s.log_text(),
          "a readonly change rebuilds:\n" + s.log_text())
    h = client(s.uri_for("a"))
    check(h.is_read_only(), "the new readonly applies")
    check_eq(h.pread(9, 0), b"\0" * 9, "a rebuilt memory export")
    h.shutdown()
    check_eq(s.stop(), 0, "exit status")


def changed_is_rebuilt():
    s, cfg, sock = start("change", ONE)
    h = client(s.uri_for("a"))
    h.pwrite(b"old", 0)
    reload(s, cfg, ONE.replace("size=1M", "size=3M"))
    check_eq(h.get_size(), 1 << 20, "open client keeps the old stack")
    check_eq(h.pread(3, 0), b"old", "open client keeps the old data")
    h.pwrite(b"still", 8)
    h.shutdown()
    h = client(s.uri_for("a"))
    check_eq(h.get_size(), 3 << 20, "new client gets the changed export")
    check_eq(h.pread(3, 0), b"\0\0\0", "a changed export is rebuilt")
    h.shutdown()
    check_eq(s.stop(), 0, "exit status")


def removed_serves_its_client():
    s, cfg, sock = start("remove", TWO)
    h = client(s.uri_for("b"))
    h.pwrite(b"b data", 0)
    reload(s, cfg, ONE)
    check(cannot_open(s.uri_for("b")), "a new client opened a removed export")
    h.pwrite(b"more", 100)
    check_eq(h.pread(6, 0), b"b data", "removed export's data for its client")
    check_eq(h.pread(4, 100), b"more", "removed export still writes")
    h.shutdown()
    a = client(s.uri_for("a"))
    a.shutdown()
    check_eq(s.stop(), 0, "exit status")


def broken_is_refused():
    s, cfg, sock = start("broken", ONE)
    h = client(s.uri_for("a"))
    h.pwrite(b"x", 0)
    h.shutdown()
    bad = TWO + "[export c]\nbackend = nosuchbackend\nfilter = nosuch\n"
    reload(s, cfg, bad, expect="refused, the running exports stay")
    log = s.log_text()
    check(log.count("reload: " + cfg + ":") >= 2,
          "every error is logged:\n" + log)
    check(cannot_open(s.uri_for("b")), "a refused config's export answers")
    h = client(s.uri_for("a"))
    check_eq(h.pread(1, 0), b"x", "running export after a refused reload")
    h.shutdown()
    check_eq(s.stop(), 0, "exit status")


def listeners_follow():
    s, cfg, sock = start("listen", ONE)
    sock2 = os.path.join(T.TMPDIR, "listen2.sock")
    h = client(s.uri_for("a"))
    reload(s, cfg, ONE.replace("unix:SOCK", "unix:" + sock2))
    check(not os.path.exists(sock), "a removed Unix socket is left behind")
    check(cannot_open(s.uri_for("a")), "a removed address still accepts")
    h2 = client("nbd+unix:///a?socket=" + sock2)
    h2.pwrite(b"via new", 0)
    check_eq(h.pread(7, 0), b"via new", "client of the closed address")
    h.shutdown()
    h2.shutdown()
    check_eq(s.stop(), 0, "exit status")
    check(not os.path.exists(sock2), "the added socket is left at exit")


def bad_listen_refused():
    s, cfg, sock = start("badlisten", ONE)
    text = ONE.replace("[export a]",
                       "listen = unix:/nonexistent-dir/x.sock\n[export a]")
    reload(s, cfg, text, expect="cannot be bound")
    h = client(s.uri_for("a"))
    h.shutdown()
    check_eq(s.stop(), 0, "exit status")


def restart_settings():
    s, cfg, sock = start("restart", ONE)
    reload(s, cfg, ONE.replace("[server]\n", "[server]\nthreads = 3\n"))
    check("threads changed: needs a restart" in s.log_text(),
          "no 'needs a restart' for threads")
    h = client(s.uri_for("a"))
    h.shutdown()
    check_eq(s.stop(), 0, "exit status")


def notify():
    path = os.path.join(T.TMPDIR, "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(path)
    ns.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    cfg = os.path.join(T.TMPDIR, "notify.ini")
    sock = os.path.join(T.TMPDIR, "notify.sock2")
    T.write_config(cfg, ONE.replace("SOCK", sock))
    s = Server(config=cfg, sock=sock, name="notify", env=env)
    servers.append(s)
    msgs = []
    while not any(m.startswith("READY=1") for m in msgs):
        msgs.append(ns.recv(4096).decode())
    reload(s, cfg, TWO)
    got = []
    while not any(m.startswith("READY=1") for m in got):
        got.append(ns.recv(4096).decode())
    firsts = [m.split("\n")[0] for m in got if not m.startswith("STATUS=")]
    check(firsts[:2] == ["RELOADING=1", "READY=1"],
          "RELOADING=1 then READY=1, got %r" % got)
    check_eq(s.stop(), 0, "exit status")
    ns.close()


def cmdline_mode():
    s = Server(["memory", "size=1M"], name="cmdline")
    servers.append(s)
    reload(s, None, None, expect="nothing to reload")
    h = client(s.uri)
    h.shutdown()
    check(os.path.exists(s.sock), "the socket is still there")
    check_eq(s.stop(), 0, "exit status")
    check(not os.path.exists(s.sock), "socket left after SIGTERM")


C.run("a kept memory export keeps its data; an added one answers",
      keeps_data_and_adds)
C.run("a kept cow overlay stays locked by its instance",
      kept_overlay_stays_locked)
C.run("a kept writeback cache is one cache", kept_cache_is_one_cache)
C.run("a description change keeps the layers; readonly rebuilds",
      description_only_is_kept)
C.run("a changed export is rebuilt; its open client keeps the old one",
      changed_is_rebuilt)
C.run("a removed export serves its client until it closes",
      removed_serves_its_client)
C.run("a config with errors is refused whole", broken_is_refused)
C.run("listen addresses added are bound, removed ones closed",
      listeners_follow)
C.run("a listen address that cannot be bound refuses the reload",
      bad_listen_refused)
C.run("server settings changed need a restart", restart_settings)
C.run("systemd hears RELOADING=1 then READY=1", notify)
C.run("command-line mode: SIGHUP does not kill", cmdline_mode)
C.finish(servers)
