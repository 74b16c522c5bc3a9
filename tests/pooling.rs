//! Pool limits under load, and the metrics endpoint: 200 clients over 10 server connections
//! are each served or told why, none hangs, none sees another's data; /metrics parses as
//! Prometheus text and its counters move.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::{Cluster, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_session_clients_over_ten_server_connections() {
    let proxy = Proxy::start(
        Cluster::shared(),
        "pool_mode = \"session\"\nmax_server_connections = 10\nquery_wait_timeout = \"3s\"",
    );
    let url = proxy.conn_str("app", "app", "postgres");
    let mut tasks = Vec::new();
    for id in 0..200i32 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let work = async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
                    .batch_execute(&format!("SET application_name = 'client-{id}'"))
                    .await?;
                let row = client
                    .query_one(
                        "SELECT $1::int4, current_setting('application_name'), pg_sleep(0.2)::text",
                        &[&id],
                    )
                    .await?;
                Ok::<(i32, String), tokio_postgres::Error>((row.get(0), row.get(1)))
            };
            tokio::time::timeout(Duration::from_secs(60), work).await
        }));
    }
    let mut served = 0;
    let mut refused: HashMap<String, usize> = HashMap::new();
    for (id, task) in tasks.into_iter().enumerate() {
        match task.await.expect("task") {
            Err(_) => panic!("client {id} hung"),
            Ok(Ok((echo, app))) => {
                assert_eq!(echo, id as i32, "client {id} saw another client's row");
                assert_eq!(
                    app,
                    format!("client-{id}"),
                    "client {id} saw another client's session"
                );
                served += 1;
            }
            Ok(Err(e)) => {
                let code = e
                    .code()
                    .map(|c| c.code().to_owned())
                    .unwrap_or_else(|| panic!("client {id} failed without a SQLSTATE: {e}"));
                *refused.entry(code).or_default() += 1;
            }
        }
    }
    assert!(
        served >= 10,
        "only {served} clients were served; refused: {refused:?}"
    );
    for code in refused.keys() {
        assert!(
            code.starts_with("08") || code == "53300",
            "unexpected refusal {code}"
        );
    }
}

#[tokio::test]
async fn transaction_pooling_shares_few_connections_among_many_clients() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, "max_server_connections = 3");
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(proxy.connect("app", "app").await);
    }
    for round in 0..5i32 {
        for (i, c) in clients.iter().enumerate() {
            let v: i32 = c
                .query_one("SELECT $1::int4 + $2::int4", &[&(i as i32), &round])
                .await
                .expect("query")
                .get(0);
            assert_eq!(v, i as i32 + round);
        }
    }
    // This pgrelay's own count (other tests share the cluster): at most three connections per
    // server, however many clients.
    let samples = parse_samples(&proxy.metrics());
    for node in cluster.nodes() {
        let host = format!("127.0.0.1:{}", node.port);
        let held: f64 = ["active", "idle"]
            .iter()
            .filter_map(|state| {
                samples
                    .get(&format!(
                        "pgrelay_server_connections{{host=\"{host}\",state=\"{state}\"}}"
                    ))
                    .copied()
            })
            .sum();
        assert!(held <= 3.0, "{held} connections to {host} for 50 clients");
    }
    let total: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("pgrelay_server_connections{"))
        .filter(|(k, _)| !k.contains("waiting"))
        .map(|(_, v)| v)
        .sum();
    assert!(total >= 1.0, "no server connection was counted at all");
}

/// Every sample line of the Prometheus text format: `name{labels} value`.
fn parse_samples(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let bare = name.split('{').next().unwrap_or(name);
        assert!(
            bare.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.insert(name.to_owned(), value);
    }
    samples
}

fn sum(samples: &HashMap<String, f64>, prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let (status, _) = proxy.http_get("/healthz");
    assert_eq!(status, 200);
    let (ready, _) = proxy.http_get("/readyz");
    assert_eq!(ready, 200);
    let before = parse_samples(&proxy.metrics());
    let client = proxy.connect("app", "app").await;
    for _ in 0..10 {
        client.simple_query("SELECT 1").await.expect("query");
    }
    let _ = client.simple_query("SELECT 1/0").await;
    let after = parse_samples(&proxy.metrics());
    for name in [
        "pgrelay_queries_total",
        "pgrelay_client_connections_total",
        "pgrelay_client_bytes_received_total",
        "pgrelay_client_bytes_sent_total",
        "pgrelay_query_duration_seconds_count",
    ] {
        assert!(
            sum(&after, name) > sum(&before, name),
            "{name} did not move"
        );
    }
    assert!(sum(&after, "pgrelay_queries_total") - sum(&before, "pgrelay_queries_total") >= 11.0);
    assert_eq!(
        after
            .get("pgrelay_errors_total{class=\"22\"}")
            .copied()
            .unwrap_or(0.0),
        1.0
    );
    assert!(sum(&after, "pgrelay_client_connections") >= 1.0);
}

#[tokio::test]
async fn client_idle_in_a_transaction_is_closed_and_frees_its_server() {
    let proxy = Proxy::start(
        Cluster::shared(),
        "max_server_connections = 1\nidle_transaction_timeout = \"1s\"\nquery_wait_timeout = \"10s\"",
    );
    let idler = proxy.connect("app", "app").await;
    idler.batch_execute("BEGIN").await.expect("begin");
    idler
        .batch_execute("SELECT txid_current()")
        .await
        .expect("statement in the transaction");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = idler
        .simple_query("SELECT 1")
        .await
        .expect_err("the idle transaction was ended");
    assert!(
        err.code().map(|c| c.code()) == Some("25P03") || idler.is_closed(),
        "got {err}"
    );
    // The only server connection is free again for another client's write.
    let other = proxy.connect("app", "app").await;
    other
        .batch_execute("BEGIN; SELECT txid_current(); COMMIT")
        .await
        .expect("the freed connection serves another client");
}

#[tokio::test]
async fn sigterm_lets_a_running_transaction_finish_then_stops() {
    let cluster = Cluster::shared();
    let mut proxy = Proxy::start(cluster, "shutdown_timeout = \"10s\"");
    cluster
        .leader
        .psql("CREATE TABLE IF NOT EXISTS pl_shutdown (v int); GRANT ALL ON pl_shutdown TO app");
    let client = proxy.connect("app", "app").await;
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .batch_execute("INSERT INTO pl_shutdown VALUES (42)")
        .await
        .expect("insert");
    proxy.signal(support::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        proxy.try_connect("app", "app").await.is_err(),
        "new clients are not accepted once shutdown began"
    );
    client
        .batch_execute("COMMIT")
        .await
        .expect("the open transaction may finish");
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some(),
        "pgrelay did not exit after its last transaction"
    );
    assert_eq!(
        cluster
            .leader
            .psql("SELECT count(*) FROM pl_shutdown WHERE v = 42"),
        "1"
    );
}
