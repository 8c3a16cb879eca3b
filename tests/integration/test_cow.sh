#!/usr/bin/env bash
# The cow filter with real clients, over a read-only file backend whose
# size (5 MiB + 1000 bytes) is not a multiple of the block size and which
# has data and holes:
#   - nbdsh: a sequence of aligned, unaligned, block-spanning and last-block
#     writes and trims reads back as a model of it says, extents too; where
#     nbdkit is installed, `nbdkit --filter=cow file` gives the same bytes
#     and extents for the same sequence;
#   - qemu-io writes and verifies a pattern, and a second connection sees it;
#   - nbdcopy with 4 connections fills the export, and reads it back whole;
#   - -r: writes refused, reads still served;
#   - bad keys are startup errors;
#   - overlay=PATH: kept across a restart; another block size, another disk
#     size and a file that is not an overlay are refused;
#   - and through all of it the base file never changes.
. "$(dirname "$0")/lib.sh"
require_layer cow file null
require_tool nbdcopy qemu-io cmp
require_nbd_module

MiB=$((1 << 20))
SIZE=$((5 * MiB + 1000))
BASE=$T/base.img

# Base image: random data in places, holes elsewhere.
truncate -s "$SIZE" "$BASE"
dd if=/dev/urandom of="$BASE" bs=64k count=4 conv=notrunc status=none
dd if=/dev/urandom of="$BASE" bs=1 count=70000 seek=$((MiB + 5000)) conv=notrunc status=none
dd if=/dev/urandom of="$BASE" bs=1 count=3000 seek=$((SIZE - 3000)) conv=notrunc status=none
cp --sparse=always "$BASE" "$T/base.orig"

base_unchanged() { cmp -s "$BASE" "$T/base.orig"; }

# sequence URI: applies the same writes and trims to the export and to a
# model of the disk, checks every byte reads back as the model says, and
# prints the sha256 of the disk and its extents (one line each).
sequence() {
    timeout -k 2 30 /usr/bin/python3 - "$1" "$BASE" <<'PY'
import hashlib, nbd, random, sys
uri, base = sys.argv[1], sys.argv[2]
model = bytearray(open(base, "rb").read())
size = len(model)
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(uri)
assert h.get_size() == size, h.get_size()
rng = random.Random(7)
def write(off, n, fua=False):
    data = rng.randbytes(n)
    h.pwrite(data, off, nbd.CMD_FLAG_FUA if fua else 0)
    model[off:off + n] = data
def trim(off, n):
    h.trim(n, off)
    model[off:off + n] = bytes(n)
B = 65536
write(0, B)                        # a whole block over data
write(B + 100, 300)                # inside a block of data
write(3 * B - 10, 20)              # across two blocks
write(10 * B + 1, 3 * B, fua=True) # unaligned, over a hole
write(size - 500, 500)             # the end of the last, partial block
write(16 * B, 1000)                # data below next to it
trim(20 * B, 2 * B)                # whole blocks
trim(5 * B + 7, 100)               # part of a block
trim(size - 1000, 1000)            # the last block, whole
write(size - 700, 100)             # ...and written again in part
h.flush()
got = h.pread(size, 0)
if got != model:
    bad = next(i for i in range(size) if got[i] != model[i])
    sys.exit("content differs from the model at byte %d" % bad)
ext = []
h.block_status(size, 0, lambda m, o, e, err: ext.extend(e))
print(hashlib.sha256(got).hexdigest())
print(" ".join(map(str, ext)))
# A written block is never a hole.
off = 0
for i in range(0, len(ext), 2):
    for a, b in ((0, B), (B + 100, B + 400), (10 * B + 1, 13 * B + 1)):
        if ext[i + 1] & 1 and off < b and off + ext[i] > a:
            sys.exit("written bytes %d-%d reported as a hole" % (a, b))
    off += ext[i]
PY
}

# --- nbdsh: writes and trims against a model (and nbdkit) ----------------------------
S=$T/c.sock
start_server "$S" --filter cow file file="$BASE" readonly=yes
if out=$(sequence "$(uri "$S")" 2>&1); then
    pass "write/trim sequence reads back as the model says"
else
    fail "write/trim sequence: $out"
fi
check "base file unchanged after the sequence" base_unchanged

if command -v nbdkit >/dev/null 2>&1 && nbdkit --filter=cow null --version >/dev/null 2>&1; then
    K=$T/k.sock
    "${SPAWN[@]}" nbdkit -f -U "$K" --filter=cow file "$BASE" >"$T/nbdkit.log" 2>&1 </dev/null &
    KPID=$!
    SERVER_PIDS+=("$KPID")
    if wait_socket "$K" "$KPID" "$T/nbdkit.log"; then
        if kout=$(sequence "$(uri "$K")" 2>&1); then
            check_eq "same bytes and extents as nbdkit --filter=cow" "$kout" "$out"
        else
            fail "the sequence against nbdkit failed: $kout"
        fi
    else
        fail "nbdkit did not start"
    fi
    stop_server "$KPID" TERM 5
else
    log "nbdkit or its cow filter not installed: no comparison"
fi

# --- qemu-io, and a second connection -----------------------------------------------
qio() { t qemu-io -f raw "$@" 2>&1; }
out=$(qio -c 'write -P 0x55 100k 200k' -c 'read -P 0x55 100k 200k' \
          -c 'write -P 0x66 5119k 1000' "$(uri "$S")")
case $out in
    *"verification failed"*|*rror*) fail "qemu-io write/read: $out" ;;
    *) pass "qemu-io writes and verifies a pattern" ;;
esac
out=$(qio -c 'read -P 0x55 100k 200k' -c 'read -P 0x66 5119k 1000' "$(uri "$S")")
case $out in
    *"verification failed"*|*rror*) fail "second connection: $out" ;;
    *) pass "a second connection reads what the first wrote" ;;
esac
check "base file unchanged after qemu-io" base_unchanged

# --- nbdcopy: 4 connections fill the export, which reads back whole -------------
head -c "$SIZE" /dev/urandom >"$T/src.img"
check "nbdcopy -C 4 into the export" t nbdcopy -C 4 "$T/src.img" "$(uri "$S")"
check "nbdcopy back out" t nbdcopy "$(uri "$S")" "$T/out.img"
check "what nbdcopy wrote reads back byte for byte" cmp -s "$T/src.img" "$T/out.img"
check "base file unchanged after nbdcopy" base_unchanged
stop_server "$SERVER_PID" TERM 5
check_eq "exit status after SIGTERM" 0 "$STOP_RC"

# --- read-only export ------------------------------------------------------------------
start_server "$S" -r --filter cow file file="$BASE"
# strict mode off: the server, not libnbd, must refuse the write.
out=$(t /usr/bin/python3 - "$(uri "$S")" <<'PY' 2>&1
import errno, nbd, sys
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
print(h.is_read_only())
try:
    h.pwrite(b"x" * 512, 0)
    print("written")
except nbd.Error as e:
    print("refused", e.errnum == errno.EPERM)
print(h.pread(4, 0).hex())
PY
)
check_eq "-r: read-only, write refused with EPERM, reads served" \
    "True refused True $(head -c 4 "$BASE" | od -An -tx1 | tr -d ' \n')" "$(echo $out)"
stop_server "$SERVER_PID" TERM 5
check "base file unchanged with -r" base_unchanged

# --- startup errors ----------------------------------------------------------------------
bad_start() {   # bad_start WHAT MESSAGE ARGS...
    local what=$1 want=$2 rc; shift 2
    out=$(t "$NBDSTACK" -U "$T/bad.sock" "$@" 2>&1); rc=$?
    if [ "$rc" -ne 0 ] && [[ $out == *"$want"* ]]; then pass "$what refused"
    else fail "$what: status $rc, output: $out"; fi
}
bad_start "cow-block-size=1000" "cow-block-size=1000 must be a power of two" \
    --filter cow null size=1M cow-block-size=1000
bad_start "cow-block-size=2K" "cow-block-size=2048 must be" \
    --filter cow null size=1M cow-block-size=2K
bad_start "cow-on-read=maybe" "cow-on-read" --filter cow null size=1M cow-on-read=maybe
bad_start "an unknown key" "cow-block-siz" --filter cow null size=1M cow-block-siz=4K

# --- overlay=PATH ------------------------------------------------------------------------
OV=$T/overlay
start_server "$S" --filter cow file file="$BASE" readonly=yes overlay="$OV"
check "nbdcopy into the persistent overlay" t nbdcopy "$T/src.img" "$(uri "$S")"
stop_server "$SERVER_PID" TERM 5
check_eq "persistent: exit status after SIGTERM" 0 "$STOP_RC"
check_eq "persistent: overlay mode" 600 "$(stat -c %a "$OV")"
start_server "$S" --filter cow file file="$BASE" readonly=yes overlay="$OV"
rm -f "$T/out.img"
check "nbdcopy out after the restart" t nbdcopy "$(uri "$S")" "$T/out.img"
check "persistent: the data is back after a restart" cmp -s "$T/src.img" "$T/out.img"
stop_server "$SERVER_PID" TERM 5

bad_start "a persistent overlay with another block size" \
    "was made with cow-block-size=65536, not 131072" \
    --filter cow file file="$BASE" overlay="$OV" cow-block-size=128K
start_server "$S" --filter cow null size=1M overlay="$OV"
out=$(nbdsh -u "$(uri "$S")" -c 'print(h.get_size())' 2>&1)
check "a persistent overlay over another disk size: connection refused" \
    test "$out" != 1048576
check "...and the log says why" grep -q "was made for a disk of $SIZE bytes, but the disk below has 1048576 bytes" "$SERVER_LOG"
stop_server "$SERVER_PID" TERM 5
bad_start "a file that is not an overlay" "is not an nbdstack cow overlay (bad magic)" \
    --filter cow file file="$BASE" overlay="$T/src.img"
check "...and it is left untouched" cmp -s "$T/src.img" "$T/out.img"
check "base file unchanged at the end" base_unchanged

finish
