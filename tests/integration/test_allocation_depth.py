#!/usr/bin/python3
"""qemu:allocation-depth and several meta contexts in one session, against
qemu-nbd.

The same layout twice: a qcow2 overlay over base.raw (`qemu-img create -f
qcow2 -b base.raw -F raw`) with some writes made by qemu-io, served by
`qemu-nbd -A`; and the cow filter over the file backend on base.raw, with
the same writes made by qemu-io through nbdstack.  nbdinfo
--map=qemu:allocation-depth, nbdinfo --map (base:allocation) and qemu-img
map --output=json give the same answers from both, and the depths are
the expected ones (1 in the overlay, 2 below it).  Then by hand: both
contexts selected in one session with their own ids, one BLOCK_STATUS
answered for both, LIST_META_CONTEXT queries "base:", "qemu:" and ""
(every context), and the file backend alone at depth 1 everywhere, holes
included, as qemu-nbd says of a raw file.  The nbd backend forwards its
upstream's depth map: over qemu-nbd -A and over nbdstack's cow the same
map as the upstream's, over qemu-nbd without -A depth 1.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import *  # noqa: E402,F401,F403
import nbdtest as T    # noqa: E402

for tool in ("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo"):
    if not shutil.which(tool):
        T.skip("%s is not installed" % tool)
T.require_layers("cow", "file", "nbd")
T.start_watchdog(int(os.environ.get("TEST_DEADLINE", "180")))

D = T.TMPDIR
SIZE = 16 * MiB
BASE = os.path.join(D, "base.raw")
OVERLAY = os.path.join(D, "overlay.qcow2")
# Writes made to both, as qemu-io commands: data (whole and partial
# 64 KiB clusters, the cow block size too), zeros that may unmap, and
# one across a cluster boundary.
WRITES = ["write -P 0x11 1M 64k", "write -P 0x22 3M 4k",
          "write -P 0x33 4194300 8", "write -z -u 6M 128k",
          "write -P 0x44 9M 192k"]

with open(BASE, "wb") as f:
    f.truncate(SIZE)
    for off, n in ((0, 2 * MiB), (5 * MiB, MiB), (12 * MiB, 512 * 1024)):
        f.seek(off)
        f.write(os.urandom(n))


def run(argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise CheckFailed("%s: %s" % (" ".join(argv), r.stderr.strip()))
    return r.stdout


run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", BASE, "-F", "raw",
     OVERLAY])
run(["qemu-io", "-f", "qcow2", OVERLAY] +
    [a for w in WRITES for a in ("-c", w)])

QSOCK = os.path.join(D, "qemu.sock")
qemu = subprocess.Popen(["qemu-nbd", "-t", "-r", "-A", "-f", "qcow2", "-k",
                         QSOCK, OVERLAY], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
for _ in range(200):
    if os.path.exists(QSOCK):
        break
    time.sleep(0.05)

srv = Server(["--filter=cow", "file", "file=" + BASE, "readonly=yes"],
             name="cow")
run(["qemu-io", "-f", "raw", unix_uri(srv.sock)] +
    [a for w in WRITES for a in ("-c", w)])
plain = Server(["file", "file=" + BASE, "readonly=yes"], name="plain")
C = Checker("test_allocation_depth")


def nbdinfo_map(sock, ctx=None):
    argv = ["nbdinfo", "--map"] if ctx is None else ["nbdinfo", "--map=" + ctx]
    return run(argv + ["--json", unix_uri(sock)])


def t_depth_map():
    ours = nbdinfo_map(srv.sock, "qemu:allocation-depth")
    theirs = nbdinfo_map(QSOCK, "qemu:allocation-depth")
    check_eq(ours, theirs, "nbdinfo --map=qemu:allocation-depth vs qemu-nbd")
    rows = [(e["offset"], e["length"], e["type"]) for e in json.loads(ours)]
    depth = {}
    for off, ln, t in rows:
        for blk in range(off // (64 * 1024), (off + ln) // (64 * 1024)):
            depth[blk] = t
    blk = lambda off: off // (64 * 1024)  # noqa: E731
    check_eq(depth[blk(1 * MiB)], 1, "written cluster")
    check_eq(depth[blk(3 * MiB)], 1, "partially written cluster")
    check_eq(depth[blk(4194300)], 1, "cluster before a boundary write")
    check_eq(depth[blk(4 * MiB)], 1, "cluster after a boundary write")
    check_eq(depth[blk(6 * MiB)], 1, "zeroed cluster")
    check_eq(depth[blk(0)], 2, "base data below")
    check_eq(depth[blk(8 * MiB)], 2, "base hole below")
    check_eq(sorted(set(depth.values())), [1, 2], "depths present")


def t_base_allocation_map():
    check_eq(nbdinfo_map(srv.sock), nbdinfo_map(QSOCK),
             "nbdinfo --map (base:allocation) vs qemu-nbd")


def t_qemu_img_map():
    ours = run(["qemu-img", "map", "--output=json", "-f", "raw",
                unix_uri(srv.sock)])
    theirs = run(["qemu-img", "map", "--output=json", "-f", "raw",
                  unix_uri(QSOCK)])
    check_eq(ours, theirs, "qemu-img map --output=json vs qemu-nbd")


def t_raw_depth_one():
    rows = json.loads(nbdinfo_map(plain.sock, "qemu:allocation-depth"))
    check_eq([(e["offset"], e["length"], e["type"]) for e in rows],
             [(0, SIZE, 1)], "file backend alone: depth 1, holes included")
    # qemu-nbd on the raw file says the same.
    sock = os.path.join(D, "qraw.sock")
    q = subprocess.Popen(["qemu-nbd", "-t", "-r", "-A", "-f", "raw", "-k",
                          sock, BASE], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        check_eq(nbdinfo_map(plain.sock, "qemu:allocation-depth"),
                 nbdinfo_map(sock, "qemu:allocation-depth"),
                 "raw file: nbdstack vs qemu-nbd")
    finally:
        q.terminate()
        q.wait(10)


def t_two_contexts_one_session():
    c = Raw(srv.sock)
    c.handshake()
    c.structured_reply()
    r = c.set_meta(b"", (b"base:allocation", b"qemu:allocation-depth"))
    check_eq(rep_name(r[-1][0]), "ACK", "SET_META_CONTEXT")
    ids = {d[4:]: struct.unpack(">I", d[:4])[0] for _, d in r[:-1]}
    check_eq(sorted(ids), [b"base:allocation", b"qemu:allocation-depth"],
             "contexts selected")
    check(len(set(ids.values())) == 2 and 0 not in ids.values(),
          "distinct nonzero ids: %r" % ids)
    c.go()
    ck = c.request(CMD_BLOCK_STATUS, 0, 8 * MiB)
    got = {}
    while True:
        ch = c.recv_chunk()
        check_eq(ch["kind"], "structured", "reply kind")
        check_eq(hex(ch["cookie"]), hex(ck), "cookie")
        check_eq(ch["type"], REPLY_TYPE_BLOCK_STATUS, "chunk type")
        p = ch["payload"]
        (cid,) = struct.unpack(">I", p[:4])
        got[cid] = [struct.unpack(">II", p[i:i + 8])
                    for i in range(4, len(p), 8)]
        if ch["flags"] & REPLY_FLAG_DONE:
            break
    check_eq(sorted(got), sorted(ids.values()), "a chunk per context")
    dep = got[ids[b"qemu:allocation-depth"]]
    check_eq(dep[0], (1 * MiB, 2), "depth: base below for the first 1 MiB")
    check_eq(dep[1], (64 * 1024, 1), "depth: then the written cluster")
    alloc = got[ids[b"base:allocation"]]
    check_eq(sum(n for n, _ in alloc), 8 * MiB, "base:allocation covers")
    # REQ_ONE: one descriptor in each chunk.
    ck = c.request(CMD_BLOCK_STATUS, 0, 8 * MiB, CMD_FLAG_REQ_ONE)
    n = 0
    while True:
        ch = c.recv_chunk()
        check_eq(len(ch["payload"]), 12, "REQ_ONE chunk length")
        n += 1
        if ch["flags"] & REPLY_FLAG_DONE:
            break
    check_eq(n, 2, "REQ_ONE chunks")
    c.close()


def t_list_queries():
    c = Raw(srv.sock)
    c.handshake()
    c.structured_reply()
    for q, want in (((b"base:",), [b"base:allocation"]),
                    ((b"qemu:",), [b"qemu:allocation-depth"]),
                    ((), [b"base:allocation", b"qemu:allocation-depth"]),
                    ((b"base:", b"qemu:"),
                     [b"base:allocation", b"qemu:allocation-depth"]),
                    ((b"qemu:allocation-depth", b"qemu:allocation-depth"),
                     [b"qemu:allocation-depth"]),
                    ((b"qemu:dirty-bitmap:x", b"nosuch:", b"qemu"), [])):
        r = c.set_meta(b"", q, opt=OPT_LIST_META_CONTEXT)
        check_eq(rep_name(r[-1][0]), "ACK", "LIST %r" % (q,))
        names = [d[4:] for _, d in r[:-1]]
        check_eq(names, want, "LIST_META_CONTEXT %r" % (q,))
        check(all(struct.unpack(">I", d[:4])[0] == 0 for _, d in r[:-1]),
              "LIST gives id 0")
    # SET with only depth: BLOCK_STATUS answers it alone.
    r = c.set_meta(b"", (b"qemu:allocation-depth",))
    ids = [struct.unpack(">I", d[:4])[0] for _, d in r[:-1]]
    check_eq(len(ids), 1, "one context set")
    c.go()
    ck = c.request(CMD_BLOCK_STATUS, 0, MiB)
    ch = c.recv_chunk()
    check_eq(ch["flags"] & REPLY_FLAG_DONE, REPLY_FLAG_DONE, "one chunk")
    check_eq(struct.unpack(">I", ch["payload"][:4])[0], ids[0], "its id")
    c.close()
    # qemu-nbd agrees on the namespace queries.
    q = Raw(QSOCK)
    q.handshake()
    q.structured_reply()
    r = q.set_meta(b"", (b"qemu:allocation-depth",), opt=OPT_LIST_META_CONTEXT)
    check_eq([d[4:] for _, d in r[:-1]], [b"qemu:allocation-depth"],
             "qemu-nbd: LIST qemu:allocation-depth")
    q.close()


def t_nbd_proxy():
    # nbdstack nbd over qemu-nbd -A: the upstream's map, both contexts.
    px = Server(["nbd", "socket=" + QSOCK], name="proxy-qemu")
    try:
        check_eq(nbdinfo_map(px.sock, "qemu:allocation-depth"),
                 nbdinfo_map(QSOCK, "qemu:allocation-depth"),
                 "nbd over qemu-nbd -A: depth map vs qemu-nbd directly")
        check_eq(nbdinfo_map(px.sock), nbdinfo_map(QSOCK),
                 "nbd over qemu-nbd -A: base:allocation vs qemu-nbd")
        rows = json.loads(nbdinfo_map(px.sock, "qemu:allocation-depth"))
        check_eq(sorted(set(e["type"] for e in rows)), [1, 2],
                 "depths through the proxy")
    finally:
        px.stop()
    # Over nbdstack's cow (extended headers upstream): cow's map.
    px = Server(["nbd", "socket=" + srv.sock], name="proxy-cow")
    try:
        check_eq(nbdinfo_map(px.sock, "qemu:allocation-depth"),
                 nbdinfo_map(srv.sock, "qemu:allocation-depth"),
                 "nbd over nbdstack cow: depth map")
    finally:
        px.stop()
    # Over qemu-nbd without -A: no such context upstream, depth 1.
    sock = os.path.join(D, "qnoa.sock")
    q = subprocess.Popen(["qemu-nbd", "-t", "-r", "-f", "qcow2", "-k",
                          sock, OVERLAY], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    px = None
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        px = Server(["nbd", "socket=" + sock], name="proxy-noa")
        rows = json.loads(nbdinfo_map(px.sock, "qemu:allocation-depth"))
        check_eq([(e["offset"], e["length"], e["type"]) for e in rows],
                 [(0, SIZE, 1)], "nbd over qemu-nbd without -A: depth 1")
    finally:
        if px:
            px.stop()
        q.terminate()
        q.wait(10)


try:
    C.run("nbdinfo --map=qemu:allocation-depth: same as qemu-nbd, 1 and 2",
          t_depth_map)
    C.run("nbdinfo --map (base:allocation): same as qemu-nbd",
          t_base_allocation_map)
    C.run("qemu-img map --output=json: same as qemu-nbd", t_qemu_img_map)
    C.run("file backend alone: depth 1 everywhere, as qemu-nbd on raw",
          t_raw_depth_one)
    C.run("two contexts in one session: ids, a chunk each, REQ_ONE",
          t_two_contexts_one_session)
    C.run("LIST_META_CONTEXT queries base:, qemu:, all; SET depth alone",
          t_list_queries)
    C.run("nbd backend forwards the upstream's depth (qemu-nbd -A, cow)",
          t_nbd_proxy)
finally:
    qemu.terminate()
    qemu.wait(10)
C.finish([srv, plain])
