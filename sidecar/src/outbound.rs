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
//! tunnelled byte for byte. A certificate problem is not called a protocol
//! one: a peer whose certificate does not chain to the trust bundle gets a 502
//! naming its issuer and the CAs this sidecar trusts, one that refuses our
//! certificate gets one naming our issuer; every failed handshake is counted
//! by reason (`handshake_failures_total{direction="outbound"}`).
//!
//! Like inbound ones, outbound connections are counted
//! (`kube_mtls_sidecar_connections_total{direction="outbound"}`, `active_connections`),
//! closed after `--idle-timeout` without traffic or a request in progress, and
//! log inside an `outbound` span carrying the app's address and the destination.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tracing::Instrument;
use tracing::field::Empty;

use crate::body::InFlightBody;
use crate::conn::serve_http;
use crate::headers;
use crate::io::{IdleTimeout, InFlight};
use crate::metrics::{Direction, HandshakeFailure, Metrics, Refusal};
use crate::rewrite::{Form, retarget, socket_authority};
use crate::shared::{Body, Shared, text};
use crate::tls::{TlsState, TlsStore};
use crate::verify::{self, Rejection};
use http::uri::Authority;
use kube_mtls_listener::Listener;

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
    #[error(
        "the peer at {addr} presented a certificate issued by {issuer} that this sidecar does not trust (trusted CAs: {trusted}): {cause}"
    )]
    Untrusted {
        addr: SocketAddr,
        issuer: String,
        trusted: String,
        cause: rustls::Error,
    },
    #[error(
        "the peer at {addr} presented a certificate ({subject}, issued by {issuer}) that this sidecar refuses, {detail}: {cause}"
    )]
    BadCertificate {
        addr: SocketAddr,
        subject: String,
        issuer: String,
        detail: String,
        cause: rustls::Error,
    },
    #[error(
        "the peer at {addr} refused this sidecar's certificate (issued by {issuer}): {cause}; does its trust bundle hold that CA yet?"
    )]
    Refused {
        addr: SocketAddr,
        issuer: String,
        cause: rustls::Error,
    },
    #[error("the peer at {addr} does not speak mTLS (no kube-mtls sidecar there?): {source}")]
    Handshake {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    #[error("the peer at {0} did not finish the mTLS handshake in time")]
    HandshakeTimeout(SocketAddr),
    #[error("{0} is not an IP address and port")]
    BadTarget(String),
}

/// Opens mTLS to `addr` with the current key pair and trust bundle; a
/// failed handshake is counted by reason.
async fn connect_mtls(
    tls: &TlsStore,
    metrics: &Metrics,
    addr: SocketAddr,
    http: bool,
) -> Result<TlsStream<TcpStream>, PeerError> {
    let state = tls.current();
    let config = if http {
        state.client_http.clone()
    } else {
        state.client_tcp.clone()
    };
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| PeerError::Timeout(addr))?
        .map_err(|source| PeerError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(config);
    let handshake = connector.connect(ServerName::IpAddress(addr.ip().into()), tcp);
    let (failure, err) = match verify::capture(tokio::time::timeout_at(deadline, handshake)).await {
        (Ok(Ok(stream)), _) => return Ok(stream),
        (Ok(Err(source)), rejection) => handshake_error(addr, &state, source, rejection),
        (Err(_), _) => (HandshakeFailure::Timeout, PeerError::HandshakeTimeout(addr)),
    };
    metrics.handshake_failed(Direction::Outbound, failure);
    Err(err)
}

/// What a failed handshake with `addr` says: a certificate refused on
/// either side, by its issuer, or else a peer that does not speak mTLS.
fn handshake_error(
    addr: SocketAddr,
    state: &TlsState,
    source: std::io::Error,
    rejection: Option<Rejection>,
) -> (HandshakeFailure, PeerError) {
    let failure = verify::classify_io(&source);
    let Some(cause) = verify::rustls_error(&source).cloned() else {
        return (failure, PeerError::Handshake { addr, source });
    };
    let err = match rejection {
        Some(r) if failure == HandshakeFailure::UntrustedIssuer => PeerError::Untrusted {
            addr,
            trusted: state.trust.trusted_for(&r.issuer),
            issuer: r.issuer,
            cause,
        },
        Some(r) if failure.is_certificate() => PeerError::BadCertificate {
            addr,
            detail: r
                .detail
                .unwrap_or_else(|| failure.as_str().replace('_', " ")),
            subject: r.subject,
            issuer: r.issuer,
            cause,
        },
        _ if failure == HandshakeFailure::PeerRefused => PeerError::Refused {
            addr,
            issuer: state.key_pair.issuer.clone(),
            cause,
        },
        _ => PeerError::Handshake { addr, source },
    };
    (failure, err)
}

/// A peer that refused our certificate after our side of the handshake was
/// done (TLS 1.3: its alert comes with the first read), found in the error
/// of a request or a tunnel, counted, and said as a [`PeerError::Refused`].
fn refused_late(
    e: &(dyn std::error::Error + 'static),
    addr: SocketAddr,
    shared: &Shared,
) -> Option<PeerError> {
    let cause = verify::peer_refusal(e)?;
    let failure = HandshakeFailure::PeerRefused;
    shared
        .metrics
        .handshake_failed(Direction::Outbound, failure);
    Some(PeerError::Refused {
        addr,
        issuer: shared.tls.current().key_pair.issuer.clone(),
        cause,
    })
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
    metrics: Arc<Metrics>,
}

impl tower::Service<Uri> for MtlsConnector {
    type Response = MtlsConn;
    type Error = PeerError;
    type Future = Pin<Box<dyn Future<Output = Result<MtlsConn, PeerError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (tls, metrics) = (self.tls.clone(), self.metrics.clone());
        Box::pin(async move {
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default();
            let addr: SocketAddr = authority
                .parse()
                .map_err(|_| PeerError::BadTarget(authority.clone()))?;
            let stream = connect_mtls(&tls, &metrics, addr, true).await?;
            Ok(MtlsConn(TokioIo::new(stream)))
        })
    }
}

/// The pooled client for outbound HTTP.
pub fn client(tls: Arc<TlsStore>, metrics: Arc<Metrics>) -> Client<MtlsConnector, Body> {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(MtlsConnector { tls, metrics })
}

/// Accepts redirected outbound connections until shutdown, each in its own
/// task and span.
pub async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    client: Client<MtlsConnector, Body>,
) {
    let stop = shared.shutdown.clone();
    listener
        .run(stop, |stream, peer| {
            let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
                shared.metrics.refused(Refusal::ConnectionLimit);
                tracing::warn!(client = %peer, "outbound connection refused: too many open connections");
                return;
            };
            let span = tracing::info_span!("outbound", client = %peer, destination = Empty);
            let (task_shared, client) = (shared.clone(), client.clone());
            let task = async move {
                let _open = task_shared.metrics.outbound.open();
                handle(stream, &task_shared, client).await;
                drop(slot);
            };
            shared.tracker.spawn(task.instrument(span));
        })
        .await;
}

/// Where a redirected connection of the app was going, if it may go there.
fn destination(stream: &TcpStream, shared: &Shared) -> Option<SocketAddr> {
    let dst = match crate::original_dst::original_dst(stream) {
        Ok(d) => d,
        Err(e) => {
            shared.metrics.refused(Refusal::NotRedirected);
            tracing::warn!(error = %e, "outbound connection without an original destination refused");
            return None;
        }
    };
    tracing::Span::current().record("destination", tracing::field::display(dst));
    // Loopback and the sidecar's own ports are never a destination: that would
    // turn the outbound listener into a relay into the pod itself.
    if dst.ip().is_loopback() || dst.ip().is_unspecified() || shared.cfg.is_own_port(dst.port()) {
        shared.metrics.refused(Refusal::NotRedirected);
        tracing::warn!("outbound connection to a local address refused");
        return None;
    }
    Some(dst)
}

async fn handle(stream: TcpStream, shared: &Arc<Shared>, client: Client<MtlsConnector, Body>) {
    let Some(dst) = destination(&stream, shared) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let in_flight = InFlight::default();
    let app = IdleTimeout::new(stream, shared.cfg.idle_timeout, in_flight.clone());
    if shared.cfg.outbound_tcp_ports.contains(&dst.port()) {
        tcp_tunnel(app, dst, shared).await;
        return;
    }
    let ctx = Arc::new(OutboundCtx {
        dst,
        authority: socket_authority(dst),
        in_flight,
        shared: shared.clone(),
        client,
    });
    serve_http(
        TokioIo::new(app),
        move |req| forward(req, ctx.clone()),
        shared,
    )
    .await;
}

/// Copies bytes between the app and an mTLS connection to `dst`.
async fn tcp_tunnel(mut app: IdleTimeout<TcpStream>, dst: SocketAddr, shared: &Shared) {
    match connect_mtls(&shared.tls, &shared.metrics, dst, false).await {
        Ok(mut peer) => {
            let Err(e) = tokio::io::copy_bidirectional(&mut app, &mut peer).await else {
                return;
            };
            match refused_late(&e, dst, shared) {
                Some(refused) => {
                    shared.metrics.outbound_errors.inc();
                    tracing::warn!(error = %refused, "outbound TCP connection failed");
                }
                None => tracing::debug!(error = %e, "outbound TCP connection ended with an error"),
            }
        }
        Err(e) => {
            shared.metrics.outbound_errors.inc();
            tracing::warn!(error = %e, "outbound TCP connection failed");
        }
    }
}

/// What every request on one outbound connection shares.
struct OutboundCtx {
    /// Where the app was going: every request on the connection goes there.
    dst: SocketAddr,
    /// `dst`, for the requests' URIs.
    authority: Authority,
    /// Requests in progress, which keep the idle timeout at bay.
    in_flight: InFlight,
    shared: Arc<Shared>,
    /// The pooled mTLS client.
    client: Client<MtlsConnector, Body>,
}

async fn forward(
    mut req: Request<Incoming>,
    ctx: Arc<OutboundCtx>,
) -> Result<Response<Body>, Infallible> {
    retarget(&mut req, &ctx.authority, Version::HTTP_11, Form::Absolute);
    let in_flight = ctx.in_flight.enter();
    match ctx.client.request(req.map(|b| b.boxed())).await {
        Ok(resp) => {
            let mut resp = resp.map(|b| InFlightBody::new(b, in_flight).boxed());
            headers::strip_hop_by_hop(resp.headers_mut());
            Ok(resp)
        }
        Err(e) => {
            ctx.shared.metrics.outbound_errors.inc();
            let why = peer_error(&e, &ctx);
            tracing::warn!(error = %why, "outbound request failed");
            Ok(text(
                StatusCode::BAD_GATEWAY,
                &format!("kube-mtls: {why}\n"),
            ))
        }
    }
}

/// The connector's own error says best what went wrong (refused, no mTLS,
/// an untrusted certificate, timeout); the pooled client wraps it. A peer
/// that refused our certificate only after the handshake is found here.
fn peer_error(e: &hyper_util::client::legacy::Error, ctx: &OutboundCtx) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(p) = c.downcast_ref::<PeerError>() {
            return p.to_string();
        }
        cause = c.source();
    }
    match refused_late(e, ctx.dst, &ctx.shared) {
        Some(refused) => refused.to_string(),
        None => e.to_string(),
    }
}
