#!/usr/bin/env bash
# bench/ keeps working: a --quick run of bench/run (nbdstack and nbdkit
# start, fio runs against both, a table comes out) and bench/layer-cost
# with few requests (instruction counts under valgrind).  No figure is
# checked: speed is measured by the benchmark, never asserted in tests.
# Skipped (77) without fio or nbdkit, or for a sanitizer build; the
# layer-cost part needs valgrind.
. "$(dirname "$0")/lib.sh"
require_layer memory null offset
require_tool fio nbdkit nbdcopy nbdinfo readelf
require_nbd_module

if readelf -d "$NBDSTACK" 2>/dev/null | grep -Eq 'lib(asan|tsan|ubsan)' ||
   readelf -s "$NBDSTACK" 2>/dev/null | grep -Eq '__(asan|tsan)_init'; then
    skip "$NBDSTACK is built with a sanitizer: valgrind cannot run it"
fi

if /usr/bin/python3 "$SRCDIR/bench/run" --quick --nbdstack "$NBDSTACK" \
        --out "$T/quick.md" --data-dir "$T/data" >"$T/quick.log" 2>&1; then
    pass "bench/run --quick exits 0"
else
    fail "bench/run --quick failed: $(tail -5 "$T/quick.log")"
fi
check "the table has a randread qd1 row with two medians" \
    grep -Eq '^\| randread 4K qd1 \(IOPS\) \| [0-9,]+ \| [0-9,]+ \|' "$T/quick.md"

if ! command -v valgrind >/dev/null 2>&1; then
    log "valgrind not installed: bench/layer-cost not run"
    finish
fi
if /usr/bin/python3 "$SRCDIR/bench/layer-cost" --nbdstack "$NBDSTACK" \
        --n 300 --native 3000 >"$T/layer.txt" 2>"$T/layer.err"; then
    pass "bench/layer-cost exits 0"
else
    fail "bench/layer-cost failed: $(tail -5 "$T/layer.err")"
fi
check "layer-cost reports instructions per layer" \
    grep -Eq '^one filter layer: [0-9.,]+ instructions per request' "$T/layer.txt"
finish
