#!/usr/bin/env bash
# Signals: SIGTERM (and SIGINT) with a client connected make the server exit
# 0 within 5 s; SIGTERM in the middle of a copy too; with the file backend,
# data written (flushed or not, but replied to) before SIGTERM is in the
# file afterwards, and flushed data survives SIGKILL.
. "$(dirname "$0")/lib.sh"
require_layer memory file
require_tool nbdcopy
require_nbd_module

MiB=$((1 << 20))

# hold_client URI READYFILE PYTHON...   background nbdsh that runs the
# statements, creates READYFILE, then keeps the connection open.
hold_client() {
    local u=$1 ready=$2; shift 2
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    rm -f "$ready"
    # timeout directly (not the nbdsh function), so that $! is a process
    # that passes our kill on to python
    timeout -k 2 30 /usr/bin/python3 -m nbd -u "$u" "${args[@]}" \
        -c "open('$ready', 'w').close()" \
        -c 'import time; time.sleep(25)' >"$T/client.log" 2>&1 &
    CLIENT_PID=$!
    BG_PIDS+=("$CLIENT_PID")
    local i
    for i in $(seq 100); do
        [ -e "$ready" ] && return 0
        kill -0 "$CLIENT_PID" 2>/dev/null || break
        sleep 0.1
    done
    fail "client did not get ready: $(cat "$T/client.log")"
    return 1
}
drop_client() { kill "$CLIENT_PID" 2>/dev/null; wait "$CLIENT_PID" 2>/dev/null; }

# file_has FILE OFFSET LENGTH BYTE(hex)  -> true if the range is all BYTE
file_has() {
    /usr/bin/python3 - "$@" <<'PY'
import sys
f, off, n, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4], 16)
with open(f, "rb") as fh:
    fh.seek(off)
    sys.exit(0 if fh.read(n) == bytes([b]) * n else 1)
PY
}

# --- memory: SIGTERM with a connected client ---------------------------------
S=$T/m.sock
start_server "$S" memory size=64M
if hold_client "$(uri "$S")" "$T/ready1" 'h.pwrite(b"\xa5" * (1 << 20), 0)' 'h.flush()'; then
    t0=$(date +%s%N)
    stop_server "$SERVER_PID" TERM 5
    ms=$((($(date +%s%N) - t0) / 1000000))
    check_eq "SIGTERM with a client connected: exit status (within 5 s; took ${ms} ms)" 0 "$STOP_RC"
fi
drop_client

# --- memory: SIGINT, idle ----------------------------------------------------
# Background jobs of a non-interactive shell start with SIGINT ignored; exec
# the server from a shim that restores the default disposition.
S=$T/i.sock
rm -f "$S"
"${SPAWN[@]}" /usr/bin/python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' "$NBDSTACK" -U "$S" memory size=64M >"$T/sigint.log" 2>&1 &
SERVER_PID=$!
SERVER_PIDS+=("$SERVER_PID")
if wait_socket "$S" "$SERVER_PID" "$T/sigint.log"; then
    stop_server "$SERVER_PID" INT 5
    check_eq "SIGINT: exit status (within 5 s)" 0 "$STOP_RC"
else
    fail "server for the SIGINT case did not start"
fi

# --- memory: SIGTERM during a copy ------------------------------------------------
S=$T/c.sock
head -c $((64 * MiB)) /dev/urandom >"$T/src.img"
start_server "$S" memory size=64M
( for i in 1 2 3 4 5 6 7 8; do nbdcopy -C 2 "$T/src.img" "$(uri "$S")" || exit 0; done ) \
    >"$T/copy.log" 2>&1 &
COPY_PID=$!
BG_PIDS+=("$COPY_PID")
sleep 0.5
check "server alive during the copy" server_alive "$SERVER_PID"
stop_server "$SERVER_PID" TERM 5
check_eq "SIGTERM during nbdcopy: exit status (within 5 s)" 0 "$STOP_RC"
kill "$COPY_PID" 2>/dev/null; wait "$COPY_PID" 2>/dev/null

# --- file: flushed and unflushed writes are in the file after SIGTERM ----------
S=$T/f.sock
truncate -s $((16 * MiB)) "$T/disk.img"
start_server "$S" file file="$T/disk.img"
if hold_client "$(uri "$S")" "$T/ready2" \
        'h.pwrite(b"\x5a" * (1 << 20), 1 << 20)' 'h.flush()' \
        'h.pwrite(b"\x3c" * 65536, 4 << 20)'; then
    stop_server "$SERVER_PID" TERM 5
    check_eq "file backend: SIGTERM exit status" 0 "$STOP_RC"
    check "file backend: flushed write is in the file after SIGTERM" \
        file_has "$T/disk.img" $MiB $MiB 5a
    check "file backend: replied (unflushed) write is in the file after SIGTERM" \
        file_has "$T/disk.img" $((4 * MiB)) 65536 3c
    check "file backend: untouched bytes still zero" file_has "$T/disk.img" 0 $MiB 00
fi
drop_client
check_eq "file backend: file size unchanged" $((16 * MiB)) "$(stat -c %s "$T/disk.img")"

# --- file: flushed data survives SIGKILL ---------------------------------------------
start_server "$S" file file="$T/disk.img"
if hold_client "$(uri "$S")" "$T/ready3" \
        'h.pwrite(b"\xc3" * (2 << 20), 8 << 20)' 'h.flush()' \
        'h.pwrite(b"\x99" * 4096, 12 << 20, nbd.CMD_FLAG_FUA)'; then
    stop_server "$SERVER_PID" KILL 5
    check "file backend: flushed write is in the file after SIGKILL" \
        file_has "$T/disk.img" $((8 * MiB)) $((2 * MiB)) c3
    check "file backend: FUA write is in the file after SIGKILL" \
        file_has "$T/disk.img" $((12 * MiB)) 4096 99
    check "file backend: data from before the restart intact" \
        file_has "$T/disk.img" $MiB $MiB 5a
fi
drop_client

# and the server starts again on the same file and serves what is there
start_server "$S" file file="$T/disk.img"
out=$(nbdsh -u "$(uri "$S")" -c 'print(bytes(h.pread(4, 8 << 20)).hex(), h.get_size())' 2>&1)
check_eq "file backend after restart: data and size" "c3c3c3c3 $((16 * MiB))" "$out"
stop_server "$SERVER_PID" TERM 5
check_eq "file backend: idle SIGTERM exit status" 0 "$STOP_RC"

# --- an unwritable pidfile is fatal --------------------------------------------
# A supervisor waits for the pidfile; serving without it would leave the
# supervisor waiting forever (nbdkit exits 1 too).
mkdir -p "$T/ro"
chmod 555 "$T/ro"
out=$(t "$NBDSTACK" -U "$T/pid.sock" -P "$T/ro/sub/x.pid" memory 1M 2>&1)
rc=$?
check_eq "pidfile in a missing directory: exit status" 1 "$rc"
check "pidfile error names the file: $out" grep -q "cannot write pidfile $T/ro/sub/x.pid" <<<"$out"
check "no socket left behind" test ! -e "$T/pid.sock"
if [ "$(id -u)" -ne 0 ]; then
    out=$(t "$NBDSTACK" -U "$T/pid.sock" -P "$T/ro/x.pid" memory 1M 2>&1)
    check_eq "pidfile in a read-only directory: exit status" 1 "$?"
fi
# and a writable one holds our pid while serving, and goes at exit
start_server "$T/p2.sock" -P "$T/ok.pid" memory size=1M
check_eq "pidfile holds the server's pid" "$SERVER_PID" "$(cat "$T/ok.pid" 2>/dev/null)"
stop_server "$SERVER_PID" TERM 5
check "pidfile removed at exit" test ! -e "$T/ok.pid"

finish
