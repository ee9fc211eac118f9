#!/usr/bin/env bash
# Invoice benchmark: `tally invoice` for N tenants (default 100,000), every one on a plan (the
# five demo plans in turn), wall time and peak RSS under /usr/bin/time -v, for
#   1. provisional — the period not reconciled: counters + estimates, N drafts written;
#   2. provisional, re-run — nothing changed: N drafts rendered, found on disk as they are, none
#      written;
#   3. final, first issue — after reconcile: N version-1 documents written;
#   4. final, re-run — nothing changed: N documents read back, nothing new written.
# Each run also rewrites invoice_lines.csv/.parquet and margin.csv. Prints a markdown table on
# stdout (progress goes to stderr).
#
# Usage, from the repo root:   tests/bench/invoice.sh [TENANTS]
#
# Knobs (environment):
#   PROFILE     dev (default) or release: which build of tally to time
#   CARGO_TARGET_DIR  where that build goes (default: target)
#   BENCH_DIR   data and results (default: out/bench/invoice-<TENANTS>)
#   RUNS        timed runs of each case, the median is reported (default: 3)
#   RECORDS     invocation-log records behind the counters (default: 300000)
#   SKIP_BUILD=1 use the existing binary;  REGEN=1 regenerate the data
#   SUMMARY     a file to append the figures to as KEY=VALUE lines (tests/bench/compare.sh)
#   FREED_WAIT  seconds to leave between the last invocation's clean-up and this one's first
#               run (default 360; see the README on ext4's recently freed inodes)
set -euo pipefail
source "$(dirname "$0")/lib.sh"   # helpers; the shell is now in the repo root

TENANTS=${1:-100000}
PROFILE=${PROFILE:-dev}
BENCH_DIR=${BENCH_DIR:-out/bench/invoice-$TENANTS}
RUNS=${RUNS:-3}
RECORDS=${RECORDS:-300000}
MONTH=2025-11

need_time
build_tally
CONFIG="$BENCH_DIR/tally.toml"

# --- data -------------------------------------------------------------------
if stale "$BENCH_DIR"; then
  say "generating $RECORDS log records for $TENANTS tenants, a plan for each, ingesting, billing them in CUR"
  "$TALLY" -q generate --out "$BENCH_DIR" --tenants "$TENANTS" --records "$RECORDS" --month $MONTH >&2
  cat fixtures/invoice/demo-plans.toml >> "$CONFIG"
  awk -v n="$TENANTS" 'BEGIN {
    split("pro payg team starter pro-credits", plan, " ");
    for (k = 0; k < n; k++) {
      p = plan[k % 5 + 1];
      printf "\n[tenants.tenant-%04d]\nplan = \"%s\"\n", k, p;
      if (p == "team") printf "seats = %d\n", 3 + k % 7;
    }
  }' >> "$CONFIG"
  "$TALLY" -q --config "$CONFIG" ingest "$BENCH_DIR/logs" >&2
  "$TALLY" -q generate-cur --fixtures "$BENCH_DIR" --month $MONTH >&2
  "$TALLY" -q --config "$CONFIG" reconcile --period $MONTH --cur "$BENCH_DIR/cur/cur2" --out "$BENCH_DIR/final" >&2
  touch "$BENCH_DIR/.ready"
fi
USED=$("$TALLY" -q --config "$CONFIG" sql --csv --period $MONTH --out "$BENCH_DIR/final" "SELECT count(DISTINCT tenant) FROM usage" | tail -1)

# --- timed runs --------------------------------------------------------------
# run NAME OUT PREPARE: times `tally invoice` RUNS times (PREPARE runs before each, untimed);
# prints "wall_s rss_mb documents" of the median run.
run() {
  local name=$1 out=$2 prepare=$3 results=()
  for i in $(seq "$RUNS"); do
    eval "$prepare"
    timed "$BENCH_DIR/$name.txt" "$TALLY" -q --config "$CONFIG" invoice --period $MONTH --out "$out" || die "tally invoice failed ($name)"
    local written
    written=$(grep -o -m1 '^[0-9]* documents written' "$BENCH_DIR/$name.txt" | cut -d' ' -f1)
    say "$name run $i: ${WALL}s, ${RSS} MB, $written documents written"
    results+=("$WALL $RSS $written")
  done
  printf '%s\n' "${results[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"
}

# A run's documents are moved aside before the next, not deleted, and deleted when the script
# ends: on ext4 without a journal (this VM's disk), for minutes after 100,000 files are deleted
# every create scans past their inodes (the kernel's recently_deleted check), which made runs
# right after an `rm -rf` take 50 s instead of 4 s. What is timed is then tally, not the
# aftermath of the benchmark's own clean-up.
TRASH="$BENCH_DIR/.trash"
# On ext4 without a journal, inodes freed in the last few minutes slow every create (see the
# README): a run that follows the last invocation's clean-up too closely waits for it to age.
DELETED="$BENCH_DIR/.trash-deleted"
FREED_WAIT=${FREED_WAIT:-360}
if [[ -e $DELETED ]]; then
  left=$(( FREED_WAIT - ($(date +%s) - $(stat -c %Y "$DELETED")) ))
  if (( left > 0 )); then
    say "waiting $left s for the last run's freed inodes to age (FREED_WAIT=0 skips)"
    sleep "$left"
  fi
fi
rm -rf "$TRASH"; mkdir -p "$TRASH"
trap 'rm -rf "$TRASH"; touch "$DELETED"' EXIT
retire() { if [[ -e $1 ]]; then mv "$1" "$(mktemp -d "$TRASH/XXXXXX")/"; fi; }

mkdir -p "$BENCH_DIR/provisional"
read -r P_WALL P_RSS P_DOCS < <(run provisional "$BENCH_DIR/provisional" "retire '$BENCH_DIR/provisional/$MONTH/invoices'")
read -r Q_WALL Q_RSS Q_DOCS < <(run provisional-rerun "$BENCH_DIR/provisional" ":")
read -r F_WALL F_RSS F_DOCS < <(run final-first "$BENCH_DIR/final" "retire '$BENCH_DIR/final/$MONTH/invoices'")
read -r R_WALL R_RSS R_DOCS < <(run final-rerun "$BENCH_DIR/final" ":")
[[ $P_DOCS == "$TENANTS" && $Q_DOCS == 0 && $F_DOCS == "$TENANTS" && $R_DOCS == 0 ]] \
  || die "expected $TENANTS, 0, $TENANTS and 0 documents written, got $P_DOCS, $Q_DOCS, $F_DOCS, $R_DOCS"

for v in P_WALL P_RSS P_DOCS Q_WALL Q_RSS Q_DOCS F_WALL F_RSS F_DOCS R_WALL R_RSS R_DOCS USED; do summary "$v" "${!v}"; done

echo "Invoices for $TENANTS tenants ($USED with usage; $RECORDS log records), $(nproc) cores, $PROFILE build, median of $RUNS:"
echo
echo "| run | documents written | wall s | peak RSS MB |"
echo "|---|---:|---:|---:|"
echo "| provisional (not reconciled) | $P_DOCS | $P_WALL | $P_RSS |"
echo "| provisional, re-run, nothing changed (drafts left as they are) | $Q_DOCS | $Q_WALL | $Q_RSS |"
echo "| final, first issue (v1) | $F_DOCS | $F_WALL | $F_RSS |"
echo "| final, re-run, nothing changed | $R_DOCS | $R_WALL | $R_RSS |"
