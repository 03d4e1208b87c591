//! Request and response bodies as the proxy passes them on.
//!
//! - [`ClientBody`] remembers whether the client's request body failed (bad
//!   chunked framing, a reset, a disconnect), so that a forwarding failure it
//!   caused is answered 400 and counted as the client's error, not the app's.
//! - [`InFlightBody`] keeps its request "in progress" for the idle timeout
//!   until the response has been sent in full, inbound and outbound.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

use crate::io::InFlightGuard;
use crate::metrics::ClientError;

const NO_ERROR: u8 = 0;
const MALFORMED: u8 = 1;
const ABORTED: u8 = 2;

/// What went wrong with a client's request body, if anything.
#[derive(Debug, Default, Clone)]
pub struct ClientBodyState(Arc<AtomicU8>);

impl ClientBodyState {
    pub fn error(&self) -> Option<ClientError> {
        match self.0.load(Ordering::Acquire) {
            MALFORMED => Some(ClientError::MalformedBody),
            ABORTED => Some(ClientError::AbortedBody),
            _ => None,
        }
    }

    fn record(&self, e: &hyper::Error) {
        let malformed = e.is_parse()
            || std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                    )
                });
        let code = if malformed { MALFORMED } else { ABORTED };
        let _ = self
            .0
            .compare_exchange(NO_ERROR, code, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The client's request body, recording its failure before passing it on.
pub struct ClientBody {
    inner: Incoming,
    state: ClientBodyState,
}

impl ClientBody {
    pub fn new(inner: Incoming, state: ClientBodyState) -> Self {
        ClientBody { inner, state }
    }
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            self.state.record(e);
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

/// A response body that holds its request's in-flight mark until it is done.
pub struct InFlightBody<B> {
    inner: B,
    guard: Option<InFlightGuard>,
}

impl<B> InFlightBody<B> {
    pub fn new(inner: B, guard: InFlightGuard) -> Self {
        InFlightBody {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: HttpBody + Unpin> HttpBody for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
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
