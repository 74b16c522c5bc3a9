#!/usr/bin/env bash
# Instructions per transaction spent in the proxy itself, counted by valgrind's callgrind: the
# same figure from one run to the next whatever else the machine does (TPS on a shared 2-core
# box moves by ±10% between runs; this does not). It counts user-space instructions only:
# syscalls and the kernel's TCP work are not in it, and the proxy runs some 50x slower under
# callgrind, so it says nothing about latency. Use it to see what a change to the hot path
# saves; use scripts/bench.sh for throughput.
#
# For each target: pgbench -S (-c 4, -j 1) runs T_SMALL and then T_LARGE transactions per
# client through the proxy running under callgrind, the counters zeroed before each run; the
# difference of the two totals over the difference in transactions is the per-transaction
# cost (connection setup and authentication cancel out).
#
# Targets: pgrelay with the leader as its only host (PgBouncer's setup), -M simple and
# -M prepared; pgrelay with reads on two replicas, -M simple; PgBouncer (transaction pooling,
# leader), -M simple, as the reference.
#
# Usage: scripts/bench-instructions.sh
# Environment:
#   BENCH_T_SMALL (250) BENCH_T_LARGE (1250)  transactions per client of the two runs
#   BENCH_PORT_BASE (17530)    first of 7 consecutive loopback ports (moves up if taken)
#   PGRELAY_BIN, BENCH_BUILD, BENCH_SKIP_DEPS, BENCH_KEEP   as for scripts/bench.sh
# Prints "--- summary ---" key=value lines ("--- end summary ---"): instructions.<target>.
set -euo pipefail
BENCH_NAME=bench-instructions
BENCH_PORT_BASE=${BENCH_PORT_BASE:-17530}
# shellcheck source=scripts/bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench/common.sh"
cd "$REPO_ROOT"

T_SMALL=${BENCH_T_SMALL:-250}
T_LARGE=${BENCH_T_LARGE:-1250}
CLIENTS=4
((T_LARGE > T_SMALL)) || die "BENCH_T_LARGE must be larger than BENCH_T_SMALL"

if [[ ${BENCH_SKIP_DEPS:-0} != 1 ]]; then
    bash scripts/install-deps.sh >&2 || die "scripts/install-deps.sh failed"
fi
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
    die "valgrind (with callgrind_control) is needed: apt-get install -y valgrind"

pick_ports 7
LEADER_PORT=${PORTS[0]} REPLICA1_PORT=${PORTS[1]} REPLICA2_PORT=${PORTS[2]} REDIS_PORT=${PORTS[3]}
PGB_PORT=${PORTS[4]} RELAY_PORT=${PORTS[5]} RELAY_ADMIN_PORT=${PORTS[6]}
make_dirs
install_cleanup
prepare_pgrelay
[[ -n $RELAY_BIN ]] || die "$RELAY_UNAVAILABLE"
sandbox_up "$LEADER_PORT" "$REPLICA1_PORT" "$REPLICA2_PORT" "$REDIS_PORT"
PGPASSWORD=app timeout 300 "$PG_BIN/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$LEADER_PORT" -U app \
    postgres >"$WORK/pgbench-init.log" 2>&1 || die "pgbench -i failed: $(tail -n1 "$WORK/pgbench-init.log")"
wait_replicas_caught_up

# PgBouncer refuses to run as root: as root, it runs as the postgres user, and so must
# callgrind_control when it talks to it.
PGB_AS=()
[[ $(id -u) -eq 0 ]] && PGB_AS=(runuser -u postgres --)
AS=()

# under_callgrind PORT OUT COMMAND…: starts COMMAND under callgrind as "${AS[@]}" (output files
# OUT.<pid>.<n>) and waits until PORT accepts connections. Sets TARGET_PID, the process
# callgrind runs (for callgrind_control), and adds what it started to the cleanup.
under_callgrind() {
    local port=$1 out=$2
    shift 2
    "${AS[@]}" valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$@" \
        >"$out.log" 2>&1 &
    CLEANUP_PIDS+=("$!")
    TARGET_PID=
    for _ in $(seq 600); do
        TARGET_PID=$(pgrep -n -f -- "--callgrind-out-file=$out" || true)
        [[ -n $TARGET_PID ]] && listening "$port" && {
            CLEANUP_PIDS+=("$TARGET_PID")
            return 0
        }
        sleep 0.1
    done
    problem "$* did not listen on $port under callgrind: $(tail -n1 "$out.log")"
    return 1
}

stop_target() {
    [[ -n ${TARGET_PID:-} ]] || return 0
    kill "$TARGET_PID" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$TARGET_PID" 2>/dev/null || break
        sleep 0.1
    done
    TARGET_PID=
}

# total_after PORT TX MODE OUT: zeroes the counters, runs CLIENTS × TX transactions, dumps;
# prints the instructions counted in between.
total_after() {
    local port=$1 tx=$2 mode=$3 out=$4 dump=
    "${AS[@]}" callgrind_control -z "$TARGET_PID" >/dev/null 2>&1
    PGPASSWORD=app PGSSLMODE=disable timeout 600 "$PG_BIN/pgbench" -n -S -M "$mode" -t "$tx" \
        -c "$CLIENTS" -j 1 -h 127.0.0.1 -p "$port" -U app postgres >"$out.pgbench-$tx.log" 2>&1 ||
        return 1
    "${AS[@]}" callgrind_control -d "$TARGET_PID" >/dev/null 2>&1
    # Each dump is read and removed, so the one there is the one just made.
    for _ in $(seq 100); do
        dump=$(compgen -G "$out.$TARGET_PID.[0-9]*" | head -n1 || true)
        [[ -n $dump ]] && grep -q '^summary:' "$dump" && break
        sleep 0.1
    done
    [[ -n $dump ]] || return 1
    awk '/^summary:/ { print $2; exit }' "$dump"
    rm -f "$dump"
}

declare -A IR
# measure KEY PORT MODE OUT: IR[KEY] = instructions per transaction, or "n/a".
measure() {
    local key=$1 port=$2 mode=$3 out=$4 small large
    # A warm-up: connections opened, statements classified and prepared.
    total_after "$port" 50 "$mode" "$out" >/dev/null || true
    if small=$(total_after "$port" "$T_SMALL" "$mode" "$out") &&
        large=$(total_after "$port" "$T_LARGE" "$mode" "$out"); then
        IR[$key]=$(((large - small) / (CLIENTS * (T_LARGE - T_SMALL))))
    else
        IR[$key]=n/a
        problem "$key: a pgbench run failed (logs in $WORK)"
    fi
    log "$key: ${IR[$key]} instructions per transaction"
}

relay_config() { # relay_config FILE HOSTS
    cat >"$1" <<TOML
[server]
listen = "127.0.0.1:$RELAY_PORT"
admin_listen = "127.0.0.1:$RELAY_ADMIN_PORT"
pool_mode = "transaction"
max_server_connections = 20
workers = 1

[cluster]
hosts = [$2]

[[users]]
name = "app"
password = "app"
TOML
}

relay_target() { # relay_target NAME HOSTS MODES…
    local name=$1 hosts=$2 mode
    shift 2
    relay_config "$WORK/$name.toml" "$hosts"
    # pgrelay itself must be the program valgrind starts (an `env` in front would exec it
    # outside callgrind): its log level comes from the environment.
    if RUST_LOG=warn under_callgrind "$RELAY_PORT" "$WORK/cg-$name" "$RELAY_BIN" --config "$WORK/$name.toml"; then
        for mode in "$@"; do
            measure "pgrelay_${name}_$mode" "$RELAY_PORT" "$mode" "$WORK/cg-$name"
        done
    fi
    stop_target
}

relay_target leader "\"127.0.0.1:$LEADER_PORT\"" simple prepared
relay_target replicas "\"127.0.0.1:$LEADER_PORT\", \"127.0.0.1:$REPLICA1_PORT\", \"127.0.0.1:$REPLICA2_PORT\"" simple

PGB_BIN=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
if [[ -x $PGB_BIN ]]; then
    pgbouncer_config "$WORK/pgbouncer" "$PGB_PORT"
    AS=("${PGB_AS[@]}")
    if [[ ${#AS[@]} -gt 0 ]]; then
        chown -R postgres:postgres "$WORK/pgbouncer"
    fi
    if under_callgrind "$PGB_PORT" "$WORK/pgbouncer/cg" "$PGB_BIN" -q "$WORK/pgbouncer/pgbouncer.ini"; then
        measure pgbouncer_leader_simple "$PGB_PORT" simple "$WORK/pgbouncer/cg"
    fi
    stop_target
else
    IR[pgbouncer_leader_simple]=n/a
    problem "pgbouncer not installed"
fi

echo "--- summary ---"
for key in pgrelay_leader_simple pgrelay_leader_prepared pgrelay_replicas_simple pgbouncer_leader_simple; do
    echo "instructions.$key=${IR[$key]:-n/a}"
done
echo "--- end summary ---"
if ((${#PROBLEMS[@]} > 0)); then
    echo "problems:"
    printf '  %s\n' "${PROBLEMS[@]}"
fi
