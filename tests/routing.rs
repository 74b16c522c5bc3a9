//! Read/write split through pgrelay in transaction pooling: reads spread over the replicas,
//! every write and every read with a side effect on the leader, transactions kept whole,
//! hints obeyed, session settings and prepared statements following each client.

mod support;

use std::collections::HashMap;
use std::process::Command;

use support::{Cluster, Proxy};
use tokio_postgres::SimpleQueryMessage;

/// The first column of every row of a simple query, in order.
async fn column(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// The port of the server that answered the (first row of the) last result of `sql`.
async fn answered_by(client: &tokio_postgres::Client, sql: &str) -> u16 {
    let port = column(client, sql)
        .await
        .pop()
        .unwrap_or_else(|| panic!("{sql}: no row"));
    port.parse()
        .unwrap_or_else(|_| panic!("{sql}: first column {port:?} is not a port"))
}

/// These tests check where statements go, not lag handling (tests/topology.rs does that): a
/// budget no replica exceeds keeps the WAL that concurrent tests write (pgbench) from
/// sending a read to the leader.
const PATIENT_LAG_BUDGET: &str = "[cluster]\nmax_replica_lag = \"1GB\"";

fn leader_port(cluster: &Cluster) -> u16 {
    cluster.leader.port
}

fn replica_ports(cluster: &Cluster) -> Vec<u16> {
    cluster.replicas.iter().map(|r| r.port).collect()
}

/// Creates the tables and functions these tests share, once per test process (tests run in
/// parallel threads; concurrent CREATE OR REPLACE FUNCTION would collide).
fn setup_tables(cluster: &Cluster) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| create_tables(cluster));
}

fn create_tables(cluster: &Cluster) {
    cluster.leader.psql(
        "CREATE TABLE IF NOT EXISTS rt_items (id int PRIMARY KEY, v text);
         INSERT INTO rt_items VALUES (1, 'one'), (2, 'two') ON CONFLICT DO NOTHING;
         CREATE SEQUENCE IF NOT EXISTS rt_seq;
         CREATE TABLE IF NOT EXISTS rt_log (id serial, note text);
         CREATE OR REPLACE FUNCTION rt_add_log(n text) RETURNS int LANGUAGE plpgsql VOLATILE AS
           $$ BEGIN INSERT INTO rt_log(note) VALUES (n); RETURN inet_server_port(); END $$;
         CREATE OR REPLACE FUNCTION rt_double(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
         CREATE OR REPLACE FUNCTION rt_audit() RETURNS int LANGUAGE sql STABLE AS 'SELECT inet_server_port()';
         GRANT ALL ON ALL TABLES IN SCHEMA public TO app, app2;
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app, app2;",
    );
    cluster.wait_for_replay();
}

#[tokio::test]
async fn reads_spread_over_both_replicas_and_never_reach_the_leader() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, PATIENT_LAG_BUDGET);
    let client = proxy.connect("app", "app").await;
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for _ in 0..500 {
        let port = answered_by(&client, "SELECT inet_server_port(), pg_is_in_recovery()").await;
        *counts.entry(port).or_default() += 1;
    }
    let stmt = client
        .prepare("SELECT inet_server_port()::int4, pg_is_in_recovery()")
        .await
        .expect("prepare");
    for _ in 0..500 {
        let row = client.query_one(&stmt, &[]).await.expect("extended read");
        assert!(
            row.get::<_, bool>(1),
            "a read ran on a server not in recovery"
        );
        *counts.entry(row.get::<_, i32>(0) as u16).or_default() += 1;
    }
    assert_eq!(
        counts.get(&leader_port(cluster)),
        None,
        "reads reached the leader: {counts:?}"
    );
    for replica in replica_ports(cluster) {
        let n = counts.get(&replica).copied().unwrap_or(0);
        assert!(
            n >= 300,
            "replica {replica} got {n} of 1000 reads: {counts:?}"
        );
    }
}

#[tokio::test]
async fn every_kind_of_write_lands_on_the_leader() {
    let cluster = Cluster::shared();
    setup_tables(cluster);
    let proxy = Proxy::start(cluster, "");
    let client = proxy.connect("app", "app").await;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS rt_writes (id int, v text);
             INSERT INTO rt_writes VALUES (1, 'a'), (2, 'b'), (3, 'c');
             UPDATE rt_writes SET v = 'B' WHERE id = 2;
             DELETE FROM rt_writes WHERE id = 3;",
        )
        .await
        .expect("writes");
    client
        .execute("INSERT INTO rt_writes VALUES ($1, $2)", &[&4i32, &"d"])
        .await
        .expect("extended insert");
    let sink = client
        .copy_in("COPY rt_writes FROM STDIN")
        .await
        .expect("copy in");
    {
        use futures_util::SinkExt;
        let mut sink = Box::pin(sink);
        sink.send(bytes::Bytes::from_static(b"5\te\n6\tf\n"))
            .await
            .expect("copy data");
        sink.as_mut().finish().await.expect("copy done");
    }
    client
        .batch_execute("ALTER TABLE rt_writes ADD COLUMN IF NOT EXISTS extra int")
        .await
        .expect("ddl");
    assert_eq!(
        cluster
            .leader
            .psql("SELECT string_agg(id || v, ',' ORDER BY id) FROM rt_writes"),
        "1a,2B,4d,5e,6f"
    );
}

#[tokio::test]
async fn reads_with_side_effects_run_on_the_leader() {
    let cluster = Cluster::shared();
    setup_tables(cluster);
    let proxy = Proxy::start(
        cluster,
        "[cluster]\nwrite_functions = [\"rt_audit\"]\nmax_replica_lag = \"1GB\"",
    );
    let client = proxy.connect("app", "app").await;
    let leader = leader_port(cluster);
    let forms = [
        "SELECT inet_server_port() FROM rt_items WHERE id = 1 FOR UPDATE",
        "SELECT inet_server_port() FROM rt_items WHERE id = 1 FOR NO KEY UPDATE",
        "SELECT inet_server_port() FROM rt_items WHERE id = 1 FOR SHARE",
        "SELECT inet_server_port() FROM rt_items WHERE id = 1 FOR KEY SHARE",
        "SELECT inet_server_port(), nextval('rt_seq')",
        "SELECT inet_server_port(), setval('rt_seq', 100)",
        "SELECT inet_server_port(), nextval('rt_seq'), currval('rt_seq')",
        "SELECT inet_server_port(), pg_advisory_xact_lock(42)",
        "SELECT inet_server_port(), set_config('rt.flag', 'on', false)",
        "SELECT inet_server_port(), txid_current()",
        "SELECT inet_server_port(), pg_current_xact_id()",
        "SELECT inet_server_port(), lo_unlink(lo_create(0))",
        "WITH moved AS (DELETE FROM rt_log WHERE false RETURNING id) SELECT inet_server_port() FROM (SELECT 1) s",
        "WITH ins AS (INSERT INTO rt_log(note) VALUES ('cte') RETURNING id) SELECT inet_server_port() FROM ins",
        "SELECT rt_add_log('volatile user function')",
        "SELECT rt_audit()",
    ];
    for sql in forms {
        assert_eq!(
            answered_by(&client, sql).await,
            leader,
            "{sql} did not run on the leader"
        );
    }
    assert_eq!(
        cluster
            .leader
            .psql("SELECT count(*) FROM rt_log WHERE note = 'volatile user function'"),
        "1",
        "the volatile function's insert happened once, on the leader"
    );
    client
        .batch_execute("DROP TABLE IF EXISTS rt_into; SELECT * INTO rt_into FROM rt_items")
        .await
        .expect("select into");
    assert_eq!(cluster.leader.psql("SELECT count(*) FROM rt_into"), "2");
    // A fresh client: this one just wrote, so read-your-writes may keep its reads on the leader.
    let reader = proxy.connect("app2", "app2").await;
    let immutable = answered_by(&reader, "SELECT inet_server_port() WHERE rt_double(2) = 4").await;
    assert!(
        replica_ports(cluster).contains(&immutable),
        "an IMMUTABLE function call should go to a replica, went to {immutable}"
    );
}

#[tokio::test]
async fn transactions_run_whole_on_one_server() {
    let cluster = Cluster::shared();
    setup_tables(cluster);
    let proxy = Proxy::start(cluster, PATIENT_LAG_BUDGET);
    let client = proxy.connect("app", "app").await;
    let leader = leader_port(cluster);
    let replicas = replica_ports(cluster);

    client.batch_execute("BEGIN").await.expect("begin");
    let in_tx = answered_by(
        &client,
        "SELECT inet_server_port() FROM rt_items WHERE id = 1",
    )
    .await;
    client
        .batch_execute("UPDATE rt_items SET v = 'uno' WHERE id = 1")
        .await
        .expect("update");
    let after = answered_by(&client, "SELECT inet_server_port()").await;
    client.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(
        (in_tx, after),
        (leader, leader),
        "read-write transaction left the leader"
    );
    assert_eq!(
        cluster.leader.psql("SELECT v FROM rt_items WHERE id = 1"),
        "uno"
    );

    // A client that has not written: read-your-writes does not hold it on the leader.
    let reader = proxy.connect("app2", "app2").await;
    for begin in [
        "BEGIN READ ONLY",
        "START TRANSACTION READ ONLY",
        "BEGIN; SET TRANSACTION READ ONLY",
    ] {
        reader.batch_execute(begin).await.expect("begin read only");
        let first = answered_by(&reader, "SELECT inet_server_port()").await;
        let second = answered_by(&reader, "SELECT inet_server_port() FROM rt_items LIMIT 1").await;
        reader.batch_execute("COMMIT").await.expect("commit");
        assert!(
            replicas.contains(&first),
            "{begin}: ran on {first}, not a replica"
        );
        assert_eq!(
            first, second,
            "{begin}: the transaction moved between servers"
        );
    }

    // An empty transaction is answered without a server.
    client.batch_execute("BEGIN").await.expect("begin");
    client.batch_execute("ROLLBACK").await.expect("rollback");

    // All in one string: the strongest statement decides.
    let one_string = answered_by(
        &client,
        "BEGIN; UPDATE rt_items SET v = 'one' WHERE id = 1; SELECT inet_server_port(); COMMIT",
    )
    .await;
    assert_eq!(one_string, leader);
}

#[tokio::test]
async fn hints_route_both_ways() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, PATIENT_LAG_BUDGET);
    let client = proxy.connect("app", "app").await;
    for _ in 0..5 {
        assert_eq!(
            answered_by(&client, "/* pgrelay: leader */ SELECT inet_server_port()").await,
            leader_port(cluster)
        );
        assert_eq!(
            answered_by(&client, "SELECT inet_server_port() -- pgrelay: leader").await,
            leader_port(cluster)
        );
    }
    let hinted = answered_by(&client, "/* pgrelay: replica */ SELECT inet_server_port()").await;
    assert!(replica_ports(cluster).contains(&hinted));
}

#[tokio::test]
async fn settings_follow_each_client_and_never_leak_to_another() {
    let cluster = Cluster::shared();
    // Two connections per server, so the clients keep trading connections.
    let proxy = Proxy::start(cluster, "max_server_connections = 1");
    let a = proxy.connect("app", "app").await;
    let b = proxy.connect("app", "app").await;
    a.batch_execute("SET search_path = a_schema, public")
        .await
        .expect("set a");
    a.batch_execute("SET timezone = 'Asia/Tokyo'")
        .await
        .expect("set a tz");
    b.batch_execute("SET search_path TO b_schema")
        .await
        .expect("set b");
    b.batch_execute("SET TIME ZONE 'America/Lima'")
        .await
        .expect("set b tz");
    for round in 0..20 {
        for (client, path, tz) in [
            (&a, "a_schema, public", "Asia/Tokyo"),
            (&b, "b_schema", "America/Lima"),
        ] {
            let values = column(client, "SHOW search_path; SHOW timezone").await;
            assert_eq!(
                values,
                vec![path.to_owned(), tz.to_owned()],
                "round {round}"
            );
        }
        if round == 10 {
            a.batch_execute("RESET timezone").await.expect("reset");
            assert_ne!(
                column(&a, "SHOW timezone").await,
                vec!["Asia/Tokyo"],
                "RESET did not stick"
            );
            a.batch_execute("SET timezone = 'Asia/Tokyo'")
                .await
                .expect("set again");
        }
    }
    // A failed SET changes nothing.
    assert!(a.batch_execute("SET timezone = 'Not/AZone'").await.is_err());
    assert_eq!(column(&a, "SHOW timezone").await, vec!["Asia/Tokyo"]);
}

#[tokio::test]
async fn prepared_statements_move_between_server_connections() {
    let cluster = Cluster::shared();
    setup_tables(cluster);
    let proxy = Proxy::start(cluster, "max_server_connections = 2");
    let a = proxy.connect("app", "app").await;
    let b = proxy.connect("app2", "app2").await;
    // Same text prepared by two clients, under driver-chosen names that collide.
    let sa = a
        .prepare("SELECT v FROM rt_items WHERE id = $1")
        .await
        .expect("prepare a");
    let sb = b.prepare("SELECT $1::int4 * 10").await.expect("prepare b");
    for i in 0..1000i32 {
        let v: String = a.query_one(&sa, &[&((i % 2) + 1)]).await.expect("a").get(0);
        assert!(v == "one" || v == "uno" || v == "two", "unexpected {v}");
        let x: i32 = b.query_one(&sb, &[&i]).await.expect("b").get(0);
        assert_eq!(x, i * 10);
    }
    // Writes through a prepared statement go to the leader.
    let ins = a
        .prepare("INSERT INTO rt_log(note) VALUES ($1) RETURNING inet_server_port()::int4")
        .await
        .expect("prepare insert");
    let port: i32 = a
        .query_one(&ins, &[&"prepared write"])
        .await
        .expect("insert")
        .get(0);
    assert_eq!(port as u16, leader_port(cluster));
    // Closing a statement and preparing another works (tokio-postgres closes on drop).
    drop(sa);
    let again = a.prepare("SELECT 7").await.expect("prepare after close");
    let seven: i32 = a.query_one(&again, &[]).await.expect("after close").get(0);
    assert_eq!(seven, 7);
}

#[tokio::test]
async fn sql_level_prepare_and_execute_work() {
    let cluster = Cluster::shared();
    // One connection per server: both clients' statements share them, under the same name.
    let proxy = Proxy::start(cluster, "max_server_connections = 1");
    let a = proxy.connect("app", "app").await;
    let b = proxy.connect("app2", "app2").await;
    a.batch_execute("PREPARE rt_q(int) AS SELECT $1 + 1")
        .await
        .expect("prepare a");
    b.batch_execute("PREPARE rt_q(int) AS SELECT $1 * 100")
        .await
        .expect("prepare b");
    for i in 0..20 {
        assert_eq!(
            column(&a, &format!("EXECUTE rt_q({i})")).await,
            vec![(i + 1).to_string()]
        );
        assert_eq!(
            column(&b, &format!("EXECUTE rt_q({i})")).await,
            vec![(i * 100).to_string()]
        );
    }
    a.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(column(&a, "EXECUTE rt_q(41)").await, vec!["42".to_owned()]);
    a.batch_execute("COMMIT").await.expect("commit");
    assert!(
        proxy.metrics().contains("pgrelay_pinned_clients 0"),
        "PREPARE pinned a client"
    );
    a.batch_execute("DEALLOCATE rt_q")
        .await
        .expect("deallocate");
    assert!(a.simple_query("EXECUTE rt_q(1)").await.is_err());
    assert_eq!(column(&b, "EXECUTE rt_q(2)").await, vec!["200".to_owned()]);
}

#[test]
fn pgbench_prepared_in_transaction_pooling_has_no_errors() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, "max_server_connections = 5");
    support::pgbench::pgbench_init(cluster.leader.port);
    cluster.wait_for_replay();
    for (mode, clients) in [("prepared", "16"), ("extended", "16"), ("simple", "100")] {
        support::pgbench::pgbench_runs_cleanly(
            proxy.port(),
            &["-M", mode, "-c", clients, "-j", "2", "-T", "5", "-n"],
            100,
        );
    }
}

#[test]
fn libpq_target_session_attrs_read_write_accepts_pgrelay() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let conn = format!(
        "{} target_session_attrs=read-write",
        proxy.conn_str("app", "app", "postgres")
    );
    let out = Command::new("psql")
        .arg(&conn)
        .args(["-XAtc", "SHOW transaction_read_only"])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "off");
}

#[tokio::test]
async fn read_only_transaction_begun_through_the_extended_protocol_stays_on_one_replica() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, PATIENT_LAG_BUDGET);
    let client = proxy.connect("app2", "app2").await;
    let port = client
        .prepare("SELECT inet_server_port()::int4")
        .await
        .expect("prepare");
    for _ in 0..3 {
        // Parse/Bind/Execute/Sync of BEGIN READ ONLY: the batch itself picks the replica.
        client.execute("BEGIN READ ONLY", &[]).await.expect("begin");
        let first: i32 = client.query_one(&port, &[]).await.expect("read").get(0);
        let second: i32 = client.query_one(&port, &[]).await.expect("read").get(0);
        client.execute("COMMIT", &[]).await.expect("commit");
        assert!(
            replica_ports(cluster).contains(&(first as u16)),
            "ran on {first}"
        );
        assert_eq!(first, second, "the transaction moved between servers");
    }
    client.execute("BEGIN", &[]).await.expect("begin");
    let in_tx: i32 = client.query_one(&port, &[]).await.expect("read").get(0);
    client.execute("COMMIT", &[]).await.expect("commit");
    assert_eq!(
        in_tx as u16,
        leader_port(cluster),
        "a read-write transaction runs on the leader"
    );
}
