#!/usr/bin/env bash
# Ingest benchmark: `tally ingest` throughput and peak RSS on a generated >= 2 GB
# (uncompressed) log set, next to two-core `gzip -dc > /dev/null` over the same .gz files.
# Prints a markdown table on stdout (progress goes to stderr).
#
# Usage, from the repo root:   tests/bench/ingest.sh
#
# Knobs (environment):
#   PROFILE           release (default) or dev: which build of tally to time
#   CARGO_TARGET_DIR  where that build goes (default: target)
#   BENCH_DIR         data and results (default: out/bench)
#   RUNS              timed runs per measurement, the median is reported (default: 3)
#   RECORDS, BODY_BYTES, TENANTS, PLAIN_FRACTION, DUP_FRACTION, PER_OBJECT   full set
#   PLAIN_RECORDS     records in the plain-NDJSON-only set (default: sized to ~1 GB)
#   SKIP_BUILD=1      use the existing binary;  REGEN=1  regenerate the data sets
#   QUIET_WAIT, MAX_OTHER, RETRIES   contention guard (see "timing" in lib.sh)
#   MIN_BYTES         minimum uncompressed size of the full set (default 2e9; 0 for smoke tests)
set -euo pipefail
source "$(dirname "$0")/lib.sh"   # helpers; the shell is now in the repo root

PROFILE=${PROFILE:-release}
BENCH_DIR=${BENCH_DIR:-out/bench}
RUNS=${RUNS:-3}
RECORDS=${RECORDS:-2000000}
BODY_BYTES=${BODY_BYTES:-800}
TENANTS=${TENANTS:-50}
PLAIN_FRACTION=${PLAIN_FRACTION:-0.1}
DUP_FRACTION=${DUP_FRACTION:-0.01}
PER_OBJECT=${PER_OBJECT:-2000}
PLAIN_RECORDS=${PLAIN_RECORDS:-600000}

# --- tools ------------------------------------------------------------------
need_time
command -v python3 >/dev/null || die "python3 missing"

# --- build --------------------------------------------------------------------
build_tally
REV=$(tally_rev)

# --- data ---------------------------------------------------------------------
FULL="$BENCH_DIR/data"
PLAIN="$BENCH_DIR/plain"
gen "$FULL" --tenants "$TENANTS" --records "$RECORDS" --body-bytes "$BODY_BYTES" \
    --plain-fraction "$PLAIN_FRACTION" --duplicate-fraction "$DUP_FRACTION" --records-per-object "$PER_OBJECT"
gen "$PLAIN" --tenants "$TENANTS" --records "$PLAIN_RECORDS" --body-bytes "$BODY_BYTES" \
    --plain-fraction 1.0 --duplicate-fraction 0 --records-per-object "$PER_OBJECT"

# Each set's sizes into prefixed variables (F_*, P_*).
load F "$FULL/sizes.env"
load P "$PLAIN/sizes.env"
F_TOTAL_BYTES=$((F_GZ_BYTES + F_PLAIN_BYTES))
P_TOTAL_BYTES=$((P_GZ_BYTES + P_PLAIN_BYTES))
(( F_TOTAL_BYTES >= ${MIN_BYTES:-2000000000} )) || die "full set is only $F_TOTAL_BYTES bytes uncompressed (< 2 GB): raise RECORDS or BODY_BYTES"
say "full set: $F_GZ_FILES .json.gz ($F_GZ_BYTES B uncompressed) + $F_PLAIN_BYTES B plain; plain set: $P_PLAIN_BYTES B"

# Warm the page cache so every timed run reads from memory (this benchmarks CPU, not disk).
find "$FULL/logs" "$PLAIN/logs" -type f -print0 | xargs -0 cat > /dev/null

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
reset_series
for i in $(seq "$RUNS"); do
    measure "gzip run $i" : /dev/null "${GZIP_FLOOR[@]}" "$FULL/logs"
done
row "gzip -dc, 2 cores (.json.gz only) ¹" "$F_GZ_LINES" "$F_GZ_BYTES"

# --- 2. tally ingest, full tree, cold store ---------------------------------------------
say "tally ingest full tree, $RUNS cold runs"
cold_runs full "$FULL" F "$R"
row "tally ingest, full tree (gz + plain), cold" "$(json "$R/full-1.json" 'j["received"]')" "$F_TOTAL_BYTES"
FULL_RECEIVED=$(json "$R/full-1.json" 'j["received"]')

# --- 3. tally ingest, plain NDJSON only ------------------------------------------------
say "tally ingest plain NDJSON, $RUNS cold runs"
cold_runs plain "$PLAIN" P "$R"
row "tally ingest, plain NDJSON only, cold" "$(json "$R/plain-1.json" 'j["received"]')" "$P_TOTAL_BYTES"
PLAIN_RECEIVED=$(json "$R/plain-1.json" 'j["received"]')

# --- 4. no-op re-run over the same tree (store from the last full cold run) ----------------
say "tally ingest no-op re-run"
reset_series
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
