#!/usr/bin/env bash
# DynamoDB write cost of ingest: write requests and write units per 1M records, next to the
# distinct counter keys the records fall into. Runs `tally ingest` on generated logs into a
# fresh table on moto server (started here, like tests/run-all.sh does), checks the counters
# against the generator's truth, and prints a markdown table on stdout.
#
# The counts are what tally sends, so they do not depend on the machine or on moto's speed;
# write units are DynamoDB's billing (1 per started KB of item, 2 inside a transaction).
#
# Usage, from anywhere:   tests/bench/dynamodb.sh
# Knobs (environment): RECORDS (default 1000000), TENANTS (50), HOURS (the records span the
#   month's first HOURS hours, default 24), BATCH (ingest.batch_records, default 50000),
#   BENCH_DIR (out/bench-dynamodb), REGEN=1 to regenerate the logs.
# HOURS is there for moto, whose TransactWriteItems copies the whole table (tests/moto_server.py):
# a month of 50 tenants' hourly items makes every transaction slow there, not on DynamoDB.
set -euo pipefail
cd "$(dirname "$0")/../.."

RECORDS=${RECORDS:-1000000}
TENANTS=${TENANTS:-50}
HOURS=${HOURS:-24}
BATCH=${BATCH:-50000}
BENCH_DIR=${BENCH_DIR:-out/bench-dynamodb}
REGEN=${REGEN:-0}
say() { echo "bench: $*" >&2; }

# The counts do not depend on optimisation, so the test build serves. `--all-targets` as in
# tests/run-all.sh: the same feature set, so no dependency is rebuilt for it.
cargo build --all-targets >&2
TALLY=target/debug/tally

source tests/moto.sh
start_moto

GEN="$BENCH_DIR/gen-$RECORDS-$TENANTS-$HOURS"
if [[ "$REGEN" == 1 || ! -f "$GEN/truth.json" ]]; then
  rm -rf "$GEN"
  say "generating $RECORDS records for $TENANTS tenants under $GEN"
  "$TALLY" generate --out "$GEN" --tenants "$TENANTS" --records "$RECORDS" --hours "$HOURS" --json >/dev/null
fi

TABLE="tally-bench-$$"
CONFIG="$BENCH_DIR/dynamodb-$$.toml"
python3 - "$GEN/tally.toml" "$CONFIG" "$TABLE" "$TALLY_TEST_AWS_ENDPOINT" "$BATCH" <<'PY'
import re, sys
src, dst, table, endpoint, batch = sys.argv[1:]
text = open(src).read()
store = '[store]\npath = "tally.sqlite"\n'
assert store in text, "generated config has no [store] section"
text = text.replace(store, f'[store]\nbackend = "dynamodb"\ntable = "{table}"\nendpoint_url = "{endpoint}"\nregion = "us-east-1"\n')
text = re.sub(r'(?m)^(quarantine|batch_records) = .*\n', '', text)
text = text.replace('[ingest]\n', f'[ingest]\nbatch_records = {batch}\nquarantine = "quarantine-{table}.jsonl"\n')
open(dst, "w").write(text)
PY
"$TALLY" --config "$CONFIG" init >&2
say "ingesting into $TABLE (batch_records = $BATCH)"
start=$(date +%s.%N)
"$TALLY" --config "$CONFIG" -q ingest --json "$GEN/logs" >"$BENCH_DIR/report-$$.json"
end=$(date +%s.%N)
"$TALLY" --config "$CONFIG" status --json >"$BENCH_DIR/status-$$.json"

python3 - "$GEN/truth.json" "$BENCH_DIR/report-$$.json" "$start" "$end" "$BATCH" <<'PY'
import json, sys
truth = json.load(open(sys.argv[1]))
report = json.load(open(sys.argv[2]))
secs = float(sys.argv[4]) - float(sys.argv[3])
batch = sys.argv[5]
rows = truth["rows"]
assert report["counted"] == truth["counted"], (report["counted"], truth["counted"])
assert report["duplicates"] == truth["duplicates"], (report["duplicates"], truth["duplicates"])
hours = len(rows)
days = len({(r["tenant"], r["hour"][:10], r["resource"]) for r in rows})
months = len({(r["tenant"], r["hour"][:7], r["resource"]) for r in rows})
tenant_months = len({(r["tenant"], r["hour"][:7]) for r in rows})
clock_hours = len({r["hour"] for r in rows})
w = report["store_writes"]
received = report["received"]
per_m = lambda v: v * 1e6 / received
keys = hours + days + months + tenant_months
print(f"records received {received:,}, counted {report['counted']:,}, in {report['batches']} batches of up to {batch}; {secs:.0f} s against moto\n")
print("| what | count | per 1M records |")
print("|---|---:|---:|")
print(f"| distinct hourly keys (tenant × hour × resource) | {hours:,} | {per_m(hours):,.0f} |")
print(f"| distinct counter items (hour + day + month + tenant-month) | {keys:,} | {per_m(keys):,.0f} |")
print(f"| UTC hours with records (dedup buckets: up to 64 each) | {clock_hours:,} | |")
print(f"| DynamoDB write requests (items written) | {w['write_requests']:,} | {per_m(w['write_requests']):,.0f} |")
print(f"| DynamoDB write units (billed) | {w['write_units']:,.0f} | {per_m(w['write_units']):,.0f} |")
print(f"| TransactWriteItems calls | {w['transactions']:,} | {per_m(w['transactions']):,.0f} |")
print(f"| read requests | {w['read_requests']:,} | {per_m(w['read_requests']):,.0f} |")
print(f"\nwrite requests per distinct counter item: {w['write_requests'] / keys:.2f}; per record: {w['write_requests'] / received:.3f}")
PY
