//! One server connection: connect, authenticate, learn the server's parameters, reset, cancel.
//!
//! It owns the socket to one PostgreSQL server and what that server told us at startup
//! (ParameterStatus, BackendKeyData). It knows nothing about clients: which client uses it and
//! what that client is doing is the frontend's business.

pub mod statements;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::HostAddr;
use crate::net::Socket;
use crate::protocol::frame::split_frame;
use crate::protocol::view::{self, ErrorFields};
use crate::protocol::{sqlstate, tag, Frame, TxStatus};
use statements::StatementCache;

/// Server messages during startup are small; anything larger is a protocol error.
const MAX_STARTUP_MESSAGE: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("could not connect to server {host}: {source}")]
    Connect { host: String, source: io::Error },
    #[error("timed out connecting to server {host}")]
    ConnectTimeout { host: String },
    #[error("server {host}: {}", .fields.message.as_deref().unwrap_or("error"))]
    Server { host: String, fields: ErrorFields },
    #[error(
        "server {host} asks for {method} authentication, which pgrelay cannot do for user {user:?}"
    )]
    UnsupportedAuth {
        host: String,
        method: &'static str,
        user: String,
    },
    #[error("server {host} asks for a password but none is configured for user {user:?}")]
    NoPassword { host: String, user: String },
    #[error("protocol error from server {host}: {reason}")]
    Protocol { host: String, reason: String },
    #[error("lost connection to server {host}: {source}")]
    Io { host: String, source: io::Error },
    #[error("server {host} closed the connection")]
    Closed { host: String },
    #[error("cannot secure the connection to server {host}: {source}")]
    Tls {
        host: String,
        source: crate::tls::UpgradeError,
    },
}

impl BackendError {
    /// The SQLSTATE a client should see for this failure.
    pub fn sqlstate(&self) -> &str {
        match self {
            BackendError::Server { fields, .. } => fields
                .code
                .as_deref()
                .unwrap_or(sqlstate::CONNECTION_FAILURE),
            BackendError::UnsupportedAuth { .. } | BackendError::NoPassword { .. } => {
                sqlstate::INVALID_AUTHORIZATION
            }
            BackendError::Protocol { .. } => sqlstate::PROTOCOL_VIOLATION,
            _ => sqlstate::CONNECTION_FAILURE,
        }
    }

    /// Whether the server itself refused us (bad database, bad role): retrying another server
    /// of the same cluster will not help, and the host is not unhealthy.
    pub fn is_refusal(&self) -> bool {
        matches!(self, BackendError::Server { .. })
    }
}

/// What a server connection is opened with.
#[derive(Debug, Clone)]
pub struct ConnectOptions<'a> {
    pub host: &'a HostAddr,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub database: &'a str,
    pub connect_timeout: Duration,
    /// Extra startup parameters (application_name etc.).
    pub params: &'a [(String, String)],
    /// Bound of the connection's prepared-statement cache.
    pub max_prepared_statements: usize,
    /// `[cluster] tls`.
    pub tls: &'a crate::tls::ServerTls,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Session settings as (name, value as SQL text), sorted by name: what a client wants
/// (`frontend::settings::Settings`) and what pgrelay applied on a server connection, so a
/// connection that already matches a client is found with one comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingValues {
    values: Vec<(String, String)>,
}

impl SettingValues {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.values.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.position(name).ok().map(|i| self.values[i].1.as_str())
    }

    /// Records a setting (a new value replaces the old one).
    pub fn insert(&mut self, name: String, value: String) {
        match self.position(&name) {
            Ok(i) => self.values[i].1 = value,
            Err(i) => self.values.insert(i, (name, value)),
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.position(name) {
            self.values.remove(i);
        }
    }

    /// Forgets every setting (a connection back to its server defaults, or in an unknown
    /// state).
    pub fn clear(&mut self) {
        self.values.clear();
    }

    /// Every setting as (name, value), sorted by name.
    pub fn as_slice(&self) -> &[(String, String)] {
        &self.values
    }

    /// Makes these exactly `values` (sorted by name).
    pub fn replace(&mut self, values: &[(String, String)]) {
        // Reuses the strings already here (a client's settings are mostly alike).
        let kept = self.values.len().min(values.len());
        self.values.truncate(kept);
        for (mine, theirs) in self.values.iter_mut().zip(values) {
            mine.0.clone_from(&theirs.0);
            mine.1.clone_from(&theirs.1);
        }
        self.values.extend(values[kept..].iter().cloned());
    }
}

/// An authenticated connection to one server, idle at ReadyForQuery when handed out.
pub struct ServerConn {
    pub id: u64,
    pub host: HostAddr,
    stream: Socket,
    pub process_id: i32,
    pub secret_key: i32,
    /// ParameterStatus values the server reported, kept current as new ones arrive.
    pub params: HashMap<String, String>,
    /// Session settings pgrelay applied on behalf of clients (name → value as the client gave
    /// it), so the next client with the same settings needs no SET.
    pub applied: SettingValues,
    /// Protocol-level statements prepared on this connection (by server-side name).
    pub statements: StatementCache,
    /// SQL-level prepared statements on this connection: name → the PREPARE that made it.
    pub sql_prepared: HashMap<String, String>,
    pub created_at: Instant,
    pub last_used: Instant,
    /// The read buffer of the session holding this connection, kept between holders so a
    /// transaction does not allocate one.
    pub read_buf: BytesMut,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("id", &self.id)
            .field("host", &self.host.to_string())
            .field("process_id", &self.process_id)
            .finish()
    }
}

impl ServerConn {
    /// Connects and authenticates, within `connect_timeout` for the whole startup.
    pub async fn connect(opts: &ConnectOptions<'_>) -> Result<ServerConn, BackendError> {
        let host = opts.host.to_string();
        match tokio::time::timeout(opts.connect_timeout, Self::connect_inner(opts)).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::ConnectTimeout { host }),
        }
    }

    async fn connect_inner(opts: &ConnectOptions<'_>) -> Result<ServerConn, BackendError> {
        let host = opts.host.to_string();
        let stream = TcpStream::connect((opts.host.host.as_str(), opts.host.port))
            .await
            .map_err(|source| BackendError::Connect {
                host: host.clone(),
                source,
            })?;
        stream
            .set_nodelay(true)
            .map_err(|source| BackendError::Io {
                host: host.clone(),
                source,
            })?;
        let sock = socket2::SockRef::from(&stream);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10));
        // Keepalive only helps notice dead peers; failing to set it is not worth refusing.
        let _ = sock.set_tcp_keepalive(&keepalive);
        let stream = opts
            .tls
            .upgrade(stream, opts.host)
            .await
            .map_err(|source| BackendError::Tls {
                host: host.clone(),
                source,
            })?;

        let mut conn = ServerConn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            host: opts.host.clone(),
            stream,
            process_id: 0,
            secret_key: 0,
            params: HashMap::new(),
            applied: SettingValues::default(),
            statements: StatementCache::new(opts.max_prepared_statements),
            sql_prepared: HashMap::new(),
            created_at: Instant::now(),
            last_used: Instant::now(),
            read_buf: BytesMut::new(),
        };
        let mut out = BytesMut::new();
        let mut startup: Vec<(&str, &str)> = vec![("user", opts.user), ("database", opts.database)];
        for (k, v) in opts.params {
            startup.push((k.as_str(), v.as_str()));
        }
        postgres_protocol::message::frontend::startup_message(startup, &mut out).map_err(
            |source| BackendError::Io {
                host: host.clone(),
                source,
            },
        )?;
        conn.write_all(&out).await?;
        let mut buf = BytesMut::with_capacity(1024);
        conn.authenticate(opts, &mut buf).await?;
        loop {
            let frame = conn.read_startup_frame(&mut buf).await?;
            match frame.tag {
                tag::PARAMETER_STATUS => {
                    if let Some((k, v)) = view::parameter_status(frame.body()) {
                        conn.params.insert(k.to_owned(), v.to_owned());
                    }
                }
                tag::BACKEND_KEY_DATA => {
                    let (pid, key) = view::backend_key(frame.body())
                        .ok_or_else(|| conn.protocol("bad BackendKeyData"))?;
                    conn.process_id = pid;
                    conn.secret_key = key;
                }
                tag::READY_FOR_QUERY => break,
                tag::ERROR_RESPONSE => return Err(conn.server_error(&frame)),
                tag::NOTICE_RESPONSE => {}
                other => {
                    return Err(conn.protocol(&format!(
                        "unexpected message {:?} during startup",
                        char::from(other)
                    )))
                }
            }
        }
        if !buf.is_empty() {
            return Err(conn.protocol("data after ReadyForQuery at startup"));
        }
        Ok(conn)
    }

    async fn authenticate(
        &mut self,
        opts: &ConnectOptions<'_>,
        buf: &mut BytesMut,
    ) -> Result<(), BackendError> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = self.read_startup_frame(buf).await?;
            if frame.tag == tag::ERROR_RESPONSE {
                return Err(self.server_error(&frame));
            }
            if frame.tag != tag::AUTHENTICATION {
                return Err(self.protocol("expected an authentication request"));
            }
            let body = frame.body();
            let code = body
                .get(..4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| self.protocol("short authentication request"))?;
            let data = &body[4..];
            let mut out = BytesMut::new();
            match code {
                0 => return Ok(()),
                3 => {
                    let pw = self.password(opts)?;
                    password_message(&mut out, pw.as_bytes());
                }
                5 => {
                    let pw = self.password(opts)?;
                    let salt: [u8; 4] = data
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| self.protocol("short md5 salt"))?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        opts.user.as_bytes(),
                        pw.as_bytes(),
                        salt,
                    );
                    password_message(&mut out, hash.as_bytes());
                }
                10 => {
                    let offers_scram = data.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                    if !offers_scram {
                        return Err(BackendError::UnsupportedAuth {
                            host: self.host.to_string(),
                            method: "SASL (without SCRAM-SHA-256)",
                            user: opts.user.to_owned(),
                        });
                    }
                    let pw = self.password(opts)?;
                    let client = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                    sasl_initial_response(&mut out, "SCRAM-SHA-256", client.message());
                    scram = Some(client);
                }
                11 => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| self.protocol("SASL continue without SASL start"))?;
                    client
                        .update(data)
                        .map_err(|e| self.protocol(&format!("SCRAM: {e}")))?;
                    sasl_response(&mut out, client.message());
                }
                12 => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| self.protocol("SASL final without SASL start"))?;
                    client
                        .finish(data)
                        .map_err(|e| self.protocol(&format!("SCRAM server signature: {e}")))?;
                    continue;
                }
                other => {
                    return Err(BackendError::UnsupportedAuth {
                        host: self.host.to_string(),
                        method: match other {
                            2 => "Kerberos",
                            7 | 8 => "GSSAPI",
                            9 => "SSPI",
                            _ => "an unknown",
                        },
                        user: opts.user.to_owned(),
                    })
                }
            }
            self.write_all(&out).await?;
        }
    }

    fn password<'a>(&self, opts: &ConnectOptions<'a>) -> Result<&'a str, BackendError> {
        opts.password.ok_or_else(|| BackendError::NoPassword {
            host: self.host.to_string(),
            user: opts.user.to_owned(),
        })
    }

    async fn read_startup_frame(&mut self, buf: &mut BytesMut) -> Result<Frame, BackendError> {
        loop {
            match split_frame(buf, MAX_STARTUP_MESSAGE) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => return Err(self.protocol(&e.to_string())),
            }
            let n = self
                .stream
                .read_buf(buf)
                .await
                .map_err(|source| BackendError::Io {
                    host: self.host.to_string(),
                    source,
                })?;
            if n == 0 {
                return Err(BackendError::Closed {
                    host: self.host.to_string(),
                });
            }
        }
    }

    fn server_error(&self, frame: &Frame) -> BackendError {
        BackendError::Server {
            host: self.host.to_string(),
            fields: view::error_fields(frame.body()),
        }
    }

    fn protocol(&self, reason: &str) -> BackendError {
        BackendError::Protocol {
            host: self.host.to_string(),
            reason: reason.to_owned(),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|source| BackendError::Io {
                host: self.host.to_string(),
                source,
            })
    }

    /// The socket, for the session loop to relay on.
    pub fn stream_mut(&mut self) -> &mut Socket {
        &mut self.stream
    }

    /// Runs a simple query pgrelay issues itself (reset, SET replay) and waits for
    /// ReadyForQuery; the connection must be idle before and is idle after, or it is an error.
    pub async fn run_internal(&mut self, sql: &str, timeout: Duration) -> Result<(), BackendError> {
        self.query_first_column(sql, timeout).await.map(drop)
    }

    /// Like `run_internal`, returning the first column of every row as text (NULLs skipped).
    pub async fn query_first_column(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, BackendError> {
        let host = self.host.to_string();
        let work = async {
            let mut out = BytesMut::new();
            crate::protocol::build::query(&mut out, sql);
            self.write_all(&out).await?;
            let mut buf = BytesMut::new();
            let mut failure = None;
            let mut rows = Vec::new();
            loop {
                let frame = self.read_startup_frame(&mut buf).await?;
                match frame.tag {
                    tag::ERROR_RESPONSE => failure = Some(self.server_error(&frame)),
                    tag::PARAMETER_STATUS => {
                        if let Some((k, v)) = view::parameter_status(frame.body()) {
                            self.params.insert(k.to_owned(), v.to_owned());
                        }
                    }
                    tag::DATA_ROW => {
                        if let Some(v) = view::first_column_text(frame.body()) {
                            rows.push(v.to_owned());
                        }
                    }
                    tag::READY_FOR_QUERY => {
                        if !buf.is_empty() {
                            return Err(self.protocol("data after ReadyForQuery"));
                        }
                        if view::ready_status(frame.body()) != Some(TxStatus::Idle) {
                            return Err(self.protocol("not idle after an internal query"));
                        }
                        return failure.map_or(Ok(rows), Err);
                    }
                    _ => {}
                }
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Io {
                host,
                source: io::Error::new(io::ErrorKind::TimedOut, "internal query timed out"),
            }),
        }
    }

    /// Whether the server closed the socket or sent something while idle (e.g. a FATAL on
    /// shutdown or idle timeout): such a connection must not be handed out.
    pub fn is_stale(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            Ok(_) => true,
        }
    }
}

fn password_message(out: &mut BytesMut, password: &[u8]) {
    out.put_u8(b'p');
    out.put_i32((password.len() + 5) as i32);
    out.put_slice(password);
    out.put_u8(0);
}

fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    out.put_u8(b'p');
    out.put_i32((4 + mechanism.len() + 1 + 4 + data.len()) as i32);
    out.put_slice(mechanism.as_bytes());
    out.put_u8(0);
    out.put_i32(data.len() as i32);
    out.put_slice(data);
}

fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    out.put_u8(b'p');
    out.put_i32((4 + data.len()) as i32);
    out.put_slice(data);
}

/// Asks `host` to cancel whatever the backend `process_id` is running (a CancelRequest on a
/// new connection, as the protocol requires).
pub async fn cancel(
    host: &HostAddr,
    process_id: i32,
    secret_key: i32,
    timeout: Duration,
) -> Result<(), BackendError> {
    let name = host.to_string();
    let work = async {
        let mut stream = TcpStream::connect((host.host.as_str(), host.port))
            .await
            .map_err(|source| BackendError::Connect {
                host: name.clone(),
                source,
            })?;
        let mut out = BytesMut::with_capacity(16);
        out.put_i32(16);
        out.put_i32(80_877_102);
        out.put_i32(process_id);
        out.put_i32(secret_key);
        stream
            .write_all(&out)
            .await
            .map_err(|source| BackendError::Io {
                host: name.clone(),
                source,
            })?;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 16];
        let _ = stream.read(&mut sink).await;
        Ok(())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::ConnectTimeout { host: name }),
    }
}
