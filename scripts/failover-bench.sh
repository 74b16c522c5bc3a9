#!/usr/bin/env bash
# Failover benchmark (issue 5, acceptance 6): how long after `pg_ctl promote` a client writing
# through pgrelay gets its first successful write.
#
# Each run starts a fresh cluster with the integration-test harness (a leader, two streaming
# replicas, on free loopback ports, torn down afterwards) and pgrelay with
# probe_interval = 250ms, keeps a client doing one INSERT every 10 ms through pgrelay, stops
# the leader (`pg_ctl stop -m immediate`), promotes replica 1 and measures the seconds from
# the promote command to the first INSERT the new leader acknowledges. Prints each run and
# min / median / max. Goal: median <= 2 s.
#
#   scripts/failover-bench.sh            5 runs
#   FAILOVER_BENCH_RUNS=10 scripts/failover-bench.sh
#
# Needs PostgreSQL 15 in /usr/lib/postgresql/15/bin (scripts/install-deps.sh) and, as root,
# a `postgres` user. CARGO_BUILD_JOBS (default 2) bounds the build.
set -euo pipefail

cd "$(dirname "$0")/.."
export FAILOVER_BENCH_RUNS=${FAILOVER_BENCH_RUNS:-5}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
output=$(mktemp)
trap 'rm -f "$output"' EXIT

# The harness's own progress lines go to stderr; the summary line to stdout.
cargo test --release --test failover -- --ignored failover_bench --exact --nocapture \
    --test-threads 1 2>&1 | tee "$output" | grep -E '^(run [0-9]+:|failover \(|test result)' || true

if ! grep -q '^failover (' "$output"; then
    echo "failover-bench: the benchmark did not finish; full output:" >&2
    cat "$output" >&2
    exit 1
fi
