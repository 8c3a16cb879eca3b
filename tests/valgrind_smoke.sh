#!/usr/bin/env bash
# valgrind memcheck smoke test (CTest valgrind/smoke, cmake/analysis.cmake):
# this build's nbdstack serves a memory disk and an offset window of it on a
# Unix socket under memcheck; nbdsh, nbdcopy and nbdinfo drive a few MiB
# through every command (read, write, zero, trim, flush, cache, block
# status, several connections, a bad request); then SIGTERM.  Fails if
# memcheck reports any error or a definite leak, or the server does not
# exit 0.
#
# It needs a dynamically linked, unsanitized glibc binary: a static (musl)
# or ASan/TSan binary is skipped (77), as is a machine without valgrind or
# the clients.  Environment: NBDSTACK (the binary), SRCDIR.
. "${SRCDIR:?}/tests/integration/lib.sh"
require_tool valgrind nbdcopy nbdinfo
require_nbd_module
require_layer memory offset

if ! file -L "$NBDSTACK" 2>/dev/null | grep -q "dynamically linked"; then
    skip "$NBDSTACK is not a dynamic glibc binary (static musl?): memcheck cannot intercept malloc"
fi
if readelf -d "$NBDSTACK" 2>/dev/null | grep -Eq 'lib(asan|tsan|ubsan)' ||
   readelf -s "$NBDSTACK" 2>/dev/null | grep -Eq '__(asan|tsan)_init'; then
    skip "$NBDSTACK is built with a sanitizer: valgrind cannot run it"
fi

S=$T/vg.sock
VGLOG=$T/valgrind.log
MiB=$((1 << 20))

cat >"$T/vg.conf" <<EOF
[server]
listen = unix:$S
threads = 4

[export ""]
description = valgrind smoke disk
backend = memory size=16M

[export win]
filter = offset offset=1M range=4M
backend = memory size=8M
EOF

log "starting nbdstack under valgrind memcheck"
"${SPAWN[@]}" valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite --error-exitcode=99 --num-callers=30 \
    --log-file="$VGLOG" "$NBDSTACK" -c "$T/vg.conf" >"$T/server.log" 2>&1 </dev/null &
SERVER_PID=$!
SERVER_PIDS+=("$SERVER_PID")
# valgrind start-up is slow: up to 60 s for the socket
for i in $(seq 600); do
    [ -S "$S" ] && sock_accepts "$S" && break
    server_alive || { cat "$VGLOG" >&2; die "server exited during start-up"; }
    sleep 0.1
done
[ -S "$S" ] || die "socket $S did not appear within 60 s"

export CLIENT_TIMEOUT=120
check "nbdinfo lists both exports" t nbdinfo --list "$(uri "$S")" >/dev/null

nbdsh --base-allocation -u "$(uri "$S")" -c '
import os
h.set_strict_mode(0)
data = os.urandom(1 << 20)
h.pwrite(data, 4096)
assert h.pread(len(data), 4096) == data
h.pwrite(data[:5000], 3 * 1024 * 1024 + 7, nbd.CMD_FLAG_FUA)
h.zero(65536, 8192)
h.zero(65536, 1 << 20, nbd.CMD_FLAG_NO_HOLE)
h.trim(4096, 0)
h.flush()
h.cache(1 << 20, 0)
seen = []
h.block_status(4 << 20, 0, lambda meta, off, ents, err: seen.append(len(ents)) or 0)
assert seen
assert h.pread(8192, 65536) == bytes(8192)
try:
    h.pread(4096, 16 << 20)          # past the end: an error reply
    raise SystemExit("read past the end succeeded")
except nbd.Error:
    pass
# 32 requests in flight
buf = nbd.Buffer.from_bytearray(bytearray(data[:65536]))
cookies = [h.aio_pwrite(buf, i * 65536) for i in range(32)]
while h.aio_in_flight() > 0:
    h.poll(-1)
assert all(h.aio_command_completed(c) for c in cookies)
' 2>"$T/nbdsh.err"
check_eq "nbdsh workload (read, write, FUA, zero, trim, flush, cache, block status, aio)" 0 $?
[ -s "$T/nbdsh.err" ] && log "nbdsh: $(cat "$T/nbdsh.err")"

head -c $((4 * MiB)) /dev/urandom >"$T/in.img"
check "nbdcopy 4 MiB in (2 connections)" t nbdcopy --connections=2 "$T/in.img" "$(uri "$S" win)"
check "nbdcopy 4 MiB out" t nbdcopy "$(uri "$S" win)" "$T/out.img"
check "copy round-trips" cmp -s "$T/in.img" "$T/out.img"

stop_server "$SERVER_PID" TERM 60
case $STOP_RC in
    0)  pass "server exited 0 on SIGTERM; memcheck found nothing" ;;
    99) fail "memcheck reported errors or definite leaks" ;;
    *)  fail "server exit status $STOP_RC after SIGTERM" ;;
esac
if ! grep -q "ERROR SUMMARY: 0 errors" "$VGLOG"; then
    fail "memcheck: $(grep 'ERROR SUMMARY' "$VGLOG")"
fi
if [ "$FAILURES" -ne 0 ]; then
    sed -n '/HEAP SUMMARY\|Invalid\|uninitialised\|definitely lost\|ERROR SUMMARY/,+25p' "$VGLOG" | head -n 150 >&2
fi
finish
