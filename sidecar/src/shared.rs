//! What the listeners and their connection tasks have in common: the state
//! they share ([`Shared`]), the response body type every path answers with
//! ([`Body`], [`text`]), and the connections to the app ([`Upstream`]).
//!
//! The inbound, outbound and admin paths all use these; keeping them apart from
//! any one path means none of them depends on another's internals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::limits::HandshakeGate;
use crate::metrics::Metrics;
use crate::permissive::PlaintextLog;
use crate::tls::TlsStore;
use crate::upstream::{CONNECT_TIMEOUT, IDLE_TIMEOUT, IdleConns};

/// The body of every request and response the sidecar passes on or makes.
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

/// Keep-alive connections to the app on 127.0.0.1.
#[derive(Clone)]
pub struct Upstream {
    /// For app ports in `--h2-ports` (HTTP/2 cleartext, e.g. gRPC).
    pub http2: Client<HttpConnector, Body>,
    /// Idle HTTP/1.1 connections to the app: left over by ended HTTP/1.1
    /// client connections, and between the requests of HTTP/2 clients (see
    /// [`crate::upstream`]).
    pub idle_h1: Arc<IdleConns>,
}

impl Upstream {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let http2 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .http2_only(true)
            .build(connector);
        Upstream {
            http2,
            idle_h1: Arc::default(),
        }
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

/// What every connection task shares.
pub struct Shared {
    /// The validated settings.
    pub cfg: Arc<Config>,
    /// The certificate set currently served, swapped on rotation.
    pub tls: Arc<TlsStore>,
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    /// Connection slots, one per authenticated connection (`--max-connections`).
    pub slots: Arc<Semaphore>,
    /// Handshakes in progress (`--max-handshakes`, `--max-handshakes-per-source`).
    pub handshakes: HandshakeGate,
    /// Cancelled on SIGTERM: listeners stop, connections drain.
    pub shutdown: CancellationToken,
    /// Every connection task, so that shutdown can wait for them to drain.
    pub tracker: TaskTracker,
    /// Set on SIGTERM, so that `/ready` answers 503 while connections drain.
    pub draining: AtomicBool,
    /// Which plaintext callers were logged lately (permissive mode).
    pub plaintext_log: PlaintextLog,
}

impl Shared {
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
