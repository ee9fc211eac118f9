"""One freshness run for tests/bench/freshness.sh: starts `tally ingest --follow` on a new
bucket and log group, lands one record at a time in each (alternating, at random phases of
the poll), and times each until the store's `counted` total moves. Prints table rows."""
import argparse, gzip, json, random, sqlite3, statistics, subprocess, time, uuid

import boto3

p = argparse.ArgumentParser()
p.add_argument("--tally"); p.add_argument("--dir"); p.add_argument("--endpoint")
p.add_argument("--poll", type=float); p.add_argument("--n", type=int)
a = p.parse_args()

kw = dict(endpoint_url=a.endpoint, region_name="us-east-1")
s3, logs = boto3.client("s3", **kw), boto3.client("logs", **kw)
tag = uuid.uuid4().hex[:10]
bucket, group, stream = f"fresh-{tag}", f"/tally/fresh/{tag}", "aws/bedrock/modelinvocations"
s3.create_bucket(Bucket=bucket)
logs.create_log_group(logGroupName=group)
logs.create_log_stream(logGroupName=group, logStreamName=stream)

config = f"{a.dir}/tally.toml"
with open(config, "w") as f:
    f.write(f'[store]\npath = "tally.sqlite"\n[ingest]\npoll_seconds = {a.poll}\n'
            f'[sources]\nendpoint_url = "{a.endpoint}"\nregion = "us-east-1"\n')

def record(now):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return json.dumps({"schemaType": "ModelInvocationLog", "schemaVersion": "1.0", "timestamp": stamp,
        "accountId": "111122223333", "identity": {"arn": "arn:aws:iam::111122223333:user/app"},
        "region": "us-east-1", "requestId": str(uuid.uuid4()), "operation": "Converse",
        "modelId": "amazon.nova-micro-v1:0", "input": {"inputTokenCount": 10},
        "output": {"outputTokenCount": 5}, "requestMetadata": {"tenant_id": "acme"}})

def counted(db):
    try:
        row = db.execute("SELECT value FROM totals WHERE name = 'counted'").fetchone()
        return row[0] if row else 0
    except sqlite3.OperationalError:
        return 0

proc = subprocess.Popen([a.tally, "--config", config, "-q", "ingest", "--follow", f"s3://{bucket}", f"cloudwatch://{group}"],
                        stdout=subprocess.DEVNULL, stderr=open(f"{a.dir}/tally.log", "w"))
try:
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            db = sqlite3.connect(f"{a.dir}/tally.sqlite", timeout=5)
            counted(db)
            break
        except sqlite3.Error:
            time.sleep(0.05)
    time.sleep(2 * a.poll + 0.5)
    lat = {"s3": [], "cloudwatch": []}
    n_done = 0
    for i in range(2 * a.n):
        src = "s3" if i % 2 == 0 else "cloudwatch"
        time.sleep(random.uniform(0, a.poll))
        before = counted(db)
        now = time.time()
        if src == "s3":
            hour = time.strftime("%Y/%m/%d/%H", time.gmtime(now))
            key = f"AWSLogs/111122223333/BedrockModelInvocationLogs/us-east-1/{hour}/{int(now * 1000)}_{i:04d}.json.gz"
            s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress((record(now) + "\n").encode()))
        else:
            logs.put_log_events(logGroupName=group, logStreamName=stream,
                                logEvents=[{"timestamp": int(now * 1000), "message": record(now)}])
        landed = time.time()
        limit = landed + 30
        while counted(db) <= before:
            if time.time() > limit:
                raise SystemExit(f"record {i} ({src}) never counted; see {a.dir}/tally.log")
            time.sleep(0.002)
        lat[src].append((time.time() - landed) * 1000)
finally:
    proc.terminate()
    code = proc.wait(timeout=30)
if code != 0:
    raise SystemExit(f"tally ingest --follow exited {code} on SIGTERM")
for src, xs in lat.items():
    xs.sort()
    p90 = xs[int(0.9 * (len(xs) - 1))]
    print(f"| {a.poll} | {src} | {len(xs)} | {statistics.median(xs):.0f} | {p90:.0f} | {max(xs):.0f} |", flush=True)
