//! One Prometheus registry with every metric pgrelay exports; the names live here and only here.
//!
//! Hot-path counters are resolved to their label children once, so counting a query is an
//! atomic add, not a label lookup. Gauges that describe pools are filled in at scrape time
//! from the pools themselves, never tracked twice.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::pool::PoolStats;
use crate::topology::{Role, Snapshot};

pub struct Metrics {
    registry: Registry,
    pub client_connections: IntGauge,
    pub client_connections_total: IntCounter,
    pub client_connections_refused: IntCounterVec,
    pub auth_failures: IntCounter,
    pub client_bytes_received: IntCounter,
    pub client_bytes_sent: IntCounter,
    pub queries: IntCounterVec,
    /// `queries{route="cache",reason="hit"}`, resolved once: it moves on every cache hit.
    pub queries_answered_by_cache: IntCounter,
    pub transactions: IntCounter,
    pub errors: IntCounterVec,
    pub query_duration: Histogram,
    pub pool_wait: Histogram,
    pub server_connections: IntGaugeVec,
    pub server_connect_failures: IntCounterVec,
    pub cancel_requests: IntCounter,
    pub pinned_clients: IntGauge,
    // Cache-aside (owned by `cache`).
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_fills: IntCounter,
    pub cache_fill_skipped: IntCounterVec,
    pub cache_invalidations: IntCounter,
    pub cache_errors: IntCounter,
    pub cache_bytes: IntGauge,
    // Topology (owned by `topology`).
    /// Reads that could have gone to a replica but went elsewhere, by reason: `lag` (every
    /// replica over `max_replica_lag`), `read_your_writes` (no eligible replica has replayed
    /// the client's last commit), `no_replica` (none up), `banned`. Counted by routing.
    pub reads_rerouted: IntCounterVec,
    /// Roles, lag, leader changes, split brain: filled in by `record_topology` and the
    /// monitor's change hook.
    pub topology: TopologyMetrics,
}

/// What the topology monitor exports.
pub struct TopologyMetrics {
    /// `pgrelay_server_role{host,role}`: 1 for the role the server has now, 0 for the others.
    pub server_role: IntGaugeVec,
    pub replica_lag_bytes: IntGaugeVec,
    pub replica_lag_seconds: GaugeVec,
    pub replica_eligible: IntGaugeVec,
    pub leader_changes: IntCounter,
    /// Histogram of failovers: time without a known leader, observed when one is known again
    /// (0 when the leader moved from one server to another between two probes).
    pub failover_seconds: Histogram,
    pub split_brain: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn float_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

/// Latency buckets from 100 µs to 30 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0,
    ]
}

impl Metrics {
    // The names and label sets below are constants: registering them can only fail through a
    // programming error, which the unit test below catches, so panicking there is right.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let queries = counter_vec(
            &r,
            "pgrelay_queries_total",
            "Units of client work (a Query string, an extended-protocol batch) by the server they were routed to and the rule that decided.",
            &["route", "reason"],
        );
        Metrics {
            client_connections: gauge(&r, "pgrelay_client_connections", "Client connections currently open."),
            client_connections_total: counter(&r, "pgrelay_client_connections_total", "Client connections accepted."),
            client_connections_refused: counter_vec(
                &r,
                "pgrelay_client_connections_refused_total",
                "Client connections refused, by reason.",
                &["reason"],
            ),
            auth_failures: counter(&r, "pgrelay_auth_failures_total", "Client logins refused for bad credentials."),
            client_bytes_received: counter(&r, "pgrelay_client_bytes_received_total", "Bytes received from clients."),
            client_bytes_sent: counter(&r, "pgrelay_client_bytes_sent_total", "Bytes sent to clients."),
            queries_answered_by_cache: queries.with_label_values(&["cache", "hit"]),
            queries,
            transactions: counter(&r, "pgrelay_transactions_total", "Server connection checkouts that ended idle (transactions and autocommit statements)."),
            errors: counter_vec(
                &r,
                "pgrelay_errors_total",
                "ErrorResponses sent to clients, by SQLSTATE class (first two characters).",
                &["class"],
            ),
            query_duration: histogram(
                &r,
                "pgrelay_query_duration_seconds",
                "Time from a query reaching pgrelay to its ReadyForQuery.",
                latency_buckets(),
            ),
            pool_wait: histogram(
                &r,
                "pgrelay_pool_wait_seconds",
                "Time a client waited for a server connection.",
                latency_buckets(),
            ),
            server_connections: gauge_vec(
                &r,
                "pgrelay_server_connections",
                "Server connections by host and state (active, idle), and clients waiting for one.",
                &["host", "state"],
            ),
            server_connect_failures: counter_vec(
                &r,
                "pgrelay_server_connect_failures_total",
                "Failed attempts to open a server connection, by host.",
                &["host"],
            ),
            cancel_requests: counter(&r, "pgrelay_cancel_requests_total", "CancelRequests received from clients."),
            pinned_clients: gauge(
                &r,
                "pgrelay_pinned_clients",
                "Clients pinned to one server connection because of session state transaction pooling cannot move.",
            ),
            cache_hits: counter(&r, "pgrelay_cache_hits_total", "Cacheable reads answered from the cache."),
            cache_misses: counter(&r, "pgrelay_cache_misses_total", "Cacheable reads sent to PostgreSQL (no entry, stale entry, or cache unavailable)."),
            cache_fills: counter(&r, "pgrelay_cache_fills_total", "Results stored in the cache."),
            cache_fill_skipped: counter_vec(
                &r,
                "pgrelay_cache_fill_skipped_total",
                "Missed reads whose result was not stored, by reason (too_large, replica_lag, store_unavailable).",
                &["reason"],
            ),
            cache_invalidations: counter(&r, "pgrelay_cache_invalidations_total", "Committed writes whose invalidation reached the cache store."),
            cache_errors: counter(&r, "pgrelay_cache_errors_total", "Cache store calls that failed or timed out (queries then went to PostgreSQL)."),
            cache_bytes: gauge(
                &r,
                "pgrelay_cache_bytes",
                "In-memory store: bytes held. Redis store: bytes this instance has written to Redis.",
            ),
            reads_rerouted: counter_vec(
                &r,
                "pgrelay_reads_rerouted_total",
                "Reads that could have gone to a replica but did not, by reason (lag, read_your_writes, no_replica, banned).",
                &["reason"],
            ),
            topology: TopologyMetrics {
                server_role: gauge_vec(
                    &r,
                    "pgrelay_server_role",
                    "1 for each server's current role (leader, replica, fenced: out of recovery but not the leader, down), 0 for the others.",
                    &["host", "role"],
                ),
                replica_lag_bytes: gauge_vec(
                    &r,
                    "pgrelay_replica_lag_bytes",
                    "Bytes of WAL each replica has yet to replay (leader LSN - replay LSN), when a leader is known.",
                    &["host"],
                ),
                replica_lag_seconds: float_gauge_vec(
                    &r,
                    "pgrelay_replica_lag_seconds",
                    "How long each replica has been missing WAL the leader has (0 when caught up, however idle the leader).",
                    &["host"],
                ),
                replica_eligible: gauge_vec(
                    &r,
                    "pgrelay_replica_eligible",
                    "1 when a replica may take reads (up, not banned, within max_replica_lag with hysteresis).",
                    &["host"],
                ),
                leader_changes: counter(
                    &r,
                    "pgrelay_leader_changes_total",
                    "Times a different server than the last known leader became the leader.",
                ),
                failover_seconds: histogram(
                    &r,
                    "pgrelay_failover_seconds",
                    "Failovers: how long no leader was known, from the probe that found it missing to the probe that found one (0 when the leader moved between two probes); observed when they end.",
                    vec![0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0],
                ),
                split_brain: gauge(
                    &r,
                    "pgrelay_split_brain",
                    "1 while more than one reachable server is out of recovery.",
                ),
            },
            registry: r,
        }
    }

    /// Sets the topology gauges from the snapshot just published.
    pub fn record_topology(&self, snapshot: &Snapshot) {
        let t = &self.topology;
        for server in &snapshot.servers {
            let host = server.host.to_string();
            for role in Role::ALL {
                t.server_role
                    .with_label_values(&[host.as_str(), role.as_str()])
                    .set(i64::from(server.role == role));
            }
            let replica = server.role == Role::Replica;
            match server.lag_bytes.filter(|_| replica) {
                Some(bytes) => t
                    .replica_lag_bytes
                    .with_label_values(&[host.as_str()])
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX)),
                None => {
                    let _ = t.replica_lag_bytes.remove_label_values(&[host.as_str()]);
                }
            }
            match server.lag.filter(|_| replica) {
                Some(lag) => t
                    .replica_lag_seconds
                    .with_label_values(&[host.as_str()])
                    .set(lag.as_secs_f64()),
                None => {
                    let _ = t.replica_lag_seconds.remove_label_values(&[host.as_str()]);
                }
            }
            if replica {
                t.replica_eligible
                    .with_label_values(&[host.as_str()])
                    .set(i64::from(server.eligible_for_reads));
            } else {
                let _ = t.replica_eligible.remove_label_values(&[host.as_str()]);
            }
        }
        t.split_brain.set(i64::from(snapshot.split_brain));
    }

    /// Counts an ErrorResponse by its SQLSTATE class.
    pub fn count_error(&self, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("XX");
        self.errors.with_label_values(&[class]).inc();
    }

    /// Renders the registry in the Prometheus text format, after refreshing pool gauges.
    pub fn render(&self, pools: &[PoolStats]) -> String {
        self.server_connections.reset();
        for p in pools {
            let host = p.key.host.to_string();
            for (state, n) in [
                ("active", p.active),
                ("idle", p.idle),
                ("waiting", p.waiting),
            ] {
                self.server_connections
                    .with_label_values(&[host.as_str(), state])
                    .add(n as i64);
            }
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders() {
        let m = Metrics::new();
        m.queries.with_label_values(&["leader", "write"]).inc();
        m.count_error("28P01");
        let text = m.render(&[]);
        assert!(text.contains("pgrelay_queries_total{reason=\"write\",route=\"leader\"} 1"));
        assert!(text.contains("pgrelay_errors_total{class=\"28\"} 1"));
        assert!(text.contains("# TYPE pgrelay_query_duration_seconds histogram"));
    }

    #[test]
    fn topology_metrics_follow_the_snapshot() {
        use crate::config::{HostAddr, LagBudget};
        use crate::topology::{PatroniView, Probe, ReadRules, Reading};
        let host = |port| HostAddr {
            host: "127.0.0.1".into(),
            port,
        };
        let probe = |port, in_recovery, lsn| Probe {
            host: host(port),
            outcome: Ok(Reading {
                in_recovery,
                lsn: Some(lsn),
                receive_lsn: None,
                timeline: Some(1),
                clock: 0.0,
                replay_timestamp: None,
            }),
        };
        let snapshot = Snapshot::from_probes(
            vec![probe(5432, false, 5000), probe(5433, true, 1000)],
            &PatroniView::NotConfigured,
            &Snapshot::unknown(&[host(5432), host(5433)]),
            &ReadRules {
                max_replica_lag: LagBudget::Bytes(100),
                ban_time: std::time::Duration::ZERO,
            },
            std::time::Instant::now(),
        );
        let m = Metrics::new();
        m.record_topology(&snapshot);
        m.reads_rerouted.with_label_values(&["lag"]).inc();
        m.topology.failover_seconds.observe(1.5);
        let text = m.render(&[]);
        for line in [
            "pgrelay_server_role{host=\"127.0.0.1:5432\",role=\"leader\"} 1",
            "pgrelay_server_role{host=\"127.0.0.1:5432\",role=\"replica\"} 0",
            "pgrelay_server_role{host=\"127.0.0.1:5433\",role=\"replica\"} 1",
            "pgrelay_replica_lag_bytes{host=\"127.0.0.1:5433\"} 4000",
            "pgrelay_replica_eligible{host=\"127.0.0.1:5433\"} 0",
            "pgrelay_split_brain 0",
            "pgrelay_leader_changes_total 0",
            "pgrelay_reads_rerouted_total{reason=\"lag\"} 1",
            "pgrelay_failover_seconds_count 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("pgrelay_replica_lag_bytes{host=\"127.0.0.1:5432\"}"));
    }
}
