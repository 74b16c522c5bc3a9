//! The Redis store: entries, generations and write LSNs shared by every pgrelay on one Redis,
//! so a write through one instance invalidates what all of them cached.
//!
//! Layout (Redis ≥ 6.2, for `ZADD … GT` and `ZMSCORE`):
//! - `pgrelay:v1:c:<db>:<key hex>` → 16-byte generation stamp ‖ raw response, with `PX` TTL.
//! - `pgrelay:gen:<db>` hash: field per relation → generation (`HINCRBY`); field `""` → the
//!   database generation. One key per database, so a lookup reads every generation with one
//!   `HMGET` (also in Redis Cluster, where a multi-key `MGET` would cross slots), and a relation
//!   name can never collide with a database name through the `:` separator.
//! - `pgrelay:lsn:<db>` sorted set: member per relation (and `""` for the database) → last write
//!   LSN as score. `ZADD GT` only ever moves it forward, atomically, without Lua.
//!
//! The database generation starts at a random value, not 0. If Redis loses the generation hash
//! (eviction under an `allkeys-*` policy, a flush) while entries survive, a fresh random
//! database generation makes every surviving entry's stamp stale, instead of counting up from 0
//! again and matching entries stored before the loss.
//!
//! The connection is a `redis::aio::ConnectionManager` created lazily: pgrelay starts with Redis
//! down, and the manager reconnects by itself. Every call is bounded by `cache.timeout`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;

use super::key::{generation_stamp, CacheKey, Generations, Stamp};
use super::store::{Entry, LookupReply};
use super::CacheError;

/// The hash field and sorted-set member standing for the whole database. No relation has an
/// empty name ([`super::invalidate::relation_names`] drops them).
const DATABASE_FIELD: &str = "";

/// How long one attempt to open a connection may take. Connecting happens in the background
/// (queries never wait longer than `cache.timeout`), so this can be generous enough for TLS
/// and a remote Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts per reconnect before the manager gives up until the next call asks again.
const CONNECT_RETRIES: usize = 2;

fn generations_key(database: &str) -> String {
    format!("pgrelay:gen:{database}")
}

fn write_lsns_key(database: &str) -> String {
    format!("pgrelay:lsn:{database}")
}

/// A sorted-set score for an LSN. Scores are doubles, exact only up to 2^53, so larger LSNs are
/// rounded *up*: a recorded write LSN may read back slightly later than it was, which can only
/// skip a fill, never allow a stale one.
fn lsn_to_score(lsn: u64) -> f64 {
    let score = lsn as f64;
    if (score as u64) < lsn {
        score.next_up()
    } else {
        score
    }
}

fn score_to_lsn(score: f64) -> u64 {
    // `as` saturates: negative or NaN scores (never written by us) read as 0.
    score.ceil() as u64
}

/// A database generation no earlier incarnation of the hash can have used, below 2^62 so
/// `HINCRBY` can count up from it for ever.
fn fresh_database_generation() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut seed = [0u8; 28];
    seed[..16].copy_from_slice(&nanos.to_le_bytes());
    seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    seed[20..].copy_from_slice(&CALLS.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&seed) >> 2
}

fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut value = Vec::with_capacity(16 + entry.payload.len());
    value.extend_from_slice(&entry.stamp.0);
    value.extend_from_slice(&entry.payload);
    value
}

fn decode_entry(mut value: Bytes) -> Option<Entry> {
    if value.len() < 16 {
        return None;
    }
    let payload = value.split_off(16);
    let stamp = Stamp(value.as_ref().try_into().ok()?);
    Some(Entry { stamp, payload })
}

pub struct RedisStore {
    conn: ConnectionManager,
    timeout: Duration,
    /// Round trips started, for `SHOW CACHE` and for tests that check an open breaker keeps
    /// calls away from Redis.
    requests: AtomicU64,
}

impl RedisStore {
    /// Prepares a connection to `url` without waiting for it: the first connection is opened
    /// in the background. Fails only for a URL the client cannot use. Must run inside a Tokio
    /// runtime.
    pub fn connect_lazily(url: &str, timeout: Duration) -> Result<RedisStore, CacheError> {
        // The client's parse errors never echo the URL, which may hold a password.
        let client = redis::Client::open(url).map_err(|e| CacheError::Config(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT.max(timeout)))
            // Our own `tokio::time::timeout` bounds each call; this one only frees the
            // connection's bookkeeping for a reply that never comes.
            .set_response_timeout(Some(timeout.saturating_mul(2)))
            .set_number_of_retries(CONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| CacheError::Config(e.to_string()))?;
        // Open the first connection now, off the query path, so the first lookups do not pay
        // for it. If Redis is down this logs once; the breaker handles the rest.
        let mut warm = conn.clone();
        tokio::spawn(async move {
            let pong: RedisResult<String> = redis::cmd("PING").query_async(&mut warm).await;
            if let Err(e) = pong {
                tracing::warn!(error = %e, "cache: Redis not reachable yet; queries bypass the cache until it is");
            }
        });
        Ok(RedisStore {
            conn,
            timeout,
            requests: AtomicU64::new(0),
        })
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn connection(&self) -> ConnectionManager {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.conn.clone()
    }

    /// Bounds a whole operation (one to three round trips) by `cache.timeout`.
    async fn bounded<T>(
        &self,
        operation: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, CacheError> {
        match tokio::time::timeout(self.timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            // The connection's own response timeout is only a backstop, but when both fire in
            // the same tick it is the one reported: still a timeout.
            Ok(Err(e)) if e.is_timeout() => Err(CacheError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(CacheError::Redis(e)),
            Err(_) => Err(CacheError::Timeout(self.timeout)),
        }
    }

    pub async fn get(&self, database: &str, key: &CacheKey) -> Result<Option<Entry>, CacheError> {
        let mut conn = self.connection();
        let value: Option<Bytes> = self
            .bounded(
                redis::cmd("GET")
                    .arg(key.redis_key(database))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(value.and_then(decode_entry))
    }

    pub async fn put(
        &self,
        database: &str,
        key: &CacheKey,
        entry: &Entry,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.connection();
        let mut set = redis::cmd("SET");
        set.arg(key.redis_key(database))
            .arg(encode_entry(entry).as_slice())
            .arg("PX")
            .arg(ttl_ms);
        self.bounded(set.exec_async(&mut conn)).await
    }

    /// One round trip for the entry and the generations; a second, for the write LSNs, only
    /// when the entry is missing or stale (a miss, whose fill needs them).
    pub async fn lookup(
        &self,
        database: &str,
        key: &CacheKey,
        relations: &[String],
    ) -> Result<LookupReply, CacheError> {
        self.bounded(async {
            let generations_key = generations_key(database);
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET")
                .arg(&generations_key)
                .arg(DATABASE_FIELD)
                .arg(relations)
                .cmd("GET")
                .arg(key.redis_key(database));
            let mut conn = self.connection();
            let (generations, value): (Vec<Option<u64>>, Option<Bytes>) =
                pipe.query_async(&mut conn).await?;
            let generations = self.complete(&generations_key, generations).await?;
            let entry = value.and_then(decode_entry);
            let stamp = generation_stamp(key, relations, &generations);
            // Write LSNs are read after the generations: an invalidation records the LSN
            // before bumping the generation, so whoever sees a new generation also sees its LSN.
            let write_lsn = match &entry {
                Some(e) if e.stamp == stamp => 0,
                _ => {
                    let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
                        .arg(write_lsns_key(database))
                        .arg(DATABASE_FIELD)
                        .arg(relations)
                        .query_async(&mut conn)
                        .await?;
                    scores
                        .into_iter()
                        .flatten()
                        .map(score_to_lsn)
                        .max()
                        .unwrap_or(0)
                }
            };
            Ok(LookupReply {
                entry,
                stamp,
                write_lsn,
            })
        })
        .await
    }

    pub async fn generations(
        &self,
        database: &str,
        relations: &[String],
    ) -> Result<Generations, CacheError> {
        self.bounded(async {
            let generations_key = generations_key(database);
            let mut conn = self.connection();
            let generations: Vec<Option<u64>> = redis::cmd("HMGET")
                .arg(&generations_key)
                .arg(DATABASE_FIELD)
                .arg(relations)
                .query_async(&mut conn)
                .await?;
            self.complete(&generations_key, generations).await
        })
        .await
    }

    /// Turns an `HMGET` of the database field and the relations into `Generations`, first
    /// giving the database its random starting generation if it has none.
    async fn complete(
        &self,
        generations_key: &str,
        fields: Vec<Option<u64>>,
    ) -> RedisResult<Generations> {
        let mut fields = fields.into_iter();
        let database = match fields.next().flatten() {
            Some(generation) => generation,
            // First use of this database, or Redis lost the hash: a second round trip, once.
            None => {
                let mut conn = self.connection();
                let (_, generation): ((), u64) = redis::pipe()
                    .cmd("HSETNX")
                    .arg(generations_key)
                    .arg(DATABASE_FIELD)
                    .arg(fresh_database_generation())
                    .cmd("HGET")
                    .arg(generations_key)
                    .arg(DATABASE_FIELD)
                    .query_async(&mut conn)
                    .await?;
                generation
            }
        };
        Ok(Generations {
            database,
            relations: fields.map(Option::unwrap_or_default).collect(),
        })
    }

    pub async fn invalidate(
        &self,
        database: &str,
        relations: &[String],
        write_lsn: Option<u64>,
    ) -> Result<(), CacheError> {
        if relations.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        // MULTI/EXEC: the LSNs and the bumps land together or not at all, so no reader sees a
        // new generation with an old LSN, and a lost connection cannot leave half of them.
        pipe.atomic();
        if let Some(lsn) = write_lsn {
            let zadd = pipe.cmd("ZADD").arg(write_lsns_key(database)).arg("GT");
            for relation in relations {
                zadd.arg(lsn_to_score(lsn)).arg(relation);
            }
            pipe.ignore();
        }
        let generations_key = generations_key(database);
        for relation in relations {
            pipe.cmd("HINCRBY")
                .arg(&generations_key)
                .arg(relation)
                .arg(1)
                .ignore();
        }
        let mut conn = self.connection();
        self.bounded(pipe.exec_async(&mut conn)).await
    }

    pub async fn invalidate_database(
        &self,
        database: &str,
        write_lsn: Option<u64>,
    ) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(lsn) = write_lsn {
            pipe.cmd("ZADD")
                .arg(write_lsns_key(database))
                .arg("GT")
                .arg(lsn_to_score(lsn))
                .arg(DATABASE_FIELD)
                .ignore();
        }
        let generations_key = generations_key(database);
        // Start from a random generation if there is none, never from 0 (see the module doc).
        pipe.cmd("HSETNX")
            .arg(&generations_key)
            .arg(DATABASE_FIELD)
            .arg(fresh_database_generation())
            .ignore()
            .cmd("HINCRBY")
            .arg(&generations_key)
            .arg(DATABASE_FIELD)
            .arg(1)
            .ignore();
        let mut conn = self.connection();
        self.bounded(pipe.exec_async(&mut conn)).await
    }

    pub async fn write_lsns(
        &self,
        database: &str,
        relations: &[String],
    ) -> Result<Vec<u64>, CacheError> {
        let mut conn = self.connection();
        let scores: Vec<Option<f64>> = self
            .bounded(
                redis::cmd("ZMSCORE")
                    .arg(write_lsns_key(database))
                    .arg(DATABASE_FIELD)
                    .arg(relations)
                    .query_async(&mut conn),
            )
            .await?;
        let mut lsns = scores.into_iter().map(|s| s.map_or(0, score_to_lsn));
        let database_lsn = lsns.next().unwrap_or(0);
        Ok(lsns.map(|lsn| lsn.max(database_lsn)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_scores_never_read_back_earlier_than_written() {
        for lsn in [
            0,
            1,
            0x16_B374_D848,
            (1 << 53) - 1,
            1 << 53,
            (1 << 53) + 1,
            (1 << 60) + 7,
            u64::MAX - 1,
        ] {
            let back = score_to_lsn(lsn_to_score(lsn));
            assert!(back >= lsn, "{lsn} read back as {back}");
        }
        assert_eq!(score_to_lsn(lsn_to_score(0x16_B374_D848)), 0x16_B374_D848);
    }

    #[test]
    fn entries_round_trip_through_their_redis_encoding() {
        let entry = Entry {
            stamp: Stamp([7; 16]),
            payload: Bytes::from_static(b"T\0\0\0\x06\0\0D\0\0\0\x04\0\0"),
        };
        assert_eq!(decode_entry(Bytes::from(encode_entry(&entry))), Some(entry));
        assert_eq!(decode_entry(Bytes::from_static(b"short")), None);
    }

    #[test]
    fn fresh_database_generations_differ_and_leave_room_to_count() {
        let a = fresh_database_generation();
        let b = fresh_database_generation();
        assert_ne!(a, b);
        assert!(a < 1 << 62 && b < 1 << 62);
    }
}
