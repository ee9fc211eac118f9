#!/usr/bin/env bash
# Export benchmark: `tally ingest` throughput and peak RSS on a ~300 MB CloudWatch Logs export
# (the pretty-printed JSON document `aws logs filter-log-events --output json` writes), next
# to the same records as plain NDJSON, one per line. Every run ingests into a new store.
# Targets: the export's wall time within MAX_RATIO x the NDJSON's, its peak RSS <= MAX_RSS_MB.
# Prints a markdown table on stdout (progress goes to stderr).
#
# Usage, from the repo root:   tests/bench/export.sh
#
# Knobs (environment):
#   PROFILE           release (default) or dev: which build of tally to time
#   CARGO_TARGET_DIR  where that build goes (default: target)
#   BENCH_DIR         data and results go to BENCH_DIR/export (default: out/bench)
#   RUNS              timed runs per input, the median is reported (default: 3)
#   EXPORT_BYTES      size of the export (default: 300e6);  SEED (1), TENANTS (50)
#   MAX_RATIO, MAX_RSS_MB   the targets (default: 1.5, 64)
#   SKIP_BUILD=1      use the existing binary;  REGEN=1  regenerate the data
#   QUIET_WAIT, MAX_OTHER, RETRIES   contention guard (see "timing" in lib.sh)
#   SUMMARY           a file to append the figures to as KEY=VALUE lines (tests/bench/compare.sh)
set -euo pipefail
source "$(dirname "$0")/lib.sh"   # helpers; the shell is now in the repo root

PROFILE=${PROFILE:-release}
BENCH_DIR=${BENCH_DIR:-out/bench}
RUNS=${RUNS:-3}
EXPORT_BYTES=${EXPORT_BYTES:-300e6}
SEED=${SEED:-1}
TENANTS=${TENANTS:-50}
MAX_RATIO=${MAX_RATIO:-1.5}
MAX_RSS_MB=${MAX_RSS_MB:-64}

need_time
command -v python3 >/dev/null || die "python3 missing"
build_tally
REV=$(tally_rev)

# --- data ---------------------------------------------------------------------
DIR="$BENCH_DIR/export"
DATA="$DIR/data"
EXPORT="$DATA/export.json"
NDJSON="$DATA/records.ndjson"
ARGS=(--bytes "$EXPORT_BYTES" --seed "$SEED" --tenants "$TENANTS")
# .ready holds the generator's arguments: a set made with other knobs is made again.
[[ -f $DATA/.ready && "$(cat "$DATA/.ready")" == "${ARGS[*]}" ]] || rm -f "$DATA/.ready"
if stale "$DATA"; then
  say "generating $DATA (${ARGS[*]}), this takes a while"
  mkdir -p "$DATA"
  python3 tests/bench/make_export.py --out-export "$EXPORT" --out-ndjson "$NDJSON" "${ARGS[@]}" > "$DATA/summary.json"
  echo "${ARGS[*]}" > "$DATA/.ready"
else
  say "reusing $DATA"
fi
RECORDS=$(json "$DATA/summary.json" 'j["records"]')
EXPORT_SIZE=$(json "$DATA/summary.json" 'j["export_bytes"]')
NDJSON_SIZE=$(json "$DATA/summary.json" 'j["ndjson_bytes"]')
say "$RECORDS records: export $EXPORT_SIZE B, NDJSON $NDJSON_SIZE B"

# Warm the page cache so every timed run reads from memory (this benchmarks CPU, not disk).
cat "$EXPORT" "$NDJSON" > /dev/null

# --- timed runs -----------------------------------------------------------------
RUN_DIR="$DIR/runs"

# fresh DIR: an empty DIR with a config keeping the store and quarantine inside it.
fresh() {
  rm -rf "$1"; mkdir -p "$1"
  printf '[store]\nbackend = "sqlite"\npath = "tally.sqlite"\n\n[ingest]\nquarantine = "quarantine.jsonl"\n' > "$1/tally.toml"
}

# series NAME FILE: RUNS cold `tally ingest FILE`, each of which must count every record.
series() {
  local name=$1 file=$2 i run report counted
  reset_series
  for i in $(seq "$RUNS"); do
    run="$RUN_DIR/$name-$i" report="$RUN_DIR/$name-$i.json"
    measure "$name run $i" "fresh '$run'" "$report" "$TALLY" --config "$run/tally.toml" ingest "$file" --json -q
    counted=$(json "$report" 'j["counted"]')
    [[ $counted == "$RECORDS" ]] || die "$name run $i counted $counted of $RECORDS records (report $report;" \
      "quarantine: $(head -c 500 "$run/quarantine.jsonl" 2>/dev/null || echo none))"
  done
  NOTES+=("$name: walls ${walls[*]} s; CPU ${cpus[*]} %; other processes ${others[*]} cores")
}

ROWS=()
NOTES=()
# per AMOUNT WALL FORMAT: AMOUNT per second of WALL, printf'd (a wall of 0 counts as 0.01 s).
per() { awk -v n="$1" -v w="$2" -v f="$3" 'BEGIN { printf f, n / (w > 0 ? w : 0.01) }'; }
# row NAME BYTES BASE_WALL: a table row from the series (median wall, max peak RSS); sets W, R.
row() {
  local mb; mb=$(awk -v b="$2" 'BEGIN { print b / 1e6 }')
  W=$(med "${walls[@]}") R=$(mx "${rsss[@]}")
  ROWS+=("| $1 | $2 | $RECORDS | $W | $(per "$mb" "$W" %.0f) | $(per "$RECORDS" "$W" %.0f) | $R | $(per "$W" "$3" %.2f) |")
}

say "tally ingest NDJSON, $RUNS cold runs"
series ndjson "$NDJSON"
row "NDJSON, one record per line" "$NDJSON_SIZE" "$(med "${walls[@]}")"
NDJSON_WALL=$W NDJSON_RSS=$R

say "tally ingest FilterLogEvents export, $RUNS cold runs"
series export "$EXPORT"
row "FilterLogEvents export (aws logs filter-log-events --output json)" "$EXPORT_SIZE" "$NDJSON_WALL"
EXPORT_WALL=$W EXPORT_RSS=$R
RATIO=$(per "$EXPORT_WALL" "$NDJSON_WALL" %.2f)

summary export_records "$RECORDS"; summary export_bytes "$EXPORT_SIZE"; summary export_ndjson_bytes "$NDJSON_SIZE"
summary export_wall "$EXPORT_WALL"; summary export_rss "$EXPORT_RSS"; summary export_ratio "$RATIO"
summary export_ndjson_wall "$NDJSON_WALL"; summary export_ndjson_rss "$NDJSON_RSS"

# verdict CONDITION: "met" or "MISSED" (an awk expression).
verdict() { if awk "BEGIN { exit !($1) }"; then echo met; else echo MISSED; fi; }

# --- table ---------------------------------------------------------------------------
{
  echo "Export benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, tally ($PROFILE) built from $REV"
  echo
  echo "$RECORDS Bedrock invocation-log records, $TENANTS tenants, as one CloudWatch Logs export and as NDJSON." \
       "Cold store each run, median of $RUNS runs, warm page cache; peak RSS is the largest of the runs."
  echo
  echo "| input | bytes | records | wall s (median of $RUNS) | MB/s | records/s | peak RSS MB | ratio vs NDJSON |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "- export wall time within ${MAX_RATIO}x the NDJSON's: ${RATIO}x — $(verdict "$RATIO <= $MAX_RATIO")"
  echo "- export peak RSS <= $MAX_RSS_MB MB: $EXPORT_RSS MB — $(verdict "$EXPORT_RSS <= $MAX_RSS_MB")"
  echo
  echo "Correctness: every run counted all $RECORDS records."
  echo
  echo "Per run (CPU in % of one core; 'other processes' = cores used by the rest of the machine meanwhile):"
  printf -- '- %s\n' "${NOTES[@]}"
} | tee "$DIR/results.md"
