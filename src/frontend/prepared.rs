//! Prepared statements in transaction pooling.
//!
//! A client names its statements ("P_0", "S_1", "stmt") as if it owned one server connection.
//! pgrelay keeps each client's name → SQL map and runs every statement on the server under a
//! name derived from a hash of its text and parameter types, so any server connection can
//! serve any client: a connection that lacks the statement gets a Parse injected before the
//! client's Bind or Describe, and the ParseComplete that answers it is not shown to the client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};

use crate::protocol::build;
use crate::protocol::view::ParseMessage;
use crate::router::classify::Classification;

/// A statement a client prepared under its own name.
#[derive(Debug)]
pub struct ClientStatement {
    /// The name it has on every server connection.
    pub server_name: String,
    pub sql: Arc<str>,
    /// The Parse message that creates it on a server, ready to send.
    pub parse: Bytes,
    /// Its classification and the function catalog generation it was made under, so a Bind
    /// does not look the text up again.
    classified: Mutex<Option<(u64, Arc<Classification>)>>,
}

impl ClientStatement {
    /// The statement's classification under catalog `generation`: remembered, or made by
    /// `classify` (and remembered) when there is none for that generation yet.
    pub fn classification(
        &self,
        generation: u64,
        classify: impl FnOnce(&str) -> Arc<Classification>,
    ) -> Arc<Classification> {
        let mut memo = self
            .classified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match memo.as_ref() {
            Some((g, c)) if *g == generation => Arc::clone(c),
            _ => {
                let c = classify(&self.sql);
                *memo = Some((generation, Arc::clone(&c)));
                c
            }
        }
    }
}

/// The server-side name for a statement: stable across clients and pgrelay instances.
pub fn server_name(sql: &str, param_types: &[u32]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(sql.as_bytes());
    for t in param_types {
        hasher.update(&t.to_be_bytes());
    }
    format!("pgrelay_{:032x}", hasher.digest128())
}

/// One client's named statements (the unnamed statement is not tracked: it lives and dies
/// within one extended-protocol batch on one server connection).
#[derive(Debug, Default)]
pub struct ClientStatements {
    named: HashMap<String, Arc<ClientStatement>>,
}

impl ClientStatements {
    /// Records a client's Parse of a named statement and returns its server form.
    pub fn define(&mut self, parse: &ParseMessage<'_>) -> Arc<ClientStatement> {
        let server_name = server_name(parse.query, &parse.param_types);
        let mut out = BytesMut::new();
        build::parse(&mut out, &server_name, parse.query, &parse.param_types);
        let stmt = Arc::new(ClientStatement {
            server_name,
            sql: Arc::from(parse.query),
            parse: out.freeze(),
            classified: Mutex::new(None),
        });
        self.named
            .insert(parse.statement.to_owned(), Arc::clone(&stmt));
        stmt
    }

    pub fn get(&self, name: &str) -> Option<Arc<ClientStatement>> {
        self.named.get(name).cloned()
    }

    pub fn remove(&mut self, name: &str) -> Option<Arc<ClientStatement>> {
        self.named.remove(name)
    }

    pub fn clear(&mut self) {
        self.named.clear();
    }

    pub fn len(&self) -> usize {
        self.named.len()
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }
}

/// A Bind naming `statement` instead of the client's name; portal and everything after the
/// names (formats, parameter values, result formats) are copied as they are.
pub fn rewrite_bind(portal: &str, statement: &str, rest: &[u8]) -> Bytes {
    let len = 4 + portal.len() + 1 + statement.len() + 1 + rest.len();
    let mut out = BytesMut::with_capacity(len + 1);
    out.extend_from_slice(b"B");
    out.extend_from_slice(&(len as i32).to_be_bytes());
    out.extend_from_slice(portal.as_bytes());
    out.extend_from_slice(b"\0");
    out.extend_from_slice(statement.as_bytes());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(rest);
    out.freeze()
}

/// A Describe or Close ('S'tatement) naming the server-side statement.
pub fn rewrite_target(tag: u8, kind: u8, name: &str) -> Bytes {
    let len = 4 + 1 + name.len() + 1;
    let mut out = BytesMut::with_capacity(len + 1);
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&(len as i32).to_be_bytes());
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&[0]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::view;

    #[test]
    fn same_text_same_server_name_different_types_differ() {
        let a = server_name("select $1", &[23]);
        assert_eq!(a, server_name("select $1", &[23]));
        assert_ne!(a, server_name("select $1", &[25]));
        assert_ne!(a, server_name("select $2", &[23]));
        assert!(a.len() < 64, "fits NAMEDATALEN");
    }

    #[test]
    fn classification_is_remembered_per_catalog_generation() {
        use crate::router::classify::{classify, FunctionCatalog};
        let mut stmts = ClientStatements::default();
        let s = stmts.define(&ParseMessage {
            statement: "P_0",
            query: "select * from t",
            param_types: vec![],
        });
        let calls = std::cell::Cell::new(0);
        let make = |sql: &str| {
            calls.set(calls.get() + 1);
            Arc::new(classify(sql, &FunctionCatalog::default()))
        };
        let first = s.classification(7, make);
        let again = s.classification(7, make);
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(calls.get(), 1);
        s.classification(8, make);
        assert_eq!(calls.get(), 2, "a new catalog generation classifies again");
        assert_eq!(first.read_tables, ["t"]);
    }

    #[test]
    fn define_builds_a_parse_for_the_server_name() {
        let mut stmts = ClientStatements::default();
        let parsed = ParseMessage {
            statement: "P_0",
            query: "select 1",
            param_types: vec![],
        };
        let s = stmts.define(&parsed);
        let p = view::parse_message(&s.parse[5..]).unwrap();
        assert_eq!(p.statement, s.server_name);
        assert_eq!(p.query, "select 1");
        assert_eq!(stmts.get("P_0").unwrap().server_name, s.server_name);
        assert!(stmts.remove("P_0").is_some());
        assert!(stmts.get("P_0").is_none());
    }

    #[test]
    fn rewritten_bind_keeps_parameters() {
        let b = rewrite_bind("", "pgrelay_x", b"\0\x01\0\x01\0\0\0\x01z\0\0");
        let v = view::bind_message(&b[5..]).unwrap();
        assert_eq!(v.statement, "pgrelay_x");
        assert_eq!(v.rest, b"\0\x01\0\x01\0\0\0\x01z\0\0");
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        let d = rewrite_target(b'D', b'S', "pgrelay_x");
        assert_eq!(view::target_message(&d[5..]).unwrap().name, "pgrelay_x");
    }
}
