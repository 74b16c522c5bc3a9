//! A client's first moments: SSL/GSS negotiation, CancelRequest, StartupMessage, and
//! authentication against the configured users.
//!
//! Everything here runs under `client_login_timeout` with small message limits, because it
//! runs before pgrelay knows who the client is.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::FrontendError;
use crate::auth::users::{UserEntry, Users};
use crate::auth::{md5, AuthError, ScramServer, Secret};
use crate::config::AuthMethod;
use crate::protocol::frame::split_frame;
use crate::protocol::startup::{self, StartupPacket};
use crate::protocol::{build, tag, Frame};

/// Authentication messages are small; PostgreSQL caps them at 64 kB too.
const MAX_AUTH_MESSAGE: u64 = 65_536;

/// What the startup phase produced.
pub enum Startup {
    Login(Login),
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
    /// The client asked for TLS and was answered `S`: the handshake comes next, then the
    /// startup phase starts over inside TLS.
    SwitchToTls,
}

/// Where a connection stands with TLS while it starts up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsStage {
    /// TLS is not configured: SSLRequest gets `N`.
    Off,
    /// TLS is offered; `required` refuses a StartupMessage sent without it.
    Offered { required: bool },
    /// The connection already runs inside TLS.
    Established,
}

/// An authenticated client.
pub struct Login {
    pub user: Arc<UserEntry>,
    pub database: String,
    pub params: Vec<(String, String)>,
}

/// Reads packets until a StartupMessage or CancelRequest, answering GSS requests with 'N'
/// and SSL requests with 'S' (returned as an SslRequest packet: switch to TLS now) when TLS
/// is offered, 'N' otherwise.
async fn read_startup<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    tls: TlsStage,
) -> Result<(StartupPacket, Vec<String>), FrontendError> {
    loop {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let total = startup::packet_len(len)?;
        let mut packet = vec![0u8; total];
        packet[..4].copy_from_slice(&len);
        stream.read_exact(&mut packet[4..]).await?;
        match startup::parse(&packet)? {
            StartupPacket::SslRequest if matches!(tls, TlsStage::Offered { .. }) => {
                stream.write_all(b"S").await?;
                return Ok((StartupPacket::SslRequest, Vec::new()));
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                stream.write_all(b"N").await?;
            }
            StartupPacket::Startup { .. } if tls == (TlsStage::Offered { required: true }) => {
                return Err(FrontendError::TlsRequired);
            }
            StartupPacket::Startup {
                minor_version,
                params,
            } => {
                let unrecognized: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.clone())
                    .collect();
                if minor_version > 0 || !unrecognized.is_empty() {
                    let mut out = BytesMut::new();
                    let names: Vec<&str> = unrecognized.iter().map(String::as_str).collect();
                    build::negotiate_protocol_version(&mut out, 0, &names);
                    stream.write_all(&out).await?;
                }
                return Ok((
                    StartupPacket::Startup {
                        minor_version,
                        params,
                    },
                    unrecognized,
                ));
            }
            cancel @ StartupPacket::Cancel { .. } => return Ok((cancel, Vec::new())),
        }
    }
}

/// Runs the startup phase up to and including AuthenticationOk, or up to the `S` that
/// starts a TLS handshake.
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    users: &Users,
    tls: TlsStage,
) -> Result<Startup, FrontendError> {
    let (packet, _) = read_startup(stream, tls).await?;
    let params = match packet {
        StartupPacket::Cancel {
            process_id,
            secret_key,
        } => {
            return Ok(Startup::Cancel {
                process_id,
                secret_key,
            })
        }
        StartupPacket::Startup { params, .. } => params,
        StartupPacket::SslRequest => return Ok(Startup::SwitchToTls),
        StartupPacket::GssEncRequest => {
            return Err(FrontendError::Protocol("unexpected GSS request".into()))
        }
    };
    let user_name = StartupPacket::param(&params, "user")
        .filter(|u| !u.is_empty())
        .ok_or(FrontendError::NoUser)?
        .to_owned();
    if StartupPacket::param(&params, "replication")
        .is_some_and(|r| r != "false" && r != "0" && r != "off")
    {
        return Err(FrontendError::Unsupported(
            "replication connections are not supported by pgrelay; connect to the server directly"
                .into(),
        ));
    }
    let database = StartupPacket::param(&params, "database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user_name)
        .to_owned();

    let user = users.get(&user_name);
    authenticate(stream, users, &user_name, user.as_deref()).await?;
    let Some(user) = user else {
        // authenticate() never succeeds for an unknown user.
        return Err(FrontendError::PasswordFailed { user: user_name });
    };
    let mut out = BytesMut::new();
    build::auth_ok(&mut out);
    stream.write_all(&out).await?;
    Ok(Startup::Login(Login {
        user,
        database,
        params,
    }))
}

async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    users: &Users,
    user_name: &str,
    user: Option<&UserEntry>,
) -> Result<(), FrontendError> {
    let failed = || FrontendError::PasswordFailed {
        user: user_name.to_owned(),
    };
    let method = user.map_or(AuthMethod::ScramSha256, UserEntry::auth);
    let mut buf = BytesMut::new();
    match method {
        AuthMethod::Trust => Ok(()),
        AuthMethod::Md5 => {
            let salt = md5::new_salt();
            let mut out = BytesMut::new();
            build::auth_md5(&mut out, salt);
            stream.write_all(&out).await?;
            let frame = read_password(stream, &mut buf).await?;
            let response = frame.body().strip_suffix(&[0]).unwrap_or(frame.body());
            let secret = user.and_then(|u| u.secret.as_ref()).ok_or_else(failed)?;
            md5::verify(user_name, secret, salt, response)
                .map_err(|source| auth_error(user_name, source))
        }
        AuthMethod::ScramSha256 => {
            let verifier = match user.and_then(|u| u.secret.as_ref()) {
                Some(Secret::Plain { scram, .. }) | Some(Secret::Scram(scram)) => scram.clone(),
                // An md5-only secret cannot check a SCRAM proof; run the exchange against the
                // decoy so this looks like any failed login.
                Some(Secret::Md5(_)) | None => users.decoy.clone(),
            };
            let real = user.is_some_and(|u| !matches!(u.secret, Some(Secret::Md5(_)) | None));
            let mut server = ScramServer::new(verifier);
            let mut out = BytesMut::new();
            build::auth_sasl(&mut out, &["SCRAM-SHA-256"]);
            stream.write_all(&out).await?;

            let frame = read_password(stream, &mut buf).await?;
            let (mechanism, data) = sasl_initial(frame.body()).ok_or_else(|| {
                FrontendError::Protocol("malformed SASLInitialResponse message".into())
            })?;
            if mechanism != "SCRAM-SHA-256" {
                return Err(FrontendError::Protocol(format!(
                    "client selected an invalid SASL authentication mechanism {mechanism:?}"
                )));
            }
            let server_first = server
                .client_first(data)
                .map_err(|source| auth_error(user_name, source))?;
            out.clear();
            build::auth_sasl_continue(&mut out, &server_first);
            stream.write_all(&out).await?;

            let frame = read_password(stream, &mut buf).await?;
            let server_final = server
                .client_final(frame.body())
                .map_err(|source| auth_error(user_name, source))?;
            if !real {
                return Err(failed());
            }
            out.clear();
            build::auth_sasl_final(&mut out, &server_final);
            stream.write_all(&out).await?;
            Ok(())
        }
    }
}

fn auth_error(user: &str, source: AuthError) -> FrontendError {
    if source.is_password_failure() {
        FrontendError::PasswordFailed {
            user: user.to_owned(),
        }
    } else {
        FrontendError::Auth {
            user: user.to_owned(),
            source,
        }
    }
}

/// SASLInitialResponse: mechanism name, then an Int32 length (-1 = none) and the data.
fn sasl_initial(body: &[u8]) -> Option<(&str, &[u8])> {
    let nul = body.iter().position(|&b| b == 0)?;
    let mechanism = std::str::from_utf8(&body[..nul]).ok()?;
    let rest = &body[nul + 1..];
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = &rest[4..];
    if len < 0 {
        return Some((mechanism, &[]));
    }
    (data.len() == len as usize).then_some((mechanism, data))
}

async fn read_password<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Frame, FrontendError> {
    loop {
        if let Some(frame) = split_frame(buf, MAX_AUTH_MESSAGE)? {
            if frame.tag != tag::PASSWORD {
                return Err(FrontendError::Protocol(format!(
                    "expected password response, got message type {:?}",
                    char::from(frame.tag)
                )));
            }
            return Ok(frame);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(FrontendError::ClientIo(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_initial_response_is_bounded() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        assert_eq!(sasl_initial(&body), Some(("SCRAM-SHA-256", &b"abc"[..])));
        let mut lying = b"SCRAM-SHA-256\0".to_vec();
        lying.extend_from_slice(&1000i32.to_be_bytes());
        lying.extend_from_slice(b"abc");
        assert_eq!(sasl_initial(&lying), None);
        assert_eq!(sasl_initial(b"SCRAM"), None);
    }
}
