//! The inbound path: accept, find the app port, handshake, authorize, forward.
//!
//! Each accepted connection runs in its own task and passes these gates in
//! order; failing any one closes it (or answers 403 on HTTP ports):
//!
//! 1. a handshake permit (bounded by `--max-handshakes` overall and
//!    `--max-handshakes-per-source` per client address; see [`crate::limits`]);
//! 2. an app port: the original destination of a redirected connection, or the
//!    fixed app port of a direct listener; never one of the sidecar's own ports;
//! 3. in `--mode permissive` only, on HTTP ports only: the first byte, which
//!    sends a connection that does not start TLS down the plaintext path, with
//!    no identity (see [`crate::permissive`]);
//! 4. the mTLS handshake, within `--handshake-timeout`, which verifies the chain
//!    (up to a CA of the trust bundle), validity and clientAuth usage of the
//!    client certificate; a refusal is logged with the certificate's issuer
//!    and counted by reason (`handshake_failures_total{direction="inbound"}`);
//! 5. a connection slot (bounded by `--max-connections`), taken in exchange
//!    for the handshake permit (plaintext connections take one too);
//! 6. the allow-list, decided once for the connection; with `--policy audit`
//!    a caller not on it is let through and counted as `would_deny`, but only
//!    once it has passed 4: an unauthenticated caller never gets through.
//!
//! Each connection logs inside an `inbound` span carrying the client, the app
//! port and, once known, the caller's identity.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::TryFutureExt;
use futures::future::Either;
use http::header::HeaderValue;
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;
use tracing::field::Empty;

use crate::body::{ClientBody, ClientBodyState, InFlightBody};
use crate::config::{Config, Mode, MtlsMode, Policy};
use crate::conn::serve_http;
use crate::headers;
use crate::identity::PeerIdentity;
use crate::io::{IdleTimeout, InFlight, Linger, ReadAhead};
use crate::limits::HandshakePermit;
use crate::metrics::{Direction, HandshakeFailure, Refusal};
use crate::permissive::{self, Opening};
use crate::rewrite::{Form, retarget, socket_authority};
use crate::shared::{Body, Shared, text};
use crate::tls::{TlsState, cert_hash_hex};
use crate::upstream::{AppBody, CONNECT_TIMEOUT, Pinned, UpstreamError, send_multiplexed};
use crate::verify;
use kube_mtls_listener::Listener;

/// Where a listener's connections go.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Redirected by iptables: the app port is the original destination port.
    Redirected,
    /// A direct listener for one app port.
    Fixed(u16),
}

/// Accepts callers' connections until shutdown, each in its own task and span.
pub async fn accept_loop(listener: Listener, target: Target, shared: Arc<Shared>) {
    let stop = shared.shutdown.clone();
    listener
        .run(stop, |stream, peer| {
            let Some(handshake) = admit(&shared, peer) else {
                return;
            };
            let span =
                tracing::info_span!("inbound", client = %peer, port = Empty, identity = Empty);
            let task_shared = shared.clone();
            let task = async move {
                let _open = task_shared.metrics.inbound.open();
                handle(stream, peer, handshake, target, &task_shared).await;
            };
            shared.tracker.spawn(task.instrument(span));
        })
        .await;
}

/// The accept-time gates: a handshake permit (overall and for the client's
/// address), and a free connection slot to hand over to once it succeeds.
fn admit(shared: &Shared, peer: SocketAddr) -> Option<HandshakePermit> {
    let refuse = |reason: Refusal, what: &str| {
        shared.metrics.refused(reason);
        tracing::warn!(client = %peer, reason = reason.as_str(), "connection refused: {what}");
        None
    };
    if shared.slots.available_permits() == 0 {
        return refuse(Refusal::ConnectionLimit, "too many open connections");
    }
    match shared.handshakes.try_enter(peer.ip()) {
        Ok(permit) => Some(permit),
        Err(Refusal::SourceHandshakeLimit) => refuse(
            Refusal::SourceHandshakeLimit,
            "too many handshakes in progress from this address",
        ),
        Err(reason) => refuse(reason, "too many handshakes in progress"),
    }
}

/// Recovers the app port of a connection, or says why there is none.
fn app_port(stream: &TcpStream, target: Target, cfg: &Config) -> Result<u16, String> {
    let port = match target {
        Target::Fixed(p) => return Ok(p),
        Target::Redirected => crate::original_dst::original_dst(stream)
            .map_err(|e| format!("no original destination (was it redirected by iptables?): {e}"))?
            .port(),
    };
    if cfg.is_own_port(port) {
        return Err(format!(
            "original destination port {port} is one of the sidecar's own ports"
        ));
    }
    Ok(port)
}

/// Counts and logs a failed handshake, naming for a refused client
/// certificate its issuer and, if that is the reason, what we trust.
fn handshake_refused(
    e: &std::io::Error,
    rejection: Option<verify::Rejection>,
    tls: &TlsState,
    shared: &Shared,
) {
    let failure = verify::classify_io(e);
    shared.metrics.handshake_failed(Direction::Inbound, failure);
    shared.metrics.refused(failure.refusal());
    let reason = failure.as_str();
    match rejection {
        Some(r) if failure == HandshakeFailure::UntrustedIssuer => tracing::warn!(
            reason,
            issuer = %r.issuer,
            subject = %r.subject,
            trusted = %tls.trust.trusted_for(&r.issuer),
            error = %e,
            "client certificate refused: issued by a CA this sidecar does not trust"
        ),
        Some(r) => tracing::warn!(
            reason,
            issuer = %r.issuer,
            subject = %r.subject,
            error = %e,
            "client certificate refused"
        ),
        None if failure == HandshakeFailure::PeerRefused => tracing::warn!(
            reason,
            issuer = %tls.key_pair.issuer,
            error = %e,
            "mTLS handshake refused by the client: it does not accept this sidecar's certificate; does its trust bundle hold this sidecar's CA?"
        ),
        None => tracing::warn!(reason, error = %e, "mTLS handshake refused"),
    }
}

/// What the allow-list (and `--policy`) made of an authenticated caller.
#[derive(Clone)]
pub enum Verdict {
    /// On the allow-list.
    Allowed,
    /// Not on it, and `--policy enforce`: refused.
    Refused,
    /// Not on it, but `--policy audit`: let through and counted here.
    WouldDeny(Counter),
}

/// Who is calling on a connection.
pub enum Caller {
    /// Passed the mTLS handshake with a verified client certificate.
    Mtls {
        /// The caller's SPIFFE ID (or other name), for the 403 body.
        identity: String,
        /// The XFCC value, built once: the certificate cannot change.
        xfcc: HeaderValue,
        verdict: Verdict,
    },
    /// Permissive mode: no TLS, so no identity, and none may be claimed.
    Plaintext,
}

/// A connection that passed the handshake: who is calling, and may they.
struct Authenticated {
    stream: tokio_rustls::server::TlsStream<ReadAhead<TcpStream>>,
    peer: PeerIdentity,
    /// Hex SHA-256 of the client certificate, for XFCC's `Hash`.
    cert_hash: String,
    verdict: Verdict,
}

/// The allow-list's answer for `peer`, as `--policy` applies it.
fn judge(peer: &PeerIdentity, shared: &Shared) -> Verdict {
    let Err(reason) = shared.cfg.allow.authorize(peer) else {
        tracing::debug!("caller accepted");
        return Verdict::Allowed;
    };
    match shared.cfg.policy {
        Policy::Enforce => {
            tracing::warn!(%reason, "caller refused");
            Verdict::Refused
        }
        Policy::Audit => {
            tracing::warn!(%reason, "would_deny: caller let through by --policy audit");
            Verdict::WouldDeny(shared.metrics.would_deny(&peer.display_name()))
        }
    }
}

/// The mTLS handshake within `--handshake-timeout`, then the allow-list.
async fn authenticate(
    stream: ReadAhead<TcpStream>,
    tls: &TlsState,
    mode: Mode,
    shared: &Shared,
) -> Option<Authenticated> {
    let acceptor = TlsAcceptor::from(if mode == Mode::Tcp {
        tls.tcp.clone()
    } else {
        tls.http.clone()
    });
    let timeout = shared.cfg.handshake_timeout;
    let handshake = tokio::time::timeout(timeout, acceptor.accept(stream));
    let stream = match verify::capture(handshake).await {
        (Ok(Ok(s)), _) => s,
        (Ok(Err(e)), rejection) => {
            handshake_refused(&e, rejection, tls, shared);
            return None;
        }
        (Err(_), _) => {
            let timeout = HandshakeFailure::Timeout;
            shared.metrics.handshake_failed(Direction::Inbound, timeout);
            shared.metrics.refused(timeout.refusal());
            tracing::warn!(reason = "handshake_timeout", "mTLS handshake timed out");
            return None;
        }
    };
    shared.metrics.handshakes_ok.inc();
    // rustls only completes a handshake with a verified client certificate, so
    // there is always one here; treat its absence as a refusal all the same.
    let Some(leaf) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    else {
        shared.metrics.refused(Refusal::NoClientCert);
        return None;
    };
    let (peer, cert_hash) = match PeerIdentity::from_der(leaf) {
        Ok(p) => (p, cert_hash_hex(leaf)),
        Err(e) => {
            shared.metrics.refused(Refusal::UntrustedCert);
            tracing::warn!(error = %e, "client certificate unreadable");
            return None;
        }
    };
    tracing::Span::current().record("identity", tracing::field::display(peer.display_name()));
    let verdict = judge(&peer, shared);
    Some(Authenticated {
        stream,
        peer,
        cert_hash,
        verdict,
    })
}

async fn handle(
    stream: TcpStream,
    client: SocketAddr,
    handshake: HandshakePermit,
    target: Target,
    shared: &Arc<Shared>,
) {
    let cfg = &shared.cfg;
    let port = match app_port(&stream, target, cfg) {
        Ok(p) => p,
        Err(reason) => {
            shared.metrics.refused(Refusal::NotRedirected);
            tracing::warn!(%reason, "connection refused");
            return;
        }
    };
    tracing::Span::current().record("port", port);
    let _ = stream.set_nodelay(true);
    let conn = Accepted {
        stream,
        client,
        handshake,
        port,
        mode: cfg.mode(port),
    };
    // TCP ports are never sniffed: they stay mTLS-only (see crate::permissive).
    if cfg.mtls_mode == MtlsMode::Permissive && conn.mode != Mode::Tcp {
        match permissive::detect(&conn.stream, cfg.detect_timeout).await {
            Ok(Opening::Tls) => {}
            Ok(Opening::Plaintext) => return serve_plaintext(conn, shared).await,
            Ok(Opening::Closed) => return,
            Err(e) => {
                tracing::debug!(error = %e, "connection failed before its first byte");
                return;
            }
        }
    }
    serve_mtls(conn, shared).await;
}

/// An inbound connection with its app port, before TLS or plaintext is known.
struct Accepted {
    stream: TcpStream,
    client: SocketAddr,
    /// Held until the connection has a slot (or is refused).
    handshake: HandshakePermit,
    port: u16,
    mode: Mode,
}

/// A connection slot (`--max-connections`) for a connection that got past
/// the handshake, or `None` (counted and logged) when there is none.
fn take_slot(shared: &Shared) -> Option<OwnedSemaphorePermit> {
    let slot = shared.slots.clone().try_acquire_owned().ok();
    if slot.is_none() {
        shared.metrics.refused(Refusal::ConnectionLimit);
        tracing::warn!(
            limit = shared.cfg.max_connections,
            "connection refused: too many open connections"
        );
    }
    slot
}

/// The mTLS path: handshake, allow-list, then TCP or HTTP to the app.
async fn serve_mtls(conn: Accepted, shared: &Arc<Shared>) {
    let cfg = &shared.cfg;
    let tls = shared.tls.current();
    // A byte stream may carry bulk data: its TLS records are read ahead.
    let stream = if conn.mode == Mode::Tcp {
        ReadAhead::buffered(conn.stream)
    } else {
        ReadAhead::direct(conn.stream)
    };
    let Some(auth) = authenticate(stream, &tls, conn.mode, shared).await else {
        return;
    };
    drop(conn.handshake);
    let Some(_slot) = take_slot(shared) else {
        return;
    };
    let in_flight = InFlight::default();
    let io = IdleTimeout::new(auth.stream, cfg.idle_timeout, in_flight.clone());
    if conn.mode == Mode::Tcp {
        // On a TCP port the connection is the request, counted once here.
        match &auth.verdict {
            Verdict::Refused => return shared.metrics.refused(Refusal::NotAllowed),
            Verdict::WouldDeny(counter) => {
                counter.inc();
            }
            Verdict::Allowed => {}
        }
        tcp_copy(io, conn.port, shared).await;
        return;
    }
    let caller = Caller::Mtls {
        identity: auth.peer.display_name(),
        xfcc: headers::xfcc_value(&tls.key_pair.own, &auth.peer, &auth.cert_hash),
        verdict: auth.verdict,
    };
    let ctx = ConnCtx::new(conn.client, conn.port, conn.mode, caller, in_flight, shared);
    serve_http(
        TokioIo::new(Linger::new(io)),
        move |req| forward(req, ctx.clone()),
        shared,
    )
    .await;
}

/// Permissive mode's plaintext path: counted, logged once per source a
/// minute, and served as HTTP without any identity.
async fn serve_plaintext(conn: Accepted, shared: &Arc<Shared>) {
    drop(conn.handshake);
    let Some(_slot) = take_slot(shared) else {
        return;
    };
    shared.metrics.plaintext_connection(conn.port);
    let source = conn.client.ip();
    if shared.plaintext_log.should_log(source, Instant::now()) {
        tracing::info!(
            source = %source,
            "plaintext connection (permissive mode): this caller does not use mTLS; logged once per source address per minute"
        );
    }
    let in_flight = InFlight::default();
    let io = IdleTimeout::new(conn.stream, shared.cfg.idle_timeout, in_flight.clone());
    let ctx = ConnCtx::new(
        conn.client,
        conn.port,
        conn.mode,
        Caller::Plaintext,
        in_flight,
        shared,
    );
    serve_http(
        TokioIo::new(Linger::new(io)),
        move |req| forward(req, ctx.clone()),
        shared,
    )
    .await;
}

/// Per-connection facts every request on it shares.
pub struct ConnCtx {
    /// The app port on 127.0.0.1 requests go to.
    pub port: u16,
    /// `127.0.0.1:<port>`, parsed once for every request's URI.
    pub upstream: Authority,
    /// The app speaks HTTP/2 cleartext (`--h2-ports`).
    pub h2_upstream: bool,
    /// The connection to the app this client connection's HTTP/1.1 requests
    /// use (HTTP/2 requests take idle ones; `--h2-ports` the pooled client).
    pub pinned: Pinned,
    pub caller: Caller,
    /// The client's address, for `X-Forwarded-For`.
    pub client_ip: HeaderValue,
    /// Requests in progress, which keep the idle timeout at bay.
    pub in_flight: InFlight,
    pub shared: Arc<Shared>,
}

impl ConnCtx {
    fn new(
        client: SocketAddr,
        port: u16,
        mode: Mode,
        caller: Caller,
        in_flight: InFlight,
        shared: &Arc<Shared>,
    ) -> Arc<Self> {
        Arc::new(ConnCtx {
            port,
            upstream: socket_authority(SocketAddr::from(([127, 0, 0, 1], port))),
            h2_upstream: mode == Mode::Http2,
            pinned: Pinned::new(port, shared.upstream.idle_h1.clone()),
            caller,
            client_ip: HeaderValue::from_str(&client.ip().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            in_flight,
            shared: shared.clone(),
        })
    }
}

async fn forward(req: Request<Incoming>, ctx: Arc<ConnCtx>) -> Result<Response<Body>, Infallible> {
    let shared = &ctx.shared;
    if let Caller::Mtls {
        identity, verdict, ..
    } = &ctx.caller
    {
        match verdict {
            Verdict::Allowed => {}
            // Counted per request: on an HTTP port each request is judged.
            Verdict::WouldDeny(counter) => {
                counter.inc();
            }
            Verdict::Refused => {
                shared.metrics.refused(Refusal::NotAllowed);
                return Ok(text(
                    StatusCode::FORBIDDEN,
                    &format!("forbidden: {identity} may not call this service\n"),
                ));
            }
        }
    }
    // HTTP/1.1 heads are held to the limit by hyper itself.
    if req.version() == Version::HTTP_2 && headers::list_size(&req) > shared.cfg.max_header_size {
        tracing::debug!(
            limit = shared.cfg.max_header_size,
            "request headers too large"
        );
        return Ok(text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large\n",
        ));
    }
    shared.metrics.requests.inc();
    let in_flight = ctx.in_flight.enter();
    let body_state = ClientBodyState::default();
    let sent = send_upstream(req, &ctx, &body_state);
    let result = match shared.cfg.upstream_timeout {
        Some(limit) => match tokio::time::timeout(limit, sent).await {
            Ok(r) => r,
            Err(_) => return Ok(upstream_timeout(&ctx, limit)),
        },
        None => sent.await,
    };
    match result {
        Ok(resp) => {
            let mut resp = resp.map(|b| InFlightBody::new(b, in_flight).boxed());
            headers::strip_hop_by_hop(resp.headers_mut());
            Ok(resp)
        }
        Err(e) => Ok(upstream_failure(&e, &ctx, &body_state)),
    }
}

/// Passes a client's request on to the app: an HTTP/1.1 client's on its own
/// connection to the app, an HTTP/2 client's on one from the idle list for as
/// long as its answer takes, any to `--h2-ports` through the pooled HTTP/2
/// client. Not an `async fn`, and each path's future boxed: every request's
/// future stays small, which HTTP/2 moves into a task of its own per stream.
fn send_upstream<'a>(
    req: Request<Incoming>,
    ctx: &'a ConnCtx,
    body_state: &ClientBodyState,
) -> impl Future<Output = Result<Response<AppBody>, UpstreamError>> + Send + 'a {
    let held = |resp: Response<Incoming>| resp.map(AppBody::held);
    if ctx.h2_upstream {
        let req = upstream_request(req, ctx, body_state, Form::Absolute);
        let sent = ctx.shared.upstream.http2.request(req);
        return Either::Left(sent.map_ok(held).map_err(UpstreamError::from));
    }
    let multiplexed = req.version() == Version::HTTP_2;
    let req = upstream_request(req, ctx, body_state, Form::Origin);
    if multiplexed {
        let idle = &ctx.shared.upstream.idle_h1;
        return Either::Right(Either::Left(Box::pin(send_multiplexed(
            idle, ctx.port, req,
        ))));
    }
    Either::Right(Either::Right(Box::pin(ctx.pinned.send(req).map_ok(held))))
}

/// Rewrites a client's request for the app on 127.0.0.1, its target in `form`.
fn upstream_request(
    mut req: Request<Incoming>,
    ctx: &ConnCtx,
    body_state: &ClientBodyState,
    form: Form,
) -> Request<Body> {
    let version = if ctx.h2_upstream {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    retarget(&mut req, &ctx.upstream, version, form);
    match &ctx.caller {
        Caller::Mtls { xfcc, .. } => {
            headers::set_forwarding(req.headers_mut(), xfcc, &ctx.client_ip)
        }
        Caller::Plaintext => headers::set_plaintext_forwarding(req.headers_mut(), &ctx.client_ip),
    }
    req.map(|b| ClientBody::new(b, body_state.clone()).boxed())
}

/// The app sent no response headers within `--upstream-timeout`.
fn upstream_timeout(ctx: &ConnCtx, limit: Duration) -> Response<Body> {
    let metrics = &ctx.shared.metrics;
    metrics.upstream_timeouts.inc();
    metrics.upstream_errors.inc();
    tracing::warn!(limit = ?limit, "upstream timeout: the app sent no response headers within --upstream-timeout; answered 504");
    text(
        StatusCode::GATEWAY_TIMEOUT,
        &format!(
            "gateway timeout: the app on 127.0.0.1:{} did not answer within {limit:?}\n",
            ctx.port
        ),
    )
}

/// A request that could not be forwarded: the client's fault (its body broke,
/// 400) or the app's (502).
fn upstream_failure(
    e: &UpstreamError,
    ctx: &ConnCtx,
    body_state: &ClientBodyState,
) -> Response<Body> {
    let metrics = &ctx.shared.metrics;
    if let Some(kind) = body_state.error() {
        metrics.client_error(kind);
        tracing::debug!(reason = kind.as_str(), error = %e, "the client's request body failed");
        return text(
            StatusCode::BAD_REQUEST,
            "bad request: the request body is malformed or incomplete\n",
        );
    }
    metrics.upstream_errors.inc();
    let why = if e.is_connect() {
        format!(
            "the app is not accepting connections on 127.0.0.1:{}",
            ctx.port
        )
    } else {
        "the app closed the connection or sent an invalid response".to_owned()
    };
    tracing::warn!(error = %e, "upstream error");
    text(
        StatusCode::BAD_GATEWAY,
        &format!("upstream unavailable: {why}\n"),
    )
}

/// The buffer of each direction of a TCP port's copy.
const COPY_BUF: usize = 16 * 1024;

async fn tcp_copy<I>(mut client: I, port: u16, shared: &Shared)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let mut app = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.metrics.upstream_errors.inc();
            tracing::warn!(error = %e, "upstream unavailable for TCP connection");
            return;
        }
        Err(_) => {
            shared.metrics.upstream_errors.inc();
            tracing::warn!("upstream connect timed out for TCP connection");
            return;
        }
    };
    let _ = app.set_nodelay(true);
    // Whole TLS records (16 KiB) each way, rather than tokio's 8 KiB default.
    let copied =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut app, COPY_BUF, COPY_BUF);
    if let Err(e) = copied.await {
        tracing::debug!(error = %e, "TCP connection ended with an error");
    }
}
