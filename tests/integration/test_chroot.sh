#!/usr/bin/env bash
# The container promise (contrib/Containerfile, FROM scratch), tested
# without a container engine: the static binary serves from a root that
# holds nothing but itself, its config and a disk image -- no libc, no
# /etc/services, no /etc/passwd, no /var/tmp, no /dev/log -- as a numeric
# non-root user:
#   - a memory export, and the cow and cache filters with TMPDIR set
#     (their temporary files go there);
#   - without TMPDIR (and so no /var/tmp) the cow export fails with a
#     clear error, not a crash;
#   - `-p nbd` without /etc/services listens on 10809 (in a network
#     namespace of its own, so no other test's port is in the way);
#   - the shipped contrib/container.conf is a valid config.
# Needs root (chroot, unshare) and the static musl binary; skips (77)
# otherwise.
. "$(dirname "$0")/lib.sh"
require_layer memory file cow cache
require_tool chroot readelf
[ "$(id -u)" = 0 ] || skip "needs root for chroot"
if readelf -l "$NBDSTACK" 2>/dev/null | grep -q interpreter; then
    skip "$NBDSTACK is dynamically linked: the chroot holds no libc"
fi
require_nbd_module

NOBODY=65534
CHROOT=$(command -v chroot)
R=$T/root
mkdir -p "$R/run" "$R/tmp"
chown "$NOBODY:$NOBODY" "$R/run" "$R/tmp"
cp "$NBDSTACK" "$R/nbdstack"
truncate -s 8M "$R/disk.img"
printf 'base' | dd of="$R/disk.img" conv=notrunc status=none
chown "$NOBODY:$NOBODY" "$R/disk.img"
cat >"$R/nbdstack.conf" <<'CONF'
[server]
listen = unix:/run/s.sock

[export ""]
backend = memory size=8M

[export cow]
filter = cow
backend = file file=/disk.img

[export cache]
filter = cache
backend = file file=/disk.img
CONF
S=$R/run/s.sock

# start_chroot ENV... -- ARGS...   the server in $R as nobody
start_chroot() {
    local envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    _SERVER_N=$((_SERVER_N + 1))
    SERVER_LOG=$T/server-$_SERVER_N.log
    rm -f "$S"
    "${SPAWN[@]}" env -i "${envs[@]}" "$CHROOT" --userspec=$NOBODY:$NOBODY "$R" \
        /nbdstack "$@" >"$SERVER_LOG" 2>&1 </dev/null &
    SERVER_PID=$!
    SERVER_PIDS+=("$SERVER_PID")
}

# --- memory, cow and cache with TMPDIR ---
start_chroot TMPDIR=/tmp -- -c /nbdstack.conf
wait_socket "$S" "$SERVER_PID" "$SERVER_LOG" || die "server did not start in the chroot"
out=$(nbdsh -u "$(uri "$S")" -c '
h.pwrite(b"x" * 4096, 0)
print(h.pread(4096, 0) == b"x" * 4096)' 2>&1)
check_eq "memory export serves from the empty root" True "$out"
out=$(nbdsh -u "$(uri "$S" cow)" -c '
print(bytes(h.pread(4, 0)))
h.pwrite(b"cow!", 0)
print(bytes(h.pread(4, 0)))' 2>&1)
check_eq "cow export: reads the image, writes to its overlay in TMPDIR" \
    "b'base'
b'cow!'" "$out"
check_eq "cow left the image alone" base "$(head -c 4 "$R/disk.img")"
out=$(nbdsh -u "$(uri "$S" cache)" -c '
h.pwrite(b"seen", 4096)
h.flush()
print(bytes(h.pread(4, 4096)), bytes(h.pread(4, 0)))' 2>&1)
check_eq "cache export serves reads and writes" "b'seen' b'base'" "$out"
check_eq "no file left in the root but ours" \
    "disk.img nbdstack nbdstack.conf run tmp" "$(ls "$R" | tr '\n' ' ' | sed 's/ $//')"
stop_server "$SERVER_PID"
check_eq "exit status after SIGTERM" 0 "$STOP_RC"
check_eq "written through the cache (writethrough or written back at exit)" \
    seen "$(dd if="$R/disk.img" bs=1 skip=4096 count=4 status=none)"

# --- without TMPDIR there is no /var/tmp: a clear error ---
start_chroot -- -c /nbdstack.conf
for i in $(seq 100); do server_alive || break; [ -S "$S" ] && break; sleep 0.1; done
if [ -S "$S" ] && server_alive; then
    # the overlay may be made per connection: then the client is refused
    out=$(nbdsh -u "$(uri "$S" cow)" -c 'print("served")' 2>&1)
    check "cow without a temporary directory does not serve" \
        test "$out" != served
    stop_server "$SERVER_PID"
else
    stop_server "$SERVER_PID"
    check "cow without TMPDIR: non-zero exit, not a crash ($STOP_RC)" \
        test "$STOP_RC" -ge 1 -a "$STOP_RC" -lt 128
fi
check "cow without TMPDIR names the directory" grep -q /var/tmp "$SERVER_LOG"

# --- the shipped container config ---
cp "$SRCDIR/contrib/container.conf" "$R/container.conf"
out=$(env -i "$CHROOT" --userspec=$NOBODY:$NOBODY "$R" /nbdstack \
          --check-config /container.conf 2>&1)
check_eq "contrib/container.conf passes --check-config" \
    "/container.conf: OK" "$out"

# --- -p nbd without /etc/services: port 10809 ---
if ! command -v unshare >/dev/null || ! command -v ip >/dev/null ||
   ! unshare -n true 2>/dev/null; then
    log "no network namespace here: skipped -p nbd"
else
    SERVER_LOG=$T/port.log
    out=$(timeout -k 2 30 unshare -n bash -c '
        ip link set lo up || exit 1
        env -i "$3" --userspec='$NOBODY:$NOBODY' "$1" /nbdstack -p nbd \
            memory size=1M >"$2" 2>&1 </dev/null &
        pid=$!
        for i in $(seq 100); do
            nbdinfo --size nbd://127.0.0.1:10809 2>/dev/null && break
            kill -0 $pid 2>/dev/null || break
            sleep 0.1
        done
        kill -TERM $pid; wait $pid; echo "rc=$?"' _ "$R" "$SERVER_LOG" "$CHROOT" 2>&1)
    check_eq "-p nbd serves on 10809 without /etc/services" \
        "1048576
rc=0" "$out"
fi

finish
