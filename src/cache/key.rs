//! Cache keys: which stored entry a statement maps to, and which data version that entry holds.
//!
//! Two hashes, both xxh3-128 (stable across processes and machines, unlike `ahash`, so every
//! pgrelay sharing a Redis computes the same keys):
//! - [`cache_key`] identifies the *statement*: database, user, result-affecting session
//!   settings, SQL text and the Bind tail. It names the slot the entry is stored under, so a
//!   lookup can fetch the entry in the same round trip as the table generations.
//! - [`generation_stamp`] identifies the *data version*: the statement key plus the current
//!   generation of every referenced relation and of the database. An entry is a hit only when
//!   the stamp it was stored with equals the stamp computed from today's generations; a write
//!   bumps a generation, which changes the stamp, so older entries stop matching at once.
//!
//! Every variable-length field is length-prefixed and every list count-prefixed, in a fixed
//! order, so two different inputs can never produce the same byte stream by concatenation
//! (`("ab", "c")` vs `("a", "bc")`). This module never does I/O.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use xxhash_rust::xxh3::xxh3_128;

/// Changing anything about how keys are hashed must change this tag, so entries written by an
/// older pgrelay sharing the same Redis are never read with a different meaning.
const KEY_DOMAIN: &[u8] = b"pgrelay/cache-key/v1";
const STAMP_DOMAIN: &[u8] = b"pgrelay/generation-stamp/v1";

/// Everything about a statement that decides its result, apart from the data's generation.
#[derive(Debug, Clone, Copy)]
pub struct KeyInput<'a> {
    pub database: &'a str,
    /// The user the statement runs as: row-level security, grants and `current_user` make
    /// results differ per user, so entries are never shared across users.
    pub user: &'a str,
    /// The session's settings (`search_path`, `TimeZone`, `DateStyle`, `IntervalStyle`,
    /// `extra_float_digits`, `bytea_output`, `client_encoding`, `lc_*`, …) as (name, value).
    /// `application_name`, which every client sets and which never changes a result, is left
    /// out of the key. Order does not matter; passing them sorted by name saves an allocation.
    pub settings: &'a [(String, String)],
    /// The statement text, as the client sent it in Query or Parse.
    pub sql: &'a str,
    /// The Bind message after the portal and statement names: parameter format codes, parameter
    /// values and result format codes, raw. Empty for a simple Query.
    pub param_formats_values_result_formats: &'a [u8],
}

/// The slot an entry is stored under: one per (database, user, settings, statement, parameters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 16]);

/// Which data version an entry holds: its [`CacheKey`] plus the generations it was read under.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp(pub [u8; 16]);

/// Current generations of a database and of the relations a statement reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Generations {
    /// Bumped by writes whose tables are unknown (DDL, `TRUNCATE`, `DO`, functions): part of
    /// every stamp in the database.
    pub database: u64,
    /// One per relation, in the order the relations were asked for.
    pub relations: Vec<u64>,
}

impl CacheKey {
    /// The Redis key the entry lives under. The database is spelled out so an operator can
    /// find or drop one database's entries (`SCAN MATCH pgrelay:v1:c:shop:*`).
    pub fn redis_key(&self, database: &str) -> String {
        const PREFIX: &str = "pgrelay:v1:c:";
        let mut key = String::with_capacity(PREFIX.len() + database.len() + 1 + 32);
        key.push_str(PREFIX);
        key.push_str(database);
        key.push(':');
        key.extend(hex_digits(&self.0));
        key
    }
}

/// The 32 lower-case hex digits of a hash.
fn hex_digits(bytes: &[u8; 16]) -> impl Iterator<Item = char> + '_ {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|b| {
        [
            char::from(DIGITS[usize::from(b >> 4)]),
            char::from(DIGITS[usize::from(b & 0x0f)]),
        ]
    })
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8; 16]) -> fmt::Result {
    hex_digits(bytes).try_for_each(|c| f.write_char(c))
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey(")?;
        write_hex(f, &self.0)?;
        write!(f, ")")
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stamp(")?;
        write_hex(f, &self.0)?;
        write!(f, ")")
    }
}

/// The byte stream a key is hashed from, built in one buffer and hashed in one call: for the
/// few hundred bytes of a typical statement that is several times faster than feeding a
/// streaming hasher field by field.
struct KeyBytes(Vec<u8>);

impl KeyBytes {
    fn len(&mut self, len: usize) {
        self.0.extend_from_slice(&(len as u64).to_le_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.0.extend_from_slice(bytes);
    }

    fn settings<'s>(&mut self, settings: impl Iterator<Item = &'s (String, String)>) {
        for (name, value) in settings.filter(|(name, _)| !ignored_setting(name)) {
            self.field(name.as_bytes());
            self.field(value.as_bytes());
        }
    }

    fn digest(&self) -> [u8; 16] {
        xxh3_128(&self.0).to_le_bytes()
    }
}

thread_local! {
    /// Reused across keys so hashing does not allocate; it keeps the capacity of the largest
    /// statement seen on this thread, shrunk back when that is unusually large.
    static KEY_BYTES: RefCell<KeyBytes> = const { RefCell::new(KeyBytes(Vec::new())) };
}

/// Statements longer than this do not keep their buffer around.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;

fn hash_with(build: impl FnOnce(&mut KeyBytes)) -> [u8; 16] {
    KEY_BYTES.with(|cell| {
        let Ok(mut buffer) = cell.try_borrow_mut() else {
            // Re-entered (cannot happen today): use a fresh buffer rather than panic.
            let mut fresh = KeyBytes(Vec::new());
            build(&mut fresh);
            return fresh.digest();
        };
        buffer.0.clear();
        build(&mut buffer);
        let digest = buffer.digest();
        if buffer.0.capacity() > KEEP_BUFFER_BYTES {
            buffer.0 = Vec::new();
        }
        digest
    })
}

/// Settings that never change a result, so they stay out of the key.
fn ignored_setting(name: &str) -> bool {
    name == "application_name"
}

/// The slot a statement's result is stored under.
pub fn cache_key(input: &KeyInput<'_>) -> CacheKey {
    CacheKey(hash_with(|bytes| {
        bytes.0.extend_from_slice(KEY_DOMAIN);
        bytes.field(input.database.as_bytes());
        bytes.field(input.user.as_bytes());
        bytes.len(
            input
                .settings
                .iter()
                .filter(|(name, _)| !ignored_setting(name))
                .count(),
        );
        // Settings arrive in whatever order the session recorded them; the key must not depend
        // on that order, only on the values.
        if input.settings.is_sorted_by(|a, b| a.0 <= b.0) {
            bytes.settings(input.settings.iter());
        } else {
            let mut sorted: Vec<&(String, String)> = input.settings.iter().collect();
            sorted.sort();
            bytes.settings(sorted.into_iter());
        }
        bytes.field(input.sql.as_bytes());
        bytes.field(input.param_formats_values_result_formats);
    }))
}

/// The data version an entry for `key` holds when `relations` are at `generations`.
/// `generations.relations` must be aligned with `relations`.
pub fn generation_stamp(key: &CacheKey, relations: &[String], generations: &Generations) -> Stamp {
    debug_assert_eq!(relations.len(), generations.relations.len());
    Stamp(hash_with(|bytes| {
        bytes.0.extend_from_slice(STAMP_DOMAIN);
        bytes.0.extend_from_slice(&key.0);
        bytes
            .0
            .extend_from_slice(&generations.database.to_le_bytes());
        bytes.len(relations.len());
        for (relation, generation) in relations.iter().zip(&generations.relations) {
            bytes.field(relation.as_bytes());
            bytes.0.extend_from_slice(&generation.to_le_bytes());
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Vec<(String, String)> {
        vec![
            ("DateStyle".to_owned(), "ISO, MDY".to_owned()),
            ("TimeZone".to_owned(), "UTC".to_owned()),
            ("search_path".to_owned(), "\"$user\", public".to_owned()),
        ]
    }

    fn input<'a>(settings: &'a [(String, String)]) -> KeyInput<'a> {
        KeyInput {
            database: "shop",
            user: "app",
            settings,
            sql: "SELECT name, price FROM products WHERE id = $1",
            param_formats_values_result_formats: &[0, 0, 0, 1, 0, 0, 0, 2, b'4', b'2', 0, 0],
        }
    }

    #[test]
    fn application_name_is_not_part_of_the_key() {
        let plain = settings();
        let mut named = settings();
        named.push(("application_name".to_owned(), "'psql'".to_owned()));
        assert_eq!(cache_key(&input(&plain)), cache_key(&input(&named)));
        let mut other_zone = settings();
        other_zone[1].1 = "Europe/Paris".to_owned();
        assert_ne!(cache_key(&input(&plain)), cache_key(&input(&other_zone)));
    }

    #[test]
    fn same_statement_gets_the_same_key() {
        let s = settings();
        assert_eq!(cache_key(&input(&s)), cache_key(&input(&s)));
    }

    #[test]
    fn key_is_the_same_in_every_process() {
        // Two pgrelays sharing a Redis must agree on keys; a hash seeded per process (ahash,
        // std's SipHash with RandomState) would silently stop them sharing anything. Both
        // values were also computed by the reference xxHash (Python `xxhash`) over the
        // documented byte layout, so they pin the format, not just this implementation.
        let s = settings();
        assert_eq!(
            cache_key(&input(&s)).to_string(),
            "7178c07548eb65194f296a441fe62edf"
        );
        let stamp = generation_stamp(
            &cache_key(&input(&s)),
            &["products".to_owned()],
            &Generations {
                database: 7,
                relations: vec![3],
            },
        );
        assert_eq!(stamp.to_string(), "04b76330a459b2bb70f57a13565d11b0");
    }

    #[test]
    fn every_field_changes_the_key() {
        let s = settings();
        let base = cache_key(&input(&s));
        let mut other_settings = settings();
        other_settings[2].1 = "tenant_2, public".to_owned();
        let changed = [
            KeyInput {
                database: "shop2",
                ..input(&s)
            },
            KeyInput {
                user: "admin",
                ..input(&s)
            },
            input(&other_settings),
            KeyInput {
                settings: &s[..2],
                ..input(&s)
            },
            KeyInput {
                sql: "SELECT name, price FROM products WHERE id = $2",
                ..input(&s)
            },
            KeyInput {
                param_formats_values_result_formats: &[0, 0, 0, 1, 0, 0, 0, 2, b'4', b'3', 0, 0],
                ..input(&s)
            },
            KeyInput {
                param_formats_values_result_formats: &[],
                ..input(&s)
            },
        ];
        for (i, other) in changed.iter().enumerate() {
            assert_ne!(
                cache_key(other),
                base,
                "changing field {i} must change the key"
            );
        }
    }

    #[test]
    fn fields_cannot_collide_by_concatenation() {
        let s: Vec<(String, String)> = Vec::new();
        let a = KeyInput {
            database: "ab",
            user: "c",
            ..input(&s)
        };
        let b = KeyInput {
            database: "a",
            user: "bc",
            ..input(&s)
        };
        assert_ne!(cache_key(&a), cache_key(&b));
        let one = vec![("a".to_owned(), "bc".to_owned())];
        let other = vec![("ab".to_owned(), "c".to_owned())];
        assert_ne!(cache_key(&input(&one)), cache_key(&input(&other)));
        let sql_then_bind = KeyInput {
            sql: "SELECT 1",
            param_formats_values_result_formats: b"x",
            ..input(&s)
        };
        let all_in_sql = KeyInput {
            sql: "SELECT 1x",
            param_formats_values_result_formats: b"",
            ..input(&s)
        };
        assert_ne!(cache_key(&sql_then_bind), cache_key(&all_in_sql));
    }

    #[test]
    fn settings_order_does_not_change_the_key() {
        let sorted = settings();
        let mut shuffled = settings();
        shuffled.reverse();
        assert_eq!(cache_key(&input(&sorted)), cache_key(&input(&shuffled)));
    }

    #[test]
    fn every_generation_changes_the_stamp() {
        let s = settings();
        let key = cache_key(&input(&s));
        let relations = vec!["categories".to_owned(), "products".to_owned()];
        let base = Generations {
            database: 1,
            relations: vec![5, 9],
        };
        let stamp = generation_stamp(&key, &relations, &base);
        assert_eq!(stamp, generation_stamp(&key, &relations, &base.clone()));
        let bumped = [
            Generations {
                database: 2,
                ..base.clone()
            },
            Generations {
                relations: vec![6, 9],
                ..base.clone()
            },
            Generations {
                relations: vec![5, 10],
                ..base.clone()
            },
        ];
        for (i, generations) in bumped.iter().enumerate() {
            assert_ne!(
                generation_stamp(&key, &relations, generations),
                stamp,
                "bump {i}"
            );
        }
        let other_relations = vec!["categories".to_owned(), "orders".to_owned()];
        assert_ne!(generation_stamp(&key, &other_relations, &base), stamp);
        let other_key = cache_key(&KeyInput {
            user: "admin",
            ..input(&s)
        });
        assert_ne!(generation_stamp(&other_key, &relations, &base), stamp);
    }

    #[test]
    fn redis_key_names_the_database_and_the_hex_key() {
        let key = CacheKey([0xab; 16]);
        assert_eq!(
            key.redis_key("shop"),
            format!("pgrelay:v1:c:shop:{}", "ab".repeat(16))
        );
    }
}
