//! The admin console: what a user listed in `[server] admin_users` gets on the virtual
//! database `pgrelay`. It speaks the simple query protocol and answers `SHOW SERVERS`,
//! `SHOW POOLS`, `SHOW CLIENTS`, `SHOW STATS`, `SHOW CACHE`, `SHOW CONFIG`, `SHOW HELP`,
//! `EXPLAIN ROUTE <sql>`, and the commands `RELOAD`, `PAUSE`, `RESUME` and `SHUTDOWN`, as
//! tables of text columns that psql prints like any query result.
//!
//! It reads shared state and never opens a server connection; the commands only flip shared
//! switches (`paused`, `shutdown`) or swap the config (`RELOAD`). `EXPLAIN ROUTE` runs the
//! same pure classifier, planner and router the sessions use, on the current snapshot, so its
//! answer is where that statement would go now and why.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prometheus::core::{Collector, Metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::users::UserEntry;
use crate::cache::CacheStats;
use crate::config::{Config, LagBudget, PoolMode};
use crate::frontend::error::FrontendError;
use crate::net::Socket;
use crate::protocol::build::{self, Severity};
use crate::protocol::frame::split_frame;
use crate::protocol::{sqlstate, tag, view, TxStatus};
use crate::router::classify::{Class, Classification, FunctionCatalog, LeaderReason};
use crate::router::route::{self, Candidate, Reason, Target};
use crate::topology::{Role, Snapshot};
use crate::Shared;

/// The virtual database that gives the console.
pub const DATABASE: &str = "pgrelay";

/// Drivers parse `server_version` as a PostgreSQL version, so the console reports one.
const SERVER_VERSION: &str = "15.0 (pgrelay console)";

/// How a password is shown in `SHOW CONFIG`.
const HIDDEN: &str = "********";

/// How long `PAUSE` waits for running transactions to finish before answering anyway.
const PAUSE_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// SQLSTATE `config_file_error`: a reload was refused.
const CONFIG_FILE_ERROR: &str = "F0000";

/// Every command, for `SHOW HELP` and the error for an unknown one.
const COMMANDS: &[(&str, &str)] = &[
    (
        "SHOW SERVERS",
        "every server: role, health, WAL position, lag, read eligibility, bans, connections",
    ),
    (
        "SHOW POOLS",
        "every pool (server, user, database): connections active, idle, clients waiting, limit",
    ),
    (
        "SHOW CLIENTS",
        "every connected client: user, database, address, age, state, server held",
    ),
    (
        "SHOW STATS",
        "queries by route and reason; query time average and p99; bytes in and out",
    ),
    ("SHOW CACHE", "cache-aside store, breaker and counters"),
    (
        "SHOW CONFIG",
        "the running configuration (passwords hidden)",
    ),
    ("SHOW HELP", "this list"),
    (
        "EXPLAIN ROUTE [IN <database>] <sql>",
        "where <sql> would run now, and why",
    ),
    ("RELOAD", "re-read the config file (as SIGHUP does)"),
    (
        "PAUSE",
        "hold new transactions until RESUME (running ones finish)",
    ),
    ("RESUME", "let held transactions run"),
    (
        "SHUTDOWN",
        "stop accepting clients and shut down once they are done",
    ),
];

/// A command that failed: the client gets an ErrorResponse and the console goes on.
#[derive(Debug)]
struct CommandError {
    code: &'static str,
    message: String,
}

impl CommandError {
    fn new(code: &'static str, message: impl Into<String>) -> CommandError {
        CommandError {
            code,
            message: message.into(),
        }
    }
}

/// The result of one command: rows of text (None is NULL), then the command tag.
struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Option<String>>>,
}

/// What one command answers.
enum Answer {
    Rows(Table, &'static str),
    Done(&'static str),
    /// Done, with a notice to the operator first.
    DoneWithNotice(&'static str, String),
}

/// Serves the console to a logged-in client until it leaves, or until shutdown begins.
/// A user not in `admin_users` is refused with 28000.
pub async fn serve(
    shared: Arc<Shared>,
    stream: &mut Socket,
    user: Arc<UserEntry>,
) -> Result<(), FrontendError> {
    let mut out = BytesMut::new();
    let config = shared.config.load_full();
    if !config.server.admin_users.iter().any(|u| u == user.name()) {
        tracing::warn!(
            user = user.name(),
            "console login refused: not in admin_users"
        );
        shared.metrics.count_error(sqlstate::INVALID_AUTHORIZATION);
        build::error_response(
            &mut out,
            Severity::Fatal,
            sqlstate::INVALID_AUTHORIZATION,
            &format!("user \"{}\" is not an admin user", user.name()),
        );
        stream.write_all(&out).await?;
        return Ok(());
    }
    for (name, value) in [
        ("server_version", SERVER_VERSION),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ] {
        build::parameter_status(&mut out, name, value);
    }
    build::ready_for_query(&mut out, TxStatus::Idle);
    stream.write_all(&out).await?;

    let mut shutdown = shared.shutdown.subscribe();
    let mut input = BytesMut::with_capacity(1024);
    // After an error in an extended-protocol batch the client expects everything up to Sync
    // to be skipped, as a server would.
    let mut skip_until_sync = false;
    loop {
        let max_message_size = shared.config.load().server.max_message_size;
        while let Some(frame) = split_frame(&mut input, max_message_size)? {
            out.clear();
            match frame.tag {
                tag::TERMINATE => return Ok(()),
                tag::QUERY => {
                    let Some(sql) = view::query_text(frame.body()) else {
                        return Err(FrontendError::Protocol("invalid Query message".into()));
                    };
                    run_query(&shared, sql, &mut out).await;
                    build::ready_for_query(&mut out, TxStatus::Idle);
                }
                tag::SYNC => {
                    skip_until_sync = false;
                    build::ready_for_query(&mut out, TxStatus::Idle);
                }
                tag::FUNCTION_CALL => {
                    send_error(&shared, &mut out, &simple_only());
                    build::ready_for_query(&mut out, TxStatus::Idle);
                }
                tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE | tag::FLUSH => {
                    if !skip_until_sync {
                        send_error(&shared, &mut out, &simple_only());
                        skip_until_sync = true;
                    }
                }
                other => {
                    return Err(FrontendError::Protocol(format!(
                        "unexpected message type {:?} on the pgrelay console",
                        char::from(other)
                    )))
                }
            }
            if !out.is_empty() {
                stream.write_all(&out).await?;
            }
        }
        tokio::select! {
            read = stream.read_buf(&mut input) => {
                if read? == 0 {
                    return Ok(());
                }
            }
            _ = shutdown.wait_for(|down| *down) => return Err(FrontendError::Shutdown),
        }
    }
}

fn simple_only() -> CommandError {
    CommandError::new(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "the pgrelay console speaks the simple query protocol only",
    )
}

fn send_error(shared: &Shared, out: &mut BytesMut, error: &CommandError) {
    shared.metrics.count_error(error.code);
    build::error_response(out, Severity::Error, error.code, &error.message);
}

/// Runs every command of a Query string, in order, stopping at the first error (as a server
/// does with a multi-statement string). `EXPLAIN ROUTE` takes the rest of the string.
async fn run_query(shared: &Shared, sql: &str, out: &mut BytesMut) {
    let commands: Vec<&str> = if starts_with_words(sql.trim_start(), &["explain", "route"]) {
        vec![sql]
    } else {
        sql.split(';').filter(|c| !c.trim().is_empty()).collect()
    };
    if commands.is_empty() {
        build::empty_query_response(out);
        return;
    }
    for command in commands {
        match execute(shared, command).await {
            Ok(Answer::Rows(table, command_tag)) => {
                build::row_description_text(out, &table.columns);
                for row in &table.rows {
                    let values: Vec<Option<&str>> = row.iter().map(Option::as_deref).collect();
                    build::data_row_text(out, &values);
                }
                build::command_complete(out, command_tag);
            }
            Ok(Answer::Done(command_tag)) => build::command_complete(out, command_tag),
            Ok(Answer::DoneWithNotice(command_tag, notice)) => {
                build::notice_response(out, "01000", &notice);
                build::command_complete(out, command_tag);
            }
            Err(e) => {
                send_error(shared, out, &e);
                return;
            }
        }
    }
}

/// Whether `text` starts with these words (case-insensitive), each followed by whitespace,
/// the end, or `;`.
fn starts_with_words(text: &str, words: &[&str]) -> bool {
    let mut rest = text;
    for word in words {
        let Some(head) = rest.get(..word.len()) else {
            return false;
        };
        if !head.eq_ignore_ascii_case(word) {
            return false;
        }
        rest = &rest[word.len()..];
        if !(rest.is_empty() || rest.starts_with(|c: char| c.is_whitespace() || c == ';')) {
            return false;
        }
        rest = rest.trim_start();
    }
    true
}

async fn execute(shared: &Shared, command: &str) -> Result<Answer, CommandError> {
    let command = command.trim().trim_end_matches(';').trim_end();
    if starts_with_words(command, &["explain", "route"]) {
        let rest = command.trim_start()["explain".len()..].trim_start()["route".len()..].trim();
        return explain_route(shared, rest).map(|t| Answer::Rows(t, "EXPLAIN"));
    }
    let words: Vec<String> = command
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let show = |t: Table| Ok(Answer::Rows(t, "SHOW"));
    match words.as_slice() {
        ["show", "servers"] => show(show_servers(shared)),
        ["show", "pools"] => show(show_pools(shared)),
        ["show", "clients"] => show(show_clients(shared)),
        ["show", "stats"] => show(show_stats(shared)),
        ["show", "cache"] => show(show_cache(shared).await),
        ["show", "config"] => show(show_config(&shared.config.load())),
        ["show", "help"] | ["help"] => show(show_help()),
        ["reload"] => reload(shared),
        ["pause"] => Ok(pause(shared).await),
        ["resume"] => {
            let was_paused = shared.paused.send_replace(false);
            if was_paused {
                tracing::info!("console: RESUME; held transactions may run");
            }
            Ok(Answer::Done("RESUME"))
        }
        ["shutdown"] => {
            tracing::info!("console: SHUTDOWN");
            shared.begin_shutdown();
            Ok(Answer::Done("SHUTDOWN"))
        }
        _ => Err(CommandError::new(
            sqlstate::SYNTAX_ERROR,
            format!(
                "unknown pgrelay console command {:?}; commands: {}",
                command,
                COMMANDS
                    .iter()
                    .map(|(c, _)| *c)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn show_help() -> Table {
    Table {
        columns: vec!["command", "description"],
        rows: COMMANDS
            .iter()
            .map(|(c, d)| vec![Some((*c).to_owned()), Some((*d).to_owned())])
            .collect(),
    }
}

/// `RELOAD`: the same as SIGHUP.
fn reload(shared: &Shared) -> Result<Answer, CommandError> {
    let Some(path) = shared.config_path.as_deref() else {
        return Err(CommandError::new(
            CONFIG_FILE_ERROR,
            "pgrelay was started without a config file to re-read",
        ));
    };
    tracing::info!(path = %path.display(), "console: RELOAD");
    crate::reload(shared, path)
        .map(|()| Answer::Done("RELOAD"))
        .map_err(|reason| {
            CommandError::new(
                CONFIG_FILE_ERROR,
                format!("reload refused, the running config stays: {reason}"),
            )
        })
}

/// `PAUSE`: new transactions wait (see [`wait_while_paused`]); answers once the server
/// connections in use are back, or after `PAUSE_DRAIN_LIMIT` with a notice of how many are not.
async fn pause(shared: &Shared) -> Answer {
    if !shared.paused.send_replace(true) {
        tracing::info!("console: PAUSE; new transactions are held until RESUME");
    }
    if shared.config.load().server.pool_mode == PoolMode::Session {
        // Session pooling holds a connection per client: they never all come back.
        return Answer::Done("PAUSE");
    }
    let deadline = Instant::now() + PAUSE_DRAIN_LIMIT;
    loop {
        let active: usize = shared.pools.stats().iter().map(|p| p.active).sum();
        if active == 0 {
            return Answer::Done("PAUSE");
        }
        if Instant::now() >= deadline || !*shared.paused.borrow() {
            return Answer::DoneWithNotice(
                "PAUSE",
                format!(
                    "{active} server connection(s) are still in use by running transactions; \
                     new transactions are held"
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Holds the caller while an operator's `PAUSE` is in effect; returns at once otherwise, and
/// when shutdown begins (so a paused client can still be told to leave). Sessions call it
/// before starting a new transaction.
pub async fn wait_while_paused(shared: &Shared) {
    if !*shared.paused.borrow() {
        return;
    }
    let mut paused = shared.paused.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    tokio::select! {
        _ = paused.wait_for(|p| !*p) => {}
        _ = shutdown.wait_for(|down| *down) => {}
    }
}

fn text(value: impl ToString) -> Option<String> {
    Some(value.to_string())
}

/// An LSN as PostgreSQL prints it: `16/B374D848`.
fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn yes_no(b: bool) -> Option<String> {
    text(if b { "yes" } else { "no" })
}

fn show_servers(shared: &Shared) -> Table {
    let snapshot = shared.topology.snapshot();
    let pools = shared.pools.stats();
    let now = Instant::now();
    let rows = snapshot
        .servers
        .iter()
        .map(|s| {
            let of_host = pools.iter().filter(|p| p.key.host == s.host);
            let (active, idle) = of_host.fold((0, 0), |(a, i), p| (a + p.active, i + p.idle));
            let replica = s.role == Role::Replica;
            vec![
                text(&s.host),
                text(s.role.as_str()),
                yes_no(s.role != Role::Down),
                s.lsn.map(format_lsn),
                s.lag_bytes.filter(|_| replica).map(|b| b.to_string()),
                s.lag
                    .filter(|_| replica)
                    .map(|d| format!("{:.3}", d.as_secs_f64())),
                s.timeline.map(|t| t.to_string()),
                yes_no(s.eligible_for_reads),
                yes_no(shared.bans.is_banned(&s.host, now)),
                text(active),
                text(idle),
                s.last_error.clone(),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "host",
            "role",
            "healthy",
            "lsn",
            "lag_bytes",
            "lag_seconds",
            "timeline",
            "eligible_for_reads",
            "banned",
            "active",
            "idle",
            "last_error",
        ],
        rows,
    }
}

fn show_pools(shared: &Shared) -> Table {
    let max = shared.config.load().server.max_server_connections;
    Table {
        columns: vec![
            "host", "user", "database", "active", "idle", "waiting", "max",
        ],
        rows: shared
            .pools
            .stats()
            .iter()
            .map(|p| {
                vec![
                    text(&p.key.host),
                    text(&p.key.user),
                    text(&p.key.database),
                    text(p.active),
                    text(p.idle),
                    text(p.waiting),
                    text(max),
                ]
            })
            .collect(),
    }
}

fn show_clients(shared: &Shared) -> Table {
    Table {
        columns: vec![
            "id",
            "user",
            "database",
            "address",
            "tls",
            "connected_at",
            "age_seconds",
            "state",
            "server",
        ],
        rows: shared
            .client_registry
            .list()
            .iter()
            .map(|c| {
                vec![
                    text(c.id),
                    text(&c.user),
                    text(&c.database),
                    text(c.addr),
                    text(if c.tls { "yes" } else { "no" }),
                    text(humantime::format_rfc3339_seconds(c.connected_at)),
                    text(c.age.as_secs()),
                    text(c.state.as_str()),
                    c.server.as_ref().map(ToString::to_string),
                ]
            })
            .collect(),
    }
}

/// The `q` quantile of a histogram from its cumulative buckets `(upper bound, count)`, by
/// linear interpolation inside the bucket that holds it (as Prometheus' `histogram_quantile`
/// does). Beyond the last finite bound it answers that bound. None without observations.
pub fn estimate_quantile(buckets: &[(f64, u64)], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for &(upper, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let in_bucket = cumulative.saturating_sub(below);
            if in_bucket == 0 {
                return Some(upper);
            }
            let fraction = (rank - below as f64) / in_bucket as f64;
            return Some(lower + (upper - lower) * fraction);
        }
        lower = upper;
        below = cumulative;
    }
    buckets.last().map(|&(upper, _)| upper)
}

fn millis(seconds: f64) -> String {
    format!("{:.3}", seconds * 1000.0)
}

fn show_stats(shared: &Shared) -> Table {
    let metrics = &shared.metrics;
    let mut by_route: Vec<(String, String, u64)> = Vec::new();
    for family in metrics.queries.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            by_route.push((
                label("route"),
                label("reason"),
                metric.get_counter().get_value() as u64,
            ));
        }
    }
    by_route.sort();
    let total: u64 = by_route.iter().map(|(_, _, n)| n).sum();
    let histogram = metrics.query_duration.metric();
    let histogram = histogram.get_histogram();
    let count = histogram.get_sample_count();
    let buckets: Vec<(f64, u64)> = histogram
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    let avg = (count > 0).then(|| millis(histogram.get_sample_sum() / count as f64));
    let p99 = estimate_quantile(&buckets, count, 0.99).map(millis);
    let mut rows: Vec<Vec<Option<String>>> = by_route
        .into_iter()
        .map(|(route, reason, n)| vec![text(route), text(reason), text(n), None, None, None, None])
        .collect();
    rows.push(vec![
        text("total"),
        None,
        text(total),
        avg,
        p99,
        text(metrics.client_bytes_received.get()),
        text(metrics.client_bytes_sent.get()),
    ]);
    Table {
        columns: vec![
            "route",
            "reason",
            "queries",
            "avg_ms",
            "p99_ms",
            "bytes_received",
            "bytes_sent",
        ],
        rows,
    }
}

async fn show_cache(shared: &Shared) -> Table {
    let stats = match &shared.cache {
        Some(cache) => Some(cache.stats().await),
        None => None,
    };
    cache_table(&shared.config.load(), stats.as_ref())
}

/// `SHOW CACHE`: one row, from the cache's stats (None: no cache in this process).
fn cache_table(config: &Config, stats: Option<&CacheStats>) -> Table {
    let columns = vec![
        "store",
        "state",
        "hits",
        "misses",
        "hit_ratio",
        "fills",
        "fills_skipped",
        "invalidations",
        "errors",
        "bytes",
        "entries",
        "pending_invalidations",
    ];
    let row = match stats {
        None => {
            let state = if config.cache.enabled {
                "not configured"
            } else {
                "disabled (cache.enabled = false)"
            };
            let mut row = vec![text("none"), text(state)];
            row.resize(columns.len(), None);
            row
        }
        Some(s) => {
            let lookups = s.hits + s.misses;
            vec![
                text(s.store.as_str()),
                text(format!("breaker {}", s.breaker.as_str())),
                text(s.hits),
                text(s.misses),
                (lookups > 0).then(|| format!("{:.3}", s.hits as f64 / lookups as f64)),
                text(s.fills),
                text(s.fills_skipped),
                text(s.invalidations),
                text(s.errors),
                text(s.bytes),
                s.entries.map(|e| e.to_string()),
                text(s.pending_invalidations),
            ]
        }
    };
    Table {
        columns,
        rows: vec![row],
    }
}

/// `CamelCase` Debug names of config enums as the snake_case the file uses.
fn snake(value: impl std::fmt::Debug) -> String {
    let mut out = String::new();
    for (i, ch) in format!("{value:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn list(items: &[impl ToString]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|i| format!("{:?}", i.to_string()))
        .collect();
    format!("[{}]", items.join(", "))
}

fn secret(value: &Option<String>) -> String {
    match value {
        Some(_) => HIDDEN.to_owned(),
        None => "(none)".to_owned(),
    }
}

fn optional(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "(none)".to_owned(), |v| v.to_string())
}

/// A Redis URL without the password it may carry.
fn redis_url_shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://{HIDDEN}{}", &rest[at..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

/// The effective configuration as `(key, value)`, keys as in proxy.toml, secrets hidden.
/// Also what a reload compares to say which keys changed.
pub fn config_rows(config: &Config) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut add = |key: &str, value: String| rows.push((key.to_owned(), value));
    let s = &config.server;
    add("server.listen", s.listen.to_string());
    add("server.admin_listen", s.admin_listen.to_string());
    add("server.pool_mode", snake(s.pool_mode));
    add("server.admin_users", list(&s.admin_users));
    add(
        "server.client_login_timeout",
        duration(s.client_login_timeout),
    );
    add(
        "server.max_client_connections",
        s.max_client_connections.to_string(),
    );
    add(
        "server.max_server_connections",
        s.max_server_connections.to_string(),
    );
    add("server.max_message_size", s.max_message_size.to_string());
    add("server.query_wait_timeout", duration(s.query_wait_timeout));
    add(
        "server.idle_transaction_timeout",
        duration(s.idle_transaction_timeout),
    );
    add("server.shutdown_timeout", duration(s.shutdown_timeout));
    add("server.log_format", snake(s.log_format));
    add(
        "server.max_prepared_statements",
        s.max_prepared_statements.to_string(),
    );
    add("server.workers", s.worker_threads().to_string());
    add("server.tls_mode", s.tls_mode.as_str().to_owned());
    add(
        "server.tls_cert",
        optional(s.tls_cert.as_ref().map(|p| p.display())),
    );
    add(
        "server.tls_key",
        optional(s.tls_key.as_ref().map(|p| p.display())),
    );
    let c = &config.cluster;
    add("cluster.hosts", list(&c.hosts));
    add("cluster.probe_interval", duration(c.probe_interval));
    add("cluster.probe_timeout", duration(c.probe_timeout));
    add("cluster.max_replica_lag", c.max_replica_lag.to_string());
    add("cluster.failover_timeout", duration(c.failover_timeout));
    add("cluster.consistency", snake(c.consistency));
    add("cluster.lagging_reads", snake(c.lagging_reads));
    add(
        "cluster.server_connect_timeout",
        duration(c.server_connect_timeout),
    );
    add(
        "cluster.server_idle_timeout",
        duration(c.server_idle_timeout),
    );
    add("cluster.server_reset_query", c.server_reset_query.clone());
    add("cluster.ban_time", duration(c.ban_time));
    add("cluster.write_functions", list(&c.write_functions));
    add("cluster.patroni", list(&c.patroni));
    add("cluster.monitor_user", optional(c.monitor_user.as_ref()));
    add("cluster.monitor_password", secret(&c.monitor_password));
    add("cluster.monitor_database", c.monitor_database.clone());
    add("cluster.tls", c.tls.as_str().to_owned());
    add(
        "cluster.tls_ca_file",
        optional(c.tls_ca_file.as_ref().map(|p| p.display())),
    );
    add(
        "cluster.function_refresh_interval",
        duration(c.function_refresh_interval),
    );
    for (i, u) in config.users.iter().enumerate() {
        add(&format!("users[{i}].name"), u.name.clone());
        add(&format!("users[{i}].auth"), u.auth.as_str().to_owned());
        add(&format!("users[{i}].password"), secret(&u.password));
        add(
            &format!("users[{i}].server_user"),
            optional(u.server_user.as_ref()),
        );
        add(
            &format!("users[{i}].server_password"),
            secret(&u.server_password),
        );
        add(
            &format!("users[{i}].max_connections"),
            optional(u.max_connections),
        );
    }
    let k = &config.cache;
    add("cache.enabled", k.enabled.to_string());
    add(
        "cache.redis_url",
        optional(k.redis_url.as_deref().map(redis_url_shown)),
    );
    add("cache.default_ttl", duration(k.default_ttl));
    add("cache.max_bytes", k.max_bytes.to_string());
    add("cache.max_entry_bytes", k.max_entry_bytes.to_string());
    add("cache.timeout", duration(k.timeout));
    add("cache.retry_after", duration(k.retry_after));
    for (i, r) in k.rules.iter().enumerate() {
        add(&format!("cache.rules[{i}].tables"), list(&r.tables));
        add(
            &format!("cache.rules[{i}].ttl"),
            optional(r.ttl.map(duration)),
        );
    }
    rows
}

fn show_config(config: &Config) -> Table {
    Table {
        columns: vec!["key", "value"],
        rows: config_rows(config)
            .into_iter()
            .map(|(k, v)| vec![Some(k), Some(v)])
            .collect(),
    }
}

/// `EXPLAIN ROUTE [IN <database>] <sql>`: one `(item, value)` row per fact about the decision.
fn explain_route(shared: &Shared, args: &str) -> Result<Table, CommandError> {
    let (database, sql) = match args.split_once(char::is_whitespace) {
        Some((word, rest)) if word.eq_ignore_ascii_case("in") => {
            let rest = rest.trim_start();
            match rest.split_once(char::is_whitespace) {
                Some((db, sql)) => (db.trim_matches('"'), sql.trim()),
                None => (rest, ""),
            }
        }
        _ => ("postgres", args),
    };
    if sql.is_empty() {
        return Err(CommandError::new(
            sqlstate::SYNTAX_ERROR,
            "EXPLAIN ROUTE needs a statement: EXPLAIN ROUTE [IN <database>] <sql>",
        ));
    }
    let config = shared.config.load();
    // Only a database some client has used has a catalog; explaining for another one must
    // not create it (the refresher would then load it from the leader forever).
    let known = shared.catalogs.databases().iter().any(|d| d == database);
    let (functions, functions_note) = if known {
        let (catalog, needs_load) = shared.catalogs.for_database(database);
        let note = if needs_load {
            "built-in and write_functions (user functions not loaded yet)"
        } else {
            "built-in, write_functions and the database's volatile user functions"
        };
        (catalog.load_full(), note)
    } else {
        (
            Arc::new(FunctionCatalog::new(
                &config.cluster.write_functions,
                Vec::new(),
            )),
            "built-in and write_functions only (no client has used this database yet)",
        )
    };
    let classification = shared.classifier.classify(sql, &functions);
    let plan = crate::router::plan(&classification, sql, false);
    let snapshot = shared.topology.snapshot();
    let stats = shared.pools.stats();
    let now = Instant::now();
    let candidates: Vec<Candidate> = snapshot
        .read_candidates(None)
        .filter(|&i| !shared.bans.is_banned(&snapshot.servers[i].host, now))
        .map(|index| Candidate {
            index,
            outstanding: stats
                .iter()
                .filter(|s| s.key.host == snapshot.servers[index].host)
                .map(|s| s.active)
                .sum(),
        })
        .collect();
    let view = route::View {
        candidates: &candidates,
        replicas_up: snapshot.replicas().next().is_some(),
        lagging_reads: config.cluster.lagging_reads,
        round_robin: shared
            .round_robin
            .load(std::sync::atomic::Ordering::Relaxed),
    };
    let decision = route::route(plan.need, plan.hint, &view);

    let (target, target_lag) = match decision.target {
        Target::Leader => match snapshot.leader() {
            Some(l) => (l.host.to_string(), "0 (leader)".to_owned()),
            None => (
                "none: no leader known (writes wait up to failover_timeout)".to_owned(),
                String::new(),
            ),
        },
        Target::Replica(i) => {
            let s = &snapshot.servers[i];
            (s.host.to_string(), lag_text(s.lag_bytes, s.lag))
        }
        Target::Refuse => (
            "refused: lagging_reads = \"error\"".to_owned(),
            String::new(),
        ),
    };
    let kinds: Vec<String> = classification
        .statements
        .iter()
        .map(|s| kind_name(&s.kind))
        .collect();
    let mut write_tables = classification.write_tables.join(", ");
    if classification.writes_unknown_tables {
        if !write_tables.is_empty() {
            write_tables.push_str(", ");
        }
        write_tables.push_str("(unknown tables)");
    }
    let (cacheable, cache_why) = cache_verdict(&config, &classification, &plan);
    let rows: Vec<(&str, String)> = vec![
        ("database", database.to_owned()),
        ("class", class_text(&classification.class)),
        ("statements", kinds.join(", ")),
        ("reason", decision.reason.as_str().to_owned()),
        (
            "rule",
            rule_text(
                decision.reason,
                decision.target,
                &classification,
                &config.cluster.max_replica_lag,
            ),
        ),
        ("target", target),
        (
            "target_role",
            match decision.target {
                Target::Leader => "leader",
                Target::Replica(_) => "replica",
                Target::Refuse => "none",
            }
            .to_owned(),
        ),
        ("target_lag", target_lag),
        ("replicas", replicas_text(&snapshot, shared, now)),
        ("read_tables", classification.read_tables.join(", ")),
        ("write_tables", write_tables),
        ("cacheable", if cacheable { "yes" } else { "no" }.to_owned()),
        ("cache", cache_why),
        ("pinned", if plan.pin { "yes" } else { "no" }.to_owned()),
        (
            "hint",
            classification
                .hint
                .as_ref()
                .map_or_else(String::new, |h| format!("{h:?}")),
        ),
        ("functions", functions_note.to_owned()),
        (
            "consistency",
            "explained for a client without a recent write (read_your_writes not applied)"
                .to_owned(),
        ),
    ];
    Ok(Table {
        columns: vec!["item", "value"],
        rows: rows
            .into_iter()
            .map(|(k, v)| vec![text(k), Some(v)])
            .collect(),
    })
}

fn lag_text(bytes: Option<u64>, lag: Option<Duration>) -> String {
    match (bytes, lag) {
        (Some(b), Some(t)) => format!("{b} bytes, {:.3}s", t.as_secs_f64()),
        (Some(b), None) => format!("{b} bytes"),
        (None, Some(t)) => format!("{:.3}s", t.as_secs_f64()),
        (None, None) => "unknown".to_owned(),
    }
}

/// Each replica and why it may or may not take this read.
fn replicas_text(snapshot: &Snapshot, shared: &Shared, now: Instant) -> String {
    let mut out = String::new();
    for s in snapshot.servers.iter().filter(|s| s.role != Role::Leader) {
        if !out.is_empty() {
            out.push_str("; ");
        }
        let state = if s.role != Role::Replica {
            s.role.as_str().to_owned()
        } else if shared.bans.is_banned(&s.host, now) {
            "banned".to_owned()
        } else if s.eligible_for_reads {
            format!("eligible, lag {}", lag_text(s.lag_bytes, s.lag))
        } else {
            format!("over max_replica_lag, lag {}", lag_text(s.lag_bytes, s.lag))
        };
        let _ = write!(out, "{}: {state}", s.host);
    }
    out
}

/// The statement kind's name, from its Debug form (`Begin { read_only: None }` → `begin`).
fn kind_name(kind: &impl std::fmt::Debug) -> String {
    let debug = format!("{kind:?}");
    let head = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("");
    snake(format_args!("{head}"))
}

fn class_text(class: &Class) -> String {
    match class {
        Class::Read => "read".to_owned(),
        Class::Write => "write".to_owned(),
        Class::LeaderRead(r) => format!("leader_read ({})", leader_reason_text(r)),
    }
}

fn leader_reason_text(reason: &LeaderReason) -> String {
    match reason {
        LeaderReason::ForUpdate => "a locking clause: FOR UPDATE / SHARE".to_owned(),
        LeaderReason::WriteFunction(f) => format!("calls {f}, which has side effects"),
        LeaderReason::ReadWriteTransaction => "a transaction that may write".to_owned(),
        LeaderReason::SerializableTransaction => {
            "a serializable transaction (a standby refuses one)".to_owned()
        }
        LeaderReason::ExplicitLock => "LOCK TABLE".to_owned(),
        LeaderReason::Listen => "LISTEN / UNLISTEN".to_owned(),
        LeaderReason::ServerSideCopy => "COPY to a file or program on the server".to_owned(),
    }
}

/// The routing rule that decided, in words.
fn rule_text(reason: Reason, target: Target, c: &Classification, budget: &LagBudget) -> String {
    match reason {
        Reason::Read => {
            "autocommit read without side effects: a replica within the lag budget".into()
        }
        Reason::ReadOnlyTransaction => "READ ONLY transaction: one replica for all of it".into(),
        Reason::Write => "changes data or schema, or could not be understood: the leader".into(),
        Reason::ForUpdate => match &c.class {
            Class::LeaderRead(r) => format!("{}: the leader", leader_reason_text(r)),
            _ => "must run on the leader".into(),
        },
        Reason::InTransaction => "explicit transaction: the leader for all of it".into(),
        Reason::Pinned => "session state transaction pooling cannot move (LISTEN, session \
             advisory lock, temp table, WITH HOLD cursor, PREPARE): pins the client to its \
             leader connection"
            .into(),
        Reason::Hint => "a /* pgrelay: leader | replica */ hint".into(),
        Reason::ServerState => "asks the server's own state (transaction_read_only, \
             in_hot_standby): answered by the leader"
            .into(),
        Reason::Lag if target == Target::Refuse => format!(
            "every replica is over max_replica_lag ({budget}) or banned, and lagging_reads = \
             \"error\": refused"
        ),
        Reason::Lag => {
            format!("every replica is over max_replica_lag ({budget}) or banned: the leader")
        }
        Reason::Fallback => "no replica is up: the leader".into(),
    }
}

/// Whether the result would be served from (or stored in) the cache, and why.
fn cache_verdict(
    config: &Config,
    c: &Classification,
    plan: &crate::router::Plan,
) -> (bool, String) {
    if !config.cache.enabled {
        return (
            false,
            "the cache is disabled (cache.enabled = false)".into(),
        );
    }
    if !c.cacheable {
        let why = if c.class != Class::Read {
            "not a plain read"
        } else if c.statements.len() != 1 {
            "more than one statement"
        } else if c.read_tables.is_empty() {
            "reads no table"
        } else {
            "calls a volatile, session-dependent or unknown function, or reads a system catalog"
        };
        return (false, why.into());
    }
    if plan.need != route::Need::Read {
        return (false, "not an autocommit read".into());
    }
    if let Some(cache) = c.hint.as_ref().and_then(|h| h.cache) {
        let ttl = cache.ttl.unwrap_or(config.cache.default_ttl);
        return (true, format!("cache hint, ttl {}", duration(ttl)));
    }
    match crate::cache::rule_ttl(
        &config.cache.rules,
        config.cache.default_ttl,
        &c.cache_tables,
    ) {
        Some(ttl) => (
            true,
            format!("selected by [[cache.rules]], ttl {}", duration(ttl)),
        ),
        None => (
            false,
            format!(
                "no [[cache.rules]] entry selects every table read ({})",
                c.read_tables.join(", ")
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        // 100 observations: 50 under 1 ms, 40 in (1, 10] ms, 10 in (10, 100] ms.
        let buckets = [(0.001, 50), (0.010, 90), (0.100, 100)];
        let p50 = estimate_quantile(&buckets, 100, 0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-12, "{p50}");
        let p99 = estimate_quantile(&buckets, 100, 0.99).unwrap();
        assert!((p99 - 0.091).abs() < 1e-9, "{p99}");
        assert_eq!(estimate_quantile(&buckets, 0, 0.99), None);
        // Observations above every bound: the last bound is the best answer.
        assert_eq!(estimate_quantile(&[(0.001, 1)], 5, 0.99), Some(0.001));
    }

    #[test]
    fn commands_match_whole_words_only() {
        assert!(starts_with_words(
            "EXPLAIN ROUTE select 1",
            &["explain", "route"]
        ));
        assert!(starts_with_words(
            "explain\n  route;",
            &["explain", "route"]
        ));
        assert!(!starts_with_words("explain routes", &["explain", "route"]));
        assert!(!starts_with_words("explain", &["explain", "route"]));
    }

    #[test]
    fn config_rows_hide_secrets() {
        let config = Config::from_toml_str_with_env(
            "[cluster]\nhosts = [\"127.0.0.1:5432\"]\nmonitor_password = \"m0n\"\n\
             [[users]]\nname = \"app\"\npassword = \"s3cret\"\n\
             [cache]\nredis_url = \"redis://u:pw@127.0.0.1:6379/0\"\n",
            Vec::new(),
        )
        .unwrap();
        let rows = config_rows(&config);
        let value = |key: &str| {
            rows.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {key}"))
        };
        assert_eq!(value("users[0].password"), HIDDEN);
        assert_eq!(value("cluster.monitor_password"), HIDDEN);
        assert_eq!(
            value("cache.redis_url"),
            "redis://********@127.0.0.1:6379/0"
        );
        assert_eq!(value("server.pool_mode"), "transaction");
        assert_eq!(value("cluster.consistency"), "read_your_writes");
        let all: String = rows.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        assert!(!all.contains("s3cret") && !all.contains("m0n") && !all.contains(":pw@"));
    }

    #[test]
    fn cache_row_reports_the_store_or_its_absence() {
        let config =
            Config::from_toml_str_with_env("[cluster]\nhosts = [\"127.0.0.1:5432\"]\n", Vec::new())
                .unwrap();
        let none = cache_table(&config, None);
        assert_eq!(none.rows[0][0].as_deref(), Some("none"));
        assert_eq!(none.rows[0][1].as_deref(), Some("not configured"));
        assert_eq!(none.rows[0].len(), none.columns.len());
        let stats = CacheStats {
            store: crate::cache::StoreKind::Memory,
            breaker: crate::cache::BreakerState::Closed,
            hits: 3,
            misses: 1,
            fills: 1,
            fills_skipped: 0,
            invalidations: 2,
            errors: 0,
            bytes: 100,
            entries: Some(1),
            pending_invalidations: 0,
            store_requests: 0,
        };
        let some = cache_table(&config, Some(&stats));
        let row: Vec<&str> = some.rows[0]
            .iter()
            .map(|v| v.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(&row[..5], &["memory", "breaker closed", "3", "1", "0.750"]);
    }

    #[test]
    fn statement_kinds_read_as_words() {
        use crate::router::classify::StatementKind;
        assert_eq!(kind_name(&StatementKind::Query), "query");
        assert_eq!(
            kind_name(&StatementKind::Begin { read_only: None }),
            "begin"
        );
        assert_eq!(
            kind_name(&StatementKind::DeclareCursor { with_hold: true }),
            "declare_cursor"
        );
    }
}
