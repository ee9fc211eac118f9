#!/usr/bin/env bash
# Reconcile benchmark: `tally reconcile` over N generated CUR 2.0 lines (default 10M) plus the
# matching counters, wall time and peak RSS, side by side with DuckDB (from PyPI, in .venv)
# running the equivalent SQL over the same files, written as Parquet, tally's rules (SPEC §3):
#   - the period's Bedrock usage lines summed per day × resource × usage type × pricing unit ×
#     tag × usage account × IAM principal (× product name of Marketplace lines), exact decimals;
#   - a line goes to the tenant its tag names, else to the silo tenant of its usage account
#     (`[[tenancy.accounts]]`), else to the tenant its principal names through the identity rule;
#     else a dedicated profile's line to the profile's owner;
#   - else it is split over a pool: a profile (the id after the last `/`), or a model: a line
#     without a resource id (a base-model call) goes to the model its usage type names
#     (`USE1-NovaLite-input-tokens` → "NovaLite"; a Marketplace line's product name) through the
#     billing names of fixtures/prices.toml, tally's built-in catalog (a VALUES table built here;
#     both sides compared with only ASCII letters and digits kept, lower case), a
#     foundation-model ARN to its model; each day × pool × unit over the counters of that profile
#     or of that model (bare id or foundation-model ARN) by that unit (tokens of the type, images,
#     requests for other lines), without usage a silo account decided and, where a tenant's
#     principal pays in the same pool, without that tenant's identity-rule usage; largest
#     remainder in 10⁻¹⁰ USD, ties to the first tenant by name.
# Both engines must read the same Bedrock usage cost and allocate the same total by model, or
# no figures are printed; the printout also compares every basis share by share.
# Prints a markdown table on stdout (progress goes to stderr).
#
# Usage, from the repo root:   tests/bench/reconcile.sh [LINES]
#
# Knobs (environment):
#   PROFILE     release (default) or dev: which build of tally to time (dev builds every
#               dependency, DataFusion included, at opt-level 2; only tally itself at 1)
#   BENCH_DIR   data and results (default: out/bench/reconcile-<LINES>)
#   RUNS        timed rounds (tally, then DuckDB), the median is reported (default: 3)
#   RECORDS     invocation-log records behind the counters (default: 300000)
#   TENANTS     (default: 200)
#   SKIP_BUILD=1 use the existing binary;  REGEN=1 regenerate the data
#   QUIET_WAIT, MAX_OTHER, RETRIES  the contention guard of lib.sh (each timed run waits for a
#               quiet machine and is repeated while other processes took > MAX_OTHER cores)
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
NEXT_MONTH=2025-12

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

# What the DuckDB script reads, prepared here (not timed): the CUR files; the catalog's model ↔
# billing-name pairs as a SQL VALUES list (fixtures/prices.toml is the catalog tally builds in;
# the generated tally.toml adds none); from tally.toml the silo accounts, the dedicated profiles'
# owners and the identity rule; and the counters: usage.parquet when it has every unit's column,
# else the store's hourly counters of the period exported to counters.parquet (usage.parquet has
# no 1 h cache writes or images).
.venv/bin/python - "$BENCH_DIR" "$CUR" "$MONTH" "$NEXT_MONTH" "$(nproc)" <<'PY'
import csv, datetime, json, os, re, sqlite3, sys, tomllib
import duckdb

bench, cur, month, next_month, threads = sys.argv[1:]
q = lambda s: "'" + s.replace("'", "''") + "'"
values = lambda rows: ", ".join("(" + ", ".join(q(v) for v in r) + ")" for r in rows) or "(NULL, NULL)"
with open("fixtures/prices.toml", "rb") as f:
    prices = tomllib.load(f)
with open(f"{bench}/tally.toml", "rb") as f:
    config = tomllib.load(f)
tenancy = config.get("tenancy", {})
billing = [(p["model"], b) for p in prices.get("price", []) for b in p.get("billing", [])]
accounts = [(a["account"].strip(), a["tenant"].strip()) for a in tenancy.get("accounts", [])]
owners = [(p["profile"].rsplit("/", 1)[-1], p["tenant"].strip()) for p in tenancy.get("profiles", []) if p.get("tenant")]
pattern = tenancy.get("identity_pattern") if "identity" in tenancy.get("order", []) else None
con = duckdb.connect()
glob = f"{cur}/**/*.parquet"
columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({q(glob)}, union_by_name = true)").fetchall()}
usage = f"{bench}/out-tally/{month}/usage.parquet"
have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({q(usage)})").fetchall()}
units = ["input", "output", "cache_read", "cache_write", "requests", "images", "video_ms", "audio_ms", "search_units", "cache_write_1h"]
counters = usage
if not set(units) <= have:
    store = config.get("store", {}).get("path", "tally.sqlite")
    store = store if os.path.isabs(store) else f"{bench}/{store}"
    start = int(datetime.datetime.fromisoformat(f"{month}-01T00:00:00+00:00").timestamp())
    end = int(datetime.datetime.fromisoformat(f"{next_month}-01T00:00:00+00:00").timestamp())
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    rows = db.execute(f"SELECT tenant, hour, resource, via, {', '.join(units)} FROM counters_hour WHERE hour >= ? AND hour < ?", (start, end))
    with open(f"{bench}/counters.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tenant", "day", "resource", "via"] + units)
        for r in rows:
            day = datetime.datetime.fromtimestamp(r[1], datetime.timezone.utc).strftime("%Y-%m-%d")
            w.writerow([r[0], day, r[2], r[3]] + list(r[4:]))
    counters = f"{bench}/counters.parquet"
    con.execute(f"COPY (SELECT * FROM read_csv({q(bench + '/counters.csv')}, all_varchar = false, header = true, "
                f"types = {{'tenant': 'VARCHAR', 'day': 'VARCHAR', 'resource': 'VARCHAR', 'via': 'VARCHAR'}})) "
                f"TO {q(counters)} (FORMAT parquet)")
    os.remove(f"{bench}/counters.csv")
    n_usage = con.execute(f"SELECT count(*) FROM read_parquet({q(usage)})").fetchone()[0]
    n_store = con.execute(f"SELECT count(*) FROM read_parquet({q(counters)})").fetchone()[0]
    assert n_usage == n_store, f"the store has {n_store} hourly counters of the period, usage.parquet {n_usage}"
json.dump({
    "threads": int(threads),
    "cur": glob,
    "counters": counters,
    "tally_allocation": f"{bench}/out-tally/{month}/allocation.parquet",
    "out": f"{bench}/duckdb-allocation.parquet",
    "period_start": f"{month}-01",
    "period_end": f"{next_month}-01",
    "billing_values": values(billing),
    "account_values": values(accounts),
    "owner_values": values(owners),
    "identity_pattern": pattern,
    "identity_group": re.compile(pattern).groupindex["tenant"] if pattern else None,
    "principal_column": "line_item_iam_principal" in columns,
}, open(f"{bench}/duckdb_params.json", "w"), indent=1)
PY

cat > "$BENCH_DIR/duckdb_reconcile.py" <<'PY'
# DuckDB's side of tests/bench/reconcile.sh, written by it (edit it there).
#   duckdb_reconcile.py PARAMS          the timed run: the allocation, to Parquet
#   duckdb_reconcile.py PARAMS check    the checks, as JSON on stdout (not timed)
import json, sys
import duckdb

P = json.load(open(sys.argv[1]))
lit = lambda s: "'" + s.replace("'", "''") + "'"
con = duckdb.connect()
con.execute(f"SET threads TO {P['threads']}")
CUR = f"read_parquet({lit(P['cur'])}, union_by_name = true, hive_partitioning = false)"
FIRST_PARTY = "line_item_product_code IN ('AmazonBedrock', 'AmazonBedrockFoundationModels', 'AmazonBedrockService')"
BEDROCK = f"""({FIRST_PARTY} OR product['product_name'] LIKE '%Amazon Bedrock%')
          AND bill_billing_period_start_date >= TIMESTAMP {lit(P['period_start'])}
          AND bill_billing_period_start_date < TIMESTAMP {lit(P['period_end'])}"""
PRINCIPAL = "coalesce(line_item_iam_principal, '')" if P["principal_column"] else "''"
TOKENS = "cache-read-input-token-count|cache-write-input-token-count|input-tokens|output-tokens"
QUALIFIERS = "cross-region-global|cross-region|latency-optimized|custom-model|priority|standard|mantle|batch|flex|global|1h"
# tally's rules, as macros: a resource's pool (`allocate::pool_of_counter`, `ids::Target::parse`),
# a usage type's model name and unit (`classify::UsageType::parse`), a billing name's key
# (`pricing::billing_key`), the tenant a principal names (`Resolver::principal_tenant`).
for m in [
    "billing_key(s) AS lower(regexp_replace(s, '[^A-Za-z0-9]', '', 'g'))",
    "is_fm_arn(r) AS regexp_matches(r, '^arn:[^:]*:[^:]*:[^:]*:[^:]*:foundation-model/')",
    """is_system_profile(r) AS split_part(r, '.', 1) IN ('us', 'eu', 'apac', 'global', 'jp', 'au', 'ca', 'us-gov')
         AND strpos(substr(r, strpos(r, '.') + 1), '.') > 0""",
    """pool_kind(r) AS CASE WHEN r LIKE 'arn:%' THEN (CASE WHEN is_fm_arn(r) THEN 'model' ELSE 'resource' END)
                            WHEN is_system_profile(r) THEN 'resource' ELSE 'model' END""",
    """pool_key(r) AS CASE WHEN r LIKE 'arn:%' AND is_fm_arn(r) THEN regexp_extract(r, 'foundation-model/(.*)$', 1)
                           WHEN pool_kind(r) = 'model' THEN r ELSE regexp_extract(r, '[^/]*$') END""",
    "ut_rest(u) AS CASE WHEN strpos(u, '-') > 0 THEN substr(u, strpos(u, '-') + 1) ELSE u END",
    f"ut_marker(u) AS lower(regexp_extract(ut_rest(u), '-({TOKENS})', 1, 'i'))",
    f"""ut_model(u, product) AS CASE
          WHEN starts_with(ut_rest(u), 'MP:') THEN trim(split_part(product, ' (', 1))
          WHEN ut_marker(u) <> '' THEN regexp_replace(regexp_extract(ut_rest(u), '^(.*?)-({TOKENS})', 1, 'i'), '(-({QUALIFIERS}))+$', '', 'i')
          ELSE split_part(ut_rest(u), '-', 1) END""",
    """unit_of_pricing(pu, lu) AS CASE
          WHEN starts_with(lower(trim(pu)), 'image') THEN 'image'
          WHEN starts_with(lower(trim(pu)), 'second') OR lower(trim(pu)) IN ('sec', 'secs')
            THEN (CASE WHEN lu LIKE '%audio%' OR lu LIKE '%speech%' THEN 'audio_second' ELSE 'video_second' END)
          WHEN lower(trim(pu)) LIKE '%search unit%' OR lu LIKE '%search-unit%' THEN 'search_unit'
          ELSE 'other' END""",
    """ut_unit(u, pu) AS CASE
          WHEN starts_with(ut_rest(u), 'MP:') THEN (CASE
            WHEN lower(replace(u, '_', '-')) LIKE '%cacheread%' OR lower(replace(u, '_', '-')) LIKE '%cache-read%' THEN 'cache_read'
            WHEN lower(replace(u, '_', '-')) LIKE '%cachewrite%' OR lower(replace(u, '_', '-')) LIKE '%cache-write%' THEN 'cache_write'
            WHEN lower(replace(u, '_', '-')) LIKE '%inputtoken%' OR lower(replace(u, '_', '-')) LIKE '%input-token%' THEN 'input'
            WHEN lower(replace(u, '_', '-')) LIKE '%outputtoken%' OR lower(replace(u, '_', '-')) LIKE '%output-token%' THEN 'output'
            ELSE 'other' END)
          ELSE CASE ut_marker(u) WHEN 'cache-read-input-token-count' THEN 'cache_read'
            WHEN 'cache-write-input-token-count'
              THEN (CASE WHEN regexp_matches(lower(ut_rest(u)), '-1h(-|$)') THEN 'cache_write_1h' ELSE 'cache_write' END)
            WHEN 'input-tokens' THEN 'input' WHEN 'output-tokens' THEN 'output'
            ELSE unit_of_pricing(pu, lower(ut_rest(u))) END END""",
    ("principal_tenant(p) AS CASE WHEN p <> '' THEN nullif(trim(regexp_extract(p, "
     + lit(P["identity_pattern"]) + f", {P['identity_group']})), '') END"
     if P["identity_pattern"] else "principal_tenant(p) AS CAST(NULL AS VARCHAR)"),
]:
    con.execute("CREATE MACRO " + m)
con.execute(f"""CREATE TABLE names AS SELECT DISTINCT billing_key(name) AS name_key, model
                FROM (VALUES {P['billing_values']}) AS t(model, name) WHERE name IS NOT NULL""")
con.execute(f"CREATE TABLE accounts AS SELECT * FROM (VALUES {P['account_values']}) AS t(account, tenant) WHERE account IS NOT NULL")
con.execute(f"""CREATE TABLE owners AS SELECT key, any_value(tenant) AS tenant
                FROM (VALUES {P['owner_values']}) AS t(key, tenant) WHERE key IS NOT NULL GROUP BY key""")

ALLOCATION = f"""
WITH cur AS (
  -- The period's Bedrock usage lines, summed as tally's scan groups them.
  SELECT CAST(line_item_usage_start_date AS DATE) AS day,
         coalesce(line_item_resource_id, '') AS resource,
         line_item_usage_type AS usage_type,
         coalesce(pricing_unit, '') AS pricing_unit,
         CASE WHEN {FIRST_PARTY} THEN '' ELSE coalesce(product['product_name'], '') END AS product_name,
         nullif(trim(resource_tags['user_tenant']), '') AS tag,
         coalesce(line_item_usage_account_id, '') AS account,
         {PRINCIPAL} AS principal,
         sum(CAST(line_item_unblended_cost AS DECIMAL(38,10))) AS cost
  FROM {CUR}
  WHERE {BEDROCK} AND line_item_line_item_type = 'Usage'
  GROUP BY ALL
), lines AS (
  -- What names a tenant (tag, then silo account, then principal), else the pool: the profile,
  -- or the model (a line without a resource id: the model its usage type names).
  SELECT c.day, c.resource, CAST(c.cost * 10000000000 AS HUGEINT) AS units,
         ut_unit(c.usage_type, c.pricing_unit) AS unit,
         coalesce(c.tag, a.tenant, principal_tenant(c.principal)) AS named,
         CASE WHEN c.tag IS NOT NULL THEN 'tag' WHEN a.tenant IS NOT NULL THEN 'account'
              WHEN principal_tenant(c.principal) IS NOT NULL THEN 'principal' END AS named_by,
         CASE WHEN c.resource = '' THEN 'model' ELSE pool_kind(c.resource) END AS kind,
         CASE WHEN c.resource = '' THEN n.model ELSE pool_key(c.resource) END AS key
  FROM cur c
  LEFT JOIN names n ON c.resource = '' AND n.name_key = billing_key(ut_model(c.usage_type, c.product_name))
  LEFT JOIN accounts a ON a.account = trim(c.account)
), owned AS (
  SELECT l.*, o.tenant AS owner
  FROM lines l LEFT JOIN owners o ON l.named IS NULL AND l.kind = 'resource' AND o.key = l.key
), pools AS (
  SELECT day, resource, kind, key, unit, sum(units) AS units
  FROM owned WHERE named IS NULL AND owner IS NULL AND key IS NOT NULL GROUP BY ALL
), paid_by_principal AS (
  -- A tenant whose principal's lines pay for a pool's unit that day leaves its identity usage
  -- out of that split.
  SELECT DISTINCT day, kind, key, unit, named AS tenant FROM lines WHERE named_by = 'principal' AND key IS NOT NULL
), used AS (
  -- Counters per tenant × day × pool × via (usage a silo account decided is never split).
  SELECT day, pool_kind(resource) AS kind, pool_key(resource) AS key, tenant, via,
         sum(input) AS input, sum(output) AS output, sum(cache_read) AS cache_read,
         sum(cache_write) AS cache_write, sum(cache_write_1h) AS cache_write_1h, sum(images) AS image,
         sum(video_ms) AS video_second, sum(audio_ms) AS audio_second, sum(search_units) AS search_unit,
         sum(requests) AS other
  FROM (SELECT day, resource, tenant, via, sum(input) AS input, sum(output) AS output, sum(cache_read) AS cache_read,
               greatest(sum(cache_write) - sum(cache_write_1h), 0) AS cache_write, sum(cache_write_1h) AS cache_write_1h,
               sum(images) AS images, sum(video_ms) AS video_ms, sum(audio_ms) AS audio_ms,
               sum(search_units) AS search_units, sum(requests) AS requests
        FROM read_parquet({lit(P['counters'])}) WHERE via <> 'account' GROUP BY ALL)
  GROUP BY ALL
), split AS (
  SELECT p.day, p.resource, p.kind, p.key, p.unit, p.units, u.tenant,
         CAST(sum(CASE WHEN u.via = 'identity' AND b.tenant IS NOT NULL THEN 0
                       ELSE CASE p.unit WHEN 'input' THEN u.input WHEN 'output' THEN u.output
                         WHEN 'cache_read' THEN u.cache_read WHEN 'cache_write' THEN u.cache_write
                         WHEN 'cache_write_1h' THEN u.cache_write_1h WHEN 'image' THEN u.image
                         WHEN 'video_second' THEN u.video_second WHEN 'audio_second' THEN u.audio_second
                         WHEN 'search_unit' THEN u.search_unit ELSE u.other END END) AS HUGEINT) AS w
  FROM pools p
  JOIN used u ON u.day = strftime(p.day, '%Y-%m-%d') AND u.kind = p.kind AND u.key = p.key
  LEFT JOIN paid_by_principal b
    ON b.day = p.day AND b.kind = p.kind AND b.key = p.key AND b.unit = p.unit AND b.tenant = u.tenant
  GROUP BY ALL
), parts AS (
  -- Largest remainder in 10⁻¹⁰ USD, ties to the first tenant by name (allocate::split).
  SELECT *, abs(units) * w // total_w AS q, abs(units) * w % total_w AS r
  FROM (SELECT *, sum(w) OVER (PARTITION BY day, resource, kind, key, unit) AS total_w FROM split WHERE w > 0)
), ranked AS (
  SELECT *, abs(units) - sum(q) OVER g AS left_over, row_number() OVER (g ORDER BY r DESC, tenant) AS place
  FROM parts WINDOW g AS (PARTITION BY day, resource, kind, key, unit)
), shares AS (
  SELECT tenant, day, CASE kind WHEN 'model' THEN key ELSE resource END AS resource, unit,
         CASE kind WHEN 'model' THEN 'model' ELSE 'usage' END AS basis,
         (CASE WHEN units < 0 THEN -1 ELSE 1 END) * (q + CASE WHEN place <= left_over THEN 1 ELSE 0 END) AS units
  FROM ranked
  UNION ALL SELECT named, day, resource, unit, named_by, units FROM lines WHERE named IS NOT NULL
  UNION ALL SELECT owner, day, resource, unit, 'profile', units FROM owned WHERE named IS NULL AND owner IS NOT NULL
)
SELECT tenant, strftime(day, '%Y-%m-%d') AS day, resource, unit AS token_type, basis,
       CAST(sum(units) AS DECIMAL(38,0)) * CAST(0.0000000001 AS DECIMAL(38,10)) AS cost
FROM shares
GROUP BY ALL HAVING sum(units) <> 0   -- tally keeps no share of 0
ORDER BY ALL
"""

if len(sys.argv) < 3:
    con.execute(f"COPY ({ALLOCATION}) TO {lit(P['out'])} (FORMAT parquet)")
    sys.exit(0)

# --- checks (not timed) -------------------------------------------------------------------------
one = lambda q: con.execute(q).fetchone()
con.execute(f"""CREATE TABLE usage_lines AS
  SELECT coalesce(line_item_resource_id, '') AS resource, line_item_usage_type AS usage_type,
         CASE WHEN {FIRST_PARTY} THEN '' ELSE coalesce(product['product_name'], '') END AS product_name,
         {PRINCIPAL} <> '' AS has_principal,
         count(*) AS lines, sum(CAST(line_item_unblended_cost AS DECIMAL(38,10))) AS cost
  FROM {CUR} WHERE {BEDROCK} AND line_item_line_item_type = 'Usage' GROUP BY ALL""")
usage_lines, usage_cost, base_lines, base_cost, no_resource_lines, unknown_lines, principal_lines = one("""
  SELECT sum(lines), sum(cost),
         sum(lines) FILTER (WHERE resource = '' OR pool_kind(resource) = 'model'),
         sum(cost) FILTER (WHERE resource = '' OR pool_kind(resource) = 'model'),
         sum(lines) FILTER (WHERE resource = ''),
         sum(lines) FILTER (WHERE resource = '' AND billing_key(ut_model(usage_type, product_name)) NOT IN (SELECT name_key FROM names)),
         sum(lines) FILTER (WHERE has_principal)
  FROM usage_lines""")
duck = f"read_parquet({lit(P['out'])})"
tally = f"read_parquet({lit(P['tally_allocation'])})"
by_basis = lambda t: {b: [str(c), n] for b, c, n in con.execute(
    f"SELECT basis, sum(cost), count(*) FROM {t} WHERE tenant IS NOT NULL GROUP BY ALL ORDER BY ALL").fetchall()}
differing = {b: n for b, n in con.execute(f"""
  SELECT basis, count(*) FROM (SELECT tenant, day, resource, token_type, basis, sum(cost) AS cost FROM {duck} GROUP BY ALL) d
  FULL JOIN (SELECT tenant, day, resource, token_type, basis, sum(cost) AS cost FROM {tally} WHERE tenant IS NOT NULL GROUP BY ALL) t
  USING (tenant, day, resource, token_type, basis)
  WHERE d.cost IS DISTINCT FROM t.cost GROUP BY ALL ORDER BY ALL""").fetchall()}
s = lambda d: None if d is None else str(d)
print(json.dumps({
    "usage_lines": usage_lines, "usage_cost": s(usage_cost),
    "base_lines": base_lines or 0, "base_cost": s(base_cost), "no_resource_lines": no_resource_lines or 0,
    "unknown_model_lines": unknown_lines or 0,
    "principal_column": P["principal_column"], "principal_lines": principal_lines or 0,
    "duckdb": by_basis(duck), "tally": by_basis(tally), "differing": differing,
    "model_duckdb": by_basis(duck).get("model", ["0", 0])[0], "model_tally": by_basis(tally).get("model", ["0", 0])[0],
}))
PY

# --- timing -----------------------------------------------------------------
# Rounds of tally then DuckDB, each run behind lib.sh's contention guard (waits for a quiet
# machine, measures what other processes took, repeats a contended run).
declare -A W R O
for ((i = 1; i <= RUNS; i++)); do
  for engine in tally duckdb; do
    if [[ $engine == tally ]]; then
      measure "tally run $i" : /dev/null \
        "$TALLY" -q --config "$BENCH_DIR/tally.toml" reconcile --period $MONTH --cur "$CUR" --out "$BENCH_DIR/out-tally"
    else
      measure "duckdb run $i" : /dev/null .venv/bin/python "$BENCH_DIR/duckdb_reconcile.py" "$BENCH_DIR/duckdb_params.json"
    fi
    say "  (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    W[$engine]+="$WALL "; R[$engine]+="$RSS "; O[$engine]+="$OTHER "
  done
done
declare -A MED_WALL MAX_RSS MAX_OTHER_USED
for engine in tally duckdb; do
  read -ra ws <<< "${W[$engine]}"; read -ra rs <<< "${R[$engine]}"; read -ra os <<< "${O[$engine]}"
  MED_WALL[$engine]=$(med "${ws[@]}"); MAX_RSS[$engine]=$(mx "${rs[@]}"); MAX_OTHER_USED[$engine]=$(mx "${os[@]}")
done

# Both engines must have read the same bill, and allocated the same cost by model.
CHECK=$(.venv/bin/python "$BENCH_DIR/duckdb_reconcile.py" "$BENCH_DIR/duckdb_params.json" check)
echo "$CHECK" > "$BENCH_DIR/check.json"
c() { json "$BENCH_DIR/check.json" "j['$1']"; }
TALLY_TOTAL=$(json "$BENCH_DIR/tally-report.json" "j['usage_cost']")
DUCK_TOTAL=$(c usage_cost)
[[ $TALLY_TOTAL == "$DUCK_TOTAL" ]] || die "the engines read different bills: tally $TALLY_TOTAL, duckdb $DUCK_TOTAL"
say "both engines read Bedrock usage cost $TALLY_TOTAL"
[[ $(c model_tally) == "$(c model_duckdb)" ]] ||
  die "the engines allocated different totals by model: tally $(c model_tally), duckdb $(c model_duckdb)"
say "both engines allocated $(c model_tally) by model"
# Every basis, and the shares (tenant × day × resource × token type × basis) that differ.
BASES=$(json "$BENCH_DIR/check.json" "'; '.join(f\"{b}: tally {t[0]} ({t[1]} shares), DuckDB {j['duckdb'].get(b, ['0', 0])[0]} ({j['duckdb'].get(b, ['0', 0])[1]}), {j['differing'].get(b, 0)} differ\" for b, t in j['tally'].items())")
say "$BASES"

CUR_LINES=$(json "$BENCH_DIR/tally-report.json" "j['cur_lines']")
BASE_SHARE=$(json "$BENCH_DIR/check.json" "'%.1f' % (100 * j['base_lines'] / j['usage_lines'])")
BASE_COST_SHARE=$(json "$BENCH_DIR/check.json" "'%.1f' % (100 * float(j['base_cost'] or 0) / float(j['usage_cost']))")
RATIO=$(awk -v d="${MED_WALL[duckdb]}" -v t="${MED_WALL[tally]}" 'BEGIN { printf "%.2f", d / t }')
for engine in tally duckdb; do
  summary "${engine}_wall" "${MED_WALL[$engine]}"; summary "${engine}_rss" "${MAX_RSS[$engine]}"
  summary "${engine}_walls" "'${W[$engine]% }'"
done
summary cur_lines "$CUR_LINES"; summary files "$FILES"; summary bytes "$BYTES"; summary duckdb_version "$DUCKDB_VERSION"
summary base_share "$BASE_SHARE"

echo "Reconcile of $MONTH at $(tally_rev): $(printf "%'d" "$CUR_LINES") Bedrock CUR lines in $FILES Parquet files ($(awk "BEGIN {printf \"%.0f\", $BYTES / 1e6}") MB), counters of $RECORDS records; $(nproc) cores; tally $PROFILE build; DuckDB $DUCKDB_VERSION; median of $RUNS runs, max RSS."
echo
echo "Bedrock usage lines: $(printf "%'d" "$(c usage_lines)"), cost $TALLY_TOTAL (both engines). Base-model lines (no resource id or a foundation-model ARN): $(printf "%'d" "$(c base_lines)") = ${BASE_SHARE}% of the lines, ${BASE_COST_SHARE}% of the cost; $(printf "%'d" "$(c unknown_model_lines)") of them name no model the catalog knows. Lines with an IAM principal: $(printf "%'d" "$(c principal_lines)")$([[ $(c principal_column) == True ]] || echo ' (no line_item_iam_principal column)'). Allocated by model: $(c model_tally) in both engines."
echo
echo "By basis: $BASES."
echo
echo "| engine | wall s (runs) | peak RSS MB | others' cores (max) |"
echo "|---|---:|---:|---:|"
echo "| \`tally reconcile\` (load, allocate, drift, check, write the tables) | ${MED_WALL[tally]} (${W[tally]% }) | ${MAX_RSS[tally]} | ${MAX_OTHER_USED[tally]} |"
echo "| DuckDB, equivalent SQL (aggregate, pool by profile or model, split, write Parquet) | ${MED_WALL[duckdb]} (${W[duckdb]% }) | ${MAX_RSS[duckdb]} | ${MAX_OTHER_USED[duckdb]} |"
echo
echo "DuckDB / tally: ${RATIO}×"
