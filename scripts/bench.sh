#!/usr/bin/env bash
# End-to-end benchmark of pgrelay against its peers, in one run, on a private sandbox cluster
# (leader + 2 streaming replicas + redis) that this script starts on its own free ports and
# tears down on exit. Checks the performance targets of DESIGN.md:
#
#   1. pgbench -S (scale 10), -M simple and -M prepared, -c 16 -j 2, against PostgreSQL
#      directly (leader, one replica), PgBouncer (transaction pooling, pool_size 20, leader) and
#      pgrelay (transaction mode, reads to replicas; and again with the leader as its only
#      host, PgBouncer's setup, to compare the proxies alone); then added latency with -c 1 (average and
#      p50 from pgbench's per-transaction log), direct vs through pgrelay.
#   1b. Head to head: PgBouncer and pgrelay on the leader (default workers, and workers = 1 as
#      PgBouncer's one thread) take turns for BENCH_ROUNDS rounds of -S -M simple; medians.
#   2. Hot-key reads (100-row "products" table, random id, -M prepared -c 16): pgrelay with the
#      cache off, on Redis, and in memory, each right after a direct run it is compared with.
#   3. A key=value summary at the end (between "--- summary ---" and "--- end summary ---").
#
# Usage: scripts/bench.sh            (as root or a user who can run PostgreSQL's tools)
# Environment:
#   BENCH_SECONDS (10)         duration of each throughput run
#   BENCH_LATENCY_SECONDS (5)  duration of each -c 1 latency run
#   BENCH_WARMUP_SECONDS (2)   unreported warm-up on each node first (0: none)
#   BENCH_CLIENTS (16) BENCH_THREADS (2) BENCH_SCALE (10)
#   BENCH_ROUNDS (3)           rounds of the head-to-head runs
#   BENCH_PORT_BASE (17430)    first of 7 consecutive loopback ports (moves up if taken)
#   PGRELAY_BIN                use this binary instead of building target/release/pgrelay
#   BENCH_BUILD (1)            0: do not run cargo build, use target/release/pgrelay as it is
#   BENCH_SKIP_DEPS (0)        1: do not run scripts/install-deps.sh
#   BENCH_KEEP (0)             1: keep the work dir (configs, pgbench and pgrelay logs)
#   BENCH_RUST_LOG (info)      RUST_LOG for pgrelay
# Exit status: 0 when the benchmark ran (rows that could not be measured say n/a and why),
# 1 when the sandbox cluster could not start.
set -euo pipefail
BENCH_NAME=bench
BENCH_PORT_BASE=${BENCH_PORT_BASE:-17430}
# shellcheck source=scripts/bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench/common.sh"
cd "$REPO_ROOT"

SECS=${BENCH_SECONDS:-10}
LAT_SECS=${BENCH_LATENCY_SECONDS:-5}
WARMUP=${BENCH_WARMUP_SECONDS:-2}
CLIENTS=${BENCH_CLIENTS:-16}
THREADS=${BENCH_THREADS:-2}
SCALE=${BENCH_SCALE:-10}
MODES=(simple prepared)
START_TIME=$SECONDS

if [[ ${BENCH_SKIP_DEPS:-0} != 1 ]]; then
    bash scripts/install-deps.sh >&2 || die "scripts/install-deps.sh failed"
fi
command -v "$PG_BIN/pgbench" >/dev/null || die "pgbench not found in $PG_BIN"

pick_ports 7
LEADER_PORT=${PORTS[0]} REPLICA1_PORT=${PORTS[1]} REPLICA2_PORT=${PORTS[2]} REDIS_PORT=${PORTS[3]}
PGB_PORT=${PORTS[4]} RELAY_PORT=${PORTS[5]} RELAY_ADMIN_PORT=${PORTS[6]}
make_dirs
install_cleanup
log "ports: leader $LEADER_PORT, replicas $REPLICA1_PORT $REPLICA2_PORT, redis $REDIS_PORT," \
    "pgbouncer $PGB_PORT, pgrelay $RELAY_PORT (admin $RELAY_ADMIN_PORT); work dir $WORK"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

prepare_pgrelay

log "starting the sandbox cluster in $SANDBOX_DIR"
sandbox_up "$LEADER_PORT" "$REPLICA1_PORT" "$REPLICA2_PORT" "$REDIS_PORT"

# ---- data ------------------------------------------------------------------------------------

log "pgbench -i -s $SCALE on the leader"
PGPASSWORD=app timeout 600 "$PG_BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$LEADER_PORT" \
    -U app postgres >"$WORK/pgbench-init.log" 2>&1 ||
    {
        cat "$WORK/pgbench-init.log" >&2
        die "pgbench -i failed"
    }
PGPASSWORD=app "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$LEADER_PORT" -U app \
    -d postgres >/dev/null <<'SQL'
SET client_min_messages = warning;
DROP TABLE IF EXISTS products;
CREATE TABLE products (id int PRIMARY KEY, name text, price numeric);
INSERT INTO products SELECT i, 'product ' || i, round(i * 1.25, 2) FROM generate_series(1, 100) i;
ANALYZE products;
SQL
cat >"$WORK/hotkey.sql" <<'SQL'
\set id random(1, 100)
SELECT name, price FROM products WHERE id = :id;
SQL
wait_replicas_caught_up

# ---- pgbench runs ----------------------------------------------------------------------------

declare -A TPS LAT NOTE PROCESSED SERVED
# run_pgbench KEY PORT SECONDS [pgbench args…]: one run as app/app on 127.0.0.1:PORT. Sets
# TPS[KEY], LAT[KEY] (ms), PROCESSED[KEY]; NOTE[KEY] = "n/a (reason)" when it failed.
run_pgbench() {
    local key=$1 port=$2 secs=$3 out rc=0
    shift 3
    out=$WORK/pgbench-$key.log
    log "pgbench $key: $*"
    PGPASSWORD=app PGSSLMODE=disable timeout $((secs + 90)) "$PG_BIN/pgbench" -n -T "$secs" \
        -h 127.0.0.1 -p "$port" -U app "$@" postgres >"$out" 2>&1 || rc=$?
    TPS[$key]=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$out")
    LAT[$key]=$(sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p' "$out")
    PROCESSED[$key]=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
    if ((rc != 0)) || [[ -z ${TPS[$key]} ]]; then
        local reason
        reason=$(grep -m1 -iE 'error|fatal|abort|timeout' "$out" || tail -n1 "$out")
        ((rc == 124)) && reason="timed out after $((secs + 90)) s; $reason"
        NOTE[$key]="n/a (pgbench exit $rc: ${reason#pgbench: })"
        TPS[$key]='' LAT[$key]=''
        log "  ${NOTE[$key]}"
    else
        log "  tps ${TPS[$key]}, latency ${LAT[$key]} ms"
    fi
}

# Executions of statements on TABLE per node, from pg_stat_statements: "leader r1 r2".
statement_calls() {
    local port
    for port in "$LEADER_PORT" "$REPLICA1_PORT" "$REPLICA2_PORT"; do
        sql "$port" -c "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
                        WHERE query ILIKE '%$1%' AND query NOT ILIKE '%pg_stat_statements%'" 2>/dev/null ||
            echo 0
    done | paste -sd' '
}
# served_by BEFORE AFTER: sets SERVED_TEXT ("L 0% R1 49% R2 51%") and SERVED_TOTAL.
served_by() {
    local -a b a
    read -r -a b <<<"$1"
    read -r -a a <<<"$2"
    local l=$((a[0] - b[0])) r1=$((a[1] - b[1])) r2=$((a[2] - b[2]))
    SERVED_TOTAL=$((l + r1 + r2))
    SERVED_TEXT=-
    if ((SERVED_TOTAL > 0)); then
        SERVED_TEXT=$(awk -v l=$l -v r1=$r1 -v r2=$r2 -v t=$SERVED_TOTAL \
            'BEGIN { printf "L %.0f%% R1 %.0f%% R2 %.0f%%", 100*l/t, 100*r1/t, 100*r2/t }')
    fi
}
declare -A SERVED_TOTAL_OF CPU_US
CLK_TCK=$(getconf CLK_TCK)
# CPU time (user + system) of a process so far, in clock ticks; empty if it is gone.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || true; }
# measure KEY PORT TABLE SECONDS [pgbench args…]: run_pgbench plus where the statements ran,
# and, when PROXY_PID is set, the proxy's CPU time per transaction (CPU_US[KEY], µs).
measure() {
    local key=$1 port=$2 table=$3 before after cpu0='' cpu1=''
    shift 3
    before=$(statement_calls "$table")
    [[ -z ${PROXY_PID:-} ]] || cpu0=$(cpu_ticks "$PROXY_PID")
    run_pgbench "$key" "$port" "$@"
    [[ -z ${PROXY_PID:-} ]] || cpu1=$(cpu_ticks "$PROXY_PID")
    after=$(statement_calls "$table")
    served_by "$before" "$after"
    SERVED[$key]=$SERVED_TEXT
    SERVED_TOTAL_OF[$key]=$SERVED_TOTAL
    if [[ -n $cpu0 && -n $cpu1 && -z ${NOTE[$key]:-} && ${PROCESSED[$key]:-0} -gt 0 ]]; then
        CPU_US[$key]=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v n="${PROCESSED[$key]}" \
            'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    fi
}

ratio() { # ratio A B: A/B with 2 decimals, or empty
    [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }'
    return 0
}

# ---- PgBouncer -------------------------------------------------------------------------------

PGB_BIN=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
PGB_VERSION=$("$PGB_BIN" --version 2>/dev/null | awk 'NR == 1 { print $2 }' || true)
PGB_FAIL=
start_pgbouncer() {
    local dir=$WORK/pgbouncer
    mkdir -p "$dir"
    [[ -x $PGB_BIN ]] || {
        PGB_FAIL="pgbouncer not installed"
        return 1
    }
    local extra="pidfile = $dir/pgbouncer.pid"
    # Prepared statements in transaction pooling exist from PgBouncer 1.21 on.
    if [[ $(printf '%s\n1.21.0\n' "$PGB_VERSION" | sort -V | head -n1) == 1.21.0 ]]; then
        extra+=$'\nmax_prepared_statements = 200'
    fi
    pgbouncer_config "$dir" "$PGB_PORT" "$extra"
    local run=()
    if [[ $(id -u) -eq 0 ]]; then
        chown -R postgres:postgres "$dir"
        run=(runuser -u postgres --)
    fi
    if ! "${run[@]}" "$PGB_BIN" -d -q "$dir/pgbouncer.ini" >"$dir/start.log" 2>&1; then
        PGB_FAIL="pgbouncer did not start: $(head -n1 "$dir/start.log")"
        return 1
    fi
    for _ in $(seq 100); do
        listening "$PGB_PORT" && [[ -s $dir/pgbouncer.pid ]] && break
        sleep 0.1
    done
    if ! listening "$PGB_PORT"; then
        PGB_FAIL="pgbouncer is not listening on $PGB_PORT: $(tail -n1 "$dir/pgbouncer.log" 2>/dev/null)"
        return 1
    fi
    PGB_PID=$(cat "$dir/pgbouncer.pid")
    CLEANUP_PIDS+=("$PGB_PID")
}
PGB_PID=
start_pgbouncer || problem "$PGB_FAIL"

# ---- pgrelay configs -------------------------------------------------------------------------

# relay_config FILE CACHE (off | redis | memory) [HOSTS (default: leader and both replicas)]
#              [WORKERS (default 0: one per core)]
relay_config() {
    local hosts=${3:-"\"127.0.0.1:$LEADER_PORT\", \"127.0.0.1:$REPLICA1_PORT\", \"127.0.0.1:$REPLICA2_PORT\""}
    {
        cat <<TOML
[server]
listen = "127.0.0.1:$RELAY_PORT"
admin_listen = "127.0.0.1:$RELAY_ADMIN_PORT"
pool_mode = "transaction"
max_server_connections = 20
workers = ${4:-0}

[cluster]
hosts = [$hosts]

[[users]]
name = "app"
password = "app"
TOML
        case $2 in
            redis) printf '\n[cache]\nredis_url = "redis://127.0.0.1:%s"\n' "$REDIS_PORT" ;;
            memory) printf '\n[cache]\n' ;;
        esac
        [[ $2 == off ]] || printf '\n[[cache.rules]]\ntables = ["products"]\n'
    } >"$1"
}
for c in off redis memory; do relay_config "$WORK/pgrelay-$c.toml" "$c"; done
# The leader alone, as PgBouncer is configured: the same server processes on the same cores,
# so the ratio to PgBouncer is the proxies' own cost (reads spread over two replicas that
# share this machine's cores pay for a second server's caches).
relay_config "$WORK/pgrelay-leader.toml" off "\"127.0.0.1:$LEADER_PORT\""
# ...and on one thread, as PgBouncer runs.
relay_config "$WORK/pgrelay-leader1.toml" off "\"127.0.0.1:$LEADER_PORT\"" 1

RELAY_RUN_FAIL=
relay_up() { # relay_up NAME: (re)start pgrelay with pgrelay-NAME.toml unless it already runs
    if [[ ${RELAY_NAME:-} == "$1" ]] && pgrelay_alive; then
        return 0
    fi
    if [[ ${RELAY_NAME:-} == "$1" && -n $RELAY_PID ]]; then
        problem "pgrelay ($1) is no longer running; last log lines:"
        while IFS= read -r line; do PROBLEMS+=("    $line"); done < <(sed 's/\x1b\[[0-9;]*m//g' "$RELAY_LOG" | tail -n 8)
    fi
    pgrelay_stop
    RELAY_NAME=$1
    RELAY_STARTS=$((RELAY_STARTS + 1))
    local inst=$1-$RELAY_STARTS
    RELAY_LOGS+=("$inst:$WORK/pgrelay-$inst.log")
    local reads_on=replica
    [[ $1 == leader* ]] && reads_on=leader
    if pgrelay_start "$inst" "$WORK/pgrelay-$1.toml" "$reads_on"; then
        RELAY_RUN_FAIL=
    else
        RELAY_RUN_FAIL=$RELAY_FAIL
        problem "pgrelay ($1): $RELAY_FAIL"
        pgrelay_stop
        RELAY_NAME=
    fi
}
RELAY_LOGS=()
RELAY_STARTS=0

# ---- 1. select-only --------------------------------------------------------------------------

if ((WARMUP > 0)); then
    for port in "$LEADER_PORT" "$REPLICA1_PORT" "$REPLICA2_PORT"; do
        run_pgbench "warmup-$port" "$port" "$WARMUP" -S -c 4 -j 2
    done
fi

relay_up off
TARGETS=(direct_leader direct_replica pgbouncer pgrelay pgrelay_leader_only)
for mode in "${MODES[@]}"; do
    args=(-S -M "$mode" -c "$CLIENTS" -j "$THREADS")
    measure "S-$mode-direct_leader" "$LEADER_PORT" pgbench_accounts "$SECS" "${args[@]}"
    measure "S-$mode-direct_replica" "$REPLICA1_PORT" pgbench_accounts "$SECS" "${args[@]}"
    if [[ -z $PGB_FAIL ]]; then
        PROXY_PID=$PGB_PID measure "S-$mode-pgbouncer" "$PGB_PORT" pgbench_accounts "$SECS" "${args[@]}"
        if [[ $mode == prepared && -n ${NOTE[S-$mode-pgbouncer]:-} ]] &&
            [[ $(printf '%s\n1.21.0\n' "$PGB_VERSION" | sort -V | head -n1) != 1.21.0 ]]; then
            inner=${NOTE[S-$mode-pgbouncer]#n/a (}
            NOTE[S-$mode-pgbouncer]="n/a (PgBouncer $PGB_VERSION has no prepared statements in transaction pooling, needs 1.21+; ${inner%)})"
        fi
    else
        NOTE[S-$mode-pgbouncer]="n/a ($PGB_FAIL)"
    fi
    relay_up off
    if [[ -n $RELAY_NAME ]]; then
        PROXY_PID=$RELAY_PID measure "S-$mode-pgrelay" "$RELAY_PORT" pgbench_accounts "$SECS" "${args[@]}"
        pgrelay_alive || NOTE[S-$mode-pgrelay]="n/a (pgrelay died during the run; ${NOTE[S-$mode-pgrelay]:-see log})"
    else
        NOTE[S-$mode-pgrelay]="n/a ($RELAY_RUN_FAIL)"
    fi
    relay_up leader
    if [[ -n $RELAY_NAME ]]; then
        PROXY_PID=$RELAY_PID measure "S-$mode-pgrelay_leader_only" "$RELAY_PORT" pgbench_accounts "$SECS" "${args[@]}"
    else
        NOTE[S-$mode-pgrelay_leader_only]="n/a ($RELAY_RUN_FAIL)"
    fi
    relay_up off
done

# ---- head to head with PgBouncer -------------------------------------------------------------

# One pass per target is at the mercy of the machine's drift (a few percent from one run to the
# next here). PgBouncer and pgrelay on the same server (the leader) take turns for ROUNDS
# rounds of -S -M simple, and their medians are compared.
ROUNDS=${BENCH_ROUNDS:-3}
H2H=(pgbouncer pgrelay_leader_only pgrelay_leader_only_1_worker)
declare -A H2H_RUNS H2H_MEDIAN H2H_RATIO
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
if [[ -z $PGB_FAIL ]]; then
    h2h_args=(-S -M simple -c "$CLIENTS" -j "$THREADS")
    for ((round = 1; round <= ROUNDS; round++)); do
        for t in "${H2H[@]}"; do
            k=h2h-$round-$t
            case $t in
                pgbouncer) PROXY_PID=$PGB_PID measure "$k" "$PGB_PORT" pgbench_accounts "$SECS" "${h2h_args[@]}" ;;
                *)
                    relay_up "$([[ $t == *_1_worker ]] && echo leader1 || echo leader)"
                    [[ -n $RELAY_NAME ]] || continue
                    PROXY_PID=$RELAY_PID measure "$k" "$RELAY_PORT" pgbench_accounts "$SECS" "${h2h_args[@]}"
                    ;;
            esac
            [[ -n ${TPS[$k]:-} ]] && H2H_RUNS[$t]+=" $(printf '%.0f' "${TPS[$k]}")"
        done
    done
    for t in "${H2H[@]}"; do
        # shellcheck disable=SC2086 # the runs are words
        H2H_MEDIAN[$t]=$(median ${H2H_RUNS[$t]:-})
    done
fi
relay_up off

# ---- added latency ---------------------------------------------------------------------------

declare -A P50 P99
# latency_run KEY PORT MODE: -c 1 with a per-transaction log; P50/P99 in µs.
latency_run() {
    local key=$1 port=$2 mode=$3
    rm -f "$WORK/txlog-$key".*
    run_pgbench "$key" "$port" "$LAT_SECS" -S -M "$mode" -c 1 -j 1 --log --log-prefix="$WORK/txlog-$key"
    if [[ -z ${NOTE[$key]:-} ]] && compgen -G "$WORK/txlog-$key.*" >/dev/null; then
        # Each line: client_id transaction_no latency_us script_no epoch epoch_us
        read -r "P50[$key]" "P99[$key]" < <(cat "$WORK/txlog-$key".* | awk '{ print $3 }' | sort -n |
            awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; if (NR) print v[int((NR + 1) / 2)], v[i] }')
    fi
}
for mode in "${MODES[@]}"; do
    latency_run "lat-$mode-direct" "$LEADER_PORT" "$mode"
    relay_up off
    if [[ -n $RELAY_NAME ]]; then
        latency_run "lat-$mode-pgrelay" "$RELAY_PORT" "$mode"
    else
        NOTE[lat-$mode-pgrelay]="n/a ($RELAY_RUN_FAIL)"
    fi
done

# ---- 2. hot-key cache workload ---------------------------------------------------------------

declare -A CACHE_STATS
hot_args=(-f "$WORK/hotkey.sql" -M prepared -c "$CLIENTS" -j "$THREADS")
# Each variant is compared with a direct run made just before it (pgrelay already started and
# idle), so drift in the machine's speed over the run does not bias one ratio.
for variant in off redis memory; do
    key=hot-pgrelay_cache_$variant
    relay_up "$variant"
    measure "hot-direct_before_$variant" "$LEADER_PORT" products "$SECS" "${hot_args[@]}"
    if [[ -z $RELAY_NAME ]]; then
        NOTE[$key]="n/a ($RELAY_RUN_FAIL)"
        continue
    fi
    [[ $variant != redis ]] || timeout 5 redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null 2>&1 || true
    PROXY_PID=$RELAY_PID measure "$key" "$RELAY_PORT" products "$SECS" "${hot_args[@]}"
    if ! pgrelay_alive; then
        NOTE[$key]="n/a (pgrelay died during the run; ${NOTE[$key]:-see log})"
        continue
    fi
    [[ -z ${NOTE[$key]:-} ]] || continue
    hits=$(metric pgrelay_cache_hits_total) misses=$(metric pgrelay_cache_misses_total)
    fills=$(metric pgrelay_cache_fills_total) errors=$(metric pgrelay_cache_errors_total)
    skipped=$(metric pgrelay_cache_fill_skipped_total)
    pg_share=$(awk -v s="${SERVED_TOTAL_OF[$key]}" -v p="${PROCESSED[$key]:-0}" 'BEGIN { if (p > 0) printf "%.1f", 100 * s / p; else print "?" }')
    stats="hits=$hits misses=$misses fills=$fills fill_skipped=$skipped errors=$errors; ${pg_share}% of queries reached PostgreSQL"
    [[ $variant != redis ]] || stats+="; redis keys=$(timeout 5 redis-cli -p "$REDIS_PORT" DBSIZE 2>/dev/null || echo '?')"
    CACHE_STATS[$key]=$stats
    if [[ $variant != off ]] && ((hits == 0)); then
        CACHE_STATS[$key]="cache not serving: $stats"
        problem "pgrelay cache ($variant): no cache hits ($stats)"
    fi
done
pgrelay_stop

# ---- report ----------------------------------------------------------------------------------

fmt_tps() { [[ -n $1 ]] && printf '%.0f' "$1" || printf -- '-'; }
echo
echo "== pgbench -S (scale $SCALE, -c $CLIENTS -j $THREADS, ${SECS}s each; $(nproc) cores; load at start $LOAD_START) =="
printf '%-16s %-9s %10s %12s  %-22s %14s  %s\n' target mode TPS "avg lat ms" "served by (pgss)" "proxy CPU/txn" note
for mode in "${MODES[@]}"; do
    for t in "${TARGETS[@]}"; do
        k=S-$mode-$t
        if [[ -n ${NOTE[$k]:-} ]]; then
            printf '%-16s %-9s %10s %12s  %-22s %14s  %s\n' "$t" "$mode" - - - - "${NOTE[$k]}"
        else
            printf '%-16s %-9s %10s %12s  %-22s %14s\n' "$t" "$mode" "$(fmt_tps "${TPS[$k]}")" "${LAT[$k]}" \
                "${SERVED[$k]:-}" "$([[ -n ${CPU_US[$k]:-} ]] && echo "${CPU_US[$k]} µs" || echo -)"
        fi
    done
done
echo
printf '%-9s %22s %22s %22s\n' mode pgrelay/direct-leader pgrelay/direct-replica pgrelay/pgbouncer
declare -A RATIO
for mode in "${MODES[@]}"; do
    r=S-$mode
    RATIO[$mode-leader]=$(ratio "${TPS[$r-pgrelay]:-}" "${TPS[$r-direct_leader]:-}")
    RATIO[$mode-replica]=$(ratio "${TPS[$r-pgrelay]:-}" "${TPS[$r-direct_replica]:-}")
    RATIO[$mode-pgbouncer]=$(ratio "${TPS[$r-pgrelay]:-}" "${TPS[$r-pgbouncer]:-}")
    RATIO[$mode-pgbouncer-same-server]=$(ratio "${TPS[$r-pgrelay_leader_only]:-}" "${TPS[$r-pgbouncer]:-}")
    printf '%-9s %22s %22s %22s\n' "$mode" "${RATIO[$mode-leader]:-n/a}" "${RATIO[$mode-replica]:-n/a}" "${RATIO[$mode-pgbouncer]:-n/a}"
done

echo
echo "== head to head: pgbench -S -M simple -c $CLIENTS -j $THREADS on the leader, ${SECS}s each, $ROUNDS rounds taking turns =="
if [[ -n $PGB_FAIL ]]; then
    echo "n/a ($PGB_FAIL)"
else
    printf '%-30s %-28s %10s %10s\n' target "TPS per round" median "/pgbouncer"
    for t in "${H2H[@]}"; do
        H2H_RATIO[$t]=$(ratio "${H2H_MEDIAN[$t]:-}" "${H2H_MEDIAN[pgbouncer]:-}")
        printf '%-30s %-28s %10s %10s\n' "$t" "${H2H_RUNS[$t]:- -}" "${H2H_MEDIAN[$t]:--}" "${H2H_RATIO[$t]:--}"
    done
    echo "(target: pgrelay >= PgBouncer; pgrelay_leader_only uses the default workers = 0, one thread per core)"
fi

echo
echo "== added latency: pgbench -S -c 1 -j 1, ${LAT_SECS}s each, direct leader vs through pgrelay (µs) =="
printf '%-9s %-8s %10s %8s %8s\n' mode target avg p50 p99
declare -A ADDED
for mode in "${MODES[@]}"; do
    for t in direct pgrelay; do
        k=lat-$mode-$t
        if [[ -n ${NOTE[$k]:-} ]]; then
            printf '%-9s %-8s %s\n' "$mode" "$t" "${NOTE[$k]}"
        else
            printf '%-9s %-8s %10.0f %8s %8s\n' "$mode" "$t" "$(awk -v l="${LAT[$k]}" 'BEGIN { print l * 1000 }')" "${P50[$k]:-}" "${P99[$k]:-}"
        fi
    done
    d=lat-$mode-direct p=lat-$mode-pgrelay
    if [[ -z ${NOTE[$d]:-} && -z ${NOTE[$p]:-} ]]; then
        ADDED[$mode-avg]=$(awk -v a="${LAT[$p]}" -v b="${LAT[$d]}" 'BEGIN { printf "%.0f", (a - b) * 1000 }')
        ADDED[$mode-p50]=$(awk -v a="${P50[$p]:-0}" -v b="${P50[$d]:-0}" 'BEGIN { printf "%.0f", a - b }')
        printf '%-9s added: avg %s µs, p50 %s µs (target p50 <= 60 µs)\n' "$mode" "${ADDED[$mode-avg]}" "${ADDED[$mode-p50]}"
    fi
done

echo
echo "== hot-key reads: products (100 rows), -M prepared -c $CLIENTS -j $THREADS, ${SECS}s each =="
printf '%-22s %10s %12s %14s  %-22s %14s  %s\n' target TPS "avg lat ms" "ratio/direct" "served by (pgss)" "proxy CPU/txn" note
HOT=(direct_before_off pgrelay_cache_off direct_before_redis pgrelay_cache_redis direct_before_memory pgrelay_cache_memory)
for t in "${HOT[@]}"; do
    k=hot-$t
    if [[ -n ${NOTE[$k]:-} ]]; then
        printf '%-22s %10s %12s %14s  %-22s %14s  %s\n' "$t" - - - - - "${NOTE[$k]}"
        RATIO[$k]=
    else
        RATIO[$k]=
        [[ $t == direct_* ]] || RATIO[$k]=$(ratio "${TPS[$k]}" "${TPS[hot-direct_before_${t#pgrelay_cache_}]:-}")
        printf '%-22s %10s %12s %14s  %-22s %14s  %s\n' "$t" "$(fmt_tps "${TPS[$k]}")" "${LAT[$k]}" "${RATIO[$k]:--}" \
            "${SERVED[$k]:-}" "$([[ -n ${CPU_US[$k]:-} ]] && echo "${CPU_US[$k]} µs" || echo -)" "${CACHE_STATS[$k]:-}"
    fi
done
echo "(target: cache on >= 2.00x direct)"

for entry in "${RELAY_LOGS[@]}"; do relay_log_problems "${entry%%:*}" "${entry#*:}"; done
echo
echo "== problems =="
if ((${#PROBLEMS[@]} == 0)); then echo "none"; else printf '%s\n' "${PROBLEMS[@]}"; fi

# ---- summary ---------------------------------------------------------------------------------

kv() { printf '%s=%s\n' "$1" "${2:-n/a}"; }
echo
echo "--- summary ---"
kv bench_seconds "$SECS"
kv clients "$CLIENTS"
kv scale "$SCALE"
kv cores "$(nproc)"
kv load_at_start "${LOAD_START// /,}"
kv pgbouncer_version "$PGB_VERSION"
kv pgrelay_build "$RELAY_BUILD"
for mode in "${MODES[@]}"; do
    for t in "${TARGETS[@]}"; do
        k=S-$mode-$t
        kv "select.$mode.$t.tps" "${TPS[$k]:-}"
        kv "select.$mode.$t.latency_ms" "${LAT[$k]:-}"
        [[ -z ${CPU_US[$k]:-} ]] || kv "select.$mode.$t.proxy_cpu_us_per_txn" "${CPU_US[$k]}"
        [[ -z ${NOTE[$k]:-} ]] || kv "select.$mode.$t.reason" "${NOTE[$k]}"
    done
    kv "select.$mode.served_by.pgrelay" "${SERVED[S-$mode-pgrelay]:-}"
    kv "select.$mode.ratio.pgrelay_over_direct_leader" "${RATIO[$mode-leader]:-}"
    kv "select.$mode.ratio.pgrelay_over_direct_replica" "${RATIO[$mode-replica]:-}"
    kv "select.$mode.ratio.pgrelay_over_pgbouncer" "${RATIO[$mode-pgbouncer]:-}"
    kv "select.$mode.ratio.pgrelay_leader_only_over_pgbouncer" "${RATIO[$mode-pgbouncer-same-server]:-}"
    for t in direct pgrelay; do
        k=lat-$mode-$t
        kv "latency.$mode.$t.avg_us" "$([[ -n ${LAT[$k]:-} ]] && awk -v l="${LAT[$k]}" 'BEGIN { printf "%.0f", l * 1000 }')"
        kv "latency.$mode.$t.p50_us" "${P50[$k]:-}"
        kv "latency.$mode.$t.p99_us" "${P99[$k]:-}"
    done
    kv "latency.$mode.added_avg_us" "${ADDED[$mode-avg]:-}"
    kv "latency.$mode.added_p50_us" "${ADDED[$mode-p50]:-}"
done
for t in "${H2H[@]}"; do
    runs=${H2H_RUNS[$t]:-}
    kv "headtohead.$t.runs" "${runs# }"
    kv "headtohead.$t.median_tps" "${H2H_MEDIAN[$t]:-}"
    [[ $t == pgbouncer ]] || kv "headtohead.$t.ratio_over_pgbouncer" "${H2H_RATIO[$t]:-}"
done
for t in "${HOT[@]}"; do
    k=hot-$t
    kv "hotkey.$t.tps" "${TPS[$k]:-}"
    [[ -z ${CPU_US[$k]:-} ]] || kv "hotkey.$t.proxy_cpu_us_per_txn" "${CPU_US[$k]}"
    [[ -z ${NOTE[$k]:-} ]] || kv "hotkey.$t.reason" "${NOTE[$k]}"
    [[ $t == direct_* ]] || kv "hotkey.$t.ratio_over_direct" "${RATIO[$k]:-}"
    [[ -z ${CACHE_STATS[$k]:-} ]] || kv "hotkey.$t.cache" "${CACHE_STATS[$k]}"
done
kv problems "${#PROBLEMS[@]}"
kv elapsed_seconds $((SECONDS - START_TIME))
echo "--- end summary ---"
