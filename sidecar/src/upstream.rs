//! One connection to the app per HTTP/1.1 client connection.
//!
//! Requests on an HTTP/1.1 connection come one after another, so each such
//! client connection keeps one HTTP/1.1 connection to its app port for its
//! lifetime ([`Pinned`]) instead of checking one out of a shared pool for every
//! request: no pool bookkeeping, no per-request dispatch through a client.
//! When the client connection ends, a connection to the app that is still
//! usable goes to a small shared idle list per app port ([`IdleConns`]), so
//! that a client opening a new connection per request does not cost the app a
//! new TCP connection each time.
//!
//! A reused connection the app has closed meanwhile (its idle timeout, or a
//! `Connection: close` answer) is replaced once by a fresh one, provided the
//! request was not sent on it; the client never sees that.
//!
//! HTTP/2 client connections (multiplexed) and `--h2-ports` keep hyper-util's
//! pooled client ([`crate::shared::Upstream`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::shared::{Body, Shared};

/// How long a connection to the app may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection to the app may sit in the idle list.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many idle connections are kept per app port.
pub const MAX_IDLE_PER_PORT: usize = 256;

/// The sending half of an HTTP/1.1 connection to the app.
pub type Sender = SendRequest<Body>;

/// Why a request could not be passed on to the app.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection to the app could be opened.
    #[error("cannot connect to the app: {0}")]
    Connect(#[source] std::io::Error),
    /// The request failed on a connection of this client connection's own.
    #[error(transparent)]
    Http1(#[from] hyper::Error),
    /// The request failed on a connection of the shared pool.
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// The app did not accept a connection (as opposed to failing a request).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect(_) => true,
            UpstreamError::Http1(_) => false,
            UpstreamError::Pooled(e) => e.is_connect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Idle HTTP/1.1 connections to the app, per app port, most recent last.
#[derive(Default)]
pub struct IdleConns(Mutex<HashMap<u16, Vec<(Instant, Sender)>>>);

impl IdleConns {
    /// The most recently parked connection to `port` that is still usable.
    pub fn take(&self, port: u16) -> Option<Sender> {
        let mut map = lock(&self.0);
        let list = map.get_mut(&port)?;
        let now = Instant::now();
        while let Some((since, sender)) = list.pop() {
            if now.duration_since(since) < IDLE_TIMEOUT && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Parks a connection to `port` for a later client connection, if it is
    /// ready for another request and there is room.
    pub fn put(&self, port: u16, sender: Sender) {
        if !sender.is_ready() || sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut map = lock(&self.0);
        let list = map.entry(port).or_default();
        let expired = list.partition_point(|(since, _)| now.duration_since(*since) >= IDLE_TIMEOUT);
        list.drain(..expired);
        if list.len() < MAX_IDLE_PER_PORT {
            list.push((now, sender));
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] or closed by the app.
    pub fn reap(&self) {
        let now = Instant::now();
        lock(&self.0).retain(|_, list| {
            list.retain(|(since, s)| now.duration_since(*since) < IDLE_TIMEOUT && !s.is_closed());
            !list.is_empty()
        });
    }
}

/// Reaps the idle list every half [`IDLE_TIMEOUT`] until shutdown, so that
/// connections nobody asks for again do not stay open on the app.
pub async fn reap_idle(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(IDLE_TIMEOUT / 2) => shared.upstream.idle_h1.reap(),
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Opens an HTTP/1.1 connection to the app on 127.0.0.1:`port`.
pub async fn connect(port: u16) -> Result<Sender, UpstreamError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
        Err(_) => {
            let e = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {addr} took longer than {CONNECT_TIMEOUT:?}"),
            );
            return Err(UpstreamError::Connect(e));
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection to the app ended with an error");
        }
    });
    Ok(sender)
}

/// The connection to the app that one HTTP/1.1 client connection uses.
pub struct Pinned {
    port: u16,
    /// Out while a request is being sent on it; back once its answer's head came.
    sender: Mutex<Option<Sender>>,
    idle: Arc<IdleConns>,
}

impl Pinned {
    pub fn new(port: u16, idle: Arc<IdleConns>) -> Self {
        Pinned {
            port,
            sender: Mutex::new(None),
            idle,
        }
    }

    /// Sends `req` (in origin form, with a `Host`) to the app and returns the
    /// response head; the body streams on while the next request waits for it.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let held = lock(&self.sender).take();
        let Some(mut sender) = held.or_else(|| self.idle.take(self.port)) else {
            return self.fresh(req).await;
        };
        // Waits for the previous answer's body to finish; fails if the app
        // closed the connection since.
        if sender.ready().await.is_err() {
            return self.fresh(req).await;
        }
        let (unsent, error) = match sender.try_send_request(req).await {
            Ok(resp) => {
                *lock(&self.sender) = Some(sender);
                return Ok(resp);
            }
            Err(mut e) => (e.take_message(), e.into_error()),
        };
        match unsent {
            // Closed before the request went out: once more, on a fresh one.
            Some(req) => {
                tracing::debug!(%error, "connection to the app closed; reconnecting");
                self.fresh(req).await
            }
            None => Err(error.into()),
        }
    }

    /// Sends `req` on a new connection, kept for the next request. Boxed: the
    /// rare case, kept out of every request's future.
    fn fresh(
        &self,
        req: Request<Body>,
    ) -> Pin<Box<impl Future<Output = Result<Response<Incoming>, UpstreamError>> + Send + '_>> {
        Box::pin(async move {
            let mut sender = connect(self.port).await?;
            let resp = sender.send_request(req).await?;
            *lock(&self.sender) = Some(sender);
            Ok(resp)
        })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let held = self
            .sender
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sender) = held {
            self.idle.put(self.port, sender);
        }
    }
}
