//! The outbound path: an app's plaintext call leaves the pod as mTLS.
//!
//! `kube-mtls-init` redirects the app's connections to the listed destination
//! ports to 127.0.0.1:15001. For each one this module recovers where the app
//! was going (SO_ORIGINAL_DST) and opens mTLS to exactly that address with the
//! pod's own certificate, verifying the peer's chain and that its SPIFFE ID is
//! in the trust domain. It is never an open relay: it listens on loopback only,
//! and a connection without an original destination, or one aimed at loopback,
//! goes nowhere.
//!
//! HTTP ports are forwarded per request over pooled mTLS connections, so a peer
//! that does not speak mTLS gets the app a 502 that says so; TCP ports are
//! tunnelled byte for byte.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::headers;
use crate::metrics::Refusal;
use crate::proxy::{Body, Shared, text};
use crate::tls::TlsStore;

/// How long a peer may take to accept TCP and finish the mTLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an outbound connection to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the peer at {addr} does not speak mTLS (no kube-mtls sidecar there?): {source}")]
    Handshake {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    #[error("{0} is not an IP address and port")]
    BadTarget(String),
}

/// Opens mTLS to `addr` with the current certificate set.
async fn connect_mtls(
    tls: &TlsStore,
    addr: SocketAddr,
    http: bool,
) -> Result<TlsStream<TcpStream>, PeerError> {
    let state = tls.current();
    let config = if http {
        state.client_http.clone()
    } else {
        state.client_tcp.clone()
    };
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| PeerError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|source| PeerError::Handshake { addr, source })
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| PeerError::Timeout(addr))?
}

/// An mTLS stream the pooled HTTP client can use.
pub struct MtlsConn(TokioIo<TlsStream<TcpStream>>);

impl Connection for MtlsConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for MtlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MtlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connects the pooled client: the request URI's authority is the original
/// destination, always an IP address and port.
#[derive(Clone)]
pub struct MtlsConnector {
    tls: Arc<TlsStore>,
}

impl tower::Service<Uri> for MtlsConnector {
    type Response = MtlsConn;
    type Error = PeerError;
    type Future = Pin<Box<dyn Future<Output = Result<MtlsConn, PeerError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default();
            let addr: SocketAddr = authority
                .parse()
                .map_err(|_| PeerError::BadTarget(authority.clone()))?;
            let stream = connect_mtls(&tls, addr, true).await?;
            Ok(MtlsConn(TokioIo::new(stream)))
        })
    }
}

/// The pooled client for outbound HTTP.
pub fn client(tls: Arc<TlsStore>) -> Client<MtlsConnector, Body> {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(MtlsConnector { tls })
}

/// Accepts redirected outbound connections until shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    client: Client<MtlsConnector, Body>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
            shared.metrics.refused(Refusal::ConnectionLimit);
            continue;
        };
        let (shared, client) = (shared.clone(), client.clone());
        let tracker = shared.tracker.clone();
        tracker.spawn(async move {
            handle(stream, &shared, client).await;
            drop(permit);
        });
    }
}

async fn handle(stream: TcpStream, shared: &Arc<Shared>, client: Client<MtlsConnector, Body>) {
    let dst = match crate::original_dst::original_dst(&stream) {
        Ok(d) => d,
        Err(e) => {
            shared.metrics.refused(Refusal::NotRedirected);
            tracing::warn!(error = %e, "outbound connection without an original destination refused");
            return;
        }
    };
    // Loopback and the sidecar's own ports are never a destination: that would
    // turn the outbound listener into a relay into the pod itself.
    if dst.ip().is_loopback() || dst.ip().is_unspecified() || shared.cfg.is_own_port(dst.port()) {
        shared.metrics.refused(Refusal::NotRedirected);
        tracing::warn!(destination = %dst, "outbound connection to a local address refused");
        return;
    }
    let _ = stream.set_nodelay(true);
    if shared.cfg.outbound_tcp_ports.contains(&dst.port()) {
        let mut app = stream;
        match connect_mtls(&shared.tls, dst, false).await {
            Ok(mut peer) => {
                if let Err(e) = tokio::io::copy_bidirectional(&mut app, &mut peer).await {
                    tracing::debug!(destination = %dst, error = %e, "outbound TCP connection ended with an error");
                }
            }
            Err(e) => {
                shared.metrics.outbound_errors.inc();
                tracing::warn!(destination = %dst, error = %e, "outbound TCP connection failed");
            }
        }
        return;
    }
    let shared2 = shared.clone();
    let service =
        hyper::service::service_fn(move |req| forward(req, dst, shared2.clone(), client.clone()));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn forward(
    mut req: Request<Incoming>,
    dst: SocketAddr,
    shared: Arc<Shared>,
    client: Client<MtlsConnector, Body>,
) -> Result<Response<Body>, Infallible> {
    if !req.headers().contains_key(http::header::HOST)
        && let Some(a) = req.uri().authority()
        && let Ok(v) = http::HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(dst.to_string())
        .path_and_query(path)
        .build()
    else {
        return Ok(text(StatusCode::BAD_REQUEST, "bad request target\n"));
    };
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_11;
    headers::strip_hop_by_hop(req.headers_mut());
    match client.request(req.map(|b| b.boxed())).await {
        Ok(resp) => {
            let mut resp = resp.map(|b| b.boxed());
            headers::strip_hop_by_hop(resp.headers_mut());
            Ok(resp)
        }
        Err(e) => {
            shared.metrics.outbound_errors.inc();
            // The connector's own error says what went wrong (refused, no mTLS, timeout).
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            let mut why = e.to_string();
            while let Some(c) = cause {
                if let Some(p) = c.downcast_ref::<PeerError>() {
                    why = p.to_string();
                    break;
                }
                cause = c.source();
            }
            tracing::warn!(destination = %dst, error = %why, "outbound request failed");
            Ok(text(
                StatusCode::BAD_GATEWAY,
                &format!("kube-mtls: {why}\n"),
            ))
        }
    }
}
