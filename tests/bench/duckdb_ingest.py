#!/usr/bin/env python3
"""Baseline for tests/bench/compare.sh: the same counters as baseline_parser.py, computed by
DuckDB (PyPI) with `read_json` over the same files and a GROUP BY, on every core.

    .venv/bin/python tests/bench/duckdb_ingest.py LOGS [--config tally.toml] [--threads N] [--rollup FILE]

The files are the tree's `*.json.gz` and `*.ndjson` (what Bedrock and a CloudWatch export
write); lines that are not JSON are ignored (`ignore_errors`). Only the columns the counters
need are declared, so DuckDB skips the bodies. Records are deduplicated by `requestId` (one
GROUP BY), then summed per tenant (`requestMetadata[<metadata_key>]`, else `_unattributed`) x
UTC hour x modelId into a table in memory. Prints the same totals JSON as baseline_parser.py.
"""
import argparse
import os

import duckdb

from baseline_parser import UNATTRIBUTED, metadata_key, report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs")
    ap.add_argument("--config", help="tally.toml to read [tenancy] metadata_key from")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rollup", help="also write the totals per hour x resource to this file")
    args = ap.parse_args()

    key = metadata_key(args.config).replace('"', '""')
    con = duckdb.connect()
    con.execute(f"SET threads TO {args.threads}")
    con.execute("SET TimeZone = 'UTC'")
    files = [os.path.join(args.logs, "**", "*.json.gz"), os.path.join(args.logs, "**", "*.ndjson")]
    columns = {
        "timestamp": "TIMESTAMPTZ",
        "requestId": "VARCHAR",
        "modelId": "VARCHAR",
        "requestMetadata": f'STRUCT("{key}" VARCHAR)',
        "input": "STRUCT(inputTokenCount BIGINT, cacheReadInputTokenCount BIGINT, cacheWriteInputTokenCount BIGINT)",
        "output": "STRUCT(outputTokenCount BIGINT)",
    }
    con.execute(
        f"""
        CREATE TABLE counters AS
        WITH lines AS (
          SELECT * FROM read_json(?, format = 'newline_delimited', columns = {columns!r},
                                  ignore_errors = true, maximum_object_size = 67108864)
          WHERE requestId IS NOT NULL AND modelId IS NOT NULL
        ), records AS (
          SELECT requestId, any_value(timestamp) AS ts, any_value(modelId) AS model,
                 any_value(requestMetadata."{key}") AS tenant,
                 any_value(input) AS input, any_value(output) AS output, count(*) - 1 AS duplicates
          FROM lines GROUP BY requestId
        )
        SELECT coalesce(tenant, '{UNATTRIBUTED}') AS tenant,
               epoch(date_trunc('hour', ts))::BIGINT AS hour,
               model AS resource,
               sum(coalesce(input.inputTokenCount, 0))::BIGINT AS input,
               sum(coalesce(output.outputTokenCount, 0))::BIGINT AS output,
               sum(coalesce(input.cacheReadInputTokenCount, 0))::BIGINT AS cache_read,
               sum(coalesce(input.cacheWriteInputTokenCount, 0))::BIGINT AS cache_write,
               count(*) AS requests,
               sum(duplicates)::BIGINT AS duplicates
        FROM records GROUP BY ALL
        """,
        [files],
    )
    records, duplicates = con.execute("SELECT sum(requests), sum(duplicates) FROM counters").fetchone()
    rows = con.execute(
        "SELECT tenant, hour, resource, input, output, cache_read, cache_write, requests FROM counters"
    ).fetchall()
    report(rows, {"records": int(records or 0), "duplicates": int(duplicates or 0)}, args.rollup)


if __name__ == "__main__":
    main()
