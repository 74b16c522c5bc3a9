# shellcheck shell=bash disable=SC2034
# Shared by scripts/bench.sh, scripts/bench-idle.sh and scripts/bench-instructions.sh (sourced,
# not run): a private sandbox cluster on free ports, the pgrelay release binary, starting and
# stopping pgrelay, a PgBouncer config, small helpers.
# The sourcing script sets BENCH_NAME (log prefix) and BENCH_PORT_BASE before calling these.

PG_BIN=/usr/lib/postgresql/15/bin
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

log() { printf '%s: %s\n' "$BENCH_NAME" "$*" >&2; }
die() {
    printf '%s: %s\n' "$BENCH_NAME" "$*" >&2
    exit 1
}

# Lines collected for the "problems" section printed at the end.
PROBLEMS=()
problem() {
    PROBLEMS+=("$*")
    log "PROBLEM: $*"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_ports COUNT: sets PORTS to COUNT consecutive free loopback ports, starting at
# BENCH_PORT_BASE and moving up in steps of 20 while any of them is taken.
pick_ports() {
    local count=$1 base=$BENCH_PORT_BASE i ok
    for _ in $(seq 0 49); do
        ok=1
        PORTS=()
        for ((i = 0; i < count; i++)); do
            if listening $((base + i)); then
                ok=0
                break
            fi
            PORTS+=($((base + i)))
        done
        ((ok)) && return 0
        base=$((base + 20))
    done
    die "no $count free consecutive ports found from $BENCH_PORT_BASE"
}

# ---- work dirs and cleanup -------------------------------------------------------------------

# One work dir (configs, logs) and one sandbox dir (short: it is also the unix socket dir).
make_dirs() {
    WORK=$(mktemp -d "/tmp/${BENCH_NAME}.XXXXXX")
    SANDBOX_DIR=$(mktemp -d /tmp/pgrb.XXXXXX)
    chmod 755 "$WORK"
}

CLEANUP_PIDS=()
SANDBOX_STARTED=0
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    set +e
    for pid in "${CLEANUP_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null
        fi
    done
    if ((SANDBOX_STARTED)) || [[ -f ${SANDBOX_DIR:-/nonexistent}/ports ]]; then
        PGRELAY_SANDBOX_DIR=$SANDBOX_DIR bash "$REPO_ROOT/scripts/sandbox.sh" down >/dev/null 2>&1 ||
            log "sandbox teardown failed; remove $SANDBOX_DIR by hand"
    fi
    [[ -n ${SANDBOX_DIR:-} ]] && rm -rf "$SANDBOX_DIR"
    if [[ -n ${WORK:-} ]]; then
        if [[ ${BENCH_KEEP:-0} == 1 ]]; then
            log "kept work dir (configs, logs): $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
install_cleanup() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---- sandbox ---------------------------------------------------------------------------------

# sandbox_up LEADER R1 R2 REDIS: the repo's sandbox with its own dir and ports.
sandbox_up() {
    LEADER_PORT=$1 REPLICA1_PORT=$2 REPLICA2_PORT=$3 REDIS_PORT=$4
    SANDBOX_STARTED=1
    if ! PGRELAY_SANDBOX_DIR=$SANDBOX_DIR PGRELAY_SANDBOX_LEADER_PORT=$LEADER_PORT \
        PGRELAY_SANDBOX_REPLICA1_PORT=$REPLICA1_PORT PGRELAY_SANDBOX_REPLICA2_PORT=$REPLICA2_PORT \
        PGRELAY_SANDBOX_REDIS_PORT=$REDIS_PORT \
        timeout 180 bash "$REPO_ROOT/scripts/sandbox.sh" up >"$WORK/sandbox.log" 2>&1; then
        cat "$WORK/sandbox.log" >&2
        die "the sandbox cluster did not start"
    fi
}

# Superuser psql on a sandbox node, over its unix socket.
sql() {
    local port=$1
    shift
    "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$SANDBOX_DIR" -p "$port" -U postgres \
        -d postgres "$@"
}

# Both replicas have replayed everything the leader has written so far (bounded: 60 s).
wait_replicas_caught_up() {
    local lsn port
    lsn=$(sql "$LEADER_PORT" -c "SELECT pg_current_wal_lsn()")
    for port in "$REPLICA1_PORT" "$REPLICA2_PORT"; do
        for _ in $(seq 600); do
            [[ $(sql "$port" -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn") == t ]] && break
            sleep 0.1
        done
        [[ $(sql "$port" -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn") == t ]] ||
            problem "replica on $port has not replayed $lsn after 60 s"
    done
}

# ---- PgBouncer -------------------------------------------------------------------------------

# pgbouncer_config DIR PORT [EXTRA_LINES]: userlist.txt (app/app) and pgbouncer.ini in DIR for
# PgBouncer in transaction pooling on 127.0.0.1:PORT in front of the leader (LEADER_PORT),
# pool_size 20, its log in DIR; EXTRA_LINES go into [pgbouncer].
pgbouncer_config() {
    local dir=$1 port=$2 extra=${3:-}
    mkdir -p "$dir"
    printf '"app" "app"\n' >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$LEADER_PORT dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 1000
logfile = $dir/pgbouncer.log
$extra
INI
}

# ---- pgrelay ---------------------------------------------------------------------------------

# Builds the release binary (unless PGRELAY_BIN points at one) and copies it into the work dir,
# so that a rebuild by someone else during the run cannot swap it. Sets RELAY_BIN, or leaves
# it empty with RELAY_UNAVAILABLE set to the reason.
prepare_pgrelay() {
    RELAY_BIN='' RELAY_UNAVAILABLE='' RELAY_BUILD=''
    local source=${PGRELAY_BIN:-}
    if [[ -z $source ]]; then
        source=$REPO_ROOT/target/release/pgrelay
        if [[ ${BENCH_BUILD:-1} == 1 ]]; then
            log "cargo build --release -j2 (log: $WORK/build.log)"
            if (cd "$REPO_ROOT" && timeout 1800 cargo build --release -j2) >"$WORK/build.log" 2>&1; then
                RELAY_BUILD=ok
            else
                RELAY_BUILD=failed
                problem "cargo build --release failed: $(grep -m1 -E '^error' "$WORK/build.log" || tail -n1 "$WORK/build.log")"
                if [[ -x $source ]]; then
                    problem "using the previous (stale) binary $source built $(date -r "$source" '+%F %T')"
                fi
            fi
        else
            RELAY_BUILD=skipped
        fi
    else
        RELAY_BUILD=given
    fi
    if [[ -x $source ]]; then
        cp "$source" "$WORK/pgrelay"
        RELAY_BIN=$WORK/pgrelay
        log "pgrelay binary: $source ($(date -r "$source" '+%F %T'))"
    else
        RELAY_UNAVAILABLE="no pgrelay binary ($source): build failed"
    fi
}

RELAY_PID=
RELAY_LOG=
# pgrelay_start NAME CONFIG [READS_ON]: starts pgrelay and waits until it has a leader and
# (unless READS_ON is "leader", for a config without replicas) sends reads to a replica.
# Returns 1 with RELAY_FAIL set when it cannot.
pgrelay_start() {
    local name=$1 config=$2 reads_on=${3:-replica} i
    RELAY_FAIL='' RELAY_LOG=$WORK/pgrelay-$name.log
    if [[ -z $RELAY_BIN ]]; then
        RELAY_FAIL=$RELAY_UNAVAILABLE
        return 1
    fi
    # Overrides from the caller's environment would change what is measured.
    local unset_env=() var
    for var in $(compgen -e | grep '^PGRELAY_.*__' || true); do unset_env+=(-u "$var"); done
    if ! env "${unset_env[@]}" "$RELAY_BIN" --config "$config" --check >"$WORK/check-$name.log" 2>&1; then
        RELAY_FAIL="config refused: $(grep -v '^$' "$WORK/check-$name.log" | head -n1)"
        return 1
    fi
    env "${unset_env[@]}" RUST_LOG="${BENCH_RUST_LOG:-info}" "$RELAY_BIN" --config "$config" \
        >"$RELAY_LOG" 2>&1 &
    RELAY_PID=$!
    CLEANUP_PIDS+=("$RELAY_PID")
    for i in $(seq 100); do
        if ! kill -0 "$RELAY_PID" 2>/dev/null; then
            RELAY_FAIL="pgrelay exited at start: $(grep -v '^$' "$RELAY_LOG" | tail -n1)"
            RELAY_PID=
            return 1
        fi
        [[ $(http_get "$RELAY_ADMIN_PORT" /readyz | head -c 5) == ready ]] && break
        sleep 0.1
    done
    if [[ $(http_get "$RELAY_ADMIN_PORT" /readyz | head -c 5) != ready ]]; then
        RELAY_FAIL="not ready after 10 s: $(http_get "$RELAY_ADMIN_PORT" /readyz | head -n1)"
        return 1
    fi
    [[ $reads_on == leader ]] && return 0
    # Reads should reach a replica once the monitor has probed them (probe_interval 250ms).
    for i in $(seq 40); do
        [[ $(relay_psql -c "SELECT pg_is_in_recovery()" 2>/dev/null) == t ]] && return 0
        sleep 0.25
    done
    problem "pgrelay ($name): reads still answered by the leader 10 s after start"
    return 0
}

pgrelay_stop() {
    [[ -n $RELAY_PID ]] || return 0
    if kill -0 "$RELAY_PID" 2>/dev/null; then
        kill "$RELAY_PID"
        for _ in $(seq 100); do
            kill -0 "$RELAY_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$RELAY_PID" 2>/dev/null; then
            problem "pgrelay did not stop within 10 s of SIGTERM; killed"
            kill -9 "$RELAY_PID" 2>/dev/null || true
        fi
    fi
    wait "$RELAY_PID" 2>/dev/null || true
    RELAY_PID=
}

pgrelay_alive() { [[ -n $RELAY_PID ]] && kill -0 "$RELAY_PID" 2>/dev/null; }

# psql as app/app through pgrelay.
relay_psql() {
    PGPASSWORD=app PGSSLMODE=disable PGCONNECT_TIMEOUT=5 timeout 20 "$PG_BIN/psql" -X -A -t -q \
        -h 127.0.0.1 -p "$RELAY_PORT" -U app -d postgres "$@"
}

# http_get PORT PATH: the body of a GET on loopback (no curl needed).
http_get() {
    # shellcheck disable=SC2016
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3
        sed "1,/^\r\{0,1\}$/d" <&3' _ "$1" "$2" 2>/dev/null || true
}

# metric NAME: sum over all label sets of that metric in pgrelay's /metrics (0 if absent).
metric() {
    http_get "$RELAY_ADMIN_PORT" /metrics |
        awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d\n", s }'
}

# Warnings and errors pgrelay logged (ANSI colours stripped), for the problems section.
relay_log_problems() {
    local name=$1 logfile=$2 n
    [[ -f $logfile ]] || return 0
    local lines=()
    mapfile -t lines < <(sed 's/\x1b\[[0-9;]*m//g' "$logfile" | grep -E ' (WARN|ERROR) |panicked' || true)
    n=${#lines[@]}
    if ((n > 0)); then
        problem "pgrelay ($name) logged $n WARN/ERROR lines; first ones:"
        local line
        for line in "${lines[@]:0:${BENCH_LOG_LINES:-8}}"; do
            PROBLEMS+=("    $line")
        done
    fi
}
