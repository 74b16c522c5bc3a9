//! Per-server pools of authenticated server connections.
//!
//! A pool belongs to one (server, user, database) and bounds how many connections exist to it
//! (`max_server_connections`). Checkout waits at most `query_wait_timeout` for a free slot,
//! then reuses an idle connection or opens a new one. A connection comes back through
//! `release` only when its owner knows it is idle at ReadyForQuery; any other way out
//! (`discard`, drop) closes it, so a connection in an unknown state is never reused.
//!
//! Every host has a role epoch, bumped by `Pools::retire_host` when the topology monitor sees
//! the server change role (leader demoted, fenced, gone, or a replica promoted). A connection
//! remembers the epoch it was opened under; one from an older epoch is never handed out again
//! and is closed when its owner gives it back, so a session that held a leader connection
//! across a failover cannot return it for the next writer to use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::backend::{BackendError, ConnectOptions, ServerConn};
use crate::config::HostAddr;
use crate::protocol::sqlstate;

#[derive(Debug, Error)]
pub enum PoolError {
    #[error("no server connection to {host} became free within {waited:?} (query_wait_timeout)")]
    WaitTimeout { host: String, waited: Duration },
    #[error("pool for {host} is closed")]
    Closed { host: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl PoolError {
    pub fn sqlstate(&self) -> &str {
        match self {
            PoolError::Backend(e) => e.sqlstate(),
            PoolError::WaitTimeout { .. } | PoolError::Closed { .. } => {
                sqlstate::CONNECTION_FAILURE
            }
        }
    }
}

/// Idle connections older than this are checked for a server-side close before reuse.
const STALE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// Who a pool's connections log in as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub host: HostAddr,
    pub user: String,
    pub database: String,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Limits and timeouts shared by every pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// `[cluster] tls` for new connections.
    pub tls: crate::tls::ServerTls,
    pub max_size: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a reset query (DISCARD ALL) may take before the connection is dropped instead.
    pub reset_timeout: Duration,
    /// Prepared statements kept per connection (transaction pooling re-prepares on demand).
    pub max_prepared_statements: usize,
}

/// Counters one pool exposes to metrics and the admin console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub key: PoolKey,
    pub active: usize,
    pub idle: usize,
    pub waiting: usize,
}

pub struct Pool {
    pub key: PoolKey,
    /// The password new connections log in with; replaced when the config's changes.
    password: ArcSwapOption<String>,
    /// Swapped whole by `Pools::set_settings` (config reload).
    settings: ArcSwap<PoolSettings>,
    /// `settings.idle_timeout` in nanoseconds, read on every checkout without an `ArcSwap` load.
    idle_timeout_ns: AtomicU64,
    /// Slots a smaller `max_size` took away that were in use then: the next permits to come
    /// back are forgotten instead of freed.
    shrink_debt: AtomicUsize,
    idle: Mutex<Vec<IdleConn>>,
    /// The host's role epoch and load, shared by every pool to that host.
    host: Arc<HostState>,
    permits: Arc<Semaphore>,
    active: AtomicUsize,
    waiting: AtomicUsize,
}

/// What every pool to one host shares.
#[derive(Debug, Default)]
struct HostState {
    /// The host's role epoch (see the module documentation).
    epoch: AtomicU64,
    /// Connections to the host checked out right now, over every pool: the load routing
    /// balances replicas by.
    active: AtomicUsize,
}

/// An idle connection and the role epoch of its host when it was opened.
struct IdleConn {
    conn: Box<ServerConn>,
    epoch: u64,
}

impl Pool {
    /// A pool whose host has its own role epoch (see `Pools` for pools sharing one).
    pub fn new(key: PoolKey, password: Option<String>, settings: PoolSettings) -> Arc<Pool> {
        Pool::with_host(key, password, settings, Arc::default())
    }

    fn with_host(
        key: PoolKey,
        password: Option<String>,
        settings: PoolSettings,
        host: Arc<HostState>,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            key,
            password: ArcSwapOption::from(password.map(Arc::new)),
            permits: Arc::new(Semaphore::new(settings.max_size)),
            idle_timeout_ns: AtomicU64::new(nanos(settings.idle_timeout)),
            settings: ArcSwap::from_pointee(settings),
            shrink_debt: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            host,
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Hands out an idle connection, or opens one, waiting at most `wait` for a free slot.
    pub async fn checkout(self: &Arc<Self>, wait: Duration) -> Result<PooledConn, PoolError> {
        // A free slot is taken at once, without arming a timer.
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => Ok(Ok(permit)),
            Err(TryAcquireError::Closed) => Ok(Err(())),
            Err(TryAcquireError::NoPermits) => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let permit =
                    tokio::time::timeout(wait, Arc::clone(&self.permits).acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                permit.map(|p| p.map_err(drop))
            }
        };
        let permit = match permit {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => {
                return Err(PoolError::Closed {
                    host: self.key.host.to_string(),
                })
            }
            Err(_) => {
                return Err(PoolError::WaitTimeout {
                    host: self.key.host.to_string(),
                    waited: wait,
                })
            }
        };
        // Read before connecting: if the host changes role while we connect, the new
        // connection already counts as old and is not pooled after use.
        let epoch = self.epoch();
        let conn = match self.take_idle(epoch, Instant::now()) {
            Some(conn) => conn,
            None => Box::new(self.connect().await?),
        };
        Ok(self.hand_out(conn, epoch, permit))
    }

    /// An idle connection, if one is there and a slot is free, without waiting or
    /// connecting: the common checkout, done without a future. `now` is the caller's clock
    /// reading (one per transaction serves the pool too).
    pub fn try_checkout(self: &Arc<Self>, now: Instant) -> Option<PooledConn> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        let epoch = self.epoch();
        let conn = self.take_idle(epoch, now)?;
        Some(self.hand_out(conn, epoch, permit))
    }

    fn hand_out(
        self: &Arc<Self>,
        conn: Box<ServerConn>,
        epoch: u64,
        permit: OwnedSemaphorePermit,
    ) -> PooledConn {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.host.active.fetch_add(1, Ordering::Relaxed);
        PooledConn {
            conn: Some(conn),
            epoch,
            pool: Arc::clone(self),
            permit: Some(permit),
        }
    }

    /// The host's current role epoch.
    pub fn epoch(&self) -> u64 {
        self.host.epoch.load(Ordering::Acquire)
    }

    /// Connections to this pool's host checked out right now, over every user and database.
    pub fn active_on_host(&self) -> usize {
        self.host.active.load(Ordering::Relaxed)
    }

    fn take_idle(&self, epoch: u64, now: Instant) -> Option<Box<ServerConn>> {
        let idle_timeout = Duration::from_nanos(self.idle_timeout_ns.load(Ordering::Relaxed));
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = idle.pop() {
            let idle_for = now.saturating_duration_since(entry.conn.last_used);
            // A connection used a moment ago is trusted without a syscall (a server that died
            // since is noticed on first use, and reads are then replayed elsewhere); one idle
            // longer is checked for a close or a FATAL the server sent meanwhile.
            if entry.epoch == epoch
                && idle_for < idle_timeout
                && (idle_for < STALE_CHECK_AFTER || !entry.conn.is_stale())
            {
                return Some(entry.conn);
            }
        }
        None
    }

    /// The password for connections opened from now on (connections already open stay).
    pub fn set_password(&self, password: Option<&str>) {
        if self.password.load().as_deref().map(String::as_str) != password {
            self.password
                .store(password.map(|p| Arc::new(p.to_owned())));
        }
    }

    async fn connect(&self) -> Result<ServerConn, BackendError> {
        let settings = self.settings.load();
        let password = self.password.load_full();
        ServerConn::connect(&ConnectOptions {
            host: &self.key.host,
            user: &self.key.user,
            password: password.as_deref().map(String::as_str),
            database: &self.key.database,
            connect_timeout: settings.connect_timeout,
            params: &[],
            max_prepared_statements: settings.max_prepared_statements,
            tls: &settings.tls,
        })
        .await
    }

    /// Pools a connection opened under `epoch`, or closes it if its host changed role since.
    fn put_idle(&self, mut conn: Box<ServerConn>, epoch: u64, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock `retire` clears under, so a connection cannot slip in
        // between a bump and the clearing.
        if epoch != self.epoch() {
            tracing::debug!(host = %self.key.host, "server changed role while the connection was in use; closing it");
            return;
        }
        conn.last_used = now;
        idle.push(IdleConn { conn, epoch });
    }

    /// Closes idle connections that sat unused past `idle_timeout`.
    pub fn prune_idle(&self) {
        let timeout = self.settings.load().idle_timeout;
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| c.conn.last_used.elapsed() < timeout);
    }

    /// Closes every idle connection (e.g. when the server changed role).
    pub fn clear_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Closes every idle connection after the host's epoch was bumped.
    fn retire(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.epoch();
        idle.retain(|c| c.epoch == current);
    }

    /// Takes new settings (config reload). A larger `max_size` frees the extra slots at once;
    /// a smaller one forgets free slots now and the rest as their connections come back.
    /// Callers serialise calls (`Pools::set_settings` holds the pool map's lock).
    fn set_settings(&self, settings: PoolSettings) {
        let (old, new) = (self.settings.load().max_size, settings.max_size);
        self.idle_timeout_ns
            .store(nanos(settings.idle_timeout), Ordering::Relaxed);
        self.settings.store(Arc::new(settings));
        if new > old {
            let mut grow = new - old;
            let repaid = self
                .shrink_debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d.saturating_sub(grow))
                })
                .unwrap_or(0)
                .min(grow);
            grow -= repaid;
            self.permits.add_permits(grow);
        } else if new < old {
            let shrink = old - new;
            let forgotten = self.permits.forget_permits(shrink);
            self.shrink_debt
                .fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            key: self.key.clone(),
            active: self.active.load(Ordering::Relaxed),
            idle: self.idle.lock().map(|v| v.len()).unwrap_or(0),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }
}

/// A checked-out connection. Dropping it closes the connection; only `release` returns it.
pub struct PooledConn {
    /// Boxed: a connection moves in and out of the idle list every transaction.
    conn: Option<Box<ServerConn>>,
    /// The host's role epoch when this connection was handed out.
    epoch: u64,
    pool: Arc<Pool>,
    /// Taken on drop: freed, or forgotten when the pool shrank (see `Pool::shrink_debt`).
    permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConn")
            .field("conn", &self.conn)
            .finish()
    }
}

impl PooledConn {
    pub fn conn(&mut self) -> &mut ServerConn {
        // `conn` is Some from checkout until release/discard consume self.
        match self.conn.as_mut() {
            Some(c) => c,
            None => unreachable!("PooledConn used after release"),
        }
    }

    pub fn conn_ref(&self) -> &ServerConn {
        match self.conn.as_ref() {
            Some(c) => c,
            None => unreachable!("PooledConn used after release"),
        }
    }

    pub fn host(&self) -> &HostAddr {
        &self.pool.key.host
    }

    /// False once the server changed role after this connection was handed out (e.g. the
    /// leader it was opened to was demoted or fenced). A session that keeps a connection
    /// across transactions (session pooling) must check this before each write transaction
    /// and take a new one if it is false.
    pub fn is_current(&self) -> bool {
        self.epoch == self.pool.epoch()
    }

    /// Returns an idle connection (ReadyForQuery 'I', nothing unread) to the pool; closes it
    /// instead if its server changed role meanwhile.
    pub fn release(self) {
        self.release_at(Instant::now());
    }

    /// `release`, with the caller's reading of the clock as the connection's last use.
    pub fn release_at(mut self, now: Instant) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_idle(conn, self.epoch, now);
        }
    }

    /// Runs the reset query, then returns the connection; drops it if the reset fails.
    pub async fn release_after_reset(mut self, reset_query: &str) {
        if let Some(mut conn) = self.conn.take() {
            if reset_query.is_empty() || !self.is_current() {
                // A stale connection is closed by put_idle; no point resetting it first.
                self.pool.put_idle(conn, self.epoch, Instant::now());
                return;
            }
            match conn
                .run_internal(reset_query, self.pool.settings.load().reset_timeout)
                .await
            {
                Ok(()) => {
                    conn.applied.clear();
                    self.pool.put_idle(conn, self.epoch, Instant::now());
                }
                Err(e) => {
                    tracing::warn!(host = %self.pool.key.host, error = %e, "server reset failed; closing connection")
                }
            }
        }
    }

    /// Closes the connection: its state is unknown or its server is no longer wanted.
    pub fn discard(mut self) {
        self.conn = None;
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        self.pool.active.fetch_sub(1, Ordering::Relaxed);
        self.pool.host.active.fetch_sub(1, Ordering::Relaxed);
        let shrinking = self
            .pool
            .shrink_debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if let (true, Some(permit)) = (shrinking, self.permit.take()) {
            permit.forget();
        }
    }
}

/// Every pool, created on first use for a (server, user, database).
pub struct Pools {
    settings: RwLock<PoolSettings>,
    map: RwLock<HashMap<PoolKey, Arc<Pool>>>,
    /// Role epoch and load per host, shared by all of that host's pools.
    hosts: Mutex<HashMap<HostAddr, Arc<HostState>>>,
}

impl Pools {
    pub fn new(settings: PoolSettings) -> Pools {
        Pools {
            settings: RwLock::new(settings),
            map: RwLock::new(HashMap::new()),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    fn host_state(&self, host: &HostAddr) -> Arc<HostState> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(hosts.entry(host.clone()).or_default())
    }

    /// The host changed role: connections opened before now are never handed out again, idle
    /// ones are closed at once, and ones in use are closed when given back.
    pub fn retire_host(&self, host: &HostAddr) {
        self.host_state(host).epoch.fetch_add(1, Ordering::AcqRel);
        for pool in self.all() {
            if &pool.key.host == host {
                pool.retire();
            }
        }
    }

    /// The pool for `key`, created if it does not exist yet with the password `password`
    /// gives. That is asked under the lock `set_passwords` takes, so a pool is created either
    /// with the new password or before a reload gives every pool the new one.
    pub fn get(&self, key: &PoolKey, password: impl FnOnce() -> Option<String>) -> Arc<Pool> {
        if let Some(p) = self.map.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Arc::clone(p);
        }
        let host = self.host_state(&key.host);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(key.clone()).or_insert_with(|| {
            // Read under the map lock, which `set_settings` holds: a pool is created either
            // with the new settings or before they are applied to every pool.
            let settings = self
                .settings
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            Pool::with_host(key.clone(), password(), settings, host)
        }))
    }

    /// New limits and timeouts (config reload): pools created from now on use them, and every
    /// existing pool takes them too (see `Pool::set_settings` for a changed `max_size`).
    pub fn set_settings(&self, settings: PoolSettings) {
        let map = self.map.write().unwrap_or_else(|e| e.into_inner());
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = settings.clone();
        for pool in map.values() {
            pool.set_settings(settings.clone());
        }
    }

    /// New server passwords (config reload): every pool takes the one `password_of` gives for
    /// its server user, for the connections it opens from now on.
    pub fn set_passwords(&self, password_of: impl Fn(&str) -> Option<Option<String>>) {
        for pool in self.map.write().unwrap_or_else(|e| e.into_inner()).values() {
            if let Some(password) = password_of(&pool.key.user) {
                pool.set_password(password.as_deref());
            }
        }
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn stats(&self) -> Vec<PoolStats> {
        let mut stats: Vec<PoolStats> = self.all().iter().map(|p| p.stats()).collect();
        stats.sort_by(|a, b| {
            (a.key.host.to_string(), &a.key.user, &a.key.database).cmp(&(
                b.key.host.to_string(),
                &b.key.user,
                &b.key.database,
            ))
        });
        stats
    }

    /// Closes idle connections to `host` (its role changed or it is gone).
    pub fn clear_host(&self, host: &HostAddr) {
        for pool in self.all() {
            if &pool.key.host == host {
                pool.clear_idle();
            }
        }
    }

    pub fn prune_idle(&self) {
        for pool in self.all() {
            pool.prune_idle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A stand-in server that lets anyone in without a password (AuthenticationOk,
    /// BackendKeyData, ReadyForQuery) and then keeps each connection open, silent.
    async fn trusting_server() -> (HostAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            let mut pid = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut len = [0u8; 4];
                stream.read_exact(&mut len).await.unwrap();
                let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                stream.read_exact(&mut startup).await.unwrap();
                pid += 1;
                let mut reply = Vec::new();
                reply.extend_from_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
                reply.extend_from_slice(&[b'K', 0, 0, 0, 12]);
                reply.extend_from_slice(&i32::to_be_bytes(pid));
                reply.extend_from_slice(&[0, 0, 0, 7]);
                reply.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
                stream.write_all(&reply).await.unwrap();
                held.push(stream);
            }
        });
        let host = HostAddr {
            host: "127.0.0.1".into(),
            port,
        };
        (host, server)
    }

    fn pools() -> Pools {
        Pools::new(PoolSettings {
            tls: crate::tls::ServerTls::from_config(&crate::config::ClusterConfig {
                tls: crate::config::ServerTlsMode::Disable,
                ..Default::default()
            })
            .unwrap(),
            max_size: 4,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            reset_timeout: Duration::from_secs(2),
            max_prepared_statements: 16,
        })
    }

    fn key(host: &HostAddr, user: &str) -> PoolKey {
        PoolKey {
            host: host.clone(),
            user: user.into(),
            database: "db".into(),
        }
    }

    const WAIT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn idle_connections_are_reused_until_the_host_is_retired() {
        let (host, _server) = trusting_server().await;
        let pools = pools();
        let pool = pools.get(&key(&host, "app"), || None);
        let first = pool.checkout(WAIT).await.unwrap();
        let first_id = first.conn_ref().id;
        first.release();
        assert_eq!(pool.stats().idle, 1);
        let again = pool.checkout(WAIT).await.unwrap();
        assert_eq!(again.conn_ref().id, first_id, "idle connection reused");
        again.release();

        pools.retire_host(&host);
        assert_eq!(pool.stats().idle, 0, "idle connections closed at once");
        let fresh = pool.checkout(WAIT).await.unwrap();
        assert_ne!(fresh.conn_ref().id, first_id);
        assert!(fresh.is_current());
        fresh.release();
        assert_eq!(
            pool.stats().idle,
            1,
            "connections opened after the change are pooled"
        );
    }

    #[tokio::test]
    async fn every_pool_to_a_host_counts_its_load_and_try_checkout_takes_only_idle_ones() {
        let (host, _server) = trusting_server().await;
        let pools = pools();
        let app = pools.get(&key(&host, "app"), || None);
        let other = pools.get(&key(&host, "other"), || None);
        assert!(
            app.try_checkout(Instant::now()).is_none(),
            "nothing idle yet: no connecting here"
        );
        let a = app.checkout(WAIT).await.unwrap();
        let b = other.checkout(WAIT).await.unwrap();
        assert_eq!((app.active_on_host(), other.active_on_host()), (2, 2));
        let a_id = a.conn_ref().id;
        a.release();
        assert_eq!(other.active_on_host(), 1);
        let again = app
            .try_checkout(Instant::now())
            .expect("the idle connection, at once");
        assert_eq!(again.conn_ref().id, a_id);
        assert_eq!(app.active_on_host(), 2);
        again.discard();
        b.release();
        assert_eq!(app.active_on_host(), 0);
        let (elsewhere, _server2) = trusting_server().await;
        let far = pools.get(&key(&elsewhere, "app"), || None);
        let c = far.checkout(WAIT).await.unwrap();
        assert_eq!((far.active_on_host(), app.active_on_host()), (1, 0));
        c.release();
    }

    #[tokio::test]
    async fn connection_in_use_during_a_role_change_is_closed_when_given_back() {
        let (host, _server) = trusting_server().await;
        let pools = pools();
        // Two pools (users) on the same host share its epoch.
        let app = pools.get(&key(&host, "app"), || None);
        let other = pools.get(&key(&host, "other"), || None);
        let in_use = app.checkout(WAIT).await.unwrap();
        let in_use_other = other.checkout(WAIT).await.unwrap();
        let reset_later = app.checkout(WAIT).await.unwrap();
        assert!(in_use.is_current());

        pools.retire_host(&host);
        assert!(!in_use.is_current());
        assert!(!in_use_other.is_current());
        in_use.release();
        in_use_other.release();
        reset_later.release_after_reset("DISCARD ALL").await;
        assert_eq!(app.stats().idle, 0);
        assert_eq!(other.stats().idle, 0);
        assert_eq!(app.stats().active, 0);
    }

    #[tokio::test]
    async fn reloaded_max_size_applies_to_existing_pools() {
        let (host, _server) = trusting_server().await;
        let pools = pools();
        let pool = pools.get(&key(&host, "app"), || None);
        let a = pool.checkout(WAIT).await.unwrap();
        let b = pool.checkout(WAIT).await.unwrap();
        let shrunk = PoolSettings {
            max_size: 1,
            ..pool.settings.load().as_ref().clone()
        };
        pools.set_settings(shrunk.clone());
        a.release();
        b.release();
        let only = pool.checkout(WAIT).await.unwrap();
        let short = Duration::from_millis(50);
        assert!(
            matches!(
                pool.checkout(short).await,
                Err(PoolError::WaitTimeout { .. })
            ),
            "one slot left after shrinking to 1"
        );
        pools.set_settings(PoolSettings {
            max_size: 3,
            ..shrunk
        });
        let two = pool.checkout(short).await.unwrap();
        let three = pool.checkout(short).await.unwrap();
        assert!(
            pool.checkout(short).await.is_err(),
            "three slots after growing to 3"
        );
        for conn in [only, two, three] {
            conn.release();
        }
        let late = pools.get(&key(&host, "late"), || None);
        assert_eq!(
            late.settings.load().max_size,
            3,
            "new pools use the new settings"
        );
    }

    #[tokio::test]
    async fn retiring_one_host_leaves_the_others_alone() {
        let (a, _sa) = trusting_server().await;
        let (b, _sb) = trusting_server().await;
        let pools = pools();
        let pa = pools.get(&key(&a, "app"), || None);
        let pb = pools.get(&key(&b, "app"), || None);
        pa.checkout(WAIT).await.unwrap().release();
        pb.checkout(WAIT).await.unwrap().release();
        pools.retire_host(&a);
        assert_eq!(pa.stats().idle, 0);
        assert_eq!(pb.stats().idle, 1);
        // A pool created after the retirement starts at the host's current epoch.
        let late = pools.get(&key(&a, "late"), || None);
        let conn = late.checkout(WAIT).await.unwrap();
        assert!(conn.is_current());
        conn.release();
        assert_eq!(late.stats().idle, 1);
    }
}
