//! The in-process store used when no `cache.redis_url` is set: entries bounded by
//! `cache.max_bytes` (weighted by entry size) with a TTL per entry, and generations and write
//! LSNs in a map. Private to one pgrelay: a second instance neither sees its entries nor its
//! invalidations, so it is for single-instance deployments.
//!
//! Entries live in shards, each a mutex over a hash map with CLOCK (second chance) eviction by
//! bytes: a lookup is one uncontended lock, one probe and a refcount increment. Keys are
//! already xxh3-128 hashes, so the map hashes them by folding their bytes.
//!
//! Nothing here can fail or block for long; every lock is held for a few operations only.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::key::{generation_stamp, CacheKey, Generations, Stamp};
use super::store::{Entry, LookupReply};

/// Bytes charged per entry on top of its payload (key, stamp, expiry, map and slot), so a
/// flood of tiny results cannot hold far more memory than `max_bytes` says.
const ENTRY_OVERHEAD_BYTES: u64 = 128;

/// Most shards the entries are split over (fewer when `max_bytes` is small, so every shard can
/// still hold a few entries of `max_entry_bytes`).
const MAX_SHARDS: u64 = 16;

/// How far ahead an expiry too distant for the clock is put instead.
const FOREVER: Duration = Duration::from_secs(365 * 86_400);

/// Hashes a [`CacheKey`], whose bytes are already a uniform hash, by folding them.
#[derive(Default)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(23) ^ u64::from_le_bytes(word);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

struct Slot {
    key: CacheKey,
    stamp: Stamp,
    payload: Bytes,
    expires: Instant,
    charge: u64,
    /// Read since the clock hand last passed: spared once.
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    index: HashMap<CacheKey, usize, BuildHasherDefault<FoldHasher>>,
    slots: Vec<Slot>,
    hand: usize,
    bytes: u64,
}

impl Shard {
    fn get(&mut self, key: &CacheKey, now: Instant) -> Option<Entry> {
        let &i = self.index.get(key)?;
        let slot = self.slots.get_mut(i)?;
        if slot.expires <= now {
            self.remove_at(i);
            return None;
        }
        slot.referenced = true;
        Some(Entry {
            stamp: slot.stamp,
            payload: slot.payload.clone(),
        })
    }

    /// Stores `slot`, replacing the key's entry and evicting others until it fits `budget`.
    fn put(&mut self, slot: Slot, budget: u64, now: Instant) {
        if let Some(&i) = self.index.get(&slot.key) {
            self.remove_at(i);
        }
        if slot.charge > budget {
            return;
        }
        while self.bytes + slot.charge > budget && !self.slots.is_empty() {
            self.evict_one(now);
        }
        self.index.insert(slot.key, self.slots.len());
        self.bytes += slot.charge;
        self.slots.push(slot);
    }

    /// Second chance: the hand skips (and clears) entries read since it last passed, so it
    /// stops within two sweeps; an expired entry goes whatever its bit. `slots` is not empty.
    fn evict_one(&mut self, now: Instant) {
        loop {
            self.hand %= self.slots.len();
            let slot = &mut self.slots[self.hand];
            if slot.referenced && slot.expires > now {
                slot.referenced = false;
                self.hand += 1;
            } else {
                break;
            }
        }
        self.remove_at(self.hand);
    }

    fn remove_at(&mut self, i: usize) {
        let slot = self.slots.swap_remove(i);
        self.index.remove(&slot.key);
        self.bytes -= slot.charge;
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.key, i);
        }
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
    shards: Vec<Mutex<Shard>>,
    /// Bytes each shard may hold.
    shard_budget: u64,
    max_entry_bytes: u64,
    marks: Mutex<HashMap<String, DatabaseMarks>>,
}

impl MemoryStore {
    pub fn new(max_bytes: u64, max_entry_bytes: u64) -> MemoryStore {
        let largest_charge = max_entry_bytes.saturating_add(ENTRY_OVERHEAD_BYTES);
        let shard_count = (max_bytes / largest_charge.saturating_mul(4)).clamp(1, MAX_SHARDS);
        MemoryStore {
            shards: (0..shard_count)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            shard_budget: max_bytes / shard_count,
            max_entry_bytes,
            marks: Mutex::new(HashMap::new()),
        }
    }

    fn marks(&self) -> MutexGuard<'_, HashMap<String, DatabaseMarks>> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shard(&self, key: &CacheKey) -> MutexGuard<'_, Shard> {
        // The map inside folds all of the key's bytes; its last byte picks the shard.
        let i = usize::from(key.0[15]) % self.shards.len();
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, key: &CacheKey) -> Option<Entry> {
        self.shard(key).get(key, Instant::now())
    }

    /// Entries over `max_entry_bytes` are dropped here too, whatever the caller checked.
    pub fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) {
        if entry.payload.len() as u64 > self.max_entry_bytes || ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let slot = Slot {
            key,
            stamp: entry.stamp,
            charge: (entry.payload.len() as u64).saturating_add(ENTRY_OVERHEAD_BYTES),
            payload: entry.payload,
            expires: now.checked_add(ttl.min(FOREVER)).unwrap_or(now),
            referenced: false,
        };
        self.shard(&key).put(slot, self.shard_budget, now);
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
            stamp: generation_stamp(key, relations, &generations),
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

    /// Bytes the entries are charged for.
    pub fn weighted_bytes(&self) -> u64 {
        self.each_shard(|s| s.bytes)
    }

    pub fn entry_count(&self) -> u64 {
        self.each_shard(|s| s.slots.len() as u64)
    }

    fn each_shard(&self, count: impl Fn(&Shard) -> u64) -> u64 {
        self.shards
            .iter()
            .map(|s| count(&s.lock().unwrap_or_else(PoisonError::into_inner)))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CacheKey {
        let mut k = [0u8; 16];
        k[0] = n;
        k[15] = n;
        CacheKey(k)
    }

    fn entry(bytes: usize) -> Entry {
        Entry {
            stamp: Stamp([7; 16]),
            payload: Bytes::from(vec![b'D'; bytes]),
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn stored_entry_comes_back_until_it_expires() {
        let store = MemoryStore::new(1 << 20, 1 << 10);
        store.put(key(1), entry(100), TTL);
        assert_eq!(store.get(&key(1)), Some(entry(100)));
        assert_eq!(store.get(&key(2)), None);
        store.put(key(3), entry(100), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.get(&key(3)), None, "expired");
        assert_eq!(store.entry_count(), 1, "the expired entry is gone");
    }

    #[test]
    fn replacing_an_entry_charges_only_the_new_one() {
        let store = MemoryStore::new(1 << 20, 1 << 10);
        store.put(key(1), entry(100), TTL);
        store.put(key(1), entry(300), TTL);
        assert_eq!(store.entry_count(), 1);
        assert_eq!(store.weighted_bytes(), 300 + ENTRY_OVERHEAD_BYTES);
        assert_eq!(store.get(&key(1)), Some(entry(300)));
    }

    #[test]
    fn bytes_stay_within_max_bytes_and_read_entries_get_a_second_chance() {
        // One shard (max_bytes < 4 × the largest entry), room for four 1000-byte entries.
        let charge = 1000 + ENTRY_OVERHEAD_BYTES;
        let store = MemoryStore::new(4 * charge + 10, 4000);
        for n in 0..4 {
            store.put(key(n), entry(1000), TTL);
        }
        assert_eq!(store.entry_count(), 4);
        assert!(store.get(&key(0)).is_some());
        for n in 4..40 {
            store.put(key(n), entry(1000), TTL);
            assert!(store.weighted_bytes() <= 4 * charge + 10);
            // Keep entry 0 in use: it is never the one evicted.
            assert!(store.get(&key(0)).is_some(), "entry 0 evicted at {n}");
        }
        assert_eq!(store.entry_count(), 4);
        assert_eq!(store.get(&key(39)), Some(entry(1000)));
    }

    #[test]
    fn oversized_and_zero_ttl_entries_are_not_stored() {
        let store = MemoryStore::new(1 << 20, 1000);
        store.put(key(1), entry(1001), TTL);
        store.put(key(2), entry(10), Duration::ZERO);
        assert_eq!(store.entry_count(), 0);
        assert_eq!(store.weighted_bytes(), 0);
    }

    #[test]
    fn shards_scale_with_max_bytes() {
        assert_eq!(MemoryStore::new(64 << 10, 16 << 10).shards.len(), 1);
        assert_eq!(MemoryStore::new(64 << 20, 1 << 20).shards.len(), 15);
        assert_eq!(MemoryStore::new(1 << 30, 1 << 20).shards.len(), 16);
    }
}
