#!/usr/bin/env bash
# The whole test suite, on a fresh machine: what CI runs (.ci/run) and what the README's
# second command is. Installs what it needs; assumes no service is running.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "run-all: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

cargo build --all-targets
cargo nextest run --no-fail-fast "$@"
