#!/usr/bin/env bash
# The man pages the build generated (nbdstack --man): each renders with
# groff -ww without a warning; each is what the binary prints now; they
# cannot drift from the binary: every long option of --help is in
# nbdstack(1), every [server] key in nbdstack.conf(5), every filter and
# backend of --list and each of their keys in nbdstack-filters(7) and
# nbdstack-backends(7).  An unknown page is refused.  cmake --install puts
# the binary, the pages and the systemd units (when the tree has them) in
# place.
. "$(dirname "$0")/lib.sh"
require_tool groff
MAN=${BUILDDIR:?}/man
[ -d "$MAN" ] || die "no $MAN: the build did not generate the man pages"

declare -A PAGE=([1]=nbdstack.1 [5]=nbdstack.conf.5
                 [filters]=nbdstack-filters.7 [backends]=nbdstack-backends.7)
for p in "${!PAGE[@]}"; do
    f=$MAN/${PAGE[$p]}
    [ -s "$f" ] || { fail "${PAGE[$p]} missing"; continue; }
    groff -man -ww -z "$f" >"$T/$p.groff" 2>&1
    check_eq "${PAGE[$p]} renders without warnings" "" "$(cat "$T/$p.groff")"
    # The pages were written by this build's own binary (a test build
    # also lists its test-only layers), so compare with that one.
    "${NBDSTACK_TESTBIN:-$NBDSTACK}" --man "$p" >"$T/$p.now" 2>&1
    check "${PAGE[$p]} is what the binary prints" cmp -s "$f" "$T/$p.now"
    # As man(1) shows it: no roff request left as text.
    groff -man -Tutf8 "$f" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g; s/.\x08//g' >"$T/$p.txt"
done

# Every long option of --help in nbdstack(1).
for o in $("$NBDSTACK" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
    grep -qF -- "$o" "$T/1.txt" || fail "nbdstack(1) lacks option $o"
done
pass "every --help option is in nbdstack(1)"

# Every [server] key in nbdstack.conf(5).
for k in $("$NBDSTACK" --settings-table | sed -n 's/^| `\([a-z-]*\)` |.*/\1/p'); do
    grep -q -- "^ *$k = " "$T/5.txt" || fail "nbdstack.conf(5) lacks key $k"
done
pass "every [server] key is in nbdstack.conf(5)"

# Every layer and key of --list in the section 7 pages.
"$NBDSTACK" --list | awk '
    /^filters:/ { p = "filters"; next }
    /^backends:/ { p = "backends"; next }
    /^  [^ ]/ { print p, "layer", $1; next }
    /^      / { split($1, a, "="); print p, "key", a[1] }' >"$T/list"
[ -s "$T/list" ] || fail "--list printed nothing"
while read -r p what name; do
    if [ "$what" = layer ]; then
        grep -qx "   $name" "$T/$p.txt" || fail "$p page lacks $name"
    else
        grep -q -- "^ *$name=" "$T/$p.txt" || fail "$p page lacks key $name"
    fi
done <"$T/list"
pass "every layer and key of --list is in the section 7 pages"

out=$("$NBDSTACK" --man 9 2>&1); rc=$?
check_eq "--man 9 exit status" 1 "$rc"
check "--man 9 says which pages exist" grep -q "unknown page '9'" <<<"$out"

# cmake --install into a scratch prefix.
if command -v cmake >/dev/null; then
    cmake --install "$BUILDDIR" --prefix "$T/inst" >"$T/install.log" 2>&1 ||
        fail "cmake --install failed: $(tail -n 3 "$T/install.log")"
    for f in bin/nbdstack share/man/man1/nbdstack.1 share/man/man5/nbdstack.conf.5 \
             share/man/man7/nbdstack-filters.7 share/man/man7/nbdstack-backends.7; do
        [ -s "$T/inst/$f" ] || fail "cmake --install did not install $f"
    done
    for u in "$SRCDIR"/contrib/systemd/*.service "$SRCDIR"/contrib/systemd/*.socket; do
        [ -e "$u" ] || continue
        [ -s "$T/inst/lib/systemd/system/${u##*/}" ] || fail "unit ${u##*/} not installed"
    done
    [ -x "$T/inst/bin/nbdstack" ] && check "installed binary runs" "$T/inst/bin/nbdstack" --version
fi
finish
