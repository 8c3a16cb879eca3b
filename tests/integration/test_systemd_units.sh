#!/usr/bin/env bash
# contrib/systemd/nbdstack.socket and nbdstack.service: systemd-analyze
# verify finds nothing to say about them (skipped where systemd-analyze
# is not installed), and they keep the promises docs/config.md makes:
# Type=notify, a dynamic user, the hardening, LimitNOFILE above the
# default max-connections, a TimeoutStopSec for a write-back.
. "$(dirname "$0")/lib.sh"

U=$SRCDIR/contrib/systemd
for f in nbdstack.socket nbdstack.service; do
    [ -f "$U/$f" ] || die "$U/$f is missing"
done
svc=$U/nbdstack.service

# key VALUE...: the service sets key to exactly one of these values
has() {
    local key=$1 v; shift
    v=$(sed -n "s/^$key=//p" "$svc" | tail -n 1)
    for want in "$@"; do [ "$v" = "$want" ] && { pass "$key=$v"; return; }; done
    fail "$key is '$v', expected one of: $*"
}
has Type notify
has DynamicUser yes
has ProtectSystem strict
has PrivateTmp yes
has NoNewPrivileges yes
has DevicePolicy closed
check "DeviceAllow lists block devices" grep -q '^DeviceAllow=block-' "$svc"
check "ReadWritePaths for images" grep -q '^ReadWritePaths=' "$svc"
nofile=$(sed -n 's/^LimitNOFILE=//p' "$svc")
check "LimitNOFILE ($nofile) above the default max-connections (1024)" \
    test "${nofile:-0}" -gt 2048
stop=$(sed -n 's/^TimeoutStopSec=//p' "$svc")
check "TimeoutStopSec ($stop) is minutes, not the default 90s" \
    grep -Eq '^[0-9]+min$|^infinity$' <<<"$stop"
check "the socket listens on the NBD port" \
    grep -q '^ListenStream=10809$' "$U/nbdstack.socket"

command -v systemd-analyze >/dev/null 2>&1 || {
    log "systemd-analyze not installed: skipping verify"; finish; }
# ExecStart must name an executable that exists: point it at this build.
cp "$U/nbdstack.socket" "$U/nbdstack.service" "$T/"
sed -i "s|^ExecStart=[^ ]*|ExecStart=$NBDSTACK|" "$T/nbdstack.service"
out=$(cd "$T" && SYSTEMD_LOG_LEVEL=notice t systemd-analyze verify --man=no \
          "$T/nbdstack.socket" "$T/nbdstack.service" 2>&1)
rc=$?
check_eq "systemd-analyze verify exits 0" 0 "$rc"
check_eq "systemd-analyze verify has nothing to say" "" "$out"
# and it would say something about a broken unit (the check is real)
printf '[Service]\nType=bogus\nExecStart=%s\n' "$NBDSTACK" >"$T/bad.service"
out=$(cd "$T" && t systemd-analyze verify --man=no "$T/bad.service" 2>&1)
check "systemd-analyze complains about a bad unit" grep -q bogus <<<"$out"

finish
