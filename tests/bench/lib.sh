# Helpers shared by the benchmark scripts in tests/bench. Sourced, never run:
#
#   source "$(dirname "$0")/lib.sh"      # also moves the shell to the repo root
#
# Knobs read here (environment): PROFILE (release or dev), CARGO_TARGET_DIR, SKIP_BUILD,
# QUIET_WAIT, MAX_OTHER, RETRIES (the contention guard), REGEN (gen), SUMMARY (summary).
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

say() { echo "bench: $*" >&2; }
die() { echo "bench: FAIL: $*" >&2; exit 1; }

need_time() { [[ -x /usr/bin/time ]] || die "/usr/bin/time missing: apt-get install time"; }

# build_tally [CARGO ARGS...]: `cargo build` of PROFILE (release unless set) with the extra
# arguments, unless SKIP_BUILD=1; sets TALLY to the binary under CARGO_TARGET_DIR (or target).
build_tally() {
  local profile=${PROFILE:-release}
  if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    say "cargo build, $profile profile${*:+, $*} (target dir: ${CARGO_TARGET_DIR:-target})"
    if [[ $profile == release ]]; then cargo build --release -q "$@"; else cargo build -q "$@"; fi
  fi
  TALLY=${CARGO_TARGET_DIR:-target}/$([[ $profile == release ]] && echo release || echo debug)/tally
  [[ -x $TALLY ]] || die "no binary at $TALLY"
}

# What was measured: the commit, and whether src/ differed from it (as when the binary was built).
tally_rev() {
  echo "$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes')"
}

# DuckDB from PyPI in .venv (created when missing); sets DUCKDB_VERSION.
need_duckdb() {
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  .venv/bin/python -c 'import duckdb' 2>/dev/null || .venv/bin/pip install -q duckdb
  DUCKDB_VERSION=$(.venv/bin/python -c 'import duckdb; print(duckdb.__version__)')
}

# summary KEY VALUE: one machine-readable result, appended as KEY=VALUE to the file named by
# SUMMARY when that is set (tests/bench/compare.sh reads the other scripts' figures this way).
summary() { if [[ -n ${SUMMARY:-} ]]; then echo "$1=$2" >> "$SUMMARY"; fi; }

# json FILE EXPR: evaluate a python expression over the JSON document `j` in FILE.
json() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# median / max of the numbers on stdin; med / mx of the arguments
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
maxof() { sort -g | tail -n 1; }
med() { printf '%s\n' "$@" | median; }
mx() { printf '%s\n' "$@" | maxof; }

# --- timing -----------------------------------------------------------------------------------
# Other engineers' builds and tests share these 2 cores. Before each timed run `measure` waits
# (at most QUIET_WAIT s) for the machine to go quiet, and during it measures how much CPU other
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

# timed OUT CMD...: run CMD under /usr/bin/time -v, stdout to OUT; returns CMD's status.
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
# contended. Appends to the arrays walls/rsss/cpus/cpusecs/others (reset them before a series).
# Fails loudly if CMD fails.
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
reset_series() { walls=(); rsss=(); cpus=(); cpusecs=(); others=(); }

# stale DIR: true, with DIR deleted, when DIR holds no finished data set (no DIR/.ready, which
# the caller touches once it has made one) or REGEN=1.
stale() {
  if [[ ${REGEN:-0} == 1 || ! -f $1/.ready ]]; then rm -rf "$1"; return 0; fi
  return 1
}

# --- invocation-log data sets (ingest.sh, compare.sh) -------------------------------------------
# gen DIR ARGS...: run `tally generate` into DIR unless DIR/stamp already holds the same
# arguments; then measure the uncompressed sizes once and cache them in DIR/sizes.env.
gen() {
  local dir=$1; shift
  local want="tally generate $* --month 2025-11 --seed 1"
  if [[ ${REGEN:-0} == 1 || ! -f $dir/stamp || "$(cat "$dir/stamp")" != "$want" || ! -f $dir/sizes.env ]]; then
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

# load PREFIX FILE: KEY=VALUE lines (a set's sizes.env, a summary) into PREFIX_KEY variables.
load() { local p=$1 line; while IFS= read -r line; do eval "${p}_${line}"; done < "$2"; }

# The floor: every .json.gz object under a folder through `gzip -dc`, two at a time (2 cores).
GZIP_FLOOR=(bash -c 'find "$1" -name "*.json.gz" -print0 | xargs -0 -P 2 -n 50 gzip -dc > /dev/null' _)

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

# cold_runs TAG DIR PREFIX REPORTS: RUNS cold `tally ingest` runs of DIR/logs (store deleted
# before each), each report REPORTS/TAG-i.json checked against the set's truth (PREFIX as in
# load). Leaves the series in walls/rsss/..., and the last run's store in DIR.
cold_runs() {
  local tag=$1 dir=$2 prefix=$3 reports=$4 i
  reset_series
  for i in $(seq "$RUNS"); do
    measure "$tag run $i" "reset_store '$dir'" "$reports/$tag-$i.json" \
      "$TALLY" --config "$dir/tally.toml" ingest "$dir/logs" --json -q
    check "$reports/$tag-$i.json" "$prefix"
  done
}
