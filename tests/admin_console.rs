//! The admin console on the virtual database `pgrelay`, as an operator uses it from psql or a
//! driver: SHOW SERVERS / POOLS / CLIENTS / STATS / CONFIG / CACHE with real figures after
//! known traffic, EXPLAIN ROUTE for writes, reads, locking reads and reads while the replicas
//! lag, PAUSE / RESUME / SHUTDOWN, and who may log in at all.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Cluster, Proxy};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

/// A console session as the admin user of the harness config.
async fn console(proxy: &Proxy) -> Client {
    proxy
        .try_connect_db("admin_user", "admin", "pgrelay")
        .await
        .unwrap_or_else(|e| panic!("console login failed: {e}\n{}", proxy.log()))
}

/// Every row of the (last) result of a console command, as column name → value.
async fn rows(client: &Client, command: &str) -> Vec<HashMap<String, Option<String>>> {
    let messages = client
        .simple_query(command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn value<'a>(row: &'a HashMap<String, Option<String>>, column: &str) -> &'a str {
    row.get(column)
        .unwrap_or_else(|| panic!("no column {column:?} in {row:?}"))
        .as_deref()
        .unwrap_or("")
}

fn number(row: &HashMap<String, Option<String>>, column: &str) -> u64 {
    let text = value(row, column);
    text.parse()
        .unwrap_or_else(|_| panic!("{column} = {text:?} is not a number in {row:?}"))
}

/// `EXPLAIN ROUTE <sql>` as item → value.
async fn explain(client: &Client, sql: &str) -> HashMap<String, String> {
    rows(client, &format!("EXPLAIN ROUTE {sql}"))
        .await
        .into_iter()
        .map(|r| (value(&r, "item").to_owned(), value(&r, "value").to_owned()))
        .collect()
}

/// For tests that expect reads on replicas: other tests write to the shared cluster at the
/// same time, and on a loaded machine replay can fall a second behind for a moment.
const PATIENT_LAG_BUDGET: &str = "[cluster]\nmax_replica_lag = \"1GB\"";

fn host(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn setup_table(cluster: &Cluster) {
    cluster.leader.psql(
        "CREATE TABLE IF NOT EXISTS ac_items (id int PRIMARY KEY, v text);
         INSERT INTO ac_items VALUES (1, 'one') ON CONFLICT DO NOTHING;
         GRANT ALL ON ac_items TO app;",
    );
    cluster.wait_for_replay();
}

#[tokio::test]
async fn show_servers_lists_every_host_with_its_role() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, PATIENT_LAG_BUDGET);
    let admin = console(&proxy).await;
    let servers = rows(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.len(), 3, "{servers:?}");
    let by_host: HashMap<&str, &HashMap<String, Option<String>>> =
        servers.iter().map(|r| (value(r, "host"), r)).collect();
    let leader = by_host[host(cluster.leader.port).as_str()];
    assert_eq!(value(leader, "role"), "leader");
    assert_eq!(value(leader, "healthy"), "yes");
    assert!(value(leader, "lsn").contains('/'), "{leader:?}");
    for replica in &cluster.replicas {
        let row = by_host[host(replica.port).as_str()];
        assert_eq!(value(row, "role"), "replica", "{row:?}");
        assert_eq!(value(row, "healthy"), "yes");
        assert_eq!(value(row, "eligible_for_reads"), "yes", "{row:?}");
        assert_eq!(value(row, "banned"), "no");
        number(row, "lag_bytes");
    }
}

#[tokio::test]
async fn show_pools_counts_active_and_idle_connections_after_traffic() {
    let cluster = Cluster::shared();
    setup_table(cluster);
    let proxy = Proxy::start(
        cluster,
        &format!("max_server_connections = 7\n{PATIENT_LAG_BUDGET}"),
    );
    let app = proxy.connect("app", "app").await;
    // Reads first: right after its own write a client's reads wait for the replicas.
    for _ in 0..4 {
        app.simple_query("SELECT * FROM ac_items")
            .await
            .expect("read");
    }
    app.simple_query("INSERT INTO ac_items VALUES (100, 'x') ON CONFLICT DO NOTHING")
        .await
        .expect("write");
    let admin = console(&proxy).await;
    let pools = rows(&admin, "SHOW POOLS").await;
    let leader_pool = pools
        .iter()
        .find(|p| value(p, "host") == host(cluster.leader.port) && value(p, "user") == "app")
        .unwrap_or_else(|| panic!("no leader pool for app: {pools:?}"));
    assert_eq!(value(leader_pool, "database"), "postgres");
    assert_eq!(number(leader_pool, "active"), 0, "{leader_pool:?}");
    assert!(number(leader_pool, "idle") >= 1, "{leader_pool:?}");
    assert_eq!(number(leader_pool, "max"), 7);
    let replica_hosts: Vec<String> = cluster.replicas.iter().map(|r| host(r.port)).collect();
    assert!(
        pools
            .iter()
            .any(|p| replica_hosts.contains(&value(p, "host").to_owned())),
        "reads left no replica pool: {pools:?}"
    );

    // A transaction holds its leader connection: one active.
    app.simple_query("BEGIN; INSERT INTO ac_items VALUES (101, 'y') ON CONFLICT DO NOTHING")
        .await
        .expect("open transaction");
    let pools = rows(&admin, "SHOW POOLS").await;
    let leader_pool = pools
        .iter()
        .find(|p| value(p, "host") == host(cluster.leader.port) && value(p, "user") == "app")
        .expect("leader pool");
    assert_eq!(number(leader_pool, "active"), 1, "{leader_pool:?}");
    app.simple_query("ROLLBACK").await.expect("rollback");

    let servers = rows(&admin, "SHOW SERVERS").await;
    let leader = servers
        .iter()
        .find(|s| value(s, "host") == host(cluster.leader.port))
        .expect("leader row");
    assert!(number(leader, "idle") >= 1, "{leader:?}");
}

#[tokio::test]
async fn show_clients_lists_a_connected_client() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, "");
    let app = proxy.connect("app", "app").await;
    app.simple_query("SELECT 1").await.expect("query");
    let admin = console(&proxy).await;
    let clients = rows(&admin, "SHOW CLIENTS").await;
    let row = clients
        .iter()
        .find(|c| value(c, "user") == "app")
        .unwrap_or_else(|| panic!("app is not listed: {clients:?}"));
    assert_eq!(value(row, "database"), "postgres");
    assert!(value(row, "address").starts_with("127.0.0.1:"), "{row:?}");
    assert_eq!(value(row, "state"), "idle", "{row:?}");
    assert_eq!(
        value(row, "server"),
        "",
        "an idle client holds no server: {row:?}"
    );
    number(row, "age_seconds");
    assert!(
        clients
            .iter()
            .any(|c| value(c, "user") == "admin_user" && value(c, "database") == "pgrelay"),
        "the console itself is a client too: {clients:?}"
    );

    app.simple_query("BEGIN; SELECT 1")
        .await
        .expect("open transaction");
    let clients = rows(&admin, "SHOW CLIENTS").await;
    let row = clients
        .iter()
        .find(|c| value(c, "user") == "app")
        .expect("app listed");
    assert_eq!(value(row, "state"), "active", "{row:?}");
    assert_eq!(value(row, "server"), host(cluster.leader.port), "{row:?}");
    app.simple_query("ROLLBACK").await.expect("rollback");

    drop(app);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let clients = rows(&admin, "SHOW CLIENTS").await;
        if !clients.iter().any(|c| value(c, "user") == "app") {
            break;
        }
        assert!(Instant::now() < deadline, "app still listed: {clients:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `queries` of one route/reason row of SHOW STATS (0 when absent), and the total row.
async fn stats(
    admin: &Client,
) -> (
    HashMap<(String, String), u64>,
    HashMap<String, Option<String>>,
) {
    let all = rows(admin, "SHOW STATS").await;
    let mut by_route = HashMap::new();
    let mut total = None;
    for row in all {
        if value(&row, "route") == "total" {
            total = Some(row);
        } else {
            by_route.insert(
                (
                    value(&row, "route").to_owned(),
                    value(&row, "reason").to_owned(),
                ),
                number(&row, "queries"),
            );
        }
    }
    (by_route, total.expect("a total row"))
}

#[tokio::test]
async fn show_stats_counts_move_after_known_traffic() {
    let cluster = Cluster::shared();
    setup_table(cluster);
    let proxy = Proxy::start(cluster, "");
    let admin = console(&proxy).await;
    let (before, before_total) = stats(&admin).await;
    let app = proxy.connect("app", "app").await;
    for i in 0..3 {
        app.simple_query(&format!(
            "INSERT INTO ac_items VALUES ({}, 's') ON CONFLICT DO NOTHING",
            200 + i
        ))
        .await
        .expect("write");
    }
    for _ in 0..5 {
        app.simple_query("SELECT v FROM ac_items WHERE id = 1")
            .await
            .expect("read");
    }
    let (after, total) = stats(&admin).await;
    let count = |m: &HashMap<(String, String), u64>, route: &str, reason: &str| {
        m.get(&(route.to_owned(), reason.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        count(&after, "leader", "write") - count(&before, "leader", "write"),
        3,
        "{after:?}"
    );
    // Right after its own write a client's reads may wait for the replicas (read your
    // writes) and go to the leader with reason `lag`; either way all five are counted.
    let reads = |m| count(m, "replica", "read") + count(m, "leader", "lag");
    assert_eq!(reads(&after) - reads(&before), 5, "{after:?}");
    assert!(number(&total, "queries") >= number(&before_total, "queries") + 8);
    assert!(number(&total, "bytes_received") > number(&before_total, "bytes_received"));
    assert!(number(&total, "bytes_sent") > number(&before_total, "bytes_sent"));
    let avg: f64 = value(&total, "avg_ms").parse().expect("avg_ms");
    let p99: f64 = value(&total, "p99_ms").parse().expect("p99_ms");
    assert!(avg > 0.0 && p99 > 0.0, "{total:?}");
}

#[tokio::test]
async fn explain_route_gives_target_and_reason() {
    let cluster = Cluster::shared();
    setup_table(cluster);
    let proxy = Proxy::start(cluster, PATIENT_LAG_BUDGET);
    let admin = console(&proxy).await;
    let leader = host(cluster.leader.port);

    let write = explain(&admin, "INSERT INTO ac_items VALUES (3, 'three')").await;
    assert_eq!(write["reason"], "write", "{write:?}");
    assert_eq!(write["target"], leader);
    assert_eq!(write["target_role"], "leader");
    assert_eq!(write["class"], "write");
    assert_eq!(write["write_tables"], "ac_items");
    assert_eq!(write["cacheable"], "no");

    let read = explain(&admin, "SELECT v FROM ac_items WHERE id = 1").await;
    assert_eq!(read["reason"], "read", "{read:?}");
    assert_eq!(read["target_role"], "replica");
    let replicas: Vec<String> = cluster.replicas.iter().map(|r| host(r.port)).collect();
    assert!(replicas.contains(&read["target"]), "{read:?}");
    assert_eq!(read["read_tables"], "ac_items");
    assert_eq!(read["pinned"], "no");

    let locking = explain(&admin, "select * from ac_items where id = 1 for update;").await;
    assert_eq!(locking["reason"], "for_update", "{locking:?}");
    assert_eq!(locking["target"], leader);
    assert!(locking["class"].starts_with("leader_read"), "{locking:?}");

    let pinned = explain(&admin, "LISTEN jobs").await;
    assert_eq!(pinned["pinned"], "yes", "{pinned:?}");

    let other_db = explain(&admin, "IN otherdb SELECT 1").await;
    assert_eq!(other_db["database"], "otherdb");
    assert_eq!(other_db["target_role"], "replica", "{other_db:?}");
}

#[tokio::test]
async fn explain_route_sends_reads_to_the_leader_while_both_replicas_lag() {
    let cluster = Cluster::start();
    let proxy = Proxy::start(&cluster, "[cluster]\nmax_replica_lag = \"1MB\"");
    let admin = console(&proxy).await;
    cluster
        .leader
        .psql("CREATE TABLE lag_fill (id int, pad text); GRANT ALL ON lag_fill TO app;");
    cluster.wait_for_replay();
    let before = explain(&admin, "SELECT count(*) FROM lag_fill").await;
    assert_eq!(before["reason"], "read", "{before:?}");

    for replica in &cluster.replicas {
        replica.psql("SELECT pg_wal_replay_pause()");
    }
    // About 6 MB of WAL the replicas do not replay.
    cluster
        .leader
        .psql("INSERT INTO lag_fill SELECT g, repeat('x', 1000) FROM generate_series(1, 6000) g");
    let deadline = Instant::now() + Duration::from_secs(20);
    let lagging = loop {
        let e = explain(&admin, "SELECT count(*) FROM lag_fill").await;
        if e["reason"] == "lag" {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "replicas never counted as lagging: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(lagging["target"], host(cluster.leader.port), "{lagging:?}");
    assert_eq!(lagging["target_role"], "leader");
    assert!(lagging["rule"].contains("max_replica_lag"), "{lagging:?}");
    assert!(
        lagging["replicas"].contains("over max_replica_lag"),
        "{lagging:?}"
    );
    let servers = rows(&admin, "SHOW SERVERS").await;
    for replica in &cluster.replicas {
        let row = servers
            .iter()
            .find(|s| value(s, "host") == host(replica.port))
            .expect("replica row");
        assert_eq!(value(row, "eligible_for_reads"), "no", "{row:?}");
        assert!(number(row, "lag_bytes") > 1 << 20, "{row:?}");
    }

    for replica in &cluster.replicas {
        replica.psql("SELECT pg_wal_replay_resume()");
    }
}

#[tokio::test]
async fn non_admin_user_is_refused_on_the_console_database() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let error = match proxy.try_connect_db("app", "app", "pgrelay").await {
        Ok(_) => panic!("app got the admin console"),
        Err(e) => e,
    };
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code(), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    assert_eq!(db.message(), "user \"app\" is not an admin user");
    // A wrong password is still a password failure, not a console matter.
    let error = match proxy.try_connect_db("admin_user", "wrong", "pgrelay").await {
        Ok(_) => panic!("wrong password accepted"),
        Err(e) => e,
    };
    assert_eq!(
        error.as_db_error().map(|d| d.code()),
        Some(&SqlState::INVALID_PASSWORD)
    );
}

#[tokio::test]
async fn unknown_command_and_extended_protocol_get_errors_and_the_console_goes_on() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let admin = console(&proxy).await;
    let error = admin
        .simple_query("SHOW NOTHING")
        .await
        .expect_err("unknown command");
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code(), &SqlState::SYNTAX_ERROR);
    assert!(db.message().contains("SHOW SERVERS"), "{}", db.message());

    let error = admin
        .query("SHOW SERVERS", &[])
        .await
        .expect_err("extended protocol");
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code(), &SqlState::FEATURE_NOT_SUPPORTED);
    assert_eq!(
        db.message(),
        "the pgrelay console speaks the simple query protocol only"
    );

    let help = rows(&admin, "show help;").await;
    assert!(help.iter().any(|r| value(r, "command") == "SHOW SERVERS"));
}

#[tokio::test]
async fn show_config_hides_passwords() {
    let proxy = Proxy::start(
        Cluster::shared(),
        "[cluster]\nmax_replica_lag = \"16MB\"\n[[cache.rules]]\ntables = [\"products\"]",
    );
    let admin = console(&proxy).await;
    let config: HashMap<String, String> = rows(&admin, "SHOW CONFIG")
        .await
        .into_iter()
        .map(|r| (value(&r, "key").to_owned(), value(&r, "value").to_owned()))
        .collect();
    assert_eq!(config["cluster.max_replica_lag"], "16777216B");
    assert_eq!(config["server.admin_users"], "[\"admin_user\"]");
    assert_eq!(config["cache.rules[0].tables"], "[\"products\"]");
    let passwords: Vec<(&String, &String)> = config
        .iter()
        .filter(|(k, _)| k.ends_with(".password") && k.starts_with("users["))
        .collect();
    assert!(!passwords.is_empty());
    for (key, value) in passwords {
        assert!(value == "********" || value == "(none)", "{key} = {value}");
    }
    for plain in ["md5pass", "admin"] {
        assert!(
            !config
                .values()
                .any(|v| v.contains(plain) && !v.contains("admin_user")),
            "password {plain:?} shown: {config:?}"
        );
    }
    let cache = rows(&admin, "SHOW CACHE").await;
    assert_eq!(cache.len(), 1, "{cache:?}");
    assert_eq!(
        value(&cache[0], "store"),
        "memory",
        "no redis_url: in-process store"
    );
    assert_eq!(value(&cache[0], "state"), "breaker closed", "{cache:?}");
    number(&cache[0], "hits");
}

#[test]
fn psql_prints_console_tables() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, "");
    let out = Command::new("psql")
        .arg(proxy.conn_str("admin_user", "admin", "pgrelay"))
        .args(["-X", "-A", "-F", "|", "-c", "SHOW SERVERS"])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(
            "host|role|healthy|lsn|lag_bytes|lag_seconds|timeline|eligible_for_reads|banned|active|idle|last_error"
        )
    );
    let leader_line = format!("{}|leader|yes|", host(cluster.leader.port));
    assert!(
        stdout.lines().any(|l| l.starts_with(&leader_line)),
        "{stdout}"
    );
    assert!(stdout.contains("(3 rows)"), "{stdout}");
}

#[tokio::test]
async fn pause_and_resume_are_acknowledged() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let admin = console(&proxy).await;
    admin.simple_query("PAUSE").await.expect("pause");
    proxy.wait_for_log("console: PAUSE", Duration::from_secs(5));
    admin.simple_query("RESUME").await.expect("resume");
    proxy.wait_for_log("console: RESUME", Duration::from_secs(5));
    let app = proxy.connect("app", "app").await;
    app.simple_query("SELECT 1")
        .await
        .expect("runs after RESUME");
}

#[tokio::test]
async fn pause_holds_new_transactions_until_resume() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let admin = console(&proxy).await;
    let app = proxy.connect("app", "app").await;
    app.simple_query("SELECT 1").await.expect("before pause");
    admin.simple_query("PAUSE").await.expect("pause");
    let held = tokio::spawn(async move {
        let started = Instant::now();
        app.simple_query("SELECT 1").await.expect("after resume");
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!held.is_finished(), "a transaction ran while paused");
    let clients = rows(&admin, "SHOW CLIENTS").await;
    assert!(
        clients
            .iter()
            .any(|c| value(c, "user") == "app" && value(c, "state") == "waiting"),
        "{clients:?}"
    );
    admin.simple_query("RESUME").await.expect("resume");
    let waited = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("released by RESUME")
        .expect("task");
    assert!(waited >= Duration::from_millis(700));
}

#[tokio::test]
async fn shutdown_from_the_console_stops_pgrelay() {
    let mut proxy = Proxy::start(Cluster::shared(), "shutdown_timeout = \"5s\"");
    let admin = console(&proxy).await;
    admin.simple_query("SHUTDOWN").await.expect("shutdown");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("pgrelay still runs after SHUTDOWN\n{}", proxy.log()));
    assert!(status.success(), "{status}\n{}", proxy.log());
    assert!(proxy.log().contains("console: SHUTDOWN"));
}
