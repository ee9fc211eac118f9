#!/usr/bin/env bash
# The README's two commands on a fresh clone, timed with /usr/bin/time -v: `cargo run -- demo`
# cold, then `tests/run-all.sh` right after it, with one core kept busy by a shell loop the
# whole time (as CI's machine may be). Its own target/ dir; the cargo registry is shared.
#
# Usage, from the repo root:   tests/bench/fresh-clone.sh [DIR]      (default DIR: /tmp/tally-fresh)
# Results: DIR.results/ (time1, time2: /usr/bin/time -v; demo.*, test.*: the outputs; rc1, rc2).
set -u
DIR=${1:-/tmp/tally-fresh}
OUT=$DIR.results
REPO=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$DIR" "$OUT" && mkdir -p "$OUT"
git clone -q "$REPO" "$DIR" && cd "$DIR" || exit 1
git log --oneline -1 > "$OUT/rev"
date -u +%FT%TZ > "$OUT/start1"
/usr/bin/time -v -o "$OUT/time1" cargo run -- demo > "$OUT/demo.out" 2> "$OUT/demo.err"
echo $? > "$OUT/rc1"
date -u +%FT%TZ > "$OUT/start2"
( while :; do :; done ) & BUSY=$!
/usr/bin/time -v -o "$OUT/time2" tests/run-all.sh > "$OUT/test.out" 2> "$OUT/test.err"
echo $? > "$OUT/rc2"
kill "$BUSY"
date -u +%FT%TZ > "$OUT/end"
grep -H "Elapsed" "$OUT/time1" "$OUT/time2"
cat "$OUT/rc1" "$OUT/rc2"
