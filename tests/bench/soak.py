#!/usr/bin/env python3
"""tests/bench/soak.sh's helpers (standard library only).

    soak.py deliver STAGING WATCHED DURATION PROGRESS
        Moves every file of a generated log tree STAGING into WATCHED over DURATION seconds, at
        a steady rate of records: the .json.gz objects (and the zero-byte marker object) by
        rename, whole, in path order (atomic: a reader never sees half an object); the plain
        .ndjson files by appending their lines, in chunks about once a second, to growing files
        of the same name (every 4th chunk is written in two parts split inside a line, the rest
        of the line following with the next chunk, so the ingester meets unterminated last
        lines; the sources are deleted once appended). Both streams are spread evenly over
        DURATION. PROGRESS is rewritten as
        "delivered total events_done events_total max_late_s" as delivery goes, counting records
        as tally receives them (lines, and 1 for the zero-byte marker object).
        Everything is delivered, so the generator's truth.json applies exactly at the end.

    soak.py verify STORE TRUTH STATUS REPORT TENANTS OUT
        Compares with truth.json: the store's lifetime totals (STATUS, `tally status --json`),
        the follow run's report (REPORT, `tally ingest --follow --json`; it must also balance:
        received = counted + duplicates + skipped), every counters_hour row of the SQLite STORE
        (tenant x hour x resource, all token, request, error and no-usage fields), and the
        per-tenant totals that `tally serve` answered on /v1/tenants (TENANTS). Writes the
        figures as JSON to OUT; exits 1, naming the first differences, if anything differs.

    soak.py rss CSV WARMUP END OUT
        RSS verdicts from the sampler's CSV: per process the RSS at the first sample at or after
        WARMUP s, at the last sample at or before END s, the maximum, and "flat": the maximum of
        the last half of [WARMUP, END] <= 1.2 x the maximum of its first half. JSON to OUT.
"""
import csv
import gzip
import json
import os
import sqlite3
import sys
import time
from collections import defaultdict
from datetime import datetime

FIELDS = ("input", "output", "cache_read", "cache_write", "requests", "errors", "no_usage")
TOKENS = ("input", "output", "cache_read", "cache_write")
FLAT_FACTOR = 1.2


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def deliver(staging, watched, duration, progress):
    duration = float(duration)
    objects, plain = [], []
    for root, _, files in os.walk(staging):
        for name in files:
            path = os.path.join(root, name)
            (plain if name.endswith(".ndjson") else objects).append(os.path.relpath(path, staging))
    objects.sort()
    plain.sort()

    def lines_of(rel):
        path = os.path.join(staging, rel)
        if os.path.getsize(path) == 0:
            return 1   # the zero-byte permission-check object: one record received (and skipped)
        opener = gzip.open if rel.endswith(".gz") else open
        with opener(path, "rb") as f:
            return sum(1 for _ in f)

    # Events: (time, kind, payload, lines). Objects: one each. Plain lines: one stream over all
    # .ndjson files, cut into about one chunk per second.
    events = []
    obj_lines = [lines_of(r) for r in objects]
    total_obj = sum(obj_lines) or 1
    cum = 0
    for rel, n in zip(objects, obj_lines):
        cum += n
        events.append((duration * cum / total_obj, 0, ("mv", rel), n))
    stream = []  # (rel, line bytes)
    for rel in plain:
        with open(os.path.join(staging, rel), "rb") as f:
            stream.extend((rel, line) for line in f)
    if stream:
        chunks = max(1, min(len(stream), int(duration)))
        per = len(stream) / chunks
        for c in range(chunks):
            part = stream[round(c * per):round((c + 1) * per)]
            if part:
                events.append((duration * (c + 1) / chunks, 1, ("append", c, part), len(part)))
    events.sort(key=lambda e: (e[0], e[1]))
    total_lines = sum(e[3] for e in events)

    pending = {}  # rel -> bytes of a line begun but not finished
    handles = {}
    delivered = done = 0
    max_late = 0.0
    last_write = 0.0
    t0 = time.monotonic()

    def append(rel, data):
        f = handles.get(rel)
        if f is None:
            dst = os.path.join(watched, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            f = handles[rel] = open(dst, "ab", buffering=0)
        f.write(data)

    def report(final=False):
        write_atomic(progress, f"{delivered} {total_lines} {done} {len(events)} {max_late:.1f}{' done' if final else ''}\n")

    report()
    for at, _, what, n in events:
        wait = t0 + at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            max_late = max(max_late, -wait)
        if what[0] == "mv":
            src, dst = os.path.join(staging, what[1]), os.path.join(watched, what[1])
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.rename(src, dst)
        else:
            _, c, part = what
            by_file = defaultdict(list)
            for rel, line in part:
                by_file[rel].append(line)
            for rel, lines in by_file.items():
                data = pending.pop(rel, b"") + b"".join(lines)
                if c % 4 == 3 and len(lines[-1]) > 2:
                    cut = len(data) - len(lines[-1]) // 2   # inside the last line
                    data, pending[rel] = data[:cut], data[cut:]
                append(rel, data)
        delivered += n
        done += 1
        if time.monotonic() - last_write >= 0.5:
            report()
            last_write = time.monotonic()
    for rel, rest in pending.items():
        append(rel, rest)
    for f in handles.values():
        f.close()
    for rel in plain:   # all appended: staging is left empty
        os.remove(os.path.join(staging, rel))
    report(final=True)


def verify(store, truth_path, status_path, report_path, tenants_path, out):
    truth = json.load(open(truth_path))
    status = json.load(open(status_path))
    report = json.load(open(report_path))
    served = json.load(open(tenants_path))
    problems = []
    res = {"truth": {k: truth[k] for k in ("received", "counted", "duplicates")}}
    res["truth"]["skipped"] = sum(truth["skipped"].values())

    for name, got in (("store", status), ("follow report", report)):
        for k in ("received", "counted", "duplicates"):
            if got[k] != truth[k]:
                problems.append(f"{name}: {k} {got[k]} != truth {truth[k]}")
        if got["skipped"] != truth["skipped"]:
            problems.append(f"{name}: skipped {got['skipped']} != truth {truth['skipped']}")
    skipped = sum(report["skipped"].values())
    res["report"] = {"received": report["received"], "counted": report["counted"],
                     "duplicates": report["duplicates"], "skipped": skipped,
                     "quarantined": report.get("quarantined", 0), "errors": len(report.get("errors", []))}
    res["store"] = {k: status[k] for k in ("received", "counted", "duplicates")}
    if report["received"] != report["counted"] + report["duplicates"] + skipped:
        problems.append(f"follow report does not balance: {report['received']} != {report['counted']} + {report['duplicates']} + {skipped}")
    if report.get("errors"):
        problems.append(f"follow report errors: {report['errors'][:3]}")
    if report.get("quarantined", 0):
        problems.append(f"follow run quarantined {report['quarantined']} records")

    # Every hourly counter row, and per-tenant sums.
    want_rows = {}
    want_tenant = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for r in truth["rows"]:
        key = (r["tenant"], int(datetime.fromisoformat(r["hour"].replace("Z", "+00:00")).timestamp()), r["resource"])
        want_rows[key] = tuple(r[f] for f in FIELDS)
        for f in FIELDS:
            want_tenant[r["tenant"]][f] += r[f]
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    got_rows = {(t, h, res_): tuple(v) for t, h, res_, *v in
                db.execute(f"SELECT tenant, hour, resource, {', '.join(FIELDS)} FROM counters_hour")}
    got_tenant = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for (t, _, _), v in got_rows.items():
        for f, x in zip(FIELDS, v):
            got_tenant[t][f] += x
    bad_rows = [k for k in set(want_rows) | set(got_rows) if want_rows.get(k) != got_rows.get(k)]
    for k in sorted(bad_rows, key=str)[:5]:
        problems.append(f"counters_hour {k}: store {got_rows.get(k)} != truth {want_rows.get(k)}")
    bad_tenants = [t for t in set(want_tenant) | set(got_tenant) if want_tenant.get(t) != got_tenant.get(t)]
    for t in sorted(bad_tenants)[:5]:
        problems.append(f"tenant {t}: store {dict(got_tenant.get(t, {}))} != truth {dict(want_tenant.get(t, {}))}")

    # What serve answered, per tenant (tenants with no usage may be listed with zeros).
    served_tenant = {}
    for row in served["tenants"]:
        u = row["usage"]
        served_tenant[row["tenant"]] = {f: u.get(f, 0) for f in FIELDS}
    bad_served = []
    for t in set(want_tenant) | set(served_tenant):
        w = dict(want_tenant.get(t, dict.fromkeys(FIELDS, 0)))
        if served_tenant.get(t, dict.fromkeys(FIELDS, 0)) != w:
            bad_served.append(t)
    for t in sorted(bad_served)[:5]:
        problems.append(f"serve /v1/tenants {t}: {served_tenant.get(t)} != truth {dict(want_tenant.get(t, {}))}")

    res["rows"] = {"truth": len(want_rows), "store": len(got_rows), "differ": len(bad_rows)}
    res["tenants"] = {"truth": len(want_tenant), "differ_store": len(bad_tenants), "differ_served": len(bad_served)}
    res["tokens"] = {"truth": sum(sum(v[f] for f in TOKENS) for v in want_tenant.values()),
                     "store": sum(sum(v[f] for f in TOKENS) for v in got_tenant.values()),
                     "served": sum(sum(v[f] for f in TOKENS) for v in served_tenant.values())}
    res["problems"] = problems
    res["exact"] = not problems
    write_atomic(out, json.dumps(res, indent=1))
    for p in problems:
        print(f"soak: MISMATCH: {p}", file=sys.stderr)
    sys.exit(0 if not problems else 1)


def rss(csv_path, warmup, end, out):
    warmup, end = float(warmup), float(end)
    rows = [r for r in csv.DictReader(open(csv_path))]
    mid = (warmup + end) / 2
    res = {"warmup_s": warmup, "end_s": end, "factor": FLAT_FACTOR}
    for proc in ("ingest", "serve"):
        col = f"{proc}_rss_kb"
        pts = [(float(r["t_s"]), int(r[col])) for r in rows if r[col] not in ("", "0")]
        steady = [(t, v) for t, v in pts if warmup <= t <= end]
        first = [v for t, v in steady if t < mid]
        last = [v for t, v in steady if t >= mid]
        d = {"samples": len(steady), "max_all_kb": max((v for _, v in pts), default=0)}
        if first and last:
            d.update(start_kb=steady[0][1], end_kb=steady[-1][1], max_first_kb=max(first), max_last_kb=max(last))
            d["ratio"] = round(max(last) / max(first), 3)
            d["flat"] = max(last) <= FLAT_FACTOR * max(first)
        else:
            d.update(start_kb=0, end_kb=0, max_first_kb=0, max_last_kb=0, ratio=0, flat=False, note="too few samples")
        res[proc] = d
    write_atomic(out, json.dumps(res, indent=1))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"deliver": deliver, "verify": verify, "rss": rss}[cmd](*args)
