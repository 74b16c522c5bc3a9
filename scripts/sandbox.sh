#!/usr/bin/env bash
# A local cluster to try pgrelay against: a PostgreSQL 15 leader, two streaming replicas and a
# redis-server, with the same roles and passwords as the integration tests (app/app,
# app2/app2, md5_user/md5pass, trust_user, admin_user/admin; superuser postgres/postgres).
#
#   scripts/sandbox.sh up       create and/or start it (idempotent)
#   scripts/sandbox.sh status   what runs where, with a psql line per node
#   scripts/sandbox.sh down     stop it and delete its data
#
# Environment: PGRELAY_SANDBOX_DIR (default /tmp/pgrelay-sandbox; also the unix socket dir, so
# keep it short), PGRELAY_SANDBOX_LEADER_PORT (5432), PGRELAY_SANDBOX_REPLICA1_PORT (5433),
# PGRELAY_SANDBOX_REPLICA2_PORT (5434), PGRELAY_SANDBOX_REDIS_PORT (6379).
# Run as root (PostgreSQL then runs as the `postgres` user) or as a normal user.
set -euo pipefail

DIR=${PGRELAY_SANDBOX_DIR:-/tmp/pgrelay-sandbox}
LEADER_PORT=${PGRELAY_SANDBOX_LEADER_PORT:-5432}
REPLICA1_PORT=${PGRELAY_SANDBOX_REPLICA1_PORT:-5433}
REPLICA2_PORT=${PGRELAY_SANDBOX_REPLICA2_PORT:-5434}
REDIS_PORT=${PGRELAY_SANDBOX_REDIS_PORT:-6379}
PG_BIN=/usr/lib/postgresql/15/bin
NODES=(leader replica1 replica2)

log() { printf 'sandbox: %s\n' "$*"; }
die() {
    printf 'sandbox: %s\n' "$*" >&2
    exit 1
}

port_of() {
    case $1 in
        leader) echo "$LEADER_PORT" ;;
        replica1) echo "$REPLICA1_PORT" ;;
        replica2) echo "$REPLICA2_PORT" ;;
    esac
}

# PostgreSQL's server tools refuse to run as root.
pg() {
    local tool=$1
    shift
    if [[ $(id -u) -eq 0 ]]; then
        (cd "$DIR" && runuser -u postgres -- "$PG_BIN/$tool" "$@")
    else
        "$PG_BIN/$tool" "$@"
    fi
}

# Superuser psql over the unix socket (local connections are trusted).
sql() {
    local port=$1
    shift
    "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$port" -U postgres -d postgres "$@"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() { pg pg_ctl status -D "$DIR/$1/data" >/dev/null 2>&1; }

redis_ping() {
    [[ $(printf 'PING\r\n' | timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT; cat >&3; head -c 7 <&3" 2>/dev/null) == +PONG* ]]
}

check_requirements() {
    [[ -x $PG_BIN/postgres ]] || die "PostgreSQL 15 not found in $PG_BIN: run scripts/install-deps.sh"
    command -v redis-server >/dev/null || die "redis-server not found: run scripts/install-deps.sh"
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "no postgres user: run scripts/install-deps.sh"
    fi
}

# Refuses to start a node on a port someone else already listens on (often the distro's own
# cluster on 5432: `pg_ctlcluster 15 main stop`).
ensure_port_free() {
    if listening "$2"; then
        die "port $2 (for $1) is taken by another process; stop it or set PGRELAY_SANDBOX_*_PORT"
    fi
}

settings() {
    cat <<CONF

# pgrelay sandbox
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
max_connections = 300
fsync = off
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '64MB'
hot_standby = on
hot_standby_feedback = on
wal_log_hints = on
wal_sender_timeout = '2s'
wal_receiver_status_interval = '1s'
wal_receiver_timeout = '5s'
wal_retrieve_retry_interval = '200ms'
shared_preload_libraries = 'pg_stat_statements'
logging_collector = off
log_min_messages = warning
CONF
}

# Always appended last: a replica's postgresql.conf starts as a copy of the leader's.
node_identity() {
    printf "port = %s\ncluster_name = '%s'\n" "$(port_of "$1")" "$1"
}

start_node() {
    local node=$1
    if running "$node"; then
        return
    fi
    ensure_port_free "$node" "$(port_of "$node")"
    pg pg_ctl start -w -t 30 -D "$DIR/$node/data" -l "$DIR/$node/postgres.log" >/dev/null ||
        die "$node did not start; see $DIR/$node/postgres.log"
}

create_leader() {
    local pwfile=$DIR/pwfile
    echo postgres >"$pwfile"
    [[ $(id -u) -ne 0 ]] || chown postgres:postgres "$pwfile"
    pg initdb -D "$DIR/leader/data" -U postgres --pwfile="$pwfile" \
        --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C --no-sync >/dev/null
    rm -f "$pwfile"
    cat >"$DIR/leader/data/pg_hba.conf" <<HBA
local   all          all                       trust
local   replication  all                       trust
host    replication  all         127.0.0.1/32  trust
host    all          trust_user  127.0.0.1/32  trust
host    all          md5_user    127.0.0.1/32  md5
host    all          all         127.0.0.1/32  scram-sha-256
HBA
    {
        settings
        node_identity leader
    } >>"$DIR/leader/data/postgresql.conf"
}

# Idempotent, so `up` can run it every time.
create_roles() {
    sql "$LEADER_PORT" <<'SQL'
SET client_min_messages = warning;
DO $$
DECLARE
    role record;
BEGIN
    FOR role IN SELECT * FROM (VALUES ('app', 'app'), ('app2', 'app2'), ('admin_user', 'admin'),
                                      ('trust_user', NULL)) AS r(name, password) LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role.name) THEN
            EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', role.name, role.password);
        END IF;
    END LOOP;
END $$;
-- The stored secret must be md5 for the server to run md5 auth for this role.
SET password_encryption = 'md5';
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'md5_user') THEN
        CREATE ROLE md5_user LOGIN PASSWORD 'md5pass';
    END IF;
END $$;
RESET password_encryption;
GRANT CREATE ON DATABASE postgres TO app, app2, md5_user, trust_user, admin_user;
GRANT CREATE ON SCHEMA public TO app, app2, md5_user, trust_user, admin_user;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SQL
}

create_replica() {
    local node=$1
    # A slot left over from an earlier replica with this name would make -C fail.
    sql "$LEADER_PORT" -c "SELECT pg_drop_replication_slot('$node') FROM pg_replication_slots
                           WHERE slot_name = '$node' AND NOT active" >/dev/null
    pg pg_basebackup -h 127.0.0.1 -p "$LEADER_PORT" -U postgres -D "$DIR/$node/data" \
        -R -c fast -X stream -C -S "$node"
    node_identity "$node" >>"$DIR/$node/data/postgresql.conf"
}

start_redis() {
    if redis_ping; then
        [[ -f $DIR/redis/redis.pid ]] || log "redis: something already answers on $REDIS_PORT; using it"
        return
    fi
    ensure_port_free redis "$REDIS_PORT"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize yes --pidfile "$DIR/redis/redis.pid" --logfile "$DIR/redis/redis.log" \
        --dir "$DIR/redis" >/dev/null
    for _ in $(seq 100); do
        redis_ping && return
        sleep 0.1
    done
    die "redis-server did not answer on $REDIS_PORT; see $DIR/redis/redis.log"
}

wait_streaming() {
    local node=$1
    for _ in $(seq 300); do
        [[ $(sql "$LEADER_PORT" -c "SELECT count(*) FROM pg_stat_replication
                                    WHERE application_name = '$node' AND state = 'streaming'") == 1 ]] &&
            return
        sleep 0.1
    done
    die "$node is not streaming from the leader; see $DIR/$node/postgres.log"
}

up() {
    check_requirements
    mkdir -p "$DIR/redis" "${NODES[@]/#/$DIR/}"
    ((${#DIR} <= 90)) || die "PGRELAY_SANDBOX_DIR is too long for a unix socket dir: $DIR"
    [[ $(id -u) -ne 0 ]] || chown postgres:postgres "$DIR" "${NODES[@]/#/$DIR/}"
    # Ports are baked into the nodes' configs and the replicas' primary_conninfo.
    local ports="$LEADER_PORT $REPLICA1_PORT $REPLICA2_PORT $REDIS_PORT"
    if [[ -f $DIR/ports && $(cat "$DIR/ports") != "$ports" ]]; then
        die "$DIR was created with ports $(cat "$DIR/ports"), not $ports: run '$0 down' first"
    fi
    echo "$ports" >"$DIR/ports"

    [[ -d $DIR/leader/data ]] || create_leader
    start_node leader
    create_roles
    for node in replica1 replica2; do
        [[ -d $DIR/$node/data ]] || create_replica "$node"
        start_node "$node"
    done
    for node in replica1 replica2; do
        wait_streaming "$node"
    done
    start_redis
    status
}

# status and down describe the sandbox as it was created, whatever the environment says now.
use_recorded_ports() {
    if [[ -f $DIR/ports ]]; then
        read -r LEADER_PORT REPLICA1_PORT REPLICA2_PORT REDIS_PORT <"$DIR/ports"
    fi
}

status() {
    [[ -d $DIR ]] || {
        log "no sandbox in $DIR (run: scripts/sandbox.sh up)"
        return
    }
    use_recorded_ports
    local node port role
    for node in "${NODES[@]}"; do
        port=$(port_of "$node")
        if [[ -d $DIR/$node/data ]] && running "$node"; then
            role=$(sql "$port" -c "SELECT CASE WHEN pg_is_in_recovery() THEN 'replica' ELSE 'leader' END")
            printf '%-9s %-8s 127.0.0.1:%-5s psql "postgres://app:app@127.0.0.1:%s/postgres"\n' \
                "$node" "$role" "$port" "$port"
        else
            printf '%-9s %-8s 127.0.0.1:%s\n' "$node" stopped "$port"
        fi
    done
    if redis_ping; then
        printf '%-9s %-8s 127.0.0.1:%-5s redis-cli -p %s\n' redis up "$REDIS_PORT" "$REDIS_PORT"
    else
        printf '%-9s %-8s 127.0.0.1:%s\n' redis stopped "$REDIS_PORT"
    fi
    if [[ -d $DIR/leader/data ]] && running leader; then
        printf 'streaming: %s\n' "$(sql "$LEADER_PORT" -c "SELECT coalesce(string_agg(application_name || ' ' || state, ', '
                                                     ORDER BY application_name), 'none') FROM pg_stat_replication")"
    fi
    printf 'data and logs: %s\n' "$DIR"
}

down() {
    local node pid
    use_recorded_ports
    for node in replica2 replica1 leader; do
        if [[ -d $DIR/$node/data ]] && running "$node"; then
            pg pg_ctl stop -w -t 30 -m fast -D "$DIR/$node/data" >/dev/null
        fi
    done
    if [[ -f $DIR/redis/redis.pid ]]; then
        pid=$(cat "$DIR/redis/redis.pid")
        if grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 50); do
                [[ -d /proc/$pid ]] || break
                sleep 0.1
            done
        fi
    fi
    rm -rf "$DIR"
    log "stopped and removed $DIR"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
