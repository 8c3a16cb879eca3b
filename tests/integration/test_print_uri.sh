#!/usr/bin/env bash
# --print-uri prints the URI of each listener on stdout once serving, and a
# client connects with it: a Unix socket (nbd+unix:///?socket=), an export
# name that needs percent-encoding, TCP on an address and on all
# addresses (localhost); the IPv4 and IPv6 sockets of "all addresses" give
# one URI; the log has a "serving URI" line for each even without it.
. "$(dirname "$0")/lib.sh"
require_layer memory
require_tool nbdinfo

# start_uri_server OUT [ARGS...]: the server with stdout in OUT, stderr in
# OUT.err; waits (bounded) until OUT has a line.
start_uri_server() {
    local out=$1 i; shift
    "${SPAWN[@]}" "$NBDSTACK" "$@" >"$out" 2>"$out.err" </dev/null &
    SERVER_PID=$!
    SERVER_PIDS+=("$SERVER_PID")
    for i in $(seq 100); do
        [ -s "$out" ] && return 0
        server_alive || { fail "server exited: $(cat "$out.err")"; return 1; }
        sleep 0.1
    done
    fail "no URI printed within 10s: $*"
    return 1
}

# --- Unix socket --------------------------------------------------------
S=$T/u.sock
if start_uri_server "$T/u.out" --print-uri -U "$S" memory 1M; then
    check_eq "unix URI" "nbd+unix:///?socket=$S" "$(cat "$T/u.out")"
    check_eq "nbdinfo with it" 1048576 "$(t nbdinfo --size "$(cat "$T/u.out")")"
    check "log has the URI" grep -q "serving nbd+unix:///?socket=$S" "$T/u.out.err"
    stop_server
fi

# --- export name percent-encoded ----------------------------------------
if start_uri_server "$T/e.out" --print-uri -U "$T/e.sock" -e "my disk/1" memory 2M; then
    check_eq "encoded name" "nbd+unix:///my%20disk/1?socket=$T/e.sock" "$(cat "$T/e.out")"
    check_eq "nbdinfo with the encoded name" 2097152 \
        "$(t nbdinfo --size "$(cat "$T/e.out")")"
    stop_server
fi

# A free TCP port (the kernel's choice, released for the server).
free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- TCP -------------------------------------------------------------------
P=$(free_port)
if start_uri_server "$T/t.out" --print-uri -i 127.0.0.1 -p "$P" memory 1M; then
    u=$(cat "$T/t.out")
    check_eq "tcp URI" "nbd://127.0.0.1:$P/" "$u"
    check_eq "nbdinfo over TCP" 1048576 "$(t nbdinfo --size "$u")"
    stop_server
fi

# --- all addresses: one URI, localhost ----------------------------------
P=$(free_port)
if start_uri_server "$T/a.out" --print-uri -U "$T/a.sock" -p "$P" memory 1M; then
    sleep 0.3                   # every line is out together; be sure
    check_eq "unix, then one line for all addresses" \
        "nbd+unix:///?socket=$T/a.sock nbd://localhost:$P/" "$(echo $(cat "$T/a.out"))"
    stop_server
fi

# --- without --print-uri: nothing on stdout, URI in the log ---------------
start_server "$T/q.sock" memory 1M
check "log line without --print-uri" grep -q "serving nbd+unix:///?socket=$T/q.sock" "$SERVER_LOG"
if grep -qx "nbd+unix:///?socket=$T/q.sock" "$SERVER_LOG"; then
    fail "a bare URI line without --print-uri"
else
    pass "no bare URI line without --print-uri"
fi
stop_server

finish
