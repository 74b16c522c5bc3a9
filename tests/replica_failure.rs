//! A replica that dies under load costs readers nothing: reads that had not started
//! answering are run again elsewhere, the replica is left out while down, and it comes back
//! into rotation once it is up again.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::{Cluster, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_replica_mid_load_loses_no_read_and_it_comes_back() {
    let cluster = Cluster::start();
    let proxy = Proxy::start(
        &cluster,
        "[cluster]\nprobe_interval = \"250ms\"\nban_time = \"2s\"",
    );
    let client = proxy.connect("app", "app").await;
    let stmt = client
        .prepare("SELECT inet_server_port()::int4")
        .await
        .expect("prepare");
    let victim = cluster.replicas[0].port;
    let mut before: HashMap<u16, usize> = HashMap::new();
    let mut during: HashMap<u16, usize> = HashMap::new();
    let mut after: HashMap<u16, usize> = HashMap::new();
    for i in 0..600 {
        if i == 100 {
            cluster.replicas[0].stop_immediate();
        }
        if i == 300 {
            cluster.replicas[0].start();
            cluster.replicas[0].wait_streaming_from(&cluster.leader);
        }
        let port = if i % 2 == 0 {
            client
                .query_one(&stmt, &[])
                .await
                .unwrap_or_else(|e| panic!("read {i} failed: {e:?}"))
                .get::<_, i32>(0) as u16
        } else {
            let rows = client
                .simple_query("SELECT inet_server_port()")
                .await
                .unwrap_or_else(|e| panic!("read {i} failed: {e:?}"));
            rows.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        r.get(0).and_then(|p| p.parse().ok())
                    }
                    _ => None,
                })
                .expect("a row")
        };
        let bucket = match i {
            0..100 => &mut before,
            100..300 => &mut during,
            _ => &mut after,
        };
        *bucket.entry(port).or_default() += 1;
        if i >= 300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        before.get(&victim).copied().unwrap_or(0) > 0,
        "victim got no reads before: {before:?}"
    );
    let during_victim = during.get(&victim).copied().unwrap_or(0);
    assert_eq!(during_victim, 0, "a stopped replica answered: {during:?}");
    assert!(
        after.get(&victim).copied().unwrap_or(0) > 0,
        "the restarted replica never came back: {after:?}"
    );
}

/// A pooled replica connection the server has just terminated (FATAL 57P01, as on shutdown)
/// is noticed only when a read is sent on it. That read is run on another server instead of
/// failing: the client never sees the FATAL.
#[tokio::test]
async fn a_read_on_a_terminated_replica_connection_runs_elsewhere() {
    let cluster = Cluster::start();
    let proxy = Proxy::start(
        &cluster,
        "max_server_connections = 1\n[cluster]\nban_time = \"1s\"",
    );
    let client = proxy.connect("app", "app").await;
    let read = "SELECT inet_server_port(), pg_is_in_recovery()";
    for round in 0..20 {
        // Both replicas now hold an idle pooled connection used a moment ago.
        for _ in 0..2 {
            client.simple_query(read).await.expect("warm-up read");
        }
        for replica in &cluster.replicas {
            replica.psql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'",
            );
        }
        for i in 0..2 {
            client
                .simple_query(read)
                .await
                .unwrap_or_else(|e| panic!("round {round}, read {i} after the terminate: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let metrics = proxy.metrics();
    assert!(
        metrics.contains("pgrelay_reads_rerouted_total{reason=\"replica_failed\"}"),
        "no read was run elsewhere:\n{metrics}"
    );
}
