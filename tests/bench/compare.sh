#!/usr/bin/env bash
# The comparison benchmark (issue 7): in one run, on the same generated files,
#   1. ingest (files -> counters): `tally ingest` against a Python parser in the style of the
#      AWS samples (baseline_parser.py: gzip, json.loads per line, a dict; one process), DuckDB
#      `read_json` + GROUP BY on every core (duckdb_ingest.py), and two-core `gzip -dc` of the
#      .json.gz objects (the floor). All must count the same records and tokens
#      (ingest_check.py against the generator's truth), or the run fails;
#   2. reconcile of CUR_LINES CUR 2.0 lines: tally against DuckDB's equivalent SQL (reconcile.sh);
#   3. GET /v1/quota under wrk, on SQLite (serve.sh);
#   4. invoices for INVOICE_TENANTS tenants (invoice.sh).
# Prints one markdown table (absolute figures, the ratio to each baseline and the target) on
# stdout and into BENCH_DIR/compare.md; progress goes to stderr, each part's own table to
# BENCH_DIR/compare/*.md.
#
# Usage, from anywhere:   tests/bench/compare.sh           (full size: run it on a quiet machine)
#                         SMALL=1 tests/bench/compare.sh   (smoke test: small sets, one run each)
#
# Knobs (environment):
#   PROFILE       release (default) or dev;  CARGO_TARGET_DIR  where that build goes (default: target)
#   SKIP_BUILD=1  use the existing binary (otherwise one build, with the aws feature as serve.sh's,
#                 serves every part);  REGEN=1  regenerate every data set
#   SMALL=1       smoke-test sizes and defaults (BENCH_DIR out/bench-small, RUNS 1, short waits)
#   BENCH_DIR     data and results (default: out/bench, shared with ingest.sh, reconcile.sh and
#                 invoice.sh, so data sets they generated are reused)
#   RUNS          timed runs of each measurement, the median is reported (default: 3)
#   PARTS         which parts to run (default: "ingest reconcile serve invoice")
#   INGEST_RECORDS (2000000), BODY_BYTES (800), INGEST_TENANTS (50): the ingest set, as ingest.sh's
#   MIN_BYTES     minimum uncompressed size of the ingest set (default 2e9)
#   CUR_LINES (10000000), RECONCILE_RECORDS (300000): reconcile.sh's LINES and RECORDS
#   CONNS ("10 50"), DURATION (15): serve.sh's wrk connection counts and seconds
#   INVOICE_TENANTS (100000), INVOICE_RECORDS (300000): invoice.sh's TENANTS and RECORDS
#   QUIET_WAIT, MAX_OTHER, RETRIES: the ingest part's contention guard (see lib.sh)
set -euo pipefail
KNOBS=()   # the knobs given, to print the command that reproduces the table
for v in SMALL PROFILE CARGO_TARGET_DIR SKIP_BUILD REGEN BENCH_DIR RUNS PARTS INGEST_RECORDS BODY_BYTES \
         INGEST_TENANTS MIN_BYTES CUR_LINES RECONCILE_RECORDS CONNS DURATION INVOICE_TENANTS INVOICE_RECORDS \
         QUIET_WAIT MAX_OTHER RETRIES; do
  if [[ -n ${!v+x} ]]; then KNOBS+=("$v=$(printf '%q' "${!v}")"); fi
done
if [[ ${SMALL:-0} == 1 ]]; then
  : "${BENCH_DIR:=out/bench-small}" "${RUNS:=1}" "${QUIET_WAIT:=15}" "${RETRIES:=1}"
  : "${INGEST_RECORDS:=200000}" "${MIN_BYTES:=0}" "${CUR_LINES:=200000}" "${CONNS:=10}" "${DURATION:=3}"
  : "${INVOICE_TENANTS:=1000}"
fi
source "$(dirname "$0")/lib.sh"   # helpers; the shell is now in the repo root

PROFILE=${PROFILE:-release}
BENCH_DIR=${BENCH_DIR:-out/bench}
RUNS=${RUNS:-3}
PARTS=${PARTS:-ingest reconcile serve invoice}
INGEST_RECORDS=${INGEST_RECORDS:-2000000}
BODY_BYTES=${BODY_BYTES:-800}
INGEST_TENANTS=${INGEST_TENANTS:-50}
CUR_LINES=${CUR_LINES:-10000000}
RECONCILE_RECORDS=${RECONCILE_RECORDS:-300000}
CONNS=${CONNS:-10 50}
DURATION=${DURATION:-15}
INVOICE_TENANTS=${INVOICE_TENANTS:-100000}
INVOICE_RECORDS=${INVOICE_RECORDS:-300000}
part() { [[ " $PARTS " == *" $1 "* ]]; }

# --- tools and build ---------------------------------------------------------------------------
need_time
need_duckdb
PY=.venv/bin/python
PY_VERSION=$($PY -c 'import platform; print(platform.python_version())')
if part serve && ! command -v wrk >/dev/null; then
  say "installing wrk (Debian package)"
  if [[ $(id -u) == 0 ]]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -q wrk >/dev/null \
    || { "${apt_get[@]}" update -q >/dev/null && DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -q wrk >/dev/null; }
fi
# One build for every part (the parts run with SKIP_BUILD=1): serve.sh's, with the aws feature.
if [[ $PROFILE == release ]]; then build_tally --bin tally; else build_tally --all-targets; fi
REV=$(tally_rev)
R="$BENCH_DIR/compare"
mkdir -p "$R"

# Each part's figures come back through lib.sh's `summary`: run_part NAME SCRIPT ARGS... runs
# the script with SUMMARY=R/NAME.env (its table to R/NAME.md), and loads the figures as NAME_*.
run_part() {
  local name=$1; shift
  : > "$R/$name.env"
  say "--- $name: $*"
  SUMMARY="$R/$name.env" PROFILE="$PROFILE" SKIP_BUILD=1 RUNS="$RUNS" "$@" > "$R/$name.md" || die "$name failed"
  load "$name" "$R/$name.env"
}

ROWS=()
NOTES=()
# ratio BASE TALLY: BASE / TALLY, the speed-up; meets TARGET BASE TALLY: yes or **no**
ratio() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.2f", (t > 0 ? b / t : 0) }'; }
meets() { awk -v g="$1" -v b="$2" -v t="$3" 'BEGIN { print (t > 0 && b / t >= g ? "yes" : "**no**") }'; }
num() { sed -E ':a;s/^([0-9]+)([0-9]{3})/\1,\2/;ta' <<< "$1"; }   # 1234567 -> 1,234,567
per_s() { awk -v n="$1" -v w="$2" -v d="${3:-1}" -v f="${4:-%.0f}" 'BEGIN { printf f, (w > 0 ? n / d / w : 0) }'; }
# row COMPARISON T_WALL T_THROUGHPUT T_RSS BASELINE B_WALL B_THROUGHPUT B_RSS TARGET_RATIO [MET TARGET]
# With TARGET_RATIO -, no ratio is computed: MET (yes / **no** / —) and TARGET (text) say it.
row() {
  local r="—" target="—" met=${10:-—}
  if [[ $9 != - ]]; then r="$(ratio "$6" "$2")×"; target="≥ ${9}×"; met=$(meets "$9" "$6" "$2"); fi
  ROWS+=("| $1 | $2 | $3 | $4 | $5 | $6 | $7 | $8 | $r | ${11:-$target} | $met |")
}

# --- 1. ingest ----------------------------------------------------------------------------------
if part ingest; then
  FULL="$BENCH_DIR/data"   # ingest.sh's full set: the same arguments reuse it
  gen "$FULL" --tenants "$INGEST_TENANTS" --records "$INGEST_RECORDS" --body-bytes "$BODY_BYTES" \
      --plain-fraction 0.1 --duplicate-fraction 0.01 --records-per-object 2000
  load F "$FULL/sizes.env"
  F_TOTAL_BYTES=$((F_GZ_BYTES + F_PLAIN_BYTES))
  (( F_TOTAL_BYTES >= ${MIN_BYTES:-2000000000} )) || die "the ingest set is only $F_TOTAL_BYTES bytes uncompressed (< MIN_BYTES): raise INGEST_RECORDS or BODY_BYTES"
  say "ingest set: $F_GZ_FILES .json.gz ($F_GZ_BYTES B uncompressed) + $F_PLAIN_BYTES B plain NDJSON"
  find "$FULL/logs" -type f -print0 | xargs -0 cat > /dev/null   # warm page cache: CPU, not disk

  declare -A IW IRSS
  # keep NAME: the series just measured as NAME's median wall and max RSS, and a note.
  keep() {
    IW[$1]=$(med "${walls[@]}"); IRSS[$1]=$(mx "${rsss[@]}")
    NOTES+=("ingest, $1: walls ${walls[*]} s; CPU ${cpus[*]} % of one core; other processes ${others[*]} cores")
  }
  say "ingest: gzip -dc x2, $RUNS runs"
  reset_series
  for i in $(seq "$RUNS"); do measure "gzip run $i" : /dev/null "${GZIP_FLOOR[@]}" "$FULL/logs"; done
  keep gzip
  say "ingest: tally, $RUNS cold runs"
  cold_runs tally "$FULL" F "$R"
  keep tally
  for engine in duckdb python; do
    say "ingest: $engine, $RUNS runs"
    if [[ $engine == duckdb ]]; then cmd=(tests/bench/duckdb_ingest.py --threads "$(nproc)"); else cmd=(tests/bench/baseline_parser.py); fi
    reset_series
    for i in $(seq "$RUNS"); do
      measure "$engine run $i" : "$R/$engine-$i.json" \
        $PY "${cmd[@]}" "$FULL/logs" --config "$FULL/tally.toml" --rollup "$R/$engine-rollup.json"
    done
    keep $engine
  done
  # Same records, duplicates and tokens, in total and per hour x resource, in every engine
  # (tally's store is the last cold run's).
  $PY tests/bench/ingest_check.py "$FULL/tally.sqlite" "$R/tally-$RUNS.json" "$FULL/truth.json" \
    python="$R/python-$RUNS.json,$R/python-rollup.json" duckdb="$R/duckdb-$RUNS.json,$R/duckdb-rollup.json" \
    || die "the ingest engines disagree (above): their timings compare nothing"

  mbs() { per_s "$1" "$2" 1e6; }
  T=("${IW[tally]}" "$(mbs "$F_TOTAL_BYTES" "${IW[tally]}") MB/s" "${IRSS[tally]}")
  row "ingest: tally vs Python parser (json.loads, 1 process) ¹" "${T[@]}" \
      "Python $PY_VERSION" "${IW[python]}" "$(mbs "$F_TOTAL_BYTES" "${IW[python]}") MB/s" "${IRSS[python]}" 12
  row "ingest: tally vs DuckDB read_json + GROUP BY, $(nproc) threads" "${T[@]}" \
      "DuckDB $DUCKDB_VERSION" "${IW[duckdb]}" "$(mbs "$F_TOTAL_BYTES" "${IW[duckdb]}") MB/s" "${IRSS[duckdb]}" 1.5
  row "ingest: tally vs gzip -dc, 2 cores (the floor) ²" "${T[@]}" \
      "gzip -dc ×2" "${IW[gzip]}" "$(mbs "$F_GZ_BYTES" "${IW[gzip]}") MB/s" "${IRSS[gzip]}" 1
  INGEST_DESC="ingest: $(num "$F_TRUTH_RECEIVED") log records ($(num "$F_TRUTH_COUNTED") counted), $(awk -v b="$F_TOTAL_BYTES" 'BEGIN { printf "%.2f", b / 1e9 }') GB uncompressed ($F_GZ_FILES .json.gz objects + $(awk -v b="$F_PLAIN_BYTES" 'BEGIN { printf "%.2f", b / 1e9 }') GB plain NDJSON), $INGEST_TENANTS tenants, warm page cache"
fi

# --- 2. reconcile -------------------------------------------------------------------------------
if part reconcile; then
  run_part reconcile env RECORDS="$RECONCILE_RECORDS" TENANTS=200 BENCH_DIR="$BENCH_DIR/reconcile-$CUR_LINES" \
    tests/bench/reconcile.sh "$CUR_LINES"
  lps() { per_s "$reconcile_cur_lines" "$1" 1e6 "%.2f"; }
  row "reconcile: tally vs DuckDB, equivalent SQL" "$reconcile_tally_wall" "$(lps "$reconcile_tally_wall") M lines/s" "$reconcile_tally_rss" \
      "DuckDB $reconcile_duckdb_version" "$reconcile_duckdb_wall" "$(lps "$reconcile_duckdb_wall") M lines/s" "$reconcile_duckdb_rss" 1
  NOTES+=("reconcile: tally walls $reconcile_tally_walls s; DuckDB walls $reconcile_duckdb_walls s")
  RECONCILE_DESC="reconcile: $(num "$reconcile_cur_lines") Bedrock CUR lines in $reconcile_files Parquet files ($(awk -v b="$reconcile_bytes" 'BEGIN { printf "%.0f", b / 1e6 }') MB), counters of $(num "$RECONCILE_RECORDS") records"
fi

# --- 3. serve -----------------------------------------------------------------------------------
if part serve; then
  run_part serve env AWS=0 TENANTS=200 RECORDS=100000 CONNS="$CONNS" DURATION="$DURATION" THREADS=1 \
    BENCH_DIR="$BENCH_DIR/serve" tests/bench/serve.sh
  for c in $CONNS; do
    v="serve_sqlite_c$c"; read -r rps p50 p90 p99 <<< "${!v}"
    met=$(awk -v r="$rps" -v p="$p99" 'BEGIN { print (r >= 5000 && p <= 2 ? "yes" : "**no**") }')
    row "GET /v1/quota under wrk, $c connections, 200 keys, SQLite" "—" "$(num "$rps") req/s (p50 $p50, p99 $p99 ms)" "$serve_sqlite_rss" \
        "—" "—" "—" "—" - "$met" "p99 ≤ 2 ms at ≥ 5,000 req/s"
  done
  SERVE_DESC="serve: wrk -t1 for ${DURATION}s per connection count on loopback, closed loop (wrk sends as fast as tally answers), cache_ms = 1000"
fi

# --- 4. invoices --------------------------------------------------------------------------------
if part invoice; then
  run_part invoice env RECORDS="$INVOICE_RECORDS" BENCH_DIR="$BENCH_DIR/invoice-$INVOICE_TENANTS" \
    tests/bench/invoice.sh "$INVOICE_TENANTS"
  for run in P F R; do
    w="invoice_${run}_WALL"; m="invoice_${run}_RSS"; d="invoice_${run}_DOCS"
    case $run in
      P) label="provisional"; target="≤ 2 s (README)" ;;
      F) label="final, first issue (v1)"; target="≤ 2 s (README)" ;;
      R) label="final re-run, nothing changed"; target="—" ;;
    esac
    met="—"; [[ $target != — ]] && met=$(awk -v w="${!w}" 'BEGIN { print (w <= 2 ? "yes" : "**no**") }')
    row "invoices, $(num "$INVOICE_TENANTS") tenants: $label" "${!w}" "$(num "$(per_s "$INVOICE_TENANTS" "${!w}")") tenants/s ($(num "${!d}") written)" "${!m}" \
        "—" "—" "—" "—" - "$met" "$target"
  done
  INVOICE_DESC="invoices: $(num "$INVOICE_TENANTS") tenants on the demo plans ($(num "$invoice_USED") with usage, $(num "$INVOICE_RECORDS") log records)"
fi

# --- the table ----------------------------------------------------------------------------------
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
{
  echo "Comparison benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores ($CPU_MODEL), tally $PROFILE build from $REV; median of $RUNS runs, peak RSS the max over them."
  echo
  for d in "${INGEST_DESC:-}" "${RECONCILE_DESC:-}" "${SERVE_DESC:-}" "${INVOICE_DESC:-}"; do [[ -n $d ]] && echo "- $d"; done
  echo
  echo "| comparison | tally wall s | tally throughput | tally peak RSS MB | baseline | baseline wall s | baseline throughput | baseline peak RSS MB | ratio (baseline wall / tally wall) | target | met |"
  echo "|---|---:|---:|---:|---|---:|---:|---:|---:|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  if part ingest; then
    echo "Ingest MB/s are of uncompressed input. The ingest engines read the same files and agree with the generator's truth on records, duplicates and every token total, in all and per UTC hour × resource (checked after the runs; the run fails otherwise)."
    echo "¹ One process and one thread, as in the AWS samples; tally and DuckDB use both cores. It attributes tenants by request metadata only (tally also by inference profile and IAM identity) and persists nothing."
    echo "² gzip decompresses the .json.gz objects only (its MB/s: of those); tally also reads the plain NDJSON. Its RSS is that of one gzip process."
  fi
  echo
  echo "Command: \`${KNOBS[*]:+${KNOBS[*]} }tests/bench/compare.sh\`. Each part's own table: $R/*.md."
  echo
  printf -- '- %s\n' "${NOTES[@]}"
} | tee "$BENCH_DIR/compare.md"
