#!/usr/bin/env bash
# THE test command (CI runs it through .ci/run): dependencies, formatting, lints, every test.
# Integration tests start real PostgreSQL clusters (tests/support); they run as threads of one
# process per test binary, four at a time since most of their time is spent waiting on servers.
# --no-fail-fast: one run reports every failing test binary, not just the first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check

echo "test.sh: cargo clippy"
cargo clippy --all-targets -j2 -- -D warnings

echo "test.sh: cargo test"
# Through the environment, not `-- --test-threads`: criterion bench targets (run once in test
# mode by --all-targets) reject libtest flags they do not know.
RUST_TEST_THREADS=${RUST_TEST_THREADS:-4} cargo test -j2 --all-targets --no-fail-fast

echo "test.sh: all passed"
