#!/usr/bin/env python3
"""Baseline for tests/bench/compare.sh: Bedrock model-invocation logs to per-tenant counters
the way the AWS samples and most in-house scripts do it, in plain Python.

Walk the tree; open `.gz` files with `gzip.open`, anything else as is; `json.loads` each line,
skipping lines that are not JSON records; deduplicate by `requestId` (a set in memory); the
tenant is `requestMetadata[<metadata_key>]`, else `_unattributed`; add input, output, cache-read
and cache-write tokens and one request to a dict keyed by tenant x UTC hour x modelId. One
process, one thread, like the samples. Prints the totals as JSON.

    python3 tests/bench/baseline_parser.py LOGS [--config tally.toml] [--rollup FILE]

What it does not do, next to `tally ingest`: no fallback attribution (inference profile, IAM
identity), no CloudWatch export containers, no validation or quarantine of bad counts, and
nothing persisted (no exactly-once store): the counters live in memory until it exits.
"""
import argparse
import gzip
import json
import os
import sys
import tomllib
from collections import defaultdict
from datetime import datetime, timezone

UNATTRIBUTED = "_unattributed"
FIELDS = ("input", "output", "cache_read", "cache_write", "requests")


def metadata_key(config):
    """`[tenancy] metadata_key` of a tally.toml (tally's default: tenant_id)."""
    if not config:
        return "tenant_id"
    with open(config, "rb") as f:
        return tomllib.load(f).get("tenancy", {}).get("metadata_key", "tenant_id")


def log_files(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield os.path.join(dirpath, name)


def open_log(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def hour_of(timestamp):
    """Epoch seconds of the UTC hour an ISO 8601 timestamp falls in."""
    t = datetime.fromisoformat(timestamp)
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp()) // 3600 * 3600


def ingest(root, key):
    counters = defaultdict(lambda: [0, 0, 0, 0, 0])  # FIELDS, per (tenant, hour, modelId)
    seen = set()
    stats = {"files": 0, "lines": 0, "records": 0, "duplicates": 0, "skipped": 0}
    for path in log_files(root):
        stats["files"] += 1
        with open_log(path) as f:
            for line in f:
                stats["lines"] += 1
                try:
                    rec = json.loads(line)
                except ValueError:  # the permission-check line, a marker object, a torn line
                    stats["skipped"] += 1
                    continue
                if not isinstance(rec, dict) or "requestId" not in rec or "modelId" not in rec:
                    stats["skipped"] += 1
                    continue
                request_id = rec["requestId"]
                if request_id in seen:
                    stats["duplicates"] += 1
                    continue
                seen.add(request_id)
                stats["records"] += 1
                tenant = (rec.get("requestMetadata") or {}).get(key) or UNATTRIBUTED
                inp = rec.get("input") or {}
                out = rec.get("output") or {}
                c = counters[(tenant, hour_of(rec["timestamp"]), rec["modelId"])]
                c[0] += inp.get("inputTokenCount") or 0
                c[1] += out.get("outputTokenCount") or 0
                c[2] += inp.get("cacheReadInputTokenCount") or 0
                c[3] += inp.get("cacheWriteInputTokenCount") or 0
                c[4] += 1
    return counters, stats


def report(rows, stats, rollup=None):
    """Totals of counter rows (tenant, hour, resource, *FIELDS) as one JSON object on stdout;
    with `rollup`, also the rows summed per hour x resource (tenant left out) into that file."""
    totals = dict.fromkeys(FIELDS, 0)
    by_hour_resource = defaultdict(lambda: [0] * len(FIELDS))
    tenants = set()
    keys = 0
    for tenant, hour, resource, *values in rows:
        keys += 1
        tenants.add(tenant)
        acc = by_hour_resource[f"{hour} {resource}"]
        for i, (field, v) in enumerate(zip(FIELDS, values)):
            totals[field] += v
            acc[i] += v
    if rollup:
        with open(rollup, "w") as f:
            json.dump({"fields": FIELDS, "rows": by_hour_resource}, f, sort_keys=True)
    json.dump({**stats, **totals, "keys": keys, "tenants": len(tenants)}, sys.stdout, sort_keys=True)
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", help="folder of .json.gz / NDJSON invocation logs")
    ap.add_argument("--config", help="tally.toml to read [tenancy] metadata_key from")
    ap.add_argument("--rollup", help="also write the totals per hour x resource to this file")
    args = ap.parse_args()
    counters, stats = ingest(args.logs, metadata_key(args.config))
    report(((t, h, r, *v) for (t, h, r), v in counters.items()), stats, args.rollup)


if __name__ == "__main__":
    main()
