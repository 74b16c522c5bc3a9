//! Where a statement runs: the routing table of DESIGN.md as one pure function.
//!
//! `route` takes what the statement needs (from classification and the client's transaction
//! state), the client's hint, and the replicas that could take a read right now (already
//! filtered by the caller for role, health, lag budget, bans and read-your-writes), and
//! returns the server and the rule that decided. It does no I/O and reads no clock.

use super::classify::RouteHint;
use crate::config::LaggingReads;

/// What a unit of work needs, before the cluster is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// An autocommit read without side effects.
    Read,
    /// A transaction the client declared READ ONLY: one replica for all of it.
    ReadOnlyTransaction,
    /// Must run on the leader, for this reason.
    Leader(Reason),
}

/// The rule that decided, also the `reason` label of `pgrelay_queries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Read,
    ReadOnlyTransaction,
    Write,
    ForUpdate,
    InTransaction,
    Pinned,
    Hint,
    /// A question about the server's own state (`SHOW transaction_read_only`) that drivers
    /// ask to find the primary: pgrelay answers as the leader it stands for.
    ServerState,
    /// A read that could have gone to a replica went to the leader because every replica
    /// is over the lag budget (or behind the client's last write).
    Lag,
    /// A read went to the leader because no replica is up.
    Fallback,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Read => "read",
            Reason::ReadOnlyTransaction => "read_only_transaction",
            Reason::Write => "write",
            Reason::ForUpdate => "for_update",
            Reason::InTransaction => "in_transaction",
            Reason::Pinned => "pinned",
            Reason::Hint => "hint",
            Reason::ServerState => "server_state",
            Reason::Lag => "lag",
            Reason::Fallback => "fallback",
        }
    }
}

/// A replica that may take this read, with the work it has in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Index into the topology snapshot's servers.
    pub index: usize,
    /// Transactions currently running on it through this pgrelay.
    pub outstanding: usize,
}

/// What routing sees of the cluster for one decision.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Replicas that may take the read now: healthy, within the lag budget, not banned, and
    /// (under read-your-writes) replayed past the client's last commit.
    pub candidates: &'a [Candidate],
    /// Whether some replica is up at all (if so, an empty candidate list means lag).
    pub replicas_up: bool,
    pub lagging_reads: LaggingReads,
    /// Round-robin counter, advanced by the caller on every decision.
    pub round_robin: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Leader,
    /// Index into the topology snapshot's servers.
    Replica(usize),
    /// Nowhere: `lagging_reads = "error"` and no replica is fresh enough.
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub target: Target,
    pub reason: Reason,
}

/// Decides where a unit of work runs.
pub fn route(need: Need, hint: Option<RouteHint>, view: &View<'_>) -> Decision {
    let leader = |reason| Decision {
        target: Target::Leader,
        reason,
    };
    match (need, hint) {
        // A leader hint always wins; a replica hint never sends a write to a replica.
        (_, Some(RouteHint::Leader)) => leader(Reason::Hint),
        (Need::Leader(r), _) => leader(r),
        (Need::Read, Some(RouteHint::Replica)) => pick_replica(view, Reason::Hint),
        (Need::Read, None) => pick_replica(view, Reason::Read),
        (Need::ReadOnlyTransaction, _) => pick_replica(view, Reason::ReadOnlyTransaction),
    }
}

/// Least outstanding work first, round-robin among equals; the leader (or a refusal) when
/// no replica qualifies.
fn pick_replica(view: &View<'_>, reason: Reason) -> Decision {
    let Some(least) = view.candidates.iter().map(|c| c.outstanding).min() else {
        let reason = if view.replicas_up {
            Reason::Lag
        } else {
            Reason::Fallback
        };
        let target = if reason == Reason::Lag && view.lagging_reads == LaggingReads::Error {
            Target::Refuse
        } else {
            Target::Leader
        };
        return Decision { target, reason };
    };
    // Counted, then walked again: no list per read.
    let tied = || view.candidates.iter().filter(|c| c.outstanding == least);
    let turn = view.round_robin % tied().count().max(1);
    match tied().nth(turn) {
        Some(c) => Decision {
            target: Target::Replica(c.index),
            reason,
        },
        None => Decision {
            target: Target::Leader,
            reason: Reason::Fallback,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(candidates: &[Candidate], replicas_up: bool, rr: usize) -> View<'_> {
        View {
            candidates,
            replicas_up,
            lagging_reads: LaggingReads::Leader,
            round_robin: rr,
        }
    }

    const TWO: [Candidate; 2] = [
        Candidate {
            index: 1,
            outstanding: 0,
        },
        Candidate {
            index: 2,
            outstanding: 0,
        },
    ];

    /// One row of the table: name, need, hint, candidates, expected target and reason.
    type Case<'a> = (
        &'a str,
        Need,
        Option<RouteHint>,
        &'a [Candidate],
        Target,
        Reason,
    );

    /// Every row of the DESIGN routing table.
    #[test]
    fn routing_table() {
        use Reason::{ForUpdate, InTransaction, Pinned, Write};
        let cases: Vec<Case> = vec![
            (
                "autocommit read → replica",
                Need::Read,
                None,
                &TWO,
                Target::Replica(1),
                Reason::Read,
            ),
            (
                "write → leader",
                Need::Leader(Write),
                None,
                &TWO,
                Target::Leader,
                Reason::Write,
            ),
            (
                "FOR UPDATE → leader",
                Need::Leader(ForUpdate),
                None,
                &TWO,
                Target::Leader,
                Reason::ForUpdate,
            ),
            (
                "explicit transaction → leader",
                Need::Leader(InTransaction),
                None,
                &TWO,
                Target::Leader,
                Reason::InTransaction,
            ),
            (
                "BEGIN READ ONLY → replica",
                Need::ReadOnlyTransaction,
                None,
                &TWO,
                Target::Replica(1),
                Reason::ReadOnlyTransaction,
            ),
            (
                "leader hint on a read",
                Need::Read,
                Some(RouteHint::Leader),
                &TWO,
                Target::Leader,
                Reason::Hint,
            ),
            (
                "replica hint on a read",
                Need::Read,
                Some(RouteHint::Replica),
                &TWO,
                Target::Replica(1),
                Reason::Hint,
            ),
            (
                "replica hint cannot move a write",
                Need::Leader(Write),
                Some(RouteHint::Replica),
                &TWO,
                Target::Leader,
                Reason::Write,
            ),
            (
                "replica hint obeys the lag budget",
                Need::Read,
                Some(RouteHint::Replica),
                &[],
                Target::Leader,
                Reason::Lag,
            ),
            (
                "read with every replica lagging or behind the client's write → leader",
                Need::Read,
                None,
                &[],
                Target::Leader,
                Reason::Lag,
            ),
            (
                "pinned session → leader",
                Need::Leader(Pinned),
                None,
                &TWO,
                Target::Leader,
                Reason::Pinned,
            ),
        ];
        for (name, need, hint, candidates, target, reason) in cases {
            let d = route(need, hint, &view(candidates, true, 0));
            assert_eq!(d, Decision { target, reason }, "{name}");
        }
    }

    #[test]
    fn no_replica_up_falls_back_to_leader() {
        let d = route(Need::Read, None, &view(&[], false, 0));
        assert_eq!(
            d,
            Decision {
                target: Target::Leader,
                reason: Reason::Fallback
            }
        );
    }

    #[test]
    fn lagging_reads_error_refuses_instead_of_loading_the_leader() {
        let v = View {
            lagging_reads: LaggingReads::Error,
            ..view(&[], true, 0)
        };
        assert_eq!(route(Need::Read, None, &v).target, Target::Refuse);
        let down = View {
            lagging_reads: LaggingReads::Error,
            ..view(&[], false, 0)
        };
        assert_eq!(
            route(Need::Read, None, &down).target,
            Target::Leader,
            "no replica at all is not lag"
        );
    }

    #[test]
    fn least_outstanding_then_round_robin() {
        let busy = [
            Candidate {
                index: 1,
                outstanding: 3,
            },
            Candidate {
                index: 2,
                outstanding: 1,
            },
        ];
        for rr in 0..4 {
            assert_eq!(
                route(Need::Read, None, &view(&busy, true, rr)).target,
                Target::Replica(2)
            );
        }
        let picks: Vec<Target> = (0..4)
            .map(|rr| route(Need::Read, None, &view(&TWO, true, rr)).target)
            .collect();
        assert_eq!(
            picks,
            vec![
                Target::Replica(1),
                Target::Replica(2),
                Target::Replica(1),
                Target::Replica(2)
            ]
        );
    }
}
