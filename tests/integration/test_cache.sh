#!/usr/bin/env bash
# The cache filter over the file backend, with real clients
# (cache_client.py drives libnbd):
#   - a random workload (writes, FUA writes, zero, trim, cache, flush,
#     reads checked against a model, extents called zero must read zero)
#     in each mode, and with small blocks, cache-on-read and a small
#     cache-max-size; after the server stops (SIGTERM) the file equals the
#     model (writeback, writethrough);
#   - the same workload without trim through nbdkit's cache filter, where
#     installed: both servers leave the same file (and nbdkit's extents,
#     which call unflushed data zero, are logged);
#   - crash: writeback, several MiB written (some FUA), FLUSH, more writes
#     (some FUA), SIGKILL with the client connected: every byte written
#     before the completed FLUSH and every FUA write is in the file;
#   - SIGTERM during writes from two connections: every replied write is
#     in the file (the close-time flush writes the cache back);
#   - nbdcopy in and out over several connections with a cache smaller
#     than the disk: the data, and the file after SIGTERM.
# Some 20 servers, nbdkit among them, and 16 MiB copied around: about 35 s
# alone, more than lib.sh's 55 s on a loaded machine.
: "${TEST_DEADLINE:=150}"
. "$(dirname "$0")/lib.sh"
require_layer cache file
require_tool nbdcopy cmp
require_nbd_module

export TMPDIR=$T              # the servers' cache files go here too
MiB=$((1 << 20))
SIZE=$((16 * MiB))
CLIENT=(/usr/bin/python3 "$SRCDIR/tests/integration/cache_client.py")
S=$T/c.sock

# The starting disk: random data in places, holes elsewhere.
truncate -s $SIZE "$T/base.img"
for at in 0 3 4 9 15; do
    head -c $MiB /dev/urandom | dd of="$T/base.img" bs=1M seek=$at conv=notrunc status=none
done

# workload LABEL SEED [client flags] -- server args...
workload() {
    local label=$1 seed=$2; shift 2
    local flags=()
    while [ "$1" != -- ]; do flags+=("$1"); shift; done
    shift
    cp --sparse=always "$T/base.img" "$T/disk.img"
    start_server "$S" "$@"
    if t "${CLIENT[@]}" workload "$(uri "$S")" "$seed" "$T/base.img" \
            "$T/model.img" "${flags[@]}" >"$T/client.log" 2>&1; then
        pass "$label: every read matched the model"
    else
        fail "$label: $(tail -n 3 "$T/client.log")"
    fi
    stop_server "$SERVER_PID" TERM 10
    check_eq "$label: exit status after SIGTERM" 0 "$STOP_RC"
}

for mode in writeback writethrough; do
    workload "cache=$mode" 1 --check-extents -- \
        --filter cache file file="$T/disk.img" cache=$mode
    check "cache=$mode: the file equals the model" cmp -s "$T/disk.img" "$T/model.img"
done

# unsafe: reads are right; FLUSH (and the close-time flush) does nothing,
# so the file is not checked.
workload "cache=unsafe" 2 --check-extents -- \
    --filter cache file file="$T/disk.img" cache=unsafe

workload "writeback, 4K blocks, cache-on-read, cache-max-size=64k" 3 --check-extents -- \
    --filter cache file file="$T/disk.img" cache-min-block-size=4k \
    cache-on-read=true cache-max-size=64k
check "small cache: the file equals the model" cmp -s "$T/disk.img" "$T/model.img"

workload "writethrough, cache-on-read, cache-max-size=1M" 4 -- \
    --filter cache file file="$T/disk.img" cache=writethrough \
    cache-on-read=true cache-max-size=1M cache-low-threshold=50
check "writethrough small cache: the file equals the model" cmp -s "$T/disk.img" "$T/model.img"

# --- the same sequence through nbdkit -----------------------------------------
if command -v nbdkit >/dev/null 2>&1 && nbdkit --filter=cache null --dump-plugin >/dev/null 2>&1; then
    for mode in writeback writethrough; do
        workload "ours, cache=$mode, no trim" 5 --no-trim -- \
            --filter cache file file="$T/disk.img" cache=$mode cache-on-read=true
        mv "$T/disk.img" "$T/ours.img"
        cp --sparse=always "$T/base.img" "$T/disk.img"
        rm -f "$S"
        "${SPAWN[@]}" nbdkit -U "$S" -f --filter=cache file file="$T/disk.img" \
            cache=$mode cache-on-read=true >"$T/nbdkit.log" 2>&1 </dev/null &
        SERVER_PID=$!
        SERVER_PIDS+=("$SERVER_PID")
        if wait_socket "$S" "$SERVER_PID" "$T/nbdkit.log"; then
            if t "${CLIENT[@]}" workload "$(uri "$S")" 5 "$T/base.img" \
                    "$T/model-nbdkit.img" --no-trim >"$T/client.log" 2>&1; then
                pass "nbdkit cache=$mode: every read matched the model"
            else
                fail "nbdkit cache=$mode: $(tail -n 3 "$T/client.log")"
            fi
            stop_server "$SERVER_PID" TERM 10
            check "cache=$mode: nbdstack and nbdkit leave the same file" \
                cmp -s "$T/ours.img" "$T/disk.img"
            check "cache=$mode: and it is the model" cmp -s "$T/disk.img" "$T/model-nbdkit.img"
        else
            fail "nbdkit did not start: $(tail -n 3 "$T/nbdkit.log")"
        fi
    done
    # Not a check: nbdkit passes the map below through, so a block written
    # but not flushed into a hole is reported as zero (docs/filters/cache.md).
    cp --sparse=always "$T/base.img" "$T/disk.img"
    rm -f "$S"
    "${SPAWN[@]}" nbdkit -U "$S" -f --filter=cache file file="$T/disk.img" \
        >"$T/nbdkit.log" 2>&1 </dev/null &
    SERVER_PID=$!
    SERVER_PIDS+=("$SERVER_PID")
    if wait_socket "$S" "$SERVER_PID" "$T/nbdkit.log"; then
        if t "${CLIENT[@]}" workload "$(uri "$S")" 1 "$T/base.img" \
                "$T/model-nbdkit.img" --no-trim --check-extents >"$T/client.log" 2>&1; then
            log "nbdkit: extents of dirty blocks were right this time"
        else
            log "nbdkit (for comparison): $(tail -n 1 "$T/client.log")"
        fi
        stop_server "$SERVER_PID" TERM 10
    fi
else
    log "nbdkit or its cache filter is not installed: no comparison"
fi

# --- crash: SIGKILL after FLUSH -----------------------------------------------------
for seed in 11 12; do
    cp --sparse=always "$T/base.img" "$T/disk.img"
    start_server "$S" --filter cache file file="$T/disk.img"
    rm -f "$T/ready"
    timeout -k 2 50 "${CLIENT[@]}" crash "$(uri "$S")" $seed "$T/base.img" \
        "$T/model.img" "$T/mask" "$T/ready" >"$T/crash.log" 2>&1 &
    CRASH_PID=$!
    BG_PIDS+=("$CRASH_PID")
    for i in $(seq 200); do
        [ -e "$T/ready" ] && break
        kill -0 "$CRASH_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -e "$T/ready" ]; then
        stop_server "$SERVER_PID" KILL 5
        if out=$("${CLIENT[@]}" masked-equal "$T/disk.img" "$T/model.img" "$T/mask" 2>&1); then
            pass "SIGKILL (seed $seed): flushed and FUA data in the file ($out bytes checked)"
        else
            fail "SIGKILL (seed $seed): $out"
        fi
    else
        fail "crash client did not get ready: $(tail -n 3 "$T/crash.log")"
        stop_server "$SERVER_PID" KILL 5
    fi
    kill "$CRASH_PID" 2>/dev/null; wait "$CRASH_PID" 2>/dev/null
done

# --- SIGTERM during writes from two connections ------------------------------------
cp --sparse=always "$T/base.img" "$T/disk.img"
start_server "$S" --filter cache file file="$T/disk.img"
WPIDS=()
for w in 0 1; do
    timeout -k 2 40 "${CLIENT[@]}" writer "$(uri "$S")" 21 $w "$T/writer$w.idx" \
        >"$T/writer$w.out" 2>&1 &
    WPIDS+=($!)
    BG_PIDS+=($!)
done
sleep 1.5
stop_server "$SERVER_PID" TERM 10
check_eq "SIGTERM during writes: exit status" 0 "$STOP_RC"
for p in "${WPIDS[@]}"; do wait "$p" 2>/dev/null; done
if out=$("${CLIENT[@]}" verify-writers "$T/base.img" "$T/disk.img" 21 \
        "$T/writer0.idx" "$T/writer1.idx" 2>&1); then
    if [ "$out" -gt 20 ]; then
        pass "SIGTERM during writes: all $out replied writes are in the file"
    else
        fail "SIGTERM during writes: only $out writes were made; the check proves little"
    fi
else
    fail "SIGTERM during writes: $out"
fi

# --- nbdcopy over several connections, cache smaller than the disk -----------------
head -c $SIZE /dev/urandom >"$T/src.img"
: >"$T/disk.img"; truncate -s $SIZE "$T/disk.img"
start_server "$S" --filter cache file file="$T/disk.img" cache-max-size=2M \
    cache-on-read=true
check "nbdcopy into the cache" t nbdcopy -C 4 "$T/src.img" "$(uri "$S")"
rm -f "$T/out.img"
check "nbdcopy out of the cache" t nbdcopy -C 4 "$(uri "$S")" "$T/out.img"
check "nbdcopy: the data read back equals the source" cmp -s "$T/src.img" "$T/out.img"
stop_server "$SERVER_PID" TERM 10
check_eq "nbdcopy: exit status after SIGTERM" 0 "$STOP_RC"
check "nbdcopy: the file equals the source" cmp -s "$T/src.img" "$T/disk.img"

# --- over a read-only backend: no flush advertised, as nbdkit -------------------
start_server "$S" --filter cache pattern size=1M
t nbdinfo --json "$(uri "$S")" >"$T/ro.json"
check_eq "cache over pattern: can_flush" false \
    "$(json_get "$T/ro.json" "j['exports'][0]['can_flush']")"
stop_server "$SERVER_PID" TERM 10

finish
