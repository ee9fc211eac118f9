#!/usr/bin/env bash
# The whole test suite, on a fresh machine: what CI runs (.ci/run) and what the README's
# second command is. Installs what it needs; assumes no service is running.
#
# It starts moto server (a local AWS API: DynamoDB, S3, CloudWatch Logs and Cost Explorer on
# one port; installed into .venv when missing) on a free loopback port, runs every test with
# the `aws` feature against it, and stops it on exit. The AWS tests read the endpoint from
# TALLY_TEST_AWS_ENDPOINT; TALLY_TEST_REQUIRE_AWS=1 makes them fail, not skip, without it.
# Likewise it installs Debian's chromium for the dashboard test (TALLY_TEST_REQUIRE_BROWSER=1).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "run-all: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

# The dashboard test drives Debian's headless Chromium.
if [ ! -x /usr/bin/chromium ]; then
  echo "run-all: installing chromium (Debian package)" >&2
  if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y --no-install-recommends chromium >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" update >/dev/null && DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y --no-install-recommends chromium >/dev/null; }
fi
export TALLY_TEST_REQUIRE_BROWSER=1

source tests/moto.sh
start_moto
export TALLY_TEST_REQUIRE_AWS=1

# Formatting first: it fails in seconds (the rules are in rustfmt.toml).
cargo fmt --check

# A clean build gains nothing from incremental state, which would take ~3 GB of CI's disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo build --all-targets
cargo nextest run --no-fail-fast "$@"
# The lean build (no AWS SDKs, `--no-default-features`) must keep compiling too.
cargo check --no-default-features
