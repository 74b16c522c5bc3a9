//! Cluster topology: who is the leader, who replicates, how far behind, who may take reads.
//!
//! `monitor` probes every host (and Patroni, when configured) and publishes a `Snapshot`;
//! routing and pools read the current one through `Topology::snapshot`, which is a lock-free
//! load. `transition` tells what changed between two snapshots, for whoever must react (pools
//! retiring connections, metrics). This module knows nothing of clients or sessions.

pub mod monitor;
pub mod patroni;
pub mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::config::HostAddr;
pub use snapshot::{PatroniView, Probe, ReadRules, Reading, Role, ServerState, Snapshot};

/// The current snapshot, swapped whole, plus a wake-up for those waiting for a change.
pub struct Topology {
    current: ArcSwap<Snapshot>,
    changed: Notify,
}

impl Topology {
    pub fn new(hosts: &[HostAddr]) -> Topology {
        Topology {
            current: ArcSwap::from_pointee(Snapshot::unknown(hosts)),
            changed: Notify::new(),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Where the current snapshot is published, for an `arc_swap::Cache` of it.
    pub fn current(&self) -> &ArcSwap<Snapshot> {
        &self.current
    }

    pub fn publish(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
        self.changed.notify_waiters();
    }

    /// Resolves after the next `publish`.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// What changed from one snapshot to the next, as far as anyone must act on it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transition {
    /// Servers whose role changed: a connection opened under the old role (to a leader that is
    /// now fenced, down or a replica) must never be reused.
    pub retired: Vec<HostAddr>,
    /// A different server than the last known leader now is the leader: (last known, new).
    /// Not set for the first leader ever seen, nor when the same one comes back.
    pub new_leader: Option<(HostAddr, HostAddr)>,
    /// The leader this snapshot lost (down, demoted or fenced), if it lost one.
    pub lost_leader: Option<HostAddr>,
    /// A failover just ended: a leader is known again after a period without one (this
    /// long), or the leader moved from one server to another between two probes (zero).
    pub leaderless_for: Option<Duration>,
}

/// Compares two consecutive snapshots (same host list, in the same order).
pub fn transition(before: &Snapshot, after: &Snapshot) -> Transition {
    let retired = after
        .servers
        .iter()
        .filter(|s| {
            before
                .servers
                .iter()
                .find(|b| b.host == s.host)
                .is_none_or(|b| b.role != s.role)
        })
        .map(|s| s.host.clone())
        .collect();
    let old = before.leader().map(|l| &l.host);
    let new = after.leader().map(|l| &l.host);
    let new_leader = match (&before.last_leader, new) {
        (Some(last), Some(now)) if last != now => Some((last.clone(), now.clone())),
        _ => None,
    };
    let lost_leader = match old {
        Some(o) if Some(o) != new => Some(o.clone()),
        _ => None,
    };
    let leaderless_for = match (old, new, before.leaderless_since) {
        (None, Some(_), Some(since)) => Some(after.taken_at.saturating_duration_since(since)),
        (Some(o), Some(n), _) if o != n => Some(Duration::ZERO),
        _ => None,
    };
    Transition {
        retired,
        new_leader,
        lost_leader,
        leaderless_for,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LagBudget;

    fn host(port: u16) -> HostAddr {
        HostAddr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn probe(port: u16, in_recovery: Option<bool>, timeline: u32) -> Probe {
        Probe {
            host: host(port),
            outcome: match in_recovery {
                None => Err("refused".into()),
                Some(in_recovery) => Ok(Reading {
                    in_recovery,
                    lsn: Some(100),
                    receive_lsn: None,
                    timeline: Some(timeline),
                    clock: 0.0,
                    replay_timestamp: None,
                }),
            },
        }
    }

    fn step(previous: &Snapshot, probes: Vec<Probe>, after_ms: u64) -> Snapshot {
        Snapshot::from_probes(
            probes,
            &PatroniView::NotConfigured,
            previous,
            &ReadRules {
                max_replica_lag: LagBudget::Bytes(1 << 20),
                ban_time: Duration::ZERO,
            },
            previous.taken_at + Duration::from_millis(after_ms),
        )
    }

    #[test]
    fn failover_retires_old_leader_counts_a_change_and_times_the_gap() {
        let unknown = Snapshot::unknown(&[host(1), host(2)]);
        let s0 = step(
            &unknown,
            vec![probe(1, Some(false), 1), probe(2, Some(true), 1)],
            0,
        );
        let t0 = transition(&unknown, &s0);
        assert_eq!(t0.new_leader, None, "the first leader seen is not a change");
        assert_eq!(t0.leaderless_for, None);

        let s1 = step(&s0, vec![probe(1, None, 0), probe(2, Some(true), 1)], 250);
        let t1 = transition(&s0, &s1);
        assert_eq!(t1.retired, vec![host(1)]);
        assert_eq!(t1.lost_leader, Some(host(1)));
        assert_eq!(t1.new_leader, None);

        let s2 = step(&s1, vec![probe(1, None, 0), probe(2, Some(false), 2)], 250);
        let s3 = step(&s2, vec![probe(1, None, 0), probe(2, Some(false), 2)], 250);
        let t2 = transition(&s1, &s2);
        assert_eq!(t2.retired, vec![host(2)]);
        assert_eq!(t2.new_leader, Some((host(1), host(2))));
        assert_eq!(t2.leaderless_for, Some(Duration::from_millis(250)));
        assert_eq!(
            transition(&s2, &s3),
            Transition::default(),
            "nothing changed"
        );
    }

    #[test]
    fn promotion_beside_a_live_leader_fences_it() {
        let unknown = Snapshot::unknown(&[host(1), host(2)]);
        let s0 = step(
            &unknown,
            vec![probe(1, Some(false), 1), probe(2, Some(true), 1)],
            0,
        );
        let s1 = step(
            &s0,
            vec![probe(1, Some(false), 1), probe(2, Some(false), 2)],
            250,
        );
        assert_eq!(s1.servers[0].role, Role::Fenced);
        let t = transition(&s0, &s1);
        assert_eq!(t.retired, vec![host(1), host(2)]);
        assert_eq!(t.new_leader, Some((host(1), host(2))));
        assert_eq!(t.lost_leader, Some(host(1)));
        assert_eq!(
            t.leaderless_for,
            Some(Duration::ZERO),
            "a failover, but never a probe without a leader"
        );
    }

    #[test]
    fn same_leader_coming_back_is_not_a_change() {
        let unknown = Snapshot::unknown(&[host(1)]);
        let s0 = step(&unknown, vec![probe(1, Some(false), 1)], 0);
        let s1 = step(&s0, vec![probe(1, None, 0)], 250);
        let s2 = step(&s1, vec![probe(1, Some(false), 1)], 500);
        let t = transition(&s1, &s2);
        assert_eq!(t.new_leader, None);
        assert_eq!(t.leaderless_for, Some(Duration::from_millis(500)));
        assert_eq!(t.retired, vec![host(1)]);
    }
}
