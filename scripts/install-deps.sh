#!/usr/bin/env bash
# Installs what pgrelay's tests, sandbox and benchmarks need on Debian 12 with Rust already
# present: PostgreSQL 15 (server, contrib, client tools, pgbench), redis-server, pgbouncer,
# procps, and the rustfmt/clippy components. Anything already installed is skipped, so on a
# prepared machine this makes no network call. Services the packages start on their own
# (redis on 6379, the distro's PostgreSQL cluster on 5432, pgbouncer on 6432) are stopped:
# tests and the sandbox need those ports.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin

log() { printf 'install-deps: %s\n' "$*"; }

missing=()
[[ -x $PG_BIN/postgres && -x $PG_BIN/initdb && -x $PG_BIN/pg_basebackup ]] || missing+=(postgresql-15)
[[ -f /usr/share/postgresql/15/extension/pg_stat_statements.control ]] || missing+=(postgresql-contrib-15)
[[ -x $PG_BIN/psql && -x $PG_BIN/pgbench ]] || missing+=(postgresql-client-15)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
command -v ps >/dev/null && command -v kill >/dev/null || missing+=(procps)

if ((${#missing[@]} > 0)); then
    log "installing: ${missing[*]}"
    if [[ $(id -u) -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        log "not root and no password-less sudo; run as root:"
        log "  apt-get update && apt-get install -y ${missing[*]}"
        exit 1
    fi
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"

    # Packages start their services where an init system lets them; free the ports.
    for package in "${missing[@]}"; do
        case $package in
            redis-server) "${as_root[@]}" service redis-server stop >/dev/null 2>&1 || true ;;
            pgbouncer) "${as_root[@]}" service pgbouncer stop >/dev/null 2>&1 || true ;;
            postgresql-15) "${as_root[@]}" pg_ctlcluster 15 main stop >/dev/null 2>&1 || true ;;
        esac
    done
else
    log "system packages already installed"
fi

if ! command -v cargo >/dev/null; then
    log "cargo not found: install Rust with rustup and re-run"
    exit 1
fi
for component in rustfmt clippy; do
    subcommand=${component/rustfmt/fmt}
    if ! cargo "$subcommand" --version >/dev/null 2>&1; then
        log "adding rust component $component"
        rustup component add "$component" || {
            log "could not add $component (offline?); run: rustup component add $component"
            exit 1
        }
    fi
done
log "ok"
