#!/usr/bin/env bash
# Reconcile benchmark: `tally reconcile` over N generated CUR 2.0 lines (default 10M) plus the
# matching counters, wall time and peak RSS, side by side with DuckDB (from PyPI, in .venv)
# running the equivalent SQL over the same files: the period's Bedrock lines summed per day ×
# resource × usage type × tag with exact decimals, joined to the counters and split by tokens,
# written as Parquet. Prints a markdown table on stdout (progress goes to stderr).
#
# Usage, from the repo root:   tests/bench/reconcile.sh [LINES]
#
# Knobs (environment):
#   PROFILE     release (default) or dev: which build of tally to time (dev builds every
#               dependency, DataFusion included, at opt-level 2; only tally itself at 1)
#   BENCH_DIR   data and results (default: out/bench/reconcile-<LINES>)
#   RUNS        timed runs of each engine, the median is reported (default: 3)
#   RECORDS     invocation-log records behind the counters (default: 300000)
#   TENANTS     (default: 200)
#   SKIP_BUILD=1 use the existing binary;  REGEN=1 regenerate the data
#   SUMMARY     a file to append the figures to as KEY=VALUE lines (tests/bench/compare.sh)
set -euo pipefail
source "$(dirname "$0")/lib.sh"   # helpers; the shell is now in the repo root

LINES=${1:-10000000}
PROFILE=${PROFILE:-release}
BENCH_DIR=${BENCH_DIR:-out/bench/reconcile-$LINES}
RUNS=${RUNS:-3}
RECORDS=${RECORDS:-300000}
TENANTS=${TENANTS:-200}
MONTH=2025-11

need_time
build_tally
need_duckdb

# --- data -------------------------------------------------------------------
CUR="$BENCH_DIR/cur/cur2/tally-export"
if stale "$BENCH_DIR"; then
  say "generating $RECORDS log records for $TENANTS tenants, ingesting them, billing them in >= $LINES CUR lines"
  "$TALLY" -q generate --out "$BENCH_DIR" --tenants "$TENANTS" --records "$RECORDS" --month $MONTH >&2
  "$TALLY" -q --config "$BENCH_DIR/tally.toml" ingest "$BENCH_DIR/logs" >&2
  "$TALLY" -q generate-cur --fixtures "$BENCH_DIR" --month $MONTH --lines "$LINES" --rows-per-file 1000000 >&2
  touch "$BENCH_DIR/.ready"
fi
FILES=$(find "$CUR" -name '*.parquet' | wc -l)
BYTES=$(find "$CUR" -name '*.parquet' -printf '%s\n' | awk '{s+=$1} END {print s}')

# One tally run first writes usage.parquet, the counters DuckDB joins against (tally reads
# them from its SQLite store itself).
"$TALLY" -q --config "$BENCH_DIR/tally.toml" reconcile --period $MONTH --cur "$CUR" --out "$BENCH_DIR/out-tally" --json > "$BENCH_DIR/tally-report.json"

cat > "$BENCH_DIR/duckdb_reconcile.py" <<PY
import duckdb, sys
con = duckdb.connect()
con.execute("SET threads TO $(nproc)")
con.execute("""
COPY (
WITH cur AS (
  SELECT CAST(line_item_usage_start_date AS DATE) AS day,
         line_item_line_item_type AS line_item_type,
         coalesce(line_item_resource_id, '') AS resource,
         line_item_usage_type AS usage_type,
         nullif(trim(resource_tags['user_tenant']), '') AS tag,
         sum(CAST(line_item_usage_amount AS DECIMAL(38,10))) AS quantity,
         sum(CAST(line_item_unblended_cost AS DECIMAL(38,10))) AS cost,
         count(*) AS lines
  FROM read_parquet('$CUR/**/*.parquet', union_by_name = true, hive_partitioning = false)
  WHERE (line_item_product_code = 'AmazonBedrock' OR product['product_name'] LIKE '%Amazon Bedrock%')
    AND bill_billing_period_start_date >= TIMESTAMP '$MONTH-01' AND bill_billing_period_start_date < TIMESTAMP '2025-12-01'
  GROUP BY ALL
), lines AS (
  SELECT *, CASE WHEN usage_type LIKE '%cache-read%' OR usage_type LIKE '%CacheRead%' THEN 'cache_read'
                 WHEN usage_type LIKE '%cache-write%' OR usage_type LIKE '%CacheWrite%' THEN 'cache_write'
                 WHEN usage_type LIKE '%input-token%' OR usage_type LIKE '%InputToken%' THEN 'input'
                 WHEN usage_type LIKE '%output-token%' OR usage_type LIKE '%OutputToken%' THEN 'output'
                 ELSE 'other' END AS token_type,
         regexp_extract(resource, '[^/]*$') AS key
  FROM cur WHERE line_item_type = 'Usage'
), used AS (
  SELECT day, regexp_extract(resource, '[^/]*$') AS key, tenant,
         sum(input) AS input, sum(output) AS output, sum(cache_read) AS cache_read, sum(cache_write) AS cache_write
  FROM read_parquet('$BENCH_DIR/out-tally/$MONTH/usage.parquet') GROUP BY ALL
), split AS (
  SELECT l.day, l.resource, l.token_type, u.tenant, l.cost,
         CASE l.token_type WHEN 'input' THEN u.input WHEN 'output' THEN u.output
              WHEN 'cache_read' THEN u.cache_read WHEN 'cache_write' THEN u.cache_write ELSE 0 END AS w
  FROM lines l JOIN used u ON u.day = strftime(l.day, '%Y-%m-%d') AND u.key = l.key
  WHERE l.tag IS NULL AND l.resource <> ''
)
SELECT tenant, day, resource, token_type,
       sum(cost * w / nullif(total_w, 0)) AS cost
FROM (SELECT *, sum(w) OVER (PARTITION BY day, resource, token_type, cost) AS total_w FROM split WHERE w > 0)
GROUP BY ALL ORDER BY ALL
) TO '$BENCH_DIR/duckdb-allocation.parquet' (FORMAT parquet)
""")
if len(sys.argv) > 1:
    total = con.execute("""SELECT sum(CAST(line_item_unblended_cost AS DECIMAL(38,10))) FROM read_parquet('$CUR/**/*.parquet', union_by_name = true)
      WHERE (line_item_product_code = 'AmazonBedrock' OR product['product_name'] LIKE '%Amazon Bedrock%') AND line_item_line_item_type = 'Usage'
        AND bill_billing_period_start_date >= TIMESTAMP '$MONTH-01' AND bill_billing_period_start_date < TIMESTAMP '2025-12-01'""").fetchone()[0]
    print(total)
PY

# --- timing -----------------------------------------------------------------
declare -A MED_WALL MAX_RSS ALL_WALLS
for engine in tally duckdb; do
  walls=(); rsss=()
  for ((i = 1; i <= RUNS; i++)); do
    if [[ $engine == tally ]]; then
      timed /dev/null "$TALLY" -q --config "$BENCH_DIR/tally.toml" reconcile --period $MONTH --cur "$CUR" --out "$BENCH_DIR/out-tally" \
        || die "tally reconcile failed"
    else
      timed /dev/null .venv/bin/python "$BENCH_DIR/duckdb_reconcile.py" || die "the DuckDB query failed"
    fi
    say "$engine run $i: ${WALL}s, ${RSS} MB (load $(cut -d' ' -f1 /proc/loadavg))"
    walls+=("$WALL"); rsss+=("$RSS")
  done
  MED_WALL[$engine]=$(med "${walls[@]}")
  MAX_RSS[$engine]=$(mx "${rsss[@]}")
  ALL_WALLS[$engine]="${walls[*]}"
done

# Both engines must have read the same bill.
TALLY_TOTAL=$(.venv/bin/python -c "import json; print(json.load(open('$BENCH_DIR/tally-report.json'))['usage_cost'])")
DUCK_TOTAL=$(.venv/bin/python "$BENCH_DIR/duckdb_reconcile.py" check)
[[ $TALLY_TOTAL == "$DUCK_TOTAL" ]] || die "the engines read different bills: tally $TALLY_TOTAL, duckdb $DUCK_TOTAL"
say "both engines read Bedrock usage cost $TALLY_TOTAL"

CUR_LINES=$(.venv/bin/python -c "import json; print(json.load(open('$BENCH_DIR/tally-report.json'))['cur_lines'])")
for engine in tally duckdb; do
  summary "${engine}_wall" "${MED_WALL[$engine]}"; summary "${engine}_rss" "${MAX_RSS[$engine]}"
  summary "${engine}_walls" "'${ALL_WALLS[$engine]}'"
done
summary cur_lines "$CUR_LINES"; summary files "$FILES"; summary bytes "$BYTES"; summary duckdb_version "$DUCKDB_VERSION"

echo "Reconcile of $MONTH: $(printf "%'d" "$CUR_LINES") Bedrock CUR lines in $FILES Parquet files ($(awk "BEGIN {printf \"%.0f\", $BYTES / 1e6}") MB), counters of $RECORDS records; $(nproc) cores; tally $PROFILE build; DuckDB $DUCKDB_VERSION; median of $RUNS runs, max RSS."
echo
echo "| engine | wall s | peak RSS MB |"
echo "|---|---:|---:|"
echo "| \`tally reconcile\` (load, allocate, drift, check, write 6 tables) | ${MED_WALL[tally]} | ${MAX_RSS[tally]} |"
echo "| DuckDB, equivalent SQL (aggregate, join counters, split, write Parquet) | ${MED_WALL[duckdb]} | ${MAX_RSS[duckdb]} |"
