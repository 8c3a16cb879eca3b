#!/usr/bin/env bash
# The shipped (musl) binary is static: no ELF interpreter, no NEEDED
# libraries; it runs (--version exits 0) and serves a maximum-size request
# (musl's small default thread stacks).
#
# A dynamic binary (the glibc build) is skipped (77) unless
# NBD_REQUIRE_STATIC=1, which turns it into a failure.
. "$(dirname "$0")/lib.sh"
require_layer memory
require_tool readelf

req=${NBD_REQUIRE_STATIC:-}
[ "$req" = 0 ] && req=

if [ "$(head -c 4 "$NBDSTACK" | od -An -c | tr -d ' ')" != '177ELF' ]; then
    [ -n "$req" ] && die "NBD_REQUIRE_STATIC is set but $NBDSTACK is not an ELF file"
    skip "$NBDSTACK is not an ELF binary"
fi

desc=$(file -b "$NBDSTACK" 2>/dev/null || echo "file(1) unavailable")
dynamic=
if readelf -l "$NBDSTACK" 2>/dev/null | grep -q interpreter; then dynamic=1; fi
case $desc in *"dynamically linked"*) dynamic=1 ;; esac
if [ -n "$dynamic" ]; then
    [ -n "$req" ] && die "NBD_REQUIRE_STATIC is set but $NBDSTACK is dynamic: $desc"
    skip "$NBDSTACK is dynamically linked (not the musl build): $desc"
fi

if readelf -l "$NBDSTACK" | grep -q interpreter; then
    fail "program headers name an interpreter"
else
    pass "no ELF interpreter"
fi
needed=$(readelf -d "$NBDSTACK" 2>/dev/null | grep NEEDED)
check_eq "no NEEDED shared libraries" "" "$needed"
case $desc in
    *"statically linked"*|*"static-pie linked"*) pass "file(1): $desc" ;;
    "file(1) unavailable") log "file(1) not installed; relied on readelf" ;;
    *) fail "file(1) does not call it static: $desc" ;;
esac

if t "$NBDSTACK" --version >"$T/version.out" 2>&1; then
    pass "--version exits 0: $(head -1 "$T/version.out")"
    check "--version prints something" test -s "$T/version.out"
else
    fail "--version failed: $(head -5 "$T/version.out")"
fi

# serve one maximum-size request each way
if /usr/bin/python3 -c 'import nbd' 2>/dev/null; then
    S=$T/s.sock
    start_server "$S" memory size=64M
    out=$(nbdsh -u "$(uri "$S")" -c '
import os
d = os.urandom(32 << 20)
h.pwrite(d, 1 << 20)
print(h.pread(32 << 20, 1 << 20) == d)' 2>&1)
    check_eq "static binary serves a 32 MiB write and read" True "$out"
    stop_server "$SERVER_PID"
    check_eq "exit status after SIGTERM" 0 "$STOP_RC"
else
    log "python3-libnbd missing: skipped the serving check"
fi

finish
