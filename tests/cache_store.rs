//! The cache mechanism against a real `redis-server` (and the in-memory store): what one
//! pgrelay stores another can read, writes make entries unreachable everywhere, a lagging
//! replica never fills, and a Redis that is down, restarted or frozen costs errors and
//! timeouts, never a hang, and is used again by itself.
//!
//! No test asserts a duration: "never hangs" is an outer bound that only a hang can reach, and
//! "the breaker keeps calls away from Redis" is checked by counting the round trips started.

// This binary needs only the harness's ports, waits and watchdog, not its proxy helpers.
#[allow(unused_imports)]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgrelay::cache::{
    cache_key, relation_names, AnsweredBy, BreakerState, Cache, CacheError, FillOutcome, KeyInput,
    Lookup, StoreKind, FAILURES_TO_OPEN,
};
use pgrelay::config::CacheConfig;
use pgrelay::metrics::Metrics;
use support::{free_port, send_signal, spawn_watchdog, tail, wait_until};

/// Bound on waits for something that must happen by itself (expiry, recovery).
const PATIENCE: Duration = Duration::from_secs(20);
/// Outer bound on a single cache call: only a hang can reach it (calls are bounded by
/// `cache.timeout`, far below).
const HANG: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(60);

/// A private redis-server in a temp dir on a free port; killed on drop, and by a watchdog if
/// the test process dies first.
struct TestRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    watchdog: Child,
}

const REDIS_CLEANUP: &str = r#"
pid=$(cat "$1/redis.pid" 2>/dev/null)
if [ -n "$pid" ] && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
  kill -KILL "$pid" 2>/dev/null
fi
rm -rf "$1"
"#;

impl TestRedis {
    fn start() -> TestRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let watchdog = spawn_watchdog(REDIS_CLEANUP, &[&dir.path().display().to_string()]);
        let mut redis = TestRedis {
            port: free_port(),
            dir,
            child: None,
            watchdog,
        };
        redis.restart();
        redis
    }

    /// Starts redis-server again on the same port (after `stop`), and waits for PONG.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        std::fs::write(self.dir.path().join("redis.pid"), child.id().to_string())
            .expect("write redis.pid");
        self.child = Some(child);
        wait_until(
            "redis-server to answer PING",
            PATIENCE,
            || self.try_query::<String>(&redis::cmd("PING")).is_ok(),
            || tail(&log, 20),
        );
    }

    /// Kills redis-server (SIGKILL, like a crash; works while it is paused).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: connections stay open, nothing answers.
    fn pause(&self) {
        send_signal(self.pid(), 19);
    }

    fn resume(&self) {
        send_signal(self.pid(), 18);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn try_query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        cmd.query(&mut conn)
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        self.try_query(cmd)
            .unwrap_or_else(|e| panic!("redis command {cmd:?} failed: {e}"))
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

fn config(redis_url: Option<String>) -> CacheConfig {
    CacheConfig {
        redis_url,
        // Generous, so a healthy Redis on a loaded 2-core test machine never times out; the
        // down and frozen cases do not depend on its size.
        timeout: Duration::from_secs(1),
        retry_after: Duration::from_millis(200),
        ..CacheConfig::default()
    }
}

/// Declares two tests running `behaviour(config)`: one on a private redis-server, one on the
/// in-memory store.
macro_rules! on_both_stores {
    ($behaviour:ident, $on_redis:ident, $in_memory:ident) => {
        #[tokio::test]
        async fn $on_redis() {
            let redis = TestRedis::start();
            $behaviour(config(Some(redis.url()))).await;
        }

        #[tokio::test]
        async fn $in_memory() {
            $behaviour(config(None)).await;
        }
    };
}

fn cache(config: &CacheConfig) -> Cache {
    Cache::from_config(config, &Metrics::new()).expect("cache config is usable")
}

fn read<'a>(user: &'a str, sql: &'a str, settings: &'a [(String, String)]) -> KeyInput<'a> {
    KeyInput {
        database: "shop",
        user,
        settings,
        sql,
        param_formats_values_result_formats: b"\0\0\0\x01\0\0\0\x0242\0\0",
    }
}

const SQL: &str = "SELECT name, price FROM products WHERE id = $1";

fn products() -> Vec<String> {
    vec!["products".to_owned()]
}

/// A response as the server would send it; `tag` makes each one distinct.
fn response(tag: &str) -> Bytes {
    Bytes::from(format!(
        "T\0\0\0\x1a\0\x01name\0D\0\0\0\x0f\0\x01\0\0\0\x05{tag}C\0\0\0\rSELECT 1\0"
    ))
}

/// Looks `input` up as a session does: by its key and the relation names of `tables`.
async fn look_up(cache: &Cache, input: &KeyInput<'_>, tables: &[String]) -> Lookup {
    let relations = relation_names(tables);
    bounded(
        "lookup",
        cache.lookup(input.database, cache_key(input), &relations),
    )
    .await
}

async fn bounded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {HANG:?}"))
}

/// Looks `input` up; on a miss with a ticket, fills it with `body` as if the leader answered.
async fn fill_from(
    cache: &Cache,
    input: &KeyInput<'_>,
    tables: &[String],
    answered_by: AnsweredBy,
    body: Bytes,
) -> FillOutcome {
    match look_up(cache, input, tables).await {
        Lookup::Miss(Some(fill)) => bounded("fill", cache.fill(fill, answered_by, body, TTL)).await,
        other => panic!("expected a miss with a fill ticket, got {other:?}"),
    }
}

/// Looks `input` up and stores `body` as the leader's answer; the fill must be accepted.
async fn stored(cache: &Cache, input: &KeyInput<'_>, tables: &[String], body: Bytes) {
    let outcome = fill_from(cache, input, tables, AnsweredBy::Leader, body).await;
    assert_eq!(outcome, FillOutcome::Stored);
}

/// Retries `check` every 50 ms until it holds; fails the test if it still does not after
/// `PATIENCE`.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn hit(cache: &Cache, input: &KeyInput<'_>, tables: &[String]) -> Option<Bytes> {
    match look_up(cache, input, tables).await {
        Lookup::Hit(bytes) => Some(bytes),
        Lookup::Miss(_) => None,
    }
}

on_both_stores!(
    round_trip_returns_the_stored_bytes,
    redis_round_trip_returns_the_stored_bytes,
    memory_round_trip_returns_the_stored_bytes
);

async fn round_trip_returns_the_stored_bytes(config: CacheConfig) {
    let cache = cache(&config);
    let expected_kind = match config.redis_url {
        Some(_) => StoreKind::Redis,
        None => StoreKind::Memory,
    };
    assert_eq!(cache.stats().await.store, expected_kind);
    let none = [];
    let input = read("app", SQL, &none);
    assert_eq!(hit(&cache, &input, &products()).await, None);
    let body = response("widget");
    stored(&cache, &input, &products(), body.clone()).await;
    assert_eq!(hit(&cache, &input, &products()).await, Some(body));
    let stats = cache.stats().await;
    assert_eq!((stats.hits, stats.misses, stats.fills), (1, 2, 1));
}

on_both_stores!(
    entries_expire_after_their_ttl,
    redis_entries_expire_after_their_ttl,
    memory_entries_expire_after_their_ttl
);

async fn entries_expire_after_their_ttl(config: CacheConfig) {
    let cache = cache(&config);
    let none = [];
    let input = read("app", SQL, &none);
    let Lookup::Miss(Some(fill)) = look_up(&cache, &input, &products()).await else {
        panic!("expected a miss with a ticket");
    };
    let outcome = cache
        .fill(
            fill,
            AnsweredBy::Leader,
            response("short-lived"),
            Duration::from_secs(1),
        )
        .await;
    assert_eq!(outcome, FillOutcome::Stored);
    assert!(
        hit(&cache, &input, &products()).await.is_some(),
        "just stored"
    );
    eventually("the entry to expire after its 1 s TTL", async || {
        hit(&cache, &input, &products()).await.is_none()
    })
    .await;
}

#[tokio::test]
async fn write_through_one_pgrelay_invalidates_what_another_cached() {
    let redis = TestRedis::start();
    let a = cache(&config(Some(redis.url())));
    let b = cache(&config(Some(redis.url())));
    let none = [];
    let input = read("app", SQL, &none);
    let before = response("old price");
    stored(&a, &input, &products(), before.clone()).await;
    assert_eq!(
        hit(&b, &input, &products()).await,
        Some(before),
        "B reads what A stored"
    );

    // B commits `UPDATE public.products …`; A reads `products`: the same table.
    let generation = a
        .generations("shop", &products())
        .await
        .expect("generations")
        .relations[0];
    b.invalidate("shop", &["public.products".to_owned()], Some(0x1000))
        .await
        .expect("invalidate");
    assert_eq!(
        a.generations("shop", &products())
            .await
            .expect("generations")
            .relations[0],
        generation + 1,
        "A sees B's bump"
    );
    assert_eq!(
        hit(&a, &input, &products()).await,
        None,
        "A must not serve the pre-write entry"
    );
    assert_eq!(hit(&b, &input, &products()).await, None);

    let after = response("new price");
    stored(&a, &input, &products(), after.clone()).await;
    assert_eq!(hit(&b, &input, &products()).await, Some(after));
    assert_eq!(b.stats().await.invalidations, 1);
}

#[tokio::test]
async fn lookup_and_fill_take_one_round_trip_each() {
    let redis = TestRedis::start();
    let cache = cache(&config(Some(redis.url())));
    let none = [];
    let input = read("app", SQL, &none);
    let tables = vec!["products".to_owned(), "categories".to_owned()];
    // The first lookup in a database also gives it its starting generation.
    assert!(hit(&cache, &input, &tables).await.is_none());
    let requests = || async { cache.stats().await.store_requests };
    let before = requests().await;
    let Lookup::Miss(Some(fill)) = look_up(&cache, &input, &tables).await else {
        panic!("expected a miss with a ticket");
    };
    assert_eq!(
        requests().await,
        before + 1,
        "generations, LSNs and entry: one round trip"
    );
    let outcome = cache
        .fill(fill, AnsweredBy::Leader, response("x"), TTL)
        .await;
    assert_eq!(outcome, FillOutcome::Stored);
    assert_eq!(requests().await, before + 2, "a fill is one SET");
    assert!(hit(&cache, &input, &tables).await.is_some());
    assert_eq!(requests().await, before + 3, "a hit is one round trip");
}

#[tokio::test]
async fn unrelated_tables_keep_their_entries() {
    let redis = TestRedis::start();
    let cache = cache(&config(Some(redis.url())));
    let none = [];
    let input = read("app", SQL, &none);
    let body = response("kept");
    stored(&cache, &input, &products(), body.clone()).await;
    cache
        .invalidate("shop", &["orders".to_owned()], None)
        .await
        .expect("invalidate");
    cache
        .invalidate("other_db", &products(), None)
        .await
        .expect("invalidate");
    assert_eq!(hit(&cache, &input, &products()).await, Some(body));
}

on_both_stores!(
    write_lsn_only_moves_forward,
    redis_write_lsn_only_moves_forward,
    memory_write_lsn_only_moves_forward
);

async fn write_lsn_only_moves_forward(config: CacheConfig) {
    let cache = cache(&config);
    let tables = vec!["products".to_owned(), "orders".to_owned()];
    assert_eq!(
        cache.write_lsns("shop", &tables).await.expect("lsns"),
        [0, 0]
    );
    enum Write<'t> {
        Tables(&'t [String], Option<u64>),
        Database(u64),
    }
    let steps = [
        (Write::Tables(&tables[..1], Some(0x5000)), [0x5000, 0]),
        (Write::Tables(&tables[..1], Some(0x3000)), [0x5000, 0]),
        (Write::Tables(&tables[..1], None), [0x5000, 0]),
        (Write::Tables(&tables, Some(0x7000)), [0x7000, 0x7000]),
        // A database-wide write counts for every table, but never moves one back.
        (Write::Database(0x6000), [0x7000, 0x7000]),
        (Write::Database(0x9000), [0x9000, 0x9000]),
    ];
    for (step, (write, expected)) in steps.into_iter().enumerate() {
        let written = match write {
            Write::Tables(written, lsn) => cache.invalidate("shop", written, lsn).await,
            Write::Database(lsn) => cache.invalidate_database("shop", Some(lsn)).await,
        };
        written.expect("invalidate");
        let lsns = cache.write_lsns("shop", &tables).await.expect("lsns");
        assert_eq!(lsns, expected, "after step {step}");
    }
    assert_eq!(
        cache.write_lsns("other", &tables).await.expect("lsns"),
        [0, 0]
    );
}

on_both_stores!(
    lagging_replica_never_fills,
    redis_lagging_replica_never_fills,
    memory_lagging_replica_never_fills
);

async fn lagging_replica_never_fills(config: CacheConfig) {
    let cache = cache(&config);
    let none = [];
    let input = read("app", SQL, &none);
    cache
        .invalidate("shop", &products(), Some(0x1_0000))
        .await
        .expect("invalidate");
    let behind = AnsweredBy::Replica { replay_lsn: 0xFFFF };
    assert_eq!(
        fill_from(&cache, &input, &products(), behind, response("stale")).await,
        FillOutcome::ReplicaLag
    );
    assert_eq!(
        hit(&cache, &input, &products()).await,
        None,
        "the stale answer was not stored"
    );
    let caught_up = AnsweredBy::Replica {
        replay_lsn: 0x1_0000,
    };
    let fresh = response("fresh");
    assert_eq!(
        fill_from(&cache, &input, &products(), caught_up, fresh.clone()).await,
        FillOutcome::Stored
    );
    assert_eq!(hit(&cache, &input, &products()).await, Some(fresh));
    assert_eq!(cache.stats().await.fills_skipped, 1);
}

on_both_stores!(
    database_wide_invalidation_drops_only_that_database,
    redis_database_wide_invalidation_drops_only_that_database,
    memory_database_wide_invalidation_drops_only_that_database
);

async fn database_wide_invalidation_drops_only_that_database(config: CacheConfig) {
    let cache = cache(&config);
    let none = [];
    let shop_products = read("app", SQL, &none);
    let shop_orders = read("app", "SELECT count(*) FROM orders", &none);
    let other = KeyInput {
        database: "other",
        ..shop_products
    };
    let orders = vec!["orders".to_owned()];
    for (input, tables) in [
        (&shop_products, products()),
        (&shop_orders, orders.clone()),
        (&other, products()),
    ] {
        stored(&cache, input, &tables, response("x")).await;
    }
    cache
        .invalidate_database("shop", None)
        .await
        .expect("invalidate");
    assert_eq!(hit(&cache, &shop_products, &products()).await, None);
    assert_eq!(hit(&cache, &shop_orders, &orders).await, None);
    assert!(
        hit(&cache, &other, &products()).await.is_some(),
        "another database is untouched"
    );
}

#[tokio::test]
async fn users_and_search_paths_never_share_an_entry() {
    let redis = TestRedis::start();
    let cache = cache(&config(Some(redis.url())));
    let tenant_1 = vec![("search_path".to_owned(), "tenant_1".to_owned())];
    let tenant_2 = vec![("search_path".to_owned(), "tenant_2".to_owned())];
    let app = read("app", SQL, &tenant_1);
    stored(&cache, &app, &products(), response("app's row")).await;
    assert!(hit(&cache, &app, &products()).await.is_some());
    assert_eq!(
        hit(&cache, &read("app2", SQL, &tenant_1), &products()).await,
        None
    );
    assert_eq!(
        hit(&cache, &read("app", SQL, &tenant_2), &products()).await,
        None
    );
}

on_both_stores!(
    entries_over_max_entry_bytes_are_not_stored,
    redis_entries_over_max_entry_bytes_are_not_stored,
    memory_entries_over_max_entry_bytes_are_not_stored
);

async fn entries_over_max_entry_bytes_are_not_stored(config: CacheConfig) {
    let max_entry_bytes = 4096;
    let cache = cache(&CacheConfig {
        max_entry_bytes: max_entry_bytes as u64,
        ..config
    });
    let none = [];
    let too_big = read("app", "SELECT big FROM products", &none);
    let just_fits = read("app", "SELECT fits FROM products", &none);
    let over = Bytes::from(vec![b'D'; max_entry_bytes + 1]);
    assert_eq!(
        fill_from(&cache, &too_big, &products(), AnsweredBy::Leader, over).await,
        FillOutcome::TooLarge
    );
    assert_eq!(hit(&cache, &too_big, &products()).await, None);
    let exact = Bytes::from(vec![b'D'; max_entry_bytes]);
    stored(&cache, &just_fits, &products(), exact.clone()).await;
    assert_eq!(hit(&cache, &just_fits, &products()).await, Some(exact));
}

#[tokio::test]
async fn memory_store_stays_within_max_bytes() {
    const MAX_BYTES: u64 = 256 * 1024;
    let config = CacheConfig {
        max_bytes: MAX_BYTES,
        max_entry_bytes: 8 * 1024,
        ..config(None)
    };
    let cache = cache(&config);
    let none = [];
    let body = Bytes::from(vec![b'D'; 4 * 1024]);
    // 16 × the budget.
    let mut stored = 0;
    for i in 0..1024 {
        let sql = format!("SELECT * FROM products WHERE id = {i}");
        let input = read("app", &sql, &none);
        if fill_from(
            &cache,
            &input,
            &products(),
            AnsweredBy::Leader,
            body.clone(),
        )
        .await
            == FillOutcome::Stored
        {
            stored += 1;
        }
    }
    assert_eq!(stored, 1024, "each fill is accepted; eviction makes room");
    let stats = cache.stats().await;
    assert!(
        stats.bytes <= MAX_BYTES,
        "{} bytes resident, budget {MAX_BYTES}",
        stats.bytes
    );
    let entries = stats.entries.expect("memory store counts entries");
    assert!(entries > 0 && entries < 1024, "{entries} entries resident");
}

#[tokio::test]
async fn redis_down_calls_fail_without_hanging() {
    let mut redis = TestRedis::start();
    let config = CacheConfig {
        retry_after: Duration::from_secs(3600),
        ..config(Some(redis.url()))
    };
    let cache = cache(&config);
    let none = [];
    let input = read("app", SQL, &none);
    stored(&cache, &input, &products(), response("x")).await;
    redis.stop();
    for _ in 0..2 * FAILURES_TO_OPEN {
        assert!(matches!(
            look_up(&cache, &input, &products()).await,
            Lookup::Miss(None)
        ));
        assert!(
            bounded("invalidate", cache.invalidate("shop", &products(), None))
                .await
                .is_err()
        );
    }
    assert!(cache.stats().await.errors > 0);
}

#[tokio::test]
async fn open_breaker_keeps_calls_away_from_redis() {
    let mut redis = TestRedis::start();
    let config = CacheConfig {
        retry_after: Duration::from_secs(3600),
        ..config(Some(redis.url()))
    };
    let cache = cache(&config);
    let none = [];
    let input = read("app", SQL, &none);
    assert!(cache.generations("shop", &products()).await.is_ok());
    redis.stop();
    let mut failures = 0;
    while cache.stats().await.breaker != BreakerState::Open {
        assert!(
            failures < 10 * FAILURES_TO_OPEN,
            "breaker still closed after {failures} failures"
        );
        assert!(
            bounded("generations", cache.generations("shop", &products()))
                .await
                .is_err()
        );
        failures += 1;
    }
    assert_eq!(
        failures, FAILURES_TO_OPEN,
        "opens after exactly N consecutive failures"
    );
    let errors = cache.stats().await.errors;
    let requests = cache.stats().await.store_requests;
    for _ in 0..20 {
        assert!(matches!(
            look_up(&cache, &input, &products()).await,
            Lookup::Miss(None)
        ));
        assert!(matches!(
            cache.generations("shop", &products()).await,
            Err(CacheError::Bypassed)
        ));
        assert!(matches!(
            cache.write_lsns("shop", &products()).await,
            Err(CacheError::Bypassed)
        ));
    }
    let stats = cache.stats().await;
    assert_eq!(
        stats.store_requests, requests,
        "an open breaker must not touch Redis"
    );
    assert_eq!(stats.errors, errors, "bypassed calls are not store errors");
}

#[tokio::test]
async fn restarted_redis_is_used_again_by_itself() {
    let mut redis = TestRedis::start();
    let cache = cache(&config(Some(redis.url())));
    let none = [];
    let input = read("app", SQL, &none);
    stored(&cache, &input, &products(), response("x")).await;
    redis.stop();
    for _ in 0..FAILURES_TO_OPEN {
        assert!(matches!(
            look_up(&cache, &input, &products()).await,
            Lookup::Miss(None)
        ));
    }
    assert_eq!(cache.stats().await.breaker, BreakerState::Open);
    redis.restart();
    let body = response("after restart");
    eventually(
        "the cache to be used again after Redis came back",
        async || match look_up(&cache, &input, &products()).await {
            Lookup::Miss(Some(fill)) => {
                let outcome = cache.fill(fill, AnsweredBy::Leader, body.clone(), TTL);
                bounded("fill", outcome).await == FillOutcome::Stored
            }
            _ => false,
        },
    )
    .await;
    assert_eq!(hit(&cache, &input, &products()).await, Some(body));
    assert_eq!(cache.stats().await.breaker, BreakerState::Closed);
}

#[tokio::test]
async fn pgrelay_starts_with_redis_down_and_uses_it_once_up() {
    let mut redis = TestRedis::start();
    redis.stop();
    let cache = cache(&config(Some(redis.url())));
    let none = [];
    let input = read("app", SQL, &none);
    assert!(matches!(
        look_up(&cache, &input, &products()).await,
        Lookup::Miss(None)
    ));
    redis.restart();
    eventually("the cache to be used once Redis is up", async || {
        let lookup = look_up(&cache, &input, &products()).await;
        matches!(lookup, Lookup::Miss(Some(_)))
    })
    .await;
}

#[tokio::test]
async fn frozen_redis_times_out_instead_of_hanging() {
    let redis = TestRedis::start();
    let cache = cache(&config(Some(redis.url())));
    let none = [];
    let input = read("app", SQL, &none);
    stored(&cache, &input, &products(), response("x")).await;
    redis.pause();
    assert!(matches!(
        bounded("generations", cache.generations("shop", &products())).await,
        Err(CacheError::Timeout(_))
    ));
    for _ in 0..2 * FAILURES_TO_OPEN {
        assert!(matches!(
            look_up(&cache, &input, &products()).await,
            Lookup::Miss(None)
        ));
    }
    assert_ne!(cache.stats().await.breaker, BreakerState::Closed);
    redis.resume();
    eventually(
        "the cache to be used again after Redis thawed",
        async || hit(&cache, &input, &products()).await.is_some(),
    )
    .await;
}

#[tokio::test]
async fn failed_invalidation_is_delivered_before_this_pgrelay_serves_again() {
    let redis = TestRedis::start();
    let a = cache(&config(Some(redis.url())));
    let b = cache(&config(Some(redis.url())));
    let none = [];
    let input = read("app", SQL, &none);
    stored(&a, &input, &products(), response("old")).await;

    // Redis refuses the invalidation's writes (but still answers reads).
    redis.query::<()>(redis::cmd("ACL").arg(&["SETUSER", "default", "-hincrby", "-zadd"]));
    assert!(a
        .invalidate("shop", &products(), Some(0x2000))
        .await
        .is_err());
    assert_eq!(a.stats().await.pending_invalidations, 1);
    assert!(
        matches!(look_up(&a, &input, &products()).await, Lookup::Miss(None)),
        "A knows its write has not landed: it must not serve or fill"
    );

    redis.query::<()>(redis::cmd("ACL").arg(&["SETUSER", "default", "+@all"]));
    assert!(
        matches!(
            look_up(&a, &input, &products()).await,
            Lookup::Miss(Some(_))
        ),
        "the queued invalidation is delivered first, so the old entry no longer matches"
    );
    assert_eq!(a.stats().await.pending_invalidations, 0);
    assert_eq!(
        hit(&b, &input, &products()).await,
        None,
        "B sees the delivered invalidation"
    );
    assert_eq!(
        b.write_lsns("shop", &products()).await.expect("lsns"),
        vec![0x2000]
    );
}

#[tokio::test]
async fn losing_the_generation_hash_never_revives_stale_entries() {
    let redis = TestRedis::start();
    let cache = cache(&config(Some(redis.url())));
    let none = [];
    let input = read("app", SQL, &none);
    stored(&cache, &input, &products(), response("old")).await;
    cache
        .invalidate("shop", &products(), None)
        .await
        .expect("invalidate");
    assert_eq!(hit(&cache, &input, &products()).await, None);
    // Redis evicts the generations (allkeys-lru) or an operator deletes them; the stale entry
    // is still there.
    redis.query::<()>(redis::cmd("DEL").arg("pgrelay:gen:shop"));
    assert_eq!(
        hit(&cache, &input, &products()).await,
        None,
        "stale entry revived"
    );
}

#[tokio::test]
async fn unusable_redis_url_is_refused_at_start() {
    let refused = Cache::from_config(
        &config(Some("redis+sentinel://127.0.0.1:26379/mymaster".to_owned())),
        &Metrics::new(),
    );
    assert!(matches!(refused, Err(CacheError::Config(_))));
}
