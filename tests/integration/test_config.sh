#!/usr/bin/env bash
# Config file mode (nbdstack only): a config with several exports serves
# each one with its description and stack (offset filter size == range, the
# offset really shifts the bytes in the backing file, exports are separate);
# --check-config accepts a good file without listening, and on bad files
# exits non-zero, reports EVERY error as FILE:LINE: naming the culprit, and
# does not listen; -c with a bad file does not start; --list names the
# backends and filters with their keys.
. "$(dirname "$0")/lib.sh"
require_layer memory offset null file
require_tool nbdinfo
require_nbd_module

MiB=$((1 << 20))
S=$T/cfg.sock
truncate -s $((16 * MiB)) "$T/disk.img"

cat >"$T/good.conf" <<EOF
# nbdstack test configuration
[server]
listen = unix:$S

[export ""]
description = first
backend = memory size=64M

[export vm1]
description = second disk
filter = offset offset=1M range=8M
backend = memory size=64M

[export nothing]
description = null disk
backend = null size=1G

[export part]
description = window on a file
filter = offset offset=1M range=4M
backend = file file=$T/disk.img
EOF

# --- --check-config on the good file ---------------------------------------
t "$NBDSTACK" --check-config "$T/good.conf" >"$T/check-good.out" 2>&1
rc=$?
check_eq "--check-config good.conf exit status (output: $(head -c 300 "$T/check-good.out"))" 0 "$rc"
check "--check-config did not create the listen socket" test ! -e "$S"

# --- serving it -------------------------------------------------------------
if try_start_config_server "$T/good.conf" "$S"; then
    if t nbdinfo --list --json "$(uri "$S")" >"$T/list.json" 2>"$T/list.err"; then
        check_eq "--list: names" "['', 'nothing', 'part', 'vm1']" \
            "$(json_get "$T/list.json" "sorted(e['export-name'] for e in j['exports'])")"
        check_eq "--list: descriptions" \
            "{'': 'first', 'nothing': 'null disk', 'part': 'window on a file', 'vm1': 'second disk'}" \
            "$(json_get "$T/list.json" "dict(sorted((e['export-name'], e.get('description')) for e in j['exports']))")"
        check_eq "--list: sizes (vm1 and part are offset ranges)" \
            "{'': 67108864, 'nothing': 1073741824, 'part': 4194304, 'vm1': 8388608}" \
            "$(json_get "$T/list.json" "dict(sorted((e['export-name'], e.get('export-size')) for e in j['exports']))")"
    else
        fail "nbdinfo --list failed: $(cat "$T/list.err")"
    fi
    t nbdinfo --list "$(uri "$S")" >"$T/list.txt" 2>&1
    check "--list text names vm1 with its description" \
        grep -q -e 'export="vm1"' "$T/list.txt"
    check "--list text shows 'second disk'" grep -q 'description: second disk' "$T/list.txt"

    # The offset filter shifts by 1 MiB into the file; exports do not share data.
    nbdsh -u "$(uri "$S" part)" \
        -c 'h.pwrite(b"PART-AT-ZERO", 0)' \
        -c 'h.pwrite(b"PART-AT-END!", h.get_size() - 12)' -c 'h.flush()' ||
        fail "nbdsh write to export 'part' failed"
    check_eq "offset filter: byte 0 of 'part' is byte 1 MiB of the file" "PART-AT-ZERO" \
        "$(dd if="$T/disk.img" bs=1 skip=$MiB count=12 status=none)"
    check_eq "offset filter: last bytes of 'part' end at 5 MiB of the file" "PART-AT-END!" \
        "$(dd if="$T/disk.img" bs=1 skip=$((5 * MiB - 12)) count=12 status=none)"
    check_eq "offset filter: nothing written before the offset" 0 \
        "$(head -c $MiB "$T/disk.img" | tr -d '\0' | wc -c)"
    out=$(nbdsh -u "$(uri "$S" vm1)" -c 'h.pwrite(b"vm1 data", 0)' -c 'print(bytes(h.pread(8, 0)))' 2>&1)
    check_eq "vm1 read back" "b'vm1 data'" "$out"
    out=$(nbdsh -u "$(uri "$S")" -c 'print(bytes(h.pread(8, 0)))' 2>&1)
    check_eq "default export does not see vm1's data" "b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00'" "$out"
    out=$(nbdsh -u "$(uri "$S" nothing)" -c 'print(bytes(h.pread(4, 1 << 29)))' 2>&1)
    check_eq "null export reads zeros" "b'\\x00\\x00\\x00\\x00'" "$out"
    if t nbdinfo --no-content "$(uri "$S" vm2)" >/dev/null 2>&1; then
        fail "connecting to an export not in the config succeeded"
    else
        pass "unknown export name refused"
    fi
    stop_server "$SERVER_PID"
    check_eq "config server exit status after SIGTERM" 0 "$STOP_RC"
fi

# --- bad configs ------------------------------------------------------------
# expect_errors FILE 'LINE[-LINE2]:WORD' ...  --check-config must fail, print
# "FILE:LINE:" (LINE within the range) with WORD on that line for each, and
# not create the socket.
expect_errors() {
    local f=$1 spec lo hi word n found l; shift
    rm -f "$S"
    t "$NBDSTACK" --check-config "$f" >"$T/check.out" 2>&1
    local rc=$?
    if [ "$rc" -eq 0 ]; then
        fail "--check-config $(basename "$f") exited 0"
    elif [ "$rc" -ge 124 ]; then
        fail "--check-config $(basename "$f") timed out or crashed (status $rc)"
    else
        pass "--check-config $(basename "$f") exits non-zero ($rc)"
    fi
    check "--check-config $(basename "$f") did not listen" test ! -e "$S"
    for spec in "$@"; do
        word=${spec#*:}; n=${spec%%:*}; lo=${n%-*}; hi=${n#*-}
        found=
        for l in $(seq "$lo" "$hi"); do
            if grep -F "$f:$l:" "$T/check.out" | grep -qiF -- "$word"; then found=$l; break; fi
        done
        if [ -n "$found" ]; then
            pass "$(basename "$f"): error at line $found mentions '$word'"
        else
            fail "$(basename "$f"): no '$f:$n:' error mentioning '$word'; output was:
$(sed 's/^/    /' "$T/check.out")"
        fi
    done
}

# 1 error per file
hdr="[server]
listen = unix:$S
"
printf '%s\n[export a]\nfilter = nosuchfilter\nbackend = memory size=64M\n' "$hdr" >"$T/bad-filter.conf"
expect_errors "$T/bad-filter.conf" "5:nosuchfilter"
printf '%s\n[export b]\nfilter = offset offset=1M rnage=8M\nbackend = memory size=64M\n' "$hdr" >"$T/bad-key.conf"
expect_errors "$T/bad-key.conf" "5:rnage"
printf '%s\n[export c]\ndescription = no backend here\n' "$hdr" >"$T/no-backend.conf"
expect_errors "$T/no-backend.conf" "4-6:backend"
printf '%s\n[export d]\nbackend = memory size=lots\n' "$hdr" >"$T/bad-size.conf"
expect_errors "$T/bad-size.conf" "5:lots"
printf '%s\n[export e]\nbackend = nosuchbackend size=1M\n' "$hdr" >"$T/bad-backend.conf"
expect_errors "$T/bad-backend.conf" "5:nosuchbackend"
printf '%s\n[export f]\ndescriptoin = typo\nbackend = memory size=1M\n' "$hdr" >"$T/bad-export-key.conf"
expect_errors "$T/bad-export-key.conf" "5:descriptoin"
printf '%s\n[export g]\nbackend = memory\n' "$hdr" >"$T/missing-size.conf"
expect_errors "$T/missing-size.conf" "5:size"

# every error reported, not only the first
cat >"$T/bad-all.conf" <<EOF
# several errors; each one must be reported with its line
[server]
listen = unix:$S

[export a]
filter = nosuchfilter
backend = memory size=64M

[export b]
filter = offset offset=1M rnage=8M
backend = memory size=64M

[export c]
description = no backend here

[export d]
backend = memory size=lots

[export e]
descriptoin = typo in a key
backend = memory size=64M

[export f]
backend = nosuchbackend size=1M
EOF
expect_errors "$T/bad-all.conf" "6:nosuchfilter" "10:rnage" "13-16:backend" "17:lots" \
    "20:descriptoin" "24:nosuchbackend"

# -c with a bad file: no server
rm -f "$S"
t "$NBDSTACK" -c "$T/bad-all.conf" >"$T/run-bad.out" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -lt 124 ]; then pass "-c bad-all.conf exits non-zero ($rc)"
else fail "-c bad-all.conf: exit status $rc (want a prompt non-zero exit)"; fi
check "-c bad-all.conf did not listen" test ! -e "$S"
check "-c bad-all.conf reports FILE:LINE: errors" grep -qF "$T/bad-all.conf:6:" "$T/run-bad.out"

# --- --list --------------------------------------------------------------------
if t "$NBDSTACK" --list >"$T/list.out" 2>&1; then
    pass "--list exits 0"
else
    fail "--list failed: $(head -5 "$T/list.out")"
fi
for w in memory file null offset size range; do
    check "--list mentions '$w'" grep -qw -- "$w" "$T/list.out"
done
# each layer with its own keys: on the line that starts with the layer's
# name or on the next few lines (up to a blank line)
res=$(/usr/bin/python3 - "$T/list.out" <<'PY'
import re, sys
lines = open(sys.argv[1]).read().splitlines()
want = {"memory": ["size"], "file": ["file"], "null": ["size"], "offset": ["offset", "range"]}
bad = []
for name, keys in want.items():
    idx = [i for i, l in enumerate(lines) if re.match(r"^\W*(?:(?:backend|filter|plugin)s?\W+)?%s\b" % name, l)]
    if not idx:
        bad.append("no line starts with %s" % name)
        continue
    win = []
    for l in lines[idx[0]:idx[0] + 8]:
        if win and not l.strip():
            break
        win.append(l)
    text = "\n".join(win)
    first = win[0][re.match(r"^\W*(?:(?:backend|filter|plugin)s?\W+)?%s\b" % name, win[0]).end():]
    for k in keys:
        if not re.search(r"\b%s\b" % k, first + "\n" + "\n".join(win[1:])):
            bad.append("%s: key %s not listed" % (name, k))
print("; ".join(bad) or "ok")
PY
)
check_eq "--list shows memory(size) file(file) null(size) offset(offset, range)" ok "$res"

finish
