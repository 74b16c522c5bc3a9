//! The published view of the cluster: which server is the leader, which are replicas, how far
//! behind each replica is and whether it may take reads. An immutable value, built by the
//! monitor from one round of probes plus the previous snapshot (for hysteresis, bans and the
//! leader's recent WAL positions), and read without locks by routing.
//!
//! Everything here is pure: `Snapshot::from_probes` takes data and a clock reading and returns
//! data, so every rule (leader election, split brain, lag, hysteresis) is unit-tested without
//! a server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{HostAddr, LagBudget};

/// The role a server plays in the published snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The one server writes go to: reachable, not in recovery, and chosen (see `from_probes`).
    Leader,
    /// Reachable and not in recovery, but not the leader: a second primary (split brain) that
    /// lost the timeline rule or Patroni's vote, or any primary while the tie is unresolved.
    /// It gets no traffic.
    Fenced,
    /// Reachable and in recovery.
    Replica,
    /// Not reachable, or the probe failed.
    Down,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Leader, Role::Fenced, Role::Replica, Role::Down];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Fenced => "fenced",
            Role::Replica => "replica",
            Role::Down => "down",
        }
    }
}

/// What one probe of one server returned, before any comparison with the other servers.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub in_recovery: bool,
    /// Not in recovery: `pg_current_wal_lsn()`. In recovery: `pg_last_wal_replay_lsn()`.
    pub lsn: Option<u64>,
    /// In recovery: `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<u64>,
    /// Not in recovery: the timeline of the WAL being written. In recovery: the timeline
    /// received from upstream, when the monitor's role may see it.
    pub timeline: Option<u32>,
    /// The server's `clock_timestamp()`, seconds since the Unix epoch.
    pub clock: f64,
    /// In recovery: `pg_last_xact_replay_timestamp()` (the leader's commit time of the last
    /// replayed transaction), seconds since the Unix epoch.
    pub replay_timestamp: Option<f64>,
}

/// One probe result: a reading, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub host: HostAddr,
    pub outcome: Result<Reading, String>,
}

/// What Patroni says about leadership this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatroniView {
    /// No `[cluster] patroni` URLs: roles come from `pg_is_in_recovery()` alone.
    NotConfigured,
    /// Configured but no endpoint answered: fall back to `pg_is_in_recovery()`.
    Unreachable,
    /// The member holding the leader key (host and port as Patroni reports them), or None
    /// when no member does (Patroni is between leaders).
    Leader(Option<HostAddr>),
}

/// The settings that decide read eligibility.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadRules {
    pub max_replica_lag: LagBudget,
    /// A replica whose probe failed gets no reads for this long.
    pub ban_time: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerState {
    pub host: HostAddr,
    pub role: Role,
    /// On the leader (or a fenced primary), `pg_current_wal_lsn()`; on a replica,
    /// `pg_last_wal_replay_lsn()`: what a read there can see.
    pub lsn: Option<u64>,
    /// On a replica, `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<u64>,
    /// Bytes of WAL a replica has yet to replay, measured against the leader's LSN.
    pub lag_bytes: Option<u64>,
    /// How long a replica has been missing WAL the leader has: zero when it has replayed
    /// everything the leader wrote, so an idle leader never makes a replica look late.
    pub lag: Option<Duration>,
    pub timeline: Option<u32>,
    /// A replica that may take reads: reachable, not banned after a failed probe, and within
    /// `max_replica_lag`. It loses this when over the budget and gets it back only when under
    /// half of it, so a replica hovering at the limit does not flap.
    pub eligible_for_reads: bool,
    /// When the last failed probe of this server happened (drives the read ban).
    pub failed_at: Option<Instant>,
    pub last_error: Option<String>,
}

/// The leader's WAL position at a moment, remembered to tell how long a replica has been
/// missing WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LsnSample {
    at: Instant,
    lsn: u64,
}

/// How many of the leader's recent positions a snapshot remembers (64 s at 250 ms probes);
/// a replica further behind than that is timed by its replay timestamp instead.
const LSN_HISTORY: usize = 256;

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub servers: Vec<ServerState>,
    /// Index into `servers` of the one leader, or None when there is none or more than one.
    pub leader: Option<usize>,
    /// More than one reachable server is out of recovery. The timeline rule (or Patroni) may
    /// still have chosen a leader; the others are `Fenced`.
    pub split_brain: bool,
    /// The leader's `pg_current_wal_lsn()` when probed.
    pub leader_lsn: Option<u64>,
    /// The current leader, or the last one this pgrelay knew (survives leaderless snapshots,
    /// so a failover is told from a leader coming back).
    pub last_leader: Option<HostAddr>,
    /// When the leader was found missing, if it still is (None before any leader was seen).
    pub leaderless_since: Option<Instant>,
    /// Whether Patroni was consulted and answered (false when not configured).
    pub patroni_answered: bool,
    pub taken_at: Instant,
    leader_history: Arc<Vec<LsnSample>>,
}

impl Snapshot {
    /// Before the first probe: every host unknown.
    pub fn unknown(hosts: &[HostAddr]) -> Snapshot {
        Snapshot {
            servers: hosts
                .iter()
                .map(|h| ServerState {
                    host: h.clone(),
                    role: Role::Down,
                    lsn: None,
                    receive_lsn: None,
                    lag_bytes: None,
                    lag: None,
                    timeline: None,
                    eligible_for_reads: false,
                    failed_at: None,
                    last_error: Some("not probed yet".into()),
                })
                .collect(),
            leader: None,
            split_brain: false,
            leader_lsn: None,
            last_leader: None,
            leaderless_since: None,
            patroni_answered: false,
            taken_at: Instant::now(),
            leader_history: Arc::new(Vec::new()),
        }
    }

    pub fn leader(&self) -> Option<&ServerState> {
        self.leader.and_then(|i| self.servers.get(i))
    }

    pub fn replicas(&self) -> impl Iterator<Item = &ServerState> {
        self.servers.iter().filter(|s| s.role == Role::Replica)
    }

    /// Indices of the replicas a read may go to: eligible for reads, and (for a client that
    /// must see its own write) having replayed at least `min_lsn`. Empty means the leader
    /// (or a refusal, per `lagging_reads`).
    pub fn read_candidates(&self, min_lsn: Option<u64>) -> impl Iterator<Item = usize> + '_ {
        self.servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.eligible_for_reads)
            .filter(move |(_, s)| match min_lsn {
                None => true,
                Some(min) => s.lsn.is_some_and(|replayed| replayed >= min),
            })
            .map(|(i, _)| i)
    }

    /// Builds the next snapshot from one round of probes.
    ///
    /// Leader: exactly one reachable server out of recovery. When several are, the highest
    /// timeline wins if it is unique (the others are stale primaries that have not noticed a
    /// promotion); otherwise there is none. When Patroni answered, a server is leader only if
    /// Patroni names it too, and never over a primary on a higher timeline. Servers out of
    /// recovery that are not the leader are `Fenced`.
    ///
    /// `previous` supplies what one round cannot: read eligibility (hysteresis), the time of
    /// the last failed probe (bans), the leader's recent WAL positions (time lag) and how long
    /// the cluster has been without a leader. `now` is when this round's probes were taken.
    pub fn from_probes(
        probes: Vec<Probe>,
        patroni: &PatroniView,
        previous: &Snapshot,
        rules: &ReadRules,
        now: Instant,
    ) -> Snapshot {
        let mut servers: Vec<ServerState> = probes
            .iter()
            .map(|p| initial_state(p, previous, now))
            .collect();
        let primaries: Vec<usize> = servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.role == Role::Leader)
            .map(|(i, _)| i)
            .collect();
        let split_brain = primaries.len() > 1;
        let leader = choose_leader(&servers, &primaries, patroni);
        for &i in &primaries {
            if Some(i) != leader {
                servers[i].role = Role::Fenced;
            }
        }

        let leader_lsn = leader.and_then(|i| servers[i].lsn);
        let leader_host = leader.map(|i| servers[i].host.clone());
        let same_leader = leader_host.is_some() && leader_host == previous.last_leader;
        let history = match leader_lsn {
            Some(lsn) => {
                let mut samples: Vec<LsnSample> = if same_leader {
                    let kept = previous.leader_history.len().min(LSN_HISTORY - 1);
                    previous.leader_history[previous.leader_history.len() - kept..].to_vec()
                } else {
                    Vec::new()
                };
                samples.push(LsnSample { at: now, lsn });
                Arc::new(samples)
            }
            None => Arc::new(Vec::new()),
        };

        let leader_clock = leader.and_then(|i| probes[i].outcome.as_ref().ok().map(|r| r.clock));
        for (i, server) in servers.iter_mut().enumerate() {
            if server.role != Role::Replica {
                continue;
            }
            if let Some(leader_lsn) = leader_lsn {
                let replay_ts = probes[i]
                    .outcome
                    .as_ref()
                    .ok()
                    .and_then(|r| r.replay_timestamp);
                server.lag_bytes = server.lsn.map(|r| leader_lsn.saturating_sub(r));
                server.lag = server.lsn.and_then(|replayed| {
                    time_lag(replayed, leader_lsn, &history, leader_clock, replay_ts, now)
                });
            }
            let before = previous
                .servers
                .iter()
                .find(|s| s.host == server.host && s.role == Role::Replica);
            server.eligible_for_reads = eligible(server, before, leader.is_some(), rules, now);
        }

        let leaderless_since = match leader {
            Some(_) => None,
            None if previous.leader.is_some() => Some(now),
            None => previous.leaderless_since,
        };
        Snapshot {
            servers,
            leader,
            split_brain,
            leader_lsn,
            last_leader: leader_host.or_else(|| previous.last_leader.clone()),
            leaderless_since,
            patroni_answered: matches!(patroni, PatroniView::Leader(_)),
            taken_at: now,
            leader_history: history,
        }
    }
}

/// A server's state from its own probe alone: role as found (`Leader` for any primary, sorted
/// out later), LSNs, timeline, error.
fn initial_state(probe: &Probe, previous: &Snapshot, now: Instant) -> ServerState {
    let earlier_failure = previous
        .servers
        .iter()
        .find(|s| s.host == probe.host)
        .and_then(|s| s.failed_at);
    match &probe.outcome {
        Ok(r) => ServerState {
            host: probe.host.clone(),
            role: if r.in_recovery {
                Role::Replica
            } else {
                Role::Leader
            },
            lsn: r.lsn,
            receive_lsn: r.receive_lsn.filter(|_| r.in_recovery),
            lag_bytes: None,
            lag: None,
            timeline: r.timeline,
            eligible_for_reads: false,
            failed_at: earlier_failure,
            last_error: None,
        },
        Err(e) => ServerState {
            host: probe.host.clone(),
            role: Role::Down,
            lsn: None,
            receive_lsn: None,
            lag_bytes: None,
            lag: None,
            timeline: None,
            eligible_for_reads: false,
            failed_at: Some(now),
            last_error: Some(e.clone()),
        },
    }
}

/// The one primary writes may go to, if any (see `Snapshot::from_probes`).
fn choose_leader(
    servers: &[ServerState],
    primaries: &[usize],
    patroni: &PatroniView,
) -> Option<usize> {
    let by_timeline = || match primaries {
        [] => None,
        [one] => Some(*one),
        many => {
            let best = many.iter().copied().max_by_key(|&i| servers[i].timeline)?;
            let best_tl = servers[best].timeline?;
            let ties = many
                .iter()
                .filter(|&&i| servers[i].timeline == Some(best_tl))
                .count();
            (ties == 1).then_some(best)
        }
    };
    match patroni {
        PatroniView::NotConfigured | PatroniView::Unreachable => by_timeline(),
        PatroniView::Leader(None) => None,
        PatroniView::Leader(Some(named)) => {
            let chosen = primaries
                .iter()
                .copied()
                .find(|&i| same_host(&servers[i].host, named))?;
            // Patroni's leader key can be stale for a moment after a promotion it did not
            // run; a primary on a newer timeline proves it wrong.
            let newer_elsewhere = primaries
                .iter()
                .any(|&i| i != chosen && servers[i].timeline > servers[chosen].timeline);
            (!newer_elsewhere).then_some(chosen)
        }
    }
}

fn same_host(a: &HostAddr, b: &HostAddr) -> bool {
    a.port == b.port && a.host.eq_ignore_ascii_case(&b.host)
}

/// How long a replica that has replayed up to `replayed` has been missing WAL the leader has.
///
/// Zero when it has replayed everything the leader had at this probe. Otherwise the leader's
/// recent positions tell when the leader first went past `replayed` (accurate to one probe
/// interval, and immune to the leader having been idle before); when the replica is behind
/// every remembered position, the leader's clock minus the replica's last replayed commit
/// time is used (the DESIGN's "replay delay while the leader is writing").
fn time_lag(
    replayed: u64,
    leader_lsn: u64,
    history: &[LsnSample],
    leader_clock: Option<f64>,
    replay_timestamp: Option<f64>,
    now: Instant,
) -> Option<Duration> {
    if replayed >= leader_lsn {
        return Some(Duration::ZERO);
    }
    let covered = history.first().is_some_and(|s| s.lsn <= replayed);
    if covered {
        let first_beyond = history.iter().find(|s| s.lsn > replayed)?;
        return Some(now.saturating_duration_since(first_beyond.at));
    }
    let by_timestamp = leader_clock
        .zip(replay_timestamp)
        .map(|(clock, replayed_at)| clock - replayed_at)
        .filter(|d| d.is_finite())
        .map(|d| Duration::from_secs_f64(d.max(0.0)));
    let at_least = history.first().map(|s| now.saturating_duration_since(s.at));
    match (by_timestamp, at_least) {
        (Some(ts), Some(min)) => Some(ts.max(min)),
        (ts, min) => ts.or(min),
    }
}

/// Read eligibility of a replica (see `ServerState::eligible_for_reads`). `before` is the same
/// server in the previous snapshot if it was a replica there.
fn eligible(
    server: &ServerState,
    before: Option<&ServerState>,
    leader_known: bool,
    rules: &ReadRules,
    now: Instant,
) -> bool {
    let banned = server
        .failed_at
        .is_some_and(|t| now.saturating_duration_since(t) < rules.ban_time);
    if server.role != Role::Replica || banned {
        return false;
    }
    let was_eligible = before.is_some_and(|b| b.eligible_for_reads);
    if !leader_known {
        // Nothing to measure against during a failover: a replica keeps serving reads as it
        // did (its data is not getting older relative to a leader that is not writing).
        return before.is_none() || was_eligible;
    }
    // Over budget: leave. Coming back: only at half the budget or less.
    let (lag, budget) = match rules.max_replica_lag {
        LagBudget::Bytes(max) => match server.lag_bytes {
            Some(lag) => (lag as f64, max as f64),
            None => return false,
        },
        LagBudget::Time(max) => match server.lag {
            Some(lag) => (lag.as_secs_f64(), max.as_secs_f64()),
            None => return false,
        },
    };
    if was_eligible {
        lag <= budget
    } else {
        lag <= budget / 2.0
    }
}

/// Parses a textual LSN ("16/B374D848") into its byte position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
        return None;
    }
    Some((hi << 32) | lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn host(port: u16) -> HostAddr {
        HostAddr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn hosts(n: u16) -> Vec<HostAddr> {
        (1..=n).map(host).collect()
    }

    fn reading(in_recovery: bool, lsn: u64, timeline: u32) -> Reading {
        Reading {
            in_recovery,
            lsn: Some(lsn),
            receive_lsn: in_recovery.then_some(lsn),
            timeline: Some(timeline),
            clock: 1_000_000.0,
            replay_timestamp: None,
        }
    }

    fn primary(port: u16, lsn: u64, timeline: u32) -> Probe {
        Probe {
            host: host(port),
            outcome: Ok(reading(false, lsn, timeline)),
        }
    }

    fn replica(port: u16, replayed: u64) -> Probe {
        Probe {
            host: host(port),
            outcome: Ok(reading(true, replayed, 1)),
        }
    }

    /// A replica whose last replayed commit happened `ago` seconds before the leader's clock.
    fn replica_replayed_ago(port: u16, replayed: u64, ago: f64) -> Probe {
        let mut p = replica(port, replayed);
        if let Ok(r) = &mut p.outcome {
            r.replay_timestamp = Some(1_000_000.0 - ago);
        }
        p
    }

    fn down(port: u16) -> Probe {
        Probe {
            host: host(port),
            outcome: Err("connection refused".into()),
        }
    }

    fn bytes_rules(max: u64) -> ReadRules {
        ReadRules {
            max_replica_lag: LagBudget::Bytes(max),
            ban_time: Duration::ZERO,
        }
    }

    fn time_rules(max: Duration) -> ReadRules {
        ReadRules {
            max_replica_lag: LagBudget::Time(max),
            ban_time: Duration::ZERO,
        }
    }

    /// One snapshot from nothing, as at startup.
    fn first(probes: Vec<Probe>, rules: &ReadRules) -> Snapshot {
        let n = probes.len() as u16;
        Snapshot::from_probes(
            probes,
            &PatroniView::NotConfigured,
            &Snapshot::unknown(&hosts(n)),
            rules,
            Instant::now(),
        )
    }

    fn next(
        probes: Vec<Probe>,
        previous: &Snapshot,
        rules: &ReadRules,
        after: Duration,
    ) -> Snapshot {
        Snapshot::from_probes(
            probes,
            &PatroniView::NotConfigured,
            previous,
            rules,
            previous.taken_at + after,
        )
    }

    #[test]
    fn one_leader_and_replica_lag_in_bytes() {
        let s = first(
            vec![primary(1, 1000, 1), replica(2, 400)],
            &bytes_rules(1 << 20),
        );
        assert_eq!(s.leader().map(|l| l.host.port), Some(1));
        assert_eq!(s.leader_lsn, Some(1000));
        assert_eq!(s.servers[1].lag_bytes, Some(600));
        assert!(s.servers[1].eligible_for_reads);
        assert!(
            !s.servers[0].eligible_for_reads,
            "the leader is not a read replica"
        );
        assert!(!s.split_brain);
    }

    #[test]
    fn two_leaders_on_one_timeline_means_no_leader() {
        let s = first(vec![primary(1, 10, 1), primary(2, 10, 1)], &bytes_rules(0));
        assert!(s.leader.is_none());
        assert!(s.split_brain);
        assert_eq!(s.servers[0].role, Role::Fenced);
        assert_eq!(s.servers[1].role, Role::Fenced);
    }

    #[test]
    fn two_leaders_higher_timeline_wins_and_the_other_is_fenced() {
        let s = first(vec![primary(1, 10, 1), primary(2, 10, 2)], &bytes_rules(0));
        assert_eq!(s.leader().map(|l| l.host.port), Some(2));
        assert_eq!(s.servers[0].role, Role::Fenced);
        assert!(s.split_brain);
    }

    #[test]
    fn no_reachable_leader() {
        let s = first(vec![down(1), replica(2, 10)], &bytes_rules(100));
        assert!(s.leader.is_none());
        assert!(!s.split_brain);
        assert_eq!(s.servers[0].role, Role::Down);
        assert!(s.servers[1].lag_bytes.is_none());
        assert!(
            s.servers[1].eligible_for_reads,
            "reads keep flowing to replicas while there is no leader"
        );
    }

    #[test]
    fn replica_over_byte_budget_leaves_and_returns_only_under_half() {
        let rules = bytes_rules(1000);
        let s0 = first(vec![primary(1, 10_000, 1), replica(2, 9_500)], &rules);
        assert!(
            s0.servers[1].eligible_for_reads,
            "500 B behind, budget 1000"
        );
        // Still within budget: stays.
        let s1 = next(
            vec![primary(1, 20_000, 1), replica(2, 19_000)],
            &s0,
            &rules,
            SEC,
        );
        assert!(
            s1.servers[1].eligible_for_reads,
            "exactly at the budget stays"
        );
        // Over: leaves.
        let s2 = next(
            vec![primary(1, 30_000, 1), replica(2, 28_000)],
            &s1,
            &rules,
            SEC,
        );
        assert_eq!(s2.servers[1].lag_bytes, Some(2_000));
        assert!(!s2.servers[1].eligible_for_reads);
        // Back under the budget but above half: still out (hysteresis).
        let s3 = next(
            vec![primary(1, 30_000, 1), replica(2, 29_200)],
            &s2,
            &rules,
            SEC,
        );
        assert!(
            !s3.servers[1].eligible_for_reads,
            "800 B is above half the budget"
        );
        // Under half: back.
        let s4 = next(
            vec![primary(1, 30_000, 1), replica(2, 29_600)],
            &s3,
            &rules,
            SEC,
        );
        assert!(
            s4.servers[1].eligible_for_reads,
            "400 B is under half the budget"
        );
        assert_eq!(s4.read_candidates(None).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn replica_lag_in_time_from_replay_timestamp_when_far_behind() {
        let rules = time_rules(SEC);
        let s = first(
            vec![primary(1, 5_000, 1), replica_replayed_ago(2, 1_000, 3.5)],
            &rules,
        );
        assert_eq!(s.servers[1].lag, Some(Duration::from_millis(3500)));
        assert!(!s.servers[1].eligible_for_reads, "3.5 s behind, budget 1 s");
        assert!(s.read_candidates(None).next().is_none());
    }

    #[test]
    fn idle_leader_means_no_time_lag() {
        // Nothing committed for an hour, but the replica has replayed everything.
        let rules = time_rules(SEC);
        let s = first(
            vec![primary(1, 5_000, 1), replica_replayed_ago(2, 5_000, 3600.0)],
            &rules,
        );
        assert_eq!(s.servers[1].lag, Some(Duration::ZERO));
        assert_eq!(s.servers[1].lag_bytes, Some(0));
        assert!(s.servers[1].eligible_for_reads);
    }

    #[test]
    fn first_write_after_idle_period_does_not_make_a_replica_look_an_hour_late() {
        let rules = time_rules(SEC);
        let probes = |leader, replayed, ago| {
            vec![
                primary(1, leader, 1),
                replica_replayed_ago(2, replayed, ago),
            ]
        };
        let s0 = first(probes(5_000, 5_000, 3600.0), &rules);
        // The leader just wrote; the replica has not replayed it yet, and its last replayed
        // commit is an hour old. It had everything the leader had 250 ms ago.
        let s1 = next(
            probes(6_000, 5_000, 3600.25),
            &s0,
            &rules,
            Duration::from_millis(250),
        );
        let lag = s1.servers[1].lag.expect("lag known");
        assert!(lag <= Duration::from_millis(250), "lag {lag:?}");
        assert!(s1.servers[1].eligible_for_reads);
    }

    #[test]
    fn replica_stuck_while_leader_writes_lags_by_time_since_leader_passed_it() {
        let rules = time_rules(SEC);
        let mut s = first(vec![primary(1, 1_000, 1), replica(2, 1_000)], &rules);
        assert!(s.servers[1].eligible_for_reads);
        // Replay paused at 1 000 while the leader keeps writing; 4 probes of 250 ms later
        // (the first already past it) the replica has been missing WAL for 1 s: at budget.
        for step in 1..=4u64 {
            s = next(
                vec![primary(1, 1_000 + step * 100, 1), replica(2, 1_000)],
                &s,
                &rules,
                Duration::from_millis(250),
            );
        }
        assert_eq!(s.servers[1].lag, Some(Duration::from_millis(750)));
        assert!(s.servers[1].eligible_for_reads);
        for _ in 0..2 {
            s = next(
                vec![primary(1, 2_000, 1), replica(2, 1_000)],
                &s,
                &rules,
                Duration::from_millis(250),
            );
        }
        assert_eq!(s.servers[1].lag, Some(Duration::from_millis(1250)));
        assert!(!s.servers[1].eligible_for_reads, "over 1 s");
        // Resumed and caught up: lag 0, back at once (0 is under half the budget).
        s = next(
            vec![primary(1, 2_000, 1), replica(2, 2_000)],
            &s,
            &rules,
            Duration::from_millis(250),
        );
        assert_eq!(s.servers[1].lag, Some(Duration::ZERO));
        assert!(s.servers[1].eligible_for_reads);
    }

    #[test]
    fn read_candidates_respect_the_clients_last_commit() {
        let s = first(
            vec![primary(1, 9_000, 1), replica(2, 8_000), replica(3, 9_000)],
            &bytes_rules(1 << 20),
        );
        let candidates = |min| s.read_candidates(min).collect::<Vec<_>>();
        assert_eq!(candidates(None), vec![1, 2]);
        assert_eq!(candidates(Some(8_500)), vec![2]);
        assert_eq!(candidates(Some(9_000)), vec![2]);
        assert!(candidates(Some(9_001)).is_empty());
    }

    #[test]
    fn failed_probe_bans_a_replica_for_ban_time() {
        let rules = ReadRules {
            max_replica_lag: LagBudget::Bytes(1 << 20),
            ban_time: Duration::from_secs(30),
        };
        let s0 = first(vec![primary(1, 100, 1), replica(2, 100)], &rules);
        assert!(s0.servers[1].eligible_for_reads);
        let s1 = next(vec![primary(1, 100, 1), down(2)], &s0, &rules, SEC);
        assert!(!s1.servers[1].eligible_for_reads);
        let s2 = next(vec![primary(1, 100, 1), replica(2, 100)], &s1, &rules, SEC);
        assert!(
            !s2.servers[1].eligible_for_reads,
            "banned 30 s after the failure"
        );
        let s3 = next(
            vec![primary(1, 100, 1), replica(2, 100)],
            &s2,
            &rules,
            Duration::from_secs(30),
        );
        assert!(s3.servers[1].eligible_for_reads, "ban over");
    }

    #[test]
    fn leaderless_period_is_timed_and_last_leader_remembered() {
        let rules = bytes_rules(1 << 20);
        let s0 = first(vec![primary(1, 100, 1), replica(2, 100)], &rules);
        assert_eq!(s0.leaderless_since, None);
        let s1 = next(vec![down(1), replica(2, 100)], &s0, &rules, SEC);
        assert_eq!(s1.leaderless_since, Some(s1.taken_at));
        assert_eq!(s1.last_leader, Some(host(1)));
        let s2 = next(vec![down(1), replica(2, 100)], &s1, &rules, SEC);
        assert_eq!(s2.leaderless_since, Some(s1.taken_at));
        let s3 = next(vec![down(1), primary(2, 200, 2)], &s2, &rules, SEC);
        assert_eq!(s3.leaderless_since, None);
        assert_eq!(s3.last_leader, Some(host(2)));
    }

    #[test]
    fn patroni_and_recovery_state_must_agree() {
        let rules = bytes_rules(1 << 20);
        let probes = || vec![primary(1, 100, 1), replica(2, 100)];
        let previous = Snapshot::unknown(&hosts(2));
        let at = Instant::now();
        let decide = |view: PatroniView| {
            Snapshot::from_probes(probes(), &view, &previous, &rules, at).leader
        };
        assert_eq!(decide(PatroniView::Leader(Some(host(1)))), Some(0));
        assert_eq!(
            decide(PatroniView::Leader(Some(host(2)))),
            None,
            "Patroni names a server still in recovery"
        );
        assert_eq!(
            decide(PatroniView::Leader(None)),
            None,
            "Patroni has no leader"
        );
        assert_eq!(decide(PatroniView::Unreachable), Some(0), "fallback");
        let named_by_name = HostAddr {
            host: "127.0.0.1".into(),
            port: 1,
        };
        assert_eq!(decide(PatroniView::Leader(Some(named_by_name))), Some(0));
    }

    #[test]
    fn patroni_resolves_a_tie_but_not_against_a_newer_timeline() {
        let rules = bytes_rules(1 << 20);
        let previous = Snapshot::unknown(&hosts(2));
        let at = Instant::now();
        let tie = Snapshot::from_probes(
            vec![primary(1, 10, 3), primary(2, 10, 3)],
            &PatroniView::Leader(Some(host(2))),
            &previous,
            &rules,
            at,
        );
        assert_eq!(tie.leader, Some(1));
        assert!(tie.split_brain);
        assert_eq!(tie.servers[0].role, Role::Fenced);
        let stale = Snapshot::from_probes(
            vec![primary(1, 10, 4), primary(2, 10, 3)],
            &PatroniView::Leader(Some(host(2))),
            &previous,
            &rules,
            at,
        );
        assert_eq!(stale.leader, None);
    }

    #[test]
    fn lsn_text_parses() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("1/"), None);
    }
}
