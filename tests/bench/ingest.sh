#!/usr/bin/env bash
# Ingest benchmark: `tally ingest` throughput and peak RSS on a generated >= 2 GB
# (uncompressed) log set, next to two-core `gzip -dc > /dev/null` over the same .gz files.
# Prints a markdown table on stdout (progress goes to stderr).
#
# Usage, from the repo root:   tests/bench/ingest.sh
#
# Knobs (environment):
#   CARGO_TARGET_DIR  where the release build goes (default: target)
#   BENCH_DIR         data and results (default: out/bench)
#   RUNS              timed runs per measurement, the median is reported (default: 3)
#   RECORDS, BODY_BYTES, TENANTS, PLAIN_FRACTION, DUP_FRACTION, PER_OBJECT   full set
#   PLAIN_RECORDS     records in the plain-NDJSON-only set (default: sized to ~1 GB)
#   SKIP_BUILD=1      use the existing binary;  REGEN=1  regenerate the data sets
#   QUIET_WAIT, MAX_OTHER, RETRIES   contention guard (see "timing helpers")
#   MIN_BYTES         minimum uncompressed size of the full set (default 2e9; 0 for smoke tests)
set -euo pipefail

cd "$(dirname "$0")/../.."   # the repo root, wherever we were started from

TARGET_DIR=${CARGO_TARGET_DIR:-target}
TALLY="$TARGET_DIR/release/tally"
BENCH_DIR=${BENCH_DIR:-out/bench}
RUNS=${RUNS:-3}
RECORDS=${RECORDS:-2000000}
BODY_BYTES=${BODY_BYTES:-800}
TENANTS=${TENANTS:-50}
PLAIN_FRACTION=${PLAIN_FRACTION:-0.1}
DUP_FRACTION=${DUP_FRACTION:-0.01}
PER_OBJECT=${PER_OBJECT:-2000}
PLAIN_RECORDS=${PLAIN_RECORDS:-600000}
REGEN=${REGEN:-0}

say() { echo "bench: $*" >&2; }
die() { echo "bench: FAIL: $*" >&2; exit 1; }

# --- tools ------------------------------------------------------------------
[[ -x /usr/bin/time ]] || die "/usr/bin/time missing: apt-get install time"
command -v python3 >/dev/null || die "python3 missing"

# --- build --------------------------------------------------------------------
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    say "cargo build --release (target dir: $TARGET_DIR)"
    CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --quiet
fi
[[ -x $TALLY ]] || die "no binary at $TALLY"
# What was measured: the commit, and whether src/ differed from it when we built.
REV="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes')"

# json FILE EXPR: evaluate a python expression over the JSON document `j` in FILE.
json() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# --- data ---------------------------------------------------------------------
# gen DIR ARGS...: run `tally generate` into DIR unless DIR/stamp already holds the same
# arguments; then measure the uncompressed sizes once and cache them in DIR/sizes.env.
gen() {
    local dir=$1; shift
    local want="tally generate $* --month 2025-11 --seed 1"
    if [[ $REGEN == 1 || ! -f $dir/stamp || "$(cat "$dir/stamp")" != "$want" || ! -f $dir/sizes.env ]]; then
        say "generating $dir ($*), this takes a while"
        rm -rf "$dir"; mkdir -p "$dir"
        "$TALLY" generate --out "$dir" "$@" --month 2025-11 --seed 1 >&2
        # Uncompressed bytes and lines of the .json.gz objects (gzip members concatenate).
        local gz_bytes gz_lines gz_files plain_bytes plain_lines
        gz_files=$(find "$dir/logs" -name '*.json.gz' | wc -l)
        gz_lines=0 gz_bytes=0
        if (( gz_files > 0 )); then
            read -r gz_lines gz_bytes < <(find "$dir/logs" -name '*.json.gz' -print0 | xargs -0 cat | gzip -dc | wc -lc)
        fi
        read -r plain_lines plain_bytes < <(find "$dir/logs" -name '*.ndjson' -print0 | xargs -0 -r cat | wc -lc)
        cat > "$dir/sizes.env" <<EOF
GZ_FILES=$gz_files
GZ_BYTES=$gz_bytes
GZ_LINES=$gz_lines
PLAIN_BYTES=$plain_bytes
PLAIN_LINES=$plain_lines
TRUTH_COUNTED=$(json "$dir/truth.json" 'j["counted"]')
TRUTH_DUPLICATES=$(json "$dir/truth.json" 'j["duplicates"]')
TRUTH_RECEIVED=$(json "$dir/truth.json" 'j["received"]')
EOF
        echo "$want" > "$dir/stamp"   # written last: a half-generated set is never reused
    else
        say "reusing $dir"
    fi
}

FULL="$BENCH_DIR/data"
PLAIN="$BENCH_DIR/plain"
gen "$FULL" --tenants "$TENANTS" --records "$RECORDS" --body-bytes "$BODY_BYTES" \
    --plain-fraction "$PLAIN_FRACTION" --duplicate-fraction "$DUP_FRACTION" --records-per-object "$PER_OBJECT"
gen "$PLAIN" --tenants "$TENANTS" --records "$PLAIN_RECORDS" --body-bytes "$BODY_BYTES" \
    --plain-fraction 1.0 --duplicate-fraction 0 --records-per-object "$PER_OBJECT"

# Load one set's sizes into prefixed variables (F_*, P_*).
load() { local p=$1 line; while IFS= read -r line; do eval "${p}_${line}"; done < "$2/sizes.env"; }
load F "$FULL"
load P "$PLAIN"
F_TOTAL_BYTES=$((F_GZ_BYTES + F_PLAIN_BYTES))
P_TOTAL_BYTES=$((P_GZ_BYTES + P_PLAIN_BYTES))
(( F_TOTAL_BYTES >= ${MIN_BYTES:-2000000000} )) || die "full set is only $F_TOTAL_BYTES bytes uncompressed (< 2 GB): raise RECORDS or BODY_BYTES"
say "full set: $F_GZ_FILES .json.gz ($F_GZ_BYTES B uncompressed) + $F_PLAIN_BYTES B plain; plain set: $P_PLAIN_BYTES B"

# Warm the page cache so every timed run reads from memory (this benchmarks CPU, not disk).
find "$FULL/logs" "$PLAIN/logs" -type f -print0 | xargs -0 cat > /dev/null

# --- timing helpers -------------------------------------------------------------
# Other engineers' builds and tests share these 2 cores. Before each timed run we wait (at
# most QUIET_WAIT s) for the machine to go quiet, and during it we measure how much CPU other
# processes took (system busy time from /proc/stat minus the run's own user+sys). A run where
# others took more than MAX_OTHER cores on average is repeated, up to RETRIES attempts.
QUIET_WAIT=${QUIET_WAIT:-120}
MAX_OTHER=${MAX_OTHER:-0.15}
RETRIES=${RETRIES:-3}
TCK=$(getconf CLK_TCK)
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }   # jiffies, all cores

wait_quiet() {
    local waited=0 b0 b1
    while (( waited < QUIET_WAIT )); do
        b0=$(busy); sleep 3; b1=$(busy); waited=$((waited + 3))
        awk -v d=$((b1 - b0)) -v t="$TCK" 'BEGIN { exit !(d / t / 3 < 0.10) }' && return 0
    done
    say "  machine still busy after ${QUIET_WAIT}s, measuring anyway"
}

# timed OUT CMD...: run CMD under /usr/bin/time -v, stdout to OUT.
# Sets WALL (s), RSS (MB), CPU (% of one core), CPUSEC (user + sys s), OTHER (cores used by
# other processes).
timed() {
    local out=$1; shift
    local tv rc=0 b0 b1; tv=$(mktemp)
    b0=$(busy)
    /usr/bin/time -v -o "$tv" "$@" > "$out" || rc=$?
    b1=$(busy)
    # "Elapsed (wall clock) time (h:mm:ss or m:ss): 0:12.34" -> seconds
    WALL=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; printf "%.2f", s }' "$tv")
    RSS=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$tv")
    CPU=$(awk -F': ' '/Percent of CPU/ { sub("%", "", $2); print $2 }' "$tv")
    CPUSEC=$(awk -F': ' '/User time|System time/ { own += $2 } END { printf "%.2f", own }' "$tv")
    OTHER=$(awk -F': ' -v d=$((b1 - b0)) -v t="$TCK" -v w="$WALL" '
        /User time|System time/ { own += $2 }
        END { o = (d / t - own) / (w > 0 ? w : 1); printf "%.2f", o < 0 ? 0 : o }' "$tv")
    rm -f "$tv"
    return $rc
}

# measure NAME PREP OUT CMD...: run PREP (a shell command), then CMD timed; retried while
# contended. Appends to the arrays walls/rsss/cpus/others. Fails loudly if CMD fails.
measure() {
    local name=$1 prep=$2 out=$3; shift 3
    local a
    for a in $(seq "$RETRIES"); do
        eval "$prep"
        wait_quiet
        timed "$out" "$@" || die "$name exited non-zero; output: $(head -c 2000 "$out")"
        say "  $name: ${WALL}s, ${RSS} MB, ${CPU}% CPU, others used ${OTHER} cores"
        awk -v o="$OTHER" -v m="$MAX_OTHER" 'BEGIN { exit !(o <= m) }' && break
        if (( a < RETRIES )); then say "  contended, again"; fi
    done
    walls+=("$WALL"); rsss+=("$RSS"); cpus+=("$CPU"); cpusecs+=("$CPUSEC"); others+=("$OTHER")
}

# median / max of the numbers on stdin
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
maxof() { sort -g | tail -n 1; }
med() { printf '%s\n' "$@" | median; }
mx() { printf '%s\n' "$@" | maxof; }

# Delete the counter store and quarantine: the next ingest is a cold, full one.
reset_store() { rm -f "$1/tally.sqlite" "$1/tally.sqlite-wal" "$1/tally.sqlite-shm" "$1/quarantine.jsonl"; }

# check REPORT PREFIX: the report's counted and duplicates must equal the set's truth.json.
check() {
    local counted dups received tc td tr
    counted=$(json "$1" 'j["counted"]'); dups=$(json "$1" 'j["duplicates"]'); received=$(json "$1" 'j["received"]')
    tc=${2}_TRUTH_COUNTED; td=${2}_TRUTH_DUPLICATES; tr=${2}_TRUTH_RECEIVED
    [[ $counted == "${!tc}" ]] || die "counted $counted != truth ${!tc} ($1)"
    [[ $dups == "${!td}" ]] || die "duplicates $dups != truth ${!td} ($1)"
    [[ $received == "${!tr}" ]] || say "note: received $received != truth received ${!tr} ($1)"
}

ROWS=()
NOTES=()
# row NAME RECORDS BYTES: one table row from the walls/rsss/cpus/others arrays: median wall,
# records/s and MB/s (uncompressed input) at that wall, max peak RSS over the runs.
row() {
    local w rps mbs
    w=$(med "${walls[@]}")
    if [[ $2 == - ]]; then rps="—"; else rps=$(awk -v r="$2" -v w="$w" 'BEGIN { printf "%.0f", r / w }'); fi
    if [[ $3 == - ]]; then mbs="—"; else mbs=$(awk -v b="$3" -v w="$w" 'BEGIN { printf "%.0f", b / 1e6 / w }'); fi
    ROWS+=("| $1 | $w | $(med "${cpusecs[@]}") | $rps | $mbs | $(mx "${rsss[@]}") |")
    NOTES+=("$1: walls ${walls[*]} s; CPU ${cpus[*]} %; other processes ${others[*]} cores")
}

R="$BENCH_DIR/reports"; mkdir -p "$R"

# --- 1. two-core gzip -dc baseline ---------------------------------------------------
say "gzip -dc x2, $RUNS runs"
walls=(); rsss=(); cpus=(); cpusecs=(); others=()
for i in $(seq "$RUNS"); do
    measure "gzip run $i" : /dev/null \
        bash -c 'find "$1" -name "*.json.gz" -print0 | xargs -0 -P 2 -n 50 gzip -dc > /dev/null' _ "$FULL/logs"
done
row "gzip -dc, 2 cores (.json.gz only) ¹" "$F_GZ_LINES" "$F_GZ_BYTES"

# Cold ingest runs of one data set: cold_runs TAG DIR CHECK_PREFIX TOTAL_BYTES ROW_LABEL
cold_runs() {
    local tag=$1 dir=$2 prefix=$3 bytes=$4 label=$5
    walls=(); rsss=(); cpus=(); cpusecs=(); others=()
    for i in $(seq "$RUNS"); do
        measure "$tag run $i" "reset_store '$dir'" "$R/$tag-$i.json" \
            "$TALLY" --config "$dir/tally.toml" ingest "$dir/logs" --json -q
        check "$R/$tag-$i.json" "$prefix"
    done
    row "$label" "$(json "$R/$tag-1.json" 'j["received"]')" "$bytes"
}

# --- 2. tally ingest, full tree, cold store ---------------------------------------------
say "tally ingest full tree, $RUNS cold runs"
cold_runs full "$FULL" F "$F_TOTAL_BYTES" "tally ingest, full tree (gz + plain), cold"
FULL_RECEIVED=$(json "$R/full-1.json" 'j["received"]')

# --- 3. tally ingest, plain NDJSON only ------------------------------------------------
say "tally ingest plain NDJSON, $RUNS cold runs"
cold_runs plain "$PLAIN" P "$P_TOTAL_BYTES" "tally ingest, plain NDJSON only, cold"
PLAIN_RECEIVED=$(json "$R/plain-1.json" 'j["received"]')

# --- 4. no-op re-run over the same tree (store from the last full cold run) ----------------
say "tally ingest no-op re-run"
walls=(); rsss=(); cpus=(); cpusecs=(); others=()
measure "no-op re-run" : "$R/noop.json" \
    "$TALLY" --config "$FULL/tally.toml" ingest "$FULL/logs" --json -q
noop_counted=$(json "$R/noop.json" 'j["counted"]')
[[ $noop_counted == 0 ]] || die "re-run counted $noop_counted new records (want 0)"
row "tally ingest, no-op re-run (0 new)" - -

# --- 5. counter writes ------------------------------------------------------------------
keys=$(json "$R/full-1.json" 'j["keys_written"]')
batches=$(json "$R/full-1.json" 'j["batches"]')
counted=$(json "$R/full-1.json" 'j["counted"]')
internal=$(json "$R/full-1.json" 'round(j["elapsed_secs"], 2)')

# --- table ---------------------------------------------------------------------------
gb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e9 }'; }
{
    echo "Ingest benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, tally built from $REV"
    echo
    echo "Full set: $FULL_RECEIVED records received, $(gb "$F_TOTAL_BYTES") GB uncompressed" \
         "($F_GZ_FILES .json.gz = $(gb "$F_GZ_BYTES") GB, plain NDJSON = $(gb "$F_PLAIN_BYTES") GB)." \
         "Plain set: $PLAIN_RECEIVED records, $(gb "$P_TOTAL_BYTES") GB. Median of $RUNS runs, warm page cache."
    echo
    echo "| run | wall s | CPU s (user+sys) | records/s | MB/s (uncompressed) | peak RSS MB |"
    echo "|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Counter writes (full tree, one cold run): keys_written $keys for $counted counted records" \
         "($(awk -v k="$keys" -v c="$counted" 'BEGIN { printf "%.3f", k / c }') keys/record) in $batches batches;" \
         "tally's own elapsed_secs $internal."
    echo
    echo "Correctness: counted and duplicates equal truth.json in every cold run; the re-run counted 0."
    echo "¹ peak RSS for gzip is that of the largest single process (two gzip run at once)."
    echo
    echo "Per run (CPU in % of one core, 200 = both cores; 'other processes' = cores used by the rest of the machine meanwhile):"
    printf -- '- %s\n' "${NOTES[@]}"
} | tee "$BENCH_DIR/results.md"
