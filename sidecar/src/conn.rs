//! Serving HTTP on one accepted connection, the same way in both directions:
//! hyper's HTTP/1.1 and HTTP/2 server with the sidecar's header limits, one
//! timer per connection ([`ConnClock`]), its per-stream tasks inside the
//! connection's tracing span, and a graceful end
//! (GOAWAY, or `Connection: close` on the request in flight) on shutdown.

use std::convert::Infallible;
use std::future::Future;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tracing::Instrument;

use crate::clock::ConnClock;
use crate::shared::{Body, Shared};

/// Runs hyper's per-stream tasks (HTTP/2) inside the connection's span, so
/// their logs say which connection they belong to.
#[derive(Clone, Copy)]
struct InSpan;

impl<F> hyper::rt::Executor<F> for InSpan
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut.in_current_span());
    }
}

/// Serves HTTP/1.1 or HTTP/2 on an established connection, answering each
/// request with `handler`, until the connection ends or shutdown drains it.
pub async fn serve_http<I, H, F>(io: TokioIo<I>, handler: H, shared: &Shared)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let cfg = &shared.cfg;
    let mut builder = auto::Builder::new(InSpan);
    builder
        .http1()
        .timer(ConnClock::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_size.max(8192));
    // HTTP/2 closes the whole connection (GOAWAY) for a header block beyond
    // four times this limit, or one it cannot skip; so the advertised limit is
    // generous and the inbound path answers 431 on the stream for anything
    // over --max-header-size.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(cfg.max_header_size.saturating_mul(4)).unwrap_or(u32::MAX),
        )
        .max_concurrent_streams(256);
    let service = hyper::service::service_fn(handler);
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
