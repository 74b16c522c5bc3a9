//! TLS on both sides, with rustls on the `ring` provider.
//!
//! - Client side (`[server] tls_mode`, `tls_cert`, `tls_key`): an SSLRequest is answered `S`
//!   and the connection is handed to a [`TlsAcceptor`].
//! - Server side (`[cluster] tls`, `tls_ca_file`): pooled connections send an SSLRequest and
//!   upgrade when the server answers `S` ([`ServerTls::upgrade`]); the monitor's and catalog
//!   loader's tokio-postgres connections use the same settings ([`ServerTls::postgres`]).
//!
//! Either way, once the handshake is done a [`bridge`] task copies between the TLS stream and
//! a Unix socket pair, so sessions relay over a plain socket (see `net`).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ClientTlsMode, ClusterConfig, HostAddr, ServerConfig, ServerTlsMode};
use crate::net::Socket;

/// The protocol's SSLRequest code (1234.5679).
const SSL_REQUEST_CODE: i32 = 80_877_103;

/// A TLS setting that cannot be used: the config key, its value, and why.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {value}: {reason}")]
pub struct TlsConfigError {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
}

impl TlsConfigError {
    fn new(key: &'static str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        TlsConfigError {
            key,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Why a server connection could not be secured.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("the server does not accept TLS connections (cluster.tls requires TLS)")]
    Refused,
    #[error("the server answered the SSL request with {0:?}")]
    BadAnswer(char),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What pgrelay offers its clients.
pub struct ClientTls {
    mode: ClientTlsMode,
    acceptor: Option<TlsAcceptor>,
}

impl ClientTls {
    /// Loads `tls_cert` and `tls_key` unless `tls_mode` is `disable`.
    pub fn from_config(server: &ServerConfig) -> Result<ClientTls, TlsConfigError> {
        if server.tls_mode == ClientTlsMode::Disable {
            return Ok(ClientTls {
                mode: ClientTlsMode::Disable,
                acceptor: None,
            });
        }
        let mode_name = server.tls_mode.as_str();
        let cert_path = server.tls_cert.as_deref().ok_or_else(|| {
            TlsConfigError::new(
                "server.tls_cert",
                "(absent)",
                format!("required with tls_mode = \"{mode_name}\""),
            )
        })?;
        let key_path = server.tls_key.as_deref().ok_or_else(|| {
            TlsConfigError::new(
                "server.tls_key",
                "(absent)",
                format!("required with tls_mode = \"{mode_name}\""),
            )
        })?;
        let chain = read_certificates("server.tls_cert", cert_path)?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
            TlsConfigError::new(
                "server.tls_key",
                key_path.display(),
                format!("no usable PEM private key: {e}"),
            )
        })?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::new("server.tls_mode", mode_name, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                TlsConfigError::new(
                    "server.tls_key",
                    key_path.display(),
                    format!("does not match server.tls_cert: {e}"),
                )
            })?;
        Ok(ClientTls {
            mode: server.tls_mode,
            acceptor: Some(TlsAcceptor::from(Arc::new(config))),
        })
    }

    /// The acceptor for an SSLRequest, or None when TLS is off (the request gets `N`).
    pub fn acceptor(&self) -> Option<&TlsAcceptor> {
        self.acceptor.as_ref()
    }

    /// Whether a client that does not switch to TLS is refused.
    pub fn required(&self) -> bool {
        self.mode == ClientTlsMode::Require
    }
}

/// How pgrelay secures its own connections to the servers.
#[derive(Clone)]
pub struct ServerTls {
    mode: ServerTlsMode,
    connector: TlsConnector,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl ServerTls {
    /// Builds the connector `[cluster] tls` asks for (reading `tls_ca_file` for
    /// `verify-full`).
    pub fn from_config(cluster: &ClusterConfig) -> Result<ServerTls, TlsConfigError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::new("cluster.tls", "(any)", e.to_string()))?;
        let config = match cluster.tls {
            ServerTlsMode::VerifyFull => {
                let path = cluster.tls_ca_file.as_deref().ok_or_else(|| {
                    TlsConfigError::new(
                        "cluster.tls_ca_file",
                        "(absent)",
                        "required with tls = \"verify-full\"",
                    )
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certificates("cluster.tls_ca_file", path)? {
                    roots.add(cert).map_err(|e| {
                        TlsConfigError::new(
                            "cluster.tls_ca_file",
                            path.display(),
                            format!("not a usable CA certificate: {e}"),
                        )
                    })?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
                .with_no_client_auth(),
        };
        Ok(ServerTls {
            mode: cluster.tls,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    pub fn mode(&self) -> ServerTlsMode {
        self.mode
    }

    /// Negotiates TLS on a fresh connection to `host` as `[cluster] tls` says: sends an
    /// SSLRequest, and on `S` runs the handshake and returns the bridged socket. A server
    /// that answers `N` gets a plain connection under `prefer` and a refusal otherwise.
    pub async fn upgrade(
        &self,
        mut tcp: TcpStream,
        host: &HostAddr,
    ) -> Result<Socket, UpgradeError> {
        if self.mode == ServerTlsMode::Disable {
            return Ok(Socket::Tcp(tcp));
        }
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8i32.to_be_bytes());
        request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        tcp.write_all(&request).await?;
        match tcp.read_u8().await? {
            b'S' => {}
            b'N' if self.mode == ServerTlsMode::Prefer => return Ok(Socket::Tcp(tcp)),
            b'N' => return Err(UpgradeError::Refused),
            other => return Err(UpgradeError::BadAnswer(char::from(other))),
        }
        let name = server_name(&host.host).map_err(UpgradeError::Handshake)?;
        let stream = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(UpgradeError::Handshake)?;
        Ok(Socket::Bridged(bridge(stream)?))
    }

    /// The sslmode and connector for a tokio-postgres control connection.
    pub fn postgres(&self) -> (SslMode, MakeRustlsConnect) {
        let mode = match self.mode {
            ServerTlsMode::Disable => SslMode::Disable,
            ServerTlsMode::Prefer => SslMode::Prefer,
            ServerTlsMode::Require | ServerTlsMode::VerifyFull => SslMode::Require,
        };
        (
            mode,
            MakeRustlsConnect {
                connector: self.connector.clone(),
            },
        )
    }
}

fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let shown = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsConfigError::new(key, &shown, format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::new(key, &shown, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsConfigError::new(key, shown, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The name a server certificate must carry: the host as written in `cluster.hosts`.
fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?}: {e}")))
}

/// For `prefer` and `require`, like libpq's modes of the same names: the connection is
/// encrypted but the certificate is not checked. Handshake signatures still are.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Moves a TLS connection behind a Unix socket pair: a task copies both ways between the TLS
/// stream and one end, and the returned end is what the session reads and writes. When
/// either side finishes, what the other side sent is flushed, the TLS session is closed
/// (close_notify) and the task ends.
pub fn bridge<S>(tls: S) -> io::Result<UnixStream>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (inner, outer) = UnixStream::pair()?;
    tokio::spawn(async move {
        let (mut tls_read, mut tls_write) = tokio::io::split(tls);
        let (mut inner_read, mut inner_write) = inner.into_split();
        let to_peer = async {
            let copied = tokio::io::copy(&mut inner_read, &mut tls_write).await;
            let _ = tls_write.shutdown().await;
            copied
        };
        let from_peer = async {
            let copied = tokio::io::copy(&mut tls_read, &mut inner_write).await;
            let _ = inner_write.shutdown().await;
            copied
        };
        let result = tokio::select! {
            r = to_peer => r,
            r = from_peer => r,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "TLS connection ended with an error");
        }
    });
    Ok(outer)
}

/// tokio-postgres's hook for TLS, backed by rustls (control connections).
#[derive(Clone)]
pub struct MakeRustlsConnect {
    connector: TlsConnector,
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        Ok(RustlsConnect {
            connector: self.connector.clone(),
            name: server_name(domain)?,
        })
    }
}

pub struct RustlsConnect {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

/// A control connection's TLS stream.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
