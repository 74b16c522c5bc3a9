//! Reloading proxy.toml on SIGHUP and with the console's RELOAD: a new lag budget and a new
//! user take effect while a connected client keeps querying; a broken file is refused with a
//! log line and the running config keeps working; keys that need a restart keep their value.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{Cluster, Proxy, SIGHUP};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

const LOG_WAIT: Duration = Duration::from_secs(10);

/// A user only the reloaded config knows (the role exists on the servers from the start).
const LATE_USER: &str = "[[users]]\nname = \"late_user\"\npassword = \"late\"\n";

/// Creates a login role on the servers if it does not exist, and sets its password.
fn create_role(cluster: &Cluster, name: &str, password: &str) {
    // Tests sharing a cluster run at once; two concurrent CREATE ROLEs would collide.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    cluster.leader.psql(&format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
             CREATE ROLE {name} LOGIN;
           END IF;
         END $$;
         ALTER ROLE {name} PASSWORD '{password}'"
    ));
    cluster.wait_for_replay();
}

fn create_late_user(cluster: &Cluster) {
    create_role(cluster, "late_user", "late");
}

async fn console(proxy: &Proxy) -> Client {
    proxy
        .try_connect_db("admin_user", "admin", "pgrelay")
        .await
        .unwrap_or_else(|e| panic!("console login failed: {e}\n{}", proxy.log()))
}

/// A two-column console result (`EXPLAIN ROUTE`, `SHOW CONFIG`) as a map.
async fn pairs(client: &Client, command: &str) -> HashMap<String, String> {
    client
        .simple_query(command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).unwrap_or("").to_owned(),
                r.get(1).unwrap_or("").to_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// The port of the server that answered, through the client's existing connection.
async fn server_port(client: &Client) -> u16 {
    let messages = client
        .simple_query("SELECT inet_server_port()")
        .await
        .expect("the connected client keeps working");
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|p| p.parse().ok()),
            _ => None,
        })
        .expect("a port")
}

async fn late_user_login(proxy: &Proxy) -> Result<Client, tokio_postgres::Error> {
    proxy.try_connect("late_user", "late").await
}

/// Polls `EXPLAIN ROUTE <sql>` until its reason is `reason` (≤ 20 s).
async fn wait_for_reason(admin: &Client, sql: &str, reason: &str) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = pairs(admin, &format!("EXPLAIN ROUTE {sql}")).await;
        if e["reason"] == reason {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "reason never became {reason}: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sighup_applies_a_new_lag_budget_and_user_without_dropping_clients() {
    let cluster = Cluster::start();
    create_late_user(&cluster);
    let proxy = Proxy::start(&cluster, "[cluster]\nmax_replica_lag = \"1MB\"");
    let app = proxy.connect("app", "app").await;
    let admin = console(&proxy).await;
    server_port(&app).await;
    let Err(refused) = late_user_login(&proxy).await else {
        panic!("late_user logged in before it was configured");
    };
    assert_eq!(
        refused.as_db_error().map(|d| d.code()),
        Some(&SqlState::INVALID_PASSWORD)
    );

    // Both replicas fall ~6 MB behind: over the 1MB budget, reads go to the leader.
    cluster
        .leader
        .psql("CREATE TABLE reload_fill (id int, pad text)");
    cluster.wait_for_replay();
    for replica in &cluster.replicas {
        replica.psql("SELECT pg_wal_replay_pause()");
    }
    cluster.leader.psql(
        "INSERT INTO reload_fill SELECT g, repeat('x', 1000) FROM generate_series(1, 6000) g",
    );
    wait_for_reason(&admin, "SELECT 1", "lag").await;
    assert_eq!(server_port(&app).await, cluster.leader.port);

    proxy.rewrite_config(&format!(
        "[cluster]\nmax_replica_lag = \"64MB\"\n{LATE_USER}"
    ));
    proxy.signal(SIGHUP);
    proxy.wait_for_log("config reloaded", LOG_WAIT);
    assert!(
        proxy.log().contains("cluster.max_replica_lag"),
        "the reload names what changed\n{}",
        proxy.log()
    );

    // The same replicas, still 6 MB behind, are within the new budget.
    let read = wait_for_reason(&admin, "SELECT 1", "read").await;
    assert_eq!(read["target_role"], "replica", "{read:?}");
    let replica_ports: Vec<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !replica_ports.contains(&server_port(&app).await) {
        assert!(
            Instant::now() < deadline,
            "the connected client's reads never reached a replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = late_user_login(&proxy)
        .await
        .unwrap_or_else(|e| panic!("late_user after reload: {e}\n{}", proxy.log()));
    server_port(&late).await;
    let config = pairs(&admin, "SHOW CONFIG").await;
    assert_eq!(config["cluster.max_replica_lag"], "67108864B");

    for replica in &cluster.replicas {
        replica.psql("SELECT pg_wal_replay_resume()");
    }
}

#[tokio::test]
async fn broken_config_is_refused_and_the_running_one_keeps_working() {
    let cluster = Cluster::shared();
    create_late_user(cluster);
    let proxy = Proxy::start(cluster, "");
    let app = proxy.connect("app", "app").await;
    server_port(&app).await;

    // Not TOML at all.
    std::fs::write(
        proxy.config_path(),
        format!("[server\nlisten = \n{LATE_USER}"),
    )
    .expect("write broken config");
    proxy.signal(SIGHUP);
    proxy.wait_for_log("config reload refused", LOG_WAIT);

    // Valid TOML, invalid value: refused with the key named.
    proxy.rewrite_config(&format!("max_server_connections = 0\n{LATE_USER}"));
    proxy.signal(SIGHUP);
    let deadline = Instant::now() + LOG_WAIT;
    while proxy.log().matches("config reload refused").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "second refusal not logged\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        proxy.log().contains("server.max_server_connections"),
        "{}",
        proxy.log()
    );
    assert!(!proxy.log().contains("config reloaded"));

    server_port(&app).await;
    let again = proxy.connect("app", "app").await;
    server_port(&again).await;
    assert!(
        late_user_login(&proxy).await.is_err(),
        "a refused file added a user"
    );
    let admin = console(&proxy).await;
    let config = pairs(&admin, "SHOW CONFIG").await;
    assert_eq!(config["server.max_server_connections"], "20");
}

#[tokio::test]
async fn console_reload_applies_the_file_or_reports_why_not() {
    let cluster = Cluster::shared();
    create_late_user(cluster);
    let proxy = Proxy::start(cluster, "");
    let app = proxy.connect("app", "app").await;
    let admin = console(&proxy).await;

    proxy.rewrite_config(&format!(
        "max_server_connections = 9\npool_mode = \"session\"\n{LATE_USER}"
    ));
    admin.simple_query("RELOAD").await.expect("RELOAD");
    proxy.wait_for_log("config reloaded", LOG_WAIT);
    let late = late_user_login(&proxy)
        .await
        .unwrap_or_else(|e| panic!("late_user after RELOAD: {e}\n{}", proxy.log()));
    server_port(&late).await;
    server_port(&app).await;
    let config = pairs(&admin, "SHOW CONFIG").await;
    assert_eq!(config["server.max_server_connections"], "9");
    // pool_mode needs a restart: the running value stays, with a warning naming the key.
    assert_eq!(config["server.pool_mode"], "transaction");
    assert!(proxy.log().contains("server.pool_mode"), "{}", proxy.log());

    std::fs::write(proxy.config_path(), "this is not toml").expect("write broken config");
    let error = admin
        .simple_query("RELOAD")
        .await
        .expect_err("a broken file is refused");
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code(), &SqlState::CONFIG_FILE_ERROR);
    assert!(
        db.message().contains("the running config stays"),
        "{}",
        db.message()
    );
    server_port(&app).await;
    server_port(&late).await;
    assert_eq!(
        pairs(&admin, "SHOW CONFIG").await["server.max_server_connections"],
        "9"
    );
}

fn rotating_user(server_password: &str) -> String {
    format!(
        "[[users]]\nname = \"rotating_user\"\npassword = \"client\"\nserver_password = \"{server_password}\"\n"
    )
}

/// Ends pgrelay's server connections as `rotating_user` on every node, so the next ones must
/// log in again.
fn terminate_rotating_user_connections(cluster: &Cluster) {
    let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
               WHERE usename = 'rotating_user'";
    cluster.leader.psql(sql);
    for replica in &cluster.replicas {
        replica.psql(sql);
    }
}

#[tokio::test]
async fn a_rotated_server_password_is_used_for_new_server_connections() {
    let cluster = Cluster::shared();
    create_role(cluster, "rotating_user", "server-one");
    let proxy = Proxy::start(cluster, &rotating_user("server-one"));
    let before = proxy
        .try_connect("rotating_user", "client")
        .await
        .unwrap_or_else(|e| panic!("login before the rotation: {e}\n{}", proxy.log()));
    server_port(&before).await;

    // The operator changes the role's password, then pgrelay's config, and reloads.
    cluster
        .leader
        .psql("ALTER ROLE rotating_user PASSWORD 'server-two'");
    cluster.wait_for_replay();
    proxy.rewrite_config(&rotating_user("server-two"));
    proxy.signal(SIGHUP);
    proxy.wait_for_log("config reloaded", LOG_WAIT);
    let log = proxy.log();
    let reloaded = log.lines().rev().find(|l| l.contains("config reloaded"));
    assert!(
        reloaded.is_some_and(|l| l.contains("users")),
        "the reload log line should name the users: {reloaded:?}"
    );
    terminate_rotating_user_connections(cluster);
    // Past the age at which a pooled connection is checked before use, so the dead ones are
    // dropped and new ones are opened.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The client connected before the reload opens new server connections with the new
    // password (its pools are the ones the reload updated).
    for _ in 0..4 {
        before
            .simple_query("SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("old client after the rotation: {e}\n{}", proxy.log()));
    }
    let after = proxy
        .try_connect("rotating_user", "client")
        .await
        .unwrap_or_else(|e| panic!("login after the rotation: {e}\n{}", proxy.log()));
    for _ in 0..4 {
        server_port(&after).await;
    }
    assert!(
        !proxy.log().contains("password authentication failed"),
        "{}",
        proxy.log()
    );
}
