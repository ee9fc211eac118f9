//! The integration tests, as one test binary.
//!
//! Every test here links all of tally (DataFusion, the AWS SDK, axum): as separate binaries
//! under `tests/`, each was a ~300 MB link, and a cold CI build spent its time and its disk on
//! seventeen of them (a CI run ran out of disk at 10 GB of `target/`; a clean build now takes
//! ~3 GB). One binary is one link. The modules are the former test files; name a group with
//! nextest's filter, e.g. `cargo nextest run serve::`. `tests/run-all.sh` runs them all.
//!
//! # What each file tests
//!
//! Unit tests sit beside the code (parser, scanner, model ids, pricing, tenant rules, config
//! errors; `source::files`: the time a path names, and discovery keying each file by its real
//! path once, through `..`, a symbolic link and a file named twice).
//!
//! Ingest:
//! - `realdata.rs` — every record of the real logs in `fixtures/realdata` with its counts and
//!   cost, and the same records in nine export shapes giving the same counters.
//! - `every_record_counts.rs` — a bad record costs that record, never the file, on any line and
//!   in any shape; exports of any size read element by element; a file refused whole is a
//!   failed file, named, exit 4.
//! - `exactly_once.rs` — `tally ingest` SIGKILLed 30 times at random points of a
//!   60,000-record run and restarted, counters compared with the generator's truth; re-runs,
//!   cross-file duplicates, late records, grown files, `--follow` with SIGTERM.
//! - `bad_input.rs` — one test per bad-input kind of SPEC §7 (file, line, reason, the rest
//!   counted); a record older than the dedup window quarantined with its neighbours counted; a
//!   two-source backfill over three months (S3 tree and CloudWatch exports named by day)
//!   counted whole, which path order failed (the January export was refused).
//! - `gzip.rs` — one text as plain NDJSON, as one gzip member (inflated whole) and as two
//!   members cut between and inside lines (streamed): the same report, quarantine and
//!   counters; a file of two identical members counts both; a file over the 8 MiB whole-file
//!   limit streams to the same result as its text.
//! - `hostile.rs` — a careless or hostile input costs only itself: a bad clock, a broken CUR,
//!   an absurd config, a quarantine bomb, a counter sum past 2⁶³ − 1; each test failed on the
//!   code before its fix.
//! - `properties.rs` — property tests: aggregation order-insensitive and mergeable, roll-ups
//!   add up, replay is a no-op, batch order does not matter.
//! - `dimensions.rs` — every dimension besides tokens (images, video and audio seconds, search
//!   units, 1 h cache writes, latency-optimized and cross-region calls) from the real-shaped
//!   records of `fixtures/dimensions` through `tally ingest` to `tally meter` and `/v1/usage`,
//!   each count and the estimate worked out by hand; bad values quarantined with their field.
//!
//! Stores:
//! - `store_sqlite.rs` + `common/conformance.rs` — the `CounterStore` conformance suite,
//!   written to be run by every backend; SQLite's transaction groups (invisible to another
//!   connection until committed, rolled back whole by a refused batch, an explicit rollback or
//!   a close), and a property test that grouping batches changes nothing counted.
//! - `store_dynamodb.rs` — against moto: the conformance suite on DynamoDB (unsharded and with
//!   `shards = 3`, each as two tests of every other check, a read repeated with no write
//!   between answered once); a batch too big for one transaction, against SQLite's result,
//!   replayed and refused; a writer cut off after each of a split batch's calls, finished
//!   (undone or redone) by the next; `tally ingest` through a loopback proxy that answers 10%
//!   of DynamoDB calls with throttling or HTTP 500, counters and totals equal to the
//!   generator's truth; a persistent failure (exit 1, no checkpoint moved, then a clean
//!   re-run); `tally init`, `ingest --json` (with the write counts) and `meter` on a table; and
//!   the SIGKILL test of `exactly_once.rs` (shared in `support/kill.rs`, 30 kills) on DynamoDB.
//!   **Open question:** before `tests/moto_server.py` serialised DynamoDB requests, this test
//!   failed twice in about eleven runs: once the run after the kills exited non-zero, and once
//!   the counters of a few tenant-hours came out **doubled**. The likely cause is moto, not
//!   tally: moto's threaded server applies a killed writer's last transaction while the
//!   restarted writer's requests run, with no lock between them, where DynamoDB applies each
//!   transaction atomically. This is not proven against real DynamoDB, but with the lock the
//!   test has passed every run since: 18 of 18, 8 of them with their output kept, none needing
//!   the retry. It prints a failing post-kill run's stderr, allows one more run, and always
//!   asserts exact counters.
//! - `sources_aws.rs` — the S3 and CloudWatch Logs sources against moto: the same generated
//!   records through files, S3 and CloudWatch give the same counters; with 10% of S3 and Logs
//!   calls failing and bodies cut mid-stream (`support/aws_faults.rs`, a loopback proxy),
//!   nothing lost or doubled; the marker object skipped and offloaded bodies never fetched;
//!   late objects within the lookback and a new region's partition read; `tally ingest` on S3
//!   and CloudWatch at once, SIGKILLed 12 times, exact after a restart; `--follow` picking up
//!   new objects and events, a non-JSON event quarantined as `non_json`, SIGTERM exiting 0.
//!
//! Reconcile:
//! - `reconcile_properties.rs` — allocation: shares add up exactly, each within one 10⁻¹⁰ USD
//!   unit of proportional, independent of input order; every unit of every line is allocated
//!   or unallocated.
//! - `reconcile_realdata.rs` — the real legacy CUR in `fixtures/cur/legacy-workshop`: its 52
//!   Bedrock rows, each in its billing period, with their costs and tokens (expected values
//!   from the pyarrow-derived CSV, not from tally).
//! - `reconcile.rs` — generated logs ingested and billed by a generated CUR: the total equals
//!   the generator's bill, each rule of SPEC §3 is exercised, CUR 2.0 and legacy CUR write
//!   byte-identical allocation/drift/adjustments, re-runs write the same bytes, a restated CUR
//!   replaces the period, `tally sql` table/CSV/Parquet, bad CUR files named.
//! - `reconcile_aws.rs` — against moto: the fixture's CUR uploaded to a bucket (both periods'
//!   partitions and a manifest) and reconciled from `s3://…` gives the same files, byte for
//!   byte, as from the folder, for CUR 2.0 and legacy; a missing bucket fails naming it and
//!   writes nothing; `--cost-explorer` with queued Cost Explorer results flags exactly the tag
//!   values that differ, and `difference` = cost_explorer − cur_tagged on every row.
//! - `reconcile_queries.rs` — every `queries/*.sql` against that fixture, reconciled and
//!   invoiced on the demo's plans, compared with `queries/golden/`; `margin.sql` also agrees,
//!   tenant by tenant, with the `margin.csv` that `tally invoice` writes.
//!
//! Invoices:
//! - `invoice_golden.rs` — rendered invoices per plan kind (bundled, quota in tokens and in
//!   credits, metered with markup and with the minimum, add-on with overage, a provisional
//!   one, a v2 delta) against `fixtures/invoice/golden/` (regenerate on purpose with
//!   `TALLY_BLESS=1`), each with its amounts worked out by hand in the test, validated against
//!   the JSON Schema; the schema refuses float money, wrong places, unknown fields, malformed
//!   ids.
//! - `invoice_properties.rs` — property tests: total = Σ lines each rounded once; overage never
//!   negative and exactly the rounded pro-rata amount; bundled margin = fee − cost; metered =
//!   max(cost × markup, minimum); any sequence of restatements issues versions that add up to
//!   a fresh invoice, and unchanged inputs issue nothing.
//! - `invoice.rs` — end to end through the CLI: provisional labels and drafts, final v1 from
//!   the allocation (cost basis = allocated cost, metered = cost × markup), every document
//!   validated against the schema `tally schema invoice` prints, the lines CSV and `tally sql`
//!   adding up to the totals, unbilled tenants in the margin report, a re-run issuing nothing,
//!   a restated CUR giving v2 deltas with v1 byte-identical, and a final period without its
//!   reconcile refused.
//!
//! The rest:
//! - `demo.rs` — `tally demo` (the README's first command) end to end: ingest counts equal the
//!   generator's truth and balance, reconcile's allocated + unallocated equals the CUR's usage
//!   cost, final invoices for every tenant on a plan summing to the charge, the demo's serve
//!   key stored as a hash only, and a second run giving the same counts and bill.
//! - `serve.rs` — `tally serve` in the test's process (`serve::run` on a listener bound to
//!   `127.0.0.1:0`, stopped through its shutdown future), over counters written by an ingest,
//!   with every number worked out from hand-written records: every endpoint refuses
//!   no key, wrong keys and hashes (401), another tenant's `?tenant=` and tenant keys on
//!   `/v1/tenants` (403, naming nothing of the other tenant), and answers its own tenant's
//!   quota, usage and the admin's sorted list exactly — on SQLite and on DynamoDB (moto); keys
//!   never in the log; `/metrics` and `/healthz`; a quota answer at most `cache_ms` old after
//!   an ingest; each alert threshold (50%, 100%, requests per day, spike) delivered once across
//!   checks and a restart, the first after two webhook 500s (three attempts), pending alerts
//!   delivered after a restart; the binary itself (`--listen`, `--as-of`, no key in its log,
//!   exit 0 on SIGTERM); `tally key new`/`key hash`; and the dashboard in Debian's
//!   headless Chromium (tenant and admin views, the rendered numbers checked, screenshots kept
//!   in `target/test-artifacts/`). `tests/run-all.sh` installs `chromium` when missing and sets
//!   `TALLY_TEST_REQUIRE_BROWSER=1`.
//! - `readme.rs` — README.md names only paths and `tally` commands that exist, in at most 500
//!   lines.
//!
//! # AWS tests and moto
//!
//! AWS tests reach moto through `support/aws.rs`: `TALLY_TEST_AWS_ENDPOINT` is the endpoint
//! (`tests/run-all.sh` starts `moto_server` on a free loopback port via `tests/moto.sh`, with
//! dummy credentials and `AWS_REGION`), and `TALLY_TEST_REQUIRE_AWS=1`, which the script sets,
//! makes a test without the endpoint fail; run by hand without it, they print a note and check
//! nothing. Each test makes its own tables (`unique_name`). moto runs through
//! `tests/moto_server.py`, its own server with fixes to DynamoDB: moto's `TransactWriteItems`
//! deep-copies the table once per *action* (to roll back) and never frees the copies —
//! measured, a 99-action transaction on a 2,000-item table took 10 s and 250 MB, and the suite
//! drove moto past 16 GB. The wrapper copies each table once per transaction and keeps the
//! copies out of moto's dashboard tracker: same answers, 0.15 s per transaction, flat memory.
//! It also stores number sums in plain notation (moto writes `4E-7` and then fails to add to
//! it) and serialises DynamoDB requests (moto's threaded server has no lock around them;
//! DynamoDB applies each request atomically).

mod common;
mod invoice_support;
mod reconcile_support;
mod support;

mod bad_input;
mod demo;
mod dimensions;
mod errors;
mod every_record_counts;
mod exactly_once;
mod gzip;
mod hostile;
mod invoice;
mod invoice_golden;
mod invoice_properties;
mod layers;
mod properties;
mod readme;
mod realdata;
mod reconcile;
mod reconcile_aws;
mod reconcile_properties;
mod reconcile_queries;
mod reconcile_realdata;
mod serve;
mod sources_aws;
mod store_dynamodb;
mod store_sqlite;
