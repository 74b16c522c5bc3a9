//! Cache-aside through the real pgrelay binary, in front of real PostgreSQL servers and a real
//! redis-server: repeated reads are answered without reaching PostgreSQL, byte for byte as the
//! server answered them; a write through one pgrelay is seen at once through another; a lagging
//! replica never fills the cache; users and search paths never share entries; Redis failing or
//! freezing costs no client an error; the in-memory store keeps to its budget.
//!
//! Every test names its own `ch_` tables, so tests sharing the cluster (and its Redis) never
//! read or invalidate each other's entries; each test has its own pgrelay, so metrics are its own.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{wait_until, Cluster, Proxy};
use tokio_postgres::SimpleQueryMessage;

/// Bound on waiting for something pgrelay does in the background (a fill landing, the breaker
/// closing again, the topology catching up).
const PATIENCE: Duration = Duration::from_secs(20);

/// A cache call budget far above any Redis round trip on a loaded test machine: tests that count
/// hits exactly must not see a lookup abandoned at the default 20 ms and turned into a miss.
const GENEROUS_TIMEOUT: &str = "2s";

// ---------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------

/// Creates the shared cluster's tables, once per test process (tests run in parallel threads).
fn setup_shared_tables(cluster: &Cluster) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        cluster.leader.psql(
            "CREATE TABLE ch_hot (id int PRIMARY KEY, name text);
             INSERT INTO ch_hot SELECT i, 'name-' || i FROM generate_series(1, 20) i;
             CREATE TABLE ch_mixed (
               id int PRIMARY KEY, small smallint, big bigint, ratio float8, amount numeric,
               label text, flag bool, missing text, at timestamptz, doc jsonb, nums int[],
               raw bytea);
             INSERT INTO ch_mixed VALUES
               (1, NULL, 9007199254740993, 3.25, 12345.678901, 'grüße, \"quoted\"', true, NULL,
                '2024-02-29 13:14:15.123456+00', '{\"k\": [1, null, \"x\"]}', '{1,NULL,3}',
                '\\xdeadbeef00ff'),
               (2, -7, NULL, NULL, NULL, '', NULL, NULL, NULL, NULL, '{}', ''::bytea);
             CREATE TABLE ch_big AS
               SELECT i AS id, 'row-' || lpad(i::text, 5, '0') AS label, (i * 1.5)::numeric AS amount,
                      CASE WHEN i % 7 = 0 THEN NULL ELSE i % 2 = 0 END AS even
               FROM generate_series(1, 10000) i;
             ALTER TABLE ch_big ADD PRIMARY KEY (id);
             CREATE TABLE ch_counter (id int PRIMARY KEY, v int);
             INSERT INTO ch_counter VALUES (1, -1);
             CREATE TABLE ch_items (id int PRIMARY KEY, body text);
             INSERT INTO ch_items SELECT i, repeat(md5(i::text), 32) FROM generate_series(0, 499) i;
             CREATE SCHEMA ch_a;
             CREATE SCHEMA ch_b;
             CREATE TABLE ch_a.ch_t (v text);
             CREATE TABLE ch_b.ch_t (v text);
             INSERT INTO ch_a.ch_t VALUES ('a');
             INSERT INTO ch_b.ch_t VALUES ('b');
             GRANT USAGE ON SCHEMA ch_a, ch_b TO app, app2;
             GRANT SELECT ON ALL TABLES IN SCHEMA ch_a, ch_b TO app, app2;
             CREATE TABLE ch_owned (owner text, v text);
             INSERT INTO ch_owned VALUES ('app', 'app-1'), ('app', 'app-2'), ('app2', 'app2-1');
             ALTER TABLE ch_owned ENABLE ROW LEVEL SECURITY;
             CREATE POLICY ch_own_rows ON ch_owned USING (owner = current_user);
             GRANT ALL ON ch_hot, ch_mixed, ch_big, ch_counter, ch_items TO app, app2, trust_user;
             GRANT SELECT ON ch_owned TO app, app2;",
        );
        cluster.wait_for_replay();
    });
}

/// `[cache]` with `redis_url` (or the in-memory store when `None`), `cache_keys` added to it,
/// and one `[[cache.rules]]` entry selecting `tables`.
fn cache_toml(redis_url: Option<&str>, cache_keys: &str, tables: &[&str]) -> String {
    let mut toml = String::from("[cache]\n");
    if let Some(url) = redis_url {
        toml.push_str(&format!("redis_url = \"{url}\"\n"));
    }
    toml.push_str(cache_keys);
    let quoted: Vec<String> = tables.iter().map(|t| format!("\"{t}\"")).collect();
    toml.push_str(&format!(
        "\n[[cache.rules]]\ntables = [{}]\n",
        quoted.join(", ")
    ));
    toml
}

/// The shared cluster's Redis, a generous call timeout, and a rule for `tables`.
fn shared_redis_cache(cluster: &Cluster, tables: &[&str]) -> String {
    cache_toml(
        Some(&cluster.redis_url()),
        &format!("timeout = \"{GENEROUS_TIMEOUT}\"\n"),
        tables,
    )
}

// ---------------------------------------------------------------------------------------------
// Observing pgrelay and the servers
// ---------------------------------------------------------------------------------------------

/// Sum of the series of metric `name` whose labels include every `labels` pair, in the
/// Prometheus text of `/metrics`.
fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = proxy.metrics();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = series_name == name
                && labels.iter().all(|(k, v)| {
                    let pair = format!("{k}=\"{v}\"");
                    series_labels.split(',').any(|p| p == pair)
                });
            if wanted {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

fn hits(proxy: &Proxy) -> f64 {
    metric(proxy, "pgrelay_cache_hits_total", &[])
}

fn fills(proxy: &Proxy) -> f64 {
    metric(proxy, "pgrelay_cache_fills_total", &[])
}

fn skipped(proxy: &Proxy, reason: &str) -> f64 {
    metric(
        proxy,
        "pgrelay_cache_fill_skipped_total",
        &[("reason", reason)],
    )
}

/// Units answered from the cache, as the routing metric counts them.
fn cache_routed(proxy: &Proxy) -> f64 {
    metric(
        proxy,
        "pgrelay_queries_total",
        &[("route", "cache"), ("reason", "hit")],
    )
}

/// Waits (≤ `PATIENCE`) until the counter reaches `at_least`: fills are stored in the
/// background after the client already has its answer.
fn wait_for_metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)], at_least: f64) {
    let last = std::cell::Cell::new(0.0);
    wait_until(
        &format!("{name}{labels:?} to reach {at_least}"),
        PATIENCE,
        || {
            last.set(metric(proxy, name, labels));
            last.get() >= at_least
        },
        || {
            format!(
                "last value {}\n{}\n{}",
                last.get(),
                cache_metrics(proxy),
                tail_of(proxy)
            )
        },
    );
}

/// The cache's series of `/metrics`, for failure messages.
fn cache_metrics(proxy: &Proxy) -> String {
    let text = proxy.metrics();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("pgrelay_cache") || l.starts_with("pgrelay_queries_total"))
        .collect();
    lines.join("\n")
}

fn tail_of(proxy: &Proxy) -> String {
    let log = proxy.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Every row of a simple query, each column as text (NULL as `None`).
async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

/// The first column of the single row of `sql`.
async fn value(client: &tokio_postgres::Client, sql: &str) -> String {
    let all = rows(client, sql).await;
    assert_eq!(all.len(), 1, "{sql}: expected one row, got {all:?}");
    all[0][0].clone().unwrap_or_else(|| panic!("{sql}: NULL"))
}

/// How many times the servers executed statements whose (normalized) text is LIKE `pattern`,
/// summed over the leader and the replicas (pg_stat_statements counts per server).
fn server_calls(cluster: &Cluster, pattern: &str) -> i64 {
    cluster
        .nodes()
        .iter()
        .map(|node| {
            let sql = format!(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '{pattern}'"
            );
            let out = node.psql(&sql);
            out.parse::<i64>()
                .unwrap_or_else(|_| panic!("{sql} on {}: {out:?}", node.name))
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// A raw protocol client: what the client receives, byte for byte
// ---------------------------------------------------------------------------------------------

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstring(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.push(0);
}

/// The backend messages in `bytes`, as (tag, body).
fn messages(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = i32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push((bytes[at], &bytes[at + 5..at + 1 + len]));
        at += 1 + len;
    }
    assert_eq!(at, bytes.len(), "trailing partial message");
    out
}

struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Logs in through pgrelay with a StartupMessage and reads up to the first ReadyForQuery.
    fn connect(port: u16, user: &str, database: &str) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to pgrelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let mut client = RawClient { stream };
        let mut body = 196_608i32.to_be_bytes().to_vec();
        for (key, value) in [("user", user), ("database", database)] {
            cstring(&mut body, key);
            cstring(&mut body, value);
        }
        body.push(0);
        let mut startup = (body.len() as i32 + 4).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        client.stream.write_all(&startup).expect("send startup");
        let login = client.read_until_ready();
        for (tag, body) in messages(&login) {
            match tag {
                b'R' => assert_eq!(body, [0, 0, 0, 0], "expected AuthenticationOk (trust)"),
                b'E' => panic!("login refused: {}", String::from_utf8_lossy(body)),
                _ => {}
            }
        }
        client
    }

    /// Every byte up to and including the next ReadyForQuery.
    fn read_until_ready(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut header = [0u8; 5];
            self.stream
                .read_exact(&mut header)
                .expect("read message header");
            let len = i32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
            let start = out.len();
            out.extend_from_slice(&header);
            out.resize(start + 1 + len, 0);
            self.stream
                .read_exact(&mut out[start + 5..])
                .expect("read message body");
            if header[0] == b'Z' {
                return out;
            }
        }
    }

    /// A simple Query; everything the client receives for it.
    fn query(&mut self, sql: &str) -> Vec<u8> {
        let mut body = Vec::new();
        cstring(&mut body, sql);
        self.stream
            .write_all(&frame(b'Q', &body))
            .expect("send Query");
        self.read_until_ready()
    }

    /// Parse of a named statement with one int4 parameter, and Sync; the reply.
    fn prepare(&mut self, name: &str, sql: &str) -> Vec<u8> {
        let mut parse = Vec::new();
        cstring(&mut parse, name);
        cstring(&mut parse, sql);
        parse.extend_from_slice(&1i16.to_be_bytes());
        parse.extend_from_slice(&23i32.to_be_bytes()); // int4
        let mut batch = frame(b'P', &parse);
        batch.extend(frame(b'S', &[]));
        self.stream.write_all(&batch).expect("send Parse");
        self.read_until_ready()
    }

    /// With `statement` None: Parse (unnamed, `SELECT * FROM ch_mixed WHERE id = $1`), else
    /// nothing (the statement is prepared already); then Bind with `param` as text and every
    /// result column in binary, Describe portal, Execute (all rows), Sync. Everything the client
    /// receives for the batch.
    fn bind_execute_binary(&mut self, statement: Option<&str>, param: &str) -> Vec<u8> {
        let mut batch = Vec::new();
        if statement.is_none() {
            let mut parse = Vec::new();
            cstring(&mut parse, "");
            cstring(&mut parse, "SELECT * FROM ch_mixed WHERE id = $1");
            parse.extend_from_slice(&1i16.to_be_bytes());
            parse.extend_from_slice(&23i32.to_be_bytes()); // int4
            batch.extend(frame(b'P', &parse));
        }
        let mut bind = Vec::new();
        cstring(&mut bind, "");
        cstring(&mut bind, statement.unwrap_or(""));
        bind.extend_from_slice(&1i16.to_be_bytes()); // one parameter format code...
        bind.extend_from_slice(&0i16.to_be_bytes()); // ...text
        bind.extend_from_slice(&1i16.to_be_bytes()); // one parameter
        bind.extend_from_slice(&(param.len() as i32).to_be_bytes());
        bind.extend_from_slice(param.as_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes()); // one result format code...
        bind.extend_from_slice(&1i16.to_be_bytes()); // ...binary, for every column
        let mut describe = vec![b'P'];
        cstring(&mut describe, "");
        let mut execute = Vec::new();
        cstring(&mut execute, "");
        execute.extend_from_slice(&0i32.to_be_bytes());
        batch.extend(frame(b'B', &bind));
        batch.extend(frame(b'D', &describe));
        batch.extend(frame(b'E', &execute));
        batch.extend(frame(b'S', &[]));
        self.stream.write_all(&batch).expect("send batch");
        self.read_until_ready()
    }
}

impl Drop for RawClient {
    fn drop(&mut self) {
        let _ = self.stream.write_all(&frame(b'X', &[]));
    }
}

/// Asserts two captured responses are equal, reporting where they first differ (not 500 kB of
/// bytes).
fn assert_same_bytes(what: &str, miss: &[u8], hit: &[u8]) {
    if miss == hit {
        return;
    }
    let at = miss
        .iter()
        .zip(hit)
        .position(|(a, b)| a != b)
        .unwrap_or(miss.len().min(hit.len()));
    let window = |b: &[u8]| b[at.saturating_sub(16)..(at + 48).min(b.len())].to_vec();
    panic!(
        "{what}: the cached reply differs from the server's at byte {at} (lengths {} vs {})\n\
         server: {:?}\ncached: {:?}",
        miss.len(),
        hit.len(),
        String::from_utf8_lossy(&window(miss)),
        String::from_utf8_lossy(&window(hit)),
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn repeated_read_is_served_from_cache_without_reaching_postgres() {
    let cluster = Cluster::shared();
    setup_shared_tables(cluster);
    let proxy = Proxy::start(cluster, &shared_redis_cache(cluster, &["ch_hot"]));
    let client = proxy.connect("app", "app").await;
    let sql = "SELECT id, name FROM ch_hot WHERE id = 7";
    let executed = || server_calls(cluster, "SELECT id, name FROM ch_hot WHERE%");
    let executed_before = executed();

    let expected = vec![vec![Some("7".to_owned()), Some("name-7".to_owned())]];
    assert_eq!(rows(&client, sql).await, expected, "first (uncached) read");
    // The fill is stored after the client has its answer; repeat only once it is there.
    wait_for_metric(&proxy, "pgrelay_cache_fills_total", &[], 1.0);
    let (hits_before, routed_before) = (hits(&proxy), cache_routed(&proxy));

    const REPEATS: usize = 9;
    for round in 0..REPEATS {
        assert_eq!(rows(&client, sql).await, expected, "repeat {round}");
    }
    assert_eq!(
        hits(&proxy) - hits_before,
        REPEATS as f64,
        "every repeat should be a cache hit"
    );
    assert_eq!(
        cache_routed(&proxy) - routed_before,
        REPEATS as f64,
        "pgrelay_queries_total{{route=\"cache\",reason=\"hit\"}}"
    );
    assert_eq!(
        executed() - executed_before,
        1,
        "PostgreSQL ran the statement more than once for {} reads",
        REPEATS + 1
    );
}

/// Sends `request` twice through `client`: the first must be a miss answered by PostgreSQL,
/// the second (once the fill has landed) a hit, and the client must not be able to tell them
/// apart. Returns the reply.
fn miss_then_hit(
    proxy: &Proxy,
    client: &mut RawClient,
    what: &str,
    request: impl Fn(&mut RawClient) -> Vec<u8>,
) -> Vec<u8> {
    let (hits_before, fills_before) = (hits(proxy), fills(proxy));
    let misses_before = metric(proxy, "pgrelay_cache_misses_total", &[]);
    let miss = request(client);
    assert_eq!(
        metric(proxy, "pgrelay_cache_misses_total", &[]),
        misses_before + 1.0,
        "{what}: pgrelay did not look this request up in the cache\n{}",
        cache_metrics(proxy)
    );
    wait_for_metric(proxy, "pgrelay_cache_fills_total", &[], fills_before + 1.0);
    assert_eq!(hits(proxy), hits_before, "{what}: the first run was a hit");
    let hit = request(client);
    assert_eq!(
        hits(proxy),
        hits_before + 1.0,
        "{what}: the second run was not a hit"
    );
    assert_same_bytes(what, &miss, &hit);
    miss
}

#[test]
fn cached_reply_is_byte_identical() {
    let cluster = Cluster::shared();
    setup_shared_tables(cluster);
    let proxy = Proxy::start(
        cluster,
        &shared_redis_cache(cluster, &["ch_mixed", "ch_big"]),
    );
    let mut client = RawClient::connect(proxy.port(), "trust_user", "postgres");

    let nulls = miss_then_hit(&proxy, &mut client, "NULLs and mixed types", |c| {
        c.query("SELECT * FROM ch_mixed ORDER BY id")
    });
    let parsed = messages(&nulls);
    let data_rows: Vec<&[u8]> = parsed
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| *b)
        .collect();
    assert_eq!(data_rows.len(), 2, "{parsed:?}");
    assert!(
        data_rows[0].windows(4).any(|w| w == (-1i32).to_be_bytes()),
        "the first row should carry NULL fields (length -1)"
    );

    let big = miss_then_hit(&proxy, &mut client, "10,000 rows", |c| {
        c.query("SELECT * FROM ch_big ORDER BY id")
    });
    let parsed = messages(&big);
    assert_eq!(parsed.iter().filter(|(t, _)| *t == b'D').count(), 10_000);
    assert_eq!(
        parsed.iter().rev().nth(1).map(|(t, b)| (*t, *b)),
        Some((b'C', &b"SELECT 10000\0"[..]))
    );

    // A statement prepared by name, then Bind/Describe/Execute/Sync with binary results.
    let prepared = client.prepare("ch_mixed_by_id", "SELECT * FROM ch_mixed WHERE id = $1");
    assert_eq!(messages(&prepared)[0].0, b'1', "ParseComplete");
    let named = miss_then_hit(
        &proxy,
        &mut client,
        "named statement, binary results",
        |c| c.bind_execute_binary(Some("ch_mixed_by_id"), "1"),
    );
    assert_binary_row(&named, b"2TDCZ");

    // Parse (unnamed) in the same batch, as drivers send a one-off parameterized query.
    let unnamed = miss_then_hit(
        &proxy,
        &mut client,
        "unnamed statement, binary results",
        |c| c.bind_execute_binary(None, "1"),
    );
    assert_binary_row(&unnamed, b"12TDCZ");
}

/// `response` has exactly the messages `tags`, and its RowDescription puts every column in
/// binary format.
fn assert_binary_row(response: &[u8], tags: &[u8]) {
    let parsed = messages(response);
    let got: Vec<u8> = parsed.iter().map(|(t, _)| *t).collect();
    assert_eq!(got, tags, "messages of the reply");
    let (_, description) = parsed
        .iter()
        .find(|(t, _)| *t == b'T')
        .expect("RowDescription");
    // Field count, then per field: name\0 and 18 bytes ending in its format code.
    let fields = i16::from_be_bytes([description[0], description[1]]);
    let mut at = 2;
    for _ in 0..fields {
        at += description[at..].iter().position(|b| *b == 0).unwrap() + 1 + 18;
        assert_eq!(
            &description[at - 2..at],
            &[0, 1],
            "a column is not in binary format"
        );
    }
}

#[tokio::test]
async fn write_through_one_pgrelay_is_seen_through_another_at_once() {
    let cluster = Cluster::shared();
    setup_shared_tables(cluster);
    let config = shared_redis_cache(cluster, &["ch_counter"]);
    let proxy_a = Proxy::start(cluster, &config);
    let proxy_b = Proxy::start(cluster, &config);
    let writer = proxy_a.connect("app", "app").await;
    let reader = proxy_b.connect("app2", "app2").await;
    // B's misses go to the leader, so every wrong value B returns can only come from the
    // cache (a replica that has not replayed the UPDATE yet would be replica lag, not this).
    let read = "/* pgrelay: leader */ SELECT v FROM ch_counter WHERE id = 1";
    let hits_before = hits(&proxy_b);
    let invalidations_before = metric(&proxy_a, "pgrelay_cache_invalidations_total", &[]);

    const ITERATIONS: i32 = 1000;
    let mut stale = Vec::new();
    for i in 0..ITERATIONS {
        writer
            .batch_execute(&format!("UPDATE ch_counter SET v = {i} WHERE id = 1"))
            .await
            .expect("update through A");
        for attempt in 0..2 {
            let seen = value(&reader, read).await;
            if seen != i.to_string() {
                stale.push(format!("iteration {i}, read {attempt}: {seen}"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{} stale reads through B, first: {:?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
    assert_eq!(
        metric(&proxy_a, "pgrelay_cache_invalidations_total", &[]) - invalidations_before,
        f64::from(ITERATIONS),
        "every UPDATE through A should have reached Redis"
    );
    // The cache was really in use between the writes: B's second read of a value is a hit
    // whenever its first read's fill has landed, which it nearly always has.
    let b_hits = hits(&proxy_b) - hits_before;
    eprintln!(
        "cache: {ITERATIONS} writes through A; {b_hits} of the repeated reads through B were hits"
    );
    assert!(
        b_hits >= f64::from(ITERATIONS) * 0.9,
        "only {b_hits} of {ITERATIONS} repeated reads through B were cache hits"
    );
}

#[tokio::test]
async fn stale_replica_never_fills_the_cache() {
    let cluster = Cluster::start();
    cluster.leader.psql(
        "CREATE TABLE ch_stale (id int PRIMARY KEY, v text);
         INSERT INTO ch_stale VALUES (1, 'old');
         GRANT ALL ON ch_stale TO app;",
    );
    cluster.wait_for_replay();
    let proxy = Proxy::start(
        &cluster,
        &format!(
            "[cluster]\nconsistency = \"eventual\"\nmax_replica_lag = \"1GB\"\n{}",
            cache_toml(
                Some(&cluster.redis_url()),
                &format!("timeout = \"{GENEROUS_TIMEOUT}\"\n"),
                &["ch_stale"],
            )
        ),
    );
    let client = proxy.connect("app", "app").await;
    let read = "SELECT v FROM ch_stale WHERE id = 1";

    // Cached before the write: the write must make this entry unreachable.
    assert_eq!(value(&client, read).await, "old");
    wait_for_metric(&proxy, "pgrelay_cache_fills_total", &[], 1.0);
    let hits_before = hits(&proxy);
    assert_eq!(value(&client, read).await, "old");
    assert_eq!(
        hits(&proxy),
        hits_before + 1.0,
        "warm-up read was not a hit"
    );

    for replica in &cluster.replicas {
        replica.psql("SELECT pg_wal_replay_pause()");
        replica.wait_for("SELECT pg_get_wal_replay_pause_state()", "paused", PATIENCE);
    }
    client
        .batch_execute("UPDATE ch_stale SET v = 'new' WHERE id = 1")
        .await
        .expect("update");
    assert_eq!(cluster.leader.psql("SELECT v FROM ch_stale"), "new");

    let fills_before = fills(&proxy);
    let lag_skips_before = skipped(&proxy, "replica_lag");
    const STALE_READS: usize = 4;
    for round in 0..STALE_READS {
        assert_eq!(
            value(&client, read).await,
            "old",
            "read {round} with replay paused should be answered by a replica, which has the old row"
        );
    }
    wait_for_metric(
        &proxy,
        "pgrelay_cache_fill_skipped_total",
        &[("reason", "replica_lag")],
        lag_skips_before + STALE_READS as f64,
    );
    assert_eq!(
        fills(&proxy),
        fills_before,
        "a lagging replica filled the cache"
    );

    for replica in &cluster.replicas {
        replica.psql("SELECT pg_wal_replay_resume()");
    }
    cluster.wait_for_replay();
    // Straight away, not eventually: had a stale answer been stored, it would be served now.
    assert_eq!(
        value(&client, read).await,
        "new",
        "the stale row was cached"
    );

    // Once pgrelay sees the replicas caught up, the new row is what gets cached and served.
    let deadline = Instant::now() + PATIENCE;
    while fills(&proxy) == fills_before {
        assert!(
            Instant::now() < deadline,
            "the new row was never cached\n{}\n{}",
            cache_metrics(&proxy),
            tail_of(&proxy)
        );
        assert_eq!(value(&client, read).await, "new");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits_before = hits(&proxy);
    for _ in 0..3 {
        assert_eq!(value(&client, read).await, "new");
    }
    assert!(
        hits(&proxy) > hits_before,
        "the new row was not served from the cache"
    );
}

#[tokio::test]
async fn users_and_search_paths_never_share_entries() {
    let cluster = Cluster::shared();
    setup_shared_tables(cluster);
    let proxy = Proxy::start(cluster, &shared_redis_cache(cluster, &["ch_t", "ch_owned"]));

    // Same user, same SQL, different search_path.
    let in_a = proxy.connect("app", "app").await;
    let in_b = proxy.connect("app", "app").await;
    in_a.batch_execute("SET search_path = ch_a")
        .await
        .expect("set a");
    in_b.batch_execute("SET search_path = ch_b")
        .await
        .expect("set b");
    let read = "SELECT v FROM ch_t";
    assert_eq!(value(&in_a, read).await, "a");
    assert_eq!(value(&in_b, read).await, "b");
    wait_for_metric(&proxy, "pgrelay_cache_fills_total", &[], 2.0);
    let hits_before = hits(&proxy);
    for round in 0..5 {
        assert_eq!(
            value(&in_a, read).await,
            "a",
            "search_path ch_a, round {round}"
        );
        assert_eq!(
            value(&in_b, read).await,
            "b",
            "search_path ch_b, round {round}"
        );
    }
    assert_eq!(
        hits(&proxy) - hits_before,
        10.0,
        "repeats were not served from the cache"
    );

    // Same SQL, different users, row-level security deciding what each may see.
    let app = proxy.connect("app", "app").await;
    let app2 = proxy.connect("app2", "app2").await;
    let read = "SELECT v FROM ch_owned ORDER BY v";
    let own = |vs: &[&str]| -> Vec<Vec<Option<String>>> {
        vs.iter().map(|v| vec![Some((*v).to_owned())]).collect()
    };
    let fills_before = fills(&proxy);
    assert_eq!(rows(&app, read).await, own(&["app-1", "app-2"]));
    assert_eq!(rows(&app2, read).await, own(&["app2-1"]));
    wait_for_metric(&proxy, "pgrelay_cache_fills_total", &[], fills_before + 2.0);
    let hits_before = hits(&proxy);
    for round in 0..5 {
        assert_eq!(
            rows(&app, read).await,
            own(&["app-1", "app-2"]),
            "app, round {round}"
        );
        assert_eq!(
            rows(&app2, read).await,
            own(&["app2-1"]),
            "app2, round {round}"
        );
    }
    assert_eq!(
        hits(&proxy) - hits_before,
        10.0,
        "repeats were not served from the cache"
    );
}

/// Cacheable reads from several clients until `stop`, counting answers and errors.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(proxy: &Proxy, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let client = proxy.connect("app", "app").await;
            let (stop, answered, errors) = (stop.clone(), answered.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut k = c;
                while !stop.load(Ordering::Relaxed) {
                    let id = k % 20 + 1;
                    k += 1;
                    let sql = format!("SELECT v FROM ch_load WHERE id = {id}");
                    match client.simple_query(&sql).await {
                        Ok(messages) => {
                            let v = messages.iter().find_map(|m| match m {
                                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                                _ => None,
                            });
                            if v != Some(format!("v{id}")) {
                                errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("{sql}: wrong answer {v:?}"));
                            }
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.lock().unwrap().push(format!("{sql}: {e}")),
                    }
                }
            }));
        }
        Load {
            stop,
            answered,
            errors,
            tasks,
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    fn assert_no_errors(&self, phase: &str) {
        let errors = self.errors.lock().unwrap();
        assert!(
            errors.is_empty(),
            "{phase}: {} client errors, first: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
    }

    /// Lets the load run for `duration` and checks it kept being answered.
    async fn run_for(&self, duration: Duration, phase: &str) {
        let before = self.answered();
        tokio::time::sleep(duration).await;
        self.assert_no_errors(phase);
        assert!(
            self.answered() > before + 10,
            "{phase}: only {} reads answered in {duration:?}",
            self.answered() - before
        );
    }

    async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            task.await.expect("load task panicked");
        }
        self.assert_no_errors("end");
    }
}

/// Waits (≤ `PATIENCE`) until the cache answers reads again by itself.
async fn wait_for_hits_to_resume(proxy: &Proxy, what: &str) {
    let before = hits(proxy);
    let deadline = Instant::now() + PATIENCE;
    while hits(proxy) < before + 20.0 {
        assert!(
            Instant::now() < deadline,
            "{what}: cache hits did not resume within {PATIENCE:?}\n{}",
            tail_of(proxy)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_or_frozen_queries_still_succeed() {
    let cluster = tokio::task::block_in_place(Cluster::start);
    cluster.leader.psql(
        "CREATE TABLE ch_load (id int PRIMARY KEY, v text);
         INSERT INTO ch_load SELECT i, 'v' || i FROM generate_series(1, 20) i;
         GRANT SELECT ON ch_load TO app;",
    );
    cluster.wait_for_replay();
    let proxy = tokio::task::block_in_place(|| {
        Proxy::start(
            &cluster,
            &cache_toml(
                Some(&cluster.redis_url()),
                "timeout = \"50ms\"\nretry_after = \"1s\"\n",
                &["ch_load"],
            ),
        )
    });
    let load = Load::start(&proxy, 3).await;
    wait_for_hits_to_resume(&proxy, "warm-up").await;

    tokio::task::block_in_place(|| cluster.redis.stop());
    load.run_for(Duration::from_secs(2), "redis stopped").await;
    tokio::task::block_in_place(|| cluster.redis.start());
    wait_for_hits_to_resume(&proxy, "after redis restarted").await;
    load.run_for(Duration::from_millis(500), "redis back").await;

    let cache_errors_before = metric(&proxy, "pgrelay_cache_errors_total", &[]);
    let answered_before = load.answered();
    tokio::task::block_in_place(|| cluster.redis.pause());
    load.run_for(Duration::from_secs(3), "redis frozen").await;
    let cache_errors = metric(&proxy, "pgrelay_cache_errors_total", &[]) - cache_errors_before;
    let answered = load.answered() - answered_before;
    tokio::task::block_in_place(|| cluster.redis.resume());
    eprintln!("cache: redis frozen 3 s: {answered} reads answered, {cache_errors} cache errors");
    assert!(cache_errors > 0.0, "a frozen redis caused no cache errors");
    // With the breaker open, reads skip Redis instead of each waiting out a timeout.
    assert!(
        cache_errors * 4.0 < answered as f64,
        "{cache_errors} cache errors for {answered} reads: the breaker did not open"
    );
    assert!(
        proxy
            .log()
            .contains("cache store failing; queries bypass the cache"),
        "no warning about the bypassed cache\n{}",
        tail_of(&proxy)
    );
    wait_for_hits_to_resume(&proxy, "after redis thawed").await;
    load.finish().await;
}

#[tokio::test]
async fn memory_store_works_without_redis_and_respects_max_bytes() {
    let cluster = Cluster::shared();
    setup_shared_tables(cluster);
    const MAX_BYTES: f64 = 65_536.0;
    let proxy = Proxy::start(
        cluster,
        &cache_toml(
            None,
            "max_bytes = \"64kB\"\nmax_entry_bytes = \"16kB\"\n",
            &["ch_items"],
        ),
    );
    let client = proxy.connect("app", "app").await;
    let hits_before = hits(&proxy);
    const KEYS: i32 = 500;
    for i in 0..KEYS {
        let sql = format!("SELECT id, body FROM ch_items WHERE id = {i}");
        let fills_before = fills(&proxy);
        let first = rows(&client, &sql).await;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0][1].as_ref().map(String::len), Some(1024));
        wait_for_metric(&proxy, "pgrelay_cache_fills_total", &[], fills_before + 1.0);
        assert_eq!(rows(&client, &sql).await, first, "repeat of id {i}");
        let bytes = metric(&proxy, "pgrelay_cache_bytes", &[]);
        assert!(
            bytes <= MAX_BYTES,
            "pgrelay_cache_bytes = {bytes} after id {i}, over max_bytes"
        );
    }
    let repeat_hits = hits(&proxy) - hits_before;
    eprintln!(
        "cache: {repeat_hits} of {KEYS} repeats were hits; pgrelay_cache_bytes = {}",
        metric(&proxy, "pgrelay_cache_bytes", &[])
    );
    assert!(
        repeat_hits >= f64::from(KEYS) * 0.9,
        "only {repeat_hits} of {KEYS} repeats were hits"
    );
    let bytes = metric(&proxy, "pgrelay_cache_bytes", &[]);
    assert!(
        bytes > 0.0 && bytes <= MAX_BYTES,
        "pgrelay_cache_bytes = {bytes}"
    );

    // A result over max_entry_bytes is served, never stored: repeats keep missing.
    let (hits_before, fills_before) = (hits(&proxy), fills(&proxy));
    let misses_before = metric(&proxy, "pgrelay_cache_misses_total", &[]);
    let large = "SELECT id, body FROM ch_items WHERE id < 40 ORDER BY id";
    for _ in 0..3 {
        assert_eq!(rows(&client, large).await.len(), 40);
        // Give a (wrong) fill the time to land before the next lookup.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        metric(&proxy, "pgrelay_cache_misses_total", &[]) - misses_before,
        3.0,
        "each read of the large result should be a cache miss\n{}",
        cache_metrics(&proxy)
    );
    assert_eq!(
        hits(&proxy),
        hits_before,
        "a result over max_entry_bytes was cached"
    );
    assert_eq!(
        fills(&proxy),
        fills_before,
        "a result over max_entry_bytes was stored"
    );
}
