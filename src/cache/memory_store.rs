//! The in-process store used when no `cache.redis_url` is set: a `moka` cache bounded by
//! `cache.max_bytes` (weighted by entry size) with a TTL per entry, and generations and write
//! LSNs in a map. Private to one pgrelay: a second instance neither sees its entries nor its
//! invalidations, so it is for single-instance deployments.
//!
//! Nothing here can fail or block for long; the map's lock is held for a few lookups only.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::sync::Cache as Moka;
use moka::Expiry;

use super::key::{CacheKey, Generations, Stamp};
use super::store::{Entry, LookupReply};

/// Bytes charged per entry on top of its payload (key, stamp, TTL, moka's own bookkeeping), so
/// a flood of tiny results cannot hold far more memory than `max_bytes` says.
const ENTRY_OVERHEAD_BYTES: usize = 128;

#[derive(Clone)]
struct MemoryEntry {
    stamp: Stamp,
    payload: Bytes,
    ttl: Duration,
}

struct EntryTtl;

impl Expiry<CacheKey, MemoryEntry> for EntryTtl {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        entry: &MemoryEntry,
        _: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        entry: &MemoryEntry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

#[derive(Debug, Default)]
struct RelationMarks {
    generation: u64,
    write_lsn: u64,
}

#[derive(Debug, Default)]
struct DatabaseMarks {
    generation: u64,
    write_lsn: u64,
    relations: HashMap<String, RelationMarks>,
}

pub struct MemoryStore {
    entries: Moka<CacheKey, MemoryEntry>,
    max_entry_bytes: u64,
    marks: Mutex<HashMap<String, DatabaseMarks>>,
}

impl MemoryStore {
    pub fn new(max_bytes: u64, max_entry_bytes: u64) -> MemoryStore {
        let entries = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &CacheKey, entry: &MemoryEntry| {
                u32::try_from(entry.payload.len().saturating_add(ENTRY_OVERHEAD_BYTES))
                    .unwrap_or(u32::MAX)
            })
            .expire_after(EntryTtl)
            .build();
        MemoryStore {
            entries,
            max_entry_bytes,
            marks: Mutex::new(HashMap::new()),
        }
    }

    fn marks(&self) -> MutexGuard<'_, HashMap<String, DatabaseMarks>> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, key: &CacheKey) -> Option<Entry> {
        self.entries.get(key).map(|e| Entry {
            stamp: e.stamp,
            payload: e.payload,
        })
    }

    /// Entries over `max_entry_bytes` are dropped here too, whatever the caller checked.
    pub fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) {
        if entry.payload.len() as u64 > self.max_entry_bytes || ttl.is_zero() {
            return;
        }
        let entry = MemoryEntry {
            stamp: entry.stamp,
            payload: entry.payload,
            ttl,
        };
        self.entries.insert(key, entry);
    }

    pub fn lookup(&self, database: &str, key: &CacheKey, relations: &[String]) -> LookupReply {
        let (generations, write_lsn) = {
            let marks = self.marks();
            let db = marks.get(database);
            let mut write_lsn = db.map_or(0, |d| d.write_lsn);
            let relation_generations = relations
                .iter()
                .map(|r| match db.and_then(|d| d.relations.get(r)) {
                    Some(m) => {
                        write_lsn = write_lsn.max(m.write_lsn);
                        m.generation
                    }
                    None => 0,
                })
                .collect();
            let generations = Generations {
                database: db.map_or(0, |d| d.generation),
                relations: relation_generations,
            };
            (generations, write_lsn)
        };
        LookupReply {
            entry: self.get(key),
            generations,
            write_lsn,
        }
    }

    pub fn generations(&self, database: &str, relations: &[String]) -> Generations {
        let marks = self.marks();
        let db = marks.get(database);
        Generations {
            database: db.map_or(0, |d| d.generation),
            relations: relations
                .iter()
                .map(|r| {
                    db.and_then(|d| d.relations.get(r))
                        .map_or(0, |m| m.generation)
                })
                .collect(),
        }
    }

    pub fn invalidate(&self, database: &str, relations: &[String], write_lsn: Option<u64>) {
        let mut marks = self.marks();
        let db = marks.entry(database.to_owned()).or_default();
        for relation in relations {
            let m = db.relations.entry(relation.clone()).or_default();
            m.generation += 1;
            m.write_lsn = m.write_lsn.max(write_lsn.unwrap_or(0));
        }
    }

    pub fn invalidate_database(&self, database: &str, write_lsn: Option<u64>) {
        let mut marks = self.marks();
        let db = marks.entry(database.to_owned()).or_default();
        db.generation += 1;
        db.write_lsn = db.write_lsn.max(write_lsn.unwrap_or(0));
    }

    pub fn write_lsns(&self, database: &str, relations: &[String]) -> Vec<u64> {
        let marks = self.marks();
        let db = marks.get(database);
        let database_lsn = db.map_or(0, |d| d.write_lsn);
        relations
            .iter()
            .map(|r| {
                db.and_then(|d| d.relations.get(r))
                    .map_or(0, |m| m.write_lsn)
                    .max(database_lsn)
            })
            .collect()
    }

    /// Bytes the entries are charged for, after moka has applied pending evictions (its size
    /// accounting is otherwise eventually consistent).
    pub fn resident_bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    /// Bytes charged right now, without waiting for pending evictions.
    pub fn weighted_bytes(&self) -> u64 {
        self.entries.weighted_size()
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}
