#!/usr/bin/env bash
# Static analysis of nbdstack: clang-tidy (checks in .clang-tidy) and
# cppcheck (warning, portability, performance) over src/, backends/ and
# filters/, with the compile commands of a glibc build.  Fails on any
# finding not listed in tests/static_analysis.supp (false positives only,
# each with its reason).  Exit 77 (skipped) when a tool is missing.
#
#   tests/static_analysis.sh BUILD_DIR        (CTest test static_analysis)
#
# BUILD_DIR must be a configured and built glibc tree (compile_commands.json
# and gen/methods_gen.h).  JOBS (default 2) clang-tidy processes run at once.
set -u -o pipefail

build=${1:?usage: $0 BUILD_DIR}
src=${SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}
supp=$src/tests/static_analysis.supp
jobs=${JOBS:-2}

for t in clang-tidy cppcheck /usr/bin/python3; do
    command -v "$t" >/dev/null 2>&1 || { echo "static_analysis: SKIP: $t not installed" >&2; exit 77; }
done
[ -f "$build/compile_commands.json" ] || { echo "static_analysis: no $build/compile_commands.json (configure first)" >&2; exit 1; }
[ -f "$build/gen/methods_gen.h" ] || { echo "static_analysis: no $build/gen/methods_gen.h (build first)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/nbdstack-sa.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT

# The compile commands of the files analysed, each once (the unit tests
# compile testlib.c many times; tests are not analysed).
/usr/bin/python3 - "$build/compile_commands.json" "$src" "$work" <<'PY' || exit 1
import json, os, sys
db, src, work = sys.argv[1:]
src = os.path.realpath(src)
seen, out = set(), []
for e in json.load(open(db)):
    f = os.path.realpath(os.path.join(e["directory"], e["file"]))
    rel = os.path.relpath(f, src)
    if rel.split(os.sep)[0] in ("src", "backends", "filters") and f not in seen:
        seen.add(f)
        out.append(e)
if not out:
    sys.exit("static_analysis: no source of %s in %s" % (src, db))
json.dump(out, open(os.path.join(work, "compile_commands.json"), "w"), indent=1)
# Largest first: the analyzer's time grows with the file, and xargs -P packs
# better when the long ones start early.
files = sorted((os.path.join(e["directory"], e["file"]) for e in out),
               key=lambda f: -os.path.getsize(f))
with open(os.path.join(work, "files"), "w") as fp:
    fp.write("\n".join(files) + "\n")
PY
nfiles=$(wc -l <"$work/files")

t0=$SECONDS
xargs -P "$jobs" -n 1 clang-tidy -p "$work" --quiet --config-file="$src/.clang-tidy" \
    <"$work/files" >"$work/tidy.log" 2>&1
echo "static_analysis: clang-tidy: $nfiles files in $((SECONDS - t0)) s" >&2

t0=$SECONDS
cppcheck --project="$work/compile_commands.json" -j "$jobs" --quiet --std=c11 \
    --enable=warning,portability,performance --inline-suppr \
    --template='{file}:{line}:{column}: {severity}: {message} [{id}]' \
    >"$work/cppcheck.log" 2>&1
echo "static_analysis: cppcheck: $nfiles files in $((SECONDS - t0)) s" >&2

# Findings minus suppressions.  A suppression names the tool, the file, the
# check and a piece of the flagged source line (not its number, which moves).
/usr/bin/python3 - "$src" "$supp" "$work/tidy.log" "$work/cppcheck.log" <<'PY'
import os, re, sys
src, supp, tidy, cpp = sys.argv[1:]
diag = re.compile(r"^(/[^:]+|[^:/][^:]*):(\d+):(\d+): (warning|error|style|portability|performance|information): (.*) \[([^\]]+)\]$")
rules = []
if os.path.exists(supp):
    for n, line in enumerate(open(supp), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 5 or not all(parts):
            sys.exit("%s:%d: want tool|file|check|source text|reason" % (supp, n))
        rules.append(parts + [0])
head = re.compile(r"^(/[^:]+|[^:/][^:]*):(\d+):(\d+): (warning|error): .*[^\]]$")
tail = re.compile(r"\[[^\]\s]+\]$")

def lines(log):
    """The log's lines, with a message clang-tidy wrapped over several
    lines (the padding check: "...where 0 is optimal). \nOptimal fields
    order: \nname, \n...consider reordering ... [check]") joined back
    into one diagnostic."""
    held = []
    for line in open(log, errors="replace"):
        line = line.rstrip("\n")
        if held:
            held.append(line)
            if tail.search(line):
                yield " ".join(x.strip() for x in held)
                held = []
            elif len(held) > 30:
                yield from held
                held = []
            continue
        if head.match(line):
            held = [line]
        else:
            yield line
    yield from held

found, bad = set(), []
for tool, log in (("clang-tidy", tidy), ("cppcheck", cpp)):
    for line in lines(log):
        m = diag.match(line)
        if not m:
            if tool == "cppcheck" and line.strip():
                bad.append("cppcheck: " + line.rstrip())
            elif re.search(r"\berror: ", line):
                bad.append("clang-tidy: " + line.rstrip())
            continue
        path, lno, col, sev, msg, checks = m.groups()
        path = os.path.realpath(os.path.join(src, path))
        rel = os.path.relpath(path, src)
        check = checks.split(",")[0]
        key = (tool, rel, lno, col, check)
        if key in found:
            continue            # a header's finding repeats per file
        found.add(key)
        try:
            text = open(path, errors="replace").read().split("\n")[int(lno) - 1]
        except (OSError, IndexError):
            text = ""
        for r in rules:
            if r[0] == tool and r[1] == rel and r[2] == check and r[3] in text:
                r[5] += 1
                break
        else:
            bad.append("%s: %s:%s:%s: %s [%s]\n    %s" % (tool, rel, lno, col, msg, check, text.strip()))
for r in rules:
    if r[5] == 0:
        print("static_analysis: note: suppression no longer needed: %s" % "|".join(r[:4]), file=sys.stderr)
if bad:
    print("static_analysis: %d finding(s):" % len(bad), file=sys.stderr)
    for b in bad:
        print("  " + b, file=sys.stderr)
    print("Fix them, or if one is a false positive add it to tests/static_analysis.supp with the reason.", file=sys.stderr)
    sys.exit(1)
print("static_analysis: clean (%d suppressed false positives)" % sum(r[5] > 0 for r in rules), file=sys.stderr)
PY
