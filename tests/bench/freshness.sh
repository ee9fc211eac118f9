#!/usr/bin/env bash
# Freshness of the AWS sources: the time from a record landing in S3 (PutObject returned) or
# in CloudWatch Logs (PutLogEvents returned) to its counter moving in the store, with
# `tally ingest --follow` on both sources against moto server (started here, like
# tests/run-all.sh does). Prints a markdown table on stdout.
#
# What it measures is tally's loop: the poll interval, listing, fetching, decoding and the
# commit. moto answers in a millisecond or two where AWS takes tens, so against AWS add a few
# list/get round trips (and S3's and CloudWatch's own delivery delay, which is Bedrock's, not
# tally's).
#
# Usage, from anywhere:   tests/bench/freshness.sh
# Knobs (environment): POLLS (ingest.poll_seconds values, default "1.0 0.2"), N (records per
#   source and poll value, default 40), BENCH_DIR (out/bench-freshness).
set -euo pipefail
cd "$(dirname "$0")/../.."

POLLS=${POLLS:-"1.0 0.2"}
N=${N:-40}
BENCH_DIR=${BENCH_DIR:-out/bench-freshness}
say() { echo "bench: $*" >&2; }

# Freshness is the poll loop and a few round trips, not CPU: the test build serves.
cargo build --all-targets >&2  # as tests/run-all.sh: nothing rebuilt
TALLY=target/debug/tally

source tests/moto.sh
start_moto

mkdir -p "$BENCH_DIR"
echo "| poll_seconds | source | records | p50 ms | p90 ms | max ms |"
echo "|---:|---|---:|---:|---:|---:|"
for poll in $POLLS; do
  dir="$BENCH_DIR/poll-$poll"
  rm -rf "$dir" && mkdir -p "$dir"
  say "poll_seconds = $poll: $N records per source"
  .venv/bin/python tests/bench/freshness.py --tally "$TALLY" --dir "$dir" --endpoint "$TALLY_TEST_AWS_ENDPOINT" \
    --poll "$poll" --n "$N"
done
say "host: $(nproc) cores, $(uname -sr); $(date -u +%Y-%m-%dT%H:%MZ)"
