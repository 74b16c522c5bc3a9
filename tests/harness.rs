//! Self-test of the integration harness (tests/support): the cluster it starts really is a
//! leader with streaming replicas, redis answers, the test roles log in with their passwords,
//! failover can be staged, and everything is gone after drop. If these fail, every other
//! integration test's failure means nothing.

mod support;

use std::net::TcpStream;
use std::time::Duration;
use support::{render_config, Cluster};

#[test]
fn leader_is_out_of_recovery_and_replicas_are_in_recovery() {
    let cluster = Cluster::shared();
    assert_eq!(cluster.replicas.len(), 2);
    assert!(!cluster.leader.is_in_recovery(), "leader is in recovery");
    for replica in &cluster.replicas {
        assert!(
            replica.is_in_recovery(),
            "{} is not in recovery",
            replica.name
        );
    }
    let streaming = cluster.leader.psql(
        "SELECT string_agg(application_name, ',' ORDER BY application_name) \
         FROM pg_stat_replication WHERE state = 'streaming'",
    );
    assert_eq!(streaming, "replica1,replica2");
    let hosts = cluster.hosts();
    assert_eq!(hosts.len(), 3);
    for (host, node) in hosts.iter().zip(cluster.nodes()) {
        assert_eq!(host, &format!("127.0.0.1:{}", node.port));
        assert_eq!(node.psql("SHOW port"), node.port.to_string());
        assert_eq!(cluster.node_by_port(node.port).unwrap().name, node.name);
    }
}

#[test]
fn row_written_on_leader_is_visible_on_every_replica_within_5s() {
    let cluster = Cluster::shared();
    cluster.leader.psql(
        "CREATE TABLE harness_visibility (id int PRIMARY KEY, note text); \
         INSERT INTO harness_visibility VALUES (1, 'from leader')",
    );
    for replica in &cluster.replicas {
        replica.wait_for(
            "SELECT note FROM harness_visibility WHERE id = 1",
            "from leader",
            Duration::from_secs(5),
        );
    }
}

#[test]
fn pg_stat_statements_counts_executions_on_the_leader() {
    let cluster = Cluster::shared();
    // Constants are normalized away in pg_stat_statements, so the marker is an alias.
    cluster.leader.psql("SELECT 1 AS harness_pgss_probe");
    cluster.leader.psql("SELECT 2 AS harness_pgss_probe");
    let calls = cluster.leader.psql(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements \
         WHERE query LIKE '%AS harness_pgss_probe' AND query NOT LIKE '%pg_stat_statements%'",
    );
    assert_eq!(calls, "2");
}

#[test]
fn redis_answers_ping() {
    let cluster = Cluster::shared();
    assert_eq!(cluster.redis.cmd(&["PING"]).as_deref(), Ok("PONG"));
    assert_eq!(
        cluster.redis_url(),
        format!("redis://127.0.0.1:{}", cluster.redis.port)
    );
}

#[tokio::test]
async fn test_roles_log_in_to_the_leader_with_their_passwords() {
    let cluster = Cluster::shared();
    for (user, password) in [("app", "app"), ("app2", "app2"), ("md5_user", "md5pass")] {
        let client = cluster.leader.connect(user, password).await;
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
    }
    let wrong = tokio_postgres::connect(
        &cluster.leader.conn_str("app", "not-app", "postgres"),
        tokio_postgres::NoTls,
    )
    .await;
    let error = wrong.err().expect("a wrong password must be refused");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );
    // trust_user needs no password at all.
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=trust_user dbname=postgres",
            cluster.leader.port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("trust_user logs in without a password");
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.unwrap();
}

#[test]
fn md5_user_secret_is_stored_as_md5_and_app_secret_as_scram() {
    let leader = &Cluster::shared().leader;
    let secret_kind = |role: &str| {
        leader.psql(&format!(
            "SELECT split_part(rolpassword, '$', 1) FROM pg_authid WHERE rolname = '{role}'"
        ))
    };
    assert_eq!(secret_kind("app"), "SCRAM-SHA-256");
    assert!(secret_kind("md5_user").starts_with("md5"));
    assert_eq!(
        leader.psql("SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'trust_user'"),
        "t"
    );
}

#[test]
fn promoted_replica_takes_writes_and_the_other_replica_follows_it() {
    let cluster = Cluster::start();
    let (replica1, replica2) = (&cluster.replicas[0], &cluster.replicas[1]);
    cluster
        .leader
        .psql("CREATE TABLE failover (id int PRIMARY KEY); INSERT INTO failover VALUES (1)");
    cluster.wait_for_replay();

    cluster.leader.stop_immediate();
    assert!(!cluster.leader.is_running());
    replica1.promote();
    assert!(!replica1.is_in_recovery());
    replica2.follow(replica1);
    assert!(replica2.is_in_recovery());

    replica1.psql("INSERT INTO failover VALUES (2)");
    replica2.wait_for(
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM failover",
        "1,2",
        Duration::from_secs(5),
    );
    assert_eq!(
        replica1.timeline(),
        2,
        "the promoted replica writes on a new timeline"
    );
    assert_eq!(
        replica2.timeline(),
        2,
        "the follower receives the new timeline"
    );

    // The crashed old leader comes back as a replica of the new one.
    cluster.leader.rewind_and_follow(replica1);
    assert!(cluster.leader.is_in_recovery());
    cluster
        .leader
        .wait_for("SELECT count(*) FROM failover", "2", Duration::from_secs(5));
}

#[test]
fn redis_can_be_paused_stopped_and_restarted() {
    let cluster = Cluster::start_with(0);
    assert!(cluster.replicas.is_empty());
    let redis = &cluster.redis;
    assert_eq!(redis.cmd(&["SET", "k", "v"]).as_deref(), Ok("OK"));
    assert_eq!(redis.cmd(&["GET", "k"]).as_deref(), Ok("v"));
    assert_eq!(redis.cmd(&["INCR", "n"]).as_deref(), Ok("1"));
    assert_eq!(redis.cmd(&["GET", "missing"]).as_deref(), Ok("(nil)"));

    redis.pause();
    assert!(
        redis.cmd(&["PING"]).is_err(),
        "a paused redis must not answer"
    );
    redis.resume();
    assert!(redis.ping());

    redis.stop();
    assert!(
        TcpStream::connect(redis.addr()).is_err(),
        "redis still listens"
    );
    redis.start();
    assert!(redis.ping());
}

#[test]
fn dropping_a_cluster_stops_its_servers_and_removes_its_dir() {
    let cluster = Cluster::start_with(1);
    let dir = cluster.dir().to_path_buf();
    let addrs: Vec<String> = cluster
        .hosts()
        .into_iter()
        .chain([cluster.redis.addr()])
        .collect();
    assert!(dir.exists());
    drop(cluster);
    assert!(!dir.exists(), "{} still exists", dir.display());
    for addr in addrs {
        assert!(TcpStream::connect(&addr).is_err(), "{addr} still listens");
    }
}

#[test]
fn proxy_config_merges_extra_keys_into_default_tables() {
    let hosts = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
    let plain = render_config(7000, 7001, &hosts, "");
    assert!(plain.contains("listen = \"127.0.0.1:7000\""));
    assert!(plain.contains("admin_listen = \"127.0.0.1:7001\""));
    assert!(plain.contains("hosts = [\"127.0.0.1:1\", \"127.0.0.1:2\"]"));
    assert_eq!(plain.matches("[[users]]").count(), 5);

    let extra = "[server]\npool_mode = \"session\"\n\
                 [cache]\nredis_url = \"redis://127.0.0.1:9\"\n\
                 [[cache.rules]]\ntables = [\"products\"]\n\
                 [cluster]\nhosts = [\n  \"127.0.0.1:3\",\n]\nprobe_interval = \"50ms\"\n";
    let merged = render_config(7000, 7001, &hosts, extra);
    let lines: Vec<&str> = merged.lines().collect();
    let count = |line: &str| lines.iter().filter(|l| **l == line).count();
    assert_eq!(count("[server]"), 1, "{merged}");
    assert_eq!(count("[cluster]"), 1, "{merged}");
    assert_eq!(count("[cache]"), 1, "{merged}");
    let server = concat!(
        "[server]\n",
        "listen = \"127.0.0.1:7000\"\n",
        "admin_listen = \"127.0.0.1:7001\"\n",
        "admin_users = [\"admin_user\"]\n",
        "pool_mode = \"session\"\n",
    );
    assert!(merged.contains(server), "{merged}");
    assert!(
        merged.contains("[cluster]\nhosts = [\n  \"127.0.0.1:3\",\n]\nprobe_interval = \"50ms\"\n"),
        "{merged}"
    );
    assert!(!merged.contains("127.0.0.1:1"), "{merged}");
    assert!(
        merged.contains("[[cache.rules]]\ntables = [\"products\"]\n"),
        "{merged}"
    );

    // Keys before any header are [server] keys; a default can be replaced.
    let headerless = render_config(
        7000,
        7001,
        &hosts,
        "pool_mode = \"session\"\nlisten = \"127.0.0.1:9\"",
    );
    assert!(headerless.starts_with("# Written by"), "{headerless}");
    assert!(
        headerless.contains("[server]\nlisten = \"127.0.0.1:9\"\n"),
        "{headerless}"
    );
    assert!(
        headerless.contains("pool_mode = \"session\"\n\n[cluster]"),
        "{headerless}"
    );
    assert!(!headerless.contains("7000"), "{headerless}");
}
