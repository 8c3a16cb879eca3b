#!/usr/bin/env bash
# nbdinfo against the server: size and capabilities of memory (read-write
# and -r), block sizes, the offset filter's size, --list of a config with two
# exports (names and descriptions), --map data vs hole, export selection by
# name (-e NAME and nbd+unix:///NAME?socket=).
. "$(dirname "$0")/lib.sh"
require_layer memory offset null
require_tool nbdinfo
require_nbd_module

# info_json JSONFILE URI [nbdinfo options]
info_json() {
    local out=$1 u=$2; shift 2
    t nbdinfo --json --no-content "$@" "$u" >"$out" 2>"$out.err" ||
        { fail "nbdinfo --json $* $u failed: $(cat "$out.err")"; return 1; }
}
e0() { json_get "$1" "j['exports'][0]$2"; }

# --- memory size=1G: size and every capability --------------------------
S=$T/mem.sock
start_server "$S" memory size=1G
if info_json "$T/mem.json" "$(uri "$S")"; then
    check_eq "memory export-size" 1073741824 "$(e0 "$T/mem.json" "['export-size']")"
    check_eq "memory is_read_only" false "$(e0 "$T/mem.json" "['is_read_only']")"
    for cap in can_flush can_trim can_zero can_fua can_multi_conn can_cache can_fast_zero can_df; do
        check_eq "memory $cap" true "$(e0 "$T/mem.json" "['$cap']")"
    done
    check_eq "structured replies" true "$(json_get "$T/mem.json" "j['structured']")"
    check_eq "base:allocation context" true "$(e0 "$T/mem.json" "['contexts'].__contains__('base:allocation')")"
    check_eq "block_size_minimum" 1 "$(e0 "$T/mem.json" "['block_size_minimum']")"
    check_eq "block_size_preferred" 4096 "$(e0 "$T/mem.json" "['block_size_preferred']")"
    max=$(e0 "$T/mem.json" "['block_size_maximum']")
    if [[ $max =~ ^[0-9]+$ ]] && [ "$max" -ge 4096 ] && [ "$max" -le 33554432 ]; then
        pass "block_size_maximum $max in [4096, 32 MiB]"
    else
        fail "block_size_maximum: expected 4096..33554432, got '$max'"
    fi
fi

# --map: all hole at first, data where written
t nbdinfo --map --json "$(uri "$S")" >"$T/map0.json" 2>&1 || fail "nbdinfo --map failed: $(cat "$T/map0.json")"
check_eq "fresh memory map: one extent" 1 "$(json_get "$T/map0.json" "len(j)")"
check_eq "fresh memory map: hole,zero" 3 "$(json_get "$T/map0.json" "j[0]['type']")"
nbdsh -u "$(uri "$S")" -c 'h.pwrite(b"\x5a" * (2 << 20), 4 << 20)' -c 'h.flush()' ||
    fail "nbdsh write failed"
t nbdinfo --map --json "$(uri "$S")" >"$T/map1.json" 2>&1 || fail "nbdinfo --map failed: $(cat "$T/map1.json")"
# classify 4..6 MiB as data, 0..4 MiB and 6 MiB..end as holes
res=$(/usr/bin/python3 - "$T/map1.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
MiB = 1 << 20
pos = 0
bad = []
for e in m:
    if e["offset"] != pos:
        bad.append("gap at %d" % pos)
    pos = e["offset"] + e["length"]
    lo, hi = e["offset"], pos
    data = 4 * MiB <= lo and hi <= 6 * MiB
    hole = hi <= 4 * MiB or lo >= 6 * MiB
    if data and e["type"] & 1:
        bad.append("written extent %r reported as hole" % e)
    if hole and not e["type"] & 1:
        bad.append("unwritten extent %r reported as data" % e)
    if not data and not hole:
        bad.append("extent %r straddles the written area" % e)
if pos != 1 << 30:
    bad.append("map ends at %d, not at 1 GiB" % pos)
print("; ".join(bad) or "ok")
PY
)
check_eq "--map after writing 2 MiB at 4 MiB: data vs hole" ok "$res"
stop_server "$SERVER_PID"
check_eq "memory server exit status after SIGTERM" 0 "$STOP_RC"

# --- -r: read-only, no trim / zero ----------------------------------------
S=$T/ro.sock
start_server "$S" -r memory size=1G
if info_json "$T/ro.json" "$(uri "$S")"; then
    check_eq "-r is_read_only" true "$(e0 "$T/ro.json" "['is_read_only']")"
    for cap in can_trim can_zero can_fast_zero; do
        check_eq "-r $cap" false "$(e0 "$T/ro.json" "['$cap']")"
    done
    check_eq "-r export-size" 1073741824 "$(e0 "$T/ro.json" "['export-size']")"
fi
stop_server "$SERVER_PID"

# --- offset filter: size == range -----------------------------------------
S=$T/off.sock
start_server "$S" --filter offset memory size=1G offset=1M range=100M
if info_json "$T/off.json" "$(uri "$S")"; then
    check_eq "offset filter: size == range" 104857600 "$(e0 "$T/off.json" "['export-size']")"
fi
stop_server "$SERVER_PID"

# --- export name selection: -e NAME -------------------------------------------
S=$T/named.sock
start_server "$S" -e vm1 memory size=64M
if info_json "$T/named.json" "$(uri "$S" vm1)"; then
    check_eq "-e vm1: export-name" vm1 "$(e0 "$T/named.json" "['export-name']")"
    check_eq "-e vm1: size" 67108864 "$(e0 "$T/named.json" "['export-size']")"
fi
if t nbdinfo --list --json "$(uri "$S")" >"$T/named-list.json" 2>&1; then
    check_eq "-e vm1: --list names" "['vm1']" \
        "$(json_get "$T/named-list.json" "[e['export-name'] for e in j['exports']]")"
else
    fail "nbdinfo --list on -e vm1 failed: $(cat "$T/named-list.json")"
fi
stop_server "$SERVER_PID"

# --- config file with two exports: --list, names, descriptions ------------
S=$T/cfg.sock
cat >"$T/two.conf" <<EOF
[server]
listen = unix:$S

[export ""]
description = first
backend = memory size=64M

[export vm1]
description = second disk
filter = offset offset=1M range=8M
backend = memory size=64M
EOF
if try_start_config_server "$T/two.conf" "$S"; then
    if t nbdinfo --list --json "$(uri "$S")" >"$T/list.json" 2>"$T/list.err"; then
        check_eq "--list: export names" "['', 'vm1']" \
            "$(json_get "$T/list.json" "sorted(e['export-name'] for e in j['exports'])")"
        check_eq "--list: descriptions" "{'': 'first', 'vm1': 'second disk'}" \
            "$(json_get "$T/list.json" "dict(sorted((e['export-name'], e.get('description')) for e in j['exports']))")"
        check_eq "--list: sizes" "{'': 67108864, 'vm1': 8388608}" \
            "$(json_get "$T/list.json" "dict(sorted((e['export-name'], e.get('export-size')) for e in j['exports']))")"
    else
        fail "nbdinfo --list failed: $(cat "$T/list.err")"
    fi
    t nbdinfo --list "$(uri "$S")" >"$T/list.txt" 2>&1 || fail "nbdinfo --list (text) failed"
    check "--list text shows export=\"vm1\"" grep -q 'export="vm1"' "$T/list.txt"
    check "--list text shows description: second disk" grep -q 'description: second disk' "$T/list.txt"
    if info_json "$T/vm1.json" "$(uri "$S" vm1)"; then
        check_eq "nbd+unix:///vm1: size" 8388608 "$(e0 "$T/vm1.json" "['export-size']")"
        check_eq "nbd+unix:///vm1: description" "second disk" "$(e0 "$T/vm1.json" "['description']")"
    fi
    # command-line mode hands any name the one export (nbdkit habit); with a
    # config file the names are exact
    if t nbdinfo --no-content "$(uri "$S" no-such-export)" >"$T/nosuch.out" 2>&1; then
        fail "nbdinfo on an export name not in the config succeeded"
    else
        pass "unknown export name is refused"
    fi
    stop_server "$SERVER_PID"
    check_eq "config server exit status after SIGTERM" 0 "$STOP_RC"
fi

# --- nbdinfo --list with 1,000 exports ---------------------------------------
# nbdinfo sends two options per export after LIST; a fixed bound of 256
# options once cut it off at export 127 (nbdkit lists 200).
S=$T/many.sock
{
    printf '[server]\nlisten = unix:%s\n' "$S"
    for i in $(seq 0 999); do
        printf '[export e%d]\nbackend = null size=1M\n' "$i"
    done
} >"$T/many.ini"
start_config_server "$T/many.ini" "$S"
if t nbdinfo --list --json "nbd+unix:///?socket=$S" >"$T/many.json" 2>"$T/many.err"; then
    n=$(/usr/bin/python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["exports"]))' "$T/many.json")
    check_eq "nbdinfo --list: every one of 1,000 exports" 1000 "$n"
else
    fail "nbdinfo --list with 1,000 exports failed: $(tail -3 "$T/many.err")"
fi
stop_server "$SERVER_PID"

finish
