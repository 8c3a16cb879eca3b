#!/usr/bin/env bash
# Runs one nbdstack libFuzzer harness: first every saved regression input
# (tests/fuzz/regressions/<harness>/*.hex), then fuzzing for a bounded time
# from the seed corpus.  Fails on any crash, sanitizer report, leak or
# timeout, and prints the offending input as hex (the format to save as a
# regression).
#
#   run_fuzz.sh HARNESS_BIN SEEDS_DIR REGRESSIONS_DIR WORK_DIR [DICT] [-- LIBFUZZER_ARGS...]
#
# Environment:
#   FUZZ_SECONDS   how long to fuzz (default 30)
#   FUZZ_CORPUS    keep the corpus in this directory (grows across runs);
#                  default: a fresh copy of the seeds under WORK_DIR
#   FUZZ_JOBS      libFuzzer -fork=N processes (default: 1 process)
#   FUZZ_VERBOSE   set: keep the server's log lines (stderr of the harness)
set -euo pipefail

[ $# -ge 4 ] || { echo "usage: $0 HARNESS SEEDS REGRESSIONS WORKDIR [DICT] [-- ARGS]" >&2; exit 2; }
bin=$1 seeds=$2 regress=$3 work=$4
shift 4
dict=
if [ $# -gt 0 ] && [ "$1" != "--" ]; then dict=$1; shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
extra=("$@")

name=$(basename "$bin")
seconds=${FUZZ_SECONDS:-30}
[ -x "$bin" ] || { echo "$name: $bin is not built" >&2; exit 1; }
[ -d "$seeds" ] || { echo "$name: no seed corpus at $seeds (gen_seeds.py)" >&2; exit 1; }

rm -rf "$work"
mkdir -p "$work/artifacts" "$work/regressions"

common=(-timeout=25 -rss_limit_mb=4096 -print_final_stats=1)
# The server logs every dropped client on stderr; libFuzzer's own output and
# sanitizer reports still reach the terminal (it dups stderr first).
[ -n "${FUZZ_VERBOSE:-}" ] || common+=(-close_fd_mask=2)
[ -n "$dict" ] && common+=("-dict=$dict")

# show_artifacts: print each crashing input as hex for tests/fuzz/regressions.
show_artifacts() {
    local f
    for f in "$work"/artifacts/*; do
        [ -f "$f" ] || continue
        echo "$name: offending input $f ($(stat -c %s "$f") bytes); as hex:" >&2
        od -An -v -tx1 "$f" | tr -d ' \n' | fold -w 64 >&2
        echo >&2
    done
}

# 1. Regressions: hex text files (whitespace and '#' comment lines ignored).
n=0
if [ -d "$regress" ]; then
    for h in "$regress"/*.hex; do
        [ -f "$h" ] || continue
        n=$((n + 1))
        out="$work/regressions/$(basename "$h" .hex)"
        /usr/bin/python3 -c 'import re, sys
text = re.sub(r"#.*", "", open(sys.argv[1]).read())
sys.stdout.buffer.write(bytes.fromhex("".join(text.split())))' "$h" >"$out" ||
            { echo "$name: $h is not valid hex" >&2; exit 1; }
    done
fi
if [ "$n" -gt 0 ]; then
    echo "$name: replaying $n regression input(s)" >&2
    if ! "$bin" "${common[@]}" "-artifact_prefix=$work/artifacts/" \
            "${extra[@]}" "$work"/regressions/*; then
        echo "$name: FAIL: a regression input crashes again" >&2
        exit 1
    fi
fi

# 2. Fuzz from the seeds (plus a kept corpus, if any).
corpus=${FUZZ_CORPUS:-$work/corpus}
mkdir -p "$corpus"
cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true
fork=()
[ -n "${FUZZ_JOBS:-}" ] && fork=("-fork=$FUZZ_JOBS" -ignore_crashes=0)
echo "$name: fuzzing for ${seconds}s, corpus $corpus ($(ls "$corpus" | wc -l) inputs)" >&2
set +e
"$bin" "${common[@]}" "${fork[@]}" "-max_total_time=$seconds" \
    "-artifact_prefix=$work/artifacts/" "${extra[@]}" "$corpus" 2>"$work/fuzz.log"
rc=$?
set -e
# Keep the log short in CTest's output: libFuzzer's status lines, then the
# report if it failed.
grep -E '^(INFO: Seed|#[0-9]+ +(INITED|DONE)|stat::|Done )' "$work/fuzz.log" >&2 || true
if [ "$rc" -ne 0 ] || ls "$work"/artifacts/* >/dev/null 2>&1; then
    echo "$name: FAIL: libFuzzer exited $rc; log $work/fuzz.log" >&2
    grep -v -E '^#[0-9]+ +(NEW|REDUCE|pulse)' "$work/fuzz.log" | tail -n 80 >&2
    show_artifacts
    exit 1
fi
echo "$name: ran ${seconds}s clean" >&2
