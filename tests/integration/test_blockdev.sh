#!/usr/bin/env bash
# The file backend on a block device (a loop device over a temp file):
# size from BLKGETSIZE64, data written through NBD lands on the device,
# trim (BLKDISCARD) and zero succeed and read back as zeros.  Skipped when
# no loop device can be set up (not root, no loop driver).
. "$(dirname "$0")/lib.sh"
require_layer file
require_tool losetup nbdcopy nbdinfo
require_nbd_module

truncate -s 64M "$T/backing.img"
LOOP=$(losetup -f --show "$T/backing.img" 2>/dev/null) || skip "no loop device"
[ -b "$LOOP" ] || skip "no loop device"
# Detach the loop device, then lib.sh's own cleanup (kill servers, rm $T).
trap 'rc=$?; losetup -d "$LOOP" 2>/dev/null; (exit $rc); _lib_cleanup' EXIT

start_server "$T/b.sock" file "file=$LOOP"
t nbdinfo --json "$(uri "$T/b.sock")" > "$T/info.json"
check_eq "size from BLKGETSIZE64" 67108864 \
    "$(json_get "$T/info.json" "j['exports'][0]['export-size']")"

head -c 8M /dev/urandom > "$T/data.img"
check "nbdcopy onto the device" t nbdcopy "$T/data.img" "$(uri "$T/b.sock")"
check "trim, zero, flush on the device" nbdsh -u "$(uri "$T/b.sock")" -c '
h.trim(1 << 20, 4 << 20)
h.zero(1 << 20, 5 << 20)
h.flush()
assert h.pread(1 << 20, 5 << 20) == bytes(1 << 20)   # (count, offset)
'
stop_server
# libnbd's trim/zero take (count, offset): 4-5 MiB was trimmed (contents
# unspecified after a trim, so not compared) and 5-6 MiB zeroed.
head -c 8M "$T/data.img" > "$T/want.img"
dd if=/dev/zero of="$T/want.img" bs=1M seek=5 count=1 conv=notrunc status=none
check "device holds the data before the trim" \
    cmp -n 4194304 "$LOOP" "$T/want.img"
check "device holds zeros, then the data, after the trim" \
    cmp -i 5242880 -n 3145728 "$LOOP" "$T/want.img"
finish
