#!/usr/bin/env bash
# fio's nbd engine (libnbd) at queue depths 1, 8 and 32 writes random 4 KiB
# and 64 KiB blocks with checksums and reads them back: at depth 8 and 32
# the reader gathers requests before answering (coalesce), at depth 1 it
# polls.  Each run is checked by fio's own verify pass; the same again over
# 4 connections and through an offset filter, and with gathering off.
. "$(dirname "$0")/lib.sh"
require_layer memory offset
require_tool fio

# fio_verify NAME SOCK FIO-ARGS...   write with verify headers, read back.
fio_verify() {
    local name=$1 sock=$2; shift 2
    if t fio --name="$name" --ioengine=nbd --uri="$(uri "$sock")" \
           --size=32M --verify=crc32c --verify_fatal=1 --do_verify=1 \
           --randrepeat=0 "$@" >"$T/fio-$name.log" 2>&1; then
        pass "$name: written and verified"
    else
        fail "$name: $(grep -Ei 'verify|error|bad' "$T/fio-$name.log" | head -3)"
    fi
}

S=$T/a.sock
start_server "$S" memory size=32M
fio_verify qd1-4k "$S" --rw=randwrite --bs=4k --iodepth=1 --number_ios=3000
fio_verify qd8-4k "$S" --rw=randwrite --bs=4k --iodepth=8
fio_verify qd32-4k "$S" --rw=randwrite --bs=4k --iodepth=32
fio_verify qd32-64k "$S" --rw=randwrite --bs=64k --iodepth=32
fio_verify qd32-mixed-sizes "$S" --rw=randwrite --bsrange=512-128k \
    --bs_unaligned=1 --iodepth=32
fio_verify 4conns-qd32 "$S" --rw=randwrite --bs=4k --iodepth=32 --numjobs=4 \
    --offset_increment=8M --size=8M
stop_server "$SERVER_PID"
check_eq "exit status after SIGTERM" 0 "$STOP_RC"

S=$T/b.sock
start_server "$S" --filter offset memory size=40M offset=4100 range=32M
fio_verify offset-qd32 "$S" --rw=randwrite --bs=4k --iodepth=32
stop_server "$SERVER_PID"

S=$T/c.sock
start_server "$S" --coalesce 0 --poll 0 memory size=32M
fio_verify no-gathering-qd32 "$S" --rw=randwrite --bs=4k --iodepth=32
stop_server "$SERVER_PID"
finish
