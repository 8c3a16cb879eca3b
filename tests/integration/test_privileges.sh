#!/bin/sh
# -u/-g drop root after binding (fault 5 of the deployment issue): a
# numeric id is taken, and the Unix socket and pidfile made as root in a
# directory the new user cannot write to are still removed at SIGTERM.
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || skip "needs root to drop privileges"

dir=$T/priv
mkdir -p "$dir"
chmod 755 "$dir"
sock=$dir/s.sock
pid=$dir/nbdstack.pid

# $1...: -u/-g arguments.  Starts, checks it serves, SIGTERMs, checks
# that nothing is left behind.
run_as() {
  "$NBDSTACK" -U "$sock" -P "$pid" "$@" memory size=1M \
    >"$dir/log" 2>&1 &
  p=$!
  wait_socket "$sock" "$p" "$dir/log" || { cat "$dir/log"; die "no socket ($*)"; }
  [ -f "$pid" ] || fail "no pidfile ($*)"
  t nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null ||
    { cat "$dir/log"; fail "nbdinfo failed ($*)"; }
  uid=$(awk '/^Uid:/ { print $2 }' "/proc/$p/status")
  [ "$uid" = 65534 ] || fail "running as uid $uid, not 65534 ($*)"
  kill -TERM "$p"
  wait "$p" || { cat "$dir/log"; fail "exit status $? ($*)"; }
  [ ! -e "$sock" ] || fail "socket left behind after SIGTERM ($*)"
  [ ! -e "$pid" ] || fail "pidfile left behind after SIGTERM ($*)"
  pass "-u/-g $*: socket and pidfile removed"
}

run_as -u nobody
run_as -u 65534 -g 65534

# A numeric user with no passwd entry needs its group: a clear error.
if getent passwd 54321 >/dev/null; then :; else
  if "$NBDSTACK" -U "$dir/x.sock" -u 54321 memory size=1M \
       >"$dir/log2" 2>&1; then
    fail "-u 54321 without -g started"
  fi
  grep -q "give its group too" "$dir/log2" || { cat "$dir/log2"; fail "no clear error for -u 54321"; }
  [ ! -e "$dir/x.sock" ] || fail "x.sock left behind after a failed start"
  pass "-u with an unknown numeric id asks for -g"
fi

finish
