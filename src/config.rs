//! The `proxy.toml` schema: what every setting is called, its type, its default, how an
//! environment variable overrides it, and which values are refused.
//!
//! This module owns turning text (a file, plus `PGRELAY_<SECTION>__<KEY>` environment
//! variables) into one validated, immutable [`Config`] value. Everything that can be checked
//! without the network is checked here, so a bad config is refused at start (or at SIGHUP,
//! where the caller keeps the running config) with the key, the value and a reason
//! ([`ConfigError::Invalid`]).
//!
//! It must never open a socket, resolve a host name, spawn a task or hold global state: loading
//! is a pure function of the file and the environment, so a reload can be tried and thrown
//! away. It must never print a password: `Debug` output and error messages redact secrets.
//!
//! Units used by the file:
//! - durations are humantime strings: `"250ms"`, `"5s"`, `"10m"`, `"1h 30m"` (the integer `0`
//!   is accepted too). The unit `M` (months) is refused: here it is a typo for `m` or `MB`.
//! - byte sizes are an integer number of bytes or a string with a unit: `B`, `kB`, `MB`,
//!   `GB`, `TB`, which are powers of 1024 as in PostgreSQL (`"16MB"` = 16 × 1024 × 1024), or
//!   the same with `KiB`, `MiB`, `GiB`, `TiB`. Units are case-insensitive.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::error::{Actual, Kind};
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Environment variables starting with this prefix override config keys.
pub const ENV_PREFIX: &str = "PGRELAY_";

/// Separates the section from the key in an override variable: `PGRELAY_SERVER__LISTEN`
/// sets `server.listen`. A single `_` cannot be used because keys contain underscores.
pub const ENV_SEPARATOR: &str = "__";

/// 1 GiB - 1: PostgreSQL never allocates more than this (`MaxAllocSize`) for one message, so
/// accepting longer ones would only let a client make us buffer what the server will reject.
pub const POSTGRES_MAX_MESSAGE_SIZE: u64 = (1 << 30) - 1;

/// Port used for a cluster host written without one, as libpq does.
pub const DEFAULT_POSTGRES_PORT: u16 = 5432;

/// Smallest accepted `server.max_message_size`: below this even a startup packet or an
/// ordinary query would be refused.
const MIN_MESSAGE_SIZE: u64 = 1024;

/// How a redacted secret is shown in `Debug` output and error messages.
const REDACTED: &str = "<redacted>";

/// The whole proxy configuration, validated. Built once by [`Config::load`] and then shared as
/// an immutable value (swapped whole on reload).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the client-facing side. May be absent.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[cluster]`: the PostgreSQL servers. Required, because `cluster.hosts` is.
    // Defaulted for serde only so that a missing section is reported by validation as
    // "cluster.hosts: at least one server is required" rather than as a bare missing key.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// `[[users]]`: who may log in through the proxy. May be absent (then nobody can).
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// `[cache]`: cache-aside for reads of the tables named in `[[cache.rules]]`. May be absent.
    #[serde(default)]
    pub cache: CacheConfig,
}

/// `[server]`: where clients and operators connect, and the limits applied to them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address PostgreSQL clients connect to. Default `127.0.0.1:6432`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Address of the HTTP endpoint serving `/metrics`, `/healthz`, `/readyz`.
    /// Default `127.0.0.1:9930`.
    #[serde(deserialize_with = "socket_addr")]
    pub admin_listen: SocketAddr,
    /// When a server connection goes back to the pool. Default `transaction`.
    pub pool_mode: PoolMode,
    /// Users allowed on the virtual database `pgrelay` (the `SHOW …` console).
    /// Default `["admin"]`.
    pub admin_users: Vec<String>,
    /// Startup and authentication must finish within this. Default `5s`.
    #[serde(deserialize_with = "duration")]
    pub client_login_timeout: Duration,
    /// Client connections accepted at once, over all users. Default 10000.
    pub max_client_connections: usize,
    /// Server connections per (server, user, database) pool. Default 20.
    pub max_server_connections: usize,
    /// Longest protocol message accepted from a client or a server, in bytes.
    /// Default 1 GiB - 1, PostgreSQL's own limit. Accepts `"256MB"`, `"1GiB"` or an integer.
    #[serde(deserialize_with = "byte_size")]
    pub max_message_size: u64,
    /// How long a client waits for a server connection before getting an error.
    /// Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub query_wait_timeout: Duration,
    /// A client idle inside a transaction longer than this is disconnected, freeing its
    /// server connection. `0s` (the default) turns this off.
    #[serde(deserialize_with = "duration")]
    pub idle_transaction_timeout: Duration,
    /// On shutdown, how long to let running transactions finish before closing them.
    /// Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Log line format. Default `human`.
    pub log_format: LogFormat,
    /// Prepared statements kept per server connection in transaction pooling; the least
    /// recently used is closed beyond this. Default 1000.
    pub max_prepared_statements: usize,
    /// TLS for clients: `disable` (the default; SSLRequest is answered `N`), `allow` (TLS
    /// offered, plain accepted) or `require` (plain clients are refused with 28000).
    pub tls_mode: ClientTlsMode,
    /// PEM certificate chain pgrelay presents to clients. Required unless `tls_mode` is
    /// `disable`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Threads that serve clients. `0` (the default) means one per CPU core. `1` runs
    /// everything on one thread with a single-threaded scheduler (PgBouncer's model): no
    /// work stealing or cross-thread wakeups, so less CPU per query where PostgreSQL or the
    /// application share the machine's few cores. Restart only.
    pub workers: usize,
}

/// More threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

impl ServerConfig {
    /// The number of client-serving threads to start: `workers`, or one per CPU core.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9930)),
            pool_mode: PoolMode::Transaction,
            admin_users: vec!["admin".to_owned()],
            client_login_timeout: Duration::from_secs(5),
            max_client_connections: 10_000,
            max_server_connections: 20,
            max_message_size: POSTGRES_MAX_MESSAGE_SIZE,
            query_wait_timeout: Duration::from_secs(30),
            idle_transaction_timeout: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(30),
            log_format: LogFormat::Human,
            max_prepared_statements: 1000,
            tls_mode: ClientTlsMode::Disable,
            tls_cert: None,
            tls_key: None,
            workers: 0,
        }
    }
}

/// `[cluster]`: the PostgreSQL servers, and how their roles and health are watched. Roles are
/// not configured: the topology monitor discovers which host is the leader.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Every server of the cluster, leader and replicas alike, as `host:port` (port defaults
    /// to 5432). Required, at least one, no duplicates. The [`Default`] value is empty, which
    /// validation refuses.
    pub hosts: Vec<HostAddr>,
    /// How often each host is probed for role and replay position. Default `250ms`.
    #[serde(deserialize_with = "duration")]
    pub probe_interval: Duration,
    /// A probe not answered within this counts as a failure. Default `1s`.
    #[serde(deserialize_with = "duration")]
    pub probe_timeout: Duration,
    /// A replica further behind the leader than this gets no reads. Default `1s`.
    pub max_replica_lag: LagBudget,
    /// How long writes wait for a new leader after the old one disappears before failing.
    /// Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub failover_timeout: Duration,
    /// Whether a client must see its own writes on replicas. Default `read_your_writes`.
    pub consistency: Consistency,
    /// What a read gets when no replica is within `max_replica_lag`. Default `leader`.
    pub lagging_reads: LaggingReads,
    /// Opening (TCP + authentication) a server connection must finish within this.
    /// Default `5s`.
    #[serde(deserialize_with = "duration")]
    pub server_connect_timeout: Duration,
    /// A pooled server connection unused this long is closed. Default `10m`.
    #[serde(deserialize_with = "duration")]
    pub server_idle_timeout: Duration,
    /// Sent to a server connection before another client gets it. Default `DISCARD ALL`.
    pub server_reset_query: String,
    /// A host that failed is left out of routing this long. Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub ban_time: Duration,
    /// Functions that write (so `SELECT f()` must go to the leader). Default none.
    pub write_functions: Vec<String>,
    /// Patroni REST API URLs consulted for leadership, e.g. `http://10.0.0.1:8008`.
    /// Default none: roles come from `pg_is_in_recovery()` alone.
    pub patroni: Vec<String>,
    /// Role the topology monitor and catalog loader log in as. Default: the first
    /// `[[users]]` entry with a password pgrelay can send to the servers.
    pub monitor_user: Option<String>,
    /// Password of `monitor_user`. Default: that user's server password.
    pub monitor_password: Option<String>,
    /// Database the monitor connects to. Default `postgres`.
    pub monitor_database: String,
    /// How often the list of user-defined volatile functions (which make a SELECT go to the
    /// leader) is reloaded from the leader's catalog. Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub function_refresh_interval: Duration,
    /// TLS to the servers (pooled and control connections): `disable`, `prefer` (the
    /// default: TLS when the server offers it, certificate not checked), `require` (refuse a
    /// server without TLS, certificate not checked) or `verify-full` (certificate must chain
    /// to `tls_ca_file` and name the host).
    pub tls: ServerTlsMode,
    /// PEM file of the CA certificates trusted for `tls = "verify-full"`.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for ClusterConfig {
    /// Every default, and no hosts: not a valid cluster by itself.
    fn default() -> Self {
        ClusterConfig {
            hosts: Vec::new(),
            probe_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_secs(1),
            max_replica_lag: LagBudget::Time(Duration::from_secs(1)),
            failover_timeout: Duration::from_secs(30),
            consistency: Consistency::ReadYourWrites,
            lagging_reads: LaggingReads::Leader,
            server_connect_timeout: Duration::from_secs(5),
            server_idle_timeout: Duration::from_secs(600),
            server_reset_query: "DISCARD ALL".to_owned(),
            ban_time: Duration::from_secs(30),
            write_functions: Vec::new(),
            patroni: Vec::new(),
            monitor_user: None,
            monitor_password: None,
            monitor_database: "postgres".to_owned(),
            function_refresh_interval: Duration::from_secs(30),
            tls: ServerTlsMode::Prefer,
            tls_ca_file: None,
        }
    }
}

/// One PostgreSQL server: a host name or IP address and a port. Written `host:port`,
/// `host` (port 5432), or `[ipv6]:port`. The host is kept lowercase (DNS names are
/// case-insensitive) and without brackets, ready for `TcpStream::connect((host, port))`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostAddr {
    pub host: String,
    pub port: u16,
}

impl HostAddr {
    /// Makes this address `other`, reusing this one's buffer (an address copied on every
    /// transaction allocates nothing).
    pub fn set_to(&mut self, other: &HostAddr) {
        self.host.clone_from(&other.host);
        self.port = other.port;
    }
}

/// Why a `host:port` string is not a [`HostAddr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostAddrError(&'static str);

impl FromStr for HostAddr {
    type Err = HostAddrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or(HostAddrError("unclosed '[' in IPv6 address"))?;
            match after {
                "" => (host, None),
                _ => {
                    let port = after
                        .strip_prefix(':')
                        .ok_or(HostAddrError("expected ':port' after ']'"))?;
                    (host, Some(port))
                }
            }
        } else {
            match text.split_once(':') {
                None => (text, None),
                Some((_, port)) if port.contains(':') => {
                    return Err(HostAddrError(
                        "an IPv6 address needs brackets, e.g. \"[::1]:5432\"",
                    ))
                }
                Some((host, port)) => (host, Some(port)),
            }
        };
        if host.is_empty() {
            return Err(HostAddrError("the host name is empty"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || "/@[]".contains(c))
        {
            return Err(HostAddrError(
                "expected a host name or IP address, then optionally ':port'",
            ));
        }
        let port = match port {
            None => DEFAULT_POSTGRES_PORT,
            Some(port) => match port.parse::<u16>() {
                Ok(0) | Err(_) => return Err(HostAddrError("the port must be 1 to 65535")),
                Ok(port) => port,
            },
        };
        Ok(HostAddr {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for HostAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// One `[[users]]` entry: a login accepted from clients, and the credentials used for its
/// server connections.
///
/// A user whose `password` is a SCRAM verifier or an md5 hash and who has no
/// `server_password` is valid: pgrelay cannot derive a plain password from a hash, so its
/// server connections log in without one, which works when the servers trust the proxy
/// (`pg_hba.conf` `trust` for the proxy's address) and fails at connect time otherwise.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name clients give. Required, non-empty, unique.
    pub name: String,
    /// Plain text, or a `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` verifier, or
    /// `md5<32 hex>` (both as stored in `pg_authid`). Required unless `auth = "trust"`.
    #[serde(default)]
    pub password: Option<String>,
    /// How clients prove who they are. Default `scram-sha-256`.
    #[serde(default)]
    pub auth: AuthMethod,
    /// User for server connections. Default: `name`. See [`UserConfig::backend_user`].
    #[serde(default)]
    pub server_user: Option<String>,
    /// Password for server connections. Default: `password` when that is plain text.
    /// See [`UserConfig::backend_password`].
    #[serde(default)]
    pub server_password: Option<String>,
    /// Client connections this user may hold at once. Default: only the global
    /// `server.max_client_connections` applies.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

impl UserConfig {
    /// The user server connections log in as: `server_user`, else `name`.
    pub fn backend_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }

    /// The password server connections log in with: `server_password`, else `password` when
    /// that is plain text (a verifier or hash cannot answer a server's challenge), else none.
    pub fn backend_password(&self) -> Option<&str> {
        self.server_password.as_deref().or_else(|| {
            self.password
                .as_deref()
                .filter(|p| PasswordForm::of(p) == PasswordForm::Plain)
        })
    }
}

impl fmt::Debug for UserConfig {
    // Config values end up in logs; passwords and hashes must not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |secret: &Option<String>| secret.as_ref().map(|_| REDACTED);
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &redact(&self.password))
            .field("auth", &self.auth)
            .field("server_user", &self.server_user)
            .field("server_password", &redact(&self.server_password))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// `[cache]`: cache-aside for reads of the tables listed in `[[cache.rules]]`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Master switch. Default `true` (but nothing is cached without rules).
    pub enabled: bool,
    /// `redis://`, `rediss://` (TLS) or `redis+sentinel://` URL shared by every pgrelay
    /// instance. Absent (the default): a per-process in-memory store.
    pub redis_url: Option<String>,
    /// Lifetime of a cached result when its rule sets no `ttl`. Default `60s`.
    #[serde(deserialize_with = "duration")]
    pub default_ttl: Duration,
    /// Memory budget of the in-memory store, in bytes. Default `64MB`.
    #[serde(deserialize_with = "byte_size")]
    pub max_bytes: u64,
    /// A result larger than this is not cached. Default `1MB`.
    #[serde(deserialize_with = "byte_size")]
    pub max_entry_bytes: u64,
    /// A cache operation slower than this is abandoned and the query goes to PostgreSQL.
    /// Default `20ms`.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// After the store fails, how long to bypass it before trying again. Default `5s`.
    #[serde(deserialize_with = "duration")]
    pub retry_after: Duration,
    /// Which reads are cached. Default none.
    pub rules: Vec<CacheRule>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            redis_url: None,
            default_ttl: Duration::from_secs(60),
            max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
            timeout: Duration::from_millis(20),
            retry_after: Duration::from_secs(5),
            rules: Vec::new(),
        }
    }
}

impl fmt::Debug for CacheConfig {
    // A Redis URL may carry a password (`redis://:secret@host`); logs must not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("enabled", &self.enabled)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("default_ttl", &self.default_ttl)
            .field("max_bytes", &self.max_bytes)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("timeout", &self.timeout)
            .field("retry_after", &self.retry_after)
            .field("rules", &self.rules)
            .finish()
    }
}

/// One `[[cache.rules]]` entry: reads touching only these tables are cached.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "CacheRuleToml")]
pub struct CacheRule {
    /// Table names this rule applies to. Required, non-empty.
    pub tables: Vec<String>,
    /// Lifetime of results cached under this rule. Default: `cache.default_ttl`.
    pub ttl: Option<Duration>,
    /// `tables`, each split into unquoted, lower-cased name parts once, for matching.
    table_parts: Vec<Vec<String>>,
}

impl CacheRule {
    pub fn new(tables: Vec<String>, ttl: Option<Duration>) -> CacheRule {
        let table_parts = tables
            .iter()
            .map(|t| crate::cache::invalidate::name_parts(t))
            .collect();
        CacheRule {
            tables,
            ttl,
            table_parts,
        }
    }

    /// Each table name split into its unquoted, lower-cased parts (`shop.products` →
    /// `["shop", "products"]`).
    pub fn table_parts(&self) -> &[Vec<String>] {
        &self.table_parts
    }
}

/// A `[[cache.rules]]` entry as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheRuleToml {
    tables: Vec<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    ttl: Option<Duration>,
}

impl From<CacheRuleToml> for CacheRule {
    fn from(rule: CacheRuleToml) -> CacheRule {
        CacheRule::new(rule.tables, rule.ttl)
    }
}

/// When a server connection is returned to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// At the end of each transaction: many clients share few server connections.
    #[default]
    Transaction,
    /// When the client disconnects: session state (SET, prepared statements, temp tables)
    /// behaves exactly as on a direct connection.
    Session,
}

/// Whether clients may, or must, use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    /// SSLRequest is answered `N`: clients talk in plain text.
    #[default]
    Disable,
    /// TLS is offered; clients that do not ask for it are served in plain text too.
    Allow,
    /// Clients that do not switch to TLS are refused (28000).
    Require,
}

impl ClientTlsMode {
    /// The name used in `proxy.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTlsMode::Disable => "disable",
            ClientTlsMode::Allow => "allow",
            ClientTlsMode::Require => "require",
        }
    }
}

/// How pgrelay secures its connections to the servers, named like libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it, plain text otherwise; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with a certificate that chains to `tls_ca_file` and names the host connected to.
    VerifyFull,
}

impl ServerTlsMode {
    /// The name used in `proxy.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// What a client is guaranteed to see when its reads go to replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// After a write, a client's reads go only to servers that have replayed it.
    #[default]
    ReadYourWrites,
    /// Reads may go to any replica within `max_replica_lag`, even one that has not replayed
    /// the client's last write.
    Eventual,
}

/// What a read gets when every replica is further behind than `max_replica_lag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaggingReads {
    /// It runs on the leader.
    #[default]
    Leader,
    /// It fails with an error, keeping read load off the leader.
    Error,
}

/// How far a replica may fall behind the leader and still get reads: in time since the last
/// replayed transaction, or in bytes of WAL not yet replayed.
///
/// Written as a duration (`"1s"`, `"500ms"`) or a byte size (`"16MB"`, `"512kB"`; units as in
/// the [module docs](self)). A bare integer is refused as ambiguous, and so is the unit `M`
/// (`"16M"` would be 16 months to the duration parser; write `"16MB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LagBudget {
    Time(Duration),
    Bytes(u64),
}

impl FromStr for LagBudget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        // No duration unit ends in 'b' and every byte unit does, so the last letter decides.
        if text.ends_with(['b', 'B']) {
            parse_byte_size(text).map(LagBudget::Bytes)
        } else if text.parse::<u64>().is_ok() {
            Err(format!(
                "a bare number is ambiguous: write a time (\"{text}s\", \"{text}ms\") or a \
                 size (\"{text}MB\")"
            ))
        } else {
            parse_duration(text).map(LagBudget::Time)
        }
    }
}

impl fmt::Display for LagBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LagBudget::Time(duration) => write!(f, "{}", humantime::format_duration(*duration)),
            LagBudget::Bytes(bytes) => write!(f, "{bytes}B"),
        }
    }
}

impl<'de> Deserialize<'de> for LagBudget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LagVisitor;
        impl Visitor<'_> for LagVisitor {
            type Value = LagBudget;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"1s\" or a byte size such as \"16MB\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<LagBudget, E> {
                text.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<LagBudget, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<LagBudget, E> {
                self.visit_str(&n.to_string())
            }
        }
        deserializer.deserialize_any(LagVisitor)
    }
}

/// How a client proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (PostgreSQL's default). Needs a plain password or a SCRAM verifier.
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// md5 challenge. Needs a plain password or an md5 hash.
    #[serde(rename = "md5")]
    Md5,
    /// No password asked.
    #[serde(rename = "trust")]
    Trust,
}

impl AuthMethod {
    /// The name used in `proxy.toml` and `pg_hba.conf`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Trust => "trust",
        }
    }
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `key` is dotted, with 0-based indexes for arrays (`users[1].password`). `value` is
    /// the offending value as written, or `<redacted>` for secrets.
    #[error("invalid config: {key} = {value}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

impl From<crate::tls::TlsConfigError> for ConfigError {
    fn from(e: crate::tls::TlsConfigError) -> Self {
        ConfigError::invalid(e.key, e.value, e.reason)
    }
}

/// The value an `Invalid` error shows: what was written (redacted if it is a secret), or a
/// description such as `(absent)` when there is nothing to show.
enum Shown {
    Written(String),
    Described(&'static str),
}

impl ConfigError {
    /// `Invalid` for a value the user wrote.
    fn invalid(
        key: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError::invalid_shown(key, Shown::Written(value.to_string()), reason)
    }

    /// The one place `Invalid` is built, so that no path can put a secret in a message.
    fn invalid_shown(key: impl Into<String>, value: Shown, reason: impl Into<String>) -> Self {
        let key = key.into();
        let value = match value {
            Shown::Described(description) => description.to_owned(),
            Shown::Written(_) if key.ends_with("password") => REDACTED.to_owned(),
            Shown::Written(url) if key == "cache.redis_url" => redact_url(&url),
            Shown::Written(value) => value,
        };
        ConfigError::Invalid {
            key,
            value,
            reason: reason.into(),
        }
    }
}

impl Config {
    /// Reads the file, applies env overrides `PGRELAY_<SECTION>__<KEY>` (e.g.
    /// `PGRELAY_SERVER__LISTEN=127.0.0.1:7000`, `PGRELAY_CLUSTER__HOSTS='["127.0.0.1:5432"]'`),
    /// validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text)
    }

    /// Same as [`Config::load`], from a string (tests), env overrides included.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let process_env = std::env::vars_os().map(|(name, value)| {
            (
                name.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        });
        Config::from_toml_str_with_env(text, process_env)
    }

    /// Same as [`Config::from_toml_str`], with the environment given as `(name, value)` pairs
    /// instead of read from the process, so tests need not mutate process-wide state.
    ///
    /// Only `PGRELAY_<SECTION>__<KEY>` variables are overrides (more `__` reach deeper
    /// tables); the section and key are case-insensitive. A value is read the way figment
    /// reads environment values: `5`, `true`, `[...]` are a number, a boolean and an array,
    /// anything else is a string. A variable with the prefix but no `__` (such as a
    /// `PGRELAY_CONFIG` a wrapper script may set) is not a config key and is ignored; one
    /// naming an unknown section or key is refused like a typo in the file.
    pub fn from_toml_str_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::new().merge(Toml::string(text));
        let mut overrides: Vec<EnvOverride> =
            env.into_iter().filter_map(EnvOverride::parse).collect();
        // Sorted so that two spellings of one key (`…__LISTEN`, `…__listen`) resolve the same
        // way on every start.
        overrides.sort_by(|a, b| a.variable.cmp(&b.variable));
        for env_override in overrides {
            figment = figment.merge(env_override);
        }
        let config: Config = figment
            .extract()
            .map_err(|error| figment_error(&figment, error))?;
        config
            .validate()
            .map_err(|error| note_env_source(&figment, error))?;
        Ok(config)
    }

    /// The `[[users]]` entry for a login name.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|user| user.name == name)
    }

    /// Checks everything that serde's types do not: ranges, uniqueness, and combinations.
    /// [`Config::load`] calls this; it is public for code that builds a `Config` by hand.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.cluster.validate()?;
        validate_users(&self.users)?;
        self.cache.validate()
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        // Port 0 (any free port, used by tests) may legitimately appear on both.
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(ConfigError::invalid(
                "server.admin_listen",
                self.admin_listen,
                "must differ from server.listen: both cannot bind the same address",
            ));
        }
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::invalid(
                "server.workers",
                self.workers,
                format!("must be at most {MAX_WORKERS} (0 means one per CPU core)"),
            ));
        }
        if self.max_client_connections == 0 {
            return Err(ConfigError::invalid(
                "server.max_client_connections",
                0,
                "must be at least 1, or no client could connect",
            ));
        }
        if self.max_server_connections == 0 {
            return Err(ConfigError::invalid(
                "server.max_server_connections",
                0,
                "must be at least 1, or no query could run",
            ));
        }
        if self.max_message_size < MIN_MESSAGE_SIZE {
            return Err(ConfigError::invalid(
                "server.max_message_size",
                self.max_message_size,
                "must be at least 1024 bytes (1kB), or ordinary startup packets and queries \
                 would be refused",
            ));
        }
        if let Some(i) = self.admin_users.iter().position(|name| name.is_empty()) {
            return Err(ConfigError::invalid(
                format!("server.admin_users[{i}]"),
                "\"\"",
                "a user name cannot be empty",
            ));
        }
        crate::tls::ClientTls::from_config(self)?;
        Ok(())
    }
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.hosts.is_empty() {
            return Err(ConfigError::invalid(
                "cluster.hosts",
                "[]",
                "at least one PostgreSQL server is required, e.g. hosts = [\"127.0.0.1:5432\"]",
            ));
        }
        for (i, host) in self.hosts.iter().enumerate() {
            if let Some(first) = self.hosts[..i].iter().position(|h| h == host) {
                return Err(ConfigError::invalid(
                    format!("cluster.hosts[{i}]"),
                    host,
                    format!("duplicate of cluster.hosts[{first}]; list each server once"),
                ));
            }
        }
        for (key, value) in [
            ("cluster.probe_interval", self.probe_interval),
            ("cluster.probe_timeout", self.probe_timeout),
            (
                "cluster.server_connect_timeout",
                self.server_connect_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, "0s", "must be greater than zero"));
            }
        }
        for (i, url) in self.patroni.iter().enumerate() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    format!("cluster.patroni[{i}]"),
                    url,
                    "a Patroni REST API URL starts with http:// or https://",
                ));
            }
        }
        crate::tls::ServerTls::from_config(self)?;
        Ok(())
    }
}

fn validate_users(users: &[UserConfig]) -> Result<(), ConfigError> {
    for (i, user) in users.iter().enumerate() {
        let key = |field: &str| format!("users[{i}].{field}");
        if user.name.is_empty() {
            return Err(ConfigError::invalid(
                key("name"),
                "\"\"",
                "a user name cannot be empty",
            ));
        }
        if let Some(first) = users[..i].iter().position(|u| u.name == user.name) {
            return Err(ConfigError::invalid(
                key("name"),
                &user.name,
                format!("users[{first}] has the same name; each user is listed once"),
            ));
        }
        if user.max_connections == Some(0) {
            return Err(ConfigError::invalid(
                key("max_connections"),
                0,
                "must be at least 1 (remove the user to lock it out)",
            ));
        }
        let method = user.auth.as_str();
        let password = user.password.as_deref().unwrap_or_default();
        let form = user.password.as_deref().map(PasswordForm::of);
        match (user.auth, form) {
            (AuthMethod::Trust, _) => {}
            (_, None) => {
                return Err(ConfigError::invalid_shown(
                    key("password"),
                    Shown::Described("(absent)"),
                    format!("auth = \"{method}\" needs a password (or use auth = \"trust\")"),
                ))
            }
            (AuthMethod::Md5, Some(PasswordForm::ScramVerifier)) => {
                return Err(ConfigError::invalid(
                    key("password"),
                    password,
                    "auth = \"md5\" cannot work from a SCRAM verifier; give the plain password \
                     or its md5 hash, or use auth = \"scram-sha-256\"",
                ))
            }
            (AuthMethod::ScramSha256, Some(PasswordForm::Md5Hash)) => {
                return Err(ConfigError::invalid(
                    key("password"),
                    password,
                    "auth = \"scram-sha-256\" cannot work from an md5 hash; give the plain \
                     password or a SCRAM verifier, or use auth = \"md5\"",
                ))
            }
            _ => {}
        }
        if let Some(Err(reason)) = user.password.as_deref().map(check_scram_verifier_shape) {
            return Err(ConfigError::invalid(key("password"), password, reason));
        }
    }
    Ok(())
}

impl CacheConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url {
            const SCHEMES: [&str; 3] = ["redis://", "rediss://", "redis+sentinel://"];
            if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
                return Err(ConfigError::invalid(
                    "cache.redis_url",
                    url,
                    "must start with redis://, rediss:// (TLS) or redis+sentinel://; remove the \
                     key to use the in-memory store",
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "cache.timeout",
                "0s",
                "must be greater than zero, or every cache lookup would be abandoned",
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.tables.is_empty() {
                return Err(ConfigError::invalid(
                    format!("cache.rules[{i}].tables"),
                    "[]",
                    "a rule must name at least one table",
                ));
            }
            if let Some(j) = rule.tables.iter().position(|table| table.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    format!("cache.rules[{i}].tables[{j}]"),
                    "\"\"",
                    "a table name cannot be empty",
                ));
            }
        }
        Ok(())
    }
}

/// The three shapes PostgreSQL accepts in `pg_authid.rolpassword`, told apart the same way
/// (and the same way as `auth::Secret::parse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PasswordForm {
    Plain,
    ScramVerifier,
    Md5Hash,
}

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

impl PasswordForm {
    fn of(password: &str) -> PasswordForm {
        if password.starts_with(SCRAM_PREFIX) {
            PasswordForm::ScramVerifier
        } else if password.strip_prefix("md5").is_some_and(|hex| {
            // PostgreSQL treats anything but exactly 32 lowercase hex digits as plain text.
            hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }) {
            PasswordForm::Md5Hash
        } else {
            PasswordForm::Plain
        }
    }
}

/// Checks the outline `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` of a
/// verifier (the auth module decodes it fully). PostgreSQL would take a malformed verifier as a
/// plain password; in a proxy config that is a copy-paste error worth refusing at start.
fn check_scram_verifier_shape(password: &str) -> Result<(), String> {
    let Some(body) = password.strip_prefix(SCRAM_PREFIX) else {
        return Ok(());
    };
    let outline_ok = body.split_once('$').is_some_and(|(head, keys)| {
        let iterations_ok = head.split_once(':').is_some_and(|(iter, salt)| {
            iter.parse::<u32>().is_ok_and(|n| n > 0) && !salt.is_empty()
        });
        let keys_ok = keys
            .split_once(':')
            .is_some_and(|(stored, server)| !stored.is_empty() && !server.is_empty());
        iterations_ok && keys_ok
    });
    match outline_ok {
        true => Ok(()),
        false => Err("malformed SCRAM verifier: expected \
                      SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, as in pg_authid"
            .to_owned()),
    }
}

/// Replaces the password in a URL's `user:password@` part, keeping the rest readable.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:{REDACTED}{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Values with units.

/// Parses a duration written with units, as humantime does: `"250ms"`, `"5s"`, `"10m"`,
/// `"1h 30m"`, and `"0"`. Refuses the unit `M` (months to humantime) because in this file it
/// is far more likely a mistyped `m` (minutes) or `MB`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let has_month_unit = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|unit| unit == "M");
    if has_month_unit {
        return Err(format!(
            "\"M\" would mean months; write \"m\" for minutes (or \"MB\" for a size) in \"{text}\""
        ));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}; expected a duration such as \"250ms\", \"5s\" or \"10m\""))
}

/// Parses a byte size: a non-negative integer followed by an optional unit `B`, `kB`, `MB`,
/// `GB`, `TB` or `KiB`, `MiB`, `GiB`, `TiB` (case-insensitive, optional space).
///
/// As in PostgreSQL's own settings, `kB`/`MB`/`GB`/`TB` are powers of 1024, exactly like
/// `KiB`/`MiB`/`GiB`/`TiB`: `"16MB"` is 16 × 1024 × 1024 bytes. No unit means bytes.
fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.replace('_', "").parse().map_err(|_| {
        format!(
            "expected a whole number of bytes with an optional unit, e.g. \"16MB\", in \"{text}\""
        )
    })?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "kib" => 1 << 10,
        "mb" | "mib" => 1 << 20,
        "gb" | "gib" => 1 << 30,
        "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit \"{other}\"; use B, kB, MB, GB, TB (powers of 1024) or \
                 KiB, MiB, GiB, TiB"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

/// `deserialize_with` for [`Duration`] fields: a humantime string, or the integer 0.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"250ms\", \"5s\" or \"10m\"")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration(text).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
            match n {
                0 => Ok(Duration::ZERO),
                n => Err(E::custom(format!(
                    "a duration needs a unit: write \"{n}s\" or \"{n}ms\""
                ))),
            }
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
            match u64::try_from(n) {
                Ok(n) => self.visit_u64(n),
                Err(_) => Err(E::custom("a duration cannot be negative")),
            }
        }
    }
    deserializer.deserialize_any(DurationVisitor)
}

/// `deserialize_with` for `Option<Duration>` fields (absent: `None`, via `#[serde(default)]`).
fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

/// `deserialize_with` for byte sizes: a string with a unit (see [`parse_byte_size`]) or a
/// plain integer of bytes.
fn byte_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct ByteSizeVisitor;
    impl Visitor<'_> for ByteSizeVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte size such as \"16MB\", \"1GiB\" or an integer")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            parse_byte_size(text).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
            Ok(n)
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
            u64::try_from(n).map_err(|_| E::custom("a size cannot be negative"))
        }
    }
    deserializer.deserialize_any(ByteSizeVisitor)
}

/// `deserialize_with` for [`SocketAddr`] fields, with a message that shows the expected form.
fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(|_| {
        de::Error::custom(
            "expected an IP address and port, e.g. \"127.0.0.1:6432\" or \"[::]:6432\" \
             (host names are not accepted for listening)",
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Environment overrides.

/// One `PGRELAY_<SECTION>__<KEY>=value` variable, as a figment provider of its own so that an
/// error about its value can name the variable (figment's `Env` names only the prefix).
struct EnvOverride {
    variable: String,
    /// Dotted, lowercase: `server.listen`.
    key: String,
    value: Value,
}

/// Metadata name of an override; [`EnvOverride::described_by`] reads the variable back.
const ENV_SOURCE_PREFIX: &str = "environment variable ";

impl EnvOverride {
    fn parse((variable, value): (String, String)) -> Option<EnvOverride> {
        let path = variable.strip_prefix(ENV_PREFIX)?;
        if !path.contains(ENV_SEPARATOR) {
            return None;
        }
        let key = path.to_ascii_lowercase().replace(ENV_SEPARATOR, ".");
        if key.split('.').any(str::is_empty) {
            return None;
        }
        let value = match value.parse::<Value>() {
            Ok(value) => value,
            Err(never) => match never {},
        };
        Some(EnvOverride {
            variable,
            key,
            value,
        })
    }

    /// The variable that set a value, if an override did.
    fn described_by(metadata: &Metadata) -> Option<&str> {
        metadata.name.strip_prefix(ENV_SOURCE_PREFIX)
    }
}

impl Provider for EnvOverride {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("{ENV_SOURCE_PREFIX}{}", self.variable))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict = figment::util::nest(&self.key, self.value.clone())
            .into_dict()
            .unwrap_or_default();
        Ok(Profile::Default.collect(dict))
    }
}

// ---------------------------------------------------------------------------------------------
// Turning figment's errors into ConfigError::Invalid.

/// Maps the first deserialization error to `Invalid` with the dotted key, the value found
/// there, and a reason phrased for a person editing the file.
fn figment_error(figment: &Figment, error: figment::Error) -> ConfigError {
    let mut path = error.path.clone();
    let env_source = error.metadata.as_ref().and_then(EnvOverride::described_by);
    let (value, reason) = match &error.kind {
        Kind::UnknownField(name, expected) => {
            if path.last() != Some(name) {
                path.push(name.clone());
            }
            // Not echoed: an unknown key may be a misspelt `password`.
            let value = Shown::Described("(not shown)");
            let reason = match expected.is_empty() {
                true => "unknown key".to_owned(),
                false => format!("unknown key; expected one of: {}", expected.join(", ")),
            };
            (value, reason)
        }
        Kind::MissingField(name) => {
            path.push(name.to_string());
            (
                Shown::Described("(absent)"),
                "this key is required".to_owned(),
            )
        }
        Kind::UnknownVariant(_, expected) => {
            let choices: Vec<String> = expected.iter().map(|v| format!("\"{v}\"")).collect();
            (
                value_at(figment, &path),
                format!("expected one of {}", choices.join(", ")),
            )
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => (
            value_at(figment, &path),
            format!(
                "expected {}, found {}",
                humane_type(expected),
                type_of(actual)
            ),
        ),
        Kind::Message(message) if path.is_empty() => {
            // Only the TOML parser fails without a key: a syntax error, with line and column.
            (Shown::Described("(syntax error)"), message.clone())
        }
        Kind::Message(message) => (value_at(figment, &path), message.clone()),
        other => (value_at(figment, &path), other.to_string()),
    };
    let key = match path.is_empty() {
        true => "(file)".to_owned(),
        false => dotted_key(&path),
    };
    let reason = match env_source {
        Some(variable) => format!("{reason} (set by environment variable {variable})"),
        None => reason,
    };
    ConfigError::invalid_shown(key, value, reason)
}

/// Adds "(set by environment variable …)" to a validation error whose key came from the
/// environment, so nobody searches the file for a value that is not there.
fn note_env_source(figment: &Figment, error: ConfigError) -> ConfigError {
    let ConfigError::Invalid { key, value, reason } = error else {
        return error;
    };
    // An override sets a whole value: `cluster.hosts[1]` came from `cluster.hosts`.
    let table_key = key.split('[').next().unwrap_or(&key);
    let env_source = figment
        .find_metadata(table_key)
        .and_then(EnvOverride::described_by);
    let reason = match env_source {
        Some(variable) => format!("{reason} (set by environment variable {variable})"),
        None => reason,
    };
    ConfigError::Invalid { key, value, reason }
}

/// `["users", "1", "password"]` → `users[1].password`.
fn dotted_key(path: &[String]) -> String {
    let mut key = String::new();
    for segment in path {
        if segment.parse::<usize>().is_ok() {
            key.push_str(&format!("[{segment}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
    }
    key
}

/// The merged value at `path` (file and environment), rendered as the user would write it.
fn value_at(figment: &Figment, path: &[String]) -> Shown {
    let Some((first, rest)) = path.split_first() else {
        return Shown::Described("(file)");
    };
    let Ok(mut value) = figment.find_value(first) else {
        return Shown::Described("(absent)");
    };
    for segment in rest {
        let next = match (&value, segment.parse::<usize>()) {
            (Value::Array(_, items), Ok(index)) => items.get(index).cloned(),
            (Value::Dict(_, dict), _) => dict.get(segment).cloned(),
            _ => None,
        };
        match next {
            Some(next) => value = next,
            None => return Shown::Described("(absent)"),
        }
    }
    Shown::Written(render_value(&value))
}

fn render_value(value: &Value) -> String {
    match value {
        Value::String(_, s) => s.clone(),
        Value::Char(_, c) => c.to_string(),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => n
            .to_u128()
            .map(|n| n.to_string())
            .or_else(|| n.to_i128().map(|n| n.to_string()))
            .or_else(|| n.to_f64().map(|n| n.to_string()))
            .unwrap_or_default(),
        Value::Empty(..) => "(empty)".to_owned(),
        Value::Array(_, items) => {
            let items: Vec<String> = items.iter().map(render_item).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Dict(_, dict) => {
            let entries: Vec<String> = dict
                .iter()
                .map(|(k, v)| format!("{k} = {}", render_item(v)))
                .collect();
            format!("{{ {} }}", entries.join(", "))
        }
    }
}

/// Inside an array or table, strings are quoted as in TOML.
fn render_item(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("{s:?}"),
        other => render_value(other),
    }
}

/// What kind of TOML value was found. Only the kind: the value itself is shown (or redacted)
/// separately, and figment's own rendering of it would leak a numeric password.
fn type_of(actual: &Actual) -> &'static str {
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Signed(n) if *n < 0 => "a negative integer",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a decimal number",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        _ => "another kind of value",
    }
}

/// serde names Rust types in "expected …"; a config author knows integers and strings.
fn humane_type(expected: &str) -> &str {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer",
        "a string" | "a borrowed string" => "a string",
        "a boolean" => "true or false",
        "a sequence" => "an array",
        other if other.starts_with("struct ") => "a table",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{RwLock, RwLockReadGuard};

    /// `from_toml_str` and `load` read the process environment, which one test sets: that
    /// test takes the write side, every other loading test the read side. (The other env
    /// tests pass variables to `from_toml_str_with_env` and touch no process state.)
    static PROCESS_ENV: RwLock<()> = RwLock::new(());

    fn process_env_unchanged() -> RwLockReadGuard<'static, ()> {
        PROCESS_ENV
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_str_with_env(text, vars)
    }

    const HOSTS: &str = "[cluster]\nhosts = [\"127.0.0.1:5432\"]\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let _env = process_env_unchanged();
        Config::from_toml_str(text)
    }

    fn parse_ok(text: &str) -> Config {
        match parse(text) {
            Ok(config) => config,
            Err(error) => panic!("config should load, got: {error}"),
        }
    }

    /// Loads `text` expecting `Invalid`; returns (key, value, reason).
    fn refused(text: &str) -> (String, String, String) {
        match parse(text) {
            Ok(config) => panic!("config should be refused, got: {config:?}"),
            Err(ConfigError::Invalid { key, value, reason }) => (key, value, reason),
            Err(other) => panic!("expected ConfigError::Invalid, got: {other}"),
        }
    }

    fn refused_key(text: &str) -> String {
        refused(text).0
    }

    fn with_user(user_lines: &str) -> String {
        format!("{HOSTS}[[users]]\n{user_lines}\n")
    }

    const SCRAM_VERIFIER: &str = "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$\
        c3RvcmVka2V5c3RvcmVka2V5c3RvcmVka2V5c3RvcmU=:c2VydmVya2V5c2VydmVya2V5c2VydmVya2V5c2Vy";
    const MD5_HASH: &str = "md5a3556571e93b0d20722ba62be61e8c2d";

    #[test]
    fn defaults_apply_when_only_cluster_hosts_is_given() {
        let config = parse_ok(HOSTS);
        assert_eq!(config.server, ServerConfig::default());
        assert_eq!(config.server.listen, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(
            config.server.admin_listen,
            "127.0.0.1:9930".parse().unwrap()
        );
        assert_eq!(config.server.pool_mode, PoolMode::Transaction);
        assert_eq!(config.server.admin_users, vec!["admin".to_owned()]);
        assert_eq!(config.server.client_login_timeout, Duration::from_secs(5));
        assert_eq!(config.server.max_client_connections, 10_000);
        assert_eq!(config.server.max_server_connections, 20);
        assert_eq!(config.server.max_message_size, 1_073_741_823);
        assert_eq!(config.server.query_wait_timeout, Duration::from_secs(30));
        assert_eq!(config.server.idle_transaction_timeout, Duration::ZERO);
        assert_eq!(config.server.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.server.log_format, LogFormat::Human);

        let cluster = &config.cluster;
        assert_eq!(
            cluster.hosts,
            vec![HostAddr {
                host: "127.0.0.1".into(),
                port: 5432
            }]
        );
        assert_eq!(cluster.probe_interval, Duration::from_millis(250));
        assert_eq!(cluster.probe_timeout, Duration::from_secs(1));
        assert_eq!(
            cluster.max_replica_lag,
            LagBudget::Time(Duration::from_secs(1))
        );
        assert_eq!(cluster.failover_timeout, Duration::from_secs(30));
        assert_eq!(cluster.consistency, Consistency::ReadYourWrites);
        assert_eq!(cluster.lagging_reads, LaggingReads::Leader);
        assert_eq!(cluster.server_connect_timeout, Duration::from_secs(5));
        assert_eq!(cluster.server_idle_timeout, Duration::from_secs(600));
        assert_eq!(cluster.server_reset_query, "DISCARD ALL");
        assert_eq!(cluster.ban_time, Duration::from_secs(30));
        assert!(cluster.write_functions.is_empty());
        assert!(cluster.patroni.is_empty());

        assert!(config.users.is_empty());
        assert_eq!(config.cache, CacheConfig::default());
        assert!(config.cache.enabled);
        assert_eq!(config.cache.redis_url, None);
        assert_eq!(config.cache.default_ttl, Duration::from_secs(60));
        assert_eq!(config.cache.max_bytes, 64 * 1024 * 1024);
        assert_eq!(config.cache.max_entry_bytes, 1024 * 1024);
        assert_eq!(config.cache.timeout, Duration::from_millis(20));
        assert_eq!(config.cache.retry_after, Duration::from_secs(5));
        assert!(config.cache.rules.is_empty());
    }

    #[test]
    fn example_proxy_toml_loads_with_quickstart_values() {
        let config = parse_ok(include_str!("../proxy.toml"));
        assert_eq!(config.server.listen, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(
            config.server.admin_listen,
            "127.0.0.1:9930".parse().unwrap()
        );
        let hosts: Vec<String> = config.cluster.hosts.iter().map(|h| h.to_string()).collect();
        assert_eq!(
            hosts,
            ["127.0.0.1:5432", "127.0.0.1:5433", "127.0.0.1:5434"]
        );
        let app = config.user("app").expect("user app");
        assert_eq!(app.password.as_deref(), Some("app"));
        assert_eq!(app.auth, AuthMethod::ScramSha256);
        assert_eq!(app.backend_user(), "app");
        assert_eq!(app.backend_password(), Some("app"));
        assert_eq!(
            config.cache.redis_url.as_deref(),
            Some("redis://127.0.0.1:6379")
        );
        assert_eq!(config.cache.rules.len(), 1);
        assert_eq!(config.cache.rules[0].tables, vec!["products".to_owned()]);
        // The example documents the defaults; it must not drift from them.
        assert_eq!(config.server, ServerConfig::default());
        let cluster_defaults = ClusterConfig {
            hosts: config.cluster.hosts.clone(),
            ..ClusterConfig::default()
        };
        assert_eq!(config.cluster, cluster_defaults);
    }

    #[test]
    fn load_reads_a_config_file_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            format!("{HOSTS}[server]\nlisten = \"127.0.0.1:7432\"\n"),
        )
        .unwrap();
        let _env = process_env_unchanged();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:7432".parse().unwrap());
    }

    #[test]
    fn missing_config_file_is_a_read_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let error = Config::load(&path).unwrap_err();
        assert!(matches!(&error, ConfigError::Read { path: p, .. } if p == &path));
        assert!(error.to_string().contains("nope.toml"), "{error}");
    }

    #[test]
    fn env_override_of_nested_key_wins_over_file() {
        let text = format!(
            "{HOSTS}[server]\nlisten = \"127.0.0.1:6432\"\n[cache]\ndefault_ttl = \"1s\"\n"
        );
        let config = with_env(
            &text,
            &[
                ("PGRELAY_SERVER__LISTEN", "127.0.0.1:7000"),
                ("PGRELAY_CACHE__DEFAULT_TTL", "90s"),
                ("PATH", "/usr/bin"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.cache.default_ttl, Duration::from_secs(90));
        // Keys the environment does not mention keep the file's (or the default) value.
        assert_eq!(
            config.server.admin_listen,
            "127.0.0.1:9930".parse().unwrap()
        );
    }

    #[test]
    fn env_override_from_the_process_environment_applies() {
        // The one test that sets a real variable; write_functions is a key no other test in
        // this crate looks at, in case a test elsewhere loads a config meanwhile.
        let _exclusive = PROCESS_ENV
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let name = "PGRELAY_CLUSTER__WRITE_FUNCTIONS";
        std::env::set_var(name, r#"["pgrelay_env_override_test"]"#);
        let loaded = Config::from_toml_str(HOSTS);
        std::env::remove_var(name);
        assert_eq!(
            loaded.unwrap().cluster.write_functions,
            vec!["pgrelay_env_override_test".to_owned()]
        );
    }

    #[test]
    fn env_override_replaces_the_host_list() {
        let env = [("PGRELAY_CLUSTER__HOSTS", r#"["127.0.0.1:6000", "db2"]"#)];
        let config = with_env(HOSTS, &env).unwrap();
        let hosts: Vec<String> = config.cluster.hosts.iter().map(|h| h.to_string()).collect();
        assert_eq!(hosts, ["127.0.0.1:6000", "db2:5432"]);
    }

    #[test]
    fn env_override_can_supply_hosts_missing_from_the_file() {
        let env = [("PGRELAY_CLUSTER__HOSTS", r#"["127.0.0.1:5432"]"#)];
        let config = with_env("", &env).unwrap();
        assert_eq!(config.cluster.hosts.len(), 1);
    }

    #[test]
    fn env_override_section_and_key_are_case_insensitive() {
        let config = with_env(HOSTS, &[("PGRELAY_server__pool_mode", "session")]).unwrap();
        assert_eq!(config.server.pool_mode, PoolMode::Session);
    }

    #[test]
    fn env_override_integer_and_byte_size_values() {
        let env = [
            ("PGRELAY_SERVER__MAX_SERVER_CONNECTIONS", "50"),
            ("PGRELAY_SERVER__MAX_MESSAGE_SIZE", "2048"),
            ("PGRELAY_CACHE__MAX_BYTES", "128MB"),
            ("PGRELAY_CACHE__ENABLED", "false"),
        ];
        let config = with_env(HOSTS, &env).unwrap();
        assert_eq!(config.server.max_server_connections, 50);
        assert_eq!(config.server.max_message_size, 2048);
        assert_eq!(config.cache.max_bytes, 128 << 20);
        assert!(!config.cache.enabled);
    }

    #[test]
    fn bad_env_override_is_refused_naming_the_variable() {
        let error = with_env(HOSTS, &[("PGRELAY_SERVER__LISTEN", "localhost")]).unwrap_err();
        let ConfigError::Invalid { key, value, reason } = error else {
            panic!("expected Invalid")
        };
        assert_eq!(key, "server.listen");
        assert_eq!(value, "localhost");
        assert!(reason.contains("PGRELAY_SERVER__LISTEN"), "{reason}");
    }

    #[test]
    fn env_override_failing_validation_names_the_variable() {
        let env = [("PGRELAY_CLUSTER__PROBE_INTERVAL", "0s")];
        let error = with_env(HOSTS, &env).unwrap_err().to_string();
        assert!(error.contains("cluster.probe_interval"), "{error}");
        assert!(error.contains("PGRELAY_CLUSTER__PROBE_INTERVAL"), "{error}");
    }

    #[test]
    fn env_override_with_unknown_key_is_refused() {
        let env = [("PGRELAY_SERVER__LISTN", "127.0.0.1:7000")];
        let error = with_env(HOSTS, &env).unwrap_err();
        let ConfigError::Invalid { key, reason, .. } = error else {
            panic!("expected Invalid")
        };
        assert_eq!(key, "server.listn");
        assert!(reason.contains("PGRELAY_SERVER__LISTN"), "{reason}");
    }

    #[test]
    fn env_vars_without_section_separator_are_not_config_keys() {
        let env = [
            ("PGRELAY_CONFIG", "/etc/pgrelay/proxy.toml"),
            ("PGRELAY___X", "1"),
        ];
        assert!(with_env(HOSTS, &env).is_ok());
    }

    #[test]
    fn unknown_key_is_refused_naming_it() {
        let (key, _, reason) = refused(&format!("{HOSTS}[server]\nlisen = \"127.0.0.1:1\"\n"));
        assert_eq!(key, "server.lisen");
        assert!(reason.contains("unknown key"), "{reason}");
        assert!(reason.contains("listen"), "lists the valid keys: {reason}");
    }

    #[test]
    fn unknown_section_is_refused_naming_it() {
        assert_eq!(
            refused_key(&format!("{HOSTS}[sever]\nlisten = \"x\"\n")),
            "sever"
        );
    }

    #[test]
    fn numeric_password_of_wrong_type_is_not_echoed() {
        let error = parse(&with_user("name = \"app\"\npassword = 271828")).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("users[0].password"), "{text}");
        assert!(!text.contains("271828"), "{text}");
    }

    #[test]
    fn unknown_key_in_a_user_is_refused_without_echoing_its_value() {
        let error = parse(&with_user("name = \"app\"\npasword = \"hunter2\"")).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("users[0].pasword"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn workers_default_to_one_per_core_and_are_bounded() {
        let config = parse_ok(HOSTS);
        assert_eq!(config.server.workers, 0);
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(config.server.worker_threads(), cores);
        let three = parse_ok(&format!("{HOSTS}[server]\nworkers = 3\n"));
        assert_eq!(three.server.worker_threads(), 3);
        let (key, value, reason) = refused(&format!("{HOSTS}[server]\nworkers = 5000\n"));
        assert_eq!((key.as_str(), value.as_str()), ("server.workers", "5000"));
        assert!(reason.contains("at most 1024"), "{reason}");
    }

    #[test]
    fn cache_rule_tables_are_split_into_name_parts_when_loaded() {
        let config = parse_ok(&format!(
            "{HOSTS}[[cache.rules]]\ntables = ['Shop.\"Order Items\"', \"products\"]\n"
        ));
        let rule = &config.cache.rules[0];
        assert_eq!(rule.tables, ["Shop.\"Order Items\"", "products"]);
        assert_eq!(
            rule.table_parts(),
            [vec!["shop", "order items"], vec!["products"]]
        );
    }

    #[test]
    fn unknown_key_in_a_cache_rule_is_refused_naming_it() {
        let text = format!("{HOSTS}[[cache.rules]]\ntables = [\"t\"]\nttl_s = 5\n");
        assert_eq!(refused_key(&text), "cache.rules[0].ttl_s");
    }

    #[test]
    fn wrong_type_is_refused_naming_key_and_value() {
        let (key, value, reason) = refused(&format!(
            "{HOSTS}[server]\nmax_server_connections = \"many\"\n"
        ));
        assert_eq!(key, "server.max_server_connections");
        assert_eq!(value, "many");
        assert!(reason.contains("non-negative integer"), "{reason}");
    }

    #[test]
    fn negative_count_is_refused() {
        let key = refused_key(&format!("{HOSTS}[server]\nmax_client_connections = -1\n"));
        assert_eq!(key, "server.max_client_connections");
    }

    #[test]
    fn unknown_enum_value_is_refused_listing_the_choices() {
        let (key, value, reason) =
            refused(&format!("{HOSTS}[server]\npool_mode = \"statement\"\n"));
        assert_eq!(key, "server.pool_mode");
        assert_eq!(value, "statement");
        assert!(reason.contains("\"transaction\", \"session\""), "{reason}");
    }

    #[test]
    fn enum_values_parse() {
        let config = parse_ok(&format!(
            "{HOSTS}consistency = \"eventual\"\nlagging_reads = \"error\"\n\
             [server]\npool_mode = \"session\"\nlog_format = \"json\"\n"
        ));
        assert_eq!(config.server.pool_mode, PoolMode::Session);
        assert_eq!(config.server.log_format, LogFormat::Json);
        assert_eq!(config.cluster.consistency, Consistency::Eventual);
        assert_eq!(config.cluster.lagging_reads, LaggingReads::Error);
    }

    #[test]
    fn toml_syntax_error_is_refused_with_its_line() {
        let (_, _, reason) = refused("[cluster\nhosts = [\"127.0.0.1:5432\"]\n");
        assert!(reason.contains("line 1"), "{reason}");
    }

    #[test]
    fn listen_that_is_not_a_socket_address_is_refused() {
        let (key, value, _) = refused(&format!("{HOSTS}[server]\nlisten = \"localhost:6432\"\n"));
        assert_eq!(key, "server.listen");
        assert_eq!(value, "localhost:6432");
    }

    #[test]
    fn admin_listen_that_is_not_a_socket_address_is_refused() {
        let key = refused_key(&format!("{HOSTS}[server]\nadmin_listen = \"127.0.0.1\"\n"));
        assert_eq!(key, "server.admin_listen");
    }

    #[test]
    fn admin_listen_equal_to_listen_is_refused() {
        let text = format!(
            "{HOSTS}[server]\nlisten = \"127.0.0.1:7000\"\nadmin_listen = \"127.0.0.1:7000\"\n"
        );
        assert_eq!(refused_key(&text), "server.admin_listen");
        // Port 0 asks the OS for a free port each time, so the two never collide.
        parse_ok(&format!(
            "{HOSTS}[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n"
        ));
    }

    #[test]
    fn missing_cluster_section_is_refused_asking_for_hosts() {
        let (key, _, reason) = refused("[server]\nlisten = \"127.0.0.1:6432\"\n");
        assert_eq!(key, "cluster.hosts");
        assert!(reason.contains("at least one"), "{reason}");
    }

    #[test]
    fn empty_host_list_is_refused() {
        assert_eq!(refused_key("[cluster]\nhosts = []\n"), "cluster.hosts");
    }

    #[test]
    fn host_with_invalid_port_is_refused_naming_its_index() {
        let text = "[cluster]\nhosts = [\"127.0.0.1:5432\", \"127.0.0.1:99999\"]\n";
        let (key, value, _) = refused(text);
        assert_eq!(key, "cluster.hosts[1]");
        assert_eq!(value, "127.0.0.1:99999");
        assert_eq!(
            refused_key("[cluster]\nhosts = [\"db1:0\"]\n"),
            "cluster.hosts[0]"
        );
        assert_eq!(
            refused_key("[cluster]\nhosts = [\":5432\"]\n"),
            "cluster.hosts[0]"
        );
        assert_eq!(
            refused_key("[cluster]\nhosts = [\"::1\"]\n"),
            "cluster.hosts[0]"
        );
    }

    #[test]
    fn duplicate_hosts_are_refused() {
        let text = "[cluster]\nhosts = [\"db1:5432\", \"db2\", \"DB1\"]\n";
        let (key, value, reason) = refused(text);
        assert_eq!(key, "cluster.hosts[2]");
        assert_eq!(value, "db1:5432");
        assert!(reason.contains("cluster.hosts[0]"), "{reason}");
    }

    #[test]
    fn host_forms_parse_with_default_port() {
        let parse_host = |s: &str| s.parse::<HostAddr>().unwrap();
        assert_eq!(
            parse_host("db1.example:6543"),
            HostAddr {
                host: "db1.example".into(),
                port: 6543
            }
        );
        assert_eq!(
            parse_host("db1.example"),
            HostAddr {
                host: "db1.example".into(),
                port: 5432
            }
        );
        assert_eq!(
            parse_host("[::1]:5433"),
            HostAddr {
                host: "::1".into(),
                port: 5433
            }
        );
        assert_eq!(
            parse_host("[::1]"),
            HostAddr {
                host: "::1".into(),
                port: 5432
            }
        );
        assert_eq!(parse_host("[::1]:5433").to_string(), "[::1]:5433");
        assert_eq!(parse_host("10.0.0.1").to_string(), "10.0.0.1:5432");
    }

    #[test]
    fn zero_probe_interval_is_refused() {
        let key = refused_key(&format!("{HOSTS}probe_interval = \"0s\"\n"));
        assert_eq!(key, "cluster.probe_interval");
    }

    #[test]
    fn zero_probe_timeout_is_refused() {
        assert_eq!(
            refused_key(&format!("{HOSTS}probe_timeout = 0\n")),
            "cluster.probe_timeout"
        );
    }

    #[test]
    fn zero_max_server_connections_is_refused() {
        let key = refused_key(&format!("{HOSTS}[server]\nmax_server_connections = 0\n"));
        assert_eq!(key, "server.max_server_connections");
    }

    #[test]
    fn zero_max_client_connections_is_refused() {
        let key = refused_key(&format!("{HOSTS}[server]\nmax_client_connections = 0\n"));
        assert_eq!(key, "server.max_client_connections");
    }

    #[test]
    fn max_message_size_below_1kib_is_refused() {
        let (key, value, _) = refused(&format!("{HOSTS}[server]\nmax_message_size = 1000\n"));
        assert_eq!(key, "server.max_message_size");
        assert_eq!(value, "1000");
        let config = parse_ok(&format!("{HOSTS}[server]\nmax_message_size = \"1kB\"\n"));
        assert_eq!(config.server.max_message_size, 1024);
    }

    #[test]
    fn max_message_size_accepts_units_and_integers() {
        let size = |v: &str| {
            parse_ok(&format!("{HOSTS}[server]\nmax_message_size = {v}\n"))
                .server
                .max_message_size
        };
        assert_eq!(size("\"256MB\""), 256 << 20);
        assert_eq!(size("\"1GiB\""), 1 << 30);
        assert_eq!(size("65536"), 65536);
    }

    #[test]
    fn byte_size_units_are_powers_of_1024() {
        assert_eq!(parse_byte_size("16MB"), Ok(16 * 1024 * 1024));
        assert_eq!(parse_byte_size("16MiB"), Ok(16 * 1024 * 1024));
        assert_eq!(parse_byte_size("512kB"), Ok(512 * 1024));
        assert_eq!(parse_byte_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_byte_size("1 TB"), Ok(1 << 40));
        assert_eq!(parse_byte_size("100B"), Ok(100));
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert!(parse_byte_size("16M").is_err());
        assert!(parse_byte_size("1.5GB").is_err());
        assert!(parse_byte_size("-1").is_err());
        assert!(parse_byte_size("99999999999TB").is_err());
    }

    #[test]
    fn bad_byte_size_is_refused_naming_the_key() {
        let (key, value, reason) = refused(&format!("{HOSTS}[cache]\nmax_bytes = \"64 megs\"\n"));
        assert_eq!(key, "cache.max_bytes");
        assert_eq!(value, "64 megs");
        assert!(reason.contains("unknown size unit"), "{reason}");
    }

    #[test]
    fn replica_lag_in_bytes_or_time() {
        let lag = |v: &str| {
            parse_ok(&format!("{HOSTS}max_replica_lag = \"{v}\"\n"))
                .cluster
                .max_replica_lag
        };
        assert_eq!(lag("16MB"), LagBudget::Bytes(16 * 1024 * 1024));
        assert_eq!(lag("1s"), LagBudget::Time(Duration::from_secs(1)));
        assert_eq!(lag("500ms"), LagBudget::Time(Duration::from_millis(500)));
        assert_eq!(lag("512kB"), LagBudget::Bytes(512 * 1024));
    }

    #[test]
    fn ambiguous_replica_lag_is_refused() {
        let (key, _, reason) = refused(&format!("{HOSTS}max_replica_lag = \"16M\"\n"));
        assert_eq!(key, "cluster.max_replica_lag");
        assert!(reason.contains("months"), "{reason}");
        let (key, _, reason) = refused(&format!("{HOSTS}max_replica_lag = 16\n"));
        assert_eq!(key, "cluster.max_replica_lag");
        assert!(reason.contains("ambiguous"), "{reason}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5M").is_err());
        assert!(parse_duration("soon").is_err());

        let config = parse_ok(&format!(
            "{HOSTS}server_idle_timeout = \"2m\"\n[server]\nidle_transaction_timeout = \"45s\"\n"
        ));
        assert_eq!(config.cluster.server_idle_timeout, Duration::from_secs(120));
        assert_eq!(
            config.server.idle_transaction_timeout,
            Duration::from_secs(45)
        );
    }

    #[test]
    fn duration_without_unit_is_refused_except_zero() {
        let (key, _, reason) = refused(&format!("{HOSTS}[server]\nquery_wait_timeout = 30\n"));
        assert_eq!(key, "server.query_wait_timeout");
        assert!(reason.contains("needs a unit"), "{reason}");
        let config = parse_ok(&format!("{HOSTS}[server]\nidle_transaction_timeout = 0\n"));
        assert_eq!(config.server.idle_transaction_timeout, Duration::ZERO);
    }

    #[test]
    fn duplicate_user_names_are_refused() {
        let text = format!("{HOSTS}[[users]]\nname = \"app\"\npassword = \"a\"\n[[users]]\nname = \"app\"\npassword = \"b\"\n");
        assert_eq!(refused_key(&text), "users[1].name");
    }

    #[test]
    fn empty_user_name_is_refused() {
        assert_eq!(
            refused_key(&with_user("name = \"\"\npassword = \"x\"")),
            "users[0].name"
        );
    }

    #[test]
    fn user_without_name_is_refused() {
        let (key, _, reason) = refused(&with_user("password = \"x\""));
        assert_eq!(key, "users[0].name");
        assert!(reason.contains("required"), "{reason}");
    }

    #[test]
    fn scram_user_without_password_is_refused() {
        let (key, _, reason) = refused(&with_user("name = \"app\""));
        assert_eq!(key, "users[0].password");
        assert!(reason.contains("scram-sha-256"), "{reason}");
    }

    #[test]
    fn md5_user_without_password_is_refused() {
        let key = refused_key(&with_user("name = \"app\"\nauth = \"md5\""));
        assert_eq!(key, "users[0].password");
    }

    #[test]
    fn trust_user_needs_no_password() {
        let config = parse_ok(&with_user("name = \"app\"\nauth = \"trust\""));
        assert_eq!(config.users[0].auth, AuthMethod::Trust);
        assert_eq!(config.users[0].backend_password(), None);
    }

    #[test]
    fn md5_auth_with_scram_verifier_is_refused() {
        let text = with_user(&format!(
            "name = \"app\"\nauth = \"md5\"\npassword = \"{SCRAM_VERIFIER}\""
        ));
        let (key, value, reason) = refused(&text);
        assert_eq!(key, "users[0].password");
        assert_eq!(value, REDACTED);
        assert!(reason.contains("SCRAM verifier"), "{reason}");
    }

    #[test]
    fn scram_auth_with_md5_hash_is_refused() {
        let text = with_user(&format!("name = \"app\"\npassword = \"{MD5_HASH}\""));
        let (key, _, reason) = refused(&text);
        assert_eq!(key, "users[0].password");
        assert!(reason.contains("md5 hash"), "{reason}");
    }

    #[test]
    fn malformed_scram_verifier_is_refused() {
        let text = with_user("name = \"app\"\npassword = \"SCRAM-SHA-256$4096:salt\"");
        let (key, _, reason) = refused(&text);
        assert_eq!(key, "users[0].password");
        assert!(reason.contains("malformed SCRAM verifier"), "{reason}");
    }

    #[test]
    fn hashed_password_without_server_password_is_valid() {
        let text = format!(
            "{HOSTS}[[users]]\nname = \"a\"\npassword = \"{SCRAM_VERIFIER}\"\n\
             [[users]]\nname = \"b\"\nauth = \"md5\"\npassword = \"{MD5_HASH}\"\n"
        );
        let config = parse_ok(&text);
        assert_eq!(config.user("a").unwrap().backend_password(), None);
        assert_eq!(config.user("b").unwrap().backend_password(), None);
    }

    #[test]
    fn md5_lookalike_is_a_plain_password() {
        // PostgreSQL reads "md5" + anything but 32 lowercase hex digits as plain text.
        let config = parse_ok(&with_user("name = \"app\"\npassword = \"md5secret\""));
        assert_eq!(config.users[0].backend_password(), Some("md5secret"));
    }

    #[test]
    fn backend_credentials_default_to_the_client_ones() {
        let config = parse_ok(&format!(
            "{HOSTS}[[users]]\nname = \"app\"\npassword = \"pw\"\n\
             [[users]]\nname = \"web\"\npassword = \"{SCRAM_VERIFIER}\"\n\
             server_user = \"web_rw\"\nserver_password = \"backend\"\nmax_connections = 5\n"
        ));
        let app = config.user("app").unwrap();
        assert_eq!(
            (app.backend_user(), app.backend_password()),
            ("app", Some("pw"))
        );
        let web = config.user("web").unwrap();
        assert_eq!(
            (web.backend_user(), web.backend_password()),
            ("web_rw", Some("backend"))
        );
        assert_eq!(web.max_connections, Some(5));
        assert!(config.user("nobody").is_none());
    }

    #[test]
    fn zero_per_user_connection_limit_is_refused() {
        let key = refused_key(&with_user(
            "name = \"app\"\npassword = \"x\"\nmax_connections = 0",
        ));
        assert_eq!(key, "users[0].max_connections");
    }

    #[test]
    fn unknown_auth_method_is_refused() {
        let (key, _, reason) = refused(&with_user(
            "name = \"app\"\npassword = \"x\"\nauth = \"password\"",
        ));
        assert_eq!(key, "users[0].auth");
        assert!(reason.contains("\"scram-sha-256\""), "{reason}");
    }

    #[test]
    fn cache_rule_without_tables_is_refused() {
        let text =
            format!("{HOSTS}[[cache.rules]]\ntables = [\"a\"]\n[[cache.rules]]\ntables = []\n");
        assert_eq!(refused_key(&text), "cache.rules[1].tables");
        let text = format!("{HOSTS}[[cache.rules]]\nttl = \"5s\"\n");
        assert_eq!(refused_key(&text), "cache.rules[0].tables");
    }

    #[test]
    fn cache_rule_ttl_is_optional() {
        let config = parse_ok(&format!(
            "{HOSTS}[[cache.rules]]\ntables = [\"a\"]\nttl = \"5m\"\n[[cache.rules]]\ntables = [\"b\"]\n"
        ));
        assert_eq!(config.cache.rules[0].ttl, Some(Duration::from_secs(300)));
        assert_eq!(config.cache.rules[1].ttl, None);
    }

    #[test]
    fn zero_cache_timeout_is_refused() {
        assert_eq!(
            refused_key(&format!("{HOSTS}[cache]\ntimeout = \"0ms\"\n")),
            "cache.timeout"
        );
    }

    #[test]
    fn redis_url_with_another_scheme_is_refused_without_showing_its_password() {
        let (key, value, _) = refused(&format!(
            "{HOSTS}[cache]\nredis_url = \"http://:s3cret@cache:6379\"\n"
        ));
        assert_eq!(key, "cache.redis_url");
        assert!(!value.contains("s3cret"), "{value}");
        for url in [
            "redis://h:6379",
            "rediss://h:6380/0",
            "redis+sentinel://h:26379/mymaster",
        ] {
            parse_ok(&format!("{HOSTS}[cache]\nredis_url = \"{url}\"\n"));
        }
    }

    #[test]
    fn patroni_url_must_be_http() {
        let key = refused_key(&format!(
            "{HOSTS}patroni = [\"http://a:8008\", \"a:8008\"]\n"
        ));
        assert_eq!(key, "cluster.patroni[1]");
    }

    #[test]
    fn debug_output_never_shows_passwords() {
        let config = parse_ok(&format!(
            "{HOSTS}[[users]]\nname = \"app\"\npassword = \"hunter2\"\nserver_password = \"s3cret\"\n\
             [cache]\nredis_url = \"redis://user:r3dis@cache:6379/0\"\n"
        ));
        let debug = format!("{config:?}");
        for secret in ["hunter2", "s3cret", "r3dis"] {
            assert!(!debug.contains(secret), "{secret} leaked in {debug}");
        }
        assert!(
            debug.contains("redis://user:<redacted>@cache:6379/0"),
            "{debug}"
        );
    }
}
