//! Where entries, generations and write LSNs live: Redis (shared by every pgrelay) or an
//! in-process store. One enum, two variants, inherent async methods: no trait objects and no
//! boxed futures on the read path.
//!
//! A store knows nothing about breakers, metrics or what is cacheable; it stores what it is
//! given and reports failures. Relation names given to it are already normalised
//! ([`super::invalidate::relation_names`]).

use std::time::Duration;

use bytes::Bytes;

use super::key::{CacheKey, Generations, Stamp};
use super::memory_store::MemoryStore;
use super::redis_store::RedisStore;
use super::CacheError;

/// A stored result: the raw response messages, and the data version they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub stamp: Stamp,
    pub payload: Bytes,
}

/// What a lookup needs from the store, fetched together (one round trip to Redis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupReply {
    /// The entry stored under the key, whatever its stamp.
    pub entry: Option<Entry>,
    /// The stamp an entry carries when it was stored under today's generations of the
    /// database and the relations ([`generation_stamp`](super::key::generation_stamp)).
    pub stamp: Stamp,
    /// The highest last-write LSN among the relations and the database: a server that has not
    /// replayed this far may be missing a write, so its answer must not be stored. Only a miss
    /// needs it: a store may leave it 0 when `entry` carries `stamp`.
    pub write_lsn: u64,
}

/// Which kind of store is in use, for `SHOW CACHE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Redis => "redis",
        }
    }
}

pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    pub fn kind(&self) -> StoreKind {
        match self {
            Store::Memory(_) => StoreKind::Memory,
            Store::Redis(_) => StoreKind::Redis,
        }
    }

    /// The entry stored under `key`, whatever data version it holds.
    pub async fn get(&self, database: &str, key: &CacheKey) -> Result<Option<Entry>, CacheError> {
        match self {
            Store::Memory(s) => Ok(s.get(key)),
            Store::Redis(s) => s.get(database, key).await,
        }
    }

    /// Stores `entry` under `key` for `ttl`, replacing what was there.
    pub async fn put(
        &self,
        database: &str,
        key: &CacheKey,
        entry: Entry,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        match self {
            Store::Memory(s) => {
                s.put(*key, entry, ttl);
                Ok(())
            }
            Store::Redis(s) => s.put(database, key, &entry, ttl).await,
        }
    }

    /// The entry under `key`, the generations of the database and of `relations`, and their
    /// last write LSN, in one round trip.
    pub async fn lookup(
        &self,
        database: &str,
        key: &CacheKey,
        relations: &[String],
    ) -> Result<LookupReply, CacheError> {
        match self {
            Store::Memory(s) => Ok(s.lookup(database, key, relations)),
            Store::Redis(s) => s.lookup(database, key, relations).await,
        }
    }

    /// Current generations of the database and of each relation (a relation never written
    /// through pgrelay is at 0).
    pub async fn generations(
        &self,
        database: &str,
        relations: &[String],
    ) -> Result<Generations, CacheError> {
        match self {
            Store::Memory(s) => Ok(s.generations(database, relations)),
            Store::Redis(s) => s.generations(database, relations).await,
        }
    }

    /// A committed write touched `relations`: bump each one's generation and move its last
    /// write LSN forward to `write_lsn` (never back). The LSN is recorded before, or together
    /// with, the bump, so a reader that sees the new generation also sees the new LSN.
    pub async fn invalidate(
        &self,
        database: &str,
        relations: &[String],
        write_lsn: Option<u64>,
    ) -> Result<(), CacheError> {
        match self {
            Store::Memory(s) => {
                s.invalidate(database, relations, write_lsn);
                Ok(())
            }
            Store::Redis(s) => s.invalidate(database, relations, write_lsn).await,
        }
    }

    /// A committed write touched tables pgrelay cannot name (DDL, `TRUNCATE`, `DO`, functions):
    /// bump the database generation, which is part of every stamp in that database.
    pub async fn invalidate_database(
        &self,
        database: &str,
        write_lsn: Option<u64>,
    ) -> Result<(), CacheError> {
        match self {
            Store::Memory(s) => {
                s.invalidate_database(database, write_lsn);
                Ok(())
            }
            Store::Redis(s) => s.invalidate_database(database, write_lsn).await,
        }
    }

    /// Last write LSN of each relation: the later of its own and the database-wide one.
    pub async fn write_lsns(
        &self,
        database: &str,
        relations: &[String],
    ) -> Result<Vec<u64>, CacheError> {
        match self {
            Store::Memory(s) => Ok(s.write_lsns(database, relations)),
            Store::Redis(s) => s.write_lsns(database, relations).await,
        }
    }
}
