//! pgrelay: a Layer-7 PostgreSQL proxy. This file wires the modules together; the logic lives
//! in them (see DESIGN.md for the map).

pub mod admin;
pub mod auth;
pub mod backend;
pub mod cache;
pub mod config;
pub mod frontend;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod tls;
pub mod topology;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;

use auth::users::Users;
use config::Config;
use frontend::cancel::CancelRegistry;
use frontend::registry::ClientRegistry;
use frontend::ClientCounts;
use metrics::Metrics;
use pool::{PoolSettings, Pools};
use router::bans::Bans;
use router::catalog::Catalogs;
use router::classify::ClassifyCache;
use topology::monitor::{self, MonitorSettings, ProbeLogin};
use topology::{ReadRules, Snapshot, Topology};

/// State every task shares. Config and users are swapped whole on reload; the rest is
/// internally synchronised.
pub struct Shared {
    pub config: ArcSwap<Config>,
    pub users: ArcSwap<Users>,
    pub pools: Pools,
    pub metrics: Metrics,
    pub topology: Arc<Topology>,
    pub cancels: Arc<CancelRegistry>,
    pub clients: ClientCounts,
    /// Classifications by statement text, shared by every client.
    pub classifier: ClassifyCache,
    /// Function catalogs per database (which calls make a SELECT a write).
    pub catalogs: Arc<Catalogs>,
    /// Replicas left out of routing after a failure.
    pub bans: Bans,
    /// Round-robin position among equally loaded replicas.
    pub round_robin: AtomicUsize,
    /// Cache-aside for reads; None when `[cache] enabled = false`.
    pub cache: Option<cache::Cache>,
    /// Flips to true once, when shutdown begins.
    pub shutdown: watch::Sender<bool>,
    /// Every logged-in client, for `SHOW CLIENTS`.
    pub client_registry: ClientRegistry,
    /// True between an operator's `PAUSE` and `RESUME`: sessions hold new transactions
    /// (`admin::console::wait_while_paused`).
    pub paused: watch::Sender<bool>,
    /// The file the config came from, re-read on SIGHUP and `RELOAD` (None: not reloadable).
    pub config_path: Option<PathBuf>,
    /// The topology monitor's settings; a reload sends new ones (lag budget, probe timing).
    pub monitor_settings: watch::Sender<MonitorSettings>,
    /// TLS offered to clients; a reload loads the certificate and key again (rotation).
    pub client_tls: ArcSwap<tls::ClientTls>,
    /// TLS to the servers (`[cluster] tls`), fixed at start.
    pub server_tls: tls::ServerTls,
}

impl Shared {
    /// Begins a graceful shutdown: listeners stop, and each client is told at its next point
    /// between transactions.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        self.client_registry.begin_shutdown();
    }
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("user {user:?}: {source}")]
    User {
        user: String,
        source: auth::AuthError,
    },
    #[error("cache: {0}")]
    Cache(#[from] cache::CacheError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsConfigError),
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
}

/// Distinct statement texts whose classification is kept.
const CLASSIFY_CACHE_ENTRIES: usize = 10_000;

fn pool_settings(config: &Config, tls: &tls::ServerTls) -> PoolSettings {
    PoolSettings {
        tls: tls.clone(),
        max_size: config.server.max_server_connections,
        connect_timeout: config.cluster.server_connect_timeout,
        idle_timeout: config.cluster.server_idle_timeout,
        reset_timeout: config.cluster.server_connect_timeout,
        max_prepared_statements: config.server.max_prepared_statements,
    }
}

/// The login the topology monitor uses: `[cluster] monitor_user` (with `monitor_password`,
/// else that user's server password) when set, otherwise the first configured user pgrelay
/// can log in as; database `monitor_database`.
fn probe_login(users: &Users, config: &Config, tls: &tls::ServerTls) -> ProbeLogin {
    let cluster = &config.cluster;
    if let Some(user) = &cluster.monitor_user {
        let configured = users.get(user);
        return ProbeLogin {
            user: configured
                .as_ref()
                .map_or_else(|| user.clone(), |u| u.server_user.clone()),
            password: cluster
                .monitor_password
                .clone()
                .or_else(|| configured.and_then(|u| u.server_password.clone())),
            database: cluster.monitor_database.clone(),
            tls: tls.clone(),
        };
    }
    let entry = config
        .users
        .iter()
        .filter_map(|u| users.get(&u.name))
        .find(|u| u.server_password.is_some())
        .or_else(|| config.users.first().and_then(|u| users.get(&u.name)));
    ProbeLogin {
        user: entry
            .as_ref()
            .map_or_else(|| "postgres".to_owned(), |u| u.server_user.clone()),
        password: cluster
            .monitor_password
            .clone()
            .or_else(|| entry.and_then(|u| u.server_password.clone())),
        database: cluster.monitor_database.clone(),
        tls: tls.clone(),
    }
}

/// Reacts to each new snapshot before it is published: servers that changed role have their
/// pooled connections retired (so nothing opened to a former leader is reused), leader
/// changes and leaderless periods are logged and counted, gauges are refreshed.
fn on_topology_change(shared: &Arc<Shared>, before: &Snapshot, after: &Snapshot) {
    let change = topology::transition(before, after);
    for host in &change.retired {
        shared.pools.retire_host(host);
    }
    if let Some(lost) = &change.lost_leader {
        let state = after
            .servers
            .iter()
            .find(|s| &s.host == lost)
            .map_or("gone", |s| s.role.as_str());
        tracing::warn!(leader = %lost, now = state, "leader lost; writes wait for a new one (failover_timeout)");
    }
    if let Some((from, to)) = &change.new_leader {
        shared.metrics.topology.leader_changes.inc();
        tracing::warn!(from = %from, to = %to, "leader changed");
    }
    if let Some(gap) = change.leaderless_for {
        shared
            .metrics
            .topology
            .failover_seconds
            .observe(gap.as_secs_f64());
        if let Some(leader) = after.leader() {
            tracing::info!(leader = %leader.host, without_leader = ?gap, "leader available");
        }
    }
    shared.metrics.record_topology(after);
}

/// How the monitor probes and judges, from `[cluster]`.
fn monitor_settings(config: &Config) -> MonitorSettings {
    let cluster = &config.cluster;
    MonitorSettings {
        probe_interval: cluster.probe_interval,
        probe_timeout: cluster.probe_timeout,
        rules: ReadRules {
            max_replica_lag: cluster.max_replica_lag,
            ban_time: cluster.ban_time,
        },
        patroni: cluster.patroni.clone(),
    }
}

/// Runs pgrelay until SIGTERM/SIGINT, then drains clients for up to `shutdown_timeout`.
/// `config_path` is where `config` was read from, re-read on SIGHUP and console `RELOAD`.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), StartError> {
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let admin_listener = TcpListener::bind(config.server.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.server.admin_listen,
            source,
        })?;
    let users =
        Users::from_config(&config).map_err(|(user, source)| StartError::User { user, source })?;
    let (shutdown, _) = watch::channel(false);
    let (paused, _) = watch::channel(false);
    let (monitor_settings_tx, _) = watch::channel(monitor_settings(&config));
    let client_tls = tls::ClientTls::from_config(&config.server)?;
    let server_tls = tls::ServerTls::from_config(&config.cluster)?;
    let metrics = Metrics::new();
    let cache = if config.cache.enabled {
        Some(cache::Cache::from_config(&config.cache, &metrics)?)
    } else {
        None
    };
    let shared = Arc::new(Shared {
        pools: Pools::new(pool_settings(&config, &server_tls)),
        metrics,
        cache,
        topology: Arc::new(Topology::new(&config.cluster.hosts)),
        cancels: Arc::new(CancelRegistry::default()),
        clients: ClientCounts::default(),
        classifier: ClassifyCache::new(CLASSIFY_CACHE_ENTRIES),
        catalogs: Arc::new(Catalogs::new(config.cluster.write_functions.clone())),
        bans: Bans::default(),
        round_robin: AtomicUsize::new(0),
        users: ArcSwap::from_pointee(users),
        config: ArcSwap::from_pointee(config),
        shutdown,
        client_registry: ClientRegistry::default(),
        paused,
        config_path,
        monitor_settings: monitor_settings_tx,
        client_tls: ArcSwap::from_pointee(client_tls),
        server_tls,
    });
    let config = shared.config.load_full();
    let login = probe_login(&shared.users.load(), &config, &shared.server_tls);
    let monitor = monitor::start(
        &shared.topology,
        config.cluster.hosts.clone(),
        login.clone(),
        monitor_settings(&config),
    )
    .await
    .follow_settings(shared.monitor_settings.subscribe());
    let first = shared.topology.snapshot();
    shared.metrics.record_topology(&first);
    match first.leader() {
        Some(l) => tracing::info!(leader = %l.host, "leader found"),
        None => tracing::warn!("no leader found yet; writes will wait for one"),
    }
    for s in &first.servers {
        tracing::info!(host = %s.host, role = s.role.as_str(), error = ?s.last_error, "server probed");
    }

    let monitor_shared = Arc::clone(&shared);
    tokio::spawn(
        monitor.run(Arc::clone(&shared.topology), move |before, after| {
            on_topology_change(&monitor_shared, before, after)
        }),
    );
    tokio::spawn(refresh_catalogs(Arc::clone(&shared), login.clone()));
    let reaper_shared = Arc::clone(&shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            reaper_shared.pools.prune_idle();
        }
    });
    // Before /healthz answers: SIGHUP's default action would end the process.
    spawn_signal_handler(Arc::clone(&shared))?;
    tokio::spawn(admin::http::serve(Arc::clone(&shared), admin_listener));
    tracing::info!(listen = %config.server.listen, admin = %config.server.admin_listen, pool_mode = ?config.server.pool_mode, "pgrelay started");

    frontend::serve(Arc::clone(&shared), listener).await;

    let deadline = Instant::now() + config.server.shutdown_timeout;
    while shared.metrics.client_connections.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = shared.metrics.client_connections.get();
    if left > 0 {
        tracing::warn!(
            clients = left,
            "shutdown timeout reached; closing remaining clients"
        );
    }
    tracing::info!("pgrelay stopped");
    Ok(())
}

/// Reloads every known database's user-defined volatile functions from the leader, every
/// `function_refresh_interval` and when DDL through pgrelay asks for it.
async fn refresh_catalogs(shared: Arc<Shared>, login: ProbeLogin) {
    loop {
        let interval = shared.config.load().cluster.function_refresh_interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shared.catalogs.refresh_requested() => {}
        }
        let Some(leader) = shared.topology.snapshot().leader().map(|l| l.host.clone()) else {
            continue;
        };
        let timeout = shared.config.load().cluster.probe_timeout * 5;
        for database in shared.catalogs.databases() {
            let load = router::catalog::load_volatile_functions(&leader, &login, &database);
            match tokio::time::timeout(timeout, load).await {
                Ok(Ok(names)) => shared.catalogs.load(&database, names),
                Ok(Err(e)) => {
                    tracing::warn!(database, error = %e, "loading the function catalog failed")
                }
                Err(_) => tracing::warn!(database, "loading the function catalog timed out"),
            }
        }
    }
}

fn spawn_signal_handler(shared: Arc<Shared>) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(StartError::Signal)?;
    let reload_shared = Arc::clone(&shared);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reload_shared.config_path.as_deref() {
                Some(path) => {
                    tracing::info!(path = %path.display(), "SIGHUP: reloading the config");
                    // Refusals are logged by reload itself.
                    let _ = reload(&reload_shared, path);
                }
                None => tracing::warn!("SIGHUP ignored: pgrelay was started without a config file"),
            }
        }
    });
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        shared.begin_shutdown();
    });
    Ok(())
}

/// Keys whose new value needs a restart (sockets bound, logger, monitor connections and cache
/// store are set up once): a reload keeps the running value and warns.
fn keep_restart_only_keys(running: &Config, next: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($section:ident . $key:ident) => {
            if running.$section.$key != next.$section.$key {
                next.$section.$key = running.$section.$key.clone();
                kept.push(concat!(stringify!($section), ".", stringify!($key)));
            }
        };
    }
    keep!(server.listen);
    keep!(server.admin_listen);
    keep!(server.pool_mode);
    keep!(server.log_format);
    keep!(server.workers);
    keep!(cluster.hosts);
    keep!(cluster.patroni);
    keep!(cluster.monitor_user);
    keep!(cluster.monitor_password);
    keep!(cluster.monitor_database);
    keep!(cluster.tls);
    keep!(cluster.tls_ca_file);
    keep!(cache.redis_url);
    keep!(cache.max_bytes);
    keep!(cache.max_entry_bytes);
    keep!(cache.timeout);
    keep!(cache.retry_after);
    kept
}

/// Re-reads the config file (SIGHUP, console `RELOAD`) and applies it without dropping a
/// client: users, limits, timeouts, lag budget, write functions and cache rules take effect
/// for what starts next. A file that does not load or validate is refused (logged, returned)
/// and the running config stays whole. Keys that need a restart keep their running value.
pub fn reload(shared: &Shared, path: &Path) -> Result<(), String> {
    let refuse = |reason: String| {
        tracing::error!(path = %path.display(), error = %reason, "config reload refused; the running config stays");
        Err(reason)
    };
    let mut next = match Config::load(path) {
        Ok(config) => config,
        Err(e) => return refuse(e.to_string()),
    };
    let users = match Users::from_config(&next) {
        Ok(users) => users,
        Err((user, e)) => return refuse(format!("user {user:?}: {e}")),
    };
    let running = shared.config.load_full();
    for key in keep_restart_only_keys(&running, &mut next) {
        tracing::warn!(key, "changed in the config file, but takes effect only after a restart; keeping the running value");
    }
    let before = admin::console::config_rows(&running);
    let after = admin::console::config_rows(&next);
    let mut changed: Vec<&str> = after
        .iter()
        .filter(|row| !before.contains(row))
        .map(|(key, _)| key.as_str())
        .chain(
            before
                .iter()
                .filter(|(key, _)| !after.iter().any(|(k, _)| k == key))
                .map(|(key, _)| key.as_str()),
        )
        .collect();
    // Users are not config rows (their secrets are never shown), but a change is worth a word.
    if running.users != next.users {
        changed.push("users");
    }

    // Read again even when the paths did not change: a renewed certificate keeps its name.
    let client_tls = match tls::ClientTls::from_config(&next.server) {
        Ok(client_tls) => client_tls,
        Err(e) => return refuse(e.to_string()),
    };
    shared
        .pools
        .set_settings(pool_settings(&next, &shared.server_tls));
    if running.cluster.write_functions != next.cluster.write_functions {
        shared
            .catalogs
            .set_write_functions(next.cluster.write_functions.clone());
    }
    shared
        .monitor_settings
        .send_replace(monitor_settings(&next));
    // Users first: a pool created from now on reads the new passwords, and every pool that
    // exists already is given them next.
    shared.users.store(Arc::new(users));
    let users = shared.users.load();
    shared
        .pools
        .set_passwords(|server_user| users.server_password_of(server_user));
    shared.client_tls.store(Arc::new(client_tls));
    shared.config.store(Arc::new(next));
    tracing::info!(path = %path.display(), changed = %changed.join(", "), "config reloaded");
    Ok(())
}
