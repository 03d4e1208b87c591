//! Connections to the target: plaintext TCP, or TLS with an optional client
//! certificate, then HTTP/1.1 or HTTP/2 on top.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Why the load generator could not set up or use a connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("--server-name {0:?} is not a DNS name or IP address")]
    ServerName(String),
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
}

/// TLS settings for the target; `None` in [`Target::tls`] means plaintext.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl Tls {
    /// Trusts `ca`, presents `cert`/`key` when given, offers `alpn`. Session
    /// resumption is off so that every new connection is a full handshake.
    pub fn from_files(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        server_name: &str,
        alpn: &[&str],
    ) -> Result<Tls, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(&read(ca)?) {
            let der = der.map_err(|_| pem_error(ca, "CA certificate"))?;
            roots.add(der)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| pem_error(cert, "certificate"))?;
                let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
                    .map_err(|_| pem_error(key, "private key"))?;
                builder.with_client_auth_cert(chain, key_der)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config.resumption = Resumption::disabled();
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| ClientError::ServerName(server_name.to_owned()))?;
        Ok(Tls {
            config: Arc::new(config),
            server_name,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, what: &'static str) -> ClientError {
    ClientError::Pem {
        path: path.to_owned(),
        what,
    }
}

/// What the load generator talks to.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<Tls>,
}

/// A byte stream, plaintext or TLS: every contestant pays the same dynamic
/// dispatch, so the comparison stays fair.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Target {
    /// Opens TCP and, when configured, completes the TLS handshake.
    pub async fn open(&self) -> Result<Box<dyn Stream>, ClientError> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let stream = connector.connect(tls.server_name.clone(), tcp).await?;
                Ok(Box::new(stream))
            }
        }
    }

    /// An HTTP/1.1 connection; its driver runs as a task.
    pub async fn http1(&self) -> Result<http1::SendRequest<Full<Bytes>>, ClientError> {
        let io = TokioIo::new(self.open().await?);
        let (sender, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// An HTTP/2 connection (the server must have chosen h2 by ALPN, or be a
    /// plaintext h2c server).
    pub async fn http2(&self) -> Result<http2::SendRequest<Full<Bytes>>, ClientError> {
        let io = TokioIo::new(self.open().await?);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .handshake(io)
            .await?;
        tokio::spawn(conn);
        Ok(sender)
    }
}
