//! Who is connected right now, for `SHOW CLIENTS`: one record per logged-in client with its
//! user, database, address, age, what it is doing and which server it holds.
//!
//! The session updates its record on every transaction, so those updates are an atomic store
//! (state) or a compare under a per-client lock that allocates only when the server changes.
//! The registry-wide lock is taken only when a client arrives or leaves, and by `list`. It
//! must never decide anything about a client: it only reports.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use crate::config::HostAddr;

/// What a client is doing, as `SHOW CLIENTS` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Between transactions: holds no server connection (in transaction pooling).
    Idle,
    /// Running a transaction or statement on a server.
    Active,
    /// Has work to run and waits: for a server connection, a leader, or the end of a PAUSE.
    Waiting,
}

impl ClientState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
    }

    fn from_u8(n: u8) -> ClientState {
        match n {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            ClientState::Idle => 0,
            ClientState::Active => 1,
            ClientState::Waiting => 2,
        }
    }
}

/// One connected client as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Unique for the life of the process, in order of arrival.
    pub id: u64,
    pub user: String,
    pub database: String,
    pub addr: SocketAddr,
    /// Whether the client connected over TLS.
    pub tls: bool,
    pub connected_at: SystemTime,
    pub age: Duration,
    pub state: ClientState,
    /// The server connection it holds now, if any.
    pub server: Option<HostAddr>,
}

/// What the registry keeps per client; the session writes `state` and `server`.
#[derive(Debug)]
struct Record {
    id: u64,
    user: String,
    database: String,
    addr: SocketAddr,
    tls: bool,
    connected_at: SystemTime,
    connected: Instant,
    state: AtomicU8,
    /// The server the client used last, and whether it holds it now: kept between
    /// transactions so holding the same server again allocates nothing.
    server: Mutex<(Option<HostAddr>, bool)>,
    /// Woken when shutdown begins (see [`ShutdownSignal`]).
    waker: Mutex<Option<Waker>>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: AtomicU64,
    clients: Mutex<HashMap<u64, Arc<Record>>>,
    shutting_down: AtomicBool,
}

/// Every logged-in client. Cloning shares the same registry.
#[derive(Debug, Default, Clone)]
pub struct ClientRegistry {
    inner: Arc<Inner>,
}

/// A client's record; removed from the registry when dropped, however the client leaves.
#[derive(Debug)]
pub struct ClientEntry {
    record: Arc<Record>,
    registry: Arc<Inner>,
}

impl ClientRegistry {
    /// Adds a client that just logged in, in state `Idle` with no server.
    pub fn register(&self, user: &str, database: &str, addr: SocketAddr, tls: bool) -> ClientEntry {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let record = Arc::new(Record {
            id,
            user: user.to_owned(),
            database: database.to_owned(),
            addr,
            tls,
            connected_at: SystemTime::now(),
            connected: Instant::now(),
            state: AtomicU8::new(ClientState::Idle.as_u8()),
            server: Mutex::new((None, false)),
            waker: Mutex::new(None),
        });
        self.inner
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&record));
        ClientEntry {
            record,
            registry: Arc::clone(&self.inner),
        }
    }

    /// The records of every connected client, copied out so the registry's lock is held only
    /// for the copy.
    fn records(&self) -> Vec<Arc<Record>> {
        self.inner
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Every connected client, oldest first.
    pub fn list(&self) -> Vec<ClientInfo> {
        let mut clients: Vec<ClientInfo> = self
            .records()
            .iter()
            .map(|r| ClientInfo {
                id: r.id,
                user: r.user.clone(),
                database: r.database.clone(),
                addr: r.addr,
                tls: r.tls,
                connected_at: r.connected_at,
                age: r.connected.elapsed(),
                state: ClientState::from_u8(r.state.load(Ordering::Relaxed)),
                server: match &*r.server.lock().unwrap_or_else(|e| e.into_inner()) {
                    (Some(host), true) => Some(host.clone()),
                    _ => None,
                },
            })
            .collect();
        clients.sort_by_key(|c| c.id);
        clients
    }

    /// How many clients are connected.
    pub fn len(&self) -> usize {
        self.inner
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shutdown began: every client's [`ShutdownSignal`] fires, now or when next polled.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        for record in self.records() {
            let waker = record
                .waker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// Completes once shutdown has begun. Polling it again with the same task costs one atomic
/// load: the task's waker is stored (under a lock) only when it differs from the last one, so
/// a session can wait for shutdown in every pass of its relay loop.
#[derive(Debug)]
pub struct ShutdownSignal {
    record: Arc<Record>,
    registry: Arc<Inner>,
    stored: Option<Waker>,
}

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registry.shutting_down.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if !self
            .stored
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let waker = cx.waker().clone();
            *self.record.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
            self.stored = Some(waker);
            // A shutdown that took the wakers before this one was stored is seen here.
            if self.registry.shutting_down.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl ClientEntry {
    pub fn id(&self) -> u64 {
        self.record.id
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.registry.shutting_down.load(Ordering::SeqCst)
    }

    /// A future that completes once shutdown has begun.
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            record: Arc::clone(&self.record),
            registry: Arc::clone(&self.registry),
            stored: None,
        }
    }

    /// Records what the client does now. An atomic store: cheap enough for every transaction.
    pub fn set_state(&self, state: ClientState) {
        self.record.state.store(state.as_u8(), Ordering::Relaxed);
    }

    /// Records the server connection the client holds (None when it gave it back). Allocates
    /// only when the server differs from the one it held last.
    pub fn set_server(&self, server: Option<&HostAddr>) {
        let mut current = self.record.server.lock().unwrap_or_else(|e| e.into_inner());
        match server {
            Some(host) => {
                match current.0.as_mut() {
                    Some(last) if last == host => {}
                    Some(last) => last.set_to(host),
                    None => current.0 = Some(host.clone()),
                }
                current.1 = true;
            }
            None => current.1 = false,
        }
    }
}

impl Drop for ClientEntry {
    fn drop(&mut self) {
        self.registry
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.record.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_client_is_listed_while_connected_and_gone_after() {
        let registry = ClientRegistry::default();
        let a = registry.register("app", "shop", addr(40000), false);
        let b = registry.register("admin", "pgrelay", addr(40001), true);
        let listed = registry.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].user, "app");
        assert_eq!(listed[0].database, "shop");
        assert_eq!(listed[0].addr, addr(40000));
        assert_eq!(listed[0].state, ClientState::Idle);
        assert_eq!(listed[0].server, None);
        assert!(!listed[0].tls);
        assert!(listed[1].tls);
        assert!(listed[0].id < listed[1].id);
        drop(a);
        let listed = registry.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, b.id());
        drop(b);
        assert!(registry.is_empty());
    }

    #[test]
    fn state_and_server_follow_the_session() {
        let registry = ClientRegistry::default();
        let client = registry.register("app", "postgres", addr(40002), false);
        let replica = HostAddr {
            host: "127.0.0.1".into(),
            port: 5433,
        };
        client.set_state(ClientState::Waiting);
        assert_eq!(registry.list()[0].state, ClientState::Waiting);
        client.set_state(ClientState::Active);
        client.set_server(Some(&replica));
        let info = &registry.list()[0];
        assert_eq!(info.state, ClientState::Active);
        assert_eq!(info.server.as_ref(), Some(&replica));
        client.set_state(ClientState::Idle);
        client.set_server(None);
        let info = &registry.list()[0];
        assert_eq!(info.state, ClientState::Idle);
        assert_eq!(info.server, None);
        client.set_server(Some(&replica));
        assert_eq!(registry.list()[0].server.as_ref(), Some(&replica));
    }
}
