#!/usr/bin/env python3
"""tests/bench/compare.sh's cross-check: the engines of the ingest comparison must have counted
the same records and tokens from the same files, or their timings compare nothing.

    ingest_check.py TALLY_STORE TALLY_REPORT TRUTH ENGINE=TOTALS_JSON,ROLLUP_JSON...

Compares tally's counter store (SQLite, table counters_hour, after a cold ingest) and each
baseline's output (baseline_parser.py / duckdb_ingest.py) with the generator's truth.json:
records, duplicates, input/output/cache-read/cache-write tokens and requests, in total and
per UTC hour x resource. Tenants are left out of the second check on purpose: tally also
attributes by inference profile and IAM identity, the baselines by request metadata only.
Prints one line per engine; exits 1, naming the first differences, if any figure differs.
"""
import json
import sqlite3
import sys
from collections import defaultdict
from datetime import datetime

FIELDS = ("input", "output", "cache_read", "cache_write", "requests")


def main():
    store, tally_report, truth_path, *engines = sys.argv[1:]
    truth = json.load(open(truth_path))
    report = json.load(open(tally_report))

    expected = {"records": truth["counted"], "duplicates": truth["duplicates"]}
    reference = defaultdict(lambda: [0] * len(FIELDS))  # truth's sums per "epoch-hour resource"
    for row in truth["rows"]:
        acc = reference[f"{int(datetime.fromisoformat(row['hour']).timestamp())} {row['resource']}"]
        for i, f in enumerate(FIELDS):
            expected[f] = expected.get(f, 0) + row[f]
            acc[i] += row[f]

    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    rollups = {"tally": {}}
    totals = {"tally": {"records": report["counted"], "duplicates": report["duplicates"], **dict.fromkeys(FIELDS, 0)}}
    cols = ", ".join(f"sum({f})" for f in FIELDS)
    for hour, resource, *values in db.execute(f"SELECT hour, resource, {cols} FROM counters_hour GROUP BY 1, 2"):
        rollups["tally"][f"{hour} {resource}"] = values
        for f, v in zip(FIELDS, values):
            totals["tally"][f] += v
    for spec in engines:
        name, files = spec.split("=", 1)
        totals_path, rollup_path = files.split(",")
        totals[name] = json.load(open(totals_path))
        rollups[name] = json.load(open(rollup_path))["rows"]

    problems = []
    for name, t in totals.items():
        diff = {k: (t.get(k), v) for k, v in expected.items() if t.get(k) != v}
        if diff:
            problems.append(f"{name} totals differ from truth.json (got, want): {diff}")
        print(f"ingest check: {name}: " + ", ".join(f"{k} {t.get(k):,}" for k in expected), file=sys.stderr)
    for name, r in rollups.items():
        keys = sorted(set(reference) | set(r))
        bad = [(k, r.get(k), reference.get(k)) for k in keys if r.get(k) != reference.get(k)]
        if bad:
            problems.append(f"{name}: {len(bad)} hour x resource sums differ from truth.json's, e.g. (key, {name}, truth): {bad[:3]}")
    if problems:
        print("ingest check: FAIL\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"ingest check: every engine agrees with truth.json on {expected['records']:,} records, "
          f"{expected['duplicates']:,} duplicates, every token total and all {len(reference):,} "
          "hour x resource sums", file=sys.stderr)


if __name__ == "__main__":
    main()
