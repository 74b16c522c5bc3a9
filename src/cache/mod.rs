//! Cache-aside for reads: result bytes stored by statement, invalidated by writes through any
//! pgrelay, filled only from servers that have replayed the last write.
//!
//! The session asks [`Cache::lookup`] before running a cacheable read; on a hit it replays the
//! stored bytes, on a miss it runs the read and hands the response to [`Cache::fill`], which
//! stores it only if the answering server was not behind the last write to the tables read.
//! After a committed write it calls [`Cache::invalidate`] (tables known) or
//! [`Cache::invalidate_database`] (tables unknown).
//!
//! This module owns the *mechanism*. It never decides what is cacheable (the classifier and
//! [`rule_ttl`] do), never talks to PostgreSQL, and never makes a query fail: every store error
//! or timeout becomes a miss, a skipped fill or a queued invalidation, counted in metrics.

pub mod breaker;
pub mod invalidate;
pub mod key;
pub mod memory_store;
pub mod redis_store;
pub mod rules;
pub mod store;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use thiserror::Error;

use crate::config::CacheConfig;
use crate::metrics::Metrics;

pub use breaker::{BreakerState, FAILURES_TO_OPEN};
pub use invalidate::relation_names;
pub use key::{cache_key, generation_stamp, CacheKey, Generations, KeyInput, Stamp};
pub use rules::{rule_ttl, ReadTables};
pub use store::{Entry, LookupReply, Store, StoreKind};

use breaker::Breaker;
use invalidate::PendingInvalidations;
use memory_store::MemoryStore;
use redis_store::RedisStore;

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("cache store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The store was not asked: the breaker is open (or its probe is in flight), or it failed
    /// a moment ago in this same call.
    #[error("cache store bypassed after repeated failures")]
    Bypassed,
    #[error("cache.redis_url cannot be used: {0}")]
    Config(String),
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// The stored response, to replay to the client byte for byte.
    Hit(Bytes),
    /// Run the query. With a ticket, hand the response to [`Cache::fill`]; without one (store
    /// unavailable, invalidations pending) just run it.
    Miss(Option<Fill>),
}

/// Permission to store the response of one missed read, and what it must be checked against.
#[derive(Debug, Clone)]
pub struct Fill {
    database: String,
    key: CacheKey,
    stamp: Stamp,
    write_lsn: u64,
}

impl Fill {
    /// The last write LSN of the tables read: the answer is stored only if it comes from the
    /// leader or from a replica that had replayed at least this far. The router may use it to
    /// prefer such a replica, so the fill is not skipped.
    pub fn write_lsn(&self) -> u64 {
        self.write_lsn
    }
}

/// Which server produced a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnsweredBy {
    /// The leader has every committed write.
    Leader,
    /// A replica, with its replay LSN as known *before* the query was sent (a topology snapshot
    /// taken before sending is a lower bound of what the replica had replayed when it ran the
    /// query; one taken after is not).
    Replica { replay_lsn: u64 },
}

/// What [`Cache::fill`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    Stored,
    /// Larger than `cache.max_entry_bytes`.
    TooLarge,
    /// The replica that answered may not have replayed the last write to these tables.
    ReplicaLag,
    /// The store failed or is bypassed, or invalidations for the database are still pending.
    StoreUnavailable,
}

impl FillOutcome {
    /// The `reason` label of `pgrelay_cache_fill_skipped_total`.
    pub fn skip_reason(self) -> Option<&'static str> {
        match self {
            FillOutcome::Stored => None,
            FillOutcome::TooLarge => Some("too_large"),
            FillOutcome::ReplicaLag => Some("replica_lag"),
            FillOutcome::StoreUnavailable => Some("store_unavailable"),
        }
    }
}

/// A point-in-time view for `SHOW CACHE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStats {
    pub store: StoreKind,
    pub breaker: BreakerState,
    pub hits: u64,
    pub misses: u64,
    pub fills: u64,
    pub fills_skipped: u64,
    pub invalidations: u64,
    pub errors: u64,
    /// Memory store: bytes held (weighted size). Redis: bytes written by this instance since it
    /// started (Redis memory is Redis's to report).
    pub bytes: u64,
    /// Memory store only.
    pub entries: Option<u64>,
    /// Databases whose invalidations have not reached the store yet.
    pub pending_invalidations: usize,
    /// Round trips started to Redis (0 for the memory store).
    pub store_requests: u64,
}

struct CacheMetrics {
    hits: IntCounter,
    misses: IntCounter,
    fills: IntCounter,
    skipped_too_large: IntCounter,
    skipped_replica_lag: IntCounter,
    skipped_store_unavailable: IntCounter,
    invalidations: IntCounter,
    errors: IntCounter,
    bytes: IntGauge,
}

impl CacheMetrics {
    fn new(metrics: &Metrics) -> CacheMetrics {
        let skipped = |outcome: FillOutcome| {
            let reason = outcome.skip_reason().unwrap_or("unknown");
            metrics.cache_fill_skipped.with_label_values(&[reason])
        };
        CacheMetrics {
            hits: metrics.cache_hits.clone(),
            misses: metrics.cache_misses.clone(),
            fills: metrics.cache_fills.clone(),
            skipped_too_large: skipped(FillOutcome::TooLarge),
            skipped_replica_lag: skipped(FillOutcome::ReplicaLag),
            skipped_store_unavailable: skipped(FillOutcome::StoreUnavailable),
            invalidations: metrics.cache_invalidations.clone(),
            errors: metrics.cache_errors.clone(),
            bytes: metrics.cache_bytes.clone(),
        }
    }

    /// The counter an outcome moves: fills, or skipped fills by reason.
    fn fill_counter(&self, outcome: FillOutcome) -> &IntCounter {
        match outcome {
            FillOutcome::Stored => &self.fills,
            FillOutcome::TooLarge => &self.skipped_too_large,
            FillOutcome::ReplicaLag => &self.skipped_replica_lag,
            FillOutcome::StoreUnavailable => &self.skipped_store_unavailable,
        }
    }
}

/// The cache one pgrelay uses: a store behind a breaker, with metrics. Shared by every session
/// (`&self` methods, internally synchronised).
pub struct Cache {
    store: Store,
    breaker: Breaker,
    pending: PendingInvalidations,
    metrics: CacheMetrics,
    max_entry_bytes: u64,
}

impl Cache {
    /// Builds the store `config` names: Redis when `redis_url` is set (connected in the
    /// background, so this returns at once even when Redis is down), else in memory. Fails only
    /// for a URL that cannot be used (`rediss://` and `redis+sentinel://` need the `redis`
    /// crate's TLS and `sentinel` features). Must run inside a Tokio runtime.
    pub fn from_config(config: &CacheConfig, metrics: &Metrics) -> Result<Cache, CacheError> {
        let store = match &config.redis_url {
            Some(url) => Store::Redis(RedisStore::connect_lazily(url, config.timeout)?),
            None => Store::Memory(MemoryStore::new(config.max_bytes, config.max_entry_bytes)),
        };
        Ok(Cache {
            store,
            breaker: Breaker::new(FAILURES_TO_OPEN, config.retry_after),
            pending: PendingInvalidations::default(),
            metrics: CacheMetrics::new(metrics),
            max_entry_bytes: config.max_entry_bytes,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs one store call through the breaker, counting and reporting its failure.
    async fn guarded<T>(
        &self,
        call: impl Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        let Some(permit) = self.breaker.admit(Instant::now()) else {
            return Err(CacheError::Bypassed);
        };
        match call.await {
            Ok(value) => {
                permit.succeeded();
                Ok(value)
            }
            Err(error) => {
                self.metrics.errors.inc();
                tracing::debug!(error = %error, "cache store call failed");
                permit.failed(Instant::now(), &error);
                Err(error)
            }
        }
    }

    /// Sends queued invalidations. Returns whether this call may go on to use the store for
    /// `database`: nothing is pending for it, and the store did not just fail (if it did, a
    /// second call would most likely wait out a second timeout for nothing).
    async fn replay_pending(&self, database: &str) -> bool {
        if !self.pending.any() {
            return true;
        }
        let Some(batch) = self.pending.start_replay() else {
            return !self.pending.is_pending(database);
        };
        let mut delivered = Vec::with_capacity(batch.len());
        let mut failed = false;
        for (db, writes) in &batch {
            let relations: Vec<String> = writes.relations.iter().cloned().collect();
            let sent = if writes.whole_database {
                self.guarded(self.store.invalidate_database(db, writes.write_lsn))
                    .await
            } else {
                self.guarded(self.store.invalidate(db, &relations, writes.write_lsn))
                    .await
            };
            if sent.is_ok() {
                self.metrics.invalidations.inc();
                delivered.push((db.clone(), writes.version));
            } else {
                failed = true;
            }
        }
        self.pending.finish_replay(&delivered);
        if !delivered.is_empty() {
            tracing::info!(
                databases = delivered.len(),
                "cache: queued invalidations delivered"
            );
        }
        !failed && !self.pending.is_pending(database)
    }

    /// Looks a read up: `key` is its [`cache_key`], `relations` are the relation names of the
    /// tables it reads, as [`relation_names`] gives them. One round trip to Redis for a hit;
    /// a second for a miss (the write LSNs its fill is checked against), and one more the
    /// first time a database is seen.
    pub async fn lookup(&self, database: &str, key: CacheKey, relations: &[String]) -> Lookup {
        if let Some(found) = self.lookup_in_process(database, key, relations) {
            return found;
        }
        if !self.replay_pending(database).await {
            // An invalidation for this database has not reached the store: entries it would
            // have made unreachable may still be there. Go to the database.
            self.metrics.misses.inc();
            return Lookup::Miss(None);
        }
        match self
            .guarded(self.store.lookup(database, &key, relations))
            .await
        {
            Ok(reply) => self.conclude(database, key, reply),
            Err(_) => {
                self.metrics.misses.inc();
                Lookup::Miss(None)
            }
        }
    }

    /// [`Cache::lookup`] without awaiting anything, when the store is in this process (`None`
    /// for Redis). The in-process store cannot fail, so no breaker or replay is involved.
    pub fn lookup_in_process(
        &self,
        database: &str,
        key: CacheKey,
        relations: &[String],
    ) -> Option<Lookup> {
        let Store::Memory(s) = &self.store else {
            return None;
        };
        let reply = s.lookup(database, &key, relations);
        Some(self.conclude(database, key, reply))
    }

    /// A hit when the stored entry was read under today's generations, else a miss with the
    /// ticket for storing the answer.
    fn conclude(&self, database: &str, key: CacheKey, reply: LookupReply) -> Lookup {
        let stamp = reply.stamp;
        match reply.entry {
            Some(entry) if entry.stamp == stamp => {
                self.metrics.hits.inc();
                Lookup::Hit(entry.payload)
            }
            _ => {
                self.metrics.misses.inc();
                Lookup::Miss(Some(Fill {
                    database: database.to_owned(),
                    key,
                    stamp,
                    write_lsn: reply.write_lsn,
                }))
            }
        }
    }

    /// Stores the response of a missed read, if it may be: small enough, from a server that
    /// had replayed the last write to the tables, and the store reachable. `response` is the
    /// raw RowDescription … CommandComplete bytes as the server sent them.
    pub async fn fill(
        &self,
        fill: Fill,
        answered_by: AnsweredBy,
        response: Bytes,
        ttl: Duration,
    ) -> FillOutcome {
        let outcome = self.try_fill(fill, answered_by, response, ttl).await;
        self.metrics.fill_counter(outcome).inc();
        outcome
    }

    /// Counts a fill the session gave up before calling [`Cache::fill`] (a response it stopped
    /// collecting because it outgrew `cache.max_entry_bytes`).
    pub fn count_skipped_fill(&self, outcome: FillOutcome) {
        self.metrics.fill_counter(outcome).inc();
    }

    async fn try_fill(
        &self,
        fill: Fill,
        answered_by: AnsweredBy,
        response: Bytes,
        ttl: Duration,
    ) -> FillOutcome {
        if response.len() as u64 > self.max_entry_bytes {
            return FillOutcome::TooLarge;
        }
        if let AnsweredBy::Replica { replay_lsn } = answered_by {
            if replay_lsn < fill.write_lsn {
                return FillOutcome::ReplicaLag;
            }
        }
        if self.pending.is_pending(&fill.database) {
            return FillOutcome::StoreUnavailable;
        }
        let written = response.len() as i64;
        let entry = Entry {
            stamp: fill.stamp,
            payload: response,
        };
        match self
            .guarded(self.store.put(&fill.database, &fill.key, entry, ttl))
            .await
        {
            Ok(()) => {
                match &self.store {
                    Store::Memory(s) => self
                        .metrics
                        .bytes
                        .set(i64::try_from(s.weighted_bytes()).unwrap_or(i64::MAX)),
                    Store::Redis(_) => self.metrics.bytes.add(written),
                }
                FillOutcome::Stored
            }
            Err(_) => FillOutcome::StoreUnavailable,
        }
    }

    /// A committed write touched `tables`: every entry reading any of them stops matching, on
    /// every pgrelay sharing the store. `write_lsn` is the commit's LSN (or the leader's LSN
    /// read after the commit); without it, replicas' answers cannot be checked against this
    /// write. Errors are counted and logged, and the invalidation is queued and re-sent before
    /// this instance serves or fills the database again; callers may ignore them.
    pub async fn invalidate(
        &self,
        database: &str,
        tables: &[String],
        write_lsn: Option<u64>,
    ) -> Result<(), CacheError> {
        let relations = relation_names(tables);
        if relations.is_empty() {
            return Ok(());
        }
        if !self.replay_pending(database).await {
            self.pending.add(database, &relations, false, write_lsn);
            return Err(CacheError::Bypassed);
        }
        match self
            .guarded(self.store.invalidate(database, &relations, write_lsn))
            .await
        {
            Ok(()) => {
                self.metrics.invalidations.inc();
                Ok(())
            }
            Err(error) => {
                self.pending.add(database, &relations, false, write_lsn);
                Err(error)
            }
        }
    }

    /// A committed write touched tables pgrelay cannot name (DDL, `TRUNCATE`, `DO`, functions):
    /// every entry of the database stops matching. Errors as for [`Cache::invalidate`].
    pub async fn invalidate_database(
        &self,
        database: &str,
        write_lsn: Option<u64>,
    ) -> Result<(), CacheError> {
        if !self.replay_pending(database).await {
            self.pending.add(database, &[], true, write_lsn);
            return Err(CacheError::Bypassed);
        }
        match self
            .guarded(self.store.invalidate_database(database, write_lsn))
            .await
        {
            Ok(()) => {
                self.metrics.invalidations.inc();
                Ok(())
            }
            Err(error) => {
                self.pending.add(database, &[], true, write_lsn);
                Err(error)
            }
        }
    }

    /// Current generations of the database and of the tables' relations (sorted, without
    /// duplicates, as [`invalidate::relation_names`] returns them).
    pub async fn generations(
        &self,
        database: &str,
        tables: &[String],
    ) -> Result<Generations, CacheError> {
        let relations = relation_names(tables);
        self.guarded(self.store.generations(database, &relations))
            .await
    }

    /// Last write LSN of each table (the later of its own and the database-wide one), in the
    /// order given.
    pub async fn write_lsns(
        &self,
        database: &str,
        tables: &[String],
    ) -> Result<Vec<u64>, CacheError> {
        let relations: Vec<String> = tables
            .iter()
            .map(|t| invalidate::relation_name(t))
            .collect();
        self.guarded(self.store.write_lsns(database, &relations))
            .await
    }

    pub async fn stats(&self) -> CacheStats {
        let (bytes, entries, store_requests) = match &self.store {
            Store::Memory(s) => {
                let bytes = s.weighted_bytes();
                self.metrics
                    .bytes
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                (bytes, Some(s.entry_count()), 0)
            }
            Store::Redis(s) => (
                u64::try_from(self.metrics.bytes.get()).unwrap_or(0),
                None,
                s.requests(),
            ),
        };
        CacheStats {
            store: self.store.kind(),
            breaker: self.breaker.state(Instant::now()),
            hits: self.metrics.hits.get(),
            misses: self.metrics.misses.get(),
            fills: self.metrics.fills.get(),
            fills_skipped: self.metrics.skipped_too_large.get()
                + self.metrics.skipped_replica_lag.get()
                + self.metrics.skipped_store_unavailable.get(),
            invalidations: self.metrics.invalidations.get(),
            errors: self.metrics.errors.get(),
            bytes,
            entries,
            pending_invalidations: self.pending.len(),
            store_requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn cache_can_be_shared_by_session_tasks() {
        // Sessions run on a multi-threaded runtime: the cache and the futures of its methods
        // must cross threads, so no lock guard may be held across an await.
        assert_send_sync::<Cache>();
        let cache =
            Cache::from_config(&CacheConfig::default(), &Metrics::new()).expect("memory store");
        let input = KeyInput {
            database: "shop",
            user: "app",
            settings: &[],
            sql: "SELECT 1",
            param_formats_values_result_formats: &[],
        };
        let tables = vec!["products".to_owned()];
        assert_send(&cache.lookup("shop", cache_key(&input), &tables));
        assert_send(&cache.invalidate("shop", &tables, None));
        assert_send(&cache.invalidate_database("shop", None));
        assert_send(&cache.stats());
    }

    #[test]
    fn every_skip_reason_is_a_distinct_label() {
        let reasons = [
            FillOutcome::TooLarge,
            FillOutcome::ReplicaLag,
            FillOutcome::StoreUnavailable,
        ]
        .map(|o| o.skip_reason().expect("a skip has a reason"));
        assert_eq!(reasons, ["too_large", "replica_lag", "store_unavailable"]);
        assert_eq!(FillOutcome::Stored.skip_reason(), None);
    }
}
