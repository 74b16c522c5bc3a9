#!/usr/bin/env bash
# From a fresh checkout to a running pgrelay: installs dependencies, starts the sandbox cluster
# (leader 5432, replicas 5433/5434, redis 6379), builds a release binary and runs it in the
# foreground with proxy.toml. Stop it with Ctrl-C; `scripts/sandbox.sh down` removes the cluster.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh
bash scripts/sandbox.sh up
cargo build --release -j2

cat <<'INFO'

pgrelay is starting on 127.0.0.1:6432 (admin: http://127.0.0.1:9930/metrics). Connect with:

  DATABASE_URL=postgres://app:app@127.0.0.1:6432/postgres
  psql "postgres://app:app@127.0.0.1:6432/postgres"

INFO
exec target/release/pgrelay --config proxy.toml
