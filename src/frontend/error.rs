//! The one place where internal failures become what a client sees: an ErrorResponse with a
//! SQLSTATE, or a silent close when the client is already gone.

use std::io;

use thiserror::Error;

use crate::auth::AuthError;
use crate::backend::BackendError;
use crate::pool::PoolError;
use crate::protocol::startup::StartupError;
use crate::protocol::{sqlstate, FrameError};

#[derive(Debug, Error)]
pub enum FrontendError {
    /// The client's socket failed or closed: nobody is left to tell.
    #[error("client connection: {0}")]
    ClientIo(#[from] io::Error),
    #[error("{0}")]
    Startup(#[from] StartupError),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Protocol(String),
    #[error("password authentication failed for user \"{user}\"")]
    PasswordFailed { user: String },
    #[error("authentication of user \"{user}\" failed: {source}")]
    Auth { user: String, source: AuthError },
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("{0}")]
    Unsupported(String),
    #[error("sorry, too many clients already")]
    TooManyClients,
    #[error("too many connections for role \"{0}\"")]
    TooManyForUser(String),
    #[error("canceling authentication due to timeout")]
    LoginTimeout,
    #[error("{0}")]
    Pool(#[from] PoolError),
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("{reason}")]
    NoServer { reason: String },
    #[error("terminating connection due to administrator command")]
    Shutdown,
    #[error("TLS is required: connect with sslmode=require (or verify-ca, verify-full)")]
    TlsRequired,
}

impl FrontendError {
    /// SQLSTATE for the client, or None when the client cannot be told anything.
    pub fn sqlstate(&self) -> Option<&str> {
        Some(match self {
            FrontendError::ClientIo(_) => return None,
            FrontendError::Startup(StartupError::UnsupportedProtocol { .. }) => {
                sqlstate::FEATURE_NOT_SUPPORTED
            }
            FrontendError::Startup(_) | FrontendError::Frame(_) | FrontendError::Protocol(_) => {
                sqlstate::PROTOCOL_VIOLATION
            }
            FrontendError::PasswordFailed { .. } => sqlstate::INVALID_PASSWORD,
            FrontendError::Auth { source, .. } if source.is_password_failure() => {
                sqlstate::INVALID_PASSWORD
            }
            FrontendError::Auth { .. } => sqlstate::PROTOCOL_VIOLATION,
            FrontendError::NoUser => sqlstate::INVALID_AUTHORIZATION,
            FrontendError::Unsupported(_) => sqlstate::FEATURE_NOT_SUPPORTED,
            FrontendError::TooManyClients | FrontendError::TooManyForUser(_) => {
                sqlstate::TOO_MANY_CONNECTIONS
            }
            FrontendError::LoginTimeout => sqlstate::PROTOCOL_VIOLATION,
            FrontendError::Pool(e) => e.sqlstate(),
            FrontendError::Backend(e) => e.sqlstate(),
            FrontendError::NoServer { .. } => sqlstate::CANNOT_CONNECT_NOW,
            FrontendError::Shutdown => sqlstate::ADMIN_SHUTDOWN,
            FrontendError::TlsRequired => sqlstate::INVALID_AUTHORIZATION,
        })
    }

    /// The message text for the client. Authentication failures all read the same, so a
    /// client cannot tell an unknown user from a wrong password.
    pub fn client_message(&self) -> String {
        match self {
            FrontendError::Auth { user, source } if source.is_password_failure() => {
                format!("password authentication failed for user \"{user}\"")
            }
            FrontendError::Backend(BackendError::Server { fields, .. }) => {
                fields.message.clone().unwrap_or_else(|| self.to_string())
            }
            FrontendError::Pool(PoolError::Backend(BackendError::Server { fields, .. })) => {
                fields.message.clone().unwrap_or_else(|| self.to_string())
            }
            other => other.to_string(),
        }
    }
}
