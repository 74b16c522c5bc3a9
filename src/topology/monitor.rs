//! The topology monitor: one task that probes every host each `probe_interval` over its own
//! control connection (tokio-postgres), asks Patroni when configured, and publishes a new
//! `Snapshot` after each round.
//!
//! It must never block routing, and one slow host must not slow the view of the others: every
//! probe is bounded by `probe_timeout`, and a round waits for answers at most one interval. A
//! probe still running when the round ends keeps running; until it answers, that host keeps
//! its last reading, and once `probe_timeout` passes it comes back `Down`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::{Id, JoinSet};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::patroni::{self, Endpoint};
use super::snapshot::{parse_lsn, PatroniView, Probe, ReadRules, Reading, Role, Snapshot};
use super::Topology;
use crate::config::HostAddr;

/// Who the monitor logs in as.
#[derive(Debug, Clone)]
pub struct ProbeLogin {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// `[cluster] tls`, as for pooled connections.
    pub tls: crate::tls::ServerTls,
}

/// How the monitor probes and judges.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub rules: ReadRules,
    /// `[cluster] patroni` URLs; empty when Patroni is not used.
    pub patroni: Vec<String>,
}

/// One round trip (simple protocol, so no prepare): role, WAL position, receive position,
/// timeline, the server's clock, last replayed commit time.
/// The leader's timeline comes from its current WAL file name, which changes the moment it is
/// promoted (pg_control_checkpoint() only does after the next checkpoint). A replica's comes
/// from its WAL receiver, visible only to roles with pg_read_all_stats; only primaries'
/// timelines decide anything.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
     pg_last_wal_receive_lsn()::text, \
     CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1) \
      ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
     extract(epoch FROM clock_timestamp())::float8, \
     extract(epoch FROM pg_last_xact_replay_timestamp())::float8";

struct Prober {
    host: HostAddr,
    client: Option<Client>,
}

impl Prober {
    fn new(host: HostAddr) -> Prober {
        Prober { host, client: None }
    }

    async fn connect(&mut self, login: &ProbeLogin, timeout: Duration) -> Result<(), String> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host.host)
            .port(self.host.port)
            .user(&login.user)
            .dbname(&login.database)
            .application_name("pgrelay monitor")
            .connect_timeout(timeout);
        if let Some(pw) = &login.password {
            cfg.password(pw.as_bytes());
        }
        let (ssl_mode, tls) = login.tls.postgres();
        cfg.ssl_mode(ssl_mode);
        let (client, connection) = cfg.connect(tls).await.map_err(|e| with_causes(&e))?;
        tokio::spawn(async move {
            // The connection ends when the client is dropped or the server goes away; the next
            // probe notices through the client.
            let _ = connection.await;
        });
        self.client = Some(client);
        Ok(())
    }

    async fn probe(&mut self, login: &ProbeLogin, timeout: Duration) -> Probe {
        let result = tokio::time::timeout(timeout, async {
            if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                self.connect(login, timeout).await?;
            }
            let client = self.client.as_ref().ok_or("no control connection")?;
            let messages = client
                .simple_query(PROBE_SQL)
                .await
                .map_err(|e| e.to_string())?;
            messages
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(parse_row(row)),
                    _ => None,
                })
                .unwrap_or_else(|| Err("probe returned no row".into()))
        })
        .await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("probe timed out after {timeout:?}")),
        };
        if outcome.is_err() {
            // Start over with a fresh connection next time.
            self.client = None;
        }
        Probe {
            host: self.host.clone(),
            outcome,
        }
    }
}

fn parse_row(row: &tokio_postgres::SimpleQueryRow) -> Result<Reading, String> {
    let text = |i: usize| row.try_get(i).map_err(|e| e.to_string());
    let number = |i: usize| -> Result<Option<f64>, String> {
        text(i)?
            .map(|t| t.parse::<f64>().map_err(|e| format!("column {i}: {e}")))
            .transpose()
    };
    let in_recovery = match text(0)? {
        Some("t") => true,
        Some("f") => false,
        other => return Err(format!("pg_is_in_recovery() returned {other:?}")),
    };
    Ok(Reading {
        in_recovery,
        lsn: text(1)?.and_then(parse_lsn),
        receive_lsn: text(2)?.and_then(parse_lsn),
        timeline: text(3)?.and_then(|t| t.parse::<u32>().ok()),
        clock: number(4)?.ok_or("the server's clock is NULL")?,
        replay_timestamp: number(5)?,
    })
}

/// What a finished background task brings back.
enum Finished {
    Host(usize, Box<Prober>, Probe),
    Patroni(Result<Option<HostAddr>, String>),
}

/// Which background task an id belongs to, so a panicked one can be replaced.
#[derive(Debug, Clone, Copy)]
enum Task {
    Host(usize),
    Patroni,
}

/// The probers, their last results and the probes still running.
pub struct Monitor {
    settings: MonitorSettings,
    login: Arc<ProbeLogin>,
    /// None while that host's probe runs.
    probers: Vec<Option<Box<Prober>>>,
    hosts: Vec<HostAddr>,
    latest: Vec<Probe>,
    endpoints: Arc<Vec<Endpoint>>,
    patroni_running: bool,
    patroni: PatroniView,
    running: JoinSet<Finished>,
    tasks: HashMap<Id, Task>,
    /// New settings from a config reload, taken before each round (see `follow_settings`).
    updates: Option<watch::Receiver<MonitorSettings>>,
}

impl Monitor {
    pub fn new(hosts: Vec<HostAddr>, login: ProbeLogin, settings: MonitorSettings) -> Monitor {
        let mut endpoints = Vec::new();
        for url in &settings.patroni {
            match Endpoint::parse(url) {
                Ok(e) => endpoints.push(e),
                Err(e) => tracing::error!(error = %e, "Patroni endpoint ignored"),
            }
        }
        let patroni = if settings.patroni.is_empty() {
            PatroniView::NotConfigured
        } else {
            PatroniView::Unreachable
        };
        Monitor {
            login: Arc::new(login),
            probers: hosts
                .iter()
                .cloned()
                .map(|h| Some(Box::new(Prober::new(h))))
                .collect(),
            latest: hosts
                .iter()
                .map(|h| Probe {
                    host: h.clone(),
                    outcome: Err("not probed yet".into()),
                })
                .collect(),
            hosts,
            endpoints: Arc::new(endpoints),
            patroni_running: false,
            patroni,
            running: JoinSet::new(),
            tasks: HashMap::new(),
            settings,
            updates: None,
        }
    }

    /// Makes `run` take the settings sent on `updates` (a config reload) before each round:
    /// lag budget, ban time, probe interval and timeout. Patroni URLs are read only at start.
    pub fn follow_settings(mut self, updates: watch::Receiver<MonitorSettings>) -> Monitor {
        self.updates = Some(updates);
        self
    }

    /// Takes newly sent settings, if any; true when the probe interval changed.
    fn take_new_settings(&mut self) -> bool {
        let Some(updates) = self.updates.as_mut() else {
            return false;
        };
        if !updates.has_changed().unwrap_or(false) {
            return false;
        }
        let next = updates.borrow_and_update().clone();
        let interval_changed = next.probe_interval != self.settings.probe_interval;
        self.settings.probe_interval = next.probe_interval;
        self.settings.probe_timeout = next.probe_timeout;
        self.settings.rules = next.rules;
        interval_changed
    }

    /// Starts a probe of every host (and Patroni) not already being probed, waits at most
    /// `wait` for the answers, and builds the next snapshot from the latest of each.
    pub async fn round(&mut self, previous: &Snapshot, wait: Duration) -> Snapshot {
        let started = Instant::now();
        let timeout = self.settings.probe_timeout;
        for i in 0..self.probers.len() {
            if let Some(mut prober) = self.probers[i].take() {
                let login = Arc::clone(&self.login);
                let handle = self.running.spawn(async move {
                    let probe = prober.probe(&login, timeout).await;
                    Finished::Host(i, prober, probe)
                });
                self.tasks.insert(handle.id(), Task::Host(i));
            }
        }
        if !self.settings.patroni.is_empty() && !self.patroni_running {
            self.patroni_running = true;
            let endpoints = Arc::clone(&self.endpoints);
            let handle = self.running.spawn(async move {
                let leader = if endpoints.is_empty() {
                    Err("no usable Patroni URL".to_owned())
                } else {
                    patroni::fetch_leader(&endpoints, timeout)
                        .await
                        .map_err(|e| e.to_string())
                };
                Finished::Patroni(leader)
            });
            self.tasks.insert(handle.id(), Task::Patroni);
        }
        let deadline = tokio::time::Instant::from_std(started + wait);
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.running.join_next_with_id()).await {
                Ok(Some(Ok((id, finished)))) => {
                    self.tasks.remove(&id);
                    self.collect(finished);
                }
                Ok(Some(Err(failed))) => {
                    // A probe task panicked: replace what it held, report the host down.
                    match self.tasks.remove(&failed.id()) {
                        Some(Task::Host(i)) => self.collect(Finished::Host(
                            i,
                            Box::new(Prober::new(self.hosts[i].clone())),
                            Probe {
                                host: self.hosts[i].clone(),
                                outcome: Err(format!("probe task failed: {failed}")),
                            },
                        )),
                        Some(Task::Patroni) => {
                            self.collect(Finished::Patroni(Err(format!("task failed: {failed}"))))
                        }
                        None => {}
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        Snapshot::from_probes(
            self.latest.clone(),
            &self.patroni,
            previous,
            &self.settings.rules,
            started,
        )
    }

    fn collect(&mut self, finished: Finished) {
        match finished {
            Finished::Host(i, prober, probe) => {
                self.probers[i] = Some(prober);
                self.latest[i] = probe;
            }
            Finished::Patroni(answer) => {
                self.patroni_running = false;
                let view = match answer {
                    Ok(leader) => PatroniView::Leader(leader),
                    Err(e) => {
                        if self.patroni != PatroniView::Unreachable {
                            tracing::warn!(error = %e, "Patroni unreachable; leader from pg_is_in_recovery() alone");
                        }
                        PatroniView::Unreachable
                    }
                };
                if let PatroniView::Leader(leader) = &view {
                    if self.patroni != view {
                        tracing::info!(leader = ?leader.as_ref().map(ToString::to_string), "Patroni answered");
                    }
                }
                self.patroni = view;
            }
        }
    }

    /// Runs forever: probe, report the change through `on_change(before, after)`, publish,
    /// wait for the next tick.
    pub async fn run(
        mut self,
        topology: Arc<Topology>,
        on_change: impl Fn(&Snapshot, &Snapshot) + Send + 'static,
    ) {
        let interval = self.settings.probe_interval;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if self.take_new_settings() {
                let interval = self.settings.probe_interval;
                ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            let wait = self
                .settings
                .probe_interval
                .min(self.settings.probe_timeout);
            let previous = topology.snapshot();
            let next = self.round(&previous, wait).await;
            if next.split_brain {
                log_split_brain(&next);
            }
            on_change(&previous, &next);
            topology.publish(next);
        }
    }
}

/// Every round while it lasts: which servers claim leadership, and what was decided.
fn log_split_brain(snapshot: &Snapshot) {
    let claimants: Vec<String> = snapshot
        .servers
        .iter()
        .filter(|s| matches!(s.role, Role::Leader | Role::Fenced))
        .map(|s| match s.timeline {
            Some(tl) => format!("{} (timeline {tl})", s.host),
            None => format!("{} (timeline unknown)", s.host),
        })
        .collect();
    match snapshot.leader() {
        Some(l) => tracing::error!(
            servers = %claimants.join(", "),
            leader = %l.host,
            "split brain: more than one server is out of recovery; writes go only to the leader, the others are fenced"
        ),
        None => tracing::error!(
            servers = %claimants.join(", "),
            "split brain: more than one server is out of recovery and nothing tells which is current; writes are refused"
        ),
    }
}

/// Probes once, waiting up to `probe_timeout`, and publishes the result (used at startup,
/// before accepting clients). Returns the monitor to keep running with.
pub async fn start(
    topology: &Topology,
    hosts: Vec<HostAddr>,
    login: ProbeLogin,
    settings: MonitorSettings,
) -> Monitor {
    let wait = settings.probe_timeout;
    let mut monitor = Monitor::new(hosts, login, settings);
    let first = monitor.round(&topology.snapshot(), wait).await;
    if first.split_brain {
        log_split_brain(&first);
    }
    topology.publish(first);
    monitor
}

/// An error and its causes, `outer: inner: …`: tokio-postgres keeps the useful part (a TLS
/// handshake's certificate complaint, a refused connection) in the source chain.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::with_causes;

    #[derive(Debug, thiserror::Error)]
    #[error("error performing TLS handshake")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_follow_the_message() {
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        assert_eq!(
            with_causes(&Outer(inner)),
            "error performing TLS handshake: invalid peer certificate: UnknownIssuer"
        );
        let plain = std::io::Error::other("refused");
        assert_eq!(with_causes(&plain), "refused");
    }
}
