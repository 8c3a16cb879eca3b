#!/usr/bin/env bash
# nbdcopy in and out of a memory disk: 256 MiB of random data round-trips
# bit-exact with default settings; on a 64 MiB disk, with 4 connections and
# 16 requests each, 1 connection and 1 request, 4 MiB requests; and a sparse
# file (half holes) copied over non-zero data reads back equal (the holes
# must really become zeros).  The same through two offset filters.
. "$(dirname "$0")/lib.sh"
require_layer memory offset
require_tool nbdcopy cmp

MiB=$((1 << 20))
head -c $((256 * MiB)) /dev/urandom >"$T/rand.img" || die "cannot create test image"
head -c $((64 * MiB)) "$T/rand.img" >"$T/rand64.img"

# roundtrip NAME SRCFILE IN_OPTS OUT_OPTS   (server is $S, fresh per call)
roundtrip() {
    local name=$1 src=$2 inopts=$3 outopts=$4 t0=$SECONDS
    rm -f "$T/out.img"
    # shellcheck disable=SC2086
    if ! t nbdcopy $inopts "$src" "$(uri "$S")" 2>"$T/copy.err"; then
        fail "$name: nbdcopy $inopts file -> server failed: $(cat "$T/copy.err")"; return
    fi
    # shellcheck disable=SC2086
    if ! t nbdcopy $outopts "$(uri "$S")" "$T/out.img" 2>"$T/copy.err"; then
        fail "$name: nbdcopy $outopts server -> file failed: $(cat "$T/copy.err")"; return
    fi
    check_eq "$name: size of copy" "$(stat -c %s "$src")" "$(stat -c %s "$T/out.img")"
    if cmp -s "$src" "$T/out.img"; then pass "$name: data round-trips ($((SECONDS - t0)) s)"
    else fail "$name: data differs: $(cmp "$src" "$T/out.img" 2>&1 | head -1)"; fi
}

S=$T/a.sock
disk_args 256M
start_server "$S" "${DISK_ARGS[@]}"
roundtrip "default" "$T/rand.img" "" ""
stop_server "$SERVER_PID"
check_eq "exit status after SIGTERM" 0 "$STOP_RC"

S=$T/b.sock
disk_args 64M
start_server "$S" "${DISK_ARGS[@]}"
roundtrip "-C 4 --requests=16 in, -C 1 --requests=1 out" "$T/rand64.img" \
    "-C 4 --requests=16" "-C 1 --requests=1"
# same server again, the other way round (overwriting existing data)
roundtrip "-C 1 in, -C 4 --request-size=4194304 out" "$T/rand64.img" \
    "-C 1 --requests=4" "-C 4 --request-size=4194304"

# Sparse-ish: 1 MiB data / 1 MiB hole alternately.  The server still holds
# rand64.img, so any hole that nbdcopy turns into a zero request and the
# server drops would show up as stale random bytes.
/usr/bin/python3 - "$T/rand64.img" "$T/sparse.img" <<'PY' || die "cannot create sparse image"
import sys
MiB = 1 << 20
with open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as dst:
    dst.truncate(64 * MiB)
    for i in range(0, 64, 2):
        src.seek(i * MiB)
        dst.seek(i * MiB)
        dst.write(src.read(MiB))
PY
roundtrip "sparse file over old data (default)" "$T/sparse.img" "" ""
t nbdcopy -C 4 "$T/rand64.img" "$(uri "$S")" 2>"$T/copy.err" ||
    fail "nbdcopy -C 4 file -> server failed: $(cat "$T/copy.err")"
roundtrip "sparse file over old data (-C 2 --requests=8)" "$T/sparse.img" "-C 2 --requests=8" "-C 2"
stop_server "$SERVER_PID"
check_eq "exit status after SIGTERM" 0 "$STOP_RC"

# Through two offset filters (they pass payloads on to memory's pages) at
# an offset that is not a multiple of memory's 32 KiB pages, so every
# request has partial pages at both ends.
S=$T/c.sock
start_server "$S" --filter offset --filter offset memory size=80M offset=4100 range=64M
roundtrip "through offset filters, unaligned" "$T/rand64.img" "-C 2" ""
stop_server "$SERVER_PID"

finish
