//! The function catalog per database: the built-in table of write functions, the config's
//! `write_functions`, and the user-defined VOLATILE functions the leader's `pg_proc` lists.
//!
//! A `SELECT f()` that calls a user function which may write must go to the leader, and only
//! the catalog of the database it runs in can say which functions those are. A database's
//! list is loaded the first time a client logs in to it, reloaded every
//! `function_refresh_interval`, and sooner after DDL through pgrelay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::classify::FunctionCatalog;
use crate::config::HostAddr;
use crate::topology::monitor::ProbeLogin;

/// User-defined functions that may write: VOLATILE, outside the system schemas.
pub const VOLATILE_FUNCTIONS_SQL: &str = "SELECT n.nspname || '.' || p.proname \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.provolatile = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

/// One database's catalog, swapped whole on reload.
pub type SharedCatalog = Arc<ArcSwap<FunctionCatalog>>;

pub struct Catalogs {
    write_functions: Mutex<Vec<String>>,
    by_database: Mutex<HashMap<String, (SharedCatalog, bool)>>,
    refresh: Notify,
}

impl Catalogs {
    pub fn new(write_functions: Vec<String>) -> Catalogs {
        Catalogs {
            write_functions: Mutex::new(write_functions),
            by_database: Mutex::new(HashMap::new()),
            refresh: Notify::new(),
        }
    }

    /// The catalog of `database`, and whether its user functions still need loading.
    pub fn for_database(&self, database: &str) -> (SharedCatalog, bool) {
        let mut map = self.by_database.lock().unwrap_or_else(|e| e.into_inner());
        let write_functions = self
            .write_functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (catalog, loaded) = map.entry(database.to_owned()).or_insert_with(|| {
            (
                Arc::new(ArcSwap::from_pointee(FunctionCatalog::new(
                    &write_functions,
                    Vec::new(),
                ))),
                false,
            )
        });
        (Arc::clone(catalog), !*loaded)
    }

    /// Installs the user functions loaded from `database`'s `pg_proc`.
    pub fn load(&self, database: &str, volatile_user_functions: Vec<String>) {
        let write_functions = self
            .write_functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (catalog, _) = self.for_database(database);
        let next = FunctionCatalog::new(&write_functions, volatile_user_functions);
        if next.generation() != catalog.load().generation() {
            tracing::info!(database, "function catalog changed");
            catalog.store(Arc::new(next));
        }
        let mut map = self.by_database.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(database) {
            entry.1 = true;
        }
    }

    /// Replaces the configured `write_functions` (on reload); takes effect at the next load.
    pub fn set_write_functions(&self, write_functions: Vec<String>) {
        *self
            .write_functions
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = write_functions;
        self.request_refresh();
    }

    pub fn databases(&self) -> Vec<String> {
        self.by_database
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Asks the refresher to reload now (after DDL).
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Resolves when a refresh was requested.
    pub async fn refresh_requested(&self) {
        self.refresh.notified().await;
    }
}

/// Loads `database`'s user-defined volatile functions from `leader` over a short-lived
/// control connection.
pub async fn load_volatile_functions(
    leader: &HostAddr,
    login: &ProbeLogin,
    database: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&leader.host)
        .port(leader.port)
        .user(&login.user)
        .dbname(database)
        .application_name("pgrelay catalog");
    if let Some(pw) = &login.password {
        cfg.password(pw.as_bytes());
    }
    let (ssl_mode, tls) = login.tls.postgres();
    cfg.ssl_mode(ssl_mode);
    let (client, connection) = cfg.connect(tls).await?;
    let task = tokio::spawn(async move {
        // Ends when the client below is dropped.
        let _ = connection.await;
    });
    let rows = client.simple_query(VOLATILE_FUNCTIONS_SQL).await;
    drop(client);
    let _ = task.await;
    Ok(rows?
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::{classify, Class};

    #[test]
    fn a_loaded_volatile_function_sends_its_select_to_the_leader() {
        let catalogs = Catalogs::new(vec![]);
        let (catalog, needs_load) = catalogs.for_database("app");
        assert!(needs_load);
        assert_eq!(
            classify("SELECT add_order(1)", &catalog.load()).class,
            Class::Read
        );
        catalogs.load("app", vec!["public.add_order".into()]);
        assert_ne!(
            classify("SELECT add_order(1)", &catalog.load()).class,
            Class::Read
        );
        let (_, needs_load) = catalogs.for_database("app");
        assert!(!needs_load);
        let (other, _) = catalogs.for_database("other");
        assert_eq!(
            classify("SELECT add_order(1)", &other.load()).class,
            Class::Read,
            "catalogs are per database"
        );
    }
}
