#!/usr/bin/env bash
# CTest sanitizer/reports (cmake/analysis.cmake): fails if a sanitizer wrote
# a report into LOGS while the other tests ran, and prints it.  Reports are
# moved to LOGS/seen/, so the next run starts clean.
#
# Why files: an integration test runs nbdstack in the background and keeps
# its stderr in a temp dir that is deleted afterwards, and a leak found at
# exit only changes the server's exit status, which not every test checks.
# The asan/tsan test presets set *SAN_OPTIONS=log_path=LOGS/<kind>.
set -u
logs=$1
mkdir -p "$logs/seen"
case "${ASAN_OPTIONS:-} ${UBSAN_OPTIONS:-} ${TSAN_OPTIONS:-}" in
    *"log_path=$logs/"*) ;;
    *)  echo "sanitizer/reports: no *SAN_OPTIONS log_path into $logs: reports" \
             "are not collected; run 'ctest --preset asan' or 'ctest --preset tsan'" >&2
        exit 77 ;;
esac
shopt -s nullglob
reports=("$logs"/*.[0-9]*)
if [ ${#reports[@]} -eq 0 ]; then
    echo "sanitizer/reports: no sanitizer reports"
    exit 0
fi
for f in "${reports[@]}"; do
    echo "=== $f ($(wc -l <"$f") lines) ==="
    head -n 150 "$f"
    mv "$f" "$logs/seen/$(basename "$f").$(date +%s)"
done
echo "sanitizer/reports: FAIL: ${#reports[@]} report(s); kept in $logs/seen/" >&2
exit 1
