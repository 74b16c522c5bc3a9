//! Client libraries through pgrelay: tokio-postgres (extended protocol, binary parameters,
//! pipelining, cancel), pgbench in every query mode, and rows far larger than a socket buffer.

mod support;

use std::time::{Duration, Instant};

use support::{Cluster, Proxy};

#[tokio::test]
async fn extended_protocol_with_binary_parameters() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let client = proxy.connect("app", "app").await;
    let row = client
        .query_one(
            "SELECT $1::int8 + 1, $2::text || '!', $3::bytea, $4::float8 * 2, $5::bool, $6::int4[]",
            &[
                &41i64,
                &"hi",
                &vec![0u8, 1, 255],
                &1.25f64,
                &true,
                &vec![1i32, 2, 3],
            ],
        )
        .await
        .expect("query");
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert_eq!(row.get::<_, Vec<u8>>(2), vec![0u8, 1, 255]);
    assert_eq!(row.get::<_, f64>(3), 2.5);
    assert!(row.get::<_, bool>(4));
    assert_eq!(row.get::<_, Vec<i32>>(5), vec![1, 2, 3]);
    let null: Option<String> = client
        .query_one("SELECT NULL::text", &[])
        .await
        .expect("null")
        .get(0);
    assert_eq!(null, None);
}

#[tokio::test]
async fn prepared_statement_reused_many_times() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let client = proxy.connect("app", "app").await;
    let stmt = client
        .prepare("SELECT $1::int4 * 3")
        .await
        .expect("prepare");
    for i in 0..200i32 {
        let v: i32 = client
            .query_one(&stmt, &[&i])
            .await
            .expect("execute")
            .get(0);
        assert_eq!(v, i * 3);
    }
}

#[tokio::test]
async fn pipelined_queries_answer_in_order() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let client = proxy.connect("app", "app").await;
    let stmt = client
        .prepare("SELECT $1::int4, pg_sleep(0.001)::text")
        .await
        .expect("prepare");
    let futures: Vec<_> = (0..50i32)
        .map(|i| {
            let client = &client;
            let stmt = &stmt;
            async move {
                client
                    .query_one(stmt, &[&i])
                    .await
                    .map(|r| r.get::<_, i32>(0))
            }
        })
        .collect();
    let results = futures_join_all(futures).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.expect("pipelined query"), i as i32);
    }
}

/// Polls every future in one task, so tokio-postgres pipelines their messages.
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, f) in set.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[i] = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("completed")).collect()
}

/// tokio-postgres returns from `prepare` before the ReadyForQuery, so the next request
/// (here a COPY) reaches pgrelay while it still holds a write's ReadyForQuery for the cache
/// invalidation (the table has a cache rule, so its writes are invalidated). The answer to
/// that request must not overtake the held ReadyForQuery: the client would file it under the
/// previous request and wait forever.
#[tokio::test]
async fn request_sent_before_a_writes_ready_for_query_is_answered_in_order() {
    let cluster = Cluster::shared();
    cluster
        .leader
        .psql("CREATE TABLE IF NOT EXISTS cl_pipelined (id int); GRANT ALL ON cl_pipelined TO app");
    let proxy = Proxy::start(cluster, "[[cache.rules]]\ntables = [\"cl_pipelined\"]");
    let client = proxy.connect("app", "app").await;
    for round in 0..100i32 {
        let step = async {
            client
                .execute("INSERT INTO cl_pipelined VALUES ($1)", &[&round])
                .await
                .expect("insert");
            let sink = client
                .copy_in("COPY cl_pipelined FROM STDIN")
                .await
                .expect("copy in");
            use futures_util::SinkExt;
            let mut sink = Box::pin(sink);
            sink.send(bytes::Bytes::from(format!("{}\n", -round)))
                .await
                .expect("copy data");
            sink.as_mut().finish().await.expect("copy done")
        };
        let copied = tokio::time::timeout(Duration::from_secs(10), step)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the client never got its answer"));
        assert_eq!(copied, 1, "round {round}");
    }
    assert_eq!(
        cluster
            .leader
            .psql("SELECT count(*), sum(id) FROM cl_pipelined"),
        "200|0"
    );
}

#[tokio::test]
async fn error_in_extended_batch_then_next_query_works() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let client = proxy.connect("app", "app").await;
    let err = client
        .query_one("SELECT 1/$1::int", &[&0i32])
        .await
        .expect_err("division by zero");
    assert_eq!(err.code().map(|c| c.code()), Some("22012"));
    let v: i32 = client
        .query_one("SELECT 5", &[])
        .await
        .expect("after error")
        .get(0);
    assert_eq!(v, 5);
}

#[tokio::test]
async fn cancel_stops_a_long_query_within_a_second() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let client = proxy.connect("app", "app").await;
    let token = client.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let err = client
        .simple_query("SELECT pg_sleep(30)")
        .await
        .expect_err("cancelled");
    canceller.await.expect("join").expect("cancel request sent");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"));
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "cancel took {:?}",
        started.elapsed()
    );
    let v: i32 = client
        .query_one("SELECT 9", &[])
        .await
        .expect("after cancel")
        .get(0);
    assert_eq!(v, 9);
}

#[tokio::test]
async fn hundred_megabyte_field_passes_both_ways() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let client = proxy.connect("app", "app").await;
    let big: String = "x".repeat(100 * 1024 * 1024 + 7);
    let row = client
        .query_one("SELECT length($1::text), md5($1::text)", &[&big])
        .await
        .expect("large parameter");
    assert_eq!(row.get::<_, i32>(0), big.len() as i32);
    let sent_md5: String = row.get(1);
    let row = client
        .query_one("SELECT repeat('y', 100 * 1024 * 1024 + 3)", &[])
        .await
        .expect("large result");
    let back: String = row.get(0);
    assert_eq!(back.len(), 100 * 1024 * 1024 + 3);
    assert!(back.bytes().all(|b| b == b'y'));
    assert_eq!(sent_md5.len(), 32);
}

#[test]
fn pgbench_every_query_mode_runs_without_errors() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, "");
    support::pgbench::pgbench_init(cluster.leader.port);
    for mode in ["simple", "extended", "prepared"] {
        support::pgbench::pgbench_runs_cleanly(
            proxy.port(),
            &["-M", mode, "-c", "8", "-j", "2", "-T", "5", "-n"],
            100,
        );
    }
    drop(proxy);
    // `workers = 1` runs pgrelay on a single-threaded scheduler: the same work, as cleanly.
    let single = Proxy::start_with_env(cluster, "", &[("PGRELAY_SERVER__WORKERS", "1")]);
    for mode in ["simple", "prepared"] {
        support::pgbench::pgbench_runs_cleanly(
            single.port(),
            &["-M", mode, "-c", "8", "-j", "2", "-T", "3", "-n"],
            100,
        );
    }
}
