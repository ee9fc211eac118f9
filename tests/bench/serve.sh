#!/usr/bin/env bash
# Live-meter benchmark: `wrk` on loopback against GET /v1/quota, the call a rate limiter makes
# in front of every model request. Counters from `tally generate` (TENANTS tenants, each with a
# key; wrk rotates over the keys), on SQLite, and on DynamoDB when AWS=1 (moto, started here).
# Reports requests/s and latency p50/p90/p99 for each connection count in CONNS. Prints a
# markdown table on stdout (progress goes to stderr).
#
# Usage, from the repo root:   tests/bench/serve.sh
#
# Knobs (environment):
#   PROFILE     release (default) or dev
#   CARGO_TARGET_DIR  where that build goes (default: target)
#   TENANTS     tenants and keys (default: 200);  RECORDS  log records over the month's first 24 hours (default: 100000)
#   CONNS       wrk connection counts (default: "10 50");  DURATION  seconds each (default: 15)
#   THREADS     wrk threads (default: 1: tally and wrk share the machine's two cores)
#   AWS=1       also on DynamoDB (moto); AWS_RECORDS log records there (default: 5000: moto
#               applies a transaction in seconds once a table is big, so its ingest is slow),
#               and AWS_KEYS tenant keys in rotation (default: 1; moto answers a Query in 100+
#               of ms under one lock, so cache misses, not tally, bound the rate there)
#   SKIP_BUILD=1 use the existing binary
#   SUMMARY     a file to append the figures to as KEY=VALUE lines (tests/bench/compare.sh)
set -euo pipefail
source "$(dirname "$0")/lib.sh"   # helpers; the shell is now in the repo root

PROFILE=${PROFILE:-release}
TENANTS=${TENANTS:-200}
RECORDS=${RECORDS:-100000}
CONNS=${CONNS:-"10 50"}
DURATION=${DURATION:-15}
THREADS=${THREADS:-1}
BENCH_DIR=${BENCH_DIR:-out/bench/serve}
MONTH=$(date -u +%Y-%m)

command -v wrk >/dev/null || die "wrk missing: apt-get install wrk"

# The dev build is built as tests/run-all.sh builds it (all targets, `aws`), so the two share
# one build instead of replacing each other's binary.
if [[ $PROFILE == release ]]; then build_tally --bin tally; else build_tally --all-targets; fi

rm -rf "$BENCH_DIR" && mkdir -p "$BENCH_DIR"
say "generating $RECORDS records for $TENANTS tenants in $MONTH"
"$TALLY" -q generate --out "$BENCH_DIR/gen" --tenants "$TENANTS" --records "$RECORDS" --month "$MONTH" --hours 24 >&2

# Every tenant on a quota plan with a daily limit, and a key each (the keys go to wrk's script).
keys_toml() {
  printf '\n[plans.bench]\nkind = "quota"\nmonthly_fee = "10"\nincluded = 1000000000000\noverage_rate = "0.001"\nrequests_per_day = 1000000\n'
  printf '\n[serve]\ncache_ms = 1000\n\n[serve.alerts]\ncheck_seconds = 3600\nledger = "alerts.jsonl"\n'
  : > "$BENCH_DIR/keys.txt"
  for k in $(seq 0 $((TENANTS - 1))); do
    local t key
    t=$(printf 'tenant-%04d' "$k")
    key="tly_bench_$t"
    echo "$key" >> "$BENCH_DIR/keys.txt"
    printf '\n[tenants.%s]\nplan = "bench"\n\n[[serve.keys]]\nhash = "%s"\ntenant = "%s"\n' "$t" "$(echo "$key" | "$TALLY" key hash)" "$t"
  done
}


ROWS=()
# bench BACKEND CONFIG KEYS: starts serve, checks one answer, runs wrk for each connection
# count with the first KEYS tenant keys in rotation.
bench() {
  local backend=$1 config=$2 nkeys=$3
  head -n "$nkeys" "$BENCH_DIR/keys.txt" > "$BENCH_DIR/keys-$backend.txt"
  : > "$BENCH_DIR/serve-$backend.out"   # before the background job opens it: the loop below reads it at once
  "$TALLY" -q --config "$config" serve --listen 127.0.0.1:0 > "$BENCH_DIR/serve-$backend.out" 2> "$BENCH_DIR/serve-$backend.log" &
  local pid=$!
  local addr=""
  for _ in $(seq 100); do
    addr=$(sed -n 's|^listening on http://||p' "$BENCH_DIR/serve-$backend.out")
    [[ -n $addr ]] && break
    sleep 0.1
  done
  [[ -n $addr ]] || { kill $pid; die "serve did not start: $(cat "$BENCH_DIR/serve-$backend.log")"; }
  local status
  status=$(curl -fsS -H "Authorization: Bearer $(head -1 "$BENCH_DIR/keys.txt")" "http://$addr/v1/quota" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  [[ $status == ok ]] || die "unexpected quota answer on $backend: $status"
  # The alert check at start reads every tenant's hours (on DynamoDB a Query per tenant): let it
  # finish, so wrk measures the quota path alone (check_seconds = 3600 keeps it from recurring).
  sleep "${SETTLE:-5}"
  for c in $CONNS; do
    say "$backend: wrk -t$THREADS -c$c -d${DURATION}s"
    wrk -t"$THREADS" -c"$c" -d"${DURATION}s" --latency -s tests/bench/rotate.lua "http://$addr/v1/quota" -- "$BENCH_DIR/keys-$backend.txt" > "$BENCH_DIR/wrk-$backend-$c.txt"
    read -r rps p50 p90 p99 _ bad errs < <(sed -n 's/^RESULT //p' "$BENCH_DIR/wrk-$backend-$c.txt")
    [[ $bad == 0 && $errs == 0 ]] || { kill $pid; die "$backend -c$c: $bad non-2xx answers, $errs socket errors"; }
    ROWS+=("| $backend | $nkeys | $c | $rps | $p50 | $p90 | $p99 |")
    summary "${backend//-/_}_c${c}" "'$rps $p50 $p90 $p99'"
  done
  local rss
  rss=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' /proc/$pid/status)
  ROWS+=("| $backend: serve peak RSS $rss MB | | | | | | |")
  summary "${backend//-/_}_rss" "$rss"
  kill -TERM $pid && wait $pid || true
}

# SQLite
SQ="$BENCH_DIR/sqlite"
mkdir -p "$SQ"
cp "$BENCH_DIR/gen/tally.toml" "$SQ/tally.toml"
keys_toml >> "$SQ/tally.toml"
sed -i "s|^path = .*|path = \"tally.sqlite\"|" "$SQ/tally.toml"
"$TALLY" -q --config "$SQ/tally.toml" ingest "$BENCH_DIR/gen/logs" >&2
bench sqlite "$SQ/tally.toml" "$TENANTS"

if [[ ${AWS:-0} == 1 ]]; then
  source tests/moto.sh
  start_moto
  DY="$BENCH_DIR/dynamodb"
  mkdir -p "$DY"
  # The generated config's [store] section is replaced by a DynamoDB one on moto.
  awk '/^\[store\]/ {skip = 1; next} /^\[/ {skip = 0} !skip' "$BENCH_DIR/gen/tally.toml" > "$DY/tally.toml"
  printf '\n[store]\nbackend = "dynamodb"\ntable = "tally-bench"\nendpoint_url = "%s"\nregion = "us-east-1"\n' "$TALLY_TEST_AWS_ENDPOINT" >> "$DY/tally.toml"
  keys_toml >> "$DY/tally.toml"
  "$TALLY" -q --config "$DY/tally.toml" init >&2
  "$TALLY" -q generate --out "$BENCH_DIR/gen-aws" --tenants "$TENANTS" --records "${AWS_RECORDS:-5000}" --month "$MONTH" --hours 24 >&2
  "$TALLY" -q --config "$DY/tally.toml" ingest "$BENCH_DIR/gen-aws/logs" >&2
  bench dynamodb-moto "$DY/tally.toml" "${AWS_KEYS:-1}"
fi

echo "GET /v1/quota under wrk ($THREADS thread, ${DURATION}s per row, cache_ms = 1000), $(nproc) cores, $PROFILE build:"
echo
echo "| backend | keys in rotation | connections | requests/s | p50 ms | p90 ms | p99 ms |"
echo "|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
