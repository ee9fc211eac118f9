#!/usr/bin/env python3
"""tests/bench/export.sh's data (standard library only): one set of Bedrock model-invocation
log records written twice.

    make_export.py --out-export PATH --out-ndjson PATH [--bytes N] [--seed S] [--tenants T]

--out-export gets a CloudWatch Logs export exactly as `aws logs filter-log-events --output
json` prints it (Python's json.dump with indent=4 and ensure_ascii=False): {"events": [...],
"searchedLogStreams": []}, each event {logStreamName, timestamp, message, ingestionTime,
eventId} with the record, compact JSON, as the `message` string. --out-ndjson gets the same
records, one compact JSON per line, in the same order. Records are added until the export
holds about N bytes (default 300e6). Both files are written as the records are made, so
memory stays small whatever N. The records are ModelInvocationLog 1.0 Converse calls
(shaped like /work/shared/realdata/bedrock-invocation-logs-cwl-requestmetadata/), spread in
time order over four days of November 2025, each with a unique requestId and a tenant
("tenant-NN", one of T) in requestMetadata.tenant_id. The same seed makes the same files.

Prints one JSON line on stdout: records, export_bytes, ndjson_bytes and the paths.
"""
import argparse
import json
import random
import sys
import uuid
from datetime import datetime, timezone

ACCOUNT = "123456789012"
STREAM = "aws/bedrock/modelinvocations"
START = int(datetime(2025, 11, 3, tzinfo=timezone.utc).timestamp())
SPAN_S = 4 * 86_400
MODELS = [
    "amazon.nova-lite-v1:0",
    "amazon.nova-micro-v1:0",
    "anthropic.claude-3-haiku-20240307-v1:0",
]
REGIONS = ["us-east-1", "us-east-1", "us-west-2"]
# Mostly ASCII, with a few words that need UTF-8 (and escapes: quotes, newlines) in the text.
WORDS = (
    "the a of to and in for with on by from query users table index latency cache request "
    "tenant invoice billing report summary function python rust error retry timeout stream "
    "region model token budget plan quota metric dashboard alert schema field value record "
    "café naïve Grüße 東京 \"quoted\" `code` 30% $5.00 a/b x<y"
).split()


def text(rng, size):
    """About `size` bytes of words, now and then broken into lines."""
    out, n = [], 0
    while n < size:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
        if rng.random() < 0.04:
            out.append("\n\n" if rng.random() < 0.5 else "\n- ")
    return " ".join(out)


def record(rng, ts, tenants):
    prompt = text(rng, rng.randint(200, 500))
    answer = text(rng, rng.randint(200, 700))
    tokens_in, tokens_out = max(1, len(prompt) // 4), max(1, len(answer) // 4)
    when = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "timestamp": when,
        "accountId": ACCOUNT,
        "identity": {"arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/bedrock-app/session-{rng.randrange(8)}"},
        "region": rng.choice(REGIONS),
        "requestId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "operation": "Converse",
        "modelId": rng.choice(MODELS),
        "input": {
            "inputContentType": "application/json",
            "inputBodyJson": {
                "messages": [{"role": "user", "content": [{"text": prompt}]}],
                "inferenceConfig": {"maxTokens": 1024},
            },
            "inputTokenCount": tokens_in,
        },
        "output": {
            "outputContentType": "application/json",
            "outputBodyJson": {
                "output": {
                    "message": {"role": "assistant", "content": [{"text": answer}]},
                    "stopReason": "end_turn",
                    "metrics": {"latencyMs": rng.randint(300, 9000)},
                    "usage": {"inputTokens": tokens_in, "outputTokens": tokens_out, "totalTokens": tokens_in + tokens_out},
                }
            },
            "outputTokenCount": tokens_out,
        },
        "requestMetadata": {"tenant_id": f"tenant-{rng.randrange(tenants):02d}"},
        "schemaType": "ModelInvocationLog",
        "schemaVersion": "1.0",
    }


def event(rng, ts, line):
    """One event of the export, at json.dump's indent=4 depth inside "events" (no separator)."""
    ms = ts * 1000
    return (
        "        {\n"
        f'            "logStreamName": "{STREAM}",\n'
        f'            "timestamp": {ms},\n'
        f'            "message": {json.dumps(line, ensure_ascii=False)},\n'
        f'            "ingestionTime": {ms + rng.randint(2000, 15000)},\n'
        f'            "eventId": "{rng.getrandbits(190) % 10**56:056d}"\n'
        "        }"
    )


def compact(rec):
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-export", required=True)
    ap.add_argument("--out-ndjson", required=True)
    ap.add_argument("--bytes", type=lambda s: int(float(s)), default=300_000_000, help="target export size")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tenants", type=int, default=50)
    a = ap.parse_args()

    # Spread the records evenly over SPAN_S: estimate their number from a sample's event size.
    sample = random.Random(a.seed + 1)
    per_event = sum(len(event(sample, START, compact(record(sample, START, a.tenants))).encode()) + 2 for _ in range(200)) / 200
    step = SPAN_S / max(1.0, a.bytes / per_event)

    rng = random.Random(a.seed)
    head, foot = b'{\n    "events": [\n', b'\n    ],\n    "searchedLogStreams": []\n}\n'
    records, t = 0, 0.0
    with open(a.out_export, "wb", buffering=1 << 20) as ex, open(a.out_ndjson, "wb", buffering=1 << 20) as nd:
        ex.write(head)
        ex_bytes, nd_bytes = len(head), 0
        while records == 0 or ex_bytes + len(foot) < a.bytes:
            ts = START + int(t)
            line = compact(record(rng, ts, a.tenants))
            ev = (b",\n" if records else b"") + event(rng, ts, line).encode()
            nl = line.encode() + b"\n"
            ex.write(ev)
            nd.write(nl)
            ex_bytes += len(ev)
            nd_bytes += len(nl)
            records += 1
            t += rng.expovariate(1 / step)
            if records % 50_000 == 0:
                print(f"make_export: {records} records, {ex_bytes / 1e6:.0f} MB", file=sys.stderr)
        ex.write(foot)
        ex_bytes += len(foot)
    print(json.dumps({"records": records, "export_bytes": ex_bytes, "ndjson_bytes": nd_bytes,
                      "export": a.out_export, "ndjson": a.out_ndjson}))


if __name__ == "__main__":
    main()
