//! Which prepared statements exist on one server connection.
//!
//! Transaction pooling moves a client between server connections, so pgrelay prepares a
//! client's statement on whichever connection runs its Bind, under a name derived from the
//! statement's text. This cache remembers what each connection holds and picks the least
//! recently used statement to close when the connection holds too many.

use std::collections::HashMap;

/// Protocol-level statements (by server-side name) on one connection, bounded, LRU.
#[derive(Debug)]
pub struct StatementCache {
    capacity: usize,
    tick: u64,
    names: HashMap<String, u64>,
}

impl StatementCache {
    pub fn new(capacity: usize) -> StatementCache {
        StatementCache {
            capacity: capacity.max(1),
            tick: 0,
            names: HashMap::new(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Marks `name` as used now; returns whether the connection has it.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.names.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared; returns the statement to close first when the cache is
    /// full (never `name` itself, nor anything in `keep`).
    pub fn insert(&mut self, name: &str, keep: &[&str]) -> Option<String> {
        self.tick += 1;
        self.names.insert(name.to_owned(), self.tick);
        if self.names.len() <= self.capacity {
            return None;
        }
        let victim = self
            .names
            .iter()
            .filter(|(n, _)| n.as_str() != name && !keep.contains(&n.as_str()))
            .min_by_key(|(_, t)| **t)
            .map(|(n, _)| n.clone())?;
        self.names.remove(&victim);
        Some(victim)
    }

    pub fn remove(&mut self, name: &str) {
        self.names.remove(name);
    }

    pub fn clear(&mut self) {
        self.names.clear();
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_is_closed_first() {
        let mut c = StatementCache::new(2);
        assert_eq!(c.insert("a", &[]), None);
        assert_eq!(c.insert("b", &[]), None);
        assert!(c.touch("a"));
        assert!(!c.touch("z"), "a statement never prepared is not there");
        assert_eq!(c.insert("c", &[]), Some("b".to_owned()));
        assert!(c.contains("a") && c.contains("c") && !c.contains("b"));
    }

    #[test]
    fn statements_in_use_are_not_evicted() {
        let mut c = StatementCache::new(1);
        c.insert("a", &[]);
        assert_eq!(
            c.insert("b", &["a"]),
            None,
            "nothing evictable: go over capacity"
        );
        assert_eq!(c.len(), 2);
    }
}
