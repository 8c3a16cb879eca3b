#!/usr/bin/env bash
# The partition filter on images partitioned by sfdisk (util-linux): an MBR
# with two primary partitions, an extended one and two logical partitions
# in it, and a GPT with partitions 1, 2 and 4 (3 unused).  For each
# partition sfdisk reports, served as
#   nbdstack -U SOCK --filter partition file file=IMG partition=N
# nbdinfo sees its size, nbdcopy reads exactly the image's bytes there, and
# data written through the filter (nbdcopy of a whole file, then nbdsh at
# an offset) lands there and nowhere else in the image.  Unused and missing
# partitions, and one past the end of a truncated image, fail the
# connection with the partition named in the server's log.  The config
# form (filter = partition N) serves the same size.  Where nbdkit and its
# partition filter are installed, both servers must agree on partitions
# 1-8 of each image: the same size, or both refusing.
# Some 70 servers and two images copied around: more than lib.sh's 55 s on
# a loaded machine.
: "${TEST_DEADLINE:=150}"
. "$(dirname "$0")/lib.sh"
require_layer partition file
require_tool nbdinfo nbdcopy cmp
require_nbd_module
command -v sfdisk >/dev/null 2>&1 ||
    skip "sfdisk (Debian package fdisk) is not installed: no way to make partitioned images"

MiB=$((1 << 20))

# parts IMG: "N START SIZE TYPE" for each partition, in sectors.
parts() {
    sfdisk --json "$1" | /usr/bin/python3 -c '
import json, sys
img = sys.argv[1]
for p in json.load(sys.stdin)["partitiontable"]["partitions"]:
    print(p["node"][len(img):], p["start"], p["size"], p["type"])' "$1"
}

# extract IMG BYTE_OFFSET LENGTH OUT
extract() {
    /usr/bin/python3 - "$@" <<'PY'
import sys
img, off, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with open(img, "rb") as f:
    f.seek(off)
    data = f.read(n)
assert len(data) == n, "image too short"
open(out, "wb").write(data)
PY
}

# splice ORIG DATA BYTE_OFFSET OUT: ORIG with DATA written at BYTE_OFFSET.
splice() {
    /usr/bin/python3 - "$@" <<'PY'
import sys
orig, data, off, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
b = bytearray(open(orig, "rb").read())
d = open(data, "rb").read()
b[off:off + len(d)] = d
open(out, "wb").write(b)
PY
}

# export_size URI: the size nbdinfo reports, or "nbdinfo failed".
export_size() {
    if t nbdinfo --json --no-content "$1" >"$T/info.json" 2>"$T/info.err"; then
        json_get "$T/info.json" "j['exports'][0]['export-size']"
    else
        echo "nbdinfo failed: $(head -c 300 "$T/info.err")"
    fi
}

# check_partition LABEL IMG N START SIZE   (START and SIZE in sectors)
check_partition() {
    local label=$1 img=$2 n=$3 start=$4 size=$5 S=$T/p.sock u
    local off=$((start * 512)) len=$((size * 512))
    cp "$img" "$T/before.img"
    start_server "$S" --filter partition file file="$img" partition="$n"
    u=$(uri "$S")
    check_eq "$label partition $n: size" "$len" "$(export_size "$u")"

    # read: the image's bytes at the partition, exactly
    rm -f "$T/out.bin"
    if t nbdcopy "$u" "$T/out.bin" 2>"$T/copy.err"; then
        extract "$T/before.img" "$off" "$len" "$T/want.bin"
        check "$label partition $n: nbdcopy reads the image at byte $off" \
            cmp -s "$T/want.bin" "$T/out.bin"
    else
        fail "$label partition $n: nbdcopy server -> file: $(cat "$T/copy.err")"
    fi

    # write: a whole file with nbdcopy, then 4 KiB at 8 KiB with nbdsh
    head -c "$len" /dev/urandom >"$T/new.bin"
    t nbdcopy "$T/new.bin" "$u" 2>"$T/copy.err" ||
        fail "$label partition $n: nbdcopy file -> server: $(cat "$T/copy.err")"
    nbdsh -u "$u" -c 'h.pwrite(b"\x5a" * 4096, 8192)' -c 'h.flush()' ||
        fail "$label partition $n: nbdsh pwrite failed"
    stop_server "$SERVER_PID"
    /usr/bin/python3 -c 'import sys
f = open(sys.argv[1], "r+b"); f.seek(8192); f.write(b"\x5a" * 4096)' "$T/new.bin"
    splice "$T/before.img" "$T/new.bin" "$off" "$T/expect.img"
    if cmp -s "$T/expect.img" "$img"; then
        pass "$label partition $n: writes land at byte $off, nothing else changed"
    else
        fail "$label partition $n: image differs from the expected one: $(cmp "$T/expect.img" "$img" 2>&1 | head -1)"
    fi
}

# check_refused LABEL IMG N MESSAGE: the connection fails, MESSAGE in the log.
check_refused() {
    local label=$1 img=$2 n=$3 msg=$4 S=$T/r.sock
    start_server "$S" --filter partition file file="$img" partition="$n"
    if t nbdinfo --no-content "$(uri "$S")" >"$T/refused.out" 2>&1; then
        fail "$label partition $n: nbdinfo succeeded"
    else
        pass "$label partition $n: connection refused"
    fi
    check "$label partition $n: log says '$msg'" grep -qF "$msg" "$SERVER_LOG"
    stop_server "$SERVER_PID"
}

# check_layout LABEL IMG: every data partition sfdisk lists.
check_layout() {
    local label=$1 img=$2 n start size type count=0
    parts "$img" >"$T/parts.txt" || { fail "$label: sfdisk --json failed"; return; }
    while read -r n start size type; do
        case $type in 5|f|85) continue ;; esac   # extended: not a data partition
        count=$((count + 1))
        check_partition "$label" "$img" "$n" "$start" "$size"
    done <"$T/parts.txt"
    check_eq "$label: data partitions checked" "$3" "$count"
}

# same_as_nbdkit LABEL IMG: partitions 1-8 as nbdkit's partition filter
# serves them (nbdkit's captive mode and nbdstack's --run, read-only).
same_as_nbdkit() {
    local label=$1 img=$2 n nk ns
    if ! command -v nbdkit >/dev/null 2>&1 ||
       ! nbdkit --filter=partition null --version >/dev/null 2>&1; then
        log "$label: nbdkit's partition filter is not installed: no comparison"
        return
    fi
    for n in 1 2 3 4 5 6 7 8; do
        nk=$(t nbdkit -r -U - --filter=partition file "$img" partition="$n" \
                 --run 'nbdinfo --size "$uri"' 2>/dev/null) || nk=refused
        ns=$(t "$NBDSTACK" -r -U - --filter partition file "$img" partition="$n" \
                 --run 'nbdinfo --size "$uri"' 2>/dev/null) || ns=refused
        check_eq "$label partition $n: as nbdkit" "$nk" "$ns"
    done
}

# --- MBR: 1, 2 primary; 3 extended holding logical 5 and 6; 4 unused --------
IMG=$T/mbr.img
head -c $((32 * MiB)) /dev/urandom >"$IMG" || die "cannot create $IMG"
sfdisk -q "$IMG" >"$T/sfdisk-mbr.out" 2>&1 <<'EOF' || die "sfdisk (MBR) failed: $(cat "$T/sfdisk-mbr.out")"
label: dos
unit: sectors

start=2048, size=8192, type=83
start=10240, size=6144, type=7
start=16384, size=40960, type=5
start=18432, size=8192, type=83
start=28672, size=10240, type=82
EOF
parts "$IMG" >&2
check_layout MBR "$IMG" 4
check_refused MBR "$IMG" 4 "partition 4 is unused"
check_refused MBR "$IMG" 3 "partition 3 is an extended partition"
check_refused MBR "$IMG" 7 "partition 7 not found"
same_as_nbdkit MBR "$IMG"

# --- GPT: 1, 2, 4; 3 unused -------------------------------------------------
IMG=$T/gpt.img
head -c $((32 * MiB)) /dev/urandom >"$IMG" || die "cannot create $IMG"
sfdisk -q "$IMG" >"$T/sfdisk-gpt.out" 2>&1 <<EOF || die "sfdisk (GPT) failed: $(cat "$T/sfdisk-gpt.out")"
label: gpt
unit: sectors

${IMG}1 : start=2048, size=8192, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
${IMG}2 : start=10240, size=6144, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7
${IMG}4 : start=20480, size=10240, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F
EOF
parts "$IMG" >&2
check_layout GPT "$IMG" 3
check_refused GPT "$IMG" 3 "partition 3 is unused"
check_refused GPT "$IMG" 5 "partition 5 is unused"
same_as_nbdkit GPT "$IMG"

# The same table on an image cut to 12 MiB: partition 4 (LBA 20480-30719)
# now runs past the end, partition 1 is still whole.
head -c $((12 * MiB)) "$IMG" >"$T/short.img"
check_refused "GPT 12M" "$T/short.img" 4 "partition 4 extends beyond the end of the disk"
S=$T/s.sock
start_server "$S" --filter partition file file="$T/short.img" partition=1
check_eq "GPT 12M partition 1: size" $((8192 * 512)) "$(export_size "$(uri "$S")")"
stop_server "$SERVER_PID"
same_as_nbdkit "GPT 12M" "$T/short.img"

# --- config file: "filter = partition N" (the bare value is the key) -------
S=$T/cfg.sock
cat >"$T/part.conf" <<EOF
[server]
listen = unix:$S

[export ""]
filter = partition 2
backend = file file=$IMG readonly=yes
EOF
if try_start_config_server "$T/part.conf" "$S"; then
    check_eq "config 'filter = partition 2': size" $((6144 * 512)) "$(export_size "$(uri "$S")")"
    stop_server "$SERVER_PID"
fi

finish
