#!/usr/bin/python3
"""The nocache filter through real clients, against nbdkit's: the flags
nbdinfo --json shows for every cachemode, and cache requests through
libnbd (refused, read, or ignored)."""

import json
import os
import shutil
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

T.require_layers("nocache", "memory")
T.start_watchdog()
C = Checker("test_nocache")


def can_cache(srv):
    out = subprocess.run(["nbdinfo", "--json", srv.uri], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return json.loads(out)["exports"][0].get("can_cache")


def ours(keys):
    return Server(["--filter", "nocache", "memory", "size=1M"] + keys)


def same_as_nbdkit(keys):
    a = ours(keys)
    b = Server(["-f", "--filter=nocache", "memory", "1M"] + keys,
               binary="nbdkit")
    try:
        check_eq(can_cache(a), can_cache(b), "can_cache with %s" % keys)
    finally:
        a.stop()
        b.stop()


def cache_requests(mode):
    srv = ours(["cachemode=" + mode])
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    if mode == "none":
        check(not h.can_cache(), "none: cache not advertised")
    else:
        check(h.can_cache(), "%s: cache advertised" % mode)
        h.cache(65536, 0)
    h.shutdown()
    srv.stop()


if shutil.which("nbdkit") and shutil.which("nbdinfo"):
    for keys in ([], ["cachemode=none"], ["cachemode=emulate"],
                 ["cachemode=nop"]):
        C.run("same can_cache as nbdkit: %s" % keys, same_as_nbdkit, keys)
for mode in ("none", "emulate", "nop"):
    C.run("cache requests with cachemode=%s" % mode, cache_requests, mode)
C.finish()
