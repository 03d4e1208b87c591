//! A test client that speaks mTLS with rustls and HTTP with hyper. Every step
//! that waits on the server (connect, handshake, reply) has a deadline
//! ([`PATIENCE`]): past it the test fails naming the step, where it would
//! otherwise wait for as long as the server keeps the connection open.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::certs::Issued;
use crate::deadline::{PATIENCE, within};

/// A client config trusting `ca_pem`, presenting `identity` if given, offering `alpn`.
pub fn client_config(ca_pem: &str, identity: Option<&Issued>, alpn: &[&str]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("cert PEM");
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth cert")
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// Opens a TLS connection; the server certificate must be valid for `localhost`.
pub async fn connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = within(
        PATIENCE,
        format!("a TCP connection to {addr}"),
        TcpStream::connect(addr),
    )
    .await?;
    tls_over(tcp, cfg).await
}

/// As [`connect`], from a chosen source address (e.g. 127.0.0.2, to look
/// like a second client host on loopback).
pub async fn connect_from(
    source: IpAddr,
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = within(
        PATIENCE,
        format!("a TCP connection from {source} to {addr}"),
        socket.connect(addr),
    )
    .await?;
    tls_over(tcp, cfg).await
}

async fn tls_over(tcp: TcpStream, cfg: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").expect("server name");
    let peer = tcp.peer_addr()?;
    within(
        PATIENCE,
        format!("a TLS handshake with {peer}"),
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub version: http::Version,
}

/// An HTTP connection over mTLS: HTTP/2 if ALPN chose h2, else HTTP/1.1.
pub enum HttpConn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl HttpConn {
    pub async fn open(addr: SocketAddr, cfg: Arc<ClientConfig>) -> anyhow::Result<HttpConn> {
        HttpConn::over(connect(addr, cfg).await?).await
    }

    /// Speaks HTTP on an established TLS connection.
    pub async fn over(tls: TlsStream<TcpStream>) -> anyhow::Result<HttpConn> {
        within(
            PATIENCE,
            "an HTTP client handshake",
            HttpConn::handshake(tls),
        )
        .await
    }

    async fn handshake(tls: TlsStream<TcpStream>) -> anyhow::Result<HttpConn> {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(HttpConn::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(HttpConn::H1(send))
        }
    }

    /// Sends a request; `path` is e.g. `/hello`, headers are added as given.
    /// Fails the test if the whole reply has not come within [`PATIENCE`].
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<Reply> {
        let what = format!("the whole reply to {method} {path}");
        within(PATIENCE, what, self.exchange(method, path, headers, body)).await
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<Reply> {
        let h2 = matches!(self, HttpConn::H2(_));
        let uri = if h2 {
            format!("https://localhost{path}")
        } else {
            path.to_owned()
        };
        let mut req = Request::builder().method(method).uri(uri);
        if !h2 {
            req = req.header("host", "localhost");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned())))?;
        let resp = match self {
            HttpConn::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            HttpConn::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            version,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// One GET over a fresh connection.
pub async fn get(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    HttpConn::open(addr, cfg)
        .await?
        .send("GET", path, headers, "")
        .await
}
