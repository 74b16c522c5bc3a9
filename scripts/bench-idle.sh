#!/usr/bin/env bash
# Memory of idle clients: starts pgrelay (release build) in front of a private sandbox cluster,
# opens 10,000 idle client connections (scripts/bench/idle_clients.py: StartupMessage for a
# trusted user, wait for ReadyForQuery, then nothing), and reports pgrelay's resident memory
# (VmRSS) before and after and per idle client, against DESIGN.md's target of <= 100 MB for
# 10,000 idle clients. Also checks that a normal psql query still works while they are open.
# Everything it starts is stopped on exit.
#
# Usage: scripts/bench-idle.sh
# Environment:
#   IDLE_CLIENTS (10000)          connections to open
#   IDLE_CONCURRENCY (200)        logins in flight at once
#   IDLE_POOL_MODE (transaction)  pgrelay pool_mode
#   IDLE_HOLD_SECONDS (3)         wait after the last login before measuring
#   BENCH_PORT_BASE (17460)       first of 6 consecutive loopback ports (moves up if taken)
#   PGRELAY_BIN, BENCH_BUILD, BENCH_SKIP_DEPS, BENCH_KEEP, BENCH_RUST_LOG: as in scripts/bench.sh
# Output ends with key=value lines between "--- summary ---" and "--- end summary ---".
# Exit status: 0 when it ran (a failed measurement says n/a), 1 when the sandbox could not start.
set -euo pipefail
BENCH_NAME=bench-idle
BENCH_PORT_BASE=${BENCH_PORT_BASE:-17460}
# shellcheck source=scripts/bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench/common.sh"
cd "$REPO_ROOT"

CLIENTS=${IDLE_CLIENTS:-10000}
CONCURRENCY=${IDLE_CONCURRENCY:-200}
POOL_MODE=${IDLE_POOL_MODE:-transaction}
HOLD=${IDLE_HOLD_SECONDS:-3}
TARGET_MB=100
START_TIME=$SECONDS

if [[ ${BENCH_SKIP_DEPS:-0} != 1 ]]; then
    bash scripts/install-deps.sh >&2 || die "scripts/install-deps.sh failed"
fi
command -v python3 >/dev/null || die "python3 not found"

# Each side (pgrelay, the Python client) holds one descriptor per connection.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [[ $NOFILE != unlimited ]] && ((NOFILE < CLIENTS + 1000)); then
    die "open files limit is $NOFILE (hard $(ulimit -Hn)); $CLIENTS clients need $((CLIENTS + 1000))"
fi

pick_ports 6
LEADER_PORT=${PORTS[0]} REPLICA1_PORT=${PORTS[1]} REPLICA2_PORT=${PORTS[2]} REDIS_PORT=${PORTS[3]}
RELAY_PORT=${PORTS[4]} RELAY_ADMIN_PORT=${PORTS[5]}
make_dirs
install_cleanup
log "ports: leader $LEADER_PORT, replicas $REPLICA1_PORT $REPLICA2_PORT, redis $REDIS_PORT," \
    "pgrelay $RELAY_PORT (admin $RELAY_ADMIN_PORT); open files limit $NOFILE; work dir $WORK"

prepare_pgrelay
log "starting the sandbox cluster in $SANDBOX_DIR"
sandbox_up "$LEADER_PORT" "$REPLICA1_PORT" "$REPLICA2_PORT" "$REDIS_PORT"

cat >"$WORK/pgrelay.toml" <<TOML
[server]
listen = "127.0.0.1:$RELAY_PORT"
admin_listen = "127.0.0.1:$RELAY_ADMIN_PORT"
pool_mode = "$POOL_MODE"
max_client_connections = 20000
max_server_connections = 20

[cluster]
hosts = ["127.0.0.1:$LEADER_PORT", "127.0.0.1:$REPLICA1_PORT", "127.0.0.1:$REPLICA2_PORT"]

# First, so that the monitor logs in with it.
[[users]]
name = "app"
password = "app"

# The sandbox's pg_hba.conf trusts trust_user from 127.0.0.1, so no password on either side.
[[users]]
name = "trust_user"
auth = "trust"
TOML

status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || true; }
declare -A R
RESULT=ok

finish() {
    local entry
    relay_log_problems pgrelay "$WORK/pgrelay-idle.log"
    echo
    echo "== idle clients: pgrelay pool_mode $POOL_MODE, $(nproc) cores =="
    printf '%-36s %s\n' "clients requested" "$CLIENTS"
    printf '%-36s %s\n' "clients logged in / failed" "${R[ok]:-n/a} / ${R[failed]:-n/a} (in ${R[login_seconds]:-?} s)"
    printf '%-36s %s\n' "pgrelay VmRSS before" "$(kb "${R[rss_before_kb]:-}")"
    printf '%-36s %s\n' "pgrelay VmRSS with clients open" "$(kb "${R[rss_after_kb]:-}")"
    printf '%-36s %s\n' "pgrelay VmHWM (peak)" "$(kb "${R[hwm_kb]:-}")"
    printf '%-36s %s\n' "pgrelay VmRSS after clients closed" "$(kb "${R[rss_closed_kb]:-}")"
    printf '%-36s %s\n' "per idle client" "${R[per_client_bytes]:-n/a} bytes"
    printf '%-36s %s\n' "pgrelay threads" "${R[threads]:-n/a}"
    printf '%-36s %s\n' "pgrelay CPU while idle" "${R[idle_cpu_pct]:-n/a} % of one core over ${HOLD} s"
    printf '%-36s %s\n' "pgrelay_client_connections (metric)" "${R[metric_clients]:-n/a}"
    printf '%-36s %s\n' "psql SELECT with the clients open" "${R[psql]:-n/a}"
    printf '%-36s %s\n' "clients still open after psql" "${R[alive_after_psql]:-n/a}"
    printf '%-36s %s\n' "target" "VmRSS with clients open <= $TARGET_MB MB: ${R[target_met]:-n/a}"
    echo
    echo "== problems =="
    if ((${#PROBLEMS[@]} == 0)); then echo "none"; else printf '%s\n' "${PROBLEMS[@]}"; fi
    echo
    echo "--- summary ---"
    echo "result=$RESULT"
    echo "clients=$CLIENTS"
    echo "pool_mode=$POOL_MODE"
    for entry in ok failed login_seconds rss_before_kb rss_after_kb hwm_kb rss_closed_kb \
        per_client_bytes threads idle_cpu_pct metric_clients psql alive_after_psql target_met; do
        echo "$entry=${R[$entry]:-n/a}"
    done
    echo "problems=${#PROBLEMS[@]}"
    echo "elapsed_seconds=$((SECONDS - START_TIME))"
    echo "--- end summary ---"
}
kb() { [[ -n $1 ]] && awk -v k="$1" 'BEGIN { printf "%d kB (%.1f MB)", k, k / 1024 }' || echo n/a; }

if ! pgrelay_start idle "$WORK/pgrelay.toml"; then
    problem "pgrelay: $RELAY_FAIL"
    RESULT="n/a (pgrelay did not start)"
    finish
    exit 0
fi
# RELAY_LOG is pgrelay-idle.log.
if [[ $(relay_psql -c "SELECT 1") != 1 ]]; then
    problem "a psql query through pgrelay failed before the clients connected"
fi
sleep 1
R[rss_before_kb]=$(status_kb "$RELAY_PID" VmRSS)
log "pgrelay VmRSS before: ${R[rss_before_kb]} kB; opening $CLIENTS idle clients"

python3 "$REPO_ROOT/scripts/bench/idle_clients.py" --port "$RELAY_PORT" --user trust_user \
    --count "$CLIENTS" --concurrency "$CONCURRENCY" >"$WORK/clients.out" 2>"$WORK/clients.err" &
CLIENT_PID=$!
CLEANUP_PIDS=("$CLIENT_PID" "${CLEANUP_PIDS[@]}")
# Bounded: 10 minutes for every login to finish or fail.
for _ in $(seq 6000); do
    grep -q '^READY' "$WORK/clients.out" 2>/dev/null && break
    kill -0 "$CLIENT_PID" 2>/dev/null || break
    pgrelay_alive || break
    sleep 0.1
done
if ! grep -q '^READY' "$WORK/clients.out"; then
    pgrelay_alive || problem "pgrelay exited while clients connected: $(sed 's/\x1b\[[0-9;]*m//g' "$RELAY_LOG" | tail -n 3 | tr '\n' ' ')"
    problem "the clients did not finish logging in: $(tail -n 2 "$WORK/clients.err" | tr '\n' ' ')"
    RESULT="n/a (logins did not finish)"
    finish
    exit 0
fi
read -r "R[ok]" "R[failed]" "R[login_seconds]" < <(sed -n 's/^READY ok=\([0-9]*\) failed=\([0-9]*\) seconds=\([0-9.]*\)$/\1 \2 \3/p' "$WORK/clients.out")
while read -r _ count message; do
    problem "$count client logins failed: $message"
done < <(grep '^ERRORS' "$WORK/clients.out" || true)
log "${R[ok]} clients logged in (${R[failed]} failed) in ${R[login_seconds]} s"

cpu0=$(cpu_ticks "$RELAY_PID")
sleep "$HOLD"
cpu1=$(cpu_ticks "$RELAY_PID")
if pgrelay_alive; then
    R[idle_cpu_pct]=$(awk -v t=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" -v s="$HOLD" 'BEGIN { printf "%.1f", 100 * t / hz / s }')
    R[rss_after_kb]=$(status_kb "$RELAY_PID" VmRSS)
    R[hwm_kb]=$(status_kb "$RELAY_PID" VmHWM)
    R[threads]=$(awk '$1 == "Threads:" { print $2 }' "/proc/$RELAY_PID/status")
    R[metric_clients]=$(metric pgrelay_client_connections)
    if ((R[ok] > 0)); then
        R[per_client_bytes]=$(((R[rss_after_kb] - R[rss_before_kb]) * 1024 / R[ok]))
    fi
    if ((R[rss_after_kb] <= TARGET_MB * 1024)); then R[target_met]=yes; else R[target_met]=no; fi

    t0=$(date +%s%N)
    if answer=$(relay_psql -c "SELECT 'ok from ' || CASE WHEN pg_is_in_recovery() THEN 'replica' ELSE 'leader' END" 2>&1); then
        R[psql]="$answer in $((($(date +%s%N) - t0) / 1000000)) ms"
    else
        R[psql]="failed: $(echo "$answer" | head -n1)"
        problem "psql through pgrelay failed while the idle clients were open: $answer"
    fi
    kill -USR1 "$CLIENT_PID" 2>/dev/null || true
    sleep 0.5
    R[alive_after_psql]=$(sed -n 's/^STATUS alive=\([0-9]*\).*/\1/p' "$WORK/clients.out" | tail -n1)
    if [[ -n ${R[alive_after_psql]} ]] && ((R[alive_after_psql] < R[ok])); then
        problem "pgrelay closed $((R[ok] - R[alive_after_psql])) idle clients"
    fi
else
    problem "pgrelay exited with the idle clients open: $(sed 's/\x1b\[[0-9;]*m//g' "$RELAY_LOG" | tail -n 3 | tr '\n' ' ')"
    RESULT="n/a (pgrelay exited)"
fi

# Close the clients and see what pgrelay gives back.
kill "$CLIENT_PID" 2>/dev/null || true
for _ in $(seq 300); do
    kill -0 "$CLIENT_PID" 2>/dev/null || break
    sleep 0.1
done
wait "$CLIENT_PID" 2>/dev/null || true
if pgrelay_alive; then
    for _ in $(seq 100); do
        [[ $(metric pgrelay_client_connections) == 0 ]] && break
        sleep 0.1
    done
    sleep 1
    R[rss_closed_kb]=$(status_kb "$RELAY_PID" VmRSS)
fi
pgrelay_stop
finish
