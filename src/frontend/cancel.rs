//! Cancel keys: the (process id, secret) pgrelay gives each client, and which server
//! connection that client is using right now.
//!
//! A client's CancelRequest arrives on a fresh connection carrying only its key; the registry
//! maps that key to the server connection currently running the client's query, so the
//! cancel reaches the right server process. Keys are random, so one client cannot guess
//! another's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::HostAddr;

/// The server process a client's query is running on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub host: HostAddr,
    pub process_id: i32,
    pub secret_key: i32,
}

/// The server a client used last, and whether it holds it now. The target stays when the
/// client gives the connection back, so the next transaction on the same server connection
/// (the common case) changes a flag instead of allocating a new target.
#[derive(Default)]
struct SlotState {
    target: Option<CancelTarget>,
    holding: bool,
}

type Slot = Arc<Mutex<SlotState>>;

#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), Slot>>,
}

/// A client's registration; removes itself from the registry when dropped.
pub struct CancelHandle {
    pub process_id: i32,
    pub secret_key: i32,
    slot: Slot,
    registry: Arc<CancelRegistry>,
}

impl CancelRegistry {
    /// Registers a new client under a fresh random key.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let slot: Slot = Arc::default();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // PostgreSQL process ids are positive; keep ours looking like them.
            let process_id = (rand::random::<u32>() >> 1) as i32;
            let secret_key = rand::random::<i32>();
            if process_id == 0 || map.contains_key(&(process_id, secret_key)) {
                continue;
            }
            map.insert((process_id, secret_key), Arc::clone(&slot));
            return CancelHandle {
                process_id,
                secret_key,
                slot,
                registry: Arc::clone(self),
            };
        }
    }

    /// The server a client with this key is using now, if any.
    pub fn target(&self, process_id: i32, secret_key: i32) -> Option<CancelTarget> {
        let slot = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(process_id, secret_key))
            .cloned()?;
        let state = slot.lock().unwrap_or_else(|e| e.into_inner());
        state.target.clone().filter(|_| state.holding)
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CancelHandle {
    /// The client now runs its queries on this server process.
    pub fn hold(&self, host: &HostAddr, process_id: i32, secret_key: i32) {
        let mut state = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match state.target.as_mut() {
            // Another connection, usually to a server held before: its address is copied into
            // the buffer already here.
            Some(t) => {
                if &t.host != host {
                    t.host.set_to(host);
                }
                t.process_id = process_id;
                t.secret_key = secret_key;
            }
            None => {
                state.target = Some(CancelTarget {
                    host: host.clone(),
                    process_id,
                    secret_key,
                })
            }
        }
        state.holding = true;
    }

    /// The client holds no server connection: a cancel now reaches nothing.
    pub fn release(&self) {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).holding = false;
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(self.process_id, self.secret_key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_maps_to_current_server_until_dropped() {
        let reg = Arc::new(CancelRegistry::default());
        let h = reg.register();
        assert!(h.process_id > 0);
        assert_eq!(reg.target(h.process_id, h.secret_key), None);
        let t = CancelTarget {
            host: HostAddr {
                host: "127.0.0.1".into(),
                port: 5432,
            },
            process_id: 42,
            secret_key: 7,
        };
        h.hold(&t.host, t.process_id, t.secret_key);
        assert_eq!(reg.target(h.process_id, h.secret_key), Some(t.clone()));
        assert_eq!(reg.target(h.process_id, h.secret_key.wrapping_add(1)), None);
        // Between transactions the client holds no server: its cancel reaches nothing.
        h.release();
        assert_eq!(reg.target(h.process_id, h.secret_key), None);
        h.hold(&t.host, t.process_id, t.secret_key);
        assert_eq!(reg.target(h.process_id, h.secret_key), Some(t.clone()));
        h.hold(&t.host, 43, 7);
        assert_eq!(
            reg.target(h.process_id, h.secret_key).map(|t| t.process_id),
            Some(43)
        );
        let (pid, key) = (h.process_id, h.secret_key);
        drop(h);
        assert_eq!(reg.target(pid, key), None);
        assert!(reg.is_empty());
    }
}
