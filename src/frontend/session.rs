//! One client's session after login: the relay loop between the client socket and whichever
//! server connection the client holds at the moment.
//!
//! The loop reads, writes and inspects only message headers and the few message types that
//! change state (ReadyForQuery, ParameterStatus, ErrorResponse, CommandComplete, Parse- and
//! CloseComplete). Everything else, DataRows above all, passes through as the bytes that
//! arrived, in chunks as large as the socket reads. Both directions are serviced at once
//! (reads and writes are separate select branches), so a client pipelining a large input
//! while the server streams a large output cannot deadlock the two against each other.
//!
//! Units of work (a Query string, an extended-protocol batch up to Sync, a function call)
//! are planned by the router; the session picks a server for each unit that starts outside a
//! transaction. In transaction pooling the server connection goes back to its pool when the
//! server says ReadyForQuery 'I', the client is owed nothing more and no batch is open. In
//! session pooling (or once a client is pinned) it keeps the connection until it leaves.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use prometheus::IntCounter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cancel::CancelHandle;
use super::error::FrontendError;
use super::prepared::{rewrite_bind, rewrite_target, ClientStatement, ClientStatements};
use super::registry::{ClientEntry, ClientState};
use super::settings::Settings;
use crate::auth::users::UserEntry;
use crate::config::{Config, Consistency, HostAddr, PoolMode};
use crate::net::Socket;
use crate::pool::{Pool, PoolError, PoolKey, PooledConn};
use crate::protocol::build::{self, Severity};
use crate::protocol::frame::{peek_header, split_frame};
use crate::protocol::{sqlstate, tag, view, Frame, TxStatus};
use crate::router::catalog::SharedCatalog;
use crate::router::classify::{Classification, FunctionCatalog, RouteHint};
use crate::router::route::{self, Candidate, Need, Reason, Target};
use crate::router::{plan, plan as plan_body, Plan, SettingChange, TxEnd};
use crate::topology::Snapshot;
use crate::Shared;

/// Stop reading a side while this much is queued for the other (backpressure).
const HIGH_WATER: usize = 1 << 20;
/// Reads start in chunks this small, so an idle client costs little memory...
const SMALL_READ: usize = 1024;
/// ...and grow up to this while the peer keeps filling them (large results, COPY).
const MAX_READ: usize = 256 * 1024;
/// Messages a session's emptied replay list may keep room for.
const MAX_SPARE_REPLAY: usize = 8;
/// A server connection keeps a read buffer up to this size for its next client.
const KEPT_READ_BUFFER: usize = 16 * 1024;
/// A server is trusted with messages up to PostgreSQL's own limit.
const MAX_SERVER_MESSAGE: u64 = (1 << 30) - 1;
/// An extended-protocol batch larger than this is routed before its Sync arrives.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// What pgrelay asks the leader after a write commits, for read-your-writes: the insert
/// position is at or past the end of the commit record.
const COMMIT_LSN_SQL: &str = "SELECT pg_current_wal_insert_lsn()::text";
/// Client messages kept for replaying a read on another server after its replica failed.
const MAX_REPLAY_BYTES: usize = 1 << 20;
/// A statement name pgrelay never prepares (server-side names carry a hash suffix).
const NEVER_PREPARED: &str = "pgrelay_none";

/// Where the current server connection points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Leader,
    /// The host is the connection's (`PooledConn::host`).
    Replica,
}

/// Where routing sends a unit, and why a read that wanted a replica did not get one.
struct Choice {
    target: Target,
    reason: Reason,
    rerouted: Option<&'static str>,
}

/// The server connection a client holds.
struct Attached {
    conn: PooledConn,
    role: Role,
}

/// Why pgrelay sent a query of its own on the client's server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    /// Making the connection's settings match the client's.
    Settings,
    /// The client's deferred BEGIN.
    Begin,
    /// Learning the LSN of the client's last commit.
    CommitLsn,
    /// Re-preparing (or freeing the name of) a client's SQL-level prepared statement.
    Prepare,
}

/// Effects of a client unit that apply only once the server has run it without error.
#[derive(Debug, Default)]
struct Effects {
    settings: Vec<SettingChange>,
    writes: bool,
    /// DDL and other writes of unknown tables: the function catalog may have changed, and
    /// every cached result of the database is suspect.
    schema_may_change: bool,
    /// Tables written, whose cached results a commit invalidates.
    write_tables: Vec<String>,
}

impl Effects {
    /// What a planned unit will change once it succeeds.
    fn of(plan: &mut Plan) -> Effects {
        Effects {
            settings: std::mem::take(&mut plan.settings),
            writes: plan.writes() || matches!(plan.need, Need::Leader(Reason::InTransaction)),
            schema_may_change: plan.writes_unknown_tables,
            write_tables: std::mem::take(&mut plan.write_tables),
        }
    }

    /// Adds another unit's effects (statements of one transaction).
    fn absorb(&mut self, other: Effects) {
        self.settings.extend(other.settings);
        self.writes |= other.writes;
        self.schema_may_change |= other.schema_may_change;
        self.write_tables.extend(other.write_tables);
    }
}

/// What identifies a cacheable unit's result.
struct CacheRequest {
    key: crate::cache::CacheKey,
    tables: Arc<crate::cache::ReadTables>,
    ttl: std::time::Duration,
}

/// What a commit changed, to be told to the cache once its LSN is known.
struct PendingInvalidation {
    tables: Vec<String>,
    whole_database: bool,
    write_lsn: Option<u64>,
}

/// A missed read whose response is being collected for the cache.
struct FillState {
    fill: crate::cache::Fill,
    answered_by: crate::cache::AnsweredBy,
    ttl: std::time::Duration,
    capture: BytesMut,
    max_bytes: usize,
    /// Set at the unit's ReadyForQuery: whether the response may be stored, and its length
    /// (everything collected before that ReadyForQuery).
    done: Option<(bool, usize)>,
}

/// One ReadyForQuery the server owes, in the order they will arrive.
enum Reply {
    /// `sync`: earned by a Sync (not a Query or FunctionCall).
    Client {
        since: Instant,
        effects: Effects,
        sync: bool,
    },
    Own(Own),
}

/// One ParseComplete or CloseComplete the server owes (in order), and whether it answers a
/// message pgrelay injected (then the client must not see it).
#[derive(Debug)]
struct ParseClose {
    /// Index of the Sync batch it belongs to: an error in that batch means it never comes.
    batch: u64,
    own: bool,
    kind: u8,
    /// Server-side statement name, for Parse and statement Close.
    statement: Option<String>,
}

/// A unit of client work waiting for a server.
enum Waiting {
    /// A Query or FunctionCall.
    Message(Frame),
    /// The extended-protocol batch in `Session::batch`, complete up to Sync or Flush.
    Batch,
}

/// What a logged-in client brings to its session.
pub struct SessionLogin {
    pub user: Arc<UserEntry>,
    pub database: String,
    pub settings: Settings,
    pub functions: SharedCatalog,
    pub cancel: CancelHandle,
    /// The server connection of the login, kept in session pooling.
    pub server: Option<PooledConn>,
    /// The client's line in `SHOW CLIENTS`.
    pub registered: ClientEntry,
    /// The pools the login used (its leader's).
    pub pools: PoolCache,
}

pub struct Session {
    shared: Arc<Shared>,
    user: Arc<UserEntry>,
    database: String,
    settings: Settings,
    startup_settings: Settings,
    statements: ClientStatements,
    /// The buffer cache keys' text is built in.
    key_text: String,
    /// SQL-level `PREPARE`d statements: name → the PREPARE text, replayed on whichever
    /// connection runs an EXECUTE of it.
    sql_statements: std::collections::HashMap<String, String>,
    /// The function catalog of the client's database and the running config, as of this
    /// pass of the relay loop: `refresh` takes newer ones through caches that revalidate with
    /// one atomic load, so the hot path does no `ArcSwap` load.
    catalog_now: Arc<FunctionCatalog>,
    functions: arc_swap::Cache<SharedCatalog, Arc<FunctionCatalog>>,
    config_now: Arc<Config>,
    config_cache: arc_swap::Cache<RunningConfig, Arc<Config>>,
    /// The topology, revalidated with one atomic load at every checkout.
    topology: arc_swap::Cache<CurrentTopology, Arc<Snapshot>>,
    /// Boxed: most of a session's life is idle, and its task's size is paid by every client.
    plan_memo: RefCell<Option<Box<PlanMemo>>>,
    cancel: CancelHandle,
    registered: ClientEntry,
    /// Pools this session has used.
    pools: PoolCache,
    /// The `pgrelay_queries_total` series the last unit counted in: units of one client
    /// usually take the same route.
    route_counter: Option<((bool, Reason), IntCounter)>,
    /// The reroute counter this client moved last, by reason (as `route_counter`).
    reroute_counter: Option<(&'static str, IntCounter)>,
    /// Replicas a read may go to, refilled for each read (kept for its allocation).
    candidates: Vec<Candidate>,
    pool_mode: PoolMode,
    max_message_size: u64,

    cin: BytesMut,
    /// Current read size from the client (grows while reads come back full).
    cin_chunk: usize,
    /// Current read size from the server.
    sin_chunk: usize,
    to_client: VecDeque<Bytes>,
    to_client_len: usize,

    server: Option<Attached>,
    sin: BytesMut,
    /// Bytes of the current server message still to stream through uninspected.
    s_passthrough: usize,
    to_server: VecDeque<Bytes>,
    to_server_len: usize,

    replies: VecDeque<Reply>,
    parse_close: VecDeque<ParseClose>,
    /// Sync batches sent (each ends with a message that earns a ReadyForQuery).
    sent_batches: u64,
    /// ReadyForQuery messages received.
    done_batches: u64,
    /// An ErrorResponse arrived in the batch now being answered.
    batch_failed: bool,
    /// The last CommandComplete of the client's transaction was COMMIT.
    last_was_commit: bool,

    /// When the ReadyForQuery that ended a unit arrived, while the input holding it is being
    /// processed (the connection's last use, if it is released then).
    ready_at: Option<Instant>,
    /// Extended messages that arrived while no server was chosen, up to Sync or Flush.
    batch: Vec<Frame>,
    batch_bytes: usize,
    waiting: Option<Waiting>,
    /// Extended-protocol messages went to the server since the last Sync.
    extended_open: bool,
    /// An error ended the client's extended batch; like PostgreSQL, drop messages until Sync.
    skip_until_sync: bool,
    /// The server is in COPY FROM STDIN: it ignores Sync until the client's CopyDone or
    /// CopyFail, so those Syncs earn no ReadyForQuery.
    copy_in: bool,
    /// What the client believes its transaction status is.
    tx: TxStatus,
    /// A BEGIN answered by pgrelay and not yet sent to any server.
    deferred_begin: Option<String>,
    /// Settings changes inside the open transaction, applied at COMMIT.
    tx_effects: Effects,
    /// The client keeps its server connection until it leaves.
    pinned: bool,
    /// Read-your-writes: the leader LSN at the client's last commit.
    last_commit_lsn: Option<u64>,
    /// The client messages sent to a replica since it was attached, while nothing has come
    /// back to the client: if the replica dies now, they are replayed elsewhere.
    replay: Option<Vec<Bytes>>,
    /// The list `replay` had, emptied, for the next read to reuse.
    replay_spare: Vec<Bytes>,
    replay_bytes: usize,
    /// The client's last unnamed Parse: a later batch may Bind it on another connection.
    unnamed_parse: Option<Bytes>,
    /// The response of a cache miss being collected.
    fill: Option<FillState>,
    /// What the last commit wrote, waiting for its LSN.
    invalidate_after_commit: Option<(Vec<String>, bool)>,
    /// The LSN the query after a commit returned.
    commit_lsn_read: Option<u64>,
    /// An invalidation to deliver before anything else.
    pending_invalidation: Option<PendingInvalidation>,
    /// The commit's ReadyForQuery, withheld until its invalidation is delivered.
    held_ready: bool,
    /// Flush what is queued for the client, then end the session.
    closing: bool,
}

/// What [`Session::write_now`] ran into.
enum Written {
    Done,
    ServerLost,
    ClientGone,
}

enum Event {
    ClientRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ServerWrote(std::io::Result<usize>),
    Shutdown,
    /// The client left a transaction open and silent past `idle_transaction_timeout`.
    IdleInTransaction,
}

/// A FATAL error saying the server is going away (shutdown, crash, or not accepting
/// connections): nothing the statement did caused it, so the statement may run elsewhere.
fn server_going_away(body: &[u8]) -> bool {
    let fields = view::error_fields(body);
    fields.severity.as_deref() == Some("FATAL")
        && fields
            .code
            .as_deref()
            .is_some_and(|c| matches!(c, "57P01" | "57P02" | "57P03") || c.starts_with("08"))
}

/// Whether pgrelay must see the whole of a server message of this type before forwarding it.
fn inspected(t: u8) -> bool {
    matches!(
        t,
        tag::READY_FOR_QUERY
            | tag::PARAMETER_STATUS
            | tag::ERROR_RESPONSE
            | tag::COMMAND_COMPLETE
            | tag::PARSE_COMPLETE
            | tag::CLOSE_COMPLETE
            | tag::COPY_IN_RESPONSE
    )
}

/// The plan of the classification a session planned last.
struct PlanMemo {
    classification: Arc<Classification>,
    read_only: bool,
    plan: Plan,
}

/// The topology of `Shared`, as an `arc_swap::Cache` needs it.
struct CurrentTopology(Arc<Shared>);

impl std::ops::Deref for CurrentTopology {
    type Target = arc_swap::ArcSwap<Snapshot>;

    fn deref(&self) -> &Self::Target {
        self.0.topology.current()
    }
}

/// The running config of `Shared`, as an `arc_swap::Cache` needs it.
struct RunningConfig(Arc<Shared>);

impl std::ops::Deref for RunningConfig {
    type Target = arc_swap::ArcSwap<Config>;

    fn deref(&self) -> &Self::Target {
        &self.0.config
    }
}

impl Session {
    /// The running config as of this pass of the relay loop.
    fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config_now)
    }

    /// Takes the config a reload swapped in and the catalog a refresh loaded, if any.
    fn refresh(&mut self) {
        let config = self.config_cache.load();
        if !Arc::ptr_eq(config, &self.config_now) {
            self.config_now = Arc::clone(config);
        }
        let catalog = self.functions.load();
        if !Arc::ptr_eq(catalog, &self.catalog_now) {
            self.catalog_now = Arc::clone(catalog);
        }
    }

    pub fn new(shared: Arc<Shared>, login: SessionLogin) -> Session {
        let SessionLogin {
            user,
            database,
            settings,
            functions,
            cancel,
            server,
            registered,
            pools,
        } = login;
        let config = shared.config.load();
        let pool_mode = config.server.pool_mode;
        let max_message_size = config.server.max_message_size;
        let mut config_cache = arc_swap::Cache::new(RunningConfig(Arc::clone(&shared)));
        let topology = arc_swap::Cache::new(CurrentTopology(Arc::clone(&shared)));
        let config_now = Arc::clone(config_cache.load());
        let mut functions = arc_swap::Cache::new(functions);
        let catalog_now = Arc::clone(functions.load());
        let session = Session {
            shared,
            user,
            database,
            startup_settings: settings.clone(),
            settings,
            statements: ClientStatements::default(),
            key_text: String::new(),
            sql_statements: std::collections::HashMap::new(),
            catalog_now,
            functions,
            config_now,
            config_cache,
            topology,
            plan_memo: RefCell::new(None),
            cancel,
            registered,
            pool_mode,
            max_message_size,
            cin: BytesMut::new(),
            cin_chunk: SMALL_READ,
            sin_chunk: SMALL_READ,
            to_client: VecDeque::new(),
            to_client_len: 0,
            server: server.map(|conn| Attached {
                conn,
                role: Role::Leader,
            }),
            sin: BytesMut::new(),
            s_passthrough: 0,
            to_server: VecDeque::new(),
            to_server_len: 0,
            replies: VecDeque::new(),
            parse_close: VecDeque::new(),
            sent_batches: 0,
            done_batches: 0,
            batch_failed: false,
            last_was_commit: false,
            ready_at: None,
            batch: Vec::new(),
            batch_bytes: 0,
            pools,
            route_counter: None,
            reroute_counter: None,
            candidates: Vec::new(),
            waiting: None,
            extended_open: false,
            skip_until_sync: false,
            copy_in: false,
            tx: TxStatus::Idle,
            deferred_begin: None,
            tx_effects: Effects::default(),
            pinned: pool_mode == PoolMode::Session,
            last_commit_lsn: None,
            replay: None,
            replay_spare: Vec::new(),
            replay_bytes: 0,
            unnamed_parse: None,
            fill: None,
            invalidate_after_commit: None,
            commit_lsn_read: None,
            pending_invalidation: None,
            held_ready: false,
            closing: false,
        };
        if let Some(a) = &session.server {
            let c = a.conn.conn_ref();
            session.cancel.hold(&c.host, c.process_id, c.secret_key);
        }
        session
    }

    /// Relays until the client leaves, the session fails, or shutdown finds it idle.
    pub async fn run(mut self, client: &mut Socket) -> Result<(), FrontendError> {
        let result = self.relay(client).await;
        Box::pin(self.finish()).await;
        result
    }

    async fn relay(&mut self, client: &mut Socket) -> Result<(), FrontendError> {
        let mut shutting_down = self.registered.shutting_down();
        // One wait for shutdown for the whole session, cheap to poll in every pass.
        let mut shutdown_signal = self.registered.shutdown_signal();
        loop {
            self.refresh();
            if self.pending_invalidation.is_some() {
                Box::pin(self.deliver_invalidation()).await;
                if !self.sin.is_empty() {
                    self.process_server_input();
                }
            }
            if !self.closing {
                self.process_client_input().await?;
            }
            if shutting_down && self.is_between_transactions() && !self.closing {
                self.send_error(
                    Severity::Fatal,
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command",
                );
                self.closing = true;
            }
            match self.write_now(client) {
                Written::Done => {}
                // What the lost server was given may be run elsewhere: handle it first.
                Written::ServerLost => continue,
                Written::ClientGone => return Ok(()),
            }
            if self.closing && self.to_client.is_empty() {
                return Ok(());
            }
            if self.cin.is_empty() && self.cin.capacity() > MAX_READ {
                // Give back what a large message needed once the client is idle again.
                self.cin = BytesMut::new();
            }
            if self.cin.capacity() - self.cin.len() < self.cin_chunk / 2 {
                self.cin.reserve(self.cin_chunk);
            }
            if self.server.is_some() && self.sin.capacity() - self.sin.len() < self.sin_chunk / 2 {
                self.sin.reserve(self.sin_chunk);
            }
            let cin_spare = self.cin.capacity() - self.cin.len();
            let sin_spare = self.sin.capacity() - self.sin.len();
            // A client that holds a server connection in an open transaction and sends nothing
            // is timed; the timer restarts whenever anything happens.
            let idle_limit = self.config_now.server.idle_transaction_timeout;
            let idle_in_transaction = !idle_limit.is_zero()
                && self.server.is_some()
                && self.tx != TxStatus::Idle
                && self.replies.is_empty()
                && self.cin.is_empty()
                && !self.closing;
            // While the server answers what the client sent, the client's next bytes can wait
            // in its socket (saving a poll per request); not during COPY FROM STDIN, whose
            // data the server waits for before it answers.
            let awaiting_answer = !self.replies.is_empty() && !self.copy_in;
            let read_client = !self.closing
                && self.to_server_len < HIGH_WATER
                && self.waiting.is_none()
                && !awaiting_answer;
            let has_server = self.server.is_some();
            let between_transactions = self.is_between_transactions();
            let read_server = has_server && self.to_client_len < HIGH_WATER;
            let event = {
                let (mut crd, mut cwr) = client.split();
                let server = self
                    .server
                    .as_mut()
                    .map(|a| a.conn.conn().stream_mut().split());
                let (mut srd, mut swr) = match server {
                    Some((r, w)) => (Some(r), Some(w)),
                    None => (None, None),
                };
                // Everything queued goes out in one vectored write: a Bind/Execute/Sync batch
                // is one syscall, not one per message.
                let (client_out, client_chunks) = io_slices(&self.to_client);
                let (server_out, server_chunks) = io_slices(&self.to_server);
                let client_pending = client_chunks > 0;
                let server_pending = server_chunks > 0;
                let cin = &mut self.cin;
                let sin = &mut self.sin;
                // In a fixed order (no random start to draw): the server's answer first, then
                // the client. Neither can starve the other: each branch is turned off while
                // what it feeds is past HIGH_WATER.
                tokio::select! {
                    biased;
                    r = async {
                        match srd.as_mut() {
                            Some(s) => s.read_buf(sin).await,
                            None => std::future::pending().await,
                        }
                    }, if read_server => Event::ServerRead(r),
                    r = cwr.write_vectored(&client_out[..client_chunks]), if client_pending => Event::ClientWrote(r),
                    r = crd.read_buf(cin), if read_client => Event::ClientRead(r),
                    r = async {
                        match swr.as_mut() {
                            Some(s) => s.write_vectored(&server_out[..server_chunks]).await,
                            None => std::future::pending().await,
                        }
                    }, if server_pending && has_server => Event::ServerWrote(r),
                    // Acted on only between transactions, so only waited for there; it stays
                    // fired for a shutdown that began meanwhile.
                    _ = &mut shutdown_signal, if !shutting_down && between_transactions => Event::Shutdown,
                    // Built only when polled: a Sleep reads the clock when it is made.
                    _ = async { tokio::time::sleep(idle_limit).await }, if idle_in_transaction => Event::IdleInTransaction,
                }
            };
            match event {
                Event::ClientRead(Ok(0))
                | Event::ClientRead(Err(_))
                | Event::ClientWrote(Err(_)) => return Ok(()),
                Event::ClientWrote(Ok(n)) => self.client_took(n),
                Event::ClientRead(Ok(n)) => {
                    self.shared.metrics.client_bytes_received.inc_by(n as u64);
                    self.cin_chunk = next_chunk(self.cin_chunk, n, cin_spare);
                }
                Event::ServerRead(Ok(0)) => {
                    self.server_lost("server closed the connection unexpectedly")
                }
                Event::ServerRead(Err(e)) | Event::ServerWrote(Err(e)) => {
                    self.server_lost(&format!("lost connection to server: {e}"))
                }
                Event::ServerRead(Ok(n)) => {
                    self.sin_chunk = next_chunk(self.sin_chunk, n, sin_spare);
                    self.process_server_input()
                }
                Event::ServerWrote(Ok(n)) => self.server_took(n),
                Event::Shutdown => shutting_down = true,
                Event::IdleInTransaction => {
                    tracing::info!(user = self.user.name(), timeout = ?idle_limit, "closing a client idle in a transaction");
                    self.send_error(
                        Severity::Fatal,
                        sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                        "terminating connection due to idle-in-transaction timeout",
                    );
                    self.closing = true;
                }
            }
        }
    }

    /// Writes what is queued for the server and for the client as far as their sockets take
    /// it without waiting. A request and its answer then each cost one pass of the relay loop
    /// instead of two (one to read, one to wait for the socket to take the write).
    fn write_now(&mut self, client: &Socket) -> Written {
        if let (Some(a), false) = (self.server.as_mut(), self.to_server.is_empty()) {
            let (slices, chunks) = io_slices(&self.to_server);
            let written = a
                .conn
                .conn()
                .stream_mut()
                .try_write_vectored(&slices[..chunks]);
            match written {
                Ok(n) => self.server_took(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.server_lost(&format!("lost connection to server: {e}"));
                    return Written::ServerLost;
                }
            }
        }
        if !self.to_client.is_empty() {
            let (slices, chunks) = io_slices(&self.to_client);
            match client.try_write_vectored(&slices[..chunks]) {
                Ok(n) => self.client_took(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Written::ClientGone,
            }
        }
        Written::Done
    }

    /// The client's socket took the first `n` queued bytes.
    fn client_took(&mut self, n: usize) {
        self.shared.metrics.client_bytes_sent.inc_by(n as u64);
        advance_queue(&mut self.to_client, &mut self.to_client_len, n);
    }

    /// The server's socket took the first `n` queued bytes.
    fn server_took(&mut self, n: usize) {
        advance_queue(&mut self.to_server, &mut self.to_server_len, n);
    }

    /// No transaction open, nothing owed to the client: a safe point to end the session.
    fn is_between_transactions(&self) -> bool {
        self.replies.is_empty()
            && self.tx == TxStatus::Idle
            && !self.extended_open
            && self.batch.is_empty()
            && self.waiting.is_none()
    }

    /// Whether the next client message starts a new unit that may choose its own server.
    fn at_unit_boundary(&self) -> bool {
        !self.pinned
            && !self.extended_open
            && self.tx == TxStatus::Idle
            && self.deferred_begin.is_none()
    }

    /// Handles every whole client message in the input buffer, unless a unit is waiting
    /// for a server.
    async fn process_client_input(&mut self) -> Result<(), FrontendError> {
        if self.waiting.is_some() && !self.try_dispatch().await {
            return Ok(());
        }
        while !self.closing && self.to_server_len < HIGH_WATER && self.waiting.is_none() {
            let frame = match split_frame(&mut self.cin, self.max_message_size) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(user = self.user.name(), error = %e, "client sent a bad message");
                    self.send_error(
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        &e.to_string(),
                    );
                    self.closing = true;
                    return Ok(());
                }
            };
            self.handle_client_frame(frame).await;
        }
        Ok(())
    }

    async fn handle_client_frame(&mut self, frame: Frame) {
        if self.pinned && frame.tag != tag::TERMINATE {
            // A client that keeps its connection starts transactions without attach(): PAUSE
            // holds it here instead, between transactions.
            let at_rest =
                self.tx == TxStatus::Idle && !self.extended_open && self.replies.is_empty();
            if at_rest && *self.shared.paused.borrow() {
                self.registered.set_state(ClientState::Waiting);
                crate::admin::console::wait_while_paused(&self.shared).await;
                self.registered.set_state(ClientState::Active);
            }
            if !Box::pin(self.follow_leader_change()).await {
                return;
            }
        }
        match frame.tag {
            tag::TERMINATE => {
                self.closing = true;
                return;
            }
            tag::SYNC if self.skip_until_sync => {
                self.skip_until_sync = false;
                if self.server.is_none() {
                    self.queue_ready();
                    return;
                }
            }
            _ if self.skip_until_sync => return,
            tag::QUERY | tag::FUNCTION_CALL => {}
            tag::PARSE
            | tag::BIND
            | tag::DESCRIBE
            | tag::EXECUTE
            | tag::CLOSE
            | tag::SYNC
            | tag::FLUSH => {}
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                // PostgreSQL ignores copy messages outside a COPY; so do we.
                if self.server.is_some() {
                    if frame.tag != tag::COPY_DATA {
                        self.copy_in = false;
                    }
                    self.queue_server(frame.bytes);
                }
                return;
            }
            other => {
                let text = format!("invalid frontend message type {other}");
                self.send_error(Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, &text);
                self.closing = true;
                return;
            }
        }
        let extended = !matches!(frame.tag, tag::QUERY | tag::FUNCTION_CALL);
        if !self.batch.is_empty()
            || (self.at_unit_boundary() && extended && self.server_choice_open())
        {
            // Collect the batch: its server depends on every statement in it.
            let ends = matches!(frame.tag, tag::SYNC | tag::FLUSH);
            self.batch_bytes += frame.bytes.len();
            self.batch.push(frame);
            if ends || self.batch_bytes > MAX_BATCH_BYTES {
                self.waiting = Some(Waiting::Batch);
                self.try_dispatch().await;
            }
            return;
        }
        if !extended && (self.at_unit_boundary() || self.deferred_begin.is_some()) {
            self.waiting = Some(Waiting::Message(frame));
            self.try_dispatch().await;
            return;
        }
        // Inside a transaction, an open batch, or a pinned session: same server.
        if self.server.is_none() {
            // Only a lone Sync or Flush gets here without a server and outside a batch.
            if frame.tag == tag::SYNC {
                self.queue_ready();
            }
            return;
        }
        self.forward(frame);
    }

    /// A client that keeps its server connection between transactions (session pooling, or
    /// pinned) must never write through a server that stopped being the leader. Between
    /// transactions, a session-pooled client moves to the new leader (its settings are
    /// replayed there); a client pinned by state that cannot move (LISTEN, temp tables) is
    /// disconnected. Returns whether the session goes on.
    async fn follow_leader_change(&mut self) -> bool {
        let stale = self.server.as_ref().is_some_and(|a| !a.conn.is_current());
        if !stale || self.tx != TxStatus::Idle || self.extended_open || !self.replies.is_empty() {
            return true;
        }
        let Some(old) = self.server.take() else {
            return true;
        };
        tracing::warn!(user = self.user.name(), host = %old.conn.host(), "server changed role under a pinned client");
        old.conn.discard();
        self.cancel.release();
        if self.pool_mode == PoolMode::Transaction {
            self.send_error(
                Severity::Fatal,
                sqlstate::CONNECTION_FAILURE,
                "the server holding this session's state is no longer the leader",
            );
            self.closing = true;
            return false;
        }
        let mut plan = Plan::read();
        plan.need = Need::Leader(Reason::Pinned);
        if let Err(e) = Box::pin(self.attach(&plan, None)).await {
            let code = e
                .sqlstate()
                .unwrap_or(sqlstate::CONNECTION_FAILURE)
                .to_owned();
            self.send_error(Severity::Fatal, &code, &e.client_message());
            self.closing = true;
            return false;
        }
        true
    }

    /// Whether a new extended batch may still pick a server (otherwise it goes to the one
    /// the client holds, without buffering).
    fn server_choice_open(&self) -> bool {
        !self.pinned && self.deferred_begin.is_none()
    }

    /// Plans the waiting unit and sends it to a server; returns false when it must wait for
    /// the current server connection to be released first.
    async fn try_dispatch(&mut self) -> bool {
        let Some(waiting) = self.waiting.take() else {
            return true;
        };
        let mut plan = match &waiting {
            Waiting::Message(f) if f.tag == tag::FUNCTION_CALL => {
                let mut p = Plan::read();
                p.need = Need::Leader(Reason::Write);
                p.writes_unknown_tables = true;
                p
            }
            Waiting::Message(f) => match view::query_text(f.body()) {
                Some(sql) => self.plan_sql(sql),
                None => {
                    self.send_error(
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        "invalid Query message",
                    );
                    self.closing = true;
                    return true;
                }
            },
            Waiting::Batch => {
                if self.server.is_none() && self.answer_prepare_locally() {
                    return true;
                }
                self.plan_batch()
            }
        };

        // A deferred BEGIN: answer COMMIT/ROLLBACK of an empty transaction ourselves, or
        // let this first statement choose the transaction's server.
        if let Some(begin_sql) = self.deferred_begin.clone() {
            if let (Waiting::Message(_), Some(end)) = (&waiting, plan.lone_end) {
                self.deferred_begin = None;
                self.tx = TxStatus::Idle;
                self.queue_local_complete(match end {
                    TxEnd::Commit => "COMMIT",
                    TxEnd::Rollback => "ROLLBACK",
                });
                return true;
            }
            let read_only_begin = crate::router::classify::classify(&begin_sql, &self.catalog_now)
                .statements
                .first()
                .is_some_and(|s| {
                    matches!(
                        s.kind,
                        crate::router::classify::StatementKind::Begin {
                            read_only: Some(true)
                        }
                    )
                });
            plan.need = match plan.need {
                Need::Leader(r) => Need::Leader(if r == Reason::Write || r == Reason::ForUpdate {
                    r
                } else {
                    Reason::InTransaction
                }),
                _ if plan.sets_read_only || read_only_begin || self.default_read_only() => {
                    Need::ReadOnlyTransaction
                }
                _ => Need::Leader(Reason::InTransaction),
            };
        } else if let (Waiting::Message(f), Some(_)) = (&waiting, plan.lone_begin) {
            if self.server.is_none() && self.pool_mode == PoolMode::Transaction && !self.pinned {
                let sql = view::query_text(f.body()).unwrap_or("BEGIN").to_owned();
                self.deferred_begin = Some(sql);
                self.tx = TxStatus::InTransaction;
                self.queue_local_complete("BEGIN");
                return true;
            }
        }
        if let (Waiting::Message(_), Some(name)) = (&waiting, &plan.lone_deallocate) {
            if !self.replies.is_empty() {
                // A reply made here must not overtake the server's answers still to come.
                self.waiting = Some(waiting);
                return false;
            }
            if self.deallocate_locally(name.as_deref()) {
                return true;
            }
        }
        let execute = plan.lone_execute.clone();
        if let Some(prepare) = execute.as_ref().and_then(|n| self.sql_statements.get(n)) {
            // EXECUTE runs where its statement's body would.
            let body = crate::router::classify::classify(prepare, &self.catalog_now);
            let body_plan = plan_body(&body, prepare, self.default_read_only());
            plan.need = body_plan.need;
            plan.write_tables = body_plan.write_tables;
            plan.writes_unknown_tables = body_plan.writes_unknown_tables;
        }

        // Cache-aside: a cacheable read outside any transaction may be answered from the cache.
        let mut fill = None;
        if self.server.is_none() && self.replies.is_empty() && self.at_unit_boundary() {
            if let Some(request) = self.cache_request(&waiting, &plan) {
                match self.cache_lookup(&request).await {
                    Some(crate::cache::Lookup::Hit(response)) => {
                        self.serve_from_cache(&waiting, response);
                        return true;
                    }
                    Some(crate::cache::Lookup::Miss(Some(ticket))) => {
                        fill = Some((ticket, request.ttl))
                    }
                    _ => {}
                }
            }
        }

        // One reading of the clock times the unit and dates the pool's bookkeeping (read
        // again after a wait for a connection: the unit's time starts when it is sent).
        let mut dispatched = Instant::now();
        if let Some(a) = &self.server {
            let fits = match (&a.role, plan.need) {
                (Role::Leader, _) => true,
                (Role::Replica, Need::Read | Need::ReadOnlyTransaction) => true,
                (Role::Replica, Need::Leader(_)) => false,
            };
            if !fits {
                // Wait for the replica's unit to finish and the connection to be released.
                self.waiting = Some(waiting);
                return false;
            }
        } else if let Err(round_robin) = self.attach_now(&plan, dispatched) {
            if let Err(e) = Box::pin(self.attach(&plan, round_robin)).await {
                self.refuse_unit(&waiting, &e);
                return true;
            }
            dispatched = Instant::now();
        }
        if plan.pin && !self.pinned {
            self.pinned = true;
            self.shared.metrics.pinned_clients.inc();
        }
        if let Some(sql) = self.deferred_begin.take() {
            self.send_own_query(&sql, Own::Begin);
        }
        if let Some((ticket, ttl)) = fill {
            self.start_fill(ticket, ttl);
        }
        let effects = Effects::of(&mut plan);
        self.prepare_sql_statements(&plan);
        match waiting {
            Waiting::Message(frame) => {
                self.keep_for_replay(&frame.bytes);
                self.queue_server(frame.bytes);
                self.owe_ready_since(effects, false, dispatched);
            }
            Waiting::Batch => {
                let frames = std::mem::take(&mut self.batch);
                self.batch_bytes = 0;
                for frame in &frames {
                    self.keep_for_replay(&frame.bytes);
                }
                self.restore_unnamed_statement(&frames);
                let mut effects = Some(effects);
                for frame in frames {
                    if frame.tag == tag::SYNC {
                        self.extended_open = false;
                        self.queue_server(frame.bytes);
                        self.owe_ready_since(effects.take().unwrap_or_default(), true, dispatched);
                    } else {
                        self.forward_extended(frame);
                    }
                }
                if let Some(effects) = effects {
                    // Routed at a Flush (or a size cap): effects ride on the coming Sync.
                    self.tx_effects.absorb(effects);
                }
            }
        }
        true
    }

    /// What identifies a unit's result for the cache, when a rule or a hint selects it: a
    /// simple Query of one cacheable statement, or an extended batch of the shape drivers send
    /// for one read ([Parse] Bind [Describe portal] Execute(all rows) Sync).
    fn cache_request(&mut self, waiting: &Waiting, plan: &Plan) -> Option<CacheRequest> {
        let candidate = plan.cache.as_ref()?;
        let config = self.config();
        let ttl = match candidate.hint_ttl {
            Some(ttl) => ttl.unwrap_or(config.cache.default_ttl),
            None => crate::cache::rule_ttl(
                &config.cache.rules,
                config.cache.default_ttl,
                &candidate.tables,
            )?,
        };
        // The key text is the unit's message shape (a simple Query and an extended batch
        // answer in different messages), a newline, and the statement; built in a buffer the
        // session keeps.
        let mut text = std::mem::take(&mut self.key_text);
        text.clear();
        let key = self.cache_key(waiting, &mut text);
        self.key_text = text;
        Some(CacheRequest {
            key: key?,
            tables: Arc::clone(&candidate.tables),
            ttl,
        })
    }

    /// The key of the unit's result, with its text built in `text`; None for a unit whose
    /// shape the cache does not answer.
    fn cache_key(&self, waiting: &Waiting, text: &mut String) -> Option<crate::cache::CacheKey> {
        let named;
        let (sql, tail): (&str, &[u8]) = match waiting {
            Waiting::Message(f) if f.tag == tag::QUERY => {
                text.push('Q');
                (view::query_text(f.body())?, &[])
            }
            Waiting::Message(_) => return None,
            Waiting::Batch => {
                text.extend(self.batch.iter().map(|f| char::from(f.tag)));
                if !matches!(text.as_str(), "BES" | "BDES" | "PBES" | "PBDES") {
                    return None;
                }
                let bind = self.batch.iter().find(|f| f.tag == tag::BIND)?;
                let b = view::bind_message(bind.body())?;
                let execute = self.batch.iter().find(|f| f.tag == tag::EXECUTE)?;
                // Execute: portal name, then the row limit; only "all rows" is one response.
                let limit = execute.body().get(execute.body().len().checked_sub(4)?..)?;
                if limit != [0, 0, 0, 0] {
                    return None;
                }
                let sql = match self.batch.iter().find(|f| f.tag == tag::PARSE) {
                    Some(p) => {
                        let m = view::parse_message(p.body())?;
                        (m.statement == b.statement).then_some(m.query)?
                    }
                    None if b.statement.is_empty() => {
                        let parse = self.unnamed_parse.as_ref()?;
                        view::parse_message(parse.get(5..)?)?.query
                    }
                    None => {
                        named = self.statements.get(b.statement)?;
                        named.sql.as_ref()
                    }
                };
                (sql, b.rest)
            }
        };
        text.push('\n');
        text.push_str(sql);
        Some(crate::cache::cache_key(&crate::cache::KeyInput {
            database: &self.database,
            user: self.user.name(),
            settings: self.settings.as_slice(),
            sql: text,
            param_formats_values_result_formats: tail,
        }))
    }

    /// Looks a request up: without awaiting when the store is in this process.
    async fn cache_lookup(&mut self, request: &CacheRequest) -> Option<crate::cache::Lookup> {
        let cache = self.shared.cache.as_ref()?;
        let relations = request.tables.relations();
        if let Some(found) = cache.lookup_in_process(&self.database, request.key, relations) {
            return Some(found);
        }
        Some(Box::pin(cache.lookup(&self.database, request.key, relations)).await)
    }

    /// Answers a unit with a stored response: the bytes the server sent then, and
    /// ReadyForQuery. Statements the batch prepares are recorded as if it had run.
    fn serve_from_cache(&mut self, waiting: &Waiting, response: Bytes) {
        if let Waiting::Batch = waiting {
            let frames = std::mem::take(&mut self.batch);
            self.batch_bytes = 0;
            for f in frames.iter().filter(|f| f.tag == tag::PARSE) {
                if let Some(m) = view::parse_message(f.body()) {
                    if m.statement.is_empty() {
                        self.unnamed_parse = Some(f.bytes.clone());
                    } else {
                        self.statements.define(&m);
                    }
                }
            }
        }
        self.shared.metrics.queries_answered_by_cache.inc();
        self.queue_client(response);
        self.queue_ready();
    }

    /// Starts collecting a missed read's response for the cache, noting who answers it and
    /// how far that server had replayed before the query was sent.
    fn start_fill(&mut self, ticket: crate::cache::Fill, ttl: std::time::Duration) {
        let Some(a) = self.server.as_ref() else {
            return;
        };
        let answered_by = match &a.role {
            Role::Leader => crate::cache::AnsweredBy::Leader,
            Role::Replica => crate::cache::AnsweredBy::Replica {
                replay_lsn: self
                    .shared
                    .topology
                    .snapshot()
                    .servers
                    .iter()
                    .find(|s| &s.host == a.conn.host())
                    .and_then(|s| s.lsn)
                    .unwrap_or(0),
            },
        };
        let max_bytes =
            usize::try_from(self.config_now.cache.max_entry_bytes).unwrap_or(usize::MAX);
        self.fill = Some(FillState {
            fill: ticket,
            answered_by,
            ttl,
            capture: BytesMut::new(),
            max_bytes,
            done: None,
        });
    }

    /// After a server read: hands a completed response to the cache (in the background: the
    /// client already has it) and stops collecting.
    fn finish_fill(&mut self) {
        let Some((ok, end)) = self.fill.as_ref().and_then(|f| f.done) else {
            return;
        };
        let Some(state) = self.fill.take() else {
            return;
        };
        // The unit's own ReadyForQuery is not part of the stored response (a hit makes its
        // own), nor is anything a pipelined later unit got.
        if !ok || state.capture.get(end) != Some(&tag::READY_FOR_QUERY) {
            return;
        }
        let mut response = state.capture;
        response.truncate(end);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            if let Some(cache) = &shared.cache {
                cache
                    .fill(state.fill, state.answered_by, response.freeze(), state.ttl)
                    .await;
            }
        });
    }

    /// SQL-level PREPARE and EXECUTE in transaction pooling: a PREPARE is recorded and run
    /// (after freeing its name on this connection if another client used it); an EXECUTE
    /// first re-prepares its statement here unless this connection holds the same one.
    fn prepare_sql_statements(&mut self, plan: &Plan) {
        if let Some((name, _)) = &plan.lone_prepare {
            let Some(prepare_sql) = plan.statement_sql.clone() else {
                return;
            };
            let taken = self
                .server
                .as_ref()
                .is_some_and(|a| a.conn.conn_ref().sql_prepared.contains_key(name));
            if taken {
                self.send_own_query(
                    &format!("DEALLOCATE {}", build::quote_ident(name)),
                    Own::Prepare,
                );
            }
            self.sql_statements
                .insert(name.clone(), prepare_sql.clone());
            if let Some(a) = self.server.as_mut() {
                a.conn.conn().sql_prepared.insert(name.clone(), prepare_sql);
            }
        }
        if let Some(name) = &plan.lone_execute {
            let Some(prepare_sql) = self.sql_statements.get(name).cloned() else {
                return;
            };
            let held = self
                .server
                .as_ref()
                .and_then(|a| a.conn.conn_ref().sql_prepared.get(name).cloned());
            if held.as_deref() == Some(prepare_sql.as_str()) {
                return;
            }
            let sql = match held {
                Some(_) => format!("DEALLOCATE {}; {prepare_sql}", build::quote_ident(name)),
                None => prepare_sql.clone(),
            };
            self.send_own_query(&sql, Own::Prepare);
            if let Some(a) = self.server.as_mut() {
                a.conn.conn().sql_prepared.insert(name.clone(), prepare_sql);
            }
        }
    }

    /// The unit can no longer be replayed; its list is kept (small) for the next one.
    fn stop_replay(&mut self) {
        if let Some(mut kept) = self.replay.take() {
            if kept.capacity() <= MAX_SPARE_REPLAY {
                kept.clear();
                self.replay_spare = kept;
            }
        }
    }

    /// Keeps a copy (a reference count, not the bytes) of a client message sent to a replica
    /// while a replay is still possible.
    fn keep_for_replay(&mut self, bytes: &Bytes) {
        if let Some(kept) = self.replay.as_mut() {
            self.replay_bytes += bytes.len();
            if self.replay_bytes > MAX_REPLAY_BYTES {
                self.stop_replay();
            } else {
                kept.push(bytes.clone());
            }
        }
    }

    /// A batch that Binds or Describes the unnamed statement without parsing it runs on a
    /// connection that may never have seen it: send the client's last unnamed Parse first.
    fn restore_unnamed_statement(&mut self, frames: &[Frame]) {
        let uses_unnamed_first = frames
            .iter()
            .find_map(|f| match f.tag {
                tag::PARSE => view::parse_message(f.body())
                    .filter(|p| p.statement.is_empty())
                    .map(|_| false),
                tag::BIND => view::bind_message(f.body())
                    .filter(|b| b.statement.is_empty())
                    .map(|_| true),
                tag::DESCRIBE => view::target_message(f.body())
                    .filter(|t| t.kind == b'S' && t.name.is_empty())
                    .map(|_| true),
                _ => None,
            })
            .unwrap_or(false);
        if let (true, Some(parse)) = (uses_unnamed_first, self.unnamed_parse.clone()) {
            self.push_parse_close(true, tag::PARSE_COMPLETE, None);
            self.queue_server(parse);
        }
    }

    fn default_read_only(&self) -> bool {
        self.settings
            .get("default_transaction_read_only")
            .is_some_and(|v| {
                matches!(
                    v.trim_matches('\'').to_ascii_lowercase().as_str(),
                    "on" | "true" | "1" | "yes"
                )
            })
    }

    fn plan_sql(&self, sql: &str) -> Plan {
        let classification = self.shared.classifier.classify(sql, &self.catalog_now);
        self.plan_classified(classification, sql)
    }

    /// The plan of `sql`, classified as `classification`.
    fn plan_classified(&self, classification: Arc<Classification>, sql: &str) -> Plan {
        let read_only = self.default_read_only();
        // A client mostly sends one shape again (texts differing only in numbers share a
        // classification, and nothing in a plan depends on those numbers).
        if let Some(memo) = &*self.plan_memo.borrow() {
            if Arc::ptr_eq(&memo.classification, &classification) && memo.read_only == read_only {
                return memo.plan.clone();
            }
        }
        let planned = plan(&classification, sql, read_only);
        *self.plan_memo.borrow_mut() = Some(Box::new(PlanMemo {
            classification,
            read_only,
            plan: planned.clone(),
        }));
        planned
    }

    /// Plans a Bind of a named statement, from the classification it keeps.
    fn plan_statement(&self, statement: &ClientStatement) -> Plan {
        let catalog = &self.catalog_now;
        let classification = statement.classification(catalog.generation(), |sql| {
            self.shared.classifier.classify(sql, catalog)
        });
        self.plan_classified(classification, &statement.sql)
    }

    /// Plans the collected batch: every Parse's SQL and every Bind's statement count.
    fn plan_batch(&self) -> Plan {
        let mut combined: Option<Plan> = None;
        let mut unnamed: Option<Plan> = None;
        for frame in &self.batch {
            let p = match frame.tag {
                tag::PARSE => match view::parse_message(frame.body()) {
                    Some(m) => {
                        let p = self.plan_sql(m.query);
                        if m.statement.is_empty() {
                            unnamed = Some(p.clone());
                        }
                        Some(p)
                    }
                    None => None,
                },
                tag::BIND => match view::bind_message(frame.body()) {
                    Some(b) if b.statement.is_empty() => unnamed.clone(),
                    Some(b) => self
                        .statements
                        .get(b.statement)
                        .map(|s| self.plan_statement(&s)),
                    None => None,
                },
                _ => None,
            };
            if let Some(p) = p {
                match combined.as_mut() {
                    Some(c) => c.merge(p),
                    None => combined = Some(p),
                }
            }
        }
        let mut plan = combined.unwrap_or_else(Plan::read);
        // Only a simple Query can be answered locally.
        plan.lone_begin = None;
        plan.lone_end = None;
        plan.lone_deallocate = None;
        plan
    }

    /// A batch of named Parse messages and a Sync (libpq's PQprepare) needs no server: the
    /// statements are recorded and prepared on whichever connection first runs them, and the
    /// client gets its ParseCompletes now. A client that prepares while other clients hold
    /// every server connection in open transactions therefore never waits on them (pgbench
    /// prepares synchronously, blocking all of its clients). A syntax error in such a
    /// statement surfaces at its first Bind instead.
    fn answer_prepare_locally(&mut self) -> bool {
        let Some((last, parses)) = self.batch.split_last() else {
            return false;
        };
        let parses_only = last.tag == tag::SYNC
            && !parses.is_empty()
            && parses.iter().all(|f| {
                f.tag == tag::PARSE
                    && view::parse_message(f.body()).is_some_and(|p| !p.statement.is_empty())
            });
        if !parses_only {
            return false;
        }
        let frames = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let mut out = BytesMut::new();
        for frame in &frames {
            if let Some(parse) = view::parse_message(frame.body()) {
                self.statements.define(&parse);
                build::parse_complete(&mut out);
            }
        }
        self.queue_client(out.freeze());
        self.queue_ready();
        true
    }

    /// DEALLOCATE of a statement the client prepared through the protocol: it lives on the
    /// servers under another name, so the client's name is forgotten here and answered here.
    fn deallocate_locally(&mut self, name: Option<&str>) -> bool {
        match name {
            None if !self.pinned => {
                self.statements.clear();
                self.sql_statements.clear();
                self.queue_local_complete("DEALLOCATE ALL");
                true
            }
            Some(n)
                if self.statements.remove(n).is_some()
                    || self.sql_statements.remove(n).is_some() =>
            {
                self.queue_local_complete("DEALLOCATE");
                true
            }
            _ => false,
        }
    }

    /// Answers a statement without a server: CommandComplete and ReadyForQuery.
    fn queue_local_complete(&mut self, command_tag: &str) {
        let mut out = BytesMut::new();
        build::command_complete(&mut out, command_tag);
        self.queue_client(out.freeze());
        self.queue_ready();
    }

    /// Sends one client message to the attached server inside a transaction or batch.
    fn forward(&mut self, frame: Frame) {
        self.keep_for_replay(&frame.bytes);
        match frame.tag {
            tag::QUERY | tag::FUNCTION_CALL => {
                let effects = match frame.tag {
                    tag::QUERY => {
                        let plan = view::query_text(frame.body()).map(|sql| self.plan_sql(sql));
                        if let Some(p) = &plan {
                            if p.pin && !self.pinned {
                                self.pinned = true;
                                self.shared.metrics.pinned_clients.inc();
                            }
                            self.prepare_sql_statements(p);
                        }
                        plan.map(|mut p| Effects::of(&mut p)).unwrap_or_default()
                    }
                    _ => Effects {
                        writes: true,
                        schema_may_change: true,
                        ..Effects::default()
                    },
                };
                self.queue_server(frame.bytes);
                self.owe_ready(effects, false);
            }
            tag::SYNC if self.copy_in => self.queue_server(frame.bytes),
            tag::SYNC => {
                self.extended_open = false;
                self.queue_server(frame.bytes);
                let effects = std::mem::take(&mut self.tx_effects);
                self.owe_ready(effects, true);
            }
            _ => {
                if frame.tag == tag::BIND {
                    // What a statement bound inside a transaction writes is known from its text;
                    // the commit invalidates it.
                    if let Some(mut p) = self.bound_statement_plan(&frame) {
                        self.tx_effects.absorb(Effects::of(&mut p));
                    }
                }
                self.forward_extended(frame)
            }
        }
    }

    /// The plan of the statement a Bind names (the client's named statement, or its last
    /// unnamed one).
    fn bound_statement_plan(&self, bind: &Frame) -> Option<Plan> {
        let b = view::bind_message(bind.body())?;
        if b.statement.is_empty() {
            let parse = self.unnamed_parse.as_ref()?;
            let m = view::parse_message(parse.get(5..)?)?;
            return Some(self.plan_sql(m.query));
        }
        let stmt = self.statements.get(b.statement)?;
        Some(self.plan_sql(&stmt.sql))
    }

    /// Sends one extended-protocol message, under the server-side statement names.
    fn forward_extended(&mut self, frame: Frame) {
        self.extended_open = true;
        match frame.tag {
            tag::PARSE => {
                let Some(parse) = view::parse_message(frame.body()) else {
                    self.push_parse_close(false, tag::PARSE_COMPLETE, None);
                    return self.queue_server(frame.bytes);
                };
                if parse.statement.is_empty() {
                    self.unnamed_parse = Some(frame.bytes.clone());
                    self.push_parse_close(false, tag::PARSE_COMPLETE, None);
                    return self.queue_server(frame.bytes);
                }
                let stmt = self.statements.define(&parse);
                if self.server_has(&stmt.server_name) {
                    // Another client's (or an earlier) copy: replace it so the client's
                    // ParseComplete comes from a real Parse, in order.
                    let mut close = BytesMut::new();
                    build::close_statement(&mut close, &stmt.server_name);
                    self.push_parse_close(
                        true,
                        tag::CLOSE_COMPLETE,
                        Some(stmt.server_name.clone()),
                    );
                    self.queue_server(close.freeze());
                }
                self.note_prepared(&stmt.server_name);
                self.push_parse_close(false, tag::PARSE_COMPLETE, Some(stmt.server_name.clone()));
                self.queue_server(stmt.parse.clone());
            }
            tag::BIND => {
                let stmt = view::bind_message(frame.body())
                    .filter(|b| !b.statement.is_empty())
                    .and_then(|b| self.statements.get(b.statement));
                match stmt {
                    Some(stmt) => {
                        self.ensure_prepared(&stmt);
                        if let Some(b) = view::bind_message(frame.body()) {
                            self.queue_server(rewrite_bind(b.portal, &stmt.server_name, b.rest));
                        }
                    }
                    // Unknown names go as they are: the server answers "does not exist".
                    None => self.queue_server(frame.bytes),
                }
            }
            tag::DESCRIBE => {
                let stmt = view::target_message(frame.body())
                    .filter(|t| t.kind == b'S' && !t.name.is_empty())
                    .and_then(|t| self.statements.get(t.name));
                match stmt {
                    Some(stmt) => {
                        self.ensure_prepared(&stmt);
                        self.queue_server(rewrite_target(tag::DESCRIBE, b'S', &stmt.server_name));
                    }
                    None => self.queue_server(frame.bytes),
                }
            }
            tag::CLOSE => {
                let target = view::target_message(frame.body());
                let stmt = target
                    .filter(|t| t.kind == b'S' && !t.name.is_empty())
                    .and_then(|t| self.statements.remove(t.name));
                match stmt {
                    Some(stmt) => {
                        // Other clients may share the server-side statement, so it stays
                        // prepared; closing a name that never exists earns the client its
                        // CloseComplete in order.
                        drop(stmt);
                        self.push_parse_close(false, tag::CLOSE_COMPLETE, None);
                        let mut out = BytesMut::new();
                        build::close_statement(&mut out, NEVER_PREPARED);
                        self.queue_server(out.freeze());
                    }
                    None => {
                        self.push_parse_close(false, tag::CLOSE_COMPLETE, None);
                        self.queue_server(frame.bytes);
                    }
                }
            }
            _ => self.queue_server(frame.bytes),
        }
    }

    fn server_has(&self, server_name: &str) -> bool {
        self.server
            .as_ref()
            .is_some_and(|a| a.conn.conn_ref().statements.contains(server_name))
    }

    /// Records a statement as prepared on the attached connection, closing the least recently
    /// used one when the connection holds too many.
    fn note_prepared(&mut self, server_name: &str) {
        let victim = match self.server.as_mut() {
            Some(a) => a.conn.conn().statements.insert(server_name, &[]),
            None => None,
        };
        if let Some(victim) = victim {
            let mut close = BytesMut::new();
            build::close_statement(&mut close, &victim);
            self.push_parse_close(true, tag::CLOSE_COMPLETE, Some(victim));
            self.queue_server(close.freeze());
        }
    }

    /// Prepares the client's statement on the attached connection if it lacks it.
    fn ensure_prepared(&mut self, stmt: &ClientStatement) {
        let prepared = self
            .server
            .as_mut()
            .is_some_and(|a| a.conn.conn().statements.touch(&stmt.server_name));
        if prepared {
            return;
        }
        self.note_prepared(&stmt.server_name);
        self.push_parse_close(true, tag::PARSE_COMPLETE, Some(stmt.server_name.clone()));
        self.queue_server(stmt.parse.clone());
    }

    fn push_parse_close(&mut self, own: bool, kind: u8, statement: Option<String>) {
        self.parse_close.push_back(ParseClose {
            batch: self.sent_batches,
            own,
            kind,
            statement,
        });
    }

    /// Queues a query of pgrelay's own; its replies are not forwarded.
    fn send_own_query(&mut self, sql: &str, kind: Own) {
        let mut out = BytesMut::new();
        build::query(&mut out, sql);
        self.queue_server(out.freeze());
        self.replies.push_back(Reply::Own(kind));
        self.sent_batches += 1;
    }

    fn owe_ready(&mut self, effects: Effects, sync: bool) {
        self.owe_ready_since(effects, sync, Instant::now());
    }

    /// `owe_ready` for a unit sent at `since`.
    fn owe_ready_since(&mut self, effects: Effects, sync: bool, since: Instant) {
        self.replies.push_back(Reply::Client {
            since,
            effects,
            sync,
        });
        self.sent_batches += 1;
    }

    /// Takes a server connection for the client's next unit, as routing decides, when the
    /// chosen server's pool has an idle connection: the common case, done without a future,
    /// a wait or a second look at the topology. Otherwise `attach` must do it, and gets the
    /// round-robin turn this took, so it makes the same choice (a replica with no idle
    /// connection yet is not passed over for one that has).
    fn attach_now(&mut self, plan: &Plan, now: Instant) -> Result<(), Option<usize>> {
        let mut round_robin = None;
        if *self.shared.paused.borrow() {
            return Err(round_robin);
        }
        let config = self.config();
        let snapshot = Arc::clone(self.topology.load());
        let choice = self.choose_server(plan, &snapshot, &config, &[], &mut round_robin, now);
        let (host, role) = match choice.target {
            Target::Leader => match snapshot.leader() {
                Some(l) => (&l.host, Role::Leader),
                None => return Err(round_robin),
            },
            Target::Replica(i) => (&snapshot.servers[i].host, Role::Replica),
            Target::Refuse => return Err(round_robin),
        };
        let pool = self
            .pools
            .get(&self.shared, host, &self.user, &self.database);
        let Some(conn) = pool.try_checkout(now) else {
            return Err(round_robin);
        };
        self.count_reroute(choice.rerouted);
        self.attached(conn, role, choice.reason, Duration::ZERO);
        Ok(())
    }

    /// Where routing sends the unit now, given the servers already tried (`excluded`). A
    /// choice among replicas takes the round-robin turn in `round_robin`, or a new one (left
    /// there).
    fn choose_server(
        &mut self,
        plan: &Plan,
        snapshot: &Snapshot,
        config: &Config,
        excluded: &[HostAddr],
        round_robin: &mut Option<usize>,
        now: Instant,
    ) -> Choice {
        let min_lsn = match config.cluster.consistency {
            Consistency::ReadYourWrites => self.last_commit_lsn,
            Consistency::Eventual => None,
        };
        let wants_replica = matches!(plan.need, Need::Read | Need::ReadOnlyTransaction)
            && plan.hint != Some(RouteHint::Leader);
        if !wants_replica {
            // Routing sends this to the leader whatever the replicas are.
            let view = route::View {
                candidates: &[],
                replicas_up: false,
                lagging_reads: config.cluster.lagging_reads,
                round_robin: 0,
            };
            let decision = route::route(plan.need, plan.hint, &view);
            return Choice {
                target: decision.target,
                reason: decision.reason,
                rerouted: None,
            };
        }
        let bans = &self.shared.bans;
        let usable = |i: &usize| {
            let host = &snapshot.servers[*i].host;
            !excluded.contains(host) && !bans.is_banned(host, now)
        };
        // The session's list, refilled: no allocation per read.
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        for index in snapshot.read_candidates(min_lsn).filter(usable) {
            let host = &snapshot.servers[index].host;
            let pool = self
                .pools
                .get(&self.shared, host, &self.user, &self.database);
            candidates.push(Candidate {
                index,
                outstanding: pool.active_on_host(),
            });
        }
        let view = route::View {
            candidates: &candidates,
            replicas_up: snapshot.replicas().next().is_some(),
            lagging_reads: config.cluster.lagging_reads,
            // Advanced only when there is a choice, so a client alternating writes and
            // reads still spreads its reads.
            round_robin: if candidates.len() > 1 {
                *round_robin
                    .get_or_insert_with(|| self.shared.round_robin.fetch_add(1, Ordering::Relaxed))
            } else {
                0
            },
        };
        let decision = route::route(plan.need, plan.hint, &view);
        self.candidates = candidates;
        let rerouted = match decision.reason {
            Reason::Lag
                if min_lsn.is_some() && snapshot.read_candidates(None).any(|i| usable(&i)) =>
            {
                Some("read_your_writes")
            }
            Reason::Lag if !excluded.is_empty() => Some("banned"),
            Reason::Lag => Some("lag"),
            Reason::Fallback => Some("no_replica"),
            _ => None,
        };
        Choice {
            target: decision.target,
            reason: decision.reason,
            rerouted,
        }
    }

    fn count_reroute(&mut self, rerouted: Option<&'static str>) {
        if let Some(why) = rerouted {
            let metrics = &self.shared.metrics;
            inc_remembered(&mut self.reroute_counter, why, || {
                metrics.reads_rerouted.with_label_values(&[why])
            });
        }
    }

    /// Takes a server connection for the client's next unit when `attach_now` could not: it
    /// waits while pgrelay is paused, for a free slot, for a new connection, or for a leader
    /// to be known, and routes around replicas that fail. Callers box this future (and the
    /// other rare, large ones): awaited inline, its size would be part of every idle session's
    /// task.
    async fn attach(
        &mut self,
        plan: &Plan,
        mut round_robin: Option<usize>,
    ) -> Result<(), FrontendError> {
        self.registered.set_state(ClientState::Waiting);
        crate::admin::console::wait_while_paused(&self.shared).await;
        let started = Instant::now();
        let config = self.shared.config.load_full();
        let mut excluded: Vec<HostAddr> = Vec::new();
        let (conn, role, reason) = loop {
            let snapshot = Arc::clone(self.topology.load());
            let choice = self.choose_server(
                plan,
                &snapshot,
                &config,
                &excluded,
                &mut round_robin,
                Instant::now(),
            );
            // A replica that failed is left out and the next choice takes a new turn.
            round_robin = None;
            self.count_reroute(choice.rerouted);
            match choice.target {
                Target::Leader => {
                    let conn =
                        checkout_leader(&self.shared, &self.user, &self.database, &mut self.pools)
                            .await?;
                    break (conn, Role::Leader, choice.reason);
                }
                Target::Refuse => {
                    return Err(FrontendError::NoServer {
                        reason:
                            "no replica is within max_replica_lag and lagging_reads = \"error\""
                                .into(),
                    })
                }
                Target::Replica(i) => {
                    let host = &snapshot.servers[i].host;
                    let pool = self
                        .pools
                        .get(&self.shared, host, &self.user, &self.database);
                    match checkout(&self.shared, &pool).await {
                        Ok(conn) => break (conn, Role::Replica, choice.reason),
                        Err(e) => {
                            tracing::warn!(host = %host, error = %e, "replica unavailable; banning it and routing elsewhere");
                            self.shared
                                .bans
                                .ban(host, Instant::now() + config.cluster.ban_time);
                            excluded.push(host.clone());
                        }
                    }
                }
            }
        };
        self.attached(conn, role, reason, started.elapsed());
        Ok(())
    }

    /// The client now holds `conn`: accounts for it and brings the connection's session
    /// settings in line with the client's.
    fn attached(&mut self, mut conn: PooledConn, role: Role, reason: Reason, waited: Duration) {
        self.shared.metrics.pool_wait.observe(waited.as_secs_f64());
        self.count_route(&role, reason);
        self.registered.set_state(ClientState::Active);
        self.registered.set_server(Some(conn.host()));
        let c = conn.conn();
        self.cancel.hold(&c.host, c.process_id, c.secret_key);
        self.replay = (role == Role::Replica).then(|| std::mem::take(&mut self.replay_spare));
        self.replay_bytes = 0;
        let sync = self.settings.sync_sql(&mut c.applied);
        // The connection lends the session its read buffer while attached.
        self.sin = std::mem::take(&mut c.read_buf);
        self.sin.clear();
        self.s_passthrough = 0;
        self.server = Some(Attached { conn, role });
        if let Some(sql) = sync {
            self.send_own_query(&sql, Own::Settings);
        }
    }

    fn count_route(&mut self, role: &Role, reason: Reason) {
        let leader = matches!(role, Role::Leader);
        let metrics = &self.shared.metrics;
        inc_remembered(&mut self.route_counter, (leader, reason), || {
            let route = if leader { "leader" } else { "replica" };
            metrics.queries.with_label_values(&[route, reason.as_str()])
        });
    }

    /// Tells the client its unit could not run, keeping the protocol in step: a Query gets
    /// ErrorResponse and ReadyForQuery, a batch gets the error and ReadyForQuery for its Sync.
    fn refuse_unit(&mut self, waiting: &Waiting, error: &FrontendError) {
        self.registered.set_state(ClientState::Idle);
        let code = error
            .sqlstate()
            .unwrap_or(sqlstate::CONNECTION_FAILURE)
            .to_owned();
        tracing::warn!(user = self.user.name(), database = %self.database, error = %error, "no server for client");
        self.send_error(Severity::Error, &code, &error.client_message());
        match waiting {
            Waiting::Message(_) => self.queue_ready(),
            Waiting::Batch => {
                let synced = self.batch.iter().any(|f| f.tag == tag::SYNC);
                self.batch.clear();
                self.batch_bytes = 0;
                if synced {
                    self.queue_ready();
                } else {
                    self.skip_until_sync = true;
                }
            }
        }
    }

    /// Scans what the server sent: streams uninspected messages through, looks at the
    /// inspected ones, hides the replies to pgrelay's own messages.
    fn process_server_input(&mut self) {
        self.ready_at = None;
        let mut fwd = 0usize;
        loop {
            if self.s_passthrough > 0 {
                let take = self.s_passthrough.min(self.sin.len() - fwd);
                fwd += take;
                self.s_passthrough -= take;
                if self.s_passthrough > 0 {
                    break;
                }
                continue;
            }
            if self.ready_held_for_invalidation() {
                // What follows answers the client's next request: it must not overtake the
                // ReadyForQuery held for the invalidation (the relay loop resumes here after
                // delivering it).
                break;
            }
            let header = match peek_header(&self.sin, fwd, MAX_SERVER_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.flush_forward(fwd);
                    self.server_lost(&format!("server sent a bad message: {e}"));
                    return;
                }
            };
            let own = matches!(self.replies.front(), Some(Reply::Own(_)));
            if !own && fwd == 0 && self.replay.is_some() && header.tag == tag::NOTICE_RESPONSE {
                // A notice is not part of a read's answer (a replica shutting down sends one
                // before closing): the client gets it, and the read may still run elsewhere.
                if self.sin.len() < header.total_len {
                    self.sin.reserve(header.total_len - self.sin.len());
                    break;
                }
                let notice = self.sin.split_to(header.total_len).freeze();
                self.queue_client(notice);
                continue;
            }
            if !own && !inspected(header.tag) {
                self.s_passthrough = header.total_len;
                continue;
            }
            if self.sin.len() - fwd < header.total_len {
                self.sin.reserve(header.total_len - (self.sin.len() - fwd));
                break;
            }
            let body = fwd + 5..fwd + header.total_len;
            if header.tag == tag::ERROR_RESPONSE
                && fwd == 0
                && self.replay.is_some()
                && server_going_away(&self.sin[body.clone()])
            {
                // A replica shutting down answered before the client saw anything of this
                // read: run it elsewhere instead of passing the FATAL on.
                let reason = view::error_fields(&self.sin[body])
                    .message
                    .unwrap_or_else(|| "server is shutting down".to_owned());
                self.server_lost(&reason);
                return;
            }
            if self.on_server_message(header.tag, body) {
                fwd += header.total_len;
            } else {
                self.flush_forward(fwd);
                self.sin.advance(header.total_len);
                fwd = 0;
            }
        }
        self.flush_forward(fwd);
        self.finish_fill();
        self.maybe_release();
    }

    /// Reacts to one inspected server message; returns whether the client should see it.
    fn on_server_message(&mut self, t: u8, body: std::ops::Range<usize>) -> bool {
        let own = match self.replies.front() {
            Some(Reply::Own(kind)) => Some(*kind),
            _ => None,
        };
        match t {
            tag::READY_FOR_QUERY => {
                let status =
                    view::ready_status(&self.sin[body.clone()]).unwrap_or(TxStatus::InTransaction);
                self.batch_done();
                match self.replies.pop_front() {
                    Some(Reply::Own(kind)) => {
                        self.batch_failed = false;
                        if kind == Own::CommitLsn {
                            self.commit_lsn_known();
                        }
                        false
                    }
                    Some(Reply::Client { since, effects, .. }) => {
                        let now = Instant::now();
                        self.ready_at = Some(now);
                        self.shared
                            .metrics
                            .query_duration
                            .observe(now.saturating_duration_since(since).as_secs_f64());
                        let failed = std::mem::take(&mut self.batch_failed);
                        if let Some(fill) = self.fill.as_mut() {
                            if fill.done.is_none() {
                                // Bytes before this message in the buffer are forwarded (and
                                // collected) with it; the response ends where it starts.
                                let end = fill.capture.len() + (body.start - 5);
                                fill.done = Some((!failed && status == TxStatus::Idle, end));
                            }
                        }
                        self.unit_done(status, effects, failed);
                        self.tx = status;
                        // Held until the cache has forgotten what this write changed.
                        !self.held_ready
                    }
                    None => {
                        self.tx = status;
                        true
                    }
                }
            }
            tag::PARAMETER_STATUS => {
                let Some((name, value)) = view::parameter_status(&self.sin[body]) else {
                    return own.is_none();
                };
                let (name, value) = (name.to_owned(), value.to_owned());
                let on_replica =
                    matches!(self.server.as_ref().map(|a| &a.role), Some(Role::Replica));
                let followed = self.settings.follow_report(&name, &value);
                if let Some(a) = self.server.as_mut() {
                    let conn = a.conn.conn();
                    if followed {
                        if let Some(v) = self.settings.get(&name) {
                            conn.applied.insert(name.to_ascii_lowercase(), v.to_owned());
                        }
                    }
                    conn.params.insert(name, value);
                }
                // A replica's own parameters (in_hot_standby, ...) never reach the client:
                // it sees the leader's, as reported at login.
                own.is_none() && (!on_replica || followed)
            }
            tag::ERROR_RESPONSE => {
                self.batch_failed = true;
                self.drop_failed_batch();
                if let Some(kind) = own {
                    let fields = view::error_fields(&self.sin[body]);
                    tracing::warn!(user = self.user.name(), own = ?kind, code = ?fields.code, message = ?fields.message, "pgrelay's own query failed");
                    return false;
                }
                if let Some(code) = view::error_code(&self.sin[body]) {
                    self.shared.metrics.count_error(code);
                }
                true
            }
            tag::COMMAND_COMPLETE => {
                if own.is_none() {
                    self.last_was_commit = view::is_commit(&self.sin[body]);
                }
                own.is_none()
            }
            tag::PARSE_COMPLETE | tag::CLOSE_COMPLETE => match self.parse_close.front() {
                Some(pc) if pc.kind == t && pc.batch == self.done_batches => {
                    let pc = self.parse_close.pop_front();
                    !pc.is_some_and(|p| p.own)
                }
                _ => {
                    tracing::debug!(tag = %char::from(t), "unexpected completion from server; forwarding");
                    own.is_none()
                }
            },
            tag::COPY_IN_RESPONSE => {
                self.copy_in = true;
                if let Some(Reply::Client { sync: true, .. }) = self.replies.front() {
                    // COPY started by Execute: PostgreSQL ignores the Sync that followed it
                    // (and any until CopyDone), so that batch ends with the next Sync instead.
                    if let Some(Reply::Client { effects, .. }) = self.replies.pop_front() {
                        self.tx_effects.absorb(effects);
                    }
                    self.batch_done();
                    self.extended_open = true;
                }
                own.is_none()
            }
            tag::DATA_ROW if own == Some(Own::CommitLsn) => {
                if let Some(lsn) = view::first_column_text(&self.sin[body])
                    .and_then(crate::topology::snapshot::parse_lsn)
                {
                    self.commit_lsn_read = Some(lsn);
                    self.last_commit_lsn = Some(self.last_commit_lsn.map_or(lsn, |l| l.max(lsn)));
                }
                false
            }
            _ => own.is_none(),
        }
    }

    /// An ErrorResponse: the server skips the rest of this batch, so the Parse and Close
    /// completions it would have sent never come.
    fn drop_failed_batch(&mut self) {
        let batch = self.done_batches;
        let mut dropped = Vec::new();
        self.parse_close.retain(|pc| {
            if pc.batch == batch {
                dropped.push((pc.kind, pc.statement.clone()));
                false
            } else {
                true
            }
        });
        if let Some(a) = self.server.as_mut() {
            let statements = &mut a.conn.conn().statements;
            for (kind, name) in dropped {
                match (kind, name) {
                    (tag::PARSE_COMPLETE, Some(n)) => statements.remove(&n),
                    (tag::CLOSE_COMPLETE, Some(n)) => {
                        statements.insert(&n, &[]);
                    }
                    _ => {}
                }
            }
        }
    }

    /// A ReadyForQuery ended the batch now being answered.
    fn batch_done(&mut self) {
        self.done_batches += 1;
        let done = self.done_batches;
        self.parse_close.retain(|pc| pc.batch >= done);
    }

    /// A client unit finished: apply its effects if it succeeded, and learn the commit LSN
    /// after a write when the client wants to read its own writes.
    fn unit_done(&mut self, status: TxStatus, effects: Effects, failed: bool) {
        match status {
            TxStatus::Idle => {
                let was_in_tx = self.tx != TxStatus::Idle;
                let mut done = effects;
                if was_in_tx {
                    let tx = std::mem::take(&mut self.tx_effects);
                    if self.last_was_commit && !failed {
                        let mut all = tx;
                        all.absorb(done);
                        done = all;
                    } else {
                        done = Effects::default();
                    }
                } else if failed {
                    done = Effects::default();
                }
                if done.schema_may_change {
                    self.shared.catalogs.request_refresh();
                }
                let Effects {
                    settings,
                    writes,
                    schema_may_change,
                    write_tables,
                } = done;
                self.apply_settings(settings);
                let on_leader = matches!(self.server.as_ref().map(|a| &a.role), Some(Role::Leader));
                if !(writes && on_leader) {
                    return;
                }
                let read_your_writes =
                    self.config_now.cluster.consistency == Consistency::ReadYourWrites;
                let invalidates =
                    self.shared.cache.is_some() && (schema_may_change || !write_tables.is_empty());
                if invalidates {
                    self.invalidate_after_commit = Some((write_tables, schema_may_change));
                    // With nothing else in flight, the client hears of its commit only once no
                    // cache can serve what it changed (from this pgrelay or any other).
                    self.held_ready = self.replies.is_empty();
                }
                if read_your_writes || invalidates {
                    self.commit_lsn_read = None;
                    self.send_own_query(COMMIT_LSN_SQL, Own::CommitLsn);
                }
            }
            TxStatus::InTransaction => {
                let mut effects = effects;
                if failed {
                    effects.settings.clear();
                }
                self.tx_effects.absorb(effects);
            }
            TxStatus::Failed => {}
        }
    }

    /// The LSN query after a commit answered (or failed): what the commit wrote can now be
    /// invalidated with that LSN.
    fn commit_lsn_known(&mut self) {
        if let Some((tables, whole_database)) = self.invalidate_after_commit.take() {
            self.pending_invalidation = Some(PendingInvalidation {
                tables,
                whole_database,
                write_lsn: self.commit_lsn_read.take(),
            });
        }
    }

    /// A commit's ReadyForQuery waits for its invalidation: server input after it stays
    /// unread until then.
    fn ready_held_for_invalidation(&self) -> bool {
        self.held_ready && self.pending_invalidation.is_some()
    }

    /// Tells the cache (and through it every pgrelay sharing it) what a commit changed, then
    /// lets the client see the commit's ReadyForQuery if it was held for this.
    async fn deliver_invalidation(&mut self) {
        let Some(inv) = self.pending_invalidation.take() else {
            return;
        };
        if let Some(cache) = &self.shared.cache {
            // Failures are counted, logged and queued for redelivery by the cache itself.
            let _ = if inv.whole_database {
                cache
                    .invalidate_database(&self.database, inv.write_lsn)
                    .await
            } else {
                cache
                    .invalidate(&self.database, &inv.tables, inv.write_lsn)
                    .await
            };
        }
        if std::mem::take(&mut self.held_ready) {
            self.queue_ready();
        }
    }

    fn apply_settings(&mut self, changes: Vec<SettingChange>) {
        for change in changes {
            let applied = self.server.as_mut().map(|a| &mut a.conn.conn().applied);
            match change {
                SettingChange::Set(name, value) => {
                    self.settings.set_sql(&name, &value);
                    if let Some(applied) = applied {
                        applied.insert(name.to_ascii_lowercase(), value);
                    }
                }
                SettingChange::Reset(name) => {
                    self.settings.remove(&name);
                    if let Some(applied) = applied {
                        applied.remove(&name.to_ascii_lowercase());
                    }
                }
                SettingChange::ResetAll => {
                    self.settings = self.startup_settings.clone();
                    if let Some(applied) = applied {
                        applied.clear();
                    }
                }
                SettingChange::DiscardAll => {
                    self.settings = self.startup_settings.clone();
                    self.statements.clear();
                    self.sql_statements.clear();
                    if let Some(a) = self.server.as_mut() {
                        let conn = a.conn.conn();
                        conn.applied.clear();
                        conn.statements.clear();
                        conn.sql_prepared.clear();
                    }
                }
            }
        }
    }

    fn flush_forward(&mut self, fwd: usize) {
        if fwd > 0 {
            // The client has seen part of the answer: a replay could duplicate it.
            self.stop_replay();
            if let Some(f) = self.fill.as_mut() {
                if f.capture.len() + fwd > f.max_bytes.saturating_add(64) {
                    // Too large to store: stop collecting now rather than hold it all.
                    self.fill = None;
                    if let Some(cache) = &self.shared.cache {
                        cache.count_skipped_fill(crate::cache::FillOutcome::TooLarge);
                    }
                } else {
                    f.capture.extend_from_slice(&self.sin[..fwd]);
                }
            }
            let chunk = self.sin.split_to(fwd).freeze();
            self.to_client_len += chunk.len();
            self.to_client.push_back(chunk);
        }
    }

    /// Returns the server connection to its pool once the client's unit of work is over.
    fn maybe_release(&mut self) {
        if self.pinned {
            return;
        }
        let idle = self.replies.is_empty()
            && self.tx == TxStatus::Idle
            && !self.extended_open
            && self.to_server.is_empty()
            && self.sin.is_empty()
            && self.s_passthrough == 0;
        if !idle {
            return;
        }
        if let Some(mut a) = self.server.take() {
            // An idle client keeps no server-side buffer: the connection takes it back.
            let buffer = std::mem::take(&mut self.sin);
            if buffer.capacity() <= KEPT_READ_BUFFER {
                a.conn.conn().read_buf = buffer;
            }
            // The clock was read for the ReadyForQuery that ended the unit, just now.
            a.conn
                .release_at(self.ready_at.take().unwrap_or_else(Instant::now));
            self.cancel.release();
            self.registered.set_server(None);
            self.registered.set_state(ClientState::Idle);
            self.stop_replay();
            self.sin_chunk = SMALL_READ;
            self.shared.metrics.transactions.inc();
        }
    }

    /// The server went away under the client: tell the client, in step with the protocol,
    /// and drop the connection.
    fn server_lost(&mut self, reason: &str) {
        if self.replay_elsewhere(reason) {
            return;
        }
        let Some(a) = self.server.take() else {
            return;
        };
        tracing::warn!(user = self.user.name(), host = %a.conn.host(), reason, "server connection lost");
        self.drop_failed_server(a);
        if let Some((tables, whole_database)) = self.invalidate_after_commit.take() {
            // The commit happened; only its LSN is unknown.
            self.pending_invalidation = Some(PendingInvalidation {
                tables,
                whole_database,
                write_lsn: None,
            });
        }
        let owed = self
            .replies
            .iter()
            .filter(|r| matches!(r, Reply::Client { .. }))
            .count();
        let was_busy = owed > 0 || self.tx != TxStatus::Idle || self.extended_open;
        self.replies.clear();
        self.done_batches = self.sent_batches;
        if self.pinned {
            self.send_error(Severity::Fatal, sqlstate::CONNECTION_FAILURE, reason);
            self.closing = true;
            return;
        }
        if was_busy {
            self.send_error(Severity::Error, sqlstate::CONNECTION_FAILURE, reason);
        }
        self.tx = TxStatus::Idle;
        self.tx_effects = Effects::default();
        for _ in 0..owed {
            self.queue_ready();
        }
        if self.extended_open {
            self.extended_open = false;
            self.skip_until_sync = true;
        }
    }

    /// Forgets a failed server connection: bans its host if it is a replica, closes it, and
    /// clears everything buffered to or from it.
    fn drop_failed_server(&mut self, a: Attached) {
        if a.role == Role::Replica {
            let ban_time = self.config_now.cluster.ban_time;
            self.shared
                .bans
                .ban(a.conn.host(), Instant::now() + ban_time);
        }
        a.conn.discard();
        self.cancel.release();
        self.registered.set_server(None);
        self.registered.set_state(ClientState::Idle);
        self.to_server.clear();
        self.to_server_len = 0;
        self.sin.clear();
        self.s_passthrough = 0;
        self.parse_close.clear();
        self.copy_in = false;
        self.fill = None;
    }

    /// Reads a replica had not begun to answer when it failed are run again: the connection is
    /// dropped, the replica banned, and every client message sent through it goes back in
    /// front of the unread client input, to be routed anew. Only for autocommit units (a
    /// transaction's BEGIN is not among the kept messages). Returns whether it did so.
    fn replay_elsewhere(&mut self, reason: &str) -> bool {
        let on_replica = matches!(self.server.as_ref().map(|a| &a.role), Some(Role::Replica));
        if !on_replica
            || self.pinned
            || self.tx != TxStatus::Idle
            || self.deferred_begin.is_some()
            || self.copy_in
            || self.replay.as_ref().is_none_or(|kept| kept.is_empty())
        {
            return false;
        }
        let (Some(kept), Some(a)) = (self.replay.take(), self.server.take()) else {
            return false;
        };
        tracing::warn!(user = self.user.name(), host = %a.conn.host(), reason, "replica failed before answering; running the read elsewhere");
        self.shared
            .metrics
            .reads_rerouted
            .with_label_values(&["replica_failed"])
            .inc();
        self.drop_failed_server(a);
        self.replies.clear();
        self.done_batches = self.sent_batches;
        self.extended_open = false;
        self.batch_failed = false;
        self.tx_effects = Effects::default();
        let kept_len: usize = kept.iter().map(Bytes::len).sum();
        let mut input = BytesMut::with_capacity(kept_len + self.cin.len());
        for message in &kept {
            input.extend_from_slice(message);
        }
        input.extend_from_slice(&self.cin);
        self.cin = input;
        true
    }

    fn send_error(&mut self, severity: Severity, code: &str, text: &str) {
        self.shared.metrics.count_error(code);
        let mut out = BytesMut::new();
        build::error_response(&mut out, severity, code, text);
        self.queue_client(out.freeze());
    }

    fn queue_ready(&mut self) {
        let mut out = BytesMut::new();
        build::ready_for_query(&mut out, self.tx);
        self.queue_client(out.freeze());
    }

    fn queue_client(&mut self, bytes: Bytes) {
        self.to_client_len += bytes.len();
        self.to_client.push_back(bytes);
    }

    fn queue_server(&mut self, bytes: Bytes) {
        self.to_server_len += bytes.len();
        self.to_server.push_back(bytes);
    }

    /// Gives the server connection back (after a reset in session mode) or closes it.
    async fn finish(&mut self) {
        if self.pinned && self.pool_mode == PoolMode::Transaction {
            self.shared.metrics.pinned_clients.dec();
        }
        let Some(a) = self.server.take() else {
            return;
        };
        self.cancel.release();
        let clean = self.is_between_transactions()
            && self.to_server.is_empty()
            && self.sin.is_empty()
            && self.s_passthrough == 0;
        if !clean {
            a.conn.discard();
            return;
        }
        if self.pinned {
            let reset = self.config_now.cluster.server_reset_query.clone();
            a.conn.release_after_reset(&reset).await;
        } else {
            a.conn.release();
        }
    }
}

/// The next read size: double it while reads fill the space offered, else keep it.
fn next_chunk(current: usize, read: usize, offered: usize) -> usize {
    if read >= offered {
        (current * 2).min(MAX_READ)
    } else {
        current
    }
}

/// Increments the counter for `labels`: the one remembered in `last` when its labels are the
/// same (a client's units usually count in one series), else the one `resolve` looks up, which
/// is then remembered.
fn inc_remembered<L: PartialEq>(
    last: &mut Option<(L, IntCounter)>,
    labels: L,
    resolve: impl FnOnce() -> IntCounter,
) {
    match last {
        Some((l, counter)) if *l == labels => counter.inc(),
        _ => {
            let counter = resolve();
            counter.inc();
            *last = Some((labels, counter));
        }
    }
}

/// At most this many queued chunks go into one vectored write.
const MAX_IO_SLICES: usize = 8;

/// The queued chunks as I/O slices, without allocating, and how many slots are used (the
/// rest are empty).
fn io_slices(queue: &VecDeque<Bytes>) -> ([std::io::IoSlice<'_>; MAX_IO_SLICES], usize) {
    let mut slices = [std::io::IoSlice::new(&[]); MAX_IO_SLICES];
    if queue.is_empty() {
        return (slices, 0);
    }
    for (slot, chunk) in slices.iter_mut().zip(queue.iter()) {
        *slot = std::io::IoSlice::new(chunk);
    }
    (slices, queue.len().min(MAX_IO_SLICES))
}

fn advance_queue(queue: &mut VecDeque<Bytes>, len: &mut usize, mut n: usize) {
    *len -= n;
    while n > 0 {
        let Some(front) = queue.front_mut() else {
            return;
        };
        if n >= front.len() {
            n -= front.len();
            queue.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

/// Checks out a connection from `pool`, counting a failure to reach its server.
async fn checkout(shared: &Shared, pool: &Arc<Pool>) -> Result<PooledConn, FrontendError> {
    let wait = shared.config.load().server.query_wait_timeout;
    let conn = pool.checkout(wait).await;
    if let Err(PoolError::Backend(e)) = &conn {
        if !e.is_refusal() {
            shared
                .metrics
                .server_connect_failures
                .with_label_values(&[&pool.key.host.to_string()])
                .inc();
        }
    }
    Ok(conn?)
}

/// The pools one client has used, by host. A checkout through it needs no lookup in the
/// shared map (pools are never removed from `Pools`, so an entry never goes stale).
#[derive(Default)]
pub struct PoolCache {
    entries: Vec<(HostAddr, Arc<Pool>)>,
}

impl PoolCache {
    fn get(
        &mut self,
        shared: &Shared,
        host: &HostAddr,
        user: &UserEntry,
        database: &str,
    ) -> Arc<Pool> {
        if let Some((_, pool)) = self.entries.iter().find(|(h, _)| h == host) {
            return Arc::clone(pool);
        }
        let key = PoolKey {
            host: host.clone(),
            user: user.server_user.clone(),
            database: database.to_owned(),
        };
        let pool = shared
            .pools
            .get(&key, || current_server_password(shared, user));
        self.entries.push((host.clone(), Arc::clone(&pool)));
        pool
    }
}

/// The password to log in to the servers as `user`'s server role: the running config's (a
/// reload may have changed it since the client logged in), or the one from the client's login
/// if the config no longer has that user.
fn current_server_password(shared: &Shared, user: &UserEntry) -> Option<String> {
    match shared.users.load().get(user.name()) {
        Some(now) if now.server_user == user.server_user => now.server_password.clone(),
        _ => user.server_password.clone(),
    }
}

/// Checks out a connection to the current leader, waiting up to `failover_timeout` for one
/// to be known.
pub async fn checkout_leader(
    shared: &Shared,
    user: &UserEntry,
    database: &str,
    pools: &mut PoolCache,
) -> Result<PooledConn, FrontendError> {
    let failover_timeout = shared.config.load().cluster.failover_timeout;
    let deadline = Instant::now() + failover_timeout;
    loop {
        let snapshot = shared.topology.snapshot();
        let now = Instant::now();
        if let Some(l) = snapshot.leader() {
            let leader = l.host.clone();
            let pool = pools.get(shared, &leader, user, database);
            match checkout(shared, &pool).await {
                // The leader the snapshot names cannot be reached: it may have just died,
                // before the monitor noticed. Wait for the next snapshot instead of failing
                // the write, as long as failover_timeout allows.
                Err(FrontendError::Pool(PoolError::Backend(e)))
                    if !e.is_refusal() && Instant::now() < deadline =>
                {
                    tracing::info!(host = %leader, error = %e, "leader unreachable; waiting for the topology to change");
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = tokio::time::timeout(left, shared.topology.changed()).await;
                    continue;
                }
                // The topology may have changed while this waited for a connection: a server
                // that stopped being the leader meanwhile (fenced, demoted) gets no write.
                Ok(conn)
                    if shared
                        .topology
                        .snapshot()
                        .leader()
                        .is_none_or(|l| l.host != leader) =>
                {
                    tracing::info!(host = %leader, "the leader changed during checkout; trying again");
                    conn.discard();
                    continue;
                }
                other => return other,
            }
        }
        if now >= deadline {
            let reason = if snapshot.split_brain {
                "no leader available: more than one server claims to be the leader".to_owned()
            } else {
                format!(
                    "no leader available: none of {} servers is a reachable primary",
                    snapshot.servers.len()
                )
            };
            return Err(FrontendError::NoServer { reason });
        }
        let _ = tokio::time::timeout(deadline - now, shared.topology.changed()).await;
    }
}
