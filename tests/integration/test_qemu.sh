#!/usr/bin/env bash
# qemu's NBD client against the server: qemu-img info (both URI syntaxes),
# convert a 64 MiB random raw image into the server and compare it back,
# qemu-io write/read/zero/discard/flush with pattern checks, and a read-only
# server refusing writes.
. "$(dirname "$0")/lib.sh"
require_layer memory
require_tool qemu-img qemu-io

MiB=$((1 << 20))
S=$T/q.sock
U=$(uri "$S")
disk_args 64M
start_server "$S" "${DISK_ARGS[@]}"

# --- qemu-img info ---------------------------------------------------------
for u in "$U" "nbd:unix:$S"; do
    if t qemu-img info --output=json "$u" >"$T/info.json" 2>"$T/info.err"; then
        check_eq "qemu-img info $u: virtual-size" 67108864 "$(json_get "$T/info.json" "j['virtual-size']")"
    else
        fail "qemu-img info $u failed: $(cat "$T/info.err")"
    fi
done

# --- convert into the server, compare ----------------------------------------
head -c $((64 * MiB)) /dev/urandom >"$T/src.img" || die "cannot create image"
# a few zero MiB in the middle so convert also sends zero requests
dd if=/dev/zero of="$T/src.img" bs=1M seek=20 count=4 conv=notrunc status=none
if t qemu-img convert -n -f raw -O raw "$T/src.img" "$U" 2>"$T/conv.err"; then
    pass "qemu-img convert -n into the server"
else
    fail "qemu-img convert -n failed: $(cat "$T/conv.err")"
fi
check "qemu-img compare image vs server" t qemu-img compare -q -f raw -F raw "$T/src.img" "$U"
check "qemu-img compare via nbd:unix: syntax" t qemu-img compare -q -f raw -F raw "$T/src.img" "nbd:unix:$S"
# convert back out to a file and cmp byte for byte
if t qemu-img convert -f raw -O raw "$U" "$T/back.img" 2>"$T/conv.err"; then
    check "qemu-img convert server -> file is identical" cmp -s "$T/src.img" "$T/back.img"
else
    fail "qemu-img convert server -> file failed: $(cat "$T/conv.err")"
fi
# a changed byte must make compare fail (the comparison is real)
printf '\x01' | dd of="$T/src.img" bs=1 seek=$((33 * MiB + 5)) conv=notrunc status=none
if t qemu-img compare -q -f raw -F raw "$T/src.img" "$U" 2>/dev/null; then
    fail "qemu-img compare did not notice a changed byte"
else
    pass "qemu-img compare notices a changed byte"
fi

# --- qemu-io -----------------------------------------------------------------
qio() { t qemu-io -f raw "$@" "$U" >"$T/qio.out" 2>&1; }
if qio -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' \
       -c 'write -z 1M 1M' -c 'read -P 0 1M 1M' \
       -c 'discard 2M 1M' -c flush \
       -c 'write -P 0xcd 3M 4k' -c 'write -P 0xef 3M 512' -c 'read -P 0xef 3M 512' \
       -c 'read -P 0xcd 3146240 3584' \
       -c 'aio_write -P 0x11 4M 64k' -c 'aio_write -P 0x22 5M 64k' -c aio_flush \
       -c 'read -P 0x11 4M 64k' -c 'read -P 0x22 5M 64k' \
       -c 'write -z -u 6M 1M' -c 'read -P 0 6M 1M' -c flush; then
    if grep -qi -e 'fail' -e 'error' "$T/qio.out"; then
        fail "qemu-io reported: $(grep -i -e fail -e error "$T/qio.out" | head -3)"
    else
        pass "qemu-io write/read/zero/discard/flush/aio with patterns"
    fi
else
    fail "qemu-io commands failed: $(grep -v -e '^wrote' -e '^read' -e 'ops;' -e '^discard' "$T/qio.out" | head -5)"
fi
# the data survives a new connection
check "qemu-io: data visible from a new connection" \
    qio -r -c 'read -P 0xab 0 1M' -c 'read -P 0 1M 1M' -c 'read -P 0x22 5M 64k'
stop_server "$SERVER_PID"
check_eq "exit status after SIGTERM" 0 "$STOP_RC"

# --- read-only server ------------------------------------------------------------
S=$T/ro.sock
U=$(uri "$S")
disk_args 64M
start_server "$S" -r "${DISK_ARGS[@]}"
if qio -c 'write -P 0xab 0 64k'; then
    fail "qemu-io write succeeded on a -r server"
else
    pass "qemu-io write refused by the -r server"
fi
check "qemu-io -r read works on the -r server" qio -r -c 'read -P 0 0 1M'
if t qemu-img convert -n -f raw -O raw "$T/back.img" "$U" >/dev/null 2>&1; then
    fail "qemu-img convert into a -r server succeeded"
else
    pass "qemu-img convert into a -r server fails"
fi
check "-r server still serves reads" qio -r -c 'read -P 0 0 64M'
stop_server "$SERVER_PID"
check_eq "-r exit status after SIGTERM" 0 "$STOP_RC"

finish
