#!/usr/bin/env bash
# --check-config means it: every export's stack is opened as a connection
# would open it (an offset window beyond the disk, a missing partition, a
# kept cow overlay made for another disk are found), and user, group, the
# pidfile's directory and the listen addresses are checked; each problem
# is reported as FILE:LINE and the exit status is non-zero.  Beside a live
# server using the same cow overlay and listen address, a good config
# still checks OK (overlay read without the lock, addresses only parsed),
# and a missing overlay is not created by the check.  Also: did-you-mean
# for typos, --help pointing at the manual pages, --list marking the
# bare-value keys.
. "$(dirname "$0")/lib.sh"
require_layer memory offset partition cow file
require_tool nbdinfo

MiB=$((1 << 20))
S=$T/live.sock

# check_fails FILE 'LINE:WORD' ...  exit non-zero, no crash, and for each
# spec a line "FILE:LINE:" that mentions WORD.
check_fails() {
    local f=$1 spec line word; shift
    t "$NBDSTACK" --check-config "$f" >"$T/check.out" 2>&1
    local rc=$?
    if [ "$rc" -eq 0 ]; then
        fail "--check-config $(basename "$f") exited 0; output: $(cat "$T/check.out")"
    elif [ "$rc" -ge 124 ]; then
        fail "--check-config $(basename "$f") timed out or crashed (status $rc)"
    else
        pass "--check-config $(basename "$f") exits non-zero ($rc)"
    fi
    for spec in "$@"; do
        line=${spec%%:*}; word=${spec#*:}
        if grep -F "$f:$line:" "$T/check.out" | grep -qiF -- "$word"; then
            pass "$(basename "$f"): line $line reports '$word'"
        else
            fail "$(basename "$f"): no '$f:$line:' line with '$word'; output:
$(sed 's/^/    /' "$T/check.out")"
        fi
    done
}

# --- problems found only when a client connects, or when the server starts --
/usr/bin/python3 "$(dirname "$0")/mkpart.py" "$T/part.img" $((4 * MiB)) ||
    die "mkpart.py failed"

cat >"$T/bad.conf" <<EOF
[server]
listen = unix:$T/nodir/sock
user = nbdstack-no-such-user
group = nbdstack-no-such-group
pidfile = $T/nodir/nbdstack.pid

[export window]
filter = offset offset=60M range=8M
backend = memory size=64M

[export nopart]
filter = partition 3
backend = file file=$T/part.img
EOF
check_fails "$T/bad.conf" "2:listen" "3:nbdstack-no-such-user" \
    "4:nbdstack-no-such-group" "5:pidfile" "7:window" "11:nopart"
check "bad.conf: the offset filter says why" \
    grep -q "offset.*beyond" "$T/check.out"
check "bad.conf: the partition filter says why" \
    grep -qi "partition 3" "$T/check.out"

# A numeric user and group are accepted (the server takes ids too).
cat >"$T/numeric.conf" <<EOF
[server]
listen = unix:$T/numeric.sock
user = 0
group = 0
pidfile = $T/numeric.pid

[export ""]
backend = memory 1M
EOF
t "$NBDSTACK" --check-config "$T/numeric.conf" >"$T/numeric.out" 2>&1
check_eq "numeric user/group: exit status ($(cat "$T/numeric.out"))" 0 "$?"
check "the check wrote no pidfile" test ! -e "$T/numeric.pid"

# --- a kept cow overlay ------------------------------------------------------
cat >"$T/live.conf" <<EOF
[server]
listen = unix:$S

[export ""]
filter = cow overlay=$T/live.cow
backend = memory size=1M
EOF
# A missing overlay is not created by the check.
t "$NBDSTACK" --check-config "$T/live.conf" >"$T/new.out" 2>&1
check_eq "new overlay: exit status ($(cat "$T/new.out"))" 0 "$?"
check "the check did not create the overlay" test ! -e "$T/live.cow"

# The same overlay for a disk of another size: found by opening the stack.
sed "s/size=1M/size=2M/" "$T/live.conf" >"$T/other-size.conf"

if try_start_config_server "$T/live.conf" "$S"; then
    # The first connection writes the overlay's header (for 1 MiB).
    t nbdinfo --size "$(uri "$S")" >"$T/size.out" 2>&1
    check_eq "live server size" 1048576 "$(cat "$T/size.out")"
    # Beside the live server, holding the overlay's lock and the socket.
    t "$NBDSTACK" --check-config "$T/live.conf" >"$T/live.out" 2>&1
    check_eq "beside a live server: exit status ($(cat "$T/live.out"))" 0 "$?"
    check "beside a live server: prints OK" grep -q ": OK" "$T/live.out"
    check "the live server still serves" t nbdinfo --size "$(uri "$S")"
    stop_server
    check_eq "live server exit status" 0 "$STOP_RC"
fi
check_fails "$T/other-size.conf" "4:cow"
check "other-size.conf: the cow filter says why" \
    grep -qF "made for a disk of 1048576 bytes" "$T/check.out"

printf 'not an overlay, but long enough to have a header ....%.0s' \
    $(seq 100) >"$T/junk.cow"
sed "s|$T/live.cow|$T/junk.cow|" "$T/live.conf" >"$T/junk.conf"
check_fails "$T/junk.conf" "5:not an nbdstack cow overlay"

# --- did you mean ------------------------------------------------------------
cat >"$T/typo.conf" <<EOF
[server]
listen = unix:$T/typo.sock
thraeds = 4

[export ""]
descripton = typo
filter = offste 1M
backend = memory size=64M rnage=1
EOF
check_fails "$T/typo.conf" "3:did you mean 'threads'" \
    "6:did you mean 'description'" "7:did you mean 'offset'" \
    "8:unknown key 'rnage'"
t "$NBDSTACK" -U "$T/x.sock" --filter offste memory 1M >"$T/cl.out" 2>&1
check "command line: did you mean 'offset'" \
    grep -qF "unknown filter 'offste' (did you mean 'offset'?; known:" "$T/cl.out"
t "$NBDSTACK" -U "$T/x.sock" --filter offset memory 1M ofset=4K >"$T/cl.out" 2>&1
check "command line: did you mean for a key" \
    grep -qF "unknown key 'ofset' (did you mean 'offset'?;" "$T/cl.out"
t "$NBDSTACK" -U "$T/x.sock" memroy 1M >"$T/cl.out" 2>&1
check "command line: did you mean for a backend" \
    grep -qF "unknown backend 'memroy' (did you mean 'memory'?;" "$T/cl.out"

# --- --help and --list -------------------------------------------------------
t "$NBDSTACK" --help >"$T/help.out" 2>&1
for m in "nbdstack(1)" "nbdstack.conf(5)" "nbdstack-filters(7)" \
         "nbdstack-backends(7)" "--list"; do
    check "--help names $m" grep -qF -- "$m" "$T/help.out"
done
t "$NBDSTACK" --list >"$T/list.out" 2>&1
check "--list marks memory's size as the bare value" \
    grep -qE '^ +size=<size> \(bare value\)' "$T/list.out"
check "--list marks partition's bare value" \
    grep -qE '^ +partition=<uint> \(bare value\)' "$T/list.out"

# --- log and the nbd service --------------------------------------------------
printf '[server]\nlog = sometimes\nlisten = tcp:127.0.0.1:nbd\n[export x]\nbackend = memory size=1M\n' >"$T/log.ini"
t "$NBDSTACK" --check-config "$T/log.ini" >"$T/log.out" 2>&1
check_eq "a bad log value fails the check" 1 "$?"
check "the bad log value is reported at its line" \
    grep -qF "log.ini:2: log: invalid value 'sometimes'" "$T/log.out"
check "port nbd resolves (10809 without /etc/services)" \
    sh -c "! grep -q 'log.ini:3' '$T/log.out'"

finish
