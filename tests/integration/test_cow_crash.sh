#!/usr/bin/env bash
# Data safety of the cow filter's persistent overlay (overlay=PATH) over a
# read-only file backend:
#   - SIGKILL: a client writes several MiB of random data (overlapping,
#     unaligned, some with FUA, some concurrently), FLUSHes, then makes FUA
#     writes and plain writes; the server is killed; restarted on the same
#     overlay it must return every byte acknowledged before the FLUSH and
#     every FUA write;
#   - SIGTERM while a client streams writes (never flushing): every write
#     that got its reply is there after a restart;
#   - the order of the durable flush, seen by strace where it works: data
#     fdatasync'ed before a map page is written, the map fdatasync'ed after;
#   - the base file never changes.
. "$(dirname "$0")/lib.sh"
require_layer cow file
require_tool cmp
require_nbd_module

MiB=$((1 << 20))
SIZE=$((16 * MiB))
BASE=$T/base.img
OV=$T/overlay
head -c "$SIZE" /dev/urandom >"$BASE"
cp "$BASE" "$T/base.orig"

base_unchanged() { cmp -s "$BASE" "$T/base.orig"; }
serve() { start_server "$S" --filter cow file file="$BASE" readonly=yes overlay="$OV" "$@"; }

# wait_file FILE PID   until FILE exists (up to ~20 s) or PID is gone
wait_file() {
    local i
    for i in $(seq 200); do
        [ -e "$1" ] && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# --- SIGKILL after FLUSH and FUA writes ------------------------------------------------
# The client writes $T/expected.img (what the first 14 MiB must read back
# as), creates $T/ready and keeps its connection open.
S=$T/k.sock
serve
timeout -k 2 40 /usr/bin/python3 - "$(uri "$S")" "$BASE" "$T" <<'PY' >"$T/client1.log" 2>&1 &
import nbd, random, sys, time
uri, base, tdir = sys.argv[1:]
MiB = 1 << 20
model = bytearray(open(base, "rb").read())
h = nbd.NBD()
h.connect_uri(uri)
rng = random.Random(1)
def write(off, n, flags=0):
    data = rng.randbytes(n)
    h.pwrite(data, off, flags)
    model[off:off + n] = data
# Overlapping, unaligned writes, one in five with FUA: ~6 MiB.
for i in range(200):
    n = rng.randrange(1, 64 * 1024)
    write(rng.randrange(0, 12 * MiB - n), n,
          nbd.CMD_FLAG_FUA if i % 5 == 0 else 0)
# 32 concurrent writes of 128 KiB into distinct places.
failed = []
for i in range(32):
    off = (i * 3 * 128 + 7) * 1024
    data = rng.randbytes(128 * 1024)
    model[off:off + len(data)] = data
    h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off,
                 completion=lambda err: failed.append(err.value) if err.value else 1)
while h.aio_in_flight() > 0:
    h.poll(-1)
assert not failed, failed
h.flush()
# After the flush: FUA writes (must survive) below 14 MiB, plain writes
# (may be lost) above.
for i in range(20):
    n = rng.randrange(1, 100 * 1024)
    write(rng.randrange(12 * MiB, 14 * MiB - n), n, nbd.CMD_FLAG_FUA)
for i in range(20):
    n = rng.randrange(1, 100 * 1024)
    write(rng.randrange(14 * MiB, 16 * MiB - n), n)
open(tdir + "/expected.img", "wb").write(model[:14 * MiB])
open(tdir + "/ready", "w").close()
time.sleep(30)
PY
CLIENT_PID=$!
BG_PIDS+=("$CLIENT_PID")
if wait_file "$T/ready" "$CLIENT_PID"; then
    stop_server "$SERVER_PID" KILL 5
    kill "$CLIENT_PID" 2>/dev/null; wait "$CLIENT_PID" 2>/dev/null
    serve
    check "every byte acknowledged before the FLUSH, and every FUA write, survives SIGKILL" t /usr/bin/python3 -c '
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
got = h.pread(14 << 20, 0)
want = open(sys.argv[2], "rb").read()
if got != want:
    bad = next(i for i in range(len(want)) if got[i] != want[i])
    sys.exit("byte %d differs after the restart" % bad)' "$(uri "$S")" "$T/expected.img"
    stop_server "$SERVER_PID" TERM 5
else
    fail "the writing client did not finish: $(tail -5 "$T/client1.log")"
fi
check "base file unchanged after SIGKILL" base_unchanged

# --- SIGTERM while writes stream ----------------------------------------------------------
# Writes without flush, up to 8 in flight, each to its own place; the
# journal lists those that got a successful reply.
rm -f "$OV" "$T/journal"
S=$T/t.sock
serve
timeout -k 2 40 /usr/bin/python3 - "$(uri "$S")" "$T/journal" <<'PY' >"$T/client2.log" 2>&1 &
import nbd, random, sys
uri, jpath = sys.argv[1:]
journal = open(jpath, "w")
h = nbd.NBD()
h.connect_uri(uri)
def done(off, n, err):
    if err.value == 0:
        journal.write("%d %d\n" % (off, n))
        journal.flush()
    return 1
i = 0
try:
    while True:
        while h.aio_in_flight() < 8:
            j = i % 160
            off = j * 100 * 1024 + (j % 7) * 13
            n = 64 * 1024 + (j * 37) % 20000
            data = random.Random(off * 7 + i // 160).randbytes(n)
            h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off,
                         completion=lambda err, off=off, n=n: done(off, n, err))
            i += 1
            if i % 160 == 0:      # the next round rewrites the same places
                while h.aio_in_flight() > 0:
                    h.poll(-1)
        h.poll(-1)
except nbd.Error as e:
    print("stopped after %d writes: %s" % (i, e))
PY
CLIENT_PID=$!
BG_PIDS+=("$CLIENT_PID")
for i in $(seq 200); do
    [ -s "$T/journal" ] && [ "$(wc -l <"$T/journal")" -ge 300 ] && break
    sleep 0.05
done
stop_server "$SERVER_PID" TERM 5
check_eq "SIGTERM while writing: exit status" 0 "$STOP_RC"
wait "$CLIENT_PID" 2>/dev/null
n=$(wc -l <"$T/journal")
check "the client got replies before SIGTERM ($n)" test "$n" -ge 100
serve
# Each place's last acknowledged round; a later, unacknowledged round may
# also have landed (its write was in flight): either is accepted there,
# every other byte must be the last acknowledged one.
check "every replied write is there after SIGTERM" t /usr/bin/python3 -c '
import nbd, random, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
last = {}
for k, line in enumerate(open(sys.argv[2])):
    off, n = map(int, line.split())
    last[off] = (last.get(off, (-1, n))[0] + 1, n)
for off, (rnd, n) in last.items():
    got = h.pread(n, off)
    ok = [random.Random(off * 7 + r).randbytes(n) for r in (rnd, rnd + 1)]
    if got not in ok:
        sys.exit("write at %d (round %d) lost" % (off, rnd))
print(len(last), "places checked")' "$(uri "$S")" "$T/journal"
stop_server "$SERVER_PID" TERM 5
check "base file unchanged after SIGTERM" base_unchanged

# --- the order of a durable flush, seen by strace ------------------------------------------
if command -v strace >/dev/null 2>&1 && strace -f -o /dev/null true 2>/dev/null; then
    rm -f "$OV"
    S=$T/s.sock
    rm -f "$S"
    # LeakSanitizer cannot run under ptrace: it would end the server with
    # a fatal report (ASan build), which the sanitizer test then counts.
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    strace -f -qq -y -e trace=pwrite64,fdatasync -e signal=none -o "$T/strace.out" \
        "${SPAWN[@]}" "$NBDSTACK" -U "$S" --filter cow file file="$BASE" readonly=yes \
        overlay="$OV" >"$T/strace-server.log" 2>&1 </dev/null &
    SPID=$!
    SERVER_PIDS+=("$SPID")
    if wait_socket "$S" "$SPID" "$T/strace-server.log"; then
        t /usr/bin/python3 -c '
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for i in range(40):
    h.pwrite(bytes([i]) * 5000, i * 300000 + 11)
h.flush()
h.pwrite(b"x" * 70000, 15 << 20, nbd.CMD_FLAG_FUA)' "$(uri "$S")" ||
            fail "strace client failed"
        kill -TERM "$(ps -o pid= --ppid "$SPID")" 2>/dev/null
        stop_server "$SPID" TERM 5
        check "durable flush order: data synced, then map written, then synced" \
            /usr/bin/python3 - "$T/strace.out" "$OV" <<'PY'
import re, struct, sys
log, ov = sys.argv[1:]
data_offset = struct.unpack("<Q", open(ov, "rb").read(40)[32:40])[0]
ev = []    # 'D' data write, 'M' map write, 'S' fdatasync, in call order
for line in open(log):
    if ov + ">" not in line:
        continue
    m = re.search(r"pwrite64\(\d+<[^>]*>, .*, (\d+), (\d+)(\)| <unfinished)", line)
    if m:
        off = int(m.group(2))
        ev.append("M" if 4096 <= off < data_offset else ("H" if off == 0 else "D"))
    elif "fdatasync(" in line:
        ev.append("S")
s = "".join(ev)
if "M" not in s:
    sys.exit("no map page written: %s" % s)
for i, e in enumerate(s):
    if e == "M":
        before = s[:i]
        if "D" in before and "S" not in before[before.rindex("D"):]:
            sys.exit("map written before the data was synced: %s" % s)
last_m = s.rindex("M")
if "S" not in s[last_m:]:
    sys.exit("map not synced after it was written: %s" % s)
print("events:", s)
PY
    else
        fail "server under strace did not start"
    fi
else
    log "strace not usable here: flush order not checked"
fi

finish
