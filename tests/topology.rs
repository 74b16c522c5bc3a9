//! What pgrelay's topology monitor reports about a real cluster, seen from outside: roles and
//! lag in `/metrics`, `/readyz`, leader changes, read eligibility of a lagging replica, and
//! Patroni cross-checked with `pg_is_in_recovery()` (against a fake Patroni REST API).
//!
//! The last tests (acceptance 3 and 4 of issue 5) check where reads land (`SELECT
//! inet_server_port()`): they exercise the routing in `frontend`/`router` on top of the
//! topology snapshot.

mod support;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use support::{wait_until, Cluster, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

/// Tests that stop, promote or pause servers run one at a time, each on its own cluster:
/// their timings mean something only on a machine not busy with another cluster.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The value of a metric line (`name{labels} value`) in a /metrics body.
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn host_series(name: &str, port: u16) -> String {
    format!("{name}{{host=\"127.0.0.1:{port}\"}}")
}

fn role_series(port: u16, role: &str) -> String {
    format!("pgrelay_server_role{{host=\"127.0.0.1:{port}\",role=\"{role}\"}}")
}

/// Waits (≤ `timeout`) until `/metrics` shows `series` with `value`.
fn wait_metric(proxy: &Proxy, series: &str, value: f64, timeout: Duration) {
    wait_until(
        &format!("{series} to be {value}"),
        timeout,
        || metric(&proxy.metrics(), series) == Some(value),
        || proxy.metrics(),
    );
}

fn wait_readyz(proxy: &Proxy, status: u16, timeout: Duration) -> Duration {
    let started = Instant::now();
    wait_until(
        &format!("/readyz to answer {status}"),
        timeout,
        || proxy.http_get("/readyz").0 == status,
        || proxy.log(),
    );
    started.elapsed()
}

#[test]
fn metrics_show_each_servers_role_and_replica_lag() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, "[cluster]\nprobe_interval = \"250ms\"\n");
    let leader = cluster.leader.port;
    wait_metric(
        &proxy,
        &role_series(leader, "leader"),
        1.0,
        Duration::from_secs(5),
    );
    // A write so the lag figures have something to measure; replicas catch up at once.
    cluster.leader.psql(
        "CREATE TABLE IF NOT EXISTS topology_touch (x int); INSERT INTO topology_touch VALUES (1)",
    );
    cluster.wait_for_replay();
    for replica in &cluster.replicas {
        wait_metric(
            &proxy,
            &host_series("pgrelay_replica_eligible", replica.port),
            1.0,
            Duration::from_secs(5),
        );
    }
    let body = proxy.metrics();
    assert_eq!(
        metric(&body, &role_series(leader, "replica")),
        Some(0.0),
        "{body}"
    );
    assert_eq!(metric(&body, "pgrelay_split_brain"), Some(0.0));
    assert_eq!(metric(&body, "pgrelay_leader_changes_total"), Some(0.0));
    assert!(body.contains("# TYPE pgrelay_failover_seconds histogram"));
    for replica in &cluster.replicas {
        assert_eq!(
            metric(&body, &role_series(replica.port, "replica")),
            Some(1.0),
            "{body}"
        );
        assert_eq!(
            metric(&body, &role_series(replica.port, "leader")),
            Some(0.0)
        );
        let bytes = metric(
            &body,
            &host_series("pgrelay_replica_lag_bytes", replica.port),
        )
        .unwrap_or_else(|| panic!("no lag in bytes for {}:\n{body}", replica.name));
        let seconds = metric(
            &body,
            &host_series("pgrelay_replica_lag_seconds", replica.port),
        )
        .unwrap_or_else(|| panic!("no lag in seconds for {}:\n{body}", replica.name));
        assert!(
            bytes < 1_000_000.0,
            "{} is {bytes} bytes behind on an idle cluster",
            replica.name
        );
        assert!(
            seconds < 1.0,
            "{} is {seconds} s behind on an idle cluster",
            replica.name
        );
    }
    assert!(
        metric(&body, &host_series("pgrelay_replica_lag_bytes", leader)).is_none(),
        "the leader has no replica lag"
    );
    let (status, text) = proxy.http_get("/readyz");
    assert_eq!(status, 200);
    assert!(text.contains(&format!("127.0.0.1:{leader}")), "{text}");
}

/// `/readyz` is 200 only while a leader is known; losing the leader is noticed within two
/// probe intervals; a promotion is a leader change (counted, timed); the old leader rewound
/// into a replica shows up as one.
#[test]
fn readyz_follows_the_leader_and_leader_changes_are_counted() {
    let _serial = serial();
    let cluster = Cluster::start();
    let proxy = Proxy::start(&cluster, "[cluster]\nprobe_interval = \"250ms\"\n");
    let (old, new) = (cluster.leader.port, cluster.replicas[0].port);
    wait_readyz(&proxy, 200, Duration::from_secs(5));

    cluster.wait_for_replay();
    cluster.leader.stop_immediate();
    let noticed = wait_readyz(&proxy, 503, Duration::from_secs(3));
    assert!(
        noticed <= Duration::from_millis(1000),
        "no-leader noticed after {noticed:?} (2 probe intervals: 500 ms)"
    );
    assert!(proxy.http_get("/readyz").1.contains("no leader"));
    wait_metric(
        &proxy,
        &role_series(old, "down"),
        1.0,
        Duration::from_secs(2),
    );
    std::thread::sleep(Duration::from_millis(500));

    cluster.replicas[0].promote();
    let noticed = wait_readyz(&proxy, 200, Duration::from_secs(3));
    assert!(
        noticed <= Duration::from_millis(1000),
        "promotion noticed after {noticed:?}"
    );
    assert!(proxy
        .http_get("/readyz")
        .1
        .contains(&format!("127.0.0.1:{new}")));
    let body = proxy.metrics();
    assert_eq!(
        metric(&body, "pgrelay_leader_changes_total"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "pgrelay_failover_seconds_count"),
        Some(1.0),
        "{body}"
    );
    let gap = metric(&body, "pgrelay_failover_seconds_sum").expect("failover seconds");
    assert!((0.4..30.0).contains(&gap), "time without a leader {gap} s");
    assert_eq!(metric(&body, &role_series(new, "leader")), Some(1.0));
    proxy.wait_for_log("leader changed", Duration::from_secs(1));

    // The old leader comes back as a replica of the new one: a replica, not a second leader.
    cluster.leader.rewind_and_follow(&cluster.replicas[0]);
    wait_metric(
        &proxy,
        &role_series(old, "replica"),
        1.0,
        Duration::from_secs(5),
    );
    let body = proxy.metrics();
    assert_eq!(
        metric(&body, "pgrelay_leader_changes_total"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(metric(&body, &role_series(new, "leader")), Some(1.0));
    assert_eq!(metric(&body, "pgrelay_split_brain"), Some(0.0));
}

/// A replica whose replay is paused while the leader writes 5 MB leaves the read set (by bytes
/// with a 1MB budget, by time with a 1s budget) and comes back once it has caught up.
#[test]
fn lagging_replica_loses_read_eligibility_until_it_catches_up() {
    let _serial = serial();
    let cluster = Cluster::start();
    let by_bytes = Proxy::start(
        &cluster,
        "[cluster]\nprobe_interval = \"250ms\"\nmax_replica_lag = \"1MB\"\n",
    );
    let by_time = Proxy::start(
        &cluster,
        "[cluster]\nprobe_interval = \"250ms\"\nmax_replica_lag = \"1s\"\n",
    );
    let (paused, fine) = (&cluster.replicas[0], &cluster.replicas[1]);
    let eligible = |port| host_series("pgrelay_replica_eligible", port);
    for proxy in [&by_bytes, &by_time] {
        wait_metric(proxy, &eligible(paused.port), 1.0, Duration::from_secs(5));
    }

    paused.psql("SELECT pg_wal_replay_pause()");
    cluster.leader.psql(
        "CREATE TABLE lag_filler (id int, pad text); \
         INSERT INTO lag_filler SELECT g, repeat('x', 1000) FROM generate_series(1, 5000) g",
    );
    let paused_at = Instant::now();
    wait_metric(
        &by_bytes,
        &eligible(paused.port),
        0.0,
        Duration::from_secs(2),
    );
    let body = by_bytes.metrics();
    let behind = metric(
        &body,
        &host_series("pgrelay_replica_lag_bytes", paused.port),
    )
    .expect("lag bytes");
    assert!(
        behind > 5_000_000.0,
        "paused replica only {behind} bytes behind"
    );
    // The other replica replays the same 5 MB: on a slow machine it may be over the 1MB budget
    // for a moment too, but it is back while the paused one stays out.
    wait_metric(&by_bytes, &eligible(fine.port), 1.0, Duration::from_secs(5));
    assert_eq!(
        metric(&by_bytes.metrics(), &eligible(paused.port)),
        Some(0.0),
        "the paused replica stays out while the other keeps its reads"
    );
    wait_metric(
        &by_time,
        &eligible(paused.port),
        0.0,
        Duration::from_secs(4),
    );
    let left_after = paused_at.elapsed();
    let body = by_time.metrics();
    let late = metric(
        &body,
        &host_series("pgrelay_replica_lag_seconds", paused.port),
    )
    .expect("lag seconds");
    assert!(late > 1.0, "ineligible at {late} s of lag, budget 1 s");
    assert!(
        left_after >= Duration::from_millis(900),
        "left the read set after {left_after:?}, before its lag reached 1 s"
    );
    assert_eq!(metric(&body, &eligible(fine.port)), Some(1.0));

    paused.psql("SELECT pg_wal_replay_resume()");
    for proxy in [&by_bytes, &by_time] {
        wait_metric(proxy, &eligible(paused.port), 1.0, Duration::from_secs(10));
    }
    let body = by_time.metrics();
    assert_eq!(
        metric(
            &body,
            &host_series("pgrelay_replica_lag_seconds", paused.port)
        ),
        Some(0.0),
        "{body}"
    );
}

/// A fake Patroni REST API: answers `GET /cluster` with whatever `body` holds now.
struct FakePatroni {
    port: u16,
    body: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakePatroni {
    fn start(rt: &Runtime, body: String) -> FakePatroni {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind fake Patroni");
        let port = listener.local_addr().expect("local addr").port();
        let body = Arc::new(Mutex::new(body));
        let shared = Arc::clone(&body);
        let task = rt.spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let body = shared.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let answer = if request.starts_with(b"GET /cluster ") {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
                    };
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        FakePatroni { port, body, task }
    }

    fn set(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }
}

/// A `/cluster` document naming `leader_port` (if any) as the running leader.
fn cluster_document(cluster: &Cluster, leader_port: Option<u16>) -> String {
    let members: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|node| {
            let role = if Some(node.port) == leader_port { "leader" } else { "replica" };
            let state = if role == "leader" { "running" } else { "streaming" };
            format!(
                r#"{{"name": "{}", "role": "{role}", "state": "{state}", "host": "127.0.0.1", "port": {}, "timeline": 1}}"#,
                node.name, node.port
            )
        })
        .collect();
    format!(
        r#"{{"members": [{}], "scope": "pgrelay-test"}}"#,
        members.join(", ")
    )
}

/// With Patroni configured, a server is leader only if Patroni names it and it is out of
/// recovery; with Patroni unreachable pgrelay falls back to `pg_is_in_recovery()` and warns.
#[test]
fn patroni_leader_must_agree_with_recovery_state() {
    let cluster = Cluster::shared();
    let rt = runtime();
    let leader = cluster.leader.port;
    let replica = cluster.replicas[0].port;
    let patroni = FakePatroni::start(&rt, cluster_document(cluster, Some(replica)));
    let proxy = Proxy::start(
        cluster,
        &format!(
            "[cluster]\nprobe_interval = \"250ms\"\nprobe_timeout = \"1s\"\npatroni = [\"http://127.0.0.1:{}\"]\n",
            patroni.port
        ),
    );
    // Patroni names a server still in recovery: no leader, and the real primary is fenced.
    wait_readyz(&proxy, 503, Duration::from_secs(5));
    wait_metric(
        &proxy,
        &role_series(leader, "fenced"),
        1.0,
        Duration::from_secs(3),
    );

    patroni.set(cluster_document(cluster, Some(leader)));
    wait_readyz(&proxy, 200, Duration::from_secs(3));
    assert!(proxy
        .http_get("/readyz")
        .1
        .contains(&format!("127.0.0.1:{leader}")));

    // Patroni between leaders: none, even though a primary answers.
    patroni.set(cluster_document(cluster, None));
    wait_readyz(&proxy, 503, Duration::from_secs(3));

    // Patroni gone: fall back to pg_is_in_recovery(), with a warning.
    patroni.task.abort();
    let _ = rt.block_on(patroni.task);
    wait_readyz(&proxy, 200, Duration::from_secs(5));
    assert!(proxy
        .http_get("/readyz")
        .1
        .contains(&format!("127.0.0.1:{leader}")));
    proxy.wait_for_log("Patroni unreachable", Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------
// Acceptance 3 and 4 of issue 5: where reads land. These exercise the session's routing
// (frontend + router, calling `Snapshot::read_candidates`) on top of the topology snapshot.
// ---------------------------------------------------------------------------------------

/// The port of the server that answered `sql` (which must return `inet_server_port()`).
async fn answered_by(client: &tokio_postgres::Client, sql: &str) -> u16 {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|p| p.parse().ok()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql} returned no port"))
}

/// Acceptance 3: replica 1 with replay paused and 5 MB of writes behind gets zero reads while
/// over the lag budget, and reads again after `pg_wal_replay_resume()`.
#[test]
fn lagging_replica_gets_no_reads_until_it_catches_up() {
    let _serial = serial();
    let cluster = Cluster::start();
    let proxy = Proxy::start(
        &cluster,
        "[cluster]\nprobe_interval = \"250ms\"\nmax_replica_lag = \"1MB\"\n",
    );
    let rt = runtime();
    let client = rt.block_on(proxy.connect("app", "app"));
    let (paused, fine) = (&cluster.replicas[0], &cluster.replicas[1]);
    let eligible = host_series("pgrelay_replica_eligible", paused.port);
    wait_metric(&proxy, &eligible, 1.0, Duration::from_secs(5));

    paused.psql("SELECT pg_wal_replay_pause()");
    cluster.leader.psql(
        "CREATE TABLE lag_reads (id int, pad text); \
         INSERT INTO lag_reads SELECT g, repeat('x', 1000) FROM generate_series(1, 5000) g",
    );
    wait_metric(&proxy, &eligible, 0.0, Duration::from_secs(2));
    // The healthy replica may have dropped out for a probe or two while the 5 MB streamed.
    wait_metric(
        &proxy,
        &host_series("pgrelay_replica_eligible", fine.port),
        1.0,
        Duration::from_secs(5),
    );
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..200 {
        let port = rt.block_on(answered_by(&client, "SELECT inet_server_port()"));
        *counts.entry(port).or_default() += 1;
    }
    assert_eq!(
        counts.get(&paused.port),
        None,
        "the lagging replica got reads: {counts:?}"
    );
    assert!(
        counts.get(&fine.port).copied().unwrap_or(0) > 0,
        "reads did not go to the healthy replica: {counts:?}"
    );

    paused.psql("SELECT pg_wal_replay_resume()");
    wait_metric(&proxy, &eligible, 1.0, Duration::from_secs(10));
    let mut back = false;
    for _ in 0..500 {
        if rt.block_on(answered_by(&client, "SELECT inet_server_port()")) == paused.port {
            back = true;
            break;
        }
    }
    assert!(back, "replica 1 got no reads after catching up");
}

/// INSERT a unique value, SELECT it at once (twice), `iterations` times through `proxy`, with replay
/// paused on replica 1 from iteration `pause.0` to `pause.1`. Returns the misses and how many
/// reads each server answered.
fn insert_then_select(
    rt: &Runtime,
    cluster: &Cluster,
    proxy: &Proxy,
    table: &str,
    iterations: i64,
    pause: (i64, i64),
) -> (Vec<i64>, std::collections::BTreeMap<u16, usize>) {
    cluster.leader.psql(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY); GRANT ALL ON {table} TO app"
    ));
    cluster.wait_for_replay();
    let client = rt.block_on(proxy.connect("app", "app"));
    let mut misses = Vec::new();
    let mut answered = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..iterations {
        if i == pause.0 {
            cluster.replicas[0].psql("SELECT pg_wal_replay_pause()");
        }
        if i == pause.1 {
            cluster.replicas[0].psql("SELECT pg_wal_replay_resume()");
        }
        rt.block_on(client.simple_query(&format!("INSERT INTO {table} VALUES ({i})")))
            .unwrap_or_else(|e| panic!("INSERT {i}: {e}"));
        // Two reads, so that whatever order replicas are picked in, both get some of them.
        for _ in 0..2 {
            let rows = rt
                .block_on(client.simple_query(&format!(
                    "SELECT count(*), inet_server_port() FROM {table} WHERE id = {i}"
                )))
                .unwrap_or_else(|e| panic!("SELECT {i}: {e}"));
            let (count, port) = rows
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                        row.get(0).unwrap_or("").to_owned(),
                        row.get(1).unwrap_or("").to_owned(),
                    )),
                    _ => None,
                })
                .expect("a row");
            *answered.entry(port.parse().expect("port")).or_default() += 1;
            if count != "1" {
                misses.push(i);
            }
        }
    }
    if pause.1 >= iterations {
        cluster.replicas[0].psql("SELECT pg_wal_replay_resume()");
    }
    (misses, answered)
}

/// Acceptance 4: under `read_your_writes` (the default) a client always reads its own
/// INSERT, even with replay paused on a replica for part of the run.
#[test]
fn read_your_writes_never_misses_a_clients_own_insert() {
    let _serial = serial();
    let cluster = Cluster::start();
    // A lag budget this large keeps the paused replica eligible: only read-your-writes can
    // keep the reads off it.
    let proxy = Proxy::start(
        &cluster,
        "[cluster]\nprobe_interval = \"250ms\"\nmax_replica_lag = \"1h\"\n",
    );
    let rt = runtime();
    let (misses, answered) =
        insert_then_select(&rt, &cluster, &proxy, "ryw_values", 5000, (1000, 3000));
    eprintln!("read_your_writes: reads answered by {answered:?}");
    assert!(
        misses.is_empty(),
        "{} reads missed the client's own INSERT: {:?}",
        misses.len(),
        &misses[..misses.len().min(20)]
    );
}

/// The same loop with `consistency = "eventual"` and a paused replica misses: the test above
/// can fail.
#[test]
fn eventual_consistency_misses_writes_on_a_paused_replica() {
    let _serial = serial();
    let cluster = Cluster::start();
    let proxy = Proxy::start(
        &cluster,
        "[cluster]\nprobe_interval = \"250ms\"\nmax_replica_lag = \"1h\"\nconsistency = \"eventual\"\n",
    );
    let rt = runtime();
    let (misses, answered) =
        insert_then_select(&rt, &cluster, &proxy, "eventual_values", 300, (0, 300));
    eprintln!(
        "eventual: {} missed reads of 600; reads answered by {answered:?}",
        misses.len()
    );
    assert!(
        answered
            .get(&cluster.replicas[0].port)
            .copied()
            .unwrap_or(0)
            > 0,
        "the paused replica got no reads: {answered:?}"
    );
    assert!(
        !misses.is_empty(),
        "no miss with eventual consistency and a paused replica: {answered:?}"
    );
}
