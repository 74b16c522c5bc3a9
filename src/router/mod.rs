//! Routing: what a statement is (`classify`), where it runs (`route`), and the plan that ties
//! a classification to what the session must do around it (`plan`): defer a BEGIN, pin the
//! client, remember a SET.
//!
//! Everything here is pure: the session does the I/O.

pub mod bans;
pub mod catalog;
pub mod classify;
pub mod route;

use classify::{Class, Classification, LeaderReason, RouteHint, StatementKind};
use route::{Need, Reason};

/// Session-level advisory locks outlive the transaction, so a client holding one must keep
/// its server connection (the `_xact_` variants end with the transaction and are fine).
const SESSION_LOCK_FUNCTIONS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Settings drivers read to tell a primary from a standby (pgjdbc's `targetServerType`,
/// libpq's `target_session_attrs` on old servers): pgrelay stands for the leader, so these
/// are asked of the leader.
const LEADER_STATE_SETTINGS: &[&str] = &[
    "transaction_read_only",
    "default_transaction_read_only",
    "in_hot_standby",
];

/// Whether `statement` is `SHOW <one of LEADER_STATE_SETTINGS>`.
fn shows_leader_state(statement: &str) -> bool {
    let mut words = statement.split_whitespace();
    let is_show = words.next().is_some_and(|w| w.eq_ignore_ascii_case("show"));
    is_show
        && words.next().is_some_and(|w| {
            let name = w.trim_end_matches(';');
            LEADER_STATE_SETTINGS
                .iter()
                .any(|s| s.eq_ignore_ascii_case(name))
        })
}

/// A change to session settings that takes effect when the statement succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingChange {
    /// `SET name = value`, value as SQL text.
    Set(String, String),
    Reset(String),
    ResetAll,
    DiscardAll,
}

/// How a lone transaction-control statement ends a deferred transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxEnd {
    Commit,
    Rollback,
}

/// A read whose result may be served from the cache, if a rule or a hint selects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheCandidate {
    /// Tables it reads, as the cache matches and keys them (shared with the classification).
    pub tables: std::sync::Arc<crate::cache::ReadTables>,
    /// `/* pgrelay: cache ttl=… */`: Some(ttl or None for the default) when hinted.
    pub hint_ttl: Option<Option<std::time::Duration>>,
}

/// What the session must do for one unit of client work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub need: Need,
    pub hint: Option<RouteHint>,
    /// The client must keep its server connection for the rest of the session.
    pub pin: bool,
    /// The unit is exactly one `BEGIN`: its server can be chosen by the next statement.
    pub lone_begin: Option<Option<bool>>,
    /// The unit is exactly one `COMMIT` or `ROLLBACK`.
    pub lone_end: Option<TxEnd>,
    /// The unit is exactly `SET TRANSACTION READ ONLY`.
    pub sets_read_only: bool,
    /// The unit is exactly one `DEALLOCATE name` (`Some`) or `DEALLOCATE ALL` (`None`).
    pub lone_deallocate: Option<Option<String>>,
    /// The unit is exactly one SQL-level `PREPARE name AS body`: (name, body).
    pub lone_prepare: Option<(String, String)>,
    /// The unit is exactly one `EXECUTE name`.
    pub lone_execute: Option<String>,
    /// The text of the statement when the unit is exactly one PREPARE.
    pub statement_sql: Option<String>,
    /// Set when the unit is one deterministic read of known tables.
    pub cache: Option<CacheCandidate>,
    pub settings: Vec<SettingChange>,
    /// Tables written, for cache invalidation.
    pub write_tables: Vec<String>,
    /// A write whose tables are unknown.
    pub writes_unknown_tables: bool,
}

impl Plan {
    /// The plan of nothing (an extended batch with no SQL in it, e.g. Bind of a statement the
    /// client never prepared: the server will answer with the error).
    pub fn read() -> Plan {
        Plan {
            need: Need::Read,
            hint: None,
            pin: false,
            lone_begin: None,
            lone_end: None,
            sets_read_only: false,
            lone_deallocate: None,
            lone_prepare: None,
            lone_execute: None,
            statement_sql: None,
            cache: None,
            settings: Vec::new(),
            write_tables: Vec::new(),
            writes_unknown_tables: false,
        }
    }

    /// Whether the unit changes data (so the client's next reads must see it).
    pub fn writes(&self) -> bool {
        matches!(self.need, Need::Leader(Reason::Write))
            || !self.write_tables.is_empty()
            || self.writes_unknown_tables
    }

    /// Merges the plan of another statement of the same unit: the stronger need wins.
    pub fn merge(&mut self, other: Plan) {
        self.need = stronger(self.need, other.need);
        self.hint = match (self.hint, other.hint) {
            (Some(RouteHint::Leader), _) | (_, Some(RouteHint::Leader)) => Some(RouteHint::Leader),
            (a, b) => a.or(b),
        };
        self.pin |= other.pin;
        self.lone_begin = None;
        self.lone_end = None;
        self.sets_read_only = false;
        self.lone_deallocate = None;
        self.lone_prepare = None;
        self.lone_execute = None;
        self.statement_sql = None;
        // A batch stays cacheable only as one statement: a Bind of the statement the same
        // batch parsed plans the same text again.
        if self.cache != other.cache {
            self.cache = None;
        }
        self.settings.extend(other.settings);
        self.write_tables.extend(other.write_tables);
        self.writes_unknown_tables |= other.writes_unknown_tables;
    }
}

fn strength(n: Need) -> u8 {
    match n {
        Need::Read => 0,
        Need::ReadOnlyTransaction => 1,
        Need::Leader(_) => 2,
    }
}

fn stronger(a: Need, b: Need) -> Need {
    if strength(b) > strength(a) {
        b
    } else {
        a
    }
}

/// Plans one SQL string (`c` is its classification). `default_read_only` is the client's
/// `default_transaction_read_only`.
pub fn plan(c: &Classification, sql: &str, default_read_only: bool) -> Plan {
    let mut pin = false;
    let mut leader_state = false;
    let mut read_only_tx = false;
    let mut settings = Vec::new();
    for s in &c.statements {
        match &s.kind {
            StatementKind::Listen | StatementKind::CreateTemp => pin = true,
            // A lone PREPARE or EXECUTE moves with the client (the session re-prepares it
            // where it runs); inside a longer string it cannot be followed, so it pins.
            StatementKind::Prepare { .. } | StatementKind::Execute { .. }
                if c.statements.len() > 1 =>
            {
                pin = true
            }
            StatementKind::DeclareCursor { with_hold: true } => pin = true,
            StatementKind::Begin { read_only } => {
                read_only_tx |= read_only.unwrap_or(default_read_only);
            }
            StatementKind::SetTransaction {
                read_only: Some(ro),
                session_characteristics: false,
            } => read_only_tx |= *ro,
            StatementKind::SetTransaction {
                read_only: Some(ro),
                session_characteristics: true,
            } => settings.push(SettingChange::Set(
                "default_transaction_read_only".into(),
                if *ro { "on" } else { "off" }.into(),
            )),
            StatementKind::Set {
                name,
                value,
                local: false,
            } => settings.push(SettingChange::Set(name.clone(), value.clone())),
            StatementKind::Reset { name: Some(n) } => {
                settings.push(SettingChange::Reset(n.clone()))
            }
            StatementKind::Reset { name: None } => settings.push(SettingChange::ResetAll),
            StatementKind::Discard { all: true } => settings.push(SettingChange::DiscardAll),
            StatementKind::Query => {
                leader_state |= sql.get(s.range.clone()).is_some_and(shows_leader_state);
            }
            _ => {}
        }
        if let Class::LeaderRead(LeaderReason::WriteFunction(f)) = &s.class {
            let bare = f.rsplit('.').next().unwrap_or(f).to_ascii_lowercase();
            pin |= SESSION_LOCK_FUNCTIONS.contains(&bare.as_str());
        }
    }
    let need = match &c.class {
        Class::Write => Need::Leader(Reason::Write),
        Class::LeaderRead(LeaderReason::ReadWriteTransaction) if read_only_tx => {
            Need::ReadOnlyTransaction
        }
        Class::LeaderRead(
            LeaderReason::ReadWriteTransaction | LeaderReason::SerializableTransaction,
        ) => Need::Leader(Reason::InTransaction),
        Class::LeaderRead(LeaderReason::Listen) => Need::Leader(Reason::Pinned),
        Class::LeaderRead(_) => Need::Leader(Reason::ForUpdate),
        Class::Read if read_only_tx => Need::ReadOnlyTransaction,
        Class::Read => Need::Read,
    };
    let need = match need {
        _ if pin => Need::Leader(Reason::Pinned),
        Need::Read if leader_state => Need::Leader(Reason::ServerState),
        other => other,
    };
    let lone = |k: &StatementKind| c.statements.len() == 1 && &c.statements[0].kind == k;
    let lone_kind = (c.statements.len() == 1).then(|| &c.statements[0].kind);
    Plan {
        need,
        hint: c.hint.as_ref().and_then(|h| h.route),
        pin,
        lone_begin: match lone_kind {
            Some(StatementKind::Begin { read_only }) => Some(*read_only),
            _ => None,
        },
        lone_end: match lone_kind {
            Some(StatementKind::Commit { chain: false }) => Some(TxEnd::Commit),
            Some(StatementKind::Rollback { chain: false }) => Some(TxEnd::Rollback),
            _ => None,
        },
        sets_read_only: lone(&StatementKind::SetTransaction {
            read_only: Some(true),
            session_characteristics: false,
        }),
        lone_deallocate: match lone_kind {
            Some(StatementKind::Deallocate { name }) => Some(name.clone()),
            _ => None,
        },
        lone_prepare: match lone_kind {
            Some(StatementKind::Prepare { name, body }) => Some((name.clone(), body.clone())),
            _ => None,
        },
        lone_execute: match lone_kind {
            Some(StatementKind::Execute { name }) => Some(name.clone()),
            _ => None,
        },
        cache: (c.cacheable && c.statements.len() == 1 && !pin).then(|| CacheCandidate {
            tables: std::sync::Arc::clone(&c.cache_tables),
            hint_ttl: c.hint.as_ref().and_then(|h| h.cache).map(|h| h.ttl),
        }),
        // Only a PREPARE needs its own text later (to replay it elsewhere).
        statement_sql: match c.statements.as_slice() {
            [one] if matches!(one.kind, StatementKind::Prepare { .. }) => {
                sql.get(one.range.clone()).map(str::to_owned)
            }
            _ => None,
        },
        settings,
        write_tables: c.write_tables.clone(),
        writes_unknown_tables: c.writes_unknown_tables,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use classify::{classify, FunctionCatalog};

    fn p(sql: &str) -> Plan {
        plan(&classify(sql, &FunctionCatalog::default()), sql, false)
    }

    #[test]
    fn needs_follow_the_routing_table() {
        assert_eq!(p("SELECT 1").need, Need::Read);
        assert_eq!(
            p("INSERT INTO t VALUES (1)").need,
            Need::Leader(Reason::Write)
        );
        assert_eq!(
            p("SELECT * FROM t FOR NO KEY UPDATE").need,
            Need::Leader(Reason::ForUpdate)
        );
        assert_eq!(
            p("SELECT nextval('s')").need,
            Need::Leader(Reason::ForUpdate)
        );
        assert_eq!(p("BEGIN").need, Need::Leader(Reason::InTransaction));
        assert_eq!(p("BEGIN READ ONLY").need, Need::ReadOnlyTransaction);
        assert_eq!(
            p("START TRANSACTION READ ONLY").need,
            Need::ReadOnlyTransaction
        );
        assert_eq!(
            p("BEGIN; SELECT 1; COMMIT").need,
            Need::Leader(Reason::InTransaction)
        );
        assert_eq!(
            p("BEGIN; UPDATE t SET a = 1; COMMIT").need,
            Need::Leader(Reason::Write)
        );
        assert_eq!(p("LISTEN chan").need, Need::Leader(Reason::Pinned));
        assert_eq!(
            p("SHOW transaction_read_only").need,
            Need::Leader(Reason::ServerState)
        );
        assert_eq!(
            p("show IN_HOT_STANDBY;").need,
            Need::Leader(Reason::ServerState)
        );
        assert_eq!(p("SHOW search_path").need, Need::Read);
    }

    #[test]
    fn default_read_only_sessions_take_plain_begin_to_a_replica() {
        let c = classify("BEGIN", &FunctionCatalog::default());
        assert_eq!(plan(&c, "BEGIN", true).need, Need::ReadOnlyTransaction);
        assert_eq!(
            plan(&c, "BEGIN", false).need,
            Need::Leader(Reason::InTransaction)
        );
    }

    #[test]
    fn session_state_that_cannot_move_pins() {
        for sql in [
            "LISTEN chan",
            "SELECT pg_advisory_lock(1)",
            "CREATE TEMP TABLE tt (a int)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "PREPARE q AS SELECT 1; EXECUTE q",
        ] {
            assert!(p(sql).pin, "{sql} pins");
        }
        for sql in [
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT 1",
            "DECLARE c CURSOR FOR SELECT 1",
        ] {
            assert!(!p(sql).pin, "{sql} does not pin");
        }
    }

    #[test]
    fn lone_statements_are_recognised() {
        assert_eq!(p("BEGIN").lone_begin, Some(None));
        assert_eq!(p("begin read only").lone_begin, Some(Some(true)));
        assert_eq!(p("COMMIT").lone_end, Some(TxEnd::Commit));
        assert_eq!(p("ROLLBACK").lone_end, Some(TxEnd::Rollback));
        assert_eq!(p("COMMIT AND CHAIN").lone_end, None);
        assert!(p("SET TRANSACTION READ ONLY").sets_read_only);
        assert_eq!(p("DEALLOCATE ALL").lone_deallocate, Some(None));
        assert_eq!(p("BEGIN; SELECT 1").lone_begin, None);
        assert_eq!(
            p("PREPARE q(int) AS SELECT $1").lone_prepare,
            Some(("q".into(), "SELECT $1".into()))
        );
        assert_eq!(p("EXECUTE q(1)").lone_execute, Some("q".into()));
        assert!(!p("PREPARE q AS SELECT 1").pin);
    }

    #[test]
    fn settings_changes_in_order() {
        assert_eq!(
            p("SET search_path = app, public; RESET timezone; SET LOCAL work_mem = '1MB'").settings,
            vec![
                SettingChange::Set("search_path".into(), "app, public".into()),
                SettingChange::Reset("timezone".into())
            ]
        );
        assert_eq!(p("RESET ALL").settings, vec![SettingChange::ResetAll]);
        assert_eq!(p("DISCARD ALL").settings, vec![SettingChange::DiscardAll]);
    }

    #[test]
    fn merged_batch_takes_the_strongest_need() {
        let mut a = p("SELECT 1");
        a.merge(p("UPDATE t SET a = 1"));
        assert_eq!(a.need, Need::Leader(Reason::Write));
        let mut same = p("SELECT /* pgrelay: cache */ v FROM t");
        same.merge(p("SELECT /* pgrelay: cache */ v FROM t"));
        assert!(
            same.cache.is_some(),
            "Parse and Bind of one statement stay cacheable"
        );
        let mut two = p("SELECT /* pgrelay: cache */ v FROM t");
        two.merge(p("SELECT /* pgrelay: cache */ w FROM u"));
        assert!(
            two.cache.is_none(),
            "two statements are not one cached response"
        );
        let mut b = p("SELECT 1");
        b.merge(p("SELECT /* pgrelay: leader */ 2"));
        assert_eq!(b.hint, Some(RouteHint::Leader));
    }
}
