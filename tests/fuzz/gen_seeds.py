#!/usr/bin/python3
"""Writes the seed corpora of the nbdstack fuzzers (no binary file is kept in
git: the build runs this into its own tree).

    gen_seeds.py OUTDIR SRCDIR

OUTDIR/<harness>/<name> for harness in handshake, transmission, config,
params.  Wire formats follow the NBD protocol (doc/proto.md of
NetworkBlockDevice/nbd); the inputs match what each harness feeds the
server (see tests/fuzz/*.c).  Seeds are valid sessions of every option and
command plus a few near-misses (bad lengths, out-of-range requests) that
start the fuzzer next to the error paths.
"""

import os
import shutil
import struct
import sys

IHAVEOPT = 0x49484156454F5054
REQUEST_MAGIC = 0x25609513

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 9, 10
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 4, 5, 6, 7
F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO = 1, 2, 4, 8, 16

CFLAGS = struct.pack(">I", 3)           # FIXED_NEWSTYLE | NO_ZEROES


def opt(o, data=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(data)) + data


def name(s):
    b = s.encode()
    return struct.pack(">I", len(b)) + b


def info_go(o, export, reqs=()):
    return opt(o, name(export) + struct.pack(">H", len(reqs)) +
               b"".join(struct.pack(">H", r) for r in reqs))


def meta(o, export, queries):
    q = b"".join(name(x) for x in queries)
    return opt(o, name(export) + struct.pack(">I", len(queries)) + q)


_cookie = [0]


def req(cmd, offset=0, count=0, flags=0, payload=None):
    _cookie[0] += 1
    r = struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, _cookie[0],
                    offset, count)
    if cmd == CMD_WRITE:
        if payload is None:
            payload = bytes((i * 7 + 1) & 0xFF for i in range(count))
        r += payload
    return r


DISC = req(CMD_DISC)

# One of each command on the 1 MiB export (or its 512 KiB window).
REQUESTS = {
    "read": req(CMD_READ, 0, 4096),
    "read_df": req(CMD_READ, 8192, 8192, F_DF),
    "read_unaligned": req(CMD_READ, 4095, 9000),
    "write": req(CMD_WRITE, 4096, 4096) + req(CMD_READ, 0, 12288),
    "write_fua": req(CMD_WRITE, 100, 5000, F_FUA),
    "flush": req(CMD_FLUSH),
    "trim": req(CMD_WRITE, 0, 8192) + req(CMD_TRIM, 0, 4096) +
            req(CMD_READ, 0, 8192),
    "cache": req(CMD_CACHE, 0, 65536),
    "zero": req(CMD_WRITE_ZEROES, 0, 65536, F_NO_HOLE),
    "zero_fast": req(CMD_WRITE_ZEROES, 4096, 4096, F_FAST_ZERO | F_FUA),
    "block_status": req(CMD_WRITE, 8192, 4096) +
                    req(CMD_BLOCK_STATUS, 0, 65536),
    "block_status_one": req(CMD_BLOCK_STATUS, 0, 65536, F_REQ_ONE),
    # near misses: past the end, zero length, unknown command and flags
    "read_past_end": req(CMD_READ, (1 << 20) - 512, 4096),
    "write_past_end": req(CMD_WRITE, (1 << 20) - 512, 1024),
    "zero_length": req(CMD_READ, 0, 0),
    "bad_cmd": req(9, 0, 512),
    "bad_flags": req(CMD_READ, 0, 512, 0x8000),
    "big_offset": req(CMD_TRIM, 0xFFFFFFFFFFFFF000, 8192),
}


def handshake_seeds():
    s = {}
    s["export_name"] = CFLAGS + opt(OPT_EXPORT_NAME) + \
        REQUESTS["write"] + DISC
    s["export_name_zeroes"] = struct.pack(">I", 1) + \
        opt(OPT_EXPORT_NAME, b"win") + REQUESTS["read"] + DISC
    s["list_abort"] = CFLAGS + opt(OPT_LIST) + opt(OPT_ABORT)
    s["starttls_unknown"] = CFLAGS + opt(OPT_STARTTLS) + opt(42, b"xyz") + \
        opt(OPT_ABORT)
    s["info_then_go"] = CFLAGS + \
        info_go(OPT_INFO, "", (INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE)) + \
        info_go(OPT_GO, "win", (INFO_EXPORT,)) + REQUESTS["read"] + DISC
    s["structured_meta_go"] = CFLAGS + opt(OPT_STRUCTURED_REPLY) + \
        meta(OPT_LIST_META_CONTEXT, "", []) + \
        meta(OPT_LIST_META_CONTEXT, "", ["base:"]) + \
        meta(OPT_SET_META_CONTEXT, "", ["base:allocation", "qemu:x"]) + \
        info_go(OPT_GO, "") + REQUESTS["block_status"] + \
        REQUESTS["read"] + DISC
    s["meta_other_export"] = CFLAGS + opt(OPT_STRUCTURED_REPLY) + \
        meta(OPT_SET_META_CONTEXT, "win", ["base:allocation"]) + \
        info_go(OPT_GO, "") + REQUESTS["block_status"] + DISC
    s["go_readonly"] = CFLAGS + info_go(OPT_GO, "ro") + \
        REQUESTS["write"] + REQUESTS["read"] + DISC
    s["go_unknown"] = CFLAGS + info_go(OPT_GO, "nosuch") + opt(OPT_ABORT)
    s["bad_lengths"] = CFLAGS + opt(OPT_INFO, b"\x00\x00\x00\x09ab") + \
        opt(OPT_STRUCTURED_REPLY, b"x") + opt(OPT_LIST, b"y") + \
        meta(OPT_LIST_META_CONTEXT, "", []) + opt(OPT_ABORT)
    s["bad_magic"] = CFLAGS + b"IHAVEOPX" + b"\x00" * 8
    s["unknown_flags"] = struct.pack(">I", 0x80000003)
    return s


def transmission_seeds():
    s = {}
    # mode byte: bits 0-1 export (0 "", 1 "win", 2 "ro"), bit 2 no
    # structured replies, bit 3 no base:allocation
    for cname, r in REQUESTS.items():
        s["m0_" + cname] = b"\x00" + r + DISC
    everything = b"".join(REQUESTS[k] for k in (
        "write", "write_fua", "read_df", "read_unaligned", "flush", "trim",
        "cache", "zero", "zero_fast", "block_status", "block_status_one"))
    for mode in (1, 2, 4, 8, 12):
        s["m%d_all" % mode] = bytes([mode]) + everything + DISC
    s["m0_no_disc"] = b"\x00" + REQUESTS["write"]
    s["m0_bad_magic"] = b"\x00" + REQUESTS["read"] + b"\x00" * 28
    s["m0_truncated_write"] = b"\x00" + req(CMD_WRITE, 0, 4096)[:100]
    return s


CONFIGS = {
    "minimal": """[export ""]\nbackend = memory 1M\n""",
    "server": """[server]
listen = unix:/tmp/fuzz.sock
listen = tcp:[::1]:10809
listen = tcp:0.0.0.0:1234
listen = tcp:10810
threads = 4
readonly = no
pidfile = /tmp/fuzz.pid

[export ""]
description = "quoted # description"  # trailing comment
backend = memory size=64k
""",
    "stack": """; comment
[export "a b"]
filter = offset offset=4k range=16k
filter = offset 512
backend = memory size=1M

[export win]
readonly = yes
filter  = offset offset=0x1000 range=1M
backend = null size=2M
""",
    "file": """[export img]\nbackend = file file=/dev/null readonly=yes\n""",
    "errors": """[server]
threads = 0
listen = tcp:[::1
bogus = 1
[export dup]
backend = memory size=1Q
backend = null
[export dup]
filter = nosuch
filter = offset rnage=5
[export]
[export "unterminated]
key without equals
""",
    "crlf_bom": "\ufeff[export \"\"]\r\nbackend = memory size=1M\r\n",
}


def config_seeds(srcdir):
    s = dict(("c_" + k, v.encode()) for k, v in CONFIGS.items())
    ex = os.path.join(srcdir, "config.example")
    if os.path.exists(ex):
        with open(ex, "rb") as f:
            s["config_example"] = f.read()
    return s


PARAMS = ["0", "512", "4k", "4K", "4KiB", "1M", "2G", "1T", "1P", "1E", "16E",
          "1.5G", "0.5k", "18446744073709551615", "18446744073709551616",
          "0x10", "0xffffffffffffffff", "010", "yes", "no", "on", "off",
          "true", "FALSE", "y", "10ns", "5us", "2ms", "1s", "1.5s", "3m",
          "2min", "1h", "99999999999h", "", "-1", "+1", " 1", "1e3", "inf"]


def params_seeds():
    return dict(("p%02d" % i, p.encode()) for i, p in enumerate(PARAMS))


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: gen_seeds.py OUTDIR SRCDIR")
    out, srcdir = sys.argv[1], sys.argv[2]
    sets = {
        "handshake": handshake_seeds(),
        "transmission": transmission_seeds(),
        "config": config_seeds(srcdir),
        "params": params_seeds(),
    }
    for harness, seeds in sets.items():
        d = os.path.join(out, harness)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for n, data in seeds.items():
            with open(os.path.join(d, n), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
