# Shared helpers for the nbdstack integration tests (bash).
#
# Source it first thing:   . "$(dirname "$0")/lib.sh"
#
# What it gives a test:
#   - a fresh temp dir $T (removed at exit), a trap that kills every server
#     the test started (by pid) and a watchdog that fails the test if it runs
#     longer than $TEST_DEADLINE seconds (default 55);
#   - start_server / start_config_server / stop_server / server_alive;
#   - soft assertions (check, check_eq, fail) that count failures and keep
#     going, so one run shows every broken behaviour; `finish` exits 1 if any
#     failed; `die` stops the test at once (for broken preconditions);
#   - require_tool / require_nbd_module (exit 77 when a client tool is
#     missing), require_layer (exit 77 when a layer the test uses is not
#     compiled into the server), uri, t (bounded client command), nbdsh
#     (Debian's python), json_get (via /usr/bin/python3).
#
# Environment (set by CTest): NBDSTACK = server binary, SRCDIR, BUILDDIR.

set -u -o pipefail

# Debian's clients first: the python3 first on PATH may lack the nbd module
# and /usr/bin/nbdsh runs "python3 -m nbd".
export PATH="/usr/bin:/bin:/usr/sbin:/sbin:$PATH"
export LC_ALL=C

TEST_NAME=$(basename "$0")
TEST_DEADLINE=${TEST_DEADLINE:-55}
FAILURES=0
SERVER_PIDS=()
BG_PIDS=()

log()  { printf '%s: %s\n' "$TEST_NAME" "$*" >&2; }
fail() { printf '%s: FAIL: %s\n' "$TEST_NAME" "$*" >&2; FAILURES=$((FAILURES + 1)); }
pass() { printf '%s: ok: %s\n' "$TEST_NAME" "$*" >&2; }
die()  { printf '%s: FATAL: %s\n' "$TEST_NAME" "$*" >&2; exit 1; }
skip() { printf '%s: SKIP: %s\n' "$TEST_NAME" "$*" >&2; exit 77; }

# check DESCRIPTION CMD...   run CMD; pass if it succeeds.
check() {
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what (command: $*)"; fi
}
# check_eq DESCRIPTION EXPECTED ACTUAL
check_eq() {
    if [ "$2" = "$3" ]; then pass "$1"
    else fail "$1: expected '$2', got '$3'"; fi
}

finish() {
    if [ "$FAILURES" -ne 0 ]; then
        printf '%s: %d check(s) FAILED\n' "$TEST_NAME" "$FAILURES" >&2
        exit 1
    fi
    printf '%s: all checks passed\n' "$TEST_NAME" >&2
    exit 0
}

require_tool() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || skip "required tool '$t' not installed"
    done
}

# require_layer NAME...   skip unless every filter or backend NAME is
# compiled into $NBDSTACK: a build may select any subset of the layers
# (-DNBD_FILTERS=... -DNBD_BACKENDS=...), and `--list` names those it has.
require_layer() {
    local have n
    have=$("$NBDSTACK" --list 2>/dev/null | awk '/^  [^ ]/ { print $1 }') ||
        die "$NBDSTACK --list failed"
    for n in "$@"; do
        grep -qx -- "$n" <<<"$have" ||
            skip "the $n layer is not compiled into $NBDSTACK"
    done
}

# disk_args SIZE   sets DISK_ARGS to the server arguments (after -U SOCK)
# of a blank disk of SIZE (a number, or 64M): a memory disk, or with
# NBD_TEST_STACK=deep the same disk through error (rate 0) -> delay (0) ->
# blocksize -> cache -> cow -> partition 1 over a file (as nbdtest.py).
_DISKS=0
disk_args() {
    local size
    size=$(numfmt --from=iec "$1") || die "disk_args: bad size $1"
    if [ "${NBD_TEST_STACK:-}" != deep ]; then
        DISK_ARGS=(memory "size=$size")
        return
    fi
    require_layer error delay blocksize cache cow partition file
    _DISKS=$((_DISKS + 1))
    /usr/bin/python3 "$SRCDIR/tests/integration/mkpart.py" \
        "$T/deep$_DISKS.img" "$size" || die "mkpart failed"
    DISK_ARGS=(--filter error --filter delay --filter blocksize
               --filter cache --filter cow --filter partition
               file "file=$T/deep$_DISKS.img" error-rate=0 delay-read=0
               partition=1)
}

[ -n "${NBDSTACK:-}" ] || die "NBDSTACK is not set (path of the server binary)"
[ -x "$NBDSTACK" ] || die "NBDSTACK=$NBDSTACK is not an executable file"
case $NBDSTACK in /*) ;; *) NBDSTACK=$(cd "$(dirname "$NBDSTACK")" && pwd)/$(basename "$NBDSTACK") ;; esac
SRCDIR=${SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

T=$(mktemp -d "${TMPDIR:-/tmp}/nbdstack-test.XXXXXX") || die "mktemp -d failed"

_lib_cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${BG_PIDS[@]}" "${SERVER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${BG_PIDS[@]}" "${SERVER_PIDS[@]}"; do
        # bounded: SIGKILL anything still alive after ~2 s
        local i
        for i in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    [ -n "${_WATCHDOG_PID:-}" ] && kill "$_WATCHDOG_PID" 2>/dev/null && wait "$_WATCHDOG_PID" 2>/dev/null
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ -z "${KEEP_TMP:-}" ]; then
        local f
        for f in "$T"/*.log; do
            [ -s "$f" ] || continue
            printf -- '--- last 20 lines of %s ---\n' "$f" >&2
            tail -n 20 "$f" | sed 's/^/    /' >&2
        done
    fi
    [ -z "${KEEP_TMP:-}" ] && rm -rf "$T"
    exit "$rc"
}
trap _lib_cleanup EXIT
trap 'log "interrupted"; exit 1' INT
trap 'log "TIMEOUT: test exceeded ${TEST_DEADLINE}s"; exit 1' TERM

# Watchdog: SIGTERM to the test shell at the deadline (the TERM trap fails
# the test and the EXIT trap still kills the servers).
# Its own sleep is killed with it, it holds no pipe of CTest's open, and it
# gives up as soon as the test shell is gone (no stray kill to a reused pid).
_lib_watchdog() {
    local sp='' i
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    for ((i = 0; i < TEST_DEADLINE; i++)); do
        sleep 1 & sp=$!
        wait "$sp"
        kill -0 $$ 2>/dev/null || exit 0
    done
    kill -TERM $$
    # bash runs the TERM trap only when its foreground command ends: end
    # the test's own child processes (listed by id) so that it does now.
    local p
    for p in $(ps -o pid= --ppid $$); do
        [ "$p" != "$BASHPID" ] && kill -TERM "$p" 2>/dev/null
    done
    exit 0
}
_lib_watchdog >/dev/null 2>&1 </dev/null &
_WATCHDOG_PID=$!

# Servers get SIGKILL if the test shell dies (e.g. CTest kills it on a
# timeout), so none is left behind.  setpriv execs: $! is the server's pid.
SPAWN=()
if command -v setpriv >/dev/null 2>&1; then SPAWN=(setpriv --pdeathsig KILL --); fi

# python3-libnbd (the nbd module of Debian's python), for nbdsh.
require_nbd_module() {
    /usr/bin/python3 -c 'import nbd' 2>/dev/null ||
        skip "python3-libnbd is not installed (/usr/bin/python3 cannot import nbd)"
}

# t CMD...  run a client command with a bound on its time (default 30 s).
# (t and nbdsh are functions: in the background $! is a subshell; start
# background clients with timeout directly so that kill reaches them.)
t() { timeout -k 2 "${CLIENT_TIMEOUT:-30}" "$@"; }

# nbdsh with Debian's python, whatever python3 is first on PATH.
nbdsh() { timeout -k 2 "${CLIENT_TIMEOUT:-30}" /usr/bin/python3 -m nbd "$@"; }

uri() {   # uri SOCK [EXPORT]
    printf 'nbd+unix:///%s?socket=%s' "${2:-}" "$1"
}

# sock_accepts SOCK   true if a connection to the Unix socket succeeds
sock_accepts() {
    /usr/bin/python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])' "$1" 2>/dev/null
}

# wait_socket SOCK PID LOG   poll up to ~10 s for SOCK to accept.
wait_socket() {
    local sock=$1 pid=$2 logf=$3 i
    for i in $(seq 100); do
        if [ -S "$sock" ] && sock_accepts "$sock"; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null
            log "server exited early (status $?); log: $logf"
            return 1
        fi
        sleep 0.1
    done
    log "socket $sock did not appear within 10 s; log: $logf"
    return 1
}

# start_server SOCK ARGS...   -> sets SERVER_PID, log in $T/server-N.log
_SERVER_N=0
start_server() {
    local sock=$1; shift
    _SERVER_N=$((_SERVER_N + 1))
    SERVER_LOG=$T/server-$_SERVER_N.log
    rm -f "$sock"
    log "starting: $NBDSTACK -U $sock $*"
    "${SPAWN[@]}" "$NBDSTACK" -U "$sock" "$@" >"$SERVER_LOG" 2>&1 </dev/null &
    SERVER_PID=$!
    SERVER_PIDS+=("$SERVER_PID")
    wait_socket "$sock" "$SERVER_PID" "$SERVER_LOG" || die "server did not start: $NBDSTACK -U $sock $*"
}

# try_start_config_server CONFIG SOCK   (SOCK is the listen path inside
# CONFIG); on failure counts a FAIL and returns 1, so the test can go on.
try_start_config_server() {
    local conf=$1 sock=$2
    _SERVER_N=$((_SERVER_N + 1))
    SERVER_LOG=$T/server-$_SERVER_N.log
    rm -f "$sock"
    log "starting: $NBDSTACK -c $conf"
    "${SPAWN[@]}" "$NBDSTACK" -c "$conf" >"$SERVER_LOG" 2>&1 </dev/null &
    SERVER_PID=$!
    SERVER_PIDS+=("$SERVER_PID")
    if ! wait_socket "$sock" "$SERVER_PID" "$SERVER_LOG"; then
        fail "server did not start with config $conf: $(tail -n 5 "$SERVER_LOG")"
        return 1
    fi
}
start_config_server() {
    try_start_config_server "$@" || die "server did not start with config $1"
}

server_alive() { kill -0 "${1:-$SERVER_PID}" 2>/dev/null; }

# stop_server [PID [SIGNAL [TIMEOUT]]]  -> sets STOP_RC (exit status, or
# "timeout" if it did not exit within TIMEOUT seconds; then it is SIGKILLed).
stop_server() {
    local pid=${1:-$SERVER_PID} sig=${2:-TERM} to=${3:-5} i n
    kill -"$sig" "$pid" 2>/dev/null
    n=$((to * 10))
    for i in $(seq "$n"); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        STOP_RC=timeout
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    else
        wait "$pid" 2>/dev/null
        STOP_RC=$?
    fi
    local p keep=()
    for p in "${SERVER_PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    SERVER_PIDS=("${keep[@]}")
}

# json_get FILE PYEXPR   evaluate PYEXPR with j = parsed JSON of FILE;
# prints the result (booleans as true/false).
json_get() {
    /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
try:
    v = eval(sys.argv[2], {"j": j})
except (KeyError, IndexError, TypeError) as e:
    print("<missing: %r>" % (e,))
    sys.exit(0)
if isinstance(v, bool):
    print("true" if v else "false")
else:
    print(v)
PY
}
