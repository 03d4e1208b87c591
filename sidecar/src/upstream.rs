//! Connections to the app that speak HTTP/1.1, without a pool in the way.
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
//! An HTTP/2 client connection multiplexes, so each of its requests takes a
//! connection from that idle list (or opens one) and its response body puts it
//! back when it ends ([`send_multiplexed`], [`AppBody`]): the same list, one
//! `Vec` push and pop per request, where hyper-util's pool hashed its key
//! twice and dispatched through a task of its own.
//!
//! A reused connection the app has closed meanwhile (its idle timeout, or a
//! `Connection: close` answer) is replaced once by a fresh one, provided the
//! request was not sent on it; the client never sees that.
//!
//! Only `--h2-ports` (the app speaks HTTP/2) keeps hyper-util's pooled client
//! ([`crate::shared::Upstream`]), which multiplexes on one connection.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
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
    /// The most recently parked connection to `port` the app has not closed.
    /// It may still be reading the end of its last answer: callers wait for
    /// [`SendRequest::ready`] before sending.
    pub fn take(&self, port: u16) -> Option<Sender> {
        let mut map = lock(&self.0);
        let list = map.get_mut(&port)?;
        let now = Instant::now();
        while let Some((since, sender)) = list.pop() {
            if now.duration_since(since) < IDLE_TIMEOUT && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Parks a connection to `port` for a later request, if it is ready for
    /// another one and there is room.
    pub fn put(&self, port: u16, sender: Sender) {
        if sender.is_ready() {
            self.park(port, sender);
        }
    }

    /// Parks a connection whose answer has just been read to its end, so that
    /// it is ready, or about to be once its connection task has seen the end.
    fn park(&self, port: u16, sender: Sender) {
        if sender.is_closed() {
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
        let held = held.or_else(|| self.idle.take(self.port));
        let (resp, sender) = send_on(held, self.port, req).await?;
        *lock(&self.sender) = Some(sender);
        Ok(resp)
    }
}

/// Sends one request of a multiplexed client connection (in origin form, with
/// a `Host`) on an idle connection to the app on `port`, or a new one; the
/// response's body parks the connection again when it ends.
pub async fn send_multiplexed(
    idle: &Arc<IdleConns>,
    port: u16,
    req: Request<Body>,
) -> Result<Response<AppBody>, UpstreamError> {
    let (resp, sender) = send_on(idle.take(port), port, req).await?;
    let park = Park {
        sender,
        idle: idle.clone(),
        port,
    };
    Ok(resp.map(|body| AppBody::parking(body, park)))
}

/// A response head from the app and the connection it came on.
type Answered = Result<(Response<Incoming>, Sender), UpstreamError>;

/// Sends `req` on `held` once it is ready for it, or on a fresh connection if
/// there is none or the app closed it before the request went out.
async fn send_on(held: Option<Sender>, port: u16, req: Request<Body>) -> Answered {
    let Some(mut sender) = held else {
        return fresh(port, req).await;
    };
    // Waits for the previous answer's body to finish; fails if the app
    // closed the connection since.
    if sender.ready().await.is_err() {
        return fresh(port, req).await;
    }
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, sender)),
        Err(mut e) => match e.take_message() {
            // Closed before the request went out: once more, on a fresh one.
            Some(req) => {
                tracing::debug!(error = %e.error(), "connection to the app closed; reconnecting");
                fresh(port, req).await
            }
            None => Err(e.into_error().into()),
        },
    }
}

/// Sends `req` on a new connection to the app. Boxed: the rare case, kept out
/// of every request's future.
fn fresh(port: u16, req: Request<Body>) -> Pin<Box<impl Future<Output = Answered> + Send>> {
    Box::pin(async move {
        let mut sender = connect(port).await?;
        let resp = sender.send_request(req).await?;
        Ok((resp, sender))
    })
}

/// Where a connection goes back to once its answer has been read.
struct Park {
    sender: Sender,
    idle: Arc<IdleConns>,
    port: u16,
}

/// The body of an answer from the app. For a multiplexed client's request it
/// parks the connection it came on when it ends; dropped before its end (the
/// client reset the stream), the connection is dropped too, and hyper closes
/// it, since the rest of the answer would be in its way.
pub struct AppBody {
    inner: Incoming,
    park: Option<Park>,
}

impl AppBody {
    /// An answer on a connection that stays with its client connection.
    pub fn held(inner: Incoming) -> Self {
        AppBody { inner, park: None }
    }

    fn parking(inner: Incoming, park: Park) -> Self {
        let mut body = AppBody {
            inner,
            park: Some(park),
        };
        // No body at all (204, HEAD, `Content-Length: 0`): nobody polls it.
        if body.inner.is_end_stream() {
            body.park_now();
        }
        body
    }

    fn park_now(&mut self) {
        if let Some(Park { sender, idle, port }) = self.park.take() {
            idle.park(port, sender);
        }
    }
}

impl HttpBody for AppBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.park_now(),
            // The last frame: hyper sends it as the stream's end and polls no further.
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.park_now(),
            Poll::Ready(Some(Err(_))) => self.park = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
