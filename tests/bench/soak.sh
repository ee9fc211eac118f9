#!/usr/bin/env bash
# Soak run: `tally ingest --follow` on a folder that keeps receiving logs, and `tally serve` on
# the same SQLite store under `wrk` (GET /v1/quota, rotating tenant keys), for DURATION seconds.
#
# The logs: one `tally generate` set of RATE x DURATION records (TENANTS tenants, a share DUP of
# records delivered twice) is made in a staging folder and delivered into the watched folder
# evenly over DURATION (tests/bench/soak.py deliver): the .json.gz objects by rename (whole
# files appearing), the plain .ndjson files by appending lines to growing files, some writes
# ending inside a line. Everything is delivered, so the set's truth.json is the truth.
#
# Every SAMPLE s the RSS (VmRSS) of both processes and the store's counted total go to
# BENCH_DIR/rss.csv. After DURATION delivery stops; once ingest has caught up (the store's
# received total equals the truth's, at most CATCHUP_TIMEOUT s), serve's /v1/tenants is read
# with an admin key, then follow is stopped with SIGTERM (must exit 0), then serve.
#
# Verdicts (markdown table on stdout; exit 1 if any FAILs):
#   exact: store totals, the follow run's report (which must balance), every counters_hour row
#          (tenant x hour x resource) and serve's per-tenant totals all equal truth.json;
#   flat:  per process, over [WARMUP, DURATION]: max RSS in the last half <= 1.2 x max RSS in
#          the first half;
#   wrk:   no non-2xx answers and no socket errors.
#
# Usage, from the repo root:   tests/bench/soak.sh                      (10 minutes)
#                              DURATION=60 RATE=100 tests/bench/soak.sh (a smoke run)
#
# Knobs (environment):
#   DURATION  seconds of delivery and wrk (default: 600)
#   RATE      records per second delivered (default: 500), as `tally generate --records`
#             RATE x DURATION; plus the duplicates and the two skipped permission-check markers
#   TENANTS   tenants, each with a key in wrk's rotation (default: 50);  DUP  duplicate share (0.02)
#   TALLY     the binary (default: target/release/tally, else target/debug/tally; not built here)
#   BENCH_DIR the run's folder, deleted first (default: out/bench/soak)
#   CONNS     wrk connections (default: 10);  THREADS  wrk threads (default: 1)
#   POLL      ingest.poll_seconds (default: 1);  CACHE_MS  serve.cache_ms (default: 1000)
#   ALERT_SECONDS  serve.alerts.check_seconds (default: 30, so the alert loop runs during the soak)
#   SAMPLE    seconds between RSS samples (default: 10)
#   WARMUP    seconds before the steady state (default: 60, or DURATION/4 when DURATION < 240)
#   CATCHUP_TIMEOUT  seconds to wait for ingest to catch up after delivery (default: 300)
#   SUMMARY   a file to append the figures to as KEY=VALUE lines
set -euo pipefail
source "$(dirname "$0")/lib.sh"   # helpers; the shell is now in the repo root

DURATION=${DURATION:-600}
RATE=${RATE:-500}
TENANTS=${TENANTS:-50}
DUP=${DUP:-0.02}
CONNS=${CONNS:-10}
THREADS=${THREADS:-1}
POLL=${POLL:-1}
CACHE_MS=${CACHE_MS:-1000}
ALERT_SECONDS=${ALERT_SECONDS:-30}
SAMPLE=${SAMPLE:-10}
if (( DURATION >= 240 )); then WARMUP=${WARMUP:-60}; else WARMUP=${WARMUP:-$((DURATION / 4))}; fi
CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-300}
BENCH_DIR=${BENCH_DIR:-out/bench/soak}
MONTH=$(date -u +%Y-%m)

if [[ -z ${TALLY:-} ]]; then
  TALLY=target/release/tally
  [[ -x $TALLY ]] || TALLY=target/debug/tally
fi
[[ -x $TALLY ]] || die "no tally binary at $TALLY (build one, or set TALLY)"
command -v wrk >/dev/null || die "wrk missing: apt-get install wrk"
command -v curl >/dev/null || die "curl missing: apt-get install curl"
(( WARMUP < DURATION )) || die "WARMUP ($WARMUP) must be below DURATION ($DURATION)"

rm -rf "$BENCH_DIR" && mkdir -p "$BENCH_DIR"
B=$(cd "$BENCH_DIR" && pwd)   # absolute: the config's relative paths resolve against its folder
RECORDS=$((RATE * DURATION))
RPO=$(( RATE > 50 ? RATE : 50 ))   # records per .json.gz object: about one object a second
say "generating $RECORDS records for $TENANTS tenants in $MONTH (${DUP} delivered twice), $TALLY"
"$TALLY" -q generate --out "$B/gen" --tenants "$TENANTS" --records "$RECORDS" --month "$MONTH" --hours 24 \
  --duplicate-fraction "$DUP" --records-per-object "$RPO" >&2
mkdir -p "$B/watched"

# The generated config (store tally.sqlite next to it), a poll interval, every tenant on a quota
# plan with a key (for wrk), and an admin key (for the final /v1/tenants read).
cp "$B/gen/tally.toml" "$B/tally.toml"
sed -i "s|^path = .*|path = \"tally.sqlite\"|" "$B/tally.toml"
sed -i "/^\[ingest\]/a poll_seconds = $POLL" "$B/tally.toml"
grep -q "^poll_seconds = $POLL" "$B/tally.toml" || die "could not set ingest.poll_seconds in $B/tally.toml"
ADMIN_KEY=tly_soak_admin
{
  printf '\n[plans.soak]\nkind = "quota"\nmonthly_fee = "10"\nincluded = 1000000000000\noverage_rate = "0.001"\nrequests_per_day = 1000000\n'
  printf '\n[serve]\ncache_ms = %s\n\n[serve.alerts]\ncheck_seconds = %s\nledger = "alerts.jsonl"\n' "$CACHE_MS" "$ALERT_SECONDS"
  printf '\n[[serve.keys]]\nhash = "%s"\nadmin = true\n' "$(echo "$ADMIN_KEY" | "$TALLY" key hash)"
  : > "$B/keys.txt"
  for k in $(seq 0 $((TENANTS - 1))); do
    t=$(printf 'tenant-%04d' "$k"); key="tly_soak_$t"
    echo "$key" >> "$B/keys.txt"
    printf '\n[tenants.%s]\nplan = "soak"\n\n[[serve.keys]]\nhash = "%s"\ntenant = "%s"\n' "$t" "$(echo "$key" | "$TALLY" key hash)" "$t"
  done
} >> "$B/tally.toml"


T=("$TALLY" -q --config "$B/tally.toml")
"${T[@]}" init >&2

# Processes started here; the trap stops whichever are still running, by pid.
INGEST_PID="" SERVE_PID="" DELIVER_PID="" WRK_PID=""
cleanup() {
  local p
  for p in $WRK_PID $DELIVER_PID $INGEST_PID $SERVE_PID; do kill -TERM "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"${T[@]}" ingest --follow --json "$B/watched" > "$B/follow.json" 2> "$B/follow.log" &
INGEST_PID=$!
: > "$B/serve.out"
"${T[@]}" serve --listen 127.0.0.1:0 > "$B/serve.out" 2> "$B/serve.log" &
SERVE_PID=$!
ADDR=""
for _ in $(seq 300); do
  ADDR=$(sed -n 's|^listening on http://||p' "$B/serve.out")
  [[ -n $ADDR ]] && break
  sleep 0.1
done
[[ -n $ADDR ]] || die "serve did not start: $(cat "$B/serve.log")"
kill -0 "$INGEST_PID" 2>/dev/null || die "ingest --follow exited at start: $(cat "$B/follow.log")"
status=$(curl -fsS -H "Authorization: Bearer $(head -1 "$B/keys.txt")" "http://$ADDR/v1/quota" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
[[ $status == ok ]] || die "unexpected quota answer: $status"
say "serve on $ADDR (pid $SERVE_PID), ingest --follow on $B/watched (pid $INGEST_PID); soak for ${DURATION}s at $RATE records/s"

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
counted_now() { "${T[@]}" status --json 2>/dev/null | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["counted"], j["duplicates"], j["received"])' 2>/dev/null || echo "0 0 0"; }
echo "t_s,ingest_rss_kb,serve_rss_kb,counted,duplicates,received,delivered" > "$B/rss.csv"
START=$(date +%s.%N)
elapsed() { awk -v s="$START" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }'; }
sample() {
  local c d r lines
  read -r c d r < <(counted_now)
  lines=$(awk '{ print $1 }' "$B/progress" 2>/dev/null || echo 0)
  echo "$(elapsed),$(rss_kb "$INGEST_PID"),$(rss_kb "$SERVE_PID"),$c,$d,$r,$lines" >> "$B/rss.csv"
}

python3 tests/bench/soak.py deliver "$B/gen/logs" "$B/watched" "$DURATION" "$B/progress" 2> "$B/deliver.log" &
DELIVER_PID=$!
wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency -s tests/bench/rotate.lua "http://$ADDR/v1/quota" -- "$B/keys.txt" > "$B/wrk.txt" 2>&1 &
WRK_PID=$!

# Steady state: sample every SAMPLE s until delivery has ended and DURATION has passed.
next=0
alive() { kill -0 "$1" 2>/dev/null; }
while :; do
  now=$(elapsed)
  if awk -v n="$now" -v x="$next" 'BEGIN { exit !(n >= x) }'; then
    sample; next=$(awk -v x="$next" -v s="$SAMPLE" 'BEGIN { print x + s }')
    say "  t=${now}s $(tail -1 "$B/rss.csv")"
  fi
  alive "$INGEST_PID" || die "ingest --follow died: $(tail -5 "$B/follow.log")"
  alive "$SERVE_PID" || die "serve died: $(tail -5 "$B/serve.log")"
  if ! alive "$DELIVER_PID" && awk -v n="$now" -v d="$DURATION" 'BEGIN { exit !(n >= d) }'; then break; fi
  sleep 0.5
done
wait "$DELIVER_PID" || die "delivery failed: $(tail -5 "$B/deliver.log")"
DELIVER_PID=""
read -r LINES_DELIVERED LINES_TOTAL _ _ DELIVER_LATE _ < "$B/progress"
[[ $LINES_DELIVERED == "$LINES_TOTAL" ]] || die "delivered $LINES_DELIVERED of $LINES_TOTAL records"
[[ -z $(find "$B/gen/logs" -type f) ]] || die "files left in staging"
DELIVERED_AT=$(elapsed)
sample   # the end of the steady state

# Catch-up: until the store has received every delivered line (sampling on).
TRUTH_RECEIVED=$(json "$B/gen/truth.json" 'j["received"]')
say "delivery done at ${DELIVERED_AT}s ($LINES_DELIVERED records, at most ${DELIVER_LATE}s behind schedule); waiting for ingest to catch up"
CAUGHT="" got_received=0
deadline=$(awk -v n="$DELIVERED_AT" -v t="$CATCHUP_TIMEOUT" 'BEGIN { print n + t }')
while awk -v n="$(elapsed)" -v d="$deadline" 'BEGIN { exit !(n < d) }'; do
  read -r _ _ got_received < <(counted_now)
  if [[ $got_received == "$TRUTH_RECEIVED" ]]; then CAUGHT=$(elapsed); break; fi
  (( got_received <= TRUTH_RECEIVED )) || break   # received more than was delivered: verify names it
  alive "$INGEST_PID" || die "ingest --follow died: $(tail -5 "$B/follow.log")"
  if awk -v n="$(elapsed)" -v x="$next" 'BEGIN { exit !(n >= x) }'; then sample; next=$(awk -v x="$next" -v s="$SAMPLE" 'BEGIN { print x + s }'); fi
  sleep 1
done
sample
FAILS=()
if [[ -n $CAUGHT ]]; then
  CATCHUP_S=$(awk -v a="$CAUGHT" -v b="$DELIVERED_AT" 'BEGIN { printf "%.1f", a - b }')
  say "caught up ${CATCHUP_S}s after delivery ended"
else
  CATCHUP_S="never"
  FAILS+=("ingest did not catch up within ${CATCHUP_TIMEOUT}s (store received $got_received, truth $TRUTH_RECEIVED)")
fi

# wrk ends on its own after DURATION.
wait "$WRK_PID" || FAILS+=("wrk exited non-zero: $(tail -3 "$B/wrk.txt")")
WRK_PID=""
read -r RPS P50 _ P99 REQS NON2XX SOCKERR < <(sed -n 's/^RESULT //p' "$B/wrk.txt") || true
[[ -n ${RPS:-} ]] || { RPS=? P50=? P99=? REQS=? NON2XX=? SOCKERR=?; FAILS+=("no wrk result"); }

# What serve answers now (past its cache), then stop follow, then serve.
sleep "$(awk -v c="$CACHE_MS" 'BEGIN { print c / 1000 + 1 }')"
curl -fsS -H "Authorization: Bearer $ADMIN_KEY" "http://$ADDR/v1/tenants?period=$MONTH" > "$B/tenants.json" || FAILS+=("GET /v1/tenants failed")
kill -TERM "$INGEST_PID"
rc=0; wait "$INGEST_PID" || rc=$?
INGEST_PID=""
[[ $rc == 0 ]] || FAILS+=("ingest --follow exited $rc after SIGTERM: $(tail -3 "$B/follow.log")")
kill -TERM "$SERVE_PID"
rc=0; wait "$SERVE_PID" || rc=$?
SERVE_PID=""
[[ $rc == 0 ]] || FAILS+=("serve exited $rc after SIGTERM: $(tail -3 "$B/serve.log")")
"${T[@]}" status --json > "$B/status.json"

# Verdicts.
EXACT=FAIL
if python3 tests/bench/soak.py verify "$B/tally.sqlite" "$B/gen/truth.json" "$B/status.json" "$B/follow.json" "$B/tenants.json" "$B/verify.json"; then
  EXACT=ok
else
  FAILS+=("counters not exact (see the MISMATCH lines above and $B/verify.json)")
fi
[[ -f $B/verify.json ]] || die "verify wrote nothing"
python3 tests/bench/soak.py rss "$B/rss.csv" "$WARMUP" "$DELIVERED_AT" "$B/rss.json"
v() { json "$B/verify.json" "$1"; }
r() { json "$B/rss.json" "$1"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
for p in ingest serve; do
  [[ $(r "j['$p']['flat']") == True ]] || FAILS+=("$p RSS not flat: max last half $(mb "$(r "j['$p']['max_last_kb']")") MB > 1.2 x max first half $(mb "$(r "j['$p']['max_first_kb']")") MB")
done
[[ $NON2XX == 0 ]] || FAILS+=("wrk: $NON2XX non-2xx answers")
[[ $SOCKERR == 0 ]] || FAILS+=("wrk: $SOCKERR socket errors")

verdict() { [[ $1 == "$2" ]] && echo ok || echo FAIL; }
tc=$(v 'j["truth"]["counted"]'); td=$(v 'j["truth"]["duplicates"]'); tr=$(v 'j["truth"]["received"]')
sc=$(v 'j["store"]["counted"]'); sd=$(v 'j["store"]["duplicates"]'); sr=$(v 'j["store"]["received"]')
fc=$(v 'j["report"]["counted"]'); fd=$(v 'j["report"]["duplicates"]'); fr=$(v 'j["report"]["received"]'); fs=$(v 'j["report"]["skipped"]')
echo "Soak: ingest --follow + serve under wrk (-t$THREADS -c$CONNS), ${DURATION}s, $RATE records/s, $TENANTS tenants, $(nproc) cores, $TALLY ($(tally_rev)):"
echo
echo "| check | figure | verdict |"
echo "|---|---|---|"
echo "| duration | ${DURATION}s delivery + wrk; delivery ended at ${DELIVERED_AT}s (at most ${DELIVER_LATE}s behind schedule); caught up ${CATCHUP_S}s later | |"
echo "| delivered (vs truth received) | $LINES_DELIVERED records ($tc unique + $td duplicates + $(v 'j["truth"]["skipped"]') skipped markers) in $(find "$B/watched" -type f | wc -l) files | $(verdict "$LINES_DELIVERED" "$tr") |"
echo "| counted (store / follow report / truth) | $sc / $fc / $tc | $( [[ $sc == "$tc" && $fc == "$tc" ]] && echo ok || echo FAIL ) |"
echo "| duplicates (store / follow report / truth) | $sd / $fd / $td | $( [[ $sd == "$td" && $fd == "$td" ]] && echo ok || echo FAIL ) |"
echo "| received (store / follow report / truth) | $sr / $fr / $tr | $( [[ $sr == "$tr" && $fr == "$tr" ]] && echo ok || echo FAIL ) |"
echo "| follow report balances | $fr = $fc + $fd + $fs | $(verdict "$fr" "$((fc + fd + fs))") |"
echo "| counters_hour rows (tenant x hour x resource) | $(v 'j["rows"]["store"]') rows vs $(v 'j["rows"]["truth"]'), $(v 'j["rows"]["differ"]') differ | $(verdict "$(v 'j["rows"]["differ"]')" 0) |"
echo "| per-tenant totals, store | $(v 'j["tenants"]["truth"]') tenants, $(v 'j["tenants"]["differ_store"]') differ; tokens $(v 'j["tokens"]["store"]') vs $(v 'j["tokens"]["truth"]') | $(verdict "$(v 'j["tenants"]["differ_store"]')" 0) |"
echo "| per-tenant totals, serve /v1/tenants | $(v 'j["tenants"]["differ_served"]') differ; tokens $(v 'j["tokens"]["served"]') | $(verdict "$(v 'j["tenants"]["differ_served"]')" 0) |"
echo "| overall exactness | | $EXACT |"
for p in ingest serve; do
  echo "| $p RSS MB: at ${WARMUP}s / end / max (max first half / last half) | $(mb "$(r "j['$p']['start_kb']")") / $(mb "$(r "j['$p']['end_kb']")") / $(mb "$(r "j['$p']['max_all_kb']")") ($(mb "$(r "j['$p']['max_first_kb']")") / $(mb "$(r "j['$p']['max_last_kb']")"), x$(r "j['$p']['ratio']"), $(r "j['$p']['samples']") samples) | $( [[ $(r "j['$p']['flat']") == True ]] && echo flat || echo FAIL ) |"
done
echo "| wrk GET /v1/quota | $RPS req/s, p50 $P50 ms, p99 $P99 ms, $REQS requests | |"
echo "| wrk non-2xx / socket errors | $NON2XX / $SOCKERR | $( [[ $NON2XX == 0 && $SOCKERR == 0 ]] && echo ok || echo FAIL ) |"
echo
echo "RSS samples: $B/rss.csv"

summary soak_exact "$EXACT"
summary soak_ingest_rss_kb "'$(r "j['ingest']['start_kb']") $(r "j['ingest']['end_kb']") $(r "j['ingest']['max_all_kb']")'"
summary soak_serve_rss_kb "'$(r "j['serve']['start_kb']") $(r "j['serve']['end_kb']") $(r "j['serve']['max_all_kb']")'"
summary soak_wrk "'$RPS $P50 $P99 $NON2XX'"

if (( ${#FAILS[@]} > 0 )); then
  for f in "${FAILS[@]}"; do echo "bench: FAIL: $f" >&2; done
  exit 1
fi
say "soak passed"
