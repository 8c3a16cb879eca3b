#!/usr/bin/python3
"""The blocksize and blocksize-policy filters through libnbd and nbdinfo:
- blocksize minblock=4096 advertises minimum 1 and serves unaligned
  1-byte and odd-sized reads, writes, zeroes and trims from a seeded
  random sequence exactly as a model (trimmed bytes: unchanged or zero);
- the same sequence against nbdkit --filter=blocksize memory (where nbdkit
  runs) gives the same image and the same advertised sizes;
- 16 connections writing their own byte of one 4K block leave every byte
  the last value its writer wrote;
- blocksize-policy advertises its keys (nbdinfo --json), refuses
  violations with EINVAL under error, lets them through under allow;
- bad keys are refused at startup with the accepted range."""

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, Server, check, check_eq  # noqa: E402

try:
    import nbd
except ImportError:
    T.skip("python3-libnbd (module nbd) not available to %s" % sys.executable)

T.require_layers("memory", "blocksize", "blocksize-policy")
T.start_watchdog()
C = Checker("test_blocksize")
SIZE = 1 << 20

bs = Server(["--filter", "blocksize", "memory", "size=%d" % SIZE,
             "minblock=4096"], name="bs")
pol_err = Server(["--filter", "blocksize-policy", "memory", "size=%d" % SIZE,
                  "blocksize-minimum=512", "blocksize-preferred=64k",
                  "blocksize-maximum=1M", "blocksize-error-policy=error"],
                 name="polerr")
pol_allow = Server(["--filter", "blocksize-policy", "memory",
                    "size=%d" % SIZE, "blocksize-minimum=512",
                    "blocksize-maximum=64k"],
                   name="polallow")


def connect(uri):
    h = nbd.NBD()
    h.set_strict_mode(0)      # let the server answer, not libnbd
    h.connect_uri(uri)
    return h


def nbdinfo(uri):
    out = subprocess.run(["nbdinfo", "--json", uri], check=True,
                         capture_output=True, text=True).stdout
    d = json.loads(out)["exports"][0]
    return (d.get("block_size_minimum"), d.get("block_size_preferred"),
            d.get("block_size_maximum"))


def random_sequence(h, seed=7):
    """Small requests at random places; returns the model."""
    rnd = random.Random(seed)
    model = bytearray(SIZE)
    for i in range(3000):
        ln = 1 if i % 3 else rnd.randint(1, 9000)
        off = rnd.randrange(SIZE - ln)
        op = rnd.randrange(4)
        if op == 0:
            check_eq(h.pread(ln, off), bytes(model[off:off + ln]),
                     "read %d+%d" % (off, ln))
        elif op == 1:
            b = bytes([rnd.randrange(256)]) * ln
            h.pwrite(b, off)
            model[off:off + ln] = b
        elif op == 2:
            h.zero(ln, off)
            model[off:off + ln] = bytes(ln)
        else:
            h.trim(ln, off)
            # After a trim the contents are unspecified: take what came.
            model[off:off + ln] = h.pread(ln, off)
    return model


def small_requests_match_model():
    h = connect(bs.uri)
    model = random_sequence(h)
    check_eq(h.pread(SIZE, 0) == bytes(model), True, "image equals model")
    h.shutdown()


def advertised_sizes():
    check_eq(nbdinfo(bs.uri), (1, 4096, 32 << 20), "blocksize sizes")
    check_eq(nbdinfo(pol_err.uri), (512, 65536, 1 << 20), "policy sizes")


def same_as_nbdkit():
    if shutil.which("nbdkit") is None:
        T.log("nbdkit not installed: comparison skipped")
        return
    sock = os.path.join(T.TMPDIR, "nbdkit-bs.sock")
    p = subprocess.Popen(["nbdkit", "-f", "-U", sock, "--filter=blocksize",
                          "memory", str(SIZE), "minblock=4096"],
                         stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            threading.Event().wait(0.05)
        uri = "nbd+unix:///?socket=" + sock
        mine, theirs = nbdinfo(bs.uri), nbdinfo(uri)
        # nbdkit advertises 4294967295 and refuses over 64M itself; here
        # the maximum is the server's payload limit.
        check_eq(mine[:2], theirs[:2], "minimum and preferred vs nbdkit")
        a, b = connect(bs.uri), connect(uri)
        a.zero(SIZE, 0)
        ma, mb = random_sequence(a, 11), random_sequence(b, 11)
        check_eq(a.pread(SIZE, 0) == b.pread(SIZE, 0), True,
                 "image equals nbdkit's")
        check_eq(ma == mb, True, "model equals nbdkit's")
        a.shutdown()
        b.shutdown()
    finally:
        p.terminate()
        p.wait()


def concurrent_writers_one_block():
    rounds = 500
    errs = []

    def writer(i):
        try:
            h = connect(bs.uri)
            for r in range(rounds):
                h.pwrite(bytes([(r * 7 + i + 1) & 0xff]), 8192 + i * 97)
            h.shutdown()
        except Exception as e:          # noqa: BLE001
            errs.append(e)

    t = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for x in t:
        x.start()
    for x in t:
        x.join()
    check_eq(errs, [], "writer errors")
    h = connect(bs.uri)
    got = h.pread(4096, 8192)
    for i in range(16):
        check_eq(got[i * 97], ((rounds - 1) * 7 + i + 1) & 0xff,
                 "byte of writer %d" % i)
    h.shutdown()


def expect_errno(fn, want, what):
    try:
        fn()
    except nbd.Error as e:
        # python3-libnbd gives the errno by name ("EINVAL").
        check(e.errno in (want, errno.errorcode[want]),
              "%s: errno %s, want %s" % (what, e.errno,
                                         errno.errorcode[want]))
        return
    raise T.CheckFailed("%s: succeeded, want errno %d" % (what, want))


def policy_error_refuses():
    h = connect(pol_err.uri)
    expect_errno(lambda: h.pread(100, 0), errno.EINVAL, "short read")
    expect_errno(lambda: h.pwrite(b"x" * 512, 1), errno.EINVAL,
                 "unaligned write")
    expect_errno(lambda: h.trim(100, 512), errno.EINVAL, "short trim")
    h.pwrite(b"y" * 1024, 512)
    check_eq(h.pread(1024, 512), b"y" * 1024, "aligned read")
    h.shutdown()


def policy_allow_passes():
    check_eq(nbdinfo(pol_allow.uri)[0], 512, "allow minimum")
    h = connect(pol_allow.uri)
    h.pwrite(b"abc", 7)
    check_eq(h.pread(5, 6), b"\0abc\0", "unaligned read and write")
    h.zero(1, 8)
    check_eq(h.pread(3, 7), b"a\0c", "one-byte zero")
    # Over the advertised 64K maximum: a hint under allow, so it passes.
    big = bytes(range(256)) * 1024
    h.pwrite(big, 4096)
    check_eq(h.pread(len(big), 4096), big, "256K write and read over a 64K "
             "maximum")
    h.shutdown()


def bad_keys_refused():
    for args, want in (
            (["--filter", "blocksize", "memory", "size=1M", "minblock=3"],
             "power of 2 from 1 to 65536"),
            (["--filter", "blocksize", "memory", "size=1M", "minblock=4k",
              "maxdata=6k"], "multiple of minblock"),
            (["--filter", "blocksize-policy", "memory", "size=1M",
              "blocksize-preferred=256"], "from 512 to 33554432"),
            (["--filter", "blocksize-policy", "memory", "size=1M",
              "blocksize-minimum=4k", "blocksize-maximum=6k"],
             "multiple of blocksize-minimum")):
        p = subprocess.run([T.NBDSTACK, "-U",
                            os.path.join(T.TMPDIR, "never.sock")] + args,
                           capture_output=True, text=True, timeout=10)
        check(p.returncode != 0, "%s accepted" % args)
        check(want in p.stderr, "%s: '%s' lacks '%s'" % (args, p.stderr, want))


C.run("advertised sizes (nbdinfo --json)", advertised_sizes)
C.run("small requests match a model", small_requests_match_model)
C.run("same image and sizes as nbdkit", same_as_nbdkit)
C.run("16 writers of one block lose nothing", concurrent_writers_one_block)
C.run("error policy refuses violations", policy_error_refuses)
C.run("allow policy passes violations", policy_allow_passes)
C.run("bad keys refused at startup", bad_keys_refused)
C.finish([bs, pol_err, pol_allow])
