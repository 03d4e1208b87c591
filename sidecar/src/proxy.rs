//! The inbound path: accept, find the app port, handshake, authorize, forward.
//!
//! Each accepted connection runs in its own task and passes these gates in
//! order; failing any one closes it (or answers 403 on HTTP ports):
//!
//! 1. a handshake permit (bounded by `--max-handshakes` overall and
//!    `--max-handshakes-per-source` per client address; see [`crate::limits`]);
//! 2. an app port: the original destination of a redirected connection, or the
//!    fixed app port of a direct listener; never one of the sidecar's own ports;
//! 3. the mTLS handshake, within `--handshake-timeout`, which verifies the chain,
//!    validity and clientAuth usage of the client certificate;
//! 4. a connection slot (bounded by `--max-connections`), taken in exchange
//!    for the handshake permit;
//! 5. the allow-list, decided once for the connection.
//!
//! Each connection logs inside a `conn` span carrying the client and app port.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::body::{ClientBody, ClientBodyState, InFlightBody};
use crate::config::{Config, Mode};
use crate::headers;
use crate::identity::PeerIdentity;
use crate::io::{IdleTimeout, InFlight, Linger};
use crate::limits::{HandshakeGate, HandshakePermit};
use crate::metrics::{Metrics, Refusal};
use crate::tls::{TlsStore, cert_hash_hex};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// A short plain-text response.
pub fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::copy_from_slice(msg.as_bytes()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Pooled keep-alive connections to the app on 127.0.0.1.
#[derive(Clone)]
pub struct Upstream {
    pub http1: Client<HttpConnector, Body>,
    pub http2: Client<HttpConnector, Body>,
}

impl Upstream {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http1 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        Upstream { http1, http2 }
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

/// What every connection task shares.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub tls: Arc<TlsStore>,
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    /// Connection slots, one per authenticated connection (`--max-connections`).
    pub slots: Arc<Semaphore>,
    /// Handshakes in progress (`--max-handshakes`, `--max-handshakes-per-source`).
    pub handshakes: HandshakeGate,
    /// Cancelled on SIGTERM: listeners stop, connections drain.
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub draining: AtomicBool,
}

impl Shared {
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Where a listener's connections go.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Redirected by iptables: the app port is the original destination port.
    Redirected,
    /// A direct listener for one app port.
    Fixed(u16),
}

/// Accepts connections until shutdown.
pub async fn accept_loop(listener: TcpListener, target: Target, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(handshake) = admit(&shared, peer) else {
            continue;
        };
        let span = tracing::info_span!("conn", client = %peer, port = tracing::field::Empty);
        let task_shared = shared.clone();
        let task = async move {
            task_shared.metrics.connections.inc();
            task_shared.metrics.active_connections.inc();
            handle(stream, peer, handshake, target, &task_shared).await;
            task_shared.metrics.active_connections.dec();
        };
        shared.tracker.spawn(task.instrument(span));
    }
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

fn classify(e: &std::io::Error) -> Refusal {
    use rustls::CertificateError as C;
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => Refusal::NoClientCert,
        Some(rustls::Error::InvalidCertificate(ce)) => match ce {
            C::Expired | C::ExpiredContext { .. } => Refusal::ExpiredCert,
            C::NotValidYet | C::NotValidYetContext { .. } => Refusal::NotYetValidCert,
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => Refusal::WrongKeyUsage,
            _ => Refusal::UntrustedCert,
        },
        _ => Refusal::HandshakeFailed,
    }
}

/// A connection that passed the handshake: who is calling, and may they.
struct Authenticated {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerIdentity,
    cert_hash: String,
    allowed: bool,
}

/// The mTLS handshake within `--handshake-timeout`, then the allow-list.
async fn authenticate(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    shared: &Shared,
) -> Option<Authenticated> {
    let timeout = shared.cfg.handshake_timeout;
    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = classify(&e);
            shared.metrics.refused(reason);
            tracing::warn!(reason = reason.as_str(), error = %e, "mTLS handshake refused");
            return None;
        }
        Err(_) => {
            shared.metrics.refused(Refusal::HandshakeTimeout);
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
    let identity = peer.display_name();
    let allowed = match shared.cfg.allow.authorize(&peer) {
        Err(reason) => {
            tracing::warn!(%identity, %reason, "caller refused");
            false
        }
        Ok(()) => {
            tracing::debug!(%identity, "caller accepted");
            true
        }
    };
    Some(Authenticated {
        stream,
        peer,
        cert_hash,
        allowed,
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
    let mode = cfg.mode(port);
    let tls = shared.tls.current();
    let acceptor = TlsAcceptor::from(if mode == Mode::Tcp {
        tls.tcp.clone()
    } else {
        tls.http.clone()
    });
    let Some(conn) = authenticate(stream, acceptor, shared).await else {
        return;
    };
    drop(handshake);
    let Ok(_slot) = shared.slots.clone().try_acquire_owned() else {
        shared.metrics.refused(Refusal::ConnectionLimit);
        tracing::warn!(
            limit = cfg.max_connections,
            "connection refused: too many open connections"
        );
        return;
    };
    let in_flight = InFlight::default();
    let io = IdleTimeout::new(conn.stream, cfg.idle_timeout, in_flight.clone());
    if mode == Mode::Tcp {
        // Refused on a TCP port: the connection is the request, counted once here.
        if !conn.allowed {
            shared.metrics.refused(Refusal::NotAllowed);
            return;
        }
        tcp_copy(io, port, shared).await;
        return;
    }
    let ctx = Arc::new(ConnCtx {
        port,
        h2_upstream: mode == Mode::Http2,
        allowed: conn.allowed,
        identity: conn.peer.display_name(),
        xfcc: headers::xfcc_value(&tls.own, &conn.peer, &conn.cert_hash),
        client_ip: HeaderValue::from_str(&client.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown")),
        in_flight,
        shared: shared.clone(),
    });
    serve_http(TokioIo::new(Linger::new(io)), ctx, shared).await;
}

/// Runs hyper's per-stream tasks (HTTP/2) inside the connection's span, so
/// their logs say which connection they belong to.
#[derive(Clone, Copy)]
struct InSpan;

impl<F> hyper::rt::Executor<F> for InSpan
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut.in_current_span());
    }
}

/// Serves HTTP/1.1 or HTTP/2 on an established connection until it ends or
/// shutdown drains it.
pub async fn serve_http<I>(io: TokioIo<I>, ctx: Arc<ConnCtx>, shared: &Shared)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &shared.cfg;
    let mut builder = auto::Builder::new(InSpan);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_size.max(8192));
    // HTTP/2 closes the whole connection (GOAWAY) for a header block beyond
    // four times this limit, or one it cannot skip; so the advertised limit is
    // generous and `forward` answers 431 on the stream for anything over
    // --max-header-size.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(cfg.max_header_size.saturating_mul(4)).unwrap_or(u32::MAX),
        )
        .max_concurrent_streams(256);
    let service = hyper::service::service_fn(move |req| forward(req, ctx.clone()));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            return;
        }
        _ = shared.shutdown.cancelled() => {}
    }
    // Draining: HTTP/2 gets GOAWAY, HTTP/1.1 answers the request in flight with
    // `Connection: close`; both then end.
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "client connection ended with an error while draining");
    }
}

/// Per-connection facts every request on it shares.
pub struct ConnCtx {
    pub port: u16,
    pub h2_upstream: bool,
    pub allowed: bool,
    pub identity: String,
    pub xfcc: HeaderValue,
    pub client_ip: HeaderValue,
    /// Requests in progress, which keep the idle timeout at bay.
    pub in_flight: InFlight,
    pub shared: Arc<Shared>,
}

async fn forward(req: Request<Incoming>, ctx: Arc<ConnCtx>) -> Result<Response<Body>, Infallible> {
    let shared = &ctx.shared;
    if !ctx.allowed {
        // Counted per request: on an HTTP port each request is refused.
        shared.metrics.refused(Refusal::NotAllowed);
        return Ok(text(
            StatusCode::FORBIDDEN,
            &format!("forbidden: {} may not call this service\n", ctx.identity),
        ));
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
    let Some(req) = upstream_request(req, &ctx, &body_state) else {
        return Ok(text(StatusCode::BAD_REQUEST, "bad request target\n"));
    };
    let client = if ctx.h2_upstream {
        &shared.upstream.http2
    } else {
        &shared.upstream.http1
    };
    let sent = client.request(req);
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

/// Rewrites a client's request for the app on 127.0.0.1; `None` when its
/// target cannot be expressed as one.
fn upstream_request(
    mut req: Request<Incoming>,
    ctx: &ConnCtx,
    body_state: &ClientBodyState,
) -> Option<Request<Body>> {
    // Requests arriving over HTTP/2 carry the host in :authority; keep it as a
    // Host header so an HTTP/1.1 app still sees it.
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri = Uri::builder()
        .scheme("http")
        .authority(format!("127.0.0.1:{}", ctx.port))
        .path_and_query(path)
        .build()
        .ok()?;
    *req.uri_mut() = uri;
    *req.version_mut() = if ctx.h2_upstream {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    headers::strip_hop_by_hop(req.headers_mut());
    headers::set_forwarding(req.headers_mut(), &ctx.xfcc, &ctx.client_ip);
    Some(req.map(|b| ClientBody::new(b, body_state.clone()).boxed()))
}

/// The app sent no response headers within `--upstream-timeout`.
fn upstream_timeout(ctx: &ConnCtx, limit: Duration) -> Response<Body> {
    let metrics = &ctx.shared.metrics;
    metrics.upstream_timeouts.inc();
    metrics.upstream_errors.inc();
    tracing::warn!(identity = %ctx.identity, limit = ?limit, "upstream timeout: the app sent no response headers within --upstream-timeout; answered 504");
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
    e: &hyper_util::client::legacy::Error,
    ctx: &ConnCtx,
    body_state: &ClientBodyState,
) -> Response<Body> {
    let metrics = &ctx.shared.metrics;
    if let Some(kind) = body_state.error() {
        metrics.client_error(kind);
        tracing::debug!(identity = %ctx.identity, reason = kind.as_str(), error = %e, "the client's request body failed");
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
    tracing::warn!(error = %e, identity = %ctx.identity, "upstream error");
    text(
        StatusCode::BAD_GATEWAY,
        &format!("upstream unavailable: {why}\n"),
    )
}

async fn tcp_copy<I>(mut client: I, port: u16, shared: &Shared)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let mut app = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.metrics.upstream_errors.inc();
            tracing::warn!(port, error = %e, "upstream unavailable for TCP connection");
            return;
        }
        Err(_) => {
            shared.metrics.upstream_errors.inc();
            tracing::warn!(port, "upstream connect timed out for TCP connection");
            return;
        }
    };
    let _ = app.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut app).await {
        tracing::debug!(port, error = %e, "TCP connection ended with an error");
    }
}
