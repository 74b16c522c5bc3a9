//! Invalidation bookkeeping: which name a relation's generation is kept under, and the
//! invalidations that could not reach the store yet.
//!
//! A write's invalidation must never be lost: if it were, entries cached before the write would
//! stay reachable until their TTL. When the store cannot be reached, the invalidation is kept
//! here and replayed before this instance serves or fills that database again. Nothing here
//! does I/O; `Cache` drives the replay.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Splits a possibly qualified, possibly quoted name (`shop."Order Items"`) into its parts,
/// unquoted and lower-cased.
pub(crate) fn name_parts(name: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut chars = name.trim().chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                part.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut part)),
            c => part.extend(c.to_lowercase()),
        }
    }
    parts.push(part);
    parts
}

/// The name a relation's generation and last write LSN are kept under: its unqualified,
/// unquoted, lower-cased name.
///
/// The schema is dropped on purpose: a writer says `UPDATE products` and a reader
/// `SELECT … FROM public.products`, and only the session's `search_path` says they are the same
/// table. Keying by the bare name makes them share a generation whatever the spelling. The
/// price is that a write to `a.t` also invalidates entries reading `b.t`: extra misses, never a
/// stale hit. Case is folded for the same reason (`"Products"` and `products` share one).
pub fn relation_name(table: &str) -> String {
    name_parts(table).pop().unwrap_or_default()
}

/// [`relation_name`] of each table, sorted and without duplicates, so the same set of tables
/// always yields the same generation list whatever order the classifier reported them in.
pub fn relation_names(tables: &[String]) -> Vec<String> {
    let mut names: Vec<String> = tables
        .iter()
        .map(|t| relation_name(t))
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Past this many distinct relations waiting for one database, the whole database is
/// invalidated instead, so the queue stays small however long the store is away.
const MAX_PENDING_RELATIONS: usize = 1024;

/// Invalidations of one database that have not reached the store yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PendingWrites {
    pub relations: BTreeSet<String>,
    pub whole_database: bool,
    pub write_lsn: Option<u64>,
    /// Bumped by every merge, so a replay only clears what it actually sent.
    pub version: u64,
}

impl PendingWrites {
    fn merge(&mut self, relations: &[String], whole_database: bool, write_lsn: Option<u64>) {
        self.relations.extend(relations.iter().cloned());
        self.whole_database |= whole_database || self.relations.len() > MAX_PENDING_RELATIONS;
        if self.whole_database {
            self.relations.clear();
        }
        self.write_lsn = self.write_lsn.max(write_lsn);
        self.version += 1;
    }
}

/// The invalidations waiting for the store, by database.
#[derive(Debug, Default)]
pub(crate) struct PendingInvalidations {
    /// Lets the read path skip the lock when, as almost always, nothing is pending.
    any: AtomicBool,
    /// Only one task replays at a time; the others treat pending databases as unavailable.
    replaying: AtomicBool,
    by_database: Mutex<HashMap<String, PendingWrites>>,
}

impl PendingInvalidations {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, PendingWrites>> {
        self.by_database
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn add(
        &self,
        database: &str,
        relations: &[String],
        whole_database: bool,
        write_lsn: Option<u64>,
    ) {
        let mut map = self.lock();
        map.entry(database.to_owned())
            .or_default()
            .merge(relations, whole_database, write_lsn);
        self.any.store(true, Ordering::Release);
    }

    pub fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    pub fn is_pending(&self, database: &str) -> bool {
        self.any() && self.lock().contains_key(database)
    }

    pub fn len(&self) -> usize {
        if self.any() {
            self.lock().len()
        } else {
            0
        }
    }

    /// A copy of everything pending, for one replay. Returns `None` when another task is
    /// already replaying; [`Self::finish_replay`] must follow a `Some`.
    pub fn start_replay(&self) -> Option<Vec<(String, PendingWrites)>> {
        if self
            .replaying
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        Some(
            self.lock()
                .iter()
                .map(|(db, writes)| (db.clone(), writes.clone()))
                .collect(),
        )
    }

    /// Forgets what the replay delivered, unless more arrived for that database meanwhile
    /// (sending it again is harmless: a generation bumped twice is still just "changed").
    pub fn finish_replay(&self, delivered: &[(String, u64)]) {
        let mut map = self.lock();
        for (db, version) in delivered {
            if map.get(db).is_some_and(|w| w.version == *version) {
                map.remove(db);
            }
        }
        self.any.store(!map.is_empty(), Ordering::Release);
        drop(map);
        self.replaying.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_and_quotes_do_not_split_a_tables_generation() {
        assert_eq!(relation_name("products"), "products");
        assert_eq!(relation_name("public.products"), "products");
        assert_eq!(relation_name("Shop.Products"), "products");
        assert_eq!(relation_name("\"Products\""), "products");
        assert_eq!(relation_name("shop.\"order.items\""), "order.items");
        assert_eq!(relation_name("\"we\"\"ird\""), "we\"ird");
    }

    #[test]
    fn relation_names_are_sorted_and_unique() {
        let tables = vec![
            "public.products".to_owned(),
            "categories".to_owned(),
            "products".to_owned(),
        ];
        assert_eq!(relation_names(&tables), vec!["categories", "products"]);
    }

    #[test]
    fn pending_invalidation_stays_until_delivered() {
        let pending = PendingInvalidations::default();
        assert!(!pending.any());
        pending.add("shop", &["products".to_owned()], false, Some(10));
        assert!(pending.is_pending("shop"));
        assert!(!pending.is_pending("other"));

        let batch = pending.start_replay().expect("not replaying yet");
        assert!(pending.start_replay().is_none(), "one replay at a time");
        // A write arrives while the replay is in flight: it must survive the replay.
        pending.add("shop", &["orders".to_owned()], false, Some(20));
        let delivered: Vec<(String, u64)> = batch
            .iter()
            .map(|(db, w)| (db.clone(), w.version))
            .collect();
        pending.finish_replay(&delivered);
        assert!(pending.is_pending("shop"));

        let batch = pending.start_replay().expect("previous replay finished");
        assert_eq!(batch.len(), 1);
        let writes = &batch[0].1;
        assert_eq!(writes.write_lsn, Some(20));
        assert!(writes.relations.contains("orders") && writes.relations.contains("products"));
        let delivered: Vec<(String, u64)> = batch
            .iter()
            .map(|(db, w)| (db.clone(), w.version))
            .collect();
        pending.finish_replay(&delivered);
        assert!(!pending.any());
    }

    #[test]
    fn too_many_pending_relations_become_a_database_invalidation() {
        let pending = PendingInvalidations::default();
        for i in 0..=MAX_PENDING_RELATIONS {
            pending.add("shop", &[format!("t{i}")], false, None);
        }
        let batch = pending.start_replay().expect("not replaying");
        assert!(batch[0].1.whole_database);
        assert!(batch[0].1.relations.is_empty());
    }
}
