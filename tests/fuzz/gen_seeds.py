#!/usr/bin/python3
"""Writes the seed corpora of the nbdstack fuzzers (no binary file is kept in
git: the build runs this into its own tree).

    gen_seeds.py OUTDIR SRCDIR

OUTDIR/<harness>/<name> for harness in handshake, transmission, config,
params, partition.  Wire formats follow the NBD protocol (doc/proto.md of
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
EXTENDED_REQUEST_MAGIC = 0x21E41C71

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 9, 10
OPT_EXTENDED_HEADERS = 11
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 4, 5, 6, 7
F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO = 1, 2, 4, 8, 16
F_PAYLOAD_LEN = 32

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


def xreq(cmd, offset=0, count=0, flags=0, payload=None):
    """An extended request (32-byte header, 64-bit length); a write's
    payload follows with PAYLOAD_LEN, as does an explicit payload."""
    _cookie[0] += 1
    if cmd == CMD_WRITE and payload is None:
        payload = bytes((i * 7 + 1) & 0xFF for i in range(count))
        flags |= F_PAYLOAD_LEN
    if payload is not None:
        count = len(payload)
    r = struct.pack(">IHHQQQ", EXTENDED_REQUEST_MAGIC, flags, cmd, _cookie[0],
                    offset, count)
    return r + (payload or b"")


DISC = req(CMD_DISC)
XDISC = xreq(CMD_DISC)

# The same with extended headers, plus what only they have: 64-bit
# lengths, block status's payload form, and the wrong header style.
XREQUESTS = {
    "read": xreq(CMD_READ, 0, 4096),
    "read_df": xreq(CMD_READ, 8192, 8192, F_DF),
    "write": xreq(CMD_WRITE, 4096, 4096) + xreq(CMD_READ, 0, 12288),
    "write_fua": xreq(CMD_WRITE, 100, 5000, F_FUA),
    "flush": xreq(CMD_FLUSH),
    "trim": xreq(CMD_TRIM, 0, 4096),
    "cache": xreq(CMD_CACHE, 0, 65536),
    "zero": xreq(CMD_WRITE_ZEROES, 0, 65536, F_NO_HOLE),
    "zero_fast": xreq(CMD_WRITE_ZEROES, 4096, 4096, F_FAST_ZERO | F_FUA),
    "block_status": xreq(CMD_WRITE, 8192, 4096) +
                    xreq(CMD_BLOCK_STATUS, 0, 65536),
    "block_status_one": xreq(CMD_BLOCK_STATUS, 0, 65536, F_REQ_ONE),
    "block_status_payload": xreq(CMD_BLOCK_STATUS, 0, 0, F_PAYLOAD_LEN,
                                 struct.pack(">QI", 1 << 20, 1)),
    "block_status_bad_ids": xreq(CMD_BLOCK_STATUS, 0, 0, F_PAYLOAD_LEN,
                                 struct.pack(">QII", 4096, 1, 1)),
    "zero_64bit": xreq(CMD_WRITE_ZEROES, 0, 1 << 33),
    "trim_wrap": xreq(CMD_TRIM, 1 << 63, 1 << 63),
    "write_no_flag": xreq(CMD_WRITE, 0, 0, 0, b"x" * 512),
    "payload_on_trim": xreq(CMD_TRIM, 0, 0, F_PAYLOAD_LEN, b"\0" * 16),
    "compact_after": req(CMD_READ, 0, 4096) + req(CMD_WRITE, 0, 512),
}

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
    s["extended_go"] = CFLAGS + opt(OPT_EXTENDED_HEADERS) + \
        meta(OPT_SET_META_CONTEXT, "", ["base:"]) + info_go(OPT_GO, "") + \
        XREQUESTS["block_status_payload"] + XREQUESTS["write"] + XDISC
    s["extended_rules"] = CFLAGS + opt(OPT_EXTENDED_HEADERS, b"x") + \
        opt(OPT_STRUCTURED_REPLY) + opt(OPT_EXTENDED_HEADERS) + \
        opt(OPT_EXTENDED_HEADERS) + opt(OPT_STRUCTURED_REPLY) + \
        opt(OPT_EXPORT_NAME)
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
    # bit 4: extended headers (with bit 2: without structured replies
    # first); and extended headers where they were not negotiated.
    for cname, r in XREQUESTS.items():
        s["m16_" + cname] = b"\x10" + r + XDISC
    xall = b"".join(XREQUESTS.values())
    for mode in (17, 18, 20, 24):
        s["m%d_all" % mode] = bytes([mode]) + xall + XDISC
    s["m0_extended_before"] = b"\x00" + XREQUESTS["read"] + \
        XREQUESTS["write"] + REQUESTS["read"] + DISC
    s["m16_truncated_header"] = b"\x10" + xreq(CMD_READ, 0, 4096)[:30]
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


SECTOR = 512


def mbr_slot(disk, lba, slot, ptype, start, count):
    """One slot of the MBR or an EBR at sector lba, plus its boot signature."""
    off = lba * SECTOR
    need = off + SECTOR
    if len(disk) < need:
        disk.extend(bytes(need - len(disk)))
    e = off + 0x1BE + 16 * slot
    disk[e:e + 16] = struct.pack("<B3sB3sII", 0, b"\0\0\0", ptype, b"\0\0\0",
                                 start, count)
    disk[off + 510:off + 512] = b"\x55\xaa"


def gpt(disk, sectors, table=2, count=128, esize=128, entries=()):
    """Protective MBR, GPT header at LBA 1, entries (index, first, last)."""
    mbr_slot(disk, 0, 0, 0xEE, 1, min(sectors - 1, 0xFFFFFFFF))
    hdr = struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0,
                      1, sectors - 1, 34, sectors - 34, b"\x11" * 16, table,
                      count, esize, 0)
    disk[SECTOR:SECTOR + len(hdr)] = hdr
    for i, first, last in entries:
        off = table * SECTOR + i * esize
        if len(disk) < off + esize:
            disk.extend(bytes(off + esize - len(disk)))
        disk[off:off + 56] = struct.pack("<16s16sQQQ", b"\xaf" * 16,
                                         bytes([i + 1]) * 16, first, last, 0)
    return disk


def ebr_chain(n, ext_start=2, step=1, loop_to=None):
    """An extended partition at ext_start with n EBRs step sectors apart,
    each describing a one-sector partition right after it; the last links
    to EBR loop_to (an index) if given."""
    d = bytearray()
    mbr_slot(d, 0, 0, 0x83, 2048, 1000)
    mbr_slot(d, 0, 1, 0x05, ext_start, n * step + 64)
    for i in range(n):
        lba = ext_start + i * step
        mbr_slot(d, lba, 0, 0x83, 1, step)
        if i + 1 < n:
            mbr_slot(d, lba, 1, 0x05, (i + 1) * step, step)
        elif loop_to is not None:
            mbr_slot(d, lba, 1, 0x05, loop_to * step, step)
    return d


def partition_seeds():
    s = {}
    d = bytearray()
    mbr_slot(d, 0, 0, 0x83, 2048, 2048)
    mbr_slot(d, 0, 1, 0x07, 4096, 4096)
    mbr_slot(d, 0, 2, 0x0C, 8192, 0xFFFFFFFF)
    s["mbr_primaries"] = bytes(d)
    d = bytearray()
    mbr_slot(d, 0, 0, 0x83, 63, 1)
    mbr_slot(d, 0, 3, 0x0F, 0, 8)
    s["mbr_extended_at_0"] = bytes(d)
    # logical partitions 5-7 in a chain of EBRs 4 sectors apart
    d = ebr_chain(3, ext_start=4, step=4)
    d[0x1BC] = 6                        # the harness also tries 1 + 6
    s["mbr_ebr_chain"] = bytes(d)
    d = ebr_chain(3, ext_start=4, step=4, loop_to=0)
    d[0x1BC] = 9
    s["mbr_ebr_loop"] = bytes(d)
    d = ebr_chain(36, ext_start=2, step=1)
    d[0x1BC] = 39                        # partition 40, the last
    s["mbr_ebr_long"] = bytes(d)
    d = ebr_chain(2, ext_start=8, step=8)
    mbr_slot(d, 0, 1, 0x85, 8, 16)       # extended partition too short
    s["mbr_ebr_leaves_extended"] = bytes(d)
    s["gpt"] = bytes(gpt(bytearray(), 1 << 21, entries=(
        (0, 2048, 4095), (1, 4096, 1 << 20), (3, 1 << 21, (1 << 21) + 7))))
    s["gpt_256_at_lba_4"] = bytes(gpt(bytearray(), 1 << 21, table=4,
                                      count=8, esize=256, entries=(
                                          (0, 34, 99), (5, 100, 99))))
    s["gpt_bad_count"] = bytes(gpt(bytearray(), 4096, count=0x10000,
                                   entries=((0, 34, 99),)))
    s["gpt_bad_size"] = bytes(gpt(bytearray(), 4096, esize=0x80000000,
                                  entries=((0, 34, 99),)))
    d = gpt(bytearray(), 1 << 21, entries=((1, 34, 2047),))
    mbr_slot(d, 0, 1, 0x83, 2048, 2048)  # hybrid MBR
    s["gpt_hybrid"] = bytes(d)
    d = gpt(bytearray(), 1 << 21, entries=((0, 34, 99),))
    d[0x1BE + 4] = 0x83                  # "EFI PART" without protection
    s["gpt_unprotected"] = bytes(d)
    s["signature_only"] = bytes(510) + b"\x55\xaa"
    return s


def s3_seeds():
    """Answers of an S3 store: heads, chunked bodies, LIST and error XML."""
    s = {}
    s["head_206"] = (b"HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\n"
                     b"ETag: \"0123abcd\"\r\nConnection: keep-alive\r\n\r\nabcd")
    s["head_chunked"] = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"1a;x=y\r\n" + b"a" * 26 + b"\r\n0\r\n\r\n")
    s["head_10"] = b"HTTP/1.0 404 Not Found\r\n\r\n"
    s["chunk"] = b"7fffffff\r\n"
    s["list"] = (b"<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>true"
                 b"</IsTruncated><Contents><Key>disk/0000000000000001</Key>"
                 b"</Contents><Contents><Key>a&amp;b&#x41;&#8364;</Key></Contents>"
                 b"<NextContinuationToken>t0k</NextContinuationToken>"
                 b"</ListBucketResult>")
    s["error"] = (b"<Error><Code>AccessDenied</Code><Message>no</Message>"
                  b"</Error>")
    s["block_key"] = b"d/00000000000000ff"
    s["aws_credentials"] = (b"# c\n[default]\naws_access_key_id = AK\n"
                            b"aws_secret_access_key: SK\naws_session_token=t\n"
                            b"  continued\n[p]\nregion = eu-west-1\n")
    s["aws_config"] = (b"[profile p]\nregion = us-west-2\ns3 =\n"
                       b"    addressing_style = path\n"
                       b"[profile \"with space\"]\nrole_arn = arn:x\n"
                       b"credential_process = /bin/true\n")
    return s


def http_seeds():
    """Requests to the metrics endpoint (fuzz_http): a scrape as curl and
    Prometheus send it, and near-misses."""
    s = {}
    s["curl"] = (b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n"
                 b"User-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n")
    s["prometheus"] = (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\n"
                       b"Accept: application/openmetrics-text;version=1.0.0,"
                       b"text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n"
                       b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n")
    s["http10_lf"] = b"GET /metrics?x=1 HTTP/1.0\n\n"
    s["post"] = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    s["other_path"] = b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"
    s["body"] = b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    s["no_host"] = b"GET /metrics HTTP/1.1\r\n\r\n"
    s["partial"] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
    s["long"] = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 8200
    return s


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: gen_seeds.py OUTDIR SRCDIR")
    out, srcdir = sys.argv[1], sys.argv[2]
    sets = {
        "handshake": handshake_seeds(),
        "transmission": transmission_seeds(),
        "config": config_seeds(srcdir),
        "params": params_seeds(),
        "partition": partition_seeds(),
        "s3": s3_seeds(),
        "http": http_seeds(),
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
