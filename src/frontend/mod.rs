//! Client connections: accept, limit, log in, then hand over to the session loop.
//!
//! The frontend is the only place that turns internal errors into what a client sees
//! (`error::FrontendError`), and the only module that knows about clients at all.

pub mod cancel;
pub mod error;
pub mod prepared;
pub mod registry;
pub mod session;
pub mod settings;
pub mod startup;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::auth::users::Users;
use crate::config::PoolMode;
use crate::net::Socket;
use crate::protocol::build::{self, Severity};
use crate::protocol::TxStatus;
use crate::tls::ClientTls;
use crate::Shared;
use error::FrontendError;
use session::{checkout_leader, PoolCache, Session, SessionLogin};
use settings::Settings;
use startup::{Login, Startup, TlsStage};

/// Counts open client connections, in total and per user, to enforce the limits.
#[derive(Default)]
pub struct ClientCounts {
    per_user: Mutex<HashMap<String, usize>>,
}

/// A counted client; uncounts itself when dropped.
struct ClientSlot {
    shared: Arc<Shared>,
    user: String,
}

impl ClientCounts {
    fn try_add(&self, user: &str, limit: Option<usize>) -> bool {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(user.to_owned()).or_insert(0);
        if limit.is_some_and(|l| *n >= l) {
            return false;
        }
        *n += 1;
        true
    }

    fn remove(&self, user: &str) {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(user);
            }
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.shared.clients.remove(&self.user);
    }
}

/// Accepts clients until shutdown, one task each.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move { handle_client(shared, stream, peer).await });
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => {
                tracing::info!("no longer accepting clients");
                return;
            }
        }
    }
}

async fn handle_client(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    shared.metrics.client_connections_total.inc();
    let open = OpenClient::new(&shared);
    let started = Instant::now();
    let config = shared.config.load_full();
    let users = shared.users.load_full();
    let client_tls = shared.client_tls.load_full();
    let deadline = tokio::time::Instant::now() + config.server.client_login_timeout;
    let (stream, negotiated) = start_up(stream, &users, &client_tls, deadline).await;
    let Some(mut stream) = stream else {
        if let Err(e) = negotiated {
            tracing::info!(client = %peer, error = %e, "client refused: TLS handshake failed");
        }
        return;
    };
    let login = match negotiated {
        Ok(Startup::Login(login)) => login,
        Ok(Startup::SwitchToTls) => return,
        Ok(Startup::Cancel {
            process_id,
            secret_key,
        }) => {
            drop(open);
            forward_cancel(&shared, process_id, secret_key).await;
            return;
        }
        Err(e) => {
            if matches!(
                e,
                FrontendError::PasswordFailed { .. } | FrontendError::Auth { .. }
            ) {
                shared.metrics.auth_failures.inc();
            }
            refuse(&shared, &mut stream, peer, &e).await;
            return;
        }
    };
    let user_name = login.user.name().to_owned();
    let database = login.database.clone();
    if open.count > config.server.max_client_connections {
        shared
            .metrics
            .client_connections_refused
            .with_label_values(&["max_client_connections"])
            .inc();
        refuse(&shared, &mut stream, peer, &FrontendError::TooManyClients).await;
        return;
    }
    if !shared
        .clients
        .try_add(&user_name, login.user.config.max_connections)
    {
        shared
            .metrics
            .client_connections_refused
            .with_label_values(&["user_limit"])
            .inc();
        refuse(
            &shared,
            &mut stream,
            peer,
            &FrontendError::TooManyForUser(user_name),
        )
        .await;
        return;
    }
    let _slot = ClientSlot {
        shared: Arc::clone(&shared),
        user: user_name.clone(),
    };
    tracing::info!(user = %user_name, database = %database, client = %peer, "client connected");
    let registered = shared
        .client_registry
        .register(&user_name, &database, peer, stream.is_tls());
    let result = if database == crate::admin::console::DATABASE {
        // The console refuses users not in admin_users (28000) itself.
        crate::admin::console::serve(Arc::clone(&shared), &mut stream, login.user).await
    } else {
        run_login(&shared, &mut stream, login, registered).await
    };
    let duration = started.elapsed();
    match result {
        Ok(()) => {
            tracing::info!(user = %user_name, database = %database, client = %peer, duration = ?duration, "client disconnected")
        }
        Err(e) => {
            tracing::info!(user = %user_name, database = %database, client = %peer, duration = ?duration, error = %e, "client disconnected with error");
            send_fatal(&shared, &mut stream, &e).await;
        }
    }
}

/// The startup phase, a TLS handshake included, all before `deadline`: returns the socket
/// to go on with (None when a failed handshake left nobody to answer) and the outcome.
async fn start_up(
    tcp: TcpStream,
    users: &Users,
    tls: &ClientTls,
    deadline: tokio::time::Instant,
) -> (Option<Socket>, Result<Startup, FrontendError>) {
    let mut socket = Socket::Tcp(tcp);
    let stage = match tls.acceptor() {
        Some(_) => TlsStage::Offered {
            required: tls.required(),
        },
        None => TlsStage::Off,
    };
    let first = tokio::time::timeout_at(deadline, startup::negotiate(&mut socket, users, stage))
        .await
        .unwrap_or(Err(FrontendError::LoginTimeout));
    let Ok(Startup::SwitchToTls) = first else {
        return (Some(socket), first);
    };
    // SwitchToTls comes only from a plain socket with TLS offered.
    let (Some(acceptor), Socket::Tcp(tcp)) = (tls.acceptor(), socket) else {
        return (
            None,
            Err(FrontendError::Protocol("unexpected SSL request".into())),
        );
    };
    let encrypted = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return (None, Err(FrontendError::ClientIo(e))),
        Err(_) => return (None, Err(FrontendError::LoginTimeout)),
    };
    let mut socket = match crate::tls::bridge(encrypted) {
        Ok(local) => Socket::Bridged(local),
        Err(e) => return (None, Err(FrontendError::ClientIo(e))),
    };
    let login = tokio::time::timeout_at(
        deadline,
        startup::negotiate(&mut socket, users, TlsStage::Established),
    )
    .await
    .unwrap_or(Err(FrontendError::LoginTimeout));
    (Some(socket), login)
}

/// Keeps the open-connections gauge right however a client task ends.
struct OpenClient {
    shared: Arc<Shared>,
    count: usize,
}

impl OpenClient {
    fn new(shared: &Arc<Shared>) -> OpenClient {
        shared.metrics.client_connections.inc();
        OpenClient {
            shared: Arc::clone(shared),
            count: shared.metrics.client_connections.get().max(0) as usize,
        }
    }
}

impl Drop for OpenClient {
    fn drop(&mut self) {
        self.shared.metrics.client_connections.dec();
    }
}

/// Finishes the login, then relays until the client leaves.
async fn run_login(
    shared: &Arc<Shared>,
    stream: &mut Socket,
    login: Login,
    registered: registry::ClientEntry,
) -> Result<(), FrontendError> {
    // Boxed: the login's futures (a server checkout, catalog and settings queries) run once,
    // and inline they would make every idle session's task several kilobytes larger.
    let login = Box::pin(finish_login(shared, stream, login, registered)).await?;
    Session::new(Arc::clone(shared), login).run(stream).await
}

/// Finishes the login with a server connection (which checks the database and role exist
/// and applies the client's settings) and reports the server's parameters to the client.
async fn finish_login(
    shared: &Arc<Shared>,
    stream: &mut Socket,
    login: Login,
    registered: registry::ClientEntry,
) -> Result<SessionLogin, FrontendError> {
    let Login {
        user,
        database,
        params,
    } = login;
    let settings = Settings::from_startup(&params);
    let mut pools = PoolCache::default();
    let mut conn = checkout_leader(shared, &user, &database, &mut pools).await?;
    let (functions, needs_load) = shared.catalogs.for_database(&database);
    if needs_load {
        let timeout = shared.config.load().cluster.server_connect_timeout;
        match conn
            .conn()
            .query_first_column(crate::router::catalog::VOLATILE_FUNCTIONS_SQL, timeout)
            .await
        {
            Ok(names) => shared.catalogs.load(&database, names),
            Err(e) => {
                tracing::warn!(database = %database, error = %e, "loading the function catalog failed")
            }
        }
    }
    if let Some(sql) = settings.sync_sql(&mut conn.conn().applied) {
        let timeout = shared.config.load().cluster.server_connect_timeout;
        if let Err(e) = conn.conn().run_internal(&sql, timeout).await {
            // The server connection is fine; the client's settings are not (PostgreSQL
            // refuses such a login too).
            conn.conn().applied.clear();
            conn.release();
            return Err(e.into());
        }
    }
    let cancel = shared.cancels.register();
    let mut out = BytesMut::new();
    let mut reported: Vec<(&String, &String)> = conn.conn_ref().params.iter().collect();
    reported.sort();
    for (name, value) in reported {
        build::parameter_status(&mut out, name, value);
    }
    build::backend_key_data(&mut out, cancel.process_id, cancel.secret_key);
    build::ready_for_query(&mut out, TxStatus::Idle);
    stream.write_all(&out).await?;
    let keep = match shared.config.load().server.pool_mode {
        PoolMode::Session => Some(conn),
        PoolMode::Transaction => {
            conn.release();
            None
        }
    };
    if keep.is_some() {
        registered.set_state(registry::ClientState::Active);
    }
    if let Some(conn) = keep.as_ref() {
        registered.set_server(Some(conn.host()));
    }
    Ok(SessionLogin {
        user,
        database,
        settings,
        functions,
        cancel,
        server: keep,
        registered,
        pools,
    })
}

async fn forward_cancel(shared: &Shared, process_id: i32, secret_key: i32) {
    shared.metrics.cancel_requests.inc();
    let Some(target) = shared.cancels.target(process_id, secret_key) else {
        return;
    };
    let timeout = shared.config.load().cluster.server_connect_timeout;
    if let Err(e) =
        crate::backend::cancel(&target.host, target.process_id, target.secret_key, timeout).await
    {
        tracing::warn!(host = %target.host, error = %e, "forwarding cancel request failed");
    }
}

async fn refuse(shared: &Shared, stream: &mut Socket, peer: SocketAddr, error: &FrontendError) {
    tracing::info!(client = %peer, error = %error, "client refused");
    send_fatal(shared, stream, error).await;
}

async fn send_fatal(shared: &Shared, stream: &mut Socket, error: &FrontendError) {
    let Some(code) = error.sqlstate() else {
        return;
    };
    shared.metrics.count_error(code);
    let mut out = BytesMut::new();
    build::error_response(&mut out, Severity::Fatal, code, &error.client_message());
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
}
