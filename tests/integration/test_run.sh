#!/usr/bin/env bash
# --run (nbdkit's captive mode) and -U -: the command sees $uri, $nbd,
# $unixsocket / $port and $exportname, can use the export through them,
# and nbdstack exits with the command's status once it ends (128 + signal
# for a killed command); the private directory of -U - is gone afterwards;
# a SIGTERM to nbdstack passes on to the command.
. "$(dirname "$0")/lib.sh"
require_layer memory null
require_tool nbdinfo

# --- -U - with a command that reads the size and prints its environment --
out=$(t "$NBDSTACK" -U - memory 1M \
        --run 'nbdinfo --size "$uri" && echo "nbd=$nbd" &&
               echo "sock=$unixsocket" && echo "name=[$exportname]"' 2>"$T/run1.err")
rc=$?
check_eq "--run exit status of a command that succeeds" 0 "$rc"
check_eq "the command reached the export through \$uri" 1048576 "$(sed -n 1p <<<"$out")"
sock=$(sed -n 's/^sock=//p' <<<"$out")
case $sock in
    /tmp/nbdstack*/socket) pass "-U - made a private socket ($sock)" ;;
    *) fail "-U -: unexpected \$unixsocket '$sock'" ;;
esac
check_eq "\$nbd equals \$uri" "nbd=nbd+unix:///?socket=$sock" "$(sed -n 2p <<<"$out")"
check_eq "\$exportname of the default export" "name=[]" "$(sed -n 4p <<<"$out")"
if [ -n "$sock" ] && [ -e "$(dirname "$sock")" ]; then
    fail "-U -: $(dirname "$sock") still exists after exit"
else
    pass "-U -: the private directory is removed at exit"
fi

# --- the command's status is nbdstack's, a signal gives 128 + signal ------
t "$NBDSTACK" -U - null size=1M --run 'exit 7' 2>/dev/null
check_eq "--run exit status 7 passed on" 7 "$?"
t "$NBDSTACK" -U - null size=1M --run 'kill -9 $$' 2>/dev/null
check_eq "--run killed by SIGKILL gives 137" 137 "$?"

# --- an export name that needs percent-encoding, on a named socket --------
out=$(t "$NBDSTACK" -U "$T/named.sock" -e 'a b/c' memory 64K \
        --run 'echo "$uri"; nbdinfo --size "$uri"' 2>"$T/run2.err")
check_eq "\$uri of export 'a b/c'" \
    "nbd+unix:///a%20b/c?socket=$T/named.sock" "$(sed -n 1p <<<"$out")"
check_eq "nbdinfo through the encoded \$uri" 65536 "$(sed -n 2p <<<"$out")"

# --- the longest export name, every byte percent-encoded (12000 chars) ----
long=$(printf 'é%.0s' $(seq 2000))
out=$(t "$NBDSTACK" -U - -e "$long" memory 64K \
        --run 'echo ${#uri}; nbdinfo --size "$uri"' 2>/dev/null)
check_eq "\$uri of a 4000-byte name (length, then nbdinfo)" \
    "$(printf '%s\n%s' 12046 65536)" "$out"

# --- nbdkit's memory allocator key: sparse works, others are refused ----
out=$(t "$NBDSTACK" -U - memory 1M allocator=sparse --run 'nbdinfo --size "$uri"' 2>/dev/null)
check_eq "memory allocator=sparse" 1048576 "$out"
out=$(t "$NBDSTACK" -U - memory 1M allocator=zstd --run true 2>&1)
rc=$?
check "allocator=zstd refused (exit $rc): $out" \
    grep -q "allocator: invalid value 'zstd' (one of: sparse malloc)" <<<"$out"

# --- TCP: $port and an nbd:// URI ------------------------------------------
port=$((20000 + RANDOM % 20000))
out=$(t "$NBDSTACK" -i 127.0.0.1 -p "$port" memory 128K \
        --run 'echo "$uri $port"; nbdinfo --size "$uri"' 2>"$T/run3.err")
if grep -q "Address already in use" "$T/run3.err"; then
    log "port $port busy: TCP case skipped"
else
    check_eq "TCP \$uri and \$port" "nbd://127.0.0.1:$port/ $port" \
        "$(sed -n 1p <<<"$out")"
    check_eq "nbdinfo over TCP via \$uri" 131072 "$(sed -n 2p <<<"$out")"
fi

# --- SIGTERM to nbdstack ends the command too -------------------------------
"$NBDSTACK" -U - memory 1M --run 'exec sleep 30' 2>"$T/run4.err" &
pid=$!
sleep 0.5
kill -TERM "$pid"
t0=$SECONDS
wait "$pid"
rc=$?
check "SIGTERM ends nbdstack and its command within 5 s" \
    test $((SECONDS - t0)) -le 5
check_eq "status after SIGTERM: the command's (128 + 15)" 143 "$rc"

finish
