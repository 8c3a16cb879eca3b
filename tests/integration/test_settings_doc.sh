#!/usr/bin/env bash
# docs/config.md's [server] table is the one the server parses with:
# `nbdstack --settings-table` prints it from src/settings.c, and the
# docs hold the same text between the settings-table markers.  And
# --help lists every setting that has an option.
. "$(dirname "$0")/lib.sh"

doc=$SRCDIR/docs/config.md
want=$(sed -n '/<!-- settings-table begin -->/,/<!-- settings-table end -->/p' "$doc" |
       sed '1d;$d')
got=$("$NBDSTACK" --settings-table)
if [ "$want" = "$got" ]; then
    pass "docs/config.md [server] table equals --settings-table"
else
    fail "docs/config.md [server] table differs from --settings-table; paste its output between the markers: $(diff <(echo "$want") <(echo "$got") | head -10)"
fi
help=$("$NBDSTACK" --help)
for opt in $(grep -o '`--[a-z-]*`' <<<"$got" | tr -d '`'); do
    check "--help lists $opt" grep -q -- "$opt" <<<"$help"
done
finish
