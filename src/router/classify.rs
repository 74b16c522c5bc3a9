//! SQL classification: turns the text of a Query or Parse message into what routing, pooling and
//! caching need to know: is it a read that a replica may serve, a read that must run on the
//! leader, or a write; which session or transaction command it is; which tables it reads and
//! writes; whether its result may be cached; and any `/* pgrelay: ... */` hint.
//!
//! It owns the statement splitter (top-level `;`), the keyword fast path that decides utility
//! and transaction-control statements without a full parse, the `sqlparser` walk for queries
//! and DML, the built-in tables of side-effecting and volatile functions ([`FunctionCatalog`]),
//! and a bounded cache of results ([`ClassifyCache`]).
//!
//! It must never do I/O, block, or panic on any input, and it must never call something a
//! [`Class::Read`] unless it is sure: anything it cannot parse or does not recognise is a
//! [`Class::Write`], of unknown tables unless PostgreSQL's grammar bounds what it can write
//! (PgCat's users lost writes to replicas because its parser fallback routed to "any",
//! pgcat#884 and pgcat#865). It knows nothing of sessions, transactions or the cluster;
//! `router::route` combines a [`Classification`] with those.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::ops::{ControlFlow, Range};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlparser::ast::{
    Expr, FromTable, ObjectName, ObjectNamePart, Query, Select, SetExpr, Statement, TableFactor,
    TableObject, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::cache::ReadTables;

/// Strings longer than this are not lexed or parsed: they are classified as a write that may
/// have touched any table. sqlparser costs ~55-100 ns per byte, so a 1 MiB statement would hold
/// a worker for ~0.1 s, and such statements are bulk loads that belong on the leader anyway.
pub const MAX_CLASSIFY_BYTES: usize = 1 << 20;

/// Statements nesting parentheses deeper than this are not handed to sqlparser (recursive
/// descent: deep nesting has overflowed its stack before) and are classified as unknown writes.
pub const MAX_PAREN_DEPTH: usize = 200;

/// sqlparser's recursion budget per statement (its default is 50). Each unit can cost ~40 KiB
/// of stack in a release build (a nested FROM subquery takes two), so 50 allowed ~1.1 MiB on a
/// tokio worker whose whole stack is 2 MiB: one hostile statement could abort the process. 32
/// bounds it to ~0.7 MiB and still parses a Django-style query with three nested subqueries
/// and parenthesised predicates (which needs 19). Exceeding it is a parse error → leader.
const PARSER_RECURSION_LIMIT: usize = 32;

/// Bodies of PREPARE / EXPLAIN / DECLARE / COPY (query) are classified recursively; real SQL
/// nests at most two of them (`EXPLAIN ANALYZE EXECUTE`), so deeper is garbage.
const MAX_WRAPPER_NESTING: usize = 4;

/// Texts longer than this are classified but not kept in [`ClassifyCache`], so a few huge
/// statements cannot pin megabytes of keys.
const MAX_CACHED_TEXT_BYTES: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// Everything routing, pooling and caching need to know about one SQL string (which may hold
/// several statements). Computed once per distinct text and shared through [`ClassifyCache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Combined over all statements: the strongest wins (Write > LeaderRead > Read), so a
    /// multi-statement string runs where its most demanding statement must run.
    pub class: Class,
    /// One entry per statement, in order, so the session can track transaction and session
    /// state (BEGIN, SET, PREPARE, LISTEN...) without parsing again.
    pub statements: Vec<StatementInfo>,
    /// Routing and caching hints found in any comment of the string (see [`Hint`]).
    pub hint: Option<Hint>,
    /// True when the result may be served from the cache: a single read-only query that reads
    /// known tables, with no locking clause, no volatile, session-dependent or unknown function,
    /// no system catalog. Whether a cache rule selects its tables is decided by the cache.
    pub cacheable: bool,
    /// Tables read (normalised: unquoted parts lower-cased, quoted parts kept, `schema.table`
    /// when qualified, CTE names removed, write targets removed, deduplicated, sorted). Names are
    /// as written: `t` and `public.t` are different strings here; the cache must resolve them.
    pub read_tables: Vec<String>,
    /// `read_tables` as the cache matches and keys them, when the string is `cacheable`.
    pub cache_tables: Arc<ReadTables>,
    /// Tables whose contents (or definition) the string changes: DML targets, data-modifying
    /// CTE targets, TRUNCATE / DDL / REFRESH objects, `SELECT INTO` targets. Same normalisation.
    pub write_tables: Vec<String>,
    /// A write whose tables cannot be known (DO, CALL, a function that may write, most DDL, an
    /// unparsable statement...): the cache must invalidate every table of the database.
    pub writes_unknown_tables: bool,
}

/// Where a statement may run. Ordered by strength: combining two classes keeps the stronger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Reads only and has no side effect: a replica within the lag budget may run it.
    Read,
    /// Changes no table but must still run on the leader (a hot standby refuses it, or its
    /// effect only matters on the leader).
    LeaderRead(LeaderReason),
    /// Changes data or schema, or could not be understood: leader only, and the cache must be
    /// invalidated for `write_tables` (or everything, with `writes_unknown_tables`).
    Write,
}

/// Why a statement that writes no table must still run on the leader; reported in metrics and
/// `EXPLAIN ROUTE` so users can see why a read did not go to a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderReason {
    /// A locking clause: `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE`
    /// (a standby refuses row locks: pgcat#887).
    ForUpdate,
    /// Calls a function with side effects (`nextval`, advisory locks, `set_config`, a
    /// `write_functions` entry, a user-defined VOLATILE function...). Holds the name as written.
    WriteFunction(String),
    /// `BEGIN` / `START TRANSACTION` / `SET TRANSACTION` without `READ ONLY`: the transaction may
    /// write later, so the whole of it belongs on the leader.
    ReadWriteTransaction,
    /// `ISOLATION LEVEL SERIALIZABLE`: a hot standby refuses serializable transactions
    /// ("cannot use serializable mode in a hot standby"), even read-only ones.
    SerializableTransaction,
    /// `LOCK TABLE`: table locks other than the weakest are refused during recovery, and a lock
    /// only protects anything on the leader.
    ExplicitLock,
    /// `LISTEN` / `UNLISTEN`: refused during recovery; notifications are raised on the leader.
    Listen,
    /// `COPY ... TO 'file'` / `TO PROGRAM`: the file is written on the server's host, which the
    /// user expects to be the leader.
    ServerSideCopy,
}

/// What one statement is, as far as the session state machine and the pool care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementInfo {
    /// Which command it is.
    pub kind: StatementKind,
    /// Where this statement alone may run.
    pub class: Class,
    /// Byte range of the statement in the classified string (comments around it and the `;`
    /// excluded), so the session can replay or log one statement of a multi-statement string.
    pub range: Range<usize>,
}

/// The command of one statement. Utility commands carry what the session must remember.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// SELECT / VALUES / TABLE / SHOW / EXPLAIN without ANALYZE.
    Query,
    /// INSERT / UPDATE / DELETE / MERGE / TRUNCATE, or a query with a data-modifying CTE.
    Dml,
    /// CREATE / ALTER / DROP / GRANT / REVOKE / COMMENT / SECURITY LABEL / SELECT INTO...
    Ddl,
    /// COPY. `from_client` is `COPY ... FROM STDIN` (CopyIn follows), `to_client` is
    /// `COPY ... TO STDOUT` (CopyOut follows).
    Copy {
        /// `FROM STDIN`.
        from_client: bool,
        /// `TO STDOUT`.
        to_client: bool,
    },
    /// BEGIN / START TRANSACTION; `read_only` is `Some(true)` for READ ONLY, `Some(false)` for
    /// READ WRITE, `None` when unspecified (the session default applies).
    Begin {
        /// Access mode given in the statement, if any.
        read_only: Option<bool>,
    },
    /// COMMIT / END; `chain` for `AND CHAIN` (a new transaction starts at once).
    Commit {
        /// `AND CHAIN` was given.
        chain: bool,
    },
    /// ROLLBACK / ABORT; `chain` for `AND CHAIN`.
    Rollback {
        /// `AND CHAIN` was given.
        chain: bool,
    },
    /// SAVEPOINT name.
    Savepoint,
    /// RELEASE [SAVEPOINT] name.
    ReleaseSavepoint,
    /// ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name.
    RollbackToSavepoint,
    /// `SET TRANSACTION ...` (this transaction) or, with `session_characteristics`,
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION ...` (the session default, to be replayed).
    SetTransaction {
        /// Access mode given, if any.
        read_only: Option<bool>,
        /// `SET SESSION CHARACTERISTICS AS TRANSACTION` rather than `SET TRANSACTION`.
        session_characteristics: bool,
    },
    /// `SET [SESSION|LOCAL] name {TO|=} value`. `name` is lower-cased (`SET TIME ZONE` is
    /// `timezone`, `SET NAMES` is `client_encoding`, `SET SCHEMA` is `search_path`, `SET ROLE`
    /// is `role`, `SET SESSION AUTHORIZATION` is `session_authorization`); `value` is SQL text
    /// that `SET name TO value` replays (`'UTC'`, `public, app`, `DEFAULT`).
    Set {
        /// Parameter name, lower-cased.
        name: String,
        /// Value as replayable SQL text.
        value: String,
        /// `SET LOCAL`: lasts until the end of the transaction, nothing to replay.
        local: bool,
    },
    /// RESET name (`Some`, lower-cased) / RESET ALL (`None`).
    Reset {
        /// Parameter name, or `None` for ALL.
        name: Option<String>,
    },
    /// DISCARD ALL (`all`) / PLANS / SEQUENCES / TEMP.
    Discard {
        /// DISCARD ALL.
        all: bool,
    },
    /// LISTEN channel (pins the client to its leader connection).
    Listen,
    /// UNLISTEN channel | *.
    Unlisten,
    /// NOTIFY channel [, payload].
    Notify,
    /// SQL-level `PREPARE name [(types)] AS body`. The statement's class and tables are the
    /// body's, so the session can keep this classification for the matching EXECUTE (PREPARE
    /// itself changes nothing); `body` is its text, for re-preparing on another connection.
    Prepare {
        /// Statement name (lower-cased unless quoted).
        name: String,
        /// Text of the prepared statement.
        body: String,
    },
    /// `EXECUTE name [(args)]`. The classifier cannot see the body: it reports an unknown write,
    /// and the session should use the class it remembered from the matching PREPARE.
    Execute {
        /// Statement name (lower-cased unless quoted).
        name: String,
    },
    /// `DEALLOCATE [PREPARE] name` (`Some`) or `ALL` (`None`).
    Deallocate {
        /// Statement name, or `None` for ALL.
        name: Option<String>,
    },
    /// `DECLARE name CURSOR [WITH HOLD] FOR query`; class and tables are the query's.
    /// A `WITH HOLD` cursor outlives the transaction, so it pins the connection.
    DeclareCursor {
        /// `WITH HOLD` was given.
        with_hold: bool,
    },
    /// FETCH / MOVE.
    Fetch,
    /// CLOSE cursor | ALL.
    ClosePortal,
    /// CREATE TEMP/TEMPORARY TABLE/VIEW/SEQUENCE, SELECT INTO TEMP: pins the session in
    /// transaction pooling, and a temp table can shadow a cached table of the same name.
    CreateTemp,
    /// LOCK [TABLE].
    Lock,
    /// CALL procedure.
    Call,
    /// DO block.
    Do,
    /// VACUUM / ANALYZE / CLUSTER / REINDEX / CHECKPOINT / REFRESH MATERIALIZED VIEW.
    Maintenance,
    /// PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED.
    TwoPhase,
    /// Anything else; classified as a write of unknown tables.
    Other,
}

/// Hints given in a comment anywhere in the string: `/* pgrelay: leader */`,
/// `-- pgrelay: replica`, `/* pgrelay: cache ttl=30s */`, or several at once
/// (`/* pgrelay: replica, cache ttl=5m */`). Case-insensitive and whitespace-tolerant. Lets an
/// application override routing for one statement and opt a statement into the cache.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hint {
    /// Route requested, if any. When both are given the leader wins (the safe choice).
    pub route: Option<RouteHint>,
    /// Cache requested, if any.
    pub cache: Option<CacheHint>,
}

/// A requested route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteHint {
    /// `leader` (or `primary`): run on the leader even if it is a read.
    Leader,
    /// `replica` (or `standby`): a read may use a replica (the lag budget still applies).
    Replica,
}

/// A request to cache the result of this statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheHint {
    /// `ttl=30s` / `500ms` / `5m` / `1h` / bare seconds; `None` means the configured default.
    pub ttl: Option<Duration>,
}

// ---------------------------------------------------------------------------------------------
// Function tables
// ---------------------------------------------------------------------------------------------

/// Built-in functions with side effects that a hot standby refuses or that only mean something
/// on the leader. None of them changes user tables. Matched on the bare name (any schema).
#[rustfmt::skip]
const BUILTIN_WRITE_FUNCTIONS: &[&str] = &[
    "nextval", "setval", "currval", "lastval", "set_config", "txid_current",
    "txid_current_if_assigned", "pg_current_xact_id", "pg_current_xact_id_if_assigned", "pg_notify",
    "lowrite", "loread", "pg_switch_wal", "pg_create_restore_point", "pg_terminate_backend",
    "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_drop_replication_slot",
    "pg_replication_slot_advance", "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot", "pg_logical_emit_message", "pg_backup_start",
    "pg_backup_stop", "pg_promote", "pg_import_system_collations", "brin_summarize_new_values",
    "brin_summarize_range", "brin_desummarize_range", "gin_clean_pending_list",
];

/// Prefix families of [`BUILTIN_WRITE_FUNCTIONS`]: advisory locks (and unlocks: they must run
/// where the lock is), large objects, statistics resets, replication slots and origins.
const BUILTIN_WRITE_PREFIXES: &[&str] = &[
    "pg_advisory_",
    "pg_try_advisory_",
    "lo_",
    "pg_stat_reset",
    "pg_create_",
    "pg_replication_origin_",
    "pg_logical_slot_get_",
];

/// Built-in functions whose side effects may reach any user table of this database.
const BUILTIN_TABLE_WRITE_FUNCTIONS: &[&str] = &["dblink_exec", "dblink", "dblink_send_query"];

/// Functions (and identifiers that are really function calls, like `current_schema`) whose
/// result changes between calls, sessions or servers: never cacheable. Also protects a
/// user-defined VOLATILE function list that happens to contain them (extension functions such
/// as `uuid_generate_v4`) from being treated as writes.
#[rustfmt::skip]
const VOLATILE_FUNCTIONS: &[&str] = &[
    "now", "current_timestamp", "current_time", "current_date", "localtime", "localtimestamp",
    "clock_timestamp", "statement_timestamp", "transaction_timestamp", "timeofday", "age", "random",
    "random_normal", "setseed", "gen_random_uuid", "gen_random_bytes", "gen_salt", "uuidv4",
    "uuidv7", "pg_sleep", "pg_sleep_for", "pg_sleep_until", "pg_backend_pid", "inet_server_port",
    "inet_server_addr", "inet_client_port", "inet_client_addr", "current_user", "session_user",
    "user", "current_role", "current_schema", "current_schemas", "current_catalog",
    "current_setting", "current_query", "version", "pg_is_in_recovery", "pg_postmaster_start_time",
    "pg_conf_load_time", "pg_trigger_depth",
];

/// Prefix families of [`VOLATILE_FUNCTIONS`].
const VOLATILE_PREFIXES: &[&str] = &[
    "uuid_generate_",
    "txid_",
    "pg_current_",
    "pg_last_",
    "pg_stat_",
    "pg_sleep",
];

/// Identifiers that PostgreSQL evaluates as functions without parentheses and that sqlparser
/// leaves as plain identifiers.
const SESSION_IDENTIFIERS: &[&str] = &["current_schema", "current_role", "current_catalog", "user"];

/// Date/time input strings evaluated when the statement runs (`'now'::timestamptz`).
const TIME_DEPENDENT_LITERALS: &[&str] = &["now", "today", "tomorrow", "yesterday"];

/// Built-in functions known to depend only on their arguments and the tables of the query.
/// A cacheable statement may call only these: any other function (a STABLE user function that
/// reads another table, say) could make a cached result stale behind the tables we track.
#[rustfmt::skip]
const CACHE_SAFE_FUNCTIONS: &[&str] = &[
    // aggregates and window functions
    "count", "sum", "avg", "min", "max", "string_agg", "bool_and", "bool_or", "every", "bit_and",
    "bit_or", "bit_xor", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp",
    "percentile_cont", "percentile_disc", "mode", "corr", "covar_pop", "covar_samp", "grouping",
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value", "any_value",
    // conditionals
    "coalesce", "nullif", "greatest", "least",
    // strings
    "lower", "upper", "initcap", "length", "char_length", "character_length", "octet_length",
    "bit_length", "substr", "substring", "trim", "btrim", "ltrim", "rtrim", "lpad", "rpad",
    "replace", "reverse", "left", "right", "repeat", "split_part", "strpos", "position", "concat",
    "concat_ws", "format", "md5", "sha224", "sha256", "sha384", "sha512", "encode", "decode",
    "ascii", "chr", "quote_ident", "quote_literal", "quote_nullable", "translate", "starts_with",
    "string_to_array", "string_to_table", "overlay", "normalize", "to_hex", "unistr", "casefold",
    // numbers
    "abs", "ceil", "ceiling", "floor", "round", "trunc", "sign", "sqrt", "cbrt", "power", "pow",
    "exp", "ln", "log", "log10", "mod", "div", "pi", "degrees", "radians", "sin", "cos", "tan",
    "asin", "acos", "atan", "atan2", "width_bucket", "gcd", "lcm", "factorial", "scale",
    "trim_scale", "min_scale",
    // dates (with explicit arguments)
    "date_trunc", "date_part", "extract", "date_bin", "make_date", "make_time", "make_timestamp",
    "make_timestamptz", "make_interval", "justify_days", "justify_hours", "justify_interval",
    "isfinite", "to_timestamp", "to_char", "to_number", "to_date", "timezone",
    // json, arrays, ranges, text search
    "to_json", "to_jsonb", "row_to_json", "cardinality", "unnest", "generate_series",
    "generate_subscripts", "lower_inc", "upper_inc", "lower_inf", "upper_inf", "isempty",
    "range_merge", "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery",
    "websearch_to_tsquery", "ts_rank", "ts_rank_cd", "ts_headline", "setweight", "num_nonnulls",
    "num_nulls",
];

/// Prefix families of [`CACHE_SAFE_FUNCTIONS`].
const CACHE_SAFE_PREFIXES: &[&str] = &["json_", "jsonb_", "array_", "regexp_", "regr_"];

fn in_table(name: &str, exact: &[&str], prefixes: &[&str]) -> bool {
    exact.contains(&name) || prefixes.iter().any(|p| name.starts_with(p))
}

/// What calling a function listed in a [`FunctionCatalog`] implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FunctionEffect {
    /// It may change rows of any table (user functions, `dblink_exec`), so the cache must be
    /// invalidated wholesale; built-ins like `nextval` only touch sequences or locks.
    may_write_tables: bool,
}

/// The functions that force a statement to the leader: the built-in table of side-effecting
/// functions, the configured `write_functions`, and the user-defined VOLATILE functions read
/// from the leader's `pg_proc`. Immutable; rebuild it (and swap it whole) when the list
/// changes. Classifications depend on it, so [`ClassifyCache`] keys entries by
/// [`FunctionCatalog::generation`].
#[derive(Debug, Clone)]
pub struct FunctionCatalog {
    /// Names valid in any schema (built-ins, unqualified config entries), by bare name.
    any_schema: HashMap<String, FunctionEffect>,
    /// Schema-qualified entries, `schema.name`.
    qualified: HashMap<String, FunctionEffect>,
    /// Bare names of the qualified entries: an unqualified call may resolve to them through
    /// `search_path`, which the classifier does not know, so it matches conservatively.
    bare_of_qualified: HashMap<String, FunctionEffect>,
    generation: u64,
}

impl Default for FunctionCatalog {
    fn default() -> Self {
        Self::new(&[], std::iter::empty())
    }
}

impl FunctionCatalog {
    /// Builds the catalog.
    ///
    /// `write_functions` come from the config and are written as SQL names: `audit_log`
    /// (any schema), `app.audit_log`, `"MixedCase"`; unquoted parts are lower-cased.
    /// `volatile_user_functions` are the leader's user-defined VOLATILE functions exactly as
    /// stored in `pg_proc` (`nspname || '.' || proname`, or a bare `proname`), no quoting.
    /// Both may change any table. Well-known volatile functions without side effects
    /// (`uuid_generate_v4`, `gen_random_bytes`...) are not treated as writes even if listed
    /// among the user functions, because extensions install them as VOLATILE.
    pub fn new(
        write_functions: &[String],
        volatile_user_functions: impl IntoIterator<Item = String>,
    ) -> Self {
        let builtin = FunctionEffect {
            may_write_tables: false,
        };
        let user = FunctionEffect {
            may_write_tables: true,
        };
        let mut catalog = FunctionCatalog {
            any_schema: HashMap::new(),
            qualified: HashMap::new(),
            bare_of_qualified: HashMap::new(),
            generation: 0,
        };
        for name in BUILTIN_WRITE_FUNCTIONS {
            catalog.any_schema.insert((*name).to_string(), builtin);
        }
        for name in BUILTIN_TABLE_WRITE_FUNCTIONS {
            catalog.any_schema.insert((*name).to_string(), user);
        }
        let mut entries: Vec<Vec<String>> = Vec::new();
        for name in write_functions {
            if let Some(parts) = parse_sql_name(name) {
                entries.push(parts);
            }
        }
        for name in volatile_user_functions {
            let parts: Vec<String> = match name.split_once('.') {
                Some((schema, bare)) => vec![schema.to_string(), bare.to_string()],
                None => vec![name],
            };
            let bare = parts.last().map(String::as_str).unwrap_or("");
            if bare.is_empty() || in_table(bare, VOLATILE_FUNCTIONS, VOLATILE_PREFIXES) {
                continue;
            }
            entries.push(parts);
        }
        for parts in entries {
            match parts.as_slice() {
                [bare] => {
                    catalog.any_schema.insert(bare.clone(), user);
                }
                [.., schema, bare] => {
                    catalog.qualified.insert(format!("{schema}.{bare}"), user);
                    catalog.bare_of_qualified.insert(bare.clone(), user);
                }
                [] => {}
            }
        }
        catalog.generation = catalog.content_hash();
        catalog
    }

    /// Identifies the contents of the catalog: equal contents give equal generations, and any
    /// change gives a new one (with 64-bit-hash certainty), so cached classifications made with
    /// an older function list are not reused.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn content_hash(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for map in [&self.any_schema, &self.qualified] {
            let mut items: Vec<(&String, &FunctionEffect)> = map.iter().collect();
            items.sort();
            for (name, effect) in items {
                name.hash(&mut hasher);
                effect.may_write_tables.hash(&mut hasher);
            }
            0xffu8.hash(&mut hasher);
        }
        hasher.finish()
    }

    /// The effect of calling the function named by `parts` (normalised), if it is listed.
    fn lookup(&self, parts: &[String]) -> Option<FunctionEffect> {
        let bare = parts.last()?;
        let builtin = || {
            in_table(bare, &[], BUILTIN_WRITE_PREFIXES).then_some(FunctionEffect {
                may_write_tables: false,
            })
        };
        if parts.len() == 1 {
            return self
                .any_schema
                .get(bare)
                .or_else(|| self.bare_of_qualified.get(bare))
                .copied()
                .or_else(builtin);
        }
        let schema = &parts[parts.len() - 2];
        self.qualified
            .get(&format!("{schema}.{bare}"))
            .or_else(|| self.any_schema.get(bare))
            .copied()
            .or_else(builtin)
    }
}

/// Is a call of this (unlisted) function safe in a cached statement?
fn cache_safe_function(parts: &[String]) -> bool {
    let Some(bare) = parts.last() else {
        return false;
    };
    let builtin_schema = parts.len() == 1 || (parts.len() == 2 && parts[0] == "pg_catalog");
    builtin_schema
        && !in_table(bare, VOLATILE_FUNCTIONS, VOLATILE_PREFIXES)
        && in_table(bare, CACHE_SAFE_FUNCTIONS, CACHE_SAFE_PREFIXES)
}

/// Catalog and statistics relations change behind our back (pg_stat_*, pg_locks...), and
/// temp tables are per session: never cache what reads them.
fn is_system_relation(name: &str) -> bool {
    let (schema, bare) = match name.rsplit_once('.') {
        Some((schema, bare)) => (Some(schema), bare),
        None => (None, name),
    };
    let schema = schema.map(|s| s.rsplit('.').next().unwrap_or(s));
    bare.starts_with("pg_")
        || matches!(
            schema,
            Some("pg_catalog" | "information_schema" | "pg_toast")
        )
        || schema.is_some_and(|s| s.starts_with("pg_temp"))
}

// ---------------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------------

/// Classifies one SQL string (a Query message, or the text of a Parse message). Pure and total:
/// any input gives an answer, and an answer it is unsure of is a write. Worst-case stack use is
/// about 0.7 MiB in a release build (see `PARSER_RECURSION_LIMIT`), within tokio's default
/// 2 MiB worker stack; do not call it from threads with smaller stacks.
pub fn classify(sql: &str, catalog: &FunctionCatalog) -> Classification {
    if sql.len() > MAX_CLASSIFY_BYTES {
        let analysis = Analysis::unknown_write(StatementKind::Other);
        return combine(vec![(analysis, 0..sql.len())], None);
    }
    let lexed = lex(sql);
    let hint = lexed.hint.finish();
    if lexed.max_depth > MAX_PAREN_DEPTH {
        let analysis = Analysis::unknown_write(StatementKind::Other);
        return combine(vec![(analysis, 0..sql.len())], hint);
    }
    let mut analyses = Vec::new();
    for range in split(sql, &lexed.tokens) {
        let tokens = &lexed.tokens[range];
        let (Some(first), Some(last)) = (tokens.first(), tokens.last()) else {
            continue;
        };
        let analysis = classify_statement(sql, tokens, catalog, 0);
        analyses.push((analysis, first.start..last.end));
    }
    combine(analyses, hint)
}

/// Merges per-statement analyses into the answer for the whole string.
fn combine(analyses: Vec<(Analysis, Range<usize>)>, hint: Option<Hint>) -> Classification {
    let mut class = Class::Read;
    let mut read_tables = Vec::new();
    let mut write_tables = Vec::new();
    let mut writes_unknown_tables = false;
    let cacheable = analyses.len() == 1 && analyses.iter().all(|(a, _)| a.cacheable);
    let mut statements = Vec::with_capacity(analyses.len());
    for (analysis, range) in analyses {
        if strength(&analysis.class) > strength(&class) {
            class = analysis.class.clone();
        }
        read_tables.extend(analysis.read_tables);
        write_tables.extend(analysis.write_tables);
        writes_unknown_tables |= analysis.writes_unknown_tables;
        statements.push(StatementInfo {
            kind: analysis.kind,
            class: analysis.class,
            range,
        });
    }
    write_tables.sort();
    write_tables.dedup();
    read_tables.retain(|t| write_tables.binary_search(t).is_err());
    read_tables.sort();
    read_tables.dedup();
    let cache_tables = if cacheable {
        Arc::new(ReadTables::new(&read_tables))
    } else {
        Arc::default()
    };
    Classification {
        class,
        statements,
        hint,
        cacheable,
        read_tables,
        cache_tables,
        write_tables,
        writes_unknown_tables,
    }
}

fn strength(class: &Class) -> u8 {
    match class {
        Class::Read => 0,
        Class::LeaderRead(_) => 1,
        Class::Write => 2,
    }
}

/// What one statement does; merged by [`combine`].
#[derive(Debug)]
struct Analysis {
    kind: StatementKind,
    class: Class,
    read_tables: Vec<String>,
    write_tables: Vec<String>,
    writes_unknown_tables: bool,
    cacheable: bool,
}

impl Analysis {
    fn new(kind: StatementKind, class: Class) -> Self {
        Analysis {
            kind,
            class,
            read_tables: Vec::new(),
            write_tables: Vec::new(),
            writes_unknown_tables: false,
            cacheable: false,
        }
    }

    fn read(kind: StatementKind) -> Self {
        Self::new(kind, Class::Read)
    }

    fn leader(kind: StatementKind, reason: LeaderReason) -> Self {
        Self::new(kind, Class::LeaderRead(reason))
    }

    /// A write whose tables are known (possibly none, e.g. VACUUM).
    fn write(kind: StatementKind, write_tables: Vec<String>) -> Self {
        let mut analysis = Self::new(kind, Class::Write);
        analysis.write_tables = write_tables;
        analysis
    }

    /// The safe answer for anything not understood.
    fn unknown_write(kind: StatementKind) -> Self {
        let mut analysis = Self::new(kind, Class::Write);
        analysis.writes_unknown_tables = true;
        analysis
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------

/// Token kinds of PostgreSQL's lexical grammar, as far as splitting and the fast path need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tk {
    /// Unquoted identifier or keyword.
    Word,
    /// `"quoted identifier"`.
    Quoted,
    /// String constant: '...', E'...', B'...', X'...', N'...', $tag$...$tag$.
    Str,
    /// Numeric constant.
    Num,
    /// `$1`.
    Param,
    /// Any other single character.
    Punct(u8),
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Tk,
    start: usize,
    end: usize,
}

struct Lexed {
    /// Tokens, comments excluded.
    tokens: Vec<Token>,
    hint: HintAcc,
    max_depth: usize,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Tokenises the whole string once, following PostgreSQL's scanner for everything that can
/// hide a `;` or a keyword: quotes, E'' escapes, dollar quotes, nested block comments. Comments
/// are dropped from the tokens but searched for hints. Linear time on any input.
fn lex(sql: &str) -> Lexed {
    let b = sql.as_bytes();
    let n = b.len();
    let mut tokens = Vec::with_capacity((n / 4).min(4096) + 1);
    let mut hint = HintAcc::default();
    let mut depth = 0usize;
    let mut max_depth = 0usize;
    let mut i = 0usize;
    let at = |k: usize| b.get(k).copied().unwrap_or(0);
    while i < n {
        let c = b[i];
        let start = i;
        let kind = match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                i += 1;
                continue;
            }
            b'-' if at(i + 1) == b'-' => {
                i = sql[i..].find('\n').map_or(n, |k| i + k);
                hint.scan(sql.get(start + 2..i).unwrap_or(""));
                continue;
            }
            b'/' if at(i + 1) == b'*' => {
                let mut nesting = 1usize;
                i += 2;
                let mut body_end = n;
                while i < n {
                    if b[i] == b'/' && at(i + 1) == b'*' {
                        nesting += 1;
                        i += 2;
                    } else if b[i] == b'*' && at(i + 1) == b'/' {
                        nesting -= 1;
                        i += 2;
                        if nesting == 0 {
                            body_end = i - 2;
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                hint.scan(sql.get(start + 2..body_end).unwrap_or(""));
                continue;
            }
            b'\'' => {
                i = scan_quoted(b, i, b'\'', false);
                Tk::Str
            }
            b'"' => {
                i = scan_quoted(b, i, b'"', false);
                Tk::Quoted
            }
            b'$' if at(i + 1).is_ascii_digit() => {
                i += 1;
                while at(i).is_ascii_digit() {
                    i += 1;
                }
                Tk::Param
            }
            b'$' => match dollar_tag_end(b, i) {
                Some(tag_end) => {
                    let tag = &sql[i..tag_end];
                    i = sql[tag_end..]
                        .find(tag)
                        .map_or(n, |k| tag_end + k + tag.len());
                    Tk::Str
                }
                None => {
                    i += 1;
                    Tk::Punct(b'$')
                }
            },
            c if is_ident_start(c) => {
                i += 1;
                while i < n && is_ident_cont(b[i]) {
                    i += 1;
                }
                if i - start == 1 && at(i) == b'\'' && b"EeBbXxNn".contains(&c) {
                    i = scan_quoted(b, i, b'\'', c == b'E' || c == b'e');
                    Tk::Str
                } else {
                    Tk::Word
                }
            }
            c if c.is_ascii_digit() || (c == b'.' && at(i + 1).is_ascii_digit()) => {
                i += 1;
                while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                    i += 1;
                }
                Tk::Num
            }
            b'(' | b'[' => {
                i += 1;
                depth += 1;
                max_depth = max_depth.max(depth);
                Tk::Punct(c)
            }
            b')' | b']' => {
                i += 1;
                depth = depth.saturating_sub(1);
                Tk::Punct(c)
            }
            _ => {
                i += 1;
                Tk::Punct(c)
            }
        };
        tokens.push(Token {
            kind,
            start,
            end: i,
        });
    }
    Lexed {
        tokens,
        hint,
        max_depth,
    }
}

/// End (exclusive) of a quoted token starting at `start` (the opening quote). A doubled quote
/// is an escaped quote; with `backslash` (E'' strings) a backslash escapes the next byte.
/// Unterminated → end of input.
fn scan_quoted(b: &[u8], start: usize, quote: u8, backslash: bool) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        let c = b[i];
        if backslash && c == b'\\' {
            i += 2;
        } else if c == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// If a dollar-quote opening tag (`$$`, `$tag$`) starts at `start`, its end (exclusive).
fn dollar_tag_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if i < b.len() && is_ident_start(b[i]) {
        i += 1;
        while i < b.len() && is_ident_cont(b[i]) && b[i] != b'$' {
            i += 1;
        }
    }
    (b.get(i) == Some(&b'$')).then_some(i + 1)
}

// ---------------------------------------------------------------------------------------------
// Splitter
// ---------------------------------------------------------------------------------------------

/// Splits the token list into statements at top-level `;`, as psql does: not inside
/// parentheses (CREATE RULE ... DO (a; b)), and not inside the `BEGIN ATOMIC ... END` body of
/// a SQL-standard `CREATE FUNCTION` / `CREATE PROCEDURE` (psql's heuristic, psqlscan.l).
/// Returns token index ranges; empty statements are dropped.
fn split(sql: &str, tokens: &[Token]) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(1);
    let mut start = 0usize;
    let mut depth = 0usize;
    let mut begin_depth = 0usize;
    let mut word_count = 0usize;
    let mut leading = [0u8; 4];
    for (k, t) in tokens.iter().enumerate() {
        match t.kind {
            Tk::Punct(b'(') => depth += 1,
            Tk::Punct(b')') => depth = depth.saturating_sub(1),
            Tk::Punct(b';') if depth == 0 && begin_depth == 0 => {
                if k > start {
                    out.push(start..k);
                }
                start = k + 1;
                word_count = 0;
                leading = [0; 4];
            }
            Tk::Word => {
                let w = text(sql, t);
                if word_count < leading.len() {
                    const MARKERS: [&str; 5] = ["create", "function", "procedure", "or", "replace"];
                    if MARKERS.iter().any(|m| w.eq_ignore_ascii_case(m)) {
                        leading[word_count] = w.as_bytes()[0].to_ascii_lowercase();
                    }
                }
                word_count += 1;
                let defines_routine = leading[0] == b'c'
                    && (leading[1] == b'f'
                        || leading[1] == b'p'
                        || (leading[1] == b'o'
                            && leading[2] == b'r'
                            && (leading[3] == b'f' || leading[3] == b'p')));
                if defines_routine && depth == 0 {
                    if w.eq_ignore_ascii_case("begin") {
                        begin_depth += 1;
                    } else if w.eq_ignore_ascii_case("case") {
                        if begin_depth >= 1 {
                            begin_depth += 1;
                        }
                    } else if w.eq_ignore_ascii_case("end") {
                        begin_depth = begin_depth.saturating_sub(1);
                    }
                }
            }
            _ => {}
        }
    }
    if start < tokens.len() {
        out.push(start..tokens.len());
    }
    out
}

fn text<'a>(sql: &'a str, t: &Token) -> &'a str {
    sql.get(t.start..t.end).unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// Token helpers for the fast path
// ---------------------------------------------------------------------------------------------

/// A statement's tokens plus the text they index.
#[derive(Clone, Copy)]
struct Toks<'a> {
    sql: &'a str,
    t: &'a [Token],
}

impl<'a> Toks<'a> {
    fn is_word(&self, k: usize, kw: &str) -> bool {
        self.t
            .get(k)
            .is_some_and(|t| t.kind == Tk::Word && text(self.sql, t).eq_ignore_ascii_case(kw))
    }

    fn is_punct(&self, k: usize, c: u8) -> bool {
        self.t.get(k).is_some_and(|t| t.kind == Tk::Punct(c))
    }

    fn kind(&self, k: usize) -> Option<Tk> {
        self.t.get(k).map(|t| t.kind)
    }

    /// Index of the first word `kw` at or after `from`.
    fn find_word(&self, from: usize, kw: &str) -> Option<usize> {
        (from..self.t.len()).find(|&k| self.is_word(k, kw))
    }

    /// Index just past the parenthesised group opening at `open` (unbalanced → end).
    fn skip_group(&self, open: usize) -> usize {
        let mut depth = 0usize;
        for k in open..self.t.len() {
            match self.t[k].kind {
                Tk::Punct(b'(') => depth += 1,
                Tk::Punct(b')') => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return k + 1;
                    }
                }
                _ => {}
            }
        }
        self.t.len()
    }

    /// Text from token `from` to the last token (empty when out of range).
    fn text_from(&self, from: usize) -> &'a str {
        match (self.t.get(from), self.t.last()) {
            (Some(a), Some(z)) => self.sql.get(a.start..z.end).unwrap_or(""),
            _ => "",
        }
    }

    /// Tokens from `from` to the end as SQL text fit to replay: comments removed, any gap
    /// between tokens rendered as one space (`public , app` stays `public , app`,
    /// `public,/* x */app` becomes `public, app`... only where the source had a gap).
    fn render_from(&self, from: usize) -> String {
        let mut out = String::new();
        let mut prev_end: Option<usize> = None;
        for t in self.t.get(from..).unwrap_or(&[]) {
            if prev_end.is_some_and(|e| e < t.start) {
                out.push(' ');
            }
            out.push_str(text(self.sql, t));
            prev_end = Some(t.end);
        }
        out
    }

    fn sub(&self, range: Range<usize>) -> Toks<'a> {
        Toks {
            sql: self.sql,
            t: self.t.get(range).unwrap_or(&[]),
        }
    }

    /// A possibly qualified name at `k`: `(word|"quoted") (. (word|"quoted"))*`, normalised.
    /// Returns the parts and the index after the name.
    fn name_at(&self, mut k: usize) -> Option<(Vec<String>, usize)> {
        let mut parts = Vec::new();
        loop {
            let t = self.t.get(k)?;
            parts.push(match t.kind {
                Tk::Word => text(self.sql, t).to_ascii_lowercase(),
                Tk::Quoted => unquote_ident(text(self.sql, t)),
                _ => return None,
            });
            k += 1;
            if self.is_punct(k, b'.') {
                k += 1;
            } else {
                return Some((parts, k));
            }
        }
    }

    /// Comma-separated table names from `k` (`[TABLE] [ONLY] name [*] [, ...]`), stopping at
    /// the first token that does not fit.
    fn table_list(&self, mut k: usize) -> Vec<String> {
        let mut names = Vec::new();
        if self.is_word(k, "table") {
            k += 1;
        }
        loop {
            if self.is_word(k, "only") {
                k += 1;
            }
            let Some((parts, next)) = self.name_at(k) else {
                break;
            };
            names.push(parts.join("."));
            k = next;
            if self.is_punct(k, b'*') {
                k += 1;
            }
            if self.is_punct(k, b',') {
                k += 1;
            } else {
                break;
            }
        }
        names
    }
}

/// `"a""b"` → `a"b`.
fn unquote_ident(quoted: &str) -> String {
    let inner = quoted.strip_prefix('"').unwrap_or(quoted);
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    inner.replace("\"\"", "\"")
}

/// Parses a configured SQL name (`a.b`, `"A".b`) into normalised parts.
fn parse_sql_name(name: &str) -> Option<Vec<String>> {
    let lexed = lex(name);
    let toks = Toks {
        sql: name,
        t: &lexed.tokens,
    };
    let (parts, end) = toks.name_at(0)?;
    (end == lexed.tokens.len()).then_some(parts)
}

/// Lower-cases a short keyword into `buf` for matching; longer words are not keywords we know.
fn keyword<'b>(word: &str, buf: &'b mut [u8; 16]) -> &'b str {
    let bytes = word.as_bytes();
    if bytes.len() > buf.len() {
        return "";
    }
    for (dst, src) in buf.iter_mut().zip(bytes) {
        *dst = src.to_ascii_lowercase();
    }
    std::str::from_utf8(&buf[..bytes.len()]).unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// Per-statement classification: the keyword fast path
// ---------------------------------------------------------------------------------------------

/// Classifies one statement given its (non-empty) tokens. Utility and transaction-control
/// commands are decided from their keywords; queries and DML go to sqlparser.
fn classify_statement(
    sql: &str,
    tokens: &[Token],
    catalog: &FunctionCatalog,
    nesting: usize,
) -> Analysis {
    let s = Toks { sql, t: tokens };
    if nesting > MAX_WRAPPER_NESTING {
        return Analysis::unknown_write(StatementKind::Other);
    }
    let Some(first) = tokens.first() else {
        return Analysis::read(StatementKind::Other);
    };
    if first.kind == Tk::Punct(b'(') {
        return parse_and_walk(s, catalog);
    }
    if first.kind != Tk::Word {
        return Analysis::unknown_write(StatementKind::Other);
    }
    let mut buf = [0u8; 16];
    match keyword(text(sql, first), &mut buf) {
        "select" | "with" | "values" | "table" | "insert" | "update" | "delete" | "merge" => {
            parse_and_walk(s, catalog)
        }
        "begin" | "start" => begin(s),
        "commit" | "end" => {
            if s.is_word(1, "prepared") {
                Analysis::write(StatementKind::TwoPhase, Vec::new())
            } else {
                Analysis::read(StatementKind::Commit {
                    chain: and_chain(s),
                })
            }
        }
        "rollback" | "abort" => {
            if s.is_word(1, "prepared") {
                Analysis::write(StatementKind::TwoPhase, Vec::new())
            } else if s.find_word(1, "to").is_some() {
                Analysis::read(StatementKind::RollbackToSavepoint)
            } else {
                Analysis::read(StatementKind::Rollback {
                    chain: and_chain(s),
                })
            }
        }
        "savepoint" => Analysis::read(StatementKind::Savepoint),
        "release" => Analysis::read(StatementKind::ReleaseSavepoint),
        "set" => set(s),
        "reset" => reset(s),
        "discard" => Analysis::read(StatementKind::Discard {
            all: s.is_word(1, "all"),
        }),
        "show" => Analysis::read(StatementKind::Query),
        "listen" => Analysis::leader(StatementKind::Listen, LeaderReason::Listen),
        "unlisten" => Analysis::leader(StatementKind::Unlisten, LeaderReason::Listen),
        "notify" => Analysis::write(StatementKind::Notify, Vec::new()),
        "prepare" => prepare(s, catalog, nesting),
        "execute" => match s.name_at(1) {
            Some((parts, _)) => Analysis::unknown_write(StatementKind::Execute {
                name: parts.join("."),
            }),
            None => Analysis::unknown_write(StatementKind::Other),
        },
        "deallocate" => deallocate(s),
        "declare" => declare(s, catalog, nesting),
        "fetch" | "move" => Analysis::read(StatementKind::Fetch),
        "close" => Analysis::read(StatementKind::ClosePortal),
        "explain" => explain(s, catalog, nesting),
        "copy" => copy(s, catalog, nesting),
        "lock" => Analysis::leader(StatementKind::Lock, LeaderReason::ExplicitLock),
        "call" => Analysis::unknown_write(StatementKind::Call),
        "do" => Analysis::unknown_write(StatementKind::Do),
        "vacuum" | "analyze" | "analyse" | "cluster" | "reindex" | "checkpoint" => {
            Analysis::write(StatementKind::Maintenance, Vec::new())
        }
        "refresh" => {
            // REFRESH MATERIALIZED VIEW [CONCURRENTLY] name: the view's rows change.
            let mut k = 1;
            while s.is_word(k, "materialized")
                || s.is_word(k, "view")
                || s.is_word(k, "concurrently")
            {
                k += 1;
            }
            Analysis::write(StatementKind::Maintenance, s.table_list(k))
        }
        "truncate" => {
            let mut analysis = Analysis::write(StatementKind::Dml, s.table_list(1));
            // CASCADE also empties every table referencing these; we cannot know which.
            analysis.writes_unknown_tables =
                analysis.write_tables.is_empty() || s.find_word(1, "cascade").is_some();
            analysis
        }
        "create" => create(s),
        "alter" | "drop" => {
            let mut k = 1;
            while s.is_word(k, "materialized") || s.is_word(k, "foreign") {
                k += 1;
            }
            let objects = if s.is_word(k, "table") || s.is_word(k, "view") {
                k += 1;
                if s.is_word(k, "if") {
                    k += 2; // IF [NOT] EXISTS
                    if s.is_word(k, "exists") {
                        k += 1;
                    }
                }
                s.table_list(k)
            } else {
                Vec::new()
            };
            // Renames, cascades, dependent views, policies: effects reach beyond the named
            // objects, so invalidate everything (DDL is rare).
            let mut analysis = Analysis::unknown_write(StatementKind::Ddl);
            analysis.write_tables = objects;
            analysis
        }
        "comment" | "security" => Analysis::write(StatementKind::Ddl, Vec::new()),
        "grant" | "revoke" | "import" | "reassign" => Analysis::unknown_write(StatementKind::Ddl),
        _ => Analysis::unknown_write(StatementKind::Other),
    }
}

/// `AND CHAIN` (but not `AND NO CHAIN`) at the end of COMMIT / ROLLBACK.
fn and_chain(s: Toks) -> bool {
    s.find_word(1, "and")
        .is_some_and(|k| s.is_word(k + 1, "chain"))
}

/// Transaction modes of BEGIN / START TRANSACTION / SET TRANSACTION: (read_only, serializable).
fn transaction_modes(s: Toks, from: usize) -> (Option<bool>, bool) {
    let mut read_only = None;
    let mut serializable = false;
    for k in from..s.t.len() {
        if s.is_word(k, "read") {
            if s.is_word(k + 1, "only") {
                read_only = Some(true);
            } else if s.is_word(k + 1, "write") {
                read_only = Some(false);
            }
        } else if s.is_word(k, "serializable") {
            serializable = true;
        }
    }
    (read_only, serializable)
}

/// Where a transaction with these modes must run.
fn transaction_class(read_only: Option<bool>, serializable: bool, default: Class) -> Class {
    if serializable {
        Class::LeaderRead(LeaderReason::SerializableTransaction)
    } else {
        match read_only {
            Some(true) => Class::Read,
            Some(false) => Class::LeaderRead(LeaderReason::ReadWriteTransaction),
            None => default,
        }
    }
}

fn begin(s: Toks) -> Analysis {
    let is_start = s.is_word(0, "start");
    if is_start && !s.is_word(1, "transaction") {
        return Analysis::unknown_write(StatementKind::Other);
    }
    let (read_only, serializable) = transaction_modes(s, 1);
    let class = transaction_class(
        read_only,
        serializable,
        Class::LeaderRead(LeaderReason::ReadWriteTransaction),
    );
    Analysis::new(StatementKind::Begin { read_only }, class)
}

fn set(s: Toks) -> Analysis {
    let mut k = 1;
    let mut local = false;
    if s.is_word(k, "session") {
        if s.is_word(k + 1, "characteristics") {
            let (read_only, serializable) = transaction_modes(s, k + 2);
            return Analysis::new(
                StatementKind::SetTransaction {
                    read_only,
                    session_characteristics: true,
                },
                transaction_class(read_only, serializable, Class::Read),
            );
        }
        if s.is_word(k + 1, "authorization") {
            return set_value(s, "session_authorization".to_string(), k + 2, false);
        }
        k += 1;
    } else if s.is_word(k, "local") {
        local = true;
        k += 1;
    }
    if s.is_word(k, "transaction") {
        let (read_only, serializable) = transaction_modes(s, k + 1);
        return Analysis::new(
            StatementKind::SetTransaction {
                read_only,
                session_characteristics: false,
            },
            transaction_class(read_only, serializable, Class::Read),
        );
    }
    if s.is_word(k, "time") && s.is_word(k + 1, "zone") {
        // SET TIME ZONE LOCAL means the default; INTERVAL '...' HOUR TO MINUTE has no
        // `SET timezone TO` spelling, so it is left to the leader as an unknown command.
        if s.is_word(k + 2, "local") && k + 3 == s.t.len() {
            return Analysis::read(StatementKind::Set {
                name: "timezone".to_string(),
                value: "DEFAULT".to_string(),
                local,
            });
        }
        if s.is_word(k + 2, "interval") {
            return Analysis::unknown_write(StatementKind::Other);
        }
        return set_value(s, "timezone".to_string(), k + 2, local);
    }
    for (word, name) in [
        ("names", "client_encoding"),
        ("schema", "search_path"),
        ("role", "role"),
    ] {
        if s.is_word(k, word) && !s.is_word(k + 1, "to") && !s.is_punct(k + 1, b'=') {
            return set_value(s, name.to_string(), k + 1, local);
        }
    }
    if s.is_word(k, "constraints") {
        return Analysis::unknown_write(StatementKind::Other);
    }
    let Some((parts, next)) = s.name_at(k) else {
        return Analysis::unknown_write(StatementKind::Other);
    };
    if !(s.is_word(next, "to") || s.is_punct(next, b'=')) {
        return Analysis::unknown_write(StatementKind::Other);
    }
    set_value(s, parts.join("."), next + 1, local)
}

fn set_value(s: Toks, name: String, from: usize, local: bool) -> Analysis {
    let value = s.render_from(from);
    if value.is_empty() {
        return Analysis::unknown_write(StatementKind::Other);
    }
    Analysis::read(StatementKind::Set { name, value, local })
}

fn reset(s: Toks) -> Analysis {
    let name = if s.is_word(1, "all") {
        None
    } else if s.is_word(1, "time") && s.is_word(2, "zone") {
        Some("timezone".to_string())
    } else if s.is_word(1, "session") && s.is_word(2, "authorization") {
        Some("session_authorization".to_string())
    } else {
        match s.name_at(1) {
            Some((parts, _)) => Some(parts.join(".")),
            None => return Analysis::unknown_write(StatementKind::Other),
        }
    };
    Analysis::read(StatementKind::Reset { name })
}

fn deallocate(s: Toks) -> Analysis {
    let k = if s.is_word(1, "prepare") { 2 } else { 1 };
    if s.is_word(k, "all") {
        return Analysis::read(StatementKind::Deallocate { name: None });
    }
    match s.name_at(k) {
        Some((parts, _)) => Analysis::read(StatementKind::Deallocate {
            name: Some(parts.join(".")),
        }),
        None => Analysis::unknown_write(StatementKind::Other),
    }
}

/// `PREPARE TRANSACTION 'gid'` or `PREPARE name [(types)] AS body`.
fn prepare(s: Toks, catalog: &FunctionCatalog, nesting: usize) -> Analysis {
    if s.is_word(1, "transaction") && s.kind(2) == Some(Tk::Str) {
        return Analysis::write(StatementKind::TwoPhase, Vec::new());
    }
    let Some((parts, mut k)) = s.name_at(1) else {
        return Analysis::unknown_write(StatementKind::Other);
    };
    if s.is_punct(k, b'(') {
        k = s.skip_group(k);
    }
    if !s.is_word(k, "as") || k + 1 >= s.t.len() {
        return Analysis::unknown_write(StatementKind::Other);
    }
    let body = s.sub(k + 1..s.t.len());
    let mut analysis = classify_statement(s.sql, body.t, catalog, nesting + 1);
    analysis.kind = StatementKind::Prepare {
        name: parts.join("."),
        body: body.text_from(0).to_string(),
    };
    analysis.cacheable = false;
    analysis
}

/// `DECLARE name [BINARY] [ASENSITIVE|INSENSITIVE] [[NO] SCROLL] CURSOR [WITH[OUT] HOLD] FOR q`.
fn declare(s: Toks, catalog: &FunctionCatalog, nesting: usize) -> Analysis {
    let Some(cursor) = s.find_word(1, "cursor") else {
        return Analysis::unknown_write(StatementKind::Other);
    };
    let Some(for_at) = s.find_word(cursor + 1, "for") else {
        return Analysis::unknown_write(StatementKind::Other);
    };
    let with_hold = (cursor + 1..for_at).any(|k| s.is_word(k, "with") && s.is_word(k + 1, "hold"));
    let body = s.sub(for_at + 1..s.t.len());
    if body.t.is_empty() {
        return Analysis::unknown_write(StatementKind::Other);
    }
    let mut analysis = classify_statement(s.sql, body.t, catalog, nesting + 1);
    analysis.kind = StatementKind::DeclareCursor { with_hold };
    analysis.cacheable = false;
    analysis
}

/// `EXPLAIN [ANALYZE] [VERBOSE] stmt` / `EXPLAIN (option [value], ...) stmt`. Without ANALYZE
/// nothing is executed (the executor skips its read-only checks for EXPLAIN only), so it is a
/// read; with ANALYZE the statement runs and keeps its own class.
fn explain(s: Toks, catalog: &FunctionCatalog, nesting: usize) -> Analysis {
    let mut k = 1;
    let mut analyze = false;
    let query_starts = ["select", "with", "values", "table"];
    if s.is_punct(1, b'(') && !query_starts.iter().any(|w| s.is_word(2, w)) && !s.is_punct(2, b'(')
    {
        let end = s.skip_group(1);
        for j in 2..end {
            if s.is_word(j, "analyze") || s.is_word(j, "analyse") {
                let off = ["false", "off", "no"].iter().any(|w| s.is_word(j + 1, w))
                    || (s.kind(j + 1) == Some(Tk::Num) && s.sub(j + 1..j + 2).text_from(0) == "0");
                analyze |= !off;
            }
        }
        k = end;
    } else {
        while s.is_word(k, "analyze") || s.is_word(k, "analyse") || s.is_word(k, "verbose") {
            analyze |= !s.is_word(k, "verbose");
            k += 1;
        }
    }
    let body = s.sub(k..s.t.len());
    if body.t.is_empty() {
        return Analysis::unknown_write(StatementKind::Other);
    }
    let inner = classify_statement(s.sql, body.t, catalog, nesting + 1);
    if analyze {
        let mut analysis = inner;
        analysis.cacheable = false;
        return analysis;
    }
    let mut analysis = Analysis::read(StatementKind::Query);
    analysis.read_tables = inner.read_tables;
    analysis.read_tables.extend(inner.write_tables);
    analysis
}

/// `COPY table [(cols)] {FROM|TO} {STDIN|STDOUT|'file'|PROGRAM 'cmd'} ...` or
/// `COPY (query) TO ...`. Decided from tokens: sqlparser's COPY support is partial and a COPY
/// FROM misread as a read is exactly pgcat#865.
fn copy(s: Toks, catalog: &FunctionCatalog, nesting: usize) -> Analysis {
    let mut k = 1;
    if s.is_word(k, "binary") {
        k += 1;
    }
    let unknown = || {
        Analysis::unknown_write(StatementKind::Copy {
            from_client: false,
            to_client: false,
        })
    };
    if s.is_punct(k, b'(') {
        let end = s.skip_group(k);
        if end < k + 3 || !s.is_word(end, "to") {
            return unknown();
        }
        let to_client = s.is_word(end + 1, "stdout");
        let body = s.sub(k + 1..end - 1);
        let mut analysis = classify_statement(s.sql, body.t, catalog, nesting + 1);
        analysis.kind = StatementKind::Copy {
            from_client: false,
            to_client,
        };
        analysis.cacheable = false;
        if !to_client && analysis.class == Class::Read {
            analysis.class = Class::LeaderRead(LeaderReason::ServerSideCopy);
        }
        return analysis;
    }
    let Some((parts, mut next)) = s.name_at(k) else {
        return unknown();
    };
    if s.is_punct(next, b'(') {
        next = s.skip_group(next);
    }
    let table = parts.join(".");
    if s.is_word(next, "from") {
        let from_client = s.is_word(next + 1, "stdin");
        Analysis::write(
            StatementKind::Copy {
                from_client,
                to_client: false,
            },
            vec![table],
        )
    } else if s.is_word(next, "to") {
        let to_client = s.is_word(next + 1, "stdout");
        let kind = StatementKind::Copy {
            from_client: false,
            to_client,
        };
        let mut analysis = if to_client {
            Analysis::read(kind)
        } else {
            Analysis::leader(kind, LeaderReason::ServerSideCopy)
        };
        analysis.read_tables = vec![table];
        analysis
    } else {
        unknown()
    }
}

/// CREATE: temp objects pin the session; new tables, sequences, indexes, views and materialized
/// views change nothing cached (their names are still reported, so a cached query that named a
/// table which did not exist yet, or that a new table now shadows, is invalidated); everything
/// else (functions, rules, triggers, policies, OR REPLACE...) may change any result.
fn create(s: Toks) -> Analysis {
    let mut k = 1;
    let mut or_replace = false;
    let mut temp = false;
    loop {
        if s.is_word(k, "or") && s.is_word(k + 1, "replace") {
            or_replace = true;
            k += 2;
        } else if s.is_word(k, "temp") || s.is_word(k, "temporary") {
            temp = true;
            k += 1;
        } else if ["global", "local", "unlogged", "unique", "recursive"]
            .iter()
            .any(|w| s.is_word(k, w))
        {
            k += 1;
        } else {
            break;
        }
    }
    if temp {
        return Analysis::write(StatementKind::CreateTemp, Vec::new());
    }
    if s.is_word(k, "materialized") {
        k += 1;
    }
    let object = ["table", "view", "sequence", "index"]
        .into_iter()
        .find(|w| s.is_word(k, w));
    let Some(object) = object else {
        return Analysis::unknown_write(StatementKind::Ddl);
    };
    k += 1;
    if object == "index" {
        return Analysis::write(StatementKind::Ddl, Vec::new());
    }
    if s.is_word(k, "if") && s.is_word(k + 1, "not") && s.is_word(k + 2, "exists") {
        k += 3;
    }
    let names = s
        .name_at(k)
        .map(|(p, _)| vec![p.join(".")])
        .unwrap_or_default();
    let mut analysis = Analysis::write(StatementKind::Ddl, names);
    analysis.writes_unknown_tables = or_replace || analysis.write_tables.is_empty();
    analysis
}

// ---------------------------------------------------------------------------------------------
// Full parse: queries and DML
// ---------------------------------------------------------------------------------------------

/// Parses a query or DML statement with sqlparser and walks the tree. Known grammar gaps are
/// patched in the text first: `FOR NO KEY UPDATE` → `FOR UPDATE`, `FOR KEY SHARE` → `FOR SHARE`
/// (same routing), `TABLE t` → `SELECT * FROM t`, `FROM ONLY t` → `FROM t`. Any parse failure
/// is a write (see [`unparsed`]).
fn parse_and_walk(s: Toks, catalog: &FunctionCatalog) -> Analysis {
    let statement_text = s.text_from(0);
    let patched = patch_grammar_gaps(s);
    let parse_text = patched.as_deref().unwrap_or(statement_text);
    let parsed = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .try_with_sql(parse_text)
        .and_then(|mut parser| parser.parse_statements());
    let statements = match parsed {
        Ok(statements) if !statements.is_empty() => statements,
        _ => return unparsed(s, catalog),
    };
    let mut walk = Walk::new(catalog);
    for statement in &statements {
        match statement {
            Statement::Query(_)
            | Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Merge(_) => {
                let _ = statement.visit(&mut walk);
            }
            _ => return Analysis::unknown_write(StatementKind::Other),
        }
    }
    walk.finish()
}

/// A statement sqlparser could not parse: always a write, so it goes to the leader (never to a
/// replica: pgcat#884). What it may have written is narrowed where PostgreSQL's grammar allows,
/// so that one frequent query sqlparser cannot read does not empty the whole cache each time it
/// runs: data-modifying CTEs are only allowed in a top-level WITH, so a statement starting with
/// SELECT / VALUES / TABLE writes nothing but through functions (or SELECT INTO), and one
/// starting with INSERT INTO / UPDATE / DELETE FROM writes its target and what its functions
/// write. Anything else (WITH, MERGE, `(`, unknown) may have written any table.
fn unparsed(s: Toks, catalog: &FunctionCatalog) -> Analysis {
    // Any `name(` may be a call; a listed function that may write tables spoils everything.
    let calls_table_writer = || {
        (0..s.t.len()).any(|j| {
            s.is_punct(j + 1, b'(')
                && s.name_at(j).is_some_and(|(name, end)| {
                    end == j + 1 && catalog.lookup(&name).is_some_and(|e| e.may_write_tables)
                })
        })
    };
    if ["select", "values", "table"]
        .iter()
        .any(|w| s.is_word(0, w))
    {
        if s.find_word(1, "into").is_some() {
            return Analysis::unknown_write(StatementKind::Ddl);
        }
        let mut analysis = Analysis::write(StatementKind::Query, Vec::new());
        analysis.writes_unknown_tables = calls_table_writer();
        return analysis;
    }
    let target_at = if s.is_word(0, "insert") && s.is_word(1, "into") {
        Some(2)
    } else if s.is_word(0, "update") {
        Some(1)
    } else if s.is_word(0, "delete") && s.is_word(1, "from") {
        Some(2)
    } else {
        None
    };
    let Some(mut k) = target_at else {
        let kind = if ["insert", "update", "delete", "merge"]
            .iter()
            .any(|w| s.is_word(0, w))
        {
            StatementKind::Dml
        } else {
            StatementKind::Other
        };
        return Analysis::unknown_write(kind);
    };
    if s.is_word(k, "only") {
        k += 1;
    }
    let Some((parts, _)) = s.name_at(k) else {
        return Analysis::unknown_write(StatementKind::Dml);
    };
    let mut analysis = Analysis::write(StatementKind::Dml, vec![parts.join(".")]);
    analysis.writes_unknown_tables = calls_table_writer();
    analysis
}

/// Rewrites the grammar sqlparser 0.63 lacks (or misreads) into equivalents with the same
/// routing and tables. `None` when nothing needs patching (the common case: no allocation).
fn patch_grammar_gaps(s: Toks) -> Option<String> {
    let mut edits: Vec<(Range<usize>, &str)> = Vec::new();
    for k in 0..s.t.len() {
        if s.is_word(k, "for") {
            if s.is_word(k + 1, "no") && s.is_word(k + 2, "key") && s.is_word(k + 3, "update") {
                edits.push((s.t[k + 1].start..s.t[k + 2].end, ""));
            } else if s.is_word(k + 1, "key") && s.is_word(k + 2, "share") {
                edits.push((s.t[k + 1].start..s.t[k + 1].end, ""));
            }
        } else if s.is_word(k, "table")
            && !(k > 0 && (s.is_word(k - 1, "as") || s.is_punct(k - 1, b'.')))
        {
            edits.push((s.t[k].start..s.t[k].end, "SELECT * FROM"));
        } else if s.is_word(k, "only")
            && k > 0
            && (["from", "join", "update", "into", "using", "table"]
                .iter()
                .any(|w| s.is_word(k - 1, w))
                || s.is_punct(k - 1, b','))
        {
            // sqlparser reads `FROM ONLY t` as table "only" aliased t: the real table would be
            // missing from read_tables and its cached results never invalidated.
            edits.push((s.t[k].start..s.t[k].end, ""));
        }
    }
    if edits.is_empty() {
        return None;
    }
    let (first, last) = (s.t.first()?, s.t.last()?);
    let mut out = String::with_capacity(last.end - first.start + 16);
    let mut pos = first.start;
    for (range, replacement) in edits {
        out.push_str(s.sql.get(pos..range.start)?);
        out.push_str(replacement);
        pos = range.end;
    }
    out.push_str(s.sql.get(pos..last.end)?);
    Some(out)
}

/// Normalises an sqlparser name: unquoted parts lower-cased (ASCII only, as PostgreSQL's
/// `downcase_identifier` does for UTF-8), quoted parts kept, joined with `.`.
fn object_name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) if ident.quote_style.is_some() => ident.value.clone(),
            ObjectNamePart::Identifier(ident) => ident.value.to_ascii_lowercase(),
            ObjectNamePart::Function(f) => f.name.value.to_ascii_lowercase(),
        })
        .collect()
}

/// WITH names in scope for one query: a reference to an unqualified name is a CTE, not a table,
/// only where PostgreSQL would resolve it to the CTE. Non-recursive CTEs see the earlier ones;
/// recursive ones see all; the main body sees all.
struct CteScope {
    owner: *const Query,
    names: Vec<String>,
    bodies: Vec<*const Query>,
    recursive: bool,
    visible: usize,
}

/// Collects what a parsed query or DML statement reads, writes, locks and calls.
struct Walk<'c> {
    catalog: &'c FunctionCatalog,
    scopes: Vec<CteScope>,
    reads: Vec<String>,
    writes: Vec<String>,
    dml: bool,
    locking: bool,
    write_function: Option<String>,
    writes_unknown: bool,
    uncacheable: bool,
    select_into: Option<(String, bool)>,
}

impl<'c> Walk<'c> {
    fn new(catalog: &'c FunctionCatalog) -> Self {
        Walk {
            catalog,
            scopes: Vec::new(),
            reads: Vec::new(),
            writes: Vec::new(),
            dml: false,
            locking: false,
            write_function: None,
            writes_unknown: false,
            uncacheable: false,
            select_into: None,
        }
    }

    fn is_cte(&self, parts: &[String]) -> bool {
        let [name] = parts else {
            return false;
        };
        self.scopes
            .iter()
            .rev()
            .any(|scope| scope.names[..scope.visible.min(scope.names.len())].contains(name))
    }

    fn relation(&mut self, name: &ObjectName) {
        let parts = object_name_parts(name);
        if self.is_cte(&parts) {
            return;
        }
        let joined = parts.join(".");
        if is_system_relation(&joined) {
            self.uncacheable = true;
        }
        self.reads.push(joined);
    }

    fn write_target(&mut self, factor: &TableFactor) {
        match factor {
            TableFactor::Table { name, .. } => self.writes.push(object_name_parts(name).join(".")),
            _ => self.writes_unknown = true,
        }
    }

    fn function(&mut self, name: &ObjectName) {
        let parts = object_name_parts(name);
        match self.catalog.lookup(&parts) {
            Some(effect) => {
                self.uncacheable = true;
                self.writes_unknown |= effect.may_write_tables;
                if self.write_function.is_none() {
                    self.write_function = Some(parts.join("."));
                }
            }
            None => {
                if !cache_safe_function(&parts) {
                    self.uncacheable = true;
                }
            }
        }
    }

    /// `TABLE t` that reached sqlparser's own SetExpr::Table (quoting is lost there).
    fn set_expr_tables(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Table(table) => {
                self.uncacheable = true;
                if let Some(name) = &table.table_name {
                    let name = match &table.schema_name {
                        Some(schema) => format!("{schema}.{name}"),
                        None => name.clone(),
                    };
                    self.reads.push(name.to_ascii_lowercase());
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr_tables(left);
                self.set_expr_tables(right);
            }
            _ => {}
        }
    }

    fn finish(mut self) -> Analysis {
        self.writes.sort();
        self.writes.dedup();
        if self.dml {
            let mut analysis = Analysis::write(StatementKind::Dml, self.writes);
            analysis.read_tables = self.reads;
            analysis.writes_unknown_tables = self.writes_unknown;
            return analysis;
        }
        if let Some((table, temporary)) = self.select_into {
            let mut analysis = if temporary {
                Analysis::write(StatementKind::CreateTemp, Vec::new())
            } else if table.is_empty() {
                Analysis::unknown_write(StatementKind::Ddl)
            } else {
                Analysis::write(StatementKind::Ddl, vec![table])
            };
            analysis.read_tables = self.reads;
            analysis.writes_unknown_tables |= self.writes_unknown;
            return analysis;
        }
        let class = if self.locking {
            Class::LeaderRead(LeaderReason::ForUpdate)
        } else if let Some(function) = self.write_function {
            Class::LeaderRead(LeaderReason::WriteFunction(function))
        } else {
            Class::Read
        };
        let mut analysis = Analysis::new(StatementKind::Query, class);
        analysis.cacheable = analysis.class == Class::Read
            && !self.uncacheable
            && !self.writes_unknown
            && !self.reads.is_empty();
        analysis.read_tables = self.reads;
        analysis.writes_unknown_tables = self.writes_unknown;
        analysis
    }
}

impl Visitor for Walk<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let ptr = query as *const Query;
        if let Some(scope) = self.scopes.last_mut() {
            if let Some(index) = scope.bodies.iter().position(|b| std::ptr::eq(*b, ptr)) {
                scope.visible = if scope.recursive {
                    scope.names.len()
                } else {
                    index
                };
            }
        }
        if !query.locks.is_empty() {
            self.locking = true;
        }
        self.set_expr_tables(&query.body);
        if let Some(with) = &query.with {
            self.scopes.push(CteScope {
                owner: ptr,
                names: with
                    .cte_tables
                    .iter()
                    .map(|cte| match cte.alias.name.quote_style {
                        Some(_) => cte.alias.name.value.clone(),
                        None => cte.alias.name.value.to_ascii_lowercase(),
                    })
                    .collect(),
                bodies: with
                    .cte_tables
                    .iter()
                    .map(|cte| &*cte.query as *const Query)
                    .collect(),
                recursive: with.recursive,
                visible: 0,
            });
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let ptr = query as *const Query;
        if self
            .scopes
            .last()
            .is_some_and(|s| std::ptr::eq(s.owner, ptr))
        {
            self.scopes.pop();
        }
        if let Some(scope) = self.scopes.last_mut() {
            if scope.bodies.iter().any(|b| std::ptr::eq(*b, ptr)) {
                scope.visible = scope.names.len();
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            let target = into.targets.first().and_then(|e| match e {
                Expr::Identifier(ident) => Some(vec![ident.clone()]),
                Expr::CompoundIdentifier(idents) => Some(idents.clone()),
                _ => None,
            });
            match target {
                Some(idents) => {
                    let name = object_name_parts(&ObjectName::from(idents)).join(".");
                    self.select_into = Some((name, into.temporary));
                }
                None => {
                    self.select_into = Some((String::new(), into.temporary));
                    self.writes_unknown = true;
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: None,
                sample,
                ..
            } => {
                self.relation(name);
                if sample.is_some() {
                    self.uncacheable = true;
                }
            }
            // `FROM f(...)`: a set-returning function, not a table.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.function(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        match statement {
            Statement::Insert(insert) => {
                self.dml = true;
                match &insert.table {
                    TableObject::TableName(name) => {
                        self.writes.push(object_name_parts(name).join("."))
                    }
                    _ => self.writes_unknown = true,
                }
            }
            Statement::Update(update) => {
                self.dml = true;
                self.write_target(&update.table.relation);
            }
            Statement::Delete(delete) => {
                self.dml = true;
                for name in &delete.tables {
                    self.writes.push(object_name_parts(name).join("."));
                }
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                    &delete.from;
                for table in from {
                    self.write_target(&table.relation);
                }
            }
            Statement::Merge(merge) => {
                self.dml = true;
                self.write_target(&merge.table);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Function(function) => self.function(&function.name),
            Expr::Identifier(ident)
                if ident.quote_style.is_none()
                    && SESSION_IDENTIFIERS
                        .iter()
                        .any(|name| ident.value.eq_ignore_ascii_case(name)) =>
            {
                self.uncacheable = true;
            }
            Expr::Cast { expr, .. } if matches!(expr.as_ref(), Expr::Value(v) if time_dependent_literal(&v.value)) =>
            {
                self.uncacheable = true;
            }
            Expr::TypedString(typed) if time_dependent_literal(&typed.value.value) => {
                self.uncacheable = true;
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// `'now'`, `'today'`... are evaluated when the statement runs.
fn time_dependent_literal(value: &Value) -> bool {
    match value {
        Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
            let s = s.trim();
            TIME_DEPENDENT_LITERALS
                .iter()
                .any(|lit| s.eq_ignore_ascii_case(lit))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Hints
// ---------------------------------------------------------------------------------------------

/// Hints accumulated from comments while lexing.
#[derive(Default)]
struct HintAcc {
    route: Option<RouteHint>,
    cache: Option<CacheHint>,
}

impl HintAcc {
    fn finish(&self) -> Option<Hint> {
        (self.route.is_some() || self.cache.is_some()).then_some(Hint {
            route: self.route,
            cache: self.cache,
        })
    }

    /// Reads every `pgrelay: directive ...` in one comment body.
    fn scan(&mut self, comment: &str) {
        const MARK: &str = "pgrelay";
        let bytes = comment.as_bytes();
        let mut from = 0;
        while let Some(found) = find_ascii_ci(&bytes[from..], MARK.as_bytes()) {
            let mut k = from + found + MARK.len();
            from = k;
            while bytes.get(k).is_some_and(|c| c.is_ascii_whitespace()) {
                k += 1;
            }
            if bytes.get(k) != Some(&b':') {
                continue;
            }
            let rest = comment.get(k + 1..).unwrap_or("");
            // Directives run until the next `pgrelay` mark, if any.
            let end = find_ascii_ci(rest.as_bytes(), MARK.as_bytes()).unwrap_or(rest.len());
            self.directives(rest.get(..end).unwrap_or(""));
        }
    }

    fn directives(&mut self, text: &str) {
        let words: Vec<String> = text
            .split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '=')
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        let mut k = 0;
        while k < words.len() {
            match words[k].as_str() {
                "leader" | "primary" => self.route = Some(RouteHint::Leader),
                "replica" | "standby" if self.route != Some(RouteHint::Leader) => {
                    self.route = Some(RouteHint::Replica)
                }
                "cache" if self.cache.is_none() => self.cache = Some(CacheHint { ttl: None }),
                "ttl" => {
                    let value = words.get(k + 1).map(String::as_str).unwrap_or("");
                    let unit = words.get(k + 2).map(String::as_str).unwrap_or("");
                    let (ttl, used) = match parse_duration(value) {
                        Some(d) if value.bytes().all(|c| c.is_ascii_digit() || c == b'.') => {
                            match duration_unit(unit) {
                                Some(factor) => (scale(d, factor), 2),
                                None => (Some(d), 1),
                            }
                        }
                        other => (other, 1),
                    };
                    if let Some(ttl) = ttl {
                        self.cache = Some(CacheHint { ttl: Some(ttl) });
                        k += used;
                    }
                }
                _ => {}
            }
            k += 1;
        }
    }
}

fn find_ascii_ci(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// Seconds per unit.
fn duration_unit(unit: &str) -> Option<f64> {
    match unit {
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => Some(0.001),
        "" | "s" | "sec" | "secs" | "second" | "seconds" => Some(1.0),
        "m" | "min" | "mins" | "minute" | "minutes" => Some(60.0),
        "h" | "hr" | "hour" | "hours" => Some(3600.0),
        "d" | "day" | "days" => Some(86400.0),
        _ => None,
    }
}

fn scale(d: Duration, factor: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).ok()
}

/// `30s`, `500ms`, `5m`, `1h`, `2.5s`, `30` (seconds).
fn parse_duration(value: &str) -> Option<Duration> {
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = duration_unit(unit)?;
    if !(0.0..=1e9).contains(&number) {
        return None;
    }
    Duration::try_from_secs_f64(number * factor).ok()
}

// ---------------------------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------------------------

const CACHE_SHARDS: usize = 16;

/// Keys are already hashes: hashing them again would only cost time.
#[derive(Default)]
struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Slot {
    text: Box<str>,
    hash: u64,
    generation: u64,
    value: Arc<Classification>,
    referenced: bool,
}

/// One lock's worth of entries, evicted by CLOCK (second chance).
struct Shard {
    index: HashMap<u64, usize, BuildHasherDefault<PrehashedKey>>,
    slots: Vec<Slot>,
    hand: usize,
    capacity: usize,
}

impl Shard {
    fn get(&mut self, hash: u64, sql: &[u8], generation: u64) -> Option<Arc<Classification>> {
        let &i = self.index.get(&hash)?;
        let slot = self.slots.get_mut(i)?;
        if slot.generation != generation || slot.text.as_bytes() != sql {
            return None;
        }
        slot.referenced = true;
        Some(Arc::clone(&slot.value))
    }

    fn put(&mut self, hash: u64, sql: &str, generation: u64, value: Arc<Classification>) {
        let slot = Slot {
            text: sql.into(),
            hash,
            generation,
            value,
            referenced: false,
        };
        if let Some(&i) = self.index.get(&hash) {
            if let Some(existing) = self.slots.get_mut(i) {
                *existing = slot;
                return;
            }
        }
        if self.slots.len() < self.capacity {
            self.index.insert(hash, self.slots.len());
            self.slots.push(slot);
            return;
        }
        if self.slots.is_empty() {
            return;
        }
        // Second chance: skip (and clear) recently used entries; at most two sweeps.
        loop {
            self.hand %= self.slots.len();
            let victim = &mut self.slots[self.hand];
            if victim.referenced {
                victim.referenced = false;
                self.hand += 1;
            } else {
                break;
            }
        }
        let victim = self.hand;
        self.index.remove(&self.slots[victim].hash);
        self.index.insert(hash, victim);
        self.slots[victim] = slot;
        self.hand = victim + 1;
    }
}

/// A bounded, thread-safe cache of classifications keyed by statement text and catalog
/// generation, so a statement sent again (or a prepared statement re-parsed on another server
/// connection) is parsed once: sqlparser costs 3-12 µs per OLTP statement, a hit well under
/// one. Sharded mutexes over hash maps with CLOCK eviction; capacity is in entries. Texts over
/// 64 KiB are classified but not stored.
pub struct ClassifyCache {
    shards: Vec<Mutex<Shard>>,
    /// Per process, so statement texts cannot be chosen to collide.
    seed: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for ClassifyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifyCache")
            .field("shards", &self.shards.len())
            .field("hits", &self.hits())
            .field("misses", &self.misses())
            .finish()
    }
}

/// Statements whose classification cannot depend on a numeric literal: their class, tables
/// and functions are what they are whatever the numbers.
const NUMBER_BLIND_KEYWORDS: &[&[u8]] = &[
    b"select", b"with", b"insert", b"update", b"delete", b"values", b"table",
];

/// What a byte can start in [`blank_numbers`]'s scan.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ByteClass {
    Other,
    /// A letter, `_` or a byte of a multi-byte character: continues a word.
    Word,
    Digit,
    Quote,
    DoubleQuote,
    Dollar,
    Semicolon,
    Dash,
    Slash,
}

/// Each byte's class: one load per byte instead of a chain of comparisons.
static BYTE_CLASS: [ByteClass; 256] = {
    let mut table = [ByteClass::Other; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = match c {
            b'0'..=b'9' => ByteClass::Digit,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | 0x80..=0xff => ByteClass::Word,
            b'\'' => ByteClass::Quote,
            b'"' => ByteClass::DoubleQuote,
            b'$' => ByteClass::Dollar,
            b';' => ByteClass::Semicolon,
            b'-' => ByteClass::Dash,
            b'/' => ByteClass::Slash,
            _ => ByteClass::Other,
        };
        b += 1;
    }
    table
};

/// Whether a byte continues an identifier: letters, digits, `_`, `$`, multi-byte characters.
static CONTINUES_IDENTIFIER: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(
            BYTE_CLASS[b],
            ByteClass::Word | ByteClass::Digit | ByteClass::Dollar
        );
        b += 1;
    }
    table
};

fn continues_identifier(c: u8) -> bool {
    CONTINUES_IDENTIFIER[usize::from(c)]
}

/// Writes into `out` the statement `b` with every digit of every numeric literal replaced by
/// `0` (same length, so statement ranges stay valid, and still valid UTF-8), and returns true;
/// returns false when nothing changes, the text holds more than one statement, or it is not
/// a statement kind known to be number-blind. Digits inside strings, quoted identifiers,
/// comments (hints live there), identifiers and `$n` parameters are left alone; any
/// dollar-quoted string makes it give up.
fn blank_numbers(b: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(first) = first_keyword(b) else {
        return false;
    };
    if !NUMBER_BLIND_KEYWORDS
        .iter()
        .any(|k| k.len() == first.len() && k.eq_ignore_ascii_case(first))
    {
        return false;
    }
    let mut changed = false;
    let mut i = 0;
    while i < b.len() {
        match BYTE_CLASS[usize::from(b[i])] {
            ByteClass::Other => i += 1,
            ByteClass::Word => {
                i += 1;
                while i < b.len() && continues_identifier(b[i]) {
                    i += 1;
                }
            }
            ByteClass::Quote => {
                let escapes = i > 0
                    && matches!(b[i - 1], b'e' | b'E')
                    && !(i > 1 && continues_identifier(b[i - 2]));
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' if escapes => i += 2,
                        b'\'' => {
                            i += 1;
                            if b.get(i) == Some(&b'\'') {
                                i += 1;
                            } else {
                                break;
                            }
                        }
                        _ => i += 1,
                    }
                }
            }
            ByteClass::DoubleQuote => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
                i += 1;
            }
            ByteClass::Dollar if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            ByteClass::Dollar => return false,
            // Only one statement: a later one (a SET, a PREPARE) may carry numbers that matter.
            ByteClass::Semicolon => {
                if b[i + 1..].iter().any(|c| !c.is_ascii_whitespace()) {
                    return false;
                }
                i += 1;
            }
            ByteClass::Dash if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            ByteClass::Slash if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            ByteClass::Dash | ByteClass::Slash => i += 1,
            // Words are consumed whole, so a digit here starts a number.
            ByteClass::Digit => {
                while i < b.len() && b[i].is_ascii_digit() {
                    if b[i] != b'0' {
                        if !changed {
                            out.clear();
                            out.extend_from_slice(b);
                            changed = true;
                        }
                        out[i] = b'0';
                    }
                    i += 1;
                }
            }
        }
    }
    changed
}

/// The first word of `sql` after whitespace and comments.
fn first_keyword(b: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i..i + 2) == Some(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b.get(i..i + 2) == Some(b"/*") {
            let end = b.get(i + 2..)?.windows(2).position(|w| w == b"*/")?;
            i += 2 + end + 2;
        } else {
            break;
        }
    }
    let start = i;
    while i < b.len() && b[i].is_ascii_alphabetic() {
        i += 1;
    }
    Some(&b[start..i]).filter(|w| !w.is_empty())
}

impl ClassifyCache {
    /// A cache holding at most about `capacity` classifications (rounded up to a multiple of
    /// the shard count; 0 disables storing).
    pub fn new(capacity: usize) -> Self {
        let shard_count = capacity.clamp(1, CACHE_SHARDS);
        let per_shard = capacity.div_ceil(shard_count);
        let shards = (0..shard_count)
            .map(|_| {
                Mutex::new(Shard {
                    index: HashMap::with_capacity_and_hasher(per_shard, Default::default()),
                    slots: Vec::with_capacity(per_shard),
                    hand: 0,
                    capacity: per_shard,
                })
            })
            .collect();
        ClassifyCache {
            shards,
            seed: std::collections::hash_map::RandomState::new().hash_one(0u64),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The classification of `sql` under `catalog`, from the cache or computed (and stored).
    ///
    /// Queries that differ only in their numbers (`WHERE id = 17` / `WHERE id = 18`) share
    /// one entry: numeric literals never change a classification, and without this every
    /// simple-protocol query with an inline id would be parsed again.
    pub fn classify(&self, sql: &str, catalog: &FunctionCatalog) -> Arc<Classification> {
        thread_local! {
            /// Where a statement's shape is written: no allocation per lookup.
            static SHAPE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        SHAPE.with_borrow_mut(|shape| {
            if shape.capacity() > MAX_CACHED_TEXT_BYTES {
                *shape = Vec::new();
            }
            if blank_numbers(sql.as_bytes(), shape) {
                self.classify_shape(shape, sql, catalog)
            } else {
                self.classify_shape(sql.as_bytes(), sql, catalog)
            }
        })
    }

    /// `shape` is `sql` or `sql` with digits replaced (so valid UTF-8 too): hits compare bytes,
    /// only a miss needs it as text.
    fn classify_shape(
        &self,
        shape: &[u8],
        sql: &str,
        catalog: &FunctionCatalog,
    ) -> Arc<Classification> {
        let generation = catalog.generation();
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(shape, self.seed);
        // High bits pick the shard: the map inside uses the low bits for buckets.
        let shard = &self.shards[((hash >> 40) as usize) % self.shards.len()];
        if let Some(found) = lock(shard).get(hash, shape, generation) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return found;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let sql = std::str::from_utf8(shape).unwrap_or(sql);
        let value = Arc::new(classify(sql, catalog));
        if sql.len() <= MAX_CACHED_TEXT_BYTES {
            lock(shard).put(hash, sql, generation, Arc::clone(&value));
        }
        value
    }

    /// Lookups answered from the cache (for the `pgrelay_classify_cache_hits_total` metric).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Lookups that had to parse (for the `pgrelay_classify_cache_misses_total` metric).
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

/// Nothing panics while a shard is locked, but a poisoned lock must not take routing down.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The catalog every table test uses: two configured write functions (one qualified) and
    /// two user VOLATILE functions from pg_proc (one an extension's harmless uuid generator).
    fn catalog() -> FunctionCatalog {
        FunctionCatalog::new(
            &["audit_log".to_string(), "billing.charge".to_string()],
            vec![
                "app.bump_counter".to_string(),
                "public.uuid_generate_v4".to_string(),
                "app.MixedCase".to_string(),
            ],
        )
    }

    fn wf(name: &str) -> Class {
        Class::LeaderRead(LeaderReason::WriteFunction(name.to_string()))
    }

    const R: Class = Class::Read;
    const W: Class = Class::Write;
    const FOR_UPDATE: Class = Class::LeaderRead(LeaderReason::ForUpdate);
    const RW_TX: Class = Class::LeaderRead(LeaderReason::ReadWriteTransaction);

    /// One expected classification. `flags`: `$` cacheable, `!` writes unknown tables.
    struct Row {
        sql: &'static str,
        class: Class,
        reads: &'static [&'static str],
        writes: &'static [&'static str],
        flags: &'static str,
    }

    fn row(
        sql: &'static str,
        class: Class,
        reads: &'static [&'static str],
        writes: &'static [&'static str],
        flags: &'static str,
    ) -> Row {
        Row {
            sql,
            class,
            reads,
            writes,
            flags,
        }
    }

    fn check_rows(rows: &[Row]) {
        let catalog = catalog();
        let mut failures = Vec::new();
        for r in rows {
            let got = classify(r.sql, &catalog);
            let want_cacheable = r.flags.contains('$');
            let want_unknown = r.flags.contains('!');
            if got.class != r.class
                || got.read_tables != r.reads
                || got.write_tables != r.writes
                || got.cacheable != want_cacheable
                || got.writes_unknown_tables != want_unknown
            {
                failures.push(format!(
                    "{:?}\n   want class={:?} reads={:?} writes={:?} cacheable={} unknown={}\n   \
                     got  class={:?} reads={:?} writes={:?} cacheable={} unknown={}",
                    r.sql,
                    r.class,
                    r.reads,
                    r.writes,
                    want_cacheable,
                    want_unknown,
                    got.class,
                    got.read_tables,
                    got.write_tables,
                    got.cacheable,
                    got.writes_unknown_tables
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn design_routing_table_rows_classify_as_documented() {
        check_rows(&[
            // autocommit read-only SELECT/SHOW/VALUES/TABLE → replica
            row("SELECT id, name FROM users WHERE id = $1", R, &["users"], &[], "$"),
            row("select * from Users where ID = $1", R, &["users"], &[], "$"),
            row("SHOW search_path", R, &[], &[], ""),
            row("SHOW ALL", R, &[], &[], ""),
            row("VALUES (1, 'a'), (2, 'b')", R, &[], &[], ""),
            row("TABLE products", R, &["products"], &[], "$"),
            row("table only App.Products", R, &["app.products"], &[], "$"),
            row("(SELECT a FROM t1) UNION ALL (SELECT a FROM t2)", R, &["t1", "t2"], &[], "$"),
            row("SELECT 1 UNION TABLE t", R, &["t"], &[], "$"),
            // writes, unknown, unparsable → leader
            row("INSERT INTO users (name) VALUES ($1)", W, &[], &["users"], ""),
            row(
                "INSERT INTO t (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v RETURNING id",
                W, &[], &["t"], "",
            ),
            row("UPDATE users SET name = $1, updated_at = now() WHERE id = $2", W, &[], &["users"], ""),
            row("DELETE FROM sessions WHERE expires_at < now()", W, &[], &["sessions"], ""),
            row(
                "MERGE INTO stock s USING deliveries d ON s.item = d.item \
                 WHEN MATCHED THEN UPDATE SET qty = s.qty + d.qty \
                 WHEN NOT MATCHED THEN INSERT VALUES (d.item, d.qty)",
                W, &["deliveries"], &["stock"], "",
            ),
            row("CREATE TABLE t (a int primary key)", W, &[], &["t"], ""),
            row("CREATE TABLE IF NOT EXISTS app.t AS SELECT * FROM s", W, &[], &["app.t"], ""),
            row("ALTER TABLE t ADD COLUMN b int", W, &[], &["t"], "!"),
            row("DROP TABLE IF EXISTS a, b", W, &[], &["a", "b"], "!"),
            row("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", W, &[], &[], "!"),
            row("COPY t FROM STDIN", W, &[], &["t"], ""),
            row("CALL refresh_totals(1)", W, &[], &[], "!"),
            row("DO $$ BEGIN PERFORM 1; END $$", W, &[], &[], "!"),
            row("DO LANGUAGE plpgsql $body$ BEGIN NULL; END $body$", W, &[], &[], "!"),
            row("SELCT * FROM t", W, &[], &[], "!"),
            row("SELECT * FROM t WHERE", W, &[], &[], ""),
            row("SELECT * FROM t WHERE x = audit_log(", W, &[], &[], "!"),
            row("SELECT * INTO x FROM t WHERE", W, &[], &[], "!"),
            row("$1", W, &[], &[], "!"),
            // locking reads, SELECT INTO, side-effecting functions → leader
            row("SELECT * FROM accounts WHERE id = $1 FOR UPDATE", FOR_UPDATE, &["accounts"], &[], ""),
            row("SELECT * FROM a FOR SHARE OF a NOWAIT", FOR_UPDATE, &["a"], &[], ""),
            row(
                "SELECT * FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED",
                FOR_UPDATE, &["jobs"], &[], "",
            ),
            row("SELECT * INTO archive FROM orders", W, &["orders"], &["archive"], ""),
            row("SELECT nextval('orders_id_seq')", wf("nextval"), &[], &[], ""),
            row("SELECT setval('s', 10)", wf("setval"), &[], &[], ""),
            row("SELECT currval('s')", wf("currval"), &[], &[], ""),
            row("SELECT pg_advisory_lock(42)", wf("pg_advisory_lock"), &[], &[], ""),
            row("SELECT pg_try_advisory_xact_lock_shared(1)", wf("pg_try_advisory_xact_lock_shared"), &[], &[], ""),
            row("SELECT pg_advisory_unlock_all()", wf("pg_advisory_unlock_all"), &[], &[], ""),
            row("SELECT set_config('app.user', '1', false)", wf("set_config"), &[], &[], ""),
            row("SELECT pg_catalog.set_config('a.b', 'c', true)", wf("pg_catalog.set_config"), &[], &[], ""),
            row("SELECT txid_current()", wf("txid_current"), &[], &[], ""),
            row("SELECT lo_import('/tmp/x')", wf("lo_import"), &[], &[], ""),
            row("SELECT pg_notify('ch', 'x')", wf("pg_notify"), &[], &[], ""),
            row("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", wf("pg_create_logical_replication_slot"), &[], &[], ""),
            row("SELECT pg_stat_reset()", wf("pg_stat_reset"), &[], &[], ""),
            row("SELECT * FROM dblink_exec('x', 'DELETE FROM t')", wf("dblink_exec"), &[], &[], "!"),
            row("SELECT id, nextval('s') FROM t", wf("nextval"), &["t"], &[], ""),
            // explicit transactions
            row("BEGIN", RW_TX, &[], &[], ""),
            row("START TRANSACTION", RW_TX, &[], &[], ""),
            row("BEGIN READ WRITE", RW_TX, &[], &[], ""),
            row("BEGIN READ ONLY", R, &[], &[], ""),
            row("START TRANSACTION ISOLATION LEVEL READ COMMITTED, READ ONLY, DEFERRABLE", R, &[], &[], ""),
            row("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", R, &[], &[], ""),
            row(
                "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
                Class::LeaderRead(LeaderReason::SerializableTransaction), &[], &[], "",
            ),
            row("SET TRANSACTION READ ONLY", R, &[], &[], ""),
            row("SET TRANSACTION READ WRITE", RW_TX, &[], &[], ""),
            row("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", R, &[], &[], ""),
            row("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", R, &[], &[], ""),
            row("SET default_transaction_read_only = on", R, &[], &[], ""),
            // hints do not change the class (route decides)
            row("/* pgrelay: leader */ SELECT * FROM t", R, &["t"], &[], "$"),
        ]);
    }

    #[test]
    fn peers_bugs_locking_reads_and_writable_ctes_never_reach_a_replica() {
        check_rows(&[
            // pgcat#887: FOR NO KEY UPDATE / FOR KEY SHARE (sqlparser cannot parse them)
            row("SELECT * FROM jobs WHERE id = $1 FOR NO KEY UPDATE", FOR_UPDATE, &["jobs"], &[], ""),
            row("select * from jobs for no key update nowait", FOR_UPDATE, &["jobs"], &[], ""),
            row("SELECT * FROM jobs j FOR KEY SHARE OF j SKIP LOCKED", FOR_UPDATE, &["jobs"], &[], ""),
            row("SELECT * FROM a JOIN b ON a.id = b.id FOR KEY SHARE OF a FOR NO KEY UPDATE OF b", FOR_UPDATE, &["a", "b"], &[], ""),
            row("SELECT * FROM t WHERE id IN (SELECT id FROM u FOR NO KEY UPDATE)", FOR_UPDATE, &["t", "u"], &[], ""),
            row("SELECT * FROM t FOR NO KEY UPDATE OF", W, &[], &[], ""),
            // pgcat#829: data-modifying CTEs
            row("with d as (delete from queue where id = $1 returning *) select * from d", W, &[], &["queue"], ""),
            row(
                "WITH moved AS (DELETE FROM queue WHERE done RETURNING *) INSERT INTO done SELECT * FROM moved",
                W, &[], &["done", "queue"], "",
            ),
            row("WITH a AS (SELECT 1), b AS (UPDATE t SET v = 1 RETURNING *) SELECT * FROM a, b", W, &[], &["t"], ""),
            row(
                "SELECT * FROM (WITH u AS (UPDATE counters SET n = n + 1 RETURNING n) SELECT n FROM u) s",
                W, &[], &["counters"], "",
            ),
            row(
                "WITH a AS (WITH b AS (INSERT INTO log VALUES (1) RETURNING id) SELECT id FROM b) SELECT * FROM a",
                W, &[], &["log"], "",
            ),
            row(
                "WITH m AS (MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING t.id) SELECT * FROM m",
                W, &["s"], &["t"], "",
            ),
            row("WITH d AS (DELETE FROM q RETURNING *) SELECT * FROM d FOR NO KEY UPDATE", W, &[], &["q"], ""),
            // pgcat#884 / #865: parse failures and COPY FROM go to the leader
            row("INSERT INTO t VALUES (1", W, &[], &["t"], ""),
            row("INSERT INTO t OVERRIDING SYSTEM VALUE VALUES (audit_log(1))", W, &[], &["t"], "!"),
            row("DELETE FROM t WHERE CURRENT OF c", W, &[], &["t"], ""),
            row("INSERT INTO", W, &[], &[], "!"),
            row("UPDATE", W, &[], &[], "!"),
            row("MERGE INTO t USING", W, &[], &[], "!"),
            row("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x WHERE", W, &[], &[], "!"),
            row("SELECT * FROM ROWS FROM (generate_series(1, 2)) r", W, &[], &[], ""),
            row("COPY t FROM STDIN WITH (FORMAT csv, HEADER true)", W, &[], &["t"], ""),
            row("COPY app.t (a, b) FROM '/data/x.csv'", W, &[], &["app.t"], ""),
            row("COPY t FROM PROGRAM 'gunzip -c x.gz'", W, &[], &["t"], ""),
            row("COPY BINARY t FROM STDIN", W, &[], &["t"], ""),
            row("COPY (DELETE FROM t RETURNING *) TO STDOUT", W, &[], &["t"], ""),
            row("COPY (", W, &[], &[], "!"),
            row("COPY t", W, &[], &[], "!"),
            row("COPY t TO STDOUT", R, &["t"], &[], ""),
            row("COPY (SELECT * FROM t WHERE a > 1) TO STDOUT WITH CSV", R, &["t"], &[], ""),
            row("COPY t TO '/tmp/t.csv'", Class::LeaderRead(LeaderReason::ServerSideCopy), &["t"], &[], ""),
        ]);
    }

    #[test]
    fn function_catalog_drives_leader_routing() {
        check_rows(&[
            // user VOLATILE functions from pg_proc (qualified there)
            row(
                "SELECT app.bump_counter()",
                wf("app.bump_counter"),
                &[],
                &[],
                "!",
            ),
            row("SELECT bump_counter()", wf("bump_counter"), &[], &[], "!"),
            row("SELECT other.bump_counter()", R, &[], &[], ""),
            row(
                "SELECT * FROM t WHERE x = app.bump_counter()",
                wf("app.bump_counter"),
                &["t"],
                &[],
                "!",
            ),
            row(
                "SELECT * FROM app.bump_counter()",
                wf("app.bump_counter"),
                &[],
                &[],
                "!",
            ),
            row(
                "SELECT app.\"MixedCase\"()",
                wf("app.MixedCase"),
                &[],
                &[],
                "!",
            ),
            row("SELECT app.mixedcase()", R, &[], &[], ""),
            // configured write_functions
            row("SELECT audit_log($1)", wf("audit_log"), &[], &[], "!"),
            row("SELECT x.audit_log($1)", wf("x.audit_log"), &[], &[], "!"),
            row(
                "SELECT billing.charge(1)",
                wf("billing.charge"),
                &[],
                &[],
                "!",
            ),
            row("SELECT charge(1)", wf("charge"), &[], &[], "!"),
            // not in the catalog: a read (but not cacheable: unknown functions may read anything)
            row("SELECT my_report(1)", R, &[], &[], ""),
            row(
                "SELECT app.format_price(p) FROM products",
                R,
                &["products"],
                &[],
                "",
            ),
            // extension functions installed VOLATILE but harmless stay reads
            row("SELECT uuid_generate_v4(), * FROM t", R, &["t"], &[], ""),
            row("SELECT gen_random_uuid()", R, &[], &[], ""),
        ]);
        let plain = FunctionCatalog::default();
        assert_eq!(classify("SELECT bump_counter()", &plain).class, R);
        assert_eq!(classify("SELECT audit_log(1)", &plain).class, R);
        assert_eq!(classify("SELECT nextval('s')", &plain).class, wf("nextval"));
    }

    #[test]
    fn explain_runs_on_a_replica_unless_analyze_executes_a_write() {
        check_rows(&[
            row("EXPLAIN SELECT * FROM t", R, &["t"], &[], ""),
            row("EXPLAIN UPDATE t SET a = 1", R, &["t"], &[], ""),
            row("EXPLAIN VERBOSE DELETE FROM t", R, &["t"], &[], ""),
            row("EXPLAIN (ANALYZE off) DELETE FROM t", R, &["t"], &[], ""),
            row(
                "EXPLAIN (FORMAT JSON) INSERT INTO t VALUES (1)",
                R,
                &["t"],
                &[],
                "",
            ),
            row("EXPLAIN ANALYZE SELECT * FROM t", R, &["t"], &[], ""),
            row("EXPLAIN ANALYZE UPDATE t SET a = 1", W, &[], &["t"], ""),
            row("EXPLAIN ANALYZE VERBOSE DELETE FROM t", W, &[], &["t"], ""),
            row(
                "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t",
                W,
                &[],
                &["t"],
                "",
            ),
            row(
                "EXPLAIN (FORMAT JSON, ANALYZE true) INSERT INTO t VALUES (1)",
                W,
                &[],
                &["t"],
                "",
            ),
            row(
                "EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE",
                FOR_UPDATE,
                &["t"],
                &[],
                "",
            ),
            row(
                "EXPLAIN ANALYZE SELECT nextval('s')",
                wf("nextval"),
                &[],
                &[],
                "",
            ),
            row("EXPLAIN ANALYZE EXECUTE q(1)", W, &[], &[], "!"),
            row("EXPLAIN", W, &[], &[], "!"),
        ]);
    }

    #[test]
    fn multi_statement_strings_take_the_strongest_class() {
        check_rows(&[
            row("BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = 1; COMMIT", W, &[], &["accounts"], ""),
            row("BEGIN; SELECT * FROM t; COMMIT", RW_TX, &["t"], &[], ""),
            row("BEGIN READ ONLY; SELECT * FROM t; COMMIT", R, &["t"], &[], ""),
            row("SELECT 1; SELECT * FROM t", R, &["t"], &[], ""),
            row("SELECT * FROM t; DELETE FROM t", W, &[], &["t"], ""),
            row("SELECT * FROM t FOR UPDATE; SELECT 1", FOR_UPDATE, &["t"], &[], ""),
            row("SELECT ';'; DELETE FROM t", W, &[], &["t"], ""),
            row("SELECT 'it''s'; DELETE FROM t", W, &[], &["t"], ""),
            row("SELECT \"a;b\" FROM t; SELECT 2", R, &["t"], &[], ""),
            row("SELECT 1 -- ; DELETE FROM t", R, &[], &[], ""),
            row("SELECT 1 /* ; DELETE FROM t */", R, &[], &[], ""),
            row("SELECT 1 /* nested /* ; */ DELETE FROM t; */", R, &[], &[], ""),
            row("SELECT $tag$ ; DELETE FROM t $tag$", R, &[], &[], ""),
            row("SELECT $$ ; $$; SELECT 2", R, &[], &[], ""),
            row("SELECT E'\\' ; DELETE FROM t'", R, &[], &[], ""),
            row("SELECT E'\\\\'; DELETE FROM t", W, &[], &["t"], ""),
            row(
                "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))",
                W, &[], &[], "!",
            ),
            row(
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; SELECT 3",
                W, &[], &[], "!",
            ),
            row(";;; ;", R, &[], &[], ""),
            row("", R, &[], &[], ""),
            row("  -- only a comment", R, &[], &[], ""),
            row("SELECT * FROM t;", R, &["t"], &[], "$"),
        ]);
    }

    #[test]
    fn table_names_are_normalised_deduplicated_and_ctes_removed() {
        check_rows(&[
            row(
                "SELECT * FROM \"Users\" JOIN Public.Orders ON true JOIN \"Sales\".\"Q1\" ON true",
                R, &["Sales.Q1", "Users", "public.orders"], &[], "$",
            ),
            row("SELECT * FROM orders o JOIN ORDERS p ON o.id = p.parent_id", R, &["orders"], &[], "$"),
            row(
                "WITH recent AS (SELECT * FROM orders) SELECT * FROM recent JOIN customers c ON true",
                R, &["customers", "orders"], &[], "$",
            ),
            row("WITH orders AS (SELECT * FROM orders) SELECT * FROM orders", R, &["orders"], &[], "$"),
            row(
                "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
                R, &[], &[], "",
            ),
            row(
                "SELECT * FROM (WITH o AS (SELECT * FROM items) SELECT * FROM o) a, o",
                R, &["items", "o"], &[], "$",
            ),
            row("WITH x AS (SELECT * FROM t) TABLE x", R, &["t"], &[], "$"),
            row("SELECT * FROM db.app.t", R, &["db.app.t"], &[], "$"),
            row("UPDATE t SET a = s.a FROM s WHERE t.id = s.id RETURNING t.*", W, &["s"], &["t"], ""),
            row("INSERT INTO archive SELECT * FROM orders WHERE done", W, &["orders"], &["archive"], ""),
            row("DELETE FROM app.\"Logs\" USING users u WHERE true", W, &["users"], &["app.Logs"], ""),
            row("SELECT * FROM ONLY parent p WHERE p.id = 1", R, &["parent"], &[], "$"),
            row("SELECT * FROM a JOIN ONLY b ON true, ONLY c", R, &["a", "b", "c"], &[], "$"),
            row("SELECT * FROM t FETCH FIRST 1 ROWS ONLY", R, &["t"], &[], "$"),
            row("UPDATE ONLY t SET a = 1", W, &[], &["t"], ""),
            row("DELETE FROM ONLY t WHERE a = 1", W, &[], &["t"], ""),
            row("SELECT 1 AS table", R, &[], &[], ""),
            row("SELECT x.table FROM x", R, &["x"], &[], "$"),
        ]);
    }

    #[test]
    fn only_single_deterministic_reads_of_known_tables_are_cacheable() {
        check_rows(&[
            row(
                "SELECT count(*) FROM orders WHERE status = $1",
                R,
                &["orders"],
                &[],
                "$",
            ),
            row(
                "SELECT jsonb_build_object('a', a), lower(b), coalesce(c, 0) FROM t",
                R,
                &["t"],
                &[],
                "$",
            ),
            row("SELECT pg_catalog.lower(a) FROM t", R, &["t"], &[], "$"),
            row(
                "SELECT a, sum(b) OVER w FROM t WINDOW w AS (PARTITION BY c)",
                R,
                &["t"],
                &[],
                "$",
            ),
            row(
                "SELECT * FROM t WHERE id = ANY($1::int[])",
                R,
                &["t"],
                &[],
                "$",
            ),
            row(
                "SELECT data->>'name' FROM docs WHERE data @> '{\"x\":1}'",
                R,
                &["docs"],
                &[],
                "$",
            ),
            row(
                "SELECT * FROM t WHERE ts > '2024-01-01'::timestamptz",
                R,
                &["t"],
                &[],
                "$",
            ),
            row(
                "SELECT * FROM orders WHERE created_at > now() - interval '1 hour'",
                R,
                &["orders"],
                &[],
                "",
            ),
            row("SELECT * FROM t WHERE d = CURRENT_DATE", R, &["t"], &[], ""),
            row("SELECT CURRENT_TIMESTAMP, a FROM t", R, &["t"], &[], ""),
            row("SELECT current_user, a FROM t", R, &["t"], &[], ""),
            row("SELECT current_schema, a FROM t", R, &["t"], &[], ""),
            row(
                "SELECT current_setting('app.tenant'), a FROM t",
                R,
                &["t"],
                &[],
                "",
            ),
            row(
                "SELECT * FROM t ORDER BY random() LIMIT 1",
                R,
                &["t"],
                &[],
                "",
            ),
            row(
                "SELECT * FROM events WHERE at > 'now'::timestamptz",
                R,
                &["events"],
                &[],
                "",
            ),
            row(
                "SELECT * FROM events WHERE day = date 'today'",
                R,
                &["events"],
                &[],
                "",
            ),
            row("SELECT clock_timestamp(), * FROM t", R, &["t"], &[], ""),
            row("SELECT inet_server_port() FROM t", R, &["t"], &[], ""),
            row("SELECT version()", R, &[], &[], ""),
            row(
                "SELECT * FROM pg_stat_activity",
                R,
                &["pg_stat_activity"],
                &[],
                "",
            ),
            row(
                "SELECT * FROM information_schema.tables",
                R,
                &["information_schema.tables"],
                &[],
                "",
            ),
            row(
                "SELECT * FROM pg_temp.scratch",
                R,
                &["pg_temp.scratch"],
                &[],
                "",
            ),
            row(
                "SELECT * FROM t TABLESAMPLE BERNOULLI (5)",
                R,
                &["t"],
                &[],
                "",
            ),
            row("SELECT * FROM generate_series(1, 10) g", R, &[], &[], ""),
            row("SELECT 1", R, &[], &[], ""),
            row("SELECT * FROM t FOR UPDATE", FOR_UPDATE, &["t"], &[], ""),
            row(
                "SELECT * FROM t WHERE id = $1 /* pgrelay: cache ttl=30s */",
                R,
                &["t"],
                &[],
                "$",
            ),
        ]);
    }

    #[test]
    fn utility_statements_classify_without_a_full_parse() {
        let listen = Class::LeaderRead(LeaderReason::Listen);
        check_rows(&[
            row("VACUUM ANALYZE t", W, &[], &[], ""),
            row("VACUUM (VERBOSE, ANALYZE) t", W, &[], &[], ""),
            row("ANALYZE t", W, &[], &[], ""),
            row("CLUSTER t USING t_pkey", W, &[], &[], ""),
            row("REINDEX TABLE t", W, &[], &[], ""),
            row("CHECKPOINT", W, &[], &[], ""),
            row(
                "REFRESH MATERIALIZED VIEW CONCURRENTLY stats.daily",
                W,
                &[],
                &["stats.daily"],
                "",
            ),
            row(
                "TRUNCATE TABLE ONLY a, b RESTART IDENTITY",
                W,
                &[],
                &["a", "b"],
                "",
            ),
            row("TRUNCATE a CASCADE", W, &[], &["a"], "!"),
            row("GRANT SELECT ON t TO app", W, &[], &[], "!"),
            row("REVOKE ALL ON t FROM app", W, &[], &[], "!"),
            row("COMMENT ON TABLE t IS 'orders'", W, &[], &[], ""),
            row("SECURITY LABEL ON TABLE t IS 'x'", W, &[], &[], ""),
            row("CREATE INDEX CONCURRENTLY i ON t (a)", W, &[], &[], ""),
            row("CREATE UNIQUE INDEX i ON t (a)", W, &[], &[], ""),
            row("CREATE OR REPLACE VIEW v AS SELECT 1", W, &[], &["v"], "!"),
            row(
                "CREATE MATERIALIZED VIEW mv AS SELECT * FROM t",
                W,
                &[],
                &["mv"],
                "",
            ),
            row("CREATE SEQUENCE s", W, &[], &["s"], ""),
            row("CREATE EXTENSION pg_trgm", W, &[], &[], "!"),
            row("CREATE TEMP TABLE scratch (a int)", W, &[], &[], ""),
            row(
                "CREATE GLOBAL TEMPORARY TABLE scratch (a int)",
                W,
                &[],
                &[],
                "",
            ),
            row("CREATE TEMPORARY VIEW tv AS SELECT 1", W, &[], &[], ""),
            row("SELECT * INTO TEMP scratch FROM t", W, &["t"], &[], ""),
            row("ALTER SYSTEM SET work_mem = '64MB'", W, &[], &[], "!"),
            row(
                "DROP MATERIALIZED VIEW IF EXISTS mv CASCADE",
                W,
                &[],
                &["mv"],
                "!",
            ),
            row(
                "IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y",
                W,
                &[],
                &[],
                "!",
            ),
            row("LOAD 'auto_explain'", W, &[], &[], "!"),
            row(
                "LOCK TABLE t IN SHARE MODE",
                Class::LeaderRead(LeaderReason::ExplicitLock),
                &[],
                &[],
                "",
            ),
            row("LISTEN jobs", listen.clone(), &[], &[], ""),
            row("UNLISTEN *", listen, &[], &[], ""),
            row("NOTIFY jobs, 'payload'", W, &[], &[], ""),
            row("PREPARE TRANSACTION 'gid-1'", W, &[], &[], ""),
            row("COMMIT PREPARED 'gid-1'", W, &[], &[], ""),
            row("ROLLBACK PREPARED 'gid-1'", W, &[], &[], ""),
            row(
                "PREPARE q (int) AS SELECT * FROM t WHERE id = $1",
                R,
                &["t"],
                &[],
                "",
            ),
            row("PREPARE u AS UPDATE t SET a = 1", W, &[], &["t"], ""),
            row(
                "PREPARE l AS SELECT * FROM t FOR NO KEY UPDATE",
                FOR_UPDATE,
                &["t"],
                &[],
                "",
            ),
            row("PREPARE", W, &[], &[], "!"),
            row("EXECUTE q(1)", W, &[], &[], "!"),
            row("DEALLOCATE q", R, &[], &[], ""),
            row("DECLARE c CURSOR FOR SELECT * FROM t", R, &["t"], &[], ""),
            row(
                "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM t FOR UPDATE",
                FOR_UPDATE,
                &["t"],
                &[],
                "",
            ),
            row("FETCH 10 FROM c", R, &[], &[], ""),
            row("MOVE NEXT IN c", R, &[], &[], ""),
            row("CLOSE c", R, &[], &[], ""),
            row("SAVEPOINT a", R, &[], &[], ""),
            row("RELEASE SAVEPOINT a", R, &[], &[], ""),
            row("ROLLBACK TO a", R, &[], &[], ""),
            row("COMMIT", R, &[], &[], ""),
            row("END", R, &[], &[], ""),
            row("ABORT", R, &[], &[], ""),
            row("DISCARD ALL", R, &[], &[], ""),
            row("RESET ALL", R, &[], &[], ""),
            row("SET search_path TO app", R, &[], &[], ""),
            row(
                "SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE",
                W,
                &[],
                &[],
                "!",
            ),
            row("SET CONSTRAINTS ALL DEFERRED", W, &[], &[], "!"),
        ]);
    }

    fn kinds(sql: &str) -> Vec<StatementKind> {
        classify(sql, &catalog())
            .statements
            .into_iter()
            .map(|s| s.kind)
            .collect()
    }

    fn set(name: &str, value: &str, local: bool) -> StatementKind {
        StatementKind::Set {
            name: name.to_string(),
            value: value.to_string(),
            local,
        }
    }

    #[test]
    fn set_and_reset_report_replayable_name_and_value() {
        let cases: Vec<(&str, StatementKind)> = vec![
            (
                "SET search_path TO public, app",
                set("search_path", "public, app", false),
            ),
            (
                "set Search_Path to app,/* c */public",
                set("search_path", "app, public", false),
            ),
            (
                "SET search_path = \"$user\", public",
                set("search_path", "\"$user\", public", false),
            ),
            (
                "SET search_path TO DEFAULT",
                set("search_path", "DEFAULT", false),
            ),
            ("SET SCHEMA 'app'", set("search_path", "'app'", false)),
            ("SET TIME ZONE 'UTC'", set("timezone", "'UTC'", false)),
            (
                "SET timezone = 'Europe/Paris'",
                set("timezone", "'Europe/Paris'", false),
            ),
            ("SET TIME ZONE LOCAL", set("timezone", "DEFAULT", false)),
            ("SET TIME ZONE -7", set("timezone", "-7", false)),
            (
                "SET application_name TO 'billing worker'",
                set("application_name", "'billing worker'", false),
            ),
            (
                "SET statement_timeout = 5000",
                set("statement_timeout", "5000", false),
            ),
            (
                "SET statement_timeout TO '5s'",
                set("statement_timeout", "'5s'", false),
            ),
            (
                "SET DateStyle TO ISO, DMY",
                set("datestyle", "ISO, DMY", false),
            ),
            (
                "SET datestyle = 'ISO, MDY'",
                set("datestyle", "'ISO, MDY'", false),
            ),
            (
                "SET LOCAL lock_timeout = '1s'",
                set("lock_timeout", "'1s'", true),
            ),
            (
                "SET SESSION work_mem TO '64MB'",
                set("work_mem", "'64MB'", false),
            ),
            ("SET app.user_id = '42'", set("app.user_id", "'42'", false)),
            ("SET NAMES 'UTF8'", set("client_encoding", "'UTF8'", false)),
            ("SET ROLE admin", set("role", "admin", false)),
            ("SET role = 'admin'", set("role", "'admin'", false)),
            (
                "SET SESSION AUTHORIZATION DEFAULT",
                set("session_authorization", "DEFAULT", false),
            ),
            (
                "SET default_transaction_read_only = on",
                set("default_transaction_read_only", "on", false),
            ),
            (
                "RESET search_path",
                StatementKind::Reset {
                    name: Some("search_path".into()),
                },
            ),
            (
                "RESET DateStyle",
                StatementKind::Reset {
                    name: Some("datestyle".into()),
                },
            ),
            ("RESET ALL", StatementKind::Reset { name: None }),
            (
                "RESET TIME ZONE",
                StatementKind::Reset {
                    name: Some("timezone".into()),
                },
            ),
            (
                "RESET ROLE",
                StatementKind::Reset {
                    name: Some("role".into()),
                },
            ),
            (
                "RESET SESSION AUTHORIZATION",
                StatementKind::Reset {
                    name: Some("session_authorization".into()),
                },
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(kinds(sql), vec![want], "{sql}");
        }
    }

    #[test]
    fn transaction_and_session_commands_report_their_kind() {
        use StatementKind as K;
        let cases: Vec<(&str, Vec<StatementKind>)> = vec![
            ("BEGIN", vec![K::Begin { read_only: None }]),
            ("begin work", vec![K::Begin { read_only: None }]),
            (
                "BEGIN TRANSACTION READ ONLY",
                vec![K::Begin {
                    read_only: Some(true),
                }],
            ),
            (
                "START TRANSACTION READ WRITE",
                vec![K::Begin {
                    read_only: Some(false),
                }],
            ),
            (
                "START TRANSACTION ISOLATION LEVEL READ COMMITTED, READ ONLY, DEFERRABLE",
                vec![K::Begin {
                    read_only: Some(true),
                }],
            ),
            ("START", vec![K::Other]),
            ("COMMIT", vec![K::Commit { chain: false }]),
            ("COMMIT AND CHAIN", vec![K::Commit { chain: true }]),
            ("COMMIT WORK AND NO CHAIN", vec![K::Commit { chain: false }]),
            ("END TRANSACTION", vec![K::Commit { chain: false }]),
            ("ROLLBACK", vec![K::Rollback { chain: false }]),
            ("ROLLBACK AND CHAIN", vec![K::Rollback { chain: true }]),
            ("ABORT", vec![K::Rollback { chain: false }]),
            ("SAVEPOINT sp1", vec![K::Savepoint]),
            ("RELEASE sp1", vec![K::ReleaseSavepoint]),
            (
                "ROLLBACK TRANSACTION TO SAVEPOINT sp1",
                vec![K::RollbackToSavepoint],
            ),
            (
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                vec![K::SetTransaction {
                    read_only: None,
                    session_characteristics: false,
                }],
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                vec![K::SetTransaction {
                    read_only: Some(true),
                    session_characteristics: true,
                }],
            ),
            ("DISCARD ALL", vec![K::Discard { all: true }]),
            ("DISCARD PLANS", vec![K::Discard { all: false }]),
            ("DISCARD TEMP", vec![K::Discard { all: false }]),
            ("LISTEN jobs", vec![K::Listen]),
            ("UNLISTEN *", vec![K::Unlisten]),
            ("NOTIFY jobs", vec![K::Notify]),
            (
                "PREPARE q (int, text) AS SELECT * FROM t WHERE id = $1",
                vec![K::Prepare {
                    name: "q".into(),
                    body: "SELECT * FROM t WHERE id = $1".into(),
                }],
            ),
            (
                "PREPARE \"Q1\" AS\n  UPDATE t SET a = 1",
                vec![K::Prepare {
                    name: "Q1".into(),
                    body: "UPDATE t SET a = 1".into(),
                }],
            ),
            ("EXECUTE Q(1, 'a')", vec![K::Execute { name: "q".into() }]),
            (
                "DEALLOCATE PREPARE q",
                vec![K::Deallocate {
                    name: Some("q".into()),
                }],
            ),
            ("DEALLOCATE ALL", vec![K::Deallocate { name: None }]),
            (
                "DECLARE c CURSOR FOR SELECT 1",
                vec![K::DeclareCursor { with_hold: false }],
            ),
            (
                "DECLARE c BINARY INSENSITIVE SCROLL CURSOR WITH HOLD FOR SELECT 1",
                vec![K::DeclareCursor { with_hold: true }],
            ),
            (
                "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
                vec![K::DeclareCursor { with_hold: false }],
            ),
            ("FETCH ALL FROM c", vec![K::Fetch]),
            ("CLOSE ALL", vec![K::ClosePortal]),
            (
                "COPY t FROM STDIN",
                vec![K::Copy {
                    from_client: true,
                    to_client: false,
                }],
            ),
            (
                "COPY t TO STDOUT",
                vec![K::Copy {
                    from_client: false,
                    to_client: true,
                }],
            ),
            (
                "COPY (SELECT 1) TO STDOUT",
                vec![K::Copy {
                    from_client: false,
                    to_client: true,
                }],
            ),
            (
                "COPY t FROM '/x'",
                vec![K::Copy {
                    from_client: false,
                    to_client: false,
                }],
            ),
            ("CREATE TEMP TABLE x (a int)", vec![K::CreateTemp]),
            ("CREATE LOCAL TEMPORARY SEQUENCE s", vec![K::CreateTemp]),
            ("SELECT * INTO TEMPORARY x FROM t", vec![K::CreateTemp]),
            ("CREATE TABLE x (a int)", vec![K::Ddl]),
            ("LOCK t", vec![K::Lock]),
            ("CALL p()", vec![K::Call]),
            ("DO $$ $$", vec![K::Do]),
            ("VACUUM", vec![K::Maintenance]),
            ("PREPARE TRANSACTION 'x'", vec![K::TwoPhase]),
            ("SHOW work_mem", vec![K::Query]),
            ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", vec![K::Dml]),
            ("EXPLAIN INSERT INTO t VALUES (1)", vec![K::Query]),
            ("TRUNCATE t", vec![K::Dml]),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                vec![K::Dml],
            ),
            ("FROBNICATE", vec![K::Other]),
            (
                "BEGIN; UPDATE t SET a = 1; COMMIT",
                vec![
                    K::Begin { read_only: None },
                    K::Dml,
                    K::Commit { chain: false },
                ],
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(kinds(sql), want, "{sql}");
        }
    }

    #[test]
    fn statement_ranges_point_at_each_statement_text() {
        let sql = "/* pgrelay: leader */ BEGIN;\n  UPDATE t SET a = ';' -- x\n; COMMIT ;";
        let got = classify(sql, &catalog());
        let texts: Vec<&str> = got
            .statements
            .iter()
            .map(|s| &sql[s.range.clone()])
            .collect();
        assert_eq!(texts, vec!["BEGIN", "UPDATE t SET a = ';'", "COMMIT"]);
        let classes: Vec<Class> = got.statements.iter().map(|s| s.class.clone()).collect();
        assert_eq!(classes, vec![RW_TX, W, R]);
    }

    fn hint_of(sql: &str) -> Option<Hint> {
        classify(sql, &catalog()).hint
    }

    fn route(route: RouteHint) -> Option<Hint> {
        Some(Hint {
            route: Some(route),
            cache: None,
        })
    }

    fn cache(ttl: Option<Duration>) -> Option<Hint> {
        Some(Hint {
            route: None,
            cache: Some(CacheHint { ttl }),
        })
    }

    #[test]
    fn hint_comments_are_found_in_any_comment_form_case_and_spacing() {
        use RouteHint::{Leader, Replica};
        let secs = Duration::from_secs;
        let cases: Vec<(&str, Option<Hint>)> = vec![
            ("/* pgrelay: leader */ SELECT 1", route(Leader)),
            ("SELECT 1 -- pgrelay: replica", route(Replica)),
            ("-- pgrelay: leader\nSELECT 1", route(Leader)),
            ("/*PGRELAY:REPLICA*/SELECT 1", route(Replica)),
            ("/*   PgRelay   :   Leader   */ SELECT 1", route(Leader)),
            ("SELECT /* pgrelay:\tprimary */ 1", route(Leader)),
            ("/* pgrelay: standby */ SELECT 1", route(Replica)),
            (
                "/* pgrelay: replica */ SELECT 1 /* pgrelay: leader */",
                route(Leader),
            ),
            (
                "/* pgrelay: leader */ SELECT 1 /* pgrelay: replica */",
                route(Leader),
            ),
            ("/* a /* pgrelay: leader */ b */ SELECT 1", route(Leader)),
            ("/* pgrelay: cache */ SELECT * FROM t", cache(None)),
            (
                "/* pgrelay: cache ttl=30s */ SELECT * FROM t",
                cache(Some(secs(30))),
            ),
            (
                "/* pgrelay: cache ttl = 500ms */ SELECT * FROM t",
                cache(Some(Duration::from_millis(500))),
            ),
            (
                "/* pgrelay: cache TTL=2m */ SELECT * FROM t",
                cache(Some(secs(120))),
            ),
            (
                "/* pgrelay: cache ttl=45 */ SELECT * FROM t",
                cache(Some(secs(45))),
            ),
            (
                "/* pgrelay: cache ttl = 1 h */ SELECT * FROM t",
                cache(Some(secs(3600))),
            ),
            (
                "-- pgrelay: cache ttl=1.5s\nSELECT * FROM t",
                cache(Some(Duration::from_millis(1500))),
            ),
            ("/* pgrelay: cache ttl=abc */ SELECT * FROM t", cache(None)),
            (
                "/* pgrelay: replica, cache ttl=1h */ SELECT * FROM t",
                Some(Hint {
                    route: Some(Replica),
                    cache: Some(CacheHint {
                        ttl: Some(secs(3600)),
                    }),
                }),
            ),
            (
                "/* pgrelay: leader */ /* pgrelay: cache ttl=5s */ SELECT 1",
                Some(Hint {
                    route: Some(Leader),
                    cache: Some(CacheHint { ttl: Some(secs(5)) }),
                }),
            ),
            ("SELECT '/* pgrelay: leader */'", None),
            ("SELECT $$ -- pgrelay: leader $$", None),
            ("SELECT 1 /* pgrelay leader */", None),
            ("SELECT 1 /* pgrelay: */", None),
            ("SELECT 1 /* pgrelay: sideways */", None),
            ("SELECT 1", None),
        ];
        for (sql, want) in cases {
            assert_eq!(hint_of(sql), want, "{sql}");
        }
    }

    #[test]
    fn classifications_and_caches_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Classification>();
        shareable::<FunctionCatalog>();
        shareable::<ClassifyCache>();
    }

    #[test]
    fn function_catalog_generation_tracks_its_contents() {
        let a = FunctionCatalog::new(&["f".to_string()], vec!["app.g".to_string()]);
        let same = FunctionCatalog::new(&["F".to_string()], vec!["app.g".to_string()]);
        let more = FunctionCatalog::new(
            &["f".to_string()],
            vec!["app.g".to_string(), "app.h".to_string()],
        );
        let fewer = FunctionCatalog::new(&[], vec!["app.g".to_string()]);
        assert_eq!(a.generation(), same.generation());
        assert_ne!(a.generation(), more.generation());
        assert_ne!(a.generation(), fewer.generation());
        assert_ne!(FunctionCatalog::default().generation(), a.generation());
    }

    #[test]
    fn configured_write_function_names_follow_sql_identifier_rules() {
        let catalog = FunctionCatalog::new(
            &["\"Audit\"".to_string(), "not a name(".to_string()],
            vec![],
        );
        assert_eq!(classify("SELECT \"Audit\"(1)", &catalog).class, wf("Audit"));
        assert_eq!(classify("SELECT audit(1)", &catalog).class, R);
    }

    fn blanked(sql: &str) -> Option<String> {
        let mut out = Vec::new();
        blank_numbers(sql.as_bytes(), &mut out).then(|| String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn numbers_are_blanked_only_where_they_cannot_matter() {
        assert_eq!(
            blanked("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = 00000;")
        );
        assert_eq!(
            blanked("select * from t1 where a = $1 and b = 'x9' and \"c2\" = 3").as_deref(),
            Some("select * from t1 where a = $1 and b = 'x9' and \"c2\" = 0")
        );
        assert_eq!(
            blanked("/* pgrelay: cache ttl=30s */ SELECT 7").as_deref(),
            Some("/* pgrelay: cache ttl=30s */ SELECT 0")
        );
        assert_eq!(
            blanked("SET statement_timeout = 5000"),
            None,
            "values of SET matter"
        );
        assert_eq!(blanked("SELECT $$5$$"), None);
        assert_eq!(
            blanked("SELECT 1; SET statement_timeout = 5000"),
            None,
            "a later statement keeps its numbers"
        );
        assert_eq!(blanked("SELECT 1;  ").as_deref(), Some("SELECT 0;  "));
        assert_eq!(
            blanked("SELECT E'\\'' || 5"),
            Some("SELECT E'\\'' || 0".into())
        );
        assert_eq!(blanked("SELECT a FROM t"), None, "nothing to change");
        assert_eq!(
            blanked("SELECT t1.c2, a$1, 1.5e10, x.1, é9 FROM t3 WHERE id=7").as_deref(),
            Some("SELECT t1.c2, a$1, 0.0e10, x.0, é9 FROM t3 WHERE id=0"),
            "digits in names stay; numbers after punctuation go"
        );
        assert_eq!(
            blanked("SELECT 'it''s 5' || 6 -- 7\n, /* 8 /* 9 */ */ 10").as_deref(),
            Some("SELECT 'it''s 5' || 0 -- 7\n, /* 8 /* 9 */ */ 00")
        );
        assert_eq!(
            blanked("SELECT a$$b FROM t WHERE x = 1").as_deref(),
            Some("SELECT a$$b FROM t WHERE x = 0")
        );
        assert_eq!(blanked("SELECT 1 - 2 / 3"), Some("SELECT 0 - 0 / 0".into()));
        let cache = ClassifyCache::new(16);
        let catalog = FunctionCatalog::default();
        cache.classify("SELECT v FROM t WHERE id = 1", &catalog);
        cache.classify("SELECT v FROM t WHERE id = 2", &catalog);
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
    }

    #[test]
    fn cache_hit_on_repeat_and_miss_after_catalog_change() {
        let cache = ClassifyCache::new(128);
        let catalog = catalog();
        let sql = "SELECT * FROM t WHERE id = $1";
        let first = cache.classify(sql, &catalog);
        let second = cache.classify(sql, &catalog);
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
        assert_eq!(*first, classify(sql, &catalog));

        let changed = FunctionCatalog::new(&["lower".to_string()], std::iter::empty());
        let lowered = "SELECT lower(a) FROM t";
        assert_eq!(cache.classify(lowered, &catalog).class, R);
        assert_eq!(cache.classify(lowered, &changed).class, wf("lower"));
        assert_eq!((cache.hits(), cache.misses()), (1, 3));
        assert_eq!(cache.classify(lowered, &changed).class, wf("lower"));
        assert_eq!(cache.hits(), 2);
    }

    #[test]
    fn cache_stays_bounded_and_correct_under_churn() {
        let cache = ClassifyCache::new(32);
        let catalog = catalog();
        for i in 0..2_000 {
            let sql = format!("SELECT * FROM t{} WHERE id = {}", i % 300, i % 7);
            let got = cache.classify(&sql, &catalog);
            assert_eq!(got.read_tables, vec![format!("t{}", i % 300)]);
        }
        let stored: usize = cache.shards.iter().map(|s| lock(s).slots.len()).sum();
        assert!(stored <= 32, "{stored} entries stored");
        assert_eq!(cache.hits() + cache.misses(), 2_000);
        // A hot statement survives the churn thanks to its reference bit.
        let hot = "SELECT * FROM hot";
        cache.classify(hot, &catalog);
        let before = cache.hits();
        for i in 0..200 {
            cache.classify(hot, &catalog);
            cache.classify(&format!("SELECT {i} FROM cold"), &catalog);
        }
        assert!(cache.hits() - before >= 190, "hot entry evicted too often");
    }

    #[test]
    fn cache_with_zero_capacity_still_classifies() {
        let cache = ClassifyCache::new(0);
        let catalog = catalog();
        assert_eq!(cache.classify("DELETE FROM t", &catalog).class, W);
        assert_eq!(cache.classify("DELETE FROM t", &catalog).class, W);
        assert_eq!((cache.hits(), cache.misses()), (0, 2));
    }

    #[test]
    fn cache_is_shared_safely_between_threads() {
        let cache = Arc::new(ClassifyCache::new(1024));
        let catalog = Arc::new(catalog());
        let handles: Vec<_> = (0..4)
            .map(|n| {
                let cache = Arc::clone(&cache);
                let catalog = Arc::clone(&catalog);
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let sql = format!("UPDATE t{} SET a = {}", (i + n) % 20, i % 3);
                        assert_eq!(cache.classify(&sql, &catalog).class, Class::Write);
                    }
                })
            })
            .collect();
        for handle in handles {
            assert!(handle.join().is_ok());
        }
        assert_eq!(cache.hits() + cache.misses(), 2_000);
        assert!(cache.hits() > 1_000);
    }

    /// Debug builds use about four times the stack of release builds per sqlparser recursion
    /// (3 MiB for what takes 0.7 MiB in release, see PARSER_RECURSION_LIMIT), so the hostile
    /// inputs run on a thread with a release-like margin.
    #[test]
    fn pathological_nesting_and_size_are_refused_not_crashed() {
        let worker = std::thread::Builder::new()
            .stack_size(16 << 20)
            .spawn(pathological_inputs);
        assert!(worker.is_ok_and(|w| w.join().is_ok()));
    }

    fn pathological_inputs() {
        let catalog = catalog();
        let deep_parens = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        let near_cap = format!("SELECT {}1{}", "(".repeat(190), ")".repeat(190));
        let unbalanced = format!("SELECT {}", "(".repeat(100_000));
        let brackets = format!("SELECT ARRAY{}1{}", "[".repeat(5_000), "]".repeat(5_000));
        let nots = format!("SELECT {} true", "NOT ".repeat(20_000));
        let minus = format!("SELECT {}1", "- ".repeat(20_000));
        let cases = format!(
            "SELECT {} 1 {}",
            "CASE WHEN true THEN".repeat(3_000),
            "END".repeat(3_000)
        );
        let subqueries = format!(
            "SELECT * FROM {} t {}",
            "(SELECT * FROM".repeat(150),
            ") x".repeat(150)
        );
        let ctes = format!(
            "WITH {} SELECT 1",
            (0..2_000)
                .map(|i| format!("c{i} AS (SELECT 1)"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let huge = format!("SELECT '{}'", "x".repeat(MAX_CLASSIFY_BYTES));
        for sql in [
            &deep_parens,
            &near_cap,
            &unbalanced,
            &brackets,
            &nots,
            &minus,
            &cases,
            &subqueries,
            &ctes,
            &huge,
        ] {
            let got = classify(sql, &catalog);
            assert!(!got.cacheable || got.class == Class::Read);
        }
        assert_eq!(classify(&deep_parens, &catalog).class, Class::Write);
        assert_eq!(classify(&huge, &catalog).class, Class::Write);
        assert_eq!(classify(&unbalanced, &catalog).class, Class::Write);
    }

    #[test]
    fn deep_but_realistic_orm_queries_still_parse_and_go_to_replicas() {
        check_rows(&[row(
            "SELECT a.id, a.x FROM a INNER JOIN b ON (a.id = b.a_id) LEFT OUTER JOIN c ON (b.id = c.b_id) \
             WHERE ((a.x = 1 AND (b.y = 2 OR b.y = 3)) AND NOT (c.z IN (SELECT U0.id FROM d U0 \
             WHERE (U0.k = 4 AND U0.j IN (SELECT V0.id FROM e V0 WHERE (V0.m = 5 OR (V0.n IS NULL \
             AND V0.o > 6))))))) ORDER BY a.id LIMIT 21",
            R,
            &["a", "b", "c", "d", "e"],
            &[],
            "$",
        )]);
    }

    #[test]
    fn unterminated_quotes_and_comments_swallow_the_rest() {
        check_rows(&[
            row("SELECT 'abc; DELETE FROM t", W, &[], &[], ""),
            row("SELECT \"abc; DELETE FROM t", W, &[], &[], ""),
            row("WITH x AS (SELECT 'abc; DELETE FROM t", W, &[], &[], "!"),
            row("SELECT $x$ abc; DELETE FROM t", W, &[], &[], ""),
            row("SELECT 1 /* ; DELETE FROM t", R, &[], &[], ""),
            row("SELECT E'\\", W, &[], &[], ""),
        ]);
    }

    #[test]
    fn splitter_keeps_dollar_parameters_and_identifiers_with_dollars_apart_from_quotes() {
        check_rows(&[
            row(
                "SELECT $1, $2 FROM t WHERE a$b = $3; DELETE FROM u",
                W,
                &["t"],
                &["u"],
                "",
            ),
            row("SELECT a$ FROM t; SELECT 1", R, &["t"], &[], ""),
        ]);
    }

    /// Statements whose first keyword means they change something: a replica must never get them.
    #[rustfmt::skip]
    const WRITE_LEADING: &[&str] = &[
        "insert", "update", "delete", "merge", "create", "drop", "alter", "truncate", "grant",
        "revoke", "call", "do", "vacuum", "cluster", "reindex", "refresh", "notify", "lock",
        "listen", "execute", "import", "load", "checkpoint", "comment", "security",
    ];

    fn assert_invariants(sql: &str) {
        let got = classify(sql, &catalog());
        for statement in &got.statements {
            let text = sql.get(statement.range.clone());
            assert!(
                text.is_some(),
                "range {:?} not on char boundaries",
                statement.range
            );
            let first = text
                .unwrap_or("")
                .split(|c: char| !c.is_ascii_alphabetic())
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            if statement.class == Class::Read {
                assert!(
                    !WRITE_LEADING.contains(&first.as_str()),
                    "{sql:?} → Read for {first}"
                );
            }
            assert!(strength(&statement.class) <= strength(&got.class));
        }
        if got.cacheable {
            assert_eq!(got.class, Class::Read);
            assert_eq!(got.statements.len(), 1);
            assert!(!got.read_tables.is_empty());
        }
    }

    #[rustfmt::skip]
    const SOUP: &[&str] = &[
        "SELECT", "select", "FROM", "WHERE", "WITH", "AS", "INSERT", "INTO", "VALUES", "UPDATE",
        "SET", "DELETE", "MERGE", "USING", "RETURNING", "FOR", "NO", "KEY", "SHARE", "TABLE",
        "BEGIN", "COMMIT", "ROLLBACK", "READ", "ONLY", "WRITE", "PREPARE", "EXECUTE", "EXPLAIN",
        "ANALYZE", "COPY", "STDIN", "STDOUT", "TO", "DECLARE", "CURSOR", "HOLD", "CREATE", "TEMP",
        "FUNCTION", "ATOMIC", "END", "CASE", "DO", "LOCK", "SHOW", "RESET", "ALL", "TIME", "ZONE",
        "LOCAL", "nextval", "now", "t", "\"Q\"", "s.t", "(", ")", "((", "))", ",", ";", ".", "*",
        "=", "$1", "$$", "$a$", "'", "''", "'x'", "E'\\'", "\"", "--", "/*", "*/", "\n", "1", "-",
        "::", "[", "]", "pgrelay:", "leader", "cache", "ttl=", "UNION", "OF", "NOWAIT", "INTERVAL",
        "é", "\u{0}",
    ];

    proptest! {
        #[test]
        fn classify_never_panics_on_arbitrary_text(sql in any::<String>()) {
            assert_invariants(&sql);
        }

        #[test]
        fn classify_never_panics_on_sql_token_soup(
            parts in prop::collection::vec(prop::sample::select(SOUP), 0..40),
            glue in prop::sample::select(vec!["", " ", "\n"]),
        ) {
            assert_invariants(&parts.join(glue));
        }

        #[test]
        fn splitter_ranges_are_ordered_and_within_the_text(sql in "\\PC{0,200}") {
            let lexed = lex(&sql);
            let mut previous_end = 0;
            for range in split(&sql, &lexed.tokens) {
                let tokens = &lexed.tokens[range];
                let (first, last) = (tokens[0], tokens[tokens.len() - 1]);
                prop_assert!(first.start >= previous_end && last.end <= sql.len());
                prop_assert!(sql.get(first.start..last.end).is_some());
                previous_end = last.end;
            }
        }

        #[test]
        fn cached_and_direct_classification_agree(
            parts in prop::collection::vec(prop::sample::select(SOUP), 0..20),
        ) {
            let sql = parts.join(" ");
            let cache = ClassifyCache::new(4);
            let catalog = catalog();
            let direct = classify(&sql, &catalog);
            prop_assert_eq!(&*cache.classify(&sql, &catalog), &direct);
            prop_assert_eq!(&*cache.classify(&sql, &catalog), &direct);
        }
    }
}
